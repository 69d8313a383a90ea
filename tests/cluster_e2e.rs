//! A three-broker cluster on etcd: partitions placed with their preferred
//! leaders spread over the brokers, writes with acks=all from several
//! producers while the leader of a partition is killed (losing what it had
//! not fsynced) and restarted, then every acknowledged message is checked.
//!
//! Both builds: on tokio a real etcd process and three in-process brokers on
//! loopback ports; under madsim the simulated etcd and three broker nodes
//! that `Handle::kill` / `restart` take down and bring back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use weir::client::{Client, Producer, ProducerConfig};
use weir::proto::{self, Acks};

const TEST_DEADLINE: Duration = Duration::from_secs(240);
const BROKERS: u64 = 3;
const PARTITIONS: u32 = 6;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cluster_e2e=info,weir=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

use weir_sim::cluster;

use cluster::{check_history, describe_everywhere, leaders, Cluster};

/// Waits (bounded) until the live brokers do (`present`) or do not list
/// broker `id`; the other brokers stay listed throughout.
async fn wait_for_brokers(address: String, id: u64, present: bool) {
    let client = Client::connect(&address).await.expect("connect");
    for _ in 0..200 {
        if let Ok(cluster) = client.describe_cluster().await {
            let ids: Vec<u64> = cluster.brokers.iter().map(|b| b.id).collect();
            let others = (1..=BROKERS).filter(|b| *b != id).all(|b| ids.contains(&b));
            assert!(others, "the live brokers stay registered: {ids:?}");
            if ids.contains(&id) == present {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broker {id} never became {}", if present { "registered" } else { "unregistered" });
}

#[tokio::test]
async fn acknowledged_writes_survive_killing_a_partition_leader() {
    init_tracing();
    tokio::time::timeout(TEST_DEADLINE, scenario()).await.expect("the test finishes within its deadline");
}

async fn scenario() {
    let mut cluster = Cluster::start("leader-kill", BROKERS, |_| {}).await;
    let bootstrap = cluster.addresses().join(",");

    tracing::info!("a topic of {PARTITIONS} partitions, 3 replicas each");
    let address = bootstrap.clone();
    let before = cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config =
                proto::TopicConfig { partitions: PARTITIONS, replication_factor: Some(3), ..Default::default() };
            let created = client.create_topic("orders", config).await.expect("create");
            for p in &created.partitions {
                let distinct: BTreeSet<u64> = p.replicas.iter().copied().collect();
                assert_eq!(distinct.len(), 3, "partition {} on three brokers: {:?}", p.partition, p.replicas);
            }
            leaders(&client, "orders").await
        })
        .await;
    let mut per_broker: BTreeMap<u64, usize> = BTreeMap::new();
    for (leader, _) in before.values() {
        *per_broker.entry(*leader).or_default() += 1;
    }
    assert_eq!(per_broker.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "leaders spread: {before:?}");

    tracing::info!("three idempotent producers write acks=all to every partition");
    let mut producers = Vec::new();
    for producer in 0..3u32 {
        let address = bootstrap.clone();
        producers.push(cluster.spawn_client(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config = ProducerConfig { batch_bytes_max: 0, retries: 30, ..ProducerConfig::default() };
            let sender = Producer::new(client, config);
            let mut acknowledged = Vec::new();
            for n in 0..60u32 {
                let partition = (producer + n) % PARTITIONS;
                let value = format!("p{producer}-{n}");
                let record = weir::client::producer::record(None, value.as_bytes(), 1);
                let delivered = sender.send("orders", Some(partition), record).await.expect("queued").wait().await;
                match delivered {
                    Ok(delivered) => acknowledged.push((partition, delivered.offset, value)),
                    Err(error) => tracing::info!(%error, value, "write not acknowledged"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acknowledged
        }));
    }

    let (victim, _) = before[&0];
    tokio::time::sleep(Duration::from_millis(400)).await;
    tracing::info!(broker = victim, "killing the leader of partition 0");
    cluster.kill(victim, 42).await;
    tracing::info!(broker = victim, "its registration lapses with its lease");
    let address = bootstrap.clone();
    cluster.run(wait_for_brokers(address, victim, false)).await;
    tracing::info!(broker = victim, "restarting it");
    cluster.restart(victim).await;
    let address = bootstrap.clone();
    cluster.run(wait_for_brokers(address, victim, true)).await;

    let mut acknowledged = Vec::new();
    for producer in producers {
        acknowledged.extend(producer.await.expect("producer task"));
    }
    assert!(acknowledged.len() >= 150, "most writes were acknowledged: {}", acknowledged.len());

    tracing::info!("every acknowledged message is there, once, in order");
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let after = leaders(&client, "orders").await;
            assert_ne!(after[&0].0, 0);

            // The restarted broker takes the partitions it prefers back.
            let mut leaders_now = BTreeMap::new();
            for _ in 0..600 {
                let Some(described) = describe_everywhere(&client, "orders").await else { continue };
                leaders_now = described.partitions.iter().map(|p| (p.partition, (p.leader, p.replicas[0]))).collect();
                if leaders_now.values().all(|(leader, preferred)| leader == preferred) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                leaders_now.values().all(|(leader, preferred)| leader == preferred),
                "(leader, preferred leader) per partition: {leaders_now:?}"
            );
            // Producers are idempotent: retries after a lost answer were
            // written once.
            check_history(&client, "orders", PARTITIONS, &acknowledged).await;
        })
        .await;
}

#[tokio::test]
async fn followers_and_an_etcd_outage_get_clear_statuses() {
    init_tracing();
    tokio::time::timeout(TEST_DEADLINE, bad_input()).await.expect("the test finishes within its deadline");
}

async fn bad_input() {
    use weir::broker::error::{BrokerError, ErrorCode};

    let mut cluster = Cluster::start("bad-input", BROKERS, |_| {}).await;
    let bootstrap = cluster.addresses().join(",");
    let addresses = cluster.addresses();
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config = proto::TopicConfig { partitions: 3, replication_factor: Some(3), ..Default::default() };
            client.create_topic("audit", config).await.expect("create");
            let leaders = leaders(&client, "audit").await;
            let (leader, leader_address) = leaders[&0].clone();

            tracing::info!("producing to a follower: NOT_LEADER, naming the leader");
            let follower = addresses.iter().find(|a| **a != leader_address).expect("a follower").clone();
            let mut raw = proto::producer_client::ProducerClient::connect(format!("http://{follower}")).await.unwrap();
            let request = proto::ProduceRequest {
                topic: "audit".into(),
                partition: 0,
                acks: Acks::All as i32,
                records: vec![proto::Record { value: Some(b"x".to_vec()), ..Default::default() }],
                batch: Default::default(),
            };
            // A follower names the leader once it has heard from it; until
            // then it answers PARTITION_UNAVAILABLE (no leader known).
            let mut status = raw.produce(request.clone()).await.expect_err("a follower refuses");
            for _ in 0..100 {
                if BrokerError::from_status(&status).code != ErrorCode::PartitionUnavailable {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                status = raw.produce(request.clone()).await.expect_err("a follower refuses");
            }
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
            let error = BrokerError::from_status(&status);
            assert_eq!(error.code, ErrorCode::NotLeader, "{error}");
            assert_eq!(error.leader.as_deref(), Some(leader_address.as_str()), "the hint names broker {leader}");
            let fetched = client.fetch("audit", 0, 0, 1 << 20, Duration::ZERO).await.unwrap();
            assert_eq!(fetched.high_watermark, 0, "the refused write left nothing behind");

            tracing::info!("a partition that does not exist: UNKNOWN_PARTITION");
            let mut missing = request.clone();
            missing.partition = 7;
            let status = raw.produce(missing).await.expect_err("no such partition");
            assert_eq!(BrokerError::from_status(&status).code, ErrorCode::UnknownPartition);

            tracing::info!("the client follows the hint on its own");
            let produced = client.produce("audit", 0, request.records.clone(), Acks::All).await.expect("produce");
            assert_eq!(produced.base_offset, 0);
        })
        .await;

    tracing::info!("etcd goes away: writes go on, metadata changes fail clearly");
    cluster.stop_etcd().await;
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            for n in 0..5u8 {
                let record = proto::Record { value: Some(vec![n]), ..Default::default() };
                client.produce("audit", 1, vec![record], Acks::All).await.expect("replication needs no etcd");
            }
            let config = proto::TopicConfig { partitions: 1, ..Default::default() };
            let error = client.create_topic("later", config).await.expect_err("no metadata store");
            assert_eq!(error.code(), Some(ErrorCode::MetadataUnavailable), "{error}");
            let fetched = client.fetch("audit", 1, 0, 1 << 20, Duration::from_secs(5)).await.unwrap();
            assert_eq!(fetched.records.len(), 5);
        })
        .await;
}

/// A producer whose partition leader is paused (SIGSTOP on a real host: the
/// connection stays open and nothing answers) writes again once the
/// followers have elected another leader, within the design's bound (the
/// leader lease, 2 s, two election timeouts, 2 s each, as a split vote may
/// take a second round, plus 1 s: `weir_sim::availability`), not when the
/// paused leader comes back. Before each attempt had a time limit
/// (`client::ANSWER_WITHIN`), the send waited out the whole 15 s pause (the
/// simulator's availability rule found it on seeds 3, 7, 10, 17 and 19);
/// with the limit but without probing the silent broker briefly, it took
/// 6.2 s; after a split vote the retry waited the lease again (7.4 s).
/// Needs a paused node: simulator only.
#[cfg(madsim)]
#[tokio::test]
async fn a_producer_writes_again_within_the_bound_while_its_leader_is_paused() {
    init_tracing();
    let cluster = Cluster::start("leader-pause", BROKERS, |_| {}).await;
    let bootstrap = cluster.addresses().join(",");
    let address = bootstrap.clone();
    let leader = cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config = proto::TopicConfig { partitions: 1, replication_factor: Some(3), ..Default::default() };
            client.create_topic("paused", config).await.expect("create");
            leaders(&client, "paused").await[&0].0
        })
        .await;
    let address = bootstrap.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (paused_tx, paused_rx) = tokio::sync::oneshot::channel::<()>();
    let producer = cluster.spawn_client(async move {
        let client = Client::connect(&address).await.expect("connect");
        let sender = Producer::new(client, ProducerConfig { batch_bytes_max: 0, ..ProducerConfig::default() });
        let send = |value: &'static str| {
            let sender = sender.clone();
            async move {
                let record = weir::client::producer::record(None, value.as_bytes(), 1);
                sender.send("paused", Some(0), record).await.expect("queued").wait().await
            }
        };
        // The route to the leader is known, and its connection open.
        send("before").await.expect("written before the pause");
        ready_tx.send(()).expect("the test waits");
        paused_rx.await.expect("the leader paused");
        let started = tokio::time::Instant::now();
        let written = send("during").await;
        (written.map(|d| d.offset), started.elapsed())
    });
    ready_rx.await.expect("the producer is ready");
    tracing::info!(broker = leader, "pausing the leader for 15 s");
    cluster.pause(leader);
    paused_tx.send(()).expect("the producer waits");
    tokio::time::sleep(Duration::from_secs(15)).await;
    cluster.resume(leader);
    let (written, took) = producer.await.expect("the producer task");
    tracing::info!(?took, "the write during the pause");
    assert_eq!(written.ok(), Some(1), "the write lands after the first, acknowledged");
    let bound = weir_sim::availability::LEADER_LOSS_BOUND;
    assert!(took <= bound, "acknowledged after {took:?}, over the bound of {bound:?}");
}

/// A new idempotent producer asks a broker for its identity before its
/// first write. Asked of a paused home broker with no time limit, that
/// question waited out the whole pause and the producer wrote nothing,
/// not even to partitions whose leaders were up (found by the sweep:
/// seed 1703 wrote nothing for 14 s). Needs a paused node: simulator only.
#[cfg(madsim)]
#[tokio::test]
async fn a_new_producer_writes_elsewhere_while_its_home_broker_is_paused() {
    init_tracing();
    let cluster = Cluster::start("home-pause", BROKERS, |_| {}).await;
    let bootstrap = cluster.addresses().join(",");
    let home = 1; // the first bootstrap address answers the connect
    let address = bootstrap.clone();
    let elsewhere = cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config = proto::TopicConfig { partitions: 3, replication_factor: Some(3), ..Default::default() };
            client.create_topic("homeless", config).await.expect("create");
            let leaders = leaders(&client, "homeless").await;
            let (partition, _) = leaders.iter().find(|(_, (leader, _))| *leader != home).expect("a leader not home");
            *partition
        })
        .await;
    let address = bootstrap.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (paused_tx, paused_rx) = tokio::sync::oneshot::channel::<()>();
    let producer = cluster.spawn_client(async move {
        let client = Client::connect(&address).await.expect("connect");
        ready_tx.send(()).expect("the test waits");
        paused_rx.await.expect("home paused");
        let started = tokio::time::Instant::now();
        let sender = Producer::new(client, ProducerConfig { batch_bytes_max: 0, ..ProducerConfig::default() });
        let record = weir::client::producer::record(None, b"while home sleeps", 1);
        let written = sender.send("homeless", Some(elsewhere), record).await.expect("queued").wait().await;
        (written.map(|d| d.offset), started.elapsed())
    });
    ready_rx.await.expect("the client is connected");
    tracing::info!(broker = home, "pausing the home broker for 15 s");
    cluster.pause(home);
    paused_tx.send(()).expect("the producer waits");
    tokio::time::sleep(Duration::from_secs(15)).await;
    cluster.resume(home);
    let (written, took) = producer.await.expect("the producer task");
    tracing::info!(?took, partition = elsewhere, "the first write of a producer whose home is paused");
    assert_eq!(written.ok(), Some(0), "the write lands, acknowledged");
    let bound = Duration::from_secs(5);
    assert!(took <= bound, "acknowledged after {took:?}, over {bound:?}: the producer waited for its home broker");
}
