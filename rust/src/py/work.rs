//! The work source for Python: wait for work through a bridge, take it in batches.

use std::sync::{atomic::AtomicU64, Arc};

use pyo3::{prelude::*, pybacked::PyBackedBytes, types::PyBytes};

use super::{
    bridge::AsyncBridge,
    errors::{at_item, capacity_hint, not_a_single_str, Int, InvalidArgumentError, Text},
    store::{PyExecution, PySnapshot, PyStore},
};
use crate::{
    cluster::mailbox::{self, Address, EntityOptions},
    runtime, work,
};

/// An execution to run again, from its snapshot.
#[pyclass(module = "plait._native", name = "Resume", frozen)]
pub struct PyResume {
    execution_id: String,
    snapshot: Py<PySnapshot>,
    fired: Option<String>,
    recovered: bool,
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

    /// Found running by a listing (recovery, a shard acquired, the periodic look) rather than
    /// woken by an event: a run of it live here goes on as it is.
    #[getter]
    fn recovered(&self) -> bool {
        self.recovered
    }

    fn __repr__(&self) -> String {
        format!(
            "<Resume {} fired={:?}>",
            self.execution_id,
            self.fired.as_deref()
        )
    }
}

/// A run of an execution awaited from another runner ended: its record.
#[pyclass(module = "plait._native", name = "Ended", frozen)]
pub struct PyEnded {
    execution_id: String,
    execution: Py<PyExecution>,
}

#[pymethods]
impl PyEnded {
    /// The execution.
    #[getter]
    fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// Its record, read after the run ended (complete, or suspended if that was awaited).
    #[getter]
    fn execution(&self, py: Python<'_>) -> Py<PyExecution> {
        self.execution.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!("<Ended {}>", self.execution_id)
    }
}

/// An entity request that may run now: its instance has a free slot.
#[pyclass(module = "plait._native", name = "Deliver", frozen)]
pub struct PyDeliver {
    delivery: mailbox::Delivery,
}

/// What the instances of shards moving away still held (`WorkSource.drained`).
#[pyclass(module = "plait._native", name = "Drained", frozen, get_all)]
pub struct PyDrained {
    /// The ids of the requests they were running (the host has them).
    running: Vec<i64>,
    /// The requests they held that never ran: their callers wait for the new owner.
    queued: Vec<Py<PyDeliver>>,
}

#[pymethods]
impl PyDeliver {
    /// The request's id.
    #[getter]
    fn request_id(&self) -> i64 {
        self.delivery.message.request_id
    }

    /// The entity type.
    #[getter]
    fn entity_type(&self) -> &str {
        &self.delivery.message.address.entity_type
    }

    /// The entity id.
    #[getter]
    fn entity_id(&self) -> &str {
        &self.delivery.message.address.entity_id
    }

    /// The RPC's name.
    #[getter]
    fn tag(&self) -> &str {
        &self.delivery.message.tag
    }

    /// The encoded payload.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.delivery.message.payload)
    }

    /// Whether the request is stored (its reply must be too).
    #[getter]
    fn persisted(&self) -> bool {
        self.delivery.message.persisted
    }

    /// Whether another process sent it over the runners' transport (its reply goes back).
    #[getter]
    fn forwarded(&self) -> bool {
        self.delivery.message.forwarded
    }

    /// Whether the instance became resident with this request (make it first).
    #[getter]
    fn activates(&self) -> bool {
        self.delivery.activates
    }

    fn __repr__(&self) -> String {
        let message = &self.delivery.message;
        format!(
            "<Deliver {} to {}/{} {}>",
            message.request_id, message.address.entity_type, message.address.entity_id, message.tag
        )
    }
}

/// An entity instance that was idle long enough: the host drops it.
#[pyclass(module = "plait._native", name = "Passivate", frozen)]
pub struct PyPassivate {
    address: Address,
}

#[pymethods]
impl PyPassivate {
    /// The entity type.
    #[getter]
    fn entity_type(&self) -> &str {
        &self.address.entity_type
    }

    /// The entity id.
    #[getter]
    fn entity_id(&self) -> &str {
        &self.address.entity_id
    }

    fn __repr__(&self) -> String {
        format!(
            "<Passivate {}/{}>",
            self.address.entity_type, self.address.entity_id
        )
    }
}

/// The final reply of a request sent to an entity on another runner, read from storage.
#[pyclass(module = "plait._native", name = "RemoteReply", frozen)]
pub struct PyRemoteReply {
    request_id: i64,
    value: Vec<u8>,
}

#[pymethods]
impl PyRemoteReply {
    /// The request.
    #[getter]
    fn request_id(&self) -> i64 {
        self.request_id
    }

    /// The encoded exit.
    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.value)
    }

    fn __repr__(&self) -> String {
        format!("<RemoteReply {}>", self.request_id)
    }
}

/// The caller of a request another process sent here gave up: drop it, or stop its handler.
#[pyclass(module = "plait._native", name = "Interrupt", frozen)]
pub struct PyInterrupt {
    request_id: i64,
    address: Address,
}

#[pymethods]
impl PyInterrupt {
    /// The request.
    #[getter]
    fn request_id(&self) -> i64 {
        self.request_id
    }

    /// Its entity type.
    #[getter]
    fn entity_type(&self) -> &str {
        &self.address.entity_type
    }

    /// Its entity id.
    #[getter]
    fn entity_id(&self) -> &str {
        &self.address.entity_id
    }

    fn __repr__(&self) -> String {
        format!("<Interrupt {}>", self.request_id)
    }
}

/// A request sent to another runner was taken there (`refusal` None: one sent with
/// `discard`), or refused for good.
#[pyclass(module = "plait._native", name = "Routed", frozen, get_all)]
pub struct PyRouted {
    /// The request.
    request_id: i64,
    /// Why it was refused, if it was.
    refusal: Option<PyRefusal>,
}

#[pymethods]
impl PyRouted {
    fn __repr__(&self) -> String {
        format!("<Routed {}>", self.request_id)
    }
}

/// Shards this runner stops serving: finish (or, forced, stop at once) their entities, then
/// report them with `WorkSource.drained` and `Sharding.drained`.
#[pyclass(module = "plait._native", name = "Release", frozen)]
pub struct PyRelease {
    shards: Vec<String>,
    forced: bool,
}

#[pymethods]
impl PyRelease {
    /// The shards, `"group:id"`.
    #[getter]
    fn shards(&self) -> Vec<String> {
        self.shards.clone()
    }

    /// Whether the lease is lost already (nothing of these shards may be written).
    #[getter]
    fn forced(&self) -> bool {
        self.forced
    }

    fn __repr__(&self) -> String {
        format!(
            "<Release {} shards forced={}>",
            self.shards.len(),
            self.forced
        )
    }
}

/// Why a mailbox did not take a request.
#[derive(Clone)]
#[pyclass(module = "plait._native", name = "Refusal", frozen)]
pub struct PyRefusal {
    refusal: mailbox::Refusal,
}

#[pymethods]
impl PyRefusal {
    /// `"NotRegistered"`, `"MailboxFull"`, `"AlreadyProcessing"` or `"NotAssigned"`.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.refusal {
            mailbox::Refusal::NotRegistered(_) => "NotRegistered",
            mailbox::Refusal::MailboxFull { .. } => "MailboxFull",
            mailbox::Refusal::AlreadyProcessing { .. } => "AlreadyProcessing",
            mailbox::Refusal::NotAssigned { .. } => "NotAssigned",
            mailbox::Refusal::TooLarge { .. } => "TooLarge",
            mailbox::Refusal::Unavailable {
                runner: Some(_), ..
            } => "RunnerUnavailable",
            mailbox::Refusal::Unavailable { runner: None, .. } => "NoRunner",
        }
    }

    /// What happened, in words.
    #[getter]
    fn message(&self) -> String {
        self.refusal.to_string()
    }

    fn __repr__(&self) -> String {
        format!("<Refusal {}: {}>", self.kind(), self.refusal)
    }
}

/// An entity request offered to the mailboxes: any object with these attributes.
#[derive(FromPyObject)]
pub(super) struct Outgoing {
    request_id: i64,
    entity_type: Text,
    entity_id: Text,
    tag: Text,
    payload: PyBackedBytes,
    persisted: bool,
    forwarded: bool,
    saved_ms: Option<u64>,
}

impl Outgoing {
    pub(super) fn message(self) -> mailbox::Message {
        mailbox::Message {
            request_id: self.request_id,
            address: Address {
                entity_type: self.entity_type.to_owned(),
                entity_id: self.entity_id.to_owned(),
            },
            tag: self.tag.to_owned(),
            payload: self.payload.to_vec(),
            persisted: self.persisted,
            forwarded: self.forwarded,
            saved_ms: self.saved_ms,
        }
    }
}

fn deliveries(ready: Vec<mailbox::Delivery>) -> Vec<PyDeliver> {
    ready
        .into_iter()
        .map(|delivery| PyDeliver { delivery })
        .collect()
}

fn address(entity_type: Text, entity_id: Text) -> Address {
    Address {
        entity_type: entity_type.to_owned(),
        entity_id: entity_id.to_owned(),
    }
}

/// What one engine owns and what runs next: recovery, durable timers, snapshots to resume.
#[pyclass(module = "plait._native", name = "WorkSource", frozen)]
pub struct PyWorkSource {
    pub(super) source: Arc<work::WorkSource>,
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
    ///
    /// With `shards_per_group`, the source of a runner of a cluster: it serves the entities and
    /// the executions of the shards a `Sharding` started on it acquires (listing a shard's
    /// running executions when acquired and every `scan_ms`); replies and execution ends
    /// awaited from other runners are read every `reply_poll_ms` besides when notified.
    #[new]
    #[pyo3(
        signature = (
            store, manual_now_ms = None, shards_per_group = None, reply_poll_ms = Int(200),
            scan_ms = Int(10_000)
        ),
        text_signature = "(store, manual_now_ms=None, shards_per_group=None, reply_poll_ms=200, \
                          scan_ms=10000)"
    )]
    fn new(
        store: &PyStore,
        manual_now_ms: Option<Int<u64>>,
        shards_per_group: Option<Int<u32>>,
        reply_poll_ms: Int<u64>,
        scan_ms: Int<u64>,
    ) -> PyResult<Self> {
        let store = store.shared()?;
        let clock = match manual_now_ms {
            Some(Int(now)) => work::Clock::Manual(AtomicU64::new(now)),
            None => work::Clock::Wall,
        };
        let born = runtime::generation();
        let _runtime = runtime::runtime().enter();
        let source = match shards_per_group {
            Some(Int(count)) => {
                let count = std::num::NonZeroU32::new(count).ok_or_else(|| {
                    InvalidArgumentError::new_err("shards_per_group must be at least 1")
                })?;
                work::WorkSource::start_runner(store, clock, count, reply_poll_ms.0, scan_ms.0)
            }
            None => work::WorkSource::start(store, clock),
        };
        Ok(Self {
            source: Arc::new(source),
            born,
        })
    }

    /// Resolves to None once work is ready to take; raises `ClosedError` once closed.
    fn wait(&self, bridge: &AsyncBridge) -> PyResult<u64> {
        let source = self.source()?;
        bridge.spawn(async move { Ok(source.wait().await?) })
    }

    /// The count of changes `due_changed` reports: read it before `next_due`, then wait from
    /// it.
    fn due_version(&self) -> PyResult<u64> {
        Ok(self.source()?.due_version())
    }

    /// Resolves to None when `next_due` may have changed by the source's own doing since
    /// `since` (a `due_version`; at once if it has already); a host moving a manual clock
    /// waits on it. Raises `ClosedError` once closed.
    fn due_changed(&self, bridge: &AsyncBridge, since: u64) -> PyResult<u64> {
        let source = self.source()?;
        bridge.spawn(async move { Ok(source.due_changed(since).await?) })
    }

    /// Resolves to None once the source has listed the executions found running and read its
    /// first window of timers; raises `ClosedError` once closed.
    fn started(&self, bridge: &AsyncBridge) -> PyResult<u64> {
        let source = self.source()?;
        bridge.spawn(async move { Ok(source.started().await?) })
    }

    /// Takes up to `max` units of ready work: entity requests (`Deliver`), idle instances
    /// (`Passivate`), then executions to resume (`Resume`).
    fn take(&self, py: Python<'_>, max: Int<usize>) -> PyResult<Vec<Py<PyAny>>> {
        self.source()?
            .take(max.0)
            .into_iter()
            .map(|work| {
                Ok(match work {
                    work::Work::Resume(resume) => Py::new(
                        py,
                        PyResume {
                            execution_id: resume.execution_id,
                            snapshot: Py::new(py, PySnapshot(resume.snapshot))?,
                            fired: resume.fired,
                            recovered: resume.recovered,
                        },
                    )?
                    .into_any(),
                    work::Work::Ended {
                        execution_id,
                        execution,
                    } => Py::new(
                        py,
                        PyEnded {
                            execution_id,
                            execution: Py::new(py, PyExecution(execution))?,
                        },
                    )?
                    .into_any(),
                    work::Work::Deliver(delivery) => {
                        Py::new(py, PyDeliver { delivery })?.into_any()
                    }
                    work::Work::Passivate(address) => {
                        Py::new(py, PyPassivate { address })?.into_any()
                    }
                    work::Work::Reply { request_id, value } => {
                        Py::new(py, PyRemoteReply { request_id, value })?.into_any()
                    }
                    work::Work::Release { shards, forced } => {
                        Py::new(py, PyRelease { shards, forced })?.into_any()
                    }
                    work::Work::Interrupt {
                        request_id,
                        address,
                    } => Py::new(
                        py,
                        PyInterrupt {
                            request_id,
                            address,
                        },
                    )?
                    .into_any(),
                    work::Work::Routed {
                        request_id,
                        refusal,
                    } => Py::new(
                        py,
                        PyRouted {
                            request_id,
                            refusal: refusal.map(|refusal| PyRefusal { refusal }),
                        },
                    )?
                    .into_any(),
                })
            })
            .collect()
    }

    /// Registers an entity type: its instances run `concurrency` requests at once, hold at most
    /// `mailbox_capacity` (None: unbounded) and are passivated after `max_idle_ms` idle (None:
    /// never).
    #[pyo3(signature = (entity_type, concurrency, mailbox_capacity, max_idle_ms))]
    fn register_entity(
        &self,
        entity_type: Text,
        concurrency: Int<usize>,
        mailbox_capacity: Option<Int<usize>>,
        max_idle_ms: Option<Int<u64>>,
    ) -> PyResult<()> {
        if concurrency.0 == 0 {
            return Err(InvalidArgumentError::new_err(
                "concurrency must be at least 1, got 0",
            ));
        }
        self.source()?.register_entity(
            &entity_type,
            EntityOptions {
                concurrency: concurrency.0,
                mailbox_capacity: mailbox_capacity.map(|c| c.0),
                max_idle_ms: max_idle_ms.map(|m| m.0),
            },
        );
        Ok(())
    }

    /// Sets how often stored entity requests are read regardless (`poll_ms`), and how long a
    /// stored request of an unregistered entity type waits for it (then it is delivered, to be
    /// answered with a defect).
    fn set_storage_options(
        &self,
        poll_ms: Int<u64>,
        registration_timeout_ms: Int<u64>,
    ) -> PyResult<()> {
        self.source()?
            .set_storage_options(poll_ms.0, registration_timeout_ms.0);
        Ok(())
    }

    /// Reads the stored entity requests soon (some were saved and not delivered); with
    /// `deliver_at_ms`, when that instant comes; with `when_room`, once a slot frees.
    #[pyo3(signature = (deliver_at_ms = None, when_room = false))]
    fn poll_storage(&self, deliver_at_ms: Option<Int<u64>>, when_room: bool) -> PyResult<()> {
        self.source()?
            .poll_storage(deliver_at_ms.map(|at| at.0), when_room);
        Ok(())
    }

    /// Bounds the resident entity instances (None: unbounded).
    fn set_max_resident(&self, max_resident: Option<Int<usize>>) -> PyResult<()> {
        self.source()?.set_max_resident(max_resident.map(|m| m.0));
        Ok(())
    }

    /// Offers entity requests (objects with `request_id`, `entity_type`, `entity_id`, `tag`,
    /// `payload`, `persisted`): one answer per request (None: taken; else a `Refusal`), and
    /// every request that may run now.
    fn offer(
        &self,
        messages: &Bound<'_, PyAny>,
    ) -> PyResult<(Vec<Option<PyRefusal>>, Vec<PyDeliver>)> {
        not_a_single_str(messages, "messages")?;
        let py = messages.py();
        let mut batch = Vec::with_capacity(capacity_hint(messages));
        for (index, item) in messages.try_iter()?.enumerate() {
            let outgoing: Outgoing = item
                .and_then(|item| item.extract())
                .map_err(|err| at_item(py, err, "messages", index))?;
            batch.push(outgoing.message());
        }
        let (answers, ready) = self.source()?.offer(batch);
        let answers = answers
            .into_iter()
            .map(|answer| answer.err().map(|refusal| PyRefusal { refusal }))
            .collect();
        Ok((answers, deliveries(ready)))
    }

    /// These requests (the `Deliver`s taken) have their final reply, or were dropped: their
    /// slots free. Returns every request that may run now.
    fn done(&self, finished: Vec<PyRef<'_, PyDeliver>>) -> PyResult<Vec<PyDeliver>> {
        let finished: Vec<(Address, i64)> = finished
            .iter()
            .map(|d| {
                (
                    d.delivery.message.address.clone(),
                    d.delivery.message.request_id,
                )
            })
            .collect();
        Ok(deliveries(self.source()?.done(&finished)))
    }

    /// Drops request `request_id` of an instance, waiting or running (its caller gave up):
    /// its slot frees. Returns every request that may run now.
    fn drop_request(
        &self,
        entity_type: Text,
        entity_id: Text,
        request_id: i64,
    ) -> PyResult<Vec<PyDeliver>> {
        let dropped = [(address(entity_type, entity_id), request_id)];
        Ok(deliveries(self.source()?.done(&dropped)))
    }

    /// Keeps an entity instance resident whatever its idle time, or lets it go idle again.
    /// Returns whether it is resident.
    fn keep_alive(&self, entity_type: Text, entity_id: Text, enabled: bool) -> PyResult<bool> {
        Ok(self
            .source()?
            .keep_alive(&address(entity_type, entity_id), enabled))
    }

    /// Drops an entity instance and what it held; returns what it held: the requests the
    /// host was given (`running`) and those it never was (`queued`).
    fn evict(&self, py: Python<'_>, entity_type: Text, entity_id: Text) -> PyResult<PyDrained> {
        let (running, queued) = self.source()?.evict(&address(entity_type, entity_id));
        drained(py, running, queued)
    }

    /// Whether this process serves the entity `entity_id` now (always, for a single engine).
    fn owns(&self, entity_id: Text) -> PyResult<bool> {
        Ok(self.source()?.owns(&entity_id))
    }

    /// The shards this runner serves, sorted; None for a single engine (it serves all).
    fn owned_shards(&self) -> PyResult<Option<Vec<String>>> {
        Ok(self.source()?.owned_shards())
    }

    /// Waits for the stored final replies of these requests (sent to other runners): they
    /// come as `RemoteReply` work.
    fn await_replies(&self, ids: Vec<i64>) -> PyResult<()> {
        self.source()?.await_replies(&ids);
        Ok(())
    }

    /// Stops waiting for these replies.
    fn forget_replies(&self, ids: Vec<i64>) -> PyResult<()> {
        self.source()?.forget_replies(&ids);
        Ok(())
    }

    /// Waits for the ends of these executions' runs on other runners: each comes once as
    /// `Ended` work when complete (or suspended too, with `suspended`).
    #[pyo3(signature = (ids, suspended = false))]
    fn await_executions(&self, ids: Vec<String>, suspended: bool) -> PyResult<()> {
        self.source()?.await_executions(&ids, suspended);
        Ok(())
    }

    /// Stops waiting for these executions' ends.
    fn forget_executions(&self, ids: Vec<String>) -> PyResult<()> {
        self.source()?.forget_executions(&ids);
        Ok(())
    }

    /// The entities of these shards are finished: their instances leave the mailboxes.
    /// Returns what they still held.
    fn drained(&self, py: Python<'_>, shards: Vec<String>) -> PyResult<PyDrained> {
        let (running, queued) = self.source()?.drained(&shards);
        drained(py, running, queued)
    }

    /// Resident entity instances.
    fn resident(&self) -> PyResult<usize> {
        Ok(self.source()?.resident())
    }

    /// Entity requests waiting in the mailboxes (queued, or ready and not taken), by entity
    /// type, sorted; every registered type is there.
    fn mailbox_depths(&self) -> PyResult<Vec<(String, usize)>> {
        Ok(self.source()?.mailbox_depths())
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

/// Requests given back by the mailboxes: the ids of those the host was given, and the others.
fn drained(
    py: Python<'_>,
    running: Vec<i64>,
    queued: Vec<mailbox::Message>,
) -> PyResult<PyDrained> {
    let queued = queued
        .into_iter()
        .map(|message| {
            let delivery = mailbox::Delivery {
                message,
                activates: false,
            };
            Py::new(py, PyDeliver { delivery })
        })
        .collect::<PyResult<_>>()?;
    Ok(PyDrained { running, queued })
}
