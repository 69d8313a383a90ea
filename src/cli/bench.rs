//! `weir bench produce`: a load generator that prints what it measured.
//!
//! Several concurrent producers each send batches of fixed-size records
//! round robin over the topic's partitions, one request in flight each, and
//! the run reports messages and bytes per second and request latency
//! percentiles (to the acknowledgement the `--acks` level promises).

use std::time::Duration;

use clap::Subcommand;

use super::produce::AcksArg;
use super::{BrokerArgs, CliResult};
use crate::client::{Client, ClientError};
use crate::proto;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produces fixed-size records as fast as acknowledgements allow.
    Produce(ProduceBench),
}

#[derive(Debug, clap::Args)]
pub struct ProduceBench {
    /// The topic to write (created if missing).
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions of the topic if this run creates it.
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// Messages to send in all.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Bytes of each message's value.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Messages per produce request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Producers sending at once, each with one request in flight.
    #[arg(long, default_value_t = 12)]
    pub concurrency: usize,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

pub async fn run(command: BenchCommand) -> CliResult {
    match command {
        BenchCommand::Produce(args) => produce(args).await,
    }
}

async fn produce(args: ProduceBench) -> CliResult {
    if args.batch == 0 || args.concurrency == 0 || args.messages == 0 {
        return Err("--batch, --concurrency and --messages must be positive".into());
    }
    let client = Client::connect(&args.broker.broker).await?;
    let partitions = match client.describe_topic(&args.topic).await {
        Ok(topic) => topic.partitions.len() as u32,
        Err(_) => {
            let config = proto::TopicConfig { partitions: args.partitions, ..Default::default() };
            let created = client.create_topic(&args.topic, config).await?;
            created.partitions.len() as u32
        }
    };
    let acks: proto::Acks = args.acks.into();
    let requests = args.messages.div_ceil(args.batch as u64);
    let record = proto::Record { value: Some(vec![b'x'; args.size]), ..Default::default() };
    // Warm up: every partition has a leader and the client knows it.
    for partition in 0..partitions {
        client.produce(&args.topic, partition, vec![record.clone()], acks).await?;
    }
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let (client, topic, record) = (client.clone(), args.topic.clone(), record.clone());
        let (batch, concurrency) = (args.batch, args.concurrency as u64);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut request = worker as u64;
            while request < requests {
                let partition = (request % u64::from(partitions)) as u32;
                let sent = tokio::time::Instant::now();
                client.produce(&topic, partition, vec![record.clone(); batch], acks).await?;
                latencies.push(sent.elapsed());
                request += concurrency;
            }
            Ok::<_, ClientError>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let messages = requests * args.batch as u64;
    let bytes = messages * args.size as u64;
    println!(
        "produce acks={:?}: {messages} messages of {} bytes in {elapsed:.2} s over {partitions} partitions, {} producers, {} per request",
        args.acks, args.size, args.concurrency, args.batch
    );
    println!(
        "  {:.0} messages/s  {:.1} MB/s  request latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        messages as f64 / elapsed,
        bytes as f64 / elapsed / 1e6,
        ms(percentile(0.50)),
        ms(percentile(0.99)),
        ms(*latencies.last().expect("at least one request"))
    );
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
