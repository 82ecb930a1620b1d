//! `konnectivity-certs`: writes every certificate and key of a Konnectivity deployment into a
//! directory. See the library docs for the file layout and which flag each file feeds.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use konnectivity_certs::{
    KeyType, KubeletNode, Pki, PkiOptions, DEFAULT_CA_DAYS, DEFAULT_LEAF_DAYS, DEFAULT_SANS,
};

/// Generate the three CAs (frontend, agent, kubelet) and all their leaf certificates.
///
/// SAN values are repeatable or comma-separated; each is an IP address if it parses as one,
/// otherwise a DNS name. Giving a SAN flag replaces its default list.
#[derive(Debug, Parser)]
#[command(name = "konnectivity-certs", version)]
struct Cli {
    /// Output directory (created if missing).
    #[arg(short, long)]
    dir: PathBuf,

    /// Replace existing files instead of refusing to touch them.
    #[arg(long)]
    force: bool,

    /// Key algorithm of every key: ecdsa-p256, ecdsa-p384 or ed25519 (RSA is not available).
    #[arg(long, default_value_t = KeyType::default())]
    key_type: KeyType,

    /// Validity of leaf certificates, in days.
    #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
    days: u32,

    /// Validity of the CA certificates, in days.
    #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
    ca_days: u32,

    /// SANs of frontend-server.crt (the host kube-apiserver dials).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_SANS.map(String::from))]
    server_san: Vec<String>,

    /// SANs of agent-server.crt (the --proxy-server-host agents dial).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_SANS.map(String::from))]
    agent_server_san: Vec<String>,

    /// Issue agent-NAME.crt/.key for this agent (repeatable); default: one agent-client.crt.
    #[arg(long = "agent-name", value_name = "NAME")]
    agent_names: Vec<String>,

    /// SANs of kubelet-server.crt, and extra SANs of --kubelet-node entries without their own.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_SANS.map(String::from))]
    kubelet_san: Vec<String>,

    /// Issue kubelet-NAME.crt/.key instead of kubelet-server.crt (repeatable). With `=SANs`
    /// exactly those SANs; without, NAME plus the --kubelet-san list.
    #[arg(long = "kubelet-node", value_name = "NAME[=SAN,SAN...]")]
    kubelet_nodes: Vec<KubeletNode>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain; no backtrace even with RUST_BACKTRACE set.
            eprintln!("konnectivity-certs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = PkiOptions {
        key_type: cli.key_type,
        leaf_days: cli.days,
        ca_days: cli.ca_days,
        frontend_server_sans: cli.server_san,
        agent_server_sans: cli.agent_server_san,
        agent_names: cli.agent_names,
        kubelet_sans: cli.kubelet_san,
        kubelet_nodes: cli.kubelet_nodes,
    };
    let pki = Pki::generate(&opts).context("generating certificates")?;
    let paths = pki
        .write(&cli.dir, cli.force)
        .with_context(|| format!("writing certificates to {}", cli.dir.display()))?;
    for file in paths.files() {
        println!("{}", file.display());
    }
    Ok(())
}
