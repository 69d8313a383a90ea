//! The single-node broker end to end, over real gRPC: on loopback with
//! tokio, and between simulated nodes inside madsim.

mod common;

use std::time::Duration;

use common::{connect, TestBroker};
use weir::client::ClientError;
use weir::log::{BatchBuilder, Record};
use weir::proto::{self, Acks, ErrorCode, OffsetSpec};

const PRODUCERS: usize = 4;
const BATCHES_PER_PRODUCER: usize = 25;

fn topic_config(partitions: u32) -> proto::TopicConfig {
    proto::TopicConfig { partitions, ..proto::TopicConfig::default() }
}

fn record(value: String) -> proto::Record {
    proto::Record { key: None, value: Some(value.into_bytes()), ..proto::Record::default() }
}

fn value(record: &proto::Record) -> String {
    String::from_utf8(record.value.clone().unwrap_or_default()).unwrap()
}

/// Reads a partition from `offset` to its high watermark.
async fn read_all(client: &weir::client::Client, topic: &str, partition: u32, mut offset: u64) -> Vec<proto::Record> {
    let mut records = Vec::new();
    loop {
        let response = client.fetch(topic, partition, offset, 4096, Duration::ZERO).await.expect("fetch");
        records.extend(response.records);
        if response.next_offset >= response.high_watermark {
            return records;
        }
        offset = response.next_offset;
    }
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(error) => error.code().unwrap_or_else(|| panic!("no weir error code in {error}")),
        Ok(value) => panic!("expected an error, got {value:?}"),
    }
}

#[tokio::test]
async fn concurrent_producers_each_partition_in_order() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            tracing::info!("set up: a topic with 3 partitions");
            let client = connect(&address).await;
            client.create_topic("orders", topic_config(3)).await.unwrap();

            tracing::info!("act: producers write numbered batches to every partition at once");
            let mut tasks = Vec::new();
            for producer in 0..PRODUCERS {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    for n in 0..BATCHES_PER_PRODUCER {
                        let partition = (n % 3) as u32;
                        let records = (0..3).map(|i| record(format!("p{producer}-n{n}-r{i}"))).collect();
                        client.produce("orders", partition, records, Acks::All).await.unwrap();
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }

            tracing::info!("check: every record exactly once, each producer's records in order per partition");
            let mut total = 0;
            for partition in 0..3 {
                let records = read_all(&client, "orders", partition, 0).await;
                for (i, r) in records.iter().enumerate() {
                    assert_eq!(r.offset, i as u64, "offsets are dense");
                }
                total += records.len();
                for producer in 0..PRODUCERS {
                    let mine: Vec<String> =
                        records.iter().map(value).filter(|v| v.starts_with(&format!("p{producer}-"))).collect();
                    let expected: Vec<String> = (0..BATCHES_PER_PRODUCER)
                        .filter(|n| n % 3 == partition as usize)
                        .flat_map(|n| (0..3).map(move |i| format!("p{producer}-n{n}-r{i}")))
                        .collect();
                    assert_eq!(mine, expected, "producer {producer} on partition {partition}");
                }
            }
            assert_eq!(total, PRODUCERS * BATCHES_PER_PRODUCER * 3);
        })
        .await;
}

#[tokio::test]
async fn encoded_batches_round_trip_with_keys_headers_and_timestamps() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("events", topic_config(1)).await.unwrap();
            let mut builder = BatchBuilder::new();
            for i in 0..10i64 {
                builder.push(&Record {
                    timestamp_ms: 1_000 + i,
                    key: Some(format!("k{i}").into()),
                    value: Some(format!("v{i}").into()),
                    headers: vec![weir::log::RecordHeader { key: "trace".into(), value: Some("t".into()) }],
                    ..Record::default()
                });
            }
            let produced = client.produce_batch("events", 0, &builder.build().unwrap(), Acks::Leader).await.unwrap();
            assert_eq!((produced.base_offset, produced.record_count), (0, 10));

            // acks=leader answers once the leader has the batch on disk; it
            // is readable once committed: a long poll waits for that.
            let fetched = client.fetch("events", 0, 4, 1 << 20, Duration::from_secs(10)).await.unwrap();
            assert_eq!(fetched.records.len(), 6, "records before the requested offset are not returned");
            let first = &fetched.records[0];
            assert_eq!((first.offset, first.timestamp_ms), (4, 1_004));
            assert_eq!(first.key.as_deref(), Some(&b"k4"[..]));
            assert_eq!(first.headers[0].key, "trace");
            assert_eq!(fetched.next_offset, 10);

            tracing::info!("seek: beginning, end and by time");
            assert_eq!(client.list_offset("events", 0, OffsetSpec::Earliest, 0).await.unwrap(), 0);
            assert_eq!(client.list_offset("events", 0, OffsetSpec::Latest, 0).await.unwrap(), 10);
            assert_eq!(client.list_offset("events", 0, OffsetSpec::Timestamp, 1_007).await.unwrap(), 7);
            assert_eq!(client.list_offset("events", 0, OffsetSpec::Timestamp, 9_999).await.unwrap(), 10);
        })
        .await;
}

#[tokio::test]
async fn long_poll_answers_as_soon_as_data_arrives() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("idle", topic_config(1)).await.unwrap();

            tracing::info!("an idle long poll waits out its max_wait and answers empty");
            let started = tokio::time::Instant::now();
            let empty = client.fetch("idle", 0, 0, 1 << 20, Duration::from_millis(300)).await.unwrap();
            assert!(empty.records.is_empty());
            assert!(started.elapsed() >= Duration::from_millis(300), "answered before max_wait without data");

            tracing::info!("a long poll with a long max_wait answers when a message is produced");
            let waiting = tokio::spawn({
                let client = client.clone();
                async move { client.fetch("idle", 0, 0, 1 << 20, Duration::from_secs(15)).await.unwrap() }
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!waiting.is_finished(), "the poll is waiting");
            let started = tokio::time::Instant::now();
            client.produce("idle", 0, vec![record("wake".into())], Acks::All).await.unwrap();
            let woke = waiting.await.unwrap();
            assert_eq!(woke.records.iter().map(value).collect::<Vec<_>>(), ["wake"]);
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the poll answered with the data, not at its deadline"
            );
        })
        .await;
}

#[tokio::test]
async fn acknowledged_messages_survive_a_restart_with_power_loss() {
    let mut broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("durable", topic_config(2)).await.unwrap();
            for i in 0..20 {
                client.produce("durable", i % 2, vec![record(format!("m{i}"))], Acks::All).await.unwrap();
            }
        })
        .await;

    for seed in 0..3 {
        broker.restart(seed).await;
        let address = broker.address.clone();
        broker
            .run(async move {
                let client = connect(&address).await;
                let mut seen = Vec::new();
                for partition in 0..2 {
                    seen.extend(read_all(&client, "durable", partition, 0).await.iter().map(value));
                }
                seen.sort();
                let mut expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
                expected.sort();
                assert_eq!(seen, expected, "after restart {seed}");
                assert_eq!(client.list_topics().await.unwrap().len(), 1, "the topic survives too");
            })
            .await;
    }
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_loses_nothing() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("good", topic_config(2)).await.unwrap();
            client.produce("good", 0, vec![record("keep me".into())], Acks::All).await.unwrap();

            let table: Vec<(&str, ErrorCode, Result<(), ClientError>)> = vec![
                (
                    "unknown topic",
                    ErrorCode::UnknownTopic,
                    client.produce("nope", 0, vec![record("x".into())], Acks::All).await.map(drop),
                ),
                (
                    "unknown partition",
                    ErrorCode::UnknownPartition,
                    client.fetch("good", 7, 0, 100, Duration::ZERO).await.map(drop),
                ),
                (
                    "invalid name",
                    ErrorCode::InvalidTopicName,
                    client.create_topic("no/slashes", topic_config(1)).await.map(drop),
                ),
                (
                    "reserved name",
                    ErrorCode::InvalidTopicName,
                    client.create_topic("__mine", topic_config(1)).await.map(drop),
                ),
                (
                    "zero partitions",
                    ErrorCode::InvalidTopicConfig,
                    client.create_topic("empty", topic_config(0)).await.map(drop),
                ),
                (
                    "duplicate",
                    ErrorCode::TopicAlreadyExists,
                    client.create_topic("good", topic_config(2)).await.map(drop),
                ),
                (
                    "oversize message",
                    ErrorCode::MessageTooLarge,
                    client.produce("good", 0, vec![record("x".repeat(70_000))], Acks::All).await.map(drop),
                ),
                ("no records", ErrorCode::InvalidRequest, client.produce("good", 0, vec![], Acks::All).await.map(drop)),
                (
                    "future offset",
                    ErrorCode::OffsetOutOfRange,
                    client.fetch("good", 0, 99, 100, Duration::ZERO).await.map(drop),
                ),
                ("unknown topic to delete", ErrorCode::UnknownTopic, client.delete_topic("nope").await),
            ];
            for (case, expected, result) in table {
                assert_eq!(code(result), expected, "{case}");
            }

            tracing::info!("garbage bytes as a batch, and a batch with one flipped byte");
            let garbage = proto::ProduceRequest {
                topic: "good".into(),
                partition: 0,
                batch: vec![0xAB; 100].into(),
                ..Default::default()
            };
            let mut raw =
                weir::proto::producer_client::ProducerClient::connect(format!("http://{address}")).await.unwrap();
            let status = raw.produce(garbage).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(status.metadata().get("weir-error").unwrap(), "INVALID_BATCH");
            let mut builder = BatchBuilder::new();
            builder.push(&Record { value: Some("v".into()), ..Record::default() });
            let mut flipped = builder.build().unwrap().into_bytes().to_vec();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            let damaged = proto::ProduceRequest {
                topic: "good".into(),
                partition: 0,
                batch: flipped.into(),
                ..Default::default()
            };
            assert_eq!(raw.produce(damaged).await.unwrap_err().code(), tonic::Code::InvalidArgument);

            tracing::info!("a negative timestamp, as a record and inside a batch");
            let before_epoch = proto::Record { timestamp_ms: -5, ..record("early".into()) };
            let refused = client.produce("good", 0, vec![before_epoch], Acks::All).await;
            assert_eq!(code(refused), ErrorCode::InvalidRequest);
            let mut builder = BatchBuilder::new();
            builder.push(&Record { timestamp_ms: -5, value: Some("early".into()), ..Record::default() });
            let refused = client.produce_batch("good", 0, &builder.build().unwrap(), Acks::All).await;
            assert_eq!(code(refused), ErrorCode::InvalidBatch);

            // The simulator's transport has no decode limit to exceed.
            #[cfg(not(madsim))]
            {
                tracing::info!("a request over the gRPC decode limit: MESSAGE_TOO_LARGE, not a bare OUT_OF_RANGE");
                let huge = proto::ProduceRequest {
                    topic: "good".into(),
                    partition: 0,
                    batch: vec![0; 18 << 20].into(),
                    ..Default::default()
                };
                let status = raw.produce(huge).await.unwrap_err();
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
                assert_eq!(status.metadata().get("weir-error").unwrap(), "MESSAGE_TOO_LARGE");
                assert!(status.message().contains("the limit is"), "{}", status.message());
            }

            tracing::info!("nothing was lost and the broker keeps serving");
            client.produce("good", 0, vec![record("still here".into())], Acks::All).await.unwrap();
            let values: Vec<String> = read_all(&client, "good", 0, 0).await.iter().map(value).collect();
            assert_eq!(values, ["keep me", "still here"]);
        })
        .await;
}

#[tokio::test]
async fn deleted_topics_are_gone_and_can_be_recreated_empty() {
    let mut broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("temp", topic_config(1)).await.unwrap();
            client.produce("temp", 0, vec![record("old".into())], Acks::All).await.unwrap();
            let commit = proto::CommitOffsetsRequest {
                group: "readers".into(),
                offsets: vec![proto::PartitionOffset {
                    topic: "temp".into(),
                    partition: 0,
                    offset: 1,
                    ..Default::default()
                }],
                ..Default::default()
            };
            client.commit_offsets(commit).await.unwrap();
            client.delete_topic("temp").await.unwrap();
            assert_eq!(code(client.describe_topic("temp").await), ErrorCode::UnknownTopic);
            client.create_topic("temp", topic_config(1)).await.unwrap();
            assert!(read_all(&client, "temp", 0, 0).await.is_empty(), "a recreated topic starts empty");
            assert!(client.fetch_offsets("readers", vec![]).await.unwrap().is_empty(), "with no old commits");
        })
        .await;
    broker.restart(7).await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            assert!(read_all(&client, "temp", 0, 0).await.is_empty(), "and stays empty after a restart");
            assert!(client.fetch_offsets("readers", vec![]).await.unwrap().is_empty(), "the commits stay forgotten");
        })
        .await;
}

/// grpcurl and friends list weir's services by reflection (real network only:
/// the simulator's transport carries no reflection service).
#[cfg(not(madsim))]
#[tokio::test]
async fn services_are_listed_by_reflection() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let broker = TestBroker::start().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", broker.address)).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["weir.v1.Admin", "weir.v1.Producer", "weir.v1.Consumer"] {
        assert!(names.iter().any(|n| n == service), "{service} missing from {names:?}");
    }

    // Before: only v1 was served; Python's grpcio-reflection speaks v1alpha.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", broker.address)).unwrap().connect().await.unwrap();
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut alpha = AlphaClient::new(channel);
    let mut responses = alpha.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().expect("one answer");
    let Some(AlphaResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected v1alpha reflection answer: {response:?}");
    };
    assert!(list.service.iter().any(|s| s.name == "weir.v1.Producer"), "{list:?}");
}

/// Receives pushes until `count` records arrived; fails if more arrive.
async fn receive(subscription: &mut weir::client::Subscription, count: usize) -> Vec<proto::Record> {
    let mut records = Vec::new();
    while records.len() < count {
        let push = subscription.next().await.unwrap().expect("the stream stays open");
        records.extend(push.records);
    }
    assert_eq!(records.len(), count, "the broker sent past the credit");
    records
}

/// Asserts that nothing is pushed for a while.
async fn assert_silent(subscription: &mut weir::client::Subscription) {
    let quiet = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(quiet.is_err(), "a push arrived without credit: {quiet:?}");
}

#[tokio::test]
async fn push_never_exceeds_the_granted_credit() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("pushed", topic_config(1)).await.unwrap();
            let records: Vec<proto::Record> = (0..50).map(|i| record(format!("m{i:02}"))).collect();
            client.produce("pushed", 0, records, Acks::All).await.unwrap();

            tracing::info!("a subscriber that granted 10 messages gets 10, then nothing");
            let mut slow = client.subscribe("pushed", 0, 0, proto::Credit { messages: 10, bytes: 0 }).await.unwrap();
            let first = receive(&mut slow, 10).await;
            assert_eq!(first.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
            assert_silent(&mut slow).await;

            tracing::info!("a stalled subscriber does not hold anyone else back");
            let mut fast = client.subscribe("pushed", 0, 0, proto::Credit { messages: 1_000, bytes: 0 }).await.unwrap();
            assert_eq!(receive(&mut fast, 50).await.len(), 50);
            let fetched = client.fetch("pushed", 0, 0, 1 << 20, Duration::ZERO).await.unwrap();
            assert_eq!(fetched.records.len(), 50);

            tracing::info!("more credit, more records, in order, including ones produced later");
            slow.grant(15, 0).await.unwrap();
            let next = receive(&mut slow, 15).await;
            assert_eq!(next[0].offset, 10);
            assert_silent(&mut slow).await;
            slow.grant(100, 0).await.unwrap();
            assert_eq!(receive(&mut slow, 25).await.last().unwrap().offset, 49);
            client.produce("pushed", 0, vec![record("late".into())], Acks::All).await.unwrap();
            let late = receive(&mut slow, 1).await;
            assert_eq!((late[0].offset, value(&late[0]).as_str()), (50, "late"));
            assert_eq!(receive(&mut fast, 1).await[0].offset, 50, "every subscriber gets the new record");
        })
        .await;
}

#[tokio::test]
async fn push_honours_byte_credit() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("sized", topic_config(1)).await.unwrap();
            let records: Vec<proto::Record> = (0..10).map(|i| record(format!("{i:0>100}"))).collect();
            client.produce("sized", 0, records, Acks::All).await.unwrap();
            let credit = proto::Credit { messages: 100, bytes: 350 };
            let mut subscription = client.subscribe("sized", 0, 0, credit).await.unwrap();
            assert_eq!(receive(&mut subscription, 3).await.len(), 3, "350 bytes hold three 100-byte records");
            assert_silent(&mut subscription).await;
            subscription.grant(0, 50).await.unwrap();
            assert_eq!(
                receive(&mut subscription, 1).await[0].offset,
                3,
                "the rest of the credit plus 50 bytes fit one more"
            );
        })
        .await;
}

/// Before: a record larger than the byte credit left never arrived and
/// nothing was said; the subscription stalled for good.
#[tokio::test]
async fn push_delivers_a_record_larger_than_the_byte_credit() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("large", topic_config(1)).await.unwrap();
            let records = vec![record("s".repeat(10)), record("L".repeat(5_000)), record("t".repeat(10))];
            client.produce("large", 0, records, Acks::All).await.unwrap();

            tracing::info!("credit for 100 bytes: the small record, then nothing until the next grant");
            let credit = proto::Credit { messages: 10, bytes: 100 };
            let mut subscription = client.subscribe("large", 0, 0, credit).await.unwrap();
            assert_eq!(receive(&mut subscription, 1).await[0].offset, 0);
            assert_silent(&mut subscription).await;

            tracing::info!("any grant lets the 5,000-byte record through, and only it");
            subscription.grant(0, 1).await.unwrap();
            let large = receive(&mut subscription, 1).await;
            assert_eq!((large[0].offset, large[0].value.as_ref().map(Vec::len)), (1, Some(5_000)));
            assert_silent(&mut subscription).await;
            subscription.grant(0, 10).await.unwrap();
            assert_eq!(receive(&mut subscription, 1).await[0].offset, 2);
        })
        .await;
}

#[tokio::test]
async fn subscriptions_report_bad_starts_as_statuses() {
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("subs", topic_config(1)).await.unwrap();
            for (topic, offset, expected) in
                [("nope", 0, ErrorCode::UnknownTopic), ("subs", 5, ErrorCode::OffsetOutOfRange)]
            {
                let mut subscription =
                    client.subscribe(topic, 0, offset, proto::Credit { messages: 1, bytes: 0 }).await.unwrap();
                let error = subscription.next().await.expect_err("the stream ends with a status");
                assert_eq!(error.code(), Some(expected), "{topic}@{offset}");
            }
        })
        .await;
}

/// Counts the record batches stored in a partition.
async fn stored_batches(address: &str, topic: &str, partition: u32) -> usize {
    let mut raw = weir::proto::consumer_client::ConsumerClient::connect(format!("http://{address}")).await.unwrap();
    let mut batches = 0;
    let mut offset = 0;
    loop {
        let request = proto::FetchRequest {
            topic: topic.into(),
            partition,
            offset,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            encoded: true,
        };
        let response = raw.fetch(request).await.unwrap().into_inner();
        batches += response.batches.len();
        if response.next_offset >= response.high_watermark {
            return batches;
        }
        offset = response.next_offset;
    }
}

#[tokio::test]
async fn the_producer_batches_by_size_and_linger_and_keeps_key_order() {
    use weir::client::{Producer, ProducerConfig};

    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("batched", topic_config(2)).await.unwrap();
            client.create_topic("single", topic_config(1)).await.unwrap();

            tracing::info!("batched: 300 records queued back to back, 10 keys");
            let config =
                ProducerConfig { linger: Duration::from_millis(20), batch_bytes_max: 4 << 10, ..Default::default() };
            let producer = Producer::new(client.clone(), config);
            let mut deliveries = Vec::new();
            for i in 0..300u32 {
                let key = format!("key-{}", i % 10);
                let record = weir::client::producer::record(Some(key.as_bytes()), format!("{i}").as_bytes(), 1_000);
                deliveries.push((key, producer.send("batched", None, record).await.unwrap()));
            }
            let mut last_offset_per_key: std::collections::BTreeMap<String, (u32, u64)> = Default::default();
            for (key, delivery) in deliveries {
                let delivered = delivery.wait().await.unwrap();
                if let Some((partition, offset)) =
                    last_offset_per_key.insert(key.clone(), (delivered.partition, delivered.offset))
                {
                    assert_eq!(partition, delivered.partition, "a key stays on one partition");
                    assert!(delivered.offset > offset, "{key}: sent later, stored later");
                }
            }
            let batches = stored_batches(&address, "batched", 0).await + stored_batches(&address, "batched", 1).await;
            assert!(batches < 300 / 4, "300 records went out in {batches} batches");

            tracing::info!("one by one: every record its own batch");
            let config = ProducerConfig { batch_bytes_max: 0, ..Default::default() };
            let producer = Producer::new(client.clone(), config);
            for i in 0..20u32 {
                let record = weir::client::producer::record(None, format!("{i}").as_bytes(), 1_000);
                producer.send("single", Some(0), record).await.unwrap().wait().await.unwrap();
            }
            assert_eq!(stored_batches(&address, "single", 0).await, 20);

            tracing::info!("a non-retriable error fails the delivery with its code");
            let record = weir::client::producer::record(None, b"x", 1_000);
            let failed = producer.send("single", Some(9), record).await.unwrap().wait().await.unwrap_err();
            assert_eq!(failed.code(), Some(ErrorCode::UnknownPartition));
        })
        .await;
}

/// `GET path` over plain TCP; returns the whole response.
async fn http_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: weir\r\n\r\n").as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8(response).unwrap()
}

#[tokio::test]
async fn prometheus_metrics_count_traffic_and_lag() {
    let broker = TestBroker::start().await;
    let (address, metrics) = (broker.address.clone(), broker.metrics_address.clone());
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("metered", topic_config(1)).await.unwrap();
            let records = (0..3).map(|i| record(format!("r{i}"))).collect();
            client.produce("metered", 0, records, Acks::All).await.unwrap();
            client.fetch("metered", 0, 1, 1 << 20, Duration::ZERO).await.unwrap();
            let commit = proto::CommitOffsetsRequest {
                group: "readers".into(),
                offsets: vec![proto::PartitionOffset {
                    topic: "metered".into(),
                    partition: 0,
                    offset: 1,
                    ..Default::default()
                }],
                ..Default::default()
            };
            client.commit_offsets(commit).await.unwrap();

            let page = http_get(&metrics, "/metrics").await;
            assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
            for line in [
                "weir_produce_requests_total 1",
                "weir_produce_records_total 3",
                "weir_fetch_records_total 2",
                "weir_produce_latency_seconds_count 1",
                "weir_partition_high_watermark{topic=\"metered\",partition=\"0\"} 3",
                "weir_group_lag{group=\"readers\",topic=\"metered\",partition=\"0\"} 2",
                "weir_partition_repairing{topic=\"metered\",partition=\"0\"} 0",
                "weir_partition_repairs_total{topic=\"metered\",partition=\"0\"} 0",
            ] {
                assert!(page.lines().any(|l| l == line), "missing {line:?} in:\n{page}");
            }
            assert!(http_get(&metrics, "/other").await.starts_with("HTTP/1.1 404"));
        })
        .await;
}

/// A batch of `n` records from producer `id`/`epoch`, first sequence `seq`.
fn sequenced(id: i64, epoch: i16, seq: i32, n: usize) -> weir::log::Batch {
    let mut builder = BatchBuilder::new().producer(id, epoch, seq);
    for i in 0..n {
        builder.push(&Record { timestamp_ms: 1, value: Some(format!("{seq}+{i}").into()), ..Record::default() });
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn an_idempotent_producer_writes_each_batch_once_across_restarts() {
    let mut broker = TestBroker::start().await;
    let address = broker.address.clone();
    let id = broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("once", topic_config(1)).await.unwrap();
            let identity = client.init_producer().await.unwrap();
            assert!(identity.producer_id >= 0);
            assert_ne!(client.init_producer().await.unwrap().producer_id, identity.producer_id, "ids are fresh");
            let id = identity.producer_id;

            tracing::info!("a retried batch is answered with where the first copy landed");
            let first = client.produce_batch("once", 0, &sequenced(id, 0, 0, 3), Acks::All).await.unwrap();
            let again = client.produce_batch("once", 0, &sequenced(id, 0, 0, 3), Acks::All).await.unwrap();
            assert_eq!((first.base_offset, again.base_offset), (0, 0));
            let next = client.produce_batch("once", 0, &sequenced(id, 0, 3, 2), Acks::All).await.unwrap();
            assert_eq!(next.base_offset, 3);

            tracing::info!("a gap in the sequence is refused and writes nothing");
            let gap = client.produce_batch("once", 0, &sequenced(id, 0, 9, 1), Acks::All).await;
            assert_eq!(code(gap), ErrorCode::OutOfOrderSequence);
            assert_eq!(client.list_offset("once", 0, OffsetSpec::Latest, 0).await.unwrap(), 5);
            id
        })
        .await;

    tracing::info!("the producer state survives a crash and restart");
    broker.restart(3).await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let client = connect(&address).await;
            let retried = client.produce_batch("once", 0, &sequenced(id, 0, 3, 2), Acks::All).await.unwrap();
            assert_eq!(retried.base_offset, 3, "a retry after the restart is still a duplicate");

            tracing::info!("a newer epoch starts over at 0 and fences the older one");
            let newer = client.produce_batch("once", 0, &sequenced(id, 1, 0, 1), Acks::All).await.unwrap();
            assert_eq!(newer.base_offset, 5);
            let fenced = client.produce_batch("once", 0, &sequenced(id, 0, 5, 1), Acks::All).await;
            assert_eq!(code(fenced), ErrorCode::ProducerFenced);

            let records = read_all(&client, "once", 0, 0).await;
            let values: Vec<String> =
                records.iter().map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap()).collect();
            assert_eq!(values, ["0+0", "0+1", "0+2", "3+0", "3+1", "0+0"], "each batch once");
        })
        .await;
}

/// `weir bench` against a live broker: each mode moves the messages asked
/// for and measures latencies from real acknowledgements and receipts.
#[tokio::test]
async fn the_benchmarks_move_what_they_are_asked_and_measure_it() {
    use clap::Parser;
    use weir::cli::bench::{measure, BenchCommand};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        bench: BenchCommand,
    }
    let broker = TestBroker::start().await;
    let address = broker.address.clone();
    broker
        .run(async move {
            let command = |line: String| Cli::parse_from(line.split(' ')).bench;
            let common = format!("--broker {address} --topic benched --partitions 3 --size 100 --quiet");
            let produced = measure(command(format!("weir produce {common} --messages 3000 --producers 2")))
                .await
                .expect("produce bench");
            assert_eq!((produced.mode, produced.messages, produced.errors), ("produce", 3000, 0));
            assert_eq!(produced.bytes, 300_000);
            assert!(produced.latency_ms.max > 0.0 && produced.latency_ms.p50 <= produced.latency_ms.max);

            let consumed = measure(command(format!("weir consume {common} --messages 2500 --consumers 2")))
                .await
                .expect("consume bench");
            assert_eq!((consumed.mode, consumed.errors), ("consume", 0));
            assert!(consumed.messages >= 2500, "read {} of the 3000 held", consumed.messages);

            let e2e =
                measure(command(format!("weir e2e {common} --messages 1000 --rate 2000"))).await.expect("e2e bench");
            assert_eq!((e2e.mode, e2e.messages, e2e.errors), ("e2e", 1000, 0), "every message sent was received");
            assert!(e2e.latency_ms.max > 0.0);

            let client = connect(&address).await;
            let held: u64 = (0..3)
                .map(|p| client.list_offset("benched", p, OffsetSpec::Latest, 0))
                .collect::<futures::future::JoinAll<_>>()
                .await
                .into_iter()
                .map(|end| end.expect("end offset"))
                .sum();
            assert_eq!(held, 4000, "3000 from produce, 1000 from e2e; consume wrote nothing");

            let refused = measure(command(format!("weir produce {common} --in-flight 0"))).await;
            assert_eq!(refused.unwrap_err(), "--in-flight must be positive");
        })
        .await;
}

/// This broker's directory of `topic`'s partition 0.
fn partition_dir(disk: &weir::sys::disk::SimDisk, topic: &str) -> std::path::PathBuf {
    use weir::sys::disk::Disk;
    let topics = std::path::Path::new("/broker/topics");
    let name = disk
        .list_subdirs(topics)
        .unwrap()
        .into_iter()
        .find(|name| name.rsplit_once('-').is_some_and(|(prefix, _)| prefix == topic))
        .expect("the broker holds the topic");
    topics.join(name).join("0")
}

/// Issue 20, item 9: a single-replica partition whose last acknowledged
/// record is cut from the end of its active segment after a crash. The
/// record had been fsynced and covered by the durable-end mark, so the
/// restart reports it lost, with its offsets, in describe and metrics,
/// instead of cutting it silently as a torn write.
#[tokio::test]
async fn a_lost_acknowledged_record_is_reported_not_taken_for_a_torn_write() {
    const TOPIC: &str = "ledger";
    let mut broker = TestBroker::start().await;
    let address = broker.address.clone();
    tracing::info!("five records acknowledged one by one on a single replica");
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic(TOPIC, topic_config(1)).await.unwrap();
            for i in 0..5 {
                client.produce(TOPIC, 0, vec![record(format!("entry-{i}"))], Acks::All).await.unwrap();
            }
        })
        .await;

    // Every flush raises the durable-end mark before the records count as
    // written, so it covers them once they are acknowledged.
    let dir = partition_dir(&broker.disk, TOPIC);
    let marked = weir::log::durable_mark::DurableMark::open(&broker.disk, &dir).unwrap().end();
    assert_eq!(marked, 5, "the mark does not cover the acknowledged records");

    tracing::info!("kill -9, then 10 bytes cut from the end of the active segment");
    broker
        .kill_and_restart(3, |disk| {
            use weir::sys::disk::Disk;
            let mut segments: Vec<String> =
                disk.list_dir(&dir).unwrap().into_iter().filter(|n| n.ends_with(".log")).collect();
            segments.sort();
            let active = dir.join(segments.last().expect("a segment"));
            let file = disk.open(&active, false).unwrap();
            file.set_len(file.len().unwrap() - 10).unwrap();
            file.sync().unwrap();
        })
        .await;

    let (address, metrics) = (broker.address.clone(), broker.metrics_address.clone());
    broker
        .run(async move {
            let client = connect(&address).await;
            let described = client.describe_topic(TOPIC).await.unwrap();
            let partition = &described.partitions[0];
            assert_eq!(partition.log_end_offset, 4, "the damaged last record is cut");
            assert_eq!((partition.losses, partition.lost_offsets), (1, 1), "the loss is counted: {partition:?}");
            assert_eq!(partition.repairs, 0, "a lone replica has no peers to repair it from");
            let values: Vec<String> = read_all(&client, TOPIC, 0, 0).await.iter().map(value).collect();
            assert_eq!(values, (0..4).map(|i| format!("entry-{i}")).collect::<Vec<_>>());

            let page = http_get(&metrics, "/metrics").await;
            for line in [
                "weir_partition_durable_losses_total{topic=\"ledger\",partition=\"0\"} 1",
                "weir_partition_lost_offsets_total{topic=\"ledger\",partition=\"0\"} 1",
            ] {
                assert!(page.lines().any(|l| l == line), "missing {line:?} in:\n{page}");
            }
            // The partition goes on with what is left (README: what a
            // single-replica partition cannot recover).
            client.produce(TOPIC, 0, vec![record("after".into())], Acks::All).await.unwrap();
        })
        .await;
}
