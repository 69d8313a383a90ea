//! Consumer groups in a cluster: members that reach the cluster through
//! different brokers are in one group (the leader of the offsets partition
//! coordinates it, the others point there), and when the coordinator's
//! broker dies the group moves with the offsets partition's leadership
//! without losing committed offsets or messages.
//!
//! Both builds (see `sim/src/cluster.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::client::{Client, ConsumerConfig, GroupConsumer};
use weir::proto::{self, Acks};

use weir_sim::cluster;

use cluster::{describe_everywhere, leaders, Cluster};

const TEST_DEADLINE: Duration = Duration::from_secs(240);
const PARTITIONS: u32 = 4;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cluster_groups=info,weir=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn produce_numbered(client: &Client, from: u32, to: u32) {
    for i in from..to {
        let record = proto::Record { value: Some(i.to_string().into_bytes()), ..Default::default() };
        client.produce("events", i % PARTITIONS, vec![record], Acks::All).await.expect("produce");
    }
}

type Seen = Arc<Mutex<Vec<u32>>>;

/// A member of group `g` that polls until `stop`, recording the numbers it
/// receives; it reaches the cluster through `bootstrap`.
fn member(
    cluster: &Cluster,
    bootstrap: String,
    stop: Arc<Mutex<bool>>,
) -> (Seen, impl std::future::Future<Output = ()>) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let task = cluster.spawn_client(async move {
        let client = Client::connect(&bootstrap).await.expect("connect");
        let config = ConsumerConfig {
            session_timeout: Duration::from_millis(2_000),
            heartbeat_interval: Duration::from_millis(200),
            ..ConsumerConfig::new("g", &["events"])
        };
        let mut consumer = GroupConsumer::join(client, config).await.expect("join");
        for _ in 0..3_000 {
            if *stop.lock().unwrap() {
                break;
            }
            match consumer.poll(Duration::from_millis(100)).await {
                Ok(records) => sink.lock().unwrap().extend(records.iter().map(|r| {
                    String::from_utf8_lossy(r.record.value.as_deref().unwrap_or_default()).parse::<u32>().unwrap()
                })),
                // The coordinator or a leader moving: the next poll retries.
                Err(error) => tracing::info!(%error, "poll failed"),
            }
        }
        let _ = consumer.close().await;
    });
    (seen, async move { task.await.expect("member task") })
}

/// Waits (bounded) until the members together have seen every number below `count`.
async fn wait_all_seen(seen: &[&Seen], count: u32) {
    for _ in 0..1_200 {
        let union: BTreeSet<u32> = seen.iter().flat_map(|s| s.lock().unwrap().clone()).collect();
        if (0..count).all(|i| union.contains(&i)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let union: BTreeSet<u32> = seen.iter().flat_map(|s| s.lock().unwrap().clone()).collect();
    let missing: Vec<u32> = (0..count).filter(|i| !union.contains(i)).collect();
    panic!("never seen: {missing:?}");
}

/// Waits (bounded) until group `g` is stable with two members that share
/// the partitions; returns the description.
async fn wait_shared(client: &Client) -> proto::GroupDescription {
    for _ in 0..1_200 {
        if let Ok(group) = client.describe_group("g").await {
            let owned: Vec<u32> =
                group.members.iter().flat_map(|m| m.assignment.iter().map(|tp| tp.partition)).collect();
            let distinct: BTreeSet<u32> = owned.iter().copied().collect();
            if group.state == "stable"
                && group.members.len() == 2
                && owned.len() == PARTITIONS as usize
                && distinct.len() == PARTITIONS as usize
            {
                return group;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("group g never shared {PARTITIONS} partitions between two members");
}

#[tokio::test]
async fn one_group_across_brokers_survives_losing_its_coordinator() {
    init_tracing();
    tokio::time::timeout(TEST_DEADLINE, scenario()).await.expect("the test finishes within its deadline");
}

async fn scenario() {
    let mut cluster = Cluster::start("groups", 3, |_| {}).await;
    let addresses = cluster.addresses();
    let bootstrap = addresses.join(",");
    let address = bootstrap.clone();
    cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config =
                proto::TopicConfig { partitions: PARTITIONS, replication_factor: Some(3), ..Default::default() };
            client.create_topic("events", config).await.expect("create");
            leaders(&client, "events").await;
            produce_numbered(&client, 0, 200).await;
        })
        .await;

    tracing::info!("two members, each reaching the cluster through a different broker");
    let stop = Arc::new(Mutex::new(false));
    let rotated = |k: usize| (0..3).map(|i| addresses[(i + k) % 3].clone()).collect::<Vec<_>>().join(",");
    let (first, first_done) = member(&cluster, rotated(0), stop.clone());
    let (second, second_done) = member(&cluster, rotated(1), stop.clone());
    let address = bootstrap.clone();
    let (coordinator, before) = cluster
        .run({
            let (first, second) = (first.clone(), second.clone());
            async move {
                let client = Client::connect(&address).await.expect("connect");
                wait_all_seen(&[&first, &second], 200).await;
                let group = wait_shared(&client).await;
                tracing::info!(generation = group.generation, "one group, partitions shared");
                // Every broker points at the same coordinator.
                let offsets = describe_everywhere(&client, "__consumer_offsets").await.expect("offsets partition");
                let coordinator = offsets.partitions[0].leader;
                assert_ne!(coordinator, 0);
                let mut committed = BTreeMap::new();
                for _ in 0..400 {
                    committed = client
                        .fetch_offsets("g", Vec::new())
                        .await
                        .expect("offsets")
                        .into_iter()
                        .map(|o| (o.partition, o.offset))
                        .collect::<BTreeMap<u32, u64>>();
                    if committed.values().sum::<u64>() == 200 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert_eq!(committed.values().sum::<u64>(), 200, "everything read is committed: {committed:?}");
                (coordinator, committed)
            }
        })
        .await;

    tracing::info!(coordinator, "killing the coordinator's broker");
    cluster.kill(coordinator, 11).await;
    let survivor = addresses.iter().enumerate().find(|(i, _)| *i as u64 + 1 != coordinator).unwrap().1.clone();
    let (first_seen, second_seen) = (first.clone(), second.clone());
    cluster
        .run(async move {
            let client = Client::connect(&survivor).await.expect("connect");
            produce_numbered(&client, 200, 300).await;
            wait_all_seen(&[&first_seen, &second_seen], 300).await;
            // The new coordinator kept what was committed.
            let mut after = BTreeMap::new();
            for _ in 0..400 {
                if let Ok(offsets) = client.fetch_offsets("g", Vec::new()).await {
                    after = offsets.into_iter().map(|o| (o.partition, o.offset)).collect::<BTreeMap<u32, u64>>();
                    if after.values().sum::<u64>() == 300 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for (partition, offset) in &before {
                assert!(after.get(partition).is_some_and(|a| a >= offset), "{partition}: {before:?} then {after:?}");
            }
            assert_eq!(after.values().sum::<u64>(), 300, "{after:?}");
            let offsets = describe_everywhere(&client, "__consumer_offsets").await.expect("offsets partition");
            assert_ne!(offsets.partitions[0].leader, coordinator, "another broker coordinates now");
        })
        .await;
    *stop.lock().unwrap() = true;
    first_done.await;
    second_done.await;
}

/// A group call whose coordinator is paused (SIGSTOP, or a machine that
/// froze) gives up on it after a bounded wait and follows the offsets
/// partition's leadership to the next coordinator. Group calls used to
/// wait without limit: a member whose coordinator was paused waited for it
/// to come back, however long another broker had coordinated meanwhile.
/// Needs a paused node: simulator only.
#[cfg(madsim)]
#[tokio::test]
async fn a_group_call_does_not_wait_for_a_paused_coordinator() {
    init_tracing();
    tokio::time::timeout(TEST_DEADLINE, paused_coordinator()).await.expect("the test finishes within its deadline");
}

#[cfg(madsim)]
async fn paused_coordinator() {
    use tokio::time::Instant;
    let cluster = Cluster::start("paused-coordinator", 3, |_| {}).await;
    let bootstrap = cluster.addresses().join(",");
    let address = bootstrap.clone();
    let (client, coordinator) = cluster
        .run(async move {
            let client = Client::connect(&address).await.expect("connect");
            let config =
                proto::TopicConfig { partitions: PARTITIONS, replication_factor: Some(3), ..Default::default() };
            client.create_topic("events", config).await.expect("create");
            leaders(&client, "events").await;
            // The client learns where the coordinator is.
            client.fetch_offsets("g", Vec::new()).await.expect("offsets");
            let offsets = describe_everywhere(&client, "__consumer_offsets").await.expect("offsets partition");
            (client, offsets.partitions[0].leader)
        })
        .await;
    assert_ne!(coordinator, 0);
    tracing::info!(coordinator, "pausing the coordinator's broker");
    cluster.pause(coordinator);
    let paused = Instant::now();
    let (answered, elapsed) = cluster
        .run(async move {
            let mut first = None;
            while paused.elapsed() < Duration::from_secs(40) {
                let asked = Instant::now();
                let answer = tokio::time::timeout(Duration::from_secs(30), client.fetch_offsets("g", Vec::new())).await;
                let took = asked.elapsed();
                first.get_or_insert(took);
                if matches!(answer, Ok(Ok(_))) {
                    return (true, (first.unwrap_or(took), paused.elapsed()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (false, (first.unwrap_or_default(), paused.elapsed()))
        })
        .await;
    let (first, served) = elapsed;
    tracing::info!(?first, ?served, "group calls while the coordinator is paused");
    assert!(first < Duration::from_secs(15), "the first call waited {first:?} for the paused coordinator");
    assert!(answered, "no coordinator answered while the old one was paused ({served:?})");
    // An election (up to the lease and an election timeout), the new
    // coordinator loading the offsets, and the client's bounded tries.
    assert!(served < Duration::from_secs(20), "served after {served:?}");
    cluster.resume(coordinator);
}
