//! Retention deletes nothing it still promises to keep.
//!
//! Source: Kafka's `retention.ms` ("the maximum time we will retain a
//! log before we will discard old log segments"), read as a promise: a
//! record is kept at least that long. Kafka judges a segment's age by the
//! broker's wall clock against its records' timestamps, so a clock stepped
//! forwards past the retention time deletes data at once; weir judges ages
//! by a slewed clock (`weir::sys::clock::SlewedClock`) and must not.
//!
//! The simulator's topic keeps records for longer than a run lasts
//! (`Input::retention_ms`, against the simulated time its records were
//! stamped in), so nothing may go: every replica's log must start at
//! offset 0, and so must the final read of every partition that holds
//! anything.

use super::{Anomaly, Input};

pub fn check(input: &Input) -> Vec<Anomaly> {
    let Some(promise) = input.retention_ms else { return Vec::new() };
    let mut out = Vec::new();
    for replica in input.replicas.iter().filter(|r| r.log_start > 0) {
        out.push(Anomaly {
            kind: "early-retention",
            detail: format!(
                "partition {} on broker {} starts at offset {}: records younger than the retention time \
                 ({promise} ms) were deleted",
                replica.partition, replica.broker, replica.log_start
            ),
        });
    }
    for (partition, log) in &input.final_log {
        if let Some((first, _)) = log.first().filter(|(offset, _)| *offset > 0) {
            out.push(Anomaly {
                kind: "early-retention",
                detail: format!(
                    "the final read of partition {partition} starts at offset {first}: records younger than \
                     the retention time ({promise} ms) were deleted"
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::replicas::Replica;

    fn replica(broker: u64, log_start: u64) -> Replica {
        Replica { broker, partition: 0, log_start, high_watermark: 4, log_end: 4, ..Replica::default() }
    }

    #[test]
    fn a_replica_or_a_final_read_starting_late_is_early_retention() {
        let kept = Input {
            retention_ms: Some(3_600_000),
            replicas: vec![replica(1, 0), replica(2, 0)],
            final_log: [(0, vec![(0, 10), (1, 11)])].into(),
            ..Input::default()
        };
        assert!(check(&kept).is_empty(), "{:?}", check(&kept));

        let purged = Input { replicas: vec![replica(1, 0), replica(2, 3)], ..kept.clone() };
        let found = check(&purged);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("broker 2 starts at offset 3"), "{}", found[0]);

        let read_late = Input { final_log: [(0, vec![(2, 12)])].into(), ..kept.clone() };
        assert_eq!(check(&read_late).iter().map(|a| a.kind).collect::<Vec<_>>(), ["early-retention"]);

        let no_promise = Input { retention_ms: None, ..purged };
        assert!(check(&no_promise).is_empty(), "a run whose retention may have run promises nothing");
    }
}
