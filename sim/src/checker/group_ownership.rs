//! Group ownership: two members of one group owning one partition in the
//! same generation.
//!
//! Source: Kafka's group protocol (KIP-62/KIP-429 and the consumer docs: in
//! a generation each partition is assigned to exactly one member), checked
//! as Jepsen's kafka workload checks `:assign` operations.

use std::collections::BTreeMap;

use crate::history::{Kind, Value};

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut owners: BTreeMap<(String, u64, u32), u64> = BTreeMap::new();
    let mut out = Vec::new();
    for op in input.ops.iter().filter(|op| op.kind == Kind::Ok) {
        let Value::Assign { group: Some(group), generation, partitions, .. } = &op.value else { continue };
        for partition in partitions {
            match owners.get(&(group.clone(), *generation, *partition)) {
                Some(owner) if *owner != op.process => out.push(Anomaly {
                    kind: "group-ownership",
                    detail: format!(
                        "partition {partition} assigned to processes {owner} and {} in generation {generation} \
                         of group {group}",
                        op.process
                    ),
                }),
                _ => {
                    owners.insert((group.clone(), *generation, *partition), op.process);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::Script;
    use super::*;

    #[test]
    fn two_owners_in_one_generation_conflict() {
        let mut s = Script::new();
        s.assign(8, 1, &[0, 1]).assign(9, 2, &[0]).assign(8, 2, &[1]);
        assert_eq!(check(&s.input(&[])), vec![]);
        s.assign(9, 2, &[1]);
        assert_eq!(check(&s.input(&[])).len(), 1);
    }
}
