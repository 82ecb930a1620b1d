//! The process limits that cap how many tunnels a node carries, with the real binaries: both
//! raise an inherited low soft open-file limit to the hard one at start (as Go's runtime does
//! for upstream); a frontend whose process is out of descriptors warns, pauses, and serves again
//! once some free; and the TCP listeners queue as many pending connections as the system allows
//! (as Go's do), so a burst of dials is not dropped and retried a second later.

use std::time::Duration;

use anyhow::{ensure, Context};
use konnectivity_e2e::wait::wait_until;
use konnectivity_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Soft limit the binaries inherit in the first test: far below the tunnels it then opens.
const LOW_SOFT_LIMIT: u64 = 64;
/// Tunnels held open at once through binaries started under [`LOW_SOFT_LIMIT`].
const TUNNELS_ABOVE_THE_LOW_LIMIT: usize = 200;
/// Soft and hard limit of the server in the second test: room for its listeners, agent
/// connection and a few frontend connections, not for [`HELD_CONNECTIONS`].
const EXHAUSTED_LIMIT: u64 = 48;
/// Idle frontend connections the second test holds to exhaust the server's descriptors.
const HELD_CONNECTIONS: usize = 80;
/// How long the second test keeps the server out of descriptors.
const EXHAUSTED_FOR: Duration = Duration::from_secs(1);
/// The warning the server logs when an accept fails for want of descriptors.
const OUT_OF_DESCRIPTORS: &str = "out of file descriptors";

/// `(soft, hard)` "Max open files" of a running process.
fn open_file_limit(pid: u32) -> anyhow::Result<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no 'Max open files' line")?;
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    let soft = numbers.next().context("no soft limit")?;
    let hard = numbers.next().context("no hard limit")?;
    Ok((soft, hard))
}

/// Writes `tag` through `tunnel` and expects it back from the echo server.
async fn echo<IO: AsyncReadExt + AsyncWriteExt + Unpin>(
    tunnel: &mut IO,
    tag: &[u8],
) -> anyhow::Result<()> {
    tunnel.write_all(tag).await?;
    let mut back = vec![0u8; tag.len()];
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_exact(&mut back))
        .await
        .context("echo timed out")??;
    ensure!(back == tag, "echoed {back:?} for {tag:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_raise_a_low_inherited_soft_limit_and_carry_more_tunnels_than_it() {
    e2e(async {
        let env = TestEnv::new()?;
        let low = Some(OpenFiles {
            soft: LOW_SOFT_LIMIT,
            hard: None,
        });
        let server = Server::start(
            &env,
            ServerOptions {
                open_files: low,
                ..ServerOptions::http_connect_uds()
            },
        )
        .await?;
        let agent = Agent::start(
            &env,
            AgentOptions {
                open_files: low,
                ..AgentOptions::for_server(&server)
            },
        )
        .await?;
        agent.wait_ready().await?;
        server.wait_ready().await?;
        for (name, pid) in [
            ("proxy-server", server.process.pid()),
            ("proxy-agent", agent.process.pid()),
        ] {
            let (soft, hard) = open_file_limit(pid)?;
            ensure!(
                soft == hard && hard > TUNNELS_ABOVE_THE_LOW_LIMIT as u64 + 100,
                "{name} runs with soft {soft} / hard {hard} open files; expected the soft \
                 limit raised from {LOW_SOFT_LIMIT} to the hard one"
            );
        }
        let echo_server = EchoServer::start().await?;
        let dialer = dialer_for(&env, &server)?;
        let mut tunnels = Vec::with_capacity(TUNNELS_ABOVE_THE_LOW_LIMIT);
        for i in 0..TUNNELS_ABOVE_THE_LOW_LIMIT {
            let tunnel = dialer
                .dial(&echo_server.addr().to_string())
                .await
                .with_context(|| format!("dial {i} of {TUNNELS_ABOVE_THE_LOW_LIMIT}"))?;
            tunnels.push(tunnel);
        }
        // All held at once: every one still carries its own bytes.
        for (i, tunnel) in tunnels.iter_mut().enumerate() {
            echo(tunnel, format!("tunnel {i:03}").as_bytes())
                .await
                .with_context(|| format!("tunnel {i}"))?;
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_frontend_out_of_descriptors_warns_pauses_and_serves_again() {
    e2e(async {
        let env = TestEnv::new()?;
        let exhausted = Some(OpenFiles {
            soft: EXHAUSTED_LIMIT,
            hard: Some(EXHAUSTED_LIMIT),
        });
        let mut server = Server::start(
            &env,
            ServerOptions {
                open_files: exhausted,
                ..ServerOptions::grpc_uds()
            },
        )
        .await?;
        let agent = Agent::start(&env, AgentOptions::for_server(&server)).await?;
        agent.wait_ready().await?;
        server.wait_ready().await?;
        let uds = server.uds_path().to_path_buf();
        let mut held = Vec::with_capacity(HELD_CONNECTIONS);
        for _ in 0..HELD_CONNECTIONS {
            // The kernel queues connections the server cannot accept; connect succeeds.
            held.push(UnixStream::connect(&uds).await?);
        }
        wait_until(
            "the out-of-descriptors warning",
            Duration::from_secs(10),
            || {
                let log = server.process.log();
                async move { log.contains(OUT_OF_DESCRIPTORS) }
            },
        )
        .await?;
        let before = server.process.log().matches(OUT_OF_DESCRIPTORS).count();
        tokio::time::sleep(EXHAUSTED_FOR).await;
        let during = server.process.log().matches(OUT_OF_DESCRIPTORS).count() - before;
        // One warning per failed accept, each followed by a pause: a loop retrying at once
        // would log (or spin) thousands of times in the same second.
        let most = (EXHAUSTED_FOR.as_millis() / 50) as usize + 5;
        ensure!(
            during <= most,
            "{during} accept warnings in {EXHAUSTED_FOR:?}: the accept loop does not pause"
        );
        drop(held);
        let echo_server = EchoServer::start().await?;
        let dialer = dialer_for(&env, &server)?;
        let mut served = false;
        // The queued connections are accepted and closed first; then dials get through.
        for _ in 0..50 {
            if let Ok(mut tunnel) = dialer.dial(&echo_server.addr().to_string()).await {
                echo(&mut tunnel, b"after exhaustion").await?;
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(served, "no dial succeeded after the descriptors were freed");
        ensure!(
            server.process.is_running(),
            "the server exited while out of descriptors"
        );
        Ok(())
    })
    .await;
}

/// The listen backlog (pending connections the kernel queues) of the TCP listener on `port`,
/// as `ss` reports it for a listening socket (its Send-Q column).
async fn listen_backlog(port: u16) -> anyhow::Result<u64> {
    let out = tokio::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .await
        .context("running ss (iproute2)")?;
    ensure!(out.status.success(), "ss failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .with_context(|| format!("no listener on port {port}: {text:?}"))?;
    // State, Recv-Q, Send-Q (the backlog), local address, peer address.
    let backlog = line
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("unexpected ss line {line:?}"))?;
    Ok(backlog.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listeners_queue_as_many_pending_connections_as_the_system_allows() {
    e2e(async {
        let env = TestEnv::new()?;
        let server = Server::start(&env, ServerOptions::http_connect_tcp()).await?;
        let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")?
            .trim()
            .parse()?;
        for (what, port) in [
            ("mTLS frontend", server.frontend_tcp().port()),
            ("agent listener", server.ports.agent),
        ] {
            let backlog = listen_backlog(port).await?;
            ensure!(
                backlog == somaxconn,
                "the {what} listens with a backlog of {backlog}, not net.core.somaxconn \
                 ({somaxconn}): a burst of dials beyond it has its SYNs dropped"
            );
        }
        Ok(())
    })
    .await;
}

/// Dials fired at once in the burst test: well above the agent's old bound of 1,024 pending
/// dials per server connection.
const BURST_DIALS: usize = 3_000;

/// Fires [`BURST_DIALS`] dials at once through a server started with `server` and one agent
/// started with `agent_args`, and expects every one to open and echo.
async fn burst_of_dials(server: ServerOptions, agent_args: &[&str]) -> anyhow::Result<()> {
    // Two descriptors per tunnel in this process (client end, echoed end).
    konnectivity_runtime::open_files::raise_to_hard_limit()?;
    let env = TestEnv::new()?;
    let server = Server::start(&env, server).await?;
    let mut opts = AgentOptions::for_server(&server);
    opts.extra_args
        .extend(agent_args.iter().map(|a| a.to_string()));
    let agent = Agent::start(&env, opts).await?;
    agent.wait_ready().await?;
    server.wait_ready().await?;
    let dialer = dialer_for(&env, &server)?;
    let echo_server = EchoServer::start().await?;
    let address = echo_server.addr().to_string();
    let mut dials = tokio::task::JoinSet::new();
    for i in 0..BURST_DIALS {
        let dialer = dialer.clone();
        let address = address.clone();
        dials.spawn(async move {
            let mut tunnel = dialer.dial(&address).await.map_err(|e| format!("{e}"))?;
            echo(&mut tunnel, format!("burst {i:04}").as_bytes())
                .await
                .map_err(|e| format!("{e:#}"))?;
            Ok::<_, String>(tunnel)
        });
    }
    let mut open = Vec::with_capacity(BURST_DIALS);
    let mut failures = Vec::new();
    while let Some(done) = dials.join_next().await {
        match done? {
            Ok(tunnel) => open.push(tunnel),
            Err(e) => failures.push(e),
        }
    }
    failures.sort();
    failures.dedup();
    ensure!(
        open.len() == BURST_DIALS,
        "{} of {BURST_DIALS} simultaneous dials failed; distinct errors: {failures:?}",
        BURST_DIALS - open.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_simultaneous_dials_all_open_through_a_grpc_agent() {
    e2e(burst_of_dials(ServerOptions::http_connect_uds(), &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_simultaneous_dials_all_open_through_a_quic_agent() {
    e2e(burst_of_dials(
        ServerOptions::http_connect_uds(),
        &["--transport=quic"],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_simultaneous_mtls_dials_all_open() {
    // Every dial is its own TLS connection to the frontend: the accept queue and the handshake
    // tasks take the burst, not only the agent.
    e2e(burst_of_dials(ServerOptions::http_connect_tcp(), &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_simultaneous_grpc_frontend_dials_all_open() {
    // Each dial is its own gRPC connection on the Unix socket, as kube-apiserver makes them.
    e2e(burst_of_dials(ServerOptions::grpc_uds(), &[])).await;
}
