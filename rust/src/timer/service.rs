//! A timer wheel driven by the wall clock, for async consumers.
//!
//! Waiting and taking are separate on purpose: [`TimerService::wait_due`] only waits until
//! some timer is due, and [`TimerService::take_due`] hands timers out. A waiter that is
//! cancelled (a Python task cancelled mid-`await`) therefore never drops timers it had taken.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::sync::Notify;

use super::{Expired, TimerWheel};
use crate::snowflake::now_ms;

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
    /// Due timers not yet taken, in due order.
    ready: VecDeque<Expired>,
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
                ready: VecDeque::new(),
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
        let replaced = {
            let mut state = self.state();
            let taken = remove_ready(&mut state.ready, id);
            state.wheel.insert(id, due_ms) || taken
        };
        self.changed.notify_waiters();
        replaced
    }

    /// Schedules many timers under one lock.
    pub fn schedule_many(&self, timers: &[(u64, u64)]) {
        {
            let mut state = self.state();
            for &(id, due_ms) in timers {
                remove_ready(&mut state.ready, id);
                state.wheel.insert(id, due_ms);
            }
        }
        self.changed.notify_waiters();
    }

    /// Cancels timer `id`, whether pending or due and not yet taken. Returns whether it was.
    pub fn cancel(&self, id: u64) -> bool {
        let mut state = self.state();
        state.wheel.cancel(id) || remove_ready(&mut state.ready, id)
    }

    /// Timers pending or due and not yet taken.
    pub fn len(&self) -> usize {
        let state = self.state();
        state.wheel.len() + state.ready.len()
    }

    /// Whether no timer is pending or due.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `max` due timers, earliest first.
    pub fn take_due(&self, max: usize) -> Vec<Expired> {
        let mut state = self.state();
        collect_due(&mut state);
        let n = max.min(state.ready.len());
        state.ready.drain(..n).collect()
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
                collect_due(&mut state);
                if !state.ready.is_empty() {
                    return Ok(());
                }
                state
                    .wheel
                    .next_due()
                    .map(|due| Duration::from_millis(due.saturating_sub(now_ms())).min(MAX_SLEEP))
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

fn collect_due(state: &mut State) {
    let fired = state.wheel.advance(now_ms());
    state.ready.extend(fired);
}

fn remove_ready(ready: &mut VecDeque<Expired>, id: u64) -> bool {
    let before = ready.len();
    ready.retain(|e| e.id != id);
    ready.len() != before
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
    async fn take_due_respects_max_and_keeps_the_rest() {
        let timers = TimerService::new();
        let past = now_ms() - 1_000;
        timers.schedule_many(&(0..10).map(|i| (i, past + i)).collect::<Vec<_>>());
        timers.wait_due().await.unwrap();
        assert_eq!(ids(&timers.take_due(4)), [0, 1, 2, 3]);
        assert!(timers.cancel(5)); // due, not yet taken
        assert_eq!(ids(&timers.take_due(100)), [4, 6, 7, 8, 9]);
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
