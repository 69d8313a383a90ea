//! Damage at rest: flipped bytes, truncated files, lost or damaged indexes,
//! a damaged checkpoint. Damage is detected and reported (by recovery or by
//! the read that meets it); no damaged byte is ever served; what can be kept
//! is kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use weir::log::{BatchBuilder, FlushPolicy, LogConfig, LogError, PartitionLog, Record};
use weir::sys::clock::{Clock, ManualClock};
use weir::sys::disk::{Disk, SimDisk};

const DIR: &str = "/data/orders-3";
const BATCHES: u64 = 40;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1_500,
        index_interval_bytes: 200,
        index_bytes_max: 256,
        flush: FlushPolicy::EveryBatch,
        ..LogConfig::default()
    }
}

fn open(disk: &SimDisk) -> Result<PartitionLog, LogError> {
    let clock: Arc<dyn Clock> = ManualClock::new(1_000_000);
    PartitionLog::open(Arc::new(disk.clone()), Path::new(DIR), config(), clock)
}

fn record(i: u64) -> Record {
    Record {
        timestamp_ms: 1_000_000 + i as i64,
        key: Some(Bytes::from(format!("key-{i}"))),
        value: Some(Bytes::from(format!("value-{i}-{}", "x".repeat((i % 50) as usize)))),
        ..Record::default()
    }
}

/// A closed log of `BATCHES` two-record batches; returns every record.
fn filled_disk() -> (SimDisk, Vec<Record>) {
    let disk = SimDisk::new(1);
    let mut log = open(&disk).unwrap();
    let mut all = Vec::new();
    for b in 0..BATCHES {
        let records = [record(2 * b), record(2 * b + 1)];
        let mut builder = BatchBuilder::new();
        records.iter().for_each(|r| {
            builder.push(r);
        });
        // Raft entry b + 1, as the Raft log storage would append it.
        let appended = log.append_entry(builder.build().unwrap(), 1, b + 1).unwrap();
        all.extend(
            records.into_iter().enumerate().map(|(i, r)| Record { offset: appended.base_offset + i as u64, ..r }),
        );
    }
    assert!(log.segment_count() > 3, "the test wants several segments");
    log.close().unwrap();
    (disk, all)
}

fn files(disk: &SimDisk, suffix: &str) -> Vec<PathBuf> {
    disk.list_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(suffix))
        .map(|n| Path::new(DIR).join(n))
        .collect()
}

/// Reads from the start until the end or the first error.
fn read_until_error(log: &PartitionLog) -> (Vec<Record>, Option<LogError>) {
    let mut records = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        match log.read(offset, 500, u64::MAX) {
            Ok(batches) if batches.is_empty() => return (records, None),
            Ok(batches) => {
                offset = batches.last().unwrap().next_offset();
                records.extend(batches.iter().flat_map(|b| b.records().map(|r| r.unwrap())));
            }
            Err(error) => return (records, Some(error)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// A flipped byte in a segment the checkpoint vouches for is not scanned
    /// at open; the read that meets it fails, naming the file and position.
    #[test]
    fn flip_in_trusted_segment_is_caught_by_reads(pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let (disk, all) = filled_disk();
        let segments = files(&disk, ".log");
        let damaged = pick.get(&segments).clone();
        let position = at.index(disk.file_len(&damaged).unwrap() as usize) as u64;
        disk.corrupt_byte(&damaged, position, mask).unwrap();

        let log = open(&disk).unwrap();
        let (read, error) = read_until_error(&log);
        prop_assert_eq!(&read[..], &all[..read.len()], "served records differ from what was written");
        match (error, log.recovery_report().cut.clone()) {
            (Some(LogError::Corrupt { file, position: at, .. }), _) => {
                prop_assert_eq!(file, damaged);
                prop_assert!(at <= position, "error at {} but damage at {}", at, position);
            }
            // The active segment's tail past its last index entry is
            // re-checked even after a clean close; damage there is cut.
            (None, Some((file, at, _))) => {
                prop_assert_eq!(file, damaged);
                prop_assert!(at <= position);
                prop_assert!(read.len() < all.len());
            }
            other => prop_assert!(false, "damage not reported: {:?}", other),
        }
    }

    /// Without a checkpoint recovery scans everything: it cuts the log at the
    /// damaged batch, reports where, and keeps every batch before it.
    #[test]
    fn flip_without_checkpoint_is_cut_by_recovery(pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let (disk, all) = filled_disk();
        disk.remove_file(&Path::new(DIR).join("checkpoint")).unwrap();
        let segments = files(&disk, ".log");
        let damaged = pick.get(&segments).clone();
        let position = at.index(disk.file_len(&damaged).unwrap() as usize) as u64;
        disk.corrupt_byte(&damaged, position, mask).unwrap();

        let log = open(&disk).unwrap();
        let report = log.recovery_report().clone();
        let (file, cut_at, _) = report.cut.clone().expect("recovery reports the cut");
        prop_assert_eq!(&file, &damaged);
        prop_assert!(cut_at <= position);
        let (read, error) = read_until_error(&log);
        prop_assert!(error.is_none(), "after the cut the log reads cleanly: {:?}", error);
        prop_assert_eq!(&read[..], &all[..read.len()]);
        prop_assert!(read.len() < all.len(), "the damaged batch is gone");
        prop_assert_eq!(log.log_end_offset(), read.len() as u64);

        // Damage, even when it hit the very last batch (which alone looks
        // exactly like a torn write): the clean close marked the whole log
        // durable, so everything from the cut to the mark is reported lost.
        let damage = report.damage.clone().expect("damage below the durable mark is reported");
        prop_assert_eq!(damage.offset, log.log_end_offset());
        prop_assert_eq!(damage.reached_offset, Some(all.len() as u64));
        let last_batch = read.len() as u64 == 2 * (BATCHES - 1);
        if !last_batch {
            prop_assert_eq!(damage.raft_index_lost, Some(BATCHES), "the last entry is seen beyond the cut");
        }
    }

    /// Damage that reads meet in a segment recovery trusted: a rescan
    /// trusts nothing, cuts the log there and reports how far it reached.
    #[test]
    fn rescan_after_a_read_met_damage_cuts_and_reports(pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let (disk, all) = filled_disk();
        let mut segments = files(&disk, ".log");
        segments.pop(); // the active one, re-checked at every open
        let damaged = pick.get(&segments).clone();
        let position = at.index(disk.file_len(&damaged).unwrap() as usize) as u64;
        disk.corrupt_byte(&damaged, position, mask).unwrap();

        let log = open(&disk).unwrap();
        // Open reads a trusted segment only from its last index entry on:
        // damage there is cut at once; damage before it, by the rescan.
        let log = match log.recovery_report().damage.is_some() {
            true => log,
            false => {
                let (_, error) = read_until_error(&log);
                prop_assert!(matches!(error, Some(LogError::Corrupt { .. })), "{:?}", error);
                log.rescan().unwrap()
            }
        };
        let damage = log.recovery_report().damage.clone().expect("damage in a sealed segment");
        prop_assert_eq!(damage.offset, log.log_end_offset());
        prop_assert_eq!(damage.raft_index_lost, Some(BATCHES));
        let (read, error) = read_until_error(&log);
        prop_assert!(error.is_none(), "{:?}", error);
        prop_assert_eq!(&read[..], &all[..read.len()]);
        prop_assert!(read.len() < all.len());
    }

    /// A scrub of an open log, chunk by chunk, walks every durable batch:
    /// it reaches the end of an intact log, and stops at a flipped byte
    /// anywhere in a trusted segment, naming it and marking the log, so
    /// that damage no reader met yet is still found.
    #[test]
    fn scrubbing_finds_damage_no_read_met(pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), mask in 1u8..=255, chunk in 1usize..4096) {
        let (disk, _) = filled_disk();
        let log = open(&disk).unwrap();
        let mut from = 0;
        while let Some(next) = log.scrub(from, chunk).unwrap() {
            prop_assert!(next > from && next < log.log_end_offset(), "a scrub chunk moves on: {} to {}", from, next);
            from = next;
        }
        prop_assert!(!log.damage_seen());
        drop(log);

        let mut segments = files(&disk, ".log");
        segments.pop();
        let damaged = pick.get(&segments).clone();
        let position = at.index(disk.file_len(&damaged).unwrap() as usize) as u64;
        disk.corrupt_byte(&damaged, position, mask).unwrap();
        let log = open(&disk).unwrap();
        if let Some((file, found, _)) = log.recovery_report().cut.clone() {
            // In a trusted segment's tail past its last index entry, which
            // open reads: cut there already.
            prop_assert_eq!(file, damaged);
            prop_assert!(found <= position);
            prop_assert!(log.recovery_report().damage.is_some());
            return Ok(());
        }
        let mut from = 0;
        let error = loop {
            match log.scrub(from, chunk) {
                Ok(Some(next)) => from = next,
                Ok(None) => break None,
                Err(error) => break Some(error),
            }
        };
        match error {
            Some(LogError::Corrupt { file, position: found, .. }) => {
                prop_assert_eq!(file, damaged);
                prop_assert!(found <= position);
            }
            other => prop_assert!(false, "the scrub missed the damage: {:?}", other),
        }
        prop_assert!(log.damage_seen(), "the log knows it must be reopened");
    }
}

#[test]
fn truncated_sealed_segment_is_damage_not_a_torn_tail() {
    let (disk, all) = filled_disk();
    let segments = files(&disk, ".log");
    let victim = &segments[1];
    let len = disk.file_len(victim).unwrap();
    let file = disk.open(victim, false).unwrap();
    file.set_len(len - 30).unwrap();
    file.sync().unwrap();
    drop(file);

    // Open reads a trusted segment from its last index entry to its end,
    // and finds that the end is gone.
    let log = open(&disk).unwrap();
    let damage = log.recovery_report().damage.clone().expect("a sealed segment lost its end");
    assert_eq!(damage.offset, log.log_end_offset());
    assert_eq!(damage.raft_index_lost, Some(BATCHES), "the later segments are read before they go");
    assert_eq!(damage.reached_offset, Some(all.len() as u64), "the durable mark says how far the log reached");
    let (read, error) = read_until_error(&log);
    assert!(error.is_none());
    assert_eq!(read[..], all[..read.len()]);
    assert_eq!(log.segment_count(), 2, "the segments after the damage are gone");
}

/// A sealed segment cut exactly at a batch boundary reads cleanly to its
/// new end; only its length says that offsets are missing before the next
/// segment. Open must see it: trusting the file's length, reads skipped
/// the lost offsets to the next segment (simulation seed 1115).
#[test]
fn a_sealed_segment_cut_at_a_batch_boundary_is_damage_found_at_open() {
    let (disk, all) = filled_disk();
    let segments = files(&disk, ".log");
    let victim = &segments[1];
    // The boundary before the segment's last batch.
    let log = open(&disk).unwrap();
    let base: u64 = victim.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let next: u64 = segments[2].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let last_batch_bytes = (base..next)
        .step_by(2)
        .last()
        .map(|offset| log.read(offset, 1, u64::MAX).unwrap()[0].as_bytes().len() as u64)
        .unwrap();
    drop(log);
    let len = disk.file_len(victim).unwrap();
    let file = disk.open(victim, false).unwrap();
    file.set_len(len - last_batch_bytes).unwrap();
    file.sync().unwrap();
    drop(file);

    let log = open(&disk).unwrap();
    let damage = log.recovery_report().damage.clone().expect("the segment ends short of the next one");
    assert_eq!(damage.offset, next - 2, "the log ends where the cut left it");
    assert_eq!(log.log_end_offset(), next - 2);
    assert_eq!(damage.reached_offset, Some(all.len() as u64), "the durable mark says how far the log reached");
    let (read, error) = read_until_error(&log);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(read[..], all[..(next - 2) as usize], "nothing past the hole is served");
}

/// A log on `disk` that flushes every batch if `flush`, else only when told.
fn open_flushing(disk: &SimDisk, flush: bool) -> PartitionLog {
    let clock: Arc<dyn Clock> = ManualClock::new(1_000_000);
    let flush = if flush { FlushPolicy::EveryBatch } else { FlushPolicy::Explicit };
    PartitionLog::open(Arc::new(disk.clone()), Path::new(DIR), LogConfig { flush, ..config() }, clock).unwrap()
}

/// Appends two more records to a reopened log: flushed (which raises the
/// durable-end mark over them) only if `flush`. Returns them.
fn append_after_reopen(disk: &SimDisk, flush: bool) -> Vec<Record> {
    let mut log = open_flushing(disk, flush);
    let records = vec![record(1_000), record(1_001)];
    let mut builder = BatchBuilder::new();
    records.iter().for_each(|r| {
        builder.push(r);
    });
    let appended = log.append_entry(builder.build().unwrap(), 2, BATCHES + 1).unwrap();
    if flush {
        assert_eq!(log.flushed_offset(), appended.next_offset);
        assert_eq!(log.durable_mark(), appended.next_offset, "the flush raised the mark");
    } else {
        assert!(log.durable_mark() < appended.next_offset, "nothing flushed, nothing marked");
    }
    // Never closed: the checkpoint no longer says clean.
    drop(log);
    records.into_iter().enumerate().map(|(i, r)| Record { offset: appended.base_offset + i as u64, ..r }).collect()
}

/// Cuts `bytes` from the end of the active segment, durably, then crashes.
fn cut_active_segment(disk: &SimDisk, bytes: u64) {
    let active = files(disk, ".log").pop().unwrap();
    let len = disk.file_len(&active).unwrap();
    let file = disk.open(&active, false).unwrap();
    file.set_len(len - bytes).unwrap();
    file.sync().unwrap();
    drop(file);
    disk.crash(1);
}

/// A bad last batch past the durable-end mark may be a torn write that
/// was never acknowledged: cut, and not called a loss.
#[test]
fn truncated_active_segment_past_the_mark_is_a_torn_tail() {
    let (disk, all) = filled_disk();
    append_after_reopen(&disk, false);
    cut_active_segment(&disk, 5);

    let log = open(&disk).unwrap();
    let report = log.recovery_report();
    assert!(!report.clean);
    assert_eq!(report.durable_mark, all.len() as u64, "the clean close marked the old end");
    assert!(report.cut.is_some(), "a torn tail is reported: {report:?}");
    assert!(report.damage.is_none(), "a torn tail is not damage: {report:?}");
    let (read, error) = read_until_error(&log);
    assert!(error.is_none());
    assert_eq!(read, all, "only the torn batch is lost");
}

/// The case: a record acknowledged (fsynced) and marked, then 10
/// bytes cut from the end of the active segment and a crash. Recovery
/// reports the loss with its offsets instead of taking it for a torn write.
#[test]
fn truncated_active_segment_below_the_mark_is_a_loss_with_its_offsets() {
    let (disk, all) = filled_disk();
    let acknowledged = append_after_reopen(&disk, true);
    cut_active_segment(&disk, 10);

    let mut log = open(&disk).unwrap();
    let report = log.recovery_report().clone();
    let damage = report.damage.clone().expect("a loss below the durable mark is reported");
    assert_eq!(damage.offset, acknowledged[0].offset, "the log now ends at the lost batch");
    assert_eq!(damage.reached_offset, Some(acknowledged[1].offset + 1), "it reached the mark");
    assert_eq!(damage.offsets_lost(), Some(2));
    assert!(damage.reason.contains("durable-end mark"), "{}", damage.reason);
    assert_eq!(log.log_end_offset(), damage.offset);
    assert_eq!(read_until_error(&log).0, all, "everything before the loss is kept");
    // The mark now says where the log ends, so the loss is reported once.
    assert_eq!(log.durable_mark(), damage.offset);
    log.flush().unwrap();
    drop(log);
    disk.crash(2);
    assert!(open(&disk).unwrap().recovery_report().damage.is_none(), "the same loss reported twice");
}

/// Two batches appended to the active segment after `filled_disk`, flushed
/// if `flush`; then the first one's bytes read as zeroes while the second
/// is intact, as when a crash kept the later of two writes and lost the
/// earlier, or a sector was lost at rest. Returns the first batch's base
/// offset and the log reopened.
fn first_of_two_batches_lost(flush: bool) -> (Vec<Record>, u64, PartitionLog) {
    let (disk, all) = filled_disk();
    let mut log = open_flushing(&disk, flush);
    let active = files(&disk, ".log").pop().unwrap();
    let at = disk.file_len(&active).unwrap();
    let mut append = |i: u64, entry: u64| {
        let mut builder = BatchBuilder::new();
        builder.push(&record(i));
        log.append_entry(builder.build().unwrap(), 2, entry).unwrap().base_offset
    };
    let first = append(1_000, BATCHES + 1);
    let first_len = disk.file_len(&active).unwrap() - at;
    append(1_001, BATCHES + 2);
    assert_eq!(files(&disk, ".log").pop().unwrap(), active, "both batches in the active segment");
    drop(log);
    let file = disk.open(&active, false).unwrap();
    file.write_at(at, &vec![0; first_len as usize]).unwrap();
    drop(file);
    (all, first, open(&disk).unwrap())
}

/// Writes between two fsyncs reach the disk in any order: past the exact
/// durable-end mark a lost batch before an intact one is a lost write,
/// never acknowledged, and recovery cuts there without reporting damage.
#[test]
fn a_lost_batch_before_an_intact_one_past_the_mark_is_a_lost_write() {
    let (all, first, log) = first_of_two_batches_lost(false);
    let report = log.recovery_report();
    assert!(report.cut.is_some(), "the lost batch is cut: {report:?}");
    assert!(report.damage.is_none(), "a reordered crash is not damage: {report:?}");
    assert_eq!(log.log_end_offset(), first);
    assert_eq!(read_until_error(&log).0, all);
}

/// The same bytes below the mark were acknowledged: damage, with the Raft
/// index the log reached (the intact batch after it).
#[test]
fn a_lost_batch_before_an_intact_one_below_the_mark_is_damage() {
    let (all, first, log) = first_of_two_batches_lost(true);
    let damage = log.recovery_report().damage.clone().expect("a loss below the mark is reported");
    assert_eq!(damage.offset, first);
    assert_eq!(damage.raft_index_lost, Some(BATCHES + 2), "the intact batch after it tells how far the log reached");
    assert_eq!(damage.offsets_lost(), Some(2));
    assert_eq!(read_until_error(&log).0, all);
}

/// Whole batches gone at a batch boundary leave nothing to cut: only the
/// mark tells that the log is shorter than it was.
#[test]
fn a_log_cut_at_a_batch_boundary_below_the_mark_is_a_loss() {
    let (disk, all) = filled_disk();
    let acknowledged = append_after_reopen(&disk, true);
    let active = files(&disk, ".log").pop().unwrap();
    let log = open(&disk).unwrap();
    let last_batch_bytes: usize = log.read(acknowledged[0].offset, 1 << 20, u64::MAX).unwrap()[0].len();
    drop(log);
    let len = disk.file_len(&active).unwrap();
    let file = disk.open(&active, false).unwrap();
    file.set_len(len - last_batch_bytes as u64).unwrap();
    file.sync().unwrap();
    drop(file);
    disk.crash(1);

    let log = open(&disk).unwrap();
    let report = log.recovery_report();
    assert!(report.cut.is_none(), "nothing was torn: {report:?}");
    let damage = report.damage.clone().expect("the mark says the log was longer");
    assert_eq!((damage.offset, damage.offsets_lost()), (acknowledged[0].offset, Some(2)));
    assert_eq!(read_until_error(&log).0, all);
}

#[test]
fn damaged_or_missing_indexes_are_rebuilt() {
    let (disk, all) = filled_disk();
    let indexes = files(&disk, ".index");
    disk.corrupt_byte(&indexes[1], 20, 0x40).unwrap();
    disk.remove_file(&indexes[2]).unwrap();
    let time_indexes = files(&disk, ".timeindex");
    disk.corrupt_byte(&time_indexes[0], 9, 0x01).unwrap();

    let log = open(&disk).unwrap();
    assert_eq!(log.recovery_report().segments_scanned, 3, "{:?}", log.recovery_report());
    let (read, error) = read_until_error(&log);
    assert!(error.is_none());
    assert_eq!(read, all);
    for record in &all {
        assert_eq!(log.offset_for_timestamp(record.timestamp_ms).unwrap(), Some(record.offset));
    }
}

#[test]
fn damaged_checkpoint_means_a_full_scan_not_a_failure() {
    let (disk, all) = filled_disk();
    disk.corrupt_byte(&Path::new(DIR).join("checkpoint"), 10, 0xFF).unwrap();
    let log = open(&disk).unwrap();
    let report = log.recovery_report();
    assert!(report.checkpoint_ignored.is_some());
    assert_eq!(report.segments_trusted, 0);
    assert_eq!(read_until_error(&log).0, all);
}

#[test]
fn garbage_files_do_not_stop_recovery() {
    let (disk, all) = filled_disk();
    let stray = disk.open(&Path::new(DIR).join("notes.txt"), true).unwrap();
    stray.write_at(0, b"not a segment").unwrap();
    let orphan = Path::new(DIR).join(format!("{:020}.index", 999_999));
    disk.open(&orphan, true).unwrap();
    let log = open(&disk).unwrap();
    assert_eq!(read_until_error(&log).0, all);
    assert!(disk.file_len(&orphan).is_none(), "an index without a segment is removed");
}
