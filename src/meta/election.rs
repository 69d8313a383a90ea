//! Controller election: one broker at a time holds `controller` under a
//! lease it keeps alive. The key's version when it was won (a store
//! revision, so it only grows) is the controller's *epoch*: every record a
//! controller changes carries its epoch, and a controller refuses to change
//! a record that carries a higher one. A controller cut off from the store
//! therefore cannot undo what its successor decided, even before it notices
//! that its lease is gone (each change is a compare-and-set on the record
//! it read).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::{LeaseId, MetaError, MetaResult, MetaStore};

pub const CONTROLLER_KEY: &str = "controller";

/// Who is controller, as the store says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    pub broker: u64,
}

/// The current controller and its epoch, if there is one.
pub async fn current_controller(store: &dyn MetaStore) -> MetaResult<Option<(ControllerRecord, u64)>> {
    let Some(versioned) = store.get(CONTROLLER_KEY).await? else { return Ok(None) };
    let record: ControllerRecord =
        serde_json::from_slice(&versioned.value).map_err(|e| MetaError::Corrupt(format!("{CONTROLLER_KEY}: {e}")))?;
    Ok(Some((record, versioned.version)))
}

/// Being controller: the key under a lease, and the epoch it was won at.
#[derive(Debug)]
pub struct Leadership {
    store: Arc<dyn MetaStore>,
    lease: LeaseId,
    ttl: Duration,
    pub epoch: u64,
}

impl Leadership {
    /// Campaigns until `broker` is controller. Waits while another broker
    /// holds the key (its lease ends when it stops).
    pub async fn campaign(store: Arc<dyn MetaStore>, broker: u64, ttl: Duration) -> Self {
        let mut revision = store.revision();
        loop {
            match Self::try_win(&store, broker, ttl).await {
                Ok(Some(leadership)) => return leadership,
                Ok(None) => {}
                Err(error) => tracing::debug!(%error, "campaigning for controller failed; will retry"),
            }
            // The holder's key vanishes with its lease: look again on every
            // change, and now and then in case a change was missed.
            revision.mark_unchanged();
            tokio::select! {
                _ = revision.changed() => {}
                _ = tokio::time::sleep(ttl / 3) => {}
            }
        }
    }

    async fn try_win(store: &Arc<dyn MetaStore>, broker: u64, ttl: Duration) -> MetaResult<Option<Self>> {
        if store.get(CONTROLLER_KEY).await?.is_some() {
            return Ok(None);
        }
        let lease = store.grant_lease(ttl).await?;
        let value = serde_json::to_vec(&ControllerRecord { broker }).expect("controller record serializes");
        match store.put(CONTROLLER_KEY, value, None, Some(lease)).await {
            Ok(epoch) => {
                tracing::info!(broker, epoch, "elected controller");
                Ok(Some(Self { store: store.clone(), lease, ttl, epoch }))
            }
            Err(MetaError::Conflict { .. }) => {
                let _ = store.revoke_lease(lease).await;
                Ok(None)
            }
            Err(other) => {
                let _ = store.revoke_lease(lease).await;
                Err(other)
            }
        }
    }

    /// Keeps the lease alive; returns once leadership is lost (the lease
    /// expired, or could not be renewed for longer than its TTL).
    pub async fn hold(&self) {
        let period = self.ttl / 3;
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(period).await;
            match self.store.keep_alive(self.lease).await {
                Ok(()) => last_renewed = tokio::time::Instant::now(),
                Err(MetaError::LeaseExpired(_)) => return,
                Err(error) => tracing::warn!(%error, "renewing the controller lease failed; will retry"),
            }
            // Stop acting before the store may elect someone else.
            if last_renewed.elapsed() + period >= self.ttl {
                return;
            }
        }
    }

    /// Gives leadership up at once (the key goes with the lease).
    pub async fn resign(self) {
        let _ = self.store.revoke_lease(self.lease).await;
    }
}
