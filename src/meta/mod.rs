//! Cluster metadata: topic configs and partition assignments behind the
//! [`MetaStore`] trait, with an embedded, file-backed store for a single
//! node (`weir dev`) and, with replication, etcd.

pub mod cluster;
pub mod election;
mod embedded;
pub mod etcd;
mod store;
pub mod topics;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;
pub use store::{LeaseId, MetaError, MetaResult, MetaStore, Versioned};
