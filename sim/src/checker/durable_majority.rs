//! Durable majority: every record acknowledged under acks=all is on the
//! disks of a majority of its partition's voters, as a power loss would
//! leave them.
//!
//! Source: weir's promise for acks=all (committed on a majority, each copy
//! fsynced before it counts); Raft §5.3–5.4 (Ongaro and Ousterhout, 2014):
//! an entry is committed once a majority stores it, and every later
//! configuration's majority holds every committed entry, since a voter
//! accepts an entry only after all before it (§6 for membership changes).
//! Jepsen's analyses of Redpanda (2022) and Kafka (KIP-966) found writes
//! acknowledged before they were durable; a clean read of the disks would
//! not show that, so the simulator reads each replica after its disk lost
//! everything unsynced (`SimDisk::crash_to_durable`). A replica not read
//! counts as not holding the record.

use std::collections::{BTreeMap, BTreeSet};

use super::replicas::Replica;
use super::{Anomaly, Input};

/// The partition's voter sets: those of the last Raft configuration its
/// leader applied, that is committed (two during a joint change; the
/// metadata's `members` lag a move until it is confirmed), else the members
/// most replicas described. Not the leader's effective configuration: the
/// new voters of a change still uncommitted may lack records committed
/// before it (seed 614 ended in one).
fn voter_sets(replicas: &[&Replica]) -> Vec<Vec<u64>> {
    if let Some(leader) = replicas.iter().find(|r| r.leader == r.broker && !r.voter_sets.is_empty()) {
        return leader.voter_sets.clone();
    }
    let mut votes: BTreeMap<&Vec<u64>, usize> = BTreeMap::new();
    for replica in replicas.iter().filter(|r| !r.members.is_empty()) {
        *votes.entry(&replica.members).or_default() += 1;
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(members, _)| vec![members.clone()]).unwrap_or_default()
}

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut by_partition: BTreeMap<u32, Vec<&Replica>> = BTreeMap::new();
    for replica in &input.replicas {
        by_partition.entry(replica.partition).or_default().push(replica);
    }
    let mut short: BTreeMap<u32, Vec<(u64, u64, Vec<u64>)>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (_, partition, offset, value) in input.acknowledged() {
        let Some(replicas) = by_partition.get(&partition) else { continue };
        if !seen.insert((partition, offset, value)) {
            continue;
        }
        let holders: Vec<u64> =
            replicas.iter().filter(|r| r.records.get(&offset) == Some(&value)).map(|r| r.broker).collect();
        let majority_of = |voters: &Vec<u64>| voters.iter().filter(|b| holders.contains(b)).count() * 2 > voters.len();
        let sets = voter_sets(replicas);
        if sets.is_empty() || !sets.iter().all(majority_of) {
            short.entry(partition).or_default().push((offset, value, holders));
        }
    }
    short
        .into_iter()
        .map(|(partition, records)| {
            let replicas = &by_partition[&partition];
            let sets = voter_sets(replicas);
            let voters: std::collections::BTreeSet<u64> = sets.iter().flatten().copied().collect();
            let (offset, value, holders) = &records[0];
            let states: Vec<String> = voters
                .iter()
                .map(|broker| match replicas.iter().find(|r| r.broker == *broker) {
                    Some(r) => format!(
                        "broker {broker} durable to {} (described: end {}, high watermark {})",
                        r.records.keys().next_back().map_or(0, |o| o + 1),
                        r.log_end,
                        r.high_watermark,
                    ),
                    None => format!("broker {broker} not read"),
                })
                .collect();
            Anomaly {
                kind: "durable-majority",
                detail: format!(
                    "{} acknowledged records of partition {partition} are durable on fewer than a majority of \
                     its voter sets {sets:?}, e.g. value {value} at offset {offset} only on {holders:?}; {}",
                    records.len(),
                    states.join("; ")
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::Script;
    use super::*;
    use crate::history::Kind;

    fn replica(broker: u64, values: &[u64]) -> Replica {
        super::super::replicas::tests::replica(broker, values.len() as u64, values)
    }

    fn kinds(replicas: Vec<Replica>) -> Vec<&'static str> {
        let mut s = Script::new();
        s.send(1, 0, 10, Some(0), Kind::Ok).send(1, 0, 11, Some(1), Kind::Ok);
        let input = Input { replicas, ..s.input(&[(0, &[(0, 10), (1, 11)])]) };
        check(&input).into_iter().map(|a| a.kind).collect()
    }

    #[test]
    fn a_majority_of_durable_copies_is_enough() {
        assert_eq!(kinds(vec![replica(1, &[10, 11]), replica(2, &[10, 11]), replica(3, &[10])]), Vec::<&str>::new());
    }

    #[test]
    fn an_acknowledged_record_on_a_minority_is_caught() {
        // The other two lost their unsynced tail at the power loss.
        assert_eq!(kinds(vec![replica(1, &[10, 11]), replica(2, &[10]), replica(3, &[10])]), vec!["durable-majority"]);
        // A voter never read counts as not holding it.
        assert_eq!(kinds(vec![replica(1, &[10, 11]), replica(3, &[10])]), vec!["durable-majority"]);
    }

    #[test]
    fn a_different_value_at_the_offset_is_not_a_copy() {
        assert_eq!(
            kinds(vec![replica(1, &[10, 11]), replica(2, &[10, 99]), replica(3, &[10])]),
            vec!["durable-majority"]
        );
    }

    #[test]
    fn copies_on_replicas_that_are_not_voters_do_not_count() {
        let mut leader = replica(1, &[10, 11]);
        leader.voter_sets = vec![vec![1, 4, 5]];
        assert_eq!(kinds(vec![leader, replica(2, &[10, 11]), replica(3, &[10, 11])]), vec!["durable-majority"]);
    }

    /// The metadata's members lag a move until it is confirmed; the
    /// leader's own configuration says who must hold the records.
    #[test]
    fn the_leaders_configuration_wins_over_the_members_described() {
        let mut leader = replica(1, &[10, 11]);
        leader.voter_sets = vec![vec![1, 3, 4]];
        let (mut old, mut new) = (replica(2, &[10]), replica(3, &[10, 11]));
        (old.members, new.members) = (vec![1, 2, 5], vec![1, 2, 5]);
        assert_eq!(kinds(vec![leader.clone(), old.clone(), new.clone(), replica(4, &[10])]), Vec::<&str>::new());
        // In a joint change, a majority of each set.
        leader.voter_sets = vec![vec![1, 2, 5], vec![1, 3, 4]];
        assert_eq!(kinds(vec![leader, old, new, replica(4, &[10])]), vec!["durable-majority"]);
    }
}
