//! The apiserver → kubelet path end to end, with the REAL binaries: `konnectivity-kubectl`
//! (kube-apiserver's role, driven by a generated EgressSelectorConfiguration) → `proxy-server`
//! (`--mode=grpc --uds-name`, or `--mode=http-connect` on mTLS TCP) → `proxy-agent` →
//! `kubelet-standin`, with the kubelet's certificate verified end to end through the tunnel.
//!
//! Covered: `logs --tail` over both frontends; `logs -f` growing and Ctrl-C closing the tunnel
//! on every hop (upstream issue 167: the agent's `open_endpoint_connections` back to 0);
//! `exec -i` stdin/stdout/stderr and the exit code; `port-forward` to a local echo server; a
//! kubelet certificate from another CA or for another IP refused with a clear message; the
//! agent killed mid-`logs -f` giving a clear error quickly; kube-apiserver's validation text
//! for a bad egress configuration.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use konnectivity_certs::{CertKeyPaths, KubeletNode, PkiOptions};
use konnectivity_client::egress::{
    self, ApiVersion, Connection, EgressSelection, EgressSelectorConfiguration, TcpTransport,
    TlsConfig, Transport, UdsTransport,
};
use konnectivity_e2e::metrics;
use konnectivity_e2e::ports::free_port;
use konnectivity_e2e::process::{server_with_agents, ChildProcess};
use konnectivity_e2e::wait::{wait_until, STARTUP_TIMEOUT};
use konnectivity_e2e::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

/// The agent's gauge of open connections to destinations (upstream's name).
const OPEN_ENDPOINT: &str = "konnectivity_network_proxy_agent_open_endpoint_connections";

/// Bound on one non-interactive `konnectivity-kubectl` run (a dial through the proxy, a TLS
/// handshake and a short request; debug binaries on a loaded 2-core machine).
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on reading one expected line from a streaming `konnectivity-kubectl`.
const LINE_TIMEOUT: Duration = Duration::from_secs(15);

/// After SIGINT, how long the CLI may take to exit (it waits ~0.3 s for the close to go out).
const INTERRUPT_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// After the CLI is gone, how long the agent may take to close its destination connection.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The brief's "within a few seconds": how long the CLI may take to fail after the agent dies.
const AGENT_LOSS_EXIT_TIMEOUT: Duration = Duration::from_secs(8);

/// Interval of new log lines in the stand-in: fast enough that `-f` visibly grows.
const LOG_INTERVAL: &str = "100ms";

/// Namespace/pod/container every test addresses (the stand-in accepts any valid name).
const POD: &str = "default/web";
const CONTAINER: &str = "app";

/// `kubelet-standin` and `konnectivity-kubectl`, located (and built once) by the harness.
mod bins {
    pub use konnectivity_e2e::bins::{binary, KUBECTL_BIN as KUBECTL, STANDIN_BIN as STANDIN};
}

/// A running `kubelet-standin` on loopback.
struct Standin {
    _process: ChildProcess,
    port: u16,
}

impl Standin {
    /// Starts the stand-in with `serving` as its certificate, requiring client certificates
    /// from `client_ca`, and waits until it accepts connections.
    async fn start(
        env: &TestEnv,
        serving: &CertKeyPaths,
        client_ca: &Path,
    ) -> anyhow::Result<Standin> {
        let port = free_port()?;
        let args = vec![
            format!("--listen=127.0.0.1:{port}"),
            format!("--tls-cert-file={}", serving.cert.display()),
            format!("--tls-private-key-file={}", serving.key.display()),
            format!("--client-ca-file={}", client_ca.display()),
            format!("--log-interval={LOG_INTERVAL}"),
        ];
        let mut process = ChildProcess::spawn(
            &bins::binary(bins::STANDIN)?,
            "kubelet-standin",
            args,
            env.unique_file("kubelet-standin", "log"),
        )?;
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = process.exit_status() {
                bail!(
                    "kubelet-standin exited with {status} during start-up:\n{}",
                    process.log()
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(Standin {
                    _process: process,
                    port,
                });
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "kubelet-standin never listened on 127.0.0.1:{port}:\n{}",
                process.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The stand-in with the test PKI's default kubelet serving certificate.
    async fn start_default(env: &TestEnv) -> anyhow::Result<Standin> {
        let serving = env
            .pki
            .kubelet_servers
            .first()
            .context("the test PKI has no kubelet serving certificate")?
            .value
            .clone();
        Standin::start(env, &serving, &env.pki.kubelet_ca.cert).await
    }
}

/// Writes kube-apiserver's EgressSelectorConfiguration for `server`: `GRPC` over its Unix
/// socket, or `HTTPConnect` over mTLS TCP with the frontend-client certificate.
fn write_egress_config(env: &TestEnv, server: &Server) -> anyhow::Result<PathBuf> {
    let p = &env.pki;
    let path_str = |path: &Path| path.display().to_string();
    let connection = match (&server.mode, &server.frontend) {
        (Mode::Grpc, FrontendAddr::Uds(sock)) => Connection {
            proxy_protocol: egress::PROTOCOL_GRPC.into(),
            transport: Some(Transport {
                tcp: None,
                uds: Some(UdsTransport {
                    uds_name: path_str(sock),
                }),
            }),
        },
        (Mode::HttpConnect, FrontendAddr::Tcp(addr)) => Connection {
            proxy_protocol: egress::PROTOCOL_HTTP_CONNECT.into(),
            transport: Some(Transport {
                tcp: Some(TcpTransport {
                    url: format!("https://{addr}"),
                    tls_config: Some(TlsConfig {
                        ca_bundle: path_str(&p.frontend_ca.cert),
                        client_cert: path_str(&p.frontend_client.cert),
                        client_key: path_str(&p.frontend_client.key),
                        tls_server_name: String::new(),
                    }),
                }),
                uds: None,
            }),
        },
        (mode, frontend) => bail!("no egress configuration for a {mode:?} server on {frontend:?}"),
    };
    let config = EgressSelectorConfiguration {
        api_version: ApiVersion::V1Beta1.as_str().into(),
        kind: egress::KIND.into(),
        egress_selections: vec![EgressSelection {
            name: "cluster".into(),
            connection,
        }],
    };
    let path = env.unique_file("egress-selector", "yaml");
    std::fs::write(&path, config.to_yaml()?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `konnectivity-kubectl` with the connection flags for one kubelet.
struct Kubectl {
    bin: PathBuf,
    flags: Vec<String>,
}

impl Kubectl {
    /// Flags for the kubelet on 127.0.0.1:`port`, verified with `kubelet_ca`, dialed through
    /// `config`; the kubelet-client pair of the test PKI.
    fn new(env: &TestEnv, config: &Path, port: u16, kubelet_ca: &Path) -> anyhow::Result<Kubectl> {
        let p = &env.pki;
        Ok(Kubectl {
            bin: bins::binary(bins::KUBECTL)?,
            flags: vec![
                format!("--egress-selector-config-file={}", config.display()),
                format!("--kubelet-certificate-authority={}", kubelet_ca.display()),
                format!(
                    "--kubelet-client-certificate={}",
                    p.kubelet_client.cert.display()
                ),
                format!("--kubelet-client-key={}", p.kubelet_client.key.display()),
                "--node=127.0.0.1".into(),
                format!("--kubelet-port={port}"),
            ],
        })
    }

    /// The command: connection flags first (they are global, and anything after `exec … --`
    /// would belong to the remote command), then the subcommand.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.flags)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs to completion with `input` on stdin, bounded by [`KUBECTL_TIMEOUT`].
    async fn run(&self, args: &[&str], input: Option<&[u8]>) -> anyhow::Result<Output> {
        let mut cmd = self.command(args);
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().context("starting konnectivity-kubectl")?;
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(data)
                .await
                .context("writing kubectl's stdin")?;
            // Dropping stdin closes it: EOF for the remote command.
        }
        tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| {
                format!("konnectivity-kubectl {args:?} did not finish within {KUBECTL_TIMEOUT:?}")
            })?
            .context("waiting for konnectivity-kubectl")
    }

    /// Starts a long-running command (logs -f, port-forward).
    fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        self.command(args)
            .spawn()
            .context("starting konnectivity-kubectl")
    }
}

/// Reads the next stdout line of a streaming command, bounded by [`LINE_TIMEOUT`].
async fn next_line(lines: &mut tokio::io::Lines<BufReader<ChildStdout>>) -> anyhow::Result<String> {
    tokio::time::timeout(LINE_TIMEOUT, lines.next_line())
        .await
        .context("no output line in time")?
        .context("reading kubectl's stdout")?
        .context("kubectl's stdout ended")
}

/// The number `n` of a stand-in log line `line n from default/web/app`, after an optional
/// timestamp prefix.
fn line_number(line: &str) -> anyhow::Result<u64> {
    let rest = line
        .split_once("line ")
        .map(|(_, r)| r)
        .with_context(|| format!("not a log line: {line:?}"))?;
    let (n, from) = rest
        .split_once(' ')
        .with_context(|| format!("not a log line: {line:?}"))?;
    ensure!(
        from == format!("from {POD}/{CONTAINER}"),
        "log line of another container: {line:?}"
    );
    n.parse()
        .with_context(|| format!("bad line number in {line:?}"))
}

/// Sends `signal` to a child process.
fn signal_child(child: &Child, signal: Signal) -> anyhow::Result<()> {
    let pid = child.id().context("the child has already been reaped")?;
    kill(Pid::from_raw(i32::try_from(pid)?), signal).with_context(|| format!("sending {signal}"))
}

/// Waits until the agent reports no open destination connection.
async fn wait_endpoints_closed(agent: &Agent) -> anyhow::Result<()> {
    let health = agent.health_addr();
    wait_until(
        "the agent's open_endpoint_connections back to 0",
        CLEANUP_TIMEOUT,
        || async move {
            match http::get(health, "/metrics").await {
                Ok(r) => metrics::value(&r.text(), OPEN_ENDPOINT, &[]) == Some(0.0),
                Err(_) => false,
            }
        },
    )
    .await?;
    Ok(())
}

/// The agent's current open destination connections (absent metric = 0).
async fn open_endpoints(agent: &Agent) -> anyhow::Result<f64> {
    Ok(metrics::value(&agent.metrics().await?, OPEN_ENDPOINT, &[]).unwrap_or(0.0))
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `logs --tail 3` through `opts`'s frontend: exactly the last three lines, in order.
async fn logs_tail_through(opts: ServerOptions, timestamps: bool) -> anyhow::Result<()> {
    let env = TestEnv::new()?;
    let (server, agents) = server_with_agents(&env, opts, 1).await?;
    let standin = Standin::start_default(&env).await?;
    let config = write_egress_config(&env, &server)?;
    let kubectl = Kubectl::new(&env, &config, standin.port, &env.pki.kubelet_ca.cert)?;
    // Let the log grow past three lines.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut args = vec!["logs", "--tail", "3", POD, "-c", CONTAINER];
    if timestamps {
        args.push("--timestamps");
    }
    let out = kubectl.run(&args, None).await?;
    ensure!(
        out.status.success(),
        "logs failed ({}): {}",
        out.status,
        stderr_of(&out)
    );
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    ensure!(lines.len() == 3, "expected 3 lines, got {text:?}");
    let numbers = lines
        .iter()
        .map(|l| line_number(l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(
        numbers[0] >= 1 && numbers[1] == numbers[0] + 1 && numbers[2] == numbers[1] + 1,
        "not the three consecutive last lines: {text:?}"
    );
    for line in &lines {
        let stamped = line.len() > 31 && line.as_bytes()[4] == b'-' && line[..31].ends_with("Z ");
        ensure!(
            stamped == timestamps,
            "timestamp prefix {} expected on {line:?}",
            if timestamps { "" } else { "not" }
        );
    }
    // The CLI has exited: its tunnel must be gone on every hop, the agent's included.
    wait_endpoints_closed(&agents[0]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_tail_through_grpc_over_uds() {
    e2e(logs_tail_through(ServerOptions::grpc_uds(), false)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_tail_with_timestamps_through_http_connect_over_mtls_tcp() {
    e2e(logs_tail_through(ServerOptions::http_connect_tcp(), true)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_grows_and_sigint_closes_the_tunnel_on_every_hop() {
    e2e(async {
        let env = TestEnv::new()?;
        let (server, agents) = server_with_agents(&env, ServerOptions::grpc_uds(), 1).await?;
        let standin = Standin::start_default(&env).await?;
        let config = write_egress_config(&env, &server)?;
        let kubectl = Kubectl::new(&env, &config, standin.port, &env.pki.kubelet_ca.cert)?;
        let mut child = kubectl.spawn(&["logs", "-f", "--tail", "1", POD, "-c", CONTAINER])?;
        let stdout = child.stdout.take().context("kubectl stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = line_number(&next_line(&mut lines).await?)?;
        let mut last = first;
        for _ in 0..4 {
            let n = line_number(&next_line(&mut lines).await?)?;
            ensure!(n == last + 1, "line {n} followed line {last}");
            last = n;
        }
        let open = open_endpoints(&agents[0]).await?;
        ensure!(
            open == 1.0,
            "while following, the agent should hold exactly one destination connection, not {open}"
        );

        signal_child(&child, Signal::SIGINT)?;
        let status = tokio::time::timeout(INTERRUPT_EXIT_TIMEOUT, child.wait())
            .await
            .context("kubectl did not exit after SIGINT")??;
        ensure!(
            status.code() == Some(130),
            "exit status after SIGINT: {status}"
        );
        wait_endpoints_closed(&agents[0]).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stdin_round_trips_and_the_remote_exit_code_is_ours() {
    e2e(async {
        let env = TestEnv::new()?;
        let (server, agents) = server_with_agents(&env, ServerOptions::grpc_uds(), 1).await?;
        let standin = Standin::start_default(&env).await?;
        let config = write_egress_config(&env, &server)?;
        let kubectl = Kubectl::new(&env, &config, standin.port, &env.pki.kubelet_ca.cert)?;
        let input = b"hello through the tunnel\nsecond line\n";
        let out = kubectl
            .run(
                &[
                    "exec",
                    "-i",
                    POD,
                    "-c",
                    CONTAINER,
                    "--",
                    "sh",
                    "-c",
                    "cat; echo oops >&2; exit 7",
                ],
                Some(input),
            )
            .await?;
        ensure!(
            out.status.code() == Some(7),
            "exit status {} (stderr {})",
            out.status,
            stderr_of(&out)
        );
        ensure!(
            out.stdout == input,
            "stdout {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        ensure!(stderr_of(&out) == "oops\n", "stderr {:?}", stderr_of(&out));

        let ok = kubectl
            .run(
                &["exec", POD, "-c", CONTAINER, "--", "sh", "-c", "echo done"],
                None,
            )
            .await?;
        ensure!(
            ok.status.success(),
            "exit status {}: {}",
            ok.status,
            stderr_of(&ok)
        );
        ensure!(
            ok.stdout == b"done\n",
            "stdout {:?}",
            String::from_utf8_lossy(&ok.stdout)
        );
        wait_endpoints_closed(&agents[0]).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_local_echo_server_and_sigint_cleans_up() {
    e2e(async {
        let env = TestEnv::new()?;
        let (server, agents) = server_with_agents(&env, ServerOptions::grpc_uds(), 1).await?;
        let standin = Standin::start_default(&env).await?;
        let echo = EchoServer::start().await?;
        let config = write_egress_config(&env, &server)?;
        let kubectl = Kubectl::new(&env, &config, standin.port, &env.pki.kubelet_ca.cert)?;
        let local = free_port()?;
        let pair = format!("{local}:{}", echo.addr().port());
        let mut child = kubectl.spawn(&["port-forward", POD, &pair])?;
        let stdout = child.stdout.take().context("kubectl stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let banner = next_line(&mut lines).await?;
        ensure!(
            banner
                == format!(
                    "Forwarding from 127.0.0.1:{local} -> {}",
                    echo.addr().port()
                ),
            "banner {banner:?}"
        );

        for round in 0..2 {
            let mut conn = TcpStream::connect(("127.0.0.1", local)).await?;
            let message = format!("ping {round} through kubelet port-forward");
            conn.write_all(message.as_bytes()).await?;
            let mut echoed = vec![0u8; message.len()];
            tokio::time::timeout(LINE_TIMEOUT, conn.read_exact(&mut echoed))
                .await
                .context("no echo in time")??;
            ensure!(
                echoed == message.as_bytes(),
                "echo {:?}",
                String::from_utf8_lossy(&echoed)
            );
        }
        // A connection held open, then Ctrl-C: everything must be closed on every hop.
        let mut held = TcpStream::connect(("127.0.0.1", local)).await?;
        held.write_all(b"x").await?;
        let mut one = [0u8; 1];
        tokio::time::timeout(LINE_TIMEOUT, held.read_exact(&mut one))
            .await
            .context("no echo on the held connection")??;
        ensure!(
            open_endpoints(&agents[0]).await? >= 1.0,
            "the held connection has no tunnel"
        );

        signal_child(&child, Signal::SIGINT)?;
        let status = tokio::time::timeout(INTERRUPT_EXIT_TIMEOUT, child.wait())
            .await
            .context("kubectl did not exit after SIGINT")??;
        ensure!(
            status.code() == Some(130),
            "exit status after SIGINT: {status}"
        );
        wait_endpoints_closed(&agents[0]).await?;
        let n = tokio::time::timeout(LINE_TIMEOUT, held.read(&mut one))
            .await
            .context("the local connection stayed open after the CLI exited")?
            .unwrap_or(0);
        ensure!(n == 0, "the held local connection still delivered data");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_certificate_from_another_ca_is_refused_as_untrusted() {
    e2e(async {
        let env = TestEnv::new()?;
        let (server, agents) = server_with_agents(&env, ServerOptions::grpc_uds(), 1).await?;
        // What a TLS-terminating proxy would look like: a certificate from a CA we do not trust.
        let foreign = env.foreign_pki()?;
        let serving = foreign
            .kubelet_servers
            .first()
            .context("foreign PKI without kubelet certificate")?
            .value
            .clone();
        let standin = Standin::start(&env, &serving, &env.pki.kubelet_ca.cert).await?;
        let config = write_egress_config(&env, &server)?;
        let kubectl = Kubectl::new(&env, &config, standin.port, &env.pki.kubelet_ca.cert)?;
        let out = kubectl.run(&["logs", POD, "-c", CONTAINER], None).await?;
        let err = stderr_of(&out);
        ensure!(
            !out.status.success(),
            "a foreign kubelet certificate was accepted"
        );
        ensure!(
            out.stdout.is_empty(),
            "output from an untrusted kubelet: {:?}",
            out.stdout
        );
        ensure!(
            err.contains("kubelet certificate not trusted:")
                && err.contains("did not issue")
                && err.contains("is a proxy terminating TLS?"),
            "unclear message: {err}"
        );
        wait_endpoints_closed(&agents[0]).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_certificate_for_another_ip_is_refused_as_untrusted() {
    e2e(async {
        // The kubelet CA is ours, but the serving certificate names only 10.99.0.1 (a SAN,
        // never dialed), while the node is reached as 127.0.0.1.
        let env = TestEnv::with_options(&PkiOptions {
            kubelet_nodes: vec![KubeletNode {
                name: "other".into(),
                sans: vec!["10.99.0.1".into()],
            }],
            ..PkiOptions::default()
        })?;
        let (server, _agents) = server_with_agents(&env, ServerOptions::grpc_uds(), 1).await?;
        let serving = env
            .pki
            .kubelet_server("other")
            .context("no kubelet-other certificate")?
            .clone();
        let standin = Standin::start(&env, &serving, &env.pki.kubelet_ca.cert).await?;
        let config = write_egress_config(&env, &server)?;
        let kubectl = Kubectl::new(&env, &config, standin.port, &env.pki.kubelet_ca.cert)?;
        let out = kubectl.run(&["logs", POD, "-c", CONTAINER], None).await?;
        let err = stderr_of(&out);
        ensure!(
            !out.status.success(),
            "a certificate for another IP was accepted"
        );
        ensure!(
            err.contains("kubelet certificate not trusted:")
                && err.contains("not valid for 127.0.0.1")
                && err.contains("10.99.0.1"),
            "unclear message: {err}"
        );
        Ok(())
    })
    .await
}

/// `logs -f`, then the agent is SIGKILLed: the CLI must fail with a clear error, quickly.
async fn agent_killed_mid_follow(opts: ServerOptions) -> anyhow::Result<()> {
    let env = TestEnv::new()?;
    let (server, mut agents) = server_with_agents(&env, opts, 1).await?;
    let standin = Standin::start_default(&env).await?;
    let config = write_egress_config(&env, &server)?;
    let kubectl = Kubectl::new(&env, &config, standin.port, &env.pki.kubelet_ca.cert)?;
    let mut child = kubectl.spawn(&["logs", "-f", POD, "-c", CONTAINER])?;
    let stdout = child.stdout.take().context("kubectl stdout")?;
    let mut stderr = child.stderr.take().context("kubectl stderr")?;
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..3 {
        line_number(&next_line(&mut lines).await?)?;
    }

    agents[0].process.kill();
    let started = tokio::time::Instant::now();
    // Keep draining stdout so a full pipe can never be what blocks the CLI.
    let drain = async { while let Ok(Some(_)) = lines.next_line().await {} };
    let (status, ()) = tokio::time::timeout(AGENT_LOSS_EXIT_TIMEOUT, async {
        tokio::join!(child.wait(), drain)
    })
    .await
    .context("konnectivity-kubectl hung after the agent was killed")?;
    let status = status?;
    let mut err = String::new();
    stderr.read_to_string(&mut err).await?;
    ensure!(
        !status.success(),
        "exit status {status} after losing the agent"
    );
    ensure!(
        err.contains("stream from the kubelet at") && err.contains("broke"),
        "unclear message after {:?}: {err}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_follow_fails_fast_with_a_clear_error_over_grpc() {
    e2e(agent_killed_mid_follow(ServerOptions::grpc_uds())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_follow_fails_fast_with_a_clear_error_over_http_connect() {
    e2e(agent_killed_mid_follow(ServerOptions::http_connect_tcp())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_egress_configuration_gets_kube_apiservers_message() {
    e2e(async {
        let env = TestEnv::new()?;
        let config = env.file("grpc-over-tcp.yaml");
        std::fs::write(
            &config,
            "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      tcp:\n        url: https://127.0.0.1:8131\n",
        )?;
        let kubectl = Kubectl::new(&env, &config, 10250, &env.pki.kubelet_ca.cert)?;
        let out = kubectl.run(&["logs", POD, "-c", CONTAINER], None).await?;
        ensure!(!out.status.success(), "an invalid configuration was accepted");
        ensure!(
            stderr_of(&out).trim_end()
                == "error: failed to validate egress selector configuration: service.connection.uds: Required value: UDS must be set with GRPC",
            "stderr {:?}",
            stderr_of(&out)
        );
        Ok(())
    })
    .await
}
