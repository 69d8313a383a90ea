//! A consumer in a group: joins, heartbeats in the background, reads its
//! assigned partitions by pulling (long polls) or by push (subscriptions
//! with credit), commits offsets (automatically or by hand), seeks, and
//! rejoins when the group rebalances.
//!
//! Delivery is at least once: with auto-commit, the records a `poll`
//! returned are committed at the start of the next `poll` (or on `close`),
//! so a consumer that dies redelivers from the last commit, never skips.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Client, ClientError, ClientResult};
use crate::proto::{self, ErrorCode, OffsetSpec};
use crate::sys::planted::{self, Bug};

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub group: String,
    pub topics: Vec<String>,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// "range", "roundrobin" or "sticky".
    pub assignor: String,
    pub auto_commit: bool,
    pub reset: OffsetReset,
    pub fetch_bytes_max: u32,
    /// `Some(n)`: have the broker push records, with up to `n` per partition
    /// in flight; `None`: pull with long polls.
    pub push_window: Option<u64>,
}

impl ConsumerConfig {
    pub fn new(group: &str, topics: &[&str]) -> Self {
        Self {
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            assignor: "range".to_owned(),
            auto_commit: true,
            reset: OffsetReset::Earliest,
            fetch_bytes_max: 1 << 20,
            push_window: None,
        }
    }
}

/// Where to move a partition's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    Beginning,
    End,
    Offset(u64),
    /// The first record at or after this time (milliseconds since the epoch).
    Timestamp(i64),
}

/// A push from one of this member's subscriptions.
struct Pushed {
    epoch: u64,
    topic: String,
    partition: u32,
    records: Vec<proto::Record>,
    /// Returns credit to the subscription once the records are handed out.
    credit: mpsc::Sender<u64>,
}

/// The subscriptions of a push-mode member, for one assignment and set of
/// positions (`epoch`); replaced wholesale on rejoin or seek.
struct Pushes {
    epoch: u64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pushed: mpsc::Receiver<Pushed>,
}

impl Drop for Pushes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Pushes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pushes(epoch {}, {} subscriptions)", self.epoch, self.tasks.len())
    }
}

/// A record with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumed {
    pub topic: String,
    pub partition: u32,
    pub record: proto::Record,
}

#[derive(Debug, Default)]
struct Membership {
    member_id: String,
    generation: u64,
    /// Set by the heartbeat when the group moved on without us.
    rejoin: bool,
    /// Set when the broker no longer knows our member id.
    forgotten: bool,
}

#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    config: ConsumerConfig,
    membership: Arc<Mutex<Membership>>,
    /// Next offset to fetch, per assigned partition.
    positions: BTreeMap<(String, u32), u64>,
    /// Where this generation's assignment started reading, per partition:
    /// its committed offset, or where the reset policy put it.
    starts: BTreeMap<(String, u32), u64>,
    /// What the records handed out so far allow committing.
    uncommitted: bool,
    next_partition: usize,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    pushes: Option<Pushes>,
    push_epoch: u64,
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
    }
}

fn wants_rejoin(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(
            ErrorCode::RebalanceInProgress
                | ErrorCode::IllegalGeneration
                | ErrorCode::UnknownMember
                | ErrorCode::UnknownGroup
        )
    )
}

/// The broker no longer knows this member (e.g. it restarted): rejoin anew.
fn forgotten(error: &ClientError) -> bool {
    matches!(error.code(), Some(ErrorCode::UnknownMember | ErrorCode::UnknownGroup))
}

impl GroupConsumer {
    /// Joins the group and starts heartbeating.
    pub async fn join(client: Client, config: ConsumerConfig) -> ClientResult<Self> {
        let mut consumer = Self {
            client,
            config,
            membership: Arc::new(Mutex::new(Membership::default())),
            positions: BTreeMap::new(),
            starts: BTreeMap::new(),
            uncommitted: false,
            next_partition: 0,
            heartbeat: None,
            pushes: None,
            push_epoch: 0,
        };
        consumer.rejoin().await?;
        consumer.start_heartbeat();
        Ok(consumer)
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn member_id(&self) -> String {
        self.membership().member_id.clone()
    }

    pub fn generation(&self) -> u64 {
        self.membership().generation
    }

    /// The partitions this member owns in its generation.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.positions.keys().cloned().collect()
    }

    /// The next offset this member reads from each partition it owns (what
    /// [`Self::commit`] commits).
    pub fn positions(&self) -> Vec<((String, u32), u64)> {
        self.positions.iter().map(|(key, offset)| (key.clone(), *offset)).collect()
    }

    /// Where each partition of the current assignment started: the group's
    /// committed offset when the member joined this generation, or where
    /// the reset policy put it (seeks since do not change it).
    pub fn starts(&self) -> Vec<((String, u32), u64)> {
        self.starts.iter().map(|(key, offset)| (key.clone(), *offset)).collect()
    }

    fn start_heartbeat(&mut self) {
        let (client, group, interval) =
            (self.client.clone(), self.config.group.clone(), self.config.heartbeat_interval);
        let membership = self.membership.clone();
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let (member_id, generation) = {
                    let m = membership.lock().unwrap_or_else(|p| p.into_inner());
                    (m.member_id.clone(), m.generation)
                };
                let request = proto::HeartbeatRequest { group: group.clone(), member_id, generation };
                if let Err(error) = client.heartbeat(request).await {
                    let mut m = membership.lock().unwrap_or_else(|p| p.into_inner());
                    // An answer about a generation this member has left
                    // behind (it rejoined meanwhile) is no news.
                    if wants_rejoin(&error) && m.generation == generation {
                        m.rejoin = true;
                        m.forgotten |= forgotten(&error);
                    }
                }
            }
        }));
    }

    /// (Re)joins the group and positions every assigned partition at its
    /// committed offset, or per the reset policy.
    async fn rejoin(&mut self) -> ClientResult<()> {
        let member_id = {
            let mut m = self.membership();
            m.rejoin = false;
            if m.forgotten {
                m.member_id.clear();
                m.forgotten = false;
            }
            m.member_id.clone()
        };
        let request = proto::JoinGroupRequest {
            group: self.config.group.clone(),
            member_id,
            topics: self.config.topics.clone(),
            session_timeout_ms: u32::try_from(self.config.session_timeout.as_millis()).unwrap_or(u32::MAX),
            assignor: self.config.assignor.clone(),
        };
        let joined = match self.client.join_group(request.clone()).await {
            Err(error) if forgotten(&error) => {
                self.client.join_group(proto::JoinGroupRequest { member_id: String::new(), ..request }).await?
            }
            other => other?,
        };
        {
            let mut m = self.membership();
            m.member_id = joined.member_id.clone();
            m.generation = joined.generation;
            // Whatever the heartbeat said during the join is settled by it.
            m.rejoin = false;
        }
        let partitions: Vec<proto::TopicPartition> = joined.assignment;
        let committed = self.client.fetch_offsets(&self.config.group, partitions.clone()).await?;
        let committed: BTreeMap<(String, u32), u64> =
            committed.into_iter().map(|o| ((o.topic, o.partition), o.offset)).collect();
        self.positions.clear();
        self.pushes = None;
        for tp in partitions {
            let key = (tp.topic.clone(), tp.partition);
            let offset = match committed.get(&key) {
                Some(offset) => *offset,
                None => {
                    let spec = match self.config.reset {
                        OffsetReset::Earliest => OffsetSpec::Earliest,
                        OffsetReset::Latest => OffsetSpec::Latest,
                    };
                    self.client.list_offset(&tp.topic, tp.partition, spec, 0).await?
                }
            };
            let offset = offset + u64::from(planted::on(Bug::StartPastCommit));
            self.positions.insert(key, offset);
        }
        self.starts = self.positions.clone();
        self.uncommitted = false;
        Ok(())
    }

    /// Commits the position of every assigned partition: everything handed
    /// out so far counts as processed.
    pub async fn commit(&mut self) -> ClientResult<()> {
        let (member_id, generation) = {
            let m = self.membership();
            (m.member_id.clone(), m.generation)
        };
        self.commit_as(member_id, generation).await
    }

    async fn commit_as(&mut self, member_id: String, generation: u64) -> ClientResult<()> {
        let offsets = self
            .positions
            .iter()
            .map(|((topic, partition), offset)| proto::PartitionOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                metadata: String::new(),
            })
            .collect();
        let request = proto::CommitOffsetsRequest { group: self.config.group.clone(), member_id, generation, offsets };
        self.client.commit_offsets(request).await?;
        self.uncommitted = false;
        Ok(())
    }

    /// Moves this member's position in one of its partitions.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> ClientResult<()> {
        match self.positions.get_mut(&(topic.to_owned(), partition)) {
            Some(position) => {
                *position = offset;
                self.pushes = None;
                Ok(())
            }
            None => Err(ClientError::InvalidReply(format!("{topic}/{partition} is not assigned to this member"))),
        }
    }

    /// Moves a position to the beginning, the end, an offset or a time.
    pub async fn seek_to(&mut self, topic: &str, partition: u32, target: SeekTo) -> ClientResult<u64> {
        let offset = match target {
            SeekTo::Offset(offset) => offset,
            SeekTo::Beginning => self.client.list_offset(topic, partition, OffsetSpec::Earliest, 0).await?,
            SeekTo::End => self.client.list_offset(topic, partition, OffsetSpec::Latest, 0).await?,
            SeekTo::Timestamp(ms) => self.client.list_offset(topic, partition, OffsetSpec::Timestamp, ms).await?,
        };
        self.seek(topic, partition, offset)?;
        Ok(offset)
    }

    /// Opens a subscription per assigned partition at its position.
    async fn subscribe_all(&mut self, window: u64) -> ClientResult<()> {
        self.push_epoch += 1;
        let epoch = self.push_epoch;
        let (sink, pushed) = mpsc::channel(self.positions.len().max(1));
        let mut tasks = Vec::new();
        for ((topic, partition), offset) in &self.positions {
            let credit = proto::Credit { messages: window, bytes: 0 };
            let mut subscription = self.client.subscribe(topic, *partition, *offset, credit).await?;
            let (returns, mut returned) = mpsc::channel::<u64>(4);
            let (sink, topic, partition) = (sink.clone(), topic.clone(), *partition);
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        push = subscription.next() => {
                            let Ok(Some(push)) = push else { return };
                            let pushed = Pushed { epoch, topic: topic.clone(), partition, records: push.records, credit: returns.clone() };
                            if sink.send(pushed).await.is_err() {
                                return;
                            }
                        }
                        Some(count) = returned.recv() => {
                            if subscription.grant(count, 0).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }));
        }
        self.pushes = Some(Pushes { epoch, tasks, pushed });
        Ok(())
    }

    async fn poll_pushed(&mut self, window: u64, max_wait: std::time::Duration) -> ClientResult<Vec<Consumed>> {
        if self.pushes.is_none() {
            self.subscribe_all(window).await?;
        }
        let pushes = self.pushes.as_mut().expect("just subscribed");
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(Some(pushed)) = tokio::time::timeout(left, pushes.pushed.recv()).await else {
                return Ok(Vec::new());
            };
            if pushed.epoch != pushes.epoch || pushed.records.is_empty() {
                continue;
            }
            let next = pushed.records.last().expect("not empty").offset + 1;
            self.positions.insert((pushed.topic.clone(), pushed.partition), next);
            self.uncommitted = true;
            let _ = pushed.credit.send(pushed.records.len() as u64).await;
            let (topic, partition) = (pushed.topic, pushed.partition);
            return Ok(pushed
                .records
                .into_iter()
                .map(|record| Consumed { topic: topic.clone(), partition, record })
                .collect());
        }
    }

    /// Whether the group has moved on without this member (its heartbeat
    /// heard of a rebalance): the next [`Self::poll`] rejoins.
    pub fn rejoin_wanted(&self) -> bool {
        self.membership().rejoin
    }

    /// Takes part in a rebalance now rather than at the next poll, for an
    /// owner that polls rarely (the HTTP gateway keeps consumers for its
    /// clients between their requests): the group settles without waiting
    /// out this member's deadline. As on any rejoin, positions go back to
    /// the committed offsets. True if it rejoined.
    pub async fn rejoin_if_wanted(&mut self) -> ClientResult<bool> {
        if !self.rejoin_wanted() {
            return Ok(false);
        }
        self.settle().await?;
        Ok(true)
    }

    /// Auto-commits what was handed out, then rejoins if the group asked.
    async fn settle(&mut self) -> ClientResult<()> {
        if self.config.auto_commit && self.uncommitted {
            match self.commit().await {
                Err(error) if forgotten(&error) => {
                    // The broker lost the group (it restarted): while the
                    // group has no members, an outsider may commit, which
                    // spares redelivering what this member already handed out.
                    let _ = self.commit_as(String::new(), 0).await;
                    let mut m = self.membership();
                    m.rejoin = true;
                    m.forgotten = true;
                }
                Err(error) if wants_rejoin(&error) => self.membership().rejoin = true,
                other => other?,
            }
        }
        if self.membership().rejoin {
            self.rejoin().await?;
        }
        Ok(())
    }

    /// Records from the assigned partitions, waiting up to `max_wait` in all:
    /// pulled (one fetch's worth from the next partition that has some) or,
    /// in push mode, the next push from any of them.
    pub async fn poll(&mut self, max_wait: Duration) -> ClientResult<Vec<Consumed>> {
        self.settle().await?;
        if self.positions.is_empty() {
            tokio::time::sleep(max_wait).await;
            return Ok(Vec::new());
        }
        if let Some(window) = self.config.push_window {
            return self.poll_pushed(window, max_wait).await;
        }
        let partitions: Vec<(String, u32)> = self.positions.keys().cloned().collect();
        // First every assigned partition without waiting, from the next one
        // on (so none starves), filling up to the byte budget: records of
        // several partitions in one poll. Only if none has any, long-poll
        // them in turn, each for its share of the wait.
        self.next_partition = (self.next_partition + 1) % partitions.len();
        let order: Vec<(String, u32)> =
            (0..partitions.len()).map(|i| partitions[(self.next_partition + i) % partitions.len()].clone()).collect();
        let mut budget = self.config.fetch_bytes_max;
        let mut consumed = Vec::new();
        for (topic, partition) in &order {
            if budget == 0 {
                break;
            }
            let records = match self.fetch_from(topic, *partition, budget, Duration::ZERO).await {
                Ok(records) => records,
                // What the partitions before this one returned has moved
                // their positions: it must reach the caller (dropping it
                // would skip those records; the simulator caught that). The
                // error comes back on the next poll.
                Err(_) if !consumed.is_empty() => break,
                Err(error) => return Err(error),
            };
            let spent: u64 = records.iter().map(|c| c.record.payload_bytes()).sum();
            budget = budget.saturating_sub(u32::try_from(spent).unwrap_or(u32::MAX));
            consumed.extend(records);
        }
        if !consumed.is_empty() {
            return Ok(consumed);
        }
        let wait = max_wait / partitions.len() as u32;
        for (topic, partition) in &order {
            let records = self.fetch_from(topic, *partition, self.config.fetch_bytes_max, wait).await?;
            if !records.is_empty() {
                return Ok(records);
            }
        }
        Ok(Vec::new())
    }

    /// Fetches from one assigned partition at its position (waiting up to
    /// `wait` for data) and moves the position past what came back.
    async fn fetch_from(
        &mut self,
        topic: &str,
        partition: u32,
        max_bytes: u32,
        wait: Duration,
    ) -> ClientResult<Vec<Consumed>> {
        let offset = self.positions[&(topic.to_owned(), partition)];
        let response = match self.client.fetch(topic, partition, offset, max_bytes, wait).await {
            // The topic went away or shrank: the next rebalance drops it.
            Err(error) if matches!(error.code(), Some(ErrorCode::UnknownTopic | ErrorCode::UnknownPartition)) => {
                return Ok(Vec::new())
            }
            other => other?,
        };
        let mut records = response.records;
        let mut next_offset = response.next_offset;
        if records.len() > 1 {
            if planted::on(Bug::SkipPolledRecord) {
                records.remove(0);
            }
            if planted::on(Bug::RereadPolledRecord) {
                next_offset = records.last().expect("several").offset;
            }
        }
        self.positions.insert((topic.to_owned(), partition), next_offset);
        if !records.is_empty() {
            self.uncommitted = true;
        }
        Ok(records.into_iter().map(|record| Consumed { topic: topic.to_owned(), partition, record }).collect())
    }
}

impl GroupConsumer {
    /// Commits (with auto-commit) and leaves the group, so the others
    /// rebalance at once instead of after the session timeout.
    pub async fn close(mut self) -> ClientResult<()> {
        if self.config.auto_commit && self.uncommitted {
            let _ = self.commit().await;
        }
        let member_id = self.member_id();
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        self.client.leave_group(&self.config.group, &member_id).await
    }
}
