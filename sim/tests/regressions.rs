//! Every seed with which the simulator once found a real bug (in weir, or
//! in a checker), replayed.
//!
//! Each seed runs in a process of its own (`weir-sim run`), as the sweep ran
//! it: only then does a seed replay exactly (see `sim/src/main.rs`). A seed
//! replays the schedule that found its bug only as long as the code draws
//! the same random numbers in the same order; later changes move it onto
//! other schedules, which are then checked as well. The focused tests named
//! below pin each bug down independently of the schedule.

#![cfg(madsim)]
// Runs the simulator binary: processes outside the seam, by design.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::process::{Command, Stdio};

/// (seed, simulated seconds of faults, the bug and where it is pinned down).
const SEEDS: &[(u64, u64, &str)] = &[
    (1, 60, "a new coordinator restarted generations at 1 (groups_e2e: relative generations)"),
    (17, 60, "a group formed before its topic never got partitions (groups_e2e)"),
    (27, 60, "a withdrawn coordinator's commit landed after its successor loaded the offsets"),
    (29, 60, "a group formed before its topic never got partitions (groups_e2e)"),
    (35, 60, "a group formed before its topic never got partitions (groups_e2e)"),
    (56, 60, "a partition balanced before any replica started its group (topics.rs unit test)"),
    (98, 60, "a removed replica deleted while a voter lagged; committed entries lost (cluster_moves)"),
    (325, 60, "an offset fetch answered while an old generation's commit was in flight"),
    (751, 60, "an offset fetch answered while an old generation's commit was in flight"),
    (5727, 60, "a move replaced before its confirmation: two voters deleted their replicas (topics.rs unit test)"),
    (7359, 60, "a move replaced before its confirmation, then a full disk (as 5727)"),
    (299, 60, "two replicas damaged before the first was repaired: no leader (one replica at a time; hand-over)"),
    (218, 60, "a damaged leader and a damaged follower refused the intact replica their votes (cluster_damage)"),
    (247, 60, "damage to the last batch of a running replica: it stopped abstaining at once and was elected without it (raft_cluster)"),
    (2581, 60, "a stale replica's campaigns kept the only electable one a term behind: no leader for minutes (pre-vote; raft_cluster)"),
    (614, 60, "the checker's own: durable-majority judged by an uncommitted joint configuration (voter_sets: the applied one)"),
    (760, 60, "the checker's own: durable-majority judged by an uncommitted joint configuration (as 614)"),
];

#[test]
fn seeds_that_found_bugs_now_pass() {
    let mut failed = Vec::new();
    // Two at a time: one per core.
    for pair in SEEDS.chunks(2) {
        let running: Vec<_> = pair
            .iter()
            .map(|&(seed, secs, bug)| {
                let child = Command::new(env!("CARGO_BIN_EXE_weir-sim"))
                    .args(["run", "--seed", &seed.to_string(), "--secs", &secs.to_string()])
                    .arg("--history")
                    .arg(std::env::temp_dir().join(format!("weir-sim-regression-{seed}.edn")))
                    .env_remove("RUST_LOG")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("weir-sim starts");
                (seed, bug, child)
            })
            .collect();
        for (seed, bug, child) in running {
            let output = child.wait_with_output().expect("weir-sim runs");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let result = stdout.lines().find(|l| l.starts_with("RESULT ")).unwrap_or("no RESULT line");
            println!("{result}");
            if !output.status.success() || !result.contains("valid=true") {
                println!("{stdout}");
                failed.push(format!("seed {seed} ({bug}): {result}"));
            } else {
                let _ = std::fs::remove_file(std::env::temp_dir().join(format!("weir-sim-regression-{seed}.edn")));
            }
        }
    }
    assert!(failed.is_empty(), "seeds failing again:\n{}", failed.join("\n"));
}
