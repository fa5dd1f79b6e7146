//! The operators' reads for Python: which executions to list (`Filter`), a page of them
//! (`Page` of `Listed`), and one execution's history (`History`, its `Step`s and
//! `DeferredAt`s). `Store.list_executions`, `Store.count_executions` and `Store.history` answer
//! them.

use pyo3::{prelude::*, types::PyBytes};

use super::{
    errors::{Int, InvalidArgumentError, Text},
    store::{PyExecution, PyTimer},
};
use crate::store::{self, Status};

/// Which executions `Store.list_executions` and `Store.count_executions` take; every
/// condition given must hold.
#[pyclass(module = "plait._native", name = "Filter", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct PyFilter(pub(super) store::Filter);

#[pymethods]
impl PyFilter {
    #[new]
    #[pyo3(
        signature = (
            *, workflow = None, status = None, result_prefixes = Vec::new(),
            created_from_ms = None, created_before_ms = None,
        ),
        text_signature = "(*, workflow=None, status=None, result_prefixes=(), \
                          created_from_ms=None, created_before_ms=None)"
    )]
    fn new(
        workflow: Option<Text>,
        status: Option<&str>,
        result_prefixes: Vec<Vec<u8>>,
        created_from_ms: Option<Int<u64>>,
        created_before_ms: Option<Int<u64>>,
    ) -> PyResult<Self> {
        Ok(Self(store::Filter {
            workflow: workflow.map(|w| w.to_owned()),
            status: status.map(Status::parse).transpose()?,
            result_prefixes,
            created_from_ms: created_from_ms.map(|at| at.0),
            created_before_ms: created_before_ms.map(|at| at.0),
        }))
    }

    /// Only executions of this workflow.
    #[getter]
    fn workflow(&self) -> Option<&str> {
        self.0.workflow.as_deref()
    }

    /// Only executions with this status.
    #[getter]
    fn status(&self) -> Option<&'static str> {
        self.0.status.map(Status::as_str)
    }

    /// Only executions whose stored result starts with one of these.
    #[getter]
    fn result_prefixes<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.0
            .result_prefixes
            .iter()
            .map(|p| PyBytes::new(py, p))
            .collect()
    }

    /// Only executions created at or after this instant (ms since the Unix epoch).
    #[getter]
    fn created_from_ms(&self) -> Option<u64> {
        self.0.created_from_ms
    }

    /// Only executions created before this instant (ms since the Unix epoch).
    #[getter]
    fn created_before_ms(&self) -> Option<u64> {
        self.0.created_before_ms
    }

    fn __repr__(&self) -> String {
        format!("<Filter {:?}>", self.0)
    }
}

/// A listing's position, `(created_ms, no)`, from Python.
pub(super) fn cursor(after: Option<(Int<u64>, Int<u64>)>) -> Option<store::Cursor> {
    after.map(|(created_ms, no)| store::Cursor {
        created_ms: created_ms.0,
        no: no.0,
    })
}

/// A listing's page size, checked.
pub(super) fn limit(limit: Int<usize>) -> PyResult<usize> {
    if limit.0 == 0 || limit.0 > store::listing::MAX_LIMIT {
        return Err(InvalidArgumentError::new_err(format!(
            "limit {} is out of range: expected 1 to {}",
            limit.0,
            store::listing::MAX_LIMIT
        )));
    }
    Ok(limit.0)
}

/// An execution as a listing shows it: its record without the payload.
#[pyclass(module = "plait._native", name = "Listed", frozen, eq)]
#[derive(PartialEq)]
pub struct PyListed(store::Listed);

#[pymethods]
impl PyListed {
    /// The execution's id.
    #[getter]
    fn id(&self) -> &str {
        &self.0.id
    }

    /// The workflow's name.
    #[getter]
    fn workflow(&self) -> &str {
        &self.0.workflow
    }

    /// The execution that started this one, if any.
    #[getter]
    fn parent(&self) -> Option<&str> {
        self.0.parent.as_deref()
    }

    /// `running`, `suspended` or `complete`.
    #[getter]
    fn status(&self) -> &'static str {
        self.0.status.as_str()
    }

    /// The encoded result.
    #[getter]
    fn result<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.0.result.as_deref().map(|r| PyBytes::new(py, r))
    }

    /// Whether an interrupt was requested.
    #[getter]
    fn interrupted(&self) -> bool {
        self.0.interrupted
    }

    /// When it was created (ms since the Unix epoch).
    #[getter]
    fn created_ms(&self) -> u64 {
        self.0.created_ms
    }

    /// When its record last changed.
    #[getter]
    fn updated_ms(&self) -> u64 {
        self.0.updated_ms
    }

    /// The listing's position at this execution: `(created_ms, no)`.
    #[getter]
    fn cursor(&self) -> (u64, u64) {
        (self.0.created_ms, self.0.no)
    }

    fn __repr__(&self) -> String {
        format!(
            "<Listed {} workflow={:?} status={}>",
            self.0.id,
            self.0.workflow,
            self.0.status.as_str()
        )
    }
}

/// One page of a listing.
#[pyclass(module = "plait._native", name = "Page", frozen)]
pub struct PyPage(store::Page);

impl From<store::Page> for PyPage {
    fn from(page: store::Page) -> Self {
        Self(page)
    }
}

#[pymethods]
impl PyPage {
    /// The executions, newest first.
    #[getter]
    fn executions(&self) -> Vec<PyListed> {
        self.0.executions.iter().cloned().map(PyListed).collect()
    }

    /// Where the next page starts (`after=` of the next call); None once nothing is left.
    #[getter]
    fn next(&self) -> Option<(u64, u64)> {
        self.0.next.map(|at| (at.created_ms, at.no))
    }

    fn __repr__(&self) -> String {
        format!(
            "<Page executions={} next={:?}>",
            self.0.executions.len(),
            self.next()
        )
    }
}

/// A step result with the time it was stored.
#[pyclass(module = "plait._native", name = "Step", frozen, eq)]
#[derive(PartialEq)]
pub struct PyStep(store::Step);

#[pymethods]
impl PyStep {
    /// The step's key (name, occurrence and attempt).
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

    /// When it was stored (ms since the Unix epoch); None if stored before times were kept.
    #[getter]
    fn at_ms(&self) -> Option<u64> {
        self.0.at_ms
    }

    fn __repr__(&self) -> String {
        format!("<Step key={:?} at_ms={:?}>", self.0.key, self.0.at_ms)
    }
}

/// A deferred's result with the time it was stored.
#[pyclass(module = "plait._native", name = "DeferredAt", frozen, eq)]
#[derive(PartialEq)]
pub struct PyDeferredAt(store::DeferredAt);

#[pymethods]
impl PyDeferredAt {
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

    /// When it was stored, as `Step.at_ms`.
    #[getter]
    fn at_ms(&self) -> Option<u64> {
        self.0.at_ms
    }

    fn __repr__(&self) -> String {
        format!(
            "<DeferredAt name={:?} at_ms={:?}>",
            self.0.name, self.0.at_ms
        )
    }
}

/// One execution with everything its journal holds, with times.
#[pyclass(module = "plait._native", name = "History", frozen)]
pub struct PyHistory(store::History);

impl From<store::History> for PyHistory {
    fn from(history: store::History) -> Self {
        Self(history)
    }
}

#[pymethods]
impl PyHistory {
    /// The execution's id.
    #[getter]
    fn id(&self) -> &str {
        &self.0.id
    }

    /// Its record.
    #[getter]
    fn execution(&self) -> PyExecution {
        PyExecution::from(self.0.execution.clone())
    }

    /// When it was created (ms since the Unix epoch).
    #[getter]
    fn created_ms(&self) -> u64 {
        self.0.created_ms
    }

    /// When its record last changed.
    #[getter]
    fn updated_ms(&self) -> u64 {
        self.0.updated_ms
    }

    /// Its step results, in the order they were stored.
    #[getter]
    fn steps(&self) -> Vec<PyStep> {
        self.0.steps.iter().cloned().map(PyStep).collect()
    }

    /// Its deferred results, in the order they were stored.
    #[getter]
    fn deferreds(&self) -> Vec<PyDeferredAt> {
        self.0.deferreds.iter().cloned().map(PyDeferredAt).collect()
    }

    /// Its timers still to fire, earliest first.
    #[getter]
    fn timers(&self) -> Vec<PyTimer> {
        self.0.timers.iter().cloned().map(PyTimer::from).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "<History {} steps={} deferreds={} timers={}>",
            self.0.id,
            self.0.steps.len(),
            self.0.deferreds.len(),
            self.0.timers.len()
        )
    }
}
