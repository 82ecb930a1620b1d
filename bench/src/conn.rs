//! The client side: one way to open a byte stream to a destination (directly or through the
//! proxy), and the verified operations run over it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use konnectivity_client::{Dialer, EgressStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{BenchError, Result};
use crate::pattern::{Pattern, Verifier};
use crate::sinks::{Op, Reply, Request, IO_CHUNK, REPLY_LEN};

/// How long closing a stream may wait for the far end to close too (gRPC: the `CLOSE_RSP`
/// round trip). Closing is never timed; this only bounds how long a misbehaving path can
/// delay the next step.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How the client reaches destinations on a path.
#[derive(Debug, Clone)]
pub enum Route {
    /// Plain TCP straight to the destination.
    Direct,
    /// A tunnel through the proxy-server.
    Proxy(Dialer),
}

impl Route {
    /// Opens a stream to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn> {
        match self {
            Route::Direct => {
                let s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| BenchError::io(format!("connecting to {addr}"), e))?;
                let _ = s.set_nodelay(true);
                Ok(Conn(EgressStream::Tcp(s)))
            }
            Route::Proxy(dialer) => Ok(Conn(EgressStream::Tunnel(
                dialer.dial(&addr.to_string()).await?,
            ))),
        }
    }
}

/// A stream to a destination: the client library's [`EgressStream`] (direct TCP or a proxy
/// tunnel), with the bench's verified operations on top.
#[derive(Debug)]
pub struct Conn(EgressStream);

impl Conn {
    /// Sends a request header.
    pub async fn request(&mut self, op: Op, seed: u64, len: u64) -> Result<()> {
        self.0
            .write_all(&Request { op, seed, len }.encode())
            .await
            .map_err(|e| BenchError::io("sending the request header", e))?;
        self.0
            .flush()
            .await
            .map_err(|e| BenchError::io("sending the request header", e))
    }

    /// Uploads `len` pattern bytes (seed `seed`) and waits for the sink's verdict; `Ok` only
    /// if the sink verified every byte.
    pub async fn upload(&mut self, seed: u64, len: u64) -> Result<()> {
        self.request(Op::Upload, seed, len).await?;
        let pattern = Pattern::new(seed);
        let mut buf = vec![0u8; IO_CHUNK];
        pattern.fill(0, &mut buf);
        let mut sent = 0u64;
        while sent < len {
            pattern.refill_headers(sent, &mut buf);
            let n = usize::try_from(len - sent).map_or(buf.len(), |l| l.min(buf.len()));
            self.0
                .write_all(&buf[..n])
                .await
                .map_err(|e| BenchError::io(format!("uploading after {sent} bytes"), e))?;
            sent += n as u64;
        }
        self.0
            .flush()
            .await
            .map_err(|e| BenchError::io("flushing the upload", e))?;
        let mut reply = [0u8; REPLY_LEN];
        self.0.read_exact(&mut reply).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                BenchError::Protocol(format!(
                    "the upload sink closed without a verdict after {len} bytes were sent: it received fewer"
                ))
            } else {
                BenchError::io("reading the upload verdict", e)
            }
        })?;
        match Reply::decode(&reply)? {
            Reply::Verified(n) if n == len => Ok(()),
            Reply::Verified(n) => Err(BenchError::CountMismatch {
                what: "upload".into(),
                expected: len,
                got: n,
            }),
            Reply::Corrupt(offset) => {
                let mut expected = [0u8; 1];
                pattern.fill(offset, &mut expected);
                Err(BenchError::Protocol(format!(
                    "the upload sink found corrupted data at byte {offset} (expected {:#04x})",
                    expected[0]
                )))
            }
        }
    }

    /// Reads and verifies `len` pattern bytes of a download already requested (seed `seed`).
    pub async fn receive_verified(&mut self, seed: u64, len: u64) -> Result<()> {
        let mut verifier = Verifier::new(Pattern::new(seed));
        let mut buf = vec![0u8; IO_CHUNK];
        while verifier.verified() < len {
            let left = len - verifier.verified();
            let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
            let n = self
                .0
                .read(&mut buf[..want])
                .await
                .map_err(|e| BenchError::io("reading the download", e))?;
            if n == 0 {
                return Err(BenchError::CountMismatch {
                    what: "download".into(),
                    expected: len,
                    got: verifier.verified(),
                });
            }
            verifier.check(&buf[..n])?;
        }
        Ok(())
    }

    /// Requests and receives a verified download of `len` bytes.
    pub async fn download(&mut self, seed: u64, len: u64) -> Result<()> {
        self.request(Op::Download, seed, len).await?;
        self.receive_verified(seed, len).await
    }

    /// One echo round trip of `msg` (the stream must be in echo mode); verifies the echo.
    pub async fn round_trip(&mut self, msg: &[u8], buf: &mut [u8]) -> Result<()> {
        self.0
            .write_all(msg)
            .await
            .map_err(|e| BenchError::io("sending a ping", e))?;
        // TLS streams may hold written bytes until flushed.
        self.0
            .flush()
            .await
            .map_err(|e| BenchError::io("sending a ping", e))?;
        let back = &mut buf[..msg.len()];
        self.0
            .read_exact(back)
            .await
            .map_err(|e| BenchError::io("reading a pong", e))?;
        if back != msg {
            return Err(BenchError::Protocol(
                "the echo differs from the message sent".to_string(),
            ));
        }
        Ok(())
    }

    /// Closes the stream and waits (at most [`CLOSE_WAIT`]) for the far end to close too, so
    /// the next measurement does not overlap this stream's teardown.
    pub async fn close(mut self) {
        let _ = self.0.shutdown().await;
        let mut buf = [0u8; 256];
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while matches!(self.0.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// The ping message of round trip `i`: `size` bytes that differ from one round trip to the
/// next, so a stale echo is caught.
pub fn ping_message(i: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::Destination;

    #[tokio::test]
    async fn direct_upload_download_and_echo_verify() {
        let dest = Destination::start().expect("destination");
        let route = Route::Direct;
        let mut c = route.connect(dest.addr()).await.expect("connect");
        c.upload(1, 1_000_000).await.expect("verified upload");
        c.close().await;
        let mut c = route.connect(dest.addr()).await.expect("connect");
        c.download(2, 1_000_003).await.expect("verified download");
        c.close().await;
        let mut c = route.connect(dest.addr()).await.expect("connect");
        c.request(Op::Echo, 0, 0).await.expect("header");
        let (mut msg, mut buf) = (Vec::new(), vec![0u8; 64]);
        for i in 0..10 {
            ping_message(i, 64, &mut msg);
            c.round_trip(&msg, &mut buf).await.expect("echo");
        }
        c.close().await;
    }

    #[tokio::test]
    async fn download_of_the_wrong_seed_is_reported_as_corruption() {
        let dest = Destination::start().expect("destination");
        let mut c = Route::Direct.connect(dest.addr()).await.expect("connect");
        c.request(Op::Download, 3, 4096).await.expect("header");
        let err = c.receive_verified(4, 4096).await.expect_err("wrong seed");
        assert!(matches!(err, BenchError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn ping_messages_differ_between_round_trips() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ping_message(1, 64, &mut a);
        ping_message(2, 64, &mut b);
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
