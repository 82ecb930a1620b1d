//! The shared stream toward one peer (an agent, or a frontend stream), with two lanes.
//!
//! * The **data lane** is bounded and producers wait on it: that wait is the back-pressure of the
//!   shared stream itself (HTTP/2 or QUIC flow control on the one stream every connection shares).
//! * The **control lane** takes packets a receive loop must emit in reaction to what it read
//!   (CLOSE_RSP for an unknown ID, CLOSE_REQ for a stale DIAL_RSP, DIAL_RSP refusals). A receive
//!   loop must never wait on its own peer's outbound stream, or two peers that both stop reading
//!   deadlock each other; so control packets are pushed without waiting and dropped (with an
//!   error the caller logs) if the peer leaves thousands of them unread.
//!
//! The merged stream yields control packets first.

use std::pin::Pin;
use std::task::{Context, Poll};

use konnectivity_proto::Packet;
use tokio::sync::mpsc;

/// Packets the control lane holds. Cost: at most this many small packets (~32 bytes each) per
/// peer; a peer that leaves this many unread is misbehaving and further replies are dropped.
pub const CONTROL_LANE_PACKETS: usize = 4096;

/// Default data-lane length in packets. Cost: up to this many DATA packets (≤
/// [`crate::chunk::DATA_CHUNK_BYTES`] each from our own readers, so ≤ 4 MiB) buffered per peer
/// stream before producers wait; HTTP/2 buffers behind it are bounded by the peer's window.
pub const DEFAULT_DATA_LANE_PACKETS: usize = 16;

/// The peer's stream is gone.
#[derive(Debug, thiserror::Error)]
#[error("stream to peer closed")]
pub struct Closed;

/// Why a control packet was not queued.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The peer has left [`CONTROL_LANE_PACKETS`] control packets unread.
    #[error("control lane full: peer is not reading its stream")]
    Full,
    /// The peer's stream is gone.
    #[error("stream to peer closed")]
    Closed,
}

/// Producer side; cheap to clone.
#[derive(Debug, Clone)]
pub struct OutboundTx {
    data: mpsc::Sender<Packet>,
    control: mpsc::Sender<Packet>,
}

/// Consumer side: a `Stream` of packets, control lane first.
#[derive(Debug)]
pub struct Outbound {
    data: mpsc::Receiver<Packet>,
    control: mpsc::Receiver<Packet>,
}

/// Creates the two lanes with a data lane of `data_packets`.
pub fn channel(data_packets: usize) -> (OutboundTx, Outbound) {
    let (dtx, drx) = mpsc::channel(data_packets.max(1));
    let (ctx, crx) = mpsc::channel(CONTROL_LANE_PACKETS);
    (
        OutboundTx {
            data: dtx,
            control: ctx,
        },
        Outbound {
            data: drx,
            control: crx,
        },
    )
}

impl OutboundTx {
    /// Sends on the data lane, waiting for room.
    pub async fn send(&self, packet: Packet) -> Result<(), Closed> {
        self.data.send(packet).await.map_err(|_| Closed)
    }

    /// Queues on the control lane without waiting.
    pub fn send_control(&self, packet: Packet) -> Result<(), ControlError> {
        self.control.try_send(packet).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ControlError::Full,
            mpsc::error::TrySendError::Closed(_) => ControlError::Closed,
        })
    }

    /// True once the consumer is gone.
    pub fn is_closed(&self) -> bool {
        self.data.is_closed()
    }

    /// Resolves when the consumer is gone.
    pub async fn closed(&self) {
        self.data.closed().await
    }
}

impl futures::Stream for Outbound {
    type Item = Packet;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Packet>> {
        let this = &mut *self;
        let control = match this.control.poll_recv(cx) {
            Poll::Ready(Some(p)) => return Poll::Ready(Some(p)),
            Poll::Ready(None) => true,
            Poll::Pending => false,
        };
        match this.data.poll_recv(cx) {
            Poll::Ready(Some(p)) => Poll::Ready(Some(p)),
            // Both lanes share the producers, so both close together; end when both are done.
            Poll::Ready(None) if control => Poll::Ready(None),
            Poll::Ready(None) => Poll::Pending,
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn control_packets_overtake_queued_data() {
        let (tx, mut rx) = channel(8);
        tx.send(Packet::data(1, b"a".to_vec())).await.expect("send");
        tx.send(Packet::data(1, b"b".to_vec())).await.expect("send");
        tx.send_control(Packet::close_response(9, ""))
            .expect("control");
        assert_eq!(rx.next().await.map(|p| p.kind_name()), Some("CLOSE_RSP"));
        assert_eq!(rx.next().await.map(|p| p.kind_name()), Some("DATA"));
    }

    #[tokio::test]
    async fn control_lane_never_waits_even_when_data_lane_is_full() {
        let (tx, _rx) = channel(1);
        tx.send(Packet::data(1, b"a".to_vec())).await.expect("send");
        for i in 0..CONTROL_LANE_PACKETS {
            tx.send_control(Packet::close_request(i as i64))
                .expect("room");
        }
        assert!(matches!(
            tx.send_control(Packet::close_request(0)),
            Err(ControlError::Full)
        ));
    }

    #[tokio::test]
    async fn stream_ends_when_all_producers_are_dropped() {
        let (tx, mut rx) = channel(4);
        tx.send_control(Packet::drain()).expect("control");
        drop(tx);
        assert!(rx.next().await.is_some());
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn producers_see_a_dropped_consumer() {
        let (tx, rx) = channel(4);
        drop(rx);
        assert!(tx.is_closed());
        assert!(tx.send(Packet::drain()).await.is_err());
        assert!(matches!(
            tx.send_control(Packet::drain()),
            Err(ControlError::Closed)
        ));
    }
}
