//! `weir cluster status`: the live brokers and, for every partition, its
//! leader, replicas, high watermark and how far each replica lags.
//! `weir cluster health`: whether the cluster can lose any one broker now
//! (what a rolling restart waits for between brokers).
//! `weir cluster decommission|recommission`: scale in.

use std::collections::BTreeMap;

use clap::Subcommand;

use super::CliResult;
use crate::client::Client;
use crate::proto;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Brokers, and every partition's leader, replicas and lag.
    Status,
    /// Whether any one broker may go down now: every broker live, every
    /// partition led, its replicas caught up, none repairing or moving.
    /// Prints what is wrong and fails if anything is.
    Health {
        /// How many brokers must be live (by default, every broker that
        /// holds a replica).
        #[arg(long)]
        brokers: Option<usize>,
        /// Raft entries a replica may lag behind its leader and still
        /// count as caught up.
        #[arg(long, default_value_t = 0)]
        max_lag: u64,
    },
    /// Takes a broker out of the cluster (scale in): its replicas move to
    /// the other brokers, and none are placed on it. Waits until it holds
    /// none, when it may be stopped for good. Do not bring its id back
    /// with an empty disk: add a broker with a new id instead.
    Decommission {
        broker_id: u64,
        /// Return once the broker is marked, without waiting for it to drain.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for it to drain, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Lifts a broker's decommissioned mark: it may receive replicas again.
    Recommission { broker_id: u64 },
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
            say!("{topic}/{partition}: moving from {:?} to {:?}", moved.members, moved.replicas);
            if no_wait {
                return Ok(());
            }
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
            let target = sorted(&to);
            loop {
                let described = client.describe_topic(&topic).await?;
                let p = described.partitions.iter().find(|p| p.partition == partition).ok_or("partition vanished")?;
                if sorted(&p.members) == target {
                    say!("{topic}/{partition}: now on {:?} (leader {})", p.members, p.leader);
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

/// Whether the partition's voters are not yet its assigned replicas.
fn moving(p: &proto::PartitionDescription) -> bool {
    !p.members.is_empty() && sorted(&p.members) != sorted(&p.replicas)
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
        ClusterCommand::Health { brokers, max_lag } => health(&client, brokers, max_lag).await,
        ClusterCommand::Decommission { broker_id, no_wait, timeout } => {
            let status = client.decommission_broker(broker_id).await?;
            say!("broker {broker_id}: decommissioned; {} partition(s) still name it", status.replicas);
            if no_wait {
                return Ok(());
            }
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
            loop {
                let cluster = client.describe_cluster().await?;
                let status = cluster.decommissioned.iter().find(|b| b.id == broker_id);
                match status {
                    Some(status) if status.replicas == 0 => {
                        say!("broker {broker_id}: drained; it may be stopped for good");
                        return Ok(());
                    }
                    Some(status) if tokio::time::Instant::now() >= deadline => {
                        return Err(format!(
                            "broker {broker_id} did not drain within {timeout} s; {} partition(s) still name it",
                            status.replicas
                        )
                        .into())
                    }
                    Some(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
                    None => return Err(format!("broker {broker_id} was recommissioned meanwhile").into()),
                }
            }
        }
        ClusterCommand::Recommission { broker_id } => {
            let status = client.recommission_broker(broker_id).await?;
            say!("broker {broker_id}: recommissioned (live: {})", status.live);
            Ok(())
        }
    }
}

/// One partition as the cluster sees it.
struct PartitionView {
    topic: String,
    /// As its leader describes it (the leader knows the lag), else as any
    /// broker does.
    description: proto::PartitionDescription,
    /// Brokers whose replica waits to be repaired.
    repairing: Vec<u64>,
}

/// One topic as the cluster sees it.
struct TopicView {
    name: String,
    /// `None` if no broker described the topic.
    config: Option<proto::TopicConfig>,
    partitions: Vec<PartitionView>,
}

/// Every topic (the offsets topic too), each partition asked of every
/// broker in `views` (broker id, a client of that broker).
async fn survey(client: &Client, views: &[(u64, Client)]) -> Result<Vec<TopicView>, Box<dyn std::error::Error>> {
    let mut names: Vec<String> = client.list_topics().await?.into_iter().map(|t| t.name).collect();
    names.push(crate::broker::server::OFFSETS_TOPIC.to_owned());
    let mut out = Vec::new();
    for name in names {
        let mut best: BTreeMap<u32, PartitionView> = BTreeMap::new();
        let mut config = None;
        for (id, view) in views {
            let Ok(topic) = view.describe_topic(&name).await else { continue };
            config = config.or(topic.config);
            for p in topic.partitions {
                let from_leader = p.leader == *id;
                let entry = best.entry(p.partition).or_insert_with(|| PartitionView {
                    topic: name.clone(),
                    description: p.clone(),
                    repairing: Vec::new(),
                });
                if p.hosted && p.repairing {
                    entry.repairing.push(*id);
                }
                if from_leader {
                    entry.description = p;
                }
            }
        }
        out.push(TopicView { name, config, partitions: best.into_values().collect() });
    }
    Ok(out)
}

/// What keeps the cluster from losing any one broker safely; empty if
/// nothing does.
fn health_problems(
    live: &[u64],
    expected_brokers: Option<usize>,
    partitions: &[PartitionView],
    max_lag: u64,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(expected) = expected_brokers {
        if live.len() < expected {
            problems.push(format!("{} live broker(s), {expected} expected", live.len()));
        }
    }
    let mut missing: Vec<u64> = partitions
        .iter()
        .flat_map(|p| p.description.replicas.iter().chain(&p.description.members).copied())
        .filter(|id| !live.contains(id))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    for id in missing {
        problems.push(format!("broker {id} holds replicas but is not live"));
    }
    for view in partitions {
        let p = &view.description;
        let name = format!("{}/{}", view.topic, p.partition);
        if p.leader == 0 {
            problems.push(format!("{name}: no leader"));
            continue;
        }
        if moving(p) {
            problems.push(format!("{name}: moving from {:?} to {:?}", sorted(&p.members), sorted(&p.replicas)));
        }
        for id in &view.repairing {
            problems.push(format!("{name}: the replica on broker {id} is being repaired"));
        }
        let voters = if p.members.is_empty() { &p.replicas } else { &p.members };
        for id in voters.iter().filter(|id| **id != p.leader) {
            match p.progress.iter().find(|r| r.broker == *id) {
                Some(r) if r.lag <= max_lag => {}
                Some(r) => problems.push(format!("{name}: the replica on broker {id} lags {} entries", r.lag)),
                None => problems.push(format!("{name}: the leader reports no progress for broker {id}")),
            }
        }
    }
    problems
}

async fn health(client: &Client, expected_brokers: Option<usize>, max_lag: u64) -> CliResult {
    let cluster = client.describe_cluster().await?;
    let live: Vec<u64> = cluster.brokers.iter().map(|b| b.id).collect();
    let mut views = Vec::new();
    for broker in &cluster.brokers {
        if let Ok(view) = client.via(&broker.address).await {
            views.push((broker.id, view));
        }
    }
    let partitions: Vec<PartitionView> =
        survey(client, &views).await?.into_iter().flat_map(|topic| topic.partitions).collect();
    let problems = health_problems(&live, expected_brokers, &partitions, max_lag);
    if problems.is_empty() {
        say!("healthy: {} live broker(s), {} partition(s) led and caught up", live.len(), partitions.len());
        return Ok(());
    }
    say!("unhealthy:");
    for problem in &problems {
        say!("  {problem}");
    }
    Err(format!("{} problem(s) keep a broker from going down safely", problems.len()).into())
}

async fn status(client: &Client) -> CliResult {
    let cluster = client.describe_cluster().await?;
    say!("{} live broker(s) (answered by broker {})", cluster.brokers.len(), cluster.answered_by);
    match cluster.controller {
        0 => say!("controller: none elected"),
        id => say!("controller: broker {id} (epoch {})", cluster.controller_epoch),
    }
    let mut views = Vec::new();
    for broker in &cluster.brokers {
        say!("  broker {:>3}  {}", broker.id, broker.address);
        match client.via(&broker.address).await {
            Ok(view) => views.push((broker.id, view)),
            Err(error) => say!("    (unreachable: {error})"),
        }
    }
    for broker in &cluster.decommissioned {
        let state = if broker.replicas == 0 {
            "drained".to_owned()
        } else {
            format!("{} partition(s) to move", broker.replicas)
        };
        let live = if broker.live { "live" } else { "down" };
        say!("  broker {:>3}  decommissioned, {live}, {state}", broker.id);
    }
    let mut leading: BTreeMap<u64, usize> = cluster.brokers.iter().map(|b| (b.id, 0)).collect();
    for TopicView { name, config, partitions } in survey(client, &views).await? {
        let Some(config) = config else { continue };
        let best: Vec<proto::PartitionDescription> = partitions.into_iter().map(|view| view.description).collect();
        say!(
            "\ntopic {name}: {} partition(s), replication {}",
            config.partitions,
            best.first().map_or(0, |p| p.replicas.len())
        );
        say!(
            "  {:>9}  {:>6}  {:<12}  {:>14}  lag (entries behind the leader)",
            "partition",
            "leader",
            "replicas",
            "high_watermark"
        );
        for p in &best {
            let leader = if p.leader == 0 { "none".to_owned() } else { p.leader.to_string() };
            if p.leader != 0 {
                *leading.entry(p.leader).or_default() += 1;
            }
            let replicas: Vec<String> = p.replicas.iter().map(u64::to_string).collect();
            let mut lag: Vec<String> = p.progress.iter().map(|r| format!("{}:{}", r.broker, r.lag)).collect();
            if moving(p) {
                let members: Vec<String> = p.members.iter().map(u64::to_string).collect();
                lag.push(format!("(moving from {})", members.join(",")));
            }
            say!(
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
    say!("\npartitions led per broker: {}", spread.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(leader: u64, replicas: &[u64], lags: &[(u64, u64)]) -> PartitionView {
        PartitionView {
            topic: "t".into(),
            description: proto::PartitionDescription {
                partition: 0,
                leader,
                replicas: replicas.to_vec(),
                members: replicas.to_vec(),
                progress: lags.iter().map(|&(broker, lag)| proto::ReplicaProgress { broker, lag }).collect(),
                ..Default::default()
            },
            repairing: Vec::new(),
        }
    }

    #[test]
    fn a_led_caught_up_cluster_is_healthy() {
        let p = partition(1, &[1, 2, 3], &[(1, 0), (2, 0), (3, 2)]);
        assert!(health_problems(&[1, 2, 3], Some(3), &[p], 2).is_empty());
    }

    #[test]
    fn each_reason_a_broker_may_not_go_down_is_named() {
        let lagging = partition(1, &[1, 2, 3], &[(2, 0), (3, 5)]);
        assert_eq!(health_problems(&[1, 2, 3], None, &[lagging], 0), ["t/0: the replica on broker 3 lags 5 entries"]);
        let leaderless = partition(0, &[1, 2, 3], &[]);
        assert_eq!(health_problems(&[1, 2, 3], None, &[leaderless], 0), ["t/0: no leader"]);
        let unreported = partition(1, &[1, 2, 3], &[(2, 0)]);
        assert_eq!(
            health_problems(&[1, 2, 3], None, &[unreported], 0),
            ["t/0: the leader reports no progress for broker 3"]
        );
        let down = partition(1, &[1, 2, 4], &[(2, 0), (4, 0)]);
        assert_eq!(
            health_problems(&[1, 2, 3], Some(4), &[down], 0),
            ["3 live broker(s), 4 expected", "broker 4 holds replicas but is not live"]
        );
        let mut moving = partition(1, &[1, 2, 3], &[(2, 0), (3, 0)]);
        moving.description.replicas = vec![1, 2, 4];
        moving.repairing = vec![2];
        assert_eq!(
            health_problems(&[1, 2, 3, 4], None, &[moving], 0),
            ["t/0: moving from [1, 2, 3] to [1, 2, 4]", "t/0: the replica on broker 2 is being repaired"]
        );
    }
}
