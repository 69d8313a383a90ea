//! Consumer groups end to end over gRPC, in both builds: the queue and the
//! broadcast patterns, rebalances when members leave or die, fenced commits,
//! and offsets that survive a restart.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, TestBroker};
use weir::client::{Client, Consumed, ConsumerConfig, GroupConsumer};
use weir::proto::{self, Acks, ErrorCode};

const SESSION: Duration = Duration::from_millis(1_000);
const HEARTBEAT: Duration = Duration::from_millis(100);
const POLL: Duration = Duration::from_millis(100);
/// Bounds every wait loop: the tests never spin forever.
const ROUNDS_MAX: usize = 600;

fn config(group: &str, topics: &[&str]) -> ConsumerConfig {
    ConsumerConfig { session_timeout: SESSION, heartbeat_interval: HEARTBEAT, ..ConsumerConfig::new(group, topics) }
}

async fn produce_numbered(client: &Client, topic: &str, partitions: u32, count: u32) {
    for i in 0..count {
        let record = proto::Record { value: Some(format!("{i}").into_bytes()), ..proto::Record::default() };
        client.produce(topic, i % partitions, vec![record], Acks::All).await.unwrap();
    }
}

fn number(consumed: &Consumed) -> u32 {
    String::from_utf8(consumed.record.value.clone().unwrap()).unwrap().parse().unwrap()
}

/// Waits until the group is stable with `members` members that all own
/// something.
async fn wait_stable(client: &Client, group: &str, members: usize) -> proto::GroupDescription {
    for _ in 0..ROUNDS_MAX {
        if let Ok(description) = client.describe_group(group).await {
            let settled = description.state == "stable"
                && description.members.len() == members
                && description.members.iter().all(|m| !m.assignment.is_empty());
            if settled {
                return description;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("group {group} never settled with {members} members");
}

/// Two members of one group, both past the rebalance the second one's
/// join started: the first keeps polling (which is how it rejoins) until
/// the second's join returns, then polls once more to take up the new
/// generation.
async fn join_two(client: &Client, config: ConsumerConfig) -> (GroupConsumer, GroupConsumer) {
    let mut first = GroupConsumer::join(client.clone(), config.clone()).await.unwrap();
    let joining = tokio::spawn({
        let client = client.clone();
        async move { GroupConsumer::join(client, config).await.unwrap() }
    });
    for _ in 0..ROUNDS_MAX {
        first.poll(POLL).await.unwrap();
        if joining.is_finished() {
            let second = joining.await.unwrap();
            first.poll(POLL).await.unwrap();
            return (first, second);
        }
    }
    panic!("the second member never joined");
}

type Received = Arc<Mutex<Vec<Consumed>>>;

/// A consumer that polls in the background until stopped, recording what
/// it receives.
fn spawn_consumer(
    client: Client,
    config: ConsumerConfig,
    stop: Arc<Mutex<bool>>,
) -> (Received, tokio::task::JoinHandle<()>) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let task = tokio::spawn(async move {
        let mut consumer = GroupConsumer::join(client, config).await.unwrap();
        for _ in 0..ROUNDS_MAX * 10 {
            if *stop.lock().unwrap() {
                break;
            }
            let records = consumer.poll(POLL).await.unwrap();
            sink.lock().unwrap().extend(records);
        }
        consumer.close().await.unwrap();
    });
    (received, task)
}

async fn wait_for_count(received: &[&Received], count: usize) {
    for _ in 0..ROUNDS_MAX {
        if received.iter().map(|r| r.lock().unwrap().len()).sum::<usize>() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("only {} of {count} records arrived", received.iter().map(|r| r.lock().unwrap().len()).sum::<usize>());
}

/// Each partition's records, as one consumer saw them, are in offset order.
fn assert_partition_order(received: &[Consumed]) {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for consumed in received {
        if let Some(previous) = last.insert(consumed.partition, consumed.record.offset) {
            assert!(consumed.record.offset > previous, "partition {} went backwards", consumed.partition);
        }
    }
}

#[tokio::test]
async fn one_group_shares_the_partitions() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            tracing::info!("set up: two members of one group, settled before any data");
            let client = connect(&address).await;
            client.create_topic("jobs", proto::TopicConfig { partitions: 4, ..Default::default() }).await.unwrap();
            let stop = Arc::new(Mutex::new(false));
            let (first, first_task) = spawn_consumer(client.clone(), config("workers", &["jobs"]), stop.clone());
            let (second, second_task) = spawn_consumer(client.clone(), config("workers", &["jobs"]), stop.clone());
            let description = wait_stable(&client, "workers", 2).await;
            assert!(description.members.iter().all(|m| m.assignment.len() == 2), "range gives 2 + 2");

            tracing::info!("act: produce 200 numbered messages");
            produce_numbered(&client, "jobs", 4, 200).await;
            wait_for_count(&[&first, &second], 200).await;
            let settled = client.describe_group("workers").await.unwrap();
            assert_eq!(settled.generation, description.generation, "no rebalance once settled (heartbeats kept it)");
            *stop.lock().unwrap() = true;
            first_task.await.unwrap();
            second_task.await.unwrap();

            tracing::info!("check: disjoint, complete, each partition in order");
            let first = first.lock().unwrap().clone();
            let second = second.lock().unwrap().clone();
            let a: BTreeSet<u32> = first.iter().map(number).collect();
            let b: BTreeSet<u32> = second.iter().map(number).collect();
            assert!(a.is_disjoint(&b), "a message went to both members");
            assert_eq!(a.len() + b.len(), 200, "duplicates within a member");
            assert_eq!(a.union(&b).copied().collect::<BTreeSet<_>>(), (0..200).collect());
            assert!(!a.is_empty() && !b.is_empty(), "both members worked");
            assert_partition_order(&first);
            assert_partition_order(&second);
        })
        .await;
}

#[tokio::test]
async fn separate_groups_each_get_everything() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("news", proto::TopicConfig { partitions: 3, ..Default::default() }).await.unwrap();
            produce_numbered(&client, "news", 3, 90).await;
            let stop = Arc::new(Mutex::new(false));
            let (audit, audit_task) = spawn_consumer(client.clone(), config("audit", &["news"]), stop.clone());
            let (search, search_task) = spawn_consumer(client.clone(), config("search", &["news"]), stop.clone());
            wait_for_count(&[&audit], 90).await;
            wait_for_count(&[&search], 90).await;
            *stop.lock().unwrap() = true;
            audit_task.await.unwrap();
            search_task.await.unwrap();
            for received in [audit, search] {
                let numbers: Vec<u32> = received.lock().unwrap().iter().map(number).collect();
                assert_eq!(numbers.len(), 90, "exactly once each within a group");
                assert_eq!(numbers.into_iter().collect::<BTreeSet<_>>(), (0..90).collect());
            }
        })
        .await;
}

#[tokio::test]
async fn a_dead_members_partitions_resume_from_its_last_commit() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("tasks", proto::TopicConfig { partitions: 2, ..Default::default() }).await.unwrap();
            let manual = |group| ConsumerConfig { auto_commit: false, ..config(group, &["tasks"]) };

            tracing::info!("two members, one partition each, settled");
            let (mut survivor, mut victim) = join_two(&client, manual("crew")).await;
            assert_eq!(survivor.assignment().len(), 1);
            assert_eq!(victim.assignment().len(), 1);
            let (lost_topic, lost_partition) = victim.assignment()[0].clone();

            tracing::info!("the victim reads 20, commits after 10, and dies without leaving");
            produce_numbered(&client, "tasks", 2, 40).await;
            let mut seen = Vec::new();
            for _ in 0..ROUNDS_MAX {
                seen.extend(victim.poll(POLL).await.unwrap());
                if seen.len() >= 10 {
                    break;
                }
            }
            let committed_at = seen[9].record.offset + 1;
            victim.seek(&lost_topic, lost_partition, committed_at).unwrap();
            victim.commit().await.unwrap();
            drop(victim); // no leave: the broker finds out by the session timeout

            tracing::info!("the survivor takes over from the last commit, skipping nothing");
            let mut taken_over = Vec::new();
            for _ in 0..ROUNDS_MAX {
                let records = survivor.poll(POLL).await.unwrap();
                taken_over.extend(records.into_iter().filter(|c| c.partition == lost_partition));
                if taken_over.len() as u64 >= 20 - committed_at {
                    break;
                }
            }
            assert_eq!(survivor.assignment().len(), 2, "the survivor owns both partitions now");
            let offsets: Vec<u64> = taken_over.iter().map(|c| c.record.offset).collect();
            assert_eq!(offsets, (committed_at..20).collect::<Vec<_>>(), "resumed exactly at the commit");
        })
        .await;
}

/// Sessions run on the monotonic clock. On the wall clock, a step an hour
/// forwards expired every member at once (a needless rebalance), and a
/// step backwards kept a dead member in its group, its partitions unread,
/// until the wall clock caught up.
#[tokio::test]
async fn a_wall_clock_step_neither_expires_live_members_nor_keeps_dead_ones() {
    const HOUR_MS: i64 = 3_600_000;
    let broker = TestBroker::start().await;
    let (address, clock) = (broker.address.clone(), broker.clock.clone());
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("ticks", proto::TopicConfig { partitions: 2, ..Default::default() }).await.unwrap();
            let (mut first, mut second) = join_two(&client, config("clocks", &["ticks"])).await;
            let settled = wait_stable(&client, "clocks", 2).await;

            tracing::info!("the broker's wall clock jumps an hour forwards; both members keep polling");
            clock.step_ms(HOUR_MS);
            let until = tokio::time::Instant::now() + SESSION * 3;
            while tokio::time::Instant::now() < until {
                first.poll(POLL).await.unwrap();
                second.poll(POLL).await.unwrap();
            }
            let after = client.describe_group("clocks").await.unwrap();
            assert_eq!(
                (after.state.as_str(), after.generation, after.members.len()),
                ("stable", settled.generation, 2),
                "no member expired: {after:?}"
            );

            tracing::info!("it jumps two hours backwards; one member dies without leaving");
            clock.step_ms(-2 * HOUR_MS);
            drop(second);
            let polling = tokio::spawn(async move {
                loop {
                    if first.poll(POLL).await.is_err() {
                        tokio::time::sleep(POLL).await;
                    }
                }
            });
            let survivors = wait_stable(&client, "clocks", 1).await;
            polling.abort();
            assert!(survivors.generation > settled.generation, "a rebalance dropped the dead member");
        })
        .await;
}

#[tokio::test]
async fn commits_are_fenced_by_generation_and_ownership() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("ledger", proto::TopicConfig { partitions: 2, ..Default::default() }).await.unwrap();
            produce_numbered(&client, "ledger", 2, 10).await;
            let join = |member_id: String| proto::JoinGroupRequest {
                group: "fenced".into(),
                member_id,
                topics: vec!["ledger".into()],
                session_timeout_ms: 5_000,
                assignor: "range".into(),
            };
            let first = client.join_group(join(String::new())).await.unwrap();
            // Generations start above any an earlier coordinator handed out.
            let g1 = first.generation;
            assert!(g1 >= 1, "generation {g1}");
            assert_eq!(first.assignment.len(), 2);

            tracing::info!("a second member joins; the first rejoins: generation 2, one partition each");
            let second = tokio::spawn({
                let client = client.clone();
                let request = join(String::new());
                async move { client.join_group(request).await.unwrap() }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let heartbeat =
                proto::HeartbeatRequest { group: "fenced".into(), member_id: first.member_id.clone(), generation: g1 };
            assert_eq!(client.heartbeat(heartbeat).await.unwrap_err().code(), Some(ErrorCode::RebalanceInProgress));
            let rejoined = client.join_group(join(first.member_id.clone())).await.unwrap();
            let second = second.await.unwrap();
            let g2 = g1 + 1;
            assert_eq!((rejoined.generation, second.generation), (g2, g2));
            assert_eq!(rejoined.assignment.len() + second.assignment.len(), 2);

            let commit = |member_id: &str, generation, tp: &proto::TopicPartition| proto::CommitOffsetsRequest {
                group: "fenced".into(),
                member_id: member_id.into(),
                generation,
                offsets: vec![proto::PartitionOffset {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: 3,
                    metadata: String::new(),
                }],
            };
            let mine = &rejoined.assignment[0];
            let theirs = &second.assignment[0];
            let stale = client.commit_offsets(commit(&first.member_id, g1, mine)).await.unwrap_err();
            assert_eq!(stale.code(), Some(ErrorCode::IllegalGeneration), "a stale generation's commit is refused");
            let foreign = client.commit_offsets(commit(&first.member_id, g2, theirs)).await.unwrap_err();
            assert_eq!(foreign.code(), Some(ErrorCode::NotAssigned));
            let stranger = client.commit_offsets(commit("member-nobody", g2, mine)).await.unwrap_err();
            assert_eq!(stranger.code(), Some(ErrorCode::UnknownMember));
            let outsider = client.commit_offsets(commit("", 0, mine)).await.unwrap_err();
            assert_eq!(outsider.code(), Some(ErrorCode::UnknownMember), "no commits from outside while members exist");
            client.commit_offsets(commit(&first.member_id, g2, mine)).await.unwrap();

            let offsets = client.fetch_offsets("fenced", vec![]).await.unwrap();
            assert_eq!(offsets.len(), 1, "only the accepted commit is stored");
            assert_eq!(
                (offsets[0].topic.as_str(), offsets[0].partition, offsets[0].offset),
                (mine.topic.as_str(), mine.partition, 3)
            );
            let description = client.describe_group("fenced").await.unwrap();
            let lag = description.partitions.iter().find(|p| p.partition == mine.partition).unwrap();
            assert_eq!((lag.committed_offset, lag.high_watermark, lag.lag), (Some(3), 5, 2));
        })
        .await;
}

#[tokio::test]
async fn committed_offsets_survive_a_restart() {
    let mut broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("kept", proto::TopicConfig { partitions: 3, ..Default::default() }).await.unwrap();
            produce_numbered(&client, "kept", 3, 30).await;
            for partition in 0..3 {
                let request = proto::CommitOffsetsRequest {
                    group: "durable".into(),
                    member_id: String::new(),
                    generation: 0,
                    offsets: vec![proto::PartitionOffset {
                        topic: "kept".into(),
                        partition,
                        offset: partition as u64 + 4,
                        metadata: "m".into(),
                    }],
                };
                client.commit_offsets(request).await.unwrap();
            }
        })
        .await;
    broker.restart(11).await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            let offsets = client.fetch_offsets("durable", vec![]).await.unwrap();
            let got: Vec<(u32, u64)> = offsets.iter().map(|o| (o.partition, o.offset)).collect();
            assert_eq!(got, [(0, 4), (1, 5), (2, 6)]);
            let mut consumer = GroupConsumer::join(client.clone(), config("durable", &["kept"])).await.unwrap();
            let mut first_offsets = BTreeMap::new();
            for _ in 0..ROUNDS_MAX {
                for consumed in consumer.poll(POLL).await.unwrap() {
                    first_offsets.entry(consumed.partition).or_insert(consumed.record.offset);
                }
                if first_offsets.len() == 3 {
                    break;
                }
            }
            assert_eq!(first_offsets, BTreeMap::from([(0, 4), (1, 5), (2, 6)]), "a new member starts at the commits");
        })
        .await;
}

#[tokio::test]
async fn the_committed_offsets_log_stays_bounded() {
    let mut broker = TestBroker::start().await;
    let address = broker.address.clone();
    let commits = 600u64;
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("busy", proto::TopicConfig { partitions: 2, ..Default::default() }).await.unwrap();
            produce_numbered(&client, "busy", 2, 2).await;
            for i in 0..commits {
                let request = proto::CommitOffsetsRequest {
                    group: format!("group-{}", i % 3),
                    member_id: String::new(),
                    generation: 0,
                    offsets: vec![proto::PartitionOffset {
                        topic: "busy".into(),
                        partition: (i % 2) as u32,
                        offset: (i / 6) % 2,
                        metadata: format!("commit {i}"),
                    }],
                };
                client.commit_offsets(request).await.unwrap();
            }
            let offsets = client.describe_topic("__consumer_offsets").await.unwrap().partitions.remove(0);
            assert!(offsets.log_start_offset > 0, "old segments were dropped after a snapshot");
            assert!(offsets.size_bytes < 32 * 1024 + 2 * 8 * 1024, "{} bytes kept", offsets.size_bytes);
        })
        .await;
    broker.restart(5).await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            for group in 0..3u64 {
                let offsets = client.fetch_offsets(&format!("group-{group}"), vec![]).await.unwrap();
                assert_eq!(offsets.len(), 2, "group-{group} still has both partitions");
                for offset in offsets {
                    // The last commit of this group and partition wins.
                    let last =
                        (0..commits).filter(|i| i % 3 == group && i % 2 == offset.partition as u64).max().unwrap();
                    assert_eq!(offset.metadata, format!("commit {last}"));
                    assert_eq!(offset.offset, (last / 6) % 2);
                }
            }
        })
        .await;
}

#[tokio::test]
async fn a_member_that_leaves_hands_over_at_once_without_gaps_or_repeats() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("shifts", proto::TopicConfig { partitions: 2, ..Default::default() }).await.unwrap();
            // A long session: only a leave can explain a quick handover.
            // One batch (here one message) per poll, so both are mid-way when one leaves.
            let patient = ConsumerConfig {
                session_timeout: Duration::from_secs(30),
                fetch_bytes_max: 1,
                ..config("rota", &["shifts"])
            };
            let (mut stays, mut leaves) = join_two(&client, patient).await;
            assert_eq!((stays.assignment().len(), leaves.assignment().len()), (1, 1));

            tracing::info!("both consume part of 60 messages; then one leaves (committing on the way out)");
            produce_numbered(&client, "shifts", 2, 60).await;
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.extend(stays.poll(POLL).await.unwrap());
                seen.extend(leaves.poll(POLL).await.unwrap());
            }
            let generation = stays.generation();
            let left_at = tokio::time::Instant::now();
            leaves.close().await.unwrap();

            tracing::info!("the other takes over both partitions well before any session could expire");
            for _ in 0..ROUNDS_MAX {
                seen.extend(stays.poll(POLL).await.unwrap());
                if seen.len() >= 60 {
                    break;
                }
            }
            assert!(left_at.elapsed() < Duration::from_secs(30), "the handover waited for a session timeout");
            assert!(stays.generation() > generation);
            assert_eq!(stays.assignment().len(), 2);
            let numbers: Vec<u32> = seen.iter().map(number).collect();
            assert_eq!(numbers.len(), 60, "nothing delivered twice");
            assert_eq!(numbers.into_iter().collect::<BTreeSet<_>>(), (0..60).collect(), "nothing skipped");
        })
        .await;
}

#[tokio::test]
async fn a_group_formed_before_its_topic_exists_gets_the_partitions_once_it_does() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            let mut early = GroupConsumer::join(client.clone(), config("early", &["later"])).await.unwrap();
            assert!(early.assignment().is_empty(), "nothing to own yet: {:?}", early.assignment());
            let generation = early.generation();

            tracing::info!("the topic appears; the coordinator notices and rebalances");
            client.create_topic("later", proto::TopicConfig { partitions: 3, ..Default::default() }).await.unwrap();
            produce_numbered(&client, "later", 3, 30).await;
            let mut seen = Vec::new();
            for _ in 0..ROUNDS_MAX {
                seen.extend(early.poll(POLL).await.unwrap());
                if seen.len() >= 30 {
                    break;
                }
            }
            assert!(early.generation() > generation);
            assert_eq!(early.assignment().len(), 3);
            let numbers: BTreeSet<u32> = seen.iter().map(number).collect();
            assert_eq!(numbers, (0..30).collect(), "everything delivered");
        })
        .await;
}

#[tokio::test]
async fn push_mode_members_share_partitions_and_can_seek() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("pushy", proto::TopicConfig { partitions: 4, ..Default::default() }).await.unwrap();
            let push = ConsumerConfig { push_window: Some(8), ..config("pushers", &["pushy"]) };
            let stop = Arc::new(Mutex::new(false));
            let (first, first_task) = spawn_consumer(client.clone(), push.clone(), stop.clone());
            let (second, second_task) = spawn_consumer(client.clone(), push.clone(), stop.clone());
            wait_stable(&client, "pushers", 2).await;
            produce_numbered(&client, "pushy", 4, 120).await;
            wait_for_count(&[&first, &second], 120).await;
            *stop.lock().unwrap() = true;
            first_task.await.unwrap();
            second_task.await.unwrap();
            let a: BTreeSet<u32> = first.lock().unwrap().iter().map(number).collect();
            let b: BTreeSet<u32> = second.lock().unwrap().iter().map(number).collect();
            assert!(a.is_disjoint(&b) && !a.is_empty() && !b.is_empty());
            assert_eq!(a.union(&b).copied().collect::<BTreeSet<_>>(), (0..120).collect());
            assert_partition_order(&first.lock().unwrap());
            assert_partition_order(&second.lock().unwrap());

            tracing::info!("a lone push member seeks back to the beginning and reads a partition again");
            let mut alone = GroupConsumer::join(client.clone(), push).await.unwrap();
            assert_eq!(alone.assignment().len(), 4);
            let offset = alone.seek_to("pushy", 2, weir::client::SeekTo::Beginning).await.unwrap();
            assert_eq!(offset, 0);
            let mut again = Vec::new();
            for _ in 0..ROUNDS_MAX {
                again.extend(alone.poll(POLL).await.unwrap().into_iter().filter(|c| c.partition == 2));
                if again.len() >= 30 {
                    break;
                }
            }
            assert_eq!(again.iter().map(|c| c.record.offset).collect::<Vec<_>>(), (0..30).collect::<Vec<_>>());
            alone.close().await.unwrap();
        })
        .await;
}

#[tokio::test]
async fn members_rejoin_after_a_broker_restart_and_resume_from_their_commits() {
    let mut broker = TestBroker::start().await;
    let address = broker.address.clone();
    let (consumer, before) = broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("steady", proto::TopicConfig { partitions: 2, ..Default::default() }).await.unwrap();
            produce_numbered(&client, "steady", 2, 40).await;
            let one_at_a_time = ConsumerConfig { fetch_bytes_max: 1, ..config("survivors", &["steady"]) };
            let mut consumer = GroupConsumer::join(client, one_at_a_time).await.unwrap();
            let mut before = Vec::new();
            for _ in 0..10 {
                before.extend(consumer.poll(POLL).await.unwrap());
            }
            consumer.commit().await.unwrap();
            (consumer, before)
        })
        .await;
    broker.restart(3).await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let mut consumer = consumer;
            let mut seen = before;
            for _ in 0..ROUNDS_MAX {
                // Polls fail while the broker is away; the consumer recovers.
                if let Ok(records) = consumer.poll(POLL).await {
                    seen.extend(records);
                }
                if seen.len() >= 40 {
                    break;
                }
            }
            let numbers: Vec<u32> = seen.iter().map(number).collect();
            let trail: Vec<(u32, u64)> = seen.iter().map(|c| (c.partition, c.record.offset)).collect();
            assert_eq!(numbers.len(), 40, "resumed exactly at the committed offsets: {trail:?}");
            assert_eq!(numbers.iter().collect::<BTreeSet<_>>().len(), 40, "duplicates: {trail:?}");
            assert_eq!(numbers.into_iter().collect::<BTreeSet<_>>(), (0..40).collect());
            let description = connect(&address).await.describe_group("survivors").await.unwrap();
            assert_eq!(description.members.len(), 1, "the member rejoined the restarted broker");
        })
        .await;
}

/// `weir topic delete __consumer_offsets` once lost every group's offsets,
/// and a record produced there kept the coordinator from loading after a
/// restart. Both are refused, naming the topic; the offsets survive.
#[tokio::test]
async fn clients_cannot_delete_or_write_the_offsets_topic() {
    let mut broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            tracing::info!("set up: a group with a committed offset");
            let client = connect(&address).await;
            client.create_topic("kept", proto::TopicConfig { partitions: 1, ..Default::default() }).await.unwrap();
            produce_numbered(&client, "kept", 1, 3).await;
            let request = proto::CommitOffsetsRequest {
                group: "durable".into(),
                member_id: String::new(),
                generation: 0,
                offsets: vec![proto::PartitionOffset {
                    topic: "kept".into(),
                    partition: 0,
                    offset: 2,
                    metadata: String::new(),
                }],
            };
            client.commit_offsets(request).await.unwrap();

            tracing::info!("act: delete the offsets topic and write a record into it");
            let deleted = client.delete_topic("__consumer_offsets").await.unwrap_err();
            let record =
                proto::Record { key: Some(b"x".to_vec()), value: Some(b"y".to_vec()), ..proto::Record::default() };
            let produced = client.produce("__consumer_offsets", 0, vec![record], Acks::All).await.unwrap_err();

            tracing::info!("check: both refused as internal, naming the topic");
            for error in [&deleted, &produced] {
                assert_eq!(error.code(), Some(ErrorCode::InternalTopic), "{error}");
                assert!(error.to_string().contains("__consumer_offsets"), "{error}");
            }
        })
        .await;
    broker.restart(5).await;
    let address = broker.address.clone();
    broker
        .run(async move {
            tracing::info!("check: after a restart the coordinator loads and the commit is there");
            let client = connect(&address).await;
            let offsets = client.fetch_offsets("durable", vec![]).await.unwrap();
            let got: Vec<(u32, u64)> = offsets.iter().map(|o| (o.partition, o.offset)).collect();
            assert_eq!(got, [(0, 2)]);
        })
        .await;
}

/// Before: a poll returned one partition's records even when several had
/// data (the HTTP gateway's group consumers inherited it).
#[tokio::test]
async fn one_poll_returns_records_of_every_partition_with_data() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            tracing::info!("set up: three partitions with data, one member owning them all");
            let client = connect(&address).await;
            client.create_topic("spread", proto::TopicConfig { partitions: 3, ..Default::default() }).await.unwrap();
            produce_numbered(&client, "spread", 3, 30).await;
            let mut consumer = GroupConsumer::join(client.clone(), config("spread-group", &["spread"])).await.unwrap();

            tracing::info!("act: poll until something arrives");
            let mut polled = Vec::new();
            for _ in 0..ROUNDS_MAX {
                polled = consumer.poll(POLL).await.unwrap();
                if !polled.is_empty() {
                    break;
                }
            }

            tracing::info!("check: that one poll holds all 30 records, from all three partitions");
            let partitions: BTreeSet<u32> = polled.iter().map(|c| c.partition).collect();
            assert_eq!(partitions, BTreeSet::from([0, 1, 2]));
            assert_eq!(polled.len(), 30);
            assert_partition_order(&polled);
        })
        .await;
}
