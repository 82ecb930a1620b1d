//! Opening one connection to a proxy-server: TCP, TLS (ALPN `h2` required), HTTP/2 and the
//! `AgentService.Connect` stream with the agent's metadata, then the server's `serverid` /
//! `servercount` response headers.
//!
//! Every call of [`ServerConnector::connect`] makes a brand-new TCP+TLS connection: behind an L4
//! load balancer each attempt may land on a different server, which is how an agent finds all
//! servers of an HA control plane. tonic is handed the already-established TLS stream through a
//! one-shot connector, so its channel can never silently reconnect (or pool) underneath us.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use konnectivity_proto::Packet;
use konnectivity_tls::ReadAhead;
use konnectivity_tunnel::credit;
use konnectivity_tunnel::grpc::{PacketBody, PacketStream};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::AgentConfig;

/// Bound on establishing the TCP connection to the proxy-server. Cost: a server (or load
/// balancer) slower than this to accept is treated as down; the attempt is retried after the
/// sync backoff. Matches grpc-go's default minimum connect timeout.
pub const SERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Bound on waiting for the `serverid`/`servercount` response headers after opening the stream.
/// Upstream waits forever; a server that accepts TLS and then never answers would pin the sync
/// loop. Cost: a server that needs longer than this to authenticate an agent (TokenReview) is
/// never joined; 30 s is far above a healthy TokenReview.
pub const HEADERS_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an HTTP/2 keepalive ping may stay unanswered before the connection is dropped
/// (grpc-go's default keepalive timeout). Cost: a server stalled longer than this loses the
/// agent connection and every tunnel on it.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Smallest keepalive interval used; grpc-go clamps client keepalive time to 10 s, and servers
/// answer pings more frequent than their enforcement policy (30 s upstream) with GOAWAY. Cost:
/// dead connections are detected no faster than this.
pub const MIN_KEEPALIVE_TIME: Duration = Duration::from_secs(10);

/// The ALPN protocol gRPC requires.
const ALPN_H2: &[u8] = b"h2";

/// Header names (grpc-go lower-cases metadata keys).
pub const AGENT_ID_HEADER: &str = "agentid";
/// See [`AGENT_ID_HEADER`].
pub const AGENT_IDENTIFIERS_HEADER: &str = "agentidentifiers";
/// See [`AGENT_ID_HEADER`].
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// Response header naming the server (deduplication key).
pub const SERVER_ID_HEADER: &str = "serverid";
/// Response header with the number of servers in the control plane.
pub const SERVER_COUNT_HEADER: &str = "servercount";

/// Configuration problems found before the first connection attempt.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA, client certificate or key could not be loaded, or TLS settings are unusable.
    #[error("cannot build the TLS client configuration for the proxy-server connection: {0}")]
    Tls(#[from] konnectivity_tls::TlsError),
    /// `--proxy-server-host`/`--proxy-server-port` do not form a valid URI authority.
    #[error("invalid proxy-server address {address:?}: {reason}")]
    InvalidAddress {
        /// `host:port` as given.
        address: String,
        /// The URI parser's complaint.
        reason: String,
    },
    /// The TLS configuration cannot be used for QUIC (`--transport=quic` needs TLS 1.3 with
    /// AES-128-GCM, which the default settings have).
    #[error("the TLS configuration cannot be used for QUIC: {0}")]
    QuicTls(String),
    /// A metadata value cannot be sent in an HTTP/2 header (non-printable ASCII).
    #[error("--{flag} value cannot be sent as gRPC metadata {header:?}: only printable ASCII is allowed")]
    InvalidMetadata {
        /// The flag the value came from.
        flag: &'static str,
        /// The header it is sent as.
        header: &'static str,
    },
}

/// Why one connection attempt failed (the attempt is retried after the sync backoff).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The service-account token file could not be read.
    #[error("cannot read the service-account token file {path}: {source}")]
    TokenRead {
        /// `--service-account-token-path`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The token contains characters an HTTP/2 header cannot carry (e.g. a trailing newline).
    #[error("the service-account token in {path} cannot be sent as an authorization header: it must be printable ASCII without a trailing newline")]
    TokenInvalid {
        /// `--service-account-token-path`.
        path: PathBuf,
    },
    /// TCP connect to the proxy-server failed.
    #[error("cannot connect to proxy-server {address}: {source}")]
    Tcp {
        /// `host:port`.
        address: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// TCP connect to the proxy-server did not finish in time.
    #[error("connecting to proxy-server {address} timed out after {timeout:?}")]
    TcpTimeout {
        /// `host:port`.
        address: String,
        /// [`SERVER_CONNECT_TIMEOUT`].
        timeout: Duration,
    },
    /// TLS handshake failed (certificate, ALPN, timeout).
    #[error("TLS with proxy-server {address} failed: {source}")]
    Tls {
        /// `host:port`.
        address: String,
        /// The TLS error.
        #[source]
        source: konnectivity_tls::TlsError,
    },
    /// The HTTP/2 connection could not be set up on the TLS stream.
    #[error("HTTP/2 setup with proxy-server {address} failed: {source}")]
    Http2 {
        /// `host:port`.
        address: String,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server refused or failed the `AgentService.Connect` call.
    #[error("proxy-server {address} refused the agent stream: {status}")]
    Rejected {
        /// `host:port`.
        address: String,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// The server did not send its response headers in time.
    #[error("proxy-server {address} sent no response headers within {timeout:?}")]
    HeadersTimeout {
        /// `host:port`.
        address: String,
        /// [`HEADERS_TIMEOUT`].
        timeout: Duration,
    },
    /// The response headers are not what the protocol requires.
    #[error(
        "proxy-server {address} sent invalid response headers: {problem}; dropping the connection"
    )]
    BadHeaders {
        /// `host:port`.
        address: String,
        /// What is wrong.
        problem: HeaderProblem,
    },
    /// The proxy-server's name did not resolve (QUIC transport).
    #[error("cannot resolve proxy-server {address}: {reason}")]
    Resolve {
        /// `host:port`.
        address: String,
        /// The resolver's complaint.
        reason: String,
    },
    /// The QUIC connection could not be set up (UDP socket, handshake, ALPN, control
    /// stream); is the server running with `--enable-quic` (its default)?
    #[error("QUIC connection to proxy-server {address} failed: {reason}; does the server accept QUIC (--enable-quic)?")]
    Quic {
        /// `host:port`.
        address: String,
        /// What failed.
        reason: String,
    },
    /// The server refused the agent on the QUIC control stream.
    #[error("proxy-server {address} refused the agent: {reason}")]
    QuicRefused {
        /// `host:port`.
        address: String,
        /// The server's reason.
        reason: String,
    },
}

/// What is wrong with a server's response headers.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    /// A required header is absent or repeated.
    #[error("expected exactly one {name:?} header, got {count}")]
    Count {
        /// Header name.
        name: &'static str,
        /// Number of values received.
        count: usize,
    },
    /// A header value is not valid text.
    #[error("{name:?} header is not printable ASCII")]
    NotText {
        /// Header name.
        name: &'static str,
    },
    /// `servercount` is not a non-negative decimal integer.
    #[error("servercount {value:?} is not a non-negative integer")]
    BadCount {
        /// The value received.
        value: String,
    },
}

/// What a server told us about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// `serverid`.
    pub server_id: String,
    /// `servercount`.
    pub server_count: u32,
}

/// Reads `serverid` and `servercount`, each required exactly once.
pub fn parse_server_headers(headers: &MetadataMap) -> Result<ServerHello, HeaderProblem> {
    fn one<'a>(headers: &'a MetadataMap, name: &'static str) -> Result<&'a str, HeaderProblem> {
        let values: Vec<_> = headers.get_all(name).iter().collect();
        match values.as_slice() {
            [v] => v.to_str().map_err(|_| HeaderProblem::NotText { name }),
            _ => Err(HeaderProblem::Count {
                name,
                count: values.len(),
            }),
        }
    }
    let server_id = one(headers, SERVER_ID_HEADER)?.to_string();
    let count = one(headers, SERVER_COUNT_HEADER)?;
    let server_count = count.parse::<u32>().map_err(|_| HeaderProblem::BadCount {
        value: count.to_string(),
    })?;
    Ok(ServerHello {
        server_id,
        server_count,
    })
}

/// A live `AgentService.Connect` stream on its own connection.
pub struct ServerStream {
    /// The server's identity and reported server count.
    pub hello: ServerHello,
    /// Packets from the server.
    pub inbound: PacketStream<tonic::body::Body>,
    /// Keeps the HTTP/2 connection's client handle alive for as long as the stream is used;
    /// dropping it (with the stream) closes the connection.
    pub channel: Channel,
    /// Per-connection flow control was negotiated (we asked and the server echoed).
    pub flow_control: bool,
}

/// Opens agent connections to the configured proxy-server.
#[derive(Clone)]
pub struct ServerConnector {
    tls: Arc<rustls::ClientConfig>,
    /// `--alpn-proto` values are offered besides `h2`.
    extra_alpn: bool,
    /// The offered protocols, for errors.
    offered_alpn: String,
    host: String,
    address: String,
    endpoint: Endpoint,
    agent_id: AsciiMetadataValue,
    identifiers: AsciiMetadataValue,
    token_path: Option<PathBuf>,
    flow_control: bool,
}

impl std::fmt::Debug for ServerConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnector")
            .field("address", &self.address)
            .field("token_path", &self.token_path)
            .finish_non_exhaustive()
    }
}

impl ServerConnector {
    /// Loads TLS material and validates what will be sent, so configuration errors surface at
    /// start-up rather than as an endless retry loop.
    pub fn new(config: &AgentConfig) -> Result<Self, SetupError> {
        let server = &config.server;
        let mut alpn: Vec<Vec<u8>> = server
            .extra_alpn
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        alpn.push(ALPN_H2.to_vec());
        let client_cert = server
            .client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let tls =
            konnectivity_tls::client_config(&server.ca_cert, client_cert, &alpn, &config.tls)?;
        // Validate the server name now; it is re-parsed per handshake.
        konnectivity_tls::server_name(&server.host)?;

        let bare = server
            .host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&server.host);
        let authority = if bare.contains(':') {
            format!("[{bare}]:{}", server.port)
        } else {
            format!("{bare}:{}", server.port)
        };
        let uri: Uri =
            format!("https://{authority}")
                .parse()
                .map_err(|e: http::uri::InvalidUri| SetupError::InvalidAddress {
                    address: authority.clone(),
                    reason: e.to_string(),
                })?;
        let keepalive = server.keepalive_time.max(MIN_KEEPALIVE_TIME);
        let endpoint = Endpoint::from(uri)
            .http2_keep_alive_interval(keepalive)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .max_frame_size(konnectivity_tunnel::H2_MAX_FRAME_BYTES)
            .tcp_nodelay(true);

        let agent_id =
            AsciiMetadataValue::try_from(config.identity.agent_id.as_str()).map_err(|_| {
                SetupError::InvalidMetadata {
                    flag: "agent-id",
                    header: AGENT_ID_HEADER,
                }
            })?;
        let identifiers = AsciiMetadataValue::try_from(config.identity.identifiers.as_str())
            .map_err(|_| SetupError::InvalidMetadata {
                flag: "agent-identifiers",
                header: AGENT_IDENTIFIERS_HEADER,
            })?;
        let offered_alpn = format!(
            "one of {}",
            alpn.iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(ServerConnector {
            extra_alpn: !server.extra_alpn.is_empty(),
            offered_alpn,
            tls,
            host: bare.to_string(),
            address: authority,
            endpoint,
            agent_id,
            identifiers,
            token_path: server.token_path.clone(),
            flow_control: true,
        })
    }

    /// Whether to ask the server for per-connection flow control (default true; false makes
    /// this agent look like an upstream one, for tests).
    pub fn set_flow_control(&mut self, on: bool) {
        self.flow_control = on;
    }

    /// `host:port` of the proxy-server, for logs.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Opens a new connection and the Connect stream whose request body is `outbound`, then
    /// waits for the server's response headers.
    pub async fn connect<S>(&self, outbound: S) -> Result<ServerStream, ConnectError>
    where
        S: Stream<Item = Packet> + Send + 'static,
    {
        let address = self.address.clone();
        // Read the token first: it is the cheapest failure and must be fresh per connection.
        let authorization = match &self.token_path {
            Some(path) => Some(read_token(path).await?),
            None => None,
        };

        let tcp = match tokio::time::timeout(
            SERVER_CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.endpoint_port())),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => return Err(ConnectError::Tcp { address, source }),
            Err(_) => {
                return Err(ConnectError::TcpTimeout {
                    address,
                    timeout: SERVER_CONNECT_TIMEOUT,
                })
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on the proxy-server connection");
        }
        // Only h2 offered: require it. With `--alpn-proto` extras, accept whichever offered
        // protocol the peer selected (an ALPN-routing front door may pick the custom one and
        // still carry HTTP/2), exactly as grpc-go's credentials do; no ALPN at all is refused.
        let required = if self.extra_alpn { None } else { Some(ALPN_H2) };
        let io = konnectivity_tls::read_ahead(tcp, konnectivity_tls::READ_AHEAD_BYTES);
        let tls = konnectivity_tls::connect(self.tls.clone(), &self.host, io, required)
            .await
            .map_err(|source| ConnectError::Tls {
                address: address.clone(),
                source,
            })?;
        if tls.get_ref().1.alpn_protocol().is_none() {
            return Err(ConnectError::Tls {
                address,
                source: konnectivity_tls::TlsError::AlpnMismatch {
                    required: self.offered_alpn.clone(),
                    negotiated: "none".to_string(),
                },
            });
        }
        let channel = self
            .endpoint
            .connect_with_connector(OneShotConnector::new(tls))
            .await
            .map_err(|source| ConnectError::Http2 {
                address: address.clone(),
                source,
            })?;

        let mut md = MetadataMap::with_capacity(4);
        md.insert(AGENT_ID_HEADER, self.agent_id.clone());
        md.insert(AGENT_IDENTIFIERS_HEADER, self.identifiers.clone());
        if let Some(auth) = authorization {
            md.insert(AUTHORIZATION_HEADER, auth);
        }
        if self.flow_control {
            md.insert(
                credit::FLOW_CONTROL_HEADER,
                AsciiMetadataValue::from_static(credit::FLOW_CONTROL_VERSION),
            );
        }
        // The request tonic's generated client would send, with packets framed by
        // `konnectivity_tunnel::grpc` (no codec copy of DATA payloads). The channel adds the
        // scheme, authority and user-agent.
        let body = PacketBody::request(Box::pin(outbound));
        let mut request = http::Request::new(tonic::body::Body::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static(konnectivity_proto::CONNECT_PATH);
        let headers = request.headers_mut();
        *headers = md.into_headers();
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        let mut client = channel.clone();
        let call = async {
            tower::ServiceExt::ready(&mut client).await?;
            tower::Service::call(&mut client, request).await
        };
        let response = match tokio::time::timeout(HEADERS_TIMEOUT, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(source)) => return Err(ConnectError::Http2 { address, source }),
            Err(_) => {
                return Err(ConnectError::HeadersTimeout {
                    address,
                    timeout: HEADERS_TIMEOUT,
                })
            }
        };
        let (parts, body) = response.into_parts();
        if let Some(status) = refusal(parts.status, &parts.headers) {
            return Err(ConnectError::Rejected {
                address,
                status: Box::new(status),
            });
        }
        let metadata = MetadataMap::from_headers(parts.headers);
        let hello = parse_server_headers(&metadata)
            .map_err(|problem| ConnectError::BadHeaders { address, problem })?;
        let flow_control = self.flow_control
            && metadata
                .get(credit::FLOW_CONTROL_HEADER)
                .is_some_and(|v| v.as_bytes() == credit::FLOW_CONTROL_VERSION.as_bytes());
        Ok(ServerStream {
            hello,
            inbound: PacketStream::new(body),
            channel,
            flow_control,
        })
    }

    fn endpoint_port(&self) -> u16 {
        self.endpoint.uri().port_u16().unwrap_or(443)
    }
}

/// Why the server's response headers refuse the stream, if they do: a trailers-only response
/// carries a non-OK `grpc-status` in its headers; a non-200 HTTP status is mapped to a gRPC code
/// as gRPC's HTTP-to-gRPC status table prescribes.
fn refusal(http_status: http::StatusCode, headers: &http::HeaderMap) -> Option<tonic::Status> {
    if let Some(status) = tonic::Status::from_header_map(headers) {
        return (status.code() != tonic::Code::Ok).then_some(status);
    }
    if http_status == http::StatusCode::OK {
        return None;
    }
    let code = match http_status.as_u16() {
        400 => tonic::Code::Internal,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        429 | 502 | 503 | 504 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    };
    Some(tonic::Status::new(
        code,
        format!("proxy-server answered HTTP {http_status}"),
    ))
}

/// Reads the token file (exact contents, re-read per connection, as upstream) and builds the
/// `authorization` value.
async fn read_token(path: &Path) -> Result<AsciiMetadataValue, ConnectError> {
    let token =
        tokio::fs::read_to_string(path)
            .await
            .map_err(|source| ConnectError::TokenRead {
                path: path.to_path_buf(),
                source,
            })?;
    AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        ConnectError::TokenInvalid {
            path: path.to_path_buf(),
        }
    })
}

/// The `authorization` value as text, with the same checks as for gRPC (QUIC transport).
pub(crate) async fn read_token_text(path: &Path) -> Result<String, ConnectError> {
    let value = read_token(path).await?;
    value
        .to_str()
        .map(str::to_owned)
        .map_err(|_| ConnectError::TokenInvalid {
            path: path.to_path_buf(),
        })
}

/// The established proxy-server connection as tonic's HTTP/2 client drives it.
type ServerIo = TokioIo<TlsStream<ReadAhead<TcpStream>>>;

/// Hands tonic one pre-established stream, once. A second call (tonic trying to reconnect after
/// the connection died) fails, so a dead server connection ends its session instead of being
/// transparently replaced by a connection to some other server.
#[derive(Clone)]
struct OneShotConnector {
    io: Arc<Mutex<Option<ServerIo>>>,
}

impl OneShotConnector {
    fn new(stream: TlsStream<ReadAhead<TcpStream>>) -> Self {
        OneShotConnector {
            io: Arc::new(Mutex::new(Some(TokioIo::new(stream)))),
        }
    }
}

/// The one-shot connector was asked for a second connection.
#[derive(Debug, thiserror::Error)]
#[error("the proxy-server connection is gone; a new attempt opens a new connection")]
struct ConnectionUsed;

impl tower::Service<Uri> for OneShotConnector {
    type Response = ServerIo;
    type Error = ConnectionUsed;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, ConnectionUsed>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        // A poisoned lock only means another holder panicked mid-take; the Option is still valid.
        let taken = match self.io.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        Box::pin(async move { taken.ok_or(ConnectionUsed) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.append(*k, AsciiMetadataValue::try_from(*v).expect("ascii"));
        }
        m
    }

    #[test]
    fn server_headers_require_exactly_one_id_and_count() {
        assert_eq!(
            parse_server_headers(&headers(&[("serverid", "s1"), ("servercount", "3")])),
            Ok(ServerHello {
                server_id: "s1".into(),
                server_count: 3
            })
        );
        assert_eq!(
            parse_server_headers(&headers(&[("servercount", "3")])),
            Err(HeaderProblem::Count {
                name: "serverid",
                count: 0
            })
        );
        assert_eq!(
            parse_server_headers(&headers(&[
                ("serverid", "a"),
                ("serverid", "b"),
                ("servercount", "1")
            ])),
            Err(HeaderProblem::Count {
                name: "serverid",
                count: 2
            })
        );
        assert_eq!(
            parse_server_headers(&headers(&[("serverid", "a")])),
            Err(HeaderProblem::Count {
                name: "servercount",
                count: 0
            })
        );
    }

    #[test]
    fn server_count_must_be_a_non_negative_integer() {
        for bad in ["-1", "x", "", "1.5"] {
            assert_eq!(
                parse_server_headers(&headers(&[("serverid", "a"), ("servercount", bad)])),
                Err(HeaderProblem::BadCount {
                    value: bad.to_string()
                }),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_server_headers(&headers(&[("serverid", "a"), ("servercount", "0")]))
                .map(|h| h.server_count),
            Ok(0)
        );
    }

    #[tokio::test]
    async fn token_is_sent_verbatim_and_a_trailing_newline_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good");
        std::fs::write(&good, "abc.def").expect("write");
        assert_eq!(
            read_token(&good)
                .await
                .expect("token")
                .to_str()
                .expect("ascii"),
            "Bearer abc.def"
        );
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "abc\n").expect("write");
        assert!(matches!(
            read_token(&bad).await,
            Err(ConnectError::TokenInvalid { .. })
        ));
        assert!(matches!(
            read_token(&dir.path().join("missing")).await,
            Err(ConnectError::TokenRead { .. })
        ));
    }
}
