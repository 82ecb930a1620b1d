//! Runs every selected scenario on every selected path, `runs` times, and builds the report.
//!
//! Runs are the outer loop and paths the inner one, so the direct path is measured in the
//! same run (close in time, same machine load) as the proxied paths it is compared with. The
//! throughput, latency and head-of-line scenarios share one server + agent pair per path and
//! run; each idle-tunnel scenario gets a fresh pair, so its memory figures start from a clean
//! process. A failed scenario is recorded with its reason and the rest continue.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::config::{BenchConfig, PathSpec, ScenarioKind, Transport};
use crate::conn::Route;
use crate::error::{BenchError, Result};
use crate::harness::{probe_quic, BenchEnv, Harness};
use crate::procfs;
use crate::report::{
    aggregate, ConfigSummary, GitInfo, MachineInfo, RawResult, Report, REPORT_FORMAT,
};
use crate::scenarios::{self, Ctx, Measurement, Pids};
use crate::sinks::Destination;

fn progress(config: &BenchConfig, line: &str) {
    if config.progress {
        eprintln!("[bench] {line}");
    }
}

fn describe(m: &Measurement) -> String {
    let figs: Vec<String> = m
        .figures
        .iter()
        .map(|f| format!("{} {} {}", f.name, crate::report::fmt_num(f.value), f.unit))
        .collect();
    let mut s = figs.join(", ");
    for n in &m.notes {
        s.push_str(&format!(" [{n}]"));
    }
    s
}

/// A server + agent pair for a proxied path (none for the direct path).
async fn start_pair(env: &BenchEnv, path: PathSpec, dest: &Destination) -> Result<Option<Harness>> {
    match path {
        PathSpec::Direct => Ok(None),
        PathSpec::Proxy {
            frontend,
            transport,
        } => Ok(Some(
            Harness::start(env, frontend, transport, dest.addr()).await?,
        )),
    }
}

async fn run_one(
    config: &BenchConfig,
    path: PathSpec,
    kind: ScenarioKind,
    harness: &mut Option<Harness>,
    dest: &Destination,
) -> Result<Measurement> {
    let (route, pids) = match harness {
        None => (Route::Direct, None),
        Some(h) => (
            h.route(),
            Some(Pids {
                server: h.server_pid(),
                agent: h.agent_pid(),
            }),
        ),
    };
    let ctx = Ctx {
        path,
        route,
        dest: dest.addr(),
        pids,
        config,
        holder_exe: &config.holder_exe,
    };
    let limit = config.scenario_timeout;
    let outcome = match tokio::time::timeout(limit, scenarios::run(kind, &ctx)).await {
        Ok(r) => r,
        Err(_) => Err(BenchError::timeout(format!("scenario {kind}"), limit)),
    };
    // A dead server or agent explains a failure better than the client's view of it.
    match (outcome, harness.as_mut().map(Harness::check_alive)) {
        (Err(e), Some(Err(dead))) => Err(BenchError::Process(format!("{e}; {dead}"))),
        (Ok(_), Some(Err(dead))) => Err(dead),
        (outcome, _) => outcome,
    }
}

async fn run_path(
    env: &BenchEnv,
    config: &BenchConfig,
    dest: &Destination,
    path: PathSpec,
    run: usize,
    scenarios: &[ScenarioKind],
    raw: &mut Vec<RawResult>,
) {
    let mut record = |kind: ScenarioKind, outcome: Result<Measurement>| {
        let line = match &outcome {
            Ok(m) => describe(m),
            Err(e) => format!("FAILED: {}", e.to_string().lines().next().unwrap_or("")),
        };
        progress(
            config,
            &format!("run {run}/{} {path} {kind}: {line}", config.runs),
        );
        raw.push(RawResult {
            path,
            scenario: kind,
            run,
            outcome: outcome.map_err(|e| e.to_string()),
        });
    };
    let (shared, fresh): (Vec<ScenarioKind>, Vec<ScenarioKind>) = scenarios
        .iter()
        .partition(|k| !matches!(k, ScenarioKind::Idle(_)));

    let mut harness: Option<Harness> = None;
    let mut start_error: Option<String> = None;
    for kind in shared {
        if let Some(e) = &start_error {
            record(kind, Err(BenchError::Process(e.clone())));
            continue;
        }
        let dead = match harness.as_mut() {
            Some(h) => h.check_alive().is_err(),
            None => true,
        };
        if dead && path != PathSpec::Direct {
            harness = None;
            match start_pair(env, path, dest).await {
                Ok(h) => harness = h,
                Err(e) => {
                    let msg = format!("starting the server + agent failed: {e}");
                    start_error = Some(msg.clone());
                    record(kind, Err(BenchError::Process(msg)));
                    continue;
                }
            }
        }
        let outcome = run_one(config, path, kind, &mut harness, dest).await;
        record(kind, outcome);
    }
    drop(harness);

    for kind in fresh {
        let outcome = match start_pair(env, path, dest).await {
            Ok(mut h) => run_one(config, path, kind, &mut h, dest).await,
            Err(e) => Err(BenchError::Process(format!(
                "starting the server + agent failed: {e}"
            ))),
        };
        record(kind, outcome);
    }
}

/// Runs the whole bench and returns the report.
pub async fn run(config: &BenchConfig) -> Result<Report> {
    config.validate()?;
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t0 = Instant::now();
    let machine = MachineInfo::collect();
    let nofile = procfs::raise_nofile()?;
    let env = BenchEnv::new(config.binaries.clone(), config.extra_args.clone())?;
    let dest = Destination::start()?;
    progress(
        config,
        &format!(
            "binaries: {} and {} ({}); work directory {}; RLIMIT_NOFILE raised from {} to {} (hard {})",
            config.binaries.server.display(),
            config.binaries.agent.display(),
            config.binaries.profile,
            env.path().display(),
            nofile.soft_before,
            nofile.soft,
            nofile.hard
        ),
    );
    if config.binaries.profile == "debug" {
        progress(
            config,
            "WARNING: measuring DEBUG binaries; run with `cargo run --release -p konnectivity-bench` for real figures",
        );
    }

    let paths = config.paths();
    let scenarios = config.scenarios();
    let mut unavailable = BTreeMap::new();
    if paths.iter().any(|p| {
        matches!(
            p,
            PathSpec::Proxy {
                transport: Transport::Quic,
                ..
            }
        )
    }) {
        if let Err(reason) = probe_quic(&config.binaries.agent) {
            progress(config, &format!("QUIC paths unavailable: {reason}"));
            for p in &paths {
                if let PathSpec::Proxy {
                    transport: Transport::Quic,
                    ..
                } = p
                {
                    unavailable.insert(p.to_string(), reason.clone());
                }
            }
        }
    }

    let mut raw = Vec::new();
    for run in 1..=config.runs {
        for &path in &paths {
            if unavailable.contains_key(&path.to_string()) {
                continue;
            }
            run_path(&env, config, &dest, path, run, &scenarios, &mut raw).await;
        }
    }

    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = Report {
        format: REPORT_FORMAT,
        machine,
        git: GitInfo::collect(&workspace),
        config: ConfigSummary::of(config),
        nofile,
        started_unix,
        duration_s: t0.elapsed().as_secs_f64(),
        paths: aggregate(&paths, &scenarios, &unavailable, &raw),
        work_dir: None,
    };
    if !report.all_ok() {
        let kept = env.keep();
        progress(
            config,
            &format!(
                "some scenarios failed; server and agent logs are kept in {}",
                kept.display()
            ),
        );
        report.work_dir = Some(kept.display().to_string());
    }
    Ok(report)
}
