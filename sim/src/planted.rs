//! Which checker rule must catch each planted bug (`weir::sys::planted`).
//!
//! A planted bug proves a rule only if that rule, not a panic and not
//! another rule, flags it, on a seed that passes with the bug switched off
//! (`weir-sim planted` checks both). Each entry names the rules that
//! express the property the bug breaks; the first is the one meant for it.

use weir::sys::planted::Bug;

/// The anomaly kinds that count as catching `bug`.
pub fn catching_rules(bug: Bug) -> &'static [&'static str] {
    match bug {
        // Acknowledged before a majority had it: a failover loses it.
        Bug::AckBeforeCommit => &["lost-write", "durable-majority"],
        // Acknowledged before it was on any disk: a power loss of the
        // copies that acknowledged it leaves it on no majority.
        Bug::SkipFsync => &["durable-majority", "lost-write"],
        // A consumer reads a record that a failover then replaces: the
        // offset it read holds another value in the final log.
        Bug::UncommittedReads => &["inconsistent-offsets", "lost-write"],
        // A retried batch appended twice.
        Bug::ForgetProducersOnRestart => &["duplicate"],
        // A leader without a committed entry overwrites it on the others.
        Bug::TruncateCommittedOnLeaderChange => &["lost-write", "replica-divergence", "inconsistent-offsets"],
        // A fenced member's commit accepted; it may rewind the group.
        Bug::StaleGenerationCommits => &["stale-commit", "commit-backwards"],
        // A record handed to nobody: the consumer's offsets jump.
        Bug::SkipPolledRecord => &["poll-skip"],
        // The same record read twice in one assignment.
        Bug::RereadPolledRecord => &["nonmonotonic-poll"],
        Bug::DoubleAssignment => &["group-ownership"],
        // The next owner starts past a record nobody in the group read.
        Bug::CommitPastRead => &["unseen", "start-position"],
        Bug::HighWatermarkPastLogEnd => &["replica-bounds"],
        // A value no producer sent, served as if stored.
        Bug::ServeAlteredValue => &["no-writer"],
        // A write refused after it was made: its send fails, its value is read.
        Bug::RefuseAfterAppend => &["aborted-read"],
        // A later send reported below an earlier one (and at an offset
        // holding another value).
        Bug::MisreportedOffset => &["nonmonotonic-send", "inconsistent-offsets"],
        // A voter's replica left out of the check.
        Bug::HideReplica => &["replicas-unchecked"],
        // The next owner skips the record at the group's committed offset.
        Bug::StartPastCommit => &["start-position"],
        // After a failover the group resumes below a commit it acknowledged.
        Bug::LoadMissesLastCommit => &["start-position", "commit-backwards"],
        // A sealed segment's unsynced tail lost by a crash, the next
        // segment's records kept: a hole below the high watermark.
        Bug::SealWithoutSync => &["replica-hole"],
        // Followers of a paused leader depose each other: no acks=all
        // write within the bound.
        Bug::StalePreVote => &["availability"],
        // A step of a broker's clock forwards past the retention time
        // deletes records the topic still keeps.
        Bug::RetentionOnWallClock => &["early-retention"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule name that no checker emits would make a bug uncatchable.
    #[test]
    fn every_named_rule_is_a_checker_rule() {
        let sources = [
            include_str!("availability.rs"),
            include_str!("checker/aborted_read.rs"),
            include_str!("checker/commits.rs"),
            include_str!("checker/duplicate.rs"),
            include_str!("checker/durable_majority.rs"),
            include_str!("checker/inconsistent_offsets.rs"),
            include_str!("checker/group_ownership.rs"),
            include_str!("checker/lost_write.rs"),
            include_str!("checker/no_writer.rs"),
            include_str!("checker/nonmonotonic_poll.rs"),
            include_str!("checker/nonmonotonic_send.rs"),
            include_str!("checker/poll_skip.rs"),
            include_str!("checker/replicas.rs"),
            include_str!("checker/retention.rs"),
            include_str!("checker/stale_commit.rs"),
            include_str!("checker/start_position.rs"),
            include_str!("checker/unseen.rs"),
        ]
        .concat();
        for bug in Bug::ALL {
            assert!(!catching_rules(bug).is_empty(), "{bug} names no rule");
            for rule in catching_rules(bug) {
                assert!(sources.contains(&format!("kind: \"{rule}\"")), "{bug}: no checker emits {rule}");
            }
        }
    }
}
