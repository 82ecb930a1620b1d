//! proxy-agent behaviour with the real binaries: readiness, reconnection after a server
//! restart, the two-signal drain/exit, and its metrics as upstream's harness reads them.

use std::time::Duration;

use anyhow::{ensure, Context};
use konnectivity_e2e::metrics;
use konnectivity_e2e::ports::closed_port;
use konnectivity_e2e::wait::{wait_until, CONNECT_TIMEOUT};
use konnectivity_e2e::*;

const OPEN_SERVER: &str = "konnectivity_network_proxy_agent_open_server_connections";
const OPEN_ENDPOINT: &str = "konnectivity_network_proxy_agent_open_endpoint_connections";
const DIAL_FAILURE: &str = "konnectivity_network_proxy_agent_endpoint_dial_failure_total";

async fn healthz_via_tunnel(c: &Cluster) -> anyhow::Result<()> {
    let r = c.kubelet_conn().await?.get("/healthz").await?;
    ensure!(r.status == 200 && r.body == "ok", "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_readyz_is_503_while_no_server_is_reachable() {
    e2e(async {
        let env = TestEnv::new()?;
        let agent = Agent::start(&env, AgentOptions::for_port(closed_port()?)).await?;
        let health = http::get(agent.health_addr(), "/healthz").await?;
        ensure!(
            health.status == 200 && health.text() == "ok",
            "healthz {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = agent.readyz().await?;
        ensure!(r.status == 503, "/readyz {} {:?}", r.status, r.text());
        ensure!(
            r.text().contains("no servers connected"),
            "/readyz body {:?}",
            r.text()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_readyz_is_500_until_an_agent_connects_then_200() {
    e2e(async {
        let env = TestEnv::new()?;
        let server = Server::start(&env, ServerOptions::grpc_uds()).await?;
        let r = server.readyz().await?;
        ensure!(
            r.status == 500,
            "/readyz without agents: {} {:?}",
            r.status,
            r.text()
        );
        eprintln!("server /readyz without agents: 500 {:?}", r.text());
        let health = http::get(server.health_addr(), "/healthz").await?;
        ensure!(
            health.status == 200 && health.text() == "ok",
            "healthz {health:?}"
        );

        let agent = Agent::start(&env, AgentOptions::for_server(&server)).await?;
        agent.wait_ready().await?;
        server.wait_ready().await?;
        let r = server.readyz().await?;
        ensure!(r.status == 200 && r.text() == "ok", "{r:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_the_server_restarts_on_the_same_port() {
    e2e(async {
        let mut c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
        healthz_via_tunnel(&c).await?;

        let ports = c.server.ports;
        let uds = c.server.uds_path().to_path_buf();
        c.server.process.kill();
        let agent_health = c.agents[0].health_addr();
        wait_until(
            "agent /readyz 503 after the server died",
            CONNECT_TIMEOUT,
            || async move {
                http::get(agent_health, "/readyz")
                    .await
                    .is_ok_and(|r| r.status == 503)
            },
        )
        .await?;

        let opts = ServerOptions {
            ports: Some(ports),
            uds_path: Some(uds),
            ..ServerOptions::grpc_uds()
        };
        c.server = Server::start(&c.env, opts).await?;
        c.agents[0].wait_ready().await?;
        c.server.wait_ready().await?;
        healthz_via_tunnel(&c).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sigterm_drains_but_keeps_serving_second_sigterm_exits() {
    e2e(async {
        let mut c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
        healthz_via_tunnel(&c).await?;

        // A request in flight across the first signal completes.
        let mut in_flight = c.kubelet_conn().await?;
        let slow = tokio::spawn(async move { in_flight.get("/sleep?ms=1500").await });
        tokio::time::sleep(Duration::from_millis(200)).await;

        c.agents[0].process.terminate()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        ensure!(
            c.agents[0].process.is_running(),
            "agent exited on the first SIGTERM"
        );
        let r = c.agents[0].readyz().await?;
        ensure!(
            r.status == 200,
            "/readyz after the first SIGTERM: {} {:?}",
            r.status,
            r.text()
        );
        // Still the only agent, draining: new requests are still served through it.
        healthz_via_tunnel(&c).await?;
        healthz_via_tunnel(&c).await?;
        let r = slow.await??;
        ensure!(
            r.status == 200 && r.body == "ok",
            "in-flight request across SIGTERM: {r:?}"
        );

        c.agents[0].process.terminate()?;
        let status = c.agents[0]
            .process
            .wait_exit(Duration::from_secs(10))
            .await
            .context("agent did not exit on the second SIGTERM")?;
        eprintln!("agent exited on the second SIGTERM with {status}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_metrics_match_upstream_names_help_and_values() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
        let agent = &c.agents[0];

        let m = agent.metrics().await?;
        ensure!(
            metrics::value(&m, OPEN_SERVER, &[]) == Some(1.0),
            "{OPEN_SERVER}: {m}"
        );

        // One open tunnel = one open endpoint connection.
        let mut conn = c.kubelet_conn().await?;
        ensure!(conn.get("/healthz").await?.body == "ok");
        let m = agent.metrics().await?;
        ensure!(
            metrics::value(&m, OPEN_ENDPOINT, &[]) == Some(1.0),
            "with one tunnel: {m}"
        );

        // A refused dial counts as reason "unknown".
        let err = c
            .dialer
            .dial(&format!("127.0.0.1:{}", closed_port()?))
            .await;
        ensure!(err.is_err(), "dial to a closed port succeeded");
        let m = agent.metrics().await?;
        ensure!(
            metrics::value(&m, DIAL_FAILURE, &[("reason", "unknown")]) == Some(1.0),
            "after one refused dial: {m}"
        );

        // Upstream's HELP texts (its harness compares them); the endpoint metrics exist only
        // after first use, as upstream's label-less vectors.
        for (name, help) in [
            (OPEN_SERVER, "Current number of open server connections."),
            (
                OPEN_ENDPOINT,
                "Current number of open endpoint connections.",
            ),
            (
                DIAL_FAILURE,
                "Number of failures dialing the remote endpoint, by reason (example: timeout).",
            ),
        ] {
            ensure!(
                metrics::help(&m, name) == Some(help),
                "HELP of {name}: {:?}",
                metrics::help(&m, name)
            );
        }

        // Closing the tunnel closes the endpoint connection.
        drop(conn);
        let health = agent.health_addr();
        wait_until(
            "open_endpoint_connections back to 0",
            CONNECT_TIMEOUT,
            || async move {
                match http::get(health, "/metrics").await {
                    Ok(r) => metrics::value(&r.text(), OPEN_ENDPOINT, &[]) == Some(0.0),
                    Err(_) => false,
                }
            },
        )
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_admin_metrics_redirects_to_the_health_port() {
    e2e(async {
        let env = TestEnv::new()?;
        let agent = Agent::start(&env, AgentOptions::for_port(closed_port()?)).await?;
        let r = http::get(agent.admin_addr(), "/metrics").await?;
        ensure!(r.status == 301, "admin /metrics answered {}", r.status);
        let location = r
            .headers
            .get(::http::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default();
        ensure!(
            location.ends_with(&format!(":{}/metrics", agent.health_port)),
            "Location {location:?}"
        );
        Ok(())
    })
    .await
}
