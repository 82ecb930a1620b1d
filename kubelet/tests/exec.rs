//! `/exec` and `/attach`: the client against the stand-in, and raw WebSocket clients that check
//! the server's wire format (v4, bad frames, wrong upgrades).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{eventually, get, start, within, Fixture};
use futures::{SinkExt, StreamExt};
use konnectivity_kubelet::client::{self, ExecSession};
use konnectivity_kubelet::protocol::{decode_status, ExitStatus};
use konnectivity_kubelet::ExecOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SCRIPT: &str = "read x; echo out:$x; echo err >&2; exit 3";

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

async fn open(fx: &Fixture, command: Vec<String>, opts: ExecOptions) -> ExecSession {
    let tls = fx.connect().await;
    client::exec(tls, &fx.host(), "default", "web", "app", command, opts)
        .await
        .expect("exec")
}

/// Feeds `input` (then EOF), collects stdout and stderr, returns them with the status.
async fn run(mut session: ExecSession, input: &[u8]) -> (String, String, ExitStatus) {
    let mut stdin = session.take_stdin();
    let mut stdout = session.take_stdout().expect("stdout");
    let mut stderr = session.take_stderr();
    let input = input.to_vec();
    let feed = async move {
        if let Some(w) = stdin.as_mut() {
            w.write_all(&input).await.expect("write stdin");
            w.shutdown().await.expect("close stdin");
        }
    };
    let out = async move {
        let mut s = String::new();
        stdout.read_to_string(&mut s).await.expect("read stdout");
        s
    };
    let err = async move {
        let mut s = String::new();
        if let Some(r) = stderr.as_mut() {
            r.read_to_string(&mut s).await.expect("read stderr");
        }
        s
    };
    let ((), out, err, status) = tokio::join!(feed, out, err, session.status());
    (out, err, status.expect("status"))
}

#[tokio::test]
async fn exec_v5_carries_stdin_stdout_stderr_and_exit_code() {
    let fx = start(Duration::from_secs(1)).await;
    let session = open(
        &fx,
        sh(SCRIPT),
        ExecOptions {
            stdin: true,
            tty: false,
        },
    )
    .await;
    assert_eq!(session.protocol(), "v5.channel.k8s.io");
    assert!(session.can_close_stdin());
    let (out, err, status) = within("exec", run(session, b"hello\n")).await;
    assert_eq!(out, "out:hello\n");
    assert_eq!(err, "err\n");
    assert_eq!(status.code(), Some(3));
    assert!(matches!(status, ExitStatus::NonZero { code: 3, .. }));
    assert!(
        eventually(Duration::from_secs(2), || fx.stats.active_exec_sessions()
            == 0)
        .await
    );
}

#[tokio::test]
async fn v5_close_stdin_delivers_eof_to_the_process() {
    let fx = start(Duration::from_secs(1)).await;
    // `wc -c` only answers after EOF on stdin.
    let session = open(
        &fx,
        vec!["wc".into(), "-c".into()],
        ExecOptions {
            stdin: true,
            tty: false,
        },
    )
    .await;
    let (out, _, status) = within("wc", run(session, &[b'x'; 100_000])).await;
    assert_eq!(out.trim(), "100000");
    assert_eq!(status, ExitStatus::Success);
}

#[tokio::test]
async fn large_output_and_input_flow_both_ways_without_deadlock() {
    let fx = start(Duration::from_secs(1)).await;
    // cat echoes everything while we are still writing: both directions are busy at once.
    let session = open(
        &fx,
        vec!["cat".into()],
        ExecOptions {
            stdin: true,
            tty: false,
        },
    )
    .await;
    let input: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut session = session;
    let mut stdin = session.take_stdin().expect("stdin");
    let mut stdout = session.take_stdout().expect("stdout");
    let expected = input.clone();
    let writer = async move {
        stdin.write_all(&input).await.expect("write");
        stdin.shutdown().await.expect("close");
    };
    let reader = async move {
        let mut got = Vec::new();
        stdout.read_to_end(&mut got).await.expect("read");
        got
    };
    let ((), got, status) = within("cat", async {
        tokio::join!(writer, reader, session.status())
    })
    .await;
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "output differs from input");
    assert_eq!(status.expect("status"), ExitStatus::Success);
}

#[tokio::test]
async fn exec_without_stdin_and_with_tty_merges_stderr() {
    let fx = start(Duration::from_secs(1)).await;
    let session = open(
        &fx,
        sh("echo a; echo b >&2"),
        ExecOptions {
            stdin: false,
            tty: true,
        },
    )
    .await;
    assert!(session.resizer().is_some());
    session
        .resizer()
        .expect("resizer")
        .resize(100, 40)
        .await
        .expect("resize");
    let (out, err, status) = within("tty exec", run(session, b"")).await;
    assert!(out.contains("a\n") && out.contains("b\n"), "{out:?}");
    assert_eq!(err, "");
    assert_eq!(status, ExitStatus::Success);
}

#[tokio::test]
async fn missing_binary_is_a_failure_status_not_an_exit_code() {
    let fx = start(Duration::from_secs(1)).await;
    let session = open(
        &fx,
        vec!["/nonexistent/no-such-binary".into()],
        ExecOptions::default(),
    )
    .await;
    let (out, _, status) = within("missing binary", run(session, b"")).await;
    assert_eq!(out, "");
    assert_eq!(status.code(), None);
    match status {
        ExitStatus::Failure { reason, message } => {
            assert_eq!(reason, "InternalError");
            assert!(message.contains("no-such-binary"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Whether a process is gone (or only a zombie waiting to be reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // Format: "pid (comm) state ...".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[tokio::test]
async fn dropping_the_session_kills_the_whole_process_group() {
    let fx = start(Duration::from_secs(1)).await;
    // The shell's background child is a grandchild of the stand-in: it must die too.
    let mut session = open(&fx, sh("sleep 30 & echo $!; wait"), ExecOptions::default()).await;
    let mut stdout = session.take_stdout().expect("stdout");
    let mut line = Vec::new();
    within("pid line", async {
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            assert_eq!(
                stdout.read(&mut byte).await.expect("read"),
                1,
                "output ended"
            );
            line.push(byte[0]);
        }
    })
    .await;
    let pid: u32 = String::from_utf8_lossy(&line).trim().parse().expect("pid");
    assert!(!process_gone(pid), "sleep should be running");
    assert_eq!(fx.stats.active_exec_sessions(), 1);
    drop(stdout);
    drop(session);
    assert!(
        eventually(Duration::from_secs(2), || fx.stats.active_exec_sessions()
            == 0)
        .await,
        "exec session still active after the client left"
    );
    assert!(
        eventually(Duration::from_secs(2), || process_gone(pid)).await,
        "the background process survived its session"
    );
}

#[tokio::test]
async fn attach_streams_the_containers_new_log_lines() {
    let fx = start(Duration::from_millis(50)).await;
    let tls = fx.connect().await;
    let mut session = client::attach(
        tls,
        &fx.host(),
        "default",
        "web",
        "app",
        ExecOptions::default(),
    )
    .await
    .expect("attach");
    let mut stdout = session.take_stdout().expect("stdout");
    let mut buf = String::new();
    within("attach output", async {
        while buf.matches('\n').count() < 2 {
            let mut chunk = [0u8; 256];
            let n = stdout.read(&mut chunk).await.expect("read");
            assert!(n > 0, "attach output ended");
            buf.push_str(std::str::from_utf8(&chunk[..n]).expect("utf8"));
        }
    })
    .await;
    assert!(
        buf.lines()
            .all(|l| l.starts_with("line ") && l.ends_with(" from default/web/app")),
        "{buf:?}"
    );
    assert_eq!(fx.stats.active_attach_sessions(), 1);
    drop(stdout);
    drop(session);
    assert!(
        eventually(Duration::from_secs(2), || fx.stats.active_attach_sessions()
            == 0)
        .await
    );
}

/// A raw WebSocket to the stand-in, offering exactly `protocols`.
async fn raw_ws(
    fx: &Fixture,
    path: &str,
    protocols: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        Option<String>,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let tls = fx.connect().await;
    let mut req = format!("ws://{}{path}", fx.host())
        .into_client_request()
        .expect("request");
    if !protocols.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().expect("header"));
    }
    let (ws, resp) = tokio_tungstenite::client_async(req, tls).await?;
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().expect("ascii").to_string());
    Ok((ws, chosen))
}

const EXEC_PATH: &str = "/exec/default/web/app?command=sh&command=-c&command=read+x%3B+echo+out%3A%24x%3B+echo+err+%3E%262%3B+exit+3&error=1&input=1&output=1";

#[tokio::test]
async fn v4_server_wire_format_matches_the_cri_streaming_server() {
    let fx = start(Duration::from_secs(1)).await;
    let (mut ws, chosen) = raw_ws(&fx, EXEC_PATH, "v4.channel.k8s.io")
        .await
        .expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("v4.channel.k8s.io"));
    ws.send(Message::Binary(Bytes::from_static(b"\x00hello\n")))
        .await
        .expect("stdin");
    let mut frames: Vec<Bytes> = Vec::new();
    let mut closed = false;
    within("v4 session", async {
        while let Some(msg) = ws.next().await {
            match msg.expect("frame") {
                Message::Binary(b) => frames.push(b),
                Message::Close(_) => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(closed, "the server closes after the status");
    assert_eq!(&frames[0][..], &[1], "first frame: empty, on stdout");
    let stdout: Vec<u8> = frames
        .iter()
        .filter(|f| f[0] == 1)
        .flat_map(|f| f[1..].to_vec())
        .collect();
    let stderr: Vec<u8> = frames
        .iter()
        .filter(|f| f[0] == 2)
        .flat_map(|f| f[1..].to_vec())
        .collect();
    assert_eq!(stdout, b"out:hello\n");
    assert_eq!(stderr, b"err\n");
    let status: Vec<&Bytes> = frames.iter().filter(|f| f[0] == 3).collect();
    assert_eq!(status.len(), 1, "exactly one status message");
    assert_eq!(
        status[0],
        frames.last().expect("frames"),
        "status is the last frame"
    );
    let json: serde_json::Value = serde_json::from_slice(&status[0][1..]).expect("status JSON");
    assert_eq!(json["status"], "Failure");
    assert_eq!(json["reason"], "NonZeroExitCode");
    assert_eq!(json["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(json["details"]["causes"][0]["message"], "3");
    assert_eq!(
        decode_status(&status[0][1..]).expect("decode").code(),
        Some(3)
    );
}

#[tokio::test]
async fn server_follows_the_clients_protocol_order() {
    let fx = start(Duration::from_secs(1)).await;
    let (_ws, chosen) = raw_ws(&fx, EXEC_PATH, "v4.channel.k8s.io, v5.channel.k8s.io")
        .await
        .expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("v4.channel.k8s.io"));
    let (_ws, chosen) = raw_ws(&fx, EXEC_PATH, "v9.channel.k8s.io, v5.channel.k8s.io")
        .await
        .expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("v5.channel.k8s.io"));
    match raw_ws(&fx, EXEC_PATH, "v9.channel.k8s.io").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!("unexpected {:?}", other.map(|(_, c)| c)),
    }
}

#[tokio::test]
async fn malformed_close_signal_ends_only_that_session() {
    let fx = start(Duration::from_secs(1)).await;
    let (mut ws, _) = raw_ws(
        &fx,
        "/exec/default/web/app?command=cat&input=1&output=1",
        "v5.channel.k8s.io",
    )
    .await
    .expect("upgrade");
    ws.send(Message::Binary(Bytes::from_static(&[255, 0, 0])))
        .await
        .expect("send");
    within("server closes", async {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(
        eventually(Duration::from_secs(2), || fx.stats.active_exec_sessions()
            == 0)
        .await
    );
    assert_eq!(get(&fx, "GET", "/healthz").await, (200, "ok".to_string()));
}

#[tokio::test]
async fn bad_exec_requests_get_clear_http_errors() {
    let fx = start(Duration::from_secs(1)).await;
    // No stream enabled.
    let (status, body) = get(&fx, "GET", "/exec/default/web/app?command=ls").await;
    assert_eq!(status, 400);
    assert_eq!(body, "you must specify at least 1 of stdin, stdout, stderr");
    // No command.
    let (status, body) = get(&fx, "GET", "/exec/default/web/app?output=1").await;
    assert_eq!(status, 400);
    assert!(body.contains("command is required"), "{body}");
    // Not an upgrade at all.
    let (status, body) = get(&fx, "GET", "/exec/default/web/app?command=ls&output=1").await;
    assert_eq!(status, 400);
    assert!(body.contains("unable to upgrade"), "{body}");
    assert_eq!(
        get(&fx, "DELETE", "/exec/default/web/app?command=ls&output=1")
            .await
            .0,
        405
    );
}

#[tokio::test]
async fn spdy_upgrade_is_refused_with_an_explanation() {
    let fx = start(Duration::from_secs(1)).await;
    let tls = fx.connect().await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::post("/exec/default/web/app?command=ls&output=1")
        .header("Host", fx.host())
        .header("Connection", "Upgrade")
        .header("Upgrade", "SPDY/3.1")
        .header("X-Stream-Protocol-Version", "v4.channel.k8s.io")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("SPDY/3.1 is not implemented"));
}
