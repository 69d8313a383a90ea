//! openraft's log storage over the partition log: the partition log *is* the
//! Raft log, so every byte of a message is written once.
//!
//! A proposal's entry is the producer's batch, whose header carries the
//! entry's Raft index and term; message offsets follow from the log order,
//! the same on every replica. Raft's other entries (a new leader's blank
//! entry, membership changes) are rare and hold no messages: they live in a
//! small [`ControlFile`] beside the segments and take no offset, so the
//! offsets consumers see are dense.
//!
//! An in-memory index maps each Raft index to its place (base offset and
//! term; 16 bytes per batch), rebuilt from the batch headers and the control
//! file when the group opens. The vote and the purge point live in a small
//! state file.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, CommittedLeaderId, EntryPayload, OptionalSend, RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};

use super::control_file::{ControlFile, ControlRecord};
use super::retired::{self, Retired};
use super::state_file;
use super::types::{Control, Entry, LogId, Proposal, StorageError, TypeConfig, Vote};
use crate::log::{Batch, LogError, PartitionLog};
use crate::sys::disk::Disk;
use crate::sys::task::blocking;

const HARD_STATE_FILE: &str = "raft-state";
/// Bytes read from the log per step when serving entries.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// The batch bytes one replication message carries at most (or one entry,
/// if that alone is bigger): with the entry count (`max_payload_entries`,
/// see `raft_config`), what bounds a message. A follower far behind (a
/// learner joining with a partition's whole log to copy) catches up in
/// steps of this size, one fsync each, not in steps of a few small batches.
pub const REPLICATION_BYTES_MAX: usize = 1 << 20;

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
    /// Damage cut entries this replica may have acknowledged, up to this
    /// Raft index. Until a leader has brought the log back past it, the
    /// replica neither votes nor campaigns (see `Replica::open`).
    #[serde(default)]
    repair_through: Option<u64>,
    /// The term of the last entry damage may have cut (the largest over
    /// every damage not yet repaired), at most the vote's term then, since
    /// a replica takes a leader's vote before its entries.
    #[serde(default)]
    repair_term: Option<u64>,
}

/// One Raft entry's place: a batch at `offset`, or a control entry (which
/// sits, taking no room, at the offset of the next batch).
#[derive(Debug, Clone)]
struct Slot {
    offset: u64,
    term: u64,
    control: Option<Box<Control>>,
}

#[derive(Debug)]
struct EntryIndex {
    /// Raft index of `slots[0]`, or of the next entry when empty.
    first: u64,
    slots: VecDeque<Slot>,
    hard: HardState,
    control_file: ControlFile,
}

impl EntryIndex {
    fn next_index(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    fn last_log_id(&self) -> Option<LogId> {
        match self.slots.back() {
            Some(slot) => Some(log_id(slot.term, self.next_index() - 1)),
            None => self.hard.purged,
        }
    }

    /// A replica of this group was here before, removed (see
    /// [`super::retired`]): its vote binds this one, and until a leader
    /// has brought the log past the last entry it held, this replica
    /// abstains from elections as a damaged one does.
    fn take_over(&mut self, disk: &dyn Disk, dir: &Path, retired: Retired) -> Result<(), String> {
        let mut hard = self.hard.clone();
        let term = |vote: &Option<Vote>| vote.map(|v| v.leader_id.term);
        if term(&retired.vote) > term(&hard.vote) {
            hard.vote = retired.vote.map(|vote| Vote { committed: false, ..vote });
        }
        let owed =
            retired.last_log_id.filter(|last| Some(*last) > self.last_log_id() && Some(*last) > self.repair_bar());
        if let Some(last) = owed {
            hard.repair_term = Some(last.leader_id.term);
            hard.repair_through = Some(last.index);
        }
        tracing::warn!(
            dir = %dir.display(),
            vote = ?hard.vote,
            repair_through = ?hard.repair_through,
            "a replica of this group was here before and was removed; taking over its vote, abstaining from elections until a leader brings the log past its last entry"
        );
        state_file::save(disk, dir, HARD_STATE_FILE, &hard)?;
        self.hard = hard;
        retired::discard(disk, dir)
    }

    /// See [`LogStore::repair_bar`].
    fn repair_bar(&self) -> Option<LogId> {
        Some(log_id(self.hard.repair_term?, self.hard.repair_through?))
    }

    fn get(&self, index: u64) -> Option<&Slot> {
        let position = index.checked_sub(self.first)?;
        self.slots.get(usize::try_from(position).ok()?)
    }

    /// The control entries still in the log, as the control file holds them.
    fn control_records(&self) -> Vec<ControlRecord> {
        (self.first..)
            .zip(&self.slots)
            .filter_map(|(index, slot)| {
                slot.control.as_ref().map(|c| ControlRecord { index, term: slot.term, control: (**c).clone() })
            })
            .collect()
    }
}

struct Shared {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    log: SharedLog,
    index: Mutex<EntryIndex>,
    /// An append found the disk full. The partition log refuses such an
    /// append whole and stays usable (unlike after a failed write or
    /// fsync), so the replica may be reopened in place.
    out_of_space: AtomicBool,
    /// A read for Raft failed (the disk could not read, for a while), or
    /// one an append or a truncation needed, which the partition log does
    /// before it changes anything. A read changes nothing, so the replica
    /// may be reopened in place.
    read_failed: AtomicBool,
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

/// Every batch in the log from its start: (Raft index, base offset, term).
fn scan_batches(log: &PartitionLog) -> Result<Vec<(u64, u64, u64)>, LogError> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let batches = log.read(offset, READ_CHUNK_BYTES, end)?;
        let Some(last) = batches.last() else { break };
        offset = last.next_offset();
        out.extend(batches.iter().map(|b| (b.raft_index(), b.base_offset(), b.term())));
    }
    Ok(out)
}

/// The first entry from `first` on that neither a batch nor a control
/// record holds, if a batch lies after it: `(missing, that batch's index)`.
fn gap_before_a_batch(first: u64, scanned: &[(u64, u64, u64)], records: &[ControlRecord]) -> Option<(u64, u64)> {
    let batches: BTreeSet<u64> = scanned.iter().map(|&(index, _, _)| index).filter(|&index| index >= first).collect();
    let controls: BTreeSet<u64> = records.iter().map(|r| r.index).collect();
    let mut next = first;
    while batches.contains(&next) || controls.contains(&next) {
        next += 1;
    }
    batches.range(next..).next().map(|&after| (next, after))
}

impl LogStore {
    /// Indexes the entries of `log` (opened in `dir`) and its control file.
    /// Entries after a gap are cut off: the Raft log must be whole. Control
    /// records a crash left beyond the last batch were never acknowledged;
    /// a gap before a batch, or damage in either file, means entries this
    /// replica may have acknowledged are gone, and it abstains until a
    /// leader has restored them.
    /// Blocks on disk I/O.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path, mut log: PartitionLog) -> Result<Self, String> {
        let mut hard: HardState = state_file::load(disk.as_ref(), dir, HARD_STATE_FILE)?.unwrap_or_default();
        // A restarted leader must not resume its term, as openraft would on
        // a committed vote for itself. Before the crash it may have sent
        // followers entries it had not flushed itself; those are gone here,
        // and entries it appended anew would reuse their log ids, which Raft
        // takes to mean the same entries. (madsim seed 648 of cluster_e2e
        // stored a retried batch twice this way: the resumed leader judged
        // the retry before re-applying its own earlier entries.) The vote
        // still binds this term; the node leads again only by winning a new
        // one, whose first entry settles which of the old entries stay.
        if let Some(vote) = hard.vote.as_mut() {
            vote.committed = false;
        }
        let (control_file, records, control_damage) = ControlFile::open(disk.clone(), dir)?;
        let records_in_file = records.len();
        // Reading every batch checks every CRC, also in the segments that
        // recovery trusted; damage found there means recovering again,
        // trusting nothing, which cuts the log at the damage.
        let scanned = match scan_batches(&log) {
            Err(LogError::Corrupt { file, position, reason }) => {
                tracing::error!(file = %file.display(), position, reason, "damaged batch in the Raft log; rescanning it");
                log = log.rescan().map_err(|e| e.to_string())?;
                scan_batches(&log)
            }
            scanned => scanned,
        };
        let scanned = scanned.map_err(|e| e.to_string())?;
        let log_damage = log.recovery_report().damage.clone();
        let first = hard.purged.map_or(0, |p| p.index + 1);
        // Control records are fsynced before any batch after them is
        // written (`append_blocking`), so an entry missing before a batch
        // that survived was lost at rest, as a damaged record is.
        let gap = gap_before_a_batch(first, &scanned, &records);
        let seen = match (&log_damage, &control_damage, gap) {
            (Some(damage), _, _) => Some((Some(damage.offset), damage.reason.clone())),
            (None, Some(damage), _) => {
                Some((None, format!("a damaged record at byte {} of the control file", damage.position)))
            }
            (None, None, Some((missing, after))) => Some((
                None,
                format!("Raft entry {missing} is missing from the control file, but entry {after} is in the log"),
            )),
            (None, None, None) => None,
        };
        if let Some((offset, reason)) = seen {
            // Entries this replica acknowledged may be gone: it must not
            // vote on the strength of its log until a leader restores them.
            let in_log = scanned.last().map(|&(index, _, _)| index);
            let in_control_file = records.iter().map(|r| r.index).max();
            // Past the last intact batch come the lost batches, one entry
            // each (at least the damaged one; at most one per lost offset),
            // and control entries, which the control file holds. (Counting
            // the damaged batch itself matters: when it was the last, the
            // log otherwise looked whole, and the replica stopped abstaining
            // at once without an entry it had acknowledged; seed 247.)
            // A damaged control record loses its entry and, as the log must
            // stay whole, every entry after it (cut below as after a gap);
            // the intact records after it say how far the file reached.
            let by_offsets = log_damage.as_ref().map(|damage| {
                let lost_offsets =
                    damage.reached_offset.map_or(1, |reached| reached.saturating_sub(damage.offset).max(1));
                let controls_after = records.iter().filter(|r| in_log.is_none_or(|last| r.index > last)).count() as u64;
                in_log.unwrap_or(0) + lost_offsets + controls_after
            });
            let through = [
                log_damage.as_ref().and_then(|damage| damage.raft_index_lost),
                in_log,
                in_control_file,
                by_offsets,
                control_damage.as_ref().map(|damage| damage.reached_index),
                hard.repair_through,
            ]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
            tracing::error!(
                dir = %dir.display(),
                offset,
                reason,
                repair_through = through,
                "damage cut the Raft log; this replica abstains from elections until a leader repairs it"
            );
            hard.repair_through = Some(through);
            // The term of the last entry the lost log held, or more. Every
            // term's first entry is its leader's blank control entry, which
            // the control file holds (or, purged, the purged point's term
            // is that term), so the highest term in the control file, among
            // the intact batches and at the purge point is that term. The
            // vote's term bounds it too. Too high a term would refuse the
            // votes of a candidate with every entry this replica lost, and
            // could leave a partition without a leader.
            let in_log_terms = records
                .iter()
                .map(|r| r.term)
                .chain(scanned.iter().map(|&(_, _, term)| term))
                .chain(hard.purged.map(|p| p.leader_id.term))
                .max();
            let voted = hard.vote.map(|v| v.leader_id.term);
            let term = [in_log_terms, voted].into_iter().flatten().min();
            hard.repair_term = term.max(hard.repair_term);
            state_file::save(disk.as_ref(), dir, HARD_STATE_FILE, &hard)?;
        }
        let mut controls: BTreeMap<u64, ControlRecord> =
            records.into_iter().filter(|r| r.index >= first).map(|r| (r.index, r)).collect();
        let mut offset = log.log_start_offset();
        let mut slots = VecDeque::new();
        let mut batches = scanned.into_iter().peekable();
        // Batches a purge covered, in segments not deleted yet.
        while batches.peek().is_some_and(|&(index, _, _)| index < first) {
            batches.next();
            offset = batches.peek().map_or(log.log_end_offset(), |&(_, base, _)| base);
        }
        let mut next = first;
        loop {
            if let Some(&(index, base, term)) = batches.peek() {
                if index == next {
                    slots.push_back(Slot { offset: base, term, control: None });
                    batches.next();
                    offset = batches.peek().map_or(log.log_end_offset(), |&(_, next_base, _)| next_base);
                    next += 1;
                    continue;
                }
            }
            match controls.remove(&next) {
                Some(record) => {
                    slots.push_back(Slot { offset, term: record.term, control: Some(Box::new(record.control)) });
                    next += 1;
                }
                None => break,
            }
        }
        if let Some((index, base, _)) = batches.next() {
            tracing::warn!(dir = %dir.display(), index, offset = base, "cutting Raft entries after a gap");
            log.truncate(base).map_err(|e| e.to_string())?;
        }
        let mut index = EntryIndex { first, slots, hard, control_file };
        if let Some(retired) = retired::load(disk.as_ref(), dir)? {
            index.take_over(disk.as_ref(), dir, retired)?;
        }
        let kept = index.control_records();
        if kept.len() != records_in_file {
            index.control_file.rewrite(&kept)?;
        }
        let shared = Shared {
            dir: dir.to_path_buf(),
            disk,
            log: Arc::new(Mutex::new(Some(log))),
            index: Mutex::new(index),
            out_of_space: AtomicBool::new(false),
            read_failed: AtomicBool::new(false),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// Whether an append found the disk full (see `Shared::out_of_space`).
    pub fn out_of_space(&self) -> bool {
        self.shared.out_of_space.load(Ordering::Acquire)
    }

    /// Whether a read for Raft failed (see `Shared::read_failed`).
    pub fn read_failed(&self) -> bool {
        self.shared.read_failed.load(Ordering::Acquire)
    }

    pub fn log(&self) -> SharedLog {
        self.shared.log.clone()
    }

    fn index(&self) -> MutexGuard<'_, EntryIndex> {
        self.shared.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the log holds entry `log_id` (same index and term).
    pub fn contains(&self, log_id: &LogId) -> bool {
        self.index().get(log_id.index).is_some_and(|slot| slot.term == log_id.leader_id.term)
    }

    /// The last entry that ends at or before `offset`: purging up to it
    /// frees the segments below `offset`.
    pub fn last_index_before(&self, offset: u64) -> Option<u64> {
        let index = self.index();
        // Entries before `k` start at or before `offset`; all but the last
        // of them also end there.
        let k = index.slots.partition_point(|slot| slot.offset <= offset) as u64;
        let ends_before = if k as usize == index.slots.len() && self.log_end_offset().is_ok_and(|end| end <= offset) {
            k
        } else {
            k.saturating_sub(1)
        };
        (ends_before > 0).then(|| index.first + ends_before - 1)
    }

    /// The offset the next entry's batch gets.
    pub fn log_end_offset(&self) -> Result<u64, String> {
        match lock_log(&self.shared.log).as_ref() {
            Some(log) => Ok(log.log_end_offset()),
            None => Err("partition log is closed".into()),
        }
    }

    /// The id of the last entry in the log (appended, not necessarily
    /// flushed), or of the last purged one.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.index().last_log_id()
    }

    /// The index of the last entry in the log.
    pub fn last_index(&self) -> Option<u64> {
        self.index().last_log_id().map(|id| id.index)
    }

    /// What this replica leaves behind if it is removed (see
    /// [`super::retired`]): its vote, and the last entry it held or may
    /// have held.
    pub fn retirement(&self) -> Retired {
        let index = self.index();
        Retired { vote: index.hard.vote, last_log_id: index.last_log_id().max(index.repair_bar()) }
    }

    /// Set while damage has cut entries this replica may have acknowledged,
    /// up to this Raft index, and no leader has restored them yet.
    pub fn repair_through(&self) -> Option<u64> {
        self.index().hard.repair_through
    }

    /// While repairing: a log id no entry this replica may have lost is
    /// more up to date than (no later term, no higher index). A candidate
    /// whose last log id is at least this has every entry the replica's
    /// log held before the damage, as Raft's vote rule demands.
    pub fn repair_bar(&self) -> Option<LogId> {
        self.index().repair_bar()
    }

    /// Records that the log holds, from a leader, everything up to the
    /// repair point: the replica may vote again. Blocks on disk I/O.
    pub fn finish_repair(&self) -> Result<(), String> {
        self.save_hard(|hard| {
            hard.repair_through = None;
            hard.repair_term = None;
        })
    }

    /// The last purged entry: everything up to it is gone from the log.
    pub fn last_purged(&self) -> Option<LogId> {
        self.index().hard.purged
    }

    /// Drops every entry and starts the log over: the next entry is the one
    /// after `snapshot`, and its batch gets offset `next_offset`. For
    /// installing a snapshot the log does not reach. Blocks on disk I/O.
    ///
    /// The purge point moves last: until it does, a crash leaves the old
    /// log's purge point over what is left of the old log (a prefix of it:
    /// dropping the control entries first cuts the log at the first of
    /// them), which still lacks the snapshot's entry, so the state machine
    /// resets again on open. Moving it first would let a crash leave old
    /// entries, perhaps of older terms, right after the snapshot's.
    pub fn reset(&self, snapshot: LogId, next_offset: u64) -> Result<(), String> {
        let mut index = self.index();
        let mut guard = lock_log(&self.shared.log);
        let log = guard.as_mut().ok_or("partition log is closed")?;
        index.control_file.rewrite(&[])?;
        log.reset_to(next_offset).map_err(|e| e.to_string())?;
        index.slots.clear();
        let mut hard = index.hard.clone();
        hard.purged = Some(snapshot);
        state_file::save(self.shared.disk.as_ref(), &self.shared.dir, HARD_STATE_FILE, &hard)?;
        index.hard = hard;
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

    /// Appends `entries`, durably. The control records go first, fsynced
    /// before any batch after them is written: so a batch that survives a
    /// crash proves every control entry before it durable, and a control
    /// entry missing before a batch is damage, not a crash (see `open`).
    fn append_blocking(&self, entries: Vec<Entry>) -> Result<(), String> {
        let mut index = self.index();
        let next = index.next_index();
        let mut controls = Vec::new();
        for (at, entry) in entries.iter().enumerate() {
            let expected = next + at as u64;
            if entry.log_id.index != expected {
                return Err(format!("appending Raft entry {} but the log ends before {expected}", entry.log_id.index));
            }
            if !matches!(entry.payload, EntryPayload::Normal(_)) {
                let control = Control::of(&entry.payload).expect("not a proposal");
                controls.push(ControlRecord { index: expected, term: entry.log_id.leader_id.term, control });
            }
        }
        index.control_file.append(&controls)?;
        let mut guard = lock_log(&self.shared.log);
        let log = guard.as_mut().ok_or("partition log is closed")?;
        let mut durable: Vec<(Proposal, u64)> = Vec::new();
        let mut controls = controls.into_iter();
        for entry in entries {
            let term = entry.log_id.leader_id.term;
            match entry.payload {
                EntryPayload::Normal(proposal) => {
                    let batch = proposal.batch.clone();
                    let appended = log.append_entry(batch, term, entry.log_id.index).map_err(|e| self.log_failed(e))?;
                    index.slots.push_back(Slot { offset: appended.base_offset, term, control: None });
                    durable.push((proposal, appended.base_offset));
                }
                _ => {
                    let record = controls.next().expect("one record per control entry");
                    let offset = log.log_end_offset();
                    index.slots.push_back(Slot { offset, term, control: Some(Box::new(record.control)) });
                }
            }
        }
        log.flush().map_err(|e| e.to_string())?;
        for (proposal, base_offset) in durable {
            proposal.signal_durable(base_offset);
        }
        Ok(())
    }

    /// Notes a partition log's failure that leaves the log usable, so that
    /// the replica may be reopened in place (see `Shared`).
    fn log_failed(&self, error: LogError) -> String {
        match error {
            LogError::NoSpace { .. } => self.shared.out_of_space.store(true, Ordering::Release),
            LogError::Read { .. } => self.shared.read_failed.store(true, Ordering::Release),
            _ => {}
        }
        error.to_string()
    }

    fn truncate_blocking(&self, from: u64) -> Result<(), String> {
        let mut index = self.index();
        if from >= index.next_index() {
            return Ok(());
        }
        if from < index.first {
            return Err(format!("cannot truncate at Raft entry {from}: it was purged"));
        }
        let keep = (from - index.first) as usize;
        let dropped_control = index.slots.range(keep..).any(|slot| slot.control.is_some());
        let first_batch = index.slots.range(keep..).find(|slot| slot.control.is_none()).map(|slot| slot.offset);
        if let Some(offset) = first_batch {
            let mut guard = lock_log(&self.shared.log);
            let log = guard.as_mut().ok_or("partition log is closed")?;
            log.truncate(offset).map_err(|e| self.log_failed(e))?;
        }
        index.slots.truncate(keep);
        if dropped_control {
            let records = index.control_records();
            index.control_file.rewrite(&records)?;
        }
        Ok(())
    }

    fn purge_blocking(&self, upto: LogId) -> Result<(), String> {
        self.save_hard(|hard| hard.purged = Some(upto))?;
        let mut index = self.index();
        let mut dropped_control = false;
        while index.first <= upto.index {
            let Some(slot) = index.slots.pop_front() else { break };
            dropped_control |= slot.control.is_some();
            index.first += 1;
        }
        index.first = index.first.max(upto.index + 1);
        if dropped_control {
            let records = index.control_records();
            index.control_file.rewrite(&records)?;
        }
        let mut guard = lock_log(&self.shared.log);
        let log = guard.as_mut().ok_or("partition log is closed")?;
        let keep_from = index.slots.front().map_or(log.log_end_offset(), |slot| slot.offset);
        log.delete_before(keep_from).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The entries of `[start, end)` the log holds: openraft's reader
    /// contract allows entries not found, so a range reaching below the
    /// purge point or past the end yields the part that exists. openraft
    /// never reads purged entries it needs (a leader postpones purging
    /// while a replication still uses them); callers that need the whole
    /// range (`get_log_entries`) check it. With a `budget`, the entries stop
    /// before the first batch that would take their bytes past it (the
    /// first entry always comes).
    fn read_blocking(&self, start: u64, end: u64, budget: Option<usize>) -> Result<Vec<Entry>, String> {
        let (start, slots): (u64, Vec<Slot>) = {
            let index = self.index();
            let start = start.max(index.first);
            let end = end.min(index.next_index());
            if start >= end {
                return Ok(Vec::new());
            }
            let from = (start - index.first) as usize;
            (start, index.slots.range(from..from + (end - start) as usize).cloned().collect())
        };
        let guard = lock_log(&self.shared.log);
        let log = guard.as_ref().ok_or("partition log is closed")?;
        let mut out = Vec::with_capacity(slots.len());
        let mut read_ahead: VecDeque<Batch> = VecDeque::new();
        let mut bytes = 0;
        for (raft_index, slot) in (start..).zip(slots) {
            let id = log_id(slot.term, raft_index);
            if let Some(control) = slot.control {
                out.push(Entry { log_id: id, payload: control.into_payload() });
                continue;
            }
            while read_ahead.front().is_some_and(|b| b.base_offset() < slot.offset) {
                read_ahead.pop_front();
            }
            if read_ahead.front().is_none_or(|b| b.base_offset() != slot.offset) {
                read_ahead = log.read(slot.offset, READ_CHUNK_BYTES, u64::MAX).map_err(|e| e.to_string())?.into();
            }
            let batch = read_ahead.pop_front().ok_or_else(|| format!("no batch at offset {}", slot.offset))?;
            bytes += batch.len();
            if budget.is_some_and(|budget| bytes > budget) && !out.is_empty() {
                break;
            }
            if batch.base_offset() != slot.offset || batch.raft_index() != raft_index {
                return Err(format!(
                    "Raft entry {raft_index} should be the batch at offset {}, found entry {} at {}",
                    slot.offset,
                    batch.raft_index(),
                    batch.base_offset()
                ));
            }
            out.push(Entry { log_id: id, payload: EntryPayload::Normal(Proposal::new(batch)) });
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
        self.read_entries(start, end, None).await
    }

    /// What replication sends next: at most [`REPLICATION_BYTES_MAX`] of
    /// batches (at least one entry).
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(start, end, Some(REPLICATION_BYTES_MAX)).await
    }
}

impl LogStore {
    /// `read_blocking` on the blocking pool; a failed read is remembered
    /// (the replica is reopened).
    async fn read_entries(&self, start: u64, end: u64, budget: Option<usize>) -> Result<Vec<Entry>, StorageError> {
        let store = self.clone();
        let read = blocking(move || store.read_blocking(start, end, budget)).await;
        if read.is_err() {
            self.shared.read_failed.store(true, Ordering::Release);
        }
        read.map_err(read_err)
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
