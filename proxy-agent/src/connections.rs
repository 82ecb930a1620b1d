//! The connection table of one server connection, as plain data (no I/O, no tasks).
//!
//! Two kinds of entries live here:
//! * **pending dials**, keyed by the dialer's `random`, holding whatever lets the owner cancel the
//!   dial (`D`);
//! * **established connections**, keyed by the `connectID` this table allocated, holding whatever
//!   the owner uses to reach the connection (`C`, its writer queue).
//!
//! The table is the single place where the DIAL_CLS / dial-completion race is decided: a dial's
//! outcome is reported with [`ConnectionTable::complete_dial`] or
//! [`ConnectionTable::fail_dial`], and cancellation with [`ConnectionTable::cancel_dial`]; whichever
//! comes first removes the pending entry, so exactly one of "cancelled" and "DIAL_RSP sent"
//! happens for every dial.

use std::collections::HashMap;

/// `CloseResponse.error` for DATA naming a connectID this agent does not know (upstream's text).
pub const UNRECOGNIZED_CONNECT_ID: &str = "unrecognized connectID";

/// `CloseResponse.error` for CLOSE_REQ naming a connectID this agent does not know (upstream's
/// text, capitalised as upstream does).
pub const UNKNOWN_CONNECT_ID: &str = "Unknown connectID";

/// Why a dial could not be registered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartDialError {
    /// A dial with the same `random` is still pending on this server connection.
    #[error("a dial with id {0} is already pending on this server connection")]
    DuplicateRandom(i64),
    /// The per-connection bound on pending dials is reached.
    #[error("too many pending dials on this server connection ({0}); retry later")]
    TooManyPending(usize),
}

/// Pending dials and established connections of one server connection.
#[derive(Debug)]
pub struct ConnectionTable<D, C> {
    next_connect_id: i64,
    max_pending: usize,
    pending: HashMap<i64, D>,
    established: HashMap<i64, C>,
}

impl<D, C> ConnectionTable<D, C> {
    /// An empty table allowing at most `max_pending` concurrent dials. ConnectIDs start at 1,
    /// as upstream's (0 means "no connection" on the wire).
    pub fn new(max_pending: usize) -> Self {
        ConnectionTable {
            next_connect_id: 1,
            max_pending,
            pending: HashMap::new(),
            established: HashMap::new(),
        }
    }

    /// Registers a dial in progress.
    pub fn start_dial(&mut self, random: i64, handle: D) -> Result<(), StartDialError> {
        if self.pending.contains_key(&random) {
            return Err(StartDialError::DuplicateRandom(random));
        }
        if self.pending.len() >= self.max_pending {
            return Err(StartDialError::TooManyPending(self.max_pending));
        }
        self.pending.insert(random, handle);
        Ok(())
    }

    /// DIAL_CLS: removes the pending dial and hands back its handle so the caller can cancel it.
    /// `None` if the dial already completed (its DIAL_RSP is out) or never existed.
    pub fn cancel_dial(&mut self, random: i64) -> Option<D> {
        self.pending.remove(&random)
    }

    /// A dial succeeded. If it is still pending, the connection is registered under a fresh
    /// connectID, returned as `Ok` (the caller sends DIAL_RSP and starts the pumps). If it was
    /// cancelled meanwhile, `Err` hands the connection back to be closed without any DIAL_RSP.
    pub fn complete_dial(&mut self, random: i64, conn: C) -> Result<i64, C> {
        if self.pending.remove(&random).is_none() {
            return Err(conn);
        }
        let id = self.next_connect_id;
        // i64 overflow would need 9.2e18 connections on one server connection.
        self.next_connect_id = self.next_connect_id.saturating_add(1);
        self.established.insert(id, conn);
        Ok(id)
    }

    /// A dial failed: true if it was still pending (the caller sends the error DIAL_RSP),
    /// false if it had been cancelled (nothing is sent).
    pub fn fail_dial(&mut self, random: i64) -> bool {
        self.pending.remove(&random).is_some()
    }

    /// The established connection `connect_id`, if known.
    pub fn get(&self, connect_id: i64) -> Option<&C> {
        self.established.get(&connect_id)
    }

    /// Forgets an established connection (closed by either side), returning its handle.
    pub fn remove(&mut self, connect_id: i64) -> Option<C> {
        self.established.remove(&connect_id)
    }

    /// Number of dials in progress.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Number of established connections.
    pub fn established_len(&self) -> usize {
        self.established.len()
    }

    /// Empties the table (the server connection ended), returning every pending handle and
    /// every established connection for cleanup.
    pub fn clear(&mut self) -> (Vec<D>, Vec<(i64, C)>) {
        (
            self.pending.drain().map(|(_, d)| d).collect(),
            self.established.drain().collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Table = ConnectionTable<&'static str, &'static str>;

    #[test]
    fn connect_ids_start_at_one_and_increase_per_success() {
        let mut t = Table::new(10);
        t.start_dial(100, "d1").expect("start");
        t.start_dial(200, "d2").expect("start");
        t.start_dial(300, "d3").expect("start");
        assert_eq!(t.complete_dial(200, "c2"), Ok(1));
        assert!(t.fail_dial(300));
        assert_eq!(t.complete_dial(100, "c1"), Ok(2));
        assert_eq!(t.get(1), Some(&"c2"));
        assert_eq!(t.get(2), Some(&"c1"));
        assert_eq!(t.pending_len(), 0);
        assert_eq!(t.established_len(), 2);
    }

    #[test]
    fn cancel_before_completion_wins_and_the_connection_is_handed_back() {
        let mut t = Table::new(10);
        t.start_dial(7, "dial").expect("start");
        assert_eq!(t.cancel_dial(7), Some("dial"));
        assert_eq!(t.complete_dial(7, "sock"), Err("sock"));
        assert_eq!(t.established_len(), 0);
        // A later failure of the same dial is not reported either.
        assert!(!t.fail_dial(7));
    }

    #[test]
    fn completion_before_cancel_wins_and_the_cancel_is_a_no_op() {
        let mut t = Table::new(10);
        t.start_dial(7, "dial").expect("start");
        assert_eq!(t.complete_dial(7, "sock"), Ok(1));
        assert_eq!(t.cancel_dial(7), None);
        assert_eq!(t.get(1), Some(&"sock"));
    }

    #[test]
    fn failed_dials_do_not_consume_connect_ids() {
        let mut t = Table::new(10);
        t.start_dial(1, "a").expect("start");
        assert!(t.fail_dial(1));
        t.start_dial(2, "b").expect("start");
        assert_eq!(t.complete_dial(2, "c"), Ok(1));
    }

    #[test]
    fn duplicate_random_and_pending_bound_are_refused() {
        let mut t = Table::new(2);
        t.start_dial(1, "a").expect("start");
        assert_eq!(
            t.start_dial(1, "b"),
            Err(StartDialError::DuplicateRandom(1))
        );
        t.start_dial(2, "b").expect("start");
        assert_eq!(t.start_dial(3, "c"), Err(StartDialError::TooManyPending(2)));
        // Completing one frees a slot.
        assert_eq!(t.complete_dial(1, "x"), Ok(1));
        t.start_dial(3, "c").expect("room again");
    }

    #[test]
    fn unknown_ids_are_not_found_and_removal_is_idempotent() {
        let mut t = Table::new(2);
        assert_eq!(t.get(1), None);
        t.start_dial(5, "d").expect("start");
        let id = t.complete_dial(5, "c").expect("complete");
        assert_eq!(t.remove(id), Some("c"));
        assert_eq!(t.remove(id), None);
        assert_eq!(t.get(id), None);
    }

    #[test]
    fn clear_returns_everything_for_cleanup() {
        let mut t = Table::new(5);
        t.start_dial(1, "p1").expect("start");
        t.start_dial(2, "p2").expect("start");
        t.start_dial(3, "p3").expect("start");
        t.complete_dial(3, "c").expect("complete");
        let (mut pending, established) = t.clear();
        pending.sort();
        assert_eq!(pending, vec!["p1", "p2"]);
        assert_eq!(established, vec![(1, "c")]);
        assert_eq!(t.pending_len() + t.established_len(), 0);
    }
}
