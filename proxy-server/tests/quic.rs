//! The QUIC transport in-process: the real proxy-server and proxy-agent libraries on loopback
//! with a generated PKI, driven through the HTTP CONNECT and gRPC frontends over a Unix socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use konnectivity_proto::{Packet, PacketType, Payload};
use proxy_agent::config::TlsTuning as AgentTls;
use proxy_server::config::{
    BackendConfig, FrontendConfig, FrontendListen, FrontendMode, ProxyStrategy, ServerConfig,
    TlsTuning,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_tunnel_over_quic_carries_bytes_both_ways_with_half_close() {
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::HttpConnect).await;
    let _agent = start_agent(agent_config(&pki, proxy.quic.port(), "a1")).await;
    let echo = echo_server().await;
    let (mut s, head) = http_connect(&proxy.uds, &echo.to_string()).await;
    assert_eq!(head, "HTTP/1.1 200 Connection Established\r\n\r\n");
    round_trip(&mut s, b"hello over quic").await;
    // 8 MiB of patterned bytes, then a half-close: every byte comes back, then EOF.
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn({
        let payload = payload.clone();
        async move {
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        }
    });
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut back))
        .await
        .expect("echo and EOF in time")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_frontend_dials_exchanges_data_and_closes_over_quic() {
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::Grpc).await;
    let _agent = start_agent(agent_config(&pki, proxy.quic.port(), "a1")).await;
    let echo = echo_server().await;
    let mut t = GrpcTunnel::open(&proxy.uds).await;
    let (id, err) = t.dial(&echo.to_string(), 1234).await;
    assert_eq!(err, "");
    assert_ne!(id, 0);
    t.tx.send(Packet::data(id, b"ping".to_vec())).unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        match t.next().await.payload {
            Some(Payload::Data(d)) => {
                assert_eq!(d.connect_id, id);
                got.extend_from_slice(&d.data);
            }
            other => panic!("expected DATA, got {other:?}"),
        }
    }
    assert_eq!(got, b"ping");
    t.tx.send(Packet::close_request(id)).unwrap();
    let p = t.next().await;
    assert_eq!(p.kind(), Some(PacketType::CloseRsp));
    match p.payload {
        Some(Payload::CloseResponse(c)) => assert_eq!((c.connect_id, c.error.as_str()), (id, "")),
        other => panic!("expected CLOSE_RSP, got {other:?}"),
    }
    // The connection is forgotten: DATA for it is refused as on the gRPC transport.
    t.tx.send(Packet::data(id, b"late".to_vec())).unwrap();
    match t.next().await.payload {
        Some(Payload::CloseResponse(c)) => assert_eq!(c.error, "backend not initialized"),
        other => panic!("expected CLOSE_RSP, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_errors_keep_go_wording_on_both_frontends() {
    let pki = pki();
    let port = closed_port();
    let want = format!("dial tcp 127.0.0.1:{port}: connect: connection refused");

    let proxy = start_server(&pki, FrontendMode::HttpConnect).await;
    let agent = start_agent(agent_config(&pki, proxy.quic.port(), "a1")).await;
    let (_, head) = http_connect(&proxy.uds, &format!("127.0.0.1:{port}")).await;
    assert_eq!(
        head,
        format!("HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{want}")
    );
    drop(agent);
    drop(proxy);

    let proxy = start_server(&pki, FrontendMode::Grpc).await;
    let _agent = start_agent(agent_config(&pki, proxy.quic.port(), "a2")).await;
    let mut t = GrpcTunnel::open(&proxy.uds).await;
    assert_eq!(t.dial(&format!("127.0.0.1:{port}"), 9).await, (0, want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_agent_fails_pending_dials_and_closes_connections() {
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::HttpConnect).await;
    let agent = start_agent(agent_config(&pki, proxy.quic.port(), "a1")).await;
    let echo = echo_server().await;
    let (mut established, head) = http_connect(&proxy.uds, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"));
    round_trip(&mut established, b"x").await;
    let (hole, _l, _fill) = blackhole().await;
    let uds = proxy.uds.clone();
    let pending = tokio::spawn(async move { http_connect(&uds, &hole.to_string()).await.1 });
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.shutdown.cancel();
    let head = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(
        head,
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBackend context error: context canceled\r\n"
    );
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, established.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "established tunnel closed");
    wait_for("server forgets the agent", || proxy.shared.ready().is_err()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_pauses_only_its_own_stream_and_is_not_aborted() {
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::HttpConnect).await;
    let _agent = start_agent(agent_config(&pki, proxy.quic.port(), "a1")).await;
    let echo = echo_server().await;
    let (hose, written, stop) = firehose().await;
    let (mut a, head) = http_connect(&proxy.uds, &hose.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut b, head) = http_connect(&proxy.uds, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A's reader is stopped: wait until its writer is held by flow control (no progress).
    let mut last = u64::MAX;
    wait_for_async("A's writer to be held back", || {
        let now = written.load(Ordering::SeqCst);
        let settled = now == last && now > 0;
        last = now;
        settled
    })
    .await;
    let held = written.load(Ordering::SeqCst);
    assert!(
        held < 128 * 1024 * 1024,
        "flow control bounds what A buffers: {held} bytes"
    );
    // Meanwhile B keeps its round trips.
    let started = tokio::time::Instant::now();
    let mut trips = 0;
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(2) {
        let t = tokio::time::Instant::now();
        round_trip(&mut b, &[trips as u8; 64]).await;
        worst = worst.max(t.elapsed());
        trips += 1;
    }
    assert!(trips >= 100, "B completed only {trips} round trips");
    assert!(
        worst < Duration::from_millis(500),
        "B's worst round trip {worst:?}"
    );
    assert_eq!(
        written.load(Ordering::SeqCst),
        held,
        "A stayed paused while B ran"
    );

    // A was never aborted: it gets every byte its destination wrote, then EOF.
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
    assert!(total >= held);
    assert_eq!(total, written.load(Ordering::SeqCst), "no byte lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_travels_on_the_control_stream_and_new_dials_avoid_the_draining_agent() {
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::HttpConnect).await;
    let a = start_agent(agent_config(&pki, proxy.quic.port(), "draining")).await;
    let b = start_agent(agent_config(&pki, proxy.quic.port(), "staying")).await;
    a.drain.cancel();
    let registry = proxy.shared.metrics.registry();
    wait_for("server got DRAIN", || {
        metric(
            &registry.encode(),
            &["stream_packets_total", "from_agent", "\"DRAIN\""],
        ) == 1.0
    })
    .await;
    let dial_reqs = |m: &proxy_agent::metrics::Metrics| {
        metric(
            &m.registry().encode(),
            &["stream_packets_total", "to_agent", "DIAL_REQ"],
        )
    };
    let before = (dial_reqs(&a.metrics), dial_reqs(&b.metrics));
    let echo = echo_server().await;
    for _ in 0..10 {
        let (mut s, head) = http_connect(&proxy.uds, &echo.to_string()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        round_trip(&mut s, b"d").await;
    }
    assert_eq!(
        dial_reqs(&a.metrics),
        before.0,
        "draining agent got no dial"
    );
    assert_eq!(dial_reqs(&b.metrics), before.1 + 10.0);
    // The draining agent keeps serving (it is only a preference).
    assert!(!a.task.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_alpn_empty_identity_and_foreign_certificates_are_refused() {
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::HttpConnect).await;

    // Identity: an empty agent id is refused with the gRPC transport's message.
    let connector =
        proxy_agent::quic::QuicConnector::new(&agent_config(&pki, proxy.quic.port(), "")).unwrap();
    match connector.connect().await {
        Err(proxy_agent::server::ConnectError::QuicRefused { reason, .. }) => {
            assert_eq!(reason, "agent ID must not be empty")
        }
        other => panic!("expected a refusal, got {:?}", other.err()),
    }

    // A client certificate from another CA fails the handshake.
    let foreign = self::pki();
    let mut config = agent_config(&pki, proxy.quic.port(), "intruder");
    config.server.client_cert = Some(foreign.agent_pair());
    let connector = proxy_agent::quic::QuicConnector::new(&config).unwrap();
    assert!(connector.connect().await.is_err());

    // Another ALPN (here gRPC's) is refused in the handshake.
    let (cert, key) = pki.agent_pair();
    let tls = konnectivity_tls::client_config(
        &pki.paths.agent_ca.cert,
        Some((&cert, &key)),
        &[b"h2".to_vec()],
        &AgentTls::default(),
    )
    .unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let attempt = endpoint.connect(proxy.quic, "127.0.0.1").unwrap();
    assert!(tokio::time::timeout(WAIT, attempt).await.unwrap().is_err());

    assert!(proxy.shared.ready().is_err(), "no agent was registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_carries_a_thousand_concurrent_streams() {
    const N: usize = 1000;
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::HttpConnect).await;
    let _agent = start_agent(agent_config(&pki, proxy.quic.port(), "a1")).await;
    let echo = echo_server().await;
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..N {
        let uds = proxy.uds.clone();
        let echo = echo.to_string();
        opening.spawn(async move {
            let (mut s, head) = http_connect(&uds, &echo).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            round_trip(&mut s, format!("tunnel {i}").as_bytes()).await;
            s
        });
    }
    let mut open = Vec::with_capacity(N);
    while let Some(s) = opening.join_next().await {
        open.push(s.unwrap());
    }
    let registry = proxy.shared.metrics.registry();
    assert_eq!(
        metric(&registry.encode(), &["established_connections "]),
        N as f64
    );
    // All still usable at once.
    for (i, s) in open.iter_mut().enumerate().step_by(97) {
        round_trip(s, format!("again {i}").as_bytes()).await;
    }
    drop(open);
    wait_for("every connection closed", || {
        metric(&registry.encode(), &["established_connections "]) == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_close_resets_the_stream_and_the_agent_abandons_its_dial() {
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::Grpc).await;
    let agent = start_agent(agent_config(&pki, proxy.quic.port(), "a1")).await;
    let (hole, _l, _fill) = blackhole().await;
    let mut t = GrpcTunnel::open(&proxy.uds).await;
    t.tx.send(Packet::dial_request("tcp", &hole.to_string(), 77))
        .unwrap();
    let agent_registry = agent.metrics.registry();
    wait_for("the agent got the dial", || {
        metric(
            &agent_registry.encode(),
            &["stream_packets_total", "to_agent", "DIAL_REQ"],
        ) == 1.0
    })
    .await;
    t.tx.send(Packet::close_dial(77)).unwrap();
    // Past the agent's 5 s dial timeout: a dial still running would have failed by now.
    tokio::time::sleep(proxy_agent::dial::DIAL_TIMEOUT + Duration::from_secs(1)).await;
    let text = agent_registry.encode();
    assert_eq!(
        metric(&text, &["endpoint_dial_failure_total"]),
        0.0,
        "{text}"
    );
    assert_eq!(metric(&text, &["stream_packets_total", "DIAL_RSP"]), 0.0);
    let server = proxy.shared.metrics.registry().encode();
    assert_eq!(
        metric(&server, &["dial_failure_count", "frontend_close"]),
        1.0
    );
    // The frontend got no DIAL_RSP, and the tunnel still works for a new dial.
    let echo = echo_server().await;
    let (id, err) = t.dial(&echo.to_string(), 78).await;
    assert_eq!((err.as_str(), id != 0), ("", true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_quic_false_binds_no_udp_listener() {
    let pki = pki();
    let p = &pki.paths;
    let config = ServerConfig {
        frontend: FrontendConfig {
            mode: FrontendMode::Grpc,
            listen: FrontendListen::Uds {
                path: pki.dir.path().join("off.sock"),
                delete_existing: true,
            },
            keepalive_time: Duration::from_secs(3600),
        },
        backend: BackendConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert: p.agent_server.cert.clone(),
            key: p.agent_server.key.clone(),
            client_ca: Some(p.agent_ca.cert.clone()),
            keepalive_time: Duration::from_secs(3600),
        },
        tls: TlsTuning::default(),
        proxy_strategies: vec![ProxyStrategy::Default],
        server_id: "off".into(),
        server_count: 1,
        xfr_channel_size: 10,
        backend_dial_timeout: Duration::ZERO,
        graceful_shutdown_timeout: Duration::ZERO,
        health_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        extensions: proxy_server::config::ServerExtensions {
            enable_quic: false,
            ..Default::default()
        },
    };
    let stop = CancellationToken::new();
    let (bound, shared) = proxy_server::start(&config, stop.clone()).await.unwrap();
    assert!(bound.agent_quic.is_none());
    // Nothing answers QUIC there: the agent's attempt fails.
    let connector =
        proxy_agent::quic::QuicConnector::new(&agent_config(&pki, bound.agent.port(), "a1"))
            .unwrap();
    let attempt = tokio::time::timeout(Duration::from_secs(3), connector.connect()).await;
    assert!(!matches!(attempt, Ok(Ok(_))));
    stop.cancel();
    shared.hard_stop.cancel();
}
