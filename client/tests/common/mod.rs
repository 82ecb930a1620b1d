//! Fakes shared by the integration tests: a scriptable gRPC `ProxyService`, a scriptable HTTP
//! CONNECT proxy and a throw-away PKI. Each test crate uses a different subset, hence the
//! dead-code allowance.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use konnectivity_proto::{Packet, Payload, ProxyService, ProxyServiceServer};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::StreamExt;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

/// Bound on every wait for an event in the tests; generous for a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(10);

/// Connection id the fake gRPC proxy assigns to every successful dial.
pub const CONNECT_ID: i64 = 7;

/// What the fake gRPC proxy observed.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A packet received from the client.
    Packet(Packet),
    /// The client's request stream ended (half-close, reset or connection loss).
    StreamEnded,
}

/// A fake gRPC frontend. Behaviour is chosen by the DIAL_REQ address:
/// * `127.0.0.1:1` — DIAL_RSP with upstream's connection-refused text;
/// * `hang:1` — never answers;
/// * `hang-headers:1` — never answers and never even sends response headers;
/// * `bye:1` — accepts, sends DATA "bye", then CLOSE_RSP;
/// * `stray:1` — first a DIAL_RSP for another random, then accepts, then DATA for connection 99,
///   then echoes;
/// * `dialcls:1` — answers with DIAL_CLS for the dial;
/// * `status:1` — ends the stream with status UNAVAILABLE "backend gone";
/// * `silent-end:1` — accepts, then ends the stream without CLOSE_RSP;
/// * `noclose:1` — accepts and echoes, but never answers CLOSE_REQ;
/// * `dial/HOST:PORT` — acts like an agent: connects to HOST:PORT over TCP and pumps bytes;
/// * anything else — accepts with [`CONNECT_ID`] and echoes DATA; CLOSE_REQ gets CLOSE_RSP.
#[derive(Clone)]
struct FakeProxy {
    events: mpsc::UnboundedSender<Event>,
}

#[tonic::async_trait]
impl ProxyService for FakeProxy {
    type ProxyStream = ReceiverStream<Result<Packet, Status>>;

    async fn proxy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::ProxyStream>, Status> {
        let mut inbound = request.into_inner();
        let events = self.events.clone();
        // Read the first packet before answering with response headers, as a grpc-go server
        // effectively does (its headers go out with the first message).
        let mut first = inbound.message().await.ok().flatten();
        if let Some(Payload::DialRequest(d)) = first.as_ref().and_then(|p| p.payload.as_ref()) {
            if d.address == "hang-headers:1" {
                // Never send headers: record until the client's stream ends.
                let _ = events.send(Event::Packet(first.take().unwrap()));
                while let Ok(Some(packet)) = inbound.message().await {
                    let _ = events.send(Event::Packet(packet));
                }
                let _ = events.send(Event::StreamEnded);
                return Err(Status::cancelled("the client ended the stream"));
            }
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut established = 0;
            let mut answer_close = true;
            // Set in `dial/` mode: DATA goes to the real socket instead of being echoed.
            let mut forward: Option<mpsc::UnboundedSender<Vec<u8>>> = None;
            loop {
                let packet = match first.take() {
                    Some(packet) => packet,
                    None => match inbound.message().await {
                        Ok(Some(packet)) => packet,
                        _ => break,
                    },
                };
                let _ = events.send(Event::Packet(packet.clone()));
                match packet.payload {
                    Some(Payload::DialRequest(d)) => {
                        let r = d.random;
                        let reply: Vec<Result<Packet, Status>> = match d.address.as_str() {
                            "127.0.0.1:1" => vec![Ok(Packet::dial_response(
                                r,
                                0,
                                "dial tcp 127.0.0.1:1: connect: connection refused",
                            ))],
                            "hang:1" => vec![],
                            "bye:1" => vec![
                                Ok(Packet::dial_response(r, CONNECT_ID, "")),
                                Ok(Packet::data(CONNECT_ID, b"bye".to_vec())),
                                Ok(Packet::close_response(CONNECT_ID, "")),
                            ],
                            "stray:1" => {
                                established = CONNECT_ID;
                                vec![
                                    Ok(Packet::dial_response(r.wrapping_add(1), 5, "")),
                                    Ok(Packet::dial_response(r, CONNECT_ID, "")),
                                    Ok(Packet::data(99, b"junk".to_vec())),
                                ]
                            }
                            "dialcls:1" => vec![Ok(Packet::close_dial(r))],
                            "status:1" => vec![Err(Status::unavailable("backend gone"))],
                            "noclose:1" => {
                                established = CONNECT_ID;
                                answer_close = false;
                                vec![Ok(Packet::dial_response(r, CONNECT_ID, ""))]
                            }
                            a if a.starts_with("dial/") => {
                                match TcpStream::connect(&a["dial/".len()..]).await {
                                    Ok(sock) => {
                                        established = CONNECT_ID;
                                        forward = Some(pump(sock, tx.clone()));
                                        vec![Ok(Packet::dial_response(r, CONNECT_ID, ""))]
                                    }
                                    Err(e) => vec![Ok(Packet::dial_response(r, 0, e.to_string()))],
                                }
                            }
                            "silent-end:1" => {
                                let _ = tx.send(Ok(Packet::dial_response(r, CONNECT_ID, ""))).await;
                                break;
                            }
                            _ => {
                                established = CONNECT_ID;
                                vec![Ok(Packet::dial_response(r, CONNECT_ID, ""))]
                            }
                        };
                        for p in reply {
                            let _ = tx.send(p).await;
                        }
                    }
                    Some(Payload::Data(d)) if established != 0 && d.connect_id == established => {
                        match &forward {
                            Some(sock) => {
                                let _ = sock.send(d.data.to_vec());
                            }
                            None => {
                                let _ = tx.send(Ok(Packet::data(established, d.data))).await;
                            }
                        }
                    }
                    Some(Payload::CloseRequest(c)) if c.connect_id == established => {
                        forward = None;
                        if answer_close {
                            let _ = tx.send(Ok(Packet::close_response(c.connect_id, ""))).await;
                        }
                    }
                    _ => {}
                }
            }
            let _ = events.send(Event::StreamEnded);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The agent half of `dial/` mode: socket → DATA (4 KiB reads, as the agent does), then
/// CLOSE_RSP at EOF; the returned sender's payloads are written to the socket, and dropping it
/// half-closes the socket.
fn pump(
    sock: TcpStream,
    tx: mpsc::Sender<Result<Packet, Status>>,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let (mut rd, mut wr) = sock.into_split();
    let (to_sock, mut from_client) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(data) = from_client.recv().await {
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Ok(Packet::data(CONNECT_ID, buf[..n].to_vec())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Ok(Packet::close_response(CONNECT_ID, ""))).await;
    });
    to_sock
}

/// A running fake gRPC proxy on a Unix socket.
pub struct GrpcProxy {
    _dir: Option<tempfile::TempDir>,
    pub socket: PathBuf,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

impl GrpcProxy {
    /// Serves on a Unix socket in a fresh temporary directory.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("konnectivity-server.socket");
        let listener = UnixListener::bind(&socket).unwrap();
        let mut proxy = Self::serve(UnixListenerStream::new(listener));
        proxy._dir = Some(dir);
        proxy.socket = socket;
        proxy
    }

    /// Serves the connections `incoming` yields (e.g. TLS streams); `socket` stays empty.
    pub fn serve<I, IO, IE>(incoming: I) -> Self
    where
        I: tokio_stream::Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let (events_tx, events) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let incoming = incoming.map(move |conn| {
            counter.fetch_add(1, Ordering::SeqCst);
            conn
        });
        let service = ProxyServiceServer::new(FakeProxy { events: events_tx });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        GrpcProxy {
            _dir: None,
            socket: PathBuf::new(),
            events,
            accepted,
        }
    }

    /// The next event, failing the test after [`WAIT`].
    pub async fn next_event(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("no event from the fake proxy in time")
            .expect("fake proxy event channel closed")
    }

    /// Skips events until `pred` matches one, which is returned.
    pub async fn wait_for(&mut self, pred: impl Fn(&Event) -> bool) -> Event {
        loop {
            let e = self.next_event().await;
            if pred(&e) {
                return e;
            }
        }
    }
}

/// Whether `e` is a packet of type `kind`.
pub fn is_kind(e: &Event, kind: konnectivity_proto::PacketType) -> bool {
    matches!(e, Event::Packet(p) if p.kind() == Some(kind))
}

/// Serves one HTTP CONNECT exchange on `io`, as the upstream server answers. Behaviour by the
/// request target: `ok:*` — 200 then echo until EOF; `bad:1` — 502 with upstream's refused body;
/// `eager:1` — the 200 and tunnel bytes in one write; `silent:1` — never answers. The request
/// head is sent to `requests`.
pub async fn serve_connect<S>(mut io: S, requests: mpsc::UnboundedSender<Vec<u8>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if io.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let _ = requests.send(head);
    let target = text.split(' ').nth(1).unwrap_or_default().to_string();
    match target.as_str() {
        "bad:1" => {
            let _ = io
                .write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ndial tcp 127.0.0.1:18999: connect: connection refused",
                )
                .await;
            let _ = io.shutdown().await;
        }
        "eager:1" => {
            let _ = io
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\nsurprise")
                .await;
            let _ = io.flush().await;
            tokio::time::sleep(WAIT).await;
        }
        "silent:1" => tokio::time::sleep(WAIT).await,
        _ => {
            if io
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            let _ = io.flush().await;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let _ = io.flush().await;
                    }
                }
            }
            let _ = io.shutdown().await;
        }
    }
}

/// A fake HTTP CONNECT proxy on a Unix socket.
pub struct ConnectProxy {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub requests: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl ConnectProxy {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("konnectivity-server.socket");
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connect(stream, tx.clone()));
            }
        });
        ConnectProxy {
            _dir: dir,
            socket,
            requests,
        }
    }
}

/// Certificates for one test, written as PEM files into a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        Pki {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Creates a CA, writes `<name>.crt`, returns the issuer.
    pub fn ca(&self, name: &str) -> CertifiedIssuer<'static, KeyPair> {
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

    /// Issues a leaf for `localhost`/`127.0.0.1`, usable as server and client certificate;
    /// writes `<name>.crt`/`<name>.key`.
    pub fn leaf(&self, ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (PathBuf, PathBuf) {
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
