//! The broker's state and operations, independent of gRPC: the topics of
//! the cluster and the partitions this broker holds a replica of, produce,
//! fetch with long polling, offsets.
//!
//! Every partition is a Raft group over the brokers its topic record lists.
//! A broker keeps itself in line with the metadata store: it registers under
//! a lease, and [`Broker::reconcile`] (on every metadata change and every
//! second) opens the replicas assigned to it, starts new groups, and drops
//! deleted topics. A single broker is the same with a cluster of one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;

use super::config::BrokerConfig;
use super::data_dir::DataDirClaim;
use super::error::{BrokerError, BrokerResult, ErrorCode};
use super::partition::Partition;
use crate::log::batch::BATCH_BYTES_MAX;
use crate::log::{Batch, BatchBuilder, FlushPolicy, LogConfig, Record, RecordHeader};
use crate::meta::cluster::{
    decommission, decommissioned, live_brokers, place, recommission, BrokerRecord, Registration,
};
use crate::meta::election::current_controller;
use crate::meta::topics::{TopicConfig, TopicError, TopicRecord, Topics, UpdateError, INTERNAL_TOPIC_PREFIX};
use crate::meta::MetaStore;
use crate::proto;
use crate::raft::{self, raft_config, Acks, Connections, GroupId, NodeId, ReplicaEnv, Router};
use crate::sys::clock::{Clock, SlewedClock};
use crate::sys::disk::Disk;
use crate::sys::planted::{self, Bug};
use crate::sys::rng::random_u64;
use crate::sys::task::blocking;

/// Replicas other than the preferred leader start a new group themselves
/// once its topic is this old (the preferred one may be down).
const BOOTSTRAP_GRACE_MS: i64 = 5_000;
/// A damaged leader about to reopen hands its leadership to a caught-up
/// follower first, so the group has a leader (which will repair this
/// replica) at once instead of after an election timeout; a follower
/// damaged meanwhile could otherwise leave the group with two replicas
/// waiting for repair and no leader.
pub(super) async fn hand_over_before_closing(partition: &Partition) {
    let replica = partition.replica();
    if !replica.is_leader() {
        return;
    }
    let mut progress = replica.progress();
    progress.sort_by_key(|(_, lag)| *lag);
    for (broker, lag) in progress {
        if broker == replica.node_id() || lag > 0 || replica.hand_over(broker).await.is_err() {
            continue;
        }
        for _ in 0..HAND_OVER_PATIENCE_TICKS {
            if !replica.is_leader() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        return;
    }
}

/// Partitions a stopping broker closes at once.
const CLOSES_AT_ONCE: usize = 32;

/// How long (in 10 ms ticks) a damaged leader waits for the follower it
/// handed leadership to.
const HAND_OVER_PATIENCE_TICKS: u32 = 100;

/// The scrubber's clock: its budget is spent, and damage found is healed,
/// once a tick.
const SCRUB_TICK: Duration = Duration::from_secs(1);
/// At most this much of one replica's log is checked at a time (with the
/// log locked).
const SCRUB_CHUNK_BYTES: usize = 256 << 10;
/// Reconciliation runs at least this often, besides on metadata changes.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How long a partition whose only replica is this broker may take to
/// elect itself and catch up when it opens.
const SELF_ELECTION_PATIENCE: Duration = Duration::from_secs(30);
/// A new leader leads this long before it hands leadership to the
/// preferred replica (a leader lease, with room).
const LEADER_SETTLE: Duration = Duration::from_secs(3);
/// A leader tries to hand a partition over at most this often.
const HAND_OVER_EVERY: Duration = Duration::from_secs(10);
/// How long a new replica may take to catch up before a change of voters
/// gives up (and is tried again).
const MEMBER_CATCH_UP: Duration = Duration::from_secs(30);
/// How long a leader waits for every voter to hold a membership change
/// before it confirms the change (and retries later if they do not).
const MEMBERSHIP_LEARNED: Duration = Duration::from_secs(10);

/// A topic as this broker knows it: its record, and the partitions it
/// holds a replica of.
#[derive(Debug)]
struct TopicState {
    record: TopicRecord,
    partitions: BTreeMap<u32, Arc<Partition>>,
    /// When this broker first opened the topic, on its monotonic clock:
    /// the bootstrap grace runs from here too, so a wall clock behind the
    /// creator's cannot stretch it.
    opened_at: Duration,
}

impl TopicState {
    fn replicas(&self, partition: u32) -> &[u64] {
        self.record.target(partition)
    }

    /// Whether a replica `broker` should host is not open (one whose
    /// reopening failed).
    fn lacks_a_replica(&self, broker: u64) -> bool {
        (0..self.record.config.partitions).any(|p| self.record.hosts(p, broker) && !self.partitions.contains_key(&p))
    }
}

/// One replica's background scrub: where its pass is, or when the next
/// one starts.
#[derive(Debug, Clone, Copy)]
struct ScrubPass {
    cursor: Option<u64>,
    due: tokio::time::Instant,
}

pub struct Broker {
    config: BrokerConfig,
    topics: Topics,
    disk: Arc<dyn Disk>,
    clock: Arc<dyn Clock>,
    /// How this broker's partition replicas reach their peers.
    replicas: ReplicaEnv,
    open: RwLock<BTreeMap<String, Arc<TopicState>>>,
    /// The live brokers, as the last reconciliation read them.
    brokers: RwLock<BTreeMap<u64, BrokerRecord>>,
    /// The data directory, locked for as long as the broker lives.
    _claim: DataDirClaim,
    /// Set once the broker begins to stop: long polls and subscriptions
    /// end, so the server can drain.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Keeps the registration's lease alive; aborted when the broker stops.
    registration: Mutex<Option<tokio::task::JoinHandle<()>>>,
    reconciling: tokio::sync::Mutex<()>,
    /// Groups whose leader (this broker) is changing their voters now.
    converging: Arc<Mutex<BTreeSet<GroupId>>>,
    leadership: Mutex<Leadership>,
    /// Per group, how often a replica here opened with damage to repair.
    repairs: Mutex<HashMap<GroupId, u64>>,
    /// Per group, records a replica here had made durable and recovery
    /// found lost (damage at rest), since the broker started.
    losses: Mutex<HashMap<GroupId, Losses>>,
    /// Scrub passes completed over every replica (each read its whole
    /// durable log without finding damage).
    scrub_passes: std::sync::atomic::AtomicU64,
    /// Per group, when a replica here stopped by a storage error was last
    /// reopened, and how long to wait before the next time.
    reopens: Mutex<HashMap<GroupId, Reopen>>,
}

/// Records a replica had made durable that recovery found lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Losses {
    /// How many times a recovery found a loss.
    pub times: u64,
    /// Offsets lost in all (a replicated partition gets them back from
    /// its peers; a single replica cannot).
    pub offsets: u64,
}

/// The back-off between reopenings of a replica that storage errors keep
/// stopping (a disk that stays full).
#[derive(Debug, Clone, Copy)]
struct Reopen {
    at: tokio::time::Instant,
    delay: Duration,
}

/// A replica a storage error stopped is reopened after this long, then
/// after twice as long each time it stops again soon after, up to
/// [`REOPEN_DELAY_MAX`].
const REOPEN_DELAY_MIN: Duration = Duration::from_secs(1);
const REOPEN_DELAY_MAX: Duration = Duration::from_secs(30);

/// When this broker became leader of each group it leads, and when it last
/// tried to hand a group's leadership over.
#[derive(Debug, Default)]
struct Leadership {
    led_since: HashMap<GroupId, tokio::time::Instant>,
    handed_over: HashMap<GroupId, tokio::time::Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.deregister();
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("broker_id", &self.config.broker_id).finish()
    }
}

fn to_proto_config(config: &TopicConfig) -> proto::TopicConfig {
    proto::TopicConfig {
        partitions: config.partitions,
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        segment_bytes: config.segment_bytes,
        replication_factor: config.replication_factor,
    }
}

pub(super) fn to_proto_record(record: Record) -> proto::Record {
    let mut value: Option<Vec<u8>> = record.value.map(Bytes::into);
    if planted::on(Bug::ServeAlteredValue) && record.offset % 50 == 7 {
        if let Some(value) = value.as_mut() {
            value.push(b'0');
        }
    }
    proto::Record {
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        key: record.key.map(Bytes::into),
        value,
        headers: record
            .headers
            .into_iter()
            .map(|h| proto::Header { key: h.key, value: h.value.map(Bytes::into) })
            .collect(),
    }
}

impl Broker {
    /// Registers the broker, removes the data of topics deleted while it was
    /// down, and opens the replicas assigned to it.
    pub async fn open(
        config: BrokerConfig,
        store: Arc<dyn MetaStore>,
        disk: Arc<dyn Disk>,
        clock: Arc<dyn Clock>,
        claim: DataDirClaim,
    ) -> BrokerResult<Arc<Self>> {
        let node_id = config.broker_id;
        // Every log of this broker judges ages by one slewed clock, so a
        // replica reopened while the wall clock is stepped forwards does
        // not take the step at face value.
        let ages: Arc<dyn Clock> =
            if planted::on(Bug::RetentionOnWallClock) { clock.clone() } else { SlewedClock::new(clock.clone()) };
        let replicas = ReplicaEnv {
            node_id,
            disk: disk.clone(),
            clock: ages,
            connections: Connections::new(node_id),
            router: Router::new(),
            raft_config: raft_config(),
        };
        let broker = Arc::new(Self {
            config,
            topics: Topics::new(store.clone()),
            disk,
            clock,
            replicas,
            open: RwLock::new(BTreeMap::new()),
            brokers: RwLock::new(BTreeMap::new()),
            registration: Mutex::new(None),
            reconciling: tokio::sync::Mutex::new(()),
            converging: Arc::default(),
            leadership: Mutex::default(),
            repairs: Mutex::default(),
            losses: Mutex::default(),
            scrub_passes: std::sync::atomic::AtomicU64::new(0),
            reopens: Mutex::default(),
            _claim: claim,
            stopping: tokio::sync::watch::Sender::new(false),
        });
        let me = BrokerRecord { id: node_id, address: broker.advertised_address() };
        let ttl = Duration::from_millis(broker.config.session_timeout_ms.max(1_000));
        let registration = Registration::register(store, me, ttl).await?;
        let keep_alive = tokio::spawn(registration.keep_alive());
        *broker.registration.lock().unwrap_or_else(|p| p.into_inner()) = Some(keep_alive);

        let records = broker.topics.list().await?;
        let wanted: Vec<String> = records.iter().map(Self::topic_dir_name).collect();
        let topics_dir = broker.config.data_dir.join("topics");
        let disk = broker.disk.clone();
        blocking(move || {
            disk.create_dir_all(&topics_dir).map_err(|e| BrokerError::new(ErrorCode::StorageFailed, e.to_string()))?;
            for name in disk.list_subdirs(&topics_dir).unwrap_or_default() {
                if !wanted.contains(&name) {
                    tracing::info!(dir = %name, "removing the data of a deleted topic");
                    let _ = disk.remove_dir_all(&topics_dir.join(&name));
                }
            }
            let _ = disk.sync_dir(&topics_dir);
            Ok::<(), BrokerError>(())
        })
        .await?;
        broker.reconcile().await?;
        Ok(broker)
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    pub fn broker_id(&self) -> u64 {
        self.config.broker_id
    }

    /// The topics in the metadata store.
    pub(super) fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Where Raft messages for this broker's replicas are delivered.
    pub fn raft_router(&self) -> Arc<Router> {
        self.replicas.router.clone()
    }

    /// The address other brokers and clients reach this one at.
    fn advertised_address(&self) -> String {
        self.config.advertise.clone().unwrap_or_else(|| self.config.listen.to_string())
    }

    /// The live brokers, as last read.
    pub fn live_brokers(&self) -> BTreeMap<u64, BrokerRecord> {
        self.brokers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn address_of(&self, broker: u64) -> Option<String> {
        self.brokers.read().unwrap_or_else(|p| p.into_inner()).get(&broker).map(|b| b.address.clone())
    }

    /// Stops renewing the registration: the broker drops out of the
    /// cluster once its lease runs out.
    fn deregister(&self) {
        if let Some(task) = self.registration.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }

    /// Reconciles on every metadata change, and every second, until the
    /// future is dropped.
    pub async fn run_reconciler(self: Arc<Self>) {
        let mut revision = self.topics.store().revision();
        loop {
            tokio::select! {
                changed = revision.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
            if let Err(error) = self.reconcile().await {
                tracing::warn!(%error, "reconciling with the metadata store failed; will retry");
            }
        }
    }

    /// Brings this broker in line with the metadata store: learns the live
    /// brokers, opens the replicas assigned to it, starts new groups, and
    /// closes and deletes the replicas of deleted topics.
    pub async fn reconcile(&self) -> BrokerResult<()> {
        let _one_at_a_time = self.reconciling.lock().await;
        let brokers = live_brokers(self.topics.store().as_ref()).await?;
        for broker in brokers.values() {
            self.replicas.connections.set_address(broker.id, &broker.address);
        }
        *self.brokers.write().unwrap_or_else(|p| p.into_inner()) = brokers.clone();
        let records = self.topics.list().await?;
        let gone: Vec<Arc<TopicState>> = {
            let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
            let names: Vec<String> = open
                .iter()
                .filter(|(name, state)| !records.iter().any(|r| &r.name == *name && r.id == state.record.id))
                .map(|(name, _)| name.clone())
                .collect();
            names.iter().filter_map(|name| open.remove(name)).collect()
        };
        for state in gone {
            self.drop_topic_data(&state).await?;
        }
        for record in records {
            let known = self.topic(&record.name).ok().filter(|state| state.record.id == record.id);
            let state = match known {
                Some(state) if state.record == record && !state.lacks_a_replica(self.config.broker_id) => state,
                known => match self.open_topic(record, known).await {
                    Ok(state) => state,
                    Err(error) => {
                        tracing::warn!(%error, "opening a topic's replicas failed; will retry");
                        continue;
                    }
                },
            };
            self.start_groups(&state, &brokers).await;
            self.converge(&state, &brokers);
        }
        Ok(())
    }

    /// On a leader that is not its partition's preferred replica (the first
    /// of its target), and has led for a while: hands leadership to the
    /// preferred replica once that one has caught up (at most every
    /// [`HAND_OVER_EVERY`] per partition).
    fn prefer_leader(
        &self,
        record: &TopicRecord,
        index: u32,
        partition: &Arc<Partition>,
        brokers: &BTreeMap<u64, BrokerRecord>,
    ) {
        let group = partition.replica().group();
        let Some(&preferred) = record.target(index).first() else { return };
        let now = tokio::time::Instant::now();
        {
            let mut leadership = lock(&self.leadership);
            let since = *leadership.led_since.entry(group).or_insert(now);
            if preferred == self.config.broker_id || !brokers.contains_key(&preferred) || now - since < LEADER_SETTLE {
                return;
            }
            if leadership.handed_over.get(&group).is_some_and(|at| now - *at < HAND_OVER_EVERY) {
                return;
            }
            leadership.handed_over.insert(group, now);
        }
        let (partition, name) = (partition.clone(), record.name.clone());
        tokio::spawn(async move {
            match partition.replica().hand_over(preferred).await {
                Ok(()) => {
                    tracing::info!(topic = %name, index, to = preferred, "handing leadership to the preferred replica")
                }
                Err(error) => tracing::debug!(topic = %name, index, %error, "not handing leadership over yet"),
            }
        });
    }

    /// On the leader of each of `state`'s partitions whose voters are not
    /// its target replicas: changes them (in the background, one change per
    /// group at a time), then records the new voters in the topic record,
    /// which lets the removed brokers drop their replicas.
    fn converge(&self, state: &TopicState, brokers: &BTreeMap<u64, BrokerRecord>) {
        for (&index, partition) in &state.partitions {
            let replica = partition.replica();
            let group = replica.group();
            if !replica.is_leader() {
                lock(&self.leadership).led_since.remove(&group);
                continue;
            }
            let target: BTreeSet<u64> = state.record.target(index).iter().copied().collect();
            let (voters, learners) = replica.membership();
            if !voters.contains(&self.config.broker_id) {
                // A leader the last change removed: it is stepping down,
                // and openraft must not be asked for another change.
                continue;
            }
            let change = voters != target || !learners.is_subset(&target);
            if !change && !state.record.moving(index) {
                if self.config.prefer_leaders {
                    self.prefer_leader(&state.record, index, partition, brokers);
                }
                continue;
            }
            // New members are reached at their registered address (a
            // voter already in the group needs none: it may be down).
            let addresses: Option<BTreeMap<NodeId, String>> = target
                .iter()
                .map(|id| match brokers.get(id) {
                    Some(broker) => Some((*id, broker.address.clone())),
                    None if voters.contains(id) => Some((*id, String::new())),
                    None => None,
                })
                .collect();
            let Some(addresses) = addresses else {
                tracing::debug!(topic = %state.record.name, index, ?target, "a new replica's broker is not live");
                continue;
            };
            if !self.converging.lock().unwrap_or_else(|p| p.into_inner()).insert(group) {
                continue;
            }
            let (converging, topics, partition) = (self.converging.clone(), self.topics.clone(), partition.clone());
            let (name, id) = (state.record.name.clone(), state.record.id);
            tokio::spawn(async move {
                let replica = partition.replica();
                let changed = if change {
                    tracing::info!(topic = %name, index, ?voters, ?target, "changing a partition's replicas");
                    replica.change_voters(&addresses, MEMBER_CATCH_UP).await
                } else {
                    Ok(())
                };
                // Confirming lets removed brokers delete their replicas:
                // first every voter must be past the old configuration.
                let changed = match changed {
                    Ok(()) => replica.wait_voters_learned_membership(MEMBERSHIP_LEARNED).await,
                    Err(error) => Err(error),
                };
                match changed {
                    Ok(()) => {
                        let confirmed = topics
                            .update(&name, id, |record| {
                                let now: BTreeSet<u64> = record.target(index).iter().copied().collect();
                                if now != target || !record.moving(index) {
                                    return Ok::<_, String>(false);
                                }
                                record.confirm_members(index, record.target(index).to_vec());
                                Ok(true)
                            })
                            .await;
                        match confirmed {
                            Ok(Some(_)) => tracing::info!(topic = %name, index, ?target, "partition replicas changed"),
                            Ok(None) => {}
                            Err(error) => tracing::warn!(topic = %name, index, %error, "recording new replicas failed"),
                        }
                    }
                    Err(error) => tracing::warn!(topic = %name, index, %error, "changing replicas failed; will retry"),
                }
                converging.lock().unwrap_or_else(|p| p.into_inner()).remove(&group);
            });
        }
    }

    /// Starts the groups of `state`'s hosted partitions that have no
    /// membership yet: at once on the preferred leader, after a grace
    /// period on the other replicas (the preferred one may be down).
    async fn start_groups(&self, state: &TopicState, brokers: &BTreeMap<u64, BrokerRecord>) {
        let me = self.config.broker_id;
        let old_enough = past_bootstrap_grace(
            self.clock.now_ms().saturating_sub(state.record.created_ms),
            self.clock.monotonic().saturating_sub(state.opened_at),
        );
        for (&index, partition) in &state.partitions {
            // The group's first voters start it, all with the same set, even
            // if the partition is already being moved; once its leader has
            // confirmed a change, new replicas join through the leader.
            let replicas = state.record.members(index);
            let first_voters = state.record.bootstrappable(index) && replicas.contains(&me);
            if partition.replica().has_membership() || !first_voters || !(replicas.first() == Some(&me) || old_enough) {
                continue;
            }
            let members: Option<BTreeMap<NodeId, String>> =
                replicas.iter().map(|id| brokers.get(id).map(|b| (*id, b.address.clone()))).collect();
            let Some(members) = members else {
                tracing::debug!(topic = %state.record.name, index, "a replica's broker is not registered yet");
                continue;
            };
            if let Err(error) = partition.replica().bootstrap(&members).await {
                tracing::warn!(topic = %state.record.name, index, %error, "starting a partition group failed");
            }
        }
    }

    fn topic_dir_name(record: &TopicRecord) -> String {
        format!("{}-{:016x}", record.name, record.id)
    }

    fn topic_dir(&self, record: &TopicRecord) -> PathBuf {
        self.config.data_dir.join("topics").join(Self::topic_dir_name(record))
    }
    fn log_config(&self, record: &TopicRecord) -> LogConfig {
        let defaults = LogConfig::default();
        let config = &record.config;
        // weir's own topics keep what they hold until weir deletes it.
        let internal = record.name.starts_with(INTERNAL_TOPIC_PREFIX);
        LogConfig {
            segment_bytes_max: config.segment_bytes.unwrap_or(defaults.segment_bytes_max),
            retention_bytes: if internal { None } else { config.retention_bytes },
            retention_ms: if internal { None } else { config.retention_ms.or(defaults.retention_ms) },
            // Raft fsyncs every append before it counts the entry.
            flush: FlushPolicy::Explicit,
            ..defaults
        }
    }

    /// Brings this broker's replicas of `record`'s partitions in line with
    /// it: opens those assigned to it that `known` (the topic as this
    /// broker had it) lacks, and closes and deletes those no longer
    /// assigned. A partition whose only replica is this broker is started
    /// and ready (elected, caught up) on return.
    async fn open_topic(&self, record: TopicRecord, known: Option<Arc<TopicState>>) -> BrokerResult<Arc<TopicState>> {
        let me = self.config.broker_id;
        let dir = self.topic_dir(&record);
        let log_config = self.log_config(&record);
        let hosted: BTreeSet<u32> = (0..record.config.partitions).filter(|&p| record.hosts(p, me)).collect();
        let mut kept: BTreeMap<u32, Arc<Partition>> = BTreeMap::new();
        let mut removed: Vec<Arc<Partition>> = Vec::new();
        for (index, partition) in known.iter().flat_map(|state| state.partitions.iter()) {
            if hosted.contains(index) {
                kept.insert(*index, partition.clone());
            } else {
                removed.push(partition.clone());
            }
        }
        if known.is_none() {
            // Replicas removed while this broker was down: each leaves its
            // record (vote, last entry) before it goes, as below.
            let (disk, dir, hosted) = (self.disk.clone(), dir.clone(), hosted.clone());
            let (log_config, clock) = (log_config.clone(), self.replicas.clock.clone());
            blocking(move || {
                for name in disk.list_subdirs(&dir).unwrap_or_default() {
                    if name.parse::<u32>().is_ok_and(|index| !hosted.contains(&index)) {
                        let replica_dir = dir.join(&name);
                        tracing::info!(dir = %replica_dir.display(), "a replica moved away while this broker was down; removing it");
                        let recorded = raft::retire_at_rest(disk.clone(), &replica_dir, log_config.clone(), clock.clone());
                        remove_retired_replica(disk.as_ref(), &replica_dir, recorded);
                    }
                }
            })
            .await;
        }
        let opening = hosted.iter().filter(|index| !kept.contains_key(index)).map(|&index| {
            let group = GroupId { topic_id: record.id, partition: index };
            let dir = dir.join(index.to_string());
            let (log_config, name) = (log_config.clone(), &record.name);
            async move { Partition::open(name, index, group, &dir, &self.replicas, log_config).await.map(Arc::new) }
        });
        let opened = futures::future::try_join_all(opening).await?;
        let alone = BTreeMap::from([(me, self.advertised_address())]);
        // A lone replica has no peers to repair it from: its loss is
        // counted below, not as a repair.
        let has_peers = |p: &Arc<Partition>| record.members(p.index()).len() > 1;
        for partition in opened.iter().filter(|p| p.replica().repairing() && has_peers(p)) {
            *lock(&self.repairs).entry(partition.replica().group()).or_default() += 1;
        }
        for partition in &opened {
            if let Some((from, offsets)) = partition.loss_at_open() {
                let mut losses = lock(&self.losses);
                let losses = losses.entry(partition.replica().group()).or_default();
                losses.times += 1;
                losses.offsets += offsets;
                tracing::error!(
                    topic = %record.name,
                    partition = partition.index(),
                    lost_from = from,
                    lost_to = from + offsets,
                    repairing = partition.replica().repairing(),
                    "records this replica had made durable were lost at rest"
                );
            }
        }
        for partition in &opened {
            let index = partition.index();
            let only_me = record.target(index) == [me] && record.members(index) == [me] && record.moves(index) == 0;
            if only_me {
                partition.replica().bootstrap(&alone).await.map_err(|e| BrokerError::new(ErrorCode::Internal, e))?;
                if !partition.replica().wait_caught_up(SELF_ELECTION_PATIENCE).await {
                    return Err(BrokerError::new(
                        ErrorCode::PartitionUnavailable,
                        format!("{}/{} did not elect its only replica in time", record.name, partition.index()),
                    ));
                }
            }
        }
        kept.extend(opened.into_iter().map(|p| (p.index(), p)));
        let opened_at = known.as_ref().map_or_else(|| self.clock.monotonic(), |state| state.opened_at);
        let state = Arc::new(TopicState { record, partitions: kept, opened_at });
        self.open.write().unwrap_or_else(|p| p.into_inner()).insert(state.record.name.clone(), state.clone());
        for partition in removed {
            tracing::info!(topic = %state.record.name, partition = partition.index(), "replica moved away; removing it");
            partition.close().await?;
            // Its vote and last entry outlive it (see `raft::retired`): a
            // replica created here by a later move must not vote as if it
            // had no past.
            let retirement = partition.replica().retirement();
            let (disk, dir) = (self.disk.clone(), partition.dir().to_path_buf());
            blocking(move || {
                let recorded = raft::retired::save(disk.as_ref(), &dir, &retirement);
                remove_retired_replica(disk.as_ref(), &dir, recorded);
            })
            .await;
        }
        Ok(state)
    }

    /// Closes a deleted topic's replicas and removes their data.
    async fn drop_topic_data(&self, state: &TopicState) -> BrokerResult<()> {
        for partition in state.partitions.values() {
            partition.close().await?;
        }
        let dir = self.topic_dir(&state.record);
        let disk = self.disk.clone();
        blocking(move || {
            if let Err(error) = disk.remove_dir_all(&dir) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    return Err(BrokerError::new(ErrorCode::StorageFailed, error.to_string()));
                }
            }
            if let Some(parent) = dir.parent() {
                let _ = disk.sync_dir(parent);
            }
            Ok(())
        })
        .await?;
        tracing::info!(topic = %state.record.name, "topic's replicas removed");
        Ok(())
    }

    fn topic(&self, name: &str) -> BrokerResult<Arc<TopicState>> {
        self.open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::unknown_topic(name))
    }

    /// Like [`Broker::partition`], but first catches up with the metadata
    /// store if the topic is not known yet (created through another broker
    /// a moment ago).
    pub async fn find_partition(&self, topic: &str, partition: u32) -> BrokerResult<Arc<Partition>> {
        if self.topic(topic).is_err() {
            self.reconcile().await?;
        }
        self.partition(topic, partition)
    }

    /// The partition to read from: this broker's replica if it leads the
    /// partition and has caught up; else NOT_LEADER naming the leader (a
    /// follower's high watermark lags what was acknowledged).
    pub async fn readable_partition(&self, topic: &str, partition: u32) -> BrokerResult<Arc<Partition>> {
        let partition = self.find_partition(topic, partition).await?;
        partition.readable().await?;
        Ok(partition)
    }

    /// This broker's replica of a partition. A partition held elsewhere is
    /// [`ErrorCode::NotLeader`], naming its preferred leader.
    pub fn partition(&self, topic: &str, partition: u32) -> BrokerResult<Arc<Partition>> {
        let state = self.topic(topic)?;
        if partition >= state.record.config.partitions {
            return Err(BrokerError::new(
                ErrorCode::UnknownPartition,
                format!("topic {topic:?} has partitions 0..{}, not {partition}", state.record.config.partitions),
            ));
        }
        if let Some(hosted) = state.partitions.get(&partition) {
            return Ok(hosted.clone());
        }
        let preferred = state.replicas(partition).first().copied();
        let mut error = BrokerError::new(
            ErrorCode::NotLeader,
            format!(
                "broker {} holds no replica of {topic}/{partition}; its replicas: {:?}",
                self.config.broker_id,
                state.replicas(partition)
            ),
        );
        error.leader = preferred.and_then(|id| self.address_of(id));
        if error.leader.is_none() {
            error.code = ErrorCode::PartitionUnavailable;
        }
        Err(error)
    }

    /// How many partitions `topic` has, if it exists.
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topic(topic).ok().map(|state| state.record.config.partitions)
    }

    /// Places a new topic's partitions on the live brokers.
    /// Where a new topic's partitions go: on the live brokers that are
    /// not `leaving` (decommissioned).
    fn placement(&self, config: &TopicConfig, leaving: &BTreeSet<u64>) -> Result<Vec<Vec<u64>>, String> {
        let live: Vec<u64> = self.live_brokers().keys().copied().filter(|b| !leaving.contains(b)).collect();
        let live = if live.is_empty() { vec![self.config.broker_id] } else { live };
        let factor = match config.replication_factor {
            Some(factor) if factor as usize > live.len() => {
                return Err(format!("replication_factor {factor} exceeds the {} live broker(s)", live.len()))
            }
            Some(factor) => factor,
            None => self.config.default_replication_factor.clamp(1, live.len() as u32),
        };
        Ok(place(config.partitions, factor, &live, random_u64()))
    }

    /// Partition 0 of one of weir's own single-partition topics, created on
    /// first use.
    pub async fn internal_partition(&self, name: &str, segment_bytes: u64) -> BrokerResult<Arc<Partition>> {
        if let Ok(partition) = self.partition(name, 0) {
            return Ok(partition);
        }
        let config = TopicConfig {
            partitions: 1,
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: Some(segment_bytes),
            replication_factor: None,
        };
        // Place it on the brokers live now, not as last seen.
        self.reconcile().await?;
        let leaving = decommissioned(self.topics.store().as_ref()).await?;
        match self.topics.create(name, config, self.clock.now_ms(), true, |c| self.placement(c, &leaving)).await {
            Ok(_) | Err(TopicError::AlreadyExists(_)) => {}
            Err(other) => return Err(other.into()),
        }
        self.reconcile().await?;
        self.partition(name, 0)
    }

    /// The partitions this broker holds a replica of, in topic and
    /// partition order.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        let open = self.open.read().unwrap_or_else(|p| p.into_inner());
        open.values().flat_map(|t| t.partitions.values().cloned()).collect()
    }

    // ---- administration ----

    pub async fn create_topic(&self, name: &str, config: TopicConfig) -> BrokerResult<proto::TopicDescription> {
        self.reconcile().await?;
        let leaving = decommissioned(self.topics.store().as_ref()).await?;
        let record =
            self.topics.create(name, config, self.clock.now_ms(), false, |c| self.placement(c, &leaving)).await?;
        self.reconcile().await?;
        let state = self.topic(&record.name)?;
        tracing::info!(topic = name, partitions = record.config.partitions, replicas = ?record.replicas, "topic created");
        self.describe_state(&state).await
    }

    pub async fn delete_topic(&self, name: &str) -> BrokerResult<()> {
        refuse_internal(name, "deleted")?;
        self.topics.delete(name).await?;
        self.reconcile().await?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    async fn describe_state(&self, state: &Arc<TopicState>) -> BrokerResult<proto::TopicDescription> {
        let mut described = Vec::new();
        for index in 0..state.record.config.partitions {
            let replicas = state.replicas(index).to_vec();
            let mut description = match state.partitions.get(&index) {
                Some(partition) => {
                    let partition = partition.clone();
                    blocking(move || partition.describe()).await?
                }
                None => proto::PartitionDescription { partition: index, ..Default::default() },
            };
            let hidden = planted::on(Bug::HideReplica) && self.config.broker_id == 2 && index == 0;
            description.hosted = state.partitions.contains_key(&index) && !hidden;
            if let Some(partition) = state.partitions.get(&index) {
                description.repairing = partition.replica().repairing();
                description.repairs = self.repairs(partition.replica().group());
                let losses = self.losses(partition.replica().group());
                (description.losses, description.lost_offsets) = (losses.times, losses.offsets);
            }
            if let Some((leader, address)) = state.partitions.get(&index).and_then(|p| p.replica().leader()) {
                description.leader = leader;
                description.leader_address = address;
            }
            if let Some(partition) = state.partitions.get(&index).filter(|p| p.replica().is_leader()) {
                description.progress = partition
                    .replica()
                    .progress()
                    .into_iter()
                    .map(|(broker, lag)| proto::ReplicaProgress { broker, lag })
                    .collect();
                description.voter_sets =
                    partition.replica().voter_sets().into_iter().map(|brokers| proto::VoterSet { brokers }).collect();
            }
            description.replicas = replicas;
            description.members = state.record.members(index).to_vec();
            described.push(description);
        }
        Ok(proto::TopicDescription {
            name: state.record.name.clone(),
            config: Some(to_proto_config(&state.record.config)),
            partitions: described,
            created_ms: state.record.created_ms,
        })
    }

    pub async fn describe_topic(&self, name: &str) -> BrokerResult<proto::TopicDescription> {
        if self.topic(name).is_err() {
            self.reconcile().await?;
        }
        let state = self.topic(name)?;
        self.describe_state(&state).await
    }

    /// Every topic but weir's own (`__`-prefixed; describe them by name).
    pub async fn list_topics(&self) -> BrokerResult<Vec<proto::TopicDescription>> {
        let states: Vec<Arc<TopicState>> = self
            .open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|state| !state.record.name.starts_with(INTERNAL_TOPIC_PREFIX))
            .cloned()
            .collect();
        let mut topics = Vec::with_capacity(states.len());
        for state in &states {
            topics.push(self.describe_state(state).await?);
        }
        Ok(topics)
    }

    pub async fn describe_cluster(&self) -> BrokerResult<proto::DescribeClusterResponse> {
        let store = self.topics.store().as_ref();
        let brokers = live_brokers(store).await?;
        let controller = current_controller(store).await?;
        let records = self.topics.list().await?;
        let leaving = decommissioned(store).await?;
        let leaving = leaving.iter().map(|&id| broker_status(id, &records, &leaving, &brokers)).collect();
        Ok(proto::DescribeClusterResponse {
            brokers: brokers.into_values().map(|b| proto::ClusterBroker { id: b.id, address: b.address }).collect(),
            answered_by: self.config.broker_id,
            controller: controller.as_ref().map_or(0, |(c, _)| c.broker),
            controller_epoch: controller.map_or(0, |(_, epoch)| epoch),
            decommissioned: leaving,
        })
    }

    /// Moves a partition onto `replicas` (an operator's reassignment): the
    /// partition's leader makes them its voters in the background.
    pub async fn move_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: Vec<u64>,
    ) -> BrokerResult<proto::PartitionDescription> {
        let live = live_brokers(self.topics.store().as_ref()).await?;
        if replicas.is_empty() {
            return Err(BrokerError::invalid("a partition needs at least one replica"));
        }
        let distinct: BTreeSet<u64> = replicas.iter().copied().collect();
        if distinct.len() != replicas.len() {
            return Err(BrokerError::invalid(format!("replicas {replicas:?} name a broker twice")));
        }
        if let Some(missing) = replicas.iter().find(|id| !live.contains_key(id)) {
            let known: Vec<u64> = live.keys().copied().collect();
            return Err(BrokerError::invalid(format!("broker {missing} is not live; live brokers: {known:?}")));
        }
        let leaving = decommissioned(self.topics.store().as_ref()).await?;
        if let Some(leaving) = replicas.iter().find(|id| leaving.contains(id)) {
            return Err(BrokerError::invalid(format!(
                "broker {leaving} is decommissioned; recommission it before placing replicas on it"
            )));
        }
        let Some(record) = self.topics.get(topic).await? else { return Err(BrokerError::unknown_topic(topic)) };
        if partition >= record.config.partitions {
            return Err(BrokerError::new(
                ErrorCode::UnknownPartition,
                format!("topic {topic:?} has partitions 0..{}, not {partition}", record.config.partitions),
            ));
        }
        let updated = self
            .topics
            .update(topic, record.id, |record| {
                if record.target(partition) == replicas.as_slice() {
                    return Ok::<_, String>(false);
                }
                record.reassign(partition, replicas.clone());
                Ok(true)
            })
            .await
            .map_err(|e| match e {
                UpdateError::Topic(e) => BrokerError::from(e),
                UpdateError::Refused(reason) => BrokerError::invalid(reason),
            })?;
        let record = match updated {
            Some(record) => record,
            None => self.topics.get(topic).await?.ok_or_else(|| BrokerError::unknown_topic(topic))?,
        };
        tracing::info!(topic, partition, ?replicas, "partition reassigned");
        let _ = self.reconcile().await;
        Ok(proto::PartitionDescription {
            partition,
            replicas: record.target(partition).to_vec(),
            members: record.members(partition).to_vec(),
            ..Default::default()
        })
    }

    /// Takes broker `id` out of the cluster (scale in): marks it
    /// decommissioned, and the controller moves its replicas off. Refused
    /// if the brokers left could not hold some partition's replicas (it
    /// would never drain).
    pub async fn decommission_broker(&self, id: u64) -> BrokerResult<proto::DecommissionedBroker> {
        let store = self.topics.store().as_ref();
        let live = live_brokers(store).await?;
        let leaving = decommissioned(store).await?;
        let records = self.topics.list().await?;
        if id == 0 || !(live.contains_key(&id) || leaving.contains(&id) || partitions_naming(&records, id) > 0) {
            return Err(BrokerError::invalid(format!("broker {id} is neither live nor holds a replica")));
        }
        let staying = live.keys().filter(|b| **b != id && !leaving.contains(b)).count();
        let widest = records
            .iter()
            .flat_map(|r| (0..r.config.partitions).map(move |p| (r, p, r.target(p).len())))
            .max_by_key(|(_, _, n)| *n);
        if let Some((record, p, replicas)) = widest.filter(|(_, _, n)| *n > staying) {
            return Err(BrokerError::invalid(format!(
                "decommissioning broker {id} would leave {staying} live broker(s) for {}/{p}'s {replicas} replicas; add a broker first",
                record.name
            )));
        }
        if decommission(store, id).await? {
            tracing::warn!(broker = id, "broker decommissioned: its replicas move off it");
        }
        self.broker_status(id).await
    }

    /// Lifts broker `id`'s decommissioned mark.
    pub async fn recommission_broker(&self, id: u64) -> BrokerResult<proto::DecommissionedBroker> {
        if recommission(self.topics.store().as_ref(), id).await? {
            tracing::warn!(broker = id, "broker recommissioned: it may receive replicas again");
        }
        self.broker_status(id).await
    }

    async fn broker_status(&self, id: u64) -> BrokerResult<proto::DecommissionedBroker> {
        let store = self.topics.store().as_ref();
        let records = self.topics.list().await?;
        Ok(broker_status(id, &records, &decommissioned(store).await?, &live_brokers(store).await?))
    }

    pub fn describe_broker(&self) -> proto::BrokerDescription {
        let open = self.open.read().unwrap_or_else(|p| p.into_inner());
        proto::BrokerDescription {
            broker_id: self.config.broker_id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            data_dir: self.config.data_dir.display().to_string(),
            topics: open.len() as u32,
            partitions: open.values().map(|t| t.partitions.len() as u32).sum(),
        }
    }

    // ---- producing ----

    /// A new idempotent producer identity: a random 63-bit id (a clash is as
    /// likely as guessing a random 63-bit number) at epoch 0.
    pub fn init_producer(&self) -> proto::InitProducerResponse {
        proto::InitProducerResponse { producer_id: (random_u64() >> 1) as i64, producer_epoch: 0 }
    }

    /// Builds the batch a produce request carries, checking every limit.
    fn batch_from_request(&self, request: &proto::ProduceRequest) -> BrokerResult<Batch> {
        let message_bytes_max = self.config.message_bytes_max;
        match (request.records.is_empty(), request.batch.is_empty()) {
            (true, true) => Err(BrokerError::invalid("a produce request needs records or a batch")),
            (false, false) => Err(BrokerError::invalid("a produce request carries records or a batch, not both")),
            (true, false) => {
                if request.batch.len() > BATCH_BYTES_MAX {
                    return Err(BrokerError::new(
                        ErrorCode::MessageTooLarge,
                        format!("batch of {} bytes exceeds {BATCH_BYTES_MAX}", request.batch.len()),
                    ));
                }
                let batch = Batch::decode(request.batch.clone())
                    .map_err(|e| BrokerError::new(ErrorCode::InvalidBatch, e.to_string()))?;
                for (index, record) in batch.records().enumerate() {
                    let record = record.map_err(|e| BrokerError::new(ErrorCode::InvalidBatch, e.to_string()))?;
                    check_record_size(&record, message_bytes_max)?;
                    check_timestamp(index, record.timestamp_ms, ErrorCode::InvalidBatch)?;
                }
                Ok(batch)
            }
            (false, true) => {
                let now_ms = self.clock.now_ms();
                let mut builder = BatchBuilder::new();
                for (index, record) in request.records.iter().enumerate() {
                    check_timestamp(index, record.timestamp_ms, ErrorCode::InvalidRequest)?;
                    let record = Record {
                        offset: 0,
                        timestamp_ms: if record.timestamp_ms == 0 { now_ms } else { record.timestamp_ms },
                        key: record.key.clone().map(Bytes::from),
                        value: record.value.clone().map(Bytes::from),
                        headers: record
                            .headers
                            .iter()
                            .map(|h| RecordHeader { key: h.key.clone(), value: h.value.clone().map(Bytes::from) })
                            .collect(),
                    };
                    check_record_size(&record, message_bytes_max)?;
                    builder.push(&record);
                    if builder.encoded_len() > BATCH_BYTES_MAX {
                        return Err(BrokerError::new(
                            ErrorCode::MessageTooLarge,
                            format!("the records take more than {BATCH_BYTES_MAX} bytes; split them"),
                        ));
                    }
                }
                builder.build().map_err(|e| BrokerError::new(ErrorCode::InvalidBatch, e.to_string()))
            }
        }
    }

    pub async fn produce(&self, request: proto::ProduceRequest) -> BrokerResult<proto::ProduceResponse> {
        refuse_internal(&request.topic, "written by clients")?;
        let partition = self.find_partition(&request.topic, request.partition).await?;
        let acks = proto::Acks::try_from(request.acks)
            .map_err(|_| BrokerError::invalid(format!("unknown acks value {}", request.acks)))?;
        let acks = match acks {
            proto::Acks::All | proto::Acks::Unspecified => Acks::All,
            proto::Acks::Leader => Acks::Leader,
            proto::Acks::None => Acks::None,
        };
        let batch = self.batch_from_request(&request)?;
        let record_count = batch.record_count();
        let applied = partition.append(batch, acks).await?;
        if planted::on(Bug::RefuseAfterAppend) && applied.is_some_and(|a| a.base_offset % 50 == 13) {
            return Err(BrokerError::new(ErrorCode::MessageTooLarge, "the batch is too large (checked after append)"));
        }
        let misreported = |offset: u64| match planted::on(Bug::MisreportedOffset) && offset % 50 == 37 {
            true => offset.saturating_sub(40),
            false => offset,
        };
        Ok(proto::ProduceResponse {
            base_offset: applied.map_or(0, |a| misreported(a.base_offset)),
            record_count,
            high_watermark: partition.high_watermark(),
            offset_known: applied.is_some(),
        })
    }

    // ---- consuming ----

    /// Reads from `offset`, waiting up to `max_wait_ms` (capped) for data if
    /// there is none yet. Offsets outside `[log start, log end]` fail.
    pub async fn fetch(&self, request: proto::FetchRequest) -> BrokerResult<proto::FetchResponse> {
        let partition = self.readable_partition(&request.topic, request.partition).await?;
        let max_bytes = match request.max_bytes {
            0 => self.config.fetch_bytes_default,
            n => (n as usize).min(self.config.fetch_bytes_max),
        };
        let wait = Duration::from_millis(u64::from(request.max_wait_ms.min(self.config.fetch_wait_ms_max)));
        let deadline = tokio::time::Instant::now() + wait;
        let offset = request.offset;
        let mut high_watermark = partition.subscribe();
        loop {
            let target = partition.clone();
            let (batches, bounds) = blocking(move || {
                let bounds = target.bounds()?;
                if offset < bounds.log_start_offset || offset > bounds.log_end_offset {
                    return Err(BrokerError::new(
                        ErrorCode::OffsetOutOfRange,
                        format!(
                            "offset {offset} is outside [{}, {}] of {}/{}",
                            bounds.log_start_offset,
                            bounds.log_end_offset,
                            target.topic(),
                            target.index()
                        ),
                    ));
                }
                if offset >= bounds.high_watermark {
                    return Ok((Vec::new(), bounds));
                }
                target.read(offset, max_bytes)
            })
            .await?;
            let done = !batches.is_empty() || tokio::time::Instant::now() >= deadline;
            if done {
                return fetch_response(offset, batches, bounds, request.encoded);
            }
            // Wait for the high watermark to move, or the deadline.
            high_watermark.mark_unchanged();
            if bounds.high_watermark != partition.high_watermark() {
                continue;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut stopping = self.stopping();
            let stopped = tokio::select! {
                changed = tokio::time::timeout(left, high_watermark.changed()) => changed.is_err(),
                _ = stopping.wait_for(|stopping| *stopping) => true,
            };
            if stopped {
                return fetch_response(offset, Vec::new(), bounds, request.encoded);
            }
        }
    }

    pub async fn list_offset(&self, request: proto::ListOffsetRequest) -> BrokerResult<u64> {
        let partition = self.readable_partition(&request.topic, request.partition).await?;
        let spec = proto::OffsetSpec::try_from(request.spec)
            .map_err(|_| BrokerError::invalid(format!("unknown offset spec {}", request.spec)))?;
        let timestamp_ms = request.timestamp_ms;
        blocking(move || match spec {
            proto::OffsetSpec::Earliest => Ok(partition.bounds()?.log_start_offset),
            proto::OffsetSpec::Latest => Ok(partition.high_watermark()),
            proto::OffsetSpec::Timestamp => {
                Ok(partition.offset_for_timestamp(timestamp_ms)?.unwrap_or_else(|| partition.high_watermark()))
            }
            proto::OffsetSpec::Unspecified => {
                Err(BrokerError::invalid("offset spec must be EARLIEST, LATEST or TIMESTAMP"))
            }
        })
        .await
    }

    // ---- background work ----

    /// Applies retention now and then, from `retention_initial_delay_ms`
    /// after the broker starts, until it is dropped.
    /// Storage failures are logged; the partition reports them.
    pub async fn run_maintenance(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.retention_check_interval_ms.max(1) as u64);
        tokio::time::sleep(Duration::from_millis(self.config.retention_initial_delay_ms.max(0) as u64)).await;
        loop {
            for partition in self.partitions() {
                if let Err(error) = partition.maintain(true).await {
                    tracing::warn!(topic = partition.topic(), partition = partition.index(), %error, "maintenance failed");
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// How often this broker found damage in its replica of `group` and
    /// had it repaired from peers, since it started.
    pub fn repairs(&self, group: GroupId) -> u64 {
        lock(&self.repairs).get(&group).copied().unwrap_or(0)
    }

    /// Records this broker's replica of `group` had made durable and
    /// recovery found lost, since the broker started.
    pub fn losses(&self, group: GroupId) -> Losses {
        lock(&self.losses).get(&group).copied().unwrap_or_default()
    }

    /// Scrub passes completed since the broker started.
    pub fn scrub_passes(&self) -> u64 {
        self.scrub_passes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Scrubs the hosted replicas' logs in the background
    /// ([`BrokerConfig::scrub_bytes_per_sec`]) and reopens every replica
    /// whose log met damage, by a scrub or any read, until the broker is
    /// dropped.
    pub async fn run_scrubber(self: Arc<Self>) {
        let mut passes: BTreeMap<(String, u32), ScrubPass> = BTreeMap::new();
        loop {
            tokio::time::sleep(SCRUB_TICK).await;
            if self.config.scrub_bytes_per_sec > 0 {
                self.scrub_some(&mut passes).await;
            }
            let now = tokio::time::Instant::now();
            if self.partitions().iter().any(|p| p.damaged() || self.reopen_due(p, now)) {
                self.heal_damaged().await;
            }
        }
    }

    /// One tick's worth of scrubbing: a chunk at a time from each replica
    /// whose pass is under way or due, round robin, until the tick's budget
    /// is spent or every pass is done.
    async fn scrub_some(&self, passes: &mut BTreeMap<(String, u32), ScrubPass>) {
        let now = tokio::time::Instant::now();
        let interval = Duration::from_millis(self.config.scrub_interval_ms.max(1) as u64);
        let per_tick = self.config.scrub_bytes_per_sec as f64 * SCRUB_TICK.as_secs_f64();
        let mut budget = (per_tick as usize).max(1);
        let partitions = self.partitions();
        passes.retain(|(topic, index), _| partitions.iter().any(|p| p.topic() == topic && p.index() == *index));
        let mut active: Vec<Arc<Partition>> = partitions
            .into_iter()
            .filter(|partition| {
                let key = (partition.topic().to_owned(), partition.index());
                let pass = passes.entry(key).or_insert(ScrubPass { cursor: None, due: now });
                pass.cursor.is_some() || pass.due <= now
            })
            .collect();
        while budget > 0 && !active.is_empty() {
            let mut still = Vec::with_capacity(active.len());
            for partition in active {
                if budget == 0 {
                    break;
                }
                let key = (partition.topic().to_owned(), partition.index());
                let pass = passes.get_mut(&key).expect("entered above");
                let (from, chunk) = (pass.cursor.unwrap_or(0), budget.min(SCRUB_CHUNK_BYTES));
                budget -= chunk;
                let scrubbed = blocking({
                    let partition = partition.clone();
                    move || partition.scrub(from, chunk)
                })
                .await;
                match scrubbed {
                    Ok(Some(next)) => {
                        pass.cursor = Some(next);
                        still.push(partition);
                    }
                    Ok(None) => {
                        self.scrub_passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        *pass = ScrubPass { cursor: None, due: now + interval };
                    }
                    Err(error) => {
                        tracing::warn!(topic = partition.topic(), partition = partition.index(), %error, "scrub stopped");
                        *pass = ScrubPass { cursor: None, due: now + interval };
                    }
                }
            }
            active = still;
        }
    }

    /// Whether `partition`'s replica was stopped by a storage error and its
    /// back-off is over.
    fn reopen_due(&self, partition: &Partition, now: tokio::time::Instant) -> bool {
        partition.stalled().is_some()
            && lock(&self.reopens).get(&partition.replica().group()).is_none_or(|r| r.at + r.delay <= now)
    }

    /// Closes every replica whose log met damage, or whose Raft core a
    /// storage error stopped, and opens it again.
    ///
    /// Reopening cuts the log at the damage and records how far the lost
    /// entries may have reached; the replica then grants no votes until a
    /// leader has repaired it (see [`crate::raft::Replica::open`]).
    ///
    /// A stopped replica (a full disk: openraft stops a group on any
    /// storage error) reopens as it would at a restart of the broker, and
    /// catches up from its leader once the disk has room. While the disk
    /// stays full it stops again; each reopening soon after the last waits
    /// twice as long, up to [`REOPEN_DELAY_MAX`].
    async fn heal_damaged(&self) {
        let _one_at_a_time = self.reconciling.lock().await;
        let states: Vec<Arc<TopicState>> =
            self.open.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let now = tokio::time::Instant::now();
        for state in states {
            let broken: Vec<u32> = state
                .partitions
                .iter()
                .filter(|(_, p)| p.damaged() || self.reopen_due(p, now))
                .map(|(i, _)| *i)
                .collect();
            if broken.is_empty() {
                continue;
            }
            let mut kept = state.partitions.clone();
            for index in broken {
                let partition = kept.remove(&index).expect("listed above");
                if let Some(reason) = partition.stalled() {
                    let delay = self.note_reopen(partition.replica().group(), now);
                    tracing::warn!(topic = %state.record.name, partition = index, %reason, next_in = ?delay, "a storage error stopped this replica; reopening it");
                } else {
                    tracing::warn!(topic = %state.record.name, partition = index, "damage at rest in a running replica; reopening it to repair it from its peers");
                    hand_over_before_closing(&partition).await;
                }
                if let Err(error) = partition.close().await {
                    tracing::warn!(topic = %state.record.name, partition = index, %error, "closing a replica to reopen it failed");
                }
            }
            let without =
                Arc::new(TopicState { record: state.record.clone(), partitions: kept, opened_at: state.opened_at });
            if let Err(error) = self.open_topic(state.record.clone(), Some(without.clone())).await {
                // The reconciler opens it again later.
                tracing::warn!(topic = %state.record.name, %error, "reopening a replica failed; will retry");
                self.open.write().unwrap_or_else(|p| p.into_inner()).insert(state.record.name.clone(), without);
            }
        }
    }

    /// Records that a stopped replica of `group` is reopened now; returns
    /// how long the next reopening waits: twice the last wait if it stopped
    /// again soon after its last reopening, else the least.
    fn note_reopen(&self, group: GroupId, now: tokio::time::Instant) -> Duration {
        let mut reopens = lock(&self.reopens);
        let delay = match reopens.get(&group) {
            Some(last) if now.duration_since(last.at) < last.delay + REOPEN_DELAY_MAX => {
                (last.delay * 2).clamp(REOPEN_DELAY_MIN, REOPEN_DELAY_MAX)
            }
            _ => REOPEN_DELAY_MIN,
        };
        reopens.insert(group, Reopen { at: now, delay });
        delay
    }

    /// Marks the broker stopping: long polls answer with what they have and
    /// subscriptions end with PARTITION_UNAVAILABLE, so clients go elsewhere
    /// and the server can drain.
    pub fn begin_stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Changes to `true` once the broker begins to stop.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Stops every replica as a crash would: no clean close, nothing
    /// flushed that was not. For fault injection in tests; the broker is
    /// unusable afterwards.
    pub async fn halt(&self) {
        self.deregister();
        for partition in self.partitions() {
            partition.replica().abort().await;
        }
    }

    /// Closes every partition cleanly, [`CLOSES_AT_ONCE`] at a time (each
    /// close fsyncs its log and writes its checkpoint: one by one, 1,000
    /// partitions took 6 s). Every partition is closed even if one fails;
    /// the first failure is the error.
    pub async fn shutdown(&self) -> BrokerResult<()> {
        use futures::StreamExt;
        self.deregister();
        let closed: Vec<BrokerResult<()>> = futures::stream::iter(self.partitions())
            .map(|partition| async move { partition.close().await })
            .buffer_unordered(CLOSES_AT_ONCE)
            .collect()
            .await;
        closed.into_iter().collect()
    }
}

/// Whether a topic is past its bootstrap grace, by its age on the wall
/// clock (against its creator's clock) or by how long this broker has had
/// it open (monotonic): a clock ahead of the creator's only starts a group
/// sooner (as the preferred leader may, with the same voters), and one
/// behind it, or stepped back, delays it by no more than the grace.
fn past_bootstrap_grace(wall_age_ms: i64, open_for: Duration) -> bool {
    wall_age_ms >= BOOTSTRAP_GRACE_MS || open_for >= Duration::from_millis(BOOTSTRAP_GRACE_MS as u64)
}

/// Record timestamps are milliseconds since the Unix epoch: a negative one
/// is refused (retention and time lookups assume none).
fn check_timestamp(index: usize, timestamp_ms: i64, code: ErrorCode) -> BrokerResult<()> {
    if timestamp_ms < 0 {
        return Err(BrokerError::new(
            code,
            format!(
                "record {index} has timestamp {timestamp_ms} ms, before the Unix epoch (0 means the broker's time)"
            ),
        ));
    }
    Ok(())
}

fn check_record_size(record: &Record, limit: usize) -> BrokerResult<()> {
    let size = record.key.as_ref().map_or(0, Bytes::len)
        + record.value.as_ref().map_or(0, Bytes::len)
        + record.headers.iter().map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len)).sum::<usize>();
    if size > limit {
        return Err(BrokerError::new(
            ErrorCode::MessageTooLarge,
            format!("a message of {size} bytes exceeds the limit of {limit} bytes"),
        ));
    }
    Ok(())
}

fn fetch_response(
    offset: u64,
    batches: Vec<Batch>,
    bounds: super::partition::Bounds,
    encoded: bool,
) -> BrokerResult<proto::FetchResponse> {
    let next_offset = batches.last().map_or(offset, Batch::next_offset);
    let mut response = proto::FetchResponse {
        high_watermark: bounds.high_watermark,
        log_start_offset: bounds.log_start_offset,
        next_offset,
        ..proto::FetchResponse::default()
    };
    if encoded {
        response.batches = batches.into_iter().map(|b| b.into_bytes()).collect();
        return Ok(response);
    }
    for batch in &batches {
        for record in batch.records() {
            let record = record.map_err(|e| BrokerError::new(ErrorCode::CorruptData, e.to_string()))?;
            if record.offset >= offset {
                response.records.push(to_proto_record(record));
            }
        }
    }
    Ok(response)
}

/// Weir's own topics (`__` names, such as the committed offsets) are
/// written and deleted by weir alone: a client's record there could keep the
/// group coordinator from loading, and deleting one loses every group's
/// offsets. Reading them stays open.
/// Partitions whose target replicas, voters or superseded targets name
/// broker `id`.
fn partitions_naming(records: &[TopicRecord], id: u64) -> u32 {
    records.iter().map(|r| (0..r.config.partitions).filter(|&p| r.hosts(p, id)).count() as u32).sum()
}

fn broker_status(
    id: u64,
    records: &[TopicRecord],
    leaving: &BTreeSet<u64>,
    live: &BTreeMap<u64, BrokerRecord>,
) -> proto::DecommissionedBroker {
    proto::DecommissionedBroker {
        id,
        decommissioned: leaving.contains(&id),
        live: live.contains_key(&id),
        replicas: partitions_naming(records, id),
    }
}

/// Deletes the directory of a replica moved away once its record
/// (`raft::retired`) is written; keeps it if the record could not be.
/// Blocks on disk I/O.
fn remove_retired_replica(disk: &dyn Disk, dir: &Path, recorded: Result<(), String>) {
    match recorded {
        Ok(()) => {
            let _ = disk.remove_dir_all(dir);
            if let Some(parent) = dir.parent() {
                let _ = disk.sync_dir(parent);
            }
        }
        Err(error) => tracing::error!(
            dir = %dir.display(),
            %error,
            "a replica moved away could not record its vote and last entry; keeping it"
        ),
    }
}

fn refuse_internal(topic: &str, action: &str) -> BrokerResult<()> {
    if topic.starts_with(INTERNAL_TOPIC_PREFIX) {
        return Err(BrokerError::new(
            ErrorCode::InternalTopic,
            format!("topic {topic:?} is internal to weir and cannot be {action}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_behind_the_creators_delays_a_bootstrap_by_the_grace_at_most() {
        let grace = Duration::from_millis(BOOTSTRAP_GRACE_MS as u64);
        assert!(!past_bootstrap_grace(0, Duration::ZERO));
        assert!(past_bootstrap_grace(BOOTSTRAP_GRACE_MS, Duration::ZERO), "old on the wall clock");
        // This broker's clock is an hour behind the creator's.
        assert!(!past_bootstrap_grace(-3_600_000, grace - Duration::from_millis(1)));
        assert!(past_bootstrap_grace(-3_600_000, grace), "open for the grace: old enough");
    }
}
