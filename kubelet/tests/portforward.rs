//! `/portForward` through the client against the stand-in, to real local TCP ports.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, get, start, within};
use konnectivity_kubelet::client::{self, KubeletError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TCP echo server on loopback; returns its port.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn port_forward_round_trips_bytes_to_a_local_port() {
    let fx = start(Duration::from_secs(1)).await;
    let port = echo_server().await;
    let tls = fx.connect().await;
    let mut pf = client::port_forward(tls, &fx.host(), "default", "web", port)
        .await
        .expect("port-forward");
    assert_eq!(pf.port(), port);
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let expected = payload.clone();
    let (mut r, mut w) = tokio::io::split(pf);
    let writer = async move {
        w.write_all(&payload).await.expect("write");
        w
    };
    let reader = async move {
        let mut got = vec![0u8; expected.len()];
        r.read_exact(&mut got).await.expect("read");
        (got == expected, r)
    };
    let (w, (same, r)) = within("echo", async { tokio::join!(writer, reader) }).await;
    assert!(same, "echoed bytes differ");
    assert_eq!(fx.stats.active_port_forwards(), 1);
    pf = r.unsplit(w);
    drop(pf);
    assert!(
        eventually(Duration::from_secs(2), || fx.stats.active_port_forwards()
            == 0)
        .await
    );
}

#[tokio::test]
async fn pod_closing_the_connection_is_eof_for_the_client() {
    let fx = start(Duration::from_secs(1)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        tcp.write_all(b"HTTP/1.0 200 OK\r\n\r\nbye")
            .await
            .expect("write");
    });
    let tls = fx.connect().await;
    let mut pf = client::port_forward(tls, &fx.host(), "default", "web", port)
        .await
        .expect("port-forward");
    let mut got = String::new();
    within("read to EOF", pf.read_to_string(&mut got))
        .await
        .expect("read");
    assert_eq!(got, "HTTP/1.0 200 OK\r\n\r\nbye");
    assert!(
        eventually(Duration::from_secs(2), || fx.stats.active_port_forwards()
            == 0)
        .await
    );
}

#[tokio::test]
async fn closed_port_is_reported_on_the_error_channel() {
    let fx = start(Duration::from_secs(1)).await;
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    };
    let tls = fx.connect().await;
    let mut pf = client::port_forward(tls, &fx.host(), "default", "web", port)
        .await
        .expect("upgrade works");
    let mut buf = [0u8; 16];
    let err = within("error", pf.read(&mut buf)).await.unwrap_err();
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<KubeletError>())
        .expect("a KubeletError inside the io::Error");
    match inner {
        KubeletError::PortForward {
            port: p, message, ..
        } => {
            assert_eq!(*p, port);
            assert!(
                message.starts_with(&format!("error forwarding port {port} to pod web")),
                "{message}"
            );
            assert!(message.to_lowercase().contains("refused"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // The error sticks.
    assert!(pf.read(&mut buf).await.is_err());
}

#[tokio::test]
async fn bad_port_parameters_get_the_cri_messages() {
    let fx = start(Duration::from_secs(1)).await;
    let (status, body) = get(&fx, "GET", "/portForward/default/web").await;
    assert_eq!(
        (status, body.as_str()),
        (400, "query parameter \"port\" is required")
    );
    let (status, body) = get(&fx, "GET", "/portForward/default/web?port=0").await;
    assert_eq!((status, body.as_str()), (400, "port \"0\" must be > 0"));
    let (status, body) = get(&fx, "GET", "/portForward/default/web?port=http").await;
    assert_eq!(status, 400);
    assert!(
        body.starts_with("unable to parse \"http\" as a port"),
        "{body}"
    );
}

#[tokio::test]
async fn server_announces_the_port_on_both_channels_for_portforward_protocol() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let fx = start(Duration::from_secs(1)).await;
    let port = echo_server().await;
    let tls = fx.connect().await;
    let mut req = format!("ws://{}/portForward/default/web?port={port}", fx.host())
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "portforward.k8s.io".parse().expect("header"),
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("upgrade");
    assert_eq!(
        resp.headers()["Sec-WebSocket-Protocol"],
        "portforward.k8s.io"
    );
    let lo = (port & 0xff) as u8;
    let hi = (port >> 8) as u8;
    let mut prefixes = Vec::new();
    while prefixes.len() < 2 {
        match within("prefix", ws.next())
            .await
            .expect("frame")
            .expect("ok")
        {
            Message::Binary(b) => prefixes.push(b.to_vec()),
            _ => continue,
        }
    }
    prefixes.sort();
    assert_eq!(prefixes, vec![vec![0, lo, hi], vec![1, lo, hi]]);
    ws.send(Message::Binary(bytes::Bytes::from_static(b"\x00ping")))
        .await
        .expect("send");
    let echoed = within("echo", ws.next()).await.expect("frame").expect("ok");
    assert_eq!(echoed.into_data().as_ref(), b"\x00ping");
}
