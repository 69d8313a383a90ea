//! A metadata store for tests and simulations, in both builds: a real
//! `etcd` process on loopback (Debian's etcd-server) on tokio, madsim's
//! simulated etcd on its own node under `--cfg madsim`.

use std::future::Future;
use std::time::Duration;

use weir::meta::EtcdStore;

// Starting a process and making its data directory is what clippy.toml's seam
// rules keep out of weir's own code; a test harness for a real etcd must.
#[cfg(not(madsim))]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod imp {
    use std::fs::{self, File};
    use std::io::ErrorKind;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const STARTUP_ATTEMPTS: u32 = 50;
    const STARTUP_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
    const STARTUP_RETRY: Duration = Duration::from_millis(200);
    /// Each test's etcd gets its own directory.
    static SERVERS_STARTED: AtomicU32 = AtomicU32::new(0);

    /// A real single-member etcd on loopback, killed on drop.
    pub struct EtcdServer {
        child: Option<Child>,
        dir: PathBuf,
        endpoint: String,
    }

    impl EtcdServer {
        pub async fn start() -> Self {
            let client = weir::sys::net::free_loopback_addr().expect("a free port");
            let peer = weir::sys::net::free_loopback_addr().expect("a free port");
            let n = SERVERS_STARTED.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("weir-meta-etcd-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("a temporary directory");
            let log = File::create(dir.join("etcd.log")).expect("a log file");
            let client_url = format!("http://{client}");
            let peer_url = format!("http://{peer}");
            // A short election timeout elects the lone member fast and lowers
            // etcd's minimum lease TTL (1.5 election timeouts) below 1 s.
            let spawned = Command::new("etcd")
                .args(["--name", "weir-test", "--logger", "zap"])
                .arg("--data-dir")
                .arg(dir.join("data"))
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("weir-test={peer_url}"), "--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("a log file handle"))
                .stderr(log)
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    panic!("the `etcd` binary is not on PATH: run `bash .ci/setup` (installs Debian's etcd-server)")
                }
                Err(e) => panic!("starting etcd: {e}"),
            };
            let mut server = Self { child: Some(child), dir, endpoint: client.to_string() };
            server.wait_until_serving().await;
            server
        }

        async fn wait_until_serving(&mut self) {
            for _ in 0..STARTUP_ATTEMPTS {
                let child = self.child.as_mut().expect("etcd is running");
                if let Some(status) = child.try_wait().expect("etcd's status") {
                    panic!("etcd exited with {status} while starting:\n{}", self.log());
                }
                let probe = EtcdStore::connect(vec![self.endpoint.clone()], "startup-probe");
                if let Ok(Ok(_)) = tokio::time::timeout(STARTUP_PROBE_TIMEOUT, probe).await {
                    tracing::info!(endpoint = %self.endpoint, "etcd is serving");
                    return;
                }
                tokio::time::sleep(STARTUP_RETRY).await;
            }
            panic!("etcd at {} did not answer after {STARTUP_ATTEMPTS} attempts:\n{}", self.endpoint, self.log());
        }

        fn log(&self) -> String {
            fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_else(|e| format!("(no log: {e})"))
        }

        pub fn endpoint(&self) -> String {
            self.endpoint.clone()
        }

        /// An address where no etcd listens.
        pub fn dead_endpoint(&self) -> String {
            weir::sys::net::free_loopback_addr().expect("a free port").to_string()
        }

        /// Kills etcd (SIGKILL: no goodbye to its clients).
        pub async fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// Runs client code where it can reach etcd: here, in place.
        pub async fn run<F>(&self, f: F) -> F::Output
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            f.await
        }
    }

    impl Drop for EtcdServer {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(madsim)]
pub mod imp {
    use std::net::SocketAddr;

    use madsim::runtime::{Handle, NodeHandle};

    use super::*;

    const ETCD_ADDR: &str = "10.0.0.100:2379";
    const CLIENT_IP: &str = "10.0.0.2";
    /// No node has this address.
    const DEAD_ADDR: &str = "10.0.0.99:2379";
    const STARTUP_ATTEMPTS: u32 = 50;
    const STARTUP_RETRY: Duration = Duration::from_millis(100);

    /// madsim's simulated etcd on its own node, and a client node to call it from.
    pub struct EtcdServer {
        node: NodeHandle,
        client_node: NodeHandle,
    }

    impl EtcdServer {
        pub async fn start() -> Self {
            let handle = Handle::current();
            let addr: SocketAddr = ETCD_ADDR.parse().unwrap();
            let node = handle.create_node().name("etcd").ip(addr.ip()).build();
            node.spawn(async move {
                etcd_client::SimServer::builder().serve(addr).await.expect("the simulated etcd serves");
            });
            let client_node = handle.create_node().name("client").ip(CLIENT_IP.parse().unwrap()).build();
            let server = Self { node, client_node };
            server
                .run(async {
                    for _ in 0..STARTUP_ATTEMPTS {
                        if EtcdStore::connect(vec![ETCD_ADDR.to_owned()], "startup-probe").await.is_ok() {
                            return;
                        }
                        tokio::time::sleep(STARTUP_RETRY).await;
                    }
                    panic!("the simulated etcd did not answer after {STARTUP_ATTEMPTS} attempts");
                })
                .await;
            server
        }

        pub fn endpoint(&self) -> String {
            ETCD_ADDR.to_owned()
        }

        pub fn dead_endpoint(&self) -> String {
            DEAD_ADDR.to_owned()
        }

        pub fn node_id(&self) -> madsim::task::NodeId {
            self.node.id()
        }

        /// Kills the etcd node.
        pub async fn stop(&mut self) {
            Handle::current().kill(self.node.id());
        }

        /// Runs client code on the client node, where it can reach etcd.
        pub async fn run<F>(&self, f: F) -> F::Output
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            self.client_node.spawn(f).await.expect("client task")
        }

        /// Starts client code on the client node.
        pub fn spawn<F>(&self, f: F) -> madsim::task::JoinHandle<F::Output>
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            self.client_node.spawn(f)
        }
    }
}
pub use imp::EtcdServer;
