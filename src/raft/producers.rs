//! Idempotent producers: what a partition knows of each producer, so that a
//! retried batch is written once and a batch out of order is refused.
//!
//! A producer stamps every batch with its id, epoch and the sequence number
//! of the batch's first record (consecutive per partition, from 0). The
//! table is built by applying committed entries, identically on every
//! replica, and travels in snapshots, so it survives failover and restarts.
//! The leader checks each incoming batch against the table plus the
//! batches it has proposed but not yet applied (see `Replica::propose`).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::log::BatchHeader;
use crate::sys::planted::{self, Bug};

/// Batches per producer whose offsets are kept to answer retries with.
pub const RECENT_BATCHES: usize = 5;

/// One committed batch of a producer: its sequences and where it landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub recent: VecDeque<Written>,
}

impl ProducerEntry {
    pub fn last_seq(&self) -> Option<i32> {
        self.recent.back().map(|w| w.last_seq)
    }
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Next in line: write it.
    Append,
    /// Already written: answer with where.
    Duplicate(Written),
    /// A gap or a batch too old to place.
    OutOfOrder { expected: i32 },
    /// An older epoch of a producer that has moved on.
    Fenced { current: i16 },
}

/// The sequences of a batch: first and last.
pub fn sequences(header: &BatchHeader) -> (i32, i32) {
    let first = header.base_sequence;
    (first, first.wrapping_add(header.record_count as i32 - 1))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerTable {
    producers: BTreeMap<i64, ProducerEntry>,
}

impl ProducerTable {
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Records a committed batch at `base_offset`.
    pub fn apply(&mut self, header: &BatchHeader, base_offset: u64) {
        if header.producer_id < 0 {
            return;
        }
        let (first_seq, last_seq) = sequences(header);
        let entry = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != entry.epoch {
            *entry = ProducerEntry { epoch: header.producer_epoch, recent: VecDeque::new() };
        }
        entry.recent.push_back(Written { first_seq, last_seq, base_offset });
        while entry.recent.len() > RECENT_BATCHES {
            entry.recent.pop_front();
        }
    }

    /// Judges a batch of `producer_id`/`epoch` holding sequences
    /// `first..=last`, given the last sequence already accepted (committed
    /// or proposed) for it, `after`.
    pub fn verdict(&self, producer_id: i64, epoch: i16, first: i32, last: i32, after: Option<i32>) -> Verdict {
        let entry = self.producers.get(&producer_id);
        if let Some(entry) = entry {
            if epoch < entry.epoch {
                return Verdict::Fenced { current: entry.epoch };
            }
            if epoch == entry.epoch {
                if let Some(written) = entry.recent.iter().find(|w| w.first_seq == first && w.last_seq == last) {
                    return Verdict::Duplicate(*written);
                }
            }
        }
        if entry.is_none() && planted::on(Bug::ForgetProducersOnRestart) {
            // The forgetful table takes a producer it does not know for new.
            return Verdict::Append;
        }
        let same_epoch = entry.is_some_and(|e| e.epoch == epoch);
        let expected = match after {
            Some(seq) if same_epoch || entry.is_none() => seq.wrapping_add(1),
            _ => 0,
        };
        if first == expected {
            Verdict::Append
        } else {
            Verdict::OutOfOrder { expected }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{BatchBuilder, Record};

    fn header(producer_id: i64, epoch: i16, first: i32, records: usize) -> BatchHeader {
        let mut builder = BatchBuilder::new().producer(producer_id, epoch, first);
        for _ in 0..records {
            builder.push(&Record::default());
        }
        *builder.build().unwrap().header()
    }

    #[test]
    fn retries_are_duplicates_gaps_are_refused_old_epochs_fenced() {
        let mut table = ProducerTable::default();
        assert_eq!(table.verdict(7, 0, 0, 2, None), Verdict::Append);
        assert_eq!(table.verdict(7, 0, 1, 2, None), Verdict::OutOfOrder { expected: 0 });
        table.apply(&header(7, 0, 0, 3), 100);
        let last = table.get(7).unwrap().last_seq();
        assert_eq!(last, Some(2));
        assert_eq!(
            table.verdict(7, 0, 0, 2, last),
            Verdict::Duplicate(Written { first_seq: 0, last_seq: 2, base_offset: 100 })
        );
        assert_eq!(table.verdict(7, 0, 3, 3, last), Verdict::Append);
        assert_eq!(table.verdict(7, 0, 4, 4, last), Verdict::OutOfOrder { expected: 3 });
        // A newer epoch starts over at 0 and fences the old one.
        assert_eq!(table.verdict(7, 1, 0, 0, last), Verdict::Append);
        table.apply(&header(7, 1, 0, 1), 103);
        assert_eq!(table.verdict(7, 0, 3, 3, Some(0)), Verdict::Fenced { current: 1 });
        // Only the last few batches are remembered.
        for n in 1..=10 {
            table.apply(&header(7, 1, n, 1), 103 + n as u64);
        }
        assert_eq!(table.get(7).unwrap().recent.len(), RECENT_BATCHES);
        assert_eq!(table.verdict(7, 1, 1, 1, Some(10)), Verdict::OutOfOrder { expected: 11 });
        // Batches without a producer are not tracked.
        table.apply(&header(-1, -1, -1, 2), 200);
        assert!(table.get(-1).is_none());
    }
}
