//! Wall-clock and monotonic time for the rest of weir.
//!
//! Code outside the seam asks a [`Clock`] instead of `SystemTime::now()`, so a
//! test can move time by hand and the simulator's clock replaces the real one.
//! Under `--cfg madsim`, madsim intercepts the libc clock, so [`SystemClock`]
//! reads simulated time there without a code change.
//!
//! Wall-clock time steps (an operator, NTP, a VM resumed); monotonic time
//! does not. What weir decides by time falls in three kinds:
//! - how long since something happened here (a lease, a flush interval, a
//!   grace period): the monotonic clock ([`Clock::monotonic`]), which no
//!   step moves;
//! - how old data is by its timestamps (retention, segment age): a
//!   [`SlewedClock`], which a step backwards moves at once (data looks
//!   younger, so is kept longer: safe) but a step forwards only gradually
//!   (data never looks much older than it is, so is not deleted early);
//! - what time it is (a record's timestamp, a commit's time): the wall
//!   clock as it stands.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch, and
/// of monotonic time.
///
/// `now_ms` need not be monotonic: wall clocks step. Callers that compute
/// ages from it use saturating arithmetic.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_ms(&self) -> i64;

    /// Time since an origin of this clock's choosing, on a clock that no
    /// step of the wall clock moves. Readings compare only with readings
    /// of the same clock.
    fn monotonic(&self) -> Duration;
}

/// The host's (or, in the simulator, the simulation's) wall clock, and
/// its monotonic clock (`std::time::Instant`, which madsim intercepts in
/// a simulation and leaves alone outside one, so a plain test may read it).
#[derive(Debug, Default)]
pub struct SystemClock {
    /// Taken at the first monotonic reading.
    origin: OnceLock<Instant>,
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(elapsed) => i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    fn monotonic(&self) -> Duration {
        let now = Instant::now();
        now.saturating_duration_since(*self.origin.get_or_init(|| now))
    }
}

/// A clock that moves only when told to: for tests of age-based behaviour.
/// [`ManualClock::advance_ms`] is time passing (both clocks move);
/// [`ManualClock::set_ms`] is a step of the wall clock alone.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
    monotonic_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> Arc<Self> {
        Arc::new(Self { now_ms: AtomicI64::new(now_ms), monotonic_ms: AtomicI64::new(0) })
    }

    /// Time passes: `delta_ms` (not negative) on both clocks.
    pub fn advance_ms(&self, delta_ms: i64) {
        assert!(delta_ms >= 0, "time passes forwards; use set_ms to step the wall clock back");
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
        self.monotonic_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    /// The wall clock is stepped to `now_ms`; monotonic time stays.
    pub fn set_ms(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.monotonic_ms.load(Ordering::SeqCst).max(0) as u64)
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

    fn monotonic(&self) -> Duration {
        self.base.monotonic()
    }
}

/// A wall clock that a step forwards cannot rush, for deciding when data
/// is old enough to delete. It follows its clock backwards at once, and
/// forwards no faster than monotonic time plus a tenth ([`SLEW_PER_TICK`]),
/// so a step forwards of S is absorbed over about 10 S of real time. While
/// a step is absorbed the clock reads behind its wall clock: data looks
/// younger than it is and is kept longer. A mistaken step forwards that is
/// undone after T makes data look older by at most T/10.
///
/// A step back that is later undone is absorbed slowly too (data is kept
/// longer meanwhile). Letting the clock return at once to where it had
/// been would trust the furthest it ever read, and that reading may itself
/// be the mistake: sweep seed 45 restarted a broker while its clock was 5
/// hours ahead, the clock was set right, and a later jump of 33 hours was
/// let through as far as those 5 hours, deleting an hour's retention.
#[derive(Debug)]
pub struct SlewedClock {
    clock: Arc<dyn Clock>,
    /// The last reading (µs since the epoch) and when it was taken.
    last: Mutex<(i64, Duration)>,
}

/// How much faster than monotonic time a [`SlewedClock`] may run while it
/// catches up with a step forwards: one part in this many.
pub const SLEW_PER_TICK: i64 = 10;

impl SlewedClock {
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        let last = (clock.now_ms().saturating_mul(1_000), clock.monotonic());
        Arc::new(Self { clock, last: Mutex::new(last) })
    }
}

impl Clock for SlewedClock {
    fn now_ms(&self) -> i64 {
        let (wall_us, at) = (self.clock.now_ms().saturating_mul(1_000), self.clock.monotonic());
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed_us = i64::try_from(at.saturating_sub(last.1).as_micros()).unwrap_or(i64::MAX);
        let ceiling_us = last.0.saturating_add(elapsed_us.saturating_add(elapsed_us / SLEW_PER_TICK));
        let now_us = wall_us.min(ceiling_us);
        *last = (now_us, at);
        now_us.div_euclid(1_000)
    }

    fn monotonic(&self) -> Duration {
        self.clock.monotonic()
    }
}

/// The default clock for production code.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock::default())
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
        assert_eq!(clock.monotonic(), Duration::from_millis(5), "steps do not move monotonic time");
    }

    const HOUR_MS: i64 = 3_600_000;

    #[test]
    fn a_slewed_clock_follows_its_wall_clock_while_nothing_steps() {
        let wall = ManualClock::new(1_000_000);
        let slewed = SlewedClock::new(wall.clone());
        for _ in 0..100 {
            wall.advance_ms(1_234);
            assert_eq!(slewed.now_ms(), wall.now_ms());
        }
    }

    #[test]
    fn a_step_back_is_followed_at_once() {
        let wall = ManualClock::new(10 * HOUR_MS);
        let slewed = SlewedClock::new(wall.clone());
        wall.set_ms(9 * HOUR_MS);
        assert_eq!(slewed.now_ms(), 9 * HOUR_MS);
        wall.advance_ms(500);
        assert_eq!(slewed.now_ms(), 9 * HOUR_MS + 500);
    }

    #[test]
    fn a_step_back_undone_is_absorbed_slowly_and_trusts_no_earlier_reading() {
        // A broker starts while its clock is 5 hours ahead, and the clock
        // is set right; later it jumps 33 hours ahead.
        let wall = ManualClock::new(15 * HOUR_MS);
        let slewed = SlewedClock::new(wall.clone());
        wall.set_ms(10 * HOUR_MS);
        assert_eq!(slewed.now_ms(), 10 * HOUR_MS, "set right: followed at once");
        wall.advance_ms(10_000);
        wall.set_ms(43 * HOUR_MS);
        wall.advance_ms(1_000);
        assert_eq!(slewed.now_ms(), 10 * HOUR_MS + 12_100, "the jump is slewed, not let through to 15 h");
    }

    #[test]
    fn a_step_forwards_is_absorbed_a_tenth_faster_than_time_passes() {
        let wall = ManualClock::new(10 * HOUR_MS);
        let slewed = SlewedClock::new(wall.clone());
        wall.set_ms(11 * HOUR_MS);
        assert_eq!(slewed.now_ms(), 10 * HOUR_MS, "no time has passed: the step is not taken");
        // Read often, in small steps: no rounding may stall it.
        for _ in 0..60_000 {
            wall.advance_ms(1);
            slewed.now_ms();
        }
        assert_eq!(slewed.now_ms(), 10 * HOUR_MS + 66_000, "a minute passed, read as 66 s");
        // Ten hours later (in all, 11 h of monotonic time), the step is absorbed.
        wall.advance_ms(10 * HOUR_MS);
        assert_eq!(slewed.now_ms(), wall.now_ms());
        wall.advance_ms(7);
        assert_eq!(slewed.now_ms(), wall.now_ms(), "then it follows the wall clock again");
    }

    #[test]
    fn a_mistaken_step_forwards_undone_moves_a_slewed_clock_by_a_tenth_of_its_length() {
        let wall = ManualClock::new(10 * HOUR_MS);
        let slewed = SlewedClock::new(wall.clone());
        wall.set_ms(12 * HOUR_MS);
        wall.advance_ms(10_000);
        assert_eq!(slewed.now_ms(), 10 * HOUR_MS + 11_000);
        wall.set_ms(10 * HOUR_MS + 10_000);
        assert_eq!(slewed.now_ms(), 10 * HOUR_MS + 10_000, "back with the wall clock");
    }
}
