//! The journal store: executions, their journals of step results, deferred results and
//! durable timers; and entity messages (persisted requests, their replies, entity state; see
//! [`messages`]).
//!
//! Beside what runs need, the store answers operators: executions listed and searched a page
//! at a time, counted, and one execution's history with times (see [`listing`]).
//!
//! Values are opaque bytes (JSON written by the Python side); the store never decodes them.
//! [`Store`] is the contract every backend keeps: [`memory::MemoryStore`] in process,
//! [`sql::SqlStore`] in SQLite or PostgreSQL. Writes are batches of [`Op`]s, each answered by
//! an [`OpResult`]; reads come in batches too.

pub mod listing;
pub mod memory;
pub mod messages;
mod op;
pub mod queue;
pub mod sql;

use std::{future::Future, pin::Pin};

use thiserror::Error;

pub use listing::{Cursor, DeferredAt, Filter, History, Listed, Page, Step};
pub use messages::{Request, Shards, Unprocessed};
pub(crate) use op::Refusals;
pub use op::{Op, OpResult};
pub use queue::{QueueItem, Taken};

/// Where an execution stands, as the store records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Started, or resumed, and not yet ended; a run may be live.
    Running,
    /// The last run ended waiting on a deferred or a durable clock.
    Suspended,
    /// Finished for good; the result is final.
    Complete,
}

impl Status {
    /// The name used at the boundary and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Suspended => "suspended",
            Status::Complete => "complete",
        }
    }

    /// Parses [`Status::as_str`]'s names.
    ///
    /// # Errors
    /// [`StoreError::UnknownStatus`] for any other name.
    pub fn parse(name: &str) -> Result<Self, StoreError> {
        match name {
            "running" => Ok(Status::Running),
            "suspended" => Ok(Status::Suspended),
            "complete" => Ok(Status::Complete),
            other => Err(StoreError::UnknownStatus(other.to_owned())),
        }
    }
}

/// One execution of a workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    /// The workflow's name.
    pub workflow: String,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// The execution that started this one from inside its run, if any.
    pub parent: Option<String>,
    /// Where it stands.
    pub status: Status,
    /// The encoded result: the exit when complete, the cause (if any) when suspended.
    pub result: Option<Vec<u8>>,
    /// Whether an interrupt was requested; it takes effect when the current run ends.
    pub interrupted: bool,
}

/// A step result in an execution's journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The step's key within the execution (name, attempt and repeat number).
    pub key: String,
    /// The step's position in the run's call order, for the determinism check.
    pub seq: u32,
    /// The encoded exit of the step.
    pub value: Vec<u8>,
}

/// Everything a run needs to replay an execution, read at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The execution itself.
    pub execution: Execution,
    /// Its step results, in the order they were written.
    pub entries: Vec<Entry>,
    /// Its completed deferreds, in the order they completed.
    pub deferreds: Vec<Deferred>,
}

/// A deferred's stored result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deferred {
    /// The deferred's name within the execution.
    pub name: String,
    /// The encoded exit.
    pub value: Vec<u8>,
}

/// A durable timer: complete the deferred `name` of `execution_id` at `due_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    /// The execution to wake.
    pub execution_id: String,
    /// The deferred to complete when it fires.
    pub name: String,
    /// When, in ms since the Unix epoch.
    pub due_ms: u64,
}

/// What can go wrong in a store call.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    /// A status name that is not one of `running`, `suspended`, `complete`.
    #[error("unknown execution status {0:?}; expected running, suspended or complete")]
    UnknownStatus(String),
    /// A SQL store failed (see [`sql::SqlError`]).
    #[error(transparent)]
    Sql(#[from] sql::SqlError),
}

/// What a store answers with: a future that is ready at once on an immediate store.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A future the store hands out, boxed so that [`Store`] can be used as `dyn Store`.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The contract of a journal store, whatever keeps the records.
///
/// - **Writes** are batches of [`Op`]s. [`Store::write`] queues its batch when called, so
///   batches apply in call order; the answer, one [`OpResult`] per op, comes once the batch is
///   durable. First write wins: a step or deferred result, once stored, is never replaced, and a
///   complete execution's status and result are final. An op no store could keep is refused
///   alone ([`OpResult::Refused`]); the rest of its batch is applied.
/// - **Reads** take many ids at once and answer one item per id, in order.
/// - An **immediate** store (the memory store) answers every call at once: its futures are
///   ready when returned, so a caller may take the answer without awaiting (`now_or_never`).
/// - A store may depend on a **lease** (PostgreSQL's fenced lease): [`Store::lost`] resolves
///   when it is lost, and every later write fails. Stores without one never lose it.
pub trait Store: Send + Sync {
    /// Whether every answer is ready when the call returns.
    fn immediate(&self) -> bool;

    /// Queues `ops` now; the answer comes once they are durable.
    ///
    /// # Errors
    /// At once when the store takes no more writes (closed, or its lease lost); from the
    /// answer when the batch could not be committed.
    fn write(&self, ops: Vec<Op>) -> Result<Answer<'static, Vec<OpResult>>, StoreError>;

    /// [`Store::write`] answered at once, without a future, for an immediate store: the
    /// memory engine writes a few ops per step, and a boxed future per write cost more than
    /// the write. `None` (nothing written) for a store that answers later.
    fn write_now(&self, ops: Vec<Op>) -> Option<Vec<OpResult>> {
        let _ = ops;
        None
    }

    /// The executions `ids` with their journals and deferred results: one item per id, in
    /// order, `None` for an id the store does not hold. Each snapshot is consistent in itself.
    fn snapshots<'a>(&'a self, ids: &'a [String]) -> Answer<'a, Vec<Option<Snapshot>>>;

    /// The executions `ids`: one item per id, in order, `None` for one the store does not hold.
    fn executions<'a>(&'a self, ids: &'a [String]) -> Answer<'a, Vec<Option<Execution>>>;

    /// The timers due in `(after_ms, until_ms]`, earliest first (then by execution id and
    /// name), and when the first one after `until_ms` is due (`None`: there is none). An
    /// `after_ms` below 0 takes every timer due up to `until_ms`.
    fn timers_between(&self, after_ms: i64, until_ms: i64)
        -> Answer<'_, (Vec<Timer>, Option<u64>)>;

    /// Ids of the executions with `status`.
    fn with_status(&self, status: Status) -> Answer<'_, Vec<String>>;

    /// Up to `limit` executions that pass `filter`, newest first (by creation time, then by
    /// the order the store took them in), from just after `after` (`None`: from the newest).
    /// The page's `next` is where the following page starts, `None` once nothing is left.
    fn list<'a>(
        &'a self,
        filter: &'a Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Answer<'a, Page>;

    /// How many executions pass `filter`, counted up to `cap` (a count of `cap` means "at
    /// least"): counting stops there, so that a dashboard's counts stay cheap on a large store.
    fn count<'a>(&'a self, filter: &'a Filter, cap: u64) -> Answer<'a, u64>;

    /// The execution `id` with its whole journal, its deferred results and its timers, each
    /// with its time, read consistently; `None` if the store does not hold it.
    fn history<'a>(&'a self, id: &'a str) -> Answer<'a, Option<History>>;

    /// Up to `limit` unprocessed requests of `shards` that may be delivered at `now_ms` (not
    /// claimed within [`messages::CLAIM_MS`], `deliver_at` reached), in id order (snowflakes:
    /// save order per sender), each claimed at `now_ms`; and when the next one held back by `deliver_at` is due.
    fn unprocessed<'a>(
        &'a self,
        shards: Shards<'a>,
        limit: usize,
        now_ms: u64,
    ) -> Answer<'a, Unprocessed>;

    /// The final replies of requests `ids`: one item per id, in order, `None` for a request
    /// without one (or unknown).
    fn replies<'a>(&'a self, ids: &'a [i64]) -> Answer<'a, Vec<Option<Vec<u8>>>>;

    /// The durable states of the entity instances `(entity type, entity id)`: one item per
    /// address, in order, `None` for one with no stored state.
    fn entity_states<'a>(
        &'a self,
        addresses: &'a [(String, String)],
    ) -> Answer<'a, Vec<Option<Vec<u8>>>>;

    /// Up to `limit` pending items of `queue` whose claim does not stand at `now_ms` (never
    /// claimed, or claimed at least `claim_ms` before), in offer order, each claimed at
    /// `now_ms` with its attempt counted. Two concurrent takes never return the same item.
    fn take<'a>(
        &'a self,
        queue: &'a str,
        limit: usize,
        now_ms: u64,
        claim_ms: u64,
    ) -> Answer<'a, Vec<Taken>>;

    /// Resolves to why the store lost its lease; to `None` once it closes, or at once for a
    /// store without a lease.
    fn lost(&self) -> Pending<'_, Option<String>>;

    /// Stops taking writes, lets what is queued commit and releases what the store holds.
    /// Calling it again does nothing; a store with nothing to release stays usable.
    fn close(&self) -> Pending<'_, ()>;
}
