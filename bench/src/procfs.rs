//! CPU time, resident memory and open files of processes, from `/proc`; the open-file limit.

use std::path::PathBuf;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{sysconf, SysconfVar};

use crate::error::{BenchError, Result};

/// Clock ticks per second when `sysconf(_SC_CLK_TCK)` cannot tell (Linux's USER_HZ is 100 on
/// every mainstream architecture).
pub const DEFAULT_CLK_TCK: f64 = 100.0;

fn clk_tck() -> f64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => DEFAULT_CLK_TCK,
    }
}

fn read(path: PathBuf) -> Result<String> {
    std::fs::read_to_string(&path).map_err(|e| BenchError::Proc {
        path,
        reason: e.to_string(),
    })
}

/// Parses user + system CPU seconds out of a `/proc/<pid>/stat` line.
fn parse_stat_cpu(stat: &str, ticks_per_second: f64) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces or ')': the fields
    // after the LAST ')' are space separated, starting with field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14, stime field 15 (1-based) ⇒ indexes 11 and 12 after field 2.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second)
}

/// User + system CPU seconds consumed so far by every thread of process `pid`.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = read(path.clone())?;
    parse_stat_cpu(&text, clk_tck()).ok_or_else(|| BenchError::Proc {
        path,
        reason: "no utime/stime fields".to_string(),
    })
}

/// Parses `VmRSS` (KiB) out of `/proc/<pid>/status`.
fn parse_vmrss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = read(path.clone())?;
    parse_vmrss_kib(&text).ok_or_else(|| BenchError::Proc {
        path,
        reason: "no VmRSS line (has the process exited?)".to_string(),
    })
}

/// Sums `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` out of a
/// `/proc/<pid>/task/<tid>/status` text.
fn parse_context_switches(status: &str) -> Option<u64> {
    let mut total = None;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key == "voluntary_ctxt_switches" || key == "nonvoluntary_ctxt_switches" {
            let n: u64 = value.trim().parse().ok()?;
            total = Some(total.unwrap_or(0) + n);
        }
    }
    total
}

/// Context switches so far (voluntary and not) over every thread of process `pid`: how often
/// its threads went to sleep or were preempted, each a wake-up to pay for. A count, so far
/// steadier on a shared machine than any latency. Threads that already exited are not counted,
/// which is why the proxies' long-lived worker threads are what it measures.
pub fn context_switches(pid: u32) -> Result<u64> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let tasks = std::fs::read_dir(&dir).map_err(|e| BenchError::Proc {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let mut total = 0;
    for task in tasks.flatten() {
        // A thread may exit between listing and reading: skip it rather than fail.
        let Ok(text) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += parse_context_switches(&text).unwrap_or(0);
    }
    Ok(total)
}

/// Number of file descriptors this process has open.
pub fn own_open_fds() -> Result<u64> {
    let path = PathBuf::from("/proc/self/fd");
    let dir = std::fs::read_dir(&path).map_err(|e| BenchError::Proc {
        path,
        reason: e.to_string(),
    })?;
    Ok(dir.count() as u64)
}

/// The open-file limit after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NofileLimit {
    /// Soft limit before raising.
    pub soft_before: u64,
    /// Soft limit now (children inherit it).
    pub soft: u64,
    /// Hard limit (the ceiling an unprivileged process cannot pass).
    pub hard: u64,
}

/// Open files the bench asks for when it may raise the hard limit: 100,000 tunnels plus
/// headroom. Cost: none until used; the kernel allocates descriptors lazily.
pub const WANTED_NOFILE: u64 = 262_144;

/// Raises this process's `RLIMIT_NOFILE` (the hard limit too when privileged, up to
/// [`WANTED_NOFILE`] and `fs.nr_open`; then the soft limit to the hard one), so that the
/// idle-tunnel scenarios can hold as many sockets as the system allows; child processes
/// (server, agent, destination holder) inherit the raised limit.
pub fn raise_nofile() -> Result<NofileLimit> {
    let (soft_before, mut hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| BenchError::io("reading RLIMIT_NOFILE", e.into()))?;
    // As root (CAP_SYS_RESOURCE) the hard limit itself may be raised, up to fs.nr_open; the
    // 100,000-tunnel case needs about that many descriptors in each of four processes.
    if hard < WANTED_NOFILE {
        let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let target = WANTED_NOFILE.min(ceiling);
        if target > hard && setrlimit(Resource::RLIMIT_NOFILE, target, target).is_ok() {
            hard = target;
        }
    }
    if soft_before < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| BenchError::io("raising RLIMIT_NOFILE to the hard limit", e.into()))?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| BenchError::io("reading RLIMIT_NOFILE", e.into()))?;
    Ok(NofileLimit {
        soft_before,
        soft,
        hard,
    })
}

/// The soft open-file limit in force now.
pub fn nofile_soft() -> Result<u64> {
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| BenchError::io("reading RLIMIT_NOFILE", e.into()))?;
    Ok(soft)
}

/// Size of the kernel's ephemeral port range (`ip_local_port_range`): the most connections
/// one source address can open to one destination address and port.
pub fn ephemeral_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    let lo = it.next()?.ok()?;
    let hi = it.next()?.ok()?;
    hi.checked_sub(lo).map(|d| d + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_spaces_and_parens_in_the_command_name() {
        let line = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 4 0";
        assert_eq!(parse_stat_cpu(line, 100.0), Some(4.0));
        assert_eq!(parse_stat_cpu("garbage", 100.0), None);
    }

    #[test]
    fn vmrss_is_read_in_kib() {
        let status = "Name:\tx\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss_kib(status), Some(12345));
        assert_eq!(parse_vmrss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn context_switches_add_voluntary_and_involuntary() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(parse_context_switches(status), Some(127));
        assert_eq!(parse_context_switches("Name:\tx\n"), None);
        assert_eq!(
            parse_context_switches("voluntary_ctxt_switches:\tlots\n"),
            None
        );
    }

    #[test]
    fn own_process_figures_are_readable() {
        let pid = std::process::id();
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(
            context_switches(pid).expect("own tasks") > 0,
            "a sleep switches"
        );
        assert!(cpu_seconds(pid).expect("own stat") >= 0.0);
        assert!(rss_kib(pid).expect("own status") > 0);
        assert!(own_open_fds().expect("own fds") >= 3);
    }

    #[test]
    fn raising_nofile_reaches_the_hard_limit() {
        let l = raise_nofile().expect("setrlimit to the hard limit is always allowed");
        assert_eq!(l.soft, l.hard);
        assert!(l.soft >= l.soft_before);
    }
}
