//! SQLite through rusqlite, on threads of the store's own.
//!
//! sqlx's SQLite driver runs every statement on a worker thread and hops there and back for
//! each one, so a commit of n ops cost 2n + 4 context switches. Here one writer thread owns its
//! connection, takes batches straight from the store's queue and runs the whole transaction
//! synchronously with cached statements: one hop in (the caller's send wakes it) and one out
//! (its replies wake the callers) per commit. Reads run the same way on a few reader threads,
//! each with a connection of its own (WAL lets them read while the writer writes).

use std::{
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::{mpsc as std_mpsc, Arc, Mutex, PoisonError},
    thread,
    time::Duration,
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;

use super::{
    connect::Dialect,
    due_to_i64, listing,
    numbers::{self, Learned, Numbers},
    stored_due, stored_ms, stored_seq, stored_status,
    writer::{Results, Transactions},
    Durability, Failure,
};
use crate::{
    clock::now_ms,
    store::{
        messages::CLAIM_MS, Cursor, Deferred, DeferredAt, Entry, Execution, Filter, History,
        Listed, Op, OpResult, Page, QueueItem, Request, Shards, Snapshot, Status, Step, Taken,
        Timer, Unprocessed,
    },
};

/// How long SQLite waits on a lock held by another connection before failing with
/// `SQLITE_BUSY` (which the store then retries with backoff).
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// The writer's page cache, in KiB. SQLite's default (2 MB) holds too few of the index pages
/// that the executions in flight touch, and a commit that must read them back from the OS
/// costs several times one that finds them.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// Each reader's page cache, in KiB: recovery reads many journals once each, so the OS page
/// cache does most of the work.
const READER_CACHE_KIB: i64 = 16 * 1024;
/// Reader threads. Reads are short and CPU-bound once the pages are cached; two let one read
/// wait on the disk while another runs.
const READERS: usize = 2;
/// The checkpointer's page cache, in KiB: a checkpoint copies frames from the WAL to the
/// database file without going through it.
const CHECKPOINTER_CACHE_KIB: i64 = 2 * 1024;
/// WAL pages past which the writer checkpoints by itself, in its commit: a backstop for a
/// checkpointer that fell this far behind (or failed), not the usual path. 64 MB at 4 KiB pages.
const WRITER_CHECKPOINT_PAGES: i64 = 16 * 1024;

/// The least time between two checkpoint passes.
const CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Every statement, with the table prefix filled in.
struct Sql {
    start: String,
    execution: String,
    execution_by_no: String,
    number: String,
    append: String,
    deferred: String,
    status: String,
    count_deferreds: String,
    drop_timers: String,
    interrupt: String,
    timer: String,
    untimer: String,
    entries: String,
    deferreds: String,
    timers: String,
    timers_between: String,
    next_timer: String,
    with_status: String,
    message_by_id: String,
    message_by_key: String,
    save_request: String,
    reply_of: String,
    process: String,
    save_reply: String,
    entity_state: String,
    clear_reply: String,
    unprocess: String,
    unclaim: String,
    claim: String,
    reset_claims: String,
    unprocessed: String,
    next_deliver_at: String,
    entity_state_of: String,
    history_execution: String,
    history_steps: String,
    history_deferreds: String,
    history_timers: String,
    queue_offer: String,
    queue_claim: String,
    queue_renew: String,
    queue_done: String,
    queue_pending: String,
    prefix: String,
}

impl Sql {
    #[allow(clippy::too_many_lines)] // the table of statements, one entry each
    fn new(prefix: &str) -> Self {
        let sql = |template: &str| template.replace("{p}", prefix);
        // The writer's ops name their execution by `no` (the rowid), which it finds once by id
        // and then remembers: see `super::numbers`.
        Self {
            start: sql(
                "INSERT INTO {p}executions (id, workflow, payload, parent, status, result, \
                 interrupted, created_ms, updated_ms) \
                 VALUES (?1, ?2, ?3, ?4, 'running', NULL, FALSE, ?5, ?5) ON CONFLICT DO NOTHING",
            ),
            execution: sql(
                "SELECT no, workflow, payload, parent, status, result, interrupted \
                 FROM {p}executions WHERE id = ?1",
            ),
            execution_by_no: sql(
                "SELECT id, workflow, payload, parent, status, result, interrupted \
                 FROM {p}executions WHERE no = ?1",
            ),
            number: sql("SELECT no FROM {p}executions WHERE id = ?1"),
            append: sql(
                "INSERT INTO {p}journal (execution_no, key, seq, value, at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            ),
            deferred: sql(
                "INSERT INTO {p}deferreds (execution_no, name, value, at_ms) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            ),
            status: sql(
                "UPDATE {p}executions SET status = ?2, result = ?3, updated_ms = ?4 \
                 WHERE no = ?1 AND status <> 'complete'",
            ),
            count_deferreds: sql("SELECT count(*) FROM {p}deferreds WHERE execution_no = ?1"),
            drop_timers: sql("DELETE FROM {p}timers WHERE execution_id = ?1"),
            interrupt: sql(
                "UPDATE {p}executions SET interrupted = TRUE, updated_ms = ?2 \
                 WHERE no = ?1 AND status <> 'complete'",
            ),
            timer: sql(
                "INSERT INTO {p}timers (execution_id, name, due_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
            ),
            untimer: sql("DELETE FROM {p}timers WHERE execution_id = ?1 AND name = ?2"),
            entries: sql(
                "SELECT key, seq, value FROM {p}journal WHERE execution_no = ?1 ORDER BY ord",
            ),
            deferreds: sql(
                "SELECT name, value FROM {p}deferreds WHERE execution_no = ?1 ORDER BY ord",
            ),
            timers: sql("SELECT execution_id, name, due_ms FROM {p}timers \
                 ORDER BY due_ms, execution_id, name"),
            // A range of the index on `due_ms`, which (the table having no rowid) holds the
            // primary key after it, in the order asked for.
            timers_between: sql("SELECT execution_id, name, due_ms FROM {p}timers \
                 WHERE due_ms > ?1 AND due_ms <= ?2 ORDER BY due_ms, execution_id, name"),
            next_timer: sql("SELECT min(due_ms) FROM {p}timers WHERE due_ms > ?1"),
            with_status: sql("SELECT id FROM {p}executions WHERE status = ?1 ORDER BY id"),
            message_by_id: sql("SELECT id FROM {p}messages WHERE id = ?1"),
            message_by_key: sql("SELECT id FROM {p}messages WHERE message_key = ?1"),
            save_request: sql(
                "INSERT INTO {p}messages (id, message_key, shard_id, entity_type, entity_id, tag, \
                 payload, last_read, deliver_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                 ON CONFLICT DO NOTHING",
            ),
            reply_of: sql("SELECT payload FROM {p}replies WHERE request_id = ?1"),
            process: sql("UPDATE {p}messages SET processed = TRUE, last_read = NULL \
                 WHERE id = ?1 AND NOT processed"),
            save_reply: sql("INSERT INTO {p}replies (request_id, payload) VALUES (?1, ?2)"),
            entity_state: sql(
                "INSERT INTO {p}entity_state (entity_type, entity_id, value) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (entity_type, entity_id) DO UPDATE SET value = excluded.value",
            ),
            clear_reply: sql("DELETE FROM {p}replies WHERE request_id = ?1"),
            unprocess: sql(
                "UPDATE {p}messages SET processed = FALSE, last_read = NULL WHERE id = ?1",
            ),
            unclaim: sql("UPDATE {p}messages SET last_read = NULL WHERE id = ?1 AND NOT processed"),
            claim: sql(
                "UPDATE {p}messages SET last_read = ?2 WHERE id = ?1 AND NOT processed \
                 AND (last_read IS NULL OR last_read <= ?3)",
            ),
            reset_claims: sql("UPDATE {p}messages SET last_read = NULL \
                 WHERE NOT processed AND last_read IS NOT NULL"),
            // Claims older than the claim timeout are void; `deliver_at` holds back.
            unprocessed: sql(
                "SELECT id, shard_id, entity_type, entity_id, tag, payload, message_key, \
                 deliver_at FROM {p}messages WHERE NOT processed \
                 AND (last_read IS NULL OR last_read <= ?1) \
                 AND (deliver_at IS NULL OR deliver_at <= ?2) ORDER BY id",
            ),
            next_deliver_at: sql(
                "SELECT min(deliver_at) FROM {p}messages WHERE NOT processed AND deliver_at > ?1",
            ),
            entity_state_of: sql(
                "SELECT value FROM {p}entity_state WHERE entity_type = ?1 AND entity_id = ?2",
            ),
            history_execution: sql(
                "SELECT no, workflow, payload, parent, status, result, interrupted, created_ms, \
                 updated_ms FROM {p}executions WHERE id = ?1",
            ),
            history_steps: sql(
                "SELECT key, seq, value, at_ms FROM {p}journal WHERE execution_no = ?1 \
                 ORDER BY ord",
            ),
            history_deferreds: sql(
                "SELECT name, value, at_ms FROM {p}deferreds WHERE execution_no = ?1 \
                 ORDER BY ord",
            ),
            history_timers: sql(
                "SELECT name, due_ms FROM {p}timers WHERE execution_id = ?1 ORDER BY due_ms, name",
            ),
            queue_offer: sql(
                "INSERT INTO {p}queue_items (queue, id, payload, token, offered_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            ),
            // A claim made at or before ?4 (its instant less the claim timeout) is void.
            queue_claim: sql(
                "UPDATE {p}queue_items SET claimed_ms = ?3, attempts = attempts + 1 \
                 WHERE queue = ?1 AND id = ?2 AND done_ms IS NULL \
                 AND (claimed_ms IS NULL OR claimed_ms <= ?4)",
            ),
            queue_renew: sql("UPDATE {p}queue_items SET claimed_ms = ?4 \
                 WHERE queue = ?1 AND id = ?2 AND done_ms IS NULL AND claimed_ms = ?3"),
            queue_done: sql("UPDATE {p}queue_items SET done_ms = ?3, claimed_ms = NULL \
                 WHERE queue = ?1 AND id = ?2 AND done_ms IS NULL"),
            queue_pending: sql("SELECT id, payload, token, attempts FROM {p}queue_items \
                 WHERE queue = ?1 AND done_ms IS NULL \
                 AND (claimed_ms IS NULL OR claimed_ms <= ?2) ORDER BY no LIMIT ?3"),
            prefix: prefix.to_owned(),
        }
    }
}

impl rusqlite::ToSql for listing::Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            listing::Param::Text(text) => text.to_sql(),
            listing::Param::Int(int) => int.to_sql(),
            listing::Param::Bytes(bytes) => bytes.to_sql(),
        }
    }
}

/// A connection of the store's, set up as every one of them is.
fn connect(path: &Path, durability: Durability, cache_kib: i64) -> Result<Connection, Failure> {
    // The file exists: the migrations made it.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Failure::Refused(format!(
            "{} stays in journal mode {mode:?}, not WAL",
            path.display()
        )));
    }
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Starts a thread named `name` that opens its connection with `open` and then runs `body`;
/// resolves once the connection is open (or failed to).
async fn spawn<F, B>(name: &str, open: F, body: B) -> Result<thread::JoinHandle<()>, Failure>
where
    F: FnOnce() -> Result<Connection, Failure> + Send + 'static,
    B: FnOnce(Connection) + Send + 'static,
{
    let (ready, opened) = oneshot::channel();
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || match open() {
            Ok(conn) => {
                let _ = ready.send(Ok(()));
                body(conn);
            }
            Err(err) => {
                let _ = ready.send(Err(err));
            }
        })
        .map_err(|err| Failure::Refused(format!("cannot start the thread {name}: {err}")))?;
    opened
        .await
        .map_err(|_| Failure::Refused(format!("the thread {name} stopped while opening")))??;
    Ok(handle)
}

/// The execution `id` and its `no`, through `conn`.
fn execution(conn: &Connection, sql: &Sql, id: &str) -> Result<Option<(i64, Execution)>, Failure> {
    let row = conn
        .prepare_cached(&sql.execution)?
        .query_row([id], |row| {
            Ok((row.get::<_, i64>(0)?, execution_columns(row)?))
        })
        .optional()?;
    let Some((no, columns)) = row else {
        return Ok(None);
    };
    Ok(Some((no, stored_execution(id, columns)?)))
}

/// An execution row's columns after its key (column 0), the status still as stored.
type ExecutionColumns = (
    String,
    Vec<u8>,
    Option<String>,
    String,
    Option<Vec<u8>>,
    bool,
);

fn execution_columns(row: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionColumns> {
    Ok((
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

/// The execution `id` of `columns`; an unknown status is corrupt data, named as such.
fn stored_execution(id: &str, columns: ExecutionColumns) -> Result<Execution, Failure> {
    let (workflow, payload, parent, status, result, interrupted) = columns;
    Ok(Execution {
        workflow,
        payload,
        parent,
        status: stored_status(id, &status)?,
        result,
        interrupted,
    })
}

/// Copies the WAL into the database file on a thread and connection of its own, after the
/// writer's commits, at most once every `CHECKPOINT_PAUSE`.
///
/// SQLite checkpoints in the connection that commits, once the WAL passes a size: every few
/// commits the writer stopped to copy a thousand pages and fsync the database, which was a
/// quarter of its time once the executions' index of random ids was large (each start dirties
/// a page of it that no other start shares). Here the copy runs beside the writer's next
/// transaction, and the writer's commits only append to the WAL.
struct Checkpointer {
    /// Holds at most one nudge: a checkpoint that is asked for while one is pending is the same.
    nudge: std_mpsc::SyncSender<()>,
    thread: thread::JoinHandle<()>,
}

impl Checkpointer {
    async fn start(path: PathBuf, durability: Durability) -> Result<Self, Failure> {
        let (nudge, nudged) = std_mpsc::sync_channel::<()>(1);
        let thread = spawn(
            "plait-sqlite-checkpointer",
            move || connect(&path, durability, CHECKPOINTER_CACHE_KIB),
            move |conn| {
                let mut last: Option<std::time::Instant> = None;
                while nudged.recv().is_ok() {
                    // Commits that land meanwhile are copied by the same pass: each pass ends
                    // with an fsync of the database file, which a pass per commit paid each time.
                    if let Some(until) = last.map(|at| at + CHECKPOINT_PAUSE) {
                        loop {
                            let now = std::time::Instant::now();
                            if now >= until {
                                break;
                            }
                            if let Err(std_mpsc::RecvTimeoutError::Disconnected) =
                                nudged.recv_timeout(until - now)
                            {
                                return;
                            }
                        }
                    }
                    // PASSIVE never waits on a lock and copies what no reader still needs; what
                    // it leaves, the next pass copies. A failed pass is no worse than a skipped
                    // one: the writer's own checkpoint is the backstop.
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    last = Some(std::time::Instant::now());
                }
                drop(conn);
            },
        )
        .await?;
        Ok(Self { nudge, thread })
    }

    /// Asks for a checkpoint soon.
    fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    /// Ends the thread once its current pass is done, with its connection closed.
    fn stop(self) {
        drop(self.nudge);
        let _ = self.thread.join();
    }
}

/// The writer's connection and the numbers of the executions it knows: the SQLite half of the
/// writer (`super::writer`), which runs on a thread of its own.
pub(super) struct WriteConnection {
    conn: Connection,
    sql: Sql,
    numbers: Numbers,
    checkpointer: Option<Checkpointer>,
}

/// Opens the writer's connection on a thread of its own, then runs there the writer loop that
/// `run` makes of it, under a current-thread runtime: the loop waits for the store's queue,
/// and its transactions are synchronous rusqlite calls, so a commit costs one wake-up of this
/// thread and one of each caller. Resolves once the connection is open (or failed to).
pub(super) async fn start_writer<R, F>(
    path: PathBuf,
    prefix: &str,
    durability: Durability,
    run: R,
) -> Result<(), Failure>
where
    R: FnOnce(WriteConnection) -> F + Send + 'static,
    F: std::future::Future<Output = ()>,
{
    let sql = Sql::new(prefix);
    let checkpointer = Checkpointer::start(path.clone(), durability).await?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|err| Failure::Refused(format!("cannot start the writer's runtime: {err}")))?;
    spawn(
        "plait-sqlite-writer",
        move || {
            let conn = connect(&path, durability, WRITER_CACHE_KIB)?;
            // The pragma answers with the value it set.
            conn.query_row(
                &format!("PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}"),
                [],
                |_| Ok(()),
            )?;
            Ok(conn)
        },
        move |conn| {
            let connection = WriteConnection {
                conn,
                sql,
                numbers: Numbers::new(numbers::CAPACITY),
                checkpointer: Some(checkpointer),
            };
            runtime.block_on(run(connection));
        },
    )
    .await?;
    Ok(())
}

impl Transactions for WriteConnection {
    const TROUBLE: &'static str = "found the database busy";

    async fn apply(&mut self, batches: &[&[Op]]) -> Result<Results, Failure> {
        let results = self.attempt(batches)?;
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.nudge();
        }
        Ok(results)
    }

    /// Stops the checkpointer and closes the connection (by dropping it): the next engine must
    /// find no connection of ours.
    async fn close(mut self) {
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.stop();
        }
    }
}

impl WriteConnection {
    /// One try at applying `batches` in one transaction.
    fn attempt(&mut self, batches: &[&[Op]]) -> Result<Results, Failure> {
        let conn = &self.conn;
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        let mut learned = Learned::default();
        // One writer: taking the write lock up front never waits on a read's upgrade.
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let outcome = batches
            .iter()
            .map(|batch| {
                batch
                    .iter()
                    .map(|op| self.apply_op(op, now, &mut learned))
                    .collect()
            })
            .collect::<Result<Results, Failure>>()
            .and_then(|results| {
                conn.prepare_cached("COMMIT")?.execute([])?;
                Ok(results)
            });
        if outcome.is_err() && !conn.is_autocommit() {
            // Still open (a statement failed, or COMMIT did): the next attempt starts afresh.
            let _ = conn.execute_batch("ROLLBACK");
        }
        if outcome.is_ok() {
            self.numbers.keep(learned);
        }
        outcome
    }

    /// The number of execution `id`: remembered, learned earlier in this transaction, or looked
    /// up by id (and then learned). `None`: the store does not hold it.
    fn number<'a>(&self, id: &'a str, learned: &mut Learned<'a>) -> Result<Option<i64>, Failure> {
        if let Some(no) = self.number_if_known(id, learned) {
            return Ok(Some(no));
        }
        let no: Option<i64> = self
            .conn
            .prepare_cached(&self.sql.number)?
            .query_row([id], |row| row.get(0))
            .optional()?;
        if let Some(no) = no {
            learned.insert(id, no);
        }
        Ok(no)
    }

    fn apply_op<'a>(
        &self,
        op: &'a Op,
        now: i64,
        learned: &mut Learned<'a>,
    ) -> Result<OpResult, Failure> {
        let (conn, sql) = (&self.conn, &self.sql);
        let run = |statement: &str, params: &[&dyn rusqlite::ToSql]| -> Result<bool, Failure> {
            Ok(conn.prepare_cached(statement)?.execute(params)? > 0)
        };
        // One runner per SQLite file: it owns every shard.
        let op = op.inner();
        Ok(match op {
            Op::Start {
                id,
                workflow,
                payload,
                parent,
            } => {
                if let Some(no) = self.number_if_known(id, learned) {
                    OpResult::Existing(execution_by_no(conn, sql, id, no)?)
                } else if run(&sql.start, params![id, workflow, payload, parent, now])? {
                    learned.insert(id, conn.last_insert_rowid());
                    OpResult::Created
                } else {
                    match execution(conn, sql, id)? {
                        Some((no, existing)) => {
                            learned.insert(id, no);
                            OpResult::Existing(existing)
                        }
                        None => {
                            return Err(Failure::Refused(format!(
                                "execution {id:?} neither inserted nor found"
                            )))
                        }
                    }
                }
            }
            Op::Append { id, entry } => match self.number(id, learned)? {
                Some(no) => OpResult::Done(run(
                    &sql.append,
                    params![no, entry.key, entry.seq, entry.value, now],
                )?),
                None => OpResult::Done(false),
            },
            Op::Deferred { id, name, value } => match self.number(id, learned)? {
                Some(no) => OpResult::Done(run(&sql.deferred, params![no, name, value, now])?),
                None => OpResult::UnknownExecution,
            },
            Op::Status { id, status, result } => match self.number(id, learned)? {
                Some(no) => {
                    let updated = run(&sql.status, params![no, status.as_str(), result, now])?;
                    if updated && *status == Status::Complete {
                        run(&sql.drop_timers, params![id])?;
                    }
                    OpResult::Done(updated)
                }
                None => OpResult::Done(false),
            },
            Op::Suspend {
                id,
                cause,
                deferreds,
            } => match self.number(id, learned)? {
                Some(no) => {
                    let stored: i64 = conn
                        .prepare_cached(&sql.count_deferreds)?
                        .query_row(params![no], |row| row.get(0))?;
                    OpResult::Done(
                        stored <= i64::from(*deferreds)
                            && run(&sql.status, params![no, "suspended", cause, now])?,
                    )
                }
                None => OpResult::Done(false),
            },
            Op::Interrupt { id } => match self.number(id, learned)? {
                Some(no) => OpResult::Done(run(&sql.interrupt, params![no, now])?),
                None => OpResult::UnknownExecution,
            },
            Op::Timer(timer) => match self.number(&timer.execution_id, learned)? {
                Some(_) => OpResult::Done(run(
                    &sql.timer,
                    params![timer.execution_id, timer.name, due_to_i64(timer.due_ms)?],
                )?),
                None => OpResult::Done(false),
            },
            Op::Untimer { execution_id, name } => {
                OpResult::Done(run(&sql.untimer, params![execution_id, name])?)
            }
            Op::Request { .. }
            | Op::Reply { .. }
            | Op::EntityState { .. }
            | Op::ClearReplies { .. }
            | Op::Unclaim { .. }
            | Op::Claim { .. }
            | Op::ResetClaims { .. } => self.apply_message(op)?,
            Op::Offer(_) | Op::QueueClaim { .. } | Op::QueueRenew { .. } | Op::QueueDone { .. } => {
                self.apply_queue(op, now)?
            }
            Op::Owned { .. } => unreachable!("taken out of Owned above"),
        })
    }

    /// Applies a durable queue op (see [`Op`]).
    fn apply_queue(&self, op: &Op, now: i64) -> Result<OpResult, Failure> {
        let (conn, sql) = (&self.conn, &self.sql);
        let run = |statement: &str, params: &[&dyn rusqlite::ToSql]| -> Result<bool, Failure> {
            Ok(conn.prepare_cached(statement)?.execute(params)? > 0)
        };
        Ok(match op {
            Op::Offer(item) => OpResult::Done(run(
                &sql.queue_offer,
                params![item.queue, item.id, item.payload, item.token, now],
            )?),
            Op::QueueClaim {
                queue,
                id,
                claimed_ms,
                claim_ms,
            } => {
                let at = due_to_i64(*claimed_ms)?;
                let void_before = at.saturating_sub(due_to_i64(*claim_ms)?);
                OpResult::Done(run(&sql.queue_claim, params![queue, id, at, void_before])?)
            }
            Op::QueueRenew {
                queue,
                id,
                held_ms,
                renewed_ms,
            } => OpResult::Done(run(
                &sql.queue_renew,
                params![queue, id, due_to_i64(*held_ms)?, due_to_i64(*renewed_ms)?],
            )?),
            Op::QueueDone { queue, id } => {
                OpResult::Done(run(&sql.queue_done, params![queue, id, now])?)
            }
            _ => {
                return Err(Failure::Refused(format!(
                    "another op taken for a queue op: {op:?}"
                )))
            }
        })
    }

    /// Applies an entity message op (see [`Op`]).
    fn apply_message(&self, op: &Op) -> Result<OpResult, Failure> {
        let (conn, sql) = (&self.conn, &self.sql);
        let run = |statement: &str, params: &[&dyn rusqlite::ToSql]| -> Result<bool, Failure> {
            Ok(conn.prepare_cached(statement)?.execute(params)? > 0)
        };
        Ok(match op {
            Op::Request {
                request,
                claimed_ms,
            } => save_request(conn, sql, request, *claimed_ms)?,
            Op::Reply {
                request_id, value, ..
            } => {
                let processed = run(&sql.process, params![request_id])?;
                if processed {
                    run(&sql.save_reply, params![request_id, value])?;
                }
                OpResult::Done(processed)
            }
            Op::EntityState {
                entity_type,
                entity_id,
                value,
            } => OpResult::Done(run(
                &sql.entity_state,
                params![entity_type, entity_id, value],
            )?),
            Op::ClearReplies { request_id } => {
                run(&sql.clear_reply, params![request_id])?;
                OpResult::Done(run(&sql.unprocess, params![request_id])?)
            }
            Op::Unclaim { request_id, .. } => {
                OpResult::Done(run(&sql.unclaim, params![request_id])?)
            }
            Op::Claim {
                request_id,
                claimed_ms,
            } => {
                let at = due_to_i64(*claimed_ms)?;
                let void_before = at.saturating_sub(claim_ms());
                OpResult::Done(run(&sql.claim, params![request_id, at, void_before])?)
            }
            Op::ResetClaims { shards } => match shards {
                None => OpResult::Done(run(&sql.reset_claims, params![])?),
                Some(shards) => {
                    let mut any = false;
                    for shard in shards {
                        let statement = format!("{} AND shard_id = ?1", sql.reset_claims);
                        any |= run(&statement, params![shard])?;
                    }
                    OpResult::Done(any)
                }
            },
            _ => {
                return Err(Failure::Refused(format!(
                    "a journal op taken for a message op: {op:?}"
                )))
            }
        })
    }

    /// The number of `id` if it is remembered or learned in this transaction, without asking
    /// the database (a start of an unknown id tries its insert instead).
    fn number_if_known<'a>(&self, id: &'a str, learned: &mut Learned<'a>) -> Option<i64> {
        if let Some((no, keep)) = self.numbers.get(id) {
            if keep {
                learned.insert(id, no);
            }
            return Some(no);
        }
        learned.get(id).copied()
    }
}

/// The execution numbered `no`, which must be `id` (the writer learned the pair from a
/// committed transaction, and executions are never deleted).
fn execution_by_no(conn: &Connection, sql: &Sql, id: &str, no: i64) -> Result<Execution, Failure> {
    let row = conn
        .prepare_cached(&sql.execution_by_no)?
        .query_row([no], |row| {
            Ok((row.get::<_, String>(0)?, execution_columns(row)?))
        })
        .optional()?;
    match row {
        Some((stored_id, columns)) if stored_id == id => stored_execution(id, columns),
        _ => Err(Failure::Refused(format!(
            "execution {id:?} is not number {no} as the writer remembered: was it deleted?"
        ))),
    }
}

/// [`CLAIM_MS`] as the database stores instants.
fn claim_ms() -> i64 {
    i64::try_from(CLAIM_MS).unwrap_or(i64::MAX)
}

/// Saves a request unless one with its id or key is stored (then that one's id and reply).
fn save_request(
    conn: &Connection,
    sql: &Sql,
    request: &Request,
    claimed_ms: Option<u64>,
) -> Result<OpResult, Failure> {
    let found = |statement: &str, key: &dyn rusqlite::ToSql| -> Result<Option<i64>, Failure> {
        Ok(conn
            .prepare_cached(statement)?
            .query_row([key], |row| row.get(0))
            .optional()?)
    };
    let mut original = found(&sql.message_by_id, &request.id)?;
    if original.is_none() {
        let claimed = claimed_ms.map(due_to_i64).transpose()?;
        let deliver_at = request.deliver_at.map(due_to_i64).transpose()?;
        let inserted = conn.prepare_cached(&sql.save_request)?.execute(params![
            request.id,
            request.key,
            request.shard,
            request.entity_type,
            request.entity_id,
            request.tag,
            request.payload,
            claimed,
            deliver_at,
        ])? > 0;
        if inserted {
            return Ok(OpResult::Created);
        }
        if let Some(key) = &request.key {
            original = found(&sql.message_by_key, key)?;
        }
    }
    let Some(original) = original else {
        return Err(Failure::Refused(format!(
            "request {} neither saved nor found",
            request.id
        )));
    };
    let reply = conn
        .prepare_cached(&sql.reply_of)?
        .query_row([original], |row| row.get(0))
        .optional()?;
    Ok(OpResult::Duplicate { original, reply })
}

/// A read, run on a reader thread with its connection.
type Job = Box<dyn FnOnce(&Connection, &Sql) + Send>;

/// The reader threads, fed from one queue.
pub(super) struct Readers {
    jobs: Mutex<Option<std_mpsc::Sender<Job>>>,
    /// One per thread; each is dropped (so resolves) when its thread has ended.
    ended: tokio::sync::Mutex<Vec<oneshot::Receiver<()>>>,
}

impl Readers {
    /// Opens [`READERS`] connections, each on a thread of its own.
    pub(super) async fn start(
        path: PathBuf,
        prefix: &str,
        durability: Durability,
    ) -> Result<Self, Failure> {
        let (jobs, queue) = std_mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let sql = Arc::new(Sql::new(prefix));
        let mut ended = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let (end, ended_rx) = oneshot::channel::<()>();
            ended.push(ended_rx);
            let (queue, sql, path) = (Arc::clone(&queue), Arc::clone(&sql), path.clone());
            spawn(
                "plait-sqlite-reader",
                move || connect(&path, durability, READER_CACHE_KIB),
                move |conn| {
                    loop {
                        // The guard goes at the end of this statement: the next thread may wait
                        // for a job while this one runs its own.
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = job else { break };
                        // A read that panics fails alone (its reply is dropped unsent).
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&conn, &sql)));
                    }
                    // Closed before `close` hears the thread ended: once it returns, no
                    // connection of this store is open. Another copy of SQLite in the process
                    // (Python's `sqlite3`) cannot see our locks, so one still closing could
                    // checkpoint and delete the WAL under its writes.
                    drop(conn);
                    drop(end);
                },
            )
            .await?;
        }
        Ok(Self {
            jobs: Mutex::new(Some(jobs)),
            ended: tokio::sync::Mutex::new(ended),
        })
    }

    /// Runs `read` on a reader thread; resolves to its outcome.
    fn run<T, R>(&self, read: R) -> impl std::future::Future<Output = Result<T, Failure>>
    where
        T: Send + 'static,
        R: FnOnce(&Connection, &Sql) -> Result<T, Failure> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn, sql| {
            let _ = reply.send(read(conn, sql));
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        async move {
            if !sent {
                return Err(Failure::Closed);
            }
            answer
                .await
                .unwrap_or_else(|_| Err(Failure::Refused("a read of the store panicked".into())))
        }
    }

    /// The snapshots of `ids` that the store holds, in one read transaction.
    pub(super) fn snapshots(
        &self,
        ids: Vec<String>,
    ) -> impl std::future::Future<Output = Result<FxHashMap<String, Snapshot>, Failure>> {
        self.run(move |conn, sql| {
            // A deferred transaction reads one WAL snapshot from its first read to its end.
            let tx = conn.unchecked_transaction()?;
            let mut found = FxHashMap::default();
            for id in ids {
                let Some((no, execution)) = execution(&tx, sql, &id)? else {
                    continue;
                };
                let mut entries = Vec::new();
                let mut statement = tx.prepare_cached(&sql.entries)?;
                let mut rows = statement.query([no])?;
                while let Some(row) = rows.next()? {
                    entries.push(Entry {
                        key: row.get(0)?,
                        seq: stored_seq(&id, row.get(1)?)?,
                        value: row.get(2)?,
                    });
                }
                let deferreds = tx
                    .prepare_cached(&sql.deferreds)?
                    .query_map([no], |row| {
                        Ok(Deferred {
                            name: row.get(0)?,
                            value: row.get(1)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                found.insert(
                    id,
                    Snapshot {
                        execution,
                        entries,
                        deferreds,
                    },
                );
            }
            tx.commit()?;
            Ok(found)
        })
    }

    /// The executions of `ids` that the store holds, in one read transaction.
    pub(super) fn executions(
        &self,
        ids: Vec<String>,
    ) -> impl std::future::Future<Output = Result<FxHashMap<String, Execution>, Failure>> {
        self.run(move |conn, sql| {
            let tx = conn.unchecked_transaction()?;
            let mut found = FxHashMap::default();
            for id in ids {
                if let Some((_, execution)) = execution(&tx, sql, &id)? {
                    found.insert(id, execution);
                }
            }
            tx.commit()?;
            Ok(found)
        })
    }

    pub(super) fn timers(&self) -> impl std::future::Future<Output = Result<Vec<Timer>, Failure>> {
        self.run(|conn, sql| {
            let mut statement = conn.prepare_cached(&sql.timers)?;
            let mut rows = statement.query([])?;
            let mut timers = Vec::new();
            while let Some(row) = rows.next()? {
                timers.push(Timer {
                    execution_id: row.get(0)?,
                    name: row.get(1)?,
                    due_ms: stored_due(row.get(2)?)?,
                });
            }
            Ok(timers)
        })
    }

    /// The timers due in `(after_ms, until_ms]`, earliest first, and when the first one after
    /// `until_ms` is due; both from one read transaction.
    pub(super) fn timers_between(
        &self,
        after_ms: i64,
        until_ms: i64,
    ) -> impl std::future::Future<Output = Result<(Vec<Timer>, Option<u64>), Failure>> {
        self.run(move |conn, sql| {
            let tx = conn.unchecked_transaction()?;
            let mut timers = Vec::new();
            {
                let mut statement = tx.prepare_cached(&sql.timers_between)?;
                let mut rows = statement.query([after_ms, until_ms])?;
                while let Some(row) = rows.next()? {
                    timers.push(Timer {
                        execution_id: row.get(0)?,
                        name: row.get(1)?,
                        due_ms: stored_due(row.get(2)?)?,
                    });
                }
            }
            let next: Option<i64> = tx
                .prepare_cached(&sql.next_timer)?
                .query_row([until_ms], |row| row.get(0))?;
            tx.commit()?;
            Ok((timers, next.map(stored_due).transpose()?))
        })
    }

    pub(super) fn with_status(
        &self,
        status: Status,
    ) -> impl std::future::Future<Output = Result<Vec<String>, Failure>> {
        self.run(move |conn, sql| {
            Ok(conn
                .prepare_cached(&sql.with_status)?
                .query_map([status.as_str()], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?)
        })
    }

    /// Up to `limit` requests that may be delivered at `now_ms` (see
    /// [`crate::store::Store::unprocessed`]), unclaimed yet, and when the next one held back
    /// by `deliver_at` is due; in one read transaction. The caller claims them.
    pub(super) fn unprocessed(
        &self,
        shards: Option<Vec<String>>,
        limit: usize,
        now_ms: i64,
    ) -> impl std::future::Future<Output = Result<Unprocessed, Failure>> {
        self.run(move |conn, sql| {
            let tx = conn.unchecked_transaction()?;
            let shards = shards.as_ref().map_or(Shards::All, |s| Shards::Only(s));
            let mut found = Unprocessed::default();
            {
                let mut statement = tx.prepare_cached(&sql.unprocessed)?;
                let mut rows = statement.query([now_ms.saturating_sub(claim_ms()), now_ms])?;
                while let Some(row) = rows.next()? {
                    if found.requests.len() >= limit {
                        break;
                    }
                    let shard: String = row.get(1)?;
                    if !shards.contains(&shard) {
                        continue;
                    }
                    let deliver_at: Option<i64> = row.get(7)?;
                    found.requests.push(Request {
                        id: row.get(0)?,
                        shard,
                        entity_type: row.get(2)?,
                        entity_id: row.get(3)?,
                        tag: row.get(4)?,
                        payload: row.get(5)?,
                        key: row.get(6)?,
                        deliver_at: deliver_at.map(stored_due).transpose()?,
                    });
                }
            }
            let next: Option<i64> = tx
                .prepare_cached(&sql.next_deliver_at)?
                .query_row([now_ms], |row| row.get(0))?;
            found.next_deliver_at = next.map(stored_due).transpose()?;
            tx.commit()?;
            Ok(found)
        })
    }

    /// Up to `limit` pending items of `queue` whose claim is void at `now_ms` under
    /// `claim_ms`, in offer order, with their attempts so far. The caller claims them.
    pub(super) fn queue_pending(
        &self,
        queue: String,
        limit: usize,
        now_ms: i64,
        claim_ms: i64,
    ) -> impl std::future::Future<Output = Result<Vec<Taken>, Failure>> {
        self.run(move |conn, sql| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut statement = conn.prepare_cached(&sql.queue_pending)?;
            let mut rows =
                statement.query(params![queue, now_ms.saturating_sub(claim_ms), limit])?;
            let mut found = Vec::new();
            while let Some(row) = rows.next()? {
                let attempts: i64 = row.get(3)?;
                found.push(Taken {
                    item: QueueItem {
                        queue: queue.clone(),
                        id: row.get(0)?,
                        payload: row.get(1)?,
                        token: row.get(2)?,
                    },
                    attempt: u32::try_from(attempts).map_or(u32::MAX, |n| n.saturating_add(1)),
                });
            }
            Ok(found)
        })
    }

    /// The final replies of `ids`, in order.
    pub(super) fn replies(
        &self,
        ids: Vec<i64>,
    ) -> impl std::future::Future<Output = Result<Vec<Option<Vec<u8>>>, Failure>> {
        self.run(move |conn, sql| {
            let tx = conn.unchecked_transaction()?;
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                found.push(
                    tx.prepare_cached(&sql.reply_of)?
                        .query_row([id], |row| row.get(0))
                        .optional()?,
                );
            }
            tx.commit()?;
            Ok(found)
        })
    }

    /// The stored states of `addresses`, in order.
    pub(super) fn entity_states(
        &self,
        addresses: Vec<(String, String)>,
    ) -> impl std::future::Future<Output = Result<Vec<Option<Vec<u8>>>, Failure>> {
        self.run(move |conn, sql| {
            let tx = conn.unchecked_transaction()?;
            let mut found = Vec::with_capacity(addresses.len());
            for (entity_type, entity_id) in addresses {
                found.push(
                    tx.prepare_cached(&sql.entity_state_of)?
                        .query_row([entity_type, entity_id], |row| row.get(0))
                        .optional()?,
                );
            }
            tx.commit()?;
            Ok(found)
        })
    }

    /// A page of the executions passing `filter` after `after`, newest first.
    pub(super) fn list(
        &self,
        filter: Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Page, Failure>> {
        self.run(move |conn, sql| {
            let built = listing::list(Dialect::Sqlite, &sql.prefix, &filter, after, limit);
            let mut statement = conn.prepare_cached(&built.sql)?;
            let mut rows = statement.query(rusqlite::params_from_iter(built.params.iter()))?;
            let mut listed = Vec::new();
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                let status: String = row.get(3)?;
                listed.push(Listed {
                    status: stored_status(&id, &status)?,
                    workflow: row.get(1)?,
                    parent: row.get(2)?,
                    result: row.get(4)?,
                    interrupted: row.get(5)?,
                    created_ms: stored_ms(&id, row.get(6)?)?,
                    updated_ms: stored_ms(&id, row.get(7)?)?,
                    no: stored_ms(&id, row.get(8)?)?,
                    id,
                });
            }
            Ok(Page::of(listed, limit))
        })
    }

    /// How many executions pass `filter`, up to `cap`.
    pub(super) fn count(
        &self,
        filter: Filter,
        cap: u64,
    ) -> impl std::future::Future<Output = Result<u64, Failure>> {
        self.run(move |conn, sql| {
            let built = listing::count(Dialect::Sqlite, &sql.prefix, &filter, cap);
            let counted: i64 = conn
                .prepare_cached(&built.sql)?
                .query_row(rusqlite::params_from_iter(built.params.iter()), |row| {
                    row.get(0)
                })?;
            Ok(u64::try_from(counted).unwrap_or(0))
        })
    }

    /// The history of execution `id`, in one read transaction.
    pub(super) fn history(
        &self,
        id: String,
    ) -> impl std::future::Future<Output = Result<Option<History>, Failure>> {
        self.run(move |conn, sql| {
            let tx = conn.unchecked_transaction()?;
            let row = tx
                .prepare_cached(&sql.history_execution)?
                .query_row([&id], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        execution_columns(row)?,
                        row.get::<_, i64>(7)?,
                        row.get::<_, i64>(8)?,
                    ))
                })
                .optional()?;
            let Some((no, columns, created_ms, updated_ms)) = row else {
                return Ok(None);
            };
            let execution = stored_execution(&id, columns)?;
            let mut steps = Vec::new();
            {
                let mut statement = tx.prepare_cached(&sql.history_steps)?;
                let mut rows = statement.query([no])?;
                while let Some(row) = rows.next()? {
                    steps.push(Step {
                        key: row.get(0)?,
                        seq: stored_seq(&id, row.get(1)?)?,
                        value: row.get(2)?,
                        at_ms: row
                            .get::<_, Option<i64>>(3)?
                            .map(|at| stored_ms(&id, at))
                            .transpose()?,
                    });
                }
            }
            let mut deferreds = Vec::new();
            {
                let mut statement = tx.prepare_cached(&sql.history_deferreds)?;
                let mut rows = statement.query([no])?;
                while let Some(row) = rows.next()? {
                    deferreds.push(DeferredAt {
                        name: row.get(0)?,
                        value: row.get(1)?,
                        at_ms: row
                            .get::<_, Option<i64>>(2)?
                            .map(|at| stored_ms(&id, at))
                            .transpose()?,
                    });
                }
            }
            let mut timers = Vec::new();
            {
                let mut statement = tx.prepare_cached(&sql.history_timers)?;
                let mut rows = statement.query([&id])?;
                while let Some(row) = rows.next()? {
                    timers.push(Timer {
                        execution_id: id.clone(),
                        name: row.get(0)?,
                        due_ms: stored_due(row.get(1)?)?,
                    });
                }
            }
            tx.commit()?;
            Ok(Some(History {
                created_ms: stored_ms(&id, created_ms)?,
                updated_ms: stored_ms(&id, updated_ms)?,
                id,
                execution,
                steps,
                deferreds,
                timers,
            }))
        })
    }

    /// Runs `read` on a reader's connection: for tests that look at its settings.
    #[cfg(test)]
    pub(super) fn inspect<T, R>(
        &self,
        read: R,
    ) -> impl std::future::Future<Output = Result<T, Failure>>
    where
        T: Send + 'static,
        R: FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        self.run(move |conn, _| Ok(read(conn)?))
    }

    /// Stops the reader threads once the reads queued have run, and waits for them.
    pub(super) async fn close(&self) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        for ended in self.ended.lock().await.drain(..) {
            let _ = ended.await;
        }
    }
}
