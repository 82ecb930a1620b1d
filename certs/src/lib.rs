//! Generates, in one go, every certificate and key a Konnectivity deployment needs: three
//! independent CAs and their leaves, written as PEM files into one directory.
//!
//! Library: [`Pki::generate`] builds everything in memory from [`PkiOptions`], [`Pki::write`]
//! writes it and returns [`PkiPaths`], which names every file so callers never hard-code file
//! names. The `konnectivity-certs` binary is a thin CLI over the same two calls.
//!
//! # File layout and who reads what
//!
//! | file | kind | read by |
//! |---|---|---|
//! | `frontend-ca.crt` | frontend CA | proxy-server `--server-ca-cert` (verifies kube-apiserver); kube-apiserver egress `tlsConfig.caBundle`; proxy-test-client `--ca-cert` |
//! | `frontend-server.crt/.key` | serverAuth, SANs `--server-san` | proxy-server `--server-cert` / `--server-key` |
//! | `frontend-client.crt/.key` | clientAuth, CN `system:kube-apiserver` | kube-apiserver egress `tlsConfig.clientCert` / `clientKey`; proxy-test-client `--client-cert` / `--client-key` |
//! | `agent-ca.crt` | agent (cluster) CA | proxy-agent `--ca-cert`; proxy-server `--cluster-ca-cert` (agent mTLS) |
//! | `agent-server.crt/.key` | serverAuth, SANs `--agent-server-san` | proxy-server `--cluster-cert` / `--cluster-key` |
//! | `agent-<name>.crt/.key` | clientAuth, CN `system:konnectivity-agent` | proxy-agent `--agent-cert` / `--agent-key`; default name `client` |
//! | `kubelet-ca.crt` | kubelet CA | kube-apiserver `--kubelet-certificate-authority`; kubelet `--client-ca-file` |
//! | `kubelet-<node>.crt/.key` | serverAuth, SANs `--kubelet-san` / `--kubelet-node` | kubelet `--tls-cert-file` / `--tls-private-key-file`; default name `server` |
//! | `kubelet-client.crt/.key` | clientAuth, CN `kube-apiserver-kubelet-client` | kube-apiserver `--kubelet-client-certificate` / `--kubelet-client-key` |
//! | `*-ca.key` | CA keys | nothing at run time; keep them (offline) to issue more leaves |
//!
//! The frontend files are only needed for a TCP frontend (`--mode=http-connect` with
//! `--server-port`); a UDS frontend uses no TLS.
//!
//! # Certificate profile
//!
//! All keys share one type ([`KeyType`]: ECDSA P-256 by default, P-384, Ed25519; RSA is not
//! possible with the `ring` backend). CAs: `CA:true, pathlen:0`, keyCertSign + cRLSign,
//! SubjectKeyIdentifier. Leaves: `CA:false`, digitalSignature, exactly one EKU (serverAuth or
//! clientAuth), SubjectKeyIdentifier and AuthorityKeyIdentifier, SANs on serving certificates
//! only. `notBefore` is [`CLOCK_SKEW_ALLOWANCE`] in the past. Keys are unencrypted PKCS#8 PEM
//! (Ed25519 as PKCS#8 v1, which OpenSSL before 3.5 also reads), mode 0600; certificates
//! mode 0644. Serial numbers are rcgen's: 20 bytes derived from the (fresh) public key.
//!
//! ```no_run
//! use konnectivity_certs::{Pki, PkiOptions};
//! let pki = Pki::generate(&PkiOptions::default())?;
//! let paths = pki.write("/tmp/pki", false)?;
//! println!("server cert: {}", paths.frontend_server.cert.display());
//! # Ok::<(), konnectivity_certs::CertsError>(())
//! ```
#![forbid(unsafe_code)]

mod error;
pub mod names;
mod options;
mod pki;
mod write;

pub use error::CertsError;
pub use names::{DEFAULT_AGENT_NAME, DEFAULT_KUBELET_NAME};
pub use options::{
    KeyType, KubeletNode, PkiOptions, DEFAULT_CA_DAYS, DEFAULT_LEAF_DAYS, DEFAULT_SANS,
    MAX_NAME_LEN, MAX_VALIDITY_DAYS,
};
pub use pki::{
    CertKeyPaths, Named, PemPair, Pki, PkiPaths, PkiSet, AGENT_CLIENT_CN, CLOCK_SKEW_ALLOWANCE,
    FRONTEND_CLIENT_CN, KUBELET_CLIENT_CN, KUBELET_SERVER_CN, SERVER_CN,
};
pub use write::{CERT_FILE_MODE, KEY_FILE_MODE};
