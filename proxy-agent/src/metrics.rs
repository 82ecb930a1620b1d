//! proxy-agent metrics: upstream's names, types, labels, buckets and HELP strings
//! (`konnectivity_network_proxy_agent_*`), plus our `stalled_connections_total`.
//!
//! Callers use typed methods, never raw label strings. Families that upstream creates as
//! label-less `*Vec`s appear on `/metrics` only after their first use, exactly as there.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use konnectivity_health::metrics::{
    Counter, CounterVec, Gauge, HistogramVec, Lazy, MetricsError, Registry,
};
use konnectivity_health::Histogram;
use konnectivity_proto::PACKET_TYPE_NAMES;

/// Go's name of a gRPC status code, for `stream_error` (shared with the proxy-server).
pub use konnectivity_proto::CodeLabel;

/// Prometheus namespace shared by every konnectivity metric.
pub const NAMESPACE: &str = "konnectivity_network_proxy";
/// Prometheus subsystem of the proxy-agent.
pub const SUBSYSTEM: &str = "agent";

/// Upstream's agent latency buckets ("5 ms to 30 seconds").
pub const LATENCY_BUCKETS: &[f64] = &[0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 30.0];

/// Why dialing the destination failed (`endpoint_dial_failure_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointDialFailure {
    /// The fixed endpoint dial timeout expired.
    Timeout,
    /// Any other dial error (refused, unreachable, DNS…).
    Unknown,
}

impl EndpointDialFailure {
    /// The label value upstream uses.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointDialFailure::Timeout => "timeout",
            EndpointDialFailure::Unknown => "unknown",
        }
    }
}

/// Direction of a failed exchange with the proxy-server
/// (`server_connection_failure_count{direction}`, deprecated upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sending to the server failed.
    ToServer,
    /// Receiving from the server failed.
    FromServer,
}

impl Direction {
    /// The label value upstream uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToServer => "to_server",
            Direction::FromServer => "from_server",
        }
    }
}

/// Tunnel segment (`segment` label). The agent labels what it sends `from_agent` and what it
/// receives `to_agent`, as upstream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Agent → server.
    FromAgent,
    /// Server → agent.
    ToAgent,
}

impl Segment {
    /// The label value upstream uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Segment::FromAgent => "from_agent",
            Segment::ToAgent => "to_agent",
        }
    }

    fn index(self) -> usize {
        match self {
            Segment::FromAgent => 0,
            Segment::ToAgent => 1,
        }
    }
}

/// `stream_packets_total` with a per-(segment, type) cache: counting a packet is one atomic
/// add after the first packet of its kind, with no lock.
struct PacketCounters {
    family: CounterVec<2>,
    cache: [[OnceLock<Counter>; PACKET_TYPE_NAMES.len()]; 2],
}

impl PacketCounters {
    fn new(family: CounterVec<2>) -> Self {
        PacketCounters {
            family,
            cache: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
        }
    }

    fn inc(&self, segment: Segment, packet_type: &'static str) {
        let cached = PACKET_TYPE_NAMES
            .iter()
            .position(|t| *t == packet_type)
            .and_then(|i| self.cache[segment.index()].get(i));
        match cached {
            Some(cell) => cell
                .get_or_init(|| {
                    self.family
                        .with_label_values([segment.as_str(), packet_type])
                })
                .inc(),
            None => self
                .family
                .with_label_values([segment.as_str(), packet_type])
                .inc(),
        }
    }
}

struct Inner {
    dial_duration: Lazy<Histogram>,
    server_failures: CounterVec<1>,
    endpoint_dial_failures: CounterVec<1>,
    open_server_connections: Lazy<Gauge>,
    known_server_count: Gauge,
    open_endpoint_connections: Lazy<Gauge>,
    lease_lists: CounterVec<2>,
    lease_watches: CounterVec<2>,
    lease_list_latency: HistogramVec<1>,
    stream_packets: PacketCounters,
    stream_errors: CounterVec<3>,
    stalled_connections: Counter,
}

/// All proxy-agent metrics. Cheap to clone (one `Arc`); every clone updates the same series.
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
            server_failures: r.counter_vec(
                &name("server_connection_failure_count"),
                "Count of failures to send to or receive from the proxy server, labeled by the direction (from_server or to_server). DEPRECATED, please use stream_events_error_total",
                ["direction"],
            )?,
            endpoint_dial_failures: r.counter_vec(
                &name("endpoint_dial_failure_total"),
                "Number of failures dialing the remote endpoint, by reason (example: timeout).",
                ["reason"],
            )?,
            open_server_connections: r.lazy_gauge(
                &name("open_server_connections"),
                "Current number of open server connections.",
            )?,
            known_server_count: r.gauge(
                &name("known_server_count"),
                "Current number of servers agent is trying to connect to.",
            )?,
            open_endpoint_connections: r.lazy_gauge(
                &name("open_endpoint_connections"),
                "Current number of open endpoint connections.",
            )?,
            lease_lists: r.counter_vec(
                &name("lease_lists_total"),
                "Count of server lease list calls made by the agent to the k8s apiserver, labeled by HTTP response code and reason",
                ["http_response_code", "reason"],
            )?,
            lease_watches: r.counter_vec(
                &name("lease_watches_total"),
                "Count of server lease watch calls made by the agent to the k8s apiserver, labeled by HTTP response code and reason",
                ["http_response_code", "reason"],
            )?,
            lease_list_latency: r.histogram_vec(
                &name("lease_list_latency_seconds"),
                "Latency of server lease listing in seconds",
                ["http_response_code"],
                LATENCY_BUCKETS,
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

    /// The registry to serve on the health `/metrics` endpoint (cheap clone).
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// A connection to a proxy-server was opened.
    pub fn open_server_connections_inc(&self) {
        self.inner.open_server_connections.get().inc();
    }

    /// A connection to a proxy-server was closed.
    pub fn open_server_connections_dec(&self) {
        self.inner.open_server_connections.get().dec();
    }

    /// Sets how many servers the agent is trying to stay connected to.
    pub fn known_server_count_set(&self, n: usize) {
        self.inner
            .known_server_count
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A connection to a destination was opened.
    pub fn open_endpoint_connections_inc(&self) {
        self.inner.open_endpoint_connections.get().inc();
    }

    /// A connection to a destination was closed.
    pub fn open_endpoint_connections_dec(&self) {
        self.inner.open_endpoint_connections.get().dec();
    }

    /// Counts one failed destination dial.
    pub fn endpoint_dial_failure(&self, reason: EndpointDialFailure) {
        self.inner
            .endpoint_dial_failures
            .with_label_values([reason.as_str()])
            .inc();
    }

    /// Records how long a destination dial took.
    pub fn observe_dial_duration(&self, d: Duration) {
        self.inner.dial_duration.get().observe_duration(d);
    }

    /// Counts one failed send to / receive from a proxy-server (deprecated upstream metric).
    pub fn server_connection_failure(&self, direction: Direction) {
        self.inner
            .server_failures
            .with_label_values([direction.as_str()])
            .inc();
    }

    /// Counts one packet; `packet_type` is the enum name (`Packet::kind_name()`).
    pub fn stream_packet(&self, segment: Segment, packet_type: &'static str) {
        self.inner.stream_packets.inc(segment, packet_type);
    }

    /// Counts a stream send/receive error; `packet_type` is `"Unknown"` for receive errors.
    pub fn stream_error(&self, segment: Segment, code: impl CodeLabel, packet_type: &'static str) {
        self.inner
            .stream_errors
            .with_label_values([segment.as_str(), code.code_label(), packet_type])
            .inc();
    }

    /// Counts one connection aborted because its reader stalled and its queue overflowed.
    pub fn stalled_connection(&self) {
        self.inner.stalled_connections.inc();
    }

    /// Records one lease list call: HTTP response code, reason and latency.
    pub fn lease_list(&self, http_response_code: u16, reason: &str, latency: Duration) {
        let code = http_response_code.to_string();
        self.inner
            .lease_lists
            .with_label_values([code.as_str(), reason])
            .inc();
        self.inner
            .lease_list_latency
            .with_label_values([code.as_str()])
            .observe_duration(latency);
    }

    /// Records one lease watch call: HTTP response code and reason.
    pub fn lease_watch(&self, http_response_code: u16, reason: &str) {
        let code = http_response_code.to_string();
        self.inner
            .lease_watches
            .with_label_values([code.as_str(), reason])
            .inc();
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
        let r = Registry::new();
        Metrics::register(&r).unwrap();
        assert!(Metrics::register(&r).is_err());
    }

    #[test]
    fn upstream_compared_families_have_exact_help_and_type() {
        let m = Metrics::new();
        m.endpoint_dial_failure(EndpointDialFailure::Timeout);
        m.open_endpoint_connections_inc();
        m.open_server_connections_inc();
        m.known_server_count_set(2);
        m.stream_packet(Segment::FromAgent, "DIAL_RSP");
        let text = m.registry().encode();
        let cases = [
            (
                "konnectivity_network_proxy_agent_endpoint_dial_failure_total",
                "Number of failures dialing the remote endpoint, by reason (example: timeout).",
                "counter",
            ),
            (
                "konnectivity_network_proxy_agent_open_endpoint_connections",
                "Current number of open endpoint connections.",
                "gauge",
            ),
            (
                "konnectivity_network_proxy_agent_open_server_connections",
                "Current number of open server connections.",
                "gauge",
            ),
            (
                "konnectivity_network_proxy_agent_known_server_count",
                "Current number of servers agent is trying to connect to.",
                "gauge",
            ),
            (
                "konnectivity_network_proxy_agent_stream_packets_total",
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
        for line in [
            "konnectivity_network_proxy_agent_endpoint_dial_failure_total{reason=\"timeout\"} 1\n",
            "konnectivity_network_proxy_agent_open_endpoint_connections 1\n",
            "konnectivity_network_proxy_agent_open_server_connections 1\n",
            "konnectivity_network_proxy_agent_known_server_count 2\n",
            "konnectivity_network_proxy_agent_stream_packets_total{packet_type=\"DIAL_RSP\",segment=\"from_agent\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn unlabelled_vectors_appear_only_after_first_use_and_plain_metrics_always() {
        let m = Metrics::new();
        let text = m.registry().encode();
        for absent in [
            "open_endpoint_connections",
            "open_server_connections",
            "dial_duration_seconds",
            "endpoint_dial_failure_total",
        ] {
            assert!(
                !text.contains(&format!("agent_{absent}")),
                "{absent} should not be exposed yet:\n{text}"
            );
        }
        assert!(text.contains("konnectivity_network_proxy_agent_known_server_count 0\n"));
        assert!(text.contains("konnectivity_network_proxy_agent_stalled_connections_total 0\n"));
        // Back to zero after use: still exposed, with 0.
        m.open_endpoint_connections_inc();
        m.open_endpoint_connections_dec();
        assert!(m
            .registry()
            .encode()
            .contains("konnectivity_network_proxy_agent_open_endpoint_connections 0\n"));
    }

    #[test]
    fn dial_failures_directions_and_errors_use_upstream_labels() {
        let m = Metrics::new();
        m.endpoint_dial_failure(EndpointDialFailure::Unknown);
        m.endpoint_dial_failure(EndpointDialFailure::Unknown);
        m.server_connection_failure(Direction::FromServer);
        m.server_connection_failure(Direction::ToServer);
        m.stream_error(Segment::ToAgent, tonic::Code::Unavailable, "Unknown");
        m.stream_error(Segment::FromAgent, "Canceled", "DATA");
        let text = m.registry().encode();
        for line in [
            "konnectivity_network_proxy_agent_endpoint_dial_failure_total{reason=\"unknown\"} 2\n",
            "konnectivity_network_proxy_agent_server_connection_failure_count{direction=\"from_server\"} 1\n",
            "konnectivity_network_proxy_agent_server_connection_failure_count{direction=\"to_server\"} 1\n",
            "konnectivity_network_proxy_agent_stream_errors_total{code=\"Unavailable\",packet_type=\"Unknown\",segment=\"to_agent\"} 1\n",
            "konnectivity_network_proxy_agent_stream_errors_total{code=\"Canceled\",packet_type=\"DATA\",segment=\"from_agent\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn dial_duration_uses_upstream_buckets() {
        let m = Metrics::new();
        m.observe_dial_duration(Duration::from_secs(7));
        let text = m.registry().encode();
        let d = "konnectivity_network_proxy_agent_dial_duration_seconds";
        assert_eq!(header(&text, d).1, format!("# TYPE {d} histogram"));
        for line in [
            format!("{d}_bucket{{le=\"0.005\"}} 0\n"),
            format!("{d}_bucket{{le=\"2.5\"}} 0\n"),
            format!("{d}_bucket{{le=\"10\"}} 1\n"),
            format!("{d}_bucket{{le=\"30\"}} 1\n"),
            format!("{d}_bucket{{le=\"+Inf\"}} 1\n"),
            format!("{d}_sum 7\n"),
            format!("{d}_count 1\n"),
        ] {
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn packets_of_unknown_type_are_still_counted() {
        let m = Metrics::new();
        m.stream_packet(Segment::ToAgent, "DATA");
        m.stream_packet(Segment::ToAgent, "DATA");
        m.stream_packet(Segment::ToAgent, "Unknown");
        let text = m.registry().encode();
        let f = "konnectivity_network_proxy_agent_stream_packets_total";
        assert!(text.contains(&format!(
            "{f}{{packet_type=\"DATA\",segment=\"to_agent\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "{f}{{packet_type=\"Unknown\",segment=\"to_agent\"}} 1\n"
        )));
    }

    #[test]
    fn lease_metrics_are_labelled_by_response_code() {
        let m = Metrics::new();
        m.lease_list(200, "", Duration::from_millis(2));
        m.lease_watch(410, "Expired");
        let text = m.registry().encode();
        for line in [
            "konnectivity_network_proxy_agent_lease_lists_total{http_response_code=\"200\",reason=\"\"} 1\n",
            "konnectivity_network_proxy_agent_lease_watches_total{http_response_code=\"410\",reason=\"Expired\"} 1\n",
            "konnectivity_network_proxy_agent_lease_list_latency_seconds_count{http_response_code=\"200\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn clones_share_series() {
        let m = Metrics::new();
        m.clone().stalled_connection();
        m.stalled_connection();
        assert!(m
            .registry()
            .encode()
            .contains("konnectivity_network_proxy_agent_stalled_connections_total 2\n"));
    }
}
