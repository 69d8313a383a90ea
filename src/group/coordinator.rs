//! The group coordinator: membership, generations, rebalances and fenced
//! offset commits.
//!
//! The protocol is Kafka's eager one with the assignment computed here:
//! a join (a new member, a changed subscription) or a departure (a leave, an
//! expired session) starts a rebalance; members learn of it from their
//! heartbeat (`REBALANCE_IN_PROGRESS`) and rejoin; the rebalance completes
//! when every member has rejoined or its deadline passes (members that did
//! not rejoin are dropped), which opens a new generation with a new
//! assignment. Commits carry the committer's generation and are refused
//! unless it is the current one and the member owns the partition.
//!
//! Sessions and rebalance deadlines run on the monotonic clock
//! (`tokio::time::Instant`): a step of the host's wall clock, forwards or
//! backwards, neither expires every member at once nor keeps a dead one
//! in its group. Only commit timestamps read the wall clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::assignor::{Assignor, TopicPartition};
use super::offsets::{Committed, OffsetKey, OffsetStore};
use crate::broker::error::{BrokerError, BrokerResult, ErrorCode};
use crate::broker::Broker;
use crate::proto;
use crate::sys::clock::Clock;
use crate::sys::planted::{self, Bug};
use crate::sys::rng::random_u64;

pub const SESSION_TIMEOUT_MS_MIN: u32 = 100;
pub const SESSION_TIMEOUT_MS_MAX: u32 = 300_000;
pub const SESSION_TIMEOUT_MS_DEFAULT: u32 = 10_000;
pub const GROUP_NAME_BYTES_MAX: usize = 200;
/// How often sessions and overdue rebalances are checked.
pub const TICK: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Member {
    topics: BTreeSet<String>,
    session_timeout: Duration,
    last_seen: Instant,
}

#[derive(Debug)]
struct Rebalance {
    deadline: Instant,
    joined: BTreeSet<String>,
}

#[derive(Debug)]
struct Group {
    assignor: Assignor,
    members: BTreeMap<String, Member>,
    generation: u64,
    assignment: BTreeMap<String, Vec<TopicPartition>>,
    /// The partition counts of the subscribed topics `assignment` was made
    /// for: a topic created, grown or deleted since calls for a rebalance.
    counts: BTreeMap<String, u32>,
    rebalance: Option<Rebalance>,
    /// The generation, published when a rebalance completes.
    completed: watch::Sender<u64>,
}

impl Group {
    fn new(assignor: Assignor, generation: u64) -> Self {
        Self {
            assignor,
            members: BTreeMap::new(),
            generation,
            assignment: BTreeMap::new(),
            counts: BTreeMap::new(),
            rebalance: None,
            completed: watch::channel(generation).0,
        }
    }

    fn state(&self) -> &'static str {
        match (&self.rebalance, self.members.is_empty()) {
            (Some(_), _) => "rebalancing",
            (None, true) => "empty",
            (None, false) => "stable",
        }
    }

    fn start_rebalance(&mut self, now: Instant) {
        if self.rebalance.is_none() {
            // Everyone gets as long to rejoin as the most patient session.
            let timeout = self.members.values().map(|m| m.session_timeout).max().unwrap_or_default();
            self.rebalance = Some(Rebalance { deadline: now + timeout, joined: BTreeSet::new() });
        }
    }

    fn member(&self, member_id: &str) -> BrokerResult<&Member> {
        self.members.get(member_id).ok_or_else(|| {
            BrokerError::new(ErrorCode::UnknownMember, format!("member {member_id:?} is not in the group; rejoin"))
        })
    }

    /// Checks that `member_id` is in the group's current, settled generation.
    fn check_generation(&self, member_id: &str, generation: u64) -> BrokerResult<()> {
        self.member(member_id)?;
        if self.rebalance.is_some() {
            return Err(BrokerError::new(ErrorCode::RebalanceInProgress, "the group is rebalancing; rejoin"));
        }
        if generation != self.generation {
            return Err(BrokerError::new(
                ErrorCode::IllegalGeneration,
                format!("generation {generation} is over; the group is at {}", self.generation),
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct GroupCoordinator {
    broker: Arc<Broker>,
    offsets: OffsetStore,
    clock: Arc<dyn Clock>,
    groups: Mutex<BTreeMap<String, Group>>,
    /// Where this coordinator's generations start (see [`Self::new`]).
    generation_base: u64,
}

fn validate_group(name: &str) -> BrokerResult<()> {
    if name.is_empty() || name.len() > GROUP_NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(BrokerError::new(
            ErrorCode::InvalidGroup,
            format!("invalid group name {name:?}: 1 to {GROUP_NAME_BYTES_MAX} characters, no control characters"),
        ));
    }
    Ok(())
}

fn to_proto(partitions: &[TopicPartition]) -> Vec<proto::TopicPartition> {
    partitions.iter().map(|tp| proto::TopicPartition { topic: tp.topic.clone(), partition: tp.partition }).collect()
}

/// A generation's high 32 bits are the Raft term of the coordinator that
/// handed it out (see [`GroupCoordinator::new`]); the low 32 count within it.
const GENERATION_TERM_SHIFT: u32 = 32;

/// A generation as a person reads it: `<coordinator term>.<number>`
/// (`4294967298` is `1.2`: the second generation under the coordinator of
/// term 1). 0, no generation yet, stays `0`.
pub fn generation_label(generation: u64) -> String {
    match generation {
        0 => "0".to_owned(),
        g => format!("{}.{}", g >> GENERATION_TERM_SHIFT, g & ((1 << GENERATION_TERM_SHIFT) - 1)),
    }
}

impl GroupCoordinator {
    /// A coordinator for the leader of the offsets partition in Raft term
    /// `term`. Group membership lives in memory, so a new coordinator's
    /// groups start over; their generations start at `term << 32`, above
    /// any an earlier coordinator (of a lower term) handed out. Otherwise a
    /// member of the old coordinator's generation 2 could commit into the
    /// new one's generation 2 (the simulator found two owners of one
    /// partition in "one" generation this way).
    pub fn new(broker: Arc<Broker>, offsets: OffsetStore, clock: Arc<dyn Clock>, term: u64) -> Self {
        Self {
            broker,
            offsets,
            clock,
            groups: Mutex::new(BTreeMap::new()),
            generation_base: term << GENERATION_TERM_SHIFT,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends a rebalance: drops members that did not rejoin, assigns, and
    /// opens the next generation.
    fn complete(&self, group: &mut Group) {
        let Some(rebalance) = group.rebalance.take() else { return };
        group.members.retain(|id, _| rebalance.joined.contains(id));
        let subscriptions: BTreeMap<String, BTreeSet<String>> =
            group.members.iter().map(|(id, m)| (id.clone(), m.topics.clone())).collect();
        let counts = self.partition_counts(group);
        group.assignment = group.assignor.assign(&subscriptions, &counts, &group.assignment);
        if planted::on(Bug::DoubleAssignment) {
            for held in group.assignment.values_mut() {
                for topic in counts.keys() {
                    let first = TopicPartition::new(topic.clone(), 0);
                    if !held.contains(&first) {
                        held.push(first);
                    }
                }
            }
        }
        group.counts = counts;
        group.generation += 1;
        group.completed.send_replace(group.generation);
        tracing::info!(generation = group.generation, members = group.members.len(), "group rebalanced");
    }

    pub async fn join(&self, request: proto::JoinGroupRequest) -> BrokerResult<proto::JoinGroupResponse> {
        validate_group(&request.group)?;
        let session_timeout_ms = match request.session_timeout_ms {
            0 => SESSION_TIMEOUT_MS_DEFAULT,
            ms if (SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&ms) => ms,
            ms => {
                return Err(BrokerError::invalid(format!(
                    "session timeout {ms} ms outside [{SESSION_TIMEOUT_MS_MIN}, {SESSION_TIMEOUT_MS_MAX}]"
                )))
            }
        };
        if request.topics.is_empty() {
            return Err(BrokerError::invalid("a member subscribes to at least one topic"));
        }
        let assignor = match request.assignor.as_str() {
            "" => Assignor::Range,
            name => Assignor::parse(name).ok_or_else(|| {
                BrokerError::invalid(format!("unknown assignor {name:?}: range, roundrobin or sticky"))
            })?,
        };
        let now = Instant::now();
        let (member_id, mut completed) = {
            let mut groups = self.lock();
            let group =
                groups.entry(request.group.clone()).or_insert_with(|| Group::new(assignor, self.generation_base));
            let member_id = if request.member_id.is_empty() {
                format!("member-{:016x}", random_u64())
            } else {
                group.member(&request.member_id)?;
                request.member_id.clone()
            };
            let topics: BTreeSet<String> = request.topics.iter().cloned().collect();
            let session_timeout = Duration::from_millis(u64::from(session_timeout_ms));
            let member = Member { topics, session_timeout, last_seen: now };
            group.members.insert(member_id.clone(), member);
            group.start_rebalance(now);
            (member_id, group.completed.subscribe())
        };
        // Count this member as joined and wait until the group settles with
        // it in it. A member waiting here is alive and joining: if another
        // rebalance starts meanwhile (a newcomer), it counts as rejoined for
        // that one too.
        let mut deadline = now;
        loop {
            {
                let mut groups = self.lock();
                let group = groups.get_mut(&request.group).expect("groups are never removed while joining");
                group.member(&member_id)?;
                let settled = match group.rebalance.as_mut() {
                    None => true,
                    Some(rebalance) => {
                        rebalance.joined.insert(member_id.clone());
                        deadline = rebalance.deadline;
                        let everyone = group.members.keys().all(|id| rebalance.joined.contains(id));
                        if everyone {
                            self.complete(group);
                        }
                        everyone
                    }
                };
                if settled {
                    let assignment = group.assignment.get(&member_id).cloned().unwrap_or_default();
                    return Ok(proto::JoinGroupResponse {
                        member_id: member_id.clone(),
                        generation: group.generation,
                        assignment: to_proto(&assignment),
                        assignor: group.assignor.name().to_owned(),
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let _ = tokio::time::timeout(left, completed.changed()).await;
            self.tick();
        }
    }

    pub fn sync(&self, request: &proto::SyncGroupRequest) -> BrokerResult<Vec<proto::TopicPartition>> {
        let groups = self.lock();
        let group = groups.get(&request.group).ok_or_else(|| unknown_group(&request.group))?;
        group.check_generation(&request.member_id, request.generation)?;
        Ok(to_proto(group.assignment.get(&request.member_id).map(Vec::as_slice).unwrap_or_default()))
    }

    pub fn heartbeat(&self, request: &proto::HeartbeatRequest) -> BrokerResult<()> {
        let now = Instant::now();
        let mut groups = self.lock();
        let group = groups.get_mut(&request.group).ok_or_else(|| unknown_group(&request.group))?;
        if let Some(member) = group.members.get_mut(&request.member_id) {
            member.last_seen = now;
        }
        // A member that already rejoined this rebalance has nothing to do.
        let rejoined = group.rebalance.as_ref().is_some_and(|r| r.joined.contains(&request.member_id));
        if rejoined {
            return Ok(());
        }
        group.check_generation(&request.member_id, request.generation)
    }

    pub fn leave(&self, request: &proto::LeaveGroupRequest) -> BrokerResult<()> {
        let now = Instant::now();
        let mut groups = self.lock();
        let group = groups.get_mut(&request.group).ok_or_else(|| unknown_group(&request.group))?;
        group.member(&request.member_id)?;
        group.members.remove(&request.member_id);
        group.assignment.remove(&request.member_id);
        if let Some(rebalance) = group.rebalance.as_mut() {
            rebalance.joined.remove(&request.member_id);
        }
        self.departed(group, now);
        Ok(())
    }

    /// After members left: rebalance the rest, or settle an empty group.
    fn departed(&self, group: &mut Group, now: Instant) {
        if group.members.is_empty() {
            group.rebalance = Some(Rebalance { deadline: now, joined: BTreeSet::new() });
            self.complete(group);
            return;
        }
        group.start_rebalance(now);
        let rebalance = group.rebalance.as_ref().expect("just started");
        if !rebalance.joined.is_empty() && group.members.keys().all(|id| rebalance.joined.contains(id)) {
            self.complete(group);
        }
    }

    /// Expires silent members and completes overdue rebalances.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.lock();
        for (name, group) in groups.iter_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > m.session_timeout)
                .map(|(id, _)| id.clone())
                .collect();
            let rejoining = |id: &String| group.rebalance.as_ref().is_some_and(|r| r.joined.contains(id));
            let expired: Vec<String> = expired.into_iter().filter(|id| !rejoining(id)).collect();
            if !expired.is_empty() {
                tracing::info!(group = name, ?expired, "sessions expired");
                for id in &expired {
                    group.members.remove(id);
                    group.assignment.remove(id);
                }
                self.departed(group, now);
            }
            if group.rebalance.is_none() && !group.members.is_empty() && self.counts_changed(group) {
                tracing::info!(group = name, "the subscribed topics' partitions changed; rebalancing");
                group.start_rebalance(now);
            }
            if group.rebalance.as_ref().is_some_and(|r| now >= r.deadline) {
                self.complete(group);
            }
        }
    }

    /// Whether a subscribed topic appeared, vanished or changed its
    /// partition count since the group's assignment was made (a group
    /// formed before its topic existed owned nothing until it changed).
    fn counts_changed(&self, group: &Group) -> bool {
        self.partition_counts(group) != group.counts
    }

    /// The partition counts of the topics the group's members subscribe to
    /// (topics that do not exist are left out).
    fn partition_counts(&self, group: &Group) -> BTreeMap<String, u32> {
        let topics: BTreeSet<&String> = group.members.values().flat_map(|m| m.topics.iter()).collect();
        topics.into_iter().filter_map(|topic| Some((topic.clone(), self.broker.partition_count(topic)?))).collect()
    }

    /// Runs [`GroupCoordinator::tick`] until the coordinator is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(TICK).await;
            self.tick();
        }
    }

    pub async fn commit(&self, request: proto::CommitOffsetsRequest) -> BrokerResult<()> {
        validate_group(&request.group)?;
        let writer = self.offsets.writer().await;
        {
            let groups = self.lock();
            let group = groups.get(&request.group);
            match (request.member_id.is_empty(), group) {
                (true, None) => {}
                (true, Some(group)) if group.members.is_empty() => {}
                (true, Some(_)) => {
                    return Err(BrokerError::new(
                        ErrorCode::UnknownMember,
                        "the group has members: commit as one of them, with its generation",
                    ))
                }
                (false, None) => return Err(unknown_group(&request.group)),
                // Planted bug: no fence, so a stale member's commit is taken
                // whatever its generation and whatever it owned then.
                (false, Some(group))
                    if planted::on(Bug::StaleGenerationCommits)
                        && (request.generation != group.generation
                            || !group.members.contains_key(&request.member_id)) => {}
                (false, Some(group)) => {
                    group.member(&request.member_id)?;
                    if request.generation != group.generation {
                        return Err(BrokerError::new(
                            ErrorCode::IllegalGeneration,
                            format!(
                                "commit from generation {} refused: the group is at generation {}",
                                request.generation, group.generation
                            ),
                        ));
                    }
                    let owned = group.assignment.get(&request.member_id).cloned().unwrap_or_default();
                    for offset in &request.offsets {
                        let tp = TopicPartition { topic: offset.topic.clone(), partition: offset.partition };
                        if !owned.contains(&tp) {
                            return Err(BrokerError::new(
                                ErrorCode::NotAssigned,
                                format!("{}/{} is not assigned to {}", tp.topic, tp.partition, request.member_id),
                            ));
                        }
                    }
                }
            }
        }
        let now_ms = self.clock.now_ms();
        let mut entries = Vec::with_capacity(request.offsets.len());
        for offset in &request.offsets {
            // An offset past the log end is refused where this broker can
            // tell: it leads the partition (a follower's log end lags). The
            // coordinator need not host the partition at all; then only the
            // partition's existence is checked.
            match self.broker.partition(&offset.topic, offset.partition) {
                Ok(partition) if partition.replica().is_leader() => {
                    let bounds = partition.bounds()?;
                    if offset.offset > bounds.log_end_offset {
                        return Err(BrokerError::new(
                            ErrorCode::OffsetOutOfRange,
                            format!(
                                "cannot commit offset {} past the log end {}",
                                offset.offset, bounds.log_end_offset
                            ),
                        ));
                    }
                }
                Ok(_) => {}
                Err(error) if matches!(error.code, ErrorCode::NotLeader | ErrorCode::PartitionUnavailable) => {}
                Err(error) => return Err(error),
            }
            let key =
                OffsetKey { group: request.group.clone(), topic: offset.topic.clone(), partition: offset.partition };
            let value = Committed {
                offset: offset.offset + u64::from(planted::on(Bug::CommitPastRead)),
                metadata: offset.metadata.clone(),
                generation: request.generation,
                timestamp_ms: now_ms,
            };
            entries.push((key, value));
        }
        self.offsets.commit(entries, now_ms).await?;
        drop(writer);
        tracing::debug!(
            group = request.group,
            member = request.member_id,
            generation = request.generation,
            offsets = ?request.offsets.iter().map(|o| (o.partition, o.offset)).collect::<Vec<_>>(),
            "committed"
        );
        Ok(())
    }

    /// Forgets the committed offsets of a deleted topic.
    pub async fn topic_deleted(&self, topic: &str) -> BrokerResult<()> {
        self.offsets.forget_topic(topic, self.clock.now_ms()).await
    }

    /// The group's committed offsets, once every commit in flight has
    /// landed or failed: a member that joined a new generation must not read
    /// an offset that an old generation's commit, fenced before the
    /// rebalance but still being written, is about to replace (as Kafka's
    /// `require_stable` offset fetch waits for pending commits).
    pub async fn fetch_offsets(
        &self,
        request: &proto::FetchOffsetsRequest,
    ) -> BrokerResult<Vec<proto::PartitionOffset>> {
        validate_group(&request.group)?;
        let _stable = self.offsets.writer().await;
        // Served from this coordinator's memory: only while it still leads
        // the offsets partition with a quorum behind it. A coordinator cut
        // off from its voters went on handing a joining member the commits
        // it knew of while its successor accepted newer ones, and the
        // member read again from there (sweep seed 7885: started at 436,
        // after commits up to 508 were accepted).
        self.broker.partition(crate::broker::server::OFFSETS_TOPIC, 0)?.replica().read_lease()?;
        let committed: Vec<(OffsetKey, Committed)> = if request.partitions.is_empty() {
            self.offsets.of_group(&request.group)
        } else {
            request
                .partitions
                .iter()
                .filter_map(|tp| {
                    let key =
                        OffsetKey { group: request.group.clone(), topic: tp.topic.clone(), partition: tp.partition };
                    self.offsets.get(&key).map(|value| (key, value))
                })
                .collect()
        };
        Ok(committed
            .into_iter()
            .map(|(key, value)| proto::PartitionOffset {
                topic: key.topic,
                partition: key.partition,
                offset: value.offset,
                metadata: value.metadata,
            })
            .collect())
    }

    pub fn describe(&self, name: &str) -> BrokerResult<proto::GroupDescription> {
        validate_group(name)?;
        let committed = self.offsets.of_group(name);
        let groups = self.lock();
        let group = groups.get(name);
        if group.is_none() && committed.is_empty() {
            return Err(unknown_group(name));
        }
        let mut owners: BTreeMap<TopicPartition, String> = BTreeMap::new();
        let mut members = Vec::new();
        if let Some(group) = group {
            // The last heartbeat as a wall-clock time: now, less how long
            // ago it was by the monotonic clock.
            let (now, now_ms) = (Instant::now(), self.clock.now_ms());
            for (id, member) in &group.members {
                let assignment = group.assignment.get(id).cloned().unwrap_or_default();
                for tp in &assignment {
                    owners.insert(tp.clone(), id.clone());
                }
                members.push(proto::GroupMember {
                    member_id: id.clone(),
                    topics: member.topics.iter().cloned().collect(),
                    assignment: to_proto(&assignment),
                    last_heartbeat_ms: now_ms.saturating_sub(
                        i64::try_from(now.saturating_duration_since(member.last_seen).as_millis()).unwrap_or(i64::MAX),
                    ),
                });
            }
        }
        let mut partitions: BTreeMap<TopicPartition, Option<u64>> =
            owners.keys().map(|tp| (tp.clone(), None)).collect();
        for (key, value) in &committed {
            partitions
                .insert(TopicPartition { topic: key.topic.clone(), partition: key.partition }, Some(value.offset));
        }
        let lags = partitions
            .into_iter()
            .filter_map(|(tp, committed)| {
                let partition = self.broker.partition(&tp.topic, tp.partition).ok()?;
                let high_watermark = partition.high_watermark();
                let from = committed.unwrap_or_else(|| partition.bounds().map_or(0, |b| b.log_start_offset));
                Some(proto::PartitionLag {
                    owner: owners.get(&tp).cloned().unwrap_or_default(),
                    topic: tp.topic,
                    partition: tp.partition,
                    committed_offset: committed,
                    high_watermark,
                    lag: high_watermark.saturating_sub(from),
                })
            })
            .collect();
        Ok(proto::GroupDescription {
            group: name.to_owned(),
            state: group.map_or("empty", Group::state).to_owned(),
            generation: group.map_or(0, |g| g.generation),
            assignor: group.map_or(Assignor::Range, |g| g.assignor).name().to_owned(),
            members,
            partitions: lags,
        })
    }

    /// Records of the offsets partition the load skipped (not commits).
    pub fn offsets_skipped(&self) -> u64 {
        self.offsets.skipped()
    }

    pub fn list(&self) -> BrokerResult<Vec<proto::GroupDescription>> {
        let mut names: BTreeSet<String> = self.lock().keys().cloned().collect();
        names.extend(self.offsets.groups());
        names.iter().map(|name| self.describe(name)).collect()
    }
}

fn unknown_group(name: &str) -> BrokerError {
    BrokerError::new(ErrorCode::UnknownGroup, format!("group {name:?} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::generation_label;

    #[test]
    fn generations_read_as_term_and_number() {
        let table = [(0, "0"), ((1 << 32) + 2, "1.2"), (4_294_967_298, "1.2"), ((7 << 32) + 1, "7.1"), (3, "0.3")];
        for (generation, label) in table {
            assert_eq!(generation_label(generation), label, "{generation}");
        }
    }
}
