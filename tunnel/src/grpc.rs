//! The agent stream's packets as HTTP/2 bodies, framed by [`konnectivity_proto::wire`] instead
//! of tonic's codec, so DATA payloads cross the gRPC layer without being copied.
//!
//! [`PacketBody`] turns the outbound packet stream into a request or response body: small
//! packets are batched into one frame, a large payload follows its head as its own frame.
//! [`PacketStream`] turns the peer's body back into packets, ending with the peer's gRPC status.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use konnectivity_proto::wire::{self, Decoder};
use konnectivity_proto::Packet;
use tonic::Status;

/// A batch of small packets is sent as one frame once it reaches this size, even if more
/// packets are ready (tonic's own yield threshold). Cost: up to this much is copied into the
/// batch before the writer sees any of it.
pub const BATCH_YIELD_BYTES: usize = 32 * 1024;

/// Room the batch buffer is grown by when it runs out. Cost: one allocation of this size per
/// this many bytes of small packets; frames sent from it keep it alive until written.
const BATCH_ALLOCATION_BYTES: usize = 8 * 1024;

/// gRPC's status trailer.
const GRPC_STATUS: &str = "grpc-status";

/// An HTTP/2 body of gRPC messages, one per packet of `packets`; ends when `packets` does,
/// with `grpc-status: 0` trailers if built by [`PacketBody::response`].
pub struct PacketBody<S> {
    packets: S,
    batch: BytesMut,
    /// Frames due before anything else: a batch and the payload that must follow it.
    ready: VecDeque<Bytes>,
    ok_trailers: bool,
    ended: bool,
}

impl<S> PacketBody<S> {
    /// A request body (the client's half of the stream): no trailers.
    pub fn request(packets: S) -> Self {
        Self::new(packets, false)
    }

    /// A response body (the server's half): ends with an OK gRPC status.
    pub fn response(packets: S) -> Self {
        Self::new(packets, true)
    }

    fn new(packets: S, ok_trailers: bool) -> Self {
        PacketBody {
            packets,
            batch: BytesMut::new(),
            ready: VecDeque::with_capacity(2),
            ok_trailers,
            ended: false,
        }
    }

    fn flush_batch(&mut self) {
        if !self.batch.is_empty() {
            self.ready.push_back(self.batch.split().freeze());
        }
    }
}

impl<S: Stream<Item = Packet> + Unpin> Body for PacketBody<S> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            if this.ended {
                if std::mem::take(&mut this.ok_trailers) {
                    let mut trailers = HeaderMap::with_capacity(1);
                    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                return Poll::Ready(None);
            }
            match this.packets.poll_next_unpin(cx) {
                Poll::Ready(Some(packet)) => {
                    if this.batch.capacity() - this.batch.len() < wire::PREFIX_BYTES + 64 {
                        this.batch.reserve(BATCH_ALLOCATION_BYTES);
                    }
                    match wire::encode(packet, &mut this.batch) {
                        Ok(Some(payload)) => {
                            this.flush_batch();
                            this.ready.push_back(payload);
                        }
                        Ok(None) => {
                            if this.batch.len() >= BATCH_YIELD_BYTES {
                                this.flush_batch();
                            }
                        }
                        // Only a packet over the 4 MiB message limit, which no reader of
                        // ours produces; the peer would refuse it, so end the stream loudly.
                        Err(e) => {
                            this.ended = true;
                            this.ok_trailers = false;
                            return Poll::Ready(Some(Err(Status::internal(e.to_string()))));
                        }
                    }
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    this.flush_batch();
                }
                Poll::Pending => {
                    if this.batch.is_empty() {
                        // Idle: let go of the unused rest of the batch allocation, so a
                        // quiet stream holds nothing once its last frame is written (thousands
                        // of idle tunnels would otherwise keep up to 8 KiB each). A stream
                        // that wakes again pays one allocation per burst.
                        if this.batch.capacity() > 0 {
                            this.batch = BytesMut::new();
                        }
                        return Poll::Pending;
                    }
                    this.flush_batch();
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.ready.is_empty() && !self.ok_trailers
    }
}

/// The peer's body as packets. Yields `Err` once (then ends) for a malformed message, a
/// transport error, or a non-OK `grpc-status` trailer; ends cleanly on OK or no trailers.
pub struct PacketStream<B> {
    body: B,
    decoder: Decoder,
    ended: bool,
}

impl<B> PacketStream<B> {
    /// Decodes `body`.
    pub fn new(body: B) -> Self {
        PacketStream {
            body,
            decoder: Decoder::new(),
            ended: false,
        }
    }
}

impl<B> std::fmt::Debug for PacketStream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketStream")
            .field("buffered", &self.decoder.buffered())
            .field("ended", &self.ended)
            .finish()
    }
}

impl<B> Stream for PacketStream<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Item = Result<Packet, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.decoder.decode() {
                Ok(Some(packet)) => return Poll::Ready(Some(Ok(packet))),
                Ok(None) => {}
                Err(e) => return this.fail(Status::internal(e.to_string())),
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.decoder.push(data),
                    Err(frame) => {
                        let Ok(trailers) = frame.into_trailers() else {
                            continue;
                        };
                        if let Some(status) = Status::from_header_map(&trailers) {
                            if status.code() != tonic::Code::Ok {
                                return this.fail(status);
                            }
                        }
                        return this.finish();
                    }
                },
                Poll::Ready(Some(Err(status))) => return this.fail(status),
                Poll::Ready(None) => return this.finish(),
            }
        }
    }
}

impl<B> PacketStream<B> {
    fn fail(&mut self, status: Status) -> Poll<Option<Result<Packet, Status>>> {
        self.ended = true;
        Poll::Ready(Some(Err(status)))
    }

    fn finish(&mut self) -> Poll<Option<Result<Packet, Status>>> {
        self.ended = true;
        match self.decoder.finish() {
            Ok(()) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Status::internal(e.to_string())))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn packets() -> Vec<Packet> {
        let mut v = vec![Packet::dial_request("tcp", "127.0.0.1:1", 1)];
        for i in 0..50 {
            v.push(Packet::data(1, Bytes::from(vec![i as u8; 10 + i * 2000])));
            v.push(Packet::credit(1, i as u64));
        }
        v.push(Packet::close_request(1));
        v
    }

    async fn collect(body: impl Body<Data = Bytes, Error = Status> + Unpin) -> Vec<Frame<Bytes>> {
        let mut body = body;
        let mut frames = Vec::new();
        while let Some(f) = body.frame().await {
            frames.push(f.unwrap());
        }
        frames
    }

    #[tokio::test]
    async fn a_response_body_round_trips_and_ends_with_ok_status() {
        let sent = packets();
        let frames = collect(PacketBody::response(futures::stream::iter(sent.clone()))).await;
        assert!(frames.last().unwrap().is_trailers());
        assert!(
            frames.len() > 50,
            "large payloads leave as their own frames"
        );
        let body = StreamBody::new(futures::stream::iter(frames.into_iter().map(Ok)));
        let got: Vec<Packet> = PacketStream::new(body).map(|r| r.unwrap()).collect().await;
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn a_request_body_has_no_trailers_and_batches_small_packets() {
        let small: Vec<Packet> = (0..100).map(Packet::close_request).collect();
        let frames = collect(PacketBody::request(futures::stream::iter(small.clone()))).await;
        assert_eq!(frames.len(), 1, "one batch");
        assert!(frames[0].is_data());
    }

    #[test]
    fn an_idle_body_holds_no_batch_allocation() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut body = PacketBody::response(rx);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        tx.unbounded_send(Packet::dial_response(1, 7, "")).unwrap();
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("the dial response is sent at once");
        };
        assert!(frame.is_data());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(body.batch.capacity(), 0, "nothing kept while idle");
        // And it still works after going idle.
        tx.unbounded_send(Packet::close_request(1)).unwrap();
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
    }

    #[tokio::test]
    async fn a_non_ok_trailer_is_the_streams_error() {
        let mut wire_bytes = BytesMut::new();
        wire::encode(Packet::drain(), &mut wire_bytes).unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("14"));
        let frames = vec![
            Ok::<_, Status>(Frame::data(wire_bytes.freeze())),
            Ok(Frame::trailers(trailers)),
        ];
        let mut s = PacketStream::new(StreamBody::new(futures::stream::iter(frames)));
        assert_eq!(s.next().await.unwrap().unwrap(), Packet::drain());
        assert_eq!(
            s.next().await.unwrap().unwrap_err().code(),
            tonic::Code::Unavailable
        );
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors() {
        let frames = vec![Ok::<_, Status>(Frame::data(Bytes::from_static(&[
            0, 0, 0, 0, 2, 0xff, 0xff,
        ])))];
        let mut s = PacketStream::new(StreamBody::new(futures::stream::iter(frames)));
        assert_eq!(
            s.next().await.unwrap().unwrap_err().code(),
            tonic::Code::Internal
        );
        assert!(s.next().await.is_none());

        let frames = vec![Ok::<_, Status>(Frame::data(Bytes::from_static(&[
            0, 0, 0, 0, 9, 8,
        ])))];
        let mut s = PacketStream::new(StreamBody::new(futures::stream::iter(frames)));
        let err = s.next().await.unwrap().unwrap_err();
        assert!(err.message().contains("ended inside"), "{err}");
    }
}
