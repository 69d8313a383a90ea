//! weir's simulator: whole clusters of the real broker code inside madsim,
//! driven by one seed each (see `sim/README.md`). The cluster harness here
//! is shared with the cluster tests in `tests/`.

pub mod availability;
pub mod checker;
pub mod cluster;
#[cfg(madsim)]
pub mod damage;
pub mod etcd;
pub mod history;
#[cfg(not(madsim))]
pub mod nemesis;
pub mod plan;
pub mod planted;
#[cfg(madsim)]
pub mod run;
pub mod workload;
