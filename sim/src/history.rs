//! What a simulated run did, in the shape of Jepsen's kafka workload
//! (`jepsen.tests.kafka`): every operation is an invocation and then a
//! completion (`:ok`, `:fail` or `:info` when the outcome is unknown), by a
//! process, at a time. Sends and polls are lists of micro-operations keyed
//! by partition, so a history exports as EDN that Jepsen's checker reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
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
    /// A consumer's partitions in a group generation.
    Assign { group: String, generation: u64, partitions: Vec<u32> },
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

/// The history as EDN, one operation per line, as Jepsen's kafka workload
/// writes it: `:send` values are `[[:send k v]]`, completed
/// `[[:send k [offset v]]]`; `:poll` values are `[[:poll {k [[offset v] ...]}]]`.
pub fn to_edn(ops: &[Op]) -> String {
    let mut out = String::new();
    for op in ops {
        let kind = op.kind.name();
        let value = match &op.value {
            Value::Send { partition, value, offset: Some(offset) } => {
                format!("[[:send {partition} [{offset} {value}]]]")
            }
            Value::Send { partition, value, offset: None } => format!("[[:send {partition} {value}]]"),
            Value::Poll(polled) if op.kind == Kind::Invoke => {
                let _ = polled;
                "[[:poll]]".to_owned()
            }
            Value::Poll(polled) => {
                let mut body = String::new();
                for (partition, records) in polled {
                    let pairs: Vec<String> = records.iter().map(|(o, v)| format!("[{o} {v}]")).collect();
                    let _ = write!(body, "{partition} [{}] ", pairs.join(" "));
                }
                format!("[[:poll {{{}}}]]", body.trim_end())
            }
            Value::Assign { partitions, .. } => {
                let keys: Vec<String> = partitions.iter().map(u32::to_string).collect();
                format!("[{}]", keys.join(" "))
            }
            Value::Commit { offsets, .. } => {
                let keys: Vec<String> = offsets.iter().map(|(p, o)| format!("{p} {o}")).collect();
                format!("{{{}}}", keys.join(", "))
            }
            // Jepsen's workload has no seek; an assignment is what tells its
            // checker a consumer's position may have moved, so a seek
            // exports as the assignment it kept, the seek beside it.
            Value::Seek { partitions, .. } => {
                let keys: Vec<String> = partitions.iter().map(u32::to_string).collect();
                format!("[{}]", keys.join(" "))
            }
        };
        let extra = match &op.value {
            Value::Assign { group, generation, .. } | Value::Commit { group, generation, .. } => {
                format!(", :group \"{group}\", :generation {generation}")
            }
            Value::Seek { group, partition, offset, .. } => {
                let to = offset.map_or_else(|| "nil".to_owned(), |o| o.to_string());
                format!(", :group \"{group}\", :seek {{{partition} {to}}}")
            }
            _ => String::new(),
        };
        // Exported under the function Jepsen's checker knows (see above).
        let f = match op.value {
            Value::Seek { .. } => "assign",
            _ => op.value.f(),
        };
        let _ = writeln!(
            out,
            "{{:index {}, :time {}, :type :{kind}, :process {}, :f :{}, :value {value}{extra}}}",
            op.index,
            op.time.as_nanos(),
            op.process,
            f
        );
    }
    out
}

/// A stable fingerprint of a history (FNV-1a over its EDN): the same seed
/// must give the same fingerprint.
pub fn fingerprint(ops: &[Op]) -> u64 {
    fnv1a(to_edn(ops).as_bytes(), FNV_OFFSET)
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
        let edn = to_edn(&ops);
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

    #[test]
    fn a_seek_exports_as_the_assignment_it_kept() {
        let seek = |offset| Value::Seek { group: "g".into(), partition: 2, offset, partitions: vec![0, 2] };
        let ops = vec![op(0, 4, Kind::Invoke, seek(None)), op(1, 4, Kind::Ok, seek(Some(5)))];
        let edn = to_edn(&ops);
        let lines: Vec<&str> = edn.lines().collect();
        assert_eq!(
            lines[1],
            "{:index 1, :time 1000000, :type :ok, :process 4, :f :assign, :value [0 2], :group \"g\", :seek {2 5}}"
        );
        assert_eq!(pairs(&ops).len(), 1, "the seek's completion pairs with its invocation");
    }
}
