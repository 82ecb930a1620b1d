//! Typed configuration of the proxy-server, produced from flags at the edge (`flags.rs`).
//!
//! Everything here is already validated: the server library never re-checks flag combinations.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use konnectivity_tls::TlsTuning;

/// Which protocol the frontend speaks (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendMode {
    /// gRPC `ProxyService.Proxy` (upstream default).
    Grpc,
    /// HTTP/1.1 `CONNECT host:port`.
    HttpConnect,
}

/// Where the frontend listens.
#[derive(Debug, Clone)]
pub enum FrontendListen {
    /// Plain (no TLS) Unix domain socket, created with mode 0770.
    Uds {
        path: PathBuf,
        /// Remove a stale socket file first (`--delete-existing-uds-file`).
        delete_existing: bool,
    },
    /// TCP with mandatory client certificates.
    Tcp {
        addr: SocketAddr,
        cert: PathBuf,
        key: PathBuf,
        /// CA that frontend (kube-apiserver) client certificates must chain to.
        client_ca: PathBuf,
    },
}

/// One strategy of `--proxy-strategies`, tried in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyStrategy {
    /// Any agent, preferring non-draining ones.
    Default,
    /// The agent whose `ipv4`/`ipv6`/`host` identifier equals the dial's host.
    DestHost,
    /// An agent that announced `default-route=true`.
    DefaultRoute,
}

/// The frontend side of the server.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    pub mode: FrontendMode,
    pub listen: FrontendListen,
    /// HTTP/2 keepalive ping interval on frontend connections (`--frontend-keepalive-time`).
    pub keepalive_time: Duration,
}

/// The agent-facing side of the server.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `--cluster-ca-cert`: when set, agents must present a client certificate from this CA.
    pub client_ca: Option<PathBuf>,
    /// HTTP/2 keepalive ping interval on agent connections (`--keepalive-time`); QUIC
    /// keep-alives use it too, capped to stay within the QUIC idle timeout.
    pub keepalive_time: Duration,
}

/// The complete, validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub frontend: FrontendConfig,
    pub backend: BackendConfig,
    /// TLS version and cipher-suite tuning applied to every TLS listener.
    pub tls: TlsTuning,
    pub proxy_strategies: Vec<ProxyStrategy>,
    /// Sent to agents in the `serverid` response header.
    pub server_id: String,
    /// Sent to agents in the `servercount` response header.
    pub server_count: u32,
    /// Per-connection queue length in packets (`--xfr-channel-size`).
    pub xfr_channel_size: usize,
    /// `--backend-dial-timeout`; zero disables it, as upstream.
    pub backend_dial_timeout: Duration,
    /// `--graceful-shutdown-timeout`; zero means stop at once.
    pub graceful_shutdown_timeout: Duration,
    /// Health listener (`/healthz`, `/readyz`, `/ready`, `/metrics`).
    pub health_addr: SocketAddr,
    /// Admin listener (`/metrics`).
    pub admin_addr: SocketAddr,
    /// This build's extensions (QUIC, flow control).
    pub extensions: ServerExtensions,
}

/// Settings of this build's extensions (flags upstream does not have), grouped so they are
/// easy to tell from upstream's settings. `Default` is what the flags default to.
#[derive(Debug, Clone)]
pub struct ServerExtensions {
    /// `--enable-quic`: also accept agents over QUIC on UDP at the agent address and port.
    pub enable_quic: bool,
    /// Grant per-connection flow control to gRPC agents that ask for it (hidden
    /// `--flow-control`, default true; false behaves as an upstream server, for tests).
    pub flow_control: bool,
    /// `--worker-threads`: threads of the process's task scheduler; 0 means one per CPU.
    /// Read by the binary when it builds its runtime, before `run`.
    pub worker_threads: usize,
    /// `--frontend-tls-session-tickets`: TLS 1.3 tickets sent after each mTLS frontend
    /// handshake (0: none, as kube-apiserver never resumes).
    pub frontend_session_tickets: usize,
}

impl Default for ServerExtensions {
    fn default() -> Self {
        ServerExtensions {
            enable_quic: true,
            flow_control: true,
            worker_threads: 0,
            frontend_session_tickets: 0,
        }
    }
}
