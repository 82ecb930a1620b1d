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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use konnectivity_proto::{Packet, Payload};
use tokio::sync::Notify;

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

/// What a queued item costs against the queue's byte bound (at least [`MIN_CHARGE`] is charged).
pub trait Charge {
    /// Payload bytes this item holds.
    fn payload_bytes(&self) -> usize;
}

impl Charge for Packet {
    fn payload_bytes(&self) -> usize {
        match &self.payload {
            Some(Payload::Data(d)) => d.data.len(),
            _ => 0,
        }
    }
}

/// The queue is full: the consumer is not keeping up. The packet is handed back.
#[derive(Debug, thiserror::Error)]
#[error("connection queue full ({queued_packets} packets queued): its reader has stalled")]
pub struct QueueFull<T: std::fmt::Debug = Packet> {
    /// The packet (item) that did not fit.
    pub packet: T,
    /// How many packets were waiting.
    pub queued_packets: usize,
}

/// The consumer has gone away; the connection is closed.
#[derive(Debug, thiserror::Error)]
#[error("connection queue closed: its reader has gone")]
pub struct QueueClosed<T: std::fmt::Debug = Packet>(pub T);

/// Why `try_push` failed.
#[derive(Debug, thiserror::Error)]
pub enum TryPushError<T: std::fmt::Debug = Packet> {
    /// See [`QueueFull`].
    #[error(transparent)]
    Full(#[from] QueueFull<T>),
    /// See [`QueueClosed`].
    #[error(transparent)]
    Closed(#[from] QueueClosed<T>),
}

/// Capacity an emptied queue may keep; beyond it the packet ring is freed, so a connection that
/// once had a burst queued goes back to holding no buffer while idle. Cost: a connection that
/// keeps oscillating above this many queued packets re-grows its ring each burst.
const RETAINED_SLOTS: usize = 16;

/// What producers and the consumer share. Nothing is allocated until a packet is queued: an
/// idle connection's queue is this struct alone (about 150 bytes), where a channel would hold
/// a block of slots per connection.
#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the consumer: a packet arrived or the last producer left. `notify_one` keeps a
    /// permit when the consumer is not waiting yet, so no wake-up is lost.
    readable: Notify,
    /// Wakes producers waiting in [`QueueTx::push`]: room was freed or the consumer left.
    writable: Notify,
    max_packets: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct State<T> {
    /// Queued packets with the bytes each was charged.
    packets: VecDeque<(T, usize)>,
    /// Sum of the charges of `packets`.
    bytes: usize,
    /// Live [`QueueTx`] handles.
    producers: usize,
    /// The consumer was dropped or called [`QueueRx::close`].
    closed: bool,
}

impl<T> State<T> {
    fn has_room(&self, charge: usize, max_packets: usize, max_bytes: usize) -> bool {
        self.packets.len() < max_packets && self.bytes + charge <= max_bytes
    }
}

/// Producer half. Cloning gives another producer for the same queue.
#[derive(Debug)]
pub struct QueueTx<T = Packet> {
    shared: Arc<Shared<T>>,
}

/// Consumer half.
#[derive(Debug)]
pub struct QueueRx<T = Packet> {
    shared: Arc<Shared<T>>,
}

/// Creates a queue holding at most `max_packets` packets and about `max_bytes` bytes (a single
/// packet larger than `max_bytes` is admitted only when the queue is empty, so any packet the
/// peer may legally send can pass).
pub fn channel<T>(max_packets: usize, max_bytes: usize) -> (QueueTx<T>, QueueRx<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            packets: VecDeque::new(),
            bytes: 0,
            producers: 1,
            closed: false,
        }),
        readable: Notify::new(),
        writable: Notify::new(),
        max_packets: max_packets.max(1),
        max_bytes: max_bytes.max(MIN_CHARGE),
    });
    (
        QueueTx {
            shared: Arc::clone(&shared),
        },
        QueueRx { shared },
    )
}

/// Bytes an item is charged for.
fn charge(item: &impl Charge, max_bytes: usize) -> usize {
    // Clamped to the bound so an oversized packet can still pass an empty queue.
    item.payload_bytes().clamp(MIN_CHARGE, max_bytes)
}

impl<T> Shared<T> {
    /// The state, even if a holder panicked: every update below leaves it consistent before
    /// anything that could panic, so a poisoned lock holds valid data.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Charge + std::fmt::Debug> QueueTx<T> {
    /// Pushes without waiting; the shared receive loop's only way in.
    pub fn try_push(&self, packet: T) -> Result<(), TryPushError<T>> {
        let s = &self.shared;
        let n = charge(&packet, s.max_bytes);
        let mut state = s.lock();
        if state.closed {
            return Err(QueueClosed(packet).into());
        }
        if !state.has_room(n, s.max_packets, s.max_bytes) {
            let queued_packets = state.packets.len();
            return Err(QueueFull {
                packet,
                queued_packets,
            }
            .into());
        }
        state.packets.push_back((packet, n));
        state.bytes += n;
        drop(state);
        s.readable.notify_one();
        Ok(())
    }

    /// Pushes, waiting for room; for a producer that owns this connection.
    pub async fn push(&self, packet: T) -> Result<(), QueueClosed<T>> {
        let s = &self.shared;
        let n = charge(&packet, s.max_bytes);
        loop {
            // Registered before looking, so room freed after the check still wakes us.
            let notified = s.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = s.lock();
                if state.closed {
                    return Err(QueueClosed(packet));
                }
                if state.has_room(n, s.max_packets, s.max_bytes) {
                    state.packets.push_back((packet, n));
                    state.bytes += n;
                    drop(state);
                    s.readable.notify_one();
                    return Ok(());
                }
            }
            notified.await;
        }
    }
}

impl<T> QueueTx<T> {
    /// True once the consumer has been dropped (or has closed the queue).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

impl<T> Clone for QueueTx<T> {
    fn clone(&self) -> Self {
        self.shared.lock().producers += 1;
        QueueTx {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for QueueTx<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.lock();
            state.producers -= 1;
            state.producers == 0
        };
        if last {
            self.shared.readable.notify_one();
        }
    }
}

impl<T> QueueRx<T> {
    /// Next packet; `None` once every producer is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.pop() {
                Popped::Item(item) => return Some(item),
                Popped::Ended => return None,
                Popped::Empty => self.shared.readable.notified().await,
            }
        }
    }

    /// The next packet if one is queued now, without waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        match self.pop() {
            Popped::Item(item) => Some(item),
            Popped::Ended | Popped::Empty => None,
        }
    }

    fn pop(&mut self) -> Popped<T> {
        let s = &self.shared;
        let mut state = s.lock();
        if let Some((item, n)) = state.packets.pop_front() {
            // Returning the packet's bytes to the budget.
            state.bytes -= n;
            if state.packets.is_empty() && state.packets.capacity() > RETAINED_SLOTS {
                state.packets = VecDeque::new();
            }
            drop(state);
            s.writable.notify_waiters();
            return Popped::Item(item);
        }
        if state.producers == 0 || state.closed {
            Popped::Ended
        } else {
            Popped::Empty
        }
    }

    /// Stops accepting packets; queued ones can still be received.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
        self.shared.writable.notify_waiters();
    }

    /// The queue as a stream, for handing to a gRPC response body.
    pub fn into_stream(self) -> impl futures::Stream<Item = T> + Send + 'static
    where
        T: Send + 'static,
    {
        futures::stream::unfold(
            self,
            |mut rx| async move { rx.recv().await.map(|p| (p, rx)) },
        )
    }
}

/// What [`QueueRx::pop`] found.
enum Popped<T> {
    Item(T),
    /// Every producer is gone (or the consumer closed) and nothing is left.
    Ended,
    /// Nothing queued yet.
    Empty,
}

impl<T> Drop for QueueRx<T> {
    fn drop(&mut self) {
        // Queued packets are dropped with the consumer, as a channel's would be.
        let dropped = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.bytes = 0;
            std::mem::take(&mut state.packets)
        };
        drop(dropped);
        self.shared.writable.notify_waiters();
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

    #[tokio::test]
    async fn closing_lets_queued_packets_drain_then_ends_and_refuses_new_ones() {
        let (tx, mut rx) = channel(10, 1 << 20);
        tx.try_push(data(1)).expect("queued");
        rx.close();
        assert!(tx.is_closed());
        assert!(matches!(tx.try_push(data(1)), Err(TryPushError::Closed(_))));
        assert!(rx.recv().await.is_some(), "queued packet still delivered");
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn recv_ends_once_the_last_producer_leaves_and_wakes_a_waiting_consumer() {
        let (tx, mut rx) = channel(10, 1 << 20);
        let tx2 = tx.clone();
        let consumer = tokio::spawn(async move {
            let mut n = 0;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        });
        tx.try_push(data(1)).expect("1");
        drop(tx);
        tokio::task::yield_now().await;
        assert!(!consumer.is_finished(), "one producer is left");
        tx2.push(data(1)).await.expect("2");
        drop(tx2);
        assert_eq!(consumer.await.expect("join"), 2);
    }

    #[test]
    fn try_recv_takes_what_is_queued_without_waiting() {
        let (tx, mut rx) = channel(10, 1 << 20);
        assert!(rx.try_recv().is_none());
        tx.try_push(data(3)).expect("queued");
        assert_eq!(rx.try_recv().map(|p| p.kind_name()), Some("DATA"));
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn an_idle_queue_holds_no_packet_ring() {
        let (tx, mut rx) = channel(1000, 1 << 20);
        assert_eq!(
            rx.shared.lock().packets.capacity(),
            0,
            "nothing allocated up front"
        );
        for _ in 0..200 {
            tx.try_push(data(1)).expect("room");
        }
        for _ in 0..200 {
            rx.recv().await.expect("packet");
        }
        assert_eq!(
            rx.shared.lock().packets.capacity(),
            0,
            "ring freed once drained"
        );
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
