//! gRPC single-use tunnels: one connection to the proxy, one `ProxyService.Proxy` stream, one
//! dialed connection — what kube-apiserver's `CreateSingleUseGrpcTunnel` does.
//!
//! Per tunnel a background task (the *driver*) owns the gRPC stream. It sends `DIAL_REQ`, waits
//! for the matching `DIAL_RSP`, and then moves `DATA` payloads into a bounded channel that
//! [`GrpcTunnel::poll_read`] drains. Writes go the other way through a bounded channel that is
//! the request stream itself, so a full HTTP/2 window back-pressures the writer. The driver also
//! owns all cleanup: `DIAL_CLS` when the dial is abandoned, `CLOSE_REQ` when the tunnel is dropped
//! without a shutdown, the bounded wait for `CLOSE_RSP`, and finally tearing the connection down
//! (through [`KillableIo`], so nothing outlives the driver).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use konnectivity_proto::{Packet, PacketType, Payload, ProxyServiceClient};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard, PollSender, WaitForCancellationFutureOwned};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Streaming;
use tracing::debug;

use crate::transport::ProxyIo;
use crate::ClientError;

/// Largest payload of one DATA packet; a longer write is split (the caller's `write` returns the
/// shorter count). Upstream sends one packet per caller `Write` (≈16 KiB TLS records in
/// practice); the bound keeps packets far below grpc-go's 4 MiB receive limit. Cost: a 32 KiB
/// copy per packet and one packet header per 32 KiB.
pub(crate) const MAX_DATA_CHUNK: usize = 32 * 1024;

/// Packets queued toward the proxy before `poll_write` waits (on top of HTTP/2 buffering).
/// Cost: up to this many × [`MAX_DATA_CHUNK`] (512 KiB) of memory per tunnel.
const OUTBOUND_QUEUE: usize = 16;

/// DATA payloads from the destination queued for the reader; when full the driver stops reading
/// the stream and HTTP/2 flow control slows the proxy down. Cost: up to this many packets per
/// tunnel (each ≤ the 4 MiB gRPC receive limit; agents send ≤ 4 KiB). Upstream uses 10 slots and
/// tears the tunnel down after 10 s without a read; we back-pressure instead.
const READ_QUEUE: usize = 16;

/// Control packets (CLOSE_REQ for unknown connection ids) the driver queues while the outbound
/// channel is full; more are dropped with a log line. Cost: a misbehaving proxy can make us drop
/// some of those CLOSE_REQs; the proxy cleans them up when the stream ends anyway.
const MAX_CONTROL_BACKLOG: usize = 64;

/// One gRPC dial in progress.
pub(crate) struct Dial {
    /// The proxy's socket path or address, for errors.
    pub(crate) target: String,
    /// URI handed to tonic (`http://localhost` or `http://host:port`).
    pub(crate) authority: String,
    /// Node-side address to dial.
    pub(crate) address: String,
    /// When the whole dial must be done.
    pub(crate) deadline: Instant,
    /// The configured dial timeout, for the error message.
    pub(crate) timeout: Duration,
    /// How long to wait for the proxy to finish a closed tunnel ([`crate::CLOSE_TIMEOUT`] by default).
    pub(crate) close_timeout: Duration,
}

/// What the driver reports to the waiting `dial()`.
type DialResult = Result<GrpcTunnel, ClientError>;

impl Dial {
    /// Runs the HTTP/2 handshake over `io`, then hands the stream to a driver task and waits for
    /// its verdict. Dropping this future abandons the dial; the driver then sends `DIAL_CLS`.
    pub(crate) async fn run(self, io: ProxyIo) -> DialResult {
        let kill = CancellationToken::new();
        // Dropping the guard — on any early return here, or when the driver ends — aborts the
        // proxy connection, whoever holds it by then.
        let kill_guard = kill.clone().drop_guard();
        let slot = Arc::new(Mutex::new(Some(KillableIo::new(io, kill))));
        // Single use: the first connect takes the socket; tonic's reconnect attempts get an
        // error, so a tunnel never silently moves to another connection.
        let connector = tower::service_fn(move |_: Uri| {
            let io = slot.lock().ok().and_then(|mut s| s.take());
            async move {
                io.map(TokioIo::new).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the tunnel's single-use proxy connection is gone; tunnels do not reconnect",
                    )
                })
            }
        });
        let endpoint = Endpoint::from_shared(self.authority.clone()).map_err(|e| {
            ClientError::InvalidProxyAddress {
                addr: self.target.clone(),
                reason: error_chain(&e),
            }
        })?;
        let channel = match tokio::time::timeout_at(
            self.deadline,
            endpoint.connect_with_connector(connector),
        )
        .await
        {
            Err(_) => return Err(self.timed_out()),
            Ok(Err(e)) => {
                return Err(ClientError::Grpc {
                    target: self.target.clone(),
                    detail: error_chain(&e),
                })
            }
            Ok(Ok(channel)) => channel,
        };
        let (result_tx, result_rx) = oneshot::channel();
        let address = self.address.clone();
        tokio::spawn(drive(
            self,
            channel,
            kill_guard,
            konnectivity_tunnel::random_dial_id(),
            result_tx,
        ));
        result_rx.await.unwrap_or_else(|_| {
            Err(ClientError::Closed {
                address,
                reason:
                    "the tunnel's background task ended without reporting (runtime shutting down?)"
                        .to_string(),
            })
        })
    }

    fn timed_out(&self) -> ClientError {
        ClientError::DialTimeout {
            address: self.address.clone(),
            timeout: self.timeout,
        }
    }

    fn closed(&self, reason: &str) -> ClientError {
        ClientError::Closed {
            address: self.address.clone(),
            reason: reason.to_string(),
        }
    }

    fn status(&self, status: &tonic::Status) -> ClientError {
        ClientError::Grpc {
            target: self.target.clone(),
            detail: format!(
                "Proxy stream ended with status {:?}: {}",
                status.code(),
                status.message()
            ),
        }
    }
}

/// The driver: dial phase, then (on success) the data phase, then teardown.
async fn drive(
    dial: Dial,
    channel: Channel,
    kill_guard: DropGuard,
    random: i64,
    result_tx: oneshot::Sender<DialResult>,
) {
    // Held to the end of this task (also on panic): its drop aborts the proxy connection.
    let _kill_guard = kill_guard;
    let mut result_tx = Some(result_tx);
    let (req_tx, req_rx) = mpsc::channel::<Packet>(OUTBOUND_QUEUE);
    // Cannot fail: the channel is new, empty and its receiver is alive.
    let _ = req_tx.try_send(Packet::dial_request("tcp", &dial.address, random));
    let mut client = ProxyServiceClient::new(channel);
    let call = async move { client.proxy(ReceiverStream::new(req_rx)).await };
    let mut req_tx = Some(req_tx);

    let outcome = dial_phase(&dial, call, &mut req_tx, random, &mut result_tx).await;
    let (stream, connect_id) = match outcome {
        DialOutcome::Established { stream, connect_id } => (stream, connect_id),
        DialOutcome::Failed(err) => {
            if let Some(tx) = result_tx.take() {
                let _ = tx.send(Err(err));
            }
            return;
        }
        DialOutcome::Abandoned => return,
    };
    let Some(req_tx) = req_tx else {
        // Established implies the dial was never cancelled, and only cancellation drops req_tx.
        return;
    };
    debug!(address = %dial.address, connect_id, "tunnel established");

    let shared = Arc::new(Shared::default());
    let (read_tx, read_rx) = mpsc::channel(READ_QUEUE);
    let (control_tx, control_rx) = oneshot::channel();
    let tunnel = GrpcTunnel {
        connect_id,
        tx: PollSender::new(req_tx.clone()),
        rx: read_rx,
        partial: Bytes::new(),
        shared: shared.clone(),
        control: Some(control_tx),
        write_closed: false,
        read_done: false,
    };
    if let Some(tx) = result_tx.take() {
        // If the caller gave up at this very moment the tunnel comes back and is dropped here;
        // the data phase then sees the control channel closed and sends CLOSE_REQ.
        let _ = tx.send(Ok(tunnel));
    }
    let mut phase = DataPhase {
        stream,
        req_tx,
        connect_id,
        read_tx: Some(read_tx),
        control_rx,
        address: &dial.address,
        close_timeout: dial.close_timeout,
    };
    let end = phase.run().await;
    // Publish the outcome BEFORE the read channel closes (dropping `phase`), so a reader that
    // finds the channel closed also finds the error.
    shared.finish(end);
    drop(phase);
    debug!(address = %dial.address, connect_id, "tunnel closed");
}

/// How the dial phase ended.
enum DialOutcome {
    /// `DIAL_RSP` without error: the stream now carries connection `connect_id`.
    Established {
        stream: Streaming<Packet>,
        connect_id: i64,
    },
    /// The dial failed; report this error.
    Failed(ClientError),
    /// The dial was cancelled or timed out (already reported) and the cleanup is over.
    Abandoned,
}

/// Sends nothing itself (DIAL_REQ is queued); waits for the matching `DIAL_RSP`, the deadline,
/// or the caller giving up. After a timeout or cancellation it sends `DIAL_CLS`, half-closes the
/// request stream (an upstream server ends the stream on that, cleaning up a connection that
/// raced with the cancel) and waits at most [`crate::CLOSE_TIMEOUT`] for the stream to end.
async fn dial_phase<F>(
    dial: &Dial,
    call: F,
    req_tx: &mut Option<mpsc::Sender<Packet>>,
    random: i64,
    result_tx: &mut Option<oneshot::Sender<DialResult>>,
) -> DialOutcome
where
    F: Future<Output = Result<tonic::Response<Streaming<Packet>>, tonic::Status>>,
{
    tokio::pin!(call);
    let mut stream: Option<Streaming<Packet>> = None;
    let mut cleanup_deadline: Option<Instant> = None;
    loop {
        let cancelled = cleanup_deadline.is_some();
        tokio::select! {
            biased;
            _ = sleep_opt(cleanup_deadline) => {
                debug!(address = %dial.address, random, "proxy did not end the cancelled stream in time");
                return DialOutcome::Abandoned;
            }
            _ = tokio::time::sleep_until(dial.deadline), if !cancelled => {
                debug!(address = %dial.address, random, "dial timed out; sending DIAL_CLS");
                cancel_dial(req_tx, random);
                cleanup_deadline = Some(Instant::now() + dial.close_timeout);
                if let Some(tx) = result_tx.take() {
                    let _ = tx.send(Err(dial.timed_out()));
                }
            }
            _ = caller_gone(result_tx), if !cancelled => {
                debug!(address = %dial.address, random, "dial abandoned by the caller; sending DIAL_CLS");
                cancel_dial(req_tx, random);
                cleanup_deadline = Some(Instant::now() + dial.close_timeout);
            }
            response = &mut call, if stream.is_none() => match response {
                Ok(response) => stream = Some(response.into_inner()),
                Err(status) if cancelled => {
                    debug!(%status, "cancelled dial stream ended");
                    return DialOutcome::Abandoned;
                }
                Err(status) => return DialOutcome::Failed(dial.status(&status)),
            },
            message = next_message(&mut stream), if stream.is_some() => {
                let packet = match message {
                    Ok(Some(packet)) => packet,
                    Ok(None) if cancelled => return DialOutcome::Abandoned,
                    Ok(None) => {
                        return DialOutcome::Failed(
                            dial.closed("the proxy ended the stream before answering the dial"),
                        )
                    }
                    Err(_) if cancelled => return DialOutcome::Abandoned,
                    Err(status) => return DialOutcome::Failed(dial.status(&status)),
                };
                match Incoming::from(packet) {
                    Incoming::DialResponse { random: r, connect_id, error } if r == random => {
                        if cancelled {
                            // Too late: our half-close makes the proxy close it.
                            debug!(connect_id, "DIAL_RSP after DIAL_CLS; left to the proxy");
                            return DialOutcome::Abandoned;
                        }
                        if !error.is_empty() {
                            return DialOutcome::Failed(ClientError::DialRefused {
                                address: dial.address.clone(),
                                message: error,
                            });
                        }
                        if connect_id == 0 {
                            return DialOutcome::Failed(ClientError::Protocol {
                                address: dial.address.clone(),
                                detail: "DIAL_RSP carries neither an error nor a connection id"
                                    .to_string(),
                            });
                        }
                        return match stream.take() {
                            Some(stream) => DialOutcome::Established { stream, connect_id },
                            // The branch only runs while the stream is present.
                            None => DialOutcome::Failed(dial.closed("stream vanished")),
                        };
                    }
                    Incoming::DialClosed { random: r } if r == random => {
                        if cancelled {
                            return DialOutcome::Abandoned;
                        }
                        return DialOutcome::Failed(dial.closed("dial closed"));
                    }
                    Incoming::Data { connect_id, .. } if connect_id != 0 => {
                        // No connection is known yet, so every id is unknown: ask to close it.
                        if let Some(tx) = req_tx.as_ref() {
                            if tx.try_send(Packet::close_request(connect_id)).is_err() {
                                debug!(connect_id, "outbound queue full; CLOSE_REQ for unknown id dropped");
                            }
                        }
                    }
                    other => debug!(packet = other.name(), "ignoring packet while dialing"),
                }
            }
        }
    }
}

/// Queues `DIAL_CLS{random}` and half-closes the request stream.
fn cancel_dial(req_tx: &mut Option<mpsc::Sender<Packet>>, random: i64) {
    if let Some(tx) = req_tx.take() {
        // During the dial the queue holds at most DIAL_REQ and a few CLOSE_REQs; a full queue
        // means the proxy stopped reading, and the connection is dropped soon anyway.
        if tx.try_send(Packet::close_dial(random)).is_err() {
            debug!(random, "outbound queue full; DIAL_CLS dropped");
        }
    }
}

/// The established half of the driver.
struct DataPhase<'a> {
    stream: Streaming<Packet>,
    req_tx: mpsc::Sender<Packet>,
    connect_id: i64,
    read_tx: Option<mpsc::Sender<Bytes>>,
    control_rx: oneshot::Receiver<()>,
    address: &'a str,
    close_timeout: Duration,
}

impl DataPhase<'_> {
    /// Pumps until the tunnel is over. Returns the error the reader should see after the
    /// buffered data (`None` = clean EOF).
    async fn run(&mut self) -> Option<io::Error> {
        let connect_id = self.connect_id;
        let mut pending: Option<Bytes> = None;
        let mut outbox: VecDeque<Packet> = VecDeque::new();
        let mut close_deadline: Option<Instant> = None;
        let mut control_open = true;
        loop {
            let closing = close_deadline.is_some();
            let mut reader_gone = false;
            tokio::select! {
                biased;
                _ = sleep_opt(close_deadline) => {
                    debug!(address = self.address, connect_id, timeout = ?self.close_timeout, "no CLOSE_RSP in time; dropping the connection");
                    return None;
                }
                control = &mut self.control_rx, if control_open => {
                    control_open = false;
                    if control.is_err() {
                        // Dropped without shutdown: close on the caller's behalf.
                        outbox.push_back(Packet::close_request(connect_id));
                    }
                    close_deadline = Some(Instant::now() + self.close_timeout);
                }
                permit = self.req_tx.reserve(), if !outbox.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(packet) = outbox.pop_front() {
                            permit.send(packet);
                        }
                    }
                    Err(_) => return Some(aborted("the connection to the proxy is gone")),
                },
                permit = reserve(&self.read_tx), if pending.is_some() => match permit {
                    Some(permit) => {
                        if let Some(data) = pending.take() {
                            permit.send(data);
                        }
                    }
                    None => {
                        // The reader is gone: discard from now on.
                        reader_gone = true;
                        pending = None;
                    }
                },
                message = self.stream.message(), if pending.is_none() => {
                    let packet = match message {
                        Ok(Some(packet)) => packet,
                        Ok(None) if closing => return None,
                        Ok(None) => {
                            return Some(aborted(
                                "the proxy ended the tunnel's stream without closing the connection (no CLOSE_RSP)",
                            ))
                        }
                        Err(_) if closing => return None,
                        Err(status) => {
                            return Some(aborted(&format!(
                                "the tunnel's gRPC stream failed with status {:?}: {}",
                                status.code(),
                                status.message()
                            )))
                        }
                    };
                    match Incoming::from(packet) {
                        Incoming::Data { connect_id: id, data } if id == connect_id => {
                            if !data.is_empty() && self.read_tx.is_some() {
                                pending = Some(data);
                            }
                        }
                        Incoming::Data { connect_id: id, .. } if id != 0 => {
                            let request = Packet::close_request(id);
                            if outbox.contains(&request) {
                                continue;
                            }
                            if outbox.len() >= MAX_CONTROL_BACKLOG {
                                debug!(connect_id = id, "control backlog full; CLOSE_REQ for unknown id dropped");
                                continue;
                            }
                            debug!(connect_id = id, "DATA for an unknown connection; sending CLOSE_REQ");
                            outbox.push_back(request);
                        }
                        Incoming::CloseResponse { connect_id: id, error } if id == connect_id => {
                            if !error.is_empty() {
                                debug!(address = self.address, connect_id, %error, "CLOSE_RSP with error");
                            }
                            return None;
                        }
                        other => debug!(packet = other.name(), "ignoring packet on an established tunnel"),
                    }
                }
            }
            if reader_gone {
                self.read_tx = None;
            }
        }
    }
}

/// A packet reduced to what the client acts on. Dispatch is on `type`, as upstream does; a
/// payload that disagrees with the type makes the packet [`Incoming::Other`].
enum Incoming {
    DialResponse {
        random: i64,
        connect_id: i64,
        error: String,
    },
    DialClosed {
        random: i64,
    },
    Data {
        connect_id: i64,
        data: bytes::Bytes,
    },
    CloseResponse {
        connect_id: i64,
        error: String,
    },
    Other(&'static str),
}

impl From<Packet> for Incoming {
    fn from(packet: Packet) -> Self {
        let name = packet.kind_name();
        match (packet.kind(), packet.payload) {
            (Some(PacketType::DialRsp), Some(Payload::DialResponse(r))) => Incoming::DialResponse {
                random: r.random,
                connect_id: r.connect_id,
                error: r.error,
            },
            (Some(PacketType::DialCls), Some(Payload::CloseDial(c))) => {
                Incoming::DialClosed { random: c.random }
            }
            (Some(PacketType::Data), Some(Payload::Data(d))) => Incoming::Data {
                connect_id: d.connect_id,
                data: d.data,
            },
            (Some(PacketType::CloseRsp), Some(Payload::CloseResponse(c))) => {
                Incoming::CloseResponse {
                    connect_id: c.connect_id,
                    error: c.error,
                }
            }
            _ => Incoming::Other(name),
        }
    }
}

impl Incoming {
    /// Upstream's packet type name, for logs.
    fn name(&self) -> &'static str {
        match self {
            Incoming::DialResponse { .. } => "DIAL_RSP",
            Incoming::DialClosed { .. } => "DIAL_CLS",
            Incoming::Data { .. } => "DATA",
            Incoming::CloseResponse { .. } => "CLOSE_RSP",
            Incoming::Other(name) => name,
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the waiting `dial()` has been dropped; never when already reported.
async fn caller_gone(result_tx: &mut Option<oneshot::Sender<DialResult>>) {
    match result_tx {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

/// The next packet of the stream, once it is open.
async fn next_message(
    stream: &mut Option<Streaming<Packet>>,
) -> Result<Option<Packet>, tonic::Status> {
    match stream {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

/// A slot in the reader's queue; `None` when the reader is gone.
async fn reserve(tx: &Option<mpsc::Sender<Bytes>>) -> Option<mpsc::Permit<'_, Bytes>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => None,
    }
}

fn aborted(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, why.to_string())
}

/// Renders an error and its sources on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// State the driver publishes to the tunnel when it ends.
#[derive(Default)]
struct Shared {
    /// Set when the driver has ended: writes fail from then on.
    closed: AtomicBool,
    /// Error for the reader after the buffered data (`None` = clean EOF).
    error: Mutex<Option<io::Error>>,
}

impl Shared {
    /// Publishes the end of the tunnel; must run before the read channel is dropped so the
    /// reader sees the error when it finds the channel closed.
    fn finish(&self, error: Option<io::Error>) {
        if let Ok(mut slot) = self.error.lock() {
            *slot = error;
        }
        self.closed.store(true, Ordering::Release);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn take_error(&self) -> Option<io::Error> {
        self.error.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// The caller's end of a gRPC tunnel.
pub(crate) struct GrpcTunnel {
    connect_id: i64,
    /// The request stream: DATA and CLOSE_REQ packets.
    tx: PollSender<Packet>,
    /// DATA payloads from the driver, in order.
    rx: mpsc::Receiver<Bytes>,
    /// The unread rest of the last payload.
    partial: Bytes,
    shared: Arc<Shared>,
    /// Told after `poll_shutdown` queued CLOSE_REQ; dropped unused means "dropped without
    /// shutdown" and makes the driver send CLOSE_REQ itself.
    control: Option<oneshot::Sender<()>>,
    write_closed: bool,
    read_done: bool,
}

impl GrpcTunnel {
    pub(crate) fn connect_id(&self) -> i64 {
        self.connect_id
    }
}

fn broken_pipe(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, why)
}

impl AsyncRead for GrpcTunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.partial.is_empty() {
                let n = this.partial.len().min(buf.remaining());
                buf.put_slice(&this.partial.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.rx.poll_recv(cx)) {
                Some(data) => this.partial = data,
                None => {
                    this.read_done = true;
                    if let Some(err) = this.shared.take_error() {
                        return Poll::Ready(Err(err));
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl AsyncWrite for GrpcTunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(broken_pipe("write after shutdown of the tunnel")));
        }
        if this.shared.is_closed() {
            return Poll::Ready(Err(broken_pipe(
                "the tunnel was closed by the proxy or the destination",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if ready!(this.tx.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(broken_pipe("the connection to the proxy is gone")));
        }
        let n = buf.len().min(MAX_DATA_CHUNK);
        match this
            .tx
            .send_item(Packet::data(this.connect_id, buf[..n].to_vec()))
        {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(broken_pipe("the connection to the proxy is gone"))),
        }
    }

    /// Packets are handed to the gRPC stream as they are written; there is nothing to flush.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Queues CLOSE_REQ behind the written data and returns; the driver waits for CLOSE_RSP
    /// (at most [`crate::CLOSE_TIMEOUT`]) and then drops the proxy connection. Reads keep returning
    /// data that arrives until then.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Ok(()));
        }
        if !this.shared.is_closed() && ready!(this.tx.poll_reserve(cx)).is_ok() {
            // A failure means the connection is already gone, which is what shutdown wants.
            let _ = this.tx.send_item(Packet::close_request(this.connect_id));
        }
        this.write_closed = true;
        this.tx.close();
        if let Some(control) = this.control.take() {
            let _ = control.send(());
        }
        Poll::Ready(Ok(()))
    }
}

/// The proxy connection as hyper sees it, with a kill switch: once the token is cancelled every
/// read and write fails, which ends hyper's connection task and with it the stream — even while
/// the caller still holds its end of the tunnel.
struct KillableIo {
    io: ProxyIo,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    dead: bool,
}

impl KillableIo {
    fn new(io: ProxyIo, kill: CancellationToken) -> Self {
        KillableIo {
            io,
            killed: Box::pin(kill.cancelled_owned()),
            dead: false,
        }
    }

    /// Fails once the kill switch was thrown; registers the waker otherwise.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        if self.dead {
            return Err(aborted("tunnel closed"));
        }
        Ok(())
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn incoming_dispatches_on_type_not_payload() {
        // A DATA-typed packet carrying a CLOSE_RSP payload is not acted upon.
        let mut packet = Packet::close_response(7, "");
        packet.r#type = PacketType::Data as i32;
        assert!(matches!(Incoming::from(packet), Incoming::Other("DATA")));
        assert!(matches!(
            Incoming::from(Packet::data(7, b"x".to_vec())),
            Incoming::Data { connect_id: 7, .. }
        ));
        let mut unknown = Packet::drain();
        unknown.r#type = 42;
        assert!(matches!(
            Incoming::from(unknown),
            Incoming::Other("Unknown")
        ));
    }

    #[test]
    fn error_chain_includes_sources_once() {
        let inner = io::Error::other("inner cause");
        let outer = io::Error::other(OuterError(inner));
        let text = error_chain(&outer);
        assert!(text.contains("outer"), "{text}");
        assert!(text.contains("inner cause"), "{text}");
    }

    #[derive(Debug)]
    struct OuterError(io::Error);
    impl std::fmt::Display for OuterError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer")
        }
    }
    impl std::error::Error for OuterError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
