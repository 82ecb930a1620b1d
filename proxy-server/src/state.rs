//! The server's shared state and the routing operations both frontends and the backend use.
//!
//! Locks are `std::sync::Mutex`es held only for table look-ups, never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use konnectivity_proto::{DialRequest, Packet};
use konnectivity_tunnel::credit::{self, CreditGate, RecvWindow};
use konnectivity_tunnel::outbound::OutboundTx;
use konnectivity_tunnel::queue::{self, QueueClosed, QueueRx, QueueTx, TryPushError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backends::{BackendId, Backends};
use crate::config::{ProxyStrategy, ServerConfig};
use crate::metrics::{DialFailureReason, Metrics};
use crate::router::{BeginDialError, DialResponseRoute, FrontendId, Router};

/// DIAL_RSP error when no agent can take the dial (upstream's wording).
pub const NO_AGENT_ERROR: &str = "No agent available";
/// DIAL_RSP error when `--backend-dial-timeout` expires (upstream's wording).
pub const BACKEND_DIAL_TIMEOUT_ERROR: &str = "timed out waiting for backend dial";
/// DIAL_RSP error when the agent stream carrying a pending dial goes away. Upstream leaves such
/// dials hanging (its TODO #126); we fail them at once.
pub const BACKEND_GONE_ERROR: &str = "Backend context error: context canceled";

/// A connection established on a QUIC agent: its own stream, handed to the frontend that
/// dialled it (before the DIAL_RSP is queued to that frontend), which then owns it.
#[derive(Debug)]
pub struct QuicTunnel {
    /// The agent connection carrying it.
    pub backend: BackendId,
    /// Its connectID toward the frontend (the QUIC stream id).
    pub connect_id: i64,
    /// Bytes toward the destination.
    pub send: quinn::SendStream,
    /// Bytes from the destination.
    pub recv: quinn::RecvStream,
}

/// A QUIC connection waits in its frontend's hand-off queue (unbounded: at most one per dial)
/// at the least charge; it holds no payload of its own.
impl queue::Charge for QuicTunnel {
    fn payload_bytes(&self) -> usize {
        0
    }
}

/// The receiving end of a frontend's QUIC connections. A queue rather than a channel: a
/// channel allocates a block of slots up front for every frontend, and almost every frontend
/// receives one tunnel or none. Dropping it drops (and so ends) streams nobody will pump.
pub type TunnelsRx = QueueRx<QuicTunnel>;

/// Where packets for one frontend go, and how to abort it.
#[derive(Debug, Clone)]
pub struct FrontendSink {
    queue: QueueTx,
    abort: CancellationToken,
    tunnels: QueueTx<QuicTunnel>,
}

/// What a frontend receives: packets, and the streams of connections on QUIC agents.
#[derive(Debug)]
pub struct FrontendRx {
    /// Packets (DIAL_RSP, DATA and CLOSE_RSP of gRPC agents, refusals).
    pub queue: QueueRx,
    /// QUIC connections established for this frontend; each arrives before its DIAL_RSP.
    pub tunnels: TunnelsRx,
}

impl FrontendSink {
    /// A sink with its queue (bounded by [`queue::connection_packets`] of `xfr_channel_size`
    /// and [`queue::DEFAULT_QUEUE_BYTES`]) and an abort token that is a child of `parent`.
    pub fn new(xfr_channel_size: usize, parent: &CancellationToken) -> (Self, FrontendRx) {
        // Room for a flow-controlled agent's full window of the smallest packets; memory stays
        // bounded by the byte bound.
        let (queue, rx) = queue::channel(
            queue::connection_packets(xfr_channel_size).max(credit::FLOW_QUEUE_PACKETS),
            queue::DEFAULT_QUEUE_BYTES,
        );
        let (tunnels, tunnels_rx) = queue::channel(usize::MAX, usize::MAX);
        (
            FrontendSink {
                queue,
                abort: parent.child_token(),
                tunnels,
            },
            FrontendRx {
                queue: rx,
                tunnels: tunnels_rx,
            },
        )
    }

    /// Cancelled when this frontend must stop (stalled reader, server stopping).
    pub fn abort_token(&self) -> &CancellationToken {
        &self.abort
    }

    /// Queues a packet, waiting for room: for a producer that owns one connection of this
    /// frontend (a QUIC stream reader), whose wait pauses only that connection.
    pub async fn push(&self, packet: Packet) -> Result<(), QueueClosed> {
        self.queue.push(packet).await
    }

    /// Hands a QUIC connection to the frontend; gives it back if the frontend is gone.
    pub fn attach(&self, tunnel: QuicTunnel) -> Result<(), QuicTunnel> {
        // Unbounded, so only a gone frontend refuses it.
        self.tunnels.try_push(tunnel).map_err(|e| match e {
            TryPushError::Full(full) => full.packet,
            TryPushError::Closed(closed) => closed.0,
        })
    }
}

/// How the server reaches one agent connection.
#[derive(Debug, Clone)]
pub enum BackendLink {
    /// A gRPC `AgentService.Connect` stream: every connection's packets share its outbound
    /// lanes.
    Grpc(OutboundTx),
    /// A QUIC connection: every dial opens its own stream.
    Quic(quinn::Connection),
}

/// An agent connection as the shell sees it.
#[derive(Debug, Clone)]
pub struct BackendHandle {
    /// How to reach it.
    pub link: BackendLink,
    /// Cancelled to retire the connection (ends our side of it).
    pub retire: CancellationToken,
    /// Per-connection flow control was negotiated on this gRPC agent stream.
    pub flow_control: bool,
}

/// Flow-control state of one connection on a gRPC agent stream that negotiated it.
#[derive(Debug)]
struct Flow {
    /// Credit toward the agent (DATA from the frontend waits on it).
    send: Arc<CreditGate>,
    /// Bytes the frontend drained, to grant back to the agent.
    recv: RecvWindow,
}

/// A dial the server could not hand to an agent.
#[derive(Debug, thiserror::Error)]
pub enum DialRefusal {
    #[error("{NO_AGENT_ERROR}")]
    NoAgent,
    #[error("{0}")]
    Duplicate(#[from] BeginDialError),
    #[error("{BACKEND_DIAL_TIMEOUT_ERROR}")]
    SendTimeout,
    #[error("{BACKEND_GONE_ERROR}")]
    BackendGone,
}

/// Shared server state.
#[derive(Debug)]
pub struct Shared {
    pub strategies: Vec<ProxyStrategy>,
    pub server_id: String,
    pub server_count: u32,
    pub xfr_channel_size: usize,
    pub backend_dial_timeout: Duration,
    pub metrics: Metrics,
    /// Cancelled when the server stops hard: every frontend and agent stream ends.
    pub hard_stop: CancellationToken,
    backends: Mutex<Backends<BackendHandle>>,
    router: Mutex<Router<FrontendSink>>,
    /// Dials in flight on QUIC agents, by `random`: cancelling one resets its stream.
    quic_dials: Mutex<HashMap<i64, CancellationToken>>,
    /// Grant per-connection flow control to agents that ask (`--flow-control`).
    pub flow_control: bool,
    /// Flow-controlled connections, by agent stream and connectID.
    flows: Mutex<HashMap<(BackendId, i64), Flow>>,
    next_frontend: AtomicU64,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the tables are
/// updated in single statements, so a poisoned lock still guards consistent data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(config: &ServerConfig, metrics: Metrics) -> Arc<Self> {
        let extensions = &config.extensions;
        Arc::new(Shared {
            strategies: config.proxy_strategies.clone(),
            server_id: config.server_id.clone(),
            server_count: config.server_count,
            xfr_channel_size: config.xfr_channel_size,
            backend_dial_timeout: config.backend_dial_timeout,
            metrics,
            hard_stop: CancellationToken::new(),
            backends: Mutex::new(Backends::default()),
            router: Mutex::new(Router::default()),
            quic_dials: Mutex::new(HashMap::new()),
            flow_control: extensions.flow_control,
            flows: Mutex::new(HashMap::new()),
            next_frontend: AtomicU64::new(1),
        })
    }

    // ---- backends -------------------------------------------------------------------------

    /// Registers an agent stream.
    pub fn add_backend(
        &self,
        agent_id: String,
        identifiers: crate::identifiers::AgentIdentifiers,
        handle: BackendHandle,
    ) -> BackendId {
        let mut b = lock(&self.backends);
        let id = b.add(agent_id, identifiers, handle);
        self.metrics
            .ready_backend_connections_set(b.agent_count() as i64);
        id
    }

    /// Whether the first strategy has an agent (readiness, as upstream).
    pub fn ready(&self) -> Result<(), String> {
        let strategy = self
            .strategies
            .first()
            .copied()
            .unwrap_or(ProxyStrategy::Default);
        if lock(&self.backends).ready_for(strategy) {
            Ok(())
        } else {
            Err("no connection to any proxy agent".to_string())
        }
    }

    /// Marks a backend draining (the agent sent DRAIN).
    pub fn drain_backend(&self, id: BackendId) {
        if lock(&self.backends).set_draining(id) {
            info!(backend = %id, "agent is draining; new dials prefer other agents");
        }
    }

    fn backend_link(&self, id: BackendId) -> Option<BackendLink> {
        lock(&self.backends).get(id).map(|b| b.handle.link.clone())
    }

    fn backend_tx(&self, id: BackendId) -> Option<OutboundTx> {
        match self.backend_link(id)? {
            BackendLink::Grpc(tx) => Some(tx),
            BackendLink::Quic(_) => None,
        }
    }

    /// Deregisters a lost agent stream and tells every frontend that depended on it.
    pub fn remove_backend(&self, id: BackendId) {
        {
            let mut b = lock(&self.backends);
            if let Some(gone) = b.remove(id) {
                gone.handle.retire.cancel();
                info!(backend = %id, agent_id = %gone.agent_id, "agent stream removed");
            }
            self.metrics
                .ready_backend_connections_set(b.agent_count() as i64);
        }
        let left = lock(&self.router).remove_backend(id);
        lock(&self.flows).retain(|(b, _), flow| {
            if *b == id {
                flow.send.close();
            }
            *b != id
        });
        if !left.established.is_empty() || !left.pending.is_empty() {
            info!(
                backend = %id,
                established = left.established.len(),
                pending = left.pending.len(),
                "closing connections and failing dials of the lost agent"
            );
        }
        for (random, _, sink) in left.pending {
            self.deliver(&sink, Packet::dial_response(random, 0, BACKEND_GONE_ERROR));
        }
        for (connect_id, _, sink) in left.established {
            self.deliver(&sink, Packet::close_response(connect_id, ""));
        }
        self.update_gauges();
    }

    // ---- frontends ------------------------------------------------------------------------

    /// Registers a new frontend; returns its id, sink and what to drain toward it.
    pub fn add_frontend(&self) -> (FrontendId, FrontendSink, FrontendRx) {
        let id = self.next_frontend.fetch_add(1, Ordering::Relaxed);
        let (sink, rx) = FrontendSink::new(self.xfr_channel_size, &self.hard_stop);
        lock(&self.router).add_frontend(id, sink.clone());
        (id, sink, rx)
    }

    /// Whether any frontend is still open (graceful shutdown waits for none).
    pub fn has_open_frontends(&self) -> bool {
        lock(&self.router).frontend_count() > 0
    }

    /// Queues a packet toward a frontend without waiting. A full queue means the frontend's
    /// reader has stalled: the frontend is aborted (its cleanup closes its connections on the
    /// agents) so that it never blocks the agent stream the packet came from.
    pub fn deliver(&self, sink: &FrontendSink, packet: Packet) {
        match sink.queue.try_push(packet) {
            Ok(()) => {}
            Err(TryPushError::Full(full)) => {
                if !sink.abort.is_cancelled() {
                    warn!(
                        queued_packets = full.queued_packets,
                        "frontend stopped reading and its queue is full; aborting it so the agent stream keeps moving"
                    );
                    self.metrics.stalled_connection();
                    sink.abort.cancel();
                }
            }
            Err(TryPushError::Closed(_)) => {
                debug!("frontend already gone; packet dropped");
            }
        }
    }

    /// Starts a dial for a frontend: picks an agent, records the dial, sends DIAL_REQ (gRPC
    /// agent) or opens the connection's stream (QUIC agent). The answer reaches the frontend's
    /// queue as a DIAL_RSP either way.
    pub async fn dial(
        self: &Arc<Self>,
        frontend: FrontendId,
        request: &DialRequest,
    ) -> Result<BackendId, DialRefusal> {
        let start = rand::random::<u32>() as usize;
        let picked = {
            let b = lock(&self.backends);
            b.select(&self.strategies, &request.address, start)
                .and_then(|id| b.get(id).map(|e| (id, e.handle.clone())))
        };
        let Some((backend, handle)) = picked else {
            self.metrics.dial_failure(DialFailureReason::NoAgent);
            return Err(DialRefusal::NoAgent);
        };
        lock(&self.router).begin_dial(frontend, request.random, backend)?;
        self.update_gauges();
        debug!(frontend, random = request.random, address = %request.address, %backend, "dial sent to agent");
        let packet = Packet::dial_request(&request.protocol, &request.address, request.random);
        self.metrics.stream_packet_to_agent(&packet);
        match handle.link {
            BackendLink::Grpc(tx) => {
                let sent = if self.backend_dial_timeout.is_zero() {
                    tx.send(packet).await.map_err(|_| DialRefusal::BackendGone)
                } else {
                    match tokio::time::timeout(self.backend_dial_timeout, tx.send(packet)).await {
                        Ok(r) => r.map_err(|_| DialRefusal::BackendGone),
                        Err(_) => {
                            warn!(%backend, "agent stream did not take a DIAL_REQ within --backend-dial-timeout; retiring it");
                            handle.retire.cancel();
                            self.metrics
                                .dial_failure(DialFailureReason::BackendDialTimeout);
                            Err(DialRefusal::SendTimeout)
                        }
                    }
                };
                if let Err(e) = sent {
                    lock(&self.router).cancel_dial(request.random, Some(frontend));
                    self.update_gauges();
                    return Err(e);
                }
            }
            BackendLink::Quic(conn) => {
                let cancel = CancellationToken::new();
                lock(&self.quic_dials).insert(request.random, cancel.clone());
                tokio::spawn(crate::quic::dial(
                    Arc::clone(self),
                    backend,
                    conn,
                    request.clone(),
                    cancel,
                ));
            }
        }
        if !self.backend_dial_timeout.is_zero() {
            let shared = Arc::clone(self);
            let random = request.random;
            tokio::spawn(async move {
                tokio::time::sleep(shared.backend_dial_timeout).await;
                let expired = lock(&shared.router).cancel_dial(random, Some(frontend));
                if let Some((_, _, sink)) = expired {
                    shared.abandon_quic_dial(random);
                    shared
                        .metrics
                        .dial_failure(DialFailureReason::BackendDialTimeout);
                    shared.update_gauges();
                    shared.deliver(
                        &sink,
                        Packet::dial_response(random, 0, BACKEND_DIAL_TIMEOUT_ERROR),
                    );
                }
            });
        }
        Ok(backend)
    }

    /// Cancels the stream of a QUIC dial in flight (no-op for other dials).
    fn abandon_quic_dial(&self, random: i64) {
        if let Some(cancel) = lock(&self.quic_dials).get(&random) {
            cancel.cancel();
        }
    }

    /// A QUIC dial task is done (answered, failed or cancelled): forget its cancel handle.
    pub(crate) fn forget_quic_dial(&self, random: i64) {
        lock(&self.quic_dials).remove(&random);
    }

    /// Tells the agent that a dial it is making is no longer wanted: DIAL_CLS on a gRPC stream
    /// (sent from a detached task, in order after earlier packets), a stream reset on QUIC.
    fn cancel_backend_dial(&self, backend: BackendId, random: i64) {
        match self.backend_link(backend) {
            Some(BackendLink::Grpc(tx)) => self.send_detached(tx, Packet::close_dial(random)),
            Some(BackendLink::Quic(_)) => self.abandon_quic_dial(random),
            None => {}
        }
    }

    /// Routes a dial's answer that arrived from `backend` (either transport): if a frontend
    /// waits for it, returns that frontend's sink (the connection is now established if it
    /// succeeded); `None` if nobody does (cancelled, timed out, bogus): the caller then closes
    /// whatever the agent opened.
    pub(crate) fn route_dial_response(
        &self,
        backend: BackendId,
        random: i64,
        connect_id: i64,
        failed: bool,
    ) -> Option<FrontendSink> {
        let route = lock(&self.router).dial_response(backend, random, connect_id, failed);
        self.update_gauges();
        match route {
            DialResponseRoute::Forward(_, sink) => {
                if failed {
                    self.metrics.dial_failure(DialFailureReason::ErrorResponse);
                } else if connect_id != 0 && self.backend_flow_controlled(backend) {
                    lock(&self.flows).insert(
                        (backend, connect_id),
                        Flow {
                            send: Arc::new(CreditGate::new(credit::INITIAL_WINDOW)),
                            recv: RecvWindow::default(),
                        },
                    );
                }
                Some(sink)
            }
            DialResponseRoute::Unrecognized => {
                self.metrics
                    .dial_failure(DialFailureReason::UnrecognizedResponse);
                debug!(%backend, random, connect_id, "DIAL_RSP not recognized; dropped");
                None
            }
        }
    }

    fn backend_flow_controlled(&self, backend: BackendId) -> bool {
        lock(&self.backends)
            .get(backend)
            .is_some_and(|b| b.handle.flow_control)
    }

    /// Forgets a connection's flow-control state and wakes a sender waiting for its credit.
    fn forget_flow(&self, backend: BackendId, connect_id: i64) {
        if let Some(flow) = lock(&self.flows).remove(&(backend, connect_id)) {
            flow.send.close();
        }
    }

    /// A frontend's writer has drained `len` bytes of DATA of `connect_id`: on a
    /// flow-controlled agent stream, grant that credit back (in batches) on the control lane.
    pub fn frontend_drained(&self, frontend: FrontendId, connect_id: i64, len: usize) {
        if !self.flow_control {
            return;
        }
        let Some(backend) = lock(&self.router).route_from_frontend(frontend, connect_id) else {
            return;
        };
        let grant = match lock(&self.flows).get_mut(&(backend, connect_id)) {
            Some(flow) => flow.recv.drained(credit::charge(len)),
            None => return,
        };
        let (Some(grant), Some(tx)) = (grant, self.backend_tx(backend)) else {
            return;
        };
        let packet = Packet::credit(connect_id, grant);
        self.metrics.stream_packet_to_agent(&packet);
        if tx.send_control(packet).is_err() {
            if let Some(flow) = lock(&self.flows).get_mut(&(backend, connect_id)) {
                flow.recv.restore(grant);
            }
        }
    }

    /// A connection on a QUIC agent ended (either side): forget it; returns the frontend's
    /// sink if the connection was still registered (then the caller owes it a CLOSE_RSP).
    pub(crate) fn close_quic_connection(
        &self,
        backend: BackendId,
        connect_id: i64,
    ) -> Option<FrontendSink> {
        let route = lock(&self.router).close_from_agent(backend, connect_id);
        self.update_gauges();
        route.map(|(_, sink)| sink)
    }

    /// The frontend cancelled a dial (DIAL_CLS). Upstream only forgets it; we also forward the
    /// DIAL_CLS so an agent of ours stops dialling (an upstream agent ignores it).
    pub async fn cancel_dial(&self, frontend: FrontendId, random: i64) {
        let cancelled = lock(&self.router).cancel_dial(random, Some(frontend));
        if let Some((backend, _, _)) = cancelled {
            self.metrics.dial_failure(DialFailureReason::FrontendClose);
            self.update_gauges();
            match self.backend_link(backend) {
                Some(BackendLink::Grpc(tx)) => {
                    let packet = Packet::close_dial(random);
                    self.metrics.stream_packet_to_agent(&packet);
                    let _ = tx.send(packet).await;
                }
                Some(BackendLink::Quic(_)) => self.abandon_quic_dial(random),
                None => {}
            }
        }
    }

    /// Sends DATA from a frontend to the agent carrying `connect_id`. Returns an error text to
    /// answer with (as CLOSE_RSP) if the frontend does not own such a connection.
    pub async fn data_to_agent(
        &self,
        frontend: FrontendId,
        connect_id: i64,
        data: impl Into<bytes::Bytes>,
    ) -> Result<(), &'static str> {
        let data: bytes::Bytes = data.into();
        let backend = lock(&self.router).route_from_frontend(frontend, connect_id);
        let Some(backend) = backend else {
            return Err(if lock(&self.router).frontend_has_dialled(frontend) {
                "unrecognized connectID"
            } else {
                "backend not initialized"
            });
        };
        // A connection on a QUIC agent is written by its frontend directly; one that reaches
        // here is closing, and its stream's end tells the frontend.
        if let Some(tx) = self.backend_tx(backend) {
            // Flow control: wait for the agent's credit for this connection. Only this
            // frontend waits (its reader stops reading); a closed connection wakes it.
            let gate = if self.flow_control {
                lock(&self.flows)
                    .get(&(backend, connect_id))
                    .map(|f| Arc::clone(&f.send))
            } else {
                None
            };
            if let Some(gate) = gate {
                if !gate.ready().await {
                    return Ok(());
                }
                gate.consume(credit::charge(data.len()));
            }
            let packet = Packet::data(connect_id, data);
            self.metrics.stream_packet_to_agent(&packet);
            // A closed stream means the agent is gone; its removal tells this frontend.
            let _ = tx.send(packet).await;
        }
        Ok(())
    }

    /// Forwards a frontend's CLOSE_REQ to the agent (on the data lane, after the connection's
    /// last DATA). Returns an error text if the frontend does not own the connection.
    pub async fn close_to_agent(
        &self,
        frontend: FrontendId,
        connect_id: i64,
    ) -> Result<(), &'static str> {
        let backend = lock(&self.router).route_from_frontend(frontend, connect_id);
        let Some(backend) = backend else {
            return Err("backend uninitialized");
        };
        let Some(tx) = self.backend_tx(backend) else {
            return Err("CLOSE_REQ to backend failed");
        };
        let packet = Packet::close_request(connect_id);
        self.metrics.stream_packet_to_agent(&packet);
        tx.send(packet)
            .await
            .map_err(|_| "CLOSE_REQ to backend failed")
    }

    /// Removes a frontend whose stream or socket ended, closing what it left on the agents.
    pub fn remove_frontend(&self, frontend: FrontendId) {
        let left = lock(&self.router).remove_frontend(frontend);
        self.update_gauges();
        for (random, backend) in left.pending {
            self.metrics.dial_failure(DialFailureReason::FrontendClose);
            self.cancel_backend_dial(backend, random);
        }
        for (backend, connect_id) in left.established {
            self.forget_flow(backend, connect_id);
            // QUIC connections belong to the frontend's own tasks, which reset their streams
            // as they end; only gRPC agents need a packet.
            if let Some(tx) = self.backend_tx(backend) {
                self.send_detached(tx, Packet::close_request(connect_id));
            }
        }
    }

    /// Sends on a gRPC agent's data lane (keeping order after earlier DATA) from a detached
    /// task, so the caller never waits on a busy agent stream.
    fn send_detached(&self, tx: OutboundTx, packet: Packet) {
        self.metrics.stream_packet_to_agent(&packet);
        tokio::spawn(async move {
            let _ = tx.send(packet).await;
        });
    }

    // ---- packets from agents --------------------------------------------------------------

    /// Routes one packet that arrived on an agent stream. Never waits: replies to the agent go
    /// on its control lane, packets to frontends through their bounded queues.
    pub fn on_agent_packet(&self, backend: BackendId, reply: &OutboundTx, packet: Packet) {
        use konnectivity_proto::{PacketType as T, Payload as P};
        self.metrics.stream_packet_from_agent(&packet);
        let kind = packet.kind();
        match (kind, &packet.payload) {
            (Some(T::DialRsp), Some(P::DialResponse(rsp))) => {
                let failed = !rsp.error.is_empty();
                let (random, connect_id) = (rsp.random, rsp.connect_id);
                match self.route_dial_response(backend, random, connect_id, failed) {
                    Some(sink) => self.deliver(&sink, packet),
                    None if connect_id != 0 => self.reply(reply, Packet::close_request(connect_id)),
                    None => {}
                }
            }
            (Some(T::Data), Some(P::Data(d))) => {
                if d.connect_id == 0 {
                    return;
                }
                let route = lock(&self.router).route_from_agent(backend, d.connect_id);
                match route {
                    Some((_, sink)) => self.deliver(&sink, packet),
                    None => {
                        debug!(%backend, connect_id = d.connect_id, "DATA for unknown connection; asking agent to close it");
                        self.reply(reply, Packet::close_request(d.connect_id));
                    }
                }
            }
            (Some(T::CloseRsp), Some(P::CloseResponse(c))) => {
                let route = lock(&self.router).close_from_agent(backend, c.connect_id);
                self.forget_flow(backend, c.connect_id);
                self.update_gauges();
                match route {
                    Some((_, sink)) => self.deliver(&sink, packet),
                    None => {
                        debug!(%backend, connect_id = c.connect_id, "CLOSE_RSP for unknown connection; dropped")
                    }
                }
            }
            (Some(T::DialCls), Some(P::CloseDial(c))) => {
                let cancelled = lock(&self.router).cancel_dial(c.random, None);
                self.update_gauges();
                if let Some((b, _, sink)) = cancelled {
                    if b == backend {
                        self.metrics.dial_failure(DialFailureReason::BackendClose);
                        self.deliver(&sink, packet);
                    }
                }
            }
            (Some(T::Drain), _) => self.drain_backend(backend),
            (Some(T::Credit), Some(P::Credit(c))) => {
                let gate = lock(&self.flows)
                    .get(&(backend, c.connect_id))
                    .map(|f| Arc::clone(&f.send));
                match gate {
                    Some(gate) => gate.grant(c.bytes),
                    None => {
                        debug!(%backend, connect_id = c.connect_id, "CREDIT for a connection without flow control; ignored")
                    }
                }
            }
            _ => warn!(
                %backend,
                packet_type = packet.kind_name(),
                has_payload = packet.payload.is_some(),
                "unexpected or malformed packet from agent; ignored"
            ),
        }
    }

    fn reply(&self, reply: &OutboundTx, packet: Packet) {
        self.metrics.stream_packet_to_agent(&packet);
        if let Err(e) = reply.send_control(packet) {
            warn!(error = %e, "could not queue a reply to the agent");
        }
    }

    fn update_gauges(&self) {
        let (pending, established) = {
            let r = lock(&self.router);
            (r.pending_count(), r.established_count())
        };
        self.metrics.pending_backend_dials_set(pending as i64);
        self.metrics.established_connections_set(established as i64);
    }
}
