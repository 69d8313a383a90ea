//! A graceful stop: what a broker does between SIGTERM and exit, before
//! the server stops accepting ([`super::server::serve_on`] runs it).
//!
//! Like Kafka's controlled shutdown, leadership leaves first: every
//! partition this broker leads is handed to a caught-up follower, so its
//! producers and consumers follow the `NOT_LEADER` hint at once instead of
//! waiting an election timeout after the broker is gone. A partition with
//! no caught-up follower (a single replica, followers behind) keeps its
//! leader to the end and elects one after the stop, as after a crash.

use std::time::Duration;

use futures::StreamExt;

use super::core::{hand_over_before_closing, Broker};

/// Hand-overs run at once, at most this many: each is one campaign RPC and
/// an election on its target.
const HAND_OVERS_AT_ONCE: usize = 64;

/// What a stop's hand-over did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOver {
    /// Partitions this broker led when it began to stop.
    pub led: usize,
    /// Of those, the ones another replica leads now.
    pub handed_over: usize,
}

impl Broker {
    /// Hands every partition this broker leads to a caught-up follower,
    /// spending at most `within`.
    pub async fn hand_over_leaderships(&self, within: Duration) -> HandOver {
        let led: Vec<_> = self.partitions().into_iter().filter(|p| p.replica().is_leader()).collect();
        let handing = futures::stream::iter(led.iter().cloned())
            .map(|partition| async move { hand_over_before_closing(&partition).await })
            .buffer_unordered(HAND_OVERS_AT_ONCE)
            .collect::<Vec<()>>();
        let _ = tokio::time::timeout(within, handing).await;
        let handed_over = led.iter().filter(|p| !p.replica().is_leader()).count();
        HandOver { led: led.len(), handed_over }
    }
}
