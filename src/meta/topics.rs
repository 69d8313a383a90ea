//! Topics as stored in the metadata store: `topics/<name>` holds a
//! [`TopicRecord`] as JSON. The record's random `id`, fixed at creation,
//! tells a topic apart from an earlier one of the same name, so a recreated
//! topic never picks up a deleted one's data.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::store::{MetaError, MetaStore};
use crate::sys::rng::random_u64;

pub const TOPICS_PREFIX: &str = "topics/";
pub const TOPIC_NAME_BYTES_MAX: usize = 200;
pub const PARTITIONS_MAX: u32 = 10_000;
/// Names starting with this are weir's own (e.g. committed offsets).
pub const INTERNAL_TOPIC_PREFIX: &str = "__";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub partitions: u32,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: Option<u64>,
    #[serde(default)]
    pub replication_factor: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub id: u64,
    pub config: TopicConfig,
    pub created_ms: i64,
    /// Per partition, the brokers holding a replica; the first is the
    /// preferred leader. The brokers in it at creation start the group.
    #[serde(default)]
    pub replicas: Vec<Vec<u64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid config for topic {name:?}: {reason}")]
    InvalidConfig { name: String, reason: String },
    #[error("topic {0:?} already exists")]
    AlreadyExists(String),
    #[error("topic {0:?} does not exist")]
    Unknown(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Checks a topic name: 1 to 200 of `[A-Za-z0-9._-]`, not `.` or `..`, and
/// not starting with `__` unless `internal`.
pub fn validate_name(name: &str, internal: bool) -> Result<(), TopicError> {
    let invalid = |reason: &str| Err(TopicError::InvalidName { name: name.to_owned(), reason: reason.to_owned() });
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return invalid("must be 1 to 200 characters");
    }
    if name == "." || name == ".." {
        return invalid("must not be . or ..");
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return invalid(&format!("character {bad:?} is not allowed (use A-Z a-z 0-9 . _ -)"));
    }
    if name.starts_with(INTERNAL_TOPIC_PREFIX) && !internal {
        return invalid("names starting with __ are reserved for weir");
    }
    Ok(())
}

pub fn validate_config(name: &str, config: &TopicConfig) -> Result<(), TopicError> {
    let invalid = |reason: String| Err(TopicError::InvalidConfig { name: name.to_owned(), reason });
    if config.partitions == 0 || config.partitions > PARTITIONS_MAX {
        return invalid(format!("partitions must be 1 to {PARTITIONS_MAX}, got {}", config.partitions));
    }
    if let Some(ms) = config.retention_ms.filter(|ms| *ms <= 0) {
        return invalid(format!("retention_ms must be positive, got {ms}"));
    }
    if config.retention_bytes == Some(0) {
        return invalid("retention_bytes must be positive".into());
    }
    if let Some(bytes) = config.segment_bytes.filter(|b| *b < 1024 || *b > u64::from(u32::MAX)) {
        return invalid(format!("segment_bytes must be 1 KiB to 4 GiB, got {bytes}"));
    }
    if config.replication_factor == Some(0) {
        return invalid("replication_factor must be at least 1".into());
    }
    Ok(())
}

fn key(name: &str) -> String {
    format!("{TOPICS_PREFIX}{name}")
}

fn decode(key: &str, value: &[u8]) -> Result<TopicRecord, TopicError> {
    serde_json::from_slice(value).map_err(|e| MetaError::Corrupt(format!("{key}: {e}")).into())
}

/// Typed access to the topics in a [`MetaStore`].
#[derive(Debug, Clone)]
pub struct Topics {
    store: Arc<dyn MetaStore>,
}

impl Topics {
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Arc<dyn MetaStore> {
        &self.store
    }

    /// Creates a topic whose partitions have the `replicas` that
    /// `place(config)` chooses (after the config is validated).
    pub async fn create(
        &self,
        name: &str,
        config: TopicConfig,
        now_ms: i64,
        internal: bool,
        place: impl FnOnce(&TopicConfig) -> Result<Vec<Vec<u64>>, String>,
    ) -> Result<TopicRecord, TopicError> {
        validate_name(name, internal)?;
        validate_config(name, &config)?;
        let replicas = place(&config).map_err(|reason| TopicError::InvalidConfig { name: name.to_owned(), reason })?;
        let key = key(name);
        let record = TopicRecord { name: name.to_owned(), id: random_u64(), config, created_ms: now_ms, replicas };
        let value = serde_json::to_vec(&record).expect("topic record serializes");
        match self.store.put(&key, value, None, None).await {
            Ok(_) => Ok(record),
            Err(MetaError::Conflict { .. }) => Err(TopicError::AlreadyExists(name.to_owned())),
            Err(other) => Err(other.into()),
        }
    }

    pub async fn get(&self, name: &str) -> Result<Option<TopicRecord>, TopicError> {
        let key = key(name);
        match self.store.get(&key).await? {
            Some(versioned) => Ok(Some(decode(&key, &versioned.value)?)),
            None => Ok(None),
        }
    }

    pub async fn list(&self) -> Result<Vec<TopicRecord>, TopicError> {
        let mut topics = Vec::new();
        for (key, versioned) in self.store.list(TOPICS_PREFIX).await? {
            topics.push(decode(&key, &versioned.value)?);
        }
        Ok(topics)
    }

    pub async fn delete(&self, name: &str) -> Result<TopicRecord, TopicError> {
        let key = key(name);
        let Some(versioned) = self.store.get(&key).await? else {
            return Err(TopicError::Unknown(name.to_owned()));
        };
        let record = decode(&key, &versioned.value)?;
        match self.store.delete(&key, versioned.version).await {
            Ok(()) => Ok(record),
            Err(MetaError::Conflict { .. }) => Err(TopicError::Unknown(name.to_owned())),
            Err(other) => Err(other.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let table: &[(&str, bool, bool)] = &[
            ("orders", false, true),
            ("orders.v2_eu-west", false, true),
            ("", false, false),
            (".", false, false),
            ("..", false, false),
            ("has space", false, false),
            ("slash/name", false, false),
            ("ünïcode", false, false),
            ("__consumer_offsets", false, false),
            ("__consumer_offsets", true, true),
        ];
        for &(name, internal, ok) in table {
            assert_eq!(validate_name(name, internal).is_ok(), ok, "{name:?} internal={internal}");
        }
        assert!(validate_name(&"a".repeat(200), false).is_ok());
        assert!(validate_name(&"a".repeat(201), false).is_err());
    }

    #[test]
    fn configs() {
        let base = TopicConfig {
            partitions: 3,
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: None,
            replication_factor: None,
        };
        assert!(validate_config("t", &base).is_ok());
        for bad in [
            TopicConfig { partitions: 0, ..base.clone() },
            TopicConfig { partitions: PARTITIONS_MAX + 1, ..base.clone() },
            TopicConfig { retention_ms: Some(0), ..base.clone() },
            TopicConfig { retention_bytes: Some(0), ..base.clone() },
            TopicConfig { segment_bytes: Some(100), ..base.clone() },
            TopicConfig { replication_factor: Some(0), ..base.clone() },
        ] {
            assert!(validate_config("t", &bad).is_err(), "{bad:?}");
        }
    }
}
