//! PostgreSQL under pg_auto_failover, for tests: a monitor and, per formation (one database
//! cluster: the control database, a shard), a primary with a synchronous standby, all of the
//! test's own on free ports in a temporary directory. Tests kill a formation's primary (`kill -9`
//! of its keeper and its server, as a crashed machine would) and watch the standby take over.
//!
//! Built as `shared/docs/recipes.md` says ("Automatic failover with pg_auto_failover"), with
//! Debian's `pg-auto-failover-cli` and `postgresql-15-auto-failover`. Each node's `pg_autoctl`
//! supervises its server and runs in a session of its own; its XDG directories are the test's.
//! The monitor is tuned to notice a dead primary in seconds rather than the defaults' half
//! minute (see [`MONITOR_TUNING`]). Everything here blocks: call it from `spawn_blocking`.

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where Debian's packages put `pg_autoctl` and the server binaries.
const AUTOCTL: &str = "/usr/bin/pg_autoctl";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long a formation may take to reach a state before the harness gives up and says why.
const PATIENCE: Duration = Duration::from_secs(90);

/// The monitor's health checks, tightened for tests and for a fleet that wants a write outage of
/// seconds: a node is checked every second, judged unhealthy after 5 s without an answer, and a
/// primary that cannot be reached is given 3 s to demote itself before its standby is promoted
/// (with synchronous replication it cannot have acknowledged a commit the standby lacks).
pub const MONITOR_TUNING: &[(&str, &str)] = &[
    ("pgautofailover.health_check_period", "1000"),
    ("pgautofailover.health_check_timeout", "1000"),
    ("pgautofailover.health_check_retry_delay", "500"),
    ("pgautofailover.health_check_max_retries", "1"),
    ("pgautofailover.node_considered_unhealthy_timeout", "5000"),
    ("pgautofailover.primary_demote_timeout", "3000"),
];

pub struct AutoFailover {
    root: PathBuf,
    as_root: bool,
    monitor_port: u16,
    monitor: Mutex<Option<Child>>,
    /// Node name → its formation, port and keeper.
    nodes: Mutex<HashMap<String, Node>>,
    _dir: tempfile::TempDir,
}

struct Node {
    formation: String,
    port: u16,
    keeper: Option<Child>,
}

/// One node as the monitor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub port: u16,
    pub reported: String,
    pub assigned: String,
}

impl AutoFailover {
    /// A monitor and, for each of `formations`, a primary and a standby replicating
    /// synchronously; returns once every formation reports `primary` and `secondary`.
    pub fn start(formations: &[&str]) -> AutoFailover {
        assert!(
            Path::new(AUTOCTL).is_file(),
            "pg_auto_failover is missing: no {AUTOCTL} (install Debian's pg-auto-failover-cli and \
             postgresql-15-auto-failover; .ci/run does)"
        );
        let as_root = super::pair::effective_uid() == Some(0);
        let dir = tempfile::Builder::new().prefix("kirana-paf-").tempdir().expect("a temporary directory");
        let root = dir.path().canonicalize().expect("the temporary directory's path");
        if as_root {
            let ok = Command::new("chown").arg("postgres").arg(&root).status().is_ok_and(|s| s.success());
            assert!(ok, "chown the temporary directory to postgres");
        }
        let monitor_port = free_port();
        let af = AutoFailover {
            root,
            as_root,
            monitor_port,
            monitor: Mutex::new(None),
            nodes: Mutex::new(HashMap::new()),
            _dir: dir,
        };
        let monitor = af.spawn(
            "monitor",
            &format!(
                "{AUTOCTL} create monitor --pgdata {} --pgport {monitor_port} --hostname 127.0.0.1 --auth trust --no-ssl --run",
                af.root.join("monitor").display()
            ),
        );
        *af.monitor.lock().unwrap() = Some(monitor);
        af.wait("the monitor answers", || af.monitor_sql("SELECT 1").ok().filter(|s| s == "1"));
        for (name, value) in MONITOR_TUNING {
            af.monitor_sql(&format!("ALTER SYSTEM SET {name} = '{value}'")).expect("tune the monitor");
        }
        af.monitor_sql("SELECT pg_reload_conf()").expect("reload the monitor's settings");
        for f in formations {
            af.monitor_sql(&format!("SELECT pgautofailover.create_formation('{f}', 'pgsql', 'postgres', true, 0)"))
                .unwrap_or_else(|e| panic!("create formation {f}: {e}"));
        }
        // The primaries first, all at once; then the standbys (each needs its primary).
        for f in formations {
            af.add_node(f, &format!("{f}-1"));
        }
        for f in formations {
            af.wait(&format!("{f}'s first node is a single primary"), || {
                af.states(f).iter().any(|n| n.reported == "single" && n.assigned == "single").then_some(())
            });
        }
        for f in formations {
            af.add_node(f, &format!("{f}-2"));
        }
        for f in formations {
            af.wait_replicating(f);
        }
        af
    }

    /// Waits until the formation has a primary and a secondary, both settled.
    ///
    /// A node rejoining may need a new base backup, which starts with a checkpoint on the
    /// primary: a spread one by default, minutes long. Every few seconds of waiting, the primary
    /// is asked for an immediate checkpoint, which finishes any spread one at once.
    pub fn wait_replicating(&self, formation: &str) {
        let mut nudged = Instant::now();
        self.wait(&format!("{formation} has a primary and a secondary"), || {
            let s = self.states(formation);
            let settled = |state: &str| s.iter().any(|n| n.reported == state && n.assigned == state);
            if settled("primary") && settled("secondary") {
                return Some(());
            }
            if nudged.elapsed() > Duration::from_secs(3) {
                nudged = Instant::now();
                if let Some(p) = s.iter().find(|n| n.reported == n.assigned && n.reported.ends_with("primary")) {
                    let _ = psql(p.port, "postgres", "CHECKPOINT");
                }
            }
            None
        });
    }

    /// `postgres://postgres@h1,h2/postgres?target_session_attrs=read-write`: whichever node is
    /// the formation's primary now.
    pub fn url(&self, formation: &str) -> String {
        self.multi_host(formation, "read-write")
    }

    /// The same hosts, for whichever node is a standby now.
    pub fn standby_url(&self, formation: &str) -> String {
        self.multi_host(formation, "read-only")
    }

    pub fn monitor_url(&self) -> String {
        format!("postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable", self.monitor_port)
    }

    fn multi_host(&self, formation: &str, attrs: &str) -> String {
        let nodes = self.nodes.lock().unwrap();
        let mut ports: Vec<u16> = nodes.values().filter(|n| n.formation == formation).map(|n| n.port).collect();
        ports.sort_unstable();
        let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("postgres://postgres@{}/postgres?target_session_attrs={attrs}&connect_timeout=2", hosts.join(","))
    }

    /// The formation's nodes as the monitor sees them.
    pub fn states(&self, formation: &str) -> Vec<NodeState> {
        let out = self
            .monitor_sql(&format!(
                "SELECT nodename || '|' || nodeport || '|' || reportedstate || '|' || goalstate \
                 FROM pgautofailover.node WHERE formationid = '{formation}' ORDER BY nodeid"
            ))
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let mut f = l.split('|');
                Some(NodeState {
                    name: f.next()?.to_string(),
                    port: f.next()?.parse().ok()?,
                    reported: f.next()?.to_string(),
                    assigned: f.next()?.to_string(),
                })
            })
            .collect()
    }

    /// The name of the formation's primary now: the node the monitor wants as primary and that
    /// says it is one (a dead primary's last report still says `primary` while the monitor
    /// assigns it `demoted`).
    pub fn primary(&self, formation: &str) -> Option<String> {
        self.states(formation)
            .into_iter()
            .find(|n| n.reported == n.assigned && (n.reported == "primary" || n.reported == "wait_primary"))
            .map(|n| n.name)
    }

    /// `kill -9` of a node's keeper and of every process of its server: a machine gone.
    /// Returns once nothing of it runs.
    pub fn kill(&self, node: &str) {
        let pgdata = self.root.join(node);
        let mut nodes = self.nodes.lock().unwrap();
        let n = nodes.get_mut(node).unwrap_or_else(|| panic!("no node {node}"));
        let mut pids = Vec::new();
        if let Some(k) = &n.keeper {
            pids.push(k.id());
        }
        pids.extend(autoctl_processes(&pgdata));
        pids.extend(super::pair::postmaster_pid(&pgdata));
        let mut all = Vec::new();
        for pid in pids {
            all.push(pid);
            all.extend(descendants(pid));
        }
        all.extend(super::pair::processes_in(&pgdata));
        all.sort_unstable();
        all.dedup();
        for pid in &all {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
        if let Some(mut k) = n.keeper.take() {
            let _ = k.wait();
        }
        let deadline = Instant::now() + PATIENCE;
        while all.iter().any(|p| super::pair::is_running(*p)) {
            assert!(Instant::now() < deadline, "node {node}'s processes outlived kill -9");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a killed node's keeper again: it rejoins its formation (as a standby, if its
    /// standby took over).
    pub fn restart(&self, node: &str) {
        let pgdata = self.root.join(node);
        // A server killed without a chance to clean up leaves its lock files behind.
        if let Some(pid) = super::pair::postmaster_pid(&pgdata).filter(|p| !super::pair::is_running(*p)) {
            let _ = fs::remove_file(pgdata.join("postmaster.pid"));
            let port = self.nodes.lock().unwrap()[node].port;
            let _ = fs::remove_file(self.root.join(format!(".s.PGSQL.{port}.lock")));
            let _ = fs::remove_file(format!("/tmp/.s.PGSQL.{port}.lock"));
            eprintln!("autofailover: removed the lock files of node {node}'s dead server (pid {pid})");
        }
        let keeper = self.spawn(node, &format!("{AUTOCTL} run --pgdata {}", pgdata.display()));
        self.nodes.lock().unwrap().get_mut(node).expect("a known node").keeper = Some(keeper);
    }

    fn add_node(&self, formation: &str, name: &str) {
        let port = free_port();
        let keeper = self.spawn(
            name,
            &format!(
                "{AUTOCTL} create postgres --pgdata {} --pgport {port} --hostname 127.0.0.1 --auth trust --no-ssl \
                 --monitor '{}' --formation {formation} --name {name} --run",
                self.root.join(name).display(),
                self.monitor_url()
            ),
        );
        self.nodes
            .lock()
            .unwrap()
            .insert(name.to_string(), Node { formation: formation.to_string(), port, keeper: Some(keeper) });
    }

    /// Runs `command` as `postgres` in a session of its own (so a kill reaches all of it), its
    /// output in `<name>.log` (appended).
    fn spawn(&self, name: &str, command: &str) -> Child {
        let log = self.root.join(format!("{name}.log"));
        let env = format!(
            "export PATH={PG_BIN}:$PATH XDG_CONFIG_HOME={root}/cfg XDG_DATA_HOME={root}/data XDG_RUNTIME_DIR={root}/run; \
             mkdir -p {root}/cfg {root}/data {root}/run; cd {root} && exec setsid {command} >> {log} 2>&1",
            root = self.root.display(),
            log = log.display()
        );
        let mut cmd = if self.as_root {
            let mut su = Command::new("su");
            su.args(["postgres", "-s", "/bin/sh", "-c", &env]);
            su
        } else {
            let mut sh = Command::new("sh");
            sh.args(["-c", &env]);
            sh
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        cmd.spawn().unwrap_or_else(|e| panic!("cannot run {command}: {e}"))
    }

    /// Runs SQL on the monitor's own database as `postgres`; unaligned, tuples only.
    pub fn monitor_sql(&self, sql: &str) -> Result<String, String> {
        psql(self.monitor_port, "pg_auto_failover", sql)
    }

    /// Runs SQL on one node's `postgres` database.
    pub fn node_sql(&self, node: &str, sql: &str) -> Result<String, String> {
        let port = self.nodes.lock().unwrap()[node].port;
        psql(port, "postgres", sql)
    }

    fn wait<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = ["monitor"]
                    .into_iter()
                    .map(String::from)
                    .chain(self.nodes.lock().unwrap().keys().cloned())
                    .map(|n| self.tail(&n))
                    .collect();
                panic!("pg_auto_failover: {what}: not within {PATIENCE:?}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tail(&self, name: &str) -> String {
        let log = self.root.join(format!("{name}.log"));
        let text = fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- end of {} ---\n{}", log.display(), lines[lines.len().saturating_sub(15)..].join("\n"))
    }
}

impl Drop for AutoFailover {
    fn drop(&mut self) {
        // Never panic here: kill every keeper and server, whatever state they are in.
        let names: Vec<String> = self.nodes.lock().map(|n| n.keys().cloned().collect()).unwrap_or_default();
        for n in names {
            let pgdata = self.root.join(&n);
            let mut pids: Vec<u32> = autoctl_processes(&pgdata);
            if let Ok(mut nodes) = self.nodes.lock()
                && let Some(node) = nodes.get_mut(&n)
                && let Some(k) = &mut node.keeper
            {
                pids.push(k.id());
                let _ = k.kill();
                let _ = k.wait();
            }
            pids.extend(super::pair::postmaster_pid(&pgdata));
            let mut all: Vec<u32> = pids.iter().flat_map(|p| std::iter::once(*p).chain(descendants(*p))).collect();
            all.extend(super::pair::processes_in(&pgdata));
            for pid in all {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
            }
        }
        let monitor = self.root.join("monitor");
        let mut all: Vec<u32> = autoctl_processes(&monitor);
        if let Ok(mut m) = self.monitor.lock()
            && let Some(k) = &mut *m
        {
            all.push(k.id());
            let _ = k.kill();
            let _ = k.wait();
        }
        all.extend(super::pair::postmaster_pid(&monitor));
        let mut every: Vec<u32> = all.iter().flat_map(|p| std::iter::once(*p).chain(descendants(*p))).collect();
        every.extend(super::pair::processes_in(&monitor));
        for pid in every {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
    }
}

fn psql(port: u16, db: &str, sql: &str) -> Result<String, String> {
    let mut command = Command::new(format!("{PG_BIN}/psql"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            command.env_remove(key);
        }
    }
    command
        .env("PGCONNECT_TIMEOUT", "3")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-d", db, "-p", &port.to_string(), "-c", sql]);
    let out = command.output().map_err(|e| format!("psql did not run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn free_port() -> u16 {
    for _ in 0..100 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else { continue };
        if let Ok(a) = l.local_addr()
            && a.port() != 5432
        {
            return a.port();
        }
    }
    panic!("no free port on 127.0.0.1");
}

/// Running `pg_autoctl` processes whose command line names `pgdata`.
fn autoctl_processes(pgdata: &Path) -> Vec<u32> {
    let needle = pgdata.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                c.contains("pg_autoctl") && c.contains(&needle)
            }) && super::pair::is_running(*pid)
        })
        .collect()
}

/// Every live descendant of `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, parent) in &parents {
            if *parent == p && !out.contains(child) {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}
