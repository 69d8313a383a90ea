//! Child processes weir starts itself: a local etcd for `weir dev --brokers N`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::net::SocketAddr;

/// Whether an `etcd` binary is on PATH.
/// The signals that ask the process to stop: SIGINT (Ctrl-C) and SIGTERM
/// (what systemd, Docker and Kubernetes send), listened for from the moment
/// this is made. Made only when the wait began, a SIGINT that came right
/// after the broker said it was serving killed it outright (the default
/// action), which tests/process_front_door caught under load. Inside the
/// simulator only the simulated Ctrl-C exists.
pub struct StopSignals {
    #[cfg(not(madsim))]
    listening: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    /// Starts listening (needs a tokio runtime).
    pub fn listen() -> Self {
        #[cfg(not(madsim))]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listening = signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)));
            Self { listening: listening.ok() }
        }
        #[cfg(madsim)]
        Self {}
    }

    /// Resolves when the process is asked to stop, naming the signal.
    pub async fn wait(self) -> &'static str {
        #[cfg(not(madsim))]
        {
            let Some((mut interrupt, mut terminate)) = self.listening else {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            };
            tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(madsim)]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Whether something listens on (or holds) `addr` now: binding it fails.
pub fn port_taken(addr: SocketAddr) -> bool {
    std::net::TcpListener::bind(addr).is_err()
}

/// This process's id (named in lock files, so a refusal says who holds one).
pub fn pid() -> u32 {
    std::process::id()
}

pub fn etcd_installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A single-member etcd on loopback, killed when dropped.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Child,
    log: PathBuf,
}

impl EtcdProcess {
    /// Starts etcd with its data in `dir/data` and its log in `dir/etcd.log`.
    pub fn start(dir: &Path, client: SocketAddr, peer: SocketAddr) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let log = dir.join("etcd.log");
        let out = File::create(&log)?;
        let client_url = format!("http://{client}");
        let peer_url = format!("http://{peer}");
        let child = Command::new("etcd")
            .args(["--name", "weir-dev", "--logger", "zap"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("weir-dev={peer_url}")])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self { child, log })
    }

    /// Where etcd writes its log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` if etcd has exited.
    pub fn exited(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
