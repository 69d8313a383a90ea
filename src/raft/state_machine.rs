//! A partition group's state machine. The messages themselves stay in the
//! log; what applying entries builds is small: the offset after the last
//! applied entry (the high watermark: every record below it is committed)
//! and the last membership.
//!
//! A snapshot is that state as of its last entry, written to a state file so
//! a restart replays only the entries after it. A follower whose log the
//! leader can no longer serve (purged below what it needs) installs the
//! snapshot and starts its log over at the snapshot's offset.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log_store::LogStore;
use super::producers::ProducerTable;
use super::state_file;
use super::types::{
    offsets_taken, Applied, Entry, LogId, NodeId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::sys::disk::Disk;
use crate::sys::planted::{self, Bug};
use crate::sys::task::blocking;

const SNAPSHOT_FILE: &str = "raft-snapshot";

/// What a snapshot holds besides openraft's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// The offset after the snapshot's last entry.
    pub next_offset: u64,
    /// What the partition knows of idempotent producers.
    #[serde(default)]
    pub producers: ProducerTable,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    state: SnapshotState,
}

#[derive(Debug, Default)]
struct Applying {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    next_offset: u64,
    producers: ProducerTable,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
    /// Planted bug [`Bug::ForgetProducersOnRestart`]: entries up to this
    /// index were in the log when the replica opened, and are not counted.
    forgotten_through: Option<u64>,
}

struct Shared {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    log: LogStore,
    state: Mutex<Applying>,
    high_watermark: watch::Sender<u64>,
}

/// A partition group's state machine; clones share it.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").field("dir", &self.shared.dir).finish()
    }
}

fn sm_err(e: impl ToString) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

impl StateMachine {
    /// Loads the last snapshot, if any, and brings the log in line with it.
    /// Blocks on disk I/O.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path, log: LogStore) -> Result<Self, String> {
        let mut snapshot: Option<StoredSnapshot> = state_file::load(disk.as_ref(), dir, SNAPSHOT_FILE)?;
        if let Some(last) = snapshot.as_ref().and_then(|s| s.meta.last_log_id) {
            // Damage cut the log below the snapshot's last entry. Starting
            // the log over at the snapshot would throw away this replica's
            // history below it; while the log still starts at the group's
            // first entry, the state is rebuilt from the log instead, and the
            // leader restores the entries that were cut. (The snapshot file
            // stays: once the log holds its last entry again it is valid.)
            let damaged = log.repair_through().is_some() && log.last_purged().is_none();
            if damaged && !log.contains(&last) {
                tracing::warn!(dir = %dir.display(), snapshot = %last, "damage cut the log below the snapshot; replaying the log instead");
                snapshot = None;
            }
        }
        let mut applying = Applying::default();
        if let Some(snapshot) = &snapshot {
            applying.last_applied = snapshot.meta.last_log_id;
            applying.membership = snapshot.meta.last_membership.clone();
            applying.next_offset = snapshot.state.next_offset;
            if !planted::on(Bug::ForgetProducersOnRestart) {
                applying.producers = snapshot.state.producers.clone();
            }
            // The log holds the snapshot's last entry, or has purged up to
            // it (a completed install, or a purge after a snapshot). If
            // neither, a crash cut an install short (the snapshot is saved
            // before the log starts over): finish it.
            if let Some(last) = snapshot.meta.last_log_id {
                let purged_through = log.last_purged().is_some_and(|purged| purged.index >= last.index);
                if !log.contains(&last) && !purged_through {
                    log.reset(last, snapshot.state.next_offset)?;
                }
            }
        }
        applying.snapshot = snapshot;
        if planted::on(Bug::ForgetProducersOnRestart) {
            applying.forgotten_through = log.last_index();
        }
        let high_watermark = watch::channel(applying.next_offset).0;
        let shared = Shared { dir: dir.to_path_buf(), disk, log, state: Mutex::new(applying), high_watermark };
        Ok(Self { shared: Arc::new(shared) })
    }

    fn state(&self) -> MutexGuard<'_, Applying> {
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every record below the high watermark is committed.
    pub fn high_watermark(&self) -> watch::Receiver<u64> {
        self.shared.high_watermark.subscribe()
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.state().last_applied
    }

    /// The voter sets of the last membership applied: one, or two during a
    /// joint change.
    pub fn applied_voter_sets(&self) -> Vec<Vec<NodeId>> {
        let joint = self.state().membership.membership().get_joint_config().clone();
        joint.into_iter().map(|voters| voters.into_iter().collect()).collect()
    }

    /// Reads the producer table (as of the last applied entry).
    pub fn with_producers<T>(&self, read: impl FnOnce(&ProducerTable) -> T) -> T {
        read(&self.state().producers)
    }

    fn publish(&self, next_offset: u64) {
        self.shared.high_watermark.send_if_modified(|hw| {
            let changed = *hw != next_offset;
            *hw = next_offset;
            changed
        });
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let stored = {
            let mut state = self.state();
            state.snapshots_built += 1;
            let snapshot_id = match state.last_applied {
                Some(last) => format!("{}-{}-{}", last.leader_id.term, last.index, state.snapshots_built),
                None => format!("empty-{}", state.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
                snapshot_id,
            };
            StoredSnapshot {
                meta,
                state: SnapshotState { next_offset: state.next_offset, producers: state.producers.clone() },
            }
        };
        let (disk, dir, to_save) = (self.shared.disk.clone(), self.shared.dir.clone(), stored.clone());
        blocking(move || state_file::save(disk.as_ref(), &dir, SNAPSHOT_FILE, &to_save)).await.map_err(sm_err)?;
        let data = serde_json::to_vec(&stored.state).map_err(sm_err)?;
        self.state().snapshot = Some(stored.clone());
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.state();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.state();
        let mut applied = Vec::new();
        for entry in entries {
            let base_offset = state.next_offset;
            if let EntryPayload::Normal(proposal) = &entry.payload {
                // Entries come from the log, placed: offsets must agree.
                if proposal.batch.base_offset() != base_offset {
                    return Err(StorageIOError::apply(
                        entry.log_id,
                        AnyError::error(format!(
                            "entry's batch is at offset {} but the state machine expects {base_offset}",
                            proposal.batch.base_offset()
                        )),
                    )
                    .into());
                }
            }
            state.next_offset = base_offset + offsets_taken(&entry.payload);
            if let EntryPayload::Normal(proposal) = &entry.payload {
                if state.forgotten_through.is_none_or(|through| entry.log_id.index > through) {
                    state.producers.apply(proposal.batch.header(), base_offset);
                }
            }
            if let EntryPayload::Membership(membership) = &entry.payload {
                state.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
            }
            state.last_applied = Some(entry.log_id);
            applied.push(Applied { base_offset, next_offset: state.next_offset });
        }
        let next_offset = state.next_offset;
        drop(state);
        self.publish(next_offset);
        Ok(applied)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let read_err = |e: String| -> StorageError {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e)).into()
        };
        let state: SnapshotState =
            serde_json::from_slice(snapshot.get_ref()).map_err(|e| read_err(format!("decoding snapshot: {e}")))?;
        let stored = StoredSnapshot { meta: meta.clone(), state: state.clone() };
        let (disk, dir, log, to_save) =
            (self.shared.disk.clone(), self.shared.dir.clone(), self.shared.log.clone(), stored.clone());
        blocking(move || {
            state_file::save(disk.as_ref(), &dir, SNAPSHOT_FILE, &to_save)?;
            match to_save.meta.last_log_id {
                Some(last) if !log.contains(&last) => log.reset(last, to_save.state.next_offset),
                _ => Ok(()),
            }
        })
        .await
        .map_err(sm_err)?;
        {
            let mut applying = self.state();
            applying.last_applied = meta.last_log_id;
            applying.membership = meta.last_membership.clone();
            applying.next_offset = state.next_offset;
            applying.producers = state.producers.clone();
            applying.snapshot = Some(stored);
        }
        self.publish(state.next_offset);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(stored) = self.state().snapshot.clone() else { return Ok(None) };
        let data = serde_json::to_vec(&stored.state).map_err(sm_err)?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
