//! [`Disk`] on the host's file system: std files, positional I/O, fdatasync,
//! directory fsync, and memmap2 maps.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use memmap2::MmapMut;

use super::{Disk, DiskFile, DiskLock, DiskMap};

#[derive(Debug, Default, Clone, Copy)]
pub struct RealDisk;

/// The sorted names of the entries in `path` whose type `wanted` accepts.
fn list(path: &Path, wanted: impl Fn(&fs::FileType) -> bool) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if wanted(&entry.file_type()?) {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

#[derive(Debug)]
struct RealFile {
    file: File,
}

impl DiskFile for RealFile {
    fn read_at(&self, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, position) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn write_at(&self, position: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, position)
    }

    fn sync(&self) -> io::Result<()> {
        // fdatasync also persists a changed file length, which appends need.
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

struct RealMap {
    map: MmapMut,
    file: File,
}

impl DiskMap for RealMap {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    fn flush(&mut self) -> io::Result<()> {
        self.map.flush()?;
        self.file.sync_all()
    }
}

/// An advisory `flock` on an open file: the kernel releases it when the
/// file closes, so also when the process dies.
#[derive(Debug)]
struct RealLock {
    _file: File,
}

impl DiskLock for RealLock {}

impl Disk for RealDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        // Every directory created here is durable only once the entry
        // naming it is, in its parent: sync the parent of each, not only
        // the leaf's (a topic's directory and its first partition's are
        // created together; syncing only the topic directory left the
        // topic's own entry in `topics/` to the next journal commit).
        let created: Vec<&Path> =
            path.ancestors().filter(|dir| !dir.as_os_str().is_empty()).take_while(|dir| !dir.exists()).collect();
        fs::create_dir_all(path)?;
        let leaf = if created.first() == Some(&path) { None } else { Some(path) };
        for dir in created.iter().rev().chain(&leaf) {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.sync_dir(parent)?;
            }
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        list(path, |kind| kind.is_file())
    }

    fn list_subdirs(&self, path: &Path) -> io::Result<Vec<String>> {
        list(path, |kind| kind.is_dir())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new().read(true).write(true).create(create).truncate(false).open(path)?;
        Ok(Box::new(RealFile { file }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        match fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn map(&self, path: &Path, len_min: u64) -> io::Result<Box<dyn DiskMap>> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if file.metadata()?.len() < len_min {
            file.set_len(len_min)?;
        }
        // SAFETY: weir owns its data directory; nothing else truncates an index
        // file while it is mapped, and weir itself only resizes unmapped files.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(Box::new(RealMap { map, file }))
    }

    fn lock_file(&self, path: &Path, owner: &str) -> io::Result<Box<dyn DiskLock>> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, format!("{} is locked", path.display())))
            }
            Err(fs::TryLockError::Error(error)) => return Err(error),
        }
        file.set_len(0)?;
        file.write_all_at(owner.as_bytes(), 0)?;
        Ok(Box::new(RealLock { _file: file }))
    }
}
