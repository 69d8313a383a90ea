//! `weir consume TOPIC`: prints messages, pulling with long polls.

use std::io::Write;
use std::time::Duration;

use super::{BrokerArgs, CliResult};

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;
use crate::client::Client;
use crate::proto;

const POLL_WAIT: Duration = Duration::from_millis(500);
const FETCH_BYTES: u32 = 1 << 20;

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

pub async fn run(args: ConsumeArgs) -> CliResult {
    let client = Client::connect(&args.broker.broker).await?;
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
                let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default());
                if args.verbose {
                    let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
                    writeln!(out, "{partition}:{} {key}\t{value}", record.offset)?;
                } else {
                    writeln!(out, "{value}")?;
                }
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
