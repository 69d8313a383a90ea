//! Raft messages between brokers over gRPC.
//!
//! Every partition group on a broker shares one [`Connections`]: one gRPC
//! channel (one HTTP/2 connection) per peer broker carries the messages of
//! all groups, each tagged with its [`GroupId`]. The receiving broker's
//! [`RaftService`] finds the group in its [`Router`] and hands the request to
//! openraft. Requests and replies are openraft's own types, bincode-encoded:
//! record batches travel as raw bytes.
//!
//! Messages for one peer go through its outbox, which coalesces them: a
//! heartbeat (an append without entries) waits up to [`HEARTBEAT_LINGER`]
//! for other groups' heartbeats, and whatever queued while earlier calls
//! were in flight leaves in one `SendBatch` call. A thousand idle groups
//! thus cost a few calls per heartbeat interval per peer, not a thousand.

use std::collections::HashMap;
use std::error::Error;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::election::{covers, leader_lease, would_vote, Contact, PreVote, Voter};
use super::log_store::LogStore;
use super::reachability::Reachability;
use super::types::{GroupId, LogId, NodeId, RaftNode, TypeConfig};
use crate::log::batch::BATCH_BYTES_MAX;
use crate::proto::raft_client::RaftClient;
use crate::proto::raft_server;
use crate::proto::{RaftBatch, RaftBatchItem, RaftBatchReply, RaftGroup, RaftKind, RaftMessage, RaftReply};
use crate::sys::planted::{self, Bug};

/// A Raft message carries at most this many bytes of entries plus framing;
/// a batch of messages at most this many bytes in all (one message larger
/// than the rest of a batch's room travels alone).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 4 * BATCH_BYTES_MAX + (1 << 20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a heartbeat waits for company before it leaves.
/// (Small beside the heartbeat interval and far below an election timeout.)
pub const HEARTBEAT_LINGER: Duration = Duration::from_millis(20);
/// How long asking a replica to campaign may take.
const CAMPAIGN_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls in flight per peer; what queues meanwhile goes in the next call.
const CALLS_IN_FLIGHT: usize = 4;
/// Messages in one batch call, at most.
pub const BATCH_MESSAGES_MAX: usize = 1024;
/// A batch call that takes longer than this fails all its messages.
const BATCH_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A group as the router knows it.
#[derive(Clone)]
pub struct Routed {
    pub raft: RaftNode,
    /// Set while the replica waits for a leader to repair damage to its
    /// log: it grants no votes and starts no elections.
    pub abstaining: Arc<AtomicBool>,
    /// While abstaining, the votes it may still grant: to candidates whose
    /// last log id is at least this (see `LogStore::repair_bar`).
    pub repair_bar: Option<LogId>,
    pub log_store: LogStore,
    /// When the replica last heard from a leader.
    pub contact: Arc<Contact>,
}

/// The partition groups this broker is a member of, by group id.
#[derive(Default)]
pub struct Router {
    groups: RwLock<HashMap<GroupId, Routed>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("groups", &self.len()).finish()
    }
}

impl Router {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn register(&self, group: GroupId, routed: Routed) {
        self.groups.write().unwrap_or_else(|p| p.into_inner()).insert(group, routed);
    }

    pub fn unregister(&self, group: GroupId) -> Option<Routed> {
        self.groups.write().unwrap_or_else(|p| p.into_inner()).remove(&group)
    }

    pub fn get(&self, group: GroupId) -> Option<Routed> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).get(&group).cloned()
    }

    pub fn len(&self) -> usize {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(value).map_err(|e| e.to_string())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::deserialize(bytes).map_err(|e| e.to_string())
}

/// The gRPC service that delivers Raft messages to this broker's groups.
#[derive(Debug, Clone)]
pub struct RaftService {
    node_id: NodeId,
    router: Arc<Router>,
}

impl RaftService {
    pub fn new(node_id: NodeId, router: Arc<Router>) -> Self {
        Self { node_id, router }
    }
}

/// Raft's timer rule: granting a vote counts as hearing from a leader.
fn voted<E>(reply: Result<VoteResponse<NodeId>, E>, contact: &Contact) -> Result<VoteResponse<NodeId>, E> {
    if matches!(reply, Ok(ref r) if r.vote_granted) {
        contact.touch();
    }
    reply
}

fn bad_request(what: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{what}: {e}"))
}

impl RaftService {
    /// Hands one message to its group; the encoded reply.
    async fn deliver(&self, message: RaftMessage) -> Result<Vec<u8>, Status> {
        if message.target != self.node_id {
            return Err(Status::failed_precondition(format!(
                "Raft message for broker {} reached broker {}",
                message.target, self.node_id
            )));
        }
        let group = message.group.ok_or_else(|| Status::invalid_argument("Raft message without a group"))?;
        let group = GroupId { topic_id: group.topic_id, partition: group.partition };
        let Routed { raft, abstaining, repair_bar, log_store, contact } = self
            .router
            .get(group)
            .ok_or_else(|| Status::not_found(format!("broker {} has no Raft group {group}", self.node_id)))?;
        let abstaining = abstaining.load(Ordering::Acquire);
        let payload = &message.payload;
        let reply = match RaftKind::try_from(message.kind) {
            Ok(RaftKind::RaftVote) if abstaining => {
                // This replica's log may lack entries it acknowledged, so
                // its log cannot judge whether the candidate holds every
                // committed one. A candidate at least as up to date as the
                // log was before the damage can be judged (Raft's vote rule
                // against the lost log); then openraft's own check, against
                // the shorter log, decides. Anyone else is refused, which
                // is always safe.
                let rpc: VoteRequest<NodeId> = decode(payload).map_err(|e| bad_request("vote request", e))?;
                if covers(repair_bar, rpc.last_log_id) {
                    encode(&voted(raft.vote(rpc).await, &contact))
                } else {
                    let vote = raft.metrics().borrow().vote;
                    let reply: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
                        Ok(VoteResponse::new(vote, None, false));
                    encode(&reply)
                }
            }
            Ok(RaftKind::RaftCampaign) if abstaining => {
                encode(&Err::<(), String>(format!("broker {} is repairing its replica of {group}", self.node_id)))
            }
            Ok(RaftKind::RaftVote) => {
                let mut rpc: VoteRequest<NodeId> = decode(payload).map_err(|e| bad_request("vote request", e))?;
                if planted::on(Bug::TruncateCommittedOnLeaderChange) {
                    // Every candidate's log looks up to date.
                    rpc.last_log_id = Some(super::log_store::log_id(rpc.vote.leader_id.term, u64::MAX));
                }
                encode(&voted(raft.vote(rpc).await, &contact))
            }
            Ok(RaftKind::RaftPreVote) => {
                let rpc: PreVote = decode(payload).map_err(|e| bad_request("pre-vote request", e))?;
                let voter = Voter {
                    raft: &raft,
                    log_store: &log_store,
                    contact: &contact,
                    abstaining: abstaining.then_some(repair_bar),
                    patience: leader_lease(raft.config()),
                };
                encode(&would_vote(&voter, &rpc))
            }
            Ok(RaftKind::RaftAppendEntries) => {
                let rpc: AppendEntriesRequest<TypeConfig> =
                    decode(payload).map_err(|e| bad_request("append-entries request", e))?;
                let reply = raft.append_entries(rpc).await;
                if matches!(reply, Ok(ref r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    contact.touch(); // a leader of at least our term
                }
                encode(&reply)
            }
            Ok(RaftKind::RaftCampaign) => {
                let started = raft.trigger().elect().await.map_err(|e| e.to_string());
                encode(&started)
            }
            Ok(RaftKind::RaftInstallSnapshot) => {
                let rpc: InstallSnapshotRequest<TypeConfig> =
                    decode(payload).map_err(|e| bad_request("install-snapshot request", e))?;
                let reply = raft.install_snapshot(rpc).await;
                if reply.is_ok() {
                    contact.touch();
                }
                encode(&reply)
            }
            _ => return Err(Status::invalid_argument(format!("unknown Raft message kind {}", message.kind))),
        };
        reply.map_err(|e| Status::internal(format!("encoding the Raft reply: {e}")))
    }
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn send(&self, request: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let payload = self.deliver(request.into_inner()).await?;
        Ok(Response::new(RaftReply { payload }))
    }

    async fn send_batch(&self, request: Request<RaftBatch>) -> Result<Response<RaftBatchReply>, Status> {
        let messages = request.into_inner().messages;
        if messages.len() > BATCH_MESSAGES_MAX {
            return Err(Status::invalid_argument(format!(
                "a Raft batch of {} messages exceeds {BATCH_MESSAGES_MAX}",
                messages.len()
            )));
        }
        let delivered = futures::future::join_all(messages.into_iter().map(|m| self.deliver(m))).await;
        let replies = delivered
            .into_iter()
            .map(|reply| match reply {
                Ok(payload) => RaftBatchItem { payload, code: 0, error: String::new() },
                Err(status) => RaftBatchItem {
                    payload: Vec::new(),
                    code: status.code() as i32,
                    error: status.message().to_owned(),
                },
            })
            .collect();
        Ok(Response::new(RaftBatchReply { replies }))
    }
}

/// Calls made and messages sent, to all peers.
#[derive(Debug, Default)]
struct Traffic {
    calls: AtomicU64,
    messages: AtomicU64,
}

/// A message waiting in a peer's outbox, and who waits for its reply.
struct Pending {
    message: RaftMessage,
    heartbeat: bool,
    reply: oneshot::Sender<Result<Vec<u8>, Status>>,
}

impl Pending {
    fn bytes(&self) -> usize {
        self.message.payload.len() + 64
    }
}

/// One peer's queue of outgoing messages, drained by [`run_outbox`].
#[derive(Debug, Clone)]
struct Outbox {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Outbox {
    fn new(client: RaftClient<Channel>, traffic: Arc<Traffic>) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run_outbox(client, pending, traffic));
        Self { queue }
    }

    /// Sends `message` with the next call to its peer; its encoded reply.
    async fn call(&self, message: RaftMessage, heartbeat: bool) -> Result<Vec<u8>, Status> {
        let (reply, replied) = oneshot::channel();
        self.queue
            .send(Pending { message, heartbeat, reply })
            .map_err(|_| Status::unavailable("the connection to the peer is closed"))?;
        replied.await.map_err(|_| Status::unavailable("the call to the peer was dropped"))?
    }
}

/// Sends what a peer's outbox receives, coalescing it, until every sender
/// is gone.
async fn run_outbox(client: RaftClient<Channel>, mut queue: mpsc::UnboundedReceiver<Pending>, traffic: Arc<Traffic>) {
    let in_flight = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        if batch[0].heartbeat {
            // Heartbeats wait a moment for the other groups' heartbeats;
            // a message with entries leaves at once and takes them along.
            let deadline = tokio::time::Instant::now() + HEARTBEAT_LINGER;
            while batch.len() < BATCH_MESSAGES_MAX {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, queue.recv()).await {
                    Ok(Some(next)) if bytes + next.bytes() > RAFT_MESSAGE_BYTES_MAX => {
                        carried = Some(next);
                        break;
                    }
                    Ok(Some(next)) => {
                        let data = !next.heartbeat;
                        bytes += next.bytes();
                        batch.push(next);
                        if data {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        while carried.is_none() && batch.len() < BATCH_MESSAGES_MAX {
            let Ok(next) = queue.try_recv() else { break };
            if bytes + next.bytes() > RAFT_MESSAGE_BYTES_MAX {
                carried = Some(next);
                break;
            }
            bytes += next.bytes();
            batch.push(next);
        }
        traffic.calls.fetch_add(1, Ordering::Relaxed);
        traffic.messages.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let client = client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            send_batch(client, batch).await;
        });
    }
}

/// One call with `batch`'s messages; every waiting sender gets its reply.
async fn send_batch(mut client: RaftClient<Channel>, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        let Pending { message, reply, .. } = batch.remove(0);
        let answer = match tokio::time::timeout(BATCH_CALL_TIMEOUT, client.send(message)).await {
            Ok(answer) => answer.map(|r| r.into_inner().payload),
            Err(_) => Err(Status::deadline_exceeded("the Raft call timed out")),
        };
        let _ = reply.send(answer);
        return;
    }
    let (messages, replies): (Vec<RaftMessage>, Vec<_>) = batch.into_iter().map(|p| (p.message, p.reply)).unzip();
    let count = messages.len();
    let answer = match tokio::time::timeout(BATCH_CALL_TIMEOUT, client.send_batch(RaftBatch { messages })).await {
        Ok(answer) => answer.map(|r| r.into_inner().replies),
        Err(_) => Err(Status::deadline_exceeded("the Raft batch call timed out")),
    };
    match answer {
        Ok(items) if items.len() == count => {
            for (item, reply) in items.into_iter().zip(replies) {
                let answer = match item.code {
                    0 => Ok(item.payload),
                    code => Err(Status::new(tonic::Code::from(code), item.error)),
                };
                let _ = reply.send(answer);
            }
        }
        Ok(items) => {
            let status = Status::internal(format!("a Raft batch of {count} messages got {} replies", items.len()));
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}

/// One gRPC channel per peer broker, shared by every group on this broker.
#[derive(Debug)]
pub struct Connections {
    node_id: NodeId,
    outboxes: Mutex<HashMap<String, Outbox>>,
    traffic: Arc<Traffic>,
    /// Brokers' current addresses, which win over the address a group's
    /// membership recorded (a broker may come back on another address).
    addresses: RwLock<HashMap<NodeId, String>>,
    /// Which peers answer: one logged condition per peer that does not.
    reachability: Reachability,
}

impl Connections {
    pub fn new(node_id: NodeId) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            outboxes: Mutex::new(HashMap::new()),
            traffic: Arc::default(),
            addresses: RwLock::new(HashMap::new()),
            reachability: Reachability::default(),
        })
    }

    /// Notes the outcome of a call of `group` to `peer`: `Err` with the
    /// error if no answer came (refused, unavailable, timed out).
    fn note(&self, peer: NodeId, address: &str, group: GroupId, outcome: Result<(), &str>) {
        let now = tokio::time::Instant::now();
        let (change, error) = match outcome {
            Ok(()) => (self.reachability.answered(peer, now), ""),
            Err(error) => (self.reachability.failed(peer, group, now), error),
        };
        Reachability::log(self.node_id, peer, address, change, error);
    }

    /// Records where broker `node` is reachable now.
    pub fn set_address(&self, node: NodeId, address: &str) {
        let mut addresses = self.addresses.write().unwrap_or_else(|p| p.into_inner());
        if addresses.get(&node).map(String::as_str) != Some(address) {
            addresses.insert(node, address.to_owned());
        }
    }

    fn address_of(&self, node: NodeId) -> Option<String> {
        self.addresses.read().unwrap_or_else(|p| p.into_inner()).get(&node).cloned()
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Calls made to peers, and the Raft messages they carried, so far.
    pub fn traffic(&self) -> (u64, u64) {
        (self.traffic.calls.load(Ordering::Relaxed), self.traffic.messages.load(Ordering::Relaxed))
    }

    fn outbox(&self, address: &str) -> Result<Outbox, String> {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(outbox) = outboxes.get(address) {
            return Ok(outbox.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}")).map_err(|e| e.to_string())?;
        let channel = endpoint.connect_timeout(CONNECT_TIMEOUT).connect_lazy();
        let client = RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let outbox = Outbox::new(client, self.traffic.clone());
        outboxes.insert(address.to_owned(), outbox.clone());
        Ok(outbox)
    }

    /// Asks broker `target`'s replica of `group` to start an election now.
    pub async fn campaign(&self, target: NodeId, group: GroupId) -> Result<(), String> {
        let address = self.address_of(target).ok_or_else(|| format!("no address known for broker {target}"))?;
        let reply = self.ask(target, &address, group, RaftKind::RaftCampaign, Vec::new(), CAMPAIGN_TIMEOUT).await?;
        decode::<Result<(), String>>(&reply)?
    }

    /// Asks broker `target` (at `address` unless a newer one is known)
    /// whether its replica of `group` would vote for `request` now; no
    /// answer within `timeout` is a no.
    pub async fn pre_vote(
        &self,
        target: NodeId,
        address: &str,
        group: GroupId,
        request: &PreVote,
        timeout: Duration,
    ) -> bool {
        let Ok(payload) = encode(request) else { return false };
        let address = self.address_of(target).unwrap_or_else(|| address.to_owned());
        match self.ask(target, &address, group, RaftKind::RaftPreVote, payload, timeout).await {
            Ok(reply) => decode::<bool>(&reply).unwrap_or(false),
            Err(_) => false,
        }
    }

    /// One of weir's own messages to broker `target`'s replica of `group`,
    /// at `address`; its encoded reply within `timeout`.
    async fn ask(
        &self,
        target: NodeId,
        address: &str,
        group: GroupId,
        kind: RaftKind,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let message = RaftMessage {
            group: Some(RaftGroup { topic_id: group.topic_id, partition: group.partition }),
            target,
            kind: kind as i32,
            payload,
        };
        let outbox = self.outbox(address)?;
        let reply = match tokio::time::timeout(timeout, outbox.call(message, false)).await {
            Err(_) => Err(format!("broker {target} did not answer in time")),
            Ok(reply) => reply.map_err(|status| format!("{} ({:?})", status.message(), status.code())),
        };
        // Only a missing answer says anything about the peer: a slow pre-vote
        // or a refusal does not.
        if reply.is_ok() {
            self.note(target, address, group, Ok(()));
        }
        reply
    }

    /// The network one group uses.
    pub fn for_group(self: &Arc<Self>, group: GroupId) -> NetworkFactory {
        NetworkFactory { connections: self.clone(), group }
    }
}

/// openraft's network factory for one group.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    connections: Arc<Connections>,
    group: GroupId,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer { connections: self.connections.clone(), group: self.group, target, address: node.addr.clone() }
    }
}

/// One group's link to one peer.
#[derive(Debug)]
pub struct Peer {
    connections: Arc<Connections>,
    group: GroupId,
    target: NodeId,
    address: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        kind: RaftKind,
        action: RPCTypes,
        rpc: &Req,
        heartbeat: bool,
        option: RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let network = |e: String| RPCError::Network(NetworkError::new(&TransportError(e)));
        let payload = encode(rpc).map_err(network)?;
        let message = RaftMessage {
            group: Some(RaftGroup { topic_id: self.group.topic_id, partition: self.group.partition }),
            target: self.target,
            kind: kind as i32,
            payload,
        };
        let address = self.connections.address_of(self.target).unwrap_or_else(|| self.address.clone());
        let outbox = self.connections.outbox(&address).map_err(network)?;
        let ttl = option.hard_ttl();
        let reply = match tokio::time::timeout(ttl, outbox.call(message, heartbeat)).await {
            Err(_) => {
                self.connections.note(self.target, &address, self.group, Err("no answer in time"));
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.connections.node_id,
                    target: self.target,
                    timeout: ttl,
                }));
            }
            Ok(Err(status)) => {
                let error = TransportError(format!("{} ({:?}) from {}", status.message(), status.code(), self.address));
                let unanswered = matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown);
                let outcome = if unanswered { Err(error.0.as_str()) } else { Ok(()) };
                self.connections.note(self.target, &address, self.group, outcome);
                return Err(match status.code() {
                    // Down, restarting, or not holding the group yet: back off.
                    tonic::Code::Unavailable | tonic::Code::NotFound | tonic::Code::Unknown => {
                        RPCError::Unreachable(Unreachable::new(&error))
                    }
                    _ => RPCError::Network(NetworkError::new(&error)),
                });
            }
            Ok(Ok(reply)) => {
                self.connections.note(self.target, &address, self.group, Ok(()));
                reply
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&reply).map_err(network)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let heartbeat = rpc.entries.is_empty();
        self.call(RaftKind::RaftAppendEntries, RPCTypes::AppendEntries, &rpc, heartbeat, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(RaftKind::RaftInstallSnapshot, RPCTypes::InstallSnapshot, &rpc, false, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftKind::RaftVote, RPCTypes::Vote, &rpc, false, option).await
    }
}
