//! Whether each peer broker answers, as one condition per peer, logged
//! once when it starts, summarised while it lasts and logged once when it
//! ends.
//!
//! Every Raft group on this broker talks to its peers on its own, so a peer
//! that is down fails the calls of every group it shares with this broker:
//! with 1,000 partitions, openraft logged one line per group per retry
//! (hundreds of megabytes in minutes). Those lines are off at the default
//! level; this is what an operator reads instead.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::types::{GroupId, NodeId};

/// A peer counts as unreachable once its calls have failed for this long
/// with none answered in between (a dropped packet or two is not an outage).
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(1);
/// While a peer stays unreachable, a summary is logged this often.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// What a call's outcome changed about its peer: what to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The peer has been failing for [`UNREACHABLE_AFTER`]: log it once.
    Unreachable,
    /// Still unreachable, [`SUMMARY_EVERY`] later: how long, and how many
    /// groups failed to reach it since the last summary.
    Still { for_: Duration, groups: usize },
    /// It answered again after being announced unreachable.
    Back { after: Duration },
}

#[derive(Debug)]
struct PeerState {
    /// The first failure since the peer last answered.
    failing_since: Instant,
    announced: bool,
    last_summary: Instant,
    groups: BTreeSet<GroupId>,
}

/// Per peer broker, the failures since it last answered.
#[derive(Debug, Default)]
pub struct Reachability {
    failing: Mutex<BTreeMap<NodeId, PeerState>>,
    /// Whether `failing` has any entry: every answered call asks, so the
    /// common case (every peer answers) takes no lock.
    any_failing: AtomicBool,
}

impl Reachability {
    /// Notes that a call of `group` to `peer` failed in transport (no
    /// answer: refused, unavailable, timed out).
    pub fn failed(&self, peer: NodeId, group: GroupId, now: Instant) -> Option<Change> {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        self.any_failing.store(true, Ordering::Relaxed);
        let state = failing.entry(peer).or_insert_with(|| PeerState {
            failing_since: now,
            announced: false,
            last_summary: now,
            groups: BTreeSet::new(),
        });
        state.groups.insert(group);
        if !state.announced {
            if now.duration_since(state.failing_since) < UNREACHABLE_AFTER {
                return None;
            }
            state.announced = true;
            state.last_summary = now;
            state.groups.clear();
            return Some(Change::Unreachable);
        }
        if now.duration_since(state.last_summary) < SUMMARY_EVERY {
            return None;
        }
        state.last_summary = now;
        let groups = std::mem::take(&mut state.groups).len();
        Some(Change::Still { for_: now.duration_since(state.failing_since), groups })
    }

    /// Notes that `peer` answered a call (whatever the answer said).
    pub fn answered(&self, peer: NodeId, now: Instant) -> Option<Change> {
        if !self.any_failing.load(Ordering::Relaxed) {
            return None;
        }
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let state = failing.remove(&peer);
        if failing.is_empty() {
            self.any_failing.store(false, Ordering::Relaxed);
        }
        let state = state?;
        state.announced.then(|| Change::Back { after: now.duration_since(state.failing_since) })
    }

    /// Logs `change` of `peer` (at `address`), if any.
    pub fn log(me: NodeId, peer: NodeId, address: &str, change: Option<Change>, error: &str) {
        match change {
            None => {}
            Some(Change::Unreachable) => tracing::warn!(
                broker = me,
                peer,
                address,
                %error,
                "peer broker unreachable; the Raft groups it shares with this one retry in the background \
                 (a summary follows every {SUMMARY_EVERY:?} while it lasts)"
            ),
            Some(Change::Still { for_, groups }) => tracing::warn!(
                broker = me,
                peer,
                address,
                unreachable_for = ?for_,
                groups,
                %error,
                "peer broker still unreachable"
            ),
            Some(Change::Back { after }) => {
                tracing::info!(broker = me, peer, address, unreachable_for = ?after, "peer broker reachable again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(partition: u32) -> GroupId {
        GroupId { topic_id: 1, partition }
    }

    /// A peer down for three minutes with 1,000 groups failing every 500 ms
    /// gives one line when it goes, one a minute, and one when it is back.
    #[test]
    fn an_outage_is_one_condition_not_a_line_per_group_and_retry() {
        let reachability = Reachability::default();
        let start = Instant::now();
        let mut changes = Vec::new();
        let mut at = start;
        while at < start + Duration::from_secs(180) {
            for partition in 0..1_000 {
                changes.extend(reachability.failed(2, group(partition), at));
            }
            at += Duration::from_millis(500);
        }
        changes.extend(reachability.answered(2, at));
        assert_eq!(changes.len(), 1 + 2 + 1, "{changes:?}");
        assert_eq!(changes[0], Change::Unreachable);
        assert!(matches!(changes[1], Change::Still { groups: 1_000, .. }), "{changes:?}");
        assert!(matches!(changes[3], Change::Back { after } if after >= Duration::from_secs(180)), "{changes:?}");
    }

    #[test]
    fn failures_an_answer_interrupts_are_not_an_outage() {
        let reachability = Reachability::default();
        let start = Instant::now();
        for step in 0..100u64 {
            let at = start + Duration::from_millis(300 * step);
            assert_eq!(reachability.failed(3, group(0), at), None);
            if step % 3 == 2 {
                assert_eq!(reachability.answered(3, at), None, "never announced, nothing to say");
            }
        }
    }

    #[test]
    fn peers_are_apart() {
        let reachability = Reachability::default();
        let start = Instant::now();
        reachability.failed(2, group(0), start);
        let later = start + UNREACHABLE_AFTER;
        assert_eq!(reachability.failed(2, group(0), later), Some(Change::Unreachable));
        assert_eq!(reachability.failed(3, group(0), later), None, "broker 3 just began failing");
        assert_eq!(reachability.answered(3, later), None);
        assert!(matches!(reachability.answered(2, later), Some(Change::Back { .. })));
    }
}
