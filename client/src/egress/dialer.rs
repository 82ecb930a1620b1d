//! Turning one validated selection into a dialer, and the stream a dial yields.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::schema::{Connection, TcpTransport};
use super::validation::{PROTOCOL_DIRECT, PROTOCOL_GRPC, PROTOCOL_HTTP_CONNECT};
use crate::{ClientError, Dialer, ProxyProtocol, ProxyTransport, Tunnel, DEFAULT_DIAL_TIMEOUT};

/// Upper bound on a `Direct` dial (plain TCP connect). Same 30 s as kube-apiserver's dialer
/// for kubelet connections. Cost: an unroutable node is reported only after this long; shorter
/// would fail connects over slow links.
pub const DIRECT_DIAL_TIMEOUT: Duration = DEFAULT_DIAL_TIMEOUT;

/// Environment variable naming the system CA bundle, honoured like Go's `crypto/x509`.
pub const SSL_CERT_FILE_ENV: &str = "SSL_CERT_FILE";

/// Where the system trust roots are looked for when `tlsConfig.caBundle` is empty and
/// `SSL_CERT_FILE` is unset: the same files, in the same order, as Go's `crypto/x509` on Linux
/// (Debian/Ubuntu, Fedora/RHEL 6, openSUSE, OpenELEC, CentOS/RHEL 7, Alpine).
pub const SYSTEM_CA_BUNDLES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why a (validated) selection cannot be turned into a dialer.
#[derive(Debug, thiserror::Error)]
pub enum DialerBuildError {
    /// `GRPC` without `uds` (kube-apiserver's own wording).
    #[error("UDS transport must be specified for GRPC")]
    GrpcNeedsUds,
    /// `HTTPConnect` without `tcp` or `uds` (kube-apiserver's own wording).
    #[error("Either a TCP or UDS transport must be specified")]
    NoTransport,
    /// An unknown `proxyProtocol` (validation reports it first).
    #[error("unrecognized service connection protocol {0:?}")]
    UnknownProtocol(String),
    /// `http://` passes kube-apiserver's validation but its dialer always uses TLS; this
    /// implementation refuses it outright instead of failing at every dial.
    #[error("tcp.url {url:?}: plain http:// to the proxy is not supported (kube-apiserver always dials the proxy with TLS); use https:// with a tlsConfig, or a uds transport")]
    PlainHttp {
        /// The URL.
        url: String,
    },
    /// The URL's authority is not `host:port`.
    #[error("tcp.url {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `caBundle` is empty and no system CA bundle could be found.
    #[error("tlsConfig.caBundle is empty, which means the system trust roots, but {detail}; set caBundle to the CA that signed the proxy-server's certificate")]
    NoSystemRoots {
        /// What was tried.
        detail: String,
    },
    /// Loading the TLS material or checking the address failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// How to dial for one selection: through the proxy, or directly.
#[derive(Debug, Clone)]
pub enum EgressDialer {
    /// `proxyProtocol: Direct`, or a selection that is not configured: plain TCP.
    Direct,
    /// `GRPC` (single-use tunnel over UDS) or `HTTPConnect` (UDS, or TCP with mutual TLS).
    Proxy(Dialer),
}

/// Why a dial through an [`EgressDialer`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The proxy path failed (proxy unreachable, agent refused, timeout, …).
    #[error(transparent)]
    Proxy(#[from] ClientError),
    /// A direct TCP connect failed.
    #[error("cannot connect directly to {address}: {source}")]
    Direct {
        /// `host:port` that was dialed.
        address: String,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// A direct TCP connect did not complete in time.
    #[error("direct connection to {address} did not complete within {timeout:?}")]
    DirectTimeout {
        /// `host:port` that was dialed.
        address: String,
        /// The bound that was exceeded ([`DIRECT_DIAL_TIMEOUT`]).
        timeout: Duration,
    },
}

impl EgressDialer {
    /// Builds the dialer for one selection's connection, as kube-apiserver's `createDialer`
    /// does: `GRPC` → UDS single-use tunnels; `HTTPConnect` → UDS if set, else TCP+mTLS to the
    /// URL's `host:port` with ServerName = `tlsServerName` or the URL's host, trusting
    /// `caBundle` or the system roots; `Direct` → plain TCP. Loads TLS files now.
    pub fn from_connection(connection: &Connection) -> Result<Self, DialerBuildError> {
        let transport = connection.transport.as_ref();
        match connection.proxy_protocol.as_str() {
            PROTOCOL_DIRECT => Ok(EgressDialer::Direct),
            PROTOCOL_GRPC => {
                let uds = transport
                    .and_then(|t| t.uds.as_ref())
                    .ok_or(DialerBuildError::GrpcNeedsUds)?;
                Ok(EgressDialer::Proxy(Dialer::new(
                    ProxyProtocol::Grpc,
                    ProxyTransport::Uds(PathBuf::from(&uds.uds_name)),
                )?))
            }
            PROTOCOL_HTTP_CONNECT => {
                let t = transport.ok_or(DialerBuildError::NoTransport)?;
                let proxy_transport = if let Some(uds) = &t.uds {
                    ProxyTransport::Uds(PathBuf::from(&uds.uds_name))
                } else if let Some(tcp) = &t.tcp {
                    tcp_transport(tcp, system_ca_bundle)?
                } else {
                    return Err(DialerBuildError::NoTransport);
                };
                Ok(EgressDialer::Proxy(Dialer::new(
                    ProxyProtocol::HttpConnect,
                    proxy_transport,
                )?))
            }
            other => Err(DialerBuildError::UnknownProtocol(other.to_string())),
        }
    }

    /// Replaces the dial timeout of a proxy dialer (see [`Dialer::with_dial_timeout`]);
    /// no effect on [`EgressDialer::Direct`].
    pub fn with_dial_timeout(self, timeout: Duration) -> Self {
        match self {
            EgressDialer::Direct => EgressDialer::Direct,
            EgressDialer::Proxy(d) => EgressDialer::Proxy(d.with_dial_timeout(timeout)),
        }
    }

    /// True for [`EgressDialer::Direct`].
    pub fn is_direct(&self) -> bool {
        matches!(self, EgressDialer::Direct)
    }

    /// Opens a byte stream to `address` (`host:port`, IPv6 in brackets), the exact string
    /// kube-apiserver would hand its dialer. Every call opens a new connection (to the proxy,
    /// or to the destination).
    pub async fn dial(&self, address: &str) -> Result<EgressStream, DialError> {
        match self {
            EgressDialer::Proxy(dialer) => Ok(EgressStream::Tunnel(dialer.dial(address).await?)),
            EgressDialer::Direct => {
                let connect = TcpStream::connect(address);
                match tokio::time::timeout(DIRECT_DIAL_TIMEOUT, connect).await {
                    Ok(Ok(stream)) => {
                        // Interactive traffic (exec, port-forward): do not batch small writes.
                        let _ = stream.set_nodelay(true);
                        Ok(EgressStream::Tcp(stream))
                    }
                    Ok(Err(source)) => Err(DialError::Direct {
                        address: address.to_string(),
                        source,
                    }),
                    Err(_) => Err(DialError::DirectTimeout {
                        address: address.to_string(),
                        timeout: DIRECT_DIAL_TIMEOUT,
                    }),
                }
            }
        }
    }
}

/// Builds the TCP transport for `HTTPConnect`: `host:port` from the URL, ServerName from
/// `tlsServerName` or the URL host, CA from `caBundle` or `system_roots()`.
fn tcp_transport(
    tcp: &TcpTransport,
    system_roots: impl FnOnce() -> Result<PathBuf, DialerBuildError>,
) -> Result<ProxyTransport, DialerBuildError> {
    if tcp.url.starts_with("http://") {
        return Err(DialerBuildError::PlainHttp {
            url: tcp.url.clone(),
        });
    }
    let (addr, host) = split_https_url(&tcp.url)?;
    let tls = tcp.tls_config.clone().unwrap_or_default();
    let server_name = if tls.tls_server_name.is_empty() {
        host
    } else {
        tls.tls_server_name.clone()
    };
    let ca = if tls.ca_bundle.is_empty() {
        system_roots()?
    } else {
        PathBuf::from(&tls.ca_bundle)
    };
    Ok(ProxyTransport::Tcp {
        addr,
        server_name,
        ca,
        client_cert: PathBuf::from(&tls.client_cert),
        client_key: PathBuf::from(&tls.client_key),
    })
}

/// Splits `https://host:port[/…]` into (`host:port` as written, host without brackets), like
/// Go's `url.URL.Host` / `Hostname()`. A port is required: Go would fail every dial without
/// one, so the error is raised once, here.
pub(crate) fn split_https_url(url: &str) -> Result<(String, String), DialerBuildError> {
    let bad = |reason| DialerBuildError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("expected an https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| bad("unterminated [ in the IPv6 host"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("the URL has no port; write https://host:port"))?;
        (host, port)
    } else {
        authority
            .rsplit_once(':')
            .ok_or_else(|| bad("the URL has no port; write https://host:port"))?
    };
    if host.is_empty() {
        return Err(bad("the URL has no host; write https://host:port"));
    }
    if port.parse::<u16>().is_err() {
        return Err(bad("the port is not a number in 0-65535"));
    }
    Ok((authority.to_string(), host.to_string()))
}

/// The system CA bundle: `$SSL_CERT_FILE`, else the first of [`SYSTEM_CA_BUNDLES`] that exists.
fn system_ca_bundle() -> Result<PathBuf, DialerBuildError> {
    find_ca_bundle(std::env::var_os(SSL_CERT_FILE_ENV), &SYSTEM_CA_BUNDLES)
}

/// [`system_ca_bundle`] with its inputs injected (for tests).
fn find_ca_bundle(
    env_value: Option<OsString>,
    candidates: &[&str],
) -> Result<PathBuf, DialerBuildError> {
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        if path.is_file() {
            return Ok(path);
        }
        return Err(DialerBuildError::NoSystemRoots {
            detail: format!("{SSL_CERT_FILE_ENV}={} is not a file", path.display()),
        });
    }
    candidates
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| DialerBuildError::NoSystemRoots {
            detail: format!(
                "{SSL_CERT_FILE_ENV} is unset and none of {} exists",
                candidates.join(", ")
            ),
        })
}

/// A byte stream opened by [`EgressDialer::dial`]: a proxy tunnel or a direct TCP connection.
/// TLS and HTTP clients run over it unchanged.
#[derive(Debug)]
pub enum EgressStream {
    /// Through the proxy; dropping it closes the tunnel on every hop (gRPC: `CLOSE_REQ`).
    Tunnel(Tunnel),
    /// A direct TCP connection.
    Tcp(TcpStream),
}

impl AsyncRead for EgressStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EgressStream::Tunnel(t) => Pin::new(t).poll_read(cx, buf),
            EgressStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for EgressStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EgressStream::Tunnel(t) => Pin::new(t).poll_write(cx, buf),
            EgressStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EgressStream::Tunnel(t) => Pin::new(t).poll_flush(cx),
            EgressStream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EgressStream::Tunnel(t) => Pin::new(t).poll_shutdown(cx),
            EgressStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::schema::{TlsConfig, Transport, UdsTransport};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn assert_stream<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>() {}

    #[test]
    fn egress_stream_is_a_send_static_unpin_byte_stream() {
        assert_stream::<EgressStream>();
        fn assert_clone_send_sync<T: Clone + Send + Sync>() {}
        assert_clone_send_sync::<EgressDialer>();
    }

    #[test]
    fn url_host_port_and_server_name_are_taken_like_go() {
        assert_eq!(
            split_https_url("https://127.0.0.1:8131").unwrap(),
            ("127.0.0.1:8131".into(), "127.0.0.1".into())
        );
        assert_eq!(
            split_https_url("https://user@proxy.example:443/path?q#f").unwrap(),
            ("proxy.example:443".into(), "proxy.example".into())
        );
        assert_eq!(
            split_https_url("https://[::1]:8131").unwrap(),
            ("[::1]:8131".into(), "::1".into())
        );
        for bad in [
            "https://proxy.example",
            "https://:8131",
            "https://[::1]",
            "https://h:99999",
        ] {
            let err = split_https_url(bad).unwrap_err();
            assert!(
                matches!(err, DialerBuildError::BadUrl { .. }),
                "{bad}: {err}"
            );
        }
    }

    fn tcp(url: &str, tls: TlsConfig) -> TcpTransport {
        TcpTransport {
            url: url.into(),
            tls_config: Some(tls),
        }
    }

    #[test]
    fn tcp_transport_uses_url_host_as_server_name_and_the_ca_bundle() {
        let t = tcp(
            "https://10.0.0.1:8131",
            TlsConfig {
                ca_bundle: "/ca.crt".into(),
                client_cert: "/c.crt".into(),
                client_key: "/c.key".into(),
                tls_server_name: String::new(),
            },
        );
        let got = tcp_transport(&t, || panic!("system roots must not be consulted")).unwrap();
        assert_eq!(
            got,
            ProxyTransport::Tcp {
                addr: "10.0.0.1:8131".into(),
                server_name: "10.0.0.1".into(),
                ca: "/ca.crt".into(),
                client_cert: "/c.crt".into(),
                client_key: "/c.key".into(),
            }
        );
    }

    #[test]
    fn tls_server_name_overrides_and_empty_ca_bundle_means_system_roots() {
        let t = tcp(
            "https://10.0.0.1:8131",
            TlsConfig {
                ca_bundle: String::new(),
                client_cert: "/c.crt".into(),
                client_key: "/c.key".into(),
                tls_server_name: "proxy.example".into(),
            },
        );
        let got = tcp_transport(&t, || Ok(PathBuf::from("/system/roots.pem"))).unwrap();
        let ProxyTransport::Tcp {
            server_name, ca, ..
        } = got
        else {
            panic!("expected tcp transport");
        };
        assert_eq!(server_name, "proxy.example");
        assert_eq!(ca, PathBuf::from("/system/roots.pem"));
    }

    #[test]
    fn plain_http_url_is_refused_with_advice() {
        let t = TcpTransport {
            url: "http://127.0.0.1:8131".into(),
            tls_config: None,
        };
        let err = tcp_transport(&t, || unreachable!()).unwrap_err();
        assert!(matches!(err, DialerBuildError::PlainHttp { .. }));
        assert!(err.to_string().contains("use https://"), "{err}");
    }

    #[test]
    fn system_ca_bundle_prefers_ssl_cert_file_then_the_first_existing_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.pem");
        let b = dir.path().join("b.pem");
        std::fs::write(&b, "x").unwrap();
        let missing = dir.path().join("missing.pem");
        let candidates = [missing.to_str().unwrap(), b.to_str().unwrap()];
        assert_eq!(find_ca_bundle(None, &candidates).unwrap(), b);
        std::fs::write(&a, "x").unwrap();
        assert_eq!(
            find_ca_bundle(Some(a.clone().into_os_string()), &candidates).unwrap(),
            a
        );
        let err = find_ca_bundle(Some(missing.clone().into_os_string()), &candidates).unwrap_err();
        assert!(err.to_string().contains("SSL_CERT_FILE="), "{err}");
        let err = find_ca_bundle(None, &[missing.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("set caBundle"), "{err}");
    }

    #[test]
    fn selection_rules_pick_the_protocol_and_transport() {
        let uds = Some(Transport {
            tcp: None,
            uds: Some(UdsTransport {
                uds_name: "/run/k.sock".into(),
            }),
        });
        let direct = Connection {
            proxy_protocol: "Direct".into(),
            transport: None,
        };
        assert!(EgressDialer::from_connection(&direct).unwrap().is_direct());
        for protocol in ["GRPC", "HTTPConnect"] {
            let c = Connection {
                proxy_protocol: protocol.into(),
                transport: uds.clone(),
            };
            let EgressDialer::Proxy(_) = EgressDialer::from_connection(&c).unwrap() else {
                panic!("{protocol} over uds must go through the proxy");
            };
        }
        let grpc_tcp = Connection {
            proxy_protocol: "GRPC".into(),
            transport: Some(Transport {
                tcp: Some(TcpTransport {
                    url: "https://a:1".into(),
                    tls_config: None,
                }),
                uds: None,
            }),
        };
        let err = EgressDialer::from_connection(&grpc_tcp).unwrap_err();
        assert_eq!(err.to_string(), "UDS transport must be specified for GRPC");
        let connect_none = Connection {
            proxy_protocol: "HTTPConnect".into(),
            transport: Some(Transport::default()),
        };
        let err = EgressDialer::from_connection(&connect_none).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Either a TCP or UDS transport must be specified"
        );
    }

    #[test]
    fn http_connect_tcp_with_missing_client_cert_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "not pem").unwrap();
        let c = Connection {
            proxy_protocol: "HTTPConnect".into(),
            transport: Some(Transport {
                tcp: Some(tcp(
                    "https://127.0.0.1:8131",
                    TlsConfig {
                        ca_bundle: ca.display().to_string(),
                        client_cert: "/nonexistent/c.crt".into(),
                        client_key: "/nonexistent/c.key".into(),
                        tls_server_name: String::new(),
                    },
                )),
                uds: None,
            }),
        };
        let err = EgressDialer::from_connection(&c).unwrap_err();
        assert!(matches!(err, DialerBuildError::Client(_)), "{err}");
        assert!(
            err.to_string().contains(&*ca.display().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn direct_dial_connects_plain_tcp_and_reports_refusal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut stream = EgressDialer::Direct.dial(&addr).await.unwrap();
        assert!(matches!(stream, EgressStream::Tcp(_)));
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.await.unwrap();

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let err = EgressDialer::Direct.dial(&closed_addr).await.unwrap_err();
        assert!(matches!(err, DialError::Direct { .. }), "{err}");
        assert!(err.to_string().contains(&closed_addr), "{err}");
    }
}
