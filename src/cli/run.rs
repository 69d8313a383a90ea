//! `weir dev` and `weir server`: run a broker until SIGINT (Ctrl-C) or
//! SIGTERM, then stop it gracefully.

use super::{CliResult, DevArgs, ServerArgs};
use crate::broker::server::{open_broker, serve_on, Listeners};
use crate::broker::BrokerConfig;
use crate::meta::EtcdStore;
use crate::sys::clock::system_clock;
use crate::sys::disk::real_disk;
use crate::sys::net::SocketAddr;
use crate::sys::process::{etcd_installed, port_taken, EtcdProcess, StopSignals};
use std::time::Duration;

pub async fn dev(args: DevArgs) -> CliResult {
    if args.brokers > 1 {
        return dev_cluster(args).await;
    }
    let config = BrokerConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        metrics_listen: Some(args.metrics_listen),
        http_listen: Some(args.http_listen),
        ..BrokerConfig::default()
    };
    start(config).await
}

/// How long `weir dev` waits for the etcd it started to answer.
const ETCD_STARTUP: Duration = Duration::from_secs(15);

/// `weir dev --brokers N`: N brokers in this process on one etcd.
async fn dev_cluster(args: DevArgs) -> CliResult {
    let stop_signals = StopSignals::listen();
    let mut etcd_process = None;
    let endpoints = if args.etcd.is_empty() {
        if !etcd_installed() {
            return Err(
                "--brokers needs etcd: install it (Debian: apt install etcd-server) or pass --etcd host:port".into()
            );
        }
        let client: SocketAddr = "127.0.0.1:2379".parse().expect("valid address");
        let peer: SocketAddr = "127.0.0.1:2380".parse().expect("valid address");
        // An etcd already there would answer the probe below in place of
        // the one started here, which would then exit unseen.
        if let Some(taken) = [client, peer].into_iter().find(|a| port_taken(*a)) {
            return Err(format!(
                "cannot start etcd: {taken} is in use (another etcd?); stop it, or use it with --etcd 127.0.0.1:2379"
            )
            .into());
        }
        let dir = args.data_dir.join("etcd");
        let mut process = EtcdProcess::start(&dir, client, peer).map_err(|e| format!("starting etcd: {e}"))?;
        wait_for_etcd(&client.to_string(), &mut process).await?;
        if let Some(status) = process.exited()? {
            return Err(format!("etcd exited ({status}); see {}", process.log_path().display()).into());
        }
        say!("etcd serving on {client} (data and log in {})", dir.display());
        etcd_process = Some(process);
        vec![client.to_string()]
    } else {
        args.etcd.clone()
    };
    // Every address is bound before anything opens or is announced.
    let mut configs = Vec::new();
    for i in 0..args.brokers {
        let port = |base: u16| base.checked_add(2 * i as u16).ok_or("ports run past 65535");
        let config = BrokerConfig {
            broker_id: u64::from(i) + 1,
            data_dir: args.data_dir.join(format!("broker-{}", i + 1)),
            listen: SocketAddr::new(args.listen.ip(), port(args.listen.port())?),
            metrics_listen: Some(SocketAddr::new(args.metrics_listen.ip(), port(args.metrics_listen.port())?)),
            http_listen: Some(SocketAddr::new(args.http_listen.ip(), port(args.http_listen.port())?)),
            etcd: endpoints.clone(),
            cluster_name: "weir-dev".into(),
            // They all stop together: none could take over another's
            // leaderships.
            hand_over_on_stop: false,
            ..BrokerConfig::default()
        };
        let listeners = Listeners::bind(&config).await?;
        configs.push((config, listeners));
    }
    // Every broker registers before any serves, so the offsets partition
    // (created when the first one starts serving) is placed on all of them.
    let mut brokers = Vec::new();
    for (config, listeners) in configs {
        brokers.push((open_broker(config.clone(), real_disk(), system_clock()).await?, config, listeners));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    let mut addresses = Vec::new();
    for (broker, config, listeners) in brokers {
        let (listen, metrics, http) = (config.listen, config.metrics_listen, config.http_listen);
        let (metrics, http) = (metrics.expect("set above"), http.expect("set above"));
        say!("broker {} serving on {listen} (metrics on {metrics}, HTTP gateway on {http})", broker.broker_id());
        addresses.push(listen.to_string());
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            serve_on(broker, listeners, async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await
            .map_err(|e| e.to_string())
        }));
    }
    let all = addresses.join(",");
    say!("a {}-broker cluster is up; Ctrl-C or SIGTERM stops it. Try:", args.brokers);
    say!("  weir topic create demo --partitions 6 --broker {all}");
    say!("  weir cluster status --broker {all}");
    let signal = stop_signals.wait().await;
    say!("{signal}: stopping");
    let _ = stop_tx.send(true);
    for server in servers {
        server.await.map_err(|e| e.to_string())??;
    }
    drop(etcd_process);
    say!("stopped cleanly");
    Ok(())
}

async fn wait_for_etcd(endpoint: &str, process: &mut EtcdProcess) -> CliResult {
    let deadline = tokio::time::Instant::now() + ETCD_STARTUP;
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = process.exited()? {
            return Err(format!("etcd exited ({status}); see {}", process.log_path().display()).into());
        }
        let probe = EtcdStore::connect(vec![endpoint.to_owned()], "weir-dev-probe");
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("etcd did not answer within {ETCD_STARTUP:?}; see {}", process.log_path().display()).into())
}

pub async fn server(args: ServerArgs) -> CliResult {
    let text = crate::sys::disk::read_to_string(&args.config)
        .map_err(|e| format!("cannot read config file {}: {e}", args.config.display()))?;
    let config: BrokerConfig =
        toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", args.config.display()))?;
    start(args.overrides.apply(config)).await
}

async fn start(config: BrokerConfig) -> CliResult {
    let stop_signals = StopSignals::listen();
    let listeners = Listeners::bind(&config).await?;
    let (listen, data_dir) = (config.listen, config.data_dir.clone());
    let (metrics, http) = (config.metrics_listen, config.http_listen);
    let opening = tokio::time::Instant::now();
    let broker = open_broker(config, real_disk(), system_clock()).await?;
    let description = broker.describe_broker();
    say!(
        "weir {} broker {} serving on {listen} (data in {}, {} topics, {} partitions, opened in {:.1} s); \
         Ctrl-C or SIGTERM stops it",
        description.version,
        description.broker_id,
        data_dir.display(),
        description.topics,
        description.partitions,
        opening.elapsed().as_secs_f64()
    );
    if let Some(metrics) = metrics {
        say!("metrics on http://{metrics}/metrics");
    }
    if let Some(http) = http {
        say!("HTTP gateway on http://{http}/v1");
    }
    say!("try: weir topic create demo --partitions 3 && echo hello | weir produce demo && weir consume demo --from beginning --max-messages 1");
    let stopping = std::sync::Arc::new(std::sync::Mutex::new(None));
    let stopped_at = stopping.clone();
    serve_on(broker, listeners, async move {
        let signal = stop_signals.wait().await;
        eprintln!("{signal}: stopping");
        *stopped_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    })
    .await
    .map_err(|e| e.to_string())?;
    let took = stopping.lock().unwrap_or_else(|p| p.into_inner()).map(|at| at.elapsed().as_secs_f64());
    say!("stopped cleanly in {:.1} s", took.unwrap_or(0.0));
    Ok(())
}
