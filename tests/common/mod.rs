//! A broker for end-to-end tests over real gRPC, in both builds.
//!
//! On tokio it serves on a free loopback port and the test talks to it
//! directly. Inside madsim (`--cfg madsim`) network calls must come from a
//! node with an IP, so the broker runs on node 10.0.0.1 and the test's client
//! code on node 10.0.0.2 (`TestBroker::run`). Either way the broker's disk is
//! a `SimDisk` that outlives restarts and can crash.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use weir::broker::BrokerConfig;
use weir::client::Client;
use weir::sys::disk::SimDisk;

pub const CONNECT_ATTEMPTS: u32 = 100;
pub const CONNECT_RETRY: Duration = Duration::from_millis(50);

fn config(listen: std::net::SocketAddr, metrics: std::net::SocketAddr, http: std::net::SocketAddr) -> BrokerConfig {
    BrokerConfig {
        data_dir: PathBuf::from("/broker"),
        listen,
        metrics_listen: Some(metrics),
        http_listen: Some(http),
        message_bytes_max: 64 << 10,
        fetch_wait_ms_max: 20_000,
        offsets_bytes_max: 32 << 10,
        offsets_segment_bytes: 8 << 10,
        ..BrokerConfig::default()
    }
}

/// Connects, retrying while the broker is still starting.
pub async fn connect(address: &str) -> Client {
    for _ in 0..CONNECT_ATTEMPTS {
        if let Ok(client) = Client::connect(address).await {
            if client.describe_broker().await.is_ok() {
                return client;
            }
        }
        tokio::time::sleep(CONNECT_RETRY).await;
    }
    panic!("broker at {address} did not come up");
}

#[cfg(not(madsim))]
mod imp {
    use std::sync::Arc;

    use tokio::sync::oneshot;
    use weir::broker::server::{open_broker, serve};
    use weir::sys::clock::{system_clock, SteppedClock};
    use weir::sys::disk::Disk;

    use super::*;

    pub struct TestBroker {
        pub disk: SimDisk,
        /// The broker's wall clock, which a test may step.
        pub clock: Arc<SteppedClock>,
        pub address: String,
        pub metrics_address: String,
        pub http_address: String,
        listen: std::net::SocketAddr,
        metrics: std::net::SocketAddr,
        http: std::net::SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: Option<tokio::task::JoinHandle<()>>,
        broker: Option<Arc<weir::broker::Broker>>,
    }

    impl TestBroker {
        pub async fn start() -> Self {
            let listen = weir::sys::net::free_loopback_addr().expect("a free port");
            let metrics = weir::sys::net::free_loopback_addr().expect("a free port");
            let http = weir::sys::net::free_loopback_addr().expect("a free port");
            let mut broker = Self {
                disk: SimDisk::new(1),
                clock: SteppedClock::new(system_clock()),
                address: listen.to_string(),
                metrics_address: metrics.to_string(),
                http_address: http.to_string(),
                listen,
                metrics,
                http,
                stop: None,
                task: None,
                broker: None,
            };
            broker.boot().await;
            broker
        }

        async fn boot(&mut self) {
            let disk: Arc<dyn Disk> = Arc::new(self.disk.clone());
            let config = config(self.listen, self.metrics, self.http);
            let broker = open_broker(config, disk, self.clock.clone()).await.expect("broker opens");
            self.broker = Some(broker.clone());
            let (stop, stopped) = oneshot::channel::<()>();
            self.stop = Some(stop);
            self.task = Some(tokio::spawn(async move {
                serve(broker, async {
                    let _ = stopped.await;
                })
                .await
                .expect("broker serves");
            }));
            connect(&self.address).await;
        }

        /// Stops the broker cleanly, loses power (what was not fsynced is
        /// gone), and starts it again on the same disk.
        pub async fn restart(&mut self, crash_seed: u64) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(task) = self.task.take() {
                task.await.expect("broker stops cleanly");
            }
            self.disk.crash(crash_seed);
            self.boot().await;
        }

        /// Kills the broker as a crash would (nothing closed, nothing
        /// flushed that was not), loses power, lets `between` act on the
        /// disk (damage at rest), and starts it again.
        pub async fn kill_and_restart(&mut self, crash_seed: u64, between: impl FnOnce(&SimDisk)) {
            self.stop = None;
            if let Some(task) = self.task.take() {
                task.abort();
                let _ = task.await;
            }
            if let Some(broker) = self.broker.take() {
                broker.halt().await;
            }
            self.disk.crash(crash_seed);
            between(&self.disk);
            self.boot().await;
        }

        /// Runs client code where it can reach the broker.
        pub async fn run<F>(&self, f: F) -> F::Output
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            f.await
        }
    }
}

#[cfg(madsim)]
mod imp {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;

    use madsim::runtime::{Handle, NodeHandle};
    use weir::broker::server::{open_broker, serve};
    use weir::sys::clock::{system_clock, Clock, SteppedClock};
    use weir::sys::disk::Disk;

    use super::*;

    const BROKER_IP: &str = "10.0.0.1";
    const CLIENT_IP: &str = "10.0.0.2";
    const PORT: u16 = 9092;
    const METRICS_PORT: u16 = 9093;
    const HTTP_PORT: u16 = 8080;

    pub struct TestBroker {
        pub disk: SimDisk,
        /// The broker's wall clock, which a test may step.
        pub clock: Arc<SteppedClock>,
        pub address: String,
        pub metrics_address: String,
        pub http_address: String,
        node: NodeHandle,
        client_node: NodeHandle,
    }

    impl TestBroker {
        pub async fn start() -> Self {
            let handle = Handle::current();
            let disk = SimDisk::new(1);
            let listen = SocketAddr::new(BROKER_IP.parse::<IpAddr>().unwrap(), PORT);
            let metrics = SocketAddr::new(listen.ip(), METRICS_PORT);
            let http = SocketAddr::new(listen.ip(), HTTP_PORT);
            let node_disk = disk.clone();
            let clock = SteppedClock::new(system_clock());
            let node_clock = clock.clone();
            let node = handle
                .create_node()
                .name("broker")
                .ip(listen.ip())
                .init(move || {
                    // A (re)started node is a new process: the old one's
                    // lock on the data directory died with it.
                    node_disk.release_locks();
                    let disk: Arc<dyn Disk> = Arc::new(node_disk.clone());
                    let clock: Arc<dyn Clock> = node_clock.clone();
                    async move {
                        let config = config(listen, metrics, http);
                        let broker = open_broker(config, disk, clock).await.expect("broker opens");
                        serve(broker, std::future::pending()).await.expect("broker serves");
                    }
                })
                .build();
            let client_node = handle.create_node().name("client").ip(CLIENT_IP.parse().unwrap()).build();
            let broker = Self {
                disk,
                clock,
                address: listen.to_string(),
                metrics_address: metrics.to_string(),
                http_address: http.to_string(),
                node,
                client_node,
            };
            let address = broker.address.clone();
            broker.run(async move { connect(&address).await }).await;
            broker
        }

        /// Kills the broker node, loses power (what was not fsynced is
        /// gone), and restarts it on the same disk.
        pub async fn restart(&mut self, crash_seed: u64) {
            let handle = Handle::current();
            handle.kill(self.node.id());
            self.disk.crash(crash_seed);
            handle.restart(self.node.id());
            let address = self.address.clone();
            self.run(async move { connect(&address).await }).await;
        }

        /// Kills the broker node, loses power, lets `between` act on the
        /// disk (damage at rest), and restarts it.
        pub async fn kill_and_restart(&mut self, crash_seed: u64, between: impl FnOnce(&SimDisk)) {
            let handle = Handle::current();
            handle.kill(self.node.id());
            self.disk.crash(crash_seed);
            between(&self.disk);
            handle.restart(self.node.id());
            let address = self.address.clone();
            self.run(async move { connect(&address).await }).await;
        }

        /// Runs client code on the client node, where it can reach the broker.
        pub async fn run<F>(&self, f: F) -> F::Output
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            self.client_node.spawn(f).await.expect("client task")
        }
    }
}

pub use imp::TestBroker;
