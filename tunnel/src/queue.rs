//! A per-connection queue bounded in packets *and* bytes.
//!
//! The producer side is the shared receive loop of a multiplexed stream: it must never wait on
//! one connection, so it uses [`QueueTx::try_push`], and treats [`QueueFull`] as "this
//! connection's reader has stalled": the caller aborts that connection. Producers that own their
//! connection (a socket reader feeding its own queue) may wait with [`QueueTx::push`].
//!
//! The byte bound is what bounds memory: a peer may send packets of any size up to the gRPC
//! message limit, so a packet count alone would let one stalled connection hold
//! `count × 4 MiB`.

use std::sync::Arc;

use konnectivity_proto::{Packet, Payload};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Default byte bound of one connection's queue. Cost: up to this much memory per connection
/// whose reader has stopped (on top of the kernel's socket buffers). Without end-to-end flow
/// control (an upstream peer) this is also how far a reader may fall behind a faster writer
/// before its connection is aborted: at 1 GiB/s, ~8 ms of reader pause.
pub const DEFAULT_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// Least packet bound of a connection's queue, whatever `--xfr-channel-size` says. Upstream's
/// defaults (10 on the server, 150 on the agent) size a queue that its reader *waits* on; ours is
/// never waited on, so a full queue aborts the connection, and a bound of 10 packets of 4 KiB
/// would abort healthy connections whose reader merely paused. Cost: none by itself — memory is
/// bounded by the byte bound; this only lets small packets use it.
pub const MIN_CONNECTION_PACKETS: usize = 2048;

/// The packet bound of a connection's queue for a configured `--xfr-channel-size`.
pub fn connection_packets(xfr_channel_size: usize) -> usize {
    xfr_channel_size.max(MIN_CONNECTION_PACKETS)
}

/// Bytes charged for a packet without payload bytes, so a flood of empty packets is bounded too.
const MIN_CHARGE: usize = 64;

/// The queue is full: the consumer is not keeping up. The packet is handed back.
#[derive(Debug, thiserror::Error)]
#[error("connection queue full ({queued_packets} packets queued): its reader has stalled")]
pub struct QueueFull {
    /// The packet that did not fit.
    pub packet: Packet,
    /// How many packets were waiting.
    pub queued_packets: usize,
}

/// The consumer has gone away; the connection is closed.
#[derive(Debug, thiserror::Error)]
#[error("connection queue closed: its reader has gone")]
pub struct QueueClosed(pub Packet);

/// Why `try_push` failed.
#[derive(Debug, thiserror::Error)]
pub enum TryPushError {
    /// See [`QueueFull`].
    #[error(transparent)]
    Full(#[from] QueueFull),
    /// See [`QueueClosed`].
    #[error(transparent)]
    Closed(#[from] QueueClosed),
}

/// Producer half. Cloning gives another producer for the same queue.
#[derive(Debug, Clone)]
pub struct QueueTx {
    tx: mpsc::Sender<(Packet, OwnedSemaphorePermit)>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

/// Consumer half.
#[derive(Debug)]
pub struct QueueRx {
    rx: mpsc::Receiver<(Packet, OwnedSemaphorePermit)>,
}

/// Creates a queue holding at most `max_packets` packets and about `max_bytes` bytes (a single
/// packet larger than `max_bytes` is admitted only when the queue is empty, so any packet the
/// peer may legally send can pass).
pub fn channel(max_packets: usize, max_bytes: usize) -> (QueueTx, QueueRx) {
    let max_packets = max_packets.max(1);
    let max_bytes = max_bytes.max(MIN_CHARGE);
    let (tx, rx) = mpsc::channel(max_packets);
    let bytes = Arc::new(Semaphore::new(max_bytes));
    (
        QueueTx {
            tx,
            bytes,
            max_bytes,
        },
        QueueRx { rx },
    )
}

/// Bytes a packet is charged for.
fn charge(packet: &Packet, max_bytes: usize) -> u32 {
    let len = match &packet.payload {
        Some(Payload::Data(d)) => d.data.len(),
        _ => 0,
    };
    // Clamped to the bound so an oversized packet can still pass an empty queue; the bound
    // itself fits in u32 because it is a semaphore size we chose (≤ usize, clamped here).
    len.clamp(MIN_CHARGE, max_bytes).min(u32::MAX as usize) as u32
}

impl QueueTx {
    /// Pushes without waiting; the shared receive loop's only way in.
    pub fn try_push(&self, packet: Packet) -> Result<(), TryPushError> {
        if self.tx.is_closed() {
            return Err(QueueClosed(packet).into());
        }
        let n = charge(&packet, self.max_bytes);
        let permit = match self.bytes.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => return Err(self.full(packet).into()),
        };
        match self.tx.try_send((packet, permit)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full((packet, _))) => Err(self.full(packet).into()),
            Err(mpsc::error::TrySendError::Closed((packet, _))) => Err(QueueClosed(packet).into()),
        }
    }

    /// Pushes, waiting for room; for a producer that owns this connection.
    pub async fn push(&self, packet: Packet) -> Result<(), QueueClosed> {
        let n = charge(&packet, self.max_bytes);
        let permit = match self.bytes.clone().acquire_many_owned(n).await {
            Ok(p) => p,
            // The semaphore is never closed; treat it like a closed queue all the same.
            Err(_) => return Err(QueueClosed(packet)),
        };
        self.tx
            .send((packet, permit))
            .await
            .map_err(|e| QueueClosed((e.0).0))
    }

    /// True once the consumer has been dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn full(&self, packet: Packet) -> QueueFull {
        QueueFull {
            packet,
            queued_packets: self.tx.max_capacity() - self.tx.capacity(),
        }
    }
}

impl QueueRx {
    /// Next packet; `None` once every producer is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Packet> {
        // Dropping the permit here returns the packet's bytes to the budget.
        self.rx.recv().await.map(|(p, _permit)| p)
    }

    /// Stops accepting packets; queued ones can still be received.
    pub fn close(&mut self) {
        self.rx.close();
    }

    /// The queue as a stream, for handing to a gRPC response body.
    pub fn into_stream(self) -> impl futures::Stream<Item = Packet> + Send + 'static {
        futures::stream::unfold(
            self,
            |mut rx| async move { rx.recv().await.map(|p| (p, rx)) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Packet {
        Packet::data(1, vec![7u8; n])
    }

    #[tokio::test]
    async fn try_push_refuses_once_byte_budget_is_spent() {
        let (tx, mut rx) = channel(100, 10_000);
        tx.try_push(data(6_000)).expect("fits");
        let err = tx.try_push(data(6_000)).expect_err("over budget");
        assert!(matches!(
            err,
            TryPushError::Full(QueueFull {
                queued_packets: 1,
                ..
            })
        ));
        // Draining returns the budget.
        assert_eq!(rx.recv().await.map(|p| p.kind_name()), Some("DATA"));
        tx.try_push(data(6_000)).expect("fits again");
    }

    #[tokio::test]
    async fn try_push_refuses_once_packet_count_is_reached() {
        let (tx, _rx) = channel(2, 1 << 20);
        tx.try_push(data(1)).expect("1");
        tx.try_push(data(1)).expect("2");
        assert!(matches!(tx.try_push(data(1)), Err(TryPushError::Full(_))));
    }

    #[tokio::test]
    async fn oversized_packet_passes_an_empty_queue_only() {
        let (tx, mut rx) = channel(10, 1_000);
        tx.try_push(data(50_000)).expect("empty queue admits it");
        assert!(matches!(tx.try_push(data(10)), Err(TryPushError::Full(_))));
        rx.recv().await.expect("packet");
        tx.try_push(data(10)).expect("room again");
    }

    #[tokio::test]
    async fn push_waits_for_room_and_closed_consumer_is_reported() {
        let (tx, mut rx) = channel(1, 1 << 20);
        tx.push(data(1)).await.expect("room");
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move { tx2.push(data(2)).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        rx.recv().await.expect("first");
        waiter.await.expect("join").expect("second pushed");
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(tx.try_push(data(1)), Err(TryPushError::Closed(_))));
        assert!(tx.push(data(1)).await.is_err());
    }

    #[test]
    fn configured_channel_size_never_shrinks_the_queue_below_the_minimum() {
        assert_eq!(connection_packets(10), MIN_CONNECTION_PACKETS);
        assert_eq!(connection_packets(100_000), 100_000);
    }

    #[tokio::test]
    async fn control_packets_are_charged_a_minimum() {
        let (tx, _rx) = channel(1000, MIN_CHARGE * 2);
        tx.try_push(Packet::close_request(1)).expect("1");
        tx.try_push(Packet::close_request(2)).expect("2");
        assert!(tx.try_push(Packet::close_request(3)).is_err());
    }
}
