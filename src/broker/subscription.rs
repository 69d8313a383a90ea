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
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    messages: u64,
    /// `None` until the first byte credit: until then only messages count.
    bytes: Option<u64>,
}

impl Budget {
    pub fn grant(&mut self, credit: &proto::Credit) {
        self.messages = self.messages.saturating_add(credit.messages);
        if credit.bytes > 0 {
            self.bytes = Some(self.bytes.unwrap_or(0).saturating_add(credit.bytes));
        }
    }

    /// Whether a record of `size` bytes may be sent now.
    pub fn allows(&self, size: u64) -> bool {
        self.messages > 0 && self.bytes.is_none_or(|bytes| bytes >= size)
    }

    pub fn spend(&mut self, size: u64) {
        assert!(self.allows(size), "spending credit that was not granted");
        self.messages -= 1;
        if let Some(bytes) = self.bytes.as_mut() {
            *bytes -= size;
        }
    }

    fn read_bytes(&self) -> u64 {
        self.bytes.unwrap_or(READ_BYTES_MAX).clamp(1, READ_BYTES_MAX)
    }
}

/// The bytes a record counts against byte credit: key, value and headers.
pub fn record_bytes(record: &proto::Record) -> u64 {
    let key = record.key.as_ref().map_or(0, Vec::len);
    let value = record.value.as_ref().map_or(0, Vec::len);
    let headers: usize = record.headers.iter().map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len)).sum();
    (key + value + headers) as u64
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
                // The next record is larger than the byte credit left:
                // nothing moves until the subscriber grants more.
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
                let size = record_bytes(&record);
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
        budget.grant(&proto::Credit { messages: 2, bytes: 0 });
        assert!(budget.allows(1_000_000), "no byte credit granted yet: only messages count");
        budget.spend(10);
        budget.grant(&proto::Credit { messages: 0, bytes: 15 });
        assert!(budget.allows(15));
        assert!(!budget.allows(16));
        budget.spend(15);
        assert!(!budget.allows(0), "both budgets spent");
        budget.grant(&proto::Credit { messages: 1, bytes: 0 });
        assert!(budget.allows(0) && !budget.allows(1), "byte limit stays once granted");
    }
}
