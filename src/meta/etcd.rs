//! The replicated metadata store: [`MetaStore`] on an etcd cluster.
//!
//! Brokers of a multi-node cluster share their metadata through etcd. The
//! trait was shaped after etcd, so this is a thin adapter; what is not thin is
//! written down here, because the same code must run against a real etcd and,
//! under `--cfg madsim`, against madsim-etcd-client's simulated one, which
//! supports less.
//!
//! Layout: a store with namespace `ns` keeps key `k` at `<ns>/kv/<k>`, and its
//! bookkeeping at `<ns>/writers` and `<ns>/leases/<id>` (both explained below).
//! In `<ns>`, `%` and `/` are escaped as `%25` and `%2F`, so no namespace's
//! prefix is a prefix of another's and several clusters (or tests) can share
//! one etcd.
//!
//! Versions and compare-and-set: a key's version is etcd's `mod_revision`, as
//! the trait asks. The natural CAS is a transaction comparing `mod_revision`,
//! but the simulated etcd implements only value comparisons (`Compare::value`),
//! and a path that only the real build takes is a path the simulator never
//! tests. So both builds compare whole values, made unique per write:
//!
//! ```text
//! stored value = [format: u8 = 1][writer id: u64 BE][write sequence: u64 BE][payload]
//! ```
//!
//! The writer id is the etcd revision of a write this store made to
//! `<ns>/writers` when it connected; etcd gives each revision to one write
//! only, so no two stores share an id, and each store numbers its own writes.
//! No two writes ever store the same bytes, hence "the value still equals the
//! bytes read at version v" holds exactly when "the version is still v": the
//! compare is exact, with no ABA, even when a key is deleted and re-created
//! with the same payload. A conditional write thus reads the key (refusing at
//! once if its version is not the expected one), then commits in a transaction
//! `value == bytes read ? write : read`. "Absent" is `not (value > "")`: every
//! stored value is non-empty, and a value comparison on a missing key is false
//! in both etcds (`!=` is not used: the simulator gets it wrong for missing
//! keys). The transaction's failure branch reads the key, so a conflict
//! reports the version found.
//!
//! Leases: etcd's. A TTL is rounded up to whole seconds (real etcd may raise
//! it to its minimum, 1.5 election timeouts). Granting also writes a liveness
//! key `<ns>/leases/<id>` bound to the lease, and a leased write is a
//! transaction `liveness key present ? (the guarded write above) : nothing`,
//! the guarded write nested as a transaction of its own. etcd
//! deletes the key in the same step that ends the lease, so the check is exact,
//! and it spares the simulated etcd a transaction that binds a key to a missing
//! lease, which panics it (real etcd answers "lease not found"). A lease thus
//! belongs to the namespace that granted it.
//!
//! Change notification: `revision()` follows etcd's cluster revision, which
//! grows with every change to any key, these included. A background task polls
//! it (a read of `<ns>/writers` every [`REVISION_POLL_INTERVAL`]) in both
//! builds: the simulated client has no watch, and one mechanism for both builds
//! is one mechanism tested. Each response this store receives also advances it,
//! so a store's own writes show at once. The number also moves for changes to
//! no key of this namespace (other namespaces, the bookkeeping keys; in the
//! simulator also keep-alives and refused transactions), so a watcher must
//! treat a change as "re-read", never as "exactly one thing changed". The task
//! stops when the store drops.
//!
//! Every request is bounded by [`REQUEST_TIMEOUT`]: an unreachable etcd is
//! [`MetaError::Unavailable`] naming the endpoints and the operation, never a
//! hang.
//!
//! Known differences of the simulated etcd (madsim-etcd-client 0.7) that code
//! running in the simulator must live with: leases expire on a 1 s tick, so a
//! lease may end up to 1 s before its TTL; its revision also moves for lease
//! grants, keep-alives and refused transactions; and re-putting a leased key
//! with the same lease unbinds it there (the key then outlives the lease, and
//! a later write or delete of it panics the simulated server), where real etcd
//! keeps the binding.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;

use super::store::{LeaseId, MetaError, MetaResult, MetaStore, Versioned};

/// The longest any one etcd request may take before it counts as unavailable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the revision is polled for changes made by other clients.
pub const REVISION_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest lease etcd can grant.
const LEASE_TTL_S_MIN: u64 = 1;
/// The value of a lease's liveness key, `<ns>/leases/<id>`.
const LEASE_LIVENESS_VALUE: &[u8] = b"alive";

/// First byte of every stored value; bumped on any layout change, never reused.
const VALUE_FORMAT: u8 = 1;
const VALUE_HEADER_BYTES: usize = 1 + 8 + 8;
// A non-empty header is what makes "absent" testable as `not (value > "")`.
const _: () = assert!(VALUE_HEADER_BYTES > 0);

/// Turns payloads into stored values that no other write ever stores.
#[derive(Debug)]
struct ValueEncoder {
    /// A revision of a write this store made, so no other store's.
    writer_id: u64,
    /// Numbers this store's writes.
    write_seq: AtomicU64,
}

impl ValueEncoder {
    fn new(writer_id: u64) -> Self {
        Self { writer_id, write_seq: AtomicU64::new(0) }
    }

    /// The stored bytes for a new write of `payload`, unique to this write.
    fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let seq = self.write_seq.fetch_add(1, Ordering::Relaxed);
        let mut stored = Vec::with_capacity(VALUE_HEADER_BYTES + payload.len());
        stored.push(VALUE_FORMAT);
        stored.extend_from_slice(&self.writer_id.to_be_bytes());
        stored.extend_from_slice(&seq.to_be_bytes());
        stored.extend_from_slice(payload);
        stored
    }

    /// The payload of a stored value, or `None` if it is not one of ours.
    fn decode(stored: &[u8]) -> Option<&[u8]> {
        match stored.first() {
            Some(&VALUE_FORMAT) if stored.len() >= VALUE_HEADER_BYTES => Some(&stored[VALUE_HEADER_BYTES..]),
            _ => None,
        }
    }
}

/// The [`MetaStore`] on etcd.
pub struct EtcdStore {
    client: Client,
    /// The endpoints as given, for error messages.
    endpoints: String,
    /// `<escaped namespace>/`.
    prefix: String,
    values: ValueEncoder,
    revision_tx: Arc<watch::Sender<u64>>,
    poller: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("writer_id", &self.values.writer_id)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` ("host:port") and keeps
    /// every key under `namespace`. Registers this store as a writer, so an
    /// unreachable etcd fails here, with [`MetaError::Unavailable`].
    pub async fn connect(endpoints: Vec<String>, namespace: &str) -> MetaResult<EtcdStore> {
        let endpoints_text = endpoints.join(",");
        if endpoints.is_empty() {
            return Err(MetaError::Unavailable("no etcd endpoints given".to_owned()));
        }
        let client = bounded(&endpoints_text, "connect", None, Client::connect(&endpoints, None)).await?;
        let prefix = namespace_prefix(namespace);
        let writers_key = format!("{prefix}writers");
        let mut kv = client.kv_client();
        let registered = bounded(
            &endpoints_text,
            "register as a writer",
            None,
            kv.put(writers_key.as_str(), Vec::<u8>::new(), None),
        )
        .await?;
        let writer_id = header_revision(registered.header())
            .ok_or_else(|| MetaError::Unavailable(format!("etcd at {endpoints_text}: a put answered no revision")))?;

        let (revision_tx, _) = watch::channel(writer_id);
        let revision_tx = Arc::new(revision_tx);
        let poller = tokio::spawn(poll_revision(kv, writers_key, revision_tx.clone(), endpoints_text.clone()));
        tracing::info!(endpoints = %endpoints_text, %prefix, writer_id, "etcd metadata store connected");
        Ok(EtcdStore {
            client,
            endpoints: endpoints_text,
            prefix,
            values: ValueEncoder::new(writer_id),
            revision_tx,
            poller,
        })
    }

    fn data_key(&self, key: &str) -> String {
        format!("{}kv/{key}", self.prefix)
    }

    fn lease_key(&self, lease: LeaseId) -> String {
        format!("{}leases/{lease}", self.prefix)
    }

    /// Runs one etcd request within [`REQUEST_TIMEOUT`]; see [`bounded`].
    async fn call<T>(
        &self,
        operation: &str,
        lease: Option<LeaseId>,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> MetaResult<T> {
        bounded(&self.endpoints, operation, lease, request).await
    }

    /// Advances the revision channel to `revision` if that is news.
    fn observe(&self, revision: Option<u64>) {
        if let Some(revision) = revision {
            advance(&self.revision_tx, revision);
        }
    }

    /// The key as etcd holds it now, undecoded.
    async fn read(&self, key: &str) -> MetaResult<Option<KeyValue>> {
        let mut kv = self.client.kv_client();
        let response = self.call(&format!("get {key:?}"), None, kv.get(self.data_key(key), None)).await?;
        self.observe(header_revision(response.header()));
        Ok(response.kvs().first().cloned())
    }

    /// The key's current bytes, provided its version is `expected`.
    async fn read_expecting(&self, key: &str, expected: u64) -> MetaResult<Vec<u8>> {
        let current = self.read(key).await?;
        match current {
            Some(kv) if version(&kv) == expected => Ok(kv.value().to_vec()),
            other => Err(MetaError::Conflict {
                key: key.to_owned(),
                expected: Some(expected),
                found: other.as_ref().map(version),
            }),
        }
    }

    fn malformed(&self, operation: &str, what: &str) -> MetaError {
        MetaError::Unavailable(format!("etcd at {}: {operation}: malformed answer: {what}", self.endpoints))
    }
}

#[async_trait]
impl MetaStore for EtcdStore {
    async fn get(&self, key: &str) -> MetaResult<Option<Versioned>> {
        self.read(key).await?.map(|kv| decode(key, &kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> MetaResult<Vec<(String, Versioned)>> {
        let data_prefix = self.data_key("");
        let mut kv = self.client.kv_client();
        let request = kv.get(self.data_key(prefix), Some(GetOptions::new().with_prefix()));
        let response = self.call(&format!("list {prefix:?}"), None, request).await?;
        self.observe(header_revision(response.header()));
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = kv
                    .key()
                    .strip_prefix(data_prefix.as_bytes())
                    .and_then(|key| std::str::from_utf8(key).ok())
                    .ok_or_else(|| MetaError::Corrupt(format!("etcd key {:?} is not a weir key", kv.key())))?;
                Ok((key.to_owned(), decode(key, kv)?))
            })
            .collect()
    }

    async fn put(&self, key: &str, value: Vec<u8>, expected: Option<u64>, lease: Option<LeaseId>) -> MetaResult<u64> {
        let data_key = self.data_key(key);
        let options = lease.map(|lease| PutOptions::new().with_lease(lease));
        let write = TxnOp::put(data_key.as_str(), self.values.encode(&value), options);
        let read = TxnOp::get(data_key.as_str(), None);
        // The write guarded by "the key is as expected"; for `None` the
        // compare is "exists", so the write is the failure branch.
        let (guarded, applied_when) = match expected {
            None => {
                let exists = Compare::value(data_key.as_str(), CompareOp::Greater, Vec::<u8>::new());
                (Txn::new().when([exists]).and_then([read]).or_else([write]), false)
            }
            Some(expected_version) => {
                let current = self.read_expecting(key, expected_version).await?;
                let unchanged = Compare::value(data_key.as_str(), CompareOp::Equal, current);
                (Txn::new().when([unchanged]).and_then([write]).or_else([read]), true)
            }
        };
        // A leased write runs only while the lease's liveness key exists.
        let txn = match lease {
            None => guarded,
            Some(lease) => {
                let alive = Compare::value(self.lease_key(lease), CompareOp::Equal, LEASE_LIVENESS_VALUE);
                Txn::new().when([alive]).and_then([TxnOp::txn(guarded)])
            }
        };

        let mut kv = self.client.kv_client();
        let operation = format!("put {key:?}");
        let response = self.call(&operation, lease, kv.txn(txn)).await?;
        let revision = header_revision(response.header());
        self.observe(revision);
        let guarded_response = match lease {
            None => response,
            Some(lease) if !response.succeeded() => return Err(MetaError::LeaseExpired(lease)),
            Some(_) => {
                nested_response(&response).ok_or_else(|| self.malformed(&operation, "no nested transaction answer"))?
            }
        };
        if guarded_response.succeeded() != applied_when {
            let found = found_version(&guarded_response);
            return Err(MetaError::Conflict { key: key.to_owned(), expected, found });
        }
        revision.ok_or_else(|| self.malformed(&operation, "no revision"))
    }

    async fn delete(&self, key: &str, expected: u64) -> MetaResult<()> {
        let current = self.read_expecting(key, expected).await?;
        let data_key = self.data_key(key);
        let unchanged = Compare::value(data_key.as_str(), CompareOp::Equal, current);
        let txn = Txn::new()
            .when([unchanged])
            .and_then([TxnOp::delete(data_key.as_str(), None)])
            .or_else([TxnOp::get(data_key.as_str(), None)]);
        let mut kv = self.client.kv_client();
        let response = self.call(&format!("delete {key:?}"), None, kv.txn(txn)).await?;
        self.observe(header_revision(response.header()));
        if !response.succeeded() {
            let found = found_version(&response);
            return Err(MetaError::Conflict { key: key.to_owned(), expected: Some(expected), found });
        }
        Ok(())
    }

    async fn grant_lease(&self, ttl: Duration) -> MetaResult<LeaseId> {
        let ttl_s = ttl.as_millis().div_ceil(1000).max(u128::from(LEASE_TTL_S_MIN));
        let ttl_s = i64::try_from(ttl_s).unwrap_or(i64::MAX);
        let mut leases = self.client.lease_client();
        let granted = self.call(&format!("grant a {ttl_s} s lease"), None, leases.grant(ttl_s, None)).await?;
        let lease = granted.id();
        let mut kv = self.client.kv_client();
        let liveness = PutOptions::new().with_lease(lease);
        let request = kv.put(self.lease_key(lease), LEASE_LIVENESS_VALUE, Some(liveness));
        match self.call(&format!("bind lease {lease}'s liveness key"), Some(lease), request).await {
            Ok(response) => self.observe(header_revision(response.header())),
            // Expired already: its users hear so on first use.
            Err(MetaError::LeaseExpired(_)) => {}
            Err(error) => return Err(error),
        }
        Ok(lease)
    }

    async fn keep_alive(&self, lease: LeaseId) -> MetaResult<()> {
        // Both clients send one keep-alive and wait for its answer inside
        // `keep_alive`; dropping the keeper and stream ends the exchange.
        let mut leases = self.client.lease_client();
        let (_keeper, _stream) =
            self.call(&format!("keep lease {lease} alive"), Some(lease), leases.keep_alive(lease)).await?;
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> MetaResult<()> {
        let mut leases = self.client.lease_client();
        let response = self.call(&format!("revoke lease {lease}"), Some(lease), leases.revoke(lease)).await?;
        self.observe(header_revision(response.header()));
        Ok(())
    }

    fn revision(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }
}

/// `<escaped namespace>/`: escaping `%` and `/` keeps namespaces prefix-free.
fn namespace_prefix(namespace: &str) -> String {
    format!("{}/", namespace.replace('%', "%25").replace('/', "%2F"))
}

/// Runs one etcd request within [`REQUEST_TIMEOUT`]. A "lease not found"
/// answer about `lease` is [`MetaError::LeaseExpired`]; every other failure is
/// [`MetaError::Unavailable`] naming the endpoints and the operation.
async fn bounded<T>(
    endpoints: &str,
    operation: &str,
    lease: Option<LeaseId>,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> MetaResult<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => match lease {
            Some(lease) if is_lease_not_found(&error) => Err(MetaError::LeaseExpired(lease)),
            _ => Err(MetaError::Unavailable(format!("etcd at {endpoints}: {operation} failed: {error}"))),
        },
        Err(_) => Err(MetaError::Unavailable(format!(
            "etcd at {endpoints}: {operation} timed out after {} ms",
            REQUEST_TIMEOUT.as_millis()
        ))),
    }
}

/// Real etcd says "etcdserver: requested lease not found" (gRPC NotFound) to
/// most lease requests, and its client turns a keep-alive answered with ttl 0
/// into "lease not found"; the simulated etcd uses the former everywhere.
fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::NotFound && status.message().contains("lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Option<u64> {
    header.and_then(|header| u64::try_from(header.revision()).ok())
}

fn version(kv: &KeyValue) -> u64 {
    u64::try_from(kv.mod_revision()).expect("etcd revisions are positive")
}

/// The answer of the transaction nested in a leased write.
fn nested_response(response: &etcd_client::TxnResponse) -> Option<etcd_client::TxnResponse> {
    response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Txn(nested) => Some(nested),
        _ => None,
    })
}

/// The version of the key read by a transaction's read branch.
fn found_version(response: &etcd_client::TxnResponse) -> Option<u64> {
    let read = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => Some(get),
        _ => None,
    });
    read.and_then(|get| get.kvs().first().map(version))
}

fn decode(key: &str, kv: &KeyValue) -> MetaResult<Versioned> {
    let stored = kv.value();
    let payload = ValueEncoder::decode(stored).ok_or_else(|| {
        MetaError::Corrupt(format!(
            "etcd value of {key:?} ({} bytes, first byte {:?}) is not a weir value of format {VALUE_FORMAT}",
            stored.len(),
            stored.first()
        ))
    })?;
    Ok(Versioned { value: payload.to_vec(), version: version(kv) })
}

fn advance(revision_tx: &watch::Sender<u64>, revision: u64) {
    revision_tx.send_if_modified(|current| {
        let newer = revision > *current;
        if newer {
            *current = revision;
        }
        newer
    });
}

/// Feeds the revision channel with etcd's revision until aborted (when the
/// store drops). Failures are logged once per outage and retried.
async fn poll_revision(
    mut kv: etcd_client::KvClient,
    writers_key: String,
    revision_tx: Arc<watch::Sender<u64>>,
    endpoints: String,
) {
    let mut failing = false;
    loop {
        tokio::time::sleep(REVISION_POLL_INTERVAL).await;
        match bounded(&endpoints, "poll the revision", None, kv.get(writers_key.as_str(), None)).await {
            Ok(response) => {
                if failing {
                    tracing::info!(%endpoints, "etcd revision polling recovered");
                    failing = false;
                }
                if let Some(revision) = header_revision(response.header()) {
                    advance(&revision_tx, revision);
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "etcd revision polling failed; retrying");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_writes_store_the_same_bytes() {
        let store = ValueEncoder::new(7);
        let other = ValueEncoder::new(8);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            for encoder in [&store, &other] {
                let stored = encoder.encode(b"same payload");
                assert_eq!(ValueEncoder::decode(&stored), Some(&b"same payload"[..]));
                assert!(seen.insert(stored), "a stored value repeated");
            }
        }
        assert_eq!(ValueEncoder::decode(&store.encode(b"")), Some(&b""[..]), "an empty payload is a non-empty value");
    }

    #[test]
    fn foreign_values_do_not_decode() {
        let stored = ValueEncoder::new(1).encode(b"x");
        assert_eq!(ValueEncoder::decode(&stored[..VALUE_HEADER_BYTES - 1]), None, "too short");
        let mut other_format = stored.clone();
        other_format[0] = VALUE_FORMAT + 1;
        assert_eq!(ValueEncoder::decode(&other_format), None, "another format");
        assert_eq!(ValueEncoder::decode(b""), None);
    }

    #[test]
    fn namespace_prefixes_are_prefix_free() {
        let namespaces = ["a", "a/b", "a%2Fb", "ab", "", "%", "a/", "/a"];
        let prefixes: Vec<String> = namespaces.iter().map(|ns| namespace_prefix(ns)).collect();
        for (i, a) in prefixes.iter().enumerate() {
            for (j, b) in prefixes.iter().enumerate() {
                if i != j {
                    assert!(
                        !b.starts_with(a.as_str()),
                        "{:?} -> {a:?} is a prefix of {:?} -> {b:?}",
                        namespaces[i],
                        namespaces[j]
                    );
                }
            }
        }
    }
}
