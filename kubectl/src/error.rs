//! Everything that can end a command, worded for the operator at the terminal.

use std::path::PathBuf;

use konnectivity_client::egress::{DialError, EgressError};
use konnectivity_kubelet::{KubeletError, KubeletTlsError};

/// Why a command failed. Each message says what happened and what to check.
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    /// Flags that parse but do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// The egress selector configuration could not be used (kube-apiserver's own messages).
    #[error(transparent)]
    Egress(#[from] Box<EgressError>),
    /// The kubelet TLS material could not be loaded.
    #[error("{0}")]
    TlsConfig(#[source] Box<KubeletTlsError>),
    /// No connection to the kubelet's address could be opened.
    #[error("cannot reach the kubelet at {address} {via}: {source}")]
    Dial {
        /// `host:port` dialed.
        address: String,
        /// `through the proxy (…)` or `directly`.
        via: String,
        /// The dial error (boxed: it is large and errors are returned often).
        #[source]
        source: Box<DialError>,
    },
    /// The kubelet's certificate failed verification: another CA, another name, or unusable.
    #[error("kubelet certificate not trusted: {detail}")]
    Untrusted {
        /// What was presented and why it is refused, with a hint.
        detail: String,
        /// The classified TLS error (boxed: it is large).
        #[source]
        source: Box<KubeletTlsError>,
    },
    /// The TLS handshake failed for another reason (our certificate refused, not TLS, …).
    #[error("TLS with the kubelet at {address} failed: {source}")]
    Tls {
        /// `host:port` dialed.
        address: String,
        /// The classified TLS error (boxed: it is large).
        #[source]
        source: Box<KubeletTlsError>,
    },
    /// The request could not be started (bad name, refused by the kubelet, …).
    #[error("{0}")]
    Kubelet(#[source] Box<KubeletError>),
    /// An established stream broke before its natural end.
    #[error("the {what} stream from the kubelet at {address} broke: {detail}; the connection through the tunnel was lost (proxy-agent, proxy-server or node gone?)")]
    StreamBroken {
        /// `log`, `exec` or `port-forward`.
        what: &'static str,
        /// `host:port` of the kubelet.
        address: String,
        /// The underlying error.
        detail: String,
    },
    /// The remote command could not run to an exit code.
    #[error("the command did not run: {reason}{sep}{message}", sep = if reason.is_empty() { "" } else { ": " })]
    CommandFailed {
        /// The Status reason (e.g. `InternalError`), may be empty.
        reason: String,
        /// The kubelet's message.
        message: String,
    },
    /// A local port could not be listened on.
    #[error("cannot listen on 127.0.0.1:{port} for port-forward: {source}")]
    Listen {
        /// The local port.
        port: u16,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Local input/output failed (stdout closed, stdin unreadable, terminal settings, …).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file named by a flag does not exist.
    #[error("{flag} {}: no such file", path.display())]
    MissingFile {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: PathBuf,
    },
}

impl From<EgressError> for KubectlError {
    fn from(e: EgressError) -> Self {
        KubectlError::Egress(Box::new(e))
    }
}

impl KubectlError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        KubectlError::Io {
            context: context.into(),
            source,
        }
    }

    /// Classifies a TLS handshake failure: verification failures become
    /// [`KubectlError::Untrusted`] with a hint, the rest [`KubectlError::Tls`].
    pub fn from_tls(address: &str, source: KubeletTlsError) -> Self {
        let detail = match &source {
            KubeletTlsError::UnknownIssuer { ca, presented, .. } => format!(
                "the kubelet at {address} presented a certificate that the kubelet CA {} did not issue ({presented}) (is a proxy terminating TLS? is --kubelet-certificate-authority this cluster's kubelet CA?)",
                ca.display()
            ),
            KubeletTlsError::NotValidForName {
                server_name,
                presented,
            } => format!(
                "the certificate presented at {address} is not valid for {server_name} ({presented}) (is a proxy terminating TLS? otherwise dial the node by an address its certificate lists: --node, or --tls-server-name)"
            ),
            KubeletTlsError::BadCertificate {
                reason, presented, ..
            } => format!(
                "the certificate presented at {address} is unusable: {reason} ({presented}) (is a proxy terminating TLS?)"
            ),
            _ => {
                return KubectlError::Tls {
                    address: address.to_string(),
                    source: Box::new(source),
                }
            }
        };
        KubectlError::Untrusted {
            detail,
            source: Box::new(source),
        }
    }

    /// Wraps a kubelet request error.
    pub fn kubelet(source: KubeletError) -> Self {
        KubectlError::Kubelet(Box::new(source))
    }
}

/// An error and its sources as one line, each cause once (`a: b: c`), so that a message like
/// hyper's "error reading a body from connection" is followed by the I/O error behind it.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_appends_each_cause_once() {
        let e = Outer(std::io::Error::other("peer closed connection"));
        assert_eq!(chain(&e), "outer: peer closed connection");
        let io = std::io::Error::other("only");
        assert_eq!(chain(&io), "only");
    }

    #[test]
    fn certificate_failures_say_not_trusted_and_suggest_a_tls_terminating_proxy() {
        let e = KubectlError::from_tls(
            "10.1.0.11:10250",
            KubeletTlsError::NotValidForName {
                server_name: "10.1.0.11".into(),
                presented: Default::default(),
            },
        );
        let text = e.to_string();
        assert!(
            text.starts_with("kubelet certificate not trusted: "),
            "{text}"
        );
        assert!(text.contains("is a proxy terminating TLS?"), "{text}");
        let other = KubectlError::from_tls(
            "10.1.0.11:10250",
            KubeletTlsError::Timeout {
                server_name: "10.1.0.11".into(),
                timeout: std::time::Duration::from_secs(10),
            },
        );
        assert!(matches!(other, KubectlError::Tls { .. }), "{other}");
    }
}
