//! The one place Rust errors become Python exceptions.
//!
//! The exception classes are defined in Python (`plait/errors.py`), where a class can derive
//! from both `PlaitError` and a builtin such as `ValueError`; Rust imports them on first use.

use pyo3::{exceptions::PyOverflowError, import_exception, prelude::*};

use crate::{ids, shard, snowflake, timer};

import_exception!(plait.errors, InvalidArgumentError);
import_exception!(plait.errors, MalformedTokenError);
import_exception!(plait.errors, UnknownRunnerError);
import_exception!(plait.errors, ClosedError);

impl From<snowflake::Error> for PyErr {
    fn from(err: snowflake::Error) -> Self {
        InvalidArgumentError::new_err(err.to_string())
    }
}

impl From<shard::Error> for PyErr {
    fn from(err: shard::Error) -> Self {
        match err {
            shard::Error::UnknownRunner(_) => UnknownRunnerError::new_err(err.to_string()),
            shard::Error::InvalidShardCount(_) | shard::Error::InvalidWeight(_) => {
                InvalidArgumentError::new_err(err.to_string())
            }
        }
    }
}

impl From<ids::Error> for PyErr {
    fn from(err: ids::Error) -> Self {
        match err {
            ids::Error::MalformedToken { .. } => MalformedTokenError::new_err(err.to_string()),
            ids::Error::InvalidAttempt(_) => InvalidArgumentError::new_err(err.to_string()),
        }
    }
}

impl From<timer::Closed> for PyErr {
    fn from(err: timer::Closed) -> Self {
        ClosedError::new_err(err.to_string())
    }
}

/// An int argument of Rust type `T`. An int out of `T`'s range raises `InvalidArgumentError`
/// naming the value, where `PyO3` alone would raise a bare `OverflowError`.
#[derive(Debug, Clone, Copy)]
pub struct Int<T>(pub T);

/// The range of an integer type, for error messages.
pub trait IntRange {
    /// `"<min>..=<max>"`.
    const RANGE: &'static str;
}

impl IntRange for u64 {
    const RANGE: &'static str = "0..=18446744073709551615";
}

impl IntRange for i64 {
    const RANGE: &'static str = "-9223372036854775808..=9223372036854775807";
}

impl IntRange for usize {
    const RANGE: &'static str = "0..=18446744073709551615";
}

impl<'a, 'py, T> FromPyObject<'a, 'py> for Int<T>
where
    T: FromPyObject<'a, 'py, Error = PyErr> + IntRange,
{
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        match obj.extract::<T>() {
            Ok(value) => Ok(Self(value)),
            Err(err) if err.is_instance_of::<PyOverflowError>(obj.py()) => {
                Err(InvalidArgumentError::new_err(format!(
                    "{} is out of range: expected an integer in {}",
                    obj.to_owned(),
                    T::RANGE
                )))
            }
            Err(err) => Err(err),
        }
    }
}
