//! `/portForward/{ns}/{pod}[/{uid}]`: WebSocket port-forward with v4 channel framing to real
//! TCP ports at `--pod-address`.
//!
//! Port *i* of the `port` query uses channel `2i` for data (both ways) and `2i+1` for errors
//! (server → client); the first message on every channel is the port as two little-endian
//! bytes. Each port gets exactly one TCP connection; when every port's pod side has ended the
//! server closes the socket. There is no half-close in v4.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info};

use super::exec::{CLOSE_TIMEOUT, READ_CHUNK, STDIN_QUEUE};
use super::ws::{self, AbortOnDrop, ServerWs};
use super::{query_values, text, Activity, Body, Query, State};
use crate::protocol::{
    decode_frame, encode_frame, port_data_channel, port_error_channel, port_prefix_frame,
    PORT_FORWARD_PROTOCOL, V4_CHANNEL_PROTOCOL,
};
use crate::request::parse_ports;

/// How long connecting to a pod port may take before the error channel reports it. Cost: a
/// port that is slower to accept than this cannot be forwarded; a refused port fails at once.
pub const POD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Port-forward accepts these subprotocols (or none), in the client's order of preference.
const PORT_FORWARD_PROTOCOLS: [&str; 2] = [V4_CHANNEL_PROTOCOL, PORT_FORWARD_PROTOCOL];

/// Handles the upgrade request; the session runs in its own task.
pub(crate) fn handle(
    state: &Arc<State>,
    req: Request<Incoming>,
    namespace: &str,
    pod: &str,
    uid: &str,
    query: &Query,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let ports = match parse_ports(query_values(query, "port")) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e),
    };
    let key = match ws::check_upgrade(&req) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    let offered = ws::offered_protocols(req.headers());
    let chosen = match ws::negotiate(&offered, &PORT_FORWARD_PROTOCOLS, true) {
        Ok(c) => c,
        Err(e) => return text(StatusCode::FORBIDDEN, &e),
    };
    let permit = match ws::session_permit(state) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    info!(%peer, pod = %format!("{namespace}/{pod}"), ?ports, "port-forward");
    let session_state = state.clone();
    let pod = pod.to_string();
    let uid = uid.to_string();
    ws::upgrade(state, req, &key, chosen, permit, move |ws| {
        session(session_state, ws, ports, pod, uid)
    })
}

async fn session(state: Arc<State>, ws: ServerWs, ports: Vec<u16>, pod: String, uid: String) {
    let _active = state.stats.track(Activity::PortForward);
    let (sink, mut source) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(ws::OUTPUT_QUEUE);
    let mut writer = AbortOnDrop(tokio::spawn(ws::write_loop(sink, out_rx)));
    // Every channel announces its port before any data flows.
    for (i, port) in ports.iter().enumerate() {
        for channel in [port_data_channel(i), port_error_channel(i)]
            .into_iter()
            .flatten()
        {
            if out_tx
                .send(Message::Binary(port_prefix_frame(channel, *port)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let mut to_ports = Vec::with_capacity(ports.len());
    let mut forwards = Vec::with_capacity(ports.len());
    for (i, port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Bytes>(STDIN_QUEUE);
        to_ports.push(Some(tx));
        let target = Target {
            index: i,
            port: *port,
            host: state.pod_address.clone(),
            pod: pod.clone(),
            uid: uid.clone(),
        };
        forwards.push(AbortOnDrop(tokio::spawn(forward_port(
            target,
            rx,
            out_tx.clone(),
        ))));
    }
    // From here only the forwards hold the queue: when all are done the writer closes.
    drop(out_tx);
    let mut reader = AbortOnDrop(tokio::spawn(async move {
        while let Some(msg) = source.next().await {
            let data = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => continue,
            };
            let Ok((channel, payload)) = decode_frame(&data) else {
                continue;
            };
            // Clients may only write on data channels; error channels and unknown ones are ignored.
            if channel % 2 != 0 || payload.is_empty() {
                continue;
            }
            let index = usize::from(channel / 2);
            if let Some(slot) = to_ports.get_mut(index) {
                if let Some(tx) = slot {
                    if tx.send(data.slice(1..)).await.is_err() {
                        *slot = None;
                    }
                }
            }
        }
    }));
    tokio::select! {
        _ = &mut writer => {
            // All ports finished (or the client stopped reading): let the close handshake end.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut reader).await;
        }
        _ = &mut reader => debug!("port-forward client left"),
        _ = state.shutdown.cancelled() => {}
    }
    drop(forwards);
    info!(pod = %pod, ?ports, "port-forward finished");
}

/// One forwarded port.
struct Target {
    index: usize,
    port: u16,
    host: String,
    pod: String,
    uid: String,
}

impl Target {
    /// The CRI server's wording for a failure on this port.
    fn error_text(&self, err: &str) -> String {
        format!(
            "error forwarding port {} to pod {}, uid {}: {err}",
            self.port, self.pod, self.uid
        )
    }
}

/// Connects to the pod port and copies both ways until the pod side ends; failures go to the
/// port's error channel.
async fn forward_port(
    target: Target,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Message>,
) {
    let (Some(data_channel), Some(error_channel)) = (
        port_data_channel(target.index),
        port_error_channel(target.index),
    ) else {
        return;
    };
    let report = |msg: String| {
        let out = out.clone();
        async move {
            let _ = out
                .send(Message::Binary(encode_frame(error_channel, msg.as_bytes())))
                .await;
        }
    };
    let addr = format!("{}:{}", target.host, target.port);
    let tcp = match tokio::time::timeout(
        POD_CONNECT_TIMEOUT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            info!(%addr, "port-forward connect failed: {e}");
            report(target.error_text(&format!("dial tcp {addr}: {e}"))).await;
            return;
        }
        Err(_) => {
            report(target.error_text(&format!(
                "dial tcp {addr}: i/o timeout after {POD_CONNECT_TIMEOUT:?}"
            )))
            .await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tcp.into_split();
    let _client_to_pod = AbortOnDrop(tokio::spawn(async move {
        while let Some(data) = from_client.recv().await {
            if to_pod.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to_pod.shutdown().await;
    }));
    let mut buf = BytesMut::zeroed(READ_CHUNK);
    loop {
        match from_pod.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if out
                    .send(Message::Binary(encode_frame(data_channel, &buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                report(target.error_text(&format!("read tcp {addr}: {e}"))).await;
                return;
            }
        }
    }
}
