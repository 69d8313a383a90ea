//! Consumer groups: members of one group share a topic's partitions (each
//! message to one member); different groups each read everything. Offsets
//! are committed into the broker's own log, fenced by generation.

pub mod assignor;
pub mod coordinator;
pub mod offsets;

pub use coordinator::GroupCoordinator;
