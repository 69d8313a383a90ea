//! Nonmonotonic send: one producer's acknowledged sends to a partition
//! landing out of the order it made them.
//!
//! Source: Jepsen's kafka workload ("nonmonotonic-send": a process's
//! successive sends to a key acknowledged at offsets that do not rise). A
//! producer here sends to a partition one batch at a time, in order.

use std::collections::BTreeMap;

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut last: BTreeMap<(u64, u32), (u64, u64)> = BTreeMap::new();
    let mut out = Vec::new();
    for (process, partition, offset, value) in input.acknowledged() {
        if let Some((previous, previous_value)) = last.get(&(process, partition)) {
            if offset <= *previous {
                out.push(Anomaly {
                    kind: "nonmonotonic-send",
                    detail: format!(
                        "process {process} sent {value} to partition {partition} after {previous_value}, \
                         but it landed at {offset}, not after {previous}"
                    ),
                });
            }
        }
        last.insert((process, partition), (offset, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::Script;
    use super::*;
    use crate::history::Kind;

    #[test]
    fn a_later_send_at_a_lower_offset_is_nonmonotonic() {
        let mut s = Script::new();
        s.send(1, 0, 10, Some(3), Kind::Ok).send(2, 0, 20, Some(1), Kind::Ok).send(1, 0, 11, Some(4), Kind::Ok);
        assert_eq!(check(&s.input(&[])), vec![], "other processes may interleave");
        s.send(1, 0, 12, Some(2), Kind::Ok);
        assert_eq!(check(&s.input(&[])).len(), 1);
    }
}
