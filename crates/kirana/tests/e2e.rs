//! End-to-end tests: the real `kirana` binary as a child process, on a data directory of its
//! own, spoken to over real TCP on a port the kernel chose. They prove what only the whole
//! program can show: that a 201 is durable across `kill -9`, that operator commands and the
//! server share their data, that configuration layers the way the docs say, and that a
//! shutdown signal drains and exits cleanly.
//!
//! The harness waits on signals, never on the clock: the server's "listening" line on stdout,
//! a child's exit, an HTTP answer. Every wait has a generous timeout that fails the test with
//! the server's stderr, so a hang is a failure with evidence, not a stuck CI job.
//!
//! Each test owns a temporary root (the child's working directory, so a forgotten `--data-dir`
//! cannot litter the repository) and every `KIRANA_*` variable of the test's own environment is
//! removed from the child's, so the tests run in parallel and mean the same on every machine.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use reqwest::Method;
use reqwest::header::{HeaderMap, LOCATION};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_kirana");

/// Generous on purpose: a cold start on a loaded two-core machine, not a measure of speed.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a one-shot command (or a stopping server) may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest any single HTTP request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

const MERCHANT_PHONE: &str = "+919876543210";
const SHOPPER_PHONE: &str = "+919812345678";
const PRICE: i64 = 45_000;

// ---------------------------------------------------------------------------------------------
// Harness: processes
// ---------------------------------------------------------------------------------------------

/// A `kirana` command with a clean environment, run from `cwd`.
fn kirana(cwd: &Path, args: &[String], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KIRANA_") {
            cmd.env_remove(key);
        }
    }
    // Plain logs: they end up in failure messages, where colour codes are noise.
    cmd.env("NO_COLOR", "1")
        .envs(envs.iter().copied())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// What a one-shot command left behind.
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
}

/// Runs a command that is expected to finish (migrate, merchant token, a refused start…).
async fn run_kirana(cwd: &Path, args: &[String], envs: &[(&str, &str)]) -> Result<Finished> {
    let child = kirana(cwd, args, envs).spawn().with_context(|| format!("cannot start {BIN}"))?;
    // On timeout the future is dropped with the child in it, and kill_on_drop ends it.
    let out = tokio::time::timeout(EXIT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("`kirana {}` did not exit within {EXIT_TIMEOUT:?}", args.join(" ")))??;
    Ok(Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A running `kirana serve`. Dropping it kills the process (kill_on_drop) and prints the tail of
/// its stderr, which the test harness shows only when the test failed.
struct Server {
    child: Child,
    pid: u32,
    api: Api,
    /// Everything the server wrote to stderr. Drained continuously: a full pipe would block the
    /// server's logging and, with it, the server.
    stderr: Arc<Mutex<String>>,
    stderr_done: Option<JoinHandle<()>>,
}

impl Server {
    /// `kirana serve --listen 127.0.0.1:0 --data-dir <data_dir> <extra…>`.
    async fn start(cwd: &Path, data_dir: &Path, extra: &[&str]) -> Result<Server> {
        let mut args = strings(&["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
        args.push(path_arg(data_dir));
        args.extend(strings(extra));
        Server::spawn(cwd, &args, &[]).await
    }

    /// Starts the binary with exactly these arguments and waits for its listening line.
    async fn spawn(cwd: &Path, args: &[String], envs: &[(&str, &str)]) -> Result<Server> {
        Server::spawn_until(cwd, args, envs, "kirana listening on ").await
    }

    /// Starts the binary and waits for the line `<listening> http://…` (the server's, or the
    /// test gateway's).
    async fn spawn_until(cwd: &Path, args: &[String], envs: &[(&str, &str)], listening: &str) -> Result<Server> {
        let mut child = kirana(cwd, args, envs).spawn().with_context(|| format!("cannot start {BIN}"))?;
        let pid = child.id().context("the server exited before it could be observed")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().context("stderr is piped")?;
        let sink = stderr.clone();
        let stderr_done = tokio::spawn(async move {
            let mut lines = BufReader::new(err_pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let out_pipe = child.stdout.take().context("stdout is piped")?;
        let mut lines = BufReader::new(out_pipe).lines();
        let waited = tokio::time::timeout(START_TIMEOUT, async {
            let mut seen = Vec::new();
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix(listening) {
                    return Ok::<_, std::io::Error>(Ok(url.trim().trim_end_matches('/').to_string()));
                }
                seen.push(line);
            }
            Ok(Err(seen))
        })
        .await;
        let mut server = Server { child, pid, api: Api::new(String::new())?, stderr, stderr_done: Some(stderr_done) };
        let what = format!("`kirana {}`", args.join(" "));
        match waited {
            Ok(Ok(Ok(base))) => {
                ensure!(base.starts_with("http://"), "{what} printed a listening line without an http URL: {base}");
                server.api = Api::new(base)?;
                // Keep reading stdout so a later print can never block on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                Ok(server)
            }
            Ok(Ok(Err(stdout))) => {
                let status = server.wait_exit(EXIT_TIMEOUT).await;
                bail!(
                    "{what} closed stdout without printing its listening line (exit: {status:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    stdout.join("\n"),
                    server.stderr_text().await
                )
            }
            Ok(Err(e)) => bail!("reading the stdout of {what}: {e}"),
            Err(_) => {
                let _ = server.sigkill().await;
                bail!(
                    "{what} printed no listening line within {START_TIMEOUT:?}\n--- stderr ---\n{}",
                    server.stderr_text().await
                )
            }
        }
    }

    fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    /// Everything the server wrote to stderr so far; once it has exited, all of it.
    async fn stderr_text(&mut self) -> String {
        if let Ok(Some(_)) = self.child.try_wait()
            && let Some(h) = self.stderr_done.take()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `kill -9`: no handler runs, no buffer is flushed.
    async fn sigkill(&mut self) -> Result<ExitStatus> {
        self.child.start_kill().context("cannot send SIGKILL")?;
        self.wait_exit(EXIT_TIMEOUT).await
    }

    /// `kill -TERM`, as an orchestrator stopping the service would.
    async fn sigterm(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("cannot run kill -TERM")?;
        ensure!(status.success(), "kill -TERM {} failed: {status}", self.pid);
        Ok(())
    }

    async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!("kirana (pid {}) did not exit within {within:?}", self.pid),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let all = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let lines: Vec<&str> = all.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        eprintln!("--- kirana (pid {}) stderr, last {} lines ---\n{tail}", self.pid, lines.len().min(60));
    }
}

// ---------------------------------------------------------------------------------------------
// Harness: HTTP
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
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

/// A client for one server: the API the way a merchant's or shopper's program speaks it.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: String) -> Result<Api> {
        // no_proxy: a proxy configured on the machine must not sit between a test and 127.0.0.1.
        let http = reqwest::Client::builder().no_proxy().timeout(HTTP_TIMEOUT).build()?;
        Ok(Api { http, base })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Resp> {
        let mut req = self.http.request(method.clone(), self.url(path));
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
        let bytes = resp.bytes().await.with_context(|| format!("reading the body of {method} {path}"))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(Resp { status, headers, body })
    }

    /// Signs in by phone: asks for a code, reads it from the dev outbox, exchanges it.
    async fn sign_in(&self, data_dir: &Path, phone: &str) -> Result<String> {
        self.call(Method::POST, "/api/v1/auth/otp", None, &[], Some(&json!({ "phone": phone })))
            .await?
            .expect(202, "asking for a sign-in code")?;
        // The 202 is sent after the code is appended, so the line is there now.
        let outbox_path = data_dir.join("dev-outbox.jsonl");
        let outbox =
            std::fs::read_to_string(&outbox_path).with_context(|| format!("reading {}", outbox_path.display()))?;
        let code = outbox
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["kind"] == "otp" && v["phone"] == phone)
            .and_then(|v| v["code"].as_str().map(str::to_string))
            .with_context(|| format!("no sign-in code for {phone} in {}:\n{outbox}", outbox_path.display()))?;
        let signed = self
            .call(Method::POST, "/api/v1/auth/verify", None, &[], Some(&json!({ "phone": phone, "code": code })))
            .await?
            .expect(200, "exchanging the sign-in code")?;
        text(&signed, "token")
    }

    /// Creates a store; returns (store id, slug).
    async fn create_store(&self, token: &str, name: &str) -> Result<(String, String)> {
        let store = self
            .call(Method::POST, "/api/v1/stores", Some(token), &[], Some(&json!({ "name": name })))
            .await?
            .expect(201, "creating a store")?;
        Ok((text(&store, "id")?, text(&store, "slug")?))
    }

    /// Creates an active one-variant product with tracked stock; returns (product id, variant id).
    async fn create_product(&self, token: &str, store_id: &str, title: &str, stock: i64) -> Result<(String, String)> {
        let body = json!({ "title": title, "price": PRICE, "stock": stock, "status": "active" });
        let p = self
            .call(Method::POST, &format!("/api/v1/stores/{store_id}/products"), Some(token), &[], Some(&body))
            .await?
            .expect(201, "creating a product")?;
        let variant =
            p["variants"][0]["id"].as_str().with_context(|| format!("a product without a variant id: {p}"))?;
        Ok((text(&p, "id")?, variant.to_string()))
    }

    async fn stock(&self, token: &str, store_id: &str, product_id: &str) -> Result<i64> {
        let p = self
            .call(Method::GET, &format!("/api/v1/stores/{store_id}/products/{product_id}"), Some(token), &[], None)
            .await?
            .expect(200, "reading the product")?;
        p["variants"][0]["stock"].as_i64().with_context(|| format!("the variant's stock is not tracked: {p}"))
    }

    /// Opens a cart holding `quantity` of one variant.
    async fn cart_with(&self, slug: &str, variant_id: &str, quantity: u32) -> Result<(String, String)> {
        let cart = self
            .call(Method::POST, &format!("/api/v1/storefront/{slug}/carts"), None, &[], None)
            .await?
            .expect(201, "opening a cart")?;
        let (cart_id, token) = (text(&cart, "cart_id")?, text(&cart, "token")?);
        self.call(
            Method::PUT,
            &format!("/api/v1/storefront/{slug}/carts/{cart_id}/items"),
            None,
            &[("x-cart-token", &token)],
            Some(&json!({ "variant_id": variant_id, "quantity": quantity })),
        )
        .await?
        .expect(200, "putting an item in the cart")?;
        Ok((cart_id, token))
    }

    /// Every order of a store, following `next_cursor` to the end.
    async fn all_orders(&self, token: &str, store_id: &str) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/stores/{store_id}/orders?limit=100");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.call(Method::GET, &path, Some(token), &[], None).await?.expect(200, "listing orders")?;
            let items = page["items"].as_array().with_context(|| format!("an order page without items: {page}"))?;
            all.extend(items.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) if !items.is_empty() => cursor = Some(c.to_string()),
                _ => return Ok(all),
            }
        }
    }
}

fn text(v: &Value, field: &str) -> Result<String> {
    v[field].as_str().map(str::to_string).with_context(|| format!("no string '{field}' in {v}"))
}

fn checkout_body() -> Value {
    json!({
        "customer": { "name": "Asha", "phone": SHOPPER_PHONE },
        "address": { "line1": "1 MG Road", "city": "Pune", "postal_code": "411001" },
        "payment_method": "cod"
    })
}

/// The order id at the end of a checkout's `Location` header.
fn order_id_from_location(headers: &HeaderMap) -> Result<String> {
    let loc = headers
        .get(LOCATION)
        .context("a 201 checkout without a Location header")?
        .to_str()
        .context("a Location header that is not text")?;
    loc.rsplit('/')
        .next()
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .with_context(|| format!("no order id in Location: {loc}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Durability
// ---------------------------------------------------------------------------------------------

/// A cart made ready before the storm, so the storm is nothing but checkouts.
#[derive(Debug, Clone)]
struct ReadyCart {
    cart_id: String,
    token: String,
    quantity: u32,
    idempotency_key: String,
}

/// What one shopper task saw.
#[derive(Debug, Default)]
struct ShopperOutcome {
    /// Checkouts that were sent (or tried) and never answered: the kill cut them off.
    cut_off: Vec<ReadyCart>,
    /// Of those, how many had a request on the wire when the server died (not merely refused).
    in_flight: usize,
    /// Any HTTP answer other than 201: the server misbehaved while alive.
    unexpected: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_order_survives_kill_9() -> Result<()> {
    const SHOPPERS: usize = 40;
    const CARTS_EACH: usize = 6;
    /// The server dies right after this many 201s, with the other shoppers mid-checkout.
    const KILL_AFTER: usize = 80;
    const INITIAL_STOCK: i64 = 100_000;

    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    let mut server = Server::start(root.path(), &data, &[]).await?;
    let api = server.api.clone();
    let token = api.sign_in(&data, MERCHANT_PHONE).await?;
    let (store_id, slug) = api.create_store(&token, "Durable Dukaan").await?;
    let (product_id, variant_id) = api.create_product(&token, &store_id, "Basmati rice 5 kg", INITIAL_STOCK).await?;

    // Every shopper gets carts of its own, quantities 1 to 3 so a lost or doubled decrement shows.
    let mut preparing = tokio::task::JoinSet::new();
    for shopper in 0..SHOPPERS {
        let (api, slug, variant_id) = (api.clone(), slug.clone(), variant_id.clone());
        preparing.spawn(async move {
            let mut carts = Vec::with_capacity(CARTS_EACH);
            for n in 0..CARTS_EACH {
                let quantity = 1 + ((shopper + n) % 3) as u32;
                let (cart_id, token) = api.cart_with(&slug, &variant_id, quantity).await?;
                carts.push(ReadyCart { cart_id, token, quantity, idempotency_key: format!("kill9-{shopper}-{n}") });
            }
            Ok::<_, anyhow::Error>(carts)
        });
    }
    let mut ready = Vec::with_capacity(SHOPPERS);
    while let Some(r) = preparing.join_next().await {
        ready.push(r??);
    }

    // The storm: every shopper checks out its carts one after another until the server dies.
    let acknowledged: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut storm = tokio::task::JoinSet::new();
    for carts in ready {
        let (api, slug) = (api.clone(), slug.clone());
        let (acknowledged, count, enough) = (acknowledged.clone(), count.clone(), enough.clone());
        storm.spawn(async move {
            let mut outcome = ShopperOutcome::default();
            let carts = carts.into_iter();
            for cart in carts {
                let sent = api
                    .http
                    .post(api.url(&format!("/api/v1/storefront/{slug}/carts/{}/checkout", cart.cart_id)))
                    .header("x-cart-token", &cart.token)
                    .header("idempotency-key", &cart.idempotency_key)
                    .json(&checkout_body())
                    .send()
                    .await;
                match sent {
                    // The status line is the acknowledgement: a client that saw 201 was told
                    // "your order is placed", whether or not the rest of the body arrived.
                    Ok(resp) if resp.status().as_u16() == 201 => match order_id_from_location(resp.headers()) {
                        Ok(id) => {
                            acknowledged.lock().unwrap().push((id, cart.quantity));
                            if count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                                enough.notify_one();
                            }
                        }
                        Err(e) => outcome.unexpected.push(format!("{e:#}")),
                    },
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        outcome.unexpected.push(format!("checkout answered {status}: {body}"));
                        return outcome;
                    }
                    Err(e) => {
                        if !e.is_connect() {
                            outcome.in_flight += 1;
                        }
                        outcome.cut_off.push(cart);
                        return outcome;
                    }
                }
            }
            outcome
        });
    }

    if tokio::time::timeout(Duration::from_secs(60), enough.notified()).await.is_err() {
        storm.abort_all();
        bail!(
            "only {} of {KILL_AFTER} checkouts were answered 201 within 60 s\n--- stderr ---\n{}",
            count.load(Ordering::SeqCst),
            server.stderr_text().await
        );
    }
    let killed = server.sigkill().await?;
    {
        use std::os::unix::process::ExitStatusExt;
        ensure!(killed.signal() == Some(9), "the server was meant to die by SIGKILL but ended with {killed}");
    }

    let mut outcomes = Vec::new();
    let joined = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = storm.join_next().await {
            outcomes.push(r.expect("a shopper task panicked"));
        }
    })
    .await;
    ensure!(joined.is_ok(), "shopper tasks were still running 60 s after the server died");
    let unexpected: Vec<&String> = outcomes.iter().flat_map(|o| &o.unexpected).collect();
    ensure!(unexpected.is_empty(), "checkouts got answers other than 201 before the kill: {unexpected:#?}");
    let in_flight: usize = outcomes.iter().map(|o| o.in_flight).sum();
    ensure!(
        in_flight > 0,
        "no checkout was on the wire when the server died, so the kill proved nothing; \
         {} were acknowledged",
        count.load(Ordering::SeqCst)
    );
    let acknowledged: HashMap<String, u32> = acknowledged.lock().unwrap().iter().cloned().collect();
    ensure!(acknowledged.len() >= KILL_AFTER, "order ids repeated among 201s: {} distinct", acknowledged.len());
    drop(server);

    // Restart on the same data and look at what survived.
    let server = Server::start(root.path(), &data, &[]).await?;
    let api = server.api.clone();
    let orders = api.all_orders(&token, &store_id).await?;
    let by_id: HashMap<String, &Value> = orders.iter().map(|o| Ok((text(o, "id")?, o))).collect::<Result<_>>()?;
    ensure!(
        by_id.len() == orders.len(),
        "the order list repeats orders: {} listed, {} distinct",
        orders.len(),
        by_id.len()
    );

    let mut missing: Vec<&String> = acknowledged.keys().filter(|id| !by_id.contains_key(*id)).collect();
    missing.sort();
    ensure!(
        missing.is_empty(),
        "{} of {} orders answered 201 before kill -9 are gone after restart: {missing:?}",
        missing.len(),
        acknowledged.len()
    );

    // Nothing half-written: every order is whole, with its line, totals, history and number.
    let mut numbers = HashSet::new();
    let mut units = 0i64;
    let mut spent = 0i64;
    for o in &orders {
        let id = text(o, "id")?;
        let items = o["items"].as_array().with_context(|| format!("order {id} has no items array: {o}"))?;
        ensure!(items.len() == 1, "order {id} should have exactly its one line, has {}: {o}", items.len());
        let item = &items[0];
        ensure!(
            item["variant_id"] == variant_id.as_str() && item["product_id"] == product_id.as_str(),
            "order {id} sold something else: {item}"
        );
        let qty = item["quantity"].as_i64().with_context(|| format!("order {id}: no quantity"))?;
        ensure!((1..=3).contains(&qty), "order {id} has quantity {qty}; every cart held 1 to 3");
        if let Some(&sent) = acknowledged.get(&id) {
            ensure!(qty == i64::from(sent), "order {id} was placed for {sent} and came back with {qty}");
        }
        ensure!(
            item["unit_price"] == PRICE && item["line_total"] == PRICE * qty,
            "order {id} has a wrong line: {item}"
        );
        ensure!(o["totals"]["subtotal"] == PRICE * qty, "order {id}'s totals disagree with its line: {}", o["totals"]);
        ensure!(o["status"] == "placed", "order {id} is {} though nobody moved it", o["status"]);
        ensure!(o["history"][0]["to"] == "placed", "order {id} lacks its first history step: {}", o["history"]);
        ensure!(o["customer"]["phone"] == SHOPPER_PHONE, "order {id} lost its customer: {}", o["customer"]);
        let number = o["number"].as_i64().with_context(|| format!("order {id}: no number"))?;
        ensure!(numbers.insert(number), "order number {number} is used twice");
        units += qty;
        spent += o["totals"]["total"].as_i64().with_context(|| format!("order {id}: no total"))?;
    }
    let stock = api.stock(&token, &store_id, &product_id).await?;
    ensure!(
        stock == INITIAL_STOCK - units,
        "stock is {stock} after restart but {INITIAL_STOCK} − {units} units in {} orders = {}: units were {}",
        orders.len(),
        INITIAL_STOCK - units,
        if stock < INITIAL_STOCK - units { "taken without an order" } else { "sold but not taken" }
    );
    // The customer row is written in the same transaction as the order.
    let customers = api
        .call(Method::GET, &format!("/api/v1/stores/{store_id}/customers"), Some(&token), &[], None)
        .await?
        .expect(200, "listing customers")?;
    let customer = &customers["items"][0];
    ensure!(
        customer["orders_count"] == orders.len() as i64 && customer["total_spent"] == spent,
        "the customer record disagrees with the {} orders totalling {spent}: {customer}",
        orders.len()
    );

    // A checkout the crash cut off is retried with its Idempotency-Key: it yields the order the
    // server committed before dying, or a new one if it never did; never a second one.
    let cut_off: Vec<&ReadyCart> = outcomes.iter().flat_map(|o| &o.cut_off).collect();
    let mut new_units = 0i64;
    let mut new_orders = 0usize;
    for cart in &cut_off {
        let r = api
            .call(
                Method::POST,
                &format!("/api/v1/storefront/{slug}/carts/{}/checkout", cart.cart_id),
                None,
                &[("x-cart-token", &cart.token), ("idempotency-key", &cart.idempotency_key)],
                Some(&checkout_body()),
            )
            .await?;
        let headers = r.headers.clone();
        let body = r.expect(201, "retrying a cut-off checkout after restart")?;
        let id = order_id_from_location(&headers)?;
        let replayed = headers.get("idempotent-replayed").is_some_and(|v| v == "true");
        if replayed {
            ensure!(
                by_id.contains_key(&id),
                "a replayed checkout answered with order {id}, which the order list lacked"
            );
        } else {
            ensure!(
                !by_id.contains_key(&id),
                "order {id} existed before the retry, yet the retry did not say it was replayed"
            );
            new_orders += 1;
            new_units += i64::from(cart.quantity);
        }
        ensure!(
            body["items"][0]["quantity"] == cart.quantity,
            "the retried checkout's order has the wrong quantity: {body}"
        );
    }
    let after = api.all_orders(&token, &store_id).await?;
    ensure!(
        after.len() == orders.len() + new_orders,
        "{} orders after retrying {} cut-off checkouts; expected {} + {new_orders}",
        after.len(),
        cut_off.len(),
        orders.len()
    );
    let stock = api.stock(&token, &store_id, &product_id).await?;
    ensure!(
        stock == INITIAL_STOCK - units - new_units,
        "stock {stock} after the retries; expected {}",
        INITIAL_STOCK - units - new_units
    );
    // The event pipeline was killed mid-stream too. After the restart every order.placed event
    // is applied to the sales rollups exactly once: the totals equal the orders, not more, not
    // fewer.
    let revenue: i64 = after.iter().map(|o| o["totals"]["total"].as_i64().unwrap_or(0)).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = api
            .call(Method::GET, &format!("/api/v1/stores/{store_id}/analytics"), Some(&token), &[], None)
            .await?
            .expect(200, "the store's analytics")?;
        let (n, r) = (a["totals"]["orders"].as_i64().unwrap_or(-1), a["totals"]["revenue"].as_i64().unwrap_or(-1));
        ensure!(
            n <= after.len() as i64,
            "the rollups count {n} orders but only {} exist: an event applied twice",
            after.len()
        );
        if n == after.len() as i64 {
            ensure!(r == revenue, "the rollups say revenue {r} for {n} orders totalling {revenue}");
            break;
        }
        ensure!(Instant::now() < deadline, "after 30 s the rollups count {n} of {} orders", after.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "kill -9 after {} acknowledged checkouts with {in_flight} on the wire; {} orders survived; {} retried, {new_orders} new",
        acknowledged.len(),
        orders.len(),
        cut_off.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Operator commands
// ---------------------------------------------------------------------------------------------

async fn mint_token(cwd: &Path, data: &Path, phone: &str) -> Result<Finished> {
    let mut args = strings(&["merchant", "token", "--phone", phone, "--data-dir"]);
    args.push(path_arg(data));
    let out = run_kirana(cwd, &args, &[]).await?;
    ensure!(out.status.success(), "`kirana merchant token` failed: {}", out.describe());
    Ok(out)
}

/// The token a `merchant token` run printed: its whole stdout, one line.
fn printed_token(out: &Finished) -> Result<String> {
    let token = out.stdout.trim();
    ensure!(
        !token.is_empty() && !token.contains(char::is_whitespace),
        "`kirana merchant token` should print only the token on stdout: {}",
        out.describe()
    );
    Ok(token.to_string())
}

#[tokio::test]
async fn merchant_token_mints_a_working_credential() -> Result<()> {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");

    // Minted before any server ever ran on this data directory.
    let first = mint_token(root.path(), &data, "9876543210").await?;
    let token = printed_token(&first)?;

    let server = Server::start(root.path(), &data, &[]).await?;
    let api = &server.api;
    let me = api
        .call(Method::GET, "/api/v1/me", Some(&token), &[], None)
        .await?
        .expect(200, "GET /api/v1/me with the minted token")?;
    let merchant_id = text(&me, "id")?;
    ensure!(me["phone"] == MERCHANT_PHONE, "the token belongs to the wrong phone: {me}");
    ensure!(
        first.stderr.contains(&merchant_id),
        "the command should name the merchant on stderr: {}",
        first.describe()
    );
    let (store_id, _) = api.create_store(&token, "Token Traders").await?;

    // Minted again, while the server holds the same databases open.
    let again = mint_token(root.path(), &data, "+91 98765 43210").await?;
    let second = printed_token(&again)?;
    ensure!(second != token, "a second mint must give a new token, not repeat {token}");
    let me2 = api
        .call(Method::GET, "/api/v1/me", Some(&second), &[], None)
        .await?
        .expect(200, "GET /api/v1/me with the second token")?;
    ensure!(me2["id"] == merchant_id.as_str(), "the same phone became another merchant: {me2} vs {me}");
    let stores =
        api.call(Method::GET, "/api/v1/stores", Some(&second), &[], None).await?.expect(200, "listing stores")?;
    ensure!(
        stores["items"].as_array().is_some_and(|s| s.iter().any(|s| s["id"] == store_id.as_str())),
        "the second token does not see the store made with the first: {stores}"
    );
    api.call(Method::GET, "/api/v1/me", Some(&token), &[], None)
        .await?
        .expect(200, "the first token after a second was minted")?;

    // Signing in by phone reaches the same merchant.
    let session = api.sign_in(&data, MERCHANT_PHONE).await?;
    let me3 = api
        .call(Method::GET, "/api/v1/me", Some(&session), &[], None)
        .await?
        .expect(200, "GET /api/v1/me after sign-in")?;
    ensure!(me3["id"] == merchant_id.as_str(), "phone sign-in found another merchant than the CLI: {me3}");

    // A bad phone is refused with a message, not a token.
    let mut args = strings(&["merchant", "token", "--phone", "12", "--data-dir"]);
    args.push(path_arg(&data));
    let bad = run_kirana(root.path(), &args, &[]).await?;
    ensure!(
        !bad.status.success() && bad.stdout.trim().is_empty(),
        "a bad phone should fail without a token: {}",
        bad.describe()
    );
    ensure!(bad.stderr.contains("phone"), "the refusal should say the phone is wrong: {}", bad.describe());
    Ok(())
}

/// Parses `migrate`'s report: (file, schema version) per line.
fn schema_report(out: &Finished) -> Result<Vec<(String, i64)>> {
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (file, version) = l
                .rsplit_once(": schema version ")
                .with_context(|| format!("a migrate line that is not '<file>: schema version <n>': {l}"))?;
            Ok((file.to_string(), version.trim().parse().with_context(|| format!("not a version: {l}"))?))
        })
        .collect()
}

#[tokio::test]
async fn migrate_reports_schema_versions_and_is_idempotent() -> Result<()> {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    let mut args = strings(&["migrate", "--data-dir"]);
    args.push(path_arg(&data));

    let first = run_kirana(root.path(), &args, &[]).await?;
    ensure!(first.status.success(), "the first migrate failed: {}", first.describe());
    let report = schema_report(&first)?;
    let files: Vec<&str> = report.iter().map(|(f, _)| f.as_str()).collect();
    ensure!(
        files.len() == 2 && files[0].ends_with("directory.db") && files[1].ends_with("shard-0000.db"),
        "migrate should report directory.db and shard-0000.db: {}",
        first.describe()
    );
    ensure!(report.iter().all(|(_, v)| *v > 0), "a migrated database reports schema version 0: {}", first.describe());
    ensure!(
        data.join("directory.db").is_file() && data.join("shards/shard-0000.db").is_file(),
        "migrate did not create the databases"
    );

    let second = run_kirana(root.path(), &args, &[]).await?;
    ensure!(second.status.success(), "migrating again failed: {}", second.describe());
    ensure!(
        schema_report(&second)? == report,
        "a second migrate changed the versions:\n{}\nthen\n{}",
        first.stdout,
        second.stdout
    );

    // And the migrated data directory serves.
    let server = Server::start(root.path(), &data, &[]).await?;
    server.api.call(Method::GET, "/readyz", None, &[], None).await?.expect(200, "readiness after migrate")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Configuration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_configuration_exits_non_zero_with_a_message() -> Result<()> {
    let root = tempfile::tempdir()?;
    let data = path_arg(&root.path().join("data"));
    let unknown_key = root.path().join("typo.toml");
    std::fs::write(&unknown_key, "shard = 4\n")?;
    let not_toml = root.path().join("broken.toml");
    std::fs::write(&not_toml, "shards = \n")?;
    // A port someone else holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken_addr = taken.local_addr()?.to_string();

    // (arguments, words the message must contain)
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (strings(&["--synchronous", "sometimes", "migrate", "--data-dir", &data]), vec!["synchronous", "sometimes"]),
        (strings(&["serve", "--listen", "not-an-addr", "--data-dir", &data]), vec!["not-an-addr"]),
        (strings(&["--shards", "0", "migrate", "--data-dir", &data]), vec!["shards", "0"]),
        (strings(&["--shards", "many", "migrate", "--data-dir", &data]), vec!["--shards", "many"]),
        (strings(&["serve", "--listen", "127.0.0.1:0", "--shards", "0", "--data-dir", &data]), vec!["shards"]),
        (strings(&["--log-format", "xml", "migrate", "--data-dir", &data]), vec!["log format", "xml"]),
        (
            strings(&["--config", &path_arg(&unknown_key), "serve", "--listen", "127.0.0.1:0", "--data-dir", &data]),
            vec!["typo.toml", "unknown field `shard`"],
        ),
        (strings(&["--config", &path_arg(&not_toml), "migrate", "--data-dir", &data]), vec!["broken.toml"]),
        (
            strings(&["--config", "/nonexistent/kirana.toml", "migrate", "--data-dir", &data]),
            vec!["/nonexistent/kirana.toml"],
        ),
        (strings(&["serve", "--listen", &taken_addr, "--data-dir", &data]), vec![&taken_addr]),
        (
            strings(&["serve", "--listen", "127.0.0.1:0", "--secret-key", "not-hex", "--data-dir", &data]),
            vec!["secret key"],
        ),
    ];
    let mut failures = Vec::new();
    for (args, words) in &cases {
        let out = run_kirana(root.path(), args, &[]).await?;
        let problem = if out.status.success() {
            Some("exited 0".to_string())
        } else if out.stdout.contains("listening on") {
            Some("started serving".to_string())
        } else {
            words.iter().find(|w| !out.stderr.contains(*w)).map(|w| format!("stderr does not mention '{w}'"))
        };
        if let Some(p) = problem {
            failures.push(format!("`kirana {}`: {p}: {}", args.join(" "), out.describe()));
        }
    }
    drop(taken);
    ensure!(failures.is_empty(), "bad configuration was not refused clearly:\n{}", failures.join("\n\n"));
    Ok(())
}

/// Which `shard-NNNN.db` files a data directory holds.
fn shard_files(data: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("shards"))
        .with_context(|| format!("no shards directory in {}", data.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("shard-") && n.ends_with(".db"))
        .collect();
    names.sort();
    Ok(names)
}

fn shard_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("shard-{i:04}.db")).collect()
}

#[tokio::test]
async fn configuration_layers_flags_over_env_over_file() -> Result<()> {
    let root = tempfile::tempdir()?;
    let r = root.path();
    let (file_dir, env_dir, flag_dir) = (r.join("from-file"), r.join("from-env"), r.join("from-flag"));
    let config = r.join("kirana.toml");
    std::fs::write(&config, format!("data_dir = {:?}\nshards = 3\n", path_arg(&file_dir)))?;
    let config_arg = path_arg(&config);
    let env_dir_arg = path_arg(&env_dir);
    let env: [(&str, &str); 2] = [("KIRANA_DATA_DIR", &env_dir_arg), ("KIRANA_SHARDS", "2")];

    // File alone: its data_dir, 3 shards.
    let out = run_kirana(r, &strings(&["--config", &config_arg, "migrate"]), &[]).await?;
    ensure!(out.status.success(), "migrate with the file: {}", out.describe());
    // The environment over the file: its data_dir, 2 shards.
    let out = run_kirana(r, &strings(&["--config", &config_arg, "migrate"]), &env).await?;
    ensure!(out.status.success(), "migrate with file and env: {}", out.describe());
    // Flags over both.
    let out = run_kirana(
        r,
        &strings(&["--config", &config_arg, "migrate", "--shards", "4", "--data-dir", &path_arg(&flag_dir)]),
        &env,
    )
    .await?;
    ensure!(out.status.success(), "migrate with file, env and flags: {}", out.describe());

    for (dir, shards, layer) in [(&file_dir, 3, "file"), (&env_dir, 2, "environment"), (&flag_dir, 4, "flags")] {
        let found = shard_files(dir).with_context(|| format!("the {layer} layer's data_dir was not used"))?;
        ensure!(
            found == shard_names(shards),
            "the {layer} layer asked for {shards} shards in {}; found {found:?}",
            dir.display()
        );
    }
    ensure!(!r.join("kirana-data").exists(), "a layer was ignored and the default ./kirana-data was used");

    // The listen address, for `serve`: a wrong layer winning would be an unparsable address.
    let data = path_arg(&r.join("serve-data"));
    let listen_file = r.join("listen.toml");
    std::fs::write(&listen_file, "listen = \"address-from-the-file\"\n")?;
    let listen_file_arg = path_arg(&listen_file);
    let env_bad = [("KIRANA_LISTEN", "address-from-the-env")];
    let env_good = [("KIRANA_LISTEN", "127.0.0.1:0")];

    let flag_wins = Server::spawn(
        r,
        &strings(&["--config", &listen_file_arg, "serve", "--listen", "127.0.0.1:0", "--data-dir", &data]),
        &env_bad,
    )
    .await
    .context("a --listen flag should override KIRANA_LISTEN and the file")?;
    drop(flag_wins);
    let env_wins = Server::spawn(r, &strings(&["--config", &listen_file_arg, "serve", "--data-dir", &data]), &env_good)
        .await
        .context("KIRANA_LISTEN should override the file")?;
    drop(env_wins);
    // And the environment is really read: a bad KIRANA_LISTEN over a good file is refused.
    let good_file = r.join("good-listen.toml");
    std::fs::write(&good_file, "listen = \"127.0.0.1:0\"\n")?;
    let out =
        run_kirana(r, &strings(&["--config", &path_arg(&good_file), "serve", "--data-dir", &data]), &env_bad).await?;
    ensure!(
        !out.status.success() && out.stderr.contains("address-from-the-env"),
        "KIRANA_LISTEN should override the file's listen address: {}",
        out.describe()
    );
    let file_alone =
        Server::spawn(r, &strings(&["--config", &path_arg(&good_file), "serve", "--data-dir", &data]), &[])
            .await
            .context("the file's listen address alone should be used")?;
    drop(file_alone);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() -> Result<()> {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    let mut server = Server::start(root.path(), &data, &["--drain-secs", "1"]).await?;
    let api = server.api.clone();
    let ready = api.call(Method::GET, "/readyz", None, &[], None).await?.expect(200, "readiness before the signal")?;
    ensure!(ready["status"] == "ready", "readyz before the signal: {ready}");
    // The client's pool keeps a keep-alive connection open through the shutdown, as a real
    // balancer's would: it must not hold the process up.
    let (_, slug) = {
        let token = api.sign_in(&data, MERCHANT_PHONE).await?;
        api.create_store(&token, "Closing Time").await?
    };

    server.sigterm().await?;
    let signalled = Instant::now();

    // During the drain, readiness says 503 "draining" while the process still answers.
    let mut polls = 0;
    loop {
        ensure!(
            signalled.elapsed() < Duration::from_secs(10),
            "readyz never turned 503 draining after SIGTERM ({polls} polls)\n--- stderr ---\n{}",
            server.stderr_text().await
        );
        polls += 1;
        let r = api.call(Method::GET, "/readyz", None, &[], None).await.context("readyz during the drain window")?;
        if r.status == 503 {
            ensure!(r.body["status"] == "draining", "readyz answered 503 but not draining: {}", r.body);
            break;
        }
        ensure!(r.status == 200, "readyz answered {} during the drain: {}", r.status, r.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = api.call(Method::GET, "/healthz", None, &[], None).await.context("healthz during the drain window")?;
    ensure!(
        health.status == 200,
        "healthz should still answer 200 while draining, got {}: {}",
        health.status,
        health.body
    );
    let home = api.call(Method::GET, &format!("/api/v1/storefront/{slug}"), None, &[], None).await?;
    ensure!(home.status == 200, "the API should keep serving while draining, got {}: {}", home.status, home.body);

    let status = server.wait_exit(Duration::from_secs(15)).await?;
    let took = signalled.elapsed();
    ensure!(
        status.success(),
        "after SIGTERM the server exited with {status}\n--- stderr ---\n{}",
        server.stderr_text().await
    );
    ensure!(
        took >= Duration::from_millis(900),
        "the server exited {took:?} after SIGTERM, before its 1 s drain was over"
    );
    // After exit the port no longer answers.
    ensure!(
        api.http.get(server.url("/healthz")).send().await.is_err(),
        "something still answers on the server's port after it exited"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Seeding
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn seed_builds_stores_a_server_can_serve_and_a_manifest_for_bench() -> Result<()> {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    let mut args = strings(&[
        "seed",
        "--stores",
        "120",
        "--merchant-tokens",
        "5",
        "--flash-stock",
        "7",
        "--chunk",
        "50",
        "--data-dir",
    ]);
    args.push(path_arg(&data));
    let out = run_kirana(root.path(), &args, &[]).await?;
    ensure!(out.status.success(), "seed failed: {}", out.describe());
    ensure!(out.stderr.contains("120/120 stores"), "seed reports progress: {}", out.describe());

    let manifest: Value = serde_json::from_slice(&std::fs::read(data.join("seed-manifest.json"))?)?;
    ensure!(manifest["version"] == 1 && manifest["stores"] == 120, "manifest: {manifest}");
    ensure!(manifest["merchants"].as_array().map(Vec::len) == Some(5), "five merchant tokens: {manifest}");
    ensure!(manifest["flash_sale"]["stock"] == 7, "flash stock: {manifest}");

    // Running it again is a no-op for the stores, and refreshes tokens and the flash stock.
    let again = run_kirana(root.path(), &args, &[]).await?;
    ensure!(again.status.success(), "a second seed failed: {}", again.describe());
    let second: Value = serde_json::from_slice(&std::fs::read(data.join("seed-manifest.json"))?)?;
    ensure!(second["merchants"][0]["token"] != manifest["merchants"][0]["token"], "tokens are minted afresh");

    let server = Server::start(root.path(), &data, &[]).await?;
    let api = &server.api;
    let home =
        api.call(Method::GET, "/api/v1/storefront/seed-119", None, &[], None).await?.expect(200, "last store")?;
    ensure!(home["store"]["slug"] == "seed-119", "{home}");
    let token = second["merchants"][0]["token"].as_str().context("token")?;
    let store_id = second["merchants"][0]["store_id"].as_str().context("store id")?;
    let me =
        api.call(Method::GET, "/api/v1/me", Some(token), &[], None).await?.expect(200, "a manifest token works")?;
    ensure!(me["phone"] == "+919000000000", "store 0's merchant: {me}");
    let old = manifest["merchants"][0]["token"].as_str().context("token")?;
    ensure!(
        api.call(Method::GET, "/api/v1/me", Some(old), &[], None).await?.status == 401,
        "the previous run's key was revoked"
    );
    let orders = api
        .call(Method::GET, &format!("/api/v1/stores/{store_id}/orders?limit=5"), Some(token), &[], None)
        .await?
        .expect(200, "seeded orders")?;
    ensure!(orders["items"].is_array(), "{orders}");

    // The flash product sells exactly its stock.
    let flash = &second["flash_sale"];
    let variant = flash["variant_id"].as_str().context("variant")?;
    let mut sold = 0;
    for _ in 0..9 {
        let (cart, ct) = api.cart_with("seed-0", variant, 1).await.unwrap_or_default();
        if cart.is_empty() {
            continue;
        }
        let r = api
            .call(
                Method::POST,
                &format!("/api/v1/storefront/seed-0/carts/{cart}/checkout"),
                None,
                &[("x-cart-token", ct.as_str())],
                Some(&checkout_body()),
            )
            .await?;
        if r.status == 201 {
            sold += 1;
        }
    }
    ensure!(sold == 7, "the flash product sold {sold} of 7");

    // A different shape on the same directory is refused, naming the problem.
    let mut other = strings(&["seed", "--stores", "200", "--products-per-store", "30", "--data-dir"]);
    other.push(path_arg(&data));
    let refused = run_kirana(root.path(), &other, &[]).await?;
    ensure!(!refused.status.success() && refused.stderr.contains("different shape"), "{}", refused.describe());
    Ok(())
}

/// An 800×600 PNG, as a phone's photo would arrive.
fn photo_png() -> Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(800, 600, |x, y| image::Rgb([(x / 4) as u8, (y / 3) as u8, 120]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

#[tokio::test]
async fn the_binary_serves_pages_and_keeps_uploaded_images_on_disk_across_restarts() -> Result<()> {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    let public = "https://shop.kirana.test";
    let mut server = Server::start(root.path(), &data, &["--public-url", public]).await?;
    let api = server.api.clone();
    let token = api.sign_in(&data, MERCHANT_PHONE).await?;
    let (store_id, slug) = api.create_store(&token, "Photo Mart").await?;

    // An upload through the API, as multipart form data.
    let boundary = "kirana-e2e-boundary";
    let mut body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"photo.png\"\r\ncontent-type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend(photo_png()?);
    body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    let up = api
        .http
        .post(api.url(&format!("/api/v1/stores/{store_id}/media")))
        .bearer_auth(&token)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await?;
    ensure!(up.status().as_u16() == 201, "uploading a photo answered {}", up.status());
    let up: Value = up.json().await?;
    let url = text(&up, "url")?;
    let name = url.rsplit('/').next().context("the image URL names its file set")?.to_string();
    // The variants are files in the data directory: the embedded default needs no other service.
    for w in [320, 640] {
        let file = data.join(format!("media/stores/{store_id}/{name}/{w}.jpg"));
        ensure!(file.is_file(), "{} should exist", file.display());
    }

    let body = json!({ "title": "Framed print", "price": PRICE, "stock": 3, "images": [url] });
    let product = api
        .call(Method::POST, &format!("/api/v1/stores/{store_id}/products"), Some(&token), &[], Some(&body))
        .await?
        .expect(201, "a product with the uploaded photo")?;
    let product_id = text(&product, "id")?;

    // The storefront page is HTML whose links use the public address, and the sign-in page's
    // cookies are Secure because that address is https.
    let page = api.http.get(api.url(&format!("/{slug}/product/{product_id}"))).send().await?;
    ensure!(page.status().as_u16() == 200, "the product page answered {}", page.status());
    let html = page.text().await?;
    ensure!(
        html.contains(&format!("<link rel=\"canonical\" href=\"{public}/{slug}/product/{product_id}\">")),
        "the canonical link should use the public URL: {html}"
    );
    ensure!(html.contains(&format!("{public}{url}/640.jpg")), "og:image should be an absolute variant file: {html}");
    let sign_in = api.http.get(api.url("/dashboard/sign-in")).send().await?;
    ensure!(sign_in.status().as_u16() == 200, "the dashboard's sign-in page answered {}", sign_in.status());
    let cookie = sign_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("kirana_csrf="))
        .context("the sign-in page sets the form-token cookie")?
        .to_string();
    ensure!(cookie.contains("Secure") && cookie.contains("HttpOnly"), "cookie attributes: {cookie}");

    // Stopped and started again, the server still has the photo.
    server.sigterm().await?;
    server.wait_exit(EXIT_TIMEOUT).await?;
    let server = Server::start(root.path(), &data, &["--public-url", public]).await?;
    let img = server.api.http.get(server.api.url(&format!("{url}/640.jpg"))).send().await?;
    ensure!(img.status().as_u16() == 200, "the photo after a restart answered {}", img.status());
    let cache = img.headers().get("cache-control").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    ensure!(cache.contains("immutable") && cache.contains("max-age=31536000"), "cache-control: {cache}");
    let bytes = img.bytes().await?;
    let decoded = image::load_from_memory(&bytes)?;
    ensure!((decoded.width(), decoded.height()) == (640, 480), "the 640 variant is 640×480");
    Ok(())
}

#[tokio::test]
async fn doctor_reads_a_running_nodes_objectives_and_fails_when_it_cannot() -> Result<()> {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    let server = Server::start(root.path(), &data, &[]).await?;
    let api = server.api.clone();
    let (_, slug) = {
        let token = api.sign_in(&data, MERCHANT_PHONE).await?;
        api.create_store(&token, "Watched Store").await?
    };
    for _ in 0..3 {
        api.call(Method::GET, &format!("/api/v1/storefront/{slug}"), None, &[], None).await?.expect(200, "a read")?;
    }
    let node = server.url("");
    let doctor =
        run_kirana(root.path(), &strings(&["doctor", "--data-dir", &path_arg(&data), "--node", &node]), &[]).await?;
    ensure!(doctor.status.success(), "doctor failed on a healthy node:\n{}\n{}", doctor.stdout, doctor.stderr);
    ensure!(
        doctor.stdout.contains("storefront-availability: target 99.95 %, 3 of 3 good")
            && doctor.stdout.contains("checkout-latency")
            && doctor.stdout.contains("healthy"),
        "{}",
        doctor.stdout
    );
    drop(server);
    let gone =
        run_kirana(root.path(), &strings(&["doctor", "--data-dir", &path_arg(&data), "--node", &node]), &[]).await?;
    ensure!(!gone.status.success(), "a node that does not answer is a problem:\n{}", gone.stdout);
    ensure!(gone.stdout.contains("UNREACHABLE") && gone.stdout.contains("PROBLEM: node"), "{}", gone.stdout);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Logs and traces
// ---------------------------------------------------------------------------------------------

/// A merchant's and a shopper's whole session against `--log-format json` at debug level: every
/// line logged while serving the traced checkout names its trace, request and store, the
/// consumers' work joins the checkout's trace, and no credential appears anywhere in the logs.
#[tokio::test]
async fn a_full_session_logs_its_traces_and_never_a_secret() -> Result<()> {
    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    let mut args = strings(&["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--data-dir"]);
    args.push(path_arg(&data));
    let mut server = Server::spawn(root.path(), &args, &[("RUST_LOG", "debug")]).await?;
    let api = server.api.clone();

    let token = api.sign_in(&data, MERCHANT_PHONE).await?;
    let outbox = std::fs::read_to_string(data.join("dev-outbox.jsonl"))?;
    let codes: Vec<String> = outbox
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["code"].as_str().map(str::to_string))
        .collect();
    ensure!(!codes.is_empty(), "no sign-in code in the dev outbox");
    let (store_id, slug) = api.create_store(&token, "Quiet Spices").await?;
    let (product_id, variant) = api.create_product(&token, &store_id, "Saffron", 10).await?;
    let (cart_id, cart_token) = api.cart_with(&slug, &variant, 1).await?;
    let checkout = api
        .call(
            Method::POST,
            &format!("/api/v1/storefront/{slug}/carts/{cart_id}/checkout"),
            None,
            &[("x-cart-token", &cart_token), ("traceparent", PARENT), ("x-request-id", "e2e-checkout-1")],
            Some(&checkout_body()),
        )
        .await?;
    let returned = checkout.headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let request_id = checkout.headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    checkout.expect(201, "checking out")?;
    ensure!(returned.starts_with(&format!("00-{TRACE}-")), "the checkout's trace comes back: {returned:?}");
    ensure!(request_id == "e2e-checkout-1", "the request id comes back: {request_id:?}");
    api.all_orders(&token, &store_id).await?;
    ensure!(api.stock(&token, &store_id, &product_id).await? == 9, "one unit was sold");
    api.call(Method::GET, &format!("/{slug}"), None, &[], None).await?.expect(200, "the storefront")?;

    // The consumers apply the order's events in the background; their lines join its trace.
    let joined = |logs: &str| logs.lines().any(|l| l.contains(r#""name":"event""#) && l.contains(TRACE));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !joined(&server.stderr_text().await) {
        ensure!(Instant::now() < deadline, "no consumer line in the checkout's trace");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.sigterm().await?;
    server.wait_exit(EXIT_TIMEOUT).await?;
    let logs = server.stderr_text().await;

    let in_request: Vec<&str> = logs.lines().filter(|l| l.contains(r#""request_id":"e2e-checkout-1""#)).collect();
    ensure!(!in_request.is_empty(), "nothing was logged inside the checkout");
    for line in &in_request {
        let v: Value = serde_json::from_str(line).with_context(|| format!("not a JSON line: {line}"))?;
        let request = v["spans"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "request"))
            .with_context(|| format!("no request span on {line}"))?;
        ensure!(request["trace_id"] == TRACE, "{line}");
        ensure!(request["store_id"] == store_id.as_str(), "{line}");
    }
    let mut secrets = vec![("the session token", token.clone()), ("the cart token", cart_token.clone())];
    secrets.push(("the Authorization header", format!("Bearer {token}")));
    secrets.extend(codes.iter().map(|c| ("a sign-in code", c.clone())));
    for (what, secret) in secrets {
        if let Some(line) = logs.lines().find(|l| contains_token(l, &secret)) {
            bail!("{what} was logged: {line}");
        }
    }
    Ok(())
}

/// Whether `secret` appears in `line` as a whole token: a six-digit code inside a timestamp's
/// fraction or a hex id is a coincidence, not a leak.
fn contains_token(line: &str, secret: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    line.match_indices(secret)
        .any(|(at, _)| !word(line[..at].chars().next_back()) && !word(line[at + secret.len()..].chars().next()))
}

// ---------------------------------------------------------------------------------------------
// Payments: the binary's provider wiring, the test gateway subcommand, the payout command
// ---------------------------------------------------------------------------------------------

/// Polls `probe` every 50 ms until it holds, for at most 20 s: for what another process does
/// in its own time (a webhook crossing between two of them).
async fn until<F, Fut>(what: &str, mut probe: F) -> Result<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Value>>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        ensure!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_order_is_paid_through_the_gateway_subcommand_refunded_and_paid_out() -> Result<()> {
    let root = tempfile::tempdir()?;
    let data = root.path().join("data");
    let creds = [("KIRANA_PAYMENT_KEY", "e2e-key"), ("KIRANA_PAYMENT_WEBHOOK_SECRET", "e2e-secret")];
    // The gateway's port first (the server must know it); then the server; then the gateway,
    // told where the server's webhook endpoint is.
    let gw_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let gw_url = format!("http://127.0.0.1:{gw_port}");
    let mut args = strings(&["serve", "--listen", "127.0.0.1:0", "--payment-gateway-url", &gw_url, "--data-dir"]);
    args.push(path_arg(&data));
    let server = Server::spawn(root.path(), &args, &creds).await?;
    let webhook = server.url("/api/v1/payments/webhooks/testgw");
    let gw_args = strings(&["gateway", "--listen", &format!("127.0.0.1:{gw_port}"), "--webhook-url", &webhook]);
    let _gateway = Server::spawn_until(root.path(), &gw_args, &creds, "kirana gateway listening on ").await?;

    let api = &server.api;
    let token = api.sign_in(&data, MERCHANT_PHONE).await?;
    let (store_id, slug) = api.create_store(&token, "Gateway Grocers").await?;
    api.call(
        Method::PATCH,
        &format!("/api/v1/stores/{store_id}"),
        Some(&token),
        &[],
        Some(&json!({ "online_payment_enabled": true })),
    )
    .await?
    .expect(200, "turning on online payment")?;
    let (product_id, variant_id) = api.create_product(&token, &store_id, "Basmati", 5).await?;
    let (cart_id, cart_token) = api.cart_with(&slug, &variant_id, 2).await?;
    let mut body = checkout_body();
    body["payment_method"] = json!("online");
    let order = api
        .call(
            Method::POST,
            &format!("/api/v1/storefront/{slug}/carts/{cart_id}/checkout"),
            None,
            &[("x-cart-token", &cart_token)],
            Some(&body),
        )
        .await?
        .expect(201, "an online checkout")?;
    ensure!(order["status"] == "pending_payment", "{order}");
    ensure!(api.stock(&token, &store_id, &product_id).await? == 3, "the unpaid order holds its stock");
    let pay_page = text(&order, "payment_url")?;
    ensure!(pay_page.starts_with(&gw_url), "the shopper is sent to the gateway: {pay_page}");

    // The shopper pays on the gateway's page; its webhook reaches the server, which captures.
    let click = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .post(format!("{pay_page}/authorize"))
        .send()
        .await?;
    ensure!(click.status().as_u16() == 303, "the gateway's pay button answered {}", click.status());
    let order_id = text(&order, "id")?;
    let order_path = format!("/api/v1/stores/{store_id}/orders/{order_id}");
    until("the order placed and paid by the gateway's webhook", || async {
        let o = api.call(Method::GET, &order_path, Some(&token), &[], None).await?.expect(200, "the order")?;
        Ok((o["status"] == "placed" && o["payment_status"] == "paid").then_some(o))
    })
    .await?;

    // A partial refund through the gateway, then delivery and a payout by the operator command.
    let refund = api
        .call(Method::POST, &format!("{order_path}/refunds"), Some(&token), &[], Some(&json!({ "amount": 10_000 })))
        .await?
        .expect(201, "a partial refund")?;
    ensure!(refund["status"] == "succeeded", "{refund}");
    for to in ["accepted", "packed", "shipped", "delivered"] {
        api.call(Method::POST, &format!("{order_path}/transitions"), Some(&token), &[], Some(&json!({ "to": to })))
            .await?
            .expect(200, "moving the order on")?;
    }
    let mut payout = strings(&["payments", "payout", "--data-dir"]);
    payout.push(path_arg(&data));
    let ran = run_kirana(root.path(), &payout, &[]).await?;
    ensure!(ran.status.success() && ran.stdout.contains("1 store(s) paid out"), "{}", ran.describe());
    let again = run_kirana(root.path(), &payout, &[]).await?;
    ensure!(again.stdout.contains("0 store(s) paid out"), "nothing is paid twice: {}", again.describe());
    let payouts = api
        .call(Method::GET, &format!("/api/v1/stores/{store_id}/payouts"), Some(&token), &[], None)
        .await?
        .expect(200, "the payouts")?;
    // ₹900 captured − ₹18 fee (2 %) − ₹100 refunded.
    ensure!(payouts["items"][0]["amount"] == 78_200, "{payouts}");
    Ok(())
}
