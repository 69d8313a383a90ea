//! Lost write: a value that was acknowledged, or that a consumer read,
//! missing from its partition at the end.
//!
//! Source: Jepsen's kafka workload (`jepsen.tests.kafka`, "lost-write"): a
//! value acknowledged by a send, or observed by any read, at or below the
//! highest offset read, that the final reads do not hold. A read value
//! counts whatever its send's outcome: a send of unknown outcome (`:info`)
//! that some consumer read had been written, so losing it later is a loss
//! (a consumer may have acted on it). The final read here covers each
//! whole partition after the faults healed, so every such value is below
//! it. A polled value must be in the final log at the offset it was read
//! at; another value there is `inconsistent-offsets`, so only its absence
//! is reported here.

use std::collections::{BTreeMap, BTreeSet};

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let stored: BTreeSet<(u32, u64)> =
        input.final_log.iter().flat_map(|(p, log)| log.iter().map(move |(_, v)| (*p, *v))).collect();
    let mut out: Vec<Anomaly> = input
        .acknowledged()
        .into_iter()
        .filter(|(_, partition, _, value)| !stored.contains(&(*partition, *value)))
        .map(|(process, partition, offset, value)| Anomaly {
            kind: "lost-write",
            detail: format!(
                "value {value} acknowledged to process {process} at {partition}/{offset} is not in the partition"
            ),
        })
        .collect();
    let acknowledged: BTreeSet<(u32, u64)> = input.acknowledged().into_iter().map(|(_, p, _, v)| (p, v)).collect();
    // Read by a poll, then gone: (partition, value) → (process, offset),
    // first reader only; acknowledged ones are reported above.
    let mut read_then_lost: BTreeMap<(u32, u64), (u64, u64)> = BTreeMap::new();
    for (process, _, polled) in input.polls() {
        for (partition, records) in polled {
            for (offset, value) in records {
                let key = (*partition, *value);
                if !stored.contains(&key) && !acknowledged.contains(&key) {
                    read_then_lost.entry(key).or_insert((process, *offset));
                }
            }
        }
    }
    out.extend(read_then_lost.into_iter().map(|((partition, value), (process, offset))| Anomaly {
        kind: "lost-write",
        detail: format!(
            "value {value}, read by process {process} at {partition}/{offset} (its send's outcome unknown or \
             unacknowledged), is not in the partition"
        ),
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::Script;
    use super::*;
    use crate::history::Kind;

    #[test]
    fn an_acknowledged_value_missing_from_the_log_is_lost() {
        let mut s = Script::new();
        s.send(1, 0, 10, Some(0), Kind::Ok).send(1, 0, 11, Some(1), Kind::Ok).send(1, 0, 12, None, Kind::Info);
        assert_eq!(check(&s.input(&[(0, &[(0, 10), (1, 11)])])), vec![]);
        let found = check(&s.input(&[(0, &[(0, 10)])]));
        assert_eq!(found.len(), 1);
        assert!(found[0].detail.contains("value 11"), "{found:?}");
    }

    /// Jepsen counts a value of unknown outcome as written once anyone
    /// read it: it must not vanish afterwards.
    #[test]
    fn a_value_of_unknown_outcome_that_was_read_then_lost_is_lost() {
        let mut s = Script::new();
        s.send(1, 0, 10, Some(0), Kind::Ok).send(1, 0, 12, None, Kind::Info);
        assert_eq!(check(&s.input(&[(0, &[(0, 10)])])), vec![], "never read: it may never have been written");
        s.poll(9, 0, &[(0, 10), (1, 12)]);
        assert_eq!(check(&s.input(&[(0, &[(0, 10), (1, 12)])])), vec![]);
        let found = check(&s.input(&[(0, &[(0, 10)])]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("value 12, read by process 9 at 0/1"), "{found:?}");
    }
}
