//! HTTP CONNECT tunnels against an in-process fake proxy on a Unix socket.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ConnectProxy, WAIT};
use konnectivity_client::{ClientError, Dialer, ProxyProtocol, ProxyTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn dialer(proxy: &ConnectProxy) -> Dialer {
    Dialer::new(
        ProxyProtocol::HttpConnect,
        ProxyTransport::Uds(proxy.socket.clone()),
    )
    .unwrap()
}

#[tokio::test]
async fn connect_200_then_the_socket_is_the_tunnel() {
    let mut proxy = ConnectProxy::start().await;
    let mut tunnel = tokio::time::timeout(WAIT, dialer(&proxy).dial("ok:10250"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tunnel.connect_id(), None);
    let request = proxy.requests.recv().await.unwrap();
    assert_eq!(
        request,
        b"CONNECT ok:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec()
    );
    for msg in [&b"first"[..], &b"second, longer message"[..]] {
        tunnel.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, tunnel.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn bad_gateway_error_carries_status_and_body() {
    let proxy = ConnectProxy::start().await;
    let err = tokio::time::timeout(WAIT, dialer(&proxy).dial("bad:1"))
        .await
        .unwrap()
        .unwrap_err();
    match &err {
        ClientError::ConnectRejected {
            address,
            status,
            body,
            ..
        } => {
            assert_eq!(address, "bad:1");
            assert_eq!(*status, 502);
            assert_eq!(
                body,
                "dial tcp 127.0.0.1:18999: connect: connection refused"
            );
        }
        other => panic!("unexpected error {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("502"), "{text}");
    assert!(text.contains("connection refused"), "{text}");
}

#[tokio::test]
async fn tunnel_bytes_coalesced_with_the_200_are_a_protocol_error() {
    let proxy = ConnectProxy::start().await;
    let err = tokio::time::timeout(WAIT, dialer(&proxy).dial("eager:1"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("8 bytes"), "{err}");
}

#[tokio::test]
async fn silent_proxy_hits_the_dial_timeout() {
    let proxy = ConnectProxy::start().await;
    let dialer = dialer(&proxy).with_dial_timeout(Duration::from_millis(200));
    let err = tokio::time::timeout(WAIT, dialer.dial("silent:1"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ClientError::DialTimeout { .. }), "{err}");
}

#[tokio::test]
async fn missing_socket_is_reported_as_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.sock");
    let dialer = Dialer::new(
        ProxyProtocol::HttpConnect,
        ProxyTransport::Uds(path.clone()),
    )
    .unwrap();
    let err = dialer.dial("ok:1").await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}
