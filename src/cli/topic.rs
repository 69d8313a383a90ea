//! `weir topic create|list|describe|delete`.

use clap::Subcommand;

use super::CliResult;
use crate::client::Client;
use crate::proto;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Creates a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Delete data older than this many milliseconds (default 7 days).
        #[arg(long)]
        retention_ms: Option<i64>,
        /// Keep at most about this many bytes per partition.
        #[arg(long)]
        retention_bytes: Option<u64>,
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// Replicas per partition (default: the broker's, at most the live brokers).
        #[arg(long)]
        replication_factor: Option<u32>,
    },
    /// Lists topics with their partitions.
    List,
    /// Shows a topic's config and partitions.
    Describe { name: String },
    /// Deletes a topic and its data.
    Delete { name: String },
}

fn print_topic(topic: &proto::TopicDescription) -> std::io::Result<()> {
    let config = topic.config.unwrap_or_default();
    let retention = match (config.retention_ms, config.retention_bytes) {
        (None, None) => "default".to_owned(),
        (ms, bytes) => format!(
            "{}{}",
            ms.map(|ms| format!("{ms} ms ")).unwrap_or_default(),
            bytes.map(|b| format!("{b} bytes")).unwrap_or_default()
        ),
    };
    say!("{}  partitions={}  retention={}", topic.name, config.partitions, retention.trim());
    for p in &topic.partitions {
        let replicas: Vec<String> = p.replicas.iter().map(u64::to_string).collect();
        let leader = if p.leader == 0 { "?".to_owned() } else { p.leader.to_string() };
        // Damage at rest this broker found in its replica (and had repaired).
        let repairs = match (p.repairing, p.repairs) {
            (true, n) => format!("  repairing (repairs={n})"),
            (false, 0) => String::new(),
            (false, n) => format!("  repairs={n}"),
        };
        // Records this replica had made durable and recovery found lost.
        let losses = match p.losses {
            0 => String::new(),
            n => format!("  LOST {} offsets in {n} recoveries", p.lost_offsets),
        };
        say!(
            "  partition {:>3}  leader={leader} replicas=[{}] start={} high_watermark={} end={} bytes={} segments={}{repairs}{losses}",
            p.partition,
            replicas.join(","),
            p.log_start_offset,
            p.high_watermark,
            p.log_end_offset,
            p.size_bytes,
            p.segments
        );
    }
    Ok(())
}

pub async fn run(command: TopicCommand, broker: &str) -> CliResult {
    let client = Client::connect(broker).await?;
    match command {
        TopicCommand::Create { name, partitions, retention_ms, retention_bytes, segment_bytes, replication_factor } => {
            let config =
                proto::TopicConfig { partitions, retention_ms, retention_bytes, segment_bytes, replication_factor };
            let topic = client.create_topic(&name, config).await?;
            say!("created topic {} with {} partition(s)", topic.name, topic.partitions.len());
        }
        TopicCommand::List => {
            for topic in client.list_topics().await? {
                say!("{}\t{} partition(s)", topic.name, topic.partitions.len());
            }
        }
        TopicCommand::Describe { name } => print_topic(&client.describe_topic(&name).await?)?,
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            say!("deleted topic {name}");
        }
    }
    Ok(())
}
