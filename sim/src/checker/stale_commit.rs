//! Stale commit: an offset commit accepted from a generation that had
//! already ended.
//!
//! Source: Kafka's group protocol (a commit carries the member's generation;
//! the coordinator refuses one from an older generation with
//! ILLEGAL_GENERATION, so a member fenced by a rebalance cannot move the
//! group's position: KIP-98/KIP-447 fencing), as Jepsen's kafka analyses
//! check it. Real-time order decides: once some member of the group has
//! been assigned partitions in generation g' (its `:assign` completed),
//! the coordinator is in g' or later, so a commit of an older generation
//! invoked after that must be refused. An assignment is noted after the
//! member learned it, so its completion is, if anything, late: the rule
//! never blames a commit that could have been accepted legitimately.

use std::collections::BTreeMap;

use crate::history::{pairs, Kind, Value};

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    // Per group: (completion index, generation, process) of each assignment,
    // in history order.
    let mut assigned: BTreeMap<&str, Vec<(usize, u64, u64)>> = BTreeMap::new();
    for op in input.ops.iter().filter(|op| op.kind == Kind::Ok) {
        if let Value::Assign { group: Some(group), generation, .. } = &op.value {
            assigned.entry(group.as_str()).or_default().push((op.index, *generation, op.process));
        }
    }
    let mut out = Vec::new();
    for (invoke, done) in pairs(&input.ops) {
        if done.kind != Kind::Ok {
            continue;
        }
        let Value::Commit { group, generation, offsets } = &done.value else { continue };
        let Some(assignments) = assigned.get(group.as_str()) else { continue };
        let newer = assignments
            .iter()
            .take_while(|(completed, _, _)| *completed < invoke.index)
            .filter(|(_, g, _)| g > generation)
            .max_by_key(|(_, g, _)| *g);
        if let Some((_, newer, assignee)) = newer {
            out.push(Anomaly {
                kind: "stale-commit",
                detail: format!(
                    "process {} committed {offsets:?} for group {group} in generation {generation} and it was \
                     accepted, though generation {newer} had begun (process {assignee} was assigned in it) \
                     before the commit was sent",
                    done.process
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::Script;
    use super::*;

    #[test]
    fn a_commit_of_an_ended_generation_must_be_refused() {
        let mut s = Script::new();
        s.assign(8, 1, &[0, 1]).commit(8, 1, 0, 5, Kind::Ok);
        s.assign(9, 2, &[1]);
        // Refused (or of unknown outcome): fine.
        s.commit(8, 1, 0, 6, Kind::Fail).commit(8, 1, 0, 6, Kind::Info);
        assert_eq!(check(&s.input(&[])), vec![]);
        s.commit(8, 1, 0, 7, Kind::Ok);
        let found = check(&s.input(&[]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("generation 2 had begun"), "{found:?}");
    }

    /// A commit sent before the next generation was known may be accepted
    /// (the coordinator may still have been in its generation).
    #[test]
    fn a_commit_in_flight_across_a_rebalance_may_be_accepted() {
        let mut s = Script::new();
        s.assign(8, 1, &[0]);
        s.push(8, Kind::Invoke, Value::Commit { group: "g".into(), generation: 1, offsets: BTreeMap::from([(0, 3)]) });
        s.assign(9, 2, &[0]);
        s.push(8, Kind::Ok, Value::Commit { group: "g".into(), generation: 1, offsets: BTreeMap::from([(0, 3)]) });
        assert_eq!(check(&s.input(&[])), vec![]);
    }
}
