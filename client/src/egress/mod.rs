//! kube-apiserver's egress selector: read an `EgressSelectorConfiguration` file and get, for a
//! traffic class, the dialer kube-apiserver would use.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use konnectivity_client::egress::{EgressSelector, SelectionName};
//! let selector = EgressSelector::from_file("/etc/kubernetes/egress-selector.yaml".as_ref())?;
//! let dialer = selector.lookup(SelectionName::Cluster);
//! let stream = dialer.dial("10.1.0.11:10250").await?; // run TLS to the kubelet over this
//! # drop(stream); Ok(()) }
//! ```
//!
//! * [`decode`]: YAML or JSON, `apiserver.k8s.io/v1beta1` or `v1alpha1` (there is no `v1`),
//!   strict (unknown fields rejected), `master` renamed `controlplane`.
//! * [`EgressSelectorConfiguration::validate`]: kube-apiserver's checks with its exact messages.
//! * [`EgressSelector`]: one [`EgressDialer`] per configured selection, built eagerly (TLS
//!   files loaded) as kube-apiserver does at startup; a selection that is not configured is
//!   [`EgressDialer::Direct`].
//!
//! Errors print as kube-apiserver prints them at startup, e.g.
//! `failed to validate egress selector configuration: service.connection.uds: Required value:
//! UDS must be set with GRPC`.

mod dialer;
mod schema;
mod validation;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use dialer::{
    DialError, DialerBuildError, EgressDialer, EgressStream, DIRECT_DIAL_TIMEOUT,
    SSL_CERT_FILE_ENV, SYSTEM_CA_BUNDLES,
};
pub use schema::{
    decode, ApiVersion, Connection, DecodeError, EgressSelection, EgressSelectorConfiguration,
    TcpTransport, TlsConfig, Transport, UdsTransport, API_GROUP, KIND, LEGACY_CONTROLPLANE_NAME,
};
pub use validation::{
    FieldError, FieldErrorType, ValidationErrors, PROTOCOL_DIRECT, PROTOCOL_GRPC,
    PROTOCOL_HTTP_CONNECT, VALID_SELECTION_NAMES,
};

/// Largest configuration file read. Cost: a (nonsensical) bigger file is refused; real ones
/// are well under a kilobyte.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A traffic class of kube-apiserver, i.e. which selection a dial uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectionName {
    /// Traffic to nodes and pods: kubelet logs/exec/attach/port-forward, pod/service/node
    /// proxy, aggregated API servers, service-referenced webhooks.
    Cluster,
    /// Traffic to the control plane network: URL-configured webhooks, audit, tracing.
    ControlPlane,
    /// The etcd client.
    Etcd,
}

impl SelectionName {
    /// The canonical (lower-case) name.
    pub fn as_str(self) -> &'static str {
        match self {
            SelectionName::Cluster => "cluster",
            SelectionName::ControlPlane => "controlplane",
            SelectionName::Etcd => "etcd",
        }
    }

    /// Parses a selection name case-insensitively, as kube-apiserver matches them; `None`
    /// for anything else (including `master`, which only the file decoding renames).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_lowercase().as_str() {
            "cluster" => Some(SelectionName::Cluster),
            "controlplane" => Some(SelectionName::ControlPlane),
            "etcd" => Some(SelectionName::Etcd),
            _ => None,
        }
    }
}

impl std::fmt::Display for SelectionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an egress selector could not be set up from a file. Display strings follow
/// kube-apiserver's startup errors.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The file does not exist (kube-apiserver's flag check).
    #[error("egress-selector-config-file {} does not exist", path.display())]
    NotFound {
        /// The configured path.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("failed to read egress selector config: unable to read egress selector configuration from {:?} [{source}]", path.display().to_string())]
    Read {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("failed to read egress selector config: {} is larger than {MAX_CONFIG_BYTES} bytes; is it the right file?", path.display())]
    TooLarge {
        /// The configured path.
        path: PathBuf,
    },
    /// The bytes are not a decodable configuration.
    #[error("failed to read egress selector config: {0}")]
    Decode(#[from] DecodeError),
    /// The configuration decodes but kube-apiserver would refuse it.
    #[error("failed to validate egress selector configuration: {0}")]
    Invalid(#[from] ValidationErrors),
    /// A selection could not be turned into a dialer (TLS files unreadable, …).
    #[error("failed to setup egress selector: failed to create dialer for egressSelection {name:?}: {source}")]
    Dialer {
        /// The selection's name as written.
        name: String,
        /// What failed.
        #[source]
        source: DialerBuildError,
    },
}

/// Reads, decodes and validates a configuration file, with kube-apiserver's messages.
pub fn load_config(path: &Path) -> Result<EgressSelectorConfiguration, EgressError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EgressError::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(EgressError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(EgressError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let data = std::fs::read(path).map_err(|source| EgressError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = decode(&data)?;
    config.validate()?;
    Ok(config)
}

/// The dialers of a loaded configuration, one per configured selection.
#[derive(Debug, Clone, Default)]
pub struct EgressSelector {
    dialers: Vec<(SelectionName, Connection, EgressDialer)>,
}

impl EgressSelector {
    /// [`load_config`] then [`EgressSelector::from_config`].
    pub fn from_file(path: &Path) -> Result<Self, EgressError> {
        Self::from_config(&load_config(path)?)
    }

    /// Validates `config` and builds every selection's dialer (loading TLS files now).
    pub fn from_config(config: &EgressSelectorConfiguration) -> Result<Self, EgressError> {
        config.validate()?;
        let mut dialers = Vec::with_capacity(config.egress_selections.len());
        for selection in &config.egress_selections {
            let dialer_error = |source| EgressError::Dialer {
                name: selection.name.clone(),
                source,
            };
            let name = SelectionName::parse(&selection.name).ok_or_else(|| {
                // Unreachable after validation; kept as an error rather than a panic.
                dialer_error(DialerBuildError::UnknownProtocol(selection.name.clone()))
            })?;
            let dialer =
                EgressDialer::from_connection(&selection.connection).map_err(dialer_error)?;
            dialers.push((name, selection.connection.clone(), dialer));
        }
        Ok(EgressSelector { dialers })
    }

    /// The dialer for `name`: the configured one, or [`EgressDialer::Direct`] when the file
    /// does not mention that selection (kube-apiserver's nil dialer).
    pub fn lookup(&self, name: SelectionName) -> EgressDialer {
        self.dialers
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, d)| d.clone())
            .unwrap_or(EgressDialer::Direct)
    }

    /// The configured connection of `name`, `None` when the file does not mention it.
    pub fn connection(&self, name: SelectionName) -> Option<&Connection> {
        self.dialers
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, c, _)| c)
    }

    /// One line saying how `name` is dialed, for messages: `GRPC over unix socket /x`,
    /// `HTTPConnect over https://h:p`, `Direct`; `None` when not configured.
    pub fn describe(&self, name: SelectionName) -> Option<String> {
        self.connection(name).map(Connection::describe)
    }

    /// Replaces the dial timeout of every proxy dialer (see [`crate::Dialer::with_dial_timeout`]).
    pub fn with_dial_timeout(self, timeout: Duration) -> Self {
        EgressSelector {
            dialers: self
                .dialers
                .into_iter()
                .map(|(n, c, d)| (n, c, d.with_dial_timeout(timeout)))
                .collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("egress.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn selection_names_parse_case_insensitively_without_master() {
        assert_eq!(
            SelectionName::parse("Cluster"),
            Some(SelectionName::Cluster)
        );
        assert_eq!(
            SelectionName::parse("CONTROLPLANE"),
            Some(SelectionName::ControlPlane)
        );
        assert_eq!(SelectionName::parse("etcd"), Some(SelectionName::Etcd));
        assert_eq!(SelectionName::parse("master"), None);
        assert_eq!(SelectionName::Cluster.to_string(), "cluster");
    }

    #[test]
    fn missing_file_reports_like_the_flag_check() {
        let err = EgressSelector::from_file(Path::new("/nonexistent/egress.yaml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "egress-selector-config-file /nonexistent/egress.yaml does not exist"
        );
    }

    #[test]
    fn invalid_file_is_prefixed_like_kube_apiserver() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      tcp:\n        url: https://127.0.0.1:8131\n",
        );
        let err = EgressSelector::from_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to validate egress selector configuration: service.connection.uds: Required value: UDS must be set with GRPC"
        );
    }

    #[test]
    fn undecodable_file_is_prefixed_like_kube_apiserver() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "apiVersion: apiserver.k8s.io/v1\nkind: EgressSelectorConfiguration\n",
        );
        let err = EgressSelector::from_file(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("failed to read egress selector config: no kind \"EgressSelectorConfiguration\" is registered for version \"apiserver.k8s.io/v1\""),
            "{err}"
        );
    }

    #[test]
    fn lookup_returns_the_configured_dialer_or_direct() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: Cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        udsName: /run/konnectivity.sock\n- name: master\n  connection:\n    proxyProtocol: Direct\n",
        );
        let selector = EgressSelector::from_file(&path).unwrap();
        let EgressDialer::Proxy(_) = selector.lookup(SelectionName::Cluster) else {
            panic!("cluster must go through the proxy");
        };
        assert!(selector.lookup(SelectionName::ControlPlane).is_direct());
        assert!(selector.lookup(SelectionName::Etcd).is_direct());
        assert_eq!(
            selector.describe(SelectionName::Cluster).as_deref(),
            Some("GRPC over unix socket /run/konnectivity.sock")
        );
        assert_eq!(
            selector.describe(SelectionName::ControlPlane).as_deref(),
            Some("Direct")
        );
        assert_eq!(selector.describe(SelectionName::Etcd), None);
    }

    #[test]
    fn dialer_build_failure_names_the_selection() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "not pem").unwrap();
        let path = write(
            &dir,
            &format!(
                "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      tcp:\n        url: https://127.0.0.1:8131\n        tlsConfig:\n          caBundle: {p}\n          clientCert: {p}\n          clientKey: {p}\n",
                p = pem.display()
            ),
        );
        let err = EgressSelector::from_file(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("failed to setup egress selector: failed to create dialer for egressSelection \"cluster\": "),
            "{text}"
        );
    }

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, &"#".repeat(MAX_CONFIG_BYTES as usize + 1));
        let err = load_config(&path).unwrap_err();
        assert!(matches!(err, EgressError::TooLarge { .. }), "{err}");
    }
}
