//! The connection manager: keeps one session per proxy-server, the way upstream's `ClientSet`
//! does (§3 of the reference).
//!
//! Each iteration opens at most one brand-new connection; the server's `serverid` header says
//! which server it reached (behind a load balancer the agent cannot choose). A server already
//! held is a duplicate and is closed. The number of servers to hold is the `servercount` the
//! last *new* server reported (0 ⇒ 1); with `--sync-forever` the agent keeps dialing anyway to
//! notice servers being added. Pacing follows upstream's `wait.Backoff` exactly (see
//! [`Backoff`]).
//!
//! Upstream also polls each gRPC channel's state every `--probe-interval` and drops connections
//! that are not READY. Here every server connection is its own HTTP/2 connection carrying one
//! stream, and anything that makes the channel unusable (TCP error, TLS error, keepalive ping
//! timeout, connection reset) fails that stream at once, which ends the session and frees its
//! slot for the next sync iteration; so `--probe-interval` has no work left to do. One case is
//! not covered: a server that sends GOAWAY but keeps the existing stream open (Go's
//! `GracefulStop`) keeps this agent's session until it ends the stream or closes the
//! connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use konnectivity_proto::Packet;
use konnectivity_tunnel::outbound;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, SyncConfig, Transport};
use crate::metrics::{Metrics, Segment};
use crate::quic::{QuicConnector, QuicLink};
use crate::server::{ConnectError, ServerConnector, SetupError};
use crate::session::{self, SessionConfig, SessionEnd};

/// Growth factor of the retry delay after a failed attempt (upstream's fixed 1.5).
pub const BACKOFF_FACTOR: f64 = 1.5;

/// Maximum relative jitter added to every delay (upstream's fixed 0.1: Go's `wait.Jitter`
/// adds a uniformly random 0–10 %, never subtracts).
pub const BACKOFF_JITTER: f64 = 0.1;

/// Packets the data lane toward one server holds before socket readers wait. Cost: that many
/// DATA packets (≤ [`konnectivity_tunnel::chunk::DATA_CHUNK_BYTES`] each) buffered per server connection.
pub const SERVER_DATA_LANE_PACKETS: usize = outbound::DEFAULT_DATA_LANE_PACKETS;

/// Retry pacing, as upstream's `wait.Backoff{Duration: interval, Factor: 1.5, Jitter: 0.1,
/// Cap: interval_cap}`: each step returns the current delay plus 0–10 % jitter and multiplies
/// the next one by 1.5 until it reaches the cap, where it stays.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    current: Duration,
    capped: bool,
}

impl Backoff {
    /// A backoff starting at `initial`, growing to at most `cap` (a zero cap means unbounded,
    /// as in Go).
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Backoff {
            initial,
            cap,
            current: initial,
            capped: false,
        }
    }

    /// Back to the initial delay (after a successful attempt).
    pub fn reset(&mut self) {
        self.current = self.initial;
        self.capped = false;
    }

    /// The next delay, with `unit` ∈ [0, 1) choosing the jitter; advances the backoff.
    pub fn step_with(&mut self, unit: f64) -> Duration {
        let delay = self.current;
        if !self.capped {
            let next = self.current.mul_f64(BACKOFF_FACTOR);
            if !self.cap.is_zero() && next > self.cap {
                self.current = self.cap;
                self.capped = true;
            } else {
                self.current = next;
            }
        }
        jitter(delay, unit)
    }

    /// [`Backoff::step_with`] with random jitter.
    pub fn step(&mut self) -> Duration {
        self.step_with(rand::thread_rng().gen_range(0.0..1.0))
    }

    /// The initial delay with random jitter (upstream's wait after a success).
    pub fn initial_jittered(&self) -> Duration {
        jitter(self.initial, rand::thread_rng().gen_range(0.0..1.0))
    }
}

/// Go's `wait.Jitter(d, 0.1)`: `d + unit·0.1·d`.
fn jitter(d: Duration, unit: f64) -> Duration {
    d + d.mul_f64(BACKOFF_JITTER * unit.clamp(0.0, 1.0))
}

/// How many servers to hold, from the servers' own reports.
#[derive(Debug, Clone, Default)]
pub struct ServerCount {
    last_reported: u32,
}

impl ServerCount {
    /// Records the `servercount` of a server seen for the first time (duplicates do not count,
    /// as upstream).
    pub fn record_new_server(&mut self, server_count: u32) {
        self.last_reported = server_count;
    }

    /// The number of servers to hold: the last report, at least 1.
    pub fn target(&self) -> usize {
        usize::try_from(self.last_reported.max(1)).unwrap_or(usize::MAX)
    }
}

/// Whether the manager should open a new connection now.
pub fn should_dial(held: usize, target: usize, forever: bool, draining: bool) -> bool {
    !draining && (forever || held < target)
}

/// Outcome of one attempt, for pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Nothing was attempted (enough servers held, or draining).
    Skipped,
    /// A new server joined.
    NewServer,
    /// The connection reached a server already held.
    Duplicate,
    /// The attempt failed.
    Failed,
}

/// The delay before the next iteration (upstream's `sync` loop): success or skip ⇒ reset and
/// wait the initial interval; failure ⇒ next backoff step; duplicate ⇒ backoff step if enough
/// servers are held (no point hurrying), else reset and wait the interval.
pub fn next_delay(backoff: &mut Backoff, attempt: Attempt, held: usize, target: usize) -> Duration {
    match attempt {
        Attempt::Failed => backoff.step(),
        Attempt::Duplicate if held >= target => backoff.step(),
        Attempt::Skipped | Attempt::NewServer | Attempt::Duplicate => {
            backoff.reset();
            backoff.initial_jittered()
        }
    }
}

/// Live sessions, for readiness (`server-connected`): updated by the sessions themselves so a
/// lost server is visible at once, not when the manager next looks.
#[derive(Debug, Clone, Default)]
pub struct ServerStatus {
    live: Arc<AtomicUsize>,
}

impl ServerStatus {
    /// Number of live server connections.
    pub fn connected(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// The `server-connected` readiness check: at least one live server connection.
    pub fn check(&self) -> Result<(), String> {
        if self.connected() > 0 {
            Ok(())
        } else {
            Err("no servers connected".to_string())
        }
    }
}

/// Counts a live session in readiness and `open_server_connections`.
struct SessionGuard {
    status: ServerStatus,
    metrics: Metrics,
}

impl SessionGuard {
    fn new(status: ServerStatus, metrics: Metrics) -> Self {
        status.live.fetch_add(1, Ordering::SeqCst);
        metrics.open_server_connections_inc();
        SessionGuard { status, metrics }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.status.live.fetch_sub(1, Ordering::SeqCst);
        self.metrics.open_server_connections_dec();
    }
}

/// Opens connections to a proxy-server over the configured transport; the sync loop does not
/// care which.
#[derive(Debug, Clone)]
pub enum Connector {
    /// gRPC `AgentService.Connect` over TLS/TCP (boxed: its endpoint settings are large).
    Grpc(Box<ServerConnector>),
    /// QUIC over UDP.
    Quic(QuicConnector),
}

impl Connector {
    /// The connector for the configured transport (TLS material loaded and checked).
    pub fn new(config: &AgentConfig) -> Result<Self, SetupError> {
        let extensions = &config.extensions;
        Ok(match extensions.transport {
            Transport::Grpc => {
                let mut c = ServerConnector::new(config)?;
                c.set_flow_control(extensions.flow_control);
                Connector::Grpc(Box::new(c))
            }
            Transport::Quic => Connector::Quic(QuicConnector::new(config)?),
        })
    }

    /// `host:port` of the proxy-server, for logs.
    pub fn address(&self) -> &str {
        match self {
            Connector::Grpc(c) => c.address(),
            Connector::Quic(c) => c.address(),
        }
    }
}

/// A held server connection.
struct Held {
    seq: u64,
    task: tokio::task::JoinHandle<()>,
}

/// Keeps sessions to the proxy-servers until `shutdown`.
pub struct Manager {
    connector: Connector,
    sync: SyncConfig,
    session: SessionConfig,
    metrics: Metrics,
    status: ServerStatus,
}

impl Manager {
    /// A manager that connects with `connector`.
    pub fn new(
        connector: Connector,
        sync: SyncConfig,
        session: SessionConfig,
        metrics: Metrics,
        status: ServerStatus,
    ) -> Self {
        Manager {
            connector,
            sync,
            session,
            metrics,
            status,
        }
    }

    /// Runs the sync loop. `drain`: stop opening connections, sessions send DRAIN and keep
    /// serving. `shutdown`: every session is closed and the function returns once they are.
    pub async fn run(self, drain: CancellationToken, shutdown: CancellationToken) {
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(String, u64)>();
        let mut held: HashMap<String, Held> = HashMap::new();
        let mut count = ServerCount::default();
        let mut backoff = Backoff::new(self.sync.interval, self.sync.interval_cap);
        let mut seq: u64 = 0;
        self.metrics.known_server_count_set(count.target());

        loop {
            while let Ok((server_id, s)) = ended_rx.try_recv() {
                forget(&mut held, &server_id, s);
            }
            let target = count.target();
            let draining = drain.is_cancelled();
            let attempt = if should_dial(held.len(), target, self.sync.forever, draining) {
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    outcome = self.attempt(&shutdown) => outcome,
                };
                // Sessions may have ended during the attempt: a server that just left is not a
                // duplicate.
                while let Ok((server_id, s)) = ended_rx.try_recv() {
                    forget(&mut held, &server_id, s);
                }
                match outcome {
                    Ok(opened) => {
                        let server_id = opened.server_id.clone();
                        if held.contains_key(&server_id) {
                            tracing::debug!(
                                server_id,
                                held = held.len(),
                                target,
                                "connected to a server already held; closing the duplicate"
                            );
                            opened.cancel.cancel();
                            if let Link::Quic(link) = &opened.link {
                                link.close("already connected to this proxy-server");
                            }
                            drop(opened);
                            Attempt::Duplicate
                        } else {
                            count.record_new_server(opened.server_count);
                            self.metrics.known_server_count_set(count.target());
                            seq += 1;
                            tracing::info!(
                                server_id,
                                server_count = opened.server_count,
                                held = held.len() + 1,
                                "connected to proxy-server"
                            );
                            let task = self.spawn_session(opened, seq, ended_tx.clone(), &drain);
                            held.insert(server_id, Held { seq, task });
                            Attempt::NewServer
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot connect to proxy-server; will retry");
                        Attempt::Failed
                    }
                }
            } else {
                Attempt::Skipped
            };
            let delay = next_delay(&mut backoff, attempt, held.len(), count.target());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
                // While idle, a lost server is replaced without waiting out the interval.
                Some((server_id, s)) = ended_rx.recv(), if attempt == Attempt::Skipped => {
                    forget(&mut held, &server_id, s);
                }
            }
        }

        // Shutdown: the sessions' tokens are children of `shutdown`, so they are all ending.
        for (_, h) in held.drain() {
            if let Err(e) = h.task.await {
                tracing::warn!(error = %e, "server connection task failed");
            }
        }
    }

    /// One connection attempt (gRPC: with a fresh outbound channel).
    async fn attempt(&self, shutdown: &CancellationToken) -> Result<Opened, ConnectError> {
        let cancel = shutdown.child_token();
        let connector = match &self.connector {
            Connector::Grpc(c) => c,
            Connector::Quic(c) => {
                let link = c.connect().await?;
                return Ok(Opened {
                    server_id: link.hello.server_id.clone(),
                    server_count: link.hello.server_count,
                    link: Link::Quic(link),
                    cancel,
                });
            }
        };
        let (out, lanes) = outbound::channel(SERVER_DATA_LANE_PACKETS);
        let metrics = self.metrics.clone();
        // The request body: every packet we send, counted; it ends when the session is
        // cancelled even if some task still holds a producer, so the HTTP/2 stream closes.
        let body = lanes
            .inspect(move |p: &Packet| metrics.stream_packet(Segment::FromAgent, p.kind_name()))
            .take_until(cancel.clone().cancelled_owned());
        let stream = connector.connect(body).await?;
        Ok(Opened {
            server_id: stream.hello.server_id.clone(),
            server_count: stream.hello.server_count,
            link: Link::Grpc { stream, out },
            cancel,
        })
    }

    fn spawn_session(
        &self,
        opened: Opened,
        seq: u64,
        ended: mpsc::UnboundedSender<(String, u64)>,
        drain: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let guard = SessionGuard::new(self.status.clone(), self.metrics.clone());
        let metrics = self.metrics.clone();
        let config = self.session.clone();
        let drain = drain.clone();
        let Opened {
            server_id,
            link,
            cancel,
            ..
        } = opened;
        tokio::spawn(async move {
            let (end, channel) = match link {
                Link::Grpc { stream, out } => {
                    let crate::server::ServerStream {
                        inbound,
                        channel,
                        flow_control,
                        ..
                    } = stream;
                    if flow_control {
                        tracing::debug!(server_id, "per-connection flow control negotiated");
                    }
                    let end = session::run_session(
                        &server_id,
                        inbound,
                        out,
                        SessionConfig {
                            flow_control,
                            ..config
                        },
                        metrics.clone(),
                        drain,
                        cancel.clone(),
                    )
                    .await;
                    (end, Some(channel))
                }
                Link::Quic(link) => {
                    let end = crate::quic::run_session(
                        &server_id,
                        link,
                        config,
                        metrics.clone(),
                        drain,
                        cancel.clone(),
                    )
                    .await;
                    (end, None)
                }
            };
            match &end {
                SessionEnd::ServerClosed => {
                    tracing::info!(
                        server_id,
                        "proxy-server closed the connection; will reconnect"
                    )
                }
                SessionEnd::StreamError(status) => {
                    metrics.server_connection_failure(crate::metrics::Direction::FromServer);
                    tracing::warn!(
                        server_id,
                        code = ?status.code(),
                        error = status.message(),
                        "connection to proxy-server failed (transport error, malformed packet or message over 4 MiB); will reconnect"
                    )
                }
                SessionEnd::TransportError(error) => {
                    metrics.server_connection_failure(crate::metrics::Direction::FromServer);
                    tracing::warn!(
                        server_id,
                        error,
                        "QUIC connection to proxy-server failed; will reconnect"
                    )
                }
                SessionEnd::Cancelled => tracing::debug!(server_id, "server connection closed"),
            }
            // End the request body and drop the connection.
            cancel.cancel();
            drop(channel);
            drop(guard);
            let _ = ended.send((server_id, seq));
        })
    }
}

/// Forgets a session that ended, unless the entry has been replaced since.
fn forget(held: &mut HashMap<String, Held>, server_id: &str, seq: u64) {
    if held.get(server_id).is_some_and(|h| h.seq == seq) {
        held.remove(server_id);
    }
}

/// A connection that reached a server, not yet classified as new or duplicate.
struct Opened {
    server_id: String,
    server_count: u32,
    link: Link,
    cancel: CancellationToken,
}

/// The transport-specific half of an opened connection.
enum Link {
    /// The `AgentService.Connect` stream and the outbound lanes feeding its request body.
    Grpc {
        stream: crate::server::ServerStream,
        out: outbound::OutboundTx,
    },
    /// The QUIC connection after its hello exchange.
    Quic(QuicLink),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_grows_by_half_until_the_cap_then_stays() {
        let mut b = Backoff::new(ms(1000), ms(3000));
        let seq: Vec<Duration> = (0..5).map(|_| b.step_with(0.0)).collect();
        assert_eq!(seq, vec![ms(1000), ms(1500), ms(2250), ms(3000), ms(3000)]);
    }

    #[test]
    fn backoff_jitter_adds_at_most_ten_percent() {
        let mut b = Backoff::new(ms(1000), ms(10_000));
        assert_eq!(b.step_with(0.5), ms(1050));
        assert_eq!(
            b.step_with(0.999_999),
            ms(1500) + ms(1500).mul_f64(0.099_999_9)
        );
        for _ in 0..100 {
            let mut b = Backoff::new(ms(1000), ms(10_000));
            let d = b.step();
            assert!(d >= ms(1000) && d < ms(1100), "{d:?}");
        }
    }

    #[test]
    fn backoff_reset_starts_over() {
        let mut b = Backoff::new(ms(100), ms(1000));
        for _ in 0..10 {
            b.step_with(0.0);
        }
        assert_eq!(b.step_with(0.0), ms(1000));
        b.reset();
        assert_eq!(b.step_with(0.0), ms(100));
        assert_eq!(b.step_with(0.0), ms(150));
    }

    #[test]
    fn zero_cap_means_unbounded_growth() {
        let mut b = Backoff::new(ms(100), Duration::ZERO);
        for _ in 0..10 {
            b.step_with(0.0);
        }
        assert!(b.step_with(0.0) > ms(5000));
    }

    #[test]
    fn target_is_last_new_server_report_and_at_least_one() {
        let mut c = ServerCount::default();
        assert_eq!(c.target(), 1);
        c.record_new_server(0);
        assert_eq!(c.target(), 1);
        c.record_new_server(3);
        assert_eq!(c.target(), 3);
        c.record_new_server(2);
        assert_eq!(c.target(), 2);
    }

    #[test]
    fn dial_until_target_unless_forever_and_never_while_draining() {
        assert!(should_dial(0, 1, false, false));
        assert!(!should_dial(1, 1, false, false));
        assert!(should_dial(2, 3, false, false));
        assert!(should_dial(3, 3, true, false));
        assert!(!should_dial(0, 3, true, true));
        assert!(!should_dial(0, 1, false, true));
    }

    #[test]
    fn pacing_follows_upstream_sync_loop() {
        let mut b = Backoff::new(ms(1000), ms(10_000));
        // Failures back off.
        let d1 = next_delay(&mut b, Attempt::Failed, 0, 1);
        let d2 = next_delay(&mut b, Attempt::Failed, 0, 1);
        assert!(
            d1 < ms(1100) && d2 >= ms(1500) && d2 < ms(1650),
            "{d1:?} {d2:?}"
        );
        // Success resets and waits the interval.
        let d = next_delay(&mut b, Attempt::NewServer, 1, 2);
        assert!(d >= ms(1000) && d < ms(1100), "{d:?}");
        // A duplicate while short of target: reset, interval.
        next_delay(&mut b, Attempt::Failed, 1, 2);
        let d = next_delay(&mut b, Attempt::Duplicate, 1, 2);
        assert!(d >= ms(1000) && d < ms(1100), "{d:?}");
        // Duplicates with enough servers held (sync-forever) back off.
        let a = next_delay(&mut b, Attempt::Duplicate, 2, 2);
        let c = next_delay(&mut b, Attempt::Duplicate, 2, 2);
        assert!(a < ms(1100) && c >= ms(1500), "{a:?} {c:?}");
        // Nothing to do: interval.
        let d = next_delay(&mut b, Attempt::Skipped, 2, 2);
        assert!(d >= ms(1000) && d < ms(1100), "{d:?}");
    }

    #[test]
    fn readiness_needs_one_live_session() {
        let s = ServerStatus::default();
        assert_eq!(s.check(), Err("no servers connected".to_string()));
        s.live.fetch_add(1, Ordering::SeqCst);
        assert_eq!(s.check(), Ok(()));
    }
}
