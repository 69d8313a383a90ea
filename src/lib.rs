//! weir: a distributed message queue with Raft-replicated partitions.
//!
//! See DESIGN.md in the project's shared notes and README.md for the picture;
//! modules are named after the concepts they hold.

pub mod broker;
pub mod cli;
pub mod client;
pub mod gateway;
pub mod group;
pub mod log;
pub mod meta;
pub mod raft;
pub mod sys;

/// The public gRPC API, generated from `proto/weir.proto`.
pub mod proto {
    tonic::include_proto!("weir.v1");

    /// The compiled `weir.proto`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weir_descriptor.bin"));
}
