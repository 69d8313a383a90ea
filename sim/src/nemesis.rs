//! The nemesis harness against a deployed cluster on real hosts (the
//! namespace hosts of `deploy/hosts`, or any hosts reachable over SSH with
//! weir and etcd installed by `deploy/site.yml`'s plain launchers).
//!
//! The workload is the simulator's ([`crate::workload`]): idempotent acks=all
//! producers, an acks=leader and an acks=none producer, three members of one
//! group and one of another, commits and seeks, all recorded in the same
//! [`History`]. The faults are real ones, injected over SSH: `kill -9` and
//! restart, SIGSTOP/SIGCONT, iptables partitions (one host against the rest,
//! an isolated partition leader, a bridge), random packet drop, an etcd
//! member killed, a broker's disk filled to the last byte, power losses on
//! `weir-lossyfs` disks, wall-clock steps under libfaketime, and membership
//! changes: a broker decommissioned and recommissioned, or decommissioned and
//! replaced by a broker with a new id and an empty disk. After the
//! safety phase every fault is healed, the first group must read everything
//! acknowledged, every partition is read in full, and the simulator's
//! checker gives the verdict.

// The harness drives ssh processes and wall-clock waits around a real
// cluster; none of it is broker code under the seam.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir::client::Client;
use weir::proto;
use weir::proto::Acks;
use weir::sys::rng::SeededRng;

use crate::availability::{self, Hit, Window};
use crate::checker::{self, Anomaly, Input};
use crate::history::{History, Op};
use crate::workload::{
    await_read_all, consume, describe_replicas, probe, produce, read_all, read_assigned, read_replica, views, Targets,
    GROUP, GROUP_MEMBERS, LEADER_ACKS_PRODUCER, NO_ACKS_PRODUCER, OTHER_GROUP, READER, TOPIC,
};

/// One host of the cluster: an etcd member and a broker, installed under
/// `root` by the Ansible roles (launchers `bin/weir.sh` and `bin/etcd.sh`,
/// pid files `weir.pid` and `etcd.pid`, data in `data/`).
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    /// Where SSH and the broker reach it.
    pub address: String,
    pub root: PathBuf,
    /// Whether it runs an etcd member (the inventory's `hosts` group) or a
    /// broker alone (the `brokers` group).
    pub etcd: bool,
}

/// Which broker each host runs and where etcd runs: what faults are drawn
/// against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Each host's broker id (from its `weir.toml`; `replace-broker`
    /// changes it).
    pub ids: Vec<u64>,
    /// The hosts that run an etcd member.
    pub etcd: Vec<usize>,
    /// The id the next new broker takes: above every id used so far.
    pub next_id: u64,
}

impl Layout {
    pub fn new(ids: Vec<u64>, etcd: Vec<usize>) -> Self {
        let next_id = ids.iter().max().copied().unwrap_or(0) + 1;
        Self { ids, etcd, next_id }
    }

    /// The host running broker `id` now.
    pub fn host_of(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&known| known == id)
    }

    fn hosts(&self) -> usize {
        self.ids.len()
    }

    /// Each host's address (`addresses`, by host) at its broker's id less
    /// one, empty for ids no host runs: how the workload's helpers take
    /// brokers.
    pub fn by_id(&self, addresses: &[String]) -> Vec<String> {
        let mut out = vec![String::new(); self.ids.iter().max().copied().unwrap_or(0) as usize];
        for (host, &id) in self.ids.iter().enumerate() {
            out[id as usize - 1] = addresses[host].clone();
        }
        out
    }
}

/// Brokers a membership fault needs: with replication factor 3, a
/// decommissioned broker's replicas need three others to move to.
pub const MEMBERSHIP_BROKERS: usize = 4;

/// The kinds that change the cluster's membership.
pub const MEMBERSHIP_KINDS: [&str; 2] = ["decommission", "replace-broker"];

/// What the harness is told.
#[derive(Debug, Clone)]
pub struct Options {
    pub hosts: Vec<Host>,
    pub ssh_key: PathBuf,
    pub broker_port: u16,
    pub seed: u64,
    /// The whole run; the last `liveness` of it has every fault healed.
    pub duration: Duration,
    pub liveness: Duration,
    pub partitions: u32,
    /// Whether the hosts' directories are on this machine's filesystem (the
    /// namespace hosts): then every replica is also read from its disk once
    /// the brokers have stopped, for the replica checker.
    pub local_disks: bool,
    /// The kinds of fault to inject (of [`KINDS`]).
    pub kinds: Vec<&'static str>,
    /// Each kind in turn, rather than one at random each time: a short run
    /// then meets every kind.
    pub cycle: bool,
}

/// One fault the nemesis can inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` the broker, start it again when healed.
    Kill { host: usize },
    /// SIGSTOP the broker, SIGCONT when healed.
    Pause { host: usize },
    /// Hosts that drop each other's packets: each pair is cut both ways.
    Partition { name: &'static str, cuts: Vec<(usize, usize)> },
    /// Every host drops this share of incoming packets (SSH excepted).
    Drop { percent: u32 },
    /// `kill -9` the etcd member, start it again when healed.
    EtcdKill { host: usize },
    /// The broker's data filesystem filled to the last byte; freed and the
    /// broker restarted when healed (as the simulator does: a write that
    /// failed may have left a torn tail only a restart's recovery cuts).
    FullDisk { host: usize },
    /// `kill -9` the brokers of `hosts`, then a power loss of each one's
    /// data filesystem (`weir-lossyfs`, `deploy/lossyfs`): it keeps what
    /// was fsynced and a seeded prefix of the rest, the next write perhaps
    /// torn. The brokers start again when healed. Every host: `power-loss`;
    /// one: `power-loss-one`.
    PowerLoss { hosts: Vec<usize>, seed: u64 },
    /// The broker's wall clock stepped by `by_secs` (libfaketime, which the
    /// broker runs under with `weir_clock_faults`), back when healed. Its
    /// monotonic clock runs on, as under an NTP step.
    ClockSkew { host: usize, by_secs: i64 },
    /// Broker `id` marked decommissioned (`weir cluster decommission
    /// --no-wait`): the controller moves its replicas off it, live, each a
    /// Raft membership change. Recommissioned when healed, and auto-balance
    /// moves replicas back onto it.
    Decommission { host: usize, id: u64 },
    /// Scale in, then out: broker `old` decommissioned; when healed, waited
    /// for until drained, stopped, and replaced on its host by broker `new`
    /// on an empty disk, which joins and receives replicas by auto-balance.
    Replace { host: usize, old: u64, new: u64 },
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Partition { name, .. } => name,
            Fault::Drop { .. } => "packet-drop",
            Fault::EtcdKill { .. } => "etcd-kill",
            Fault::FullDisk { .. } => "full-disk",
            Fault::PowerLoss { hosts, .. } if hosts.len() == 1 => "power-loss-one",
            Fault::PowerLoss { .. } => "power-loss",
            Fault::ClockSkew { .. } => "clock-skew",
            Fault::Decommission { .. } => "decommission",
            Fault::Replace { .. } => "replace-broker",
        }
    }
}

impl Fault {
    /// What the fault hits, for availability, with `layout` as it was
    /// when the fault began.
    pub fn hit(&self, layout: &Layout) -> Hit {
        let hosts = layout.hosts();
        let broker = |host: &usize| layout.ids[*host];
        match self {
            Fault::Decommission { id, .. } | Fault::Replace { old: id, .. } => Hit::Brokers(vec![*id]),
            Fault::Kill { host } | Fault::Pause { host } | Fault::FullDisk { host } | Fault::ClockSkew { host, .. } => {
                Hit::Brokers(vec![broker(host)])
            }
            // The hosts cut from some other: the lone side of halves, the
            // leader cut off, both halves of a bridge (not the bridge).
            Fault::Partition { cuts, .. } => {
                let mut cut: Vec<u64> = cuts.iter().flat_map(|(a, b)| [broker(a), broker(b)]).collect();
                cut.sort_unstable();
                cut.dedup();
                let sides: BTreeSet<u64> = cuts.iter().map(|(a, _)| broker(a)).collect();
                match sides.len() {
                    // One host against the others.
                    1 if cuts.len() + 1 == hosts => Hit::Brokers(sides.into_iter().collect()),
                    _ => Hit::Brokers(cut),
                }
            }
            Fault::PowerLoss { hosts, .. } => Hit::Brokers(hosts.iter().map(broker).collect()),
            Fault::Drop { .. } | Fault::EtcdKill { .. } => Hit::All,
        }
    }

    /// Whether availability's bound applies where this fault hits a leader.
    /// Not yet to a leader cut off by iptables (reported only): unlike the
    /// simulator's isolation, it leaves the client's own connection to
    /// that leader working, the client goes on asking it, and writes came
    /// back after 4.7 to 6.9 s on CI's run at 82fa2db (7.7 s beside a
    /// sweep), too near the bound to hold it there before the client
    /// routes around such a leader.
    pub fn is_leader_loss(&self) -> bool {
        matches!(self, Fault::Kill { .. } | Fault::Pause { .. })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill { host } | Fault::Pause { host } | Fault::EtcdKill { host } | Fault::FullDisk { host } => {
                write!(f, "{} h{}", self.kind(), host + 1)
            }
            Fault::Partition { name, cuts } => {
                let cuts: Vec<String> = cuts.iter().map(|(a, b)| format!("h{}|h{}", a + 1, b + 1)).collect();
                write!(f, "{name} {}", cuts.join(" "))
            }
            Fault::Drop { percent } => write!(f, "packet-drop {percent}%"),
            Fault::PowerLoss { hosts, seed } => {
                let hosts: Vec<String> = hosts.iter().map(|host| format!("h{}", host + 1)).collect();
                write!(f, "{} {} seed={seed}", self.kind(), hosts.join(","))
            }
            Fault::ClockSkew { host, by_secs } => write!(f, "clock-skew h{} by {by_secs:+} s", host + 1),
            Fault::Decommission { host, id } => write!(f, "decommission broker {id} (h{})", host + 1),
            Fault::Replace { host, old, new } => write!(f, "replace-broker {old} by {new} (h{})", host + 1),
        }
    }
}

/// The chain every iptables rule of the nemesis goes into: healing flushes it.
const CHAIN: &str = "WEIR-NEMESIS";

/// Runs commands on the hosts over SSH.
#[derive(Debug, Clone)]
pub struct Ssh {
    hosts: Vec<Host>,
    key: PathBuf,
    broker_port: u16,
}

/// What `full-disk` writes into a broker's data directory, and healing
/// removes (`data`: the directory).
fn ballast(data: &str) -> String {
    format!("{data}/ballast {data}/ballast-mib {data}/ballast-tail")
}

/// How long a command over SSH may take, unless said otherwise.
const SSH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a decommissioned broker may take to drain before it is
/// replaced (a heal that takes longer fails, and says so).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

impl Ssh {
    pub fn new(hosts: Vec<Host>, key: PathBuf, broker_port: u16) -> Self {
        Self { hosts, key, broker_port }
    }

    /// Runs `command` on host `host` with a shell; its stdout, or why not.
    pub async fn run(&self, host: usize, command: &str) -> Result<String, String> {
        self.run_within(host, command, SSH_TIMEOUT).await
    }

    async fn run_within(&self, host: usize, command: &str, timeout: Duration) -> Result<String, String> {
        let target = &self.hosts[host];
        let mut child = tokio::process::Command::new("ssh");
        child
            .arg("-q")
            .arg("-i")
            .arg(&self.key)
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"])
            .arg(format!("root@{}", target.address))
            .arg(command)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(timeout, child.output())
            .await
            .map_err(|_| format!("{}: `{command}` took over {} s", target.name, timeout.as_secs()))?
            .map_err(|error| format!("{}: ssh: {error}", target.name))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{}: `{command}` failed ({}): {}",
                target.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn root(&self, host: usize) -> String {
        self.hosts[host].root.display().to_string()
    }

    /// The broker id in the host's `weir.toml`.
    pub async fn broker_id(&self, host: usize) -> Result<u64, String> {
        let out = self.run(host, &format!("sed -n 's/^broker_id *= *//p' {}/weir.toml", self.root(host))).await?;
        out.trim().parse().map_err(|_| format!("{}: no broker_id in weir.toml: {out:?}", self.hosts[host].name))
    }

    /// Lifts broker `id`'s decommissioned mark, through `host`'s broker.
    async fn recommission(&self, host: usize, id: u64) -> Result<(), String> {
        self.run(host, &self.cli(host, &format!("cluster recommission {id}"))).await.map(drop)
    }

    /// The weir CLI installed on `host`, talking to that host's broker.
    fn cli(&self, host: usize, args: &str) -> String {
        let target = &self.hosts[host];
        format!("{}/bin/weir {args} --broker http://{}:{}", self.root(host), target.address, self.broker_port)
    }

    /// The chain, hooked into INPUT, exists and is empty.
    async fn prepare(&self, host: usize) -> Result<(), String> {
        let command = format!(
            "iptables -N {CHAIN} 2>/dev/null; iptables -F {CHAIN} && \
             (iptables -C INPUT -j {CHAIN} 2>/dev/null || iptables -I INPUT -j {CHAIN})"
        );
        self.run(host, &command).await.map(drop)
    }

    async fn inject(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::Kill { host } => self.kill_and_wait(*host, "weir").await,
            Fault::Pause { host } => self.signal(*host, "weir", "STOP").await,
            Fault::EtcdKill { host } => self.kill_and_wait(*host, "etcd").await,
            Fault::Partition { cuts, .. } => {
                for (a, b) in cuts {
                    for (from, to) in [(a, b), (b, a)] {
                        let address = &self.hosts[*from].address;
                        self.run(*to, &format!("iptables -A {CHAIN} -s {address} -j DROP")).await?;
                    }
                }
                Ok(())
            }
            Fault::Drop { percent } => {
                let probability = f64::from(*percent) / 100.0;
                for host in 0..self.hosts.len() {
                    let command = format!(
                        "iptables -A {CHAIN} -p tcp --dport 22 -j RETURN && \
                         iptables -A {CHAIN} -m statistic --mode random --probability {probability} -j DROP"
                    );
                    self.run(host, &command).await?;
                }
                Ok(())
            }
            Fault::FullDisk { host } => {
                let data = format!("{}/data", self.root(*host));
                // Only a disk of the broker's own (deploy/hosts/up with
                // WEIR_HOSTS_DISK): never fill a filesystem others live on.
                // weir-lossyfs has no fallocate, and 4 KiB writes through
                // FUSE took over 30 s for 1 GiB: 1 MiB writes fill most of
                // it, 4 KiB ones the rest.
                let command = format!(
                    "mountpoint -q {data} || {{ echo 'not a disk of its own: {data}' >&2; exit 1; }}; \
                     free=$(df --output=avail -B1 {data} | tail -1); \
                     fallocate -l \"$free\" {data}/ballast 2>/dev/null; \
                     dd if=/dev/zero of={data}/ballast-mib bs=1M 2>/dev/null; \
                     dd if=/dev/zero of={data}/ballast-tail bs=4k 2>/dev/null; \
                     df --output=avail -B1 {data} | tail -1"
                );
                let left = self.run(*host, &command).await?;
                tracing::info!(host, left = left.trim(), "the disk is full");
                Ok(())
            }
            Fault::PowerLoss { hosts, seed } => {
                for host in hosts {
                    self.kill_and_wait(*host, "weir").await?;
                }
                for host in hosts {
                    // A data directory that is not a weir-lossyfs mount has
                    // no control socket: the fault fails, and with it the run.
                    let root = self.root(*host);
                    let lost = self
                        .run(*host, &format!("{root}/bin/weir-lossyfs ctl {root}/lossyfs.sock crash {seed}"))
                        .await?;
                    tracing::info!(host, lost = lost.trim(), "power loss");
                }
                Ok(())
            }
            Fault::ClockSkew { host, by_secs } => {
                // Only a broker running under libfaketime can be skewed.
                let root = self.root(*host);
                let command = format!(
                    "tr '\\0' '\\n' </proc/$(cat {root}/weir.pid)/environ | grep -q '^FAKETIME_TIMESTAMP_FILE={root}/faketime$' \
                     || {{ echo 'the broker does not run under libfaketime (weir_clock_faults)' >&2; exit 1; }}; \
                     echo '{by_secs:+}' >{root}/faketime"
                );
                self.run(*host, &command).await.map(drop)
            }
            Fault::Decommission { host, id } | Fault::Replace { host, old: id, .. } => {
                // Refused while the others could not hold its replicas
                // (a broker restarted by the last heal may not have
                // registered yet): an operator would try again shortly.
                let root = self.root(*host);
                let command = format!(
                    "for _ in $(seq 1 20); do {} >/dev/null 2>{root}/nemesis.err && exit 0; sleep 1; done; \
                     cat {root}/nemesis.err >&2; exit 1",
                    self.cli(*host, &format!("cluster decommission {id} --no-wait"))
                );
                self.run(*host, &command).await.map(drop)
            }
        }
    }

    /// Undoes `fault` (and only it).
    async fn heal(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::Kill { host } => self.start(*host, "weir").await,
            Fault::Pause { host } => self.signal(*host, "weir", "CONT").await,
            Fault::EtcdKill { host } => self.start(*host, "etcd").await,
            Fault::Partition { .. } | Fault::Drop { .. } => {
                for host in 0..self.hosts.len() {
                    self.run(host, &format!("iptables -F {CHAIN}")).await?;
                }
                Ok(())
            }
            Fault::FullDisk { host } => {
                let data = format!("{}/data", self.root(*host));
                let freed = self.run(*host, &format!("rm -f {}", ballast(&data))).await;
                // Whatever the broker did meanwhile, it comes back.
                let killed = self.kill_and_wait(*host, "weir").await;
                let started = self.start(*host, "weir").await;
                freed.map(drop).and(killed).and(started)
            }
            Fault::PowerLoss { hosts, .. } => {
                for host in hosts {
                    self.start(*host, "weir").await?;
                }
                Ok(())
            }
            Fault::ClockSkew { host, .. } => {
                self.run(*host, &format!("echo +0 >{}/faketime", self.root(*host))).await.map(drop)
            }
            Fault::Decommission { host, id } => self.recommission(*host, *id).await,
            Fault::Replace { host, old, new } => {
                // Drained first: stopping it earlier would stop replicas
                // the controller still counts on. The old data goes, made
                // durable (`sync` fsyncs the directory: on weir-lossyfs an
                // unsynced unlink would come back at a power loss), so the
                // new broker starts on an empty disk.
                let root = self.root(*host);
                let drain = DRAIN_TIMEOUT.as_secs();
                // The launcher's stop waits 10 s at most: a broker slower
                // to exit is killed, so none writes to the emptied disk.
                let command = format!(
                    "{} >/dev/null && pid=$(cat {root}/weir.pid) && {root}/bin/weir.sh stop >/dev/null && \
                     for _ in $(seq 1 50); do [ -d /proc/$pid ] || break; \
                     grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null && break; \
                     kill -KILL $pid 2>/dev/null; sleep 0.1; done && \
                     {{ [ ! -d /proc/$pid ] || grep -q '^State:.*Z' /proc/$pid/status; }} && \
                     rm -rf {root}/data/* && sync {root}/data && \
                     sed -i 's/^broker_id *=.*/broker_id = {new}/' {root}/weir.toml && \
                     {root}/bin/weir.sh start >/dev/null",
                    self.cli(*host, &format!("cluster decommission {old} --timeout {drain}"))
                );
                let replaced = self.run_within(*host, &command, DRAIN_TIMEOUT + SSH_TIMEOUT).await.map(drop);
                if replaced.is_err() {
                    // Not drained: it stays, recommissioned, so the run goes
                    // on with as many brokers as before (the error is
                    // reported; a 30-minute run met one partition that did
                    // not move off in 120 s).
                    let _ = self.recommission(*host, *old).await;
                }
                replaced
            }
        }
    }

    /// Everything back as deployed, whatever state a failed step left.
    pub async fn heal_all(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for host in 0..self.hosts.len() {
            let root = self.root(host);
            let processes = if self.hosts[host].etcd { "weir etcd" } else { "weir" };
            let command = format!(
                "iptables -F {CHAIN} 2>/dev/null; rm -f {}; \
                 [ -f {root}/faketime ] && echo +0 >{root}/faketime; \
                 for p in {processes}; do [ -f {root}/$p.pid ] && kill -CONT $(cat {root}/$p.pid) 2>/dev/null; \
                 {root}/bin/$p.sh start >/dev/null || exit 1; done; true",
                ballast(&format!("{root}/data"))
            );
            if let Err(error) = self.run(host, &command).await {
                errors.push(error);
            }
        }
        errors
    }

    async fn signal(&self, host: usize, process: &str, signal: &str) -> Result<(), String> {
        let pidfile = format!("{}/{process}.pid", self.root(host));
        self.run(host, &format!("kill -{signal} $(cat {pidfile})")).await.map(drop)
    }

    /// `kill -9` and wait until the process is gone (a killed process that
    /// still exists, if only as a zombie, looks running to its launcher,
    /// which would then not start it).
    async fn kill_and_wait(&self, host: usize, process: &str) -> Result<(), String> {
        let pidfile = format!("{}/{process}.pid", self.root(host));
        let command = format!(
            "pid=$(cat {pidfile}) || exit 0; kill -KILL $pid 2>/dev/null; \
             for _ in $(seq 1 100); do [ -d /proc/$pid ] || exit 0; \
             grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null && exit 0; sleep 0.05; done; \
             echo \"pid $pid still there 5 s after kill -9\" >&2; exit 1"
        );
        self.run(host, &command).await.map(drop)
    }

    async fn start(&self, host: usize, process: &str) -> Result<(), String> {
        self.run(host, &format!("{}/bin/{process}.sh start", self.root(host))).await.map(drop)
    }

    /// Stops a broker cleanly (the launcher's SIGTERM, waited for).
    pub async fn stop_broker(&self, host: usize) -> Result<(), String> {
        self.run(host, &format!("{}/bin/weir.sh stop", self.root(host))).await.map(drop)
    }
}

/// Every kind of fault, as [`Fault::kind`] names them.
pub const KINDS: [&str; 13] = [
    "kill",
    "pause",
    "partition-halves",
    "partition-leader",
    "partition-bridge",
    "packet-drop",
    "etcd-kill",
    "full-disk",
    "power-loss",
    "power-loss-one",
    "clock-skew",
    "decommission",
    "replace-broker",
];

/// A fault of `kind` (one of [`KINDS`]) against `layout`. `leader` is the
/// host leading some partition, when one is known. A `replace-broker` takes
/// `layout.next_id` and moves it on.
pub fn fault_of(kind: &str, rng: &mut SeededRng, layout: &mut Layout, leader: Option<usize>) -> Fault {
    let hosts = layout.hosts();
    let host = rng.below(hosts as u64) as usize;
    let cut_off = |lone: usize| (0..hosts).filter(|&other| other != lone).map(|other| (lone, other)).collect();
    match kind {
        "kill" => Fault::Kill { host },
        "pause" => Fault::Pause { host },
        // One host against the rest: the minority side of halves.
        "partition-halves" => Fault::Partition { name: "partition-halves", cuts: cut_off(host) },
        "partition-leader" => Fault::Partition { name: "partition-leader", cuts: cut_off(leader.unwrap_or(host)) },
        "partition-bridge" => {
            // `host` sees everyone; the others split in two halves that
            // see only it.
            let mut others: Vec<usize> = (0..hosts).filter(|&other| other != host).collect();
            for i in (1..others.len()).rev() {
                others.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let (left, right) = others.split_at(others.len() / 2);
            let cuts = left.iter().flat_map(|&a| right.iter().map(move |&b| (a, b))).collect();
            Fault::Partition { name: "partition-bridge", cuts }
        }
        "packet-drop" => Fault::Drop { percent: 5 + rng.below(26) as u32 },
        "etcd-kill" => match layout.etcd.len() {
            0 => Fault::EtcdKill { host },
            members => Fault::EtcdKill { host: layout.etcd[rng.below(members as u64) as usize] },
        },
        "full-disk" => Fault::FullDisk { host },
        "power-loss" => Fault::PowerLoss { hosts: (0..hosts).collect(), seed: rng.next_u64() },
        "power-loss-one" => Fault::PowerLoss { hosts: vec![host], seed: rng.next_u64() },
        "clock-skew" => {
            // An NTP step (seconds), a misset clock (hours) or a day off,
            // either way.
            let by_secs = match rng.below(3) {
                0 => 1 + rng.below(120),
                1 => 600 + rng.below(7_200),
                _ => 86_400,
            } as i64;
            Fault::ClockSkew { host, by_secs: if rng.below(2) == 0 { by_secs } else { -by_secs } }
        }
        "decommission" => Fault::Decommission { host, id: layout.ids[host] },
        "replace-broker" => {
            let new = layout.next_id;
            layout.next_id += 1;
            Fault::Replace { host, old: layout.ids[host], new }
        }
        other => unreachable!("no fault kind {other}: the options are checked against KINDS"),
    }
}

/// What a run did and found.
#[derive(Debug)]
pub struct Report {
    pub ops: Vec<Op>,
    pub anomalies: Vec<Anomaly>,
    pub acknowledged: usize,
    /// Every fault injected: (seconds into the run it began, how long it
    /// lasted, what it was).
    pub faults: Vec<(f64, f64, Fault)>,
    /// Faults that could not be injected or healed (the run goes on).
    pub nemesis_errors: Vec<String>,
    pub weak_losses: [(usize, usize); 2],
    /// Replicas read back from the brokers' disks.
    pub replicas_read: usize,
    /// Replicas each broker described after the run (a broker that did
    /// not answer describes none, and its replicas go unchecked).
    pub replicas_described: BTreeMap<u64, usize>,
    /// Each fault's effect on each partition it touched.
    pub availability: Vec<availability::Sample>,
}

const SETTLE: Duration = Duration::from_secs(30);

/// The whole run: topic, workload, faults, healing, final reads, verdict.
pub async fn run(options: Options) -> Result<Report, String> {
    let hosts = options.hosts.len();
    let addresses: Vec<String> =
        options.hosts.iter().map(|h| format!("http://{}:{}", h.address, options.broker_port)).collect();
    let bootstrap = addresses.join(",");
    let ssh = Ssh::new(options.hosts.clone(), options.ssh_key.clone(), options.broker_port);
    let mut ids = Vec::new();
    for host in 0..hosts {
        ssh.prepare(host).await?;
        ids.push(ssh.broker_id(host).await?);
    }
    let etcd = (0..hosts).filter(|&host| options.hosts[host].etcd).collect();
    let mut layout = Layout::new(ids, etcd);

    let client = Client::connect(&bootstrap).await.map_err(|e| format!("connecting to {bootstrap}: {e}"))?;
    let config = proto::TopicConfig {
        partitions: options.partitions,
        replication_factor: Some(hosts.min(3) as u32),
        segment_bytes: Some(1 << 20),
        ..Default::default()
    };
    client.create_topic(TOPIC, config).await.map_err(|e| format!("creating topic {TOPIC}: {e}"))?;
    wait_for_leaders(&layout.by_id(&addresses), options.partitions).await?;

    let history = History::new();
    let stop_producing = Arc::new(AtomicBool::new(false));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    // Three producers with acks=all, one each with acks=leader and
    // acks=none, and a probe per partition.
    let any = Targets::Any(options.partitions);
    let writers = [(1, any, Acks::All), (2, any, Acks::All), (3, any, Acks::All)]
        .into_iter()
        .chain([(LEADER_ACKS_PRODUCER, any, Acks::Leader), (NO_ACKS_PRODUCER, any, Acks::None)])
        .chain((0..options.partitions).filter_map(|p| Some((probe(p)?, Targets::Only(p), Acks::All))));
    for (process, targets, acks) in writers {
        let task =
            produce(bootstrap.clone(), options.seed, targets, process, acks, history.clone(), stop_producing.clone());
        producers.push(tokio::spawn(task));
    }
    let mut consumers = Vec::new();
    let members = GROUP_MEMBERS.iter().map(|&p| (GROUP, p)).chain([(OTHER_GROUP, 200)]);
    for (group, process) in members {
        let task = consume(bootstrap.clone(), group, process, options.seed, history.clone(), stop_consuming.clone());
        consumers.push(tokio::spawn(task));
    }
    let task = read_assigned(
        bootstrap.clone(),
        options.partitions,
        READER,
        options.seed,
        history.clone(),
        stop_producing.clone(),
        stop_consuming.clone(),
    );
    consumers.push(tokio::spawn(task));

    // Safety: one fault at a time, each healed before a quiet spell and
    // the next.
    let start = tokio::time::Instant::now();
    let safety_end = start + options.duration.saturating_sub(options.liveness);
    let mut rng = SeededRng::new(options.seed);
    let mut faults = Vec::new();
    let mut windows = Vec::new();
    let mut nemesis_errors = Vec::new();
    loop {
        let quiet = Duration::from_millis(2_000 + rng.below(6_000));
        let lasting = Duration::from_millis(3_000 + rng.below(12_000));
        if tokio::time::Instant::now() + quiet + lasting > safety_end {
            break;
        }
        tokio::time::sleep(quiet).await;
        // Who leads what, just before: which partitions the fault touches
        // (availability), and a leader for partition-leader to cut off.
        let views = views(&layout.by_id(&addresses), tokio::time::Instant::now() + Duration::from_secs(1)).await;
        let leader = some_leader(&views, &mut rng, options.partitions).and_then(|id| layout.host_of(id));
        let kind = if options.cycle {
            options.kinds[faults.len() % options.kinds.len()]
        } else {
            options.kinds[rng.below(options.kinds.len() as u64) as usize]
        };
        let fault = fault_of(kind, &mut rng, &mut layout, leader);
        let hit = fault.hit(&layout);
        let began = start.elapsed();
        tracing::info!(at = ?began, %fault, ?lasting, "nemesis: inject");
        eprintln!("nemesis {:>7.1} s  {fault} for {:.1} s", began.as_secs_f64(), lasting.as_secs_f64());
        if let Err(error) = ssh.inject(&fault).await {
            nemesis_errors.push(format!("inject {fault}: {error}"));
        }
        // In effect from now: the SSH command that injects it takes its
        // time (sends acknowledged meanwhile say nothing of the fault).
        let at = history.now();
        tokio::time::sleep(lasting).await;
        match ssh.heal(&fault).await {
            Ok(()) => {
                if let Fault::Replace { host, new, .. } = fault {
                    layout.ids[host] = new;
                }
            }
            Err(error) => nemesis_errors.push(format!("heal {fault}: {error}")),
        }
        let (touched, healthy) = availability::touched(&hit, options.partitions, &views);
        windows.push(Window {
            kind: fault.kind(),
            start: at,
            heal: history.now(),
            touched,
            healthy,
            leader_loss: fault.is_leader_loss(),
            excuses: true,
        });
        faults.push((began.as_secs_f64(), start.elapsed().saturating_sub(began).as_secs_f64(), fault));
    }
    tokio::time::sleep_until(safety_end).await;
    let writes_until = history.now();

    // Liveness: everything healed; the producers stop (a send still
    // retrying stays unknown) and the first group must read everything
    // acknowledged.
    nemesis_errors.extend(ssh.heal_all().await.into_iter().map(|e| format!("heal all: {e}")));
    // Whatever a failed heal left in weir.toml is what the brokers run now.
    for host in 0..hosts {
        match ssh.broker_id(host).await {
            Ok(id) => layout.ids[host] = id,
            Err(error) => nemesis_errors.push(format!("after healing: {error}")),
        }
    }
    stop_producing.store(true, Ordering::Relaxed);
    for producer in producers {
        if tokio::time::timeout(SETTLE, producer).await.is_err() {
            tracing::info!("a producer was still retrying a send; its outcome stays unknown");
        }
    }
    let deadline = tokio::time::Instant::now() + options.liveness;
    let acknowledged = await_read_all(&history, deadline, Duration::from_millis(500)).await;
    stop_consuming.store(true, Ordering::Relaxed);
    for consumer in consumers {
        if tokio::time::timeout(SETTLE, consumer).await.is_err() {
            tracing::info!("a consumer did not stop in time");
        }
    }

    let final_log = read_all(bootstrap.clone(), options.partitions).await?;
    let (mut replicas, silent) = describe_replicas(layout.by_id(&addresses), Duration::from_secs(60)).await;
    let mut unchecked: Vec<String> =
        silent.into_iter().map(|(broker, e)| format!("broker {broker} did not describe its replicas: {e}")).collect();
    nemesis_errors.extend(unchecked.iter().cloned());
    let mut replicas_described: BTreeMap<u64, usize> = layout.ids.iter().map(|&b| (b, 0)).collect();
    for replica in &replicas {
        *replicas_described.entry(replica.broker).or_default() += 1;
    }
    if options.local_disks {
        for host in 0..hosts {
            ssh.stop_broker(host).await?;
        }
        let disk = weir::sys::disk::real_disk();
        replicas.retain_mut(|replica| {
            let Some(host) = layout.host_of(replica.broker) else {
                unchecked.push(format!("broker {} described a replica but runs on no host", replica.broker));
                return false;
            };
            let topics = options.hosts[host].root.join("data").join("topics");
            match read_replica(disk.clone(), &topics, replica.broker, replica.partition) {
                Some(records) => {
                    replica.records = records;
                    true
                }
                None => {
                    unchecked.push(format!(
                        "broker {} described a replica of partition {} that its disk does not hold",
                        replica.broker, replica.partition
                    ));
                    false
                }
            }
        });
    } else {
        // Bounds only: the replica checker compares what it has.
        replicas.clear();
    }
    let replicas_read = replicas.len();
    let input = Input {
        ops: history.ops(),
        final_log,
        complete_group: Some(GROUP.to_owned()),
        replicas,
        unchecked,
        retention_ms: None,
    };
    let mut anomalies = checker::check(&input);
    anomalies.extend(availability::check(&input.ops, &windows, writes_until));
    let availability = availability::measure(&input.ops, &windows);
    let weak = checker::weak_losses(&input);
    Ok(Report {
        availability,
        acknowledged,
        anomalies,
        weak_losses: [LEADER_ACKS_PRODUCER, NO_ACKS_PRODUCER].map(|p| weak.get(&p).copied().unwrap_or_default()),
        ops: input.ops,
        faults,
        nemesis_errors,
        replicas_read,
        replicas_described,
    })
}

/// Every partition has a leader, as its replicas say (bounded: a minute).
/// A broker knows the leaders of the partitions it holds only: with more
/// brokers than replicas, one broker's description has gaps.
async fn wait_for_leaders(by_id: &[String], partitions: u32) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let views = views(by_id, tokio::time::Instant::now() + Duration::from_secs(2)).await;
        let led: BTreeSet<u32> = views.iter().filter(|v| v.leader != 0).map(|v| v.partition).collect();
        if led.len() == partitions as usize {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("topic {TOPIC}: {} of {partitions} partitions have a leader after 60 s", led.len()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The broker leading a partition chosen at random, if one of its
/// replicas says.
fn some_leader(views: &[availability::View], rng: &mut SeededRng, partitions: u32) -> Option<u64> {
    let partition = rng.below(u64::from(partitions)) as u32;
    views.iter().find(|v| v.partition == partition && v.leader != 0).map(|v| v.leader)
}

/// Counts of the history's operations, by function and outcome.
pub fn tally(ops: &[Op]) -> BTreeMap<(&'static str, &'static str), usize> {
    let mut out = BTreeMap::new();
    for op in ops {
        *out.entry((op.value.f(), op.kind.name())).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Kind, Value};

    /// `hosts` hosts running brokers 1, 2, …, etcd on the first three.
    fn layout(hosts: usize) -> Layout {
        Layout::new((1..=hosts as u64).collect(), (0..hosts.min(3)).collect())
    }

    #[test]
    fn every_kind_makes_its_fault_and_partitions_cut_real_pairs() {
        let mut rng = SeededRng::new(7);
        let mut three = layout(3);
        for _ in 0..200 {
            for kind in KINDS {
                let fault = fault_of(kind, &mut rng, &mut three, Some(2));
                assert_eq!(fault.kind(), kind);
                if let Fault::Partition { name, cuts } = &fault {
                    assert!(!cuts.is_empty(), "{name} cuts nothing");
                    for (a, b) in cuts {
                        assert!(a != b && *a < 3 && *b < 3, "{name} cuts {a}|{b}");
                    }
                    match *name {
                        "partition-leader" => {
                            assert_eq!(cuts.len(), 2, "{cuts:?}");
                            assert!(cuts.iter().all(|(a, _)| *a == 2), "the leader (host 2) is cut off: {cuts:?}");
                        }
                        "partition-halves" => assert_eq!(cuts.len(), 2, "one host against two: {cuts:?}"),
                        _ => assert_eq!(cuts.len(), 1, "with three hosts a bridge cuts one pair: {cuts:?}"),
                    }
                }
            }
        }
        // Five hosts: a bridge splits the other four two and two.
        let bridge = fault_of("partition-bridge", &mut rng, &mut layout(5), None);
        let Fault::Partition { cuts, .. } = bridge else { panic!("{bridge:?}") };
        assert_eq!(cuts.len(), 4, "{cuts:?}");
    }

    #[test]
    fn a_fault_hits_the_brokers_it_stops_or_cuts_off() {
        let mut rng = SeededRng::new(1);
        let (mut three, mut five) = (layout(3), layout(5));
        assert_eq!(Fault::Kill { host: 1 }.hit(&three), Hit::Brokers(vec![2]));
        let cut_off = fault_of("partition-leader", &mut rng, &mut three, Some(0));
        assert_eq!(cut_off.hit(&three), Hit::Brokers(vec![1]), "{cut_off}");
        assert!(!cut_off.is_leader_loss(), "reported, not judged yet");
        assert!(Fault::Pause { host: 2 }.is_leader_loss());
        let bridge = fault_of("partition-bridge", &mut rng, &mut five, None);
        match bridge.hit(&five) {
            Hit::Brokers(brokers) => assert_eq!(brokers.len(), 4, "both halves, not the bridge: {bridge}"),
            other => panic!("{bridge}: {other:?}"),
        }
        assert!(!bridge.is_leader_loss());
        assert_eq!(Fault::Drop { percent: 5 }.hit(&three), Hit::All);
        assert!(!Fault::FullDisk { host: 0 }.is_leader_loss());
        let all = fault_of("power-loss", &mut rng, &mut three, None);
        assert_eq!(all.hit(&three), Hit::Brokers(vec![1, 2, 3]), "{all}");
        let one = fault_of("power-loss-one", &mut rng, &mut three, None);
        assert!(matches!(one.hit(&three), Hit::Brokers(ref b) if b.len() == 1), "{one}");
        assert!(!all.is_leader_loss() && !one.is_leader_loss(), "not bounded by one election");
    }

    #[test]
    fn membership_faults_name_the_brokers_hosts_run_now_and_new_ids_are_fresh() {
        let mut rng = SeededRng::new(3);
        // Host 1 already runs broker 6 (replaced once); ids 1..=6 are used.
        let mut four = Layout::new(vec![1, 6, 3, 4], vec![0, 1, 2]);
        assert_eq!(four.next_id, 7);
        assert_eq!(four.host_of(6), Some(1));
        assert_eq!(four.host_of(2), None, "broker 2 runs nowhere now");
        let addresses: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        assert_eq!(four.by_id(&addresses), ["a", "", "c", "d", "", "b"], "by id less one, gaps empty");
        let mut seen_new = BTreeSet::new();
        for _ in 0..50 {
            match fault_of("replace-broker", &mut rng, &mut four, None) {
                Fault::Replace { host, old, new } => {
                    assert_eq!(old, four.ids[host], "the broker the host runs");
                    assert!(new >= 7 && seen_new.insert(new), "a new id is never one used before: {new}");
                    assert_eq!(Fault::Replace { host, old, new }.hit(&four), Hit::Brokers(vec![old]));
                    four.ids[host] = new;
                }
                other => panic!("{other}"),
            }
            match fault_of("decommission", &mut rng, &mut four, None) {
                Fault::Decommission { host, id } => {
                    assert_eq!(id, four.ids[host]);
                    assert!(!Fault::Decommission { host, id }.is_leader_loss());
                }
                other => panic!("{other}"),
            }
        }
        // etcd-kill only where etcd runs; a kill may hit any broker.
        let etcd_hosts: BTreeSet<usize> = (0..200)
            .map(|_| match fault_of("etcd-kill", &mut rng, &mut four, None) {
                Fault::EtcdKill { host } => host,
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(etcd_hosts, BTreeSet::from([0, 1, 2]));
        assert_eq!(Fault::Kill { host: 1 }.hit(&four), Hit::Brokers(vec![four.ids[1]]));
    }

    #[test]
    fn tally_counts_by_function_and_outcome() {
        let send = |kind| Op {
            index: 0,
            process: 1,
            kind,
            value: Value::Send { partition: 0, value: 1, offset: None },
            time: Duration::ZERO,
        };
        let counts = tally(&[send(Kind::Invoke), send(Kind::Ok), send(Kind::Invoke), send(Kind::Info)]);
        assert_eq!(counts[&("send", "invoke")], 2);
        assert_eq!(counts[&("send", "ok")], 1);
        assert_eq!(counts[&("send", "info")], 1);
        assert!(!counts.contains_key(&("poll", "ok")));
    }
}
