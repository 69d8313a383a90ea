//! Planted bugs: switches, compiled only into the simulator build, that put
//! a known class of bug into the broker so that the simulator's checkers can
//! be shown to catch it (a checker that cannot fail is itself a bug).
//!
//! `weir-sim run --plant <name>` turns one on for the seed's process; in the
//! ordinary build [`on`] is the constant `false` and the branches it guards
//! compile away.

use std::fmt;

/// A class of bug the simulator must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// acks=all answers once the leader has the batch, before a majority
    /// does (before commit).
    AckBeforeCommit,
    /// Flushing the log reports success without syncing the file.
    SkipFsync,
    /// Fetches read up to the log end instead of the high watermark.
    UncommittedReads,
    /// The idempotent producers' table lives in memory only: a restarted
    /// replica forgets it, and takes producers it does not know for new.
    ForgetProducersOnRestart,
    /// Votes are granted without Raft's election restriction (is the
    /// candidate's log at least as up to date?), so a lagging replica can
    /// lead and truncate committed entries on the others.
    TruncateCommittedOnLeaderChange,
    /// The group coordinator accepts offset commits from any generation.
    StaleGenerationCommits,
    /// A consumer's fetch hands back every record but the first of a
    /// response of several, and still moves past them all.
    SkipPolledRecord,
    /// A consumer's fetch of several records moves its position only to
    /// the last record, not past it, so the next poll reads it again.
    RereadPolledRecord,
    /// The group coordinator gives every member partition 0 of each topic
    /// besides its share: two owners of one partition in one generation.
    DoubleAssignment,
    /// The group coordinator stores each committed offset one past what
    /// the member committed: the next owner skips a record.
    CommitPastRead,
    /// A partition's description says its high watermark is one past its
    /// log end.
    HighWatermarkPastLogEnd,
    /// Fetches serve some records (offsets 7, 57, 107, ...) with a byte
    /// added to the value after every check passed: bytes no producer sent.
    ServeAlteredValue,
    /// The broker checks a produced batch's size after it appended it, and
    /// answers MESSAGE_TOO_LARGE (a refusal) for some it has written (base
    /// offsets 13, 63, 113, ...).
    RefuseAfterAppend,
    /// The broker answers some produces (base offsets 37, 87, 137, ...)
    /// with an offset 40 below where the batch landed.
    MisreportedOffset,
    /// Broker 2 describes its replica of partition 0 as not hosted.
    HideReplica,
    /// A consumer joining a generation starts each partition one past the
    /// group's committed offset.
    StartPastCommit,
    /// A new group coordinator loads the committed offsets but the last
    /// batch of them: a commit acknowledged, then lost on failover.
    LoadMissesLastCommit,
    /// A segment is sealed at a roll without syncing its file: the tail
    /// written since the last flush is never made durable, while the next
    /// segment's later records are. A crash leaves a hole below the high
    /// watermark.
    SealWithoutSync,
    /// A replica's pre-vote waits for every peer's answer (a paused
    /// leader's until it times out) and it campaigns on those answers even
    /// after a leader was elected meanwhile: followers of a paused leader
    /// depose each other (issue 22's defect, put back).
    StalePreVote,
    /// A broker's logs judge retention and roll ages by the wall clock as
    /// it stands, not by a slewed one: a step forwards past the retention
    /// time deletes data retention still promised.
    RetentionOnWallClock,
}

impl Bug {
    pub const ALL: [Bug; 20] = [
        Bug::AckBeforeCommit,
        Bug::SkipFsync,
        Bug::UncommittedReads,
        Bug::ForgetProducersOnRestart,
        Bug::TruncateCommittedOnLeaderChange,
        Bug::StaleGenerationCommits,
        Bug::SkipPolledRecord,
        Bug::RereadPolledRecord,
        Bug::DoubleAssignment,
        Bug::CommitPastRead,
        Bug::HighWatermarkPastLogEnd,
        Bug::ServeAlteredValue,
        Bug::RefuseAfterAppend,
        Bug::MisreportedOffset,
        Bug::HideReplica,
        Bug::StartPastCommit,
        Bug::LoadMissesLastCommit,
        Bug::SealWithoutSync,
        Bug::StalePreVote,
        Bug::RetentionOnWallClock,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::SkipFsync => "skip-fsync",
            Bug::UncommittedReads => "uncommitted-reads",
            Bug::ForgetProducersOnRestart => "forget-producers-on-restart",
            Bug::TruncateCommittedOnLeaderChange => "truncate-committed-on-leader-change",
            Bug::StaleGenerationCommits => "stale-generation-commits",
            Bug::SkipPolledRecord => "skip-polled-record",
            Bug::RereadPolledRecord => "reread-polled-record",
            Bug::DoubleAssignment => "double-assignment",
            Bug::CommitPastRead => "commit-past-read",
            Bug::HighWatermarkPastLogEnd => "high-watermark-past-log-end",
            Bug::ServeAlteredValue => "serve-altered-value",
            Bug::RefuseAfterAppend => "refuse-after-append",
            Bug::MisreportedOffset => "misreported-offset",
            Bug::HideReplica => "hide-replica",
            Bug::StartPastCommit => "start-past-commit",
            Bug::LoadMissesLastCommit => "load-misses-last-commit",
            Bug::SealWithoutSync => "seal-without-sync",
            Bug::StalePreVote => "stale-pre-vote",
            Bug::RetentionOnWallClock => "retention-on-wall-clock",
        }
    }

    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|bug| bug.name() == name)
    }

    #[cfg(madsim)]
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(madsim)]
static PLANTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Turns `bug` on for the rest of this process (a simulator seed runs in a
/// process of its own).
#[cfg(madsim)]
pub fn plant(bug: Bug) {
    PLANTED.fetch_or(bug.bit(), std::sync::atomic::Ordering::Relaxed);
}

/// Whether `bug` is planted.
#[cfg(madsim)]
pub fn on(bug: Bug) -> bool {
    PLANTED.load(std::sync::atomic::Ordering::Relaxed) & bug.bit() != 0
}

/// Whether `bug` is planted: never, outside the simulator.
#[cfg(not(madsim))]
#[inline(always)]
pub const fn on(_bug: Bug) -> bool {
    false
}
