//! rustls configurations built from PEM files, independent of the code under test (the
//! harness must not trust the `konnectivity-tls` crate it helps to test).

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{HarnessError, Result};

/// ALPN identifier of HTTP/2, which every gRPC-over-TLS peer must negotiate.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN identifier of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (a leaf, or a CA bundle).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let file =
        File::open(path).map_err(|e| HarnessError::io(format!("opening {}", path.display()), e))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| HarnessError::io(format!("reading PEM {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(HarnessError::Pem {
            path: path.into(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let file =
        File::open(path).map_err(|e| HarnessError::io(format!("opening {}", path.display()), e))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| HarnessError::io(format!("reading PEM {}", path.display()), e))?
        .ok_or_else(|| HarnessError::Pem {
            path: path.into(),
            reason: "no PRIVATE KEY block".into(),
        })
}

/// A root store holding every certificate of `ca`.
pub fn root_store(ca: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|source| HarnessError::TlsConfig {
            what: format!("CA {}", ca.display()),
            source,
        })?;
    }
    Ok(roots)
}

/// A client configuration trusting `ca`, presenting `client` (cert, key) if given and
/// offering `alpn` (empty: no ALPN extension at all).
pub fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>> {
    let what = || format!("client trusting {}", ca.display());
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| HarnessError::TlsConfig {
            what: what(),
            source,
        })?
        .with_root_certificates(root_store(ca)?);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| HarnessError::TlsConfig {
                what: what(),
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A server configuration presenting (cert, key) and *requiring* a client certificate that
/// chains to `client_ca`, offering `alpn`.
pub fn server_config_mtls(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    let what = || format!("server {}", cert.display());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(client_ca)?),
        provider(),
    )
    .build()
    .map_err(|source| HarnessError::Verifier {
        what: what(),
        source,
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| HarnessError::TlsConfig {
            what: what(),
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|source| HarnessError::TlsConfig {
            what: what(),
            source,
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Parses a host name or IP literal into a rustls server name.
pub fn server_name(name: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(name.to_string())
        .map_err(|e| HarnessError::Protocol(format!("invalid TLS server name {name:?}: {e}")))
}

/// Any byte stream TLS can run over (TCP, a Unix socket, a Konnectivity tunnel).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Runs a TLS client handshake over `io`, verifying the peer as `name`.
pub async fn handshake<IO: Io>(
    io: IO,
    name: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<IO>> {
    TlsConnector::from(config)
        .connect(server_name(name)?, io)
        .await
        .map_err(|e| HarnessError::io(format!("TLS handshake with {name}"), e))
}

/// Opens TCP to `addr` and runs a TLS client handshake verifying the peer as `name`.
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| HarnessError::io(format!("connecting to {addr}"), e))?;
    handshake(tcp, name, config).await
}
