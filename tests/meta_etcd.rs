//! The [`MetaStore`] contract on etcd (`weir::meta::EtcdStore`), in both builds:
//!
//! ```text
//! cargo test --test meta_etcd                              # a real etcd process on loopback
//! RUSTFLAGS="--cfg madsim" cargo test --test meta_etcd     # madsim's simulated etcd
//! ```
//!
//! One set of test bodies (`contract`) runs against either server; only the
//! harness differs. On tokio it starts Debian's `etcd` (`bash .ci/setup`
//! installs it) on free loopback ports with a fresh data directory and kills it
//! on drop. Inside madsim the simulated etcd serves on node 10.0.0.100 and the
//! bodies run on a client node, since network calls from the main test task
//! fail there.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use weir::meta::etcd::REQUEST_TIMEOUT;
use weir::meta::{EtcdStore, LeaseId, MetaError, MetaResult, MetaStore, Versioned};

use weir_sim::etcd as harness;

/// How long a failing request may take to report that etcd is unavailable.
const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(REQUEST_TIMEOUT.as_secs() + 5);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "meta_etcd=info,weir=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Starts an etcd and runs one contract body against it.
async fn check<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    init_tracing();
    let etcd = harness::EtcdServer::start().await;
    etcd.run(body(etcd.endpoint())).await;
}

#[tokio::test]
async fn put_is_compare_and_set() {
    check(contract::put_is_compare_and_set).await;
}

#[tokio::test]
async fn concurrent_increments_lose_no_update() {
    check(contract::concurrent_increments_lose_no_update).await;
}

#[tokio::test]
async fn versions_grow_with_every_write() {
    check(contract::versions_grow_with_every_write).await;
}

#[tokio::test]
async fn list_returns_prefix_matches_in_key_order() {
    check(contract::list_returns_prefix_matches_in_key_order).await;
}

#[tokio::test]
async fn namespaces_do_not_see_each_other() {
    check(contract::namespaces_do_not_see_each_other).await;
}

#[tokio::test]
async fn delete_with_stale_version_is_refused() {
    check(contract::delete_with_stale_version_is_refused).await;
}

#[tokio::test]
async fn expired_lease_removes_its_keys() {
    check(contract::expired_lease_removes_its_keys).await;
}

#[tokio::test]
async fn keep_alive_extends_the_lease() {
    check(contract::keep_alive_extends_the_lease).await;
}

#[tokio::test]
async fn revoke_removes_the_lease_keys() {
    check(contract::revoke_removes_the_lease_keys).await;
}

#[tokio::test]
async fn revision_watch_sees_another_clients_change() {
    check(contract::revision_watch_sees_another_clients_change).await;
}

#[tokio::test]
async fn connecting_to_no_etcd_is_unavailable() {
    init_tracing();
    let etcd = harness::EtcdServer::start().await;
    etcd.run(contract::connecting_is_unavailable(etcd.dead_endpoint())).await;
}

#[tokio::test]
async fn a_dead_etcd_is_unavailable_not_a_hang() {
    init_tracing();
    let mut etcd = harness::EtcdServer::start().await;
    let endpoint = etcd.endpoint();
    let before = etcd.run(contract::before_etcd_dies(endpoint.clone())).await;
    tracing::info!("act: etcd dies");
    etcd.stop().await;
    etcd.run(contract::after_etcd_died(before, endpoint)).await;
}

/// The test bodies, the same for a real and a simulated etcd.
mod contract {
    use super::*;

    /// Leases expire and watchers hear of changes within this much time.
    const WITHIN: Duration = Duration::from_secs(10);
    const POLL: Duration = Duration::from_millis(100);

    async fn connect(endpoint: &str, namespace: &str) -> EtcdStore {
        EtcdStore::connect(vec![endpoint.to_owned()], namespace)
            .await
            .unwrap_or_else(|e| panic!("connecting to etcd at {endpoint}: {e}"))
    }

    async fn value(store: &EtcdStore, key: &str) -> Option<Vec<u8>> {
        store.get(key).await.unwrap().map(|versioned| versioned.value)
    }

    async fn keys(store: &EtcdStore, prefix: &str) -> Vec<String> {
        store.list(prefix).await.unwrap().into_iter().map(|(key, _)| key).collect()
    }

    /// Waits, boundedly, until `key` is gone (its lease expired).
    async fn wait_until_gone(store: &EtcdStore, key: &str) {
        let gone = tokio::time::timeout(WITHIN, async {
            while value(store, key).await.is_some() {
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        assert!(gone.is_ok(), "{key} was still there {WITHIN:?} after its lease should have expired");
    }

    /// Whether the revision channel satisfies `done` within [`WITHIN`].
    async fn reaches(rx: &mut watch::Receiver<u64>, done: impl Fn(u64) -> bool) -> bool {
        let waited = tokio::time::timeout(WITHIN, rx.wait_for(|revision| done(*revision))).await;
        matches!(waited, Ok(Ok(_)))
    }

    fn assert_lease_expired<T: std::fmt::Debug>(what: &str, result: MetaResult<T>, lease: LeaseId) {
        assert!(matches!(result, Err(MetaError::LeaseExpired(id)) if id == lease), "{what}: {result:?}");
    }

    pub async fn put_is_compare_and_set(endpoint: String) {
        let store = connect(&endpoint, "cas").await;

        tracing::info!("act: create an absent key");
        let v1 = store.put("topics/a", b"one".to_vec(), None, None).await.unwrap();

        tracing::info!("check: creating it again conflicts and reports the version found");
        let again = store.put("topics/a", b"dup".to_vec(), None, None).await.unwrap_err();
        assert!(matches!(again, MetaError::Conflict { expected: None, found: Some(f), .. } if f == v1), "{again:?}");

        tracing::info!("check: a write expecting the current version applies, a stale one does not");
        let v2 = store.put("topics/a", b"two".to_vec(), Some(v1), None).await.unwrap();
        assert!(v2 > v1, "version {v2} after {v1}");
        let stale = store.put("topics/a", b"stale".to_vec(), Some(v1), None).await.unwrap_err();
        assert!(
            matches!(stale, MetaError::Conflict { expected: Some(e), found: Some(f), .. } if e == v1 && f == v2),
            "{stale:?}"
        );
        let absent = store.put("topics/b", b"x".to_vec(), Some(v2), None).await.unwrap_err();
        assert!(matches!(absent, MetaError::Conflict { found: None, .. }), "{absent:?}");

        tracing::info!("check: the conflicts changed nothing");
        assert_eq!(store.get("topics/a").await.unwrap(), Some(Versioned { value: b"two".to_vec(), version: v2 }));
        assert_eq!(store.get("topics/b").await.unwrap(), None);

        tracing::info!("act: delete and re-create with the very same payload: v2 stays stale");
        store.delete("topics/a", v2).await.unwrap();
        let v3 = store.put("topics/a", b"two".to_vec(), None, None).await.unwrap();
        let aba = store.put("topics/a", b"late".to_vec(), Some(v2), None).await.unwrap_err();
        assert!(matches!(aba, MetaError::Conflict { found: Some(f), .. } if f == v3), "{aba:?}");
        assert_eq!(value(&store, "topics/a").await, Some(b"two".to_vec()));

        tracing::info!("check: any payload round-trips, the empty one included");
        let all_bytes: Vec<u8> = (0..=255).collect();
        store.put("blob", all_bytes.clone(), None, None).await.unwrap();
        store.put("empty", vec![], None, None).await.unwrap();
        assert_eq!(value(&store, "blob").await, Some(all_bytes));
        assert_eq!(value(&store, "empty").await, Some(vec![]));
        let empty_exists = store.put("empty", b"x".to_vec(), None, None).await;
        assert!(matches!(empty_exists, Err(MetaError::Conflict { found: Some(_), .. })), "{empty_exists:?}");
    }

    pub async fn concurrent_increments_lose_no_update(endpoint: String) {
        const WRITERS: u64 = 4;
        const INCREMENTS: u64 = 5;
        let mut stores = Vec::new();
        for _ in 0..WRITERS {
            stores.push(connect(&endpoint, "counter").await);
        }

        tracing::info!("act: every store increments one counter by read, then compare-and-set");
        let conflicts: u64 =
            futures::future::join_all(stores.iter().map(|store| increment(store, INCREMENTS))).await.into_iter().sum();

        tracing::info!(conflicts, "check: every acknowledged increment is in the count");
        let count = counter(stores[0].get("counter").await.unwrap()).0;
        assert_eq!(count, WRITERS * INCREMENTS, "increments were lost ({conflicts} conflicts)");
    }

    /// The counter's value and version (0 and `None` while absent).
    fn counter(versioned: Option<Versioned>) -> (u64, Option<u64>) {
        versioned.map_or((0, None), |v| {
            (u64::from_be_bytes(v.value.try_into().expect("an 8-byte counter")), Some(v.version))
        })
    }

    /// Increments the counter `times`, retrying on conflict; returns the conflicts.
    async fn increment(store: &EtcdStore, times: u64) -> u64 {
        const ATTEMPTS_MAX: u64 = 1_000;
        let mut conflicts = 0;
        let mut done = 0;
        for _ in 0..ATTEMPTS_MAX {
            if done == times {
                return conflicts;
            }
            let (count, expected) = counter(store.get("counter").await.unwrap());
            match store.put("counter", (count + 1).to_be_bytes().to_vec(), expected, None).await {
                Ok(_) => done += 1,
                Err(MetaError::Conflict { .. }) => conflicts += 1,
                Err(e) => panic!("increment failed: {e}"),
            }
        }
        panic!("{done} of {times} increments after {ATTEMPTS_MAX} attempts");
    }

    pub async fn versions_grow_with_every_write(endpoint: String) {
        let store = connect(&endpoint, "versions").await;
        let mut version_last = 0;
        for (i, key) in ["c", "a", "b", "a", "c"].iter().enumerate() {
            let expected = store.get(key).await.unwrap().map(|v| v.version);
            let version = store.put(key, vec![i as u8], expected, None).await.unwrap();
            assert!(version > version_last, "version {version} after {version_last}");
            assert_eq!(store.get(key).await.unwrap().unwrap().version, version, "get reports the write's version");
            assert!(*store.revision().borrow() >= version, "a store's own write shows in its revision at once");
            version_last = version;
        }
        let version = store.get("b").await.unwrap().unwrap().version;
        store.delete("b", version).await.unwrap();
        assert!(*store.revision().borrow() > version_last, "a delete is a change too");
        let recreated = store.put("b", vec![9], None, None).await.unwrap();
        assert!(recreated > version_last, "a re-created key's version {recreated} is new");
    }

    pub async fn list_returns_prefix_matches_in_key_order(endpoint: String) {
        let store = connect(&endpoint, "list").await;
        for key in ["brokers/2", "topics/x", "brokers/10", "brokers/1", "brokers", "brokersX/1"] {
            store.put(key, key.as_bytes().to_vec(), None, None).await.unwrap();
        }
        let listed = store.list("brokers/").await.unwrap();
        let listed_keys: Vec<&str> = listed.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(listed_keys, ["brokers/1", "brokers/10", "brokers/2"]);
        for (key, versioned) in &listed {
            assert_eq!(versioned.value, key.as_bytes());
            assert_eq!(store.get(key).await.unwrap().as_ref(), Some(versioned), "list and get agree on {key}");
        }
        assert_eq!(
            keys(&store, "").await,
            ["brokers", "brokers/1", "brokers/10", "brokers/2", "brokersX/1", "topics/x"]
        );
        assert!(store.list("nothing/").await.unwrap().is_empty());
    }

    pub async fn namespaces_do_not_see_each_other(endpoint: String) {
        tracing::info!("set up: stores in namespaces that share prefixes as strings");
        let alpha = connect(&endpoint, "alpha").await;
        let alpha_again = connect(&endpoint, "alpha").await;
        let beta = connect(&endpoint, "beta").await;
        let nested = connect(&endpoint, "alpha/kv").await;

        tracing::info!("act: each creates the same key");
        let version = alpha.put("k", b"alpha".to_vec(), None, None).await.unwrap();
        beta.put("k", b"beta".to_vec(), None, None).await.expect("beta's k is not alpha's");
        nested.put("k", b"nested".to_vec(), None, None).await.expect("alpha/kv's k is not alpha's");
        nested.put("kv/k", b"nested deeper".to_vec(), None, None).await.unwrap();

        tracing::info!("check: each sees its own, and only its own");
        assert_eq!(value(&alpha, "k").await, Some(b"alpha".to_vec()));
        assert_eq!(value(&beta, "k").await, Some(b"beta".to_vec()));
        assert_eq!(value(&nested, "k").await, Some(b"nested".to_vec()));
        assert_eq!(keys(&alpha, "").await, ["k"]);
        assert_eq!(keys(&beta, "").await, ["k"]);
        assert_eq!(keys(&nested, "").await, ["k", "kv/k"]);
        assert_eq!(
            alpha_again.get("k").await.unwrap(),
            Some(Versioned { value: b"alpha".to_vec(), version }),
            "the same namespace is the same key space"
        );
    }

    pub async fn delete_with_stale_version_is_refused(endpoint: String) {
        let store = connect(&endpoint, "delete").await;
        let v1 = store.put("k", b"1".to_vec(), None, None).await.unwrap();
        let v2 = store.put("k", b"2".to_vec(), Some(v1), None).await.unwrap();

        let stale = store.delete("k", v1).await.unwrap_err();
        assert!(
            matches!(stale, MetaError::Conflict { expected: Some(e), found: Some(f), .. } if e == v1 && f == v2),
            "{stale:?}"
        );
        assert_eq!(store.get("k").await.unwrap(), Some(Versioned { value: b"2".to_vec(), version: v2 }));

        store.delete("k", v2).await.unwrap();
        assert_eq!(value(&store, "k").await, None);
        let gone = store.delete("k", v2).await.unwrap_err();
        assert!(matches!(gone, MetaError::Conflict { found: None, .. }), "{gone:?}");
    }

    pub async fn expired_lease_removes_its_keys(endpoint: String) {
        let store = connect(&endpoint, "expiry").await;

        // (A few seconds: a loaded machine may take one to answer a call,
        // which must not expire the lease before the key is bound.)
        tracing::info!("set up: one key on a 3 s lease, one plain key");
        let lease = store.grant_lease(Duration::from_secs(3)).await.unwrap();
        store.put("brokers/1", b"up".to_vec(), None, Some(lease)).await.unwrap();
        store.put("topics/a", b"cfg".to_vec(), None, None).await.unwrap();
        assert_eq!(value(&store, "brokers/1").await, Some(b"up".to_vec()));

        tracing::info!("act: nobody keeps the lease alive");
        wait_until_gone(&store, "brokers/1").await;

        tracing::info!("check: only the leased key is gone, and the lease is unusable");
        assert_eq!(value(&store, "topics/a").await, Some(b"cfg".to_vec()));
        assert_lease_expired("keep-alive", store.keep_alive(lease).await, lease);
        assert_lease_expired("bind", store.put("brokers/1", b"again".to_vec(), None, Some(lease)).await, lease);
        assert_eq!(value(&store, "brokers/1").await, None, "a refused bind writes nothing");
    }

    pub async fn keep_alive_extends_the_lease(endpoint: String) {
        let store = connect(&endpoint, "keepalive").await;
        // Renewals every 500 ms leave 2.5 s for a slow one on a loaded machine.
        let ttl = Duration::from_secs(3);
        let lease = store.grant_lease(ttl).await.unwrap();
        store.put("brokers/1", b"up".to_vec(), None, Some(lease)).await.unwrap();

        tracing::info!("act: keep the lease alive for two ttls");
        let interval = ttl / 6;
        for _ in 0..12 {
            tokio::time::sleep(interval).await;
            store.keep_alive(lease).await.unwrap();
        }
        assert_eq!(value(&store, "brokers/1").await, Some(b"up".to_vec()), "kept alive past {ttl:?} x 2");

        tracing::info!("check: once the keep-alives stop, it expires");
        wait_until_gone(&store, "brokers/1").await;
    }

    pub async fn revoke_removes_the_lease_keys(endpoint: String) {
        let store = connect(&endpoint, "revoke").await;
        let ttl = Duration::from_secs(30);
        let lease = store.grant_lease(ttl).await.unwrap();
        let other = store.grant_lease(ttl).await.unwrap();
        assert_ne!(lease, other);
        store.put("brokers/1", b"a".to_vec(), None, Some(lease)).await.unwrap();
        store.put("brokers/1/addr", b"b".to_vec(), None, Some(lease)).await.unwrap();
        store.put("brokers/2", b"c".to_vec(), None, Some(other)).await.unwrap();

        store.revoke_lease(lease).await.unwrap();
        assert_eq!(keys(&store, "brokers/").await, ["brokers/2"]);
        assert_lease_expired("revoke again", store.revoke_lease(lease).await, lease);
        assert_lease_expired("keep-alive", store.keep_alive(lease).await, lease);
        assert_lease_expired("bind", store.put("brokers/3", vec![], None, Some(lease)).await, lease);
        store.keep_alive(other).await.expect("the other lease lives on");
        assert_eq!(keys(&store, "brokers/").await, ["brokers/2"]);
    }

    pub async fn revision_watch_sees_another_clients_change(endpoint: String) {
        let watcher = connect(&endpoint, "watch").await;
        let writer = connect(&endpoint, "watch").await;
        let mut rx = watcher.revision();
        let start = *rx.borrow_and_update();

        tracing::info!("act: another client writes; the watching store does nothing");
        let version = writer.put("k", b"v".to_vec(), None, None).await.unwrap();
        assert!(version > start);
        let seen = reaches(&mut rx, |revision| revision >= version).await;
        assert!(seen, "the watcher did not reach revision {version} within {WITHIN:?}");

        tracing::info!("act: a lease expires, a change no client makes");
        let lease = writer.grant_lease(Duration::from_secs(1)).await.unwrap();
        let leased = writer.put("leased", b"v".to_vec(), None, Some(lease)).await.unwrap();
        wait_until_gone(&writer, "leased").await;
        let expiry = reaches(&mut rx, |revision| revision > leased).await;
        assert!(expiry, "the watcher did not move past {leased} after the expiry");

        tracing::info!("check: dropping the store stops its polling task and closes the channel");
        drop(watcher);
        let closed = tokio::time::timeout(WITHIN, async { while rx.changed().await.is_ok() {} }).await;
        assert!(closed.is_ok(), "the revision channel stayed open after its store dropped");
    }

    pub async fn connecting_is_unavailable(dead_endpoint: String) {
        let connected = tokio::time::timeout(UNAVAILABLE_WITHIN, EtcdStore::connect(vec![dead_endpoint.clone()], "x"))
            .await
            .expect("connect hung instead of failing");
        assert_unavailable("connect", connected.map(|_| ()), &dead_endpoint);
    }

    /// What a store set up before etcd died.
    pub struct Before {
        store: EtcdStore,
        version: u64,
        lease: LeaseId,
    }

    pub async fn before_etcd_dies(endpoint: String) -> Before {
        let store = connect(&endpoint, "dead").await;
        let version = store.put("k", b"v".to_vec(), None, None).await.unwrap();
        let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        Before { store, version, lease }
    }

    pub async fn after_etcd_died(before: Before, endpoint: String) {
        let Before { store, version, lease } = before;
        // All at once, so the test takes one request timeout, not seven.
        let results = tokio::time::timeout(UNAVAILABLE_WITHIN, async {
            tokio::join!(
                store.get("k"),
                store.list(""),
                store.put("k", b"w".to_vec(), Some(version), None),
                store.delete("k", version),
                store.grant_lease(Duration::from_secs(5)),
                store.keep_alive(lease),
                store.revoke_lease(lease),
            )
        })
        .await
        .expect("requests to a dead etcd hung");
        let (get, list, put, delete, grant, keep_alive, revoke) = results;
        assert_unavailable("get", get.map(|_| ()), &endpoint);
        assert_unavailable("list", list.map(|_| ()), &endpoint);
        assert_unavailable("put", put.map(|_| ()), &endpoint);
        assert_unavailable("delete", delete, &endpoint);
        assert_unavailable("grant", grant.map(|_| ()), &endpoint);
        assert_unavailable("keep-alive", keep_alive, &endpoint);
        assert_unavailable("revoke", revoke, &endpoint);
    }

    fn assert_unavailable(what: &str, result: MetaResult<()>, endpoint: &str) {
        match result {
            Err(MetaError::Unavailable(message)) => {
                assert!(message.contains(endpoint), "{what}: the message names the endpoint: {message}")
            }
            other => panic!("{what} with etcd unreachable gave {other:?}, not Unavailable"),
        }
    }
}
