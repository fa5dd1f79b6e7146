//! The process-wide tokio runtime.
//!
//! Created on first use, never shut down: it lives as long as the process, like the Python
//! interpreter that drives it.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime that runs every Rust future of this process.
///
/// # Panics
/// When the operating system refuses to start the runtime's threads.
pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .thread_name("plait-tokio")
            .enable_all()
            .build()
            .expect("the operating system refused to start the tokio runtime")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_runtime_runs_futures() {
        assert!(std::ptr::eq(runtime(), runtime()));
        let value =
            runtime().block_on(async { tokio::task::spawn(async { 21 * 2 }).await.unwrap() });
        assert_eq!(value, 42);
    }
}
