//! Execution ids, activity keys and deferred tokens for Python.

use pyo3::{prelude::*, types::PyString};

use super::errors::Int;
use crate::ids;

/// The execution id of `workflow` for `idempotency_key`.
#[pyfunction]
pub fn execution_id(workflow: &str, idempotency_key: &str) -> String {
    ids::execution_id(workflow, idempotency_key)
}

/// The execution ids of `workflow` for many idempotency keys, in one call.
#[pyfunction]
pub fn execution_ids(workflow: &str, idempotency_keys: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let mut out = Vec::with_capacity(idempotency_keys.len().unwrap_or(0));
    for key in idempotency_keys.try_iter()? {
        let key = key?;
        out.push(ids::execution_id(
            workflow,
            key.cast::<PyString>()?.to_str()?,
        ));
    }
    Ok(out)
}

/// An activity's idempotency key, optionally per attempt.
#[pyfunction]
#[pyo3(signature = (execution_id, name, attempt = None))]
pub fn activity_idempotency_key(
    execution_id: &str,
    name: &str,
    attempt: Option<Int<i64>>,
) -> PyResult<String> {
    Ok(ids::activity_idempotency_key(
        execution_id,
        name,
        attempt.map(|a| a.0),
    )?)
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
