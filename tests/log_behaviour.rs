//! Partition log behaviour, case by case: rolling, retention, flush policies,
//! read limits, errors. (The model test covers the same ground at random.)

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use weir::log::{Batch, BatchBuilder, FlushPolicy, LogConfig, LogError, PartitionLog, Record};
use weir::sys::clock::{Clock, ManualClock, SlewedClock};
use weir::sys::disk::SimDisk;

const DIR: &str = "/data/t-0";
const NOW_MS: i64 = 1_700_000_000_000;

fn setup(config: LogConfig) -> (SimDisk, Arc<ManualClock>, PartitionLog) {
    let disk = SimDisk::new(3);
    let clock = ManualClock::new(NOW_MS);
    let log = open(&disk, &clock, config);
    (disk, clock, log)
}

fn open(disk: &SimDisk, clock: &Arc<ManualClock>, config: LogConfig) -> PartitionLog {
    let shared: Arc<dyn Clock> = clock.clone();
    PartitionLog::open(Arc::new(disk.clone()), Path::new(DIR), config, shared).unwrap()
}

/// A batch of `count` records of ~100 bytes stamped `timestamp_ms`.
fn batch(count: usize, timestamp_ms: i64) -> Batch {
    let mut builder = BatchBuilder::new();
    for _ in 0..count {
        builder.push(&Record { timestamp_ms, value: Some(Bytes::from(vec![7u8; 100])), ..Record::default() });
    }
    builder.build().unwrap()
}

fn small_segments() -> LogConfig {
    LogConfig { segment_bytes_max: 1_000, index_interval_bytes: 100, ..LogConfig::default() }
}

#[test]
fn segments_roll_by_size() {
    let (_, _, mut log) = setup(small_segments());
    for _ in 0..10 {
        log.append(batch(2, NOW_MS)).unwrap();
    }
    // Each batch is ~280 bytes: three fit in 1,000 bytes.
    assert_eq!(log.segment_count(), 4);
    assert_eq!(log.log_end_offset(), 20);
}

#[test]
fn indexes_are_sized_to_their_segment_and_never_roll_it_early() {
    // An index entry per 100 bytes: nearly one per batch.
    let config = LogConfig { segment_bytes_max: 16 << 10, index_interval_bytes: 100, ..LogConfig::default() };
    let (disk, _, mut log) = setup(config.clone());
    let batch_len = batch(1, NOW_MS).len() as u64;
    let batches: u64 = 600;
    for _ in 0..batches {
        log.append(batch(1, NOW_MS)).unwrap();
    }
    // Segments roll by size alone, never because an index filled up.
    let per_segment = config.segment_bytes_max / batch_len;
    assert_eq!(log.segment_count() as u64, batches.div_ceil(per_segment), "batches of {batch_len} bytes");
    // Each index file is as large as a full segment can need, not 1 MiB.
    let index_bytes = config.index_bytes();
    assert!(index_bytes < 4 << 10, "{index_bytes}");
    for path in weir::log::segment::Segment::paths(Path::new(DIR), 0).iter().skip(1) {
        let len = weir::sys::disk::Disk::open(&disk, path, false).unwrap().len().unwrap();
        assert_eq!(len, index_bytes, "{}", path.display());
    }
    // Reopened, every sealed index is trusted and reads agree.
    drop(log);
    let reopened = open(&disk, &ManualClock::new(NOW_MS), config);
    assert_eq!(reopened.log_end_offset(), batches);
    let read = reopened.read(300, 1, u64::MAX).unwrap();
    assert_eq!(read[0].base_offset(), 300);
}

#[test]
fn segments_roll_by_age() {
    let config = LogConfig { segment_age_ms_max: Some(60_000), ..LogConfig::default() };
    let (_, clock, mut log) = setup(config);
    log.append(batch(1, NOW_MS)).unwrap();
    clock.advance_ms(59_999);
    log.append(batch(1, NOW_MS)).unwrap();
    assert_eq!(log.segment_count(), 1, "young segment keeps taking appends");
    clock.advance_ms(1);
    log.append(batch(1, NOW_MS)).unwrap();
    assert_eq!(log.segment_count(), 2, "a segment of age 60s rolls on the next append");
}

#[test]
fn retention_by_age_deletes_whole_old_segments() {
    let config = LogConfig { retention_ms: Some(3_600_000), ..small_segments() };
    let (_, clock, mut log) = setup(config);
    for i in 0..6 {
        log.append(batch(2, NOW_MS + i)).unwrap(); // two segments of old data
    }
    clock.advance_ms(2 * 3_600_000);
    for _ in 0..3 {
        log.append(batch(2, clock.now_ms())).unwrap();
    }
    assert_eq!(log.segment_count(), 3);
    assert_eq!(log.apply_retention(u64::MAX).unwrap(), 2);
    assert_eq!(log.log_start_offset(), 12);
    assert!(matches!(log.read(11, 100, u64::MAX), Err(LogError::OffsetOutOfRange { offset: 11, start: 12, end: 18 })));
    assert_eq!(log.read(12, 100, u64::MAX).unwrap()[0].base_offset(), 12);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(12), "time lookups start at the log start");
}

#[test]
fn retention_by_size_keeps_at_least_the_limit_and_respects_the_bound() {
    let config = LogConfig { retention_bytes: Some(2_000), retention_ms: None, ..small_segments() };
    let (_, _, mut log) = setup(config);
    for _ in 0..30 {
        log.append(batch(1, NOW_MS)).unwrap();
    }
    let segments = log.segment_count();
    assert_eq!(log.apply_retention(0).unwrap(), 0, "nothing is deleted past the caller's bound");
    assert!(log.apply_retention(u64::MAX).unwrap() > 0);
    assert!(log.segment_count() < segments);
    assert!(log.size_bytes() >= 2_000);
    assert!(log.size_bytes() < 2_000 + 1_000, "at most one segment more than the limit is kept");
}

#[test]
fn interval_flush_policy_flushes_once_the_interval_passes() {
    let config = LogConfig { flush: FlushPolicy::Interval { interval_ms: 1_000 }, ..LogConfig::default() };
    let (_, clock, mut log) = setup(config);
    log.append(batch(1, NOW_MS)).unwrap();
    assert_eq!(log.flushed_offset(), 0);
    clock.advance_ms(999);
    log.flush_if_due().unwrap();
    assert_eq!(log.flushed_offset(), 0);
    clock.advance_ms(1);
    log.flush_if_due().unwrap();
    assert_eq!(log.flushed_offset(), 1);
    log.append(batch(1, NOW_MS)).unwrap();
    clock.advance_ms(1_000);
    log.append(batch(1, NOW_MS)).unwrap();
    assert_eq!(log.flushed_offset(), 3, "an append after the interval flushes");
}

const HOUR_MS: i64 = 3_600_000;

#[test]
fn a_step_of_the_wall_clock_forwards_neither_deletes_early_nor_rolls_at_once() {
    // Segments may live an hour, and hold data for an hour; the log reads
    // ages from a slewed clock, as a broker's logs do.
    let config = LogConfig { retention_ms: Some(HOUR_MS), segment_age_ms_max: Some(HOUR_MS), ..small_segments() };
    let disk = SimDisk::new(3);
    let clock = ManualClock::new(NOW_MS);
    let ages: Arc<dyn Clock> = SlewedClock::new(clock.clone());
    let mut log = PartitionLog::open(Arc::new(disk.clone()), Path::new(DIR), config, ages).unwrap();
    for _ in 0..7 {
        log.append(batch(2, NOW_MS)).unwrap(); // two whole segments, and the active one
    }
    let segments = log.segment_count();
    // Ten minutes on, the host's clock is stepped two hours forwards.
    clock.advance_ms(10 * 60_000);
    clock.set_ms(clock.now_ms() + 2 * HOUR_MS);
    log.append(batch(2, clock.now_ms())).unwrap();
    assert_eq!(log.segment_count(), segments, "the active segment is ten minutes old, not two hours");
    assert_eq!(log.apply_retention(u64::MAX).unwrap(), 0, "data ten minutes old is kept");
    // Forty minutes on (50 min old; read as 54 while the step is absorbed).
    clock.advance_ms(40 * 60_000);
    assert_eq!(log.apply_retention(u64::MAX).unwrap(), 0, "data 50 minutes old is kept");
    // The step is absorbed a tenth faster than time passes: the data goes
    // once it reads over an hour old, before its hour by at most a tenth.
    clock.advance_ms(10 * 60_000);
    assert_eq!(log.apply_retention(u64::MAX).unwrap(), 2, "data an hour old (read as 66 min) goes");
}

#[test]
fn a_step_of_the_wall_clock_back_holds_off_no_flush() {
    let config = LogConfig { flush: FlushPolicy::Interval { interval_ms: 1_000 }, ..LogConfig::default() };
    let (_, clock, mut log) = setup(config);
    log.append(batch(1, NOW_MS)).unwrap();
    clock.set_ms(NOW_MS - HOUR_MS);
    clock.advance_ms(999);
    log.flush_if_due().unwrap();
    assert_eq!(log.flushed_offset(), 0, "not yet a second");
    clock.advance_ms(1);
    log.flush_if_due().unwrap();
    assert_eq!(log.flushed_offset(), 1, "a second has passed, whatever the wall clock says");
}

#[test]
fn explicit_flush_policy_waits_for_the_caller_and_a_crash_shows_why() {
    let config = LogConfig { flush: FlushPolicy::Explicit, ..LogConfig::default() };
    let (_, clock, mut log) = setup(config.clone());
    log.append(batch(3, NOW_MS)).unwrap();
    assert_eq!(log.flush().unwrap(), 3);
    log.append(batch(3, NOW_MS)).unwrap();
    assert_eq!(log.flushed_offset(), 3);
    let lost = (0..64).any(|seed| {
        let disk = SimDisk::new(0);
        let mut log = open(&disk, &clock, config.clone());
        log.append(batch(3, NOW_MS)).unwrap();
        log.flush().unwrap();
        log.append(batch(3, NOW_MS)).unwrap();
        disk.crash(seed);
        drop(log);
        open(&disk, &clock, config.clone()).log_end_offset() == 3
    });
    assert!(lost, "some crash loses the unflushed batch");
}

#[tokio::test]
async fn waiters_on_the_flushed_offset_wake_when_it_passes() {
    let config = LogConfig { flush: FlushPolicy::Explicit, ..LogConfig::default() };
    let (_, _, mut log) = setup(config);
    let mut flushed = log.subscribe_flushed();
    log.append(batch(5, NOW_MS)).unwrap();
    let waiter = tokio::spawn(async move { *flushed.wait_for(|offset| *offset >= 5).await.unwrap() });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "nothing is flushed yet");
    log.flush().unwrap();
    assert_eq!(waiter.await.unwrap(), 5);
}

#[test]
fn reads_honour_the_limit_and_return_at_least_one_batch() {
    let (_, _, mut log) = setup(LogConfig::default());
    for _ in 0..5 {
        log.append(batch(2, NOW_MS)).unwrap();
    }
    let one = log.read(0, 1, u64::MAX).unwrap();
    assert_eq!(one.len(), 1, "a budget smaller than a batch still returns one batch");
    let limited = log.read(0, 1 << 20, 6).unwrap();
    assert_eq!(limited.last().unwrap().next_offset(), 6, "nothing past the limit (e.g. the high watermark)");
    assert!(log.read(6, 1 << 20, 6).unwrap().is_empty());
    let mid = log.read(3, 1 << 20, u64::MAX).unwrap();
    assert_eq!(mid[0].base_offset(), 2, "a read from inside a batch returns the whole batch");
    assert!(log.read(10, 100, u64::MAX).unwrap().is_empty(), "the log end reads empty");
    assert!(matches!(log.read(11, 100, u64::MAX), Err(LogError::OffsetOutOfRange { .. })));
}

#[test]
fn truncation_points_inside_batches_are_refused() {
    let (_, _, mut log) = setup(small_segments());
    for _ in 0..6 {
        log.append(batch(3, NOW_MS)).unwrap();
    }
    assert!(matches!(log.truncate(4), Err(LogError::NotBatchBoundary { offset: 4 })));
    assert!(matches!(log.truncate(19), Err(LogError::OffsetOutOfRange { .. })));
    log.truncate(6).unwrap();
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(log.append(batch(1, NOW_MS)).unwrap().base_offset, 6, "appends continue at the cut");
}

#[test]
fn a_failed_fsync_poisons_the_log_until_reopen() {
    let (disk, clock, mut log) = setup(LogConfig::default());
    log.append(batch(1, NOW_MS)).unwrap();
    disk.fail_next_syncs(1);
    let error = log.append(batch(1, NOW_MS)).unwrap_err();
    assert!(matches!(error, LogError::Io { .. }), "{error}");
    assert!(matches!(log.read(0, 100, u64::MAX), Err(LogError::Failed(_))));
    assert!(matches!(log.append(batch(1, NOW_MS)), Err(LogError::Failed(_))));
    disk.crash(0);
    drop(log);
    let log = open(&disk, &clock, LogConfig::default());
    assert_eq!(log.log_end_offset(), 1, "the batch whose fsync failed was never acknowledged, and is gone");
}

#[test]
fn a_truncation_whose_read_fails_leaves_the_log_whole_and_usable() {
    // The cut falls inside the first segment and drops the later ones; each
    // read the truncation makes fails in turn.
    for skip in 0..20 {
        let (disk, clock, mut log) = setup(small_segments());
        for _ in 0..6 {
            log.append(batch(3, NOW_MS)).unwrap();
        }
        log.flush().unwrap();
        let segments = log.segment_count();
        assert!(segments >= 3, "the cut must drop whole segments too");
        let first_segment = log.read(0, 1 << 20, u64::MAX).unwrap();
        assert!(first_segment.len() >= 2, "the cut falls inside the first segment");
        disk.fail_reads_after(skip, 1);
        let Err(error) = log.truncate(3) else {
            assert_eq!(log.log_end_offset(), 3);
            assert!(skip >= 2, "a truncation reads more than once");
            return;
        };
        assert!(matches!(error, LogError::Read { .. }), "read {skip}: {error}");
        assert!(!log.is_failed(), "read {skip}: a failed read changes nothing, so it poisons nothing");
        assert_eq!((log.log_end_offset(), log.segment_count()), (18, segments), "read {skip}");
        assert_eq!(log.read(0, 1 << 20, u64::MAX).unwrap(), first_segment, "read {skip}");
        disk.crash(skip.into());
        drop(log);
        let mut log = open(&disk, &clock, small_segments());
        assert_eq!(log.log_end_offset(), 18, "read {skip}: nothing was cut on disk either");
        log.truncate(3).unwrap();
        assert_eq!(log.append(batch(1, NOW_MS)).unwrap().base_offset, 3);
    }
    panic!("the truncation never succeeded");
}

#[test]
fn appends_read_nothing_so_a_disk_failing_reads_does_not_stop_them() {
    let (disk, _, mut log) = setup(small_segments());
    disk.fail_next_reads(100);
    for _ in 0..10 {
        log.append(batch(2, NOW_MS)).unwrap();
    }
    assert_eq!(log.segment_count(), 4, "rolled three times, mapping new indexes");
    assert!(log.read(0, 100, u64::MAX).is_err(), "reads still fail");
}

#[test]
fn invalid_configuration_is_a_typed_error() {
    let disk = SimDisk::new(0);
    let clock: Arc<dyn Clock> = ManualClock::new(0);
    for config in [
        LogConfig { segment_bytes_max: 10, ..LogConfig::default() },
        LogConfig { segment_bytes_max: 1 << 33, ..LogConfig::default() },
        LogConfig { index_interval_bytes: 0, ..LogConfig::default() },
        LogConfig { index_bytes_max: 20, ..LogConfig::default() },
        LogConfig { retention_ms: Some(0), ..LogConfig::default() },
        LogConfig { flush: FlushPolicy::Interval { interval_ms: 0 }, ..LogConfig::default() },
    ] {
        let result = PartitionLog::open(Arc::new(disk.clone()), Path::new(DIR), config.clone(), clock.clone());
        assert!(matches!(result, Err(LogError::Config(_))), "{config:?} accepted");
    }
}
