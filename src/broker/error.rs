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
        meaning(code).grpc
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

/// What an error code means, to the broker, the client and the gateway
/// alike: the one table that decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meaning {
    /// The gRPC status code it travels as.
    pub grpc: Code,
    /// The HTTP status the gateway answers with: 4xx only where the call
    /// did nothing.
    pub http: u16,
    /// Whether the same request may succeed if sent again later (a
    /// producer retries these).
    pub retriable: bool,
    /// Whether the request definitely did nothing: a write answered so
    /// was not written, then or later (a client may report it failed, not
    /// unknown). False wherever the broker may have acted before the error
    /// (OUTCOME_UNKNOWN, storage and internal errors, and anything the
    /// transport produced, UNSPECIFIED).
    pub did_nothing: bool,
}

/// The meaning of every weir error code (see [`Meaning`]).
pub fn meaning(code: ErrorCode) -> Meaning {
    use ErrorCode as E;
    let (grpc, http, retriable, did_nothing) = match code {
        E::UnknownTopic | E::UnknownPartition | E::UnknownGroup => (Code::NotFound, 404, false, true),
        E::TopicAlreadyExists => (Code::AlreadyExists, 409, false, true),
        E::InvalidTopicName
        | E::InvalidTopicConfig
        | E::InvalidBatch
        | E::MessageTooLarge
        | E::InvalidGroup
        | E::InvalidRequest => (Code::InvalidArgument, 400, false, true),
        E::OffsetOutOfRange => (Code::OutOfRange, 416, false, true),
        // A group moved on without the caller (a commit fenced off): it
        // rejoins; nothing was committed.
        E::UnknownMember | E::IllegalGeneration | E::NotAssigned => (Code::FailedPrecondition, 409, false, true),
        E::RebalanceInProgress => (Code::Aborted, 409, false, true),
        E::OutOfOrderSequence | E::ProducerFenced => (Code::FailedPrecondition, 409, false, true),
        E::InternalTopic => (Code::PermissionDenied, 403, false, true),
        // Refused before the write was handed to Raft.
        E::NotLeader => (Code::FailedPrecondition, 503, true, true),
        E::PartitionUnavailable | E::CoordinatorLoading => (Code::Unavailable, 503, true, true),
        E::OutcomeUnknown => (Code::Unavailable, 503, true, false),
        E::MetadataUnavailable => (Code::Unavailable, 503, true, false),
        E::StorageFull => (Code::ResourceExhausted, 507, true, false),
        E::StorageFailed => (Code::Unavailable, 503, false, false),
        E::CorruptData => (Code::DataLoss, 500, false, false),
        E::Internal => (Code::Internal, 500, false, false),
        E::Unspecified => (Code::Internal, 500, true, false),
    };
    Meaning { grpc, http, retriable, did_nothing }
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
            LogError::Io { .. } | LogError::Read { .. } | LogError::Failed(_) => ErrorCode::StorageFailed,
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
            ProposeError::Indeterminate { leader, .. } => Self {
                code: ErrorCode::OutcomeUnknown,
                message: error.to_string(),
                leader: leader.as_ref().map(|(_, address)| address.clone()).filter(|a| !a.is_empty()),
            },
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
    use crate::raft::GroupId;

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
    fn only_codes_that_did_nothing_answer_4xx_and_an_unknown_outcome_is_retried() {
        for value in 0..=64 {
            let Ok(code) = ErrorCode::try_from(value) else { continue };
            let meaning = meaning(code);
            if (400..500).contains(&meaning.http) {
                assert!(meaning.did_nothing, "{code:?} answers {} but may have acted", meaning.http);
            }
        }
        let unknown = meaning(ErrorCode::OutcomeUnknown);
        assert!(unknown.retriable && !unknown.did_nothing && unknown.http == 503);
        let refused = meaning(ErrorCode::NotLeader);
        assert!(refused.retriable && refused.did_nothing);
    }

    #[test]
    fn a_batch_raft_lost_track_of_is_outcome_unknown_naming_the_new_leader() {
        let error = BrokerError::from(ProposeError::Indeterminate {
            group: GroupId { topic_id: 7, partition: 0 },
            leader: Some((2, "10.0.0.2:9092".into())),
            reason: "lost its leadership".into(),
        });
        assert_eq!(error.code, ErrorCode::OutcomeUnknown);
        assert_eq!(error.leader.as_deref(), Some("10.0.0.2:9092"));
        let status = Status::from(error.clone());
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(BrokerError::from_status(&status), error);
        let refused = BrokerError::from(ProposeError::Unavailable {
            group: GroupId { topic_id: 7, partition: 0 },
            reason: "x".into(),
        });
        assert_eq!(refused.code, ErrorCode::PartitionUnavailable);
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
