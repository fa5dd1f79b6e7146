//! Execution ids, activity keys and deferred tokens for Python.

use pyo3::{
    prelude::*,
    types::{PyList, PyString},
};

use super::errors::{at_item, not_a_single_str, Int, Text};
use crate::ids;

/// The execution id of `workflow` for `idempotency_key`.
#[pyfunction]
pub fn execution_id(py: Python<'_>, workflow: Text, idempotency_key: Text) -> Bound<'_, PyString> {
    PyString::new(py, ids::execution_id(&workflow, &idempotency_key).as_str())
}

/// The execution ids of `workflow` for many idempotency keys, in one call.
#[pyfunction]
pub fn execution_ids<'py>(
    workflow: Text,
    idempotency_keys: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    not_a_single_str(idempotency_keys, "idempotency_keys")?;
    let py = idempotency_keys.py();
    let out = PyList::empty(py);
    for (index, key) in idempotency_keys.try_iter()?.enumerate() {
        let key: Text = key
            .and_then(|key| key.extract())
            .map_err(|err| at_item(py, err, "idempotency_keys", index))?;
        out.append(PyString::new(
            py,
            ids::execution_id(&workflow, &key).as_str(),
        ))?;
    }
    Ok(out)
}

/// An activity's idempotency key, optionally per attempt.
#[pyfunction]
#[pyo3(signature = (execution_id, name, attempt = None))]
pub fn activity_idempotency_key(
    py: Python<'_>,
    execution_id: Text,
    name: Text,
    attempt: Option<Int<i64>>,
) -> PyResult<Bound<'_, PyString>> {
    let key = ids::activity_idempotency_key(&execution_id, &name, attempt.map(|a| a.0))?;
    Ok(PyString::new(py, key.as_str()))
}

/// Encodes a deferred token.
#[pyfunction]
pub fn encode_deferred_token(workflow: Text, execution_id: Text, deferred: Text) -> String {
    ids::encode_token(&workflow, &execution_id, &deferred)
}

/// Parses a deferred token into `(workflow, execution_id, deferred)`.
#[pyfunction]
pub fn parse_deferred_token(token: Text) -> PyResult<(String, String, String)> {
    let parts = ids::parse_token(&token)?;
    Ok((parts.workflow, parts.execution_id, parts.deferred))
}
