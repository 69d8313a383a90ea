//! One simulated run: a cluster from the plan, idempotent acks=all
//! producers and two consumer groups recording a history, the nemesis
//! injecting the plan's faults (safety phase), then faults healed while the
//! first group must catch up (liveness phase), a final read of every
//! partition, and the checkers' verdict.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use madsim::net::NetSim;
use weir::client::Client;
use weir::proto;
use weir::proto::Acks;
use weir::sys::disk::Disk;

use crate::availability::{self, Sample, View, Window};
use crate::checker::replicas::Replica;
use crate::checker::{self, Anomaly, Input};
use crate::cluster::Cluster;
use crate::damage::{self, Damaged};
use crate::history::{History, Op};
use crate::plan::{Fault, Plan};
use crate::workload::{
    await_read_all, consume, describe_replicas, probe, produce, read_all, read_assigned, read_replica, views, Targets,
    OTHER_GROUP, READER,
};
pub use crate::workload::{GROUP, LEADER_ACKS_PRODUCER, NO_ACKS_PRODUCER, TOPIC};

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
    /// What the checkers read besides the history.
    pub final_log: std::collections::BTreeMap<u32, Vec<(u64, u64)>>,
    pub replicas: Vec<Replica>,
    pub unchecked: Vec<String>,
    /// Each fault's effect on each partition it touched.
    pub availability: Vec<Sample>,
}

impl Outcome {
    /// A fingerprint of the whole outcome: the history, the final logs,
    /// every replica's bounds and durable contents, what could not be read,
    /// the anomalies and the verdict. Two runs of one seed that agree on
    /// the history but not on what the disks hold differ here.
    pub fn fingerprint(&self) -> u64 {
        let mut hash = crate::history::fingerprint(&self.ops);
        // Debug of BTreeMaps and Vecs is ordered: stable across runs.
        let rest = format!(
            "{:?}|{:?}|{:?}|{:?}|valid={}",
            self.final_log,
            self.replicas,
            self.unchecked,
            self.anomalies,
            self.anomalies.is_empty()
        );
        hash = crate::history::fnv1a(rest.as_bytes(), hash);
        hash
    }
}

pub async fn run(plan: Plan) -> Outcome {
    // A broker that panics restarts and the run goes on; the runner's panic
    // hook reports every panic as an anomaly.
    let mut cluster = Cluster::start_supervised("sim", plan.brokers, fast_retention).await;
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
                retention_ms: Some(RETENTION_MS as i64),
                ..Default::default()
            };
            client.create_topic(TOPIC, config).await.expect("create the topic");
        })
        .await;

    let stop_producing = Arc::new(AtomicBool::new(false));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    let any = Targets::Any(plan.partitions);
    // Producers with acks=all; beside them, one each with acks=leader and
    // acks=none (what they lose is measured, not an anomaly), and a probe
    // per partition.
    let writers = (1..=plan.producers)
        .map(|p| (p, any, Acks::All))
        .chain([(LEADER_ACKS_PRODUCER, any, Acks::Leader), (NO_ACKS_PRODUCER, any, Acks::None)])
        .chain((0..plan.partitions).filter_map(|p| Some((probe(p)?, Targets::Only(p), Acks::All))));
    for (process, targets, acks) in writers {
        let task =
            produce(bootstrap.clone(), plan.seed, targets, process, acks, history.clone(), stop_producing.clone());
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
    let task = read_assigned(
        bootstrap.clone(),
        plan.partitions,
        READER,
        plan.seed,
        history.clone(),
        stop_producing.clone(),
        stop_consuming.clone(),
    );
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
    // The faults as events in time, heals before starts at one instant:
    // faults may overlap (a plan's companions), each healed at its time.
    let mut events: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, step) in plan.steps.iter().enumerate() {
        events.push((step.at, true, i));
        events.push((step.at + step.lasting, false, i));
    }
    events.sort();
    let mut underway: Vec<Option<(Started, Duration, Vec<View>)>> = plan.steps.iter().map(|_| None).collect();
    let mut windows = Vec::new();
    let mut damaged = Damaged::default();
    // Brokers decommissioned and stopped for good.
    let mut retired: BTreeSet<u64> = BTreeSet::new();
    for (t, is_start, i) in events {
        let step = &plan.steps[i];
        if is_start {
            // Who leads what, asked just before (within the last 250 ms):
            // which partitions the fault touches, and how (availability).
            tokio::time::sleep_until((start + t).checked_sub(Duration::from_millis(250)).unwrap_or(start)).await;
            let (addresses, until) = (in_service(&cluster, &retired), start + t);
            let views = cluster.run(async move { views(&addresses, until).await }).await;
            tokio::time::sleep_until(start + t).await;
            if let Some(gone) = step.fault.brokers().into_iter().find(|b| retired.contains(b)) {
                tracing::info!(fault = ?step.fault, broker = gone, "nemesis: skipped, the broker was decommissioned");
                continue;
            }
            tracing::info!(fault = ?step.fault, lasting = ?step.lasting, "nemesis");
            let started = start_fault(&mut cluster, &bootstrap, &step.fault, &mut damaged, &retired).await;
            // In effect from now (a rot first asks whether a repair is
            // under way, which takes simulated time).
            let at = history.now();
            underway[i] = Some((started, at, views));
        } else {
            tokio::time::sleep_until(start + t).await;
            let Some((started, at, views)) = underway[i].take() else { continue };
            heal_fault(&mut cluster, &bootstrap, &step.fault, started, &mut retired).await;
            let (touched, healthy) = availability::touched(&availability::hit(&step.fault), plan.partitions, &views);
            tracing::debug!(?views, ?touched, ?healthy, "what the fault touched");
            windows.push(Window {
                kind: step.fault.kind(),
                start: at,
                heal: history.now(),
                touched,
                healthy,
                leader_loss: availability::is_leader_loss(&step.fault),
                excuses: availability::excuses(&step.fault),
            });
        }
    }
    windows.sort_by_key(|w| w.start);
    tokio::time::sleep_until(start + plan.safety).await;
    // The last stall ends before the liveness phase.
    let _ = stalling.await;
    let writes_until = history.now();
    stop_producing.store(true, Ordering::Relaxed);
    // A send still retrying when the phase ends stays unknown (`:info`).
    for producer in producers {
        if tokio::time::timeout(SETTLE, &mut *Box::pin(producer)).await.is_err() {
            tracing::info!("a producer was still retrying a send; its outcome stays unknown");
        }
    }

    // Liveness: everything healed; the first group must read all that was
    // acknowledged.
    let deadline = tokio::time::Instant::now() + plan.liveness;
    let acknowledged = await_read_all(&history, deadline, Duration::from_millis(200)).await;
    stop_consuming.store(true, Ordering::Relaxed);
    for consumer in consumers {
        if tokio::time::timeout(SETTLE, &mut *Box::pin(consumer)).await.is_err() {
            tracing::info!("a consumer did not stop in time");
        }
    }

    let address = bootstrap.clone();
    let final_log = cluster.run(read_all(address, plan.partitions)).await.unwrap_or_else(|error| panic!("{error}"));
    let (replicas, unchecked) = replicas(&cluster, &retired).await;
    // Records are stamped with simulated time from 0 on: a run shorter than
    // the retention time must keep them all.
    let run_lasts = plan.safety + plan.liveness + Duration::from_secs(240);
    let retention_ms = (run_lasts < Duration::from_millis(RETENTION_MS)).then_some(RETENTION_MS);
    let input = Input {
        ops: history.ops(),
        final_log,
        complete_group: Some(GROUP.to_owned()),
        replicas,
        unchecked,
        retention_ms,
    };
    let mut anomalies = checker::check(&input);
    anomalies.extend(availability::check(&input.ops, &windows, writes_until));
    let availability = availability::measure(&input.ops, &windows);
    let weak = checker::weak_losses(&input);
    Outcome {
        acknowledged,
        anomalies,
        weak_losses: [LEADER_ACKS_PRODUCER, NO_ACKS_PRODUCER].map(|p| weak.get(&p).copied().unwrap_or_default()),
        ops: input.ops,
        faults: plan.steps.len() + plan.stalls.len(),
        final_log: input.final_log,
        replicas: input.replicas,
        unchecked: input.unchecked,
        availability,
    }
}

/// Every replica of the topic: its bounds as its broker describes them,
/// then, with every broker halted and every disk keeping only what was
/// fsynced (as after a power loss of the whole cluster), its log as its
/// disk holds it. Beside them, what could not be read, and why.
async fn replicas(cluster: &Cluster, retired: &BTreeSet<u64>) -> (Vec<Replica>, Vec<String>) {
    let addresses = in_service(cluster, retired);
    let (described, silent) = cluster.run(describe_replicas(addresses, Duration::from_secs(30))).await;
    let mut unchecked: Vec<String> =
        silent.into_iter().map(|(broker, e)| format!("broker {broker} did not describe its replicas: {e}")).collect();
    for broker in 1..=cluster.addresses().len() as u64 {
        cluster.halt(broker);
        cluster.disk(broker).crash_to_durable();
    }
    let read: Vec<Replica> = described
        .into_iter()
        .filter_map(|mut replica| {
            let disk: Arc<dyn Disk> = Arc::new(cluster.disk(replica.broker));
            let topics = std::path::PathBuf::from(format!("/data/broker-{}/topics", replica.broker));
            let Some(records) = read_replica(disk, &topics, replica.broker, replica.partition) else {
                unchecked.push(format!(
                    "broker {} described a replica of partition {} that its disk does not hold",
                    replica.broker, replica.partition
                ));
                return None;
            };
            replica.records = records;
            Some(replica)
        })
        .collect();
    tracing::info!(
        replicas = read.len(),
        records = read.iter().map(|r| r.records.len()).sum::<usize>(),
        "replicas read from their disks"
    );
    (read, unchecked)
}

/// Every broker's address, by id from 1, but empty for brokers out of
/// service (decommissioned and stopped): those are not asked.
fn in_service(cluster: &Cluster, retired: &BTreeSet<u64>) -> Vec<String> {
    let addresses = cluster.addresses().into_iter().enumerate();
    addresses.map(|(i, address)| if retired.contains(&(i as u64 + 1)) { String::new() } else { address }).collect()
}

/// The test topic's segment size: a partition's log rolls every hundred or
/// so batches.
const SEGMENT_BYTES: u64 = 16 << 10;
/// Retention runs every second, so a clock jump past the topic's retention
/// time meets it (`early-retention`); first after 15 s, longer than any
/// jump lasts, so a broker restarted during a jump has its clock set right
/// before retention looks. (Only here: other tests stamp records at the
/// epoch, which any retention would delete.)
fn fast_retention(config: &mut weir::broker::BrokerConfig) {
    config.retention_check_interval_ms = 1_000;
    config.retention_initial_delay_ms = 15_000;
}

/// The topic keeps records an hour: longer than a run, shorter than the
/// hours a clock jump may step (`early-retention`).
const RETENTION_MS: u64 = 3_600_000;

/// What a started fault leaves for its heal.
enum Started {
    Nothing,
    /// The network's usual latency, to restore.
    Latency(Option<std::ops::Range<Duration>>),
    /// The network's usual packet loss rate, to restore.
    Loss(f64),
    /// The brokers a power loss took down, to start again (not those that
    /// joined while it lasted).
    Crashed(Vec<u64>),
}

/// Asks a broker at `bootstrap` for something, for 5 s at most (the
/// broker asked may be paused); `what` names it in the log. `None` if no
/// broker could be reached or none answered in time.
async fn ask<T, F, Fut>(cluster: &Cluster, bootstrap: &str, what: &'static str, f: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let address = bootstrap.to_owned();
    let asked = async move { Some(f(Client::connect(&address).await.ok()?).await) };
    cluster
        .run(async move {
            let answer = tokio::time::timeout(Duration::from_secs(5), asked).await;
            if answer.is_err() {
                tracing::info!(what, "the nemesis's request went unanswered");
            }
            answer.ok().flatten()
        })
        .await
}

/// Starts one fault; `heal_fault` ends it. Brokers in `retired` are out of
/// service: no fault starts them again.
async fn start_fault(
    cluster: &mut Cluster,
    bootstrap: &str,
    fault: &Fault,
    damaged: &mut Damaged,
    retired: &BTreeSet<u64>,
) -> Started {
    let net = NetSim::current();
    match fault {
        Fault::KillRestart { broker, seed, rot } => {
            let damageable = match rot {
                true => damage::damageable(cluster, *broker, in_service(cluster, retired), damaged).await,
                false => BTreeSet::new(),
            };
            cluster.kill(*broker, *seed).await;
            if *rot {
                if let Some(key) = damage::rot(&cluster.disk(*broker), *broker, *seed, true, &damageable) {
                    damaged.record(*broker, key);
                }
            }
        }
        Fault::Rot { broker, seed } => {
            let damageable = damage::damageable(cluster, *broker, in_service(cluster, retired), damaged).await;
            if let Some(key) = damage::rot(&cluster.disk(*broker), *broker, *seed, false, &damageable) {
                damaged.record(*broker, key);
            }
        }
        Fault::Isolate { broker } => net.clog_node(cluster.node_id(*broker)),
        Fault::CutLink { a, b } => {
            let (a, b) = (cluster.node_id(*a), cluster.node_id(*b));
            net.clog_link(a, b);
            net.clog_link(b, a);
        }
        Fault::Pause { broker } => cluster.pause(*broker),
        Fault::EtcdOutage => net.clog_node(cluster.etcd_node_id()),
        Fault::LatencySpike => {
            let mut usual = None;
            net.update_config(|c| {
                usual = Some(c.send_latency.clone());
                c.send_latency = Duration::from_millis(1)..Duration::from_millis(200);
            });
            return Started::Latency(usual);
        }
        Fault::Move { partition, replicas } => {
            // Recorded, not waited for: the move goes on under later faults.
            let (partition, replicas) = (*partition, replicas.clone());
            ask(cluster, bootstrap, "move", move |client| async move {
                if let Err(error) = client.move_partition(TOPIC, partition, replicas).await {
                    tracing::info!(%error, "the nemesis's move was refused");
                }
            })
            .await;
        }
        Fault::Join { broker } => {
            let id = cluster.join();
            if id != *broker {
                tracing::warn!(id, planned = broker, "the joining broker took another id than planned");
            }
        }
        Fault::Decommission { broker } => {
            let id = *broker;
            ask(cluster, bootstrap, "decommission", move |client| async move {
                match client.decommission_broker(id).await {
                    Ok(status) => tracing::info!(broker = id, replicas = status.replicas, "decommissioned"),
                    Err(error) => tracing::info!(%error, "the nemesis's decommission was refused"),
                }
            })
            .await;
        }
        Fault::OneWay { from, to } => net.clog_link(cluster.node_id(*from), cluster.node_id(*to)),
        Fault::PacketLoss { per_mille } => {
            let mut usual = 0.0;
            net.update_config(|c| {
                usual = c.packet_loss_rate;
                c.packet_loss_rate = f64::from(*per_mille) / 1000.0;
            });
            return Started::Loss(usual);
        }
        Fault::DiskErrors { broker, syncs, writes } => {
            let disk = cluster.disk(*broker);
            disk.fail_next_syncs(*syncs);
            disk.fail_next_writes(*writes);
        }
        Fault::FullDisk { broker } => {
            let disk = cluster.disk(*broker);
            disk.set_capacity(Some(disk.used_bytes()));
        }
        Fault::ReadErrors { broker, reads } => cluster.disk(*broker).fail_next_reads(*reads),
        Fault::PowerLoss { seed } => {
            let brokers: Vec<u64> = (1..=cluster.addresses().len() as u64).filter(|b| !retired.contains(b)).collect();
            crash(cluster, &brokers, *seed).await;
            return Started::Crashed(brokers);
        }
        Fault::CrashMajority { brokers, seed } => crash(cluster, brokers, *seed).await,
        Fault::ClockJump { broker, by_ms } => cluster.step_clock(*broker, *by_ms),
    }
    Started::Nothing
}

/// Ends a fault `start_fault` started. A broker decommissioned meanwhile
/// and stopped for good (in `retired`) is not started again.
async fn heal_fault(
    cluster: &mut Cluster,
    bootstrap: &str,
    fault: &Fault,
    started: Started,
    retired: &mut BTreeSet<u64>,
) {
    let net = NetSim::current();
    if let Fault::Decommission { broker } = fault {
        let id = *broker;
        let drained = ask(cluster, bootstrap, "describe the cluster", move |client| async move {
            let cluster = client.describe_cluster().await.ok()?;
            Some(cluster.decommissioned.iter().find(|b| b.id == id)?.replicas == 0)
        })
        .await
        .flatten();
        if drained == Some(true) {
            tracing::info!(broker = id, "drained: stopped for good");
            cluster.halt(id);
            retired.insert(id);
        } else {
            tracing::info!(broker = id, "not drained in time: recommissioned");
            ask(cluster, bootstrap, "recommission", move |client| async move {
                if let Err(error) = client.recommission_broker(id).await {
                    tracing::info!(%error, "the nemesis's recommission was refused");
                }
            })
            .await;
        }
        return;
    }
    let retired = &*retired;
    let start_again = |cluster: &mut Cluster, broker: u64| {
        if !retired.contains(&broker) {
            cluster.start_again(broker);
        }
    };
    match fault {
        // Started again, not waited for: another fault may hold etcd.
        Fault::KillRestart { broker, .. } => start_again(cluster, *broker),
        Fault::Rot { .. } | Fault::Move { .. } | Fault::Join { .. } | Fault::Decommission { .. } => {}
        Fault::Isolate { broker } => net.unclog_node(cluster.node_id(*broker)),
        Fault::CutLink { a, b } => {
            let (a, b) = (cluster.node_id(*a), cluster.node_id(*b));
            net.unclog_link(a, b);
            net.unclog_link(b, a);
        }
        Fault::Pause { broker } => cluster.resume(*broker),
        Fault::EtcdOutage => net.unclog_node(cluster.etcd_node_id()),
        Fault::LatencySpike => {
            if let Started::Latency(Some(usual)) = started {
                net.update_config(|c| c.send_latency = usual);
            }
        }
        Fault::OneWay { from, to } => net.unclog_link(cluster.node_id(*from), cluster.node_id(*to)),
        Fault::PacketLoss { .. } => {
            if let Started::Loss(usual) = started {
                net.update_config(|c| c.packet_loss_rate = usual);
            }
        }
        Fault::DiskErrors { broker, syncs, writes } => {
            let disk = cluster.disk(*broker);
            disk.fail_next_syncs(0);
            disk.fail_next_writes(0);
            // A failed fsync may have lost what it was to make durable: the
            // broker goes down as a crash would and comes back.
            cluster.kill(*broker, u64::from(*syncs) << 32 | u64::from(*writes)).await;
            start_again(cluster, *broker);
        }
        Fault::ReadErrors { broker, .. } => cluster.disk(*broker).fail_next_reads(0),
        Fault::FullDisk { broker } => {
            cluster.disk(*broker).set_capacity(None);
            cluster.kill(*broker, *broker).await;
            start_again(cluster, *broker);
        }
        Fault::PowerLoss { .. } => {
            if let Started::Crashed(brokers) = started {
                for broker in brokers {
                    start_again(cluster, broker);
                }
            }
        }
        Fault::CrashMajority { brokers, .. } => {
            for &broker in brokers {
                start_again(cluster, broker);
            }
        }
        Fault::ClockJump { broker, by_ms } => cluster.step_clock(*broker, -by_ms),
    }
}

/// `brokers` crash at once, each disk keeping only what it had fsynced
/// (its last write maybe torn, as `seed` and the broker decide).
async fn crash(cluster: &mut Cluster, brokers: &[u64], seed: u64) {
    for &broker in brokers {
        cluster.kill(broker, seed ^ broker.wrapping_mul(0x9E37_79B9)).await;
    }
}
