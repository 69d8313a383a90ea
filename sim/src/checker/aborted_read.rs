//! Aborted read (G1a): a value read whose send definitely failed.
//!
//! Source: Jepsen's kafka workload (`jepsen.tests.kafka`, analysis 1: "for
//! any observed value of a key, its writer was either :ok or :info; if the
//! writer :failed, this constitutes an aborted read"), after Adya's G1a.
//! A send is recorded `:fail` only when every attempt's error says it did
//! nothing (`weir::broker::error::meaning`, the table the client's retries
//! read too); any other error is `:info`. So a failed value in a poll or
//! in the final log is a broker that refused a write it had made, or a
//! client that called an unknown outcome a refusal.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{pairs, Kind, Value};

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let failed: BTreeSet<(u32, u64)> = pairs(&input.ops)
        .into_iter()
        .filter(|(_, done)| done.kind == Kind::Fail)
        .filter_map(|(_, done)| match done.value {
            Value::Send { partition, value, .. } => Some((partition, value)),
            _ => None,
        })
        .collect();
    // (partition, value) → the first offset it was read at.
    let mut read: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for (partition, offset, value) in input.reads() {
        if failed.contains(&(partition, value)) {
            read.entry((partition, value)).or_insert(offset);
        }
    }
    read.into_iter()
        .map(|((partition, value), offset)| Anomaly {
            kind: "aborted-read",
            detail: format!("value {value} read at {partition}/{offset}, though its send definitely failed"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::Script;
    use super::*;

    #[test]
    fn a_value_whose_send_failed_must_not_be_read() {
        let mut s = Script::new();
        s.send(1, 0, 10, Some(0), Kind::Ok).send(1, 0, 11, None, Kind::Fail).send(1, 0, 12, None, Kind::Info);
        s.poll(9, 0, &[(0, 10), (1, 12)]);
        assert_eq!(check(&s.input(&[(0, &[(0, 10), (1, 12)])])), vec![], "an unknown send may land");
        let found = check(&s.input(&[(0, &[(0, 10), (1, 12), (2, 11)])]));
        assert_eq!(found.len(), 1, "the failed send is in the final log: {found:?}");
        assert!(found[0].detail.contains("value 11 read at 0/2"));
        s.poll(9, 0, &[(2, 11)]);
        assert_eq!(check(&s.input(&[])).len(), 1, "or was polled");
    }
}
