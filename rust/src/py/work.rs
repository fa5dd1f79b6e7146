//! The work source for Python: wait for work through a bridge, take it in batches.

use std::sync::{atomic::AtomicU64, Arc};

use pyo3::prelude::*;

use super::{
    bridge::AsyncBridge,
    errors::{at_item, capacity_hint, not_a_single_str, Int, Text},
    store::{PySnapshot, PyStore},
};
use crate::{runtime, work};

/// An execution to run again, from its snapshot.
#[pyclass(module = "plait._native", name = "Resume", frozen)]
pub struct PyResume {
    execution_id: String,
    snapshot: Py<PySnapshot>,
    fired: Option<String>,
}

#[pymethods]
impl PyResume {
    /// The execution.
    #[getter]
    fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// What it has stored, read after the event that made it runnable.
    #[getter]
    fn snapshot(&self, py: Python<'_>) -> Py<PySnapshot> {
        self.snapshot.clone_ref(py)
    }

    /// The deferred whose timer fired to make it runnable, if that is why.
    #[getter]
    fn fired(&self) -> Option<&str> {
        self.fired.as_deref()
    }

    fn __repr__(&self) -> String {
        format!(
            "<Resume {} fired={:?}>",
            self.execution_id,
            self.fired.as_deref()
        )
    }
}

/// What one engine owns and what runs next: recovery, durable timers, snapshots to resume.
#[pyclass(module = "plait._native", name = "WorkSource", frozen)]
pub struct PyWorkSource {
    source: Arc<work::WorkSource>,
    born: u64,
}

impl PyWorkSource {
    fn source(&self) -> PyResult<Arc<work::WorkSource>> {
        runtime::check_not_forked(self.born, "WorkSource")?;
        Ok(Arc::clone(&self.source))
    }
}

#[pymethods]
impl PyWorkSource {
    /// Starts the source on `store`: on the wall clock, or on a manual one starting at
    /// `manual_now_ms` that only `advance_to` moves.
    #[new]
    #[pyo3(signature = (store, manual_now_ms = None))]
    fn new(store: &PyStore, manual_now_ms: Option<Int<u64>>) -> PyResult<Self> {
        let store = store.shared()?;
        let clock = match manual_now_ms {
            Some(Int(now)) => work::Clock::Manual(AtomicU64::new(now)),
            None => work::Clock::Wall,
        };
        let born = runtime::generation();
        let _runtime = runtime::runtime().enter();
        Ok(Self {
            source: Arc::new(work::WorkSource::start(store, clock)),
            born,
        })
    }

    /// Resolves to None once work is ready to take; raises `ClosedError` once closed.
    fn wait(&self, bridge: &AsyncBridge) -> PyResult<u64> {
        let source = self.source()?;
        bridge.spawn(async move { Ok(source.wait().await?) })
    }

    /// Resolves to None once the source has listed the executions found running and read its
    /// first window of timers; raises `ClosedError` once closed.
    fn started(&self, bridge: &AsyncBridge) -> PyResult<u64> {
        let source = self.source()?;
        bridge.spawn(async move { Ok(source.started().await?) })
    }

    /// Takes up to `max` units of ready work, oldest first.
    fn take(&self, py: Python<'_>, max: Int<usize>) -> PyResult<Vec<PyResume>> {
        self.source()?
            .take(max.0)
            .into_iter()
            .map(|work| {
                Ok(PyResume {
                    execution_id: work.execution_id,
                    snapshot: Py::new(py, PySnapshot(work.snapshot))?,
                    fired: work.fired,
                })
            })
            .collect()
    }

    /// A timer was stored: the source puts it in its wheel if it falls in the loaded window.
    fn scheduled(&self, execution_id: Text, name: Text, due_ms: Int<u64>) -> PyResult<()> {
        self.source()?.scheduled(&execution_id, &name, due_ms.0);
        Ok(())
    }

    /// Resumes these executions: their snapshots are read and handed out as work.
    fn resume(&self, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        not_a_single_str(ids, "ids")?;
        let py = ids.py();
        let mut out = Vec::with_capacity(capacity_hint(ids));
        for (index, id) in ids.try_iter()?.enumerate() {
            let id: Text = id
                .and_then(|id| id.extract())
                .map_err(|err| at_item(py, err, "ids", index))?;
            out.push(id.to_owned());
        }
        self.source()?.resume(out);
        Ok(())
    }

    /// Moves a manual clock to `now_ms` (never backwards); nothing on the wall clock.
    fn advance_to(&self, now_ms: Int<u64>) -> PyResult<()> {
        self.source()?.advance_to(now_ms.0);
        Ok(())
    }

    /// When the source next needs time to move (ms), or None.
    fn next_due(&self) -> PyResult<Option<u64>> {
        Ok(self.source()?.next_due())
    }

    /// Whether the source holds work not yet taken.
    fn busy(&self) -> PyResult<bool> {
        Ok(self.source()?.busy())
    }

    /// The timers in memory, as `(execution id, deferred name)`, sorted.
    fn timers_in_memory(&self) -> PyResult<Vec<(String, String)>> {
        Ok(self.source()?.timers_in_memory())
    }

    /// Stops the source; waits end with `ClosedError`. The store keeps what was not done.
    fn close(&self) -> PyResult<()> {
        self.source()?.close();
        Ok(())
    }
}
