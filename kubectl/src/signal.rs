//! SIGINT/SIGTERM handling: the operation in flight is dropped (closing its tunnel on every
//! hop) and the process exits with the shell's `128 + signal` code. The handlers are the
//! proxy binaries' own ([`konnectivity_runtime::ShutdownSignals`]).

use std::time::Duration;

/// After an interrupt, how long the runtime is kept alive once the operation (and with it the
/// tunnel) was dropped, so that the background close of a gRPC tunnel (`CLOSE_REQ` to the
/// proxy) reaches the wire before the process exits. Cost: Ctrl-C takes this much longer to
/// return to the shell; without it the proxy only learns of the end from the broken
/// connection.
pub const INTERRUPT_CLEANUP_GRACE: Duration = Duration::from_millis(300);
