//! What both halves share about the QUIC transport between proxy-agent and proxy-server (an
//! extension of this implementation; upstream only speaks gRPC): the ALPN value, the error
//! codes, the framing of stream headers, the transport limits, and the raw byte pumps.
//!
//! The protocol, in short (see `proto/proto/quic.proto`):
//! * the agent connects (mutual TLS 1.3, ALPN [`ALPN`]) and opens the first bidirectional
//!   stream, the **control stream**: `AgentHello` → `ServerHello` (or a refusal, after which the
//!   server closes the connection with [`CONN_REFUSED`]), then `ControlMessage`s (DRAIN);
//! * every tunnelled connection is one bidirectional stream **opened by the server**: a framed
//!   `DialRequest`, answered by a framed `DialResponse`, then raw bytes both ways. FIN is a
//!   half-close; a reset or STOP_SENDING with one of the `STREAM_*` codes aborts.
//!
//! A frame is a 4-byte big-endian length and that many bytes of one protobuf message.
//! QUIC's own per-stream flow control is the back-pressure of every connection: a reader that
//! stops pauses only its own stream.

use std::io;
use std::time::Duration;

use prost::Message;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod udp;

/// ALPN protocol of the QUIC transport, required on both sides.
pub const ALPN: &[u8] = b"konnectivity-quic/1";

/// Connection closed normally (agent shutting down, server stopping, duplicate server).
pub const CONN_CLOSED: VarInt = VarInt::from_u32(0);
/// The server refused the agent (identity rules); the reason is in the `ServerHello` and in
/// the close reason.
pub const CONN_REFUSED: VarInt = VarInt::from_u32(0x10);
/// The peer broke the control-stream protocol (malformed or oversized frame, wrong ALPN).
pub const CONN_PROTOCOL_ERROR: VarInt = VarInt::from_u32(0x11);
/// The server retired this agent connection.
pub const CONN_RETIRED: VarInt = VarInt::from_u32(0x12);

/// Stream closed on request (gRPC CLOSE_REQ from a frontend, or a side that cannot half-close).
pub const STREAM_CLOSED: VarInt = VarInt::from_u32(0x1);
/// The server cancelled the dial before its answer (DIAL_CLS); the agent cancels its dial.
pub const STREAM_DIAL_CANCELLED: VarInt = VarInt::from_u32(0x2);
/// One side failed (socket error, frontend aborted): the connection is aborted.
pub const STREAM_ABORTED: VarInt = VarInt::from_u32(0x3);
/// The stream header was malformed or oversized: only this stream is closed.
pub const STREAM_BAD_HEADER: VarInt = VarInt::from_u32(0x4);

/// Largest control-stream frame (`AgentHello`, `ServerHello`, `ControlMessage`). Cost: this
/// much memory per connection while a frame is read; an agent's identifiers are far smaller.
pub const MAX_CONTROL_FRAME_BYTES: usize = 64 * 1024;
/// Largest stream-header frame (`DialRequest`, `DialResponse`). Cost: this much memory per
/// stream while its header is read; a `host:port` address and a Go error text are far smaller.
pub const MAX_HEADER_FRAME_BYTES: usize = 16 * 1024;

/// Concurrent bidirectional streams each side lets its peer open: the number of tunnels one
/// agent connection can carry at once (the target is 100,000). Cost: quinn keeps a
/// small state entry per open stream (a few hundred bytes) plus what its buffers hold.
pub const MAX_CONCURRENT_STREAMS: u32 = 100_000;
/// Unread bytes a peer may send on one stream before it must wait (QUIC stream flow control).
/// 2 MiB still carries > 1 GiB/s on one stream with the few hundred µs of credit latency seen
/// on loopback (and 2 MiB per round trip elsewhere: 400 MiB/s at 5 ms). It was 8 MiB: the
/// sender's and receiver's buffers then swung by more than glibc's 4 MiB trim threshold
/// (`konnectivity_runtime::allocator`), memory went back to the kernel and was faulted in
/// again, and connect-uds downloads ran at 604–962 MiB/s against 994–1,079 MiB/s with 2 MiB (four
/// alternating pairs; 1.20–1.32 s/GiB against 1.32–2.20). Cost: a stream whose reader stopped
/// holds up to this much memory; one stream's throughput is at most this much per round trip.
pub const STREAM_RECEIVE_WINDOW: u32 = 2 * 1024 * 1024;
/// Unread bytes a peer may send on the whole connection (QUIC connection flow control). Far
/// above one stream's window, so a few stalled streams cannot starve the others. Cost: at most
/// this much memory buffered per agent connection.
pub const RECEIVE_WINDOW: u32 = 256 * 1024 * 1024;
/// Bytes quinn keeps unacknowledged (sent or queued) across all streams of a connection.
/// Cost: at most this much memory of outgoing data per agent connection.
pub const SEND_WINDOW: u64 = 256 * 1024 * 1024;
/// A connection with no packet from its peer for this long is dead (the smaller of both sides'
/// values applies). Cost: a silently lost peer is noticed only after this long; its tunnels
/// and (agent side) its reconnection wait that long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest interval between keep-alive packets, whatever `--keepalive-time` says: keep-alives
/// must come well within [`IDLE_TIMEOUT`]. Cost: one small packet per interval per idle
/// connection.
pub const MAX_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Largest UDP payload path-MTU discovery ever probes for: just under loopback's 65,536-byte
/// MTU, and never more than the peer's [`udp::MAX_UDP_PAYLOAD_BYTES`]. Towards each peer the
/// bound is lowered to what the local route to it carries ([`udp::discovery_upper_bound`]),
/// so discovery searches only sizes that can leave this host: 1,200 to 1,452 bytes on
/// Ethernet, up to 8,953 with jumbo frames, up to this on loopback.
/// Cost: on a path narrower than its first hop, a few lost probes per discovery interval (10
/// minutes).
pub const MTU_DISCOVERY_UPPER_BOUND: u16 = 65_000;
/// Largest piece the QUIC → socket pump takes from quinn at once. Cost: none of its own (quinn
/// hands out the bytes it already holds, without a copy). The socket → QUIC direction reads
/// [`crate::chunk::DATA_CHUNK_BYTES`] at a time and holds no buffer while idle.
pub const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// The keep-alive interval for a configured `--keepalive-time` (zero means "default").
pub fn keep_alive_interval(keepalive_time: Duration) -> Duration {
    if keepalive_time.is_zero() {
        MAX_KEEPALIVE_INTERVAL
    } else {
        keepalive_time.min(MAX_KEEPALIVE_INTERVAL)
    }
}

/// The transport parameters both sides use towards `peer` (see the constants for what each
/// costs); only path-MTU discovery's upper bound depends on the peer.
pub fn transport_config(
    keepalive_time: Duration,
    peer: std::net::SocketAddr,
) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .keep_alive_interval(Some(keep_alive_interval(keepalive_time)));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(udp::discovery_upper_bound(peer));
    t.mtu_discovery_config(Some(mtu));
    // Invariant: IDLE_TIMEOUT (30 s) is far below QUIC's 2^62 ms limit, so the conversion
    // cannot fail; fall back to no change rather than panic all the same.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// The connectID the server uses for a tunnel stream: the QUIC stream id, unique and never
/// reused on its connection (server-opened bidirectional ids are 1, 5, 9, …, never 0).
pub fn stream_connect_id(id: quinn::StreamId) -> i64 {
    // Stream ids are below 2^62, so they always fit in an i64.
    i64::try_from(u64::from(id)).unwrap_or(i64::MAX)
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The announced length is above the limit for this kind of frame.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The announced (or encoded) length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not the expected protobuf message.
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The stream failed (reset, connection lost, local I/O error).
    #[error("stream failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads one frame; `Ok(None)` if the stream ended cleanly before its first byte.
pub async fn read_frame<M, R>(r: &mut R, max: usize) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(M::decode(&body[..])?))
}

/// Encodes one frame (length and message in one buffer, so it goes out in one write).
pub fn encode_frame<M: Message>(message: &M, max: usize) -> Result<Vec<u8>, FrameError> {
    let len = message.encoded_len();
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = Vec::with_capacity(4 + len);
    // `len <= max`, and every limit here is far below u32::MAX.
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    message
        .encode(&mut buf)
        .map_err(|_| FrameError::TooLarge { len, max })?;
    Ok(buf)
}

/// Writes one frame.
pub async fn write_frame<M, W>(w: &mut W, message: &M, max: usize) -> Result<(), FrameError>
where
    M: Message,
    W: AsyncWrite + Unpin,
{
    let buf = encode_frame(message, max)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Truncates `text` to at most `max` bytes on a character boundary (error texts in headers).
pub fn truncate_text(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// How a pump ended badly.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The peer reset its side of the stream (abort) or the connection was lost.
    #[error("QUIC stream failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The peer stopped our side of the stream, or the connection was lost.
    #[error("QUIC stream failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The local socket failed.
    #[error("socket failed: {0}")]
    Io(#[from] io::Error),
}

/// Copies the peer's bytes from `recv` into `w` until the peer finishes the stream, then shuts
/// down `w`'s write side (the half-close travels on). No copy: quinn's buffers are written out
/// directly. Returns the number of bytes copied.
pub async fn quic_to_io<W>(recv: &mut RecvStream, w: &mut W) -> Result<u64, PumpError>
where
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(COPY_CHUNK_BYTES, true).await? {
        w.write_all(&chunk.bytes).await?;
        // A TLS writer may keep records buffered after `write_all` returns; without a flush
        // the last bytes of a reply can sit there until the next write, which never comes.
        w.flush().await?;
        total += chunk.bytes.len() as u64;
    }
    w.shutdown().await?;
    Ok(total)
}

/// Copies `r` into `send` until `r` reaches end of file, then finishes the stream (FIN).
/// Each read goes straight into the chunk handed to quinn (no copy for large reads), and a
/// connection waiting for bytes holds no buffer (see [`crate::chunk::read_chunk`]).
pub async fn io_to_quic<R>(r: &mut R, send: &mut SendStream) -> Result<u64, PumpError>
where
    R: AsyncRead + Unpin,
{
    let mut total = 0u64;
    loop {
        let chunk = crate::chunk::read_chunk(r).await?;
        if chunk.is_empty() {
            // Already finished or reset (e.g. the peer stopped us meanwhile) is harmless here.
            let _ = send.finish();
            return Ok(total);
        }
        total += chunk.len() as u64;
        send.write_chunk(chunk).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use konnectivity_proto::{DialRequest, DialResponse};

    #[tokio::test]
    async fn frames_round_trip_and_clean_eof_is_none() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let req = DialRequest {
            protocol: "tcp".into(),
            address: "10.0.0.1:443".into(),
            random: 42,
        };
        write_frame(&mut a, &req, MAX_HEADER_FRAME_BYTES)
            .await
            .expect("write");
        drop(a);
        let got: Option<DialRequest> = read_frame(&mut b, MAX_HEADER_FRAME_BYTES)
            .await
            .expect("read");
        assert_eq!(got, Some(req));
        let end: Option<DialRequest> = read_frame(&mut b, MAX_HEADER_FRAME_BYTES)
            .await
            .expect("clean end");
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn oversized_truncated_and_garbage_frames_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&(1_000_000u32).to_be_bytes()).await.expect("w");
        let r: Result<Option<DialResponse>, _> = read_frame(&mut b, 100).await;
        assert!(matches!(
            r,
            Err(FrameError::TooLarge {
                len: 1_000_000,
                max: 100
            })
        ));

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0]).await.expect("w");
        drop(a);
        let r: Result<Option<DialResponse>, _> = read_frame(&mut b, 100).await;
        assert!(matches!(r, Err(FrameError::Truncated)));

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 10, 1]).await.expect("w");
        drop(a);
        let r: Result<Option<DialResponse>, _> = read_frame(&mut b, 100).await;
        assert!(matches!(r, Err(FrameError::Truncated)));

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 2, 0xff, 0xff]).await.expect("w");
        let r: Result<Option<DialResponse>, _> = read_frame(&mut b, 100).await;
        assert!(matches!(r, Err(FrameError::Decode(_))));
    }

    #[test]
    fn encoding_refuses_a_message_over_the_limit() {
        let rsp = DialResponse {
            error: "x".repeat(200),
            connect_id: 1,
            random: 1,
        };
        assert!(matches!(
            encode_frame(&rsp, 100),
            Err(FrameError::TooLarge { max: 100, .. })
        ));
        let ok = encode_frame(&rsp, 1000).expect("fits");
        assert_eq!(&ok[..4], &(ok.len() as u32 - 4).to_be_bytes());
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate_text("héllo", 2), "h");
        assert_eq!(truncate_text("héllo", 3), "hé");
        assert_eq!(truncate_text("abc", 10), "abc");
    }

    #[test]
    fn keep_alive_follows_the_flag_but_stays_within_the_idle_timeout() {
        assert_eq!(
            keep_alive_interval(Duration::from_secs(3600)),
            MAX_KEEPALIVE_INTERVAL
        );
        assert_eq!(
            keep_alive_interval(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(keep_alive_interval(Duration::ZERO), MAX_KEEPALIVE_INTERVAL);
        const { assert!(MAX_KEEPALIVE_INTERVAL.as_secs() * 2 < IDLE_TIMEOUT.as_secs()) };
    }
}
