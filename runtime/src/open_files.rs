//! The open-file limit.
//!
//! Every tunnel holds a descriptor in each binary (the frontend connection in the server, the
//! destination socket in the agent), so the soft `RLIMIT_NOFILE` caps how many tunnels a
//! process can carry. Many hosts and container runtimes start processes with a soft limit of
//! 1,024 under a much higher hard limit; Go programs (the upstream proxy among them) raise
//! the soft limit to the hard one at start, and an operator sizing a node for upstream's
//! tunnel counts expects the same here. [`raise_to_hard_limit`] does it; the hard limit stays
//! the operator's (`ulimit -Hn`, systemd's `LimitNOFILE=`, the container runtime's `nofile`).

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The limits before and after [`raise_to_hard_limit`], for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// Soft limit inherited from the parent.
    pub before: u64,
    /// Soft limit in force now.
    pub now: u64,
    /// Hard limit (unchanged).
    pub hard: u64,
}

/// Reading or raising the limit failed; the process keeps the inherited limit.
#[derive(Debug, thiserror::Error)]
pub enum OpenFilesError {
    /// `getrlimit` failed (it does not on Linux; kept for completeness).
    #[error("cannot read the open-file limit (RLIMIT_NOFILE): {0}")]
    Read(nix::Error),
    /// `setrlimit` refused the hard limit as the soft one.
    #[error(
        "cannot raise the soft open-file limit from {from} to the hard limit {to}: {source}; \
         tunnels beyond about {from} descriptors will be refused (set the soft limit with \
         `ulimit -n` or LimitNOFILE=)"
    )]
    Raise {
        /// The inherited soft limit, still in force.
        from: u64,
        /// The hard limit asked for.
        to: u64,
        /// Why.
        source: nix::Error,
    },
}

/// The soft limit to ask for, given the inherited `soft` and `hard` ones: the hard limit when
/// it is higher (as Go's runtime does), nothing otherwise.
pub fn wanted_soft_limit(soft: u64, hard: u64) -> Option<u64> {
    (soft < hard).then_some(hard)
}

/// Raises this process's soft open-file limit to its hard limit.
pub fn raise_to_hard_limit() -> Result<OpenFileLimit, OpenFilesError> {
    let (before, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(OpenFilesError::Read)?;
    let Some(wanted) = wanted_soft_limit(before, hard) else {
        return Ok(OpenFileLimit {
            before,
            now: before,
            hard,
        });
    };
    setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).map_err(|source| OpenFilesError::Raise {
        from: before,
        to: wanted,
        source,
    })?;
    let (now, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(OpenFilesError::Read)?;
    Ok(OpenFileLimit { before, now, hard })
}

/// Logs what [`raise_to_hard_limit`] did, once at start: the effective limit at info (it
/// caps the tunnels), a failure as a warning.
pub fn log(outcome: &Result<OpenFileLimit, OpenFilesError>) {
    match outcome {
        Ok(limit) => tracing::info!(
            soft = limit.now,
            inherited = limit.before,
            hard = limit.hard,
            "open-file limit (one descriptor per tunnel)"
        ),
        Err(e) => tracing::warn!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soft_limit_below_the_hard_one_is_raised_to_it() {
        assert_eq!(wanted_soft_limit(1024, 524_288), Some(524_288));
    }

    #[test]
    fn a_soft_limit_at_the_hard_one_is_left_alone() {
        assert_eq!(wanted_soft_limit(20_000, 20_000), None);
        assert_eq!(wanted_soft_limit(u64::MAX, u64::MAX), None);
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        // Raising only ever moves the soft limit up to the hard one, which any process may
        // do, so running it in the test process changes nothing another test relies on.
        let limit = raise_to_hard_limit().expect("raise");
        assert_eq!(limit.now, limit.hard);
        assert!(limit.before <= limit.now);
    }
}
