//! Port-forward of one port over the WebSocket v4 channel protocol, client side.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::{CancellationToken, DropGuard, PollSender};

use super::{
    millis_since, ws_connect, KubeletError, CLOSE_TIMEOUT, IDLE_TIMEOUT, MAX_WRITE_CHUNK,
    PING_INTERVAL,
};
use crate::protocol::{
    decode_frame, decode_port_prefix, encode_frame, PORT_FORWARD_PROTOCOL, V4_CHANNEL_PROTOCOL,
};
use crate::request::port_forward_path;

/// How long to wait for the kubelet's two port-prefix frames after the upgrade. Cost: a
/// kubelet slower than this to start the session is treated as broken.
pub const PREFIX_TIMEOUT: Duration = Duration::from_secs(30);
/// Data chunks queued towards the reader before the session stops reading the socket.
/// Cost: memory per forwarded connection.
pub const DATA_QUEUE: usize = 16;

/// The data channel and error channel of the only port of this session.
const DATA_CHANNEL: u8 = 0;
const ERROR_CHANNEL: u8 = 1;

/// One forwarded connection to `port` in the pod, as a byte stream. A kubelet error (e.g. the
/// port refused the connection) is returned by the next read as an `io::Error` whose inner
/// error is [`KubeletError::PortForward`]. v4 has no half-close: `shutdown()` only flushes,
/// and the connection ends when the pod side closes or this stream is dropped.
pub struct PortForwardStream {
    port: u16,
    rx: mpsc::Receiver<Result<Bytes, KubeletError>>,
    pending: Bytes,
    failed: Option<String>,
    tx: PollSender<Bytes>,
    _cancel: DropGuard,
}

impl std::fmt::Debug for PortForwardStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForwardStream")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl PortForwardStream {
    /// The remote port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the port-forward connection through the kubelet has ended",
    )
}

impl AsyncRead for PortForwardStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(msg) = &self.failed {
            return Poll::Ready(Err(io::Error::other(msg.clone())));
        }
        while self.pending.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(e)) => {
                    self.failed = Some(e.to_string());
                    return Poll::Ready(Err(io::Error::other(e)));
                }
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PortForwardStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(MAX_WRITE_CHUNK);
        self.tx
            .send_item(Bytes::copy_from_slice(&buf[..n]))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Forwards one connection to `port` of `namespace/pod` through the kubelet at `host`
/// (`Host` header, `host:port`) over `stream` (already TLS-wrapped). Returns once the kubelet
/// has accepted the upgrade and announced the port on both channels.
pub async fn port_forward<S>(
    stream: S,
    host: &str,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<PortForwardStream, KubeletError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let path = port_forward_path(namespace, pod, &[port])?;
    let (mut ws, chosen) = ws_connect(
        stream,
        host,
        &path,
        &[V4_CHANNEL_PROTOCOL, PORT_FORWARD_PROTOCOL],
    )
    .await?;
    let protocol_error = |detail: String| KubeletError::Protocol {
        host: host.to_string(),
        protocol: V4_CHANNEL_PROTOCOL,
        detail,
    };
    if !matches!(
        chosen.as_deref(),
        Some(V4_CHANNEL_PROTOCOL | PORT_FORWARD_PROTOCOL)
    ) {
        return Err(protocol_error(format!(
            "the kubelet chose subprotocol {chosen:?}; we offered {V4_CHANNEL_PROTOCOL} and {PORT_FORWARD_PROTOCOL}"
        )));
    }

    // Both channels start with the port; data may only follow its own channel's prefix.
    let mut early: Vec<Result<Bytes, KubeletError>> = Vec::new();
    let mut seen = [false, false];
    let prefixes = async {
        while !(seen[0] && seen[1]) {
            let data = match ws.next().await {
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Close(_))) | None => {
                    return Err(protocol_error(
                        "the kubelet closed the connection before announcing the port".into(),
                    ))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(KubeletError::websocket(host, &path, e)),
            };
            let (channel, payload) =
                decode_frame(&data).map_err(|e| protocol_error(e.to_string()))?;
            let index = match channel {
                DATA_CHANNEL | ERROR_CHANNEL => usize::from(channel),
                other => return Err(protocol_error(format!("frame on channel {other}, but only port {port} (channels 0 and 1) was requested"))),
            };
            if !seen[index] {
                let announced = decode_port_prefix(channel, payload)
                    .map_err(|e| protocol_error(e.to_string()))?;
                if announced != port {
                    return Err(protocol_error(format!(
                        "channel {channel} announced port {announced}, expected {port}"
                    )));
                }
                seen[index] = true;
            } else if channel == DATA_CHANNEL && !payload.is_empty() {
                early.push(Ok(data.slice(1..)));
            } else if channel == ERROR_CHANNEL && !payload.is_empty() {
                early.push(Err(KubeletError::PortForward {
                    host: host.to_string(),
                    port,
                    message: String::from_utf8_lossy(payload).into_owned(),
                }));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(PREFIX_TIMEOUT, prefixes).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(protocol_error(format!(
                "no port announcement within {PREFIX_TIMEOUT:?} after the upgrade"
            )))
        }
    }

    let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE.max(early.len() + 1));
    for item in early {
        // Capacity covers every early item.
        let _ = data_tx.try_send(item);
    }
    let (write_tx, write_rx) = mpsc::channel(DATA_QUEUE);
    let cancel = CancellationToken::new();
    tokio::spawn(drive(
        ws,
        host.to_string(),
        port,
        data_tx,
        write_rx,
        cancel.clone(),
    ));
    Ok(PortForwardStream {
        port,
        rx: data_rx,
        pending: Bytes::new(),
        failed: None,
        tx: PollSender::new(write_tx),
        _cancel: cancel.drop_guard(),
    })
}

/// Owns the WebSocket: frames from the kubelet to the reader, writes to the kubelet, pings.
async fn drive<S>(
    ws: WebSocketStream<S>,
    host: String,
    port: u16,
    data_tx: mpsc::Sender<Result<Bytes, KubeletError>>,
    mut write_rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let origin = tokio::time::Instant::now();
    let last_seen = AtomicU64::new(0);
    let reader = async {
        let data_tx = data_tx.clone();
        while let Some(msg) = source.next().await {
            last_seen.store(millis_since(origin), Ordering::Relaxed);
            let data = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) => return,
                Ok(_) => continue,
                Err(e) => {
                    let _ = data_tx
                        .send(Err(KubeletError::websocket(&host, "", e)))
                        .await;
                    return;
                }
            };
            let Ok((channel, payload)) = decode_frame(&data) else {
                continue;
            };
            if payload.is_empty() {
                continue;
            }
            if channel == DATA_CHANNEL {
                // A slow consumer is not the kubelet's silence: park the idle clock.
                last_seen.store(u64::MAX, Ordering::Relaxed);
                let sent = data_tx.send(Ok(data.slice(1..))).await;
                last_seen.store(millis_since(origin), Ordering::Relaxed);
                if sent.is_err() {
                    return;
                }
            } else if channel == ERROR_CHANNEL {
                let _ = data_tx
                    .send(Err(KubeletError::PortForward {
                        host: host.clone(),
                        port,
                        message: String::from_utf8_lossy(payload).into_owned(),
                    }))
                    .await;
                return;
            }
        }
    };
    let writer = async {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                data = write_rx.recv() => {
                    let Some(data) = data else {
                        // The stream was dropped; the cancel branch ends the session.
                        return std::future::pending::<()>().await;
                    };
                    if let Err(e) = sink.send(Message::Binary(encode_frame(DATA_CHANNEL, &data))).await {
                        let _ = data_tx.send(Err(KubeletError::websocket(&host, "", e))).await;
                        return;
                    }
                }
                _ = ping.tick() => {
                    let idle = millis_since(origin).saturating_sub(last_seen.load(Ordering::Relaxed));
                    if u128::from(idle) > IDLE_TIMEOUT.as_millis() {
                        let _ = data_tx.send(Err(KubeletError::Idle { host: host.clone(), idle: IDLE_TIMEOUT })).await;
                        return;
                    }
                    if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
        _ = cancel.cancelled() => {}
    }
    // The reader has EOF (or the error) once `data_tx` goes away.
    drop(data_tx);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if sink.close().await.is_ok() {
            while let Some(Ok(_)) = source.next().await {}
        }
    })
    .await;
}
