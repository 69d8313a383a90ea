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
