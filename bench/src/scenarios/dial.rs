//! Dial latency: sequential dials, each timed from the start of the dial until one byte has
//! made the round trip to the destination (so the tunnel is proven to work). Closing is not
//! timed but completes before the next dial. Through the tunnel it also reports what each dial
//! (with its close) costs the server and agent together: CPU µs and context switches.

use tokio::time::Instant;

use super::{CpuMark, Ctx, Measurement};
use crate::error::{BenchError, Result};
use crate::sinks::Op;
use crate::stats::Samples;

/// Untimed dials before measuring: warm caches, lazy allocations and the TLS session path.
pub const DIAL_WARMUP: usize = 10;

/// Runs the dial scenario.
pub async fn run(ctx: &Ctx<'_>) -> Result<Measurement> {
    let n = ctx.config.dials;
    let mut samples = Samples::with_capacity(n);
    let mut buf = [0u8; 1];
    let mut mark = None;
    for i in 0..DIAL_WARMUP + n {
        if i == DIAL_WARMUP {
            mark = CpuMark::take(ctx.pids)?;
        }
        let t0 = Instant::now();
        let mut c = ctx.route.connect(ctx.dest).await?;
        c.request(Op::Echo, 0, 0).await?;
        c.round_trip(b"d", &mut buf).await?;
        let took = t0.elapsed();
        c.close().await;
        if i >= DIAL_WARMUP {
            samples.push(took);
        }
    }
    let (p50, p99) = samples
        .p50_p99()
        .ok_or_else(|| BenchError::Config("no dials measured".into()))?;
    let mut m = Measurement::default();
    m.push("p50", "µs", p50);
    m.push("p99", "µs", p99);
    if let Some(mark) = mark {
        mark.push_per_op(&mut m, "per dial", n)?;
    }
    Ok(m)
}
