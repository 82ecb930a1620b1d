//! gRPC frontend (kube-apiserver's `proxyProtocol: GRPC` over a Unix socket) with the real
//! binaries: end-to-end HTTPS to a kubelet stand-in, dial errors, malformed frontend input,
//! isolation of a slow tunnel, and concurrency across two agents.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use http_body_util::BodyExt;
use konnectivity_e2e::grpc_raw::frame;
use konnectivity_e2e::kubelet::{pattern, pattern_byte, pattern_mismatch};
use konnectivity_e2e::ports::closed_port;
use konnectivity_e2e::*;
use konnectivity_proto::{Packet, PacketType, Payload, PROXY_PATH};
use tokio::net::UnixStream;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_uds_tunnel_serves_kubelet_https_with_end_to_end_tls() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;

        let mut conn = c.kubelet_conn().await?;
        let health = conn.get("/healthz").await?;
        ensure!(
            health.status == 200 && health.body == "ok",
            "healthz: {health:?}"
        );

        // 1 MiB echoed on the same (keep-alive) tunnel.
        let body = Bytes::from(pattern(7, MIB));
        let echo = conn.post("/echo", body.clone()).await?;
        ensure!(echo.status == 200, "echo status {}", echo.status);
        ensure!(
            echo.body.len() == MIB,
            "echo returned {} bytes",
            echo.body.len()
        );
        ensure!(echo.body == body, "echo body differs from what was sent");

        // 20 MiB download on a new tunnel, content checked byte by byte.
        let started = Instant::now();
        let mut big = c.kubelet_conn().await?;
        let resp = big.get("/bytes?n=20971520").await?;
        ensure!(resp.status == 200, "bytes status {}", resp.status);
        ensure!(
            resp.body.len() == 20 * MIB,
            "got {} of {} bytes",
            resp.body.len(),
            20 * MIB
        );
        if let Some(at) = pattern_mismatch(&resp.body) {
            bail!("20 MiB body corrupted at byte {at}");
        }
        eprintln!("20 MiB through the gRPC tunnel in {:?}", started.elapsed());
        ensure!(
            c.kubelet.requests_served() == 3,
            "kubelet served {}",
            c.kubelet.requests_served()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_dial_to_closed_port_fails_with_connection_refused() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
        let port = closed_port()?;
        let err = c
            .dialer
            .dial(&format!("127.0.0.1:{port}"))
            .await
            .err()
            .context("dial to a closed port succeeded")?;
        let text = err.to_string();
        ensure!(
            text.contains("connection refused"),
            "unexpected error: {text}"
        );
        // The same server and agent still serve a normal request.
        let ok = c.kubelet_conn().await?.get("/healthz").await?;
        ensure!(ok.body == "ok", "{ok:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_dial_without_agent_fails_with_no_agent_available() {
    e2e(async {
        let env = TestEnv::new()?;
        let server = Server::start(&env, ServerOptions::grpc_uds()).await?;
        let dialer = dialer_for(&env, &server)?.with_dial_timeout(Duration::from_secs(10));
        let err = dialer
            .dial("127.0.0.1:10250")
            .await
            .err()
            .context("dial without any agent succeeded")?;
        ensure!(
            err.to_string().contains("No agent available"),
            "unexpected error: {err}"
        );
        Ok(())
    })
    .await
}

/// The server's first SETTINGS frame on a fresh HTTP/2 connection, as (identifier, value)
/// pairs, read byte by byte after sending the client preface.
async fn server_settings(mut io: UnixStream) -> anyhow::Result<Vec<(u16, u32)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
    io.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
    let mut header = [0u8; 9];
    io.read_exact(&mut header).await?;
    ensure!(
        header[3] == 4,
        "first frame from the server is type {}, not SETTINGS",
        header[3]
    );
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await?;
    Ok(payload
        .chunks_exact(6)
        .map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_frontend_lets_clients_send_a_packet_in_one_large_frame() {
    e2e(async {
        let env = TestEnv::new()?;
        let server = Server::start(&env, ServerOptions::grpc_uds()).await?;
        let settings = server_settings(UnixStream::connect(server.uds_path()).await?).await?;
        // SETTINGS_MAX_FRAME_SIZE (0x5): as large as the agent listener's, so a client that
        // honours it sends each DATA packet in one frame and its payload is not copied.
        let max_frame = settings.iter().find(|(id, _)| *id == 0x5).map(|(_, v)| *v);
        ensure!(
            max_frame == Some(konnectivity_tunnel::H2_MAX_FRAME_BYTES),
            "SETTINGS_MAX_FRAME_SIZE {max_frame:?} in {settings:?}"
        );
        Ok(())
    })
    .await
}

/// Bytes that are no valid `Packet`: a varint that never terminates.
const GARBAGE: [u8; 12] = [0xff; 12];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_on_a_frontend_stream_closes_only_that_stream() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
        // An established tunnel, used before and after the bad stream.
        let mut established = c.kubelet_conn().await?;
        ensure!(established.get("/healthz").await?.body == "ok");

        let uds = UnixStream::connect(c.server.uds_path()).await?;
        let mut raw = RawGrpc::over(uds).await?;
        let mut bad = raw.open(PROXY_PATH, &[]).await?;
        bad.send_raw(frame(&GARBAGE))?;
        match bad.next().await? {
            // Any status ends the stream; upstream's handlers return nil (OK) after a
            // receive error, so OK is as acceptable as an error code.
            Event::Status { code, message } => {
                eprintln!("server ended the garbage stream with grpc-status {code:?}: {message}")
            }
            Event::Reset(why) => eprintln!("server reset the garbage stream: {why}"),
            Event::Packet(p) => bail!("server answered garbage with a packet: {p:?}"),
        }

        ensure!(
            established.get("/healthz").await?.body == "ok",
            "established tunnel broken"
        );
        ensure!(
            c.kubelet_conn().await?.get("/healthz").await?.body == "ok",
            "new tunnel failed"
        );
        Ok(())
    })
    .await
}

fn close_rsp(p: &Packet) -> Option<(i64, String)> {
    match (&p.payload, p.kind()) {
        (Some(Payload::CloseResponse(r)), Some(PacketType::CloseRsp)) => {
            Some((r.connect_id, r.error.clone()))
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_close_for_unknown_connect_ids_get_close_rsp() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
        let uds = UnixStream::connect(c.server.uds_path()).await?;
        let mut raw = RawGrpc::over(uds).await?;

        let mut s1 = raw.open(PROXY_PATH, &[]).await?;
        s1.send_packet(&Packet::data(4242, b"hello".to_vec()))?;
        let p = s1.next_packet().await?;
        let (id, error) =
            close_rsp(&p).with_context(|| format!("DATA for unknown id answered with {p:?}"))?;
        ensure!(id == 4242, "CLOSE_RSP for id {id}");
        ensure!(!error.is_empty(), "CLOSE_RSP without error text");
        eprintln!("DATA(4242) without dial -> CLOSE_RSP error {error:?}");

        let mut s2 = raw.open(PROXY_PATH, &[]).await?;
        s2.send_packet(&Packet::close_request(4243))?;
        let p = s2.next_packet().await?;
        let (id, error) = close_rsp(&p)
            .with_context(|| format!("CLOSE_REQ for unknown id answered with {p:?}"))?;
        ensure!(id == 4243, "CLOSE_RSP for id {id}");
        eprintln!("CLOSE_REQ(4243) without dial -> CLOSE_RSP error {error:?}");

        ensure!(c.kubelet_conn().await?.get("/healthz").await?.body == "ok");
        Ok(())
    })
    .await
}

/// Size requested by the tunnel that never reads: far more than every buffer on the path
/// (agent and server queues, HTTP/2 windows, socket buffers), streamed lazily by the kubelet.
const STALLED_DOWNLOAD: usize = 512 * MIB;
/// Round trips tunnel B must complete while A is stalled.
const ROUND_TRIPS: usize = 20;
/// Slowest acceptable round trip for B while A is stalled.
const MAX_ROUND_TRIP: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_that_stops_reading_does_not_stall_other_tunnels_of_the_agent() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;

        // Tunnel A: start a huge download, take the response head, then stop reading.
        let mut a = c.kubelet_conn().await?;
        let resp_a = a
            .send("GET", &format!("/bytes?n={STALLED_DOWNLOAD}"), Bytes::new())
            .await?;
        ensure!(resp_a.status() == 200);
        // Let every buffer between the kubelet and A fill up.
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Tunnel B (same agent, the only one): request/response round trips keep working.
        let mut b = c.kubelet_conn().await?;
        let mut slowest = Duration::ZERO;
        for i in 0..ROUND_TRIPS {
            let body = Bytes::from(format!("round trip {i} ").repeat(2000));
            let t = Instant::now();
            let r = tokio::time::timeout(MAX_ROUND_TRIP * 3, b.post("/echo", body.clone()))
                .await
                .with_context(|| {
                    format!("round trip {i} stalled behind the non-reading tunnel")
                })??;
            slowest = slowest.max(t.elapsed());
            ensure!(r.body == body, "round trip {i} returned a different body");
        }
        ensure!(slowest <= MAX_ROUND_TRIP, "slowest round trip {slowest:?}");
        // New tunnels are not stalled either.
        let t = Instant::now();
        ensure!(c.kubelet_conn().await?.get("/healthz").await?.body == "ok");
        eprintln!(
            "B: {ROUND_TRIPS} round trips, slowest {slowest:?}; new tunnel + GET in {:?}",
            t.elapsed()
        );

        // Observe A: either the proxy tore it down, or (back-pressure instead of teardown) it
        // still delivers the exact byte sequence from where it stopped.
        let mut body = resp_a.into_body();
        let mut offset = 0usize;
        let outcome = loop {
            if offset >= 4 * MIB {
                break format!(
                    "A still open after the stall; {offset} bytes read intact after resuming"
                );
            }
            match tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
                Err(_) => bail!("A neither delivers data nor is closed after resuming"),
                Ok(None) => break format!("A ended (EOF) after {offset} bytes"),
                Ok(Some(Err(e))) => {
                    break format!("A closed with an error after {offset} bytes: {e}")
                }
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        for (i, byte) in data.iter().enumerate() {
                            ensure!(
                                *byte == pattern_byte((offset + i) as u64),
                                "A corrupted at byte {}",
                                offset + i
                            );
                        }
                        offset += data.len();
                    }
                }
            }
        };
        eprintln!("observed for the stalled tunnel A: {outcome}");
        Ok(())
    })
    .await
}

/// Concurrent requests, as upstream's concurrent_client_request_test.
const CONCURRENT: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_echo_requests_through_two_agents_each_get_their_own_body() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 2).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CONCURRENT {
            let (dialer, client, address) = (
                c.dialer.clone(),
                c.kubelet_client.clone(),
                c.kubelet.address(),
            );
            tasks.spawn(async move {
                let body = Bytes::from(format!("request {i:03} ").repeat(100 + i));
                let tunnel = dialer
                    .dial(&address)
                    .await
                    .map_err(|e| anyhow::anyhow!("request {i}: dial: {e}"))?;
                let mut conn = client.connect(tunnel, cluster::KUBELET_SERVER_NAME).await?;
                let r = conn.post("/echo", body.clone()).await?;
                ensure!(
                    r.status == 200 && r.body == body,
                    "request {i} got someone else's body or {}",
                    r.status
                );
                anyhow::Ok(())
            });
        }
        let mut done = 0;
        while let Some(r) = tokio::time::timeout(Duration::from_secs(60), tasks.join_next())
            .await
            .context("concurrent requests did not finish within 60 s")?
        {
            r??;
            done += 1;
        }
        ensure!(done == CONCURRENT);
        // Both agents carried traffic (random agent choice: all 100 on one has probability 2^-99).
        for agent in &c.agents {
            let m = agent.metrics().await?;
            let dials = metrics::value(
                &m,
                "konnectivity_network_proxy_agent_dial_duration_seconds_count",
                &[],
            )
            .with_context(|| {
                format!(
                    "agent {} exposes no dial_duration_seconds histogram",
                    agent.agent_id
                )
            })?;
            ensure!(dials > 0.0, "agent {} carried no dial", agent.agent_id);
        }
        Ok(())
    })
    .await
}
