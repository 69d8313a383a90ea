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
use crate::sys::planted::{self, Bug};
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
    /// Records the load skipped: they did not decode as commits.
    skipped: u64,
}

fn encode(key: &OffsetKey, value: &Committed, timestamp_ms: i64) -> Record {
    Record {
        timestamp_ms,
        key: Some(Bytes::from(serde_json::to_vec(key).expect("offset key serializes"))),
        value: Some(Bytes::from(serde_json::to_vec(value).expect("offset serializes"))),
        ..Record::default()
    }
}

/// Applies one batch of the offsets partition to `committed`, in order;
/// returns how many records it skipped because they did not decode.
fn apply_batch(batch: &crate::log::Batch, committed: &mut BTreeMap<OffsetKey, Committed>) -> u64 {
    let mut skipped = 0;
    for (index, record) in batch.records().enumerate() {
        let offset = batch.base_offset() + index as u64;
        match decode(record.map_err(|e| e.to_string())) {
            Ok((key, Some(value))) => {
                committed.insert(key, value);
            }
            // A tombstone: the offset was forgotten.
            Ok((key, None)) => {
                committed.remove(&key);
            }
            Err(reason) => {
                tracing::error!(offset, %reason, "committed offsets: skipping a record that is not an offset commit");
                skipped += 1;
            }
        }
    }
    skipped
}

/// One record of the offsets partition: its key and the commit, or `None`
/// for a tombstone.
fn decode(record: Result<Record, String>) -> Result<(OffsetKey, Option<Committed>), String> {
    let record = record?;
    let key = record.key.ok_or("a record without a key")?;
    let key: OffsetKey = serde_json::from_slice(&key).map_err(|e| format!("key: {e}"))?;
    let value = match record.value {
        None => None,
        Some(value) => Some(serde_json::from_slice(&value).map_err(|e| format!("value: {e}"))?),
    };
    Ok((key, value))
}

impl OffsetStore {
    /// Reads every committed offset from the internal partition. A record
    /// that does not decode as a commit (written by a client before weir
    /// refused that, or by a newer weir) is skipped, counted and logged: one
    /// bad record must not keep every group from loading.
    pub async fn load(partition: Arc<Partition>, bytes_max: u64) -> BrokerResult<Self> {
        // Taken first: the store then holds at least what was applied when
        // this term began.
        let term = partition.replica().term();
        let source = partition.clone();
        let (committed, skipped) = blocking(move || {
            let mut committed = BTreeMap::new();
            let mut skipped = 0;
            let mut offset = source.bounds()?.log_start_offset;
            // Applied one batch behind the read, so the planted bug can
            // leave out the last without holding the whole log in memory.
            let mut behind = None;
            loop {
                let (batches, _) = source.read(offset, READ_BYTES)?;
                let Some(last) = batches.last() else { break };
                offset = last.next_offset();
                for batch in batches {
                    if let Some(previous) = behind.replace(batch) {
                        skipped += apply_batch(&previous, &mut committed);
                    }
                }
            }
            if let Some(last) = behind.filter(|_| !planted::on(Bug::LoadMissesLastCommit)) {
                skipped += apply_batch(&last, &mut committed);
            }
            Ok::<_, BrokerError>((committed, skipped))
        })
        .await?;
        if skipped > 0 {
            tracing::error!(
                topic = partition.topic(),
                skipped,
                "committed offsets: skipped records that are not offset commits"
            );
        }
        Ok(Self {
            partition,
            committed: Mutex::new(committed),
            write: tokio::sync::Mutex::new(()),
            bytes_max,
            term,
            skipped,
        })
    }

    /// Records skipped by [`OffsetStore::load`] because they did not decode.
    pub fn skipped(&self) -> u64 {
        self.skipped
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

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(group: &str, partition: u32, offset: u64) -> Record {
        let key = OffsetKey { group: group.to_owned(), topic: "t".to_owned(), partition };
        let value = Committed { offset, metadata: String::new(), generation: 1, timestamp_ms: 0 };
        encode(&key, &value, 0)
    }

    fn raw(key: &str, value: Option<&str>) -> Record {
        Record {
            key: Some(Bytes::from(key.to_owned())),
            value: value.map(|v| Bytes::from(v.to_owned())),
            ..Record::default()
        }
    }

    /// What `weir produce __consumer_offsets` once wrote (`x:y`), and other
    /// records that are not commits, between real ones: the real ones load,
    /// the others are counted.
    #[test]
    fn records_that_are_not_commits_are_skipped_and_counted() {
        let mut builder = BatchBuilder::new();
        builder.push(&commit("g", 0, 5));
        builder.push(&raw("x", Some("y")));
        builder.push(&Record { value: Some(Bytes::from_static(b"no key")), ..Record::default() });
        builder.push(&commit("g", 1, 7));
        let key = serde_json::to_string(&OffsetKey { group: "g".into(), topic: "t".into(), partition: 1 }).unwrap();
        builder.push(&raw(&key, Some("not a commit")));
        builder.push(&commit("g", 0, 6));
        let batch = builder.build().unwrap().placed(100, 0, 0);

        let mut committed = BTreeMap::new();
        let skipped = apply_batch(&batch, &mut committed);

        assert_eq!(skipped, 3);
        let offsets: Vec<(u32, u64)> = committed.iter().map(|(k, v)| (k.partition, v.offset)).collect();
        assert_eq!(offsets, vec![(0, 6), (1, 7)], "later commits win; the bad value left partition 1 as it was");
    }

    #[test]
    fn a_tombstone_forgets_an_offset() {
        let mut builder = BatchBuilder::new();
        builder.push(&commit("g", 0, 5));
        let key = serde_json::to_string(&OffsetKey { group: "g".into(), topic: "t".into(), partition: 0 }).unwrap();
        builder.push(&raw(&key, None));
        let batch = builder.build().unwrap();
        let mut committed = BTreeMap::new();
        assert_eq!(apply_batch(&batch, &mut committed), 0);
        assert!(committed.is_empty());
    }
}
