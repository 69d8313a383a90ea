use clap::Parser;

/// Warnings, but not openraft's note that nobody waited for an answer
/// (what `acks=leader` and `acks=none` mean to do), nor its replication
/// errors: one line per group per retry while a peer is down (hundreds of
/// megabytes with 1,000 partitions). weir logs a peer that does not answer
/// as one condition instead (src/raft/reachability.rs).
const DEFAULT_LOG_FILTER: &str = "warn,openraft::raft::responder=error,openraft::replication=off";

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
