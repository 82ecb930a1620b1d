//! One server connection ("session"): the receive loop for the server's packets, the dials and
//! the endpoint connections they open, and their pumps.
//!
//! Rules that keep one connection from hurting the others on the same shared stream:
//! * the receive loop never waits on anything but the server's stream and its own event queue:
//!   dials run in their own tasks, DATA is handed to a connection with a non-waiting
//!   [`QueueTx::try_push`], and replies it must emit go on the outbound control lane (which
//!   never waits);
//! * a connection whose queue overflows (its destination stopped reading) is aborted with a
//!   `CLOSE_RSP` carrying an error, instead of blocking the loop;
//! * each connection's socket reader sends its DATA on the data lane and may wait there: that
//!   wait is the back-pressure of the shared stream itself. Its final `CLOSE_RSP` follows on the
//!   same lane, so it can never overtake the connection's last DATA.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use konnectivity_proto::{DialRequest, Packet, PacketType, Payload};
use konnectivity_tunnel::chunk::{self, DATA_CHUNK_BYTES};
use konnectivity_tunnel::credit::{self, CreditGate, RecvWindow};
use konnectivity_tunnel::outbound::{ControlError, OutboundTx};
use konnectivity_tunnel::queue::{self, QueueRx, QueueTx, TryPushError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connections::{ConnectionTable, UNKNOWN_CONNECT_ID, UNRECOGNIZED_CONNECT_ID};
use crate::dial::{self, DialError};
use crate::metrics::{EndpointDialFailure, Metrics, Segment};

/// Concurrent dials allowed on one server connection: above the 100,000 concurrent tunnels an
/// agent is sized for, so a burst of simultaneous dials is never refused where upstream (no
/// bound) would serve it; it was 1,024, and a burst of 3,000 dials through one agent saw most
/// refused. Cost: each pending dial holds a connecting socket (one descriptor) and a task of
/// about 1 KiB for up to [`dial::DIAL_TIMEOUT`], so a server flooding dials at unresponsive
/// addresses can pin up to this many (the open-file limit usually stops it first, and those
/// dials then fail with `too many open files`).
pub const MAX_PENDING_DIALS: usize = 1 << 17;

/// Tunables of a session (from the agent configuration; tests shorten the dial timeout).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Per-connection queue length in packets (`--xfr-channel-size`).
    pub queue_packets: usize,
    /// Per-connection queue bound in bytes.
    pub queue_bytes: usize,
    /// Endpoint dial timeout.
    pub dial_timeout: Duration,
    /// Per-connection flow control was negotiated with this server (see
    /// `konnectivity_tunnel::credit`): DATA toward the server waits for credit, and credit is
    /// granted as each destination writer drains.
    pub flow_control: bool,
}

impl SessionConfig {
    /// The production settings: `--xfr-channel-size` packets (never below the tunnel crate's
    /// minimum), the tunnel crate's default byte bound, upstream's fixed dial timeout.
    pub fn new(xfr_channel_size: usize) -> Self {
        SessionConfig {
            queue_packets: queue::connection_packets(xfr_channel_size),
            queue_bytes: queue::DEFAULT_QUEUE_BYTES,
            dial_timeout: dial::DIAL_TIMEOUT,
            flow_control: false,
        }
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The server ended the stream cleanly (e.g. it is shutting down or retired us).
    ServerClosed,
    /// The stream failed: transport error, malformed protobuf, message over the 4 MiB limit.
    StreamError(tonic::Status),
    /// The QUIC connection failed (timed out, reset, transport error).
    TransportError(String),
    /// The agent is shutting down, or the manager dropped this session.
    Cancelled,
}

/// Why the session asks a connection task to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abort {
    /// CLOSE_REQ from the server: the connection task answers CLOSE_RSP without error.
    CloseRequested,
    /// The destination stopped reading; the session already sent the error CLOSE_RSP.
    Stalled,
}

/// The table's handle on a pending dial.
struct PendingDial {
    cancel: CancellationToken,
}

/// The table's handle on an established connection.
struct Conn {
    queue: QueueTx,
    abort: oneshot::Sender<Abort>,
    /// Credit toward the server, when flow control is negotiated.
    credit: Option<Arc<CreditGate>>,
}

/// What the session's tasks report back to its loop.
enum Event {
    /// A dial finished (it was not cancelled before finishing).
    Dialed {
        random: i64,
        address: String,
        started: Instant,
        result: Result<TcpStream, DialError>,
    },
    /// A connection task ended; its id can be forgotten.
    ConnectionEnded { connect_id: i64 },
}

/// Keeps `open_endpoint_connections` equal to the number of live connection tasks.
pub(crate) struct EndpointGauge(Metrics);

impl EndpointGauge {
    pub(crate) fn new(metrics: Metrics) -> Self {
        metrics.open_endpoint_connections_inc();
        EndpointGauge(metrics)
    }
}

impl Drop for EndpointGauge {
    fn drop(&mut self) {
        self.0.open_endpoint_connections_dec();
    }
}

/// Serves one server connection until the server's stream ends or `cancel` fires.
///
/// `inbound` is the server's packet stream; `out` the outbound lanes whose consumer is the
/// request body of the same gRPC call. When `drain` fires, DRAIN is sent once (also if it fired
/// before the session started). On return every dial of the session is cancelled and every
/// endpoint socket closed.
pub async fn run_session<S>(
    server_id: &str,
    mut inbound: S,
    out: OutboundTx,
    config: SessionConfig,
    metrics: Metrics,
    drain: CancellationToken,
    cancel: CancellationToken,
) -> SessionEnd
where
    S: Stream<Item = Result<Packet, tonic::Status>> + Unpin,
{
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        server_id,
        table: ConnectionTable::new(MAX_PENDING_DIALS),
        out,
        events: events_tx,
        tasks: TaskTracker::new(),
        tasks_cancel: cancel.child_token(),
        metrics,
        config,
    };
    let mut drain_sent = false;
    let end = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break SessionEnd::Cancelled,
            _ = drain.cancelled(), if !drain_sent => {
                drain_sent = true;
                session.control(Packet::drain());
                tracing::info!(server_id, "sent DRAIN to proxy-server");
            }
            // The session holds a sender, so this never yields None.
            Some(event) = events_rx.recv() => session.on_event(event),
            packet = inbound.next() => match packet {
                None => break SessionEnd::ServerClosed,
                Some(Err(status)) => {
                    session.metrics.stream_error(Segment::ToAgent, status.code(), "Unknown");
                    break SessionEnd::StreamError(status);
                }
                Some(Ok(packet)) => session.on_packet(packet),
            },
        }
    };
    session.shutdown().await;
    end
}

struct Session<'a> {
    server_id: &'a str,
    table: ConnectionTable<PendingDial, Conn>,
    out: OutboundTx,
    events: mpsc::UnboundedSender<Event>,
    tasks: TaskTracker,
    tasks_cancel: CancellationToken,
    metrics: Metrics,
    config: SessionConfig,
}

impl Session<'_> {
    /// Queues a reply on the control lane (never waits).
    fn control(&self, packet: Packet) {
        let kind = packet.kind_name();
        match self.out.send_control(packet) {
            Ok(()) => {}
            Err(ControlError::Full) => tracing::warn!(
                server_id = self.server_id,
                packet_type = kind,
                "proxy-server is not reading its stream; reply dropped"
            ),
            Err(ControlError::Closed) => tracing::debug!(
                server_id = self.server_id,
                packet_type = kind,
                "stream to proxy-server closed; reply dropped"
            ),
        }
    }

    fn on_packet(&mut self, packet: Packet) {
        self.metrics
            .stream_packet(Segment::ToAgent, packet.kind_name());
        let kind = packet.kind();
        match (kind, packet.payload) {
            (Some(PacketType::DialReq), Some(Payload::DialRequest(req))) => {
                self.on_dial_request(req)
            }
            (Some(PacketType::Data), Some(Payload::Data(data))) => {
                self.on_data(data.connect_id, data.data)
            }
            (Some(PacketType::CloseReq), Some(Payload::CloseRequest(req))) => {
                self.on_close_request(req.connect_id)
            }
            (Some(PacketType::DialCls), Some(Payload::CloseDial(req))) => {
                self.on_close_dial(req.random)
            }
            (Some(PacketType::Credit), Some(Payload::Credit(c))) if self.config.flow_control => {
                // Credit for a connection that just ended is simply dropped.
                if let Some(gate) = self.table.get(c.connect_id).and_then(|c| c.credit.as_ref()) {
                    gate.grant(c.bytes);
                }
            }
            (Some(kind @ (PacketType::DialRsp | PacketType::CloseRsp | PacketType::Drain)), _) => {
                tracing::warn!(
                    server_id = self.server_id,
                    packet_type = kind.as_str_name(),
                    "proxy-server sent a packet type only agents send; ignored"
                );
            }
            (Some(kind), payload) => tracing::warn!(
                server_id = self.server_id,
                packet_type = kind.as_str_name(),
                payload = payload_name(payload.as_ref()),
                "malformed packet from proxy-server (payload does not match type); ignored"
            ),
            (None, _) => tracing::warn!(
                server_id = self.server_id,
                packet_type = packet.r#type,
                "packet of unknown type from proxy-server; ignored"
            ),
        }
    }

    fn on_dial_request(&mut self, req: DialRequest) {
        let DialRequest {
            protocol,
            address,
            random,
        } = req;
        let cancel = self.tasks_cancel.child_token();
        if let Err(e) = self.table.start_dial(
            random,
            PendingDial {
                cancel: cancel.clone(),
            },
        ) {
            tracing::warn!(server_id = self.server_id, random, %address, error = %e, "dial refused");
            self.metrics
                .endpoint_dial_failure(EndpointDialFailure::Unknown);
            self.control(Packet::dial_response(random, 0, e.to_string()));
            return;
        }
        tracing::debug!(server_id = self.server_id, random, %protocol, %address, "dialing endpoint");
        let events = self.events.clone();
        let timeout = self.config.dial_timeout;
        self.tasks.spawn(async move {
            let started = Instant::now();
            tokio::select! {
                // Cancelled by DIAL_CLS or the end of the session: nothing is reported, the
                // table entry is already gone.
                _ = cancel.cancelled() => {}
                result = dial::dial(&protocol, &address, timeout) => {
                    // The loop only stops listening when the session ends; then the result
                    // (a socket) is simply dropped, which closes it.
                    let _ = events.send(Event::Dialed { random, address, started, result });
                }
            }
        });
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Dialed {
                random,
                address,
                started,
                result,
            } => self.on_dialed(random, address, started, result),
            Event::ConnectionEnded { connect_id } => {
                self.table.remove(connect_id);
            }
        }
    }

    fn on_dialed(
        &mut self,
        random: i64,
        address: String,
        started: Instant,
        result: Result<TcpStream, DialError>,
    ) {
        let stream = match result {
            Ok(stream) => stream,
            Err(e) => {
                if self.table.fail_dial(random) {
                    tracing::info!(server_id = self.server_id, random, %address, error = %e, "endpoint dial failed");
                    self.metrics.endpoint_dial_failure(if e.is_timeout() {
                        EndpointDialFailure::Timeout
                    } else {
                        EndpointDialFailure::Unknown
                    });
                    self.control(Packet::dial_response(random, 0, e.message()));
                }
                return;
            }
        };
        // With flow control the server sends at most a window per connection, in packets of
        // any size: the queue holds a full window of the smallest ones.
        let queue_packets = if self.config.flow_control {
            self.config.queue_packets.max(credit::FLOW_QUEUE_PACKETS)
        } else {
            self.config.queue_packets
        };
        let (queue_tx, queue_rx) = queue::channel(queue_packets, self.config.queue_bytes);
        let (abort_tx, abort_rx) = oneshot::channel();
        let gate = self
            .config
            .flow_control
            .then(|| Arc::new(CreditGate::new(credit::INITIAL_WINDOW)));
        let conn = Conn {
            queue: queue_tx,
            abort: abort_tx,
            credit: gate.clone(),
        };
        let connect_id = match self.table.complete_dial(random, conn) {
            Ok(id) => id,
            Err(_conn) => {
                tracing::debug!(server_id = self.server_id, random, %address, "dial finished after DIAL_CLS; socket closed, no DIAL_RSP");
                return;
            }
        };
        self.metrics.observe_dial_duration(started.elapsed());
        if let Err(e) = self
            .out
            .send_control(Packet::dial_response(random, connect_id, ""))
        {
            // The server will never learn this connection exists: do not keep it.
            tracing::warn!(server_id = self.server_id, random, connect_id, error = %e, "cannot send DIAL_RSP; closing the new connection");
            self.table.remove(connect_id);
            return;
        }
        tracing::debug!(server_id = self.server_id, random, connect_id, %address, "endpoint connected");
        let task = ConnectionTask {
            connect_id,
            out: self.out.clone(),
            events: self.events.clone(),
            cancel: self.tasks_cancel.clone(),
            gauge: EndpointGauge::new(self.metrics.clone()),
            credit: gate,
        };
        self.tasks.spawn(task.run(stream, queue_rx, abort_rx));
    }

    fn on_data(&mut self, connect_id: i64, data: bytes::Bytes) {
        let Some(conn) = self.table.get(connect_id) else {
            tracing::debug!(
                server_id = self.server_id,
                connect_id,
                "DATA for unknown connection"
            );
            self.control(Packet::close_response(connect_id, UNRECOGNIZED_CONNECT_ID));
            return;
        };
        match conn.queue.try_push(Packet::data(connect_id, data)) {
            Ok(()) => {}
            Err(TryPushError::Closed(_)) => {
                // The connection task is ending on its own and sends its CLOSE_RSP itself.
                tracing::debug!(
                    server_id = self.server_id,
                    connect_id,
                    "DATA for a closing connection dropped"
                );
            }
            Err(TryPushError::Full(full)) => {
                let reason = format!(
                    "connection stalled: destination is not reading ({} packets queued, limit {} packets / {} bytes); connection aborted",
                    full.queued_packets, self.config.queue_packets, self.config.queue_bytes
                );
                tracing::warn!(server_id = self.server_id, connect_id, "{reason}");
                self.metrics.stalled_connection();
                if let Some(conn) = self.table.remove(connect_id) {
                    // The task may have ended already; then there is nothing left to abort.
                    let _ = conn.abort.send(Abort::Stalled);
                }
                self.control(Packet::close_response(connect_id, reason));
            }
        }
    }

    fn on_close_request(&mut self, connect_id: i64) {
        match self.table.remove(connect_id) {
            Some(conn) => {
                tracing::debug!(
                    server_id = self.server_id,
                    connect_id,
                    "CLOSE_REQ: closing connection"
                );
                // If the task already ended (destination EOF), it has sent its CLOSE_RSP.
                let _ = conn.abort.send(Abort::CloseRequested);
            }
            None => {
                tracing::debug!(
                    server_id = self.server_id,
                    connect_id,
                    "CLOSE_REQ for unknown connection"
                );
                self.control(Packet::close_response(connect_id, UNKNOWN_CONNECT_ID));
            }
        }
    }

    fn on_close_dial(&mut self, random: i64) {
        match self.table.cancel_dial(random) {
            Some(pending) => {
                pending.cancel.cancel();
                tracing::debug!(
                    server_id = self.server_id,
                    random,
                    "DIAL_CLS: pending dial cancelled"
                );
            }
            None => tracing::debug!(
                server_id = self.server_id,
                random,
                "DIAL_CLS for a dial that is not pending (already answered); ignored"
            ),
        }
    }

    /// Cancels every dial, closes every endpoint socket and waits for the tasks to finish.
    async fn shutdown(mut self) {
        let (pending, established) = self.table.clear();
        let (dials, conns) = (pending.len(), established.len());
        for p in pending {
            p.cancel.cancel();
        }
        drop(established);
        self.tasks_cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if dials + conns > 0 {
            tracing::info!(
                server_id = self.server_id,
                pending_dials = dials,
                connections = conns,
                "server connection ended: closed its endpoint connections and cancelled its dials"
            );
        }
    }
}

fn payload_name(payload: Option<&Payload>) -> &'static str {
    match payload {
        None => "none",
        Some(Payload::DialRequest(_)) => "dialRequest",
        Some(Payload::DialResponse(_)) => "dialResponse",
        Some(Payload::Data(_)) => "data",
        Some(Payload::CloseRequest(_)) => "closeRequest",
        Some(Payload::CloseResponse(_)) => "closeResponse",
        Some(Payload::CloseDial(_)) => "closeDial",
        Some(Payload::Drain(_)) => "drain",
        Some(Payload::Credit(_)) => "credit",
    }
}

/// How a connection task ended.
#[derive(Debug)]
enum ConnEnd {
    /// The destination closed its side.
    Eof,
    /// Reading the destination failed.
    ReadError(std::io::Error),
    /// Writing to the destination failed.
    WriteError(std::io::Error),
    /// The server asked to close.
    CloseRequested,
    /// Aborted by the session (stalled); CLOSE_RSP already sent.
    Stalled,
    /// The session is gone; no CLOSE_RSP can or need be sent.
    SessionEnded,
}

/// The two pumps of one endpoint connection.
struct ConnectionTask {
    connect_id: i64,
    out: OutboundTx,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
    gauge: EndpointGauge,
    /// Credit toward the server (flow control negotiated): also means the writer grants
    /// credit back as it drains.
    credit: Option<Arc<CreditGate>>,
}

impl ConnectionTask {
    async fn run(self, stream: TcpStream, mut queue: QueueRx, abort: oneshot::Receiver<Abort>) {
        let id = self.connect_id;
        let (rd, mut wr) = stream.into_split();
        let out = &self.out;
        let gate = self.credit.as_deref();
        let reader = async {
            loop {
                // Out of credit: stop reading the destination until the server grants more.
                if let Some(gate) = gate {
                    if !gate.ready().await {
                        return ConnEnd::SessionEnded;
                    }
                }
                // Wait for bytes before allocating: an idle connection holds no buffer, and a
                // busy one reads straight into the payload it sends (no copy).
                if let Err(e) = rd.readable().await {
                    return ConnEnd::ReadError(e);
                }
                let mut payload = bytes::BytesMut::with_capacity(DATA_CHUNK_BYTES);
                match rd.try_read_buf(&mut payload) {
                    Ok(0) => return ConnEnd::Eof,
                    Ok(n) => {
                        if let Some(gate) = gate {
                            gate.consume(credit::charge(n));
                        }
                        if out
                            .send(Packet::data(id, chunk::fit(payload)))
                            .await
                            .is_err()
                        {
                            return ConnEnd::SessionEnded;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return ConnEnd::ReadError(e),
                }
            }
        };
        let writer = async {
            let mut window = RecvWindow::default();
            while let Some(packet) = queue.recv().await {
                if let Some(Payload::Data(d)) = packet.payload {
                    if let Err(e) = wr.write_all(&d.data).await {
                        return ConnEnd::WriteError(e);
                    }
                    if gate.is_some() {
                        if let Some(grant) = window.drained(credit::charge(d.data.len())) {
                            // The control lane never waits; if the server leaves thousands of
                            // replies unread, keep the grant for the next one.
                            if out.send_control(Packet::credit(id, grant)).is_err() {
                                window.restore(grant);
                            }
                        }
                    }
                }
            }
            // Every producer is gone: the session dropped this connection.
            ConnEnd::SessionEnded
        };
        let end = tokio::select! {
            // Abort first: the session sends the abort before dropping the queue producer,
            // and the reason decides whether a CLOSE_RSP is owed.
            biased;
            _ = self.cancel.cancelled() => ConnEnd::SessionEnded,
            abort = abort => match abort {
                Ok(Abort::CloseRequested) => ConnEnd::CloseRequested,
                Ok(Abort::Stalled) => ConnEnd::Stalled,
                Err(_) => ConnEnd::SessionEnded,
            },
            end = writer => end,
            end = reader => end,
        };
        // Closing the socket: both halves dropped here.
        drop(rd);
        drop(wr);
        if let Some(gate) = &self.credit {
            gate.close();
        }
        match &end {
            ConnEnd::Eof => tracing::debug!(connect_id = id, "destination closed the connection"),
            ConnEnd::ReadError(e) => {
                tracing::info!(connect_id = id, error = %e, "reading from destination failed; connection closed")
            }
            ConnEnd::WriteError(e) => {
                tracing::info!(connect_id = id, error = %e, "writing to destination failed; connection closed")
            }
            ConnEnd::CloseRequested => {
                tracing::debug!(connect_id = id, "connection closed on CLOSE_REQ")
            }
            ConnEnd::Stalled | ConnEnd::SessionEnded => {}
        }
        let owes_close_rsp = matches!(
            end,
            ConnEnd::Eof | ConnEnd::ReadError(_) | ConnEnd::WriteError(_) | ConnEnd::CloseRequested
        );
        if owes_close_rsp {
            // On the data lane, behind this connection's last DATA. Upstream sets no error text
            // for these closes; the reason is in our log.
            tokio::select! {
                _ = self.cancel.cancelled() => {}
                _ = self.out.send(Packet::close_response(id, "")) => {}
            }
        }
        let _ = self.events.send(Event::ConnectionEnded { connect_id: id });
        drop(self.gauge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use konnectivity_tunnel::outbound::{self, Outbound};
    use std::net::SocketAddr;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// Generous bound for anything a test waits for; tests finish far sooner when correct.
    const WAIT: Duration = Duration::from_secs(5);

    /// A session fed from a channel, with its outbound stream exposed.
    struct Harness {
        to_agent: mpsc::UnboundedSender<Result<Packet, tonic::Status>>,
        from_agent: Outbound,
        drain: CancellationToken,
        cancel: CancellationToken,
        task: JoinHandle<SessionEnd>,
    }

    impl Harness {
        fn start(config: SessionConfig) -> Self {
            let (to_agent, rx) = mpsc::unbounded_channel();
            let inbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
            let (out, from_agent) = outbound::channel(16);
            let drain = CancellationToken::new();
            let cancel = CancellationToken::new();
            let task = tokio::spawn({
                let (drain, cancel) = (drain.clone(), cancel.clone());
                async move {
                    run_session(
                        "test-server",
                        inbound,
                        out,
                        config,
                        Metrics::new(),
                        drain,
                        cancel,
                    )
                    .await
                }
            });
            Harness {
                to_agent,
                from_agent,
                drain,
                cancel,
                task,
            }
        }

        fn default() -> Self {
            Self::start(SessionConfig::new(150))
        }

        fn send(&self, p: Packet) {
            self.to_agent.send(Ok(p)).expect("session alive");
        }

        async fn next(&mut self) -> Packet {
            tokio::time::timeout(WAIT, self.from_agent.next())
                .await
                .expect("agent sent nothing in time")
                .expect("agent stream ended")
        }

        /// Skips packets until one satisfies `pred`.
        async fn until(&mut self, mut pred: impl FnMut(&Packet) -> bool) -> Packet {
            loop {
                let p = self.next().await;
                if pred(&p) {
                    return p;
                }
            }
        }

        async fn dial(&mut self, address: &str, random: i64) -> (i64, String) {
            self.send(Packet::dial_request("tcp", address, random));
            let p = self
                .until(
                    |p| matches!(&p.payload, Some(Payload::DialResponse(r)) if r.random == random),
                )
                .await;
            match p.payload {
                Some(Payload::DialResponse(r)) => (r.connect_id, r.error),
                _ => unreachable!("filtered above"),
            }
        }
    }

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    fn data_of(p: &Packet) -> Option<(i64, &[u8])> {
        match &p.payload {
            Some(Payload::Data(d)) => Some((d.connect_id, &d.data)),
            _ => None,
        }
    }

    fn close_rsp_of(p: &Packet) -> Option<(i64, &str)> {
        match &p.payload {
            Some(Payload::CloseResponse(c)) => Some((c.connect_id, c.error.as_str())),
            _ => None,
        }
    }

    #[tokio::test]
    async fn dial_echoes_random_numbers_connections_from_one_and_pumps_data() {
        let echo = echo_server().await;
        let mut h = Harness::default();
        assert_eq!(h.dial(&echo.to_string(), 77).await, (1, String::new()));
        assert_eq!(h.dial(&echo.to_string(), 88).await, (2, String::new()));
        h.send(Packet::data(2, b"hello".to_vec()));
        let p = h.until(|p| data_of(p).is_some()).await;
        assert_eq!(data_of(&p), Some((2, &b"hello"[..])));
        h.send(Packet::data(1, b"one".to_vec()));
        let p = h.until(|p| data_of(p).is_some()).await;
        assert_eq!(data_of(&p), Some((1, &b"one"[..])));
    }

    #[tokio::test]
    async fn failed_dial_answers_go_error_and_connect_id_zero() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut h = Harness::default();
        let (id, err) = h.dial(&format!("127.0.0.1:{port}"), 5).await;
        assert_eq!(id, 0);
        assert_eq!(
            err,
            format!("dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
        // A failed dial does not consume a connectID.
        let echo = echo_server().await;
        assert_eq!(h.dial(&echo.to_string(), 6).await, (1, String::new()));
    }

    #[tokio::test]
    async fn close_request_closes_the_socket_and_answers_without_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut h = Harness::default();
        let (id, _) = h.dial(&addr.to_string(), 1).await;
        let (mut dest, _) = l.accept().await.expect("accept");
        h.send(Packet::close_request(id));
        let p = h.until(|p| close_rsp_of(p).is_some()).await;
        assert_eq!(close_rsp_of(&p), Some((id, "")));
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(WAIT, dest.read(&mut buf))
            .await
            .expect("socket closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "destination sees EOF");
        // The id is forgotten: a second CLOSE_REQ is for an unknown connection.
        h.send(Packet::close_request(id));
        let p = h.until(|p| close_rsp_of(p).is_some()).await;
        assert_eq!(close_rsp_of(&p), Some((id, UNKNOWN_CONNECT_ID)));
    }

    #[tokio::test]
    async fn data_and_close_for_unknown_ids_get_upstream_errors() {
        let mut h = Harness::default();
        h.send(Packet::data(42, b"x".to_vec()));
        assert_eq!(
            close_rsp_of(&h.next().await),
            Some((42, "unrecognized connectID"))
        );
        h.send(Packet::close_request(43));
        assert_eq!(
            close_rsp_of(&h.next().await),
            Some((43, "Unknown connectID"))
        );
    }

    #[tokio::test]
    async fn destination_eof_sends_last_data_then_close_response() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut h = Harness::default();
        let (id, _) = h.dial(&addr.to_string(), 1).await;
        let (mut dest, _) = l.accept().await.expect("accept");
        dest.write_all(b"bye").await.expect("write");
        drop(dest);
        let mut got = Vec::new();
        loop {
            let p = h.next().await;
            if let Some((cid, d)) = data_of(&p) {
                assert_eq!(cid, id);
                got.extend_from_slice(d);
            } else if let Some(rsp) = close_rsp_of(&p) {
                assert_eq!(rsp, (id, ""));
                break;
            }
        }
        assert_eq!(got, b"bye");
    }

    #[tokio::test]
    async fn dial_close_cancels_a_pending_dial_and_no_dial_response_follows() {
        let (blackhole, _l, _fill) = crate::testutil::blackhole_listener().await;
        let echo = echo_server().await;
        let mut h = Harness::start(SessionConfig {
            dial_timeout: Duration::from_millis(300),
            ..SessionConfig::new(150)
        });
        h.send(Packet::dial_request("tcp", &blackhole.to_string(), 9));
        h.send(Packet::close_dial(9));
        // Past the dial timeout: a not-cancelled dial would have answered with an error by now.
        tokio::time::sleep(Duration::from_millis(600)).await;
        h.send(Packet::dial_request("tcp", &echo.to_string(), 10));
        let p = h.next().await;
        match p.payload {
            Some(Payload::DialResponse(r)) => assert_eq!((r.random, r.connect_id), (10, 1)),
            other => panic!("expected only the second dial's DIAL_RSP, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn dial_close_after_the_response_is_ignored() {
        let echo = echo_server().await;
        let mut h = Harness::default();
        let (id, _) = h.dial(&echo.to_string(), 3).await;
        h.send(Packet::close_dial(3));
        h.send(Packet::data(id, b"still here".to_vec()));
        let p = h.until(|p| data_of(p).is_some()).await;
        assert_eq!(data_of(&p), Some((id, &b"still here"[..])));
    }

    #[tokio::test]
    async fn malformed_and_unexpected_packets_are_skipped() {
        let mut h = Harness::default();
        h.send(Packet {
            r#type: PacketType::Data as i32,
            payload: None,
        });
        h.send(Packet {
            r#type: 99,
            payload: None,
        });
        let mut mismatched = Packet::close_request(5);
        mismatched.r#type = PacketType::DialReq as i32;
        h.send(mismatched);
        h.send(Packet::dial_response(1, 1, ""));
        h.send(Packet::drain());
        // Still serving: the next reply is for this packet.
        h.send(Packet::close_request(7));
        assert_eq!(close_rsp_of(&h.next().await), Some((7, UNKNOWN_CONNECT_ID)));
    }

    #[tokio::test]
    async fn drain_is_sent_once_on_the_control_lane() {
        let mut h = Harness::default();
        h.drain.cancel();
        assert_eq!(h.next().await.kind(), Some(PacketType::Drain));
        h.send(Packet::close_request(1));
        assert_eq!(close_rsp_of(&h.next().await), Some((1, UNKNOWN_CONNECT_ID)));
    }

    #[tokio::test]
    async fn stream_error_ends_the_session_and_closes_endpoint_sockets() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut h = Harness::default();
        h.dial(&addr.to_string(), 1).await;
        let (mut dest, _) = l.accept().await.expect("accept");
        h.to_agent
            .send(Err(tonic::Status::internal("decode error")))
            .expect("alive");
        let end = tokio::time::timeout(WAIT, h.task)
            .await
            .expect("ends")
            .expect("join");
        assert!(matches!(end, SessionEnd::StreamError(s) if s.message() == "decode error"));
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(WAIT, dest.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn server_end_of_stream_and_cancel_end_the_session() {
        let h = Harness::default();
        drop(h.to_agent);
        let end = tokio::time::timeout(WAIT, h.task)
            .await
            .expect("ends")
            .expect("join");
        assert!(matches!(end, SessionEnd::ServerClosed));

        let h = Harness::default();
        h.cancel.cancel();
        let end = tokio::time::timeout(WAIT, h.task)
            .await
            .expect("ends")
            .expect("join");
        assert!(matches!(end, SessionEnd::Cancelled));
    }

    /// Connection A's destination never reads; B on the same session keeps echoing, and A is
    /// aborted with an error CLOSE_RSP instead of blocking the receive loop.
    #[tokio::test]
    async fn a_stalled_destination_is_aborted_without_blocking_others() {
        let sink = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let sink_addr = sink.local_addr().expect("addr");
        let echo = echo_server().await;
        let mut h = Harness::start(SessionConfig {
            queue_packets: 8,
            queue_bytes: 64 * 1024,
            ..SessionConfig::new(8)
        });
        let (a, _) = h.dial(&sink_addr.to_string(), 1).await;
        let (_held, _) = sink.accept().await.expect("accept"); // never read
        let (b, _) = h.dial(&echo.to_string(), 2).await;
        let chunk = vec![0u8; 60 * 1024];
        let mut aborted = None;
        let mut echoed = Vec::new();
        // Kernel buffers absorb a few MiB before the writer blocks; 64 MiB is far beyond.
        for i in 0..1100 {
            h.send(Packet::data(a, chunk.clone()));
            if i % 50 == 0 {
                h.send(Packet::data(b, format!("ping{i}").into_bytes()));
            }
            while let Ok(Some(p)) = tokio::time::timeout(Duration::ZERO, h.from_agent.next()).await
            {
                if let Some((id, err)) = close_rsp_of(&p) {
                    if id == a {
                        aborted = Some(err.to_string());
                    }
                }
                if let Some((id, d)) = data_of(&p) {
                    if id == b {
                        echoed.extend_from_slice(d);
                    }
                }
            }
            if aborted.is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let err = match aborted {
            Some(e) => e,
            None => {
                let p = h
                    .until(|p| close_rsp_of(p).is_some_and(|(id, _)| id == a))
                    .await;
                close_rsp_of(&p)
                    .map(|(_, e)| e.to_string())
                    .unwrap_or_default()
            }
        };
        assert!(err.starts_with("connection stalled: "), "{err}");
        // B still works after A's abort, and got every ping sent while A was stalling.
        h.send(Packet::data(b, b"after".to_vec()));
        while !echoed.ends_with(b"after") {
            let p = h.next().await;
            if let Some((id, d)) = data_of(&p) {
                if id == b {
                    echoed.extend_from_slice(d);
                }
            }
        }
        let text = String::from_utf8_lossy(&echoed);
        assert!(text.starts_with("ping0"), "{text}");
    }

    /// With flow control negotiated, the agent forwards at most a window (plus one read) of
    /// its destination's bytes until the server grants more, and grants credit itself as its
    /// destination writer drains.
    #[tokio::test]
    async fn negotiated_session_waits_for_credit_and_grants_as_it_drains() {
        use konnectivity_tunnel::credit::{GRANT_THRESHOLD, INITIAL_WINDOW};
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut h = Harness::start(SessionConfig {
            flow_control: true,
            ..SessionConfig::new(150)
        });
        let (id, _) = h.dial(&addr.to_string(), 1).await;
        let (dest, _) = l.accept().await.expect("accept");
        let (mut dest_r, mut dest_w) = dest.into_split();
        tokio::spawn(async move {
            let _ = dest_w.write_all(&vec![1u8; 4 * 1024 * 1024]).await;
            dest_w
        });
        let mut forwarded = 0usize;
        let deadline = Instant::now() + Duration::from_millis(800);
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, h.from_agent.next()).await {
            if let Some((cid, d)) = data_of(&p) {
                assert_eq!(cid, id);
                forwarded += d.len();
            }
        }
        let window = INITIAL_WINDOW as usize;
        assert!(
            (window..=window + DATA_CHUNK_BYTES).contains(&forwarded),
            "forwarded {forwarded} bytes without credit"
        );
        h.send(Packet::credit(id, INITIAL_WINDOW));
        let more = h.until(|p| data_of(p).is_some()).await;
        assert!(data_of(&more).is_some(), "credit lets the reader go on");

        // Server -> destination: once the destination has read a grant's worth, CREDIT comes.
        h.send(Packet::data(id, vec![2u8; GRANT_THRESHOLD as usize]));
        let mut buf = vec![0u8; GRANT_THRESHOLD as usize];
        dest_r
            .read_exact(&mut buf)
            .await
            .expect("destination reads");
        let p = h
            .until(|p| matches!(p.payload, Some(Payload::Credit(_))))
            .await;
        match p.payload {
            Some(Payload::Credit(c)) => {
                assert_eq!(c.connect_id, id);
                assert!(c.bytes >= GRANT_THRESHOLD, "{}", c.bytes);
            }
            _ => unreachable!("filtered above"),
        }
    }
}
