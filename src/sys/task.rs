//! Running blocking work (disk I/O) without stalling the async runtime.
//!
//! On tokio this is the blocking thread pool. Inside madsim there are no
//! threads to block and the simulated disk answers from memory, so the work
//! runs in place, keeping the simulation deterministic.

/// Runs `f` where it may block, and returns its result. A panic in `f`
/// resumes in the caller.
pub async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    #[cfg(not(madsim))]
    {
        match tokio::task::spawn_blocking(f).await {
            Ok(value) => value,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => panic!("blocking task cancelled: {error}"),
        }
    }
    #[cfg(madsim)]
    {
        f()
    }
}
