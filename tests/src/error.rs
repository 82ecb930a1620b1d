//! The one error type of the harness: every failure says what was being attempted.

use std::path::PathBuf;
use std::time::Duration;

/// Why a harness operation failed. Tests usually propagate it with `?` into `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file-system or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. "connecting to 127.0.0.1:8092".
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The test PKI could not be generated or written.
    #[error("generating the test PKI: {0}")]
    Certs(#[from] konnectivity_certs::CertsError),
    /// A PEM file held no usable certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The offending file.
        path: PathBuf,
        /// What was missing or wrong in it.
        reason: String,
    },
    /// A rustls configuration was refused (bad key, bad CA, …).
    #[error("TLS configuration for {what}: {source}")]
    TlsConfig {
        /// Which configuration was being built.
        what: String,
        #[source]
        source: rustls::Error,
    },
    /// A client-certificate verifier could not be built from a CA file.
    #[error("client-certificate verifier for {what}: {source}")]
    Verifier {
        /// Which configuration was being built.
        what: String,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// An HTTP exchange (hyper) failed.
    #[error("HTTP {what}: {source}")]
    Http {
        /// Which request was being made.
        what: String,
        #[source]
        source: hyper::Error,
    },
    /// An HTTP/2 exchange (raw gRPC) failed.
    #[error("HTTP/2 {what}: {source}")]
    H2 {
        /// Which step of the exchange failed.
        what: String,
        #[source]
        source: h2::Error,
    },
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        after: Duration,
    },
    /// A binary could not be found, built or started, or exited unexpectedly.
    #[error("{0}")]
    Process(String),
    /// A peer broke the protocol the harness expected (bad gRPC framing, bad HTTP, …).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl HarnessError {
    /// Wraps an I/O error with a description of the attempted operation.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }

    /// A timeout for `what` after `after`.
    pub fn timeout(what: impl Into<String>, after: Duration) -> Self {
        HarnessError::Timeout {
            what: what.into(),
            after,
        }
    }
}

/// Result alias used throughout the harness.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
