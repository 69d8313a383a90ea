//! `nats-bench`: NATS JetStream measured the way `weir bench produce`
//! measures weir, so that benches/compare can set the two side by side.
//!
//! - `--streams` streams stand for weir's partitions: a JetStream stream is
//!   one Raft group, as a weir partition is. Stream `i` holds subject
//!   `<prefix>.<i>`, file storage, `--replicas` replicas.
//! - `--producers` producers, each on its own connection (so NATS is not
//!   held to one socket), send round robin over the streams, each keeping
//!   at most `--in-flight` publishes awaiting their acknowledgement: the
//!   same pipelining window as weir's producers.
//! - Latency is from the publish call to its acknowledgement, counted in an
//!   HDR histogram; throughput counts acknowledged messages only.
//!
//! Prints one JSON object with the same field names as `weir bench --json`.

use std::time::Duration;

use tokio::time::Instant;

use async_nats::jetstream::{context::ContextBuilder, stream};
use bytes::Bytes;
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use hdrhistogram::Histogram;

#[derive(Debug, Clone, Parser)]
#[command(about = "Publish to NATS JetStream and report throughput and latency")]
struct Args {
    /// Server addresses, comma-separated (nats://127.0.0.1:4222,...).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    servers: String,
    /// Prefix of the streams' names and subjects.
    #[arg(long, default_value = "bench")]
    prefix: String,
    #[arg(long, default_value_t = 6)]
    streams: usize,
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Bytes of each message's payload.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Publishes a producer may have awaiting acknowledgement.
    #[arg(long, default_value_t = 4096)]
    in_flight: usize,
    /// Messages per second in all (0: as fast as the window allows).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Messages in all; the run ends at this or `--duration`, whichever first.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Seconds the measured phase lasts at most.
    #[arg(long, default_value_t = 30)]
    duration: u64,
}

#[derive(serde::Serialize)]
struct Report {
    mode: &'static str,
    acks: String,
    message_bytes: usize,
    producers: usize,
    partitions: usize,
    in_flight: usize,
    /// The rate asked for (0: open loop).
    rate: u64,
    seconds: f64,
    messages: u64,
    bytes: u64,
    messages_per_sec: f64,
    megabytes_per_sec: f64,
    latency_ms: Percentiles,
    errors: u64,
}

#[derive(serde::Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
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

/// Microseconds, 1 µs to 600 s, three significant figures (as weir's).
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

struct Measured {
    messages: u64,
    errors: u64,
    latency: Histogram<u64>,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn check(args: &Args) -> Result<(), String> {
    let positive = [
        ("--streams", args.streams as u64),
        ("--replicas", args.replicas as u64),
        ("--producers", args.producers as u64),
        ("--in-flight", args.in_flight as u64),
        ("--messages", args.messages),
        ("--duration", args.duration),
        ("--size", args.size as u64),
    ];
    match positive.iter().find(|(_, value)| *value == 0) {
        Some((name, _)) => Err(format!("{name} must be positive")),
        None => Ok(()),
    }
}

fn servers(args: &Args) -> Vec<String> {
    args.servers.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Makes the streams afresh: deleted first if an earlier run left them.
async fn make_streams(args: &Args) -> Result<(), Error> {
    let client = async_nats::connect(servers(args)).await?;
    let context = ContextBuilder::new().timeout(Duration::from_secs(30)).build(client);
    for i in 0..args.streams {
        let name = format!("{}{i}", args.prefix);
        let _ = context.delete_stream(&name).await;
        context
            .create_stream(stream::Config {
                name,
                subjects: vec![format!("{}.{i}", args.prefix)],
                storage: stream::StorageType::File,
                num_replicas: args.replicas,
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

async fn produce(args: Args, index: usize, count: u64, deadline: Instant) -> Result<Measured, Error> {
    // The client picks one of the servers at random, so producers spread.
    let client = async_nats::connect(servers(&args)).await?;
    // The window is kept here; the context's own limit only has to allow it.
    let context = ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .max_ack_inflight(args.in_flight + 1)
        .backpressure_on_inflight(true)
        .build(client);
    let subjects: Vec<String> = (0..args.streams).map(|i| format!("{}.{i}", args.prefix)).collect();
    let payload = Bytes::from(vec![b'x'; args.size]);
    let mut measured = Measured { messages: 0, errors: 0, latency: histogram() };
    let mut waiting = FuturesUnordered::new();
    // Each acknowledgement is timed when its future completes; the loop
    // below polls them between publishes and while it waits for a due time,
    // so a finished acknowledgement is not left unnoticed (and its latency
    // inflated) while the producer is busy.
    let settle = |measured: &mut Measured, (sent, acked_at, acked): (Instant, Instant, Result<_, _>)| match acked {
        Ok(_) => {
            let micros = acked_at.saturating_duration_since(sent).as_micros() as u64;
            measured.latency.saturating_record(micros.max(1));
            measured.messages += 1;
        }
        Err(_) => measured.errors += 1,
    };
    // At a fixed rate, one message every `interval`, latency counted from
    // when it was due (a late send is the system's delay, not excused).
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.producers as f64 / args.rate as f64));
    let start = Instant::now();
    for n in 0..count {
        let due = match interval {
            Some(interval) => {
                let due = start + interval.mul_f64(n as f64);
                let sleep = tokio::time::sleep_until(due);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        biased;
                        Some(done) = waiting.next(), if !waiting.is_empty() => settle(&mut measured, done),
                        _ = &mut sleep => break,
                    }
                }
                due
            }
            None => Instant::now(),
        };
        if due >= deadline {
            break;
        }
        while waiting.len() >= args.in_flight {
            let done = waiting.next().await.expect("not empty");
            settle(&mut measured, done);
        }
        while let Some(Some(done)) = waiting.next().now_or_never() {
            settle(&mut measured, done);
        }
        let subject = subjects[(index + n as usize) % subjects.len()].clone();
        let sent = due;
        match context.publish(subject, payload.clone()).await {
            Ok(ack) => waiting.push(async move {
                let acked = ack.await;
                (sent, Instant::now(), acked)
            }),
            Err(_) => measured.errors += 1,
        }
    }
    while let Some(done) = waiting.next().await {
        settle(&mut measured, done);
    }
    Ok(measured)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    check(&args)?;
    make_streams(&args).await?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for p in 0..args.producers {
        let share =
            args.messages / args.producers as u64 + u64::from((p as u64) < args.messages % args.producers as u64);
        tasks.push(tokio::spawn(produce(args.clone(), p, share, deadline)));
    }
    let mut total = Measured { messages: 0, errors: 0, latency: histogram() };
    for task in tasks {
        let measured = task.await??;
        total.messages += measured.messages;
        total.errors += measured.errors;
        total.latency.add(&measured.latency)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let bytes = total.messages * args.size as u64;
    let report = Report {
        mode: "produce",
        acks: format!("jetstream R{}", args.replicas),
        message_bytes: args.size,
        producers: args.producers,
        partitions: args.streams,
        in_flight: args.in_flight,
        rate: args.rate,
        seconds,
        messages: total.messages,
        bytes,
        messages_per_sec: total.messages as f64 / seconds,
        megabytes_per_sec: bytes as f64 / seconds / 1e6,
        latency_ms: Percentiles::of(&total.latency),
        errors: total.errors,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
