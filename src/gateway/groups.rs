//! Group consumers over HTTP. An HTTP client cannot heartbeat between its
//! requests, so the gateway keeps a [`GroupConsumer`] for it (a consumer
//! instance, as Kafka's REST proxy does): the instance holds the group
//! membership, heartbeats, rejoins on rebalance and remembers positions;
//! the client creates it, polls it, commits it and deletes it. An instance
//! nobody has used for its idle timeout leaves the group, so a client that
//! vanished does not hold its partitions forever.
//!
//! ```text
//! POST   /v1/groups/{group}/consumers          {"topics", "reset"?, "auto_commit"?, "session_timeout_ms"?,
//!                                               "assignor"?, "idle_timeout_ms"?}
//! GET    /v1/groups/{group}/consumers/{id}/records  ?wait_ms=
//! POST   /v1/groups/{group}/consumers/{id}/commit
//! POST   /v1/groups/{group}/consumers/{id}/seek     {"topic", "partition", "offset" | "to": "beginning"|"end"}
//! DELETE /v1/groups/{group}/consumers/{id}
//! GET    /v1/groups/{group}
//! ```
//!
//! Positions move when `records` answers; `commit` commits every assigned
//! partition's position, i.e. everything handed out so far (at least once:
//! records handed out but not committed come again to whoever owns their
//! partition after a rebalance).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::http::Request;
use super::{error, from_client, number, ok, parse, record_json, Gateway, Response, WAIT_MAX};
use crate::client::consumer::{ConsumerConfig, GroupConsumer, OffsetReset, SeekTo};
use crate::sys::rng::random_u64;

/// Consumer instances one gateway keeps at most.
pub const CONSUMERS_MAX: usize = 1024;
/// How long an instance may go unused before it leaves its group, unless
/// its creator asked otherwise.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
const IDLE_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// How often idle instances are looked for.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// One HTTP client's group consumer.
pub(super) struct Instance {
    group: String,
    idle_timeout: Duration,
    /// `None` once closed (deleted or expired) while a request still held
    /// the instance.
    consumer: tokio::sync::Mutex<Option<GroupConsumer>>,
    last_used: Mutex<tokio::time::Instant>,
}

impl Instance {
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }

    /// Leaves the group (once), so the others rebalance now instead of
    /// after the session timeout; if leaving fails, the timeout does it.
    async fn close(&self, id: &str, why: &str) {
        let consumer = self.consumer.lock().await.take();
        if let Some(consumer) = consumer {
            tracing::info!(group = %self.group, id, why, "a gateway consumer leaves its group");
            if let Err(failed) = consumer.close().await {
                tracing::debug!(group = %self.group, id, error = %failed, "a gateway consumer could not leave its group");
            }
        }
    }
}

fn unknown_consumer(group: &str, id: &str) -> Response {
    error(
        404,
        "UNKNOWN_CONSUMER",
        format!("group {group:?} has no consumer {id:?} here (deleted, expired after its idle timeout, or the gateway restarted): create one"),
    )
}

fn assignment_json(consumer: &GroupConsumer) -> serde_json::Value {
    let assigned: Vec<serde_json::Value> = consumer
        .positions()
        .into_iter()
        .map(|((topic, partition), position)| json!({"topic": topic, "partition": partition, "position": position}))
        .collect();
    json!(assigned)
}

impl Gateway {
    pub(super) async fn handle_groups(&self, request: &Request, segments: &[&str]) -> Result<Response, Response> {
        match (request.method.as_str(), segments) {
            ("GET", [group]) => self.describe_group(group).await,
            ("POST", [group, "consumers"]) => self.create_consumer(group, &request.body).await,
            ("GET", [group, "consumers", id, "records"]) => self.poll_consumer(group, id, request).await,
            ("POST", [group, "consumers", id, "commit"]) => self.commit_consumer(group, id).await,
            ("POST", [group, "consumers", id, "seek"]) => self.seek_consumer(group, id, &request.body).await,
            ("DELETE", [group, "consumers", id]) => self.delete_consumer(group, id).await,
            (_, [_] | [_, "consumers"] | [_, "consumers", _] | [_, "consumers", _, "records" | "commit" | "seek"]) => {
                Err(error(405, "METHOD_NOT_ALLOWED", format!("{} is not allowed here", request.method)))
            }
            _ => Err(error(404, "NOT_FOUND", format!("no such resource: /{}", request.segments.join("/")))),
        }
    }

    async fn describe_group(&self, group: &str) -> Result<Response, Response> {
        let described = self.client.describe_group(group).await.map_err(from_client)?;
        let members: Vec<serde_json::Value> = described
            .members
            .iter()
            .map(|m| {
                let assignment: Vec<serde_json::Value> =
                    m.assignment.iter().map(|tp| json!({"topic": tp.topic, "partition": tp.partition})).collect();
                json!({"member_id": m.member_id, "topics": m.topics, "assignment": assignment})
            })
            .collect();
        let partitions: Vec<serde_json::Value> = described
            .partitions
            .iter()
            .map(|p| {
                json!({
                    "topic": p.topic,
                    "partition": p.partition,
                    "committed_offset": p.committed_offset,
                    "high_watermark": p.high_watermark,
                    "lag": p.lag,
                    "owner": p.owner,
                })
            })
            .collect();
        Ok(ok(
            200,
            json!({
                "group": described.group,
                "state": described.state,
                "generation": described.generation,
                "assignor": described.assignor,
                "members": members,
                "partitions": partitions,
            }),
        ))
    }

    async fn create_consumer(&self, group: &str, body: &[u8]) -> Result<Response, Response> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Create {
            topics: Vec<String>,
            reset: Option<String>,
            #[serde(default)]
            auto_commit: bool,
            session_timeout_ms: Option<u64>,
            assignor: Option<String>,
            idle_timeout_ms: Option<u64>,
        }
        let create: Create = parse(body)?;
        if create.topics.is_empty() {
            return Err(error(400, "INVALID_REQUEST", "a consumer subscribes to at least one topic"));
        }
        let reset = match create.reset.as_deref() {
            None | Some("earliest") => OffsetReset::Earliest,
            Some("latest") => OffsetReset::Latest,
            Some(other) => {
                return Err(error(400, "INVALID_REQUEST", format!("reset {other:?}: use \"earliest\" or \"latest\"")))
            }
        };
        let idle_timeout = match create.idle_timeout_ms {
            None => IDLE_TIMEOUT_DEFAULT,
            Some(ms) if (1_000..=IDLE_TIMEOUT_MAX.as_millis() as u64).contains(&ms) => Duration::from_millis(ms),
            Some(ms) => {
                return Err(error(
                    400,
                    "INVALID_REQUEST",
                    format!("idle_timeout_ms {ms}: from 1000 to {}", IDLE_TIMEOUT_MAX.as_millis()),
                ))
            }
        };
        if self.consumers().len() >= CONSUMERS_MAX {
            return Err(error(
                429,
                "TOO_MANY_CONSUMERS",
                format!("this gateway keeps at most {CONSUMERS_MAX} consumers: delete some, or let idle ones expire"),
            ));
        }
        let mut config = ConsumerConfig::new(group, &[]);
        config.topics = create.topics;
        config.reset = reset;
        config.auto_commit = create.auto_commit;
        if let Some(assignor) = create.assignor {
            config.assignor = assignor;
        }
        if let Some(ms) = create.session_timeout_ms {
            // The broker checks the range; heartbeats go three times per session.
            config.session_timeout = Duration::from_millis(ms);
            config.heartbeat_interval = Duration::from_millis((ms / 3).max(1));
        }
        // Joining waits for the group to settle: a definite error means no
        // member was made; anything else leaves at most a member that
        // expires on its own.
        let consumer = GroupConsumer::join(self.client.clone(), config).await.map_err(from_client)?;
        let id = format!("c-{:016x}", random_u64());
        let body = json!({
            "consumer": id,
            "member_id": consumer.member_id(),
            "generation": consumer.generation(),
            "assignment": assignment_json(&consumer),
        });
        let instance = Arc::new(Instance {
            group: group.to_owned(),
            idle_timeout,
            consumer: tokio::sync::Mutex::new(Some(consumer)),
            last_used: Mutex::new(tokio::time::Instant::now()),
        });
        self.consumers().insert(id, instance);
        Ok(ok(201, body))
    }

    fn instance(&self, group: &str, id: &str) -> Result<Arc<Instance>, Response> {
        match self.consumers().get(id) {
            Some(instance) if instance.group == group => {
                instance.touch();
                Ok(instance.clone())
            }
            _ => Err(unknown_consumer(group, id)),
        }
    }

    async fn poll_consumer(&self, group: &str, id: &str, request: &Request) -> Result<Response, Response> {
        let wait_ms: u64 = request.param("wait_ms").map_or(Ok(0), |v| number(v, "wait_ms"))?;
        let wait = Duration::from_millis(wait_ms).min(WAIT_MAX);
        let instance = self.instance(group, id)?;
        let mut guard = instance.consumer.lock().await;
        let consumer = guard.as_mut().ok_or_else(|| unknown_consumer(group, id))?;
        let polled = consumer.poll(wait).await;
        instance.touch();
        let polled = polled.map_err(from_client)?;
        let records: Vec<serde_json::Value> = polled
            .iter()
            .map(|consumed| {
                let mut record = record_json(&consumed.record);
                if let Some(fields) = record.as_object_mut() {
                    fields.insert("topic".into(), json!(consumed.topic));
                    fields.insert("partition".into(), json!(consumed.partition));
                }
                record
            })
            .collect();
        Ok(ok(
            200,
            json!({
                "records": records,
                "member_id": consumer.member_id(),
                "generation": consumer.generation(),
                "assignment": assignment_json(consumer),
            }),
        ))
    }

    async fn commit_consumer(&self, group: &str, id: &str) -> Result<Response, Response> {
        let instance = self.instance(group, id)?;
        let mut guard = instance.consumer.lock().await;
        let consumer = guard.as_mut().ok_or_else(|| unknown_consumer(group, id))?;
        let committed = consumer.commit().await;
        instance.touch();
        committed.map_err(from_client)?;
        let offsets: Vec<serde_json::Value> = consumer
            .positions()
            .into_iter()
            .map(|((topic, partition), offset)| json!({"topic": topic, "partition": partition, "offset": offset}))
            .collect();
        Ok(ok(200, json!({"generation": consumer.generation(), "offsets": offsets})))
    }

    async fn seek_consumer(&self, group: &str, id: &str, body: &[u8]) -> Result<Response, Response> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Seek {
            topic: String,
            partition: u32,
            offset: Option<u64>,
            to: Option<String>,
            timestamp_ms: Option<i64>,
        }
        let seek: Seek = parse(body)?;
        let target = match (seek.offset, seek.to.as_deref(), seek.timestamp_ms) {
            (Some(offset), None, None) => SeekTo::Offset(offset),
            (None, Some("beginning"), None) => SeekTo::Beginning,
            (None, Some("end"), None) => SeekTo::End,
            (None, None, Some(ms)) => SeekTo::Timestamp(ms),
            _ => {
                return Err(error(
                    400,
                    "INVALID_REQUEST",
                    "give one of offset, timestamp_ms or to (\"beginning\" or \"end\")",
                ))
            }
        };
        let instance = self.instance(group, id)?;
        let mut guard = instance.consumer.lock().await;
        let consumer = guard.as_mut().ok_or_else(|| unknown_consumer(group, id))?;
        if !consumer.assignment().contains(&(seek.topic.clone(), seek.partition)) {
            return Err(error(
                409,
                "NOT_ASSIGNED",
                format!("{}/{} is not assigned to this consumer now", seek.topic, seek.partition),
            ));
        }
        let sought = consumer.seek_to(&seek.topic, seek.partition, target).await;
        instance.touch();
        let offset = sought.map_err(from_client)?;
        Ok(ok(200, json!({"topic": seek.topic, "partition": seek.partition, "offset": offset})))
    }

    async fn delete_consumer(&self, group: &str, id: &str) -> Result<Response, Response> {
        let instance = {
            let mut consumers = self.consumers();
            match consumers.get(id) {
                Some(instance) if instance.group == group => consumers.remove(id).expect("just found"),
                _ => return Err(unknown_consumer(group, id)),
            }
        };
        instance.close(id, "deleted").await;
        Ok(ok(200, json!({"deleted": id})))
    }

    /// Closes instances idle for longer than their timeout, until the
    /// gateway is dropped.
    pub(super) async fn reap_idle(gateway: Weak<Gateway>) {
        loop {
            tokio::time::sleep(REAP_EVERY).await;
            let Some(gateway) = gateway.upgrade() else { return };
            let mut expired = Vec::new();
            let mut rejoining = Vec::new();
            gateway.consumers().retain(|id, instance| {
                // One that a request holds is in use, however long it waits.
                let Ok(consumer) = instance.consumer.try_lock() else { return true };
                if instance.idle_for() > instance.idle_timeout {
                    expired.push((id.clone(), instance.clone()));
                    return false;
                }
                if consumer.as_ref().is_some_and(GroupConsumer::rejoin_wanted) {
                    rejoining.push(instance.clone());
                }
                true
            });
            drop(gateway);
            // A rebalance waits for every member: one whose client is between
            // requests rejoins now instead of holding the group up until its
            // deadline.
            for instance in rejoining {
                tokio::spawn(async move {
                    if let Some(consumer) = instance.consumer.lock().await.as_mut() {
                        if let Err(failed) = consumer.rejoin_if_wanted().await {
                            tracing::debug!(group = %instance.group, error = %failed, "a gateway consumer could not rejoin");
                        }
                    }
                });
            }
            for (id, instance) in expired {
                tokio::spawn(async move { instance.close(&id, "idle past its timeout").await });
            }
        }
    }
}
