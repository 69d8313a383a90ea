//! The Rust client: typed calls for administration, producing and
//! consuming, sent to the right broker.
//!
//! A client starts from one or more brokers (`host:port`, comma-separated).
//! Calls on a partition go to its leader: the client remembers leaders the
//! brokers name in `NOT_LEADER` answers, and retries (bounded, with
//! backoff) while a partition has no leader or a broker is unreachable.
//! The batching producer and the group consumer build on it.

pub mod consumer;
mod partitioner;
pub mod producer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::broker::error::{meaning, BrokerError};
use crate::broker::server::OFFSETS_TOPIC;
use crate::log::Batch;
use crate::proto::admin_client::AdminClient;
use crate::proto::consumer_client::ConsumerClient;
use crate::proto::groups_client::GroupsClient;
use crate::proto::producer_client::ProducerClient;
use crate::proto::{self};

pub use consumer::{Consumed, ConsumerConfig, GroupConsumer, OffsetReset, SeekTo};
pub use partitioner::partition_for_key;
pub use producer::{Delivered, Delivery, Producer, ProducerConfig};

/// Credit grants a subscription may queue before `grant` waits.
const SUBSCRIPTION_CREDITS_QUEUE: usize = 16;

/// A push subscription: records arrive as the broker has them, within the
/// credit granted so far.
#[derive(Debug)]
pub struct Subscription {
    credits: mpsc::Sender<proto::SubscribeRequest>,
    responses: tonic::Streaming<proto::SubscribeResponse>,
}

impl Subscription {
    /// Allows the broker to send `messages` more records and, if non-zero,
    /// `bytes` more bytes of keys, values and headers.
    pub async fn grant(&mut self, messages: u64, bytes: u64) -> ClientResult<()> {
        let credit = proto::Credit { messages, bytes };
        let request = proto::SubscribeRequest { request: Some(proto::subscribe_request::Request::Credit(credit)) };
        self.credits.send(request).await.map_err(|_| ClientError::InvalidReply("the subscription has ended".into()))
    }

    /// The next push from the broker; `None` when the stream ends.
    pub async fn next(&mut self) -> ClientResult<Option<proto::SubscribeResponse>> {
        Ok(self.responses.message().await?)
    }
}

/// The address a client connects to when none is given.
pub const BROKER_DEFAULT: &str = "http://127.0.0.1:9092";
const GRPC_MESSAGE_BYTES_MAX: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the broker at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("{0}")]
    Broker(BrokerError),
    #[error("the broker sent an invalid reply: {0}")]
    InvalidReply(String),
    /// The last attempt's error, after an earlier attempt whose outcome is
    /// unknown: whatever the last error says, the request may have taken
    /// effect.
    #[error("{0} (an earlier attempt may have taken effect)")]
    Indefinite(Box<ClientError>),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Broker(BrokerError::from_status(&status))
    }
}

impl ClientError {
    /// The weir error code, if the broker answered with one.
    pub fn code(&self) -> Option<proto::ErrorCode> {
        match self {
            ClientError::Broker(error) => Some(error.code),
            ClientError::Indefinite(error) => error.code(),
            _ => None,
        }
    }

    /// Whether the request definitely did nothing (a write so answered was
    /// not written): a connection never made, or a broker error that says
    /// so ([`crate::broker::error::meaning`]).
    pub fn did_nothing(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Broker(error) => meaning(error.code).did_nothing,
            ClientError::InvalidReply(_) | ClientError::Indefinite(_) => false,
        }
    }

    /// This error as the end of a request some attempt of which may have
    /// taken effect (`maybe_done`).
    pub fn after_attempts(self, maybe_done: bool) -> Self {
        match self {
            error if maybe_done && error.did_nothing() => ClientError::Indefinite(Box::new(error)),
            error => error,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

/// The gRPC clients of one broker connection.
#[derive(Debug, Clone)]
struct Conn {
    groups: GroupsClient<Channel>,
    admin: AdminClient<Channel>,
    producer: ProducerClient<Channel>,
    consumer: ConsumerClient<Channel>,
}

impl Conn {
    async fn connect(address: &str) -> ClientResult<Self> {
        let uri = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
        let connect_error = |reason: String| ClientError::Connect { address: address.to_owned(), reason };
        let endpoint = Endpoint::from_shared(uri).map_err(|e| connect_error(e.to_string()))?;
        let channel =
            endpoint.connect_timeout(CONNECT_TIMEOUT).connect().await.map_err(|e| connect_error(e.to_string()))?;
        Ok(Self {
            groups: GroupsClient::new(channel.clone()),
            admin: AdminClient::new(channel.clone()),
            producer: ProducerClient::new(channel.clone())
                .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX),
            consumer: ConsumerClient::new(channel).max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX),
        })
    }
}

/// Attempts at a partition call before its error is returned.
const ROUTE_ATTEMPTS: u32 = 60;
/// How long an attempt at a partition call waits for its answer (beyond
/// any wait the call asks the broker for) before it takes the broker for
/// stopped or cut off and asks another who leads. A connection to a paused
/// or isolated leader stays open and answers nothing: without this, a
/// producer waits for that leader to come back even once its followers
/// have elected another (within the election timeout plus the lease,
/// 4 s). The attempt's outcome is then unknown, as after any lost answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// The session timeout a coordinator gives a member that names none (the
/// broker's `SESSION_TIMEOUT_MS_DEFAULT`; both ends will share it once a
/// module both import holds the wire's constants).
const SESSION_TIMEOUT_MS_DEFAULT: u32 = 10_000;
/// A broker that left an attempt unanswered is silent for this long (the
/// lease and an election timeout after the attempt gave up, as long as its
/// followers may still name it as their leader), unless it answers sooner.
/// Meanwhile attempts to it wait only `PROBE_WITHIN`: long enough for a
/// broker that is back, short enough that following the followers' hints
/// back to a paused leader does not wait out `ANSWER_WITHIN` each time.
const SILENCE_FOR: Duration = Duration::from_secs(5);
const PROBE_WITHIN: Duration = Duration::from_millis(250);
const ROUTE_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Times a call any broker can answer goes round the bootstrap brokers.
const ANYWHERE_ROUNDS: u32 = 3;

/// What a client has learned about the cluster, shared by its clones.
#[derive(Debug, Default)]
struct Routes {
    /// The brokers the client was given, and which one answers for
    /// calls that are not about a partition.
    bootstrap: Vec<String>,
    home: std::sync::Mutex<usize>,
    leaders: std::sync::Mutex<HashMap<(String, u32), String>>,
    conns: tokio::sync::Mutex<HashMap<String, Conn>>,
    /// Brokers that left a partition call unanswered, and until when
    /// (`SILENCE_FOR`): every call probes them briefly and prefers others
    /// for calls any broker can route.
    silent: std::sync::Mutex<HashMap<String, tokio::time::Instant>>,
}

#[derive(Debug, Clone)]
pub struct Client {
    /// The connection to the home broker.
    conn: Conn,
    /// That broker's address.
    address: String,
    routes: Arc<Routes>,
}

impl Client {
    /// Connects to a broker at `address` (`host:port` or `http://host:port`),
    /// or to the first that answers of several, comma-separated.
    pub async fn connect(address: &str) -> ClientResult<Self> {
        let bootstrap: Vec<String> =
            address.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
        let mut last_error = ClientError::Connect { address: address.to_owned(), reason: "no address given".into() };
        for (i, candidate) in bootstrap.iter().enumerate() {
            match Conn::connect(candidate).await {
                Ok(conn) => {
                    let routes =
                        Routes { bootstrap: bootstrap.clone(), home: std::sync::Mutex::new(i), ..Default::default() };
                    routes.conns.lock().await.insert(candidate.clone(), conn.clone());
                    return Ok(Self { conn, address: candidate.clone(), routes: Arc::new(routes) });
                }
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    async fn conn_to(&self, address: &str) -> ClientResult<Conn> {
        if let Some(conn) = self.routes.conns.lock().await.get(address) {
            return Ok(conn.clone());
        }
        let conn = Conn::connect(address).await?;
        self.routes.conns.lock().await.insert(address.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Whether the broker at `address` is silent for now (see
    /// `Routes::silent`).
    fn is_silent(&self, address: &str) -> bool {
        let silent = self.routes.silent.lock().unwrap_or_else(|p| p.into_inner());
        silent.get(address).is_some_and(|until| *until > tokio::time::Instant::now())
    }

    fn set_silent(&self, address: &str, silent: bool) {
        let mut brokers = self.routes.silent.lock().unwrap_or_else(|p| p.into_inner());
        if silent {
            brokers.insert(address.to_owned(), tokio::time::Instant::now() + SILENCE_FOR);
        } else {
            brokers.remove(address);
        }
    }

    fn leader_of(&self, topic: &str, partition: u32) -> Option<String> {
        self.routes.leaders.lock().unwrap_or_else(|p| p.into_inner()).get(&(topic.to_owned(), partition)).cloned()
    }

    fn set_leader(&self, topic: &str, partition: u32, leader: Option<String>) {
        let mut leaders = self.routes.leaders.lock().unwrap_or_else(|p| p.into_inner());
        match leader {
            Some(address) => leaders.insert((topic.to_owned(), partition), address),
            None => leaders.remove(&(topic.to_owned(), partition)),
        };
    }

    /// The connection for a partition call, and where it goes: the
    /// partition's leader's if known, else a bootstrap broker's (trying the
    /// next one each `attempt`), passing over silent bootstrap brokers
    /// while there are others.
    async fn conn_for(&self, topic: &str, partition: u32, attempt: u32) -> ClientResult<(String, Conn)> {
        if let Some(leader) = self.leader_of(topic, partition) {
            match self.conn_to(&leader).await {
                Ok(conn) => return Ok((leader, conn)),
                Err(_) => self.set_leader(topic, partition, None),
            }
        }
        if attempt == 0 || self.routes.bootstrap.len() < 2 {
            return Ok((self.address.clone(), self.conn.clone()));
        }
        self.next_audible_home().await
    }

    /// Makes the next bootstrap broker that is not silent home (or the
    /// next one, if all are) and connects to it.
    async fn next_audible_home(&self) -> ClientResult<(String, Conn)> {
        for _ in 1..self.routes.bootstrap.len() {
            let (address, conn) = self.next_home().await?;
            if !self.is_silent(&address) {
                return Ok((address, conn));
            }
        }
        self.next_home().await
    }

    /// Runs a partition call on the partition's leader, following leader
    /// hints and retrying while there is no leader or a broker is down.
    /// An attempt unanswered after `patience` counts as a broker down
    /// (`None`: calls that may rightly wait long, as a join does for a
    /// rebalance).
    async fn routed<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        patience: Option<Duration>,
        call: F,
    ) -> ClientResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut attempt = 0;
        // Hints followed at once in this call; a hint seen again (brokers
        // pointing at each other while an election settles) waits its turn.
        let mut followed: Vec<String> = Vec::new();
        // Whether an attempt so far may have taken effect.
        let mut maybe_done = false;
        loop {
            let outcome = match self.conn_for(topic, partition, attempt).await {
                Ok((address, conn)) => match patience {
                    Some(patience) => {
                        // A silent broker is probed, not waited for.
                        let limit = match self.is_silent(&address) {
                            true => patience.saturating_sub(ANSWER_WITHIN) + PROBE_WITHIN,
                            false => patience,
                        };
                        self.answer_within(&address, limit, call(conn)).await
                    }
                    None => call(conn).await.map_err(ClientError::from),
                },
                Err(error) => Err(error),
            };
            let error = match outcome {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            attempt += 1;
            tracing::debug!(topic, partition, attempt, %error, "a partition call failed");
            maybe_done |= !error.did_nothing();
            let retry = match &error {
                ClientError::Broker(broker)
                    if matches!(broker.code, proto::ErrorCode::NotLeader | proto::ErrorCode::OutcomeUnknown) =>
                {
                    let hinted = broker.leader.clone();
                    let changed = hinted.is_some() && hinted != self.leader_of(topic, partition);
                    let fresh = hinted.as_ref().is_some_and(|h| !followed.contains(h));
                    self.set_leader(topic, partition, hinted.clone());
                    if changed && fresh {
                        followed.extend(hinted);
                        continue; // follow the hint at once
                    }
                    true
                }
                ClientError::Broker(broker) => {
                    let unreachable = broker.code == proto::ErrorCode::Unspecified;
                    if unreachable {
                        self.set_leader(topic, partition, None);
                    }
                    unreachable
                        || matches!(
                            broker.code,
                            proto::ErrorCode::PartitionUnavailable | proto::ErrorCode::CoordinatorLoading
                        )
                }
                ClientError::Connect { .. } => {
                    self.set_leader(topic, partition, None);
                    true
                }
                ClientError::InvalidReply(_) | ClientError::Indefinite(_) => false,
            };
            if !retry || attempt >= ROUTE_ATTEMPTS {
                return Err(error.after_attempts(maybe_done));
            }
            let backoff = Duration::from_millis(20 * u64::from(attempt)).min(ROUTE_BACKOFF_MAX);
            tokio::time::sleep(backoff).await;
        }
    }

    /// Runs a call that any broker can answer (and that is safe to repeat)
    /// on the home broker, unless it is silent; while brokers are
    /// unreachable or leave the call unanswered for `ANSWER_WITHIN`, on the
    /// next bootstrap broker, going round the list a few times. Without
    /// the time limit a producer asking a paused home broker for its
    /// identity waited out the whole pause, writing nothing anywhere.
    async fn anywhere<T, F, Fut>(&self, call: F) -> ClientResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let attempts = ANYWHERE_ROUNDS * self.routes.bootstrap.len().max(1) as u32;
        let mut attempt = 0;
        loop {
            let conn = match attempt == 0 && !self.is_silent(&self.address) {
                true => Ok((self.address.clone(), self.conn.clone())),
                false => self.next_audible_home().await,
            };
            let error = match conn {
                Ok((address, conn)) => match self.answer_within(&address, ANSWER_WITHIN, call(conn)).await {
                    Ok(response) => return Ok(response.into_inner()),
                    Err(error) => error,
                },
                Err(error) => error,
            };
            let unreachable =
                matches!(&error, ClientError::Connect { .. }) || error.code() == Some(proto::ErrorCode::Unspecified);
            attempt += 1;
            if !unreachable || attempt >= attempts {
                return Err(error);
            }
            if attempt % self.routes.bootstrap.len().max(1) as u32 == 0 {
                tokio::time::sleep(ROUTE_BACKOFF_MAX).await;
            }
        }
    }

    /// Awaits `call` to the broker at `address` for at most `limit`: an
    /// answer makes the broker heard, none within the limit silent (see
    /// `Routes::silent`), and is an error of unknown outcome.
    async fn answer_within<R>(
        &self,
        address: &str,
        limit: Duration,
        call: impl std::future::Future<Output = Result<R, tonic::Status>>,
    ) -> ClientResult<R> {
        match tokio::time::timeout(limit, call).await {
            Ok(answer) => {
                self.set_silent(address, false);
                answer.map_err(ClientError::from)
            }
            Err(_) => {
                self.set_silent(address, true);
                Err(ClientError::from(tonic::Status::unavailable(format!(
                    "{address} gave no answer within {limit:?}: the broker may be stopped or cut off"
                ))))
            }
        }
    }

    /// Makes the next bootstrap broker home and connects to it.
    async fn next_home(&self) -> ClientResult<(String, Conn)> {
        let home = {
            let mut home = self.routes.home.lock().unwrap_or_else(|p| p.into_inner());
            *home = (*home + 1) % self.routes.bootstrap.len().max(1);
            self.routes.bootstrap.get(*home).cloned()
        };
        match home {
            Some(address) => Ok((address.clone(), self.conn_to(&address).await?)),
            None => Ok((self.address.clone(), self.conn.clone())),
        }
    }

    pub async fn create_topic(&self, name: &str, config: proto::TopicConfig) -> ClientResult<proto::TopicDescription> {
        let request = proto::CreateTopicRequest { name: name.to_owned(), config: Some(config) };
        Ok(self.conn.admin.clone().create_topic(request).await?.into_inner())
    }

    pub async fn delete_topic(&self, name: &str) -> ClientResult<()> {
        self.conn.admin.clone().delete_topic(proto::DeleteTopicRequest { name: name.to_owned() }).await?;
        Ok(())
    }

    pub async fn list_topics(&self) -> ClientResult<Vec<proto::TopicDescription>> {
        let listed = self
            .anywhere(|conn| async move { conn.admin.clone().list_topics(proto::ListTopicsRequest {}).await })
            .await?;
        Ok(listed.topics)
    }

    pub async fn describe_topic(&self, name: &str) -> ClientResult<proto::TopicDescription> {
        self.anywhere(|conn| async move {
            conn.admin.clone().describe_topic(proto::DescribeTopicRequest { name: name.to_owned() }).await
        })
        .await
    }

    pub async fn describe_broker(&self) -> ClientResult<proto::BrokerDescription> {
        Ok(self.conn.admin.clone().describe_broker(proto::DescribeBrokerRequest {}).await?.into_inner())
    }

    pub async fn describe_cluster(&self) -> ClientResult<proto::DescribeClusterResponse> {
        self.anywhere(|conn| async move { conn.admin.clone().describe_cluster(proto::DescribeClusterRequest {}).await })
            .await
    }

    /// Moves a partition onto `replicas` (broker ids; the first becomes its
    /// preferred leader). Returns once the move is recorded; it completes
    /// in the background (`describe_topic`: `members` becomes `replicas`).
    pub async fn move_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: Vec<u64>,
    ) -> ClientResult<proto::PartitionDescription> {
        let request = proto::MovePartitionRequest { topic: topic.to_owned(), partition, replicas };
        Ok(self.conn.admin.clone().move_partition(request).await?.into_inner())
    }

    /// Takes broker `id` out of the cluster (scale in): the controller
    /// moves its replicas off. Returns at once; the broker is drained once
    /// `describe_cluster` lists it with no replicas.
    pub async fn decommission_broker(&self, id: u64) -> ClientResult<proto::DecommissionedBroker> {
        let request = proto::DecommissionBrokerRequest { broker_id: id };
        Ok(self.conn.admin.clone().decommission_broker(request).await?.into_inner())
    }

    /// Lifts broker `id`'s decommissioned mark.
    pub async fn recommission_broker(&self, id: u64) -> ClientResult<proto::DecommissionedBroker> {
        let request = proto::RecommissionBrokerRequest { broker_id: id };
        Ok(self.conn.admin.clone().recommission_broker(request).await?.into_inner())
    }

    /// A client whose home is the broker at `address` (sharing this one's
    /// connections and what it learned about leaders).
    pub async fn via(&self, address: &str) -> ClientResult<Client> {
        let conn = self.conn_to(address).await?;
        Ok(Client { conn, address: address.to_owned(), routes: self.routes.clone() })
    }

    /// Produces records as one batch; the broker stamps missing timestamps.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<proto::Record>,
        acks: proto::Acks,
    ) -> ClientResult<proto::ProduceResponse> {
        let request = proto::ProduceRequest {
            topic: topic.to_owned(),
            partition,
            acks: acks as i32,
            records,
            batch: Default::default(),
        };
        self.send_produce(request).await
    }

    /// A new idempotent producer identity (see [`crate::log::BatchBuilder::producer`]).
    pub async fn init_producer(&self) -> ClientResult<proto::InitProducerResponse> {
        self.anywhere(|conn| async move { conn.producer.clone().init_producer(proto::InitProducerRequest {}).await })
            .await
    }

    /// Produces a batch already encoded by [`crate::log::BatchBuilder`].
    pub async fn produce_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: &Batch,
        acks: proto::Acks,
    ) -> ClientResult<proto::ProduceResponse> {
        let request = proto::ProduceRequest {
            topic: topic.to_owned(),
            partition,
            acks: acks as i32,
            records: Vec::new(),
            batch: batch.as_bytes().clone(),
        };
        self.send_produce(request).await
    }

    async fn send_produce(&self, request: proto::ProduceRequest) -> ClientResult<proto::ProduceResponse> {
        self.routed(&request.topic, request.partition, Some(ANSWER_WITHIN), |mut conn| {
            let request = request.clone();
            async move { conn.producer.produce(request).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Fetches from `offset`, waiting up to `max_wait` for data (long poll).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> ClientResult<proto::FetchResponse> {
        let request = proto::FetchRequest {
            topic: topic.to_owned(),
            partition,
            offset,
            max_bytes,
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
            encoded: false,
        };
        self.routed(topic, partition, Some(ANSWER_WITHIN + max_wait), |mut conn| {
            let request = request.clone();
            async move { conn.consumer.fetch(request).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Opens a push subscription from `offset` with an initial credit.
    pub async fn subscribe(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        credit: proto::Credit,
    ) -> ClientResult<Subscription> {
        let (credits, outbound) = mpsc::channel(SUBSCRIPTION_CREDITS_QUEUE);
        let start = proto::SubscribeStart { topic: topic.to_owned(), partition, offset, credit: Some(credit) };
        let first = proto::SubscribeRequest { request: Some(proto::subscribe_request::Request::Start(start)) };
        credits.send(first).await.expect("the receiver is alive");
        let requests = futures::stream::unfold(outbound, |mut outbound| async move {
            outbound.recv().await.map(|request| (request, outbound))
        });
        let (_, mut conn) = self.conn_for(topic, partition, 0).await?;
        let responses = conn.consumer.subscribe(requests).await?.into_inner();
        Ok(Subscription { credits, responses })
    }

    /// A call to the group coordinator: the broker leading the offsets
    /// partition, found and followed like a partition leader. An attempt
    /// unanswered within `patience` counts as a coordinator down (paused,
    /// cut off) and is retried on whoever leads the offsets partition then:
    /// a member must not wait for a stopped coordinator to come back while
    /// another has taken over.
    async fn coordinated<T, F, Fut>(&self, patience: Duration, call: F) -> ClientResult<T>
    where
        F: Fn(GroupsClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let call = &call;
        self.routed(OFFSETS_TOPIC, 0, Some(patience), |conn| async move {
            call(conn.groups.clone()).await.map(tonic::Response::into_inner)
        })
        .await
    }

    /// Joins (or rejoins) a group. The coordinator holds the answer until
    /// the rebalance settles, at most the members' session timeout, so an
    /// attempt waits that long (this member's timeout, or the default)
    /// before it counts as unanswered.
    pub async fn join_group(&self, request: proto::JoinGroupRequest) -> ClientResult<proto::JoinGroupResponse> {
        let session_ms = match request.session_timeout_ms {
            0 => SESSION_TIMEOUT_MS_DEFAULT,
            ms => ms,
        };
        let patience = Duration::from_millis(u64::from(session_ms)) + ANSWER_WITHIN;
        self.coordinated(patience, |mut groups| {
            let request = request.clone();
            async move { groups.join_group(request).await }
        })
        .await
    }

    pub async fn sync_group(&self, request: proto::SyncGroupRequest) -> ClientResult<Vec<proto::TopicPartition>> {
        let response = self
            .coordinated(ANSWER_WITHIN, |mut groups| {
                let request = request.clone();
                async move { groups.sync_group(request).await }
            })
            .await?;
        Ok(response.assignment)
    }

    pub async fn heartbeat(&self, request: proto::HeartbeatRequest) -> ClientResult<()> {
        self.coordinated(ANSWER_WITHIN, |mut groups| {
            let request = request.clone();
            async move { groups.heartbeat(request).await }
        })
        .await?;
        Ok(())
    }

    pub async fn leave_group(&self, group: &str, member_id: &str) -> ClientResult<()> {
        let request = proto::LeaveGroupRequest { group: group.to_owned(), member_id: member_id.to_owned() };
        self.coordinated(ANSWER_WITHIN, |mut groups| {
            let request = request.clone();
            async move { groups.leave_group(request).await }
        })
        .await?;
        Ok(())
    }

    pub async fn commit_offsets(&self, request: proto::CommitOffsetsRequest) -> ClientResult<()> {
        self.coordinated(ANSWER_WITHIN, |mut groups| {
            let request = request.clone();
            async move { groups.commit_offsets(request).await }
        })
        .await?;
        Ok(())
    }

    /// Committed offsets of `group` (all of them if `partitions` is empty).
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: Vec<proto::TopicPartition>,
    ) -> ClientResult<Vec<proto::PartitionOffset>> {
        let request = proto::FetchOffsetsRequest { group: group.to_owned(), partitions };
        let response = self
            .coordinated(ANSWER_WITHIN, |mut groups| {
                let request = request.clone();
                async move { groups.fetch_offsets(request).await }
            })
            .await?;
        Ok(response.offsets)
    }

    pub async fn describe_group(&self, group: &str) -> ClientResult<proto::GroupDescription> {
        let request = proto::DescribeGroupRequest { group: group.to_owned() };
        self.coordinated(ANSWER_WITHIN, |mut groups| {
            let request = request.clone();
            async move { groups.describe_group(request).await }
        })
        .await
    }

    pub async fn list_groups(&self) -> ClientResult<Vec<proto::GroupDescription>> {
        let response =
            self.coordinated(ANSWER_WITHIN, |mut groups| async move {
                groups.list_groups(proto::ListGroupsRequest {}).await
            })
            .await?;
        Ok(response.groups)
    }

    /// Resolves a seek target to an offset.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: proto::OffsetSpec,
        timestamp_ms: i64,
    ) -> ClientResult<u64> {
        let request = proto::ListOffsetRequest { topic: topic.to_owned(), partition, spec: spec as i32, timestamp_ms };
        self.routed(topic, partition, Some(ANSWER_WITHIN), |mut conn| {
            let request = request.clone();
            async move { conn.consumer.list_offset(request).await.map(|r| r.into_inner().offset) }
        })
        .await
    }
}
