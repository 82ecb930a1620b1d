//! `/containerLogs`: every container has a log that gains one line per interval.
//!
//! The log is a function of time rather than a buffer: the container "started" with the
//! stand-in, line `n` (1-based) is `line n from {ns}/{pod}/{container}` and appeared at
//! `start + (n-1) * interval`, and only the last [`HISTORY_LINES`] lines are kept. So any
//! number of containers costs no memory and no background task, every reader of one container
//! sees the same lines with the same timestamps, and a follower simply sleeps until the next
//! line is due.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::stream;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{query_first, text, ActiveGuard, Activity, Body, PodContainer, Query, State};
use crate::request::parse_go_bool;

/// Lines of history kept per container; older lines are gone, as with a rotated log file.
/// Cost: a non-following request can return up to this many lines (~40 bytes each).
pub const HISTORY_LINES: u64 = 1000;

/// Most lines put in one HTTP chunk when catching up on history. Cost: a larger chunk is one
/// bigger write (~40 bytes per line); smaller means more chunk framing overhead.
pub const LINES_PER_CHUNK: u64 = 100;

/// The growing log shared by every container; see the module documentation.
#[derive(Debug)]
pub(crate) struct LogSource {
    started: Instant,
    started_wall: SystemTime,
    interval: Duration,
}

impl LogSource {
    /// A log whose line 1 appears now.
    pub(crate) fn new(interval: Duration) -> Self {
        LogSource {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            interval,
        }
    }

    /// `interval * k`, saturating instead of overflowing for absurd `k`.
    fn offset(&self, k: u64) -> Duration {
        let nanos = self.interval.as_nanos().saturating_mul(u128::from(k));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many lines exist at `now` (at least 1: line 1 appears at start).
    fn count_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.started).as_nanos();
        let k = elapsed / self.interval.as_nanos().max(1);
        u64::try_from(k).unwrap_or(u64::MAX - 1).saturating_add(1)
    }

    /// When line `n` appears.
    fn due(&self, n: u64) -> Instant {
        self.started + self.offset(n.saturating_sub(1))
    }

    /// The wall-clock time of line `n`.
    fn wall(&self, n: u64) -> SystemTime {
        self.started_wall + self.offset(n.saturating_sub(1))
    }

    /// The first line at or after wall-clock time `t`.
    fn first_line_since(&self, t: SystemTime) -> u64 {
        match t.duration_since(self.started_wall) {
            Err(_) => 1,
            Ok(d) => {
                let interval = self.interval.as_nanos().max(1);
                let k = d.as_nanos().div_ceil(interval);
                u64::try_from(k).unwrap_or(u64::MAX - 1).saturating_add(1)
            }
        }
    }

    /// Line `n` of `container`, with the kubelet's timestamp prefix when asked.
    fn render(&self, n: u64, container: &str, timestamps: bool, out: &mut String) {
        if timestamps {
            out.push_str(&format_timestamp(self.wall(n)));
            out.push(' ');
        }
        out.push_str("line ");
        out.push_str(&n.to_string());
        out.push_str(" from ");
        out.push_str(container);
        out.push('\n');
    }
}

/// RFC3339 with exactly nine fractional digits in UTC, as the CRI log format writes it
/// (`2026-01-02T03:04:05.123456789Z`).
pub(crate) fn format_timestamp(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// The decoded `v1.PodLogOptions` subset the stand-in honours.
#[derive(Debug, Default, PartialEq, Eq)]
struct LogQuery {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<i64>,
    limit_bytes: Option<i64>,
    since_seconds: Option<i64>,
    since_time: Option<SystemTime>,
}

/// A query the kubelet would refuse, with its status code.
#[derive(Debug, PartialEq, Eq)]
struct QueryError {
    status: StatusCode,
    message: String,
}

fn decode_error(detail: String) -> QueryError {
    QueryError {
        status: StatusCode::BAD_REQUEST,
        message: format!("{{\"message\": \"Unable to decode query.\", \"detail\": {detail:?}}}"),
    }
}

fn invalid(detail: &str) -> QueryError {
    QueryError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("{{\"message\": \"Invalid request.\", \"detail\": {detail:?}}}"),
    }
}

fn parse_log_query(query: &Query) -> Result<LogQuery, QueryError> {
    let bool_param = |key: &str| -> Result<bool, QueryError> {
        match query_first(query, key) {
            None => Ok(false),
            Some(v) => parse_go_bool(v)
                .ok_or_else(|| decode_error(format!("{key}={v:?} is not a boolean"))),
        }
    };
    let int_param = |key: &str, value: Option<&str>| -> Result<Option<i64>, QueryError> {
        value
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| decode_error(format!("{key}={v:?} is not an integer")))
            })
            .transpose()
    };
    // Legacy `tail=N` (or `tail=all`) stands in for tailLines, as the kubelet accepts it.
    let tail = match (query_first(query, "tailLines"), query_first(query, "tail")) {
        (Some(v), _) => int_param("tailLines", Some(v))?,
        (None, Some("all")) => None,
        (None, Some(v)) => int_param("tail", Some(v))?,
        (None, None) => None,
    };
    let since_time = query_first(query, "sinceTime")
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339)
                .map(SystemTime::from)
                .map_err(|e| decode_error(format!("sinceTime={v:?} is not RFC3339: {e}")))
        })
        .transpose()?;
    let q = LogQuery {
        follow: bool_param("follow")?,
        previous: bool_param("previous")?,
        timestamps: bool_param("timestamps")?,
        tail_lines: tail,
        limit_bytes: int_param("limitBytes", query_first(query, "limitBytes"))?,
        since_seconds: int_param("sinceSeconds", query_first(query, "sinceSeconds"))?,
        since_time,
    };
    if q.tail_lines.is_some_and(|n| n < 0) {
        return Err(invalid("tailLines must be greater than or equal to 0"));
    }
    if q.limit_bytes.is_some_and(|n| n < 1) {
        return Err(invalid("limitBytes must be greater than 0"));
    }
    if q.since_seconds.is_some_and(|n| n < 1) {
        return Err(invalid("sinceSeconds must be greater than 0"));
    }
    if q.since_seconds.is_some() && q.since_time.is_some() {
        return Err(invalid(
            "at most one of sinceTime or sinceSeconds may be specified",
        ));
    }
    Ok(q)
}

/// State of one streaming response.
pub(crate) struct LogStream {
    state: Arc<State>,
    container: String,
    next: u64,
    /// Last line to send when not following.
    last: Option<u64>,
    timestamps: bool,
    remaining_bytes: Option<u64>,
    shutdown: CancellationToken,
    _active: Option<ActiveGuard>,
}

impl LogStream {
    /// The next chunk, or `None` at the end (limit reached, not following and caught up,
    /// or shutdown).
    pub(crate) async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.remaining_bytes == Some(0) {
                return None;
            }
            let logs = &self.state.logs;
            let available = logs.count_at(Instant::now());
            // Lines that fell out of the history while we were away are gone.
            self.next = self.next.max(available.saturating_sub(HISTORY_LINES) + 1);
            let upto = self.last.map_or(available, |l| l.min(available));
            if self.next <= upto {
                let end = upto.min(self.next + LINES_PER_CHUNK - 1);
                let mut out = String::new();
                for n in self.next..=end {
                    logs.render(n, &self.container, self.timestamps, &mut out);
                }
                self.next = end + 1;
                let mut bytes = Bytes::from(out);
                if let Some(remaining) = self.remaining_bytes.as_mut() {
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    bytes.truncate(take);
                    *remaining -= take as u64;
                }
                return Some(bytes);
            }
            if self.last.is_some() {
                return None;
            }
            let due = logs.due(self.next);
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }
}

/// The lines of `container` (`ns/pod/container`) that appear from now on, for attach.
pub(crate) fn live_tail(state: &Arc<State>, container: String) -> LogStream {
    LogStream {
        state: state.clone(),
        container,
        next: state.logs.count_at(Instant::now()) + 1,
        last: None,
        timestamps: false,
        remaining_bytes: None,
        shutdown: state.shutdown.clone(),
        _active: None,
    }
}

/// `GET /containerLogs/{ns}/{pod}/{container}`.
pub(crate) fn container_logs(
    state: &Arc<State>,
    pc: &PodContainer<'_>,
    query: &Query,
) -> Response<Body> {
    let q = match parse_log_query(query) {
        Ok(q) => q,
        Err(e) => return text(e.status, &e.message),
    };
    if q.previous {
        return text(
            StatusCode::BAD_REQUEST,
            &format!(
                "previous terminated container {:?} in pod {:?} not found",
                pc.container, pc.pod
            ),
        );
    }
    let logs = &state.logs;
    let available = logs.count_at(Instant::now());
    let mut first = available.saturating_sub(HISTORY_LINES) + 1;
    let since = q
        .since_seconds
        .map(|s| SystemTime::now() - Duration::from_secs(s.unsigned_abs()))
        .or(q.since_time);
    if let Some(t) = since {
        first = first.max(logs.first_line_since(t));
    }
    if let Some(tail) = q.tail_lines {
        first = first.max((available + 1).saturating_sub(tail.unsigned_abs()));
    }
    let stream = LogStream {
        state: state.clone(),
        container: format!("{}/{}/{}", pc.namespace, pc.pod, pc.container),
        next: first,
        last: (!q.follow).then_some(available),
        timestamps: q.timestamps,
        remaining_bytes: q.limit_bytes.map(i64::unsigned_abs),
        shutdown: state.shutdown.clone(),
        _active: Some(state.stats.track(Activity::LogStream)),
    };
    let frames = stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), s))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn timestamp_has_nine_fraction_digits_and_z() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_767_323_045, 1_000);
        assert_eq!(format_timestamp(t), "2026-01-02T03:04:05.000001000Z");
    }

    #[test]
    fn line_count_grows_one_per_interval_from_one() {
        let src = LogSource::new(Duration::from_millis(100));
        let t0 = src.started;
        assert_eq!(src.count_at(t0), 1);
        assert_eq!(src.count_at(t0 + Duration::from_millis(99)), 1);
        assert_eq!(src.count_at(t0 + Duration::from_millis(100)), 2);
        assert_eq!(src.count_at(t0 + Duration::from_millis(1050)), 11);
        assert_eq!(src.due(11), t0 + Duration::from_millis(1000));
    }

    #[test]
    fn first_line_since_rounds_up_to_the_next_line() {
        let src = LogSource::new(Duration::from_secs(1));
        let w = src.started_wall;
        assert_eq!(src.first_line_since(w - Duration::from_secs(5)), 1);
        assert_eq!(src.first_line_since(w), 1);
        assert_eq!(src.first_line_since(w + Duration::from_millis(1)), 2);
        assert_eq!(src.first_line_since(w + Duration::from_secs(3)), 4);
    }

    #[test]
    fn render_prefixes_timestamp_when_asked() {
        let src = LogSource::new(Duration::from_secs(1));
        let mut out = String::new();
        src.render(7, "ns/p/c", false, &mut out);
        assert_eq!(out, "line 7 from ns/p/c\n");
        out.clear();
        src.render(7, "ns/p/c", true, &mut out);
        let (ts, rest) = out.split_once(' ').unwrap();
        assert_eq!(rest, "line 7 from ns/p/c\n");
        assert_eq!(ts.len(), "2026-01-02T03:04:05.123456789Z".len());
        assert!(OffsetDateTime::parse(ts, &Rfc3339).is_ok());
    }

    #[test]
    fn query_parses_kubelet_flags_and_legacy_tail() {
        let parsed = parse_log_query(&q(&[
            ("follow", "true"),
            ("timestamps", "1"),
            ("tailLines", "5"),
            ("limitBytes", "10"),
        ]))
        .unwrap();
        assert!(parsed.follow && parsed.timestamps);
        assert_eq!(parsed.tail_lines, Some(5));
        assert_eq!(parsed.limit_bytes, Some(10));
        assert_eq!(
            parse_log_query(&q(&[("tail", "3")])).unwrap().tail_lines,
            Some(3)
        );
        assert_eq!(
            parse_log_query(&q(&[("tail", "all")])).unwrap().tail_lines,
            None
        );
    }

    #[test]
    fn undecodable_query_is_400_and_invalid_is_422() {
        let e = parse_log_query(&q(&[("follow", "yes")])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("Unable to decode query."));
        let e = parse_log_query(&q(&[("tailLines", "x")])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        for bad in [
            vec![("tailLines", "-1")],
            vec![("limitBytes", "0")],
            vec![("sinceSeconds", "0")],
            vec![("sinceSeconds", "5"), ("sinceTime", "2026-01-01T00:00:00Z")],
        ] {
            let e = parse_log_query(&q(&bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
            assert!(e.message.contains("Invalid request."));
        }
        let e = parse_log_query(&q(&[("sinceTime", "yesterday")])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
