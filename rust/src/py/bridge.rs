//! Rust futures awaited from asyncio, with no Rust thread ever taking the GIL.
//!
//! [`AsyncBridge::spawn`] runs a future on the runtime and returns a token; the future's result
//! goes to a [`CompletionQueue`] whose wake-up descriptor the event loop watches
//! (`loop.add_reader`). On wake-up the loop thread calls `drain()` once and resolves the asyncio
//! futures of every result that finished meanwhile. `plait/_bridge.py` is the Python half.

use std::{
    any::{Any, TypeId},
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use futures_util::FutureExt;
use pyo3::{
    panic::PanicException,
    prelude::*,
    types::{PyList, PyTuple},
    IntoPyObjectExt,
};
use rustc_hash::FxHashMap;
use tokio::task::AbortHandle;

use super::errors::Int;
use crate::{
    completion::CompletionQueue,
    runtime::{self, runtime},
};

/// Builds a finished future's Python value, on the loop thread, under the GIL.
type Completion = Box<dyn for<'py> FnOnce(Python<'py>) -> PyResult<Py<PyAny>> + Send>;

/// One event loop's view of the Rust runtime: tasks started, results drained.
#[pyclass(module = "plait._native", frozen)]
pub struct AsyncBridge {
    queue: Arc<CompletionQueue<Completion>>,
    tasks: Mutex<FxHashMap<u64, AbortHandle>>,
    /// The runtime's threads push to the queue under its lock; in a forked child that lock may
    /// be held forever, and the tasks do not exist.
    born: u64,
}

impl Drop for AsyncBridge {
    fn drop(&mut self) {
        // Nobody can collect these tasks' results any more: stop them, so they release what
        // they hold (the queue's sockets among it). Not in a forked child, whose copies of the
        // parent's tasks belong to a runtime with no threads.
        if runtime::check_not_forked(self.born, "AsyncBridge").is_ok() {
            for (_, task) in self.tasks().drain() {
                task.abort();
            }
        }
    }
}

impl AsyncBridge {
    fn tasks(&self) -> MutexGuard<'_, FxHashMap<u64, AbortHandle>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `fut` on the runtime; its result is drained under the returned token. A `()`
    /// result resolves to `None` (as a function returning `()` does in `PyO3`), and a panic in
    /// `fut` becomes `PanicException` with the panic's message.
    ///
    /// # Errors
    /// `ForkedProcessError` when the bridge was made before the process forked.
    pub fn spawn<F, T>(&self, fut: F) -> PyResult<u64>
    where
        F: Future<Output = PyResult<T>> + Send + 'static,
        T: for<'py> IntoPyObject<'py> + Send + 'static,
    {
        runtime::check_not_forked(self.born, "AsyncBridge")?;
        let unit = TypeId::of::<T>() == TypeId::of::<()>();
        let token = self.queue.next_token();
        let queue = Arc::clone(&self.queue);
        let task = runtime().spawn(async move {
            let outcome = AssertUnwindSafe(fut).catch_unwind().await;
            let completion: Completion = Box::new(move |py| match outcome {
                Ok(Ok(_)) if unit => Ok(py.None()),
                Ok(result) => result.and_then(|value| value.into_py_any(py)),
                Err(panic) => Err(PanicException::new_err(panic_message(&*panic))),
            });
            queue.push(token, completion);
        });
        // The loop thread that drains is the one calling spawn, so the entry is in before any
        // drain can look for it.
        self.tasks().insert(token, task.abort_handle());
        Ok(token)
    }
}

#[pymethods]
impl AsyncBridge {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Self {
            queue: Arc::new(CompletionQueue::new()?),
            tasks: Mutex::new(FxHashMap::default()),
            born: runtime::generation(),
        })
    }

    /// The descriptor that turns readable when results are waiting.
    fn fileno(&self) -> i32 {
        self.queue.wake_fd()
    }

    /// Every finished result as `(token, ok, value)`: `value` is the result when `ok`, else the
    /// exception to raise.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        runtime::check_not_forked(self.born, "AsyncBridge")?;
        let finished = self.queue.drain();
        {
            let mut tasks = self.tasks();
            for (token, _) in &finished {
                tasks.remove(token);
            }
        }
        let out = PyList::empty(py);
        for (token, completion) in finished {
            let row = match completion(py) {
                Ok(value) => {
                    PyTuple::new(py, [token.into_py_any(py)?, true.into_py_any(py)?, value])
                }
                Err(err) => PyTuple::new(
                    py,
                    [
                        token.into_py_any(py)?,
                        false.into_py_any(py)?,
                        err.into_value(py).into_any(),
                    ],
                ),
            }?;
            out.append(row)?;
        }
        Ok(out)
    }

    /// Stops the task behind `token`; its result, if any arrives, is dropped. Returns whether the
    /// task was still running.
    fn cancel(&self, token: Int<u64>) -> bool {
        self.tasks()
            .remove(&token.0)
            .inspect(AbortHandle::abort)
            .is_some()
    }

    /// Tasks started and not yet drained.
    fn __len__(&self) -> usize {
        self.tasks().len()
    }
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

/// Drops the parent's runtime from view in a child process after `fork()` (`plait` registers
/// this with `os.register_at_fork`); the next task builds a runtime of the child's own.
#[pyfunction]
pub fn _after_fork_in_child() {
    crate::runtime::forget_after_fork();
}

/// Panics with `message`: lets the test suite prove a Rust panic reaches Python as an
/// exception instead of aborting the interpreter.
#[pyfunction]
pub fn _panic(message: String) {
    panic!("{message}");
}

/// As [`_panic`], inside a task awaited through `bridge`; an empty message does not panic.
#[pyfunction]
pub fn _panic_async(bridge: &AsyncBridge, message: String) -> PyResult<u64> {
    bridge.spawn(async move {
        if message.is_empty() {
            return Ok(());
        }
        panic!("{message}");
    })
}
