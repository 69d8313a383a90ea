//! The `weir` command line.

mod dev;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weir", version, about = "weir: a Raft-replicated, deterministically simulated message queue")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs weir on this machine with its embedded defaults, no etcd needed.
    ///
    /// Until the broker lands (issue "Single-node broker"), this drives the
    /// partition log end to end: durable appends, reads by offset and by
    /// time, a clean close and a reopen, on the real disk.
    Dev(DevArgs),
}

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where weir keeps its data; kept between runs.
    #[arg(long, default_value = "weir-data")]
    pub data_dir: PathBuf,
    /// Messages to append in this run.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Size of each message value in bytes.
    #[arg(long, default_value_t = 1024)]
    pub message_bytes: usize,
    /// Messages per record batch (one fsync per batch).
    #[arg(long, default_value_t = 64)]
    pub batch_messages: u64,
}

/// Runs a parsed command line; the error is printed by `main`.
pub async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
    }
}
