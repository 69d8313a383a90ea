//! Committed offsets moving backwards.
//!
//! Source: Kafka's consumer semantics (a group's committed offset for a
//! partition is where its next member resumes; commits from a fenced,
//! older generation must be refused, KIP-98/KIP-447 fencing), so among the
//! commits a group's coordinator accepted, each partition's offset never
//! goes down.

use std::collections::BTreeMap;

use crate::history::{pairs, Kind, Value};

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut last: BTreeMap<(String, u32), (u64, u64)> = BTreeMap::new();
    let mut out = Vec::new();
    for (_, done) in pairs(&input.ops) {
        if done.kind != Kind::Ok {
            continue;
        }
        let Value::Commit { group, generation, offsets } = &done.value else { continue };
        for (partition, offset) in offsets {
            if let Some((previous, previous_generation)) = last.get(&(group.clone(), *partition)) {
                if offset < previous {
                    out.push(Anomaly {
                        kind: "commit-backwards",
                        detail: format!(
                            "group {group} committed {offset} for partition {partition} in generation {generation} \
                             after {previous} in generation {previous_generation}"
                        ),
                    });
                }
            }
            last.insert((group.clone(), *partition), (*offset, *generation));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::Script;
    use super::*;

    #[test]
    fn an_accepted_commit_below_an_earlier_one_goes_backwards() {
        let mut s = Script::new();
        s.commit(9, 1, 0, 5, Kind::Ok).commit(8, 1, 0, 3, Kind::Fail).commit(8, 2, 0, 5, Kind::Ok);
        assert_eq!(check(&s.input(&[])), vec![], "refused commits do not count");
        s.commit(8, 2, 0, 4, Kind::Ok);
        assert_eq!(check(&s.input(&[])).len(), 1);
    }
}
