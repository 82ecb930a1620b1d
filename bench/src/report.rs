//! The results: aggregation over runs, ratios to the direct path, the printed table and the
//! JSON document.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::config::{BenchConfig, PathSpec, ScenarioKind};
use crate::procfs::NofileLimit;
use crate::scenarios::Measurement;
use crate::stats::Summary;

/// Characters of a failure reason shown in the table (the JSON has all of it).
pub const TABLE_REASON_CHARS: usize = 320;

/// One scenario run on one path, as measured.
#[derive(Debug, Clone)]
pub struct RawResult {
    /// Path.
    pub path: PathSpec,
    /// Scenario.
    pub scenario: ScenarioKind,
    /// Run number (1-based).
    pub run: usize,
    /// Figures, or why there are none.
    pub outcome: Result<Measurement, String>,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// CPUs available to the bench.
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// First CPU model name in /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory, KiB.
    pub mem_total_kib: u64,
    /// /proc/loadavg when the bench started (the machine may be shared).
    pub loadavg_at_start: String,
}

impl MachineInfo {
    /// Reads the figures from /proc (missing values are empty, never an error).
    pub fn collect() -> MachineInfo {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        MachineInfo {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .unwrap_or("")
                .trim()
                .to_string(),
            mem_total_kib: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            loadavg_at_start: read("/proc/loadavg").trim().to_string(),
        }
    }
}

/// The commit the bench was run from.
#[derive(Debug, Clone, Serialize)]
pub struct GitInfo {
    /// `git rev-parse HEAD`, if available.
    pub commit: Option<String>,
    /// Whether the work tree had uncommitted changes.
    pub dirty: Option<bool>,
}

impl GitInfo {
    /// Asks git about the workspace (read-only); `None` fields when git is unavailable.
    pub fn collect(workspace: &Path) -> GitInfo {
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(workspace)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        GitInfo {
            commit: git(&["rev-parse", "HEAD"]),
            dirty: git(&["status", "--porcelain"]).map(|s| !s.is_empty()),
        }
    }
}

/// The configuration as recorded in the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigSummary {
    /// Runs per figure.
    pub runs: usize,
    /// Bulk bytes per direction.
    pub bulk_bytes: u64,
    /// Parallel stream counts.
    pub parallel_streams: Vec<usize>,
    /// Parallel bytes per direction.
    pub parallel_bytes: u64,
    /// Sequential dials.
    pub dials: usize,
    /// Ping-pong round trips.
    pub pingpongs: usize,
    /// Ping-pong size.
    pub pingpong_size: usize,
    /// Idle-tunnel counts.
    pub idle_counts: Vec<usize>,
    /// Head-of-line push size.
    pub hol_push_bytes: u64,
    /// Head-of-line phase length, seconds.
    pub hol_seconds: f64,
    /// Binaries measured.
    pub server_bin: String,
    /// Binaries measured.
    pub agent_bin: String,
    /// Their cargo profile.
    pub profile: String,
    /// Flags added to their command lines (`--server-arg`, `--agent-arg`).
    pub extra_args: crate::config::ExtraArgs,
}

impl ConfigSummary {
    /// From a configuration.
    pub fn of(c: &BenchConfig) -> ConfigSummary {
        ConfigSummary {
            runs: c.runs,
            bulk_bytes: c.bulk_bytes,
            parallel_streams: c.parallel_streams.clone(),
            parallel_bytes: c.parallel_bytes,
            dials: c.dials,
            pingpongs: c.pingpongs,
            pingpong_size: c.pingpong_size,
            idle_counts: c.idle_counts.clone(),
            hol_push_bytes: c.hol_push_bytes,
            hol_seconds: c.hol_duration.as_secs_f64(),
            server_bin: c.binaries.server.display().to_string(),
            agent_bin: c.binaries.agent.display().to_string(),
            profile: c.binaries.profile.clone(),
            extra_args: c.extra_args.clone(),
        }
    }
}

/// A figure's runs and its ratio to the direct path.
#[derive(Debug, Clone, Serialize)]
pub struct FigureReport {
    /// Name.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// Value per successful run: (run number, value).
    pub runs: Vec<(usize, f64)>,
    /// Median (min–max) over the runs.
    pub summary: Summary,
    /// Per-run ratio to the direct path's same figure in the same run, when it has one.
    pub ratio_to_direct: Option<Summary>,
}

/// One run's failure.
#[derive(Debug, Clone, Serialize)]
pub struct RunFailure {
    /// Run number (1-based).
    pub run: usize,
    /// What happened.
    pub reason: String,
}

/// A scenario on a path.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario name (`bulk`, `parallel-8`, …).
    pub name: String,
    /// `ok` (every run), `partial` (some runs failed) or `failed` (all runs failed).
    pub status: &'static str,
    /// Runs that produced figures.
    pub runs_ok: usize,
    /// Failed runs and why.
    pub failures: Vec<RunFailure>,
    /// Remarks (distinct over runs).
    pub notes: Vec<String>,
    /// Figures.
    pub figures: Vec<FigureReport>,
}

/// Everything measured on one path.
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    /// `direct` or `frontend/transport`.
    pub name: String,
    /// `measured` or `unavailable`.
    pub status: &'static str,
    /// Why unavailable.
    pub reason: Option<String>,
    /// Scenarios, in run order.
    pub scenarios: Vec<ScenarioReport>,
}

/// The whole bench result, as written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Tool and format version.
    pub format: &'static str,
    /// Machine.
    pub machine: MachineInfo,
    /// Commit.
    pub git: GitInfo,
    /// Configuration.
    pub config: ConfigSummary,
    /// Open-file limit the bench ran with.
    pub nofile: NofileLimit,
    /// Start, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Wall time of the whole bench, seconds.
    pub duration_s: f64,
    /// Per path.
    pub paths: Vec<PathReport>,
    /// The work directory (server and agent logs, PKI), kept when a scenario failed.
    pub work_dir: Option<String>,
}

impl Report {
    /// Whether every scenario on every measured path succeeded in every run.
    pub fn all_ok(&self) -> bool {
        self.paths
            .iter()
            .flat_map(|p| &p.scenarios)
            .all(|s| s.status == "ok")
    }
}

/// Identifies the JSON layout, for tools that compare results over time.
pub const REPORT_FORMAT: &str = "konnectivity-bench/1";

/// Folds raw per-run results into per-path reports with summaries and ratios.
pub fn aggregate(
    paths: &[PathSpec],
    scenarios: &[ScenarioKind],
    unavailable: &BTreeMap<String, String>,
    raw: &[RawResult],
) -> Vec<PathReport> {
    // Direct figures by (scenario, figure name, run).
    let mut direct: BTreeMap<(String, String, usize), f64> = BTreeMap::new();
    for r in raw.iter().filter(|r| r.path == PathSpec::Direct) {
        if let Ok(m) = &r.outcome {
            for f in &m.figures {
                direct.insert((r.scenario.to_string(), f.name.clone(), r.run), f.value);
            }
        }
    }
    paths
        .iter()
        .map(|&path| {
            let name = path.to_string();
            if let Some(reason) = unavailable.get(&name) {
                return PathReport {
                    name,
                    status: "unavailable",
                    reason: Some(reason.clone()),
                    scenarios: Vec::new(),
                };
            }
            let scenarios = scenarios
                .iter()
                .map(|&s| scenario_report(path, s, raw, &direct))
                .collect();
            PathReport {
                name,
                status: "measured",
                reason: None,
                scenarios,
            }
        })
        .collect()
}

fn scenario_report(
    path: PathSpec,
    scenario: ScenarioKind,
    raw: &[RawResult],
    direct: &BTreeMap<(String, String, usize), f64>,
) -> ScenarioReport {
    let sname = scenario.to_string();
    let mut failures = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    // Figure name → (unit, [(run, value)]), in first-seen order.
    let mut order: Vec<String> = Vec::new();
    let mut figs: BTreeMap<String, (String, Vec<(usize, f64)>)> = BTreeMap::new();
    let mut runs_ok = 0;
    for r in raw
        .iter()
        .filter(|r| r.path == path && r.scenario == scenario)
    {
        match &r.outcome {
            Ok(m) => {
                runs_ok += 1;
                for n in &m.notes {
                    if !notes.contains(n) {
                        notes.push(n.clone());
                    }
                }
                for f in &m.figures {
                    let entry = figs.entry(f.name.clone()).or_insert_with(|| {
                        order.push(f.name.clone());
                        (f.unit.to_string(), Vec::new())
                    });
                    entry.1.push((r.run, f.value));
                }
            }
            Err(reason) => failures.push(RunFailure {
                run: r.run,
                reason: reason.clone(),
            }),
        }
    }
    let figures = order
        .iter()
        .filter_map(|name| {
            let (unit, runs) = figs.get(name)?;
            let values: Vec<f64> = runs.iter().map(|&(_, v)| v).collect();
            let summary = Summary::of(&values)?;
            let ratios: Vec<f64> = if path == PathSpec::Direct {
                Vec::new()
            } else {
                runs.iter()
                    .filter_map(|&(run, v)| {
                        let d = direct.get(&(sname.clone(), name.clone(), run))?;
                        (*d != 0.0).then(|| v / d)
                    })
                    .collect()
            };
            Some(FigureReport {
                name: name.clone(),
                unit: unit.clone(),
                runs: runs.clone(),
                summary,
                ratio_to_direct: Summary::of(&ratios),
            })
        })
        .collect();
    let status = match (runs_ok, failures.is_empty()) {
        (0, false) => "failed",
        (_, false) => "partial",
        _ => "ok",
    };
    ScenarioReport {
        name: sname,
        status,
        runs_ok,
        failures,
        notes,
        figures,
    }
}

/// A value in `unit`: counts as integers, other figures by [`fmt_num`].
pub fn fmt_value(v: f64, unit: &str) -> String {
    if unit == "count" && v.is_finite() {
        format!("{v:.0}")
    } else {
        fmt_num(v)
    }
}

/// A number with precision suited to its size.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn one_line(reason: &str) -> String {
    let first = reason.lines().next().unwrap_or("");
    if first.chars().count() > TABLE_REASON_CHARS {
        let cut: String = first.chars().take(TABLE_REASON_CHARS).collect();
        format!("{cut}…")
    } else {
        first.to_string()
    }
}

/// The human-readable table.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(
        out,
        "konnectivity-bench: {} CPUs ({}), kernel {}, load at start {}; commit {}{}; binaries: {}; runs: {}; RLIMIT_NOFILE {}",
        m.nproc,
        m.cpu_model,
        m.kernel,
        m.loadavg_at_start,
        report.git.commit.as_deref().map_or("unknown", |c| &c[..c.len().min(12)]),
        if report.git.dirty == Some(true) { " (dirty)" } else { "" },
        report.config.profile,
        report.config.runs,
        report.nofile.soft,
    );
    let _ = writeln!(
        out,
        "each figure: median (min–max) over runs; ×direct = median of per-run ratios to the direct path in the same run"
    );
    if let Some(dir) = &report.work_dir {
        let _ = writeln!(out, "server and agent logs of this run are kept in {dir}");
    }
    for p in report.paths.iter().filter(|p| p.status == "unavailable") {
        let _ = writeln!(
            out,
            "{}: UNAVAILABLE: {}",
            p.name,
            one_line(p.reason.as_deref().unwrap_or(""))
        );
    }
    let measured: Vec<&PathReport> = report
        .paths
        .iter()
        .filter(|p| p.status == "measured")
        .collect();
    let path_w = measured.iter().map(|p| p.name.len()).max().unwrap_or(6);
    let scenario_names: Vec<String> = measured
        .first()
        .map(|p| p.scenarios.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default();
    for sname in scenario_names {
        let _ = writeln!(out, "\n== {sname} ==");
        let per_path: Vec<(&str, &ScenarioReport)> = measured
            .iter()
            .filter_map(|p| {
                p.scenarios
                    .iter()
                    .find(|s| s.name == sname)
                    .map(|s| (p.name.as_str(), s))
            })
            .collect();
        let mut fig_names: Vec<(String, String)> = Vec::new();
        for (_, s) in &per_path {
            for f in &s.figures {
                if !fig_names.iter().any(|(n, _)| n == &f.name) {
                    fig_names.push((f.name.clone(), f.unit.clone()));
                }
            }
        }
        for (fname, unit) in &fig_names {
            let _ = writeln!(out, "  {fname} [{unit}]");
            for (pname, s) in &per_path {
                let Some(f) = s.figures.iter().find(|f| &f.name == fname) else {
                    continue;
                };
                let value = format!(
                    "{} ({}–{})",
                    fmt_value(f.summary.median, unit),
                    fmt_value(f.summary.min, unit),
                    fmt_value(f.summary.max, unit)
                );
                let ratio = f
                    .ratio_to_direct
                    .map(|r| format!("{}× direct", fmt_num(r.median)))
                    .unwrap_or_default();
                let _ = writeln!(out, "    {pname:<path_w$}  {value:<30} {ratio}");
            }
        }
        for (pname, s) in &per_path {
            if let Some(first) = s.failures.first() {
                let _ = writeln!(
                    out,
                    "  {pname}: FAILED in {} of {} runs: {}",
                    s.failures.len(),
                    s.failures.len() + s.runs_ok,
                    one_line(&first.reason)
                );
            }
            for n in &s.notes {
                let _ = writeln!(out, "  {pname}: note: {}", one_line(n));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Frontend, Transport};
    use crate::scenarios::Figure;

    fn m(v: f64) -> Result<Measurement, String> {
        Ok(Measurement {
            figures: vec![Figure::new("upload", "MiB/s", v)],
            notes: vec![],
        })
    }

    const PROXY: PathSpec = PathSpec::Proxy {
        frontend: Frontend::ConnectUds,
        transport: Transport::Grpc,
    };

    #[test]
    fn ratios_pair_runs_with_the_direct_path_of_the_same_run() {
        let raw = vec![
            RawResult {
                path: PathSpec::Direct,
                scenario: ScenarioKind::Bulk,
                run: 1,
                outcome: m(1000.0),
            },
            RawResult {
                path: PROXY,
                scenario: ScenarioKind::Bulk,
                run: 1,
                outcome: m(500.0),
            },
            RawResult {
                path: PathSpec::Direct,
                scenario: ScenarioKind::Bulk,
                run: 2,
                outcome: m(2000.0),
            },
            RawResult {
                path: PROXY,
                scenario: ScenarioKind::Bulk,
                run: 2,
                outcome: m(500.0),
            },
            RawResult {
                path: PathSpec::Direct,
                scenario: ScenarioKind::Bulk,
                run: 3,
                outcome: m(100.0),
            },
            RawResult {
                path: PROXY,
                scenario: ScenarioKind::Bulk,
                run: 3,
                outcome: Err("boom".into()),
            },
        ];
        let reports = aggregate(
            &[PathSpec::Direct, PROXY],
            &[ScenarioKind::Bulk],
            &BTreeMap::new(),
            &raw,
        );
        let s = &reports[1].scenarios[0];
        assert_eq!(s.status, "partial");
        assert_eq!(s.runs_ok, 2);
        assert_eq!(s.failures[0].run, 3);
        let f = &s.figures[0];
        assert_eq!(f.summary.median, 500.0);
        let r = f.ratio_to_direct.expect("ratio");
        assert_eq!((r.min, r.max, r.median), (0.25, 0.5, 0.375));
        assert!(reports[0].scenarios[0].figures[0].ratio_to_direct.is_none());
    }

    #[test]
    fn all_runs_failing_marks_the_scenario_failed_and_the_table_says_why() {
        let raw = vec![RawResult {
            path: PROXY,
            scenario: ScenarioKind::Dial,
            run: 1,
            outcome: Err("dial refused\nlog tail".into()),
        }];
        let paths = aggregate(&[PROXY], &[ScenarioKind::Dial], &BTreeMap::new(), &raw);
        assert_eq!(paths[0].scenarios[0].status, "failed");
        let report = Report {
            format: REPORT_FORMAT,
            machine: MachineInfo::collect(),
            git: GitInfo {
                commit: None,
                dirty: None,
            },
            config: ConfigSummary {
                runs: 1,
                bulk_bytes: 0,
                parallel_streams: vec![],
                parallel_bytes: 0,
                dials: 0,
                pingpongs: 0,
                pingpong_size: 0,
                idle_counts: vec![],
                hol_push_bytes: 0,
                hol_seconds: 0.0,
                server_bin: String::new(),
                agent_bin: String::new(),
                profile: "test".into(),
                extra_args: Default::default(),
            },
            nofile: NofileLimit {
                soft_before: 1,
                soft: 1,
                hard: 1,
            },
            started_unix: 0,
            duration_s: 0.0,
            paths,
            work_dir: None,
        };
        let t = table(&report);
        assert!(
            t.contains("connect-uds/grpc: FAILED in 1 of 1 runs: dial refused"),
            "{t}"
        );
        assert!(!t.contains("log tail"), "{t}");
    }

    #[test]
    fn unavailable_paths_are_listed_once() {
        let mut un = BTreeMap::new();
        un.insert(PROXY.to_string(), "no quic".to_string());
        let paths = aggregate(&[PROXY], &[ScenarioKind::Bulk], &un, &[]);
        assert_eq!(paths[0].status, "unavailable");
        assert!(paths[0].scenarios.is_empty());
    }

    #[test]
    fn numbers_get_precision_by_magnitude() {
        assert_eq!(fmt_num(1234.4), "1234");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(0.1234), "0.123");
        assert_eq!(fmt_value(50.0, "count"), "50");
        assert_eq!(fmt_value(50.0, "MiB/s"), "50.0");
    }
}
