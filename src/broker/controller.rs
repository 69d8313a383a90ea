//! The controller: one broker at a time (elected in the metadata store,
//! see [`crate::meta::election`]) keeps partitions where they should be.
//!
//! - **Healing.** A broker that has been gone (unregistered) for longer
//!   than `replace_broker_after_ms` has its replicas replaced by live
//!   brokers that hold none of the partition, the least loaded first.
//! - **Replication.** A partition placed on fewer brokers than its
//!   replication factor asks (the topic's, or the default; a topic created
//!   while few brokers were up) gains replicas as brokers join.
//! - **Scale in.** A broker an operator decommissioned (see
//!   [`crate::meta::cluster::decommission`]) is replaced at once, as a gone
//!   one is, and takes no replicas; once no partition names it, it is
//!   drained and may be stopped for good.
//! - **Balance.** While some live broker holds two or more replicas more
//!   than another (a newly added broker holds none), replicas move from the
//!   most to the least loaded, a few partitions at a time.
//!
//! The controller only writes targets into topic records. Each partition's
//! Raft leader carries a target out (learner, catch-up, voter, removal of
//! the old replica; see `Broker::converge`), so a controller that dies
//! mid-move leaves nothing half done that the next one must repair. Every
//! change is a compare-and-set on the record it read and carries the
//! controller's epoch: a deposed controller cannot overwrite its
//! successor's decisions.
//!
//! weir's own offsets partition moves like any other: the group
//! coordinator follows its leadership.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::core::Broker;
use crate::meta::cluster::{decommissioned, live_brokers};
use crate::meta::election::Leadership;
use crate::meta::topics::TopicRecord;

/// The controller looks again at least this often, besides on changes.
const TICK: Duration = Duration::from_secs(1);
/// At most this many partitions move for balance at once (healing is not
/// limited: a lost replica is a risk, not an imbalance).
pub const BALANCING_MOVES_MAX: usize = 4;

/// What the controller is asked to do beyond healing.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Move replicas from the most to the least loaded brokers.
    pub balance: bool,
    /// Replicas a partition should have when its topic does not say.
    pub default_replication_factor: u32,
}

/// One decision: partition `partition` of topic `topic` (with `id`) goes
/// from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassignment {
    pub topic: String,
    pub id: u64,
    pub partition: u32,
    pub from: Vec<u64>,
    pub to: Vec<u64>,
}

impl Reassignment {
    fn new(record: &TopicRecord, partition: u32, to: Vec<u64>) -> Self {
        let from = record.target(partition).to_vec();
        Self { topic: record.name.clone(), id: record.id, partition, from, to }
    }
}

/// The least loaded live broker not in `taken` (lowest id on a tie),
/// counted as holding one replica more.
fn least_loaded(load: &mut BTreeMap<u64, usize>, taken: &[u64]) -> Option<u64> {
    let (&broker, _) = load.iter().filter(|(b, _)| !taken.contains(b)).min_by_key(|(b, n)| (**n, **b))?;
    *load.entry(broker).or_default() += 1;
    Some(broker)
}

/// Replicas (targets) per live broker, over the topics the controller moves.
fn load(records: &[TopicRecord], live: &BTreeSet<u64>) -> BTreeMap<u64, usize> {
    let mut load: BTreeMap<u64, usize> = live.iter().map(|b| (*b, 0)).collect();
    for record in records {
        for p in 0..record.config.partitions {
            for broker in record.target(p) {
                if let Some(n) = load.get_mut(broker) {
                    *n += 1;
                }
            }
        }
    }
    load
}

/// What the controller should change, given the topic records, the live
/// brokers and those gone long enough to be replaced. Pure, so the rules
/// can be tested without a cluster.
pub fn plan(records: &[TopicRecord], live: &BTreeSet<u64>, gone: &BTreeSet<u64>, policy: Policy) -> Vec<Reassignment> {
    let balance = policy.balance;
    let mut load = load(records, live);
    let mut decided: Vec<Reassignment> = Vec::new();
    let mut moving = 0;
    let mut touched: BTreeSet<(u64, u32)> = BTreeSet::new();
    for record in records.iter() {
        for p in 0..record.config.partitions {
            if record.moving(p) {
                moving += 1;
                touched.insert((record.id, p));
            }
        }
    }

    // Healing: replace gone brokers, position for position (a replaced
    // preferred leader's successor becomes the preferred leader). A moving
    // partition is healed too: its leader goes for the newest target.
    for record in records.iter() {
        for p in 0..record.config.partitions {
            let from = record.target(p);
            if !from.iter().any(|b| gone.contains(b)) {
                continue;
            }
            let mut to = from.to_vec();
            for slot in 0..to.len() {
                if !gone.contains(&to[slot]) {
                    continue;
                }
                if let Some(replacement) = least_loaded(&mut load, &to) {
                    to[slot] = replacement;
                }
            }
            if to != from {
                touched.insert((record.id, p));
                decided.push(Reassignment::new(record, p, to));
            }
        }
    }

    // Replication: add replicas where a partition has fewer than asked.
    for record in records {
        let factor = record.config.replication_factor.unwrap_or(policy.default_replication_factor) as usize;
        for p in 0..record.config.partitions {
            let from = record.target(p);
            if touched.contains(&(record.id, p)) || from.len() >= factor {
                continue;
            }
            let mut to = from.to_vec();
            while to.len() < factor {
                let Some(added) = least_loaded(&mut load, &to) else { break };
                to.push(added);
            }
            if to != from {
                touched.insert((record.id, p));
                decided.push(Reassignment::new(record, p, to));
            }
        }
    }

    // Balance: move one replica at a time from the most to the least
    // loaded live broker while they differ by two or more.
    while balance && moving + decided.len() < BALANCING_MOVES_MAX {
        let Some((&low, &low_n)) = load.iter().min_by_key(|(b, n)| (**n, **b)) else { break };
        let Some((&high, &high_n)) = load.iter().max_by_key(|(b, n)| (**n, std::cmp::Reverse(**b))) else { break };
        if high_n < low_n + 2 {
            break;
        }
        let found = records.iter().find_map(|record| {
            (0..record.config.partitions)
                .find(|&p| {
                    let target = record.target(p);
                    !touched.contains(&(record.id, p))
                        && target.contains(&high)
                        && !target.contains(&low)
                        && !target.iter().any(|b| gone.contains(b) || !live.contains(b))
                })
                .map(|p| (record, p))
        });
        let Some((record, p)) = found else { break };
        let to: Vec<u64> = record.target(p).iter().map(|&b| if b == high { low } else { b }).collect();
        touched.insert((record.id, p));
        *load.entry(high).or_default() -= 1;
        *load.entry(low).or_default() += 1;
        decided.push(Reassignment::new(record, p, to));
    }
    decided
}

impl Broker {
    /// Campaigns for controller and, while elected, keeps partitions placed,
    /// until the future is dropped.
    pub async fn run_controller(self: Arc<Self>) {
        let ttl = Duration::from_millis(self.config().session_timeout_ms.max(1_000));
        loop {
            let leadership = Leadership::campaign(self.topics().store().clone(), self.broker_id(), ttl).await;
            let epoch = leadership.epoch;
            tokio::select! {
                _ = leadership.hold() => tracing::warn!(epoch, "lost the controller lease"),
                _ = self.control(epoch) => {}
            }
        }
    }

    /// The controller's duties, every tick and on every metadata change.
    async fn control(&self, epoch: u64) {
        let replace_after = Duration::from_millis(self.config().replace_broker_after_ms);
        let mut revision = self.topics().store().revision();
        // When the controller first saw each missing broker missing.
        let mut missing_since: BTreeMap<u64, tokio::time::Instant> = BTreeMap::new();
        loop {
            // Changes made while a pass runs wake the next one.
            revision.mark_unchanged();
            match self.control_once(epoch, replace_after, &mut missing_since).await {
                Ok(true) => {
                    tracing::warn!(epoch, "a newer controller has taken over");
                    return;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "controller pass failed; will retry"),
            }
            tokio::select! {
                changed = revision.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// One pass; true if a newer controller was found.
    async fn control_once(
        &self,
        epoch: u64,
        replace_after: Duration,
        missing_since: &mut BTreeMap<u64, tokio::time::Instant>,
    ) -> Result<bool, String> {
        let store = self.topics().store().clone();
        // A decommissioned broker takes no replicas and gives up its own at
        // once, live or not (scale in).
        let leaving = decommissioned(store.as_ref()).await.map_err(|e| e.to_string())?;
        let live: BTreeSet<u64> = live_brokers(store.as_ref())
            .await
            .map_err(|e| e.to_string())?
            .into_keys()
            .filter(|b| !leaving.contains(b))
            .collect();
        let records = self.topics().list().await.map_err(|e| e.to_string())?;
        if records.iter().any(|r| r.controller_epoch > epoch) {
            return Ok(true);
        }
        let assigned: BTreeSet<u64> = records
            .iter()
            .flat_map(|r| (0..r.config.partitions).flat_map(move |p| r.target(p).iter().chain(r.members(p))))
            .copied()
            .collect();
        let now = tokio::time::Instant::now();
        missing_since.retain(|b, _| assigned.contains(b) && !live.contains(b));
        for broker in assigned.iter().filter(|b| !live.contains(b)) {
            missing_since.entry(*broker).or_insert(now);
        }
        let gone: BTreeSet<u64> = missing_since
            .iter()
            .filter(|(b, since)| leaving.contains(b) || now.duration_since(**since) >= replace_after)
            .map(|(b, _)| *b)
            .collect();
        let policy = Policy {
            balance: self.config().auto_balance,
            default_replication_factor: self.config().default_replication_factor,
        };
        for decision in plan(&records, &live, &gone, policy) {
            let changed = self
                .topics()
                .update(&decision.topic, decision.id, |record| {
                    if record.controller_epoch > epoch {
                        return Err(format!(
                            "controller epoch {} is newer than ours ({epoch})",
                            record.controller_epoch
                        ));
                    }
                    if record.target(decision.partition) != decision.from.as_slice() {
                        return Ok(false);
                    }
                    record.reassign(decision.partition, decision.to.clone());
                    record.controller_epoch = epoch;
                    Ok(true)
                })
                .await;
            match changed {
                Ok(Some(_)) => tracing::info!(
                    topic = %decision.topic,
                    partition = decision.partition,
                    from = ?decision.from,
                    to = ?decision.to,
                    epoch,
                    "controller moves a partition"
                ),
                Ok(None) => {}
                Err(crate::meta::topics::UpdateError::Refused(_)) => return Ok(true),
                Err(error) => return Err(error.to_string()),
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::cluster::place;
    use crate::meta::topics::TopicConfig;

    fn topic(name: &str, id: u64, replicas: Vec<Vec<u64>>) -> TopicRecord {
        TopicRecord {
            name: name.into(),
            id,
            config: TopicConfig {
                partitions: replicas.len() as u32,
                retention_ms: None,
                retention_bytes: None,
                segment_bytes: None,
                replication_factor: replicas.first().map(|r| r.len() as u32),
            },
            created_ms: 0,
            replicas,
            members: Vec::new(),
            moves: Vec::new(),
            confirmations: Vec::new(),
            retained: Vec::new(),
            controller_epoch: 0,
        }
    }

    const POLICY: Policy = Policy { balance: true, default_replication_factor: 3 };

    fn apply(records: &mut [TopicRecord], decisions: &[Reassignment]) {
        for d in decisions {
            let record = records.iter_mut().find(|r| r.id == d.id).unwrap();
            assert_eq!(record.target(d.partition), d.from.as_slice());
            record.reassign(d.partition, d.to.clone());
            // The leader carries it out.
            record.confirm_members(d.partition, d.to.clone());
        }
    }

    #[test]
    fn a_gone_broker_is_replaced_by_the_least_loaded_spare() {
        let live: BTreeSet<u64> = [1, 2, 4, 5].into();
        let gone: BTreeSet<u64> = [3].into();
        let records = vec![topic("t", 9, place(6, 3, &[1, 2, 3], 0))];
        let decisions = plan(&records, &live, &gone, POLICY);
        let healed: Vec<&Reassignment> = decisions.iter().filter(|d| d.from.contains(&3)).collect();
        assert_eq!(healed.len(), 6, "every partition on broker 3 is healed: {decisions:?}");
        for d in &healed {
            assert!(!d.to.contains(&3) && d.to.len() == 3, "{d:?}");
            let position = d.from.iter().position(|b| *b == 3).unwrap();
            assert!([4, 5].contains(&d.to[position]), "the spare takes broker 3's place: {d:?}");
            let distinct: BTreeSet<u64> = d.to.iter().copied().collect();
            assert_eq!(distinct.len(), 3);
        }
        let on_4 = healed.iter().filter(|d| d.to.contains(&4)).count();
        assert_eq!(on_4, 3, "the replacements are spread over the spares: {healed:?}");
    }

    #[test]
    fn nothing_is_replaced_while_there_is_no_spare_or_no_one_is_gone() {
        let records = vec![topic("t", 9, place(6, 3, &[1, 2, 3], 0))];
        assert!(plan(&records, &[1, 2].into(), &[3].into(), POLICY).is_empty(), "no spare broker");
        assert!(plan(&records, &[1, 2, 3].into(), &BTreeSet::new(), POLICY).is_empty(), "balanced already");
        // Missing, but not long enough: not in `gone`, and not a balance
        // target either (it holds replicas).
        assert!(plan(&records, &[1, 2].into(), &BTreeSet::new(), POLICY).is_empty());
    }

    #[test]
    fn a_new_broker_receives_replicas_until_balanced() {
        let mut records = vec![topic("a", 1, place(6, 3, &[1, 2, 3], 1)), topic("b", 2, place(4, 2, &[1, 2, 3], 2))];
        let live: BTreeSet<u64> = [1, 2, 3, 4].into();
        let mut rounds = 0;
        loop {
            let decisions = plan(&records, &live, &BTreeSet::new(), POLICY);
            if decisions.is_empty() {
                break;
            }
            assert!(decisions.len() <= BALANCING_MOVES_MAX);
            apply(&mut records, &decisions);
            rounds += 1;
            assert!(rounds < 20, "balancing converges");
        }
        let load = load(&records, &live);
        let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
        assert!(max - min <= 1, "balanced: {load:?}");
        assert!(load[&4] >= 6, "the new broker holds its share: {load:?}");
        for record in &records {
            for p in 0..record.config.partitions {
                let distinct: BTreeSet<u64> = record.target(p).iter().copied().collect();
                assert_eq!(distinct.len(), record.target(p).len(), "no broker twice: {:?}", record.target(p));
            }
        }
    }

    #[test]
    fn partitions_gain_replicas_up_to_their_factor_as_brokers_join() {
        let mut internal = topic("__consumer_offsets", 3, vec![vec![1]]);
        internal.config.replication_factor = None;
        let mut two = topic("two", 4, vec![vec![1], vec![1]]);
        two.config.replication_factor = Some(2);
        let mut records = vec![internal.clone(), two.clone()];
        let decisions = plan(&records, &[1].into(), &BTreeSet::new(), POLICY);
        assert!(decisions.is_empty(), "no broker to add: {decisions:?}");
        let decisions = plan(&records, &[1, 2, 3].into(), &BTreeSet::new(), POLICY);
        apply(&mut records, &decisions);
        assert_eq!(sorted(records[0].target(0)), [1, 2, 3], "the default factor: {decisions:?}");
        for p in 0..2 {
            assert_eq!(records[1].target(p).len(), 2, "the topic's own factor: {decisions:?}");
            assert_eq!(records[1].target(p)[0], 1, "the preferred leader stays");
        }
        internal.config.replication_factor = Some(1);
        two.config.replication_factor = Some(1);
        let no_balance = Policy { balance: false, ..POLICY };
        assert!(plan(&[internal, two], &[1, 2, 3].into(), &BTreeSet::new(), no_balance).is_empty());
    }

    fn sorted(ids: &[u64]) -> Vec<u64> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn moving_partitions_are_not_balanced_but_are_healed() {
        let mut moving = topic("t", 9, vec![vec![1, 2, 3]; 8]);
        for p in 0..8 {
            moving.reassign(p, vec![1, 2, 4]);
            moving.confirm_members(p, vec![1, 2, 3]);
        }
        // Broker 6 is new and empty, broker 3 gone: the moves go on.
        let live: BTreeSet<u64> = [1, 2, 4, 5, 6].into();
        let decisions = plan(&[moving.clone()], &live, &[3].into(), POLICY);
        assert!(decisions.is_empty(), "{decisions:?}");

        // A move towards a broker that is gone is redirected.
        moving.reassign(0, vec![3, 2, 1]);
        let decisions = plan(&[moving], &live, &[3].into(), POLICY);
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!(decisions[0].partition, 0);
        assert!([5, 6].contains(&decisions[0].to[0]) && decisions[0].to[1..] == [2, 1], "{decisions:?}");
    }
}
