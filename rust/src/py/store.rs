//! The journal store for Python: records cross as tuples of str, int and bytes.

use pyo3::{prelude::*, pybacked::PyBackedBytes, types::PyBytes};

use super::errors::{at_item, capacity_hint, Int};
use crate::store::{self, memory, Status};

/// `(workflow, payload, parent, status, result, interrupted)`.
pub(super) type ExecutionTuple<'py> = (
    String,
    Bound<'py, PyBytes>,
    Option<String>,
    &'static str,
    Option<Bound<'py, PyBytes>>,
    bool,
);

pub(super) fn execution_tuple(py: Python<'_>, execution: store::Execution) -> ExecutionTuple<'_> {
    (
        execution.workflow,
        PyBytes::new(py, &execution.payload),
        execution.parent,
        execution.status.as_str(),
        execution.result.map(|r| PyBytes::new(py, &r)),
        execution.interrupted,
    )
}

/// Executions, their journals, deferred results and timers, held in this process.
#[pyclass(module = "plait._native", frozen)]
pub struct MemoryStore {
    store: memory::MemoryStore,
}

#[pymethods]
impl MemoryStore {
    #[new]
    fn new() -> Self {
        Self {
            store: memory::MemoryStore::default(),
        }
    }

    /// Records a new running execution unless `id` exists; returns the existing one, or None.
    #[pyo3(signature = (id, workflow, payload, parent = None))]
    fn start<'py>(
        &self,
        py: Python<'py>,
        id: &str,
        workflow: &str,
        payload: PyBackedBytes,
        parent: Option<String>,
    ) -> Option<ExecutionTuple<'py>> {
        self.store
            .start(id, workflow, payload.to_vec(), parent)
            .map(|e| execution_tuple(py, e))
    }

    /// The execution `id`, or None.
    fn execution<'py>(&self, py: Python<'py>, id: &str) -> Option<ExecutionTuple<'py>> {
        self.store.execution(id).map(|e| execution_tuple(py, e))
    }

    /// The execution, its step results `(key, seq, value)` and deferred results `(name, value)`.
    #[allow(clippy::type_complexity)]
    fn snapshot<'py>(
        &self,
        py: Python<'py>,
        id: &str,
    ) -> Option<(
        ExecutionTuple<'py>,
        Vec<(String, u32, Bound<'py, PyBytes>)>,
        Vec<(String, Bound<'py, PyBytes>)>,
    )> {
        let snapshot = self.store.snapshot(id)?;
        let entries = snapshot
            .entries
            .into_iter()
            .map(|e| (e.key, e.seq, PyBytes::new(py, &e.value)))
            .collect();
        let deferreds = snapshot
            .deferreds
            .into_iter()
            .map(|(name, value)| (name, PyBytes::new(py, &value)))
            .collect();
        Some((execution_tuple(py, snapshot.execution), entries, deferreds))
    }

    /// Appends `(execution_id, key, seq, value)` step results, all or nothing; returns, per
    /// entry, whether it was stored (False: the key already had a result).
    fn append(&self, entries: &Bound<'_, PyAny>) -> PyResult<Vec<bool>> {
        let py = entries.py();
        let mut batch = Vec::with_capacity(capacity_hint(entries));
        for (index, item) in entries.try_iter()?.enumerate() {
            let (id, key, Int(seq), value): (String, String, Int<u32>, PyBackedBytes) = item
                .and_then(|item| item.extract())
                .map_err(|err| at_item(py, err, "entries", index))?;
            batch.push((
                id,
                store::Entry {
                    key,
                    seq,
                    value: value.to_vec(),
                },
            ));
        }
        Ok(self.store.append(batch)?)
    }

    /// Stores a deferred's result unless it has one; returns whether it was stored.
    fn complete_deferred(&self, id: &str, name: &str, value: PyBackedBytes) -> PyResult<bool> {
        Ok(self.store.complete_deferred(id, name, value.to_vec())?)
    }

    /// Moves an execution to `status` (`running`, `suspended` or `complete`) with `result`.
    #[pyo3(signature = (id, status, result = None))]
    fn set_status(&self, id: &str, status: &str, result: Option<PyBackedBytes>) -> PyResult<()> {
        let status = Status::parse(status)?;
        Ok(self
            .store
            .set_status(id, status, result.map(|r| r.to_vec()))?)
    }

    /// Records an interrupt request; False if the execution had completed.
    fn interrupt(&self, id: &str) -> PyResult<bool> {
        Ok(self.store.interrupt(id)?)
    }

    /// Stores a durable timer unless one with that execution and name exists.
    fn schedule_timer(&self, execution_id: &str, name: &str, due_ms: Int<u64>) -> PyResult<bool> {
        Ok(self.store.schedule_timer(store::Timer {
            execution_id: execution_id.to_owned(),
            name: name.to_owned(),
            due_ms: due_ms.0,
        })?)
    }

    /// Forgets a timer; returns whether it was stored.
    fn remove_timer(&self, execution_id: &str, name: &str) -> bool {
        self.store.remove_timer(execution_id, name)
    }

    /// Every stored timer as `(execution_id, name, due_ms)`, earliest first.
    fn timers(&self) -> Vec<(String, String, u64)> {
        self.store
            .timers()
            .into_iter()
            .map(|t| (t.execution_id, t.name, t.due_ms))
            .collect()
    }

    /// The timers due in `(after_ms, until_ms]` as `(execution_id, name, due_ms)`, earliest
    /// first, and when the first one after `until_ms` is due (None: there is none). `after_ms`
    /// -1 takes every timer due up to `until_ms`.
    #[allow(clippy::type_complexity)]
    fn timers_between(
        &self,
        after_ms: Int<i64>,
        until_ms: Int<i64>,
    ) -> (Vec<(String, String, u64)>, Option<u64>) {
        let (timers, next) = self.store.timers_between(after_ms.0, until_ms.0);
        let timers = timers
            .into_iter()
            .map(|t| (t.execution_id, t.name, t.due_ms))
            .collect();
        (timers, next)
    }

    /// Ids of the executions with `status`.
    fn with_status(&self, status: &str) -> PyResult<Vec<String>> {
        Ok(self.store.with_status(Status::parse(status)?))
    }

    fn __len__(&self) -> usize {
        self.store.len()
    }
}
