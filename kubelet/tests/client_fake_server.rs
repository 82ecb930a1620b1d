//! The client against tiny scripted WebSocket servers (plain TCP: the client runs over any
//! stream), for behaviour the stand-in never shows: a v4-only kubelet, a kubelet that closes
//! without a status, a port-forward that announces the wrong port.
#![allow(clippy::unwrap_used)]
// tungstenite's handshake callback returns its (large) `ErrorResponse` by value.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use konnectivity_kubelet::client::{self, KubeletError};
use konnectivity_kubelet::protocol::{ExitStatus, Status};
use konnectivity_kubelet::ExecOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Accepts one WebSocket, answering with `protocol`, and hands it to `script`.
async fn fake_server<F, Fut>(
    protocol: &'static str,
    script: F,
) -> (String, tokio::task::JoinHandle<String>)
where
    F: FnOnce(WebSocketStream<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut path = String::new();
        let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, mut resp: Response| {
            path = req.uri().to_string();
            resp.headers_mut()
                .insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
            Ok(resp)
        })
        .await
        .expect("ws accept");
        script(ws).await;
        path
    });
    (addr, handle)
}

fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut v = vec![channel];
    v.extend_from_slice(payload);
    Message::Binary(Bytes::from(v))
}

#[tokio::test]
async fn client_falls_back_to_v4_and_decodes_its_status() {
    let (addr, server) = fake_server("v4.channel.k8s.io", |mut ws| async move {
        ws.send(frame(1, b"")).await.expect("initial frame");
        let first = ws.next().await.expect("stdin frame").expect("ok");
        assert_eq!(first.into_data().as_ref(), b"\x00hello\n");
        ws.send(frame(1, b"out:hello\n")).await.expect("stdout");
        ws.send(frame(2, b"err\n")).await.expect("stderr");
        let status = Status::exit_code(3, &["sh".into()]).to_json();
        ws.send(frame(3, &status)).await.expect("status");
        let _ = ws.close(None).await;
    })
    .await;
    let tcp = TcpStream::connect(&addr).await.expect("connect");
    let cmd = vec!["sh".to_string(), "-c".to_string(), "x".to_string()];
    let mut session = client::exec(
        tcp,
        &addr,
        "ns",
        "pod",
        "c",
        cmd,
        ExecOptions {
            stdin: true,
            tty: false,
        },
    )
    .await
    .expect("exec");
    assert_eq!(session.protocol(), "v4.channel.k8s.io");
    assert!(!session.can_close_stdin());
    let mut stdin = session.take_stdin().expect("stdin");
    stdin.write_all(b"hello\n").await.expect("write");
    // v4 cannot signal EOF: shutdown succeeds and sends nothing.
    stdin.shutdown().await.expect("shutdown");
    let mut out = String::new();
    session
        .take_stdout()
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .expect("read");
    let mut err = String::new();
    session
        .take_stderr()
        .expect("stderr")
        .read_to_string(&mut err)
        .await
        .expect("read");
    let status = session.status().await.expect("status");
    assert_eq!(
        (out.as_str(), err.as_str(), status.code()),
        ("out:hello\n", "err\n", Some(3))
    );
    let path = server.await.expect("server");
    assert_eq!(
        path,
        "/exec/ns/pod/c?command=sh&command=-c&command=x&error=1&input=1&output=1"
    );
}

#[tokio::test]
async fn v5_close_signal_is_sent_on_stdin_shutdown() {
    let (addr, server) = fake_server("v5.channel.k8s.io", |mut ws| async move {
        ws.send(frame(1, b"")).await.expect("initial frame");
        let msg = ws.next().await.expect("frame").expect("ok");
        assert_eq!(msg.into_data().as_ref(), &[255, 0], "exactly [255, 0]");
        ws.send(frame(3, &Status::success().to_json()))
            .await
            .expect("status");
        let _ = ws.close(None).await;
    })
    .await;
    let tcp = TcpStream::connect(&addr).await.expect("connect");
    let mut session = client::exec(
        tcp,
        &addr,
        "ns",
        "pod",
        "c",
        vec!["cat".into()],
        ExecOptions {
            stdin: true,
            tty: false,
        },
    )
    .await
    .expect("exec");
    let mut stdin = session.take_stdin().expect("stdin");
    stdin.shutdown().await.expect("close stdin");
    assert_eq!(session.status().await.expect("status"), ExitStatus::Success);
    server.await.expect("server");
}

#[tokio::test]
async fn closing_without_a_status_is_an_error_not_success() {
    let (addr, server) = fake_server("v5.channel.k8s.io", |mut ws| async move {
        ws.send(frame(1, b"partial")).await.expect("stdout");
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let tcp = TcpStream::connect(&addr).await.expect("connect");
    let mut session = client::exec(
        tcp,
        &addr,
        "ns",
        "pod",
        "c",
        vec!["x".into()],
        ExecOptions::default(),
    )
    .await
    .expect("exec");
    let mut out = session.take_stdout().expect("stdout");
    let status = tokio::time::timeout(Duration::from_secs(10), session.status())
        .await
        .expect("no hang");
    assert!(
        matches!(status, Err(KubeletError::NoStatus { .. })),
        "{status:?}"
    );
    let mut s = String::new();
    out.read_to_string(&mut s).await.expect("read");
    assert_eq!(s, "partial");
    server.await.expect("server");
}

#[tokio::test]
async fn port_forward_rejects_a_wrong_port_announcement() {
    let (addr, server) = fake_server("v4.channel.k8s.io", |mut ws| async move {
        ws.send(frame(0, &81u16.to_le_bytes()))
            .await
            .expect("prefix");
        ws.send(frame(1, &81u16.to_le_bytes()))
            .await
            .expect("prefix");
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let tcp = TcpStream::connect(&addr).await.expect("connect");
    let err = client::port_forward(tcp, &addr, "ns", "pod", 80)
        .await
        .unwrap_err();
    match err {
        KubeletError::Protocol { detail, .. } => assert!(
            detail.contains("announced port 81, expected 80"),
            "{detail}"
        ),
        other => panic!("unexpected {other:?}"),
    }
    let path = server.await.expect("server");
    assert_eq!(path, "/portForward/ns/pod?port=80");
}

#[tokio::test]
async fn a_non_101_answer_is_a_status_error_with_the_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4096];
        let _ = tcp.read(&mut buf).await;
        let body = "pod \"x\" does not exist";
        let resp = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(resp.as_bytes()).await.expect("write");
    });
    let tcp = TcpStream::connect(&addr).await.expect("connect");
    let err = client::exec(
        tcp,
        &addr,
        "ns",
        "x",
        "c",
        vec!["ls".into()],
        ExecOptions::default(),
    )
    .await
    .unwrap_err();
    match err {
        KubeletError::Status {
            status, message, ..
        } => {
            assert_eq!(status, 404);
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}
