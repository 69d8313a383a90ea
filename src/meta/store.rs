//! The metadata store: a small, versioned key-value space that brokers share.
//!
//! Shaped after etcd, so the replicated implementation is a thin adapter:
//! every key has a version (etcd's `mod_revision`), writes can be
//! conditional on it (compare-and-set), keys can be bound to a lease that
//! must be kept alive (a dead broker's registration disappears), and the
//! store exposes a revision that grows with every change. Change notification
//! is a `watch` channel of that revision, not an etcd watch stream: etcd's
//! watch is not simulated by madsim, so the etcd implementation may feed the
//! channel from a real watch outside the simulator and from polling inside.
//!
//! What an implementation must guarantee:
//! - A successful write is durable before it is acknowledged.
//! - `revision` grows strictly with every successful write or delete, and a
//!   key's `version` is the revision that last wrote it.
//! - A conditional write or delete applies only if the key's version still
//!   equals `expected` (`None`: the key must not exist) and reports a
//!   [`MetaError::Conflict`] otherwise, changing nothing.
//! - Keys bound to a lease vanish when the lease expires or is revoked.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

/// A value with the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: u64,
}

pub type LeaseId = i64;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("conflict on {key}: expected version {expected:?}, found {found:?}")]
    Conflict { key: String, expected: Option<u64>, found: Option<u64> },
    #[error("lease {0} is unknown or expired")]
    LeaseExpired(LeaseId),
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("metadata store data is corrupt: {0}")]
    Corrupt(String),
}

pub type MetaResult<T> = Result<T, MetaError>;

#[async_trait]
pub trait MetaStore: Send + Sync + std::fmt::Debug + 'static {
    async fn get(&self, key: &str) -> MetaResult<Option<Versioned>>;

    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> MetaResult<Vec<(String, Versioned)>>;

    /// Writes `value` if the key's version is `expected` (`None`: absent).
    /// Returns the new version. `lease` binds the key to a lease.
    async fn put(&self, key: &str, value: Vec<u8>, expected: Option<u64>, lease: Option<LeaseId>) -> MetaResult<u64>;

    /// Deletes the key if its version is `expected`.
    async fn delete(&self, key: &str, expected: u64) -> MetaResult<()>;

    /// A lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> MetaResult<LeaseId>;

    async fn keep_alive(&self, lease: LeaseId) -> MetaResult<()>;

    /// Revokes a lease, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> MetaResult<()>;

    /// The store's revision, updated after every change.
    fn revision(&self) -> watch::Receiver<u64>;
}
