//! The partition log on the real disk against the raw limit of that disk.
//!
//! Each case is one criterion group with two benchmarks: `log` goes through
//! [`PartitionLog`], `raw` does the same I/O with plain `std::fs::File` calls
//! in the same directory. Their ratio is what the log costs (batch placement,
//! indexes, segment rolls, CRC checks on read) over what the file system
//! gives. Criterion prints its own figures per benchmark; a table of log/raw
//! ratios follows at the end.
//!
//! The two sides run one after the other, not interleaved, so a device whose
//! speed drifts (a cloud disk does) moves the ratio of the fsync-bound cases
//! too: read a ratio near 1 there as "no measurable overhead".
//!
//! ```text
//! CARGO_TARGET_DIR=$HOME/.cache/weir-target cargo bench --bench log [-- FILTER]
//! ```
//!
//! Data goes to a fresh directory under `$WEIR_BENCH_DIR` if set, else under
//! `std::env::temp_dir()`, and is removed at the end. Reads are served from the
//! page cache on both sides (the data was just written and caches cannot be
//! dropped here), so they measure CPU and memory cost, not the device.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use weir::log::{Batch, BatchBuilder, FlushPolicy, LogConfig, PartitionLog, Record};
use weir::sys::clock::system_clock;
use weir::sys::disk::real_disk;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

const RECORD_VALUE_BYTES: usize = KIB;
/// About 64 KiB of records per batch.
const RECORDS_PER_BATCH_SMALL: usize = 64;
/// About 1 MiB of records per batch.
const RECORDS_PER_BATCH_LARGE: usize = 1024;

const SEGMENT_BYTES_MAX: u64 = 256 << 20;
/// Before a sample, a log (or raw file) holding this much is started afresh,
/// which bounds the disk space the append cases use.
const WRITE_RESET_BYTES: u64 = 1 << 30;
/// Fresh batches to append are copied outside the timed region, at most this
/// many bytes of them at a time.
const PREPARED_BYTES_MAX: usize = 64 * MIB;

/// The log (and raw file) read from start to end in the read case.
const READ_LOG_BYTES: u64 = 256 << 20;
const READ_RECORDS_PER_BATCH: usize = RECORDS_PER_BATCH_SMALL;
/// The byte budget of one `PartitionLog::read`, and the size of one raw pread.
const READ_BYTES_MAX: usize = MIB;

const SAMPLE_SIZE: usize = 10;
const WARM_UP_TIME: Duration = Duration::from_secs(2);
const MEASUREMENT_TIME: Duration = Duration::from_secs(5);

const _: () = assert!(SEGMENT_BYTES_MAX <= WRITE_RESET_BYTES);
const _: () = assert!(RECORDS_PER_BATCH_LARGE * RECORD_VALUE_BYTES <= PREPARED_BYTES_MAX);
const _: () = assert!(READ_BYTES_MAX as u64 <= READ_LOG_BYTES);

/// When appended data is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncMode {
    /// fsync after every batch: `FlushPolicy::EveryBatch`, `sync_data` per write.
    EachBatch,
    /// One fsync at the end of each criterion sample: `FlushPolicy::Explicit`.
    EndOfSample,
}

struct AppendCase {
    name: &'static str,
    records_per_batch: usize,
    sync: SyncMode,
}

const APPEND_CASES: [AppendCase; 4] = [
    AppendCase {
        name: "append_64KiB_fsync_each",
        records_per_batch: RECORDS_PER_BATCH_SMALL,
        sync: SyncMode::EachBatch,
    },
    AppendCase {
        name: "append_1MiB_fsync_each",
        records_per_batch: RECORDS_PER_BATCH_LARGE,
        sync: SyncMode::EachBatch,
    },
    AppendCase {
        name: "append_64KiB_fsync_end",
        records_per_batch: RECORDS_PER_BATCH_SMALL,
        sync: SyncMode::EndOfSample,
    },
    AppendCase {
        name: "append_1MiB_fsync_end",
        records_per_batch: RECORDS_PER_BATCH_LARGE,
        sync: SyncMode::EndOfSample,
    },
];
const READ_CASE: &str = "read_seq_1MiB";

fn case_names() -> impl Iterator<Item = &'static str> {
    APPEND_CASES.iter().map(|case| case.name).chain([READ_CASE])
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(WARM_UP_TIME)
        .measurement_time(MEASUREMENT_TIME)
        .configure_from_args();
    let root = BenchDir::create();
    print_setup(root.path());
    for case in &APPEND_CASES {
        bench_append(&mut criterion, &root, case);
    }
    bench_read(&mut criterion, &root);
    criterion.final_summary();
    print_table(root.path());
}

// ---------------------------------------------------------------------------
// Criterion groups

fn bench_append(criterion: &mut Criterion, root: &BenchDir, case: &AppendCase) {
    let template = template_batch(case.records_per_batch);
    let dir = root.case_dir(case.name);
    let mut group = criterion.benchmark_group(case.name);
    // Flat: every sample runs the same number of appends, and an fsync-bound
    // iteration is too slow for criterion's linear ramp.
    group.sampling_mode(SamplingMode::Flat).throughput(Throughput::Bytes(template.len() as u64));
    let log = || LogTarget::open(&dir.join("log"), case.sync);
    let raw = || RawTarget::open(&dir.join("raw.dat"), case.sync);
    bench_side(&mut group, case.name, Side::Log, || Appender::new(log(), case.sync, &template));
    bench_side(&mut group, case.name, Side::Raw, || Appender::new(raw(), case.sync, &template));
    group.finish();
    remove_dir(&dir);
}

fn bench_read(criterion: &mut Criterion, root: &BenchDir) {
    let template = template_batch(READ_RECORDS_PER_BATCH);
    let batch_count = READ_LOG_BYTES.div_ceil(template.len() as u64);
    let dir = root.case_dir(READ_CASE);
    let mut group = criterion.benchmark_group(READ_CASE);
    // One iteration reads the whole log (or file) from start to end.
    group.sampling_mode(SamplingMode::Flat).throughput(Throughput::Bytes(batch_count * template.len() as u64));
    bench_side(&mut group, READ_CASE, Side::Log, || LogReader::create(&dir.join("log"), &template, batch_count));
    bench_side(&mut group, READ_CASE, Side::Raw, || RawReader::create(&dir.join("raw.dat"), &template, batch_count));
    group.finish();
    remove_dir(&dir);
}

/// One side of a case: runs `iters` iterations and says what they did.
trait Workload {
    fn run(&mut self, iters: u64) -> Sample;
}

/// Benchmarks one side of a case, setting it up (untimed) only if criterion
/// actually runs it: a filter may skip it, and writing a fixture is not free.
fn bench_side<W: Workload>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    case: &'static str,
    side: Side,
    open: impl Fn() -> W,
) {
    let mut workload: Option<W> = None;
    group.bench_function(side.name(), |bencher| {
        let workload = workload.get_or_insert_with(&open);
        bencher.iter_custom(|iters| {
            let sample = workload.run(iters);
            record(case, side, &sample);
            sample.elapsed
        });
    });
}

// ---------------------------------------------------------------------------
// Batches

/// A batch of `records` records with 1 KiB values and no keys.
fn template_batch(records: usize) -> Batch {
    let timestamp_ms = system_clock().now_ms();
    let mut builder = BatchBuilder::new();
    for seed in 0..records as u64 {
        builder.push(&Record { timestamp_ms, value: Some(record_value(seed)), ..Record::default() });
    }
    builder.build().expect("a benchmark batch fits BATCH_BYTES_MAX")
}

/// Pseudo-random bytes (xorshift64), so no layer below the file system can
/// compress or deduplicate them.
fn record_value(seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let value: Vec<u8> = (0..RECORD_VALUE_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    Bytes::from(value)
}

/// A copy of `batch` that owns its bytes alone, as a batch decoded from a
/// producer's request does: the log then rewrites its header in place instead
/// of copying the whole batch.
fn fresh_copy(batch: &Batch) -> Batch {
    Batch::from_storage(Bytes::copy_from_slice(batch.as_bytes())).expect("a copy of a valid batch is valid")
}

/// Splits `total` into chunks of at most `chunk_max`.
fn chunks(total: u64, chunk_max: u64) -> impl Iterator<Item = u64> {
    (0..total.div_ceil(chunk_max)).map(move |i| chunk_max.min(total - i * chunk_max))
}

// ---------------------------------------------------------------------------
// Append workloads

fn log_config(sync: SyncMode) -> LogConfig {
    let flush = match sync {
        SyncMode::EachBatch => FlushPolicy::EveryBatch,
        SyncMode::EndOfSample => FlushPolicy::Explicit,
    };
    LogConfig { segment_bytes_max: SEGMENT_BYTES_MAX, flush, ..LogConfig::default() }
}

fn open_log(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(real_disk(), dir, config, system_clock()).expect("open the benchmark log")
}

/// Where the append cases write: the log, or a plain file.
trait AppendTarget {
    /// Writes one batch, with an fsync if the case asks for one per batch.
    fn append(&mut self, batch: Batch);
    /// Makes everything written so far durable.
    fn flush(&mut self);
    /// Starts afresh (untimed) once the target holds [`WRITE_RESET_BYTES`].
    fn reset_if_full(&mut self);
}

/// Appends fresh copies of one batch to a target. Log and raw share this loop,
/// so both write from the same kind of freshly copied, cache-cold buffers and
/// pause for the same untimed copying between chunks.
struct Appender<T> {
    target: T,
    sync: SyncMode,
    template: Batch,
}

impl<T> Appender<T> {
    fn new(target: T, sync: SyncMode, template: &Batch) -> Self {
        Self { target, sync, template: template.clone() }
    }

    fn prepare(&self, count: u64) -> Vec<Batch> {
        (0..count).map(|_| fresh_copy(&self.template)).collect()
    }
}

impl<T: AppendTarget> Workload for Appender<T> {
    fn run(&mut self, iters: u64) -> Sample {
        self.target.reset_if_full();
        let chunk_max = (PREPARED_BYTES_MAX / self.template.len()) as u64;
        let mut elapsed = Duration::ZERO;
        for count in chunks(iters, chunk_max) {
            let batches = self.prepare(count);
            let start = Instant::now();
            for batch in batches {
                self.target.append(batch);
            }
            elapsed += start.elapsed();
        }
        if self.sync == SyncMode::EndOfSample {
            let start = Instant::now();
            self.target.flush();
            elapsed += start.elapsed();
        }
        Sample { elapsed, bytes: iters * self.template.len() as u64, ops: iters }
    }
}

/// A partition log whose flush policy makes the per-batch fsync.
struct LogTarget {
    dir: PathBuf,
    config: LogConfig,
    log: Option<PartitionLog>,
}

impl LogTarget {
    fn open(dir: &Path, sync: SyncMode) -> Self {
        let config = log_config(sync);
        let log = open_log(dir, config.clone());
        Self { dir: dir.to_path_buf(), config, log: Some(log) }
    }

    fn log(&mut self) -> &mut PartitionLog {
        self.log.as_mut().expect("the log is open between samples")
    }
}

impl AppendTarget for LogTarget {
    fn append(&mut self, batch: Batch) {
        self.log().append(batch).expect("append to the benchmark log");
    }

    fn flush(&mut self) {
        self.log().flush().expect("flush the benchmark log");
    }

    fn reset_if_full(&mut self) {
        if self.log().size_bytes() < WRITE_RESET_BYTES {
            return;
        }
        let log = self.log.take().expect("the log is open between samples");
        log.close().expect("close the benchmark log");
        remove_dir(&self.dir);
        self.log = Some(open_log(&self.dir, self.config.clone()));
    }
}

/// One plain file, written at its end; `sync_data` is what the log's fsync
/// does too (`RealDisk` syncs with fdatasync).
struct RawTarget {
    path: PathBuf,
    sync: SyncMode,
    file: File,
    len: u64,
}

impl RawTarget {
    fn open(path: &Path, sync: SyncMode) -> Self {
        Self { path: path.to_path_buf(), sync, file: create_file(path), len: 0 }
    }
}

impl AppendTarget for RawTarget {
    fn append(&mut self, batch: Batch) {
        self.file.write_all_at(batch.as_bytes(), self.len).expect("raw write");
        self.len += batch.len() as u64;
        if self.sync == SyncMode::EachBatch {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.file.sync_data().expect("raw fsync");
    }

    fn reset_if_full(&mut self) {
        if self.len < WRITE_RESET_BYTES {
            return;
        }
        fs::remove_file(&self.path).expect("remove the raw file");
        self.file = create_file(&self.path);
        self.len = 0;
    }
}

fn create_file(path: &Path) -> File {
    let dir = path.parent().expect("a file path has a directory");
    fs::create_dir_all(dir).expect("create the benchmark directory");
    OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).expect("create the raw file")
}

// ---------------------------------------------------------------------------
// Read workloads

/// A log of `batch_count` copies of a batch, flushed, read start to end.
struct LogReader {
    log: PartitionLog,
}

impl LogReader {
    fn create(dir: &Path, template: &Batch, batch_count: u64) -> Self {
        let mut log = open_log(dir, log_config(SyncMode::EndOfSample));
        for _ in 0..batch_count {
            log.append(template.clone()).expect("append to the read log");
        }
        log.flush().expect("flush the read log");
        Self { log }
    }

    /// Reads every batch once; returns how many reads that took.
    fn read_all(&self) -> u64 {
        let end = self.log.log_end_offset();
        let mut offset = self.log.log_start_offset();
        let mut reads = 0;
        while offset < end {
            let batches = self.log.read(offset, READ_BYTES_MAX, u64::MAX).expect("read the log");
            offset = batches.last().expect("a read below the log end returns a batch").next_offset();
            black_box(&batches);
            reads += 1;
        }
        reads
    }
}

impl Workload for LogReader {
    fn run(&mut self, iters: u64) -> Sample {
        let start = Instant::now();
        let reads: u64 = (0..iters).map(|_| self.read_all()).sum();
        Sample { elapsed: start.elapsed(), bytes: iters * self.log.size_bytes(), ops: reads }
    }
}

/// A file as large as the read log, read start to end in 1 MiB preads.
struct RawReader {
    file: File,
    len: u64,
    buf: Vec<u8>,
}

impl RawReader {
    fn create(path: &Path, template: &Batch, batch_count: u64) -> Self {
        let file = create_file(path);
        let bytes = template.as_bytes();
        for i in 0..batch_count {
            file.write_all_at(bytes, i * bytes.len() as u64).expect("write the raw read file");
        }
        file.sync_data().expect("sync the raw read file");
        Self { file, len: batch_count * bytes.len() as u64, buf: vec![0; READ_BYTES_MAX] }
    }

    /// Reads the whole file once; returns how many reads that took.
    fn read_all(&mut self) -> u64 {
        let mut position = 0;
        let mut reads = 0;
        while position < self.len {
            let n = self.file.read_at(&mut self.buf, position).expect("raw read");
            assert!(n > 0, "raw file shorter than written");
            black_box(&self.buf[..n]);
            position += n as u64;
            reads += 1;
        }
        reads
    }
}

impl Workload for RawReader {
    fn run(&mut self, iters: u64) -> Sample {
        let start = Instant::now();
        let reads: u64 = (0..iters).map(|_| self.read_all()).sum();
        Sample { elapsed: start.elapsed(), bytes: iters * self.len, ops: reads }
    }
}

// ---------------------------------------------------------------------------
// Totals and the ratio table

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Log,
    Raw,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Log => "log",
            Side::Raw => "raw",
        }
    }
}

/// What one call of a workload did: bytes of batches moved, operations (one
/// append, or one read call) and the time they took.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    elapsed: Duration,
    bytes: u64,
    ops: u64,
}

impl Sample {
    fn add(&mut self, other: &Sample) {
        self.elapsed += other.elapsed;
        self.bytes += other.bytes;
        self.ops += other.ops;
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    fn us_per_op(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.ops as f64
    }
}

/// Everything each side of each case did, warm-up included.
static TOTALS: Mutex<BTreeMap<(&'static str, Side), Sample>> = Mutex::new(BTreeMap::new());

fn record(case: &'static str, side: Side, sample: &Sample) {
    let mut totals = TOTALS.lock().expect("totals lock");
    totals.entry((case, side)).or_default().add(sample);
}

fn print_table(dir: &Path) {
    let totals = TOTALS.lock().expect("totals lock");
    if totals.is_empty() {
        return;
    }
    println!();
    println!("partition log vs raw file in {} (MB = 10^6 bytes; criterion above uses MiB)", dir.display());
    println!("op = one batch appended (fsync_end: incl. a share of the final fsync), or one read call of up to 1 MiB");
    println!(
        "{:<24} {:>10} {:>10} {:>8} {:>11} {:>11}",
        "case", "log MB/s", "raw MB/s", "log/raw", "log us/op", "raw us/op"
    );
    for case in case_names() {
        let log = totals.get(&(case, Side::Log));
        let raw = totals.get(&(case, Side::Raw));
        if log.is_none() && raw.is_none() {
            continue;
        }
        let ratio = match (log, raw) {
            (Some(log), Some(raw)) => format!("{:.2}", log.mb_per_s() / raw.mb_per_s()),
            _ => "-".into(),
        };
        println!(
            "{case:<24} {:>10} {:>10} {ratio:>8} {:>11} {:>11}",
            column(log, Sample::mb_per_s),
            column(raw, Sample::mb_per_s),
            column(log, Sample::us_per_op),
            column(raw, Sample::us_per_op),
        );
    }
    println!("reads come from the page cache on both sides: they measure CPU and memory, not the disk.");
}

fn column(sample: Option<&Sample>, figure: fn(&Sample) -> f64) -> String {
    sample.map_or_else(|| "-".into(), |sample| format!("{:.1}", figure(sample)))
}

// ---------------------------------------------------------------------------
// The data directory

/// A fresh directory for the benchmark's files, removed when dropped.
struct BenchDir {
    path: PathBuf,
}

impl BenchDir {
    fn create() -> Self {
        let parent = std::env::var_os("WEIR_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let path = parent.join(format!("weir-bench-log-{}", std::process::id()));
        remove_dir(&path);
        fs::create_dir_all(&path).expect("create the benchmark directory");
        let path = path.canonicalize().expect("canonicalize the benchmark directory");
        Self { path }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn case_dir(&self, case: &str) -> PathBuf {
        self.path.join(case)
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        // No panic here: this may run while a failed benchmark unwinds.
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("could not remove {}: {e}", self.path.display());
        }
    }
}

fn remove_dir(path: &Path) {
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
}

fn print_setup(dir: &Path) {
    println!("weir log bench: data in {} ({})", dir.display(), file_system_of(dir));
    println!("reads are served from the page cache on both sides (caches cannot be dropped here).");
}

/// The file system holding `path`, from the longest matching mount point in
/// `/proc/self/mounts`: tmpfs makes fsync free and the numbers meaningless.
fn file_system_of(path: &Path) -> String {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else { return "file system unknown".into() };
    let mount = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?, Path::new(fields.next()?), fields.next()?))
        })
        .filter(|(_, mount_point, _)| path.starts_with(mount_point))
        .max_by_key(|(_, mount_point, _)| mount_point.components().count());
    match mount {
        Some((_, _, "tmpfs")) => "tmpfs: memory, fsync is free; set WEIR_BENCH_DIR to a disk".into(),
        Some((source, mount_point, fs_type)) => format!("{fs_type} on {source}, mounted at {}", mount_point.display()),
        None => "file system unknown".into(),
    }
}
