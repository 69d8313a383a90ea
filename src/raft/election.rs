//! When a replica campaigns.
//!
//! openraft's own election timer is off (`enable_elect: false` in
//! [`super::raft_config`]). Each replica runs [`run_elections`] instead,
//! which adds what openraft 0.9 lacks:
//!
//! - **Pre-vote** (Ongaro's thesis, §9.6). Before it campaigns, a replica
//!   asks the other voters whether they would vote for its log now
//!   ([`would_vote`]). A voter says no while it hears from a leader, and to a
//!   log behind its own. A replica that cannot win therefore never raises
//!   its term. Without this, openraft lets such a replica campaign again and
//!   again; a voter that refuses it by log does not adopt its term, so the
//!   one replica that could win stayed a term behind and was refused in
//!   turn, for three simulated minutes (simulation seed 2581).
//! - **A fresh random timeout for every attempt.** openraft draws one per
//!   node for its whole life and checks it on a fixed tick, so voters whose
//!   timeouts fall on the same tick split every vote.
//!
//! openraft's leader lease still holds: a voter refuses votes until
//! `election_timeout_max` after it last heard from a leader, so a replica
//! that knew a leader waits that long on top of its timeout, and a voter
//! grants no pre-vote before the lease is out either.
//!
//! A replica hears from its leader through appends and snapshots, and
//! counts a vote it granted as hearing from one (Raft's timer rule);
//! [`Contact`] records when. A leader asked to hand over its leadership
//! still starts the chosen replica's election directly (`RaftCampaign`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use openraft::{Config, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::log_store::LogStore;
use super::network::Connections;
use super::types::{GroupId, LogId, NodeId, RaftNode};
use crate::sys::planted::{self, Bug};
use crate::sys::rng::random_u64;

/// When a replica last heard from a leader of its group.
#[derive(Debug)]
pub struct Contact {
    at: Mutex<Instant>,
    /// When this replica last granted a peer's pre-vote.
    pre_vote_granted: Mutex<Option<Instant>>,
}

impl Contact {
    /// Starts as if a leader had just been heard: a replica that opens
    /// waits a whole election timeout before it campaigns.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { at: Mutex::new(Instant::now()), pre_vote_granted: Mutex::new(None) })
    }

    pub fn touch(&self) {
        *self.at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long since a leader was last heard.
    pub fn silence(&self) -> Duration {
        self.at.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }

    fn granted_pre_vote(&self) {
        *self.pre_vote_granted.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether this replica granted a peer's pre-vote within `window`.
    fn granted_pre_vote_within(&self, window: Duration) -> bool {
        self.pre_vote_granted.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|at| at.elapsed() < window)
    }
}

/// openraft's leader lease (its `election_timeout_max`, as openraft sets
/// it): a voter refuses votes for this long after it last heard from a
/// leader.
pub fn leader_lease(config: &Config) -> Duration {
    Duration::from_millis(config.election_timeout_max)
}

/// A pre-vote request: the last entry of the candidate's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVote {
    pub last_log_id: Option<LogId>,
}

/// What a voter weighs when asked for a pre-vote.
pub struct Voter<'a> {
    pub raft: &'a RaftNode,
    pub log_store: &'a LogStore,
    pub contact: &'a Contact,
    /// While the replica waits to be repaired, the least log it may vote
    /// for (see `LogStore::repair_bar`); `None` if it may vote for none.
    pub abstaining: Option<Option<LogId>>,
    /// A leader heard within this long is alive.
    pub patience: Duration,
}

/// Whether this voter would vote for `request`'s candidate now: it is not
/// the leader itself, has not heard from one within `patience`, and the
/// candidate's log is at least as up to date as its own (and, while it is
/// being repaired, as the log it lost).
pub fn would_vote(voter: &Voter<'_>, request: &PreVote) -> bool {
    let yes = would_vote_now(voter, request);
    if yes {
        voter.contact.granted_pre_vote();
    }
    yes
}

fn would_vote_now(voter: &Voter<'_>, request: &PreVote) -> bool {
    if voter.raft.metrics().borrow().state == ServerState::Leader {
        return false;
    }
    if voter.contact.silence() < voter.patience {
        return false;
    }
    if planted::on(Bug::TruncateCommittedOnLeaderChange) {
        return true; // every candidate's log looks up to date
    }
    if let Some(bar) = voter.abstaining {
        if !covers(bar, request.last_log_id) {
            return false;
        }
    }
    request.last_log_id >= voter.log_store.last_log_id()
}

/// Whether a candidate whose log ends at `last` is at least as up to date
/// (Raft's order: term, then index) as the log a repairing replica lost,
/// whose last entry's term was at most `bar`'s and index at most `bar`'s.
pub fn covers(bar: Option<LogId>, last: Option<LogId>) -> bool {
    match (bar, last) {
        (Some(bar), Some(last)) => last >= bar,
        _ => false,
    }
}

/// Whether the voters in `granted` make a majority of every configuration
/// (two while the membership is joint).
pub fn is_quorum(configs: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    configs.iter().all(|config| config.intersection(granted).count() * 2 > config.len())
}

/// A replica leaves its try to a peer whose pre-vote it granted within
/// this fraction of the least election timeout (see [`run_elections`]):
/// long enough for the peer's pre-vote round and vote request to land.
const DEFER_PER_TIMEOUT: u32 = 10;

/// One replica's election driver.
pub struct Elector {
    pub raft: RaftNode,
    pub node_id: NodeId,
    pub group: GroupId,
    pub connections: Arc<Connections>,
    pub log_store: LogStore,
    pub abstaining: Arc<AtomicBool>,
    pub contact: Arc<Contact>,
    /// Election timeouts are drawn from this range, in milliseconds.
    pub timeout_ms: (u64, u64),
    /// [`leader_lease`]: voters refuse votes (and pre-votes, see
    /// [`would_vote`]) for this long after they last heard from a leader.
    pub lease: Duration,
}

/// Campaigns whenever the leader has been silent for a random election
/// timeout and a quorum would vote for this replica, until its Raft node
/// stops.
pub async fn run_elections(elector: Elector) {
    let Elector { raft, node_id, group, connections, log_store, abstaining, contact, timeout_ms: (min, max), lease } =
        elector;
    let running = raft.metrics();
    let mut first = true;
    // When this replica last tried (its own pace, apart from hearing from
    // a leader: a voter that tried a moment ago has still heard nobody).
    let mut tried: Option<Instant> = None;
    loop {
        let drawn = Duration::from_millis(min + random_u64() % (max.saturating_sub(min) + 1));
        let mut timeout;
        loop {
            if running.has_changed().is_err() {
                return; // the Raft node stopped
            }
            let (leading, alone, led) = {
                let metrics = running.borrow();
                let membership = metrics.membership_config.membership();
                let alone = membership.voter_ids().eq([node_id]);
                (metrics.state == ServerState::Leader, alone, metrics.vote.is_committed())
            };
            // There was a leader: its voters refuse votes (and pre-votes)
            // until its lease runs out, so campaigning sooner would waste a
            // try. Judged now, not when the timeout was drawn: a leader
            // elected meanwhile (a replica that just started) counts, or
            // the first try after its loss comes too soon, is refused, and
            // the next waits a whole timeout and lease more.
            timeout = drawn + if led { lease } else { Duration::ZERO };
            if leading {
                contact.touch();
            } else if alone && first {
                break; // the only voter: nobody to wait for
            }
            // Two clocks: the silence since a leader was heard must cover
            // the timeout (and the lease, if there was a leader), and the
            // time since this replica's own last try must cover the drawn
            // timeout alone. One clock for both (the shorter) made a retry
            // after a split vote wait the lease as well: its own campaign
            // had not ended any leader's lease (issue 22: 3 s instead of 1
            // to 2 after a split, on a paused leader's two followers).
            let silence = contact.silence();
            let since_try = tried.map_or(Duration::MAX, |at| at.elapsed());
            if silence >= timeout && since_try >= drawn {
                break;
            }
            tokio::time::sleep(timeout.saturating_sub(silence).max(drawn.saturating_sub(since_try))).await;
        }
        first = false;
        tried = Some(Instant::now());
        if abstaining.load(Ordering::Acquire) {
            continue; // repairing: it starts no elections
        }
        // A peer whose pre-vote this replica just granted is about to
        // campaign: campaigning too would split the vote (sweep seed 4011:
        // two followers of an isolated leader timed out 7 ms apart, then
        // 3 ms apart, and split twice: 7.3 s without a leader). This try
        // is left to it; if its campaign fails, the next is this
        // replica's. Only a pre-vote granted before this replica's own
        // try counts, so of two that cross, the first still campaigns.
        if contact.granted_pre_vote_within(Duration::from_millis(min) / DEFER_PER_TIMEOUT) {
            tracing::debug!(node_id, %group, "a peer is campaigning with this replica's pre-vote: leaving it this try");
            continue;
        }
        let (configs, addresses) = {
            let metrics = running.borrow();
            let membership = metrics.membership_config.membership();
            let configs: Vec<BTreeSet<NodeId>> = membership.get_joint_config().clone();
            let addresses: Vec<(NodeId, String)> = membership
                .voter_ids()
                .filter(|id| *id != node_id)
                .map(|id| (id, membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default()))
                .collect();
            (configs, addresses)
        };
        if !configs.iter().any(|config| config.contains(&node_id)) {
            continue; // not a voter
        }
        let started = Instant::now();
        let term = running.borrow().current_term;
        let request = PreVote { last_log_id: log_store.last_log_id() };
        let answer_within = Duration::from_millis(min);
        // Stop asking once a quorum said yes: a voter that is down (a
        // paused leader) must not hold the campaign back by `answer_within`,
        // the window in which another replica can be elected meanwhile.
        let mut answers: futures::stream::FuturesUnordered<_> = addresses
            .iter()
            .map(|(peer, address)| {
                let (connections, request) = (&connections, &request);
                async move { (*peer, connections.pre_vote(*peer, address, group, request, answer_within).await) }
            })
            .collect();
        let mut granted = BTreeSet::from([node_id]);
        // Planted (simulator only): wait for every answer, the paused
        // leader's too, and campaign on them however stale (issue 22's
        // paused-leader defect, put back).
        let stale = planted::on(Bug::StalePreVote);
        while stale || !is_quorum(&configs, &granted) {
            match answers.next().await {
                Some((peer, true)) => {
                    granted.insert(peer);
                }
                Some((_, false)) => {}
                None => break,
            }
        }
        drop(answers);
        // A leader heard, or a vote granted, while the pre-vote ran: a
        // successor may be in office already, elected with this replica's
        // own vote. The pre-votes were given before that; campaigning on
        // them would depose it (on real hosts, a paused leader's two
        // followers deposed each other 3 to 6 times in 15 s).
        let overtaken = !stale && (contact.silence() < started.elapsed() || running.borrow().current_term != term);
        if overtaken {
            tracing::debug!(node_id, %group, "a leader or a campaign appeared while pre-voting: not campaigning");
        } else if is_quorum(&configs, &granted) {
            tracing::debug!(node_id, %group, "no leader heard for {timeout:?} and a quorum would vote: campaigning");
            if raft.trigger().elect().await.is_err() {
                return;
            }
        } else {
            tracing::debug!(node_id, %group, ?granted, ?configs, "pre-vote lost: not campaigning");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::log_store::log_id;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_configuration() {
        let single = [set(&[1, 2, 3])];
        assert!(is_quorum(&single, &set(&[1, 2])));
        assert!(!is_quorum(&single, &set(&[1])));
        assert!(!is_quorum(&single, &set(&[1, 4, 5])));
        let joint = [set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert!(!is_quorum(&joint, &set(&[1, 2])), "a majority of the old configuration only");
        assert!(!is_quorum(&joint, &set(&[4, 5])), "a majority of the new configuration only");
        assert!(is_quorum(&joint, &set(&[1, 3, 4])));
        assert!(is_quorum(&[set(&[7])], &set(&[7])));
    }

    #[test]
    fn a_repairing_voter_grants_only_logs_past_what_it_lost() {
        let bar = Some(log_id(2, 213));
        assert!(covers(bar, Some(log_id(2, 213))));
        assert!(covers(bar, Some(log_id(3, 300))));
        assert!(covers(bar, Some(log_id(3, 100))), "a later term holds every entry of earlier ones that counted");
        assert!(!covers(bar, Some(log_id(1, 212))), "an earlier term may lack a lost entry");
        assert!(!covers(bar, Some(log_id(1, 900))), "an earlier term may lack a lost entry");
        assert!(!covers(bar, Some(log_id(2, 212))), "a shorter log may lack a lost entry");
        assert!(!covers(bar, None));
        assert!(!covers(None, Some(log_id(9, 999))), "no bar: it may vote for nobody");
    }
}
