//! SIGINT/SIGTERM handling: the operation in flight is dropped (closing its tunnel on every
//! hop) and the process exits with the shell's `128 + signal` code.

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// After an interrupt, how long the runtime is kept alive once the operation (and with it the
/// tunnel) was dropped, so that the background close of a gRPC tunnel (`CLOSE_REQ` to the
/// proxy) reaches the wire before the process exits. Cost: Ctrl-C takes this much longer to
/// return to the shell; without it the proxy only learns of the end from the broken
/// connection.
pub const INTERRUPT_CLEANUP_GRACE: Duration = Duration::from_millis(300);

/// Which signal ended the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// SIGINT (Ctrl-C).
    Int,
    /// SIGTERM.
    Term,
}

impl Interrupt {
    /// The exit status a shell reports for a process killed by this signal.
    pub fn exit_code(self) -> u8 {
        match self {
            Interrupt::Int => 130,
            Interrupt::Term => 143,
        }
    }
}

/// SIGINT and SIGTERM, installed once at start so that neither kills the process before the
/// cleanup runs.
pub struct Interrupts {
    int: Signal,
    term: Signal,
}

impl Interrupts {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Self> {
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn next(&mut self) -> Interrupt {
        tokio::select! {
            _ = self.int.recv() => Interrupt::Int,
            _ = self.term.recv() => Interrupt::Term,
        }
    }
}
