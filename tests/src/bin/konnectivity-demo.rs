//! `konnectivity-demo`: the whole Konnectivity path on one machine, in one process.
//!
//! Generates a PKI, starts a kubelet stand-in (HTTPS, kubelet certificate, client
//! certificate required), two proxy-servers (gRPC frontend on a Unix socket; HTTP CONNECT
//! frontend on mTLS TCP) each with one agent, then sends a request through each frontend the
//! way kube-apiserver does, verifying the kubelet certificate end to end through the tunnel,
//! and shows that a kubelet certificate from a wrong CA is refused. Exits 0 on success.
//!
//! Quick start: `cargo run --release -p konnectivity-e2e --bin konnectivity-demo`
//! (add `-- --keep-running` to keep everything up and get curl commands).

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use konnectivity_certs::{Pki, PkiOptions, PkiPaths};
use konnectivity_client::{Dialer, ProxyProtocol, ProxyTransport};
use konnectivity_e2e::cluster::KUBELET_SERVER_NAME;
use konnectivity_e2e::{http, Kubelet, KubeletClient};
use proxy_agent::config::{AgentConfig, AgentIdentity, ServerTarget, SyncConfig};
use proxy_server::config::{
    BackendConfig, FrontendConfig, FrontendListen, FrontendMode, ProxyStrategy, ServerConfig,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Deadline for each component to come up and for agents to connect.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for each demo request (dial + TLS + HTTP).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long shutdown may take before the demo stops waiting for tasks.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Keepalive interval of the demo's gRPC connections (upstream's default, 1 h).
const KEEPALIVE: Duration = Duration::from_secs(3600);
/// Agent reconnect pacing: fast, as in upstream's own tests.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Cap of the agent reconnect backoff.
const SYNC_INTERVAL_CAP: Duration = Duration::from_secs(1);
/// Upstream's default per-stream queue lengths (server 10, agent 150 packets).
const SERVER_XFR_CHANNEL: usize = 10;
/// See [`SERVER_XFR_CHANNEL`].
const AGENT_XFR_CHANNEL: usize = 150;

/// Runs the Konnectivity demo (server, agents, kubelet stand-in, client) in one process.
#[derive(Debug, Parser)]
#[command(name = "konnectivity-demo", version)]
struct Args {
    /// Keep everything running after the checks and print how to curl through it; stop
    /// with Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Write the PKI and sockets here instead of a temporary directory (kept afterwards).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Log filter for the components' own logs (e.g. `info`, `proxy_server=debug`); default `warn`.
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    log: String,
}

fn loopback0() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn step(n: &mut u32, text: &str) {
    *n += 1;
    println!("\n[{n}] {text}");
}

fn server_config(
    pki: &PkiPaths,
    id: &str,
    mode: FrontendMode,
    listen: FrontendListen,
) -> ServerConfig {
    ServerConfig {
        frontend: FrontendConfig {
            mode,
            listen,
            keepalive_time: KEEPALIVE,
        },
        backend: BackendConfig {
            addr: loopback0(),
            cert: pki.agent_server.cert.clone(),
            key: pki.agent_server.key.clone(),
            client_ca: Some(pki.agent_ca.cert.clone()),
            keepalive_time: KEEPALIVE,
        },
        tls: Default::default(),
        proxy_strategies: vec![ProxyStrategy::Default],
        server_id: id.to_string(),
        server_count: 1,
        xfr_channel_size: SERVER_XFR_CHANNEL,
        backend_dial_timeout: Duration::ZERO,
        graceful_shutdown_timeout: Duration::ZERO,
        health_addr: loopback0(),
        admin_addr: loopback0(),
        extensions: Default::default(),
    }
}

fn agent_config(pki: &PkiPaths, id: &str, server_port: u16) -> anyhow::Result<AgentConfig> {
    let client = pki
        .agent(konnectivity_certs::DEFAULT_AGENT_NAME)
        .context("the PKI has no default agent certificate")?;
    Ok(AgentConfig {
        server: ServerTarget {
            host: "127.0.0.1".to_string(),
            port: server_port,
            ca_cert: pki.agent_ca.cert.clone(),
            client_cert: Some((client.cert.clone(), client.key.clone())),
            extra_alpn: Vec::new(),
            token_path: None,
            keepalive_time: KEEPALIVE,
        },
        identity: AgentIdentity {
            agent_id: id.to_string(),
            identifiers: String::new(),
        },
        sync: SyncConfig {
            interval: SYNC_INTERVAL,
            interval_cap: SYNC_INTERVAL_CAP,
            forever: false,
            probe_interval: SYNC_INTERVAL,
        },
        tls: Default::default(),
        xfr_channel_size: AGENT_XFR_CHANNEL,
        warn_on_channel_limit: false,
        health_addr: loopback0(),
        admin_addr: loopback0(),
        extensions: Default::default(),
    })
}

/// One proxy-server with its agent, running in this process.
struct Pair {
    name: &'static str,
    bound: proxy_server::BoundAddrs,
    agent_health: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

async fn wait_200(what: &str, addr: SocketAddr, path: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok(r) = http::get(addr, path).await {
            if r.status == 200 {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("{what}: http://{addr}{path} did not answer 200 within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_pair(
    name: &'static str,
    pki: &PkiPaths,
    config: ServerConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Pair> {
    let (bound, _shared) = proxy_server::start(&config, shutdown.child_token())
        .await
        .with_context(|| format!("starting the {name} proxy-server"))?;
    let mut tasks = Vec::new();
    // `start` returns once listening; the server stops when the token is cancelled.
    let agent_id = format!("demo-agent-{name}");
    let agent = proxy_agent::Agent::bind(agent_config(pki, &agent_id, bound.agent.port())?)
        .await
        .with_context(|| format!("starting the {name} agent"))?;
    let agent_health = agent
        .health_addr()
        .context("the agent's health listener has no address")?;
    let (drain, stop) = (CancellationToken::new(), shutdown.child_token());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = agent.run(drain, stop).await {
            eprintln!("agent {agent_id} stopped with an error: {e}");
        }
    }));
    let up = wait_200(&format!("{name} agent /readyz"), agent_health, "/readyz").await?;
    wait_200(&format!("{name} server /readyz"), bound.health, "/readyz").await?;
    println!("    agent connected to the {name} server after {up:?}");
    Ok(Pair {
        name,
        bound,
        agent_health,
        tasks,
    })
}

/// Dials the kubelet through `dialer`, verifies its certificate as kube-apiserver does, and
/// runs GET /healthz and POST /echo.
async fn request_through(
    label: &str,
    dialer: &Dialer,
    kubelet: &Kubelet,
    client: &KubeletClient,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let tunnel = dialer
        .dial(&kubelet.address())
        .await
        .with_context(|| format!("{label}: dial {} through the proxy", kubelet.address()))?;
    let dialed = started.elapsed();
    let mut conn = client
        .connect(tunnel, KUBELET_SERVER_NAME)
        .await
        .with_context(|| format!("{label}: TLS with the kubelet through the tunnel"))?;
    let tls_done = started.elapsed();
    let health = conn
        .get("/healthz")
        .await
        .with_context(|| format!("{label}: GET /healthz"))?;
    if health.status != 200 || health.body != "ok" {
        bail!(
            "{label}: GET /healthz answered {} {:?}",
            health.status,
            health.text()
        );
    }
    let payload = Bytes::from_static(b"hello through konnectivity");
    let echo = conn
        .post("/echo", payload.clone())
        .await
        .with_context(|| format!("{label}: POST /echo"))?;
    if echo.body != payload {
        bail!("{label}: POST /echo returned {:?}", echo.text());
    }
    println!(
        "    tunnel open in {dialed:?}; kubelet certificate verified as {KUBELET_SERVER_NAME:?} against kubelet-ca.crt in {:?}",
        tls_done - dialed
    );
    println!(
        "    GET /healthz -> {} {:?}; POST /echo -> {} bytes echoed; total {:?}",
        health.status,
        health.text(),
        echo.body.len(),
        started.elapsed()
    );
    Ok(())
}

async fn run(args: &Args, shutdown: &CancellationToken) -> anyhow::Result<Vec<Pair>> {
    let mut n = 0;
    let (_tmp, dir) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("konnectivity-demo-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };

    step(&mut n, "Generating the PKI (three CAs and their leaves)");
    let pki = Pki::generate(&PkiOptions::default())?
        .write(dir.join("pki"), true)
        .context("writing the PKI")?;
    for (stem, pair) in pki.entries() {
        println!("    {stem:<16} {}", pair.cert.display());
    }

    step(
        &mut n,
        "Starting the kubelet stand-in (HTTPS, requires the kubelet-client certificate)",
    );
    let kubelet = Kubelet::start_default(&pki).await?;
    println!(
        "    https://{} (certificate {}, SANs localhost/127.0.0.1/::1)",
        kubelet.addr(),
        pki.kubelet_servers[0].value.cert.display()
    );

    step(
        &mut n,
        "Starting proxy-server #1: --mode=grpc on a Unix socket, with one agent",
    );
    let sock = dir.join("konnectivity-server.socket");
    let grpc_cfg = server_config(
        &pki,
        "demo-server-grpc",
        FrontendMode::Grpc,
        FrontendListen::Uds {
            path: sock.clone(),
            delete_existing: true,
        },
    );
    let grpc = start_pair("grpc", &pki, grpc_cfg, shutdown).await?;
    println!(
        "    frontend unix://{}  agents {}  health http://{}  admin http://{}",
        sock.display(),
        grpc.bound.agent,
        grpc.bound.health,
        grpc.bound.admin
    );

    step(
        &mut n,
        "Starting proxy-server #2: --mode=http-connect on mTLS TCP, with one agent",
    );
    let http_cfg = server_config(
        &pki,
        "demo-server-http-connect",
        FrontendMode::HttpConnect,
        FrontendListen::Tcp {
            addr: loopback0(),
            cert: pki.frontend_server.cert.clone(),
            key: pki.frontend_server.key.clone(),
            client_ca: pki.frontend_ca.cert.clone(),
        },
    );
    let httpc = start_pair("http-connect", &pki, http_cfg, shutdown).await?;
    let frontend = httpc
        .bound
        .frontend
        .context("the http-connect server reports no TCP frontend address")?;
    println!(
        "    frontend https://{frontend} (client certificate required)  agents {}  health http://{}",
        httpc.bound.agent, httpc.bound.health
    );

    let client = KubeletClient::from_pki(&pki)?;

    step(
        &mut n,
        "Request through the gRPC frontend (single-use tunnel over the Unix socket)",
    );
    let grpc_dialer = Dialer::new(ProxyProtocol::Grpc, ProxyTransport::Uds(sock.clone()))?;
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_through("gRPC", &grpc_dialer, &kubelet, &client),
    )
    .await
    .context("the gRPC request timed out")??;

    step(
        &mut n,
        "Request through the HTTP CONNECT frontend (mTLS TCP)",
    );
    let connect_dialer = Dialer::new(
        ProxyProtocol::HttpConnect,
        ProxyTransport::Tcp {
            addr: frontend.to_string(),
            server_name: "127.0.0.1".to_string(),
            ca: pki.frontend_ca.cert.clone(),
            client_cert: pki.frontend_client.cert.clone(),
            client_key: pki.frontend_client.key.clone(),
        },
    )?;
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_through("HTTP CONNECT", &connect_dialer, &kubelet, &client),
    )
    .await
    .context("the HTTP CONNECT request timed out")??;

    step(
        &mut n,
        "A kubelet whose certificate comes from a WRONG CA must be refused by the client",
    );
    let foreign = Pki::generate(&PkiOptions::default())?
        .write(dir.join("wrong-ca-pki"), true)
        .context("writing the second PKI")?;
    let wrong = &foreign.kubelet_servers[0].value;
    let impostor = Kubelet::start(&wrong.cert, &wrong.key, &pki.kubelet_ca.cert).await?;
    println!(
        "    impostor kubelet on https://{} with {}",
        impostor.addr(),
        wrong.cert.display()
    );
    let tunnel = grpc_dialer
        .dial(&impostor.address())
        .await
        .context("dialing the impostor kubelet through the gRPC tunnel")?;
    match tokio::time::timeout(REQUEST_TIMEOUT, client.connect(tunnel, KUBELET_SERVER_NAME)).await {
        Err(_) => bail!("the TLS handshake with the impostor kubelet timed out instead of failing"),
        Ok(Ok(_)) => bail!("the client ACCEPTED a kubelet certificate from the wrong CA"),
        Ok(Err(e)) => println!("    refused as expected: {e}"),
    }
    if impostor.requests_served() != 0 {
        bail!(
            "the impostor kubelet served {} requests",
            impostor.requests_served()
        );
    }

    println!("\nAll checks passed.");
    if args.keep_running {
        let k = &pki;
        println!("\nEverything keeps running (Ctrl-C to stop). Try:");
        println!(
            "  curl -sS -p -x https://{frontend} --proxy-cacert {} --proxy-cert {} --proxy-key {} \\\n       --cacert {} --cert {} --key {} https://{}/healthz",
            k.frontend_ca.cert.display(),
            k.frontend_client.cert.display(),
            k.frontend_client.key.display(),
            k.kubelet_ca.cert.display(),
            k.kubelet_client.cert.display(),
            k.kubelet_client.key.display(),
            kubelet.addr()
        );
        for pair in [&grpc, &httpc] {
            println!(
                "  curl http://{}/readyz ; curl http://{}/metrics   # {} server",
                pair.bound.health, pair.bound.health, pair.name
            );
            println!(
                "  curl http://{}/metrics   # {} agent",
                pair.agent_health, pair.name
            );
        }
        println!(
            "  gRPC frontend (for a konnectivity gRPC client): unix://{}",
            sock.display()
        );
        if args.dir.is_none() {
            println!("  (files are in {}, removed on exit)", dir.display());
        }
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        println!("\nStopping.");
    }
    drop((kubelet, impostor));
    keep(&dir, args.dir.is_some());
    Ok(vec![grpc, httpc])
}

fn keep(dir: &Path, kept: bool) {
    if kept {
        println!("Files kept in {}", dir.display());
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    println!(
        "Konnectivity demo: proxy-server + proxy-agent + kubelet stand-in, all in this process"
    );
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let result = run(&args, &shutdown).await;
    shutdown.cancel();
    if let Ok(pairs) = &result {
        for pair in pairs {
            for task in &pair.tasks {
                let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
                    while !task.is_finished() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
            }
        }
    }
    match result {
        Ok(_) => {
            println!("Demo finished successfully in {:?}.", started.elapsed());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nDemo FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
