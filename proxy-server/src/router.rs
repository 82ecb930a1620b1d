//! Which frontend owns which dial and which connection: the server's routing tables.
//!
//! Plain data, no I/O. The shell looks up where a packet goes, then sends it. Keys follow the
//! wire protocol: a pending dial by the dialer's `random`, an established connection by the
//! agent stream it lives on and the agent's `connectID` (never rewritten, as upstream).
//!
//! Stricter than upstream, on purpose: a DIAL_RSP is only accepted from the agent stream the
//! DIAL_REQ was sent to, and a frontend may only send DATA/CLOSE_REQ for connections it dialled.

use std::collections::{HashMap, HashSet};

use crate::backends::BackendId;

/// Identifies one frontend: a gRPC `Proxy` stream or an HTTP CONNECT connection.
pub type FrontendId = u64;

/// A dial waiting for its DIAL_RSP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    frontend: FrontendId,
    backend: BackendId,
}

#[derive(Debug)]
struct Frontend<S> {
    sink: S,
    pending: HashSet<i64>,
    established: HashSet<(BackendId, i64)>,
}

/// The routing tables, generic over the shell's per-frontend sink `S`.
#[derive(Debug)]
pub struct Router<S> {
    pending: HashMap<i64, Pending>,
    established: HashMap<(BackendId, i64), FrontendId>,
    frontends: HashMap<FrontendId, Frontend<S>>,
}

impl<S> Default for Router<S> {
    fn default() -> Self {
        Router {
            pending: HashMap::new(),
            established: HashMap::new(),
            frontends: HashMap::new(),
        }
    }
}

/// A dial the router refused to start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BeginDialError {
    /// Another dial in flight already uses this `random`.
    #[error("dial id {0} is already in use by a pending dial")]
    DuplicateRandom(i64),
    /// The frontend was removed (its stream ended) meanwhile.
    #[error("frontend is gone")]
    UnknownFrontend,
}

/// What to do with a DIAL_RSP from an agent.
#[derive(Debug, PartialEq, Eq)]
pub enum DialResponseRoute<S> {
    /// Forward to this frontend; the connection is now established (if `connect_id` ≠ 0 and
    /// there was no error).
    Forward(FrontendId, S),
    /// Nobody waits for it (the dial was cancelled, timed out, or the id is bogus): the shell
    /// sends CLOSE_REQ for `connect_id` to the agent if it is non-zero, so the agent's socket
    /// does not leak.
    Unrecognized,
}

/// What a removed frontend leaves behind: the shell tells the agents.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FrontendLeftovers {
    /// Dials in flight: send DIAL_CLS{random} to the backend.
    pub pending: Vec<(i64, BackendId)>,
    /// Established connections: send CLOSE_REQ{connectID} to the backend.
    pub established: Vec<(BackendId, i64)>,
}

/// What a removed backend leaves behind: the shell tells the frontends.
#[derive(Debug, PartialEq, Eq)]
pub struct BackendLeftovers<S> {
    /// Dials in flight on the lost agent: fail them (upstream leaves them hanging, #126).
    pub pending: Vec<(i64, FrontendId, S)>,
    /// Established connections: send CLOSE_RSP{connectID} to their frontend.
    pub established: Vec<(i64, FrontendId, S)>,
}

impl<S: Clone> Router<S> {
    /// Registers a frontend and where its packets go.
    pub fn add_frontend(&mut self, id: FrontendId, sink: S) {
        self.frontends.insert(
            id,
            Frontend {
                sink,
                pending: HashSet::new(),
                established: HashSet::new(),
            },
        );
    }

    /// Records a dial sent (about to be sent) to `backend` on behalf of `frontend`.
    pub fn begin_dial(
        &mut self,
        frontend: FrontendId,
        random: i64,
        backend: BackendId,
    ) -> Result<(), BeginDialError> {
        if self.pending.contains_key(&random) {
            return Err(BeginDialError::DuplicateRandom(random));
        }
        let f = self
            .frontends
            .get_mut(&frontend)
            .ok_or(BeginDialError::UnknownFrontend)?;
        f.pending.insert(random);
        self.pending.insert(random, Pending { frontend, backend });
        Ok(())
    }

    /// Forgets a pending dial (frontend DIAL_CLS, or a dial timeout). Returns the backend it was
    /// sent to and the frontend's sink, if it was pending for `frontend` (any frontend if `None`).
    pub fn cancel_dial(
        &mut self,
        random: i64,
        frontend: Option<FrontendId>,
    ) -> Option<(BackendId, FrontendId, S)> {
        let p = *self.pending.get(&random)?;
        if frontend.is_some_and(|f| f != p.frontend) {
            return None;
        }
        self.pending.remove(&random);
        let f = self.frontends.get_mut(&p.frontend)?;
        f.pending.remove(&random);
        Some((p.backend, p.frontend, f.sink.clone()))
    }

    /// Routes a DIAL_RSP that arrived on `backend`.
    pub fn dial_response(
        &mut self,
        backend: BackendId,
        random: i64,
        connect_id: i64,
        failed: bool,
    ) -> DialResponseRoute<S> {
        match self.pending.get(&random) {
            Some(p) if p.backend == backend => {}
            _ => return DialResponseRoute::Unrecognized,
        }
        let Some(p) = self.pending.remove(&random) else {
            return DialResponseRoute::Unrecognized;
        };
        let Some(f) = self.frontends.get_mut(&p.frontend) else {
            return DialResponseRoute::Unrecognized;
        };
        f.pending.remove(&random);
        if !failed && connect_id != 0 {
            if self.established.contains_key(&(backend, connect_id)) {
                // The agent reused a live connectID: refuse rather than cross two streams.
                return DialResponseRoute::Unrecognized;
            }
            f.established.insert((backend, connect_id));
            self.established.insert((backend, connect_id), p.frontend);
        }
        DialResponseRoute::Forward(p.frontend, f.sink.clone())
    }

    /// Where DATA from `backend` for `connect_id` goes.
    pub fn route_from_agent(&self, backend: BackendId, connect_id: i64) -> Option<(FrontendId, S)> {
        let fid = *self.established.get(&(backend, connect_id))?;
        self.frontends.get(&fid).map(|f| (fid, f.sink.clone()))
    }

    /// The agent closed a connection (CLOSE_RSP): forget it and say whom to tell.
    pub fn close_from_agent(
        &mut self,
        backend: BackendId,
        connect_id: i64,
    ) -> Option<(FrontendId, S)> {
        let fid = self.established.remove(&(backend, connect_id))?;
        let f = self.frontends.get_mut(&fid)?;
        f.established.remove(&(backend, connect_id));
        Some((fid, f.sink.clone()))
    }

    /// The backend that carries `connect_id` for this frontend, if the frontend owns it.
    pub fn route_from_frontend(&self, frontend: FrontendId, connect_id: i64) -> Option<BackendId> {
        self.frontends
            .get(&frontend)?
            .established
            .iter()
            .find(|(_, c)| *c == connect_id)
            .map(|(b, _)| *b)
    }

    /// Whether the frontend has dialled at all (for upstream's "backend not initialized").
    pub fn frontend_has_dialled(&self, frontend: FrontendId) -> bool {
        self.frontends
            .get(&frontend)
            .is_some_and(|f| !f.pending.is_empty() || !f.established.is_empty())
    }

    /// Removes a frontend whose stream or socket ended.
    pub fn remove_frontend(&mut self, id: FrontendId) -> FrontendLeftovers {
        let Some(f) = self.frontends.remove(&id) else {
            return FrontendLeftovers::default();
        };
        let mut left = FrontendLeftovers::default();
        for random in f.pending {
            if let Some(p) = self.pending.remove(&random) {
                left.pending.push((random, p.backend));
            }
        }
        for key in f.established {
            self.established.remove(&key);
            left.established.push(key);
        }
        left.pending.sort_unstable();
        left.established.sort_unstable();
        left
    }

    /// Removes everything that lived on a lost agent stream.
    pub fn remove_backend(&mut self, backend: BackendId) -> BackendLeftovers<S> {
        let mut left = BackendLeftovers {
            pending: Vec::new(),
            established: Vec::new(),
        };
        let randoms: Vec<i64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.backend == backend)
            .map(|(r, _)| *r)
            .collect();
        for random in randoms {
            if let Some(p) = self.pending.remove(&random) {
                if let Some(f) = self.frontends.get_mut(&p.frontend) {
                    f.pending.remove(&random);
                    left.pending.push((random, p.frontend, f.sink.clone()));
                }
            }
        }
        let keys: Vec<(BackendId, i64)> = self
            .established
            .keys()
            .filter(|(b, _)| *b == backend)
            .copied()
            .collect();
        for key in keys {
            if let Some(fid) = self.established.remove(&key) {
                if let Some(f) = self.frontends.get_mut(&fid) {
                    f.established.remove(&key);
                    left.established.push((key.1, fid, f.sink.clone()));
                }
            }
        }
        left.pending.sort_unstable_by_key(|(r, _, _)| *r);
        left.established.sort_unstable_by_key(|(c, _, _)| *c);
        left
    }

    /// Frontends registered (open gRPC streams and HTTP CONNECT connections).
    pub fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    /// Dials in flight (for the `pending_backend_dials` gauge).
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Established connections (for the `established_connections` gauge).
    pub fn established_count(&self) -> usize {
        self.established.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: BackendId = BackendId(1);
    const B: BackendId = BackendId(2);

    fn router() -> Router<&'static str> {
        let mut r = Router::default();
        r.add_frontend(10, "f10");
        r.add_frontend(11, "f11");
        r
    }

    #[test]
    fn successful_dial_becomes_established_and_routes_both_ways() {
        let mut r = router();
        r.begin_dial(10, 555, A).expect("begin");
        assert_eq!(r.pending_count(), 1);
        assert_eq!(
            r.dial_response(A, 555, 1, false),
            DialResponseRoute::Forward(10, "f10")
        );
        assert_eq!(r.pending_count(), 0);
        assert_eq!(r.route_from_agent(A, 1), Some((10, "f10")));
        assert_eq!(r.route_from_frontend(10, 1), Some(A));
        assert_eq!(r.route_from_frontend(11, 1), None, "not the owner");
        assert_eq!(r.close_from_agent(A, 1), Some((10, "f10")));
        assert_eq!(r.route_from_agent(A, 1), None);
        assert_eq!(r.established_count(), 0);
    }

    #[test]
    fn failed_dial_is_forwarded_but_not_established() {
        let mut r = router();
        r.begin_dial(10, 1, A).expect("begin");
        assert_eq!(
            r.dial_response(A, 1, 0, true),
            DialResponseRoute::Forward(10, "f10")
        );
        assert_eq!(r.established_count(), 0);
    }

    #[test]
    fn dial_response_from_another_agent_or_unknown_random_is_unrecognized() {
        let mut r = router();
        r.begin_dial(10, 7, A).expect("begin");
        assert_eq!(
            r.dial_response(B, 7, 1, false),
            DialResponseRoute::Unrecognized
        );
        assert_eq!(
            r.dial_response(A, 8, 1, false),
            DialResponseRoute::Unrecognized
        );
        assert_eq!(r.pending_count(), 1, "the real dial is still pending");
    }

    #[test]
    fn cancelled_dial_makes_late_response_unrecognized() {
        let mut r = router();
        r.begin_dial(10, 7, A).expect("begin");
        assert_eq!(
            r.cancel_dial(7, Some(11)),
            None,
            "only the owner may cancel"
        );
        assert_eq!(r.cancel_dial(7, Some(10)), Some((A, 10, "f10")));
        assert_eq!(
            r.dial_response(A, 7, 3, false),
            DialResponseRoute::Unrecognized
        );
    }

    #[test]
    fn duplicate_random_is_refused() {
        let mut r = router();
        r.begin_dial(10, 7, A).expect("begin");
        assert_eq!(
            r.begin_dial(11, 7, B),
            Err(BeginDialError::DuplicateRandom(7))
        );
        assert_eq!(r.begin_dial(99, 8, B), Err(BeginDialError::UnknownFrontend));
    }

    #[test]
    fn reused_connect_id_on_same_backend_is_refused() {
        let mut r = router();
        r.begin_dial(10, 1, A).expect("begin");
        r.begin_dial(11, 2, A).expect("begin");
        assert!(matches!(
            r.dial_response(A, 1, 5, false),
            DialResponseRoute::Forward(..)
        ));
        assert_eq!(
            r.dial_response(A, 2, 5, false),
            DialResponseRoute::Unrecognized
        );
        assert_eq!(r.route_from_agent(A, 5), Some((10, "f10")));
    }

    #[test]
    fn same_connect_id_on_two_backends_does_not_collide() {
        let mut r = router();
        r.begin_dial(10, 1, A).expect("begin");
        r.begin_dial(11, 2, B).expect("begin");
        r.dial_response(A, 1, 1, false);
        r.dial_response(B, 2, 1, false);
        assert_eq!(r.route_from_agent(A, 1), Some((10, "f10")));
        assert_eq!(r.route_from_agent(B, 1), Some((11, "f11")));
    }

    #[test]
    fn removing_a_frontend_reports_its_dials_and_connections() {
        let mut r = router();
        r.begin_dial(10, 1, A).expect("begin");
        r.begin_dial(10, 2, B).expect("begin");
        r.dial_response(A, 1, 4, false);
        let left = r.remove_frontend(10);
        assert_eq!(left.pending, vec![(2, B)]);
        assert_eq!(left.established, vec![(A, 4)]);
        assert_eq!((r.pending_count(), r.established_count()), (0, 0));
        assert_eq!(r.remove_frontend(10), FrontendLeftovers::default());
    }

    #[test]
    fn removing_a_backend_fails_its_dials_and_closes_its_connections_only() {
        let mut r = router();
        r.begin_dial(10, 1, A).expect("begin");
        r.begin_dial(10, 2, A).expect("begin");
        r.begin_dial(11, 3, B).expect("begin");
        r.dial_response(A, 1, 1, false);
        r.dial_response(B, 3, 1, false);
        let left = r.remove_backend(A);
        assert_eq!(left.pending, vec![(2, 10, "f10")]);
        assert_eq!(left.established, vec![(1, 10, "f10")]);
        assert_eq!(
            r.route_from_agent(B, 1),
            Some((11, "f11")),
            "other agent untouched"
        );
        assert_eq!(r.established_count(), 1);
        assert!(r.frontend_has_dialled(11));
        assert!(!r.frontend_has_dialled(10));
    }
}
