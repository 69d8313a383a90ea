//! Crash recovery of the Raft log (`LogStore` over the partition log and
//! its control file) on the simulated disk.
//!
//! A random run appends entries (record batches mixed with blank and
//! membership entries, terms that never decrease), commits, truncates
//! above the commit point (a new leader overriding the tail, Raft §5.3),
//! purges below it, installs a snapshot the log does not reach (`reset`),
//! saves votes, closes cleanly and crashes: the store is dropped unclosed
//! and `SimDisk::crash` keeps what was fsynced plus a seeded prefix of the
//! rest, perhaps torn. The model is the log as openraft would see it.
//!
//! After every reopen the log must be a prefix of the model that holds
//! every entry whose append returned (an append returns after the fsync,
//! so here that is all of them): same log ids, the same batch bytes for
//! record batches (placed at dense, increasing offsets), the same control
//! payloads. The purge point never moves back and the vote survives.
//!
//! A second test fails disk writes and fsyncs during appends: the failure
//! must reach the caller, and the log must reopen holding a prefix of what
//! was attempted that keeps everything appended before.
//!
//! Appends go through `RaftLogStorageExt::blocking_append`: openraft's
//! `LogFlushed` callback has no public constructor in 0.9, and this is
//! openraft's own public wrapper that makes one and waits on it.
//!
//! Another fails each read a truncation makes in turn: the log must stand
//! as it was, and the store must say the replica may be reopened in place.
//!
//! A third interrupts a snapshot install (which starts the log over when
//! the log does not hold the snapshot's last entry) with a disk fault: after
//! the crash, the state machine and the log must agree again.
//!
//! `WEIR_RAFT_LOG_CASES` sets the number of random runs (default 64).

use std::collections::BTreeSet;
use std::future::Future;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{EntryPayload, RaftLogReader};
use proptest::prelude::*;
use weir::log::{Batch, BatchBuilder, FlushPolicy, LogConfig, PartitionLog, Record};
use weir::raft::log_store::{lock_log, log_id};
use weir::raft::state_machine::SnapshotState;
use weir::raft::types::{Control, Entry, LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use weir::raft::{LogStore, Proposal, StateMachine};
use weir::sys::clock::{Clock, ManualClock};
use weir::sys::disk::{Disk, SimDisk, SimDiskFaults};

const DIR: &str = "/data/partition";
const CASES_DEFAULT: u32 = 64;
const NOW_MS: i64 = 1_700_000_000_000;
/// Appends the fault test attempts, each on a fresh disk.
const FAULT_RUNS: u64 = 300;
/// Snapshot installs the install test interrupts, each on a fresh disk.
const INSTALL_RUNS: u64 = 300;

fn cases() -> u32 {
    std::env::var("WEIR_RAFT_LOG_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES_DEFAULT)
}

/// Runs `f` to completion on a runtime of its own (on tokio the store does
/// its disk I/O on the blocking pool; inside madsim, in place).
fn block_on<F: Future>(f: F) -> F::Output {
    #[cfg(not(madsim))]
    {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime").block_on(f)
    }
    #[cfg(madsim)]
    {
        madsim::runtime::Runtime::new().block_on(f)
    }
}

#[derive(Debug, Clone)]
enum EntrySpec {
    Batch { records: u8, value_len: u8 },
    Blank,
    Membership { voters: BTreeSet<u64> },
}

#[derive(Debug, Clone)]
enum Op {
    /// Entries of the current term, after raising it by `term_bump`.
    Append {
        term_bump: u64,
        entries: Vec<EntrySpec>,
    },
    /// Moves the commit point to an entry at or after it.
    Commit {
        at: usize,
    },
    /// Truncates at an entry above the commit point.
    Truncate {
        at: usize,
    },
    /// Purges up to an entry at or below the commit point.
    Purge {
        at: usize,
    },
    /// Installs a snapshot `ahead` entries past the log's end.
    Reset {
        ahead: u64,
        term_bump: u64,
        offset_gap: u64,
    },
    SaveVote {
        term_bump: u64,
        node: u64,
        /// A leader's vote (committed by a quorum).
        committed: bool,
    },
    Crash {
        seed: u64,
    },
    CloseReopen,
}

fn entry_spec() -> impl Strategy<Value = EntrySpec> {
    prop_oneof![
        6 => (1u8..5, 0u8..120).prop_map(|(records, value_len)| EntrySpec::Batch { records, value_len }),
        2 => Just(EntrySpec::Blank),
        1 => prop::collection::btree_set(1u64..6, 1..4).prop_map(|voters| EntrySpec::Membership { voters }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (prop_oneof![4 => Just(0u64), 1 => Just(1u64)], prop::collection::vec(entry_spec(), 1..6))
            .prop_map(|(term_bump, entries)| Op::Append { term_bump, entries }),
        3 => any::<usize>().prop_map(|at| Op::Commit { at }),
        2 => any::<usize>().prop_map(|at| Op::Truncate { at }),
        2 => any::<usize>().prop_map(|at| Op::Purge { at }),
        1 => (0u64..3, 0u64..2, 0u64..40).prop_map(|(ahead, term_bump, offset_gap)| Op::Reset {
            ahead,
            term_bump,
            offset_gap
        }),
        1 => (0u64..2, 1u64..4, any::<bool>())
            .prop_map(|(term_bump, node, committed)| Op::SaveVote { term_bump, node, committed }),
        3 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
        1 => Just(Op::CloseReopen),
    ]
}

/// Small segments and indexes, so appends roll segments and purges delete
/// them.
fn config() -> impl Strategy<Value = LogConfig> {
    (prop::sample::select(vec![600u64, 2_000, 64 << 10]), prop::sample::select(vec![64u64, 4096])).prop_map(
        |(segment_bytes_max, index_bytes_max)| LogConfig {
            segment_bytes_max,
            index_interval_bytes: 256,
            index_bytes_max,
            segment_age_ms_max: None,
            retention_bytes: None,
            retention_ms: None,
            flush: FlushPolicy::Explicit,
        },
    )
}

fn make_batch(records: u8, value_len: u8, salt: u64) -> Batch {
    let mut builder = BatchBuilder::new();
    for i in 0..records {
        let value: Vec<u8> = (0..value_len).map(|b| b.wrapping_add(i).wrapping_add(salt as u8)).collect();
        let record = Record {
            offset: 0,
            timestamp_ms: NOW_MS + i64::from(i),
            key: (i % 2 == 0).then(|| Bytes::from(salt.to_le_bytes().to_vec())),
            value: Some(Bytes::from(value)),
            headers: Vec::new(),
        };
        builder.push(&record);
    }
    builder.build().expect("a valid batch")
}

/// What an entry must read back as.
#[derive(Debug, Clone)]
enum Expected {
    /// The batch as the log stores it: placed at its offset, with its Raft
    /// index and term in the header.
    Batch {
        bytes: Bytes,
        base_offset: u64,
        next_offset: u64,
    },
    Control(Control),
}

#[derive(Debug, Clone)]
struct ModelEntry {
    log_id: LogId,
    expected: Expected,
}

/// The log as openraft sees it.
#[derive(Debug, Default)]
struct Model {
    purged: Option<LogId>,
    /// From the entry after `purged`.
    entries: Vec<ModelEntry>,
    /// The offset the next batch gets.
    next_offset: u64,
    committed: Option<u64>,
    term: u64,
    vote: Option<Vote>,
    salt: u64,
}

impl Model {
    /// A reopened log's vote binds its term but is no longer a leader's:
    /// a restarted leader must win a new term before it leads again.
    fn reopened(&mut self) {
        if let Some(vote) = self.vote.as_mut() {
            vote.committed = false;
        }
    }

    fn first_index(&self) -> u64 {
        self.purged.map_or(0, |p| p.index + 1)
    }

    fn next_index(&self) -> u64 {
        self.first_index() + self.entries.len() as u64
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries.last().map(|e| e.log_id).or(self.purged)
    }

    /// Builds the entries `specs` describes, at the end of the log; returns
    /// them and what they must read back as.
    fn make_entries(&mut self, specs: &[EntrySpec]) -> (Vec<Entry>, Vec<ModelEntry>) {
        let mut offset = self.next_offset;
        let mut entries = Vec::new();
        let mut expected = Vec::new();
        for (index, spec) in (self.next_index()..).zip(specs) {
            let id = log_id(self.term, index);
            let (payload, want) = match spec {
                EntrySpec::Batch { records, value_len } => {
                    self.salt += 1;
                    let batch = make_batch(*records, *value_len, self.salt);
                    let placed = batch.clone().placed(offset, self.term, index);
                    let want = Expected::Batch {
                        bytes: placed.as_bytes().clone(),
                        base_offset: offset,
                        next_offset: placed.next_offset(),
                    };
                    offset = placed.next_offset();
                    (EntryPayload::Normal(Proposal::new(batch)), want)
                }
                EntrySpec::Blank => (EntryPayload::Blank, Expected::Control(Control::Blank)),
                EntrySpec::Membership { voters } => {
                    let membership = Membership::new(vec![voters.clone()], ());
                    let want = Expected::Control(Control::Membership(membership.clone()));
                    (EntryPayload::Membership(membership), want)
                }
            };
            entries.push(Entry { log_id: id, payload });
            expected.push(ModelEntry { log_id: id, expected: want });
        }
        (entries, expected)
    }

    fn push(&mut self, appended: Vec<ModelEntry>) {
        for entry in appended {
            if let Expected::Batch { next_offset, .. } = entry.expected {
                self.next_offset = next_offset;
            }
            self.entries.push(entry);
        }
    }

    /// Keeps the first `len` entries; the next batch goes where the first
    /// dropped one was.
    fn cut(&mut self, len: usize) {
        let dropped_batch = self.entries[len..].iter().find_map(|e| match e.expected {
            Expected::Batch { base_offset, .. } => Some(base_offset),
            Expected::Control(_) => None,
        });
        if let Some(offset) = dropped_batch {
            self.next_offset = offset;
        }
        self.entries.truncate(len);
    }

    fn purge(&mut self, upto: LogId) {
        let drop = (upto.index + 1 - self.first_index()) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.purged = Some(upto);
    }
}

fn fault_test_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 900,
        index_interval_bytes: 256,
        index_bytes_max: 64,
        segment_age_ms_max: None,
        retention_bytes: None,
        retention_ms: None,
        flush: FlushPolicy::Explicit,
    }
}

fn open(disk: &SimDisk, config: &LogConfig) -> LogStore {
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let clock: Arc<dyn Clock> = ManualClock::new(NOW_MS);
    let dir = Path::new(DIR);
    let log = PartitionLog::open(shared.clone(), dir, config.clone(), clock).expect("the partition log reopens");
    LogStore::open(shared, dir, log).expect("the Raft log reopens")
}

/// Checks `store` against the model: its entries must be the model's first
/// `k` for some `k >= durable`; the model is cut to them.
async fn check(store: &mut LogStore, model: &mut Model, durable: usize) {
    let state = store.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, model.purged, "purge point");
    let first = model.first_index();
    let last = state.last_log_id.map_or(first, |id| id.index + 1);
    let got = store.try_get_log_entries(first..last).await.expect("entries read back");
    assert!(got.len() >= durable, "lost appended entries: {} left, {durable} appended", got.len());
    assert!(got.len() <= model.entries.len(), "the log grew: {} entries, model {}", got.len(), model.entries.len());
    let mut offset_next = None;
    for (entry, want) in got.iter().zip(&model.entries) {
        assert_eq!(entry.log_id, want.log_id, "log id");
        match (&entry.payload, &want.expected) {
            (EntryPayload::Normal(proposal), Expected::Batch { bytes, base_offset, .. }) => {
                let batch = &proposal.batch;
                if let Some(next) = offset_next {
                    assert_eq!(batch.base_offset(), next, "batches not dense at entry {}", want.log_id.index);
                }
                offset_next = Some(batch.next_offset());
                assert_eq!(batch.base_offset(), *base_offset, "entry {} offset", want.log_id.index);
                assert_eq!(batch.as_bytes(), bytes, "entry {} batch bytes", want.log_id.index);
            }
            (payload, Expected::Control(control)) => {
                assert_eq!(Control::of(payload).as_ref(), Some(control), "entry {} payload", want.log_id.index);
            }
            (payload, Expected::Batch { base_offset, .. }) => {
                panic!("entry {}: read {payload:?}, expected the batch at offset {base_offset}", entry.log_id.index)
            }
        }
    }
    model.cut(got.len());
    assert_eq!(state.last_log_id, model.last_log_id(), "last log id");
    assert_eq!(store.read_vote().await.expect("vote"), model.vote, "vote");
    let shared = store.log();
    let guard = lock_log(&shared);
    let log = guard.as_ref().expect("log open");
    assert_eq!(log.log_end_offset(), model.next_offset, "log end offset");
    log.validate();
}

async fn run(config: LogConfig, ops: Vec<Op>) {
    let disk = SimDisk::new(11);
    let mut store = open(&disk, &config);
    let mut model = Model::default();
    let mut purged_seen: Option<LogId> = None;

    for op in ops {
        match op {
            Op::Append { term_bump, entries } => {
                model.term += term_bump;
                let (entries, expected) = model.make_entries(&entries);
                store.blocking_append(entries).await.expect("append");
                model.push(expected);
            }
            Op::Commit { at } => {
                let low = model.committed.map_or(model.first_index(), |c| c.max(model.first_index()));
                let span = model.next_index().saturating_sub(low);
                if span > 0 {
                    model.committed = Some(low + at as u64 % span);
                }
            }
            Op::Truncate { at } => {
                let low = model.committed.map_or(model.first_index(), |c| c + 1).max(model.first_index());
                let span = model.next_index().saturating_sub(low);
                if span > 0 {
                    let index = low + at as u64 % span;
                    let position = (index - model.first_index()) as usize;
                    store.truncate(model.entries[position].log_id).await.expect("truncate");
                    model.cut(position);
                }
            }
            Op::Purge { at } => {
                let Some(committed) = model.committed else { continue };
                let low = model.first_index();
                let span = (committed + 1).saturating_sub(low);
                if span > 0 {
                    let index = low + at as u64 % span;
                    let upto = model.entries[(index - low) as usize].log_id;
                    store.purge(upto).await.expect("purge");
                    model.purge(upto);
                }
            }
            Op::Reset { ahead, term_bump, offset_gap } => {
                model.term += term_bump;
                let snapshot = log_id(model.term, model.next_index() + ahead);
                let next_offset = model.next_offset + offset_gap;
                store.reset(snapshot, next_offset).expect("reset");
                model.entries.clear();
                model.purged = Some(snapshot);
                model.committed = Some(snapshot.index);
                model.next_offset = next_offset;
            }
            Op::SaveVote { term_bump, node, committed } => {
                let term = model.term + term_bump;
                let vote = if committed { Vote::new_committed(term, node) } else { Vote::new(term, node) };
                store.save_vote(&vote).await.expect("save vote");
                model.vote = Some(vote);
            }
            Op::Crash { seed } => {
                drop(store);
                disk.crash(seed);
                store = open(&disk, &config);
                model.reopened();
            }
            Op::CloseReopen => {
                let log = lock_log(&store.log()).take().expect("log open");
                log.close().expect("clean close");
                drop(store);
                store = open(&disk, &config);
                model.reopened();
            }
        }
        let state = store.get_log_state().await.expect("log state");
        assert!(state.last_purged_log_id >= purged_seen, "purge point moved back: {purged_seen:?} -> {state:?}");
        purged_seen = state.last_purged_log_id;
        let durable = model.entries.len();
        check(&mut store, &mut model, durable).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn raft_log_matches_model_across_crashes(config in config(), ops in prop::collection::vec(op(), 1..60)) {
        block_on(run(config, ops));
    }
}

/// The fault the fault test injects into one append.
fn fault_for(run: u64) -> SimDiskFaults {
    match run % 4 {
        0 => SimDiskFaults { fail_writes: 1, ..SimDiskFaults::default() },
        1 => SimDiskFaults { fail_syncs: 1, ..SimDiskFaults::default() },
        2 => SimDiskFaults { write_error_ppm: 150_000, ..SimDiskFaults::default() },
        _ => SimDiskFaults { sync_error_ppm: 300_000, ..SimDiskFaults::default() },
    }
}

/// Mixed entries, enough bytes to roll a small segment.
fn mixed_specs(run: u64) -> Vec<EntrySpec> {
    let mut specs = Vec::new();
    for i in 0..(2 + run % 5) {
        specs.push(match (run + i) % 4 {
            0 => EntrySpec::Blank,
            1 => EntrySpec::Membership { voters: BTreeSet::from([1, 2, 1 + i % 3]) },
            _ => EntrySpec::Batch { records: 1 + (i % 3) as u8, value_len: 100 },
        });
    }
    specs
}

async fn append_under_fault(run: u64) -> bool {
    let config = fault_test_config();
    let disk = SimDisk::new(run);
    let mut store = open(&disk, &config);
    let mut model = Model { term: 1, ..Model::default() };
    for round in 0..(run % 3) {
        let (entries, expected) = model.make_entries(&mixed_specs(run + round));
        store.blocking_append(entries).await.expect("append before the fault");
        model.push(expected);
    }
    let durable = model.entries.len();

    // One append under a fault: it must fail if the fault fired.
    let fault = fault_for(run);
    let (entries, expected) = model.make_entries(&mixed_specs(run * 7 + 1));
    disk.set_faults(fault.clone());
    let result = store.blocking_append(entries).await;
    let left = disk.faults();
    disk.set_faults(SimDiskFaults::default());
    let fired = left.fail_writes < fault.fail_writes || left.fail_syncs < fault.fail_syncs;
    assert!(!fired || result.is_err(), "run {run}: a disk fault fired but the append succeeded");
    model.push(expected);
    let durable = if result.is_ok() { model.entries.len() } else { durable };

    // The process dies; the log must reopen holding a prefix of what was
    // attempted that keeps everything appended.
    drop(store);
    disk.crash(run);
    let mut store = open(&disk, &config);
    check(&mut store, &mut model, durable).await;

    // And go on taking appends.
    let (entries, expected) = model.make_entries(&mixed_specs(run + 3));
    store.blocking_append(entries).await.expect("append after recovery");
    model.push(expected);
    let durable = model.entries.len();
    check(&mut store, &mut model, durable).await;
    drop(store);
    disk.crash(run + 1);
    let mut store = open(&disk, &config);
    check(&mut store, &mut model, durable).await;
    result.is_err()
}

#[test]
fn append_faults_surface_and_the_log_reopens_consistent() {
    let mut failed = 0;
    for run in 0..FAULT_RUNS {
        if block_on(append_under_fault(run)) {
            failed += 1;
        }
    }
    // Most runs must actually hit a fault, or this tests nothing.
    assert!(failed > FAULT_RUNS / 2, "only {failed} of {FAULT_RUNS} appends failed");
}

/// A truncation whose read fails must change nothing and say so, so that
/// the replica may be reopened in place rather than stay stopped: the store
/// flags the read, the partition log is not poisoned, the entries read back
/// whole, a clean close and reopen keep them, and the truncation then
/// succeeds. Returns whether the read failed (`skip` reads succeed first).
async fn truncate_with_a_failing_read(cut: usize, skip: u32) -> bool {
    let config = fault_test_config();
    let disk = SimDisk::new(skip.into());
    let mut store = open(&disk, &config);
    let mut model = Model { term: 1, ..Model::default() };
    for round in 0..4 {
        let (entries, expected) = model.make_entries(&mixed_specs(round * 2 + 2));
        store.blocking_append(entries).await.expect("append");
        model.push(expected);
    }
    let cut = cut % model.entries.len();
    disk.fail_reads_after(skip, 1);
    let result = store.truncate(model.entries[cut].log_id).await;
    disk.set_faults(SimDiskFaults::default());
    let durable = model.entries.len();
    if result.is_ok() {
        model.cut(cut);
        check(&mut store, &mut model, cut).await;
        return false;
    }
    assert!(store.read_failed(), "cut {cut}, read {skip}: the store did not note the failed read");
    assert!(!lock_log(&store.log()).as_ref().expect("open").is_failed(), "cut {cut}, read {skip}: log poisoned");
    check(&mut store, &mut model, durable).await;
    let log = lock_log(&store.log()).take().expect("log open");
    log.close().expect("clean close");
    drop(store);
    let mut store = open(&disk, &config);
    check(&mut store, &mut model, durable).await;
    store.truncate(model.entries[cut].log_id).await.expect("truncate after reopening");
    model.cut(cut);
    check(&mut store, &mut model, cut).await;
    true
}

/// Each read of each truncation in turn fails.
#[test]
fn a_truncation_whose_read_fails_changes_nothing_and_is_reopened_in_place() {
    let mut failures = 0;
    for cut in 1..12 {
        for skip in 0..40 {
            if !block_on(truncate_with_a_failing_read(cut, skip)) {
                break;
            }
            failures += 1;
        }
    }
    assert!(failures >= 10, "only {failures} truncations met a failed read");
}

/// Installs, under a disk fault, a snapshot whose last entry the log does
/// not hold (another term: at an index inside the log or past its end), so
/// the install starts the log over; then crashes and reopens the group's
/// storage as `Replica::open` does. Returns whether the install failed.
async fn install_under_fault(run: u64) -> bool {
    let config = fault_test_config();
    let disk = SimDisk::new(run);
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let mut store = open(&disk, &config);
    let mut sm = StateMachine::open(shared.clone(), Path::new(DIR), store.clone()).expect("state machine opens");
    let mut model = Model { term: 1, ..Model::default() };
    for round in 0..2 {
        let (entries, expected) = model.make_entries(&mixed_specs(run + round));
        store.blocking_append(entries).await.expect("append");
        model.push(expected);
    }

    let snapshot = log_id(2, run % (model.next_index() + 2));
    let next_offset = model.next_offset + run % 5;
    let meta = SnapshotMeta {
        last_log_id: Some(snapshot),
        last_membership: StoredMembership::default(),
        snapshot_id: format!("run-{run}"),
    };
    let data =
        serde_json::to_vec(&SnapshotState { next_offset, ..SnapshotState::default() }).expect("snapshot encodes");
    let fault = fault_for(run + 2);
    disk.set_faults(fault);
    let result = sm.install_snapshot(&meta, Box::new(Cursor::new(data))).await;
    disk.set_faults(SimDiskFaults::default());

    drop((store, sm));
    disk.crash(run);
    let mut store = open(&disk, &config);
    let mut sm = StateMachine::open(shared, Path::new(DIR), store.clone()).expect("state machine reopens");
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert!(result.is_err() || applied == Some(snapshot), "run {run}: an installed snapshot was lost");
    if applied == Some(snapshot) {
        // The install counts: the log starts over right after the snapshot.
        model.entries.clear();
        model.purged = Some(snapshot);
        model.next_offset = next_offset;
        check(&mut store, &mut model, 0).await;
        assert_eq!(*sm.high_watermark().borrow(), next_offset, "run {run}: high watermark");
    } else {
        // It never counted: the log is what it was, or a prefix of it.
        assert_eq!(applied, None, "run {run}: applied state");
        check(&mut store, &mut model, 0).await;
    }
    result.is_err()
}

#[test]
fn interrupted_snapshot_install_recovers() {
    let mut failed = 0;
    for run in 0..INSTALL_RUNS {
        if block_on(install_under_fault(run)) {
            failed += 1;
        }
    }
    assert!(failed > INSTALL_RUNS / 4, "only {failed} of {INSTALL_RUNS} installs failed");
}

/// A batch of one record whose value is `len` bytes.
fn batch_of(len: usize) -> Batch {
    let mut builder = BatchBuilder::new();
    builder.push(&Record { timestamp_ms: NOW_MS, value: Some(Bytes::from(vec![7u8; len])), ..Record::default() });
    builder.build().expect("batch")
}

#[test]
fn replication_reads_stop_at_the_byte_budget() {
    block_on(async {
        let disk = SimDisk::new(5);
        let mut store = open(&disk, &LogConfig { flush: FlushPolicy::Explicit, ..LogConfig::default() });
        // Six batches of 300 KiB, one of 1.5 MiB (over the budget alone),
        // three small ones.
        let sizes = [300 << 10, 300 << 10, 300 << 10, 300 << 10, 300 << 10, 300 << 10, 1536 << 10, 100, 100, 100];
        let entries: Vec<Entry> = (0..)
            .zip(sizes)
            .map(|(index, len)| Entry {
                log_id: log_id(1, index),
                payload: EntryPayload::Normal(Proposal::new(batch_of(len))),
            })
            .collect();
        store.blocking_append(entries).await.expect("append");
        let read = |start: u64| {
            let mut store = store.clone();
            async move {
                let entries = store.limited_get_log_entries(start, 10).await.expect("read");
                entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>()
            }
        };
        // Three 300 KiB batches fit in 1 MiB, a fourth would not.
        assert_eq!(read(0).await, [0, 1, 2]);
        assert_eq!(read(3).await, [3, 4, 5]);
        assert_eq!(read(6).await, [6], "an entry bigger than the budget comes alone");
        assert_eq!(read(7).await, [7, 8, 9]);
        let all = store.try_get_log_entries(0..10).await.expect("read");
        assert_eq!(all.len(), 10, "only replication's reads are bounded");
    });
}
