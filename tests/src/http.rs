//! Minimal HTTP/1.1 client pieces on hyper: plain GETs for health/metrics endpoints and
//! request/response over any byte stream (used over TLS-in-a-tunnel by [`crate::https`]).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::error::{HarnessError, Result};
use crate::tls::Io;
use crate::wait::with_timeout;

/// Deadline of one plain HTTP exchange with a health/admin endpoint. These answer in
/// microseconds; the margin is for a loaded 2-core machine.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A fully read HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8, for assertions and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 connection (keep-alive) over any byte stream.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
    host: String,
}

impl HttpConn {
    /// Runs the HTTP/1.1 client handshake over `io`; `host` is sent as the `Host` header.
    pub async fn over<IO: Io>(io: IO, host: &str) -> Result<HttpConn> {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| HarnessError::Http {
                what: format!("handshake with {host}"),
                source,
            })?;
        let driver = tokio::spawn(async move {
            // The connection's end (EOF, reset) surfaces as an error of the pending request.
            let _ = conn.await;
        });
        Ok(HttpConn {
            sender,
            driver,
            host: host.to_string(),
        })
    }

    /// Sends `method path` with `body` and returns the response with its body still unread.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let what = || format!("{method} {path} on {}", self.host);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.host)
            .body(Full::new(body))
            .map_err(|e| HarnessError::Protocol(format!("building {}: {e}", what())))?;
        self.sender
            .ready()
            .await
            .map_err(|source| HarnessError::Http {
                what: what(),
                source,
            })?;
        self.sender
            .send_request(req)
            .await
            .map_err(|source| HarnessError::Http {
                what: what(),
                source,
            })
    }

    /// Sends a request and reads the whole response.
    pub async fn request(&mut self, method: &str, path: &str, body: Bytes) -> Result<HttpResponse> {
        let resp = self.send(method, path, body).await?;
        read_response(resp, &format!("{method} {path}")).await
    }

    /// `GET path`, whole response.
    pub async fn get(&mut self, path: &str) -> Result<HttpResponse> {
        self.request("GET", path, Bytes::new()).await
    }

    /// `POST path` with `body`, whole response.
    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<HttpResponse> {
        self.request("POST", path, body).await
    }
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Reads a response's body completely.
pub async fn read_response(
    resp: http::Response<hyper::body::Incoming>,
    what: &str,
) -> Result<HttpResponse> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|source| HarnessError::Http {
            what: format!("reading the body of {what}"),
            source,
        })?
        .to_bytes();
    Ok(HttpResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `GET http://addr/path` on a fresh connection, bounded by [`HTTP_TIMEOUT`]. Redirects are
/// not followed.
pub async fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    with_timeout(&format!("GET http://{addr}{path}"), HTTP_TIMEOUT, async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| HarnessError::io(format!("connecting to {addr}"), e))?;
        HttpConn::over(tcp, &addr.to_string())
            .await?
            .get(path)
            .await
    })
    .await
}
