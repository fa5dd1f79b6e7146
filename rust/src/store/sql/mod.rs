//! The durable journal store, on SQLite (one file, WAL) or PostgreSQL.
//!
//! Same records and semantics as [`super::memory::MemoryStore`]: first write wins for step
//! results and deferred results, a complete execution's status and result are final and its
//! timers go when it completes.
//!
//! - **Group commit.** Writes are batches of [`Op`]s. One writer task per store takes the first
//!   batch waiting plus every batch queued behind it, applies them all, in order, in one
//!   transaction, commits, then answers each batch. Throughput comes from concurrency; the latency
//!   of a write stays about one commit.
//! - **Connection trouble is retried.** A transaction that fails because the database is
//!   unreachable (I/O error, pool timeout, server shutting down, SQLite busy, ...) is retried
//!   whole, with backoff from 50 ms doubling to 2 s, until it commits or the store is closed.
//!   Every op is idempotent, so a retried transaction whose first commit did land is harmless
//!   (a retried `start` returns the existing execution). Reads are retried for up to 30 s.
//!   Any other error fails the waiters of that transaction with [`SqlError::Database`]; a
//!   batch that fails among others is retried alone first, so one bad batch fails only its own
//!   waiter.
//! - **One engine per database and table prefix.** [`SqlStore::open`] takes an exclusive lock
//!   held until [`SqlStore::close`], drop or the death of the process: an `flock` of
//!   `<database file>.lock` on SQLite, a session advisory lock on PostgreSQL.
//! - **Migrations** are embedded (`rust/migrations/`) and applied by `open`, with the table
//!   prefix filled in; their bookkeeping lives in `<prefix>migrations`.

mod config;
mod connect;
mod queries;
#[cfg(test)]
mod tests;

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use thiserror::Error;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

pub use config::{check_prefix, Config, Durability, DEFAULT_PREFIX};
use connect::{Connector, EngineLock};
use queries::{Pool, Statements, WriterConn};

use super::{Entry, Execution, Snapshot, Status, Timer};
use crate::clock::now_ms;

/// First wait before retrying after a connection error.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a read keeps retrying before it fails.
const READ_GIVE_UP: Duration = Duration::from_secs(30);
/// The writer stops merging queued batches into a transaction past this many ops.
const MAX_OPS_PER_TRANSACTION: usize = 8192;

/// What can go wrong with a SQL store.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SqlError {
    /// A bad argument: URL scheme, table prefix, durability, or an op's value.
    #[error("{0}")]
    InvalidArgument(String),
    /// The database could not be reached or opened. `url` has its password masked.
    #[error("cannot open the plait store at {url}: {message}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// What failed.
        message: String,
    },
    /// Another engine holds the lock on this database and table prefix.
    #[error("another plait engine is running on {url} with table prefix {prefix}")]
    Locked {
        /// The URL, password masked.
        url: String,
        /// The table prefix.
        prefix: String,
    },
    /// Applying the embedded migrations failed.
    #[error("cannot migrate the plait store at {url}: {message}")]
    Migrate {
        /// The URL, password masked.
        url: String,
        /// What failed.
        message: String,
    },
    /// The database refused a statement; retrying would not help.
    #[error("the plait store at {url} failed: {message}")]
    Database {
        /// The URL, password masked.
        url: String,
        /// The database's error.
        message: String,
    },
    /// A read kept failing on connection errors until it gave up.
    #[error("the plait store at {url} stayed unreachable for {seconds} s: {message}")]
    Unavailable {
        /// The URL, password masked.
        url: String,
        /// How long the read retried.
        seconds: u64,
        /// The last connection error.
        message: String,
    },
    /// The store was closed while the database was unreachable, with this write not yet
    /// committed: it may or may not have been applied.
    #[error(
        "the plait store at {url} was closed while the database was unreachable ({message}); \
         the write may or may not have been applied"
    )]
    Abandoned {
        /// The URL, password masked.
        url: String,
        /// The last connection error.
        message: String,
    },
    /// The store is closed.
    #[error("the plait store at {url} is closed")]
    Closed {
        /// The URL, password masked.
        url: String,
    },
}

/// One write, applied in a transaction with the rest of its batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Records a new running execution unless `id` exists. [`OpResult::Created`], or
    /// [`OpResult::Existing`] with the stored execution (unchanged).
    Start {
        /// The execution's id.
        id: String,
        /// The workflow's name.
        workflow: String,
        /// The encoded payload.
        payload: Vec<u8>,
        /// The execution that started this one, if any.
        parent: Option<String>,
    },
    /// Stores a step result unless its key has one. [`OpResult::Done`]: whether it was stored
    /// (`false` also when the execution is unknown).
    Append {
        /// The execution's id.
        id: String,
        /// The step result.
        entry: Entry,
    },
    /// Stores a deferred's result unless it has one. [`OpResult::Done`]: whether it was
    /// stored; [`OpResult::UnknownExecution`].
    Deferred {
        /// The execution's id.
        id: String,
        /// The deferred's name.
        name: String,
        /// The encoded exit.
        value: Vec<u8>,
    },
    /// Moves an execution to `status` with `result`; completing it drops its timers.
    /// [`OpResult::Done`]: `false` if the execution is complete (its result is final) or
    /// unknown.
    Status {
        /// The execution's id.
        id: String,
        /// The new status.
        status: Status,
        /// The encoded result.
        result: Option<Vec<u8>>,
    },
    /// Records an interrupt request. [`OpResult::Done`]: `false` if the execution is complete;
    /// [`OpResult::UnknownExecution`].
    Interrupt {
        /// The execution's id.
        id: String,
    },
    /// Stores a durable timer unless one with that execution and name exists.
    /// [`OpResult::Done`]: whether it was stored (`false` also when the execution is unknown).
    Timer(Timer),
    /// Forgets a timer. [`OpResult::Done`]: whether it was stored.
    Untimer {
        /// The timer's execution.
        execution_id: String,
        /// The timer's name.
        name: String,
    },
}

/// The outcome of one [`Op`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// `Start` created the execution.
    Created,
    /// `Start` found the execution already stored, as here.
    Existing(Execution),
    /// Whether the op changed anything.
    Done(bool),
    /// The op named an execution the store does not hold.
    UnknownExecution,
}

impl Op {
    fn texts(&self) -> Vec<(&'static str, &str)> {
        match self {
            Op::Start {
                id,
                workflow,
                parent,
                ..
            } => {
                let mut texts = vec![("id", id.as_str()), ("workflow", workflow.as_str())];
                if let Some(parent) = parent {
                    texts.push(("parent", parent.as_str()));
                }
                texts
            }
            Op::Append { id, entry } => vec![("id", id), ("key", &entry.key)],
            Op::Deferred { id, name, .. } => vec![("id", id), ("name", name)],
            Op::Status { id, .. } | Op::Interrupt { id } => vec![("id", id)],
            Op::Timer(Timer {
                execution_id, name, ..
            })
            | Op::Untimer { execution_id, name } => {
                vec![("execution_id", execution_id), ("name", name)]
            }
        }
    }

    /// Checks what the database could not store: a NUL character in a text (PostgreSQL refuses
    /// it; SQLite is held to the same rule) or a due instant past `2^63 - 1`.
    fn check(&self) -> Result<(), String> {
        for (field, text) in self.texts() {
            if text.contains('\0') {
                return Err(format!("{field} {text:?} holds a NUL character"));
            }
        }
        if let Op::Timer(timer) = self {
            if i64::try_from(timer.due_ms).is_err() {
                return Err(format!(
                    "due_ms {} is out of range: expected at most 2^63 - 1",
                    timer.due_ms
                ));
            }
        }
        Ok(())
    }
}

/// Checks every op of a batch before anything is queued.
///
/// # Errors
/// [`SqlError::InvalidArgument`] naming the first bad op: `ops[<index>]: ...`.
pub fn check_ops(ops: &[Op]) -> Result<(), SqlError> {
    for (index, op) in ops.iter().enumerate() {
        op.check()
            .map_err(|message| SqlError::InvalidArgument(format!("ops[{index}]: {message}")))?;
    }
    Ok(())
}

/// Whether a failure is the database being unreachable (or busy) rather than refusing the
/// statement: those are retried.
fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            match code.parse::<i32>() {
                // SQLite's extended result code: BUSY (5) or LOCKED (6), in any variant.
                Ok(sqlite) => matches!(sqlite & 0xff, 5 | 6),
                // PostgreSQL's SQLSTATE: connection exceptions, the server shutting down or
                // refusing connections, serialization failures and deadlocks.
                Err(_) => {
                    code.starts_with("08")
                        || matches!(
                            code.as_ref(),
                            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
                        )
                }
            }
        }),
        _ => false,
    }
}

/// A write batch and where its results go.
struct Batch {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<OpResult>, SqlError>>,
}

/// The journal of executions in a SQL database. See the [module documentation](self).
///
/// Every method must run inside a tokio runtime.
pub struct SqlStore {
    pool: Pool,
    statements: Arc<Statements>,
    url: String,
    prefix: String,
    secrets: Vec<String>,
    sender: Mutex<Option<mpsc::UnboundedSender<Batch>>>,
    closing: watch::Sender<bool>,
    writer: tokio::sync::Mutex<Option<JoinHandle<EngineLock>>>,
    transactions: Arc<AtomicU64>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl SqlStore {
    /// Opens the store `config` names: locks it for this engine, connects, migrates, and
    /// starts the writer.
    ///
    /// # Errors
    /// [`SqlError::Connect`] when the database cannot be reached within 5 s (or the URL is
    /// wrong), [`SqlError::Locked`] when another engine holds it, [`SqlError::Migrate`].
    pub async fn open(config: &Config) -> Result<Self, SqlError> {
        let connect::Opened {
            pool,
            writer,
            connector,
            lock,
            dialect,
        } = connect::open(config).await?;
        let statements = Arc::new(Statements::new(dialect, &config.prefix));
        let (sender, receiver) = mpsc::unbounded_channel();
        let (closing, closing_rx) = watch::channel(false);
        let transactions = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            conn: Some(writer),
            connector,
            statements: Arc::clone(&statements),
            url: config.masked_url.clone(),
            secrets: config.secrets.clone(),
            closing: closing_rx,
            transactions: Arc::clone(&transactions),
        };
        let writer = tokio::spawn(writer.run(receiver, lock));
        Ok(Self {
            pool,
            statements,
            url: config.masked_url.clone(),
            prefix: config.prefix.clone(),
            secrets: config.secrets.clone(),
            sender: Mutex::new(Some(sender)),
            closing,
            writer: tokio::sync::Mutex::new(Some(writer)),
            transactions,
        })
    }

    /// The URL, password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The table prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many write transactions have committed.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    fn closed(&self) -> SqlError {
        SqlError::Closed {
            url: self.url.clone(),
        }
    }

    /// Queues `ops` for the writer now, and returns the wait for their results, one per op,
    /// which arrive once the transaction holding them has committed. Batches are applied in
    /// the order `write` was called; dropping the returned future does not withdraw the batch.
    ///
    /// # Errors
    /// At once: [`SqlError::InvalidArgument`] for an op the database could not store,
    /// [`SqlError::Closed`]. From the future: [`SqlError::Database`] if the transaction failed,
    /// [`SqlError::Abandoned`] if the store was closed while the database was unreachable.
    pub fn write(
        &self,
        ops: Vec<Op>,
    ) -> Result<impl Future<Output = Result<Vec<OpResult>, SqlError>> + Send + 'static, SqlError>
    {
        check_ops(&ops)?;
        let (reply, results) = oneshot::channel();
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .ok_or_else(|| self.closed())?
            .send(Batch { ops, reply })
            .map_err(|_| self.closed())?;
        let closed = self.closed();
        Ok(async move { results.await.unwrap_or(Err(closed)) })
    }

    /// Runs a read, retrying connection errors for up to [`READ_GIVE_UP`].
    async fn read<T, F, Fut>(&self, attempt: F) -> Result<T, SqlError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let started = tokio::time::Instant::now();
        let mut delay = RETRY_FIRST;
        loop {
            if *self.closing.borrow() {
                return Err(self.closed());
            }
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(err) if is_transient(&err) => {
                    if *self.closing.borrow() {
                        return Err(self.closed());
                    }
                    if started.elapsed() + delay > READ_GIVE_UP {
                        return Err(SqlError::Unavailable {
                            url: self.url.clone(),
                            seconds: READ_GIVE_UP.as_secs(),
                            message: config::scrub(err.to_string(), &self.secrets),
                        });
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
                Err(err) => {
                    return Err(SqlError::Database {
                        url: self.url.clone(),
                        message: config::scrub(err.to_string(), &self.secrets),
                    })
                }
            }
        }
    }

    /// The execution `id` with its whole journal and deferred results, read consistently.
    ///
    /// # Errors
    /// [`SqlError::Database`], [`SqlError::Unavailable`], [`SqlError::Closed`].
    pub async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>, SqlError> {
        if id.contains('\0') {
            return Ok(None);
        }
        self.read(|| self.pool.snapshot(&self.statements, id)).await
    }

    /// The execution `id`, if the store holds it.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn execution(&self, id: &str) -> Result<Option<Execution>, SqlError> {
        if id.contains('\0') {
            return Ok(None);
        }
        self.read(|| self.pool.execution(&self.statements, id))
            .await
    }

    /// Every stored timer, earliest first.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn timers(&self) -> Result<Vec<Timer>, SqlError> {
        self.read(|| self.pool.timers(&self.statements)).await
    }

    /// Ids of the executions with `status`.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn with_status(&self, status: Status) -> Result<Vec<String>, SqlError> {
        self.read(|| self.pool.with_status(&self.statements, status))
            .await
    }

    /// Stops taking writes, lets the writer commit what is queued (giving up on it if the
    /// database is unreachable), releases the engine lock and closes the connections. Calling
    /// it again does nothing.
    pub async fn close(&self) {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.closing.send_replace(true);
        let mut writer = self.writer.lock().await;
        if let Some(handle) = writer.take() {
            if let Ok(lock) = handle.await {
                lock.release().await;
            }
        }
        drop(writer);
        self.pool.close().await;
    }
}

/// The task that owns the write side: it applies queued batches in group transactions and
/// holds the engine lock until it ends.
struct Writer {
    /// `None` after a connection error, until the next attempt reconnects.
    conn: Option<WriterConn>,
    connector: Connector,
    statements: Arc<Statements>,
    url: String,
    secrets: Vec<String>,
    closing: watch::Receiver<bool>,
    transactions: Arc<AtomicU64>,
}

impl Writer {
    async fn run(
        mut self,
        mut queue: mpsc::UnboundedReceiver<Batch>,
        lock: EngineLock,
    ) -> EngineLock {
        while let Some(first) = queue.recv().await {
            let mut ops = first.ops.len();
            let mut batches = vec![first];
            while ops < MAX_OPS_PER_TRANSACTION {
                match queue.try_recv() {
                    Ok(batch) => {
                        ops += batch.ops.len();
                        batches.push(batch);
                    }
                    Err(_) => break,
                }
            }
            let all: Vec<&[Op]> = batches.iter().map(|b| b.ops.as_slice()).collect();
            match self.commit(&all).await {
                Ok(results) => {
                    for (batch, results) in batches.into_iter().zip(results) {
                        let _ = batch.reply.send(Ok(results));
                    }
                }
                Err(SqlError::Database { .. }) if batches.len() > 1 => {
                    // One batch may be at fault: give each its own transaction and outcome.
                    for batch in batches {
                        let outcome = self
                            .commit(&[batch.ops.as_slice()])
                            .await
                            .map(|mut results| results.pop().unwrap_or_default());
                        let _ = batch.reply.send(outcome);
                    }
                }
                Err(err) => {
                    for batch in batches {
                        let _ = batch.reply.send(Err(err.clone()));
                    }
                }
            }
        }
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
        lock
    }

    /// Whether the store is closing (or gone).
    fn closing(&self) -> bool {
        *self.closing.borrow() || self.closing.has_changed().is_err()
    }

    /// One try at applying `batches` in one transaction, (re)connecting first if needed.
    async fn attempt(&mut self, batches: &[&[Op]]) -> Result<queries::Results, sqlx::Error> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.connector.connect().await?),
        };
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        conn.write(&self.statements, batches, now).await
    }

    /// Applies `batches` in one transaction, retrying it on connection errors until it
    /// commits or the store closes.
    async fn commit(&mut self, batches: &[&[Op]]) -> Result<queries::Results, SqlError> {
        let mut delay = RETRY_FIRST;
        loop {
            match self.attempt(batches).await {
                Ok(results) => {
                    self.transactions.fetch_add(1, Ordering::Relaxed);
                    return Ok(results);
                }
                Err(err) if is_transient(&err) => {
                    // A connection that no longer answers is replaced at the next attempt.
                    if let Some(mut conn) = self.conn.take() {
                        if conn.ping().await {
                            self.conn = Some(conn);
                        } else {
                            conn.close().await;
                        }
                    }
                    if self.closing() {
                        return Err(SqlError::Abandoned {
                            url: self.url.clone(),
                            message: config::scrub(err.to_string(), &self.secrets),
                        });
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = self.closing.wait_for(|closing| *closing) => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
                Err(err) => {
                    return Err(SqlError::Database {
                        url: self.url.clone(),
                        message: config::scrub(err.to_string(), &self.secrets),
                    })
                }
            }
        }
    }
}
