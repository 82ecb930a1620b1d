//! Typed configuration of the proxy-agent, produced from flags at the edge (`flags.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use konnectivity_tls::TlsTuning;

/// Which transport carries the agent's connections to a proxy-server (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// gRPC `AgentService.Connect` over TLS/TCP (upstream's protocol; the default).
    #[default]
    Grpc,
    /// QUIC over UDP, one stream per tunnelled connection (an extension of this build; the
    /// server must run with `--enable-quic`, its default).
    Quic,
}

/// How and where the agent reaches its proxy-server.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// `--proxy-server-host`; also the TLS server name checked against the server certificate.
    pub host: String,
    /// `--proxy-server-port`.
    pub port: u16,
    /// `--ca-cert`: the CA that signed the server's agent-listener certificate.
    pub ca_cert: PathBuf,
    /// `--agent-cert`/`--agent-key`: optional client certificate pair.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `--alpn-proto`: extra ALPN protocols offered before `h2`.
    pub extra_alpn: Vec<String>,
    /// `--service-account-token-path`: sent as `authorization: Bearer <file contents>`.
    pub token_path: Option<PathBuf>,
    /// HTTP/2 keepalive ping interval (`--keepalive-time`); QUIC keep-alives use it too,
    /// capped to stay within the QUIC idle timeout.
    pub keepalive_time: Duration,
}

/// The agent's identity as announced to servers.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// `agentid` header value.
    pub agent_id: String,
    /// Raw `agentidentifiers` header value (URL query encoding), validated at start-up.
    pub identifiers: String,
}

/// Reconnection pacing (`--sync-interval`, `--sync-interval-cap`, `--sync-forever`, `--probe-interval`).
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub interval: Duration,
    pub interval_cap: Duration,
    pub forever: bool,
    pub probe_interval: Duration,
}

/// The complete, validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: ServerTarget,
    pub identity: AgentIdentity,
    pub sync: SyncConfig,
    pub tls: TlsTuning,
    /// Per-connection queue length in packets (`--xfr-channel-size`).
    pub xfr_channel_size: usize,
    /// `--warn-on-channel-limit`: log when a connection's queue is full.
    pub warn_on_channel_limit: bool,
    /// Health listener (`/healthz`, `/readyz`, `/ready`, `/metrics`).
    pub health_addr: SocketAddr,
    /// Admin listener (`/metrics` redirects to the health port).
    pub admin_addr: SocketAddr,
    /// This build's extensions (transport, flow control).
    pub extensions: AgentExtensions,
}

/// Settings of this build's extensions (flags upstream does not have), grouped so they are
/// easy to tell from upstream's settings. `Default` is what the flags default to.
#[derive(Debug, Clone)]
pub struct AgentExtensions {
    /// `--transport`.
    pub transport: Transport,
    /// Ask gRPC servers for per-connection flow control (hidden `--flow-control`, default
    /// true; false behaves as an upstream agent, for tests).
    pub flow_control: bool,
    /// `--worker-threads`: threads of the process's task scheduler; 0 means one per CPU.
    /// Read by the binary when it builds its runtime, before `run`.
    pub worker_threads: usize,
}

impl Default for AgentExtensions {
    fn default() -> Self {
        AgentExtensions {
            transport: Transport::default(),
            flow_control: true,
            worker_threads: 0,
        }
    }
}
