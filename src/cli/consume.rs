//! `weir consume TOPIC`: prints messages, pulling with long polls.

use std::io::Write;
use std::time::Duration;

use super::{BrokerArgs, CliResult};

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;
use crate::client::{Client, ConsumerConfig, GroupConsumer, OffsetReset};
use crate::proto;

const POLL_WAIT: Duration = Duration::from_millis(500);
const FETCH_BYTES: u32 = 1 << 20;
/// Records a push subscription may have in flight.
const PUSH_WINDOW: u64 = 500;

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Only this partition (default: all).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Where to start: beginning, end, an offset, or @TIMESTAMP_MS.
    #[arg(long, default_value = "end")]
    pub from: String,
    /// Stop after this many messages.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Stop once every partition is caught up instead of waiting for more.
    #[arg(long)]
    pub no_follow: bool,
    /// Print `partition:offset key<TAB>value` instead of the value alone.
    #[arg(long)]
    pub verbose: bool,
    /// Consume as a member of this group: share the partitions with its
    /// other members, start at its committed offsets (else at --from
    /// beginning|end), and commit as it goes.
    #[arg(long)]
    pub group: Option<String>,
    /// Have the broker push records (with flow control) instead of pulling.
    #[arg(long, conflicts_with = "group")]
    pub push: bool,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

async fn start_offset(client: &Client, topic: &str, partition: u32, from: &str) -> Fallible<u64> {
    let (spec, timestamp_ms) = match from {
        "beginning" => (proto::OffsetSpec::Earliest, 0),
        "end" => (proto::OffsetSpec::Latest, 0),
        time if time.starts_with('@') => {
            let ms = time[1..].parse::<i64>().map_err(|_| format!("--from {time}: expected @MILLISECONDS"))?;
            (proto::OffsetSpec::Timestamp, ms)
        }
        offset => {
            return Ok(offset
                .parse::<u64>()
                .map_err(|_| format!("--from {offset}: expected beginning, end, an offset or @TIME"))?)
        }
    };
    Ok(client.list_offset(topic, partition, spec, timestamp_ms).await?)
}

fn print(out: &mut impl Write, verbose: bool, partition: u32, record: &proto::Record) -> std::io::Result<()> {
    let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default());
    if verbose {
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
        writeln!(out, "{partition}:{} {key}\t{value}", record.offset)
    } else {
        writeln!(out, "{value}")
    }
}

async fn run_group(client: Client, args: &ConsumeArgs, group: &str) -> CliResult {
    let reset = match args.from.as_str() {
        "beginning" => OffsetReset::Earliest,
        "end" => OffsetReset::Latest,
        other => return Err(format!("with --group, --from is beginning or end, not {other}").into()),
    };
    let config = ConsumerConfig { reset, ..ConsumerConfig::new(group, &[args.topic.as_str()]) };
    let mut consumer = GroupConsumer::join(client, config).await?;
    let limit = args.max_messages.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut idle_polls = 0;
    while printed < limit {
        let records = consumer.poll(POLL_WAIT).await?;
        idle_polls = if records.is_empty() { idle_polls + 1 } else { 0 };
        let mut out = std::io::stdout().lock();
        let shown = records.len().min((limit - printed) as usize);
        for consumed in &records[..shown] {
            print(&mut out, args.verbose, consumed.partition, &consumed.record)?;
            printed += 1;
        }
        // Hand back what was fetched but not shown, so it is not committed.
        if let Some(first_unshown) = records.get(shown) {
            consumer.seek(&first_unshown.topic, first_unshown.partition, first_unshown.record.offset)?;
        }
        if args.no_follow && idle_polls >= 2 {
            break;
        }
    }
    consumer.close().await?;
    Ok(())
}

/// Push: one subscription per partition; credit is granted back only as
/// records are printed, so a slow terminal slows the broker, not the reverse.
async fn run_push(client: Client, args: &ConsumeArgs, partitions: &[u32], offsets: &[u64]) -> CliResult {
    let (sink, mut records) = tokio::sync::mpsc::channel::<(u32, Vec<proto::Record>)>(partitions.len());
    for (&partition, &offset) in partitions.iter().zip(offsets) {
        let credit = proto::Credit { messages: PUSH_WINDOW, bytes: 0 };
        let mut subscription = client.subscribe(&args.topic, partition, offset, credit).await?;
        let sink = sink.clone();
        tokio::spawn(async move {
            while let Ok(Some(push)) = subscription.next().await {
                let count = push.records.len() as u64;
                if sink.send((partition, push.records)).await.is_err() {
                    return;
                }
                if subscription.grant(count, 0).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(sink);
    let limit = args.max_messages.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    while let Some((partition, batch)) = records.recv().await {
        let mut out = std::io::stdout().lock();
        for record in &batch {
            print(&mut out, args.verbose, partition, record)?;
            printed += 1;
            if printed >= limit {
                return Ok(());
            }
        }
    }
    Ok(())
}

pub async fn run(args: ConsumeArgs) -> CliResult {
    let client = Client::connect(&args.broker.broker).await?;
    if let Some(group) = args.group.clone() {
        return run_group(client, &args, &group).await;
    }
    let partitions = client.describe_topic(&args.topic).await?.partitions.len() as u32;
    let chosen: Vec<u32> = match args.partition {
        Some(p) if p >= partitions => {
            return Err(format!("topic {} has partitions 0..{partitions}, not {p}", args.topic).into())
        }
        Some(p) => vec![p],
        None => (0..partitions).collect(),
    };
    let mut offsets = Vec::with_capacity(chosen.len());
    for &partition in &chosen {
        offsets.push(start_offset(&client, &args.topic, partition, &args.from).await?);
    }
    if args.push {
        return run_push(client, &args, &chosen, &offsets).await;
    }
    let limit = args.max_messages.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    // With one partition a long poll waits on it; with several, a short wait
    // per partition keeps all of them moving.
    let wait = if chosen.len() == 1 { POLL_WAIT } else { POLL_WAIT / chosen.len() as u32 };
    loop {
        let mut caught_up = true;
        for (i, &partition) in chosen.iter().enumerate() {
            let response = client.fetch(&args.topic, partition, offsets[i], FETCH_BYTES, wait).await?;
            offsets[i] = response.next_offset;
            caught_up &= response.next_offset >= response.high_watermark;
            let mut out = stdout.lock();
            for record in response.records {
                print(&mut out, args.verbose, partition, &record)?;
                printed += 1;
                if printed >= limit {
                    return Ok(());
                }
            }
        }
        if caught_up && args.no_follow {
            return Ok(());
        }
    }
}
