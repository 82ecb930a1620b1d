//! Free loopback ports for processes that refuse port 0.
//!
//! Upstream's flags (and ours) reject 0 for agent, health and admin ports and demand
//! 1024–49151, so the harness must choose concrete ports. It picks them at random from a range
//! below Linux's ephemeral range (so the kernel never hands them out to outgoing connections
//! in the meantime), checks that they can be bound right now, and never hands the same port
//! out twice in one process (tests of one binary run in parallel threads).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Mutex, OnceLock};

use rand::Rng;

use crate::error::{HarnessError, Result};

/// Lowest port handed out. Above the well-known and most registered service ports.
pub const PORT_RANGE_START: u16 = 20_000;
/// Highest port handed out: just below Linux's default ephemeral range (32768–60999), so
/// outgoing connections never take a port between its allocation and its use.
pub const PORT_RANGE_END: u16 = 32_767;
/// How many random candidates are tried before giving up. Each try costs one bind.
pub const PORT_ATTEMPTS: usize = 500;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

fn bindable(port: u16) -> bool {
    // Both the loopback and the wildcard address must be free: some listeners bind "" (all).
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
        && TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).is_ok()
}

/// A TCP port that is free now and that this process has not handed out before.
pub fn free_port() -> Result<u16> {
    let mut rng = rand::thread_rng();
    for _ in 0..PORT_ATTEMPTS {
        let port = rng.gen_range(PORT_RANGE_START..=PORT_RANGE_END);
        {
            let mut set = handed_out()
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if set.contains(&port) || !bindable(port) {
                continue;
            }
            set.insert(port);
        }
        return Ok(port);
    }
    Err(HarnessError::Process(format!(
        "no free TCP port found in {PORT_RANGE_START}-{PORT_RANGE_END} after {PORT_ATTEMPTS} tries"
    )))
}

/// A loopback port on which nothing listens (a "closed port" destination for dial tests).
pub fn closed_port() -> Result<u16> {
    free_port()
}
