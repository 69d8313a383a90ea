//! The seam: the only place in weir that touches the world.
//!
//! Time, randomness, the file system, the async runtime and the network enter
//! weir here, so the same broker code runs on real hosts and, built with
//! `RUSTFLAGS="--cfg madsim"`, inside the deterministic simulator. clippy's
//! `disallowed-methods` / `disallowed-types` (clippy.toml) forbid the direct
//! routes everywhere else; this module alone is allowed them.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod clock;
pub mod disk;
pub mod listener;
pub mod net;
pub mod planted;
pub mod process;
pub mod raft_runtime;
pub mod reflection;
pub mod rng;
pub mod task;
