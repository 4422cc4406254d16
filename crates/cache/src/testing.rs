//! Test support, not used by the cache itself: a `redis-server` of a test's own, for tests that
//! stop Redis (the shared one on 6379 must never be stopped), and loaders that count their runs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Value;

/// A loader's error in tests: the database is down.
#[derive(Debug, PartialEq, Eq)]
pub struct DbDown;

impl std::fmt::Display for DbDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("database down")
    }
}

/// An HTML page whose body is `body`.
pub fn page(body: &'static str) -> Value {
    Value::new("text/html; charset=utf-8", body)
}

/// A loader that counts its runs in `calls` and answers [`page`]`(body)`.
pub fn counted(
    calls: &Arc<AtomicUsize>,
    body: &'static str,
) -> impl Future<Output = Result<Value, DbDown>> + Send + 'static {
    let calls = calls.clone();
    async move {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(page(body))
    }
}

/// A `redis-server` of this test's own, on a free port, in a temporary directory.
pub struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Self { port, dir: tempfile::tempdir().unwrap(), child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same port) and returns once it says it accepts connections.
    pub fn restart(&mut self) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (Debian's redis-server package)");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen = Vec::new();
        for line in stdout.lines() {
            let line = line.unwrap();
            if line.contains("Ready to accept connections") {
                self.child = Some(child);
                return;
            }
            seen.push(line);
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server on port {} exited before it was ready:\n{}", self.port, seen.join("\n"));
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
