//! Plain TCP destinations: an echo server and a "blackhole" whose connects hang.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::error::{HarnessError, Result};

/// A listener on an ephemeral 127.0.0.1 port queuing up to `net.core.somaxconn` pending
/// connections, as a Go server (a kubelet) listens; tokio's 128 would drop the SYNs of a burst
/// of dials and make them wait a second for the retry.
fn listen_loopback() -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
    socket.listen(-1)?;
    TcpListener::from_std(socket.into())
}

/// A TCP echo server on 127.0.0.1; stops when dropped.
pub struct EchoServer {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl EchoServer {
    /// Starts echoing on an ephemeral loopback port.
    pub async fn start() -> Result<EchoServer> {
        let listener =
            listen_loopback().map_err(|e| HarnessError::io("binding the echo server", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading the echo server address", e))?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = token.cancelled() => return,
                    c = listener.accept() => c,
                };
                if let Ok((mut tcp, _)) = conn {
                    let token = token.clone();
                    tokio::spawn(async move {
                        let (mut r, mut w) = tcp.split();
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = tokio::io::copy(&mut r, &mut w) => {}
                        }
                    });
                }
            }
        });
        Ok(EchoServer { addr, stop })
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long one filler connect may take before the harness concludes the accept queue is
/// full (a SYN to a full queue is dropped, so the connect hangs).
pub const BLACKHOLE_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Most filler connections opened; Linux queues backlog+1 connections, so a handful suffice.
pub const BLACKHOLE_MAX_FILLERS: usize = 16;

/// A loopback listener with a full accept queue: it never accepts, and new connects to it
/// hang (until the dialer's own timeout) instead of being refused.
pub struct Blackhole {
    _listener: Socket,
    _fillers: Vec<TcpStream>,
    addr: SocketAddr,
}

impl Blackhole {
    /// Creates the listener (backlog 1) and fills its queue.
    pub async fn start() -> Result<Blackhole> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)
            .map_err(|e| HarnessError::io("creating the blackhole socket", e))?;
        let bind = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        socket
            .bind(&bind.into())
            .map_err(|e| HarnessError::io("binding the blackhole", e))?;
        socket
            .listen(1)
            .map_err(|e| HarnessError::io("listening on the blackhole", e))?;
        let addr = socket
            .local_addr()
            .map_err(|e| HarnessError::io("reading the blackhole address", e))?
            .as_socket()
            .ok_or_else(|| HarnessError::Protocol("blackhole address is not IP".into()))?;
        let mut fillers = Vec::new();
        for _ in 0..BLACKHOLE_MAX_FILLERS {
            match tokio::time::timeout(BLACKHOLE_PROBE_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => fillers.push(tcp),
                Ok(Err(e)) => {
                    return Err(HarnessError::io(format!("filling the blackhole {addr}"), e))
                }
                // The queue is full: this connect hung.
                Err(_) => {
                    return Ok(Blackhole {
                        _listener: socket,
                        _fillers: fillers,
                        addr,
                    })
                }
            }
        }
        Err(HarnessError::Protocol(format!(
            "the blackhole {addr} still accepted connections after {BLACKHOLE_MAX_FILLERS} fillers"
        )))
    }

    /// Its address: connects to it hang.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
