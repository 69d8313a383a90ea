//! `weir cluster status`: the live brokers and, for every partition, its
//! leader, replicas, high watermark and how far each replica lags.

use std::collections::BTreeMap;

use clap::Subcommand;

use super::CliResult;
use crate::client::Client;
use crate::proto;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Brokers, and every partition's leader, replicas and lag.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum PartitionCommand {
    /// Moves a partition, live, onto the given brokers (the first becomes
    /// its preferred leader), and waits until the move completes.
    Move {
        topic: String,
        partition: u32,
        /// Broker ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<u64>,
        /// Return once the move is recorded, without waiting for it.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the move, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

pub async fn run_partition(command: PartitionCommand, broker: &str) -> CliResult {
    let client = Client::connect(broker).await?;
    match command {
        PartitionCommand::Move { topic, partition, to, no_wait, timeout } => {
            let moved = client.move_partition(&topic, partition, to.clone()).await?;
            println!("{topic}/{partition}: moving from {:?} to {:?}", moved.members, moved.replicas);
            if no_wait {
                return Ok(());
            }
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
            let target = sorted(&to);
            loop {
                let described = client.describe_topic(&topic).await?;
                let p = described.partitions.iter().find(|p| p.partition == partition).ok_or("partition vanished")?;
                if sorted(&p.members) == target {
                    println!("{topic}/{partition}: now on {:?} (leader {})", p.members, p.leader);
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(
                        format!("the move did not complete within {timeout} s; voters still {:?}", p.members).into()
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

pub async fn run(command: ClusterCommand, broker: &str) -> CliResult {
    let client = Client::connect(broker).await?;
    match command {
        ClusterCommand::Status => status(&client).await,
    }
}

async fn status(client: &Client) -> CliResult {
    let cluster = client.describe_cluster().await?;
    println!("{} live broker(s) (answered by broker {})", cluster.brokers.len(), cluster.answered_by);
    match cluster.controller {
        0 => println!("controller: none elected"),
        id => println!("controller: broker {id} (epoch {})", cluster.controller_epoch),
    }
    let mut views = Vec::new();
    for broker in &cluster.brokers {
        println!("  broker {:>3}  {}", broker.id, broker.address);
        match client.via(&broker.address).await {
            Ok(view) => views.push((broker.id, view)),
            Err(error) => println!("    (unreachable: {error})"),
        }
    }
    let mut names: Vec<String> = client.list_topics().await?.into_iter().map(|t| t.name).collect();
    names.push(crate::broker::server::OFFSETS_TOPIC.to_owned());
    let mut leading: BTreeMap<u64, usize> = cluster.brokers.iter().map(|b| (b.id, 0)).collect();
    for name in names {
        // Each partition as its leader describes it (the leader knows the lag).
        let mut best: BTreeMap<u32, proto::PartitionDescription> = BTreeMap::new();
        let mut config = None;
        for (id, view) in &views {
            let Ok(topic) = view.describe_topic(&name).await else { continue };
            config = config.or(topic.config);
            for p in topic.partitions {
                let from_leader = p.leader == *id;
                if from_leader || !best.contains_key(&p.partition) {
                    best.insert(p.partition, p);
                }
            }
        }
        let Some(config) = config else { continue };
        println!(
            "\ntopic {name}: {} partition(s), replication {}",
            config.partitions,
            best.values().next().map_or(0, |p| p.replicas.len())
        );
        println!(
            "  {:>9}  {:>6}  {:<12}  {:>14}  lag (entries behind the leader)",
            "partition", "leader", "replicas", "high_watermark"
        );
        for p in best.values() {
            let leader = if p.leader == 0 { "none".to_owned() } else { p.leader.to_string() };
            if p.leader != 0 {
                *leading.entry(p.leader).or_default() += 1;
            }
            let replicas: Vec<String> = p.replicas.iter().map(u64::to_string).collect();
            let mut lag: Vec<String> = p.progress.iter().map(|r| format!("{}:{}", r.broker, r.lag)).collect();
            if !p.members.is_empty() && sorted(&p.members) != sorted(&p.replicas) {
                let members: Vec<String> = p.members.iter().map(u64::to_string).collect();
                lag.push(format!("(moving from {})", members.join(",")));
            }
            println!(
                "  {:>9}  {:>6}  {:<12}  {:>14}  {}",
                p.partition,
                leader,
                replicas.join(","),
                p.high_watermark,
                if lag.is_empty() { "-".to_owned() } else { lag.join(" ") }
            );
        }
    }
    let spread: Vec<String> = leading.iter().map(|(id, n)| format!("{id}={n}")).collect();
    println!("\npartitions led per broker: {}", spread.join(" "));
    Ok(())
}
