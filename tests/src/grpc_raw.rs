//! A raw gRPC client on the `h2` crate, for sending what no well-behaved client sends:
//! streams without metadata, garbage message bytes, packets for unknown connections.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Request};
use konnectivity_proto::Packet;
use prost::Message;
use tokio::task::JoinHandle;

use crate::error::{HarnessError, Result};
use crate::tls::Io;

/// Largest gRPC message accepted from a peer (grpc-go's default receive limit, 4 MiB).
pub const MAX_MESSAGE: usize = 4 << 20;
/// Deadline for one awaited event on a raw stream.
pub const RAW_EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/2 connection speaking gRPC framing.
pub struct RawGrpc {
    send: SendRequest<Bytes>,
    driver: JoinHandle<()>,
}

/// What arrived next on a raw stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One decoded `Packet`.
    Packet(Packet),
    /// The stream ended with this `grpc-status` and `grpc-message` (trailers or
    /// trailers-only response).
    Status {
        /// `grpc-status` (0 = OK, 2 = Unknown, …); `None` if absent.
        code: Option<u32>,
        /// `grpc-message`, percent-decoded.
        message: String,
    },
    /// The stream was reset or the connection closed, without a gRPC status.
    Reset(String),
}

fn h2err(what: &str) -> impl FnOnce(h2::Error) -> HarnessError + '_ {
    move |source| HarnessError::H2 {
        what: what.to_string(),
        source,
    }
}

fn status_of(headers: &HeaderMap) -> Option<Event> {
    let code = headers.get("grpc-status")?;
    let code = code.to_str().ok().and_then(|c| c.parse().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some(Event::Status { code, message })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Frames `payload` as one gRPC message (uncompressed flag + 4-byte big-endian length).
pub fn frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

impl RawGrpc {
    /// HTTP/2 client handshake over `io` (already TLS with ALPN h2, or a Unix socket).
    pub async fn over<IO: Io>(io: IO) -> Result<RawGrpc> {
        let (send, conn) = h2::client::handshake(io)
            .await
            .map_err(h2err("client handshake"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(RawGrpc { send, driver })
    }

    /// Opens a bidi stream on `path` (e.g. [`konnectivity_proto::CONNECT_PATH`]) with the
    /// given metadata headers.
    pub async fn open(&mut self, path: &str, metadata: &[(&str, &str)]) -> Result<RawStream> {
        let mut builder = Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in metadata {
            builder = builder.header(*k, *v);
        }
        let req = builder
            .body(())
            .map_err(|e| HarnessError::Protocol(format!("building request for {path}: {e}")))?;
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .map_err(h2err("waiting for stream capacity"))?;
        let (response, stream) = send
            .send_request(req, false)
            .map_err(h2err("opening stream"))?;
        let response = tokio::spawn(response);
        Ok(RawStream {
            send: stream,
            response: Some(response),
            recv: None,
            buf: BytesMut::new(),
            ended: false,
        })
    }
}

impl Drop for RawGrpc {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

type ResponseTask = JoinHandle<std::result::Result<http::Response<RecvStream>, h2::Error>>;

/// One raw gRPC stream.
pub struct RawStream {
    send: SendStream<Bytes>,
    response: Option<ResponseTask>,
    recv: Option<RecvStream>,
    buf: BytesMut,
    ended: bool,
}

impl RawStream {
    /// Sends `packet` as one gRPC message.
    pub fn send_packet(&mut self, packet: &Packet) -> Result<()> {
        self.send_raw(frame(&packet.encode_to_vec()))
    }

    /// Sends arbitrary bytes as DATA (callers build malformed frames with [`frame`]).
    pub fn send_raw(&mut self, data: Bytes) -> Result<()> {
        self.send
            .send_data(data, false)
            .map_err(h2err("sending data"))
    }

    /// Ends the request side (half-close).
    pub fn finish(&mut self) -> Result<()> {
        self.send
            .send_data(Bytes::new(), true)
            .map_err(h2err("half-closing"))
    }

    /// Awaits the response head (once): `Ok(headers)` for a normal response, `Err(event)`
    /// for a trailers-only response (the final status) or a reset.
    async fn await_head(&mut self) -> Result<std::result::Result<HeaderMap, Event>> {
        let task = self
            .response
            .take()
            .ok_or_else(|| HarnessError::Protocol("response headers already consumed".into()))?;
        let resp = match tokio::time::timeout(RAW_EVENT_TIMEOUT, task).await {
            Err(_) => {
                return Err(HarnessError::timeout(
                    "gRPC response headers",
                    RAW_EVENT_TIMEOUT,
                ))
            }
            Ok(Err(e)) => return Err(HarnessError::Protocol(format!("response task failed: {e}"))),
            Ok(Ok(Err(e))) => {
                self.ended = true;
                return Ok(Err(Event::Reset(e.to_string())));
            }
            Ok(Ok(Ok(resp))) => resp,
        };
        if let Some(status) = status_of(resp.headers()) {
            self.ended = true;
            return Ok(Err(status));
        }
        let headers = resp.headers().clone();
        self.recv = Some(resp.into_body());
        Ok(Ok(headers))
    }

    /// The response headers (metadata such as `serverid`), or the final event if the server
    /// answered with a trailers-only response or a reset.
    pub async fn headers(&mut self) -> Result<std::result::Result<HeaderMap, Event>> {
        self.await_head().await
    }

    /// The next event: a packet, the final status, or a reset. Bounded by
    /// [`RAW_EVENT_TIMEOUT`].
    pub async fn next(&mut self) -> Result<Event> {
        tokio::time::timeout(RAW_EVENT_TIMEOUT, self.next_inner())
            .await
            .map_err(|_| HarnessError::timeout("the next gRPC event", RAW_EVENT_TIMEOUT))?
    }

    /// The next packet, skipping nothing: anything other than a packet is an error.
    pub async fn next_packet(&mut self) -> Result<Packet> {
        match self.next().await? {
            Event::Packet(p) => Ok(p),
            other => Err(HarnessError::Protocol(format!(
                "expected a packet, got {other:?}"
            ))),
        }
    }

    async fn next_inner(&mut self) -> Result<Event> {
        if self.response.is_some() {
            if let Err(event) = self.await_head().await? {
                return Ok(event);
            }
        }
        if self.ended {
            return Err(HarnessError::Protocol("stream already ended".into()));
        }
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Err(HarnessError::Protocol(format!(
                        "peer sent a {len}-byte message"
                    )));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let msg = self.buf.split_to(len);
                    let packet = Packet::decode(msg.freeze()).map_err(|e| {
                        HarnessError::Protocol(format!("peer sent an undecodable Packet: {e}"))
                    })?;
                    return Ok(Event::Packet(packet));
                }
            }
            let recv = self
                .recv
                .as_mut()
                .ok_or_else(|| HarnessError::Protocol("no response body".into()))?;
            match recv.data().await {
                Some(Ok(chunk)) => {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Ok(Event::Reset(e.to_string()));
                }
                None => {
                    self.ended = true;
                    return match recv.trailers().await {
                        Ok(Some(trailers)) => Ok(status_of(&trailers).unwrap_or(Event::Status {
                            code: None,
                            message: String::new(),
                        })),
                        Ok(None) => Ok(Event::Reset("stream ended without trailers".into())),
                        Err(e) => Ok(Event::Reset(e.to_string())),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_prefixes_flag_and_big_endian_length() {
        assert_eq!(&frame(b"abc")[..], &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn percent_decoding_of_grpc_messages() {
        assert_eq!(
            percent_decode("expected one agent ID%2C got []"),
            "expected one agent ID, got []"
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}
