//! The durable journal store for Python. Every call starts a Rust task through an
//! [`AsyncBridge`] and returns its token; records cross as the same tuples as `MemoryStore`'s.

use std::{sync::Arc, time::Duration};

use pyo3::{
    exceptions::PyTypeError,
    prelude::*,
    pybacked::PyBackedBytes,
    types::{PyBytes, PyList, PyString, PyTuple},
    IntoPyObjectExt,
};

use super::{
    bridge::AsyncBridge,
    errors::{at_item, capacity_hint, not_a_single_str, Int, InvalidArgumentError, Text},
    store::execution_tuple,
};
use crate::{
    runtime,
    store::{self, sql, Status},
};

/// An execution record, as `MemoryStore` returns it.
struct Record(store::Execution);

impl<'py> IntoPyObject<'py> for Record {
    type Target = PyTuple;
    type Output = Bound<'py, PyTuple>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        execution_tuple(py, self.0).into_pyobject(py)
    }
}

/// `(record, [(key, seq, value)], [(name, value)])`.
struct SnapshotTuple(store::Snapshot);

impl<'py> IntoPyObject<'py> for SnapshotTuple {
    type Target = PyTuple;
    type Output = Bound<'py, PyTuple>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let snapshot = self.0;
        let entries = PyList::new(
            py,
            snapshot
                .entries
                .into_iter()
                .map(|e| (e.key, e.seq, PyBytes::new(py, &e.value))),
        )?;
        let deferreds = PyList::new(
            py,
            snapshot
                .deferreds
                .into_iter()
                .map(|(name, value)| (name, PyBytes::new(py, &value))),
        )?;
        (Record(snapshot.execution), entries, deferreds).into_pyobject(py)
    }
}

/// One result per op: `None` (created, or unknown execution), a record, or a bool.
struct WriteResults(Vec<sql::OpResult>);

impl<'py> IntoPyObject<'py> for WriteResults {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let items = self
            .0
            .into_iter()
            .map(|result| match result {
                sql::OpResult::Created | sql::OpResult::UnknownExecution => Ok(py.None()),
                sql::OpResult::Existing(execution) => Record(execution).into_py_any(py),
                sql::OpResult::Done(done) => done.into_py_any(py),
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }
}

const OPS: &str = "start, append, deferred, status, interrupt, timer or untimer";

/// Reads one op tuple.
fn extract_op(item: &Bound<'_, PyAny>) -> PyResult<sql::Op> {
    let tuple: Bound<'_, PyTuple> = item.extract()?;
    if tuple.is_empty() {
        return Err(InvalidArgumentError::new_err(format!(
            "an op is a tuple that starts with its name ({OPS}), not ()"
        )));
    }
    let kind: Text = tuple.get_item(0)?.extract()?;
    Ok(match &*kind {
        "start" => {
            let (_, id, workflow, payload, parent): (
                Bound<'_, PyAny>,
                Text,
                Text,
                PyBackedBytes,
                Option<Text>,
            ) = tuple.extract()?;
            sql::Op::Start {
                id: id.to_owned(),
                workflow: workflow.to_owned(),
                payload: payload.to_vec(),
                parent: parent.map(|p| p.to_owned()),
            }
        }
        "append" => {
            let (_, id, key, Int(seq), value): (
                Bound<'_, PyAny>,
                Text,
                Text,
                Int<u32>,
                PyBackedBytes,
            ) = tuple.extract()?;
            sql::Op::Append {
                id: id.to_owned(),
                entry: store::Entry {
                    key: key.to_owned(),
                    seq,
                    value: value.to_vec(),
                },
            }
        }
        "deferred" => {
            let (_, id, name, value): (Bound<'_, PyAny>, Text, Text, PyBackedBytes) =
                tuple.extract()?;
            sql::Op::Deferred {
                id: id.to_owned(),
                name: name.to_owned(),
                value: value.to_vec(),
            }
        }
        "status" => {
            let (_, id, status, result): (Bound<'_, PyAny>, Text, Text, Option<PyBackedBytes>) =
                tuple.extract()?;
            sql::Op::Status {
                id: id.to_owned(),
                status: Status::parse(&status)?,
                result: result.map(|r| r.to_vec()),
            }
        }
        "interrupt" => {
            let (_, id): (Bound<'_, PyAny>, Text) = tuple.extract()?;
            sql::Op::Interrupt { id: id.to_owned() }
        }
        "timer" => {
            let (_, execution_id, name, Int(due_ms)): (Bound<'_, PyAny>, Text, Text, Int<u64>) =
                tuple.extract()?;
            sql::Op::Timer(store::Timer {
                execution_id: execution_id.to_owned(),
                name: name.to_owned(),
                due_ms,
            })
        }
        "untimer" => {
            let (_, execution_id, name): (Bound<'_, PyAny>, Text, Text) = tuple.extract()?;
            sql::Op::Untimer {
                execution_id: execution_id.to_owned(),
                name: name.to_owned(),
            }
        }
        other => {
            return Err(InvalidArgumentError::new_err(format!(
                "unknown op {other:?}; expected {OPS}"
            )))
        }
    })
}

/// Reads a batch of execution ids: an iterable of str (a single str is refused).
fn extract_ids(ids: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    not_a_single_str(ids, "ids")?;
    let py = ids.py();
    let mut out = Vec::with_capacity(capacity_hint(ids));
    for (index, id) in ids.try_iter()?.enumerate() {
        let id: Text = id
            .and_then(|id| id.extract())
            .map_err(|err| at_item(py, err, "ids", index))?;
        out.push(id.to_owned());
    }
    Ok(out)
}

/// Executions, their journals, deferred results and timers in SQLite or PostgreSQL.
#[pyclass(module = "plait._native", frozen)]
pub struct SqlStore {
    store: Arc<sql::SqlStore>,
    /// The store's tasks run on the runtime of the process that opened it.
    born: u64,
}

impl Drop for SqlStore {
    fn drop(&mut self) {
        if runtime::check_not_forked(self.born, "SqlStore").is_err() {
            // The parent's runtime has no threads here, and its locks may be held forever:
            // leak the store rather than touch them.
            std::mem::forget(Arc::clone(&self.store));
            return;
        }
        // Dropping the last handle lets the writer finish what is queued and release the
        // engine lock; anything dropped here that wants the runtime finds it.
        let _runtime = runtime::runtime().enter();
        let store = Arc::clone(&self.store);
        drop(store);
    }
}

impl SqlStore {
    fn store(&self) -> PyResult<Arc<sql::SqlStore>> {
        runtime::check_not_forked(self.born, "SqlStore")?;
        Ok(Arc::clone(&self.store))
    }
}

#[pymethods]
impl SqlStore {
    /// Opens (creating, migrating and locking) the store at `url`; resolves to a `SqlStore`.
    #[staticmethod]
    #[pyo3(signature = (bridge, url, prefix = "plait_", durability = "full", lease_ttl_ms = None))]
    fn open(
        bridge: &AsyncBridge,
        url: Text,
        prefix: &str,
        durability: &str,
        lease_ttl_ms: Option<Int<u64>>,
    ) -> PyResult<u64> {
        let mut config = sql::Config::new(&url, prefix, durability)?;
        if let Some(Int(ttl_ms)) = lease_ttl_ms {
            config =
                config.with_lease_times(sql::LeaseTimes::for_ttl(Duration::from_millis(ttl_ms)))?;
        }
        bridge.spawn(async move {
            let store = sql::SqlStore::open(&config).await?;
            Ok(SqlStore {
                store: Arc::new(store),
                born: runtime::generation(),
            })
        })
    }

    /// Queues a batch of op tuples for the writer; resolves to one result per op once the
    /// transaction holding them has committed.
    fn write(&self, bridge: &AsyncBridge, ops: &Bound<'_, PyAny>) -> PyResult<u64> {
        let store = self.store()?;
        let py = ops.py();
        if ops.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "ops must be an iterable of op tuples, not a single str",
            ));
        }
        let mut batch = Vec::with_capacity(capacity_hint(ops));
        for (index, item) in ops.try_iter()?.enumerate() {
            let op = item
                .and_then(|item| extract_op(&item))
                .map_err(|err| at_item(py, err, "ops", index))?;
            batch.push(op);
        }
        let results = store.write(batch)?;
        bridge.spawn(async move { Ok(WriteResults(results.await?)) })
    }

    /// Resolves to `(record, [(key, seq, value)], [(name, value)])`, or None.
    fn snapshot(&self, bridge: &AsyncBridge, id: Text) -> PyResult<u64> {
        let store = self.store()?;
        let id = id.to_owned();
        bridge.spawn(async move { Ok(store.snapshot(&id).await?.map(SnapshotTuple)) })
    }

    /// Resolves to one snapshot (as `snapshot` resolves to) or None per id, in order.
    fn snapshots(&self, bridge: &AsyncBridge, ids: &Bound<'_, PyAny>) -> PyResult<u64> {
        let store = self.store()?;
        let ids = extract_ids(ids)?;
        bridge.spawn(async move {
            let found = store.snapshots(&ids).await?;
            Ok(found
                .into_iter()
                .map(|snapshot| snapshot.map(SnapshotTuple))
                .collect::<Vec<_>>())
        })
    }

    /// Resolves to the execution record, or None.
    fn execution(&self, bridge: &AsyncBridge, id: Text) -> PyResult<u64> {
        let store = self.store()?;
        let id = id.to_owned();
        bridge.spawn(async move { Ok(store.execution(&id).await?.map(Record)) })
    }

    /// Resolves to one execution record or None per id, in order.
    fn executions(&self, bridge: &AsyncBridge, ids: &Bound<'_, PyAny>) -> PyResult<u64> {
        let store = self.store()?;
        let ids = extract_ids(ids)?;
        bridge.spawn(async move {
            let found = store.executions(&ids).await?;
            Ok(found.into_iter().map(|e| e.map(Record)).collect::<Vec<_>>())
        })
    }

    /// Resolves to every timer as `(execution_id, name, due_ms)`, earliest first.
    fn timers(&self, bridge: &AsyncBridge) -> PyResult<u64> {
        let store = self.store()?;
        bridge.spawn(async move {
            Ok(store
                .timers()
                .await?
                .into_iter()
                .map(|t| (t.execution_id, t.name, t.due_ms))
                .collect::<Vec<_>>())
        })
    }

    /// Resolves to `([(execution_id, name, due_ms)], next_due)`: the timers due in
    /// `(after_ms, until_ms]`, earliest first, and when the first one after `until_ms` is due
    /// (None: there is none). `after_ms` -1 takes every timer due up to `until_ms`.
    fn timers_between(
        &self,
        bridge: &AsyncBridge,
        after_ms: Int<i64>,
        until_ms: Int<i64>,
    ) -> PyResult<u64> {
        let store = self.store()?;
        let (Int(after_ms), Int(until_ms)) = (after_ms, until_ms);
        bridge.spawn(async move {
            let (timers, next) = store.timers_between(after_ms, until_ms).await?;
            let timers: Vec<(String, String, u64)> = timers
                .into_iter()
                .map(|t| (t.execution_id, t.name, t.due_ms))
                .collect();
            Ok((timers, next))
        })
    }

    /// Resolves to the ids of the executions with `status`.
    fn with_status(&self, bridge: &AsyncBridge, status: &str) -> PyResult<u64> {
        let store = self.store()?;
        let status = Status::parse(status)?;
        bridge.spawn(async move { Ok(store.with_status(status).await?) })
    }

    /// Resolves to why the store lost its lease (another engine took the database over), or to
    /// None once the store closes; at once to None on SQLite, whose file lock cannot lapse.
    fn lost(&self, bridge: &AsyncBridge) -> PyResult<u64> {
        let store = self.store()?;
        bridge.spawn(async move { Ok(store.lost().await) })
    }

    /// Commits what is queued, releases the engine lock and the connections; resolves to None.
    fn close(&self, bridge: &AsyncBridge) -> PyResult<u64> {
        let store = self.store()?;
        bridge.spawn(async move {
            store.close().await;
            Ok(())
        })
    }

    /// The URL, with any password replaced by `***`.
    #[getter]
    fn url(&self) -> &str {
        self.store.url()
    }

    fn __repr__(&self) -> String {
        format!(
            "<SqlStore {} prefix={:?}>",
            self.store.url(),
            self.store.prefix()
        )
    }
}
