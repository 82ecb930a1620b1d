//! Command-line compatibility of both binaries: `--help`, refusal of unsupported features,
//! and upstream's external-agent harness style (`--name=value` for every flag).

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context};
use konnectivity_e2e::bins::{binary, AGENT_BIN, SERVER_BIN};
use konnectivity_e2e::ports::free_port;
use konnectivity_e2e::process::ChildProcess;
use konnectivity_e2e::*;

/// How long a binary may take to reject its flags.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn run(bin: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(binary(bin)?)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {bin}"))
}

#[test]
fn help_works_for_both_binaries() -> anyhow::Result<()> {
    for (bin, expected) in [
        (
            SERVER_BIN,
            [
                "--mode",
                "--uds-name",
                "--agent-port",
                "--cluster-cert",
                "--proxy-strategies",
            ],
        ),
        (
            AGENT_BIN,
            [
                "--proxy-server-host",
                "--proxy-server-port",
                "--ca-cert",
                "--agent-id",
                "--sync-interval",
            ],
        ),
    ] {
        let out = run(bin, &["--help"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success(),
            "{bin} --help exited with {}: {text}",
            out.status
        );
        for flag in expected {
            ensure!(text.contains(flag), "{bin} --help does not mention {flag}");
        }
    }
    Ok(())
}

/// Starts `bin` with otherwise valid flags plus `bad`, and expects a prompt non-zero exit
/// whose output names the flag.
async fn refuses(
    env: &TestEnv,
    bin: &str,
    mut args: Vec<String>,
    bad: &str,
    flag_name: &str,
) -> anyhow::Result<()> {
    args.push(bad.to_string());
    let mut proc = ChildProcess::spawn(&binary(bin)?, bin, args, env.unique_file(bin, "log"))?;
    let status = proc
        .wait_exit(EXIT_TIMEOUT)
        .await
        .with_context(|| format!("{bin} kept running with {bad}"))?;
    let log = proc.log();
    ensure!(!status.success(), "{bin} accepted {bad}: {log}");
    ensure!(
        log.contains(flag_name),
        "{bin}'s message for {bad} does not name the flag: {log}"
    );
    eprintln!("{bin} {bad} -> {status}: {}", log.trim());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_feature_flags_at_non_default_values_are_refused() {
    e2e(async {
        let env = TestEnv::new()?;
        let pki = &env.pki;
        let server_args = vec![
            "--mode=grpc".to_string(),
            format!("--uds-name={}", env.unique_file("s", "sock").display()),
            "--server-port=0".into(),
            format!("--agent-port={}", free_port()?),
            format!("--health-port={}", free_port()?),
            format!("--admin-port={}", free_port()?),
            format!("--cluster-cert={}", pki.agent_server.cert.display()),
            format!("--cluster-key={}", pki.agent_server.key.display()),
        ];
        refuses(
            &env,
            SERVER_BIN,
            server_args,
            "--enable-lease-controller=true",
            "enable-lease-controller",
        )
        .await?;

        let client = &pki.agent_clients[0].value;
        let agent_args = vec![
            format!("--proxy-server-port={}", free_port()?),
            format!("--ca-cert={}", pki.agent_ca.cert.display()),
            format!("--agent-cert={}", client.cert.display()),
            format!("--agent-key={}", client.key.display()),
            format!("--health-server-port={}", free_port()?),
            format!("--admin-server-port={}", free_port()?),
        ];
        refuses(
            &env,
            AGENT_BIN,
            agent_args,
            "--count-server-leases=true",
            "count-server-leases",
        )
        .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_external_agent_harness_flag_style_is_accepted() {
    e2e(async {
        let env = TestEnv::new()?;
        let server = Server::start(&env, ServerOptions::grpc_uds()).await?;
        let (health, admin) = (free_port()?, free_port()?);
        let pki = &env.pki;
        let client = &pki.agent_clients[0].value;
        let agent_id = "external-style-agent".to_string();
        // What upstream's ExternalAgentRunner produces: pflag VisitAll, `--name=value` for every
        // flag of the agent's option set, defaults printed the Go way.
        let args: Vec<String> = [
            ("admin-bind-address", "127.0.0.1".to_string()),
            ("admin-server-port", admin.to_string()),
            ("agent-cert", client.cert.display().to_string()),
            ("agent-id", agent_id.clone()),
            ("agent-identifiers", String::new()),
            ("agent-key", client.key.display().to_string()),
            ("alpn-proto", "[]".to_string()),
            ("ca-cert", pki.agent_ca.cert.display().to_string()),
            ("count-server-leases", "false".to_string()),
            ("enable-contention-profiling", "false".to_string()),
            ("enable-profiling", "false".to_string()),
            ("health-server-host", "127.0.0.1".to_string()),
            ("health-server-port", health.to_string()),
            ("keepalive-time", "1h0m0s".to_string()),
            (
                "kube-api-content-type",
                "application/vnd.kubernetes.protobuf".to_string(),
            ),
            ("kubeconfig", String::new()),
            ("lease-label", "k8s-app=konnectivity-server".to_string()),
            ("lease-namespace", "kube-system".to_string()),
            ("probe-interval", "100ms".to_string()),
            ("proxy-server-host", "127.0.0.1".to_string()),
            ("proxy-server-port", server.ports.agent.to_string()),
            ("server-count-source", "default".to_string()),
            ("service-account-token-path", String::new()),
            ("sync-forever", "false".to_string()),
            ("sync-interval", "100ms".to_string()),
            ("sync-interval-cap", "1s".to_string()),
            ("warn-on-channel-limit", "false".to_string()),
            ("xfr-channel-size", "150".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| format!("--{k}={v}"))
        .collect();
        let agent = Agent::start_with_args(&env, args, agent_id, health, admin).await?;
        agent.wait_ready().await?;
        server.wait_ready().await?;
        let m = agent.metrics().await?;
        ensure!(
            metrics::value(
                &m,
                "konnectivity_network_proxy_agent_open_server_connections",
                &[]
            ) == Some(1.0),
            "connected-server count as upstream's harness reads it: {m}"
        );
        Ok(())
    })
    .await
}
