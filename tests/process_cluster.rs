//! Brokers as real processes: a real etcd (Debian's etcd-server) and `weir
//! server` processes on loopback, each with its config file, data directory
//! and log in one temporary directory. A broker is killed with SIGKILL (the
//! kernel keeps what it wrote, the process keeps nothing) and restarted from
//! the same config; a partition is moved off its own leader while producers
//! write to it. After each, every acknowledged write is checked.
//!
//! Processes cannot run in the simulator: under `--cfg madsim` this file
//! compiles to no tests (the same scenarios run in-process in
//! tests/cluster_e2e.rs and the simulator).

#![cfg(not(madsim))]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir::broker::config::BrokerConfig;
use weir::broker::error::ErrorCode;
use weir::client::{Client, Producer, ProducerConfig};
use weir::proto;

use weir_sim::cluster::read_partition;
use weir_sim::etcd;

use harness::{Cluster, LogDir};

/// Each test's deadline, from starting etcd to its last check.
const TEST_DEADLINE: Duration = Duration::from_secs(180);
/// A killed broker's registration lapses after this.
const SESSION_TIMEOUT_MS: u64 = 2_000;
/// Bounds every poll loop: `POLL_ATTEMPTS` tries `POLL_INTERVAL` apart.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const POLL_ATTEMPTS: u32 = 600;
/// A move (learner, catch-up, joint consensus, removal) finishes within this.
const MOVE_ATTEMPTS: u32 = 1_200;
/// Between two writes of one producer.
const PRODUCE_PAUSE: Duration = Duration::from_millis(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "process_cluster=info".into()),
        )
        .with_test_writer()
        .try_init();
}

// Starting processes and touching their files is what clippy.toml's seam
// rules keep out of weir's own code; a harness for broker processes must.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod harness {
    use std::fs::{self, File, OpenOptions};
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// What the broker processes log at (their default is `warn`).
    const BROKER_LOG_FILTER: &str = "weir=info,openraft=warn";
    /// Lines of each log printed when a test fails.
    const LOG_TAIL_LINES: usize = 30;

    /// A temporary directory for one test's processes: kept, with its path
    /// and the tail of every log printed, if the test fails; removed if it
    /// passes.
    pub struct LogDir {
        path: PathBuf,
    }

    impl LogDir {
        pub fn new(test: &str) -> Self {
            let path = std::env::temp_dir().join(format!("weir-process-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("a temporary directory");
            tracing::info!(dir = %path.display(), "broker configs, data and logs");
            Self { path }
        }

        pub fn path(&self) -> &Path {
            &self.path
        }

        fn print_tails(&self) {
            let mut logs: Vec<PathBuf> = fs::read_dir(&self.path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            for log in logs {
                let text = fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                eprintln!("--- last {} lines of {} ---\n{}", tail.len(), log.display(), tail.join("\n"));
            }
        }
    }

    impl Drop for LogDir {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.print_tails();
                eprintln!("the test failed; broker configs, data and logs are kept in {}", self.path.display());
            } else {
                let _ = fs::remove_dir_all(&self.path);
            }
        }
    }

    /// One `weir server` process and what it needs to start again.
    struct BrokerProcess {
        config: BrokerConfig,
        config_path: PathBuf,
        log_path: PathBuf,
        child: Option<Child>,
        starts: u32,
    }

    impl BrokerProcess {
        fn spawn(&mut self) {
            assert!(self.child.is_none(), "broker {} is already running", self.config.broker_id);
            self.starts += 1;
            let mut log = OpenOptions::new().create(true).append(true).open(&self.log_path).expect("a log file");
            writeln!(log, "=== start {} of broker {} ===", self.starts, self.config.broker_id).expect("log write");
            let child = Command::new(env!("CARGO_BIN_EXE_weir"))
                .arg("server")
                .arg("--config")
                .arg(&self.config_path)
                .env("RUST_LOG", BROKER_LOG_FILTER)
                .env("NO_COLOR", "1")
                .env_remove("WEIR_DATA_DIR")
                .env_remove("WEIR_LISTEN")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("a log file handle"))
                .stderr(log)
                .spawn()
                .expect("the weir binary starts");
            self.child = Some(child);
        }

        /// SIGKILL, then reaps the process.
        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// Panics, naming the log, if the process has exited.
        fn assert_running(&mut self) {
            let child = self.child.as_mut().expect("broker process started");
            if let Some(status) = child.try_wait().expect("the broker's status") {
                panic!("broker {} exited with {status}; see {}", self.config.broker_id, self.log_path.display());
            }
        }
    }

    impl Drop for BrokerProcess {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// etcd and `weir server` processes on loopback; every process is
    /// killed on drop.
    pub struct Cluster {
        // Brokers go first: they are killed before their etcd.
        brokers: Vec<BrokerProcess>,
        _etcd: etcd::EtcdServer,
    }

    impl Cluster {
        /// Starts etcd and brokers 1..=`count`, and returns once every one
        /// serves and is registered.
        pub async fn start(dir: &LogDir, count: u64, cluster_name: &str) -> Self {
            let etcd = etcd::EtcdServer::start().await;
            let mut brokers = Vec::new();
            for id in 1..=count {
                let config = BrokerConfig {
                    broker_id: id,
                    data_dir: dir.path().join(format!("broker-{id}")),
                    listen: weir::sys::net::free_loopback_addr().expect("a free port"),
                    // A TOML file cannot say `None`: a missing key takes the
                    // default port, which the brokers would fight over.
                    metrics_listen: Some(weir::sys::net::free_loopback_addr().expect("a free port")),
                    etcd: vec![etcd.endpoint()],
                    cluster_name: cluster_name.to_owned(),
                    session_timeout_ms: SESSION_TIMEOUT_MS,
                    // The tests move partitions themselves; the controller's
                    // balancing would answer a move with moves of its own.
                    auto_balance: false,
                    ..BrokerConfig::default()
                };
                let config_path = dir.path().join(format!("broker-{id}.toml"));
                let text = toml::to_string(&config).expect("the config serializes");
                File::create(&config_path)
                    .and_then(|mut f| f.write_all(text.as_bytes()))
                    .expect("the config file is written");
                let log_path = dir.path().join(format!("broker-{id}.log"));
                brokers.push(BrokerProcess { config, config_path, log_path, child: None, starts: 0 });
            }
            for broker in &mut brokers {
                broker.spawn();
            }
            let mut cluster = Self { brokers, _etcd: etcd };
            for id in 1..=count {
                cluster.wait_serving(id).await;
            }
            let all: Vec<u64> = (1..=count).collect();
            wait_registered(&cluster.bootstrap(), &all, &[]).await;
            cluster
        }

        fn broker(&mut self, id: u64) -> &mut BrokerProcess {
            &mut self.brokers[(id - 1) as usize]
        }

        pub fn address(&self, id: u64) -> String {
            self.brokers[(id - 1) as usize].config.listen.to_string()
        }

        pub fn data_dir(&self, id: u64) -> PathBuf {
            self.brokers[(id - 1) as usize].config.data_dir.clone()
        }

        pub fn ids(&self) -> Vec<u64> {
            self.brokers.iter().map(|b| b.config.broker_id).collect()
        }

        /// Every broker's address, comma-joined, for `Client::connect`.
        pub fn bootstrap(&self) -> String {
            self.brokers.iter().map(|b| b.config.listen.to_string()).collect::<Vec<_>>().join(",")
        }

        /// The addresses of every broker but `id`, comma-joined.
        pub fn bootstrap_without(&self, id: u64) -> String {
            self.brokers
                .iter()
                .filter(|b| b.config.broker_id != id)
                .map(|b| b.config.listen.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }

        /// Kills broker `id` with SIGKILL.
        pub fn kill(&mut self, id: u64) {
            self.broker(id).kill();
        }

        /// Starts broker `id` again from its config file and data directory,
        /// and returns once it serves.
        pub async fn restart(&mut self, id: u64) {
            self.broker(id).spawn();
            self.wait_serving(id).await;
        }

        async fn wait_serving(&mut self, id: u64) {
            let address = self.address(id);
            for _ in 0..POLL_ATTEMPTS {
                self.broker(id).assert_running();
                if let Ok(client) = Client::connect(&address).await {
                    if client.describe_broker().await.is_ok_and(|b| b.broker_id == id) {
                        return;
                    }
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            panic!("broker {id} at {address} did not start serving");
        }

        /// Every broker process is still running, and none logged a panic
        /// (tokio catches a task's panic; the process goes on without it).
        pub fn assert_healthy(&mut self) {
            for broker in &mut self.brokers {
                broker.assert_running();
                let log = fs::read_to_string(&broker.log_path).expect("the broker's log");
                let panicked = log.lines().find(|line| line.contains("panicked"));
                assert!(panicked.is_none(), "broker {}: {panicked:?}", broker.config.broker_id);
            }
        }

        /// Whether broker `id`'s data directory holds a replica of
        /// `topic`'s `partition` (`topics/<topic>-<id hex>/<partition>`).
        pub fn holds_replica_dir(&self, id: u64, topic: &str, partition: u32) -> bool {
            let topics = self.data_dir(id).join("topics");
            let prefix = format!("{topic}-");
            fs::read_dir(&topics)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
                .any(|entry| entry.path().join(partition.to_string()).is_dir())
        }
    }
}

/// Waits (bounded) until the brokers at `bootstrap` list every broker of
/// `present` and none of `absent`.
async fn wait_registered(bootstrap: &str, present: &[u64], absent: &[u64]) {
    let mut listed = Vec::new();
    for _ in 0..POLL_ATTEMPTS {
        if let Ok(client) = Client::connect(bootstrap).await {
            if let Ok(cluster) = client.describe_cluster().await {
                listed = cluster.brokers.iter().map(|b| b.id).collect();
                let ok = present.iter().all(|id| listed.contains(id)) && absent.iter().all(|id| !listed.contains(id));
                if ok {
                    return;
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("brokers listed {listed:?}, wanted {present:?} and not {absent:?}");
}

/// Leader of each partition, once every partition has one, as the leaders
/// themselves say (a broker knows the leader only of the partitions it
/// hosts, and a deposed one may not know it yet).
async fn leaders(client: &Client, cluster: &Cluster, topic: &str) -> BTreeMap<u32, u64> {
    let mut known = BTreeMap::new();
    for _ in 0..POLL_ATTEMPTS {
        known.clear();
        let mut partitions = 0;
        for id in cluster.ids() {
            let Ok(broker) = client.via(&cluster.address(id)).await else { continue };
            let Ok(described) = broker.describe_topic(topic).await else { continue };
            partitions = described.partitions.len();
            for p in described.partitions.iter().filter(|p| p.hosted && p.leader == id) {
                known.insert(p.partition, id);
            }
        }
        if partitions > 0 && known.len() == partitions {
            return known;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("partitions of {topic} did not all elect a leader: {known:?}");
}

async fn create_topic(client: &Client, topic: &str, partitions: u32) -> proto::TopicDescription {
    let config = proto::TopicConfig { partitions, replication_factor: Some(3), ..Default::default() };
    let created = client.create_topic(topic, config).await.expect("create");
    for p in &created.partitions {
        let distinct: BTreeSet<u64> = p.replicas.iter().copied().collect();
        assert_eq!(distinct.len(), 3, "partition {} on three brokers: {:?}", p.partition, p.replicas);
    }
    created
}

/// A write a producer got an acknowledgement for: (partition, offset, value).
type Acknowledged = (u32, u64, String);

/// What the producers of a test share: a count of acknowledged writes to
/// wait on, and a flag that stops them early.
#[derive(Default)]
struct Progress {
    acknowledged: AtomicUsize,
    stop: AtomicBool,
}

impl Progress {
    /// Waits (bounded) until `more` writes past `from` were acknowledged.
    async fn wait_acknowledged(&self, from: usize, more: usize) {
        for _ in 0..POLL_ATTEMPTS {
            if self.acknowledged.load(Ordering::Relaxed) >= from + more {
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!("fewer than {more} writes acknowledged after {from}");
    }
}

/// Starts an idempotent producer (acks=all, one record per request) writing
/// values `p<producer>-<n>` round robin to `partitions`, up to `writes` of
/// them or until `progress` says stop.
fn start_producer(
    bootstrap: String,
    topic: &'static str,
    producer: u32,
    partitions: u32,
    writes: u32,
    progress: Arc<Progress>,
) -> tokio::task::JoinHandle<Vec<Acknowledged>> {
    tokio::spawn(async move {
        let client = Client::connect(&bootstrap).await.expect("connect");
        let config = ProducerConfig { batch_bytes_max: 0, retries: 30, ..ProducerConfig::default() };
        assert_eq!(config.acks, proto::Acks::All, "a write is acknowledged once a quorum has it");
        let sender = Producer::new(client, config);
        let mut acknowledged = Vec::new();
        for n in 0..writes {
            if progress.stop.load(Ordering::Relaxed) {
                break;
            }
            let partition = (producer + n) % partitions;
            let value = format!("p{producer}-{n}");
            let record = weir::client::producer::record(None, value.as_bytes(), 1);
            let delivered = sender.send(topic, Some(partition), record).await.expect("queued").wait().await;
            match delivered {
                Ok(delivered) => {
                    assert_eq!(delivered.partition, partition);
                    acknowledged.push((partition, delivered.offset, value));
                    progress.acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => tracing::info!(%error, value, "write not acknowledged"),
            }
            tokio::time::sleep(PRODUCE_PAUSE).await;
        }
        acknowledged
    })
}

/// Every acknowledged write is stored at its offset (no lost write); no
/// value is stored twice (idempotent retries); offsets are dense; each
/// producer's acknowledged offsets rise within a partition (its order).
async fn check_acknowledged(client: &Client, topic: &str, partitions: u32, acknowledged: &[Acknowledged]) {
    for partition in 0..partitions {
        let stored = read_partition(client, topic, partition).await;
        tracing::info!(partition, stored = stored.len(), "read back");
        let distinct: BTreeSet<&String> = stored.iter().map(|(_, v)| v).collect();
        assert_eq!(distinct.len(), stored.len(), "no message stored twice in partition {partition}");
        assert!(stored.iter().enumerate().all(|(i, (o, _))| *o == i as u64), "dense offsets in {partition}");
        let at: BTreeMap<u64, &String> = stored.iter().map(|(o, v)| (*o, v)).collect();
        let mine: Vec<&Acknowledged> = acknowledged.iter().filter(|(p, _, _)| *p == partition).collect();
        for (_, offset, value) in &mine {
            assert_eq!(at.get(offset), Some(&value), "acknowledged {value} at {partition}/{offset}");
        }
        let producers: BTreeSet<&str> = mine.iter().filter_map(|(_, _, v)| v.split('-').next()).collect();
        for producer in producers {
            let prefix = format!("{producer}-");
            let order: Vec<u64> = mine.iter().filter(|(_, _, v)| v.starts_with(&prefix)).map(|(_, o, _)| *o).collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{producer} in order in {partition}: {order:?}");
        }
    }
}

async fn join_producers(producers: Vec<tokio::task::JoinHandle<Vec<Acknowledged>>>) -> Vec<Acknowledged> {
    let mut acknowledged = Vec::new();
    for producer in producers {
        acknowledged.extend(producer.await.expect("producer task"));
    }
    acknowledged
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_of_a_leader_process() {
    init_tracing();
    let dir = LogDir::new("kill-9");
    tokio::time::timeout(TEST_DEADLINE, kill_9(&dir)).await.expect("the test finishes within its deadline");
}

async fn kill_9(dir: &LogDir) {
    const TOPIC: &str = "orders";
    const PARTITIONS: u32 = 3;
    const PRODUCERS: u32 = 3;
    const WRITES: u32 = 100;

    tracing::info!("etcd and three broker processes");
    let mut cluster = Cluster::start(dir, 3, "kill-9").await;
    let bootstrap = cluster.bootstrap();
    let client = Client::connect(&bootstrap).await.expect("connect");

    tracing::info!("a topic of {PARTITIONS} partitions, 3 replicas each, each with a leader");
    create_topic(&client, TOPIC, PARTITIONS).await;
    leaders(&client, &cluster, TOPIC).await;

    tracing::info!("{PRODUCERS} idempotent producers write acks=all to every partition");
    let progress = Arc::new(Progress::default());
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| start_producer(bootstrap.clone(), TOPIC, p, PARTITIONS, WRITES, progress.clone()))
        .collect();
    progress.wait_acknowledged(0, 30).await;

    let victim = leaders(&client, &cluster, TOPIC).await[&0];
    let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != victim).collect();
    tracing::info!(broker = victim, "kill -9 of the process leading partition 0");
    cluster.kill(victim);
    tracing::info!(broker = victim, "its registration lapses with its lease");
    wait_registered(&cluster.bootstrap_without(victim), &others, &[victim]).await;
    tracing::info!(broker = victim, "restarting it from the same config and data");
    cluster.restart(victim).await;
    wait_registered(&cluster.bootstrap_without(victim), &cluster.ids(), &[]).await;

    let acknowledged = join_producers(producers).await;
    let total = PRODUCERS * WRITES;
    tracing::info!(acknowledged = acknowledged.len(), total, "producers done");
    assert!(acknowledged.len() as u32 >= total * 9 / 10, "most writes acknowledged: {}/{total}", acknowledged.len());

    tracing::info!("every acknowledged message is there, once, in order");
    let client = Client::connect(&bootstrap).await.expect("connect");
    leaders(&client, &cluster, TOPIC).await;
    check_acknowledged(&client, TOPIC, PARTITIONS, &acknowledged).await;
    cluster.assert_healthy();
}

#[tokio::test]
async fn a_partition_moves_between_processes_while_producing() {
    init_tracing();
    let dir = LogDir::new("move");
    tokio::time::timeout(TEST_DEADLINE, move_partition(&dir)).await.expect("the test finishes within its deadline");
}

async fn move_partition(dir: &LogDir) {
    const TOPIC: &str = "moves";
    const PARTITIONS: u32 = 2;
    const PRODUCERS: u32 = 2;
    /// Only a bound: the producers stop once the move is done and checked.
    const WRITES_MAX: u32 = 5_000;

    tracing::info!("etcd and four broker processes");
    let mut cluster = Cluster::start(dir, 4, "move").await;
    let bootstrap = cluster.bootstrap();
    let client = Client::connect(&bootstrap).await.expect("connect");

    tracing::info!("a topic of {PARTITIONS} partitions on 3 of the 4 brokers");
    let created = create_topic(&client, TOPIC, PARTITIONS).await;
    let before = leaders(&client, &cluster, TOPIC).await;
    let old_replicas = created.partitions[0].replicas.clone();
    let leader = before[&0];
    let outsider = *cluster.ids().iter().find(|id| !old_replicas.contains(id)).expect("a fourth broker");
    let mut new_replicas: Vec<u64> = old_replicas.iter().copied().filter(|id| *id != leader).collect();
    new_replicas.push(outsider);
    let new_sorted: BTreeSet<u64> = new_replicas.iter().copied().collect();
    assert!(old_replicas.contains(&leader), "the leader {leader} is a replica: {old_replicas:?}");
    assert!(cluster.holds_replica_dir(leader, TOPIC, 0), "the leader keeps partition 0 on disk");
    assert!(!cluster.holds_replica_dir(outsider, TOPIC, 0), "broker {outsider} holds no replica yet");

    tracing::info!("bad moves are refused with typed errors, and change nothing");
    let error = client.move_partition(TOPIC, 0, vec![leader, 99]).await.expect_err("no broker 99");
    assert_eq!(error.code(), Some(ErrorCode::InvalidRequest), "{error}");
    let error = client.move_partition(TOPIC, 7, new_replicas.clone()).await.expect_err("no partition 7");
    assert_eq!(error.code(), Some(ErrorCode::UnknownPartition), "{error}");
    let described = client.describe_topic(TOPIC).await.expect("describe");
    assert_eq!(described.partitions[0].replicas, old_replicas, "refused moves left the partition in place");

    tracing::info!("{PRODUCERS} idempotent producers write acks=all to both partitions");
    let progress = Arc::new(Progress::default());
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| start_producer(bootstrap.clone(), TOPIC, p, PARTITIONS, WRITES_MAX, progress.clone()))
        .collect();
    progress.wait_acknowledged(0, 20).await;

    tracing::info!(?old_replicas, ?new_replicas, leader, "moving partition 0 off its own leader");
    let moved = client.move_partition(TOPIC, 0, new_replicas.clone()).await.expect("move");
    assert_eq!(moved.replicas, new_replicas, "the move is recorded");
    let via_outsider = client.via(&cluster.address(outsider)).await.expect("connect");
    wait_moved(&via_outsider, TOPIC, &new_sorted).await;

    tracing::info!("producing goes on after the move");
    let acknowledged_moved = progress.acknowledged.load(Ordering::Relaxed);
    progress.wait_acknowledged(acknowledged_moved, 40).await;
    progress.stop.store(true, Ordering::Relaxed);
    let acknowledged = join_producers(producers).await;
    tracing::info!(acknowledged = acknowledged.len(), "producers done");

    // Partition 0 left its leader with no replica while the others hold
    // two: the controller's balancing moves a replica of partition 1 there.
    tracing::info!("no partition is moving any more, and partition 0 stays where it was moved");
    let settled = wait_settled(&via_outsider, TOPIC).await;
    let placed: Vec<&Vec<u64>> = settled.partitions.iter().map(|p| &p.replicas).collect();
    tracing::info!(?placed, "replicas once settled");
    let replicas: BTreeSet<u64> = settled.partitions[0].replicas.iter().copied().collect();
    assert_eq!(replicas, new_sorted, "partition 0 was moved again (by the controller's balancing?): {placed:?}");

    tracing::info!("every acknowledged message is there, once, in order");
    check_acknowledged(&client, TOPIC, PARTITIONS, &acknowledged).await;

    tracing::info!(broker = leader, "the removed leader no longer hosts partition 0, nor keeps its data");
    let via_removed = client.via(&cluster.address(leader)).await.expect("connect");
    wait_not_hosted(&via_removed, TOPIC, 0).await;
    for _ in 0..POLL_ATTEMPTS {
        if !cluster.holds_replica_dir(leader, TOPIC, 0) {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    assert!(!cluster.holds_replica_dir(leader, TOPIC, 0), "broker {leader} removed partition 0's directory");
    assert!(cluster.holds_replica_dir(outsider, TOPIC, 0), "broker {outsider} holds partition 0 on disk");
    cluster.assert_healthy();
}

/// Waits (bounded) until partition 0's confirmed voters are `target`, with
/// a leader among them.
async fn wait_moved(client: &Client, topic: &str, target: &BTreeSet<u64>) {
    let mut last = None;
    for _ in 0..MOVE_ATTEMPTS {
        if let Ok(described) = client.describe_topic(topic).await {
            let p = &described.partitions[0];
            let members: BTreeSet<u64> = p.members.iter().copied().collect();
            if members == *target && target.contains(&p.leader) {
                tracing::info!(?members, leader = p.leader, "partition 0 moved");
                return;
            }
            last = Some((members, p.leader));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("partition 0 did not move onto {target:?}; last seen (members, leader): {last:?}");
}

/// Waits (bounded) until every partition's confirmed voters are its
/// replicas (no move under way), and returns that description.
async fn wait_settled(client: &Client, topic: &str) -> proto::TopicDescription {
    let mut last = None;
    for _ in 0..MOVE_ATTEMPTS {
        if let Ok(described) = client.describe_topic(topic).await {
            let settled = described.partitions.iter().all(|p| {
                let members: BTreeSet<u64> = p.members.iter().copied().collect();
                members == p.replicas.iter().copied().collect()
            });
            if settled {
                return described;
            }
            last = Some(described);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("partitions of {topic} still moving: {last:?}");
}

/// Waits (bounded) until the broker `client` is homed at no longer hosts
/// `partition`.
async fn wait_not_hosted(client: &Client, topic: &str, partition: u32) {
    for _ in 0..POLL_ATTEMPTS {
        let described = client.describe_topic(topic).await.expect("describe");
        if !described.partitions[partition as usize].hosted {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("the removed broker still hosts {topic}/{partition}");
}
