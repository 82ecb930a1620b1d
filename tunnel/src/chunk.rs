//! Reading a tunnelled connection's bytes into DATA payloads.
//!
//! Every byte read from a client or a destination leaves as the payload of one DATA packet, so
//! the read is where the payload's allocation happens. Two rules keep that cheap: reads are
//! large (per-packet costs, framing, TLS records, syscalls and segments, are paid per chunk),
//! and an idle connection holds no read buffer at all (so 100,000 idle tunnels cost only their
//! sockets and bookkeeping).

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;

use tokio::io::{AsyncRead, ReadBuf};

/// Largest DATA payload we produce. Upstream reads 32 KiB (server) and 4 KiB (agent); bigger
/// chunks cut the per-packet work on a bulk transfer. Cost: a reader holds up to this much
/// stack (not heap) while it copies out a chunk, and a packet may carry this much; upstream
/// peers accept gRPC messages up to 4 MiB.
pub const DATA_CHUNK_BYTES: usize = 64 * 1024;

/// Reads whatever `rd` has (at most [`DATA_CHUNK_BYTES`]) into a payload of exactly that size;
/// an empty payload means end of stream. The bytes land in a stack buffer that exists only
/// while the read is being polled and are then copied into the payload, so a connection
/// waiting here for its peer holds no buffer.
pub async fn read_chunk<R: AsyncRead + Unpin + ?Sized>(rd: &mut R) -> io::Result<Vec<u8>> {
    poll_fn(|cx| {
        let mut stack = [MaybeUninit::<u8>::uninit(); DATA_CHUNK_BYTES];
        let mut buf = ReadBuf::uninit(&mut stack);
        match Pin::new(&mut *rd).poll_read(cx, &mut buf) {
            std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Ok(buf.filled().to_vec())),
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await
}

/// Trims a payload read into a [`DATA_CHUNK_BYTES`] allocation when it filled less than half
/// of it: queued packets are accounted by length, so a mostly empty allocation must not sit in
/// a queue. Costs one copy of the (small) payload.
pub fn fit(mut payload: Vec<u8>) -> Vec<u8> {
    if payload.len() < payload.capacity() / 2 {
        payload.shrink_to_fit();
    }
    payload
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
            assert_eq!(chunk.len(), chunk.capacity(), "payload sized to the read");
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, sent);
    }

    #[test]
    fn fit_trims_mostly_empty_allocations_only() {
        let mut small = Vec::with_capacity(DATA_CHUNK_BYTES);
        small.extend_from_slice(b"hello");
        assert!(fit(small).capacity() < DATA_CHUNK_BYTES);
        let mut full = Vec::with_capacity(DATA_CHUNK_BYTES);
        full.resize(DATA_CHUNK_BYTES - 1, 7);
        assert_eq!(fit(full).capacity(), DATA_CHUNK_BYTES);
    }
}
