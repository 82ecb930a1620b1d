//! Opening the byte stream to the proxy's frontend: a Unix socket, or TCP + mutual TLS.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use konnectivity_tls::rustls;
use konnectivity_tls::tokio_rustls::client::TlsStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::{ClientError, ProxyProtocol, ProxyTransport};

/// ALPN for gRPC over TLS; grpc-go servers close connections that did not negotiate it.
const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP CONNECT over TLS; the upstream server selects it when offered.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The ALPN protocol offered for `protocol`.
pub(crate) fn alpn_for(protocol: ProxyProtocol) -> &'static [u8] {
    match protocol {
        ProxyProtocol::Grpc => ALPN_H2,
        ProxyProtocol::HttpConnect => ALPN_HTTP11,
    }
}

/// A connected stream to the proxy.
pub(crate) enum ProxyIo {
    /// Plain Unix domain socket.
    Unix(UnixStream),
    /// TCP wrapped in TLS (boxed: the TLS state is large and this enum is moved around).
    Tls(Box<TlsStream<TcpStream>>),
}

/// Human-readable name of the proxy endpoint for error messages.
pub(crate) fn target(transport: &ProxyTransport) -> String {
    match transport {
        ProxyTransport::Uds(path) => path.display().to_string(),
        ProxyTransport::Tcp { addr, .. } => addr.clone(),
    }
}

/// The URI tonic is given; only its authority reaches the wire (`:authority`). grpc-go uses
/// `localhost` for Unix sockets. The scheme stays `http` even over TLS because tonic is built
/// without TLS support and the TLS layer is ours (grpc-go servers ignore `:scheme`).
pub(crate) fn authority(transport: &ProxyTransport) -> String {
    match transport {
        ProxyTransport::Uds(_) => "http://localhost".to_string(),
        ProxyTransport::Tcp { addr, .. } => format!("http://{addr}"),
    }
}

/// Checks that a TCP proxy address is `host:port` and usable as an HTTP/2 authority.
pub(crate) fn check_proxy_addr(addr: &str) -> Result<(), ClientError> {
    let invalid = |reason: &str| ClientError::InvalidProxyAddress {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected host:port"))?;
    if host.is_empty() {
        return Err(invalid("the host is empty; expected host:port"));
    }
    port.parse::<u16>()
        .map_err(|_| invalid("the port is not a number in 0-65535"))?;
    tonic::transport::Uri::try_from(format!("http://{addr}"))
        .map_err(|e| invalid(&format!("not a valid URI authority: {e}")))?;
    Ok(())
}

/// Connects to the proxy and, for TCP, completes the TLS handshake (bounded by
/// [`konnectivity_tls::HANDSHAKE_TIMEOUT`]). `tls` is the config built by `Dialer::new`.
pub(crate) async fn open(
    transport: &ProxyTransport,
    tls: Option<&Arc<rustls::ClientConfig>>,
    protocol: ProxyProtocol,
) -> Result<ProxyIo, ClientError> {
    match transport {
        ProxyTransport::Uds(path) => {
            UnixStream::connect(path)
                .await
                .map(ProxyIo::Unix)
                .map_err(|source| ClientError::Unreachable {
                    target: path.display().to_string(),
                    source,
                })
        }
        ProxyTransport::Tcp {
            addr, server_name, ..
        } => {
            // `Dialer::new` builds the config for every TCP transport; reaching here without
            // one would be a bug in this crate, reported as a configuration error.
            let config = tls
                .cloned()
                .ok_or_else(|| ClientError::InvalidProxyAddress {
                    addr: addr.clone(),
                    reason: "no TLS configuration for a TCP transport".to_string(),
                })?;
            let tcp = TcpStream::connect(addr.as_str()).await.map_err(|source| {
                ClientError::Unreachable {
                    target: addr.clone(),
                    source,
                }
            })?;
            // Tunnel traffic is interactive (exec, port-forward); do not batch small writes.
            let _ = tcp.set_nodelay(true);
            let required = match protocol {
                ProxyProtocol::Grpc => Some(ALPN_H2),
                // Go's net/http does not require ALPN; the upstream server selects
                // http/1.1 when offered but a server that selects nothing is fine too.
                ProxyProtocol::HttpConnect => None,
            };
            let stream = konnectivity_tls::connect(config, server_name, tcp, required)
                .await
                .map_err(|source| ClientError::Tls {
                    target: addr.clone(),
                    source: Box::new(source),
                })?;
            Ok(ProxyIo::Tls(Box::new(stream)))
        }
    }
}

impl AsyncRead for ProxyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProxyIo::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ProxyIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ProxyIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ProxyIo::Unix(s) => Pin::new(s).poll_write(cx, buf),
            ProxyIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ProxyIo::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ProxyIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ProxyIo::Unix(s) => s.is_write_vectored(),
            ProxyIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProxyIo::Unix(s) => Pin::new(s).poll_flush(cx),
            ProxyIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProxyIo::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ProxyIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn proxy_addr_needs_host_and_numeric_port() {
        assert!(check_proxy_addr("127.0.0.1:8131").is_ok());
        assert!(check_proxy_addr("[::1]:8131").is_ok());
        assert!(check_proxy_addr("proxy.example:443").is_ok());
        assert!(check_proxy_addr("proxy.example").is_err());
        assert!(check_proxy_addr(":443").is_err());
        assert!(check_proxy_addr("proxy:http").is_err());
        assert!(check_proxy_addr("pro xy:443").is_err());
    }

    #[tokio::test]
    async fn missing_socket_is_unreachable_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let transport = ProxyTransport::Uds(path.clone());
        let err = match open(&transport, None, ProxyProtocol::Grpc).await {
            Ok(_) => panic!("connected to a socket that does not exist"),
            Err(e) => e,
        };
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
