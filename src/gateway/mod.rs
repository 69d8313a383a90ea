//! The HTTP/JSON gateway: weir for clients that do not speak gRPC (the
//! Jepsen suite's Clojure client, curl, scripts). It is a client of the
//! cluster like any other: it reaches partitions' leaders through
//! [`Client`] and writes through idempotent [`Producer`]s, one per ack
//! level, so a send it retries is never written twice.
//!
//! ```text
//! GET  /v1/health
//! POST /v1/topics                                  {"name", "partitions", "replication_factor"?}
//! GET  /v1/topics/{topic}
//! POST /v1/topics/{topic}/records                  {"records": [{"value", "key"?, "partition"?, "headers"?}], "acks"?}
//! GET  /v1/topics/{topic}/partitions/{p}/records   ?offset=&max_bytes=&wait_ms=
//! ...  /v1/groups/{group}/...                      group consumers (groups.rs)
//! ```
//!
//! Values and keys travel as UTF-8 strings; a record whose value or key is
//! not UTF-8 is returned with `value_hex` / `key_hex` instead. Errors are
//! `{"error": {"code", "message"}}` with weir's error code. A 4xx status
//! means the request definitely did nothing; a 5xx means it may have (a
//! produce that timed out may still land), as a Jepsen client must know.

mod groups;
pub mod http;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::producer::{Producer, ProducerConfig};
use crate::client::{Client, ClientError};
use crate::log::batch::{Record, RecordHeader};
use crate::proto::{self, Acks};
use crate::sys::clock::system_clock;
use http::{Request, Response};

/// Longest long poll a fetch may ask for.
const WAIT_MAX: Duration = Duration::from_secs(30);
const FETCH_BYTES_DEFAULT: u32 = 1 << 20;

/// The gateway's state: one cluster client, its producers and the group
/// consumers it keeps for HTTP clients.
pub struct Gateway {
    client: Client,
    producers: Mutex<BTreeMap<i32, Arc<Producer>>>,
    consumers: Mutex<BTreeMap<String, Arc<groups::Instance>>>,
}

impl Gateway {
    pub fn new(client: Client) -> Arc<Self> {
        Arc::new(Self { client, producers: Mutex::default(), consumers: Mutex::default() })
    }

    fn consumers(&self) -> MutexGuard<'_, BTreeMap<String, Arc<groups::Instance>>> {
        self.consumers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn producer(&self, acks: Acks) -> Arc<Producer> {
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        producers
            .entry(acks as i32)
            .or_insert_with(|| {
                // One record per batch: the reply to a request carries each
                // record's offset as soon as it is acknowledged.
                let config = ProducerConfig { acks, ..ProducerConfig::default() };
                Producer::new(self.client.clone(), config)
            })
            .clone()
    }

    /// Answers one request.
    pub async fn handle(&self, request: &Request) -> Response {
        let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
        let result = match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["v1", "health"]) => Ok(ok(200, json!({"ok": true}))),
            ("POST", ["v1", "topics"]) => self.create_topic(&request.body).await,
            ("GET", ["v1", "topics", topic]) => self.describe_topic(topic).await,
            ("POST", ["v1", "topics", topic, "records"]) => self.produce(topic, &request.body).await,
            ("GET", ["v1", "topics", topic, "partitions", partition, "records"]) => {
                self.fetch(topic, partition, request).await
            }
            (_, ["v1", "groups", rest @ ..]) if !rest.is_empty() => self.handle_groups(request, rest).await,
            (_, ["v1", "health"])
            | (_, ["v1", "topics"])
            | (_, ["v1", "topics", _])
            | (_, ["v1", "topics", _, "records"])
            | (_, ["v1", "topics", _, "partitions", _, "records"]) => {
                Err(error(405, "METHOD_NOT_ALLOWED", format!("{} is not allowed here", request.method)))
            }
            _ => Err(error(404, "NOT_FOUND", format!("no such resource: /{}", request.segments.join("/")))),
        };
        result.unwrap_or_else(|response| response)
    }

    async fn create_topic(&self, body: &[u8]) -> Result<Response, Response> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Create {
            name: String,
            partitions: u32,
            replication_factor: Option<u32>,
        }
        let create: Create = parse(body)?;
        let config = proto::TopicConfig {
            partitions: create.partitions,
            replication_factor: create.replication_factor,
            ..Default::default()
        };
        let created = self.client.create_topic(&create.name, config).await.map_err(from_client)?;
        Ok(ok(201, topic_json(&created)))
    }

    async fn describe_topic(&self, topic: &str) -> Result<Response, Response> {
        let described = self.client.describe_topic(topic).await.map_err(from_client)?;
        Ok(ok(200, topic_json(&described)))
    }

    async fn produce(&self, topic: &str, body: &[u8]) -> Result<Response, Response> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Produce {
            records: Vec<NewRecord>,
            #[serde(default)]
            acks: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NewRecord {
            value: Option<String>,
            key: Option<String>,
            partition: Option<u32>,
            #[serde(default)]
            headers: BTreeMap<String, String>,
            timestamp_ms: Option<i64>,
        }
        let produce: Produce = parse(body)?;
        let acks = match produce.acks.as_deref() {
            None | Some("all") => Acks::All,
            Some("leader") => Acks::Leader,
            Some("none") => Acks::None,
            Some(other) => {
                return Err(error(
                    400,
                    "INVALID_REQUEST",
                    format!("acks {other:?}: use \"all\", \"leader\" or \"none\""),
                ))
            }
        };
        if produce.records.is_empty() {
            return Err(error(400, "INVALID_REQUEST", "no records to produce"));
        }
        let producer = self.producer(acks);
        let now_ms = system_clock().now_ms();
        // Queued in order, then awaited: records to one partition keep
        // their order and share batches.
        let mut deliveries = Vec::with_capacity(produce.records.len());
        for new in produce.records {
            let record = Record {
                timestamp_ms: new.timestamp_ms.unwrap_or(now_ms),
                key: new.key.map(|k| bytes::Bytes::from(k.into_bytes())),
                value: new.value.map(|v| bytes::Bytes::from(v.into_bytes())),
                headers: new
                    .headers
                    .into_iter()
                    .map(|(key, value)| RecordHeader { key, value: Some(bytes::Bytes::from(value.into_bytes())) })
                    .collect(),
                ..Default::default()
            };
            deliveries.push(producer.send(topic, new.partition, record).await);
        }
        let mut results = Vec::with_capacity(deliveries.len());
        let mut first_error = None;
        for delivery in deliveries {
            let delivered = match delivery {
                Ok(delivery) => delivery.wait().await,
                Err(error) => Err(error),
            };
            match delivered {
                Ok(delivered) => {
                    // acks=none learns no offset.
                    let offset = (acks != Acks::None).then_some(delivered.offset);
                    results.push(json!({"partition": delivered.partition, "offset": offset}));
                }
                Err(failed) => {
                    let (status, code, message) = describe(&failed);
                    first_error.get_or_insert(status);
                    results.push(json!({"error": {"code": code, "message": message}}));
                }
            }
        }
        Ok(ok(first_error.unwrap_or(200), json!({ "results": results })))
    }

    async fn fetch(&self, topic: &str, partition: &str, request: &Request) -> Result<Response, Response> {
        let partition: u32 = number(partition, "partition")?;
        let offset: u64 = request.param("offset").map_or(Ok(0), |v| number(v, "offset"))?;
        let max_bytes: u32 = request.param("max_bytes").map_or(Ok(FETCH_BYTES_DEFAULT), |v| number(v, "max_bytes"))?;
        let wait_ms: u64 = request.param("wait_ms").map_or(Ok(0), |v| number(v, "wait_ms"))?;
        let wait = Duration::from_millis(wait_ms).min(WAIT_MAX);
        let fetched = self.client.fetch(topic, partition, offset, max_bytes, wait).await.map_err(from_client)?;
        let records: Vec<serde_json::Value> = fetched.records.iter().map(record_json).collect();
        Ok(ok(
            200,
            json!({
                "records": records,
                "next_offset": fetched.next_offset,
                "high_watermark": fetched.high_watermark,
                "log_start_offset": fetched.log_start_offset,
            }),
        ))
    }
}

/// Serves the gateway on `listener`, reaching the cluster at `bootstrap`
/// (comma-separated broker addresses), until the task is dropped. The
/// cluster need not be up yet: connecting is retried.
pub async fn serve(listener: tokio::net::TcpListener, bootstrap: String) {
    let client = loop {
        match Client::connect(&bootstrap).await {
            Ok(client) => break client,
            Err(error) => {
                tracing::debug!(%error, "the gateway waits for the cluster");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    if let Ok(listen) = listener.local_addr() {
        tracing::info!(%listen, "serving the HTTP gateway on /v1");
    }
    serve_on(listener, Gateway::new(client)).await;
}

/// Serves `gateway` on connections `listener` accepts, and closes the
/// group consumers its clients leave idle.
pub async fn serve_on(listener: tokio::net::TcpListener, gateway: Arc<Gateway>) {
    let reaper = Gateway::reap_idle(Arc::downgrade(&gateway));
    tokio::select! {
        () = reaper => {}
        () = accept(listener, gateway) => {}
    }
}

async fn accept(listener: tokio::net::TcpListener, gateway: Arc<Gateway>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let mut reader = http::Reader::new(stream);
            loop {
                match reader.next().await {
                    Ok(Some(request)) => {
                        let response = gateway.handle(&request).await;
                        let written = http::write(reader.stream_mut(), &response, request.keep_alive).await;
                        if written.is_err() || !request.keep_alive {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(malformed) => {
                        let response = error(malformed.status, "INVALID_REQUEST", malformed.message);
                        let _ = http::write(reader.stream_mut(), &response, false).await;
                        break;
                    }
                }
            }
        });
    }
}

fn ok(status: u16, body: serde_json::Value) -> Response {
    Response { status, body: body.to_string().into_bytes() }
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
    ok(status, json!({"error": {"code": code, "message": message.into()}}))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| error(400, "INVALID_REQUEST", format!("the request body: {e}")))
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, Response> {
    text.parse().map_err(|_| error(400, "INVALID_REQUEST", format!("{what} {text:?} is not a number in range")))
}

fn from_client(failed: ClientError) -> Response {
    let (status, code, message) = describe(&failed);
    error(status, code, message)
}

/// The HTTP status, weir error code and message for a failed call. 4xx
/// only where the call definitely changed nothing.
fn describe(failed: &ClientError) -> (u16, &'static str, String) {
    let message = failed.to_string();
    let Some(code) = failed.code() else {
        return match failed {
            ClientError::Connect { .. } => (503, "UNAVAILABLE", message),
            _ => (500, "INTERNAL", message),
        };
    };
    let status = match crate::broker::error::meaning(code).http {
        // The last attempt did nothing, an earlier one may have.
        status if status < 500 && !failed.did_nothing() => 503,
        status => status,
    };
    (status, code.as_str_name(), message)
}

#[derive(Serialize)]
struct PartitionJson {
    partition: u32,
    leader: u64,
    replicas: Vec<u64>,
    high_watermark: u64,
}

fn topic_json(topic: &proto::TopicDescription) -> serde_json::Value {
    let partitions: Vec<PartitionJson> = topic
        .partitions
        .iter()
        .map(|p| PartitionJson {
            partition: p.partition,
            leader: p.leader,
            replicas: p.replicas.clone(),
            high_watermark: p.high_watermark,
        })
        .collect();
    json!({"name": topic.name, "partitions": partitions})
}

/// A record as JSON: text as text, anything else as hex.
fn record_json(record: &proto::Record) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("offset".into(), json!(record.offset));
    out.insert("timestamp_ms".into(), json!(record.timestamp_ms));
    for (name, bytes) in [("key", &record.key), ("value", &record.value)] {
        if let Some(bytes) = bytes {
            match std::str::from_utf8(bytes) {
                Ok(text) => out.insert(name.into(), json!(text)),
                Err(_) => out.insert(format!("{name}_hex"), json!(hex(bytes))),
            };
        }
    }
    if !record.headers.is_empty() {
        let headers: BTreeMap<&str, String> = record
            .headers
            .iter()
            .map(|h| {
                (
                    h.key.as_str(),
                    h.value.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default(),
                )
            })
            .collect();
        out.insert("headers".into(), json!(headers));
    }
    serde_json::Value::Object(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
