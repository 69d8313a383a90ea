//! Every schedule with which the simulator once found a real bug (in weir,
//! or in a checker), replayed.
//!
//! Each is kept as a recorded plan in `sim/plans/` (`Plan::parse`): the
//! cluster, the workload's shape and the fault schedule the seed drew when
//! it found the bug, with the bug named in its first line. The plans of
//! seeds found before the plan generator last changed were rebuilt from the
//! generator of that time. A plan replays its faults whatever its seed draws
//! later; the simulation's own timings still move with the code, which is
//! why the focused tests each plan's comment names pin every bug down
//! independently of schedules.
//!
//! Each plan runs in a process of its own (`weir-sim run --plan`), as a
//! sweep runs a seed: only then does a run replay exactly (see
//! `sim/src/main.rs`).

#![cfg(madsim)]
// Runs the simulator binary: processes outside the seam, by design.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn plans() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plans");
    let mut plans: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sim/plans")
        .map(|entry| entry.expect("a plan").path())
        .filter(|path| path.extension().is_some_and(|e| e == "plan"))
        .collect();
    plans.sort();
    plans
}

fn sim(args: &[&str], history: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_weir-sim"))
        .args(args)
        .arg("--history")
        .arg(history)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir-sim starts")
}

fn result_line(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout.lines().find(|l| l.starts_with("RESULT ")).unwrap_or("no RESULT line").to_owned()
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

#[test]
fn schedules_that_found_bugs_now_pass() {
    let plans = plans();
    assert!(plans.len() >= 17, "the recorded plans are missing: {plans:?}");
    let mut failed = Vec::new();
    // Two at a time: one per core.
    for pair in plans.chunks(2) {
        let running: Vec<_> = pair
            .iter()
            .map(|plan| {
                let name = plan.file_stem().and_then(|s| s.to_str()).unwrap_or("plan").to_owned();
                let history = std::env::temp_dir().join(format!("weir-sim-regression-{name}.edn"));
                let plan_arg = plan.to_str().expect("a UTF-8 path");
                (plan, history.clone(), sim(&["run", "--plan", plan_arg], &history))
            })
            .collect();
        for (plan, history, child) in running {
            let output = child.wait_with_output().expect("weir-sim runs");
            let result = result_line(&output);
            println!("{}: {result}", plan.display());
            if !output.status.success() || field(&result, "valid") != Some("true") {
                println!("{}", String::from_utf8_lossy(&output.stdout));
                let found = std::fs::read_to_string(plan).unwrap_or_default();
                let bug = found.lines().next().unwrap_or("").to_owned();
                failed.push(format!("{} ({bug}): {result}", plan.display()));
            } else {
                let _ = std::fs::remove_file(&history);
                let _ = std::fs::remove_file(history.with_extension("assigned.edn"));
            }
        }
    }
    assert!(failed.is_empty(), "schedules failing again:\n{}", failed.join("\n"));
}

/// A plan's text is the whole of its schedule: the plan a seed draws,
/// written out and run from the file, gives the very outcome the seed
/// gives (the same fingerprint of history, logs, replicas and verdict).
#[test]
fn a_recorded_plan_runs_exactly_as_its_seed() {
    let seed = "3";
    let dir = std::env::temp_dir().join(format!("weir-sim-plan-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let text = Command::new(env!("CARGO_BIN_EXE_weir-sim"))
        .args(["plan", "--seed", seed, "--secs", "20"])
        .output()
        .expect("weir-sim plan");
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let plan = dir.join("seed-3.plan");
    std::fs::write(&plan, &text.stdout).expect("the plan written");
    let by_seed = sim(&["run", "--seed", seed, "--secs", "20"], &dir.join("by-seed.edn"));
    let by_plan = sim(&["run", "--plan", plan.to_str().expect("a UTF-8 path")], &dir.join("by-plan.edn"));
    let (by_seed, by_plan) =
        (result_line(&by_seed.wait_with_output().unwrap()), result_line(&by_plan.wait_with_output().unwrap()));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(field(&by_seed, "hash").is_some(), "{by_seed}");
    assert_eq!(field(&by_seed, "hash"), field(&by_plan, "hash"), "\nby seed: {by_seed}\nby plan: {by_plan}");
}
