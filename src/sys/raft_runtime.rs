//! openraft's async runtime, routed through the seam.
//!
//! # Why this exists
//!
//! openraft 0.9 spawns its tasks, arms its timers and draws its randomness
//! (election-timeout jitter) through the `AsyncRuntime` named in the type
//! config. Its default, `openraft::TokioRuntime`, calls the *real*
//! `tokio::spawn` / `tokio::time::sleep` and `rand::thread_rng`, because
//! openraft depends on the real tokio crate, not on our `tokio` (which is the
//! package madsim-tokio). Inside a madsim node there is no real tokio reactor,
//! so the default runtime panics ("there is no reactor running"); and even
//! where it did not, real time and real randomness would break the
//! simulator's determinism.
//!
//! [`WeirRuntime`] is one runtime for both builds. Everything goes through
//! `tokio::` as seen by this crate, so:
//!
//! - built normally, `tokio::` is real tokio and this behaves like openraft's
//!   default runtime;
//! - built with `RUSTFLAGS="--cfg madsim"`, `tokio::` is madsim: tasks run on
//!   the current simulated node, timers run on simulated time, and
//!   [`WeirRng`] draws from madsim's seeded global RNG, so a seed reproduces
//!   the same elections.
//!
//! Things openraft uses directly from the real tokio crate that need no
//! runtime (`tokio::sync` channels and locks, `select!`) work unchanged in
//! both builds. Oneshot channels are taken from `tokio::sync` for the same
//! reason.
//!
//! madsim's `timeout` returns an unnameable `impl Future`, and madsim has no
//! `timeout_at`, so [`Timeout`] is our own small future (boxed inner future
//! raced against a `tokio::time::Sleep`), identical in both builds.

use std::fmt;
use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use madsim::rand::RngCore;
use openraft::async_runtime::AsyncOneshotSendExt;
use openraft::{AsyncRuntime, OptionalSend};

/// openraft [`AsyncRuntime`] for weir: real tokio normally, madsim under
/// `--cfg madsim`. Use it as `AsyncRuntime = weir::sys::raft_runtime::WeirRuntime`
/// in `openraft::declare_raft_types!`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WeirRuntime;

impl AsyncRuntime for WeirRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = WeirInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = WeirRng;
    type OneshotSender<T: OptionalSend> = OneshotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline.0)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        Timeout::new(future, tokio::time::sleep(duration))
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        Timeout::new(future, tokio::time::sleep_until(deadline.0))
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        WeirRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (OneshotSender(tx), rx)
    }
}

/// A point on the clock of the current build: `tokio::time::Instant`, i.e.
/// tokio's in the real build and madsim's simulated clock under `--cfg madsim`.
///
/// A newtype because openraft's [`openraft::Instant`] trait is foreign and, in
/// the simulator, so is the instant type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WeirInstant(pub tokio::time::Instant);

impl openraft::Instant for WeirInstant {
    fn now() -> Self {
        WeirInstant(tokio::time::Instant::now())
    }
}

impl Add<Duration> for WeirInstant {
    type Output = WeirInstant;
    fn add(self, rhs: Duration) -> WeirInstant {
        WeirInstant(self.0 + rhs)
    }
}

impl AddAssign<Duration> for WeirInstant {
    fn add_assign(&mut self, rhs: Duration) {
        self.0 += rhs;
    }
}

impl Sub<Duration> for WeirInstant {
    type Output = WeirInstant;
    fn sub(self, rhs: Duration) -> WeirInstant {
        WeirInstant(self.0 - rhs)
    }
}

impl SubAssign<Duration> for WeirInstant {
    fn sub_assign(&mut self, rhs: Duration) {
        self.0 -= rhs;
    }
}

impl Sub<WeirInstant> for WeirInstant {
    type Output = Duration;
    /// Saturates at zero, like both tokio's and std's instants.
    fn sub(self, rhs: WeirInstant) -> Duration {
        self.0.saturating_duration_since(rhs.0)
    }
}

/// openraft's per-thread RNG: every call draws from
/// `madsim::rand::thread_rng()`, which is `rand::thread_rng()` in the real
/// build and the simulator's seeded global RNG under `--cfg madsim`.
///
/// A stateless handle (rather than the RNG itself) so the type is the same in
/// both builds.
#[derive(Debug, Default, Clone, Copy)]
pub struct WeirRng;

impl RngCore for WeirRng {
    fn next_u32(&mut self) -> u32 {
        madsim::rand::thread_rng().next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        madsim::rand::thread_rng().next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        madsim::rand::thread_rng().fill_bytes(dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), madsim::rand::Error> {
        madsim::rand::thread_rng().try_fill_bytes(dest)
    }
}

/// A future that resolves to the inner future's output, or to [`Elapsed`] if
/// its sleep finishes first. The inner future is polled first, so a future
/// that is ready at the deadline still wins (as with `tokio::time::timeout`).
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<F> Timeout<F> {
    fn new(future: F, sleep: tokio::time::Sleep) -> Self {
        Timeout { future: Box::pin(future), sleep: Box::pin(sleep) }
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<F> fmt::Debug for Timeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout").finish_non_exhaustive()
    }
}

/// The error of a [`Timeout`] whose deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// Sending half of a oneshot channel (`tokio::sync::oneshot`, which needs no
/// runtime and so is the same in both builds).
pub struct OneshotSender<T>(pub tokio::sync::oneshot::Sender<T>);

impl<T> AsyncOneshotSendExt<T> for OneshotSender<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

impl<T> fmt::Debug for OneshotSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OneshotSender").finish()
    }
}
