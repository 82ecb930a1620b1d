//! Aggregate throughput of N parallel streams, upload and download, with server + agent CPU
//! per GiB. All tunnels are dialed first; the clock runs from the common start signal until
//! the last stream has been verified.

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{seed, CpuMark, Ctx, Measurement, MIB};
use crate::conn::Conn;
use crate::error::{BenchError, Result};

/// Runs the parallel scenario with `streams` streams.
pub async fn run(ctx: &Ctx<'_>, streams: usize) -> Result<Measurement> {
    let total = ctx.config.parallel_bytes;
    let mut m = Measurement::default();
    for upload in [true, false] {
        let mut conns = Vec::with_capacity(streams);
        for _ in 0..streams {
            conns.push(ctx.route.connect(ctx.dest).await?);
        }
        let (go_tx, go_rx) = watch::channel(false);
        let mut tasks: JoinSet<Result<Conn>> = JoinSet::new();
        let per = total / streams as u64;
        for (i, mut c) in conns.into_iter().enumerate() {
            // The last stream carries the remainder so the total is exact.
            let len = if i + 1 == streams {
                total - per * (streams as u64 - 1)
            } else {
                per
            };
            let mut go = go_rx.clone();
            tasks.spawn(async move {
                go.wait_for(|v| *v)
                    .await
                    .map_err(|_| BenchError::Protocol("start signal lost".into()))?;
                if upload {
                    c.upload(seed(), len).await?;
                } else {
                    c.download(seed(), len).await?;
                }
                Ok(c)
            });
        }
        let cpu = CpuMark::take(ctx.pids)?;
        let t0 = Instant::now();
        go_tx
            .send(true)
            .map_err(|_| BenchError::Protocol("every stream task ended before the start".into()))?;
        let mut done = Vec::with_capacity(streams);
        let mut first_err = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(c)) => done.push(c),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(BenchError::Protocol(format!(
                        "a stream task panicked: {e}"
                    )));
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu.map(|c| c.per_gib(total)).transpose()?;
        for c in done {
            c.close().await;
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let dir = if upload { "upload" } else { "download" };
        m.push(dir, "MiB/s", total as f64 / MIB / secs);
        if let Some(cpu) = cpu {
            m.push(format!("{dir} CPU"), "s/GiB", cpu);
        }
    }
    Ok(m)
}
