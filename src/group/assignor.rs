//! Partition assignors for consumer groups: which member of a group consumes
//! which partition. They are pure functions of the group's membership, the
//! topics' partition counts and (for Sticky) the last assignment, so the
//! coordinator stays deterministic under simulation and the logic is tested
//! from tables. Semantics follow Kafka's `range`, `roundrobin` and `sticky`
//! assignors, so clients moving from Kafka see the partitions they expect.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self { topic: topic.into(), partition }
    }
}

/// How a group spreads partitions over its members; chosen by the group's
/// members when they join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Assignor {
    /// Per topic, contiguous ranges: members consuming several co-partitioned
    /// topics get the same partition numbers of each.
    Range,
    /// All partitions dealt in turn: balanced when subscriptions are equal.
    RoundRobin,
    /// As balanced as the subscriptions allow, but members keep what they
    /// had, so a rebalance moves (and re-reads) as few partitions as it can.
    Sticky,
}

/// Member id -> the topics it subscribes to.
type Members = BTreeMap<String, BTreeSet<String>>;
/// Member id -> its partitions, sorted.
type Assignment = BTreeMap<String, Vec<TopicPartition>>;
/// Topic -> its subscribers, sorted by member id; only topics that exist and
/// have at least one subscriber.
type Subscribers<'a> = BTreeMap<&'a str, Vec<&'a str>>;
/// The Sticky assignor's working state: member id -> the partitions it holds.
type Owned<'a> = BTreeMap<&'a str, BTreeSet<TopicPartition>>;

impl Assignor {
    /// Parses "range", "roundrobin"/"round-robin", "sticky" (case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "range" => Some(Self::Range),
            "roundrobin" | "round-robin" => Some(Self::RoundRobin),
            "sticky" => Some(Self::Sticky),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Range => "range",
            Self::RoundRobin => "roundrobin",
            Self::Sticky => "sticky",
        }
    }

    /// Assigns every partition of every subscribed topic to exactly one
    /// member subscribed to that topic.
    /// - `members`: member id -> the topics it subscribes to.
    /// - `partitions`: topic -> partition count (topics missing here are ignored).
    /// - `previous`: the last assignment (member -> partitions); only Sticky uses it.
    ///
    /// Returns member id -> its partitions, sorted; every member appears (possibly with an empty list).
    pub fn assign(
        &self,
        members: &BTreeMap<String, BTreeSet<String>>,
        partitions: &BTreeMap<String, u32>,
        previous: &BTreeMap<String, Vec<TopicPartition>>,
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let subscribers = subscribers_by_topic(members, partitions);
        let assignment = match self {
            Self::Range => assign_range(members, partitions, &subscribers),
            Self::RoundRobin => assign_round_robin(members, partitions, &subscribers),
            Self::Sticky => assign_sticky(members, partitions, &subscribers, previous),
        };
        debug_assert_eq!(validate(members, partitions, &assignment), Ok(()));
        assignment
    }
}

fn subscribers_by_topic<'a>(members: &'a Members, partitions: &'a BTreeMap<String, u32>) -> Subscribers<'a> {
    let mut subscribers = Subscribers::new();
    for (member, topics) in members {
        for topic in topics.iter().filter(|topic| partitions.contains_key(*topic)) {
            subscribers.entry(topic.as_str()).or_default().push(member.as_str());
        }
    }
    subscribers
}

/// Every partition some member must get, in (topic, partition) order.
fn assignable_partitions<'a>(
    partitions: &'a BTreeMap<String, u32>,
    subscribers: &'a Subscribers,
) -> impl Iterator<Item = TopicPartition> + 'a {
    subscribers.keys().flat_map(move |topic| (0..partitions[*topic]).map(move |p| TopicPartition::new(*topic, p)))
}

fn empty_assignment(members: &Members) -> Assignment {
    members.keys().map(|member| (member.clone(), Vec::new())).collect()
}

/// Kafka's RangeAssignor: topics are handled independently, so with several
/// topics the first members by id end up with more partitions overall.
fn assign_range(members: &Members, partitions: &BTreeMap<String, u32>, subscribers: &Subscribers) -> Assignment {
    let mut assignment = empty_assignment(members);
    for (topic, subscribed) in subscribers {
        let count = partitions[*topic];
        let n = subscribed.len() as u32;
        let mut start = 0;
        for (i, member) in (0u32..).zip(subscribed) {
            let len = count / n + u32::from(i < count % n);
            let held = assignment.get_mut(*member).expect("subscribers are members");
            held.extend((start..start + len).map(|p| TopicPartition::new(*topic, p)));
            start += len;
        }
    }
    assignment
}

/// Kafka's RoundRobinAssignor: one cursor over the members, kept across
/// topics, that skips members not subscribed to the partition's topic.
fn assign_round_robin(members: &Members, partitions: &BTreeMap<String, u32>, subscribers: &Subscribers) -> Assignment {
    let mut assignment = empty_assignment(members);
    let ids: Vec<&String> = members.keys().collect();
    let mut next = 0;
    for tp in assignable_partitions(partitions, subscribers) {
        // Ends: `assignable_partitions` yields only topics with a subscriber.
        while !members[ids[next]].contains(&tp.topic) {
            next = (next + 1) % ids.len();
        }
        assignment.get_mut(ids[next]).expect("ids are members").push(tp);
        next = (next + 1) % ids.len();
    }
    assignment
}

/// Keep what is still valid, hand out the rest to the least loaded, then even
/// out the loads; each phase moves as little as it can.
fn assign_sticky(
    members: &Members,
    partitions: &BTreeMap<String, u32>,
    subscribers: &Subscribers,
    previous: &Assignment,
) -> Assignment {
    let mut unclaimed: BTreeSet<TopicPartition> = assignable_partitions(partitions, subscribers).collect();
    let mut owned = claim_previous(members, previous, &mut unclaimed);
    hand_out(subscribers, &mut owned, unclaimed);
    balance(subscribers, &mut owned);
    owned.into_iter().map(|(member, held)| (member.to_string(), held.into_iter().collect())).collect()
}

/// Each member keeps its previous partitions that still exist and that it
/// still subscribes to. A partition listed under two members (a stale
/// report) goes to the first by member id, so the outcome does not depend on
/// anything but the inputs.
fn claim_previous<'a>(
    members: &'a Members,
    previous: &Assignment,
    unclaimed: &mut BTreeSet<TopicPartition>,
) -> Owned<'a> {
    let mut owned: Owned = members.keys().map(|member| (member.as_str(), BTreeSet::new())).collect();
    for (member, held) in previous {
        let Some((id, topics)) = members.get_key_value(member) else { continue };
        let kept = held.iter().filter(|tp| topics.contains(&tp.topic) && unclaimed.remove(*tp));
        owned.get_mut(id.as_str()).expect("owned has every member").extend(kept.cloned());
    }
    owned
}

/// Gives each unclaimed partition, in order, to its least loaded subscriber;
/// `balance` then repairs what this short-sighted choice gets wrong when
/// subscriptions differ.
fn hand_out(subscribers: &Subscribers, owned: &mut Owned, unclaimed: BTreeSet<TopicPartition>) {
    for tp in unclaimed {
        let member = least_loaded(owned, &subscribers[tp.topic.as_str()]);
        owned.get_mut(member).expect("subscribers are members").insert(tp);
    }
}

/// The candidate holding the fewest partitions; `candidates` are sorted by
/// id and `min_by_key` keeps the first of equals, so ties go to the lowest id.
fn least_loaded<'a>(owned: &Owned, candidates: &[&'a str]) -> &'a str {
    candidates.iter().copied().min_by_key(|member| owned[member].len()).expect("a subscribed topic has a subscriber")
}

/// One partition changing hands during balancing.
struct Move<'a> {
    from: &'a str,
    to: &'a str,
    tp: TopicPartition,
}

/// Shifts load from members to ones holding at least two fewer, by single
/// moves while there are any, then along chains of moves (a gives to b, b
/// gives to c, ...), until no such chain exists. Then the loads are as even
/// as the subscriptions allow: no other assignment has a lower maximum or a
/// lower sum of squares (a "semi-matching without cost-reducing paths",
/// Harvey, Ladner, Lovász, Tamir 2003). Each step lowers the sum of squared
/// loads, so the loop ends. With identical subscriptions every step is a
/// single move from a most to a least loaded member, which moves no more
/// partitions than balance requires.
fn balance(subscribers: &Subscribers, owned: &mut Owned) {
    while let Some(chain) = find_chain(subscribers, owned) {
        for Move { from, to, tp } in chain {
            let taken = owned.get_mut(from).expect("from is a member").remove(&tp);
            assert!(taken, "a chain moves partitions their giver holds");
            owned.get_mut(to).expect("to is a member").insert(tp);
        }
    }
}

/// The next step for `balance`, from the most loaded member (ties by id)
/// that has one. Single moves are tried first because they are cheap to find
/// and move one partition instead of several.
fn find_chain<'a>(subscribers: &Subscribers<'a>, owned: &Owned<'a>) -> Option<Vec<Move<'a>>> {
    let sources = overloaded(owned);
    let single = sources.iter().find_map(|from| single_move(subscribers, owned, from));
    single.map(|step| vec![step]).or_else(|| sources.iter().find_map(|from| chain_from(subscribers, owned, from)))
}

/// Members holding at least two more than the least loaded, most loaded
/// first, ties by id: the only ones `balance` takes from.
fn overloaded<'a>(owned: &Owned<'a>) -> Vec<&'a str> {
    let Some(load_min) = owned.values().map(BTreeSet::len).min() else { return Vec::new() };
    let mut sources: Vec<&str> = owned.keys().copied().filter(|member| owned[member].len() > load_min + 1).collect();
    // Stable: equal loads stay in id order.
    sources.sort_by_key(|member| Reverse(owned[member].len()));
    sources
}

/// From `from`, its first partition (in order) whose least loaded
/// subscriber holds at least two fewer, to that subscriber.
fn single_move<'a>(subscribers: &Subscribers<'a>, owned: &Owned<'a>, from: &'a str) -> Option<Move<'a>> {
    first_of_each_topic(&owned[from]).find_map(|tp| {
        let to = least_loaded(owned, &subscribers[tp.topic.as_str()]);
        (owned[from].len() >= owned[to].len() + 2).then(|| Move { from, to, tp: tp.clone() })
    })
}

/// Breadth-first from `from` over "holds a partition of a topic the next
/// member subscribes to", each step giving away the giver's first such
/// partition. The chain ends at the first member reached that holds at least
/// two fewer than `from`: the shortest chain, so the fewest partitions move.
fn chain_from<'a>(subscribers: &Subscribers<'a>, owned: &Owned<'a>, from: &'a str) -> Option<Vec<Move<'a>>> {
    let mut reached_by: BTreeMap<&str, Option<Move>> = BTreeMap::from([(from, None)]);
    let mut queue = VecDeque::from([from]);
    while let Some(giver) = queue.pop_front() {
        for tp in first_of_each_topic(&owned[giver]) {
            for &taker in &subscribers[tp.topic.as_str()] {
                if reached_by.contains_key(taker) {
                    continue;
                }
                reached_by.insert(taker, Some(Move { from: giver, to: taker, tp: tp.clone() }));
                if owned[taker].len() + 2 <= owned[from].len() {
                    return Some(unwind(reached_by, taker));
                }
                queue.push_back(taker);
            }
        }
    }
    None
}

/// The first partition (in order) of each topic in `held`.
fn first_of_each_topic(held: &BTreeSet<TopicPartition>) -> impl Iterator<Item = &TopicPartition> {
    let mut topic_last = None;
    held.iter().filter(move |tp| topic_last.replace(tp.topic.as_str()) != Some(tp.topic.as_str()))
}

/// The moves that reached `end`. Their order does not matter: each moves a
/// different partition.
fn unwind<'a>(mut reached_by: BTreeMap<&'a str, Option<Move<'a>>>, end: &'a str) -> Vec<Move<'a>> {
    let mut chain = Vec::new();
    let mut member = end;
    while let Some(step) = reached_by.remove(member).flatten() {
        member = step.from;
        chain.push(step);
    }
    chain
}

/// Why `assignment` breaks the contract of [`Assignor::assign`], if it does:
/// checked in debug builds after every assignment and by the tests.
fn validate(members: &Members, partitions: &BTreeMap<String, u32>, assignment: &Assignment) -> Result<(), String> {
    if !assignment.keys().eq(members.keys()) {
        return Err(format!("assignment for {:?}, members {:?}", assignment.keys(), members.keys()));
    }
    let mut assigned = BTreeSet::new();
    for (member, held) in assignment {
        if !held.windows(2).all(|pair| pair[0] < pair[1]) {
            return Err(format!("{member}'s partitions are not sorted and distinct: {held:?}"));
        }
        if let Some(tp) = held.iter().find(|tp| !members[member].contains(&tp.topic)) {
            return Err(format!("{member} got {tp:?} without subscribing to its topic"));
        }
        if let Some(tp) = held.iter().find(|tp| !assigned.insert(*tp)) {
            return Err(format!("{tp:?} is assigned twice"));
        }
    }
    let subscribers = subscribers_by_topic(members, partitions);
    let expected: BTreeSet<TopicPartition> = assignable_partitions(partitions, &subscribers).collect();
    if let Some(tp) = expected.iter().find(|tp| !assigned.contains(tp)) {
        return Err(format!("{tp:?} is not assigned"));
    }
    if let Some(tp) = assigned.iter().find(|tp| !expected.contains(tp)) {
        return Err(format!("{tp:?} does not exist but is assigned"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::{btree_map, btree_set, vec};
    use proptest::prelude::*;

    /// Member id -> its topics, or member id -> its partitions as "topic/partition".
    type Spec = &'static [(&'static str, &'static [&'static str])];

    fn members_from(spec: Spec) -> Members {
        spec.iter()
            .map(|(member, topics)| (member.to_string(), topics.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    fn partitions_from(spec: &[(&str, u32)]) -> BTreeMap<String, u32> {
        spec.iter().map(|(topic, count)| (topic.to_string(), *count)).collect()
    }

    fn assignment_from(spec: Spec) -> Assignment {
        spec.iter().map(|(member, held)| (member.to_string(), held.iter().map(|s| tp(s)).collect())).collect()
    }

    fn tp(s: &str) -> TopicPartition {
        let (topic, partition) = s.rsplit_once('/').expect("topic/partition");
        TopicPartition::new(topic, partition.parse().expect("a partition number"))
    }

    fn loads(assignment: &Assignment) -> Vec<usize> {
        assignment.values().map(Vec::len).collect()
    }

    fn is_balanced(assignment: &Assignment) -> bool {
        let loads = loads(assignment);
        loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0) <= 1
    }

    /// The partitions `previous` gave a member that it no longer has.
    fn moved_count(previous: &Assignment, current: &Assignment) -> usize {
        let lost = |(member, held): (&String, &Vec<TopicPartition>)| {
            held.iter().filter(|tp| current.get(member).is_none_or(|now| !now.contains(tp))).count()
        };
        previous.iter().map(lost).sum()
    }

    #[test]
    fn parse_and_name() {
        let cases: &[(&str, Option<Assignor>)] = &[
            ("range", Some(Assignor::Range)),
            ("RANGE", Some(Assignor::Range)),
            ("roundrobin", Some(Assignor::RoundRobin)),
            ("Round-Robin", Some(Assignor::RoundRobin)),
            ("sticky", Some(Assignor::Sticky)),
            ("Sticky", Some(Assignor::Sticky)),
            ("round_robin", None),
            ("cooperative-sticky", None),
            ("", None),
        ];
        for (name, expected) in cases {
            assert_eq!(Assignor::parse(name), *expected, "parse({name:?})");
        }
        for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
            assert_eq!(Assignor::parse(assignor.name()), Some(assignor));
        }
    }

    struct Case {
        name: &'static str,
        members: Spec,
        partitions: &'static [(&'static str, u32)],
        range: Spec,
        round_robin: Spec,
    }

    const CASES: &[Case] = &[
        Case {
            name: "2 members, 1 topic of 3: the first member gets the extra one",
            members: &[("a", &["t"]), ("b", &["t"])],
            partitions: &[("t", 3)],
            range: &[("a", &["t/0", "t/1"]), ("b", &["t/2"])],
            round_robin: &[("a", &["t/0", "t/2"]), ("b", &["t/1"])],
        },
        Case {
            name: "3 members, 7 partitions: ranges of 3, 2, 2",
            members: &[("a", &["t"]), ("b", &["t"]), ("c", &["t"])],
            partitions: &[("t", 7)],
            range: &[("a", &["t/0", "t/1", "t/2"]), ("b", &["t/3", "t/4"]), ("c", &["t/5", "t/6"])],
            round_robin: &[("a", &["t/0", "t/3", "t/6"]), ("b", &["t/1", "t/4"]), ("c", &["t/2", "t/5"])],
        },
        Case {
            name: "3 members, 2 topics, different subscriptions: the cursor skips non-subscribers",
            members: &[("a", &["x"]), ("b", &["x", "y"]), ("c", &["y"])],
            partitions: &[("x", 3), ("y", 4)],
            range: &[("a", &["x/0", "x/1"]), ("b", &["x/2", "y/0", "y/1"]), ("c", &["y/2", "y/3"])],
            round_robin: &[("a", &["x/0", "x/2"]), ("b", &["x/1", "y/0", "y/2"]), ("c", &["y/1", "y/3"])],
        },
        Case {
            name: "more members than partitions: the last members get nothing",
            members: &[("a", &["t"]), ("b", &["t"]), ("c", &["t"]), ("d", &["t"])],
            partitions: &[("t", 2)],
            range: &[("a", &["t/0"]), ("b", &["t/1"]), ("c", &[]), ("d", &[])],
            round_robin: &[("a", &["t/0"]), ("b", &["t/1"]), ("c", &[]), ("d", &[])],
        },
        Case {
            name: "2 topics of 1 partition: range piles them on the first member",
            members: &[("a", &["x", "y"]), ("b", &["x", "y"]), ("c", &["x", "y"])],
            partitions: &[("x", 1), ("y", 1)],
            range: &[("a", &["x/0", "y/0"]), ("b", &[]), ("c", &[])],
            round_robin: &[("a", &["x/0"]), ("b", &["y/0"]), ("c", &[])],
        },
        Case { name: "no members", members: &[], partitions: &[("t", 3)], range: &[], round_robin: &[] },
        Case {
            name: "unknown and empty topics are ignored; a member without topics gets nothing",
            members: &[("a", &["ghost", "t", "void"]), ("b", &[])],
            partitions: &[("t", 2), ("void", 0), ("unsubscribed", 5)],
            range: &[("a", &["t/0", "t/1"]), ("b", &[])],
            round_robin: &[("a", &["t/0", "t/1"]), ("b", &[])],
        },
    ];

    #[test]
    fn range_and_round_robin_table() {
        for case in CASES {
            let members = members_from(case.members);
            let partitions = partitions_from(case.partitions);
            let range = Assignor::Range.assign(&members, &partitions, &Assignment::new());
            let round_robin = Assignor::RoundRobin.assign(&members, &partitions, &Assignment::new());
            assert_eq!(range, assignment_from(case.range), "range: {}", case.name);
            assert_eq!(round_robin, assignment_from(case.round_robin), "roundrobin: {}", case.name);
        }
    }

    struct StickyCase {
        name: &'static str,
        members: Spec,
        partitions: &'static [(&'static str, u32)],
        previous: Spec,
        expected: Spec,
    }

    const STICKY_CASES: &[StickyCase] = &[
        StickyCase {
            name: "a member leaves: the others keep theirs and share the leaver's",
            members: &[("a", &["t"]), ("b", &["t"])],
            partitions: &[("t", 6)],
            previous: &[("a", &["t/0", "t/1"]), ("b", &["t/2", "t/3"]), ("c", &["t/4", "t/5"])],
            expected: &[("a", &["t/0", "t/1", "t/4"]), ("b", &["t/2", "t/3", "t/5"])],
        },
        StickyCase {
            name: "a member joins: each old member gives up its first partition",
            members: &[("a", &["t"]), ("b", &["t"]), ("c", &["t"])],
            partitions: &[("t", 6)],
            previous: &[("a", &["t/0", "t/1", "t/2"]), ("b", &["t/3", "t/4", "t/5"])],
            expected: &[("a", &["t/1", "t/2"]), ("b", &["t/4", "t/5"]), ("c", &["t/0", "t/3"])],
        },
        StickyCase {
            name: "fresh, unequal subscriptions: b gets x/1 and all of y, then gives x/1 to a",
            members: &[("a", &["x"]), ("b", &["x", "y"])],
            partitions: &[("x", 2), ("y", 2)],
            previous: &[],
            expected: &[("a", &["x/0", "x/1"]), ("b", &["y/0", "y/1"])],
        },
        StickyCase {
            name: "stale previous: unsubscribed, deleted, doubly claimed and departed entries are dropped",
            members: &[("a", &["x"]), ("b", &["x", "y"])],
            partitions: &[("x", 2), ("y", 2)],
            previous: &[("a", &["x/0", "y/0", "x/5"]), ("b", &["x/0", "y/1"]), ("gone", &["y/0"])],
            expected: &[("a", &["x/0", "x/1"]), ("b", &["y/0", "y/1"])],
        },
        StickyCase {
            name: "a chain: a can give only to b, who passes a y partition on to c",
            members: &[("a", &["x"]), ("b", &["x", "y"]), ("c", &["y"])],
            partitions: &[("x", 2), ("y", 1)],
            previous: &[("a", &["x/0", "x/1"]), ("b", &["y/0"])],
            expected: &[("a", &["x/1"]), ("b", &["x/0"]), ("c", &["y/0"])],
        },
        StickyCase {
            name: "no single move helps and a (alone on w) is stuck: b's chain through d reaches c",
            members: &[("a", &["w"]), ("b", &["x"]), ("c", &["y"]), ("d", &["x", "y"])],
            partitions: &[("w", 3), ("x", 3), ("y", 3)],
            previous: &[
                ("a", &["w/0", "w/1", "w/2"]),
                ("b", &["x/0", "x/1", "x/2"]),
                ("c", &["y/2"]),
                ("d", &["y/0", "y/1"]),
            ],
            expected: &[
                ("a", &["w/0", "w/1", "w/2"]),
                ("b", &["x/1", "x/2"]),
                ("c", &["y/0", "y/2"]),
                ("d", &["x/0", "y/1"]),
            ],
        },
        StickyCase {
            name: "a stuck member (the only one on x) does not stop b from giving to c",
            members: &[("a", &["x"]), ("b", &["y", "z"]), ("c", &["z"])],
            partitions: &[("x", 3), ("y", 1), ("z", 2)],
            previous: &[("a", &["x/0", "x/1", "x/2"]), ("b", &["y/0", "z/0", "z/1"])],
            expected: &[("a", &["x/0", "x/1", "x/2"]), ("b", &["y/0", "z/1"]), ("c", &["z/0"])],
        },
        StickyCase {
            name: "overloaded by its previous partitions: only the excess moves",
            members: &[("a", &["t"]), ("b", &["t"]), ("c", &["t"])],
            partitions: &[("t", 5)],
            previous: &[("a", &["t/0", "t/1", "t/2", "t/3", "t/4"])],
            expected: &[("a", &["t/3", "t/4"]), ("b", &["t/0", "t/2"]), ("c", &["t/1"])],
        },
    ];

    #[test]
    fn sticky_table() {
        for case in STICKY_CASES {
            let members = members_from(case.members);
            let partitions = partitions_from(case.partitions);
            let assignment = Assignor::Sticky.assign(&members, &partitions, &assignment_from(case.previous));
            assert_eq!(assignment, assignment_from(case.expected), "sticky: {}", case.name);
        }
    }

    #[test]
    fn sticky_member_leaves_others_keep_all_theirs() {
        // Set up: a balanced assignment of 3 members over 2 topics.
        let all = members_from(&[("a", &["x", "y"]), ("b", &["x", "y"]), ("c", &["x", "y"])]);
        let partitions = partitions_from(&[("x", 4), ("y", 5)]);
        let before = Assignor::Sticky.assign(&all, &partitions, &Assignment::new());

        // Act: b leaves.
        let mut remaining = all.clone();
        remaining.remove("b");
        let after = Assignor::Sticky.assign(&remaining, &partitions, &before);

        // Check: a and c keep everything; b's partitions are spread evenly.
        for member in ["a", "c"] {
            assert!(before[member].iter().all(|tp| after[member].contains(tp)), "{member} lost a partition");
        }
        assert_eq!(moved_count(&before, &after), before["b"].len());
        assert!(is_balanced(&after), "{after:?}");
    }

    #[test]
    fn sticky_member_joins_moves_only_what_balance_requires() {
        let cases: &[(u32, usize, usize)] = &[
            // (partitions, members before, partitions that must move)
            (6, 2, 2),
            (9, 3, 2),
            (10, 3, 2),
            (2, 2, 0),
            (12, 1, 6),
        ];
        for &(count, members_before, moves) in cases {
            let partitions = partitions_from(&[("t", count)]);
            let group =
                |n: usize| -> Members { (0..n).map(|i| (format!("m{i}"), BTreeSet::from(["t".into()]))).collect() };
            let before = Assignor::Sticky.assign(&group(members_before), &partitions, &Assignment::new());
            let after = Assignor::Sticky.assign(&group(members_before + 1), &partitions, &before);
            assert_eq!(moved_count(&before, &after), moves, "{count} partitions, {members_before} + 1 members");
            assert!(is_balanced(&after), "{after:?}");
        }
    }

    #[test]
    fn sticky_fresh_is_balanced_and_deals_like_round_robin() {
        let groups: &[(Spec, &[(&str, u32)])] = &[
            (&[("a", &["t"]), ("b", &["t"])], &[("t", 3)]),
            (&[("a", &["x", "y"]), ("b", &["x", "y"]), ("c", &["x", "y"])], &[("x", 4), ("y", 5)]),
            (&[("a", &["t"]), ("b", &["t"]), ("c", &["t"]), ("d", &["t"])], &[("t", 2)]),
        ];
        for (members, partitions) in groups {
            let (members, partitions) = (members_from(members), partitions_from(partitions));
            let sticky = Assignor::Sticky.assign(&members, &partitions, &Assignment::new());
            let round_robin = Assignor::RoundRobin.assign(&members, &partitions, &Assignment::new());
            assert!(is_balanced(&sticky), "{sticky:?}");
            assert_eq!(sticky, round_robin);
        }
    }

    const TOPICS_MAX: u8 = 4;
    const MEMBERS_MAX: usize = 6;
    const PARTITIONS_MAX: u32 = 8;

    fn topic() -> impl Strategy<Value = String> {
        (0..TOPICS_MAX).prop_map(|i| format!("t{i}"))
    }

    fn partitions() -> impl Strategy<Value = BTreeMap<String, u32>> {
        btree_map(topic(), 0..PARTITIONS_MAX, 0..TOPICS_MAX as usize)
    }

    /// Includes members that are gone, topics nobody has and partitions past the end.
    fn previous() -> impl Strategy<Value = Assignment> {
        let tp = (topic(), 0..PARTITIONS_MAX + 2).prop_map(|(t, p)| TopicPartition::new(t, p));
        btree_map((0..MEMBERS_MAX + 2).prop_map(|i| format!("m{i}")), vec(tp, 0..10), 0..MEMBERS_MAX + 2)
    }

    fn members() -> impl Strategy<Value = Members> {
        btree_map(
            (0..MEMBERS_MAX).prop_map(|i| format!("m{i}")),
            btree_set(topic(), 0..TOPICS_MAX as usize),
            0..=MEMBERS_MAX,
        )
    }

    /// Every member subscribes to the same topics: the case where balance is promised.
    fn members_alike() -> impl Strategy<Value = Members> {
        (0..=MEMBERS_MAX, btree_set(topic(), 0..=TOPICS_MAX as usize))
            .prop_map(|(n, topics)| (0..n).map(|i| (format!("m{i}"), topics.clone())).collect())
    }

    /// The most partitions members can keep from `claimed` in a balanced
    /// assignment of `total` partitions: the one-extra slots go to those
    /// that claimed the most.
    fn keepable_max(claimed: &Owned, total: usize) -> usize {
        let mut counts: Vec<usize> = claimed.values().map(BTreeSet::len).collect();
        counts.sort_unstable_by_key(|count| Reverse(*count));
        let (share, extra) = (total / counts.len().max(1), total % counts.len().max(1));
        counts.iter().enumerate().map(|(i, count)| (*count).min(share + usize::from(i < extra))).sum()
    }

    /// Small enough to try every assignment. Members on one or two of three
    /// topics, all of which exist, often need chains to balance.
    fn members_few() -> impl Strategy<Value = Members> {
        let topic = (0..3u8).prop_map(|i| format!("t{i}"));
        vec(btree_set(topic, 1..=2), 3).prop_map(|subscriptions| {
            subscriptions.into_iter().enumerate().map(|(i, topics)| (format!("m{i}"), topics)).collect()
        })
    }

    fn partitions_few() -> impl Strategy<Value = BTreeMap<String, u32>> {
        vec(1..=3u32, 3).prop_map(|counts| counts.into_iter().enumerate().map(|(i, n)| (format!("t{i}"), n)).collect())
    }

    /// Dense, so members start far from balanced.
    fn previous_few() -> impl Strategy<Value = Assignment> {
        let tp = ((0..3u8).prop_map(|i| format!("t{i}")), 0..3u32).prop_map(|(t, p)| TopicPartition::new(t, p));
        btree_map((0..3usize).prop_map(|i| format!("m{i}")), vec(tp, 0..9), 0..=3)
    }

    fn squares(assignment: &Assignment) -> usize {
        loads(assignment).iter().map(|load| load * load).sum()
    }

    /// The lowest sum of squared loads of any valid assignment, by trying them all.
    fn squares_min(members: &Members, partitions: &BTreeMap<String, u32>) -> usize {
        let subscribers = subscribers_by_topic(members, partitions);
        let takers: Vec<&[&str]> = assignable_partitions(partitions, &subscribers)
            .map(|tp| subscribers[tp.topic.as_str()].as_slice())
            .collect();
        let mut loads: BTreeMap<&str, usize> = members.keys().map(|member| (member.as_str(), 0)).collect();
        squares_min_from(&takers, &mut loads)
    }

    fn squares_min_from<'a>(takers: &[&[&'a str]], loads: &mut BTreeMap<&'a str, usize>) -> usize {
        let Some((first, rest)) = takers.split_first() else {
            return loads.values().map(|load| load * load).sum();
        };
        let mut best = usize::MAX;
        for member in *first {
            *loads.get_mut(member).expect("a member") += 1;
            best = best.min(squares_min_from(rest, loads));
            *loads.get_mut(member).expect("a member") -= 1;
        }
        best
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn every_assignor_keeps_the_contract(members in members(), partitions in partitions(), previous in previous()) {
            for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
                let assignment = assignor.assign(&members, &partitions, &previous);
                prop_assert_eq!(validate(&members, &partitions, &assignment), Ok(()), "{}", assignor.name());
                prop_assert_eq!(&assignment, &assignor.assign(&members, &partitions, &previous), "{}", assignor.name());
                // The order of a member's previous partitions carries no meaning.
                let reversed = previous.iter().map(|(m, held)| (m.clone(), held.iter().rev().cloned().collect())).collect();
                prop_assert_eq!(&assignment, &assignor.assign(&members, &partitions, &reversed), "{}", assignor.name());
            }
        }

        #[test]
        fn range_balances_each_topic(members in members(), partitions in partitions()) {
            let assignment = Assignor::Range.assign(&members, &partitions, &Assignment::new());
            for (topic, subscribed) in subscribers_by_topic(&members, &partitions) {
                let counts: Vec<usize> =
                    subscribed.iter().map(|m| assignment[*m].iter().filter(|tp| tp.topic == topic).count()).collect();
                prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "{}: {:?}", topic, counts);
            }
        }

        #[test]
        fn round_robin_and_sticky_balance_alike_members(
            members in members_alike(), partitions in partitions(), previous in previous()
        ) {
            for assignor in [Assignor::RoundRobin, Assignor::Sticky] {
                let assignment = assignor.assign(&members, &partitions, &previous);
                prop_assert!(is_balanced(&assignment), "{}: {:?}", assignor.name(), assignment);
            }
        }

        #[test]
        fn sticky_keeps_all_it_can_for_alike_members(
            members in members_alike(), partitions in partitions(), previous in previous()
        ) {
            let subscribers = subscribers_by_topic(&members, &partitions);
            let mut unclaimed: BTreeSet<TopicPartition> = assignable_partitions(&partitions, &subscribers).collect();
            let total = unclaimed.len();
            let claimed = claim_previous(&members, &previous, &mut unclaimed);

            let assignment = Assignor::Sticky.assign(&members, &partitions, &previous);

            let kept: usize =
                claimed.iter().map(|(m, held)| held.iter().filter(|tp| assignment[*m].contains(tp)).count()).sum();
            prop_assert_eq!(kept, keepable_max(&claimed, total));
        }

        #[test]
        fn sticky_balances_as_evenly_as_subscriptions_allow(
            members in members_few(), partitions in partitions_few(), previous in previous_few()
        ) {
            let assignment = Assignor::Sticky.assign(&members, &partitions, &previous);
            prop_assert_eq!(squares(&assignment), squares_min(&members, &partitions), "{:?}", assignment);
        }

        #[test]
        fn sticky_balances_members_with_equal_subscriptions(
            members in members(), partitions in partitions(), previous in previous()
        ) {
            let assignment = Assignor::Sticky.assign(&members, &partitions, &previous);
            let mut loads_by_topics: BTreeMap<&BTreeSet<String>, Vec<usize>> = BTreeMap::new();
            for (member, topics) in &members {
                loads_by_topics.entry(topics).or_default().push(assignment[member].len());
            }
            for (topics, loads) in loads_by_topics {
                let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
                prop_assert!(spread <= 1, "members on {:?} hold {:?}", topics, loads);
            }
        }

        #[test]
        fn sticky_is_a_fixed_point(members in members(), partitions in partitions(), previous in previous()) {
            let assignment = Assignor::Sticky.assign(&members, &partitions, &previous);
            prop_assert_eq!(&Assignor::Sticky.assign(&members, &partitions, &assignment), &assignment);
        }
    }
}
