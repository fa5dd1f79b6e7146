//! The Rust core of plait: durable workflows and sharded entities for Python.
//!
//! Plain Rust modules, each tested with `cargo test`:
//!
//! - [`snowflake`]: 64-bit ids in Effect's layout, from a monotonic generator;
//! - [`shard`]: entity id → shard (Effect's hash) and shard → runner (Effect's hash ring);
//! - [`timer`]: a hierarchical timer wheel and an async service waiting on it;
//! - [`ids`]: execution ids, activity idempotency keys and deferred tokens;
//! - [`runtime`]: the process-wide tokio runtime;
//! - [`completion`]: results of Rust tasks handed to an event loop in batches;
//! - [`clock`]: the wall clock, in milliseconds since the Unix epoch;
//! - [`cluster`]: entities and their mailboxes, spread over runners by shard;
//! - [`store`]: the journal store of executions, step results, deferreds and timers, in memory
//!   or durable in SQLite / PostgreSQL;
//! - [`work`]: the work source: what a process owns and what runs next (recovery, durable
//!   timers, snapshots to resume), handed to Python in batches.
//!
//! The Python bindings live in `py/` alone, behind the `python` feature that maturin enables.

pub mod clock;
pub mod cluster;
pub mod completion;
pub mod ids;
pub mod runtime;
pub mod shard;
pub mod snowflake;
pub mod store;
pub mod timer;
pub mod work;

#[cfg(feature = "python")]
mod py;

#[cfg(test)]
mod vectors;
