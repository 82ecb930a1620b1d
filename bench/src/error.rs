//! What can go wrong while benchmarking, worded so the table's FAILED cell says what to do.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why a benchmark step failed. Each variant names the step and the remedy where there is one.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An I/O operation of the bench itself failed (files, sockets, child processes).
    #[error("{context}: {source}")]
    Io {
        /// What the bench was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The proxy-server or proxy-agent binary could not be found or built.
    #[error("{0}")]
    Binaries(String),
    /// A child process (server, agent, destination holder) failed to start or died.
    #[error("{0}")]
    Process(String),
    /// The test PKI could not be generated or written.
    #[error("generating the benchmark PKI failed: {0}")]
    Pki(#[from] konnectivity_certs::CertsError),
    /// A dial through the proxy failed.
    #[error("dial through the proxy failed: {0}")]
    Dial(#[from] konnectivity_client::ClientError),
    /// Bytes arrived that differ from the deterministic pattern that was sent: the figure of
    /// this transfer does not count.
    #[error(
        "data corrupted at byte {offset} of the stream: expected {expected:#04x}, got {got:#04x}"
    )]
    Corrupt {
        /// Stream offset of the first wrong byte.
        offset: u64,
        /// The pattern byte expected there.
        expected: u8,
        /// The byte received.
        got: u8,
    },
    /// A stream ended or carried a different number of bytes than was sent.
    #[error("byte count mismatch on {what}: expected {expected} bytes, got {got}")]
    CountMismatch {
        /// Which transfer.
        what: String,
        /// Bytes sent.
        expected: u64,
        /// Bytes received before the stream ended.
        got: u64,
    },
    /// The destination service answered with something that is not the bench protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A step did not finish in time.
    #[error("{what} did not finish within {limit:?}")]
    Timeout {
        /// The step.
        what: String,
        /// The limit that was exceeded.
        limit: Duration,
    },
    /// Reading `/proc` for CPU or memory figures failed.
    #[error("reading {path} failed: {reason}")]
    Proc {
        /// The `/proc` file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The configuration (command line) is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl BenchError {
    /// An [`BenchError::Io`] with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> BenchError {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }

    /// A [`BenchError::Timeout`].
    pub fn timeout(what: impl Into<String>, limit: Duration) -> BenchError {
        BenchError::Timeout {
            what: what.into(),
            limit,
        }
    }
}

/// Result alias for the bench.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
