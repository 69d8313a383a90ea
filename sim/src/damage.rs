//! Damage at rest: what the nemesis's rot does to a broker's files, and the
//! budget that keeps it inside the fault model.
//!
//! Every file kind a replica keeps can be hit (`sim/README.md` says what
//! recovery does with each):
//! - `.log` segments: a flipped bit anywhere, or a sealed segment cut
//!   short. Found by CRC, cut, repaired from a peer.
//! - `raft-control`: a flipped bit. A bad record before intact records or
//!   before a surviving batch is damage; the log is cut there and repaired
//!   from a peer.
//! - `.index`, `.timeindex`, `checkpoint`, `durable-end`: derived or
//!   advisory. Found by CRC (or by a sealed index's length), rebuilt or
//!   ignored; nothing to repair.
//! - `raft-state`, `raft-snapshot` and their `.copy`: each kept twice; a
//!   damaged copy is read from the other and rewritten.
//!
//! A running broker's files are only flipped, in `.log` files, where bytes
//! are durable: the other kinds are read when a replica opens, and a real
//! host's page cache would hide at-rest damage from a running process. A
//! stopped broker's may be hit in any kind.
//!
//! The budget: damage a peer must repair (`.log`, `raft-control`) goes into
//! at most a minority of a partition's replicas at once, counting those
//! that report `repairing` and those damaged within `DAMAGE_APART` (a
//! replica says it is repairing only once its scrub or a read finds the
//! damage, and a paused broker finds nothing until it is back: sweep seed
//! 3145 damaged two of three replicas 1.6 s apart, before either was
//! found). Any broker that cannot say closes the budget.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use weir::client::Client;
use weir::sys::disk::{Disk, SimDisk};
use weir::sys::rng::SeededRng;

use crate::cluster::Cluster;
use crate::workload::TOPIC;

/// A partition of a topic, by the topic's name.
pub type PartitionKey = (String, u32);

/// How long damage counts against its partition's budget if no broker has
/// found it yet.
const DAMAGE_APART: Duration = Duration::from_secs(25);

/// Damage done that a peer must repair: to which broker's replica of
/// which partition, and when.
#[derive(Debug, Default)]
pub struct Damaged {
    done: Vec<(u64, PartitionKey, tokio::time::Instant)>,
}

impl Damaged {
    /// Records damage a peer must repair.
    pub fn record(&mut self, broker: u64, key: PartitionKey) {
        self.done.push((broker, key, tokio::time::Instant::now()));
    }

    fn recent(&self) -> impl Iterator<Item = &(u64, PartitionKey, tokio::time::Instant)> {
        self.done.iter().filter(|(_, _, at)| at.elapsed() < DAMAGE_APART)
    }
}

/// What one broker said of one partition.
struct Seen {
    replicas: usize,
    repairing: BTreeSet<u64>,
}

/// The partitions whose replica on `broker` may take damage a peer must
/// repair: for each, the others damaged (repairing, or damaged recently)
/// leave room within a minority. Empty if some broker in `addresses`
/// (by id from 1; empty strings are out of service) did not answer in 1 s.
pub async fn damageable(
    cluster: &Cluster,
    broker: u64,
    addresses: Vec<String>,
    damaged: &Damaged,
) -> BTreeSet<PartitionKey> {
    let asked = async move {
        let mut seen: BTreeMap<PartitionKey, Seen> = BTreeMap::new();
        for (i, address) in addresses.iter().enumerate().filter(|(_, a)| !a.is_empty()) {
            let id = i as u64 + 1;
            let client = Client::connect(address).await.ok()?;
            for topic in [TOPIC, weir::broker::server::OFFSETS_TOPIC] {
                let described = client.describe_topic(topic).await.ok()?;
                for p in described.partitions {
                    let entry = seen
                        .entry((topic.to_owned(), p.partition))
                        .or_insert(Seen { replicas: usize::MAX, repairing: BTreeSet::new() });
                    let members = if p.members.is_empty() { usize::MAX } else { p.members.len() };
                    entry.replicas = entry.replicas.min(p.replicas.len()).min(members);
                    if p.repairing {
                        entry.repairing.insert(id);
                    }
                }
            }
        }
        Some(seen)
    };
    let seen =
        cluster.run(async move { tokio::time::timeout(Duration::from_secs(1), asked).await.ok().flatten() }).await;
    let Some(seen) = seen else { return BTreeSet::new() };
    seen.into_iter()
        .filter(|(key, seen)| {
            let mut hit: BTreeSet<u64> = seen.repairing.clone();
            hit.extend(damaged.recent().filter(|(_, k, _)| k == key).map(|(b, _, _)| *b));
            hit.insert(broker);
            seen.replicas != usize::MAX && hit.len() <= (seen.replicas - 1) / 2
        })
        .map(|(key, _)| key)
        .collect()
}

/// A replica's directory on a broker's disk, with its partition.
struct ReplicaDir {
    key: PartitionKey,
    dir: PathBuf,
}

fn replica_dirs(disk: &dyn Disk, broker: u64) -> Vec<ReplicaDir> {
    let topics = PathBuf::from(format!("/data/broker-{broker}/topics"));
    let mut out = Vec::new();
    for topic_dir in disk.list_subdirs(&topics).unwrap_or_default() {
        // `<name>-<id as 16 hex digits>`
        let Some((name, _)) = topic_dir.rsplit_once('-') else { continue };
        for partition in disk.list_subdirs(&topics.join(&topic_dir)).unwrap_or_default() {
            let Ok(index) = partition.parse::<u32>() else { continue };
            out.push(ReplicaDir { key: (name.to_owned(), index), dir: topics.join(&topic_dir).join(partition) });
        }
    }
    out
}

/// Files in `dir` whose names end with `suffix`, oldest segment first.
fn files(disk: &dyn Disk, dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut names: Vec<String> =
        disk.list_dir(dir).unwrap_or_default().into_iter().filter(|n| n.ends_with(suffix)).collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n)).collect()
}

/// The files a stopped broker's rot may hit besides segments: derived
/// and advisory files, and the twice-kept state files.
const LOCAL_KINDS: [&str; 8] = [
    ".index",
    ".timeindex",
    "/checkpoint",
    "/durable-end",
    "/raft-state",
    "/raft-state.copy",
    "/raft-snapshot",
    "/raft-snapshot.copy",
];

/// Bit rot chosen by `seed` on `broker`'s disk. A running broker (`stopped`
/// false) has one bit flipped in a `.log` file of a partition in
/// `damageable`. A stopped broker's rot is that, or a sealed segment cut
/// short, or damage in another file kind (half the time): the control file
/// (flipped, in `damageable` partitions only) or any file of
/// `LOCAL_KINDS` (flipped or cut short). Returns the partition that now
/// needs a peer's repair, if any.
pub fn rot(
    disk: &SimDisk,
    broker: u64,
    seed: u64,
    stopped: bool,
    damageable: &BTreeSet<PartitionKey>,
) -> Option<PartitionKey> {
    let mut rng = SeededRng::new(seed ^ 0xB17_F11B);
    let replicas = replica_dirs(disk, broker);
    // Bytes both reads and a crash would see.
    let len = |p: &Path| disk.file_len(p).unwrap_or(0).min(disk.durable_len(p).unwrap_or(0));
    if stopped && rng.chance(1, 2) {
        let mut candidates: Vec<(PathBuf, Option<PartitionKey>)> = Vec::new();
        for replica in &replicas {
            for kind in LOCAL_KINDS {
                let found = match kind.strip_prefix('/') {
                    Some(name) => vec![replica.dir.join(name)],
                    None => files(disk, &replica.dir, kind),
                };
                candidates.extend(found.into_iter().filter(|p| len(p) > 0).map(|p| (p, None)));
            }
            if damageable.contains(&replica.key) {
                let control = replica.dir.join("raft-control");
                if len(&control) > 0 {
                    candidates.push((control, Some(replica.key.clone())));
                }
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let (victim, key) = candidates.swap_remove(rng.below(candidates.len() as u64) as usize);
        let position = rng.below(len(&victim));
        let cut = key.is_none() && rng.chance(1, 3);
        damage_file(disk, broker, &victim, position, cut, &mut rng);
        return key;
    }
    let segments: Vec<(Vec<PathBuf>, &PartitionKey)> = replicas
        .iter()
        .filter(|replica| damageable.contains(&replica.key))
        .map(|replica| (files(disk, &replica.dir, ".log"), &replica.key))
        .collect();
    // The active segment is not cut: after a crash a shortened active
    // segment is a torn tail, which recovery cannot tell from lost
    // acknowledged data.
    let sealed: Vec<(&PathBuf, &PartitionKey)> = segments
        .iter()
        .flat_map(|(files, key)| files.iter().take(files.len().saturating_sub(1)).map(move |f| (f, *key)))
        .collect();
    let all: Vec<(&PathBuf, &PartitionKey)> =
        segments.iter().flat_map(|(files, key)| files.iter().map(move |f| (f, *key))).collect();
    let cut = !sealed.is_empty() && rng.chance(1, 3) && stopped;
    let candidates: Vec<_> = if cut { sealed } else { all }.into_iter().filter(|(p, _)| len(p) > 0).collect();
    if candidates.is_empty() {
        return None;
    }
    let (victim, key) = candidates[rng.below(candidates.len() as u64) as usize];
    let position = rng.below(len(victim));
    damage_file(disk, broker, victim, position, cut, &mut rng);
    Some(key.clone())
}

/// Cuts `victim` short at `position` (durably), or flips one bit there.
fn damage_file(disk: &SimDisk, broker: u64, victim: &Path, position: u64, cut: bool, rng: &mut SeededRng) {
    if cut {
        let file = disk.open(victim, false).and_then(|file| file.set_len(position).and_then(|()| file.sync()));
        tracing::info!(broker, file = %victim.display(), position, ok = file.is_ok(), "nemesis: file cut short");
    } else {
        let mask = 1u8 << rng.below(8);
        let flipped = disk.corrupt_byte(victim, position, mask);
        tracing::info!(broker, file = %victim.display(), position, mask, ok = flipped.is_ok(), "nemesis: bit flipped");
    }
}
