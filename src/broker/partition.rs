//! One partition on this broker: its replica of the partition's Raft group
//! (whose log is the partition log), and the high watermark that consumers
//! read up to and long polls wait on.
//!
//! The high watermark is the offset after the last committed entry: nothing
//! a failover or crash could take back is ever served. Log calls block on
//! disk I/O; callers run them on the blocking pool.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use super::error::{BrokerError, BrokerResult, ErrorCode};
use crate::log::{Batch, LogConfig, LogError, PartitionLog};
use crate::proto::PartitionDescription;
use crate::raft::log_store::lock_log;
use crate::raft::{Acks, Applied, GroupId, Replica, ReplicaEnv};
use crate::sys::planted::{self, Bug};

/// How long a read waits for a new leader to apply its log.
const READABLE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug)]
pub struct Partition {
    topic: String,
    index: u32,
    dir: PathBuf,
    replica: Replica,
    high_watermark: watch::Receiver<u64>,
}

/// What a read returns besides the batches.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub log_end_offset: u64,
}

impl Partition {
    /// Opens this broker's replica of the partition. A new group waits to
    /// be started ([`Replica::bootstrap`]) or joined by its leader.
    pub async fn open(
        topic: &str,
        index: u32,
        group: GroupId,
        dir: &Path,
        env: &ReplicaEnv,
        config: LogConfig,
    ) -> BrokerResult<Self> {
        let replica = Replica::open(env, group, dir, config)
            .await
            .map_err(|e| BrokerError::new(ErrorCode::StorageFailed, format!("opening {topic}/{index}: {e}")))?;
        let high_watermark = replica.high_watermark();
        Ok(Self { topic: topic.to_owned(), index, dir: dir.to_path_buf(), replica, high_watermark })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    fn with_log<T>(&self, f: impl FnOnce(&mut PartitionLog) -> Result<T, LogError>) -> BrokerResult<T> {
        let mut guard = lock_log(self.replica.log());
        let Some(log) = guard.as_mut() else {
            return Err(BrokerError::new(
                ErrorCode::UnknownPartition,
                format!("partition {}/{} is closed", self.topic, self.index),
            ));
        };
        f(log).map_err(BrokerError::from)
    }

    /// Whether a read or a scrub met damage at rest in this replica's log:
    /// the replica must be reopened to cut the damage and be repaired.
    pub fn damaged(&self) -> bool {
        lock_log(self.replica.log()).as_ref().is_some_and(|log| log.damage_seen())
    }

    /// Why this replica stopped, if a full disk or a failed read stopped it (see
    /// [`crate::raft::Replica::stopped_in_place`]).
    pub fn stalled(&self) -> Option<String> {
        self.replica.stopped_in_place()
    }

    /// What recovery found lost of this replica's durable records when it
    /// was opened: `(first offset lost, offsets lost)`, where known.
    pub fn loss_at_open(&self) -> Option<(u64, u64)> {
        let guard = lock_log(self.replica.log());
        let damage = guard.as_ref()?.recovery_report().damage.clone()?;
        Some((damage.offset, damage.offsets_lost().unwrap_or(1).max(1)))
    }

    /// Checks about `max_bytes` of the durable log from `from` on (see
    /// [`PartitionLog::scrub`]); where to go on, `None` once done.
    pub fn scrub(&self, from: u64, max_bytes: usize) -> BrokerResult<Option<u64>> {
        self.with_log(|log| log.scrub(from, max_bytes))
    }

    pub fn high_watermark(&self) -> u64 {
        *self.high_watermark.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.high_watermark.clone()
    }

    /// Proposes a batch to the partition's group; returns where it landed
    /// once `acks` is met (`None` for `Acks::None`).
    /// Whether reads here see every acknowledged write (see
    /// [`crate::raft::Replica::readable`]); a new leader gets a moment to
    /// apply its log.
    pub async fn readable(&self) -> BrokerResult<()> {
        let deadline = tokio::time::Instant::now() + READABLE_PATIENCE;
        loop {
            match self.replica.readable() {
                Ok(()) => return Ok(()),
                Err(error @ crate::raft::ProposeError::Unavailable { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::trace!(%error, "waiting for the new leader to apply its log");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    pub async fn append(&self, batch: Batch, acks: Acks) -> BrokerResult<Option<Applied>> {
        Ok(self.replica.propose(batch, acks).await?)
    }

    /// Appends with acks=all only while this replica leads in `term`, and
    /// answers success only if the batch was committed as an entry of that
    /// term. State built from the log at the start of a leadership (the
    /// group coordinator's offsets) stays in step with the log this way: a
    /// write from an earlier leadership cannot land behind a later one's
    /// back.
    pub async fn append_in_term(&self, batch: Batch, term: u64) -> BrokerResult<Applied> {
        Ok(self.replica.propose_in_term(batch, term).await?)
    }

    /// Lets the whole segments below `offset` go (not the active one).
    pub async fn delete_before(&self, offset: u64) -> BrokerResult<()> {
        self.replica.purge_before(offset).await.map_err(|e| BrokerError::new(ErrorCode::StorageFailed, e))
    }

    pub fn bounds(&self) -> BrokerResult<Bounds> {
        let high_watermark = self.high_watermark();
        self.with_log(|log| {
            Ok(Bounds {
                log_start_offset: log.log_start_offset(),
                high_watermark,
                log_end_offset: log.log_end_offset(),
            })
        })
    }

    /// Batches from `offset` up to `max_bytes`, none past the high watermark.
    pub fn read(&self, offset: u64, max_bytes: usize) -> BrokerResult<(Vec<Batch>, Bounds)> {
        let high_watermark = self.high_watermark();
        self.with_log(|log| {
            let high_watermark = match planted::on(Bug::UncommittedReads) {
                true => log.log_end_offset(),
                false => high_watermark,
            };
            let batches = log.read(offset, max_bytes, high_watermark)?;
            let bounds = Bounds {
                log_start_offset: log.log_start_offset(),
                high_watermark,
                log_end_offset: log.log_end_offset(),
            };
            Ok((batches, bounds))
        })
    }

    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> BrokerResult<Option<u64>> {
        let high_watermark = self.high_watermark();
        self.with_log(|log| Ok(log.offset_for_timestamp(timestamp_ms)?.filter(|offset| *offset < high_watermark)))
    }

    /// Periodic work: retention, never past the high watermark, through
    /// Raft so that no replica still needs what goes.
    pub async fn maintain(&self, retention: bool) -> BrokerResult<()> {
        // Every replica purges its own log (openraft's purge is local).
        if !retention {
            return Ok(());
        }
        let high_watermark = self.high_watermark();
        let (start, point) = self.with_log(|log| Ok((log.log_start_offset(), log.retention_point(high_watermark))))?;
        if point > start {
            self.delete_before(point).await?;
        }
        Ok(())
    }

    pub fn describe(&self) -> BrokerResult<PartitionDescription> {
        let index = self.index;
        let high_watermark = self.high_watermark();
        let mut description = self.with_log(|log| {
            Ok(PartitionDescription {
                partition: index,
                log_start_offset: log.log_start_offset(),
                high_watermark,
                log_end_offset: log.log_end_offset(),
                size_bytes: log.size_bytes(),
                segments: log.segment_count() as u32,
                ..PartitionDescription::default()
            })
        })?;
        if planted::on(Bug::HighWatermarkPastLogEnd) {
            description.high_watermark = description.log_end_offset + 1;
        }
        Ok(description)
    }

    /// Stops the replica and closes the log cleanly; later calls fail as
    /// for an unknown partition.
    pub async fn close(&self) -> BrokerResult<()> {
        self.replica.shutdown().await.map_err(|e| BrokerError::new(ErrorCode::StorageFailed, e))
    }
}
