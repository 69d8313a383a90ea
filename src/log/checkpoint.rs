//! The log's checkpoint: what a recovery may trust without scanning.
//!
//! ```text
//! 0 u32 magic "WCKP"  4 u8 version  5 u8 clean  6 u16 reserved
//! 8 u64 log_start_offset  16 u64 recovery_point  24 u32 crc32c of [0..24)
//! ```
//!
//! `recovery_point`: every segment that ends at or before it is durable and
//! has sealed indexes. `clean`: the log was closed cleanly, so the last
//! segment's indexes are sealed too. Written to a temporary file, fsynced,
//! renamed over the old one and the directory fsynced: a crash leaves the old
//! checkpoint or the new one, never a mix.

use std::path::Path;

use super::error::{LogError, LogResult};
use crate::sys::disk::{replace_file, Disk};

pub const CHECKPOINT_FILE: &str = "checkpoint";
pub const CHECKPOINT_TMP_FILE: &str = "checkpoint.tmp";
const MAGIC: u32 = u32::from_le_bytes(*b"WCKP");
const VERSION: u8 = 1;
const BYTES: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub log_start_offset: u64,
    pub recovery_point: u64,
    pub clean: bool,
}

impl Checkpoint {
    fn encode(&self) -> [u8; BYTES] {
        let mut out = [0u8; BYTES];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = VERSION;
        out[5] = u8::from(self.clean);
        out[8..16].copy_from_slice(&self.log_start_offset.to_le_bytes());
        out[16..24].copy_from_slice(&self.recovery_point.to_le_bytes());
        let crc = crc32c::crc32c(&out[..24]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != BYTES {
            return Err(format!("checkpoint is {} bytes, expected {BYTES}", bytes.len()));
        }
        let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[..24]) != crc {
            return Err("checkpoint CRC mismatch".into());
        }
        if bytes[0..4] != MAGIC.to_le_bytes() || bytes[4] != VERSION {
            return Err("checkpoint has an unknown magic or version".into());
        }
        Ok(Checkpoint {
            log_start_offset: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            recovery_point: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            clean: bytes[5] == 1,
        })
    }

    /// Reads the checkpoint. `Ok(Err(reason))` when one exists but cannot be
    /// used: the caller then trusts nothing and scans.
    pub fn read(disk: &dyn Disk, dir: &Path) -> LogResult<Result<Option<Self>, String>> {
        let path = dir.join(CHECKPOINT_FILE);
        let file = match disk.open(&path, false) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(None)),
            Err(e) => return Err(LogError::io(&path, e)),
        };
        let len = file.len().map_err(|e| LogError::io(&path, e))?;
        if len > BYTES as u64 {
            return Ok(Err(format!("checkpoint is {len} bytes, expected {BYTES}")));
        }
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(0, &mut buf).map_err(|e| LogError::io(&path, e))?;
        Ok(Self::decode(&buf).map(Some))
    }

    /// Replaces the checkpoint atomically and durably.
    pub fn write(&self, disk: &dyn Disk, dir: &Path) -> LogResult<()> {
        // Writes CHECKPOINT_TMP_FILE first, which recovery sweeps away.
        replace_file(disk, dir, CHECKPOINT_FILE, &self.encode())
            .map_err(|e| LogError::io(&dir.join(CHECKPOINT_FILE), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let checkpoint = Checkpoint { log_start_offset: 7, recovery_point: 42, clean: true };
        let bytes = checkpoint.encode();
        assert_eq!(Checkpoint::decode(&bytes), Ok(checkpoint));
        for i in 0..BYTES {
            let mut damaged = bytes;
            damaged[i] ^= 0x10;
            assert!(Checkpoint::decode(&damaged).is_err(), "flip at byte {i} went unnoticed");
        }
        assert!(Checkpoint::decode(&bytes[..BYTES - 1]).is_err());
    }
}
