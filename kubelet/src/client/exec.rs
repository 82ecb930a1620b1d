//! Exec over the WebSocket channel protocol, client side.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::{CancellationToken, DropGuard, PollSender};

use super::{
    millis_since, ws_connect, KubeletError, CLOSE_TIMEOUT, IDLE_TIMEOUT, MAX_WRITE_CHUNK,
    PING_INTERVAL,
};
use crate::protocol::{
    close_signal, decode_frame, decode_status, encode_frame, ChannelProtocol, ExitStatus,
    TerminalSize, ERROR_CHANNEL, RESIZE_CHANNEL, STDERR_CHANNEL, STDIN_CHANNEL, STDOUT_CHANNEL,
    V4_CHANNEL_PROTOCOL, V5_CHANNEL_PROTOCOL,
};
use crate::request::{attach_path, exec_path, ExecOptions};

/// Output chunks queued per stream before the session stops reading from the kubelet.
/// Cost: up to this many messages buffered per stream; then TCP pushes back on the kubelet.
pub const OUTPUT_QUEUE: usize = 16;
/// Stdin chunks queued before writes to [`ExecStdin`] wait. Cost: memory per session.
pub const STDIN_QUEUE: usize = 16;
/// Resize events queued before [`TerminalResizer::resize`] waits. Cost: negligible (four
/// small structs); a terminal emits resizes rarely, so waiting here means the session is stuck.
pub const RESIZE_QUEUE: usize = 4;

/// What the stdin writer asks the session to do.
#[derive(Debug)]
enum StdinCommand {
    Data(Bytes),
    Close,
}

/// A running remote command. Take the streams you need, run them concurrently, then await
/// [`status`](ExecSession::status). Dropping the session ends it (the kubelet kills nothing by
/// itself, but the stand-in does, and the tunnel is closed).
pub struct ExecSession {
    host: String,
    protocol: ChannelProtocol,
    stdin: Option<ExecStdin>,
    stdout: Option<ExecOutput>,
    stderr: Option<ExecOutput>,
    resizer: Option<TerminalResizer>,
    status: oneshot::Receiver<Result<ExitStatus, KubeletError>>,
    _cancel: DropGuard,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("host", &self.host)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl ExecSession {
    /// The negotiated subprotocol (`v5.channel.k8s.io` or `v4.channel.k8s.io`).
    pub fn protocol(&self) -> &'static str {
        self.protocol.name()
    }

    /// Whether stdin EOF can be signalled (v5 only); with v4, shutting down [`ExecStdin`]
    /// sends nothing and the remote process never sees EOF.
    pub fn can_close_stdin(&self) -> bool {
        self.protocol.supports_close_signal()
    }

    /// The stdin writer (when `ExecOptions::stdin`); `shutdown()` or dropping it closes the
    /// remote stdin on v5.
    pub fn take_stdin(&mut self) -> Option<ExecStdin> {
        self.stdin.take()
    }

    /// The remote stdout (with a tty: the terminal output). EOF when the command is done.
    pub fn take_stdout(&mut self) -> Option<ExecOutput> {
        self.stdout.take()
    }

    /// The remote stderr (absent with a tty).
    pub fn take_stderr(&mut self) -> Option<ExecOutput> {
        self.stderr.take()
    }

    /// A handle to send terminal sizes (when `ExecOptions::tty`).
    pub fn resizer(&self) -> Option<TerminalResizer> {
        self.resizer.clone()
    }

    /// Waits for the exit status from the error channel. Output readers reach EOF before this
    /// returns (read them concurrently: unread output holds the status back).
    pub async fn status(mut self) -> Result<ExitStatus, KubeletError> {
        // Streams nobody took are discarded (output) or closed (stdin), so they cannot hold
        // the status back.
        self.stdin = None;
        self.stdout = None;
        self.stderr = None;
        match (&mut self.status).await {
            Ok(result) => result,
            Err(_) => Err(KubeletError::Cancelled {
                host: self.host.clone(),
            }),
        }
    }
}

/// The remote process's stdin as an `AsyncWrite`.
pub struct ExecStdin {
    tx: PollSender<StdinCommand>,
    closed: bool,
}

impl std::fmt::Debug for ExecStdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecStdin")
            .field("closed", &self.closed)
            .finish()
    }
}

fn session_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the exec session with the kubelet has ended",
    )
}

impl AsyncWrite for ExecStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stdin was closed",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| session_gone())?;
        let n = buf.len().min(MAX_WRITE_CHUNK);
        self.tx
            .send_item(StdinCommand::Data(Bytes::copy_from_slice(&buf[..n])))
            .map_err(|_| session_gone())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| session_gone())?;
        self.tx
            .send_item(StdinCommand::Close)
            .map_err(|_| session_gone())?;
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

/// A remote output stream (stdout or stderr) as an `AsyncRead`; EOF when the command ends.
#[derive(Debug)]
pub struct ExecOutput {
    rx: mpsc::Receiver<Bytes>,
    pending: Bytes,
}

impl ExecOutput {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ExecOutput {
            rx,
            pending: Bytes::new(),
        }
    }
}

impl AsyncRead for ExecOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(chunk) => self.pending = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// Sends terminal sizes on the resize channel (JSON `{"Width":…,"Height":…}`).
#[derive(Debug, Clone)]
pub struct TerminalResizer {
    tx: mpsc::Sender<TerminalSize>,
}

impl TerminalResizer {
    /// Queues a resize; fails only when the session has ended.
    pub async fn resize(&self, width: u16, height: u16) -> Result<(), io::Error> {
        self.tx
            .send(TerminalSize { width, height })
            .await
            .map_err(|_| session_gone())
    }
}

/// Runs `command` in `container` of `namespace/pod` through the kubelet at `host` (the
/// `Host` header, `host:port`) over `stream` (already TLS-wrapped). Offers
/// `v5.channel.k8s.io` then `v4.channel.k8s.io`; output is always requested (stderr
/// separately unless `tty`).
pub async fn exec<S>(
    stream: S,
    host: &str,
    namespace: &str,
    pod: &str,
    container: &str,
    command: Vec<String>,
    opts: ExecOptions,
) -> Result<ExecSession, KubeletError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let path = exec_path(namespace, pod, container, &command, &opts)?;
    start(stream, host, &path, opts).await
}

/// Attaches to the main process of `container` (the stand-in's: the container's log
/// generator). Same protocols and session type as [`exec`].
pub async fn attach<S>(
    stream: S,
    host: &str,
    namespace: &str,
    pod: &str,
    container: &str,
    opts: ExecOptions,
) -> Result<ExecSession, KubeletError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let path = attach_path(namespace, pod, container, &opts)?;
    start(stream, host, &path, opts).await
}

/// Upgrades `path` and starts the session driver.
async fn start<S>(
    stream: S,
    host: &str,
    path: &str,
    opts: ExecOptions,
) -> Result<ExecSession, KubeletError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ws, chosen) = ws_connect(
        stream,
        host,
        path,
        &[V5_CHANNEL_PROTOCOL, V4_CHANNEL_PROTOCOL],
    )
    .await?;
    let protocol = match chosen.as_deref().and_then(ChannelProtocol::from_name) {
        Some(p @ (ChannelProtocol::V5 | ChannelProtocol::V4)) => p,
        _ => {
            return Err(KubeletError::Protocol {
                host: host.to_string(),
                protocol: V5_CHANNEL_PROTOCOL,
                detail: format!("the kubelet chose subprotocol {chosen:?}; we offered v5.channel.k8s.io and v4.channel.k8s.io"),
            })
        }
    };

    let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
    let (resize_tx, resize_rx) = mpsc::channel(RESIZE_QUEUE);
    let (stdout_tx, stdout_rx) = mpsc::channel(OUTPUT_QUEUE);
    let (stderr_tx, stderr_rx) = mpsc::channel(OUTPUT_QUEUE);
    let (status_tx, status_rx) = oneshot::channel();
    let cancel = CancellationToken::new();
    let driver = Driver {
        host: host.to_string(),
        protocol,
        stdin: opts.stdin.then_some(stdin_rx),
        resize: opts.tty.then_some(resize_rx),
        stdout: Some(stdout_tx),
        stderr: opts.stderr().then_some(stderr_tx),
        cancel: cancel.clone(),
    };
    tokio::spawn(driver.run(ws, status_tx));
    Ok(ExecSession {
        host: host.to_string(),
        protocol,
        stdin: opts.stdin.then(|| ExecStdin {
            tx: PollSender::new(stdin_tx),
            closed: false,
        }),
        stdout: Some(ExecOutput::new(stdout_rx)),
        stderr: opts.stderr().then(|| ExecOutput::new(stderr_rx)),
        resizer: opts.tty.then_some(TerminalResizer { tx: resize_tx }),
        status: status_rx,
        _cancel: cancel.drop_guard(),
    })
}

/// The task that owns the WebSocket of one exec session.
struct Driver {
    host: String,
    protocol: ChannelProtocol,
    stdin: Option<mpsc::Receiver<StdinCommand>>,
    resize: Option<mpsc::Receiver<TerminalSize>>,
    stdout: Option<mpsc::Sender<Bytes>>,
    stderr: Option<mpsc::Sender<Bytes>>,
    cancel: CancellationToken,
}

impl Driver {
    async fn run<S>(
        self,
        ws: WebSocketStream<S>,
        status_tx: oneshot::Sender<Result<ExitStatus, KubeletError>>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Driver {
            host,
            protocol,
            mut stdin,
            mut resize,
            stdout,
            stderr,
            cancel,
        } = self;
        let (mut sink, mut source) = ws.split();
        let origin = tokio::time::Instant::now();
        let last_seen = AtomicU64::new(0);

        // Reading and writing are separate futures, so a slow consumer of output never stops
        // stdin from flowing (and vice versa).
        let reader = async {
            let (mut stdout, mut stderr) = (stdout, stderr);
            let mut legacy_error = Vec::new();
            while let Some(msg) = source.next().await {
                last_seen.store(millis_since(origin), Ordering::Relaxed);
                let data = match msg {
                    Ok(Message::Binary(b)) => b,
                    Ok(Message::Text(_)) => {
                        return Err(KubeletError::Protocol {
                            host: host.clone(),
                            protocol: protocol.name(),
                            detail: "text message on a binary channel protocol".into(),
                        })
                    }
                    Ok(Message::Close(_)) => break,
                    Ok(_) => continue,
                    Err(e) => return Err(KubeletError::websocket(&host, "", e)),
                };
                let Ok((channel, payload)) = decode_frame(&data) else {
                    continue;
                };
                let target = match channel {
                    STDOUT_CHANNEL => &mut stdout,
                    STDERR_CHANNEL => &mut stderr,
                    ERROR_CHANNEL if protocol.has_json_status() => {
                        return decode_status(payload).map_err(|source| KubeletError::BadStatus {
                            host: host.clone(),
                            source,
                        });
                    }
                    ERROR_CHANNEL => {
                        legacy_error.extend_from_slice(payload);
                        continue;
                    }
                    _ => continue,
                };
                if payload.is_empty() {
                    continue;
                }
                if let Some(tx) = target {
                    // While our consumer is slow the socket is not read: not the kubelet's
                    // silence, so the idle clock is parked.
                    last_seen.store(u64::MAX, Ordering::Relaxed);
                    let sent = tx.send(data.slice(1..)).await;
                    last_seen.store(millis_since(origin), Ordering::Relaxed);
                    // A dropped reader means "discard this stream", not "stop the session".
                    if sent.is_err() {
                        *target = None;
                    }
                }
            }
            if protocol.has_json_status() {
                Err(KubeletError::NoStatus { host: host.clone() })
            } else if legacy_error.is_empty() {
                Ok(ExitStatus::Success)
            } else {
                Ok(ExitStatus::Failure {
                    reason: String::new(),
                    message: String::from_utf8_lossy(&legacy_error).into_owned(),
                })
            }
        };

        let writer = async {
            let mut ping = tokio::time::interval(PING_INTERVAL);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    cmd = async { stdin.as_mut()?.recv().await.or(Some(StdinCommand::Close)) }, if stdin.is_some() => {
                        match cmd {
                            Some(StdinCommand::Data(data)) => {
                                sink.send(Message::Binary(encode_frame(STDIN_CHANNEL, &data))).await
                                    .map_err(|e| KubeletError::websocket(&host, "", e))?;
                            }
                            _ => {
                                stdin = None;
                                if protocol.supports_close_signal() {
                                    sink.send(Message::Binary(close_signal(STDIN_CHANNEL))).await
                                        .map_err(|e| KubeletError::websocket(&host, "", e))?;
                                }
                            }
                        }
                    }
                    size = async { resize.as_mut()?.recv().await }, if resize.is_some() => {
                        match size {
                            Some(size) => {
                                let json = serde_json::to_vec(&size).unwrap_or_default();
                                sink.send(Message::Binary(encode_frame(RESIZE_CHANNEL, &json))).await
                                    .map_err(|e| KubeletError::websocket(&host, "", e))?;
                            }
                            None => resize = None,
                        }
                    }
                    _ = ping.tick() => {
                        let idle = millis_since(origin).saturating_sub(last_seen.load(Ordering::Relaxed));
                        if u128::from(idle) > IDLE_TIMEOUT.as_millis() {
                            return Err(KubeletError::Idle { host: host.clone(), idle: IDLE_TIMEOUT });
                        }
                        sink.send(Message::Ping(Bytes::new())).await
                            .map_err(|e| KubeletError::websocket(&host, "", e))?;
                    }
                }
            }
        };

        let result = tokio::select! {
            r = reader => r,
            r = writer => r,
            _ = cancel.cancelled() => Err(KubeletError::Cancelled { host: host.clone() }),
        };
        // The output senders lived in the reader and are gone: readers see EOF before the status.
        let _ = status_tx.send(result);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if sink.close().await.is_ok() {
                while let Some(Ok(_)) = source.next().await {}
            }
        })
        .await;
    }
}
