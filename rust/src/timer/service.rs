//! A timer wheel driven by the wall clock, for async consumers.
//!
//! Waiting and taking are separate on purpose: [`TimerService::wait_due`] only waits until
//! some timer is due, and [`TimerService::take_due`] hands timers out. A waiter that is
//! cancelled (a Python task cancelled mid-`await`) therefore never drops timers it had taken.

use std::{
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::sync::Notify;

use super::{Expired, TimerWheel};
use crate::clock::now_ms;

/// Longest sleep between looks at the wall clock, so a clock that jumps forward delays timers
/// by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The service was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the timer service is closed")]
pub struct Closed;

#[derive(Debug)]
struct State {
    wheel: TimerWheel,
    closed: bool,
}

/// Timers due at wall-clock instants (ms since the Unix epoch), awaited by async consumers.
#[derive(Debug)]
pub struct TimerService {
    state: Mutex<State>,
    changed: Notify,
}

impl Default for TimerService {
    fn default() -> Self {
        Self::new()
    }
}

impl TimerService {
    /// An empty service.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                wheel: TimerWheel::new(now_ms()),
                closed: false,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a panic elsewhere while the
        // lock was held does not make it unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Schedules (or moves) timer `id` to `due_ms`. Returns whether it replaced a pending one.
    pub fn schedule(&self, id: u64, due_ms: u64) -> bool {
        let replaced = self.state().wheel.insert(id, due_ms);
        self.changed.notify_waiters();
        replaced
    }

    /// Schedules many timers under one lock.
    pub fn schedule_many(&self, timers: &[(u64, u64)]) {
        {
            let mut state = self.state();
            for &(id, due_ms) in timers {
                state.wheel.insert(id, due_ms);
            }
        }
        self.changed.notify_waiters();
    }

    /// Cancels timer `id`, whether pending or due and not yet taken. Returns whether it was.
    pub fn cancel(&self, id: u64) -> bool {
        self.state().wheel.cancel(id)
    }

    /// Timers pending or due and not yet taken.
    pub fn len(&self) -> usize {
        self.state().wheel.len()
    }

    /// Whether no timer is pending or due.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `max` due timers, earliest first.
    pub fn take_due(&self, max: usize) -> Vec<Expired> {
        self.state().wheel.take_due(now_ms(), max)
    }

    /// Waits until at least one timer is due.
    ///
    /// # Errors
    /// [`Closed`] once [`TimerService::close`] has been called.
    pub async fn wait_due(&self) -> Result<(), Closed> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so a change between the look and the wait still wakes us.
            changed.as_mut().enable();
            let sleep = {
                let mut state = self.state();
                if state.closed {
                    return Err(Closed);
                }
                let now = now_ms();
                if state.wheel.has_due(now) {
                    return Ok(());
                }
                // The slot deadline is O(1) and never after the next timer; waking there at worst
                // cascades the timer one level nearer.
                state
                    .wheel
                    .next_deadline()
                    .map(|at| Duration::from_millis(at.saturating_sub(now)).min(MAX_SLEEP))
            };
            match sleep {
                Some(sleep) => {
                    tokio::select! {
                        () = tokio::time::sleep(sleep) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Closes the service: every waiter, now and later, gets [`Closed`].
    pub fn close(&self) {
        self.state().closed = true;
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Instant};

    use super::*;

    fn ids(expired: &[Expired]) -> Vec<u64> {
        expired.iter().map(|e| e.id).collect()
    }

    #[tokio::test]
    async fn waits_until_the_earliest_timer() {
        let timers = TimerService::new();
        let now = now_ms();
        timers.schedule(1, now + 120);
        timers.schedule(2, now + 40);
        let started = Instant::now();
        timers.wait_due().await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(ids(&timers.take_due(10)), [2]);
        timers.wait_due().await.unwrap();
        assert_eq!(ids(&timers.take_due(10)), [1]);
        assert!(timers.is_empty());
    }

    #[tokio::test]
    async fn an_earlier_timer_wakes_a_sleeping_waiter() {
        let timers = Arc::new(TimerService::new());
        timers.schedule(1, now_ms() + 60_000);
        let waiter = tokio::spawn({
            let timers = timers.clone();
            async move { timers.wait_due().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        timers.schedule(2, now_ms() + 10);
        waiter.await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(ids(&timers.take_due(10)), [2]);
        assert_eq!(timers.len(), 1);
    }

    #[tokio::test]
    async fn take_due_respects_max_and_keeps_the_rest_in_order() {
        let timers = TimerService::new();
        let past = now_ms() - 1_000;
        timers.schedule_many(&(0..10).map(|i| (i, past + i)).collect::<Vec<_>>());
        timers.wait_due().await.unwrap();
        assert_eq!(ids(&timers.take_due(4)), [0, 1, 2, 3]);
        assert!(timers.cancel(5)); // due, not yet taken
        timers.schedule(100, past - 10_000); // due earlier than all the leftovers
        assert_eq!(ids(&timers.take_due(100)), [100, 4, 6, 7, 8, 9]);
        assert!(timers.take_due(100).is_empty());
    }

    #[tokio::test]
    async fn rescheduling_a_due_timer_moves_it() {
        let timers = TimerService::new();
        timers.schedule(1, now_ms() - 5);
        timers.wait_due().await.unwrap();
        assert!(timers.schedule(1, now_ms() + 60_000));
        assert!(timers.take_due(10).is_empty());
        assert_eq!(timers.len(), 1);
    }

    #[tokio::test]
    async fn a_far_timer_in_a_crowded_slot_wakes_on_time() {
        let timers = TimerService::new();
        let now = now_ms();
        // Many timers hours away share a high-level slot with one due in a few ms.
        timers.schedule_many(
            &(0..10_000)
                .map(|i| (i, now + 3_600_000 + i))
                .collect::<Vec<_>>(),
        );
        timers.schedule(99_999, now + 30);
        tokio::time::timeout(Duration::from_secs(5), timers.wait_due())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids(&timers.take_due(10)), [99_999]);
    }

    #[tokio::test]
    async fn close_wakes_waiters() {
        let timers = Arc::new(TimerService::new());
        let waiter = tokio::spawn({
            let timers = timers.clone();
            async move { timers.wait_due().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        timers.close();
        assert_eq!(waiter.await.unwrap(), Err(Closed));
        assert_eq!(timers.wait_due().await, Err(Closed));
    }

    #[tokio::test]
    async fn a_dropped_wait_loses_nothing() {
        let timers = TimerService::new();
        timers.schedule(1, now_ms() + 30);
        // Give up on the wait before the timer is due, as a cancelled Python task would.
        let gave_up = tokio::time::timeout(Duration::from_millis(5), timers.wait_due()).await;
        assert!(gave_up.is_err());
        timers.wait_due().await.unwrap();
        assert_eq!(ids(&timers.take_due(10)), [1]);
    }
}
