//! The one place Rust errors become Python exceptions, and where arguments are checked on the
//! way in.
//!
//! The exception classes are defined in Python (`plait/errors.py`), where a class can derive
//! from both `PlaitError` and a builtin such as `ValueError`; Rust imports them on first use.

use pyo3::{
    exceptions::{PyOverflowError, PyTypeError, PyUnicodeEncodeError, PyValueError},
    import_exception,
    prelude::*,
    pybacked::PyBackedStr,
    types::{PyBool, PyString},
};

use crate::{ids, runtime, shard, snowflake, store, timer, work};

import_exception!(plait.errors, InvalidArgumentError);
import_exception!(plait.errors, MalformedTokenError);
import_exception!(plait.errors, UnknownRunnerError);
import_exception!(plait.errors, ClosedError);
import_exception!(plait.errors, ForkedProcessError);
import_exception!(plait.errors, StoreError);
import_exception!(plait.errors, StoreConnectError);
import_exception!(plait.errors, EngineLockedError);
import_exception!(plait.errors, EngineFencedError);

impl From<snowflake::Error> for PyErr {
    fn from(err: snowflake::Error) -> Self {
        InvalidArgumentError::new_err(err.to_string())
    }
}

impl From<shard::Error> for PyErr {
    fn from(err: shard::Error) -> Self {
        match err {
            shard::Error::UnknownRunner(_) => UnknownRunnerError::new_err(err.to_string()),
            shard::Error::InvalidShardCount(_)
            | shard::Error::InvalidWeight(_)
            | shard::Error::TooManyVirtualNodes { .. } => {
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

impl From<work::Closed> for PyErr {
    fn from(err: work::Closed) -> Self {
        ClosedError::new_err(err.to_string())
    }
}

impl From<timer::Closed> for PyErr {
    fn from(err: timer::Closed) -> Self {
        ClosedError::new_err(err.to_string())
    }
}

impl From<store::StoreError> for PyErr {
    fn from(err: store::StoreError) -> Self {
        match err {
            store::StoreError::UnknownStatus(_) => InvalidArgumentError::new_err(err.to_string()),
            store::StoreError::Sql(err) => err.into(),
        }
    }
}

impl From<store::sql::SqlError> for PyErr {
    fn from(err: store::sql::SqlError) -> Self {
        use store::sql::SqlError;
        let message = err.to_string();
        match err {
            SqlError::InvalidArgument(_) => InvalidArgumentError::new_err(message),
            SqlError::Connect { .. } => StoreConnectError::new_err(message),
            SqlError::Locked { .. } => EngineLockedError::new_err(message),
            SqlError::Fenced { .. } => EngineFencedError::new_err(message),
            SqlError::Migrate { .. }
            | SqlError::Database { .. }
            | SqlError::Unavailable { .. }
            | SqlError::Abandoned { .. }
            | SqlError::Closed { .. } => StoreError::new_err(message),
        }
    }
}

impl From<runtime::Forked> for PyErr {
    fn from(err: runtime::Forked) -> Self {
        ForkedProcessError::new_err(err.to_string())
    }
}

/// An int argument of Rust type `T`. An int out of `T`'s range raises `InvalidArgumentError`
/// naming the value, where `PyO3` alone would raise a bare `OverflowError`; a `bool` is refused
/// rather than read as 0 or 1.
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

impl IntRange for u32 {
    const RANGE: &'static str = "0..=4294967295";
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
        if obj.is_instance_of::<PyBool>() {
            return Err(PyTypeError::new_err("expected an integer, got a bool"));
        }
        match obj.extract::<T>() {
            Ok(value) => Ok(Self(value)),
            Err(err) if err.is_instance_of::<PyOverflowError>(obj.py()) => {
                Err(InvalidArgumentError::new_err(format!(
                    "{} is out of range: expected an integer in {}",
                    describe_int(&obj),
                    T::RANGE
                )))
            }
            Err(err) => Err(err),
        }
    }
}

/// The int's digits, or its size when it has too many digits to print.
fn describe_int(obj: &Bound<'_, PyAny>) -> String {
    if let Ok(text) = obj.str() {
        return text.to_string();
    }
    match obj
        .call_method0("bit_length")
        .and_then(|bits| bits.extract::<u64>())
    {
        Ok(bits) => format!("an integer of {bits} bits"),
        Err(_) => "the integer".to_owned(),
    }
}

/// A `str` argument that must be valid Unicode. Python strings may hold lone surrogates, which
/// no UTF-8 text can; such a string raises `InvalidArgumentError` instead of a bare
/// `UnicodeEncodeError`.
pub struct Text(pub PyBackedStr);

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for Text {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        match obj.extract::<PyBackedStr>() {
            Ok(text) => Ok(Self(text)),
            Err(err) if err.is_instance_of::<PyUnicodeEncodeError>(obj.py()) => {
                Err(not_unicode(&obj))
            }
            Err(err) => Err(err),
        }
    }
}

/// The error for a string holding a lone surrogate.
pub fn not_unicode(obj: &Bound<'_, PyAny>) -> PyErr {
    let shown: String = obj
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_default()
        .chars()
        .take(80)
        .collect();
    InvalidArgumentError::new_err(format!(
        "{shown} holds a lone surrogate, so it is not valid Unicode text"
    ))
}

/// Refuses a `str` where a batch of strings belongs: iterating it would go character by
/// character.
pub fn not_a_single_str(batch: &Bound<'_, PyAny>, name: &str) -> PyResult<()> {
    if batch.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an iterable of str, not a single str"
        )));
    }
    Ok(())
}

/// Room to reserve for a batch: what its `len()` says, within reason (it may say anything).
pub fn capacity_hint(batch: &Bound<'_, PyAny>) -> usize {
    batch.len().unwrap_or(0).min(1 << 16)
}

/// Names the failing item of a batch argument: `entity_ids[3]: ...`. Type errors stay type
/// errors; bad values become `InvalidArgumentError`.
pub fn at_item(py: Python<'_>, err: PyErr, batch: &str, index: usize) -> PyErr {
    let message = format!("{batch}[{index}]: {}", err.value(py));
    if err.is_instance_of::<PyTypeError>(py) {
        PyTypeError::new_err(message)
    } else if err.is_instance_of::<PyValueError>(py) {
        InvalidArgumentError::new_err(message)
    } else {
        err
    }
}
