//! The durable-end mark: how far the log had been made durable, kept so
//! that recovery can tell a torn tail from lost data.
//!
//! A crash may tear the last write, so recovery cuts a bad last batch as a
//! torn write that was never acknowledged. But the same bytes may have been
//! fsynced and acknowledged long before, then damaged at rest (a file cut
//! short, a sector gone). The mark tells them apart: every offset below it
//! was durable once, so a log that recovers to an end below the mark lost
//! data, whatever the bytes look like.
//!
//! The mark is exact: every flush of the log raises it before it returns
//! ([`crate::log::PartitionLog::flush`]), so nothing the log acknowledged
//! as durable lies past it. One small write and fsync more per flush buys
//! two things. Damage anywhere below the mark is known for damage, however
//! the bytes look. And anything past the mark was never durable, so a bad
//! batch there is cut as a torn write even with intact batches after it:
//! writes between two fsyncs reach the disk in any order, and a crash may
//! keep a later batch and lose an earlier one.
//!
//! Version 1 marks lagged the log (raised about once a second): a log
//! whose mark is of version 1, or has none, is recovered as they were (a
//! bad batch with intact batches after it is damage, see
//! [`super::recovery`]) until its first flush writes a version 2 slot.
//!
//! ```text
//! two slots of 32 bytes, at 0 and 32:
//! 0 u32 magic "WDUR"  4 u8 version (1: lagging, 2: exact)
//! 5 [u8; 3] reserved  8 u64 sequence  16 u64 end
//! 24 u32 crc32c of [0..24)  28 u32 reserved
//! ```
//!
//! Written in place, one slot at a time, each write fsynced. The newest
//! valid slot (highest sequence) is the mark. Raising writes the older
//! slot, so a torn write leaves the newer one, which claims less: still
//! true. Lowering (before a truncation) writes both, one after the other,
//! so no crash can leave a valid slot claiming more than the log keeps.
//!
//! To ensure correctness a caller must: raise the mark only to an offset
//! already fsynced, and lower it, durably, before anything shortens the log.

use std::path::{Path, PathBuf};

use super::error::{LogError, LogResult};
use crate::sys::disk::{Disk, DiskFile};

pub const DURABLE_MARK_FILE: &str = "durable-end";
const MAGIC: u32 = u32::from_le_bytes(*b"WDUR");
/// The version written: the mark is raised at every flush.
const VERSION: u8 = 2;
/// The version of marks raised now and then, read still.
const VERSION_LAGGING: u8 = 1;
const SLOT_BYTES: usize = 32;
const SLOTS: usize = 2;
const FILE_BYTES: usize = SLOT_BYTES * SLOTS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    sequence: u64,
    end: u64,
    /// Written at every flush (version 2), not now and then (version 1).
    exact: bool,
}

impl Slot {
    fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut out = [0u8; SLOT_BYTES];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = if self.exact { VERSION } else { VERSION_LAGGING };
        out[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        out[16..24].copy_from_slice(&self.end.to_le_bytes());
        let crc = crc32c::crc32c(&out[..24]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` for a slot never written, torn or damaged.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; SLOT_BYTES] = bytes.try_into().ok()?;
        let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
        let version = bytes[4];
        if crc32c::crc32c(&bytes[..24]) != crc
            || bytes[0..4] != MAGIC.to_le_bytes()
            || (version != VERSION && version != VERSION_LAGGING)
        {
            return None;
        }
        Some(Slot {
            sequence: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            end: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            exact: version == VERSION,
        })
    }
}

/// A partition log's durable-end mark (see the module docs).
#[derive(Debug)]
pub struct DurableMark {
    path: PathBuf,
    dir: PathBuf,
    /// Opened on the first write when the file did not exist.
    file: Option<Box<dyn DiskFile>>,
    /// The newest valid slot and its index; `None` when there is none.
    newest: Option<(usize, Slot)>,
    /// Why an existing file was not used.
    ignored: Option<String>,
    /// Slots written once that do not decode (damaged, or torn by a crash
    /// while being written): the newest valid slot may then claim less than
    /// was flushed, so the mark is not exact until every slot is good.
    damaged: [bool; SLOTS],
}

impl DurableMark {
    /// Reads the mark in `dir`. A missing file, or one with no valid slot,
    /// claims nothing (the mark is 0); the latter says why in
    /// [`DurableMark::ignored`].
    pub fn open(disk: &dyn Disk, dir: &Path) -> LogResult<Self> {
        let path = dir.join(DURABLE_MARK_FILE);
        let mut mark = Self {
            path: path.clone(),
            dir: dir.to_path_buf(),
            file: None,
            newest: None,
            ignored: None,
            damaged: [false; SLOTS],
        };
        let file = match disk.open(&path, false) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(mark),
            Err(e) => return Err(LogError::io(&path, e)),
        };
        let len = file.len().map_err(|e| LogError::io(&path, e))?;
        let mut bytes = vec![0u8; (len as usize).min(FILE_BYTES)];
        file.read_exact_at(0, &mut bytes).map_err(|e| LogError::io(&path, e))?;
        mark.newest = bytes
            .chunks(SLOT_BYTES)
            .enumerate()
            .filter_map(|(i, bytes)| Slot::decode(bytes).map(|slot| (i, slot)))
            .max_by_key(|(_, slot)| slot.sequence);
        for (damaged, slot) in mark.damaged.iter_mut().zip(bytes.chunks(SLOT_BYTES)) {
            *damaged = slot.iter().any(|&b| b != 0) && Slot::decode(slot).is_none();
        }
        if mark.newest.is_none() {
            mark.ignored = Some(format!("{} holds no valid slot ({len} bytes)", path.display()));
        }
        mark.file = Some(file);
        Ok(mark)
    }

    /// Every offset below this was durable when the mark was written.
    pub fn end(&self) -> u64 {
        self.newest.map_or(0, |(_, slot)| slot.end)
    }

    /// Whether the mark is exact: raised at every flush, so that nothing
    /// past it was ever acknowledged (see the module docs).
    pub fn exact(&self) -> bool {
        !self.damaged.contains(&true) && self.newest.is_some_and(|(_, slot)| slot.exact)
    }

    /// Why the file on disk was not used, if it was not.
    pub fn ignored(&self) -> Option<&str> {
        self.ignored.as_deref()
    }

    /// Moves the mark to `end` (which must be durable in the log, and its
    /// end), raising or lowering it as needed, and makes it exact: a
    /// missing or lagging mark is written even if it says `end` already.
    pub fn set(&mut self, disk: &dyn Disk, end: u64) -> LogResult<()> {
        match end.cmp(&self.end()) {
            std::cmp::Ordering::Greater => self.raise(disk, end),
            std::cmp::Ordering::Less => self.lower(disk, end),
            std::cmp::Ordering::Equal if self.exact() => Ok(()),
            std::cmp::Ordering::Equal => self.raise(disk, end),
        }
    }

    /// Raises the mark to `end`, which must be durable in the log: one slot
    /// written (the older one) and fsynced.
    pub fn raise(&mut self, disk: &dyn Disk, end: u64) -> LogResult<()> {
        assert!(end >= self.end(), "raising the durable mark from {} to {end}", self.end());
        let slot = self.newest.map_or(0, |(i, _)| (i + 1) % SLOTS);
        self.write_slot(disk, slot, end)
    }

    /// Lowers the mark to `end`, durably: both slots are written, each
    /// fsynced, so no crash leaves a slot claiming more.
    pub fn lower(&mut self, disk: &dyn Disk, end: u64) -> LogResult<()> {
        let first = self.newest.map_or(0, |(i, _)| (i + 1) % SLOTS);
        self.write_slot(disk, first, end)?;
        self.write_slot(disk, (first + 1) % SLOTS, end)
    }

    fn write_slot(&mut self, disk: &dyn Disk, index: usize, end: u64) -> LogResult<()> {
        let io = |e| LogError::io(&self.path, e);
        if self.file.is_none() {
            let file = disk.open(&self.path, true).map_err(io)?;
            // The file's name must survive a crash before a slot in it can
            // be trusted to.
            file.sync().map_err(io)?;
            disk.sync_dir(&self.dir).map_err(|e| LogError::io(&self.dir, e))?;
            self.file = Some(file);
        }
        let sequence = self.newest.map_or(1, |(_, slot)| slot.sequence + 1);
        let slot = Slot { sequence, end, exact: true };
        let file = self.file.as_ref().expect("opened above");
        file.write_at((index * SLOT_BYTES) as u64, &slot.encode()).map_err(io)?;
        file.sync().map_err(io)?;
        self.damaged[index] = false;
        self.newest = Some((index, slot));
        self.ignored = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::disk::SimDisk;

    const DIR: &str = "/data/t-0";

    fn reopened(disk: &SimDisk) -> DurableMark {
        DurableMark::open(disk, Path::new(DIR)).unwrap()
    }

    #[test]
    fn slots_round_trip_and_reject_damage() {
        let slot = Slot { sequence: 9, end: 1234, exact: true };
        let bytes = slot.encode();
        assert_eq!(Slot::decode(&bytes), Some(slot));
        let lagging = Slot { exact: false, ..slot };
        assert_eq!(Slot::decode(&lagging.encode()), Some(lagging), "version 1 slots are still read");
        for i in 0..28 {
            let mut damaged = bytes;
            damaged[i] ^= 0x04;
            assert_eq!(Slot::decode(&damaged), None, "a flip at byte {i} went unnoticed");
        }
        assert_eq!(Slot::decode(&[0u8; SLOT_BYTES]), None, "a slot never written is not valid");
    }

    #[test]
    fn a_lagging_mark_is_not_exact_until_raised() {
        let disk = SimDisk::new(2);
        disk.create_dir_all(Path::new(DIR)).unwrap();
        let file = disk.open(&Path::new(DIR).join(DURABLE_MARK_FILE), true).unwrap();
        file.write_at(0, &Slot { sequence: 4, end: 70, exact: false }.encode()).unwrap();
        file.sync().unwrap();
        disk.sync_dir(Path::new(DIR)).unwrap();
        let mut mark = reopened(&disk);
        assert_eq!((mark.end(), mark.exact()), (70, false), "a version 1 mark lags");
        mark.raise(&disk, 90).unwrap();
        let mark = reopened(&disk);
        assert_eq!((mark.end(), mark.exact()), (90, true), "raised, it is exact");
        assert!(!reopened(&SimDisk::new(3)).exact(), "no mark is not exact");
    }

    #[test]
    fn a_damaged_slot_makes_the_mark_inexact_until_it_is_rewritten() {
        let disk = SimDisk::new(4);
        disk.create_dir_all(Path::new(DIR)).unwrap();
        let mut mark = reopened(&disk);
        mark.set(&disk, 10).unwrap();
        mark.set(&disk, 20).unwrap();
        assert!(reopened(&disk).exact());
        // The newest slot (20, in slot 1) rots: slot 0 says 10, less than
        // was flushed, so past 10 is not known never durable.
        disk.corrupt_byte(&Path::new(DIR).join(DURABLE_MARK_FILE), (SLOT_BYTES + 17) as u64, 0x08).unwrap();
        let mut mark = reopened(&disk);
        assert_eq!((mark.end(), mark.exact()), (10, false));
        mark.raise(&disk, 30).unwrap();
        assert!(mark.exact(), "the damaged slot was the one rewritten");
        assert_eq!((reopened(&disk).end(), reopened(&disk).exact()), (30, true));
    }

    #[test]
    fn a_missing_file_claims_nothing_and_the_first_write_survives_a_crash() {
        let disk = SimDisk::new(1);
        disk.create_dir_all(Path::new(DIR)).unwrap();
        let mut mark = reopened(&disk);
        assert_eq!((mark.end(), mark.ignored()), (0, None));
        mark.set(&disk, 40).unwrap();
        disk.crash(3);
        assert_eq!(reopened(&disk).end(), 40);
    }

    /// Writes `end` into slot `index` as the next write would, and does
    /// not fsync it: a crash keeps none, part or all of it.
    fn write_unsynced(disk: &SimDisk, mark: &DurableMark, index: usize, end: u64) {
        let sequence = mark.newest.map_or(1, |(_, slot)| slot.sequence + 1);
        let file = disk.open(&Path::new(DIR).join(DURABLE_MARK_FILE), false).unwrap();
        file.write_at((index * SLOT_BYTES) as u64, &Slot { sequence, end, exact: true }.encode()).unwrap();
    }

    /// Whatever a crash does to the write in flight, the mark read back is
    /// the old value or the new one when raising, and never more than the
    /// old value when lowering.
    #[test]
    fn a_crash_mid_write_never_leaves_a_mark_above_the_truth() {
        let mut torn = 0;
        for seed in 0..100 {
            let disk = SimDisk::new(seed);
            disk.create_dir_all(Path::new(DIR)).unwrap();
            let mut mark = reopened(&disk);
            mark.raise(&disk, 100).unwrap();
            mark.raise(&disk, 200).unwrap();
            let older = mark.newest.map(|(i, _)| (i + 1) % SLOTS).unwrap();
            write_unsynced(&disk, &mark, older, 300);
            disk.crash(seed);
            let mut mark = reopened(&disk);
            assert!(mark.end() == 200 || mark.end() == 300, "seed {seed}: a raise left {}", mark.end());
            torn += usize::from(mark.end() == 200);

            // Lowering: a crash during either of its two writes.
            mark.lower(&disk, 50).unwrap();
            let first = mark.newest.map(|(i, _)| (i + 1) % SLOTS).unwrap();
            write_unsynced(&disk, &mark, first, 10);
            disk.crash(seed + 1000);
            let mut mark = reopened(&disk);
            assert!(mark.end() == 50 || mark.end() == 10, "seed {seed}: a lower left {}", mark.end());
            let first = mark.newest.map(|(i, _)| (i + 1) % SLOTS).unwrap();
            mark.write_slot(&disk, first, 5).unwrap();
            write_unsynced(&disk, &mark, (first + 1) % SLOTS, 5);
            disk.crash(seed + 2000);
            assert_eq!(reopened(&disk).end(), 5, "seed {seed}: the first write of a lower was durable");
        }
        assert!(torn > 0, "some crash lost or tore the raise in flight");
    }

    #[test]
    fn a_file_with_no_valid_slot_is_ignored_and_says_why() {
        let disk = SimDisk::new(2);
        disk.create_dir_all(Path::new(DIR)).unwrap();
        let mut mark = reopened(&disk);
        mark.lower(&disk, 70).unwrap();
        let path = Path::new(DIR).join(DURABLE_MARK_FILE);
        disk.corrupt_byte(&path, 17, 0x01).unwrap();
        disk.corrupt_byte(&path, (SLOT_BYTES + 17) as u64, 0x01).unwrap();
        let mark = reopened(&disk);
        assert_eq!(mark.end(), 0);
        assert!(mark.ignored().is_some_and(|why| why.contains("no valid slot")), "{:?}", mark.ignored());
    }
}
