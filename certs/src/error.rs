//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while planning, generating or writing the PKI.
///
/// Each variant says what was wrong and, where there is one, what to do about it; input
/// errors are raised before any key is generated and file errors before any file is written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// `--key-type` named something this crate does not know.
    #[error(
        "unknown key type {value:?}: expected one of ecdsa-p256 (default), ecdsa-p384, ed25519"
    )]
    UnknownKeyType {
        /// The rejected value.
        value: String,
    },

    /// RSA was asked for; the `ring` backend of rcgen cannot generate RSA keys.
    #[error(
        "key type {value:?} is not supported: RSA keys cannot be generated with the ring crypto \
         backend; use ecdsa-p256 (default), ecdsa-p384 or ed25519"
    )]
    RsaUnsupported {
        /// The rejected value.
        value: String,
    },

    /// A subject alternative name is neither an IP address nor a valid DNS name.
    #[error("invalid SAN {value:?} for {cert}: {reason}")]
    InvalidSan {
        /// Which certificate the SAN was meant for (e.g. `frontend-server`).
        cert: String,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A serving certificate would have no SAN at all, so no client could ever verify it.
    #[error("{cert} needs at least one SAN (DNS name or IP address)")]
    NoSans {
        /// Which certificate has none.
        cert: String,
    },

    /// An agent or kubelet-node name cannot be used as part of a file name.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// `agent` or `kubelet node`.
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// Two agents or two kubelet nodes share a name, so their files would collide.
    #[error("duplicate {kind} name {name:?}: every name must be unique")]
    DuplicateName {
        /// `agent` or `kubelet node`.
        kind: &'static str,
        /// The repeated name.
        name: String,
    },

    /// A `--kubelet-node` value is not `NAME` or `NAME=SAN[,SAN…]`.
    #[error("invalid kubelet node {value:?}: {reason} (expected NAME or NAME=SAN[,SAN...])")]
    InvalidKubeletNode {
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A validity period is zero or too long.
    #[error("invalid validity for {what}: {days} days (must be between 1 and {max})")]
    InvalidValidity {
        /// `leaf certificates` or `CA certificates`.
        what: &'static str,
        /// The rejected number of days.
        days: u32,
        /// The largest accepted number of days.
        max: u32,
    },

    /// Leaves would outlive the CA that signed them and become unverifiable before they expire.
    #[error(
        "leaf validity ({leaf_days} days) exceeds CA validity ({ca_days} days): raise the CA \
         validity or lower the leaf validity"
    )]
    LeafOutlivesCa {
        /// Requested leaf validity.
        leaf_days: u32,
        /// Requested CA validity.
        ca_days: u32,
    },

    /// rcgen failed to generate a key or sign a certificate.
    #[error("could not generate {what}: {source}")]
    Generate {
        /// The key or certificate being generated.
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },

    /// A target file already exists and overwriting was not allowed; nothing was written.
    #[error(
        "refusing to overwrite existing file {}: nothing was written; use --force to replace \
         the whole set",
        path.display()
    )]
    WouldOverwrite {
        /// The existing file.
        path: PathBuf,
    },

    /// The output directory could not be created or inspected.
    #[error("cannot create output directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file could not be checked, written or moved into place.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
