use clap::Parser;

/// Warnings, and of openraft only errors, without its per-group replication
/// and heartbeat errors: with a peer down they are a line per group per
/// retry (24 MB a minute with 1,000 partitions, `benches/operations`). weir
/// logs a peer that does not answer as one condition instead
/// (src/raft/reachability.rs); `RUST_LOG=warn` brings openraft's back.
const DEFAULT_LOG_FILTER: &str = "warn,openraft=error,openraft::replication=off,openraft::engine=off";

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .init();
    let cli = weir::cli::Cli::parse();
    if let Err(error) = weir::cli::run(cli).await {
        if weir::cli::is_broken_pipe(error.as_ref()) {
            return; // the reader of our output went away (`| head`): nothing more to say
        }
        eprintln!("weir: {error}");
        std::process::exit(1); // seam: the CLI process reports failure through its exit code
    }
}
