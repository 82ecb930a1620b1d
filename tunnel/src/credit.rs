//! Per-connection flow control on the shared gRPC stream, when both ends are ours (an
//! extension; upstream has none, see issues 180 and 881).
//!
//! Negotiated per agent stream with the [`FLOW_CONTROL_HEADER`] request header, which the
//! server echoes in its response headers only if the agent sent it; an upstream peer neither
//! sends nor echoes it, and then nothing here is used. Once negotiated, every connection starts
//! with [`INITIAL_WINDOW`] bytes of credit in each direction. The sender of DATA may send while
//! it has credit left ([`SendWindow`]); the receiver grants credit back (`CREDIT{connectID,
//! bytes}` packets) as its writer drains the connection's queue ([`RecvWindow`]). A connection
//! whose reader stalls therefore stops its own sender (whose socket reader stops reading),
//! never the shared stream, and is never aborted.
//!
//! Amounts are *charged* bytes ([`charge`]): tiny packets cost at least [`MIN_DATA_CHARGE`], so
//! the receiver's queue is bounded in packets as well as bytes.

use std::sync::Mutex;

use tokio::sync::Notify;

/// Request header an agent of ours sends, and response header a server of ours echoes, to turn
/// per-connection flow control on for one agent stream.
pub const FLOW_CONTROL_HEADER: &str = "konnectivity-flow-control";
/// The header's value for this version of the extension.
pub const FLOW_CONTROL_VERSION: &str = "1";

/// Credit each direction of a connection starts with; the same 2 MiB as a QUIC stream's window
/// ([`crate::quic::STREAM_RECEIVE_WINDOW`]). With 1 MiB a single connect-uds stream waited for
/// CREDIT whenever a process waited for a core: 835–932 / 760–766 MiB/s against 943–976 /
/// 781–843 with 2 MiB (three alternating pairs; 4 MiB gave no more). Cost: up to this much (plus
/// one read buffer) queued in the receiver per connection whose reader is slow; throughput per
/// connection is at most this much per round trip of a CREDIT.
pub const INITIAL_WINDOW: u64 = 2 * 1024 * 1024;
/// The receiver grants credit once this much has drained, so CREDIT packets are few (one per
/// quarter window). Cost: the sender may idle for up to this much of drained data.
pub const GRANT_THRESHOLD: u64 = INITIAL_WINDOW / 4;
/// Least charge of one DATA packet, matching the queue's minimum charge.
pub const MIN_DATA_CHARGE: u64 = 64;
/// Packets a flow-controlled connection's queue must hold: a full window of minimum-charge
/// packets, plus slack for control packets. Cost: none by itself (queues allocate lazily).
pub const FLOW_QUEUE_PACKETS: usize = (INITIAL_WINDOW / MIN_DATA_CHARGE) as usize + 64;

/// What a DATA payload of `len` bytes costs in credit.
pub fn charge(len: usize) -> u64 {
    (len as u64).max(MIN_DATA_CHARGE)
}

/// The sender's view of one connection: how much it may still send.
///
/// Sending is allowed while the credit is positive; one send may overdraw it (by at most one
/// read buffer), so a window smaller than a packet never deadlocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWindow {
    available: i64,
}

impl SendWindow {
    /// A window with `initial` bytes of credit.
    pub fn new(initial: u64) -> Self {
        SendWindow {
            available: i64::try_from(initial).unwrap_or(i64::MAX),
        }
    }

    /// Whether the sender may send now.
    pub fn may_send(&self) -> bool {
        self.available > 0
    }

    /// Credit left (negative after an overdraw).
    pub fn available(&self) -> i64 {
        self.available
    }

    /// Records a send of `charged` bytes.
    pub fn consume(&mut self, charged: u64) {
        let c = i64::try_from(charged).unwrap_or(i64::MAX);
        self.available = self.available.saturating_sub(c);
    }

    /// Adds credit the receiver granted.
    pub fn grant(&mut self, bytes: u64) {
        let b = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.available = self.available.saturating_add(b);
    }
}

/// The receiver's view of one connection: drained bytes not yet granted back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWindow {
    drained: u64,
    threshold: u64,
}

impl Default for RecvWindow {
    fn default() -> Self {
        RecvWindow::new(GRANT_THRESHOLD)
    }
}

impl RecvWindow {
    /// Grants in batches of at least `threshold` bytes.
    pub fn new(threshold: u64) -> Self {
        RecvWindow {
            drained: 0,
            threshold: threshold.max(1),
        }
    }

    /// The writer drained `charged` bytes; returns the credit to grant now, if any.
    pub fn drained(&mut self, charged: u64) -> Option<u64> {
        self.drained = self.drained.saturating_add(charged);
        if self.drained >= self.threshold {
            Some(std::mem::take(&mut self.drained))
        } else {
            None
        }
    }

    /// A grant that could not be sent: keep it for the next one.
    pub fn restore(&mut self, bytes: u64) {
        self.drained = self.drained.saturating_add(bytes);
    }
}

/// A [`SendWindow`] shared between the task that sends a connection's DATA (and waits for
/// credit) and the receive loop that applies CREDIT packets.
#[derive(Debug)]
pub struct CreditGate {
    state: Mutex<(SendWindow, bool)>,
    changed: Notify,
}

impl CreditGate {
    /// A gate with `initial` bytes of credit.
    pub fn new(initial: u64) -> Self {
        CreditGate {
            state: Mutex::new((SendWindow::new(initial), false)),
            changed: Notify::new(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut (SendWindow, bool)) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update of two integers: still usable.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Waits until the connection may send; false once the gate is closed (the connection
    /// ended), so a waiting sender wakes up and stops.
    pub async fn ready(&self) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.with(|(w, closed)| (*closed, w.may_send())) {
                (true, _) => return false,
                (false, true) => return true,
                (false, false) => notified.await,
            }
        }
    }

    /// Records a send of `charged` bytes.
    pub fn consume(&self, charged: u64) {
        self.with(|(w, _)| w.consume(charged));
    }

    /// Applies a CREDIT from the receiver and wakes the sender.
    pub fn grant(&self, bytes: u64) {
        self.with(|(w, _)| w.grant(bytes));
        self.changed.notify_waiters();
    }

    /// The connection ended: wakes the sender for good.
    pub fn close(&self) {
        self.with(|(_, closed)| *closed = true);
        self.changed.notify_waiters();
    }

    /// Credit left (for logs and tests).
    pub fn available(&self) -> i64 {
        self.with(|(w, _)| w.available())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// An in-memory connection: the sender sends chunks while it may, the "wire" queues them,
    /// the receiver drains at its own pace and grants; what is in flight never exceeds the
    /// window plus one chunk, and nothing is lost.
    #[test]
    fn in_flight_bytes_stay_within_the_window_and_everything_arrives() {
        let mut tx = SendWindow::new(INITIAL_WINDOW);
        let mut rx = RecvWindow::default();
        let chunk = 32 * 1024u64;
        let mut wire: std::collections::VecDeque<u64> = Default::default();
        let (mut sent, mut delivered) = (0u64, 0u64);
        let total = 64 * INITIAL_WINDOW;
        let mut step = 0u64;
        while delivered < total {
            step += 1;
            // The sender is faster: it tries three chunks per step.
            for _ in 0..3 {
                if sent < total && tx.may_send() {
                    tx.consume(charge(chunk as usize));
                    wire.push_back(chunk);
                    sent += chunk;
                }
            }
            let in_flight: u64 = wire.iter().sum();
            assert!(in_flight <= INITIAL_WINDOW + chunk, "{in_flight} in flight");
            // The receiver drains one chunk every other step.
            if step.is_multiple_of(2) {
                if let Some(n) = wire.pop_front() {
                    delivered += n;
                    if let Some(grant) = rx.drained(charge(n as usize)) {
                        tx.grant(grant);
                    }
                }
            }
        }
        assert_eq!(delivered, total);
    }

    #[test]
    fn a_stalled_receiver_stops_the_sender_without_any_error() {
        let mut tx = SendWindow::new(INITIAL_WINDOW);
        let mut sent = 0u64;
        while tx.may_send() {
            tx.consume(charge(16 * 1024));
            sent += 16 * 1024;
        }
        assert_eq!(sent, INITIAL_WINDOW);
        assert!(!tx.may_send());
        tx.grant(GRANT_THRESHOLD);
        assert!(tx.may_send());
    }

    #[test]
    fn tiny_packets_are_charged_the_minimum_so_queues_stay_bounded_in_packets() {
        let mut tx = SendWindow::new(INITIAL_WINDOW);
        let mut packets = 0usize;
        while tx.may_send() {
            tx.consume(charge(1));
            packets += 1;
        }
        assert!(packets <= FLOW_QUEUE_PACKETS, "{packets}");
        assert_eq!(charge(0), MIN_DATA_CHARGE);
        assert_eq!(charge(100_000), 100_000);
    }

    #[test]
    fn grants_are_batched_and_an_unsent_grant_is_kept() {
        let mut rx = RecvWindow::new(100);
        assert_eq!(rx.drained(60), None);
        assert_eq!(rx.drained(60), Some(120));
        assert_eq!(rx.drained(10), None);
        rx.restore(120);
        assert_eq!(rx.drained(0), Some(130));
    }

    #[test]
    fn overdraw_is_allowed_once_then_waits_for_credit() {
        let mut tx = SendWindow::new(10);
        assert!(tx.may_send());
        tx.consume(1000);
        assert_eq!(tx.available(), -990);
        assert!(!tx.may_send());
        tx.grant(990);
        assert!(!tx.may_send());
        tx.grant(1);
        assert!(tx.may_send());
    }

    #[tokio::test]
    async fn gate_waits_for_a_grant_and_close_wakes_the_sender() {
        let gate = Arc::new(CreditGate::new(10));
        assert!(gate.ready().await);
        gate.consume(10);
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.ready().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no credit: the sender waits");
        gate.grant(5);
        assert!(waiter.await.expect("join"), "granted: the sender goes on");

        gate.consume(100);
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.ready().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.close();
        assert!(!waiter.await.expect("join"), "closed: the sender stops");
        assert!(!gate.ready().await);
    }
}
