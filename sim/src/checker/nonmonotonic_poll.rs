//! Nonmonotonic poll: a consumer reading a partition backwards without
//! having been reassigned.
//!
//! Source: Jepsen's kafka workload ("nonmonotonic-poll": successive polls by
//! a process of a key whose offsets go down, for assigned consumers). A
//! rebalance may legitimately rewind a member to its group's committed
//! offset, and a seek moves a consumer on purpose, so runs are split at
//! each new assignment and seek; after either, nothing below where it
//! started may be read.

use super::{poll_runs, Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut out = Vec::new();
    for run in poll_runs(input) {
        let (process, partition, offsets) = (run.process, run.partition, &run.offsets);
        if let (Some(sought), Some(&first)) = (run.sought, offsets.first()) {
            if first < sought {
                out.push(Anomaly {
                    kind: "nonmonotonic-poll",
                    detail: format!("process {process} sought partition {partition} to {sought} but read {first}"),
                });
                continue;
            }
        }
        if let Some(pair) = offsets.windows(2).find(|w| w[1] <= w[0]) {
            out.push(Anomaly {
                kind: "nonmonotonic-poll",
                detail: format!("process {process} read partition {partition} at {} after {}", pair[1], pair[0]),
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
    fn reading_backwards_within_an_assignment_is_nonmonotonic() {
        let mut s = Script::new();
        s.assign(9, 1, &[0]).poll(9, 0, &[(0, 10), (1, 11)]).assign(9, 2, &[0]).poll(9, 0, &[(1, 11)]);
        assert_eq!(check(&s.input(&[])), vec![], "a new generation may rewind to the commit");
        s.poll(9, 0, &[(0, 10)]);
        assert_eq!(check(&s.input(&[])).len(), 1);
    }

    #[test]
    fn after_an_assignment_nothing_below_its_start_is_read() {
        let mut s = Script::new();
        s.assign_at(9, 1, 0, 4).poll(9, 0, &[(4, 14)]);
        assert_eq!(check(&s.input(&[])), vec![]);
        s.assign_at(9, 2, 0, 6).poll(9, 0, &[(5, 15)]);
        assert_eq!(check(&s.input(&[])).len(), 1, "started at 6, read 5");
    }

    #[test]
    fn a_seek_may_rewind_but_not_below_its_offset() {
        let mut s = Script::new();
        s.assign(9, 1, &[0]).poll(9, 0, &[(0, 10), (1, 11), (2, 12)]).seek(9, 0, 1).poll(9, 0, &[(1, 11)]);
        assert_eq!(check(&s.input(&[])), vec![], "a seek back rereads");
        s.seek(9, 0, 2).poll(9, 0, &[(1, 11)]);
        assert_eq!(check(&s.input(&[])).len(), 1, "read below the offset sought");
    }
}
