//! A three-broker cluster on etcd: partitions placed with their preferred
//! leaders spread over the brokers, writes with acks=all from several
//! producers while the leader of a partition is killed (losing what it had
//! not fsynced) and restarted, then every acknowledged message is checked.
//!
//! Both builds: on tokio a real etcd process and three in-process brokers on
//! loopback ports; under madsim the simulated etcd and three broker nodes
//! that `Handle::kill` / `restart` take down and bring back.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use weir::broker::config::BrokerConfig;
use weir::client::{Client, Producer, ProducerConfig};
use weir::proto::{self, Acks};
use weir::sys::disk::{Disk, SimDisk};

#[path = "support/etcd.rs"]
mod etcd;

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

fn config(id: u64, listen: std::net::SocketAddr, etcd: &str, cluster: &str) -> BrokerConfig {
    BrokerConfig {
        broker_id: id,
        data_dir: std::path::PathBuf::from(format!("/data/broker-{id}")),
        listen,
        metrics_listen: None,
        etcd: vec![etcd.to_owned()],
        cluster_name: cluster.to_owned(),
        session_timeout_ms: 2_000,
        ..BrokerConfig::default()
    }
}

#[cfg(not(madsim))]
mod harness {
    use weir::broker::server::{open_broker, serve};
    use weir::broker::Broker;
    use weir::sys::clock::system_clock;

    use super::*;

    struct Node {
        config: BrokerConfig,
        disk: SimDisk,
        running: Option<(Arc<Broker>, tokio::task::JoinHandle<()>)>,
    }

    pub struct Cluster {
        etcd: etcd::EtcdServer,
        nodes: Vec<Node>,
    }

    impl Cluster {
        pub async fn start(cluster: &str) -> Self {
            let etcd = etcd::EtcdServer::start().await;
            let mut nodes = Vec::new();
            for id in 1..=BROKERS {
                let listen = weir::sys::net::free_loopback_addr().expect("a free port");
                nodes.push(Node {
                    config: config(id, listen, &etcd.endpoint(), cluster),
                    disk: SimDisk::new(id),
                    running: None,
                });
            }
            let mut cluster = Self { etcd, nodes };
            for i in 0..nodes_len(&cluster) {
                cluster.boot(i).await;
            }
            cluster
        }

        async fn boot(&mut self, i: usize) {
            let node = &mut self.nodes[i];
            let disk: Arc<dyn Disk> = Arc::new(node.disk.clone());
            let broker = open_broker(node.config.clone(), disk, system_clock()).await.expect("broker opens");
            let served = broker.clone();
            let task = tokio::spawn(async move {
                serve(served, std::future::pending()).await.expect("broker serves");
            });
            node.running = Some((broker, task));
        }

        pub fn addresses(&self) -> Vec<String> {
            self.nodes.iter().map(|n| n.config.listen.to_string()).collect()
        }

        /// Kills broker `id` (1-based): its server and replicas stop mid-flight
        /// and its disk keeps only what was fsynced (and a seeded share more).
        pub async fn kill(&mut self, id: u64, seed: u64) {
            let node = &mut self.nodes[(id - 1) as usize];
            let (broker, task) = node.running.take().expect("broker running");
            task.abort();
            let _ = task.await;
            broker.halt().await;
            node.disk.crash(seed);
        }

        pub async fn restart(&mut self, id: u64) {
            self.boot((id - 1) as usize).await;
        }

        /// Kills etcd.
        pub async fn stop_etcd(&mut self) {
            self.etcd.stop().await;
        }

        pub fn spawn_client<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            tokio::spawn(f)
        }

        pub async fn run<F>(&self, f: F) -> F::Output
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            f.await
        }
    }

    fn nodes_len(cluster: &Cluster) -> usize {
        cluster.nodes.len()
    }
}

#[cfg(madsim)]
mod harness {
    use madsim::runtime::{Handle, NodeHandle};
    use weir::broker::server::{open_broker, serve};
    use weir::sys::clock::system_clock;

    use super::*;

    pub struct Cluster {
        etcd: etcd::EtcdServer,
        nodes: Vec<(NodeHandle, SimDisk, std::net::SocketAddr)>,
    }

    impl Cluster {
        pub async fn start(cluster: &str) -> Self {
            let etcd = etcd::EtcdServer::start().await;
            let handle = Handle::current();
            let mut nodes = Vec::new();
            for id in 1..=BROKERS {
                let listen: std::net::SocketAddr = format!("10.0.3.{id}:9092").parse().unwrap();
                let disk = SimDisk::new(id);
                let config = config(id, listen, &etcd.endpoint(), cluster);
                let node_disk = disk.clone();
                let node = handle
                    .create_node()
                    .name(format!("broker-{id}"))
                    .ip(listen.ip())
                    .init(move || {
                        let disk: Arc<dyn Disk> = Arc::new(node_disk.clone());
                        let config = config.clone();
                        async move {
                            let broker = open_broker(config, disk, system_clock()).await.expect("broker opens");
                            serve(broker, std::future::pending()).await.expect("broker serves");
                        }
                    })
                    .build();
                nodes.push((node, disk, listen));
            }
            let cluster = Self { etcd, nodes };
            for address in cluster.addresses() {
                cluster.run(wait_serving(address)).await;
            }
            cluster
        }

        pub fn addresses(&self) -> Vec<String> {
            self.nodes.iter().map(|(_, _, listen)| listen.to_string()).collect()
        }

        pub async fn kill(&mut self, id: u64, seed: u64) {
            let (node, disk, _) = &self.nodes[(id - 1) as usize];
            Handle::current().kill(node.id());
            disk.crash(seed);
        }

        pub async fn restart(&mut self, id: u64) {
            let (node, _, listen) = &self.nodes[(id - 1) as usize];
            Handle::current().restart(node.id());
            self.run(wait_serving(listen.to_string())).await;
        }

        /// Kills etcd's node.
        pub async fn stop_etcd(&mut self) {
            self.etcd.stop().await;
        }

        pub fn spawn_client<F>(&self, f: F) -> madsim::task::JoinHandle<F::Output>
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            self.etcd.spawn(f)
        }

        pub async fn run<F>(&self, f: F) -> F::Output
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            self.etcd.run(f).await
        }
    }
}

use harness::Cluster;

/// Waits (bounded) until the broker at `address` answers.
#[cfg_attr(not(madsim), allow(dead_code))]
async fn wait_serving(address: String) {
    for _ in 0..200 {
        if let Ok(client) = Client::connect(&address).await {
            if client.describe_broker().await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broker at {address} did not start serving");
}

/// Leader of each partition as the brokers report it, once every partition
/// has one.
async fn leaders(client: &Client, topic: &str) -> BTreeMap<u32, (u64, String)> {
    for _ in 0..400 {
        if let Ok(described) = client.describe_topic(topic).await {
            let known: BTreeMap<u32, (u64, String)> = described
                .partitions
                .iter()
                .filter(|p| p.leader != 0)
                .map(|p| (p.partition, (p.leader, p.leader_address.clone())))
                .collect();
            if known.len() == described.partitions.len() {
                return known;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("partitions of {topic} did not all elect a leader");
}

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

/// Every message of a partition below its high watermark: (offset, value).
async fn read_partition(client: &Client, topic: &str, partition: u32) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let fetched = client.fetch(topic, partition, offset, 1 << 20, Duration::ZERO).await.expect("fetch");
        for record in &fetched.records {
            out.push((record.offset, String::from_utf8(record.value.clone().unwrap_or_default()).unwrap()));
        }
        if fetched.next_offset >= fetched.high_watermark {
            return out;
        }
        offset = fetched.next_offset;
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_killing_a_partition_leader() {
    init_tracing();
    tokio::time::timeout(TEST_DEADLINE, scenario()).await.expect("the test finishes within its deadline");
}

async fn scenario() {
    let mut cluster = Cluster::start("leader-kill").await;
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
            for partition in 0..PARTITIONS {
                let stored = read_partition(&client, "orders", partition).await;
                // Producers are idempotent: retries after a lost answer
                // were written once.
                let distinct: BTreeSet<&String> = stored.iter().map(|(_, v)| v).collect();
                assert_eq!(distinct.len(), stored.len(), "no message stored twice in partition {partition}");
                let at: BTreeMap<u64, &String> = stored.iter().map(|(o, v)| (*o, v)).collect();
                assert!(stored.iter().enumerate().all(|(i, (o, _))| *o == i as u64), "dense offsets in {partition}");
                let mine: Vec<&(u32, u64, String)> = acknowledged.iter().filter(|(p, _, _)| *p == partition).collect();
                for (_, offset, value) in &mine {
                    assert_eq!(at.get(offset), Some(&value), "acknowledged {value} at {partition}/{offset}");
                }
                // Each producer's acknowledged writes are in the order it made them.
                for producer in 0..3 {
                    let prefix = format!("p{producer}-");
                    let order: Vec<u64> =
                        mine.iter().filter(|(_, _, v)| v.starts_with(&prefix)).map(|(_, o, _)| *o).collect();
                    assert!(order.windows(2).all(|w| w[0] < w[1]), "{partition}: {order:?}");
                }
            }
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

    let mut cluster = Cluster::start("bad-input").await;
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
                batch: Vec::new(),
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
