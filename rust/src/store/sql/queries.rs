//! The SQL of the journal, written once for both backends (SQLite accepts Postgres' `$N`
//! placeholders) and run through code generic over the sqlx driver.

use std::{marker::PhantomData, sync::Arc};

use sqlx::{
    database::HasStatementCache, postgres::Postgres, sqlite::Sqlite, AssertSqlSafe, ColumnIndex,
    Connection, Database, Decode, Encode, Executor, IntoArguments, PgConnection, PgPool, Row,
    SqlSafeStr, SqlStr, SqliteConnection, SqlitePool, Type,
};

use super::{Op, OpResult};
use crate::store::{Entry, Execution, Snapshot, Status, Timer};

/// Every statement the store runs, with the table prefix filled in.
pub(super) struct Statements {
    /// Starts a write transaction (`None`: the driver's plain `BEGIN`).
    begin_write: Option<SqlStr>,
    /// Starts a read of several tables that must agree with each other.
    begin_read: Option<SqlStr>,
    start: SqlStr,
    execution: SqlStr,
    exists: SqlStr,
    append: SqlStr,
    deferred: SqlStr,
    status: SqlStr,
    drop_timers: SqlStr,
    interrupt: SqlStr,
    timer: SqlStr,
    untimer: SqlStr,
    entries: SqlStr,
    deferreds: SqlStr,
    timers: SqlStr,
    with_status: SqlStr,
}

/// Which SQL dialect details to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

/// `template` with the prefix filled in, shared so that each use costs a reference count.
fn sql(template: &str, prefix: &str) -> SqlStr {
    AssertSqlSafe(Arc::<str>::from(template.replace("{p}", prefix))).into_sql_str()
}

impl Statements {
    pub(super) fn new(dialect: Dialect, prefix: &str) -> Self {
        let (begin_write, begin_read) = match dialect {
            // One writer: taking the write lock up front never deadlocks and never waits on a
            // read transaction's upgrade. A deferred BEGIN reads one WAL snapshot throughout.
            Dialect::Sqlite => (Some(sql("BEGIN IMMEDIATE", prefix)), None),
            Dialect::Postgres => (
                None,
                Some(sql(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                    prefix,
                )),
            ),
        };
        let exists = "EXISTS (SELECT 1 FROM {p}executions WHERE id = $1)";
        Self {
            begin_write,
            begin_read,
            start: sql(
                "INSERT INTO {p}executions (id, workflow, payload, parent, status, result, \
                 interrupted, created_ms, updated_ms) \
                 VALUES ($1, $2, $3, $4, 'running', NULL, FALSE, $5, $5) \
                 ON CONFLICT DO NOTHING RETURNING 1",
                prefix,
            ),
            execution: sql(
                "SELECT workflow, payload, parent, status, result, interrupted \
                 FROM {p}executions WHERE id = $1",
                prefix,
            ),
            exists: sql(&format!("SELECT {exists}"), prefix),
            append: sql(
                &format!(
                    "INSERT INTO {{p}}journal (execution_id, key, seq, value) \
                     SELECT $1, $2, $3, $4 WHERE {exists} \
                     ON CONFLICT DO NOTHING RETURNING 1"
                ),
                prefix,
            ),
            deferred: sql(
                &format!(
                    "INSERT INTO {{p}}deferreds (execution_id, name, value) \
                     SELECT $1, $2, $3 WHERE {exists} \
                     ON CONFLICT DO NOTHING RETURNING 1"
                ),
                prefix,
            ),
            status: sql(
                "UPDATE {p}executions SET status = $2, result = $3, updated_ms = $4 \
                 WHERE id = $1 AND status <> 'complete' RETURNING 1",
                prefix,
            ),
            drop_timers: sql("DELETE FROM {p}timers WHERE execution_id = $1", prefix),
            interrupt: sql(
                "UPDATE {p}executions SET interrupted = TRUE, updated_ms = $2 \
                 WHERE id = $1 AND status <> 'complete' RETURNING 1",
                prefix,
            ),
            timer: sql(
                &format!(
                    "INSERT INTO {{p}}timers (execution_id, name, due_ms) \
                     SELECT $1, $2, $3 WHERE {exists} \
                     ON CONFLICT DO NOTHING RETURNING 1"
                ),
                prefix,
            ),
            untimer: sql(
                "DELETE FROM {p}timers WHERE execution_id = $1 AND name = $2 RETURNING 1",
                prefix,
            ),
            entries: sql(
                "SELECT key, seq, value FROM {p}journal WHERE execution_id = $1 ORDER BY ord",
                prefix,
            ),
            deferreds: sql(
                "SELECT name, value FROM {p}deferreds WHERE execution_id = $1 ORDER BY ord",
                prefix,
            ),
            timers: sql(
                "SELECT execution_id, name, due_ms FROM {p}timers \
                 ORDER BY due_ms, execution_id, name",
                prefix,
            ),
            with_status: sql(
                "SELECT id FROM {p}executions WHERE status = $1 ORDER BY id",
                prefix,
            ),
        }
    }
}

/// The connection pool of either backend, for reads.
#[derive(Clone, Debug)]
pub(super) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A batch of ops per waiter, applied in one transaction; results per batch.
pub(super) type Results = Vec<Vec<OpResult>>;

/// The writer's own connection: commits never wait behind reads for a pooled connection,
/// nor pay a pool's liveness pings.
#[derive(Debug)]
pub(super) enum WriterConn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl WriterConn {
    /// Applies every batch, in order, in one transaction, and commits it.
    pub(super) async fn write(
        &mut self,
        statements: &Statements,
        batches: &[&[Op]],
        now_ms: i64,
    ) -> Result<Results, sqlx::Error> {
        match self {
            WriterConn::Sqlite(conn) => {
                Queries::<Sqlite>::new(statements)
                    .write(conn, batches, now_ms)
                    .await
            }
            WriterConn::Postgres(conn) => {
                Queries::<Postgres>::new(statements)
                    .write(conn, batches, now_ms)
                    .await
            }
        }
    }

    /// Whether the connection still answers, within the connect timeout.
    pub(super) async fn ping(&mut self) -> bool {
        let ping = async {
            match self {
                WriterConn::Sqlite(conn) => conn.ping().await.is_ok(),
                WriterConn::Postgres(conn) => conn.ping().await.is_ok(),
            }
        };
        tokio::time::timeout(super::connect::CONNECT_TIMEOUT, ping)
            .await
            .unwrap_or(false)
    }

    /// Ends the connection, politely if the database answers within the connect timeout.
    pub(super) async fn close(self) {
        let close = async {
            let _ = match self {
                WriterConn::Sqlite(conn) => conn.close().await,
                WriterConn::Postgres(conn) => conn.close().await,
            };
        };
        let _ = tokio::time::timeout(super::connect::CONNECT_TIMEOUT, close).await;
    }
}

impl Pool {
    pub(super) async fn snapshot(
        &self,
        statements: &Statements,
        id: &str,
    ) -> Result<Option<Snapshot>, sqlx::Error> {
        match self {
            Pool::Sqlite(pool) => Queries::<Sqlite>::new(statements).snapshot(pool, id).await,
            Pool::Postgres(pool) => {
                Queries::<Postgres>::new(statements)
                    .snapshot(pool, id)
                    .await
            }
        }
    }

    pub(super) async fn execution(
        &self,
        statements: &Statements,
        id: &str,
    ) -> Result<Option<Execution>, sqlx::Error> {
        match self {
            Pool::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                Queries::<Sqlite>::new(statements)
                    .execution(&mut conn, id)
                    .await
            }
            Pool::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                Queries::<Postgres>::new(statements)
                    .execution(&mut conn, id)
                    .await
            }
        }
    }

    pub(super) async fn timers(&self, statements: &Statements) -> Result<Vec<Timer>, sqlx::Error> {
        match self {
            Pool::Sqlite(pool) => Queries::<Sqlite>::new(statements).timers(pool).await,
            Pool::Postgres(pool) => Queries::<Postgres>::new(statements).timers(pool).await,
        }
    }

    pub(super) async fn with_status(
        &self,
        statements: &Statements,
        status: Status,
    ) -> Result<Vec<String>, sqlx::Error> {
        match self {
            Pool::Sqlite(pool) => {
                Queries::<Sqlite>::new(statements)
                    .with_status(pool, status)
                    .await
            }
            Pool::Postgres(pool) => {
                Queries::<Postgres>::new(statements)
                    .with_status(pool, status)
                    .await
            }
        }
    }

    pub(super) async fn close(&self) {
        match self {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// The statements, run on driver `DB`.
struct Queries<'s, DB> {
    s: &'s Statements,
    db: PhantomData<DB>,
}

fn corrupt(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

fn to_i64(value: u64, what: &str) -> Result<i64, sqlx::Error> {
    i64::try_from(value)
        .map_err(|_| sqlx::Error::Encode(format!("{what} {value} is above 2^63 - 1").into()))
}

impl<'s, DB> Queries<'s, DB>
where
    DB: Database + HasStatementCache,
    <DB as Database>::Arguments: IntoArguments<DB>,
    for<'c> &'c mut <DB as Database>::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> &'a [u8]: Encode<'a, DB> + Type<DB>,
    for<'a> Option<&'a str>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<&'a [u8]>: Encode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> bool: Decode<'a, DB> + Type<DB>,
    for<'a> String: Decode<'a, DB> + Type<DB>,
    for<'a> Vec<u8>: Decode<'a, DB> + Type<DB>,
    usize: ColumnIndex<<DB as Database>::Row>,
{
    fn new(s: &'s Statements) -> Self {
        Self { s, db: PhantomData }
    }

    async fn write(
        &self,
        conn: &mut <DB as Database>::Connection,
        batches: &[&[Op]],
        now_ms: i64,
    ) -> Result<Results, sqlx::Error> {
        let mut tx = match &self.s.begin_write {
            Some(begin) => conn.begin_with(begin.clone()).await?,
            None => conn.begin().await?,
        };
        let mut results = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut out = Vec::with_capacity(batch.len());
            for op in *batch {
                out.push(self.apply(&mut *tx, op, now_ms).await?);
            }
            results.push(out);
        }
        tx.commit().await?;
        Ok(results)
    }

    /// Whether the statement returned a row (they all end in `RETURNING 1`).
    async fn returned(
        conn: &mut <DB as Database>::Connection,
        query: sqlx::query::Query<'_, DB, <DB as Database>::Arguments>,
    ) -> Result<bool, sqlx::Error> {
        Ok(query.fetch_optional(&mut *conn).await?.is_some())
    }

    async fn exists(
        &self,
        conn: &mut <DB as Database>::Connection,
        id: &str,
    ) -> Result<bool, sqlx::Error> {
        let row = sqlx::query::<DB>(self.s.exists.clone())
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        row.try_get::<bool, usize>(0)
    }

    async fn apply(
        &self,
        conn: &mut <DB as Database>::Connection,
        op: &Op,
        now_ms: i64,
    ) -> Result<OpResult, sqlx::Error> {
        let q = |statement: &SqlStr| sqlx::query::<DB>(statement.clone());
        Ok(match op {
            Op::Start {
                id,
                workflow,
                payload,
                parent,
            } => {
                let created = q(&self.s.start)
                    .bind(id.as_str())
                    .bind(workflow.as_str())
                    .bind(payload.as_slice())
                    .bind(parent.as_deref())
                    .bind(now_ms);
                if Self::returned(conn, created).await? {
                    OpResult::Created
                } else {
                    match self.execution(conn, id).await? {
                        Some(existing) => OpResult::Existing(existing),
                        None => {
                            return Err(corrupt(format!(
                                "execution {id:?} neither inserted nor found"
                            )))
                        }
                    }
                }
            }
            Op::Append { id, entry } => {
                let append = q(&self.s.append)
                    .bind(id.as_str())
                    .bind(entry.key.as_str())
                    .bind(i64::from(entry.seq))
                    .bind(entry.value.as_slice());
                OpResult::Done(Self::returned(conn, append).await?)
            }
            Op::Deferred { id, name, value } => {
                let deferred = q(&self.s.deferred)
                    .bind(id.as_str())
                    .bind(name.as_str())
                    .bind(value.as_slice());
                if Self::returned(conn, deferred).await? {
                    OpResult::Done(true)
                } else if self.exists(conn, id).await? {
                    OpResult::Done(false)
                } else {
                    OpResult::UnknownExecution
                }
            }
            Op::Status { id, status, result } => {
                let update = q(&self.s.status)
                    .bind(id.as_str())
                    .bind(status.as_str())
                    .bind(result.as_deref())
                    .bind(now_ms);
                let updated = Self::returned(conn, update).await?;
                if updated && *status == Status::Complete {
                    q(&self.s.drop_timers)
                        .bind(id.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
                OpResult::Done(updated)
            }
            Op::Interrupt { id } => {
                let interrupt = q(&self.s.interrupt).bind(id.as_str()).bind(now_ms);
                if Self::returned(conn, interrupt).await? {
                    OpResult::Done(true)
                } else if self.exists(conn, id).await? {
                    OpResult::Done(false)
                } else {
                    OpResult::UnknownExecution
                }
            }
            Op::Timer(timer) => {
                let insert = q(&self.s.timer)
                    .bind(timer.execution_id.as_str())
                    .bind(timer.name.as_str())
                    .bind(to_i64(timer.due_ms, "due_ms")?);
                OpResult::Done(Self::returned(conn, insert).await?)
            }
            Op::Untimer { execution_id, name } => {
                let delete = q(&self.s.untimer)
                    .bind(execution_id.as_str())
                    .bind(name.as_str());
                OpResult::Done(Self::returned(conn, delete).await?)
            }
        })
    }

    async fn execution(
        &self,
        conn: &mut <DB as Database>::Connection,
        id: &str,
    ) -> Result<Option<Execution>, sqlx::Error> {
        let Some(row) = sqlx::query::<DB>(self.s.execution.clone())
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(None);
        };
        let status: String = row.try_get(3)?;
        Ok(Some(Execution {
            workflow: row.try_get(0)?,
            payload: row.try_get(1)?,
            parent: row.try_get(2)?,
            status: Status::parse(&status)
                .map_err(|_| corrupt(format!("execution {id:?} has status {status:?}")))?,
            result: row.try_get(4)?,
            interrupted: row.try_get(5)?,
        }))
    }

    async fn snapshot(
        &self,
        pool: &sqlx::Pool<DB>,
        id: &str,
    ) -> Result<Option<Snapshot>, sqlx::Error> {
        let mut tx = match &self.s.begin_read {
            Some(begin) => pool.begin_with(begin.clone()).await?,
            None => pool.begin().await?,
        };
        let Some(execution) = self.execution(&mut *tx, id).await? else {
            return Ok(None);
        };
        let rows = sqlx::query::<DB>(self.s.entries.clone())
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.try_get(1)?;
            entries.push(Entry {
                key: row.try_get(0)?,
                seq: u32::try_from(seq)
                    .map_err(|_| corrupt(format!("execution {id:?} has a step at seq {seq}")))?,
                value: row.try_get(2)?,
            });
        }
        let rows = sqlx::query::<DB>(self.s.deferreds.clone())
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        let mut deferreds = Vec::with_capacity(rows.len());
        for row in rows {
            deferreds.push((row.try_get(0)?, row.try_get(1)?));
        }
        tx.commit().await?;
        Ok(Some(Snapshot {
            execution,
            entries,
            deferreds,
        }))
    }

    async fn timers(&self, pool: &sqlx::Pool<DB>) -> Result<Vec<Timer>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let rows = sqlx::query::<DB>(self.s.timers.clone())
            .fetch_all(&mut *conn)
            .await?;
        let mut timers = Vec::with_capacity(rows.len());
        for row in rows {
            let due: i64 = row.try_get(2)?;
            timers.push(Timer {
                execution_id: row.try_get(0)?,
                name: row.try_get(1)?,
                due_ms: u64::try_from(due)
                    .map_err(|_| corrupt(format!("a timer is due at {due}")))?,
            });
        }
        Ok(timers)
    }

    async fn with_status(
        &self,
        pool: &sqlx::Pool<DB>,
        status: Status,
    ) -> Result<Vec<String>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let rows = sqlx::query::<DB>(self.s.with_status.clone())
            .bind(status.as_str())
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(|row| row.try_get(0)).collect()
    }
}
