//! Bad input on the server's agent listener: each case in its own test, and after each the
//! server still serves a normal request through a legitimate agent.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use konnectivity_e2e::grpc_raw::frame;
use konnectivity_e2e::tls::{self, ALPN_H2};
use konnectivity_e2e::*;
use konnectivity_proto::CONNECT_PATH;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a refused agent is watched to make sure it never becomes ready.
const REFUSED_WATCH: Duration = Duration::from_secs(2);

/// A normal request through the cluster must still work.
async fn still_serves(c: &Cluster) -> anyhow::Result<()> {
    let r = c.kubelet_conn().await?.get("/healthz").await?;
    ensure!(r.status == 200 && r.body == "ok", "{r:?}");
    Ok(())
}

fn agent_tls(
    env: &TestEnv,
    alpn: &[&[u8]],
) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let pki = &env.pki;
    let client = &pki.agent_clients[0].value;
    Ok(tls::client_config(
        &pki.agent_ca.cert,
        Some((&client.cert, &client.key)),
        alpn,
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_a_certificate_from_another_ca_is_refused() {
    e2e(async {
        let env = TestEnv::new()?;
        let server = Server::start(&env, ServerOptions::grpc_uds()).await?;
        let foreign = env.foreign_pki()?;
        let foreign_client = &foreign.agent_clients[0].value;
        let mut opts = AgentOptions::for_server(&server);
        opts.client_cert = Some((foreign_client.cert.clone(), foreign_client.key.clone()));
        let rogue = Agent::start(&env, opts).await?;

        tokio::time::sleep(REFUSED_WATCH).await;
        let r = rogue.readyz().await?;
        ensure!(
            r.status == 503,
            "agent with a foreign certificate reports /readyz {}",
            r.status
        );
        let r = server.readyz().await?;
        ensure!(
            r.status == 500,
            "server accepted the foreign agent: /readyz {}",
            r.status
        );

        // A legitimate agent still gets in and serves.
        let good = Agent::start(&env, AgentOptions::for_server(&server)).await?;
        good.wait_ready().await?;
        server.wait_ready().await?;
        let kubelet = Kubelet::start_default(&env.pki).await?;
        let dialer = dialer_for(&env, &server)?;
        let tunnel = dialer.dial(&kubelet.address()).await?;
        let r = KubeletClient::from_pki(&env.pki)?
            .connect(tunnel, cluster::KUBELET_SERVER_NAME)
            .await?
            .get("/healthz")
            .await?;
        ensure!(r.body == "ok", "{r:?}");
        ensure!(
            rogue.readyz().await?.status == 503,
            "foreign agent became ready later"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_stream_without_agentid_gets_a_clear_grpc_error() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
        let io = tls::connect(
            c.server.agent_addr(),
            "127.0.0.1",
            agent_tls(&c.env, &[ALPN_H2])?,
        )
        .await?;
        let mut raw = RawGrpc::over(io).await?;
        let mut stream = raw.open(CONNECT_PATH, &[("agentidentifiers", "")]).await?;
        let event = match stream.headers().await? {
            Err(event) => event,
            // Headers first (not upstream's behaviour, but legal): the status must follow.
            Ok(headers) => {
                eprintln!("server sent headers {headers:?} to an agent without id");
                stream.next().await?
            }
        };
        match event {
            Event::Status { code, message } => {
                ensure!(code.is_some_and(|c| c != 0), "status {code:?} {message:?}");
                ensure!(
                    message.to_lowercase().contains("agent"),
                    "unclear message {message:?}"
                );
                eprintln!("no agentid -> grpc-status {code:?}: {message}");
            }
            other => bail!("expected a gRPC error status, got {other:?}"),
        }
        still_serves(&c).await
    })
    .await
}

/// Bytes that are no valid `Packet`: a varint that never terminates.
const GARBAGE: [u8; 12] = [0xff; 12];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_on_an_agent_stream_closes_only_that_stream() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
        let mut established = c.kubelet_conn().await?;
        ensure!(established.get("/healthz").await?.body == "ok");

        let io = tls::connect(
            c.server.agent_addr(),
            "127.0.0.1",
            agent_tls(&c.env, &[ALPN_H2])?,
        )
        .await?;
        let mut raw = RawGrpc::over(io).await?;
        let mut stream = raw
            .open(
                CONNECT_PATH,
                &[("agentid", "rogue-agent"), ("agentidentifiers", "")],
            )
            .await?;
        let headers = match stream.headers().await? {
            Ok(h) => h,
            Err(event) => bail!("server refused a well-formed agent stream: {event:?}"),
        };
        ensure!(
            headers.get("serverid").is_some() && headers.get("servercount").is_some(),
            "agent stream headers lack serverid/servercount: {headers:?}"
        );
        stream.send_raw(frame(&GARBAGE))?;
        match stream.next().await? {
            // Any status ends the stream; upstream's handlers return nil (OK) after a
            // receive error, so OK is as acceptable as an error code.
            Event::Status { code, message } => {
                eprintln!("garbage on agent stream -> grpc-status {code:?}: {message}")
            }
            Event::Reset(why) => eprintln!("garbage on agent stream -> reset: {why}"),
            Event::Packet(p) => bail!("server answered garbage with a packet {p:?}"),
        }

        ensure!(
            established.get("/healthz").await?.body == "ok",
            "established tunnel broken"
        );
        // The rogue stream is gone: every new dial lands on the real agent.
        for _ in 0..5 {
            still_serves(&c).await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_alpn_h2_is_refused_on_the_agent_port() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
        match tls::connect(c.server.agent_addr(), "127.0.0.1", agent_tls(&c.env, &[])?).await {
            Err(e) => eprintln!("handshake without ALPN refused: {e}"),
            Ok(mut io) => {
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await {
                    Err(_) => bail!("server kept a connection without ALPN h2 open"),
                    Ok(Ok(0)) => eprintln!("connection without ALPN closed after the handshake"),
                    Ok(Err(e)) => eprintln!("connection without ALPN failed: {e}"),
                    Ok(Ok(n)) => bail!("server sent {n} bytes to a client without ALPN h2"),
                }
            }
        }
        still_serves(&c).await
    })
    .await
}

/// Connections that connect and never send a ClientHello.
const IDLE_CONNECTIONS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_that_never_handshake_do_not_block_agents() {
    e2e(async {
        let env = TestEnv::new()?;
        let server = Server::start(&env, ServerOptions::grpc_uds()).await?;
        let mut idle = Vec::new();
        for _ in 0..IDLE_CONNECTIONS {
            idle.push(TcpStream::connect(server.agent_addr()).await?);
        }
        // A normal TLS + HTTP/2 client handshakes promptly despite them.
        let io = tokio::time::timeout(
            Duration::from_secs(5),
            tls::connect(
                server.agent_addr(),
                "127.0.0.1",
                agent_tls(&env, &[ALPN_H2])?,
            ),
        )
        .await
        .context("TLS handshake blocked behind idle connections")??;
        drop(io);
        // And a real agent connects.
        let agent = Agent::start(&env, AgentOptions::for_server(&server)).await?;
        agent.wait_ready().await?;
        server.wait_ready().await?;
        drop(idle);
        Ok(())
    })
    .await
}
