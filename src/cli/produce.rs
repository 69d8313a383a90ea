//! `weir produce TOPIC`: one message per line of standard input.

use std::io::BufRead;

use super::{BrokerArgs, CliResult};
use crate::client::{partition_for_key, Client};
use crate::proto;

/// Lines sent per produce request.
const LINES_PER_BATCH: usize = 500;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AcksArg {
    All,
    Leader,
    None,
}

impl From<AcksArg> for proto::Acks {
    fn from(acks: AcksArg) -> Self {
        match acks {
            AcksArg::All => proto::Acks::All,
            AcksArg::Leader => proto::Acks::Leader,
            AcksArg::None => proto::Acks::None,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Send every message to this partition (default: by key, else round robin).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

fn to_record(line: &str, separator: Option<&str>) -> proto::Record {
    let (key, value) = match separator.and_then(|sep| line.split_once(sep)) {
        Some((key, value)) => (Some(key.as_bytes().to_vec()), value),
        None => (None, line),
    };
    proto::Record { key, value: Some(value.as_bytes().to_vec()), ..proto::Record::default() }
}

pub async fn run(args: ProduceArgs) -> CliResult {
    let client = Client::connect(&args.broker.broker).await?;
    let partitions = client.describe_topic(&args.topic).await?.partitions.len() as u32;
    if let Some(p) = args.partition.filter(|p| *p >= partitions) {
        return Err(format!("topic {} has partitions 0..{partitions}, not {p}", args.topic).into());
    }
    let mut pending: Vec<Vec<proto::Record>> = vec![Vec::new(); partitions as usize];
    let mut round_robin = 0u32;
    let mut sent = 0usize;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let line = lines.next().transpose()?;
        if let Some(line) = &line {
            let record = to_record(line, args.key_separator.as_deref());
            let partition = match (args.partition, &record.key) {
                (Some(p), _) => p,
                (None, Some(key)) => partition_for_key(key, partitions),
                (None, None) => {
                    round_robin = (round_robin + 1) % partitions;
                    round_robin
                }
            };
            pending[partition as usize].push(record);
        }
        let finished = line.is_none();
        for (partition, records) in pending.iter_mut().enumerate() {
            if records.len() >= LINES_PER_BATCH || (finished && !records.is_empty()) {
                let batch = std::mem::take(records);
                sent += batch.len();
                client.produce(&args.topic, partition as u32, batch, args.acks.into()).await?;
            }
        }
        if finished {
            break;
        }
    }
    eprintln!("produced {sent} message(s) to {}", args.topic);
    Ok(())
}
