//! Single-stream bulk throughput, upload and download, with server + agent CPU per GiB.
//!
//! The tunnel is dialed before the clock starts. Upload time runs until the sink's verdict
//! arrives (every byte verified at the receiver); download time until the last byte has been
//! received and verified.

use tokio::time::Instant;

use super::{seed, CpuMark, Ctx, Measurement, MIB};
use crate::error::Result;

/// Runs the bulk scenario.
pub async fn run(ctx: &Ctx<'_>) -> Result<Measurement> {
    let bytes = ctx.config.bulk_bytes;
    let mut m = Measurement::default();
    for upload in [true, false] {
        let mut c = ctx.route.connect(ctx.dest).await?;
        let cpu = CpuMark::take(ctx.pids)?;
        let t0 = Instant::now();
        if upload {
            c.upload(seed(), bytes).await?;
        } else {
            c.download(seed(), bytes).await?;
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu.map(|c| c.per_gib(bytes)).transpose()?;
        c.close().await;
        let dir = if upload { "upload" } else { "download" };
        m.push(dir, "MiB/s", bytes as f64 / MIB / secs);
        if let Some(cpu) = cpu {
            m.push(format!("{dir} CPU"), "s/GiB", cpu);
        }
    }
    Ok(m)
}
