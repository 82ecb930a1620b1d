//! A kubelet stand-in: the kubelet's HTTPS streaming API with the real wire protocols, backed by
//! real processes and real TCP ports on the machine it runs on.
//!
//! * HTTPS with the kubelet serving certificate; a client certificate signed by the kubelet
//!   client CA is **required** (the kubelet's `--client-ca-file`); HTTP/1.1 only.
//! * `GET /containerLogs/{ns}/{pod}/{container}`: a growing log per container (see
//!   [`LogSource`](logs)), with `follow`, `tailLines` (and legacy `tail`), `timestamps`,
//!   `limitBytes`, `sinceSeconds`, `sinceTime`, `previous`.
//! * `/exec/{ns}/{pod}[/{uid}]/{container}`: WebSocket `v5.channel.k8s.io` /
//!   `v4.channel.k8s.io` / `channel.k8s.io`, running `command` as a local process.
//! * `/attach/{ns}/{pod}[/{uid}]/{container}`: the container's live log on stdout.
//! * `/portForward/{ns}/{pod}[/{uid}]`: WebSocket v4 channel framing to `pod_address:port`.
//! * `POST /run/{ns}/{pod}[/{uid}]/{container}?cmd=…`: synchronous command, output as body.
//! * `/healthz`: `ok`. Anything else: 404.
//!
//! There is no pod registry: every syntactically valid namespace/pod/container exists, and
//! every exec runs on the stand-in's own machine as its own user. It is a test and demo
//! fixture, never something to expose to untrusted clients.

mod exec;
mod logs;
mod portforward;
mod ws;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use konnectivity_tls::{TlsError, TlsTuning};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::request::validate_name;

/// Default `--listen`: the kubelet's port on every interface.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:10250";
/// Default `--log-interval`: one new log line per container per second.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest accepted `--log-interval`. Cost: a follower of a faster log would get a line per
/// millisecond, which is a load generator rather than a log.
pub const MIN_LOG_INTERVAL: Duration = Duration::from_millis(1);
/// Most TLS connections served at once; further clients wait in the accept backlog. Cost:
/// one task, one socket and a TLS session (~tens of KiB) each.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most exec/attach/port-forward sessions at once (an exec session is a process plus four
/// tasks); more are answered 429. Cost: a legitimate burst above this is refused.
pub const MAX_SESSIONS: usize = 256;
/// How long a client may take to send its request headers. Cost: a client on a link slower
/// than this cannot send even one request; it bounds idle half-open connections.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After the shutdown signal, how long in-flight requests and sessions get to finish (they are
/// all told to stop at once; this only bounds a stuck one). Cost: shutdown can take this long.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again, so the
/// loop does not spin. Cost: new connections wait this long while the condition lasts.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The body type of every stand-in response.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Why the stand-in could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    /// The serving certificate, key or client CA could not be loaded.
    #[error("kubelet stand-in TLS setup (--tls-cert-file, --tls-private-key-file, --client-ca-file): {0}")]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (--listen): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An unusable option value.
    #[error("invalid {flag}: {reason}")]
    InvalidConfig {
        /// The flag concerned.
        flag: &'static str,
        /// What is wrong and what to use instead.
        reason: String,
    },
}

/// Everything the stand-in needs; the binary fills it from kubelet-named flags.
#[derive(Debug, Clone)]
pub struct StandinConfig {
    /// Address to listen on (`--listen`).
    pub listen: SocketAddr,
    /// Serving certificate (`--tls-cert-file`), signed by the kubelet CA.
    pub tls_cert_file: PathBuf,
    /// Its private key (`--tls-private-key-file`).
    pub tls_private_key_file: PathBuf,
    /// CA that client certificates must chain to (`--client-ca-file`).
    pub client_ca_file: PathBuf,
    /// Node name, used in messages and logs (`--node-name`).
    pub node_name: String,
    /// Where "pod" ports live: port-forward connects to `pod_address:port` (`--pod-address`).
    pub pod_address: String,
    /// One new log line per container this often (`--log-interval`).
    pub log_interval: Duration,
}

impl StandinConfig {
    /// A configuration with the kubelet defaults for everything but the key material.
    pub fn new(
        tls_cert_file: PathBuf,
        tls_private_key_file: PathBuf,
        client_ca_file: PathBuf,
    ) -> Self {
        StandinConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 10250)),
            tls_cert_file,
            tls_private_key_file,
            client_ca_file,
            node_name: "node".into(),
            pod_address: "127.0.0.1".into(),
            log_interval: DEFAULT_LOG_INTERVAL,
        }
    }
}

/// Counters of what the stand-in is serving right now, so tests (and operators reading the
/// logs) can see that streams end when their clients go away.
#[derive(Debug, Default)]
pub struct StandinStats {
    connections: AtomicUsize,
    log_streams: AtomicUsize,
    exec_sessions: AtomicUsize,
    attach_sessions: AtomicUsize,
    port_forwards: AtomicUsize,
}

/// Which counter an [`ActiveGuard`] holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Activity {
    Connection,
    LogStream,
    Exec,
    Attach,
    PortForward,
}

impl StandinStats {
    /// TLS connections currently open (upgraded sessions are counted separately).
    pub fn active_connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    /// `/containerLogs` responses currently streaming.
    pub fn active_log_streams(&self) -> usize {
        self.log_streams.load(Ordering::SeqCst)
    }
    /// Exec sessions currently running.
    pub fn active_exec_sessions(&self) -> usize {
        self.exec_sessions.load(Ordering::SeqCst)
    }
    /// Attach sessions currently running.
    pub fn active_attach_sessions(&self) -> usize {
        self.attach_sessions.load(Ordering::SeqCst)
    }
    /// Port-forward sessions currently running.
    pub fn active_port_forwards(&self) -> usize {
        self.port_forwards.load(Ordering::SeqCst)
    }

    fn counter(&self, what: Activity) -> &AtomicUsize {
        match what {
            Activity::Connection => &self.connections,
            Activity::LogStream => &self.log_streams,
            Activity::Exec => &self.exec_sessions,
            Activity::Attach => &self.attach_sessions,
            Activity::PortForward => &self.port_forwards,
        }
    }

    /// Counts one activity until the returned guard is dropped.
    pub(crate) fn track(self: &Arc<Self>, what: Activity) -> ActiveGuard {
        self.counter(what).fetch_add(1, Ordering::SeqCst);
        ActiveGuard {
            stats: self.clone(),
            what,
        }
    }
}

/// Decrements its counter when dropped, however the activity ends.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    stats: Arc<StandinStats>,
    what: Activity,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.stats.counter(self.what).fetch_sub(1, Ordering::SeqCst);
    }
}

/// State shared by every connection.
pub(crate) struct State {
    pub(crate) node_name: String,
    pub(crate) pod_address: String,
    pub(crate) logs: logs::LogSource,
    pub(crate) stats: Arc<StandinStats>,
    /// Cancelled on shutdown: streams and sessions end, connections shut down gracefully.
    pub(crate) shutdown: CancellationToken,
    /// Every connection and upgraded session, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Bounds concurrent upgraded sessions ([`MAX_SESSIONS`]).
    pub(crate) sessions: Arc<Semaphore>,
}

/// A bound, not yet serving stand-in (bind first so callers learn the port, e.g. `:0`).
pub struct Standin {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
}

impl std::fmt::Debug for Standin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standin")
            .field("listener", &self.listener)
            .field("node_name", &self.state.node_name)
            .finish_non_exhaustive()
    }
}

impl Standin {
    /// Loads the key material (a client CA is mandatory) and binds the listener.
    pub async fn bind(config: StandinConfig) -> Result<Standin, StandinError> {
        if config.log_interval < MIN_LOG_INTERVAL {
            return Err(StandinError::InvalidConfig {
                flag: "--log-interval",
                reason: format!(
                    "{:?} is too short; use at least {MIN_LOG_INTERVAL:?} (default 1s)",
                    config.log_interval
                ),
            });
        }
        if config.pod_address.trim().is_empty() {
            return Err(StandinError::InvalidConfig {
                flag: "--pod-address",
                reason: "must name a host or IP address (default 127.0.0.1)".into(),
            });
        }
        let tls = konnectivity_tls::server_config(
            &config.tls_cert_file,
            &config.tls_private_key_file,
            Some(&config.client_ca_file),
            &[b"http/1.1"],
            &TlsTuning::default(),
        )?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StandinError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let state = Arc::new(State {
            node_name: config.node_name,
            pod_address: config.pod_address,
            logs: logs::LogSource::new(config.log_interval),
            stats: Arc::new(StandinStats::default()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
        });
        Ok(Standin {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
            state,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Live counters of streams and sessions.
    pub fn stats(&self) -> Arc<StandinStats> {
        self.state.stats.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, tells every stream and session
    /// to end, and waits up to [`SHUTDOWN_GRACE`] for them.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), StandinError> {
        let Standin {
            listener,
            acceptor,
            state,
        } = self;
        info!(
            node = %state.node_name,
            addr = ?listener.local_addr().ok(),
            pod_address = %state.pod_address,
            "kubelet stand-in serving"
        );
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = connections.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let state = state.clone();
                    let acceptor = acceptor.clone();
                    state.tracker.clone().spawn(async move {
                        serve_connection(state, acceptor, tcp, peer).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!("accept failed: {e}; retrying in {ACCEPT_ERROR_BACKOFF:?}");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
        info!("shutting down: no new connections; ending streams and sessions");
        drop(listener);
        state.shutdown.cancel();
        state.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, state.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                "{} connections/sessions still running after {SHUTDOWN_GRACE:?}; leaving them",
                state.tracker.len()
            );
        }
        Ok(())
    }
}

/// Binds and serves until `shutdown` resolves: the whole stand-in in one call.
pub async fn run(
    config: StandinConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StandinError> {
    Standin::bind(config).await?.serve(shutdown).await
}

/// One TLS connection: handshake (client certificate required), then HTTP/1.1 with upgrades.
async fn serve_connection(
    state: Arc<State>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let tls = match konnectivity_tls::accept(&acceptor, tcp, None).await {
        Ok(tls) => tls,
        Err(e) => {
            warn!(%peer, "refused connection: {e} (clients must present a certificate signed by --client-ca-file)");
            return;
        }
    };
    let _active = state.stats.track(Activity::Connection);
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |req| {
        let state = service_state.clone();
        async move { Ok::<_, Infallible>(handle(state, req, peer).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, "connection ended: {e}");
    }
}

/// A kubelet path, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Healthz,
    Logs(PodContainer<'a>),
    Exec(PodContainer<'a>),
    Attach(PodContainer<'a>),
    Run(PodContainer<'a>),
    PortForward {
        namespace: &'a str,
        pod: &'a str,
        uid: &'a str,
    },
    NotFound,
}

/// `{namespace}/{pod}[/{uid}]/{container}` path parameters.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PodContainer<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) pod: &'a str,
    pub(crate) uid: &'a str,
    pub(crate) container: &'a str,
}

impl PodContainer<'_> {
    fn validate(&self) -> Result<(), crate::request::InvalidName> {
        validate_name("namespace", self.namespace)?;
        validate_name("pod", self.pod)?;
        if !self.uid.is_empty() {
            validate_name("uid", self.uid)?;
        }
        validate_name("container", self.container)
    }
}

fn route<'a>(path: &'a str) -> Route<'a> {
    let Some(rest) = path.strip_prefix('/') else {
        return Route::NotFound;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let streaming = |kind: &str, pc: PodContainer<'a>| match kind {
        "exec" => Route::Exec(pc),
        "attach" => Route::Attach(pc),
        _ => Route::Run(pc),
    };
    match segments.as_slice() {
        ["healthz"] => Route::Healthz,
        ["containerLogs", ns, pod, container] => Route::Logs(PodContainer {
            namespace: ns,
            pod,
            uid: "",
            container,
        }),
        [kind @ ("exec" | "attach" | "run"), ns, pod, container] => streaming(
            kind,
            PodContainer {
                namespace: ns,
                pod,
                uid: "",
                container,
            },
        ),
        [kind @ ("exec" | "attach" | "run"), ns, pod, uid, container] => streaming(
            kind,
            PodContainer {
                namespace: ns,
                pod,
                uid,
                container,
            },
        ),
        ["portForward", ns, pod] => Route::PortForward {
            namespace: ns,
            pod,
            uid: "",
        },
        ["portForward", ns, pod, uid] => Route::PortForward {
            namespace: ns,
            pod,
            uid,
        },
        _ => Route::NotFound,
    }
}

/// Decoded query pairs in order (repeated keys kept).
pub(crate) type Query = Vec<(String, String)>;

/// All values of `key`, in order.
pub(crate) fn query_values<'q>(
    query: &'q Query,
    key: &'q str,
) -> impl Iterator<Item = &'q str> + 'q {
    query
        .iter()
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The first value of `key`.
pub(crate) fn query_first<'q>(query: &'q Query, key: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

async fn handle(state: Arc<State>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query: Query = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    debug!(%peer, method = %req.method(), %path, "request");
    let method = req.method().clone();
    let upgrade_methods = [Method::GET, Method::POST];
    match route(&path) {
        Route::Healthz => match method {
            Method::GET | Method::HEAD => text(StatusCode::OK, "ok"),
            _ => method_not_allowed(),
        },
        Route::Logs(pc) => {
            if method != Method::GET {
                return method_not_allowed();
            }
            if let Err(e) = pc.validate() {
                return text(StatusCode::BAD_REQUEST, &e.to_string());
            }
            logs::container_logs(&state, &pc, &query)
        }
        Route::Exec(pc) | Route::Attach(pc) if !upgrade_methods.contains(&method) => {
            let _ = pc;
            method_not_allowed()
        }
        Route::Exec(pc) => match pc.validate() {
            Err(e) => text(StatusCode::BAD_REQUEST, &e.to_string()),
            Ok(()) => exec::handle_exec(&state, req, &pc, &query, peer),
        },
        Route::Attach(pc) => match pc.validate() {
            Err(e) => text(StatusCode::BAD_REQUEST, &e.to_string()),
            Ok(()) => exec::handle_attach(&state, req, &pc, &query, peer),
        },
        Route::Run(pc) => {
            if method != Method::POST {
                return method_not_allowed();
            }
            match pc.validate() {
                Err(e) => text(StatusCode::BAD_REQUEST, &e.to_string()),
                Ok(()) => exec::handle_run(&state, &pc, &query).await,
            }
        }
        Route::PortForward {
            namespace,
            pod,
            uid,
        } => {
            if !upgrade_methods.contains(&method) {
                return method_not_allowed();
            }
            let valid = validate_name("namespace", namespace)
                .and_then(|_| validate_name("pod", pod))
                .and_then(|_| {
                    if uid.is_empty() {
                        Ok(())
                    } else {
                        validate_name("uid", uid)
                    }
                });
            match valid {
                Err(e) => text(StatusCode::BAD_REQUEST, &e.to_string()),
                Ok(()) => portforward::handle(&state, req, namespace, pod, uid, &query, peer),
            }
        }
        Route::NotFound => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn method_not_allowed() -> Response<Body> {
    text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

/// A complete body.
pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pc<'a>(
        namespace: &'a str,
        pod: &'a str,
        uid: &'a str,
        container: &'a str,
    ) -> PodContainer<'a> {
        PodContainer {
            namespace,
            pod,
            uid,
            container,
        }
    }

    #[test]
    fn routes_kubelet_paths_including_uid_variants() {
        assert_eq!(route("/healthz"), Route::Healthz);
        assert_eq!(
            route("/containerLogs/ns/p/c"),
            Route::Logs(pc("ns", "p", "", "c"))
        );
        assert_eq!(route("/exec/ns/p/c"), Route::Exec(pc("ns", "p", "", "c")));
        assert_eq!(
            route("/exec/ns/p/u/c"),
            Route::Exec(pc("ns", "p", "u", "c"))
        );
        assert_eq!(
            route("/attach/ns/p/c"),
            Route::Attach(pc("ns", "p", "", "c"))
        );
        assert_eq!(route("/run/ns/p/u/c"), Route::Run(pc("ns", "p", "u", "c")));
        assert_eq!(
            route("/portForward/ns/p"),
            Route::PortForward {
                namespace: "ns",
                pod: "p",
                uid: ""
            }
        );
        assert_eq!(
            route("/portForward/ns/p/u"),
            Route::PortForward {
                namespace: "ns",
                pod: "p",
                uid: "u"
            }
        );
    }

    #[test]
    fn unknown_and_malformed_paths_are_not_found() {
        for p in [
            "/",
            "",
            "/healthz/",
            "/containerLogs/ns/p",
            "/containerLogs/ns/p/c/extra",
            "/exec/ns/p",
            "/exec/a/b/c/d/e",
            "/portforward/ns/p",
            "/portForward/ns",
            "/pods",
        ] {
            assert_eq!(route(p), Route::NotFound, "{p}");
        }
    }

    #[test]
    fn guard_decrements_on_drop() {
        let stats = Arc::new(StandinStats::default());
        let g = stats.track(Activity::LogStream);
        assert_eq!(stats.active_log_streams(), 1);
        drop(g);
        assert_eq!(stats.active_log_streams(), 0);
    }
}
