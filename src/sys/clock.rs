//! Wall-clock time for the rest of weir.
//!
//! Code outside the seam asks a [`Clock`] instead of `SystemTime::now()`, so a
//! test can move time by hand and the simulator's clock replaces the real one.
//! Under `--cfg madsim`, madsim intercepts the libc clock, so [`SystemClock`]
//! reads simulated time there without a code change.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// Implementations need not be monotonic: wall clocks step. Callers that
/// compute ages use saturating arithmetic.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_ms(&self) -> i64;
}

/// The host's (or, in the simulator, the simulation's) wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(elapsed) => i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// A clock that moves only when told to: for tests of age-based behaviour.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> Arc<Self> {
        Arc::new(Self { now_ms: AtomicI64::new(now_ms) })
    }

    pub fn advance_ms(&self, delta_ms: i64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// Another clock, stepped by hand: what a host's wall clock does when an
/// operator or NTP steps it, forwards or backwards. The simulator gives
/// each broker one and steps it (the clock-jump fault); only wall-clock
/// time moves, as on a real host, where timeouts and leases run on the
/// monotonic clock, which no step touches.
#[derive(Debug)]
pub struct SteppedClock {
    base: Arc<dyn Clock>,
    offset_ms: AtomicI64,
}

impl SteppedClock {
    pub fn new(base: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self { base, offset_ms: AtomicI64::new(0) })
    }

    /// Steps the clock by `by_ms` (negative: backwards).
    pub fn step_ms(&self, by_ms: i64) {
        self.offset_ms.fetch_add(by_ms, Ordering::SeqCst);
    }

    /// How far it is from its base now.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }
}

impl Clock for SteppedClock {
    fn now_ms(&self) -> i64 {
        self.base.now_ms().saturating_add(self.offset_ms())
    }
}

/// The default clock for production code.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stepped_clock_moves_with_its_base_and_by_its_steps() {
        let base = ManualClock::new(1_000);
        let clock = SteppedClock::new(base.clone());
        assert_eq!(clock.now_ms(), 1_000);
        clock.step_ms(3_600_000);
        base.advance_ms(5);
        assert_eq!(clock.now_ms(), 3_601_005);
        clock.step_ms(-7_200_000);
        assert_eq!((clock.now_ms(), clock.offset_ms()), (-3_598_995, -3_600_000));
    }
}
