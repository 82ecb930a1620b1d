//! Process setup shared by `proxy-server` and `proxy-agent`.
//!
//! Both binaries build the same multi-threaded tokio runtime, take SIGTERM/SIGINT the same
//! way, raise their open-file limit and tune the allocator the same way before any thread
//! starts; what they *do* on a signal differs and stays in their `main`.

pub mod allocator;
pub mod open_files;

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// After `run` returns, how long dropping the runtime may wait for blocking tasks (file reads,
/// DNS) still in flight. Cost: at most this much extra exit latency; longer-running blocking
/// work is abandoned.
pub const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Validates a `--worker-threads` value (Go-style signed flag): 0 or more, 0 meaning tokio's
/// default. The `Err` is the message for the operator.
pub fn worker_threads_flag(value: i64) -> Result<usize, String> {
    usize::try_from(value)
        .map_err(|_| format!("--worker-threads must be >= 0 (0: one per CPU), got {value}"))
}

/// Builds the multi-threaded runtime with `worker_threads` workers; 0 keeps tokio's default
/// (one per CPU, or `$TOKIO_WORKER_THREADS`).
pub fn build(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    builder.enable_all().build()
}

/// Which of the two stop signals arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGINT (Ctrl-C).
    Int,
    /// SIGTERM (what Kubernetes sends).
    Term,
}

impl ShutdownSignal {
    /// The signal's name, for log lines.
    pub fn name(self) -> &'static str {
        match self {
            ShutdownSignal::Int => "SIGINT",
            ShutdownSignal::Term => "SIGTERM",
        }
    }

    /// The exit status a shell reports for a process killed by this signal (`128 + n`), for
    /// a CLI that stops on it.
    pub fn exit_code(self) -> u8 {
        match self {
            ShutdownSignal::Int => 130,
            ShutdownSignal::Term => 143,
        }
    }
}

/// SIGTERM and SIGINT as one stream: both mean "stop", and upstream treats them alike.
/// Installed once at start so that neither kills the process before its cleanup runs.
#[derive(Debug)]
pub struct ShutdownSignals {
    term: Signal,
    int: Signal,
}

impl ShutdownSignals {
    /// Installs both handlers; must be called inside the runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn next(&mut self) -> ShutdownSignal {
        tokio::select! {
            _ = self.term.recv() => ShutdownSignal::Term,
            _ = self.int.recv() => ShutdownSignal::Int,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_flag_takes_zero_or_more() {
        assert_eq!(worker_threads_flag(0), Ok(0));
        assert_eq!(worker_threads_flag(3), Ok(3));
        assert_eq!(
            worker_threads_flag(-1).expect_err("negative"),
            "--worker-threads must be >= 0 (0: one per CPU), got -1"
        );
    }

    #[test]
    fn build_honours_an_explicit_worker_count() {
        let rt = build(1).expect("runtime");
        assert_eq!(rt.metrics().num_workers(), 1);
        let rt = build(0).expect("runtime");
        assert!(rt.metrics().num_workers() >= 1);
    }

    #[test]
    fn signals_name_themselves_and_exit_as_a_shell_reports_them() {
        assert_eq!(ShutdownSignal::Int.name(), "SIGINT");
        assert_eq!(ShutdownSignal::Term.name(), "SIGTERM");
        assert_eq!(ShutdownSignal::Int.exit_code(), 130);
        assert_eq!(ShutdownSignal::Term.exit_code(), 143);
    }

    #[test]
    fn signals_install_inside_a_runtime() {
        let rt = build(1).expect("runtime");
        rt.block_on(async { ShutdownSignals::install().expect("handlers") });
    }
}
