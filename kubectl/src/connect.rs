//! Reaching the kubelet as kube-apiserver does: the `cluster` egress dialer to `host:port`, then
//! TLS with the kubelet-client certificate, verifying the kubelet against its CA and address.

use std::path::Path;

use konnectivity_client::egress::{EgressDialer, EgressSelector, EgressStream, SelectionName};
use konnectivity_kubelet::client::KubeletTls;
use konnectivity_tls::tokio_rustls::client::TlsStream;

use crate::cli::Cli;
use crate::error::KubectlError;

/// A TLS connection to the kubelet, through the egress path.
pub type KubeletStream = TlsStream<EgressStream>;

/// Everything needed to open a verified connection to one kubelet; loaded once, used once
/// per request (every request is a new tunnel, as kube-apiserver does).
#[derive(Debug)]
pub struct KubeletConnector {
    dialer: EgressDialer,
    tls: KubeletTls,
    address: String,
    server_name: String,
    via: String,
}

impl KubeletConnector {
    /// Checks the flags, loads the egress configuration (its `cluster` selection) and the TLS
    /// material.
    pub fn from_cli(cli: &Cli) -> Result<Self, KubectlError> {
        let node = cli.node.as_ref().ok_or_else(|| {
            KubectlError::Usage(
                "--node is required: the kubelet's address (InternalIP or host name), e.g. --node=10.1.0.11"
                    .into(),
            )
        })?;
        let ca = required_file(
            "--kubelet-certificate-authority",
            cli.kubelet_certificate_authority.as_deref(),
            "the kubelet's serving certificate is always verified; pass the CA that signed it",
        )?;
        let cert = required_file(
            "--kubelet-client-certificate",
            cli.kubelet_client_certificate.as_deref(),
            "kubelets require a client certificate (kube-apiserver's kubelet-client certificate)",
        )?;
        let key = required_file(
            "--kubelet-client-key",
            cli.kubelet_client_key.as_deref(),
            "the private key of --kubelet-client-certificate",
        )?;
        let (dialer, via) = match (&cli.egress_selector_config_file, cli.direct) {
            (Some(_), true) => {
                return Err(KubectlError::Usage(
                    "--direct and --egress-selector-config-file exclude each other".into(),
                ))
            }
            (None, false) => {
                return Err(KubectlError::Usage(
                    "--egress-selector-config-file is required (kube-apiserver's EgressSelectorConfiguration; its `cluster` selection is used), or --direct to dial the kubelet without a proxy".into(),
                ))
            }
            (None, true) => (EgressDialer::Direct, "directly (--direct)".to_string()),
            (Some(path), false) => {
                let selector = EgressSelector::from_file(path)?;
                let via = match selector.describe(SelectionName::Cluster) {
                    Some(how) => format!("through the `cluster` egress selection ({how})"),
                    None => "directly (the egress configuration has no `cluster` selection)".into(),
                };
                (selector.lookup(SelectionName::Cluster), via)
            }
        };
        let tls =
            KubeletTls::new(ca, cert, key).map_err(|e| KubectlError::TlsConfig(Box::new(e)))?;
        let address = node.join_port(cli.kubelet_port);
        let server_name = cli
            .tls_server_name
            .clone()
            .unwrap_or_else(|| node.host.clone());
        Ok(KubeletConnector {
            via,
            dialer,
            tls,
            address,
            server_name,
        })
    }

    /// The kubelet's `host:port` (what the tunnel dials and the `Host` header).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A new connection to the kubelet: dial through the egress path, then TLS verified for
    /// the server name.
    pub async fn connect(&self) -> Result<KubeletStream, KubectlError> {
        let stream =
            self.dialer
                .dial(&self.address)
                .await
                .map_err(|source| KubectlError::Dial {
                    address: self.address.clone(),
                    via: self.via.clone(),
                    source: Box::new(source),
                })?;
        tracing::debug!(address = %self.address, via = %self.via, "dialed the kubelet");
        self.tls
            .connect(stream, &self.server_name)
            .await
            .map_err(|e| KubectlError::from_tls(&self.address, e))
    }
}

/// Checks that a required file flag is set and exists.
fn required_file<'a>(
    flag: &'static str,
    value: Option<&'a Path>,
    why: &str,
) -> Result<&'a Path, KubectlError> {
    let path = value.ok_or_else(|| KubectlError::Usage(format!("{flag} is required: {why}")))?;
    if !path.exists() {
        return Err(KubectlError::MissingFile {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;
    use konnectivity_certs::{Pki, PkiOptions, PkiPaths};

    fn pki(dir: &tempfile::TempDir) -> PkiPaths {
        Pki::generate(&PkiOptions::default())
            .unwrap()
            .write(dir.path().join("pki"), false)
            .unwrap()
    }

    fn cli(pki: &PkiPaths, extra: &[&str]) -> Cli {
        let mut args = vec![
            "konnectivity-kubectl".to_string(),
            format!(
                "--kubelet-certificate-authority={}",
                pki.kubelet_ca.cert.display()
            ),
            format!(
                "--kubelet-client-certificate={}",
                pki.kubelet_client.cert.display()
            ),
            format!("--kubelet-client-key={}", pki.kubelet_client.key.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["logs", "ns/pod", "-c", "c"].map(String::from));
        Cli::try_parse_from(args).unwrap()
    }

    fn usage_error(c: &Cli) -> String {
        match KubeletConnector::from_cli(c) {
            Err(KubectlError::Usage(text)) => text,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn node_and_a_dial_mode_are_required() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(&dir);
        assert!(usage_error(&cli(&pki, &["--direct"])).contains("--node is required"));
        assert!(usage_error(&cli(&pki, &["--node=10.1.0.11"]))
            .contains("--egress-selector-config-file is required"));
        assert!(usage_error(&cli(
            &pki,
            &[
                "--node=10.1.0.11",
                "--direct",
                "--egress-selector-config-file=/x"
            ]
        ))
        .contains("exclude each other"));
    }

    #[test]
    fn missing_kubelet_ca_flag_or_file_is_reported() {
        let c =
            Cli::try_parse_from(["k", "--node=10.1.0.11", "--direct", "logs", "ns/pod"]).unwrap();
        assert!(usage_error(&c).contains("--kubelet-certificate-authority is required"));
        let c = Cli::try_parse_from([
            "k",
            "--node=10.1.0.11",
            "--direct",
            "--kubelet-certificate-authority=/nonexistent/ca.crt",
            "logs",
            "ns/pod",
        ])
        .unwrap();
        let err = KubeletConnector::from_cli(&c).unwrap_err();
        assert!(matches!(err, KubectlError::MissingFile { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
    }

    #[test]
    fn address_joins_the_kubelet_port_and_server_name_defaults_to_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(&dir);
        let k = KubeletConnector::from_cli(&cli(&pki, &["--direct", "--node=fd00::11"])).unwrap();
        assert_eq!(k.address(), "[fd00::11]:10250");
        assert_eq!(k.server_name, "fd00::11");
        assert_eq!(k.via, "directly (--direct)");
        let k = KubeletConnector::from_cli(&cli(
            &pki,
            &[
                "--direct",
                "--node=10.1.0.11",
                "--kubelet-port=11250",
                "--tls-server-name=node1",
            ],
        ))
        .unwrap();
        assert_eq!(k.address(), "10.1.0.11:11250");
        assert_eq!(k.server_name, "node1");
    }

    #[test]
    fn the_cluster_selection_of_the_egress_file_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(&dir);
        let config = dir.path().join("egress.yaml");
        std::fs::write(
            &config,
            "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        udsName: /run/konnectivity.sock\n",
        )
        .unwrap();
        let flag = format!("--egress-selector-config-file={}", config.display());
        let k = KubeletConnector::from_cli(&cli(&pki, &[&flag, "--node=10.1.0.11"])).unwrap();
        assert!(!k.dialer.is_direct());
        assert!(
            k.via
                .contains("GRPC over unix socket /run/konnectivity.sock"),
            "{}",
            k.via
        );

        std::fs::write(
            &config,
            "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: etcd\n  connection:\n    proxyProtocol: Direct\n",
        )
        .unwrap();
        let k = KubeletConnector::from_cli(&cli(&pki, &[&flag, "--node=10.1.0.11"])).unwrap();
        assert!(
            k.dialer.is_direct(),
            "no cluster selection means a direct dial"
        );
    }
}
