//! Shard routing for Python.

use pyo3::{
    prelude::*,
    types::{PyList, PyString},
};

use super::errors::Int;
use crate::shard;

/// Effect's `Hash.string` of `value`.
#[pyfunction]
pub fn hash_string(value: &str) -> i32 {
    shard::hash_string(value)
}

/// The 1-based shard of `entity_id`.
#[pyfunction]
#[pyo3(
    signature = (entity_id, shards_per_group = Int(i64::from(shard::DEFAULT_SHARDS_PER_GROUP))),
    text_signature = "(entity_id, shards_per_group=300)"
)]
pub fn shard_id(entity_id: &str, shards_per_group: Int<i64>) -> PyResult<u32> {
    let shards = shard::shard_count(shards_per_group.0)?;
    Ok(shard::shard_id(entity_id, shards))
}

/// The 1-based shards of many entity ids, in one call.
#[pyfunction]
#[pyo3(
    signature = (entity_ids, shards_per_group = Int(i64::from(shard::DEFAULT_SHARDS_PER_GROUP))),
    text_signature = "(entity_ids, shards_per_group=300)"
)]
pub fn shard_ids(entity_ids: &Bound<'_, PyAny>, shards_per_group: Int<i64>) -> PyResult<Vec<u32>> {
    let shards = shard::shard_count(shards_per_group.0)?;
    let mut out = Vec::with_capacity(entity_ids.len().unwrap_or(0));
    for item in entity_ids.try_iter()? {
        let item = item?;
        let id = item.cast::<PyString>()?.to_str()?;
        out.push(shard::shard_id(id, shards));
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
    #[pyo3(signature = (base_weight = Int(i64::from(shard::DEFAULT_BASE_WEIGHT))), text_signature = "(base_weight=128)")]
    fn new(base_weight: Int<i64>) -> PyResult<Self> {
        let base_weight = u32::try_from(base_weight.0)
            .ok()
            .filter(|&w| w >= 1)
            .ok_or_else(|| {
                super::errors::InvalidArgumentError::new_err(format!(
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
    fn add(&mut self, runner: &str, weight: f64) -> PyResult<()> {
        Ok(self.ring.add(runner, weight)?)
    }

    /// Removes `runner`.
    fn remove(&mut self, runner: &str) -> PyResult<()> {
        Ok(self.ring.remove(runner)?)
    }

    fn __contains__(&self, runner: &str) -> bool {
        self.ring.contains(runner)
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
    fn get(&self, key: &str) -> Option<String> {
        self.ring.get(key).map(str::to_owned)
    }

    /// The owner of each shard: element `i` owns shard `i + 1`. `None` for an empty ring.
    #[pyo3(signature = (count = Int(i64::from(shard::DEFAULT_SHARDS_PER_GROUP))), text_signature = "($self, count=300)")]
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
