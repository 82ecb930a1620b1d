//! Per-connection flow control on the gRPC agent transport, in-process: negotiated between our
//! server and agent, a stalled reader pauses only its own connection (both directions) and is
//! never aborted; without negotiation (either side acting as upstream) the bounded queue and
//! its abort apply as before.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use proxy_agent::config::{AgentExtensions, Transport};
use proxy_server::config::{FrontendMode, ServerExtensions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn grpc_agent(flow_control: bool) -> AgentExtensions {
    AgentExtensions {
        transport: Transport::Grpc,
        flow_control,
        ..AgentExtensions::default()
    }
}

fn credits(proxy: &Proxy) -> (f64, f64) {
    let text = proxy.shared.metrics.registry().encode();
    (
        metric(&text, &["stream_packets_total", "to_agent", "CREDIT"]),
        metric(&text, &["stream_packets_total", "from_agent", "CREDIT"]),
    )
}

fn stalled(proxy: &Proxy) -> f64 {
    metric(
        &proxy.shared.metrics.registry().encode(),
        &["stalled_connections_total"],
    )
}

/// B's 64-byte round trips for `secs` seconds: their count and the slowest.
async fn ping_pong(b: &mut tokio::net::UnixStream, secs: u64) -> (usize, Duration) {
    let started = tokio::time::Instant::now();
    let (mut trips, mut worst) = (0usize, Duration::ZERO);
    while started.elapsed() < Duration::from_secs(secs) {
        let t = tokio::time::Instant::now();
        round_trip(b, &[trips as u8; 64]).await;
        worst = worst.max(t.elapsed());
        trips += 1;
    }
    (trips, worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiated_flow_control_pauses_a_stalled_frontend_reader_without_aborting_it() {
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::HttpConnect).await;
    let agent = start_agent_with(
        agent_config(&pki, proxy.quic.port(), "a1"),
        grpc_agent(true),
    )
    .await;
    let echo = echo_server().await;
    let (hose, written, stop) = firehose().await;
    let (mut a, head) = http_connect(&proxy.uds, &hose.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut b, head) = http_connect(&proxy.uds, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A's reader is stopped: its destination is held back by credit, not by the queue bound.
    let mut last = u64::MAX;
    wait_for_async("A's destination to be held back", || {
        let now = written.load(Ordering::SeqCst);
        let settled = now == last && now > 0;
        last = now;
        settled
    })
    .await;
    let held = written.load(Ordering::SeqCst);
    let (trips, worst) = ping_pong(&mut b, 2).await;
    assert!(trips >= 100, "B completed only {trips} round trips");
    assert!(worst < Duration::from_millis(500), "B's worst {worst:?}");
    assert_eq!(written.load(Ordering::SeqCst), held, "A stayed paused");
    assert_eq!(stalled(&proxy), 0.0, "nothing was aborted");

    stop.store(true, Ordering::SeqCst);
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(WAIT, a.read(&mut buf))
            .await
            .expect("A keeps flowing")
            .unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, written.load(Ordering::SeqCst), "no byte lost");
    assert!(credits(&proxy).0 >= 1.0, "the server granted credit");
    drop(agent);
}

/// A destination that reads nothing until `go`, then everything; counts what it read.
async fn lazy_sink() -> (std::net::SocketAddr, Arc<AtomicU64>, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let read = Arc::new(AtomicU64::new(0));
    let go = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let (read, go) = (read.clone(), go.clone());
        async move {
            let (mut s, _) = l.accept().await.unwrap();
            while !go.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                read.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    });
    (addr, read, go)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiated_flow_control_pauses_a_client_whose_destination_stopped_reading() {
    const TOTAL: u64 = 64 * 1024 * 1024;
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::HttpConnect).await;
    let agent = start_agent_with(
        agent_config(&pki, proxy.quic.port(), "a1"),
        grpc_agent(true),
    )
    .await;
    let echo = echo_server().await;
    let (sink, read, go) = lazy_sink().await;
    let (a, head) = http_connect(&proxy.uds, &sink.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut b, head) = http_connect(&proxy.uds, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let sent = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let sent = sent.clone();
        async move {
            let mut a = a;
            let chunk = vec![3u8; 64 * 1024];
            while sent.load(Ordering::SeqCst) < TOTAL {
                a.write_all(&chunk).await.unwrap();
                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            // No half-close: the gRPC transport has none, and the HTTP CONNECT frontend ends
            // the whole tunnel on the client's EOF.
            a
        }
    });
    let mut last = u64::MAX;
    wait_for_async("A's client to be held back", || {
        let now = sent.load(Ordering::SeqCst);
        let settled = now == last && now > 0;
        last = now;
        settled
    })
    .await;
    let held = sent.load(Ordering::SeqCst);
    assert!(held < TOTAL, "the client was never held back");
    let (trips, _) = ping_pong(&mut b, 1).await;
    assert!(trips >= 50, "B completed only {trips} round trips");
    let agent_text = agent.metrics.registry().encode();
    assert_eq!(
        metric(&agent_text, &["stalled_connections_total"]),
        0.0,
        "the agent aborted nothing"
    );

    go.store(true, Ordering::SeqCst);
    let _a = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the client finishes once the destination reads")
        .unwrap();
    wait_for("the destination to get every byte", || {
        read.load(Ordering::SeqCst) == TOTAL
    })
    .await;
    assert!(credits(&proxy).1 >= 1.0, "the agent granted credit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_negotiation_a_stalled_reader_gets_the_bounded_queue_and_abort() {
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::HttpConnect).await;
    // The agent does not ask (as an upstream agent): no flow control on its stream.
    let _agent = start_agent_with(
        agent_config(&pki, proxy.quic.port(), "a1"),
        grpc_agent(false),
    )
    .await;
    let echo = echo_server().await;
    let (hose, _written, _stop) = firehose().await;
    let (_a, head) = http_connect(&proxy.uds, &hose.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut b, head) = http_connect(&proxy.uds, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    wait_for("the stalled frontend to be aborted", || {
        stalled(&proxy) >= 1.0
    })
    .await;
    let (trips, _) = ping_pong(&mut b, 1).await;
    assert!(trips >= 50, "B completed only {trips} round trips");
    assert_eq!(credits(&proxy), (0.0, 0.0), "no CREDIT either way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_echo_the_header_gets_no_credit_packets() {
    let pki = pki();
    let upstream_like = ServerExtensions {
        flow_control: false,
        ..ServerExtensions::default()
    };
    let proxy = start_server_with(&pki, FrontendMode::HttpConnect, &upstream_like).await;
    let agent = start_agent_with(
        agent_config(&pki, proxy.quic.port(), "a1"),
        grpc_agent(true),
    )
    .await;
    let echo = echo_server().await;
    let (mut s, head) = http_connect(&proxy.uds, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let big = vec![9u8; 4 * 1024 * 1024];
    s.write_all(&big).await.unwrap();
    let mut back = vec![0u8; big.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, big);
    assert_eq!(credits(&proxy), (0.0, 0.0));
    let agent_text = agent.metrics.registry().encode();
    assert_eq!(
        metric(&agent_text, &["stream_packets_total", "CREDIT"]),
        0.0
    );
}
