//! Running a broker: open the metadata store and the partitions, serve gRPC,
//! run background maintenance, and shut down cleanly.

use std::future::Future;
use std::sync::Arc;

use super::config::BrokerConfig;
use super::core::Broker;
use super::error::{BrokerError, BrokerResult, ErrorCode};
use super::metrics::{self, Metrics};
use super::service::BrokerService;
use crate::group::offsets::OffsetStore;
use crate::group::GroupCoordinator;
use crate::log::batch::BATCH_BYTES_MAX;
use crate::meta::{EmbeddedStore, EtcdStore, MetaStore};
use crate::proto::admin_server::AdminServer;
use crate::proto::consumer_server::ConsumerServer;
use crate::proto::groups_server::GroupsServer;
use crate::proto::producer_server::ProducerServer;
use crate::proto::raft_server::RaftServer;
use crate::raft::network::RAFT_MESSAGE_BYTES_MAX;
use crate::raft::RaftService;
use crate::sys::clock::Clock;
use crate::sys::disk::Disk;
use crate::sys::reflection::with_reflection;

/// How long a starting broker waits for the offsets partition to elect a
/// leader and catch up before reading the committed offsets.
const OFFSETS_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(10);

/// Requests may carry a whole batch plus framing.
const GRPC_MESSAGE_BYTES_MAX: usize = BATCH_BYTES_MAX + (1 << 20);

/// Stops a background task when the server future ends or is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens a broker on its metadata store: etcd if `config.etcd` lists
/// endpoints (a cluster), else the embedded store in `<data_dir>/meta` (a
/// single broker).
pub async fn open_broker(
    config: BrokerConfig,
    disk: Arc<dyn Disk>,
    clock: Arc<dyn Clock>,
) -> BrokerResult<Arc<Broker>> {
    let store: Arc<dyn MetaStore> = if config.etcd.is_empty() {
        let meta_dir = config.data_dir.join("meta");
        let store = EmbeddedStore::open(disk.clone(), &meta_dir, clock.clone())
            .map_err(|e| BrokerError::new(ErrorCode::MetadataUnavailable, e.to_string()))?;
        Arc::new(store)
    } else {
        Arc::new(EtcdStore::connect(config.etcd.clone(), &config.cluster_name).await?)
    };
    Broker::open(config, store, disk, clock).await
}

/// The internal topic that holds committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Where the group coordinator is published: `Some` while this broker
/// coordinates groups, that is while it leads the offsets partition.
pub type GroupsSender = tokio::sync::watch::Sender<Option<Arc<GroupCoordinator>>>;

/// Coordinates groups for as long as this broker leads the offsets
/// partition: waits to lead it, reads the committed offsets back (once
/// everything earlier leaders committed is applied), publishes the
/// coordinator, and withdraws it when leadership goes. Ok when this broker
/// holds no replica of the partition or lost its leadership.
async fn coordinate(broker: &Arc<Broker>, ready: &GroupsSender) -> BrokerResult<()> {
    let config = broker.config();
    let partition = match broker.internal_partition(OFFSETS_TOPIC, config.offsets_segment_bytes).await {
        Ok(partition) => partition,
        Err(error) if error.code == ErrorCode::NotLeader => return Ok(()),
        Err(error) => return Err(error),
    };
    let mut metrics = partition.replica().raft().server_metrics();
    if metrics.wait_for(|m| m.state == openraft::ServerState::Leader).await.is_err() {
        return Ok(()); // the replica closed (moved away)
    }
    if !partition.replica().wait_caught_up(OFFSETS_CATCH_UP).await || !partition.replica().is_leader() {
        return Ok(());
    }
    let offsets = OffsetStore::load(partition.clone(), config.offsets_bytes_max).await?;
    let term = offsets.term();
    let groups = Arc::new(GroupCoordinator::new(broker.clone(), offsets, broker.clock(), term));
    ready.send_replace(Some(groups.clone()));
    tracing::info!(broker = broker.broker_id(), "coordinating consumer groups");
    let lost = metrics.wait_for(|m| m.state != openraft::ServerState::Leader);
    tokio::select! {
        _ = groups.run() => {}
        _ = lost => {}
    }
    ready.send_replace(None);
    tracing::info!(broker = broker.broker_id(), "no longer coordinating consumer groups");
    Ok(())
}

/// Runs the group coordinator wherever leadership of the offsets
/// partition takes it, for as long as the broker runs.
async fn run_groups(broker: Arc<Broker>, ready: GroupsSender) {
    loop {
        if let Err(error) = coordinate(&broker, &ready).await {
            tracing::warn!(%error, "coordinating consumer groups failed; retrying");
        }
        ready.send_replace(None);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Serves `broker` on its configured address until `shutdown` completes,
/// then closes every partition cleanly.
pub async fn serve(
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listen = broker.config().listen;
    // Serving starts at once (other brokers need this one's Raft service
    // to elect the offsets partition's leader); group calls wait until
    // the coordinator is open.
    let (groups_tx, groups) = tokio::sync::watch::channel(None);
    let metrics = Arc::new(Metrics::default());
    let service = BrokerService::new(broker.clone(), groups.clone(), metrics.clone());
    let metrics_server = broker
        .config()
        .metrics_listen
        .map(|at| AbortOnDrop(tokio::spawn(metrics::serve(at, metrics, broker.clone(), groups.clone()))));
    let gateway = broker.config().http_listen.map(|at| {
        let own = broker.config().advertise.clone().unwrap_or_else(|| listen.to_string());
        AbortOnDrop(tokio::spawn(crate::gateway::serve(at, own)))
    });
    let maintenance = AbortOnDrop(tokio::spawn(broker.clone().run_maintenance()));
    let reconciler = AbortOnDrop(tokio::spawn(broker.clone().run_reconciler()));
    let scrubber = AbortOnDrop(tokio::spawn(broker.clone().run_scrubber()));
    let controller = AbortOnDrop(tokio::spawn(broker.clone().run_controller()));
    let group_ticks = AbortOnDrop(tokio::spawn(run_groups(broker.clone(), groups_tx)));
    tracing::info!(%listen, "weir broker serving");
    let router = tonic::transport::Server::builder()
        .add_service(AdminServer::new(service.clone()).max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX))
        .add_service(
            ProducerServer::new(service.clone())
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX),
        )
        .add_service(GroupsServer::new(service.clone()))
        .add_service(
            RaftServer::new(RaftService::new(broker.config().broker_id, broker.raft_router()))
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX),
        )
        .add_service(
            ConsumerServer::new(service)
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX),
        );
    let served = with_reflection(router).serve_with_shutdown(listen, shutdown).await;
    drop((maintenance, reconciler, scrubber, controller, group_ticks, metrics_server, gateway));
    broker.shutdown().await?;
    tracing::info!("weir broker stopped");
    served.map_err(Into::into)
}
