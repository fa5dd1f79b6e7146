//! Shard routing for Python.

use pyo3::{
    intern,
    prelude::*,
    types::{PyBytes, PyList, PyString},
};

use super::errors::{at_item, capacity_hint, not_a_single_str, Int, InvalidArgumentError, Text};
use crate::shard;

/// Effect's hash of a Python string. Strings with lone surrogates, which JavaScript strings
/// can hold too, are hashed from their UTF-16 code units just as Effect hashes them.
fn entity_hash(text: &Bound<'_, PyString>) -> PyResult<i32> {
    if let Ok(utf8) = text.to_str() {
        return Ok(shard::hash_string(utf8));
    }
    let py = text.py();
    let encoded = text.call_method1(
        intern!(py, "encode"),
        (intern!(py, "utf-16-le"), intern!(py, "surrogatepass")),
    )?;
    let units: Vec<u16> = encoded
        .cast::<PyBytes>()?
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    Ok(shard::hash_utf16(&units))
}

/// Effect's `Hash.string` of `value`.
#[pyfunction]
pub fn hash_string(value: &Bound<'_, PyString>) -> PyResult<i32> {
    entity_hash(value)
}

/// The 1-based shard of `entity_id`.
#[pyfunction]
#[pyo3(
    signature = (entity_id, shards_per_group = Int(i64::from(shard::DEFAULT_SHARDS_PER_GROUP))),
    text_signature = "(entity_id, shards_per_group=300)"
)]
pub fn shard_id(entity_id: &Bound<'_, PyString>, shards_per_group: Int<i64>) -> PyResult<u32> {
    let shards = shard::shard_count(shards_per_group.0)?;
    Ok(shard::shard_of_hash(entity_hash(entity_id)?, shards))
}

/// The 1-based shards of many entity ids, in one call.
#[pyfunction]
#[pyo3(
    signature = (entity_ids, shards_per_group = Int(i64::from(shard::DEFAULT_SHARDS_PER_GROUP))),
    text_signature = "(entity_ids, shards_per_group=300)"
)]
pub fn shard_ids(entity_ids: &Bound<'_, PyAny>, shards_per_group: Int<i64>) -> PyResult<Vec<u32>> {
    let shards = shard::shard_count(shards_per_group.0)?;
    not_a_single_str(entity_ids, "entity_ids")?;
    let py = entity_ids.py();
    let mut out = Vec::with_capacity(capacity_hint(entity_ids));
    for (index, item) in entity_ids.try_iter()?.enumerate() {
        let hash = item
            .and_then(|item| entity_hash(item.cast::<PyString>()?))
            .map_err(|err| at_item(py, err, "entity_ids", index))?;
        out.push(shard::shard_of_hash(hash, shards));
    }
    Ok(out)
}

/// A weighted consistent-hash ring of runners (Effect's `HashRing`).
#[pyclass(module = "plait._native", name = "HashRing")]
pub struct PyHashRing {
    ring: shard::HashRing,
}

#[pymethods]
impl PyHashRing {
    #[new]
    #[pyo3(
        signature = (base_weight = Int(i64::from(shard::DEFAULT_BASE_WEIGHT))),
        text_signature = "(base_weight=128)"
    )]
    fn new(base_weight: Int<i64>) -> PyResult<Self> {
        let base_weight = u32::try_from(base_weight.0)
            .ok()
            .filter(|&w| w >= 1)
            .ok_or_else(|| {
                InvalidArgumentError::new_err(format!(
                    "base weight must be a positive integer up to 4294967295, got {}",
                    base_weight.0
                ))
            })?;
        Ok(Self {
            ring: shard::HashRing::new(base_weight),
        })
    }

    /// Adds `runner`, or changes its weight.
    #[pyo3(signature = (runner, weight = 1.0))]
    fn add(&mut self, runner: Text, weight: f64) -> PyResult<()> {
        Ok(self.ring.add(&runner, weight)?)
    }

    /// Removes `runner`.
    fn remove(&mut self, runner: Text) -> PyResult<()> {
        Ok(self.ring.remove(&runner)?)
    }

    fn __contains__(&self, runner: &Bound<'_, PyAny>) -> bool {
        runner
            .cast::<PyString>()
            .ok()
            .and_then(|r| r.to_str().ok().map(|r| self.ring.contains(r)))
            .unwrap_or(false)
    }

    fn __len__(&self) -> usize {
        self.ring.len()
    }

    /// `(runner, weight)` pairs, in insertion order.
    #[getter]
    fn runners(&self) -> Vec<(String, f64)> {
        self.ring
            .runners()
            .map(|(r, w)| (r.to_owned(), w))
            .collect()
    }

    /// The runner for `key`, or `None` for an empty ring.
    fn get(&self, key: Text) -> Option<String> {
        self.ring.get(&key).map(str::to_owned)
    }

    /// The owner of each shard: element `i` owns shard `i + 1`. `None` for an empty ring.
    #[pyo3(
        signature = (count = Int(i64::from(shard::DEFAULT_SHARDS_PER_GROUP))),
        text_signature = "($self, count=300)"
    )]
    fn shards<'py>(
        &self,
        py: Python<'py>,
        count: Int<i64>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let count = shard::shard_count(count.0)?.get() as usize;
        let Some(owners) = self.ring.shards(count) else {
            return Ok(None);
        };
        // One str object per runner, shared by all the shards it owns.
        let names: Vec<Bound<'py, PyString>> = (0..self.ring.len())
            .map(|i| PyString::new(py, self.ring.runner(i)))
            .collect();
        PyList::new(py, owners.into_iter().map(|i| names[i].clone())).map(Some)
    }
}
