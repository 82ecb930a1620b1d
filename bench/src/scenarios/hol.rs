//! Head-of-line blocking: does one stalled reader freeze the other tunnels of the same agent?
//!
//! Phase 1 (reference): stream A is open and idle while stream B ping-pongs for the configured
//! time. Phase 2: A's destination pushes `hol_push_bytes` (64 MiB) at A's client, which does
//! not read, while a fresh B ping-pongs for the same time. Afterwards A is read to the end and
//! every byte verified. A round trip in flight when the phase ends may finish within
//! [`HOL_OVERRUN_GRACE`]; one still pending then is "frozen" and counts as a sample of its
//! age, so a frozen B shows in the p99 instead of vanishing from it.

use std::time::Duration;

use tokio::time::Instant;

use super::{seed, Ctx, Measurement};
use crate::conn::{ping_message, Conn};
use crate::error::{BenchError, Result};
use crate::sinks::Op;
use crate::stats::Samples;

/// Head start given to A's writer before B starts, so A's buffers along the path are full
/// (the stall is in force) when B's phase begins. Costs half a second per run.
pub const HOL_STALL_SETTLE: Duration = Duration::from_millis(500);
/// Extra time a round trip that started before the end of B's phase may take to complete
/// and still count. A round trip still pending after it is "frozen". One second: far beyond
/// any healthy round trip on loopback (milliseconds under load), short against the phase.
pub const HOL_OVERRUN_GRACE: Duration = Duration::from_secs(1);
/// Upper bound on reading A's 64 MiB once its reader resumes; a path that cannot deliver
/// them in this time fails the scenario.
pub const HOL_DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// What stream B achieved in one phase.
struct Phase {
    completed: usize,
    p99: Option<f64>,
    stalled_for: Option<Duration>,
    /// B itself, closed only after A has drained (a frozen B may be stuck behind A).
    stream: Conn,
}

async fn ping_pong_for(ctx: &Ctx<'_>, duration: Duration) -> Result<Phase> {
    let size = ctx.config.pingpong_size;
    let mut b = ctx.route.connect(ctx.dest).await?;
    b.request(Op::Echo, 0, 0).await?;
    let (mut msg, mut buf) = (Vec::with_capacity(size), vec![0u8; size]);
    let mut samples = Samples::default();
    let mut stalled_for = None;
    let deadline = Instant::now() + duration;
    let mut i = 0u64;
    while Instant::now() < deadline {
        ping_message(i, size, &mut msg);
        i += 1;
        let t0 = Instant::now();
        let limit = deadline + HOL_OVERRUN_GRACE;
        match tokio::time::timeout_at(limit, b.round_trip(&msg, &mut buf)).await {
            Ok(Ok(())) => samples.push(t0.elapsed()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let age = t0.elapsed();
                stalled_for = Some(age);
                let completed = samples.len();
                samples.push(age);
                return Ok(Phase {
                    completed,
                    p99: samples.p50_p99().map(|(_, p99)| p99),
                    stalled_for,
                    stream: b,
                });
            }
        }
    }
    Ok(Phase {
        completed: samples.len(),
        p99: samples.p50_p99().map(|(_, p99)| p99),
        stalled_for,
        stream: b,
    })
}

/// Runs the head-of-line scenario.
pub async fn run(ctx: &Ctx<'_>) -> Result<Measurement> {
    let duration = ctx.config.hol_duration;
    let push = ctx.config.hol_push_bytes;

    let mut a_idle = ctx.route.connect(ctx.dest).await?;
    a_idle.request(Op::Echo, 0, 0).await?;
    let idle = ping_pong_for(ctx, duration).await?;
    idle.stream.close().await;
    a_idle.close().await;

    let mut a = ctx.route.connect(ctx.dest).await?;
    let a_seed = seed();
    a.request(Op::Download, a_seed, push).await?;
    tokio::time::sleep(HOL_STALL_SETTLE).await;
    let stalled = ping_pong_for(ctx, duration).await?;
    let drained = tokio::time::timeout(HOL_DRAIN_TIMEOUT, a.receive_verified(a_seed, push)).await;
    a.close().await;
    stalled.stream.close().await;
    let a_error = match drained {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "reading its {push} bytes after the stall did not finish within {HOL_DRAIN_TIMEOUT:?}"
        )),
    };
    if let Some(a_error) = a_error {
        // A's bytes did not all arrive: no figure counts, but B's view explains what the
        // path did (e.g. a proxy that aborts the stalled tunnel to keep the others moving).
        let p99 = |p: Option<f64>| p.map_or("-".to_string(), |v| format!("{v:.0} µs"));
        return Err(BenchError::Protocol(format!(
            "stream A was not delivered intact after its stall: {a_error} (meanwhile B made {} round trips with A idle, p99 {}, and {} with A stalled, p99 {})",
            idle.completed,
            p99(idle.p99),
            stalled.completed,
            p99(stalled.p99)
        )));
    }

    let mut m = Measurement::default();
    m.push("B round trips, A idle", "count", idle.completed as f64);
    m.push(
        "B round trips, A stalled",
        "count",
        stalled.completed as f64,
    );
    if idle.completed > 0 {
        m.push(
            "B kept",
            "%",
            100.0 * stalled.completed as f64 / idle.completed as f64,
        );
    }
    if let Some(p99) = idle.p99 {
        m.push("B p99, A idle", "µs", p99);
    }
    if let Some(p99) = stalled.p99 {
        m.push("B p99, A stalled", "µs", p99);
    }
    if let Some(age) = idle.stalled_for {
        m.notes.push(format!(
            "B stalled for ≥ {} ms even with A idle",
            age.as_millis()
        ));
    }
    if let Some(age) = stalled.stalled_for {
        m.notes.push(format!(
            "B froze behind A: its last round trip was still pending after {} ms",
            age.as_millis()
        ));
    }
    Ok(m)
}
