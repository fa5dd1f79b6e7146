//! The journal store: executions, their journals of step results, deferred results and
//! durable timers.
//!
//! Values are opaque bytes (JSON written by the Python side); the store never decodes them.
//! [`memory::MemoryStore`] keeps everything in process; [`sql::SqlStore`] keeps the same records,
//! with the same semantics, in SQLite or PostgreSQL.

pub mod memory;
pub mod sql;

use thiserror::Error;

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
    /// Its completed deferreds: `(name, encoded exit)`, in the order they completed.
    pub deferreds: Vec<(String, Vec<u8>)>,
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
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    /// The call names an execution the store does not hold.
    #[error("unknown execution {0:?}")]
    UnknownExecution(String),
    /// A status name that is not one of `running`, `suspended`, `complete`.
    #[error("unknown execution status {0:?}; expected running, suspended or complete")]
    UnknownStatus(String),
    /// A completed execution cannot change status again.
    #[error("execution {0:?} is complete; its result is final")]
    AlreadyComplete(String),
}
