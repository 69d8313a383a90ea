//! Prometheus metrics: produce and fetch rates, bytes and latency
//! histograms, and, computed at scrape time, partition sizes and consumer
//! group lag. Served as text on `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::core::Broker;
use crate::group::GroupCoordinator;
use crate::sys::listener::TcpListener;

/// Latency bucket bounds, in seconds.
const BUCKETS_SECONDS: [f64; 13] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// A scrape request larger than this is refused.
const REQUEST_BYTES_MAX: usize = 8 << 10;
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A latency histogram with Prometheus' cumulative buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_SECONDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS_SECONDS.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_SECONDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub produce_requests: AtomicU64,
    pub produce_errors: AtomicU64,
    pub produce_records: AtomicU64,
    pub produce_bytes: AtomicU64,
    pub produce_latency: Histogram,
    pub fetch_requests: AtomicU64,
    pub fetch_errors: AtomicU64,
    pub fetch_records: AtomicU64,
    pub fetch_bytes: AtomicU64,
    /// Fetches that returned data (long polls that waited are not latency).
    pub fetch_latency: Histogram,
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// The Prometheus text exposition of everything.
    pub fn render(&self, broker: &Broker, groups: Option<&GroupCoordinator>) -> String {
        let mut out = String::new();
        counter(&mut out, "weir_produce_requests_total", "Produce requests.", &self.produce_requests);
        counter(&mut out, "weir_produce_errors_total", "Produce requests that failed.", &self.produce_errors);
        counter(&mut out, "weir_produce_records_total", "Records produced.", &self.produce_records);
        counter(&mut out, "weir_produce_bytes_total", "Record batch bytes produced.", &self.produce_bytes);
        self.produce_latency.render(&mut out, "weir_produce_latency_seconds", "Produce latency, to the ack.");
        counter(&mut out, "weir_fetch_requests_total", "Fetch requests.", &self.fetch_requests);
        counter(&mut out, "weir_fetch_errors_total", "Fetch requests that failed.", &self.fetch_errors);
        counter(&mut out, "weir_fetch_records_total", "Records fetched.", &self.fetch_records);
        counter(&mut out, "weir_fetch_bytes_total", "Record bytes fetched.", &self.fetch_bytes);
        self.fetch_latency.render(&mut out, "weir_fetch_latency_seconds", "Latency of fetches that returned data.");

        let _ = writeln!(out, "# HELP weir_partition_high_watermark Offset consumers read up to.");
        let _ = writeln!(out, "# TYPE weir_partition_high_watermark gauge");
        let (mut sizes, mut repairing, mut repairs) = (String::new(), String::new(), String::new());
        let (mut losses, mut lost_offsets) = (String::new(), String::new());
        for partition in broker.partitions() {
            let labels = format!("topic=\"{}\",partition=\"{}\"", label(partition.topic()), partition.index());
            let _ = writeln!(out, "weir_partition_high_watermark{{{labels}}} {}", partition.high_watermark());
            if let Ok(description) = partition.describe() {
                let _ = writeln!(sizes, "weir_partition_size_bytes{{{labels}}} {}", description.size_bytes);
            }
            let now = u8::from(partition.replica().repairing());
            let _ = writeln!(repairing, "weir_partition_repairing{{{labels}}} {now}");
            let total = broker.repairs(partition.replica().group());
            let _ = writeln!(repairs, "weir_partition_repairs_total{{{labels}}} {total}");
            let lost = broker.losses(partition.replica().group());
            let _ = writeln!(losses, "weir_partition_durable_losses_total{{{labels}}} {}", lost.times);
            let _ = writeln!(lost_offsets, "weir_partition_lost_offsets_total{{{labels}}} {}", lost.offsets);
        }
        let families = [
            ("weir_partition_size_bytes", "gauge", "Bytes a partition's log holds.", &sizes),
            (
                "weir_partition_repairing",
                "gauge",
                "1 while the replica waits for its leader to repair damage at rest.",
                &repairing,
            ),
            (
                "weir_partition_repairs_total",
                "counter",
                "Damage at rest found in the replica and repaired from peers.",
                &repairs,
            ),
            (
                "weir_partition_durable_losses_total",
                "counter",
                "Recoveries that found records this replica had made durable lost at rest.",
                &losses,
            ),
            (
                "weir_partition_lost_offsets_total",
                "counter",
                "Offsets this replica had made durable and lost at rest (peers may repair them).",
                &lost_offsets,
            ),
        ];
        for (name, kind, help, samples) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{samples}");
        }
        let passes = broker.scrub_passes();
        let _ = writeln!(out, "# HELP weir_scrub_passes_total Replica logs scrubbed whole without finding damage.");
        let _ = writeln!(out, "# TYPE weir_scrub_passes_total counter\nweir_scrub_passes_total {passes}");

        let _ =
            writeln!(out, "# HELP weir_group_lag Messages between a group's committed offset and the high watermark.");
        let _ = writeln!(out, "# TYPE weir_group_lag gauge");
        for group in groups.map(|g| g.list().unwrap_or_default()).unwrap_or_default() {
            for p in &group.partitions {
                let _ = writeln!(
                    out,
                    "weir_group_lag{{group=\"{}\",topic=\"{}\",partition=\"{}\"}} {}",
                    label(&group.group),
                    label(&p.topic),
                    p.partition,
                    p.lag
                );
            }
        }
        if let Some(groups) = groups {
            let _ = writeln!(
                out,
                "# HELP weir_group_offsets_skipped_records Records of the offsets partition the coordinator skipped \
                 at its last load: they did not decode as offset commits."
            );
            let skipped = groups.offsets_skipped();
            let _ = writeln!(
                out,
                "# TYPE weir_group_offsets_skipped_records gauge\nweir_group_offsets_skipped_records {skipped}"
            );
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    broker: Arc<Broker>,
    groups: super::service::GroupsReady,
) {
    if let Ok(listen) = listener.local_addr() {
        tracing::info!(%listen, "serving Prometheus metrics on /metrics");
    }
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let (metrics, broker, groups) = (metrics.clone(), broker.clone(), groups.clone());
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < REQUEST_BYTES_MAX {
                match tokio::time::timeout(REQUEST_READ_TIMEOUT, stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => request.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let (status, body) = if request.starts_with(b"GET /metrics ") || request.starts_with(b"GET /metrics?") {
                let opened = groups.borrow().clone();
                ("200 OK", metrics.render(&broker, opened.as_deref()))
            } else {
                ("404 Not Found", "weir serves GET /metrics\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
        });
    }
}
