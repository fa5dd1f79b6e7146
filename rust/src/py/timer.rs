//! Timers for Python: the wheel itself, and the async service.

use std::sync::Arc;

use pyo3::prelude::*;

use super::{
    bridge::AsyncBridge,
    errors::{at_item, capacity_hint, Int},
};
use crate::{clock::now_ms, runtime, timer};

type U64 = Int<u64>;

fn extract_timers(timers: &Bound<'_, PyAny>) -> PyResult<Vec<(u64, u64)>> {
    let py = timers.py();
    let mut out = Vec::with_capacity(capacity_hint(timers));
    for (index, item) in timers.try_iter()?.enumerate() {
        let (Int(id), Int(due)): (U64, U64) = item
            .and_then(|item| item.extract())
            .map_err(|err| at_item(py, err, "timers", index))?;
        out.push((id, due));
    }
    Ok(out)
}

fn ids(expired: Vec<timer::Expired>) -> Vec<u64> {
    expired.into_iter().map(|e| e.id).collect()
}

/// A hierarchical timer wheel: timer ids due at instants in ms.
#[pyclass(module = "plait._native", name = "TimerWheel")]
pub struct PyTimerWheel {
    wheel: timer::TimerWheel,
}

#[pymethods]
impl PyTimerWheel {
    #[new]
    #[pyo3(signature = (now_ms = None))]
    fn new(now_ms: Option<U64>) -> Self {
        Self {
            wheel: timer::TimerWheel::new(now_ms.map_or_else(crate::clock::now_ms, |n| n.0)),
        }
    }

    /// Schedules or moves a timer. Returns whether it replaced a pending one.
    fn insert(&mut self, timer_id: U64, due_ms: U64) -> bool {
        self.wheel.insert(timer_id.0, due_ms.0)
    }

    /// Schedules many `(timer_id, due_ms)` pairs in one call.
    fn insert_many(&mut self, timers: &Bound<'_, PyAny>) -> PyResult<()> {
        for (id, due) in extract_timers(timers)? {
            self.wheel.insert(id, due);
        }
        Ok(())
    }

    /// Cancels a timer. Returns whether it was pending.
    fn cancel(&mut self, timer_id: U64) -> bool {
        self.wheel.cancel(timer_id.0)
    }

    /// Moves to `now_ms`; takes the ids of the timers due by then (at most `max_timers`), in
    /// due order.
    #[pyo3(signature = (now_ms, max_timers = None))]
    fn advance(&mut self, now_ms: U64, max_timers: Option<Int<usize>>) -> Vec<u64> {
        let max = max_timers.map_or(usize::MAX, |m| m.0);
        ids(self.wheel.take_due(now_ms.0, max))
    }

    /// The earliest due instant, or `None` when empty.
    fn next_due(&self) -> Option<u64> {
        self.wheel.next_due()
    }

    /// When a pending timer is due, or `None`.
    fn due_of(&self, timer_id: U64) -> Option<u64> {
        self.wheel.due_of(timer_id.0)
    }

    /// The instant the wheel has advanced to.
    #[getter]
    fn elapsed_ms(&self) -> u64 {
        self.wheel.elapsed()
    }

    fn __len__(&self) -> usize {
        self.wheel.len()
    }

    fn __contains__(&self, timer_id: &Bound<'_, PyAny>) -> bool {
        timer_id
            .extract::<u64>()
            .is_ok_and(|id| self.wheel.contains(id))
    }
}

/// Handle on a wall-clock timer service; `plait.timers.TimerService` wraps it.
#[pyclass(module = "plait._native", frozen)]
pub struct TimerServiceRef {
    service: Arc<timer::TimerService>,
    /// The runtime's threads take the service's lock; in a forked child it may be held forever.
    born: u64,
}

impl TimerServiceRef {
    fn service(&self) -> PyResult<&timer::TimerService> {
        runtime::check_not_forked(self.born, "TimerService")?;
        Ok(&self.service)
    }
}

#[pymethods]
impl TimerServiceRef {
    #[new]
    fn new() -> Self {
        Self {
            service: Arc::new(timer::TimerService::new()),
            born: runtime::generation(),
        }
    }

    fn schedule(&self, timer_id: U64, due_ms: U64) -> PyResult<bool> {
        Ok(self.service()?.schedule(timer_id.0, due_ms.0))
    }

    fn schedule_many(&self, timers: &Bound<'_, PyAny>) -> PyResult<()> {
        let timers = extract_timers(timers)?;
        self.service()?.schedule_many(&timers);
        Ok(())
    }

    fn cancel(&self, timer_id: U64) -> PyResult<bool> {
        Ok(self.service()?.cancel(timer_id.0))
    }

    fn take_due(&self, max_timers: Int<usize>) -> PyResult<Vec<u64>> {
        Ok(ids(self.service()?.take_due(max_timers.0)))
    }

    /// Starts a wait, through `bridge`, that ends once a timer is due (`ClosedError` once
    /// closed). Returns the wait's token.
    fn wait_due(&self, bridge: &AsyncBridge) -> PyResult<u64> {
        self.service()?;
        let service = Arc::clone(&self.service);
        bridge.spawn(async move { Ok(service.wait_due().await?) })
    }

    fn close(&self) -> PyResult<()> {
        self.service()?.close();
        Ok(())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.service()?.len())
    }
}

/// Milliseconds since the Unix epoch, from the wall clock the timers use.
#[pyfunction]
pub fn wall_clock_ms() -> u64 {
    now_ms()
}
