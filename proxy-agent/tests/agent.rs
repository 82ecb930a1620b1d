//! The agent against a fake proxy-server: a tonic `AgentService` over a TLS listener with rcgen
//! certificates, driving the agent through the real wire protocol on loopback.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use konnectivity_proto::{AgentService, AgentServiceServer, Packet, PacketType, Payload};
use proxy_agent::config::{AgentConfig, AgentIdentity, ServerTarget, SyncConfig, TlsTuning};
use proxy_agent::Agent;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// Bound for anything a test waits for; correct runs finish far sooner.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Fake proxy-server

/// Response headers for one agent connection (`None` = header omitted).
#[derive(Clone)]
struct Hello {
    server_id: Option<&'static str>,
    server_count: Option<&'static str>,
}

impl Hello {
    fn new(server_id: &'static str, server_count: &'static str) -> Self {
        Hello {
            server_id: Some(server_id),
            server_count: Some(server_count),
        }
    }
}

/// One agent stream as the fake server sees it.
struct AgentConn {
    metadata: MetadataMap,
    to_agent: mpsc::UnboundedSender<Result<Packet, Status>>,
    from_agent: Streaming<Packet>,
}

impl AgentConn {
    fn send(&self, p: Packet) {
        self.to_agent.send(Ok(p)).unwrap();
    }

    fn header(&self, name: &str) -> Option<String> {
        self.metadata
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    async fn next(&mut self) -> Packet {
        tokio::time::timeout(WAIT, self.from_agent.message())
            .await
            .expect("agent sent nothing in time")
            .expect("agent stream failed")
            .expect("agent stream ended")
    }

    async fn until(&mut self, mut pred: impl FnMut(&Packet) -> bool) -> Packet {
        loop {
            let p = self.next().await;
            if pred(&p) {
                return p;
            }
        }
    }

    async fn dial(&mut self, address: &str, random: i64) -> (i64, String) {
        self.send(Packet::dial_request("tcp", address, random));
        let p = self
            .until(|p| matches!(&p.payload, Some(Payload::DialResponse(r)) if r.random == random))
            .await;
        match p.payload {
            Some(Payload::DialResponse(r)) => (r.connect_id, r.error),
            _ => unreachable!(),
        }
    }

    /// Waits until the agent ends this stream (closed or reset).
    async fn ended(&mut self) {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.from_agent.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => return,
                }
            }
        })
        .await
        .expect("agent did not close the stream");
    }
}

struct Svc {
    conns: mpsc::UnboundedSender<AgentConn>,
    plan: Arc<Mutex<VecDeque<Hello>>>,
    default: Hello,
}

#[tonic::async_trait]
impl AgentService for Svc {
    type ConnectStream = UnboundedReceiverStream<Result<Packet, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let hello = self
            .plan
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.default.clone());
        let metadata = request.metadata().clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.conns.send(AgentConn {
            metadata,
            to_agent: tx,
            from_agent: request.into_inner(),
        });
        let mut response = Response::new(UnboundedReceiverStream::new(rx));
        if let Some(id) = hello.server_id {
            response
                .metadata_mut()
                .insert("serverid", id.parse().unwrap());
        }
        if let Some(count) = hello.server_count {
            response
                .metadata_mut()
                .insert("servercount", count.parse().unwrap());
        }
        Ok(response)
    }
}

/// tonic needs `Connected` on the accepted streams.
struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Certificates written into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test-ca");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "proxy-server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let write = |name: &str, contents: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, contents).unwrap();
            p
        };
        let ca_path = write("ca.crt", ca.pem());
        let cert_path = write("server.crt", cert.pem());
        let key_path = write("server.key", key.serialize_pem());
        Pki {
            dir,
            ca: ca_path,
            cert: cert_path,
            key: key_path,
        }
    }
}

struct FakeServer {
    addr: SocketAddr,
    pki: Pki,
    conns: mpsc::UnboundedReceiver<AgentConn>,
    stop: CancellationToken,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeServer {
    /// Serves every agent connection with `default` headers, after the `plan`ned ones.
    async fn start(plan: Vec<Hello>, default: Hello) -> Self {
        Self::start_with_alpn(plan, default, b"h2").await
    }

    /// As [`FakeServer::start`], selecting (and requiring) ALPN protocol `alpn`.
    async fn start_with_alpn(plan: Vec<Hello>, default: Hello, alpn: &'static [u8]) -> Self {
        let pki = Pki::new();
        let tls = konnectivity_tls::server_config(
            &pki.cert,
            &pki.key,
            None,
            &[alpn],
            &TlsTuning::default(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let (io_tx, io_rx) = mpsc::unbounded_channel::<Result<TlsConn, io::Error>>();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    };
                    let acceptor = acceptor.clone();
                    let io_tx = io_tx.clone();
                    tokio::spawn(async move {
                        if let Ok(tls) = konnectivity_tls::accept(&acceptor, tcp, Some(alpn)).await
                        {
                            let _ = io_tx.send(Ok(TlsConn(tls)));
                        }
                    });
                }
            }
        });
        let (conn_tx, conns) = mpsc::unbounded_channel();
        let svc = Svc {
            conns: conn_tx,
            plan: Arc::new(Mutex::new(plan.into())),
            default,
        };
        tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(AgentServiceServer::new(svc))
                    .serve_with_incoming_shutdown(
                        UnboundedReceiverStream::new(io_rx),
                        stop.cancelled_owned(),
                    )
                    .await;
            }
        });
        FakeServer {
            addr,
            pki,
            conns,
            stop,
        }
    }

    async fn single() -> Self {
        Self::start(Vec::new(), Hello::new("server-1", "1")).await
    }

    async fn next_conn(&mut self) -> AgentConn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("agent did not connect in time")
            .expect("server stopped")
    }

    fn config(&self) -> AgentConfig {
        config_for(self.addr.port(), self.pki.ca.clone())
    }
}

fn config_for(port: u16, ca: PathBuf) -> AgentConfig {
    AgentConfig {
        server: ServerTarget {
            host: "127.0.0.1".to_string(),
            port,
            ca_cert: ca,
            client_cert: None,
            extra_alpn: Vec::new(),
            token_path: None,
            keepalive_time: Duration::from_secs(3600),
        },
        identity: AgentIdentity {
            agent_id: "agent-1".to_string(),
            identifiers: "host=node1&ipv4=10.0.0.1".to_string(),
        },
        sync: SyncConfig {
            interval: Duration::from_millis(50),
            interval_cap: Duration::from_millis(200),
            forever: false,
            probe_interval: Duration::from_millis(100),
        },
        tls: TlsTuning::default(),
        xfr_channel_size: 150,
        warn_on_channel_limit: false,
        health_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        extensions: Default::default(),
    }
}

/// A running agent; shut down on drop.
struct RunningAgent {
    drain: CancellationToken,
    shutdown: CancellationToken,
    health: SocketAddr,
    status: proxy_agent::sync::ServerStatus,
    task: Option<tokio::task::JoinHandle<Result<(), proxy_agent::AgentError>>>,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl RunningAgent {
    async fn start(config: AgentConfig) -> Self {
        let agent = Agent::bind(config).await.unwrap();
        let health = agent.health_addr().unwrap();
        let status = agent.status();
        let drain = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.run(drain.clone(), shutdown.clone()));
        RunningAgent {
            drain,
            shutdown,
            health,
            status,
            task: Some(task),
        }
    }

    async fn wait_connected(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while self.status.connected() != n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "agent holds {} server connections, expected {n}",
                self.status.connected()
            )
        });
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("agent stops promptly")
            .unwrap()
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Destinations

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A loopback listener whose accept queue is full: connects to it hang.
async fn blackhole_listener() -> (SocketAddr, TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
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
    panic!("accept queue never filled");
}

fn data_of(p: &Packet) -> Option<(i64, &[u8])> {
    match &p.payload {
        Some(Payload::Data(d)) => Some((d.connect_id, &d.data)),
        _ => None,
    }
}

fn close_rsp_of(p: &Packet) -> Option<(i64, &str)> {
    match &p.payload {
        Some(Payload::CloseResponse(c)) => Some((c.connect_id, c.error.as_str())),
        _ => None,
    }
}

/// `GET path` on the health port: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn agent_sends_identity_headers_and_tunnels_data() {
    let mut server = FakeServer::single().await;
    let agent = RunningAgent::start(server.config()).await;
    let mut conn = server.next_conn().await;
    assert_eq!(conn.header("agentid").as_deref(), Some("agent-1"));
    assert_eq!(
        conn.header("agentidentifiers").as_deref(),
        Some("host=node1&ipv4=10.0.0.1")
    );
    assert_eq!(conn.header("authorization"), None);
    agent.wait_connected(1).await;

    let echo = echo_server().await;
    assert_eq!(conn.dial(&echo.to_string(), 1111).await, (1, String::new()));
    assert_eq!(conn.dial(&echo.to_string(), 2222).await, (2, String::new()));
    conn.send(Packet::data(1, b"hello through the tunnel".to_vec()));
    let mut got = Vec::new();
    while got.len() < 24 {
        let p = conn.until(|p| data_of(p).is_some()).await;
        let (id, d) = data_of(&p).unwrap();
        assert_eq!(id, 1);
        got.extend_from_slice(d);
    }
    assert_eq!(got, b"hello through the tunnel");
    agent.stop().await;
}

#[tokio::test]
async fn empty_identifiers_are_still_sent_and_token_is_reread_per_connection() {
    let mut server = FakeServer::single().await;
    let token = server.pki.dir.path().join("token");
    std::fs::write(&token, "eyJ.token.value").unwrap();
    let mut config = server.config();
    config.identity.identifiers = String::new();
    config.server.token_path = Some(token.clone());
    let _agent = RunningAgent::start(config).await;
    let conn = server.next_conn().await;
    assert_eq!(conn.header("agentidentifiers").as_deref(), Some(""));
    assert_eq!(
        conn.header("authorization").as_deref(),
        Some("Bearer eyJ.token.value")
    );
    // A rotated token is used by the next connection.
    std::fs::write(&token, "rotated").unwrap();
    drop(conn);
    let conn = server.next_conn().await;
    assert_eq!(
        conn.header("authorization").as_deref(),
        Some("Bearer rotated")
    );
}

/// `--sync-forever`: the agent keeps dialing after reaching the target, closing duplicates.
#[tokio::test]
async fn sync_forever_keeps_dialing_and_discards_duplicates() {
    let mut server = FakeServer::single().await;
    let mut config = server.config();
    config.sync.forever = true;
    let agent = RunningAgent::start(config).await;
    let _kept = server.next_conn().await;
    agent.wait_connected(1).await;
    for _ in 0..2 {
        let mut dup = server.next_conn().await;
        dup.ended().await;
    }
    assert_eq!(agent.status.connected(), 1);
}

#[tokio::test]
async fn dial_to_a_closed_port_reports_connection_refused() {
    let mut server = FakeServer::single().await;
    let _agent = RunningAgent::start(server.config()).await;
    let mut conn = server.next_conn().await;
    let port = closed_port();
    let (id, err) = conn.dial(&format!("127.0.0.1:{port}"), 7).await;
    assert_eq!(id, 0);
    assert!(err.contains("connection refused"), "{err}");
    assert_eq!(
        err,
        format!("dial tcp 127.0.0.1:{port}: connect: connection refused")
    );
}

#[tokio::test]
async fn close_request_and_unknown_ids_get_close_responses() {
    let mut server = FakeServer::single().await;
    let _agent = RunningAgent::start(server.config()).await;
    let mut conn = server.next_conn().await;
    let echo = echo_server().await;
    let (id, _) = conn.dial(&echo.to_string(), 1).await;
    conn.send(Packet::close_request(id));
    let p = conn.until(|p| close_rsp_of(p).is_some()).await;
    assert_eq!(close_rsp_of(&p), Some((id, "")));

    conn.send(Packet::data(99, b"x".to_vec()));
    let p = conn.until(|p| close_rsp_of(p).is_some()).await;
    assert_eq!(close_rsp_of(&p), Some((99, "unrecognized connectID")));
    conn.send(Packet::close_request(98));
    let p = conn.until(|p| close_rsp_of(p).is_some()).await;
    assert_eq!(close_rsp_of(&p), Some((98, "Unknown connectID")));
}

/// The agent's endpoint dial timeout is upstream's fixed 5 s, so this test waits just past it.
#[tokio::test]
async fn dial_close_cancels_a_pending_dial() {
    let mut server = FakeServer::single().await;
    let _agent = RunningAgent::start(server.config()).await;
    let mut conn = server.next_conn().await;
    let (blackhole, _l, _fill) = blackhole_listener().await;
    conn.send(Packet::dial_request("tcp", &blackhole.to_string(), 31));
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.send(Packet::close_dial(31));
    // A control dial proves the session is alive and marks time.
    let echo = echo_server().await;
    assert_eq!(conn.dial(&echo.to_string(), 32).await, (1, String::new()));
    // Past the 5 s dial timeout nothing was answered for the cancelled dial.
    let deadline =
        tokio::time::Instant::now() + proxy_agent::dial::DIAL_TIMEOUT + Duration::from_millis(500);
    loop {
        match tokio::time::timeout_at(deadline, conn.from_agent.message()).await {
            Err(_) => break,
            Ok(Ok(Some(p))) => assert!(
                !matches!(&p.payload, Some(Payload::DialResponse(r)) if r.random == 31),
                "cancelled dial was answered: {p:?}"
            ),
            Ok(other) => panic!("agent stream ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn missing_serverid_header_drops_the_connection_and_retries() {
    let mut server = FakeServer::start(
        vec![Hello {
            server_id: None,
            server_count: Some("1"),
        }],
        Hello::new("server-1", "1"),
    )
    .await;
    let agent = RunningAgent::start(server.config()).await;
    let mut first = server.next_conn().await;
    first.ended().await;
    let mut second = server.next_conn().await;
    agent.wait_connected(1).await;
    let echo = echo_server().await;
    assert_eq!(second.dial(&echo.to_string(), 5).await, (1, String::new()));
}

#[tokio::test]
async fn duplicate_servers_are_closed_and_the_reported_count_is_reached() {
    let mut server = FakeServer::start(
        vec![
            Hello::new("server-1", "2"),
            Hello::new("server-1", "2"),
            Hello::new("server-2", "2"),
        ],
        Hello::new("server-2", "2"),
    )
    .await;
    let agent = RunningAgent::start(server.config()).await;
    let _first = server.next_conn().await;
    let mut dup = server.next_conn().await;
    dup.ended().await;
    let _third = server.next_conn().await;
    agent.wait_connected(2).await;
    // Target reached and not sync-forever: no further connections.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(server.conns.try_recv().is_err(), "agent kept dialing");
    assert_eq!(agent.status.connected(), 2);
}

#[tokio::test]
async fn drain_sends_drain_and_keeps_serving() {
    let mut server = FakeServer::single().await;
    let agent = RunningAgent::start(server.config()).await;
    let mut conn = server.next_conn().await;
    agent.wait_connected(1).await;
    agent.drain.cancel();
    let p = conn.next().await;
    assert_eq!(p.kind(), Some(PacketType::Drain));
    let echo = echo_server().await;
    assert_eq!(conn.dial(&echo.to_string(), 8).await, (1, String::new()));
    agent.stop().await;
}

#[tokio::test]
async fn oversized_message_ends_only_that_session_and_the_agent_reconnects() {
    let mut server = FakeServer::single().await;
    let agent = RunningAgent::start(server.config()).await;
    let mut conn = server.next_conn().await;
    agent.wait_connected(1).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (id, _) = conn.dial(&l.local_addr().unwrap().to_string(), 1).await;
    let (mut dest, _) = l.accept().await.unwrap();
    // Over gRPC's 4 MiB receive limit.
    conn.send(Packet::data(id, vec![0u8; 4 * 1024 * 1024 + 1]));
    conn.ended().await;
    // The endpoint socket of the dead session is closed.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, dest.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    let mut again = server.next_conn().await;
    agent.wait_connected(1).await;
    let echo = echo_server().await;
    assert_eq!(again.dial(&echo.to_string(), 2).await, (1, String::new()));
}

#[tokio::test]
async fn server_ending_the_stream_closes_endpoints_and_the_agent_reconnects() {
    let mut server = FakeServer::single().await;
    let agent = RunningAgent::start(server.config()).await;
    let mut conn = server.next_conn().await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    conn.dial(&l.local_addr().unwrap().to_string(), 1).await;
    let (mut dest, _) = l.accept().await.unwrap();
    drop(conn);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, dest.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    let _again = server.next_conn().await;
    agent.wait_connected(1).await;
}

#[tokio::test]
async fn a_stalled_destination_does_not_stall_another_connection() {
    let mut server = FakeServer::single().await;
    let _agent = RunningAgent::start(server.config()).await;
    let mut conn = server.next_conn().await;
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, _) = conn.dial(&sink.local_addr().unwrap().to_string(), 1).await;
    let (_never_read, _) = sink.accept().await.unwrap();
    let echo = echo_server().await;
    let (b, _) = conn.dial(&echo.to_string(), 2).await;

    let chunk = vec![7u8; 64 * 1024];
    let mut echoed = Vec::new();
    let mut abort = None;
    // 2 MiB queue + kernel buffers are exceeded long before 256 MiB.
    for i in 0..4096 {
        conn.send(Packet::data(a, chunk.clone()));
        if i % 64 == 0 {
            conn.send(Packet::data(b, b"ping".to_vec()));
        }
        if i % 16 == 0 {
            // Let the agent catch up and collect what it sent.
            while let Ok(Ok(Some(p))) =
                tokio::time::timeout(Duration::from_millis(1), conn.from_agent.message()).await
            {
                match (data_of(&p), close_rsp_of(&p)) {
                    (Some((id, d)), _) if id == b => echoed.extend_from_slice(d),
                    (_, Some((id, e))) if id == a && abort.is_none() => abort = Some(e.to_string()),
                    _ => {}
                }
            }
            if abort.is_some() {
                break;
            }
        }
    }
    let err = abort.expect("connection A was never aborted");
    assert!(err.starts_with("connection stalled: "), "{err}");
    conn.send(Packet::data(b, b"after".to_vec()));
    while !echoed.ends_with(b"after") {
        let p = conn.next().await;
        if let Some((id, d)) = data_of(&p) {
            if id == b {
                echoed.extend_from_slice(d);
            }
        }
    }
    assert!(echoed.starts_with(b"ping"));
}

#[tokio::test]
async fn readiness_reflects_server_connections() {
    // No server listening: not ready, 503 with upstream's check list.
    let pki = Pki::new();
    let agent = RunningAgent::start(config_for(closed_port(), pki.ca.clone())).await;
    let (status, body) = http_get(agent.health, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("[-]server-connected failed: no servers connected"),
        "{body}"
    );
    let (status, _) = http_get(agent.health, "/healthz").await;
    assert_eq!(status, 200);
    agent.stop().await;

    let mut server = FakeServer::single().await;
    let agent = RunningAgent::start(server.config()).await;
    let _conn = server.next_conn().await;
    agent.wait_connected(1).await;
    let (status, body) = http_get(agent.health, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    agent.stop().await;
}

/// `/metrics` on the health port: upstream's agent series move with what the agent does.
#[tokio::test]
async fn metrics_follow_server_and_endpoint_connections() {
    let mut server = FakeServer::single().await;
    let agent = RunningAgent::start(server.config()).await;
    let mut conn = server.next_conn().await;
    agent.wait_connected(1).await;
    let metric = |text: &str, series: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map(str::to_string)
    };
    const P: &str = "konnectivity_network_proxy_agent_";

    let (status, text) = http_get(agent.health, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, &format!("{P}open_server_connections")).as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&text, &format!("{P}known_server_count")).as_deref(),
        Some("1")
    );

    let port = closed_port();
    conn.dial(&format!("127.0.0.1:{port}"), 1).await;
    let echo = echo_server().await;
    let (id, _) = conn.dial(&echo.to_string(), 2).await;
    let (_, text) = http_get(agent.health, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            &format!("{P}endpoint_dial_failure_total{{reason=\"unknown\"}}")
        )
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&text, &format!("{P}open_endpoint_connections")).as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&text, &format!("{P}dial_duration_seconds_count")).as_deref(),
        Some("1")
    );

    conn.send(Packet::close_request(id));
    conn.until(|p| close_rsp_of(p).is_some()).await;
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, text) = http_get(agent.health, "/metrics").await;
            if metric(&text, &format!("{P}open_endpoint_connections")).as_deref() == Some("0") {
                let sent = format!(
                    "{P}stream_packets_total{{packet_type=\"DIAL_RSP\",segment=\"from_agent\"}}"
                );
                assert_eq!(metric(&text, &sent).as_deref(), Some("2"), "{text}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("open_endpoint_connections back to 0");
}

/// `--alpn-proto`: the custom protocol is offered before `h2`, and a server (front door) that
/// selects it is accepted, as grpc-go does (upstream's custom_alpn_test).
#[tokio::test]
async fn custom_alpn_protocol_is_offered_and_may_be_selected() {
    let mut server =
        FakeServer::start_with_alpn(Vec::new(), Hello::new("server-1", "1"), b"test-proto").await;
    let mut config = server.config();
    config.server.extra_alpn = vec!["test-proto".to_string()];
    let agent = RunningAgent::start(config).await;
    let _conn = server.next_conn().await;
    agent.wait_connected(1).await;
}

/// Without `--alpn-proto`, a server that does not select `h2` is refused (never connects).
#[tokio::test]
async fn a_server_not_selecting_h2_is_refused() {
    let mut server =
        FakeServer::start_with_alpn(Vec::new(), Hello::new("server-1", "1"), b"test-proto").await;
    let agent = RunningAgent::start(server.config()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.conns.try_recv().is_err());
    assert_eq!(agent.status.connected(), 0);
}
