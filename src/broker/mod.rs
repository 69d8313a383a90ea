//! The broker: topics and partitions on this node, served over gRPC.

pub mod config;
pub mod controller;
mod core;
pub mod data_dir;
pub mod error;
pub mod metrics;
pub mod partition;
pub mod server;
mod service;
pub mod stop;
pub mod subscription;

pub use config::BrokerConfig;
pub use core::Broker;
pub use error::{BrokerError, BrokerResult, ErrorCode};
