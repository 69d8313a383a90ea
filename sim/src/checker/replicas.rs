//! Broker invariants, checked on every replica after a run.
//!
//! Sources: Raft's Log Matching and State Machine Safety properties
//! (Ongaro and Ousterhout, "In Search of an Understandable Consensus
//! Algorithm", 2014, §5.3 and §5.4): entries a replica knows to be committed
//! are the same on every replica that holds them. Kafka's replica bounds:
//! log start offset ≤ high watermark ≤ log end offset on every replica (the
//! high watermark is what a consumer may read; nothing committed may lie
//! before the log start or past the log end).
//!
//! Each replica is described by its broker (log start, high watermark, log
//! end) and read from its disk once the brokers have stopped. A record
//! below a replica's own high watermark is one it takes for committed, so
//! two replicas must agree on every offset below both their high
//! watermarks, and neither may miss one there.

use std::collections::{BTreeMap, BTreeSet};

use super::{Anomaly, Input};

/// One replica of one partition after the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replica {
    pub broker: u64,
    pub partition: u32,
    pub log_start: u64,
    pub high_watermark: u64,
    pub log_end: u64,
    /// The leader as its broker knew it (0: unknown).
    pub leader: u64,
    /// The partition's voters as its broker last knew them.
    pub members: Vec<u64>,
    /// From the leader only: the voter sets of the Raft configuration it
    /// applies (two during a joint change).
    pub voter_sets: Vec<Vec<u64>>,
    /// Its log as its disk holds it: offset → value.
    pub records: BTreeMap<u64, u64>,
}

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut out: Vec<Anomaly> =
        input.unchecked.iter().map(|why| Anomaly { kind: "replicas-unchecked", detail: why.clone() }).collect();
    // Every voter of a partition's configuration, as its leader describes
    // it, must have left a replica to read: one its broker did not
    // describe is as unchecked as one its disk lacks.
    let mut voters: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for r in &input.replicas {
        voters.entry(r.partition).or_default().extend(r.voter_sets.iter().flatten());
    }
    for (partition, brokers) in voters {
        for broker in brokers {
            if !input.replicas.iter().any(|r| r.partition == partition && r.broker == broker) {
                out.push(Anomaly {
                    kind: "replicas-unchecked",
                    detail: format!(
                        "broker {broker}, a voter of partition {partition}, left no replica of it to check"
                    ),
                });
            }
        }
    }
    for r in &input.replicas {
        if !(r.log_start <= r.high_watermark && r.high_watermark <= r.log_end) {
            out.push(Anomaly {
                kind: "replica-bounds",
                detail: format!(
                    "partition {} on broker {}: log start {}, high watermark {}, log end {}",
                    r.partition, r.broker, r.log_start, r.high_watermark, r.log_end
                ),
            });
        }
        if let Some(missing) = (r.log_start..r.high_watermark).find(|o| !r.records.contains_key(o)) {
            out.push(Anomaly {
                kind: "replica-hole",
                detail: format!(
                    "partition {} on broker {} lacks offset {missing}, below its high watermark {}",
                    r.partition, r.broker, r.high_watermark
                ),
            });
        }
    }
    for (i, a) in input.replicas.iter().enumerate() {
        for b in input.replicas[i + 1..].iter().filter(|b| b.partition == a.partition) {
            let committed = a.high_watermark.min(b.high_watermark);
            let differs = a
                .records
                .range(..committed)
                .find(|(offset, value)| b.records.get(offset).is_some_and(|other| other != *value));
            if let Some((offset, value)) = differs {
                out.push(Anomaly {
                    kind: "replica-divergence",
                    detail: format!(
                        "partition {} offset {offset}, committed on both: {value} on broker {}, {} on broker {}",
                        a.partition, a.broker, b.records[offset], b.broker
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A replica of partition 0 holding `values` from offset 0, led by
    /// broker 1, with voters 1, 2 and 3.
    pub(crate) fn replica(broker: u64, high_watermark: u64, values: &[u64]) -> Replica {
        Replica {
            broker,
            partition: 0,
            log_start: 0,
            high_watermark,
            log_end: values.len() as u64,
            leader: 1,
            members: vec![1, 2, 3],
            voter_sets: Vec::new(),
            records: values.iter().enumerate().map(|(o, v)| (o as u64, *v)).collect(),
        }
    }

    fn check_replicas(replicas: Vec<Replica>) -> Vec<&'static str> {
        check(&Input { replicas, ..Input::default() }).into_iter().map(|a| a.kind).collect()
    }

    #[test]
    fn replicas_agree_below_their_high_watermarks_and_may_differ_above() {
        // Broker 3 lags and holds an old uncommitted entry at offset 2.
        let ok = vec![replica(1, 3, &[10, 11, 12]), replica(2, 3, &[10, 11, 12, 13]), replica(3, 2, &[10, 11, 99])];
        assert_eq!(check_replicas(ok), Vec::<&str>::new());
    }

    #[test]
    fn a_committed_entry_that_differs_is_divergence() {
        let diverged = vec![replica(1, 3, &[10, 11, 12]), replica(2, 3, &[10, 99, 12])];
        assert_eq!(check_replicas(diverged), vec!["replica-divergence"]);
    }

    #[test]
    fn a_replica_left_unread_is_an_error_not_a_skip() {
        let input = Input { unchecked: vec!["broker 2 did not describe its replicas".into()], ..Input::default() };
        assert_eq!(check(&input).into_iter().map(|a| a.kind).collect::<Vec<_>>(), vec!["replicas-unchecked"]);
    }

    #[test]
    fn a_voter_that_described_no_replica_is_unchecked() {
        let mut leader = replica(1, 3, &[10, 11, 12]);
        leader.voter_sets = vec![vec![1, 2, 3]];
        let all = vec![leader.clone(), replica(2, 3, &[10, 11, 12]), replica(3, 3, &[10, 11, 12])];
        assert_eq!(check_replicas(all), Vec::<&str>::new());
        let missing = vec![leader, replica(2, 3, &[10, 11, 12])];
        let found = check(&Input { replicas: missing, ..Input::default() });
        assert_eq!(found.iter().map(|a| a.kind).collect::<Vec<_>>(), vec!["replicas-unchecked"]);
        assert!(found[0].detail.contains("broker 3, a voter of partition 0"), "{}", found[0].detail);
    }

    #[test]
    fn bounds_out_of_order_and_holes_are_caught() {
        let mut past_end = replica(1, 4, &[10, 11, 12]);
        past_end.records.remove(&3);
        assert_eq!(check_replicas(vec![past_end]), vec!["replica-bounds", "replica-hole"]);
        let mut holed = replica(1, 3, &[10, 11, 12]);
        holed.records.remove(&1);
        assert_eq!(check_replicas(vec![holed]), vec!["replica-hole"]);
        let mut start_past = replica(1, 1, &[10, 11, 12]);
        start_past.log_start = 2;
        assert_eq!(check_replicas(vec![start_past]), vec!["replica-bounds"]);
    }
}
