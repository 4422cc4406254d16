//! A fault-injecting TCP proxy for tests: it sits between kirana and one of its services
//! (PostgreSQL, Redis, NATS) and, on the test's word and while connections are live, adds
//! latency, caps bandwidth, blackholes, refuses new connections, or resets every connection.
//! It owns nothing but its listener and the connections it relays; it never looks at the bytes.
//!
//! Why a home-made one rather than Toxiproxy: the Rust crates for it (`toxiproxy_rust`) are
//! clients of the Toxiproxy *server*, a Go binary that no package registry this project uses
//! ships, and that every test would have to start, configure over HTTP and stop. The handful of
//! faults the fault tests need fit in one file, run inside the test's own runtime, and die with
//! the test.
//!
//! How each fault behaves, and why:
//! - **latency**: every chunk is held for the latency after it arrives, in each direction, so a
//!   request-response round trip costs at least twice the latency. Chunks stay pipelined (a
//!   chunk's wait starts when it arrives, not when the one before it left), as on a long link.
//! - **bandwidth**: bytes leave in small pieces, paced so that no direction exceeds the rate.
//! - **blackhole**: connections are accepted and kept open, and nothing is forwarded either
//!   way. What arrives is *held*, not dropped: lifting the blackhole delivers it, as TCP's
//!   retransmissions would after a short partition. That is the case the outage tests need —
//!   a request the client gave up on may still reach the server afterwards.
//! - **refuse**: new connections are closed as soon as they are accepted (the client sees an
//!   EOF); live ones go on.
//! - **reset**: every live connection is dropped with an RST (`SO_LINGER` 0) on both sides, as
//!   a crashed middlebox or a restarted server would.
//!
//! Dropping the [`FaultProxy`] stops its listener and closes every connection it relays.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The faults in force, shared by every connection and read afresh for each chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added to every chunk, in each direction.
    pub latency: Duration,
    /// Bytes per second in each direction; `None` is unlimited.
    pub bandwidth: Option<u64>,
    /// Accept and hold, forward nothing.
    pub blackhole: bool,
    /// Close new connections at once.
    pub refuse: bool,
}

#[derive(Debug, Default)]
struct State {
    faults: Faults,
    /// Bumped by [`FaultProxy::reset_all`]: every connection alive at that moment resets.
    resets: u64,
}

/// A proxy on `127.0.0.1:<free port>` in front of one upstream address.
pub struct FaultProxy {
    addr: SocketAddr,
    /// The one writer of the state every connection watches.
    state: watch::Sender<State>,
    live: Arc<AtomicUsize>,
    /// The accept loop; it owns every connection's task, so aborting it ends them all.
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 on a free port and relays every connection to `upstream`, without
    /// faults until told otherwise. Must be called within a tokio runtime.
    pub fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let (state, watcher) = watch::channel(State::default());
        let live = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(accept_loop(listener, upstream, watcher, live.clone()));
        Ok(FaultProxy { addr, state, live, accept })
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn faults(&self) -> Faults {
        self.state.borrow().faults
    }

    /// Connections being relayed now.
    pub fn live_connections(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state.send_modify(|s| s.faults.latency = latency);
    }

    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.state.send_modify(|s| s.faults.bandwidth = bytes_per_second);
    }

    pub fn set_blackhole(&self, on: bool) {
        self.state.send_modify(|s| s.faults.blackhole = on);
    }

    pub fn set_refuse(&self, on: bool) {
        self.state.send_modify(|s| s.faults.refuse = on);
    }

    /// Drops every live connection with an RST on both sides. New connections are unaffected.
    pub fn reset_all(&self) {
        self.state.send_modify(|s| s.resets += 1);
    }

    /// Lifts every fault (held data is delivered).
    pub fn heal(&self) {
        self.state.send_modify(|s| s.faults = Faults::default());
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    live: Arc<AtomicUsize>,
) {
    // Owned here so that aborting this task (dropping the proxy) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    if state.borrow().faults.refuse {
                        drop(client);
                        continue;
                    }
                    connections.spawn(relay(client, upstream, state.clone(), live.clone()));
                }
                // Out of file descriptors and the like: transient, and there is no signal for
                // "descriptors are free again", so a short pause rather than a hot loop.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow with a long test.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// How a relayed connection ended.
enum End {
    /// Both directions reached EOF and passed it on.
    Closed,
    /// A read or write failed: a peer went away.
    Broken,
    /// [`FaultProxy::reset_all`].
    Reset,
}

/// Counts a connection as live for as long as it is held.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::SeqCst);
        Live(count)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, state: watch::Receiver<State>, live: Arc<AtomicUsize>) {
    let resets_at_start = state.borrow().resets;
    // An upstream that cannot be reached closes the client's connection: it sees an EOF, as
    // it would through any proxy.
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let _live = Live::new(live);
    // Chunks are timed one by one; Nagle's algorithm would merge and delay them on its own.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let end = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let mut up = pin!(pump(client_read, server_write, state.clone()));
        let mut down = pin!(pump(server_read, client_write, state.clone()));
        let mut resets = state;
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(_) => break End::Broken,
                },
                r = &mut down, if !down_done => match r {
                    Ok(()) => down_done = true,
                    Err(_) => break End::Broken,
                },
                // An error means the proxy is gone, and with it this task in a moment.
                _ = resets.wait_for(|s| s.resets != resets_at_start) => break End::Reset,
            }
            if up_done && down_done {
                break End::Closed;
            }
        }
    };
    if let End::Reset = end {
        // SO_LINGER 0: closing sends an RST instead of a FIN, and discards unsent data.
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
    }
}

/// Relays one direction until EOF (passed on as a write shutdown) or an error. A reader and a
/// writer joined by a queue, so that latency delays each chunk without serialising them.
async fn pump(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, state: watch::Receiver<State>) -> std::io::Result<()> {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(16);
    let arrivals = state.clone();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(()); // dropping `queue` tells the writer to pass the EOF on
            }
            let due = Instant::now() + arrivals.borrow().faults.latency;
            if queue.send((due, buf[..n].to_vec())).await.is_err() {
                return Ok(()); // the writer stopped, and said why
            }
        }
    };
    let write = async move {
        let mut faults = state;
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            send_paced(&mut to, &chunk, &mut faults).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Writes `chunk`, holding it while blackholed and pacing it under a bandwidth cap. The faults
/// are read again before every piece, so a change applies within one piece.
async fn send_paced(to: &mut WriteHalf<'_>, chunk: &[u8], faults: &mut watch::Receiver<State>) -> std::io::Result<()> {
    let mut rest = chunk;
    while !rest.is_empty() {
        faults.wait_for(|s| !s.faults.blackhole).await.map_err(|_| std::io::ErrorKind::BrokenPipe)?;
        let bandwidth = faults.borrow().faults.bandwidth;
        let Some(rate) = bandwidth.map(|r| r.max(1)) else {
            to.write_all(rest).await?;
            return Ok(());
        };
        // Pieces of a tenth of a second's worth, so pacing is smooth and a lifted cap soon felt.
        let piece = rest.len().min(usize::try_from(rate / 10).unwrap_or(usize::MAX).max(1));
        to.write_all(&rest[..piece]).await?;
        // This sleep is the fault itself: the time these bytes take on a link of this rate.
        tokio::time::sleep(Duration::from_secs_f64(piece as f64 / rate as f64)).await;
        rest = &rest[piece..];
    }
    Ok(())
}
