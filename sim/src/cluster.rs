//! A cluster of brokers on etcd, in both builds: on tokio a real etcd
//! process and in-process brokers on loopback ports; under madsim the
//! simulated etcd and one simulated node per broker, which
//! `Handle::kill` / `restart` take down and bring back. Brokers can be
//! added while the cluster runs. The cluster tests in `tests/` and the
//! simulator's runs both build on it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use weir::broker::config::BrokerConfig;
use weir::client::Client;
use weir::sys::disk::{Disk, SimDisk};

use crate::etcd;

/// A broker's settings in a test cluster; `tweak` adjusts them.
pub fn config(id: u64, listen: std::net::SocketAddr, etcd: &str, cluster: &str) -> BrokerConfig {
    BrokerConfig {
        broker_id: id,
        data_dir: std::path::PathBuf::from(format!("/data/broker-{id}")),
        listen,
        metrics_listen: None,
        etcd: vec![etcd.to_owned()],
        cluster_name: cluster.to_owned(),
        session_timeout_ms: 2_000,
        // Damage the nemesis leaves on a running broker is found within
        // seconds, as on a real cluster within hours.
        scrub_interval_ms: 2_000,
        ..BrokerConfig::default()
    }
}

pub type Tweak = fn(&mut BrokerConfig);

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
        name: String,
        tweak: Tweak,
        etcd: etcd::EtcdServer,
        nodes: Vec<Node>,
    }

    impl Cluster {
        pub async fn start(name: &str, brokers: u64, tweak: Tweak) -> Self {
            let etcd = etcd::EtcdServer::start().await;
            let mut cluster = Self { name: name.to_owned(), tweak, etcd, nodes: Vec::new() };
            for _ in 0..brokers {
                cluster.add_node();
            }
            for i in 0..cluster.nodes.len() {
                cluster.boot(i).await;
            }
            cluster
        }

        fn add_node(&mut self) -> u64 {
            let id = self.nodes.len() as u64 + 1;
            let listen = weir::sys::net::free_loopback_addr().expect("a free port");
            let mut config = config(id, listen, &self.etcd.endpoint(), &self.name);
            (self.tweak)(&mut config);
            self.nodes.push(Node { config, disk: SimDisk::new(id), running: None });
            id
        }

        /// Starts one more broker; returns its id.
        pub async fn add_broker(&mut self) -> u64 {
            let id = self.add_node();
            self.boot((id - 1) as usize).await;
            id
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

        pub fn disk(&self, id: u64) -> SimDisk {
            self.nodes[(id - 1) as usize].disk.clone()
        }

        /// Kills broker `id` (1-based): its server and replicas stop
        /// mid-flight and its disk keeps only what was fsynced (and a
        /// seeded share more).
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
}

#[cfg(madsim)]
mod harness {
    use madsim::runtime::{Handle, NodeHandle};
    use weir::broker::server::{open_broker, serve};
    use weir::sys::clock::{system_clock, SteppedClock};

    use super::*;

    /// A broker's node: its process, disk, address and wall clock (which
    /// outlive the process, as a host's do).
    struct Node {
        handle: NodeHandle,
        disk: SimDisk,
        listen: std::net::SocketAddr,
        clock: Arc<SteppedClock>,
    }

    pub struct Cluster {
        name: String,
        tweak: Tweak,
        etcd: etcd::EtcdServer,
        nodes: Vec<Node>,
        client_nodes: u8,
        supervised: bool,
    }

    impl Cluster {
        /// A cluster whose broker panics end the simulation (what tests
        /// want: a panic fails them).
        pub async fn start(name: &str, brokers: u64, tweak: Tweak) -> Self {
            Self::start_with(name, brokers, tweak, false).await
        }

        /// A cluster whose brokers restart after a panic, as under a
        /// supervisor (systemd), so a run goes on and its history shows
        /// what the panic cost; the caller must count panics itself (a
        /// panic hook), or they go unnoticed.
        pub async fn start_supervised(name: &str, brokers: u64, tweak: Tweak) -> Self {
            Self::start_with(name, brokers, tweak, true).await
        }

        async fn start_with(name: &str, brokers: u64, tweak: Tweak, supervised: bool) -> Self {
            let etcd = etcd::EtcdServer::start().await;
            let mut cluster =
                Self { name: name.to_owned(), tweak, etcd, nodes: Vec::new(), client_nodes: 0, supervised };
            for _ in 0..brokers {
                cluster.add_node();
            }
            for address in cluster.addresses() {
                cluster.run(wait_serving(address)).await;
            }
            cluster
        }

        fn add_node(&mut self) -> u64 {
            let id = self.nodes.len() as u64 + 1;
            let listen: std::net::SocketAddr = format!("10.0.3.{id}:9092").parse().unwrap();
            let disk = SimDisk::new(id);
            let clock = SteppedClock::new(system_clock());
            let node_clock = clock.clone();
            let mut config = config(id, listen, &self.etcd.endpoint(), &self.name);
            (self.tweak)(&mut config);
            let node_disk = disk.clone();
            let handle = Handle::current();
            let mut builder = handle.create_node().name(format!("broker-{id}")).ip(listen.ip());
            if self.supervised {
                builder = builder.restart_on_panic();
            }
            let node = builder
                .init(move || {
                    // A (re)started node is a new process: the old one's
                    // lock on the data directory died with it.
                    node_disk.release_locks();
                    let disk: Arc<dyn Disk> = Arc::new(node_disk.clone());
                    let config = config.clone();
                    let node_disk = node_disk.clone();
                    let clock: Arc<dyn weir::sys::clock::Clock> = node_clock.clone();
                    async move {
                        // A broker that cannot reach etcd, or whose disk
                        // fails a read, as it opens exits with an error, and
                        // its supervisor starts it again (systemd's
                        // Restart=always): a failure to open, not a panic.
                        // Other errors are bugs.
                        let broker = loop {
                            use weir::proto::ErrorCode;
                            match open_broker(config.clone(), disk.clone(), clock.clone()).await {
                                Ok(broker) => break broker,
                                Err(error)
                                    if matches!(
                                        error.code,
                                        ErrorCode::MetadataUnavailable | ErrorCode::StorageFailed
                                    ) =>
                                {
                                    tracing::info!(%error, "the broker did not open; its supervisor starts it again");
                                    node_disk.release_locks();
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                                Err(error) => panic!("broker opens: {error:?}"),
                            }
                        };
                        serve(broker, std::future::pending()).await.expect("broker serves");
                    }
                })
                .build();
            self.nodes.push(Node { handle: node, disk, listen, clock });
            id
        }

        pub async fn add_broker(&mut self) -> u64 {
            let id = self.add_node();
            let address = self.addresses()[(id - 1) as usize].clone();
            self.run(wait_serving(address)).await;
            id
        }

        /// Starts a new broker (the next id, an empty disk) without
        /// waiting for it to serve; its id.
        pub fn join(&mut self) -> u64 {
            self.add_node()
        }

        pub fn addresses(&self) -> Vec<String> {
            self.nodes.iter().map(|node| node.listen.to_string()).collect()
        }

        pub fn disk(&self, id: u64) -> SimDisk {
            self.nodes[(id - 1) as usize].disk.clone()
        }

        pub async fn kill(&mut self, id: u64, seed: u64) {
            let node = &self.nodes[(id - 1) as usize];
            Handle::current().kill(node.handle.id());
            node.disk.crash(seed);
        }

        pub async fn restart(&mut self, id: u64) {
            let node = &self.nodes[(id - 1) as usize];
            Handle::current().restart(node.handle.id());
            let listen = node.listen.to_string();
            self.run(wait_serving(listen)).await;
        }

        /// Starts broker `id` again without waiting for it to serve (it
        /// may wait for etcd, which another fault may hold).
        pub fn start_again(&mut self, id: u64) {
            Handle::current().restart(self.node_id(id));
        }

        pub async fn stop_etcd(&mut self) {
            self.etcd.stop().await;
        }

        /// Stops broker `id` for good, its disk left as it is: everything
        /// it wrote stays readable, synced or not (a process stopped, not a
        /// machine crashed).
        pub fn halt(&self, id: u64) {
            Handle::current().kill(self.node_id(id));
        }

        /// The simulator's node of broker `id` (1-based), for network faults.
        pub fn node_id(&self, id: u64) -> madsim::task::NodeId {
            self.nodes[(id - 1) as usize].handle.id()
        }

        /// The simulated etcd's node, for network faults.
        pub fn etcd_node_id(&self) -> madsim::task::NodeId {
            self.etcd.node_id()
        }

        /// Stops running broker `id`'s tasks (a process stopped by SIGSTOP:
        /// its peers see silence, its memory and disk stay).
        pub fn pause(&self, id: u64) {
            Handle::current().pause(self.node_id(id));
        }

        pub fn resume(&self, id: u64) {
            Handle::current().resume(self.node_id(id));
        }

        /// Steps broker `id`'s wall clock by `by_ms` (negative: backwards);
        /// it keeps the step across restarts, as a host's clock does.
        pub fn step_clock(&self, id: u64, by_ms: i64) {
            self.nodes[(id - 1) as usize].clock.step_ms(by_ms);
        }

        pub fn spawn_client<F>(&self, f: F) -> madsim::task::JoinHandle<F::Output>
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            self.etcd.spawn(f)
        }

        /// Starts client code on a node of its own (`client-<n>`, address
        /// 10.0.4.n), which the simulator can pause and resume as a
        /// whole: a client process stopped, background tasks and all.
        pub fn spawn_client_node<F>(&mut self, f: F) -> (madsim::task::NodeId, madsim::task::JoinHandle<F::Output>)
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            self.client_nodes += 1;
            let n = self.client_nodes;
            let node = Handle::current()
                .create_node()
                .name(format!("client-{n}"))
                .ip(format!("10.0.4.{n}").parse().unwrap())
                .build();
            let task = node.spawn(f);
            (node.id(), task)
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

pub use harness::Cluster;

/// Waits (bounded) until the broker at `address` answers.
pub async fn wait_serving(address: String) {
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

/// `topic` as the live brokers describe it together: each partition as
/// its leader (or else a broker holding a replica) describes it; a broker
/// knows the leaders of the partitions it holds a replica of.
pub async fn describe_everywhere(client: &Client, topic: &str) -> Option<weir::proto::TopicDescription> {
    let brokers = client.describe_cluster().await.ok()?.brokers;
    let mut merged: Option<weir::proto::TopicDescription> = None;
    let mut best: BTreeMap<u32, (u8, weir::proto::PartitionDescription)> = BTreeMap::new();
    for broker in brokers {
        let Ok(view) = client.via(&broker.address).await else { continue };
        let Ok(described) = view.describe_topic(topic).await else { continue };
        for p in &described.partitions {
            // A leader's word beats a replica's, which beats hearsay.
            let rank = if p.leader == broker.id { 2 } else { u8::from(p.hosted) };
            if best.get(&p.partition).is_none_or(|(r, _)| rank > *r) {
                best.insert(p.partition, (rank, p.clone()));
            }
        }
        merged.get_or_insert(described);
    }
    let mut merged = merged?;
    merged.partitions = best.into_values().map(|(_, p)| p).collect();
    Some(merged)
}

/// Leader of each partition as the brokers report it, once every partition
/// has one.
pub async fn leaders(client: &Client, topic: &str) -> BTreeMap<u32, (u64, String)> {
    for _ in 0..400 {
        if let Some(described) = describe_everywhere(client, topic).await {
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

/// Every message of a partition below its high watermark: (offset, value).
pub async fn read_partition(client: &Client, topic: &str, partition: u32) -> Vec<(u64, String)> {
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
        assert!(fetched.next_offset > offset, "a fetch below the high watermark moves on: {offset}");
        offset = fetched.next_offset;
    }
}

/// What producers had acknowledged: (partition, offset, value); values
/// are `p<producer>-<n>`.
pub type Acknowledged = Vec<(u32, u64, String)>;

/// Asserts that every acknowledged message of `topic` is stored where it
/// was acknowledged, that no message is stored twice, that offsets are
/// dense, and that each producer's messages are in the order it sent them.
pub async fn check_history(client: &Client, topic: &str, partitions: u32, acknowledged: &Acknowledged) {
    for partition in 0..partitions {
        let stored = read_partition(client, topic, partition).await;
        let mut offsets_of: BTreeMap<&String, Vec<u64>> = BTreeMap::new();
        for (offset, value) in &stored {
            offsets_of.entry(value).or_default().push(*offset);
        }
        let twice: Vec<_> = offsets_of.iter().filter(|(_, offsets)| offsets.len() > 1).collect();
        assert!(twice.is_empty(), "no message stored twice in partition {partition}: {twice:?}");
        assert!(stored.iter().enumerate().all(|(i, (o, _))| *o == i as u64), "dense offsets in {partition}");
        let at: BTreeMap<u64, &String> = stored.iter().map(|(o, v)| (*o, v)).collect();
        let mine: Vec<&(u32, u64, String)> = acknowledged.iter().filter(|(p, _, _)| *p == partition).collect();
        for (_, offset, value) in &mine {
            assert_eq!(at.get(offset), Some(&value), "acknowledged {value} at {partition}/{offset}");
        }
        let producers: std::collections::BTreeSet<&str> =
            mine.iter().filter_map(|(_, _, v)| v.split('-').next()).collect();
        for producer in producers {
            let prefix = format!("{producer}-");
            let order: Vec<u64> = mine.iter().filter(|(_, _, v)| v.starts_with(&prefix)).map(|(_, o, _)| *o).collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{partition}: {order:?}");
        }
    }
}
