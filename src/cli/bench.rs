//! `weir bench produce|consume|e2e`: a load generator that prints what it
//! measured.
//!
//! - `produce`: producers send fixed-size messages through the client's
//!   batching producer (batch size, linger), round robin over the topic's
//!   partitions, with a bounded number of messages awaiting their
//!   acknowledgement each; latency is from the send to the acknowledgement
//!   the `--acks` level promises.
//! - `consume`: consumers read `--messages` messages from the start of the
//!   topic (written first, unmeasured, if it holds fewer), each its share of
//!   the partitions, by long-polling fetches.
//! - `e2e`: both at once; latency is from the send to the consumer's
//!   receipt (the send time travels in the message).
//!
//! Open loop by default (as fast as acknowledgements allow); `--rate` sends
//! at a fixed total rate instead, and latency is then measured from when a
//! message was due, so a stalled broker cannot hide its queueing
//! (coordinated omission). Latencies go into HDR histograms; the figures
//! print as text or, with `--json`, as one JSON object for scripts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::produce::AcksArg;
use super::{BrokerArgs, CliResult};
use crate::client::{Client, ClientError, Delivered, Producer, ProducerConfig};
use crate::proto;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Producers only: throughput, and latency to the acknowledgement.
    Produce(BenchArgs),
    /// Consumers only, reading what the topic holds from its start.
    Consume(BenchArgs),
    /// Producers and consumers at once: latency from send to receipt.
    E2e(BenchArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The topic to use (created if missing).
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions of the topic if this run creates it.
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    /// Replicas of each partition if this run creates the topic (default:
    /// the cluster's).
    #[arg(long)]
    pub replication_factor: Option<u32>,
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// Bytes of each message's value.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// A producer sends a partition's batch once it holds this many bytes.
    #[arg(long, default_value_t = 256 << 10)]
    pub batch_bytes: usize,
    /// ... or once its first message has waited this long.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Messages a producer may have awaiting acknowledgement.
    #[arg(long, default_value_t = 4096)]
    pub in_flight: usize,
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Messages per second in all (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Messages to send (or read) in all; the run ends at whichever of this
    /// and `--duration` comes first.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Seconds the measured phase lasts at most.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// What a run measured, as `--json` prints it.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub acks: String,
    pub message_bytes: usize,
    pub batch_bytes: usize,
    pub linger_ms: u64,
    pub producers: usize,
    pub consumers: usize,
    pub partitions: u32,
    /// The rate asked for (0: open loop).
    pub rate: u64,
    pub seconds: f64,
    pub messages: u64,
    pub bytes: u64,
    pub messages_per_sec: f64,
    pub megabytes_per_sec: f64,
    /// Latency percentiles in milliseconds: p50, p90, p99, p99.9, max.
    pub latency_ms: Percentiles,
    /// Sends that failed (not counted in the figures).
    pub errors: u64,
    /// The first of them, as the client reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1e3;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// Latencies in microseconds, 1 µs to 10 minutes, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = (latency.as_micros() as u64).clamp(1, 600_000_000);
    histogram.record(micros).expect("clamped into the histogram's bounds");
}

pub async fn run(command: BenchCommand) -> CliResult {
    let json = match &command {
        BenchCommand::Produce(args) | BenchCommand::Consume(args) | BenchCommand::E2e(args) => args.json,
    };
    let report = measure(command).await?;
    if json {
        say!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        print_report(&report)?;
    }
    Ok(())
}

/// Runs one benchmark and returns its figures.
pub async fn measure(command: BenchCommand) -> Result<Report, String> {
    let (mode, args) = match command {
        BenchCommand::Produce(args) => (Mode::Produce, args),
        BenchCommand::Consume(args) => (Mode::Consume, args),
        BenchCommand::E2e(args) => (Mode::E2e, args),
    };
    check(&args)?;
    bench(mode, &args).await.map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Produce,
    Consume,
    E2e,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::E2e => "e2e",
        }
    }
}

/// Bad arguments, named.
fn check(args: &BenchArgs) -> Result<(), String> {
    let positive = [
        ("--producers", args.producers as u64),
        ("--consumers", args.consumers as u64),
        ("--messages", args.messages),
        ("--duration", args.duration),
        ("--in-flight", args.in_flight as u64),
        ("--partitions", u64::from(args.partitions)),
    ];
    if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
        return Err(format!("{name} must be positive"));
    }
    if args.size < STAMP_BYTES {
        return Err(format!("--size must be at least {STAMP_BYTES} bytes (the send time travels in the value)"));
    }
    Ok(())
}

/// The first bytes of every value: microseconds from the run's start to
/// when the message was due, so a consumer can tell its latency.
const STAMP_BYTES: usize = 8;

fn joined(error: tokio::task::JoinError) -> ClientError {
    ClientError::InvalidReply(format!("a benchmark task failed: {error}"))
}

async fn bench(mode: Mode, args: &BenchArgs) -> Result<Report, ClientError> {
    let client = Client::connect(&args.broker.broker).await?;
    let partitions = match client.describe_topic(&args.topic).await {
        Ok(topic) => topic.partitions.len() as u32,
        Err(_) => {
            let config = proto::TopicConfig {
                partitions: args.partitions,
                replication_factor: args.replication_factor,
                ..Default::default()
            };
            client.create_topic(&args.topic, config).await?.partitions.len() as u32
        }
    };
    let base = Instant::now();
    // Where each partition ends now: e2e consumers start there, and a
    // consume run reads from each partition's start.
    let mut ends = Vec::new();
    for partition in 0..partitions {
        ends.push(client.list_offset(&args.topic, partition, proto::OffsetSpec::Latest, 0).await?);
    }
    if mode == Mode::Consume {
        let held: u64 = ends.iter().sum();
        if held < args.messages {
            let fill = BenchArgs { messages: args.messages - held, rate: 0, duration: 3_600, ..args.clone() };
            if !args.quiet {
                eprintln!("writing {} messages first (not measured)", fill.messages);
            }
            produce_all(&client, &fill, partitions, base, &Progress::hidden()).await?;
        }
    }

    let progress = if args.quiet || args.json { Progress::hidden() } else { Progress::new(args.messages) };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let (produced, consumed) = match mode {
        Mode::Produce => (Some(produce_all(&client, args, partitions, base, &progress).await?), None),
        Mode::Consume => {
            let starts = vec![0; partitions as usize];
            (None, Some(consume_all(&client, args, &starts, base, deadline, false, &progress).await?))
        }
        Mode::E2e => {
            let consumers = {
                let (client, args, progress) = (client.clone(), args.clone(), progress.clone());
                let ends = ends.clone();
                tokio::spawn(async move { consume_all(&client, &args, &ends, base, deadline, true, &progress).await })
            };
            let produced = produce_all(&client, args, partitions, base, &Progress::hidden()).await?;
            let consumed = consumers.await.map_err(joined)??;
            (Some(produced), Some(consumed))
        }
    };
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    // What the figures count: messages acknowledged (produce) or received.
    let (send_errors, send_error) = produced.as_ref().map_or((0, None), |p| (p.errors, p.first_error.clone()));
    let (messages, latency, errors, first_error) = match (produced, consumed) {
        (_, Some(consumed)) => {
            (consumed.messages, consumed.latency, consumed.errors + send_errors, send_error.or(consumed.first_error))
        }
        (Some(produced), None) => (produced.messages, produced.latency, produced.errors, produced.first_error),
        (None, None) => unreachable!("every mode produces or consumes"),
    };
    let bytes = messages * args.size as u64;
    Ok(Report {
        mode: mode.name(),
        acks: format!("{:?}", args.acks).to_lowercase(),
        message_bytes: args.size,
        batch_bytes: args.batch_bytes,
        linger_ms: args.linger_ms,
        producers: if mode == Mode::Consume { 0 } else { args.producers },
        consumers: if mode == Mode::Produce { 0 } else { args.consumers },
        partitions,
        rate: args.rate,
        seconds,
        messages,
        bytes,
        messages_per_sec: messages as f64 / seconds,
        megabytes_per_sec: bytes as f64 / seconds / 1e6,
        latency_ms: Percentiles::of(&latency),
        errors,
        first_error,
    })
}

struct Measured {
    messages: u64,
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Measured {
    fn new() -> Self {
        Self { messages: 0, latency: histogram(), errors: 0, first_error: None }
    }

    fn failed(&mut self, error: &ClientError) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }

    /// What the producer or consumer tasks measured, together.
    async fn sum(tasks: Vec<tokio::task::JoinHandle<Result<Measured, ClientError>>>) -> Result<Measured, ClientError> {
        let mut total = Measured::new();
        for task in tasks {
            let measured = task.await.map_err(joined)??;
            total.messages += measured.messages;
            total.errors += measured.errors;
            total.first_error = total.first_error.or(measured.first_error);
            total.latency.add(&measured.latency).map_err(|e| ClientError::InvalidReply(e.to_string()))?;
        }
        Ok(total)
    }
}

/// Every producer's share of `args.messages`, until the deadline.
async fn produce_all(
    client: &Client,
    args: &BenchArgs,
    partitions: u32,
    base: Instant,
    progress: &Progress,
) -> Result<Measured, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for p in 0..args.producers as u64 {
        let share = args.messages / args.producers as u64 + u64::from(p < args.messages % args.producers as u64);
        let (client, args, progress) = (client.clone(), args.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            produce_one(client, args, partitions, p, share, base, deadline, progress).await
        }));
    }
    Measured::sum(tasks).await
}

/// One producer: `count` messages, round robin over the partitions from
/// its own starting one, open loop or at its share of the rate.
#[allow(clippy::too_many_arguments)]
async fn produce_one(
    client: Client,
    args: BenchArgs,
    partitions: u32,
    index: u64,
    count: u64,
    base: Instant,
    deadline: Instant,
    progress: Progress,
) -> Result<Measured, ClientError> {
    let config = ProducerConfig {
        acks: args.acks.into(),
        batch_bytes_max: args.batch_bytes,
        linger: Duration::from_millis(args.linger_ms),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config);
    // One message every `interval` at a fixed rate.
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.producers as f64 / args.rate as f64));
    let start = Instant::now();
    let mut value = vec![b'x'; args.size];
    let mut waiting: VecDeque<(Instant, crate::client::Delivery)> = VecDeque::new();
    let mut measured = Measured::new();
    let settle = |measured: &mut Measured, due: Instant, delivered: Result<Delivered, ClientError>| match delivered {
        Ok(delivered) => {
            record_latency(&mut measured.latency, delivered.acknowledged_at.saturating_duration_since(due));
            measured.messages += 1;
            progress.inc(1);
        }
        Err(error) => measured.failed(&error),
    };
    for n in 0..count {
        let due = match interval {
            Some(interval) => {
                let due = start + interval.mul_f64(n as f64);
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        if due >= deadline {
            break;
        }
        while waiting.len() >= args.in_flight {
            let (due, delivery) = waiting.pop_front().expect("not empty");
            settle(&mut measured, due, delivery.wait().await);
        }
        let stamp = due.duration_since(base).as_micros() as u64;
        value[..STAMP_BYTES].copy_from_slice(&stamp.to_le_bytes());
        let record = crate::client::producer::record(None, &value, 0);
        let partition = ((index + n) % u64::from(partitions)) as u32;
        match producer.send(&args.topic, Some(partition), record).await {
            Ok(delivery) => waiting.push_back((due, delivery)),
            Err(error) => measured.failed(&error),
        }
    }
    while let Some((due, delivery)) = waiting.pop_front() {
        settle(&mut measured, due, delivery.wait().await);
    }
    Ok(measured)
}

/// Every consumer reading its partitions (`p % consumers`) from `starts`
/// until `args.messages` were read in all or the deadline passed.
async fn consume_all(
    client: &Client,
    args: &BenchArgs,
    starts: &[u64],
    base: Instant,
    deadline: Instant,
    stamped: bool,
    progress: &Progress,
) -> Result<Measured, ClientError> {
    let read = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..args.consumers {
        let mine: Vec<(u32, u64)> =
            (0..starts.len()).filter(|p| p % args.consumers == c).map(|p| (p as u32, starts[p])).collect();
        let (client, topic, progress, read) = (client.clone(), args.topic.clone(), progress.clone(), read.clone());
        let goal = args.messages;
        tasks.push(tokio::spawn(async move {
            let mut measured = Measured::new();
            let mut positions = mine;
            'reading: while !positions.is_empty() && Instant::now() < deadline {
                for (partition, offset) in positions.iter_mut() {
                    if read.load(Ordering::Relaxed) >= goal || Instant::now() >= deadline {
                        break 'reading;
                    }
                    let wait = Duration::from_millis(100);
                    let fetched = match client.fetch(&topic, *partition, *offset, 4 << 20, wait).await {
                        Ok(fetched) => fetched,
                        Err(error) => {
                            measured.failed(&error);
                            continue;
                        }
                    };
                    let now = base.elapsed();
                    for record in &fetched.records {
                        if stamped {
                            let value = record.value.as_deref().unwrap_or_default();
                            if let Some(stamp) = value.get(..STAMP_BYTES) {
                                let sent = u64::from_le_bytes(stamp.try_into().expect("eight bytes"));
                                record_latency(&mut measured.latency, now.saturating_sub(Duration::from_micros(sent)));
                            }
                        }
                    }
                    let count = fetched.records.len() as u64;
                    measured.messages += count;
                    read.fetch_add(count, Ordering::Relaxed);
                    progress.inc(count);
                    *offset = fetched.next_offset.max(*offset);
                }
            }
            Ok::<_, ClientError>(measured)
        }));
    }
    Measured::sum(tasks).await
}

/// A progress bar on stderr, or nothing.
#[derive(Clone)]
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(total: u64) -> Self {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {human_pos}/{human_len} {per_sec}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        Self(Some(bar))
    }

    fn hidden() -> Self {
        Self(None)
    }

    fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

fn print_report(report: &Report) -> std::io::Result<()> {
    let rate = if report.rate == 0 { "open loop".to_owned() } else { format!("{} msg/s", report.rate) };
    say!(
        "{} acks={}: {} messages of {} bytes in {:.2} s over {} partitions, {} producers, {} consumers, \
         batches up to {} bytes, linger {} ms, {rate}",
        report.mode,
        report.acks,
        report.messages,
        report.message_bytes,
        report.seconds,
        report.partitions,
        report.producers,
        report.consumers,
        report.batch_bytes,
        report.linger_ms
    );
    let l = &report.latency_ms;
    say!(
        "  {:.0} msg/s  {:.1} MB/s  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}{}",
        report.messages_per_sec,
        report.megabytes_per_sec,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        if report.errors > 0 { format!("  ({} errors)", report.errors) } else { String::new() }
    );
    if let Some(error) = &report.first_error {
        say!("  first error: {error}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_named() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            bench: BenchCommand,
        }
        let args = |line: &str| match Cli::parse_from(line.split(' ')).bench {
            BenchCommand::Produce(args) | BenchCommand::Consume(args) | BenchCommand::E2e(args) => args,
        };
        assert_eq!(check(&args("weir produce")), Ok(()));
        assert_eq!(check(&args("weir produce --producers 0")), Err("--producers must be positive".into()));
        assert_eq!(check(&args("weir e2e --duration 0")), Err("--duration must be positive".into()));
        let error = check(&args("weir consume --size 4")).unwrap_err();
        assert!(error.contains("--size") && error.contains('8'), "{error}");
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = histogram();
        for ms in 1..=1000u64 {
            record_latency(&mut h, Duration::from_millis(ms));
        }
        let p = Percentiles::of(&h);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        assert!(p.p999 >= p.p99 && p.max >= p.p999);
    }
}
