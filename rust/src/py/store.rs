//! The journal store for Python: one `Store` class over every backend, ops made by typed
//! constructors, and records read by attribute.
//!
//! Every store answers through an [`AsyncBridge`] token; the memory store, which answers at
//! once, is also called synchronously (`write_now`, `snapshots_now`, ...), so that the memory
//! engine pays no event-loop round trip per write.

use std::{sync::Arc, time::Duration};

use futures_util::FutureExt;
use pyo3::{
    exceptions::PyTypeError,
    prelude::*,
    pybacked::PyBackedBytes,
    types::{PyBool, PyBytes, PyList, PyString, PyTuple},
};

use super::{
    bridge::AsyncBridge,
    errors::{
        at_item, capacity_hint, not_a_single_str, Int, InvalidArgumentError, StoreError, Text,
    },
    listing::{self, PyFilter, PyHistory, PyPage},
};
use crate::{
    runtime,
    store::{self, memory::MemoryStore, messages, sql, Answer, Status},
};

/// One write for `Store.write`, made by its constructors (`Op.start(...)`, `Op.append(...)`).
#[pyclass(module = "plait._native", name = "Op", frozen, eq)]
#[derive(PartialEq)]
pub struct PyOp {
    op: store::Op,
}

impl From<store::Op> for PyOp {
    fn from(op: store::Op) -> Self {
        Self { op }
    }
}

#[pymethods]
impl PyOp {
    /// Records a new running execution unless `id` exists.
    ///
    /// Every journal op takes a `shard` (`"group:id"`): on a runner of a cluster, written as
    /// the owner of the execution's shard, refused (`Fenced`) once that lease is lost.
    #[staticmethod]
    #[pyo3(signature = (id, workflow, payload, parent = None, shard = None))]
    fn start(
        id: Text,
        workflow: Text,
        payload: PyBackedBytes,
        parent: Option<Text>,
        shard: Option<Text>,
    ) -> Self {
        owned(
            shard,
            store::Op::Start {
                id: id.to_owned(),
                workflow: workflow.to_owned(),
                payload: payload.to_vec(),
                parent: parent.map(|p| p.to_owned()),
            },
        )
    }

    /// Stores a step result unless its key has one.
    #[staticmethod]
    #[pyo3(signature = (id, key, seq, value, shard = None))]
    fn append(
        id: Text,
        key: Text,
        seq: Int<u32>,
        value: PyBackedBytes,
        shard: Option<Text>,
    ) -> Self {
        owned(
            shard,
            store::Op::Append {
                id: id.to_owned(),
                entry: store::Entry {
                    key: key.to_owned(),
                    seq: seq.0,
                    value: value.to_vec(),
                },
            },
        )
    }

    /// Stores a deferred's result unless it has one.
    #[staticmethod]
    #[pyo3(signature = (id, name, value, shard = None))]
    fn deferred(id: Text, name: Text, value: PyBackedBytes, shard: Option<Text>) -> Self {
        owned(
            shard,
            store::Op::Deferred {
                id: id.to_owned(),
                name: name.to_owned(),
                value: value.to_vec(),
            },
        )
    }

    /// Moves an execution to `status` with `result`.
    #[staticmethod]
    #[pyo3(signature = (id, status, result = None, shard = None))]
    fn status(
        id: Text,
        status: &str,
        result: Option<PyBackedBytes>,
        shard: Option<Text>,
    ) -> PyResult<Self> {
        Ok(owned(
            shard,
            store::Op::Status {
                id: id.to_owned(),
                status: Status::parse(status)?,
                result: result.map(|r| r.to_vec()),
            },
        ))
    }

    /// Suspends an execution (with `cause`) unless it is complete or holds more than
    /// `deferreds` deferred results: one came that the run did not see, and it must run again.
    #[staticmethod]
    #[pyo3(signature = (id, cause, deferreds, shard = None))]
    fn suspend(
        id: Text,
        cause: Option<PyBackedBytes>,
        deferreds: Int<u32>,
        shard: Option<Text>,
    ) -> Self {
        owned(
            shard,
            store::Op::Suspend {
                id: id.to_owned(),
                cause: cause.map(|c| c.to_vec()),
                deferreds: deferreds.0,
            },
        )
    }

    /// Records an interrupt request.
    #[staticmethod]
    #[pyo3(signature = (id, shard = None))]
    fn interrupt(id: Text, shard: Option<Text>) -> Self {
        owned(shard, store::Op::Interrupt { id: id.to_owned() })
    }

    /// Stores a durable timer unless one with that execution and name exists.
    #[staticmethod]
    #[pyo3(signature = (execution_id, name, due_ms, shard = None))]
    fn timer(execution_id: Text, name: Text, due_ms: Int<u64>, shard: Option<Text>) -> Self {
        owned(
            shard,
            store::Op::Timer(store::Timer {
                execution_id: execution_id.to_owned(),
                name: name.to_owned(),
                due_ms: due_ms.0,
            }),
        )
    }

    /// Forgets a timer.
    #[staticmethod]
    fn untimer(execution_id: Text, name: Text) -> Self {
        Self::from(store::Op::Untimer {
            execution_id: execution_id.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Saves a persisted entity request (unprocessed) unless one with its id or its key is
    /// stored. `primary_key` is the RPC's key for the payload; the stored key is Effect's
    /// `"<entity type>/<entity id>/<tag>/<primary key>"` (hashed when longer than 255
    /// characters). `claimed_ms`: saved claimed then (its sender delivers it at once), or
    /// None for the storage read loop to deliver. Answers None (saved) or a `Duplicate`.
    #[staticmethod]
    #[pyo3(signature = (
        id, shard, entity_type, entity_id, tag, payload,
        primary_key = None, deliver_at_ms = None, claimed_ms = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn request(
        id: Int<i64>,
        shard: Text,
        entity_type: Text,
        entity_id: Text,
        tag: Text,
        payload: PyBackedBytes,
        primary_key: Option<Text>,
        deliver_at_ms: Option<Int<u64>>,
        claimed_ms: Option<Int<u64>>,
    ) -> Self {
        let key =
            primary_key.map(|key| messages::message_key(&entity_type, &entity_id, &tag, &key));
        Self::from(store::Op::Request {
            request: store::Request {
                id: id.0,
                shard: shard.to_owned(),
                entity_type: entity_type.to_owned(),
                entity_id: entity_id.to_owned(),
                tag: tag.to_owned(),
                payload: payload.to_vec(),
                key,
                deliver_at: deliver_at_ms.map(|at| at.0),
            },
            claimed_ms: claimed_ms.map(|at| at.0),
        })
    }

    /// Saves the final reply of request `request_id` (the first one wins): answers whether it
    /// was stored.
    /// With `shard`, written as that shard's owner: a runner of a cluster applies it only
    /// while it holds the shard's lease (else it answers `Fenced`).
    /// With `notify=False`, callers in other processes are not woken: its caller gets the
    /// reply otherwise (here, or over the runners' transport); others read it at their poll.
    #[staticmethod]
    #[pyo3(signature = (request_id, value, shard = None, notify = true))]
    fn reply(
        request_id: Int<i64>,
        value: PyBackedBytes,
        shard: Option<Text>,
        notify: bool,
    ) -> Self {
        owned(
            shard,
            store::Op::Reply {
                request_id: request_id.0,
                value: value.to_vec(),
                notify,
            },
        )
    }

    /// Stores the durable state of an entity instance: answers True.
    /// With `shard`, written as that shard's owner (see `reply`).
    #[staticmethod]
    #[pyo3(signature = (entity_type, entity_id, value, shard = None))]
    fn entity_state(
        entity_type: Text,
        entity_id: Text,
        value: PyBackedBytes,
        shard: Option<Text>,
    ) -> Self {
        owned(
            shard,
            store::Op::EntityState {
                entity_type: entity_type.to_owned(),
                entity_id: entity_id.to_owned(),
                value: value.to_vec(),
            },
        )
    }

    /// Forgets a request's final reply and claim, so it is delivered again: answers whether
    /// the request is stored.
    #[staticmethod]
    fn clear_replies(request_id: Int<i64>) -> Self {
        Self::from(store::Op::ClearReplies {
            request_id: request_id.0,
        })
    }

    /// Clears a request's claim, so the next storage read delivers it: answers whether it is
    /// stored and unprocessed.
    /// With `wake_shard`, a cluster's writer wakes that shard's owner to read it.
    #[staticmethod]
    #[pyo3(signature = (request_id, wake_shard = None))]
    fn unclaim(request_id: Int<i64>, wake_shard: Option<Text>) -> Self {
        Self::from(store::Op::Unclaim {
            request_id: request_id.0,
            shard: wake_shard.map(|s| s.to_owned()),
        })
    }

    /// Offers an item to durable queue `queue` unless one with its id is stored: answers
    /// whether it was stored. `token` is the deferred token its result completes (None: an
    /// item nobody waits on).
    #[staticmethod]
    #[pyo3(signature = (queue, id, payload, token = None))]
    fn offer(queue: Text, id: Text, payload: PyBackedBytes, token: Option<Text>) -> Self {
        Self::from(store::Op::Offer(store::QueueItem {
            queue: queue.to_owned(),
            id: id.to_owned(),
            payload: payload.to_vec(),
            token: token.map(|t| t.to_owned()),
        }))
    }

    /// Extends the claim made at `held_ms` on a queue item to `renewed_ms` (its handler runs
    /// on): answers whether the claim was still `held_ms` (not done, not taken again).
    #[staticmethod]
    fn queue_renew(queue: Text, id: Text, held_ms: Int<u64>, renewed_ms: Int<u64>) -> Self {
        Self::from(store::Op::QueueRenew {
            queue: queue.to_owned(),
            id: id.to_owned(),
            held_ms: held_ms.0,
            renewed_ms: renewed_ms.0,
        })
    }

    /// Marks a queue item done (never taken again): answers whether it was pending.
    #[staticmethod]
    fn queue_done(queue: Text, id: Text) -> Self {
        Self::from(store::Op::QueueDone {
            queue: queue.to_owned(),
            id: id.to_owned(),
        })
    }

    /// The op's kind: the name of its constructor.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.op.inner() {
            store::Op::Start { .. } => "start",
            store::Op::Append { .. } => "append",
            store::Op::Deferred { .. } => "deferred",
            store::Op::Status { .. } => "status",
            store::Op::Suspend { .. } => "suspend",
            store::Op::Interrupt { .. } => "interrupt",
            store::Op::Timer(_) => "timer",
            store::Op::Untimer { .. } => "untimer",
            store::Op::Request { .. } => "request",
            store::Op::Reply { .. } => "reply",
            store::Op::EntityState { .. } => "entity_state",
            store::Op::ClearReplies { .. } => "clear_replies",
            store::Op::Unclaim { .. } => "unclaim",
            store::Op::Claim { .. } => "claim",
            store::Op::ResetClaims { .. } => "reset_claims",
            store::Op::Offer(_) => "offer",
            store::Op::QueueClaim { .. } => "queue_claim",
            store::Op::QueueRenew { .. } => "queue_renew",
            store::Op::QueueDone { .. } => "queue_done",
            store::Op::Owned { .. } => "owned",
        }
    }

    /// The execution the op is about (None for an entity message op).
    #[getter]
    fn execution_id(&self) -> Option<&str> {
        match self.op.inner() {
            store::Op::Start { id, .. }
            | store::Op::Append { id, .. }
            | store::Op::Deferred { id, .. }
            | store::Op::Status { id, .. }
            | store::Op::Suspend { id, .. }
            | store::Op::Interrupt { id } => Some(id),
            store::Op::Timer(store::Timer { execution_id, .. })
            | store::Op::Untimer { execution_id, .. } => Some(execution_id),
            store::Op::Request { .. }
            | store::Op::Reply { .. }
            | store::Op::EntityState { .. }
            | store::Op::ClearReplies { .. }
            | store::Op::Unclaim { .. }
            | store::Op::Claim { .. }
            | store::Op::ResetClaims { .. }
            | store::Op::Offer(_)
            | store::Op::QueueClaim { .. }
            | store::Op::QueueRenew { .. }
            | store::Op::QueueDone { .. }
            | store::Op::Owned { .. } => None,
        }
    }

    fn __repr__(&self) -> String {
        match (self.op.inner(), self.execution_id()) {
            (_, Some(id)) => format!("<Op {} {id:?}>", self.kind()),
            (store::Op::Request { request, .. }, None) => format!("<Op request {}>", request.id),
            (
                store::Op::Reply { request_id, .. }
                | store::Op::ClearReplies { request_id }
                | store::Op::Unclaim { request_id, .. }
                | store::Op::Claim { request_id, .. },
                None,
            ) => format!("<Op {} {request_id}>", self.kind()),
            (
                store::Op::EntityState {
                    entity_type,
                    entity_id,
                    ..
                },
                None,
            ) => format!("<Op entity_state {entity_type:?} {entity_id:?}>"),
            (
                store::Op::Offer(store::QueueItem { queue, id, .. })
                | store::Op::QueueClaim { queue, id, .. }
                | store::Op::QueueRenew { queue, id, .. }
                | store::Op::QueueDone { queue, id },
                None,
            ) => format!("<Op {} {queue:?} {id:?}>", self.kind()),
            (_, None) => format!("<Op {}>", self.kind()),
        }
    }
}

/// A durable queue item handed to a worker by `Store.take`.
#[pyclass(module = "plait._native", name = "QueueItem", frozen, eq)]
#[derive(PartialEq)]
pub struct PyQueueItem(store::Taken);

#[pymethods]
impl PyQueueItem {
    /// The queue's name.
    #[getter]
    fn queue(&self) -> &str {
        &self.0.item.queue
    }

    /// The item's id within its queue.
    #[getter]
    fn id(&self) -> &str {
        &self.0.item.id
    }

    /// The encoded payload.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.item.payload)
    }

    /// The token of the deferred its result completes, or None (nobody waits on it).
    #[getter]
    fn token(&self) -> Option<&str> {
        self.0.item.token.as_deref()
    }

    /// How many times it has been taken, this take included (1 the first time).
    #[getter]
    fn attempt(&self) -> u32 {
        self.0.attempt
    }

    fn __repr__(&self) -> String {
        format!(
            "<QueueItem {:?} {:?} attempt={}>",
            self.0.item.queue, self.0.item.id, self.0.attempt
        )
    }
}

fn taken(found: Vec<store::Taken>) -> Vec<PyQueueItem> {
    found.into_iter().map(PyQueueItem).collect()
}

/// An execution as the store holds it.
#[pyclass(module = "plait._native", name = "Execution", frozen, eq)]
#[derive(PartialEq)]
pub struct PyExecution(pub(super) store::Execution);

impl From<store::Execution> for PyExecution {
    fn from(execution: store::Execution) -> Self {
        Self(execution)
    }
}

#[pymethods]
impl PyExecution {
    /// The workflow's name.
    #[getter]
    fn workflow(&self) -> &str {
        &self.0.workflow
    }

    /// The encoded payload.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.payload)
    }

    /// The execution that started this one from inside its run, if any.
    #[getter]
    fn parent(&self) -> Option<&str> {
        self.0.parent.as_deref()
    }

    /// `running`, `suspended` or `complete`.
    #[getter]
    fn status(&self) -> &'static str {
        self.0.status.as_str()
    }

    /// The encoded result: the exit when complete, the cause (if any) when suspended.
    #[getter]
    fn result<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.0.result.as_deref().map(|r| PyBytes::new(py, r))
    }

    /// Whether an interrupt was requested.
    #[getter]
    fn interrupted(&self) -> bool {
        self.0.interrupted
    }

    fn __repr__(&self) -> String {
        format!(
            "<Execution workflow={:?} status={} parent={:?} interrupted={}>",
            self.0.workflow,
            self.0.status.as_str(),
            self.0.parent,
            self.0.interrupted
        )
    }
}

/// A step result of an execution's journal.
#[pyclass(module = "plait._native", name = "Entry", frozen, eq)]
#[derive(PartialEq)]
pub struct PyEntry(store::Entry);

#[pymethods]
impl PyEntry {
    /// The step's key (name, attempt and repeat number).
    #[getter]
    fn key(&self) -> &str {
        &self.0.key
    }

    /// The step's position in call order.
    #[getter]
    fn seq(&self) -> u32 {
        self.0.seq
    }

    /// The encoded exit.
    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.value)
    }

    fn __repr__(&self) -> String {
        format!("<Entry key={:?} seq={}>", self.0.key, self.0.seq)
    }
}

/// A deferred's stored result.
#[pyclass(module = "plait._native", name = "Deferred", frozen, eq)]
#[derive(PartialEq)]
pub struct PyDeferred(store::Deferred);

#[pymethods]
impl PyDeferred {
    /// The deferred's name.
    #[getter]
    fn name(&self) -> &str {
        &self.0.name
    }

    /// The encoded exit.
    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.value)
    }

    fn __repr__(&self) -> String {
        format!("<Deferred name={:?}>", self.0.name)
    }
}

/// An execution with its journal and deferred results, read at once.
#[pyclass(module = "plait._native", name = "Snapshot", frozen, eq)]
#[derive(PartialEq)]
pub struct PySnapshot(pub(super) store::Snapshot);

#[pymethods]
impl PySnapshot {
    /// The execution itself.
    #[getter]
    fn execution(&self) -> PyExecution {
        PyExecution(self.0.execution.clone())
    }

    /// Its step results, in write order.
    #[getter]
    fn entries(&self) -> Vec<PyEntry> {
        self.0.entries.iter().cloned().map(PyEntry).collect()
    }

    /// Its completed deferreds, in the order they completed.
    #[getter]
    fn deferreds(&self) -> Vec<PyDeferred> {
        self.0.deferreds.iter().cloned().map(PyDeferred).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "<Snapshot workflow={:?} status={} entries={} deferreds={}>",
            self.0.execution.workflow,
            self.0.execution.status.as_str(),
            self.0.entries.len(),
            self.0.deferreds.len()
        )
    }
}

/// A durable timer.
#[pyclass(module = "plait._native", name = "Timer", frozen, eq)]
#[derive(PartialEq)]
pub struct PyTimer(store::Timer);

impl From<store::Timer> for PyTimer {
    fn from(timer: store::Timer) -> Self {
        Self(timer)
    }
}

#[pymethods]
impl PyTimer {
    /// The execution to wake.
    #[getter]
    fn execution_id(&self) -> &str {
        &self.0.execution_id
    }

    /// The deferred it completes.
    #[getter]
    fn name(&self) -> &str {
        &self.0.name
    }

    /// When, in ms since the Unix epoch.
    #[getter]
    fn due_ms(&self) -> u64 {
        self.0.due_ms
    }

    fn __repr__(&self) -> String {
        format!(
            "<Timer execution_id={:?} name={:?} due_ms={}>",
            self.0.execution_id, self.0.name, self.0.due_ms
        )
    }
}

/// What an op owned by a shard answers when this runner no longer holds the shard's lease:
/// it was not applied (the new owner does its work).
#[pyclass(module = "plait._native", name = "Fenced", frozen)]
pub struct PyFenced;

/// What saving a request answers when one with the same id or key is stored.
#[pyclass(module = "plait._native", name = "Duplicate", frozen, eq)]
#[derive(PartialEq)]
pub struct PyDuplicate {
    original: i64,
    reply: Option<Vec<u8>>,
}

#[pymethods]
impl PyDuplicate {
    /// The stored request's id.
    #[getter]
    fn original(&self) -> i64 {
        self.original
    }

    /// Its final reply (an encoded exit), if saved.
    #[getter]
    fn reply<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.reply.as_deref().map(|r| PyBytes::new(py, r))
    }

    fn __repr__(&self) -> String {
        format!(
            "Duplicate(original={}, replied={})",
            self.original,
            self.reply.is_some()
        )
    }
}

/// `op`, owned by `shard` if one is named.
fn owned(shard: Option<Text>, op: store::Op) -> PyOp {
    PyOp::from(match shard {
        Some(shard) => store::Op::Owned {
            shard: shard.to_owned(),
            op: Box::new(op),
        },
        None => op,
    })
}

/// One result per op: `None` (created, or unknown execution), the existing `Execution` (a
/// start that found it), a bool, or, in the place of an op the store refused, its
/// `InvalidArgumentError` (not raised: the other ops were applied).
struct Written(Vec<store::OpResult>);

/// One op's result, as [`Written`] gives it.
struct Answered(store::OpResult);

impl<'py> IntoPyObject<'py> for Answered {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        match self.0 {
            store::OpResult::Created | store::OpResult::UnknownExecution => {
                Ok(py.None().into_bound(py))
            }
            store::OpResult::Existing(execution) => {
                Ok(Bound::new(py, PyExecution(execution))?.into_any())
            }
            store::OpResult::Done(done) => Ok(PyBool::new(py, done).to_owned().into_any()),
            store::OpResult::Duplicate { original, reply } => {
                Ok(Bound::new(py, PyDuplicate { original, reply })?.into_any())
            }
            store::OpResult::Refused(why) => Ok(InvalidArgumentError::new_err(why)
                .into_value(py)
                .into_bound(py)
                .into_any()),
            store::OpResult::Fenced => Ok(Bound::new(py, PyFenced)?.into_any()),
        }
    }
}

impl<'py> IntoPyObject<'py> for Written {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        PyList::new(py, self.0.into_iter().map(Answered))
    }
}

/// Stored values, one per item asked for: each `bytes` or None in Python.
struct LazyBytes(Vec<Option<Vec<u8>>>);

impl<'py> IntoPyObject<'py> for LazyBytes {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        PyList::new(
            py,
            self.0
                .into_iter()
                .map(|value| value.map(|v| PyBytes::new(py, &v))),
        )
    }
}

fn bytes_list(found: Vec<Option<Vec<u8>>>) -> LazyBytes {
    LazyBytes(found)
}

fn owned_addresses(addresses: Vec<(Text, Text)>) -> Vec<(String, String)> {
    addresses
        .into_iter()
        .map(|(t, i)| (t.to_owned(), i.to_owned()))
        .collect()
}

fn snapshots(found: Vec<Option<store::Snapshot>>) -> Vec<Option<PySnapshot>> {
    found.into_iter().map(|s| s.map(PySnapshot)).collect()
}

fn executions(found: Vec<Option<store::Execution>>) -> Vec<Option<PyExecution>> {
    found.into_iter().map(|e| e.map(PyExecution)).collect()
}

fn timers((timers, next): (Vec<store::Timer>, Option<u64>)) -> (Vec<PyTimer>, Option<u64>) {
    (timers.into_iter().map(PyTimer).collect(), next)
}

/// Reads a batch of ops: an iterable of `Op`.
fn extract_ops(ops: &Bound<'_, PyAny>) -> PyResult<Vec<store::Op>> {
    if ops.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "ops must be an iterable of Op, not a single str",
        ));
    }
    let py = ops.py();
    let mut batch = Vec::with_capacity(capacity_hint(ops));
    let op = |index: usize, item: &Bound<'_, PyAny>| -> PyResult<store::Op> {
        let op = item.cast::<PyOp>().map_err(|_| {
            let found = item
                .get_type()
                .name()
                .map_or_else(|_| "?".to_owned(), |name| name.to_string());
            at_item(
                py,
                PyTypeError::new_err(format!("expected an Op, got {found}")),
                "ops",
                index,
            )
        })?;
        Ok(op.get().op.clone())
    };
    // The journal hands over a tuple or a list: read without the iterator protocol.
    if let Ok(tuple) = ops.cast::<PyTuple>() {
        for (index, item) in tuple.iter().enumerate() {
            batch.push(op(index, &item)?);
        }
    } else if let Ok(list) = ops.cast::<PyList>() {
        for (index, item) in list.iter().enumerate() {
            batch.push(op(index, &item)?);
        }
    } else {
        for (index, item) in ops.try_iter()?.enumerate() {
            batch.push(op(index, &item?)?);
        }
    }
    Ok(batch)
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

/// Executions, their journals, deferred results and timers: in this process
/// (`Store.memory()`), or in SQLite or PostgreSQL (`Store.open(bridge, url)`).
#[pyclass(module = "plait._native", name = "Store", frozen)]
pub struct PyStore {
    store: Arc<dyn store::Store>,
    /// The SQL store itself, for what only it has (a cluster's runner storage).
    pub(super) sql: Option<Arc<sql::SqlStore>>,
    /// For a SQL store: its URL (password masked) and table prefix.
    place: Option<(String, String)>,
    /// For a SQL store: the process generation it was opened in. Its tasks run on that
    /// process's runtime, which a forked child does not have.
    born: Option<u64>,
}

impl Drop for PyStore {
    fn drop(&mut self) {
        let Some(born) = self.born else { return };
        if runtime::check_not_forked(born, "Store").is_err() {
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

impl PyStore {
    /// The store itself, for another native object that works on it (the work source).
    pub(super) fn shared(&self) -> PyResult<Arc<dyn store::Store>> {
        self.store()
    }

    fn store(&self) -> PyResult<Arc<dyn store::Store>> {
        if let Some(born) = self.born {
            runtime::check_not_forked(born, "Store")?;
        }
        Ok(Arc::clone(&self.store))
    }

    /// The store, for a synchronous call: only an immediate store answers one.
    fn immediate_store(&self, call: &str) -> PyResult<&dyn store::Store> {
        if self.store.immediate() {
            return Ok(&*self.store);
        }
        Err(StoreError::new_err(format!(
            "the store at {} answers later: await {call}(bridge, ...) instead of {call}_now",
            self.url().unwrap_or("?")
        )))
    }

    fn url(&self) -> Option<&str> {
        self.place.as_ref().map(|(url, _)| url.as_str())
    }
}

/// The answer of an immediate store.
fn now<T>(answer: Answer<'_, T>) -> PyResult<T> {
    match answer.now_or_never() {
        Some(result) => Ok(result?),
        None => Err(StoreError::new_err(
            "an immediate store did not answer at once",
        )),
    }
}

#[pymethods]
impl PyStore {
    /// A store in this process: nothing survives it. It answers every call at once.
    #[staticmethod]
    fn memory() -> Self {
        Self {
            store: Arc::new(MemoryStore::default()),
            sql: None,
            place: None,
            born: None,
        }
    }

    /// Opens (creating, migrating and locking) the store at `url`; resolves to a `Store`.
    #[staticmethod]
    /// With `cluster`, opened for a runner of a cluster (PostgreSQL: no engine lease).
    #[pyo3(signature = (bridge, url, prefix = "plait_", durability = "full", lease_ttl_ms = None, cluster = false))]
    fn open(
        bridge: &AsyncBridge,
        url: Text,
        prefix: &str,
        durability: &str,
        lease_ttl_ms: Option<Int<u64>>,
        cluster: bool,
    ) -> PyResult<u64> {
        let mut config = sql::Config::new(&url, prefix, durability)?;
        if cluster {
            config = config.for_cluster();
        }
        if let Some(Int(ttl_ms)) = lease_ttl_ms {
            config =
                config.with_lease_times(sql::LeaseTimes::for_ttl(Duration::from_millis(ttl_ms)))?;
        }
        bridge.spawn(async move {
            let store = sql::SqlStore::open(&config).await?;
            let place = (store.url().to_owned(), store.prefix().to_owned());
            let store = Arc::new(store);
            Ok(PyStore {
                sql: Some(Arc::clone(&store)),
                store,
                place: Some(place),
                born: Some(runtime::generation()),
            })
        })
    }

    /// Whether the store answers every call at once (the memory store).
    #[getter]
    fn immediate(&self) -> bool {
        self.store.immediate()
    }

    /// Queues `ops` now; resolves to one result per op once they are durable.
    fn write(&self, bridge: &AsyncBridge, ops: &Bound<'_, PyAny>) -> PyResult<u64> {
        let store = self.store()?;
        let written = store.write(extract_ops(ops)?)?;
        bridge.spawn(async move { Ok(Written(written.await?)) })
    }

    /// Applies `ops` at once and returns one result per op: an immediate store only.
    fn write_now(&self, ops: &Bound<'_, PyAny>) -> PyResult<Written> {
        let store = self.immediate_store("write")?;
        match store.write_now(extract_ops(ops)?) {
            Some(results) => Ok(Written(results)),
            None => Err(StoreError::new_err(
                "an immediate store did not answer at once",
            )),
        }
    }

    /// Resolves to one snapshot or None per id, in order.
    fn snapshots(&self, bridge: &AsyncBridge, ids: &Bound<'_, PyAny>) -> PyResult<u64> {
        let store = self.store()?;
        let ids = extract_ids(ids)?;
        bridge.spawn(async move { Ok(snapshots(store.snapshots(&ids).await?)) })
    }

    /// One snapshot or None per id, in order, at once: an immediate store only.
    fn snapshots_now(&self, ids: &Bound<'_, PyAny>) -> PyResult<Vec<Option<PySnapshot>>> {
        let store = self.immediate_store("snapshots")?;
        let ids = extract_ids(ids)?;
        Ok(snapshots(now(store.snapshots(&ids))?))
    }

    /// Resolves to one execution record or None per id, in order.
    fn executions(&self, bridge: &AsyncBridge, ids: &Bound<'_, PyAny>) -> PyResult<u64> {
        let store = self.store()?;
        let ids = extract_ids(ids)?;
        bridge.spawn(async move { Ok(executions(store.executions(&ids).await?)) })
    }

    /// One execution record or None per id, in order, at once: an immediate store only.
    fn executions_now(&self, ids: &Bound<'_, PyAny>) -> PyResult<Vec<Option<PyExecution>>> {
        let store = self.immediate_store("executions")?;
        let ids = extract_ids(ids)?;
        Ok(executions(now(store.executions(&ids))?))
    }

    /// Resolves to `([Timer], next_due)`: the timers due in `(after_ms, until_ms]`.
    fn timers_between(
        &self,
        bridge: &AsyncBridge,
        after_ms: Int<i64>,
        until_ms: Int<i64>,
    ) -> PyResult<u64> {
        let store = self.store()?;
        let (Int(after_ms), Int(until_ms)) = (after_ms, until_ms);
        bridge.spawn(async move { Ok(timers(store.timers_between(after_ms, until_ms).await?)) })
    }

    /// `([Timer], next_due)` at once: an immediate store only.
    fn timers_between_now(
        &self,
        after_ms: Int<i64>,
        until_ms: Int<i64>,
    ) -> PyResult<(Vec<PyTimer>, Option<u64>)> {
        let store = self.immediate_store("timers_between")?;
        Ok(timers(now(store.timers_between(after_ms.0, until_ms.0))?))
    }

    /// Resolves to the ids of the executions with `status`.
    fn with_status(&self, bridge: &AsyncBridge, status: &str) -> PyResult<u64> {
        let store = self.store()?;
        let status = Status::parse(status)?;
        bridge.spawn(async move { Ok(store.with_status(status).await?) })
    }

    /// The ids of the executions with `status`, at once: an immediate store only.
    fn with_status_now(&self, status: &str) -> PyResult<Vec<String>> {
        let store = self.immediate_store("with_status")?;
        now(store.with_status(Status::parse(status)?))
    }

    /// Resolves to a `Page` of the executions passing `filter`, newest first, from just after
    /// `after` (a `(created_ms, no)` position, such as a page's `next`); `limit` 1 to 1,000.
    #[pyo3(
        signature = (bridge, filter, after = None, limit = Int(50)),
        text_signature = "(self, /, bridge, filter, after=None, limit=50)"
    )]
    fn list_executions(
        &self,
        bridge: &AsyncBridge,
        filter: PyRef<'_, PyFilter>,
        after: Option<(Int<u64>, Int<u64>)>,
        limit: Int<usize>,
    ) -> PyResult<u64> {
        let store = self.store()?;
        let (after, limit) = (listing::cursor(after), listing::limit(limit)?);
        let filter = filter.0.clone();
        bridge.spawn(async move { Ok(PyPage::from(store.list(&filter, after, limit).await?)) })
    }

    /// `list_executions` at once: an immediate store only.
    #[pyo3(
        signature = (filter, after = None, limit = Int(50)),
        text_signature = "(self, /, filter, after=None, limit=50)"
    )]
    fn list_executions_now(
        &self,
        filter: PyRef<'_, PyFilter>,
        after: Option<(Int<u64>, Int<u64>)>,
        limit: Int<usize>,
    ) -> PyResult<PyPage> {
        let store = self.immediate_store("list_executions")?;
        let (after, limit) = (listing::cursor(after), listing::limit(limit)?);
        Ok(PyPage::from(now(store.list(&filter.0, after, limit))?))
    }

    /// Resolves to how many executions pass `filter`, counted up to `cap`.
    fn count_executions(
        &self,
        bridge: &AsyncBridge,
        filter: PyRef<'_, PyFilter>,
        cap: Int<u64>,
    ) -> PyResult<u64> {
        let store = self.store()?;
        let filter = filter.0.clone();
        bridge.spawn(async move { Ok(store.count(&filter, cap.0).await?) })
    }

    /// `count_executions` at once: an immediate store only.
    fn count_executions_now(&self, filter: PyRef<'_, PyFilter>, cap: Int<u64>) -> PyResult<u64> {
        let store = self.immediate_store("count_executions")?;
        now(store.count(&filter.0, cap.0))
    }

    /// Resolves to the `History` of execution `id`, or None if the store does not hold it.
    fn history(&self, bridge: &AsyncBridge, id: Text) -> PyResult<u64> {
        let store = self.store()?;
        let id = id.to_owned();
        bridge.spawn(async move { Ok(store.history(&id).await?.map(PyHistory::from)) })
    }

    /// `history` at once: an immediate store only.
    fn history_now(&self, id: Text) -> PyResult<Option<PyHistory>> {
        let store = self.immediate_store("history")?;
        Ok(now(store.history(&id))?.map(PyHistory::from))
    }

    /// Resolves to the final replies (encoded exits) of requests `ids`: one per id, None for
    /// a request without one.
    fn replies(&self, bridge: &AsyncBridge, ids: Vec<Int<i64>>) -> PyResult<u64> {
        let store = self.store()?;
        let ids: Vec<i64> = ids.into_iter().map(|id| id.0).collect();
        bridge.spawn(async move { Ok(bytes_list(store.replies(&ids).await?)) })
    }

    /// The final replies of requests `ids` at once: an immediate store only.
    fn replies_now(&self, ids: Vec<Int<i64>>) -> PyResult<LazyBytes> {
        let store = self.immediate_store("replies")?;
        let ids: Vec<i64> = ids.into_iter().map(|id| id.0).collect();
        Ok(bytes_list(now(store.replies(&ids))?))
    }

    /// Resolves to the durable states of the entity instances `(entity type, entity id)`: one
    /// per address, None for one without stored state.
    fn entity_states(&self, bridge: &AsyncBridge, addresses: Vec<(Text, Text)>) -> PyResult<u64> {
        let store = self.store()?;
        let addresses = owned_addresses(addresses);
        bridge.spawn(async move { Ok(bytes_list(store.entity_states(&addresses).await?)) })
    }

    /// The durable states of the entity instances at once: an immediate store only.
    fn entity_states_now(&self, addresses: Vec<(Text, Text)>) -> PyResult<LazyBytes> {
        let store = self.immediate_store("entity_states")?;
        let addresses = owned_addresses(addresses);
        Ok(bytes_list(now(store.entity_states(&addresses))?))
    }

    /// Resolves to up to `limit` pending items of `queue` (`QueueItem`s, in offer order)
    /// whose claim is void at `now_ms` (never claimed, or claimed at least `claim_ms` before),
    /// each claimed at `now_ms`.
    fn take(
        &self,
        bridge: &AsyncBridge,
        queue: Text,
        limit: Int<usize>,
        now_ms: Int<u64>,
        claim_ms: Int<u64>,
    ) -> PyResult<u64> {
        let store = self.store()?;
        let queue = queue.to_owned();
        bridge.spawn(async move {
            Ok(taken(
                store.take(&queue, limit.0, now_ms.0, claim_ms.0).await?,
            ))
        })
    }

    /// `take` at once: an immediate store only.
    fn take_now(
        &self,
        queue: Text,
        limit: Int<usize>,
        now_ms: Int<u64>,
        claim_ms: Int<u64>,
    ) -> PyResult<Vec<PyQueueItem>> {
        let store = self.immediate_store("take")?;
        Ok(taken(now(
            store.take(&queue, limit.0, now_ms.0, claim_ms.0)
        )?))
    }

    /// Resolves to why the store lost its lease (another engine took the database over), or to
    /// None once the store closes; at once to None for a store without a lease.
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

    /// A SQL store's URL, with any password replaced by `***`; None for the memory store.
    #[getter(url)]
    fn get_url(&self) -> Option<&str> {
        self.url()
    }

    fn __repr__(&self) -> String {
        match &self.place {
            Some((url, prefix)) => format!("<Store {url} prefix={prefix:?}>"),
            None => "<Store memory>".to_owned(),
        }
    }
}
