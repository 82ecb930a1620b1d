//! gRPC single-use tunnels against an in-process fake `ProxyService` on a Unix socket.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{is_kind, Event, GrpcProxy, CONNECT_ID, WAIT};
use konnectivity_client::{ClientError, Dialer, ProxyProtocol, ProxyTransport, Tunnel};
use konnectivity_proto::{PacketType, Payload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn dialer(proxy: &GrpcProxy) -> Dialer {
    Dialer::new(
        ProxyProtocol::Grpc,
        ProxyTransport::Uds(proxy.socket.clone()),
    )
    .unwrap()
}

async fn dial(proxy: &GrpcProxy, address: &str) -> Result<Tunnel, ClientError> {
    tokio::time::timeout(WAIT, dialer(proxy).dial(address))
        .await
        .expect("dial did not finish in time")
}

/// Reads exactly `len` bytes using small reads, so payloads are consumed across many calls.
async fn read_in_small_pieces(tunnel: &mut Tunnel, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut buf = [0u8; 1000];
    while out.len() < len {
        let want = buf.len().min(len - out.len());
        let n = tokio::time::timeout(WAIT, tunnel.read(&mut buf[..want]))
            .await
            .expect("read timed out")
            .unwrap();
        assert!(n > 0, "unexpected EOF after {} of {len} bytes", out.len());
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[tokio::test]
async fn dial_sends_dial_req_and_echo_round_trips_across_many_writes() {
    let mut proxy = GrpcProxy::start().await;
    let mut tunnel = dial(&proxy, "10.0.0.5:10250").await.unwrap();
    assert_eq!(tunnel.connect_id(), Some(CONNECT_ID));

    match proxy.next_event().await {
        Event::Packet(p) => match (p.kind(), p.payload) {
            (Some(PacketType::DialReq), Some(Payload::DialRequest(d))) => {
                assert_eq!(d.protocol, "tcp");
                assert_eq!(d.address, "10.0.0.5:10250");
                assert!(d.random > 0);
            }
            other => panic!("first packet is not a DIAL_REQ: {other:?}"),
        },
        other => panic!("unexpected event {other:?}"),
    }

    // Several writes, one larger than a DATA packet, read back with small reads.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for msg in [&b"hello"[..], &b" world"[..], &big[..]] {
        tunnel.write_all(msg).await.unwrap();
        tunnel.flush().await.unwrap();
        let back = read_in_small_pieces(&mut tunnel, msg.len()).await;
        assert_eq!(back, msg);
    }

    // Each DATA packet the proxy saw is bounded and carries our connection id.
    let mut data_bytes = 0;
    while data_bytes < 5 + 6 + big.len() {
        if let Event::Packet(p) = proxy.next_event().await {
            if let Some(Payload::Data(d)) = p.payload {
                assert_eq!(d.connect_id, CONNECT_ID);
                assert!(d.data.len() <= 32 * 1024, "DATA of {} bytes", d.data.len());
                data_bytes += d.data.len();
            }
        }
    }
    assert_eq!(data_bytes, 5 + 6 + big.len());
}

#[tokio::test]
async fn each_dial_opens_a_new_connection_to_the_proxy() {
    let proxy = GrpcProxy::start().await;
    let a = dial(&proxy, "10.0.0.5:1").await.unwrap();
    let b = dial(&proxy, "10.0.0.5:2").await.unwrap();
    assert_eq!(proxy.accepted.load(Ordering::SeqCst), 2);
    drop((a, b));
}

#[tokio::test]
async fn refused_dial_surfaces_the_agent_error_verbatim() {
    let proxy = GrpcProxy::start().await;
    let err = dial(&proxy, "127.0.0.1:1").await.unwrap_err();
    match &err {
        ClientError::DialRefused { address, message } => {
            assert_eq!(address, "127.0.0.1:1");
            assert_eq!(message, "dial tcp 127.0.0.1:1: connect: connection refused");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err
        .to_string()
        .contains("dial tcp 127.0.0.1:1: connect: connection refused"));
}

/// Drops a dial to `address` once the proxy has its DIAL_REQ; the proxy must then see a
/// DIAL_CLS with the same random, followed by the end of the request stream.
async fn abandon_dial_and_expect_dial_cls(address: &str) {
    let mut proxy = GrpcProxy::start().await;
    let dialer = dialer(&proxy);
    // Boxed so that `drop` really drops the future (a stack-pinned one would live on).
    let mut dial = Box::pin(dialer.dial(address));
    let req = tokio::select! {
        r = &mut dial => panic!("dial to a silent proxy completed: {r:?}"),
        e = proxy.wait_for(|e| is_kind(e, PacketType::DialReq)) => e,
    };
    drop(dial);
    let random = match req {
        Event::Packet(p) => match p.payload {
            Some(Payload::DialRequest(d)) => d.random,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    match proxy.next_event().await {
        Event::Packet(p) => match (p.kind(), p.payload) {
            (Some(PacketType::DialCls), Some(Payload::CloseDial(c))) => {
                assert_eq!(c.random, random)
            }
            other => panic!("expected DIAL_CLS, got {other:?}"),
        },
        other => panic!("expected DIAL_CLS, got {other:?}"),
    }
    // The request stream is then half-closed so the proxy can finish the stream.
    assert_eq!(proxy.next_event().await, Event::StreamEnded);
}

#[tokio::test]
async fn dropping_the_dial_future_sends_dial_cls_with_the_dial_random() {
    abandon_dial_and_expect_dial_cls("hang:1").await;
}

/// grpc-go servers send response headers only with the first message (the DIAL_RSP), so a
/// pending dial has not even seen headers; DIAL_CLS must still go out.
#[tokio::test]
async fn dial_cls_is_sent_even_before_response_headers_arrive() {
    abandon_dial_and_expect_dial_cls("hang-headers:1").await;
}

#[tokio::test]
async fn dial_timeout_reports_timeout_and_sends_dial_cls() {
    let mut proxy = GrpcProxy::start().await;
    let dialer = dialer(&proxy).with_dial_timeout(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(WAIT, dialer.dial("hang:1"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ClientError::DialTimeout { timeout, .. } if timeout == Duration::from_millis(300)),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    proxy.wait_for(|e| is_kind(e, PacketType::DialCls)).await;
}

#[tokio::test]
async fn shutdown_sends_close_req_and_the_close_rsp_ends_reads() {
    let mut proxy = GrpcProxy::start().await;
    let mut tunnel = dial(&proxy, "10.0.0.5:22").await.unwrap();
    tunnel.write_all(b"ping").await.unwrap();
    assert_eq!(read_in_small_pieces(&mut tunnel, 4).await, b"ping");
    tunnel.shutdown().await.unwrap();

    let close = proxy.wait_for(|e| is_kind(e, PacketType::CloseReq)).await;
    match close {
        Event::Packet(p) => match p.payload {
            Some(Payload::CloseRequest(c)) => assert_eq!(c.connect_id, CONNECT_ID),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // Writes after shutdown fail; the fake's CLOSE_RSP ends the read side.
    let err = tunnel.write_all(b"late").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    // After the CLOSE_RSP the connection to the proxy is torn down.
    assert_eq!(
        proxy.wait_for(|e| *e == Event::StreamEnded).await,
        Event::StreamEnded
    );
}

#[tokio::test]
async fn dropping_the_tunnel_without_shutdown_sends_close_req() {
    let mut proxy = GrpcProxy::start().await;
    let tunnel = dial(&proxy, "10.0.0.5:22").await.unwrap();
    drop(tunnel);
    let close = proxy.wait_for(|e| is_kind(e, PacketType::CloseReq)).await;
    assert!(matches!(
        close,
        Event::Packet(p) if matches!(p.payload, Some(Payload::CloseRequest(c)) if c.connect_id == CONNECT_ID)
    ));
    assert_eq!(
        proxy.wait_for(|e| *e == Event::StreamEnded).await,
        Event::StreamEnded
    );
}

#[tokio::test]
async fn close_rsp_from_the_proxy_yields_eof_after_the_data() {
    let proxy = GrpcProxy::start().await;
    let mut tunnel = dial(&proxy, "bye:1").await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, tunnel.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all, b"bye");
    let err = tunnel.write_all(b"anyone?").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn data_for_an_unknown_connect_id_gets_a_close_req_and_is_not_delivered() {
    let mut proxy = GrpcProxy::start().await;
    // The fake first answers a DIAL_RSP for another random, which must be ignored.
    let mut tunnel = dial(&proxy, "stray:1").await.unwrap();
    assert_eq!(tunnel.connect_id(), Some(CONNECT_ID));
    let close = proxy.wait_for(|e| is_kind(e, PacketType::CloseReq)).await;
    assert!(matches!(
        close,
        Event::Packet(p) if matches!(p.payload, Some(Payload::CloseRequest(c)) if c.connect_id == 99)
    ));
    tunnel.write_all(b"ok").await.unwrap();
    assert_eq!(read_in_small_pieces(&mut tunnel, 2).await, b"ok");
}

#[tokio::test]
async fn dial_cls_from_the_proxy_fails_the_dial_as_dial_closed() {
    let proxy = GrpcProxy::start().await;
    let err = dial(&proxy, "dialcls:1").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Closed { reason, .. } if reason == "dial closed"),
        "{err}"
    );
}

#[tokio::test]
async fn grpc_error_status_during_the_dial_is_reported() {
    let proxy = GrpcProxy::start().await;
    let err = dial(&proxy, "status:1").await.unwrap_err();
    assert!(matches!(err, ClientError::Grpc { .. }), "{err}");
    assert!(err.to_string().contains("backend gone"), "{err}");
}

#[tokio::test]
async fn stream_ending_without_close_rsp_is_a_read_error() {
    let proxy = GrpcProxy::start().await;
    let mut tunnel = dial(&proxy, "silent-end:1").await.unwrap();
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(WAIT, tunnel.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
}

#[tokio::test]
async fn missing_socket_is_reported_as_unreachable_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody-home.sock");
    let dialer = Dialer::new(ProxyProtocol::Grpc, ProxyTransport::Uds(path.clone())).unwrap();
    let err = dialer.dial("10.0.0.5:1").await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn without_close_rsp_the_connection_is_dropped_after_the_close_timeout() {
    let mut proxy = GrpcProxy::start().await;
    let dialer = dialer(&proxy).with_close_timeout(Duration::from_millis(300));
    let mut tunnel = tokio::time::timeout(WAIT, dialer.dial("noclose:1"))
        .await
        .unwrap()
        .unwrap();
    let started = tokio::time::Instant::now();
    tunnel.shutdown().await.unwrap();
    proxy.wait_for(|e| is_kind(e, PacketType::CloseReq)).await;
    // The proxy never answers; the tunnel still ends (reads hit EOF) and the connection goes.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        proxy.wait_for(|e| *e == Event::StreamEnded).await,
        Event::StreamEnded
    );
}

/// A TLS echo server on loopback: the tunnel must carry a real TLS session (tokio-rustls over
/// the tunnel), including close_notify and the CLOSE_REQ/CLOSE_RSP that follow.
#[tokio::test]
async fn tls_session_runs_over_a_grpc_tunnel() {
    use konnectivity_tls::{tokio_rustls, TlsTuning};

    let pki = common::Pki::new();
    let ca = pki.ca("ca");
    let (cert, key) = pki.leaf(&ca, "node");
    let server_cfg =
        konnectivity_tls::server_config(&cert, &key, None, &[], &TlsTuning::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => tls.write_all(&buf[..n]).await.unwrap(),
            }
        }
        let _ = tls.shutdown().await;
    });

    let mut proxy = GrpcProxy::start().await;
    let tunnel = dial(&proxy, &format!("dial/127.0.0.1:{port}"))
        .await
        .unwrap();
    let client_cfg =
        konnectivity_tls::client_config(&pki.path("ca.crt"), None, &[], &TlsTuning::default())
            .unwrap();
    let mut tls = konnectivity_tls::connect(client_cfg, "localhost", tunnel, None)
        .await
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 239) as u8).collect();
    let (mut rd, mut wr) = tokio::io::split(&mut tls);
    let writer = async {
        wr.write_all(&payload).await.unwrap();
        wr.flush().await.unwrap();
    };
    let reader = async {
        let mut back = vec![0u8; payload.len()];
        rd.read_exact(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::time::timeout(WAIT, async { tokio::join!(writer, reader) })
        .await
        .unwrap();
    assert!(back == payload, "echoed bytes differ");
    tls.shutdown().await.unwrap();
    proxy.wait_for(|e| is_kind(e, PacketType::CloseReq)).await;
}

/// hyper's HTTP/1 client over a tunnel to a real HTTP server.
#[tokio::test]
async fn hyper_http1_request_runs_over_a_grpc_tunnel() {
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::body::Bytes;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let service =
            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let body = format!("you asked for {}", req.uri().path());
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    body,
                ))))
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
            .await;
    });

    let proxy = GrpcProxy::start().await;
    let tunnel = dial(&proxy, &format!("dial/127.0.0.1:{port}"))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tunnel))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get("/containerLogs/ns/pod/c")
        .header("host", "node")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"you asked for /containerLogs/ns/pod/c");
}
