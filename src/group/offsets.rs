//! Committed offsets, kept in the broker's own log.
//!
//! Every commit is one record batch appended (and fsynced) to the internal
//! partition `__consumer_offsets/0`: key `{group, topic, partition}`, value
//! the committed offset, or no value (a tombstone) once the topic is deleted. On start the partition is read from its start and
//! later records win. The partition stays bounded: once it outgrows
//! `bytes_max`, the current offsets are written again as a snapshot and every
//! whole segment before the snapshot is deleted. Living in an ordinary
//! partition, the offsets are replicated with everything else once
//! partitions are.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::broker::error::{BrokerError, BrokerResult, ErrorCode};
use crate::broker::partition::Partition;
use crate::log::{BatchBuilder, Record};
use crate::sys::task::blocking;

/// Records per batch when writing a snapshot.
const SNAPSHOT_RECORDS_PER_BATCH: usize = 1_000;
const READ_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OffsetKey {
    pub group: String,
    pub topic: String,
    pub partition: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: u64,
    pub metadata: String,
    pub generation: u64,
    pub timestamp_ms: i64,
}

#[derive(Debug)]
pub struct OffsetStore {
    partition: Arc<Partition>,
    committed: Mutex<BTreeMap<OffsetKey, Committed>>,
    /// Serializes appends, so the log's order is the order commits apply in.
    write: tokio::sync::Mutex<()>,
    bytes_max: u64,
    /// The Raft term of the partition's leadership this store was loaded
    /// under: it writes only while that leadership lasts (see
    /// [`Partition::append_in_term`]).
    term: u64,
}

fn corrupt(reason: String) -> BrokerError {
    BrokerError::new(ErrorCode::CorruptData, format!("committed offsets: {reason}"))
}

fn encode(key: &OffsetKey, value: &Committed, timestamp_ms: i64) -> Record {
    Record {
        timestamp_ms,
        key: Some(Bytes::from(serde_json::to_vec(key).expect("offset key serializes"))),
        value: Some(Bytes::from(serde_json::to_vec(value).expect("offset serializes"))),
        ..Record::default()
    }
}

impl OffsetStore {
    /// Reads every committed offset from the internal partition.
    pub async fn load(partition: Arc<Partition>, bytes_max: u64) -> BrokerResult<Self> {
        // Taken first: the store then holds at least what was applied when
        // this term began.
        let term = partition.replica().term();
        let source = partition.clone();
        let committed = blocking(move || {
            let mut committed = BTreeMap::new();
            let mut offset = source.bounds()?.log_start_offset;
            loop {
                let (batches, _) = source.read(offset, READ_BYTES)?;
                let Some(last) = batches.last() else { break };
                offset = last.next_offset();
                for batch in &batches {
                    for record in batch.records() {
                        let record = record.map_err(|e| corrupt(e.to_string()))?;
                        let Some(key) = record.key else { continue };
                        let key: OffsetKey = serde_json::from_slice(&key).map_err(|e| corrupt(e.to_string()))?;
                        match record.value {
                            // A tombstone: the offset was forgotten.
                            None => {
                                committed.remove(&key);
                            }
                            Some(value) => {
                                let value: Committed =
                                    serde_json::from_slice(&value).map_err(|e| corrupt(e.to_string()))?;
                                committed.insert(key, value);
                            }
                        }
                    }
                }
            }
            Ok::<_, BrokerError>(committed)
        })
        .await?;
        Ok(Self { partition, committed: Mutex::new(committed), write: tokio::sync::Mutex::new(()), bytes_max, term })
    }

    /// The leadership term this store writes under.
    pub fn term(&self) -> u64 {
        self.term
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<OffsetKey, Committed>> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serializes a commit: the caller checks its fencing while holding it.
    pub async fn writer(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write.lock().await
    }

    /// Durably records `entries`; the caller holds [`OffsetStore::writer`].
    pub async fn commit(&self, entries: Vec<(OffsetKey, Committed)>, now_ms: i64) -> BrokerResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut builder = BatchBuilder::new();
        for (key, value) in &entries {
            builder.push(&encode(key, value, now_ms));
        }
        let batch = builder.build().map_err(|e| BrokerError::new(ErrorCode::Internal, e.to_string()))?;
        self.partition.append_in_term(batch, self.term).await?;
        self.lock().extend(entries);
        self.maybe_snapshot(now_ms).await
    }

    /// Rewrites the current offsets and drops the segments before them once
    /// the partition outgrows its bound.
    async fn maybe_snapshot(&self, now_ms: i64) -> BrokerResult<()> {
        let size = self.partition.describe()?.size_bytes;
        if size <= self.bytes_max {
            return Ok(());
        }
        let entries: Vec<(OffsetKey, Committed)> = self.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let start = self.partition.bounds()?.log_end_offset;
        for chunk in entries.chunks(SNAPSHOT_RECORDS_PER_BATCH) {
            let mut builder = BatchBuilder::new();
            for (key, value) in chunk {
                builder.push(&encode(key, value, now_ms));
            }
            let batch = builder.build().map_err(|e| BrokerError::new(ErrorCode::Internal, e.to_string()))?;
            self.partition.append_in_term(batch, self.term).await?;
        }
        // The segments before the rewrite go once Raft has purged them.
        self.partition.delete_before(start).await?;
        tracing::info!(size, "committed offsets snapshotted");
        Ok(())
    }

    /// Durably forgets every committed offset of `topic` (it was deleted,
    /// and a topic created later under its name starts afresh).
    pub async fn forget_topic(&self, topic: &str, now_ms: i64) -> BrokerResult<()> {
        let _writer = self.writer().await;
        let doomed: Vec<OffsetKey> = self.lock().keys().filter(|k| k.topic == topic).cloned().collect();
        if doomed.is_empty() {
            return Ok(());
        }
        let mut builder = BatchBuilder::new();
        for key in &doomed {
            let key = Bytes::from(serde_json::to_vec(key).expect("offset key serializes"));
            builder.push(&Record { timestamp_ms: now_ms, key: Some(key), ..Record::default() });
        }
        let batch = builder.build().map_err(|e| BrokerError::new(ErrorCode::Internal, e.to_string()))?;
        self.partition.append_in_term(batch, self.term).await?;
        let mut committed = self.lock();
        for key in &doomed {
            committed.remove(key);
        }
        Ok(())
    }

    pub fn get(&self, key: &OffsetKey) -> Option<Committed> {
        self.lock().get(key).cloned()
    }

    /// Every committed offset of `group`, in topic and partition order.
    pub fn of_group(&self, group: &str) -> Vec<(OffsetKey, Committed)> {
        self.lock().iter().filter(|(k, _)| k.group == group).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every group with a committed offset.
    pub fn groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = self.lock().keys().map(|k| k.group.clone()).collect();
        groups.dedup();
        groups
    }
}
