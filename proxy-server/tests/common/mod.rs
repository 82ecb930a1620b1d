//! Helpers of the in-process tests: the real proxy-server and proxy-agent libraries on
//! loopback with a generated PKI, driven through the frontends over a Unix socket.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use konnectivity_certs::{Pki, PkiOptions, PkiPaths, DEFAULT_AGENT_NAME};
use konnectivity_proto::{Packet, Payload, ProxyServiceClient};
use proxy_agent::config::{
    AgentConfig, AgentExtensions, AgentIdentity, ServerTarget, SyncConfig, TlsTuning as AgentTls,
    Transport,
};
use proxy_server::config::{
    BackendConfig, FrontendConfig, FrontendListen, FrontendMode, ProxyStrategy, ServerConfig,
    ServerExtensions, TlsTuning,
};
use proxy_server::state::Shared;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bound for anything a test waits for; correct runs finish far sooner.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub paths: PkiPaths,
}

pub fn pki() -> TestPki {
    let dir = tempfile::tempdir().unwrap();
    let paths = Pki::generate(&PkiOptions::default())
        .unwrap()
        .write(dir.path().join("pki"), false)
        .unwrap();
    TestPki { dir, paths }
}

impl TestPki {
    pub fn agent_pair(&self) -> (PathBuf, PathBuf) {
        let a = self.paths.agent(DEFAULT_AGENT_NAME).unwrap();
        (a.cert.clone(), a.key.clone())
    }
}

pub struct Proxy {
    pub shared: Arc<Shared>,
    pub quic: SocketAddr,
    pub uds: PathBuf,
    pub stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.hard_stop.cancel();
    }
}

pub async fn start_server(pki: &TestPki, mode: FrontendMode) -> Proxy {
    start_server_with(pki, mode, &ServerExtensions::default()).await
}

pub async fn start_server_with(
    pki: &TestPki,
    mode: FrontendMode,
    extensions: &ServerExtensions,
) -> Proxy {
    let uds = pki
        .dir
        .path()
        .join(format!("frontend-{}.sock", rand::random::<u32>()));
    let p = &pki.paths;
    let config = ServerConfig {
        frontend: FrontendConfig {
            mode,
            listen: FrontendListen::Uds {
                path: uds.clone(),
                delete_existing: true,
            },
            keepalive_time: Duration::from_secs(3600),
        },
        backend: BackendConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert: p.agent_server.cert.clone(),
            key: p.agent_server.key.clone(),
            client_ca: Some(p.agent_ca.cert.clone()),
            keepalive_time: Duration::from_secs(3600),
        },
        tls: TlsTuning::default(),
        proxy_strategies: vec![ProxyStrategy::Default],
        server_id: format!("server-{}", rand::random::<u32>()),
        server_count: 1,
        xfr_channel_size: 10,
        backend_dial_timeout: Duration::ZERO,
        graceful_shutdown_timeout: Duration::ZERO,
        health_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        extensions: extensions.clone(),
    };
    let stop = CancellationToken::new();
    let (bound, shared) = proxy_server::start(&config, stop.clone()).await.unwrap();
    let quic = bound.agent_quic.expect("QUIC listener enabled");
    assert_eq!(quic.port(), bound.agent.port(), "same port number as gRPC");
    Proxy {
        shared,
        quic,
        uds,
        stop,
    }
}

pub fn agent_config(pki: &TestPki, port: u16, agent_id: &str) -> AgentConfig {
    AgentConfig {
        server: ServerTarget {
            host: "127.0.0.1".to_string(),
            port,
            ca_cert: pki.paths.agent_ca.cert.clone(),
            client_cert: Some(pki.agent_pair()),
            extra_alpn: Vec::new(),
            token_path: None,
            keepalive_time: Duration::from_secs(3600),
        },
        identity: AgentIdentity {
            agent_id: agent_id.to_string(),
            identifiers: String::new(),
        },
        sync: SyncConfig {
            interval: Duration::from_millis(50),
            interval_cap: Duration::from_millis(200),
            forever: false,
            probe_interval: Duration::from_secs(1),
        },
        tls: AgentTls::default(),
        xfr_channel_size: 150,
        warn_on_channel_limit: false,
        health_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        extensions: AgentExtensions::default(),
    }
}

pub struct RunningAgent {
    pub drain: CancellationToken,
    pub shutdown: CancellationToken,
    pub metrics: proxy_agent::metrics::Metrics,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An agent over QUIC.
pub async fn start_agent(config: AgentConfig) -> RunningAgent {
    let quic = AgentExtensions {
        transport: Transport::Quic,
        ..AgentExtensions::default()
    };
    start_agent_with(config, quic).await
}

pub async fn start_agent_with(
    mut config: AgentConfig,
    extensions: AgentExtensions,
) -> RunningAgent {
    config.extensions = extensions;
    let agent = proxy_agent::Agent::bind(config).await.unwrap();
    let status = agent.status();
    let metrics = agent.metrics();
    let drain = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (drain, shutdown) = (drain.clone(), shutdown.clone());
        async move {
            agent.run(drain, shutdown).await.unwrap();
        }
    });
    wait_for("agent connected", || status.connected() == 1).await;
    RunningAgent {
        drain,
        shutdown,
        metrics,
        task,
    }
}

pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A metric's value from Prometheus text, summed over lines matching every `needle`.
pub fn metric(text: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Sends `CONNECT address` on the HTTP CONNECT frontend; returns the socket and the
/// response head (and whatever body followed it, for errors).
pub async fn http_connect(uds: &Path, address: &str) -> (UnixStream, String) {
    let mut s = UnixStream::connect(uds).await.unwrap();
    s.write_all(format!("CONNECT {address} HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("response head");
    let mut head = String::from_utf8(head).unwrap();
    if !head.starts_with("HTTP/1.1 200") {
        let mut body = String::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_string(&mut body)).await;
        head.push_str(&body);
    }
    (s, head)
}

pub async fn round_trip(s: &mut UnixStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(got, msg);
}

/// A raw gRPC `Proxy` stream on the frontend's Unix socket.
pub struct GrpcTunnel {
    pub tx: mpsc::UnboundedSender<Packet>,
    pub rx: tonic::Streaming<Packet>,
}

impl GrpcTunnel {
    pub async fn open(uds: &Path) -> Self {
        let path = uds.to_path_buf();
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let body = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let rx = ProxyServiceClient::new(channel)
            .proxy(body)
            .await
            .unwrap()
            .into_inner();
        GrpcTunnel { tx, rx }
    }

    pub async fn next(&mut self) -> Packet {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("packet in time")
            .unwrap()
            .expect("stream open")
    }

    pub async fn dial(&mut self, address: &str, random: i64) -> (i64, String) {
        self.tx
            .send(Packet::dial_request("tcp", address, random))
            .unwrap();
        match self.next().await.payload {
            Some(Payload::DialResponse(r)) => {
                assert_eq!(r.random, random);
                (r.connect_id, r.error)
            }
            other => panic!("expected DIAL_RSP, got {other:?}"),
        }
    }
}

/// A destination whose accept queue is full: connects to it hang until the dial timeout.
pub async fn blackhole() -> (SocketAddr, tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => return (addr, listener, fillers),
        }
    }
    panic!("backlog never filled");
}

/// A destination that writes as fast as it can until told to stop, then closes; counts bytes.
pub async fn firehose() -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let (written, stop) = (written.clone(), stop.clone());
        async move {
            let (mut s, _) = l.accept().await.unwrap();
            let chunk = vec![7u8; 64 * 1024];
            while !stop.load(Ordering::SeqCst) {
                match tokio::time::timeout(Duration::from_millis(50), s.write(&chunk)).await {
                    Ok(Ok(n)) => {
                        written.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Ok(Err(_)) => return,
                    Err(_) => {}
                }
            }
            let _ = s.shutdown().await;
        }
    });
    (addr, written, stop)
}

pub async fn wait_for_async(what: &str, mut settled: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if settled() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
    }
}
