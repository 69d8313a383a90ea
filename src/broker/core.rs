//! The broker's state and operations, independent of gRPC: topics and their
//! partitions on this node, produce, fetch with long polling, offsets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;

use super::config::BrokerConfig;
use super::error::{BrokerError, BrokerResult, ErrorCode};
use super::partition::Partition;
use crate::log::batch::BATCH_BYTES_MAX;
use crate::log::{Batch, BatchBuilder, FlushPolicy, LogConfig, Record, RecordHeader};
use crate::meta::topics::{TopicConfig, TopicError, TopicRecord, Topics, INTERNAL_TOPIC_PREFIX};
use crate::meta::MetaStore;
use crate::proto;
use crate::raft::{raft_config, Acks, Connections, GroupId, ReplicaEnv, Router};
use crate::sys::clock::Clock;
use crate::sys::disk::Disk;

/// A topic as this broker holds it.
#[derive(Debug)]
struct TopicState {
    record: TopicRecord,
    partitions: Vec<Arc<Partition>>,
}

pub struct Broker {
    config: BrokerConfig,
    topics: Topics,
    disk: Arc<dyn Disk>,
    clock: Arc<dyn Clock>,
    /// How this broker's partition replicas reach their peers.
    replicas: ReplicaEnv,
    open: RwLock<BTreeMap<String, Arc<TopicState>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("broker_id", &self.config.broker_id).finish()
    }
}

use crate::sys::task::blocking;

fn to_proto_config(config: &TopicConfig) -> proto::TopicConfig {
    proto::TopicConfig {
        partitions: config.partitions,
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        segment_bytes: config.segment_bytes,
    }
}

pub(super) fn to_proto_record(record: Record) -> proto::Record {
    proto::Record {
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        key: record.key.map(Bytes::into),
        value: record.value.map(Bytes::into),
        headers: record
            .headers
            .into_iter()
            .map(|h| proto::Header { key: h.key, value: h.value.map(Bytes::into) })
            .collect(),
    }
}

impl Broker {
    /// Opens every topic partition the metadata store lists, and removes the
    /// data of topics deleted while the broker was down.
    pub async fn open(
        config: BrokerConfig,
        store: Arc<dyn MetaStore>,
        disk: Arc<dyn Disk>,
        clock: Arc<dyn Clock>,
    ) -> BrokerResult<Arc<Self>> {
        let node_id = config.broker_id;
        let replicas = ReplicaEnv {
            node_id,
            disk: disk.clone(),
            clock: clock.clone(),
            connections: Connections::new(node_id),
            router: Router::new(),
            raft_config: raft_config(),
        };
        let broker = Arc::new(Self {
            config,
            topics: Topics::new(store),
            disk,
            clock,
            replicas,
            open: RwLock::new(BTreeMap::new()),
        });
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
        for record in records {
            broker.open_topic(record).await?;
        }
        Ok(broker)
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Where Raft messages for this broker's replicas are delivered.
    pub fn raft_router(&self) -> Arc<Router> {
        self.replicas.router.clone()
    }

    /// The address other brokers reach this one at.
    fn advertised_address(&self) -> String {
        self.config.listen.to_string()
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

    async fn open_topic(&self, record: TopicRecord) -> BrokerResult<Arc<TopicState>> {
        let dir = self.topic_dir(&record);
        let log_config = self.log_config(&record);
        // One broker: every partition's group is this broker alone.
        let members = BTreeMap::from([(self.config.broker_id, self.advertised_address())]);
        let opening =
            (0..record.config.partitions).map(|index| {
                let group = GroupId { topic_id: record.id, partition: index };
                let dir = dir.join(index.to_string());
                let (log_config, members, name) = (log_config.clone(), &members, &record.name);
                async move {
                    Partition::open(name, index, group, &dir, &self.replicas, log_config, members).await.map(Arc::new)
                }
            });
        let opened = futures::future::try_join_all(opening).await?;
        let state = Arc::new(TopicState { record, partitions: opened });
        self.open.write().unwrap_or_else(|p| p.into_inner()).insert(state.record.name.clone(), state.clone());
        Ok(state)
    }

    fn topic(&self, name: &str) -> BrokerResult<Arc<TopicState>> {
        self.open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::unknown_topic(name))
    }

    pub fn partition(&self, topic: &str, partition: u32) -> BrokerResult<Arc<Partition>> {
        let state = self.topic(topic)?;
        state.partitions.get(partition as usize).cloned().ok_or_else(|| {
            BrokerError::new(
                ErrorCode::UnknownPartition,
                format!("topic {topic:?} has partitions 0..{}, not {partition}", state.partitions.len()),
            )
        })
    }

    /// How many partitions `topic` has, if it exists.
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topic(topic).ok().map(|state| state.partitions.len() as u32)
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
        };
        let record = match self.topics.create(name, config, self.clock.now_ms(), true).await {
            Ok(record) => record,
            Err(TopicError::AlreadyExists(_)) => {
                self.topics.get(name).await?.ok_or_else(|| BrokerError::unknown_topic(name))?
            }
            Err(other) => return Err(other.into()),
        };
        let state = self.open_topic(record).await?;
        Ok(state.partitions[0].clone())
    }

    /// Every open partition, in topic and partition order.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        let open = self.open.read().unwrap_or_else(|p| p.into_inner());
        open.values().flat_map(|t| t.partitions.iter().cloned()).collect()
    }

    // ---- administration ----

    pub async fn create_topic(&self, name: &str, config: TopicConfig) -> BrokerResult<proto::TopicDescription> {
        let record = self.topics.create(name, config, self.clock.now_ms(), false).await?;
        let state = self.open_topic(record).await?;
        tracing::info!(topic = name, partitions = state.partitions.len(), "topic created");
        self.describe_state(&state).await
    }

    pub async fn delete_topic(&self, name: &str) -> BrokerResult<()> {
        let record = self.topics.delete(name).await?;
        let state = self.open.write().unwrap_or_else(|p| p.into_inner()).remove(name);
        if let Some(state) = state {
            for partition in &state.partitions {
                partition.close().await?;
            }
        }
        let dir = self.topic_dir(&record);
        let disk = self.disk.clone();
        blocking(move || {
            disk.remove_dir_all(&dir).map_err(|e| BrokerError::new(ErrorCode::StorageFailed, e.to_string()))?;
            if let Some(parent) = dir.parent() {
                let _ = disk.sync_dir(parent);
            }
            Ok::<(), BrokerError>(())
        })
        .await?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    async fn describe_state(&self, state: &Arc<TopicState>) -> BrokerResult<proto::TopicDescription> {
        let partitions = state.partitions.clone();
        let described =
            blocking(move || partitions.iter().map(|p| p.describe()).collect::<BrokerResult<Vec<_>>>()).await?;
        Ok(proto::TopicDescription {
            name: state.record.name.clone(),
            config: Some(to_proto_config(&state.record.config)),
            partitions: described,
            created_ms: state.record.created_ms,
        })
    }

    pub async fn describe_topic(&self, name: &str) -> BrokerResult<proto::TopicDescription> {
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
                let batch = Batch::decode(Bytes::copy_from_slice(&request.batch))
                    .map_err(|e| BrokerError::new(ErrorCode::InvalidBatch, e.to_string()))?;
                for record in batch.records() {
                    let record = record.map_err(|e| BrokerError::new(ErrorCode::InvalidBatch, e.to_string()))?;
                    check_record_size(&record, message_bytes_max)?;
                }
                Ok(batch)
            }
            (false, true) => {
                let now_ms = self.clock.now_ms();
                let mut builder = BatchBuilder::new();
                for record in &request.records {
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
        let partition = self.partition(&request.topic, request.partition)?;
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
        Ok(proto::ProduceResponse {
            base_offset: applied.map_or(0, |a| a.base_offset),
            record_count,
            high_watermark: partition.high_watermark(),
            offset_known: applied.is_some(),
        })
    }

    // ---- consuming ----

    /// Reads from `offset`, waiting up to `max_wait_ms` (capped) for data if
    /// there is none yet. Offsets outside `[log start, log end]` fail.
    pub async fn fetch(&self, request: proto::FetchRequest) -> BrokerResult<proto::FetchResponse> {
        let partition = self.partition(&request.topic, request.partition)?;
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
            if tokio::time::timeout(left, high_watermark.changed()).await.is_err() {
                return fetch_response(offset, Vec::new(), bounds, request.encoded);
            }
        }
    }

    pub async fn list_offset(&self, request: proto::ListOffsetRequest) -> BrokerResult<u64> {
        let partition = self.partition(&request.topic, request.partition)?;
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

    /// Applies retention now and then, until the broker is dropped.
    /// Storage failures are logged; the partition reports them.
    pub async fn run_maintenance(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.retention_check_interval_ms.max(1) as u64);
        loop {
            tokio::time::sleep(interval).await;
            for partition in self.partitions() {
                if let Err(error) = partition.maintain(true).await {
                    tracing::warn!(topic = partition.topic(), partition = partition.index(), %error, "maintenance failed");
                }
            }
        }
    }

    /// Closes every partition cleanly.
    pub async fn shutdown(&self) -> BrokerResult<()> {
        for partition in self.partitions() {
            partition.close().await?;
        }
        Ok(())
    }
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
        response.batches = batches.into_iter().map(|b| b.into_bytes().into()).collect();
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
