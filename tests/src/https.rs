//! HTTPS to the kubelet stand-in over any byte stream — in particular over a Konnectivity
//! tunnel, so the kubelet certificate is verified end to end, as kube-apiserver does.

use std::path::Path;
use std::sync::Arc;

use konnectivity_certs::PkiPaths;
use rustls::ClientConfig;

use crate::error::Result;
use crate::http::HttpConn;
use crate::tls::{self, Io, ALPN_HTTP1};

/// The kube-apiserver side of kubelet TLS: trusts the kubelet CA and presents the
/// kubelet-client certificate.
#[derive(Clone)]
pub struct KubeletClient {
    config: Arc<ClientConfig>,
}

impl KubeletClient {
    /// A client trusting `ca` and presenting (`cert`, `key`).
    pub fn new(ca: &Path, cert: &Path, key: &Path) -> Result<KubeletClient> {
        Ok(KubeletClient {
            config: tls::client_config(ca, Some((cert, key)), &[ALPN_HTTP1])?,
        })
    }

    /// The client kube-apiserver would use with the test PKI.
    pub fn from_pki(pki: &PkiPaths) -> Result<KubeletClient> {
        KubeletClient::new(
            &pki.kubelet_ca.cert,
            &pki.kubelet_client.cert,
            &pki.kubelet_client.key,
        )
    }

    /// The rustls configuration (for callers that drive TLS themselves).
    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// TLS handshake over `io` verifying the peer as `server_name` (`localhost` or
    /// `127.0.0.1` with the test PKI), then an HTTP/1.1 connection over it.
    pub async fn connect<IO: Io>(&self, io: IO, server_name: &str) -> Result<HttpConn> {
        let tls = tls::handshake(io, server_name, self.config()).await?;
        HttpConn::over(tls, server_name).await
    }
}
