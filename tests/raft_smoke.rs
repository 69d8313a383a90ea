//! Smoke test for `weir::sys::raft_runtime::WeirRuntime`: a single-node
//! openraft group initializes, elects itself, commits one client write and
//! applies it to its state machine.
//!
//! Runs in both builds:
//!
//! ```text
//! cargo test --test raft_smoke
//! RUSTFLAGS="--cfg madsim" cargo test --test raft_smoke
//! ```
//!
//! `#[tokio::test]` is real tokio normally; under `--cfg madsim` madsim-tokio
//! expands it to a madsim simulation, so this also proves openraft runs inside
//! the simulator without touching the real tokio runtime.
//!
//! Storage is in memory and kept in this file: a log store (vote, committed
//! log id, entries) and a key/value state machine whose snapshot is its map as
//! JSON. One node has no peers, so the network is never called.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, AsyncRuntime, BasicNode, Config, Entry, EntryPayload, LogId, LogState, OptionalSend, Raft, RaftLogReader,
    RaftNetwork, RaftNetworkFactory, RaftSnapshotBuilder, ServerState, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use weir::sys::raft_runtime::WeirRuntime;

/// The whole test must finish within this much (real or simulated) time.
const TEST_DEADLINE: Duration = Duration::from_secs(30);
/// How long to wait for any one raft milestone (leadership, apply).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

const NODE_ID: u64 = 1;

/// Application request: set `key` to `value`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Put {
    key: String,
    value: String,
}

/// Application response: the value `key` held before the write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PutResponse {
    previous: Option<String>,
}

openraft::declare_raft_types!(
    SmokeConfig:
        D = Put,
        R = PutResponse,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<SmokeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = WeirRuntime,
);

type C = SmokeConfig;
type StorageResult<T> = Result<T, StorageError<u64>>;

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test]
async fn single_node_group_commits_and_applies_a_write() {
    init_tracing();
    tokio::time::timeout(TEST_DEADLINE, single_node_group())
        .await
        .expect("raft smoke test did not finish within its deadline");
}

async fn single_node_group() {
    // --- set up ---------------------------------------------------------------
    tracing::info!("set up: one node, in-memory log and state machine");
    let config = Config {
        cluster_name: "raft-smoke".to_string(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    };
    let config = Arc::new(config.validate().expect("valid raft config"));
    let log = MemLog::default();
    let sm = MemStateMachine::default();
    let raft = Raft::<C>::new(NODE_ID, config, NoNetwork, log.clone(), sm.clone()).await.expect("raft node starts");

    // --- act --------------------------------------------------------------------
    tracing::info!("act: initialize a one-member cluster and wait for leadership");
    let members = BTreeMap::from([(NODE_ID, BasicNode::new("127.0.0.1:0"))]);
    raft.initialize(members).await.expect("initialize");
    let metrics = raft
        .wait(Some(STEP_TIMEOUT))
        .state(ServerState::Leader, "node 1 becomes leader")
        .await
        .expect("node 1 becomes leader");
    assert_eq!(metrics.current_leader, Some(NODE_ID));

    tracing::info!("act: client_write one entry");
    let put = Put { key: "greeting".to_string(), value: "hello".to_string() };
    let written = raft.client_write(put).await.expect("client_write");
    tracing::info!(log_id = %written.log_id, "write committed");

    // --- check ------------------------------------------------------------------
    tracing::info!("check: leader, committed log id, applied value");
    // Log layout: 0 = initial membership, 1 = the new leader's blank entry,
    // 2 = our write, in term 1.
    assert_eq!(written.log_id.index, 2, "the write is the third log entry");
    assert_eq!(written.log_id.leader_id.term, 1);
    assert_eq!(written.data, PutResponse { previous: None });
    assert_eq!(written.membership, None);

    let metrics = raft.wait(Some(STEP_TIMEOUT)).applied_index(Some(2), "write applied").await.expect("write applied");
    assert_eq!(metrics.current_leader, Some(NODE_ID));
    assert_eq!(metrics.state, ServerState::Leader);
    assert_eq!(metrics.last_log_index, Some(2));
    assert_eq!(metrics.last_applied, Some(written.log_id));

    // The log store saw the commit and holds the entry.
    assert_eq!(log.committed(), Some(written.log_id));
    match log.entry(2).map(|e| e.payload) {
        Some(EntryPayload::Normal(Put { key, value })) => {
            assert_eq!((key.as_str(), value.as_str()), ("greeting", "hello"));
        }
        other => panic!("log index 2 should hold the write, got {other:?}"),
    }

    // The state machine applied it.
    assert_eq!(sm.get("greeting").as_deref(), Some("hello"));
    assert_eq!(sm.last_applied(), Some(written.log_id));

    // A snapshot built now carries the applied state.
    raft.trigger().snapshot().await.expect("trigger snapshot");
    raft.wait(Some(STEP_TIMEOUT)).snapshot(written.log_id, "snapshot at the write").await.expect("snapshot built");
    let (meta, data) = sm.current_snapshot().expect("snapshot stored");
    assert_eq!(meta.last_log_id, Some(written.log_id));
    let map: BTreeMap<String, String> = serde_json::from_slice(&data).expect("snapshot is JSON");
    assert_eq!(map.get("greeting").map(String::as_str), Some("hello"));

    raft.shutdown().await.expect("clean shutdown");
    tracing::info!("done");
}

/// `WeirRuntime`'s own timeout future: passes a ready future, fails a stuck one.
#[tokio::test]
async fn weir_runtime_timeout_passes_and_elapses() {
    init_tracing();
    let ready = WeirRuntime::timeout(Duration::from_millis(100), async { 7 }).await;
    assert_eq!(ready, Ok(7));

    let start = tokio::time::Instant::now();
    let stuck = WeirRuntime::timeout(Duration::from_millis(100), std::future::pending::<()>()).await;
    assert!(stuck.is_err(), "a pending future must time out");
    assert!(start.elapsed() >= Duration::from_millis(100));
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "raft_smoke=info,openraft=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------
// In-memory log store
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct LogInner {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
    entries: BTreeMap<u64, Entry<C>>,
}

/// Log store; clones share the same log (the clone is also the log reader).
#[derive(Debug, Clone, Default)]
struct MemLog(Arc<Mutex<LogInner>>);

impl MemLog {
    fn inner(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.0.lock().expect("log lock")
    }

    fn committed(&self) -> Option<LogId<u64>> {
        self.inner().committed
    }

    fn entry(&self, index: u64) -> Option<Entry<C>> {
        self.inner().entries.get(&index).cloned()
    }
}

impl RaftLogReader<C> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<C>>> {
        Ok(self.inner().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<C> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> StorageResult<LogState<C>> {
        let inner = self.inner();
        let last_log_id = inner.entries.values().next_back().map(|e| e.log_id).or(inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.inner().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        Ok(self.inner().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        self.inner().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self.inner().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut inner = self.inner();
            for entry in entries {
                inner.entries.insert(entry.log_id.index, entry);
            }
        }
        // Memory is "durable" as soon as it is written.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    /// Delete entries at and after `log_id.index` (conflicting suffix).
    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.inner().entries.split_off(&log_id.index);
        Ok(())
    }

    /// Delete entries up to and including `log_id.index` (compacted prefix).
    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let mut inner = self.inner();
        inner.last_purged = Some(log_id);
        inner.entries = inner.entries.split_off(&(log_id.index + 1));
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// In-memory key/value state machine
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct SmInner {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, BasicNode>,
    data: BTreeMap<String, String>,
    /// The latest snapshot: its metadata and its bytes (the map as JSON).
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// State machine; clones share the same state (the clone is also the
/// snapshot builder, and lets the test look inside).
#[derive(Debug, Clone, Default)]
struct MemStateMachine(Arc<Mutex<SmInner>>);

impl MemStateMachine {
    fn inner(&self) -> std::sync::MutexGuard<'_, SmInner> {
        self.0.lock().expect("state machine lock")
    }

    fn get(&self, key: &str) -> Option<String> {
        self.inner().data.get(key).cloned()
    }

    fn last_applied(&self) -> Option<LogId<u64>> {
        self.inner().last_applied
    }

    fn current_snapshot(&self) -> Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)> {
        self.inner().snapshot.clone()
    }
}

impl RaftSnapshotBuilder<C> for MemStateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<C>> {
        let mut inner = self.inner();
        let data =
            serde_json::to_vec(&inner.data).map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?;
        inner.snapshots_built += 1;
        let snapshot_id = match inner.last_applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, inner.snapshots_built),
            None => format!("empty-{}", inner.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.last_membership.clone(),
            snapshot_id,
        };
        inner.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<C> for MemStateMachine {
    type SnapshotBuilder = MemStateMachine;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        let inner = self.inner();
        Ok((inner.last_applied, inner.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<PutResponse>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner();
        let mut responses = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let previous = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(Put { key, value }) => inner.data.insert(key, value),
                EntryPayload::Membership(membership) => {
                    inner.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    None
                }
            };
            // openraft expects exactly one response per applied entry.
            responses.push(PutResponse { previous });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let data: BTreeMap<String, String> = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e)))?;
        let mut inner = self.inner();
        inner.data = data;
        inner.last_applied = meta.last_log_id;
        inner.last_membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<C>>> {
        Ok(self.inner().snapshot.clone().map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

// ---------------------------------------------------------------------------
// Network: a single node has no peers to talk to
// ---------------------------------------------------------------------------

struct NoNetwork;

impl RaftNetworkFactory<C> for NoNetwork {
    type Network = NoNetwork;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        panic!("single-node group must not open a connection (to node {target})")
    }
}

impl RaftNetwork<C> for NoNetwork {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        unreachable!("a single-node group sends no RPCs")
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<C>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        unreachable!("a single-node group sends no RPCs")
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        unreachable!("a single-node group sends no RPCs")
    }
}
