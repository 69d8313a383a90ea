//! Poll skip: a consumer jumping over records of a partition.
//!
//! Source: Jepsen's kafka workload ("poll-skip": successive polls by an
//! assigned consumer that skip over offsets holding values). Offsets in a
//! weir partition are dense, so within one assignment each read offset
//! follows the previous one; only offsets that exist in the final log
//! count, so a run cut short by the end is not a skip. After a seek, the
//! first read must be the offset sought, and after an assignment the
//! offset it started at (its group's commit, `start_position`).

use super::{poll_runs, Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let mut out = Vec::new();
    for run in poll_runs(input) {
        let (process, partition, offsets) = (run.process, run.partition, &run.offsets);
        if let (Some(sought), Some(&first)) = (run.sought, offsets.first()) {
            if first > sought {
                out.push(Anomaly {
                    kind: "poll-skip",
                    detail: format!(
                        "process {process} sought partition {partition} to {sought} but read {first} first"
                    ),
                });
                continue;
            }
        }
        if let Some(pair) = offsets.windows(2).find(|w| w[1] > w[0] + 1) {
            out.push(Anomaly {
                kind: "poll-skip",
                detail: format!(
                    "process {process} read partition {partition} at {} right after {}, skipping {} records",
                    pair[1],
                    pair[0],
                    pair[1] - pair[0] - 1
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
    fn jumping_over_offsets_within_an_assignment_is_a_skip() {
        let mut s = Script::new();
        s.assign(9, 1, &[0]).poll(9, 0, &[(0, 10)]).poll(9, 0, &[(1, 11), (2, 12)]);
        s.assign(9, 2, &[0]).poll(9, 0, &[(5, 15)]);
        assert_eq!(check(&s.input(&[])), vec![], "a new assignment starts where its commit says");
        s.poll(9, 0, &[(7, 17)]);
        assert_eq!(check(&s.input(&[])).len(), 1);
    }

    #[test]
    fn a_consumer_without_a_group_reads_on_in_the_partitions_it_kept() {
        let mut s = Script::new();
        s.assign_manually(9, &[0, 1]).poll(9, 0, &[(0, 10), (1, 11)]).poll(9, 1, &[(0, 20)]);
        // Partition 1 dropped and taken again: it may start over.
        s.assign_manually(9, &[0]).assign_manually(9, &[0, 1]).poll(9, 1, &[(0, 20)]);
        s.poll(9, 0, &[(2, 12)]);
        assert_eq!(check(&s.input(&[])), vec![], "partition 0 was kept and read on from 2");
        s.assign_manually(9, &[0, 1]).poll(9, 0, &[(4, 14)]);
        let found = check(&s.input(&[]));
        assert_eq!(found.len(), 1, "kept across the reassignment, partition 0 skipped 3: {found:?}");
    }

    #[test]
    fn after_an_assignment_the_first_read_is_where_it_started() {
        let mut s = Script::new();
        s.assign_at(9, 1, 0, 4).poll(9, 0, &[(4, 14), (5, 15)]);
        assert_eq!(check(&s.input(&[])), vec![]);
        s.assign_at(9, 2, 0, 6).poll(9, 0, &[(8, 18)]);
        let found = check(&s.input(&[]));
        assert_eq!(found.len(), 1, "started at 6, read 8 first: {found:?}");
    }

    #[test]
    fn a_seek_starts_a_run_at_the_offset_sought() {
        let mut s = Script::new();
        s.assign(9, 1, &[0]).poll(9, 0, &[(0, 10), (1, 11), (2, 12)]);
        s.seek(9, 0, 1).poll(9, 0, &[(1, 11), (2, 12)]);
        assert_eq!(check(&s.input(&[])), vec![], "rereading from the offset sought");
        s.seek(9, 0, 0).poll(9, 0, &[(1, 11)]);
        assert_eq!(check(&s.input(&[])).len(), 1, "the record at the offset sought was skipped");
    }
}
