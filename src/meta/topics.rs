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
    /// Per partition, the brokers that should hold a replica (the target
    /// of a move, or the placement); the first is the preferred leader. The
    /// brokers in it at creation start the group.
    #[serde(default)]
    pub replicas: Vec<Vec<u64>>,
    /// Per partition, the group's voters as its leader last confirmed them
    /// (empty: the same as `replicas`). While it differs from `replicas`,
    /// the partition is moving; a broker in neither holds no replica.
    #[serde(default)]
    pub members: Vec<Vec<u64>>,
    /// Per partition, how many times it was reassigned.
    #[serde(default)]
    pub moves: Vec<u32>,
    /// Per partition, how many voter changes its leader confirmed. Until
    /// the first, `members` is the group's first voter set (a reassignment
    /// pins it), and only those brokers start (bootstrap) the group, all
    /// with that same set; after it, any new replica joins through the
    /// leader. (A partition moved by the controller before its group had
    /// started was otherwise never started: madsim seed 56 of weir-sim.)
    #[serde(default)]
    pub confirmations: Vec<u32>,
    /// Per partition, the brokers of targets that a later reassignment
    /// replaced before the leader confirmed them. The group's voters may
    /// already be such a target (openraft finished the change; the
    /// confirmation had not landed), so those brokers keep their replicas
    /// until a confirmation names the voters again. (madsim seed 5727 of
    /// weir-sim: a second move while the first was finishing made brokers
    /// 1 and 5 delete their replicas while they were two of three voters,
    /// and the partition never had a leader again.)
    #[serde(default)]
    pub retained: Vec<Vec<u64>>,
    /// The epoch of the controller that last reassigned a partition; a
    /// controller with a lower epoch may no longer change the record.
    #[serde(default)]
    pub controller_epoch: u64,
}

impl TopicRecord {
    /// The brokers that should hold partition `p`'s replicas.
    pub fn target(&self, p: u32) -> &[u64] {
        self.replicas.get(p as usize).map_or(&[], Vec::as_slice)
    }

    /// Partition `p`'s voters as last confirmed by its leader.
    pub fn members(&self, p: u32) -> &[u64] {
        match self.members.get(p as usize) {
            Some(members) if !members.is_empty() => members,
            _ => self.target(p),
        }
    }

    /// Whether partition `p` is moving: its voters are not yet its target.
    pub fn moving(&self, p: u32) -> bool {
        !same_brokers(self.members(p), self.target(p))
    }

    /// Whether `broker` holds (or should hold) a replica of partition `p`.
    pub fn hosts(&self, p: u32, broker: u64) -> bool {
        self.target(p).contains(&broker) || self.members(p).contains(&broker) || self.retained(p).contains(&broker)
    }

    /// Brokers of superseded, unconfirmed targets of partition `p`.
    pub fn retained(&self, p: u32) -> &[u64] {
        self.retained.get(p as usize).map_or(&[], Vec::as_slice)
    }

    /// How many times partition `p` was reassigned.
    pub fn moves(&self, p: u32) -> u32 {
        self.moves.get(p as usize).copied().unwrap_or(0)
    }

    /// Sets partition `p`'s target replicas (a reassignment).
    pub fn reassign(&mut self, p: u32, replicas: Vec<u64>) {
        let n = self.config.partitions as usize;
        self.moves.resize(n, 0);
        self.members.resize(n, Vec::new());
        self.retained.resize(n, Vec::new());
        if self.moving(p) {
            // The voters may already be the target being replaced.
            let superseded = self.target(p).to_vec();
            let retained = &mut self.retained[p as usize];
            for broker in superseded {
                if !retained.contains(&broker) {
                    retained.push(broker);
                }
            }
        }
        let members = self.members(p).to_vec();
        self.members[p as usize] = members;
        self.replicas[p as usize] = replicas;
        self.moves[p as usize] += 1;
    }

    /// Records that partition `p`'s voters are now `members`.
    pub fn confirm_members(&mut self, p: u32, members: Vec<u64>) {
        let n = self.config.partitions as usize;
        self.members.resize(n, Vec::new());
        self.confirmations.resize(n, 0);
        self.members[p as usize] = members;
        self.confirmations[p as usize] += 1;
        // The voters are exactly `members` now: superseded targets are not.
        if let Some(retained) = self.retained.get_mut(p as usize) {
            retained.clear();
        }
    }

    /// Whether partition `p`'s group may still be started by the brokers
    /// in [`Self::members`]: its leader never confirmed a voter change.
    pub fn bootstrappable(&self, p: u32) -> bool {
        self.confirmations.get(p as usize).copied().unwrap_or(0) == 0
    }
}

/// Whether two replica lists name the same brokers (in any order).
pub fn same_brokers(a: &[u64], b: &[u64]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
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

/// How often [`Topics::update`] retries after a concurrent change.
const UPDATE_ATTEMPTS: usize = 16;

/// Why [`Topics::update`] failed: the store, or the change refused.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("{0}")]
    Refused(E),
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
        let record = TopicRecord {
            name: name.to_owned(),
            id: random_u64(),
            config,
            created_ms: now_ms,
            replicas,
            members: Vec::new(),
            moves: Vec::new(),
            confirmations: Vec::new(),
            retained: Vec::new(),
            controller_epoch: 0,
        };
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

    /// Changes topic `name` (the one with `id`) with `change`, which sees
    /// the current record and returns whether it changed it; retried on
    /// concurrent changes. `Ok(None)`: the topic is gone or `change`
    /// declined; `Ok(Some(record))`: the record as written.
    pub async fn update<E>(
        &self,
        name: &str,
        id: u64,
        mut change: impl FnMut(&mut TopicRecord) -> Result<bool, E>,
    ) -> Result<Option<TopicRecord>, UpdateError<E>> {
        let key = key(name);
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(versioned) = self.store.get(&key).await.map_err(TopicError::from)? else { return Ok(None) };
            let mut record = decode(&key, &versioned.value)?;
            if record.id != id || !change(&mut record).map_err(UpdateError::Refused)? {
                return Ok(None);
            }
            let value = serde_json::to_vec(&record).expect("topic record serializes");
            match self.store.put(&key, value, Some(versioned.version), None).await {
                Ok(_) => return Ok(Some(record)),
                Err(MetaError::Conflict { .. }) => continue,
                Err(other) => return Err(TopicError::from(other).into()),
            }
        }
        Err(TopicError::from(MetaError::Unavailable(format!("{key} keeps changing; gave up updating it"))).into())
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

    /// A topic placed on `replicas` (one list per partition), never moved.
    fn unconfirmed(replicas: Vec<Vec<u64>>) -> TopicRecord {
        let config = TopicConfig {
            partitions: replicas.len() as u32,
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: None,
            replication_factor: Some(3),
        };
        TopicRecord {
            name: "t".into(),
            id: 1,
            config,
            created_ms: 0,
            replicas,
            members: Vec::new(),
            moves: Vec::new(),
            confirmations: Vec::new(),
            retained: Vec::new(),
            controller_epoch: 0,
        }
    }

    #[test]
    fn a_partition_moved_before_its_group_started_is_started_by_its_first_voters() {
        let mut record = unconfirmed(vec![vec![2, 3, 4]]);
        assert!(record.bootstrappable(0));
        assert_eq!(record.members(0), [2, 3, 4]);
        record.reassign(0, vec![2, 1, 4]);
        record.reassign(0, vec![5, 4, 2]);
        assert!(record.bootstrappable(0), "no leader confirmed a change yet");
        assert_eq!(record.members(0), [2, 3, 4], "the first voters stay pinned through both moves");
        assert!(record.moving(0) && record.hosts(0, 3) && record.hosts(0, 5));
        assert!(record.hosts(0, 1), "the superseded target is kept until a confirmation");
        record.confirm_members(0, vec![5, 4, 2]);
        assert!(!record.bootstrappable(0), "new replicas now join through the leader");
        assert!(!record.moving(0) && !record.hosts(0, 3) && !record.hosts(0, 1));
    }

    /// madsim seed 5727 of weir-sim: openraft had made [1, 2, 5] the voters
    /// of a partition confirmed as [2, 3, 4], and a second move to [3, 2, 4]
    /// came before the confirmation. Brokers 1 and 5 must keep their
    /// replicas: they are two of the three voters that carry out the second
    /// move.
    #[test]
    fn a_move_replaced_before_its_confirmation_keeps_its_brokers_hosting() {
        let mut record = unconfirmed(vec![vec![1, 2, 3], vec![2, 3, 4]]);
        record.reassign(1, vec![1, 2, 5]);
        assert!(record.retained(1).is_empty(), "nothing superseded by a first move");
        record.reassign(1, vec![3, 2, 4]);
        for broker in 1..=5 {
            assert!(record.hosts(1, broker), "broker {broker} may be a voter");
        }
        assert!(!record.hosts(0, 5) && record.retained(0).is_empty(), "other partitions unaffected");
        record.confirm_members(1, vec![3, 2, 4]);
        assert!(!record.hosts(1, 1) && !record.hosts(1, 5), "confirmed: the superseded brokers let go");
        // A move that had not started anything is not retained.
        record.reassign(1, vec![3, 2, 1]);
        record.confirm_members(1, vec![3, 2, 1]);
        record.reassign(1, vec![3, 2, 4]);
        assert_eq!(record.retained(1), [] as [u64; 0]);
        assert!(record.hosts(1, 1), "a confirmed member keeps hosting until the next confirmation");
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
