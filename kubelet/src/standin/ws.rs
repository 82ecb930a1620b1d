//! Server side of the WebSocket upgrade on a hyper connection: request checks, subprotocol
//! negotiation the way Go's `wsstream` does it (the client's order wins), the 101 response,
//! and handing the upgraded connection to a session task.

use std::future::Future;
use std::sync::Arc;

use futures::{Sink, SinkExt};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::warn;

use super::{full, text, Body, State};

/// The upgraded connection type every session works on.
pub(crate) type ServerWs = WebSocketStream<TokioIo<Upgraded>>;

/// Largest WebSocket message accepted from a client. Cost: a client may make the stand-in
/// buffer this much per connection; client-go and kube-rs send stdin in ≤32 KiB messages.
pub const MAX_MESSAGE_SIZE: usize = 1 << 20;

/// Messages queued towards one client before producers (process pipes, pod sockets) wait.
/// Cost: up to this many chunks (each ≤ [`super::exec::READ_CHUNK`]) buffered per session.
pub const OUTPUT_QUEUE: usize = 16;

/// The configuration of every server-side WebSocket.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
}

/// The subprotocols a client offered, from one CSV header, repeated headers, or both.
pub(crate) fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Picks the first offered protocol the server supports (Go `wsstream` semantics). `Ok(None)`
/// means the client offered none and `allow_none` permits that.
pub(crate) fn negotiate(
    offered: &[String],
    supported: &[&'static str],
    allow_none: bool,
) -> Result<Option<&'static str>, String> {
    if offered.is_empty() {
        return if allow_none {
            Ok(None)
        } else {
            Err(format!(
                "no WebSocket subprotocol requested; supports {supported:?}"
            ))
        };
    }
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
        .map(Some)
        .ok_or_else(|| {
            format!("requested protocol(s) are not supported: {offered:?}; supports {supported:?}")
        })
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks that `req` is a WebSocket upgrade and returns its `Sec-WebSocket-Key`; otherwise
/// the response to send (400 with the kubelet's wording, and a pointer away from SPDY).
pub(crate) fn check_upgrade(req: &Request<Incoming>) -> Result<HeaderValue, Box<Response<Body>>> {
    let headers = req.headers();
    let is_websocket = header_has_token(headers, header::UPGRADE, "websocket");
    if !is_websocket {
        let upgrade = headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let msg = if upgrade.to_ascii_lowercase().starts_with("spdy") {
            "unable to upgrade: SPDY/3.1 is not implemented by this kubelet stand-in; use a WebSocket client offering v5.channel.k8s.io or v4.channel.k8s.io".to_string()
        } else {
            format!(
                "unable to upgrade: missing upgrade headers in request: Connection={:?} Upgrade={upgrade:?}; this endpoint needs a WebSocket upgrade (GET with Upgrade: websocket)",
                headers.get(header::CONNECTION).and_then(|v| v.to_str().ok()).unwrap_or("")
            )
        };
        return Err(Box::new(text(StatusCode::BAD_REQUEST, &msg)));
    }
    if req.method() != http::Method::GET {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: a WebSocket upgrade must use GET",
        )));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: Connection header does not contain \"upgrade\"",
        )));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut resp = text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: Sec-WebSocket-Version must be 13",
        );
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(resp));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or_else(|| {
            Box::new(text(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: missing Sec-WebSocket-Key header",
            ))
        })
}

/// Answers 101 and runs `session` on the upgraded connection in a tracked task. The session
/// holds `permit` (one of [`super::MAX_SESSIONS`]) for its whole life.
pub(crate) fn upgrade<F, Fut>(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    key: &HeaderValue,
    protocol: Option<&'static str>,
    permit: tokio::sync::OwnedSemaphorePermit,
    session: F,
) -> Response<Body>
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shutdown = state.shutdown.clone();
    state.tracker.spawn(async move {
        let upgraded = tokio::select! {
            u = on_upgrade => u,
            _ = shutdown.cancelled() => return,
        };
        match upgraded {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config()),
                )
                .await;
                session(ws).await;
            }
            Err(e) => warn!("WebSocket upgrade failed after 101: {e}"),
        }
        drop(permit);
    });
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = derive_accept_key(key.as_bytes());
    // The accept key is base64, always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    resp
}

/// Takes one of the session slots or answers 429.
pub(crate) fn session_permit(
    state: &Arc<State>,
) -> Result<tokio::sync::OwnedSemaphorePermit, Box<Response<Body>>> {
    state.sessions.clone().try_acquire_owned().map_err(|_| {
        Box::new(text(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many concurrent exec/attach/port-forward sessions on this kubelet stand-in (limit {}); retry later",
                super::MAX_SESSIONS
            ),
        ))
    })
}

/// Sends every queued message, then a Close frame when the queue's senders are all gone.
/// Runs as its own task so that writing never waits on reading (and vice versa).
pub(crate) async fn write_loop<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<Message>,
) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    while let Some(msg) = rx.recv().await {
        sink.send(msg).await?;
    }
    sink.close().await
}

/// Aborts a spawned task when dropped, so no helper task outlives its session.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn offered_protocols_reads_csv_and_repeated_headers() {
        let mut h = HeaderMap::new();
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v5.channel.k8s.io, v4.channel.k8s.io"),
        );
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("channel.k8s.io"),
        );
        assert_eq!(
            offered_protocols(&h),
            vec!["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"]
        );
    }

    #[test]
    fn negotiation_follows_client_order() {
        let supported = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
        let offered = vec![
            "v4.channel.k8s.io".to_string(),
            "v5.channel.k8s.io".to_string(),
        ];
        assert_eq!(
            negotiate(&offered, &supported, false),
            Ok(Some("v4.channel.k8s.io"))
        );
        let offered = vec!["x".to_string(), "v5.channel.k8s.io".to_string()];
        assert_eq!(
            negotiate(&offered, &supported, false),
            Ok(Some("v5.channel.k8s.io"))
        );
    }

    #[test]
    fn negotiation_without_overlap_names_both_sides() {
        let err = negotiate(&["v9".to_string()], &["v4.channel.k8s.io"], true).unwrap_err();
        assert!(
            err.contains("v9") && err.contains("v4.channel.k8s.io"),
            "{err}"
        );
    }

    #[test]
    fn no_offer_is_allowed_only_when_permitted() {
        assert_eq!(negotiate(&[], &["v4.channel.k8s.io"], true), Ok(None));
        assert!(negotiate(&[], &["v4.channel.k8s.io"], false).is_err());
    }
}
