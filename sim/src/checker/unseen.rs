//! Unseen: acknowledged values the consumers never delivered.
//!
//! Source: Jepsen's kafka workload ("unseen": values acknowledged but never
//! polled by the end of the test, after the final polls). Here the group
//! named in [`Input::complete_group`] must, across its members, have polled
//! every acknowledged value once the faults healed. Only its members' polls
//! count (a process is a member once it was assigned partitions in that
//! group): another group reading a value says nothing of this one.

use std::collections::BTreeSet;

use crate::history::{Kind, Value};

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let Some(group) = &input.complete_group else {
        return Vec::new();
    };
    let members: BTreeSet<u64> = input
        .ops
        .iter()
        .filter(|op| op.kind == Kind::Ok && matches!(&op.value, Value::Assign { group: Some(g), .. } if g == group))
        .map(|op| op.process)
        .collect();
    let seen: BTreeSet<(u32, u64)> = input
        .polls()
        .into_iter()
        .filter(|(process, _, _)| members.contains(process))
        .flat_map(|(_, _, polled)| polled.iter().flat_map(|(p, records)| records.iter().map(move |(_, v)| (*p, *v))))
        .collect();
    let missing: Vec<(u32, u64)> = input
        .acknowledged()
        .into_iter()
        .map(|(_, partition, _, value)| (partition, value))
        .filter(|key| !seen.contains(key))
        .collect();
    if missing.is_empty() {
        return Vec::new();
    }
    let shown: Vec<String> = missing.iter().take(10).map(|(p, v)| format!("{v} in {p}")).collect();
    vec![Anomaly {
        kind: "unseen",
        detail: format!("{} acknowledged values were never polled, e.g. {}", missing.len(), shown.join(", ")),
    }]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::Script;
    use super::*;
    use crate::history::Kind;

    #[test]
    fn acknowledged_values_never_polled_are_unseen() {
        let mut s = Script::new();
        s.assign(9, 1, &[0]);
        s.send(1, 0, 10, Some(0), Kind::Ok).send(1, 0, 11, Some(1), Kind::Ok).poll(9, 0, &[(0, 10)]);
        let mut input = s.input(&[(0, &[(0, 10), (1, 11)])]);
        assert_eq!(check(&input), vec![], "no group asked to read everything");
        input.complete_group = Some("g".into());
        let found = check(&input);
        assert_eq!(found.len(), 1);
        assert!(found[0].detail.starts_with("1 acknowledged"), "{found:?}");
    }

    /// Another group reading every value does not make up for the group
    /// that must: only its members' polls count.
    #[test]
    fn another_groups_polls_do_not_count() {
        let mut s = Script::new();
        s.assign(9, 1, &[0]);
        s.push(
            8,
            Kind::Invoke,
            Value::Assign { group: Some("other".into()), generation: 1, partitions: vec![0], starts: BTreeMap::new() },
        );
        s.push(
            8,
            Kind::Ok,
            Value::Assign { group: Some("other".into()), generation: 1, partitions: vec![0], starts: BTreeMap::new() },
        );
        s.send(1, 0, 10, Some(0), Kind::Ok).send(1, 0, 11, Some(1), Kind::Ok);
        s.poll(8, 0, &[(0, 10), (1, 11)]).poll(9, 0, &[(0, 10)]);
        let mut input = s.input(&[(0, &[(0, 10), (1, 11)])]);
        input.complete_group = Some("g".into());
        let found = check(&input);
        assert_eq!(found.len(), 1, "the other group read 11, g never did: {found:?}");
        s.poll(9, 0, &[(1, 11)]);
        let mut input = s.input(&[(0, &[(0, 10), (1, 11)])]);
        input.complete_group = Some("g".into());
        assert_eq!(check(&input), vec![]);
    }
}
