//! The server frames agent-stream packets itself (`konnectivity_tunnel::grpc`), not through
//! tonic's codec. An upstream-style agent, built on tonic's generated client and its standard
//! codec, must still read every packet the server sends (large DATA payloads leave as a head
//! frame plus a payload frame) and be read correctly in return.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use hyper_util::rt::TokioIo;
use konnectivity_proto::{AgentServiceClient, Packet, PacketType, Payload};
use proxy_server::config::FrontendMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Endpoint;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_tonics_standard_codec_exchanges_large_data_with_the_server() {
    let pki = pki();
    let proxy = start_server(&pki, FrontendMode::HttpConnect).await;

    // The "upstream" agent: tonic's generated client and codec over mTLS.
    let (cert, key) = pki.agent_pair();
    let tls = konnectivity_tls::client_config(
        &pki.paths.agent_ca.cert,
        Some((cert.as_path(), key.as_path())),
        &[b"h2".to_vec()],
        &Default::default(),
    )
    .unwrap();
    let addr = proxy.quic;
    let channel = Endpoint::from_static("https://127.0.0.1")
        .connect_with_connector(tower::service_fn(move |_| {
            let tls = tls.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let s = konnectivity_tls::connect(tls, "127.0.0.1", tcp, Some(b"h2")).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(s))
            }
        }))
        .await
        .unwrap();
    let (to_server, rx) = mpsc::unbounded_channel::<Packet>();
    let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("agentid", "upstream-agent".parse().unwrap());
    let response = AgentServiceClient::new(channel)
        .connect(request)
        .await
        .expect("server accepts the stream");
    assert!(response.metadata().get("serverid").is_some());
    let mut from_server = response.into_inner();

    // A client tunnels through; the agent answers its dial.
    let uds = proxy.uds.clone();
    let client = tokio::spawn(async move { http_connect(&uds, "10.0.0.1:10250").await });
    let dial = tokio::time::timeout(WAIT, from_server.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(Payload::DialRequest(req)) = dial.payload else {
        panic!("expected DIAL_REQ, got {dial:?}")
    };
    assert_eq!(req.address, "10.0.0.1:10250");
    to_server
        .send(Packet::dial_response(req.random, 1, ""))
        .unwrap();
    let (mut stream, head) = tokio::time::timeout(WAIT, client).await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Upload: the server's split encoding read by tonic's decoder.
    let up = pattern(1, 700_000);
    stream.write_all(&up).await.unwrap();
    let mut got = Vec::new();
    while got.len() < up.len() {
        let p = tokio::time::timeout(WAIT, from_server.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(p.kind(), Some(PacketType::Data), "{p:?}");
        let Some(Payload::Data(d)) = p.payload else {
            panic!("DATA without payload")
        };
        assert_eq!(d.connect_id, 1);
        got.extend_from_slice(&d.data);
    }
    assert_eq!(got, up, "upload arrives intact through tonic's codec");

    // Download: tonic's encoding (one message may span frames) read by the server's decoder.
    let down = pattern(2, 600_000);
    for piece in down.chunks(150_000) {
        to_server
            .send(Packet::data(1, Bytes::copy_from_slice(piece)))
            .unwrap();
    }
    let mut got = vec![0u8; down.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, down, "download arrives intact from tonic's codec");
}
