//! The process-wide tokio runtime.
//!
//! Created on first use and never shut down: it lives as long as the process, like the Python
//! interpreter that drives it. A child made by `fork()` inherits the runtime's memory but none
//! of its threads, so after [`forget_after_fork`] the next caller builds a fresh runtime; the
//! parent's copy is leaked, never dropped, since dropping it would wait on threads that do not
//! exist in the child.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, PoisonError,
};

use tokio::runtime::{Builder, Runtime};

/// Bumped in a forked child: a runtime built under an older generation is the parent's.
static GENERATION: AtomicU64 = AtomicU64::new(0);
static RUNTIME: Mutex<Option<(u64, &'static Runtime)>> = Mutex::new(None);

/// The runtime that runs every Rust task of this process.
///
/// # Panics
/// When the operating system refuses to start the runtime's threads.
pub fn runtime() -> &'static Runtime {
    let generation = GENERATION.load(Ordering::Acquire);
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    match *slot {
        Some((built_in, runtime)) if built_in == generation => runtime,
        _ => {
            let runtime: &'static Runtime = Box::leak(Box::new(
                Builder::new_multi_thread()
                    .worker_threads(worker_threads())
                    .thread_name("plait-tokio")
                    .enable_all()
                    .build()
                    .expect("the operating system refused to start the tokio runtime"),
            ));
            *slot = Some((generation, runtime));
            runtime
        }
    }
}

/// The runtime's worker threads: `PLAIT_RUNTIME_THREADS` if set to a positive number, else
/// one fewer than the cores (at least one), since the Python thread that drives the runtime
/// keeps a core busy with its event loop. On 2 cores one worker rather than two made a runner
/// of a cluster 10-35% faster (fewer context switches between the threads).
fn worker_threads() -> usize {
    std::env::var("PLAIT_RUNTIME_THREADS")
        .ok()
        .and_then(|threads| threads.trim().parse::<usize>().ok())
        .filter(|threads| *threads > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |cores| cores.get().saturating_sub(1).max(1))
        })
}

/// Marks the current runtime as the parent's. Call in a child process right after `fork()`.
pub fn forget_after_fork() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// How many forks this process descends from, as far as [`forget_after_fork`] was told.
/// Objects whose state the runtime's threads touch, or that must not be duplicated (id
/// generators), record it when made and refuse to work in a child.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// An object made before the process forked was used in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this {0} was made before the process forked; make a new one in the child (its locks may \
     be held by threads that do not exist there, and its state is the parent's)"
)]
pub struct Forked(pub &'static str);

/// Fails when the object `what`, made in generation `born`, is used in a forked child.
///
/// # Errors
/// [`Forked`] when [`generation`] has moved on since `born`.
pub fn check_not_forked(born: u64, what: &'static str) -> Result<(), Forked> {
    if born == generation() {
        Ok(())
    } else {
        Err(Forked(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_runtime_runs_tasks_until_a_fork_is_declared() {
        let first = runtime();
        assert!(std::ptr::eq(first, runtime()));
        assert_eq!(
            first.block_on(async { tokio::spawn(async { 21 * 2 }).await.unwrap() }),
            42
        );
        let born = generation();
        assert_eq!(check_not_forked(born, "thing"), Ok(()));
        forget_after_fork();
        assert_eq!(check_not_forked(born, "thing"), Err(Forked("thing")));
        let second = runtime();
        assert!(!std::ptr::eq(first, second));
        assert!(std::ptr::eq(second, runtime()));
        assert_eq!(
            second.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }),
            7
        );
    }
}
