//! Dialing *through* a Konnectivity proxy-server, the way kube-apiserver does it.
//!
//! kube-apiserver reaches nodes through the proxy's frontend in one of two ways, chosen by its
//! `EgressSelectorConfiguration`:
//!
//! * **gRPC** ([`ProxyProtocol::Grpc`]): per dial, a *new* connection to the proxy carrying one
//!   `ProxyService.Proxy` stream — upstream's "single-use tunnel". The stream carries
//!   `DIAL_REQ` → `DIAL_RSP`, then `DATA` both ways, then `CLOSE_REQ` → `CLOSE_RSP`.
//! * **HTTP CONNECT** ([`ProxyProtocol::HttpConnect`]): per dial, a new socket on which
//!   `CONNECT host:port HTTP/1.1` is sent; after a `200` the socket itself is the tunnel.
//!
//! Either can run over a Unix domain socket or over TCP with mutual TLS
//! ([`ProxyTransport`]). [`Dialer::dial`] returns a [`Tunnel`], a plain byte stream
//! (`AsyncRead + AsyncWrite`) that TLS or HTTP clients can run over.
//!
//! Behaviour mirrors upstream's `konnectivity-client` Go package, with two deliberate
//! differences, both documented on the items concerned: the dial deadline
//! ([`DEFAULT_DIAL_TIMEOUT`]) covers the whole dial including connecting to the proxy, and a
//! caller that stops reading is back-pressured instead of having its tunnel torn down after
//! 10 s.

#![forbid(unsafe_code)]

pub mod egress;
mod grpc;
mod http_connect;
mod transport;

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use konnectivity_tls::{rustls, TlsTuning};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

/// The TLS error type carried by [`ClientError::TlsConfig`] and [`ClientError::Tls`].
pub use konnectivity_tls::TlsError;

/// The egress-selector entry points, re-exported for convenience (see [`egress`]).
pub use egress::{EgressDialer, EgressSelector, EgressStream, SelectionName};

/// Upper bound on one [`Dialer::dial`]: connecting to the proxy, the TLS handshake, and waiting
/// for the proxy's answer (`DIAL_RSP` or the CONNECT response). Upstream's konnectivity-client
/// uses the same 30 s "backstop" for the `DIAL_RSP` wait. Cost: a dial to a node that really
/// takes longer fails (the agent itself gives up after 5 s, so a healthy path never does); a
/// shorter value would fail dials that are merely queued behind a slow proxy.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a closed gRPC tunnel waits for the proxy's `CLOSE_RSP` before it drops the
/// connection anyway (upstream: 10 s). Cost: the proxy connection (one socket and one task)
/// outlives the [`Tunnel`] by at most this long when the proxy does not answer; shorter risks
/// dropping the connection before the proxy has forwarded the close to the agent.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the proxy-server's frontend (kube-apiserver's `transport` stanza).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyTransport {
    /// A Unix domain socket (`uds.udsName`); no TLS, access is controlled by file permissions.
    Uds(PathBuf),
    /// TCP with mutual TLS (`tcp.url` + `tcp.tlsConfig`).
    Tcp {
        /// `host:port` of the proxy's frontend listener.
        addr: String,
        /// Name the proxy's certificate must carry (DNS name or IP literal); kube-apiserver uses
        /// the host of `tcp.url`.
        server_name: String,
        /// PEM CA bundle the proxy's certificate must chain to.
        ca: PathBuf,
        /// PEM client certificate presented to the proxy.
        client_cert: PathBuf,
        /// PEM private key of `client_cert`.
        client_key: PathBuf,
    },
}

/// The frontend protocol the proxy-server speaks (`--mode` on the server, `proxyProtocol` in
/// kube-apiserver's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// `ProxyService.Proxy` streams (server `--mode=grpc`).
    Grpc,
    /// HTTP/1.1 `CONNECT` (server `--mode=http-connect`).
    HttpConnect,
}

/// Why a dial failed. Each variant says which side is at fault, so callers can tell "the proxy
/// is down" from "the node refused" from "the proxy misbehaved".
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS key material named in [`ProxyTransport::Tcp`] could not be loaded.
    #[error("cannot load the TLS material for the proxy connection: {0}")]
    TlsConfig(#[source] Box<TlsError>),
    /// The proxy address in [`ProxyTransport::Tcp`] is not a usable `host:port`.
    #[error("invalid proxy address {addr:?}: {reason}")]
    InvalidProxyAddress {
        /// The rejected address.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The address to dial on the node side cannot be sent to the proxy.
    #[error("invalid dial address {address:?}: {reason}")]
    InvalidAddress {
        /// The rejected address.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No connection to the proxy could be opened.
    #[error("cannot reach the proxy at {target}: {source}; check that the proxy-server is running and listening there")]
    Unreachable {
        /// The socket path or `host:port`.
        target: String,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake with the proxy failed (certificate, name, version, ALPN).
    #[error("TLS handshake with the proxy at {target} failed: {source}")]
    Tls {
        /// `host:port` of the proxy.
        target: String,
        /// What went wrong (boxed: TLS errors are large and dials return this type often).
        #[source]
        source: Box<TlsError>,
    },
    /// The gRPC layer failed: HTTP/2 handshake, or the `Proxy` stream ended with an error status.
    #[error("gRPC exchange with the proxy at {target} failed: {detail}")]
    Grpc {
        /// The socket path or `host:port`.
        target: String,
        /// The transport error or the gRPC status (code and message).
        detail: String,
    },
    /// The proxy or the agent answered the dial with an error (gRPC `DIAL_RSP.error`), carried
    /// verbatim, e.g. `No agent available` or
    /// `dial tcp 127.0.0.1:1: connect: connection refused`.
    #[error("dial to {address} through the proxy failed: {message}")]
    DialRefused {
        /// The node-side address that was dialed.
        address: String,
        /// The error text from the proxy or agent, verbatim.
        message: String,
    },
    /// The proxy answered the HTTP `CONNECT` with a status other than 200.
    #[error("the proxy answered CONNECT {address} with HTTP {status} {reason}: {}", body.trim_end())]
    ConnectRejected {
        /// The node-side address that was dialed.
        address: String,
        /// The HTTP status code.
        status: u16,
        /// The reason phrase.
        reason: String,
        /// The response body (the agent's error text for 502/504), lossily decoded, bounded
        /// by [`MAX_ERROR_BODY`].
        body: String,
    },
    /// The dial did not complete within the dial timeout ([`DEFAULT_DIAL_TIMEOUT`] unless changed
    /// with [`Dialer::with_dial_timeout`]); a gRPC dial is cancelled with `DIAL_CLS`.
    #[error("dial to {address} through the proxy did not complete within {timeout:?}")]
    DialTimeout {
        /// The node-side address that was dialed.
        address: String,
        /// The bound that was exceeded.
        timeout: Duration,
    },
    /// The proxy closed the tunnel before the dial completed.
    #[error("the proxy closed the tunnel to {address} before the dial completed: {reason}")]
    Closed {
        /// The node-side address that was dialed.
        address: String,
        /// What was observed.
        reason: String,
    },
    /// The proxy broke the protocol (malformed HTTP response, tunnel bytes coalesced with the
    /// `200`, a `DIAL_RSP` without error nor connection id, …).
    #[error("protocol violation by the proxy while dialing {address}: {detail}")]
    Protocol {
        /// The node-side address that was dialed.
        address: String,
        /// What was wrong.
        detail: String,
    },
}

/// Largest HTTP CONNECT error body kept in [`ClientError::ConnectRejected`]; the rest is not
/// read. Cost: a longer explanation from the proxy is truncated; upstream's bodies are one line.
pub const MAX_ERROR_BODY: usize = http_connect::MAX_ERROR_BODY;

/// Opens tunnels through one proxy-server. Cheap to clone; the TLS material is loaded once, in
/// [`Dialer::new`], and shared by all clones.
#[derive(Debug, Clone)]
pub struct Dialer {
    protocol: ProxyProtocol,
    transport: ProxyTransport,
    tls: Option<Arc<rustls::ClientConfig>>,
    dial_timeout: Duration,
    close_timeout: Duration,
}

impl Dialer {
    /// Builds a dialer. For [`ProxyTransport::Tcp`] this loads the CA and the client key pair
    /// (errors name the file) and offers ALPN `h2` (gRPC, required as grpc-go does) or
    /// `http/1.1` (HTTP CONNECT).
    pub fn new(protocol: ProxyProtocol, transport: ProxyTransport) -> Result<Self, ClientError> {
        let tls = match &transport {
            ProxyTransport::Uds(_) => None,
            ProxyTransport::Tcp {
                addr,
                server_name,
                ca,
                client_cert,
                client_key,
            } => {
                transport::check_proxy_addr(addr)?;
                konnectivity_tls::server_name(server_name)
                    .map_err(|e| ClientError::TlsConfig(Box::new(e)))?;
                let alpn = transport::alpn_for(protocol);
                let config = konnectivity_tls::client_config(
                    ca,
                    Some((client_cert, client_key)),
                    &[alpn.to_vec()],
                    &TlsTuning::default(),
                )
                .map_err(|e| ClientError::TlsConfig(Box::new(e)))?;
                Some(config)
            }
        };
        Ok(Dialer {
            protocol,
            transport,
            tls,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            close_timeout: CLOSE_TIMEOUT,
        })
    }

    /// Replaces the dial timeout ([`DEFAULT_DIAL_TIMEOUT`]); tests use a short one.
    pub fn with_dial_timeout(mut self, timeout: Duration) -> Self {
        self.dial_timeout = timeout;
        self
    }

    /// Replaces how long a closed gRPC tunnel waits for `CLOSE_RSP` ([`CLOSE_TIMEOUT`]), and how
    /// long an abandoned dial waits for the proxy to end its stream; tests use a short one.
    pub fn with_close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Makes every mTLS connection a full handshake, as kube-apiserver's egress dialer does (Go,
    /// no client session cache). By default the dialer resumes TLS sessions from tickets the
    /// proxy sent on earlier connections (our proxy-server sends them only with
    /// `--frontend-tls-session-tickets` above 0), which skips certificate verification and
    /// signing on both sides; the benchmark turns that off so its dial figures are the
    /// apiserver's. No effect on UDS.
    pub fn without_tls_resumption(mut self) -> Self {
        if let Some(tls) = &self.tls {
            let mut config = rustls::ClientConfig::clone(tls);
            config.resumption = rustls::client::Resumption::disabled();
            self.tls = Some(Arc::new(config));
        }
        self
    }

    /// The dial timeout in force.
    pub fn dial_timeout(&self) -> Duration {
        self.dial_timeout
    }

    /// Opens a tunnel to `address` (`host:port`, IPv6 in brackets) on the node side.
    ///
    /// Like kube-apiserver, every dial opens a NEW connection to the proxy; for gRPC that
    /// connection carries exactly one `Proxy` stream and is closed with the tunnel. The whole
    /// dial is bounded by the dial timeout. Dropping the returned future before it completes
    /// cancels the dial: a gRPC dial still waiting for its `DIAL_RSP` sends `DIAL_CLS` from a
    /// background task. Must run inside a Tokio runtime: a gRPC tunnel's packets are pumped by
    /// a task spawned here.
    pub async fn dial(&self, address: &str) -> Result<Tunnel, ClientError> {
        check_dial_address(address)?;
        let deadline = Instant::now() + self.dial_timeout;
        let timed_out = || ClientError::DialTimeout {
            address: address.to_string(),
            timeout: self.dial_timeout,
        };
        match self.protocol {
            ProxyProtocol::Grpc => {
                let io = tokio::time::timeout_at(deadline, self.open())
                    .await
                    .map_err(|_| timed_out())??;
                let dial = grpc::Dial {
                    target: self.target(),
                    authority: transport::authority(&self.transport),
                    address: address.to_string(),
                    deadline,
                    timeout: self.dial_timeout,
                    close_timeout: self.close_timeout,
                };
                let tunnel = dial.run(io).await?;
                Ok(Tunnel {
                    inner: Inner::Grpc(tunnel),
                })
            }
            ProxyProtocol::HttpConnect => {
                let connect = async {
                    let mut io = self.open().await?;
                    http_connect::handshake(&mut io, address).await?;
                    Ok::<_, ClientError>(io)
                };
                let io = tokio::time::timeout_at(deadline, connect)
                    .await
                    .map_err(|_| timed_out())??;
                Ok(Tunnel {
                    inner: match io {
                        transport::ProxyIo::Unix(s) => Inner::Unix(s),
                        transport::ProxyIo::Tls(s) => Inner::Tls(s),
                    },
                })
            }
        }
    }

    /// Connects the transport (and handshakes TLS) to the proxy.
    async fn open(&self) -> Result<transport::ProxyIo, ClientError> {
        transport::open(&self.transport, self.tls.as_ref(), self.protocol).await
    }

    /// The proxy's socket path or address, for error messages.
    fn target(&self) -> String {
        transport::target(&self.transport)
    }
}

/// Rejects node-side addresses that would corrupt the request: empty, or containing
/// whitespace or control characters (a CR/LF would inject HTTP header lines).
fn check_dial_address(address: &str) -> Result<(), ClientError> {
    let reason = if address.is_empty() {
        "the address is empty; use host:port"
    } else if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "the address contains whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(ClientError::InvalidAddress {
        address: address.to_string(),
        reason,
    })
}

/// A byte stream to the dialed address, through the proxy.
///
/// Reads return the destination's bytes in order and end (EOF) when the destination or the
/// proxy closes the connection; writes are sent to the destination. `poll_shutdown` closes the
/// connection (gRPC: `CLOSE_REQ`, then the proxy connection is dropped after the `CLOSE_RSP` or
/// [`CLOSE_TIMEOUT`], in the background). Dropping a gRPC tunnel without shutting it down does
/// the same cleanup in the background.
pub struct Tunnel {
    inner: Inner,
}

/// The concrete stream behind a [`Tunnel`].
enum Inner {
    /// A gRPC single-use tunnel.
    Grpc(grpc::GrpcTunnel),
    /// An HTTP CONNECT tunnel over a Unix socket.
    Unix(UnixStream),
    /// An HTTP CONNECT tunnel over TCP + TLS.
    Tls(Box<konnectivity_tls::tokio_rustls::client::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Grpc(t) => f
                .debug_struct("Tunnel")
                .field("protocol", &"grpc")
                .field("connect_id", &t.connect_id())
                .finish(),
            Inner::Unix(_) => f
                .debug_struct("Tunnel")
                .field("protocol", &"http-connect")
                .field("transport", &"uds")
                .finish(),
            Inner::Tls(_) => f
                .debug_struct("Tunnel")
                .field("protocol", &"http-connect")
                .field("transport", &"tcp+tls")
                .finish(),
        }
    }
}

impl Tunnel {
    /// The agent-assigned connection id of a gRPC tunnel (`None` for HTTP CONNECT, where the
    /// proxy keeps it to itself). Useful to correlate with proxy and agent logs.
    pub fn connect_id(&self) -> Option<i64> {
        match &self.inner {
            Inner::Grpc(t) => Some(t.connect_id()),
            Inner::Unix(_) | Inner::Tls(_) => None,
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Grpc(t) => Pin::new(t).poll_read(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Grpc(t) => Pin::new(t).poll_write(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Grpc(t) => Pin::new(t).poll_flush(cx),
            Inner::Unix(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Grpc(t) => Pin::new(t).poll_shutdown(cx),
            Inner::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn assert_stream<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static>() {}

    #[test]
    fn tunnel_is_a_send_static_unpin_byte_stream() {
        assert_stream::<Tunnel>();
        fn assert_clone_send_sync<T: Clone + Send + Sync>() {}
        assert_clone_send_sync::<Dialer>();
    }

    #[test]
    fn dial_address_with_crlf_is_rejected() {
        let err = check_dial_address("a:1\r\nX: y").unwrap_err();
        assert!(matches!(err, ClientError::InvalidAddress { .. }), "{err}");
        assert!(check_dial_address("").is_err());
        assert!(check_dial_address("a b:1").is_err());
        assert!(check_dial_address("[::1]:443").is_ok());
        assert!(check_dial_address("node-1.example:10250").is_ok());
    }

    #[test]
    fn tcp_transport_with_missing_ca_file_names_the_file() {
        let err = Dialer::new(
            ProxyProtocol::HttpConnect,
            ProxyTransport::Tcp {
                addr: "127.0.0.1:8131".into(),
                server_name: "127.0.0.1".into(),
                ca: "/nonexistent/ca.crt".into(),
                client_cert: "/nonexistent/c.crt".into(),
                client_key: "/nonexistent/c.key".into(),
            },
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::TlsConfig(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
    }

    #[test]
    fn tcp_transport_with_bad_address_is_rejected() {
        let err = Dialer::new(
            ProxyProtocol::Grpc,
            ProxyTransport::Tcp {
                addr: "no-port-here".into(),
                server_name: "x".into(),
                ca: "/nonexistent/ca.crt".into(),
                client_cert: "/nonexistent/c.crt".into(),
                client_key: "/nonexistent/c.key".into(),
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, ClientError::InvalidProxyAddress { .. }),
            "{err}"
        );
    }
}
