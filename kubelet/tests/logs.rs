//! `/containerLogs` through the client against the stand-in.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, get, start, within};
use futures::StreamExt;
use konnectivity_kubelet::client::{self, KubeletError, LogStream};
use konnectivity_kubelet::LogOptions;

async fn open(fx: &common::Fixture, opts: LogOptions) -> Result<LogStream, KubeletError> {
    let tls = fx.connect().await;
    client::logs(tls, &fx.host(), "default", "web", "app", opts).await
}

async fn read_all(mut s: LogStream) -> String {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    String::from_utf8(out).expect("utf8")
}

/// Reads chunks until `lines` complete lines have arrived.
async fn read_lines(s: &mut LogStream, lines: usize) -> Vec<String> {
    let mut buf = String::new();
    while buf.matches('\n').count() < lines {
        let chunk = s.next().await.expect("stream ended early").expect("chunk");
        buf.push_str(std::str::from_utf8(&chunk).expect("utf8"));
    }
    buf.lines().map(str::to_string).collect()
}

fn line_number(line: &str) -> u64 {
    let rest = line.split("line ").nth(1).expect("has 'line '");
    rest.split(' ')
        .next()
        .expect("number")
        .parse()
        .expect("numeric")
}

#[tokio::test]
async fn tail_returns_the_last_lines_in_order() {
    let fx = start(Duration::from_millis(20)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let opts = LogOptions {
        tail_lines: Some(3),
        ..LogOptions::default()
    };
    let body = within("tail", async {
        read_all(open(&fx, opts).await.expect("logs")).await
    })
    .await;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3, "{body:?}");
    let first = line_number(lines[0]);
    assert!(first >= 8, "at least 10 lines existed, got {body:?}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            *line,
            format!("line {} from default/web/app", first + i as u64)
        );
    }
}

#[tokio::test]
async fn tail_zero_returns_nothing_and_no_tail_returns_history() {
    let fx = start(Duration::from_millis(20)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let none = read_all(
        open(
            &fx,
            LogOptions {
                tail_lines: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("logs"),
    )
    .await;
    assert_eq!(none, "");
    let all = read_all(open(&fx, LogOptions::default()).await.expect("logs")).await;
    assert!(all.starts_with("line 1 from default/web/app\n"), "{all:?}");
    assert!(all.lines().count() >= 5, "{all:?}");
}

#[tokio::test]
async fn follow_receives_lines_that_appear_after_the_request() {
    let fx = start(Duration::from_millis(50)).await;
    let opts = LogOptions {
        follow: true,
        tail_lines: Some(1),
        ..LogOptions::default()
    };
    let mut s = open(&fx, opts).await.expect("logs");
    let lines = within("follow", read_lines(&mut s, 4)).await;
    let first = line_number(&lines[0]);
    let numbers: Vec<u64> = lines.iter().map(|l| line_number(l)).collect();
    assert_eq!(numbers, vec![first, first + 1, first + 2, first + 3]);
}

#[tokio::test]
async fn timestamps_prefix_each_line_with_rfc3339_nano() {
    let fx = start(Duration::from_millis(20)).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let opts = LogOptions {
        tail_lines: Some(2),
        timestamps: true,
        ..LogOptions::default()
    };
    let body = read_all(open(&fx, opts).await.expect("logs")).await;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "{body:?}");
    for line in lines {
        let (ts, rest) = line.split_once(' ').expect("space after timestamp");
        assert!(rest.starts_with("line "), "{line}");
        // 2026-01-02T03:04:05.123456789Z
        assert_eq!(ts.len(), 30, "{ts}");
        assert_eq!(&ts[10..11], "T");
        assert_eq!(&ts[19..20], ".");
        assert!(ts[20..29].bytes().all(|b| b.is_ascii_digit()), "{ts}");
        assert!(ts.ends_with('Z'), "{ts}");
    }
}

#[tokio::test]
async fn limit_bytes_cuts_the_output_exactly_even_when_following() {
    let fx = start(Duration::from_millis(20)).await;
    let opts = LogOptions {
        follow: true,
        limit_bytes: Some(10),
        ..LogOptions::default()
    };
    let body = within("limitBytes", async {
        read_all(open(&fx, opts).await.expect("logs")).await
    })
    .await;
    assert_eq!(body, "line 1 fro");
}

#[tokio::test]
async fn dropping_a_following_client_ends_the_server_stream() {
    // A long interval: the server writes nothing after the first line, so it must notice the
    // client leaving from the connection itself, not from a failed write.
    let fx = start(Duration::from_secs(60)).await;
    let opts = LogOptions {
        follow: true,
        ..LogOptions::default()
    };
    let mut s = open(&fx, opts).await.expect("logs");
    let first = within("first line", read_lines(&mut s, 1)).await;
    assert_eq!(first, vec!["line 1 from default/web/app"]);
    assert_eq!(fx.stats.active_log_streams(), 1);
    drop(s);
    assert!(
        eventually(Duration::from_secs(2), || fx.stats.active_log_streams()
            == 0)
        .await,
        "the stream task is still running after the client left"
    );
    assert!(
        eventually(Duration::from_secs(2), || fx.stats.active_connections()
            == 0)
        .await
    );
}

#[tokio::test]
async fn invalid_options_are_kubelet_status_errors() {
    let fx = start(Duration::from_millis(50)).await;
    let err = open(
        &fx,
        LogOptions {
            tail_lines: Some(-1),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    match err {
        KubeletError::Status {
            status, message, ..
        } => {
            assert_eq!(status, 422);
            assert!(message.contains("Invalid request."), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = open(
        &fx,
        LogOptions {
            previous: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    match err {
        KubeletError::Status {
            status, message, ..
        } => {
            assert_eq!(status, 400);
            assert!(
                message.contains("previous terminated container \"app\""),
                "{message}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn healthz_is_ok_and_unknown_paths_are_404() {
    let fx = start(Duration::from_millis(50)).await;
    assert_eq!(get(&fx, "GET", "/healthz").await, (200, "ok".to_string()));
    let (status, body) = get(&fx, "GET", "/pods").await;
    assert_eq!(status, 404);
    assert!(body.contains("404 page not found"));
    assert_eq!(get(&fx, "POST", "/containerLogs/ns/p/c").await.0, 405);
    assert_eq!(get(&fx, "GET", "/containerLogs/ns/p%2Fx/c").await.0, 400);
    let (status, body) = get(&fx, "GET", "/containerLogs/ns/p/c?follow=maybe").await;
    assert_eq!(status, 400);
    assert!(body.contains("Unable to decode query."), "{body}");
}

#[tokio::test]
async fn shutdown_ends_following_streams_and_the_server() {
    let mut fx = start(Duration::from_secs(60)).await;
    let mut s = open(
        &fx,
        LogOptions {
            follow: true,
            ..Default::default()
        },
    )
    .await
    .expect("logs");
    within("first line", read_lines(&mut s, 1)).await;
    fx.shutdown();
    // The body ends cleanly (terminating chunk) rather than hanging or erroring.
    let rest = within("stream end", async {
        let mut n = 0;
        while let Some(chunk) = s.next().await {
            chunk.expect("clean end");
            n += 1;
        }
        n
    })
    .await;
    assert_eq!(rest, 0);
    within("server exit", &mut fx.server)
        .await
        .expect("server task");
    assert_eq!(fx.stats.active_log_streams(), 0);
}

#[tokio::test]
async fn works_over_any_stream_and_dropping_the_client_closes_the_tunnel() {
    // An in-memory "tunnel": the client side is a DuplexStream, relayed to the stand-in.
    let fx = start(Duration::from_secs(60)).await;
    let (client_end, mut relay_end) = tokio::io::duplex(64 * 1024);
    let mut tcp = tokio::net::TcpStream::connect(fx.addr).await.expect("tcp");
    let relay =
        tokio::spawn(async move { tokio::io::copy_bidirectional(&mut relay_end, &mut tcp).await });
    let tls = fx
        .tls()
        .connect(client_end, &fx.host())
        .await
        .expect("TLS over the tunnel");
    let opts = LogOptions {
        follow: true,
        ..LogOptions::default()
    };
    let mut s = client::logs(tls, &fx.host(), "kube-system", "dns", "coredns", opts)
        .await
        .expect("logs");
    let first = within("first line", read_lines(&mut s, 1)).await;
    assert_eq!(first, vec!["line 1 from kube-system/dns/coredns"]);
    drop(s);
    within("relay ends", relay)
        .await
        .expect("relay task")
        .expect("relay io");
    assert!(
        eventually(Duration::from_secs(2), || fx.stats.active_log_streams()
            == 0)
        .await
    );
}
