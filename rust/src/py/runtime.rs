//! How Python awaits Rust futures: pyo3-async-runtimes over the process-wide runtime.

use std::{any::Any, future::Future, panic::AssertUnwindSafe};

use futures_util::FutureExt;
use pyo3::{panic::PanicException, prelude::*};

/// Hands the process-wide runtime to pyo3-async-runtimes, so every awaitable runs on it.
pub fn init() {
    // Err only means it was handed over already (the module was initialised before).
    let _ = pyo3_async_runtimes::tokio::init_with_runtime(crate::runtime::runtime());
}

/// A Python awaitable that runs `fut` on the runtime and resolves on the caller's event loop.
/// Cancelling the awaitable drops `fut`. A panic in `fut` raises `PanicException` with the
/// panic's message, as a panic in a synchronous call does.
pub fn future_into_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(PanicException::new_err(panic_message(&*panic))))
    })
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a Rust future panicked".to_owned()
    }
}

/// Panics with `message`: lets the test suite prove a Rust panic reaches Python as an
/// exception instead of aborting the interpreter.
#[pyfunction]
#[allow(clippy::needless_pass_by_value)]
pub fn _panic(message: String) {
    panic!("{message}");
}

/// As [`_panic`], inside a future awaited from Python.
#[pyfunction]
pub fn _panic_async(py: Python<'_>, message: String) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        if message.is_empty() {
            return Ok(());
        }
        panic!("{message}");
    })
}
