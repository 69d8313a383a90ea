//! What a replica removed from its group leaves behind: the last vote it
//! cast and the last entry its log held.
//!
//! Raft keeps a removed voter harmless because the voter never forgets:
//! its term stops it voting twice in one term, and its log stops it voting
//! for a candidate that lacks entries it acknowledged. A broker deletes a
//! replica moved away from it, and a later move can bring the partition
//! back to the same broker, under the same node id, with an empty log.
//! Without a record of its past, that replica is a voter that forgot:
//! it voted in an old term again and for a stale log (sweep seed 7743: a
//! replica kept from a configuration three moves old was elected with the
//! vote of such a new, empty replica, in a term above the real leader's,
//! and truncated 1,240 committed entries from a follower).
//!
//! So a replica's directory is deleted only after this record is durable,
//! beside it (`<partition>.retired` in the topic's directory). A replica
//! that opens where one lies takes the vote over and abstains from
//! elections, as a damaged replica does, until a leader has brought its
//! log past the old last entry (see [`super::log_store::LogStore::open`]).
//! A broker whose whole disk was replaced has nothing to read this from;
//! that is outside the fault model.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state_file;
use super::types::{LogId, Vote};
use crate::sys::disk::Disk;

/// The record a removed replica leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// The last vote the replica cast (or took from a leader).
    pub vote: Option<Vote>,
    /// The last entry the replica's log held, or may have held (what an
    /// unfinished repair was waiting for).
    pub last_log_id: Option<LogId>,
}

/// Where the record of the replica in `dir` lies: beside `dir`, in its parent.
fn place(dir: &Path) -> Result<(PathBuf, String), String> {
    let parent = dir.parent().ok_or_else(|| format!("{} has no parent directory", dir.display()))?;
    let name = dir.file_name().ok_or_else(|| format!("{} has no name", dir.display()))?;
    Ok((parent.to_path_buf(), format!("{}.retired", name.to_string_lossy())))
}

/// Writes the record of the replica in `dir`, durably (before `dir` is
/// deleted). Blocks on disk I/O.
pub fn save(disk: &dyn Disk, dir: &Path, retired: &Retired) -> Result<(), String> {
    let (parent, name) = place(dir)?;
    state_file::save(disk, &parent, &name, retired)
}

/// The record a replica once in `dir` left, if any. Blocks on disk I/O.
pub fn load(disk: &dyn Disk, dir: &Path) -> Result<Option<Retired>, String> {
    let (parent, name) = place(dir)?;
    state_file::load(disk, &parent, &name)
}

/// Removes the record once the replica in `dir` has taken it over.
/// Blocks on disk I/O.
pub fn discard(disk: &dyn Disk, dir: &Path) -> Result<(), String> {
    let (parent, name) = place(dir)?;
    state_file::remove(disk, &parent, &name)
}
