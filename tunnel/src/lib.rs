//! Tunnel plumbing shared by both halves of the proxy, independent of the transport.
//!
//! Upstream multiplexes every connection of an agent onto one gRPC stream and writes each
//! connection's bytes inline in that stream's receive loop, so one reader that stops reading
//! freezes every other connection (upstream issues 180 and 881). The two pieces here are how we
//! avoid that:
//!
//! * [`queue`]: every tunnelled connection owns a queue bounded both in packets and in bytes. The
//!   shared receive loop only ever *tries* to push into it; a connection whose queue overflows is
//!   aborted instead of blocking its neighbours.
//! * [`outbound`]: the shared stream toward a peer has two lanes, so control packets (close
//!   acknowledgements, refusals) cannot be starved or deadlocked behind bulk data.
//! * [`credit`]: per-connection flow control on the shared gRPC stream when both ends are
//!   ours (negotiated by a header): a stalled reader then pauses only its own sender.
//! * [`grpc`]: the gRPC streams' packets as HTTP/2 bodies, framed by `konnectivity_proto::wire`
//!   rather than tonic's codec, so DATA payloads are never copied through a codec buffer.
//! * [`chunk`]: reading a connection's bytes straight into DATA payloads.
//! * [`quic`]: the QUIC transport's shared pieces (ALPN, error codes, stream-header framing,
//!   transport limits, raw byte pumps): there every connection is its own QUIC stream.

#![forbid(unsafe_code)]

pub mod chunk;
pub mod credit;
pub mod grpc;
pub mod outbound;
pub mod queue;
pub mod quic;

/// Largest HTTP/2 frame we let a peer send us on the agent stream (SETTINGS_MAX_FRAME_SIZE;
/// the protocol default is 16 KiB). Every frame becomes at least one TLS write and one
/// loopback/network segment, so 16 KiB frames cost a `sendmsg`, a TCP segment and a netfilter
/// pass per 16 KiB moved; larger frames let TLS write several records per call. Cost: a peer may
/// make us buffer a frame this large before decoding it. Upstream peers (grpc-go) keep sending
/// 16 KiB frames, which is always allowed.
pub const H2_MAX_FRAME_BYTES: u32 = 256 * 1024;

/// A fresh dial id (`random` in `DialRequest`), as upstream's `rand.Int63()`: never negative.
///
/// The id is the dialer's key for matching the DIAL_RSP; collisions are what the 63 random bits
/// are there to make negligible.
pub fn random_dial_id() -> i64 {
    use rand::Rng;
    rand::thread_rng().gen_range(1..=i64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dial_ids_are_positive_and_vary() {
        let a = super::random_dial_id();
        let b = super::random_dial_id();
        assert!(a > 0 && b > 0);
        assert_ne!(a, b);
    }
}
