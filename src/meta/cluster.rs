//! The brokers of a cluster as the metadata store knows them, and where a
//! topic's partitions are placed.
//!
//! A live broker holds `brokers/<id>` under a lease that it keeps alive: a
//! broker that stops (or is cut off) for longer than the lease disappears.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::{LeaseId, MetaError, MetaResult, MetaStore};

pub const BROKERS_PREFIX: &str = "brokers/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub id: u64,
    /// Where clients and other brokers reach it (gRPC).
    pub address: String,
}

fn key(id: u64) -> String {
    format!("{BROKERS_PREFIX}{id:020}")
}

/// Every registered (live) broker, by id.
pub async fn live_brokers(store: &dyn MetaStore) -> MetaResult<BTreeMap<u64, BrokerRecord>> {
    let mut brokers = BTreeMap::new();
    for (key, versioned) in store.list(BROKERS_PREFIX).await? {
        let record: BrokerRecord =
            serde_json::from_slice(&versioned.value).map_err(|e| MetaError::Corrupt(format!("{key}: {e}")))?;
        brokers.insert(record.id, record);
    }
    Ok(brokers)
}

pub const DECOMMISSIONED_PREFIX: &str = "decommissioned/";

fn decommissioned_key(id: u64) -> String {
    format!("{DECOMMISSIONED_PREFIX}{id:020}")
}

/// Brokers an operator is taking out of the cluster (scale in): the
/// controller moves every replica off them and places nothing on them,
/// whether they are live or not. The mark outlives the broker's
/// registration; [`recommission`] lifts it.
pub async fn decommissioned(store: &dyn MetaStore) -> MetaResult<BTreeSet<u64>> {
    let mut brokers = BTreeSet::new();
    for (key, _) in store.list(DECOMMISSIONED_PREFIX).await? {
        let id = key[DECOMMISSIONED_PREFIX.len()..].parse().map_err(|e| MetaError::Corrupt(format!("{key}: {e}")))?;
        brokers.insert(id);
    }
    Ok(brokers)
}

/// Marks `id` decommissioned; true if it was not already.
pub async fn decommission(store: &dyn MetaStore, id: u64) -> MetaResult<bool> {
    match store.put(&decommissioned_key(id), Vec::new(), None, None).await {
        Ok(_) => Ok(true),
        Err(MetaError::Conflict { .. }) => Ok(false),
        Err(other) => Err(other),
    }
}

/// Lifts `id`'s decommissioned mark; true if it had one.
pub async fn recommission(store: &dyn MetaStore, id: u64) -> MetaResult<bool> {
    let key = decommissioned_key(id);
    let Some(versioned) = store.get(&key).await? else { return Ok(false) };
    match store.delete(&key, versioned.version).await {
        Ok(()) => Ok(true),
        Err(MetaError::Conflict { .. }) => Ok(false),
        Err(other) => Err(other),
    }
}

/// This broker's registration: a key under a lease.
#[derive(Debug)]
pub struct Registration {
    store: Arc<dyn MetaStore>,
    record: BrokerRecord,
    ttl: Duration,
    lease: LeaseId,
}

impl Registration {
    /// Registers `record` under a new lease of `ttl`, replacing what an
    /// earlier run of the same broker left (its lease may not have expired).
    pub async fn register(store: Arc<dyn MetaStore>, record: BrokerRecord, ttl: Duration) -> MetaResult<Self> {
        let lease = Self::put(store.as_ref(), &record, ttl).await?;
        Ok(Self { store, record, ttl, lease })
    }

    async fn put(store: &dyn MetaStore, record: &BrokerRecord, ttl: Duration) -> MetaResult<LeaseId> {
        let lease = store.grant_lease(ttl).await?;
        let value = serde_json::to_vec(record).expect("broker record serializes");
        let key = key(record.id);
        let mut expected = None;
        for _ in 0..3 {
            match store.put(&key, value.clone(), expected, Some(lease)).await {
                Ok(_) => return Ok(lease),
                Err(MetaError::Conflict { found, .. }) => expected = found,
                Err(other) => return Err(other),
            }
        }
        Err(MetaError::Unavailable(format!("registering broker {}: the key keeps changing", record.id)))
    }

    /// Keeps the lease alive until the returned future is dropped; if the
    /// lease is lost (an outage longer than its TTL), registers again.
    pub async fn keep_alive(mut self) {
        let period = self.ttl / 3;
        loop {
            tokio::time::sleep(period).await;
            match self.store.keep_alive(self.lease).await {
                Ok(()) => {}
                Err(MetaError::LeaseExpired(_)) => {
                    tracing::warn!(broker = self.record.id, "registration lease lost; registering again");
                    match Self::put(self.store.as_ref(), &self.record, self.ttl).await {
                        Ok(lease) => self.lease = lease,
                        Err(error) => tracing::warn!(%error, "registering again failed; will retry"),
                    }
                }
                Err(error) => tracing::warn!(%error, "keeping the registration alive failed; will retry"),
            }
        }
    }
}

/// Places `partitions` partitions of `replication_factor` replicas each on
/// `brokers`: partition `p` goes to `replication_factor` consecutive brokers
/// from `start + p`, so preferred leaders (each list's first) and followers
/// spread evenly; a random `start` keeps topics from all starting on one
/// broker.
pub fn place(partitions: u32, replication_factor: u32, brokers: &[u64], start: u64) -> Vec<Vec<u64>> {
    assert!(!brokers.is_empty() && replication_factor as usize <= brokers.len());
    let n = brokers.len() as u64;
    let start = start % n;
    (0..u64::from(partitions))
        .map(|p| (0..u64::from(replication_factor)).map(|j| brokers[((start + p + j) % n) as usize]).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_spreads_leaders_and_replicas_evenly() {
        let brokers = [3, 5, 9];
        let placed = place(6, 3, &brokers, 7);
        assert_eq!(placed.len(), 6);
        let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
        for replicas in &placed {
            let mut distinct = replicas.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct, vec![3, 5, 9], "three different brokers: {replicas:?}");
            *leaders.entry(replicas[0]).or_default() += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{placed:?}");

        let single = place(4, 1, &[7], 3);
        assert_eq!(single, vec![vec![7]; 4]);
        let two_of_four = place(8, 2, &[1, 2, 3, 4], 2);
        let mut per_broker: BTreeMap<u64, usize> = BTreeMap::new();
        for replicas in &two_of_four {
            assert_ne!(replicas[0], replicas[1]);
            for b in replicas {
                *per_broker.entry(*b).or_default() += 1;
            }
        }
        assert!(per_broker.values().all(|&n| n == 4), "{per_broker:?}");
    }
}
