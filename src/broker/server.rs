//! Running a broker: open the metadata store and the partitions, serve gRPC,
//! run background maintenance, and shut down cleanly.

use std::future::Future;
use std::sync::Arc;

use super::config::BrokerConfig;
use super::core::Broker;
use super::data_dir::DataDirClaim;
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
use crate::sys::listener::{self, GrpcListener, ListenError, TcpListener};
use crate::sys::reflection::with_reflection;

/// How long a starting broker waits for the offsets partition to elect a
/// leader and catch up before reading the committed offsets.
const OFFSETS_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a stopping broker spends at most handing its leaderships over.
const HAND_OVER_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a stopping broker waits at most for in-flight calls once it
/// stopped accepting new ones.
pub const DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(5);

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
    let claim = {
        let (disk, dir, cluster) = (disk.clone(), config.data_dir.clone(), config.cluster_name.clone());
        let broker_id = config.broker_id;
        crate::sys::task::blocking(move || DataDirClaim::claim(&disk, &dir, broker_id, &cluster)).await?
    };
    let store: Arc<dyn MetaStore> = if config.etcd.is_empty() {
        let meta_dir = config.data_dir.join("meta");
        let store = EmbeddedStore::open(disk.clone(), &meta_dir, clock.clone())
            .map_err(|e| BrokerError::new(ErrorCode::MetadataUnavailable, e.to_string()))?;
        Arc::new(store)
    } else {
        Arc::new(connect_etcd(&config).await?)
    };
    Broker::open(config, store, disk, clock, claim).await
}

/// How long a starting broker waits for etcd to answer: brokers and etcd
/// often start together (a host boots, a recipe starts them all at once).
const ETCD_STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const ETCD_STARTUP_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Connects to the cluster's etcd, waiting up to [`ETCD_STARTUP_WAIT`] for
/// it to answer (said once, at WARN, while it does not).
async fn connect_etcd(config: &BrokerConfig) -> BrokerResult<EtcdStore> {
    let deadline = tokio::time::Instant::now() + ETCD_STARTUP_WAIT;
    let mut said = false;
    loop {
        match EtcdStore::connect(config.etcd.clone(), &config.cluster_name).await {
            Ok(store) => return Ok(store),
            Err(error) if tokio::time::Instant::now() + ETCD_STARTUP_RETRY < deadline => {
                if !said {
                    tracing::warn!(%error, "waiting up to {ETCD_STARTUP_WAIT:?} for etcd");
                    said = true;
                }
                tokio::time::sleep(ETCD_STARTUP_RETRY).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
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

/// Every socket a broker serves on, bound: gRPC, and metrics and the HTTP
/// gateway where the config enables them.
#[derive(Debug)]
pub struct Listeners {
    grpc: GrpcListener,
    metrics: Option<TcpListener>,
    http: Option<TcpListener>,
}

impl Listeners {
    /// Binds every address `config` serves on; the first that cannot be
    /// bound is an error naming it.
    pub async fn bind(config: &BrokerConfig) -> Result<Self, ListenError> {
        let grpc = GrpcListener::bind(config.listen).await?;
        let metrics = match config.metrics_listen {
            Some(at) => Some(listener::bind_tcp(at, "metrics").await?),
            None => None,
        };
        let http = match config.http_listen {
            Some(at) => Some(listener::bind_tcp(at, "the HTTP gateway").await?),
            None => None,
        };
        Ok(Self { grpc, metrics, http })
    }
}

/// Binds `broker`'s addresses and serves it until `shutdown` completes
/// (see [`serve_on`]). A listener that cannot be bound closes the broker
/// and is the error.
pub async fn serve(
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match Listeners::bind(broker.config()).await {
        Ok(listeners) => serve_on(broker, listeners, shutdown).await,
        Err(error) => {
            broker.shutdown().await?;
            Err(error.into())
        }
    }
}

/// Serves `broker` on `listeners` until `shutdown` completes, then stops
/// gracefully: hands the partitions it leads to caught-up followers (so
/// clients move on at once rather than after an election timeout), ends
/// long polls and subscriptions, stops accepting, lets in-flight calls
/// finish (for at most [`DRAIN_MAX`]), and closes every partition log
/// cleanly, so the next start is a clean one.
pub async fn serve_on(
    broker: Arc<Broker>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listen = listeners.grpc.addr();
    // Serving starts at once (other brokers need this one's Raft service
    // to elect the offsets partition's leader); group calls wait until
    // the coordinator is open.
    let (groups_tx, groups) = tokio::sync::watch::channel(None);
    let metrics = Arc::new(Metrics::default());
    let service = BrokerService::new(broker.clone(), groups.clone(), metrics.clone());
    let metrics_server = listeners
        .metrics
        .map(|listener| AbortOnDrop(tokio::spawn(metrics::serve(listener, metrics, broker.clone(), groups.clone()))));
    let gateway = listeners.http.map(|listener| {
        let own = broker.config().advertise.clone().unwrap_or_else(|| listen.to_string());
        AbortOnDrop(tokio::spawn(crate::gateway::serve(listener, own)))
    });
    let maintenance = AbortOnDrop(tokio::spawn(broker.clone().run_maintenance()));
    let reconciler = AbortOnDrop(tokio::spawn(broker.clone().run_reconciler()));
    let scrubber = AbortOnDrop(tokio::spawn(broker.clone().run_scrubber()));
    let controller = AbortOnDrop(tokio::spawn(broker.clone().run_controller()));
    let group_ticks = AbortOnDrop(tokio::spawn(run_groups(broker.clone(), groups_tx)));
    tracing::info!(%listen, "weir broker serving");
    let router = tonic::transport::Server::builder()
        .layer(listener::StatusRewriteLayer { rewrite: super::error::typed_transport_status })
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
    let (draining_tx, draining) = tokio::sync::oneshot::channel::<()>();
    let stop = {
        let broker = broker.clone();
        async move {
            shutdown.await;
            let started = tokio::time::Instant::now();
            tracing::info!(broker = broker.broker_id(), "stopping");
            if broker.config().hand_over_on_stop {
                let handed = broker.hand_over_leaderships(HAND_OVER_MAX).await;
                tracing::info!(
                    led = handed.led,
                    handed_over = handed.handed_over,
                    elapsed = ?started.elapsed(),
                    "stopping: leaderships handed over"
                );
            }
            // Only now: a long poll woken earlier would come straight back
            // for as long as the hand-over took.
            broker.begin_stop();
            let _ = draining_tx.send(());
        }
    };
    let served = with_reflection(router);
    let served = listeners.grpc.serve(served, stop);
    let drain_bounded = async {
        match draining.await {
            Ok(_) => tokio::time::sleep(DRAIN_MAX).await,
            Err(_) => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        served = served => served,
        () = drain_bounded => {
            tracing::warn!("stopping: in-flight calls did not finish within {DRAIN_MAX:?}; closing them");
            Ok(())
        }
    };
    drop((maintenance, reconciler, scrubber, controller, group_ticks, metrics_server, gateway));
    let closing = tokio::time::Instant::now();
    broker.shutdown().await?;
    tracing::info!(closed_in = ?closing.elapsed(), "weir broker stopped");
    served.map_err(Into::into)
}
