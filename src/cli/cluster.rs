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

pub async fn run(command: ClusterCommand, broker: &str) -> CliResult {
    let client = Client::connect(broker).await?;
    match command {
        ClusterCommand::Status => status(&client).await,
    }
}

async fn status(client: &Client) -> CliResult {
    let cluster = client.describe_cluster().await?;
    println!("{} live broker(s) (answered by broker {})", cluster.brokers.len(), cluster.answered_by);
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
            let lag: Vec<String> = p.progress.iter().map(|r| format!("{}:{}", r.broker, r.lag)).collect();
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
