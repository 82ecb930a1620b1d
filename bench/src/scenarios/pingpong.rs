//! Round-trip latency of small messages on one established tunnel; every echo is verified.
//! Through the tunnel it also reports what each round trip costs the server and agent together:
//! CPU µs and context switches.

use tokio::time::Instant;

use super::{CpuMark, Ctx, Measurement};
use crate::conn::ping_message;
use crate::error::{BenchError, Result};
use crate::sinks::Op;
use crate::stats::Samples;

/// Untimed round trips before measuring (connection warm-up, lazy allocations).
pub const PINGPONG_WARMUP: usize = 100;

/// Runs the ping-pong scenario.
pub async fn run(ctx: &Ctx<'_>) -> Result<Measurement> {
    let n = ctx.config.pingpongs;
    let size = ctx.config.pingpong_size;
    let mut c = ctx.route.connect(ctx.dest).await?;
    c.request(Op::Echo, 0, 0).await?;
    let mut samples = Samples::with_capacity(n);
    let (mut msg, mut buf) = (Vec::with_capacity(size), vec![0u8; size]);
    let mut mark = None;
    for i in 0..PINGPONG_WARMUP + n {
        if i == PINGPONG_WARMUP {
            mark = CpuMark::take(ctx.pids)?;
        }
        ping_message(i as u64, size, &mut msg);
        let t0 = Instant::now();
        c.round_trip(&msg, &mut buf).await?;
        if i >= PINGPONG_WARMUP {
            samples.push(t0.elapsed());
        }
    }
    let (p50, p99) = samples
        .p50_p99()
        .ok_or_else(|| BenchError::Config("no round trips measured".into()))?;
    let mut m = Measurement::default();
    m.push("p50", "µs", p50);
    m.push("p99", "µs", p99);
    // Before closing: the close is not a round trip.
    if let Some(mark) = mark {
        mark.push_per_op(&mut m, "per round trip", n)?;
    }
    c.close().await;
    Ok(m)
}
