//! What the bench can learn about a process on the same machine from `/proc` (Linux): CPU time
//! used and resident memory, and how many bytes a data directory holds. These turn "requests
//! per second" into "requests per server-core-second", the figure `kirana capacity` scales
//! from. Read-only; it never signals or waits on the process it looks at.

use std::io;
use std::path::Path;

/// `/proc/<pid>/stat` counts CPU time in clock ticks of `USER_HZ`, which Linux fixes at 100 on
/// every architecture it ships for (the kernel's own HZ may differ; the ABI does not).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds a process has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> io::Result<f64> {
    parse_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

fn parse_cpu_seconds(stat: &str) -> io::Result<f64> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/<pid>/stat format");
    // The command name (field 2) is in parentheses and may hold spaces or ')': the fields
    // after it start past the last ')'. utime and stime are fields 14 and 15 of the whole line.
    let after = &stat[stat.rfind(')').ok_or_else(bad)? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or_else(bad);
    // `after` starts at field 3 (state), so field n is at index n - 3.
    Ok((tick(14 - 3)? + tick(15 - 3)?) as f64 / TICKS_PER_SECOND)
}

/// Resident set size, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> io::Result<u64> {
    parse_rss(&std::fs::read_to_string(format!("/proc/{pid}/status"))?)
}

fn parse_rss(status: &str) -> io::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc/<pid>/status"))
}

/// Bytes of the regular files under `dir`, recursively (symlinks are not followed).
pub(crate) fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (kirana (serve) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 150 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_cpu_seconds(stat).unwrap(), 4.0);
        assert!(parse_cpu_seconds("garbage").is_err());
    }

    #[test]
    fn resident_memory_is_read_in_bytes() {
        let status = "Name:\tkirana\nVmPeak:\t  9000 kB\nVmRSS:\t   2048 kB\nThreads:\t9\n";
        assert_eq!(parse_rss(status).unwrap(), 2048 * 1024);
        assert!(parse_rss("Name: x\n").is_err());
    }

    #[test]
    fn this_process_can_be_measured() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(rss_bytes(pid).unwrap() > 0);
    }

    #[test]
    fn a_data_directory_is_sized_recursively() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.db"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join("shards")).unwrap();
        std::fs::write(dir.path().join("shards/s.db"), vec![0u8; 24]).unwrap();
        assert_eq!(dir_bytes(dir.path()).unwrap(), 1024);
    }
}
