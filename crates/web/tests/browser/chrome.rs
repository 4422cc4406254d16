//! Headless Chromium, driven through chromedriver: Debian's `chromium` and `chromium-driver`
//! (`.ci/run` installs them). A missing browser fails the test, with the command that fixes it:
//! a suite that skips what it cannot run proves nothing.
//!
//! Every wait polls something the page or the driver reports, with a deadline; none sleeps a
//! fixed time hoping the page is ready.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Longest any page, element or text is waited for: generous, since CI machines are shared.
const PATIENCE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);

/// Polls `probe` until it yields a value or [`PATIENCE`] runs out (`None` then).
pub async fn eventually<T, F, Fut>(mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A chromedriver process on a port of its own, killed (with the browsers it started, which
/// share its process group) when dropped, so a failing test leaves nothing running.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    async fn start(logs: &Path) -> Chromedriver {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the browser test needs Debian's Chromium and chromedriver; \
                 install them with `apt-get install chromium chromium-driver` (.ci/run does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port for chromedriver")
            .port();
        let log_path = logs.join("chromedriver.log");
        let log = std::fs::File::create(&log_path).expect("chromedriver's log file");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file, twice"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let mut driver = Chromedriver { child, url: format!("http://127.0.0.1:{port}") };
        driver.wait_until_ready(&log_path).await;
        driver
    }

    /// Polls `/status` until the driver says it is ready to create sessions.
    async fn wait_until_ready(&mut self, log_path: &Path) {
        let http = reqwest::Client::new();
        let status = format!("{}/status", self.url);
        let ready = eventually(|| {
            if let Ok(Some(exit)) = self.child.try_wait() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                panic!("chromedriver exited ({exit}) before it was ready:\n{log}");
            }
            let asked = http.get(&status).send();
            async move {
                let body: Value = asked.await.ok()?.json().await.ok()?;
                body["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
        if ready.is_none() {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            panic!("chromedriver did not become ready at {status} within {PATIENCE:?}:\n{log}");
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The process group is the driver's own (`process_group(0)`): its id is the driver's.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser window, and the platform it browses.
pub struct Browser {
    pub client: Client,
    base: String,
    /// The viewport's size, which is what pages and screenshots see.
    width: u32,
    height: u32,
    /// What the window adds around the viewport (headless Chromium still has some).
    frame: (u32, u32),
    // Declared after the client: the session goes first, then the driver, then the profile.
    _driver: Chromedriver,
    _profile: TempDir,
}

impl Browser {
    /// A fresh headless Chromium (empty profile: no cookies, no cache) at `width`×`height`.
    pub async fn open(base: &str, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
        let driver = Chromedriver::start(profile.path()).await;
        let user_data = profile.path().join("chromium");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", user_data.display()),
                ],
            },
        });
        let Value::Object(caps) = caps else { unreachable!("a JSON object") };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver would not start {CHROMIUM}: {e}"));
        let mut browser = Browser {
            client,
            base: base.to_string(),
            width,
            height,
            frame: (0, 0),
            _driver: driver,
            _profile: profile,
        };
        browser.resize(width, height).await;
        browser
    }

    /// Ends the session (Chromium quits), then the driver. A browser dropped without this (a
    /// failed test) is killed with its driver's process group.
    pub async fn close(self) {
        let Browser { client, _driver: driver, _profile: profile, .. } = self;
        client.close().await.expect("the session ends");
        drop(driver);
        drop(profile);
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub async fn goto(&self, path: &str) {
        let url = self.url(path);
        self.client.goto(&url).await.unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// The current URL's path and query, e.g. `/dashboard/stores/new`.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("the current URL");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    pub async fn current_url(&self) -> String {
        self.client.current_url().await.expect("the current URL").to_string()
    }

    /// What the page shows, for failure messages.
    async fn describe(&self) -> String {
        let url = self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
        let text = match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let text: String = text.chars().take(1500).collect();
        format!("at {url}, the page reads:\n{text}")
    }

    /// The element `css` selects, once it is on the page.
    pub async fn find(&self, css: &str) -> Element {
        match eventually(|| async { self.client.find(Locator::Css(css)).await.ok() }).await {
            Some(e) => e,
            None => panic!("no `{css}` within {PATIENCE:?}; {}", self.describe().await),
        }
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap_or_else(|e| panic!("finding `{css}`: {e}"))
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        e.click().await.unwrap_or_else(|err| panic!("cannot click `{css}`: {err}"));
    }

    /// Types `value` into the field `css` selects, replacing what it held.
    pub async fn fill(&self, css: &str, value: &str) {
        let e = self.find(css).await;
        e.clear().await.unwrap_or_else(|err| panic!("cannot clear `{css}`: {err}"));
        e.send_keys(value).await.unwrap_or_else(|err| panic!("cannot type into `{css}`: {err}"));
    }

    /// Chooses a file for an `<input type=file>`: the driver sends the browser the path.
    pub async fn attach(&self, css: &str, file: &Path) {
        let e = self.find(css).await;
        let path = file.canonicalize().expect("an absolute path for the upload");
        e.send_keys(&path.display().to_string()).await.unwrap_or_else(|err| panic!("cannot attach to `{css}`: {err}"));
    }

    pub async fn attr(&self, css: &str, name: &str) -> String {
        let e = self.find(css).await;
        e.attr(name).await.expect("reading an attribute").unwrap_or_else(|| panic!("`{css}` has no {name}"))
    }

    /// The rendered text of `css` (as a reader sees it: CSS `text-transform` applies).
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("an element's text").trim().to_string()
    }

    /// Waits until the text of `css` satisfies `ok` (the element may be replaced meanwhile, as
    /// when the page reloads or a script rewrites it); returns the text.
    pub async fn wait_for_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let seen = eventually(|| async {
            let e = self.client.find(Locator::Css(css)).await.ok()?;
            let t = e.text().await.ok()?.trim().to_string();
            ok(&t).then_some(t)
        })
        .await;
        match seen {
            Some(t) => t,
            None => panic!("`{css}` never showed {what} within {PATIENCE:?}; {}", self.describe().await),
        }
    }

    /// Waits until the path (with its query) satisfies `ok`; returns it.
    pub async fn wait_for_path(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let seen = eventually(|| async {
            let p = self.path().await;
            ok(&p).then_some(p)
        })
        .await;
        match seen {
            Some(p) => p,
            None => panic!("never reached {what} within {PATIENCE:?}; {}", self.describe().await),
        }
    }

    /// Runs `script` in the page and returns its result.
    pub async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until every `<img>` on the page has loaded and decoded (a broken one fails).
    pub async fn wait_for_images(&self) {
        let script =
            "return Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete, i.naturalWidth]);";
        let done = eventually(|| async {
            let imgs = self.eval(script).await;
            let imgs = imgs.as_array()?.clone();
            imgs.iter().all(|i| i[1] == Value::Bool(true)).then_some(imgs)
        })
        .await
        .unwrap_or_else(|| panic!("images were still loading after {PATIENCE:?}"));
        for i in done {
            assert!(i[2].as_u64().unwrap_or(0) > 0, "the image {} did not load", i[0]);
        }
    }

    /// Sets the viewport (not the window) to `width`×`height`.
    pub async fn resize(&mut self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.expect("resizing the window");
        let inner = self.eval("return [window.innerWidth, window.innerHeight];").await;
        let side = |i: usize| u32::try_from(inner[i].as_u64().expect("a viewport side")).expect("a small number");
        self.frame = (width.saturating_sub(side(0)), height.saturating_sub(side(1)));
        if self.frame != (0, 0) {
            self.client
                .set_window_size(width + self.frame.0, height + self.frame.1)
                .await
                .expect("resizing the window");
        }
        self.width = width;
        self.height = height;
    }

    /// A PNG of the whole page from its top, not just the viewport: the window grows to the
    /// page's height for the shot, then returns to its size.
    pub async fn screenshot(&self) -> Vec<u8> {
        // From the top, and without a focused field's caret and ring (autofocus, or the field
        // just typed into), which would make every refresh of the docs differ.
        let script = "document.activeElement?.blur(); window.scrollTo(0, 0); \
                      return Math.ceil(document.documentElement.scrollHeight);";
        let tall = self.eval(script).await;
        let tall = u32::try_from(tall.as_u64().unwrap_or(0)).unwrap_or(u32::MAX).clamp(self.height, 6000);
        let (fw, fh) = self.frame;
        if tall > self.height {
            self.client.set_window_size(self.width + fw, tall + fh).await.expect("growing the window");
        }
        let png = self.client.screenshot().await.expect("a screenshot");
        if tall > self.height {
            self.client.set_window_size(self.width + fw, self.height + fh).await.expect("restoring the window");
        }
        png
    }
}

/// Where screenshots go: `KIRANA_SCREENSHOTS` (relative to the workspace root) to refresh the
/// docs, or a temp dir so a CI run changes nothing in the tree.
pub struct Shots {
    dir: PathBuf,
    _temp: Option<TempDir>,
    pub taken: Vec<PathBuf>,
    /// Time spent taking them, which timed segments leave out.
    pub spent: Duration,
}

impl Shots {
    pub fn new() -> Shots {
        match std::env::var_os("KIRANA_SCREENSHOTS").filter(|v| !v.is_empty()) {
            Some(dir) => {
                let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
                let dir = root.join(dir);
                std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
                Shots { dir, _temp: None, taken: vec![], spent: Duration::ZERO }
            }
            None => {
                let temp = tempfile::tempdir().expect("a temp dir for screenshots");
                Shots { dir: temp.path().to_path_buf(), _temp: Some(temp), taken: vec![], spent: Duration::ZERO }
            }
        }
    }

    /// Saves the page as `<name>.png`.
    pub async fn take(&mut self, browser: &Browser, name: &str) {
        let start = Instant::now();
        let png = browser.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"), "the screenshot of {name} is not a PNG");
        let path = self.dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        self.taken.push(path);
        self.spent += start.elapsed();
    }

    /// Where they were kept, if they outlive the test.
    pub fn kept(&self) -> Option<&Path> {
        self._temp.is_none().then_some(self.dir.as_path())
    }
}
