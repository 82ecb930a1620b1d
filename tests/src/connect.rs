//! Raw HTTP CONNECT exchanges, byte for byte, as kube-apiserver performs them.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{HarnessError, Result};

/// The exact success response upstream sends: no headers, nothing after it until the
/// destination speaks.
pub const CONNECT_OK: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// Exact upstream response when no agent is connected.
pub const NO_AGENT_500: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ncurrently no tunnels available: No agent available";

/// Exact head of upstream's 502 for a failed dial; the body is the agent's error text.
pub const BAD_GATEWAY_HEAD: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";

/// Bound on reading one CONNECT response: the agent's dial timeout is 5 s.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Writes the request kube-apiserver sends: `CONNECT <target> HTTP/1.1`, `Host: 127.0.0.1`.
pub async fn send_connect<IO: AsyncWrite + Unpin>(io: &mut IO, target: &str) -> Result<()> {
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    io.write_all(req.as_bytes())
        .await
        .map_err(|e| HarnessError::io(format!("sending CONNECT {target}"), e))?;
    io.flush()
        .await
        .map_err(|e| HarnessError::io(format!("flushing CONNECT {target}"), e))
}

/// Reads until EOF (the proxy closes after an error response), bounded by `timeout`.
pub async fn read_to_eof<IO: AsyncRead + Unpin>(io: &mut IO, timeout: Duration) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match tokio::time::timeout(timeout, io.read_to_end(&mut out)).await {
        Ok(Ok(_)) => Ok(out),
        // A reset after the response still leaves the bytes read so far.
        Ok(Err(e)) if !out.is_empty() && e.kind() != std::io::ErrorKind::WouldBlock => Ok(out),
        Ok(Err(e)) => Err(HarnessError::io("reading the CONNECT response", e)),
        Err(_) => Err(HarnessError::timeout(
            format!(
                "EOF after the CONNECT response (got so far: {:?})",
                String::from_utf8_lossy(&out)
            ),
            timeout,
        )),
    }
}

/// Reads exactly `n` bytes, or fewer if the peer closes first; bounded by `timeout`.
pub async fn read_up_to<IO: AsyncRead + Unpin>(
    io: &mut IO,
    n: usize,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; n];
    let mut filled = 0;
    let fill = async {
        while filled < n {
            match io.read(&mut out[filled..]).await {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) => return Err(HarnessError::io("reading the CONNECT response", e)),
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, fill)
        .await
        .map_err(|_| HarnessError::timeout(format!("{n} response bytes"), timeout))??;
    out.truncate(filled);
    Ok(out)
}

/// `Ok(None)` if nothing arrives within `quiet`, else the bytes (or EOF as an empty vec).
pub async fn anything_within<IO: AsyncRead + Unpin>(
    io: &mut IO,
    quiet: Duration,
) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(quiet, io.read(&mut buf)).await {
        Err(_) => Ok(None),
        Ok(Ok(k)) => Ok(Some(buf[..k].to_vec())),
        Ok(Err(e)) => Err(HarnessError::io("reading after the CONNECT response", e)),
    }
}
