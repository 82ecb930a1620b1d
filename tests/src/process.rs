//! The `proxy-server` and `proxy-agent` binaries as child processes.
//!
//! Every process writes stdout and stderr to a log file in the test directory; when a test
//! fails (the thread is panicking) the tail of each log is printed as the process is dropped.
//! Dropping a process kills it (SIGKILL) and reaps it, so no test leaks processes.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::bins;
use crate::env::TestEnv;
use crate::error::{HarnessError, Result};
use crate::http::{self, HttpResponse};
use crate::ports::free_port;
use crate::wait::{wait_until, CONNECT_TIMEOUT, POLL_INTERVAL, STARTUP_TIMEOUT};

/// Lines of a process log printed when a test fails. Enough for the last few exchanges at
/// the binaries' default verbosity without drowning the test output.
pub const LOG_TAIL_LINES: usize = 80;

/// A spawned binary with its log file.
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
    args: Vec<String>,
    exit: Option<ExitStatus>,
}

/// An open-file limit (`RLIMIT_NOFILE`) to start a process under, as a parent such as a
/// container runtime or systemd would set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process inherits.
    pub soft: u64,
    /// The hard limit it inherits; the test process's own if `None`.
    pub hard: Option<u64>,
}

impl ChildProcess {
    /// Starts `bin` with `args`, stdout and stderr appended to `log`.
    pub fn spawn(bin: &Path, name: &str, args: Vec<String>, log: PathBuf) -> Result<ChildProcess> {
        ChildProcess::spawn_limited(bin, name, args, log, None)
    }

    /// [`ChildProcess::spawn`] under the given open-file limit, set by `sh`'s `ulimit` before
    /// it `exec`s the binary (same pid, no `unsafe` in the harness).
    pub fn spawn_limited(
        bin: &Path,
        name: &str,
        args: Vec<String>,
        log: PathBuf,
        open_files: Option<OpenFiles>,
    ) -> Result<ChildProcess> {
        let file = File::create(&log)
            .map_err(|e| HarnessError::io(format!("creating log {}", log.display()), e))?;
        let file2 = file
            .try_clone()
            .map_err(|e| HarnessError::io(format!("duplicating log {}", log.display()), e))?;
        let mut command = match open_files {
            None => Command::new(bin),
            Some(limit) => {
                // Soft first: a hard limit below the current soft one would be refused.
                let mut script = format!("ulimit -S -n {}", limit.soft);
                if let Some(hard) = limit.hard {
                    script.push_str(&format!(" && ulimit -H -n {hard}"));
                }
                script.push_str(" && exec \"$0\" \"$@\"");
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(script).arg(bin);
                c
            }
        };
        let child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {}", bin.display()), e))?;
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            log,
            args,
            exit: None,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Sends `signal` (e.g. SIGTERM for the drain/shutdown tests).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id())
            .map_err(|_| HarnessError::Process(format!("pid {} out of range", self.child.id())))?;
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| HarnessError::io(format!("sending {signal} to {}", self.name), e.into()))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// Its exit status if it has exited (non-blocking).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::timeout(
                    format!("{} to exit", self.name),
                    timeout,
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<log {} unreadable: {e}>", self.log.display()))
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// An error for "the process exited early", with its log tail.
    fn exited_error(&mut self, status: ExitStatus) -> HarnessError {
        HarnessError::Process(format!(
            "{} exited with {status} during start-up; args {:?}; log:\n{}",
            self.name,
            self.args,
            tail(&self.log(), LOG_TAIL_LINES)
        ))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
        crate::report::park_process(crate::report::ProcessRecord {
            name: self.name.clone(),
            pid: self.child.id(),
            args: self.args.clone(),
            log: self.log.clone(),
        });
        if std::thread::panicking() {
            eprintln!(
                "----- {} (pid {}, args {:?}) log tail, full log {} -----\n{}\n----- end of {} -----",
                self.name,
                self.child.id(),
                self.args,
                self.log.display(),
                tail(&self.log(), LOG_TAIL_LINES),
                self.name
            );
        }
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Waits until `GET /healthz` on `health` answers 200, failing early if `proc` exits.
async fn wait_healthy(proc: &mut ChildProcess, health: SocketAddr) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = proc.exit_status() {
            return Err(proc.exited_error(status));
        }
        if let Ok(r) = http::get(health, "/healthz").await {
            if r.status == 200 {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HarnessError::Process(format!(
                "{} never answered 200 on http://{health}/healthz within {STARTUP_TIMEOUT:?}; log:\n{}",
                proc.name,
                tail(&proc.log(), LOG_TAIL_LINES)
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Frontend protocol of a server (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `--mode=grpc`.
    Grpc,
    /// `--mode=http-connect`.
    HttpConnect,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Grpc => "grpc",
            Mode::HttpConnect => "http-connect",
        }
    }
}

/// Frontend transport of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain Unix socket (`--uds-name`, `--server-port=0`).
    Uds,
    /// mTLS TCP on loopback (`--server-port`, `--server-cert/key/ca-cert`).
    Tcp,
}

/// Ports of a server; reuse them to restart a server "on the same port".
#[derive(Debug, Clone, Copy)]
pub struct ServerPorts {
    /// `--agent-port`.
    pub agent: u16,
    /// `--health-port`.
    pub health: u16,
    /// `--admin-port`.
    pub admin: u16,
    /// `--server-port` (TCP frontends only).
    pub frontend: Option<u16>,
}

/// How to start a server. `Default` is gRPC over a Unix socket with agent mTLS.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `--mode`.
    pub mode: Mode,
    /// Frontend transport.
    pub transport: Transport,
    /// Pass `--cluster-ca-cert` (agents must present a certificate from the agent CA).
    pub agent_mtls: bool,
    /// `--server-id`; a fresh one if `None`.
    pub server_id: Option<String>,
    /// `--server-count`.
    pub server_count: u32,
    /// `--proxy-strategies`, if set.
    pub proxy_strategies: Option<String>,
    /// Fixed ports (restart on the same ports); fresh ones if `None`.
    pub ports: Option<ServerPorts>,
    /// Unix socket path to reuse; a fresh one in the test directory if `None`.
    pub uds_path: Option<PathBuf>,
    /// Further flags, appended last.
    pub extra_args: Vec<String>,
    /// Open-file limit to start under; the test process's own if `None`.
    pub open_files: Option<OpenFiles>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            mode: Mode::Grpc,
            transport: Transport::Uds,
            agent_mtls: true,
            server_id: None,
            server_count: 1,
            proxy_strategies: None,
            ports: None,
            uds_path: None,
            extra_args: Vec::new(),
            open_files: None,
        }
    }
}

impl ServerOptions {
    /// gRPC frontend on a Unix socket (what kube-apiserver supports for gRPC).
    pub fn grpc_uds() -> Self {
        ServerOptions::default()
    }

    /// HTTP CONNECT frontend on mTLS TCP.
    pub fn http_connect_tcp() -> Self {
        ServerOptions {
            mode: Mode::HttpConnect,
            transport: Transport::Tcp,
            ..ServerOptions::default()
        }
    }

    /// HTTP CONNECT frontend on a Unix socket.
    pub fn http_connect_uds() -> Self {
        ServerOptions {
            mode: Mode::HttpConnect,
            transport: Transport::Uds,
            ..ServerOptions::default()
        }
    }
}

/// Where a server's frontend listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendAddr {
    /// Unix socket path.
    Uds(PathBuf),
    /// Loopback TCP address (mTLS).
    Tcp(SocketAddr),
}

/// A running `proxy-server`.
pub struct Server {
    /// The process.
    pub process: ChildProcess,
    /// Its ports.
    pub ports: ServerPorts,
    /// Its frontend address.
    pub frontend: FrontendAddr,
    /// Its `--mode`.
    pub mode: Mode,
    /// Its `--server-id`.
    pub server_id: String,
}

impl Server {
    /// The flags for `opts` (exposed so tests can vary them).
    pub fn args(
        env: &TestEnv,
        opts: &ServerOptions,
        ports: &ServerPorts,
        frontend: &FrontendAddr,
        server_id: &str,
    ) -> Vec<String> {
        let p = &env.pki;
        let path = |p: &Path| p.display().to_string();
        let mut args = vec![
            format!("--mode={}", opts.mode.flag()),
            format!("--agent-port={}", ports.agent),
            "--agent-bind-address=127.0.0.1".to_string(),
            format!("--cluster-cert={}", path(&p.agent_server.cert)),
            format!("--cluster-key={}", path(&p.agent_server.key)),
            format!("--health-port={}", ports.health),
            "--health-bind-address=127.0.0.1".to_string(),
            format!("--admin-port={}", ports.admin),
            "--admin-bind-address=127.0.0.1".to_string(),
            format!("--server-id={server_id}"),
            format!("--server-count={}", opts.server_count),
        ];
        if opts.agent_mtls {
            args.push(format!("--cluster-ca-cert={}", path(&p.agent_ca.cert)));
        }
        match frontend {
            FrontendAddr::Uds(sock) => {
                args.push(format!("--uds-name={}", path(sock)));
                args.push("--server-port=0".to_string());
            }
            FrontendAddr::Tcp(addr) => {
                args.push(format!("--server-port={}", addr.port()));
                args.push("--server-bind-address=127.0.0.1".to_string());
                args.push(format!("--server-cert={}", path(&p.frontend_server.cert)));
                args.push(format!("--server-key={}", path(&p.frontend_server.key)));
                args.push(format!("--server-ca-cert={}", path(&p.frontend_ca.cert)));
            }
        }
        if let Some(s) = &opts.proxy_strategies {
            args.push(format!("--proxy-strategies={s}"));
        }
        args.extend(opts.extra_args.iter().cloned());
        args
    }

    /// Starts a server and waits until its health endpoint answers and its frontend exists.
    pub async fn start(env: &TestEnv, opts: ServerOptions) -> Result<Server> {
        let ports = match opts.ports {
            Some(p) => p,
            None => ServerPorts {
                agent: free_port()?,
                health: free_port()?,
                admin: free_port()?,
                frontend: match opts.transport {
                    Transport::Tcp => Some(free_port()?),
                    Transport::Uds => None,
                },
            },
        };
        let frontend = match (opts.transport, ports.frontend) {
            (Transport::Tcp, Some(port)) => FrontendAddr::Tcp(loopback(port)),
            (Transport::Tcp, None) => FrontendAddr::Tcp(loopback(free_port()?)),
            (Transport::Uds, _) => FrontendAddr::Uds(
                opts.uds_path
                    .clone()
                    .unwrap_or_else(|| env.unique_file("frontend", "sock")),
            ),
        };
        let ports = ServerPorts {
            frontend: match &frontend {
                FrontendAddr::Tcp(a) => Some(a.port()),
                FrontendAddr::Uds(_) => None,
            },
            ..ports
        };
        let server_id = opts
            .server_id
            .clone()
            .unwrap_or_else(|| format!("server-{}", rand::random::<u32>()));
        let args = Server::args(env, &opts, &ports, &frontend, &server_id);
        let bin = bins::binary(bins::SERVER_BIN)?;
        let mut process = ChildProcess::spawn_limited(
            &bin,
            "proxy-server",
            args,
            env.unique_file("proxy-server", "log"),
            opts.open_files,
        )?;
        wait_healthy(&mut process, loopback(ports.health)).await?;
        let fe = frontend.clone();
        let listening = wait_until("the frontend listener", STARTUP_TIMEOUT, || {
            let fe = fe.clone();
            async move {
                match fe {
                    FrontendAddr::Uds(p) => tokio::net::UnixStream::connect(p).await.is_ok(),
                    FrontendAddr::Tcp(a) => tokio::net::TcpStream::connect(a).await.is_ok(),
                }
            }
        })
        .await;
        if let Err(e) = listening {
            return Err(HarnessError::Process(format!(
                "proxy-server: {e}; log:\n{}",
                tail(&process.log(), LOG_TAIL_LINES)
            )));
        }
        Ok(Server {
            process,
            ports,
            frontend,
            mode: opts.mode,
            server_id,
        })
    }

    /// Agent listener address.
    pub fn agent_addr(&self) -> SocketAddr {
        loopback(self.ports.agent)
    }

    /// Health listener address.
    pub fn health_addr(&self) -> SocketAddr {
        loopback(self.ports.health)
    }

    /// Admin listener address.
    pub fn admin_addr(&self) -> SocketAddr {
        loopback(self.ports.admin)
    }

    /// The Unix socket path of the frontend (panics for a TCP frontend: a test bug).
    pub fn uds_path(&self) -> &Path {
        match &self.frontend {
            FrontendAddr::Uds(p) => p,
            FrontendAddr::Tcp(a) => panic!("server frontend is TCP {a}, not a Unix socket"),
        }
    }

    /// The TCP address of the frontend (panics for a Unix-socket frontend: a test bug).
    pub fn frontend_tcp(&self) -> SocketAddr {
        match &self.frontend {
            FrontendAddr::Tcp(a) => *a,
            FrontendAddr::Uds(p) => {
                panic!("server frontend is Unix socket {}, not TCP", p.display())
            }
        }
    }

    /// `GET /readyz` on the health port.
    pub async fn readyz(&self) -> Result<HttpResponse> {
        http::get(self.health_addr(), "/readyz").await
    }

    /// Waits until `/readyz` answers 200 (at least one agent connected).
    pub async fn wait_ready(&self) -> Result<()> {
        let addr = self.health_addr();
        wait_until("proxy-server /readyz 200", CONNECT_TIMEOUT, || async move {
            http::get(addr, "/readyz")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await
    }

    /// `/metrics` text from the health port.
    pub async fn metrics(&self) -> Result<String> {
        Ok(http::get(self.health_addr(), "/metrics").await?.text())
    }
}

/// How to start an agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--agent-id`.
    pub agent_id: String,
    /// `--proxy-server-host`.
    pub server_host: String,
    /// `--proxy-server-port`.
    pub server_port: u16,
    /// `--ca-cert`; the test PKI's agent CA if `None`.
    pub ca_cert: Option<PathBuf>,
    /// `--agent-cert`/`--agent-key`; the test PKI's agent client pair if `None`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `--agent-identifiers`, if set.
    pub identifiers: Option<String>,
    /// `--health-server-port`; fresh if `None`.
    pub health_port: Option<u16>,
    /// Further flags, appended last.
    pub extra_args: Vec<String>,
    /// Open-file limit to start under; the test process's own if `None`.
    pub open_files: Option<OpenFiles>,
}

impl AgentOptions {
    /// An agent with a fresh id connecting to `server` with the test PKI.
    pub fn for_server(server: &Server) -> AgentOptions {
        AgentOptions::for_port(server.ports.agent)
    }

    /// An agent with a fresh id connecting to 127.0.0.1:`port` with the test PKI.
    pub fn for_port(port: u16) -> AgentOptions {
        AgentOptions {
            agent_id: format!("agent-{}", rand::random::<u32>()),
            server_host: "127.0.0.1".to_string(),
            server_port: port,
            ca_cert: None,
            client_cert: None,
            identifiers: None,
            health_port: None,
            extra_args: Vec::new(),
            open_files: None,
        }
    }
}

/// A running `proxy-agent`.
pub struct Agent {
    /// The process.
    pub process: ChildProcess,
    /// `--agent-id`.
    pub agent_id: String,
    /// `--health-server-port`.
    pub health_port: u16,
    /// `--admin-server-port`.
    pub admin_port: u16,
}

impl Agent {
    /// Starts an agent and waits until its `/healthz` answers (not until it is connected:
    /// see [`Agent::wait_ready`]).
    pub async fn start(env: &TestEnv, opts: AgentOptions) -> Result<Agent> {
        let health_port = match opts.health_port {
            Some(p) => p,
            None => free_port()?,
        };
        let admin_port = free_port()?;
        let p = &env.pki;
        let (ca, (cert, key)) = (
            opts.ca_cert
                .clone()
                .unwrap_or_else(|| p.agent_ca.cert.clone()),
            opts.client_cert.clone().unwrap_or_else(|| {
                let pair = p
                    .agent(konnectivity_certs::DEFAULT_AGENT_NAME)
                    .unwrap_or(&p.agent_clients[0].value);
                (pair.cert.clone(), pair.key.clone())
            }),
        );
        let mut args = vec![
            format!("--proxy-server-host={}", opts.server_host),
            format!("--proxy-server-port={}", opts.server_port),
            format!("--ca-cert={}", ca.display()),
            format!("--agent-cert={}", cert.display()),
            format!("--agent-key={}", key.display()),
            format!("--agent-id={}", opts.agent_id),
            "--sync-interval=100ms".to_string(),
            "--sync-interval-cap=1s".to_string(),
            "--probe-interval=100ms".to_string(),
            "--health-server-host=127.0.0.1".to_string(),
            format!("--health-server-port={health_port}"),
            "--admin-bind-address=127.0.0.1".to_string(),
            format!("--admin-server-port={admin_port}"),
        ];
        if let Some(ids) = &opts.identifiers {
            args.push(format!("--agent-identifiers={ids}"));
        }
        args.extend(opts.extra_args.iter().cloned());
        Agent::start_limited(
            env,
            args,
            opts.agent_id,
            (health_port, admin_port),
            opts.open_files,
        )
        .await
    }

    /// Starts an agent with exactly `args` (which must set the given health/admin ports).
    pub async fn start_with_args(
        env: &TestEnv,
        args: Vec<String>,
        agent_id: String,
        health_port: u16,
        admin_port: u16,
    ) -> Result<Agent> {
        Agent::start_limited(env, args, agent_id, (health_port, admin_port), None).await
    }

    async fn start_limited(
        env: &TestEnv,
        args: Vec<String>,
        agent_id: String,
        (health_port, admin_port): (u16, u16),
        open_files: Option<OpenFiles>,
    ) -> Result<Agent> {
        let bin = bins::binary(bins::AGENT_BIN)?;
        let mut process = ChildProcess::spawn_limited(
            &bin,
            "proxy-agent",
            args,
            env.unique_file("proxy-agent", "log"),
            open_files,
        )?;
        wait_healthy(&mut process, loopback(health_port)).await?;
        Ok(Agent {
            process,
            agent_id,
            health_port,
            admin_port,
        })
    }

    /// Health listener address.
    pub fn health_addr(&self) -> SocketAddr {
        loopback(self.health_port)
    }

    /// Admin listener address.
    pub fn admin_addr(&self) -> SocketAddr {
        loopback(self.admin_port)
    }

    /// `GET /readyz` on the health port.
    pub async fn readyz(&self) -> Result<HttpResponse> {
        http::get(self.health_addr(), "/readyz").await
    }

    /// Waits until `/readyz` answers 200 (connected to at least one server).
    pub async fn wait_ready(&self) -> Result<()> {
        let addr = self.health_addr();
        wait_until("proxy-agent /readyz 200", CONNECT_TIMEOUT, || async move {
            http::get(addr, "/readyz")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await
    }

    /// `/metrics` text from the health port.
    pub async fn metrics(&self) -> Result<String> {
        Ok(http::get(self.health_addr(), "/metrics").await?.text())
    }
}

/// Starts a server with `opts` and `agents` agents connected to it, waiting until the server
/// is ready and every agent reports ready.
pub async fn server_with_agents(
    env: &TestEnv,
    opts: ServerOptions,
    agents: usize,
) -> Result<(Server, Vec<Agent>)> {
    let server = Server::start(env, opts).await?;
    let mut started = Vec::with_capacity(agents);
    for _ in 0..agents {
        started.push(Agent::start(env, AgentOptions::for_server(&server)).await?);
    }
    for agent in &started {
        agent.wait_ready().await?;
    }
    server.wait_ready().await?;
    Ok((server, started))
}
