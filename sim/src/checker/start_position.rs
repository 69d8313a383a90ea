//! Start position: where a group member begins reading a partition after
//! an assignment must be the group's last accepted commit for it.
//!
//! Source: Kafka's consumer semantics (a member assigned a partition
//! resumes at the group's committed offset, or where `auto.offset.reset`
//! puts it when there is none; KIP-429 and the consumer docs), and Jepsen's
//! kafka analyses, whose checks go blind at a rebalance without this. A
//! start past the commit skips records nobody in the group read; one below
//! it rereads what the group had finished (a commit lost, as on a
//! coordinator failover that forgot it).
//!
//! Each assignment records where its member started (`starts`); the
//! commits that could be the group's latest when the member fetched them
//! are those invoked before the assignment was noted and not superseded: a
//! commit is superseded once another accepted commit of that partition,
//! invoked after it completed, completed before the member's operation in
//! which it learned the assignment began (so before its fetch): its join,
//! an operation of its own, or the poll in which it rejoined. (A member
//! stalled right after joining may first poll many seconds later, still
//! in its first generation, from where it started then.) A commit of
//! unknown outcome may take effect at any time and is never superseded.
//! With no accepted commit before that point, the reset position (the
//! log's start, 0 here) is allowed too. Seeks do not matter: a commit
//! after a seek back is itself a candidate.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{pairs, Kind, Value};

use super::{Anomaly, Input};

/// Where a consumer without a committed offset starts (`auto.offset.reset
/// = earliest` on logs nothing has been deleted from).
const RESET_POSITION: u64 = 0;

struct Commit {
    invoked: usize,
    completed: usize,
    kind: Kind,
    offset: u64,
}

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut commits: BTreeMap<(String, u32), Vec<Commit>> = BTreeMap::new();
    for (invoke, done) in pairs(&input.ops) {
        let Value::Commit { group, offsets, .. } = &done.value else { continue };
        if done.kind == Kind::Fail {
            continue;
        }
        for (partition, offset) in offsets {
            let commit = Commit { invoked: invoke.index, completed: done.index, kind: done.kind, offset: *offset };
            commits.entry((group.clone(), *partition)).or_default().push(commit);
        }
    }
    // Per process, the invocation of its operation outstanding at each point.
    let mut outstanding: BTreeMap<u64, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for op in &input.ops {
        match op.kind {
            Kind::Invoke => {
                outstanding.insert(op.process, op.index);
                continue;
            }
            _ if !matches!(op.value, Value::Assign { .. }) => {
                outstanding.remove(&op.process);
                continue;
            }
            _ => {}
        }
        let Value::Assign { group: Some(group), generation, starts, .. } = &op.value else { continue };
        // The member fetched the committed offsets after this began.
        let began = outstanding.get(&op.process).copied().unwrap_or(op.index);
        for (partition, start) in starts {
            let known = commits.get(&(group.clone(), *partition)).map(Vec::as_slice).unwrap_or_default();
            let accepted_before: Vec<&Commit> =
                known.iter().filter(|c| c.kind == Kind::Ok && c.completed < began).collect();
            let superseded =
                |c: &Commit| c.kind == Kind::Ok && accepted_before.iter().any(|later| c.completed < later.invoked);
            let mut allowed: BTreeSet<u64> =
                known.iter().filter(|c| c.invoked < op.index && !superseded(c)).map(|c| c.offset).collect();
            if accepted_before.is_empty() {
                allowed.insert(RESET_POSITION);
            }
            if !allowed.contains(start) {
                out.push(Anomaly {
                    kind: "start-position",
                    detail: format!(
                        "process {} started partition {partition} of group {group} at {start} in generation \
                         {generation}, but the group's last accepted commit could only be one of {allowed:?}",
                        op.process
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::Script;
    use super::*;

    fn assigned(s: &mut Script, process: u64, generation: u64, starts: &[(u32, u64)]) {
        let starts: BTreeMap<u32, u64> = starts.iter().copied().collect();
        let partitions = starts.keys().copied().collect();
        s.push(process, Kind::Invoke, Value::Poll(BTreeMap::new()));
        s.push(process, Kind::Ok, Value::Assign { group: Some("g".into()), generation, partitions, starts });
        s.push(process, Kind::Ok, Value::Poll(BTreeMap::new()));
    }

    #[test]
    fn a_new_owner_starts_at_the_last_accepted_commit() {
        let mut s = Script::new();
        assigned(&mut s, 9, 1, &[(0, 0)]);
        s.commit(9, 1, 0, 5, Kind::Ok).commit(9, 1, 0, 8, Kind::Ok);
        assigned(&mut s, 7, 2, &[(0, 8)]);
        assert_eq!(check(&s.input(&[])), vec![]);

        let mut skipped = Script::new();
        assigned(&mut skipped, 9, 1, &[(0, 0)]);
        skipped.commit(9, 1, 0, 8, Kind::Ok);
        assigned(&mut skipped, 7, 2, &[(0, 9)]);
        let found = check(&skipped.input(&[]));
        assert_eq!(found.len(), 1, "one past the commit skips a record");
        assert!(found[0].detail.contains("at 9"), "{}", found[0].detail);

        let mut lost = Script::new();
        assigned(&mut lost, 9, 1, &[(0, 0)]);
        lost.commit(9, 1, 0, 5, Kind::Ok).commit(9, 1, 0, 8, Kind::Ok);
        assigned(&mut lost, 7, 2, &[(0, 5)]);
        assert_eq!(check(&lost.input(&[])).len(), 1, "an older commit was superseded: the last one was lost");
        let mut reset = Script::new();
        assigned(&mut reset, 9, 1, &[(0, 0)]);
        reset.commit(9, 1, 0, 8, Kind::Ok);
        assigned(&mut reset, 7, 2, &[(0, 0)]);
        assert_eq!(check(&reset.input(&[])).len(), 1, "back to the beginning though a commit was accepted");
    }

    #[test]
    fn a_member_stalled_after_its_join_starts_where_the_join_put_it() {
        let mut s = Script::new();
        let join = |generation, starts: BTreeMap<u32, u64>| Value::Assign {
            group: Some("g".into()),
            generation,
            partitions: starts.keys().copied().collect(),
            starts,
        };
        s.push(7, Kind::Invoke, join(0, BTreeMap::new()));
        s.push(7, Kind::Ok, join(1, BTreeMap::from([(0, 0)])));
        // Another member commits while 7 is stalled; 7 then polls on in
        // generation 1 from where its join put it.
        assigned(&mut s, 9, 2, &[(0, 0)]);
        s.commit(9, 2, 0, 8, Kind::Ok);
        s.poll(7, 0, &[(0, 10)]);
        assert_eq!(check(&s.input(&[])), vec![]);
        // The same start noted only at a poll after the commit would not do.
        let mut late = Script::new();
        assigned(&mut late, 9, 2, &[(0, 0)]);
        late.commit(9, 2, 0, 8, Kind::Ok);
        assigned(&mut late, 7, 1, &[(0, 0)]);
        assert_eq!(check(&late.input(&[])).len(), 1);
    }

    #[test]
    fn commits_in_flight_or_unknown_and_refused_ones() {
        // A commit of unknown outcome may or may not have landed.
        let mut s = Script::new();
        assigned(&mut s, 9, 1, &[(0, 0)]);
        s.commit(9, 1, 0, 5, Kind::Ok).commit(9, 1, 0, 8, Kind::Info);
        assigned(&mut s, 7, 2, &[(0, 5)]);
        assigned(&mut s, 6, 3, &[(0, 8)]);
        assert_eq!(check(&s.input(&[])), vec![]);
        // A refused commit never counts.
        let mut refused = Script::new();
        assigned(&mut refused, 9, 1, &[(0, 0)]);
        refused.commit(9, 1, 0, 5, Kind::Ok).commit(9, 1, 0, 8, Kind::Fail);
        assigned(&mut refused, 7, 2, &[(0, 8)]);
        assert_eq!(check(&refused.input(&[])).len(), 1);
        // A commit completing while the new owner's poll (its fetch) was
        // under way may or may not be what it fetched.
        let mut racing = Script::new();
        assigned(&mut racing, 9, 1, &[(0, 0)]);
        racing.commit(9, 1, 0, 5, Kind::Ok);
        racing.push(7, Kind::Invoke, Value::Poll(BTreeMap::new()));
        racing.commit(9, 1, 0, 8, Kind::Ok);
        let starts = BTreeMap::from([(0, 5)]);
        racing.push(7, Kind::Ok, Value::Assign { group: Some("g".into()), generation: 2, partitions: vec![0], starts });
        assert_eq!(check(&racing.input(&[])), vec![]);
    }
}
