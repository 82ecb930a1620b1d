//! The PKI as data, and its generation with rcgen.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use time::{Duration, OffsetDateTime};

use crate::options::{check_name, parse_sans, PkiOptions};
use crate::{names, CertsError};

/// How far in the past every `notBefore` is set, so that a peer whose clock is a little behind
/// still accepts freshly generated certificates. Cost: certificates are valid that much earlier.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::minutes(5);

/// Common name of the kube-apiserver's client certificate for the proxy server's frontend.
/// The proxy server authorizes by chain only, so this is informational; it names the caller.
pub const FRONTEND_CLIENT_CN: &str = "system:kube-apiserver";
/// Common name of every agent client certificate (the server authorizes by chain only).
pub const AGENT_CLIENT_CN: &str = "system:konnectivity-agent";
/// Common name of the kube-apiserver's client certificate for kubelets (kubeadm's choice,
/// without kubeadm's `O=system:masters`: grant it RBAC explicitly if a real cluster needs it).
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
/// Common name of both proxy-server serving certificates.
pub const SERVER_CN: &str = "konnectivity-server";
/// Common name of the default kubelet serving certificate; named nodes get `system:node:<name>`.
pub const KUBELET_SERVER_CN: &str = "kubelet";

/// A certificate and its private key, both PEM. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    /// `-----BEGIN CERTIFICATE-----` …
    pub cert_pem: String,
    /// PKCS#8 `-----BEGIN PRIVATE KEY-----` … (read by Go's `tls.LoadX509KeyPair` and rustls).
    pub key_pem: String,
}

impl fmt::Debug for PemPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Where one certificate and its key live on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyPaths {
    /// The `.crt` file.
    pub cert: PathBuf,
    /// The `.key` file.
    pub key: PathBuf,
}

/// One of several same-kind entries (agents, kubelet nodes), with the name used in its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named<T> {
    /// `node1` for `agent-node1.crt`.
    pub name: String,
    /// The entry itself.
    pub value: T,
}

/// One `T` per certificate/key pair of the PKI. With `T = PemPair` it is the PKI in memory
/// ([`Pki`]), with `T = CertKeyPaths` the same PKI on disk ([`PkiPaths`]); sharing the shape
/// guarantees that every generated pair has exactly one path pair and vice versa.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiSet<T> {
    /// Frontend CA: verifies the kube-apiserver's client cert and the proxy's frontend cert.
    pub frontend_ca: T,
    /// Proxy-server frontend serving certificate (serverAuth).
    pub frontend_server: T,
    /// kube-apiserver's client certificate for the proxy frontend (clientAuth).
    pub frontend_client: T,
    /// Agent-side (cluster) CA.
    pub agent_ca: T,
    /// Proxy-server agent-listener serving certificate (serverAuth).
    pub agent_server: T,
    /// Agent client certificates (clientAuth), one per agent name.
    pub agent_clients: Vec<Named<T>>,
    /// Kubelet CA: signs kubelet serving certs and the kube-apiserver's kubelet-client cert.
    pub kubelet_ca: T,
    /// Kubelet serving certificates (serverAuth), one per node.
    pub kubelet_servers: Vec<Named<T>>,
    /// kube-apiserver's client certificate for kubelets (clientAuth).
    pub kubelet_client: T,
}

/// Every certificate and key of the deployment, PEM-encoded, in memory.
pub type Pki = PkiSet<PemPair>;

/// Every file of the deployment on disk; see [`Pki::paths_in`] and [`Pki::write`].
pub type PkiPaths = PkiSet<CertKeyPaths>;

impl<T> PkiSet<T> {
    /// Every entry with its file stem (`frontend-ca`, `agent-node1`, …), in a fixed order:
    /// per CA, the CA first, then its leaves.
    pub fn entries(&self) -> Vec<(String, &T)> {
        let mut out = vec![
            (names::FRONTEND_CA.to_string(), &self.frontend_ca),
            (names::FRONTEND_SERVER.to_string(), &self.frontend_server),
            (names::FRONTEND_CLIENT.to_string(), &self.frontend_client),
            (names::AGENT_CA.to_string(), &self.agent_ca),
            (names::AGENT_SERVER.to_string(), &self.agent_server),
        ];
        out.extend(
            self.agent_clients
                .iter()
                .map(|a| (names::agent_stem(&a.name), &a.value)),
        );
        out.push((names::KUBELET_CA.to_string(), &self.kubelet_ca));
        out.extend(
            self.kubelet_servers
                .iter()
                .map(|k| (names::kubelet_stem(&k.name), &k.value)),
        );
        out.push((names::KUBELET_CLIENT.to_string(), &self.kubelet_client));
        out
    }

    /// Builds a set of the same shape by applying `f` to every entry's file stem and value.
    fn map<U>(&self, mut f: impl FnMut(&str, &T) -> U) -> PkiSet<U> {
        let mut named = |stem: fn(&str) -> String, list: &[Named<T>]| -> Vec<Named<U>> {
            let apply = |n: &Named<T>| Named {
                name: n.name.clone(),
                value: f(&stem(&n.name), &n.value),
            };
            list.iter().map(apply).collect()
        };
        let agent_clients = named(names::agent_stem, &self.agent_clients);
        let kubelet_servers = named(names::kubelet_stem, &self.kubelet_servers);
        PkiSet {
            frontend_ca: f(names::FRONTEND_CA, &self.frontend_ca),
            frontend_server: f(names::FRONTEND_SERVER, &self.frontend_server),
            frontend_client: f(names::FRONTEND_CLIENT, &self.frontend_client),
            agent_ca: f(names::AGENT_CA, &self.agent_ca),
            agent_server: f(names::AGENT_SERVER, &self.agent_server),
            agent_clients,
            kubelet_ca: f(names::KUBELET_CA, &self.kubelet_ca),
            kubelet_servers,
            kubelet_client: f(names::KUBELET_CLIENT, &self.kubelet_client),
        }
    }

    /// The agent entry called `name`, if any.
    pub fn agent(&self, name: &str) -> Option<&T> {
        self.agent_clients
            .iter()
            .find(|n| n.name == name)
            .map(|n| &n.value)
    }

    /// The kubelet-node entry called `name`, if any.
    pub fn kubelet_server(&self, name: &str) -> Option<&T> {
        self.kubelet_servers
            .iter()
            .find(|n| n.name == name)
            .map(|n| &n.value)
    }
}

impl PkiPaths {
    /// Every file path, each pair as certificate then key, in [`PkiSet::entries`] order.
    pub fn files(&self) -> Vec<&Path> {
        self.entries()
            .into_iter()
            .flat_map(|(_, p)| [p.cert.as_path(), p.key.as_path()])
            .collect()
    }
}

impl Pki {
    /// Generates the three CAs and all their leaves. Every option is checked before the first
    /// key is generated, so bad input costs nothing and never yields a partial PKI.
    pub fn generate(opts: &PkiOptions) -> Result<Pki, CertsError> {
        opts.check_validity()?;
        let frontend_sans = parse_sans(names::FRONTEND_SERVER, &opts.frontend_server_sans)?;
        let agent_server_sans = parse_sans(names::AGENT_SERVER, &opts.agent_server_sans)?;
        let agent_names = plan_agents(opts)?;
        let kubelets = plan_kubelets(opts)?;

        let gen = Generator {
            opts,
            now: OffsetDateTime::now_utc(),
        };
        let frontend_ca = gen.ca("konnectivity-frontend-ca", names::FRONTEND_CA)?;
        let agent_ca = gen.ca("konnectivity-agent-ca", names::AGENT_CA)?;
        let kubelet_ca = gen.ca("kubelet-ca", names::KUBELET_CA)?;

        let agent_clients = agent_names
            .into_iter()
            .map(|name| {
                let value = gen.leaf(
                    &agent_ca,
                    AGENT_CLIENT_CN,
                    Role::Client,
                    &names::agent_stem(&name),
                )?;
                Ok(Named { name, value })
            })
            .collect::<Result<_, CertsError>>()?;
        let kubelet_servers = kubelets
            .into_iter()
            .map(|(name, cn, sans)| {
                let what = names::kubelet_stem(&name);
                let value = gen.leaf(&kubelet_ca, &cn, Role::Server(sans), &what)?;
                Ok(Named { name, value })
            })
            .collect::<Result<_, CertsError>>()?;

        Ok(Pki {
            frontend_server: gen.leaf(
                &frontend_ca,
                SERVER_CN,
                Role::Server(frontend_sans),
                names::FRONTEND_SERVER,
            )?,
            frontend_client: gen.leaf(
                &frontend_ca,
                FRONTEND_CLIENT_CN,
                Role::Client,
                names::FRONTEND_CLIENT,
            )?,
            frontend_ca: frontend_ca.pem,
            agent_server: gen.leaf(
                &agent_ca,
                SERVER_CN,
                Role::Server(agent_server_sans),
                names::AGENT_SERVER,
            )?,
            agent_clients,
            agent_ca: agent_ca.pem,
            kubelet_servers,
            kubelet_client: gen.leaf(
                &kubelet_ca,
                KUBELET_CLIENT_CN,
                Role::Client,
                names::KUBELET_CLIENT,
            )?,
            kubelet_ca: kubelet_ca.pem,
        })
    }

    /// The paths the PKI's files get inside `dir`, without touching the file system.
    pub fn paths_in(&self, dir: &Path) -> PkiPaths {
        self.map(|stem, _| CertKeyPaths {
            cert: dir.join(format!("{stem}.{}", names::CERT_EXT)),
            key: dir.join(format!("{stem}.{}", names::KEY_EXT)),
        })
    }
}

/// Agent names to issue, checked (duplicates rejected); the default single agent if none given.
fn plan_agents(opts: &PkiOptions) -> Result<Vec<String>, CertsError> {
    if opts.agent_names.is_empty() {
        return Ok(vec![names::DEFAULT_AGENT_NAME.to_string()]);
    }
    let mut out: Vec<String> = Vec::new();
    for name in &opts.agent_names {
        check_name("agent", name, &names::AGENT_RESERVED)?;
        if out.contains(name) {
            return Err(CertsError::DuplicateName {
                kind: "agent",
                name: name.clone(),
            });
        }
        out.push(name.clone());
    }
    Ok(out)
}

/// Kubelet serving certificates to issue as (name, CN, SANs); the default one if no node given.
fn plan_kubelets(opts: &PkiOptions) -> Result<Vec<(String, String, Vec<SanType>)>, CertsError> {
    if opts.kubelet_nodes.is_empty() {
        let sans = parse_sans(names::KUBELET_DEFAULT_SERVER, &opts.kubelet_sans)?;
        let name = names::DEFAULT_KUBELET_NAME.to_string();
        return Ok(vec![(name, KUBELET_SERVER_CN.to_string(), sans)]);
    }
    let mut out: Vec<(String, String, Vec<SanType>)> = Vec::new();
    for node in &opts.kubelet_nodes {
        check_name("kubelet node", &node.name, &names::KUBELET_RESERVED)?;
        if out.iter().any(|(n, _, _)| *n == node.name) {
            return Err(CertsError::DuplicateName {
                kind: "kubelet node",
                name: node.name.clone(),
            });
        }
        let sans = if node.sans.is_empty() {
            std::iter::once(&node.name)
                .chain(&opts.kubelet_sans)
                .cloned()
                .collect()
        } else {
            node.sans.clone()
        };
        let sans = parse_sans(&names::kubelet_stem(&node.name), &sans)?;
        out.push((
            node.name.clone(),
            format!("system:node:{}", node.name),
            sans,
        ));
    }
    Ok(out)
}

/// ring writes Ed25519 keys as PKCS#8 v2 (RFC 5958: seed plus public key), which OpenSSL
/// before 3.5 refuses to load. Returns the same seed as PKCS#8 v1 (RFC 8410 §7), which Go,
/// rustls, ring and every OpenSSL read; `None` for anything that is not ring's Ed25519 v2
/// layout (ECDSA keys, or a future ring encoding), which is then kept as generated.
fn ed25519_pkcs8_v1(der: &[u8]) -> Option<Vec<u8>> {
    /// SEQUENCE(81) { INTEGER 1, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING(32) …
    const V2_PREFIX: [u8; 16] = [
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    /// SEQUENCE(46) { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING(32) …
    const V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    const SEED_LEN: usize = 32;
    if der.len() != usize::from(V2_PREFIX[1]) + 2 {
        return None;
    }
    let seed = der.strip_prefix(&V2_PREFIX)?.get(..SEED_LEN)?;
    Some([&V1_PREFIX[..], seed].concat())
}

/// A CA's signing half (for leaves) and its PEM output.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: PemPair,
}

/// What a leaf certificate is for.
enum Role {
    /// serverAuth, with these SANs.
    Server(Vec<SanType>),
    /// clientAuth, no SANs.
    Client,
}

/// Shared state of one generation run: the options and one "now" for every certificate.
struct Generator<'a> {
    opts: &'a PkiOptions,
    now: OffsetDateTime,
}

impl Generator<'_> {
    fn key(&self, what: &str) -> Result<KeyPair, CertsError> {
        let alg = self.opts.key_type.algorithm();
        let err = |source| CertsError::Generate {
            what: format!("{what} key ({})", self.opts.key_type),
            source,
        };
        let key = KeyPair::generate_for(alg).map_err(err)?;
        match ed25519_pkcs8_v1(key.serialized_der()) {
            Some(v1) => KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(v1), alg)
                .map_err(err),
            None => Ok(key),
        }
    }

    /// Parameters shared by CAs and leaves: subject CN and validity window.
    fn params(&self, cn: &str, days: u32) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.not_before = self.now - CLOCK_SKEW_ALLOWANCE;
        // `check_validity` bounded `days` by MAX_VALIDITY_DAYS, far from OffsetDateTime's range.
        params.not_after = self.now + Duration::days(i64::from(days));
        params
    }

    /// A self-signed CA that may sign leaves only (pathLen 0), with a SubjectKeyIdentifier
    /// that the leaves' AuthorityKeyIdentifier points at.
    fn ca(&self, cn: &str, what: &str) -> Result<Ca, CertsError> {
        let mut params = self.params(cn, self.opts.ca_days);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = self.key(what)?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertsError::Generate {
                what: format!("{what} certificate"),
                source,
            })?;
        let pem = PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Ca {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// A leaf signed by `ca`: CA:false, digitalSignature, one EKU, SKI and AKI.
    fn leaf(&self, ca: &Ca, cn: &str, role: Role, what: &str) -> Result<PemPair, CertsError> {
        let mut params = self.params(cn, self.opts.leaf_days);
        // ExplicitNoCa makes rcgen write basicConstraints CA:false and a SubjectKeyIdentifier.
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        match role {
            Role::Server(sans) => {
                params.subject_alt_names = sans;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Role::Client => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
        let key = self.key(what)?;
        let cert = params
            .signed_by(&key, &ca.issuer)
            .map_err(|source| CertsError::Generate {
                what: format!("{what} certificate"),
                source,
            })?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::CryptoProvider;
    use rustls::server::WebPkiClientVerifier;
    use rustls::{
        ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
    };
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    use super::*;
    use crate::{KeyType, KubeletNode, DEFAULT_AGENT_NAME, DEFAULT_KUBELET_NAME, DEFAULT_SANS};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    pub(crate) fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate PEM")
    }

    fn key(pem: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key PEM")
    }

    fn roots(ca: &PemPair) -> Arc<RootCertStore> {
        let mut store = RootCertStore::empty();
        store
            .add(der(&ca.cert_pem))
            .expect("CA accepted as trust anchor");
        Arc::new(store)
    }

    /// rustls' server-side check of `leaf` as a serving certificate for `name`.
    pub(crate) fn verify_server(
        ca: &PemPair,
        leaf: &PemPair,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .expect("server verifier");
        let name = ServerName::try_from(name.to_string()).expect("server name");
        verifier
            .verify_server_cert(&der(&leaf.cert_pem), &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    /// rustls' check of `leaf` as a client certificate.
    pub(crate) fn verify_client(ca: &PemPair, leaf: &PemPair) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .expect("client verifier");
        verifier
            .verify_client_cert(&der(&leaf.cert_pem), &[], UnixTime::now())
            .map(|_| ())
    }

    /// A full in-memory mutual-TLS handshake: proves keys match certificates and signatures
    /// made with each key type are accepted end to end.
    fn mtls_handshake(
        ca: &PemPair,
        server: &PemPair,
        client: &PemPair,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .expect("client verifier");
        let server_cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(vec![der(&server.cert_pem)], key(&server.key_pem))?;
        let client_cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(ca))
            .with_client_auth_cert(vec![der(&client.cert_pem)], key(&client.key_pem))?;
        let name = ServerName::try_from(name.to_string()).expect("server name");
        let mut c = Connection::from(ClientConnection::new(Arc::new(client_cfg), name)?);
        let mut s = Connection::from(ServerConnection::new(Arc::new(server_cfg))?);
        fn pump(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
            let mut buf = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut buf).expect("write to Vec");
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                to.read_tls(&mut rd).expect("read from slice");
                to.process_new_packets()?;
            }
            Ok(())
        }
        for _ in 0..10 {
            pump(&mut c, &mut s)?;
            pump(&mut s, &mut c)?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not complete".into()))
    }

    fn multi_opts() -> PkiOptions {
        PkiOptions {
            agent_names: vec!["node1".into(), "node2".into()],
            kubelet_nodes: vec![
                "node1=node1.example,10.1.2.3".parse().unwrap(),
                KubeletNode {
                    name: "node2".into(),
                    sans: vec![],
                },
            ],
            ..Default::default()
        }
    }

    fn with_cert<R>(
        pem: &PemPair,
        f: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> R,
    ) -> R {
        let bytes = der(&pem.cert_pem);
        let (rest, cert) = x509_parser::parse_x509_certificate(&bytes).expect("valid DER");
        assert!(rest.is_empty());
        f(&cert)
    }

    fn sans_of(pem: &PemPair) -> Vec<String> {
        with_cert(pem, |c| {
            let Some(ext) = c.subject_alternative_name().expect("SAN parses") else {
                return Vec::new();
            };
            ext.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => d.to_string(),
                    GeneralName::IPAddress(b) if b.len() == 4 => {
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
                    }
                    GeneralName::IPAddress(b) => {
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string()
                    }
                    other => panic!("unexpected SAN {other:?}"),
                })
                .collect()
        })
    }

    fn cn_of(pem: &PemPair) -> String {
        with_cert(pem, |c| {
            c.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
    }

    fn ski_aki(pem: &PemPair) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        with_cert(pem, |c| {
            let mut ski = None;
            let mut aki = None;
            for ext in c.iter_extensions() {
                match ext.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
                    ParsedExtension::AuthorityKeyIdentifier(a) => {
                        aki = a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => {}
                }
            }
            (ski, aki)
        })
    }

    /// (CA, server leaves, client leaves) per CA.
    fn by_ca(pki: &Pki) -> Vec<(&PemPair, Vec<&PemPair>, Vec<&PemPair>)> {
        vec![
            (
                &pki.frontend_ca,
                vec![&pki.frontend_server],
                vec![&pki.frontend_client],
            ),
            (
                &pki.agent_ca,
                vec![&pki.agent_server],
                pki.agent_clients.iter().map(|n| &n.value).collect(),
            ),
            (
                &pki.kubelet_ca,
                pki.kubelet_servers.iter().map(|n| &n.value).collect(),
                vec![&pki.kubelet_client],
            ),
        ]
    }

    #[test]
    fn every_leaf_chains_to_its_own_ca_for_its_purpose() {
        let pki = Pki::generate(&multi_opts()).unwrap();
        for (ca, servers, clients) in by_ca(&pki) {
            for s in servers {
                let name = if cn_of(s) == "system:node:node1" {
                    "node1.example"
                } else {
                    "localhost"
                };
                verify_server(ca, s, name).unwrap_or_else(|e| panic!("{}: {e}", cn_of(s)));
            }
            for c in clients {
                verify_client(ca, c).unwrap_or_else(|e| panic!("{}: {e}", cn_of(c)));
            }
        }
    }

    #[test]
    fn a_leaf_does_not_verify_against_another_ca() {
        let pki = Pki::generate(&PkiOptions::default()).unwrap();
        let groups = by_ca(&pki);
        for (i, (_, servers, clients)) in groups.iter().enumerate() {
            for (j, (other_ca, _, _)) in groups.iter().enumerate() {
                if i == j {
                    continue;
                }
                for s in servers {
                    assert!(verify_server(other_ca, s, "localhost").is_err(), "{i}->{j}");
                }
                for c in clients {
                    assert!(verify_client(other_ca, c).is_err(), "{i}->{j}");
                }
            }
        }
    }

    #[test]
    fn server_and_client_certificates_are_not_interchangeable() {
        let pki = Pki::generate(&PkiOptions::default()).unwrap();
        // A client certificate cannot serve and a serving certificate cannot authenticate a client.
        assert!(verify_server(&pki.agent_ca, pki.agent("client").unwrap(), "localhost").is_err());
        assert!(verify_server(&pki.frontend_ca, &pki.frontend_client, "localhost").is_err());
        assert!(verify_client(&pki.agent_ca, &pki.agent_server).is_err());
        assert!(verify_client(&pki.kubelet_ca, pki.kubelet_server("server").unwrap()).is_err());
    }

    #[test]
    fn serving_certificates_carry_the_requested_sans_and_only_those_verify() {
        let opts = PkiOptions {
            frontend_server_sans: vec!["proxy.example".into(), "10.0.0.7".into()],
            agent_server_sans: vec!["konnectivity.kube-system.svc".into(), "[fd00::1]".into()],
            ..multi_opts()
        };
        let pki = Pki::generate(&opts).unwrap();
        assert_eq!(sans_of(&pki.frontend_server), ["proxy.example", "10.0.0.7"]);
        assert_eq!(
            sans_of(&pki.agent_server),
            ["konnectivity.kube-system.svc", "fd00::1"]
        );
        assert_eq!(
            sans_of(pki.kubelet_server("node1").unwrap()),
            ["node1.example", "10.1.2.3"]
        );
        assert_eq!(
            sans_of(pki.kubelet_server("node2").unwrap()),
            ["node2", "localhost", "127.0.0.1", "::1"]
        );
        verify_server(&pki.frontend_ca, &pki.frontend_server, "10.0.0.7").unwrap();
        verify_server(&pki.agent_ca, &pki.agent_server, "fd00::1").unwrap();
        assert!(verify_server(&pki.frontend_ca, &pki.frontend_server, "localhost").is_err());
        assert!(sans_of(&pki.frontend_client).is_empty());
    }

    #[test]
    fn default_serving_sans_are_localhost_and_both_loopbacks() {
        let pki = Pki::generate(&PkiOptions::default()).unwrap();
        for (ca, s) in [
            (&pki.frontend_ca, &pki.frontend_server),
            (&pki.agent_ca, &pki.agent_server),
            (&pki.kubelet_ca, pki.kubelet_server("server").unwrap()),
        ] {
            assert_eq!(sans_of(s), DEFAULT_SANS);
            for name in DEFAULT_SANS {
                verify_server(ca, s, name).unwrap();
            }
        }
    }

    #[test]
    fn cas_and_leaves_carry_the_documented_extensions_and_validity() {
        let opts = PkiOptions {
            leaf_days: 30,
            ca_days: 60,
            ..Default::default()
        };
        let pki = Pki::generate(&opts).unwrap();
        let day = 86_400;
        for (ca, servers, clients) in by_ca(&pki) {
            let (ca_ski, _) = ski_aki(ca);
            with_cert(ca, |c| {
                assert!(c.basic_constraints().unwrap().unwrap().value.ca);
                let ku = *c.key_usage().unwrap().unwrap().value;
                assert!(ku.key_cert_sign() && ku.crl_sign());
                let v = c.validity();
                let span = v.not_after.timestamp() - v.not_before.timestamp();
                assert_eq!(span, 60 * day + CLOCK_SKEW_ALLOWANCE.whole_seconds());
            });
            for (leaf, server) in servers
                .iter()
                .map(|s| (s, true))
                .chain(clients.iter().map(|c| (c, false)))
            {
                let (ski, aki) = ski_aki(leaf);
                assert!(ski.is_some(), "leaf has SubjectKeyIdentifier");
                assert_eq!(aki, ca_ski, "AKI of {} points at its CA", cn_of(leaf));
                with_cert(leaf, |c| {
                    assert!(!c.basic_constraints().unwrap().unwrap().value.ca);
                    let ku = *c.key_usage().unwrap().unwrap().value;
                    assert!(ku.digital_signature() && !ku.key_cert_sign());
                    let eku = c.extended_key_usage().unwrap().unwrap().value.clone();
                    assert_eq!((eku.server_auth, eku.client_auth), (server, !server));
                    let v = c.validity();
                    let span = v.not_after.timestamp() - v.not_before.timestamp();
                    assert_eq!(span, 30 * day + CLOCK_SKEW_ALLOWANCE.whole_seconds());
                    assert!(v.is_valid(), "valid now");
                });
            }
        }
    }

    #[test]
    fn client_common_names_match_the_documentation() {
        let pki = Pki::generate(&multi_opts()).unwrap();
        assert_eq!(cn_of(&pki.frontend_client), FRONTEND_CLIENT_CN);
        assert_eq!(cn_of(&pki.kubelet_client), KUBELET_CLIENT_CN);
        assert_eq!(cn_of(pki.agent("node2").unwrap()), AGENT_CLIENT_CN);
        assert_eq!(
            cn_of(pki.kubelet_server("node2").unwrap()),
            "system:node:node2"
        );
        with_cert(&pki.kubelet_client, |c| {
            assert!(c.subject().iter_organization().next().is_none())
        });
    }

    #[test]
    fn every_key_type_yields_working_mutual_tls_for_all_three_cas() {
        for (kt, sig_oid) in [
            (KeyType::EcdsaP256, "1.2.840.10045.4.3.2"),
            (KeyType::EcdsaP384, "1.2.840.10045.4.3.3"),
            (KeyType::Ed25519, "1.3.101.112"),
        ] {
            let pki = Pki::generate(&PkiOptions {
                key_type: kt,
                ..Default::default()
            })
            .unwrap();
            for (_, pem) in pki.entries() {
                with_cert(pem, |c| {
                    assert_eq!(c.signature_algorithm.algorithm.to_id_string(), sig_oid)
                });
            }
            let agent = pki.agent(DEFAULT_AGENT_NAME).unwrap();
            let kubelet = pki.kubelet_server(DEFAULT_KUBELET_NAME).unwrap();
            mtls_handshake(
                &pki.frontend_ca,
                &pki.frontend_server,
                &pki.frontend_client,
                "localhost",
            )
            .unwrap_or_else(|e| panic!("{kt} frontend: {e}"));
            mtls_handshake(&pki.agent_ca, &pki.agent_server, agent, "127.0.0.1")
                .unwrap_or_else(|e| panic!("{kt} agent: {e}"));
            mtls_handshake(&pki.kubelet_ca, kubelet, &pki.kubelet_client, "::1")
                .unwrap_or_else(|e| panic!("{kt} kubelet: {e}"));
        }
    }

    #[test]
    fn handshake_fails_when_client_certificate_comes_from_another_ca() {
        let pki = Pki::generate(&PkiOptions::default()).unwrap();
        let agent = pki.agent(DEFAULT_AGENT_NAME).unwrap();
        assert!(mtls_handshake(
            &pki.agent_ca,
            &pki.agent_server,
            &pki.frontend_client,
            "localhost"
        )
        .is_err());
        assert!(mtls_handshake(&pki.agent_ca, &pki.agent_server, agent, "localhost").is_ok());
    }

    #[test]
    fn defaults_issue_one_agent_client_and_one_kubelet_server() {
        let pki = Pki::generate(&PkiOptions::default()).unwrap();
        let names = |v: &[Named<PemPair>]| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&pki.agent_clients), [DEFAULT_AGENT_NAME]);
        assert_eq!(names(&pki.kubelet_servers), [DEFAULT_KUBELET_NAME]);
        let stems: Vec<String> = pki.entries().into_iter().map(|(s, _)| s).collect();
        assert!(stems.contains(&"agent-client".to_string()));
        assert!(stems.contains(&"kubelet-server".to_string()));
        assert_eq!(stems.len(), 9);
    }

    #[test]
    fn bad_names_and_sans_are_rejected_before_generation() {
        let dup = PkiOptions {
            agent_names: vec!["a".into(), "a".into()],
            ..Default::default()
        };
        assert!(matches!(
            Pki::generate(&dup),
            Err(CertsError::DuplicateName { .. })
        ));
        let reserved = PkiOptions {
            agent_names: vec!["server".into()],
            ..Default::default()
        };
        assert!(matches!(
            Pki::generate(&reserved),
            Err(CertsError::InvalidName { .. })
        ));
        let kubelet_reserved = PkiOptions {
            kubelet_nodes: vec!["client".parse().unwrap()],
            ..Default::default()
        };
        assert!(matches!(
            Pki::generate(&kubelet_reserved),
            Err(CertsError::InvalidName { .. })
        ));
        let dup_nodes = PkiOptions {
            kubelet_nodes: vec!["n".parse().unwrap(), "n=x".parse().unwrap()],
            ..Default::default()
        };
        assert!(matches!(
            Pki::generate(&dup_nodes),
            Err(CertsError::DuplicateName { .. })
        ));
        let no_sans = PkiOptions {
            agent_server_sans: vec![],
            ..Default::default()
        };
        let err = Pki::generate(&no_sans).unwrap_err();
        assert!(err.to_string().contains("agent-server"), "{err}");
        let bad_node_san = PkiOptions {
            kubelet_nodes: vec!["n1=bad name".parse().unwrap()],
            ..Default::default()
        };
        let err = Pki::generate(&bad_node_san).unwrap_err();
        assert!(err.to_string().contains("kubelet-n1"), "{err}");
    }

    #[test]
    fn every_key_file_holds_the_private_key_of_its_certificate() {
        for kt in KeyType::ALL {
            let pki = Pki::generate(&PkiOptions {
                key_type: kt,
                ..Default::default()
            })
            .unwrap();
            for (stem, pem) in pki.entries() {
                let key = KeyPair::from_pem(&pem.key_pem).unwrap();
                let cert_pub = with_cert(pem, |c| c.public_key().subject_public_key.data.to_vec());
                assert_eq!(key.public_key_raw(), cert_pub.as_slice(), "{kt} {stem}");
            }
        }
    }

    #[test]
    fn ed25519_keys_are_written_as_pkcs8_v1_for_openssl() {
        let pki = Pki::generate(&PkiOptions {
            key_type: KeyType::Ed25519,
            ..Default::default()
        })
        .unwrap();
        for (stem, pem) in pki.entries() {
            let der = PrivatePkcs8KeyDer::from_pem_slice(pem.key_pem.as_bytes()).unwrap();
            let der = der.secret_pkcs8_der();
            assert_eq!(der.len(), 48, "{stem}");
            assert_eq!(
                &der[..5],
                [0x30, 0x2e, 0x02, 0x01, 0x00],
                "{stem}: version 0"
            );
        }
        // Non-Ed25519 encodings are left alone.
        let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert_eq!(ed25519_pkcs8_v1(ec.serialized_der()), None);
    }

    #[test]
    fn debug_output_never_shows_private_keys() {
        let pki = Pki::generate(&PkiOptions::default()).unwrap();
        let shown = format!("{pki:?}");
        assert!(!shown.contains("PRIVATE KEY"));
        assert!(shown.contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn paths_name_every_pair_uniquely_inside_the_directory() {
        let pki = Pki::generate(&multi_opts()).unwrap();
        let dir = Path::new("/some/dir");
        let paths = pki.paths_in(dir);
        assert_eq!(
            paths.frontend_server.cert,
            dir.join(crate::names::FRONTEND_SERVER_CERT)
        );
        assert_eq!(
            paths.kubelet_client.key,
            dir.join(crate::names::KUBELET_CLIENT_KEY)
        );
        assert_eq!(
            paths.agent("node2").unwrap().cert,
            dir.join("agent-node2.crt")
        );
        assert_eq!(
            paths.kubelet_server("node1").unwrap().key,
            dir.join("kubelet-node1.key")
        );
        let files = paths.files();
        assert_eq!(files.len(), 2 * pki.entries().len());
        let mut unique = files.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), files.len());
        assert!(files.iter().all(|f| f.parent() == Some(dir)));
    }
}
