//! `logs`: `GET /containerLogs`, body streamed to stdout as it arrives.

use std::process::ExitCode;

use futures::StreamExt;
use konnectivity_kubelet::LogOptions;
use tokio::io::AsyncWriteExt;

use crate::cli::LogsArgs;
use crate::connect::KubeletConnector;
use crate::error::KubectlError;
use crate::require_container;

/// Streams the log to stdout until the kubelet ends it (or, with `-f`, until interrupted).
pub async fn run(kubelet: &KubeletConnector, args: LogsArgs) -> Result<ExitCode, KubectlError> {
    let container = require_container(args.container.as_deref())?;
    let opts = LogOptions {
        follow: args.follow,
        // kubectl sends no tailLines for --tail=-1 (all lines).
        tail_lines: args.tail.filter(|n| *n >= 0),
        timestamps: args.timestamps,
        ..LogOptions::default()
    };
    let stream = kubelet.connect().await?;
    let mut logs = konnectivity_kubelet::logs(
        stream,
        kubelet.address(),
        &args.pod.namespace,
        &args.pod.pod,
        container,
        opts,
    )
    .await
    .map_err(KubectlError::kubelet)?;
    let mut stdout = tokio::io::stdout();
    while let Some(chunk) = logs.next().await {
        let chunk = chunk.map_err(|e| KubectlError::StreamBroken {
            what: "log",
            address: kubelet.address().to_string(),
            detail: crate::error::chain(&e),
        })?;
        let written = async {
            stdout.write_all(&chunk).await?;
            stdout.flush().await
        };
        match written.await {
            Ok(()) => {}
            // The reader went away (`| head`): stop quietly, as a shell pipeline expects.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(KubectlError::io("writing the log to stdout", e)),
        }
    }
    Ok(ExitCode::SUCCESS)
}
