//! No writer of value: a value read that no send wrote, or read from a
//! partition it was not sent to.
//!
//! Source: Jepsen's kafka workload (`jepsen.tests.kafka`, "G0/G1 ...
//! no-writer-of-value": every value observed must come from a send that
//! was invoked, to that key). Producers here write unique integers, one
//! partition each, so a value from nowhere, or in the wrong partition, is
//! the broker serving bytes it was never given (a misrouted batch, a
//! corrupted value that passed the checks).

use std::collections::BTreeMap;

use crate::history::{Kind, Value};

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut sent: BTreeMap<u64, u32> = BTreeMap::new();
    for op in input.ops.iter().filter(|op| op.kind == Kind::Invoke) {
        if let Value::Send { partition, value, .. } = op.value {
            sent.insert(value, partition);
        }
    }
    // (partition, value) → where it was first read, per problem.
    let mut nowhere: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    let mut misplaced: BTreeMap<(u32, u64), (u64, u32)> = BTreeMap::new();
    for (partition, offset, value) in input.reads() {
        match sent.get(&value) {
            None => {
                nowhere.entry((partition, value)).or_insert(offset);
            }
            Some(&to) if to != partition => {
                misplaced.entry((partition, value)).or_insert((offset, to));
            }
            Some(_) => {}
        }
    }
    let nowhere = nowhere.into_iter().map(|((partition, value), offset)| Anomaly {
        kind: "no-writer",
        detail: format!("value {value} read at {partition}/{offset} was never sent"),
    });
    let misplaced = misplaced.into_iter().map(|((partition, value), (offset, to))| Anomaly {
        kind: "no-writer",
        detail: format!("value {value} read at {partition}/{offset} was sent to partition {to}"),
    });
    nowhere.chain(misplaced).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::Script;
    use super::*;

    #[test]
    fn a_value_never_sent_or_in_another_partition_has_no_writer() {
        let mut s = Script::new();
        s.send(1, 0, 10, Some(0), Kind::Ok).send(1, 1, 11, None, Kind::Info);
        s.poll(9, 0, &[(0, 10)]);
        assert_eq!(check(&s.input(&[(0, &[(0, 10)]), (1, &[(0, 11)])])), vec![], "an :info send may be read");
        let found = check(&s.input(&[(0, &[(0, 10), (1, 99)]), (1, &[(0, 11)])]));
        assert_eq!(found.len(), 1);
        assert!(found[0].detail.contains("value 99 read at 0/1 was never sent"), "{found:?}");
        s.poll(9, 0, &[(1, 11)]);
        let found = check(&s.input(&[(0, &[(0, 10)]), (1, &[(0, 11)])]));
        assert_eq!(found.len(), 1);
        assert!(found[0].detail.contains("was sent to partition 1"), "{found:?}");
    }
}
