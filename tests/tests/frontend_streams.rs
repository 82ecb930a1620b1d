//! The gRPC frontend at the stream level, with raw HTTP/2 clients against the real binaries:
//! many `Proxy` streams multiplexed on one connection (the reusable-tunnel client does that),
//! and an oversized message that must close only its own stream.

use anyhow::{bail, ensure};
use konnectivity_e2e::grpc_raw::frame;
use konnectivity_e2e::*;
use konnectivity_proto::{Packet, PacketType, Payload, PROXY_PATH};
use prost::Message;
use tokio::net::UnixStream;

/// Streams opened at once on one HTTP/2 connection.
const STREAMS: usize = 50;

/// Dials `address` on `stream`, returning the connectID.
async fn dial(stream: &mut RawStream, address: &str, random: i64) -> anyhow::Result<i64> {
    stream.send_packet(&Packet::dial_request("tcp", address, random))?;
    let rsp = stream.next_packet().await?;
    match (rsp.kind(), rsp.payload) {
        (Some(PacketType::DialRsp), Some(Payload::DialResponse(r))) => {
            ensure!(
                r.random == random,
                "DIAL_RSP for random {} not {random}",
                r.random
            );
            ensure!(r.error.is_empty(), "dial failed: {}", r.error);
            Ok(r.connect_id)
        }
        (kind, _) => bail!("expected DIAL_RSP, got {kind:?}"),
    }
}

/// Sends `payload` as DATA and reads DATA until as many bytes came back.
async fn echo(stream: &mut RawStream, connect_id: i64, payload: &[u8]) -> anyhow::Result<()> {
    stream.send_packet(&Packet::data(connect_id, payload.to_vec()))?;
    let mut got = Vec::new();
    while got.len() < payload.len() {
        let p = stream.next_packet().await?;
        match p.payload {
            Some(Payload::Data(d)) if d.connect_id == connect_id => got.extend(d.data),
            other => bail!("expected DATA for {connect_id}, got {other:?}"),
        }
    }
    ensure!(got == payload, "echo returned different bytes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_proxy_streams_share_one_http2_connection() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
        let echo_server = EchoServer::start().await?;
        let address = echo_server.addr().to_string();

        let uds = UnixStream::connect(c.server.uds_path()).await?;
        let mut conn = RawGrpc::over(uds).await?;
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            streams.push(conn.open(PROXY_PATH, &[]).await?);
        }
        // Dial on every stream before using any, so all are open at once.
        let mut ids = Vec::new();
        for (i, s) in streams.iter_mut().enumerate() {
            ids.push(dial(s, &address, 1_000 + i as i64).await?);
        }
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        ensure!(unique.len() == STREAMS, "connectIDs not distinct: {ids:?}");
        for (i, (s, id)) in streams.iter_mut().zip(&ids).enumerate() {
            echo(s, *id, format!("hello from stream {i}").as_bytes()).await?;
        }
        for (s, id) in streams.iter_mut().zip(&ids) {
            s.send_packet(&Packet::close_request(*id))?;
            let p = s.next_packet().await?;
            match p.payload {
                Some(Payload::CloseResponse(r)) if r.connect_id == *id => {
                    ensure!(r.error.is_empty(), "CLOSE_RSP error: {}", r.error)
                }
                other => bail!("expected CLOSE_RSP for {id}, got {other:?}"),
            }
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frontend_message_closes_only_that_stream() {
    e2e(async {
        let c = Cluster::start(ServerOptions::grpc_uds(), 1).await?;
        let echo_server = EchoServer::start().await?;
        let address = echo_server.addr().to_string();

        let uds = UnixStream::connect(c.server.uds_path()).await?;
        let mut conn = RawGrpc::over(uds).await?;
        let mut good = conn.open(PROXY_PATH, &[]).await?;
        let id = dial(&mut good, &address, 7).await?;
        echo(&mut good, id, b"before").await?;

        // A well-formed DATA packet of 5 MiB: over gRPC's 4 MiB receive limit.
        let mut big = conn.open(PROXY_PATH, &[]).await?;
        let oversized = Packet::data(id, vec![0u8; 5 << 20]).encode_to_vec();
        big.send_raw(frame(&oversized))?;
        match big.next().await? {
            Event::Packet(p) => bail!("server answered an oversized message with {p:?}"),
            ended => eprintln!("oversized stream ended: {ended:?}"),
        }

        echo(&mut good, id, b"after").await?;
        ensure!(
            c.kubelet_conn().await?.get("/healthz").await?.body == "ok",
            "new tunnel failed after the oversized message"
        );
        Ok(())
    })
    .await
}
