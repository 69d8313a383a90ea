//! The partition log: an ordered, durable sequence of record batches, cut
//! into segments.
//!
//! Guarantees a caller (the broker, later the Raft log storage) builds on:
//! - `append` assigns offsets in order and leaves no holes: the batch gets
//!   the log end offset as its base, and the end moves past its records.
//! - `flushed_offset` never exceeds what an fsync has made durable; it only
//!   moves backwards through `truncate`.
//! - A reopened log holds a prefix of what was appended that includes
//!   everything flushed (barring bytes damaged at rest, which are reported:
//!   among them every loss below the durable-end mark, see
//!   [`super::durable_mark`]).
//! - A failed write or fsync poisons the log: every later call fails with
//!   [`LogError::Failed`] until it is reopened, because after a failed fsync
//!   the kernel may have dropped data that reads would still return.
//!   Running out of space is not fatal: the append fails with
//!   [`LogError::NoSpace`] and the log stays usable. Nor is a failed read
//!   ([`LogError::Read`]): an operation that must read (a truncation finds
//!   where to cut) reads before it changes anything.
//! - A read that meets a damaged batch fails with [`LogError::Corrupt`] and
//!   marks the log ([`PartitionLog::damage_seen`]): its owner must reopen it,
//!   which cuts the damage and says what was lost, so that the replica can
//!   be repaired from its peers. [`PartitionLog::scrub`] looks for damage
//!   before a read meets it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::batch::Batch;
use super::checkpoint::Checkpoint;
use super::config::{FlushPolicy, LogConfig};
use super::durable_mark::DurableMark;
use super::error::{LogError, LogResult};
use super::recovery::{recover, RecoveryReport};
use super::segment::Segment;
use crate::sys::clock::Clock;
use crate::sys::disk::Disk;
use crate::sys::planted::{self, Bug};

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub next_offset: u64,
}

pub struct PartitionLog {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    /// Retention and roll by age read it: a broker gives every log one
    /// [`crate::sys::clock::SlewedClock`], so a step of the wall clock
    /// forwards neither deletes segments early nor rolls them all at once.
    clock: Arc<dyn Clock>,
    config: LogConfig,
    /// By base offset; contiguous; the last one is active.
    segments: BTreeMap<u64, Segment>,
    log_start_offset: u64,
    /// As written in the checkpoint on disk.
    recovery_point: u64,
    flushed_offset: u64,
    flushed: watch::Sender<u64>,
    /// When the last flush was, on the monotonic clock: a step of the wall
    /// clock backwards must not hold flushes off.
    last_flush: Duration,
    failed: Option<String>,
    /// How far the log is known durable across crashes: raised by every
    /// flush before the flushed offset moves (see [`PartitionLog::flush`]).
    mark: DurableMark,
    /// A read met a damaged batch (reads take `&self`).
    damage_seen: AtomicBool,
    recovery: RecoveryReport,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.dir)
            .field("log_start_offset", &self.log_start_offset)
            .field("log_end_offset", &self.log_end_offset())
            .field("flushed_offset", &self.flushed_offset)
            .field("durable_mark", &self.mark.end())
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl PartitionLog {
    /// Opens the log in `dir`, creating it if empty and recovering it if it
    /// was not closed cleanly.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path, config: LogConfig, clock: Arc<dyn Clock>) -> LogResult<Self> {
        Self::recover(disk, dir, config, clock, true)
    }

    fn recover(
        disk: Arc<dyn Disk>,
        dir: &Path,
        config: LogConfig,
        clock: Arc<dyn Clock>,
        trust_checkpoint: bool,
    ) -> LogResult<Self> {
        config.validate()?;
        let (now_ms, last_flush) = (clock.now_ms(), clock.monotonic());
        disk.create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let mark = DurableMark::open(disk.as_ref(), dir)?;
        let recovered = recover(disk.as_ref(), dir, &config, now_ms, trust_checkpoint, mark.end(), mark.exact())?;
        let mut log = Self {
            dir: dir.to_path_buf(),
            disk,
            clock,
            config,
            segments: recovered.segments,
            log_start_offset: recovered.log_start_offset,
            recovery_point: 0,
            flushed_offset: 0,
            flushed: watch::channel(0).0,
            last_flush,
            failed: None,
            mark,
            damage_seen: AtomicBool::new(false),
            recovery: recovered.report,
        };
        log.recovery.durable_mark_ignored = log.mark.ignored().map(str::to_owned);
        if let Some(damage) = &log.recovery.damage {
            tracing::error!(
                dir = %dir.display(),
                lost_from = damage.offset,
                lost_to = damage.reached_offset,
                reason = damage.reason,
                "records that had been durable are lost: damage at rest, not a torn write"
            );
        } else if !log.recovery.clean && !log.recovery.fresh {
            tracing::info!(dir = %dir.display(), report = ?log.recovery, "partition log recovered after an unclean shutdown");
        }
        // What recovery read may still sit only in the page cache.
        log.active().sync()?;
        log.flushed_offset = log.log_end_offset();
        log.flushed.send_replace(log.flushed_offset);
        log.write_checkpoint(log.active().base_offset(), false)?;
        // The mark now says where the recovered log ends: lowered past a
        // loss (reported once), raised over what recovery just synced.
        let end = log.flushed_offset;
        log.mark.set(log.disk.as_ref(), end)?;
        log.validate();
        Ok(log)
    }

    /// Closes the log (without marking it clean) and recovers it again,
    /// this time scanning every segment whatever the checkpoint vouches for:
    /// for when a read met damage in a segment recovery had trusted. The log
    /// is cut at the first bad batch; the new log's
    /// [`PartitionLog::recovery_report`] says what was lost.
    pub fn rescan(self) -> LogResult<Self> {
        let (disk, dir, config, clock) = (self.disk.clone(), self.dir.clone(), self.config.clone(), self.clock.clone());
        // Every file closes (and every index map is written back) before
        // recovery touches them.
        drop(self);
        let log = Self::recover(disk, &dir, config, clock, false)?;
        tracing::warn!(dir = %dir.display(), report = ?log.recovery, "partition log rescanned");
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn log_start_offset(&self) -> u64 {
        self.log_start_offset
    }

    /// The offset the next appended record gets.
    pub fn log_end_offset(&self) -> u64 {
        self.active().next_offset()
    }

    /// Every record below this offset is durable.
    pub fn flushed_offset(&self) -> u64 {
        self.flushed_offset
    }

    /// Follows `flushed_offset`: wait with `receiver.wait_for(|f| *f >= offset)`.
    pub fn subscribe_flushed(&self) -> watch::Receiver<u64> {
        self.flushed.subscribe()
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size).sum()
    }

    fn active(&self) -> &Segment {
        self.segments.values().next_back().expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("a log always has an active segment")
    }

    /// Whether a read (or a scrub) met damage at rest since the log was
    /// opened: the log must be reopened ([`PartitionLog::rescan`] or a clean
    /// close and an open), which cuts it at the damage.
    pub fn damage_seen(&self) -> bool {
        self.damage_seen.load(Ordering::Acquire)
    }

    /// Notes damage in a read's result.
    fn seen<T>(&self, result: LogResult<T>) -> LogResult<T> {
        if let Err(LogError::Corrupt { file, position, reason }) = &result {
            if !self.damage_seen.swap(true, Ordering::AcqRel) {
                tracing::error!(file = %file.display(), position, reason, "damaged batch in a partition log");
            }
        }
        result
    }

    /// Whether a failed write or fsync poisoned the log (see the module
    /// docs): what it holds can no longer be trusted.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    fn check_usable(&self) -> LogResult<()> {
        match &self.failed {
            Some(reason) => Err(LogError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Poisons the log on any I/O failure but running out of space and a
    /// read that failed before anything changed.
    fn fail(&mut self, error: LogError) -> LogError {
        if matches!(error, LogError::Corrupt { .. }) {
            self.damage_seen.store(true, Ordering::Release);
        }
        if matches!(error, LogError::Io { .. } | LogError::Corrupt { .. }) {
            tracing::error!(dir = %self.dir.display(), %error, "partition log failed; it must be reopened");
            self.failed = Some(error.to_string());
        }
        error
    }

    fn write_checkpoint(&mut self, recovery_point: u64, clean: bool) -> LogResult<()> {
        let checkpoint = Checkpoint { log_start_offset: self.log_start_offset, recovery_point, clean };
        checkpoint.write(self.disk.as_ref(), &self.dir)?;
        self.recovery_point = recovery_point;
        Ok(())
    }

    fn set_flushed(&mut self, offset: u64) {
        self.flushed_offset = offset;
        self.flushed.send_replace(offset);
    }

    /// Appends a batch at the log end, outside Raft (term and index 0).
    pub fn append(&mut self, batch: Batch) -> LogResult<Appended> {
        self.append_entry(batch, 0, 0)
    }

    /// Appends a batch at the log end as Raft entry `raft_index` of `term`.
    /// Durable on return only under [`FlushPolicy::EveryBatch`].
    pub fn append_entry(&mut self, batch: Batch, term: u64, raft_index: u64) -> LogResult<Appended> {
        self.check_usable()?;
        let now_ms = self.clock.now_ms();
        let base_offset = self.log_end_offset();
        let batch = batch.placed(base_offset, term, raft_index);
        if self.active().should_roll(&batch, &self.config, now_ms) {
            self.roll(now_ms).map_err(|e| self.fail(e))?;
        }
        self.active_mut().append(&batch).map_err(|e| self.fail(e))?;
        match self.config.flush {
            FlushPolicy::EveryBatch => {
                self.flush()?;
            }
            FlushPolicy::Interval { .. } => self.flush_if_due()?,
            FlushPolicy::Explicit => {}
        }
        Ok(Appended { base_offset, next_offset: batch.next_offset() })
    }

    /// Seals the active segment and starts a new one at the log end.
    ///
    /// The checkpoint moves before the new segment exists, so a failure at
    /// any step (the disk may fill between files) leaves a state that the
    /// next append retries and a recovery trusts: every sealed segment below
    /// the recovery point.
    fn roll(&mut self, now_ms: i64) -> LogResult<()> {
        let end = self.log_end_offset();
        self.active_mut().seal()?;
        self.set_flushed(end);
        self.write_checkpoint(end, false)?;
        let segment = match Segment::open(self.disk.as_ref(), &self.dir, end, &self.config, now_ms, true) {
            Ok(segment) => segment,
            Err(error) => {
                // Leave no half-made segment behind, durably: a crash must
                // not resurrect it behind the active segment's later appends.
                // If even that fails, the error poisons the log.
                self.remove_segment_files(end)?;
                return Err(error);
            }
        };
        self.disk.sync_dir(&self.dir).map_err(|e| LogError::io(&self.dir, e))?;
        self.segments.insert(end, segment);
        Ok(())
    }

    fn remove_segment_files(&self, base_offset: u64) -> LogResult<()> {
        Segment::remove_files(self.disk.as_ref(), &self.dir, base_offset)?;
        // Any failure here must poison the log (an Io error, never NoSpace).
        self.disk.sync_dir(&self.dir).map_err(|e| LogError::Io { path: self.dir.clone(), source: e })
    }

    /// Makes everything appended so far durable; returns the flushed offset.
    /// The durable-end mark is raised to it before anyone learns it is
    /// flushed (one small write and fsync more), so nothing acknowledged
    /// as durable ever lies past the mark ([`super::durable_mark`]).
    pub fn flush(&mut self) -> LogResult<u64> {
        self.check_usable()?;
        let end = self.log_end_offset();
        if self.flushed_offset < end && !planted::on(Bug::SkipFsync) {
            self.active().sync().map_err(|e| self.fail(e))?;
        }
        // A roll may have made offsets durable (sealing the segment) that
        // the mark does not cover yet.
        if self.mark.end() < end {
            self.mark.raise(self.disk.as_ref(), end).map_err(|e| self.fail(e))?;
        }
        if self.flushed_offset < end {
            self.set_flushed(end);
        }
        self.last_flush = self.clock.monotonic();
        Ok(end)
    }

    /// The durable-end mark: every offset below it was durable when it was
    /// written.
    pub fn durable_mark(&self) -> u64 {
        self.mark.end()
    }

    /// Flushes if the interval policy says it is time.
    pub fn flush_if_due(&mut self) -> LogResult<()> {
        if let FlushPolicy::Interval { interval_ms } = self.config.flush {
            let since = self.clock.monotonic().saturating_sub(self.last_flush);
            if since >= Duration::from_millis(interval_ms.max(0) as u64) {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes` (but at
    /// least one batch), ending at or before `limit` (e.g. a high watermark)
    /// and the log end. Reads stop at a segment boundary. Every batch returned
    /// passed its CRC checks.
    pub fn read(&self, offset: u64, max_bytes: usize, limit: u64) -> LogResult<Vec<Batch>> {
        self.check_usable()?;
        let end = self.log_end_offset();
        if offset < self.log_start_offset || offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start: self.log_start_offset, end });
        }
        let limit = limit.min(end);
        let Some((_, segment)) = self.segments.range(..=offset).next_back() else {
            return Err(LogError::OffsetOutOfRange { offset, start: self.log_start_offset, end });
        };
        if offset >= segment.next_offset() {
            return Ok(Vec::new());
        }
        self.seen(segment.read(offset, max_bytes, limit))
    }

    /// Checks about `max_bytes` of durable batches from `from` on (every
    /// batch read passes its CRCs or is damage): background scrubbing, so
    /// that damage at rest is found and repaired before a reader or a
    /// restart needs those bytes, on followers too. Returns where the pass
    /// goes on, `None` once it reached the durable end.
    pub fn scrub(&self, from: u64, max_bytes: usize) -> LogResult<Option<u64>> {
        let end = self.flushed_offset;
        let mut offset = from.max(self.log_start_offset);
        let mut checked = 0;
        while offset < end && checked < max_bytes {
            let batches = self.read(offset, max_bytes - checked, end)?;
            let Some(last) = batches.last() else { return Ok(None) };
            checked += batches.iter().map(Batch::len).sum::<usize>();
            offset = last.next_offset();
        }
        Ok((offset < end).then_some(offset))
    }

    /// The first offset whose record's timestamp is at or after
    /// `timestamp_ms`; `None` if every record is older.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> LogResult<Option<u64>> {
        self.check_usable()?;
        for segment in self.segments.values() {
            if segment.next_offset() <= self.log_start_offset || segment.max_timestamp_ms() < timestamp_ms {
                continue;
            }
            if let Some(offset) = self.seen(segment.offset_for_timestamp(timestamp_ms))? {
                return Ok(Some(offset.max(self.log_start_offset)));
            }
        }
        Ok(None)
    }

    /// Removes every record at or after `end`, which must be a batch
    /// boundary in `[log_start_offset, log_end_offset]`. Durable on return.
    /// Raft uses this when a new leader overrides a follower's tail.
    pub fn truncate(&mut self, end: u64) -> LogResult<()> {
        self.check_usable()?;
        let log_end = self.log_end_offset();
        if end == log_end {
            return Ok(());
        }
        if end < self.log_start_offset || end > log_end {
            return Err(LogError::OffsetOutOfRange { offset: end, start: self.log_start_offset, end: log_end });
        }
        let first = *self.segments.keys().next().expect("a log always has a segment");
        let keep_base = *self.segments.range(..end).next_back().map_or(&first, |(base, _)| base);
        let doomed: Vec<u64> = self.segments.range(keep_base + 1..).map(|(base, _)| *base).collect();
        // Every read first: a failed one leaves the log as it was, usable.
        let cut = self.seen(self.segments[&keep_base].plan_cut(end))?;
        // Lower the recovery point first: the segment that now ends at `end`
        // is about to change and must be scanned by a recovery.
        let recovery_point = self.recovery_point.min(keep_base);
        self.write_checkpoint(recovery_point, false).map_err(|e| self.fail(e))?;
        // And the durable mark, or a crash part way would look like a loss.
        if self.mark.end() > end {
            self.mark.lower(self.disk.as_ref(), end).map_err(|e| self.fail(e))?;
        }
        for base in doomed {
            let segment = self.segments.remove(&base).expect("listed above");
            segment.delete(self.disk.as_ref()).map_err(|e| self.fail(e))?;
        }
        let kept = self.segments.get_mut(&keep_base).expect("kept segment");
        let truncated = kept.cut(cut);
        kept.unseal();
        truncated.map_err(|e| self.fail(e))?;
        self.disk.sync_dir(&self.dir).map_err(|e| self.fail(LogError::io(&self.dir, e)))?;
        let flushed = self.flushed_offset.min(end);
        self.set_flushed(flushed);
        self.validate();
        Ok(())
    }

    /// Empties the log and starts it over at `offset`: the next append gets
    /// `offset`. Raft uses this when a snapshot replaces a follower's whole
    /// log. Durable on return; a crash part way leaves a log that still
    /// holds a prefix of the old one or starts at `offset`, which the caller
    /// detects (the log end is not where it expects) and resets again.
    pub fn reset_to(&mut self, offset: u64) -> LogResult<()> {
        self.check_usable()?;
        let now_ms = self.clock.now_ms();
        self.log_start_offset = offset;
        self.write_checkpoint(0, false).map_err(|e| self.fail(e))?;
        // Part way, the log may end anywhere: the mark claims nothing until
        // the new log is in place.
        self.mark.lower(self.disk.as_ref(), 0).map_err(|e| self.fail(e))?;
        while let Some((&base, _)) = self.segments.iter().next() {
            let segment = self.segments.remove(&base).expect("listed above");
            segment.delete(self.disk.as_ref()).map_err(|e| self.fail(e))?;
        }
        self.disk.sync_dir(&self.dir).map_err(|e| self.fail(LogError::io(&self.dir, e)))?;
        let segment = Segment::open(self.disk.as_ref(), &self.dir, offset, &self.config, now_ms, true)
            .map_err(|e| self.fail(e))?;
        self.disk.sync_dir(&self.dir).map_err(|e| self.fail(LogError::io(&self.dir, e)))?;
        self.segments.insert(offset, segment);
        self.set_flushed(offset);
        self.write_checkpoint(offset, false).map_err(|e| self.fail(e))?;
        self.mark.raise(self.disk.as_ref(), offset).map_err(|e| self.fail(e))?;
        self.validate();
        Ok(())
    }

    /// Deletes the oldest segments that retention (size, age) no longer
    /// keeps, never the active one and never one reaching past `upper` (e.g.
    /// what consumers or replicas still need). Returns how many it deleted.
    pub fn apply_retention(&mut self, upper: u64) -> LogResult<usize> {
        let now_ms = self.clock.now_ms();
        let (retention_bytes, retention_ms) = (self.config.retention_bytes, self.config.retention_ms);
        self.delete_oldest(upper, |segment, total| {
            let by_size = retention_bytes.is_some_and(|limit| total - segment.size() >= limit);
            let by_age = retention_ms.is_some_and(|age| now_ms.saturating_sub(segment.max_timestamp_ms()) > age);
            by_size || by_age
        })
    }

    /// Where [`PartitionLog::apply_retention`] would start the log: the
    /// base of the oldest segment retention keeps (with nothing to delete,
    /// the log start). For a caller, such as Raft, that must agree to the
    /// deletion before it happens.
    pub fn retention_point(&self, upper: u64) -> u64 {
        let now_ms = self.clock.now_ms();
        let (retention_bytes, retention_ms) = (self.config.retention_bytes, self.config.retention_ms);
        let mut total = self.size_bytes();
        let mut point = self.log_start_offset;
        for segment in self.segments.values().take(self.segments.len() - 1) {
            let by_size = retention_bytes.is_some_and(|limit| total - segment.size() >= limit);
            let by_age = retention_ms.is_some_and(|age| now_ms.saturating_sub(segment.max_timestamp_ms()) > age);
            if segment.next_offset() > upper || !(by_size || by_age) {
                break;
            }
            tracing::debug!(
                dir = %self.dir.display(),
                base = segment.base_offset(),
                max_timestamp_ms = segment.max_timestamp_ms(),
                now_ms,
                by_size,
                by_age,
                "retention takes a segment"
            );
            total -= segment.size();
            point = point.max(segment.next_offset());
        }
        point
    }

    /// Deletes every whole segment below `upper` but the active one, e.g.
    /// once a snapshot at `upper` makes what came before redundant.
    pub fn delete_before(&mut self, upper: u64) -> LogResult<usize> {
        self.delete_oldest(upper, |_, _| true)
    }

    /// Deletes segments from the oldest while `doomed(segment, total bytes)`
    /// says so, none reaching past `upper`, never the active one.
    fn delete_oldest(&mut self, upper: u64, doomed: impl Fn(&Segment, u64) -> bool) -> LogResult<usize> {
        self.check_usable()?;
        let mut total = self.size_bytes();
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let (&base, oldest) = self.segments.iter().next().expect("more than one segment");
            if oldest.next_offset() > upper || !doomed(oldest, total) {
                break;
            }
            let segment = self.segments.remove(&base).expect("oldest segment");
            total -= segment.size();
            segment.delete(self.disk.as_ref()).map_err(|e| self.fail(e))?;
            deleted += 1;
        }
        if deleted > 0 {
            self.disk.sync_dir(&self.dir).map_err(|e| self.fail(LogError::io(&self.dir, e)))?;
            let first = *self.segments.keys().next().expect("active segment remains");
            self.log_start_offset = self.log_start_offset.max(first);
            let recovery_point = self.recovery_point;
            self.write_checkpoint(recovery_point, false).map_err(|e| self.fail(e))?;
            self.validate();
        }
        Ok(deleted)
    }

    /// Flushes, seals the active segment and records a clean shutdown, so
    /// the next open trusts the indexes instead of scanning.
    pub fn close(mut self) -> LogResult<()> {
        self.flush()?;
        self.active_mut().seal().map_err(|e| self.fail(e))?;
        let end = self.log_end_offset();
        self.mark.set(self.disk.as_ref(), end).map_err(|e| self.fail(e))?;
        self.write_checkpoint(end, true)
    }

    /// Checks the log's invariants; panics on a violation (a bug).
    pub fn validate(&self) {
        let end = self.log_end_offset();
        assert!(self.log_start_offset <= self.flushed_offset, "log start above flushed: {self:?}");
        assert!(self.flushed_offset <= end, "flushed past the log end: {self:?}");
        assert!(self.mark.end() <= self.flushed_offset, "durable mark past the flushed offset: {self:?}");
        let mut expected = None;
        for (base, segment) in &self.segments {
            assert_eq!(*base, segment.base_offset());
            if let Some(expected) = expected {
                assert_eq!(*base, expected, "segments not contiguous: {self:?}");
            }
            assert!(segment.next_offset() >= *base);
            expected = Some(segment.next_offset());
        }
        let first = self.segments.values().next().expect("a log always has a segment");
        assert!(first.base_offset() <= self.log_start_offset, "log start below the first segment: {self:?}");
    }
}
