//! Duplicate: one value at two offsets.
//!
//! Source: Jepsen's kafka workload ("duplicate": a value appearing at more
//! than one offset of a partition). Producers here are idempotent and never
//! send a value twice, so any copy is the broker's doing. Reads come from
//! the final log and from every poll.

use std::collections::{BTreeMap, BTreeSet};

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut offsets: BTreeMap<(u32, u64), BTreeSet<u64>> = BTreeMap::new();
    for (partition, offset, value) in input.reads() {
        offsets.entry((partition, value)).or_default().insert(offset);
    }
    offsets
        .into_iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|((partition, value), at)| Anomaly {
            kind: "duplicate",
            detail: format!("value {value} is at offsets {at:?} of partition {partition}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::Script;
    use super::*;
    use crate::history::Kind;

    #[test]
    fn a_value_at_two_offsets_is_a_duplicate() {
        let mut s = Script::new();
        s.send(1, 0, 10, Some(0), Kind::Ok);
        assert_eq!(check(&s.input(&[(0, &[(0, 10), (1, 11)])])), vec![]);
        assert_eq!(check(&s.input(&[(0, &[(0, 10), (1, 10)])])).len(), 1);
        s.poll(9, 0, &[(2, 10)]);
        assert_eq!(check(&s.input(&[(0, &[(0, 10)])])).len(), 1, "a poll saw it elsewhere");
    }
}
