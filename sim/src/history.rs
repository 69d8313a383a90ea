//! What a simulated run did, in the shape of Jepsen's kafka workload
//! (`jepsen.tests.kafka`): every operation is an invocation and then a
//! completion (`:ok`, `:fail` or `:info` when the outcome is unknown), by a
//! process, at a time. Sends and polls are lists of micro-operations keyed
//! by partition, so a history exports as EDN that Jepsen's checker reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::checker::WEAK_PRODUCERS_FROM;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How an operation ended (or that it began).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invoke,
    Ok,
    /// It definitely did not happen.
    Fail,
    /// It may or may not have happened.
    Info,
}

/// One operation's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// One value to one partition; the offset once acknowledged.
    Send { partition: u32, value: u64, offset: Option<u64> },
    /// What one poll returned: per partition, (offset, value) in order.
    Poll(BTreeMap<u32, Vec<(u64, u64)>>),
    /// A consumer's partitions: in a group generation, noted when the
    /// member learned them (mid-poll), or chosen by a consumer without a
    /// group (`group: None`, generation 0) between its polls.
    /// `starts`: where the consumer began reading each partition (a group
    /// member: the group's committed offset when it joined; without a
    /// group: where it was, or the beginning for a partition newly taken).
    Assign { group: Option<String>, generation: u64, partitions: Vec<u32>, starts: BTreeMap<u32, u64> },
    /// Offsets a consumer committed for its group (next offset to read).
    Commit { group: String, generation: u64, offsets: BTreeMap<u32, u64> },
    /// A consumer moved its position in one of its partitions; `offset` is
    /// where it moved to, once known (a seek by time or to the beginning
    /// asks the broker), and `partitions` the assignment it held.
    Seek { group: String, partition: u32, offset: Option<u64>, partitions: Vec<u32> },
}

impl Kind {
    /// Its name in a Jepsen history (`:invoke`, `:ok`, ...), without the colon.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Invoke => "invoke",
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        }
    }
}

impl Value {
    /// The operation's function in a Jepsen history (`:send`, `:poll`, ...),
    /// without the colon.
    pub fn f(&self) -> &'static str {
        match self {
            Value::Send { .. } => "send",
            Value::Poll(_) => "poll",
            Value::Assign { .. } => "assign",
            Value::Commit { .. } => "commit",
            Value::Seek { .. } => "seek",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub index: usize,
    pub process: u64,
    pub kind: Kind,
    pub value: Value,
    /// Simulated time since the run began.
    pub time: Duration,
}

/// A run's operations, shared by the workload's tasks.
#[derive(Debug, Clone, Default)]
pub struct History {
    ops: Arc<Mutex<Vec<Op>>>,
    start: Option<tokio::time::Instant>,
}

impl History {
    pub fn new() -> Self {
        Self { ops: Arc::default(), start: Some(tokio::time::Instant::now()) }
    }

    /// Simulated time since the run began: the time of an op recorded now.
    pub fn now(&self) -> Duration {
        self.start.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Records an operation; returns its index.
    pub fn record(&self, process: u64, kind: Kind, value: Value) -> usize {
        let time = self.start.map_or(Duration::ZERO, |s| s.elapsed());
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let index = ops.len();
        ops.push(Op { index, process, kind, value, time });
        index
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Completed operations paired with their invocations: (invoke, completion).
/// An operation never completed (the run ended first) is paired with an
/// `Info` completion of its own invocation.
pub fn pairs(ops: &[Op]) -> Vec<(&Op, Op)> {
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut out: Vec<(&Op, Op)> = Vec::new();
    for op in ops {
        match op.kind {
            Kind::Invoke => {
                open.insert(op.process, op.index);
            }
            _ => {
                // A completion ends its process's open invocation of the
                // same function (an assignment may be noted mid-poll).
                if open.get(&op.process).is_some_and(|&i| ops[i].value.f() == op.value.f()) {
                    let invoked = open.remove(&op.process).expect("just seen");
                    out.push((&ops[invoked], op.clone()));
                }
            }
        }
    }
    for invoked in open.into_values() {
        let mut unfinished = ops[invoked].clone();
        unfinished.kind = Kind::Info;
        out.push((&ops[invoked], unfinished));
    }
    out.sort_by_key(|(_, done)| done.index);
    out
}

/// Which operations an EDN export keeps. Jepsen's checker judges a test by
/// how its consumers subscribe (`:sub-via`): with any subscriber it must
/// allow poll skips and nonmonotonic polls everywhere (a rebalance may move
/// a subscriber anywhere), so the consumers without a group are also
/// exported on their own, where it holds them to both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Every operation (check with `:sub-via #{:subscribe :assign}`).
    All,
    /// The sends and the consumers without a group (`:sub-via #{:assign}`).
    Assigned,
}

/// The history as EDN, one operation per line, as Jepsen's kafka workload
/// (`jepsen.tests.kafka`) writes it and as its history rules require (each
/// process has at most one operation outstanding; indices are dense):
///
/// - `:send` values are `[[:send k v]]`, completed `[[:send k [offset v]]]`;
///   `:poll` values are `[[:poll {k [[offset v] ...]}]]`.
/// - A group member begins with a `:subscribe` to every partition. It
///   learns its assignments mid-poll, so each one goes into that poll's
///   completion as a `:rebalance-log` entry (`{:keys [...]}` with its group
///   and generation), as Jepsen's own client reports rebalances.
/// - A consumer without a group assigns itself partitions between polls:
///   `:assign` with the partitions.
/// - A send acknowledged under weaker acks (processes from
///   [`WEAK_PRODUCERS_FROM`]) exports as `:info` with `:weak-acks true`.
/// - Seeks and commits, which Jepsen's workload does not have, keep
///   functions of their own (`:seek`, `:commit`) that its checker passes
///   over; a seek exported as an `:assign` would make every seek back a
///   nonmonotonic poll.
pub fn to_edn(ops: &[Op], view: View) -> String {
    let in_group = |op: &Op| match &op.value {
        Value::Assign { group, .. } => group.is_some(),
        Value::Commit { .. } | Value::Seek { .. } => true,
        _ => false,
    };
    let subscribers: BTreeSet<u64> = ops.iter().filter(|op| in_group(op)).map(|op| op.process).collect();
    let mut keys: BTreeSet<u32> = BTreeSet::new();
    for op in ops {
        match &op.value {
            Value::Send { partition, .. } => {
                keys.insert(*partition);
            }
            Value::Poll(polled) => keys.extend(polled.keys()),
            Value::Assign { partitions, .. } => keys.extend(partitions),
            _ => {}
        }
    }
    let all_keys = join(keys.iter());
    let mut out = String::new();
    let mut index = 0usize;
    let mut line = |time: Duration, kind: &str, process: u64, f: &str, value: &str, extra: &str| {
        let time = time.as_nanos();
        let _ = writeln!(
            out,
            "{{:index {index}, :time {time}, :type :{kind}, :process {process}, :f :{f}, :value {value}{extra}}}"
        );
        index += 1;
    };
    let mut subscribed: BTreeSet<u64> = BTreeSet::new();
    let mut rebalances: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for op in ops {
        let subscriber = subscribers.contains(&op.process);
        if subscriber && view == View::Assigned {
            continue;
        }
        if subscriber && subscribed.insert(op.process) {
            for kind in ["invoke", "ok"] {
                line(op.time, kind, op.process, "subscribe", &format!("[{all_keys}]"), "");
            }
        }
        let kind = op.kind.name();
        let mut extra = String::new();
        let value = match &op.value {
            Value::Assign { group: Some(group), generation, partitions, starts } => {
                // A member's join (invoked and completed between its
                // polls) and the assignments it learns mid-poll alike go
                // into its next poll's rebalance log.
                if op.kind == Kind::Ok {
                    let keys = join(partitions.iter());
                    let starts = edn_map(starts);
                    let event =
                        format!("{{:keys [{keys}], :group \"{group}\", :generation {generation}, :starts {starts}}}");
                    rebalances.entry(op.process).or_default().push(event);
                }
                continue;
            }
            Value::Assign { group: None, partitions, starts, .. } => {
                if op.kind != Kind::Invoke {
                    let _ = write!(extra, ", :starts {}", edn_map(starts));
                }
                format!("[{}]", join(partitions.iter()))
            }
            Value::Send { partition, value, offset: Some(offset) } => {
                format!("[[:send {partition} [{offset} {value}]]]")
            }
            Value::Send { partition, value, offset: None } => format!("[[:send {partition} {value}]]"),
            Value::Poll(_) if op.kind == Kind::Invoke => "[[:poll]]".to_owned(),
            Value::Poll(polled) => {
                if let Some(events) = rebalances.remove(&op.process) {
                    let _ = write!(extra, ", :rebalance-log [{}]", events.join(" "));
                }
                let body: Vec<String> = polled
                    .iter()
                    .map(|(partition, records)| {
                        let pairs: Vec<String> = records.iter().map(|(o, v)| format!("[{o} {v}]")).collect();
                        format!("{partition} [{}]", pairs.join(" "))
                    })
                    .collect();
                format!("[[:poll {{{}}}]]", body.join(" "))
            }
            Value::Commit { group, generation, offsets } => {
                let _ = write!(extra, ", :group \"{group}\", :generation {generation}");
                edn_map(offsets)
            }
            Value::Seek { group, partition, offset, .. } => {
                let _ = write!(extra, ", :group \"{group}\"");
                let to = offset.map_or_else(|| "nil".to_owned(), |o| o.to_string());
                format!("{{{partition} {to}}}")
            }
        };
        // An acknowledgement under acks=leader or acks=none promises no
        // durability (what those producers lose is measured, not an
        // anomaly): to Jepsen such a send's outcome is unknown.
        let weak = matches!(op.value, Value::Send { .. }) && op.kind == Kind::Ok && op.process >= WEAK_PRODUCERS_FROM;
        let kind = if weak { Kind::Info.name() } else { kind };
        if weak {
            extra.push_str(", :weak-acks true");
        }
        line(op.time, kind, op.process, op.value.f(), &value, &extra);
    }
    out
}

/// Writes the history as EDN to `path` ([`View::All`]) and, beside it with
/// the extension `assigned.edn`, the consumers without a group on their own
/// ([`View::Assigned`]). Returns the second path. For the runners
/// (`weir-sim`, `weir-nemesis`): their files lie outside the simulated
/// world and its seam, as the runner's own do.
#[allow(clippy::disallowed_methods)]
pub fn write_edn(path: &Path, ops: &[Op]) -> std::io::Result<PathBuf> {
    let assigned = path.with_extension("assigned.edn");
    std::fs::write(path, to_edn(ops, View::All))?;
    std::fs::write(&assigned, to_edn(ops, View::Assigned))?;
    Ok(assigned)
}

/// Removes what [`write_edn`] wrote to `path` (for the runners, as above).
#[allow(clippy::disallowed_methods)]
pub fn remove_edn(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("assigned.edn"));
}

/// `{k v, ...}`.
fn edn_map(map: &BTreeMap<u32, u64>) -> String {
    let pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|item| item.to_string()).collect::<Vec<_>>().join(" ")
}

/// A stable fingerprint of a history (FNV-1a over its EDN): the same seed
/// must give the same fingerprint.
pub fn fingerprint(ops: &[Op]) -> u64 {
    fnv1a(to_edn(ops, View::All).as_bytes(), FNV_OFFSET)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of `bytes`, continuing from `hash`.
pub fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(index: usize, process: u64, kind: Kind, value: Value) -> Op {
        Op { index, process, kind, value, time: Duration::from_millis(index as u64) }
    }

    #[test]
    fn edn_follows_the_kafka_workload_and_pairs_match_processes() {
        let ops = vec![
            op(0, 1, Kind::Invoke, Value::Send { partition: 2, value: 7, offset: None }),
            op(1, 4, Kind::Invoke, Value::Poll(BTreeMap::new())),
            op(2, 1, Kind::Ok, Value::Send { partition: 2, value: 7, offset: Some(3) }),
            op(3, 4, Kind::Ok, Value::Poll(BTreeMap::from([(2, vec![(3, 7)])]))),
            op(4, 1, Kind::Invoke, Value::Send { partition: 0, value: 8, offset: None }),
        ];
        let edn = to_edn(&ops, View::All);
        let lines: Vec<&str> = edn.lines().collect();
        assert_eq!(lines[0], "{:index 0, :time 0, :type :invoke, :process 1, :f :send, :value [[:send 2 7]]}");
        assert_eq!(lines[2], "{:index 2, :time 2000000, :type :ok, :process 1, :f :send, :value [[:send 2 [3 7]]]}");
        assert_eq!(lines[1], "{:index 1, :time 1000000, :type :invoke, :process 4, :f :poll, :value [[:poll]]}");
        assert_eq!(
            lines[3],
            "{:index 3, :time 3000000, :type :ok, :process 4, :f :poll, :value [[:poll {2 [[3 7]]}]]}"
        );
        let paired = pairs(&ops);
        assert_eq!(paired.len(), 3);
        assert_eq!((paired[0].0.index, paired[0].1.index), (0, 2));
        assert_eq!((paired[1].0.index, paired[1].1.index), (1, 3));
        // The send still open when the run ended counts as unknown.
        assert_eq!((paired[2].0.index, paired[2].1.kind), (4, Kind::Info));
        assert_ne!(fingerprint(&ops), fingerprint(&ops[..4]));
    }

    /// Each line's `:process` and `:type`, checking Jepsen's rule that a
    /// process has at most one operation outstanding and that indices are
    /// dense.
    fn outstanding_at_most_one(edn: &str) {
        let mut open: BTreeMap<u64, usize> = BTreeMap::new();
        for (i, line) in edn.lines().enumerate() {
            let field = |name: &str| {
                let from = line.find(name).unwrap_or_else(|| panic!("{name} in {line}")) + name.len();
                line[from..].split([',', '}']).next().expect("a value").trim().to_owned()
            };
            assert_eq!(field(":index "), i.to_string(), "dense indices: {line}");
            let process: u64 = field(":process ").parse().expect("a process");
            if field(":type ") == ":invoke" {
                assert!(open.insert(process, i).is_none(), "process {process} invoked twice: {line}");
            } else {
                assert!(open.remove(&process).is_some(), "a completion without an invocation: {line}");
            }
        }
    }

    #[test]
    fn a_group_member_subscribes_and_learns_its_assignments_inside_polls() {
        let starts = BTreeMap::from([(0, 0), (2, 3)]);
        let assign = |generation| Value::Assign {
            group: Some("g".into()),
            generation,
            partitions: vec![0, 2],
            starts: starts.clone(),
        };
        let seek = |offset| Value::Seek { group: "g".into(), partition: 2, offset, partitions: vec![0, 2] };
        let commit = Value::Commit { group: "g".into(), generation: 5, offsets: BTreeMap::from([(2, 4)]) };
        let manual =
            Value::Assign { group: None, generation: 0, partitions: vec![1], starts: BTreeMap::from([(1, 0)]) };
        let ops = vec![
            op(0, 4, Kind::Invoke, Value::Poll(BTreeMap::new())),
            op(1, 4, Kind::Ok, assign(5)),
            op(2, 4, Kind::Ok, Value::Poll(BTreeMap::from([(2, vec![(3, 7)])]))),
            op(3, 4, Kind::Invoke, commit.clone()),
            op(4, 4, Kind::Ok, commit),
            op(5, 4, Kind::Invoke, seek(None)),
            op(6, 4, Kind::Ok, seek(Some(1))),
            op(7, 9, Kind::Invoke, manual.clone()),
            op(8, 9, Kind::Ok, manual),
            op(9, 1, Kind::Invoke, Value::Send { partition: 1, value: 8, offset: None }),
            op(10, WEAK_PRODUCERS_FROM, Kind::Invoke, Value::Send { partition: 1, value: 9, offset: None }),
            op(11, WEAK_PRODUCERS_FROM, Kind::Ok, Value::Send { partition: 1, value: 9, offset: Some(0) }),
        ];
        let edn = to_edn(&ops, View::All);
        outstanding_at_most_one(&edn);
        let lines: Vec<&str> = edn.lines().collect();
        assert_eq!(lines.len(), ops.len() + 1, "the assignment folds into the poll; a subscribe comes first");
        assert_eq!(lines[0], "{:index 0, :time 0, :type :invoke, :process 4, :f :subscribe, :value [0 1 2]}");
        assert_eq!(lines[1], "{:index 1, :time 0, :type :ok, :process 4, :f :subscribe, :value [0 1 2]}");
        assert_eq!(
            lines[3],
            "{:index 3, :time 2000000, :type :ok, :process 4, :f :poll, :value [[:poll {2 [[3 7]]}]], \
             :rebalance-log [{:keys [0 2], :group \"g\", :generation 5, :starts {0 0, 2 3}}]}"
        );
        assert_eq!(
            lines[5],
            "{:index 5, :time 4000000, :type :ok, :process 4, :f :commit, :value {2 4}, :group \"g\", :generation 5}"
        );
        assert_eq!(lines[7], "{:index 7, :time 6000000, :type :ok, :process 4, :f :seek, :value {2 1}, :group \"g\"}");
        assert_eq!(lines[9], "{:index 9, :time 8000000, :type :ok, :process 9, :f :assign, :value [1], :starts {1 0}}");
        assert_eq!(
            lines[12],
            "{:index 12, :time 11000000, :type :info, :process 50, :f :send, :value [[:send 1 [0 9]]], :weak-acks true}",
            "an acks=leader acknowledgement promises no durability"
        );

        // Without the subscriber: the sends and the consumer without a group.
        let assigned = to_edn(&ops, View::Assigned);
        outstanding_at_most_one(&assigned);
        let lines: Vec<&str> = assigned.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[1], "{:index 1, :time 8000000, :type :ok, :process 9, :f :assign, :value [1], :starts {1 0}}");
        assert!(lines[2].contains(":process 1, :f :send"));
    }
}
