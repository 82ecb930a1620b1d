//! Shared fixture: a stand-in on loopback with a fresh PKI, and TLS clients for it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use konnectivity_certs::{KubeletNode, Pki, PkiOptions, PkiPaths};
use konnectivity_kubelet::client::KubeletTls;
use konnectivity_kubelet::standin::{Standin, StandinConfig, StandinStats};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;

/// A PKI written to a temporary directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub paths: PkiPaths,
}

/// A default PKI (kubelet cert `kubelet-server` with SANs localhost, 127.0.0.1, ::1).
pub fn certs() -> Certs {
    certs_with(PkiOptions::default())
}

/// A PKI whose only kubelet certificate is for `name` with the given SANs.
pub fn certs_for_node(name: &str, sans: &[&str]) -> Certs {
    certs_with(PkiOptions {
        kubelet_nodes: vec![KubeletNode {
            name: name.into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
        }],
        ..PkiOptions::default()
    })
}

fn certs_with(opts: PkiOptions) -> Certs {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(&opts).expect("generate PKI");
    let paths = pki.write(dir.path(), false).expect("write PKI");
    Certs { dir, paths }
}

/// A running stand-in.
pub struct Fixture {
    pub certs: Certs,
    pub addr: SocketAddr,
    pub stats: Arc<StandinStats>,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<()>,
}

impl Fixture {
    /// `127.0.0.1:port`, the Host header.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// TLS settings of the legitimate apiserver.
    pub fn tls(&self) -> KubeletTls {
        let p = &self.certs.paths;
        KubeletTls::new(
            &p.kubelet_ca.cert,
            &p.kubelet_client.cert,
            &p.kubelet_client.key,
        )
        .expect("client TLS")
    }

    /// A verified TLS connection as the legitimate apiserver.
    pub async fn connect(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.expect("tcp connect");
        self.tls()
            .connect(tcp, "127.0.0.1")
            .await
            .expect("TLS connect")
    }

    /// Asks the server to stop.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a stand-in with the default PKI.
pub async fn start(log_interval: Duration) -> Fixture {
    start_with(certs(), log_interval, |_| {}).await
}

/// Starts a stand-in serving the first kubelet certificate of `certs`.
pub async fn start_with(
    certs: Certs,
    log_interval: Duration,
    tweak: impl FnOnce(&mut StandinConfig),
) -> Fixture {
    let server_cert = &certs.paths.kubelet_servers[0].value;
    let mut config = StandinConfig::new(
        server_cert.cert.clone(),
        server_cert.key.clone(),
        certs.paths.kubelet_ca.cert.clone(),
    );
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.node_name = "test-node".into();
    config.log_interval = log_interval;
    tweak(&mut config);
    let standin = Standin::bind(config).await.expect("bind stand-in");
    let addr = standin.local_addr().expect("local addr");
    let stats = standin.stats();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        standin
            .serve(async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
    });
    Fixture {
        certs,
        addr,
        stats,
        shutdown: Some(tx),
        server,
    }
}

/// A plain GET over a fresh verified connection: (status, body).
pub async fn get(fx: &Fixture, method: &str, path: &str) -> (u16, String) {
    let tls = fx.connect().await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, fx.host())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `fut` with a generous test deadline so a hang fails instead of blocking CI.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 20 s"))
}
