//! `Packet`s as gRPC length-prefixed messages, without copying DATA payloads.
//!
//! tonic's codec copies every message into its encode buffer on the way out, and every HTTP/2
//! DATA frame into its decode buffer on the way in (growing that buffer copies again). On a
//! tunnel those are the payload bytes themselves, several times per byte moved. This module
//! frames packets exactly as gRPC does (1 flag byte, 4-byte big-endian length, protobuf) but:
//!
//! * [`encode`] writes the small head of a large DATA packet (type, connectID, the `data`
//!   field's tag and length) into a batch buffer and hands the payload back untouched, to be
//!   sent as the next HTTP/2 DATA frame; the concatenation is byte-for-byte what prost would
//!   have produced, so any gRPC peer (grpc-go included) reads it as one message.
//! * [`Decoder`] keeps the received frames as a list of `Bytes` and decodes a packet from them
//!   in place; a payload that lies inside one frame is sliced, not copied.
//!
//! Sans-IO: callers push frames in and take packets out; the HTTP/2 glue lives with the
//! transports.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;

use crate::{Data, Packet, Payload};

/// Bytes of the gRPC message prefix: compressed flag + big-endian length.
pub const PREFIX_BYTES: usize = 5;

/// Largest message accepted or produced, grpc-go's and tonic's default limit. Cost: a peer can
/// make a decoder buffer up to this much for one message before it is rejected.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// DATA payloads at least this long leave as their own HTTP/2 frame instead of being copied
/// into the batch. Cost: such a packet takes two frames (9 more bytes on the wire); below this
/// size the copy is cheaper than the extra frame.
pub const SPLIT_PAYLOAD_MIN_BYTES: usize = 2048;

/// `Packet.payload`'s `data` variant field number.
const PACKET_DATA_FIELD: u32 = 4;
/// `Data.data`'s field number.
const DATA_BYTES_FIELD: u32 = 3;

/// A malformed or unacceptable gRPC message from the peer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The compressed flag was set; neither end negotiates compression.
    #[error("peer sent a compressed message, but no compression was negotiated")]
    Compressed,
    /// The flag byte was neither 0 nor 1.
    #[error("invalid gRPC message flag {0:#04x}")]
    BadFlag(u8),
    /// The message is longer than [`MAX_MESSAGE_BYTES`].
    #[error("gRPC message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Declared (or, when encoding, actual) length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message is not a valid `Packet`.
    #[error("gRPC message is not a valid Packet: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The stream ended inside a message.
    #[error("stream ended inside a gRPC message ({buffered} bytes of it received)")]
    Truncated {
        /// Bytes of the unfinished message received.
        buffered: usize,
    },
}

/// Appends `packet` as one gRPC message to `batch`. For a DATA packet with a payload of at
/// least [`SPLIT_PAYLOAD_MIN_BYTES`], only the head goes into `batch` and the payload is
/// returned: it must be sent right after the bytes now in `batch`, before anything else.
pub fn encode(packet: Packet, batch: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
    let (r#type, connect_id, error, payload) = match packet {
        Packet {
            r#type,
            payload:
                Some(Payload::Data(Data {
                    connect_id,
                    error,
                    data,
                })),
        } if data.len() >= SPLIT_PAYLOAD_MIN_BYTES => (r#type, connect_id, error, data),
        packet => {
            let len = checked_len(packet.encoded_len())?;
            batch.reserve(PREFIX_BYTES + len as usize);
            batch.put_u8(0);
            batch.put_u32(len);
            // `reserve` above made room for the whole message, so this cannot fail.
            packet.encode_raw(batch);
            return Ok(None);
        }
    };
    let head = Packet {
        r#type,
        payload: None,
    };
    let data_head = Data {
        connect_id,
        error,
        data: Bytes::new(),
    };
    let data_len = data_head.encoded_len()
        + key_len(DATA_BYTES_FIELD)
        + encoded_len_varint(payload.len() as u64)
        + payload.len();
    let len = checked_len(
        head.encoded_len()
            + key_len(PACKET_DATA_FIELD)
            + encoded_len_varint(data_len as u64)
            + data_len,
    )?;
    batch.reserve(PREFIX_BYTES + len as usize - payload.len());
    batch.put_u8(0);
    batch.put_u32(len);
    head.encode_raw(batch);
    encode_key(PACKET_DATA_FIELD, WireType::LengthDelimited, batch);
    encode_varint(data_len as u64, batch);
    data_head.encode_raw(batch);
    encode_key(DATA_BYTES_FIELD, WireType::LengthDelimited, batch);
    encode_varint(payload.len() as u64, batch);
    Ok(Some(payload))
}

fn key_len(field: u32) -> usize {
    encoded_len_varint(u64::from(field << 3))
}

fn checked_len(len: usize) -> Result<u32, WireError> {
    if len > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge {
            len,
            max: MAX_MESSAGE_BYTES,
        });
    }
    // MAX_MESSAGE_BYTES < u32::MAX.
    Ok(len as u32)
}

/// Received HTTP/2 DATA frames as one `Buf`, without concatenating them.
#[derive(Debug, Default)]
struct Frames {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Frames {
    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// The first `N` bytes, wherever the frame boundaries fall; the caller checked `len >= N`.
    fn peek<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = (N - filled).min(chunk.len());
            out[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == N {
                break;
            }
        }
        out
    }
}

impl Buf for Frames {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(
            cnt <= self.len,
            "advance past the end of the received frames"
        );
        self.len -= cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if cnt < front.len() {
                front.advance(cnt);
                break;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    /// The point of this type: a payload inside one frame is a slice of it, not a copy.
    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(
            len <= self.len,
            "copy_to_bytes past the end of the received frames"
        );
        if let Some(front) = self.chunks.front_mut() {
            if len <= front.len() {
                let out = front.split_to(len);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                self.len -= len;
                return out;
            }
        }
        let mut out = BytesMut::with_capacity(len);
        out.put((&mut *self).take(len));
        out.freeze()
    }
}

/// Reassembles `Packet`s from the DATA frames of one gRPC stream.
#[derive(Debug, Default)]
pub struct Decoder {
    frames: Frames,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next DATA frame's bytes.
    pub fn push(&mut self, frame: Bytes) {
        self.frames.push(frame);
    }

    /// Bytes received but not yet decoded (part of a message).
    pub fn buffered(&self) -> usize {
        self.frames.len
    }

    /// The next complete packet, `None` if more frames are needed. An error leaves the decoder
    /// unusable: the stream must be closed.
    pub fn decode(&mut self) -> Result<Option<Packet>, WireError> {
        if self.frames.len < PREFIX_BYTES {
            return Ok(None);
        }
        let [flag, l0, l1, l2, l3] = self.frames.peek::<PREFIX_BYTES>();
        match flag {
            0 => {}
            1 => return Err(WireError::Compressed),
            other => return Err(WireError::BadFlag(other)),
        }
        let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if len > MAX_MESSAGE_BYTES {
            return Err(WireError::TooLarge {
                len,
                max: MAX_MESSAGE_BYTES,
            });
        }
        if self.frames.len < PREFIX_BYTES + len {
            return Ok(None);
        }
        self.frames.advance(PREFIX_BYTES);
        let mut message = (&mut self.frames).take(len);
        let packet = Packet::decode(&mut message);
        // A decode error may stop early; never leave part of this message behind.
        let rest = message.remaining();
        self.frames.advance(rest);
        Ok(Some(packet?))
    }

    /// Checks that the stream ended on a message boundary.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.frames.len {
            0 => Ok(()),
            buffered => Err(WireError::Truncated { buffered }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::PacketType;

    fn grpc_frame(p: &Packet) -> Vec<u8> {
        let body = p.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn encode_all(packets: &[Packet]) -> Vec<Bytes> {
        let mut batch = BytesMut::new();
        let mut frames = Vec::new();
        for p in packets {
            if let Some(payload) = encode(p.clone(), &mut batch).unwrap() {
                frames.push(batch.split().freeze());
                frames.push(payload);
            }
        }
        if !batch.is_empty() {
            frames.push(batch.split().freeze());
        }
        frames
    }

    fn samples() -> Vec<Packet> {
        vec![
            Packet::dial_request("tcp", "10.0.0.1:10250", 42),
            Packet::data(7, Bytes::from(vec![1u8; 10])),
            Packet::data(-1, Bytes::from(vec![2u8; SPLIT_PAYLOAD_MIN_BYTES])),
            Packet::data(1 << 40, Bytes::from(vec![3u8; 300_000])),
            Packet::data(9, Bytes::new()),
            Packet::close_request(7),
            Packet::credit(7, 1 << 20),
            Packet::drain(),
            Packet {
                r#type: PacketType::Data as i32,
                payload: Some(Payload::Data(Data {
                    connect_id: 5,
                    error: "broken pipe".into(),
                    data: Bytes::from(vec![4u8; 70_000]),
                })),
            },
        ]
    }

    #[test]
    fn split_encoding_is_byte_for_byte_what_prost_and_grpc_produce() {
        for p in samples() {
            let wire: Vec<u8> = encode_all(std::slice::from_ref(&p)).concat();
            assert_eq!(wire, grpc_frame(&p), "packet {p:?}");
        }
    }

    #[test]
    fn large_payloads_leave_uncopied() {
        let payload = Bytes::from(vec![9u8; 65_536]);
        let mut batch = BytesMut::new();
        let out = encode(Packet::data(3, payload.clone()), &mut batch)
            .unwrap()
            .expect("split");
        assert_eq!(out.as_ptr(), payload.as_ptr(), "same allocation");
        assert!(
            batch.len() < 32,
            "only the head was written: {}",
            batch.len()
        );
    }

    #[test]
    fn decodes_across_any_frame_boundaries() {
        let packets = samples();
        let wire: Vec<u8> = encode_all(&packets).concat();
        for cut in [1, 3, 5, 7, 1000, 4096, 65_536] {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for piece in wire.chunks(cut) {
                d.push(Bytes::copy_from_slice(piece));
                while let Some(p) = d.decode().unwrap() {
                    got.push(p);
                }
            }
            d.finish().unwrap();
            assert_eq!(got, packets, "cut {cut}");
        }
    }

    #[test]
    fn a_payload_inside_one_frame_is_sliced_not_copied() {
        let frames = encode_all(&[Packet::data(3, Bytes::from(vec![5u8; 65_536]))]);
        assert_eq!(frames.len(), 2, "head and payload frames");
        let payload_ptr = frames[1].as_ptr();
        let mut d = Decoder::new();
        for f in frames {
            d.push(f);
        }
        let p = d.decode().unwrap().unwrap();
        let Some(Payload::Data(data)) = p.payload else {
            panic!("not DATA")
        };
        assert_eq!(data.data.as_ptr(), payload_ptr);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        let mut d = Decoder::new();
        d.push(Bytes::from_static(&[1, 0, 0, 0, 0]));
        assert!(matches!(d.decode(), Err(WireError::Compressed)));

        let mut d = Decoder::new();
        d.push(Bytes::from_static(&[7, 0, 0, 0, 0]));
        assert!(matches!(d.decode(), Err(WireError::BadFlag(7))));

        let mut d = Decoder::new();
        d.push(Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]));
        assert!(matches!(d.decode(), Err(WireError::TooLarge { .. })));

        let mut d = Decoder::new();
        d.push(Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]));
        assert!(matches!(d.decode(), Err(WireError::Protobuf(_))));
        assert_eq!(d.buffered(), 0, "the bad message was consumed whole");

        let mut d = Decoder::new();
        d.push(Bytes::from_static(&[0, 0, 0, 0, 9, 8]));
        assert!(d.decode().unwrap().is_none());
        assert!(matches!(
            d.finish(),
            Err(WireError::Truncated { buffered: 6 })
        ));
    }

    #[test]
    fn an_empty_message_is_a_default_packet() {
        let mut d = Decoder::new();
        d.push(Bytes::from_static(&[0, 0, 0, 0, 0]));
        assert_eq!(d.decode().unwrap(), Some(Packet::default()));
    }
}
