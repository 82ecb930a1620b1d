//! The QUIC transport between the real binaries: `proxy-agent --transport=quic` against a
//! `proxy-server` (QUIC on by default, UDP on the agent port), through both frontends, with the
//! kubelet's TLS verified end to end; and `--enable-quic=false`.

use std::time::Duration;

use anyhow::{ensure, Context};
use konnectivity_e2e::cluster::{KUBELET_SERVER_NAME, TEST_DIAL_TIMEOUT};
use konnectivity_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server whose one agent connects over QUIC, plus a kubelet and a client dialer.
struct QuicCluster {
    dialer: konnectivity_client::Dialer,
    kubelet_client: KubeletClient,
    kubelet: Kubelet,
    agent: Agent,
    /// Kept alive for the test's duration (dropped after the agent, before the directory).
    _server: Server,
    _env: TestEnv,
}

fn quic_agent(server: &Server) -> AgentOptions {
    let mut opts = AgentOptions::for_server(server);
    opts.extra_args.push("--transport=quic".to_string());
    opts
}

impl QuicCluster {
    async fn start(opts: ServerOptions) -> anyhow::Result<QuicCluster> {
        let env = TestEnv::new()?;
        let server = Server::start(&env, opts).await?;
        let agent = Agent::start(&env, quic_agent(&server)).await?;
        agent.wait_ready().await?;
        server.wait_ready().await?;
        let kubelet = Kubelet::start_default(&env.pki).await?;
        let dialer = dialer_for(&env, &server)?.with_dial_timeout(TEST_DIAL_TIMEOUT);
        let kubelet_client = KubeletClient::from_pki(&env.pki)?;
        Ok(QuicCluster {
            dialer,
            kubelet_client,
            kubelet,
            agent,
            _server: server,
            _env: env,
        })
    }

    async fn kubelet_healthz(&self) -> anyhow::Result<()> {
        let tunnel = self
            .dialer
            .dial(&self.kubelet.address())
            .await
            .context("dial the kubelet through the proxy")?;
        let mut conn = self
            .kubelet_client
            .connect(tunnel, KUBELET_SERVER_NAME)
            .await?;
        let r = conn.get("/healthz").await?;
        ensure!(r.status == 200 && r.text() == "ok", "{r:?}");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_through_http_connect_over_mtls_tcp_with_a_quic_agent() {
    e2e(async {
        let c = QuicCluster::start(ServerOptions::http_connect_tcp()).await?;
        for _ in 0..3 {
            c.kubelet_healthz().await?;
        }
        ensure!(c.kubelet.requests_served() >= 3);
        let log = c.agent.process.log();
        ensure!(
            !log.contains("will retry"),
            "the QUIC agent connected at once; log:\n{log}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_through_the_grpc_frontend_with_a_quic_agent() {
    e2e(async {
        let c = QuicCluster::start(ServerOptions::grpc_uds()).await?;
        c.kubelet_healthz().await?;
        c.kubelet_healthz().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_dial_errors_reach_the_client_in_go_wording() {
    e2e(async {
        let c = QuicCluster::start(ServerOptions::http_connect_tcp()).await?;
        let port = konnectivity_e2e::ports::closed_port()?;
        let err = match c.dialer.dial(&format!("127.0.0.1:{port}")).await {
            Ok(_) => anyhow::bail!("dial to a closed port succeeded"),
            Err(e) => e.to_string(),
        };
        ensure!(
            err.contains(&format!(
                "dial tcp 127.0.0.1:{port}: connect: connection refused"
            )),
            "{err}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_bytes_round_trip_through_a_quic_agent() {
    e2e(async {
        let c = QuicCluster::start(ServerOptions::http_connect_uds()).await?;
        let echo = EchoServer::start().await?;
        let tunnel = c.dialer.dial(&echo.addr().to_string()).await?;
        let (mut r, mut w) = tokio::io::split(tunnel);
        const LEN: usize = 4 * 1024 * 1024;
        let payload: Vec<u8> = (0..LEN).map(|i| (i % 253) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await?;
            w.flush().await?;
            anyhow::Ok(w)
        });
        let mut back = vec![0u8; LEN];
        tokio::time::timeout(Duration::from_secs(60), r.read_exact(&mut back))
            .await
            .context("echo in time")??;
        let _w = writer.await??;
        ensure!(back == payload, "bytes differ");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_quic_never_gets_a_quic_agent() {
    e2e(async {
        let env = TestEnv::new()?;
        let mut opts = ServerOptions::grpc_uds();
        opts.extra_args.push("--enable-quic=false".to_string());
        let server = Server::start(&env, opts).await?;
        let agent = Agent::start(&env, quic_agent(&server)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = agent.readyz().await?;
        ensure!(r.status == 503, "agent /readyz {} {:?}", r.status, r.text());
        let r = server.readyz().await?;
        ensure!(
            r.status == 500,
            "server /readyz {} {:?}",
            r.status,
            r.text()
        );
        // The gRPC listener on the same port is unaffected.
        let grpc = Agent::start(&env, AgentOptions::for_server(&server)).await?;
        grpc.wait_ready().await?;
        server.wait_ready().await?;
        Ok(())
    })
    .await
}
