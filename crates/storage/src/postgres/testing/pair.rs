//! A real PostgreSQL 15 primary with a streaming replica, for tests.
//!
//! Built exactly as `shared/docs/recipes.md` says ("A PostgreSQL primary with a streaming
//! replica"): Debian's binaries, `initdb -A trust`, `wal_level=replica`, `pg_basebackup -R -X
//! stream`, the replica on the primary's port + 1. Each pair has its own temporary directory
//! (data, logs and Unix sockets) and its own free ports, and every command names its port and
//! data directory explicitly, with `PG*` variables removed from its environment: nothing here
//! can reach the shared server on 5432. Dropping a pair stops both servers and removes the
//! directory.
//!
//! Tests run as root and PostgreSQL refuses to, so the servers run as the `postgres` user
//! (`su postgres -c …`); a non-root runner runs them as itself. Everything here blocks: call it
//! from a multi-threaded runtime, whose other worker keeps the connections moving meanwhile.
//!
//! Additions to the recipe, all for speed or determinism in tests: `--no-sync` for initdb and
//! pg_basebackup (the files die with the test), a small `shared_buffers`, and
//! `wal_retrieve_retry_interval = 200ms` so that a replica whose WAL receiver failed retries
//! within a test's patience rather than after the default 5 s.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Where Debian's `postgresql-15` puts its server binaries; `KIRANA_PG_BIN` overrides it.
const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The shared server that must never be touched.
const SHARED_PORT: u16 = 5432;
/// How long any single wait here may take before the harness gives up and says why.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct PgPair {
    bin: PathBuf,
    /// Whether commands must switch to the `postgres` user (we are root).
    as_root: bool,
    primary_port: u16,
    replica_port: u16,
    /// The canonical path of `dir`, the one PostgreSQL's processes see as their working
    /// directory's parent.
    root: PathBuf,
    /// Dropped after `Drop::drop` has stopped both servers: removes everything they wrote.
    _dir: tempfile::TempDir,
}

impl PgPair {
    /// Starts a primary and a replica that is streaming from it, or panics saying what is
    /// missing and showing the end of the relevant log.
    pub fn start() -> PgPair {
        let bin = std::env::var_os("KIRANA_PG_BIN").map_or_else(|| PathBuf::from(DEFAULT_BIN), PathBuf::from);
        for tool in ["initdb", "pg_ctl", "pg_basebackup", "psql"] {
            assert!(
                bin.join(tool).is_file(),
                "PostgreSQL 15 is missing: no {} (install Debian's postgresql-15, or point KIRANA_PG_BIN at a bin \
                 directory holding initdb, pg_ctl, pg_basebackup and psql)",
                bin.join(tool).display()
            );
        }
        let as_root = effective_uid() == Some(0);
        if as_root {
            let known = Command::new("id").args(["-u", "postgres"]).output().is_ok_and(|out| out.status.success());
            assert!(
                known,
                "no `postgres` user: PostgreSQL refuses to run as root, and tests run as root (installing Debian's \
                 postgresql-15 creates the user)"
            );
        }

        let dir = tempfile::Builder::new().prefix("kirana-pg-").tempdir().expect("a temporary directory");
        let root = dir.path().canonicalize().expect("the temporary directory's path");
        if as_root {
            run_checked(Command::new("chown").arg("postgres").arg(&root), "chown the temporary directory to postgres");
        }
        let (primary_port, replica_port) = free_port_pair();
        let pair = PgPair { bin, as_root, primary_port, replica_port, root, _dir: dir };

        let primary = pair.data_dir("primary");
        pair.pg_checked(
            &format!(
                "{}/initdb -D {} -A trust -U postgres -E UTF8 --no-locale --no-sync",
                pair.bin.display(),
                primary.display()
            ),
            "initdb the primary",
            None,
        );
        append(
            &primary.join("postgresql.conf"),
            &format!(
                "\n# kirana test pair\nlisten_addresses='127.0.0.1'\nport={primary_port}\n\
                 unix_socket_directories='{}'\nwal_level=replica\nmax_wal_senders=5\n\
                 shared_buffers=16MB\nwal_retrieve_retry_interval='200ms'\n",
                pair.root.display()
            ),
        );
        append(&primary.join("pg_hba.conf"), "host replication all 127.0.0.1/32 trust\n");
        pair.pg_ctl_start("primary");

        let replica = pair.data_dir("replica");
        pair.pg_checked(
            &format!(
                "{}/pg_basebackup -h 127.0.0.1 -p {primary_port} -U postgres -D {} -R -X stream --no-sync",
                pair.bin.display(),
                replica.display()
            ),
            "pg_basebackup the replica",
            Some("primary"),
        );
        let conf = replica.join("postgresql.conf");
        let text = fs::read_to_string(&conf).expect("the replica's postgresql.conf");
        let ours = format!("\nport={primary_port}\n");
        assert!(text.contains(&ours), "the base backup's postgresql.conf lacks {ours:?}");
        fs::write(&conf, text.replace(&ours, &format!("\nport={replica_port}\n"))).expect("set the replica's port");
        pair.pg_ctl_start("replica");
        pair.wait_streaming();
        pair
    }

    pub fn primary_url(&self) -> String {
        url(self.primary_port)
    }

    pub fn replica_url(&self) -> String {
        url(self.replica_port)
    }

    /// A clean stop (`-m fast`) of the primary: the shard's database is down.
    pub fn stop_primary(&self) {
        let data = self.data_dir("primary");
        self.pg_checked(
            &format!("{}/pg_ctl -D {} -m fast -w -t 30 stop", self.bin.display(), data.display()),
            "stop the primary",
            Some("primary"),
        );
    }

    /// Stops applying WAL on the replica; it keeps receiving it.
    pub fn pause_replay(&self) {
        self.replica_sql("SELECT pg_wal_replay_pause()");
    }

    pub fn resume_replay(&self) {
        self.replica_sql("SELECT pg_wal_replay_resume()");
    }

    /// A clean stop (`-m fast`): sessions are ended, the replica writes a restartpoint.
    pub fn stop_replica(&self) {
        let data = self.data_dir("replica");
        self.pg_checked(
            &format!("{}/pg_ctl -D {} -m fast -w -t 30 stop", self.bin.display(), data.display()),
            "stop the replica",
            Some("replica"),
        );
    }

    /// A crash: `kill -9` of the replica's postmaster. Returns once every process of that
    /// server is gone, so that `start_replica` finds its shared memory free.
    pub fn kill_replica(&self) {
        let data = self.data_dir("replica");
        let pid = postmaster_pid(&data).expect("the replica is not running: no postmaster.pid");
        run_checked(Command::new("kill").args(["-9", &pid.to_string()]), "kill -9 the replica's postmaster");
        let deadline = Instant::now() + PATIENCE;
        while is_running(pid) || !processes_in(&data).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the replica's processes outlived its postmaster by {PATIENCE:?}: {:?}",
                processes_in(&data)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the replica again after `stop_replica` or `kill_replica`, and returns once it
    /// accepts connections (it may not be streaming yet).
    pub fn start_replica(&self) {
        let data = self.data_dir("replica");
        // After a kill the postmaster lingers as a zombie when nothing reaps orphans (this
        // machine's init does not): its pid still looks alive to a new postmaster, which then
        // refuses both lock files. They are stale once that pid runs no more.
        if let Some(pid) = postmaster_pid(&data).filter(|pid| !is_running(*pid)) {
            let _ = fs::remove_file(data.join("postmaster.pid"));
            let _ = fs::remove_file(self.root.join(format!(".s.PGSQL.{}.lock", self.replica_port)));
            eprintln!("pg_support: removed the lock files of the replica's dead postmaster (pid {pid})");
        }
        self.pg_ctl_start("replica");
    }

    fn data_dir(&self, which: &str) -> PathBuf {
        self.root.join(which)
    }

    fn port(&self, which: &str) -> u16 {
        if which == "primary" { self.primary_port } else { self.replica_port }
    }

    fn log(&self, which: &str) -> PathBuf {
        self.root.join(format!("{which}.log"))
    }

    fn pg_ctl_start(&self, which: &str) {
        let (data, log) = (self.data_dir(which), self.log(which));
        self.pg_checked(
            &format!("{}/pg_ctl -D {} -l {} -w -t 30 start", self.bin.display(), data.display(), log.display()),
            &format!("start the {which} on port {}", self.port(which)),
            Some(which),
        );
    }

    /// Waits until the replica's WAL receiver streams, so that a test starts from a pair that
    /// replicates.
    fn wait_streaming(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = self.psql(self.replica_port, "SELECT status FROM pg_stat_wal_receiver");
            if status.as_deref() == Ok("streaming") {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the replica did not start streaming within {PATIENCE:?} (receiver status: {status:?})\n{}\n{}",
                    self.tail("replica"),
                    self.tail("primary")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn replica_sql(&self, sql: &str) {
        if let Err(error) = self.psql(self.replica_port, sql) {
            panic!("{sql} on the replica failed: {error}\n{}", self.tail("replica"));
        }
    }

    /// Runs one statement as `postgres` over TCP, and returns its unaligned, tuples-only output.
    fn psql(&self, port: u16, sql: &str) -> Result<String, String> {
        assert_ne!(port, SHARED_PORT, "pg_support must never touch the shared server");
        let mut command = Command::new(self.bin.join("psql"));
        without_pg_env(&mut command)
            .env("PGCONNECT_TIMEOUT", "5")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-d", "postgres", "-p", &port.to_string(), "-c", sql]);
        let out = command.output().map_err(|error| format!("psql did not run: {error}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Runs a shell command as the `postgres` user, from our directory (its own working
    /// directory may be unreadable to that user).
    fn pg(&self, script: &str) -> std::io::Result<Output> {
        let script = format!("cd {} && {script}", self.root.display());
        let mut command = if self.as_root {
            let mut su = Command::new("su");
            su.args(["postgres", "-s", "/bin/sh", "-c", &script]);
            su
        } else {
            let mut sh = Command::new("sh");
            sh.args(["-c", &script]);
            sh
        };
        without_pg_env(&mut command).output()
    }

    fn pg_checked(&self, script: &str, what: &str, log_of: Option<&str>) {
        let out = self.pg(script).unwrap_or_else(|error| panic!("could not {what}: {error} (running `{script}`)"));
        if !out.status.success() {
            panic!(
                "could not {what}: `{script}` exited with {}\nstdout: {}\nstderr: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim(),
                log_of.map(|which| self.tail(which)).unwrap_or_default()
            );
        }
    }

    /// The last lines of a server's log, for a panic message.
    fn tail(&self, which: &str) -> String {
        let log = self.log(which);
        match fs::read_to_string(&log) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(30);
                format!("--- end of {} ---\n{}", log.display(), lines[start..].join("\n"))
            }
            Err(error) => format!("--- no log at {}: {error} ---", log.display()),
        }
    }

    /// Stops one server at once, and makes sure nothing of it survives the test.
    fn stop_now(&self, which: &str) {
        let data = self.data_dir(which);
        let Some(pid) = postmaster_pid(&data) else { return };
        let _ = self.pg(&format!("{}/pg_ctl -D {} -m immediate -w -t 10 stop", self.bin.display(), data.display()));
        if is_running(pid) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        // Never panic here: a test that already failed would abort instead of reporting.
        self.stop_now("replica");
        self.stop_now("primary");
    }
}

fn url(port: u16) -> String {
    format!("postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=5")
}

/// Two consecutive free ports on 127.0.0.1, the replica's one above the primary's.
fn free_port_pair() -> (u16, u16) {
    for _ in 0..100 {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else { continue };
        let Ok(port) = listener.local_addr().map(|addr| addr.port()) else { continue };
        let Some(next) = port.checked_add(1) else { continue };
        if [port, next].contains(&SHARED_PORT) || TcpListener::bind(("127.0.0.1", next)).is_err() {
            continue;
        }
        return (port, next);
    }
    panic!("found no two consecutive free ports on 127.0.0.1 in 100 tries");
}

fn without_pg_env(command: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            command.env_remove(key);
        }
    }
    command
}

fn run_checked(command: &mut Command, what: &str) {
    match command.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("could not {what}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        Err(error) => panic!("could not {what}: {error}"),
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
    file.write_all(text.as_bytes()).unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
}

pub(super) fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

pub(super) fn postmaster_pid(data: &Path) -> Option<u32> {
    fs::read_to_string(data.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

/// Alive and not a zombie.
pub(super) fn is_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Live processes whose working directory is `data`: every PostgreSQL process of that server.
pub(super) fn processes_in(data: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data) && is_running(*pid))
        .collect()
}
