//! openraft's log storage over the partition log: the partition log *is* the
//! Raft log, so every byte is written once.
//!
//! Entry `i` is one batch whose header carries `raft_index = i` and the term
//! of the leader that proposed it; a proposal is stored as the producer's
//! batch, any other entry as a control batch (see [`super::types`]). Message
//! offsets follow from the log order: an entry's batch starts where the
//! previous one ended, on every replica alike.
//!
//! An in-memory index maps each Raft index in the log to its batch's base
//! offset and term (16 bytes per entry), rebuilt from the batch headers when
//! the group opens. The vote and the purge point live in a small state file
//! beside the segments.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, CommittedLeaderId, EntryPayload, OptionalSend, RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};

use super::state_file;
use super::types::{batch_to_payload, payload_to_batch, Entry, LogId, StorageError, TypeConfig, Vote};
use crate::log::{Batch, PartitionLog};
use crate::sys::clock::Clock;
use crate::sys::disk::Disk;
use crate::sys::task::blocking;

const HARD_STATE_FILE: &str = "raft-state";
/// Bytes read from the log per step when serving entries.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// The partition log, shared by Raft (which writes it) and the broker (which
/// reads it up to the high watermark). `None` once closed.
pub type SharedLog = Arc<Mutex<Option<PartitionLog>>>;

pub fn lock_log(log: &SharedLog) -> MutexGuard<'_, Option<PartitionLog>> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

/// What must survive a restart besides the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HardState {
    vote: Option<Vote>,
    purged: Option<LogId>,
}

/// Raft index → (base offset, term) for every entry in the log.
#[derive(Debug, Default)]
struct EntryIndex {
    /// Raft index of `entries[0]`, or of the next entry when empty.
    first: u64,
    entries: VecDeque<(u64, u64)>,
    hard: HardState,
}

impl EntryIndex {
    fn next_index(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn last_log_id(&self) -> Option<LogId> {
        match self.entries.back() {
            Some(&(_, term)) => Some(log_id(term, self.next_index() - 1)),
            None => self.hard.purged,
        }
    }

    fn get(&self, index: u64) -> Option<(u64, u64)> {
        let position = index.checked_sub(self.first)?;
        self.entries.get(usize::try_from(position).ok()?).copied()
    }
}

struct Shared {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    clock: Arc<dyn Clock>,
    log: SharedLog,
    index: Mutex<EntryIndex>,
}

/// A partition group's log storage; clones share it.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("dir", &self.shared.dir).finish()
    }
}

fn write_err(e: impl ToString) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

fn read_err(e: impl ToString) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

impl LogStore {
    /// Opens the log in `dir` and indexes its entries. Blocks on disk I/O.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path, log: PartitionLog, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let hard: HardState = state_file::load(disk.as_ref(), dir, HARD_STATE_FILE)?.unwrap_or_default();
        let mut index = EntryIndex { first: hard.purged.map_or(0, |p| p.index + 1), entries: VecDeque::new(), hard };
        let mut offset = log.log_start_offset();
        let end = log.log_end_offset();
        while offset < end {
            let batches = log.read(offset, READ_CHUNK_BYTES, end).map_err(|e| e.to_string())?;
            let Some(last) = batches.last() else { break };
            offset = last.next_offset();
            for batch in &batches {
                let raft_index = batch.raft_index();
                if index.entries.is_empty() && index.hard.purged.is_some_and(|p| raft_index <= p.index) {
                    // Purged, but in a segment that is not deleted yet.
                    continue;
                }
                if index.entries.is_empty() {
                    index.first = raft_index;
                } else if raft_index != index.next_index() {
                    return Err(format!(
                        "{}: batch at offset {} is Raft entry {raft_index}, expected {}",
                        dir.display(),
                        batch.base_offset(),
                        index.next_index()
                    ));
                }
                index.entries.push_back((batch.base_offset(), batch.term()));
            }
        }
        let shared = Shared {
            dir: dir.to_path_buf(),
            disk,
            clock,
            log: Arc::new(Mutex::new(Some(log))),
            index: Mutex::new(index),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    pub fn log(&self) -> SharedLog {
        self.shared.log.clone()
    }

    fn index(&self) -> MutexGuard<'_, EntryIndex> {
        self.shared.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the log holds entry `log_id` (same index and term).
    pub fn contains(&self, log_id: &LogId) -> bool {
        self.index().get(log_id.index).is_some_and(|(_, term)| term == log_id.leader_id.term)
    }

    /// The offset the next entry's batch gets.
    pub fn log_end_offset(&self) -> Result<u64, String> {
        match lock_log(&self.shared.log).as_ref() {
            Some(log) => Ok(log.log_end_offset()),
            None => Err("partition log is closed".into()),
        }
    }

    /// Drops every entry and starts the log over: the next entry is
    /// `next_index` at offset `next_offset`, and everything up to
    /// `snapshot` counts as purged. For installing a snapshot the log does
    /// not reach. Blocks on disk I/O.
    pub fn reset(&self, snapshot: LogId, next_offset: u64) -> Result<(), String> {
        let mut index = self.index();
        let mut guard = lock_log(&self.shared.log);
        let log = guard.as_mut().ok_or("partition log is closed")?;
        let mut hard = index.hard.clone();
        hard.purged = Some(snapshot);
        state_file::save(self.shared.disk.as_ref(), &self.shared.dir, HARD_STATE_FILE, &hard)?;
        index.hard = hard;
        log.reset_to(next_offset).map_err(|e| e.to_string())?;
        index.entries.clear();
        index.first = snapshot.index + 1;
        Ok(())
    }

    fn save_hard(&self, change: impl FnOnce(&mut HardState)) -> Result<(), String> {
        let mut index = self.index();
        let mut hard = index.hard.clone();
        change(&mut hard);
        state_file::save(self.shared.disk.as_ref(), &self.shared.dir, HARD_STATE_FILE, &hard)?;
        index.hard = hard;
        Ok(())
    }

    fn append_blocking(&self, entries: Vec<Entry>) -> Result<(), String> {
        let now_ms = self.shared.clock.now_ms();
        let mut index = self.index();
        let mut guard = lock_log(&self.shared.log);
        let log = guard.as_mut().ok_or("partition log is closed")?;
        let mut durable = Vec::new();
        for entry in entries {
            let expected = index.next_index();
            if entry.log_id.index != expected {
                return Err(format!("appending Raft entry {} but the log ends before {expected}", entry.log_id.index));
            }
            let batch = payload_to_batch(&entry.payload, now_ms)?;
            let term = entry.log_id.leader_id.term;
            let appended = log.append_entry(batch, term, entry.log_id.index).map_err(|e| e.to_string())?;
            index.entries.push_back((appended.base_offset, term));
            if let EntryPayload::Normal(proposal) = entry.payload {
                durable.push((proposal, appended.base_offset));
            }
        }
        log.flush().map_err(|e| e.to_string())?;
        for (proposal, base_offset) in durable {
            proposal.signal_durable(base_offset);
        }
        Ok(())
    }

    fn truncate_blocking(&self, from: u64) -> Result<(), String> {
        let mut index = self.index();
        let Some((offset, _)) = index.get(from) else {
            return if from >= index.next_index() {
                Ok(())
            } else {
                Err(format!("cannot truncate at Raft entry {from}: it was purged"))
            };
        };
        let mut guard = lock_log(&self.shared.log);
        let log = guard.as_mut().ok_or("partition log is closed")?;
        log.truncate(offset).map_err(|e| e.to_string())?;
        let keep = (from - index.first) as usize;
        index.entries.truncate(keep);
        Ok(())
    }

    fn purge_blocking(&self, upto: LogId) -> Result<(), String> {
        self.save_hard(|hard| hard.purged = Some(upto))?;
        let mut index = self.index();
        while index.first <= upto.index && !index.entries.is_empty() {
            index.entries.pop_front();
            index.first += 1;
        }
        index.first = index.first.max(upto.index + 1);
        let mut guard = lock_log(&self.shared.log);
        let log = guard.as_mut().ok_or("partition log is closed")?;
        let keep_from = index.entries.front().map_or(log.log_end_offset(), |&(offset, _)| offset);
        log.delete_before(keep_from).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn read_blocking(&self, start: u64, end: u64) -> Result<Vec<Entry>, String> {
        let (first_offset, purged) = {
            let index = self.index();
            let end = end.min(index.next_index());
            if start >= end {
                return Ok(Vec::new());
            }
            (index.get(start).map(|(offset, _)| offset), index.hard.purged)
        };
        let Some(mut offset) = first_offset else {
            return Err(format!("Raft entry {start} was purged (last purged: {purged:?})"));
        };
        let mut out = Vec::with_capacity((end - start) as usize);
        let guard = lock_log(&self.shared.log);
        let log = guard.as_ref().ok_or("partition log is closed")?;
        let mut expected = start;
        while expected < end {
            let batches: Vec<Batch> = log.read(offset, READ_CHUNK_BYTES, u64::MAX).map_err(|e| e.to_string())?;
            let Some(last) = batches.last() else {
                return Err(format!("the log ends at offset {offset}, before Raft entry {expected}"));
            };
            offset = last.next_offset();
            for batch in batches {
                if expected >= end {
                    break;
                }
                if batch.raft_index() != expected {
                    return Err(format!(
                        "batch at offset {} is Raft entry {}, expected {expected}",
                        batch.base_offset(),
                        batch.raft_index()
                    ));
                }
                let id = log_id(batch.term(), expected);
                let payload = batch_to_payload(batch)?;
                out.push(Entry { log_id: id, payload });
                expected += 1;
            }
        }
        Ok(out)
    }
}

fn index_range<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = index_range(&range);
        let store = self.clone();
        blocking(move || store.read_blocking(start, end)).await.map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let index = self.index();
        Ok(LogState { last_purged_log_id: index.hard.purged, last_log_id: index.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (store, vote) = (self.clone(), *vote);
        blocking(move || store.save_hard(|hard| hard.vote = Some(vote)))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.index().hard.vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let store = self.clone();
        let result = blocking(move || store.append_blocking(entries)).await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(dir = %self.shared.dir.display(), error = %e, "Raft log append failed");
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let store = self.clone();
        blocking(move || store.truncate_blocking(log_id.index)).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let store = self.clone();
        blocking(move || store.purge_blocking(log_id)).await.map_err(write_err)
    }
}
