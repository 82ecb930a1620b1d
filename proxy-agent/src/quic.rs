//! The QUIC transport to a proxy-server (`--transport=quic`; an extension of this build).
//!
//! One QUIC connection per server, over UDP to the same host and port as gRPC, with the same
//! certificates (ALPN [`quic::ALPN`]). The agent opens the control stream and says hello
//! (agent id, identifiers, token); the server answers with its id and count, or a refusal.
//! Then the server opens one bidirectional stream per dial: the agent reads its `DialRequest`,
//! dials (same code, timeout and Go wording as for gRPC), answers with a `DialResponse`, and
//! copies raw bytes both ways with half-close. A slow destination pauses only its own stream
//! (QUIC flow control); a reset from the server (DIAL_CLS, close) cancels the dial or closes the
//! socket. DRAIN travels on the control stream.
//!
//! Wire protocol: see `konnectivity_tunnel::quic`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use konnectivity_proto::quic::{AgentHello, ControlKind, ControlMessage, ServerHello};
use konnectivity_proto::{DialRequest, DialResponse, Drain};
use konnectivity_tunnel::quic::{self, io_to_quic, quic_to_io, read_frame, write_frame};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfig;
use crate::connections::StartDialError;
use crate::dial;
use crate::metrics::{EndpointDialFailure, Metrics, Segment};
use crate::server::{
    ConnectError, ServerHello as Hello, SetupError, HEADERS_TIMEOUT, SERVER_CONNECT_TIMEOUT,
};
use crate::session::{EndpointGauge, SessionConfig, SessionEnd, MAX_PENDING_DIALS};

/// Bound on reading a stream's `DialRequest` once the stream is seen (the server sends it with
/// the stream's first bytes). Cost: a server that opens streams and sends nothing holds each
/// one this long.
pub const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closing a session waits for the close to reach the server. Cost: at most this much
/// extra time when a session ends.
pub const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Opens QUIC connections to the configured proxy-server.
#[derive(Clone)]
pub struct QuicConnector {
    client: quinn::ClientConfig,
    /// `--keepalive-time`, for each connection's transport config.
    keepalive_time: Duration,
    host: String,
    port: u16,
    address: String,
    agent_id: String,
    identifiers: String,
    token_path: Option<PathBuf>,
}

impl std::fmt::Debug for QuicConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicConnector")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// A QUIC connection whose hello exchange succeeded.
pub struct QuicLink {
    /// The server's id and count.
    pub hello: Hello,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    control: quinn::SendStream,
}

impl QuicLink {
    /// Closes the connection at once (a duplicate server, or shutdown).
    pub fn close(&self, reason: &str) {
        self.conn.close(quic::CONN_CLOSED, reason.as_bytes());
    }
}

impl QuicConnector {
    /// Loads TLS material (same files as gRPC, QUIC's own ALPN) and checks what will be sent.
    pub fn new(config: &AgentConfig) -> Result<Self, SetupError> {
        let server = &config.server;
        let client_cert = server
            .client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let tls = konnectivity_tls::client_config(
            &server.ca_cert,
            client_cert,
            &[quic::ALPN.to_vec()],
            &config.tls,
        )?;
        konnectivity_tls::server_name(&server.host)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| SetupError::QuicTls(e.to_string()))?;
        let client = quinn::ClientConfig::new(Arc::new(crypto));
        let host = server
            .host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&server.host)
            .to_string();
        let address = if host.contains(':') {
            format!("[{host}]:{}", server.port)
        } else {
            format!("{host}:{}", server.port)
        };
        Ok(QuicConnector {
            client,
            keepalive_time: server.keepalive_time,
            host,
            port: server.port,
            address,
            agent_id: config.identity.agent_id.clone(),
            identifiers: config.identity.identifiers.clone(),
            token_path: server.token_path.clone(),
        })
    }

    /// `host:port` of the proxy-server, for logs.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn failed(&self, reason: impl std::fmt::Display) -> ConnectError {
        ConnectError::Quic {
            address: self.address.clone(),
            reason: reason.to_string(),
        }
    }

    /// Opens a brand-new connection (its own UDP socket, so a load balancer may pick another
    /// server, as with a new TCP connection) and exchanges hellos.
    pub async fn connect(&self) -> Result<QuicLink, ConnectError> {
        let authorization = match &self.token_path {
            Some(path) => crate::server::read_token_text(path).await?,
            None => String::new(),
        };
        let target = self.resolve().await?;
        let local: SocketAddr = match target.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = quic::udp::bind(local).map_err(|e| self.failed(format!("UDP socket: {e}")))?;
        let endpoint = quic::udp::endpoint(socket, None)
            .map_err(|e| self.failed(format!("UDP endpoint: {e}")))?;
        // Path-MTU discovery is bounded by the route to this server (see quic::udp).
        let mut client = self.client.clone();
        client.transport_config(Arc::new(quic::transport_config(
            self.keepalive_time,
            target,
        )));
        let connecting = endpoint
            .connect_with(client, target, &self.host)
            .map_err(|e| self.failed(e))?;
        let conn = match tokio::time::timeout(SERVER_CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(self.failed(format!("handshake: {e}"))),
            Err(_) => {
                return Err(self.failed(format!(
                    "handshake did not complete within {SERVER_CONNECT_TIMEOUT:?}"
                )))
            }
        };
        let hello = AgentHello {
            agent_id: self.agent_id.clone(),
            agent_identifiers: self.identifiers.clone(),
            authorization,
        };
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| self.refusal(&conn, e))?;
            write_frame(&mut send, &hello, quic::MAX_CONTROL_FRAME_BYTES)
                .await
                .map_err(|e| self.control_failed(&conn, e))?;
            let answer: Option<ServerHello> = read_frame(&mut recv, quic::MAX_CONTROL_FRAME_BYTES)
                .await
                .map_err(|e| self.control_failed(&conn, e))?;
            Ok::<_, ConnectError>((send, answer))
        };
        let (control, answer) = match tokio::time::timeout(HEADERS_TIMEOUT, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                conn.close(quic::CONN_CLOSED, b"no server hello in time");
                return Err(ConnectError::HeadersTimeout {
                    address: self.address.clone(),
                    timeout: HEADERS_TIMEOUT,
                });
            }
        };
        let answer = match answer {
            Some(a) => a,
            None => return Err(self.control_failed(&conn, "server closed the control stream")),
        };
        if !answer.error.is_empty() {
            conn.close(quic::CONN_CLOSED, b"refused");
            return Err(ConnectError::QuicRefused {
                address: self.address.clone(),
                reason: answer.error,
            });
        }
        Ok(QuicLink {
            hello: Hello {
                server_id: answer.server_id,
                server_count: answer.server_count,
            },
            endpoint,
            conn,
            control,
        })
    }

    async fn resolve(&self) -> Result<SocketAddr, ConnectError> {
        let resolve_err = |reason: String| ConnectError::Resolve {
            address: self.address.clone(),
            reason,
        };
        let mut addrs = tokio::time::timeout(
            SERVER_CONNECT_TIMEOUT,
            tokio::net::lookup_host((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| resolve_err("timed out".into()))?
        .map_err(|e| resolve_err(e.to_string()))?;
        addrs
            .next()
            .ok_or_else(|| resolve_err("no addresses".into()))
    }

    /// The error for a control stream that failed: the server's refusal if it closed the
    /// connection with one.
    fn control_failed(&self, conn: &quinn::Connection, e: impl std::fmt::Display) -> ConnectError {
        match conn.close_reason() {
            Some(reason) => self.refusal(conn, reason),
            None => {
                conn.close(quic::CONN_PROTOCOL_ERROR, b"bad control stream");
                self.failed(format!("control stream: {e}"))
            }
        }
    }

    fn refusal(&self, _conn: &quinn::Connection, e: quinn::ConnectionError) -> ConnectError {
        match e {
            quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == quic::CONN_REFUSED =>
            {
                ConnectError::QuicRefused {
                    address: self.address.clone(),
                    reason: String::from_utf8_lossy(&close.reason).into_owned(),
                }
            }
            other => self.failed(other),
        }
    }
}

/// What every stream task of one session shares.
struct StreamContext {
    server_id: String,
    metrics: Metrics,
    config: SessionConfig,
    pending: Arc<Semaphore>,
    next_connect_id: AtomicI64,
}

/// Serves one QUIC server connection until the server ends it or `cancel` fires; the QUIC
/// counterpart of [`crate::session::run_session`].
pub async fn run_session(
    server_id: &str,
    link: QuicLink,
    config: SessionConfig,
    metrics: Metrics,
    drain: CancellationToken,
    cancel: CancellationToken,
) -> SessionEnd {
    let QuicLink {
        endpoint,
        conn,
        mut control,
        ..
    } = link;
    let ctx = Arc::new(StreamContext {
        server_id: server_id.to_string(),
        metrics,
        config,
        pending: Arc::new(Semaphore::new(MAX_PENDING_DIALS)),
        next_connect_id: AtomicI64::new(1),
    });
    let tasks = TaskTracker::new();
    // Not a child of `cancel`: the connection must close before the tasks unwind (below).
    let tasks_cancel = CancellationToken::new();
    let mut drain_sent = false;
    let end = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break SessionEnd::Cancelled,
            _ = drain.cancelled(), if !drain_sent => {
                drain_sent = true;
                let message = ControlMessage { kind: Some(ControlKind::Drain(Drain {})) };
                match write_frame(&mut control, &message, quic::MAX_CONTROL_FRAME_BYTES).await {
                    Ok(()) => {
                        ctx.metrics.stream_packet(Segment::FromAgent, "DRAIN");
                        tracing::info!(server_id, "sent DRAIN to proxy-server (QUIC)");
                    }
                    Err(e) => tracing::warn!(server_id, error = %e, "cannot send DRAIN to proxy-server"),
                }
            }
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    tasks.spawn(serve_stream(Arc::clone(&ctx), send, recv, tasks_cancel.clone()));
                }
                Err(e) => break session_end(e),
            },
        }
    };
    // Close the connection first: the server then sees every stream end with the connection
    // (pending dials fail as "backend gone"), not one by one as the tasks unwind.
    conn.close(quic::CONN_CLOSED, b"agent closing the connection");
    tasks_cancel.cancel();
    tasks.close();
    tasks.wait().await;
    // Let the close reach the server; bounded, the socket goes away with the endpoint.
    let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
    end
}

/// Classifies how the server connection ended.
fn session_end(e: quinn::ConnectionError) -> SessionEnd {
    match e {
        quinn::ConnectionError::ApplicationClosed(_) => SessionEnd::ServerClosed,
        quinn::ConnectionError::LocallyClosed => SessionEnd::Cancelled,
        other => SessionEnd::TransportError(other.to_string()),
    }
}

/// One tunnelled connection: header, dial, answer, then bytes both ways.
async fn serve_stream(
    ctx: Arc<StreamContext>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    cancel: CancellationToken,
) {
    let server_id = ctx.server_id.as_str();
    let header = tokio::time::timeout(
        STREAM_HEADER_TIMEOUT,
        read_frame::<DialRequest, _>(&mut recv, quic::MAX_HEADER_FRAME_BYTES),
    )
    .await;
    let request = match header {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::warn!(server_id, error = %e, "bad stream header from proxy-server; stream closed");
            let _ = send.reset(quic::STREAM_BAD_HEADER);
            let _ = recv.stop(quic::STREAM_BAD_HEADER);
            return;
        }
        Err(_) => {
            tracing::warn!(
                server_id,
                "no stream header from proxy-server in time; stream closed"
            );
            let _ = send.reset(quic::STREAM_BAD_HEADER);
            let _ = recv.stop(quic::STREAM_BAD_HEADER);
            return;
        }
    };
    ctx.metrics.stream_packet(Segment::ToAgent, "DIAL_REQ");
    let DialRequest {
        protocol,
        address,
        random,
    } = request;
    let Ok(permit) = Arc::clone(&ctx.pending).try_acquire_owned() else {
        let e = StartDialError::TooManyPending(MAX_PENDING_DIALS);
        tracing::warn!(server_id, random, %address, error = %e, "dial refused");
        ctx.metrics
            .endpoint_dial_failure(EndpointDialFailure::Unknown);
        answer(&ctx, &mut send, random, 0, &e.to_string()).await;
        let _ = send.finish();
        return;
    };
    tracing::debug!(server_id, random, %protocol, %address, "dialing endpoint (QUIC)");
    let started = Instant::now();
    // The server resets the stream (STOP_SENDING on our side) to cancel the dial (DIAL_CLS).
    let stopped = send.stopped();
    let dialed = tokio::select! {
        _ = cancel.cancelled() => None,
        _ = stopped => {
            tracing::debug!(server_id, random, "dial cancelled by proxy-server");
            None
        }
        r = dial::dial(&protocol, &address, ctx.config.dial_timeout) => Some(r),
    };
    drop(permit);
    let stream = match dialed {
        None => {
            let _ = send.reset(quic::STREAM_DIAL_CANCELLED);
            let _ = recv.stop(quic::STREAM_DIAL_CANCELLED);
            return;
        }
        Some(Err(e)) => {
            tracing::info!(server_id, random, %address, error = %e, "endpoint dial failed");
            ctx.metrics.endpoint_dial_failure(if e.is_timeout() {
                EndpointDialFailure::Timeout
            } else {
                EndpointDialFailure::Unknown
            });
            answer(&ctx, &mut send, random, 0, e.message()).await;
            let _ = send.finish();
            return;
        }
        Some(Ok(stream)) => stream,
    };
    let connect_id = ctx.next_connect_id.fetch_add(1, Ordering::Relaxed);
    ctx.metrics.observe_dial_duration(started.elapsed());
    if !answer(&ctx, &mut send, random, connect_id, "").await {
        return;
    }
    tracing::debug!(server_id, random, connect_id, %address, "endpoint connected (QUIC)");
    let _gauge = EndpointGauge::new(ctx.metrics.clone());
    let (mut rd, mut wr) = stream.into_split();
    let outcome = {
        let up = io_to_quic(&mut rd, &mut send);
        let down = quic_to_io(&mut recv, &mut wr);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            if up_done && down_done {
                break Ok(());
            }
            tokio::select! {
                _ = cancel.cancelled() => break Err("server connection ended".to_string()),
                r = &mut up, if !up_done => match r {
                    Ok(_) => up_done = true,
                    Err(e) => break Err(format!("destination to server: {e}")),
                },
                r = &mut down, if !down_done => match r {
                    Ok(_) => down_done = true,
                    Err(e) => break Err(format!("server to destination: {e}")),
                },
            }
        }
    };
    match outcome {
        Ok(()) => tracing::debug!(server_id, connect_id, "connection closed by both sides"),
        Err(why) => {
            tracing::debug!(server_id, connect_id, %why, "connection aborted");
            let _ = send.reset(quic::STREAM_ABORTED);
            let _ = recv.stop(quic::STREAM_ABORTED);
        }
    }
}

/// Writes the `DialResponse`; false if the stream is gone (the server cancelled meanwhile).
async fn answer(
    ctx: &StreamContext,
    send: &mut quinn::SendStream,
    random: i64,
    connect_id: i64,
    error: &str,
) -> bool {
    // Leave room for the other fields in the frame.
    let error = quic::truncate_text(error, quic::MAX_HEADER_FRAME_BYTES / 2).to_string();
    let rsp = DialResponse {
        error,
        connect_id,
        random,
    };
    match write_frame(send, &rsp, quic::MAX_HEADER_FRAME_BYTES).await {
        Ok(()) => {
            ctx.metrics.stream_packet(Segment::FromAgent, "DIAL_RSP");
            true
        }
        Err(e) => {
            tracing::debug!(server_id = ctx.server_id, random, error = %e, "cannot answer the dial; server gone or cancelled");
            false
        }
    }
}
