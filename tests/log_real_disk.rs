//! The partition log on the host's file system: real files, fdatasync,
//! directory fsync and memmap2 indexes. (Crashes are the simulated disk's
//! job; here a drop without close stands in for a process kill.)
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use weir::log::{BatchBuilder, LogConfig, PartitionLog, Record};
use weir::sys::clock::{system_clock, Clock, ManualClock};
use weir::sys::disk::real_disk;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("weir-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config() -> LogConfig {
    LogConfig { segment_bytes_max: 16 << 10, index_interval_bytes: 1024, index_bytes_max: 4096, ..LogConfig::default() }
}

fn batch(first: u64, count: u64) -> weir::log::Batch {
    let mut builder = BatchBuilder::new();
    for i in first..first + count {
        builder.push(&Record {
            timestamp_ms: 1_000 + i as i64,
            key: Some(Bytes::from(i.to_string())),
            value: Some(Bytes::from(vec![(i % 251) as u8; 300])),
            ..Record::default()
        });
    }
    builder.build().unwrap()
}

fn offsets(log: &PartitionLog) -> Vec<u64> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let batches = log.read(offset, 10_000, u64::MAX).unwrap();
        let Some(last) = batches.last() else { return out };
        offset = last.next_offset();
        for b in &batches {
            for r in b.records() {
                let r = r.unwrap();
                assert_eq!(r.key.as_deref(), Some(r.offset.to_string().as_bytes()));
                out.push(r.offset);
            }
        }
    }
}

#[test]
fn appends_survive_clean_and_unclean_reopen() {
    let dir = TempDir::new("reopen");
    let mut log = PartitionLog::open(real_disk(), &dir.0, config(), system_clock()).unwrap();
    for i in 0..100 {
        log.append(batch(i * 5, 5)).unwrap();
    }
    assert!(log.segment_count() > 3);
    log.close().unwrap();

    let mut log = PartitionLog::open(real_disk(), &dir.0, config(), system_clock()).unwrap();
    assert!(log.recovery_report().clean);
    assert_eq!(log.recovery_report().segments_scanned, 0);
    assert_eq!(offsets(&log), (0..500).collect::<Vec<_>>());
    for i in 100..120 {
        log.append(batch(i * 5, 5)).unwrap();
    }
    drop(log); // no close: the next open must scan the active segment

    let log = PartitionLog::open(real_disk(), &dir.0, config(), system_clock()).unwrap();
    assert!(!log.recovery_report().clean);
    assert_eq!(log.recovery_report().segments_scanned, 1);
    assert_eq!(offsets(&log), (0..600).collect::<Vec<_>>());
    assert_eq!(log.offset_for_timestamp(1_250).unwrap(), Some(250));
}

#[test]
fn truncation_and_retention_on_real_files() {
    let dir = TempDir::new("trim");
    let clock = ManualClock::new(10_000);
    let config = LogConfig { retention_bytes: Some(40 << 10), retention_ms: None, ..config() };
    let shared: Arc<dyn Clock> = clock.clone();
    let mut log = PartitionLog::open(real_disk(), &dir.0, config.clone(), shared.clone()).unwrap();
    for i in 0..200 {
        log.append(batch(i * 2, 2)).unwrap();
    }
    log.truncate(300).unwrap();
    assert_eq!(log.log_end_offset(), 300);
    let deleted = log.apply_retention(u64::MAX).unwrap();
    assert!(deleted > 0);
    assert!(log.size_bytes() >= 40 << 10, "retention keeps at least retention_bytes");
    let start = log.log_start_offset();
    log.close().unwrap();

    let log = PartitionLog::open(real_disk(), &dir.0, config, shared).unwrap();
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(offsets(&log), (start..300).collect::<Vec<_>>());
}
