//! The QUIC agent listener (an extension: upstream only has gRPC). Agents connect over UDP to
//! the same `--agent-port` (and bind address) as the gRPC TCP listener, with the same
//! certificates and identity rules and ALPN [`quic::ALPN`]. A QUIC agent is a backend like a
//! gRPC one ([`BackendLink::Quic`]); every dial routed to it opens its own stream, so QUIC's
//! per-stream flow control keeps one slow connection from touching the others.
//!
//! Wire protocol: see `konnectivity_tunnel::quic`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use konnectivity_proto::quic::{AgentHello, ControlKind, ControlMessage, ServerHello};
use konnectivity_proto::{DialRequest, DialResponse, Packet};
use konnectivity_tunnel::quic::{self, read_frame, write_frame, FrameError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backends::BackendId;
use crate::config::ServerConfig;
use crate::state::{BackendHandle, BackendLink, FrontendSink, QuicTunnel, Shared};
use crate::ServerError;

/// Bound on a QUIC handshake. Cost: a peer that starts one and stalls holds a little state
/// this long (same bound as TLS over TCP).
pub const HANDSHAKE_TIMEOUT: Duration = konnectivity_tls::HANDSHAKE_TIMEOUT;

/// Bound on the agent opening its control stream and sending `AgentHello` after the
/// handshake. Cost: a connected peer that never says hello holds its connection this long.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refusal waits for the agent to acknowledge the `ServerHello` carrying the reason
/// before the connection is closed (the reason also travels in the close frame).
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Messages a gRPC frontend may queue toward one QUIC connection's writer before its reader
/// loop waits. Cost: this many DATA payloads (each up to one gRPC message) per connection.
pub const PUMP_INPUT_PACKETS: usize = 16;

/// Largest DATA payload sent to a gRPC frontend from a QUIC stream. Cost: one packet of this
/// size in flight per read.
pub const PACKET_CHUNK_BYTES: usize = 32 * 1024;

/// Smallest piece of a QUIC stream handed to a gRPC frontend as it is, without a copy. quinn's
/// pieces are slices of the datagram buffer they arrived in; a smaller piece is copied so a
/// queued DATA packet never keeps a much larger receive buffer alive (frontend queues count
/// payload bytes). In practice pieces this large exist only on paths with a packet size above
/// it (loopback's 64 KiB); on Ethernet and jumbo-frame paths every piece is copied, as before.
/// Cost: a shared piece keeps at most its datagram (≤ 64 KiB, so ≤ 4× its length) alive while
/// it waits in a frontend's queue.
pub const SHARE_PIECE_MIN_BYTES: usize = 16 * 1024;

/// The DATA payload for a piece read from a QUIC stream (see [`SHARE_PIECE_MIN_BYTES`]).
fn data_payload(piece: bytes::Bytes) -> bytes::Bytes {
    if piece.len() >= SHARE_PIECE_MIN_BYTES {
        piece
    } else {
        bytes::Bytes::copy_from_slice(&piece)
    }
}

/// The QUIC agent listener: its endpoint and what each agent connection is accepted with.
pub struct Listener {
    /// The UDP endpoint agents connect to.
    pub endpoint: quinn::Endpoint,
    /// TLS and the settings shared by every agent connection.
    agents: quinn::ServerConfig,
    /// `--keepalive-time`, for each connection's transport config.
    keepalive_time: Duration,
}

impl Listener {
    /// The config one agent's connection is accepted with: path-MTU discovery is bounded by
    /// the route back to that agent (see `konnectivity_tunnel::quic::udp`).
    fn config_for(&self, peer: SocketAddr) -> Arc<quinn::ServerConfig> {
        let mut config = self.agents.clone();
        config.transport_config(Arc::new(quic::transport_config(self.keepalive_time, peer)));
        Arc::new(config)
    }
}

/// Binds the QUIC endpoint on `addr` (UDP) with the agent listener's certificates.
pub fn bind(config: &ServerConfig, addr: SocketAddr) -> Result<Listener, ServerError> {
    let b = &config.backend;
    let tls = konnectivity_tls::server_config(
        &b.cert,
        &b.key,
        b.client_ca.as_deref(),
        &[quic::ALPN],
        &config.tls,
    )
    .map_err(|source| ServerError::Tls {
        what: "QUIC agent listener (--cluster-cert/--cluster-key/--cluster-ca-cert)",
        source: Box::new(source),
    })?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ServerError::Quic(e.to_string()))?;
    let agents = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let socket = quic::udp::bind(addr).map_err(|source| ServerError::Bind {
        what: "agents (QUIC over UDP; --enable-quic=false disables it)",
        addr: addr.to_string(),
        source,
    })?;
    let endpoint =
        quic::udp::endpoint(socket, Some(agents.clone())).map_err(|source| ServerError::Bind {
            what: "agents (QUIC over UDP)",
            addr: addr.to_string(),
            source,
        })?;
    Ok(Listener {
        endpoint,
        agents,
        keepalive_time: b.keepalive_time,
    })
}

/// Accepts agents until `shutdown`; then refuses new ones, and closes the endpoint when the
/// server stops hard (open agent connections end through their retire tokens).
pub fn spawn(shared: Arc<Shared>, listener: Listener, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let endpoint = &listener.endpoint;
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = endpoint.accept() => i,
            };
            let Some(incoming) = incoming else { break };
            let config = listener.config_for(incoming.remote_address());
            tokio::spawn(serve_agent(Arc::clone(&shared), incoming, config));
        }
        endpoint.set_server_config(None);
        debug!("QUIC agent listener stopped accepting");
        shared.hard_stop.cancelled().await;
        endpoint.close(quic::CONN_CLOSED, b"proxy-server stopping");
    });
}

/// Why an agent connection did not get registered.
#[derive(Debug, thiserror::Error)]
enum Setup {
    #[error("QUIC handshake failed: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    #[error("QUIC handshake did not complete within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("agent negotiated ALPN {0}, not konnectivity-quic/1")]
    Alpn(String),
    #[error("agent sent no hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
    #[error("agent closed the control stream before its hello")]
    NoHello,
    #[error("bad control stream: {0}")]
    Frame(#[from] FrameError),
}

async fn serve_agent(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    config: Arc<quinn::ServerConfig>,
) {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept_with(config) {
        Ok(connecting) => connecting,
        Err(e) => {
            info!(%peer, error = %Setup::Handshake(e), "QUIC agent connection refused");
            return;
        }
    };
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            info!(%peer, error = %Setup::Handshake(e), "QUIC agent connection refused");
            return;
        }
        Err(_) => {
            info!(%peer, error = %Setup::HandshakeTimeout, "QUIC agent connection refused");
            return;
        }
    };
    match hello(&conn).await {
        Ok((send, recv, hello)) => run_agent(shared, conn, peer, send, recv, hello).await,
        Err(e) => {
            info!(%peer, error = %e, "QUIC agent connection refused");
            conn.close(quic::CONN_PROTOCOL_ERROR, e.to_string().as_bytes());
        }
    }
}

/// Checks ALPN and reads the agent's hello from the control stream.
async fn hello(
    conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream, AgentHello), Setup> {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() != Some(quic::ALPN) {
        let got = alpn
            .map(|a| String::from_utf8_lossy(&a).into_owned())
            .unwrap_or_else(|| "none".into());
        return Err(Setup::Alpn(got));
    }
    let read = async {
        let (send, mut recv) = conn.accept_bi().await?;
        let hello: Option<AgentHello> =
            read_frame(&mut recv, quic::MAX_CONTROL_FRAME_BYTES).await?;
        Ok::<_, Setup>((send, recv, hello.ok_or(Setup::NoHello)?))
    };
    tokio::time::timeout(HELLO_TIMEOUT, read)
        .await
        .map_err(|_| Setup::HelloTimeout)?
}

/// Validates the agent, registers it as a backend and serves its control stream until the
/// connection ends; then deregisters it (failing its pending dials, closing its connections).
async fn run_agent(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    hello: AgentHello,
) {
    let ids = [hello.agent_id];
    let validated = crate::backend::validate_identity(&ids, &[hello.agent_identifiers.as_str()]);
    let (agent_id, identifiers) = match validated {
        Ok(v) => v,
        Err(reason) => {
            warn!(%peer, %reason, "refused QUIC agent");
            let refusal = ServerHello {
                error: reason.clone(),
                ..ServerHello::default()
            };
            if write_frame(&mut send, &refusal, quic::MAX_CONTROL_FRAME_BYTES)
                .await
                .is_ok()
            {
                let _ = send.finish();
                let _ = tokio::time::timeout(REFUSAL_LINGER, send.stopped()).await;
            }
            conn.close(
                quic::CONN_REFUSED,
                quic::truncate_text(&reason, quic::MAX_CONTROL_FRAME_BYTES).as_bytes(),
            );
            return;
        }
    };
    let retire = shared.hard_stop.child_token();
    let id = shared.add_backend(
        agent_id.clone(),
        identifiers.clone(),
        BackendHandle {
            link: BackendLink::Quic(conn.clone()),
            retire: retire.clone(),
            // QUIC streams have their own flow control.
            flow_control: false,
        },
    );
    info!(backend = %id, %agent_id, ?identifiers, %peer, "agent connected over QUIC");
    let welcome = ServerHello {
        server_id: shared.server_id.clone(),
        server_count: shared.server_count,
        error: String::new(),
    };
    if let Err(e) = write_frame(&mut send, &welcome, quic::MAX_CONTROL_FRAME_BYTES).await {
        warn!(backend = %id, error = %e, "cannot answer the QUIC agent's hello; dropping it");
        retire.cancel();
    }
    loop {
        tokio::select! {
            _ = retire.cancelled() => {
                conn.close(quic::CONN_RETIRED, b"agent connection retired");
                break;
            }
            e = conn.closed() => {
                info!(backend = %id, reason = %e, "QUIC agent connection closed");
                break;
            }
            m = read_frame::<ControlMessage, _>(&mut recv, quic::MAX_CONTROL_FRAME_BYTES) => match m {
                Ok(Some(ControlMessage { kind: Some(ControlKind::Drain(_)) })) => {
                    shared.metrics.stream_packet_from_agent(&Packet::drain());
                    shared.drain_backend(id);
                }
                Ok(Some(ControlMessage { kind: None })) => {
                    debug!(backend = %id, "unknown control message from QUIC agent; ignored");
                }
                Ok(None) => {
                    info!(backend = %id, "QUIC agent closed its control stream; dropping it");
                    conn.close(quic::CONN_CLOSED, b"control stream closed");
                    break;
                }
                Err(e) => {
                    warn!(backend = %id, error = %e, "bad control stream from QUIC agent; dropping it");
                    conn.close(quic::CONN_PROTOCOL_ERROR, e.to_string().as_bytes());
                    break;
                }
            },
        }
    }
    retire.cancel();
    shared.remove_backend(id);
}

/// Why a QUIC dial produced no usable answer.
#[derive(Debug, thiserror::Error)]
enum DialFailure {
    #[error("cannot open a stream to the agent: {0}")]
    Open(#[from] quinn::ConnectionError),
    #[error("agent dial stream failed: {0}")]
    Frame(#[from] FrameError),
    #[error("agent closed the dial stream without answering")]
    NoAnswer,
}

/// One dial on a QUIC agent: opens the stream, sends the `DialRequest` header, waits for the
/// `DialResponse`, then hands the stream to the frontend and queues its DIAL_RSP. `cancel`
/// (DIAL_CLS, dial timeout, frontend gone) resets the stream, which cancels the agent's dial.
pub(crate) async fn dial(
    shared: Arc<Shared>,
    backend: BackendId,
    conn: quinn::Connection,
    request: DialRequest,
    cancel: CancellationToken,
) {
    let random = request.random;
    let opened = tokio::select! {
        _ = cancel.cancelled() => None,
        s = conn.open_bi() => Some(s),
    };
    let answer = match opened {
        None => {
            shared.forget_quic_dial(random);
            return;
        }
        Some(Err(e)) => Err((DialFailure::Open(e), None)),
        Some(Ok((mut send, mut recv))) => {
            let asked = async {
                write_frame(&mut send, &request, quic::MAX_HEADER_FRAME_BYTES).await?;
                read_frame::<DialResponse, _>(&mut recv, quic::MAX_HEADER_FRAME_BYTES).await
            };
            let got = tokio::select! {
                _ = cancel.cancelled() => None,
                r = asked => Some(r),
            };
            match got {
                None => {
                    debug!(%backend, random, "QUIC dial cancelled; resetting its stream");
                    let _ = send.reset(quic::STREAM_DIAL_CANCELLED);
                    let _ = recv.stop(quic::STREAM_DIAL_CANCELLED);
                    shared.forget_quic_dial(random);
                    return;
                }
                Some(Ok(Some(rsp))) => Ok((rsp, send, recv)),
                Some(Ok(None)) => Err((DialFailure::NoAnswer, Some((send, recv)))),
                Some(Err(e)) => Err((DialFailure::Frame(e), Some((send, recv)))),
            }
        }
    };
    shared.forget_quic_dial(random);
    let (rsp, send, recv) = match answer {
        Ok(a) => a,
        Err((why, streams)) => {
            if let Some((mut send, mut recv)) = streams {
                let _ = send.reset(quic::STREAM_BAD_HEADER);
                let _ = recv.stop(quic::STREAM_BAD_HEADER);
            }
            // A lost connection fails every pending dial through the backend's removal; for
            // anything else, answer this dial here.
            if conn.close_reason().is_none() {
                warn!(%backend, random, error = %why, "QUIC dial failed");
                if let Some(sink) = shared.route_dial_response(backend, random, 0, true) {
                    shared.deliver(&sink, Packet::dial_response(random, 0, why.to_string()));
                }
            }
            return;
        }
    };
    let failed = !rsp.error.is_empty();
    let connect_id = if failed {
        0
    } else {
        quic::stream_connect_id(send.id())
    };
    let packet = Packet::dial_response(random, connect_id, rsp.error);
    shared.metrics.stream_packet_from_agent(&packet);
    let Some(sink) = shared.route_dial_response(backend, random, connect_id, failed) else {
        // Cancelled or timed out meanwhile: close what the agent opened.
        let (mut send, mut recv) = (send, recv);
        let _ = send.reset(quic::STREAM_CLOSED);
        let _ = recv.stop(quic::STREAM_CLOSED);
        return;
    };
    if !failed {
        debug!(%backend, random, connect_id, agent_connect_id = rsp.connect_id, "QUIC connection established");
        let tunnel = QuicTunnel {
            backend,
            connect_id,
            send,
            recv,
        };
        if let Err(mut t) = sink.attach(tunnel) {
            // The frontend is gone; its removal already forgot the connection.
            let _ = t.send.reset(quic::STREAM_ABORTED);
            let _ = t.recv.stop(quic::STREAM_ABORTED);
            shared.close_quic_connection(backend, connect_id);
            return;
        }
    }
    shared.deliver(&sink, packet);
}

/// What a gRPC frontend sends toward one QUIC connection.
#[derive(Debug)]
pub enum PumpInput {
    /// DATA bytes for the destination.
    Data(bytes::Bytes),
    /// CLOSE_REQ: close the connection.
    Close,
}

/// How a packet pump ended.
enum PumpEnd {
    AgentFinished,
    AgentFailed(String),
    CloseRequested,
    FrontendGone,
}

/// Serves one QUIC connection for a gRPC (packet) frontend: stream bytes become DATA (waiting
/// for room in the frontend's queue, which pauses only this stream), DATA from the frontend is
/// written to the stream. gRPC has no half-close, so the agent's FIN closes the connection
/// (CLOSE_RSP), as a gRPC agent does on its destination's EOF.
pub async fn packet_pump(
    shared: Arc<Shared>,
    sink: FrontendSink,
    tunnel: QuicTunnel,
    mut input: mpsc::Receiver<PumpInput>,
) {
    let QuicTunnel {
        backend,
        connect_id,
        mut send,
        mut recv,
    } = tunnel;
    let end = {
        let reader = async {
            loop {
                match recv.read_chunk(PACKET_CHUNK_BYTES, true).await {
                    Ok(Some(chunk)) => {
                        let packet = Packet::data(connect_id, data_payload(chunk.bytes));
                        shared.metrics.stream_packet_from_agent(&packet);
                        if sink.push(packet).await.is_err() {
                            return PumpEnd::FrontendGone;
                        }
                    }
                    Ok(None) => return PumpEnd::AgentFinished,
                    Err(e) => return PumpEnd::AgentFailed(e.to_string()),
                }
            }
        };
        let writer = async {
            while let Some(msg) = input.recv().await {
                match msg {
                    PumpInput::Data(data) => {
                        // Handed to quinn as is: no copy.
                        if let Err(e) = send.write_chunk(data).await {
                            return PumpEnd::AgentFailed(e.to_string());
                        }
                    }
                    PumpInput::Close => return PumpEnd::CloseRequested,
                }
            }
            PumpEnd::FrontendGone
        };
        tokio::select! {
            _ = sink.abort_token().cancelled() => PumpEnd::FrontendGone,
            e = reader => e,
            e = writer => e,
        }
    };
    let (code, error) = match &end {
        PumpEnd::AgentFinished | PumpEnd::CloseRequested => (quic::STREAM_CLOSED, String::new()),
        PumpEnd::AgentFailed(e) => (quic::STREAM_ABORTED, e.clone()),
        PumpEnd::FrontendGone => (quic::STREAM_ABORTED, String::new()),
    };
    let _ = send.reset(code);
    let _ = recv.stop(code);
    debug!(%backend, connect_id, error, "QUIC connection of a gRPC frontend ended");
    if let Some(sink) = shared.close_quic_connection(backend, connect_id) {
        if !matches!(end, PumpEnd::FrontendGone) {
            let packet = Packet::close_response(connect_id, error);
            tokio::select! {
                _ = sink.abort_token().cancelled() => {}
                _ = sink.push(packet) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_pieces_are_shared_and_small_ones_copied_out_of_their_datagram() {
        let datagram = bytes::Bytes::from(vec![7u8; 64 * 1024]);
        let large = datagram.slice(100..100 + SHARE_PIECE_MIN_BYTES);
        let shared = data_payload(large.clone());
        assert_eq!(shared.as_ptr(), large.as_ptr());
        assert_eq!(shared, large);
        let small = datagram.slice(100..100 + SHARE_PIECE_MIN_BYTES - 1);
        let copied = data_payload(small.clone());
        assert_ne!(copied.as_ptr(), small.as_ptr());
        assert_eq!(copied, small);
    }
}
