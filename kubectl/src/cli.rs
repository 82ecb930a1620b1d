//! Command-line flags. The connection flags carry kube-apiserver's own names, so a config that
//! works for kube-apiserver works here unchanged.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::target::{NodeAddress, PodRef, PortPair, DEFAULT_KUBELET_PORT};

/// Talk to a node's kubelet the way kube-apiserver does: through the Konnectivity proxy chosen
/// by an EgressSelectorConfiguration (the `cluster` selection), verifying the kubelet's
/// certificate end to end.
#[derive(Debug, Parser)]
#[command(name = "konnectivity-kubectl", version)]
pub struct Cli {
    /// kube-apiserver's EgressSelectorConfiguration file; its `cluster` selection decides how
    /// the kubelet is dialed. Required unless --direct.
    #[arg(long, global = true, env = "KONNECTIVITY_EGRESS_SELECTOR_CONFIG_FILE")]
    pub egress_selector_config_file: Option<PathBuf>,

    /// Dial the kubelet directly over TCP, without any proxy (what kube-apiserver does with no
    /// egress selector configuration).
    #[arg(long, global = true, env = "KONNECTIVITY_DIRECT")]
    pub direct: bool,

    /// CA file the kubelet's serving certificate must chain to (kube-apiserver's flag).
    #[arg(
        long,
        global = true,
        env = "KONNECTIVITY_KUBELET_CERTIFICATE_AUTHORITY"
    )]
    pub kubelet_certificate_authority: Option<PathBuf>,

    /// Client certificate presented to the kubelet (kube-apiserver's flag).
    #[arg(long, global = true, env = "KONNECTIVITY_KUBELET_CLIENT_CERTIFICATE")]
    pub kubelet_client_certificate: Option<PathBuf>,

    /// Private key of --kubelet-client-certificate (kube-apiserver's flag).
    #[arg(long, global = true, env = "KONNECTIVITY_KUBELET_CLIENT_KEY")]
    pub kubelet_client_key: Option<PathBuf>,

    /// The node's address as kube-apiserver would pick it (InternalIP or host name), e.g.
    /// 10.1.0.11 or node1; no port.
    #[arg(long, global = true, env = "KONNECTIVITY_NODE")]
    pub node: Option<NodeAddress>,

    /// The kubelet's HTTPS port.
    #[arg(long, global = true, env = "KONNECTIVITY_KUBELET_PORT", default_value_t = DEFAULT_KUBELET_PORT)]
    pub kubelet_port: u16,

    /// Name the kubelet certificate is verified against; default: the --node address, as
    /// kube-apiserver verifies it.
    #[arg(long, global = true, env = "KONNECTIVITY_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The kubelet operations.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a container's log (`/containerLogs`).
    Logs(LogsArgs),
    /// Run a command in a container (`/exec`, WebSocket channel protocol).
    Exec(ExecArgs),
    /// Forward local ports to a pod (`/portForward`, WebSocket channel protocol).
    PortForward(PortForwardArgs),
}

/// `logs` arguments.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep streaming as the log grows; Ctrl-C ends it.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines (-1 = all).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_tail)]
    pub tail: Option<i64>,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(long)]
    pub timestamps: bool,
    /// NAMESPACE/POD.
    pub pod: PodRef,
    /// Container name.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
}

/// `exec` arguments.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Pass our standard input to the command.
    #[arg(short = 'i', long = "stdin")]
    pub stdin: bool,
    /// Allocate a terminal for the command (our terminal is put in raw mode while it runs).
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// NAMESPACE/POD.
    pub pod: PodRef,
    /// Container name.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// `port-forward` arguments.
#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// NAMESPACE/POD.
    pub pod: PodRef,
    /// LOCAL:REMOTE pairs (or PORT for the same number on both sides; :REMOTE picks a free
    /// local port). Local ports listen on 127.0.0.1.
    #[arg(required = true, num_args = 1..)]
    pub ports: Vec<PortPair>,
}

/// `--tail`: -1 (all) or a non-negative count.
fn parse_tail(s: &str) -> Result<i64, String> {
    let n: i64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of lines"))?;
    if n < -1 {
        return Err(format!("{n} lines: use -1 for all lines or a count >= 0"));
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flag_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn logs_flags_and_global_flags_after_the_subcommand_parse() {
        let cli = Cli::try_parse_from([
            "konnectivity-kubectl",
            "logs",
            "-f",
            "--tail",
            "3",
            "default/web",
            "-c",
            "app",
            "--node",
            "10.1.0.11",
            "--egress-selector-config-file",
            "/etc/egress.yaml",
        ])
        .unwrap();
        assert_eq!(cli.node.unwrap().host, "10.1.0.11");
        assert_eq!(cli.kubelet_port, 10250);
        let Command::Logs(logs) = cli.command else {
            panic!("expected logs")
        };
        assert!(logs.follow);
        assert_eq!(logs.tail, Some(3));
        assert_eq!(logs.container.as_deref(), Some("app"));
        assert_eq!(logs.pod.to_string(), "default/web");
    }

    #[test]
    fn tail_accepts_minus_one_but_not_less() {
        let ok = Cli::try_parse_from(["k", "logs", "--tail", "-1", "a/b"]).unwrap();
        let Command::Logs(logs) = ok.command else {
            panic!("expected logs")
        };
        assert_eq!(logs.tail, Some(-1));
        assert!(Cli::try_parse_from(["k", "logs", "--tail", "-2", "a/b"]).is_err());
    }

    #[test]
    fn exec_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "k",
            "exec",
            "-i",
            "-t",
            "ns/p",
            "-c",
            "c",
            "--",
            "sh",
            "-c",
            "cat; exit 7",
        ])
        .unwrap();
        let Command::Exec(exec) = cli.command else {
            panic!("expected exec")
        };
        assert!(exec.stdin && exec.tty);
        assert_eq!(exec.command, ["sh", "-c", "cat; exit 7"]);
        assert!(Cli::try_parse_from(["k", "exec", "ns/p"]).is_err());
    }

    #[test]
    fn port_forward_takes_one_or_more_pairs() {
        let cli = Cli::try_parse_from(["k", "port-forward", "ns/p", "8080:80", "9000"]).unwrap();
        let Command::PortForward(pf) = cli.command else {
            panic!("expected port-forward")
        };
        assert_eq!(pf.ports.len(), 2);
        assert!(Cli::try_parse_from(["k", "port-forward", "ns/p"]).is_err());
    }
}
