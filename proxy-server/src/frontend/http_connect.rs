//! The HTTP CONNECT frontend: `CONNECT host:port HTTP/1.1`, answered byte for byte as upstream
//! does, then a raw tunnel.
//!
//! Responses are written by hand rather than through an HTTP server library because
//! kube-apiserver requires exactly `HTTP/1.1 200 Connection Established\r\n\r\n` with nothing
//! coalesced after it, and upstream's error responses carry specific headers only.

use std::sync::Arc;
use std::time::Duration;

use konnectivity_proto::{DialRequest, PacketType as T, Payload as P};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use crate::router::FrontendId;
use crate::state::{
    DialRefusal, FrontendRx, QuicTunnel, Shared, BACKEND_DIAL_TIMEOUT_ERROR, BACKEND_GONE_ERROR,
};
use konnectivity_tunnel::chunk::read_chunk;
use konnectivity_tunnel::quic::{self, io_to_quic, quic_to_io};

/// How long a client may take to send its request head (Go's `ReadHeaderTimeout` upstream).
/// Cost: an idle connection that never sends a request holds a socket this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest request head accepted. Cost: this much memory per connection while its head is read.
/// kube-apiserver's CONNECT head is under 100 bytes; Go allows 1 MiB, we need far less.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Bytes a client may send after its CONNECT head before the 200 arrives; they are forwarded
/// once the dial succeeds. Cost: memory per dialling connection; beyond it we stop reading.
pub const MAX_EARLY_BYTES: usize = 256 * 1024;

/// The success response, nothing more (no headers).
pub const CONNECTION_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

const NO_AGENT_RESPONSE: &str = "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ncurrently no tunnels available: No agent available";
const BACKEND_GONE_RESPONSE: &str = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBackend context error: context canceled\r\n";
const BACKEND_DIAL_TIMEOUT_RESPONSE: &str = "HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBackend dial timeout: timed out waiting for backend dial\r\n";
const METHOD_NOT_ALLOWED_RESPONSE: &str = "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: 45\r\n\r\nthis proxy only supports CONNECT passthrough\n";
const BAD_REQUEST_RESPONSE: &str = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request";
const HEADER_TOO_LARGE_RESPONSE: &str = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large";

/// What a request head turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// A CONNECT to `authority`; `consumed` bytes of the buffer were the head.
    Connect { authority: String, consumed: usize },
    /// Any other method.
    OtherMethod(String),
    /// Not a valid HTTP/1.x request head.
    Malformed(String),
    /// More bytes are needed.
    Partial,
}

/// Parses a request head from the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Head::Partial,
        Ok(httparse::Status::Complete(consumed)) => {
            let method = req.method.unwrap_or_default();
            if method != "CONNECT" {
                return Head::OtherMethod(method.to_owned());
            }
            let target = req.path.unwrap_or_default();
            if !valid_authority(target) {
                return Head::Malformed(format!("CONNECT target {target:?} is not host:port"));
            }
            Head::Connect {
                authority: target.to_owned(),
                consumed,
            }
        }
        Err(e) => Head::Malformed(e.to_string()),
    }
}

/// `host:port` or `[v6]:port` with a numeric port.
fn valid_authority(target: &str) -> bool {
    let Some((host, port)) = target.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
}

/// The full response upstream writes for a failed dial, chosen from the agent's error text.
pub fn dial_error_response(error: &str) -> String {
    if error == BACKEND_GONE_ERROR {
        return BACKEND_GONE_RESPONSE.to_owned();
    }
    if error == BACKEND_DIAL_TIMEOUT_ERROR {
        return BACKEND_DIAL_TIMEOUT_RESPONSE.to_owned();
    }
    let status = if error.contains("timeout") || error.contains("deadline exceeded") {
        "504 Gateway Timeout"
    } else if error.contains("too many open files") {
        "503 Service Unavailable"
    } else {
        "502 Bad Gateway"
    };
    format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{error}"
    )
}

/// Serves one client connection (already past TLS, or a Unix socket) to its end.
pub async fn serve<IO>(shared: Arc<Shared>, mut io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    shared.metrics.http_connection_opened();
    let outcome = serve_inner(&shared, &mut io).await;
    let _ = io.shutdown().await;
    shared.metrics.http_connection_closed();
    if let Err(why) = outcome {
        debug!(%why, "HTTP CONNECT connection ended");
    }
}

async fn respond<IO: AsyncWrite + Unpin>(io: &mut IO, response: &str) {
    let _ = io.write_all(response.as_bytes()).await;
    let _ = io.flush().await;
}

async fn read_head<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut Vec<u8>) -> Result<Head, String> {
    let mut chunk = [0u8; 4096];
    loop {
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err("client closed before sending a request".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(buf) {
            Head::Partial if buf.len() >= MAX_HEADER_BYTES => {
                return Ok(Head::Malformed("request head too large".into()))
            }
            Head::Partial => continue,
            head => return Ok(head),
        }
    }
}

async fn serve_inner<IO>(shared: &Arc<Shared>, io: &mut IO) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = Vec::with_capacity(1024);
    let head = match tokio::time::timeout(HEADER_READ_TIMEOUT, read_head(io, &mut buf)).await {
        Ok(head) => head?,
        Err(_) => return Err("client did not send a request head in time".into()),
    };
    let (authority, consumed) = match head {
        Head::Connect {
            authority,
            consumed,
        } => (authority, consumed),
        Head::OtherMethod(method) => {
            respond(io, METHOD_NOT_ALLOWED_RESPONSE).await;
            return Err(format!("refused method {method}"));
        }
        Head::Malformed(why) if buf.len() >= MAX_HEADER_BYTES => {
            respond(io, HEADER_TOO_LARGE_RESPONSE).await;
            return Err(why);
        }
        Head::Malformed(why) => {
            respond(io, BAD_REQUEST_RESPONSE).await;
            return Err(format!("malformed request: {why}"));
        }
        Head::Partial => {
            respond(io, BAD_REQUEST_RESPONSE).await;
            return Err("incomplete request head".into());
        }
    };
    let early = buf.split_off(consumed);
    // The head's buffer would otherwise live as long as the tunnel.
    drop(buf);

    let (id, sink, mut rx) = shared.add_frontend();
    let result = tunnel(shared, io, id, &sink, &mut rx, authority, early).await;
    shared.remove_frontend(id);
    result
}

async fn tunnel<IO>(
    shared: &Arc<Shared>,
    io: &mut IO,
    id: FrontendId,
    sink: &crate::state::FrontendSink,
    rx: &mut FrontendRx,
    authority: String,
    mut early: Vec<u8>,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request = DialRequest {
        protocol: "tcp".into(),
        address: authority.clone(),
        random: konnectivity_tunnel::random_dial_id(),
    };
    match shared.dial(id, &request).await {
        Ok(_) => {}
        Err(DialRefusal::NoAgent) => {
            respond(io, NO_AGENT_RESPONSE).await;
            return Err("no agent available".into());
        }
        Err(refusal) => {
            respond(io, &dial_error_response(&refusal.to_string())).await;
            return Err(refusal.to_string());
        }
    }

    // Wait for the agent's answer, watching the client: one that hangs up cancels the dial.
    let abort = sink.abort_token().clone();
    let connect_id = loop {
        tokio::select! {
            _ = abort.cancelled() => return Err("aborted while dialling".into()),
            packet = rx.queue.recv() => {
                let Some(packet) = packet else { return Err("frontend queue closed".into()) };
                match (packet.kind(), packet.payload) {
                    (Some(T::DialRsp), Some(P::DialResponse(rsp))) => {
                        if rsp.error.is_empty() && rsp.connect_id != 0 {
                            break rsp.connect_id;
                        }
                        info!(address = %authority, error = %rsp.error, "HTTP CONNECT dial failed");
                        respond(io, &dial_error_response(&rsp.error)).await;
                        return Err(rsp.error);
                    }
                    (kind, _) => {
                        respond(io, BACKEND_GONE_RESPONSE).await;
                        return Err(format!("agent ended the dial with {kind:?}"));
                    }
                }
            }
            r = read_chunk(&mut *io), if early.len() < MAX_EARLY_BYTES => match r {
                Ok(c) if !c.is_empty() => early.extend_from_slice(&c),
                _ => return Err("client hung up while dialling; dial cancelled".into()),
            },
        }
    };

    io.write_all(CONNECTION_ESTABLISHED)
        .await
        .map_err(|e| format!("writing 200 failed: {e}"))?;
    io.flush().await.map_err(|e| format!("flush failed: {e}"))?;
    debug!(frontend = id, connect_id, address = %authority, "HTTP CONNECT tunnel established");
    // A connection on a QUIC agent arrives (before its DIAL_RSP) as its own stream: pump raw
    // bytes, with QUIC's per-stream flow control as the only back-pressure.
    if let Some(tunnel) = rx.tunnels.try_recv() {
        if tunnel.connect_id == connect_id {
            return raw_quic(shared, io, tunnel, early, &abort).await;
        }
        // Not ours (cannot happen: one dial per HTTP CONNECT connection); drop it properly.
        let (mut send, mut recv) = (tunnel.send, tunnel.recv);
        let _ = send.reset(quic::STREAM_ABORTED);
        let _ = recv.stop(quic::STREAM_ABORTED);
    }
    if !early.is_empty() {
        shared
            .data_to_agent(id, connect_id, early)
            .await
            .map_err(str::to_owned)?;
    }

    let (mut rd, mut wr) = tokio::io::split(io);
    let upstream = async {
        loop {
            match read_chunk(&mut rd).await {
                Ok(c) if c.is_empty() => return "client closed the tunnel".to_string(),
                Err(e) => return format!("client read failed: {e}"),
                Ok(c) => {
                    if let Err(e) = shared.data_to_agent(id, connect_id, c).await {
                        return e.to_string();
                    }
                }
            }
        }
    };
    let downstream = async {
        while let Some(packet) = rx.queue.recv().await {
            match (packet.kind(), packet.payload) {
                (Some(T::Data), Some(P::Data(d))) => {
                    // Flush: a TLS writer may otherwise keep the last records buffered.
                    if let Err(e) = async {
                        wr.write_all(&d.data).await?;
                        wr.flush().await
                    }
                    .await
                    {
                        return format!("client write failed: {e}");
                    }
                    shared.frontend_drained(id, connect_id, d.data.len());
                }
                (Some(T::CloseRsp), _) | (Some(T::DialCls), _) => {
                    return "agent closed the connection".to_string()
                }
                _ => {}
            }
        }
        "frontend queue closed".to_string()
    };
    let why = tokio::select! {
        why = upstream => why,
        why = downstream => why,
        _ = abort.cancelled() => "aborted: client stopped reading or server stopping".to_string(),
    };
    Err(why)
}

/// Pumps raw bytes between the client and a QUIC stream until both directions are finished
/// (half-close travels both ways: the client's EOF becomes the stream's FIN and vice versa),
/// or either side fails (then the stream is reset).
async fn raw_quic<IO>(
    shared: &Arc<Shared>,
    io: &mut IO,
    tunnel: QuicTunnel,
    early: Vec<u8>,
    abort: &tokio_util::sync::CancellationToken,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let QuicTunnel {
        backend,
        connect_id,
        mut send,
        mut recv,
    } = tunnel;
    let outcome: Result<(), String> = async {
        if !early.is_empty() {
            send.write_all(&early)
                .await
                .map_err(|e| format!("agent stream failed: {e}"))?;
        }
        let (mut rd, mut wr) = tokio::io::split(&mut *io);
        let up = io_to_quic(&mut rd, &mut send);
        let down = quic_to_io(&mut recv, &mut wr);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        while !(up_done && down_done) {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(_) => up_done = true,
                    Err(e) => return Err(format!("client to agent: {e}")),
                },
                r = &mut down, if !down_done => match r {
                    Ok(_) => down_done = true,
                    Err(e) => return Err(format!("agent to client: {e}")),
                },
                _ = abort.cancelled() => {
                    return Err("aborted: server stopping".to_string());
                }
            }
        }
        Ok(())
    }
    .await;
    if outcome.is_err() {
        let _ = send.reset(quic::STREAM_ABORTED);
        let _ = recv.stop(quic::STREAM_ABORTED);
    }
    shared.close_quic_connection(backend, connect_id);
    outcome.and(Err("tunnel closed by both sides".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kube_apiserver_connect_head_and_keeps_trailing_bytes() {
        let raw = b"CONNECT 10.0.0.1:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\x16\x03\x01";
        match parse_head(raw) {
            Head::Connect {
                authority,
                consumed,
            } => {
                assert_eq!(authority, "10.0.0.1:10250");
                assert_eq!(&raw[consumed..], b"\x16\x03\x01");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            parse_head(b"CONNECT [fd00::1]:443 HTTP/1.1\r\n\r\n"),
            Head::Connect {
                authority: "[fd00::1]:443".into(),
                consumed: 34
            }
        );
    }

    #[test]
    fn other_methods_partial_and_garbage_are_told_apart() {
        assert_eq!(
            parse_head(b"GET /foo HTTP/1.1\r\n\r\n"),
            Head::OtherMethod("GET".into())
        );
        assert_eq!(parse_head(b"CONNECT a:1 HTTP/1.1\r\nHost"), Head::Partial);
        assert!(matches!(
            parse_head(b"\x00\x01garbage\r\n\r\n"),
            Head::Malformed(_)
        ));
        assert!(matches!(
            parse_head(b"CONNECT nohostport HTTP/1.1\r\n\r\n"),
            Head::Malformed(_)
        ));
        assert!(matches!(
            parse_head(b"CONNECT a:99999 HTTP/1.1\r\n\r\n"),
            Head::Malformed(_)
        ));
    }

    #[test]
    fn dial_errors_map_to_upstream_status_lines() {
        let refused = dial_error_response("dial tcp 127.0.0.1:18999: connect: connection refused");
        assert_eq!(
            refused,
            "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ndial tcp 127.0.0.1:18999: connect: connection refused"
        );
        assert!(dial_error_response("dial tcp 127.0.0.1:18500: i/o timeout")
            .starts_with("HTTP/1.1 504 Gateway Timeout\r\n"));
        assert!(dial_error_response("context deadline exceeded").starts_with("HTTP/1.1 504 "));
        assert!(dial_error_response("socket: too many open files")
            .starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(
            dial_error_response("dial tcp: lookup x.invalid: no such host")
                .starts_with("HTTP/1.1 502 ")
        );
        assert_eq!(
            dial_error_response(BACKEND_GONE_ERROR),
            BACKEND_GONE_RESPONSE
        );
        assert_eq!(
            dial_error_response(BACKEND_DIAL_TIMEOUT_ERROR),
            BACKEND_DIAL_TIMEOUT_RESPONSE
        );
    }

    #[test]
    fn method_not_allowed_body_length_matches_header() {
        let (_, body) = METHOD_NOT_ALLOWED_RESPONSE
            .split_once("\r\n\r\n")
            .expect("head/body");
        assert_eq!(body.len(), 45);
    }
}
