//! Server push with credit-based flow control.
//!
//! A subscriber grants credit in messages and, optionally, bytes; the broker
//! sends records as they become readable (below the high watermark) and
//! never beyond the credit left. Credit is counted per record, so a batch is
//! split when the credit ends inside it. A subscriber that stops granting
//! stalls only its own stream: nothing else waits on it.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::Status;

use super::core::Broker;
use super::error::{BrokerError, BrokerResult, ErrorCode};
use crate::proto::{self, subscribe_request};

/// Bytes one read may bring in for a subscription.
const READ_BYTES_MAX: u64 = 1 << 20;

/// What a subscriber still allows the broker to send.
///
/// Message credit is a hard limit. Byte credit is one too, with the
/// exception Kafka's fetch makes for its byte limit: a single record larger
/// than the byte credit left is still sent if nothing was sent since the
/// subscriber last granted credit. Otherwise a record larger than any
/// credit the subscriber grants at a time would stall the stream for good,
/// silently; this way each grant moves it on by at least one record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    messages: u64,
    /// `None` until the first byte credit: until then only messages count.
    bytes: Option<u64>,
    /// Whether a record went out since the last grant.
    sent_since_grant: bool,
}

impl Budget {
    pub fn grant(&mut self, credit: &proto::Credit) {
        self.messages = self.messages.saturating_add(credit.messages);
        if credit.bytes > 0 {
            self.bytes = Some(self.bytes.unwrap_or(0).saturating_add(credit.bytes));
        }
        if credit.messages > 0 || credit.bytes > 0 {
            self.sent_since_grant = false;
        }
    }

    /// Whether a record of `size` bytes may be sent now.
    pub fn allows(&self, size: u64) -> bool {
        self.messages > 0 && (self.bytes.is_none_or(|bytes| bytes >= size) || !self.sent_since_grant)
    }

    pub fn spend(&mut self, size: u64) {
        assert!(self.allows(size), "spending credit that was not granted");
        self.messages -= 1;
        if let Some(bytes) = self.bytes.as_mut() {
            *bytes = bytes.saturating_sub(size);
        }
        self.sent_since_grant = true;
    }

    fn read_bytes(&self) -> u64 {
        self.bytes.unwrap_or(READ_BYTES_MAX).clamp(1, READ_BYTES_MAX)
    }
}

type Outbound = mpsc::Sender<Result<proto::SubscribeResponse, Status>>;

enum Inbound {
    Credit(proto::Credit),
    Closed,
}

async fn next_inbound<S>(inbound: &mut S) -> BrokerResult<Inbound>
where
    S: Stream<Item = Result<proto::SubscribeRequest, Status>> + Unpin,
{
    match inbound.next().await {
        None | Some(Err(_)) => Ok(Inbound::Closed),
        Some(Ok(proto::SubscribeRequest { request: Some(subscribe_request::Request::Credit(credit)) })) => {
            Ok(Inbound::Credit(credit))
        }
        Some(Ok(_)) => Err(BrokerError::invalid("after the first message a subscription accepts only credit")),
    }
}

impl Broker {
    /// Serves one subscription until the subscriber goes away or an error
    /// ends it (sent to the subscriber as its final status).
    pub async fn subscribe<S>(self: Arc<Self>, mut inbound: S, outbound: Outbound)
    where
        S: Stream<Item = Result<proto::SubscribeRequest, Status>> + Unpin + Send,
    {
        if let Err(error) = self.run_subscription(&mut inbound, &outbound).await {
            let _ = outbound.send(Err(error.into())).await;
        }
    }

    async fn run_subscription<S>(&self, inbound: &mut S, outbound: &Outbound) -> BrokerResult<()>
    where
        S: Stream<Item = Result<proto::SubscribeRequest, Status>> + Unpin + Send,
    {
        let start = match inbound.next().await {
            Some(Ok(proto::SubscribeRequest { request: Some(subscribe_request::Request::Start(start)) })) => start,
            Some(Err(_)) | None => return Ok(()),
            Some(Ok(_)) => return Err(BrokerError::invalid("a subscription starts with a SubscribeStart message")),
        };
        let partition = self.readable_partition(&start.topic, start.partition).await?;
        let mut budget = Budget::default();
        budget.grant(&start.credit.unwrap_or_default());
        let mut offset = start.offset;
        let mut high_watermark = partition.subscribe();
        let mut stopping = self.stopping();
        let bounds = partition.bounds()?;
        if offset < bounds.log_start_offset || offset > bounds.log_end_offset {
            return Err(BrokerError::new(
                ErrorCode::OffsetOutOfRange,
                format!("offset {offset} is outside [{}, {}]", bounds.log_start_offset, bounds.log_end_offset),
            ));
        }
        loop {
            high_watermark.mark_unchanged();
            let readable = offset < partition.high_watermark();
            if readable && budget.allows(0) {
                let response = self.push_once(&partition, &mut offset, &mut budget).await?;
                if let Some(response) = response {
                    if outbound.send(Ok(response)).await.is_err() {
                        return Ok(()); // the subscriber went away
                    }
                    continue;
                }
                // The next record is larger than the byte credit left
                // and one went out since the last grant: the next grant
                // lets it through.
            }
            let wait_for_data = !readable && budget.allows(0);
            tokio::select! {
                _ = stopping.wait_for(|stopping| *stopping) => {
                    return Err(BrokerError::new(
                        ErrorCode::PartitionUnavailable,
                        format!("broker {} is stopping; subscribe again elsewhere", self.broker_id()),
                    ));
                }
                message = next_inbound(inbound) => match message? {
                    Inbound::Credit(credit) => budget.grant(&credit),
                    Inbound::Closed => return Ok(()),
                },
                changed = high_watermark.changed(), if wait_for_data => {
                    if changed.is_err() {
                        return Err(BrokerError::new(ErrorCode::UnknownPartition, "the partition was closed"));
                    }
                }
            }
        }
    }

    /// Reads from `offset` and takes as many records as the budget allows.
    /// `None` if not even the first record fits.
    async fn push_once(
        &self,
        partition: &Arc<super::partition::Partition>,
        offset: &mut u64,
        budget: &mut Budget,
    ) -> BrokerResult<Option<proto::SubscribeResponse>> {
        let target = partition.clone();
        let (from, max_bytes) = (*offset, budget.read_bytes() as usize);
        let (batches, bounds) = crate::sys::task::blocking(move || target.read(from, max_bytes)).await?;
        let mut records = Vec::new();
        'batches: for batch in &batches {
            for record in batch.records() {
                let record = record.map_err(|e| BrokerError::new(ErrorCode::CorruptData, e.to_string()))?;
                if record.offset < from {
                    continue;
                }
                let record = super::core::to_proto_record(record);
                let size = record.payload_bytes();
                if !budget.allows(size) {
                    break 'batches;
                }
                budget.spend(size);
                *offset = record.offset + 1;
                records.push(record);
            }
        }
        if records.is_empty() {
            return Ok(None);
        }
        Ok(Some(proto::SubscribeResponse { records, high_watermark: bounds.high_watermark, next_offset: *offset }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_messages_and_bytes() {
        let mut budget = Budget::default();
        assert!(!budget.allows(0), "nothing granted, nothing sent");
        budget.grant(&proto::Credit { messages: 3, bytes: 0 });
        assert!(budget.allows(1_000_000), "no byte credit granted yet: only messages count");
        budget.spend(10);
        budget.grant(&proto::Credit { messages: 0, bytes: 15 });
        assert!(budget.allows(15));
        budget.spend(5);
        assert!(budget.allows(10) && !budget.allows(11), "after a send, the byte credit left is the limit");
        budget.spend(10);
        assert!(!budget.allows(0), "the byte credit is spent");
        budget.grant(&proto::Credit { messages: 1, bytes: 0 });
        assert!(budget.allows(1_000), "a grant lets one record through, however large");
        budget.spend(1_000);
        assert!(!budget.allows(0), "both budgets spent");
    }

    /// Before: a record larger than the byte credit left was never sent
    /// and nothing was said; the subscription stalled for good.
    #[test]
    fn a_record_larger_than_the_byte_credit_still_moves_the_stream() {
        let mut budget = Budget::default();
        budget.grant(&proto::Credit { messages: 10, bytes: 100 });
        assert!(budget.allows(500), "nothing sent since the grant: the large record goes");
        budget.spend(500);
        assert!(!budget.allows(1), "then the byte credit is spent");
        budget.grant(&proto::Credit { messages: 0, bytes: 50 });
        assert!(budget.allows(500), "the next grant moves it on by one more record");
        budget.spend(500);
        assert!(!budget.allows(1));
    }

    #[test]
    fn message_credit_stays_a_hard_limit() {
        let mut budget = Budget::default();
        budget.grant(&proto::Credit { messages: 1, bytes: 1_000 });
        budget.spend(1);
        budget.grant(&proto::Credit { messages: 0, bytes: 1_000 });
        assert!(!budget.allows(1), "no message credit left, whatever the bytes");
    }
}
