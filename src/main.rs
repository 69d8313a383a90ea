use clap::Parser;

/// Warnings, but not openraft's note that nobody waited for an answer
/// (what `acks=leader` and `acks=none` mean to do).
const DEFAULT_LOG_FILTER: &str = "warn,openraft::raft::responder=error";

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
