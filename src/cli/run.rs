//! `weir dev` and `weir server`: run a broker until Ctrl-C.

use super::{CliResult, DevArgs, ServerArgs};
use crate::broker::server::{open_broker, serve};
use crate::broker::BrokerConfig;
use crate::sys::clock::system_clock;
use crate::sys::disk::real_disk;

pub async fn dev(args: DevArgs) -> CliResult {
    let config = BrokerConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        metrics_listen: Some(args.metrics_listen),
        ..BrokerConfig::default()
    };
    start(config).await
}

pub async fn server(args: ServerArgs) -> CliResult {
    let text = crate::sys::disk::read_to_string(&args.config)
        .map_err(|e| format!("cannot read config file {}: {e}", args.config.display()))?;
    let mut config: BrokerConfig =
        toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", args.config.display()))?;
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    start(config).await
}

async fn start(config: BrokerConfig) -> CliResult {
    let listen = config.listen;
    let data_dir = config.data_dir.clone();
    let broker = open_broker(config, real_disk(), system_clock()).await?;
    let description = broker.describe_broker();
    println!(
        "weir {} broker {} serving on {listen} (data in {}, {} topics, {} partitions); Ctrl-C stops it",
        description.version,
        description.broker_id,
        data_dir.display(),
        description.topics,
        description.partitions
    );
    println!("try: weir topic create demo --partitions 3 && echo hello | weir produce demo && weir consume demo --from beginning --max-messages 1");
    serve(broker, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| e.to_string())?;
    println!("stopped cleanly");
    Ok(())
}
