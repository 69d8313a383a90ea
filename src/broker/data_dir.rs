//! One data directory, one broker.
//!
//! Two brokers on one data directory would open the same partition logs and
//! vote files and each overwrite what the other made durable, so a broker
//! claims its directory before it opens anything in it:
//!
//! - `lock`: an exclusive lock held for the broker's life (released by the
//!   kernel when the process dies), holding the owner's pid and broker id;
//! - `broker.toml`: the broker id and cluster the directory belongs to,
//!   written on first start. A broker configured with another id or
//!   cluster is refused, naming both: its replicas' Raft state (votes,
//!   logs) belongs to the id that wrote it.

use std::io;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::{BrokerError, BrokerResult, ErrorCode};
use crate::sys::disk::{self, Disk, DiskLock};

pub const LOCK_FILE: &str = "lock";
pub const IDENTITY_FILE: &str = "broker.toml";
/// The identity file's format; a newer one is refused rather than misread.
const IDENTITY_VERSION: u32 = 1;

/// What `broker.toml` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    version: u32,
    broker_id: u64,
    cluster: String,
}

/// A data directory claimed by this broker: the lock is held for as long
/// as this lives.
#[derive(Debug)]
pub struct DataDirClaim {
    _lock: Box<dyn DiskLock>,
}

impl DataDirClaim {
    /// Locks `dir` and checks (or, on a new directory, records) that it is
    /// broker `broker_id`'s of cluster `cluster`.
    pub fn claim(disk: &Arc<dyn Disk>, dir: &Path, broker_id: u64, cluster: &str) -> BrokerResult<Self> {
        let failed = |what: &str, e: io::Error| {
            BrokerError::new(ErrorCode::StorageFailed, format!("data directory {}: {what}: {e}", dir.display()))
        };
        disk.create_dir_all(dir).map_err(|e| failed("cannot create it", e))?;
        let lock_path = dir.join(LOCK_FILE);
        let owner = format!("pid {} broker {broker_id}", crate::sys::process::pid());
        let lock = match disk.lock_file(&lock_path, &owner) {
            Ok(lock) => lock,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let holder = disk::lock_owner(disk.as_ref(), &lock_path).unwrap_or_else(|| "another process".into());
                return Err(BrokerError::new(
                    ErrorCode::StorageFailed,
                    format!(
                        "data directory {} is in use by {holder} (it holds {}); one data directory serves one broker",
                        dir.display(),
                        lock_path.display()
                    ),
                ));
            }
            Err(e) => return Err(failed("cannot lock it", e)),
        };
        let wanted = Identity { version: IDENTITY_VERSION, broker_id, cluster: cluster.to_owned() };
        match read_identity(disk.as_ref(), dir)? {
            Some(found) => check(dir, &found, &wanted)?,
            None => {
                let text = toml::to_string(&wanted).expect("an identity serializes");
                disk::replace_file(disk.as_ref(), dir, IDENTITY_FILE, text.as_bytes())
                    .map_err(|e| failed("cannot record the broker id", e))?;
            }
        }
        Ok(Self { _lock: lock })
    }
}

fn read_identity(disk: &dyn Disk, dir: &Path) -> BrokerResult<Option<Identity>> {
    let path = dir.join(IDENTITY_FILE);
    let unreadable = |why: String| BrokerError::new(ErrorCode::CorruptData, format!("{}: {why}", path.display()));
    // The disk failing to read is not damage: the next start may read it.
    let failed = |e: io::Error| BrokerError::new(ErrorCode::StorageFailed, format!("{}: {e}", path.display()));
    let file = match disk.open(&path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let len = file.len().map_err(failed)?;
    let mut bytes = vec![0; usize::try_from(len).unwrap_or(0).min(64 << 10)];
    file.read_exact_at(0, &mut bytes).map_err(failed)?;
    let text = String::from_utf8(bytes).map_err(|e| unreadable(e.to_string()))?;
    toml::from_str(&text).map(Some).map_err(|e| unreadable(e.to_string()))
}

fn check(dir: &Path, found: &Identity, wanted: &Identity) -> BrokerResult<()> {
    let refuse = |message: String| Err(BrokerError::new(ErrorCode::InvalidRequest, message));
    if found.version > IDENTITY_VERSION {
        return refuse(format!(
            "data directory {} was written by a newer weir (identity version {}, this one reads {IDENTITY_VERSION})",
            dir.display(),
            found.version
        ));
    }
    if found.broker_id != wanted.broker_id {
        return refuse(format!(
            "data directory {} belongs to broker {}, but this broker is configured as broker {}; \
             give it its own data_dir or its own broker_id back",
            dir.display(),
            found.broker_id,
            wanted.broker_id
        ));
    }
    if found.cluster != wanted.cluster {
        return refuse(format!(
            "data directory {} belongs to cluster {:?}, but this broker is configured for cluster {:?}",
            dir.display(),
            found.cluster,
            wanted.cluster
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::disk::SimDisk;

    fn disk() -> (SimDisk, Arc<dyn Disk>) {
        let sim = SimDisk::new(1);
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        (sim, disk)
    }

    #[test]
    fn a_second_claim_is_refused_while_the_first_lives() {
        let (_, disk) = disk();
        let dir = Path::new("/data");
        let first = DataDirClaim::claim(&disk, dir, 1, "weir").unwrap();
        let error = DataDirClaim::claim(&disk, dir, 2, "weir").unwrap_err();
        assert!(error.message.contains("in use by pid"), "{error}");
        assert!(error.message.contains("broker 1"), "{error}");
        drop(first);
        let error = DataDirClaim::claim(&disk, dir, 2, "weir").unwrap_err();
        assert!(error.message.contains("belongs to broker 1") && error.message.contains("as broker 2"), "{error}");
        DataDirClaim::claim(&disk, dir, 1, "weir").expect("its own broker claims it again");
    }

    #[test]
    fn the_identity_survives_a_crash_and_a_crash_releases_the_lock() {
        let (sim, disk) = disk();
        let dir = Path::new("/data");
        let claim = DataDirClaim::claim(&disk, dir, 3, "east").unwrap();
        sim.crash(7);
        let error = DataDirClaim::claim(&disk, dir, 3, "west").unwrap_err();
        assert!(error.message.contains("cluster \"east\"") && error.message.contains("\"west\""), "{error}");
        let error = DataDirClaim::claim(&disk, dir, 4, "east").unwrap_err();
        assert!(error.message.contains("belongs to broker 3"), "{error}");
        let second = DataDirClaim::claim(&disk, dir, 3, "east").expect("claimed after the crash");
        drop(claim); // the dead process's guard: it must not release the new holder's lock
        assert!(DataDirClaim::claim(&disk, dir, 3, "east").is_err(), "the new claim still holds the lock");
        drop(second);
    }

    #[test]
    fn an_identity_from_a_newer_weir_is_refused() {
        let (_, disk) = disk();
        let dir = Path::new("/data");
        disk.create_dir_all(dir).unwrap();
        let text = "version = 9\nbroker_id = 1\ncluster = \"weir\"\n";
        disk::replace_file(disk.as_ref(), dir, IDENTITY_FILE, text.as_bytes()).unwrap();
        let error = DataDirClaim::claim(&disk, dir, 1, "weir").unwrap_err();
        assert!(error.message.contains("newer weir"), "{error}");
    }

    /// A damaged identity is refused as corrupt, naming the file; a disk
    /// that fails to read it is a storage failure (the next start may read
    /// it), and neither is taken for a fresh directory.
    #[test]
    fn a_damaged_identity_is_corrupt_and_an_unreadable_one_a_storage_failure() {
        let (sim, disk) = disk();
        let dir = Path::new("/data");
        drop(DataDirClaim::claim(&disk, dir, 1, "weir").unwrap());
        sim.fail_next_reads(1);
        let error = DataDirClaim::claim(&disk, dir, 1, "weir").unwrap_err();
        assert_eq!(error.code, ErrorCode::StorageFailed, "{error}");
        assert!(error.message.contains(IDENTITY_FILE), "{error}");
        sim.corrupt_byte(&dir.join(IDENTITY_FILE), 0, 0x80).unwrap();
        let error = DataDirClaim::claim(&disk, dir, 1, "weir").unwrap_err();
        assert_eq!(error.code, ErrorCode::CorruptData, "{error}");
        assert!(error.message.contains(IDENTITY_FILE), "{error}");
    }
}
