//! weir: a distributed message queue with Raft-replicated partitions.
//!
//! See DESIGN.md in the project's shared notes and README.md for the picture;
//! modules are named after the concepts they hold.

pub mod cli;
pub mod log;
pub mod sys;

/// The public gRPC API, generated from `proto/weir.proto`.
pub mod proto {
    tonic::include_proto!("weir.v1");
}
