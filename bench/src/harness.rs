//! One proxy-server and one proxy-agent as child processes on loopback with real
//! certificates, ready to carry tunnels; killed when dropped.

use std::collections::HashSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use konnectivity_certs::{Pki, PkiOptions, PkiPaths};
use konnectivity_client::{Dialer, ProxyProtocol, ProxyTransport};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::bins::Binaries;
use crate::config::{ExtraArgs, Frontend, Transport};
use crate::conn::Route;
use crate::error::{BenchError, Result};
use crate::sinks::Op;

/// How long a server or agent may take to become ready (health, agent connected, a probe
/// tunnel working). Generous: on a loaded 2-core machine a debug build starts slowly.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness polls: short enough not to add noticeable start-up time.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Bound on one health-endpoint request.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Dial timeout for bench tunnels. The agent's own dial timeout is 5 s; 15 s leaves room for
/// the queueing of thousands of concurrent dials in the idle-tunnel scenarios.
pub const BENCH_DIAL_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of a child's log quoted in an error.
pub const LOG_TAIL_LINES: usize = 25;
/// Lowest port picked for the children's listeners (they refuse port 0).
pub const PORT_RANGE_START: u16 = 20_000;
/// Highest port picked: below Linux's ephemeral range so outgoing connections never take it.
pub const PORT_RANGE_END: u16 = 32_767;
/// Random candidates tried before giving up on finding a free port; each costs a bind.
pub const PORT_ATTEMPTS: usize = 500;

/// The certificates and logs of one bench invocation, in a temporary directory.
pub struct BenchEnv {
    dir: tempfile::TempDir,
    /// The PKI (frontend, agent CAs and leaves).
    pub pki: PkiPaths,
    /// Binaries under test.
    pub binaries: Binaries,
    /// Flags appended to every proxy-server / proxy-agent command line.
    pub extra: ExtraArgs,
    counter: std::sync::atomic::AtomicUsize,
}

impl BenchEnv {
    /// Creates the directory and a fresh PKI (SANs `localhost`, `127.0.0.1`, `::1`).
    pub fn new(binaries: Binaries, extra: ExtraArgs) -> Result<BenchEnv> {
        let dir = tempfile::Builder::new()
            .prefix("konnectivity-bench-")
            .tempdir()
            .map_err(|e| BenchError::io("creating the bench directory", e))?;
        let pki = Pki::generate(&PkiOptions::default())?.write(dir.path().join("pki"), false)?;
        Ok(BenchEnv {
            dir,
            pki,
            binaries,
            extra,
            counter: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the directory (logs, PKI) instead of deleting it; its path.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }

    /// A fresh file name in the directory.
    pub fn unique_file(&self, stem: &str, ext: &str) -> PathBuf {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.path().join(format!("{stem}-{n}.{ext}"))
    }
}

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A loopback port free for TCP (and UDP, for the agent port QUIC shares) that this process
/// has not handed out before.
pub fn free_port() -> Result<u16> {
    let mut rng = rand::thread_rng();
    for _ in 0..PORT_ATTEMPTS {
        let port = rng.gen_range(PORT_RANGE_START..=PORT_RANGE_END);
        let mut set = handed_out()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.contains(&port) {
            continue;
        }
        let free = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
            && std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        if free {
            set.insert(port);
            return Ok(port);
        }
    }
    Err(BenchError::Process(format!(
        "no free port in {PORT_RANGE_START}-{PORT_RANGE_END} after {PORT_ATTEMPTS} tries"
    )))
}

/// `GET path` on a plain-HTTP health endpoint; the status code.
pub async fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(HTTP_TIMEOUT, fetch)
        .await
        .map_err(|_| BenchError::timeout(format!("GET http://{addr}{path}"), HTTP_TIMEOUT))?
        .map_err(|e| BenchError::io(format!("GET http://{addr}{path}"), e))?;
    let text = String::from_utf8_lossy(&body);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            BenchError::Protocol(format!("GET http://{addr}{path}: no HTTP status line"))
        })
}

/// A child process with its log file; SIGKILLed and reaped when dropped.
pub struct ChildProc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildProc {
    /// Starts `bin args…` with stdout and stderr to `log`.
    pub fn spawn(bin: &Path, name: &str, args: &[String], log: PathBuf) -> Result<ChildProc> {
        let file = File::create(&log)
            .map_err(|e| BenchError::io(format!("creating log {}", log.display()), e))?;
        let file2 = file
            .try_clone()
            .map_err(|e| BenchError::io(format!("duplicating log {}", log.display()), e))?;
        let child = Command::new(bin)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {}", bin.display()), e))?;
        Ok(ChildProc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the log tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Process(format!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                self.log_tail()
            ))),
            Err(e) => Err(BenchError::io(format!("checking on {}", self.name), e)),
        }
    }

    /// The last [`LOG_TAIL_LINES`] lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<log {} unreadable: {e}>", self.log.display()));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether the agent binary accepts `--transport=quic`: `Ok` if it does, else the reason
/// (its own error message).
pub fn probe_quic(agent: &Path) -> std::result::Result<(), String> {
    let out = Command::new(agent)
        .args(["--transport=quic", "--help"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", agent.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "proxy-agent rejects --transport=quic ({}): {}",
            out.status,
            err.lines().next().unwrap_or("").trim()
        ))
    }
}

/// A running server + agent pair and the dialer for its frontend.
pub struct Harness {
    agent: ChildProc,
    server: ChildProc,
    dialer: Dialer,
    frontend: Frontend,
    transport: Transport,
}

impl Harness {
    /// Starts the pair for `frontend` × `transport` and waits until a probe tunnel to the
    /// echo service at `probe` works end to end.
    pub async fn start(
        env: &BenchEnv,
        frontend: Frontend,
        transport: Transport,
        probe: SocketAddr,
    ) -> Result<Harness> {
        let p = &env.pki;
        let path = |p: &Path| p.display().to_string();
        let loopback = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (agent_port, health_port, admin_port) = (free_port()?, free_port()?, free_port()?);
        let mut server_args = vec![
            format!(
                "--mode={}",
                match frontend {
                    Frontend::GrpcUds => "grpc",
                    Frontend::ConnectTcp | Frontend::ConnectUds => "http-connect",
                }
            ),
            format!("--agent-port={agent_port}"),
            "--agent-bind-address=127.0.0.1".to_string(),
            format!("--cluster-cert={}", path(&p.agent_server.cert)),
            format!("--cluster-key={}", path(&p.agent_server.key)),
            format!("--cluster-ca-cert={}", path(&p.agent_ca.cert)),
            format!("--health-port={health_port}"),
            "--health-bind-address=127.0.0.1".to_string(),
            format!("--admin-port={admin_port}"),
            "--admin-bind-address=127.0.0.1".to_string(),
            "--server-count=1".to_string(),
        ];
        let proxy_transport = match frontend {
            Frontend::ConnectUds | Frontend::GrpcUds => {
                let sock = env.unique_file("frontend", "sock");
                server_args.push(format!("--uds-name={}", path(&sock)));
                server_args.push("--server-port=0".to_string());
                ProxyTransport::Uds(sock)
            }
            Frontend::ConnectTcp => {
                let port = free_port()?;
                server_args.extend([
                    format!("--server-port={port}"),
                    "--server-bind-address=127.0.0.1".to_string(),
                    format!("--server-cert={}", path(&p.frontend_server.cert)),
                    format!("--server-key={}", path(&p.frontend_server.key)),
                    format!("--server-ca-cert={}", path(&p.frontend_ca.cert)),
                ]);
                ProxyTransport::Tcp {
                    addr: loopback(port).to_string(),
                    server_name: "127.0.0.1".to_string(),
                    ca: p.frontend_ca.cert.clone(),
                    client_cert: p.frontend_client.cert.clone(),
                    client_key: p.frontend_client.key.clone(),
                }
            }
        };
        let protocol = match frontend {
            Frontend::GrpcUds => ProxyProtocol::Grpc,
            Frontend::ConnectTcp | Frontend::ConnectUds => ProxyProtocol::HttpConnect,
        };
        // Full handshakes on every mTLS dial, as kube-apiserver makes them.
        let dialer = Dialer::new(protocol, proxy_transport)?
            .with_dial_timeout(BENCH_DIAL_TIMEOUT)
            .without_tls_resumption();

        server_args.extend(env.extra.server.iter().cloned());
        let mut server = ChildProc::spawn(
            &env.binaries.server,
            "proxy-server",
            &server_args,
            env.unique_file("proxy-server", "log"),
        )?;
        wait_status(&mut server, loopback(health_port), "/healthz").await?;

        let agent_client = p
            .agent(konnectivity_certs::DEFAULT_AGENT_NAME)
            .or_else(|| p.agent_clients.first().map(|n| &n.value))
            .ok_or_else(|| BenchError::Process("the PKI has no agent certificate".into()))?;
        let (agent_health, agent_admin) = (free_port()?, free_port()?);
        let mut agent_args = vec![
            "--proxy-server-host=127.0.0.1".to_string(),
            format!("--proxy-server-port={agent_port}"),
            format!("--ca-cert={}", path(&p.agent_ca.cert)),
            format!("--agent-cert={}", path(&agent_client.cert)),
            format!("--agent-key={}", path(&agent_client.key)),
            format!("--agent-id=bench-agent-{}", rand::random::<u32>()),
            "--sync-interval=100ms".to_string(),
            "--sync-interval-cap=1s".to_string(),
            "--probe-interval=100ms".to_string(),
            "--health-server-host=127.0.0.1".to_string(),
            format!("--health-server-port={agent_health}"),
            "--admin-bind-address=127.0.0.1".to_string(),
            format!("--admin-server-port={agent_admin}"),
        ];
        if transport == Transport::Quic {
            agent_args.push("--transport=quic".to_string());
        }
        agent_args.extend(env.extra.agent.iter().cloned());
        let mut agent = ChildProc::spawn(
            &env.binaries.agent,
            "proxy-agent",
            &agent_args,
            env.unique_file("proxy-agent", "log"),
        )?;
        wait_status(&mut agent, loopback(agent_health), "/readyz").await?;
        wait_status(&mut server, loopback(health_port), "/readyz").await?;

        let harness = Harness {
            agent,
            server,
            dialer,
            frontend,
            transport,
        };
        harness.wait_probe(probe).await?;
        Ok(harness)
    }

    /// Retries one echo tunnel to `probe` until it works: the frontend listens and the agent
    /// is registered for dialing.
    async fn wait_probe(&self, probe: SocketAddr) -> Result<()> {
        let route = self.route();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let attempt = async {
                let mut c = route.connect(probe).await?;
                c.request(Op::Echo, 0, 0).await?;
                let mut buf = [0u8; 1];
                c.round_trip(b"p", &mut buf).await?;
                c.close().await;
                Ok::<_, BenchError>(())
            };
            let err = match tokio::time::timeout(STARTUP_TIMEOUT, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the probe tunnel hung".to_string(),
            };
            if Instant::now() >= deadline {
                return Err(BenchError::Process(format!(
                    "{}/{}: no working tunnel within {STARTUP_TIMEOUT:?}: {err}\nserver log tail:\n{}\nagent log tail:\n{}",
                    self.frontend.name(),
                    self.transport.name(),
                    self.server.log_tail(),
                    self.agent.log_tail()
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The route through this pair.
    pub fn route(&self) -> Route {
        Route::Proxy(self.dialer.clone())
    }

    /// Server process id.
    pub fn server_pid(&self) -> u32 {
        self.server.pid()
    }

    /// Agent process id.
    pub fn agent_pid(&self) -> u32 {
        self.agent.pid()
    }

    /// `Err` (with log tails) if either process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.server.check_alive()?;
        self.agent.check_alive()
    }
}

/// Polls `GET path` until 200, failing early (with the log) if the process exits.
async fn wait_status(proc: &mut ChildProc, addr: SocketAddr, path: &str) -> Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        proc.check_alive()?;
        let last = match http_status(addr, path).await {
            Ok(200) => return Ok(()),
            Ok(code) => format!("HTTP {code}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(BenchError::Process(format!(
                "{} never answered 200 on http://{addr}{path} within {STARTUP_TIMEOUT:?} (last: {last}); log tail:\n{}",
                proc.name,
                proc.log_tail()
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: HashSet<u16> = (0..20).map(|_| free_port().expect("port")).collect();
        assert_eq!(ports.len(), 20);
        assert!(ports
            .iter()
            .all(|p| (PORT_RANGE_START..=PORT_RANGE_END).contains(p)));
    }

    #[tokio::test]
    async fn http_status_reads_the_status_code() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                .await;
        });
        assert_eq!(http_status(addr, "/readyz").await.expect("status"), 503);
    }

    #[test]
    fn probe_quic_reports_a_missing_binary() {
        let e = probe_quic(Path::new("/nonexistent/proxy-agent")).expect_err("no binary");
        assert!(e.contains("cannot run"), "{e}");
    }
}
