//! Committed offsets moving backwards.
//!
//! Source: Kafka's consumer semantics (a group's committed offset for a
//! partition is where its next member resumes; commits from a fenced,
//! older generation must be refused, KIP-98/KIP-447 fencing), so among the
//! commits a group's coordinator accepted, each partition's offset never
//! goes down.
//!
//! Commits are ordered in real time, as Jepsen orders operations: one
//! precedes another if it completed before the other was invoked. Two
//! commits in flight at once may take effect in either order (an old
//! generation's commit, accepted before a rebalance, may be acknowledged
//! after the next generation's first commit), so they are not compared.
//! A seek moves a consumer back on purpose, and Kafka accepts the lower
//! commit that follows it, so a commit is compared only with those invoked
//! after the partition's latest seek (one in flight across the seek may
//! land after it, from before it).

use std::collections::BTreeMap;

use crate::history::{pairs, Kind, Value};

use super::{Anomaly, Input};

/// An accepted commit of one partition: where it was invoked and completed
/// in the history, its offset and generation.
struct Accepted {
    invoked: usize,
    completed: usize,
    offset: u64,
    generation: u64,
}

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut accepted: BTreeMap<(String, u32), Vec<Accepted>> = BTreeMap::new();
    // Where each partition's seeks completed, in history order.
    let mut seeks: BTreeMap<(String, u32), Vec<usize>> = BTreeMap::new();
    for (invoke, done) in pairs(&input.ops) {
        if done.kind != Kind::Ok {
            continue;
        }
        if let Value::Seek { group, partition, .. } = &done.value {
            seeks.entry((group.clone(), *partition)).or_default().push(done.index);
            continue;
        }
        let Value::Commit { group, generation, offsets } = &done.value else { continue };
        for (partition, offset) in offsets {
            accepted.entry((group.clone(), *partition)).or_default().push(Accepted {
                invoked: invoke.index,
                completed: done.index,
                offset: *offset,
                generation: *generation,
            });
        }
    }
    let mut out = Vec::new();
    for ((group, partition), mut commits) in accepted {
        commits.sort_by_key(|c| c.invoked);
        // A stack: the next to complete on top.
        let mut by_completion: Vec<&Accepted> = commits.iter().collect();
        by_completion.sort_by_key(|c| std::cmp::Reverse(c.completed));
        let seeks = seeks.remove(&(group.clone(), partition)).unwrap_or_default();
        // The commits completed before the current one's invocation, and
        // the highest of them invoked after the latest seek.
        let mut completed: Vec<&Accepted> = Vec::new();
        let mut highest: Option<&Accepted> = None;
        let mut floor = None;
        for commit in &commits {
            while by_completion.last().is_some_and(|c| c.completed < commit.invoked) {
                let earlier = by_completion.pop().expect("just seen");
                completed.push(earlier);
                if floor.is_none_or(|f| earlier.invoked > f) && highest.is_none_or(|h| earlier.offset > h.offset) {
                    highest = Some(earlier);
                }
            }
            let latest_seek = seeks.iter().take_while(|&&s| s < commit.invoked).last().copied();
            if latest_seek != floor {
                floor = latest_seek;
                highest =
                    completed.iter().copied().filter(|c| floor.is_none_or(|f| c.invoked > f)).max_by_key(|c| c.offset);
            }
            if let Some(before) = highest.filter(|h| commit.offset < h.offset) {
                out.push(Anomaly {
                    kind: "commit-backwards",
                    detail: format!(
                        "group {group} committed {} for partition {partition} in generation {} \
                         after {} in generation {} had completed",
                        commit.offset, commit.generation, before.offset, before.generation
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

    #[test]
    fn an_accepted_commit_below_an_earlier_one_goes_backwards() {
        let mut s = Script::new();
        s.commit(9, 1, 0, 5, Kind::Ok).commit(8, 1, 0, 3, Kind::Fail).commit(8, 2, 0, 5, Kind::Ok);
        assert_eq!(check(&s.input(&[])), vec![], "refused commits do not count");
        s.commit(8, 2, 0, 4, Kind::Ok);
        assert_eq!(check(&s.input(&[])).len(), 1);
    }

    #[test]
    fn commits_in_flight_together_may_land_in_either_order() {
        let mut s = Script::new();
        let old = Value::Commit { group: "g".into(), generation: 1, offsets: BTreeMap::from([(0, 7)]) };
        s.push(9, Kind::Invoke, old.clone());
        s.commit(8, 2, 0, 9, Kind::Ok);
        s.push(9, Kind::Ok, old);
        assert_eq!(check(&s.input(&[])), vec![], "the old generation's commit overlapped the new one");
        s.commit(8, 2, 0, 8, Kind::Ok);
        assert_eq!(check(&s.input(&[])).len(), 1, "but once both completed, a lower commit goes backwards");
    }

    #[test]
    fn a_seek_back_lets_the_next_commit_go_lower() {
        let mut s = Script::new();
        s.commit(9, 1, 0, 7, Kind::Ok).seek(9, 0, 2).commit(9, 1, 0, 3, Kind::Ok);
        assert_eq!(check(&s.input(&[])), vec![], "the commit after the seek may be lower");
        s.commit(9, 1, 0, 2, Kind::Ok);
        assert_eq!(check(&s.input(&[])).len(), 1, "but commits after the seek still only go forward");
    }

    #[test]
    fn a_commit_in_flight_across_a_seek_is_from_before_it() {
        let mut s = Script::new();
        let old = Value::Commit { group: "g".into(), generation: 1, offsets: BTreeMap::from([(0, 37)]) };
        s.push(8, Kind::Invoke, old.clone());
        s.seek(9, 0, 0);
        s.push(8, Kind::Ok, old);
        s.commit(9, 2, 0, 4, Kind::Ok);
        assert_eq!(check(&s.input(&[])), vec![], "the commit of 37 was invoked before the seek");
    }
}
