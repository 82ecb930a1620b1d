//! The destinations the tunnels lead to: an in-bench service (upload sink, download source,
//! echo) on its own Tokio runtime, and a separate "holder" process that accepts and holds the
//! idle tunnels' sockets.
//!
//! Every connection to the [`Destination`] starts with a [`Request`] header naming the
//! operation, the pattern seed and the byte count. Because gRPC tunnels have no half-close
//! (closing sends `CLOSE_REQ`), the length travels up front and the upload sink answers with
//! a [`Reply`] once it has verified every byte, instead of waiting for end-of-stream.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use crate::error::{BenchError, Result};
use crate::pattern::{Pattern, Verifier, PAGE};

/// Identifies the bench protocol at the start of every request.
pub const MAGIC: [u8; 4] = *b"KBv1";
/// Encoded length of a [`Request`].
pub const REQUEST_LEN: usize = 24;
/// Encoded length of a [`Reply`].
pub const REPLY_LEN: usize = 16;
/// Bytes per read/write in transfers. 256 KiB (a multiple of [`PAGE`]): few syscalls per
/// MiB; the cost is 256 KiB of buffer per active transfer on each side.
pub const IO_CHUNK: usize = 4 * PAGE;
/// Worker threads of the destination's runtime. Two, one per core of the reference machine:
/// the destination must not be the bottleneck of 64 parallel streams; it competes with the
/// server and agent for CPU exactly as a real node-side endpoint would.
pub const DESTINATION_WORKERS: usize = 2;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again; short
/// so the holder recovers quickly, long enough not to spin.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// How long the bench waits for the holder process to report its addresses.
pub const HOLDER_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer of one held connection's echo loop: idle tunnels exchange one byte, so 16 bytes
/// keep 100,000 held sockets at a few MiB in the holder.
const HOLD_ECHO_BUF: usize = 16;

/// What the destination does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read `len` pattern bytes, verify them, answer with a [`Reply`].
    Upload = 1,
    /// Write `len` pattern bytes, then wait for the client to close.
    Download = 2,
    /// Echo every byte until the client closes.
    Echo = 3,
}

/// The header that opens every connection to the [`Destination`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Operation.
    pub op: Op,
    /// Pattern seed for uploads and downloads.
    pub seed: u64,
    /// Byte count for uploads and downloads.
    pub len: u64,
}

impl Request {
    /// Wire form: magic, op, 3 zero bytes, seed (LE), len (LE).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = self.op as u8;
        b[8..16].copy_from_slice(&self.seed.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses [`Request::encode`]'s output.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request> {
        if b[..4] != MAGIC {
            return Err(BenchError::Protocol(format!(
                "request does not start with {MAGIC:?}: {:?}",
                &b[..4]
            )));
        }
        let op = match b[4] {
            1 => Op::Upload,
            2 => Op::Download,
            3 => Op::Echo,
            other => return Err(BenchError::Protocol(format!("unknown operation {other}"))),
        };
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&b[8..16]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[16..24]);
        Ok(Request {
            op,
            seed: u64::from_le_bytes(seed),
            len: u64::from_le_bytes(len),
        })
    }
}

/// The upload sink's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Every byte arrived and matched; the count verified.
    Verified(u64),
    /// The byte at this offset did not match.
    Corrupt(u64),
}

impl Reply {
    /// Wire form: status (0 verified, 1 corrupt) and value, both LE u64.
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let (status, value) = match *self {
            Reply::Verified(n) => (0u64, n),
            Reply::Corrupt(off) => (1u64, off),
        };
        let mut b = [0u8; REPLY_LEN];
        b[..8].copy_from_slice(&status.to_le_bytes());
        b[8..].copy_from_slice(&value.to_le_bytes());
        b
    }

    /// Parses [`Reply::encode`]'s output.
    pub fn decode(b: &[u8; REPLY_LEN]) -> Result<Reply> {
        let mut status = [0u8; 8];
        status.copy_from_slice(&b[..8]);
        let mut value = [0u8; 8];
        value.copy_from_slice(&b[8..]);
        let value = u64::from_le_bytes(value);
        match u64::from_le_bytes(status) {
            0 => Ok(Reply::Verified(value)),
            1 => Ok(Reply::Corrupt(value)),
            s => Err(BenchError::Protocol(format!(
                "unknown upload reply status {s}"
            ))),
        }
    }
}

/// The in-bench destination service, on its own runtime so that it does not share worker
/// threads with the measuring client.
pub struct Destination {
    addr: SocketAddr,
    runtime: Option<Runtime>,
}

impl Destination {
    /// Starts the service on an ephemeral loopback port.
    pub fn start() -> Result<Destination> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(DESTINATION_WORKERS)
            .thread_name("bench-destination")
            .enable_all()
            .build()
            .map_err(|e| BenchError::io("starting the destination runtime", e))?;
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| BenchError::io("binding the destination listener", e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| BenchError::io("configuring the destination listener", e))?;
        let addr = std_listener
            .local_addr()
            .map_err(|e| BenchError::io("reading the destination address", e))?;
        let listener = {
            let _in_runtime = runtime.enter();
            TcpListener::from_std(std_listener)
                .map_err(|e| BenchError::io("registering the destination listener", e))?
        };
        runtime.spawn(accept_loop(listener));
        Ok(Destination {
            addr,
            runtime: Some(runtime),
        })
    }

    /// Where to dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's context panics; this never blocks.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let _ = sock.set_nodelay(true);
                tokio::spawn(async move {
                    // A failing connection only ends itself; the client reports the failure.
                    let _ = serve(sock).await;
                });
            }
            Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
        }
    }
}

async fn serve(mut sock: TcpStream) -> std::io::Result<()> {
    let mut head = [0u8; REQUEST_LEN];
    sock.read_exact(&mut head).await?;
    let Ok(req) = Request::decode(&head) else {
        return Ok(());
    };
    match req.op {
        Op::Upload => {
            let mut verifier = Verifier::new(Pattern::new(req.seed));
            let mut buf = vec![0u8; IO_CHUNK];
            let mut left = req.len;
            // The first corruption is remembered and the rest of the upload still read, so
            // the client finishes writing and then reads the verdict (instead of seeing its
            // writes fail and not knowing why).
            let mut corrupt_at = None;
            while left > 0 {
                let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                let n = sock.read(&mut buf[..want]).await?;
                if n == 0 {
                    // Early end: no reply; the client sees the stream end and reports it.
                    return Ok(());
                }
                if corrupt_at.is_none() {
                    if let Err(BenchError::Corrupt { offset, .. }) = verifier.check(&buf[..n]) {
                        corrupt_at = Some(offset);
                    }
                }
                left -= n as u64;
            }
            let reply = match corrupt_at {
                Some(offset) => Reply::Corrupt(offset),
                None => Reply::Verified(verifier.verified()),
            };
            sock.write_all(&reply.encode()).await?;
            drain_until_eof(&mut sock).await
        }
        Op::Download => {
            let pattern = Pattern::new(req.seed);
            let mut buf = vec![0u8; IO_CHUNK];
            pattern.fill(0, &mut buf);
            let mut sent = 0u64;
            while sent < req.len {
                pattern.refill_headers(sent, &mut buf);
                let n = usize::try_from(req.len - sent).map_or(buf.len(), |l| l.min(buf.len()));
                sock.write_all(&buf[..n]).await?;
                sent += n as u64;
            }
            drain_until_eof(&mut sock).await
        }
        Op::Echo => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = sock.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                sock.write_all(&buf[..n]).await?;
            }
        }
    }
}

async fn drain_until_eof(sock: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    while sock.read(&mut buf).await? > 0 {}
    Ok(())
}

/// Line the holder prints on stdout once listening: `LISTENING a:p,b:q,…`.
pub const HOLDER_READY_PREFIX: &str = "LISTENING ";

/// Body of `konnectivity-bench hold-destination`: listens on `addrs` loopback addresses
/// (127.0.0.1, 127.0.0.2, … — each one multiplies the connections the kernel's ephemeral port
/// range allows from one source), echoes whatever arrives on each held socket, and exits when
/// its standard input closes (the bench ended or dropped it).
pub async fn run_holder(addrs: u8) -> Result<()> {
    let mut bound = Vec::new();
    for i in 1..=addrs.max(1) {
        let ip = Ipv4Addr::new(127, 0, 0, i);
        let l = TcpListener::bind((ip, 0))
            .await
            .map_err(|e| BenchError::io(format!("holder: binding {ip}:0"), e))?;
        let a = l
            .local_addr()
            .map_err(|e| BenchError::io("holder: reading its address", e))?;
        bound.push(a);
        tokio::spawn(hold_loop(l));
    }
    let line = bound
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut out = tokio::io::stdout();
    out.write_all(format!("{HOLDER_READY_PREFIX}{line}\n").as_bytes())
        .await
        .map_err(|e| BenchError::io("holder: writing its addresses", e))?;
    out.flush()
        .await
        .map_err(|e| BenchError::io("holder: writing its addresses", e))?;
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    Ok(())
}

async fn hold_loop(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((mut sock, _)) => {
                let _ = sock.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = [0u8; HOLD_ECHO_BUF];
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
        }
    }
}

/// The holder child process (killed when dropped).
pub struct Holder {
    child: tokio::process::Child,
    addrs: Vec<SocketAddr>,
}

impl Holder {
    /// Starts `exe hold-destination --addrs N` and waits for its addresses.
    pub async fn spawn(exe: &Path, addrs: u8) -> Result<Holder> {
        let mut child = tokio::process::Command::new(exe)
            .arg("hold-destination")
            .arg(format!("--addrs={addrs}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                BenchError::io(
                    format!("starting the destination holder {}", exe.display()),
                    e,
                )
            })?;
        let stdout = child.stdout.take().ok_or_else(|| {
            BenchError::Process("the holder's stdout was not captured".to_string())
        })?;
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let read = reader.read_line(&mut line);
        match tokio::time::timeout(HOLDER_STARTUP_TIMEOUT, read).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(BenchError::io("reading the holder's addresses", e)),
            Err(_) => {
                return Err(BenchError::timeout(
                    "the destination holder's start-up",
                    HOLDER_STARTUP_TIMEOUT,
                ))
            }
        }
        let list = line
            .trim_end()
            .strip_prefix(HOLDER_READY_PREFIX)
            .ok_or_else(|| {
                BenchError::Process(format!(
                    "the destination holder printed {line:?} instead of its addresses"
                ))
            })?;
        let addrs = list
            .split(',')
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|e| {
                    BenchError::Process(format!("holder address {a:?} is not host:port: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Holder { child, addrs })
    }

    /// The addresses it listens on.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_rejects_foreign_bytes() {
        let r = Request {
            op: Op::Download,
            seed: 0xDEAD_BEEF,
            len: 1 << 40,
        };
        assert_eq!(Request::decode(&r.encode()).expect("own encoding"), r);
        let mut bad = r.encode();
        bad[0] = b'X';
        assert!(Request::decode(&bad).is_err());
        let mut bad_op = r.encode();
        bad_op[4] = 9;
        assert!(Request::decode(&bad_op).is_err());
    }

    #[test]
    fn reply_round_trips() {
        for r in [Reply::Verified(123), Reply::Corrupt(7)] {
            assert_eq!(Reply::decode(&r.encode()).expect("own encoding"), r);
        }
        let mut bad = Reply::Verified(1).encode();
        bad[0] = 5;
        assert!(Reply::decode(&bad).is_err());
    }

    #[tokio::test]
    async fn upload_sink_reports_corruption_offset() {
        let dest = Destination::start().expect("destination");
        let mut s = TcpStream::connect(dest.addr()).await.expect("connect");
        let len = 3 * PAGE as u64;
        s.write_all(
            &Request {
                op: Op::Upload,
                seed: 5,
                len,
            }
            .encode(),
        )
        .await
        .expect("header");
        let mut data = vec![0u8; len as usize];
        Pattern::new(5).fill(0, &mut data);
        data[PAGE + 3] ^= 0xFF;
        s.write_all(&data).await.expect("data");
        let mut r = [0u8; REPLY_LEN];
        s.read_exact(&mut r).await.expect("reply");
        assert_eq!(
            Reply::decode(&r).expect("reply"),
            Reply::Corrupt(PAGE as u64 + 3)
        );
    }

    #[tokio::test]
    async fn download_source_sends_exactly_the_pattern() {
        let dest = Destination::start().expect("destination");
        let mut s = TcpStream::connect(dest.addr()).await.expect("connect");
        let len = 2 * IO_CHUNK as u64 + 77;
        s.write_all(
            &Request {
                op: Op::Download,
                seed: 8,
                len,
            }
            .encode(),
        )
        .await
        .expect("header");
        let mut got = vec![0u8; len as usize];
        s.read_exact(&mut got).await.expect("data");
        let mut v = Verifier::new(Pattern::new(8));
        v.check(&got).expect("pattern");
        // Nothing beyond `len`: the source waits for our close.
        let extra = tokio::time::timeout(Duration::from_millis(100), s.read(&mut [0u8; 1])).await;
        assert!(extra.is_err(), "source sent more than {len} bytes");
    }
}
