//! Snowflake ids for Python.

use pyo3::prelude::*;

use super::errors::Int;
use crate::{runtime, snowflake};

/// Generates strictly increasing snowflake ids stamped with one machine id.
#[pyclass(module = "plait._native")]
pub struct SnowflakeGenerator {
    generator: snowflake::Generator,
    /// A copy in a forked child would hand out the parent's ids again.
    born: u64,
}

impl SnowflakeGenerator {
    fn generator(&mut self) -> PyResult<&mut snowflake::Generator> {
        runtime::check_not_forked(self.born, "SnowflakeGenerator")?;
        Ok(&mut self.generator)
    }
}

#[pymethods]
impl SnowflakeGenerator {
    #[new]
    fn new(machine_id: Int<i64>) -> PyResult<Self> {
        Ok(Self {
            generator: snowflake::Generator::new(machine_id.0)?,
            born: runtime::generation(),
        })
    }

    /// The machine id stamped into every id (0..=1023).
    #[getter]
    fn machine_id(&self) -> u16 {
        self.generator.machine_id()
    }

    #[setter]
    fn set_machine_id(&mut self, machine_id: Int<i64>) -> PyResult<()> {
        Ok(self.generator()?.set_machine_id(machine_id.0)?)
    }

    /// The next id.
    fn next_id(&mut self) -> PyResult<u64> {
        Ok(self.generator()?.next_id()?)
    }

    /// The next `count` ids, in increasing order.
    fn next_ids(&mut self, count: Int<usize>) -> PyResult<Vec<u64>> {
        Ok(self.generator()?.next_many(count.0)?)
    }
}

/// Builds a snowflake from a timestamp (ms since the Unix epoch), machine id and sequence.
#[pyfunction]
pub fn snowflake_make(
    timestamp_ms: Int<i64>,
    machine_id: Int<i64>,
    sequence: Int<i64>,
) -> PyResult<u64> {
    Ok(snowflake::make(timestamp_ms.0, machine_id.0, sequence.0)?)
}

/// Splits a snowflake into `(timestamp_ms, machine_id, sequence)`.
#[pyfunction]
pub fn snowflake_parts(snowflake: Int<u64>) -> (u64, u16, u16) {
    let parts = snowflake::parts(snowflake.0);
    (parts.timestamp_ms, parts.machine_id, parts.sequence)
}
