//! The HTTP CONNECT handshake, byte for byte as kube-apiserver performs it.
//!
//! kube-apiserver writes `CONNECT host:port HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`, reads the
//! response through a buffered reader, requires status 200, and then refuses the connection if
//! the reader holds any byte past the response head: the socket is handed over raw, so bytes
//! that arrived with the `200` would otherwise be lost. We read in chunks for the same reason —
//! reading byte by byte would hide a proxy that coalesces the `200` with tunnel data.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ClientError;

/// Size of one read while waiting for the response head (Go's `bufio.Reader` default).
/// Cost: none beyond this buffer; larger reads only matter for error bodies.
const READ_CHUNK: usize = 4096;

/// Largest response head accepted. Cost: a proxy sending a longer head (huge headers) is
/// treated as broken; upstream's heads are under 100 bytes.
pub(crate) const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Most headers parsed in the response head. Cost: a head with more is a protocol error;
/// upstream sends at most two.
const MAX_HEADERS: usize = 32;

/// Largest error body read and kept (see [`crate::MAX_ERROR_BODY`]). Cost: longer bodies are
/// truncated; upstream's are a single line.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

/// The parsed response head.
struct Head {
    status: u16,
    reason: String,
    content_length: Option<usize>,
    /// Bytes of the head, i.e. the offset of the first body byte in the buffer.
    len: usize,
}

/// Sends the CONNECT request for `address` and checks the response. On success the stream is
/// positioned at the first tunnel byte with nothing read past the head.
pub(crate) async fn handshake<S>(io: &mut S, address: &str) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let closed = |reason: String| ClientError::Closed {
        address: address.to_string(),
        reason,
    };
    let protocol = |detail: String| ClientError::Protocol {
        address: address.to_string(),
        detail,
    };
    let request = format!("CONNECT {address} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| closed(format!("writing the CONNECT request failed: {e}")))?;
    io.flush()
        .await
        .map_err(|e| closed(format!("writing the CONNECT request failed: {e}")))?;

    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let head = loop {
        let mut chunk = [0u8; READ_CHUNK];
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| closed(format!("reading the CONNECT response failed: {e}")))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                closed("the proxy closed the connection without answering the CONNECT".into())
            } else {
                protocol(format!(
                    "the connection ended inside the response head after {} bytes",
                    buf.len()
                ))
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf).map_err(protocol)? {
            break head;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(protocol(format!(
                "the response head exceeds {MAX_RESPONSE_HEAD} bytes"
            )));
        }
    };

    if head.status == 200 {
        let extra = buf.len() - head.len;
        if extra > 0 {
            return Err(protocol(format!(
                "{extra} bytes of tunnel data arrived together with the 200 response; \
                 the proxy must not send data before the client speaks"
            )));
        }
        return Ok(());
    }

    // Error response: collect the body (to EOF or Content-Length, bounded) for the message.
    let want = head
        .content_length
        .unwrap_or(MAX_ERROR_BODY)
        .min(MAX_ERROR_BODY);
    let mut body = buf.split_off(head.len.min(buf.len()));
    while body.len() < want {
        let mut chunk = [0u8; READ_CHUNK];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(want);
    Err(ClientError::ConnectRejected {
        address: address.to_string(),
        status: head.status,
        reason: head.reason,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Parses a complete response head out of `buf`; `Ok(None)` while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let status = response
                .code
                .ok_or_else(|| "the response has no status code".to_string())?;
            let content_length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            Ok(Some(Head {
                status,
                reason: response.reason.unwrap_or_default().to_string(),
                content_length,
                len,
            }))
        }
        Err(e) => Err(format!("malformed HTTP response head: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    /// Runs the handshake against a scripted peer that reads the request, then writes `reply`
    /// (one write per element) and closes. Returns the result and the request bytes seen.
    async fn run(reply: Vec<&'static [u8]>) -> (Result<(), ClientError>, Vec<u8>) {
        let (mut client, mut server): (DuplexStream, DuplexStream) = duplex(64 * 1024);
        let peer = tokio::spawn(async move {
            let mut req = Vec::new();
            let mut chunk = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = server.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed before finishing the request");
                req.extend_from_slice(&chunk[..n]);
            }
            // The client may give up (and hang up) before the whole reply is written.
            for part in reply {
                if server.write_all(part).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let _ = server.shutdown().await;
            req
        });
        let result = handshake(&mut client, "10.0.0.1:10250").await;
        drop(client);
        (result, peer.await.unwrap())
    }

    #[tokio::test]
    async fn request_is_exactly_what_kube_apiserver_sends() {
        let (result, req) = run(vec![b"HTTP/1.1 200 Connection Established\r\n\r\n"]).await;
        result.unwrap();
        assert_eq!(
            req,
            b"CONNECT 10.0.0.1:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec()
        );
    }

    #[tokio::test]
    async fn response_head_split_across_reads_is_accepted() {
        let (result, _) = run(vec![
            b"HTTP/1.1 200 Conn",
            b"ection Established\r",
            b"\n\r\n",
        ])
        .await;
        result.unwrap();
    }

    #[tokio::test]
    async fn data_coalesced_with_200_is_a_protocol_error() {
        let (result, _) = run(vec![b"HTTP/1.1 200 Connection Established\r\n\r\nhello"]).await;
        let err = result.unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
        assert!(err.to_string().contains("5 bytes"), "{err}");
    }

    #[tokio::test]
    async fn bad_gateway_carries_status_reason_and_body_verbatim() {
        let (result, _) = run(vec![
            b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
            b"dial tcp 127.0.0.1:18999: connect: connection refused",
        ])
        .await;
        match result.unwrap_err() {
            ClientError::ConnectRejected {
                status,
                reason,
                body,
                ..
            } => {
                assert_eq!(status, 502);
                assert_eq!(reason, "Bad Gateway");
                assert_eq!(
                    body,
                    "dial tcp 127.0.0.1:18999: connect: connection refused"
                );
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[tokio::test]
    async fn content_length_bounds_the_error_body() {
        let (result, _) = run(vec![
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 5\r\n\r\nshortEXTRA",
        ])
        .await;
        match result.unwrap_err() {
            ClientError::ConnectRejected { status, body, .. } => {
                assert_eq!(status, 405);
                assert_eq!(body, "short");
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[tokio::test]
    async fn garbage_response_is_a_protocol_error() {
        let (result, _) = run(vec![b"SSH-2.0-OpenSSH_9.6\r\n\r\n"]).await;
        let err = result.unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
    }

    #[tokio::test]
    async fn eof_before_any_response_is_closed() {
        let (result, _) = run(vec![]).await;
        let err = result.unwrap_err();
        assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    }

    #[tokio::test]
    async fn eof_inside_head_is_a_protocol_error() {
        let (result, _) = run(vec![b"HTTP/1.1 200 Conn"]).await;
        let err = result.unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
    }

    #[tokio::test]
    async fn endless_head_is_refused_once_over_the_limit() {
        static LONG: [u8; MAX_RESPONSE_HEAD + 10] = [b'a'; MAX_RESPONSE_HEAD + 10];
        let (result, _) = run(vec![b"HTTP/1.1 200 OK\r\nX-Pad: ", &LONG]).await;
        let err = result.unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
