//! Raft messages between brokers over gRPC.
//!
//! Every partition group on a broker shares one [`Connections`]: one gRPC
//! channel (one HTTP/2 connection) per peer broker carries the messages of
//! all groups, each tagged with its [`GroupId`]. The receiving broker's
//! [`RaftService`] finds the group in its [`Router`] and hands the request to
//! openraft. Requests and replies are openraft's own types, bincode-encoded:
//! record batches travel as raw bytes.

use std::collections::HashMap;
use std::error::Error;
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

use super::types::{GroupId, NodeId, RaftNode, TypeConfig};
use crate::log::batch::BATCH_BYTES_MAX;
use crate::proto::raft_client::RaftClient;
use crate::proto::raft_server;
use crate::proto::{RaftGroup, RaftKind, RaftMessage, RaftReply};

/// A Raft message carries at most this many bytes of entries plus framing.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 4 * BATCH_BYTES_MAX + (1 << 20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The partition groups this broker is a member of, by group id.
#[derive(Default)]
pub struct Router {
    groups: RwLock<HashMap<GroupId, RaftNode>>,
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

    pub fn register(&self, group: GroupId, raft: RaftNode) {
        self.groups.write().unwrap_or_else(|p| p.into_inner()).insert(group, raft);
    }

    pub fn unregister(&self, group: GroupId) -> Option<RaftNode> {
        self.groups.write().unwrap_or_else(|p| p.into_inner()).remove(&group)
    }

    pub fn get(&self, group: GroupId) -> Option<RaftNode> {
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

fn bad_request(what: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{what}: {e}"))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn send(&self, request: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let message = request.into_inner();
        if message.target != self.node_id {
            return Err(Status::failed_precondition(format!(
                "Raft message for broker {} reached broker {}",
                message.target, self.node_id
            )));
        }
        let group = message.group.ok_or_else(|| Status::invalid_argument("Raft message without a group"))?;
        let group = GroupId { topic_id: group.topic_id, partition: group.partition };
        let raft = self
            .router
            .get(group)
            .ok_or_else(|| Status::not_found(format!("broker {} has no Raft group {group}", self.node_id)))?;
        let payload = &message.payload;
        let reply = match RaftKind::try_from(message.kind) {
            Ok(RaftKind::RaftVote) => {
                let rpc: VoteRequest<NodeId> = decode(payload).map_err(|e| bad_request("vote request", e))?;
                encode(&raft.vote(rpc).await)
            }
            Ok(RaftKind::RaftAppendEntries) => {
                let rpc: AppendEntriesRequest<TypeConfig> =
                    decode(payload).map_err(|e| bad_request("append-entries request", e))?;
                encode(&raft.append_entries(rpc).await)
            }
            Ok(RaftKind::RaftInstallSnapshot) => {
                let rpc: InstallSnapshotRequest<TypeConfig> =
                    decode(payload).map_err(|e| bad_request("install-snapshot request", e))?;
                encode(&raft.install_snapshot(rpc).await)
            }
            _ => return Err(Status::invalid_argument(format!("unknown Raft message kind {}", message.kind))),
        };
        let payload = reply.map_err(|e| Status::internal(format!("encoding the Raft reply: {e}")))?;
        Ok(Response::new(RaftReply { payload }))
    }
}

/// One gRPC channel per peer broker, shared by every group on this broker.
#[derive(Debug)]
pub struct Connections {
    node_id: NodeId,
    channels: Mutex<HashMap<String, RaftClient<Channel>>>,
    /// Brokers' current addresses, which win over the address a group's
    /// membership recorded (a broker may come back on another address).
    addresses: RwLock<HashMap<NodeId, String>>,
}

impl Connections {
    pub fn new(node_id: NodeId) -> Arc<Self> {
        Arc::new(Self { node_id, channels: Mutex::new(HashMap::new()), addresses: RwLock::new(HashMap::new()) })
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

    fn client(&self, address: &str) -> Result<RaftClient<Channel>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = channels.get(address) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}")).map_err(|e| e.to_string())?;
        let channel = endpoint.connect_timeout(CONNECT_TIMEOUT).connect_lazy();
        let client = RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        channels.insert(address.to_owned(), client.clone());
        Ok(client)
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
        let mut client = self.connections.client(&address).map_err(network)?;
        let ttl = option.hard_ttl();
        let reply = match tokio::time::timeout(ttl, client.send(message)).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.connections.node_id,
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Ok(Err(status)) => {
                let error = TransportError(format!("{} ({:?}) from {}", status.message(), status.code(), self.address));
                return Err(match status.code() {
                    // Down, restarting, or not holding the group yet: back off.
                    tonic::Code::Unavailable | tonic::Code::NotFound | tonic::Code::Unknown => {
                        RPCError::Unreachable(Unreachable::new(&error))
                    }
                    _ => RPCError::Network(NetworkError::new(&error)),
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&reply.payload).map_err(network)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftKind::RaftAppendEntries, RPCTypes::AppendEntries, &rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(RaftKind::RaftInstallSnapshot, RPCTypes::InstallSnapshot, &rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftKind::RaftVote, RPCTypes::Vote, &rpc, option).await
    }
}
