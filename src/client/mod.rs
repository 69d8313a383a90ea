//! The Rust client: a connection to a broker with typed calls for
//! administration, producing and consuming.
//!
//! This first cut is the direct API the CLI and tests use; the batching
//! producer and the group consumer build on it.

pub mod consumer;
mod partitioner;
pub mod producer;

use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::broker::error::BrokerError;
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
            _ => None,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

#[derive(Debug, Clone)]
pub struct Client {
    groups: GroupsClient<Channel>,
    admin: AdminClient<Channel>,
    producer: ProducerClient<Channel>,
    consumer: ConsumerClient<Channel>,
}

impl Client {
    /// Connects to a broker at `address` (`host:port` or `http://host:port`).
    pub async fn connect(address: &str) -> ClientResult<Self> {
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

    pub async fn create_topic(&self, name: &str, config: proto::TopicConfig) -> ClientResult<proto::TopicDescription> {
        let request = proto::CreateTopicRequest { name: name.to_owned(), config: Some(config) };
        Ok(self.admin.clone().create_topic(request).await?.into_inner())
    }

    pub async fn delete_topic(&self, name: &str) -> ClientResult<()> {
        self.admin.clone().delete_topic(proto::DeleteTopicRequest { name: name.to_owned() }).await?;
        Ok(())
    }

    pub async fn list_topics(&self) -> ClientResult<Vec<proto::TopicDescription>> {
        Ok(self.admin.clone().list_topics(proto::ListTopicsRequest {}).await?.into_inner().topics)
    }

    pub async fn describe_topic(&self, name: &str) -> ClientResult<proto::TopicDescription> {
        Ok(self.admin.clone().describe_topic(proto::DescribeTopicRequest { name: name.to_owned() }).await?.into_inner())
    }

    pub async fn describe_broker(&self) -> ClientResult<proto::BrokerDescription> {
        Ok(self.admin.clone().describe_broker(proto::DescribeBrokerRequest {}).await?.into_inner())
    }

    /// Produces records as one batch; the broker stamps missing timestamps.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<proto::Record>,
        acks: proto::Acks,
    ) -> ClientResult<proto::ProduceResponse> {
        let request =
            proto::ProduceRequest { topic: topic.to_owned(), partition, acks: acks as i32, records, batch: Vec::new() };
        Ok(self.producer.clone().produce(request).await?.into_inner())
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
            batch: batch.as_bytes().to_vec(),
        };
        Ok(self.producer.clone().produce(request).await?.into_inner())
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
        Ok(self.consumer.clone().fetch(request).await?.into_inner())
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
        let responses = self.consumer.clone().subscribe(requests).await?.into_inner();
        Ok(Subscription { credits, responses })
    }

    pub async fn join_group(&self, request: proto::JoinGroupRequest) -> ClientResult<proto::JoinGroupResponse> {
        Ok(self.groups.clone().join_group(request).await?.into_inner())
    }

    pub async fn sync_group(&self, request: proto::SyncGroupRequest) -> ClientResult<Vec<proto::TopicPartition>> {
        Ok(self.groups.clone().sync_group(request).await?.into_inner().assignment)
    }

    pub async fn heartbeat(&self, request: proto::HeartbeatRequest) -> ClientResult<()> {
        self.groups.clone().heartbeat(request).await?;
        Ok(())
    }

    pub async fn leave_group(&self, group: &str, member_id: &str) -> ClientResult<()> {
        let request = proto::LeaveGroupRequest { group: group.to_owned(), member_id: member_id.to_owned() };
        self.groups.clone().leave_group(request).await?;
        Ok(())
    }

    pub async fn commit_offsets(&self, request: proto::CommitOffsetsRequest) -> ClientResult<()> {
        self.groups.clone().commit_offsets(request).await?;
        Ok(())
    }

    /// Committed offsets of `group` (all of them if `partitions` is empty).
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: Vec<proto::TopicPartition>,
    ) -> ClientResult<Vec<proto::PartitionOffset>> {
        let request = proto::FetchOffsetsRequest { group: group.to_owned(), partitions };
        Ok(self.groups.clone().fetch_offsets(request).await?.into_inner().offsets)
    }

    pub async fn describe_group(&self, group: &str) -> ClientResult<proto::GroupDescription> {
        let request = proto::DescribeGroupRequest { group: group.to_owned() };
        Ok(self.groups.clone().describe_group(request).await?.into_inner())
    }

    pub async fn list_groups(&self) -> ClientResult<Vec<proto::GroupDescription>> {
        Ok(self.groups.clone().list_groups(proto::ListGroupsRequest {}).await?.into_inner().groups)
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
        Ok(self.consumer.clone().list_offset(request).await?.into_inner().offset)
    }
}
