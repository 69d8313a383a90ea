//! The workload, shared by the simulator (`run.rs`) and the nemesis harness
//! against real hosts (`nemesis.rs`): idempotent producers writing unique
//! integers, group members polling, committing and seeking back, and a final
//! read of every partition. Each records what it did in a [`History`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir::client::consumer::{ConsumerConfig, GroupConsumer, SeekTo};
use weir::client::{Client, Producer, ProducerConfig};
use weir::log::{LogConfig, PartitionLog};
use weir::proto;
use weir::proto::Acks;
use weir::sys::clock::system_clock;
use weir::sys::disk::Disk;
use weir::sys::rng::SeededRng;

use crate::checker;
use crate::checker::replicas::Replica;
use crate::history::{History, Kind, Op, Value};

pub const TOPIC: &str = "jepsen";
/// The group that must read everything; the second one reads alongside.
pub const GROUP: &str = "g1";
pub const OTHER_GROUP: &str = "g2";
/// The processes of the first group's members.
pub const GROUP_MEMBERS: [u64; 3] = [100, 101, 102];
/// The process of the consumer that assigns itself partitions (no group).
pub const READER: u64 = 300;
/// The producers with weaker acks (see [`checker::WEAK_PRODUCERS_FROM`]).
pub const LEADER_ACKS_PRODUCER: u64 = checker::WEAK_PRODUCERS_FROM;
pub const NO_ACKS_PRODUCER: u64 = checker::WEAK_PRODUCERS_FROM + 1;

/// Every (partition, value) the given processes read in successful polls.
fn polled_by(ops: &[Op], processes: &[u64]) -> BTreeSet<(u32, u64)> {
    ops.iter()
        .filter(|op| op.kind == Kind::Ok && processes.contains(&op.process))
        .filter_map(|op| match &op.value {
            Value::Poll(polled) => Some(polled),
            _ => None,
        })
        .flat_map(|polled| polled.iter().flat_map(|(p, records)| records.iter().map(move |(_, v)| (*p, *v))))
        .collect()
}

/// Waits until the first group's members have, together, polled every send
/// acknowledged under acks=all so far, and so has the consumer without a
/// group (its final polls, as Jepsen's), or until `deadline`, looking every
/// `every`. Returns how many sends were acknowledged.
pub async fn await_read_all(history: &History, deadline: tokio::time::Instant, every: Duration) -> usize {
    let acknowledged: Vec<(u32, u64)> = checker::Input { ops: history.ops(), ..checker::Input::default() }
        .acknowledged()
        .into_iter()
        .map(|(_, partition, _, value)| (partition, value))
        .collect();
    while tokio::time::Instant::now() < deadline {
        let ops = history.ops();
        let (group, reader) = (polled_by(&ops, &GROUP_MEMBERS), polled_by(&ops, &[READER]));
        if acknowledged.iter().all(|key| group.contains(key) && reader.contains(key)) {
            break;
        }
        tokio::time::sleep(every).await;
    }
    acknowledged.len()
}

/// The first probe's process: an acks=all producer of its own for each
/// partition (see [`probe`]).
pub const PROBES_FROM: u64 = 10;

/// The probe of `partition`, if it has one: partitions below
/// `WEAK_PRODUCERS_FROM - PROBES_FROM` do (every plan's do).
pub fn probe(partition: u32) -> Option<u64> {
    let process = PROBES_FROM + u64::from(partition);
    (process < checker::WEAK_PRODUCERS_FROM).then_some(process)
}

/// Where a producer writes: a random partition each time, or always one
/// (a probe, writing every 250 to 500 ms). The producers that pick at
/// random write one at a time, so while one waits out a fault on one
/// partition it writes nowhere else; a partition no one tried to write
/// looked unavailable. Probes give every partition a writer of its own,
/// and availability (`availability.rs`) its measure.
#[derive(Debug, Clone, Copy)]
pub enum Targets {
    Any(u32),
    Only(u32),
}

/// A producer: unique values (`process * 1e9 + n`) to its targets,
/// idempotent, one at a time.
#[allow(clippy::too_many_arguments)]
pub async fn produce(
    bootstrap: String,
    seed: u64,
    targets: Targets,
    process: u64,
    acks: Acks,
    history: History,
    stop: Arc<AtomicBool>,
) {
    let Ok(client) = Client::connect(&bootstrap).await else { return };
    let producer = Producer::new(client, ProducerConfig { batch_bytes_max: 0, acks, ..ProducerConfig::default() });
    let mut rng = SeededRng::new(seed.wrapping_mul(31).wrapping_add(process));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let partition = match targets {
            Targets::Any(partitions) => rng.below(u64::from(partitions)) as u32,
            Targets::Only(partition) => partition,
        };
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
            // Refused by every attempt: not written. Otherwise whether it
            // was is unknown (a retry may have landed).
            Err(error) => {
                let kind = if error.did_nothing() { Kind::Fail } else { Kind::Info };
                history.record(process, kind, Value::Send { partition, value, offset: None });
            }
        }
        let pause = match targets {
            Targets::Any(_) => 10 + rng.below(40),
            Targets::Only(_) => 250 + rng.below(250),
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// A group member: polls, notes each new assignment, commits what it read,
/// and now and then seeks back in one of its partitions.
pub async fn consume(
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
                // Joining is an operation of its own: the member fetches
                // the group's commits while it joins, so where it starts
                // is judged against the commits accepted before this.
                let joining = Value::Assign {
                    group: Some(group.to_owned()),
                    generation: 0,
                    partitions: Vec::new(),
                    starts: BTreeMap::new(),
                };
                history.record(process, Kind::Invoke, joining.clone());
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
                    Ok(member) => {
                        noted = None;
                        note_assignment(&member, group, process, &history, &mut noted);
                        consumer.insert(member)
                    }
                    Err(error) => {
                        tracing::info!(process, %error, "joining failed");
                        history.record(process, Kind::Info, joining);
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
                            if error.did_nothing() {
                                Kind::Fail
                            } else {
                                Kind::Info
                            }
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

/// A consumer without a group, as Kafka's `assign()`: it picks its
/// partitions itself and now and then picks another set, keeping its
/// position in the partitions it keeps; one it newly takes it reads from
/// the beginning. Each poll fetches every assigned partition once from its
/// position. Unlike a group member it is never moved by a rebalance, so
/// Jepsen's checker holds it to poll-skip and nonmonotonic-poll (which it
/// cannot for subscribers), and so do ours, across its reassignments too.
/// It reads with the bare client, not the group consumer: a second way of
/// reading the same logs. Once `finish` is set (the producers stopped) it
/// takes every partition for good and reads on to the end: Jepsen's final
/// polls, after which nothing acknowledged may be unseen.
pub async fn read_assigned(
    bootstrap: String,
    partitions: u32,
    process: u64,
    seed: u64,
    history: History,
    finish: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = SeededRng::new(seed.wrapping_mul(41).wrapping_add(process));
    let client = loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match Client::connect(&bootstrap).await {
            Ok(client) => break client,
            Err(error) => {
                tracing::info!(process, %error, "connecting failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
    let mut polls_left = 0u64;
    let mut finishing = false;
    while !stop.load(Ordering::Relaxed) {
        if !finishing && finish.load(Ordering::Relaxed) {
            finishing = true;
            polls_left = 0;
        }
        if polls_left == 0 {
            let mut chosen: Vec<u32> = match finishing {
                true => (0..partitions).collect(),
                false => (0..partitions).filter(|_| rng.chance(1, 2)).collect(),
            };
            if chosen.is_empty() {
                chosen.push(rng.below(u64::from(partitions)) as u32);
            }
            let invoked =
                Value::Assign { group: None, generation: 0, partitions: chosen.clone(), starts: BTreeMap::new() };
            history.record(process, Kind::Invoke, invoked);
            positions.retain(|partition, _| chosen.contains(partition));
            for partition in &chosen {
                positions.entry(*partition).or_insert(0);
            }
            let starts = positions.clone();
            history.record(process, Kind::Ok, Value::Assign { group: None, generation: 0, partitions: chosen, starts });
            polls_left = if finishing { u64::MAX } else { 10 + rng.below(30) };
        }
        polls_left -= 1;
        history.record(process, Kind::Invoke, Value::Poll(BTreeMap::new()));
        let mut polled: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        let mut failed = None;
        for (partition, position) in &mut positions {
            match client.fetch(TOPIC, *partition, *position, 64 << 10, Duration::ZERO).await {
                Ok(fetched) => {
                    if !fetched.records.is_empty() {
                        let records = fetched.records.iter().map(|record| (record.offset, value_of(record)));
                        polled.insert(*partition, records.collect());
                    }
                    *position = fetched.next_offset;
                }
                Err(error) => failed = Some(error),
            }
        }
        // What the other partitions returned has moved their positions, so
        // a poll with a failed fetch still completes with what it read.
        match failed {
            Some(error) if polled.is_empty() => {
                tracing::info!(process, %error, "poll failed");
                history.record(process, Kind::Info, Value::Poll(polled));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => {
                let read_any = !polled.is_empty();
                history.record(process, Kind::Ok, Value::Poll(polled));
                if !read_any {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
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
pub fn value_of(record: &proto::Record) -> u64 {
    parse_value(record.value.as_deref())
}

pub fn parse_value(value: Option<&[u8]>) -> u64 {
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
        let starts = member.starts().into_iter().map(|((_, partition), offset)| (partition, offset)).collect();
        let value = Value::Assign { group: Some(group.to_owned()), generation, partitions: partitions.clone(), starts };
        history.record(process, Kind::Ok, value);
        *noted = Some((generation, partitions));
    }
}

/// Every partition read from offset 0 to its high watermark, retrying while
/// leaders settle.
pub async fn read_all(bootstrap: String, partitions: u32) -> Result<BTreeMap<u32, Vec<(u64, u64)>>, String> {
    let client =
        Client::connect(&bootstrap).await.map_err(|error| format!("connecting for the final read: {error}"))?;
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
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!("the final read of partition {partition} keeps failing: {error}"));
                    }
                    // Retention (or a bug) moved the log start past
                    // `offset`: read on from the start, and let the
                    // checkers judge the gap.
                    let moved = error.code() == Some(proto::ErrorCode::OffsetOutOfRange) && records.is_empty();
                    let start = match moved {
                        true => client.list_offset(TOPIC, partition, proto::OffsetSpec::Earliest, 0).await.ok(),
                        false => None,
                    };
                    match start {
                        Some(start) if start > offset => offset = start,
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        }
        out.insert(partition, records);
    }
    Ok(out)
}

/// Every replica of the topic as its broker describes it (bounds only; the
/// records are read from the disks once the brokers have stopped). Brokers
/// are numbered by their place in `addresses`, from 1; an empty address
/// is a broker out of service (decommissioned), not asked. A broker that does
/// not answer is asked again for up to `patience` (it may be restarting
/// from the last fault); one that never does leaves its replicas
/// unchecked, and its last error is returned beside the replicas.
pub async fn describe_replicas(addresses: Vec<String>, patience: Duration) -> (Vec<Replica>, Vec<(u64, String)>) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let (replicas, silent) = describe_once(&addresses, deadline).await;
        if settled(&replicas) || tokio::time::Instant::now() >= deadline {
            return (replicas, silent);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether no membership change is under way in what `replicas` say:
/// every replica of a partition names the same single voter set, which is
/// the partition's assigned replicas. The replicas are read from disk
/// against the voter sets described; a move completing in between (sweep
/// seed 6490: the leader committed its new voters between the describe
/// and the halt, and wrote on) made records durable on the new voters
/// look short of a majority of the old ones.
fn settled(replicas: &[Replica]) -> bool {
    let sorted = |brokers: &[u64]| {
        let mut brokers = brokers.to_vec();
        brokers.sort_unstable();
        brokers
    };
    let partitions: BTreeSet<u32> = replicas.iter().map(|r| r.partition).collect();
    partitions.into_iter().all(|partition| {
        let of_partition: Vec<&Replica> = replicas.iter().filter(|r| r.partition == partition).collect();
        // The leader's view: one voter set, the assigned replicas.
        let Some(leader) = of_partition.iter().find(|r| r.leader == r.broker) else { return false };
        let [voters] = leader.voter_sets.as_slice() else { return false };
        let voters = sorted(voters);
        voters == sorted(&leader.members)
            && of_partition
                .iter()
                .filter(|r| voters.contains(&r.broker))
                .all(|r| r.voter_sets.len() == 1 && sorted(&r.voter_sets[0]) == voters)
    })
}

async fn describe_once(addresses: &[String], deadline: tokio::time::Instant) -> (Vec<Replica>, Vec<(u64, String)>) {
    let mut out = Vec::new();
    let mut silent = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let broker = i as u64 + 1;
        if address.is_empty() {
            continue; // out of service: not asked
        }
        let described = loop {
            let attempt = match Client::connect(address).await {
                Ok(client) => client.describe_topic(TOPIC).await,
                Err(error) => Err(error),
            };
            match attempt {
                Ok(topic) => break Ok(topic),
                Err(error) if tokio::time::Instant::now() >= deadline => break Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        match described {
            Ok(topic) => out.extend(topic.partitions.iter().filter(|p| p.hosted).map(|p| Replica {
                broker,
                partition: p.partition,
                log_start: p.log_start_offset,
                high_watermark: p.high_watermark,
                log_end: p.log_end_offset,
                leader: p.leader,
                members: p.members.clone(),
                voter_sets: p.voter_sets.iter().map(|set| set.brokers.clone()).collect(),
                records: BTreeMap::new(),
            })),
            Err(error) => {
                tracing::warn!(broker, %error, "a broker did not describe its replicas");
                silent.push((broker, error.to_string()));
            }
        }
    }
    (out, silent)
}

/// A replica's log read from a stopped broker's disk (`topics`: its data
/// directory's `topics`): offset → value; `None` if the disk no longer
/// holds it (a move completed after it was described).
pub fn read_replica(disk: Arc<dyn Disk>, topics: &Path, broker: u64, partition: u32) -> Option<BTreeMap<u64, u64>> {
    let topic = disk
        .list_subdirs(topics)
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

/// What every broker at `addresses` says of the partitions of the test
/// topic it hosts, asked before `until` (brokers that do not answer by
/// then are left out, as are empty addresses: brokers out of service):
/// availability's view of who leads what.
pub async fn views(addresses: &[String], until: tokio::time::Instant) -> Vec<crate::availability::View> {
    let until = until.max(tokio::time::Instant::now() + Duration::from_millis(50));
    let mut out = Vec::new();
    for (i, address) in addresses.iter().enumerate().filter(|(_, a)| !a.is_empty()) {
        let asked = async {
            let client = Client::connect(address).await.ok()?;
            client.describe_topic(TOPIC).await.ok()
        };
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(topic)) = tokio::time::timeout(left, asked).await else { continue };
        out.extend(topic.partitions.iter().filter(|p| p.hosted).map(|p| crate::availability::View {
            broker: i as u64 + 1,
            partition: p.partition,
            leader: p.leader,
            members: p.members.clone(),
            replicas: p.replicas.clone(),
            repairing: p.repairing,
        }));
    }
    out
}
