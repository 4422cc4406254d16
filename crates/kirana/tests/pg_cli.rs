//! The operator's side of the PostgreSQL backend, end to end: the real `kirana` binary serving
//! from a control database and two shards (databases of the test's own on the shared server at
//! 127.0.0.1:5432), a store moved between shards with `kirana shard move` while the server runs,
//! a shard pinned to one store, and `kirana doctor` reading a real streaming replica
//! (`PgPair`) in and out of rotation.
//!
//! The harness is `tests/e2e.rs`'s, trimmed: a child process with a clean `KIRANA_*`
//! environment, waits on signals (the listening line, an exit, an HTTP answer) with generous
//! timeouts that fail with the server's stderr. PostgreSQL being down fails the tests with the
//! command that starts it (`TempDb::create`), never skips them.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use kirana_storage::postgres::testing::{PgPair, TempDb};
use reqwest::Method;
use reqwest::header::{HeaderMap, LOCATION};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_kirana");
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A move waits out its cleanup delay (the directory TTL + 5 s here) before it exits.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a read after a move may take to settle (the server's directory TTL is 1 s).
const SETTLE: Duration = Duration::from_secs(15);

const MERCHANT_PHONE: &str = "+919876543210";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn kirana(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KIRANA_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("NO_COLOR", "1")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn describe(&self) -> String {
        format!("{}\n--- stdout ---\n{}--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }

    fn ok(self, what: &str) -> Result<Finished> {
        ensure!(self.status.success(), "`{what}` failed: {}", self.describe());
        Ok(self)
    }
}

/// A cluster of the test's own: a control database and shard databases, and the TOML file
/// that names them (with a 1 s directory TTL, so other nodes' caches matter within a test).
struct Cluster {
    control: TempDb,
    _shards: Vec<TempDb>,
    root: tempfile::TempDir,
    config: PathBuf,
}

impl Cluster {
    async fn new(shards: usize) -> Result<Cluster> {
        let control = TempDb::create().await;
        let mut dbs = Vec::new();
        for _ in 0..shards {
            dbs.push(TempDb::create().await);
        }
        let urls: Vec<(String, Vec<String>)> = dbs.iter().map(|d| (d.url(), vec![])).collect();
        Cluster::write(control, dbs, &urls)
    }

    fn write(control: TempDb, shards: Vec<TempDb>, urls: &[(String, Vec<String>)]) -> Result<Cluster> {
        let root = tempfile::tempdir()?;
        let mut toml = format!(
            "data_dir = {:?}\n[postgres]\ncontrol = {:?}\ndirectory_ttl_secs = 1\npool_size = 4\n",
            root.path().join("data").display().to_string(),
            control.url()
        );
        for (primary, replicas) in urls {
            toml.push_str(&format!("[[postgres.shards]]\nprimary = {primary:?}\nreplicas = {replicas:?}\n"));
        }
        let config = root.path().join("kirana.toml");
        std::fs::write(&config, toml)?;
        Ok(Cluster { control, _shards: shards, root, config })
    }

    /// Runs `kirana --config <file> ARGS…` to its end.
    async fn run(&self, args: &[&str]) -> Result<Finished> {
        let mut all = vec!["--config", self.config.to_str().context("a UTF-8 temp path")?];
        all.extend_from_slice(args);
        let child = kirana(self.root.path(), &all).spawn().with_context(|| format!("cannot start {BIN}"))?;
        let out = tokio::time::timeout(EXIT_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| anyhow!("`kirana {}` did not exit within {EXIT_TIMEOUT:?}", args.join(" ")))??;
        Ok(Finished {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn token(&self, phone: &str) -> Result<String> {
        let out = self.run(&["merchant", "token", "--phone", phone]).await?.ok("kirana merchant token")?;
        Ok(out.stdout.trim().to_string())
    }

    /// The shard the directory records for a store, read from the control database itself.
    async fn shard_of(&self, store_id: &str) -> Result<i64> {
        let (c, conn) = tokio_postgres::connect(&self.control.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let row = c.query_opt("SELECT shard FROM stores WHERE store_id::text = $1", &[&store_id]).await?;
        Ok(row.with_context(|| format!("store {store_id} is not in the directory"))?.get(0))
    }

    async fn serve(&self) -> Result<Server> {
        let args = ["--config", self.config.to_str().context("a UTF-8 temp path")?, "serve", "--listen", "127.0.0.1:0"];
        Server::spawn(self.root.path(), &args).await
    }
}

struct Server {
    child: Child,
    pid: u32,
    api: Api,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    async fn spawn(cwd: &Path, args: &[&str]) -> Result<Server> {
        let mut child = kirana(cwd, args).spawn().with_context(|| format!("cannot start {BIN}"))?;
        let pid = child.id().context("the server exited at once")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().context("stderr is piped")?).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().context("stdout is piped")?).lines();
        let base = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("kirana listening on ") {
                    return Ok::<_, anyhow::Error>(url.trim().to_string());
                }
            }
            bail!("stdout closed before the listening line")
        })
        .await;
        let mut server = Server { child, pid, api: Api::new(String::new())?, stderr };
        let base = match base {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => bail!("`kirana serve` did not start: {e}\n--- stderr ---\n{}", server.stderr_text()),
            Err(_) => bail!("no listening line within {START_TIMEOUT:?}\n--- stderr ---\n{}", server.stderr_text()),
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        server.api = Api::new(base)?;
        Ok(server)
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SIGTERM, then the exit: the drain, the pipeline and the replica probers all stop.
    async fn stop(mut self) -> Result<ExitStatus> {
        let status = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().await?;
        ensure!(status.success(), "kill -TERM {} failed", self.pid);
        match tokio::time::timeout(EXIT_TIMEOUT, self.child.wait()).await {
            Ok(s) => Ok(s?),
            Err(_) => bail!("kirana did not exit within {EXIT_TIMEOUT:?} of SIGTERM\n{}", self.stderr_text()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let all = self.stderr_text();
        let lines: Vec<&str> = all.lines().collect();
        eprintln!(
            "--- kirana serve stderr (last 40 lines) ---\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Resp {
    fn expect(self, status: u16, what: &str) -> Result<Value> {
        ensure!(self.status == status, "{what}: expected {status}, got {}; body: {}", self.status, self.body);
        Ok(self.body)
    }
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: String) -> Result<Api> {
        Ok(Api { http: reqwest::Client::builder().no_proxy().timeout(HTTP_TIMEOUT).build()?, base })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Resp> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok(Resp { status, headers, body })
    }

    /// Retries what a moving store answers with 503 (its fence met a stale directory entry,
    /// which the answer drops), as a client following `Retry-After` would.
    async fn call_retrying(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Resp> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let r = self.call(method.clone(), path, bearer, headers, body).await?;
            if r.status != 503 || Instant::now() > deadline {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn create_store(&self, token: &str, name: &str) -> Result<(String, String)> {
        let s = self
            .call_retrying(Method::POST, "/api/v1/stores", Some(token), &[], Some(&json!({ "name": name })))
            .await?
            .expect(201, "creating a store")?;
        Ok((text(&s, "id")?, text(&s, "slug")?))
    }

    /// A cart with one unit of `variant`, checked out; the order id.
    async fn checkout(&self, slug: &str, variant: &str, key: &str) -> Result<String> {
        let cart = self
            .call_retrying(Method::POST, &format!("/api/v1/storefront/{slug}/carts"), None, &[], None)
            .await?
            .expect(201, "opening a cart")?;
        let (cart_id, cart_token) = (text(&cart, "cart_id")?, text(&cart, "token")?);
        self.call_retrying(
            Method::PUT,
            &format!("/api/v1/storefront/{slug}/carts/{cart_id}/items"),
            None,
            &[("x-cart-token", &cart_token)],
            Some(&json!({ "variant_id": variant, "quantity": 1 })),
        )
        .await?
        .expect(200, "putting an item in the cart")?;
        let body = json!({
            "customer": { "name": "Asha", "phone": "+919812345678" },
            "address": { "line1": "1 MG Road", "city": "Pune", "postal_code": "411001" },
            "payment_method": "cod"
        });
        let r = self
            .call_retrying(
                Method::POST,
                &format!("/api/v1/storefront/{slug}/carts/{cart_id}/checkout"),
                None,
                &[("x-cart-token", &cart_token), ("idempotency-key", key)],
                Some(&body),
            )
            .await?;
        let headers = r.headers.clone();
        r.expect(201, "checking out")?;
        let loc = headers.get(LOCATION).context("a checkout without Location")?.to_str()?;
        Ok(loc.rsplit('/').next().unwrap_or_default().to_string())
    }

    /// Polls a merchant read until it answers 200 with what `check` accepts, within [`SETTLE`]
    /// (right after a move a node may still hold the old directory entry for its TTL).
    async fn settled(&self, token: &str, path: &str, check: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let r = self.call(Method::GET, path, Some(token), &[], None).await?;
            if r.status == 200 && check(&r.body) {
                return Ok(r.body);
            }
            if Instant::now() > deadline {
                bail!("GET {path} did not settle within {SETTLE:?}: {} {}", r.status, r.body);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn text(v: &Value, field: &str) -> Result<String> {
    v[field].as_str().map(str::to_string).with_context(|| format!("no string '{field}' in {v}"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_moved_while_the_server_runs_keeps_its_products_and_orders_and_sells_on() -> Result<()> {
    let cluster = Cluster::new(2).await?;
    let server = cluster.serve().await?;
    let api = server.api.clone();
    let token = cluster.token(MERCHANT_PHONE).await?;

    let (store, slug) = api.create_store(&token, "Moving Chai").await?;
    ensure!(cluster.shard_of(&store).await? == 0, "the first store goes to the emptiest shard, 0");
    let product = api
        .call(
            Method::POST,
            &format!("/api/v1/stores/{store}/products"),
            Some(&token),
            &[],
            Some(&json!({ "title": "Masala chai", "price": 4500, "stock": 50, "status": "active" })),
        )
        .await?
        .expect(201, "creating a product")?;
    let product_id = text(&product, "id")?;
    let variant = product["variants"][0]["id"].as_str().context("a variant id")?.to_string();
    let order = api.checkout(&slug, &variant, "before-move").await?;

    let moved = cluster.run(&["shard", "move", &store, "1"]).await?.ok("kirana shard move")?;
    eprintln!("{}", moved.stdout);
    ensure!(moved.stdout.contains("cutover pause"), "the move's report: {}", moved.describe());
    ensure!(moved.stdout.contains("rows/s"), "the move reports its copy rate: {}", moved.describe());
    ensure!(cluster.shard_of(&store).await? == 1, "the directory now says shard 1");

    // The same reads, through the running server, answer the same.
    let p = api
        .settled(&token, &format!("/api/v1/stores/{store}/products/{product_id}"), |p| p["title"] == "Masala chai")
        .await?;
    ensure!(p["variants"][0]["stock"] == 49, "one unit sold before the move: {p}");
    api.settled(&token, &format!("/api/v1/stores/{store}/orders/{order}"), |o| o["id"] == order.as_str()).await?;
    // A new checkout succeeds (a stale fence answer is retried, as a client would).
    let after = api.checkout(&slug, &variant, "after-move").await?;
    ensure!(after != order);
    api.settled(&token, &format!("/api/v1/stores/{store}/orders?limit=10"), |page| {
        page["items"].as_array().is_some_and(|items| items.len() == 2)
    })
    .await?;

    let journal = cluster.run(&["shard", "moves"]).await?.ok("kirana shard moves")?;
    ensure!(journal.stdout.contains(&store) && journal.stdout.contains("cleaned"), "{}", journal.describe());

    // Pin shard 1 to the store (it is alone there): new stores avoid it from now on.
    let pinned = cluster.run(&["shard", "pin", &store, "1"]).await?.ok("kirana shard pin")?;
    ensure!(pinned.stdout.contains("dedicated to store"), "{}", pinned.describe());
    // The server caches placement counts for up to its directory TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut neighbours = Vec::new();
    for n in 0..3 {
        let (s, _) = api.create_store(&token, &format!("Neighbour {n}")).await?;
        ensure!(cluster.shard_of(&s).await? == 0, "store {s} was placed on the pinned shard 1");
        neighbours.push(s);
    }
    // Shard 0 holds three stores: pinning it to one of them is refused, naming the others.
    let refused = cluster.run(&["shard", "pin", &neighbours[0], "0"]).await?;
    ensure!(!refused.status.success(), "pinning a shared shard must fail: {}", refused.describe());
    ensure!(refused.stderr.contains("holds 2 other stores"), "{}", refused.describe());
    // Nor may another store move onto the pinned shard.
    let refused = cluster.run(&["shard", "move", &neighbours[1], "1"]).await?;
    ensure!(!refused.status.success() && refused.stderr.contains("dedicated to store"), "{}", refused.describe());
    let list = cluster.run(&["shard", "list"]).await?.ok("kirana shard list")?;
    ensure!(list.stdout.lines().any(|l| l.starts_with('1') && l.contains(&store)), "{}", list.describe());
    let doctor = cluster.run(&["doctor"]).await?.ok("kirana doctor")?;
    eprintln!("{}\n{}", list.stdout, doctor.stdout);
    ensure!(doctor.stdout.contains("healthy") && doctor.stdout.contains(&format!("dedicated to store {store}")));

    // Pinning a store that lives elsewhere moves it there: free shard 1 first.
    let unpinned = cluster.run(&["shard", "unpin", "1"]).await?.ok("kirana shard unpin")?;
    ensure!(unpinned.stdout.contains("no longer dedicated"), "{}", unpinned.describe());
    cluster.run(&["shard", "move", &store, "0", "--cleanup-delay", "1"]).await?.ok("moving the store back")?;
    let pinned =
        cluster.run(&["shard", "pin", &neighbours[2], "1", "--cleanup-delay", "1"]).await?.ok("pin with a move")?;
    ensure!(pinned.stdout.contains("moved store"), "{}", pinned.describe());
    ensure!(cluster.shard_of(&neighbours[2]).await? == 1, "the pinned store moved to its shard");
    api.settled(&token, &format!("/api/v1/stores/{store}/products/{product_id}"), |p| p["title"] == "Masala chai")
        .await?;

    ensure!(server.stop().await?.success(), "serve exits cleanly after SIGTERM");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_a_paused_replica_out_of_rotation_and_fails() -> Result<()> {
    let pair = tokio::task::spawn_blocking(PgPair::start).await?;
    let control = TempDb::create().await;
    let cluster = Cluster::write(control, vec![], &[(pair.primary_url(), vec![pair.replica_url()])])?;
    cluster.run(&["migrate"]).await?.ok("kirana migrate")?;

    // Healthy: the replica earns its place with its first good probe. Right after the
    // migration it may still be replaying, so a few tries.
    let mut last = None;
    for _ in 0..20 {
        let out = cluster.run(&["doctor", "--json"]).await?;
        let report: Value = serde_json::from_str(&out.stdout).with_context(|| out.describe())?;
        if out.status.success() && report["shards"][0]["replicas"][0]["in_rotation"] == true {
            last = None;
            break;
        }
        last = Some(out.describe());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(l) = last {
        bail!("the healthy replica never showed in rotation:\n{l}");
    }

    // Paused, with writes behind it: out of rotation, saying why, and the exit code says so.
    tokio::task::block_in_place(|| pair.pause_replay());
    let (c, conn) = tokio_postgres::connect(&pair.primary_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    c.batch_execute("CREATE TABLE filler (n BIGINT); INSERT INTO filler SELECT generate_series(1, 10000);").await?;
    for n in 0..5 {
        c.execute("INSERT INTO filler VALUES ($1)", &[&(n as i64)]).await?;
    }
    let out = cluster.run(&["doctor", "--json"]).await?;
    ensure!(!out.status.success(), "doctor must fail with a paused replica: {}", out.describe());
    let report: Value = serde_json::from_str(&out.stdout).with_context(|| out.describe())?;
    let replica = &report["shards"][0]["replicas"][0];
    ensure!(replica["in_rotation"] == false, "{replica}");
    ensure!(replica["state"] == "replay paused", "{replica}");
    ensure!(replica["why"].as_str().is_some_and(|w| w.contains("pg_wal_replay_pause")), "{replica}");
    ensure!(replica["lag_bytes"].as_u64().is_some_and(|b| b > 0), "writes after the pause are lag: {replica}");
    ensure!(report["healthy"] == false);
    let text = cluster.run(&["doctor"]).await?;
    eprintln!("{}", text.stdout);
    ensure!(
        text.stdout.contains("shard 0 replica 0") && text.stdout.contains("OUT of rotation — replay paused"),
        "{}",
        text.describe()
    );

    tokio::task::block_in_place(|| pair.resume_replay());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_names_the_cluster_with_semicolons_between_shards() -> Result<()> {
    let (control, s0, s1) = (TempDb::create().await, TempDb::create().await, TempDb::create().await);
    let root = tempfile::tempdir()?;
    let shards = format!("{};{}", s0.url(), s1.url());
    let out = kirana(root.path(), &["migrate"])
        .env("KIRANA_POSTGRES", control.url())
        .env("KIRANA_PG_SHARDS", &shards)
        .env("KIRANA_DATA_DIR", root.path().join("data"))
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && stdout.contains("control ")
            && stdout.contains("shard 0 ")
            && stdout.contains("shard 1 "),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_calls_a_move_stuck_when_no_mover_runs_it() -> Result<()> {
    let cluster = Cluster::new(2).await?;
    cluster.run(&["migrate"]).await?.ok("kirana migrate")?;
    // What a `kirana shard move` killed mid-copy leaves: a journal row, and nobody holding the
    // store's move lock.
    let (c, conn) = tokio_postgres::connect(&cluster.control.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    c.execute(
        "INSERT INTO store_moves (store_id, from_shard, to_shard, state, started_at, updated_at, rows_copied, error)
         VALUES ('0192f0c8-0000-7000-8000-00000000abcd', 0, 1, 'catching_up', 1, 1, 10, 'shard 1 primary: gone')",
        &[],
    )
    .await?;
    let out = cluster.run(&["doctor"]).await?;
    ensure!(!out.status.success(), "a stuck move is unhealthy: {}", out.describe());
    ensure!(
        out.stdout.contains("STUCK")
            && out.stdout.contains("kirana shard resume 0192f0c8-0000-7000-8000-00000000abcd")
            && out.stdout.contains("shard 1 primary: gone"),
        "{}",
        out.describe()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_on_sqlite_say_they_need_postgres() -> Result<()> {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    let data = data.to_str().context("utf-8")?;
    let out = kirana(root.path(), &["--data-dir", data, "shard", "move", "0192f0c8-0000-7000-8000-000000000000", "1"])
        .output()
        .await?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("needs the PostgreSQL backend"), "{stderr}");
    let out = kirana(root.path(), &["--data-dir", data, "doctor"]).output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success() && stdout.contains("healthy") && stdout.contains("shard 0"), "{stdout}");
    Ok(())
}
