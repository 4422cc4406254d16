//! The fleet the chaos test runs, every part of the test's own: PostgreSQL formations under a
//! pg_auto_failover monitor, NATS JetStream, Redis, several `kirana serve` nodes behind nginx
//! (`least_conn`), and a receiver standing in for the SMS provider and the merchants' webhook
//! endpoints. Each part can be killed and started again.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use kirana_storage::postgres::testing::AutoFailover;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_kirana");
pub const SECRET: &str = "6b6972616e612d666c6565742d746573742d7365637265742d6b65792d303031";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().unwrap().port()
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

async fn wait_listening(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listening(port) {
        ensure!(Instant::now() < deadline, "{what} did not listen on {port} within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A NATS server with JetStream, on its own port and store directory.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Nats {
    pub async fn start(root: &Path) -> Result<Nats> {
        std::fs::create_dir_all(root.join("nats"))?;
        let mut n = Nats { child: None, port: free_port(), dir: root.join("nats") };
        n.run().await?;
        Ok(n)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn run(&mut self) -> Result<()> {
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.join("js"))
            .arg("-l")
            .arg(self.dir.join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("run nats-server (Debian's nats-server)")?;
        self.child = Some(child);
        wait_listening(self.port, "nats-server").await
    }

    /// `kill -9`.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

/// nginx in front of the nodes: `least_conn`, passive health checks, a failed connection
/// retried on the next node (never a request already sent: a checkout is not replayed by the
/// balancer, the shopper's idempotency key does that).
pub struct Nginx {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Nginx {
    pub async fn start(root: &Path, upstreams: &[u16]) -> Result<Nginx> {
        let dir = root.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let port = free_port();
        let servers: String =
            upstreams.iter().map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n")).collect();
        let d = dir.display();
        let conf = format!(
            "user root;\nworker_processes 1;\ndaemon off;\nmaster_process on;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             upstream kirana {{\n    least_conn;\n{servers}    keepalive 64;\n  }}\n  \
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://kirana;\n      \
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n      \
             proxy_set_header X-Forwarded-For $remote_addr;\n      proxy_next_upstream error timeout;\n      \
             proxy_connect_timeout 1s;\n      proxy_read_timeout 30s;\n    }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("run nginx (Debian's nginx-light; .ci/run installs it)")?;
        let mut n = Nginx { child: Some(child), port, dir };
        if let Err(e) = wait_listening(port, "nginx").await {
            let log = std::fs::read_to_string(n.dir.join("error.log")).unwrap_or_default();
            n.stop().await;
            bail!("{e}\n{log}");
        }
        Ok(n)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn stop(&mut self) {
        // The master and its worker: the pid file names the master.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("nginx.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status().await;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        // Its worker, orphaned by the master's kill, goes with the process group it shares.
        let _ = Command::new("pkill").args(["-9", "-f", &format!("nginx.*{}", self.dir.display())]).status().await;
    }
}

/// A `kirana serve` node.
pub struct Node {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    pub fn new(name: &str, port: u16, config: &Path, root: &Path, public_url: &str) -> Node {
        let data = root.join(name);
        let args = vec![
            "--config".into(),
            config.display().to_string(),
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--node-name".into(),
            name.into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--public-url".into(),
            public_url.into(),
        ];
        Node { name: name.into(), port, child: None, args, log: Arc::default() }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it and waits for its listening line.
    pub async fn start(&mut self) -> Result<()> {
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KIRANA_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .env("NO_COLOR", "1")
            .env("KIRANA_SMS_TOKEN", "fleet")
            .env("RUST_LOG", "info,tower_http=warn,tokio_postgres=warn,async_nats=warn")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start kirana")?;
        let err = child.stderr.take().unwrap();
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let mut v = log.lock().unwrap();
                v.push(l);
                let len = v.len();
                if len > 4000 {
                    v.drain(..len - 3000);
                }
            }
        });
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let started = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(l) = lines.next_line().await? {
                if l.starts_with("kirana listening on ") {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
        match started {
            Ok(Ok(true)) => Ok(()),
            _ => Err(anyhow!("node {} did not start:\n{}", self.name, self.tail(40))),
        }
    }

    /// `kill -9`.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM and wait: a clean stop that gives its leases back.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            }
            if tokio::time::timeout(Duration::from_secs(20), c.wait()).await.is_err() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }

    pub fn tail(&self, n: usize) -> String {
        let v = self.log.lock().unwrap();
        v[v.len().saturating_sub(n)..].join("\n")
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// What the receiver saw: SMS by idempotency key, webhooks by event id (with their payloads).
#[derive(Default)]
pub struct Received {
    pub sms: Mutex<HashMap<String, u32>>,
    pub hooks: Mutex<HashMap<String, (u32, Value)>>,
}

/// The SMS provider's and the merchants' endpoints: it counts, answers 200, and never fails.
pub async fn receiver() -> Result<(u16, Arc<Received>)> {
    use axum::routing::post;
    let seen = Arc::new(Received::default());
    let (a, b) = (seen.clone(), seen.clone());
    let app = axum::Router::new()
        .route(
            "/sms",
            post(move |headers: axum::http::HeaderMap| {
                let seen = a.clone();
                async move {
                    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    *seen.sms.lock().unwrap().entry(key).or_default() += 1;
                    axum::http::StatusCode::OK
                }
            }),
        )
        .route(
            "/hooks",
            post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = b.clone();
                async move {
                    let id = headers.get("kirana-event-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mut hooks = seen.hooks.lock().unwrap();
                    let e = hooks.entry(id).or_insert((0, payload));
                    e.0 += 1;
                    axum::http::StatusCode::OK
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((port, seen))
}

/// The fleet's configuration file: PostgreSQL under the monitor (multi-host URLs, so nodes
/// follow a failover), JetStream, Redis, the receiver as the SMS provider, short leases.
pub fn write_config(
    root: &Path,
    af: &AutoFailover,
    nats: &str,
    redis: &str,
    sms: &str,
    shards: &[&str],
) -> Result<PathBuf> {
    let mut s = format!(
        "events = \"{nats}\"\nevents_namespace = \"fleet\"\ncache = \"{redis}\"\nsecret_key = \"{SECRET}\"\n\
         webhooks_allow_private = true\ntrust_proxy = true\nsms_url = \"{sms}\"\nlease_ttl_secs = 6\n\n\
         [postgres]\ncontrol = \"{}\"\nmonitor = \"{}\"\ndirectory_ttl_secs = 2\npool_size = 8\nbackground_pool_size = 3\n\
         acquire_timeout_ms = 2000\nprimary_deadline_ms = 4000\n",
        af.url("control"),
        af.monitor_url()
    );
    for f in shards {
        s.push_str(&format!(
            "\n[[postgres.shards]]\nprimary = \"{}\"\nreplicas = [\"{}\"]\n",
            af.url(f),
            af.standby_url(f)
        ));
    }
    let path = root.join("kirana.toml");
    std::fs::write(&path, s)?;
    Ok(path)
}

/// Runs a one-shot `kirana` command with the fleet's configuration.
pub async fn cli(config: &Path, args: &[&str]) -> Result<(bool, String)> {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KIRANA_") {
            cmd.env_remove(key);
        }
    }
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        cmd.env("NO_COLOR", "1")
            .arg("--config")
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("`kirana {}` did not finish within 120 s", args.join(" ")))??;
    Ok((
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    ))
}
