//! A producer that batches: records bound for one partition are gathered
//! until the batch reaches `batch_bytes_max` or the first record has waited
//! `linger`, then sent as one encoded batch. `batch_bytes_max: 0` sends
//! records one by one. Retriable failures (the broker unreachable or
//! restarting, storage full, metadata unavailable) are retried with
//! exponential backoff; anything else fails the records of that batch.
//!
//! Each partition has one batch in flight at a time, so records keep their
//! order per partition, across retries too. The producer is idempotent by
//! default: it takes a producer id from the broker and numbers its records
//! per partition, so a batch retried after a lost reply is written once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{partition_for_key, Client, ClientError, ClientResult};
use crate::broker::error::meaning;
use crate::log::{BatchBuilder, Record};
use crate::proto::Acks;

/// Records a partition's queue holds before `send` waits.
const PARTITION_QUEUE: usize = 4_096;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// Send a batch once it holds this many bytes; 0 sends records one by one.
    pub batch_bytes_max: usize,
    /// Send a batch once its first record has waited this long.
    pub linger: Duration,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// Number batches so that retries are written once (see the module doc).
    pub idempotent: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            batch_bytes_max: 256 << 10,
            linger: Duration::from_millis(5),
            retries: 10,
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(2),
            idempotent: true,
        }
    }
}

/// The acknowledgement of one queued record.
#[derive(Debug)]
pub struct Delivery {
    delivered: oneshot::Receiver<ClientResult<Delivered>>,
}

impl Delivery {
    pub async fn wait(self) -> ClientResult<Delivered> {
        self.delivered.await.map_err(|_| ClientError::InvalidReply("the producer stopped before the reply".into()))?
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: u32,
    pub offset: u64,
    /// When the producer had the broker's answer (latency measurements do
    /// not depend on when the delivery is awaited).
    pub acknowledged_at: tokio::time::Instant,
}

struct Pending {
    record: Record,
    done: oneshot::Sender<ClientResult<Delivered>>,
}

#[derive(Debug)]
pub struct Producer {
    client: Client,
    config: ProducerConfig,
    /// Per (topic, partition): the queue of its sender task.
    queues: Mutex<BTreeMap<(String, u32), mpsc::Sender<Pending>>>,
    partition_counts: Mutex<BTreeMap<String, u32>>,
    round_robin: Mutex<u32>,
}

/// An idempotent producer's identity and its next sequence in a partition.
#[derive(Debug, Clone, Copy)]
struct Sequencing {
    producer_id: i64,
    epoch: i16,
    next: i32,
}

/// Whether an error may go away if the same request is sent again later.
pub fn is_retriable(error: &ClientError) -> bool {
    match error {
        ClientError::Connect { .. } => true,
        ClientError::InvalidReply(_) => false,
        ClientError::Broker(broker) => meaning(broker.code).retriable,
        ClientError::Indefinite(error) => is_retriable(error),
    }
}

/// The wait before retry number `attempt` (0-based): doubling, capped.
pub fn backoff(config: &ProducerConfig, attempt: u32) -> Duration {
    config.retry_backoff.saturating_mul(1u32 << attempt.min(16)).min(config.retry_backoff_max)
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Arc<Self> {
        Arc::new(Self {
            client,
            config,
            queues: Mutex::new(BTreeMap::new()),
            partition_counts: Mutex::new(BTreeMap::new()),
            round_robin: Mutex::new(0),
        })
    }

    async fn partition_count(&self, topic: &str) -> ClientResult<u32> {
        if let Some(count) = self.partition_counts.lock().unwrap_or_else(|p| p.into_inner()).get(topic) {
            return Ok(*count);
        }
        let count = self.client.describe_topic(topic).await?.partitions.len() as u32;
        self.partition_counts.lock().unwrap_or_else(|p| p.into_inner()).insert(topic.to_owned(), count);
        Ok(count)
    }

    /// The partition for a record: by key hash if it has a key, else round
    /// robin.
    async fn choose(&self, topic: &str, key: Option<&[u8]>) -> ClientResult<u32> {
        let count = self.partition_count(topic).await?;
        Ok(match key {
            Some(key) => partition_for_key(key, count),
            None => {
                let mut next = self.round_robin.lock().unwrap_or_else(|p| p.into_inner());
                *next = next.wrapping_add(1);
                *next % count
            }
        })
    }

    /// Queues a record (waiting only for the partition count on first use
    /// of a topic, or for room in a full queue) and returns a [`Delivery`]
    /// that resolves once the record is acknowledged per `acks`. Records
    /// queued one after another keep that order within their partition.
    /// `partition: None` picks one by key hash or round robin.
    pub async fn send(self: &Arc<Self>, topic: &str, partition: Option<u32>, record: Record) -> ClientResult<Delivery> {
        let partition = match partition {
            Some(partition) => partition,
            None => self.choose(topic, record.key.as_deref()).await?,
        };
        let (done, delivered) = oneshot::channel();
        let queue = self.queue(topic, partition);
        queue
            .send(Pending { record, done })
            .await
            .map_err(|_| ClientError::InvalidReply("the producer is closed".into()))?;
        Ok(Delivery { delivered })
    }

    fn queue(self: &Arc<Self>, topic: &str, partition: u32) -> mpsc::Sender<Pending> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let key = (topic.to_owned(), partition);
        if let Some(queue) = queues.get(&key) {
            return queue.clone();
        }
        let (queue, pending) = mpsc::channel(PARTITION_QUEUE);
        tokio::spawn(self.clone().run_partition(topic.to_owned(), partition, pending));
        queues.insert(key, queue.clone());
        queue
    }

    /// Gathers and sends the batches of one partition, one at a time.
    async fn run_partition(self: Arc<Self>, topic: String, partition: u32, mut pending: mpsc::Receiver<Pending>) {
        let mut sequencing = None;
        while let Some(first) = pending.recv().await {
            let mut batch = vec![first];
            let mut bytes = batch[0].record.value.as_ref().map_or(0, |v| v.len());
            let deadline = tokio::time::Instant::now() + self.config.linger;
            while self.config.batch_bytes_max > 0 && bytes < self.config.batch_bytes_max {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, pending.recv()).await {
                    Ok(Some(next)) => {
                        bytes += next.record.key.as_ref().map_or(0, |k| k.len())
                            + next.record.value.as_ref().map_or(0, |v| v.len());
                        batch.push(next);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let result = self.send_batch(&topic, partition, &batch, &mut sequencing).await;
            let acknowledged_at = tokio::time::Instant::now();
            for (i, pending) in batch.into_iter().enumerate() {
                let outcome = match &result {
                    Ok(base_offset) => Ok(Delivered { partition, offset: base_offset + i as u64, acknowledged_at }),
                    Err(error) => Err(error.clone()),
                };
                let _ = pending.done.send(outcome);
            }
        }
    }

    async fn send_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: &[Pending],
        sequencing: &mut Option<Sequencing>,
    ) -> ClientResult<u64> {
        if self.config.idempotent && sequencing.is_none() {
            let identity = self.client.init_producer().await?;
            let epoch = i16::try_from(identity.producer_epoch)
                .map_err(|_| ClientError::InvalidReply(format!("producer epoch {}", identity.producer_epoch)))?;
            *sequencing = Some(Sequencing { producer_id: identity.producer_id, epoch, next: 0 });
        }
        let mut builder = match sequencing {
            Some(s) => BatchBuilder::new().producer(s.producer_id, s.epoch, s.next),
            None => BatchBuilder::new(),
        };
        for pending in batch {
            builder.push(&pending.record);
        }
        let encoded =
            builder.build().map_err(|e| ClientError::InvalidReply(format!("cannot encode the batch: {e}")))?;
        let mut attempt = 0;
        // Whether an attempt so far may have written the batch.
        let mut maybe_written = false;
        loop {
            match self.client.produce_batch(topic, partition, &encoded, self.config.acks).await {
                Ok(response) => {
                    if let Some(s) = sequencing {
                        s.next = s.next.wrapping_add(batch.len() as i32);
                    }
                    return Ok(response.base_offset);
                }
                Err(error) if is_retriable(&error) && attempt < self.config.retries => {
                    tracing::debug!(topic, partition, attempt, %error, "retrying a produce");
                    maybe_written |= !error.did_nothing();
                    tokio::time::sleep(backoff(&self.config, attempt)).await;
                    attempt += 1;
                }
                Err(error) => {
                    // Whether the batch was written is unknown (or the broker
                    // refused its sequence): the next batch starts over under
                    // a new identity rather than leave a gap.
                    *sequencing = None;
                    return Err(error.after_attempts(maybe_written));
                }
            }
        }
    }
}

/// Convenience: a record with a value and an optional key, stamped now by
/// the caller's clock.
pub fn record(key: Option<&[u8]>, value: &[u8], timestamp_ms: i64) -> Record {
    Record {
        timestamp_ms,
        key: key.map(bytes::Bytes::copy_from_slice),
        value: Some(bytes::Bytes::copy_from_slice(value)),
        ..Record::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::error::BrokerError;
    use crate::proto::ErrorCode;

    #[test]
    fn a_definite_last_error_after_an_unknown_attempt_is_indefinite() {
        let broker = |code| ClientError::Broker(BrokerError::new(code, "x"));
        assert!(broker(ErrorCode::NotLeader).did_nothing());
        assert!(broker(ErrorCode::PartitionUnavailable).did_nothing());
        assert!(!broker(ErrorCode::OutcomeUnknown).did_nothing());
        assert!(!broker(ErrorCode::Unspecified).did_nothing(), "a transport error may follow the write");
        assert!(ClientError::Connect { address: "a".into(), reason: "refused".into() }.did_nothing());
        // Every attempt refused: the request did nothing.
        let refused = broker(ErrorCode::NotLeader).after_attempts(false);
        assert!(refused.did_nothing());
        // One attempt's outcome unknown, the last refused: it may be written.
        let after_unknown = broker(ErrorCode::NotLeader).after_attempts(true);
        assert!(!after_unknown.did_nothing(), "{after_unknown}");
        assert_eq!(after_unknown.code(), Some(ErrorCode::NotLeader), "the last error's code is kept");
        assert!(is_retriable(&after_unknown));
        assert!(after_unknown.to_string().contains("may have taken effect"));
        // An error that is itself unknown stays as it is.
        assert!(matches!(broker(ErrorCode::OutcomeUnknown).after_attempts(true), ClientError::Broker(_)));
    }

    #[test]
    fn retriable_errors() {
        let broker = |code| ClientError::Broker(BrokerError::new(code, "x"));
        let table = [
            (ClientError::Connect { address: "a".into(), reason: "refused".into() }, true),
            (broker(ErrorCode::StorageFull), true),
            (broker(ErrorCode::MetadataUnavailable), true),
            (broker(ErrorCode::NotLeader), true),
            (broker(ErrorCode::PartitionUnavailable), true),
            (broker(ErrorCode::OutcomeUnknown), true),
            (broker(ErrorCode::UnknownTopic), false),
            (broker(ErrorCode::MessageTooLarge), false),
            (broker(ErrorCode::InvalidBatch), false),
            (broker(ErrorCode::StorageFailed), false),
        ];
        for (error, retriable) in table {
            assert_eq!(is_retriable(&error), retriable, "{error}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = ProducerConfig::default();
        let waits: Vec<u128> = (0..8).map(|a| backoff(&config, a).as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(&config, 40), config.retry_backoff_max);
    }
}
