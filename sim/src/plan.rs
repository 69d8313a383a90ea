//! Everything a run does, derived from its seed: cluster size, topic
//! layout, workload and the fault schedule. Two runs of one seed build the
//! same plan; the simulator's own seeded randomness then decides the rest
//! (message timings, the disk's crash losses).

use std::time::Duration;

use weir::sys::rng::SeededRng;

/// A fault the nemesis injects, then heals after `lasting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Kill -9 a broker (its disk keeps only what it fsynced, maybe a torn
    /// tail), restart it after `lasting`. With `rot`, one of its segment
    /// files is damaged while it is down: a flipped bit anywhere, or a sealed
    /// segment cut short. Recovery must detect it by CRC, the replica must be
    /// healed from its peers, and no damaged byte may be served.
    KillRestart { broker: u64, seed: u64, rot: bool },
    /// A bit flipped in one of a running broker's segment files, in bytes
    /// it had made durable. Its scrubber (or a read) must find it by CRC,
    /// the broker must reopen the replica and have it healed from its
    /// peers, and no damaged byte may be served.
    Rot { broker: u64, seed: u64 },
    /// Cut a broker off from everyone (an isolated node or leader).
    Isolate { broker: u64 },
    /// Cut the link between two brokers both ways (a bridge partition
    /// when three or more brokers remain connected through a third).
    CutLink { a: u64, b: u64 },
    /// Stop a broker's tasks (SIGSTOP) and resume them.
    Pause { broker: u64 },
    /// Cut etcd off from every broker.
    EtcdOutage,
    /// Move a partition onto other brokers while faults may follow.
    Move { partition: u32, replicas: Vec<u64> },
    /// Message latency up to 200 ms for a while.
    LatencySpike,
    /// Messages from `from` to `to` are lost; the other way works (a
    /// one-way partition).
    OneWay { from: u64, to: u64 },
    /// Every message has this chance in a thousand of being lost.
    PacketLoss { per_mille: u32 },
    /// A broker's next fsyncs and writes fail (an I/O error poisons the
    /// log it hits); healed by restarting the broker, as an operator would.
    DiskErrors { broker: u64, syncs: u32, writes: u32 },
    /// A broker's disk is full; healed by freeing space and restarting the
    /// broker.
    FullDisk { broker: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// When the fault starts, from the beginning of the workload.
    pub at: Duration,
    pub fault: Fault,
    pub lasting: Duration,
}

/// A member of the first group stopped whole (SIGSTOP: its heartbeats
/// too) for longer than its session, then resumed: a zombie that still
/// believes in its generation and commits under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// Which member of `g1` (0-based).
    pub member: u64,
    pub at: Duration,
    pub lasting: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub seed: u64,
    pub brokers: u64,
    pub partitions: u32,
    pub replication: u32,
    pub producers: u64,
    /// Members of the group that must read everything (`g1`).
    pub members: u64,
    /// Simulated time producers write while faults happen.
    pub safety: Duration,
    /// Simulated time allowed, faults healed, for consumers to catch up.
    pub liveness: Duration,
    pub steps: Vec<Step>,
    /// Consumer stalls, beside the nemesis's faults.
    pub stalls: Vec<Stall>,
}

impl Plan {
    pub fn from_seed(seed: u64, safety: Duration) -> Self {
        Self::with_brokers(seed, safety, None)
    }

    /// The plan of `seed`, with `brokers` brokers if given (the rest still
    /// comes from the seed).
    pub fn with_brokers(seed: u64, safety: Duration, brokers: Option<u64>) -> Self {
        let mut rng = SeededRng::new(seed ^ 0x5EED_F00D);
        let drawn = 3 + rng.below(3);
        let brokers = brokers.unwrap_or(drawn).max(3);
        let partitions = 1 + rng.below(6) as u32;
        let replication = 3;
        let producers = 2 + rng.below(3);
        let members = 1 + rng.below(3);
        let mut steps = Vec::new();
        let mut at = Duration::from_millis(2_000 + rng.below(2_000));
        while at + Duration::from_secs(2) < safety {
            let lasting = Duration::from_millis(500 + rng.below(4_000));
            let broker = 1 + rng.below(brokers);
            let fault = match rng.below(11) {
                0 | 1 => {
                    // Decided by the kill's seed, not a draw of its own, so
                    // the schedules of existing seeds stay as they were.
                    let seed = rng.next_u64();
                    match seed % 3 {
                        0 => Fault::KillRestart { broker, seed, rot: true },
                        1 => Fault::Rot { broker, seed },
                        _ => Fault::KillRestart { broker, seed, rot: false },
                    }
                }
                2 => Fault::Isolate { broker },
                3 => {
                    let other = 1 + (broker + rng.below(brokers - 1)) % brokers;
                    Fault::CutLink { a: broker, b: other }
                }
                4 => Fault::Pause { broker },
                5 => {
                    if rng.chance(1, 2) {
                        Fault::EtcdOutage
                    } else {
                        Fault::LatencySpike
                    }
                }
                7 => {
                    let other = 1 + (broker + rng.below(brokers - 1)) % brokers;
                    Fault::OneWay { from: broker, to: other }
                }
                8 => Fault::PacketLoss { per_mille: 20 + rng.below(180) as u32 },
                9 => {
                    if rng.chance(1, 2) {
                        Fault::DiskErrors { broker, syncs: 1 + rng.below(3) as u32, writes: rng.below(3) as u32 }
                    } else {
                        Fault::FullDisk { broker }
                    }
                }
                _ => {
                    let mut all: Vec<u64> = (1..=brokers).collect();
                    // A seeded shuffle; the first three become the replicas.
                    for i in (1..all.len()).rev() {
                        all.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                    all.truncate(replication as usize);
                    Fault::Move { partition: rng.below(u64::from(partitions)) as u32, replicas: all }
                }
            };
            steps.push(Step { at, fault, lasting });
            at += lasting + Duration::from_millis(1_000 + rng.below(3_000));
        }
        // Drawn apart, so the faults above stay what they were for a seed.
        let mut stall_rng = SeededRng::new(seed ^ 0x57A1_1ED0);
        let mut stalls = Vec::new();
        let mut at = Duration::from_millis(3_000 + stall_rng.below(10_000));
        while at + Duration::from_secs(2) < safety {
            // Longer than the members' 6 s session.
            let lasting = Duration::from_millis(7_000 + stall_rng.below(5_000));
            stalls.push(Stall { member: stall_rng.below(members), at, lasting });
            at += lasting + Duration::from_millis(5_000 + stall_rng.below(20_000));
        }
        Self {
            seed,
            brokers,
            partitions,
            replication,
            producers,
            members,
            safety,
            liveness: Duration::from_secs(60),
            steps,
            stalls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_plan_and_seeds_differ() {
        let a = Plan::from_seed(7, Duration::from_secs(60));
        assert_eq!(a, Plan::from_seed(7, Duration::from_secs(60)));
        assert!((3..=5).contains(&a.brokers) && (1..=6).contains(&a.partitions));
        assert!(!a.steps.is_empty());
        assert!(a.steps.windows(2).all(|w| w[0].at + w[0].lasting < w[1].at), "one fault at a time");
        let three = Plan::with_brokers(7, Duration::from_secs(60), Some(3));
        assert_eq!((three.brokers, three.partitions), (3, a.partitions));
        assert!(three.steps.iter().all(|s| match &s.fault {
            Fault::KillRestart { broker, .. }
            | Fault::Rot { broker, .. }
            | Fault::Isolate { broker }
            | Fault::Pause { broker } => *broker <= 3,
            Fault::CutLink { a, b } => *a <= 3 && *b <= 3,
            Fault::OneWay { from, to } => *from <= 3 && *to <= 3,
            Fault::DiskErrors { broker, .. } | Fault::FullDisk { broker } => *broker <= 3,
            Fault::Move { replicas, .. } => replicas.iter().all(|b| *b <= 3),
            _ => true,
        }));
        assert!(!a.stalls.is_empty());
        assert!(a.stalls.iter().all(|s| s.member < a.members && s.lasting > Duration::from_secs(6)));
        assert!(a.stalls.windows(2).all(|w| w[0].at + w[0].lasting < w[1].at), "one stall at a time");
        assert_eq!(three.steps.len(), a.steps.len(), "the cluster size does not move the schedule");
        let plans: Vec<Plan> = (0..20).map(|s| Plan::from_seed(s, Duration::from_secs(60))).collect();
        assert!(plans.iter().any(|p| p.brokers != plans[0].brokers || p.partitions != plans[0].partitions));
        for plan in &plans {
            for step in &plan.steps {
                match &step.fault {
                    Fault::CutLink { a, b } | Fault::OneWay { from: a, to: b } => {
                        assert!(a != b && *b >= 1 && *b <= plan.brokers, "{step:?}")
                    }
                    Fault::Move { replicas, partition } => {
                        assert_eq!(replicas.len(), 3);
                        assert!(*partition < plan.partitions);
                    }
                    _ => {}
                }
            }
        }
    }
}
