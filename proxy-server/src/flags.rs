//! The proxy-server command line: every upstream flag, with upstream's names, defaults, help
//! texts and validation messages, turned into a validated [`ServerConfig`].
//!
//! Syntax is Go's (see `konnectivity_goflags`): `--name=value` and `--name value`, booleans only
//! as `--flag` / `--flag=value`, Go durations, a repeated flag's last value wins.
//!
//! Flags of features this build does not have (agent token authentication, the lease controller,
//! pprof) are accepted at their defaults and rejected otherwise, naming the flag. Flags that only
//! configure those absent features (`--kubeconfig`, `--kubeconfig-qps`, `--kubeconfig-burst`,
//! `--kube-api-content-type`, `--lease-namespace`, `--lease-label`) are accepted at any value,
//! because upstream ignores them too while the feature is off; [`ServerFlags::notices`] lists
//! them so `main` can log that they have no effect.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use konnectivity_goflags::{
    bind_addr, display_string_default, flatten_slices, parse_duration, parse_go_bool,
    parse_go_float32, parse_go_int, parse_string_slice, require_default,
    unsupported_unless_default, BindAddrError, GoDuration, KlogFlags, StringSlice, UnsupportedFlag,
};
use konnectivity_tls::TlsError;

use crate::config::{
    BackendConfig, FrontendConfig, FrontendListen, FrontendMode, ProxyStrategy, ServerConfig,
    ServerExtensions, TlsTuning,
};

/// Upstream's lowest accepted port: below it are the reserved (privileged) ports.
const MIN_PORT: i64 = 1024;
/// Upstream's highest accepted port: above it is the ephemeral range.
const MAX_PORT: i64 = 49151;

/// Upstream's `--xfr-channel-size` default (packets per stream queue).
pub const DEFAULT_XFR_CHANNEL_SIZE: i64 = 10;
/// Upstream's `--frontend-write-channel-size` default.
pub const DEFAULT_FRONTEND_WRITE_CHANNEL_SIZE: i64 = 10;
/// Upstream's `--kube-api-content-type` default.
const DEFAULT_KUBE_API_CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// Upstream's `--lease-namespace` default.
const DEFAULT_LEASE_NAMESPACE: &str = "kube-system";
/// Upstream's `--lease-label` default.
const DEFAULT_LEASE_LABEL: &str = "k8s-app=konnectivity-server";

/// Environment variable supplying `--server-id`'s default, as upstream.
pub const SERVER_ID_ENV: &str = "PROXY_SERVER_ID";

/// Most session tickets `--frontend-tls-session-tickets` may ask for per handshake: a client
/// needs one per connection it will resume in parallel. Cost: each ticket is a server-side
/// session-cache entry and a record on the wire.
pub const MAX_FRONTEND_SESSION_TICKETS: usize = 8;

/// Why the flags cannot become a configuration. Texts of `Invalid` are upstream's.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// A value or combination upstream's `Validate()` rejects (upstream's wording), or one this
    /// build cannot represent (wording says what to change).
    #[error("{0}")]
    Invalid(String),
    /// A flag of a feature this build does not have, set to a non-default value.
    #[error(transparent)]
    Unsupported(#[from] UnsupportedFlag),
    /// `--tls-min-version` / `--cipher-suites` rejected.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A bind address that does not resolve.
    #[error(transparent)]
    BindAddr(#[from] BindAddrError),
}

/// Every upstream proxy-server flag plus the klog flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "proxy-server",
    about = "A gRPC proxy server, receives requests from the API server and forwards to the agent.",
    args_override_self = true,
    disable_version_flag = true
)]
pub struct ServerFlags {
    /// If non-empty secure communication with this cert.
    #[arg(
        long = "server-cert",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub server_cert: String,

    /// If non-empty secure communication with this key.
    #[arg(
        long = "server-key",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub server_key: String,

    /// If non-empty the CA we use to validate KAS clients.
    #[arg(
        long = "server-ca-cert",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub server_ca_cert: String,

    /// If non-empty secure communication with this cert.
    #[arg(
        long = "cluster-cert",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub cluster_cert: String,

    /// If non-empty secure communication with this key.
    #[arg(
        long = "cluster-key",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub cluster_key: String,

    /// If non-empty the CA we use to validate Agent clients.
    #[arg(
        long = "cluster-ca-cert",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub cluster_ca_cert: String,

    /// mode can be either 'grpc' or 'http-connect'.
    #[arg(
        long = "mode",
        value_name = "MODE",
        default_value = "grpc",
        allow_hyphen_values = true
    )]
    pub mode: String,

    /// uds-name should be empty for TCP traffic. For UDS set to its name.
    #[arg(
        long = "uds-name",
        value_name = "PATH",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub uds_name: String,

    /// If true and if file UdsName already exists, delete the file before listen on that UDS file. Default is true.
    #[arg(long = "delete-existing-uds-file", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_value = "true", default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub delete_existing_uds_file: bool,

    /// Port we listen for server connections on. Set to 0 for UDS.
    #[arg(long = "server-port", value_name = "INT", default_value = "8090",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub server_port: i64,

    /// Bind address for server connections. If empty, we will bind to all interfaces.
    #[arg(
        long = "server-bind-address",
        value_name = "ADDR",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub server_bind_address: String,

    /// Port we listen for agent connections on.
    #[arg(long = "agent-port", value_name = "INT", default_value = "8091",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub agent_port: i64,

    /// Bind address for agent connections. If empty, we will bind to all interfaces.
    #[arg(
        long = "agent-bind-address",
        value_name = "ADDR",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub agent_bind_address: String,

    /// Port we listen for admin connections on.
    #[arg(long = "admin-port", value_name = "INT", default_value = "8095",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub admin_port: i64,

    /// Bind address for admin connections. If empty, we will bind to all interfaces (upstream's help says localhost, its code binds all interfaces).
    #[arg(
        long = "admin-bind-address",
        value_name = "ADDR",
        default_value = "127.0.0.1",
        allow_hyphen_values = true
    )]
    pub admin_bind_address: String,

    /// Port we listen for health connections on.
    #[arg(long = "health-port", value_name = "INT", default_value = "8092",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub health_port: i64,

    /// Bind address for health connections. If empty, we will bind to all interfaces.
    #[arg(
        long = "health-bind-address",
        value_name = "ADDR",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub health_bind_address: String,

    /// Time for gRPC agent server keepalive.
    #[arg(long = "keepalive-time", value_name = "DURATION", default_value = "1h0m0s",
          value_parser = parse_duration, allow_hyphen_values = true)]
    pub keepalive_time: GoDuration,

    /// Time for gRPC frontend server keepalive.
    #[arg(long = "frontend-keepalive-time", value_name = "DURATION", default_value = "1h0m0s",
          value_parser = parse_duration, allow_hyphen_values = true)]
    pub frontend_keepalive_time: GoDuration,

    /// enable pprof at host:admin-port/debug/pprof [not supported by this build: only false]
    #[arg(long = "enable-profiling", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool)]
    pub enable_profiling: bool,

    /// enable contention profiling at host:admin-port/debug/pprof/block. "--enable-profiling" must also be set. [not supported by this build: only false]
    #[arg(long = "enable-contention-profiling", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub enable_contention_profiling: bool,

    /// The unique ID of this server. Can also be set by the 'PROXY_SERVER_ID' environment variable. [default: $PROXY_SERVER_ID, else a random UUID]
    #[arg(long = "server-id", value_name = "ID", allow_hyphen_values = true)]
    pub server_id: Option<String>,

    /// The number of proxy server instances, should be 1 unless it is an HA server.
    #[arg(long = "server-count", value_name = "INT", default_value = "1",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub server_count: i64,

    /// Expected agent's namespace during agent authentication (used with agent-service-account, authentication-audience, kubeconfig). [not supported by this build: only ""]
    #[arg(
        long = "agent-namespace",
        value_name = "NAMESPACE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub agent_namespace: String,

    /// Expected agent's service account during agent authentication (used with agent-namespace, authentication-audience, kubeconfig). [not supported by this build: only ""]
    #[arg(
        long = "agent-service-account",
        value_name = "NAME",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub agent_service_account: String,

    /// absolute path to the kubeconfig file (used with agent-namespace, agent-service-account, authentication-audience). [no effect in this build]
    #[arg(
        long = "kubeconfig",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub kubeconfig: String,

    /// Maximum client QPS (proxy server uses this client to authenticate agent tokens). [no effect in this build]
    #[arg(long = "kubeconfig-qps", value_name = "FLOAT", default_value = "0",
          value_parser = parse_go_float32, allow_hyphen_values = true)]
    pub kubeconfig_qps: f32,

    /// Maximum client burst (proxy server uses this client to authenticate agent tokens). [no effect in this build]
    #[arg(long = "kubeconfig-burst", value_name = "INT", default_value = "0",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub kubeconfig_burst: i64,

    /// Content type of requests sent to apiserver. [no effect in this build]
    #[arg(long = "kube-api-content-type", value_name = "TYPE",
          default_value = DEFAULT_KUBE_API_CONTENT_TYPE, allow_hyphen_values = true)]
    pub kube_api_content_type: String,

    /// Expected agent's token authentication audience (used with agent-namespace, agent-service-account, kubeconfig). [not supported by this build: only ""]
    #[arg(
        long = "authentication-audience",
        value_name = "AUDIENCE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub authentication_audience: String,

    /// The list of proxy strategies used by the server to pick an agent/tunnel, available strategies are: default, destHost, defaultRoute.
    #[arg(
        long = "proxy-strategies",
        value_name = "LIST",
        default_value = "default",
        allow_hyphen_values = true
    )]
    pub proxy_strategies: String,

    /// The comma separated list of allowed cipher suites. Has no effect on TLS1.3. Empty means allow default list.
    #[arg(long = "cipher-suites", value_name = "LIST", default_value = "[]",
          value_parser = parse_string_slice, allow_hyphen_values = true)]
    pub cipher_suites: Vec<StringSlice>,

    /// Minimum TLS version for server connections. Accepted values: VersionTLS10, VersionTLS11, VersionTLS12, VersionTLS13. Empty defaults to VersionTLS12. (This build implements VersionTLS12 and VersionTLS13.)
    #[arg(
        long = "tls-min-version",
        value_name = "VERSION",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub tls_min_version: String,

    /// The size of the two KNP server channels used in server for transferring data. One channel is for data coming from the Kubernetes API Server, and the other one is for data coming from the KNP agent.
    #[arg(long = "xfr-channel-size", value_name = "INT", default_value = "10",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub xfr_channel_size: i64,

    /// The number of packets buffered for each HTTP CONNECT frontend before backend receive processing blocks. [not supported by this build: only 10]
    #[arg(long = "frontend-write-channel-size", value_name = "INT", default_value = "10",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub frontend_write_channel_size: i64,

    /// Enable lease controller to publish and garbage collect proxy server leases. [not supported by this build: only false]
    #[arg(long = "enable-lease-controller", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub enable_lease_controller: bool,

    /// The namespace where lease objects are managed by the controller. [no effect in this build]
    #[arg(long = "lease-namespace", value_name = "NAMESPACE", default_value = DEFAULT_LEASE_NAMESPACE,
          allow_hyphen_values = true)]
    pub lease_namespace: String,

    /// The labels on which the lease objects are managed. [no effect in this build]
    #[arg(long = "lease-label", value_name = "LABELS", default_value = DEFAULT_LEASE_LABEL,
          allow_hyphen_values = true)]
    pub lease_label: String,

    /// Timeout duration for graceful shutdown of the server. The server will wait for active connections to close before forcefully terminating. Set to 0 to disable graceful shutdown (default: 0).
    #[arg(long = "graceful-shutdown-timeout", value_name = "DURATION", default_value = "0s",
          value_parser = parse_duration, allow_hyphen_values = true)]
    pub graceful_shutdown_timeout: GoDuration,

    /// Timeout duration for sending DIAL_REQ packets to backend agent streams and waiting for DIAL_RSP. Set to 0 to disable timeout (default: 0).
    #[arg(long = "backend-dial-timeout", value_name = "DURATION", default_value = "0s",
          value_parser = parse_duration, allow_hyphen_values = true)]
    pub backend_dial_timeout: GoDuration,

    /// Deprecated no-op: This behavior is now thread safe and always on. This flag will be removed in a future release.
    #[arg(long = "warn-on-channel-limit", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_go_bool,
          hide = true)]
    pub warn_on_channel_limit: Option<bool>,

    /// Threads that run the proxy's tasks; 0 means one per CPU (tokio's default, which also honours $TOKIO_WORKER_THREADS). An extension of this build: each forwarded packet hops between tasks, and fewer threads mean fewer cross-thread wake-ups, so a small value lowers CPU per byte on a busy or small machine at the price of a throughput ceiling of that many cores.
    #[arg(long = "worker-threads", value_name = "INT", default_value = "0",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub worker_threads: i64,

    /// TLS 1.3 session tickets sent to each client of the mTLS TCP frontend after its handshake (an extension of this build; upstream's Go server sends 1). kube-apiserver never resumes egress sessions, and the tickets leave as a flight of their own ahead of the CONNECT response, which the client must wake for: ≈50 µs of every dial here. Set 1 or 2 for clients that resume (konnectivity-client does).
    #[arg(long = "frontend-tls-session-tickets", value_name = "INT", default_value = "0",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub frontend_tls_session_tickets: i64,

    /// Also accept agents over QUIC (UDP) on the agent port and bind address, with the same certificates (an extension of this build; agents choose it with --transport=quic).
    #[arg(long = "enable-quic", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true", value_parser = parse_go_bool)]
    pub enable_quic: bool,

    /// Grant per-connection flow control to agents that ask for it (header konnectivity-flow-control); false behaves as an upstream server. Hidden: a test hook.
    #[arg(long = "flow-control", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true", value_parser = parse_go_bool,
          hide = true)]
    pub flow_control: bool,

    #[command(flatten)]
    pub klog: KlogFlags,
}

/// Go's `os.Stat` + `os.IsNotExist` check with upstream's message; other stat errors pass,
/// as upstream (the file is opened later and fails then with the real reason).
fn check_exists(what: &str, path: &str) -> Result<(), FlagError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FlagError::Invalid(format!(
            "error checking {what} {path}, got stat {path}: no such file or directory"
        ))),
        _ => Ok(()),
    }
}

/// Upstream's `ParseProxyStrategies`, duplicates dropped (a repeated strategy can never find an
/// agent its first occurrence did not).
pub fn parse_proxy_strategies(s: &str) -> Result<Vec<ProxyStrategy>, String> {
    let mut out = Vec::new();
    for name in s.split(',') {
        if name.is_empty() {
            continue;
        }
        let strategy = match name {
            "default" => ProxyStrategy::Default,
            "destHost" => ProxyStrategy::DestHost,
            "defaultRoute" => ProxyStrategy::DefaultRoute,
            other => return Err(format!("unknown proxy strategy: {other}")),
        };
        if !out.contains(&strategy) {
            out.push(strategy);
        }
    }
    if out.is_empty() {
        return Err("proxy strategies cannot be empty".to_string());
    }
    Ok(out)
}

/// Upstream's port rule: 1024–49151 ("reserved" below, "ephemeral" above).
fn check_port_range(port: i64, name: &str) -> Result<(), FlagError> {
    if port > MAX_PORT {
        return Err(FlagError::Invalid(format!(
            "please do not try to use ephemeral port {port} for the {name} port"
        )));
    }
    Ok(())
}

fn check_port_reserved(port: i64, name: &str) -> Result<(), FlagError> {
    if port < MIN_PORT {
        return Err(FlagError::Invalid(format!(
            "please do not try to use reserved port {port} for the {name} port"
        )));
    }
    Ok(())
}

/// A port already range-checked to 0 or 1024–49151.
fn to_u16(port: i64, flag: &str) -> Result<u16, FlagError> {
    u16::try_from(port)
        .map_err(|_| FlagError::Invalid(format!("--{flag}={port} is not a TCP port")))
}

fn non_negative(flag: &str, d: GoDuration) -> Result<std::time::Duration, FlagError> {
    d.to_std()
        .ok_or_else(|| FlagError::Invalid(format!("{flag} must be >= 0, got {d}")))
}

impl ServerFlags {
    /// Messages for `main` to log once logging is up: deprecated flags that were given and
    /// flags that are accepted but have no effect in this build.
    pub fn notices(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.warn_on_channel_limit.is_some() {
            out.push(
                "Flag --warn-on-channel-limit has been deprecated, This behavior is now thread safe \
                 and always on. This flag will be removed in a future release."
                    .to_string(),
            );
        }
        let ignored = [
            ("kubeconfig", self.kubeconfig.is_empty()),
            ("kubeconfig-qps", self.kubeconfig_qps == 0.0),
            ("kubeconfig-burst", self.kubeconfig_burst == 0),
            (
                "kube-api-content-type",
                self.kube_api_content_type == DEFAULT_KUBE_API_CONTENT_TYPE,
            ),
            (
                "lease-namespace",
                self.lease_namespace == DEFAULT_LEASE_NAMESPACE,
            ),
            ("lease-label", self.lease_label == DEFAULT_LEASE_LABEL),
        ];
        for (flag, is_default) in ignored {
            if !is_default {
                out.push(format!(
                    "--{flag} has no effect: it only configures agent token authentication and the \
                     lease controller, which this build does not have (upstream ignores it too while \
                     both are off)"
                ));
            }
        }
        out
    }

    /// The settings of this build's extensions (`--enable-quic`, `--worker-threads`,
    /// `--frontend-tls-session-tickets`).
    pub fn extensions(&self) -> Result<ServerExtensions, FlagError> {
        let worker_threads = konnectivity_runtime::worker_threads_flag(self.worker_threads)
            .map_err(FlagError::Invalid)?;
        let frontend_session_tickets = usize::try_from(self.frontend_tls_session_tickets)
            .ok()
            .filter(|n| *n <= MAX_FRONTEND_SESSION_TICKETS)
            .ok_or_else(|| {
                FlagError::Invalid(format!(
                    "--frontend-tls-session-tickets must be from 0 to \
                     {MAX_FRONTEND_SESSION_TICKETS}, got {}",
                    self.frontend_tls_session_tickets
                ))
            })?;
        Ok(ServerExtensions {
            enable_quic: self.enable_quic,
            flow_control: self.flow_control,
            worker_threads,
            frontend_session_tickets,
        })
    }

    /// Validates as upstream's `ProxyRunOptions.Validate()` does (same order, same messages),
    /// applies this build's limits, and builds the configuration. `$PROXY_SERVER_ID` supplies
    /// the server id when `--server-id` is absent.
    pub fn into_config(self) -> Result<ServerConfig, FlagError> {
        self.into_config_with_env(&|name| std::env::var(name).ok())
    }

    /// [`ServerFlags::into_config`] with the environment supplied by the caller (tests).
    pub fn into_config_with_env(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ServerConfig, FlagError> {
        let extensions = self.extensions()?;
        let invalid = |m: String| Err(FlagError::Invalid(m));

        // --- upstream Validate(), in its order ---
        if !self.server_key.is_empty() {
            check_exists("server key", &self.server_key)?;
            if self.server_cert.is_empty() {
                return invalid(format!(
                    "cannot have server cert empty when server key is set to {:?}",
                    self.server_key
                ));
            }
        }
        if !self.server_cert.is_empty() {
            check_exists("server cert", &self.server_cert)?;
            if self.server_key.is_empty() {
                return invalid(format!(
                    "cannot have server key empty when server cert is set to {:?}",
                    self.server_cert
                ));
            }
        }
        if !self.server_ca_cert.is_empty() {
            check_exists("server CA cert", &self.server_ca_cert)?;
        }
        if !self.cluster_key.is_empty() {
            check_exists("cluster key", &self.cluster_key)?;
            if self.cluster_cert.is_empty() {
                return invalid(format!(
                    "cannot have cluster cert empty when cluster key is set to {:?}",
                    self.cluster_key
                ));
            }
        }
        if !self.cluster_cert.is_empty() {
            check_exists("cluster cert", &self.cluster_cert)?;
            if self.cluster_key.is_empty() {
                return invalid(format!(
                    "cannot have cluster key empty when cluster cert is set to {:?}",
                    self.cluster_cert
                ));
            }
        }
        if !self.cluster_ca_cert.is_empty() {
            check_exists("cluster CA cert", &self.cluster_ca_cert)?;
        }
        let mode = match self.mode.as_str() {
            "grpc" => FrontendMode::Grpc,
            "http-connect" => FrontendMode::HttpConnect,
            other => {
                return invalid(format!(
                    "mode must be set to either 'grpc' or 'http-connect' not {other:?}"
                ))
            }
        };
        let uds = !self.uds_name.is_empty();
        if uds {
            if self.server_port != 0 {
                return invalid(format!(
                    "server port should be set to 0 not {} for UDS",
                    self.server_port
                ));
            }
            if !self.server_key.is_empty() {
                return invalid("server key should not be set for UDS".to_string());
            }
            if !self.server_cert.is_empty() {
                return invalid("server cert should not be set for UDS".to_string());
            }
            if !self.server_ca_cert.is_empty() {
                return invalid("server ca cert should not be set for UDS".to_string());
            }
        } else if self.server_ca_cert.is_empty() {
            return invalid(
                "server ca cert must be set when in TCP mode (uds-name is empty)".to_string(),
            );
        }
        check_port_range(self.server_port, "server")?;
        check_port_range(self.agent_port, "agent")?;
        check_port_range(self.admin_port, "admin")?;
        check_port_range(self.health_port, "health")?;
        if !uds {
            check_port_reserved(self.server_port, "server")?;
        }
        check_port_reserved(self.agent_port, "agent")?;
        check_port_reserved(self.admin_port, "admin")?;
        check_port_reserved(self.health_port, "health")?;
        if self.enable_contention_profiling && !self.enable_profiling {
            return invalid(
                "if --enable-contention-profiling is set, --enable-profiling must also be set"
                    .to_string(),
            );
        }
        let using_sa_auth = !self.agent_namespace.is_empty()
            || !self.agent_service_account.is_empty()
            || !self.authentication_audience.is_empty();
        if using_sa_auth {
            if !self.cluster_ca_cert.is_empty() {
                return invalid(
                    "--cluster-ca-cert can not be used when agent authentication is enabled"
                        .to_string(),
                );
            }
            if self.agent_namespace.is_empty() {
                return invalid(
                    "--agent-namespace cannot be empty when agent authentication is enabled"
                        .to_string(),
                );
            }
            if self.agent_service_account.is_empty() {
                return invalid(
                    "--agent-service-account cannot be empty when agent authentication is enabled"
                        .to_string(),
                );
            }
            if self.authentication_audience.is_empty() {
                return invalid(
                    "--authentication-audience cannot be empty when agent authentication is enabled"
                        .to_string(),
                );
            }
        }
        if !self.kubeconfig.is_empty()
            && std::fs::metadata(&self.kubeconfig)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            return invalid(format!(
                "checking KubeconfigPath {:?}, got stat {}: no such file or directory",
                self.kubeconfig, self.kubeconfig
            ));
        }
        if self.proxy_strategies.is_empty() {
            return invalid("ProxyStrategies cannot be empty".to_string());
        }
        let proxy_strategies = parse_proxy_strategies(&self.proxy_strategies)
            .map_err(|e| FlagError::Invalid(format!("invalid proxy strategies: {e}")))?;
        if self.xfr_channel_size <= 0 {
            return invalid(format!(
                "channel size {} must be greater than 0",
                self.xfr_channel_size
            ));
        }
        if self.frontend_write_channel_size <= 0 {
            return invalid(format!(
                "frontend write channel size {} must be greater than 0",
                self.frontend_write_channel_size
            ));
        }
        let cipher_suites = flatten_slices(&self.cipher_suites);
        let tls = TlsTuning::parse(&self.tls_min_version, &cipher_suites)?;
        if self.graceful_shutdown_timeout.is_negative() {
            return invalid(format!(
                "graceful-shutdown-timeout must be >= 0, got {}",
                self.graceful_shutdown_timeout
            ));
        }
        if self.backend_dial_timeout.is_negative() {
            return invalid(format!(
                "backend-dial-timeout must be >= 0, got {}",
                self.backend_dial_timeout
            ));
        }

        // --- features this build does not have ---
        const NO_AUTH: &str = "agent token authentication (TokenReview) is not implemented yet";
        for (flag, value) in [
            ("agent-namespace", &self.agent_namespace),
            ("agent-service-account", &self.agent_service_account),
            ("authentication-audience", &self.authentication_audience),
        ] {
            unsupported_unless_default(
                flag,
                value.is_empty(),
                value,
                display_string_default(""),
                NO_AUTH,
            )?;
        }
        require_default(
            "enable-lease-controller",
            &self.enable_lease_controller,
            &false,
            "leases are not implemented yet",
        )?;
        require_default(
            "enable-profiling",
            &self.enable_profiling,
            &false,
            "there is no Go pprof endpoint in a Rust binary",
        )?;
        require_default(
            "enable-contention-profiling",
            &self.enable_contention_profiling,
            &false,
            "there is no Go pprof endpoint in a Rust binary",
        )?;
        require_default(
            "frontend-write-channel-size",
            &self.frontend_write_channel_size,
            &DEFAULT_FRONTEND_WRITE_CHANNEL_SIZE,
            "the HTTP CONNECT frontend queue length is fixed in this build",
        )?;

        // --- what this build needs to represent the configuration ---
        if self.cluster_cert.is_empty() || self.cluster_key.is_empty() {
            return invalid(
                "--cluster-cert and --cluster-key are required: the agent listener always uses TLS"
                    .to_string(),
            );
        }
        let keepalive_time = non_negative("keepalive-time", self.keepalive_time)?;
        let frontend_keepalive_time =
            non_negative("frontend-keepalive-time", self.frontend_keepalive_time)?;
        let graceful_shutdown_timeout =
            non_negative("graceful-shutdown-timeout", self.graceful_shutdown_timeout)?;
        let backend_dial_timeout = non_negative("backend-dial-timeout", self.backend_dial_timeout)?;
        let server_count = u32::try_from(self.server_count).map_err(|_| {
            FlagError::Invalid(format!(
                "server count {} must be between 0 and {}",
                self.server_count,
                u32::MAX
            ))
        })?;
        let xfr_channel_size = usize::try_from(self.xfr_channel_size).map_err(|_| {
            FlagError::Invalid(format!(
                "channel size {} is too large",
                self.xfr_channel_size
            ))
        })?;
        let server_id = match self.server_id {
            Some(id) => id,
            None => env(SERVER_ID_ENV)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        };
        if server_id.is_empty() {
            return invalid(
                "--server-id must not be empty: agents identify servers by it (omit the flag for a random UUID)"
                    .to_string(),
            );
        }

        let listen = if uds {
            FrontendListen::Uds {
                path: PathBuf::from(&self.uds_name),
                delete_existing: self.delete_existing_uds_file,
            }
        } else {
            if self.server_cert.is_empty() {
                return invalid(
                    "--server-cert and --server-key are required when the frontend listens on TCP \
                     (uds-name is empty): the TCP frontend always uses TLS"
                        .to_string(),
                );
            }
            FrontendListen::Tcp {
                addr: bind_addr(
                    "server-bind-address",
                    &self.server_bind_address,
                    to_u16(self.server_port, "server-port")?,
                )?,
                cert: PathBuf::from(&self.server_cert),
                key: PathBuf::from(&self.server_key),
                client_ca: PathBuf::from(&self.server_ca_cert),
            }
        };
        let agent_addr: SocketAddr = bind_addr(
            "agent-bind-address",
            &self.agent_bind_address,
            to_u16(self.agent_port, "agent-port")?,
        )?;
        let health_addr = bind_addr(
            "health-bind-address",
            &self.health_bind_address,
            to_u16(self.health_port, "health-port")?,
        )?;
        let admin_addr = bind_addr(
            "admin-bind-address",
            &self.admin_bind_address,
            to_u16(self.admin_port, "admin-port")?,
        )?;

        Ok(ServerConfig {
            frontend: FrontendConfig {
                mode,
                listen,
                keepalive_time: frontend_keepalive_time,
            },
            backend: BackendConfig {
                addr: agent_addr,
                cert: PathBuf::from(&self.cluster_cert),
                key: PathBuf::from(&self.cluster_key),
                client_ca: (!self.cluster_ca_cert.is_empty())
                    .then(|| PathBuf::from(&self.cluster_ca_cert)),
                keepalive_time,
            },
            tls,
            proxy_strategies,
            server_id,
            server_count,
            xfr_channel_size,
            backend_dial_timeout,
            graceful_shutdown_timeout,
            health_addr,
            admin_addr,
            extensions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::net::IpAddr;
    use std::time::Duration;

    use konnectivity_tls::TlsVersion;

    /// Dummy PEM paths: validation only checks that they exist.
    struct Files {
        _dir: tempfile::TempDir,
        server_cert: String,
        server_key: String,
        server_ca: String,
        cluster_cert: String,
        cluster_key: String,
        cluster_ca: String,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let mk = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, "not parsed here").expect("write");
            p.display().to_string()
        };
        Files {
            server_cert: mk("server.crt"),
            server_key: mk("server.key"),
            server_ca: mk("server-ca.crt"),
            cluster_cert: mk("cluster.crt"),
            cluster_key: mk("cluster.key"),
            cluster_ca: mk("cluster-ca.crt"),
            _dir: dir,
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(args: &[String]) -> Result<ServerFlags, clap::Error> {
        ServerFlags::try_parse_from(
            std::iter::once("proxy-server".to_string()).chain(args.iter().cloned()),
        )
    }

    fn config(args: &[String]) -> Result<ServerConfig, FlagError> {
        parse(args)
            .expect("flags parse")
            .into_config_with_env(&no_env)
    }

    fn err(args: &[String]) -> String {
        config(args)
            .expect_err("config must be rejected")
            .to_string()
    }

    /// The mandatory flags for the default (TCP) frontend.
    fn tcp_args(f: &Files) -> Vec<String> {
        vec![
            format!("--server-cert={}", f.server_cert),
            format!("--server-key={}", f.server_key),
            format!("--server-ca-cert={}", f.server_ca),
            format!("--cluster-cert={}", f.cluster_cert),
            format!("--cluster-key={}", f.cluster_key),
        ]
    }

    fn uds_args(f: &Files) -> Vec<String> {
        vec![
            "--uds-name=/run/konnectivity/konnectivity-server.socket".to_string(),
            "--server-port=0".to_string(),
            format!("--cluster-cert={}", f.cluster_cert),
            format!("--cluster-key={}", f.cluster_key),
        ]
    }

    fn with(mut base: Vec<String>, extra: &[&str]) -> Vec<String> {
        base.extend(extra.iter().map(|s| s.to_string()));
        base
    }

    #[test]
    fn defaults_equal_upstream() {
        let f = files();
        let c = config(&tcp_args(&f)).expect("defaults are valid");
        let all = goflags_unspecified();
        assert_eq!(c.frontend.mode, FrontendMode::Grpc);
        match &c.frontend.listen {
            FrontendListen::Tcp {
                addr,
                cert,
                key,
                client_ca,
            } => {
                assert_eq!(*addr, SocketAddr::new(all, 8090));
                assert_eq!(cert, &PathBuf::from(&f.server_cert));
                assert_eq!(key, &PathBuf::from(&f.server_key));
                assert_eq!(client_ca, &PathBuf::from(&f.server_ca));
            }
            other => panic!("expected TCP frontend, got {other:?}"),
        }
        assert_eq!(c.frontend.keepalive_time, Duration::from_secs(3600));
        assert_eq!(c.backend.addr, SocketAddr::new(all, 8091));
        assert_eq!(c.backend.client_ca, None);
        assert_eq!(c.backend.keepalive_time, Duration::from_secs(3600));
        assert_eq!(c.tls.min_version, TlsVersion::Tls12);
        assert!(c.tls.cipher_suites.is_empty());
        assert_eq!(c.proxy_strategies, vec![ProxyStrategy::Default]);
        assert!(
            uuid::Uuid::parse_str(&c.server_id).is_ok(),
            "{}",
            c.server_id
        );
        assert_eq!(c.server_count, 1);
        assert_eq!(c.xfr_channel_size, 10);
        assert_eq!(c.backend_dial_timeout, Duration::ZERO);
        assert_eq!(c.graceful_shutdown_timeout, Duration::ZERO);
        assert_eq!(c.health_addr, SocketAddr::new(all, 8092));
        assert_eq!(
            c.admin_addr,
            "127.0.0.1:8095".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(parse(&tcp_args(&f)).expect("parse").klog.v, 4);
    }

    fn goflags_unspecified() -> IpAddr {
        konnectivity_goflags::unspecified_ip()
    }

    #[test]
    fn uds_frontend_with_server_port_zero() {
        let f = files();
        let c = config(&with(
            uds_args(&f),
            &["--delete-existing-uds-file=false", "--mode=http-connect"],
        ))
        .expect("uds config");
        assert_eq!(c.frontend.mode, FrontendMode::HttpConnect);
        match c.frontend.listen {
            FrontendListen::Uds {
                path,
                delete_existing,
            } => {
                assert_eq!(
                    path,
                    PathBuf::from("/run/konnectivity/konnectivity-server.socket")
                );
                assert!(!delete_existing);
            }
            other => panic!("expected UDS, got {other:?}"),
        }
    }

    #[test]
    fn uds_with_server_port_is_rejected() {
        let f = files();
        let mut args = uds_args(&f);
        args.retain(|a| a != "--server-port=0");
        assert_eq!(
            err(&args),
            "server port should be set to 0 not 8090 for UDS"
        );
        let args = with(
            uds_args(&f),
            &[
                &format!("--server-cert={}", f.server_cert),
                &format!("--server-key={}", f.server_key),
            ],
        );
        assert_eq!(err(&args), "server key should not be set for UDS");
    }

    #[test]
    fn equals_and_space_forms_are_equivalent() {
        let f = files();
        let eq = config(&with(
            tcp_args(&f),
            &[
                "--agent-port=9091",
                "--keepalive-time=30s",
                "--proxy-strategies=destHost,defaultRoute",
                "--server-id=abc",
            ],
        ))
        .expect("equals form");
        let sp = config(&with(
            tcp_args(&f),
            &[
                "--agent-port",
                "9091",
                "--keepalive-time",
                "30s",
                "--proxy-strategies",
                "destHost,defaultRoute",
                "--server-id",
                "abc",
            ],
        ))
        .expect("space form");
        for c in [&eq, &sp] {
            assert_eq!(c.backend.addr.port(), 9091);
            assert_eq!(c.backend.keepalive_time, Duration::from_secs(30));
            assert_eq!(
                c.proxy_strategies,
                vec![ProxyStrategy::DestHost, ProxyStrategy::DefaultRoute]
            );
            assert_eq!(c.server_id, "abc");
        }
    }

    #[test]
    fn quic_listener_is_on_by_default_and_can_be_disabled() {
        let f = files();
        assert!(
            parse(&tcp_args(&f))
                .expect("default")
                .extensions()
                .expect("valid")
                .enable_quic
        );
        assert!(ServerExtensions::default().enable_quic);
        let off = parse(&with(tcp_args(&f), &["--enable-quic=false"])).expect("off");
        assert!(!off.extensions().expect("valid").enable_quic);
        assert!(config(&with(tcp_args(&f), &["--enable-quic=false"])).is_ok());
        assert!(parse(&with(tcp_args(&f), &["--enable-quic=maybe"])).is_err());
    }

    #[test]
    fn frontend_session_tickets_default_to_none_and_are_bounded() {
        let f = files();
        let c = config(&tcp_args(&f)).expect("default");
        assert_eq!(
            c.extensions.frontend_session_tickets, 0,
            "kube-apiserver never resumes"
        );
        let c = config(&with(tcp_args(&f), &["--frontend-tls-session-tickets=2"])).expect("two");
        assert_eq!(c.extensions.frontend_session_tickets, 2);
        for bad in ["-1", "9"] {
            let arg = format!("--frontend-tls-session-tickets={bad}");
            let err = config(&with(tcp_args(&f), &[arg.as_str()])).expect_err("out of range");
            assert!(
                err.to_string()
                    .contains("--frontend-tls-session-tickets must be from 0 to 8"),
                "{err}"
            );
        }
    }

    #[test]
    fn worker_threads_default_to_one_per_cpu_and_refuse_negatives() {
        let f = files();
        let c = config(&tcp_args(&f)).expect("default");
        assert_eq!(c.extensions.worker_threads, 0);
        let c = config(&with(tcp_args(&f), &["--worker-threads=1"])).expect("one");
        assert_eq!(c.extensions.worker_threads, 1);
        let err = config(&with(tcp_args(&f), &["--worker-threads=-1"])).expect_err("negative");
        assert!(err.to_string().contains("--worker-threads"), "{err}");
    }

    #[test]
    fn repeated_flag_last_value_wins() {
        let f = files();
        let c = config(&with(
            tcp_args(&f),
            &["--server-count=2", "--server-count=3"],
        ))
        .expect("config");
        assert_eq!(c.server_count, 3);
    }

    #[test]
    fn server_id_comes_from_flag_then_env_then_uuid() {
        let f = files();
        let env = |name: &str| (name == SERVER_ID_ENV).then(|| "from-env".to_string());
        let from_env = parse(&tcp_args(&f))
            .expect("parse")
            .into_config_with_env(&env)
            .expect("config");
        assert_eq!(from_env.server_id, "from-env");
        let from_flag = parse(&with(tcp_args(&f), &["--server-id=from-flag"]))
            .expect("parse")
            .into_config_with_env(&env)
            .expect("config");
        assert_eq!(from_flag.server_id, "from-flag");
        assert!(
            err(&with(tcp_args(&f), &["--server-id="])).contains("--server-id must not be empty")
        );
    }

    #[test]
    fn boolean_flags_follow_pflag_rules() {
        let f = files();
        let flags = parse(&with(uds_args(&f), &["--delete-existing-uds-file"])).expect("bare bool");
        assert!(flags.delete_existing_uds_file);
        let flags = parse(&with(uds_args(&f), &["--delete-existing-uds-file=F"])).expect("F");
        assert!(!flags.delete_existing_uds_file);
        // `--flag false` does not consume `false`: it is a stray positional, which is an error.
        assert!(parse(&with(
            uds_args(&f),
            &["--delete-existing-uds-file", "false"]
        ))
        .is_err());
        assert!(parse(&with(uds_args(&f), &["--delete-existing-uds-file=maybe"])).is_err());
    }

    #[test]
    fn invalid_ports_are_rejected_with_upstream_text() {
        let f = files();
        assert_eq!(
            err(&with(tcp_args(&f), &["--agent-port=80"])),
            "please do not try to use reserved port 80 for the agent port"
        );
        assert_eq!(
            err(&with(tcp_args(&f), &["--health-port=50000"])),
            "please do not try to use ephemeral port 50000 for the health port"
        );
        assert_eq!(
            err(&with(tcp_args(&f), &["--admin-port=70000"])),
            "please do not try to use ephemeral port 70000 for the admin port"
        );
        assert_eq!(
            err(&with(tcp_args(&f), &["--server-port=0"])),
            "please do not try to use reserved port 0 for the server port"
        );
        assert_eq!(
            err(&with(tcp_args(&f), &["--agent-port=-1"])),
            "please do not try to use reserved port -1 for the agent port"
        );
        assert!(parse(&with(tcp_args(&f), &["--agent-port=eighty"])).is_err());
        assert!(config(&with(
            tcp_args(&f),
            &["--agent-port=1024", "--health-port=49151"]
        ))
        .is_ok());
    }

    #[test]
    fn cert_key_pairing_and_existence_are_checked() {
        let f = files();
        let args = vec![
            format!("--server-cert={}", f.server_cert),
            format!("--server-ca-cert={}", f.server_ca),
            format!("--cluster-cert={}", f.cluster_cert),
            format!("--cluster-key={}", f.cluster_key),
        ];
        assert_eq!(
            err(&args),
            format!(
                "cannot have server key empty when server cert is set to {:?}",
                f.server_cert
            )
        );
        let args = vec![
            format!("--cluster-cert={}", f.cluster_cert),
            "--uds-name=/tmp/s".to_string(),
            "--server-port=0".to_string(),
        ];
        assert_eq!(
            err(&args),
            format!(
                "cannot have cluster key empty when cluster cert is set to {:?}",
                f.cluster_cert
            )
        );
        let missing = with(tcp_args(&f), &["--cluster-ca-cert=/nonexistent/ca.crt"]);
        assert_eq!(
            err(&missing),
            "error checking cluster CA cert /nonexistent/ca.crt, got stat /nonexistent/ca.crt: no such file or directory"
        );
    }

    #[test]
    fn tcp_frontend_needs_a_ca_and_agent_listener_needs_cluster_certs() {
        let f = files();
        let args = vec![
            format!("--server-cert={}", f.server_cert),
            format!("--server-key={}", f.server_key),
            format!("--cluster-cert={}", f.cluster_cert),
            format!("--cluster-key={}", f.cluster_key),
        ];
        assert_eq!(
            err(&args),
            "server ca cert must be set when in TCP mode (uds-name is empty)"
        );
        let args = vec![
            "--uds-name=/tmp/s".to_string(),
            "--server-port=0".to_string(),
        ];
        assert!(err(&args).contains("--cluster-cert and --cluster-key are required"));
        let args = with(
            vec![format!("--server-ca-cert={}", f.server_ca)],
            &[
                &format!("--cluster-cert={}", f.cluster_cert),
                &format!("--cluster-key={}", f.cluster_key),
            ],
        );
        assert!(err(&args).contains("--server-cert and --server-key are required"));
    }

    #[test]
    fn cluster_ca_cert_is_forbidden_with_agent_authentication() {
        let f = files();
        let args = with(
            tcp_args(&f),
            &[
                &format!("--cluster-ca-cert={}", f.cluster_ca),
                "--agent-namespace=kube-system",
            ],
        );
        assert_eq!(
            err(&args),
            "--cluster-ca-cert can not be used when agent authentication is enabled"
        );
        let args = with(tcp_args(&f), &["--agent-namespace=kube-system"]);
        assert_eq!(
            err(&args),
            "--agent-service-account cannot be empty when agent authentication is enabled"
        );
        // A complete authentication setup passes upstream's checks, then hits this build's limit.
        let args = with(
            tcp_args(&f),
            &[
                "--agent-namespace=kube-system",
                "--agent-service-account=konnectivity-agent",
                "--authentication-audience=system:konnectivity-server",
            ],
        );
        let e = err(&args);
        assert!(
            e.starts_with("--agent-namespace=kube-system is not supported by this build"),
            "{e}"
        );
    }

    #[test]
    fn proxy_strategies_parse_with_upstream_errors() {
        let f = files();
        let c = config(&with(
            tcp_args(&f),
            &["--proxy-strategies=destHost,default,destHost"],
        ))
        .expect("config");
        assert_eq!(
            c.proxy_strategies,
            vec![ProxyStrategy::DestHost, ProxyStrategy::Default]
        );
        assert_eq!(
            err(&with(tcp_args(&f), &["--proxy-strategies=destCIDR"])),
            "invalid proxy strategies: unknown proxy strategy: destCIDR"
        );
        assert_eq!(
            err(&with(tcp_args(&f), &["--proxy-strategies="])),
            "ProxyStrategies cannot be empty"
        );
        assert_eq!(
            err(&with(tcp_args(&f), &["--proxy-strategies=,"])),
            "invalid proxy strategies: proxy strategies cannot be empty"
        );
    }

    #[test]
    fn tls_tuning_is_parsed_from_go_names() {
        let f = files();
        let c = config(&with(
            tcp_args(&f),
            &[
                "--tls-min-version=VersionTLS13",
                "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "--cipher-suites",
                "TLS_AES_128_GCM_SHA256",
            ],
        ))
        .expect("config");
        assert_eq!(c.tls.min_version, TlsVersion::Tls13);
        assert_eq!(
            c.tls.cipher_suites,
            vec![
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_AES_128_GCM_SHA256"
            ]
        );
        assert!(matches!(
            config(&with(tcp_args(&f), &["--tls-min-version=VersionTLS99"])),
            Err(FlagError::Tls(_))
        ));
        assert!(matches!(
            config(&with(tcp_args(&f), &["--cipher-suites=TLS_NOPE"])),
            Err(FlagError::Tls(_))
        ));
    }

    #[test]
    fn durations_use_go_syntax_and_must_not_be_negative() {
        let f = files();
        let c = config(&with(
            tcp_args(&f),
            &[
                "--backend-dial-timeout=2.5s",
                "--graceful-shutdown-timeout=1m30s",
                "--frontend-keepalive-time=90m",
            ],
        ))
        .expect("config");
        assert_eq!(c.backend_dial_timeout, Duration::from_millis(2500));
        assert_eq!(c.graceful_shutdown_timeout, Duration::from_secs(90));
        assert_eq!(c.frontend.keepalive_time, Duration::from_secs(5400));
        assert_eq!(
            err(&with(tcp_args(&f), &["--graceful-shutdown-timeout", "-1s"])),
            "graceful-shutdown-timeout must be >= 0, got -1s"
        );
        assert_eq!(
            err(&with(tcp_args(&f), &["--backend-dial-timeout=-1m0s"])),
            "backend-dial-timeout must be >= 0, got -1m0s"
        );
        assert!(parse(&with(tcp_args(&f), &["--keepalive-time=1d"])).is_err());
    }

    #[test]
    fn mode_and_channel_size_are_validated() {
        let f = files();
        assert_eq!(
            err(&with(tcp_args(&f), &["--mode=socks"])),
            "mode must be set to either 'grpc' or 'http-connect' not \"socks\""
        );
        assert_eq!(
            err(&with(tcp_args(&f), &["--xfr-channel-size=0"])),
            "channel size 0 must be greater than 0"
        );
        assert_eq!(
            config(&with(tcp_args(&f), &["--xfr-channel-size=0x20"]))
                .expect("hex")
                .xfr_channel_size,
            32
        );
    }

    /// Every flag upstream's `VisitAll` would print, at its printed default.
    fn every_flag_at_printed_default(f: &Files) -> Vec<String> {
        let mut args = tcp_args(f);
        args.extend(
            [
                "--admin-bind-address=127.0.0.1",
                "--admin-port=8095",
                "--agent-bind-address=",
                "--agent-namespace=",
                "--agent-port=8091",
                "--agent-service-account=",
                "--authentication-audience=",
                "--backend-dial-timeout=0s",
                "--cipher-suites=[]",
                "--cluster-ca-cert=",
                "--delete-existing-uds-file=true",
                "--enable-contention-profiling=false",
                "--enable-lease-controller=false",
                "--enable-profiling=false",
                "--frontend-keepalive-time=1h0m0s",
                "--frontend-write-channel-size=10",
                "--graceful-shutdown-timeout=0s",
                "--health-bind-address=",
                "--health-port=8092",
                "--keepalive-time=1h0m0s",
                "--kube-api-content-type=application/vnd.kubernetes.protobuf",
                "--kubeconfig=",
                "--kubeconfig-burst=0",
                "--kubeconfig-qps=0",
                "--lease-label=k8s-app=konnectivity-server",
                "--lease-namespace=kube-system",
                "--mode=grpc",
                "--proxy-strategies=default",
                "--server-bind-address=",
                "--server-count=1",
                "--server-id=4b7d1c2e-0000-4000-8000-000000000001",
                "--server-port=8090",
                "--tls-min-version=",
                "--uds-name=",
                "--warn-on-channel-limit=true",
                "--xfr-channel-size=10",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args
    }

    #[test]
    fn every_flag_at_its_printed_default_is_accepted() {
        let f = files();
        let flags = parse(&every_flag_at_printed_default(&f)).expect("parse");
        assert_eq!(
            flags.notices().len(),
            1,
            "only the deprecation notice: {:?}",
            flags.notices()
        );
        let c = flags.into_config_with_env(&no_env).expect("config");
        assert_eq!(c.server_id, "4b7d1c2e-0000-4000-8000-000000000001");
    }

    #[test]
    fn unsupported_flags_are_rejected_at_non_default_values() {
        let f = files();
        for (arg, flag) in [
            ("--enable-lease-controller", "enable-lease-controller"),
            ("--enable-lease-controller=true", "enable-lease-controller"),
            ("--enable-profiling", "enable-profiling"),
            (
                "--frontend-write-channel-size=20",
                "frontend-write-channel-size",
            ),
        ] {
            let e = err(&with(tcp_args(&f), &[arg]));
            assert!(e.starts_with(&format!("--{flag}=")), "{arg}: {e}");
            assert!(e.contains("is not supported by this build"), "{arg}: {e}");
        }
        assert_eq!(
            err(&with(tcp_args(&f), &["--enable-contention-profiling"])),
            "if --enable-contention-profiling is set, --enable-profiling must also be set"
        );
    }

    #[test]
    fn flags_of_absent_features_that_upstream_ignores_are_accepted_with_a_notice() {
        let f = files();
        let args = with(
            tcp_args(&f),
            &["--lease-namespace=other", "--kubeconfig-qps=5"],
        );
        let flags = parse(&args).expect("parse");
        let notices = flags.notices();
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert!(
            notices[0].starts_with("--kubeconfig-qps has no effect"),
            "{notices:?}"
        );
        assert!(flags.into_config_with_env(&no_env).is_ok());
        let e = err(&with(
            tcp_args(&f),
            &["--kubeconfig=/nonexistent/kubeconfig"],
        ));
        assert!(e.starts_with("checking KubeconfigPath"), "{e}");
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let f = files();
        let e = parse(&with(tcp_args(&f), &["--no-such-flag=1"])).expect_err("unknown flag");
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn help_lists_flags_with_go_style_defaults() {
        let help = ServerFlags::command().render_long_help().to_string();
        for needle in [
            "--keepalive-time",
            "[default: 1h0m0s]",
            "--graceful-shutdown-timeout",
            "[default: 0s]",
            "--proxy-strategies",
            "--cipher-suites",
            "[default: []]",
            "--logtostderr",
            "-v, --v",
            "PROXY_SERVER_ID",
        ] {
            assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
        }
        assert!(
            !help.contains("--warn-on-channel-limit"),
            "deprecated flag is hidden"
        );
        ServerFlags::command().debug_assert();
    }
}
