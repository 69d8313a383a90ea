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

    impl Record {
        /// The bytes a record counts against byte budgets and credit, on
        /// both ends: key, value and headers.
        pub fn payload_bytes(&self) -> u64 {
            let key = self.key.as_ref().map_or(0, Vec::len);
            let value = self.value.as_ref().map_or(0, Vec::len);
            let headers: usize = self.headers.iter().map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len)).sum();
            (key + value + headers) as u64
        }
    }
}
