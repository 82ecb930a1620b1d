//! The gRPC frontend, `ProxyService.Proxy`: each stream is one frontend, normally carrying one
//! dial (upstream's single-use tunnel), possibly many streams on one HTTP/2 connection (the
//! reusable-tunnel client).

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use konnectivity_proto::{Packet, PacketType as T, Payload as P, PROXY_PATH};
use konnectivity_tunnel::grpc::PacketStream;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};
use tracing::{debug, warn};

use crate::grpc_method::{self, StreamingMethod};
use crate::metrics::ServiceMethod;
use crate::quic::{packet_pump, PumpInput, PUMP_INPUT_PACKETS};
use crate::router::FrontendId;
use crate::state::{FrontendSink, QuicTunnel, Shared, TunnelsRx};

/// This frontend's connections on QUIC agents: connectID → the writer side of its pump.
type QuicConns = HashMap<i64, mpsc::Sender<PumpInput>>;

/// The `ProxyService` implementation.
#[derive(Debug, Clone)]
pub struct GrpcFrontend {
    shared: Arc<Shared>,
}

impl GrpcFrontend {
    pub fn new(shared: Arc<Shared>) -> Self {
        GrpcFrontend { shared }
    }
}

/// Served as a [`StreamingMethod`]: packets framed without tonic's codec, so an idle tunnel
/// holds no codec buffers and DATA payloads are not copied through one.
impl StreamingMethod for GrpcFrontend {
    const SERVICE: &'static str = "ProxyService";
    const PATH: &'static str = PROXY_PATH;

    fn call(&self, request: Request<Body>) -> Result<http::Response<Body>, Status> {
        let shared = Arc::clone(&self.shared);
        let (id, sink, rx) = shared.add_frontend();
        shared.metrics.grpc_connection_opened(ServiceMethod::Proxy);
        debug!(frontend = id, user_agent = ?request.metadata().get("user-agent"), "frontend stream opened");
        let inbound = PacketStream::new(request.into_inner());
        let abort = sink.abort_token().clone();
        tokio::spawn(serve(shared, id, sink, inbound, rx.tunnels));
        // A DATA packet leaving the queue toward the frontend is drained: on a flow-controlled
        // agent stream that returns credit to the agent.
        let drained = Arc::clone(&self.shared);
        let body = rx
            .queue
            .into_stream()
            .inspect(move |p: &Packet| {
                if let Some(P::Data(d)) = &p.payload {
                    drained.frontend_drained(id, d.connect_id, d.data.len());
                }
            })
            .take_until(abort.cancelled_owned());
        Ok(grpc_method::response(MetadataMap::new(), body))
    }
}

/// Reads one frontend stream until it ends, then cleans up what it left on the agents.
async fn serve(
    shared: Arc<Shared>,
    id: FrontendId,
    sink: FrontendSink,
    mut inbound: PacketStream<Body>,
    mut tunnels: TunnelsRx,
) {
    let mut quic = QuicConns::new();
    loop {
        let msg = tokio::select! {
            // Tunnels first: one always arrives before its DIAL_RSP, hence before the
            // frontend's first DATA for it.
            biased;
            _ = sink.abort_token().cancelled() => break,
            Some(tunnel) = tunnels.recv() => {
                start_pump(&shared, &sink, &mut quic, tunnel);
                continue;
            }
            m = inbound.next() => m,
        };
        let packet = match msg {
            Some(Ok(p)) => p,
            None => {
                debug!(frontend = id, "frontend closed its stream");
                break;
            }
            Some(Err(status)) => {
                // kube-apiserver drops the whole connection once it has its CLOSE_RSP, so a reset
                // stream is the normal end of a tunnel, not a warning.
                debug!(frontend = id, code = ?status.code(), message = status.message(), "frontend stream ended with an error; closing it");
                break;
            }
        };
        shared.metrics.stream_packet_from_client(&packet);
        while let Some(tunnel) = tunnels.try_recv() {
            start_pump(&shared, &sink, &mut quic, tunnel);
        }
        handle(&shared, id, &sink, &mut quic, packet).await;
    }
    // Dropping the pumps' inputs ends them (their streams are reset).
    drop(quic);
    shared.remove_frontend(id);
    shared.metrics.grpc_connection_closed(ServiceMethod::Proxy);
}

/// Starts the pump of a QUIC connection this frontend dialled.
fn start_pump(shared: &Arc<Shared>, sink: &FrontendSink, quic: &mut QuicConns, tunnel: QuicTunnel) {
    let (tx, rx) = mpsc::channel(PUMP_INPUT_PACKETS);
    quic.insert(tunnel.connect_id, tx);
    tokio::spawn(packet_pump(Arc::clone(shared), sink.clone(), tunnel, rx));
}

async fn handle(
    shared: &Arc<Shared>,
    id: FrontendId,
    sink: &FrontendSink,
    quic: &mut QuicConns,
    packet: Packet,
) {
    let kind = packet.kind();
    match (kind, packet.payload) {
        (Some(T::DialReq), Some(P::DialRequest(req))) => {
            if let Err(refusal) = shared.dial(id, &req).await {
                debug!(frontend = id, random = req.random, %refusal, "dial refused");
                shared.deliver(
                    sink,
                    Packet::dial_response(req.random, 0, refusal.to_string()),
                );
            }
        }
        (Some(T::Data), Some(P::Data(d))) => {
            if d.connect_id == 0 {
                return;
            }
            if let Some(pump) = quic.get(&d.connect_id) {
                // Waits while the connection's stream is flow-controlled: only this frontend
                // pauses. A pump that ended has already sent its CLOSE_RSP.
                if pump.send(PumpInput::Data(d.data)).await.is_err() {
                    quic.remove(&d.connect_id);
                }
                return;
            }
            if let Err(why) = shared.data_to_agent(id, d.connect_id, d.data).await {
                shared.deliver(sink, Packet::close_response(d.connect_id, why));
            }
        }
        (Some(T::CloseReq), Some(P::CloseRequest(c))) => {
            if let Some(pump) = quic.remove(&c.connect_id) {
                // The pump answers CLOSE_RSP; if it already ended it has sent one.
                let _ = pump.send(PumpInput::Close).await;
                return;
            }
            if let Err(why) = shared.close_to_agent(id, c.connect_id).await {
                shared.deliver(sink, Packet::close_response(c.connect_id, why));
            }
        }
        (Some(T::DialCls), Some(P::CloseDial(c))) => shared.cancel_dial(id, c.random).await,
        (Some(T::Drain), _) => debug!(frontend = id, "DRAIN from a frontend ignored"),
        (kind, payload) => warn!(
            frontend = id,
            packet_type = ?kind,
            has_payload = payload.is_some(),
            "unexpected or malformed packet from frontend; ignored"
        ),
    }
}
