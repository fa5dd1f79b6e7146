//! The Python extension module `plait._native`: the only place `PyO3` appears.
//!
//! Private to the `plait` package, which re-exports what users need.

// PyO3 hands arguments over by value; taking them by reference is not an option here.
#![allow(clippy::needless_pass_by_value)]

mod bridge;
mod cluster;
mod errors;
mod ids;
mod listing;
mod shard;
mod snowflake;
mod store;
mod timer;
mod work;

use pyo3::prelude::*;

#[pymodule]
mod _native {
    #[pymodule_export]
    use super::bridge::{_after_fork_in_child, _panic, _panic_async, AsyncBridge};
    #[pymodule_export]
    use super::cluster::{PyClusterView, PySharding};
    #[pymodule_export]
    use super::ids::{
        activity_idempotency_key, encode_deferred_token, execution_id, execution_ids,
        parse_deferred_token,
    };
    #[pymodule_export]
    use super::listing::{PyDeferredAt, PyFilter, PyHistory, PyListed, PyPage, PyStep};
    #[pymodule_export]
    use super::shard::{hash_string, shard_id, shard_ids, PyHashRing};
    #[pymodule_export]
    use super::snowflake::{snowflake_make, snowflake_parts, SnowflakeGenerator};
    #[pymodule_export]
    use super::store::{
        PyDeferred, PyDuplicate, PyEntry, PyExecution, PyFenced, PyOp, PyQueueItem, PySnapshot,
        PyStore, PyTimer,
    };
    #[pymodule_export]
    use super::timer::{wall_clock_ms, PyTimerWheel, TimerServiceRef};
    #[pymodule_export]
    use super::work::{
        PyDeliver, PyDrained, PyEnded, PyInterrupt, PyPassivate, PyRefusal, PyRelease,
        PyRemoteReply, PyResume, PyRouted, PyWorkSource,
    };

    use super::{Bound, PyModule, PyModuleMethods, PyResult};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // The core's `log` records (commit retries, a lost lease) go to Python's `logging`,
        // under the logger names they give (`plait.store`). Loggers are cached, levels are
        // not: a level set later (or by a test) still applies. Records are rare (warnings),
        // so taking the GIL for each costs nothing that matters. The libraries' debug records
        // (sqlx's statements, the HTTP/2 stack's) stay out: each would take the GIL from a
        // runtime thread, whatever level Python's logging then drops it at.
        let logger = pyo3_log::Logger::new(m.py(), pyo3_log::Caching::Loggers)?
            .filter(log::LevelFilter::Warn)
            .filter_target("plait.cluster".to_owned(), log::LevelFilter::Debug)
            .filter_target("plait.store".to_owned(), log::LevelFilter::Debug)
            .filter_target("plait.work".to_owned(), log::LevelFilter::Debug);
        // Another extension of the process may have installed a logger already: keep it.
        let _ = logger.install();
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("CLAIM_MS", crate::store::messages::CLAIM_MS)?;
        m.add("FORWARD_CLAIM_MS", crate::store::messages::FORWARD_CLAIM_MS)?;
        m.add(
            "DEFAULT_SHARDS_PER_GROUP",
            crate::shard::DEFAULT_SHARDS_PER_GROUP,
        )
    }
}
