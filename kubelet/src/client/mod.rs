//! The kube-apiserver side of the kubelet API, over any already-dialled byte stream.
//!
//! Typical use, one dial per request as kube-apiserver does:
//!
//! ```no_run
//! # async fn demo(tunnel: tokio::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! use futures::StreamExt;
//! use konnectivity_kubelet::client::{self, KubeletTls};
//! use konnectivity_kubelet::LogOptions;
//! let tls = KubeletTls::new("kubelet-ca.crt".as_ref(), "kubelet-client.crt".as_ref(), "kubelet-client.key".as_ref())?;
//! let stream = tls.connect(tunnel, "10.0.0.7").await?;
//! let opts = LogOptions { follow: true, ..LogOptions::default() };
//! let mut logs = client::logs(stream, "10.0.0.7:10250", "default", "web", "nginx", opts).await?;
//! while let Some(chunk) = logs.next().await {
//!     print!("{}", String::from_utf8_lossy(&chunk?));
//! }
//! # Ok(()) }
//! ```
//!
//! * [`logs`]: `GET /containerLogs` over a hyper HTTP/1.1 client connection, body as a
//!   [`Stream`](futures::Stream) of chunks.
//! * [`exec`]: WebSocket offering `v5.channel.k8s.io` then `v4.channel.k8s.io`; an
//!   [`ExecSession`] with stdin (AsyncWrite), stdout/stderr (AsyncRead) and the exit status.
//! * [`port_forward`]: WebSocket v4 channel port-forward of one port; a
//!   [`PortForwardStream`] (AsyncRead + AsyncWrite).
//!
//! Sessions send a WebSocket ping every [`PING_INTERVAL`] and fail with
//! [`KubeletError::Idle`] after [`IDLE_TIMEOUT`] without any frame from the kubelet, so a dead
//! tunnel becomes an error rather than a hang.

mod exec;
mod portforward;
mod tls;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::{header, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

pub use exec::{attach, exec, ExecOutput, ExecSession, ExecStdin, TerminalResizer};
pub use portforward::{port_forward, PortForwardStream};
pub use tls::{connect_tls, KubeletTls, KubeletTlsError, PresentedCertificate, KUBELET_ALPN};

use crate::protocol::StatusError;
use crate::request::{container_logs_path, InvalidName, LogOptions};

/// Interval of WebSocket pings to the kubelet (client-go: 5 s). Cost: one tiny frame each way
/// per interval per session; it keeps idle tunnels alive and feeds [`IDLE_TIMEOUT`].
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A session that receives nothing at all (no data, no pong) for this long fails with
/// [`KubeletError::Idle`] (client-go: 61 s). Cost: a dead path is noticed this late; shorter
/// would fail healthy sessions on a congested tunnel.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(61);
/// After the session ends, how long to wait for the kubelet's Close reply. Cost: the tunnel
/// connection outlives the session by at most this long.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of an error response body kept for the message (kube-apiserver keeps 50 000).
/// Cost: memory per failed request.
pub const MAX_ERROR_BODY: usize = 50_000;
/// Largest WebSocket message accepted from the kubelet. Cost: memory per message; servers
/// send output in far smaller chunks.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Largest stdin / port-forward chunk sent as one WebSocket message. Cost: bigger writes
/// are split into several messages.
pub const MAX_WRITE_CHUNK: usize = 32 * 1024;

/// `User-Agent` of every request.
const USER_AGENT: &str = concat!("konnectivity-kubelet/", env!("CARGO_PKG_VERSION"));

/// Why a kubelet request or session failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The namespace/pod/container/command/ports cannot form a kubelet URL.
    #[error(transparent)]
    InvalidRequest(#[from] InvalidName),
    /// The kubelet refused our client certificate (seen on the first read with TLS 1.3).
    #[error("the kubelet at {host} refused our client certificate (TLS alert: {alert}); --kubelet-client-certificate must be signed by the CA in the kubelet's --client-ca-file")]
    ClientCertificateRejected {
        /// The kubelet `host:port`.
        host: String,
        /// The TLS alert.
        alert: String,
    },
    /// The HTTP exchange failed (connection lost, malformed response, …).
    #[error("HTTP request to the kubelet at {host} failed: {source}")]
    Http {
        /// The kubelet `host:port`.
        host: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The kubelet answered with a non-success status.
    #[error("the kubelet at {host} answered {status} to {path}: {message}")]
    Status {
        /// The kubelet `host:port`.
        host: String,
        /// The request path.
        path: String,
        /// The HTTP status code.
        status: u16,
        /// The response body (up to [`MAX_ERROR_BODY`] bytes), trimmed.
        message: String,
    },
    /// The WebSocket handshake or connection failed.
    #[error("WebSocket connection to the kubelet at {host} failed: {source}")]
    WebSocket {
        /// The kubelet `host:port`.
        host: String,
        /// tungstenite's error.
        #[source]
        source: WsError,
    },
    /// The kubelet broke the channel protocol.
    #[error("the kubelet at {host} broke the {protocol} protocol: {detail}")]
    Protocol {
        /// The kubelet `host:port`.
        host: String,
        /// The subprotocol in use.
        protocol: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The exec connection closed before the exit status arrived.
    #[error(
        "the connection to the kubelet at {host} closed before the command's exit status arrived"
    )]
    NoStatus {
        /// The kubelet `host:port`.
        host: String,
    },
    /// The exit status could not be decoded.
    #[error("the kubelet at {host} sent an undecodable exit status: {source}")]
    BadStatus {
        /// The kubelet `host:port`.
        host: String,
        /// The decoding error.
        #[source]
        source: StatusError,
    },
    /// Nothing arrived from the kubelet for [`IDLE_TIMEOUT`].
    #[error("nothing (not even a pong) from the kubelet at {host} for {idle:?}: the tunnel or the kubelet is gone")]
    Idle {
        /// The kubelet `host:port`.
        host: String,
        /// How long it was silent.
        idle: Duration,
    },
    /// The kubelet reported an error on a port-forward error channel.
    #[error("port-forward of port {port} through the kubelet at {host} failed: {message}")]
    PortForward {
        /// The kubelet `host:port`.
        host: String,
        /// The remote port.
        port: u16,
        /// The kubelet's error text.
        message: String,
    },
    /// The session was dropped before it finished.
    #[error("the session with the kubelet at {host} was closed before it finished")]
    Cancelled {
        /// The kubelet `host:port`.
        host: String,
    },
}

impl KubeletError {
    /// Maps a hyper error, recognising a rejected client certificate.
    fn http(host: &str, source: hyper::Error) -> Self {
        if let Some(alert) = tls::client_cert_alert(&source) {
            return KubeletError::ClientCertificateRejected {
                host: host.to_string(),
                alert,
            };
        }
        KubeletError::Http {
            host: host.to_string(),
            source,
        }
    }

    /// Maps a tungstenite error: non-101 answers become [`KubeletError::Status`], a rejected
    /// client certificate is recognised.
    pub(crate) fn websocket(host: &str, path: &str, source: WsError) -> Self {
        match source {
            WsError::Http(resp) => {
                let body = resp.body().as_deref().unwrap_or_default();
                KubeletError::Status {
                    host: host.to_string(),
                    path: path.to_string(),
                    status: resp.status().as_u16(),
                    message: body_message(body),
                }
            }
            WsError::Io(ref io) => match tls::client_cert_alert(io) {
                Some(alert) => KubeletError::ClientCertificateRejected {
                    host: host.to_string(),
                    alert,
                },
                None => KubeletError::WebSocket {
                    host: host.to_string(),
                    source,
                },
            },
            source => KubeletError::WebSocket {
                host: host.to_string(),
                source,
            },
        }
    }
}

/// An error body as a one-line message.
fn body_message(body: &[u8]) -> String {
    let body = &body[..body.len().min(MAX_ERROR_BODY)];
    let text = String::from_utf8_lossy(body).trim().to_string();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}

/// Aborts the connection task when the handle is dropped, so abandoning a response closes
/// the underlying stream (and with it the tunnel).
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A container log body: chunks as the kubelet flushes them. Dropping it closes the
/// connection, which ends a `follow` on the kubelet side.
pub struct LogStream {
    host: String,
    body: Incoming,
    _sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    _connection: AbortOnDrop,
}

impl std::fmt::Debug for LogStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStream")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Stream for LogStream {
    type Item = Result<Bytes, KubeletError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(KubeletError::http(&self.host, e))))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Poll::Ready(Some(Ok(data)));
                        }
                    }
                    // Trailers and empty chunks carry no log bytes.
                }
            }
        }
    }
}

/// `GET /containerLogs/{namespace}/{pod}/{container}` over `stream` (already TLS-wrapped,
/// e.g. by [`KubeletTls::connect`]). `host` is the `Host` header, the kubelet's `host:port`.
/// A non-2xx answer is [`KubeletError::Status`] with the kubelet's message.
pub async fn logs<S>(
    stream: S,
    host: &str,
    namespace: &str,
    pod: &str,
    container: &str,
    opts: LogOptions,
) -> Result<LogStream, KubeletError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let path = container_logs_path(namespace, pod, container, &opts)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| KubeletError::http(host, e))?;
    let connection = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!("kubelet connection ended: {e}");
        }
    }));
    let host_value = HeaderValue::from_str(host).map_err(|_| InvalidName {
        what: "kubelet host",
        value: host.to_string(),
        reason: "not a valid Host header value",
    })?;
    let req = Request::get(path.as_str())
        .header(header::HOST, host_value)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::ACCEPT, "*/*")
        .body(Empty::<Bytes>::new())
        .map_err(|_| InvalidName {
            what: "log request",
            value: path.clone(),
            reason: "cannot form an HTTP request",
        })?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| KubeletError::http(host, e))?;
    let status = resp.status();
    let body = resp.into_body();
    if !status.is_success() {
        let limited = http_body_util::Limited::new(body, MAX_ERROR_BODY);
        let bytes = match limited.collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        return Err(KubeletError::Status {
            host: host.to_string(),
            path,
            status: status.as_u16(),
            message: body_message(&bytes),
        });
    }
    Ok(LogStream {
        host: host.to_string(),
        body,
        _sender: sender,
        _connection: connection,
    })
}

/// The WebSocket configuration of every client session.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
}

/// WebSocket handshake for `path` on `stream`, offering `protocols` (one CSV header, in
/// preference order, as kube-rs does). Returns the socket and the chosen subprotocol.
async fn ws_connect<S>(
    stream: S,
    host: &str,
    path: &str,
    protocols: &[&str],
) -> Result<(WebSocketStream<S>, Option<String>), KubeletError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let url = format!("ws://{host}{path}");
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| KubeletError::websocket(host, path, e))?;
    let headers = req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&protocols.join(", ")) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    let (ws, resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
        .await
        .map_err(|e| KubeletError::websocket(host, path, e))?;
    let chosen = resp
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string());
    Ok((ws, chosen))
}

/// Milliseconds since `origin`, for the lock-free "last frame received" clock.
fn millis_since(origin: tokio::time::Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}
