//! Health, readiness and metrics endpoints shared by the proxy-server and the proxy-agent.
//!
//! * [`metrics`]: a registry whose `/metrics` text is byte-compatible with Go's client_golang
//!   (upstream's tests parse it with Go's `expfmt` and compare HELP/TYPE lines).
//! * [`server`]: the health port (`/healthz`, `/readyz`, `/ready`, `/metrics`) and the two admin
//!   ports, with upstream's status codes and bodies, bounded against misbehaving clients and
//!   stopped through a `CancellationToken`.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod server;

pub use metrics::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramVec, Lazy, MetricsError, Registry,
    TEXT_CONTENT_TYPE,
};
pub use server::{
    serve_agent_admin, serve_health, serve_server_admin, Readiness, ReadinessBody, ReadinessCheck,
};
