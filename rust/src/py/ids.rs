//! Execution ids, activity keys and deferred tokens for Python.

use pyo3::{
    prelude::*,
    types::{PyList, PyString},
};

use super::errors::Int;
use crate::ids;

/// The execution id of `workflow` for `idempotency_key`.
#[pyfunction]
pub fn execution_id<'py>(
    py: Python<'py>,
    workflow: &str,
    idempotency_key: &str,
) -> Bound<'py, PyString> {
    PyString::new(py, ids::execution_id(workflow, idempotency_key).as_str())
}

/// The execution ids of `workflow` for many idempotency keys, in one call.
#[pyfunction]
pub fn execution_ids<'py>(
    workflow: &str,
    idempotency_keys: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let py = idempotency_keys.py();
    let out = PyList::empty(py);
    for key in idempotency_keys.try_iter()? {
        let key = key?;
        let id = ids::execution_id(workflow, key.cast::<PyString>()?.to_str()?);
        out.append(PyString::new(py, id.as_str()))?;
    }
    Ok(out)
}

/// An activity's idempotency key, optionally per attempt.
#[pyfunction]
#[pyo3(signature = (execution_id, name, attempt = None))]
pub fn activity_idempotency_key<'py>(
    py: Python<'py>,
    execution_id: &str,
    name: &str,
    attempt: Option<Int<i64>>,
) -> PyResult<Bound<'py, PyString>> {
    let key = ids::activity_idempotency_key(execution_id, name, attempt.map(|a| a.0))?;
    Ok(PyString::new(py, key.as_str()))
}

/// Encodes a deferred token.
#[pyfunction]
pub fn encode_deferred_token(workflow: &str, execution_id: &str, deferred: &str) -> String {
    ids::encode_token(workflow, execution_id, deferred)
}

/// Parses a deferred token into `(workflow, execution_id, deferred)`.
#[pyfunction]
pub fn parse_deferred_token(token: &str) -> PyResult<(String, String, String)> {
    let parts = ids::parse_token(token)?;
    Ok((parts.workflow, parts.execution_id, parts.deferred))
}
