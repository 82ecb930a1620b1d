//! The registry of connected agent streams ("backends") and the proxy strategies that pick one
//! for a dial. Plain data, no I/O: the async shell stores its stream handle as `H`.
//!
//! Differences from upstream, deliberate: a backend is keyed by its own [`BackendId`] (one per
//! agent stream), so two streams of the same agent id never collide in the connection tables.

use std::collections::{BTreeMap, HashMap};

use crate::config::ProxyStrategy;
use crate::identifiers::{dial_host, AgentIdentifiers};

/// Identifies one agent stream for its whole life; never reused within a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u64);

impl std::fmt::Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backend-{}", self.0)
    }
}

/// One registered agent stream.
#[derive(Debug)]
pub struct Backend<H> {
    pub agent_id: String,
    pub identifiers: AgentIdentifiers,
    /// Set by the agent's DRAIN: prefer other agents for new dials.
    pub draining: bool,
    /// The shell's handle (outbound sender, cancellation).
    pub handle: H,
}

/// All agent streams of this server.
#[derive(Debug)]
pub struct Backends<H> {
    next_id: u64,
    /// Ordered by id, i.e. by age: "an agent's first stream" is its oldest.
    streams: BTreeMap<BackendId, Backend<H>>,
    /// Agent id → its streams, oldest first.
    by_agent: HashMap<String, Vec<BackendId>>,
}

impl<H> Default for Backends<H> {
    fn default() -> Self {
        Backends {
            next_id: 1,
            streams: BTreeMap::new(),
            by_agent: HashMap::new(),
        }
    }
}

impl<H> Backends<H> {
    /// Registers a new agent stream.
    pub fn add(&mut self, agent_id: String, identifiers: AgentIdentifiers, handle: H) -> BackendId {
        let id = BackendId(self.next_id);
        self.next_id += 1;
        self.by_agent.entry(agent_id.clone()).or_default().push(id);
        self.streams.insert(
            id,
            Backend {
                agent_id,
                identifiers,
                draining: false,
                handle,
            },
        );
        id
    }

    /// Deregisters a stream; `None` if it was already gone.
    pub fn remove(&mut self, id: BackendId) -> Option<Backend<H>> {
        let backend = self.streams.remove(&id)?;
        if let Some(list) = self.by_agent.get_mut(&backend.agent_id) {
            list.retain(|b| *b != id);
            if list.is_empty() {
                self.by_agent.remove(&backend.agent_id);
            }
        }
        Some(backend)
    }

    /// The stream, if still registered.
    pub fn get(&self, id: BackendId) -> Option<&Backend<H>> {
        self.streams.get(&id)
    }

    /// Marks a stream draining; returns false if it is unknown.
    pub fn set_draining(&mut self, id: BackendId) -> bool {
        match self.streams.get_mut(&id) {
            Some(b) => {
                b.draining = true;
                true
            }
            None => false,
        }
    }

    /// Number of distinct agents connected.
    pub fn agent_count(&self) -> usize {
        self.by_agent.len()
    }

    /// Number of agent streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Whether `strategy` has any agent to offer: the server's readiness uses the first strategy.
    pub fn ready_for(&self, strategy: ProxyStrategy) -> bool {
        self.streams.values().any(|b| match strategy {
            ProxyStrategy::Default => true,
            ProxyStrategy::DestHost => !b.identifiers.hosts.is_empty(),
            ProxyStrategy::DefaultRoute => b.identifiers.default_route,
        })
    }

    /// Picks a stream for a dial to `address`, trying `strategies` in order; `start` is a random
    /// number used to spread load (upstream starts its scan at a random agent).
    pub fn select(
        &self,
        strategies: &[ProxyStrategy],
        address: &str,
        start: usize,
    ) -> Option<BackendId> {
        strategies.iter().find_map(|s| match s {
            ProxyStrategy::Default => self.pick_among(self.agents_sorted(|_| true), start),
            ProxyStrategy::DestHost => {
                let host = dial_host(address);
                let agents = self.agents_sorted(|b| b.identifiers.hosts.iter().any(|h| h == host));
                // The first matching agent, as upstream; no random spreading for one host.
                self.pick_among(agents, 0)
            }
            ProxyStrategy::DefaultRoute => {
                self.pick_among(self.agents_sorted(|b| b.identifiers.default_route), start)
            }
        })
    }

    /// Agent ids whose oldest stream matches, in a stable order (by first stream id).
    fn agents_sorted(&self, matches: impl Fn(&Backend<H>) -> bool) -> Vec<&[BackendId]> {
        let mut agents: Vec<&[BackendId]> = self
            .by_agent
            .values()
            .filter(|list| {
                list.first()
                    .and_then(|id| self.streams.get(id))
                    .is_some_and(&matches)
            })
            .map(Vec::as_slice)
            .collect();
        agents.sort_by_key(|list| list.first().copied());
        agents
    }

    /// Scans agents from `start`, taking each agent's first non-draining stream; falls back to
    /// the first draining stream seen.
    fn pick_among(&self, agents: Vec<&[BackendId]>, start: usize) -> Option<BackendId> {
        if agents.is_empty() {
            return None;
        }
        let n = agents.len();
        let mut fallback = None;
        for i in 0..n {
            for id in agents[(start + i) % n] {
                match self.streams.get(id) {
                    Some(b) if !b.draining => return Some(*id),
                    Some(_) if fallback.is_none() => fallback = Some(*id),
                    _ => {}
                }
            }
        }
        fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProxyStrategy::*;

    fn ids(raw: &str) -> AgentIdentifiers {
        AgentIdentifiers::parse(raw)
    }

    #[test]
    fn default_strategy_prefers_non_draining_agents() {
        let mut b = Backends::default();
        let a = b.add("a".into(), ids(""), ());
        let c = b.add("c".into(), ids(""), ());
        b.set_draining(a);
        for start in 0..4 {
            assert_eq!(b.select(&[Default], "x:1", start), Some(c));
        }
        b.set_draining(c);
        assert!(
            b.select(&[Default], "x:1", 0).is_some(),
            "falls back to draining"
        );
    }

    #[test]
    fn default_strategy_uses_an_agents_oldest_stream_and_spreads_over_agents() {
        let mut b = Backends::default();
        let a1 = b.add("a".into(), ids(""), ());
        let _a2 = b.add("a".into(), ids(""), ());
        let c = b.add("c".into(), ids(""), ());
        let picks: std::collections::HashSet<_> = (0..2)
            .filter_map(|s| b.select(&[Default], "x:1", s))
            .collect();
        assert_eq!(picks, [a1, c].into_iter().collect());
    }

    #[test]
    fn dest_host_matches_identifiers_and_falls_through() {
        let mut b = Backends::default();
        let n1 = b.add("n1".into(), ids("ipv4=10.0.0.1&host=node1"), ());
        let n2 = b.add("n2".into(), ids("ipv6=fd00::2&default-route=true"), ());
        assert_eq!(b.select(&[DestHost], "10.0.0.1:10250", 7), Some(n1));
        assert_eq!(b.select(&[DestHost], "node1:10250", 7), Some(n1));
        assert_eq!(b.select(&[DestHost], "[fd00::2]:10250", 7), Some(n2));
        assert_eq!(b.select(&[DestHost], "10.9.9.9:1", 0), None);
        assert_eq!(
            b.select(&[DestHost, DefaultRoute], "10.9.9.9:1", 0),
            Some(n2)
        );
        assert!(b.select(&[DestHost, Default], "10.9.9.9:1", 0).is_some());
    }

    #[test]
    fn removing_a_stream_keeps_the_agents_other_streams() {
        let mut b = Backends::default();
        let a1 = b.add("a".into(), ids(""), ());
        let a2 = b.add("a".into(), ids(""), ());
        assert_eq!(b.agent_count(), 1);
        assert!(b.remove(a1).is_some());
        assert!(b.remove(a1).is_none());
        assert_eq!(b.select(&[Default], "x:1", 0), Some(a2));
        b.remove(a2);
        assert_eq!(b.agent_count(), 0);
        assert_eq!(b.select(&[Default], "x:1", 0), None);
    }

    #[test]
    fn readiness_follows_the_strategy() {
        let mut b = Backends::default();
        assert!(!b.ready_for(Default));
        b.add("a".into(), ids(""), ());
        assert!(b.ready_for(Default));
        assert!(!b.ready_for(DestHost));
        assert!(!b.ready_for(DefaultRoute));
        b.add("b".into(), ids("host=n&default-route=1"), ());
        assert!(b.ready_for(DestHost) && b.ready_for(DefaultRoute));
    }
}
