//! The checkers can fail: each planted bug (`weir::sys::planted`) must be
//! caught within 200 seeds by a rule meant for it (`weir_sim::planted`), on
//! a seed that passes without the bug, or this test fails. A checker that passes a
//! history from a broker that acknowledges before commit, skips fsync,
//! serves uncommitted reads, forgets its idempotence table, truncates
//! committed entries or accepts stale commits is itself broken.

#![cfg(madsim)]
// Runs the simulator binary: processes outside the seam, by design.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::process::Command;

#[test]
fn every_planted_bug_is_caught_within_200_seeds() {
    let output = Command::new(env!("CARGO_BIN_EXE_weir-sim"))
        .args(["planted", "--seeds", "0..200", "--secs", "60", "--jobs", "2"])
        .arg("--out")
        .arg(std::env::temp_dir().join("weir-sim-planted"))
        .env_remove("RUST_LOG")
        .output()
        .expect("weir-sim runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    let caught = stdout.lines().filter(|l| l.starts_with("planted ") && l.contains(": caught by seed ")).count();
    assert!(
        output.status.success() && caught == weir::sys::planted::Bug::ALL.len(),
        "not every bug was caught:\n{stdout}"
    );
}
