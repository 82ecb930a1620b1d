#![allow(clippy::unwrap_used)]

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Buffer of the in-memory pipes used as transports.
const PIPE: usize = 64 * 1024;

/// Certificates for one test, written as PEM files into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        Pki {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Creates a CA, writes `<name>.crt`, returns the issuer.
    fn ca(&self, name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        self.write(&format!("{name}.crt"), &ca.pem());
        ca
    }

    /// Issues a leaf usable as server and client certificate; writes `<name>.crt`/`<name>.key`.
    fn leaf(&self, ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        (
            self.write(&format!("{name}.crt"), &cert.pem()),
            self.write(&format!("{name}.key"), &key.serialize_pem()),
        )
    }
}

/// Runs both sides of a handshake over an in-memory pipe.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    server_alpn: Option<&[u8]>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
    client_alpn: Option<&[u8]>,
) -> (
    Result<tokio_rustls::server::TlsStream<DuplexStream>, TlsError>,
    Result<tokio_rustls::client::TlsStream<DuplexStream>, TlsError>,
) {
    let (c, s) = duplex(PIPE);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::join!(
        accept(&acceptor, s, server_alpn),
        connect(client, name, c, client_alpn)
    )
}

fn default_tuning() -> TlsTuning {
    TlsTuning::default()
}

/// One CA, a server and a client certificate from it, and our server and client configs for
/// them (ALPN `h2`, default tuning).
struct MtlsPair {
    /// Holds the PEM files (`ca.crt`, `server.*`, `client.*`).
    pki: Pki,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl MtlsPair {
    fn new() -> Self {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let (scert, skey) = pki.leaf(&ca, "server");
        let (client_cert, client_key) = pki.leaf(&ca, "client");
        let t = default_tuning();
        let ca = pki.path("ca.crt");
        let server = server_config(&scert, &skey, Some(&ca), &[b"h2"], &t).unwrap();
        let client = client_config(
            &ca,
            Some((&client_cert, &client_key)),
            &[b"h2".to_vec()],
            &t,
        )
        .unwrap();
        MtlsPair {
            pki,
            server,
            client,
            client_cert,
            client_key,
        }
    }
}

/// A client config that only speaks TLS 1.2, built outside this crate's helpers.
fn tls12_only_client(ca: &Path, cert: &Path, key: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(load_certs(cert).unwrap(), load_private_key(key).unwrap())
            .unwrap();
    Arc::new(config)
}

#[tokio::test]
async fn mtls_handshake_with_right_ca_succeeds_and_carries_data() {
    let pair = MtlsPair::new();
    let (s, c) = handshake(
        pair.server,
        Some(b"h2"),
        pair.client,
        "localhost",
        Some(b"h2"),
    )
    .await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    assert!(s
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|p| !p.is_empty()));
    c.write_all(b"ping").await.unwrap();
    c.flush().await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn ip_literal_server_name_is_verified_against_ip_san() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (scert, skey) = pki.leaf(&ca, "server");
    let t = default_tuning();
    let server = server_config(&scert, &skey, None, &[], &t).unwrap();
    let client = client_config(&pki.path("ca.crt"), None, &[], &t).unwrap();
    let (s, c) = handshake(server.clone(), None, client.clone(), "127.0.0.1", None).await;
    assert!(s.is_ok() && c.is_ok());
    let (_, c) = handshake(server, None, client, "[::1]", None).await;
    // ::1 is not in the certificate: the client must refuse it.
    assert!(matches!(c, Err(TlsError::Handshake { .. })), "{c:?}");
}

#[tokio::test]
async fn server_cert_with_wrong_name_is_refused_by_client() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (scert, skey) = pki.leaf(&ca, "server");
    let t = default_tuning();
    let server = server_config(&scert, &skey, None, &[], &t).unwrap();
    let client = client_config(&pki.path("ca.crt"), None, &[], &t).unwrap();
    let (_, c) = handshake(server, None, client, "other.example", None).await;
    let err = c.unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err}");
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let rogue = pki.ca("rogue");
    let (scert, skey) = pki.leaf(&ca, "server");
    let (ccert, ckey) = pki.leaf(&rogue, "client");
    let t = default_tuning();
    let server = server_config(&scert, &skey, Some(&pki.path("ca.crt")), &[], &t).unwrap();
    let client = client_config(&pki.path("ca.crt"), Some((&ccert, &ckey)), &[], &t).unwrap();
    let (s, _) = handshake(server, None, client, "localhost", None).await;
    let err = s.unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn missing_client_cert_is_refused_when_client_ca_is_set() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (scert, skey) = pki.leaf(&ca, "server");
    let t = default_tuning();
    let server = server_config(&scert, &skey, Some(&pki.path("ca.crt")), &[], &t).unwrap();
    let client = client_config(&pki.path("ca.crt"), None, &[], &t).unwrap();
    let (s, _) = handshake(server, None, client, "localhost", None).await;
    let err = s.unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("no certificates"), "{err}");
}

#[tokio::test]
async fn server_requiring_h2_refuses_client_offering_no_alpn() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (scert, skey) = pki.leaf(&ca, "server");
    let t = default_tuning();
    let server = server_config(&scert, &skey, None, &[b"h2"], &t).unwrap();
    let client = client_config(&pki.path("ca.crt"), None, &[], &t).unwrap();
    let (s, _) = handshake(server, Some(b"h2"), client, "localhost", None).await;
    match s {
        Err(TlsError::AlpnMismatch {
            required,
            negotiated,
        }) => {
            assert_eq!(required, "h2");
            assert_eq!(negotiated, "none");
        }
        other => panic!("expected ALPN refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn server_requiring_h2_accepts_client_offering_foo_then_h2() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (scert, skey) = pki.leaf(&ca, "server");
    let t = default_tuning();
    let server = server_config(&scert, &skey, None, &[b"h2"], &t).unwrap();
    let client = client_config(
        &pki.path("ca.crt"),
        None,
        &[b"foo".to_vec(), b"h2".to_vec()],
        &t,
    )
    .unwrap();
    let (s, c) = handshake(server, Some(b"h2"), client, "localhost", Some(b"h2")).await;
    assert_eq!(s.unwrap().get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(c.unwrap().get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn client_requiring_h2_refuses_server_without_alpn() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (scert, skey) = pki.leaf(&ca, "server");
    let t = default_tuning();
    let server = server_config(&scert, &skey, None, &[], &t).unwrap();
    let client = client_config(&pki.path("ca.crt"), None, &[b"h2".to_vec()], &t).unwrap();
    let (_, c) = handshake(server, None, client, "localhost", Some(b"h2")).await;
    assert!(matches!(c, Err(TlsError::AlpnMismatch { .. })), "{c:?}");
}

#[tokio::test]
async fn stalled_client_handshake_times_out() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (scert, skey) = pki.leaf(&ca, "server");
    let server = server_config(&scert, &skey, None, &[], &default_tuning()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    // Keep the client half alive but never write to it.
    let (_client_half, server_half) = duplex(PIPE);
    let limit = Duration::from_millis(100);
    let start = std::time::Instant::now();
    let res = accept_within(&acceptor, server_half, None, limit).await;
    assert!(
        matches!(res, Err(TlsError::HandshakeTimeout { timeout }) if timeout == limit),
        "{res:?}"
    );
    assert!(start.elapsed() >= limit);
}

#[tokio::test]
async fn stalled_server_handshake_times_out_on_client() {
    let pki = Pki::new();
    pki.ca("ca");
    let client = client_config(&pki.path("ca.crt"), None, &[], &default_tuning()).unwrap();
    let (client_half, _server_half) = duplex(PIPE);
    let limit = Duration::from_millis(100);
    let res = connect_within(client, "localhost", client_half, None, limit).await;
    assert!(
        matches!(res, Err(TlsError::HandshakeTimeout { .. })),
        "{res:?}"
    );
}

#[test]
fn handshake_timeout_is_ten_seconds() {
    assert_eq!(HANDSHAKE_TIMEOUT, Duration::from_secs(10));
}

#[tokio::test]
async fn tls13_only_server_refuses_tls12_only_client() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (scert, skey) = pki.leaf(&ca, "server");
    let (ccert, ckey) = pki.leaf(&ca, "client");
    let t = TlsTuning::parse("VersionTLS13", &[]).unwrap();
    let server = server_config(&scert, &skey, Some(&pki.path("ca.crt")), &[], &t).unwrap();
    let client = tls12_only_client(&pki.path("ca.crt"), &ccert, &ckey);
    let (s, c) = handshake(server.clone(), None, client, "localhost", None).await;
    assert!(matches!(s, Err(TlsError::Handshake { .. })), "{s:?}");
    assert!(c.is_err());

    // The same client is fine against a default (TLS 1.2+) server.
    let server12 = server_config(
        &scert,
        &skey,
        Some(&pki.path("ca.crt")),
        &[],
        &default_tuning(),
    )
    .unwrap();
    let client = tls12_only_client(&pki.path("ca.crt"), &ccert, &ckey);
    let (s, _) = handshake(server12, None, client, "localhost", None).await;
    assert_eq!(
        s.unwrap().get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test]
async fn cipher_suite_restriction_applies_to_tls12() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (scert, skey) = pki.leaf(&ca, "server"); // rcgen default: ECDSA P-256
    let (ccert, ckey) = pki.leaf(&ca, "client");
    let chacha =
        TlsTuning::parse("", &["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305".to_string()]).unwrap();
    let server = server_config(&scert, &skey, None, &[], &chacha).unwrap();
    let client = tls12_only_client(&pki.path("ca.crt"), &ccert, &ckey);
    let (s, _) = handshake(server, None, client, "localhost", None).await;
    assert_eq!(
        s.unwrap()
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
    );

    // Only RSA suites with an ECDSA certificate: no TLS 1.2 suite is usable.
    let rsa_only =
        TlsTuning::parse("", &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_string()]).unwrap();
    let server = server_config(&scert, &skey, None, &[], &rsa_only).unwrap();
    let client = tls12_only_client(&pki.path("ca.crt"), &ccert, &ckey);
    let (s, _) = handshake(server, None, client, "localhost", None).await;
    assert!(s.is_err());
}

#[test]
fn tls_version_names_parse_like_go() {
    assert_eq!(
        TlsTuning::parse("", &[]).unwrap().min_version,
        TlsVersion::Tls12
    );
    assert_eq!(
        TlsTuning::parse("VersionTLS12", &[]).unwrap().min_version,
        TlsVersion::Tls12
    );
    assert_eq!(
        TlsTuning::parse("VersionTLS13", &[]).unwrap().min_version,
        TlsVersion::Tls13
    );
    for old in ["VersionTLS10", "VersionTLS11"] {
        let err = TlsTuning::parse(old, &[]).unwrap_err();
        assert!(matches!(err, TlsError::UnsupportedTlsVersion { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("rustls does not implement TLS 1.0/1.1"),
            "{msg}"
        );
        assert!(msg.contains(old), "{msg}");
    }
    let err = TlsTuning::parse("TLS13", &[]).unwrap_err();
    assert!(matches!(err, TlsError::UnknownTlsVersion { ref name } if name == "TLS13"));
}

#[test]
fn good_cipher_suite_names_parse_including_go_aliases() {
    let names: Vec<String> = [
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let t = TlsTuning::parse("VersionTLS12", &names).unwrap();
    assert_eq!(t.cipher_suites, names);
    let provider = t.crypto_provider().unwrap();
    // 3 TLS 1.3 suites (always on) + 6 distinct TLS 1.2 suites.
    assert_eq!(provider.cipher_suites.len(), 9);
}

#[test]
fn tls13_names_alone_leave_only_tls13_suites() {
    let t = TlsTuning::parse("", &["TLS_AES_128_GCM_SHA256".to_string()]).unwrap();
    let provider = t.crypto_provider().unwrap();
    assert!(provider
        .cipher_suites
        .iter()
        .all(|s| matches!(s, SupportedCipherSuite::Tls13(_))));
    assert_eq!(provider.cipher_suites.len(), 3);
}

#[test]
fn selected_tls12_suite_is_the_only_tls12_suite() {
    let t = TlsTuning::parse("", &["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".to_string()]).unwrap();
    let tls12: Vec<_> = t
        .crypto_provider()
        .unwrap()
        .cipher_suites
        .iter()
        .filter(|s| !matches!(s, SupportedCipherSuite::Tls13(_)))
        .map(|s| s.suite())
        .collect();
    assert_eq!(
        tls12,
        vec![rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]
    );
}

#[test]
fn unknown_cipher_suite_name_is_an_error_naming_it() {
    let err = TlsTuning::parse("", &["TLS_FAKE_WITH_NOTHING".to_string()]).unwrap_err();
    assert!(matches!(err, TlsError::UnknownCipherSuite { .. }));
    assert!(err.to_string().contains("TLS_FAKE_WITH_NOTHING"));
}

#[test]
fn cbc_and_rsa_kx_suites_are_rejected_as_unimplemented() {
    for name in [
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        "TLS_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    ] {
        let err = TlsTuning::parse("", &[name.to_string()]).unwrap_err();
        assert!(
            matches!(err, TlsError::UnsupportedCipherSuite { .. }),
            "{name}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(name) && msg.contains("not implemented by rustls"),
            "{msg}"
        );
    }
}

#[test]
fn empty_certificate_file_is_an_error_naming_it() {
    let pki = Pki::new();
    let p = pki.write("empty.crt", "");
    let err = load_certs(&p).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificates { .. }));
    assert!(err.to_string().contains("empty.crt"));
}

#[test]
fn missing_certificate_file_is_an_error_naming_it() {
    let pki = Pki::new();
    let err = load_certs(&pki.path("nope.crt")).unwrap_err();
    assert!(matches!(err, TlsError::ReadFile { .. }));
    assert!(err.to_string().contains("nope.crt"));
}

#[test]
fn key_file_without_key_is_an_error_naming_it() {
    let pki = Pki::new();
    pki.ca("ca");
    // A certificate file is not a key file.
    let err = load_private_key(&pki.path("ca.crt")).unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }));
    assert!(err.to_string().contains("ca.crt"));
}

#[test]
fn loads_chain_and_key_written_by_rcgen() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (cert, key) = pki.leaf(&ca, "leaf");
    assert_eq!(load_certs(&cert).unwrap().len(), 1);
    assert!(matches!(
        load_private_key(&key).unwrap(),
        PrivateKeyDer::Pkcs8(_)
    ));
}

#[test]
fn mismatched_cert_and_key_is_an_error_naming_both_files() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (cert_a, _) = pki.leaf(&ca, "a");
    let (_, key_b) = pki.leaf(&ca, "b");
    let err = server_config(&cert_a, &key_b, None, &[], &default_tuning()).unwrap_err();
    assert!(matches!(err, TlsError::CertKeyMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("a.crt") && msg.contains("b.key"), "{msg}");
}

#[test]
fn server_names_accept_dns_and_ip_literals() {
    assert!(matches!(
        server_name("localhost"),
        Ok(ServerName::DnsName(_))
    ));
    assert!(matches!(
        server_name("10.0.0.1"),
        Ok(ServerName::IpAddress(_))
    ));
    assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
    assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
    assert!(matches!(
        server_name("bad name!"),
        Err(TlsError::InvalidServerName { .. })
    ));
}

#[tokio::test]
async fn read_ahead_with_any_capacity_passes_bytes_and_writes_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for capacity in [0, 1, 7, READ_AHEAD_BYTES] {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut a = read_ahead(a, capacity);
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        b.write_all(&sent).await.unwrap();
        let mut got = vec![0u8; sent.len()];
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(got, sent, "capacity {capacity}");
        a.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        b.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}

#[test]
fn suites_are_preferred_tls13_first_then_aes128_aes256_chacha() {
    use rustls::CipherSuite as S;
    let order: Vec<_> = default_tuning()
        .crypto_provider()
        .unwrap()
        .cipher_suites
        .iter()
        .map(|s| s.suite())
        .collect();
    assert_eq!(
        order,
        vec![
            S::TLS13_AES_128_GCM_SHA256,
            S::TLS13_AES_256_GCM_SHA384,
            S::TLS13_CHACHA20_POLY1305_SHA256,
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ]
    );
}

#[tokio::test]
async fn our_client_and_server_negotiate_tls13_aes128_gcm() {
    let pair = MtlsPair::new();
    let (s, c) = handshake(
        pair.server,
        Some(b"h2"),
        pair.client,
        "localhost",
        Some(b"h2"),
    )
    .await;
    let (s, c) = (s.unwrap(), c.unwrap());
    for suite in [
        s.get_ref().1.negotiated_cipher_suite(),
        c.get_ref().1.negotiated_cipher_suite(),
    ] {
        assert_eq!(
            suite.map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
}

/// Presents a fixed certificate chain signed with a fixed key, whether or not they match:
/// what a client holding a copy of someone else's certificate would do.
#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client that presents `cert` and signs with the key in `key`, without checking that they
/// belong together.
fn client_presenting(ca: &Path, cert: &Path, key: &Path) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(ring_provider::default_provider());
    let signer = provider
        .key_provider
        .load_private_key(load_private_key(key).unwrap())
        .unwrap();
    let certified = rustls::sign::CertifiedKey::new(load_certs(cert).unwrap(), signer);
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(load_roots(ca).unwrap())
        .with_client_cert_resolver(Arc::new(FixedClientCert(Arc::new(certified))));
    Arc::new(config)
}

#[tokio::test]
async fn remembered_client_chain_still_has_to_prove_its_private_key() {
    let MtlsPair {
        pki,
        server,
        client_cert: ccert,
        client_key: ckey,
        ..
    } = MtlsPair::new();
    let ca = pki.path("ca.crt");
    // Another key, not the one in the client certificate.
    let other_key = pki.write("other.key", &KeyPair::generate().unwrap().serialize_pem());
    let genuine = || client_presenting(&ca, &ccert, &ckey);
    let impostor = client_presenting(&ca, &ccert, &other_key);

    let (s, c) = handshake(server.clone(), None, genuine(), "localhost", None).await;
    s.unwrap();
    c.unwrap();
    // The chain is now remembered as verified; the handshake signature is not.
    let (s, _) = handshake(server.clone(), None, impostor, "localhost", None).await;
    let err = s.unwrap_err().to_string();
    assert!(
        err.contains("signature") || err.contains("Signature"),
        "{err}"
    );
    let (s, c) = handshake(server, None, genuine(), "localhost", None).await;
    s.unwrap();
    c.unwrap();
}
