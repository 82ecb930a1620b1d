//! The `proxy-agent` binary: flags → validated config → logging → tokio runtime → signals →
//! [`proxy_agent::run`].
//!
//! Signals, as upstream: the first SIGTERM/SIGINT cancels `drain` (the agent sends DRAIN to its
//! servers and keeps serving), the second cancels `shutdown`; the process exits once `run`
//! returns, or [`SHUTDOWN_DEADLINE`] after the second signal regardless.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use konnectivity_runtime::{ShutdownSignals, RUNTIME_SHUTDOWN_GRACE};
use proxy_agent::flags::AgentFlags;
use tokio_util::sync::CancellationToken;

/// Exit status for flags that parse but do not validate, as for a clap usage error.
const EXIT_USAGE: u8 = 2;

/// How long `run` may take to return after the second signal before the process exits anyway.
/// Cost: a stuck teardown delays exit by this much; in-flight tunnels are cut when it expires.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

async fn handle_signals(
    mut signals: ShutdownSignals,
    drain: CancellationToken,
    shutdown: CancellationToken,
) {
    let first = signals.next().await;
    tracing::info!(
        signal = first.name(),
        "received first signal: sending DRAIN to every proxy-server; the agent keeps serving \
         existing connections until a second signal"
    );
    drain.cancel();
    let second = signals.next().await;
    tracing::info!(
        signal = second.name(),
        "received second signal: shutting down"
    );
    shutdown.cancel();
}

/// How the agent ended.
enum Outcome {
    /// `run` returned.
    Returned(Result<(), proxy_agent::AgentError>),
    /// `run` did not return within [`SHUTDOWN_DEADLINE`] of the second signal.
    DeadlineExpired,
}

fn serve(config: proxy_agent::config::AgentConfig) -> anyhow::Result<()> {
    let runtime = konnectivity_runtime::build(config.extensions.worker_threads)
        .context("cannot build the tokio runtime")?;
    let outcome = runtime.block_on(async move {
        let drain = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let signals =
            ShutdownSignals::install().context("cannot install SIGTERM/SIGINT handlers")?;
        tokio::spawn(handle_signals(signals, drain.clone(), shutdown.clone()));
        let run = proxy_agent::run(config, drain, shutdown.clone());
        tokio::pin!(run);
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_DEADLINE).await;
        };
        anyhow::Ok(tokio::select! {
            result = &mut run => Outcome::Returned(result),
            () = deadline => Outcome::DeadlineExpired,
        })
    })?;
    match outcome {
        Outcome::Returned(result) => {
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
            result.context("proxy-agent stopped with an error")
        }
        Outcome::DeadlineExpired => {
            tracing::warn!(
                deadline = ?SHUTDOWN_DEADLINE,
                "proxy-agent did not stop in time after the second signal; exiting anyway"
            );
            runtime.shutdown_background();
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    // Before any thread exists (logging may start one): see the module for why.
    let allocator = konnectivity_runtime::allocator::tune();
    let open_files = konnectivity_runtime::open_files::raise_to_hard_limit();
    let flags = AgentFlags::parse();
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
        "proxy-agent starting with this effective configuration"
    );
    match serve(config) {
        Ok(()) => {
            tracing::info!("proxy-agent stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
