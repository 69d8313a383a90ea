//! Small files a Raft group keeps beside its log (its vote, its snapshot,
//! a removed replica's record), each kept twice: `name` and `name.copy`.
//! Each copy is replaced atomically (written to a temporary file, fsynced,
//! renamed over the old one and the directory fsynced), the first before
//! the second, and each is `u32 crc32c ++ JSON`, so damage is detected.
//!
//! The vote is what Raft may never forget, so one damaged file must not
//! lose it: a copy damaged at rest is read from the other and rewritten.
//! Both copies hold the same value except after a crash between the two
//! replacements, when the first holds the new value and the second the
//! old; the caller had not acted on the new one yet (its save had not
//! returned), so either is safe, and the first wins while it is intact.
//! Both damaged is beyond the fault model: loading fails with an error
//! naming the files, and the replica stays closed for an operator.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sys::disk::{replace_file, Disk};

/// The second copy's name.
fn copy_name(name: &str) -> String {
    format!("{name}.copy")
}

fn encode<T: Serialize>(name: &str, value: &T) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(value).map_err(|e| format!("encoding {name}: {e}"))?;
    let mut bytes = crc32c::crc32c(&json).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    Ok(bytes)
}

/// Replaces both copies of `dir/name` with `value`, durably.
pub fn save<T: Serialize>(disk: &dyn Disk, dir: &Path, name: &str, value: &T) -> Result<(), String> {
    let bytes = encode(name, value)?;
    for name in [name.to_owned(), copy_name(name)] {
        replace_file(disk, dir, &name, &bytes).map_err(|e| format!("writing {}: {e}", dir.join(&name).display()))?;
    }
    Ok(())
}

/// What one copy holds.
enum Read {
    Missing,
    Damaged(String),
    Intact(Vec<u8>),
}

fn read(disk: &dyn Disk, path: &Path) -> Result<Read, String> {
    let file = match disk.open(path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    let io = |e: std::io::Error| format!("reading {}: {e}", path.display());
    let len = file.len().map_err(io)?;
    if !(4..=64 << 20).contains(&len) {
        return Ok(Read::Damaged(format!("{} is {len} bytes long", path.display())));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(0, &mut bytes).map_err(io)?;
    let stored = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[4..]) != stored {
        return Ok(Read::Damaged(format!("{} is damaged (CRC mismatch)", path.display())));
    }
    Ok(Read::Intact(bytes))
}

/// Reads `dir/name`; `None` if neither copy exists. A damaged or missing
/// copy beside an intact one is rewritten from it. Blocks on disk I/O.
pub fn load<T: DeserializeOwned>(disk: &dyn Disk, dir: &Path, name: &str) -> Result<Option<T>, String> {
    let copy = copy_name(name);
    let first = read(disk, &dir.join(name))?;
    let second = read(disk, &dir.join(&copy))?;
    let (bytes, heal) = match (first, second) {
        (Read::Missing, Read::Missing) => return Ok(None),
        (Read::Intact(bytes), Read::Intact(_)) => (bytes, None),
        (Read::Intact(bytes), second) => {
            if let Read::Damaged(why) = &second {
                tracing::error!(why, "a Raft state file's second copy is damaged; rewriting it from the first");
            }
            (bytes, Some(copy))
        }
        (first, Read::Intact(bytes)) => {
            if let Read::Damaged(why) = &first {
                tracing::error!(why, "a Raft state file is damaged; rewriting it from its second copy");
            }
            (bytes, Some(name.to_owned()))
        }
        (Read::Damaged(first), Read::Damaged(second)) => {
            return Err(format!("both copies are damaged: {first}; {second}"))
        }
        (Read::Damaged(why), Read::Missing) | (Read::Missing, Read::Damaged(why)) => {
            return Err(format!("{why}, and its other copy is missing"))
        }
    };
    let value =
        serde_json::from_slice(&bytes[4..]).map_err(|e| format!("decoding {}: {e}", dir.join(name).display()))?;
    if let Some(heal) = heal {
        replace_file(disk, dir, &heal, &bytes).map_err(|e| format!("writing {}: {e}", dir.join(&heal).display()))?;
    }
    Ok(Some(value))
}

/// Removes both copies of `dir/name` (the second first, so a crash between
/// leaves the first, still whole). Blocks on disk I/O.
pub fn remove(disk: &dyn Disk, dir: &Path, name: &str) -> Result<(), String> {
    for name in [copy_name(name), name.to_owned()] {
        let path = dir.join(&name);
        match disk.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing {}: {e}", path.display())),
        }
    }
    disk.sync_dir(dir).map_err(|e| format!("syncing {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::sys::disk::SimDisk;

    const NAME: &str = "raft-state";

    fn setup() -> (SimDisk, PathBuf) {
        let disk = SimDisk::new(1);
        let dir = PathBuf::from("/r");
        disk.create_dir_all(&dir).unwrap();
        (disk, dir)
    }

    #[test]
    fn either_copy_damaged_is_read_from_the_other_and_rewritten() {
        for damaged in [NAME.to_owned(), copy_name(NAME)] {
            let (disk, dir) = setup();
            save(&disk, &dir, NAME, &(7u64, "vote")).unwrap();
            disk.corrupt_byte(&dir.join(&damaged), 6, 0x01).unwrap();
            let loaded: Option<(u64, String)> = load(&disk, &dir, NAME).unwrap();
            assert_eq!(loaded, Some((7, "vote".to_owned())), "{damaged} damaged");
            // Healed: the other copy may now be damaged too.
            let other = if damaged == NAME { copy_name(NAME) } else { NAME.to_owned() };
            disk.corrupt_byte(&dir.join(&other), 6, 0x01).unwrap();
            let loaded: Option<(u64, String)> = load(&disk, &dir, NAME).unwrap();
            assert_eq!(loaded, Some((7, "vote".to_owned())), "{damaged} was rewritten");
        }
    }

    #[test]
    fn both_copies_damaged_is_an_error_naming_them() {
        let (disk, dir) = setup();
        save(&disk, &dir, NAME, &1u64).unwrap();
        disk.corrupt_byte(&dir.join(NAME), 4, 0x02).unwrap();
        disk.corrupt_byte(&dir.join(copy_name(NAME)), 4, 0x02).unwrap();
        let error = load::<u64>(&disk, &dir, NAME).unwrap_err();
        assert!(error.contains("both copies are damaged") && error.contains("raft-state.copy"), "{error}");
        // A damaged copy whose other copy is missing is an error too.
        disk.remove_file(&dir.join(copy_name(NAME))).unwrap();
        let error = load::<u64>(&disk, &dir, NAME).unwrap_err();
        assert!(error.contains("other copy is missing"), "{error}");
    }

    #[test]
    fn a_crash_between_the_copies_keeps_the_first_and_removal_leaves_nothing() {
        let (disk, dir) = setup();
        save(&disk, &dir, NAME, &1u64).unwrap();
        // The first copy replaced, the crash before the second.
        replace_file(&disk, &dir, NAME, &encode(NAME, &2u64).unwrap()).unwrap();
        disk.crash(9);
        assert_eq!(load::<u64>(&disk, &dir, NAME).unwrap(), Some(2));
        // A file written before there were copies is read alone.
        disk.remove_file(&dir.join(copy_name(NAME))).unwrap();
        assert_eq!(load::<u64>(&disk, &dir, NAME).unwrap(), Some(2));
        remove(&disk, &dir, NAME).unwrap();
        assert_eq!(load::<u64>(&disk, &dir, NAME).unwrap(), None);
    }
}
