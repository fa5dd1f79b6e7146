//! The durable journal store, on SQLite (one file, WAL) or PostgreSQL.
//!
//! Keeps the [`Store`] contract as [`super::memory::MemoryStore`] does: first write wins for
//! step results and deferred results, a complete execution's status and result are final and
//! its timers go when it completes.
//!
//! - **Group commit.** Writes are batches of [`Op`]s. One writer per store (`writer.rs`, the
//!   same loop for both backends) takes the first batch waiting plus every batch queued behind
//!   it, has the backend apply them all, in order, in one transaction, then answers each batch.
//!   Throughput comes from concurrency; the latency of a write stays about one commit.
//! - **Few hops per commit.** On PostgreSQL the writer is a tokio task that sends a whole
//!   transaction as one statement, a call of the `<prefix>apply_fenced` function the migrations
//!   create (one round trip, commit included). On SQLite it is an OS thread of its own (the
//!   writer loop under a current-thread runtime) that runs the transaction through rusqlite with
//!   cached statements: one thread hop in and one out per commit, where sqlx's SQLite driver
//!   hopped threads twice per statement. SQLite reads run on reader threads the same way.
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
//!   `<database file>.lock` on SQLite, a fenced lease on PostgreSQL (`lease.rs`).
//! - **Migrations** are embedded (`rust/migrations/`) and applied by `open`, with the table
//!   prefix filled in; their bookkeeping lives in `<prefix>migrations`.

mod config;
mod connect;
mod lease;
mod listing;
mod numbers;
mod postgres;
mod runners;
mod sqlite;
#[cfg(test)]
mod tests;
mod writer;

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
pub use lease::{shard_lease, Fence, LeaseState, LeaseTimes, ShardFences};
pub use runners::{RunnerRow, RunnerStorage};

use super::{
    listing::MAX_LIMIT, Answer, Cursor, Execution, Filter, History, Op, OpResult, Page, Pending,
    Refusals, Shards, Snapshot, Status, Store, StoreError, Taken, Timer, Unprocessed,
};
#[cfg(test)]
use writer::MAX_OPS_PER_TRANSACTION;
use writer::{Backoff, Batch, Writer, WriterContext};

/// How long a read keeps retrying before it fails.
const READ_GIVE_UP: Duration = Duration::from_secs(30);
/// Batched reads take this many ids per query (or read transaction): enough to amortise the
/// round trip, few enough that one answer stays a few MB.
const READ_CHUNK: usize = 500;

/// What can go wrong with a SQL store.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SqlError {
    /// A bad argument: URL scheme, table prefix, durability or lease times.
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

/// An instant (or number) of execution `id` as stored, back to its type.
fn stored_ms(id: &str, value: i64) -> Result<u64, Failure> {
    u64::try_from(value).map_err(|_| corrupt(&format!("execution {id:?} has a time of {value}")))
}

/// A timer's due instant as stored, back to its type.
fn stored_due(due: i64) -> Result<u64, Failure> {
    u64::try_from(due).map_err(|_| corrupt(&format!("a timer is due at {due}")))
}

/// A due instant as the database stores it (`Op::check` refused larger ones).
fn due_to_i64(due_ms: u64) -> Result<i64, Failure> {
    i64::try_from(due_ms)
        .map_err(|_| Failure::Refused(format!("due_ms {due_ms} is above 2^63 - 1")))
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
    transactions: Arc<AtomicU64>,
    /// The lease every write depends on (PostgreSQL; SQLite's file lock cannot lapse).
    lease: Option<Arc<Lease>>,
    /// A runner's shard leases (PostgreSQL opened for a cluster).
    shards: Option<Arc<ShardFences>>,
    /// How to open more connections (PostgreSQL): a runner's lock session, its listener.
    options: Option<sqlx::postgres::PgConnectOptions>,
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
        let mut shards = None;
        let mut pg_options = None;
        let backend = match opened {
            connect::Opened::Sqlite { path, lock } => {
                let fail = |err: Failure| SqlError::Connect {
                    url: config.masked_url.clone(),
                    message: config.scrub(err.to_string()),
                };
                let readers =
                    sqlite::Readers::start(path.clone(), &config.prefix, config.durability)
                        .await
                        .map_err(fail)?;
                sqlite::start_writer(path, &config.prefix, config.durability, move |connection| {
                    Writer::new(connection, context, closing_rx).run(receiver, lock, finished)
                })
                .await
                .map_err(fail)?;
                Backend::Sqlite(readers)
            }
            connect::Opened::Postgres {
                pool,
                writer,
                options,
                lock,
                lease: engine_lease,
            } => {
                let statements = Arc::new(postgres::Statements::new(&config.prefix));
                let fencing = if let Some(engine_lease) = engine_lease {
                    lease = Some(Arc::clone(&engine_lease));
                    postgres::Fencing::Engine(engine_lease)
                } else {
                    let fences = Arc::new(ShardFences::default());
                    shards = Some(Arc::clone(&fences));
                    postgres::Fencing::Shards(fences)
                };
                pg_options = Some((*options).clone());
                let connection = postgres::WriteConnection::new(
                    writer,
                    *options,
                    Arc::clone(&statements),
                    fencing,
                );
                let writer = Writer::new(connection, context, closing_rx);
                tokio::spawn(writer.run(receiver, lock, finished));
                Backend::Postgres(postgres::Reads::new(pool, statements))
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
            transactions,
            lease,
            shards,
            options: pg_options,
        })
    }

    /// The shard leases this runner holds, which fence its owned writes: `Some` for a
    /// PostgreSQL store opened for a cluster ([`Config::for_cluster`]).
    pub fn shard_fences(&self) -> Option<Arc<ShardFences>> {
        self.shards.clone()
    }

    /// The registration and shard leases of the runner at `address` (on a connection of its
    /// own, holding its session lock unless `advisory` is off): `None` unless the store was
    /// opened for a cluster on PostgreSQL.
    pub fn runner_storage(&self, address: &str, advisory: bool) -> Option<RunnerStorage> {
        self.shards.as_ref()?;
        Some(RunnerStorage::new(
            self.options.clone()?,
            &self.prefix,
            address,
            advisory,
            self.url.clone(),
            self.secrets.clone(),
        ))
    }

    /// Listens for the store's notifications (PostgreSQL): requests saved for shards, replies
    /// saved, runners joining or leaving. `None` on SQLite.
    ///
    /// # Errors
    /// When the listening connection cannot be opened.
    pub async fn listen(&self) -> Result<Option<Notifications>, SqlError> {
        let Some(options) = &self.options else {
            return Ok(None);
        };
        let fail = |err: sqlx::Error| SqlError::Connect {
            url: self.url.clone(),
            message: config::scrub(err.to_string(), &self.secrets),
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(connect::CONNECT_TIMEOUT)
            .connect_lazy_with(options.clone());
        let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
            .await
            .map_err(fail)?;
        let channels = [
            format!("{}requests", self.prefix),
            format!("{}replies", self.prefix),
            format!("{}wake", self.prefix),
            format!("{}ended", self.prefix),
            format!("{}runners", self.prefix),
        ];
        listener
            .listen_all(channels.iter().map(String::as_str))
            .await
            .map_err(fail)?;
        Ok(Some(Notifications {
            listener,
            prefix: self.prefix.clone(),
        }))
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
    /// An op the database could not store is answered [`OpResult::Refused`] and never sent;
    /// the others are.
    ///
    /// # Errors
    /// At once: [`SqlError::Closed`], [`SqlError::Fenced`] once the lease is lost. From the
    /// future: [`SqlError::Database`] if the transaction failed, [`SqlError::Abandoned`] if the
    /// store was closed while the database was unreachable.
    pub fn write(
        &self,
        mut ops: Vec<Op>,
    ) -> Result<impl Future<Output = Result<Vec<OpResult>, SqlError>> + Send + 'static, SqlError>
    {
        let refusals = Refusals::take(&mut ops);
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = sender.as_ref().ok_or_else(|| self.closed())?;
        if let Some(LeaseState::Lost(why)) = self.lease_state() {
            return Err(SqlError::Fenced {
                url: self.url.clone(),
                message: why,
            });
        }
        // Nothing left to write (every op refused): nothing to wait for.
        let queued = if ops.is_empty() {
            None
        } else {
            let (reply, results) = oneshot::channel();
            sender
                .send(Batch { ops, reply })
                .map_err(|_| self.closed())?;
            Some(results)
        };
        let closed = self.closed();
        Ok(async move {
            let results = match queued {
                Some(results) => results.await.unwrap_or(Err(closed))?,
                None => Vec::new(),
            };
            Ok(refusals.answer(results))
        })
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

    /// Up to `limit` unprocessed requests of `shards` that may be delivered at `now_ms`, each
    /// claimed at `now_ms` (by `Op::Claim` through the writer, so a claim commits like any other
    /// write, fenced on PostgreSQL), and when the next one held back by `deliver_at` is due.
    ///
    /// # Errors
    /// As a read does, or as a write does (the claims).
    pub async fn unprocessed(
        &self,
        shards: Shards<'_>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Unprocessed, SqlError> {
        let only = match shards {
            Shards::All => None,
            Shards::Only(shards) => Some(shards.to_vec()),
        };
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let mut found = match &self.backend {
            Backend::Sqlite(readers) => {
                self.read(|| readers.unprocessed(only.clone(), limit, now))
                    .await?
            }
            Backend::Postgres(reads) => {
                self.read(|| reads.unprocessed(only.clone(), limit, now))
                    .await?
            }
        };
        if found.requests.is_empty() {
            return Ok(found);
        }
        let claims = found
            .requests
            .iter()
            .map(|request| Op::Owned {
                shard: request.shard.clone(),
                op: Box::new(Op::Claim {
                    request_id: request.id,
                    claimed_ms: now_ms,
                }),
            })
            .collect();
        let claimed = SqlStore::write(self, claims)?.await?;
        let mut claimed = claimed.into_iter();
        found
            .requests
            .retain(|_| claimed.next() == Some(OpResult::Done(true)));
        Ok(found)
    }

    /// Up to `limit` pending items of `queue` whose claim is void at `now_ms` under
    /// `claim_ms`, in offer order, each claimed at `now_ms`. PostgreSQL claims them in one
    /// statement (`FOR UPDATE SKIP LOCKED`, so that the workers of many processes pass each
    /// other's rows by); SQLite, whose one writer serializes every claim, reads them and
    /// claims them with `Op::QueueClaim` through the writer, keeping those it claimed.
    ///
    /// # Errors
    /// As a read does, or as a write does (SQLite's claims).
    pub async fn take(
        &self,
        queue: &str,
        limit: usize,
        now_ms: u64,
        claim_ms: u64,
    ) -> Result<Vec<Taken>, SqlError> {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let claim = i64::try_from(claim_ms).unwrap_or(i64::MAX);
        if queue.contains('\0') || limit == 0 {
            return Ok(Vec::new());
        }
        match &self.backend {
            Backend::Postgres(reads) => self.read(|| reads.take(queue, limit, now, claim)).await,
            Backend::Sqlite(readers) => {
                let mut found = self
                    .read(|| readers.queue_pending(queue.to_owned(), limit, now, claim))
                    .await?;
                if found.is_empty() {
                    return Ok(found);
                }
                let claims = found
                    .iter()
                    .map(|taken| Op::QueueClaim {
                        queue: queue.to_owned(),
                        id: taken.item.id.clone(),
                        claimed_ms: now_ms,
                        claim_ms,
                    })
                    .collect();
                let claimed = SqlStore::write(self, claims)?.await?;
                let mut claimed = claimed.into_iter();
                found.retain(|_| claimed.next() == Some(OpResult::Done(true)));
                Ok(found)
            }
        }
    }

    /// The final replies of requests `ids`, in order.
    ///
    /// # Errors
    /// When the read failed for good (see [`SqlStore::snapshots`]).
    pub async fn replies(&self, ids: &[i64]) -> Result<Vec<Option<Vec<u8>>>, SqlError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(READ_CHUNK) {
            let chunk = chunk.to_vec();
            found.extend(match &self.backend {
                Backend::Sqlite(readers) => self.read(|| readers.replies(chunk.clone())).await?,
                Backend::Postgres(reads) => self.read(|| reads.replies(chunk.clone())).await?,
            });
        }
        Ok(found)
    }

    /// The stored states of the entity instances `addresses`, in order.
    ///
    /// # Errors
    /// When the read failed for good (see [`SqlStore::snapshots`]).
    pub async fn entity_states(
        &self,
        addresses: &[(String, String)],
    ) -> Result<Vec<Option<Vec<u8>>>, SqlError> {
        let mut found = Vec::with_capacity(addresses.len());
        for chunk in addresses.chunks(READ_CHUNK) {
            // A NUL cannot be stored: nothing is stored for such an address.
            let chunk: Vec<(String, String)> = chunk.to_vec();
            found.extend(match &self.backend {
                Backend::Sqlite(readers) => {
                    self.read(|| readers.entity_states(chunk.clone())).await?
                }
                Backend::Postgres(reads) => {
                    self.read(|| reads.entity_states(chunk.clone())).await?
                }
            });
        }
        Ok(found)
    }

    /// Up to `limit` executions passing `filter`, newest first, from just after `after` (see
    /// [`Store::list`]); at most [`MAX_LIMIT`] whatever `limit` says.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn list(
        &self,
        filter: &Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, SqlError> {
        let limit = limit.min(MAX_LIMIT);
        if limit == 0 || filter.matches_nothing() {
            return Ok(Page::default());
        }
        match &self.backend {
            Backend::Sqlite(readers) => {
                self.read(|| readers.list(filter.clone(), after, limit))
                    .await
            }
            Backend::Postgres(reads) => self.read(|| reads.list(filter, after, limit)).await,
        }
    }

    /// How many executions pass `filter`, counted up to `cap`.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn count(&self, filter: &Filter, cap: u64) -> Result<u64, SqlError> {
        if cap == 0 || filter.matches_nothing() {
            return Ok(0);
        }
        match &self.backend {
            Backend::Sqlite(readers) => self.read(|| readers.count(filter.clone(), cap)).await,
            Backend::Postgres(reads) => self.read(|| reads.count(filter, cap)).await,
        }
    }

    /// The execution `id` with its journal, deferred results and timers, with their times.
    ///
    /// # Errors
    /// As [`SqlStore::snapshot`].
    pub async fn history(&self, id: &str) -> Result<Option<History>, SqlError> {
        if id.contains('\0') {
            return Ok(None);
        }
        match &self.backend {
            Backend::Sqlite(readers) => self.read(|| readers.history(id.to_owned())).await,
            Backend::Postgres(reads) => self.read(|| reads.history(id)).await,
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
        // Wakes the writer from a backoff pause too.
        self.closing.send_replace(true);
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

impl Store for SqlStore {
    fn immediate(&self) -> bool {
        false
    }

    fn write(&self, ops: Vec<Op>) -> Result<Answer<'static, Vec<OpResult>>, StoreError> {
        let written = SqlStore::write(self, ops)?;
        Ok(Box::pin(async move { Ok(written.await?) }))
    }

    fn snapshots<'a>(&'a self, ids: &'a [String]) -> Answer<'a, Vec<Option<Snapshot>>> {
        Box::pin(async move { Ok(SqlStore::snapshots(self, ids).await?) })
    }

    fn executions<'a>(&'a self, ids: &'a [String]) -> Answer<'a, Vec<Option<Execution>>> {
        Box::pin(async move { Ok(SqlStore::executions(self, ids).await?) })
    }

    fn timers_between(
        &self,
        after_ms: i64,
        until_ms: i64,
    ) -> Answer<'_, (Vec<Timer>, Option<u64>)> {
        Box::pin(async move { Ok(SqlStore::timers_between(self, after_ms, until_ms).await?) })
    }

    fn with_status(&self, status: Status) -> Answer<'_, Vec<String>> {
        Box::pin(async move { Ok(SqlStore::with_status(self, status).await?) })
    }

    fn list<'a>(
        &'a self,
        filter: &'a Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Answer<'a, Page> {
        Box::pin(async move { Ok(SqlStore::list(self, filter, after, limit).await?) })
    }

    fn count<'a>(&'a self, filter: &'a Filter, cap: u64) -> Answer<'a, u64> {
        Box::pin(async move { Ok(SqlStore::count(self, filter, cap).await?) })
    }

    fn history<'a>(&'a self, id: &'a str) -> Answer<'a, Option<History>> {
        Box::pin(async move { Ok(SqlStore::history(self, id).await?) })
    }

    fn unprocessed<'a>(
        &'a self,
        shards: Shards<'a>,
        limit: usize,
        now_ms: u64,
    ) -> Answer<'a, Unprocessed> {
        Box::pin(async move { Ok(SqlStore::unprocessed(self, shards, limit, now_ms).await?) })
    }

    fn take<'a>(
        &'a self,
        queue: &'a str,
        limit: usize,
        now_ms: u64,
        claim_ms: u64,
    ) -> Answer<'a, Vec<Taken>> {
        Box::pin(async move { Ok(SqlStore::take(self, queue, limit, now_ms, claim_ms).await?) })
    }

    fn replies<'a>(&'a self, ids: &'a [i64]) -> Answer<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move { Ok(SqlStore::replies(self, ids).await?) })
    }

    fn entity_states<'a>(
        &'a self,
        addresses: &'a [(String, String)],
    ) -> Answer<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move { Ok(SqlStore::entity_states(self, addresses).await?) })
    }

    fn lost(&self) -> Pending<'_, Option<String>> {
        Box::pin(SqlStore::lost(self))
    }

    fn close(&self) -> Pending<'_, ()> {
        Box::pin(SqlStore::close(self))
    }
}

/// What a notification of the store says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// Requests were saved unclaimed for these shards.
    Requests(Vec<String>),
    /// Final replies were saved for these requests.
    Replies(Vec<i64>),
    /// Another process started, completed a deferred of, interrupted or resumed these
    /// executions: their owners run them.
    Wake(Vec<String>),
    /// Their owners ended a run of these executions (complete or suspended).
    Ended(Vec<String>),
    /// A runner joined, left, or changed health.
    Runners,
    /// The listening connection was lost and is back: whatever was notified meanwhile is
    /// missed, so everything must be read again.
    Missed,
}

/// The store's notifications, on a connection of their own (see [`SqlStore::listen`]).
pub struct Notifications {
    listener: sqlx::postgres::PgListener,
    prefix: String,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications").finish_non_exhaustive()
    }
}

impl Notifications {
    /// The next notification; reconnects (answering [`Notification::Missed`]) when the
    /// connection was lost.
    pub async fn next(&mut self) -> Notification {
        loop {
            match self.listener.try_recv().await {
                Ok(Some(notification)) => {
                    let channel = notification.channel();
                    let payload = notification.payload();
                    let Some(kind) = channel.strip_prefix(self.prefix.as_str()) else {
                        continue;
                    };
                    let items = payload.split(',').filter(|item| !item.is_empty());
                    return match kind {
                        "requests" => Notification::Requests(items.map(str::to_owned).collect()),
                        "replies" => {
                            Notification::Replies(items.filter_map(|id| id.parse().ok()).collect())
                        }
                        "wake" => Notification::Wake(items.map(notified_id).collect()),
                        "ended" => Notification::Ended(items.map(notified_id).collect()),
                        _ => Notification::Runners,
                    };
                }
                // The connection was lost; the next call reconnects.
                Ok(None) => return Notification::Missed,
                Err(err) => {
                    log::warn!(
                        target: "plait.cluster",
                        "the store's notifications failed ({err}); listening again"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// An execution id as a notification carried it (the writer percent-encodes `,` and `%`).
fn notified_id(item: &str) -> String {
    if item.contains('%') {
        item.replace("%2C", ",").replace("%25", "%")
    } else {
        item.to_owned()
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
