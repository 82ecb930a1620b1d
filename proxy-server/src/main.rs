//! The `proxy-server` binary: flags → validated config → logging → tokio runtime → signals →
//! [`proxy_server::run`].
//!
//! Signals, as upstream: the first SIGTERM/SIGINT starts a graceful shutdown (cancels the
//! `shutdown` token; `--graceful-shutdown-timeout` bounds it inside `run`), a second one exits
//! the process at once with status 1.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use konnectivity_runtime::{ShutdownSignals, RUNTIME_SHUTDOWN_GRACE};
use proxy_server::flags::ServerFlags;
use tokio_util::sync::CancellationToken;

/// Exit status for flags that parse but do not validate, as for a clap usage error.
const EXIT_USAGE: u8 = 2;

/// Exit status when a second signal interrupts the graceful shutdown (upstream's `os.Exit(1)`).
const EXIT_SECOND_SIGNAL: i32 = 1;

async fn handle_signals(mut signals: ShutdownSignals, shutdown: CancellationToken) {
    let first = signals.next().await;
    tracing::info!(
        signal = first.name(),
        "received first signal: shutting down gracefully; a second signal exits immediately"
    );
    shutdown.cancel();
    let second = signals.next().await;
    tracing::warn!(
        signal = second.name(),
        "received second signal: exiting now"
    );
    std::process::exit(EXIT_SECOND_SIGNAL);
}

fn serve(config: proxy_server::config::ServerConfig) -> anyhow::Result<()> {
    let runtime = konnectivity_runtime::build(config.extensions.worker_threads)
        .context("cannot build the tokio runtime")?;
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals =
            ShutdownSignals::install().context("cannot install SIGTERM/SIGINT handlers")?;
        tokio::spawn(handle_signals(signals, shutdown.clone()));
        proxy_server::run(config, shutdown)
            .await
            .context("proxy-server stopped with an error")
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    result
}

fn main() -> ExitCode {
    // Before any thread exists (logging may start one): see the module for why.
    let allocator = konnectivity_runtime::allocator::tune();
    let open_files = konnectivity_runtime::open_files::raise_to_hard_limit();
    let flags = ServerFlags::parse();
    let klog = flags.klog.clone();
    let notices = flags.notices();
    let config = match flags.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("Error: invalid flags: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let _logging = match konnectivity_goflags::init_logging(&klog) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for notice in notices {
        tracing::warn!("{notice}");
    }
    match allocator {
        Ok(tuning) => tracing::debug!(?tuning, "malloc thresholds"),
        Err(e) => tracing::warn!("{e}"),
    }
    konnectivity_runtime::open_files::log(&open_files);
    tracing::info!(
        ?config,
        "proxy-server starting with this effective configuration"
    );
    match serve(config) {
        Ok(()) => {
            tracing::info!("proxy-server stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
