//! The HTTP/JSON gateway (src/gateway) end to end, over real sockets: on
//! loopback with tokio, and between simulated nodes inside madsim.

mod common;

use std::time::Duration;

use common::{connect, TestBroker};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir::proto::{self, Acks};

/// One HTTP connection that reads responses as the gateway writes them
/// (`content-length` framed).
struct Http {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Http {
    async fn open(address: &str) -> Self {
        for _ in 0..100 {
            if let Ok(stream) = TcpStream::connect(address).await {
                return Self { stream, buffer: Vec::new() };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway at {address} does not accept connections");
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write the request");
        // madsim's streams send on flush.
        self.stream.flush().await.expect("flush the request");
    }

    async fn request(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!("{method} {path} HTTP/1.1\r\nhost: weir\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        self.send_raw(request.as_bytes()).await;
        self.response().await.expect("a response")
    }

    /// The next response's status and JSON body; `None` once the server
    /// has closed the connection.
    async fn response(&mut self) -> Option<(u16, Value)> {
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buffer[..end].to_vec()).unwrap();
                let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("content-length")
                    .parse()
                    .unwrap();
                while self.buffer.len() < end + 4 + length {
                    self.fill().await?;
                }
                let body: Value = serde_json::from_slice(&self.buffer[end + 4..end + 4 + length]).expect("JSON");
                self.buffer.drain(..end + 4 + length);
                return Some((status, body));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await.ok()?;
        (n > 0).then(|| self.buffer.extend_from_slice(&chunk[..n]))
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

#[tokio::test]
async fn records_sent_over_http_are_read_back_in_order_with_keys_and_headers() {
    let broker = TestBroker::start().await;
    let http = broker.http_address.clone();
    broker
        .run(async move {
            let mut conn = Http::open(&http).await;
            let (status, created) =
                conn.request("POST", "/v1/topics", Some(json!({"name": "orders", "partitions": 2}))).await;
            assert_eq!(status, 201, "{created}");
            assert_eq!(created["partitions"].as_array().unwrap().len(), 2);

            // Several sends on one keep-alive connection, in order.
            let mut offsets = Vec::new();
            for n in 0..20 {
                let record = json!({"value": format!("v{n}"), "key": format!("k{n}"), "partition": 1,
                                    "headers": {"n": n.to_string()}});
                let (status, sent) =
                    conn.request("POST", "/v1/topics/orders/records", Some(json!({"records": [record]}))).await;
                assert_eq!(status, 200, "{sent}");
                assert_eq!(sent["results"][0]["partition"], 1);
                offsets.push(sent["results"][0]["offset"].as_u64().unwrap());
            }
            assert_eq!(offsets, (0..20).collect::<Vec<u64>>());

            // Read back in two pages.
            let (status, page) =
                conn.request("GET", "/v1/topics/orders/partitions/1/records?max_bytes=200", None).await;
            assert_eq!(status, 200, "{page}");
            let first = page["records"].as_array().unwrap().clone();
            assert!(!first.is_empty() && first.len() < 20, "a 200-byte page holds some, not all: {}", first.len());
            let next = page["next_offset"].as_u64().unwrap();
            let path = format!("/v1/topics/orders/partitions/1/records?offset={next}");
            let (_, rest) = conn.request("GET", &path, None).await;
            assert_eq!(rest["high_watermark"], 20);
            let all: Vec<Value> = first.into_iter().chain(rest["records"].as_array().unwrap().clone()).collect();
            assert_eq!(all.len(), 20);
            for (n, record) in all.iter().enumerate() {
                assert_eq!(record["offset"], n as u64);
                assert_eq!(record["value"], format!("v{n}"));
                assert_eq!(record["key"], format!("k{n}"));
                assert_eq!(record["headers"]["n"], n.to_string());
            }

            // acks=none learns no offset; the record still lands.
            let body = json!({"records": [{"value": "quiet", "partition": 0}], "acks": "none"});
            let (status, sent) = conn.request("POST", "/v1/topics/orders/records", Some(body)).await;
            assert_eq!(status, 200, "{sent}");
            assert!(sent["results"][0]["offset"].is_null(), "{sent}");
            let mut landed = false;
            for _ in 0..50 {
                let (_, read) = conn.request("GET", "/v1/topics/orders/partitions/0/records", None).await;
                if read["records"].as_array().unwrap().iter().any(|r| r["value"] == "quiet") {
                    landed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(landed, "the acks=none record never became readable");
        })
        .await;
}

#[tokio::test]
async fn bad_requests_get_a_status_and_a_named_error_and_change_nothing() {
    let broker = TestBroker::start().await;
    let (http, address) = (broker.http_address.clone(), broker.address.clone());
    broker
        .run(async move {
            let mut conn = Http::open(&http).await;
            let (status, _) = conn.request("POST", "/v1/topics", Some(json!({"name": "t", "partitions": 1}))).await;
            assert_eq!(status, 201);

            let cases = [
                ("GET", "/v1/topics/nope/partitions/0/records", None, 404, "UNKNOWN_TOPIC"),
                ("GET", "/v1/topics/t/partitions/7/records", None, 404, "UNKNOWN_PARTITION"),
                ("GET", "/v1/topics/t/partitions/x/records", None, 400, "INVALID_REQUEST"),
                ("GET", "/v1/topics/t/partitions/0/records?offset=99", None, 416, "OFFSET_OUT_OF_RANGE"),
                ("POST", "/v1/topics", Some(json!({"name": "t", "partitions": 1})), 409, "TOPIC_ALREADY_EXISTS"),
                ("POST", "/v1/topics", Some(json!({"name": "bad name!", "partitions": 1})), 400, "INVALID_TOPIC_NAME"),
                ("POST", "/v1/topics/t/records", Some(json!({"records": [{"valu": "typo"}]})), 400, "INVALID_REQUEST"),
                ("POST", "/v1/topics/t/records", Some(json!({"records": []})), 400, "INVALID_REQUEST"),
                (
                    "POST",
                    "/v1/topics/t/records",
                    Some(json!({"records": [{"value": "v"}], "acks": "most"})),
                    400,
                    "INVALID_REQUEST",
                ),
                ("DELETE", "/v1/topics/t", None, 405, "METHOD_NOT_ALLOWED"),
                ("GET", "/v2/anything", None, 404, "NOT_FOUND"),
            ];
            for (method, path, body, want_status, want_code) in cases {
                let (status, answer) = conn.request(method, path, body).await;
                assert_eq!((status, code(&answer)), (want_status, want_code), "{method} {path}: {answer}");
                assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
            }
            // A record over the broker's limit (64 KiB in tests) is refused whole.
            let big = "x".repeat(100 << 10);
            let body = json!({"records": [{"value": big, "partition": 0}]});
            let (status, answer) = conn.request("POST", "/v1/topics/t/records", Some(body)).await;
            assert_eq!(status, 400, "{answer}");
            assert_eq!(code(&answer["results"][0]), "MESSAGE_TOO_LARGE");

            // None of it wrote anything.
            let client = connect(&address).await;
            let fetched = client.fetch("t", 0, 0, 1 << 20, Duration::ZERO).await.unwrap();
            assert_eq!(fetched.high_watermark, 0, "a refused request wrote {:?}", fetched.records);

            // Bytes that are not HTTP: a 400, then the connection closes.
            let mut raw = Http::open(&http).await;
            raw.send_raw(b"HELLO THERE\r\n\r\n").await;
            let (status, answer) = raw.response().await.expect("an answer to garbage");
            assert_eq!(status, 400, "{answer}");
            assert!(raw.response().await.is_none(), "the connection stays open after garbage");
            // A chunked upload is refused with 411, not misread.
            let mut chunked = Http::open(&http).await;
            chunked
                .send_raw(b"POST /v1/topics/t/records HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
                .await;
            assert_eq!(chunked.response().await.expect("an answer").0, 411);
        })
        .await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_a_long_poll_waits_for_data() {
    let broker = TestBroker::start().await;
    let (http, address) = (broker.http_address.clone(), broker.address.clone());
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("t", proto::TopicConfig { partitions: 1, ..Default::default() }).await.unwrap();
            // A value that is not UTF-8, written over gRPC, comes back as hex.
            let raw = proto::Record { value: Some(vec![0xff, 0x00, 0x41]), ..Default::default() };
            client.produce("t", 0, vec![raw], Acks::All).await.unwrap();

            let mut conn = Http::open(&http).await;
            let mut pipelined = Vec::new();
            for n in 0..3 {
                let body = json!({"records": [{"value": format!("p{n}"), "partition": 0}]}).to_string();
                let request =
                    format!("POST /v1/topics/t/records HTTP/1.1\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                pipelined.extend_from_slice(request.as_bytes());
            }
            conn.send_raw(&pipelined).await;
            for n in 0..3u64 {
                let (status, sent) = conn.response().await.expect("a response");
                assert_eq!(status, 200, "{sent}");
                assert_eq!(sent["results"][0]["offset"], n + 1, "responses out of order");
            }
            let (_, read) = conn.request("GET", "/v1/topics/t/partitions/0/records", None).await;
            assert_eq!(read["records"][0]["value_hex"], "ff0041");
            assert!(read["records"][0].get("value").is_none());

            // A long poll at the end of the log returns once a record lands.
            let writer = client.clone();
            let late = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let record = proto::Record { value: Some(b"late".to_vec()), ..Default::default() };
                writer.produce("t", 0, vec![record], Acks::All).await.unwrap();
            });
            let started = tokio::time::Instant::now();
            let (status, polled) =
                conn.request("GET", "/v1/topics/t/partitions/0/records?offset=4&wait_ms=10000", None).await;
            assert_eq!(status, 200, "{polled}");
            assert_eq!(polled["records"][0]["value"], "late", "{polled}");
            assert!(started.elapsed() < Duration::from_secs(9), "the poll waited out its whole wait");
            late.await.unwrap();
        })
        .await;
}

/// Polls a gateway consumer until `enough` says stop (bounded); returns
/// every record as (partition, offset, value) and the last answer.
async fn poll_until(
    conn: &mut Http,
    path: &str,
    mut enough: impl FnMut(&[(u64, u64, String)], &Value) -> bool,
) -> (Vec<(u64, u64, String)>, Value) {
    let mut seen = Vec::new();
    for _ in 0..100 {
        let (status, answer) = conn.request("GET", &format!("{path}/records?wait_ms=100"), None).await;
        assert_eq!(status, 200, "{answer}");
        for record in answer["records"].as_array().unwrap() {
            assert_eq!(record["topic"], "events", "{record}");
            let value = record["value"].as_str().unwrap().to_owned();
            seen.push((record["partition"].as_u64().unwrap(), record["offset"].as_u64().unwrap(), value));
        }
        if enough(&seen, &answer) {
            return (seen, answer);
        }
    }
    panic!("{path} did not get there in 100 polls; it saw {seen:?}");
}

fn assigned(answer: &Value) -> Vec<u64> {
    answer["assignment"].as_array().unwrap().iter().map(|tp| tp["partition"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn group_consumers_over_http_share_a_topic_commit_rebalance_and_redeliver_what_was_not_committed() {
    let broker = TestBroker::start().await;
    let (http, address) = (broker.http_address.clone(), broker.address.clone());
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("events", proto::TopicConfig { partitions: 4, ..Default::default() }).await.unwrap();
            for partition in 0..4u32 {
                let records = (0..5)
                    .map(|n| proto::Record {
                        value: Some(format!("p{partition}-{n}").into_bytes()),
                        ..Default::default()
                    })
                    .collect();
                client.produce("events", partition, records, Acks::All).await.unwrap();
            }
            let create = json!({"topics": ["events"], "session_timeout_ms": 2000});

            let mut a = Http::open(&http).await;
            let (status, created) = a.request("POST", "/v1/groups/web/consumers", Some(create.clone())).await;
            assert_eq!(status, 201, "{created}");
            assert_eq!(assigned(&created), vec![0, 1, 2, 3]);
            let a_path = format!("/v1/groups/web/consumers/{}", created["consumer"].as_str().unwrap());

            // A second member joins while the first one's client is not
            // polling: the gateway rejoins the first for it, so the join
            // does not wait out a session.
            let mut b = Http::open(&http).await;
            let (status, created) = b.request("POST", "/v1/groups/web/consumers", Some(create.clone())).await;
            assert_eq!(status, 201, "{created}");
            let b_path = format!("/v1/groups/web/consumers/{}", created["consumer"].as_str().unwrap());
            assert_eq!(assigned(&created).len(), 2, "{created}");

            // Each message to one member of the group: together they read all
            // 20, none twice, each partition in order, from disjoint partitions.
            let (from_a, a_last) = poll_until(&mut a, &a_path, |seen, _| seen.len() >= 10).await;
            let (from_b, b_last) = poll_until(&mut b, &b_path, |seen, _| seen.len() >= 10).await;
            let (a_parts, b_parts) = (assigned(&a_last), assigned(&b_last));
            assert_eq!(a_parts.len(), 2, "{a_last}");
            assert!(a_parts.iter().all(|p| !b_parts.contains(p)), "both own a partition: {a_parts:?} {b_parts:?}");
            let mut all: Vec<(u64, u64, String)> = from_a.iter().chain(&from_b).cloned().collect();
            for (partition, offset, value) in &all {
                assert_eq!(value, &format!("p{partition}-{offset}"));
            }
            for partition in 0..4u64 {
                let offsets: Vec<u64> = all.iter().filter(|r| r.0 == partition).map(|r| r.1).collect();
                assert_eq!(offsets, vec![0, 1, 2, 3, 4], "partition {partition}");
            }
            all.sort();
            all.dedup();
            assert_eq!(all.len(), 20);

            // Commits make the group's progress durable and visible.
            for (conn, path) in [(&mut a, &a_path), (&mut b, &b_path)] {
                let (status, committed) = conn.request("POST", &format!("{path}/commit"), None).await;
                assert_eq!(status, 200, "{committed}");
                assert!(committed["offsets"].as_array().unwrap().iter().all(|o| o["offset"] == 5), "{committed}");
            }
            let (status, group) = a.request("GET", "/v1/groups/web", None).await;
            assert_eq!(status, 200, "{group}");
            assert_eq!(group["state"], "stable");
            assert_eq!(group["members"].as_array().unwrap().len(), 2);
            let partitions = group["partitions"].as_array().unwrap();
            assert_eq!(partitions.len(), 4, "{group}");
            assert!(partitions.iter().all(|p| p["committed_offset"] == 5 && p["lag"] == 0), "{group}");

            // Another group gets every message.
            let mut audit = Http::open(&http).await;
            let (status, created) = audit.request("POST", "/v1/groups/audit/consumers", Some(create.clone())).await;
            assert_eq!(status, 201, "{created}");
            let audit_path = format!("/v1/groups/audit/consumers/{}", created["consumer"].as_str().unwrap());
            let (audited, _) = poll_until(&mut audit, &audit_path, |seen, _| seen.len() >= 20).await;
            assert_eq!(audited.len(), 20);

            // B leaves: A takes all four partitions and, everything being
            // committed, reads nothing again.
            let (status, _) = b.request("DELETE", &b_path, None).await;
            assert_eq!(status, 200);
            let (again, a_last) = poll_until(&mut a, &a_path, |_, answer| assigned(answer).len() == 4).await;
            assert!(again.is_empty(), "committed records came again: {again:?}");
            assert_eq!(a_last["assignment"].as_array().unwrap().iter().filter(|tp| tp["position"] == 5).count(), 4);
            let (status, answer) = b.request("GET", &format!("{b_path}/records"), None).await;
            assert_eq!((status, code(&answer)), (404, "UNKNOWN_CONSUMER"), "{answer}");

            // A record handed out but not committed comes again to the next
            // owner of its partition (at least once).
            let late = proto::Record { value: Some(b"p2-5".to_vec()), ..Default::default() };
            client.produce("events", 2, vec![late], Acks::All).await.unwrap();
            let (got, _) = poll_until(&mut a, &a_path, |seen, _| !seen.is_empty()).await;
            assert_eq!(got, vec![(2, 5, "p2-5".to_owned())]);
            let (status, _) = a.request("DELETE", &a_path, None).await;
            assert_eq!(status, 200);
            let mut c = Http::open(&http).await;
            let (status, created) = c.request("POST", "/v1/groups/web/consumers", Some(create.clone())).await;
            assert_eq!(status, 201, "{created}");
            let c_path = format!("/v1/groups/web/consumers/{}", created["consumer"].as_str().unwrap());
            let (got, _) = poll_until(&mut c, &c_path, |seen, _| !seen.is_empty()).await;
            assert_eq!(got, vec![(2, 5, "p2-5".to_owned())]);

            // Seeking back replays a partition.
            let (status, sought) = c
                .request(
                    "POST",
                    &format!("{c_path}/seek"),
                    Some(json!({"topic": "events", "partition": 1, "to": "beginning"})),
                )
                .await;
            assert_eq!(status, 200, "{sought}");
            assert_eq!(sought["offset"], 0);
            let (replayed, _) = poll_until(&mut c, &c_path, |seen, _| seen.len() >= 5).await;
            assert_eq!(
                replayed.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
                (0..5).map(|o| (1, o)).collect::<Vec<_>>()
            );
        })
        .await;
}

#[tokio::test]
async fn gateway_consumers_refuse_bad_requests_by_name_and_expire_when_left_idle() {
    let broker = TestBroker::start().await;
    let (http, address) = (broker.http_address.clone(), broker.address.clone());
    broker
        .run(async move {
            let client = connect(&address).await;
            client.create_topic("events", proto::TopicConfig { partitions: 2, ..Default::default() }).await.unwrap();
            let mut conn = Http::open(&http).await;
            let body = json!({"topics": ["events"], "session_timeout_ms": 2000, "idle_timeout_ms": 1000});
            let (status, created) = conn.request("POST", "/v1/groups/g/consumers", Some(body)).await;
            assert_eq!(status, 201, "{created}");
            let id = created["consumer"].as_str().unwrap().to_owned();
            let path = format!("/v1/groups/g/consumers/{id}");

            let cases = [
                ("POST", "/v1/groups/g/consumers".to_owned(), Some(json!({"topics": []})), 400, "INVALID_REQUEST"),
                (
                    "POST",
                    "/v1/groups/g/consumers".to_owned(),
                    Some(json!({"topics": ["events"], "reset": "middle"})),
                    400,
                    "INVALID_REQUEST",
                ),
                (
                    "POST",
                    "/v1/groups/g/consumers".to_owned(),
                    Some(json!({"topics": ["events"], "idle_timeout_ms": 5})),
                    400,
                    "INVALID_REQUEST",
                ),
                ("POST", "/v1/groups/g/consumers".to_owned(), Some(json!({"topic": "events"})), 400, "INVALID_REQUEST"),
                (
                    "POST",
                    "/v1/groups/bad%01/consumers".to_owned(),
                    Some(json!({"topics": ["events"]})),
                    400,
                    "INVALID_GROUP",
                ),
                ("GET", "/v1/groups/g/consumers/c-nope/records".to_owned(), None, 404, "UNKNOWN_CONSUMER"),
                // A consumer is found only under its own group.
                ("GET", format!("/v1/groups/other/consumers/{id}/records"), None, 404, "UNKNOWN_CONSUMER"),
                (
                    "POST",
                    format!("{path}/seek"),
                    Some(json!({"topic": "events", "partition": 9, "offset": 0})),
                    409,
                    "NOT_ASSIGNED",
                ),
                (
                    "POST",
                    format!("{path}/seek"),
                    Some(json!({"topic": "events", "partition": 0})),
                    400,
                    "INVALID_REQUEST",
                ),
                ("GET", format!("{path}/records?wait_ms=soon"), None, 400, "INVALID_REQUEST"),
                ("PUT", path.clone(), None, 405, "METHOD_NOT_ALLOWED"),
                ("GET", format!("{path}/elsewhere"), None, 404, "NOT_FOUND"),
            ];
            for (method, path, body, want_status, want_code) in cases {
                let (status, answer) = conn.request(method, &path, body).await;
                let got = answer["error"]["code"].as_str().unwrap_or("none");
                assert_eq!((status, got), (want_status, want_code), "{method} {path}: {answer}");
            }
            // None of the refused creations joined the group.
            let (_, group) = conn.request("GET", "/v1/groups/g", None).await;
            assert_eq!(group["members"].as_array().unwrap().len(), 1, "{group}");

            // Left alone past its idle timeout, the consumer leaves the group.
            let mut left = false;
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let (_, group) = conn.request("GET", "/v1/groups/g", None).await;
                if group["members"].as_array().unwrap().is_empty() {
                    left = true;
                    break;
                }
            }
            assert!(left, "an idle consumer stayed in its group");
            let (status, answer) = conn.request("GET", &format!("{path}/records"), None).await;
            assert_eq!((status, code(&answer)), (404, "UNKNOWN_CONSUMER"), "{answer}");
        })
        .await;
}
