//! The platform, in process, on a real TCP port: what the browser talks to. It runs on the
//! system clock (the browser cannot be paused) and keeps sign-in codes in memory so the test can
//! read what a merchant's phone would have received.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use kirana_domain::SystemClock;
use kirana_server::auth::MemoryNotifier;
use kirana_server::media::MediaStore;
use kirana_server::{AppState, ServerConfig};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use tempfile::TempDir;

/// Server time spent answering, summed over requests. The browser's own time (layout, paint,
/// WebDriver round trips) is not in it, so it measures the platform's share of a journey.
#[derive(Default)]
pub struct Meter {
    nanos: AtomicU64,
    requests: AtomicU64,
    /// Each request, in the order it finished: `METHOD /path` and its time.
    log: Mutex<Vec<(String, Duration)>>,
}

/// A reading of the [`Meter`]; subtract two to get a segment.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub busy: Duration,
    pub requests: u64,
}

impl std::ops::Sub for Reading {
    type Output = Reading;

    fn sub(self, earlier: Reading) -> Reading {
        Reading { busy: self.busy - earlier.busy, requests: self.requests - earlier.requests }
    }
}

impl Meter {
    pub fn read(&self) -> Reading {
        Reading {
            busy: Duration::from_nanos(self.nanos.load(Ordering::SeqCst)),
            requests: self.requests.load(Ordering::SeqCst),
        }
    }

    /// The `n` slowest requests since `since`, slowest first.
    pub fn slowest(&self, since: Reading, n: usize) -> Vec<(String, Duration)> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let start = usize::try_from(since.requests).unwrap_or(usize::MAX).min(log.len());
        let mut recent = log[start..].to_vec();
        recent.sort_by_key(|r| std::cmp::Reverse(r.1));
        recent.truncate(n);
        recent
    }
}

/// Times the whole application, from the request's arrival at the router to its response
/// (headers and a body that every page renders in full before answering).
async fn metered(State(meter): State<Arc<Meter>>, req: Request, next: Next) -> Response {
    let what = format!("{} {}", req.method(), req.uri().path());
    let start = Instant::now();
    let res = next.run(req).await;
    let elapsed = start.elapsed();
    // One lock keeps the log's order and the counters in step.
    let mut log = meter.log.lock().unwrap_or_else(|p| p.into_inner());
    log.push((format!("{what} → {}", res.status().as_u16()), elapsed));
    meter.nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::SeqCst);
    meter.requests.fetch_add(1, Ordering::SeqCst);
    res
}

pub struct Server {
    /// `http://127.0.0.1:<port>`, also the platform's public address.
    pub base: String,
    pub notifier: Arc<MemoryNotifier>,
    pub meter: Arc<Meter>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(|state, _| state).await
    }

    /// The platform with `configure` applied to its state, given the platform's public address
    /// (a payment provider, say).
    pub async fn start_with(configure: impl FnOnce(AppState, &str) -> AppState) -> Server {
        let dir = tempfile::tempdir().expect("a temp dir for the data");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let base = format!("http://{}", listener.local_addr().expect("the bound address"));
        // Nothing here needs to survive power loss.
        let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
        let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).expect("open storage");
        let notifier = Arc::new(MemoryNotifier::default());
        let media = MediaStore::local(&dir.path().join("media")).expect("a media directory");
        let state =
            AppState::new(storage, Arc::new(SystemClock), notifier.clone(), ServerConfig::default()).with_media(media);
        let state = configure(state, &base);
        let meter = Arc::new(Meter::default());
        let app = kirana_web::app(state, kirana_web::Web::new(&base, &[7u8; 32]))
            .layer(middleware::from_fn_with_state(meter.clone(), metered));
        let task = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .expect("the server runs");
        });
        Server { base, notifier, meter, task, _dir: dir }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
