//! The Konnectivity wire protocol, generated from package-less copies of upstream's protos.
//!
//! Upstream's `.proto` files carry no `package` statement, so the gRPC paths are exactly
//! `/ProxyService/Proxy` and `/AgentService/Connect`; keeping ours package-less is what makes
//! our binaries interchangeable with the Go ones on the wire.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::doc_lazy_continuation)]

mod generated {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

pub use generated::agent_service_client::AgentServiceClient;
pub use generated::agent_service_server::{AgentService, AgentServiceServer};
pub use generated::packet::Payload;
pub use generated::proxy_service_client::ProxyServiceClient;
pub use generated::proxy_service_server::{ProxyService, ProxyServiceServer};
pub use generated::{
    CloseDial, CloseRequest, CloseResponse, Credit, Data, DialRequest, DialResponse, Drain, Packet,
    PacketType,
};

pub mod wire;

/// Messages of the QUIC transport's control stream (an extension; see `proto/quic.proto`).
pub mod quic {
    pub use super::generated::control_message::Kind as ControlKind;
    pub use super::generated::{AgentHello, ControlMessage, ServerHello};
}

/// gRPC path of the frontend service (kube-apiserver → proxy-server).
pub const PROXY_PATH: &str = "/ProxyService/Proxy";
/// gRPC path of the backend service (proxy-agent → proxy-server).
pub const CONNECT_PATH: &str = "/AgentService/Connect";

/// Every `PacketType` name in enum order (index = the type's number): the `packet_type` label
/// values of both binaries' `stream_packets_total`, so metrics can pre-index them.
pub const PACKET_TYPE_NAMES: [&str; 8] = [
    "DIAL_REQ",
    "DIAL_RSP",
    "CLOSE_REQ",
    "CLOSE_RSP",
    "DATA",
    "DIAL_CLS",
    "DRAIN",
    // Our flow-control extension; only seen on agent streams that negotiated it.
    "CREDIT",
];

/// A gRPC status code rendered as Go's `codes.Code.String()` (the `code` label of upstream's
/// `stream_errors_total`): implemented for `tonic::Code` and for a literal name.
pub trait CodeLabel {
    /// Go's name of the code, e.g. `Unavailable`.
    fn code_label(&self) -> &'static str;
}

impl CodeLabel for &'static str {
    fn code_label(&self) -> &'static str {
        self
    }
}

impl CodeLabel for tonic::Code {
    fn code_label(&self) -> &'static str {
        match self {
            tonic::Code::Ok => "OK",
            tonic::Code::Cancelled => "Canceled",
            tonic::Code::Unknown => "Unknown",
            tonic::Code::InvalidArgument => "InvalidArgument",
            tonic::Code::DeadlineExceeded => "DeadlineExceeded",
            tonic::Code::NotFound => "NotFound",
            tonic::Code::AlreadyExists => "AlreadyExists",
            tonic::Code::PermissionDenied => "PermissionDenied",
            tonic::Code::ResourceExhausted => "ResourceExhausted",
            tonic::Code::FailedPrecondition => "FailedPrecondition",
            tonic::Code::Aborted => "Aborted",
            tonic::Code::OutOfRange => "OutOfRange",
            tonic::Code::Unimplemented => "Unimplemented",
            tonic::Code::Internal => "Internal",
            tonic::Code::Unavailable => "Unavailable",
            tonic::Code::DataLoss => "DataLoss",
            tonic::Code::Unauthenticated => "Unauthenticated",
        }
    }
}

/// Constructors for every packet shape, so callers never build a `Packet` whose `type`
/// disagrees with its payload (receivers dispatch on `type`).
impl Packet {
    pub fn dial_request(protocol: &str, address: &str, random: i64) -> Self {
        Self::of(
            PacketType::DialReq,
            Payload::DialRequest(DialRequest {
                protocol: protocol.to_owned(),
                address: address.to_owned(),
                random,
            }),
        )
    }

    pub fn dial_response(random: i64, connect_id: i64, error: impl Into<String>) -> Self {
        Self::of(
            PacketType::DialRsp,
            Payload::DialResponse(DialResponse {
                error: error.into(),
                connect_id,
                random,
            }),
        )
    }

    pub fn data(connect_id: i64, data: impl Into<bytes::Bytes>) -> Self {
        Self::of(
            PacketType::Data,
            Payload::Data(Data {
                connect_id,
                error: String::new(),
                data: data.into(),
            }),
        )
    }

    pub fn close_request(connect_id: i64) -> Self {
        Self::of(
            PacketType::CloseReq,
            Payload::CloseRequest(CloseRequest { connect_id }),
        )
    }

    pub fn close_response(connect_id: i64, error: impl Into<String>) -> Self {
        Self::of(
            PacketType::CloseRsp,
            Payload::CloseResponse(CloseResponse {
                error: error.into(),
                connect_id,
            }),
        )
    }

    pub fn close_dial(random: i64) -> Self {
        Self::of(
            PacketType::DialCls,
            Payload::CloseDial(CloseDial { random }),
        )
    }

    pub fn drain() -> Self {
        Self::of(PacketType::Drain, Payload::Drain(Drain {}))
    }

    /// Flow-control credit (an extension, sent only to a peer that negotiated it): the
    /// receiver of `connect_id` has drained `bytes` more bytes.
    pub fn credit(connect_id: i64, bytes: u64) -> Self {
        Self::of(
            PacketType::Credit,
            Payload::Credit(Credit { connect_id, bytes }),
        )
    }

    fn of(kind: PacketType, payload: Payload) -> Self {
        Packet {
            r#type: kind as i32,
            payload: Some(payload),
        }
    }

    /// The packet's declared type; `None` for a type number this build does not know.
    pub fn kind(&self) -> Option<PacketType> {
        PacketType::try_from(self.r#type).ok()
    }

    /// Upstream's enum name for metrics labels and logs (`DIAL_REQ`, …, `Unknown`).
    pub fn kind_name(&self) -> &'static str {
        match self.kind() {
            Some(k) => k.as_str_name(),
            None => "Unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn hex(p: &Packet) -> String {
        p.encode_to_vec()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Hand-checked encodings: field numbers and wire types are the compatibility contract.
    #[test]
    fn every_packet_type_encodes_to_upstream_bytes() {
        // DIAL_REQ: type 0 is elided; field 2 (len) { 1:"tcp", 2:"a:1", 3:5 }
        assert_eq!(
            hex(&Packet::dial_request("tcp", "a:1", 5)),
            "120c0a037463701203613a311805"
        );
        // DIAL_RSP: 08 01; field 3 (len) { 1:"e", 2:7, 3:5 }
        assert_eq!(
            hex(&Packet::dial_response(5, 7, "e")),
            "0801 1a07 0a0165 1007 1805".replace(' ', "")
        );
        // DATA: 08 04; field 4 (len) { 1:7, 3:"hi" }
        assert_eq!(
            hex(&Packet::data(7, b"hi".to_vec())),
            "0804 2206 0807 1a026869".replace(' ', "")
        );
        // CLOSE_REQ: 08 02; field 5 { 1:7 }
        assert_eq!(hex(&Packet::close_request(7)), "08022a020807");
        // CLOSE_RSP: 08 03; field 6 { 1:"x", 2:7 }
        assert_eq!(
            hex(&Packet::close_response(7, "x")),
            "0803 3205 0a0178 1007".replace(' ', "")
        );
        // DIAL_CLS: 08 05; field 7 { 1:5 }
        assert_eq!(hex(&Packet::close_dial(5)), "08053a020805");
        // DRAIN: 08 06; field 8 (empty message)
        assert_eq!(hex(&Packet::drain()), "08064200");
        // CREDIT (extension): 08 07; field 9 (len) { 1:7, 2:65536 }
        assert_eq!(
            hex(&Packet::credit(7, 65536)),
            "0807 4a06 0807 1080 8004".replace(' ', "")
        );
    }

    /// An upstream peer decodes CREDIT as an unknown type with no payload it knows: it logs
    /// and ignores it. Our decoder keeps the type and payload.
    #[test]
    fn credit_round_trips_and_is_a_new_type_number() {
        let p = Packet::decode(&Packet::credit(3, 9).encode_to_vec()[..]).expect("valid");
        assert_eq!(p.kind(), Some(PacketType::Credit));
        assert_eq!(p.kind_name(), "CREDIT");
        assert_eq!(
            p.payload,
            Some(Payload::Credit(Credit {
                connect_id: 3,
                bytes: 9
            }))
        );
    }

    #[test]
    fn quic_control_messages_round_trip() {
        use quic::*;
        let hello = AgentHello {
            agent_id: "a".into(),
            agent_identifiers: "host=n".into(),
            authorization: String::new(),
        };
        let back = AgentHello::decode(&hello.encode_to_vec()[..]).expect("valid");
        assert_eq!(back, hello);
        let drain = ControlMessage {
            kind: Some(ControlKind::Drain(Drain {})),
        };
        assert_eq!(
            ControlMessage::decode(&drain.encode_to_vec()[..]).expect("valid"),
            drain
        );
    }

    #[test]
    fn large_ids_use_varint_and_negative_is_ten_bytes() {
        assert_eq!(hex(&Packet::close_request(300)), "08022a0308ac02");
        // int64 (not sint64): -1 encodes as ten bytes, as in Go.
        assert_eq!(
            hex(&Packet::close_request(-1)),
            "08022a0b08ffffffffffffffffff01"
        );
    }

    #[test]
    fn decoding_unknown_type_keeps_number() {
        let bytes = [0x08, 0x63];
        let p = Packet::decode(&bytes[..]).expect("valid protobuf");
        assert_eq!(p.kind(), None);
        assert_eq!(p.kind_name(), "Unknown");
    }

    #[test]
    fn packet_type_names_follow_the_enum() {
        for (i, name) in PACKET_TYPE_NAMES.iter().enumerate() {
            let kind = PacketType::try_from(i as i32).expect("known type");
            assert_eq!(kind.as_str_name(), *name);
        }
        assert!(PacketType::try_from(PACKET_TYPE_NAMES.len() as i32).is_err());
    }

    #[test]
    fn grpc_codes_use_gos_names() {
        assert_eq!(tonic::Code::Cancelled.code_label(), "Canceled");
        assert_eq!(tonic::Code::Unavailable.code_label(), "Unavailable");
        assert_eq!("Custom".code_label(), "Custom");
    }

    #[test]
    fn service_paths_are_package_less() {
        assert_eq!(PROXY_PATH, "/ProxyService/Proxy");
        assert_eq!(CONNECT_PATH, "/AgentService/Connect");
    }
}
