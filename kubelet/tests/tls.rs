//! Certificate checks in both directions.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{certs, certs_for_node, get, start, start_with};
use futures::StreamExt;
use konnectivity_kubelet::client::{self, KubeletError, KubeletTls, KubeletTlsError};
use konnectivity_kubelet::LogOptions;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let fx = start(Duration::from_secs(1)).await;
    let other = certs();
    // Trusts the right kubelet CA, but presents a client certificate from another PKI.
    let tls = KubeletTls::new(
        &fx.certs.paths.kubelet_ca.cert,
        &other.paths.kubelet_client.cert,
        &other.paths.kubelet_client.key,
    )
    .expect("tls");
    let tcp = TcpStream::connect(fx.addr).await.expect("tcp");
    // TLS 1.3: the client finishes its handshake before the server checks the certificate,
    // so the refusal arrives either at connect or on the first exchange.
    let err = match tls.connect(tcp, "127.0.0.1").await {
        Err(KubeletTlsError::ClientCertificateRejected { alert, .. }) => alert,
        Err(other) => panic!("unexpected TLS error {other}"),
        Ok(stream) => {
            match client::logs(stream, &fx.host(), "ns", "p", "c", LogOptions::default()).await {
                Err(KubeletError::ClientCertificateRejected { alert, .. }) => alert,
                Err(other) => panic!("unexpected error {other} / {other:?}"),
                Ok(mut s) => panic!(
                    "logs served to a foreign client certificate: {:?}",
                    s.next().await
                ),
            }
        }
    };
    assert!(!err.is_empty());
    // The server is unharmed.
    assert_eq!(get(&fx, "GET", "/healthz").await, (200, "ok".to_string()));
}

#[tokio::test]
async fn kubelet_certificate_for_another_name_is_not_valid_for_name() {
    let fx = start_with(
        certs_for_node("node-b", &["node-b.example", "10.9.9.9"]),
        Duration::from_secs(1),
        |_| {},
    )
    .await;
    let tcp = TcpStream::connect(fx.addr).await.expect("tcp");
    let err = fx.tls().connect(tcp, "127.0.0.1").await.unwrap_err();
    match &err {
        KubeletTlsError::NotValidForName {
            server_name,
            presented,
        } => {
            assert_eq!(server_name, "127.0.0.1");
            assert!(
                presented.dns_names.contains(&"node-b.example".to_string()),
                "{presented}"
            );
            assert!(
                presented.subject.contains("system:node:node-b"),
                "{presented}"
            );
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("not valid for 127.0.0.1"), "{err}");
    // Dialled by a name it does carry, the same kubelet verifies.
    let tcp = TcpStream::connect(fx.addr).await.expect("tcp");
    fx.tls()
        .connect(tcp, "node-b.example:10250")
        .await
        .expect("valid for node-b.example");
}

#[tokio::test]
async fn kubelet_certificate_from_another_ca_is_unknown_issuer() {
    // What a TLS-terminating proxy in the path looks like: a well-formed certificate for the
    // right address, from a CA that is not the kubelet CA.
    let fx = start(Duration::from_secs(1)).await;
    let ours = certs();
    let tls = KubeletTls::new(
        &ours.paths.kubelet_ca.cert,
        &ours.paths.kubelet_client.cert,
        &ours.paths.kubelet_client.key,
    )
    .expect("tls");
    let tcp = TcpStream::connect(fx.addr).await.expect("tcp");
    let err = tls.connect(tcp, "127.0.0.1").await.unwrap_err();
    match &err {
        KubeletTlsError::UnknownIssuer { ca, presented, .. } => {
            assert_eq!(ca, &ours.paths.kubelet_ca.cert);
            assert!(presented.issuer.contains("kubelet-ca"), "{presented}");
        }
        other => panic!("unexpected {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("not issued by the kubelet CA"), "{msg}");
    assert!(msg.contains("proxy terminating TLS"), "{msg}");
}

#[tokio::test]
async fn insecure_mode_skips_verification_but_still_authenticates_the_client() {
    let fx = start_with(
        certs_for_node("node-b", &["node-b.example"]),
        Duration::from_secs(1),
        |_| {},
    )
    .await;
    let p = &fx.certs.paths;
    let tls = KubeletTls::insecure(&p.kubelet_client.cert, &p.kubelet_client.key).expect("tls");
    assert!(!tls.verifies());
    let tcp = TcpStream::connect(fx.addr).await.expect("tcp");
    let stream = tls
        .connect(tcp, "127.0.0.1")
        .await
        .expect("insecure connect");
    let opts = LogOptions {
        tail_lines: Some(1),
        ..Default::default()
    };
    let mut logs = client::logs(stream, &fx.host(), "ns", "p", "c", opts)
        .await
        .expect("logs");
    let first = logs.next().await.expect("a line").expect("ok");
    assert!(first.starts_with(b"line "));
}

#[tokio::test]
async fn a_peer_that_does_not_speak_tls_is_named_as_such() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let _ = tcp
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
    });
    let c = certs();
    let tls = KubeletTls::new(
        &c.paths.kubelet_ca.cert,
        &c.paths.kubelet_client.cert,
        &c.paths.kubelet_client.key,
    )
    .expect("tls");
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let err = tls.connect(tcp, "127.0.0.1").await.unwrap_err();
    assert!(matches!(err, KubeletTlsError::NotTls { .. }), "{err}");
}

#[tokio::test]
async fn garbage_and_half_open_connections_do_not_hurt_the_server() {
    let fx = start(Duration::from_secs(1)).await;
    let mut junk = TcpStream::connect(fx.addr).await.expect("tcp");
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff garbage")
        .await
        .expect("write");
    let _idle = TcpStream::connect(fx.addr).await.expect("tcp");
    assert_eq!(get(&fx, "GET", "/healthz").await, (200, "ok".to_string()));
}

#[tokio::test]
async fn missing_key_material_is_a_clear_startup_error() {
    let c = certs();
    let mut config = konnectivity_kubelet::StandinConfig::new(
        c.dir.path().join("nope.crt"),
        c.paths.kubelet_servers[0].value.key.clone(),
        c.paths.kubelet_ca.cert.clone(),
    );
    config.listen = "127.0.0.1:0".parse().expect("addr");
    let err = konnectivity_kubelet::Standin::bind(config)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("nope.crt") && msg.contains("--tls-cert-file"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_tls_terminating_proxy_is_reported_as_unknown_issuer() {
    // A "proxy" that terminates TLS with its own self-signed certificate for the right address.
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("proxy cert");
    let cert = dir.path().join("proxy.crt");
    let key = dir.path().join("proxy.key");
    std::fs::write(&cert, proxy.cert.pem()).expect("write cert");
    std::fs::write(&key, proxy.signing_key.serialize_pem()).expect("write key");
    let config =
        konnectivity_tls::server_config(&cert, &key, None, &[b"http/1.1"], &Default::default())
            .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let _ = acceptor.accept(tcp).await;
    });
    let c = certs();
    let tls = KubeletTls::new(
        &c.paths.kubelet_ca.cert,
        &c.paths.kubelet_client.cert,
        &c.paths.kubelet_client.key,
    )
    .expect("tls");
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let err = tls.connect(tcp, "127.0.0.1").await.unwrap_err();
    match &err {
        KubeletTlsError::UnknownIssuer { why, presented, .. } => {
            assert_eq!(*why, "no certificate in the CA file issued it");
            assert!(
                presented
                    .ip_addresses
                    .contains(&"127.0.0.1".parse().expect("ip")),
                "{presented}"
            );
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("proxy terminating TLS"), "{err}");
}
