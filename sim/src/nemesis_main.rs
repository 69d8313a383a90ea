//! `weir-nemesis`: the nemesis harness against a deployed cluster (see
//! `sim/src/nemesis.rs` and deploy/README.md). Usually run by
//! `deploy/nemesis`, which makes the hosts and deploys them first:
//!
//! ```text
//! weir-nemesis --inventory ~/.cache/weir-hosts-nemesis/inventory.ini --minutes 30 --local-disks
//! ```

#[cfg(madsim)]
fn main() {
    eprintln!("weir-nemesis runs against real hosts: build it without --cfg madsim");
    std::process::exit(2);
}

#[cfg(not(madsim))]
fn main() {
    std::process::exit(harness::main());
}

#[cfg(not(madsim))]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod harness {
    use std::path::PathBuf;
    use std::time::Duration;

    use clap::Parser;
    use weir_sim::history::write_edn;
    use weir_sim::nemesis::{self, Host, Options};

    /// Runs the simulator's workload against a deployed weir cluster while
    /// injecting real faults over SSH, then checks the history.
    #[derive(Debug, Parser)]
    #[command(name = "weir-nemesis")]
    struct Args {
        /// The Ansible inventory of the hosts (deploy/hosts/up writes one):
        /// `name ansible_host=ADDRESS weir_root=DIR` per host, and
        /// `ansible_ssh_private_key_file=KEY`.
        #[arg(long)]
        inventory: PathBuf,
        /// How long the whole run lasts, healing and final reads excepted.
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Of that, how long the last phase (every fault healed) may take.
        #[arg(long, default_value_t = 90)]
        liveness_secs: u64,
        /// Chooses the faults and the workload's partitions; random if not given.
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 6)]
        partitions: u32,
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// The hosts' directories are on this machine (namespace hosts):
        /// read every replica from its disk after the run.
        #[arg(long)]
        local_disks: bool,
        /// The kinds of fault to inject, comma-separated (default: every
        /// kind; decommission and replace-broker only with 4 brokers or
        /// more).
        #[arg(long, value_delimiter = ',')]
        faults: Vec<String>,
        /// Each kind of fault in turn instead of one at random each time.
        #[arg(long)]
        cycle: bool,
        /// Where the history goes, as EDN (jepsen.tests.kafka's shape).
        #[arg(long, default_value = "nemesis-history.edn")]
        history: PathBuf,
    }

    /// The hosts and the SSH key an inventory names: the `hosts` group
    /// (each an etcd member and a broker), then the `brokers` group (a
    /// broker alone), in the order `deploy/group_vars/all.yml` numbers them.
    fn read_inventory(text: &str) -> Result<(Vec<Host>, PathBuf), String> {
        let (mut members, mut brokers) = (Vec::new(), Vec::new());
        let mut key = None;
        let mut group = String::from("hosts");
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                group = name.to_owned();
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(value) = line.strip_prefix("ansible_ssh_private_key_file=") {
                key = Some(PathBuf::from(value));
                continue;
            }
            let mut words = line.split_whitespace();
            let Some(name) = words.next().filter(|w| !w.contains('=')) else { continue };
            let (mut address, mut root) = (None, None);
            for word in words {
                match word.split_once('=') {
                    Some(("ansible_host", value)) => address = Some(value.to_owned()),
                    Some(("weir_root", value)) => root = Some(PathBuf::from(value)),
                    _ => {}
                }
            }
            let address = address.ok_or_else(|| format!("host {name} has no ansible_host"))?;
            let root = root.ok_or_else(|| format!("host {name} has no weir_root"))?;
            match group.as_str() {
                "hosts" => members.push(Host { name: name.to_owned(), address, root, etcd: true }),
                "brokers" => brokers.push(Host { name: name.to_owned(), address, root, etcd: false }),
                other => return Err(format!("host {name} is in group {other}, neither hosts nor brokers")),
            }
        }
        let mut hosts = members;
        hosts.append(&mut brokers);
        if hosts.is_empty() {
            return Err("the inventory names no host".into());
        }
        let key = key.ok_or("the inventory has no ansible_ssh_private_key_file")?;
        Ok((hosts, key))
    }

    pub fn main() -> i32 {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_writer(std::io::stderr)
            .init();
        let args = Args::parse();
        let seed = args.seed.unwrap_or_else(weir::sys::rng::random_u64);
        println!("weir-nemesis: seed {seed}");
        let inventory = match std::fs::read_to_string(&args.inventory) {
            Ok(text) => text,
            Err(error) => {
                eprintln!("weir-nemesis: reading {}: {error}", args.inventory.display());
                return 2;
            }
        };
        let (hosts, ssh_key) = match read_inventory(&inventory) {
            Ok(found) => found,
            Err(error) => {
                eprintln!("weir-nemesis: {}: {error}", args.inventory.display());
                return 2;
            }
        };
        let mut kinds = Vec::new();
        for wanted in &args.faults {
            match nemesis::KINDS.iter().find(|kind| **kind == wanted.as_str()) {
                Some(kind) => kinds.push(*kind),
                None => {
                    eprintln!("weir-nemesis: no fault kind {wanted:?}; the kinds: {}", nemesis::KINDS.join(", "));
                    return 2;
                }
            }
        }
        let too_few = hosts.len() < nemesis::MEMBERSHIP_BROKERS;
        if kinds.is_empty() {
            kinds = nemesis::KINDS.to_vec();
            if too_few {
                kinds.retain(|kind| !nemesis::MEMBERSHIP_KINDS.contains(kind));
                println!(
                    "weir-nemesis: {} broker(s): no membership faults ({} need {})",
                    hosts.len(),
                    nemesis::MEMBERSHIP_KINDS.join(", "),
                    nemesis::MEMBERSHIP_BROKERS
                );
            }
        } else if too_few {
            if let Some(kind) = kinds.iter().find(|kind| nemesis::MEMBERSHIP_KINDS.contains(kind)) {
                eprintln!(
                    "weir-nemesis: {kind} needs {} brokers, the inventory names {}",
                    nemesis::MEMBERSHIP_BROKERS,
                    hosts.len()
                );
                return 2;
            }
        }
        let options = Options {
            kinds,
            cycle: args.cycle,
            hosts,
            ssh_key,
            broker_port: args.port,
            seed,
            duration: Duration::from_secs_f64(args.minutes * 60.0),
            liveness: Duration::from_secs(args.liveness_secs),
            partitions: args.partitions,
            local_disks: args.local_disks,
        };
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        let started = std::time::Instant::now();
        let report = match runtime.block_on(nemesis::run(options)) {
            Ok(report) => report,
            Err(error) => {
                eprintln!("weir-nemesis: the run failed: {error}");
                return 1;
            }
        };
        if let Err(error) = write_edn(&args.history, &report.ops) {
            eprintln!("weir-nemesis: writing {}: {error}", args.history.display());
        }

        println!(
            "ran {:.1} min, seed {seed}; history: {}",
            started.elapsed().as_secs_f64() / 60.0,
            args.history.display()
        );
        println!("operations:");
        for ((f, kind), count) in nemesis::tally(&report.ops) {
            println!("  {f:<7} {kind:<7} {count}");
        }
        let mut by_kind = std::collections::BTreeMap::<&str, (usize, f64)>::new();
        for (_, lasted, fault) in &report.faults {
            let entry = by_kind.entry(fault.kind()).or_default();
            entry.0 += 1;
            entry.1 += lasted;
        }
        println!("faults: {} injected", report.faults.len());
        for (kind, (count, seconds)) in by_kind {
            println!("  {kind:<17} {count:>4} times, {seconds:>7.1} s in all");
        }
        for error in &report.nemesis_errors {
            println!("  nemesis error: {error}");
        }
        let [(leader_acked, leader_lost), (none_acked, none_lost)] = report.weak_losses;
        println!("acks=all: {} acknowledged", report.acknowledged);
        println!(
            "acks=leader: {leader_lost} of {leader_acked} acknowledged not in the final read (measured, not checked)"
        );
        println!("acks=none: {none_lost} of {none_acked} accepted not in the final read (measured, not checked)");
        let described: Vec<String> = report.replicas_described.iter().map(|(b, n)| format!("{b}={n}")).collect();
        println!(
            "replicas: described by broker {}; read from disk and checked: {}",
            described.join(" "),
            report.replicas_read
        );
        let mut by_role = std::collections::BTreeMap::<(&str, &str), (Vec<Duration>, Vec<Duration>)>::new();
        for sample in &report.availability {
            let entry = by_role.entry((sample.kind, sample.role.name())).or_default();
            entry.0.extend(sample.from_start);
            entry.1.extend(sample.from_heal);
        }
        println!("availability: from each fault's start (and heal) to the next acknowledged acks=all write");
        for ((kind, role), (from_start, from_heal)) in by_role {
            println!(
                "  {kind:<17} {role:<8} from start: {}\n  {:<26} from heal:  {}",
                weir_sim::availability::summary(from_start),
                "",
                weir_sim::availability::summary(from_heal)
            );
        }
        let not_injected = report.nemesis_errors.iter().filter(|error| error.starts_with("inject ")).count();
        if not_injected > 0 {
            // The run did not test what it says it did.
            println!("verdict: INVALID RUN, {not_injected} fault(s) failed to inject (the nemesis errors above)");
            return 1;
        }
        if report.anomalies.is_empty() {
            println!("verdict: valid (no anomaly)");
            0
        } else {
            println!("verdict: INVALID, {} anomalies:", report.anomalies.len());
            for anomaly in report.anomalies.iter().take(50) {
                println!("  {anomaly}");
            }
            1
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn an_inventory_from_deploy_hosts_up_gives_hosts_and_key() {
            let text = "# Made by deploy/hosts/up\n[hosts]\nweir-h1 ansible_host=10.77.0.11 weir_root=/r/h1\n\
                        weir-h2 ansible_host=10.77.0.12 weir_root=/r/h2\n\n[hosts:vars]\nansible_user=root\n\
                        ansible_ssh_private_key_file=/r/id_ed25519\n";
            let (hosts, key) = read_inventory(text).unwrap();
            assert_eq!(hosts.len(), 2);
            assert_eq!(hosts[1].address, "10.77.0.12");
            assert_eq!(hosts[1].root, PathBuf::from("/r/h2"));
            assert!(hosts.iter().all(|h| h.etcd));
            assert_eq!(key, PathBuf::from("/r/id_ed25519"));
        }

        #[test]
        fn brokers_without_etcd_come_after_the_hosts_group_whatever_the_order_of_sections() {
            let text = "[brokers]
weir-h4 ansible_host=10.77.0.14 weir_root=/r/h4
[hosts]
                        weir-h1 ansible_host=10.77.0.11 weir_root=/r/h1
[all:vars]
                        ansible_ssh_private_key_file=/r/k
";
            let (hosts, _) = read_inventory(text).unwrap();
            let names: Vec<(&str, bool)> = hosts.iter().map(|h| (h.name.as_str(), h.etcd)).collect();
            assert_eq!(names, [("weir-h1", true), ("weir-h4", false)]);
            let odd = "[others]
weir-h9 ansible_host=10.77.0.19 weir_root=/r/h9
ansible_ssh_private_key_file=/k
";
            assert!(read_inventory(odd).unwrap_err().contains("neither hosts nor brokers"));
        }

        #[test]
        fn an_inventory_missing_what_the_harness_needs_is_refused() {
            assert!(read_inventory("[hosts]\n").unwrap_err().contains("no host"));
            let no_key = "weir-h1 ansible_host=10.77.0.11 weir_root=/r/h1\n";
            assert!(read_inventory(no_key).unwrap_err().contains("private_key"));
            let no_root = "weir-h1 ansible_host=10.77.0.11\nansible_ssh_private_key_file=/k\n";
            assert!(read_inventory(no_root).unwrap_err().contains("weir_root"));
        }
    }
}
