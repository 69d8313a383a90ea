//! Nonmonotonic poll: a consumer reading a partition backwards without
//! having been reassigned.
//!
//! Source: Jepsen's kafka workload ("nonmonotonic-poll": successive polls by
//! a process of a key whose offsets go down, for assigned consumers). A
//! rebalance may legitimately rewind a member to its group's committed
//! offset, so runs are split at each new assignment.

use super::{poll_runs, Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut out = Vec::new();
    for (process, partition, offsets) in poll_runs(input) {
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
}
