//! Broker errors: each carries a stable weir [`ErrorCode`] (append-only, in
//! the proto) and maps to the gRPC status code that fits. The status message
//! names the problem; its metadata carries `weir-error-code` and `weir-error`.

use tonic::{Code, Status};

use crate::log::LogError;
use crate::meta::topics::TopicError;
use crate::meta::MetaError;
pub use crate::proto::ErrorCode;
use crate::raft::ProposeError;

pub const ERROR_CODE_METADATA: &str = "weir-error-code";
pub const ERROR_NAME_METADATA: &str = "weir-error";
pub const LEADER_METADATA: &str = "weir-leader";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError {
    pub code: ErrorCode,
    pub message: String,
    /// With [`ErrorCode::NotLeader`]: the leader's address, if known.
    pub leader: Option<String>,
}

pub type BrokerResult<T> = Result<T, BrokerError>;

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str_name())
    }
}

impl std::error::Error for BrokerError {}

impl BrokerError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), leader: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn unknown_topic(topic: &str) -> Self {
        Self::new(ErrorCode::UnknownTopic, format!("topic {topic:?} does not exist"))
    }

    /// The gRPC status code for a weir error code.
    pub fn grpc_code(code: ErrorCode) -> Code {
        match code {
            ErrorCode::UnknownTopic | ErrorCode::UnknownPartition | ErrorCode::UnknownGroup => Code::NotFound,
            ErrorCode::UnknownMember
            | ErrorCode::IllegalGeneration
            | ErrorCode::NotAssigned
            | ErrorCode::NotLeader
            | ErrorCode::OutOfOrderSequence
            | ErrorCode::ProducerFenced => Code::FailedPrecondition,
            ErrorCode::RebalanceInProgress => Code::Aborted,
            ErrorCode::TopicAlreadyExists => Code::AlreadyExists,
            ErrorCode::InvalidTopicName
            | ErrorCode::InvalidTopicConfig
            | ErrorCode::InvalidBatch
            | ErrorCode::MessageTooLarge
            | ErrorCode::InvalidGroup
            | ErrorCode::InvalidRequest => Code::InvalidArgument,
            ErrorCode::OffsetOutOfRange => Code::OutOfRange,
            ErrorCode::StorageFull => Code::ResourceExhausted,
            ErrorCode::StorageFailed
            | ErrorCode::MetadataUnavailable
            | ErrorCode::PartitionUnavailable
            | ErrorCode::CoordinatorLoading => Code::Unavailable,
            ErrorCode::InternalTopic => Code::PermissionDenied,
            ErrorCode::CorruptData => Code::DataLoss,
            ErrorCode::Internal | ErrorCode::Unspecified => Code::Internal,
        }
    }

    /// Reads the weir error back out of a status (client side).
    pub fn from_status(status: &Status) -> Self {
        let code = status
            .metadata()
            .get(ERROR_CODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .and_then(|v| ErrorCode::try_from(v).ok())
            .unwrap_or(ErrorCode::Unspecified);
        let leader = status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Self { code, message: status.message().to_owned(), leader }
    }
}

/// A status the gRPC transport produced before weir saw the request,
/// typed as weir's: a request over the decode limit is MESSAGE_TOO_LARGE
/// (tonic answers a bare `OUT_OF_RANGE`, the code weir uses for an offset
/// out of range). Everything else passes unchanged (`None`).
pub fn typed_transport_status(status: &Status) -> Option<Status> {
    let too_large = status.code() == Code::OutOfRange
        && status.metadata().get(ERROR_CODE_METADATA).is_none()
        && status.message().contains("message length too large");
    too_large.then(|| {
        BrokerError::new(
            ErrorCode::MessageTooLarge,
            format!("the request is larger than this broker accepts: {}", status.message()),
        )
        .into()
    })
}

impl From<BrokerError> for Status {
    fn from(error: BrokerError) -> Self {
        let mut status = Status::new(BrokerError::grpc_code(error.code), error.message);
        let metadata = status.metadata_mut();
        metadata.insert(ERROR_CODE_METADATA, (error.code as i32).into());
        if let Ok(name) = error.code.as_str_name().parse() {
            metadata.insert(ERROR_NAME_METADATA, name);
        }
        if let Some(leader) = error.leader.as_deref().and_then(|l| l.parse().ok()) {
            metadata.insert(LEADER_METADATA, leader);
        }
        status
    }
}

impl From<LogError> for BrokerError {
    fn from(error: LogError) -> Self {
        let code = match &error {
            LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            LogError::Corrupt { .. } => ErrorCode::CorruptData,
            LogError::Io { .. } | LogError::Failed(_) => ErrorCode::StorageFailed,
            LogError::NoSpace { .. } => ErrorCode::StorageFull,
            LogError::InvalidBatch(_) => ErrorCode::InvalidBatch,
            LogError::NotBatchBoundary { .. } | LogError::Config(_) => ErrorCode::Internal,
        };
        Self::new(code, error.to_string())
    }
}

impl From<ProposeError> for BrokerError {
    fn from(error: ProposeError) -> Self {
        match &error {
            ProposeError::NotLeader { leader: Some((_, address)), .. } => {
                Self { code: ErrorCode::NotLeader, message: error.to_string(), leader: Some(address.clone()) }
            }
            ProposeError::NotLeader { leader: None, .. } | ProposeError::Unavailable { .. } => {
                Self::new(ErrorCode::PartitionUnavailable, error.to_string())
            }
            ProposeError::OutOfOrderSequence { .. } => Self::new(ErrorCode::OutOfOrderSequence, error.to_string()),
            ProposeError::ProducerFenced { .. } => Self::new(ErrorCode::ProducerFenced, error.to_string()),
        }
    }
}

impl From<MetaError> for BrokerError {
    fn from(error: MetaError) -> Self {
        Self::new(ErrorCode::MetadataUnavailable, error.to_string())
    }
}

impl From<TopicError> for BrokerError {
    fn from(error: TopicError) -> Self {
        let code = match &error {
            TopicError::InvalidName { .. } => ErrorCode::InvalidTopicName,
            TopicError::InvalidConfig { .. } => ErrorCode::InvalidTopicConfig,
            TopicError::AlreadyExists(_) => ErrorCode::TopicAlreadyExists,
            TopicError::Unknown(_) => ErrorCode::UnknownTopic,
            TopicError::Meta(_) => ErrorCode::MetadataUnavailable,
        };
        Self::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_the_weir_code() {
        let error = BrokerError::unknown_topic("nope");
        let status = Status::from(error.clone());
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("nope"));
        assert_eq!(status.metadata().get(ERROR_NAME_METADATA).unwrap(), "UNKNOWN_TOPIC");
        assert_eq!(BrokerError::from_status(&status), error);
    }

    #[test]
    fn not_leader_carries_the_leader_address() {
        let error = BrokerError {
            code: ErrorCode::NotLeader,
            message: "ask the leader".into(),
            leader: Some("10.0.0.7:9092".into()),
        };
        let status = Status::from(error.clone());
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.metadata().get(LEADER_METADATA).unwrap(), "10.0.0.7:9092");
        assert_eq!(BrokerError::from_status(&status), error);
    }
}
