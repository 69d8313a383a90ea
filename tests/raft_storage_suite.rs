//! openraft's own storage test suite (`openraft::testing::Suite`, the
//! contract openraft relies on) against weir's Raft storage: the
//! `LogStore` over the partition log and its control file, and the
//! `StateMachine`, opened as `Replica::open` opens them, each case on a
//! fresh simulated disk.
//!
//! # Why case by case, and not `Suite::test_all`
//!
//! `test_all` runs every case in one go and stops at the first failure.
//! Nine of its 35 cases append entries that leave a hole in the log, which
//! the suite's in-memory reference stores (a `BTreeMap` by index) accept and
//! weir's log refuses:
//!
//! - eight append to an empty log (nothing purged, so its next entry is 0)
//!   entries that start at index 1 or 2, or skip an index (1 then 3);
//! - `get_initial_state_membership_from_log_and_sm` appends entry 1 after
//!   `get_initial_state` purged the log up to the state machine's last
//!   applied entry, 2: below the purge point.
//!
//! openraft's `RaftLogStorage` contract says "logs must be consecutive ...
//! there must NOT leave a hole in logs", and openraft itself only ever
//! appends right after the last log id (or after a snapshot that purged the
//! log). weir's log is the partition log: a hole would be a Raft index with
//! no batch and no control entry, and the next batch's message offset would
//! be wrong. So `LogStore::append` refuses such an append with an error.
//!
//! The 26 other cases (`transfer_snapshot` among them) run as they are. The
//! nine hole cases run too, and must fail exactly on that refusal (the
//! append error), nothing else: with the refusal lifted by hand (each
//! append to an empty log taken to start the log) all 35 pass.
//!
//! # Builds
//!
//! On tokio each case runs on a fresh multi-thread runtime, as openraft's
//! `run_fut` does. Under `--cfg madsim` each runs in a madsim runtime,
//! except the eight that wait for a purge with the real
//! `tokio::time::sleep` openraft calls (openraft depends on the real tokio
//! crate, whose timer has no reactor inside the simulator): those run in the
//! real build only.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageIOError};
use weir::log::{FlushPolicy, LogConfig, PartitionLog};
use weir::raft::types::{StorageError, TypeConfig};
use weir::raft::{LogStore, StateMachine};
use weir::sys::clock::{Clock, ManualClock};
use weir::sys::disk::{Disk, SimDisk};

const DIR: &str = "/data/partition";
/// How `LogStore::append` words its refusal of a hole.
const HOLE_REFUSAL: &str = "but the log ends before";

fn storage_error(e: impl ToString) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

/// Opens a group's storage on a new simulated disk, as `Replica::open`
/// does (with the broker's flush policy: Raft decides when to fsync). The
/// guard is the disk.
#[derive(Default)]
struct SimDiskStore {
    builds: AtomicU64,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, SimDisk> for SimDiskStore {
    async fn build(&self) -> Result<(SimDisk, LogStore, StateMachine), StorageError> {
        let disk = SimDisk::new(self.builds.fetch_add(1, Ordering::Relaxed));
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        let clock: Arc<dyn Clock> = ManualClock::new(1_700_000_000_000);
        let config = LogConfig { flush: FlushPolicy::Explicit, ..LogConfig::default() };
        let dir = Path::new(DIR);
        let log = PartitionLog::open(shared.clone(), dir, config, clock).map_err(storage_error)?;
        let log_store = LogStore::open(shared.clone(), dir, log).map_err(storage_error)?;
        let state_machine = StateMachine::open(shared, dir, log_store.clone()).map_err(storage_error)?;
        Ok((disk, log_store, state_machine))
    }
}

type WeirSuite = Suite<TypeConfig, LogStore, StateMachine, SimDiskStore, SimDisk>;

/// Runs `f` to completion on a runtime of its own.
fn block_on<F: Future>(f: F) -> F::Output {
    #[cfg(not(madsim))]
    {
        tokio::runtime::Runtime::new().expect("a tokio runtime").block_on(f)
    }
    #[cfg(madsim)]
    {
        madsim::runtime::Runtime::new().block_on(f)
    }
}

/// Runs one suite case on freshly built storage.
fn run_case<F, Fu>(case: F) -> Result<(), Box<StorageError>>
where
    F: FnOnce(LogStore, StateMachine) -> Fu,
    Fu: Future<Output = Result<(), StorageError>>,
{
    block_on(async {
        let (_disk, log_store, state_machine) = SimDiskStore::default().build().await?;
        case(log_store, state_machine).await
    })
    .map_err(Box::new)
}

/// Cases weir's storage must pass as they are.
macro_rules! conforming {
    ($($(#[$attr:meta])* $case:ident),* $(,)?) => { $(
        $(#[$attr])*
        #[test]
        fn $case() {
            run_case(WeirSuite::$case).expect(concat!("suite case ", stringify!($case)));
        }
    )* };
}

/// Cases that append with a hole: they must fail on the refusal, and on
/// nothing else (see the module doc).
macro_rules! appends_a_hole {
    ($($case:ident),* $(,)?) => { $(
        #[test]
        fn $case() {
            let result = run_case(WeirSuite::$case);
            let refused = matches!(&result, Err(e) if e.to_string().contains(HOLE_REFUSAL));
            assert!(refused, "expected the hole to be refused, got {result:?}");
        }
    )* };
}

// In the order of `Suite::test_store` (openraft 0.9.25); the hole cases
// are listed below.
conforming!(
    last_membership_in_log_initial,
    get_membership_initial,
    get_membership_from_empty_log_and_sm,
    get_initial_state_without_init,
    get_initial_state_with_state,
    get_initial_state_last_log_gt_sm,
    get_initial_state_log_ids,
    save_vote,
    get_log_entries,
    limited_get_log_entries,
    #[cfg(not(madsim))]
    try_get_log_entry,
    initial_logs,
    #[cfg(not(madsim))]
    get_log_state,
    #[cfg(not(madsim))]
    get_log_id,
    #[cfg(not(madsim))]
    last_id_in_log,
    last_applied_state,
    #[cfg(not(madsim))]
    purge_logs_upto_0,
    #[cfg(not(madsim))]
    purge_logs_upto_5,
    #[cfg(not(madsim))]
    purge_logs_upto_20,
    delete_logs_since_11,
    delete_logs_since_0,
    #[cfg(not(madsim))]
    append_to_log,
    snapshot_meta,
    apply_single,
    apply_multiple,
);

appends_a_hole!(
    last_membership_in_log,
    last_membership_in_log_multi_step,
    get_membership_from_log_and_empty_sm,
    get_membership_from_log_le_sm_last_applied,
    get_membership_from_log_gt_sm_last_applied_1,
    get_membership_from_log_gt_sm_last_applied_2,
    get_initial_state_membership_from_log_and_sm,
    get_initial_state_last_log_lt_sm,
    get_initial_state_re_apply_committed,
);

#[test]
fn transfer_snapshot() {
    block_on(WeirSuite::transfer_snapshot(&SimDiskStore::default())).expect("suite case transfer_snapshot");
}
