//! Each fault, seen from a client of an echo server behind the proxy, on the real clock (the
//! proxy is real TCP): bounds are one-sided where time is measured, so a busy machine can only
//! make a test slower, not wrong.

use std::net::SocketAddr;
use std::time::Duration;

use kirana_faultproxy::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// An echo server on a free port; it runs until the test's runtime ends.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn proxied() -> (FaultProxy, TcpStream) {
    let proxy = FaultProxy::start(echo().await).unwrap();
    let client = TcpStream::connect(proxy.addr()).await.unwrap();
    (proxy, client)
}

/// Sends `data` and reads as many bytes back.
async fn round_trip(client: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    client.write_all(data).await.unwrap();
    let mut back = vec![0; data.len()];
    client.read_exact(&mut back).await.unwrap();
    back
}

const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn without_faults_bytes_go_through_both_ways() {
    let (proxy, mut client) = proxied().await;
    assert_eq!(round_trip(&mut client, b"namaste").await, b"namaste");
    assert_eq!(proxy.live_connections(), 1);
}

#[tokio::test]
async fn latency_delays_each_direction() {
    let (proxy, mut client) = proxied().await;
    round_trip(&mut client, b"warm").await;
    proxy.set_latency(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(timeout(PATIENCE, round_trip(&mut client, b"slow")).await.unwrap(), b"slow");
    assert!(started.elapsed() >= Duration::from_millis(300), "there and back: {:?}", started.elapsed());

    proxy.set_latency(Duration::ZERO);
    let started = Instant::now();
    round_trip(&mut client, b"fast").await;
    assert!(started.elapsed() < Duration::from_millis(300), "latency lifted: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_bandwidth_cap_paces_the_bytes() {
    let (proxy, mut client) = proxied().await;
    proxy.set_bandwidth(Some(100_000));
    let data = vec![7u8; 50_000];
    let started = Instant::now();
    assert_eq!(timeout(PATIENCE, round_trip(&mut client, &data)).await.unwrap(), data);
    // 50 kB at 100 kB/s is half a second each way; the two directions overlap.
    assert!(started.elapsed() >= Duration::from_millis(500), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_blackhole_forwards_nothing_and_lifting_it_delivers_what_it_held() {
    let (proxy, mut client) = proxied().await;
    round_trip(&mut client, b"before").await;
    proxy.set_blackhole(true);
    client.write_all(b"held").await.unwrap();
    let mut back = [0u8; 4];
    assert!(timeout(Duration::from_millis(300), client.read_exact(&mut back)).await.is_err(), "no answer");
    // New connections are accepted, and go just as silent.
    let mut other = TcpStream::connect(proxy.addr()).await.unwrap();
    other.write_all(b"x").await.unwrap();
    assert!(timeout(Duration::from_millis(100), other.read_u8()).await.is_err());

    proxy.set_blackhole(false);
    timeout(PATIENCE, client.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"held");
    assert_eq!(timeout(PATIENCE, other.read_u8()).await.unwrap().unwrap(), b'x');
}

#[tokio::test]
async fn refusing_closes_new_connections_and_spares_live_ones() {
    let (proxy, mut live) = proxied().await;
    round_trip(&mut live, b"hi").await;
    proxy.set_refuse(true);
    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut buf = [0u8; 1];
    let n = timeout(PATIENCE, refused.read(&mut buf)).await.unwrap();
    assert!(matches!(n, Ok(0)) || n.is_err(), "an EOF (or a reset), not data: {n:?}");
    assert_eq!(round_trip(&mut live, b"still").await, b"still");

    proxy.set_refuse(false);
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut again, b"back").await, b"back");
}

#[tokio::test]
async fn reset_all_drops_every_live_connection_with_an_rst() {
    let (proxy, mut client) = proxied().await;
    round_trip(&mut client, b"hi").await;
    proxy.reset_all();
    let mut buf = [0u8; 1];
    let read = timeout(PATIENCE, client.read(&mut buf)).await.unwrap();
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
    let deadline = Instant::now() + PATIENCE;
    while proxy.live_connections() > 0 {
        assert!(Instant::now() < deadline, "the reset connection is still counted");
        tokio::task::yield_now().await;
    }
    // The proxy itself goes on.
    let mut next = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut next, b"next").await, b"next");
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections_and_its_port() {
    let (proxy, mut client) = proxied().await;
    round_trip(&mut client, b"hi").await;
    let addr = proxy.addr();
    drop(proxy);
    let mut buf = [0u8; 1];
    let n = timeout(PATIENCE, client.read(&mut buf)).await.unwrap();
    assert!(matches!(n, Ok(0)) || n.is_err(), "closed: {n:?}");
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the port still accepts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
