//! `/exec`, `/attach` and `/run`: the remote-command channel protocol over WebSocket, backed by
//! real local processes.
//!
//! Exec runs `command` (argv from the query) with pipes: channel 0 feeds its stdin (v5's
//! `[255, 0]` closes it), stdout and stderr come back on channels 1 and 2, and the exit status
//! goes out as one `metav1.Status` message on channel 3 before the server closes the socket.
//! There is no pseudo-terminal: with `tty=1` stderr is merged into stdout (as a terminal would
//! show it) and resize messages are accepted and ignored.
//!
//! Attach shows the container's main process, which in the stand-in is the log generator: its
//! new lines arrive on stdout until the client leaves; stdin is accepted and discarded.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::ws::{self, AbortOnDrop, ServerWs};
use super::{query_first, query_values, text, Activity, Body, PodContainer, Query, State};
use crate::protocol::{
    encode_frame, parse_client_frame, ChannelProtocol, ClientFrame, Status, TerminalSize,
    ERROR_CHANNEL, LEGACY_CHANNEL_PROTOCOL, RESIZE_CHANNEL, STDERR_CHANNEL, STDIN_CHANNEL,
    STDOUT_CHANNEL, V4_CHANNEL_PROTOCOL, V5_CHANNEL_PROTOCOL,
};

/// Largest chunk read from a process pipe and sent as one message. Cost: per session up to
/// [`ws::OUTPUT_QUEUE`] messages of this size may be queued (512 KiB at 32 KiB).
pub const READ_CHUNK: usize = 32 * 1024;
/// Stdin messages queued towards the process before the reader stops reading the socket.
/// Cost: that much client data buffered per session; beyond it TCP pushes back on the client.
pub const STDIN_QUEUE: usize = 16;
/// After sending the status and Close, how long to wait for the client's Close reply.
/// Cost: a session of a client that never answers lingers this long.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a `/run` command may take before it is killed and 500 is answered. Cost: a
/// legitimately slower command cannot be run through `/run` (exec has no limit).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Most output bytes kept from a `/run` command (stdout then stderr). Cost: memory per request.
pub const MAX_RUN_OUTPUT: usize = 1 << 20;

/// Exec/attach accept these, in the client's order of preference.
const EXEC_PROTOCOLS: [&str; 3] = [
    V5_CHANNEL_PROTOCOL,
    V4_CHANNEL_PROTOCOL,
    LEGACY_CHANNEL_PROTOCOL,
];

/// Which streams a request enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// Reads `input`/`output`/`error`/`tty` (the kubelet's names; `stdin`/`stdout`/`stderr` are
/// accepted as aliases). As in the kubelet only the exact value `1` means true.
fn parse_streams(query: &Query) -> Result<Streams, String> {
    let flag = |names: &[&str]| names.iter().any(|n| query_first(query, n) == Some("1"));
    let tty = flag(&["tty"]);
    let s = Streams {
        stdin: flag(&["input", "stdin"]),
        stdout: flag(&["output", "stdout"]),
        // A terminal has no separate stderr: the kubelet silently drops it with tty.
        stderr: flag(&["error", "stderr"]) && !tty,
        tty,
    };
    if !(s.stdin || s.stdout || flag(&["error", "stderr"])) {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    Ok(s)
}

/// Negotiates the channel protocol, or answers 403 like the Go WebSocket server.
fn negotiate(
    req: &Request<Incoming>,
) -> Result<(Option<&'static str>, ChannelProtocol), Box<Response<Body>>> {
    let offered = ws::offered_protocols(req.headers());
    let chosen = ws::negotiate(&offered, &EXEC_PROTOCOLS, true)
        .map_err(|e| Box::new(text(StatusCode::FORBIDDEN, &e)))?;
    let protocol = chosen
        .and_then(ChannelProtocol::from_name)
        .unwrap_or(ChannelProtocol::Legacy);
    Ok((chosen, protocol))
}

/// `/exec/{ns}/{pod}[/{uid}]/{container}?command=…`.
pub(crate) fn handle_exec(
    state: &Arc<State>,
    req: Request<Incoming>,
    pc: &PodContainer<'_>,
    query: &Query,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let streams = match parse_streams(query) {
        Ok(s) => s,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e),
    };
    let argv: Vec<String> = query_values(query, "command").map(String::from).collect();
    if argv.first().is_none_or(|p| p.is_empty()) {
        return text(
            StatusCode::BAD_REQUEST,
            "command is required: add one command= query parameter per argument, the program first",
        );
    }
    let key = match ws::check_upgrade(&req) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    let (chosen, protocol) = match negotiate(&req) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let permit = match ws::session_permit(state) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let label = format!("{}/{}/{}", pc.namespace, pc.pod, pc.container);
    info!(%peer, container = %label, protocol = protocol.name(), ?argv, "exec");
    let session_state = state.clone();
    ws::upgrade(state, req, &key, chosen, permit, move |ws| {
        exec_session(session_state, ws, protocol, streams, argv, label)
    })
}

/// `/attach/{ns}/{pod}[/{uid}]/{container}`.
pub(crate) fn handle_attach(
    state: &Arc<State>,
    req: Request<Incoming>,
    pc: &PodContainer<'_>,
    query: &Query,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let streams = match parse_streams(query) {
        Ok(s) => s,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e),
    };
    let key = match ws::check_upgrade(&req) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    let (chosen, protocol) = match negotiate(&req) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let permit = match ws::session_permit(state) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let label = format!("{}/{}/{}", pc.namespace, pc.pod, pc.container);
    info!(%peer, container = %label, protocol = protocol.name(), "attach");
    let session_state = state.clone();
    ws::upgrade(state, req, &key, chosen, permit, move |ws| {
        attach_session(session_state, ws, protocol, streams, label)
    })
}

/// The first output channel, which gets the empty frame right after the upgrade.
fn first_channel(s: &Streams) -> u8 {
    if s.stdout {
        STDOUT_CHANNEL
    } else if s.stderr {
        STDERR_CHANNEL
    } else {
        ERROR_CHANNEL
    }
}

/// Reads the client side of an exec/attach socket: stdin data to `stdin`, v5 close signals,
/// resize messages. Returns when the client closes or breaks the protocol.
async fn read_loop(
    mut source: futures::stream::SplitStream<ServerWs>,
    protocol: ChannelProtocol,
    mut stdin: Option<mpsc::Sender<Bytes>>,
) -> Result<(), String> {
    while let Some(msg) = source.next().await {
        let data = match msg {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(_)) => return Ok(()),
            Ok(Message::Text(_)) => {
                debug!("ignoring text message on a binary channel protocol");
                continue;
            }
            Ok(_) => continue,
            Err(e) => return Err(format!("WebSocket error: {e}")),
        };
        match parse_client_frame(protocol, &data) {
            Ok(ClientFrame::Data {
                channel: STDIN_CHANNEL,
                ..
            }) => {
                if let Some(tx) = &stdin {
                    if tx.send(data.slice(1..)).await.is_err() {
                        stdin = None;
                    }
                }
            }
            Ok(ClientFrame::Data {
                channel: RESIZE_CHANNEL,
                payload,
            }) => match serde_json::from_slice::<TerminalSize>(payload) {
                Ok(size) => debug!(?size, "resize request (no pseudo-terminal here; ignored)"),
                Err(e) => debug!("undecodable resize message ignored: {e}"),
            },
            Ok(ClientFrame::Data { channel, .. }) => {
                debug!(
                    channel,
                    "ignoring frame on a channel the client may not write"
                )
            }
            Ok(ClientFrame::Close {
                channel: STDIN_CHANNEL,
            }) => stdin = None,
            Ok(ClientFrame::Close { channel }) => {
                debug!(channel, "close signal for non-stdin channel ignored")
            }
            Err(e) => return Err(format!("protocol violation, closing: {e}")),
        }
    }
    Ok(())
}

/// Copies a process pipe to `channel` until EOF or until the session goes away.
async fn pump(mut pipe: impl AsyncRead + Unpin, channel: u8, tx: mpsc::Sender<Message>) {
    let mut buf = BytesMut::zeroed(READ_CHUNK);
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if tx
                    .send(Message::Binary(encode_frame(channel, &buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                debug!(channel, "reading process output failed: {e}");
                return;
            }
        }
    }
}

/// Kills the whole process group of an exec'd command (it is started as a group leader) when
/// dropped, so shells' children and background jobs do not outlive an abandoned session.
/// Disarmed when the command finished normally: what it left running on purpose stays, as
/// in a container.
struct GroupKiller {
    pgid: Option<i32>,
}

impl GroupKiller {
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // ESRCH (the group is already gone) is the expected outcome for a finished command.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The exit code of a finished process; a signal death is reported as 128 + signal, as shells
/// and container runtimes do.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The error-channel message for an outcome: JSON `Status` in v4/v5 (also on success), plain
/// text only on failure in the legacy protocol.
fn status_message(
    protocol: ChannelProtocol,
    outcome: &Result<i32, String>,
    argv: &[String],
) -> Option<Message> {
    let payload: Bytes = match (protocol.has_json_status(), outcome) {
        (true, Ok(0)) => Status::success().to_json(),
        (true, Ok(code)) => Status::exit_code(*code, argv).to_json(),
        (true, Err(msg)) => Status::internal_error(msg).to_json(),
        (false, Ok(0)) => return None,
        (false, Ok(code)) => Bytes::from(format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            argv.join(" ")
        )),
        (false, Err(msg)) => Bytes::from(msg.clone()),
    };
    Some(Message::Binary(encode_frame(ERROR_CHANNEL, &payload)))
}

async fn exec_session(
    state: Arc<State>,
    ws: ServerWs,
    protocol: ChannelProtocol,
    streams: Streams,
    argv: Vec<String>,
    label: String,
) {
    let _active = state.stats.track(Activity::Exec);
    let (sink, source) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(ws::OUTPUT_QUEUE);
    let mut writer = AbortOnDrop(tokio::spawn(ws::write_loop(sink, out_rx)));
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Bytes>(STDIN_QUEUE);
    let mut reader = AbortOnDrop(tokio::spawn(read_loop(
        source,
        protocol,
        streams.stdin.then_some(stdin_tx),
    )));
    if out_tx
        .send(Message::Binary(encode_frame(first_channel(&streams), &[])))
        .await
        .is_err()
    {
        return;
    }

    let piped = |on: bool| {
        if on {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        }
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(piped(streams.stdin))
        .stdout(piped(streams.stdout))
        // With a tty, stderr is shown on the terminal, i.e. merged into stdout.
        .stderr(piped(streams.stderr || (streams.tty && streams.stdout)))
        .process_group(0)
        .kill_on_drop(true);
    let outcome = match cmd.spawn() {
        Err(e) => {
            warn!(container = %label, ?argv, "exec failed to start: {e}");
            Err(format!(
                "error executing command in container: failed to start {:?}: {e}",
                argv[0]
            ))
        }
        Ok(mut child) => {
            // Declared after `child`, so dropped before it: it fires while the group leader is not yet reaped
            // and its pid cannot have been reused.
            let mut killer = GroupKiller {
                pgid: child.id().and_then(|id| i32::try_from(id).ok()),
            };
            let mut tasks = Vec::new();
            if let Some(mut child_stdin) = child.stdin.take() {
                tasks.push(AbortOnDrop(tokio::spawn(async move {
                    while let Some(data) = stdin_rx.recv().await {
                        if child_stdin.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    // Dropping the pipe is the process's EOF.
                })));
            }
            let stderr_channel = if streams.stderr {
                STDERR_CHANNEL
            } else {
                STDOUT_CHANNEL
            };
            let mut pumps = Vec::new();
            if let Some(out) = child.stdout.take() {
                pumps.push(AbortOnDrop(tokio::spawn(pump(
                    out,
                    STDOUT_CHANNEL,
                    out_tx.clone(),
                ))));
            }
            if let Some(err) = child.stderr.take() {
                pumps.push(AbortOnDrop(tokio::spawn(pump(
                    err,
                    stderr_channel,
                    out_tx.clone(),
                ))));
            }
            let completion = async {
                let status = child.wait().await;
                // All output must be on its way before the status goes out.
                for p in pumps {
                    let _ = p.await;
                }
                status
            };
            tokio::pin!(completion);
            let finished = tokio::select! {
                status = &mut completion => Some(status),
                r = &mut reader => {
                    match r {
                        Ok(Err(e)) => info!(container = %label, "exec client: {e}; killing the process"),
                        _ => info!(container = %label, "exec client went away; killing the process"),
                    }
                    None
                }
                _ = &mut writer => {
                    info!(container = %label, "exec client stopped accepting output; killing the process");
                    None
                }
                _ = state.shutdown.cancelled() => None,
            };
            drop(tasks);
            match finished {
                // `killer` kills the whole group on the way out.
                None => return,
                Some(Ok(status)) => {
                    killer.disarm();
                    Ok(exit_code(status))
                }
                Some(Err(e)) => Err(format!(
                    "error executing command in container: waiting for the process failed: {e}"
                )),
            }
        }
    };
    info!(container = %label, ?outcome, "exec finished");
    if let Some(msg) = status_message(protocol, &outcome, &argv) {
        let _ = out_tx.send(msg).await;
    }
    drop(out_tx);
    // The writer sends Close once the queue is drained; then wait for the client's reply.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = (&mut writer).await;
        let _ = (&mut reader).await;
    })
    .await;
}

async fn attach_session(
    state: Arc<State>,
    ws: ServerWs,
    protocol: ChannelProtocol,
    streams: Streams,
    label: String,
) {
    let _active = state.stats.track(Activity::Attach);
    let (sink, source) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(ws::OUTPUT_QUEUE);
    let mut writer = AbortOnDrop(tokio::spawn(ws::write_loop(sink, out_rx)));
    // Attached stdin has nowhere to go: the reader drops it.
    let mut reader = AbortOnDrop(tokio::spawn(read_loop(source, protocol, None)));
    if out_tx
        .send(Message::Binary(encode_frame(first_channel(&streams), &[])))
        .await
        .is_err()
    {
        return;
    }
    let _producer = streams.stdout.then(|| {
        let mut tail = super::logs::live_tail(&state, label.clone());
        let tx = out_tx.clone();
        AbortOnDrop(tokio::spawn(async move {
            while let Some(chunk) = tail.next_chunk().await {
                if tx
                    .send(Message::Binary(encode_frame(STDOUT_CHANNEL, &chunk)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }))
    });
    tokio::select! {
        _ = &mut reader => info!(container = %label, "attach client left"),
        _ = &mut writer => info!(container = %label, "attach client stopped reading"),
        _ = state.shutdown.cancelled() => {}
    }
}

/// `POST /run/{ns}/{pod}[/{uid}]/{container}?cmd=…`: `cmd` split on single spaces, output
/// (stdout then stderr) as the body; a non-zero exit or a failure to start is a 500.
pub(crate) async fn handle_run(
    _state: &Arc<State>,
    pc: &PodContainer<'_>,
    query: &Query,
) -> Response<Body> {
    let cmd = query_first(query, "cmd").unwrap_or("");
    let argv: Vec<&str> = cmd.split(' ').filter(|a| !a.is_empty()).collect();
    let Some((program, args)) = argv.split_first() else {
        return text(
            StatusCode::BAD_REQUEST,
            "cmd is required: the command line, arguments separated by single spaces",
        );
    };
    info!(container = %format!("{}/{}/{}", pc.namespace, pc.pod, pc.container), ?argv, "run");
    let mut child = match Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("failed to run {program:?} in container: {e}"),
            )
        }
    };
    let mut killer = GroupKiller {
        pgid: child.id().and_then(|id| i32::try_from(id).ok()),
    };
    let limit = MAX_RUN_OUTPUT as u64;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = async {
        let read_out = async {
            if let Some(s) = stdout {
                let _ = s.take(limit).read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr {
                let _ = s.take(limit).read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        child.wait().await
    };
    let status = match tokio::time::timeout(RUN_TIMEOUT, run).await {
        Err(_) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("command {argv:?} did not finish within {RUN_TIMEOUT:?}; killed"),
            )
        }
        Ok(Err(e)) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("waiting for {program:?} failed: {e}"),
            )
        }
        Ok(Ok(s)) => {
            killer.disarm();
            s
        }
    };
    out.extend_from_slice(&err);
    out.truncate(MAX_RUN_OUTPUT);
    let code = exit_code(status);
    if code != 0 {
        let mut msg = format!("command {argv:?} exited with {code}: ");
        msg.push_str(&String::from_utf8_lossy(&out));
        return text(StatusCode::INTERNAL_SERVER_ERROR, &msg);
    }
    let mut resp = Response::new(super::full(Bytes::from(out)));
    // The kubelet labels this body JSON although it is the raw output.
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn streams_use_kubelet_names_and_exact_one() {
        let s = parse_streams(&q(&[("input", "1"), ("output", "1"), ("error", "1")])).unwrap();
        assert_eq!(
            s,
            Streams {
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false
            }
        );
        let s = parse_streams(&q(&[("stdin", "1"), ("stdout", "1"), ("output", "true")])).unwrap();
        assert!(s.stdin && s.stdout && !s.stderr);
        assert!(parse_streams(&q(&[("input", "true")])).is_err());
    }

    #[test]
    fn no_stream_at_all_is_refused_with_kubelet_message() {
        assert_eq!(
            parse_streams(&q(&[("tty", "1")])).unwrap_err(),
            "you must specify at least 1 of stdin, stdout, stderr"
        );
    }

    #[test]
    fn tty_drops_stderr() {
        let s = parse_streams(&q(&[("output", "1"), ("error", "1"), ("tty", "1")])).unwrap();
        assert!(s.tty && s.stdout && !s.stderr);
    }

    #[test]
    fn first_empty_frame_goes_to_lowest_enabled_output() {
        let mut s = Streams {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        assert_eq!(first_channel(&s), STDOUT_CHANNEL);
        s.stdout = false;
        assert_eq!(first_channel(&s), STDERR_CHANNEL);
        s.stderr = false;
        assert_eq!(first_channel(&s), ERROR_CHANNEL);
    }

    #[test]
    fn status_is_json_in_v4_and_text_only_on_failure_in_legacy() {
        let argv = vec!["false".to_string()];
        let payload = |m: Option<Message>| match m {
            Some(Message::Binary(b)) => b,
            other => panic!("unexpected {other:?}"),
        };
        let ok = payload(status_message(ChannelProtocol::V4, &Ok(0), &argv));
        assert_eq!(ok[0], ERROR_CHANNEL);
        assert_eq!(&ok[1..], br#"{"metadata":{},"status":"Success"}"#);
        let fail = payload(status_message(ChannelProtocol::V5, &Ok(1), &argv));
        assert_eq!(
            crate::protocol::decode_status(&fail[1..]).unwrap().code(),
            Some(1)
        );
        assert!(status_message(ChannelProtocol::Legacy, &Ok(0), &argv).is_none());
        let legacy = payload(status_message(ChannelProtocol::Legacy, &Ok(2), &argv));
        assert!(String::from_utf8_lossy(&legacy[1..]).contains("exit code 2"));
    }

    #[test]
    fn signal_death_is_128_plus_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
    }
}
