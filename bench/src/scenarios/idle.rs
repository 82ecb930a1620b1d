//! Many concurrent idle tunnels on one agent: how many open, how fast, and what each costs
//! the server and the agent in resident memory.
//!
//! The destination is a separate holder process (so the bench's own descriptor budget only
//! pays for the client side). Every tunnel needs one descriptor in each of four processes
//! (bench, holder, server, agent), all under the same `RLIMIT_NOFILE`; when that limit (or the
//! ephemeral port range of a single-address path) cannot fit the requested count, the
//! scenario opens as many as fit and says why. After opening, every tunnel is proven alive by
//! a one-byte echo; a tunnel that does not echo fails the scenario.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Ctx, Measurement};
use crate::config::{Frontend, PathSpec};
use crate::conn::Conn;
use crate::error::{BenchError, Result};
use crate::procfs;
use crate::sinks::Holder;

/// Descriptors kept free for everything but the tunnels (listeners, log files, epoll, the
/// runtimes, the destination service's connections) in each process.
pub const FD_RESERVE: u64 = 256;
/// Ephemeral ports kept free on a single source/destination address pair, for the rest of
/// the machine's connections.
pub const PORT_RESERVE: u64 = 1_000;
/// Dials in flight while opening. 64 keeps both cores busy without making each dial wait
/// behind thousands of others (which would trip the dial timeout).
pub const IDLE_OPEN_CONCURRENCY: usize = 64;
/// Echo checks in flight while proving the tunnels alive.
pub const IDLE_VERIFY_CONCURRENCY: usize = 64;
/// Pause after the last open before reading RSS, so the server's and agent's per-tunnel
/// allocations (tasks, buffers) have settled.
pub const IDLE_SETTLE: Duration = Duration::from_secs(1);
/// Loopback addresses the holder listens on (127.0.0.1–127.0.0.4): the agent's connections to
/// the destination are spread over them, multiplying the ephemeral ports available.
pub const HOLDER_ADDRS: u8 = 4;
/// Upper bound on one echo check of an idle tunnel.
pub const IDLE_VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many tunnels fit, and why fewer than asked if so.
fn budget(path: PathSpec, count: usize) -> Result<(usize, Option<String>)> {
    let limit = procfs::nofile_soft()?;
    let used = procfs::own_open_fds()?;
    let fd_room = limit.saturating_sub(used + FD_RESERVE);
    let mut cap = fd_room;
    let mut why = format!(
        "RLIMIT_NOFILE is {limit} (the hard limit; raise it with `ulimit -Hn` as root): every tunnel needs one descriptor in each of the bench, the destination holder, the proxy-server and the proxy-agent, which leaves room for {fd_room}"
    );
    if let Some(ports) = procfs::ephemeral_ports() {
        let per_pair = ports.saturating_sub(PORT_RESERVE);
        let tcp_frontend = matches!(
            path,
            PathSpec::Proxy {
                frontend: Frontend::ConnectTcp,
                ..
            }
        );
        if tcp_frontend && per_pair < cap {
            cap = per_pair;
            why = format!(
                "the ephemeral port range ({ports} ports) limits connections from 127.0.0.1 to the frontend's single address to {per_pair}"
            );
        }
        let to_holder = per_pair * u64::from(HOLDER_ADDRS);
        if to_holder < cap {
            cap = to_holder;
            why = format!(
                "the ephemeral port range ({ports} ports) limits connections to the holder's {HOLDER_ADDRS} addresses to {to_holder}"
            );
        }
    }
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    if cap >= count {
        Ok((count, None))
    } else {
        Ok((
            cap,
            Some(format!("capped at {cap} of {count} tunnels: {why}")),
        ))
    }
}

/// Runs the idle-tunnel scenario for `count` tunnels.
pub async fn run(ctx: &Ctx<'_>, count: usize) -> Result<Measurement> {
    let holder = Holder::spawn(ctx.holder_exe, HOLDER_ADDRS).await?;
    let addrs = holder.addrs().to_vec();
    let (target, cap_note) = budget(ctx.path, count)?;
    let rss_before = match ctx.pids {
        Some(p) => Some((procfs::rss_kib(p.server)?, procfs::rss_kib(p.agent)?)),
        None => None,
    };

    let sem = Arc::new(Semaphore::new(IDLE_OPEN_CONCURRENCY));
    let mut tasks: JoinSet<Result<Conn>> = JoinSet::new();
    let mut tunnels: Vec<Conn> = Vec::with_capacity(target);
    let mut first_err: Option<BenchError> = None;
    let t0 = Instant::now();
    for i in 0..target {
        while let Some(done) = tasks.try_join_next() {
            collect(done, &mut tunnels, &mut first_err);
        }
        if first_err.is_some() {
            break;
        }
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BenchError::Protocol("dial semaphore closed".into()))?;
        let route = ctx.route.clone();
        let addr = addrs[i % addrs.len()];
        tasks.spawn(async move {
            let c = route.connect(addr).await;
            drop(permit);
            c
        });
    }
    while let Some(done) = tasks.join_next().await {
        collect(done, &mut tunnels, &mut first_err);
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let opened = tunnels.len();
    if opened == 0 {
        return Err(
            first_err.unwrap_or_else(|| BenchError::Protocol("no tunnel could be opened".into()))
        );
    }

    tokio::time::sleep(IDLE_SETTLE).await;
    let rss_after = match ctx.pids {
        Some(p) => Some((procfs::rss_kib(p.server)?, procfs::rss_kib(p.agent)?)),
        None => None,
    };

    // Prove every tunnel alive (after the RSS reading: echoing touches buffers).
    let checks = futures::stream::iter(tunnels.iter_mut().enumerate())
        .map(|(i, t)| async move {
            let mut b = [0u8; 1];
            match tokio::time::timeout(IDLE_VERIFY_TIMEOUT, t.round_trip(b"i", &mut b)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("idle tunnel {i} does not echo: {e}")),
                Err(_) => Err(format!(
                    "idle tunnel {i} did not echo within {IDLE_VERIFY_TIMEOUT:?}"
                )),
            }
        })
        .buffer_unordered(IDLE_VERIFY_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let dead: Vec<String> = checks.into_iter().filter_map(|r| r.err()).collect();
    if let Some(first) = dead.first() {
        return Err(BenchError::Protocol(format!(
            "{} of {opened} idle tunnels are not usable; first: {first}",
            dead.len()
        )));
    }

    let mut m = Measurement::default();
    m.push("opened", "count", opened as f64);
    m.push("opens/s", "1/s", opened as f64 / open_secs);
    if let (Some((s0, a0)), Some((s1, a1))) = (rss_before, rss_after) {
        let per = |before: u64, after: u64| (after as f64 - before as f64) / opened as f64;
        m.push("server RSS/tunnel", "KiB", per(s0, s1));
        m.push("agent RSS/tunnel", "KiB", per(a0, a1));
    }
    if let Some(note) = cap_note {
        m.notes.push(note);
    }
    if let Some(e) = first_err {
        m.notes.push(format!(
            "opened {opened} of {target}: opening stopped at the first failed dial: {e}"
        ));
    }
    drop(tunnels);
    drop(holder);
    Ok(m)
}

fn collect(
    done: std::result::Result<Result<Conn>, tokio::task::JoinError>,
    tunnels: &mut Vec<Conn>,
    first_err: &mut Option<BenchError>,
) {
    match done {
        Ok(Ok(c)) => tunnels.push(c),
        Ok(Err(e)) => {
            first_err.get_or_insert(e);
        }
        Err(e) => {
            first_err.get_or_insert(BenchError::Protocol(format!("a dial task panicked: {e}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_count_fits_the_budget_uncapped() {
        let (n, why) = budget(PathSpec::Direct, 10).expect("budget");
        assert_eq!((n, why), (10, None));
    }

    #[test]
    fn a_count_beyond_the_fd_limit_is_capped_with_the_reason() {
        let (n, why) = budget(PathSpec::Direct, usize::MAX).expect("budget");
        assert!(n < usize::MAX);
        let why = why.expect("a reason for the cap");
        assert!(why.contains("capped at"), "{why}");
    }
}
