//! Listeners: TLS over TCP (handshakes off the accept loop, bounded in time) and Unix sockets.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use konnectivity_tls::ReadAhead;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Completed handshakes waiting for the server to pick them up. Cost: this many idle TLS
/// connections may be held before the accept loop waits for the server.
const ACCEPTED_BACKLOG: usize = 1024;

/// Pause after a failed `accept` (typically `EMFILE`: the process is out of descriptors, and
/// the pending connection stays queued, so retrying at once would spin a core). Cost: once a
/// descriptor frees, a waiting client may wait up to this long; at most 20 warnings a second.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Awaits one `accept`; on failure logs it (with what to do when descriptors ran out), pauses
/// [`ACCEPT_ERROR_PAUSE`] and returns `None` so the caller's loop tries again. An accept error
/// is about the listener's process, never about a peer, so no loop ends on one.
pub async fn accept_or_pause<T>(
    accept: impl Future<Output = io::Result<T>>,
    what: &str,
) -> Option<T> {
    match accept.await {
        Ok(accepted) => Some(accepted),
        Err(e) => {
            match accept_error_hint(&e) {
                Some(hint) => warn!(listener = what, error = %e, "accept failed: {hint}"),
                None => warn!(listener = what, error = %e, "accept failed"),
            }
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            None
        }
    }
}

/// What an operator can do about an accept error, when there is something.
fn accept_error_hint(e: &io::Error) -> Option<&'static str> {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    match e.raw_os_error() {
        Some(EMFILE) => Some(
            "this process is out of file descriptors (one per tunnel and per agent); raise its \
             hard open-file limit (ulimit -Hn, LimitNOFILE=, or the container runtime's nofile \
             ulimit): the binary raises its soft limit to the hard one at start",
        ),
        Some(ENFILE) => Some("the system is out of file descriptors (fs.file-max)"),
        _ => None,
    }
}

/// A Unix-socket listener as the stream of connections tonic serves, pausing after accept
/// errors (see [`accept_or_pause`]) where tonic's own loop would retry at once and only trace.
pub fn uds_incoming(
    listener: UnixListener,
    what: &'static str,
) -> impl futures::Stream<Item = io::Result<UnixStream>> {
    futures::stream::unfold(listener, move |listener| async move {
        loop {
            if let Some((stream, _)) = accept_or_pause(listener.accept(), what).await {
                return Some((Ok(stream), listener));
            }
        }
    })
}

/// A TLS connection ready for a tonic server.
#[derive(Debug)]
pub struct TlsConn {
    inner: TlsStream<ReadAhead<TcpStream>>,
    peer: Option<SocketAddr>,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.inner.get_ref().0.get_ref().local_addr().ok(),
            remote_addr: self.peer,
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections and handshakes each in its own task (bounded by the TLS crate's
/// handshake timeout), yielding only completed ones; a stalled or failed handshake never holds
/// up the others. Stops when `stop` is cancelled. `read_ahead` is the per-connection read
/// buffer beneath TLS ([`konnectivity_tls::READ_AHEAD_BYTES`] for agents, 0 for per-tunnel
/// frontend connections).
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    required_alpn: Option<&'static [u8]>,
    read_ahead: usize,
    what: &'static str,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                r = accept_or_pause(listener.accept(), what) => match r {
                    Some(x) => x,
                    None => continue,
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let io = konnectivity_tls::read_ahead(tcp, read_ahead);
                match konnectivity_tls::accept(&acceptor, io, required_alpn).await {
                    Ok(inner) => {
                        let _ = tx
                            .send(Ok(TlsConn {
                                inner,
                                peer: Some(peer),
                            }))
                            .await;
                    }
                    Err(e) => info!(listener = what, %peer, error = %e, "TLS handshake refused"),
                }
            });
        }
        debug!(listener = what, "listener stopped");
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Pending connections a TCP listener may queue before the kernel drops new SYNs: `-1` asks
/// for the system's maximum, `net.core.somaxconn` (4,096 by default since Linux 5.4), which is
/// what Go listens with, so upstream's listeners queue as much. tokio (like std) listens with
/// 128 on TCP: a burst of 2,000 connects to the mTLS frontend then overflowed the queue 2,052
/// times and the dropped SYNs were retried a second later (1–2 s dials). Cost: queued,
/// not-yet-accepted connections hold kernel memory only.
pub const LISTEN_BACKLOG: i32 = -1;

/// Binds a TCP listener as tokio would (address reuse, non-blocking, close-on-exec), with
/// [`LISTEN_BACKLOG`].
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Binds a Unix socket for the frontend: removes a stale socket file first if asked, and makes
/// the socket mode 0770 (owner and group only), as upstream does with umask 0007.
pub fn bind_uds(path: &Path, delete_existing: bool) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if delete_existing {
        match std::fs::remove_file(path) {
            Ok(()) => info!(path = %path.display(), "removed existing socket file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o770))?;
    Ok(listener)
}
