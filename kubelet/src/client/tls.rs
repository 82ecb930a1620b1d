//! TLS towards a kubelet, as kube-apiserver does it: present the kubelet-client certificate,
//! verify the kubelet's serving certificate against `--kubelet-certificate-authority` and the
//! dialled address (an IP is checked against IP SANs, a name against DNS SANs), ALPN
//! `http/1.1` only.
//!
//! Failures are classified so a CLI can say what is wrong: a certificate from another CA
//! (which is also what a proxy that terminates TLS looks like), a certificate for another
//! name, our own certificate being refused, or a peer that does not speak TLS at all.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use konnectivity_tls::{load_certs, load_private_key, TlsError, TlsTuning};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

use crate::request::host_of;

/// The only ALPN protocol offered: kube-apiserver forces `http/1.1` for kubelet upgrades, and
/// the WebSocket protocols need HTTP/1.1.
pub const KUBELET_ALPN: &[u8] = b"http/1.1";

/// What the kubelet (or whatever answered instead) presented, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresentedCertificate {
    /// Subject distinguished name, e.g. `CN=system:node:node-1`.
    pub subject: String,
    /// Issuer distinguished name, e.g. `CN=kubelet-ca`.
    pub issuer: String,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<IpAddr>,
}

impl PresentedCertificate {
    /// Describes a DER certificate; unparseable input yields placeholders, never an error.
    fn from_der(der: &[u8]) -> Self {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return PresentedCertificate {
                subject: "<unparseable certificate>".into(),
                ..Default::default()
            };
        };
        let mut out = PresentedCertificate {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        out.dns_names.push(d.to_string())
                    }
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                            out.ip_addresses.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                            out.ip_addresses.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

impl fmt::Display for PresentedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subject \"{}\", issuer \"{}\", SANs [",
            self.subject, self.issuer
        )?;
        let names = self
            .dns_names
            .iter()
            .map(|d| d.to_string())
            .chain(self.ip_addresses.iter().map(|i| i.to_string()));
        for (i, n) in names.enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&n)?;
        }
        f.write_str("]")
    }
}

/// Why a TLS connection to a kubelet failed. The first variants are the ones an operator can
/// act on; each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum KubeletTlsError {
    /// The CA, client certificate or key could not be loaded or used.
    #[error("kubelet TLS configuration (--kubelet-certificate-authority, --kubelet-client-certificate, --kubelet-client-key): {0}")]
    Config(#[from] TlsError),
    /// The CA file has no usable trust anchor for server verification.
    #[error("cannot verify kubelets with CA file {ca}: {reason}")]
    Verifier {
        /// The CA file.
        ca: PathBuf,
        /// rustls' complaint.
        reason: String,
    },
    /// The address is neither a DNS name nor an IP literal.
    #[error("invalid kubelet address {name:?} for certificate verification: must be a DNS name or an IP address")]
    InvalidServerName {
        /// The rejected name.
        name: String,
    },
    /// The certificate does not chain to the kubelet CA: another cluster's kubelet, or a proxy
    /// in the path that terminates TLS and presents its own certificate.
    #[error("the kubelet at {server_name} presented a certificate that was not issued by the kubelet CA {ca} ({why}; {presented}): either this is not a kubelet of this cluster, or something on the path (a proxy terminating TLS) answered in its place; the tunnel must pass TLS through untouched — check --kubelet-certificate-authority and the proxy")]
    UnknownIssuer {
        /// The name/IP dialled.
        server_name: String,
        /// The CA it was checked against.
        ca: PathBuf,
        /// How that was established.
        why: &'static str,
        /// What was presented.
        presented: Box<PresentedCertificate>,
    },
    /// The certificate is from the kubelet CA but not for the dialled name/IP.
    #[error("the kubelet certificate is not valid for {server_name} ({presented}): dial the node by a name or IP its certificate lists, or reissue the kubelet serving certificate with {server_name} as a SAN")]
    NotValidForName {
        /// The name/IP dialled.
        server_name: String,
        /// What was presented.
        presented: Box<PresentedCertificate>,
    },
    /// The certificate is unusable for another reason (expired, not yet valid, bad signature…).
    #[error(
        "the kubelet at {server_name} presented an unusable certificate ({reason}): {presented}"
    )]
    BadCertificate {
        /// The name/IP dialled.
        server_name: String,
        /// What is wrong with it.
        reason: String,
        /// What was presented.
        presented: Box<PresentedCertificate>,
    },
    /// The kubelet refused our client certificate.
    #[error("the kubelet at {server_name} refused our client certificate (TLS alert: {alert}); --kubelet-client-certificate must be signed by the CA in the kubelet's --client-ca-file")]
    ClientCertificateRejected {
        /// The name/IP dialled.
        server_name: String,
        /// The alert received.
        alert: String,
    },
    /// The peer sent something that is not TLS.
    #[error("the peer at {server_name} does not speak TLS ({detail}); something other than a kubelet answered (a plain-text proxy or server?)")]
    NotTls {
        /// The name/IP dialled.
        server_name: String,
        /// rustls' complaint.
        detail: String,
    },
    /// The handshake did not finish in time.
    #[error("the TLS handshake with the kubelet at {server_name} did not complete within {timeout:?}: the tunnel or the kubelet stalled")]
    Timeout {
        /// The name/IP dialled.
        server_name: String,
        /// The bound.
        timeout: Duration,
    },
    /// Any other handshake failure (connection reset, no common parameters…).
    #[error("TLS handshake with the kubelet at {server_name} failed: {source}")]
    Handshake {
        /// The name/IP dialled.
        server_name: String,
        /// The I/O error (a rustls error is nested when it was a TLS failure).
        #[source]
        source: std::io::Error,
    },
}

/// A verification failure with the presented certificate attached, carried through rustls
/// inside [`CertificateError::Other`] so the classification can name what was presented.
#[derive(Debug)]
struct Rejection {
    cause: CertificateError,
    presented: PresentedCertificate,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.cause, self.presented)
    }
}

impl std::error::Error for Rejection {}

/// WebPKI verification that reports what was presented when it fails.
#[derive(Debug)]
struct ExplainingVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ExplainingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(cause) => rustls::Error::InvalidCertificate(
                    CertificateError::Other(OtherError(Arc::new(Rejection {
                        cause,
                        presented: PresentedCertificate::from_der(end_entity),
                    }))),
                ),
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// No certificate verification (kube-apiserver without `--kubelet-certificate-authority`);
/// handshake signatures are still checked so the session keys are the peer's.
#[derive(Debug)]
struct NoVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Loaded kubelet-client TLS settings; load once, [`connect`](KubeletTls::connect) per dial.
#[derive(Clone)]
pub struct KubeletTls {
    config: Arc<rustls::ClientConfig>,
    /// The CA file, or `None` for an unverified (insecure) configuration.
    ca: Option<PathBuf>,
}

impl fmt::Debug for KubeletTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeletTls")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl KubeletTls {
    /// Verifies kubelets against `kubelet_ca` and presents `client_cert`/`client_key`
    /// (kube-apiserver's `--kubelet-certificate-authority`, `--kubelet-client-certificate`,
    /// `--kubelet-client-key`).
    pub fn new(
        kubelet_ca: &Path,
        client_cert: &Path,
        client_key: &Path,
    ) -> Result<Self, KubeletTlsError> {
        let provider = TlsTuning::default().crypto_provider()?;
        let mut roots = RootCertStore::empty();
        for cert in load_certs(kubelet_ca)? {
            roots.add(cert).map_err(|source| TlsError::InvalidCa {
                path: kubelet_ca.to_path_buf(),
                source,
            })?;
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| KubeletTlsError::Verifier {
                ca: kubelet_ca.to_path_buf(),
                reason: e.to_string(),
            })?;
        let config = Self::build(
            provider,
            Arc::new(ExplainingVerifier { inner }),
            client_cert,
            client_key,
        )?;
        Ok(KubeletTls {
            config,
            ca: Some(kubelet_ca.to_path_buf()),
        })
    }

    /// Does NOT verify the kubelet's certificate: what kube-apiserver does when no
    /// `--kubelet-certificate-authority` is set. Anyone on the path can read and alter the
    /// traffic; use only where that is acceptable.
    pub fn insecure(client_cert: &Path, client_key: &Path) -> Result<Self, KubeletTlsError> {
        let provider = TlsTuning::default().crypto_provider()?;
        let verifier = Arc::new(NoVerification {
            provider: provider.clone(),
        });
        let config = Self::build(provider, verifier, client_cert, client_key)?;
        Ok(KubeletTls { config, ca: None })
    }

    fn build(
        provider: Arc<CryptoProvider>,
        verifier: Arc<dyn ServerCertVerifier>,
        client_cert: &Path,
        client_key: &Path,
    ) -> Result<Arc<rustls::ClientConfig>, KubeletTlsError> {
        let chain = load_certs(client_cert)?;
        let key = load_private_key(client_key)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Settings { source })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::CertKeyMismatch {
                cert: client_cert.to_path_buf(),
                key: client_key.to_path_buf(),
                source,
            })?;
        config.alpn_protocols = vec![KUBELET_ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    /// Whether the kubelet certificate is verified.
    pub fn verifies(&self) -> bool {
        self.ca.is_some()
    }

    /// The rustls configuration (ALPN `http/1.1`, client certificate, verification).
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// TLS handshake over `stream`, verifying the kubelet for `server_name`: the address
    /// dialled (DNS name or IP; a `:port` suffix and IPv6 brackets are stripped). Bounded by
    /// [`konnectivity_tls::HANDSHAKE_TIMEOUT`].
    pub async fn connect<S>(
        &self,
        stream: S,
        server_name: &str,
    ) -> Result<TlsStream<S>, KubeletTlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = host_of(server_name).to_string();
        konnectivity_tls::connect(self.config.clone(), &name, stream, None)
            .await
            .map_err(|e| classify(&name, self.ca.as_deref(), e))
    }
}

/// One-shot [`KubeletTls::new`] + [`KubeletTls::connect`].
pub async fn connect_tls<S>(
    stream: S,
    kubelet_ca: &Path,
    client_cert: &Path,
    client_key: &Path,
    server_name: &str,
) -> Result<TlsStream<S>, KubeletTlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    KubeletTls::new(kubelet_ca, client_cert, client_key)?
        .connect(stream, server_name)
        .await
}

/// Whether an alert from the server means "your client certificate is not acceptable".
fn is_client_cert_alert(alert: &AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
            // rustls servers answer a client certificate signed by an unknown key with this.
            | AlertDescription::DecryptError
    )
}

/// Finds a client-certificate rejection alert anywhere in an error chain (with TLS 1.3 it
/// arrives after the client considers the handshake done, i.e. on the first read).
pub(crate) fn client_cert_alert(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        // `io::Error::source` skips the wrapped error, so look inside explicitly.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(e), inner].into_iter().flatten() {
            if let Some(rustls::Error::AlertReceived(alert)) =
                candidate.downcast_ref::<rustls::Error>()
            {
                if is_client_cert_alert(alert) {
                    return Some(format!("{alert:?}"));
                }
            }
        }
        current = e.source();
    }
    None
}

/// Turns a handshake error into the operator-facing classification.
fn classify(server_name: &str, ca: Option<&Path>, err: TlsError) -> KubeletTlsError {
    let server_name = server_name.to_string();
    let source = match err {
        TlsError::HandshakeTimeout { timeout } => {
            return KubeletTlsError::Timeout {
                server_name,
                timeout,
            }
        }
        TlsError::InvalidServerName { name } => return KubeletTlsError::InvalidServerName { name },
        TlsError::Handshake { source } => source,
        other => return KubeletTlsError::Config(other),
    };
    let Some(tls_err) = source
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return KubeletTlsError::Handshake {
            server_name,
            source,
        };
    };
    match tls_err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) => {
            let Some(rejection) = other.downcast_ref::<Rejection>() else {
                return KubeletTlsError::Handshake {
                    server_name,
                    source,
                };
            };
            let presented = Box::new(rejection.presented.clone());
            match &rejection.cause {
                CertificateError::UnknownIssuer => KubeletTlsError::UnknownIssuer {
                    server_name,
                    ca: ca.map(Path::to_path_buf).unwrap_or_default(),
                    why: "no certificate in the CA file issued it",
                    presented,
                },
                // webpki found a CA certificate with the issuer's name whose key did not sign
                // it: another CA that happens to share the name (Go: "signed by unknown
                // authority ... verification error").
                CertificateError::BadSignature => KubeletTlsError::UnknownIssuer {
                    server_name,
                    ca: ca.map(Path::to_path_buf).unwrap_or_default(),
                    why: "its issuer has the kubelet CA's name but a different key",
                    presented,
                },
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    KubeletTlsError::NotValidForName {
                        server_name,
                        presented,
                    }
                }
                cause => KubeletTlsError::BadCertificate {
                    server_name,
                    reason: cause.to_string(),
                    presented,
                },
            }
        }
        rustls::Error::AlertReceived(alert) if is_client_cert_alert(alert) => {
            KubeletTlsError::ClientCertificateRejected {
                server_name,
                alert: format!("{alert:?}"),
            }
        }
        rustls::Error::InvalidMessage(detail) => KubeletTlsError::NotTls {
            server_name,
            detail: format!("{detail:?}"),
        },
        _ => KubeletTlsError::Handshake {
            server_name,
            source,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn client_cert_alert_is_found_inside_io_error_chain() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::UnknownCA),
        );
        assert_eq!(client_cert_alert(&io).as_deref(), Some("UnknownCA"));
        let other = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
        );
        assert_eq!(client_cert_alert(&other), None);
    }

    #[test]
    fn handshake_errors_are_classified() {
        let wrap = |e: rustls::Error| TlsError::Handshake {
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        };
        let rejected = |cause| {
            wrap(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(Rejection {
                    cause,
                    presented: PresentedCertificate::default(),
                })),
            )))
        };
        let ca = Path::new("/ca.crt");
        assert!(matches!(
            classify("n", Some(ca), rejected(CertificateError::UnknownIssuer)),
            KubeletTlsError::UnknownIssuer { .. }
        ));
        assert!(matches!(
            classify("n", Some(ca), rejected(CertificateError::BadSignature)),
            KubeletTlsError::UnknownIssuer { why, .. } if why.contains("different key")
        ));
        assert!(matches!(
            classify("n", Some(ca), rejected(CertificateError::NotValidForName)),
            KubeletTlsError::NotValidForName { .. }
        ));
        assert!(matches!(
            classify("n", Some(ca), rejected(CertificateError::Expired)),
            KubeletTlsError::BadCertificate { .. }
        ));
        assert!(matches!(
            classify(
                "n",
                Some(ca),
                wrap(rustls::Error::AlertReceived(
                    AlertDescription::CertificateRequired
                ))
            ),
            KubeletTlsError::ClientCertificateRejected { .. }
        ));
        assert!(matches!(
            classify(
                "n",
                Some(ca),
                wrap(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType
                ))
            ),
            KubeletTlsError::NotTls { .. }
        ));
        assert!(matches!(
            classify(
                "n",
                Some(ca),
                TlsError::HandshakeTimeout {
                    timeout: Duration::from_secs(1)
                }
            ),
            KubeletTlsError::Timeout { .. }
        ));
    }

    #[test]
    fn unknown_issuer_message_mentions_a_tls_terminating_proxy() {
        let e = KubeletTlsError::UnknownIssuer {
            server_name: "10.0.0.1".into(),
            ca: PathBuf::from("/pki/kubelet-ca.crt"),
            why: "no certificate in the CA file issued it",
            presented: Box::new(PresentedCertificate {
                subject: "CN=mitm".into(),
                issuer: "CN=evil-ca".into(),
                dns_names: vec!["proxy".into()],
                ip_addresses: vec![IpAddr::from([10, 0, 0, 1])],
            }),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("not issued by the kubelet CA /pki/kubelet-ca.crt"),
            "{msg}"
        );
        assert!(msg.contains("proxy terminating TLS"), "{msg}");
        assert!(msg.contains("issuer \"CN=evil-ca\""), "{msg}");
        assert!(msg.contains("SANs [proxy, 10.0.0.1]"), "{msg}");
    }
}
