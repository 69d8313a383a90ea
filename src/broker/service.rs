//! The gRPC face of the broker: thin adapters from requests to [`Broker`]
//! calls and from [`BrokerError`]s to statuses.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;

use tonic::{Request, Response, Status};

use super::core::Broker;
use super::error::{BrokerError, ErrorCode};
use super::metrics::Metrics;
use crate::group::GroupCoordinator;
use crate::meta::topics::TopicConfig;
use crate::proto::{self, admin_server, consumer_server, groups_server, producer_server};

/// Responses a subscription may have in flight beyond what the transport
/// buffers: small, so a subscriber's pace reaches the broker quickly.
const SUBSCRIBE_QUEUE: usize = 2;

/// How long a group call waits at most for a coordinator that is loading
/// or being elected before it answers a retriable error: short, so a call
/// answers well within any deadline and the client's retries do the rest.
const GROUPS_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// While waiting for the coordinator, how often to look where it is.
const GROUPS_LOOK_AGAIN: std::time::Duration = std::time::Duration::from_millis(100);

/// The deadline a gRPC caller set (the `grpc-timeout` header: at most eight
/// digits and a unit), if any.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// How long a group call may wait for its coordinator: [`GROUPS_WAIT_MAX`],
/// or half the caller's deadline if that is shorter.
fn groups_wait(metadata: &tonic::metadata::MetadataMap) -> std::time::Duration {
    grpc_timeout(metadata).map_or(GROUPS_WAIT_MAX, |deadline| (deadline / 2).min(GROUPS_WAIT_MAX))
}

/// The group coordinator while this broker is it (it leads the offsets
/// partition).
pub type GroupsReady = tokio::sync::watch::Receiver<Option<Arc<GroupCoordinator>>>;

#[derive(Debug, Clone)]
pub struct BrokerService {
    broker: Arc<Broker>,
    groups: GroupsReady,
    metrics: Arc<Metrics>,
}

impl BrokerService {
    pub fn new(broker: Arc<Broker>, groups: GroupsReady, metrics: Arc<Metrics>) -> Self {
        Self { broker, groups, metrics }
    }

    /// The group coordinator if this broker is it. Elsewhere: NOT_LEADER
    /// naming the broker that leads the offsets partition (the
    /// coordinator). While this broker leads it but is still loading the
    /// committed offsets, or while no leader is known (an election), a wait
    /// of at most `wait`, then COORDINATOR_LOADING or PARTITION_UNAVAILABLE,
    /// both retriable.
    async fn groups(&self, wait: std::time::Duration) -> Result<Arc<GroupCoordinator>, BrokerError> {
        use super::server::OFFSETS_TOPIC;
        let mut ready = self.groups.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(groups) = ready.borrow_and_update().clone() {
                return Ok(groups);
            }
            let mut loading = false;
            match self.broker.partition(OFFSETS_TOPIC, 0) {
                Ok(partition) => match partition.replica().leader() {
                    Some((leader, address)) if leader != self.broker.broker_id() && !address.is_empty() => {
                        let mut error = BrokerError::new(
                            ErrorCode::NotLeader,
                            format!("broker {leader} coordinates groups (it leads {OFFSETS_TOPIC}/0), not this one"),
                        );
                        error.leader = Some(address);
                        return Err(error);
                    }
                    Some((leader, _)) => loading = leader == self.broker.broker_id(),
                    None => {}
                },
                // Held elsewhere: the error names its preferred leader.
                Err(error) if error.code == ErrorCode::NotLeader => return Err(error),
                Err(_) => {} // not created yet
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(match loading {
                    true => BrokerError::new(
                        ErrorCode::CoordinatorLoading,
                        format!(
                            "broker {} is loading the committed offsets of {OFFSETS_TOPIC}/0",
                            self.broker.broker_id()
                        ),
                    ),
                    false => BrokerError::new(
                        ErrorCode::PartitionUnavailable,
                        format!("no group coordinator yet: {OFFSETS_TOPIC}/0 has no leader"),
                    ),
                });
            }
            let _ = tokio::time::timeout(left.min(GROUPS_LOOK_AGAIN), ready.changed()).await;
        }
    }
}

/// Runs a group call once the coordinator is there.
macro_rules! with_groups {
    ($service:expr, $request:ident, |$groups:ident| $body:expr) => {
        match $service.groups(groups_wait($request.metadata())).await {
            Ok($groups) => reply($body),
            Err(error) => reply(Err(error)),
        }
    };
}

fn reply<T>(result: Result<T, BrokerError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl admin_server::Admin for BrokerService {
    async fn create_topic(
        &self,
        request: Request<proto::CreateTopicRequest>,
    ) -> Result<Response<proto::TopicDescription>, Status> {
        let request = request.into_inner();
        let Some(config) = request.config else {
            return reply(Err(BrokerError::new(
                proto::ErrorCode::InvalidTopicConfig,
                "a topic needs a config with partitions",
            )));
        };
        let config = TopicConfig {
            partitions: config.partitions,
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            segment_bytes: config.segment_bytes,
            replication_factor: config.replication_factor,
        };
        reply(self.broker.create_topic(&request.name, config).await)
    }

    async fn delete_topic(
        &self,
        request: Request<proto::DeleteTopicRequest>,
    ) -> Result<Response<proto::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        let deleted = async {
            self.broker.delete_topic(&name).await?;
            let opened = self.groups.borrow().clone();
            match opened {
                Some(groups) => groups.topic_deleted(&name).await,
                None => Ok(()),
            }
        };
        reply(deleted.await.map(|()| proto::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _: Request<proto::ListTopicsRequest>,
    ) -> Result<Response<proto::ListTopicsResponse>, Status> {
        reply(self.broker.list_topics().await.map(|topics| proto::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<proto::DescribeTopicRequest>,
    ) -> Result<Response<proto::TopicDescription>, Status> {
        reply(self.broker.describe_topic(&request.into_inner().name).await)
    }

    async fn describe_broker(
        &self,
        _: Request<proto::DescribeBrokerRequest>,
    ) -> Result<Response<proto::BrokerDescription>, Status> {
        reply(Ok(self.broker.describe_broker()))
    }

    async fn describe_cluster(
        &self,
        _: Request<proto::DescribeClusterRequest>,
    ) -> Result<Response<proto::DescribeClusterResponse>, Status> {
        reply(self.broker.describe_cluster().await)
    }

    async fn move_partition(
        &self,
        request: Request<proto::MovePartitionRequest>,
    ) -> Result<Response<proto::PartitionDescription>, Status> {
        let request = request.into_inner();
        reply(self.broker.move_partition(&request.topic, request.partition, request.replicas).await)
    }

    async fn decommission_broker(
        &self,
        request: Request<proto::DecommissionBrokerRequest>,
    ) -> Result<Response<proto::DecommissionedBroker>, Status> {
        reply(self.broker.decommission_broker(request.into_inner().broker_id).await)
    }

    async fn recommission_broker(
        &self,
        request: Request<proto::RecommissionBrokerRequest>,
    ) -> Result<Response<proto::DecommissionedBroker>, Status> {
        reply(self.broker.recommission_broker(request.into_inner().broker_id).await)
    }
}

#[tonic::async_trait]
impl producer_server::Producer for BrokerService {
    async fn produce(
        &self,
        request: Request<proto::ProduceRequest>,
    ) -> Result<Response<proto::ProduceResponse>, Status> {
        let started = tokio::time::Instant::now();
        let request = request.into_inner();
        let bytes = request.batch.len() as u64 + request.records.iter().map(proto::Record::payload_bytes).sum::<u64>();
        let result = self.broker.produce(request).await;
        let m = &self.metrics;
        m.produce_requests.fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(response) => {
                m.produce_records.fetch_add(u64::from(response.record_count), Ordering::Relaxed);
                m.produce_bytes.fetch_add(bytes, Ordering::Relaxed);
                m.produce_latency.observe(started.elapsed());
            }
            Err(_) => {
                m.produce_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        reply(result)
    }

    async fn init_producer(
        &self,
        _: Request<proto::InitProducerRequest>,
    ) -> Result<Response<proto::InitProducerResponse>, Status> {
        reply(Ok(self.broker.init_producer()))
    }
}

#[tonic::async_trait]
impl consumer_server::Consumer for BrokerService {
    async fn fetch(&self, request: Request<proto::FetchRequest>) -> Result<Response<proto::FetchResponse>, Status> {
        let started = tokio::time::Instant::now();
        let result = self.broker.fetch(request.into_inner()).await;
        let m = &self.metrics;
        m.fetch_requests.fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(response) => {
                let records = response.records.len() as u64;
                let bytes = response.batches.iter().map(|b| b.len() as u64).sum::<u64>()
                    + response.records.iter().map(proto::Record::payload_bytes).sum::<u64>();
                m.fetch_records.fetch_add(records, Ordering::Relaxed);
                m.fetch_bytes.fetch_add(bytes, Ordering::Relaxed);
                if records > 0 || !response.batches.is_empty() {
                    m.fetch_latency.observe(started.elapsed());
                }
            }
            Err(_) => {
                m.fetch_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        reply(result)
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<proto::SubscribeResponse, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<tonic::Streaming<proto::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (outbound, responses) = mpsc::channel(SUBSCRIBE_QUEUE);
        tokio::spawn(self.broker.clone().subscribe(request.into_inner(), outbound));
        let stream = futures::stream::unfold(responses, |mut responses| async move {
            responses.recv().await.map(|response| (response, responses))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_offset(
        &self,
        request: Request<proto::ListOffsetRequest>,
    ) -> Result<Response<proto::ListOffsetResponse>, Status> {
        reply(self.broker.list_offset(request.into_inner()).await.map(|offset| proto::ListOffsetResponse { offset }))
    }
}

#[tonic::async_trait]
impl groups_server::Groups for BrokerService {
    async fn join_group(
        &self,
        request: Request<proto::JoinGroupRequest>,
    ) -> Result<Response<proto::JoinGroupResponse>, Status> {
        with_groups!(self, request, |groups| groups.join(request.into_inner()).await)
    }

    async fn sync_group(
        &self,
        request: Request<proto::SyncGroupRequest>,
    ) -> Result<Response<proto::SyncGroupResponse>, Status> {
        with_groups!(self, request, |g| g
            .sync(request.get_ref())
            .map(|assignment| proto::SyncGroupResponse { assignment }))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        with_groups!(self, request, |g| g.heartbeat(request.get_ref()).map(|()| proto::HeartbeatResponse {}))
    }

    async fn leave_group(
        &self,
        request: Request<proto::LeaveGroupRequest>,
    ) -> Result<Response<proto::LeaveGroupResponse>, Status> {
        with_groups!(self, request, |g| g.leave(request.get_ref()).map(|()| proto::LeaveGroupResponse {}))
    }

    async fn commit_offsets(
        &self,
        request: Request<proto::CommitOffsetsRequest>,
    ) -> Result<Response<proto::CommitOffsetsResponse>, Status> {
        with_groups!(self, request, |groups| groups
            .commit(request.into_inner())
            .await
            .map(|()| proto::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<proto::FetchOffsetsRequest>,
    ) -> Result<Response<proto::FetchOffsetsResponse>, Status> {
        with_groups!(self, request, |g| g
            .fetch_offsets(request.get_ref())
            .await
            .map(|offsets| proto::FetchOffsetsResponse { offsets }))
    }

    async fn describe_group(
        &self,
        request: Request<proto::DescribeGroupRequest>,
    ) -> Result<Response<proto::GroupDescription>, Status> {
        with_groups!(self, request, |g| g.describe(&request.get_ref().group))
    }

    async fn list_groups(
        &self,
        request: Request<proto::ListGroupsRequest>,
    ) -> Result<Response<proto::ListGroupsResponse>, Status> {
        with_groups!(self, request, |g| g.list().map(|groups| proto::ListGroupsResponse { groups }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_callers_deadline_bounds_the_wait_for_the_coordinator() {
        let table: &[(Option<&str>, Option<Duration>, Duration)] = &[
            (None, None, GROUPS_WAIT_MAX),
            (Some("500m"), Some(Duration::from_millis(500)), Duration::from_millis(250)),
            (Some("10S"), Some(Duration::from_secs(10)), GROUPS_WAIT_MAX),
            (Some("1M"), Some(Duration::from_secs(60)), GROUPS_WAIT_MAX),
            (Some("3000u"), Some(Duration::from_micros(3000)), Duration::from_micros(1500)),
            (Some("20n"), Some(Duration::from_nanos(20)), Duration::from_nanos(10)),
            (Some("123456789m"), None, GROUPS_WAIT_MAX), // nine digits: not a grpc-timeout
            (Some("5x"), None, GROUPS_WAIT_MAX),
            (Some("m"), None, GROUPS_WAIT_MAX),
        ];
        for &(header, timeout, wait) in table {
            let mut metadata = tonic::metadata::MetadataMap::new();
            if let Some(header) = header {
                metadata.insert("grpc-timeout", header.parse().unwrap());
            }
            assert_eq!(grpc_timeout(&metadata), timeout, "{header:?}");
            assert_eq!(groups_wait(&metadata), wait, "{header:?}");
        }
    }
}
