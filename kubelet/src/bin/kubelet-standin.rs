//! `kubelet-standin`: a kubelet stand-in for tests and demos (see the library's `standin`
//! module). Flags keep the kubelet's names where the kubelet has them.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use konnectivity_kubelet::standin::{self, StandinConfig};
use tokio::signal::unix::{signal, SignalKind};

/// A kubelet stand-in: the kubelet's HTTPS streaming API (containerLogs, exec, attach,
/// portForward, run, healthz) with the real wire protocols. Exec runs commands on THIS
/// machine as THIS user; port-forward connects to --pod-address. For tests and demos only.
#[derive(Debug, Parser)]
#[command(name = "kubelet-standin", version)]
struct Args {
    /// Address and port to serve HTTPS on.
    #[arg(long, env = "KUBELET_STANDIN_LISTEN", default_value = standin::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Kubelet serving certificate (PEM, signed by the kubelet CA, SANs for the node's addresses).
    #[arg(long, env = "KUBELET_STANDIN_TLS_CERT_FILE")]
    tls_cert_file: PathBuf,
    /// Private key of --tls-cert-file (PEM).
    #[arg(long, env = "KUBELET_STANDIN_TLS_PRIVATE_KEY_FILE")]
    tls_private_key_file: PathBuf,
    /// CA bundle that client certificates must chain to (kube-apiserver's kubelet-client certificate).
    #[arg(long, env = "KUBELET_STANDIN_CLIENT_CA_FILE")]
    client_ca_file: PathBuf,
    /// Node name shown in logs.
    #[arg(long, env = "KUBELET_STANDIN_NODE_NAME", default_value = "node")]
    node_name: String,
    /// Host or IP where "pod" ports live: port-forward connects to <pod-address>:<port>.
    #[arg(long, env = "KUBELET_STANDIN_POD_ADDRESS", default_value = "127.0.0.1")]
    pod_address: String,
    /// Every container log gains one line this often (e.g. 1s, 250ms, 2m).
    #[arg(long, env = "KUBELET_STANDIN_LOG_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    log_interval: Duration,
}

/// Parses Go-style durations with one unit: `500ms`, `1s`, `2m`, `1h`, `1.5s`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit; use e.g. 500ms, 1s, 2m"))?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: {number:?} is not a number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = StandinConfig {
        listen: args.listen,
        tls_cert_file: args.tls_cert_file,
        tls_private_key_file: args.tls_private_key_file,
        client_ca_file: args.client_ca_file,
        node_name: args.node_name,
        pod_address: args.pod_address,
        log_interval: args.log_interval,
    };
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    standin::run(config, shutdown).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_go_style_units() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn flags_use_kubelet_names_and_defaults() {
        let a = Args::try_parse_from([
            "kubelet-standin",
            "--tls-cert-file",
            "c",
            "--tls-private-key-file",
            "k",
            "--client-ca-file",
            "ca",
        ])
        .unwrap();
        assert_eq!(a.listen, "0.0.0.0:10250".parse().unwrap());
        assert_eq!(a.pod_address, "127.0.0.1");
        assert_eq!(a.log_interval, Duration::from_secs(1));
        assert!(Args::try_parse_from(["kubelet-standin"]).is_err());
    }
}
