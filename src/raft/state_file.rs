//! Small files a Raft group keeps beside its log (its vote, its snapshot),
//! replaced atomically: written to a temporary file, fsynced, renamed over
//! the old one and the directory fsynced, so a crash leaves the old file or
//! the new one. Each is `u32 crc32c ++ JSON`, so damage is detected.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sys::disk::{replace_file, Disk};

/// Replaces `dir/name` with `value`, durably.
pub fn save<T: Serialize>(disk: &dyn Disk, dir: &Path, name: &str, value: &T) -> Result<(), String> {
    let json = serde_json::to_vec(value).map_err(|e| format!("encoding {name}: {e}"))?;
    let mut bytes = crc32c::crc32c(&json).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    replace_file(disk, dir, name, &bytes).map_err(|e| format!("writing {}: {e}", dir.join(name).display()))
}

/// Reads `dir/name`; `None` if it does not exist.
pub fn load<T: DeserializeOwned>(disk: &dyn Disk, dir: &Path, name: &str) -> Result<Option<T>, String> {
    let path = dir.join(name);
    let file = match disk.open(&path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    let io = |e: std::io::Error| format!("reading {}: {e}", path.display());
    let len = file.len().map_err(io)?;
    if !(4..=64 << 20).contains(&len) {
        return Err(format!("{} is {len} bytes long", path.display()));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(0, &mut bytes).map_err(io)?;
    let stored = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[4..]) != stored {
        return Err(format!("{} is damaged (CRC mismatch)", path.display()));
    }
    serde_json::from_slice(&bytes[4..]).map(Some).map_err(|e| format!("decoding {}: {e}", path.display()))
}
