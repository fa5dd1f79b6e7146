//! The durable journal store, on SQLite (one file, WAL) or PostgreSQL.
//!
//! Same records and semantics as [`super::memory::MemoryStore`]: first write wins for step
//! results and deferred results, a complete execution's status and result are final and its
//! timers go when it completes.
//!
//! - **Group commit.** Writes are batches of [`Op`]s. One writer per store takes the first batch
//!   waiting plus every batch queued behind it, applies them all, in order, in one transaction,
//!   commits, then answers each batch. Throughput comes from concurrency; the latency of a write
//!   stays about one commit.
//! - **Few hops per commit.** On PostgreSQL the writer is a tokio task that sends a whole
//!   transaction as one statement, a call of the `<prefix>apply` function the migrations create
//!   (one round trip, commit included). On SQLite it is an OS thread of its own that runs the
//!   transaction through rusqlite with cached statements: one thread hop in and one out per
//!   commit, where sqlx's SQLite driver hopped threads twice per statement. SQLite reads run on
//!   reader threads the same way.
//! - **Writes independent of table size.** Executions have an integer key in insertion order
//!   (`no`) beside their random id; journal and deferred rows are keyed by it, so their inserts
//!   land at the right edge of their B-trees. The writer remembers the `no` of the executions it
//!   created or found in committed transactions (see `numbers.rs`), so an op on one of them goes
//!   by number and leaves the index of random ids alone: only a `start` of a new execution, or
//!   an op on one the writer has not met, descends it. On PostgreSQL a status change is a HOT
//!   update (no indexed column changes; the executions not complete are listed in
//!   `<prefix>active` instead of an index on status), so it writes no index entry either.
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
mod lease;
mod numbers;
mod postgres;
mod sqlite;
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

use rustc_hash::FxHashMap;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

pub use config::{check_prefix, Config, Durability, DEFAULT_PREFIX};
use connect::EngineLock;
use lease::Lease;
pub use lease::{Fence, LeaseState, LeaseTimes};

use super::{Entry, Execution, Snapshot, Status, Timer};

/// First wait before retrying after a connection error.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a read keeps retrying before it fails.
const READ_GIVE_UP: Duration = Duration::from_secs(30);
/// The writer stops merging queued batches into a transaction past this many ops.
const MAX_OPS_PER_TRANSACTION: usize = 8192;
/// Batched reads take this many ids per query (or read transaction): enough to amortise the
/// round trip, few enough that one answer stays a few MB.
const READ_CHUNK: usize = 500;

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
    /// This process no longer holds the lease its writes depend on: another process took the
    /// database (or the shard) over, and the database refused the write. Nothing of it was
    /// applied, and no later write of this store will be.
    #[error("the plait store at {url} refused the write: this process lost its lease ({message})")]
    Fenced {
        /// The URL, password masked.
        url: String,
        /// Why the lease is lost.
        message: String,
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

/// Why one attempt at a statement or transaction failed, as the retry logic sees it.
#[derive(Debug, Error)]
enum Failure {
    /// The database is unreachable or busy: worth retrying.
    #[error("{0}")]
    Transient(String),
    /// The database refused the statement; retrying would not help.
    #[error("{0}")]
    Refused(String),
    /// The store closed under the attempt.
    #[error("the store is closed")]
    Closed,
    /// The lease the attempt depends on is not held (expired, or taken over).
    #[error("{0}")]
    Fenced(String),
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err {
            if db.code().as_deref() == Some(lease::FENCED) {
                return Failure::Fenced(db.message().to_owned());
            }
        }
        if is_transient(&err) {
            Failure::Transient(err.to_string())
        } else {
            Failure::Refused(err.to_string())
        }
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(err: rusqlite::Error) -> Self {
        // BUSY and LOCKED (another connection holds the lock past the busy timeout) pass;
        // anything else SQLite says is about the statement or the file, and stays.
        let busy = matches!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        if busy {
            Failure::Transient(err.to_string())
        } else {
            Failure::Refused(err.to_string())
        }
    }
}

/// A stored value that the store's own writes could not have produced: a bad record, which no
/// retry would mend.
fn corrupt(what: &str) -> Failure {
    Failure::Refused(format!("the store holds an unreadable record: {what}"))
}

/// A step's position as stored, back to its type.
fn stored_seq(id: &str, seq: i64) -> Result<u32, Failure> {
    u32::try_from(seq).map_err(|_| corrupt(&format!("execution {id:?} has a step at seq {seq}")))
}

/// A status as stored, back to its type.
fn stored_status(id: &str, status: &str) -> Result<Status, Failure> {
    Status::parse(status).map_err(|_| corrupt(&format!("execution {id:?} has status {status:?}")))
}

/// A timer's due instant as stored, back to its type.
fn stored_due(due: i64) -> Result<u64, Failure> {
    u64::try_from(due).map_err(|_| corrupt(&format!("a timer is due at {due}")))
}

/// A due instant as the database stores it (`check_ops` refused larger ones).
fn due_to_i64(due_ms: u64) -> Result<i64, Failure> {
    i64::try_from(due_ms)
        .map_err(|_| Failure::Refused(format!("due_ms {due_ms} is above 2^63 - 1")))
}

/// A write batch and where its results go.
struct Batch {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<OpResult>, SqlError>>,
}

/// One transaction's results, per batch.
type Results = Vec<Vec<OpResult>>;

/// `first` and every batch queued behind it, up to [`MAX_OPS_PER_TRANSACTION`] ops: what one
/// transaction takes.
fn gather(first: Batch, queue: &mut mpsc::UnboundedReceiver<Batch>) -> Vec<Batch> {
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
    batches
}

/// Waits between retries: from [`RETRY_FIRST`], doubling up to [`RETRY_MAX`].
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(RETRY_FIRST)
    }

    fn next(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (delay * 2).min(RETRY_MAX);
        delay
    }
}

/// What both writers need besides their connection: how to word errors, and the commit count.
struct WriterContext {
    url: String,
    secrets: Vec<String>,
    transactions: Arc<AtomicU64>,
}

impl WriterContext {
    fn committed(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    fn refused(&self, message: &str) -> SqlError {
        SqlError::Database {
            url: self.url.clone(),
            message: config::scrub(message.to_owned(), &self.secrets),
        }
    }

    fn abandoned(&self, message: &str) -> SqlError {
        SqlError::Abandoned {
            url: self.url.clone(),
            message: config::scrub(message.to_owned(), &self.secrets),
        }
    }

    fn scrubbed(&self, message: &str) -> String {
        config::scrub(message.to_owned(), &self.secrets)
    }

    fn fenced(&self, message: &str) -> SqlError {
        SqlError::Fenced {
            url: self.url.clone(),
            message: config::scrub(message.to_owned(), &self.secrets),
        }
    }
}

/// The reads of either backend.
enum Backend {
    Sqlite(sqlite::Readers),
    Postgres(postgres::Reads),
}

/// The journal of executions in a SQL database. See the [module documentation](self).
///
/// Every method must run inside a tokio runtime.
pub struct SqlStore {
    backend: Backend,
    url: String,
    prefix: String,
    secrets: Vec<String>,
    sender: Mutex<Option<mpsc::UnboundedSender<Batch>>>,
    closing: watch::Sender<bool>,
    /// Resolves to the engine lock when the writer has ended.
    writer: tokio::sync::Mutex<Option<oneshot::Receiver<EngineLock>>>,
    /// Wakes the SQLite writer from a backoff sleep when the store closes.
    writer_thread: Option<std::thread::Thread>,
    transactions: Arc<AtomicU64>,
    /// The lease every write depends on (PostgreSQL; SQLite's file lock cannot lapse).
    lease: Option<Arc<Lease>>,
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
        let opened = connect::open(config).await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let (closing, closing_rx) = watch::channel(false);
        let (finished, writer) = oneshot::channel();
        let transactions = Arc::new(AtomicU64::new(0));
        let context = WriterContext {
            url: config.masked_url.clone(),
            secrets: config.secrets.clone(),
            transactions: Arc::clone(&transactions),
        };
        let mut lease = None;
        let (backend, writer_thread) = match opened {
            connect::Opened::Sqlite { path, lock } => {
                let fail = |err: Failure| SqlError::Connect {
                    url: config.masked_url.clone(),
                    message: config.scrub(err.to_string()),
                };
                let readers =
                    sqlite::Readers::start(path.clone(), &config.prefix, config.durability)
                        .await
                        .map_err(fail)?;
                let thread = sqlite::Writer::start(
                    path,
                    &config.prefix,
                    config.durability,
                    context,
                    receiver,
                    lock,
                    finished,
                )
                .await
                .map_err(fail)?;
                (Backend::Sqlite(readers), Some(thread))
            }
            connect::Opened::Postgres {
                pool,
                writer,
                options,
                lock,
                lease: engine_lease,
            } => {
                let statements = Arc::new(postgres::Statements::new(&config.prefix));
                let task = postgres::Writer::new(
                    writer,
                    *options,
                    Arc::clone(&statements),
                    context,
                    closing_rx,
                    Arc::clone(&engine_lease),
                );
                lease = Some(engine_lease);
                tokio::spawn(task.run(receiver, lock, finished));
                (
                    Backend::Postgres(postgres::Reads::new(pool, statements)),
                    None,
                )
            }
        };
        Ok(Self {
            backend,
            url: config.masked_url.clone(),
            prefix: config.prefix.clone(),
            secrets: config.secrets.clone(),
            sender: Mutex::new(Some(sender)),
            closing,
            writer: tokio::sync::Mutex::new(Some(writer)),
            writer_thread,
            transactions,
            lease,
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
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = sender.as_ref().ok_or_else(|| self.closed())?;
        if let Some(LeaseState::Lost(why)) = self.lease_state() {
            return Err(SqlError::Fenced {
                url: self.url.clone(),
                message: why,
            });
        }
        sender
            .send(Batch { ops, reply })
            .map_err(|_| self.closed())?;
        let closed = self.closed();
        Ok(async move { results.await.unwrap_or(Err(closed)) })
    }

    /// Runs a read, retrying connection errors for up to [`READ_GIVE_UP`].
    async fn read<T, F, Fut>(&self, attempt: F) -> Result<T, SqlError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let started = tokio::time::Instant::now();
        let mut backoff = Backoff::new();
        loop {
            if *self.closing.borrow() {
                return Err(self.closed());
            }
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(Failure::Transient(message)) => {
                    if *self.closing.borrow() {
                        return Err(self.closed());
                    }
                    let delay = backoff.next();
                    if started.elapsed() + delay > READ_GIVE_UP {
                        return Err(SqlError::Unavailable {
                            url: self.url.clone(),
                            seconds: READ_GIVE_UP.as_secs(),
                            message: config::scrub(message, &self.secrets),
                        });
                    }
                    tokio::time::sleep(delay).await;
                }
                Err(Failure::Refused(message)) => {
                    return Err(SqlError::Database {
                        url: self.url.clone(),
                        message: config::scrub(message, &self.secrets),
                    })
                }
                Err(Failure::Closed) => return Err(self.closed()),
                Err(Failure::Fenced(message)) => {
                    return Err(SqlError::Fenced {
                        url: self.url.clone(),
                        message: config::scrub(message, &self.secrets),
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
        let mut found = self.snapshots(&[id.to_owned()]).await?;
        Ok(found.pop().flatten())
    }

    /// The executions `ids` with their journals and deferred results: one item per id, in
    /// order, `None` for an id the store does not hold. Ids are read [`READ_CHUNK`] at a time,
    /// each chunk in one read transaction (on PostgreSQL, one statement), so each snapshot is
    /// consistent in itself and a chunk costs a constant number of queries.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn snapshots(&self, ids: &[String]) -> Result<Vec<Option<Snapshot>>, SqlError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(READ_CHUNK) {
            let wanted = storable(chunk);
            let found = match &self.backend {
                _ if wanted.is_empty() => FxHashMap::default(),
                Backend::Sqlite(readers) => self.read(|| readers.snapshots(wanted.clone())).await?,
                Backend::Postgres(reads) => self.read(|| reads.snapshots(&wanted)).await?,
            };
            out.extend(place(chunk, found));
        }
        Ok(out)
    }

    /// The execution `id`, if the store holds it.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn execution(&self, id: &str) -> Result<Option<Execution>, SqlError> {
        let mut found = self.executions(&[id.to_owned()]).await?;
        Ok(found.pop().flatten())
    }

    /// The executions `ids`: one item per id, in order, `None` for an id the store does not
    /// hold; read as [`SqlStore::snapshots`] reads them.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn executions(&self, ids: &[String]) -> Result<Vec<Option<Execution>>, SqlError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(READ_CHUNK) {
            let wanted = storable(chunk);
            let found = match &self.backend {
                _ if wanted.is_empty() => FxHashMap::default(),
                Backend::Sqlite(readers) => {
                    self.read(|| readers.executions(wanted.clone())).await?
                }
                Backend::Postgres(reads) => self.read(|| reads.executions(&wanted)).await?,
            };
            out.extend(place(chunk, found));
        }
        Ok(out)
    }

    /// Every stored timer, earliest first.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn timers(&self) -> Result<Vec<Timer>, SqlError> {
        match &self.backend {
            Backend::Sqlite(readers) => self.read(|| readers.timers()).await,
            Backend::Postgres(reads) => self.read(|| reads.timers()).await,
        }
    }

    /// The timers due in `(after_ms, until_ms]`, earliest first, and when the first timer
    /// after `until_ms` is due (`None`: there is none), read consistently: a range of the index
    /// on due instants, however many timers the store holds. An `after_ms` below 0 takes every
    /// timer due up to `until_ms`.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn timers_between(
        &self,
        after_ms: i64,
        until_ms: i64,
    ) -> Result<(Vec<Timer>, Option<u64>), SqlError> {
        match &self.backend {
            Backend::Sqlite(readers) => {
                self.read(|| readers.timers_between(after_ms, until_ms))
                    .await
            }
            Backend::Postgres(reads) => {
                self.read(|| reads.timers_between(after_ms, until_ms)).await
            }
        }
    }

    /// Ids of the executions with `status`.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn with_status(&self, status: Status) -> Result<Vec<String>, SqlError> {
        match &self.backend {
            Backend::Sqlite(readers) => self.read(|| readers.with_status(status)).await,
            Backend::Postgres(reads) => self.read(|| reads.with_status(status)).await,
        }
    }

    /// Where the store's lease stands: `None` on SQLite, whose file lock cannot lapse.
    pub fn lease_state(&self) -> Option<LeaseState> {
        self.lease.as_ref().map(|lease| lease.state())
    }

    /// Waits until this store loses its lease, and returns why; `None` once the store is
    /// closed, or at once on SQLite (whose file lock cannot lapse).
    pub async fn lost(&self) -> Option<String> {
        let lease = self.lease.as_ref()?;
        let mut closing = self.closing.subscribe();
        let why = tokio::select! {
            why = lease.lost() => why,
            _ = closing.wait_for(|closing| *closing) => return None,
        };
        (!*self.closing.borrow()).then_some(why)
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
        if let Some(thread) = &self.writer_thread {
            thread.unpark();
        }
        let mut writer = self.writer.lock().await;
        if let Some(finished) = writer.take() {
            if let Ok(lock) = finished.await {
                lock.release().await;
            }
        }
        drop(writer);
        match &self.backend {
            Backend::Sqlite(readers) => readers.close().await,
            Backend::Postgres(reads) => reads.close().await,
        }
    }
}

impl Drop for SqlStore {
    fn drop(&mut self) {
        // The writer ends once its queue is closed and drained; a writer asleep between
        // retries should not wait out its backoff to notice.
        self.sender
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = &self.writer_thread {
            thread.unpark();
        }
    }
}

/// The ids of `chunk` worth asking the database for: every distinct one it could store (a NUL
/// character it could not).
fn storable(chunk: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = chunk
        .iter()
        .filter(|id| !id.contains('\0'))
        .cloned()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// `found` (by id) laid out in the order of `chunk`, `None` where nothing was found.
fn place<T: Clone>(chunk: &[String], mut found: FxHashMap<String, T>) -> Vec<Option<T>> {
    let mut left: FxHashMap<&str, usize> = FxHashMap::default();
    for id in chunk {
        *left.entry(id.as_str()).or_default() += 1;
    }
    chunk
        .iter()
        .map(|id| {
            let count = left.entry(id.as_str()).or_default();
            *count -= 1;
            // An id asked for more than once is cloned for all but its last place.
            if *count == 0 {
                found.remove(id)
            } else {
                found.get(id).cloned()
            }
        })
        .collect()
}
