//! Multi-Raft: every partition is an openraft group over its replicas.
//!
//! - [`types`]: the type configuration; a Raft entry is one record batch.
//! - [`log_store`]: openraft's log storage over the partition log, which is
//!   the Raft log (each byte written once).
//! - [`state_machine`]: the high watermark (offset after the last applied
//!   entry) and membership; snapshots of that small state.
//! - [`retired`]: what a replica removed from its group leaves behind, so
//!   a replica created there later does not vote as if it had no past.
//! - [`network`]: Raft messages over gRPC, one connection per broker pair
//!   for all groups, and the router that delivers them to local groups.
//!
//! A [`Replica`] is this broker's member of one group.

pub mod control_file;
pub mod election;
pub mod log_store;
pub mod network;
pub mod producers;
pub mod reachability;
pub mod retired;
pub mod state_file;
pub mod state_machine;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::sync::watch;

use self::election::{leader_lease, run_elections, Contact, Elector};
pub use self::log_store::{LogStore, SharedLog};
pub use self::network::{Connections, RaftService, Routed, Router};
use self::producers::Verdict;
pub use self::state_machine::StateMachine;
pub use self::types::{Applied, GroupId, NodeId, Proposal, RaftNode};
use crate::log::{Batch, LogConfig, PartitionLog};
use crate::sys::clock::Clock;
use crate::sys::disk::Disk;
use crate::sys::planted::{self, Bug};
use crate::sys::task::blocking;

/// How long a retried batch waits for its earlier copy, still in flight,
/// to be applied.
const IN_FLIGHT_PATIENCE: Duration = Duration::from_secs(10);

/// When a producer's batch counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Committed: appended and fsynced on a majority of the replicas.
    All,
    /// Appended and fsynced on the leader.
    Leader,
    /// Accepted by the leader.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("this broker does not lead partition group {group}; leader: {leader:?}")]
    NotLeader { group: GroupId, leader: Option<(NodeId, String)> },
    /// Refused before anything was handed to Raft: nothing was written.
    #[error("partition group {group} is unavailable: {reason}")]
    Unavailable { group: GroupId, reason: String },
    /// Handed to Raft, then lost track of (leadership lost, Raft stopped):
    /// the batch may yet be committed.
    #[error("partition group {group} may or may not have written the batch: {reason}")]
    Indeterminate { group: GroupId, leader: Option<(NodeId, String)>, reason: String },
    #[error("producer {producer_id}: batch starts at sequence {got}, expected {expected}")]
    OutOfOrderSequence { producer_id: i64, got: i32, expected: i32 },
    #[error("producer {producer_id}: epoch {got} is fenced by epoch {current}")]
    ProducerFenced { producer_id: i64, got: i16, current: i16 },
}

/// How long a leader may go without hearing from a majority of its voters
/// and still acknowledge acks=leader and acks=none writes (see
/// `Replica::heard_from_quorum`): four heartbeat intervals, an election
/// timeout at its shortest. openraft refreshes the figure on every tick
/// (1.5 heartbeat intervals), so a leader stops by 1.4 s at the latest.
pub const QUORUM_SILENCE_MAX: Duration = Duration::from_millis(1000);

/// The Raft timing every group uses.
pub fn raft_config() -> Arc<Config> {
    let config = Config {
        cluster_name: "weir".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        // Elections are weir's own, with a pre-vote (see `election`).
        enable_elect: false,
        // A replication message carries up to this many entries and up to
        // `REPLICATION_BYTES_MAX` of them (entries are batches of up to
        // 16 MiB; the log store stops at the byte budget). Four entries a
        // message, as before, left a learner copying a 30,000-entry log
        // 7,500 round trips and fsyncs behind: on real hosts it did not
        // catch up within 30 s and a decommissioned broker never drained.
        max_payload_entries: 256,
        // A snapshot is tiny (no data): take them often so a restart replays
        // little. Never purge on snapshot: the log is the data; retention
        // decides what goes.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1024),
        max_in_snapshot_log_to_keep: u64::MAX,
        ..Config::default()
    };
    Arc::new(config.validate().expect("weir's Raft config is valid"))
}

/// A replica whose log lost entries to damage (see
/// [`LogStore::repair_through`]) may have acknowledged some of them: a
/// leader may have counted them towards a commit. Voting on the strength of
/// the shorter log could elect a leader without a committed entry, so the
/// replica abstains (grants no votes, starts no elections) until a leader
/// has appended its log back past every entry it may have held. Whatever
/// the leader appends matches the leader's log, which holds every committed
/// entry; from then on the replica is an ordinary follower.
///
/// The only voter of its group has nobody to repair it from: it goes on
/// with what is left, and says so.
async fn repair_from_leader(raft: RaftNode, log_store: LogStore, abstaining: Arc<AtomicBool>, node_id: NodeId) {
    let Some(through) = log_store.repair_through() else { return };
    let mut metrics = raft.metrics();
    let repaired = loop {
        {
            let m = metrics.borrow_and_update();
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            if voters == BTreeSet::from([node_id]) {
                tracing::error!(
                    node_id,
                    through,
                    "the only voter's log was damaged: nobody can repair it; going on with what is left"
                );
                break true;
            }
            if m.last_log_index.is_some_and(|last| last >= through) {
                tracing::warn!(node_id, through, leader = ?m.current_leader, "replica repaired from its leader");
                break true;
            }
        }
        if metrics.changed().await.is_err() {
            break false; // the Raft node stopped; the repair resumes at the next open
        }
    };
    if !repaired {
        return;
    }
    let store = log_store.clone();
    match blocking(move || store.finish_repair()).await {
        Ok(()) => {
            abstaining.store(false, Ordering::Release);
        }
        Err(error) => tracing::error!(node_id, %error, "recording the repair failed; still abstaining"),
    }
}

/// Idempotent batches a leader proposed and has not yet seen applied:
/// producer id → (epoch, the (first, last) sequences of each batch, in the
/// order proposed).
type InFlight = BTreeMap<i64, (i16, Vec<(i32, i32)>)>;

/// Drops a batch from the in-flight list once it is applied (then with
/// every batch proposed before it: the log applies them in order, so they
/// are in the producer table too, even if their own waiters have not run
/// yet) or has failed (then only itself). A stale earlier batch left in
/// the list would be taken for the producer's latest, and its next batch
/// refused as out of order.
fn forget_in_flight(in_flight: &mut InFlight, producer_id: i64, batch: (i32, i32), applied: bool) {
    if let Some((_, batches)) = in_flight.get_mut(&producer_id) {
        match batches.iter().position(|b| *b == batch) {
            Some(at) if applied => drop(batches.drain(..=at)),
            _ => batches.retain(|b| *b != batch),
        }
        if batches.is_empty() {
            in_flight.remove(&producer_id);
        }
    }
}

/// This broker's member of one partition group.
#[derive(Clone)]
pub struct Replica {
    group: GroupId,
    node_id: NodeId,
    raft: RaftNode,
    log: SharedLog,
    log_store: LogStore,
    state_machine: StateMachine,
    router: Arc<Router>,
    connections: Arc<Connections>,
    in_flight: Arc<tokio::sync::Mutex<InFlight>>,
    abstaining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("group", &self.group).field("node_id", &self.node_id).finish()
    }
}

/// Where a replica lives and how it talks to its peers.
#[derive(Clone)]
pub struct ReplicaEnv {
    pub node_id: NodeId,
    pub disk: Arc<dyn Disk>,
    pub clock: Arc<dyn Clock>,
    pub connections: Arc<Connections>,
    pub router: Arc<Router>,
    pub raft_config: Arc<Config>,
}

impl Replica {
    /// Opens (recovering) the group's log in `dir` and starts its Raft node.
    /// A new group waits for [`Replica::bootstrap`] or for a leader to add it.
    pub async fn open(env: &ReplicaEnv, group: GroupId, dir: &Path, log_config: LogConfig) -> Result<Self, String> {
        let (disk, clock, dir) = (env.disk.clone(), env.clock.clone(), dir.to_path_buf());
        let (log_store, state_machine) = blocking(move || {
            let log = PartitionLog::open(disk.clone(), &dir, log_config, clock).map_err(|e| e.to_string())?;
            let log_store = LogStore::open(disk.clone(), &dir, log)?;
            let state_machine = StateMachine::open(disk, &dir, log_store.clone())?;
            Ok::<_, String>((log_store, state_machine))
        })
        .await?;
        let network = env.connections.for_group(group);
        let raft =
            RaftNode::new(env.node_id, env.raft_config.clone(), network, log_store.clone(), state_machine.clone())
                .await
                .map_err(|e| format!("starting Raft for group {group}: {e}"))?;
        let abstaining = Arc::new(AtomicBool::new(false));
        if log_store.repair_through().is_some() {
            abstaining.store(true, Ordering::Release);
            tokio::spawn(repair_from_leader(raft.clone(), log_store.clone(), abstaining.clone(), env.node_id));
        }
        let repair_bar = log_store.repair_bar();
        let contact = Contact::new();
        env.router.register(
            group,
            Routed {
                raft: raft.clone(),
                abstaining: abstaining.clone(),
                repair_bar,
                log_store: log_store.clone(),
                contact: contact.clone(),
            },
        );
        let config = raft.config();
        tokio::spawn(run_elections(Elector {
            raft: raft.clone(),
            node_id: env.node_id,
            group,
            connections: env.connections.clone(),
            log_store: log_store.clone(),
            abstaining: abstaining.clone(),
            contact,
            timeout_ms: (config.election_timeout_min, config.election_timeout_max),
            lease: leader_lease(config),
        }));
        Ok(Self {
            group,
            node_id: env.node_id,
            raft,
            log: log_store.log(),
            log_store,
            state_machine,
            router: env.router.clone(),
            connections: env.connections.clone(),
            in_flight: Arc::default(),
            abstaining,
        })
    }

    /// Whether this replica waits for a leader to repair damage to its log
    /// (and meanwhile grants no votes and starts no elections).
    pub fn repairing(&self) -> bool {
        self.abstaining.load(Ordering::Acquire)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    /// The partition log, for reads up to the high watermark.
    pub fn log(&self) -> &SharedLog {
        &self.log
    }

    /// Every record below the high watermark is committed.
    pub fn high_watermark(&self) -> watch::Receiver<u64> {
        self.state_machine.high_watermark()
    }

    /// Makes `members` (node id → gRPC address) the group's first
    /// membership. Only a replica that has never been part of the group does
    /// anything; calling it on every replica with the same members is safe.
    pub async fn bootstrap(&self, members: &BTreeMap<NodeId, String>) -> Result<(), String> {
        // (Right after a restart the metrics may not show the membership
        // the replica recovered yet; its state does.)
        if self.raft.is_initialized().await.map_err(|e| e.to_string())? {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, BasicNode> =
            members.iter().map(|(id, address)| (*id, BasicNode::new(address))).collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(format!("bootstrapping group {}: {e}", self.group)),
        }
    }

    /// Whether this replica's Raft core has stopped (on a storage error):
    /// it takes no part in its group until it is reopened, and what its
    /// metrics last said (leading, say) is no longer true.
    pub fn stopped(&self) -> bool {
        self.raft.metrics().borrow().running_state.is_err()
    }

    /// The leader as this replica knows it: id and address. Unknown while
    /// the core is stopped.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        if self.stopped() {
            return None;
        }
        let metrics = self.raft.server_metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let address = metrics.membership_config.membership().get_node(&leader).map(|n| n.addr.clone());
        Some((leader, address.unwrap_or_default()))
    }

    /// On the leader: each replica's lag behind its log, in entries.
    pub fn progress(&self) -> Vec<(NodeId, u64)> {
        let metrics = self.raft.metrics().borrow().clone();
        let last = metrics.last_log_index.map_or(0, |i| i + 1);
        let Some(replication) = metrics.replication else { return Vec::new() };
        replication.iter().map(|(id, matched)| (*id, last - matched.map_or(0, |m| m.index + 1).min(last))).collect()
    }

    /// The group's voters and learners as this replica knows them (in a
    /// joint configuration, the voters of both).
    pub fn membership(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        let metrics = self.raft.server_metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        (membership.voter_ids().collect(), membership.learner_ids().collect())
    }

    /// The voter sets of the last configuration this replica applied (on a
    /// leader: the last committed one): one, or two during a joint change.
    /// Not the effective configuration, which may be a change still
    /// uncommitted: every acknowledged record is on a majority of each set
    /// of the committed one, while the new voters of an uncommitted change
    /// may still lack records committed before it.
    pub fn voter_sets(&self) -> Vec<Vec<NodeId>> {
        self.state_machine.applied_voter_sets()
    }

    /// On the leader: makes `target` (node id → address) the group's
    /// voters, live. New members join as learners first and become voters
    /// once each has caught up with where the log was when it joined
    /// (waiting at most `catch_up` for each); then the voters change through
    /// joint consensus; learners not in `target` are dropped. (The address
    /// of a broker that already is a voter is not used.) A leader not
    /// in `target` steps down once the change is committed. Safe to repeat
    /// after a failure (a change left in a joint configuration is finished).
    pub async fn change_voters(&self, target: &BTreeMap<NodeId, String>, catch_up: Duration) -> Result<(), String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} in group {}: {e}", self.group);
        // A leader removed by an earlier change steps down once that is
        // committed; openraft must not be asked for more meanwhile.
        let leading = || self.is_leader() && self.membership().0.contains(&self.node_id);
        if !leading() {
            return Err(format!("not a leading voter of group {}", self.group));
        }
        let (_, learners) = self.membership();
        for (&id, address) in target {
            let (voters, _) = self.membership();
            if voters.contains(&id) {
                continue;
            }
            if !learners.contains(&id) {
                self.raft
                    .add_learner(id, BasicNode::new(address), false)
                    .await
                    .map_err(|e| fail(&format!("adding learner {id}"), &e))?;
            }
            let goal = self.raft.metrics().borrow().last_log_index;
            let mut metrics = self.raft.metrics();
            let caught_up = async {
                loop {
                    {
                        let m = metrics.borrow_and_update();
                        let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten());
                        if matched.map(|m| m.index) >= goal {
                            return true;
                        }
                        if m.state != ServerState::Leader {
                            return false;
                        }
                    }
                    if metrics.changed().await.is_err() {
                        return false;
                    }
                }
            };
            match tokio::time::timeout(catch_up, caught_up).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!("no longer leader of group {} while learner {id} caught up", self.group))
                }
                Err(_) => {
                    return Err(format!("learner {id} of group {} did not catch up within {catch_up:?}", self.group))
                }
            }
        }
        let voters: BTreeSet<NodeId> = target.keys().copied().collect();
        if !leading() {
            return Err(format!("no longer leading group {}", self.group));
        }
        let (current, learners) = self.membership();
        let joint = self.raft.metrics().borrow().membership_config.membership().get_joint_config().len() > 1;
        if current != voters || joint {
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), false)
                .await
                .map_err(|e| fail("changing voters", &e))?;
        }
        let strays: BTreeSet<NodeId> = learners.difference(&voters).copied().collect();
        if !strays.is_empty() && leading() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(strays), false)
                .await
                .map_err(|e| fail("removing learners", &e))?;
        }
        Ok(())
    }

    /// On the leader: waits until every voter holds the group's latest
    /// membership entry in its log, so that none can still campaign, or vote,
    /// under the configuration before it.
    ///
    /// Only then may a removed replica's data be deleted. Otherwise a voter
    /// lagging behind the change could win an election under the old
    /// configuration with the vote of the removed broker's replica, wiped
    /// and created afresh by a later move: its empty log refuses no one, so
    /// a leader without committed entries would be elected (simulator seed
    /// 98 did exactly this and lost committed entries).
    pub async fn wait_voters_learned_membership(&self, within: Duration) -> Result<(), String> {
        let mut metrics = self.raft.metrics();
        let learned = async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.state != ServerState::Leader {
                        return Err(format!("no longer leader of group {}", self.group));
                    }
                    let config = m.membership_config.clone();
                    let goal = config.log_id().map(|id| id.index);
                    let lagging: Vec<NodeId> = config
                        .membership()
                        .voter_ids()
                        .filter(|&id| id != self.node_id)
                        .filter(|id| {
                            let matched = m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten());
                            matched.map(|l| l.index) < goal
                        })
                        .collect();
                    if lagging.is_empty() {
                        return Ok(());
                    }
                }
                if metrics.changed().await.is_err() {
                    return Err(format!("group {} stopped", self.group));
                }
            }
        };
        match tokio::time::timeout(within, learned).await {
            Ok(result) => result,
            Err(_) => Err(format!("voters of group {} did not learn its membership within {within:?}", self.group)),
        }
    }

    /// On the leader: hands leadership to voter `to` if it has everything
    /// this leader has, by asking it to start an election now. (openraft
    /// 0.9 has no leadership transfer.) The leader, which has led longer
    /// than a leader lease, grants the vote; so `to` wins in a group of up
    /// to three voters, while the other follower still counts this leader's
    /// lease. Should more have been appended meanwhile, the leader refuses
    /// and an ordinary election follows.
    pub async fn hand_over(&self, to: NodeId) -> Result<(), String> {
        let caught_up = {
            let metrics = self.raft.metrics().borrow().clone();
            let last = metrics.last_log_index;
            let voter = metrics.membership_config.membership().voter_ids().any(|id| id == to);
            let matched = metrics.replication.as_ref().and_then(|r| r.get(&to).cloned().flatten()).map(|m| m.index);
            metrics.state == ServerState::Leader && voter && matched.is_some() && matched == last
        };
        if !caught_up {
            return Err(format!("broker {to} is not a caught-up voter of group {}", self.group));
        }
        self.connections.campaign(to, self.group).await
    }

    /// Whether the group has been started here (or joined by a leader).
    pub fn has_membership(&self) -> bool {
        self.raft.server_metrics().borrow().membership_config.membership().nodes().next().is_some()
    }

    /// The Raft term this replica is in.
    pub fn term(&self) -> u64 {
        self.raft.server_metrics().borrow().vote.leader_id.term
    }

    /// Whether this replica leads its group (a stopped core leads nothing,
    /// whatever its last metrics said: seed 191 of the read-error sweep read
    /// a partition from a leader whose core a failed read had stopped).
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.server_metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.node_id) && !self.stopped()
    }

    /// Why this replica's Raft core stopped, if the disk filling up or
    /// failing a read stopped it. openraft stops a group's core on any
    /// storage error; the replica then takes no part in its group until it
    /// is reopened. Only these may be reopened in place: the partition log
    /// refuses a full disk's append whole, and a read changes nothing, so
    /// the log stays sound. After a failed write or fsync the kernel may
    /// have dropped data that reads still return, so a reopened replica
    /// could count as durable what a crash then loses (simulation seed 92
    /// lost an acknowledged write that way); such a replica stays stopped
    /// until its broker restarts.
    pub fn stopped_in_place(&self) -> Option<String> {
        if !self.log_store.out_of_space() && !self.log_store.read_failed() {
            return None;
        }
        let error = match &self.raft.metrics().borrow().running_state {
            Err(openraft::error::Fatal::StorageError(error)) => error.to_string(),
            _ => return None,
        };
        let poisoned = log_store::lock_log(&self.log).as_ref().is_none_or(|log| log.is_failed());
        (!poisoned).then_some(error)
    }

    /// Whether reads here see every acknowledged write: this replica leads,
    /// and has applied an entry of its own term (so everything earlier
    /// leaders committed is below its high watermark). A follower's high
    /// watermark lags; reads go to the leader.
    pub fn readable(&self) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(self.not_leader(self.leader()));
        }
        let term = self.raft.server_metrics().borrow().vote.leader_id.term;
        if self.state_machine.last_applied().map(|id| id.leader_id.term) != Some(term) {
            return Err(self.unavailable("the new leader is still applying its log"));
        }
        Ok(())
    }

    /// Whether a read of this replica's applied state is linearizable: it
    /// is readable here (see [`Self::readable`]) and, as a lease read, its
    /// leader heard from a majority recently enough that no successor can
    /// have been elected yet (see [`Self::heard_from_quorum`]). A leader
    /// deposed without knowing it, cut off from its voters, answers from
    /// state a successor may have moved past.
    pub fn read_lease(&self) -> Result<(), ProposeError> {
        self.readable()?;
        self.heard_from_quorum()
    }

    /// Check-quorum for the weaker acks: a leader that has not heard from
    /// a majority of its voters (its own vote counted) within
    /// [`QUORUM_SILENCE_MAX`] refuses acks=leader and acks=none writes.
    ///
    /// Such a leader may be cut off, and a batch only it holds is lost once
    /// a successor is elected. Without this check an isolated leader went
    /// on acknowledging until it heard of a newer term, that is, until the
    /// partition healed. Voters elect a successor no sooner than the leader
    /// lease plus an election timeout (3 s) after they last heard from the
    /// leader, and openraft dates a voter's answer by when the leader sent
    /// what it answers, so the old leader stops acknowledging more than a
    /// second and a half before a successor can exist. acks=all needs no
    /// check: a commit is itself a majority's answer.
    fn heard_from_quorum(&self) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(self.not_leader(self.leader()));
        }
        match self.raft.metrics().borrow().millis_since_quorum_ack {
            Some(ms) if Duration::from_millis(ms) <= QUORUM_SILENCE_MAX => Ok(()),
            Some(ms) => Err(self.unavailable(format!(
                "the leader has not heard from a majority of its voters for {ms} ms; it may be cut off"
            ))),
            None => Err(self.unavailable("the leader has not yet heard from a majority of its voters")),
        }
    }

    fn not_leader(&self, leader: Option<(NodeId, String)>) -> ProposeError {
        ProposeError::NotLeader { group: self.group, leader }
    }

    fn unavailable(&self, reason: impl ToString) -> ProposeError {
        ProposeError::Unavailable { group: self.group, reason: reason.to_string() }
    }

    /// A proposal handed to Raft whose outcome this replica lost track of.
    fn indeterminate(&self, leader: Option<(NodeId, String)>, reason: impl ToString) -> ProposeError {
        ProposeError::Indeterminate { group: self.group, leader, reason: reason.to_string() }
    }

    /// The error of a proposal Raft had accepted. openraft answers
    /// ForwardToLeader both when it refused the entry and when it appended
    /// it and then lost its leadership (the entry may still commit under
    /// the next leader), so every such answer is indeterminate.
    fn write_error(&self, error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ProposeError {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                let leader = forward.leader_id.map(|id| (id, forward.leader_node.map(|n| n.addr).unwrap_or_default()));
                self.indeterminate(leader, "the leader lost its leadership with the batch in flight")
            }
            other => self.indeterminate(None, other),
        }
    }

    /// Proposes a batch; returns where it landed once `acks` is met
    /// (`None` for [`Acks::None`], which waits for nothing). A batch from an
    /// idempotent producer is written once: a retry of one already written
    /// (or in flight) answers with where it landed.
    pub async fn propose(&self, batch: Batch, acks: Acks) -> Result<Option<Applied>, ProposeError> {
        if acks != Acks::All {
            self.heard_from_quorum()?;
        }
        let acks = match acks {
            Acks::All if planted::on(Bug::AckBeforeCommit) => Acks::Leader,
            acks => acks,
        };
        if batch.header().producer_id >= 0 {
            return self.propose_idempotent(batch, acks).await;
        }
        self.propose_plain(batch, acks).await
    }

    async fn propose_idempotent(&self, batch: Batch, acks: Acks) -> Result<Option<Applied>, ProposeError> {
        let header = *batch.header();
        let (producer_id, epoch) = (header.producer_id, header.producer_epoch);
        let (first, last) = producers::sequences(&header);
        let count = u64::from(header.record_count);
        let mut in_flight = self.in_flight.lock().await;
        if !self.is_leader() {
            return Err(self.not_leader(self.leader()));
        }
        // Entries of earlier terms in this leader's log may hold batches of
        // this producer: judge only once they are applied.
        let term = self.raft.metrics().borrow().current_term;
        if self.state_machine.last_applied().map(|id| id.leader_id.term) != Some(term) {
            return Err(self.unavailable("the new leader is still applying its log"));
        }
        let pending = in_flight.get(&producer_id).filter(|(e, batches)| *e == epoch && !batches.is_empty());
        if pending.is_some_and(|(_, batches)| batches.contains(&(first, last))) {
            tracing::debug!(group = %self.group, producer_id, first, last, "a retry of a batch in flight waits for it");
            drop(in_flight);
            return self.await_written(producer_id, epoch, first, last, count).await.map(Some);
        }
        let after = match pending {
            Some((_, batches)) => batches.last().map(|&(_, last)| last),
            None => self
                .state_machine
                .with_producers(|t| t.get(producer_id).filter(|e| e.epoch == epoch).and_then(|e| e.last_seq())),
        };
        let verdict = self.state_machine.with_producers(|t| t.verdict(producer_id, epoch, first, last, after));
        tracing::debug!(group = %self.group, producer_id, epoch, first, last, ?after, ?verdict, "judged an idempotent batch");
        match verdict {
            Verdict::Duplicate(written) => {
                return Ok(Some(Applied { base_offset: written.base_offset, next_offset: written.base_offset + count }))
            }
            Verdict::Fenced { current } => {
                return Err(ProposeError::ProducerFenced { producer_id, got: epoch, current })
            }
            Verdict::OutOfOrder { expected } => {
                return Err(ProposeError::OutOfOrderSequence { producer_id, got: first, expected })
            }
            Verdict::Append => {}
        }
        let entry = in_flight.entry(producer_id).or_insert((epoch, Vec::new()));
        if entry.0 != epoch {
            *entry = (epoch, Vec::new());
        }
        entry.1.push((first, last));
        let (proposal, durable) = Proposal::with_durable_signal(batch);
        let submitted = self.raft.client_write_ff(proposal).await;
        drop(in_flight);
        let committed = match submitted {
            Ok(committed) => committed,
            Err(e) => {
                self.forget_in_flight(producer_id, (first, last), false).await;
                return Err(self.unavailable(e));
            }
        };
        match acks {
            Acks::All => {
                let result = match committed.await {
                    Ok(Ok(written)) => Ok(written.data),
                    Ok(Err(e)) => Err(self.write_error(RaftError::APIError(e))),
                    Err(_) => Err(self.indeterminate(None, "the Raft node stopped")),
                };
                self.forget_in_flight(producer_id, (first, last), result.is_ok()).await;
                result.map(Some)
            }
            Acks::Leader | Acks::None => {
                let durable_offset = match acks {
                    Acks::Leader => Some(durable.await),
                    _ => None,
                };
                let replica = self.clone();
                tokio::spawn(async move {
                    let applied = matches!(committed.await, Ok(Ok(_)));
                    replica.forget_in_flight(producer_id, (first, last), applied).await;
                });
                match durable_offset {
                    None => Ok(None),
                    Some(Ok(base_offset)) => Ok(Some(Applied { base_offset, next_offset: base_offset + count })),
                    Some(Err(_)) => Err(self.indeterminate(None, "the batch was not appended here")),
                }
            }
        }
    }

    async fn forget_in_flight(&self, producer_id: i64, batch: (i32, i32), applied: bool) {
        forget_in_flight(&mut *self.in_flight.lock().await, producer_id, batch, applied);
    }

    /// Waits (bounded) until a batch proposed earlier is applied, and
    /// answers with where it landed.
    async fn await_written(
        &self,
        producer_id: i64,
        epoch: i16,
        first: i32,
        last: i32,
        count: u64,
    ) -> Result<Applied, ProposeError> {
        let mut high_watermark = self.state_machine.high_watermark();
        let found = async {
            loop {
                let written =
                    self.state_machine.with_producers(|t| match t.verdict(producer_id, epoch, first, last, None) {
                        Verdict::Duplicate(written) => Some(written),
                        _ => None,
                    });
                if let Some(written) = written {
                    return Some(written);
                }
                if high_watermark.changed().await.is_err() {
                    return None;
                }
            }
        };
        match tokio::time::timeout(IN_FLIGHT_PATIENCE, found).await {
            Ok(Some(written)) => {
                Ok(Applied { base_offset: written.base_offset, next_offset: written.base_offset + count })
            }
            _ => Err(self.indeterminate(None, "an earlier copy of this batch is still in flight")),
        }
    }

    /// Proposes a batch (acks=all) only while this replica leads in `term`;
    /// succeeds only if it was committed as an entry of `term`.
    pub async fn propose_in_term(&self, batch: Batch, term: u64) -> Result<Applied, ProposeError> {
        if !self.is_leader() || self.term() != term {
            return Err(self.not_leader(self.leader()));
        }
        let written = self.raft.client_write(Proposal::new(batch)).await.map_err(|e| self.write_error(e))?;
        if written.log_id.leader_id.term != term {
            return Err(self.indeterminate(
                None,
                format!(
                    "leadership changed while writing: the batch landed in term {}, not {term}",
                    written.log_id.leader_id.term
                ),
            ));
        }
        Ok(written.data)
    }

    async fn propose_plain(&self, batch: Batch, acks: Acks) -> Result<Option<Applied>, ProposeError> {
        match acks {
            Acks::All => {
                // Refused here, nothing was written; once handed to Raft, a
                // lost leadership leaves the outcome unknown.
                if !self.is_leader() {
                    return Err(self.not_leader(self.leader()));
                }
                let written = self.raft.client_write(Proposal::new(batch)).await.map_err(|e| self.write_error(e))?;
                Ok(Some(written.data))
            }
            Acks::Leader => {
                let count = u64::from(batch.record_count());
                let (proposal, durable) = Proposal::with_durable_signal(batch);
                let committed = self.raft.client_write_ff(proposal).await.map_err(|e| self.unavailable(e))?;
                match durable.await {
                    Ok(base_offset) => Ok(Some(Applied { base_offset, next_offset: base_offset + count })),
                    // Never appended: the commit answer says why.
                    Err(_) => match committed.await {
                        Ok(Err(e)) => Err(self.write_error(RaftError::APIError(e))),
                        Ok(Ok(_)) => Err(self.indeterminate(None, "the batch was committed without a local append")),
                        Err(_) => Err(self.indeterminate(None, "the Raft node stopped")),
                    },
                }
            }
            Acks::None => {
                if !self.is_leader() {
                    return Err(self.not_leader(self.leader()));
                }
                let committed =
                    self.raft.client_write_ff(Proposal::new(batch)).await.map_err(|e| self.unavailable(e))?;
                // Nobody waits for the answer, but openraft warns if it
                // cannot deliver it.
                tokio::spawn(async move {
                    let _ = committed.await;
                });
                Ok(None)
            }
        }
    }

    /// Waits until the group has a leader and this replica has applied
    /// everything in its log (after a restart: until what it holds is known
    /// to be committed). False if that takes longer than `patience`.
    pub async fn wait_caught_up(&self, patience: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        let caught_up = async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let applied = m.last_applied.map(|id| id.index);
                    if m.current_leader.is_some() && applied >= m.last_log_index {
                        return true;
                    }
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(patience, caught_up).await.unwrap_or(false)
    }

    /// Lets the segments below `offset` go, through Raft: a snapshot covers
    /// the entries before it, then they are purged. Eventual: openraft
    /// purges once the snapshot is built and no follower still needs them.
    pub async fn purge_before(&self, offset: u64) -> Result<(), String> {
        let Some(upto) = self.log_store.last_index_before(offset) else { return Ok(()) };
        let covered = self.raft.metrics().borrow().snapshot.is_some_and(|s| s.index >= upto);
        if !covered {
            self.raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
        }
        self.raft.trigger().purge_log(upto).await.map_err(|e| e.to_string())
    }

    /// Stops the Raft node and closes the log cleanly. The log is closed
    /// even if the node had already stopped on an error (a storage error
    /// ends openraft's core): a replica reopened after damage must not
    /// find the old log still open.
    pub async fn shutdown(&self) -> Result<(), String> {
        self.router.unregister(self.group);
        let stopped = self.raft.shutdown().await.map_err(|e| format!("stopping Raft for group {}: {e}", self.group));
        let log = self.log.clone();
        let closed = blocking(move || match log_store::lock_log(&log).take() {
            Some(log) => log.close().map_err(|e| e.to_string()),
            None => Ok(()),
        })
        .await;
        stopped.and(closed)
    }

    /// What this replica leaves behind when it is removed from its group
    /// (see [`retired`]); read it after [`Replica::shutdown`], so no vote
    /// or entry follows it.
    pub fn retirement(&self) -> retired::Retired {
        self.log_store.retirement()
    }

    /// Stops the Raft node and drops the log without closing it, as a crash
    /// would (what the disk keeps is the disk's business).
    pub async fn abort(&self) {
        self.router.unregister(self.group);
        let _ = self.raft.shutdown().await;
        log_store::lock_log(&self.log).take();
    }
}

/// The record a replica that is not open (the broker was down when it
/// was moved away) leaves behind before its directory `dir` is deleted:
/// its log is recovered to learn its last entry. Blocks on disk I/O.
pub fn retire_at_rest(
    disk: Arc<dyn Disk>,
    dir: &Path,
    log_config: LogConfig,
    clock: Arc<dyn Clock>,
) -> Result<(), String> {
    let log = PartitionLog::open(disk.clone(), dir, log_config, clock).map_err(|e| e.to_string())?;
    let log_store = LogStore::open(disk.clone(), dir, log)?;
    let retirement = log_store.retirement();
    if let Some(log) = log_store::lock_log(&log_store.log()).take() {
        log.close().map_err(|e| e.to_string())?;
    }
    retired::save(disk.as_ref(), dir, &retirement)
}

#[cfg(test)]
mod in_flight_tests {
    use super::*;

    /// Batches A then B of one producer; B's waiter runs first. Once B is
    /// applied, A is too: neither may stay listed, or the producer's next
    /// batch would be judged against A and refused as out of order.
    #[test]
    fn an_applied_batch_takes_the_earlier_ones_with_it() {
        let (a, b, c) = ((0, 255), (256, 511), (512, 767));
        let mut in_flight = InFlight::new();
        in_flight.insert(7, (0, vec![a, b, c]));
        forget_in_flight(&mut in_flight, 7, b, true);
        assert_eq!(in_flight.get(&7), Some(&(0, vec![c])));
        // A's own waiter, late, finds nothing left to drop.
        forget_in_flight(&mut in_flight, 7, a, true);
        assert_eq!(in_flight.get(&7), Some(&(0, vec![c])));
        forget_in_flight(&mut in_flight, 7, c, true);
        assert!(in_flight.is_empty());
    }

    /// A failed batch says nothing of those before it.
    #[test]
    fn a_failed_batch_drops_only_itself() {
        let (a, b) = ((0, 9), (10, 19));
        let mut in_flight = InFlight::new();
        in_flight.insert(7, (0, vec![a, b]));
        forget_in_flight(&mut in_flight, 7, b, false);
        assert_eq!(in_flight.get(&7), Some(&(0, vec![a])));
        forget_in_flight(&mut in_flight, 7, a, false);
        assert!(in_flight.is_empty());
    }
}

#[cfg(test)]
mod timing_tests {
    use super::*;

    /// A cut-off leader must stop acknowledging weaker acks before voters
    /// can elect its successor: the leader lease plus the shortest
    /// election timeout after they last heard from it. openraft's figure
    /// may be one tick old when read.
    #[test]
    fn a_leader_without_a_quorum_stops_before_a_successor_can_be_elected() {
        let config = raft_config();
        let tick = Duration::from_millis(config.heartbeat_interval * 3 / 2);
        let earliest_successor = election::leader_lease(&config) + Duration::from_millis(config.election_timeout_min);
        assert!(
            QUORUM_SILENCE_MAX + tick < earliest_successor,
            "{QUORUM_SILENCE_MAX:?} + a tick of {tick:?} reaches {earliest_successor:?}"
        );
        let heartbeat = Duration::from_millis(config.heartbeat_interval);
        assert!(QUORUM_SILENCE_MAX >= heartbeat * 3, "a leader would refuse writes after one late heartbeat");
    }
}
