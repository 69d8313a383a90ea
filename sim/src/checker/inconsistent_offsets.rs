//! Inconsistent offsets: two values at one offset.
//!
//! Source: Jepsen's kafka workload ("inconsistent-offsets": different values
//! observed at the same offset of a partition). Observations are the
//! offsets sends were acknowledged at, every poll, and the final log.

use std::collections::{BTreeMap, BTreeSet};

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut values: BTreeMap<(u32, u64), BTreeSet<u64>> = BTreeMap::new();
    let acknowledged = input.acknowledged().into_iter().map(|(_, partition, offset, value)| (partition, offset, value));
    for (partition, offset, value) in input.reads().into_iter().chain(acknowledged) {
        values.entry((partition, offset)).or_default().insert(value);
    }
    values
        .into_iter()
        .filter(|(_, seen)| seen.len() > 1)
        .map(|((partition, offset), seen)| Anomaly {
            kind: "inconsistent-offsets",
            detail: format!("offset {offset} of partition {partition} held values {seen:?}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::Script;
    use super::*;
    use crate::history::Kind;

    #[test]
    fn two_values_at_one_offset_are_inconsistent() {
        let mut s = Script::new();
        s.send(1, 0, 10, Some(0), Kind::Ok);
        assert_eq!(check(&s.input(&[(0, &[(0, 10)])])), vec![]);
        assert_eq!(check(&s.input(&[(0, &[(0, 11)])])).len(), 1, "acknowledged at 0, stored 11 there");
        s.poll(9, 0, &[(0, 12)]);
        assert_eq!(check(&s.input(&[(0, &[(0, 10)])])).len(), 1, "a poll read 12 at 0");
    }
}
