//! The wire pieces shared by the stand-in and the client: WebSocket subprotocol names, the
//! channel framing of `*.channel.k8s.io`, v5's close signal, the port-forward port prefix, the
//! `metav1.Status` exit-status encoding and the terminal-resize message.
//!
//! Everything here is pure (no I/O) so it can be unit-tested byte for byte against what
//! client-go and the CRI streaming server put on the wire.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Exec/attach subprotocol with v4 framing plus the `[255, channel]` half-close signal.
/// Preferred: it is the only one that can tell a process its stdin ended.
pub const V5_CHANNEL_PROTOCOL: &str = "v5.channel.k8s.io";
/// Exec/attach (and port-forward) subprotocol: binary channel framing, JSON `Status` on
/// channel 3. What every CRI streaming server behind a real kubelet accepts.
pub const V4_CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";
/// Legacy binary channel protocol (also what an upgrade offering no subprotocol gets): same
/// framing, but the error channel carries plain text and only on failure.
pub const LEGACY_CHANNEL_PROTOCOL: &str = "channel.k8s.io";
/// Port-forward protocol name; accepted by the stand-in as a WebSocket subprotocol meaning
/// "v4 channel framing", offered by the client after `v4.channel.k8s.io`.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// Channel carrying the process's stdin (client → server).
pub const STDIN_CHANNEL: u8 = 0;
/// Channel carrying the process's stdout (server → client).
pub const STDOUT_CHANNEL: u8 = 1;
/// Channel carrying the process's stderr (server → client).
pub const STDERR_CHANNEL: u8 = 2;
/// Channel carrying the exit status (`metav1.Status` JSON in v4/v5), server → client.
pub const ERROR_CHANNEL: u8 = 3;
/// Channel carrying terminal-size JSON (client → server).
pub const RESIZE_CHANNEL: u8 = 4;
/// First byte of a v5 close signal: `[255, channel]` half-closes `channel`.
pub const CLOSE_SIGNAL: u8 = 255;

/// `metav1.Status.reason` of a process that exited with a non-zero code.
pub const NON_ZERO_EXIT_CODE_REASON: &str = "NonZeroExitCode";
/// `StatusCause.type` (JSON key `reason`) whose message is the decimal exit code.
pub const EXIT_CODE_CAUSE: &str = "ExitCode";
/// `metav1.Status.reason` of a failure that is not an exit code (spawn failure, …).
pub const INTERNAL_ERROR_REASON: &str = "InternalError";

/// Which exec/attach channel protocol a WebSocket negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelProtocol {
    /// `v5.channel.k8s.io`: v4 plus the close signal.
    V5,
    /// `v4.channel.k8s.io`: JSON status, no half-close.
    V4,
    /// `channel.k8s.io` or no subprotocol at all: plain-text error only on failure.
    Legacy,
}

impl ChannelProtocol {
    /// The subprotocol name echoed in `Sec-WebSocket-Protocol` (`None` when the client
    /// offered none, which means [`ChannelProtocol::Legacy`]).
    pub fn name(self) -> &'static str {
        match self {
            ChannelProtocol::V5 => V5_CHANNEL_PROTOCOL,
            ChannelProtocol::V4 => V4_CHANNEL_PROTOCOL,
            ChannelProtocol::Legacy => LEGACY_CHANNEL_PROTOCOL,
        }
    }

    /// Maps a subprotocol name to the protocol, `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            V5_CHANNEL_PROTOCOL => Some(ChannelProtocol::V5),
            V4_CHANNEL_PROTOCOL => Some(ChannelProtocol::V4),
            LEGACY_CHANNEL_PROTOCOL => Some(ChannelProtocol::Legacy),
            _ => None,
        }
    }

    /// Whether the error channel carries a JSON `metav1.Status` (also on success).
    pub fn has_json_status(self) -> bool {
        matches!(self, ChannelProtocol::V5 | ChannelProtocol::V4)
    }

    /// Whether the `[255, channel]` close signal exists (v5 only).
    pub fn supports_close_signal(self) -> bool {
        self == ChannelProtocol::V5
    }
}

/// A frame that breaks the channel protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A binary message without even the channel byte.
    #[error("empty WebSocket message: every channel-protocol message starts with a channel byte")]
    Empty,
    /// A v5 close signal that is not exactly two bytes (the Go server closes the connection).
    #[error("malformed v5 close signal of {len} bytes: it must be exactly [255, channel]")]
    BadCloseSignal {
        /// The message length.
        len: usize,
    },
    /// A port-forward prefix that is not exactly two little-endian bytes.
    #[error("malformed port-forward prefix of {len} bytes on channel {channel}: expected the port as 2 little-endian bytes")]
    BadPortPrefix {
        /// The channel it arrived on.
        channel: u8,
        /// The payload length.
        len: usize,
    },
}

/// One binary message: `channel` byte followed by the payload.
pub fn encode_frame(channel: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 1);
    buf.put_u8(channel);
    buf.put_slice(payload);
    buf.freeze()
}

/// Splits a binary message into channel and payload. A one-byte message (the server's initial
/// empty frame) is valid and has an empty payload.
pub fn decode_frame(msg: &[u8]) -> Result<(u8, &[u8]), FrameError> {
    match msg.split_first() {
        Some((channel, payload)) => Ok((*channel, payload)),
        None => Err(FrameError::Empty),
    }
}

/// The v5 half-close signal for `channel`: exactly `[255, channel]`.
pub fn close_signal(channel: u8) -> Bytes {
    Bytes::copy_from_slice(&[CLOSE_SIGNAL, channel])
}

/// What a client → server message on an exec/attach WebSocket means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// Payload for `channel` (stdin or resize).
    Data {
        /// Channel byte.
        channel: u8,
        /// Payload after the channel byte.
        payload: &'a [u8],
    },
    /// v5 half-close of `channel`.
    Close {
        /// The channel being closed.
        channel: u8,
    },
}

/// Parses a client → server binary message under `protocol`. `255` is only a close signal in
/// v5 (in older protocols it is just an out-of-range channel, which servers ignore).
pub fn parse_client_frame(
    protocol: ChannelProtocol,
    msg: &[u8],
) -> Result<ClientFrame<'_>, FrameError> {
    let (channel, payload) = decode_frame(msg)?;
    if channel == CLOSE_SIGNAL && protocol.supports_close_signal() {
        return match payload {
            [closed] => Ok(ClientFrame::Close { channel: *closed }),
            _ => Err(FrameError::BadCloseSignal { len: msg.len() }),
        };
    }
    Ok(ClientFrame::Data { channel, payload })
}

/// The port-forward data channel of the `index`-th port (`2 * index`).
pub fn port_data_channel(index: usize) -> Option<u8> {
    u8::try_from(index.checked_mul(2)?).ok()
}

/// The port-forward error channel of the `index`-th port (`2 * index + 1`).
pub fn port_error_channel(index: usize) -> Option<u8> {
    u8::try_from(index.checked_mul(2)?.checked_add(1)?).ok()
}

/// The first message the server sends on every port-forward channel: the channel byte and the
/// port as two little-endian bytes.
pub fn port_prefix_frame(channel: u8, port: u16) -> Bytes {
    encode_frame(channel, &port.to_le_bytes())
}

/// Decodes the payload of a port-forward prefix message (exactly two little-endian bytes).
pub fn decode_port_prefix(channel: u8, payload: &[u8]) -> Result<u16, FrameError> {
    match payload {
        [lo, hi] => Ok(u16::from_le_bytes([*lo, *hi])),
        _ => Err(FrameError::BadPortPrefix {
            channel,
            len: payload.len(),
        }),
    }
}

/// `metav1.Status` as the CRI streaming server writes it on the error channel. Only the
/// fields the exec protocol uses; `metadata` is always present (empty), as Go marshals it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Status {
    /// Always `{}` on this channel.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// `Success` or `Failure`.
    #[serde(default)]
    pub status: String,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Machine-readable reason (`NonZeroExitCode`, `InternalError`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Causes; for `NonZeroExitCode` the `ExitCode` cause carries the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// HTTP-like code (500 for `InternalError`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
}

/// `metav1.StatusDetails`, reduced to the causes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusDetails {
    /// The causes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// `metav1.StatusCause`; Go serialises the `Type` field under the JSON key `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusCause {
    /// The cause type (`ExitCode`).
    #[serde(default, rename = "reason")]
    pub cause_type: String,
    /// The cause message (the decimal exit code).
    #[serde(default)]
    pub message: String,
}

impl Status {
    /// `{"metadata":{},"status":"Success"}`.
    pub fn success() -> Self {
        Status {
            status: "Success".into(),
            ..Status::default()
        }
    }

    /// The `NonZeroExitCode` failure for `code`, worded like the CRI streaming server;
    /// `command` is the argv, shown in the message.
    pub fn exit_code(code: i32, command: &[String]) -> Self {
        Status {
            status: "Failure".into(),
            message: Some(format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                command.join(" ")
            )),
            reason: Some(NON_ZERO_EXIT_CODE_REASON.into()),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    cause_type: EXIT_CODE_CAUSE.into(),
                    message: code.to_string(),
                }],
            }),
            code: None,
            metadata: serde_json::Map::new(),
        }
    }

    /// An `InternalError` failure (code 500), e.g. the command could not be started.
    pub fn internal_error(message: &str) -> Self {
        Status {
            status: "Failure".into(),
            message: Some(format!("Internal error occurred: {message}")),
            reason: Some(INTERNAL_ERROR_REASON.into()),
            details: None,
            code: Some(500),
            metadata: serde_json::Map::new(),
        }
    }

    /// The JSON bytes written on the error channel.
    pub fn to_json(&self) -> Bytes {
        // Serialising a struct of strings, integers and a string map cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// How a remote command ended, decoded from the error channel as client-go decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// `status: Success`: exit code 0.
    Success,
    /// `NonZeroExitCode` with its `ExitCode` cause (client-go parses it as 0–255).
    NonZero {
        /// The exit code.
        code: u8,
        /// The server's message.
        message: String,
    },
    /// Any other failure (the command could not be started, the runtime failed, …).
    Failure {
        /// The `reason` field (may be empty).
        reason: String,
        /// The `message` field.
        message: String,
    },
}

impl ExitStatus {
    /// The process exit code: `Some(0)` on success, the code for `NonZero`, `None` when the
    /// command did not run to an exit code.
    pub fn code(&self) -> Option<i32> {
        match self {
            ExitStatus::Success => Some(0),
            ExitStatus::NonZero { code, .. } => Some(i32::from(*code)),
            ExitStatus::Failure { .. } => None,
        }
    }

    /// Whether the command exited with code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Success
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Success => f.write_str("command succeeded"),
            ExitStatus::NonZero { code, .. } => {
                write!(f, "command terminated with exit code {code}")
            }
            ExitStatus::Failure { reason, message } if reason.is_empty() => f.write_str(message),
            ExitStatus::Failure { reason, message } => write!(f, "{message} ({reason})"),
        }
    }
}

/// A status message on the error channel that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// Not JSON, or not a `Status` object.
    #[error("error stream protocol error: {0}")]
    Json(String),
    /// `NonZeroExitCode` without an `ExitCode` cause holding a 0–255 decimal.
    #[error(
        "error stream protocol error: NonZeroExitCode status without a valid ExitCode cause ({0})"
    )]
    MissingExitCode(String),
    /// A `status` that is neither `Success` nor `Failure`.
    #[error("error stream protocol error: unknown error (status {0:?})")]
    Unknown(String),
}

/// Decodes a v4/v5 error-channel message the way client-go's `errorDecoderV4` does.
pub fn decode_status(json: &[u8]) -> Result<ExitStatus, StatusError> {
    let status: Status =
        serde_json::from_slice(json).map_err(|e| StatusError::Json(e.to_string()))?;
    match status.status.as_str() {
        "Success" => Ok(ExitStatus::Success),
        "Failure" => {
            let reason = status.reason.unwrap_or_default();
            let message = status.message.unwrap_or_default();
            if reason != NON_ZERO_EXIT_CODE_REASON {
                return Ok(ExitStatus::Failure { reason, message });
            }
            let details = status
                .details
                .ok_or_else(|| StatusError::MissingExitCode("no details".into()))?;
            let cause = details
                .causes
                .iter()
                .find(|c| c.cause_type == EXIT_CODE_CAUSE)
                .ok_or_else(|| StatusError::MissingExitCode("no ExitCode cause".into()))?;
            let code = cause.message.parse::<u8>().map_err(|_| {
                StatusError::MissingExitCode(format!("cause message {:?}", cause.message))
            })?;
            Ok(ExitStatus::NonZero { code, message })
        }
        other => Err(StatusError::Unknown(other.to_string())),
    }
}

/// Terminal size sent on the resize channel; Go's field names are capitalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips_channel_and_payload() {
        let f = encode_frame(STDOUT_CHANNEL, b"hello");
        assert_eq!(&f[..], b"\x01hello");
        assert_eq!(decode_frame(&f), Ok((1, &b"hello"[..])));
    }

    #[test]
    fn one_byte_frame_is_an_empty_payload() {
        assert_eq!(decode_frame(&[2]), Ok((2, &b""[..])));
    }

    #[test]
    fn empty_message_is_a_frame_error() {
        assert_eq!(decode_frame(&[]), Err(FrameError::Empty));
    }

    #[test]
    fn close_signal_is_exactly_two_bytes() {
        assert_eq!(&close_signal(STDIN_CHANNEL)[..], &[255, 0]);
    }

    #[test]
    fn v5_parses_close_signal_and_rejects_wrong_length() {
        assert_eq!(
            parse_client_frame(ChannelProtocol::V5, &[255, 0]),
            Ok(ClientFrame::Close { channel: 0 })
        );
        assert_eq!(
            parse_client_frame(ChannelProtocol::V5, &[255]),
            Err(FrameError::BadCloseSignal { len: 1 })
        );
        assert_eq!(
            parse_client_frame(ChannelProtocol::V5, &[255, 0, 0]),
            Err(FrameError::BadCloseSignal { len: 3 })
        );
    }

    #[test]
    fn v4_treats_255_as_an_ordinary_channel() {
        assert_eq!(
            parse_client_frame(ChannelProtocol::V4, &[255, 0]),
            Ok(ClientFrame::Data {
                channel: 255,
                payload: &[0]
            })
        );
    }

    #[test]
    fn port_prefix_is_little_endian() {
        assert_eq!(&port_prefix_frame(1, 8080)[..], &[1, 0x90, 0x1f]);
        assert_eq!(decode_port_prefix(0, &[0x90, 0x1f]), Ok(8080));
        assert_eq!(
            decode_port_prefix(0, &[0x90]),
            Err(FrameError::BadPortPrefix { channel: 0, len: 1 })
        );
    }

    #[test]
    fn port_channels_are_2i_and_2i_plus_1() {
        assert_eq!(port_data_channel(0), Some(0));
        assert_eq!(port_error_channel(0), Some(1));
        assert_eq!(port_data_channel(3), Some(6));
        assert_eq!(port_error_channel(3), Some(7));
        assert_eq!(port_error_channel(127), Some(255));
        assert_eq!(port_data_channel(128), None);
    }

    #[test]
    fn success_status_matches_go_encoding() {
        assert_eq!(
            &Status::success().to_json()[..],
            br#"{"metadata":{},"status":"Success"}"#
        );
    }

    #[test]
    fn exit_code_status_carries_exit_code_cause_under_reason_key() {
        let json = Status::exit_code(3, &["sh".into(), "-c".into(), "exit 3".into()]).to_json();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert!(v["message"].as_str().unwrap().contains("sh -c exit 3"));
        assert_eq!(
            decode_status(&json).unwrap().code(),
            Some(3),
            "our encoding decodes back"
        );
    }

    #[test]
    fn decodes_cri_success_without_metadata() {
        assert_eq!(
            decode_status(br#"{"status":"Success"}"#),
            Ok(ExitStatus::Success)
        );
    }

    #[test]
    fn decodes_go_non_zero_exit_status() {
        let go = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 42","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"42"}]}}"#;
        let status = decode_status(go).unwrap();
        assert_eq!(status.code(), Some(42));
        assert!(!status.success());
        assert_eq!(status.to_string(), "command terminated with exit code 42");
    }

    #[test]
    fn non_zero_exit_without_valid_cause_is_a_protocol_error() {
        let no_details = br#"{"status":"Failure","reason":"NonZeroExitCode"}"#;
        assert!(matches!(
            decode_status(no_details),
            Err(StatusError::MissingExitCode(_))
        ));
        let too_big = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"300"}]}}"#;
        assert!(matches!(
            decode_status(too_big),
            Err(StatusError::MissingExitCode(_))
        ));
    }

    #[test]
    fn internal_error_decodes_as_failure_without_code() {
        let json =
            Status::internal_error("error executing command in container: not found").to_json();
        let status = decode_status(&json).unwrap();
        assert_eq!(status.code(), None);
        match status {
            ExitStatus::Failure { reason, message } => {
                assert_eq!(reason, "InternalError");
                assert!(message.contains("not found"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_status_and_garbage_are_errors() {
        assert!(matches!(
            decode_status(br#"{"status":"Maybe"}"#),
            Err(StatusError::Unknown(_))
        ));
        assert!(matches!(
            decode_status(b"not json"),
            Err(StatusError::Json(_))
        ));
    }

    #[test]
    fn terminal_size_uses_go_field_names() {
        let s = serde_json::to_string(&TerminalSize {
            width: 80,
            height: 24,
        })
        .unwrap();
        assert_eq!(s, r#"{"Width":80,"Height":24}"#);
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in [
            ChannelProtocol::V5,
            ChannelProtocol::V4,
            ChannelProtocol::Legacy,
        ] {
            assert_eq!(ChannelProtocol::from_name(p.name()), Some(p));
        }
        assert_eq!(ChannelProtocol::from_name("v9.channel.k8s.io"), None);
    }
}
