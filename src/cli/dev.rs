//! `weir dev`: weir on one machine with embedded defaults.

use std::path::Path;

use bytes::Bytes;
use tokio::time::Instant;

use super::DevArgs;
use crate::log::{BatchBuilder, LogConfig, PartitionLog, Record, RecordHeader};
use crate::sys::clock::system_clock;
use crate::sys::disk::real_disk;

fn rate(count: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count / seconds
    } else {
        f64::INFINITY
    }
}

pub async fn run(args: DevArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.batch_messages == 0 || args.message_bytes == 0 {
        return Err("--batch-messages and --message-bytes must be positive".into());
    }
    let dir = args.data_dir.join("dev-topic-0");
    let clock = system_clock();
    let opened = Instant::now();
    let mut log = PartitionLog::open(real_disk(), &dir, LogConfig::default(), clock.clone())?;
    let report = log.recovery_report().clone();
    println!(
        "weir dev: partition log at {} opened in {:?} ({}; {} segment(s), offsets {}..{})",
        dir.display(),
        opened.elapsed(),
        match (report.clean, report.segments_trusted + report.segments_scanned) {
            (true, _) => "clean shutdown last time",
            (false, 0) => "new",
            (false, _) => "recovered after an unclean shutdown",
        },
        log.segment_count(),
        log.log_start_offset(),
        log.log_end_offset(),
    );
    println!("  the gRPC broker arrives with the single-node broker issue; this run exercises the storage engine");

    let start_offset = log.log_end_offset();
    let start_ms = clock.now_ms();
    let value = Bytes::from(vec![b'w'; args.message_bytes]);
    let appending = Instant::now();
    let mut written = 0u64;
    let mut bytes = 0u64;
    while written < args.messages {
        let count = args.batch_messages.min(args.messages - written);
        let mut builder = BatchBuilder::new();
        for i in written..written + count {
            builder.push(&Record {
                timestamp_ms: clock.now_ms(),
                key: Some(Bytes::from(format!("key-{}", start_offset + i))),
                value: Some(value.clone()),
                headers: vec![RecordHeader { key: "source".into(), value: Some(Bytes::from_static(b"weir dev")) }],
                ..Record::default()
            });
        }
        let batch = builder.build()?;
        bytes += batch.len() as u64;
        log.append(batch)?;
        written += count;
    }
    let seconds = appending.elapsed().as_secs_f64();
    println!(
        "  appended {written} messages ({:.1} MB) with an fsync per {}-message batch: {:.0} msgs/s, {:.1} MB/s",
        bytes as f64 / 1e6,
        args.batch_messages,
        rate(written as f64, seconds),
        rate(bytes as f64 / 1e6, seconds),
    );

    let reading = Instant::now();
    let mut offset = start_offset;
    let mut read = 0u64;
    while offset < log.log_end_offset() {
        let batches = log.read(offset, 1 << 20, u64::MAX)?;
        let Some(last) = batches.last() else { break };
        offset = last.next_offset();
        for batch in &batches {
            for record in batch.records() {
                let record = record?;
                if record.key.as_deref() != Some(format!("key-{}", record.offset).as_bytes()) {
                    return Err(format!("offset {} holds the wrong record", record.offset).into());
                }
                read += 1;
            }
        }
    }
    println!(
        "  read back and checked {read} messages by offset: {:.0} msgs/s",
        rate(read as f64, reading.elapsed().as_secs_f64())
    );
    if let Some(found) = log.offset_for_timestamp(start_ms)? {
        println!("  first message at or after this run's start time ({start_ms} ms): offset {found}");
    }

    log.close()?;
    let reopening = Instant::now();
    let log = PartitionLog::open(real_disk(), &dir, LogConfig::default(), system_clock())?;
    println!(
        "  closed cleanly and reopened in {:?}: {} messages at offsets {}..{}, {} segment(s) trusted without a scan",
        reopening.elapsed(),
        log.log_end_offset() - log.log_start_offset(),
        log.log_start_offset(),
        log.log_end_offset(),
        log.recovery_report().segments_trusted,
    );
    log.close()?;
    print_files(&dir);
    Ok(())
}

fn print_files(dir: &Path) {
    if let Ok(names) = real_disk().list_dir(dir) {
        println!("  files: {}", names.join(" "));
    }
}
