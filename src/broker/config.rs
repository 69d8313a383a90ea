//! Broker settings, from a TOML-free plain struct: the CLI fills it from a
//! config file, flags and the environment.

use crate::sys::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const LISTEN_DEFAULT: &str = "127.0.0.1:9092";
pub const METRICS_LISTEN_DEFAULT: &str = "127.0.0.1:9093";
/// `weir dev`'s HTTP gateway (a server's is off unless configured).
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:8080";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub broker_id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The address clients and other brokers reach this one at (unset: `listen`).
    pub advertise: Option<String>,
    /// etcd endpoints (`host:port`) of the cluster's metadata; none: a
    /// single broker on its embedded store.
    pub etcd: Vec<String>,
    /// The cluster's key prefix in etcd, so clusters can share one etcd.
    pub cluster_name: String,
    /// Replicas per partition when a topic does not say (capped at the live brokers).
    pub default_replication_factor: u32,
    /// A broker that has not renewed its registration for this long counts as gone.
    pub session_timeout_ms: u64,
    /// The controller replaces the replicas of a broker gone this long.
    pub replace_broker_after_ms: u64,
    /// The controller moves replicas from the most to the least loaded
    /// brokers (onto new brokers, for one); off: only operators move them.
    pub auto_balance: bool,
    /// A leader that is not its partition's preferred replica hands
    /// leadership over once that replica is back and caught up.
    pub prefer_leaders: bool,
    /// A broker asked to stop (SIGTERM, SIGINT) first hands the partitions
    /// it leads to caught-up followers, so producers move on at once
    /// instead of after an election timeout.
    pub hand_over_on_stop: bool,
    /// Where Prometheus scrapes `GET /metrics`; none (`"off"` in a config
    /// file): not served.
    #[serde(with = "address_or_off")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the HTTP/JSON gateway serves `/v1` (src/gateway); none
    /// (`"off"`, the default): not served.
    #[serde(with = "address_or_off")]
    pub http_listen: Option<SocketAddr>,
    /// Largest key + value + headers of one message.
    pub message_bytes_max: usize,
    /// Fetch byte budget when a request gives none.
    pub fetch_bytes_default: usize,
    pub fetch_bytes_max: usize,
    /// Cap on a long poll's wait.
    pub fetch_wait_ms_max: u32,
    /// How often retention runs: segments past `retention_ms` or
    /// `retention_bytes` are deleted at most this long after they qualify.
    pub retention_check_interval_ms: i64,
    /// Retention first runs this long after the broker starts (Kafka's
    /// `log.initial.task.delay.ms`): a host that boots with its clock
    /// ahead has this long to have it set right before data looks older
    /// than it is. (While the broker runs, a step forwards is absorbed
    /// slowly: see [`crate::sys::clock::SlewedClock`].)
    pub retention_initial_delay_ms: i64,
    /// Background scrubbing reads every replica's durable log and checks
    /// its CRCs at up to this many bytes a second (0: off), so damage at
    /// rest is repaired from peers before a reader or a restart needs it.
    pub scrub_bytes_per_sec: u64,
    /// A replica's scrub pass starts at most this often.
    pub scrub_interval_ms: i64,
    /// Committed offsets are snapshotted and older segments dropped once
    /// their partition outgrows this.
    pub offsets_bytes_max: u64,
    pub offsets_segment_bytes: u64,
}

/// An optional address as a config file writes it: `"host:port"` or `"off"`.
mod address_or_off {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::sys::net::SocketAddr;

    pub fn serialize<S: Serializer>(value: &Option<SocketAddr>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(address) => serializer.serialize_str(&address.to_string()),
            None => serializer.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "off" {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|e| D::Error::custom(format!("{text:?} is not host:port or \"off\": {e}")))
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            broker_id: 1,
            data_dir: PathBuf::from("weir-data"),
            listen: LISTEN_DEFAULT.parse().expect("valid default address"),
            advertise: None,
            etcd: Vec::new(),
            cluster_name: "weir".into(),
            default_replication_factor: 3,
            session_timeout_ms: 6_000,
            replace_broker_after_ms: 60_000,
            auto_balance: true,
            prefer_leaders: true,
            hand_over_on_stop: true,
            metrics_listen: Some(METRICS_LISTEN_DEFAULT.parse().expect("valid default address")),
            http_listen: None,
            message_bytes_max: 1 << 20,
            fetch_bytes_default: 1 << 20,
            fetch_bytes_max: 16 << 20,
            fetch_wait_ms_max: 30_000,
            retention_check_interval_ms: 60_000,
            retention_initial_delay_ms: 30_000,
            scrub_bytes_per_sec: 8 << 20,
            scrub_interval_ms: 6 * 3_600_000,
            offsets_bytes_max: 64 << 20,
            offsets_segment_bytes: 16 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_can_be_switched_off_in_a_config_file() {
        let off = BrokerConfig { metrics_listen: None, ..BrokerConfig::default() };
        let text = toml::to_string(&off).unwrap();
        assert!(text.contains("metrics_listen = \"off\""), "{text}");
        assert_eq!(toml::from_str::<BrokerConfig>(&text).unwrap(), off);

        let on: BrokerConfig = toml::from_str("metrics_listen = \"127.0.0.1:9500\"").unwrap();
        assert_eq!(on.metrics_listen, Some("127.0.0.1:9500".parse().unwrap()));
        let default: BrokerConfig = toml::from_str("broker_id = 2").unwrap();
        assert_eq!(default.metrics_listen, BrokerConfig::default().metrics_listen);

        let error = toml::from_str::<BrokerConfig>("metrics_listen = \"nowhere\"").unwrap_err();
        assert!(error.to_string().contains("nowhere"), "{error}");
    }
}
