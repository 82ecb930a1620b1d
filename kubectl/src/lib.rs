//! `konnectivity-kubectl`: `logs`, `exec` and `port-forward` against a node's kubelet, dialed
//! the way kube-apiserver dials it.
//!
//! The path is kube-apiserver's: the `cluster` selection of an `EgressSelectorConfiguration`
//! ([`konnectivity_client::egress`]) dials `node:port` through the Konnectivity proxy (or
//! directly), TLS runs over that tunnel with the kubelet-client certificate, and the kubelet's
//! certificate is verified against `--kubelet-certificate-authority` for the node's address
//! (so a proxy that terminates TLS is detected). The kubelet wire protocols come from
//! [`konnectivity_kubelet`].
//!
//! Every request opens its own tunnel. SIGINT/SIGTERM drop the operation in flight, which
//! closes its tunnels on every hop, and exit with 130/143.
#![forbid(unsafe_code)]

pub mod cli;
pub mod connect;
pub mod error;
pub mod exec;
pub mod logs;
pub mod port_forward;
pub mod signal;
pub mod target;
pub mod term;

use std::process::ExitCode;
use std::sync::Arc;

pub use cli::{Cli, Command};
pub use connect::KubeletConnector;
pub use error::KubectlError;

use konnectivity_runtime::{ShutdownSignal, ShutdownSignals};
use signal::INTERRUPT_CLEANUP_GRACE;

/// Exit status of a failed command (bad flags, unreachable kubelet, broken stream, …).
pub const EXIT_FAILURE: u8 = 1;

/// Runs one command to completion or interruption and returns the process exit status:
/// `logs`/`port-forward` 0, `exec` the remote command's code, 130 after SIGINT, 143 after
/// SIGTERM.
pub async fn run(cli: Cli) -> Result<ExitCode, KubectlError> {
    let mut interrupts = ShutdownSignals::install()
        .map_err(|e| KubectlError::io("installing signal handlers", e))?;
    let kubelet = Arc::new(KubeletConnector::from_cli(&cli)?);
    let operation = async {
        match cli.command {
            Command::Logs(args) => logs::run(&kubelet, args).await,
            Command::Exec(args) => exec::run(&kubelet, args).await,
            Command::PortForward(args) => port_forward::run(kubelet.clone(), args).await,
        }
    };
    // The operation future (and with it every stream and tunnel it owns) is dropped when this
    // select! returns, before the interrupt is handled below.
    let interrupted: Result<Result<ExitCode, KubectlError>, ShutdownSignal> = tokio::select! {
        result = operation => Ok(result),
        signal = interrupts.next() => Err(signal),
    };
    match interrupted {
        Ok(result) => result,
        Err(signal) => {
            tracing::debug!(?signal, "interrupted; closing the tunnel");
            tokio::time::sleep(INTERRUPT_CLEANUP_GRACE).await;
            Ok(ExitCode::from(signal.exit_code()))
        }
    }
}

/// The container named by `-c`: the kubelet API needs it in the path, and without
/// kube-apiserver there is no pod spec to pick a default from.
pub(crate) fn require_container(container: Option<&str>) -> Result<&str, KubectlError> {
    container.ok_or_else(|| {
        KubectlError::Usage(
            "-c/--container is required: the kubelet API addresses a container by name, and without kube-apiserver there is no pod spec to choose a default from".into(),
        )
    })
}

/// Logging to stderr, filtered by `RUST_LOG` (default `warn`), so stdout carries only the
/// command's output.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
