//! Opening a log directory after a clean shutdown or a crash.
//!
//! Trust what the checkpoint vouches for (segments below the recovery point,
//! and the last segment's indexes after a clean close), scan and CRC-check
//! everything else, cut a torn or corrupt tail, drop whatever lies beyond a
//! cut, and rebuild any index that cannot be trusted. Bad bytes are reported
//! in the [`RecoveryReport`], never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::checkpoint::{Checkpoint, CHECKPOINT_TMP_FILE};
use super::config::LogConfig;
use super::error::{LogError, LogResult};
use super::segment::{Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use crate::sys::disk::Disk;

/// What recovery found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The checkpoint said the log was closed cleanly.
    pub clean: bool,
    /// Why an existing checkpoint was not used.
    pub checkpoint_ignored: Option<String>,
    pub segments_trusted: usize,
    pub segments_scanned: usize,
    pub batches_scanned: u64,
    /// Where the log was cut, and why.
    pub cut: Option<(PathBuf, u64, String)>,
    pub bytes_cut: u64,
    /// Segments deleted because they lay beyond a cut or below the log start.
    pub segments_dropped: usize,
    /// The cut removed data that had been durable: damage at rest, not a
    /// torn tail. Set when the bad batch lay in a sealed segment (fsynced
    /// before the next one began) or in a log closed cleanly, or when the
    /// log now ends below its durable-end mark ([`super::durable_mark`]);
    /// with a lagging mark (version 1, or none), also when intact batches
    /// followed the bad one. A bad batch past an exact mark was never
    /// durable: a torn or lost write, not reported here.
    pub damage: Option<Damage>,
    /// The durable-end mark recovery found (0: none).
    pub durable_mark: u64,
    /// Why an existing durable-end mark was not used.
    pub durable_mark_ignored: Option<String>,
    /// The directory held no log yet: nothing was recovered.
    pub fresh: bool,
}

/// Durable data that recovery had to cut away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The first offset lost: the log now ends here.
    pub offset: u64,
    pub reason: String,
    /// The largest Raft index among the intact batches cut away with the
    /// damaged one: how far the log reached before.
    pub raft_index_lost: Option<u64>,
    /// How far the log reached before, where the next segment's name says
    /// so: every offset in `[offset, reached_offset)` was lost.
    pub reached_offset: Option<u64>,
}

impl Damage {
    /// How many offsets were lost, where known: `[offset, reached_offset)`.
    pub fn offsets_lost(&self) -> Option<u64> {
        self.reached_offset.map(|reached| reached.saturating_sub(self.offset))
    }
}

pub(super) struct Recovered {
    pub segments: BTreeMap<u64, Segment>,
    pub log_start_offset: u64,
    pub report: RecoveryReport,
}

fn segment_bases(disk: &dyn Disk, dir: &Path) -> LogResult<Vec<u64>> {
    let names = disk.list_dir(dir).map_err(|e| LogError::io(dir, e))?;
    let mut bases = Vec::new();
    for name in &names {
        let path = dir.join(name);
        if name.ends_with(".tmp") || name == CHECKPOINT_TMP_FILE {
            disk.remove_file(&path).map_err(|e| LogError::io(&path, e))?;
            continue;
        }
        let index_of = |suffix: &str| name.strip_suffix(suffix).and_then(|stem| stem.parse::<u64>().ok());
        if let Some(base) = index_of(LOG_SUFFIX) {
            bases.push(base);
        } else if let Some(base) = index_of(INDEX_SUFFIX).or_else(|| index_of(TIME_INDEX_SUFFIX)) {
            // An index whose segment is gone (a crash during deletion).
            if !names.contains(&format!("{}{LOG_SUFFIX}", super::segment::file_stem(base))) {
                disk.remove_file(&path).map_err(|e| LogError::io(&path, e))?;
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Recovers the log in `dir` (which the caller has created). With `trust_checkpoint` false every segment is
/// scanned, whatever the checkpoint vouches for (after a read met damage in a
/// segment recovery had trusted). `durable_mark`: every offset below it had
/// been durable ([`super::durable_mark`]); a log that ends below it lost
/// data, which the report names as damage. `exact_mark`: nothing past the
/// mark was ever durable, so a bad batch there is a torn or lost write even
/// with intact batches after it (writes between fsyncs land in any order);
/// with a lagging mark (or none) such a batch is damage.
pub(super) fn recover(
    disk: &dyn Disk,
    dir: &Path,
    config: &LogConfig,
    now_ms: i64,
    trust_checkpoint: bool,
    durable_mark: u64,
    exact_mark: bool,
) -> LogResult<Recovered> {
    let mut recovered =
        recover_segments(disk, dir, config, now_ms, trust_checkpoint, exact_mark.then_some(durable_mark))?;
    recovered.report.durable_mark = durable_mark;
    let end = recovered.segments.values().next_back().expect("at least one segment").next_offset();
    if end < durable_mark {
        let lost = format!("the log ends at {end}, below its durable-end mark {durable_mark}");
        match recovered.report.damage.as_mut() {
            Some(damage) => damage.reached_offset = damage.reached_offset.max(Some(durable_mark)),
            None => {
                let reason = match &recovered.report.cut {
                    Some((file, position, reason)) => {
                        format!("{lost}: {} cut at byte {position}: {reason}", file.display())
                    }
                    None => lost,
                };
                recovered.report.damage =
                    Some(Damage { offset: end, reason, raft_index_lost: None, reached_offset: Some(durable_mark) });
            }
        }
    }
    Ok(recovered)
}

fn recover_segments(
    disk: &dyn Disk,
    dir: &Path,
    config: &LogConfig,
    now_ms: i64,
    trust_checkpoint: bool,
    exact_mark: Option<u64>,
) -> LogResult<Recovered> {
    let mut report = RecoveryReport::default();
    let checkpoint = match Checkpoint::read(disk, dir)? {
        Ok(checkpoint) => checkpoint,
        Err(reason) => {
            report.checkpoint_ignored = Some(reason);
            None
        }
    };
    let had_checkpoint = checkpoint.is_some() || report.checkpoint_ignored.is_some();
    let checkpoint = checkpoint.unwrap_or(Checkpoint { log_start_offset: 0, recovery_point: 0, clean: false });
    report.clean = checkpoint.clean;

    let mut bases = segment_bases(disk, dir)?;
    // Whole segments below the log start: retention deleted them, the crash
    // came before the directory was synced.
    while bases.len() > 1 && bases[1] <= checkpoint.log_start_offset {
        Segment::remove_files(disk, dir, bases.remove(0))?;
        report.segments_dropped += 1;
    }

    let mut segments = BTreeMap::new();
    if bases.is_empty() {
        report.fresh = !had_checkpoint;
        let segment = Segment::open(disk, dir, checkpoint.log_start_offset, config, now_ms, true)?;
        segments.insert(segment.base_offset(), segment);
        disk.sync_dir(dir).map_err(|e| LogError::io(dir, e))?;
        return Ok(Recovered { segments, log_start_offset: checkpoint.log_start_offset, report });
    }

    let mut dropped_from = None;
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        let mut segment = Segment::open(disk, dir, base, config, now_ms, false)?;
        let trusted = trust_checkpoint
            && match next_base {
                Some(next_base) => next_base <= checkpoint.recovery_point,
                None => checkpoint.clean && base <= checkpoint.recovery_point,
            };
        let loaded = if trusted { segment.load_trusted(next_base)? } else { None };
        let scanned = loaded.is_none();
        let outcome = match loaded {
            Some(outcome) => {
                report.segments_trusted += 1;
                outcome
            }
            None => {
                report.segments_scanned += 1;
                segment.scan()?
            }
        };
        report.batches_scanned += outcome.batches;
        report.bytes_cut += outcome.bytes_cut;
        if let Some((position, reason)) = outcome.cut.clone() {
            // Sealed segments and a cleanly closed log were durable whole.
            let durable = next_base.is_some() || checkpoint.clean;
            // Intact batches after a bad one show it was damaged at rest,
            // unless writes may have landed out of order: past an exact
            // mark. (Below it every cut is a loss, which `recover` reports
            // in any case; here it also learns the Raft index reached.)
            let reordered = exact_mark.is_some_and(|mark| segment.next_offset() >= mark);
            if durable || (outcome.intact_after_cut && !reordered) {
                report.damage = Some(Damage {
                    offset: segment.next_offset(),
                    reason: format!("{}: {reason}", segment.path().display()),
                    raft_index_lost: outcome.raft_index_after_cut,
                    // The last segment of a cleanly closed log ended where
                    // the checkpoint says.
                    reached_offset: next_base.or(checkpoint.clean.then_some(checkpoint.recovery_point)),
                });
            }
            report.cut = Some((segment.path().to_path_buf(), position, reason));
        }
        let broken = match next_base {
            Some(next_base) if segment.next_offset() != next_base => {
                let reason = format!("segment ends at {} but the next starts at {next_base}", segment.next_offset());
                if report.cut.is_none() {
                    report.cut = Some((segment.path().to_path_buf(), segment.size(), reason.clone()));
                }
                if report.damage.is_none() {
                    let reason = format!("{}: {reason}", segment.path().display());
                    report.damage = Some(Damage {
                        offset: segment.next_offset(),
                        reason,
                        raft_index_lost: None,
                        reached_offset: Some(next_base),
                    });
                }
                true
            }
            _ => false,
        };
        if scanned && next_base.is_some() && !broken {
            // A scanned segment below the active one is sealed now, so the
            // next recovery may trust it.
            segment.seal()?;
        }
        segments.insert(base, segment);
        if broken {
            dropped_from = Some(i + 1);
            break;
        }
    }
    if let Some(from) = dropped_from {
        for &base in &bases[from..] {
            // What the dropped segments held tells how far the log reached.
            if let Some(damage) = report.damage.as_mut() {
                if let Ok(segment) = Segment::open(disk, dir, base, config, now_ms, false) {
                    damage.raft_index_lost = damage.raft_index_lost.max(segment.raft_index_in_file()?);
                }
            }
            Segment::remove_files(disk, dir, base)?;
            report.segments_dropped += 1;
        }
        disk.sync_dir(dir).map_err(|e| LogError::io(dir, e))?;
    }

    let first = *segments.keys().next().expect("at least one segment");
    let log_start_offset = checkpoint.log_start_offset.max(first);
    let last = segments.values_mut().next_back().expect("at least one segment");
    last.unseal();
    let log_start_offset = log_start_offset.min(last.next_offset());
    Ok(Recovered { segments, log_start_offset, report })
}
