//! `weir-sim`: runs seeds of the simulated cluster (see `sim/README.md`).
//!
//! Each seed runs in a process of its own. That is what makes a seed
//! replay exactly: tokio's and futures' `select!` fairness generators are
//! seeded from process-wide counters, so the same seed run later in one
//! process takes other branches than it did first (we measured this).
//!
//! ```text
//! weir-sim run --seed 7 [--secs 60] [--history FILE]
//! weir-sim run --plan sim/plans/seed-98.plan [--history FILE]
//! weir-sim plan --seed 7 [--secs 60] [--brokers B]
//! weir-sim sweep --seeds 0..1000 [--jobs 2] [--secs 60] [--out DIR]
//! weir-sim determinism --seed 7 | --seeds 0..10 [--secs 20]
//! weir-sim planted [--seeds 0..200] [--secs 60] [--plant NAME]
//! ```
//!
//! `--plant NAME` runs with one of the planted bugs of `weir::sys::planted`
//! switched on; `planted` hunts each planted bug through the seeds in order
//! and fails unless every one is caught.

#[cfg(not(madsim))]
fn main() {
    eprintln!("weir-sim runs inside the simulator: build it with RUSTFLAGS=\"--cfg madsim\" (see sim/README.md)");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    runner::main()
}

// The runner drives processes, files and wall-clock waits around the
// simulation; none of it is broker code under the seam.
#[cfg(madsim)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod runner {
    use std::io::Write as _;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use weir::sys::planted::{self, Bug};
    use weir_sim::history::{fingerprint, remove_edn, write_edn};
    use weir_sim::plan::Plan;

    const USAGE: &str = "usage: weir-sim run --seed N [--secs S] [--brokers B] [--history FILE]\n       \
                         weir-sim run --plan FILE [--history FILE]\n       \
                         weir-sim plan --seed N [--secs S] [--brokers B]\n       \
                         weir-sim sweep --seeds A..B [--jobs J] [--secs S] [--brokers B] [--minutes M] [--out DIR]\n       \
                         weir-sim determinism --seed N | --seeds A..B [--secs S] [--brokers B]\n       \
                         weir-sim planted [--seeds A..B] [--jobs J] [--secs S] [--plant BUG]\n\
                         run, sweep and determinism also take --plant BUG";

    #[derive(Clone)]
    struct Args {
        command: String,
        seed: u64,
        seeds: std::ops::Range<u64>,
        secs: u64,
        jobs: usize,
        brokers: Option<u64>,
        /// A sweep starts no seed after this many minutes.
        minutes: Option<u64>,
        history: Option<PathBuf>,
        /// A recorded plan to run instead of the seed's (`Plan::parse`).
        plan: Option<PathBuf>,
        out: PathBuf,
        /// A planted bug switched on in every seed's process.
        plant: Option<Bug>,
    }

    fn parse() -> Result<Args, String> {
        let mut raw = std::env::args().skip(1);
        let command = raw.next().ok_or("no command")?;
        let mut args = Args {
            command,
            seed: 0,
            seeds: 0..0,
            secs: 60,
            jobs: 2,
            brokers: None,
            minutes: None,
            history: None,
            plan: None,
            out: PathBuf::from("target/sim"),
            plant: None,
        };
        while let Some(flag) = raw.next() {
            let value = raw.next().ok_or(format!("{flag} needs a value"))?;
            let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
            match flag.as_str() {
                "--seed" => args.seed = number(&value)?,
                "--secs" => args.secs = number(&value)?,
                "--jobs" => args.jobs = number(&value)?.max(1) as usize,
                "--brokers" => args.brokers = Some(number(&value)?),
                "--minutes" => args.minutes = Some(number(&value)?),
                "--history" => args.history = Some(PathBuf::from(value)),
                "--plan" => args.plan = Some(PathBuf::from(value)),
                "--out" => args.out = PathBuf::from(value),
                "--plant" => {
                    let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                    let bug = Bug::parse(&value).ok_or(format!("--plant {value}: one of {}", names.join(", ")))?;
                    args.plant = Some(bug);
                }
                "--seeds" => {
                    let (a, b) = value.split_once("..").ok_or(format!("--seeds {value}: expected A..B"))?;
                    args.seeds = number(a)?..number(b)?;
                }
                other => return Err(format!("unknown flag {other}")),
            }
        }
        Ok(args)
    }

    pub fn main() {
        let args = match parse() {
            Ok(args) => args,
            Err(error) => {
                eprintln!("weir-sim: {error}\n{USAGE}");
                std::process::exit(2);
            }
        };
        let ok = match args.command.as_str() {
            "run" => run_here(&args),
            "plan" => {
                print!("{}", Plan::with_brokers(args.seed, Duration::from_secs(args.secs), args.brokers).to_text());
                true
            }
            "sweep" => sweep(&args),
            "determinism" => determinism(&args),
            "planted" => hunt_planted(&args),
            other => {
                eprintln!("weir-sim: unknown command {other}\n{USAGE}");
                std::process::exit(2);
            }
        };
        std::process::exit(if ok { 0 } else { 1 });
    }

    /// The command that replays `seed` with this very build.
    fn replay_command(seed: u64, args: &Args) -> String {
        let profile = if cfg!(debug_assertions) { "WEIR_SIM_PROFILE=debug " } else { "" };
        let plant = args.plant.map(|b| format!(" --plant {b}")).unwrap_or_default();
        if let Some(plan) = &args.plan {
            return format!("{profile}sim/run run --plan {}{plant}", plan.display());
        }
        let brokers = args.brokers.map(|b| format!(" --brokers {b}")).unwrap_or_default();
        format!("{profile}sim/run run --seed {seed} --secs {}{brokers}{plant}", args.secs)
    }

    /// The plan to run: the recorded one `--plan` names, or the seed's.
    fn plan_of(args: &Args) -> Result<Plan, String> {
        match &args.plan {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                Plan::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
            }
            None => Ok(Plan::with_brokers(args.seed, Duration::from_secs(args.secs), args.brokers)),
        }
    }

    /// The simulation thread's stack (see `run_here`); only the pages
    /// touched are ever committed.
    const SIM_STACK: usize = 64 << 20;

    /// Runs one seed in this process. Prints the seed first and, last, one
    /// `RESULT` line the sweep reads.
    fn run_here(args: &Args) -> bool {
        let plan = match plan_of(args) {
            Ok(plan) => plan,
            Err(error) => {
                eprintln!("weir-sim: {error}");
                std::process::exit(2);
            }
        };
        let seed = plan.seed;
        println!("seed {seed}");
        if let Some(bug) = args.plant {
            planted::plant(bug);
            println!("planted bug: {bug}");
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()))
            .try_init();
        if let Some(path) = &args.plan {
            println!("plan: {}", path.display());
        }
        println!(
            "plan: {} brokers, {} partitions, {} producers, {} members, {} faults, {} member stalls",
            plan.brokers,
            plan.partitions,
            plan.producers,
            plan.members,
            plan.steps.len(),
            plan.stalls.len()
        );
        // Every panic, a supervised broker's included (it restarts and the
        // run goes on), is reported as an anomaly.
        let panics = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = panics.clone();
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(info.to_string());
            default_hook(info);
        }));
        // Simulated time: the phases, plus room for startup and the final read.
        let limit = plan.safety + plan.liveness + Duration::from_secs(240);
        let plan_text = plan.to_text();
        let started = Instant::now();
        // A thread of its own, as madsim's test runner does: std's hash
        // keys are per thread, and madsim can seed them only in a thread
        // that has not made a HashMap yet (this one has: argument parsing,
        // the log filter). Every simulated task is polled on this one
        // thread, and a debug build's futures are large (an unoptimised
        // poll frame keeps every temporary): std's 2 MiB default overflowed
        // on seed 7 in debug, so the thread gets room to spare.
        let spawned = std::thread::Builder::new().name("simulation".into()).stack_size(SIM_STACK).spawn(move || {
            let mut runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            runtime.set_time_limit(limit);
            runtime.block_on(weir_sim::run::run(plan))
        });
        let outcome = match spawned {
            Ok(thread) => thread.join(),
            Err(error) => {
                eprintln!("weir-sim: cannot start the simulation thread: {error}");
                return false;
            }
        };
        let wall = started.elapsed().as_secs_f64();
        match outcome {
            Ok(mut outcome) => {
                for panic in panics.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    outcome
                        .anomalies
                        .push(weir_sim::checker::Anomaly { kind: "panic", detail: panic.replace('\n', " ") });
                }
                let history_hash = fingerprint(&outcome.ops);
                let hash = outcome.fingerprint();
                let valid = outcome.anomalies.is_empty();
                for anomaly in &outcome.anomalies {
                    println!("anomaly: {anomaly}");
                }
                if !valid || args.history.is_some() {
                    let path = args.history.clone().unwrap_or_else(|| PathBuf::from(format!("seed-{seed}.edn")));
                    match write_edn(&path, &outcome.ops) {
                        Ok(assigned) => {
                            println!("history: {} (without subscribers: {})", path.display(), assigned.display())
                        }
                        Err(error) => println!("history not written to {}: {error}", path.display()),
                    }
                }
                if !valid {
                    // The schedule as text: it replays with `--plan`
                    // whatever this seed draws after later changes.
                    let path = args
                        .history
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(format!("seed-{seed}.edn")))
                        .with_extension("plan");
                    match std::fs::write(&path, &plan_text) {
                        Ok(()) => println!("plan kept: {} (sim/plans/ keeps the ones that found bugs)", path.display()),
                        Err(error) => println!("plan not written to {}: {error}", path.display()),
                    }
                    println!("replay: {}", replay_command(seed, args));
                }
                for sample in &outcome.availability {
                    println!("{}", availability_line(sample));
                }
                let [(leader_acked, leader_lost), (none_acked, none_lost)] = outcome.weak_losses;
                println!(
                    "RESULT seed={seed} valid={valid} ops={} acknowledged={} faults={} anomalies={} \
                     leader_lost={leader_lost}/{leader_acked} none_lost={none_lost}/{none_acked} \
                     hash={hash:016x} history={history_hash:016x} wall={wall:.1}s",
                    outcome.ops.len(),
                    outcome.acknowledged,
                    outcome.faults,
                    outcome.anomalies.len()
                );
                valid
            }
            Err(_) => {
                println!("replay: {}", replay_command(seed, args));
                println!("RESULT seed={seed} valid=false panicked=true wall={wall:.1}s");
                false
            }
        }
    }

    /// One fault's effect on one partition, as a run prints it and a sweep
    /// reads it back (`Availability::add`).
    fn availability_line(sample: &weir_sim::availability::Sample) -> String {
        let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| d.as_millis().to_string());
        format!(
            "availability: kind={} role={} partition={} start={} from_start={} from_heal={}",
            sample.kind,
            sample.role.name(),
            sample.partition,
            sample.start.as_millis(),
            ms(sample.from_start),
            ms(sample.from_heal)
        )
    }

    /// A sweep's availability figures, per fault kind and role: the times
    /// from each fault's start and heal to the next acknowledged acks=all
    /// write on a partition it touched, and how often none came.
    #[derive(Default)]
    struct Availability {
        by: std::collections::BTreeMap<(String, String), (Vec<Duration>, Vec<Duration>, u64)>,
    }

    impl Availability {
        fn add(&mut self, stdout: &str) {
            for line in stdout.lines().filter_map(|l| l.strip_prefix("availability: ")) {
                let (Some(kind), Some(role)) = (field(line, "kind"), field(line, "role")) else { continue };
                let ms = |name| field(line, name).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis);
                let entry = self.by.entry((kind.to_owned(), role.to_owned())).or_default();
                match ms("from_start") {
                    Some(d) => entry.0.push(d),
                    None => entry.2 += 1,
                }
                entry.1.extend(ms("from_heal"));
            }
        }

        fn report(&self) -> String {
            let mut out = String::from(
                "availability: from each fault's start (and heal) to the next acknowledged acks=all write \
                 on each partition it touched\n",
            );
            for ((kind, role), (from_start, from_heal, never)) in &self.by {
                out += &format!(
                    "  {kind:<14} {role:<8} from start: {}\n  {:<23} from heal:  {}{}\n",
                    weir_sim::availability::summary(from_start.clone()),
                    "",
                    weir_sim::availability::summary(from_heal.clone()),
                    if *never > 0 { format!("; no write after the start {never} times") } else { String::new() }
                );
            }
            out
        }
    }

    fn child(seed: u64, args: &Args, history: Option<&PathBuf>) -> std::io::Result<Child> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command.args(["run", "--seed", &seed.to_string(), "--secs", &args.secs.to_string()]);
        if let Some(brokers) = args.brokers {
            command.args(["--brokers", &brokers.to_string()]);
        }
        if let Some(bug) = args.plant {
            command.args(["--plant", bug.name()]);
        }
        if let Some(path) = history {
            command.arg("--history").arg(path);
        }
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()
    }

    fn result_line(output: &str) -> Option<&str> {
        output.lines().rev().find(|l| l.starts_with("RESULT "))
    }

    fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
        line.split_whitespace().find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
    }

    /// Runs seeds, `jobs` processes at a time; on failure keeps the seed's
    /// output and history under `out` and prints how to replay it.
    fn sweep(args: &Args) -> bool {
        if let Err(error) = std::fs::create_dir_all(&args.out) {
            eprintln!("weir-sim: cannot create {}: {error}", args.out.display());
            return false;
        }
        let total = args.seeds.end.saturating_sub(args.seeds.start);
        println!(
            "sweep: seeds {}..{} ({total}), {} s simulated each, {} jobs",
            args.seeds.start, args.seeds.end, args.secs, args.jobs
        );
        let started = Instant::now();
        let mut pending = args.seeds.clone();
        let mut running: Vec<(u64, Child)> = Vec::new();
        let (mut done, mut failed) = (0u64, Vec::new());
        let mut wall_sum = 0.0;
        // acks=leader and acks=none: (lost, acknowledged) summed over seeds.
        let mut weak = [(0u64, 0u64); 2];
        let mut availability = Availability::default();
        loop {
            let out_of_time =
                args.minutes.is_some_and(|m| started.elapsed() >= Duration::from_secs(m.saturating_mul(60)));
            while running.len() < args.jobs && !out_of_time {
                let Some(seed) = pending.next() else { break };
                let history = args.out.join(format!("seed-{seed}.edn"));
                match child(seed, args, Some(&history)) {
                    Ok(process) => running.push((seed, process)),
                    Err(error) => {
                        eprintln!("weir-sim: cannot start seed {seed}: {error}");
                        failed.push(seed);
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            let mut i = 0;
            while i < running.len() {
                if matches!(running[i].1.try_wait(), Ok(Some(_))) {
                    let (seed, process) = running.swap_remove(i);
                    let output = process.wait_with_output();
                    let stdout =
                        output.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
                    let line = result_line(&stdout).unwrap_or("RESULT valid=false (no result line)").to_owned();
                    availability.add(&stdout);
                    done += 1;
                    wall_sum +=
                        field(&line, "wall").and_then(|w| w.trim_end_matches('s').parse::<f64>().ok()).unwrap_or(0.0);
                    for (sum, name) in weak.iter_mut().zip(["leader_lost", "none_lost"]) {
                        let counts = field(&line, name).and_then(|f| f.split_once('/'));
                        if let Some((lost, acked)) =
                            counts.and_then(|(l, a)| Some((l.parse::<u64>().ok()?, a.parse::<u64>().ok()?)))
                        {
                            sum.0 += lost;
                            sum.1 += acked;
                        }
                    }
                    if field(&line, "valid") == Some("true") {
                        remove_edn(&args.out.join(format!("seed-{seed}.edn")));
                    } else {
                        failed.push(seed);
                        let log = args.out.join(format!("seed-{seed}.out"));
                        let mut text = stdout.clone();
                        if let Ok(o) = &output {
                            text.push_str(&String::from_utf8_lossy(&o.stderr));
                        }
                        let _ = std::fs::write(&log, text);
                        println!("FAIL seed {seed}: {line}");
                        println!(
                            "  output: {}  history: {}  plan: {}",
                            log.display(),
                            args.out.join(format!("seed-{seed}.edn")).display(),
                            args.out.join(format!("seed-{seed}.plan")).display()
                        );
                        println!("  replay: {}", replay_command(seed, args));
                    }
                    let minutes = started.elapsed().as_secs_f64() / 60.0;
                    print!(
                        "\r{done}/{total} seeds, {} failed, {:.1} seeds/min   ",
                        failed.len(),
                        done as f64 / minutes.max(1e-9)
                    );
                    let _ = std::io::stdout().flush();
                } else {
                    i += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        println!();
        if !pending.is_empty() {
            println!("time is up: seeds {}..{} not started", pending.start, pending.end);
        }
        println!(
            "summary: {done} seeds in {minutes:.1} min ({:.1} seeds/min, {:.1} s per seed per job), {} failed{}",
            done as f64 / minutes.max(1e-9),
            wall_sum / (done.max(1) as f64),
            failed.len(),
            if failed.is_empty() { String::new() } else { format!(": {failed:?}") }
        );
        println!(
            "weaker acks (measured, not failures): acks=leader lost {} of {} acknowledged, acks=none lost {} of {} accepted",
            weak[0].0, weak[0].1, weak[1].0, weak[1].1
        );
        let report = availability.report();
        print!("{report}");
        let path = args.out.join("availability.txt");
        if let Err(error) = std::fs::write(&path, &report) {
            eprintln!("weir-sim: cannot write {}: {error}", path.display());
        }
        failed.is_empty()
    }

    /// Runs each seed (`--seed`, or every one of `--seeds`) twice, each
    /// time in a fresh process, and compares the fingerprints of the whole
    /// outcome: history, final logs, every replica's durable contents,
    /// anomalies and verdict.
    fn determinism(args: &Args) -> bool {
        let seeds = if args.seeds.is_empty() { args.seed..args.seed + 1 } else { args.seeds.clone() };
        let mut all_same = true;
        for seed in seeds {
            let mut hashes = Vec::new();
            for _ in 0..2 {
                let (output, errors, status) = match child(seed, args, None).and_then(|c| c.wait_with_output()) {
                    Ok(output) => (
                        String::from_utf8_lossy(&output.stdout).into_owned(),
                        String::from_utf8_lossy(&output.stderr).into_owned(),
                        output.status,
                    ),
                    Err(error) => {
                        eprintln!("weir-sim: cannot run seed {seed}: {error}");
                        return false;
                    }
                };
                let line = result_line(&output).unwrap_or("").to_owned();
                if line.is_empty() {
                    // No verdict: say why, or CI shows only "DIFFERENT".
                    let tail: Vec<&str> = errors.lines().rev().take(20).collect();
                    println!("seed {seed} gave no RESULT line ({status}); the end of its stderr:");
                    for l in tail.iter().rev() {
                        println!("  {l}");
                    }
                } else {
                    println!("{line}");
                }
                hashes.push(field(&line, "hash").map(str::to_owned));
            }
            let same = hashes[0].is_some() && hashes[0] == hashes[1];
            println!("determinism: seed {seed} gave {} outcomes", if same { "identical" } else { "DIFFERENT" });
            all_same &= same;
        }
        all_same
    }

    /// Hunts each planted bug (or the one `--plant` names) through the seeds
    /// in order; fails unless every one is caught by a rule meant for it
    /// (see `weir_sim::planted`). Prints how many seeds each needed and
    /// which rule caught it.
    fn hunt_planted(args: &Args) -> bool {
        let seeds = if args.seeds.is_empty() { 0..200 } else { args.seeds.clone() };
        let bugs: Vec<Bug> = match args.plant {
            Some(bug) => vec![bug],
            None => Bug::ALL.to_vec(),
        };
        let mut all_caught = true;
        for bug in bugs {
            let started = Instant::now();
            let planted = Args { plant: Some(bug), seeds: seeds.clone(), ..args.clone() };
            match hunt(&planted) {
                Some((seed, rules)) => println!(
                    "planted {bug}: caught by seed {seed}, the {} seed tried ({:.0} s): {rules}; \
                     the seed passes without the bug",
                    ordinal(seed - seeds.start + 1),
                    started.elapsed().as_secs_f64()
                ),
                None => {
                    all_caught = false;
                    println!(
                        "planted {bug}: NOT CAUGHT by {} in seeds {}..{}",
                        weir_sim::planted::catching_rules(bug).join(" or "),
                        seeds.start,
                        seeds.end
                    );
                }
            }
        }
        all_caught
    }

    fn ordinal(n: u64) -> String {
        let suffix = match (n % 10, n % 100) {
            (_, 11..=13) => "th",
            (1, _) => "st",
            (2, _) => "nd",
            (3, _) => "rd",
            _ => "th",
        };
        format!("{n}{suffix}")
    }

    /// Runs `args.seeds` in order, `jobs` at a time, until a seed fails by
    /// one of the planted bug's rules and, run again without the bug,
    /// passes. That seed and the rules that fired. Seeds that fail
    /// otherwise (a panic, another rule, or also without the bug) are
    /// printed and do not count.
    fn hunt(args: &Args) -> Option<(u64, String)> {
        let bug = args.plant.expect("a planted bug to hunt");
        let rules = weir_sim::planted::catching_rules(bug);
        let history = |seed: u64| args.out.join(format!("{bug}-seed-{seed}.edn"));
        if let Err(error) = std::fs::create_dir_all(&args.out) {
            eprintln!("weir-sim: cannot create {}: {error}", args.out.display());
            return None;
        }
        let mut pending = args.seeds.clone();
        let mut running: Vec<(u64, Child)> = Vec::new();
        loop {
            while running.len() < args.jobs {
                let Some(seed) = pending.next() else { break };
                match child(seed, args, Some(&history(seed))) {
                    Ok(process) => running.push((seed, process)),
                    Err(error) => eprintln!("weir-sim: cannot start seed {seed}: {error}"),
                }
            }
            if running.is_empty() {
                return None;
            }
            // In seed order: the first catch found is the lowest seed.
            let (seed, process) = running.remove(0);
            let stdout =
                process.wait_with_output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            let line = result_line(&stdout).unwrap_or("");
            if field(line, "valid") == Some("true") {
                remove_edn(&history(seed));
                continue;
            }
            let mut kinds: Vec<&str> = stdout
                .lines()
                .filter_map(|l| l.strip_prefix("anomaly: "))
                .filter_map(|a| a.split(':').next())
                .collect();
            kinds.sort_unstable();
            kinds.dedup();
            let fired: Vec<&str> = kinds.iter().copied().filter(|kind| rules.contains(kind)).collect();
            if fired.is_empty() {
                let what = if field(line, "panicked") == Some("true") {
                    "the run panicked".to_owned()
                } else {
                    kinds.join(", ")
                };
                println!("  {bug}: seed {seed} failed, but not by {}: {what}", rules.join(" or "));
                continue;
            }
            // The catch counts only if the seed passes without the bug.
            let control = Args { plant: None, ..args.clone() };
            let clean = child(seed, &control, None)
                .and_then(|c| c.wait_with_output())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let clean_line = result_line(&clean).unwrap_or("no result line");
            if field(clean_line, "valid") != Some("true") {
                println!("  {bug}: seed {seed} fails without the bug too, so it proves nothing: {clean_line}");
                continue;
            }
            for (_, mut other) in running {
                let _ = other.kill();
                let _ = other.wait();
            }
            println!("  history of the catching seed: {}", history(seed).display());
            return Some((seed, fired.join(", ")));
        }
    }
}
