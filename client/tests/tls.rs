//! The TCP + mutual TLS transport, with certificates made by rcgen.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use common::{serve_connect, Pki, WAIT};
use konnectivity_client::{ClientError, Dialer, ProxyProtocol, ProxyTransport, Tunnel};
use konnectivity_tls::{rustls, tokio_rustls, TlsTuning};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Server-side material plus the client's key pair.
struct Setup {
    pki: Pki,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn setup() -> Setup {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (server_cert, server_key) = pki.leaf(&ca, "proxy");
    let (client_cert, client_key) = pki.leaf(&ca, "kube-apiserver");
    Setup {
        pki,
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

fn transport(s: &Setup, addr: String, ca: PathBuf) -> ProxyTransport {
    ProxyTransport::Tcp {
        addr,
        server_name: "127.0.0.1".into(),
        ca,
        client_cert: s.client_cert.clone(),
        client_key: s.client_key.clone(),
    }
}

/// What the test proxy saw of one accepted connection's TLS handshake.
struct Accepted {
    /// The negotiated ALPN protocol.
    alpn: Option<Vec<u8>>,
    /// Whether the client presented a certificate.
    client_cert: bool,
    /// Whether the handshake resumed an earlier session.
    resumed: bool,
}

/// An mTLS HTTP CONNECT proxy on loopback; reports each accepted connection's handshake.
async fn start_connect_proxy(s: &Setup) -> (String, mpsc::UnboundedReceiver<Accepted>) {
    let config = konnectivity_tls::server_config(
        &s.server_cert,
        &s.server_key,
        Some(&s.pki.path("ca.crt")),
        &[b"http/1.1"],
        &TlsTuning::default(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (info_tx, info_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let info_tx = info_tx.clone();
            tokio::spawn(async move {
                let Ok(tls) = konnectivity_tls::accept(&acceptor, tcp, None).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let _ = info_tx.send(Accepted {
                    alpn: conn.alpn_protocol().map(|p| p.to_vec()),
                    client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                    resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                });
                let (requests, _keep) = mpsc::unbounded_channel();
                serve_connect(tls, requests).await;
            });
        }
    });
    (addr, info_rx)
}

#[tokio::test]
async fn http_connect_over_mutual_tls_offers_http11_and_tunnels() {
    let s = setup();
    let (addr, mut info) = start_connect_proxy(&s).await;
    let dialer = Dialer::new(
        ProxyProtocol::HttpConnect,
        transport(&s, addr, s.pki.path("ca.crt")),
    )
    .unwrap();
    dial_and_echo(&dialer, "ok:443", b"through tls").await;
    let accepted = info.recv().await.unwrap();
    assert_eq!(accepted.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(
        accepted.client_cert,
        "the client certificate was not presented"
    );
}

/// Dials `address` through `dialer` and checks that `payload` comes back through the tunnel
/// (the test proxies echo); returns the open tunnel.
async fn dial_and_echo(dialer: &Dialer, address: &str, payload: &[u8]) -> Tunnel {
    let mut tunnel = tokio::time::timeout(WAIT, dialer.dial(address))
        .await
        .unwrap()
        .unwrap();
    tunnel.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(WAIT, tunnel.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, payload);
    tunnel
}

/// Whether each of three sequential dials through `dialer` resumed a TLS session.
async fn resumed_per_dial(
    dialer: &Dialer,
    info: &mut mpsc::UnboundedReceiver<Accepted>,
) -> Vec<bool> {
    let mut resumed = Vec::new();
    for _ in 0..3 {
        // A round trip, so the session tickets sent after the handshake have arrived.
        dial_and_echo(dialer, "ok:443", b"x").await;
        resumed.push(info.recv().await.unwrap().resumed);
    }
    resumed
}

#[tokio::test]
async fn dialer_resumes_tls_sessions_unless_told_not_to_like_kube_apiserver() {
    let s = setup();
    let (addr, mut info) = start_connect_proxy(&s).await;
    let t = transport(&s, addr, s.pki.path("ca.crt"));
    let resuming = Dialer::new(ProxyProtocol::HttpConnect, t.clone()).unwrap();
    assert_eq!(
        resumed_per_dial(&resuming, &mut info).await,
        [false, true, true]
    );
    let full = Dialer::new(ProxyProtocol::HttpConnect, t)
        .unwrap()
        .without_tls_resumption();
    assert_eq!(
        resumed_per_dial(&full, &mut info).await,
        [false, false, false]
    );
}

#[tokio::test]
async fn proxy_certificate_from_another_ca_is_a_tls_error() {
    let s = setup();
    let other = Pki::new();
    other.ca("other-ca");
    let (addr, _info) = start_connect_proxy(&s).await;
    let dialer = Dialer::new(
        ProxyProtocol::HttpConnect,
        transport(&s, addr.clone(), other.path("other-ca.crt")),
    )
    .unwrap();
    let err = tokio::time::timeout(WAIT, dialer.dial("ok:443"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
}

#[tokio::test]
async fn closed_tcp_port_is_unreachable() {
    let s = setup();
    // Bind then drop to get a port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let dialer = Dialer::new(
        ProxyProtocol::Grpc,
        transport(&s, addr.clone(), s.pki.path("ca.crt")),
    )
    .unwrap();
    let err = dialer.dial("10.0.0.1:1").await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
}

/// tonic needs to know the peer of each accepted stream; the TLS stream carries none here.
struct ServerTls(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for ServerTls {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for ServerTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// gRPC over TCP + mTLS: the proxy requires ALPN h2 (as grpc-go does) and a client certificate.
#[tokio::test]
async fn grpc_over_mutual_tls_negotiates_h2_and_echoes() {
    let s = setup();
    let config = konnectivity_tls::server_config(
        &s.server_cert,
        &s.server_key,
        Some(&s.pki.path("ca.crt")),
        &[b"h2"],
        &TlsTuning::default(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (conn_tx, conn_rx) = mpsc::channel::<std::io::Result<ServerTls>>(4);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = konnectivity_tls::accept(&acceptor, tcp, Some(b"h2")).await {
                let _ = conn_tx.send(Ok(ServerTls(tls))).await;
            }
        }
    });
    let mut proxy = common::GrpcProxy::serve(tokio_stream::wrappers::ReceiverStream::new(conn_rx));

    let dialer = Dialer::new(
        ProxyProtocol::Grpc,
        transport(&s, addr, s.pki.path("ca.crt")),
    )
    .unwrap();
    let _tunnel = dial_and_echo(&dialer, "10.0.0.9:10250", b"over h2 and tls").await;
    assert!(common::is_kind(
        &proxy.next_event().await,
        konnectivity_proto::PacketType::DialReq
    ));
}
