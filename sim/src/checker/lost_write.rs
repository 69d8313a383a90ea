//! Lost write: an acknowledged send missing from its partition.
//!
//! Source: Jepsen's kafka workload (`jepsen.tests.kafka`, "lost-write"): a
//! value acknowledged by a send, at or below the highest offset read, that
//! no read ever saw. The final read here covers each whole partition after
//! the faults healed, so every acknowledged value is below it.

use std::collections::BTreeSet;

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let stored: BTreeSet<(u32, u64)> =
        input.final_log.iter().flat_map(|(p, log)| log.iter().map(move |(_, v)| (*p, *v))).collect();
    input
        .acknowledged()
        .into_iter()
        .filter(|(_, partition, _, value)| !stored.contains(&(*partition, *value)))
        .map(|(process, partition, offset, value)| Anomaly {
            kind: "lost-write",
            detail: format!(
                "value {value} acknowledged to process {process} at {partition}/{offset} is not in the partition"
            ),
        })
        .collect()
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
}
