//! Polling helpers: every readiness condition in the suite is awaited with a deadline.

use std::future::Future;
use std::time::Duration;

use crate::error::{HarnessError, Result};

/// How often conditions are re-checked. Smaller wastes CPU on the shared 2-core machine,
/// larger makes every test slower by up to this much per wait.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Time allowed for a process to start listening (debug builds on a busy 2-core machine).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Time allowed for an agent to connect to a server and become ready (sync interval in the
/// harness is 100 ms, backoff cap 1 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Polls `check` every [`POLL_INTERVAL`] until it yields `true`, or fails after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HarnessError::timeout(what, timeout));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs `fut` with a deadline, turning expiry into a [`HarnessError::Timeout`] naming `what`.
pub async fn with_timeout<T>(
    what: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(HarnessError::timeout(what, timeout)),
    }
}
