//! A small metrics registry whose `/metrics` output is byte-compatible with Go's
//! `client_golang` text exposition (format 0.0.4).
//!
//! Why not encode with `prometheus-client`: both of its encoders append a period to every HELP
//! string, force a `_total` suffix on counters (and, from 0.26, debug-panic on names that already
//! end in `_total`), and its metric types expose neither family members nor histogram buckets, so
//! a faithful encoder cannot be written on top of them. Upstream's tests scrape our output with
//! Go's `expfmt` parser and compare HELP/TYPE lines, and upstream has counters without `_total`
//! (`…_server_dial_failure_count`), so here the exposed name and HELP are exactly what the caller
//! registered, families and series are sorted as Go's registry sorts them, and numbers are
//! formatted with Go's `strconv.FormatFloat(v, 'g', -1, 64)` rules.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

/// `Content-Type` of the Prometheus text exposition format 0.0.4, as promhttp sends it.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Go's `prometheus.DefBuckets`, used when a histogram is registered without buckets.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registration errors. They are programming errors (bad constant names), reported instead of
/// panicking so that the caller decides.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsError {
    /// The metric name does not match `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name {0:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidName(String),
    /// A label name does not match `[a-zA-Z_][a-zA-Z0-9_]*`, starts with `__`, repeats, or is
    /// `le` on a histogram.
    #[error("metric {metric}: invalid label name {label:?}: must match [a-zA-Z_][a-zA-Z0-9_]*, must not start with __, repeat, or be \"le\" on a histogram")]
    InvalidLabel {
        /// The metric.
        metric: String,
        /// The rejected label name.
        label: String,
    },
    /// Histogram bucket bounds are not strictly increasing finite numbers.
    #[error("histogram {0}: bucket bounds must be strictly increasing and not NaN")]
    InvalidBuckets(String),
    /// A family with this name was already registered in this registry.
    #[error("metric {0} is already registered")]
    AlreadyRegistered(String),
}

/// The exposition type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Cumulative histogram with fixed buckets.
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// A point-in-time value of one series.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Scalar(f64),
    Histogram {
        /// (upper bound, cumulative count), without the +Inf bucket.
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

/// Anything that can be a series of a family.
pub trait Metric: Clone + Send + Sync + 'static {
    /// Exposition type.
    const KIND: MetricKind;
    /// A fresh, zeroed metric of the same shape (same buckets for histograms).
    fn fresh(&self) -> Self;
    /// Current value.
    #[doc(hidden)]
    fn value(&self) -> ValueSnapshot;
}

/// Opaque current value of a metric, used by the encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueSnapshot(Value);

/// A monotonically increasing integer counter. Cheap to clone (shared `Arc`).
#[derive(Debug, Clone, Default)]
pub struct Counter {
    value: Arc<AtomicU64>,
}

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }
    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl Metric for Counter {
    const KIND: MetricKind = MetricKind::Counter;
    fn fresh(&self) -> Self {
        Counter::default()
    }
    fn value(&self) -> ValueSnapshot {
        ValueSnapshot(Value::Scalar(self.get() as f64))
    }
}

/// An integer gauge. Cheap to clone (shared `Arc`).
#[derive(Debug, Clone, Default)]
pub struct Gauge {
    value: Arc<AtomicI64>,
}

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1);
    }
    /// Adds `n` (may be negative).
    pub fn add(&self, n: i64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.value.store(v, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl Metric for Gauge {
    const KIND: MetricKind = MetricKind::Gauge;
    fn fresh(&self) -> Self {
        Gauge::default()
    }
    fn value(&self) -> ValueSnapshot {
        ValueSnapshot(Value::Scalar(self.get() as f64))
    }
}

#[derive(Debug)]
struct HistogramState {
    /// Non-cumulative counts per bound, plus one trailing slot for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram with fixed upper bounds (`le` buckets, Go semantics: a value lands in the first
/// bucket whose bound is ≥ the value). Cheap to clone (shared `Arc`).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: Arc<[f64]>,
    state: Arc<Mutex<HistogramState>>,
}

impl Histogram {
    fn with_bounds(bounds: Arc<[f64]>) -> Self {
        let state = HistogramState {
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        };
        Histogram {
            bounds,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let idx = self.bounds.partition_point(|b| *b < v);
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = st.counts.get_mut(idx) {
            *c += 1;
        }
        st.sum += v;
        st.count += 1;
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count
    }

    /// Sum of observations so far.
    pub fn sum(&self) -> f64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sum
    }
}

impl Metric for Histogram {
    const KIND: MetricKind = MetricKind::Histogram;
    fn fresh(&self) -> Self {
        Histogram::with_bounds(self.bounds.clone())
    }
    fn value(&self) -> ValueSnapshot {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cumulative = 0u64;
        let buckets = self
            .bounds
            .iter()
            .zip(st.counts.iter())
            .map(|(b, c)| {
                cumulative += c;
                (*b, cumulative)
            })
            .collect();
        ValueSnapshot(Value::Histogram {
            buckets,
            sum: st.sum,
            count: st.count,
        })
    }
}

/// Name, help and label names of a family.
#[derive(Debug)]
struct Desc {
    name: String,
    help: String,
    /// Label names in declaration order.
    labels: Vec<String>,
    /// Indices into `labels`, sorted by label name (Go exposes label pairs sorted by name).
    sorted: Vec<usize>,
}

/// One series, ready to encode: label pairs sorted by name.
#[derive(Debug)]
struct Series {
    labels: Vec<(String, String)>,
    value: Value,
}

/// One family, ready to encode.
#[derive(Debug)]
struct FamilySnapshot {
    name: String,
    help: String,
    kind: MetricKind,
    series: Vec<Series>,
}

trait Collect: Send + Sync {
    fn name(&self) -> &str;
    fn collect(&self) -> FamilySnapshot;
}

/// A metric without labels, always exposed (Go: `NewCounter`, `NewGauge`, …).
struct Single<M: Metric> {
    desc: Desc,
    metric: M,
}

impl<M: Metric> Collect for Single<M> {
    fn name(&self) -> &str {
        &self.desc.name
    }
    fn collect(&self) -> FamilySnapshot {
        FamilySnapshot {
            name: self.desc.name.clone(),
            help: self.desc.help.clone(),
            kind: M::KIND,
            series: vec![Series {
                labels: Vec::new(),
                value: self.metric.value().0,
            }],
        }
    }
}

struct FamilyInner<M: Metric, const N: usize> {
    desc: Desc,
    template: M,
    children: RwLock<Vec<([String; N], M)>>,
}

/// A labelled family (Go: `NewCounterVec`, …). A label combination appears in the output only
/// after its first use, as in Go. Lookups scan linearly: meant for the small, fixed label
/// spaces used here (tens of combinations), not for unbounded label values.
pub struct MetricVec<M: Metric, const N: usize> {
    inner: Arc<FamilyInner<M, N>>,
}

impl<M: Metric, const N: usize> Clone for MetricVec<M, N> {
    fn clone(&self) -> Self {
        MetricVec {
            inner: self.inner.clone(),
        }
    }
}

impl<M: Metric, const N: usize> std::fmt::Debug for MetricVec<M, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricVec")
            .field("name", &self.inner.desc.name)
            .finish()
    }
}

/// Labelled counters.
pub type CounterVec<const N: usize> = MetricVec<Counter, N>;
/// Labelled gauges.
pub type GaugeVec<const N: usize> = MetricVec<Gauge, N>;
/// Labelled histograms.
pub type HistogramVec<const N: usize> = MetricVec<Histogram, N>;

/// An unlabelled metric that appears in the output only after its first use, like Go's
/// `*Vec` created with no label names (upstream uses these for e.g.
/// `…_server_pending_backend_dials` and `…_agent_open_endpoint_connections`). After the first
/// use, access is a lock-free cached clone.
pub struct Lazy<M: Metric> {
    vec: MetricVec<M, 0>,
    cell: Arc<OnceLock<M>>,
}

impl<M: Metric> Clone for Lazy<M> {
    fn clone(&self) -> Self {
        Lazy {
            vec: self.vec.clone(),
            cell: self.cell.clone(),
        }
    }
}

impl<M: Metric> std::fmt::Debug for Lazy<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("name", &self.vec.inner.desc.name)
            .field("used", &self.cell.get().is_some())
            .finish()
    }
}

impl<M: Metric> Lazy<M> {
    /// The metric, created (and from now on exposed) on first call.
    pub fn get(&self) -> &M {
        self.cell.get_or_init(|| self.vec.with_label_values([]))
    }
}

impl<M: Metric, const N: usize> MetricVec<M, N> {
    /// The series for these label values (in the order the label names were declared),
    /// created on first use.
    pub fn with_label_values(&self, values: [&str; N]) -> M {
        {
            let children = self
                .inner
                .children
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((_, m)) = children
                .iter()
                .find(|(k, _)| k.iter().zip(values.iter()).all(|(a, b)| a == b))
            {
                return m.clone();
            }
        }
        let mut children = self
            .inner
            .children
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, m)) = children
            .iter()
            .find(|(k, _)| k.iter().zip(values.iter()).all(|(a, b)| a == b))
        {
            return m.clone();
        }
        let m = self.inner.template.fresh();
        children.push((values.map(str::to_string), m.clone()));
        m
    }
}

impl<M: Metric, const N: usize> Collect for FamilyInner<M, N> {
    fn name(&self) -> &str {
        &self.desc.name
    }
    fn collect(&self) -> FamilySnapshot {
        let children = self.children.read().unwrap_or_else(PoisonError::into_inner);
        let series = children
            .iter()
            .map(|(values, m)| Series {
                labels: self
                    .desc
                    .sorted
                    .iter()
                    .filter_map(|&i| {
                        Some((self.desc.labels.get(i)?.clone(), values.get(i)?.clone()))
                    })
                    .collect(),
                value: m.value().0,
            })
            .collect();
        FamilySnapshot {
            name: self.desc.name.clone(),
            help: self.desc.help.clone(),
            kind: M::KIND,
            series,
        }
    }
}

/// A set of metric families exposed together on one `/metrics` endpoint. Cheap to clone: all
/// clones share the same families, so one registry can be handed to several components.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<Vec<Arc<dyn Collect>>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_list()
            .entries(families.iter().map(|c| c.name().to_string()))
            .finish()
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

fn validate_buckets(name: &str, buckets: &[f64]) -> Result<Arc<[f64]>, MetricsError> {
    let mut bounds: Vec<f64> = if buckets.is_empty() {
        DEFAULT_BUCKETS.to_vec()
    } else {
        buckets.to_vec()
    };
    // Go drops an explicit trailing +Inf bucket; it is always implied.
    if bounds.last().is_some_and(|b| *b == f64::INFINITY) {
        bounds.pop();
    }
    let increasing = bounds.windows(2).all(|w| w[0] < w[1]);
    if !increasing || bounds.iter().any(|b| b.is_nan()) {
        return Err(MetricsError::InvalidBuckets(name.to_string()));
    }
    Ok(bounds.into())
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn desc(
        name: &str,
        help: &str,
        labels: &[&str],
        kind: MetricKind,
    ) -> Result<Desc, MetricsError> {
        if !valid_metric_name(name) {
            return Err(MetricsError::InvalidName(name.to_string()));
        }
        for (i, l) in labels.iter().enumerate() {
            if !valid_label_name(l)
                || labels[..i].contains(l)
                || (kind == MetricKind::Histogram && *l == "le")
            {
                return Err(MetricsError::InvalidLabel {
                    metric: name.to_string(),
                    label: l.to_string(),
                });
            }
        }
        let mut sorted: Vec<usize> = (0..labels.len()).collect();
        sorted.sort_by_key(|&i| labels[i]);
        Ok(Desc {
            name: name.to_string(),
            help: help.to_string(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            sorted,
        })
    }

    fn add(&self, family: Arc<dyn Collect>) -> Result<(), MetricsError> {
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        if families.iter().any(|f| f.name() == family.name()) {
            return Err(MetricsError::AlreadyRegistered(family.name().to_string()));
        }
        families.push(family);
        Ok(())
    }

    fn single<M: Metric>(&self, name: &str, help: &str, metric: M) -> Result<M, MetricsError> {
        let desc = Self::desc(name, help, &[], M::KIND)?;
        self.add(Arc::new(Single {
            desc,
            metric: metric.clone(),
        }))?;
        Ok(metric)
    }

    fn vec<M: Metric, const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&str; N],
        template: M,
    ) -> Result<MetricVec<M, N>, MetricsError> {
        let desc = Self::desc(name, help, &labels, M::KIND)?;
        let inner = Arc::new(FamilyInner {
            desc,
            template,
            children: RwLock::new(Vec::new()),
        });
        self.add(inner.clone())?;
        Ok(MetricVec { inner })
    }

    /// Registers a counter exposed under exactly `name` (no `_total` is added or required, so
    /// legacy names such as `…_dial_failure_count` are reproduced as they are).
    pub fn counter(&self, name: &str, help: &str) -> Result<Counter, MetricsError> {
        self.single(name, help, Counter::default())
    }

    /// Registers a gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Result<Gauge, MetricsError> {
        self.single(name, help, Gauge::default())
    }

    /// Registers a histogram; empty `buckets` means Go's default buckets.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, MetricsError> {
        let bounds = validate_buckets(name, buckets)?;
        self.single(name, help, Histogram::with_bounds(bounds))
    }

    /// Registers a labelled counter family exposed under exactly `name`.
    pub fn counter_vec<const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&str; N],
    ) -> Result<CounterVec<N>, MetricsError> {
        self.vec(name, help, labels, Counter::default())
    }

    /// Registers a labelled gauge family.
    pub fn gauge_vec<const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&str; N],
    ) -> Result<GaugeVec<N>, MetricsError> {
        self.vec(name, help, labels, Gauge::default())
    }

    /// Registers a labelled histogram family; empty `buckets` means Go's default buckets.
    pub fn histogram_vec<const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&str; N],
        buckets: &[f64],
    ) -> Result<HistogramVec<N>, MetricsError> {
        let bounds = validate_buckets(name, buckets)?;
        self.vec(name, help, labels, Histogram::with_bounds(bounds))
    }

    fn lazy<M: Metric>(
        &self,
        name: &str,
        help: &str,
        template: M,
    ) -> Result<Lazy<M>, MetricsError> {
        Ok(Lazy {
            vec: self.vec(name, help, [], template)?,
            cell: Arc::new(OnceLock::new()),
        })
    }

    /// Registers an unlabelled counter exposed only after first use (Go: `NewCounterVec` with
    /// no labels).
    pub fn lazy_counter(&self, name: &str, help: &str) -> Result<Lazy<Counter>, MetricsError> {
        self.lazy(name, help, Counter::default())
    }

    /// Registers an unlabelled gauge exposed only after first use (Go: `NewGaugeVec` with no
    /// labels).
    pub fn lazy_gauge(&self, name: &str, help: &str) -> Result<Lazy<Gauge>, MetricsError> {
        self.lazy(name, help, Gauge::default())
    }

    /// Registers an unlabelled histogram exposed only after first use (Go: `NewHistogramVec`
    /// with no labels); empty `buckets` means Go's default buckets.
    pub fn lazy_histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Lazy<Histogram>, MetricsError> {
        let bounds = validate_buckets(name, buckets)?;
        self.lazy(name, help, Histogram::with_bounds(bounds))
    }

    /// Encodes every family in the Prometheus text format 0.0.4, exactly as Go's
    /// `promhttp`/`expfmt` would: families sorted by name, series sorted by label values,
    /// label-less vectors omitted until first use, no `# EOF`, no `# UNIT`.
    pub fn encode(&self) -> String {
        let families: Vec<Arc<dyn Collect>> = self
            .families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut snapshots: Vec<FamilySnapshot> = families
            .iter()
            .map(|f| f.collect())
            .filter(|f| !f.series.is_empty())
            .collect();
        snapshots.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = String::new();
        for mut fam in snapshots {
            fam.series.sort_by(|a, b| {
                a.labels
                    .iter()
                    .map(|(_, v)| v)
                    .cmp(b.labels.iter().map(|(_, v)| v))
            });
            write_family(&mut out, &fam);
        }
        out
    }
}

/// Go's `writeEscapedString`: HELP escapes `\` and newline; label values also `"`.
fn escape(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn write_family(out: &mut String, fam: &FamilySnapshot) {
    out.push_str("# HELP ");
    out.push_str(&fam.name);
    out.push(' ');
    escape(out, &fam.help, false);
    out.push('\n');
    let _ = writeln!(out, "# TYPE {} {}", fam.name, fam.kind.as_str());
    for s in &fam.series {
        match &s.value {
            Value::Scalar(v) => write_sample(out, &fam.name, "", &s.labels, None, *v),
            Value::Histogram {
                buckets,
                sum,
                count,
            } => {
                for (bound, c) in buckets {
                    write_sample(
                        out,
                        &fam.name,
                        "_bucket",
                        &s.labels,
                        Some(*bound),
                        *c as f64,
                    );
                }
                write_sample(
                    out,
                    &fam.name,
                    "_bucket",
                    &s.labels,
                    Some(f64::INFINITY),
                    *count as f64,
                );
                write_sample(out, &fam.name, "_sum", &s.labels, None, *sum);
                write_sample(out, &fam.name, "_count", &s.labels, None, *count as f64);
            }
        }
    }
}

fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(String, String)],
    le: Option<f64>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        let mut sep = '{';
        for (k, v) in labels {
            out.push(sep);
            out.push_str(k);
            out.push_str("=\"");
            escape(out, v, true);
            out.push('"');
            sep = ',';
        }
        if let Some(le) = le {
            out.push(sep);
            out.push_str("le=\"");
            out.push_str(&go_float(le));
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&go_float(value));
    out.push('\n');
}

/// Formats like client_golang's `writeFloat`: `1`, `0`, `-1`, `NaN`, `+Inf`, `-Inf`, else
/// `strconv.FormatFloat(f, 'g', -1, 64)` (shortest round-trip digits; exponent form when the
/// decimal exponent is < -4 or ≥ 6, written `e±XX` with at least two digits).
pub fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if f == 0.0 {
        return "0".to_string();
    }
    // Rust's `{:e}` yields the shortest round-trip digits, like Go's shortest mode.
    let sci = format!("{:e}", f.abs());
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return format!("{f}");
    };
    let Ok(exp) = exp.parse::<i32>() else {
        return format!("{f}");
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::with_capacity(24);
    if f < 0.0 {
        out.push('-');
    }
    if !(-4..6).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let _ = write!(out, "{:02}", exp.unsigned_abs());
    } else {
        let nd = digits.len() as i32;
        let dp = exp + 1; // digits before the decimal point
        if dp <= 0 {
            out.push_str("0.");
            for _ in 0..(-dp) {
                out.push('0');
            }
            out.push_str(&digits);
        } else if dp >= nd {
            out.push_str(&digits);
            for _ in 0..(dp - nd) {
                out.push('0');
            }
        } else {
            let (int, frac) = digits.split_at(dp as usize);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn go_float_matches_strconv_g_shortest() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (0.5, "0.5"),
            (-0.25, "-0.25"),
            (1e-6, "1e-06"),
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (0.005, "0.005"),
            (0.025, "0.025"),
            (12.5, "12.5"),
            (100.0, "100"),
            (86400.0, "86400"),
            (100000.0, "100000"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (2652616.0, "2.652616e+06"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (2.5e-10, "2.5e-10"),
            (0.1 + 0.2, "0.30000000000000004"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ];
        for (v, want) in cases {
            assert_eq!(go_float(*v), *want, "formatting {v:e}");
        }
    }

    #[test]
    fn counter_vec_with_labels_encodes_like_client_golang() {
        let r = Registry::new();
        let c = r
            .counter_vec(
                "konnectivity_network_proxy_server_stream_packets_total",
                "Count of packets processed, by segment and packet type (example: from_client, DIAL_REQ)",
                ["segment", "packet_type"],
            )
            .unwrap();
        c.with_label_values(["to_agent", "DIAL_REQ"]).inc();
        c.with_label_values(["from_client", "DIAL_REQ"]).inc_by(2);
        c.with_label_values(["from_client", "DATA"]).inc();
        assert_eq!(
            r.encode(),
            "# HELP konnectivity_network_proxy_server_stream_packets_total Count of packets processed, by segment and packet type (example: from_client, DIAL_REQ)\n\
             # TYPE konnectivity_network_proxy_server_stream_packets_total counter\n\
             konnectivity_network_proxy_server_stream_packets_total{packet_type=\"DATA\",segment=\"from_client\"} 1\n\
             konnectivity_network_proxy_server_stream_packets_total{packet_type=\"DIAL_REQ\",segment=\"from_client\"} 2\n\
             konnectivity_network_proxy_server_stream_packets_total{packet_type=\"DIAL_REQ\",segment=\"to_agent\"} 1\n"
        );
    }

    #[test]
    fn gauge_encodes_with_exact_help_and_negative_values() {
        let r = Registry::new();
        let g = r
            .gauge(
                "konnectivity_network_proxy_agent_open_server_connections",
                "Current number of open server connections.",
            )
            .unwrap();
        g.set(3);
        g.dec();
        g.add(-5);
        assert_eq!(
            r.encode(),
            "# HELP konnectivity_network_proxy_agent_open_server_connections Current number of open server connections.\n\
             # TYPE konnectivity_network_proxy_agent_open_server_connections gauge\n\
             konnectivity_network_proxy_agent_open_server_connections -3\n"
        );
    }

    #[test]
    fn histogram_encodes_buckets_inf_sum_count() {
        let r = Registry::new();
        let h = r
            .histogram(
                "x_dial_duration_seconds",
                "Latency of dial.",
                &[1e-6, 1e-5, 1e-4, 0.005, 0.025, 0.1, 0.5, 2.5, 12.5],
            )
            .unwrap();
        h.observe(0.005); // le is inclusive: lands in 0.005
        h.observe(0.2);
        h.observe(100.0); // only +Inf
        assert_eq!(
            r.encode(),
            "# HELP x_dial_duration_seconds Latency of dial.\n\
             # TYPE x_dial_duration_seconds histogram\n\
             x_dial_duration_seconds_bucket{le=\"1e-06\"} 0\n\
             x_dial_duration_seconds_bucket{le=\"1e-05\"} 0\n\
             x_dial_duration_seconds_bucket{le=\"0.0001\"} 0\n\
             x_dial_duration_seconds_bucket{le=\"0.005\"} 1\n\
             x_dial_duration_seconds_bucket{le=\"0.025\"} 1\n\
             x_dial_duration_seconds_bucket{le=\"0.1\"} 1\n\
             x_dial_duration_seconds_bucket{le=\"0.5\"} 2\n\
             x_dial_duration_seconds_bucket{le=\"2.5\"} 2\n\
             x_dial_duration_seconds_bucket{le=\"12.5\"} 2\n\
             x_dial_duration_seconds_bucket{le=\"+Inf\"} 3\n\
             x_dial_duration_seconds_sum 100.205\n\
             x_dial_duration_seconds_count 3\n"
        );
    }

    #[test]
    fn labelled_histogram_puts_le_after_sorted_labels() {
        let r = Registry::new();
        let h = r
            .histogram_vec("lat", "L", ["http_status_code"], &[1.0])
            .unwrap();
        h.with_label_values(["200"]).observe(0.5);
        assert_eq!(
            r.encode(),
            "# HELP lat L\n# TYPE lat histogram\n\
             lat_bucket{http_status_code=\"200\",le=\"1\"} 1\n\
             lat_bucket{http_status_code=\"200\",le=\"+Inf\"} 1\n\
             lat_sum{http_status_code=\"200\"} 0.5\n\
             lat_count{http_status_code=\"200\"} 1\n"
        );
    }

    #[test]
    fn legacy_counter_name_is_exposed_exactly_without_total() {
        let r = Registry::new();
        let c = r
            .counter_vec(
                "konnectivity_network_proxy_server_dial_failure_count",
                "Number of dial failures observed. Multiple failures can occur for a single dial request.",
                ["reason"],
            )
            .unwrap();
        c.with_label_values(["no_agent"]).inc();
        assert_eq!(
            r.encode(),
            "# HELP konnectivity_network_proxy_server_dial_failure_count Number of dial failures observed. Multiple failures can occur for a single dial request.\n\
             # TYPE konnectivity_network_proxy_server_dial_failure_count counter\n\
             konnectivity_network_proxy_server_dial_failure_count{reason=\"no_agent\"} 1\n"
        );
    }

    #[test]
    fn families_are_sorted_and_unused_vectors_omitted() {
        let r = Registry::new();
        r.counter_vec("b_vec", "unused", ["x"]).unwrap();
        r.counter("c_plain", "h").unwrap();
        r.gauge("a_plain", "h").unwrap();
        assert_eq!(
            r.encode(),
            "# HELP a_plain h\n# TYPE a_plain gauge\na_plain 0\n\
             # HELP c_plain h\n# TYPE c_plain counter\nc_plain 0\n"
        );
    }

    #[test]
    fn help_and_label_values_are_escaped_like_go() {
        let r = Registry::new();
        let c = r.counter_vec("e", "a\\b\nc \"q\"", ["l"]).unwrap();
        c.with_label_values(["x\"y\\z\nw"]).inc();
        assert_eq!(
            r.encode(),
            "# HELP e a\\\\b\\nc \"q\"\n# TYPE e counter\ne{l=\"x\\\"y\\\\z\\nw\"} 1\n"
        );
    }

    #[test]
    fn lazy_metrics_appear_only_after_first_use() {
        let r = Registry::new();
        let g = r
            .lazy_gauge("pending", "Current number of pending backend dial requests")
            .unwrap();
        let h = r.lazy_histogram("lat", "L", &[1.0]).unwrap();
        assert_eq!(r.encode(), "");
        g.get().set(0);
        assert_eq!(
            r.encode(),
            "# HELP pending Current number of pending backend dial requests\n\
             # TYPE pending gauge\npending 0\n"
        );
        let g2 = g.clone();
        g2.get().inc();
        assert_eq!(g.get().get(), 1);
        h.get().observe(2.0);
        assert!(r.encode().contains("lat_bucket{le=\"+Inf\"} 1\n"));
    }

    #[test]
    fn same_labels_return_the_same_series() {
        let r = Registry::new();
        let c = r.counter_vec("s", "h", ["a", "b"]).unwrap();
        c.with_label_values(["1", "2"]).inc();
        c.with_label_values(["1", "2"]).inc();
        c.with_label_values(["2", "1"]).inc();
        assert_eq!(c.with_label_values(["1", "2"]).get(), 2);
        assert_eq!(c.with_label_values(["2", "1"]).get(), 1);
    }

    #[test]
    fn registry_clones_share_families() {
        let r = Registry::new();
        let r2 = r.clone();
        r2.counter("shared", "h").unwrap().inc();
        assert!(r.encode().contains("shared 1\n"));
    }

    #[test]
    fn invalid_registrations_are_errors_not_panics() {
        let r = Registry::new();
        assert_eq!(
            r.counter("1bad", "h").unwrap_err(),
            MetricsError::InvalidName("1bad".into())
        );
        assert!(matches!(
            r.counter_vec("ok", "h", ["__x"]),
            Err(MetricsError::InvalidLabel { .. })
        ));
        assert!(matches!(
            r.counter_vec("ok", "h", ["a", "a"]),
            Err(MetricsError::InvalidLabel { .. })
        ));
        assert!(matches!(
            r.histogram_vec("ok", "h", ["le"], &[1.0]),
            Err(MetricsError::InvalidLabel { .. })
        ));
        assert!(matches!(
            r.histogram("ok", "h", &[2.0, 1.0]),
            Err(MetricsError::InvalidBuckets(_))
        ));
        r.gauge("dup", "h").unwrap();
        assert_eq!(
            r.counter("dup", "h").unwrap_err(),
            MetricsError::AlreadyRegistered("dup".into())
        );
    }

    #[test]
    fn histogram_defaults_and_trailing_inf_follow_go() {
        let r = Registry::new();
        let h = r.histogram("d", "h", &[]).unwrap();
        h.observe(7.0);
        let text = r.encode();
        assert!(text.contains("d_bucket{le=\"5\"} 0\n"));
        assert!(text.contains("d_bucket{le=\"10\"} 1\n"));
        let h2 = r.histogram("i", "h", &[1.0, f64::INFINITY]).unwrap();
        h2.observe(2.0);
        let text = r.encode();
        assert_eq!(text.matches("i_bucket{le=\"+Inf\"}").count(), 1);
    }

    #[test]
    fn concurrent_updates_are_all_counted() {
        let r = Registry::new();
        let c = r.counter_vec("conc", "h", ["k"]).unwrap();
        let h = r.histogram("hc", "h", &[1.0]).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        c.with_label_values([if (i + t) % 2 == 0 { "a" } else { "b" }])
                            .inc();
                        h.observe(0.5);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            c.with_label_values(["a"]).get() + c.with_label_values(["b"]).get(),
            4000
        );
        assert_eq!(h.count(), 4000);
        assert_eq!(h.sum(), 2000.0);
    }
}
