//! The embedded metadata store: [`MetaStore`] for a single node, in one file.
//!
//! `weir dev` and single-broker deployments should not need an etcd cluster,
//! yet the broker code above the trait must not know the difference. This
//! store keeps the whole key space in memory and rewrites one small file on
//! every change, which is cheap at metadata sizes (topics, brokers, leases)
//! and makes crash consistency a matter of one atomic rename.
//!
//! File format (`meta.json`), version 1: a JSON envelope
//!
//! ```text
//! { "format": "weir-meta", "version": 1, "crc32c": <u32 of payload bytes>,
//!   "payload": "<the state as a JSON string>" }
//! ```
//!
//! with the payload
//!
//! ```text
//! { "revision": u64, "lease_id_last": i64,
//!   "keys":   { "<key>": { "value": "<hex>", "version": u64, "lease": i64|null } },
//!   "leases": { "<id>": { "ttl_ms": u64 } } }
//! ```
//!
//! The payload is a string rather than a nested object so the CRC covers the
//! exact bytes that were written, not a re-serialization of what was parsed.
//! Values are hex because they are arbitrary bytes. Lease deadlines are not
//! stored: they are wall-clock instants of a process that is gone, so a
//! reopened store gives every lease a fresh `ttl` (a single-node restart must
//! not instantly drop every registration it held).
//!
//! Durability: each change is written to `meta.json.tmp`, fsynced, renamed
//! over `meta.json` and the directory fsynced before it is acknowledged, so a
//! crash leaves either the previous or the new file, never a mix. A change is
//! computed on a copy of the state and installed only once it is durable, so a
//! failed write leaves memory and disk as they were; since every write replaces
//! the whole file, no later write depends on a failed one, and the store needs
//! no poisoned state.
//!
//! Leases expire lazily: every operation first drops expired leases and their
//! keys (a change like any other, with its own revision). Like etcd, the
//! revision counts changes to the key space; granting or keeping a lease alive
//! does not move it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::store::{LeaseId, MetaError, MetaResult, MetaStore, Versioned};
use crate::sys::clock::Clock;
use crate::sys::disk::Disk;

pub const META_FILE: &str = "meta.json";
pub const META_TMP_FILE: &str = "meta.json.tmp";
/// Names the file's kind, so a stray JSON file is not taken for metadata.
const FORMAT: &str = "weir-meta";
/// Bumped on any change to the envelope or payload; never reused.
const FORMAT_VERSION: u32 = 1;

/// What the file holds around the state: identity, version and checksum.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    format: String,
    version: u32,
    crc32c: u32,
    payload: String,
}

/// The whole store. Serialized as the payload, minus lease deadlines.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    revision: u64,
    /// Lease ids are never reused, across restarts too: a holder of a revoked
    /// lease must not keep a stranger's lease alive.
    lease_id_last: LeaseId,
    keys: BTreeMap<String, Entry>,
    leases: BTreeMap<LeaseId, Lease>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(with = "hex_bytes")]
    value: Vec<u8>,
    version: u64,
    lease: Option<LeaseId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    ttl_ms: i64,
    /// When the lease is gone, on the store clock's monotonic time (a step
    /// of the wall clock must neither end every lease at once nor keep a
    /// dead holder's keys for the length of the step); set on grant,
    /// keep-alive and load.
    #[serde(skip)]
    deadline: Duration,
}

impl Lease {
    /// Renewed at monotonic time `now`: gone one ttl later.
    fn renew(&mut self, now: Duration) {
        self.deadline = now.saturating_add(Duration::from_millis(self.ttl_ms.max(0) as u64));
    }
}

impl State {
    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Refuses unless the key's version is `expected` (`None`: absent).
    fn check_version(&self, key: &str, expected: Option<u64>) -> MetaResult<()> {
        let found = self.keys.get(key).map(|entry| entry.version);
        if found == expected {
            Ok(())
        } else {
            Err(MetaError::Conflict { key: key.to_owned(), expected, found })
        }
    }

    fn check_lease(&self, lease: LeaseId) -> MetaResult<()> {
        if self.leases.contains_key(&lease) {
            Ok(())
        } else {
            Err(MetaError::LeaseExpired(lease))
        }
    }

    fn has_expired(&self, now: Duration) -> bool {
        self.leases.values().any(|lease| lease.deadline <= now)
    }

    fn expire_leases(&mut self, now: Duration) {
        let expired: BTreeSet<LeaseId> =
            self.leases.iter().filter(|(_, lease)| lease.deadline <= now).map(|(&id, _)| id).collect();
        self.drop_leases(&expired);
    }

    /// Removes the leases and their keys; one revision for all the keys.
    fn drop_leases(&mut self, ids: &BTreeSet<LeaseId>) {
        if ids.is_empty() {
            return;
        }
        self.leases.retain(|id, _| !ids.contains(id));
        let keys_before = self.keys.len();
        self.keys.retain(|_, entry| entry.lease.is_none_or(|lease| !ids.contains(&lease)));
        if self.keys.len() != keys_before {
            self.bump();
        }
    }

    /// Whether `self` and `other` would write different files. Deadlines are
    /// not stored, and every key change moves the revision.
    fn differs_durably(&self, other: &State) -> bool {
        self.revision != other.revision
            || self.lease_id_last != other.lease_id_last
            || !self.leases.keys().eq(other.leases.keys())
    }

    /// The ordering chain: every version names a distinct past revision (one
    /// key per write), every bound lease exists, every lease id was issued.
    fn validate(&self) -> Result<(), String> {
        let mut versions = BTreeSet::new();
        for (key, entry) in &self.keys {
            if entry.version == 0 || entry.version > self.revision {
                return Err(format!("key {key:?} has version {} outside 1..={}", entry.version, self.revision));
            }
            if !versions.insert(entry.version) {
                return Err(format!("key {key:?} shares version {} with another key", entry.version));
            }
            if let Some(lease) = entry.lease.filter(|lease| !self.leases.contains_key(lease)) {
                return Err(format!("key {key:?} is bound to lease {lease}, which does not exist"));
            }
        }
        for (&id, lease) in &self.leases {
            if id <= 0 || id > self.lease_id_last {
                return Err(format!("lease {id} is outside the issued ids 1..={}", self.lease_id_last));
            }
            if lease.ttl_ms <= 0 {
                return Err(format!("lease {id} has a non-positive ttl of {} ms", lease.ttl_ms));
            }
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let payload = serde_json::to_string(self).expect("metadata state always serializes to JSON");
        let envelope = Envelope {
            format: FORMAT.to_owned(),
            version: FORMAT_VERSION,
            crc32c: crc32c::crc32c(payload.as_bytes()),
            payload,
        };
        let mut bytes = serde_json::to_vec_pretty(&envelope).expect("an envelope always serializes to JSON");
        bytes.push(b'\n');
        bytes
    }

    /// The state a file holds, with deadlines unset; `Err` says what is wrong.
    fn decode(bytes: &[u8]) -> Result<State, String> {
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| format!("unreadable envelope: {e}"))?;
        if envelope.format != FORMAT {
            return Err(format!("format is {:?}, expected {FORMAT:?}", envelope.format));
        }
        if envelope.version != FORMAT_VERSION {
            return Err(format!(
                "format version {} is not supported (this build reads {FORMAT_VERSION})",
                envelope.version
            ));
        }
        let crc = crc32c::crc32c(envelope.payload.as_bytes());
        if crc != envelope.crc32c {
            return Err(format!("CRC32C mismatch: stored {:#010x}, computed {crc:#010x}", envelope.crc32c));
        }
        let state: State = serde_json::from_str(&envelope.payload).map_err(|e| format!("unreadable payload: {e}"))?;
        state.validate().map_err(|e| format!("inconsistent state: {e}"))?;
        Ok(state)
    }
}

/// Values as lowercase hex strings: JSON has no bytes type.
mod hex_bytes {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        serializer.serialize_str(&hex)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let hex = String::deserialize(deserializer)?;
        if hex.len() % 2 != 0 || !hex.is_ascii() {
            return Err(D::Error::custom("hex value has an odd length or non-ASCII characters"));
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| D::Error::custom("invalid hex digit")))
            .collect()
    }
}

/// The single-node, file-backed [`MetaStore`].
#[derive(Debug)]
pub struct EmbeddedStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    /// Held across the file write so changes reach the file in revision
    /// order; never across an `.await` (the trait methods do not await).
    state: Mutex<State>,
    revision_tx: watch::Sender<u64>,
}

impl EmbeddedStore {
    /// Opens the store kept in `dir`, creating the directory if needed. A
    /// missing file is an empty store; a damaged one is [`MetaError::Corrupt`].
    pub fn open(disk: Arc<dyn Disk>, dir: &Path, clock: Arc<dyn Clock>) -> MetaResult<Self> {
        disk.create_dir_all(dir).map_err(|e| unavailable("creating", dir, e))?;
        // A leftover temporary file is a write that was never acknowledged.
        // Its removal need not be durable: if a crash brings it back, the
        // next open removes it again.
        let tmp = dir.join(META_TMP_FILE);
        match disk.remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(unavailable("removing", &tmp, e)),
            _ => {}
        }

        let mut state = read_state(disk.as_ref(), &dir.join(META_FILE))?;
        let now = clock.monotonic();
        for lease in state.leases.values_mut() {
            lease.renew(now);
        }
        tracing::info!(
            dir = %dir.display(),
            revision = state.revision,
            keys = state.keys.len(),
            leases = state.leases.len(),
            "embedded metadata store opened"
        );
        let (revision_tx, _) = watch::channel(state.revision);
        Ok(Self { disk, dir: dir.to_path_buf(), clock, state: Mutex::new(state), revision_tx })
    }

    /// A panic cannot leave the state half-changed (changes are built on a
    /// copy and installed whole), so a poisoned lock is safe to take over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `view` on the current state, first making any lease expiry
    /// durable so a read never shows a key that a crash would bring back.
    fn read<T>(&self, view: impl FnOnce(&State) -> T) -> MetaResult<T> {
        let mut state = self.lock();
        if state.has_expired(self.clock.monotonic()) {
            self.commit(&mut state, |_, _| Ok(()))?;
        }
        Ok(view(&state))
    }

    fn write<T>(&self, change: impl FnOnce(&mut State, Duration) -> MetaResult<T>) -> MetaResult<T> {
        let mut state = self.lock();
        self.commit(&mut state, change)
    }

    /// Expires leases, applies `change` (which must change nothing when it
    /// fails), makes the result durable, installs it and announces the
    /// revision. The expiry is kept even when `change` is refused.
    fn commit<T>(
        &self,
        state: &mut State,
        change: impl FnOnce(&mut State, Duration) -> MetaResult<T>,
    ) -> MetaResult<T> {
        let now = self.clock.monotonic();
        let mut next = state.clone();
        next.expire_leases(now);
        let result = change(&mut next, now);
        if cfg!(debug_assertions) {
            if let Err(reason) = next.validate() {
                panic!("embedded metadata state broke an invariant: {reason}");
            }
        }
        if next.differs_durably(state) {
            self.persist(&next)?;
        }
        let revision_moved = next.revision != state.revision;
        *state = next;
        if revision_moved {
            self.revision_tx.send_replace(state.revision);
        }
        result
    }

    /// Replaces the file atomically and durably (see the module doc).
    fn persist(&self, state: &State) -> MetaResult<()> {
        let tmp = self.dir.join(META_TMP_FILE);
        let io = |e| unavailable("writing", &tmp, e);
        let file = self.disk.open(&tmp, true).map_err(io)?;
        // A failed earlier attempt may have left a longer file behind.
        file.set_len(0).map_err(io)?;
        file.write_at(0, &state.encode()).map_err(io)?;
        file.sync().map_err(io)?;
        drop(file);
        let path = self.dir.join(META_FILE);
        self.disk.rename(&tmp, &path).map_err(|e| unavailable("renaming over", &path, e))?;
        self.disk.sync_dir(&self.dir).map_err(|e| unavailable("syncing directory", &self.dir, e))
    }
}

fn unavailable(action: &str, path: &Path, error: io::Error) -> MetaError {
    MetaError::Unavailable(format!("{action} {}: {error}", path.display()))
}

fn read_state(disk: &dyn Disk, path: &Path) -> MetaResult<State> {
    let file = match disk.open(path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(unavailable("opening", path, e)),
    };
    let len = file.len().map_err(|e| unavailable("reading", path, e))?;
    let len = usize::try_from(len)
        .map_err(|_| MetaError::Corrupt(format!("{}: {len} bytes is too large", path.display())))?;
    let mut bytes = vec![0; len];
    file.read_exact_at(0, &mut bytes).map_err(|e| unavailable("reading", path, e))?;
    State::decode(&bytes).map_err(|reason| MetaError::Corrupt(format!("{}: {reason}", path.display())))
}

/// Rounds up to whole milliseconds, at least one: a lease must outlive its
/// grant, and sub-millisecond precision is beyond the clock.
fn ttl_ms(ttl: Duration) -> i64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000).max(1);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[async_trait]
impl MetaStore for EmbeddedStore {
    async fn get(&self, key: &str) -> MetaResult<Option<Versioned>> {
        self.read(|state| {
            state.keys.get(key).map(|entry| Versioned { value: entry.value.clone(), version: entry.version })
        })
    }

    async fn list(&self, prefix: &str) -> MetaResult<Vec<(String, Versioned)>> {
        self.read(|state| {
            state
                .keys
                .range(prefix.to_owned()..)
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(key, entry)| (key.clone(), Versioned { value: entry.value.clone(), version: entry.version }))
                .collect()
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, expected: Option<u64>, lease: Option<LeaseId>) -> MetaResult<u64> {
        self.write(|state, _| {
            state.check_version(key, expected)?;
            if let Some(lease) = lease {
                state.check_lease(lease)?;
            }
            let version = state.bump();
            state.keys.insert(key.to_owned(), Entry { value, version, lease });
            Ok(version)
        })
    }

    async fn delete(&self, key: &str, expected: u64) -> MetaResult<()> {
        self.write(|state, _| {
            state.check_version(key, Some(expected))?;
            state.keys.remove(key);
            state.bump();
            Ok(())
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> MetaResult<LeaseId> {
        let ttl_ms = ttl_ms(ttl);
        self.write(|state, now| {
            state.lease_id_last += 1;
            let id = state.lease_id_last;
            let mut lease = Lease { ttl_ms, deadline: now };
            lease.renew(now);
            state.leases.insert(id, lease);
            Ok(id)
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> MetaResult<()> {
        self.write(|state, now| {
            let entry = state.leases.get_mut(&lease).ok_or(MetaError::LeaseExpired(lease))?;
            entry.renew(now);
            Ok(())
        })
    }

    async fn revoke_lease(&self, lease: LeaseId) -> MetaResult<()> {
        self.write(|state, _| {
            state.check_lease(lease)?;
            state.drop_leases(&BTreeSet::from([lease]));
            Ok(())
        })
    }

    fn revision(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::clock::ManualClock;
    use crate::sys::disk::SimDisk;
    use crate::sys::rng::SeededRng;

    const DIR: &str = "/meta";
    const TTL: Duration = Duration::from_secs(10);
    const TTL_MS: i64 = 10_000;
    const START_MS: i64 = 1_000_000;

    struct Fixture {
        disk: SimDisk,
        clock: Arc<ManualClock>,
        store: EmbeddedStore,
    }

    impl Fixture {
        fn new(seed: u64) -> Self {
            let disk = SimDisk::new(seed);
            let clock = ManualClock::new(START_MS);
            let store = open(&disk, &clock).expect("an empty directory opens");
            Self { disk, clock, store }
        }

        fn reopen(&mut self) -> MetaResult<()> {
            self.store = open(&self.disk, &self.clock)?;
            Ok(())
        }
    }

    fn open(disk: &SimDisk, clock: &Arc<ManualClock>) -> MetaResult<EmbeddedStore> {
        EmbeddedStore::open(Arc::new(disk.clone()), Path::new(DIR), clock.clone())
    }

    fn meta_path() -> PathBuf {
        Path::new(DIR).join(META_FILE)
    }

    fn current(store: &EmbeddedStore) -> u64 {
        *store.revision().borrow()
    }

    async fn value(store: &EmbeddedStore, key: &str) -> Option<Vec<u8>> {
        store.get(key).await.unwrap().map(|v| v.value)
    }

    #[tokio::test]
    async fn put_with_expected_version_is_compare_and_set() {
        let fx = Fixture::new(0);
        let store = &fx.store;

        tracing::info!("set up: create a key that must not exist yet");
        let v1 = store.put("topics/a", b"one".to_vec(), None, None).await.unwrap();

        tracing::info!("act: a CAS on the current version applies");
        let v2 = store.put("topics/a", b"two".to_vec(), Some(v1), None).await.unwrap();
        assert!(v2 > v1);

        tracing::info!("act: a CAS on the stale version and a create of an existing key are refused");
        let stale = store.put("topics/a", b"three".to_vec(), Some(v1), None).await.unwrap_err();
        let MetaError::Conflict { key, expected, found } = &stale else { panic!("{stale:?}") };
        assert_eq!((key.as_str(), *expected, *found), ("topics/a", Some(v1), Some(v2)));
        let exists = store.put("topics/a", b"four".to_vec(), None, None).await.unwrap_err();
        assert!(matches!(exists, MetaError::Conflict { expected: None, found: Some(f), .. } if f == v2), "{exists:?}");
        let absent = store.put("topics/b", b"x".to_vec(), Some(v2), None).await.unwrap_err();
        assert!(matches!(absent, MetaError::Conflict { found: None, .. }), "{absent:?}");

        tracing::info!("check: the conflicts changed neither the value nor the revision");
        let got = store.get("topics/a").await.unwrap().unwrap();
        assert_eq!(got, Versioned { value: b"two".to_vec(), version: v2 });
        assert_eq!(current(store), v2);
        assert_eq!(store.get("topics/b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn versions_are_the_revisions_that_wrote_them() {
        let fx = Fixture::new(0);
        let store = &fx.store;
        let mut revision_last = current(store);
        for (i, key) in ["c", "a", "b", "a", "c"].iter().enumerate() {
            let expected = store.get(key).await.unwrap().map(|v| v.version);
            let version = store.put(key, vec![i as u8], expected, None).await.unwrap();
            assert!(version > revision_last, "revision must grow strictly");
            assert_eq!(version, current(store), "a key's version is the revision that wrote it");
            assert_eq!(store.get(key).await.unwrap().unwrap().version, version);
            revision_last = version;
        }
        let version = store.get("b").await.unwrap().unwrap().version;
        store.delete("b", version).await.unwrap();
        assert!(current(store) > revision_last, "a delete is a change too");
    }

    #[tokio::test]
    async fn list_returns_prefix_matches_in_key_order() {
        let fx = Fixture::new(0);
        let store = &fx.store;
        for key in ["brokers/2", "topics/x", "brokers/10", "brokers/1", "brokers", "brokersX/1"] {
            store.put(key, key.as_bytes().to_vec(), None, None).await.unwrap();
        }
        let listed = store.list("brokers/").await.unwrap();
        let keys: Vec<&str> = listed.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["brokers/1", "brokers/10", "brokers/2"]);
        for (key, versioned) in &listed {
            assert_eq!(versioned.value, key.as_bytes());
        }
        assert_eq!(store.list("").await.unwrap().len(), 6);
        assert!(store.list("nothing/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn delete_with_stale_version_is_refused() {
        let fx = Fixture::new(0);
        let store = &fx.store;
        let v1 = store.put("k", b"1".to_vec(), None, None).await.unwrap();
        let v2 = store.put("k", b"2".to_vec(), Some(v1), None).await.unwrap();

        let stale = store.delete("k", v1).await.unwrap_err();
        assert!(matches!(stale, MetaError::Conflict { expected: Some(e), found: Some(f), .. } if e == v1 && f == v2));
        assert_eq!(value(store, "k").await, Some(b"2".to_vec()));
        assert_eq!(current(store), v2, "a refused delete changes nothing");

        store.delete("k", v2).await.unwrap();
        assert_eq!(value(store, "k").await, None);
        let gone = store.delete("k", v2).await.unwrap_err();
        assert!(matches!(gone, MetaError::Conflict { found: None, .. }), "{gone:?}");
    }

    #[tokio::test]
    async fn expired_lease_removes_its_keys_and_bumps_revision() {
        let fx = Fixture::new(0);
        let store = &fx.store;

        tracing::info!("set up: one leased key, one plain key");
        let lease = store.grant_lease(TTL).await.unwrap();
        store.put("brokers/1", b"up".to_vec(), None, Some(lease)).await.unwrap();
        store.put("topics/a", b"cfg".to_vec(), None, None).await.unwrap();
        let revision_before = current(store);
        let mut rx = store.revision();

        tracing::info!("act: just before the deadline the key is still there");
        fx.clock.advance_ms(TTL_MS - 1);
        assert_eq!(value(store, "brokers/1").await, Some(b"up".to_vec()));
        assert!(!rx.has_changed().unwrap());

        tracing::info!("act: at the deadline the lease and its key are gone");
        fx.clock.advance_ms(1);
        assert_eq!(value(store, "brokers/1").await, None);
        assert_eq!(value(store, "topics/a").await, Some(b"cfg".to_vec()));
        assert!(current(store) > revision_before, "an expiry is a change");
        assert!(rx.has_changed().unwrap(), "watchers hear of the expiry");
        assert_eq!(*rx.borrow_and_update(), current(store));

        tracing::info!("check: the lease can neither be kept alive nor bound to");
        assert!(matches!(store.keep_alive(lease).await, Err(MetaError::LeaseExpired(id)) if id == lease));
        let put = store.put("brokers/1", b"again".to_vec(), None, Some(lease)).await;
        assert!(matches!(put, Err(MetaError::LeaseExpired(id)) if id == lease), "{put:?}");
        assert!(matches!(store.put("k", vec![], None, Some(999)).await, Err(MetaError::LeaseExpired(999))));
    }

    #[tokio::test]
    async fn keep_alive_extends_the_lease() {
        let fx = Fixture::new(0);
        let store = &fx.store;
        let lease = store.grant_lease(TTL).await.unwrap();
        store.put("brokers/1", b"up".to_vec(), None, Some(lease)).await.unwrap();
        let revision = current(store);

        for _ in 0..5 {
            fx.clock.advance_ms(TTL_MS - 1);
            store.keep_alive(lease).await.unwrap();
        }
        assert_eq!(value(store, "brokers/1").await, Some(b"up".to_vec()), "kept alive well past one ttl");
        assert_eq!(current(store), revision, "keep-alives do not move the revision");

        fx.clock.advance_ms(TTL_MS);
        assert_eq!(value(store, "brokers/1").await, None, "expires one ttl after the last keep-alive");
    }

    #[tokio::test]
    async fn steps_of_the_wall_clock_neither_end_leases_nor_prolong_them() {
        let fx = Fixture::new(0);
        let store = &fx.store;
        let lease = store.grant_lease(TTL).await.unwrap();
        store.put("brokers/1", b"up".to_vec(), None, Some(lease)).await.unwrap();

        tracing::info!("act: the host's clock jumps an hour forwards");
        fx.clock.set_ms(START_MS + 3_600_000);
        assert_eq!(value(store, "brokers/1").await, Some(b"up".to_vec()), "a live holder keeps its key");
        store.keep_alive(lease).await.unwrap();

        tracing::info!("act: then two hours back, and the holder falls silent");
        fx.clock.set_ms(START_MS - 3_600_000);
        fx.clock.advance_ms(TTL_MS - 1);
        assert_eq!(value(store, "brokers/1").await, Some(b"up".to_vec()));
        fx.clock.advance_ms(1);
        assert_eq!(value(store, "brokers/1").await, None, "one ttl after the last keep-alive, not an hour more");
    }

    #[tokio::test]
    async fn revoke_removes_the_lease_keys() {
        let fx = Fixture::new(0);
        let store = &fx.store;
        let lease = store.grant_lease(TTL).await.unwrap();
        let other = store.grant_lease(TTL).await.unwrap();
        assert_ne!(lease, other);
        store.put("brokers/1", b"a".to_vec(), None, Some(lease)).await.unwrap();
        store.put("brokers/1/addr", b"b".to_vec(), None, Some(lease)).await.unwrap();
        store.put("brokers/2", b"c".to_vec(), None, Some(other)).await.unwrap();
        let revision = current(store);

        store.revoke_lease(lease).await.unwrap();
        assert_eq!(current(store), revision + 1, "one revision for all the lease's keys");
        let keys: Vec<String> = store.list("brokers/").await.unwrap().into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, ["brokers/2"]);
        assert!(matches!(store.revoke_lease(lease).await, Err(MetaError::LeaseExpired(_))));
        assert!(matches!(store.keep_alive(lease).await, Err(MetaError::LeaseExpired(_))));
        store.keep_alive(other).await.unwrap();
    }

    #[tokio::test]
    async fn revision_watch_sees_each_change() {
        let fx = Fixture::new(0);
        let store = &fx.store;
        let mut rx = store.revision();
        assert_eq!(*rx.borrow(), 0, "an empty store is at revision 0");

        let version = store.put("k", b"v".to_vec(), None, None).await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), version);

        let refused = store.put("k", b"w".to_vec(), None, None).await;
        assert!(refused.is_err());
        assert!(!rx.has_changed().unwrap(), "a refused write announces nothing");

        store.delete("k", version).await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), version + 1);
    }

    #[tokio::test]
    async fn state_survives_reopen_with_fresh_lease_deadlines() {
        let mut fx = Fixture::new(0);

        tracing::info!("set up: plain and leased keys, every byte value");
        let all_bytes: Vec<u8> = (0..=255).collect();
        fx.store.put("blob", all_bytes.clone(), None, None).await.unwrap();
        let lease = fx.store.grant_lease(TTL).await.unwrap();
        let leased = fx.store.put("brokers/1", b"up".to_vec(), None, Some(lease)).await.unwrap();
        let revision = current(&fx.store);

        tracing::info!("act: reopen after the lease's original deadline");
        fx.clock.advance_ms(TTL_MS * 3);
        fx.reopen().unwrap();

        tracing::info!("check: everything is back, the lease with a fresh ttl");
        assert_eq!(current(&fx.store), revision);
        assert_eq!(value(&fx.store, "blob").await, Some(all_bytes));
        assert_eq!(fx.store.get("brokers/1").await.unwrap().unwrap().version, leased);
        fx.clock.advance_ms(TTL_MS - 1);
        fx.store.keep_alive(lease).await.unwrap();
        fx.clock.advance_ms(TTL_MS);
        assert_eq!(value(&fx.store, "brokers/1").await, None, "the restored lease still expires");

        tracing::info!("check: lease ids are not reused after a restart");
        fx.reopen().unwrap();
        let next = fx.store.grant_lease(TTL).await.unwrap();
        assert!(next > lease, "lease {next} reuses an id at or below {lease}");
    }

    /// The model of what the store must hold: key -> (value, version).
    type Model = BTreeMap<String, (Vec<u8>, u64)>;

    /// Applies one seed-chosen operation; the model follows only what was
    /// acknowledged.
    async fn random_op(store: &EmbeddedStore, model: &mut Model, lease: LeaseId, rng: &mut SeededRng) {
        let key = format!("k{}", rng.below(4));
        let found = model.get(&key).map(|(_, version)| *version);
        match (rng.below(3), found) {
            (0, Some(version)) => {
                store.delete(&key, version).await.unwrap();
                model.remove(&key);
            }
            (1, _) => {
                // A stale expectation: must be refused and change nothing.
                let wrong = found.map_or(Some(u64::MAX), |_| None);
                store.put(&key, b"never".to_vec(), wrong, None).await.unwrap_err();
            }
            _ => {
                let value = rng.next_u64().to_le_bytes().to_vec();
                let bound = rng.chance(1, 3).then_some(lease);
                let version = store.put(&key, value.clone(), found, bound).await.unwrap();
                model.insert(key, (value, version));
            }
        }
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_a_crash() {
        for seed in 0..200 {
            let mut fx = Fixture::new(seed);
            let mut rng = SeededRng::new(seed);
            let mut model = Model::new();

            let lease = fx.store.grant_lease(TTL).await.unwrap();
            for _ in 0..rng.below(12) {
                random_op(&fx.store, &mut model, lease, &mut rng).await;
            }
            let revision = current(&fx.store);
            if rng.chance(1, 2) {
                // An unacknowledged write in flight at the crash: its fsync
                // fails, so it must leave no trace.
                fx.disk.fail_next_syncs(1);
                let failed = fx.store.put("inflight", b"x".to_vec(), None, None).await;
                assert!(matches!(failed, Err(MetaError::Unavailable(_))), "seed {seed}: {failed:?}");
                assert_eq!(current(&fx.store), revision, "seed {seed}: a failed write moved the revision");
            }

            fx.disk.crash(seed);
            fx.reopen().unwrap_or_else(|e| panic!("seed {seed}: reopen after crash failed: {e}"));

            assert_eq!(current(&fx.store), revision, "seed {seed}: revision");
            let listed = fx.store.list("").await.unwrap();
            let got: Model = listed.into_iter().map(|(key, v)| (key, (v.value, v.version))).collect();
            assert_eq!(got, model, "seed {seed}: acknowledged state differs after crash");
            fx.store.keep_alive(lease).await.unwrap_or_else(|e| panic!("seed {seed}: lease lost: {e}"));
        }
    }

    #[tokio::test]
    async fn a_failed_write_leaves_the_store_usable() {
        let fx = Fixture::new(0);
        let store = &fx.store;
        let v1 = store.put("k", b"1".to_vec(), None, None).await.unwrap();
        fx.disk.fail_next_writes(1);
        assert!(matches!(store.put("k", b"2".to_vec(), Some(v1), None).await, Err(MetaError::Unavailable(_))));
        assert_eq!(store.get("k").await.unwrap().unwrap(), Versioned { value: b"1".to_vec(), version: v1 });
        let v2 = store.put("k", b"3".to_vec(), Some(v1), None).await.unwrap();
        assert_eq!(v2, v1 + 1, "the failed write used no revision");
    }

    #[tokio::test]
    async fn leftover_temporary_file_is_ignored_and_removed() {
        let mut fx = Fixture::new(0);
        fx.store.put("k", b"v".to_vec(), None, None).await.unwrap();
        let tmp = Path::new(DIR).join(META_TMP_FILE);
        let file = fx.disk.open(&tmp, true).unwrap();
        file.write_at(0, b"{ half a wri").unwrap();
        drop(file);

        fx.reopen().unwrap();
        assert_eq!(value(&fx.store, "k").await, Some(b"v".to_vec()));
        assert_eq!(fx.disk.file_len(&tmp), None);
    }

    #[tokio::test]
    async fn damaged_file_is_reported_as_corrupt() {
        let fx = Fixture::new(0);
        let lease = fx.store.grant_lease(TTL).await.unwrap();
        fx.store.put("brokers/1", b"up".to_vec(), None, Some(lease)).await.unwrap();
        fx.store.put("topics/a", vec![0, 255, 7], None, None).await.unwrap();
        let path = meta_path();
        let len = fx.disk.file_len(&path).unwrap();

        tracing::info!(len, "act: flip bits in every byte of the file, one at a time");
        for position in 0..len {
            for mask in [0x01, 0x20, 0x80] {
                fx.disk.corrupt_byte(&path, position, mask).unwrap();
                match open(&fx.disk, &fx.clock) {
                    Err(MetaError::Corrupt(reason)) => {
                        assert!(reason.contains(META_FILE), "the reason names the file: {reason}")
                    }
                    other => panic!("flip {mask:#04x} at byte {position} gave {other:?}"),
                }
                fx.disk.corrupt_byte(&path, position, mask).unwrap();
            }
        }
        open(&fx.disk, &fx.clock).expect("undoing every flip restores the file");

        tracing::info!("act: a truncated and an empty file");
        let file = fx.disk.open(&path, false).unwrap();
        for cut in [len / 2, 0] {
            file.set_len(cut).unwrap();
            let reopened = open(&fx.disk, &fx.clock);
            assert!(matches!(reopened, Err(MetaError::Corrupt(_))), "cut to {cut}: {reopened:?}");
        }
    }

    #[test]
    fn decode_rejects_inconsistent_state_with_a_valid_crc() {
        let mut state = State { revision: 1, ..State::default() };
        state.keys.insert("k".to_owned(), Entry { value: vec![], version: 2, lease: None });
        let reason = State::decode(&state.encode()).unwrap_err();
        assert!(reason.contains("version 2"), "{reason}");

        state.keys.insert("k".to_owned(), Entry { value: vec![], version: 1, lease: Some(5) });
        let reason = State::decode(&state.encode()).unwrap_err();
        assert!(reason.contains("lease 5"), "{reason}");
    }
}
