//! The verdict on a run: one file per property, each citing where the
//! property comes from. Every checker reads the same [`Input`] and returns
//! the anomalies it found; a run is valid when none did.

use std::collections::BTreeMap;

use crate::history::{pairs, Kind, Op, Value};

pub mod aborted_read;
pub mod commits;
pub mod duplicate;
pub mod durable_majority;
pub mod group_ownership;
pub mod inconsistent_offsets;
pub mod lost_write;
pub mod no_writer;
pub mod nonmonotonic_poll;
pub mod nonmonotonic_send;
pub mod poll_skip;
pub mod replicas;
pub mod retention;
pub mod stale_commit;
pub mod start_position;
pub mod unseen;

/// One thing that should not have happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Producer processes from this number on write with weaker acks
/// (acks=leader, acks=none): what they lose is measured ([`weak_losses`]),
/// not an anomaly, and the checkers leave their sends out.
pub const WEAK_PRODUCERS_FROM: u64 = 50;

/// What one poll returned: per partition, (offset, value) in order.
pub type Polled = BTreeMap<u32, Vec<(u64, u64)>>;

/// What the checkers read.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub ops: Vec<Op>,
    /// Each partition as read in full after the faults healed:
    /// (offset, value) in offset order.
    pub final_log: BTreeMap<u32, Vec<(u64, u64)>>,
    /// The group whose members must, together, have read every
    /// acknowledged value by the end (`unseen`).
    pub complete_group: Option<String>,
    /// Every replica of the topic after the run (`replicas`), read as a
    /// power loss would leave its disk (`durable_majority`).
    pub replicas: Vec<replicas::Replica>,
    /// Replicas that should have been read and were not, and why (a broker
    /// that never described its replicas, a replica directory missing).
    pub unchecked: Vec<String>,
    /// How long the topic keeps records, when that outlasts the run: then
    /// retention may delete nothing (`retention`).
    pub retention_ms: Option<u64>,
}

impl Input {
    /// Sends acknowledged under acks=all: (process, partition, offset,
    /// value), in completion order.
    pub fn acknowledged(&self) -> Vec<(u64, u32, u64, u64)> {
        pairs(&self.ops)
            .into_iter()
            .filter(|(_, done)| done.kind == Kind::Ok && done.process < WEAK_PRODUCERS_FROM)
            .filter_map(|(_, done)| match done.value {
                Value::Send { partition, value, offset: Some(offset) } => {
                    Some((done.process, partition, offset, value))
                }
                _ => None,
            })
            .collect()
    }

    /// Every (partition, offset, value) read: the final log's and every
    /// successful poll's.
    pub fn reads(&self) -> Vec<(u32, u64, u64)> {
        let logged = self.final_log.iter().flat_map(|(p, log)| log.iter().map(move |(o, v)| (*p, *o, *v)));
        let polled = self.polls().into_iter().flat_map(|(_, _, polled)| {
            polled.iter().flat_map(|(p, records)| records.iter().map(move |(o, v)| (*p, *o, *v)))
        });
        logged.chain(polled).collect()
    }

    /// Successful polls: (process, completion index, what they returned).
    pub fn polls(&self) -> Vec<(u64, usize, &Polled)> {
        self.ops
            .iter()
            .filter(|op| op.kind == Kind::Ok)
            .filter_map(|op| match &op.value {
                Value::Poll(polled) => Some((op.process, op.index, polled)),
                _ => None,
            })
            .collect()
    }
}

/// Every checker's anomalies.
pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut out = Vec::new();
    out.extend(lost_write::check(input));
    out.extend(no_writer::check(input));
    out.extend(aborted_read::check(input));
    out.extend(unseen::check(input));
    out.extend(duplicate::check(input));
    out.extend(inconsistent_offsets::check(input));
    out.extend(nonmonotonic_send::check(input));
    out.extend(nonmonotonic_poll::check(input));
    out.extend(poll_skip::check(input));
    out.extend(group_ownership::check(input));
    out.extend(commits::check(input));
    out.extend(stale_commit::check(input));
    out.extend(start_position::check(input));
    out.extend(replicas::check(input));
    out.extend(durable_majority::check(input));
    out.extend(retention::check(input));
    out
}

/// For each producer with weaker acks: how many of its sends were
/// acknowledged, and how many of those the final read does not hold.
pub fn weak_losses(input: &Input) -> BTreeMap<u64, (usize, usize)> {
    let stored: std::collections::BTreeSet<(u32, u64)> =
        input.final_log.iter().flat_map(|(p, log)| log.iter().map(move |(_, v)| (*p, *v))).collect();
    let mut out: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for (_, done) in pairs(&input.ops) {
        if done.kind != Kind::Ok || done.process < WEAK_PRODUCERS_FROM {
            continue;
        }
        let Value::Send { partition, value, .. } = done.value else { continue };
        let counts = out.entry(done.process).or_default();
        counts.0 += 1;
        if !stored.contains(&(partition, value)) {
            counts.1 += 1;
        }
    }
    out
}

/// One stretch of a consumer's reading of one partition.
pub(crate) struct Run {
    pub process: u64,
    pub partition: u32,
    /// Where the run began: the offset a seek put the consumer at, or the
    /// start its assignment recorded (`None` if unknown).
    pub sought: Option<u64>,
    /// The offsets of its successful polls, in order.
    pub offsets: Vec<u64>,
}

/// Per consumer process and partition, the offsets of its successful polls
/// in order, split where the process's assignment changed (a new
/// generation; for a consumer without a group, where it dropped the
/// partition) or it sought in that partition: within one run a consumer
/// reads on from where it was; across them it may start over.
pub(crate) fn poll_runs(input: &Input) -> Vec<Run> {
    let mut current: BTreeMap<(u64, u32), Run> = BTreeMap::new();
    let mut out = Vec::new();
    for op in &input.ops {
        if op.kind != Kind::Ok {
            continue;
        }
        match &op.value {
            Value::Assign { group, partitions, starts, .. } => {
                // A group member's runs all end (a rebalance moves it to its
                // group's commit); a consumer without a group reads on in
                // the partitions it kept.
                let ended: Vec<(u64, u32)> = current
                    .keys()
                    .filter(|(p, partition)| *p == op.process && (group.is_some() || !partitions.contains(partition)))
                    .copied()
                    .collect();
                out.extend(ended.into_iter().filter_map(|key| current.remove(&key)));
                // The runs it begins start where the assignment put them.
                for (partition, start) in starts {
                    current.entry((op.process, *partition)).or_insert_with(|| Run {
                        process: op.process,
                        partition: *partition,
                        sought: Some(*start),
                        offsets: Vec::new(),
                    });
                }
            }
            Value::Seek { partition, offset, .. } => {
                let run = Run { process: op.process, partition: *partition, sought: *offset, offsets: Vec::new() };
                out.extend(current.insert((op.process, *partition), run));
            }
            Value::Poll(polled) => {
                for (partition, records) in polled {
                    let run = current.entry((op.process, *partition)).or_insert_with(|| Run {
                        process: op.process,
                        partition: *partition,
                        sought: None,
                        offsets: Vec::new(),
                    });
                    run.offsets.extend(records.iter().map(|(o, _)| *o));
                }
            }
            _ => {}
        }
    }
    out.extend(current.into_values());
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::history::History;

    /// Builds histories for the checkers' tests.
    pub struct Script {
        pub ops: Vec<Op>,
    }

    impl Script {
        pub fn new() -> Self {
            Self { ops: Vec::new() }
        }

        pub fn push(&mut self, process: u64, kind: Kind, value: Value) -> &mut Self {
            let index = self.ops.len();
            self.ops.push(Op { index, process, kind, value, time: Duration::from_millis(index as u64) });
            self
        }

        pub fn send(&mut self, process: u64, partition: u32, value: u64, offset: Option<u64>, kind: Kind) -> &mut Self {
            self.push(process, Kind::Invoke, Value::Send { partition, value, offset: None });
            self.push(process, kind, Value::Send { partition, value, offset })
        }

        pub fn poll(&mut self, process: u64, partition: u32, records: &[(u64, u64)]) -> &mut Self {
            self.push(process, Kind::Invoke, Value::Poll(BTreeMap::new()));
            self.push(process, Kind::Ok, Value::Poll(BTreeMap::from([(partition, records.to_vec())])))
        }

        pub fn assign(&mut self, process: u64, generation: u64, partitions: &[u32]) -> &mut Self {
            let value = Value::Assign {
                group: Some("g".into()),
                generation,
                partitions: partitions.to_vec(),
                starts: BTreeMap::new(),
            };
            self.push(process, Kind::Invoke, value.clone());
            self.push(process, Kind::Ok, value)
        }

        /// A consumer without a group assigning itself `partitions`.
        pub fn assign_manually(&mut self, process: u64, partitions: &[u32]) -> &mut Self {
            let value =
                Value::Assign { group: None, generation: 0, partitions: partitions.to_vec(), starts: BTreeMap::new() };
            self.push(process, Kind::Invoke, value.clone());
            self.push(process, Kind::Ok, value)
        }

        /// A group member's assignment that started `partition` at `start`.
        pub fn assign_at(&mut self, process: u64, generation: u64, partition: u32, start: u64) -> &mut Self {
            let value = Value::Assign {
                group: Some("g".into()),
                generation,
                partitions: vec![partition],
                starts: BTreeMap::from([(partition, start)]),
            };
            self.push(process, Kind::Invoke, value.clone());
            self.push(process, Kind::Ok, value)
        }

        pub fn commit(&mut self, process: u64, generation: u64, partition: u32, offset: u64, kind: Kind) -> &mut Self {
            let value = Value::Commit { group: "g".into(), generation, offsets: BTreeMap::from([(partition, offset)]) };
            self.push(process, Kind::Invoke, value.clone());
            self.push(process, kind, value)
        }

        pub fn seek(&mut self, process: u64, partition: u32, offset: u64) -> &mut Self {
            let value = |offset| Value::Seek { group: "g".into(), partition, offset, partitions: vec![partition] };
            self.push(process, Kind::Invoke, value(None));
            self.push(process, Kind::Ok, value(Some(offset)))
        }

        pub fn input(&self, final_log: &[(u32, &[(u64, u64)])]) -> Input {
            Input {
                ops: self.ops.clone(),
                final_log: final_log.iter().map(|(p, log)| (*p, log.to_vec())).collect(),
                complete_group: None,
                replicas: Vec::new(),
                unchecked: Vec::new(),
                retention_ms: None,
            }
        }
    }

    #[test]
    fn a_clean_history_has_no_anomalies() {
        let mut s = Script::new();
        s.assign(9, 1, &[0]);
        s.send(1, 0, 10, Some(0), Kind::Ok).send(1, 0, 11, Some(1), Kind::Ok);
        s.poll(9, 0, &[(0, 10)]).poll(9, 0, &[(1, 11)]);
        s.commit(9, 1, 0, 2, Kind::Ok);
        let _ = History::default();
        assert_eq!(check(&s.input(&[(0, &[(0, 10), (1, 11)])])), vec![]);
    }

    #[test]
    fn weaker_acks_losses_are_measured_not_anomalies() {
        let mut s = Script::new();
        s.send(1, 0, 10, Some(0), Kind::Ok);
        // acks=leader: acknowledged at offset 1, then lost with its leader;
        // acks=none: accepted, stored.
        s.send(WEAK_PRODUCERS_FROM, 0, 20, Some(1), Kind::Ok).send(WEAK_PRODUCERS_FROM + 1, 0, 30, None, Kind::Ok);
        let input = s.input(&[(0, &[(0, 10), (1, 30)])]);
        assert_eq!(check(&input), vec![], "a lost acks=leader write and a reused offset are no anomaly");
        let losses = weak_losses(&input);
        assert_eq!(losses, BTreeMap::from([(WEAK_PRODUCERS_FROM, (1, 1)), (WEAK_PRODUCERS_FROM + 1, (1, 0))]));
        s.send(2, 0, 40, Some(1), Kind::Ok);
        assert!(!check(&s.input(&[(0, &[(0, 10), (1, 30)])])).is_empty(), "the same loss under acks=all is one");
    }
}
