//! Reading a tunnelled connection's bytes into DATA payloads.
//!
//! Every byte read from a client or a destination leaves as the payload of one DATA packet, so
//! the read is where the payload's allocation happens. Two rules keep that cheap: reads are
//! large (per-packet costs, framing, TLS records, syscalls and segments, are paid per chunk),
//! and an idle connection holds no read buffer at all (so 100,000 idle tunnels cost only their
//! sockets and bookkeeping).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;

/// Largest DATA payload we produce. Upstream reads 32 KiB (server) and 4 KiB (agent); bigger
/// chunks cut the per-packet work (framing, TLS records, syscalls, wake-ups) on a bulk
/// transfer: 256 KiB measured ≈ 25 % less CPU per GiB than 64 KiB and 128 KiB (bench, A/B,
/// connect-uds bulk), and it matches the agent stream's HTTP/2 frame size, so a payload still
/// travels as one frame and is decoded without a copy. Cost: a reader allocates this much for
/// each read that finds bytes (returned at once when the read was small), a packet may carry
/// this much (upstream peers accept gRPC messages up to 4 MiB), and a small packet of another
/// connection may wait behind one such frame on the shared stream (≈ 0.5 ms at 500 MiB/s).
pub const DATA_CHUNK_BYTES: usize = 256 * 1024;

/// Reads whatever `rd` has (at most [`DATA_CHUNK_BYTES`]) into a payload of that size; an
/// empty payload means end of stream. The payload is allocated for each poll and freed again
/// when the reader has nothing, so a connection waiting here for its peer holds no buffer, and
/// a busy one reads straight into the payload it sends (no copy, unless [`fit`] trims it).
pub async fn read_chunk<R: AsyncRead + Unpin + ?Sized>(rd: &mut R) -> io::Result<Bytes> {
    poll_fn(|cx| {
        let mut payload = BytesMut::with_capacity(DATA_CHUNK_BYTES);
        match tokio_util::io::poll_read_buf(Pin::new(&mut *rd), cx, &mut payload) {
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(fit(payload))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Freezes a payload read into a [`DATA_CHUNK_BYTES`] allocation, trimming it when it filled
/// less than half of it: queued packets are accounted by length, so a mostly empty allocation
/// must not sit in a queue. Costs one copy of the (small) payload.
pub fn fit(payload: BytesMut) -> Bytes {
    if payload.len() < payload.capacity() / 2 {
        Bytes::copy_from_slice(&payload)
    } else {
        payload.freeze()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn chunks_are_exactly_what_was_read_and_end_with_empty() {
        let (mut a, mut b) = tokio::io::duplex(256 * 1024);
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        a.write_all(&sent).await.unwrap();
        drop(a);
        let mut got = Vec::new();
        loop {
            let chunk = read_chunk(&mut b).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= DATA_CHUNK_BYTES);
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn a_small_read_does_not_pin_a_whole_chunk() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"hello").await.unwrap();
        let chunk = read_chunk(&mut b).await.unwrap();
        assert_eq!(&chunk[..], b"hello");
        // A trimmed payload is its own small allocation: converting it back to a Vec reuses it
        // only if it is exactly sized.
        let v: Vec<u8> = chunk.into();
        assert!(
            v.capacity() < DATA_CHUNK_BYTES / 2,
            "capacity {}",
            v.capacity()
        );
    }

    #[test]
    fn fit_trims_mostly_empty_allocations_only() {
        let mut small = BytesMut::with_capacity(DATA_CHUNK_BYTES);
        small.extend_from_slice(b"hello");
        assert!(Vec::from(fit(small)).capacity() < DATA_CHUNK_BYTES);
        let mut full = BytesMut::with_capacity(DATA_CHUNK_BYTES);
        full.resize(DATA_CHUNK_BYTES - 1, 7);
        assert_eq!(Vec::from(fit(full)).capacity(), DATA_CHUNK_BYTES);
    }
}
