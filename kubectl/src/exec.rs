//! `exec`: WebSocket channel protocol; our stdin to the command (with `-i`), its stdout and
//! stderr to ours, and its exit code as ours.

use std::io::IsTerminal;
use std::process::ExitCode;

use konnectivity_kubelet::client::{ExecOutput, ExecStdin, TerminalResizer};
use konnectivity_kubelet::{ExecOptions, ExitStatus};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::ExecArgs;
use crate::connect::KubeletConnector;
use crate::error::KubectlError;
use crate::{require_container, term, EXIT_FAILURE};

/// Bytes read from our stdin per chunk sent to the remote stdin. Cost: memory; larger chunks
/// are split by the session anyway.
pub const STDIN_CHUNK: usize = 32 * 1024;

/// Runs the command and returns its exit code.
pub async fn run(kubelet: &KubeletConnector, args: ExecArgs) -> Result<ExitCode, KubectlError> {
    let container = require_container(args.container.as_deref())?;
    let mut tty = args.tty;
    if tty && !std::io::stdin().is_terminal() {
        // kubectl's behaviour: warn and run without a terminal.
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
        tty = false;
    }
    let opts = ExecOptions {
        stdin: args.stdin,
        tty,
    };
    let stream = kubelet.connect().await?;
    let mut session = konnectivity_kubelet::exec(
        stream,
        kubelet.address(),
        &args.pod.namespace,
        &args.pod.pod,
        container,
        args.command,
        opts,
    )
    .await
    .map_err(KubectlError::kubelet)?;

    // Raw mode only once the session exists, and restored on every way out of this function.
    let _raw = if tty && args.stdin {
        term::RawMode::enable()
            .map_err(|e| KubectlError::io("putting the terminal in raw mode", e.into()))?
    } else {
        None
    };
    if let Some(resizer) = session.resizer() {
        tokio::spawn(follow_terminal_size(resizer));
    }
    if let Some(stdin) = session.take_stdin() {
        // Not awaited: a read blocked on our stdin must not hold the exit back.
        tokio::spawn(pump_stdin(stdin));
    }
    let stdout = session.take_stdout();
    let stderr = session.take_stderr();
    let (out, err) = tokio::join!(
        copy_output(stdout, tokio::io::stdout()),
        copy_output(stderr, tokio::io::stderr())
    );
    out.map_err(|e| KubectlError::io("writing the command's stdout", e))?;
    err.map_err(|e| KubectlError::io("writing the command's stderr", e))?;
    let status = session
        .status()
        .await
        .map_err(|e| KubectlError::StreamBroken {
            what: "exec",
            address: kubelet.address().to_string(),
            detail: crate::error::chain(&e),
        })?;
    match status {
        ExitStatus::Success => Ok(ExitCode::SUCCESS),
        ExitStatus::NonZero { code, .. } => {
            Ok(ExitCode::from(if code == 0 { EXIT_FAILURE } else { code }))
        }
        ExitStatus::Failure { reason, message } => {
            Err(KubectlError::CommandFailed { reason, message })
        }
    }
}

/// Copies a remote output stream to a local one until the command ends; a closed local
/// reader (`| head`) only stops the copy.
async fn copy_output(
    remote: Option<ExecOutput>,
    mut local: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let Some(mut remote) = remote else {
        return Ok(());
    };
    match copy_flushing(&mut remote, &mut local).await {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Like `tokio::io::copy`, but flushes after every chunk so interactive output shows at once.
async fn copy_flushing(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}

/// Our stdin to the remote stdin; EOF closes the remote stdin (v5), so `cat` ends.
async fn pump_stdin(mut remote: ExecStdin) {
    let mut stdin = tokio::io::stdin();
    if copy_flushing(&mut stdin, &mut remote).await.is_ok() {
        // Fails only when the session already ended, which needs no handling.
        let _ = remote.shutdown().await;
    }
}

/// Sends our terminal size now and after every SIGWINCH, until the session ends.
async fn follow_terminal_size(resizer: TerminalResizer) {
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    loop {
        if let Some((width, height)) = term::size() {
            if resizer.resize(width, height).await.is_err() {
                return;
            }
        }
        if winch.recv().await.is_none() {
            return;
        }
    }
}
