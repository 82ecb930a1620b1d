//! `konnectivity-bench`: the benchmark suite's command line.
//!
//! ```text
//! cargo run --release -p konnectivity-bench -- [--quick] [--runs N] [--json out.json] [--only NAME]
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use konnectivity_bench::config::SCENARIO_FAMILIES;
use konnectivity_bench::{bins, procfs, report, runner, sinks};
use konnectivity_bench::{BenchConfig, Binaries, Frontend, Transport};

/// Benchmarks proxy-server + proxy-agent on loopback against the direct path.
///
/// Paths: direct, and each frontend (connect-tcp, connect-uds, grpc-uds) × agent transport
/// (grpc, quic). Scenarios: bulk, parallel (-8, -64), dial, pingpong, hol, idle (-10000,
/// -100000). Every transferred byte is verified at the receiver. Prints a table and writes
/// JSON.
#[derive(Debug, Parser)]
#[command(name = "konnectivity-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Smaller figures for a quick look: 64 MiB transfers, 250 dials, 2,500 ping-pongs, 2 s
    /// head-of-line phases, 10,000 idle tunnels only.
    #[arg(long)]
    quick: bool,
    /// Runs per figure (median and min–max are over these).
    #[arg(long, default_value_t = konnectivity_bench::config::DEFAULT_RUNS)]
    runs: usize,
    /// Where to write the JSON results [default: <target dir>/bench/latest.json].
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Only these scenarios (comma separated): bulk, parallel, dial, pingpong, hol, idle, or a
    /// full name such as parallel-64 or idle-10000.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    only: Vec<String>,
    /// Only these agent transports (comma separated): grpc, quic.
    #[arg(long, alias = "transports", value_name = "LIST", value_delimiter = ',')]
    transport: Vec<String>,
    /// Only these frontends (comma separated): connect-tcp, connect-uds, grpc-uds.
    #[arg(long, alias = "frontends", value_name = "LIST", value_delimiter = ',')]
    frontend: Vec<String>,
    /// Skip the direct path (no ratios then).
    #[arg(long)]
    no_direct: bool,
    /// Upper bound on one scenario run, in seconds; a run that takes longer is FAILED.
    #[arg(long, value_name = "SECONDS", default_value_t = konnectivity_bench::config::SCENARIO_TIMEOUT.as_secs())]
    scenario_timeout: u64,
    /// Bytes per bulk transfer in MiB, overriding the default (256, or 64 with --quick); a
    /// longer transfer gives a profiler (`perf record -p`) a steady state to sample.
    #[arg(long, value_name = "MIB")]
    bulk_mib: Option<u64>,
    /// A flag to add to every proxy-server command line (repeatable), e.g.
    /// `--server-arg=--worker-threads=1`; recorded in the JSON.
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// A flag to add to every proxy-agent command line (repeatable).
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    agent_arg: Vec<String>,
    /// Do not run `cargo build` for proxy-server and proxy-agent first; use what is there.
    #[arg(long)]
    no_build: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: the idle-tunnel destination holder the bench starts as a child process.
    #[command(hide = true)]
    HoldDestination {
        /// Loopback addresses to listen on (127.0.0.1, 127.0.0.2, …).
        #[arg(long, default_value_t = 4)]
        addrs: u8,
    },
}

fn hold(addrs: u8) -> anyhow::Result<()> {
    procfs::raise_nofile()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the holder runtime")?;
    rt.block_on(sinks::run_holder(addrs))?;
    Ok(())
}

fn bench(cli: Cli) -> anyhow::Result<bool> {
    let binaries = Binaries::locate(!cli.no_build)?;
    let holder = std::env::current_exe().context("locating the bench executable")?;
    let mut config = if cli.quick {
        BenchConfig::quick(binaries, holder)
    } else {
        BenchConfig::full(binaries, holder)
    };
    config.runs = cli.runs;
    config.extra_args.server = cli.server_arg.clone();
    config.extra_args.agent = cli.agent_arg.clone();
    if let Some(mib) = cli.bulk_mib {
        config.bulk_bytes = mib << 20;
    }
    if !cli.only.is_empty() {
        config.only = Some(cli.only.clone());
    }
    if !cli.transport.is_empty() {
        config.transports = cli
            .transport
            .iter()
            .map(|t| Transport::parse(t))
            .collect::<Result<_, _>>()?;
    }
    if !cli.frontend.is_empty() {
        config.frontends = cli
            .frontend
            .iter()
            .map(|f| Frontend::parse(f))
            .collect::<Result<_, _>>()?;
    }
    config.direct = !cli.no_direct;
    config.scenario_timeout = std::time::Duration::from_secs(cli.scenario_timeout);
    config.validate().with_context(|| {
        format!(
            "scenario families: {}; see --help",
            SCENARIO_FAMILIES.join(", ")
        )
    })?;
    let json_path = match cli.json {
        Some(p) => p,
        None => bins::profile_dir()?
            .parent()
            .map(|t| t.join("bench").join("latest.json"))
            .context("the bench executable is not inside a cargo target directory; pass --json")?,
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
        .context("starting the bench runtime")?;
    let report = rt.block_on(runner::run(&config))?;
    rt.shutdown_background();

    println!("{}", report::table(&report));
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    println!("JSON written to {}", json_path.display());
    Ok(report.all_ok())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::HoldDestination { addrs }) => hold(addrs).map(|()| true),
        None => bench(cli),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("konnectivity-bench: some scenarios FAILED (see the table)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("konnectivity-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
