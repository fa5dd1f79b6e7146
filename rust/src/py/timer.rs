//! Timers for Python: the wheel itself, and the async service.

use std::sync::Arc;

use pyo3::prelude::*;

use super::{bridge::AsyncBridge, errors::Int};
use crate::{snowflake::now_ms, timer};

type U64 = Int<u64>;

fn extract_timers(timers: &Bound<'_, PyAny>) -> PyResult<Vec<(u64, u64)>> {
    let mut out = Vec::with_capacity(timers.len().unwrap_or(0));
    for item in timers.try_iter()? {
        let (Int(id), Int(due)): (U64, U64) = item?.extract()?;
        out.push((id, due));
    }
    Ok(out)
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
            wheel: timer::TimerWheel::new(now_ms.map_or_else(crate::snowflake::now_ms, |n| n.0)),
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

    /// Moves to `now_ms`; returns the ids of the timers due by then, in due order.
    fn advance(&mut self, now_ms: U64) -> Vec<u64> {
        self.wheel
            .advance(now_ms.0)
            .into_iter()
            .map(|e| e.id)
            .collect()
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

    fn __contains__(&self, timer_id: U64) -> bool {
        self.wheel.contains(timer_id.0)
    }
}

/// Handle on a wall-clock timer service; `plait.TimerService` wraps it.
#[pyclass(module = "plait._native", frozen)]
pub struct TimerServiceRef {
    service: Arc<timer::TimerService>,
}

#[pymethods]
impl TimerServiceRef {
    #[new]
    fn new() -> Self {
        Self {
            service: Arc::new(timer::TimerService::new()),
        }
    }

    fn schedule(&self, timer_id: U64, due_ms: U64) -> bool {
        self.service.schedule(timer_id.0, due_ms.0)
    }

    fn schedule_many(&self, timers: &Bound<'_, PyAny>) -> PyResult<()> {
        self.service.schedule_many(&extract_timers(timers)?);
        Ok(())
    }

    fn cancel(&self, timer_id: U64) -> bool {
        self.service.cancel(timer_id.0)
    }

    fn take_due(&self, max_timers: Int<usize>) -> Vec<u64> {
        self.service
            .take_due(max_timers.0)
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    /// Starts a wait, through `bridge`, that ends once a timer is due (`ClosedError` once
    /// closed). Returns the wait's token.
    fn wait_due(&self, bridge: &AsyncBridge) -> u64 {
        let service = Arc::clone(&self.service);
        bridge.spawn(async move { Ok(service.wait_due().await?) })
    }

    fn close(&self) {
        self.service.close();
    }

    fn __len__(&self) -> usize {
        self.service.len()
    }
}

/// Milliseconds since the Unix epoch, from the wall clock the timers use.
#[pyfunction]
pub fn wall_clock_ms() -> u64 {
    now_ms()
}
