//! The `weir` command line: run a broker (`dev`, `server`) or talk to one
//! (`topic`, `produce`, `consume`). Settings come from flags, `WEIR_*`
//! environment variables and, for `server`, a TOML config file.

/// Prints a line to standard output. Writing fails with `BrokenPipe` once
/// the reader has gone (`weir cluster status | head`); `main` ends the
/// command quietly then instead of panicking as `println!` would.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))?
    };
}

pub mod bench;
mod cluster;
mod consume;
mod group;
mod produce;
mod run;
mod topic;

use crate::sys::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::client::BROKER_DEFAULT;

#[derive(Debug, Parser)]
#[command(name = "weir", version, about = "weir: a Raft-replicated, deterministically simulated message queue")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// The broker to talk to.
    #[arg(long, env = "WEIR_BROKER", default_value = BROKER_DEFAULT, global = true)]
    pub broker: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a local broker on the embedded metadata store (no etcd), or with
    /// `--brokers N` a local cluster of N brokers on etcd (started here if
    /// installed, or given with `--etcd`).
    Dev(DevArgs),
    /// Runs a broker from a TOML config file (flags override it).
    Server(ServerArgs),
    /// Creates, lists, describes and deletes topics.
    Topic {
        #[command(subcommand)]
        command: topic::TopicCommand,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Shows the cluster: live brokers, and every partition's leader,
    /// replicas and replication lag.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Moves partitions between brokers.
    Partition {
        #[command(subcommand)]
        command: cluster::PartitionCommand,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Lists and describes consumer groups, with lag.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Produces the lines of standard input, one message per line.
    Produce(produce::ProduceArgs),
    /// Prints messages of a topic, one per line.
    Consume(consume::ConsumeArgs),
    /// Load generators that print throughput and latency.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the broker keeps its data; kept between runs.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "weir-data")]
    pub data_dir: PathBuf,
    /// The address to serve gRPC on.
    #[arg(long, env = "WEIR_LISTEN", default_value = crate::broker::config::LISTEN_DEFAULT)]
    pub listen: SocketAddr,
    /// Where Prometheus scrapes `GET /metrics`.
    #[arg(long, env = "WEIR_METRICS_LISTEN", default_value = crate::broker::config::METRICS_LISTEN_DEFAULT)]
    pub metrics_listen: SocketAddr,
    /// Where the HTTP/JSON gateway serves `/v1` (broker i: this port + 2(i-1)).
    #[arg(long, env = "WEIR_HTTP_LISTEN", default_value = crate::broker::config::HTTP_LISTEN_DEFAULT)]
    pub http_listen: SocketAddr,
    /// Brokers to run in this process. More than one makes a replicated
    /// cluster on etcd; broker i serves on the listen port + 2(i-1) and
    /// keeps its data in `<data-dir>/broker-<i>`.
    #[arg(long, default_value_t = 1)]
    pub brokers: u32,
    /// etcd endpoints of an etcd to use (default with --brokers > 1: start
    /// one on 127.0.0.1:2379, data in `<data-dir>/etcd`).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// A TOML file with the broker's settings (see `BrokerConfig`).
    #[arg(long, env = "WEIR_CONFIG")]
    pub config: PathBuf,
    #[command(flatten)]
    pub overrides: ServerOverrides,
}

/// What flags and `WEIR_*` variables override in a server's config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerOverrides {
    #[arg(long, env = "WEIR_BROKER_ID")]
    pub broker_id: Option<u64>,
    #[arg(long, env = "WEIR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "WEIR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// `off` turns metrics off.
    #[arg(long, env = "WEIR_METRICS_LISTEN")]
    pub metrics_listen: Option<AddressOrOff>,
    /// `off` turns the gateway off.
    #[arg(long, env = "WEIR_HTTP_LISTEN")]
    pub http_listen: Option<AddressOrOff>,
    /// The address clients and other brokers reach this one at.
    #[arg(long, env = "WEIR_ADVERTISE")]
    pub advertise: Option<String>,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "WEIR_ETCD", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
}

/// An address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressOrOff(pub Option<SocketAddr>);

impl std::str::FromStr for AddressOrOff {
    type Err = std::net::AddrParseError; // seam: a parse error type, no socket

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "off" => Ok(Self(None)),
            address => address.parse().map(|a| Self(Some(a))),
        }
    }
}

impl ServerOverrides {
    pub fn apply(self, mut config: crate::broker::BrokerConfig) -> crate::broker::BrokerConfig {
        if let Some(broker_id) = self.broker_id {
            config.broker_id = broker_id;
        }
        if let Some(data_dir) = self.data_dir {
            config.data_dir = data_dir;
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(AddressOrOff(metrics)) = self.metrics_listen {
            config.metrics_listen = metrics;
        }
        if let Some(AddressOrOff(http)) = self.http_listen {
            config.http_listen = http;
        }
        if let Some(advertise) = self.advertise {
            config.advertise = Some(advertise);
        }
        if let Some(etcd) = self.etcd {
            config.etcd = etcd;
        }
        config
    }
}

pub type CliResult = Result<(), Box<dyn std::error::Error>>;

/// Writes one line to standard output (see [`say!`]).
pub fn print_line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{args}")
}

/// Whether `error` is standard output's reader having gone away.
pub fn is_broken_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    error.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Runs a parsed command line; the error is printed by `main`.
pub async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Dev(args) => run::dev(args).await,
        Command::Server(args) => run::server(args).await,
        Command::Topic { command, broker } => topic::run(command, &broker.broker).await,
        Command::Group { command, broker } => group::run(command, &broker.broker).await,
        Command::Cluster { command, broker } => cluster::run(command, &broker.broker).await,
        Command::Partition { command, broker } => cluster::run_partition(command, &broker.broker).await,
        Command::Produce(args) => produce::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Bench { command } => bench::run(command).await,
    }
}
