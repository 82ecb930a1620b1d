//! The measurements. Each scenario runs against one path (direct or a server + agent pair)
//! and returns named figures; a scenario that cannot verify its bytes returns an error instead.

pub mod bulk;
pub mod dial;
pub mod hol;
pub mod idle;
pub mod parallel;
pub mod pingpong;

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{BenchConfig, PathSpec, ScenarioKind};
use crate::conn::Route;
use crate::error::Result;
use crate::procfs;

/// Bytes in a GiB, for CPU seconds per GiB.
pub const GIB: f64 = (1u64 << 30) as f64;
/// Bytes in a MiB, for throughput.
pub const MIB: f64 = (1u64 << 20) as f64;

/// One figure of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Name within its scenario (`upload`, `p99`, …).
    pub name: String,
    /// Unit (`MiB/s`, `µs`, `s/GiB`, …).
    pub unit: &'static str,
    /// The value.
    pub value: f64,
}

impl Figure {
    /// A figure.
    pub fn new(name: impl Into<String>, unit: &'static str, value: f64) -> Figure {
        Figure {
            name: name.into(),
            unit,
            value,
        }
    }
}

/// What one scenario run produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurement {
    /// The figures, in display order.
    pub figures: Vec<Figure>,
    /// Remarks that qualify the figures (e.g. a tunnel count capped by the fd limit).
    pub notes: Vec<String>,
}

impl Measurement {
    /// Adds a figure.
    pub fn push(&mut self, name: impl Into<String>, unit: &'static str, value: f64) {
        self.figures.push(Figure::new(name, unit, value));
    }
}

/// The server and agent process ids of a proxied path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pids {
    /// proxy-server.
    pub server: u32,
    /// proxy-agent.
    pub agent: u32,
}

/// Everything a scenario needs.
pub struct Ctx<'a> {
    /// The path being measured.
    pub path: PathSpec,
    /// How to reach destinations.
    pub route: Route,
    /// The in-bench destination service.
    pub dest: SocketAddr,
    /// Server and agent (absent on the direct path).
    pub pids: Option<Pids>,
    /// Sizes and counts.
    pub config: &'a BenchConfig,
    /// Executable of the idle-tunnel destination holder.
    pub holder_exe: &'a Path,
}

/// Server + agent CPU time and context switches at one instant: the start of a timed part,
/// for CPU per GiB (bulk) or CPU and wake-ups per operation (dials, round trips).
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pids: Pids,
    seconds: f64,
    switches: u64,
}

impl CpuMark {
    /// Reads both processes' CPU time and context switches now (`None` on the direct path).
    pub fn take(pids: Option<Pids>) -> Result<Option<CpuMark>> {
        let Some(pids) = pids else { return Ok(None) };
        Ok(Some(CpuMark {
            pids,
            seconds: Self::cpu_seconds(pids)?,
            switches: Self::switches(pids)?,
        }))
    }

    fn cpu_seconds(pids: Pids) -> Result<f64> {
        Ok(procfs::cpu_seconds(pids.server)? + procfs::cpu_seconds(pids.agent)?)
    }

    fn switches(pids: Pids) -> Result<u64> {
        Ok(procfs::context_switches(pids.server)? + procfs::context_switches(pids.agent)?)
    }

    /// Server + agent CPU seconds per GiB for `bytes` moved since this mark.
    pub fn per_gib(&self, bytes: u64) -> Result<f64> {
        Ok((Self::cpu_seconds(self.pids)? - self.seconds) / (bytes as f64 / GIB))
    }

    /// Adds "`what` CPU" (server + agent µs per operation) and "`what` switches" (server +
    /// agent context switches per operation) for `ops` operations since this mark.
    pub fn push_per_op(&self, m: &mut Measurement, what: &str, ops: usize) -> Result<()> {
        let seconds = Self::cpu_seconds(self.pids)?;
        let switches = Self::switches(self.pids)?;
        let ops = ops.max(1) as f64;
        m.push(
            format!("{what} CPU"),
            "µs",
            (seconds - self.seconds) * 1e6 / ops,
        );
        m.push(
            format!("{what} switches"),
            "per op",
            switches.saturating_sub(self.switches) as f64 / ops,
        );
        Ok(())
    }
}

/// A fresh random pattern seed.
pub fn seed() -> u64 {
    rand::random()
}

/// Runs one scenario.
pub async fn run(kind: ScenarioKind, ctx: &Ctx<'_>) -> Result<Measurement> {
    match kind {
        ScenarioKind::Bulk => bulk::run(ctx).await,
        ScenarioKind::Parallel(n) => parallel::run(ctx, n).await,
        ScenarioKind::Dial => dial::run(ctx).await,
        ScenarioKind::PingPong => pingpong::run(ctx).await,
        ScenarioKind::HeadOfLine => hol::run(ctx).await,
        ScenarioKind::Idle(n) => idle::run(ctx, n).await,
    }
}
