//! Partitions moving between brokers while producers write: an operator's
//! move that removes the partition's own leader, the controller replacing
//! a broker that is gone for good, and a new broker receiving its share.
//! After each, every acknowledged message is where it was acknowledged,
//! once, in order.
//!
//! Both builds: a real etcd and in-process brokers on tokio; the simulated
//! etcd and one node per broker under madsim (see `sim/src/cluster.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use weir::broker::error::{BrokerError, ErrorCode};
use weir::client::{Client, Producer, ProducerConfig};
use weir::proto;
use weir::sys::disk::Disk;

use weir_sim::cluster;

use cluster::{check_history, describe_everywhere, leaders, Acknowledged, Cluster};

const TEST_DEADLINE: Duration = Duration::from_secs(240);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cluster_moves=info,weir=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

/// `producers` idempotent producers writing `messages` each, acks=all,
/// round-robin over `partitions`; values are `p<producer>-<n>`.
fn produce(
    cluster: &Cluster,
    bootstrap: &str,
    topic: &'static str,
    producers: u32,
    messages: u32,
    partitions: u32,
) -> Vec<impl std::future::Future<Output = Acknowledged>> {
    let mut running = Vec::new();
    for producer in 0..producers {
        let address = bootstrap.to_owned();
        let task = cluster.spawn_client(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config = ProducerConfig { batch_bytes_max: 0, retries: 40, ..ProducerConfig::default() };
            let sender = Producer::new(client, config);
            let mut acknowledged = Vec::new();
            for n in 0..messages {
                let partition = (producer + n) % partitions;
                let value = format!("p{producer}-{n}");
                let record = weir::client::producer::record(None, value.as_bytes(), 1);
                let delivered = sender.send(topic, Some(partition), record).await.expect("queued").wait().await;
                match delivered {
                    Ok(delivered) => acknowledged.push((partition, delivered.offset, value)),
                    Err(error) => tracing::info!(%error, value, "write not acknowledged"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acknowledged
        });
        running.push(async move { task.await.expect("producer task") });
    }
    running
}

/// Waits (bounded) until every partition of `topic` satisfies `done`
/// (given its description) and has a leader; returns the description.
async fn wait_until(
    client: &Client,
    topic: &str,
    what: &str,
    done: impl Fn(&proto::PartitionDescription) -> bool,
) -> proto::TopicDescription {
    let mut last = None;
    for _ in 0..1200 {
        if let Some(described) = describe_everywhere(client, topic).await {
            if described.partitions.iter().all(|p| p.leader != 0 && done(p)) {
                return described;
            }
            last = Some(described);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen; last seen {last:#?}");
}

/// The partition directories broker `id` keeps of topic `topic`.
fn partition_dirs(disk: &dyn Disk, id: u64, topic: &str) -> BTreeSet<String> {
    let topics = Path::new("/data").join(format!("broker-{id}")).join("topics");
    let mut dirs = BTreeSet::new();
    for name in disk.list_subdirs(&topics).unwrap_or_default() {
        if name.rsplit_once('-').is_some_and(|(prefix, _)| prefix == topic) {
            dirs.extend(disk.list_subdirs(&topics.join(&name)).unwrap_or_default());
        }
    }
    dirs
}

#[tokio::test]
async fn a_partition_moves_off_its_leader_while_producers_write() {
    init_tracing();
    tokio::time::timeout(TEST_DEADLINE, operator_move()).await.expect("the test finishes within its deadline");
}

async fn operator_move() {
    // Balancing off: the test moves the partition, nobody else.
    let cluster = Cluster::start("operator-move", 4, |c| c.auto_balance = false).await;
    let bootstrap = cluster.addresses().join(",");
    let address = bootstrap.clone();
    let (replicas, leader) = cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config = proto::TopicConfig { partitions: 2, replication_factor: Some(3), ..Default::default() };
            let created = client.create_topic("moving", config).await.expect("create");
            let leaders = leaders(&client, "moving").await;
            (created.partitions[0].replicas.clone(), leaders[&0].0)
        })
        .await;
    let newcomer = (1..=4).find(|b| !replicas.contains(b)).expect("a broker without a replica");
    // The newcomer takes the leader's place: the leader removes itself.
    let target: Vec<u64> = replicas.iter().map(|&b| if b == leader { newcomer } else { b }).collect();
    tracing::info!(?replicas, leader, ?target, "moving partition 0 off its leader");

    let producers = produce(&cluster, &bootstrap, "moving", 3, 60, 2);
    let address = bootstrap.clone();
    let moved_target = target.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let moved = client.move_partition("moving", 0, moved_target.clone()).await.expect("move");
            assert_eq!(moved.replicas, moved_target);

            tracing::info!("bad moves are refused with what is wrong, and change nothing");
            let error = client.move_partition("moving", 0, vec![1, 99, 2]).await.expect_err("no broker 99");
            assert_eq!(error.code(), Some(ErrorCode::InvalidRequest), "{error}");
            assert!(error.to_string().contains("99"), "{error}");
            let error = client.move_partition("moving", 0, vec![1, 1, 2]).await.expect_err("a broker twice");
            assert_eq!(error.code(), Some(ErrorCode::InvalidRequest), "{error}");
            let error = client.move_partition("moving", 0, vec![]).await.expect_err("no replicas");
            assert_eq!(error.code(), Some(ErrorCode::InvalidRequest), "{error}");
            let error = client.move_partition("moving", 5, vec![1, 2, 3]).await.expect_err("no partition 5");
            assert_eq!(error.code(), Some(ErrorCode::UnknownPartition), "{error}");
            let error = client.move_partition("absent", 0, vec![1, 2, 3]).await.expect_err("no such topic");
            assert_eq!(error.code(), Some(ErrorCode::UnknownTopic), "{error}");

            let want = sorted(&moved_target);
            let done = wait_until(&client, "moving", "the move", |p| {
                p.partition != 0 || (sorted(&p.members) == want && want.contains(&p.leader))
            })
            .await;
            assert_eq!(done.partitions[0].replicas, moved_target, "the refused moves changed nothing");
            assert!(moved_target.contains(&done.partitions[0].leader), "{:?}", done.partitions[0]);
        })
        .await;

    let mut acknowledged = Vec::new();
    for producer in producers {
        acknowledged.extend(producer.await);
    }
    assert!(acknowledged.len() >= 150, "most writes were acknowledged: {}", acknowledged.len());

    tracing::info!("the removed leader lets its replica go; every acknowledged message is there");
    let old_leader_address = cluster.addresses()[(leader - 1) as usize].clone();
    let preferred_address = cluster.addresses()[(target[0] - 1) as usize].clone();
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let direct = client.via(&old_leader_address).await.expect("connect to the old leader");
            let mut dropped = false;
            for _ in 0..400 {
                let described = direct.describe_topic("moving").await.expect("the old leader answers");
                if !described.partitions[0].hosted {
                    dropped = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(dropped, "the old leader still holds a replica of partition 0");

            tracing::info!("a write sent to the old leader: NOT_LEADER, naming the new preferred leader");
            let mut raw = proto::producer_client::ProducerClient::connect(format!("http://{old_leader_address}"))
                .await
                .expect("connect to the old leader");
            let request = proto::ProduceRequest {
                topic: "moving".into(),
                partition: 0,
                acks: proto::Acks::All as i32,
                records: vec![proto::Record { value: Some(b"stray".to_vec()), ..Default::default() }],
                batch: Default::default(),
            };
            let status = raw.produce(request).await.expect_err("the old leader refuses");
            let error = BrokerError::from_status(&status);
            assert_eq!(error.code, ErrorCode::NotLeader, "{error}");
            assert_eq!(error.leader.as_deref(), Some(preferred_address.as_str()), "{error}");

            check_history(&client, "moving", 2, &acknowledged).await;
            let stored = cluster::read_partition(&client, "moving", 0).await;
            assert!(stored.iter().all(|(_, v)| v != "stray"), "the refused write left nothing behind");
        })
        .await;
    let dirs = partition_dirs(&cluster.disk(leader), leader, "moving");
    assert!(!dirs.contains("0"), "the old leader's data of partition 0 is gone: {dirs:?}");
    let dirs = partition_dirs(&cluster.disk(newcomer), newcomer, "moving");
    assert!(dirs.contains("0"), "the newcomer holds partition 0: {dirs:?}");
}

#[tokio::test]
async fn the_controller_replaces_a_gone_broker_with_a_new_one() {
    init_tracing();
    tokio::time::timeout(TEST_DEADLINE, heal()).await.expect("the test finishes within its deadline");
}

async fn heal() {
    let mut cluster = Cluster::start("heal", 3, |c| c.replace_broker_after_ms = 3_000).await;
    let bootstrap = cluster.addresses().join(",");
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config = proto::TopicConfig { partitions: 3, replication_factor: Some(3), ..Default::default() };
            client.create_topic("healing", config).await.expect("create");
            leaders(&client, "healing").await;
        })
        .await;
    let producers = produce(&cluster, &bootstrap, "healing", 3, 80, 3);

    tokio::time::sleep(Duration::from_millis(300)).await;
    tracing::info!("broker 3 dies for good; broker 4 joins");
    cluster.kill(3, 7).await;
    let newcomer = cluster.add_broker().await;
    assert_eq!(newcomer, 4);
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let healed = wait_until(&client, "healing", "healing", |p| sorted(&p.members) == [1, 2, 4]).await;
            for p in &healed.partitions {
                assert_eq!(sorted(&p.replicas), [1, 2, 4], "broker 4 took broker 3's place: {p:?}");
            }
            let cluster = client.describe_cluster().await.expect("describe cluster");
            assert_ne!(cluster.controller, 0, "a controller is elected");
            assert_ne!(cluster.controller, 3, "the dead broker is not the controller");
        })
        .await;

    let mut acknowledged = Vec::new();
    for producer in producers {
        acknowledged.extend(producer.await);
    }
    assert!(acknowledged.len() >= 200, "most writes were acknowledged: {}", acknowledged.len());
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            check_history(&client, "healing", 3, &acknowledged).await;
            // The new replica holds everything: read it from broker 4 alone.
            let described = client.describe_topic("healing").await.expect("describe");
            let high: BTreeMap<u32, u64> =
                described.partitions.iter().map(|p| (p.partition, p.high_watermark)).collect();
            let four = client
                .via(&client.describe_cluster().await.unwrap().brokers.iter().find(|b| b.id == 4).unwrap().address)
                .await
                .unwrap();
            let local = wait_until(&four, "healing", "broker 4 catching up", |p| {
                p.hosted && p.log_end_offset >= high[&p.partition]
            })
            .await;
            assert_eq!(local.partitions.len(), 3);
        })
        .await;
}

#[tokio::test]
async fn a_decommissioned_broker_is_drained_while_producers_write() {
    init_tracing();
    tokio::time::timeout(TEST_DEADLINE, scale_in()).await.expect("the test finishes within its deadline");
}

async fn scale_in() {
    let mut cluster = Cluster::start("scale-in", 4, |_| {}).await;
    let bootstrap = cluster.addresses().join(",");
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config = proto::TopicConfig { partitions: 4, replication_factor: Some(3), ..Default::default() };
            client.create_topic("shrinking", config).await.expect("create");
            leaders(&client, "shrinking").await;
        })
        .await;
    let producers = produce(&cluster, &bootstrap, "shrinking", 2, 80, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let marked = client.decommission_broker(1).await.expect("broker 1 decommissioned");
            assert!(marked.decommissioned && marked.live && marked.replicas > 0, "{marked:?}");
            // Three brokers are left for partitions of three replicas: a
            // second would leave two, and broker 2 would never drain.
            let refused = client.decommission_broker(2).await.expect_err("too few brokers would be left");
            assert_eq!(refused.code(), Some(ErrorCode::InvalidRequest), "{refused}");
            assert!(refused.to_string().contains("add a broker first"), "{refused}");
            let refused = client.decommission_broker(9).await.expect_err("no broker 9");
            assert!(refused.to_string().contains("neither live nor holds a replica"), "{refused}");
            let refused = client.move_partition("shrinking", 0, vec![1, 2, 3]).await.expect_err("1 is leaving");
            assert!(refused.to_string().contains("decommissioned"), "{refused}");
            let drained = wait_until(&client, "shrinking", "broker 1 drained", |p| {
                !p.replicas.contains(&1) && !p.members.contains(&1) && p.leader != 1
            })
            .await;
            for p in &drained.partitions {
                assert_eq!(sorted(&p.members), [2, 3, 4], "{p:?}");
            }
            let mut drained = false;
            for _ in 0..600 {
                let cluster = client.describe_cluster().await.expect("describe cluster");
                let one = cluster.decommissioned.iter().find(|b| b.id == 1).expect("broker 1 listed");
                if one.replicas == 0 {
                    drained = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(drained, "broker 1 still named by some partition (the offsets partition?)");
            let config = proto::TopicConfig { partitions: 4, replication_factor: Some(3), ..Default::default() };
            let created = client.create_topic("after", config).await.expect("create");
            assert!(created.partitions.iter().all(|p| !p.replicas.contains(&1)), "placed on a leaving broker");
        })
        .await;
    tracing::info!("broker 1 is drained; it stops for good");
    cluster.kill(1, 11).await;

    let mut acknowledged = Vec::new();
    for producer in producers {
        acknowledged.extend(producer.await);
    }
    assert!(acknowledged.len() >= 120, "most writes were acknowledged: {}", acknowledged.len());
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            check_history(&client, "shrinking", 4, &acknowledged).await;
            // The stopped broker's registration lasts until its lease
            // expires; recommissioning it then finds it not live.
            let back = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    let back = client.recommission_broker(1).await.expect("recommissioned");
                    if !back.live {
                        return back;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await
            .expect("the stopped broker's registration expires");
            assert!(!back.decommissioned, "{back:?}");
        })
        .await;
}

#[tokio::test]
async fn a_new_broker_receives_its_share_of_replicas() {
    init_tracing();
    tokio::time::timeout(TEST_DEADLINE, scale_out()).await.expect("the test finishes within its deadline");
}

async fn scale_out() {
    let mut cluster = Cluster::start("scale-out", 3, |_| {}).await;
    let bootstrap = cluster.addresses().join(",");
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config = proto::TopicConfig { partitions: 6, replication_factor: Some(2), ..Default::default() };
            client.create_topic("growing", config).await.expect("create");
            leaders(&client, "growing").await;
            for n in 0..6u32 {
                let record = proto::Record { value: Some(format!("m{n}").into_bytes()), ..Default::default() };
                client.produce("growing", n, vec![record], proto::Acks::All).await.expect("produce");
            }
        })
        .await;
    let newcomer = cluster.add_broker().await;
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            // 12 replicas of `growing` and 3 of the offsets partition over
            // 4 brokers: 4, 4, 4 and 3 once balanced.
            let mut last = BTreeMap::new();
            for _ in 0..1200 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let Some(growing) = describe_everywhere(&client, "growing").await else { continue };
                let Some(offsets) = describe_everywhere(&client, "__consumer_offsets").await else { continue };
                let partitions: Vec<&proto::PartitionDescription> =
                    growing.partitions.iter().chain(&offsets.partitions).collect();
                let settled = partitions.iter().all(|p| p.leader != 0 && sorted(&p.members) == sorted(&p.replicas));
                let mut load: BTreeMap<u64, usize> = (1..=4).map(|b| (b, 0)).collect();
                // (Counted from `members`: the replicas that are voters now.)
                for p in &partitions {
                    for b in &p.members {
                        *load.entry(*b).or_default() += 1;
                    }
                }
                let (min, max) = (load.values().min().copied(), load.values().max().copied());
                if settled && max <= min.map(|n| n + 1) {
                    for p in &growing.partitions {
                        let fetched = client.fetch("growing", p.partition, 0, 1 << 20, Duration::ZERO).await.unwrap();
                        assert_eq!(fetched.records.len(), 1, "partition {} kept its message", p.partition);
                    }
                    assert!(load[&newcomer] >= 3, "{load:?}");
                    return;
                }
                last = load;
            }
            panic!("replicas did not balance onto broker {newcomer}: {last:?}");
        })
        .await;
}

/// Simulator seed 98: a removed replica was deleted while a voter of the new
/// configuration still lagged behind the change. The lagging voter then won
/// an election under the old configuration with the vote of the removed
/// broker's replica, re-created empty by a later move, and committed
/// entries were lost. Now the leader confirms a change (which lets removed
/// brokers delete their data) only once every voter holds it.
#[cfg(madsim)]
#[tokio::test]
async fn a_removed_replica_keeps_its_data_until_every_voter_holds_the_change() {
    init_tracing();
    tokio::time::timeout(TEST_DEADLINE, lagging_voter()).await.expect("the test finishes within its deadline");
}

#[cfg(madsim)]
async fn lagging_voter() {
    let cluster = Cluster::start("lagging-voter", 4, |c| {
        c.auto_balance = false;
        c.prefer_leaders = false;
        c.replace_broker_after_ms = 3_600_000;
    })
    .await;
    let addresses = cluster.addresses();
    let bootstrap = addresses.join(",");
    let (replicas, leader) = cluster
        .run(async move {
            let client = Client::connect(&bootstrap).await.expect("connect");
            let config = proto::TopicConfig { partitions: 1, replication_factor: Some(3), ..Default::default() };
            let created = client.create_topic("lagging", config).await.expect("create");
            let leaders = leaders(&client, "lagging").await;
            (created.partitions[0].replicas.clone(), leaders[&0].0)
        })
        .await;
    let followers: Vec<u64> = replicas.iter().copied().filter(|&b| b != leader).collect();
    let (lagging, removed) = (followers[0], followers[1]);
    let newcomer = (1..=4).find(|b| !replicas.contains(b)).expect("a broker without a replica");
    let target = vec![leader, lagging, newcomer];
    tracing::info!(?replicas, leader, lagging, removed, newcomer, "moving while a remaining voter is paused");
    cluster.pause(lagging);

    // Reach the brokers that run.
    let running: Vec<String> =
        (1..=4).filter(|&b| b != lagging).map(|b| addresses[(b - 1) as usize].clone()).collect::<Vec<_>>();
    let address = running.join(",");
    let moved_target = target.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            client.move_partition("lagging", 0, moved_target).await.expect("move");
            // The newcomer catches up and the change commits with the
            // votes of the leader, the removed and the new replica...
            // (Asked directly: a paused broker would not answer.)
            let leader_client = client.via(&addresses[(leader - 1) as usize]).await.expect("leader");
            let newcomer_client = client.via(&addresses[(newcomer - 1) as usize]).await.expect("newcomer");
            let high = leader_client.describe_topic("lagging").await.expect("describe").partitions[0].high_watermark;
            let mut caught_up = false;
            for _ in 0..400 {
                let described = newcomer_client.describe_topic("lagging").await.expect("describe");
                let p = &described.partitions[0];
                if p.hosted && p.leader == leader && p.log_end_offset >= high {
                    caught_up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(caught_up, "the newcomer catches up with the leader");
        })
        .await;
    // ...but the paused voter cannot hold it: the change stays unconfirmed
    // and the removed replica keeps its data, however long that lasts.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let dirs = partition_dirs(&cluster.disk(removed), removed, "lagging");
    assert!(dirs.contains("0"), "broker {removed} deleted its replica while broker {lagging} lagged: {dirs:?}");

    cluster.resume(lagging);
    let address = cluster.addresses().join(",");
    let want = sorted(&target);
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            wait_until(&client, "lagging", "the change confirmed", |p| sorted(&p.members) == want).await;
        })
        .await;
    let mut gone = false;
    for _ in 0..200 {
        if !partition_dirs(&cluster.disk(removed), removed, "lagging").contains("0") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "broker {removed} lets its replica go once every voter holds the change");
    // ... and leaves its vote and last entry behind, for a replica a later
    // move may create there (sweep seed 7743).
    let record = topic_dir(&cluster.disk(removed), removed, "lagging")
        .and_then(|dir| weir::raft::retired::load(&cluster.disk(removed), &dir.join("0")).expect("readable"))
        .expect("the removed replica left its record");
    assert!(record.vote.is_some() && record.last_log_id.is_some(), "{record:?}");
}

/// Broker `id`'s directory of topic `topic`.
#[cfg(madsim)]
fn topic_dir(disk: &dyn Disk, id: u64, topic: &str) -> Option<std::path::PathBuf> {
    let topics = Path::new("/data").join(format!("broker-{id}")).join("topics");
    let name = disk
        .list_subdirs(&topics)
        .unwrap_or_default()
        .into_iter()
        .find(|name| name.rsplit_once('-').is_some_and(|(prefix, _)| prefix == topic))?;
    Some(topics.join(name))
}
