//! The proxy-agent command line: every upstream flag, with upstream's names, defaults, help
//! texts and validation messages, turned into a validated [`AgentConfig`].
//!
//! Syntax is Go's (see `konnectivity_goflags`): `--name=value` and `--name value`, booleans only
//! as `--flag` / `--flag=value`, Go durations, pflag string slices, a repeated flag's last value
//! wins. Upstream's external-agent test harness passes every flag as `--name=value` with the
//! printed default (`--alpn-proto=[]`, `--keepalive-time=1h0m0s`, the hidden `--lease-label`);
//! all of that is accepted.
//!
//! Flags of features this build does not have (lease counting, pprof) are accepted at their
//! defaults and rejected otherwise, naming the flag. Flags that only configure lease counting
//! (`--lease-namespace`, `--lease-label-selector`/`--lease-label`, `--kubeconfig`,
//! `--kube-api-content-type`) are accepted at any valid value because upstream ignores them too
//! while `--count-server-leases=false`; [`AgentFlags::notices`] lists them for `main` to log.
//! `--server-count-source` is honoured: without lease counting, `default` and `max` both mean
//! "the count servers report", exactly as upstream.

use std::path::PathBuf;

use clap::Parser;
use konnectivity_goflags::{
    bind_addr, flatten_slices, parse_duration, parse_go_bool, parse_go_int, parse_query,
    parse_string_slice, require_default, BindAddrError, GoDuration, KlogFlags, StringSlice,
    UnsupportedFlag,
};

use crate::config::{
    AgentConfig, AgentExtensions, AgentIdentity, ServerTarget, SyncConfig, TlsTuning, Transport,
};

/// Environment variable supplying `--agent-id`'s default.
pub const AGENT_ID_ENV: &str = "PROXY_AGENT_ID";

/// Upstream's `--xfr-channel-size` default for the agent (packets per endpoint queue).
pub const DEFAULT_XFR_CHANNEL_SIZE: i64 = 150;
/// Upstream's `--kube-api-content-type` default.
const DEFAULT_KUBE_API_CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// Upstream's `--lease-namespace` default.
const DEFAULT_LEASE_NAMESPACE: &str = "kube-system";
/// Upstream's `--lease-label-selector` default.
const DEFAULT_LEASE_LABEL_SELECTOR: &str = "k8s-app=konnectivity-server";

/// Identifier keys the server understands (`agentidentifiers` header).
const IDENTIFIER_KEYS: &[&str] = &["ipv4", "ipv6", "host", "cidr", "default-route"];

/// Longest label name or value Kubernetes accepts.
const MAX_LABEL_LEN: usize = 63;
/// Longest label-key prefix (a DNS subdomain) Kubernetes accepts.
const MAX_LABEL_PREFIX_LEN: usize = 253;

/// Why the flags cannot become a configuration. Texts of `Invalid` are upstream's where
/// upstream has a check.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// A value or combination upstream rejects (upstream's wording), or one this build cannot
    /// represent (wording says what to change).
    #[error("{0}")]
    Invalid(String),
    /// A flag of a feature this build does not have, set to a non-default value.
    #[error(transparent)]
    Unsupported(#[from] UnsupportedFlag),
    /// A bind address that does not resolve.
    #[error(transparent)]
    BindAddr(#[from] BindAddrError),
}

/// Every upstream proxy-agent flag plus the klog flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "proxy-agent",
    about = "A gRPC agent, Connects to the proxy and then allows traffic to be forwarded to it.",
    args_override_self = true,
    disable_version_flag = true
)]
pub struct AgentFlags {
    /// If non-empty secure communication with this cert.
    #[arg(
        long = "agent-cert",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub agent_cert: String,

    /// If non-empty secure communication with this key.
    #[arg(
        long = "agent-key",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub agent_key: String,

    /// If non-empty the CAs we use to validate clients. (Required: the proxy-server's certificate is verified against it.)
    #[arg(
        long = "ca-cert",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub ca_cert: String,

    /// The hostname to use to connect to the proxy-server.
    #[arg(
        long = "proxy-server-host",
        value_name = "HOST",
        default_value = "127.0.0.1",
        allow_hyphen_values = true
    )]
    pub proxy_server_host: String,

    /// The port the proxy server is listening on.
    #[arg(long = "proxy-server-port", value_name = "INT", default_value = "8091",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub proxy_server_port: i64,

    /// Additional ALPN protocols to be presented when connecting to the server. Useful to distinguish between network proxy and apiserver connections that share the same destination address.
    #[arg(long = "alpn-proto", value_name = "LIST", default_value = "[]",
          value_parser = parse_string_slice, allow_hyphen_values = true)]
    pub alpn_proto: Vec<StringSlice>,

    /// The host the health server is listening on. If empty, we will bind to all interfaces.
    #[arg(
        long = "health-server-host",
        value_name = "HOST",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub health_server_host: String,

    /// The port the health server is listening on.
    #[arg(long = "health-server-port", value_name = "INT", default_value = "8093",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub health_server_port: i64,

    /// Bind address for the admin server. If empty, we will bind to all interfaces.
    #[arg(
        long = "admin-bind-address",
        value_name = "ADDR",
        default_value = "127.0.0.1",
        allow_hyphen_values = true
    )]
    pub admin_bind_address: String,

    /// The port the admin server is listening on.
    #[arg(long = "admin-server-port", value_name = "INT", default_value = "8094",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub admin_server_port: i64,

    /// enable pprof at host:admin-port/debug/pprof [not supported by this build: only false]
    #[arg(long = "enable-profiling", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool)]
    pub enable_profiling: bool,

    /// enable contention profiling at host:admin-port/debug/pprof/block. "--enable-profiling" must also be set. [not supported by this build: only false]
    #[arg(long = "enable-contention-profiling", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub enable_contention_profiling: bool,

    /// The unique ID of this agent. Can also be set by the 'PROXY_AGENT_ID' environment variable. Default to a generated uuid if not set.
    #[arg(long = "agent-id", value_name = "ID", allow_hyphen_values = true)]
    pub agent_id: Option<String>,

    /// The initial interval by which the agent periodically checks if it has connections to all instances of the proxy server.
    #[arg(long = "sync-interval", value_name = "DURATION", default_value = "1s",
          value_parser = parse_duration, allow_hyphen_values = true)]
    pub sync_interval: GoDuration,

    /// The interval by which the agent periodically checks if its connections to the proxy server are ready.
    #[arg(long = "probe-interval", value_name = "DURATION", default_value = "1s",
          value_parser = parse_duration, allow_hyphen_values = true)]
    pub probe_interval: GoDuration,

    /// The maximum interval for the SyncInterval to back off to when unable to connect to the proxy server
    #[arg(long = "sync-interval-cap", value_name = "DURATION", default_value = "10s",
          value_parser = parse_duration, allow_hyphen_values = true)]
    pub sync_interval_cap: GoDuration,

    /// Time for gRPC agent server keepalive.
    #[arg(long = "keepalive-time", value_name = "DURATION", default_value = "1h0m0s",
          value_parser = parse_duration, allow_hyphen_values = true)]
    pub keepalive_time: GoDuration,

    /// If non-empty proxy agent uses this token to prove its identity to the proxy server.
    #[arg(
        long = "service-account-token-path",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub service_account_token_path: String,

    /// Identifiers of the agent that will be used by the server when choosing agent. N.B. the list of identifiers must be in URL encoded format. e.g.,host=localhost&host=node1.mydomain.com&cidr=127.0.0.1/16&ipv4=1.2.3.4&ipv4=5.6.7.8&ipv6=:::::&default-route=true
    #[arg(
        long = "agent-identifiers",
        value_name = "QUERY",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub agent_identifiers: String,

    /// Turns on a warning if the system is going to push to a full channel. The check involves an unsafe read.
    #[arg(long = "warn-on-channel-limit", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub warn_on_channel_limit: bool,

    /// If true, the agent continues syncing, in order to support server count changes.
    #[arg(long = "sync-forever", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool)]
    pub sync_forever: bool,

    /// Set the size of the channel for transferring data between the agent and the proxy server.
    #[arg(long = "xfr-channel-size", value_name = "INT", default_value = "150",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub xfr_channel_size: i64,

    /// Enables lease counting system to determine the number of proxy servers to connect to. [not supported by this build: only false]
    #[arg(long = "count-server-leases", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub count_server_leases: bool,

    /// Namespace of the proxy server leases. [no effect in this build]
    #[arg(long = "lease-namespace", value_name = "NAMESPACE", default_value = DEFAULT_LEASE_NAMESPACE,
          allow_hyphen_values = true)]
    pub lease_namespace: String,

    /// The labels on which the lease objects are managed. [no effect in this build]
    #[arg(long = "lease-label-selector", value_name = "SELECTOR",
          default_value = DEFAULT_LEASE_LABEL_SELECTOR, value_parser = parse_lease_label_selector,
          allow_hyphen_values = true)]
    pub lease_label_selector: String,

    /// Deprecated alias of --lease-label-selector.
    #[arg(long = "lease-label", value_name = "SELECTOR", value_parser = parse_lease_label,
          allow_hyphen_values = true, hide = true)]
    pub lease_label: Option<String>,

    /// Source of the server count: 'default' (responses, or leases when counted) or 'max' (the higher of both).
    #[arg(
        long = "server-count-source",
        value_name = "SOURCE",
        default_value = "default",
        allow_hyphen_values = true
    )]
    pub server_count_source: String,

    /// Absolute path to the kubeconfig file. If empty, in-cluster config is used (lease counting only). [no effect in this build]
    #[arg(
        long = "kubeconfig",
        value_name = "FILE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub kubeconfig: String,

    /// Content type of requests sent to apiserver. [no effect in this build]
    #[arg(long = "kube-api-content-type", value_name = "TYPE",
          default_value = DEFAULT_KUBE_API_CONTENT_TYPE, allow_hyphen_values = true)]
    pub kube_api_content_type: String,

    /// Threads that run the proxy's tasks; 0 means one per CPU (tokio's default, which also honours $TOKIO_WORKER_THREADS). An extension of this build: each forwarded packet hops between tasks, and fewer threads mean fewer cross-thread wake-ups, so a small value lowers CPU per byte on a busy or small machine at the price of a throughput ceiling of that many cores.
    #[arg(long = "worker-threads", value_name = "INT", default_value = "0",
          value_parser = parse_go_int, allow_hyphen_values = true)]
    pub worker_threads: i64,

    /// Transport to the proxy-server: 'grpc' (upstream's protocol) or 'quic' (QUIC over UDP to the same port, one stream per connection; an extension of this build, needs a proxy-server of this build).
    #[arg(
        long = "transport",
        value_name = "TRANSPORT",
        default_value = "grpc",
        allow_hyphen_values = true
    )]
    pub transport: String,

    /// Ask gRPC servers for per-connection flow control (header konnectivity-flow-control); false behaves as an upstream agent. Hidden: a test hook.
    #[arg(long = "flow-control", value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true", value_parser = parse_go_bool,
          hide = true)]
    pub flow_control: bool,

    #[command(flatten)]
    pub klog: KlogFlags,
}

/// Is `s` a Kubernetes label name / non-empty label value
/// (`([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters)?
fn is_label_token(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_LEN
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Is `s` a DNS-1123 subdomain (label-key prefix)?
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL_PREFIX_LEN
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return Err(format!(
                "invalid label key {key:?}: prefix must be a DNS-1123 subdomain"
            ));
        }
    }
    if !is_label_token(name) {
        return Err(format!(
            "invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' \
             or '.', and must start and end with an alphanumeric character (at most 63)"
        ));
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_token(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: must be empty or consist of alphanumeric characters, \
             '-', '_' or '.', and must start and end with an alphanumeric character (at most 63)"
        ))
    }
}

/// Kubernetes label-selector syntax (`labels.Parse`): comma-separated `key`, `!key`,
/// `key=v`, `key==v`, `key!=v`, `key in (a,b)`, `key notin (a,b)`, `key>N`, `key<N`.
fn check_label_selector(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Ok(());
    }
    // Split on commas outside parentheses.
    let mut reqs = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                reqs.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    reqs.push(&s[start..]);
    for req in reqs {
        let req = req.trim();
        if req.is_empty() {
            return Err("found ',', expected: !, identifier, or 'end of string'".to_string());
        }
        if let Some(key) = req.strip_prefix('!') {
            check_label_key(key.trim())?;
            continue;
        }
        let key_end = req
            .find(|c: char| c.is_whitespace() || "=!<>(".contains(c))
            .unwrap_or(req.len());
        let (key, rest) = req.split_at(key_end);
        check_label_key(key)?;
        let rest = rest.trim_start();
        if rest.is_empty() {
            continue;
        }
        if let Some(v) = ["==", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op))
        {
            check_label_value(v.trim())?;
        } else if let Some(v) = [">", "<"].iter().find_map(|op| rest.strip_prefix(op)) {
            v.trim().parse::<i64>().map_err(|_| {
                format!(
                    "for 'Gt', 'Lt' operators, the value must be an integer, got {:?}",
                    v.trim()
                )
            })?;
        } else if let Some(set) = ["notin", "in"].iter().find_map(|op| rest.strip_prefix(op)) {
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("found {set:?}, expected: '('"))?;
            if inner.trim().is_empty() {
                return Err("for 'in', 'notin' operators, values set can't be empty".to_string());
            }
            for v in inner.split(',') {
                check_label_value(v.trim())?;
            }
        } else {
            return Err(format!(
                "found {rest:?}, expected: '=', '!=', '==', 'in', notin'"
            ));
        }
    }
    Ok(())
}

/// Parse-time check of `--lease-label-selector`, as upstream's selector-typed flag does.
fn parse_lease_label_selector(s: &str) -> Result<String, String> {
    check_label_selector(s)
        .map(|()| s.to_string())
        .map_err(|e| format!("invalid argument {s:?} for \"--lease-label-selector\" flag: {e}"))
}

/// Parse-time check of the hidden `--lease-label` alias.
fn parse_lease_label(s: &str) -> Result<String, String> {
    check_label_selector(s)
        .map(|()| s.to_string())
        .map_err(|e| format!("invalid argument {s:?} for \"--lease-label\" flag: {e}"))
}

/// Upstream's `validateAgentIdentifiers`: Go `url.ParseQuery`, then only known keys.
fn validate_agent_identifiers(identifiers: &str) -> Result<(), String> {
    let pairs = parse_query(identifiers).map_err(|e| e.to_string())?;
    for (key, _) in pairs {
        if !IDENTIFIER_KEYS.contains(&key.as_str()) {
            return Err(format!("unknown address type: {key}"));
        }
    }
    Ok(())
}

/// Go's `os.Stat` + `os.IsNotExist` check with upstream's message; other stat errors pass,
/// as upstream (the file is read later and fails then with the real reason).
fn check_exists(what: &str, path: &str) -> Result<(), FlagError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FlagError::Invalid(format!(
            "error checking {what} {path}, got stat {path}: no such file or directory"
        ))),
        _ => Ok(()),
    }
}

/// Upstream's `> 0` port check, plus the TCP limit Go would only hit when listening/dialing.
fn port(value: i64, name: &str) -> Result<u16, FlagError> {
    if value <= 0 {
        return Err(FlagError::Invalid(format!(
            "{name} port {value} must be greater than 0"
        )));
    }
    u16::try_from(value).map_err(|_| {
        FlagError::Invalid(format!("{name} port {value} must be at most {}", u16::MAX))
    })
}

/// A duration that must be strictly positive: a zero or negative interval would make the
/// sync or probe loop spin.
fn positive(flag: &str, d: GoDuration) -> Result<std::time::Duration, FlagError> {
    match d.to_std() {
        Some(std) if !std.is_zero() => Ok(std),
        _ => Err(FlagError::Invalid(format!(
            "--{flag} must be greater than 0, got {d}"
        ))),
    }
}

impl AgentFlags {
    /// Messages for `main` to log once logging is up: flags that are accepted but have no
    /// effect in this build.
    pub fn notices(&self) -> Vec<String> {
        let selector_default = self.lease_label_selector == DEFAULT_LEASE_LABEL_SELECTOR
            && self
                .lease_label
                .as_deref()
                .is_none_or(|l| l == DEFAULT_LEASE_LABEL_SELECTOR);
        let ignored = [
            (
                "lease-namespace",
                self.lease_namespace == DEFAULT_LEASE_NAMESPACE,
            ),
            ("lease-label-selector", selector_default),
            ("kubeconfig", self.kubeconfig.is_empty()),
            (
                "kube-api-content-type",
                self.kube_api_content_type == DEFAULT_KUBE_API_CONTENT_TYPE,
            ),
        ];
        ignored
            .iter()
            .filter(|(_, is_default)| !is_default)
            .map(|(flag, _)| {
                format!(
                    "--{flag} has no effect: it only configures lease counting \
                     (--count-server-leases), which this build does not have (upstream ignores it \
                     too while lease counting is off)"
                )
            })
            .collect()
    }

    /// The settings of this build's extensions (`--transport`), validated.
    pub fn extensions(&self) -> Result<AgentExtensions, FlagError> {
        let transport = match self.transport.as_str() {
            "grpc" => Transport::Grpc,
            "quic" => Transport::Quic,
            other => {
                return Err(FlagError::Invalid(format!(
                    "--transport must be 'grpc' or 'quic', got {other:?}"
                )))
            }
        };
        let worker_threads = konnectivity_runtime::worker_threads_flag(self.worker_threads)
            .map_err(FlagError::Invalid)?;
        Ok(AgentExtensions {
            transport,
            flow_control: self.flow_control,
            worker_threads,
        })
    }

    /// Validates as upstream's `GrpcProxyAgentOptions.Validate()` does (same order, same
    /// messages), applies this build's limits, and builds the configuration.
    /// `$PROXY_AGENT_ID` supplies the agent id when `--agent-id` is absent.
    pub fn into_config(self) -> Result<AgentConfig, FlagError> {
        self.into_config_with_env(&|name| std::env::var(name).ok())
    }

    /// [`AgentFlags::into_config`] with the environment supplied by the caller (tests).
    pub fn into_config_with_env(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AgentConfig, FlagError> {
        let invalid = |m: String| Err(FlagError::Invalid(m));

        // --- upstream Validate(), in its order ---
        if !self.agent_key.is_empty() {
            check_exists("agent key", &self.agent_key)?;
            if self.agent_cert.is_empty() {
                return invalid(format!(
                    "cannot have agent cert empty when agent key is set to \"{}\"",
                    self.agent_key
                ));
            }
        }
        if !self.agent_cert.is_empty() {
            check_exists("agent cert", &self.agent_cert)?;
            if self.agent_key.is_empty() {
                return invalid(format!(
                    "cannot have agent key empty when agent cert is set to \"{}\"",
                    self.agent_cert
                ));
            }
        }
        if !self.ca_cert.is_empty() {
            check_exists("agent CA cert", &self.ca_cert)?;
        }
        let proxy_server_port = port(self.proxy_server_port, "proxy server")?;
        let health_server_port = port(self.health_server_port, "health server")?;
        let admin_server_port = port(self.admin_server_port, "admin server")?;
        if self.enable_contention_profiling && !self.enable_profiling {
            return invalid(
                "if --enable-contention-profiling is set, --enable-profiling must also be set"
                    .to_string(),
            );
        }
        if self.sync_interval > self.sync_interval_cap {
            return invalid(format!(
                "sync interval {} must be less than sync interval cap {}",
                self.sync_interval, self.sync_interval_cap
            ));
        }
        if !self.service_account_token_path.is_empty() {
            check_exists(
                "service account token path",
                &self.service_account_token_path,
            )?;
        }
        if let Err(e) = validate_agent_identifiers(&self.agent_identifiers) {
            return invalid(format!("agent address is invalid: {e}"));
        }
        if self.xfr_channel_size <= 0 {
            return invalid(format!(
                "channel size {} must be greater than 0",
                self.xfr_channel_size
            ));
        }
        if !matches!(self.server_count_source.as_str(), "" | "default" | "max") {
            return invalid(format!(
                "--server-count-source must be one of '', 'default', 'max', got {}",
                self.server_count_source
            ));
        }

        // --- features this build does not have ---
        require_default(
            "count-server-leases",
            &self.count_server_leases,
            &false,
            "lease counting needs a Kubernetes client, which is not implemented yet; the server \
             count comes from the servers' responses",
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
        if let Some(alias) = &self.lease_label {
            if alias != &self.lease_label_selector
                && alias != DEFAULT_LEASE_LABEL_SELECTOR
                && self.lease_label_selector != DEFAULT_LEASE_LABEL_SELECTOR
            {
                return invalid(format!(
                    "--lease-label={alias} conflicts with --lease-label-selector={}: --lease-label \
                     is an alias; give only one of them",
                    self.lease_label_selector
                ));
            }
        }

        // --- what this build needs ---
        let extensions = self.extensions()?;
        if self.ca_cert.is_empty() {
            return invalid(
                "failed to read CA cert : --ca-cert is required; point it at the CA that signed the \
                 proxy-server's agent-listener certificate"
                    .to_string(),
            );
        }
        let interval = positive("sync-interval", self.sync_interval)?;
        let interval_cap = positive("sync-interval-cap", self.sync_interval_cap)?;
        let probe_interval = positive("probe-interval", self.probe_interval)?;
        let keepalive_time = self.keepalive_time.to_std().ok_or_else(|| {
            FlagError::Invalid(format!(
                "--keepalive-time must be >= 0, got {}",
                self.keepalive_time
            ))
        })?;
        let xfr_channel_size = usize::try_from(self.xfr_channel_size).map_err(|_| {
            FlagError::Invalid(format!(
                "channel size {} is too large",
                self.xfr_channel_size
            ))
        })?;
        let agent_id = match self.agent_id {
            Some(id) => id,
            None => env(AGENT_ID_ENV)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        };
        if agent_id.is_empty() {
            return invalid(
                "--agent-id must not be empty: servers require exactly one agent id (omit the flag \
                 for a random UUID)"
                    .to_string(),
            );
        }
        let health_addr = bind_addr(
            "health-server-host",
            &self.health_server_host,
            health_server_port,
        )?;
        let admin_addr = bind_addr(
            "admin-bind-address",
            &self.admin_bind_address,
            admin_server_port,
        )?;

        Ok(AgentConfig {
            server: ServerTarget {
                host: self.proxy_server_host,
                port: proxy_server_port,
                ca_cert: PathBuf::from(&self.ca_cert),
                client_cert: (!self.agent_cert.is_empty()).then(|| {
                    (
                        PathBuf::from(&self.agent_cert),
                        PathBuf::from(&self.agent_key),
                    )
                }),
                extra_alpn: flatten_slices(&self.alpn_proto),
                token_path: (!self.service_account_token_path.is_empty())
                    .then(|| PathBuf::from(&self.service_account_token_path)),
                keepalive_time,
            },
            identity: AgentIdentity {
                agent_id,
                identifiers: self.agent_identifiers,
            },
            sync: SyncConfig {
                interval,
                interval_cap,
                forever: self.sync_forever,
                probe_interval,
            },
            tls: TlsTuning::default(),
            xfr_channel_size,
            warn_on_channel_limit: self.warn_on_channel_limit,
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
    use std::net::SocketAddr;
    use std::time::Duration;

    use konnectivity_tls::TlsVersion;

    /// Dummy PEM/token paths: validation only checks that they exist.
    struct Files {
        _dir: tempfile::TempDir,
        ca: String,
        cert: String,
        key: String,
        token: String,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let mk = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, "not parsed here").expect("write");
            p.display().to_string()
        };
        Files {
            ca: mk("ca.crt"),
            cert: mk("agent.crt"),
            key: mk("agent.key"),
            token: mk("token"),
            _dir: dir,
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(args: &[String]) -> Result<AgentFlags, clap::Error> {
        AgentFlags::try_parse_from(
            std::iter::once("proxy-agent".to_string()).chain(args.iter().cloned()),
        )
    }

    fn config(args: &[String]) -> Result<AgentConfig, FlagError> {
        parse(args)
            .expect("flags parse")
            .into_config_with_env(&no_env)
    }

    fn err(args: &[String]) -> String {
        config(args)
            .expect_err("config must be rejected")
            .to_string()
    }

    fn base(f: &Files) -> Vec<String> {
        vec![format!("--ca-cert={}", f.ca)]
    }

    fn with(mut base: Vec<String>, extra: &[&str]) -> Vec<String> {
        base.extend(extra.iter().map(|s| s.to_string()));
        base
    }

    #[test]
    fn transport_defaults_to_grpc_and_accepts_quic_only_besides() {
        let f = files();
        let ext = |args: &[String]| parse(args).expect("parse").extensions();
        assert_eq!(ext(&base(&f)).expect("default").transport, Transport::Grpc);
        assert_eq!(
            ext(&with(base(&f), &["--transport=quic"]))
                .expect("quic")
                .transport,
            Transport::Quic
        );
        assert_eq!(
            err(&with(base(&f), &["--transport=tcp"])),
            "--transport must be 'grpc' or 'quic', got \"tcp\""
        );
    }

    #[test]
    fn worker_threads_default_to_one_per_cpu_and_refuse_negatives() {
        let f = files();
        let c = config(&base(&f)).expect("default");
        assert_eq!(c.extensions.worker_threads, 0);
        let c = config(&with(base(&f), &["--worker-threads=1"])).expect("one");
        assert_eq!(c.extensions.worker_threads, 1);
        assert!(err(&with(base(&f), &["--worker-threads=-2"])).contains("--worker-threads"));
    }

    #[test]
    fn defaults_equal_upstream() {
        let f = files();
        let c = config(&base(&f)).expect("defaults are valid");
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.server.port, 8091);
        assert_eq!(c.server.ca_cert, PathBuf::from(&f.ca));
        assert_eq!(c.server.client_cert, None);
        assert!(c.server.extra_alpn.is_empty());
        assert_eq!(c.server.token_path, None);
        assert_eq!(c.server.keepalive_time, Duration::from_secs(3600));
        assert!(
            uuid::Uuid::parse_str(&c.identity.agent_id).is_ok(),
            "{}",
            c.identity.agent_id
        );
        assert_eq!(c.identity.identifiers, "");
        assert_eq!(c.sync.interval, Duration::from_secs(1));
        assert_eq!(c.sync.interval_cap, Duration::from_secs(10));
        assert!(!c.sync.forever);
        assert_eq!(c.sync.probe_interval, Duration::from_secs(1));
        assert_eq!(c.tls.min_version, TlsVersion::Tls12);
        assert_eq!(c.xfr_channel_size, 150);
        assert!(!c.warn_on_channel_limit);
        assert_eq!(
            c.health_addr,
            SocketAddr::new(konnectivity_goflags::unspecified_ip(), 8093)
        );
        assert_eq!(
            c.admin_addr,
            "127.0.0.1:8094".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(parse(&base(&f)).expect("parse").klog.v, 4);
    }

    #[test]
    fn ca_cert_is_mandatory() {
        let e = err(&[]);
        assert!(e.contains("--ca-cert is required"), "{e}");
        let e = err(&["--ca-cert=/nonexistent/ca.crt".to_string()]);
        assert_eq!(
            e,
            "error checking agent CA cert /nonexistent/ca.crt, got stat /nonexistent/ca.crt: no such file or directory"
        );
    }

    #[test]
    fn equals_and_space_forms_are_equivalent() {
        let f = files();
        let eq = config(&with(
            base(&f),
            &[
                "--proxy-server-host=konnectivity.example",
                "--proxy-server-port=8132",
                "--sync-interval-cap=30s",
                "--agent-id=node-a",
            ],
        ))
        .expect("equals form");
        let sp = config(&with(
            base(&f),
            &[
                "--proxy-server-host",
                "konnectivity.example",
                "--proxy-server-port",
                "8132",
                "--sync-interval-cap",
                "30s",
                "--agent-id",
                "node-a",
            ],
        ))
        .expect("space form");
        for c in [&eq, &sp] {
            assert_eq!(c.server.host, "konnectivity.example");
            assert_eq!(c.server.port, 8132);
            assert_eq!(c.sync.interval_cap, Duration::from_secs(30));
            assert_eq!(c.identity.agent_id, "node-a");
        }
    }

    #[test]
    fn agent_id_comes_from_flag_then_env_then_uuid() {
        let f = files();
        let env = |name: &str| (name == AGENT_ID_ENV).then(|| "from-env".to_string());
        let c = parse(&base(&f))
            .expect("parse")
            .into_config_with_env(&env)
            .expect("config");
        assert_eq!(c.identity.agent_id, "from-env");
        let c = parse(&with(base(&f), &["--agent-id=from-flag"]))
            .expect("parse")
            .into_config_with_env(&env)
            .expect("config");
        assert_eq!(c.identity.agent_id, "from-flag");
        assert!(err(&with(base(&f), &["--agent-id="])).contains("--agent-id must not be empty"));
    }

    #[test]
    fn sync_forever_boolean_forms() {
        let f = files();
        assert!(
            config(&with(base(&f), &["--sync-forever"]))
                .expect("bare")
                .sync
                .forever
        );
        assert!(
            config(&with(base(&f), &["--sync-forever=true"]))
                .expect("=true")
                .sync
                .forever
        );
        assert!(
            config(&with(base(&f), &["--sync-forever=T"]))
                .expect("=T")
                .sync
                .forever
        );
        assert!(
            !config(&with(base(&f), &["--sync-forever=false"]))
                .expect("=false")
                .sync
                .forever
        );
        assert!(
            !config(&with(base(&f), &["--sync-forever=0"]))
                .expect("=0")
                .sync
                .forever
        );
        // pflag never consumes the next argument for a boolean: `false` is a stray positional.
        let e = parse(&with(base(&f), &["--sync-forever", "false"])).expect_err("stray positional");
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(parse(&with(base(&f), &["--sync-forever=yes"])).is_err());
    }

    #[test]
    fn alpn_proto_accepts_printed_empty_list_and_accumulates() {
        let f = files();
        assert!(config(&with(base(&f), &["--alpn-proto=[]"]))
            .expect("[]")
            .server
            .extra_alpn
            .is_empty());
        let c = config(&with(base(&f), &["--alpn-proto=a,b", "--alpn-proto", "c"])).expect("list");
        assert_eq!(c.server.extra_alpn, vec!["a", "b", "c"]);
        let c = config(&with(base(&f), &["--alpn-proto=[konnectivity,x]"])).expect("printed list");
        assert_eq!(c.server.extra_alpn, vec!["konnectivity", "x"]);
    }

    #[test]
    fn durations_use_go_syntax() {
        let f = files();
        let c = config(&with(
            base(&f),
            &[
                "--sync-interval=100ms",
                "--sync-interval-cap=1s",
                "--probe-interval=1.5s",
                "--keepalive-time=2h45m",
            ],
        ))
        .expect("config");
        assert_eq!(c.sync.interval, Duration::from_millis(100));
        assert_eq!(c.sync.interval_cap, Duration::from_secs(1));
        assert_eq!(c.sync.probe_interval, Duration::from_millis(1500));
        assert_eq!(
            c.server.keepalive_time,
            Duration::from_secs(2 * 3600 + 45 * 60)
        );
        assert!(
            parse(&with(base(&f), &["--sync-interval=5"])).is_err(),
            "missing unit"
        );
        assert_eq!(
            err(&with(base(&f), &["--sync-interval=20s"])),
            "sync interval 20s must be less than sync interval cap 10s"
        );
        assert!(err(&with(base(&f), &["--probe-interval=0"]))
            .contains("--probe-interval must be greater than 0"));
        assert!(err(&with(base(&f), &["--keepalive-time", "-1s"]))
            .contains("--keepalive-time must be >= 0"));
    }

    #[test]
    fn agent_identifiers_are_validated_like_upstream() {
        let f = files();
        let ok = "ipv4=1.2.3.4&ipv4=5.6.7.8&ipv6=::1&host=node1&cidr=10.0.0.0/8&default-route=true";
        let c = config(&with(base(&f), &[&format!("--agent-identifiers={ok}")]))
            .expect("valid identifiers");
        assert_eq!(c.identity.identifiers, ok);
        assert_eq!(
            err(&with(
                base(&f),
                &["--agent-identifiers=ipv4=1.2.3.4&zone=a"]
            )),
            "agent address is invalid: unknown address type: zone"
        );
        assert_eq!(
            err(&with(base(&f), &["--agent-identifiers=host=a;host=b"])),
            "agent address is invalid: invalid semicolon separator in query"
        );
        assert_eq!(
            err(&with(base(&f), &["--agent-identifiers=host=%zz"])),
            "agent address is invalid: invalid URL escape \"%zz\""
        );
    }

    #[test]
    fn invalid_ports_are_rejected() {
        let f = files();
        assert_eq!(
            err(&with(base(&f), &["--proxy-server-port=0"])),
            "proxy server port 0 must be greater than 0"
        );
        assert_eq!(
            err(&with(base(&f), &["--health-server-port=-1"])),
            "health server port -1 must be greater than 0"
        );
        assert_eq!(
            err(&with(base(&f), &["--admin-server-port=70000"])),
            "admin server port 70000 must be at most 65535"
        );
        // Upstream deliberately allows reserved and ephemeral agent-side ports.
        assert!(config(&with(
            base(&f),
            &["--proxy-server-port=443", "--health-server-port=50000"]
        ))
        .is_ok());
    }

    #[test]
    fn agent_cert_and_key_go_together() {
        let f = files();
        assert_eq!(
            err(&with(base(&f), &[&format!("--agent-cert={}", f.cert)])),
            format!(
                "cannot have agent key empty when agent cert is set to \"{}\"",
                f.cert
            )
        );
        assert_eq!(
            err(&with(base(&f), &[&format!("--agent-key={}", f.key)])),
            format!(
                "cannot have agent cert empty when agent key is set to \"{}\"",
                f.key
            )
        );
        let c = config(&with(
            base(&f),
            &[
                &format!("--agent-cert={}", f.cert),
                &format!("--agent-key={}", f.key),
            ],
        ))
        .expect("pair");
        assert_eq!(
            c.server.client_cert,
            Some((PathBuf::from(&f.cert), PathBuf::from(&f.key)))
        );
    }

    #[test]
    fn token_path_must_exist() {
        let f = files();
        let c = config(&with(
            base(&f),
            &[&format!("--service-account-token-path={}", f.token)],
        ))
        .expect("token");
        assert_eq!(c.server.token_path, Some(PathBuf::from(&f.token)));
        assert!(err(&with(
            base(&f),
            &["--service-account-token-path=/nonexistent/token"]
        ))
        .starts_with("error checking service account token path /nonexistent/token"));
    }

    #[test]
    fn channel_size_and_server_count_source_are_validated() {
        let f = files();
        assert_eq!(
            err(&with(base(&f), &["--xfr-channel-size=0"])),
            "channel size 0 must be greater than 0"
        );
        assert_eq!(
            err(&with(base(&f), &["--xfr-channel-size=-10"])),
            "channel size -10 must be greater than 0"
        );
        assert_eq!(
            err(&with(base(&f), &["--server-count-source=foobar"])),
            "--server-count-source must be one of '', 'default', 'max', got foobar"
        );
        for source in ["", "default", "max"] {
            assert!(
                config(&with(
                    base(&f),
                    &[&format!("--server-count-source={source}")]
                ))
                .is_ok(),
                "{source}"
            );
        }
    }

    #[test]
    fn lease_label_selectors_are_checked_at_parse_time() {
        let f = files();
        for ok in [
            "k8s-app=konnectivity-server",
            "",
            "k8s-app=konnectivity-server,component=proxy",
            "app in (a, b),!legacy",
            "example.com/tier!=x",
        ] {
            assert!(
                parse(&with(base(&f), &[&format!("--lease-label-selector={ok}")])).is_ok(),
                "{ok}"
            );
        }
        let e = parse(&with(base(&f), &["--lease-label=*notavalidlabel*"])).expect_err("invalid");
        assert!(
            e.to_string()
                .contains(r#"invalid argument "*notavalidlabel*" for "--lease-label" flag"#),
            "{e}"
        );
        assert!(parse(&with(base(&f), &["--lease-label-selector=a=b,"])).is_err());
        assert!(parse(&with(base(&f), &["--lease-label-selector=a in ()"])).is_err());
    }

    #[test]
    fn unsupported_flags_are_accepted_at_default_and_rejected_otherwise() {
        let f = files();
        assert!(config(&with(
            base(&f),
            &["--count-server-leases=false", "--enable-profiling=false"]
        ))
        .is_ok());
        let e = err(&with(base(&f), &["--count-server-leases"]));
        assert!(
            e.starts_with("--count-server-leases=true is not supported by this build"),
            "{e}"
        );
        assert!(e.ends_with("leave it at its default false"), "{e}");
        let e = err(&with(base(&f), &["--enable-profiling=true"]));
        assert!(
            e.starts_with("--enable-profiling=true is not supported"),
            "{e}"
        );
        assert_eq!(
            err(&with(base(&f), &["--enable-contention-profiling"])),
            "if --enable-contention-profiling is set, --enable-profiling must also be set"
        );
    }

    #[test]
    fn lease_only_flags_are_accepted_with_a_notice() {
        let f = files();
        let flags = parse(&with(
            base(&f),
            &["--lease-namespace=other", "--kubeconfig=/etc/kubeconfig"],
        ))
        .expect("parse");
        let notices = flags.notices();
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert!(
            notices[0].starts_with("--lease-namespace has no effect"),
            "{notices:?}"
        );
        assert!(flags.into_config_with_env(&no_env).is_ok());
        let e = err(&with(
            base(&f),
            &["--lease-label=a=b", "--lease-label-selector=c=d"],
        ));
        assert!(e.contains("conflicts with --lease-label-selector"), "{e}");
    }

    /// The argument list upstream's `ExternalAgentRunner` builds: `o.Flags().VisitAll` over the
    /// agent options (every flag, hidden ones included, lexicographic order) printed as
    /// `--name=value`, after `agentOptions()` set sync 100ms / cap 1s / probe 100ms, the test
    /// certificates, 127.0.0.1 health/admin hosts and free ports.
    fn harness_args(f: &Files) -> Vec<String> {
        vec![
            "--admin-bind-address=127.0.0.1".to_string(),
            "--admin-server-port=41235".to_string(),
            format!("--agent-cert={}", f.cert),
            "--agent-id=8c9b2b26-9f6c-4e4e-a7c4-4b1f1f0f0a01".to_string(),
            "--agent-identifiers=".to_string(),
            format!("--agent-key={}", f.key),
            "--alpn-proto=[]".to_string(),
            format!("--ca-cert={}", f.ca),
            "--count-server-leases=false".to_string(),
            "--enable-contention-profiling=false".to_string(),
            "--enable-profiling=false".to_string(),
            "--health-server-host=127.0.0.1".to_string(),
            "--health-server-port=41234".to_string(),
            "--keepalive-time=1h0m0s".to_string(),
            "--kube-api-content-type=application/vnd.kubernetes.protobuf".to_string(),
            "--kubeconfig=".to_string(),
            "--lease-label=k8s-app=konnectivity-server".to_string(),
            "--lease-label-selector=k8s-app=konnectivity-server".to_string(),
            "--lease-namespace=kube-system".to_string(),
            "--probe-interval=100ms".to_string(),
            "--proxy-server-host=127.0.0.1".to_string(),
            "--proxy-server-port=40999".to_string(),
            "--server-count-source=default".to_string(),
            "--service-account-token-path=".to_string(),
            "--sync-forever=false".to_string(),
            "--sync-interval=100ms".to_string(),
            "--sync-interval-cap=1s".to_string(),
            "--warn-on-channel-limit=false".to_string(),
            "--xfr-channel-size=150".to_string(),
        ]
    }

    #[test]
    fn upstream_external_agent_harness_arguments_parse() {
        let f = files();
        let flags = parse(&harness_args(&f)).expect("harness arguments parse");
        assert!(flags.notices().is_empty(), "{:?}", flags.notices());
        let c = flags
            .into_config_with_env(&no_env)
            .expect("harness arguments validate");
        assert_eq!(c.identity.agent_id, "8c9b2b26-9f6c-4e4e-a7c4-4b1f1f0f0a01");
        assert_eq!(c.server.port, 40999);
        assert_eq!(
            c.server.client_cert,
            Some((PathBuf::from(&f.cert), PathBuf::from(&f.key)))
        );
        assert!(c.server.extra_alpn.is_empty());
        assert_eq!(c.sync.interval, Duration::from_millis(100));
        assert_eq!(c.sync.interval_cap, Duration::from_secs(1));
        assert_eq!(c.sync.probe_interval, Duration::from_millis(100));
        assert_eq!(
            c.health_addr,
            "127.0.0.1:41234".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            c.admin_addr,
            "127.0.0.1:41235".parse::<SocketAddr>().expect("addr")
        );
    }

    #[test]
    fn help_lists_flags_with_go_style_defaults() {
        let help = AgentFlags::command().render_long_help().to_string();
        for needle in [
            "--sync-interval",
            "[default: 1s]",
            "--keepalive-time",
            "[default: 1h0m0s]",
            "--alpn-proto",
            "[default: []]",
            "--sync-forever[=<BOOL>]",
            "--xfr-channel-size",
            "[default: 150]",
            "--logtostderr",
            "PROXY_AGENT_ID",
        ] {
            assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
        }
        assert!(
            !help.contains("--lease-label "),
            "hidden alias is not listed"
        );
        AgentFlags::command().debug_assert();
    }
}
