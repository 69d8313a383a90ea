//! One partition on this broker: its log, and the high watermark that
//! consumers read up to and long polls wait on.
//!
//! On a single node the high watermark is the log's flushed offset: nothing
//! that a crash could take back is ever served. Log calls block on disk I/O;
//! callers run them on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::error::{BrokerError, BrokerResult, ErrorCode};
use crate::log::{Appended, Batch, LogConfig, LogError, PartitionLog};
use crate::proto::PartitionDescription;
use crate::sys::clock::Clock;
use crate::sys::disk::Disk;

#[derive(Debug)]
pub struct Partition {
    topic: String,
    index: u32,
    dir: PathBuf,
    /// `None` once the partition is closed (topic deleted, broker stopping).
    log: Mutex<Option<PartitionLog>>,
    high_watermark: watch::Sender<u64>,
}

/// What a read returns besides the batches.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub log_end_offset: u64,
}

impl Partition {
    pub fn open(
        topic: &str,
        index: u32,
        dir: &Path,
        disk: Arc<dyn Disk>,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LogError> {
        let log = PartitionLog::open(disk, dir, config, clock)?;
        let high_watermark = watch::channel(log.flushed_offset()).0;
        Ok(Self { topic: topic.to_owned(), index, dir: dir.to_path_buf(), log: Mutex::new(Some(log)), high_watermark })
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

    fn lock(&self) -> MutexGuard<'_, Option<PartitionLog>> {
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_log<T>(&self, f: impl FnOnce(&mut PartitionLog) -> Result<T, LogError>) -> BrokerResult<T> {
        let mut guard = self.lock();
        let Some(log) = guard.as_mut() else {
            return Err(BrokerError::new(
                ErrorCode::UnknownPartition,
                format!("partition {}/{} is closed", self.topic, self.index),
            ));
        };
        let result = f(log);
        self.publish(log);
        result.map_err(BrokerError::from)
    }

    fn publish(&self, log: &PartitionLog) {
        let flushed = log.flushed_offset();
        self.high_watermark.send_if_modified(|hw| {
            let changed = *hw != flushed;
            *hw = flushed;
            changed
        });
    }

    pub fn high_watermark(&self) -> u64 {
        *self.high_watermark.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.high_watermark.subscribe()
    }

    /// Appends a batch; with `flush`, returns once it is durable.
    pub fn append(&self, batch: Batch, flush: bool) -> BrokerResult<Appended> {
        self.with_log(|log| {
            let appended = log.append(batch)?;
            if flush {
                log.flush()?;
            }
            Ok(appended)
        })
    }

    /// Makes everything appended durable and visible.
    pub fn flush(&self) -> BrokerResult<()> {
        self.with_log(|log| log.flush().map(drop))
    }

    /// Deletes the whole segments below `offset` (not the active one).
    pub fn delete_before(&self, offset: u64) -> BrokerResult<usize> {
        self.with_log(|log| log.delete_before(offset))
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

    /// Periodic work: the interval flush (publishing the new high watermark)
    /// and retention (never past the high watermark).
    pub fn maintain(&self, retention: bool) -> BrokerResult<()> {
        self.with_log(|log| {
            log.flush_if_due()?;
            if retention {
                let upper = log.flushed_offset();
                log.apply_retention(upper)?;
            }
            Ok(())
        })
    }

    pub fn describe(&self) -> BrokerResult<PartitionDescription> {
        let index = self.index;
        let high_watermark = self.high_watermark();
        self.with_log(|log| {
            Ok(PartitionDescription {
                partition: index,
                log_start_offset: log.log_start_offset(),
                high_watermark,
                log_end_offset: log.log_end_offset(),
                size_bytes: log.size_bytes(),
                segments: log.segment_count() as u32,
            })
        })
    }

    /// Closes the log cleanly; later calls fail as for an unknown partition.
    pub fn close(&self) -> BrokerResult<()> {
        match self.lock().take() {
            Some(log) => log.close().map_err(BrokerError::from),
            None => Ok(()),
        }
    }
}
