//! proxy-server metrics: upstream's names, types, labels, buckets and HELP strings
//! (`konnectivity_network_proxy_server_*`), plus our `stalled_connections_total`.
//!
//! Callers use typed methods, never raw label strings, so a label value can only be one that
//! upstream emits. Families that upstream creates as label-less `*Vec`s appear on `/metrics`
//! only after their first use, exactly as there.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use konnectivity_health::metrics::{
    Counter, CounterVec, Gauge, GaugeVec, HistogramVec, Lazy, MetricsError, Registry,
};
use konnectivity_health::Histogram;
use konnectivity_proto::{Packet, PACKET_TYPE_NAMES};

/// Go's name of a gRPC status code, for `stream_error` (shared with the proxy-agent).
pub use konnectivity_proto::CodeLabel;

/// Prometheus namespace shared by every konnectivity metric.
pub const NAMESPACE: &str = "konnectivity_network_proxy";
/// Prometheus subsystem of the proxy-server.
pub const SUBSYSTEM: &str = "server";

/// Upstream's dial/frontend-write latency buckets ("10 ns to 12.5 seconds").
pub const LATENCY_BUCKETS: &[f64] = &[1e-6, 1e-5, 1e-4, 0.005, 0.025, 0.1, 0.5, 2.5, 12.5];
/// Buckets of `connection_duration_seconds`: 1 s to 1 day.
pub const CONNECTION_DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0,
];

/// Why a dial failed (`dial_failure_count{reason}`); several can be recorded for one dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailureReason {
    /// No agent was available for the dial.
    NoAgent,
    /// The agent answered the dial with an error.
    ErrorResponse,
    /// A DIAL_RSP arrived for a dial id the server does not know.
    UnrecognizedResponse,
    /// The agent's successful DIAL_RSP could not be sent to the frontend.
    SendResponse,
    /// The agent sent DIAL_CLS before the dial completed.
    BackendClose,
    /// `--backend-dial-timeout` expired before DIAL_RSP arrived.
    BackendDialTimeout,
    /// The frontend sent DIAL_CLS (or went away) before the dial completed.
    FrontendClose,
}

impl DialFailureReason {
    /// The label value upstream uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DialFailureReason::NoAgent => "no_agent",
            DialFailureReason::ErrorResponse => "error_response",
            DialFailureReason::UnrecognizedResponse => "unrecognized_response",
            DialFailureReason::SendResponse => "send_rsp",
            DialFailureReason::BackendClose => "backend_close",
            DialFailureReason::BackendDialTimeout => "backend_dial_timeout",
            DialFailureReason::FrontendClose => "frontend_close",
        }
    }
}

/// gRPC method of a stream (`service_method` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceMethod {
    /// `ProxyService.Proxy` (frontend streams from kube-apiserver).
    Proxy,
    /// `AgentService.Connect` (backend streams from agents).
    Connect,
}

impl ServiceMethod {
    /// The label value upstream uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceMethod::Proxy => "Proxy",
            ServiceMethod::Connect => "Connect",
        }
    }
}

/// Tunnel segment of a packet or stream error (`segment` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Frontend → server.
    FromClient,
    /// Server → frontend.
    ToClient,
    /// Agent → server.
    FromAgent,
    /// Server → agent.
    ToAgent,
}

impl Segment {
    /// The label value upstream uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Segment::FromClient => "from_client",
            Segment::ToClient => "to_client",
            Segment::FromAgent => "from_agent",
            Segment::ToAgent => "to_agent",
        }
    }

    fn index(self) -> usize {
        match self {
            Segment::FromClient => 0,
            Segment::ToClient => 1,
            Segment::FromAgent => 2,
            Segment::ToAgent => 3,
        }
    }
}

/// Backend selection strategy (`ready_backends{proxy_strategy}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyStrategy {
    /// `default`
    Default,
    /// `destHost`
    DestHost,
    /// `defaultRoute`
    DefaultRoute,
}

impl ProxyStrategy {
    /// The label value upstream uses (the `--proxy-strategies` spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyStrategy::Default => "default",
            ProxyStrategy::DestHost => "destHost",
            ProxyStrategy::DefaultRoute => "defaultRoute",
        }
    }
}

/// `stream_packets_total` with a per-(segment, type) cache: counting a packet is one atomic
/// add after the first packet of its kind, with no lock and no label comparison.
struct PacketCounters {
    family: CounterVec<2>,
    cache: [[OnceLock<Counter>; PACKET_TYPE_NAMES.len()]; 4],
}

impl PacketCounters {
    fn new(family: CounterVec<2>) -> Self {
        PacketCounters {
            family,
            cache: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
        }
    }

    fn inc(&self, segment: Segment, packet_type: &'static str) {
        match PACKET_TYPE_NAMES.iter().position(|t| *t == packet_type) {
            Some(i) => self.inc_known(segment, i),
            None => self
                .family
                .with_label_values([segment.as_str(), packet_type])
                .inc(),
        }
    }

    fn inc_known(&self, segment: Segment, type_index: usize) {
        let Some(cell) = self.cache[segment.index()].get(type_index) else {
            return;
        };
        cell.get_or_init(|| {
            self.family
                .with_label_values([segment.as_str(), PACKET_TYPE_NAMES[type_index]])
        })
        .inc();
    }

    fn inc_packet(&self, segment: Segment, packet: &Packet) {
        match packet.kind() {
            Some(kind) => self.inc_known(segment, kind as usize),
            None => self.inc(segment, packet.kind_name()),
        }
    }
}

struct Inner {
    dial_duration: Lazy<Histogram>,
    frontend_write_duration: Lazy<Histogram>,
    connection_duration: Lazy<Histogram>,
    grpc_connections: GaugeVec<1>,
    http_connections: Gauge,
    ready_backend_connections: Lazy<Gauge>,
    ready_backends: GaugeVec<1>,
    pending_backend_dials: Lazy<Gauge>,
    established_connections: Lazy<Gauge>,
    full_receive_channels: GaugeVec<1>,
    dial_failures: CounterVec<1>,
    stream_packets: PacketCounters,
    stream_errors: CounterVec<3>,
    culled_leases: Counter,
    lease_delete_latency: HistogramVec<1>,
    lease_list_latency: HistogramVec<1>,
    lease_delete: CounterVec<2>,
    lease_list: CounterVec<2>,
    stalled_connections: Counter,
}

/// All proxy-server metrics. Cheap to clone (one `Arc`); every clone updates the same series.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn name(short: &str) -> String {
    format!("{NAMESPACE}_{SUBSYSTEM}_{short}")
}

impl Metrics {
    /// Creates the metrics in a fresh registry.
    pub fn new() -> Self {
        // Invariant: every name below is a valid, distinct constant and the registry is new, so
        // registration cannot fail; `every_metric_registers_in_a_fresh_registry` proves it.
        Self::register(&Registry::new()).expect("constant metric definitions are valid")
    }

    /// Registers the metrics in `registry` (e.g. one shared with other components).
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let r = registry;
        let inner = Inner {
            dial_duration: r.lazy_histogram(
                &name("dial_duration_seconds"),
                "Latency of dial to the remote endpoint in seconds",
                LATENCY_BUCKETS,
            )?,
            frontend_write_duration: r.lazy_histogram(
                &name("frontend_write_duration_seconds"),
                "Latency of write to the frontend in seconds",
                LATENCY_BUCKETS,
            )?,
            connection_duration: r.lazy_histogram(
                &name("connection_duration_seconds"),
                "Duration of established end-to-end connections (post-dial) in seconds, from dial response to close",
                CONNECTION_DURATION_BUCKETS,
            )?,
            grpc_connections: r.gauge_vec(
                &name("grpc_connections"),
                "Number of current grpc connections, partitioned by service method.",
                ["service_method"],
            )?,
            http_connections: r.gauge(
                &name("http_connections"),
                "Number of current HTTP CONNECT connections",
            )?,
            ready_backend_connections: r.lazy_gauge(
                &name("ready_backend_connections"),
                "Number of konnectivity agent connected to the proxy server. DEPRECATED, please use ready_backends",
            )?,
            ready_backends: r.gauge_vec(
                &name("ready_backends"),
                "Number of konnectivity agent connected to the proxy server",
                ["proxy_strategy"],
            )?,
            pending_backend_dials: r.lazy_gauge(
                &name("pending_backend_dials"),
                "Current number of pending backend dial requests",
            )?,
            established_connections: r.lazy_gauge(
                &name("established_connections"),
                "Current number of established end-to-end connections (post-dial).",
            )?,
            full_receive_channels: r.gauge_vec(
                &name("full_receive_channels"),
                "Number of current connections blocked by a full receive channel, partitioned by service method.",
                ["service_method"],
            )?,
            dial_failures: r.counter_vec(
                &name("dial_failure_count"),
                "Number of dial failures observed. Multiple failures can occur for a single dial request.",
                ["reason"],
            )?,
            stream_packets: PacketCounters::new(r.counter_vec(
                &name("stream_packets_total"),
                "Count of packets processed, by segment and packet type (example: from_client, DIAL_REQ)",
                ["segment", "packet_type"],
            )?),
            stream_errors: r.counter_vec(
                &name("stream_errors_total"),
                "Count of gRPC stream errors, by segment, grpc Code, packet type. (example: from_agent, Code.Unavailable, DIAL_RSP)",
                ["segment", "code", "packet_type"],
            )?,
            culled_leases: r.counter(
                &name("culled_leases_count"),
                "Count of expired proxy-server leases deleted by the lease garbage collector.",
            )?,
            lease_delete_latency: r.histogram_vec(
                &name("lease_delete_latency_seconds"),
                "Latency of lease delete calls to the k8s apiserver in seconds, by HTTP status code",
                ["http_status_code"],
                LATENCY_BUCKETS,
            )?,
            lease_list_latency: r.histogram_vec(
                &name("lease_list_latency_seconds"),
                "Latency of lease list calls to the k8s apiserver in seconds, by HTTP status code",
                ["http_status_code"],
                LATENCY_BUCKETS,
            )?,
            lease_delete: r.counter_vec(
                &name("lease_delete_total"),
                "Count of lease delete calls to the k8s apiserver, by HTTP status code and reason",
                ["http_status_code", "reason"],
            )?,
            lease_list: r.counter_vec(
                &name("lease_list_total"),
                "Count of lease list calls to the k8s apiserver, by HTTP status code and reason",
                ["http_status_code", "reason"],
            )?,
            stalled_connections: r.counter(
                &name("stalled_connections_total"),
                "Number of connections aborted because their reader stalled and their bounded queue overflowed.",
            )?,
        };
        Ok(Metrics {
            registry: registry.clone(),
            inner: Arc::new(inner),
        })
    }

    /// The registry to serve on the health and admin `/metrics` endpoints (cheap clone).
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Counts one dial failure.
    pub fn dial_failure(&self, reason: DialFailureReason) {
        self.inner
            .dial_failures
            .with_label_values([reason.as_str()])
            .inc();
    }

    /// One more established end-to-end connection.
    pub fn established_connections_inc(&self) {
        self.inner.established_connections.get().inc();
    }

    /// One established end-to-end connection fewer.
    pub fn established_connections_dec(&self) {
        self.inner.established_connections.get().dec();
    }

    /// Sets the number of established end-to-end connections.
    pub fn established_connections_set(&self, n: i64) {
        self.inner.established_connections.get().set(n);
    }

    /// Sets the number of dials awaiting DIAL_RSP.
    pub fn pending_backend_dials_set(&self, n: i64) {
        self.inner.pending_backend_dials.get().set(n);
    }

    /// One more dial awaiting DIAL_RSP.
    pub fn pending_backend_dials_inc(&self) {
        self.inner.pending_backend_dials.get().inc();
    }

    /// One dial fewer awaiting DIAL_RSP.
    pub fn pending_backend_dials_dec(&self) {
        self.inner.pending_backend_dials.get().dec();
    }

    /// Sets the deprecated agent count (upstream: every backend manager writes it).
    pub fn ready_backend_connections_set(&self, n: i64) {
        self.inner.ready_backend_connections.get().set(n);
    }

    /// Sets the number of agents known to one strategy's backend manager.
    pub fn ready_backends_set(&self, strategy: ProxyStrategy, n: i64) {
        self.inner
            .ready_backends
            .with_label_values([strategy.as_str()])
            .set(n);
    }

    /// A gRPC stream of this method started.
    pub fn grpc_connections_inc(&self, method: ServiceMethod) {
        self.inner
            .grpc_connections
            .with_label_values([method.as_str()])
            .inc();
    }

    /// A gRPC stream of this method ended.
    pub fn grpc_connections_dec(&self, method: ServiceMethod) {
        self.inner
            .grpc_connections
            .with_label_values([method.as_str()])
            .dec();
    }

    /// Same as [`Metrics::grpc_connections_inc`].
    pub fn grpc_connection_opened(&self, method: ServiceMethod) {
        self.grpc_connections_inc(method);
    }

    /// Same as [`Metrics::grpc_connections_dec`].
    pub fn grpc_connection_closed(&self, method: ServiceMethod) {
        self.grpc_connections_dec(method);
    }

    /// An HTTP CONNECT tunnel request started.
    pub fn http_connections_inc(&self) {
        self.inner.http_connections.inc();
    }

    /// An HTTP CONNECT tunnel request ended.
    pub fn http_connections_dec(&self) {
        self.inner.http_connections.dec();
    }

    /// Same as [`Metrics::http_connections_inc`].
    pub fn http_connection_opened(&self) {
        self.http_connections_inc();
    }

    /// Same as [`Metrics::http_connections_dec`].
    pub fn http_connection_closed(&self) {
        self.http_connections_dec();
    }

    /// A stream of this method started waiting on a full receive queue.
    pub fn full_receive_channels_inc(&self, method: ServiceMethod) {
        self.inner
            .full_receive_channels
            .with_label_values([method.as_str()])
            .inc();
    }

    /// A stream of this method stopped waiting on a full receive queue.
    pub fn full_receive_channels_dec(&self, method: ServiceMethod) {
        self.inner
            .full_receive_channels
            .with_label_values([method.as_str()])
            .dec();
    }

    /// Counts one packet; `packet_type` is the enum name (`Packet::kind_name()`).
    pub fn stream_packet(&self, segment: Segment, packet_type: &'static str) {
        self.inner.stream_packets.inc(segment, packet_type);
    }

    /// Counts a packet received from a frontend.
    pub fn stream_packet_from_client(&self, packet: &Packet) {
        self.inner
            .stream_packets
            .inc_packet(Segment::FromClient, packet);
    }

    /// Counts a packet sent to a frontend.
    pub fn stream_packet_to_client(&self, packet: &Packet) {
        self.inner
            .stream_packets
            .inc_packet(Segment::ToClient, packet);
    }

    /// Counts a packet received from an agent.
    pub fn stream_packet_from_agent(&self, packet: &Packet) {
        self.inner
            .stream_packets
            .inc_packet(Segment::FromAgent, packet);
    }

    /// Counts a packet sent to an agent.
    pub fn stream_packet_to_agent(&self, packet: &Packet) {
        self.inner
            .stream_packets
            .inc_packet(Segment::ToAgent, packet);
    }

    /// Counts a stream send/receive error; `packet_type` is `"Unknown"` for receive errors.
    pub fn stream_error(&self, segment: Segment, code: impl CodeLabel, packet_type: &'static str) {
        self.inner
            .stream_errors
            .with_label_values([segment.as_str(), code.code_label(), packet_type])
            .inc();
    }

    /// Records how long a dial took (DIAL_REQ sent → DIAL_RSP received).
    pub fn observe_dial_duration(&self, d: Duration) {
        self.inner.dial_duration.get().observe_duration(d);
    }

    /// Records how long a send to a frontend blocked.
    pub fn observe_frontend_write_duration(&self, d: Duration) {
        self.inner.frontend_write_duration.get().observe_duration(d);
    }

    /// Records the lifetime of an established end-to-end connection.
    pub fn observe_connection_duration(&self, d: Duration) {
        self.inner.connection_duration.get().observe_duration(d);
    }

    /// Counts one expired lease deleted by the garbage collector.
    pub fn culled_lease(&self) {
        self.inner.culled_leases.inc();
    }

    /// Records one lease delete call: HTTP status code, reason (k8s `StatusReason`, empty on
    /// success) and latency.
    pub fn lease_delete(&self, http_status_code: u16, reason: &str, latency: Duration) {
        let code = http_status_code.to_string();
        self.inner
            .lease_delete
            .with_label_values([code.as_str(), reason])
            .inc();
        self.inner
            .lease_delete_latency
            .with_label_values([code.as_str()])
            .observe_duration(latency);
    }

    /// Records one lease list call: HTTP status code, reason and latency.
    pub fn lease_list(&self, http_status_code: u16, reason: &str, latency: Duration) {
        let code = http_status_code.to_string();
        self.inner
            .lease_list
            .with_label_values([code.as_str(), reason])
            .inc();
        self.inner
            .lease_list_latency
            .with_label_values([code.as_str()])
            .observe_duration(latency);
    }

    /// Counts one connection aborted because its reader stalled and its queue overflowed.
    pub fn stalled_connection(&self) {
        self.inner.stalled_connections.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The `# HELP` and `# TYPE` lines of one family, as scraped.
    fn header(text: &str, family: &str) -> (String, String) {
        let help = text
            .lines()
            .find(|l| l.starts_with(&format!("# HELP {family} ")))
            .unwrap_or_else(|| panic!("no HELP for {family} in:\n{text}"))
            .to_string();
        let ty = text
            .lines()
            .find(|l| l.starts_with(&format!("# TYPE {family} ")))
            .unwrap_or_else(|| panic!("no TYPE for {family} in:\n{text}"))
            .to_string();
        (help, ty)
    }

    #[test]
    fn every_metric_registers_in_a_fresh_registry() {
        assert!(Metrics::register(&Registry::new()).is_ok());
        // Registering twice in one registry is refused, not a panic.
        let r = Registry::new();
        Metrics::register(&r).unwrap();
        assert!(Metrics::register(&r).is_err());
    }

    #[test]
    fn upstream_compared_families_have_exact_help_and_type() {
        let m = Metrics::new();
        m.dial_failure(DialFailureReason::NoAgent);
        m.ready_backend_connections_set(1);
        m.established_connections_set(0);
        m.stream_packet(Segment::FromClient, "DIAL_REQ");
        let text = m.registry().encode();
        let cases = [
            (
                "konnectivity_network_proxy_server_dial_failure_count",
                "Number of dial failures observed. Multiple failures can occur for a single dial request.",
                "counter",
            ),
            (
                "konnectivity_network_proxy_server_ready_backend_connections",
                "Number of konnectivity agent connected to the proxy server. DEPRECATED, please use ready_backends",
                "gauge",
            ),
            (
                "konnectivity_network_proxy_server_established_connections",
                "Current number of established end-to-end connections (post-dial).",
                "gauge",
            ),
            (
                "konnectivity_network_proxy_server_stream_packets_total",
                "Count of packets processed, by segment and packet type (example: from_client, DIAL_REQ)",
                "counter",
            ),
        ];
        for (family, help, ty) in cases {
            assert_eq!(
                header(&text, family),
                (
                    format!("# HELP {family} {help}"),
                    format!("# TYPE {family} {ty}")
                )
            );
        }
        assert!(text.contains(
            "konnectivity_network_proxy_server_dial_failure_count{reason=\"no_agent\"} 1\n"
        ));
        assert!(text.contains("konnectivity_network_proxy_server_ready_backend_connections 1\n"));
        assert!(text.contains("konnectivity_network_proxy_server_established_connections 0\n"));
        assert!(text.contains(
            "konnectivity_network_proxy_server_stream_packets_total{packet_type=\"DIAL_REQ\",segment=\"from_client\"} 1\n"
        ));
    }

    #[test]
    fn unlabelled_vectors_appear_only_after_first_use_and_plain_metrics_always() {
        let m = Metrics::new();
        let text = m.registry().encode();
        for absent in [
            "dial_duration_seconds",
            "pending_backend_dials",
            "established_connections",
            "ready_backend_connections",
            "dial_failure_count",
        ] {
            assert!(
                !text.contains(&format!("server_{absent}")),
                "{absent} should not be exposed yet:\n{text}"
            );
        }
        for present in [
            "konnectivity_network_proxy_server_http_connections 0\n",
            "konnectivity_network_proxy_server_culled_leases_count 0\n",
            "konnectivity_network_proxy_server_stalled_connections_total 0\n",
        ] {
            assert!(text.contains(present), "missing {present:?} in:\n{text}");
        }
        assert_eq!(
            header(&text, "konnectivity_network_proxy_server_stalled_connections_total").0,
            "# HELP konnectivity_network_proxy_server_stalled_connections_total Number of connections aborted because their reader stalled and their bounded queue overflowed."
        );
    }

    #[test]
    fn every_dial_failure_reason_has_upstream_label() {
        let m = Metrics::new();
        let all = [
            (DialFailureReason::NoAgent, "no_agent"),
            (DialFailureReason::ErrorResponse, "error_response"),
            (
                DialFailureReason::UnrecognizedResponse,
                "unrecognized_response",
            ),
            (DialFailureReason::SendResponse, "send_rsp"),
            (DialFailureReason::BackendClose, "backend_close"),
            (
                DialFailureReason::BackendDialTimeout,
                "backend_dial_timeout",
            ),
            (DialFailureReason::FrontendClose, "frontend_close"),
        ];
        for (r, _) in all {
            m.dial_failure(r);
        }
        m.dial_failure(DialFailureReason::BackendDialTimeout);
        let text = m.registry().encode();
        for (r, label) in all {
            let n = if r == DialFailureReason::BackendDialTimeout {
                2
            } else {
                1
            };
            assert!(
                text.contains(&format!(
                    "konnectivity_network_proxy_server_dial_failure_count{{reason=\"{label}\"}} {n}\n"
                )),
                "{label}: {text}"
            );
        }
    }

    #[test]
    fn gauges_track_inc_dec_and_set() {
        let m = Metrics::new();
        m.grpc_connection_opened(ServiceMethod::Proxy);
        m.grpc_connections_inc(ServiceMethod::Proxy);
        m.grpc_connection_closed(ServiceMethod::Proxy);
        m.grpc_connections_inc(ServiceMethod::Connect);
        m.http_connection_opened();
        m.http_connections_inc();
        m.http_connection_closed();
        m.pending_backend_dials_inc();
        m.pending_backend_dials_inc();
        m.pending_backend_dials_dec();
        m.established_connections_inc();
        m.established_connections_inc();
        m.established_connections_dec();
        m.ready_backends_set(ProxyStrategy::DestHost, 3);
        m.full_receive_channels_inc(ServiceMethod::Connect);
        let text = m.registry().encode();
        for line in [
            "konnectivity_network_proxy_server_grpc_connections{service_method=\"Connect\"} 1\n",
            "konnectivity_network_proxy_server_grpc_connections{service_method=\"Proxy\"} 1\n",
            "konnectivity_network_proxy_server_http_connections 1\n",
            "konnectivity_network_proxy_server_pending_backend_dials 1\n",
            "konnectivity_network_proxy_server_established_connections 1\n",
            "konnectivity_network_proxy_server_ready_backends{proxy_strategy=\"destHost\"} 3\n",
            "konnectivity_network_proxy_server_full_receive_channels{service_method=\"Connect\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn packets_by_value_and_by_name_share_series() {
        let m = Metrics::new();
        let p = Packet::dial_request("tcp", "127.0.0.1:80", 7);
        m.stream_packet_from_client(&p);
        m.stream_packet(Segment::FromClient, p.kind_name());
        m.stream_packet_to_agent(&p);
        m.stream_packet(Segment::ToClient, "SOMETHING_NEW");
        let text = m.registry().encode();
        let f = "konnectivity_network_proxy_server_stream_packets_total";
        for line in [
            format!("{f}{{packet_type=\"DIAL_REQ\",segment=\"from_client\"}} 2\n"),
            format!("{f}{{packet_type=\"DIAL_REQ\",segment=\"to_agent\"}} 1\n"),
            format!("{f}{{packet_type=\"SOMETHING_NEW\",segment=\"to_client\"}} 1\n"),
        ] {
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn stream_errors_use_go_code_names() {
        let m = Metrics::new();
        m.stream_error(Segment::ToAgent, tonic::Code::Cancelled, "DATA");
        m.stream_error(Segment::FromAgent, "Unavailable", "Unknown");
        let text = m.registry().encode();
        let f = "konnectivity_network_proxy_server_stream_errors_total";
        assert_eq!(
            header(&text, f).0,
            format!("# HELP {f} Count of gRPC stream errors, by segment, grpc Code, packet type. (example: from_agent, Code.Unavailable, DIAL_RSP)")
        );
        assert!(text.contains(&format!(
            "{f}{{code=\"Canceled\",packet_type=\"DATA\",segment=\"to_agent\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "{f}{{code=\"Unavailable\",packet_type=\"Unknown\",segment=\"from_agent\"}} 1\n"
        )));
    }

    #[test]
    fn histograms_use_upstream_buckets() {
        let m = Metrics::new();
        m.observe_dial_duration(Duration::from_micros(50));
        m.observe_connection_duration(Duration::from_secs(20));
        m.observe_frontend_write_duration(Duration::from_millis(1));
        let text = m.registry().encode();
        let d = "konnectivity_network_proxy_server_dial_duration_seconds";
        assert_eq!(header(&text, d).1, format!("# TYPE {d} histogram"));
        assert!(text.contains(&format!("{d}_bucket{{le=\"1e-06\"}} 0\n")));
        assert!(text.contains(&format!("{d}_bucket{{le=\"1e-05\"}} 0\n")));
        assert!(text.contains(&format!("{d}_bucket{{le=\"0.0001\"}} 1\n")));
        assert!(text.contains(&format!("{d}_bucket{{le=\"12.5\"}} 1\n")));
        let c = "konnectivity_network_proxy_server_connection_duration_seconds";
        assert!(text.contains(&format!("{c}_bucket{{le=\"15\"}} 0\n")));
        assert!(text.contains(&format!("{c}_bucket{{le=\"30\"}} 1\n")));
        assert!(text.contains(&format!("{c}_bucket{{le=\"86400\"}} 1\n")));
        assert!(text.contains(&format!("{c}_sum 20\n")));
        assert!(text.contains(
            "konnectivity_network_proxy_server_frontend_write_duration_seconds_count 1\n"
        ));
    }

    #[test]
    fn lease_metrics_are_labelled_by_status_code() {
        let m = Metrics::new();
        m.lease_list(200, "", Duration::from_millis(3));
        m.lease_delete(409, "Conflict", Duration::from_millis(3));
        m.culled_lease();
        let text = m.registry().encode();
        for line in [
            "konnectivity_network_proxy_server_lease_list_total{http_status_code=\"200\",reason=\"\"} 1\n",
            "konnectivity_network_proxy_server_lease_delete_total{http_status_code=\"409\",reason=\"Conflict\"} 1\n",
            "konnectivity_network_proxy_server_lease_list_latency_seconds_count{http_status_code=\"200\"} 1\n",
            "konnectivity_network_proxy_server_lease_delete_latency_seconds_count{http_status_code=\"409\"} 1\n",
            "konnectivity_network_proxy_server_culled_leases_count 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn clones_share_series_and_stalled_counter_counts() {
        let m = Metrics::new();
        let m2 = m.clone();
        m2.stalled_connection();
        m.stalled_connection();
        assert!(m
            .registry()
            .encode()
            .contains("konnectivity_network_proxy_server_stalled_connections_total 2\n"));
    }
}
