//! Raft's control entries (a leader's blank entry, membership changes),
//! kept beside the partition log so they take no message offset.
//!
//! An append-only file of records, each `u32 len ++ u32 crc32c ++ JSON`.
//! Appends are fsynced with the log before an entry counts as written; a
//! crash can tear only the unsynced tail, which reading stops at. Truncation
//! and purging (both rare) rewrite the file atomically.
//!
//! A bad record with an intact record somewhere after it is no torn tail:
//! it was durable and was damaged at rest. Reading still stops there (the
//! Raft log must stay whole, so every entry after the lost one goes too),
//! and [`ControlDamage`] tells the log store, whose replica then abstains
//! until a leader has restored what was lost, as for a damaged segment.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::types::Control;
use crate::sys::disk::{replace_file, Disk};

const FILE: &str = "raft-control";
const RECORD_BYTES_MAX: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRecord {
    pub index: u64,
    pub term: u64,
    pub control: Control,
}

/// Damage found in the control file: a bad record before intact ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlDamage {
    /// Where the bad record starts.
    pub position: u64,
    /// The highest Raft index among the intact records after it: how far
    /// the file reached before.
    pub reached_index: u64,
}

/// The record that starts at `at`, if a whole and intact one does.
fn record_at(bytes: &[u8], at: usize) -> Option<(ControlRecord, usize)> {
    let header = bytes.get(at..at + 8)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > RECORD_BYTES_MAX || bytes.len() - at - 8 < len {
        return None;
    }
    let json = &bytes[at + 8..at + 8 + len];
    if crc32c::crc32c(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok().map(|record| (record, 8 + len))
}

/// Intact records anywhere after a bad one at `bad` (found by trying every
/// position, as the bad record's length cannot be trusted): damage, not a
/// torn tail.
fn damage_after(bytes: &[u8], bad: usize) -> Option<ControlDamage> {
    let reached = (bad + 1..bytes.len()).filter_map(|at| record_at(bytes, at)).map(|(r, _)| r.index).max()?;
    Some(ControlDamage { position: bad as u64, reached_index: reached })
}

#[derive(Debug)]
pub struct ControlFile {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// Bytes of whole records in the file.
    len: u64,
}

fn encode(records: &[ControlRecord]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for record in records {
        let json = serde_json::to_vec(record).map_err(|e| format!("encoding a control entry: {e}"))?;
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
        out.extend_from_slice(&json);
    }
    Ok(out)
}

impl ControlFile {
    /// Reads every whole record up to the first bad one, which is cut off
    /// with all after it: a torn tail, or damage if intact records follow.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path) -> Result<(Self, Vec<ControlRecord>, Option<ControlDamage>), String> {
        let path = dir.join(FILE);
        let io = |e: std::io::Error| format!("reading {}: {e}", path.display());
        let bytes = match disk.open(&path, false) {
            Ok(file) => {
                let len = file.len().map_err(io)?;
                let mut bytes = vec![0u8; len as usize];
                file.read_exact_at(0, &mut bytes).map_err(io)?;
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let mut records = Vec::new();
        let mut at = 0;
        while let Some((record, len)) = record_at(&bytes, at) {
            records.push(record);
            at += len;
        }
        let damage = damage_after(&bytes, at);
        let mut file = Self { disk, dir: dir.to_path_buf(), len: at as u64 };
        if at != bytes.len() {
            match &damage {
                Some(damage) => tracing::error!(
                    path = %path.display(),
                    position = damage.position,
                    reached_index = damage.reached_index,
                    "a damaged record in the Raft control file; cutting it and all after it"
                ),
                None => {
                    tracing::info!(path = %path.display(), cut = bytes.len() - at, "cutting a torn tail off the Raft control file")
                }
            }
            file.rewrite(&records)?;
        }
        Ok((file, records, damage))
    }

    /// Appends records durably.
    pub fn append(&mut self, records: &[ControlRecord]) -> Result<(), String> {
        if records.is_empty() {
            return Ok(());
        }
        let bytes = encode(records)?;
        let path = self.dir.join(FILE);
        let io = |e: std::io::Error| format!("appending to {}: {e}", path.display());
        let created = self.len == 0;
        let file = self.disk.open(&path, true).map_err(io)?;
        file.write_at(self.len, &bytes).map_err(io)?;
        file.sync().map_err(io)?;
        if created {
            self.disk.sync_dir(&self.dir).map_err(io)?;
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Replaces the file's records with `records`, atomically.
    pub fn rewrite(&mut self, records: &[ControlRecord]) -> Result<(), String> {
        let bytes = encode(records)?;
        replace_file(self.disk.as_ref(), &self.dir, FILE, &bytes)
            .map_err(|e| format!("rewriting {}: {e}", self.dir.join(FILE).display()))?;
        self.len = bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::disk::SimDisk;

    fn record(index: u64) -> ControlRecord {
        ControlRecord { index, term: index + 1, control: Control::Blank }
    }

    #[test]
    fn appended_records_survive_a_crash_and_a_torn_tail_is_cut() {
        let disk = SimDisk::new(3);
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        let dir = PathBuf::from("/p");
        shared.create_dir_all(&dir).unwrap();
        let (mut file, records, _) = ControlFile::open(shared.clone(), &dir).unwrap();
        assert!(records.is_empty());
        file.append(&[record(0), record(4)]).unwrap();
        file.append(&[record(9)]).unwrap();
        disk.crash(1);
        let (_, records, _) = ControlFile::open(shared.clone(), &dir).unwrap();
        assert_eq!(records, vec![record(0), record(4), record(9)]);

        // Garbage after the last whole record (a torn append) is cut off.
        let path = dir.join(FILE);
        let len = disk.file_len(&path).unwrap();
        let f = shared.open(&path, false).unwrap();
        f.write_at(len, &[7, 0, 0, 0, 1, 2, 3]).unwrap();
        f.sync().unwrap();
        let (mut file, records, damage) = ControlFile::open(shared.clone(), &dir).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(damage, None, "a torn tail is no damage");
        assert_eq!(disk.file_len(&path), Some(len));
        file.rewrite(&[record(4)]).unwrap();
        let (_, records, _) = ControlFile::open(shared, &dir).unwrap();
        assert_eq!(records, vec![record(4)]);
    }

    #[test]
    fn a_bit_flipped_before_intact_records_is_damage_and_cuts_everything_after_it() {
        let disk = SimDisk::new(3);
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        let dir = PathBuf::from("/p");
        shared.create_dir_all(&dir).unwrap();
        let (mut file, _, _) = ControlFile::open(shared.clone(), &dir).unwrap();
        file.append(&[record(0), record(4)]).unwrap();
        file.append(&[record(9)]).unwrap();
        let path = dir.join(FILE);
        let first = encode(&[record(0)]).unwrap().len() as u64;
        // Every byte of the second record, its length and CRC included.
        for position in first..first + encode(&[record(4)]).unwrap().len() as u64 {
            let copy = SimDisk::new(3);
            let copied: Arc<dyn Disk> = Arc::new(copy.clone());
            copied.create_dir_all(&dir).unwrap();
            let bytes = {
                let f = shared.open(&path, false).unwrap();
                let mut bytes = vec![0; f.len().unwrap() as usize];
                f.read_exact_at(0, &mut bytes).unwrap();
                bytes
            };
            replace_file(copied.as_ref(), &dir, FILE, &bytes).unwrap();
            copy.corrupt_byte(&path, position, 0x10).unwrap();
            let (_, records, damage) = ControlFile::open(copied.clone(), &dir).unwrap();
            assert_eq!(records, vec![record(0)], "flip at {position}");
            assert_eq!(damage, Some(ControlDamage { position: first, reached_index: 9 }), "flip at {position}");
            // The cut is written back: opening again finds a whole file.
            let (_, records, damage) = ControlFile::open(copied, &dir).unwrap();
            assert_eq!((records, damage), (vec![record(0)], None));
        }
    }
}
