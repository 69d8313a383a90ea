//! The Raft type configuration every partition group shares, and the entry
//! payloads: a proposal is one record batch; the entries that are not
//! messages (a new leader's blank entry, a membership change) are
//! [`Control`] entries.

use std::fmt;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::{BasicNode, EntryPayload};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::oneshot;

use crate::log::Batch;
use crate::sys::raft_runtime::WeirRuntime;

pub type NodeId = u64;

/// A partition's Raft group: its topic's id and its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId {
    pub topic_id: u64,
    pub partition: u32,
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{}", self.topic_id, self.partition)
    }
}

/// Told the batch's base offset once the leader's log has made it durable
/// (for `acks=leader`). Lives only in the leader's memory.
pub type DurableSignal = Arc<Mutex<Option<oneshot::Sender<u64>>>>;

/// What a producer proposes: one record batch, replicated as is.
#[derive(Clone)]
pub struct Proposal {
    pub batch: Batch,
    pub durable: Option<DurableSignal>,
}

impl Proposal {
    pub fn new(batch: Batch) -> Self {
        Self { batch, durable: None }
    }

    /// The proposal, and a receiver told the base offset once the leader's
    /// log has made it durable.
    pub fn with_durable_signal(batch: Batch) -> (Self, oneshot::Receiver<u64>) {
        let (tx, rx) = oneshot::channel();
        (Self { batch, durable: Some(Arc::new(Mutex::new(Some(tx)))) }, rx)
    }

    /// Tells whoever waits that the batch is durable at `base_offset`.
    pub fn signal_durable(&self, base_offset: u64) {
        if let Some(signal) = &self.durable {
            if let Some(tx) = signal.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(base_offset);
            }
        }
    }
}

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proposal").field("batch", &self.batch.header()).finish()
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} records, {} bytes", self.batch.record_count(), self.batch.len())
    }
}

impl Serialize for Proposal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.batch.as_bytes())
    }
}

impl<'de> Deserialize<'de> for Proposal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> serde::de::Visitor<'de> for BytesVisitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an encoded record batch")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(byte) = seq.next_element()? {
                    out.push(byte);
                }
                Ok(out)
            }
        }
        let bytes = deserializer.deserialize_byte_buf(BytesVisitor)?;
        // The receiver checks both CRCs: a batch damaged in flight is refused.
        Batch::from_storage(Bytes::from(bytes)).map(Proposal::new).map_err(serde::de::Error::custom)
    }
}

/// Where an applied entry's records landed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub base_offset: u64,
    pub next_offset: u64,
}

openraft::declare_raft_types!(
    /// The Raft types of a partition group.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = WeirRuntime,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, BasicNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftNode = openraft::Raft<TypeConfig>;

/// A Raft entry that is not messages: a new leader's blank entry or a
/// membership change. Kept beside the partition log, taking no offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    Blank,
    Membership(Membership),
}

impl Control {
    /// The control entry `payload` is, if it is not a proposal.
    pub fn of(payload: &EntryPayload<TypeConfig>) -> Option<Self> {
        match payload {
            EntryPayload::Normal(_) => None,
            EntryPayload::Blank => Some(Control::Blank),
            EntryPayload::Membership(membership) => Some(Control::Membership(membership.clone())),
        }
    }

    pub fn into_payload(self) -> EntryPayload<TypeConfig> {
        match self {
            Control::Blank => EntryPayload::Blank,
            Control::Membership(membership) => EntryPayload::Membership(membership),
        }
    }
}

/// How many offsets an entry takes: a batch's records; none for a control
/// entry, so message offsets stay dense.
pub fn offsets_taken(payload: &EntryPayload<TypeConfig>) -> u64 {
    match payload {
        EntryPayload::Normal(proposal) => u64::from(proposal.batch.record_count()),
        _ => 0,
    }
}
