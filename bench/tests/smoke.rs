//! Smoke test: every scenario runs on every path with tiny sizes against the (debug)
//! binaries, and every transfer verifies. It asserts that figures exist, never on their size.

use std::collections::BTreeSet;
use std::time::Duration;

use konnectivity_bench::report::{table, Report};
use konnectivity_bench::{runner, BenchConfig, Binaries};

fn tiny_config() -> BenchConfig {
    let binaries = Binaries::locate(true).expect("proxy-server and proxy-agent binaries");
    let holder = env!("CARGO_BIN_EXE_konnectivity-bench").into();
    BenchConfig {
        runs: 1,
        bulk_bytes: 1 << 20,
        parallel_streams: vec![3],
        parallel_bytes: 1 << 20,
        dials: 20,
        pingpongs: 100,
        pingpong_size: 64,
        idle_counts: vec![50],
        hol_push_bytes: 1 << 20,
        hol_duration: Duration::from_millis(500),
        progress: true,
        // Tiny scenarios take well under a second; a hung path fails fast instead of
        // holding the test for the bench's 10-minute default.
        scenario_timeout: Duration::from_secs(30),
        ..BenchConfig::full(binaries, holder)
    }
}

fn figure(report: &Report, path: &str, scenario: &str, name: &str) -> Option<f64> {
    report
        .paths
        .iter()
        .find(|p| p.name == path)?
        .scenarios
        .iter()
        .find(|s| s.name == scenario)?
        .figures
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.summary.median)
}

#[test]
fn every_scenario_runs_and_verifies_on_every_path() {
    let config = tiny_config();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt.block_on(runner::run(&config)).expect("bench run");
    rt.shutdown_background();
    let printed = table(&report);
    println!("{printed}");

    // Every gRPC-transport path and the direct path measured every scenario; QUIC paths are
    // either measured the same way or reported unavailable with the agent's reason.
    let expected: BTreeSet<String> = config.scenarios().iter().map(ToString::to_string).collect();
    assert_eq!(report.paths.len(), 7, "direct + 3 frontends × 2 transports");
    for p in &report.paths {
        if p.status == "unavailable" {
            assert!(
                p.name.ends_with("/quic"),
                "{} unavailable: {:?}",
                p.name,
                p.reason
            );
            assert!(p.reason.as_deref().is_some_and(|r| !r.is_empty()));
            assert!(printed.contains(&format!("{}: UNAVAILABLE", p.name)));
            continue;
        }
        let got: BTreeSet<String> = p.scenarios.iter().map(|s| s.name.clone()).collect();
        assert_eq!(got, expected, "{}", p.name);
        for s in &p.scenarios {
            assert_eq!(
                s.status, "ok",
                "{} {} failed: {:?}",
                p.name, s.name, s.failures
            );
        }
    }

    for path in report.paths.iter().filter(|p| p.status == "measured") {
        let n = path.name.as_str();
        for (scenario, fig) in [
            ("bulk", "upload"),
            ("bulk", "download"),
            ("parallel-3", "upload"),
            ("parallel-3", "download"),
            ("dial", "p50"),
            ("dial", "p99"),
            ("pingpong", "p50"),
            ("pingpong", "p99"),
            ("hol", "B round trips, A idle"),
            ("hol", "B round trips, A stalled"),
            ("idle-50", "opens/s"),
        ] {
            let v = figure(&report, n, scenario, fig)
                .unwrap_or_else(|| panic!("{n} {scenario} has no figure {fig:?}"));
            assert!(v.is_finite() && v >= 0.0, "{n} {scenario} {fig} = {v}");
        }
        assert_eq!(figure(&report, n, "idle-50", "opened"), Some(50.0), "{n}");
        if n == "direct" {
            assert!(figure(&report, n, "bulk", "upload CPU").is_none());
        } else {
            // Proxied paths measure server + agent CPU and memory, and compare to direct.
            for (scenario, fig) in [
                ("bulk", "upload CPU"),
                ("bulk", "download CPU"),
                ("idle-50", "server RSS/tunnel"),
                ("idle-50", "agent RSS/tunnel"),
            ] {
                assert!(
                    figure(&report, n, scenario, fig).is_some(),
                    "{n} {scenario} has no figure {fig:?}"
                );
            }
            let bulk = path
                .scenarios
                .iter()
                .find(|s| s.name == "bulk")
                .expect("bulk");
            assert!(bulk.figures[0].ratio_to_direct.is_some(), "{n}: no ratio");
        }
    }
    let json = serde_json::to_string(&report).expect("report serialises");
    assert!(json.contains("\"machine\"") && json.contains("\"nproc\""));
}
