//! HTTP/1 servers for the health port (`/healthz`, `/readyz`, `/ready`, `/metrics`) and the admin
//! ports (proxy-server: `/metrics`; proxy-agent: `/metrics` redirected to the health port),
//! reproducing upstream's status codes, bodies and headers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{Registry, TEXT_CONTENT_TYPE};

/// Most connections served at once per listener; further connections are closed right after
/// accept. Cost: a scraper or prober beyond this many concurrent connections is refused, but
/// a client that opens idle connections cannot exhaust memory or file descriptors.
pub const MAX_CONNECTIONS: usize = 128;

/// Time a client gets to send complete request headers, also the idle limit between
/// keep-alive requests. Cost: a client on a link slower than this cannot be served; probes and
/// scrapers send their few hundred header bytes at once. (Upstream uses Go's 60 s
/// `ReadHeaderTimeout`; a shorter bound frees slots held by stalled clients sooner.)
pub const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// After cancellation, how long in-flight requests may take to finish before their
/// connections are dropped. Cost: shutdown can take up to this long.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (e.g. out of file descriptors) before retrying. Cost: new
/// connections wait this long while the condition lasts, instead of a busy loop.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Largest request header block accepted. Cost: bigger headers get an error; Go's limit
/// upstream is 1 MiB, far above what probes send.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A named readiness check: `Ok(())` when ready, `Err(reason)` otherwise.
pub type ReadinessCheck = (String, Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

/// How a failed readiness probe is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadinessBody {
    /// proxy-server style: the failing checks' reasons, one per line (upstream writes the single
    /// reason, e.g. `no connection to any proxy agent`); `?verbose` is ignored.
    Message,
    /// proxy-agent style: one `[+]name ok` / `[-]name failed: reason` line per check; on success
    /// with `?verbose` the lines followed by `check passed`.
    CheckList,
}

/// `/readyz` and `/ready` behaviour.
#[derive(Clone)]
pub struct Readiness {
    /// Checks run, in order, on every probe.
    pub checks: Vec<ReadinessCheck>,
    /// Status of a failed probe (upstream: server 500, agent 503).
    pub failure_status: StatusCode,
    /// Body format.
    pub body: ReadinessBody,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field(
                "checks",
                &self
                    .checks
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("failure_status", &self.failure_status)
            .field("body", &self.body)
            .finish()
    }
}

impl Readiness {
    /// Upstream proxy-server behaviour: 500 with the reason as body.
    pub fn proxy_server(checks: Vec<ReadinessCheck>) -> Self {
        Readiness {
            checks,
            failure_status: StatusCode::INTERNAL_SERVER_ERROR,
            body: ReadinessBody::Message,
        }
    }

    /// Upstream proxy-agent behaviour: 503 with the per-check list as body.
    pub fn proxy_agent(checks: Vec<ReadinessCheck>) -> Self {
        Readiness {
            checks,
            failure_status: StatusCode::SERVICE_UNAVAILABLE,
            body: ReadinessBody::CheckList,
        }
    }
}

type Body = Full<Bytes>;
type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Body> + Send + Sync>;

/// Limits of one server; the public functions use the constants above.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    read_header_timeout: Duration,
    shutdown_grace: Duration,
}

const DEFAULT_LIMITS: Limits = Limits {
    max_connections: MAX_CONNECTIONS,
    read_header_timeout: READ_HEADER_TIMEOUT,
    shutdown_grace: SHUTDOWN_GRACE,
};

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", body)
}

/// Go's `http.NotFound`.
fn not_found() -> Response<Body> {
    let mut r = plain(StatusCode::NOT_FOUND, "404 page not found\n");
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn metrics(registry: &Registry) -> Response<Body> {
    response(StatusCode::OK, TEXT_CONTENT_TYPE, registry.encode())
}

fn has_query_key(req: &Request<Incoming>, key: &str) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == key))
}

fn readiness(req: &Request<Incoming>, r: &Readiness) -> Response<Body> {
    let mut lines = String::new();
    let mut reasons: Vec<String> = Vec::new();
    for (name, check) in &r.checks {
        let outcome = catch_unwind(AssertUnwindSafe(|| check()))
            .unwrap_or_else(|_| Err("check panicked".to_string()));
        match outcome {
            Ok(()) => {
                lines.push_str(&format!("[+]{name} ok\n"));
            }
            Err(reason) => {
                lines.push_str(&format!("[-]{name} failed: {reason}\n"));
                reasons.push(reason);
            }
        }
    }
    if !reasons.is_empty() {
        tracing::info!(checks = %lines.trim_end(), "readiness check failed");
        let body = match r.body {
            ReadinessBody::Message => reasons.join("\n"),
            ReadinessBody::CheckList => lines,
        };
        return plain(r.failure_status, body);
    }
    if r.body == ReadinessBody::CheckList && has_query_key(req, "verbose") {
        lines.push_str("check passed\n");
        return plain(StatusCode::OK, lines);
    }
    plain(StatusCode::OK, "ok")
}

/// The host part of the request's authority (Go's `net.SplitHostPort(r.Host)`, falling back to
/// the whole value when there is no port), without IPv6 brackets.
fn request_host(req: &Request<Incoming>) -> String {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let raw = raw.rsplit('@').next().unwrap_or_default();
    if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port or [v6]
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match raw.rsplit_once(':') {
        // A single colon separates host and port; more colons mean a bare IPv6 literal.
        Some((host, _port)) if !host.contains(':') => host.to_string(),
        _ => raw.to_string(),
    }
}

/// Go's `http.Redirect(w, r, "//host:port/metrics?query", 301)`.
fn redirect_to_health(req: &Request<Incoming>, health_port: u16) -> Response<Body> {
    let host = request_host(req);
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/metrics");
    let location = format!("//{host}:{health_port}{path_and_query}");
    let Ok(value) = HeaderValue::from_str(&location) else {
        return plain(StatusCode::BAD_REQUEST, "invalid Host header\n");
    };
    let mut r = if req.method() == Method::GET || req.method() == Method::HEAD {
        let body = if req.method() == Method::GET {
            format!(
                "<a href=\"{}\">Moved Permanently</a>.\n\n",
                html_escape(&location)
            )
        } else {
            String::new()
        };
        response(
            StatusCode::MOVED_PERMANENTLY,
            "text/html; charset=utf-8",
            body,
        )
    } else {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
        r
    };
    r.headers_mut().insert(LOCATION, value);
    r
}

/// Go's `htmlReplacer` as used by `http.Redirect`.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn health_handler(registry: Registry, ready: Readiness) -> Handler {
    Arc::new(move |req| match req.uri().path() {
        "/healthz" => plain(StatusCode::OK, "ok"),
        "/readyz" | "/ready" => readiness(req, &ready),
        "/metrics" => metrics(&registry),
        _ => not_found(),
    })
}

fn server_admin_handler(registry: Registry) -> Handler {
    Arc::new(move |req| match req.uri().path() {
        "/metrics" => metrics(&registry),
        _ => not_found(),
    })
}

fn agent_admin_handler(health_port: u16) -> Handler {
    Arc::new(move |req| match req.uri().path() {
        "/metrics" => redirect_to_health(req, health_port),
        _ => not_found(),
    })
}

/// Serves the health port until `cancel` fires: `/healthz` (200 `ok`), `/readyz` and `/ready`
/// (see [`Readiness`]), `/metrics` (text format 0.0.4), 404 otherwise.
pub async fn serve_health(
    listener: TcpListener,
    registry: Registry,
    readiness: Readiness,
    cancel: CancellationToken,
) {
    serve(
        listener,
        health_handler(registry, readiness),
        cancel,
        DEFAULT_LIMITS,
    )
    .await;
}

/// Serves the proxy-server admin port until `cancel` fires: `/metrics` only.
pub async fn serve_server_admin(
    listener: TcpListener,
    registry: Registry,
    cancel: CancellationToken,
) {
    serve(
        listener,
        server_admin_handler(registry),
        cancel,
        DEFAULT_LIMITS,
    )
    .await;
}

/// Serves the proxy-agent admin port until `cancel` fires: `/metrics` answers
/// `301 Moved Permanently` with `Location: //<request host>:<health_port>/metrics`, as upstream.
pub async fn serve_agent_admin(listener: TcpListener, health_port: u16, cancel: CancellationToken) {
    serve(
        listener,
        agent_admin_handler(health_port),
        cancel,
        DEFAULT_LIMITS,
    )
    .await;
}

/// Accept loop: one task per connection, bounded in number; stops accepting when `cancel`
/// fires, lets in-flight requests finish for `shutdown_grace`, then returns (dropping the
/// listener). Errors of one connection never stop the loop.
async fn serve(listener: TcpListener, handler: Handler, cancel: CancellationToken, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(?local, %err, "accept failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(?local, %peer, "too many connections; closing new one");
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _permit = permit;
            serve_connection(stream, handler, cancel, limits).await;
        });
    }
    drop(listener);
    tracker.close();
    // Connections received the cancellation themselves; wait a little longer than their grace.
    if tokio::time::timeout(
        limits.shutdown_grace + Duration::from_millis(100),
        tracker.wait(),
    )
    .await
    .is_err()
    {
        tracing::debug!(
            ?local,
            "connections still open after shutdown grace; dropping them"
        );
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    handler: Handler,
    cancel: CancellationToken,
    limits: Limits,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let resp = catch_unwind(AssertUnwindSafe(|| handler(&req))).unwrap_or_else(|_| {
                tracing::error!(path = %req.uri().path(), "handler panicked");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            });
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        res = conn.as_mut() => res,
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.shutdown_grace, conn.as_mut()).await {
                Ok(res) => res,
                Err(_) => return,
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "health/admin connection ended with an error");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const TEST_TIMEOUT: Duration = Duration::from_secs(5);

    struct Running {
        addr: SocketAddr,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(handler: Handler, limits: Limits) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(listener, handler, cancel.clone(), limits));
        Running { addr, cancel, task }
    }

    /// Sends raw request bytes and reads the whole response (the request asks for close).
    async fn raw(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(TEST_TIMEOUT, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        )
        .await
    }

    fn status_line(resp: &str) -> &str {
        resp.lines().next().unwrap()
    }

    fn body(resp: &str) -> &str {
        resp.split_once("\r\n\r\n").unwrap().1
    }

    fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
        resp.split_once("\r\n\r\n")
            .unwrap()
            .0
            .lines()
            .skip(1)
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim())
            })
    }

    fn check(
        name: &str,
        f: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> ReadinessCheck {
        (name.to_string(), Arc::new(f))
    }

    fn agent_checks(connected: Arc<AtomicBool>) -> Vec<ReadinessCheck> {
        vec![
            check("ping", || Ok(())),
            check("server-connected", move || {
                if connected.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("no servers connected".to_string())
                }
            }),
        ]
    }

    #[tokio::test]
    async fn healthz_is_always_ok() {
        let srv = start(
            health_handler(Registry::new(), Readiness::proxy_server(vec![])),
            DEFAULT_LIMITS,
        )
        .await;
        let resp = get(srv.addr, "/healthz").await;
        assert_eq!(status_line(&resp), "HTTP/1.1 200 OK");
        assert_eq!(body(&resp), "ok");
        assert_eq!(
            header(&resp, "content-type"),
            Some("text/plain; charset=utf-8")
        );
    }

    #[tokio::test]
    async fn agent_readiness_lists_checks_and_fails_with_503() {
        let connected = Arc::new(AtomicBool::new(false));
        let srv = start(
            health_handler(
                Registry::new(),
                Readiness::proxy_agent(agent_checks(connected.clone())),
            ),
            DEFAULT_LIMITS,
        )
        .await;
        for path in ["/readyz", "/ready", "/readyz?verbose"] {
            let resp = get(srv.addr, path).await;
            assert_eq!(
                status_line(&resp),
                "HTTP/1.1 503 Service Unavailable",
                "{path}"
            );
            assert_eq!(
                body(&resp),
                "[+]ping ok\n[-]server-connected failed: no servers connected\n"
            );
        }
        connected.store(true, Ordering::SeqCst);
        let resp = get(srv.addr, "/readyz").await;
        assert_eq!(status_line(&resp), "HTTP/1.1 200 OK");
        assert_eq!(body(&resp), "ok");
        let resp = get(srv.addr, "/readyz?verbose").await;
        assert_eq!(
            body(&resp),
            "[+]ping ok\n[+]server-connected ok\ncheck passed\n"
        );
        let resp = get(srv.addr, "/ready?x=1&verbose=").await;
        assert_eq!(
            body(&resp),
            "[+]ping ok\n[+]server-connected ok\ncheck passed\n"
        );
    }

    #[tokio::test]
    async fn server_readiness_fails_with_500_and_reason() {
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let checks = vec![check("backend", move || {
            if r.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("no connection to any proxy agent".to_string())
            }
        })];
        let srv = start(
            health_handler(Registry::new(), Readiness::proxy_server(checks)),
            DEFAULT_LIMITS,
        )
        .await;
        let resp = get(srv.addr, "/readyz").await;
        assert_eq!(status_line(&resp), "HTTP/1.1 500 Internal Server Error");
        assert_eq!(body(&resp), "no connection to any proxy agent");
        ready.store(true, Ordering::SeqCst);
        let resp = get(srv.addr, "/ready?verbose").await;
        assert_eq!(status_line(&resp), "HTTP/1.1 200 OK");
        assert_eq!(body(&resp), "ok");
    }

    #[tokio::test]
    async fn failure_status_is_configurable() {
        let mut r = Readiness::proxy_agent(vec![check("x", || Err("down".into()))]);
        r.failure_status = StatusCode::INTERNAL_SERVER_ERROR;
        let srv = start(health_handler(Registry::new(), r), DEFAULT_LIMITS).await;
        let resp = get(srv.addr, "/readyz").await;
        assert_eq!(status_line(&resp), "HTTP/1.1 500 Internal Server Error");
        assert_eq!(body(&resp), "[-]x failed: down\n");
    }

    #[tokio::test]
    async fn panicking_check_reports_failure_and_server_survives() {
        let srv = start(
            health_handler(
                Registry::new(),
                Readiness::proxy_agent(vec![check("boom", || panic!("bad check"))]),
            ),
            DEFAULT_LIMITS,
        )
        .await;
        let resp = get(srv.addr, "/readyz").await;
        assert_eq!(status_line(&resp), "HTTP/1.1 503 Service Unavailable");
        assert_eq!(body(&resp), "[-]boom failed: check panicked\n");
        assert_eq!(body(&get(srv.addr, "/healthz").await), "ok");
    }

    #[tokio::test]
    async fn metrics_are_served_in_text_format_on_health_and_server_admin() {
        let registry = Registry::new();
        registry.gauge("g", "A gauge.").unwrap().set(7);
        let health = start(
            health_handler(registry.clone(), Readiness::proxy_server(vec![])),
            DEFAULT_LIMITS,
        )
        .await;
        let admin = start(server_admin_handler(registry.clone()), DEFAULT_LIMITS).await;
        for addr in [health.addr, admin.addr] {
            let resp = get(addr, "/metrics").await;
            assert_eq!(status_line(&resp), "HTTP/1.1 200 OK");
            assert_eq!(header(&resp, "content-type"), Some(TEXT_CONTENT_TYPE));
            assert_eq!(body(&resp), "# HELP g A gauge.\n# TYPE g gauge\ng 7\n");
        }
        // The server admin port has nothing else.
        let resp = get(admin.addr, "/healthz").await;
        assert_eq!(status_line(&resp), "HTTP/1.1 404 Not Found");
    }

    #[tokio::test]
    async fn unknown_paths_are_404_like_go() {
        let srv = start(
            health_handler(Registry::new(), Readiness::proxy_server(vec![])),
            DEFAULT_LIMITS,
        )
        .await;
        for path in ["/", "/metrics/", "/healthz/x", "/debug/pprof/"] {
            let resp = get(srv.addr, path).await;
            assert_eq!(status_line(&resp), "HTTP/1.1 404 Not Found", "{path}");
            assert_eq!(body(&resp), "404 page not found\n");
            assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
        }
    }

    #[tokio::test]
    async fn agent_admin_redirects_metrics_to_health_port() {
        let srv = start(agent_admin_handler(8093), DEFAULT_LIMITS).await;
        let cases = [
            ("127.0.0.1:8094", "/metrics", "//127.0.0.1:8093/metrics"),
            (
                "localhost:8094",
                "/metrics?x=1",
                "//localhost:8093/metrics?x=1",
            ),
            ("[::1]:8094", "/metrics", "//[::1]:8093/metrics"),
            ("example", "/metrics", "//example:8093/metrics"),
        ];
        for (host, path, want) in cases {
            let resp = raw(
                srv.addr,
                &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(
                status_line(&resp),
                "HTTP/1.1 301 Moved Permanently",
                "{host}"
            );
            assert_eq!(header(&resp, "location"), Some(want), "{host}");
            assert_eq!(
                header(&resp, "content-type"),
                Some("text/html; charset=utf-8")
            );
            assert_eq!(
                body(&resp),
                format!("<a href=\"{want}\">Moved Permanently</a>.\n\n")
            );
        }
        let resp = get(srv.addr, "/healthz").await;
        assert_eq!(status_line(&resp), "HTTP/1.1 404 Not Found");
    }

    #[tokio::test]
    async fn cancellation_stops_accepting_and_returns() {
        let srv = start(
            health_handler(Registry::new(), Readiness::proxy_server(vec![])),
            DEFAULT_LIMITS,
        )
        .await;
        assert_eq!(body(&get(srv.addr, "/healthz").await), "ok");
        srv.cancel.cancel();
        tokio::time::timeout(TEST_TIMEOUT, srv.task)
            .await
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(srv.addr).await.is_err());
    }

    #[tokio::test]
    async fn cancellation_closes_idle_keepalive_connections() {
        let srv = start(
            health_handler(Registry::new(), Readiness::proxy_server(vec![])),
            DEFAULT_LIMITS,
        )
        .await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
        srv.cancel.cancel();
        // The kept-alive connection is closed promptly, not after the grace period.
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        tokio::time::timeout(TEST_TIMEOUT, srv.task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn garbage_request_does_not_take_the_server_down() {
        let srv = start(
            health_handler(Registry::new(), Readiness::proxy_server(vec![])),
            DEFAULT_LIMITS,
        )
        .await;
        let resp = raw(srv.addr, "\x16\x03\x01 this is not http\r\n\r\n").await;
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 400"),
            "{resp:?}"
        );
        assert_eq!(body(&get(srv.addr, "/healthz").await), "ok");
    }

    #[tokio::test]
    async fn stalled_client_is_dropped_after_header_timeout() {
        let limits = Limits {
            read_header_timeout: Duration::from_millis(200),
            ..DEFAULT_LIMITS
        };
        let srv = start(
            health_handler(Registry::new(), Readiness::proxy_server(vec![])),
            limits,
        )
        .await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
        let mut out = Vec::new();
        // Closed (possibly after a 408) well before the test timeout.
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
            .await
            .unwrap()
            .ok();
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("200 OK"), "{text}");
        assert_eq!(body(&get(srv.addr, "/healthz").await), "ok");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_but_server_recovers() {
        let limits = Limits {
            max_connections: 2,
            read_header_timeout: Duration::from_millis(500),
            ..DEFAULT_LIMITS
        };
        let srv = start(
            health_handler(Registry::new(), Readiness::proxy_server(vec![])),
            limits,
        )
        .await;
        let _idle1 = TcpStream::connect(srv.addr).await.unwrap();
        let _idle2 = TcpStream::connect(srv.addr).await.unwrap();
        // Let the server accept both idle connections.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The third connection is closed unserved (EOF or reset: the request was unread).
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(TEST_TIMEOUT, s.read_to_end(&mut out))
            .await
            .unwrap();
        assert!(
            read.is_err() || out.is_empty(),
            "served: {:?}",
            String::from_utf8_lossy(&out)
        );
        // Once the idle ones time out, service resumes.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(body(&get(srv.addr, "/healthz").await), "ok");
    }

    #[tokio::test]
    async fn public_serve_functions_run_until_cancelled() {
        let cancel = CancellationToken::new();
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l3 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a1, a2, a3) = (
            l1.local_addr().unwrap(),
            l2.local_addr().unwrap(),
            l3.local_addr().unwrap(),
        );
        let registry = Registry::new();
        let t1 = tokio::spawn(serve_health(
            l1,
            registry.clone(),
            Readiness::proxy_agent(vec![]),
            cancel.clone(),
        ));
        let t2 = tokio::spawn(serve_server_admin(l2, registry, cancel.clone()));
        let t3 = tokio::spawn(serve_agent_admin(l3, a1.port(), cancel.clone()));
        assert_eq!(body(&get(a1, "/readyz?verbose").await), "check passed\n");
        assert_eq!(status_line(&get(a2, "/metrics").await), "HTTP/1.1 200 OK");
        let resp = get(a3, "/metrics").await;
        assert_eq!(
            header(&resp, "location"),
            Some(format!("//127.0.0.1:{}/metrics", a1.port()).as_str())
        );
        cancel.cancel();
        for t in [t1, t2, t3] {
            tokio::time::timeout(TEST_TIMEOUT, t)
                .await
                .unwrap()
                .unwrap();
        }
    }
}
