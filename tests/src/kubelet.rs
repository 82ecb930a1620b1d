//! A kubelet stand-in: HTTPS on loopback with the kubelet serving certificate, requiring a
//! client certificate from the kubelet CA (as a real kubelet with `--client-ca-file` does).
//!
//! Endpoints:
//! * `GET /healthz` → `ok`
//! * `POST /echo` → the request body (up to [`MAX_ECHO_BODY`])
//! * `GET /bytes?n=N` → N bytes of [`pattern`], streamed (up to [`MAX_BYTES`])
//! * `GET /sleep?ms=N` → `ok` after N milliseconds (up to [`MAX_SLEEP_MS`])

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::error::{HarnessError, Result};
use crate::tls::{self, ALPN_HTTP1};

/// Largest body `/echo` accepts: 64 MiB, far above what the tests send, small enough that a
/// runaway client cannot exhaust memory.
pub const MAX_ECHO_BODY: usize = 64 << 20;
/// Largest `/bytes` response: 1 GiB; it is streamed, so only time is spent, not memory.
pub const MAX_BYTES: u64 = 1 << 30;
/// Longest `/sleep`: one minute, above any test's needs.
pub const MAX_SLEEP_MS: u64 = 60_000;
/// Chunk size of streamed `/bytes` bodies (one hyper frame each).
pub const BYTES_CHUNK: usize = 64 << 10;
/// Deadline of one TLS handshake; a client that stalls longer is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Byte `i` of the deterministic `/bytes` stream: a hash of `i / 8`, so any dropped,
/// duplicated or reordered chunk of any size changes the content.
pub fn pattern_byte(i: u64) -> u8 {
    let mut z = (i / 8).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z.to_le_bytes()[(i % 8) as usize]
}

/// Bytes `offset .. offset + len` of the deterministic stream.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64).map(pattern_byte).collect()
}

/// The first index at which `data` differs from the deterministic stream, if any.
pub fn pattern_mismatch(data: &[u8]) -> Option<usize> {
    data.iter()
        .enumerate()
        .find(|(i, b)| **b != pattern_byte(*i as u64))
        .map(|(i, _)| i)
}

/// A running kubelet stand-in; stops when dropped.
pub struct Kubelet {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: CancellationToken,
}

type Body = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn bytes_body(n: u64) -> Body {
    let stream = futures::stream::unfold(0u64, move |offset| async move {
        if offset >= n {
            return None;
        }
        let len = (n - offset).min(BYTES_CHUNK as u64) as usize;
        let chunk = Bytes::from(pattern(offset, len));
        Some((Ok::<_, Infallible>(Frame::data(chunk)), offset + len as u64))
    });
    StreamBody::new(stream).boxed()
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match (req.method().as_str(), path.as_str()) {
        ("GET", "/healthz") => text(StatusCode::OK, "ok"),
        ("POST", "/echo") => match Limited::new(req.into_body(), MAX_ECHO_BODY).collect().await {
            Ok(body) => text(StatusCode::OK, body.to_bytes()),
            Err(e) => text(StatusCode::PAYLOAD_TOO_LARGE, format!("echo body: {e}")),
        },
        ("GET", "/bytes") => match query_u64(&req, "n") {
            Some(n) if n <= MAX_BYTES => {
                let mut resp = Response::new(bytes_body(n));
                resp.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
                resp
            }
            _ => text(
                StatusCode::BAD_REQUEST,
                format!("n must be an integer <= {MAX_BYTES}"),
            ),
        },
        ("GET", "/sleep") => match query_u64(&req, "ms") {
            Some(ms) if ms <= MAX_SLEEP_MS => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, "ok")
            }
            _ => text(
                StatusCode::BAD_REQUEST,
                format!("ms must be an integer <= {MAX_SLEEP_MS}"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found"),
    };
    Ok(resp)
}

impl Kubelet {
    /// Starts serving on 127.0.0.1 (ephemeral port) with `cert`/`key`, requiring client
    /// certificates that chain to `client_ca`.
    pub async fn start(cert: &Path, key: &Path, client_ca: &Path) -> Result<Kubelet> {
        let config = tls::server_config_mtls(cert, key, client_ca, &[ALPN_HTTP1])?;
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(|e| HarnessError::io("binding the kubelet stand-in", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading the kubelet stand-in address", e))?;
        let requests = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let acceptor = TlsAcceptor::from(config);
        let (reqs, token) = (Arc::clone(&requests), stop.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    conn = listener.accept() => match conn {
                        Ok(c) => c,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, reqs, token) = (acceptor.clone(), Arc::clone(&reqs), token.clone());
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            _ => return,
                        };
                    let service = service_fn(move |req| {
                        reqs.fetch_add(1, Ordering::Relaxed);
                        handle(req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        Ok(Kubelet {
            addr,
            requests,
            stop,
        })
    }

    /// Starts with the test PKI's default kubelet certificate and CA.
    pub async fn start_default(pki: &konnectivity_certs::PkiPaths) -> Result<Kubelet> {
        let server = pki
            .kubelet_server(konnectivity_certs::DEFAULT_KUBELET_NAME)
            .unwrap_or(&pki.kubelet_servers[0].value);
        Kubelet::start(&server.cert, &server.key, &pki.kubelet_ca.cert).await
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, the form a dial request carries.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Requests served so far.
    pub fn requests_served(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_detects_a_shifted_chunk() {
        let whole = pattern(0, 4096 * 3);
        assert_eq!(pattern_mismatch(&whole), None);
        let mut shifted = whole[..4096].to_vec();
        shifted.extend_from_slice(&whole[8192..]);
        // The first differing byte is in the first 8-byte block after the splice.
        let at = pattern_mismatch(&shifted);
        assert!(
            matches!(at, Some(i) if (4096..4104).contains(&i)),
            "mismatch at {at:?}"
        );
    }

    #[test]
    fn pattern_is_not_periodic_over_small_windows() {
        let data = pattern(0, 1 << 16);
        let distinct: std::collections::HashSet<&[u8]> = data.chunks(8).collect();
        assert!(
            distinct.len() > 8000,
            "only {} distinct 8-byte blocks",
            distinct.len()
        );
    }
}
