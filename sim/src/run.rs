//! One simulated run: a cluster from the plan, idempotent acks=all
//! producers and two consumer groups recording a history, the nemesis
//! injecting the plan's faults (safety phase), then faults healed while the
//! first group must catch up (liveness phase), a final read of every
//! partition, and the checkers' verdict.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use madsim::net::NetSim;
use weir::client::consumer::{ConsumerConfig, GroupConsumer, SeekTo};
use weir::client::{Client, Producer, ProducerConfig};
use weir::log::{LogConfig, PartitionLog};
use weir::proto;
use weir::proto::Acks;
use weir::sys::clock::system_clock;
use weir::sys::disk::{Disk, SimDisk};
use weir::sys::rng::SeededRng;

use crate::checker::replicas::Replica;
use crate::checker::{self, Anomaly, Input};
use crate::cluster::Cluster;
use crate::history::{History, Kind, Op, Value};
use crate::plan::{Fault, Plan};

pub const TOPIC: &str = "jepsen";
/// The group that must read everything; the second one reads alongside.
pub const GROUP: &str = "g1";
const OTHER_GROUP: &str = "g2";
/// The producers with weaker acks (see [`checker::WEAK_PRODUCERS_FROM`]).
pub const LEADER_ACKS_PRODUCER: u64 = checker::WEAK_PRODUCERS_FROM;
pub const NO_ACKS_PRODUCER: u64 = checker::WEAK_PRODUCERS_FROM + 1;
/// How long a stopped producer or consumer may take to finish.
const SETTLE: Duration = Duration::from_secs(30);

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub ops: Vec<Op>,
    pub anomalies: Vec<Anomaly>,
    pub acknowledged: usize,
    pub faults: usize,
    /// The acks=leader and the acks=none producer: (sends acknowledged,
    /// of those not in the final read).
    pub weak_losses: [(usize, usize); 2],
}

pub async fn run(plan: Plan) -> Outcome {
    // A broker that panics restarts and the run goes on; the runner's panic
    // hook reports every panic as an anomaly.
    let mut cluster = Cluster::start_supervised("sim", plan.brokers, |_| {}).await;
    let bootstrap = cluster.addresses().join(",");
    let history = History::new();

    let address = bootstrap.clone();
    let (partitions, replication) = (plan.partitions, plan.replication);
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            // Small segments, so logs roll, and damage, truncation and
            // recovery meet sealed segments as well as active ones.
            let config = proto::TopicConfig {
                partitions,
                replication_factor: Some(replication),
                segment_bytes: Some(SEGMENT_BYTES),
                ..Default::default()
            };
            client.create_topic(TOPIC, config).await.expect("create the topic");
        })
        .await;

    let stop_producing = Arc::new(AtomicBool::new(false));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 1..=plan.producers {
        let task = produce(bootstrap.clone(), plan.clone(), p, Acks::All, history.clone(), stop_producing.clone());
        producers.push(cluster.spawn_client(task));
    }
    // Beside them, one producer each with acks=leader and acks=none: what
    // they lose is measured, not an anomaly.
    for (process, acks) in [(LEADER_ACKS_PRODUCER, Acks::Leader), (NO_ACKS_PRODUCER, Acks::None)] {
        let task = produce(bootstrap.clone(), plan.clone(), process, acks, history.clone(), stop_producing.clone());
        producers.push(cluster.spawn_client(task));
    }
    let mut consumers = Vec::new();
    let mut member_nodes = Vec::new();
    for m in 0..plan.members {
        let task = consume(bootstrap.clone(), GROUP, 100 + m, plan.seed, history.clone(), stop_consuming.clone());
        let (node, task) = cluster.spawn_client_node(task);
        member_nodes.push(node);
        consumers.push(task);
    }
    let task = consume(bootstrap.clone(), OTHER_GROUP, 200, plan.seed, history.clone(), stop_consuming.clone());
    consumers.push(cluster.spawn_client(task));

    // Safety: the plan's faults, one at a time, each healed before the next;
    // beside them, members stalled one at a time.
    let start = tokio::time::Instant::now();
    let stalls = plan.stalls.clone();
    let stalling = tokio::spawn(async move {
        for stall in stalls {
            tokio::time::sleep_until(start + stall.at).await;
            let node = member_nodes[stall.member as usize];
            tracing::info!(member = stall.member, lasting = ?stall.lasting, "stalling a member");
            madsim::runtime::Handle::current().pause(node);
            tokio::time::sleep(stall.lasting).await;
            madsim::runtime::Handle::current().resume(node);
        }
    });
    for step in &plan.steps {
        tokio::time::sleep_until(start + step.at).await;
        tracing::info!(fault = ?step.fault, lasting = ?step.lasting, "nemesis");
        inject(&mut cluster, &bootstrap, &step.fault, step.lasting).await;
    }
    tokio::time::sleep_until(start + plan.safety).await;
    // The last stall ends before the liveness phase.
    let _ = stalling.await;
    stop_producing.store(true, Ordering::Relaxed);
    // A send still retrying when the phase ends stays unknown (`:info`).
    for producer in producers {
        if tokio::time::timeout(SETTLE, &mut *Box::pin(producer)).await.is_err() {
            tracing::info!("a producer was still retrying a send; its outcome stays unknown");
        }
    }

    // Liveness: everything healed; the first group must read all that was
    // acknowledged.
    let acknowledged: Vec<(u32, u64)> = Input { ops: history.ops(), ..Input::default() }
        .acknowledged()
        .into_iter()
        .map(|(_, partition, _, value)| (partition, value))
        .collect();
    let deadline = tokio::time::Instant::now() + plan.liveness;
    while tokio::time::Instant::now() < deadline {
        let seen = polled_by(&history.ops(), &[100, 101, 102]);
        if acknowledged.iter().all(|key| seen.contains(key)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_consuming.store(true, Ordering::Relaxed);
    for consumer in consumers {
        if tokio::time::timeout(SETTLE, &mut *Box::pin(consumer)).await.is_err() {
            tracing::info!("a consumer did not stop in time");
        }
    }

    let address = bootstrap.clone();
    let final_log = cluster.run(read_all(address, plan.partitions)).await;
    let replicas = replicas(&cluster, plan.brokers).await;
    let input = Input { ops: history.ops(), final_log, complete_group: Some(GROUP.to_owned()), replicas };
    let anomalies = checker::check(&input);
    let weak = checker::weak_losses(&input);
    Outcome {
        acknowledged: acknowledged.len(),
        anomalies,
        weak_losses: [LEADER_ACKS_PRODUCER, NO_ACKS_PRODUCER].map(|p| weak.get(&p).copied().unwrap_or_default()),
        ops: input.ops,
        faults: plan.steps.len() + plan.stalls.len(),
    }
}

fn polled_by(ops: &[Op], processes: &[u64]) -> std::collections::BTreeSet<(u32, u64)> {
    ops.iter()
        .filter(|op| op.kind == Kind::Ok && processes.contains(&op.process))
        .filter_map(|op| match &op.value {
            Value::Poll(polled) => Some(polled),
            _ => None,
        })
        .flat_map(|polled| polled.iter().flat_map(|(p, records)| records.iter().map(move |(_, v)| (*p, *v))))
        .collect()
}

/// A producer: unique values (`process * 1e9 + n`) to partitions in turn,
/// idempotent, one at a time.
async fn produce(bootstrap: String, plan: Plan, process: u64, acks: Acks, history: History, stop: Arc<AtomicBool>) {
    let Ok(client) = Client::connect(&bootstrap).await else { return };
    let producer = Producer::new(client, ProducerConfig { batch_bytes_max: 0, acks, ..ProducerConfig::default() });
    let mut rng = SeededRng::new(plan.seed.wrapping_mul(31).wrapping_add(process));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let partition = rng.below(u64::from(plan.partitions)) as u32;
        let value = process * 1_000_000_000 + n;
        n += 1;
        history.record(process, Kind::Invoke, Value::Send { partition, value, offset: None });
        // Stamped with the simulated wall clock, as a real producer would:
        // retention by age then keeps what a week keeps (all of it).
        let now_ms = system_clock().now_ms();
        let record = weir::client::producer::record(None, value.to_string().as_bytes(), now_ms);
        let delivered = match producer.send(TOPIC, Some(partition), record).await {
            Ok(delivery) => delivery.wait().await,
            Err(error) => Err(error),
        };
        match delivered {
            Ok(delivered) => {
                // acks=none learns no offset.
                let offset = (acks != Acks::None).then_some(delivered.offset);
                let done = Value::Send { partition, value, offset };
                history.record(process, Kind::Ok, done);
            }
            // Whether it was written is unknown: a retry may have landed.
            Err(_) => {
                history.record(process, Kind::Info, Value::Send { partition, value, offset: None });
            }
        }
        tokio::time::sleep(Duration::from_millis(10 + rng.below(40))).await;
    }
}

/// A group member: polls, notes each new assignment, commits what it read,
/// and now and then seeks back in one of its partitions.
async fn consume(
    bootstrap: String,
    group: &'static str,
    process: u64,
    seed: u64,
    history: History,
    stop: Arc<AtomicBool>,
) {
    let mut rng = SeededRng::new(seed.wrapping_mul(37).wrapping_add(process));
    let mut consumer = None;
    let mut noted: Option<(u64, Vec<u32>)> = None;
    while !stop.load(Ordering::Relaxed) {
        let member = match consumer.as_mut() {
            Some(member) => member,
            None => {
                let joined = match Client::connect(&bootstrap).await {
                    Ok(client) => {
                        let mut config = ConsumerConfig::new(group, &[TOPIC]);
                        config.auto_commit = false;
                        config.session_timeout = Duration::from_secs(6);
                        config.heartbeat_interval = Duration::from_secs(1);
                        GroupConsumer::join(client, config).await
                    }
                    Err(error) => Err(error),
                };
                match joined {
                    Ok(member) => consumer.insert(member),
                    Err(error) => {
                        tracing::info!(process, %error, "joining failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
        };
        if rng.chance(1, 25) {
            seek_back(member, group, process, &mut rng, &history).await;
        }
        history.record(process, Kind::Invoke, Value::Poll(BTreeMap::new()));
        let polled = member.poll(Duration::from_millis(300)).await;
        note_assignment(member, group, process, &history, &mut noted);
        match polled {
            Ok(records) => {
                let mut by_partition: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
                for consumed in records {
                    let value = value_of(&consumed.record);
                    by_partition.entry(consumed.partition).or_default().push((consumed.record.offset, value));
                }
                let read_any = !by_partition.is_empty();
                history.record(process, Kind::Ok, Value::Poll(by_partition));
                if read_any {
                    let generation = member.generation();
                    let offsets: BTreeMap<u32, u64> =
                        member.positions().into_iter().map(|((_, partition), offset)| (partition, offset)).collect();
                    let value = Value::Commit { group: group.to_owned(), generation, offsets };
                    history.record(process, Kind::Invoke, value.clone());
                    let kind = match member.commit().await {
                        Ok(()) => Kind::Ok,
                        Err(error) => {
                            tracing::info!(process, %error, "commit failed");
                            Kind::Info
                        }
                    };
                    history.record(process, kind, value);
                }
            }
            Err(error) => {
                tracing::info!(process, %error, "poll failed");
                history.record(process, Kind::Info, Value::Poll(BTreeMap::new()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if let Some(member) = consumer {
        let _ = member.close().await;
    }
}

/// Moves one assigned partition's position back: a few records, to the
/// beginning, or to a time in the last few seconds (never forward, so the
/// group still reads everything). Recorded as a seek with where it landed.
async fn seek_back(member: &mut GroupConsumer, group: &str, process: u64, rng: &mut SeededRng, history: &History) {
    let positions = member.positions();
    if positions.is_empty() {
        return;
    }
    let ((topic, partition), position) = positions[rng.below(positions.len() as u64) as usize].clone();
    let mut partitions: Vec<u32> = positions.iter().map(|((_, p), _)| *p).collect();
    partitions.sort_unstable();
    let value = |offset| Value::Seek { group: group.to_owned(), partition, offset, partitions: partitions.clone() };
    history.record(process, Kind::Invoke, value(None));
    let target = match rng.below(4) {
        0 => SeekTo::Beginning,
        1 => SeekTo::Timestamp(system_clock().now_ms() - 1 - rng.below(5_000) as i64),
        _ => SeekTo::Offset(position.saturating_sub(1 + rng.below(30))),
    };
    match member.seek_to(&topic, partition, target).await {
        Ok(offset) if offset <= position => {
            history.record(process, Kind::Ok, value(Some(offset)));
        }
        Ok(_) => {
            // The time lies ahead of what this member has read: back to
            // where it was, which is a seek too.
            let moved = member.seek(&topic, partition, position).map(|()| position);
            let kind = if moved.is_ok() { Kind::Ok } else { Kind::Info };
            history.record(process, kind, value(moved.ok()));
        }
        Err(error) => {
            // A lookup that failed leaves the position where it was.
            tracing::info!(process, %error, "seek failed");
            history.record(process, Kind::Fail, value(None));
        }
    }
}

/// The integer a producer sent in `record` (`u64::MAX` for anything else,
/// which no producer sends, so the checkers see it as foreign).
fn value_of(record: &proto::Record) -> u64 {
    parse_value(record.value.as_deref())
}

fn parse_value(value: Option<&[u8]>) -> u64 {
    value.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

fn note_assignment(
    member: &GroupConsumer,
    group: &str,
    process: u64,
    history: &History,
    noted: &mut Option<(u64, Vec<u32>)>,
) {
    let generation = member.generation();
    let mut partitions: Vec<u32> = member.assignment().into_iter().map(|(_, p)| p).collect();
    partitions.sort_unstable();
    if noted.as_ref() != Some(&(generation, partitions.clone())) {
        let value = Value::Assign { group: group.to_owned(), generation, partitions: partitions.clone() };
        history.record(process, Kind::Ok, value);
        *noted = Some((generation, partitions));
    }
}

/// Every partition read from offset 0 to its high watermark, retrying while
/// leaders settle.
async fn read_all(bootstrap: String, partitions: u32) -> BTreeMap<u32, Vec<(u64, u64)>> {
    let client = Client::connect(&bootstrap).await.expect("connect for the final read");
    let mut out = BTreeMap::new();
    for partition in 0..partitions {
        let mut records = Vec::new();
        let mut offset = 0;
        // Bounded in time, not in attempts: one fetch retries for a while
        // itself, and a leaderless partition must fail the run with this
        // message, well within madsim's time limit.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match client.fetch(TOPIC, partition, offset, 1 << 20, Duration::ZERO).await {
                Ok(fetched) => {
                    records.extend(fetched.records.iter().map(|record| (record.offset, value_of(record))));
                    if fetched.next_offset >= fetched.high_watermark {
                        break;
                    }
                    offset = fetched.next_offset;
                }
                Err(error) => {
                    let now = tokio::time::Instant::now();
                    assert!(now < deadline, "the final read of partition {partition} keeps failing: {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        out.insert(partition, records);
    }
    out
}

/// Every replica of the topic: its bounds as its broker describes them,
/// then, with every broker halted (their disks as they are), its log as
/// its disk holds it.
async fn replicas(cluster: &Cluster, brokers: u64) -> Vec<Replica> {
    let addresses = cluster.addresses();
    let described = cluster
        .run(async move {
            let mut out = Vec::new();
            for (i, address) in addresses.iter().enumerate() {
                let broker = i as u64 + 1;
                let Ok(client) = Client::connect(address).await else { continue };
                let Ok(topic) = client.describe_topic(TOPIC).await else { continue };
                out.extend(topic.partitions.iter().filter(|p| p.hosted).map(|p| Replica {
                    broker,
                    partition: p.partition,
                    log_start: p.log_start_offset,
                    high_watermark: p.high_watermark,
                    log_end: p.log_end_offset,
                    records: BTreeMap::new(),
                }));
            }
            out
        })
        .await;
    for broker in 1..=brokers {
        cluster.halt(broker);
    }
    let read: Vec<Replica> = described
        .into_iter()
        .filter_map(|mut replica| {
            replica.records = read_replica(cluster, replica.broker, replica.partition)?;
            Some(replica)
        })
        .collect();
    tracing::info!(
        replicas = read.len(),
        records = read.iter().map(|r| r.records.len()).sum::<usize>(),
        "replicas read from their disks"
    );
    read
}

/// A replica's log read from its broker's disk: offset → value; `None` if
/// the disk no longer holds it (a move completed after it was described).
fn read_replica(cluster: &Cluster, broker: u64, partition: u32) -> Option<BTreeMap<u64, u64>> {
    let disk: Arc<dyn Disk> = Arc::new(cluster.disk(broker));
    let topics = std::path::PathBuf::from(format!("/data/broker-{broker}/topics"));
    let topic = disk
        .list_subdirs(&topics)
        .unwrap_or_default()
        .into_iter()
        .find(|name| name.rsplit_once('-').is_some_and(|(topic, _)| topic == TOPIC))?;
    let topic = topics.join(topic);
    disk.list_subdirs(&topic).unwrap_or_default().contains(&partition.to_string()).then_some(())?;
    let dir = topic.join(partition.to_string());
    let log = match PartitionLog::open(disk, &dir, LogConfig::default(), system_clock()) {
        Ok(log) => log,
        Err(error) => {
            tracing::warn!(broker, partition, %error, "a replica's log does not open");
            return Some(BTreeMap::new());
        }
    };
    let mut records = BTreeMap::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let Ok(batches) = log.read(offset, 1 << 20, u64::MAX) else { break };
        let Some(last) = batches.last() else { break };
        offset = last.next_offset();
        for batch in &batches {
            for record in batch.records().flatten() {
                records.insert(record.offset, parse_value(record.value.as_deref()));
            }
        }
    }
    Some(records)
}

/// Every segment file on a broker's disk, by partition directory, oldest
/// first.
fn segment_files(disk: &dyn Disk, broker: u64) -> Vec<Vec<std::path::PathBuf>> {
    let topics = std::path::PathBuf::from(format!("/data/broker-{broker}/topics"));
    let mut out = Vec::new();
    for topic in disk.list_subdirs(&topics).unwrap_or_default() {
        let topic = topics.join(topic);
        for partition in disk.list_subdirs(&topic).unwrap_or_default() {
            let dir = topic.join(partition);
            let mut names: Vec<String> =
                disk.list_dir(&dir).unwrap_or_default().into_iter().filter(|n| n.ends_with(".log")).collect();
            names.sort();
            out.push(names.into_iter().map(|n| dir.join(n)).collect());
        }
    }
    out
}

/// Bit rot chosen by `seed`: one bit flipped anywhere in one segment file,
/// or (one time in three, with `may_cut`, for a stopped broker) a sealed
/// segment cut short. The active segment is not cut: after a crash a
/// shortened active segment is a torn tail, which recovery cannot tell from
/// lost acknowledged data. A running broker's file is only flipped, and
/// only where its bytes are durable.
fn rot_a_segment(disk: &SimDisk, broker: u64, seed: u64, may_cut: bool) {
    let mut rng = SeededRng::new(seed ^ 0xB17_F11B);
    let partitions = segment_files(disk, broker);
    let sealed: Vec<&std::path::PathBuf> =
        partitions.iter().flat_map(|files| files.iter().take(files.len().saturating_sub(1))).collect();
    let all: Vec<&std::path::PathBuf> = partitions.iter().flatten().collect();
    let cut = !sealed.is_empty() && rng.chance(1, 3) && may_cut;
    let candidates: Vec<&std::path::PathBuf> = if cut { sealed } else { all };
    // Bytes both reads and a crash would see.
    let len = |p: &std::path::Path| disk.file_len(p).unwrap_or(0).min(disk.durable_len(p).unwrap_or(0));
    let candidates: Vec<_> = candidates.into_iter().filter(|p| len(p) > 0).collect();
    if candidates.is_empty() {
        return;
    }
    let victim = candidates[rng.below(candidates.len() as u64) as usize];
    let len = len(victim);
    let position = rng.below(len);
    if cut {
        let file = disk.open(victim, false).and_then(|file| file.set_len(position).and_then(|()| file.sync()));
        tracing::info!(broker, file = %victim.display(), position, ok = file.is_ok(), "nemesis: sealed segment cut short");
    } else {
        let mask = 1u8 << rng.below(8);
        let flipped = disk.corrupt_byte(victim, position, mask);
        tracing::info!(broker, file = %victim.display(), position, mask, ok = flipped.is_ok(), "nemesis: bit flipped");
    }
}

/// Whether any broker is repairing a replica (or cannot say): damage is
/// put into one replica at a time, as the fault model has it. Two damaged
/// replicas of three may leave nobody with the whole log, and then the
/// partition waits for an operator, by design (sim/README.md).
async fn repair_under_way(cluster: &Cluster) -> bool {
    let addresses = cluster.addresses();
    cluster
        .run(async move {
            for address in addresses {
                let Ok(client) = Client::connect(&address).await else { return true };
                for topic in [TOPIC, weir::broker::server::OFFSETS_TOPIC] {
                    match client.describe_topic(topic).await {
                        Ok(described) if described.partitions.iter().all(|p| !p.repairing) => {}
                        _ => return true,
                    }
                }
            }
            false
        })
        .await
}

/// The test topic's segment size: a partition's log rolls every hundred or
/// so batches.
const SEGMENT_BYTES: u64 = 16 << 10;

/// Injects one fault, waits `lasting`, heals it.
async fn inject(cluster: &mut Cluster, bootstrap: &str, fault: &Fault, lasting: Duration) {
    let net = NetSim::current();
    match fault {
        Fault::KillRestart { broker, seed, rot } => {
            let rot = *rot && !repair_under_way(cluster).await;
            cluster.kill(*broker, *seed).await;
            if rot {
                rot_a_segment(&cluster.disk(*broker), *broker, *seed, true);
            }
            tokio::time::sleep(lasting).await;
            cluster.restart(*broker).await;
        }
        Fault::Rot { broker, seed } => {
            if !repair_under_way(cluster).await {
                rot_a_segment(&cluster.disk(*broker), *broker, *seed, false);
            }
            tokio::time::sleep(lasting).await;
        }
        Fault::Isolate { broker } => {
            let node = cluster.node_id(*broker);
            net.clog_node(node);
            tokio::time::sleep(lasting).await;
            net.unclog_node(node);
        }
        Fault::CutLink { a, b } => {
            let (a, b) = (cluster.node_id(*a), cluster.node_id(*b));
            net.clog_link(a, b);
            net.clog_link(b, a);
            tokio::time::sleep(lasting).await;
            net.unclog_link(a, b);
            net.unclog_link(b, a);
        }
        Fault::Pause { broker } => {
            cluster.pause(*broker);
            tokio::time::sleep(lasting).await;
            cluster.resume(*broker);
        }
        Fault::EtcdOutage => {
            let node = cluster.etcd_node_id();
            net.clog_node(node);
            tokio::time::sleep(lasting).await;
            net.unclog_node(node);
        }
        Fault::LatencySpike => {
            let mut usual = None;
            net.update_config(|c| {
                usual = Some(c.send_latency.clone());
                c.send_latency = Duration::from_millis(1)..Duration::from_millis(200);
            });
            tokio::time::sleep(lasting).await;
            if let Some(usual) = usual {
                net.update_config(|c| c.send_latency = usual);
            }
        }
        Fault::Move { partition, replicas } => {
            let (address, partition, replicas) = (bootstrap.to_owned(), *partition, replicas.clone());
            // Recorded, not waited for: the move goes on under later faults.
            cluster
                .run(async move {
                    if let Ok(client) = Client::connect(&address).await {
                        if let Err(error) = client.move_partition(TOPIC, partition, replicas).await {
                            tracing::info!(%error, "the nemesis's move was refused");
                        }
                    }
                })
                .await;
            tokio::time::sleep(lasting).await;
        }
        Fault::OneWay { from, to } => {
            let (from, to) = (cluster.node_id(*from), cluster.node_id(*to));
            net.clog_link(from, to);
            tokio::time::sleep(lasting).await;
            net.unclog_link(from, to);
        }
        Fault::PacketLoss { per_mille } => {
            let mut usual = 0.0;
            net.update_config(|c| {
                usual = c.packet_loss_rate;
                c.packet_loss_rate = f64::from(*per_mille) / 1000.0;
            });
            tokio::time::sleep(lasting).await;
            net.update_config(|c| c.packet_loss_rate = usual);
        }
        Fault::DiskErrors { broker, syncs, writes } => {
            let disk = cluster.disk(*broker);
            disk.fail_next_syncs(*syncs);
            disk.fail_next_writes(*writes);
            tokio::time::sleep(lasting).await;
            disk.fail_next_syncs(0);
            disk.fail_next_writes(0);
            // A failed fsync may have lost what it was to make durable: the
            // broker goes down as a crash would and comes back.
            cluster.kill(*broker, u64::from(*syncs) << 32 | u64::from(*writes)).await;
            cluster.restart(*broker).await;
        }
        Fault::FullDisk { broker } => {
            let disk = cluster.disk(*broker);
            disk.set_capacity(Some(disk.used_bytes()));
            tokio::time::sleep(lasting).await;
            disk.set_capacity(None);
            cluster.kill(*broker, *broker).await;
            cluster.restart(*broker).await;
        }
    }
}
