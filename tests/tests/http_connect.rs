//! HTTP CONNECT frontend with the real binaries: real curl over mTLS TCP, curl through socat
//! to the Unix socket, and upstream's exact response bytes for success and every error.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use konnectivity_e2e::connect::{
    anything_within, read_to_eof, read_up_to, send_connect, BAD_GATEWAY_HEAD, CONNECT_OK,
    NO_AGENT_500, RESPONSE_TIMEOUT,
};
use konnectivity_e2e::ports::{closed_port, free_port};
use konnectivity_e2e::process::ChildProcess;
use konnectivity_e2e::tls::{self, ALPN_HTTP1};
use konnectivity_e2e::wait::{wait_until, STARTUP_TIMEOUT};
use konnectivity_e2e::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

/// Bound on one curl invocation.
const CURL_MAX_TIME_SECS: u32 = 20;
/// Silence expected after the 200 line before the client speaks.
const QUIET_AFTER_200: Duration = Duration::from_millis(500);

async fn curl(args: &[String]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("curl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running curl (is it installed?)")?;
    ensure!(
        out.status.success(),
        "curl {args:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The TLS client configuration kube-apiserver uses for the mTLS frontend (HTTP/1.1).
fn kube_apiserver_tls(env: &TestEnv) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let pki = &env.pki;
    Ok(tls::client_config(
        &pki.frontend_ca.cert,
        Some((&pki.frontend_client.cert, &pki.frontend_client.key)),
        &[ALPN_HTTP1],
    )?)
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn kubelet_tls_args(env: &TestEnv, kubelet: &Kubelet) -> Vec<String> {
    let pki = &env.pki;
    vec![
        "--cacert".into(),
        p(&pki.kubelet_ca.cert),
        "--cert".into(),
        p(&pki.kubelet_client.cert),
        "--key".into(),
        p(&pki.kubelet_client.key),
        format!("https://127.0.0.1:{}/healthz", kubelet.addr().port()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_http_connect_over_mtls_tcp() {
    e2e(async {
        let c = Cluster::start(ServerOptions::http_connect_tcp(), 1).await?;
        let pki = &c.env.pki;
        let mut args = vec![
            "-sS".to_string(),
            "--max-time".into(),
            CURL_MAX_TIME_SECS.to_string(),
            "-p".into(),
            "-x".into(),
            format!("https://127.0.0.1:{}", c.server.frontend_tcp().port()),
            "--proxy-cacert".into(),
            p(&pki.frontend_ca.cert),
            "--proxy-cert".into(),
            p(&pki.frontend_client.cert),
            "--proxy-key".into(),
            p(&pki.frontend_client.key),
        ];
        args.extend(kubelet_tls_args(&c.env, &c.kubelet));
        let out = curl(&args).await?;
        ensure!(out == "ok", "curl printed {out:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_socat_to_the_http_connect_unix_socket() {
    e2e(async {
        let c = Cluster::start(ServerOptions::http_connect_uds(), 1).await?;
        let port = free_port()?;
        let _socat = ChildProcess::spawn(
            Path::new("socat"),
            "socat",
            vec![
                format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"),
                format!("UNIX-CONNECT:{}", c.server.uds_path().display()),
            ],
            c.env.unique_file("socat", "log"),
        )
        .context("starting socat (is it installed?)")?;
        wait_until("socat listening", STARTUP_TIMEOUT, || async move {
            TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await?;
        let mut args = vec![
            "-sS".to_string(),
            "--max-time".into(),
            CURL_MAX_TIME_SECS.to_string(),
            "-p".into(),
            "-x".into(),
            format!("http://127.0.0.1:{port}"),
        ];
        args.extend(kubelet_tls_args(&c.env, &c.kubelet));
        let out = curl(&args).await?;
        ensure!(out == "ok", "curl printed {out:?}");
        Ok(())
    })
    .await
}

/// After the exact 200 line nothing else arrives; then TLS to the kubelet works over the
/// same socket.
async fn check_exact_200_then_tls<IO: tls::Io>(mut io: IO, c: &Cluster) -> anyhow::Result<()> {
    send_connect(&mut io, &c.kubelet.address()).await?;
    let head = read_up_to(&mut io, CONNECT_OK.len(), RESPONSE_TIMEOUT).await?;
    ensure!(
        head == CONNECT_OK,
        "expected {:?}, got {:?}",
        String::from_utf8_lossy(CONNECT_OK),
        String::from_utf8_lossy(&head)
    );
    if let Some(extra) = anything_within(&mut io, QUIET_AFTER_200).await? {
        bail!(
            "bytes after the 200 line before the client spoke: {:?}",
            String::from_utf8_lossy(&extra)
        );
    }
    let mut conn = c
        .kubelet_client
        .connect(io, cluster::KUBELET_SERVER_NAME)
        .await?;
    let r = conn.get("/healthz").await?;
    ensure!(r.status == 200 && r.body == "ok", "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_success_is_exactly_the_200_line_over_uds_and_tcp() {
    e2e(async {
        let uds = Cluster::start(ServerOptions::http_connect_uds(), 1).await?;
        check_exact_200_then_tls(UnixStream::connect(uds.server.uds_path()).await?, &uds).await?;

        let tcp = Cluster::start(ServerOptions::http_connect_tcp(), 1).await?;
        let config = kube_apiserver_tls(&tcp.env)?;
        let io = tls::connect(tcp.server.frontend_tcp(), "127.0.0.1", config).await?;
        check_exact_200_then_tls(io, &tcp).await
    })
    .await
}

async fn connect_response(c_uds: &Path, target: &str) -> anyhow::Result<Vec<u8>> {
    let mut io = UnixStream::connect(c_uds).await?;
    send_connect(&mut io, target).await?;
    Ok(read_to_eof(&mut io, RESPONSE_TIMEOUT).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_agent_answers_upstreams_exact_500() {
    e2e(async {
        let env = TestEnv::new()?;
        let server = Server::start(&env, ServerOptions::http_connect_uds()).await?;
        let got = connect_response(server.uds_path(), "127.0.0.1:10250").await?;
        ensure!(
            got == NO_AGENT_500,
            "expected {:?}\n     got {:?}",
            String::from_utf8_lossy(NO_AGENT_500),
            String::from_utf8_lossy(&got)
        );
        Ok(())
    })
    .await
}

fn split_502(got: &[u8]) -> anyhow::Result<String> {
    ensure!(
        got.starts_with(BAD_GATEWAY_HEAD),
        "expected head {:?}\n got {:?}",
        String::from_utf8_lossy(BAD_GATEWAY_HEAD),
        String::from_utf8_lossy(got)
    );
    Ok(String::from_utf8_lossy(&got[BAD_GATEWAY_HEAD.len()..]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_closed_port_answers_502_connection_refused() {
    e2e(async {
        let c = Cluster::start(ServerOptions::http_connect_uds(), 1).await?;
        let port = closed_port()?;
        let target = format!("127.0.0.1:{port}");
        let body = split_502(&connect_response(c.server.uds_path(), &target).await?)?;
        ensure!(body.contains("connection refused"), "502 body {body:?}");
        ensure!(
            body.contains(&target),
            "502 body {body:?} does not name {target}"
        );
        eprintln!("502 body: {body}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_unresolvable_host_answers_502_no_such_host() {
    e2e(async {
        let c = Cluster::start(ServerOptions::http_connect_uds(), 1).await?;
        let body =
            split_502(&connect_response(c.server.uds_path(), "doesnotexist.invalid:80").await?)?;
        ensure!(body.contains("no such host"), "502 body {body:?}");
        ensure!(body.contains("doesnotexist.invalid"), "502 body {body:?}");
        eprintln!("502 body: {body}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_connect_method_answers_405() {
    e2e(async {
        let c = Cluster::start(ServerOptions::http_connect_uds(), 1).await?;
        let io = UnixStream::connect(c.server.uds_path()).await?;
        let r = HttpConn::over(io, "127.0.0.1").await?.get("/foo").await?;
        ensure!(r.status == 405, "GET answered {}", r.status);
        ensure!(
            r.text().trim_end() == "this proxy only supports CONNECT passthrough",
            "405 body {:?}",
            r.text()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_answers_400_and_the_server_keeps_serving() {
    e2e(async {
        let c = Cluster::start(ServerOptions::http_connect_uds(), 1).await?;
        let mut io = UnixStream::connect(c.server.uds_path()).await?;
        io.write_all(b"THIS IS NOT HTTP\r\n\r\n").await?;
        let got = read_to_eof(&mut io, RESPONSE_TIMEOUT).await?;
        ensure!(
            got.starts_with(b"HTTP/1.1 400 "),
            "malformed request answered {:?}",
            String::from_utf8_lossy(&got)
        );

        check_exact_200_then_tls(UnixStream::connect(c.server.uds_path()).await?, &c).await
    })
    .await
}

/// Idle connections opened before the real client: more than a serial accept loop could
/// survive if it waited for handshakes.
const IDLE_CONNECTIONS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_that_never_handshake_do_not_block_the_frontend() {
    e2e(async {
        let c = Cluster::start(ServerOptions::http_connect_tcp(), 1).await?;
        let mut idle = Vec::new();
        for _ in 0..IDLE_CONNECTIONS {
            idle.push(TcpStream::connect(c.server.frontend_tcp()).await?);
        }
        let config = kube_apiserver_tls(&c.env)?;
        let io = tokio::time::timeout(
            Duration::from_secs(5),
            tls::connect(c.server.frontend_tcp(), "127.0.0.1", config),
        )
        .await
        .context("TLS handshake blocked behind idle connections")??;
        check_exact_200_then_tls(io, &c).await?;
        drop(idle);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_library_http_connect_over_tcp_reaches_the_kubelet() {
    e2e(async {
        let c = Cluster::start(ServerOptions::http_connect_tcp(), 1).await?;
        let r = c.kubelet_conn().await?.get("/healthz").await?;
        ensure!(r.status == 200 && r.body == "ok", "{r:?}");
        let err = c
            .dialer
            .dial(&format!("127.0.0.1:{}", closed_port()?))
            .await
            .err()
            .context("dial to closed port succeeded")?;
        ensure!(err.to_string().contains("connection refused"), "{err}");
        Ok(())
    })
    .await
}

/// Exact head of upstream's 504 for an agent dial that timed out.
const GATEWAY_TIMEOUT_HEAD: &[u8] =
    b"HTTP/1.1 504 Gateway Timeout\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";
/// The agent's fixed endpoint dial timeout (upstream: 5 s, not configurable).
const AGENT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_blackhole_answers_504_after_the_agents_5s_dial_timeout() {
    e2e(async {
        let c = Cluster::start(ServerOptions::http_connect_uds(), 1).await?;
        let hole = Blackhole::start().await?;
        let started = std::time::Instant::now();
        let got = connect_response(c.server.uds_path(), &hole.addr().to_string()).await?;
        let elapsed = started.elapsed();
        ensure!(
            got.starts_with(GATEWAY_TIMEOUT_HEAD),
            "expected head {:?}\n got {:?}",
            String::from_utf8_lossy(GATEWAY_TIMEOUT_HEAD),
            String::from_utf8_lossy(&got)
        );
        let body = String::from_utf8_lossy(&got[GATEWAY_TIMEOUT_HEAD.len()..]).into_owned();
        ensure!(body.contains("i/o timeout"), "504 body {body:?}");
        ensure!(
            elapsed >= AGENT_DIAL_TIMEOUT - Duration::from_millis(200)
                && elapsed < AGENT_DIAL_TIMEOUT * 2,
            "504 after {elapsed:?}, expected about {AGENT_DIAL_TIMEOUT:?}"
        );
        eprintln!("504 after {elapsed:?}: {body}");
        let m = c.agents[0].metrics().await?;
        let timeouts = metrics::value(
            &m,
            "konnectivity_network_proxy_agent_endpoint_dial_failure_total",
            &[("reason", "timeout")],
        );
        ensure!(
            timeouts == Some(1.0),
            "dial failures by timeout: {timeouts:?}\n{m}"
        );
        Ok(())
    })
    .await
}

/// Whether the second of two CONNECTs over fresh mTLS connections (one resuming client
/// configuration, so a ticket from the first would be used) resumed the TLS session.
async fn second_connection_resumes(c: &Cluster) -> anyhow::Result<bool> {
    let config = kube_apiserver_tls(&c.env)?;
    let mut resumed = Vec::new();
    for _ in 0..2 {
        let mut io = tls::connect(c.server.frontend_tcp(), "127.0.0.1", config.clone()).await?;
        send_connect(&mut io, &c.kubelet.address()).await?;
        // Any ticket travels ahead of the 200, so it is stored once the 200 is read.
        let head = read_up_to(&mut io, CONNECT_OK.len(), RESPONSE_TIMEOUT).await?;
        ensure!(head == CONNECT_OK, "{:?}", String::from_utf8_lossy(&head));
        resumed.push(io.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
    }
    ensure!(!resumed[0], "the first connection cannot resume");
    Ok(resumed[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_frontend_sends_session_tickets_only_when_asked() {
    e2e(async {
        // kube-apiserver never resumes, so by default no ticket delays the 200.
        let c = Cluster::start(ServerOptions::http_connect_tcp(), 1).await?;
        ensure!(
            !second_connection_resumes(&c).await?,
            "a session resumed, so the frontend sent a ticket by default"
        );
        let c = Cluster::start(
            ServerOptions {
                extra_args: vec!["--frontend-tls-session-tickets=1".to_string()],
                ..ServerOptions::http_connect_tcp()
            },
            1,
        )
        .await?;
        ensure!(
            second_connection_resumes(&c).await?,
            "--frontend-tls-session-tickets=1 did not let a client resume"
        );
        Ok(())
    })
    .await
}
