//! A cluster's runners and shard leases in PostgreSQL (Effect's `SqlRunnerStorage`, fenced).
//!
//! Every statement runs on one connection of the runner's own, which holds the session
//! advisory lock `(namespace, lock_key)` for as long as the process lives: peers read
//! `pg_locks` to tell a live runner from one whose process died (SIGKILL, a lost machine), whose
//! session the server ended at once. The lock key is new in each process, so a process that
//! restarts at the same address is a new holder.
//!
//! Shard leases are rows of `<prefix>leases` (see `lease.rs`): acquiring takes each shard that
//! is free, expired, held by a process whose lock is gone, or held by this process under an
//! epoch it lost track of; each acquisition is a new epoch. Renewing needs the epoch unchanged.
//! The writer fences every owned write with the epoch (see `ShardFences`), so a runner whose
//! lease lapsed (paused, partitioned) cannot commit once another runner took the shard.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{
    postgres::PgConnectOptions, AssertSqlSafe, Connection, PgConnection, SqlSafeStr, SqlStr,
};
use tokio::sync::Mutex;

use super::{config, connect::CONNECT_TIMEOUT, lease::shard_lease, Failure, SqlError};

/// A runner as its peers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerRow {
    /// Its machine id (for its snowflakes), below 1024.
    pub machine_id: i64,
    /// Where it is reached, `"host:port"`.
    pub address: String,
    /// What it said of itself at registration (JSON: its weight and shard groups).
    pub runner: String,
    /// Whether it is healthy: marked so, its heartbeat fresher than the expiration, and (unless
    /// advisory locks are off) its process alive.
    pub healthy: bool,
    /// Its resident entity instances, as of its last heartbeat.
    pub entities: u64,
}

fn sql(template: &str, prefix: &str) -> SqlStr {
    AssertSqlSafe(template.replace("{p}", prefix)).into_sql_str()
}

/// Whether a runner's session lock is held (`r` is its `runners` row, `$ns` the namespace).
const LOCK_HELD: &str = "EXISTS (SELECT 1 FROM pg_locks k \
     WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2 \
       AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND k.classid::BIGINT = $NS AND k.objid::BIGINT = KEY)";

struct Statements {
    register: SqlStr,
    heartbeat: SqlStr,
    runners: SqlStr,
    unregister: SqlStr,
    acquire: SqlStr,
    renew: SqlStr,
    release: SqlStr,
    reserve: SqlStr,
    set_health: SqlStr,
}

impl Statements {
    fn new(prefix: &str) -> Self {
        let lock_of_runner = LOCK_HELD.replace("$NS", "$2").replace("KEY", "r.lock_key");
        let lock_of_holder = LOCK_HELD.replace("$NS", "$4").replace(
            "KEY",
            "coalesce(substring(l.holder from '/([0-9]+)$')::BIGINT, -1)",
        );
        Self {
            register: sql(
                "INSERT INTO {p}runners AS r (address, runner, healthy, last_heartbeat, lock_key) \
                 VALUES ($1, $2, TRUE, now(), $3) \
                 ON CONFLICT (address) DO UPDATE SET runner = excluded.runner, healthy = TRUE, \
                     last_heartbeat = now(), lock_key = excluded.lock_key \
                 RETURNING machine_id",
                prefix,
            ),
            heartbeat: sql(
                "UPDATE {p}runners SET last_heartbeat = now(), entities = $3 \
                 WHERE address = $1 AND lock_key = $2 RETURNING machine_id",
                prefix,
            ),
            runners: sql(
                &format!(
                    "SELECT r.machine_id::BIGINT, r.address::TEXT, r.runner, \
                         r.healthy AND r.last_heartbeat > now() - $1 * interval '1 millisecond' \
                         AND ($3 OR {lock_of_runner}), r.entities::BIGINT \
                     FROM {{p}}runners r ORDER BY r.address"
                ),
                prefix,
            ),
            unregister: sql(
                "DELETE FROM {p}runners \
                 WHERE (address = $1 AND lock_key = $2) \
                    OR last_heartbeat < now() - $3 * interval '1 millisecond'",
                prefix,
            ),
            acquire: sql(
                &format!(
                    "INSERT INTO {{p}}leases AS l (name, holder, epoch, expires_at) \
                     SELECT name, $2, 1, now() + $3 * interval '1 millisecond' \
                     FROM unnest($1::TEXT[]) AS name \
                     ON CONFLICT (name) DO UPDATE \
                     SET holder = excluded.holder, epoch = l.epoch + 1, \
                         expires_at = excluded.expires_at \
                     WHERE l.holder = excluded.holder OR l.expires_at <= now() \
                        OR ($5 AND NOT {lock_of_holder}) \
                     RETURNING name, epoch"
                ),
                prefix,
            ),
            // Lease rows are locked in name order (bytewise, as Rust sorts), as commits lock
            // them (`FOR SHARE`, fences sorted by name): in any other order a renewal and a
            // commit could deadlock.
            renew: sql(
                "WITH held AS (SELECT l.name FROM {p}leases l \
                     JOIN unnest($1::TEXT[], $2::BIGINT[]) AS h(name, epoch) \
                     ON l.name = h.name AND l.epoch = h.epoch \
                     WHERE l.holder = $4 ORDER BY l.name COLLATE \"C\" FOR UPDATE OF l) \
                 UPDATE {p}leases AS l SET expires_at = now() + $3 * interval '1 millisecond' \
                 FROM held WHERE l.name = held.name \
                 RETURNING l.name",
                prefix,
            ),
            reserve: sql(
                "SELECT nextval(pg_get_serial_sequence('{p}runners', 'machine_id'))",
                prefix,
            ),
            // Never the last healthy runner unhealthy (Effect's RunnerHealth).
            set_health: sql(
                "UPDATE {p}runners SET healthy = $2 \
                 WHERE address = $1 AND healthy <> $2 \
                   AND ($2 OR EXISTS (SELECT 1 FROM {p}runners o \
                        WHERE o.address <> $1 AND o.healthy \
                          AND o.last_heartbeat > now() - $3 * interval '1 millisecond'))",
                prefix,
            ),
            release: sql(
                "WITH held AS (SELECT l.name FROM {p}leases l \
                     JOIN unnest($1::TEXT[], $2::BIGINT[]) AS h(name, epoch) \
                     ON l.name = h.name AND l.epoch = h.epoch \
                     WHERE l.holder = $3 ORDER BY l.name COLLATE \"C\" FOR UPDATE OF l) \
                 UPDATE {p}leases AS l SET expires_at = now() \
                 FROM held WHERE l.name = held.name",
                prefix,
            ),
        }
    }
}

/// The lease names and epochs of `held` (shard, epoch), as the statements bind them.
fn leases(held: &[(String, i64)]) -> (Vec<String>, Vec<i64>) {
    held.iter()
        .map(|(shard, epoch)| (shard_lease(shard), *epoch))
        .unzip()
}

/// The advisory lock namespace of a table prefix's runners (positive, so that `pg_locks`
/// shows it as is).
fn namespace(prefix: &str) -> i32 {
    let digest = Sha256::digest(format!("plait runners\0{prefix}").as_bytes());
    let mut bytes = [0; 4];
    bytes.copy_from_slice(&digest[..4]);
    i32::from_be_bytes(bytes) & 0x7fff_ffff
}

/// A lock key no other live process of the cluster holds: new per process and store.
fn new_lock_key() -> i32 {
    let seed = format!(
        "{}\0{}\0{:?}",
        std::process::id(),
        crate::clock::now_ms(),
        std::time::Instant::now()
    );
    let digest = Sha256::digest(seed.as_bytes());
    let mut bytes = [0; 4];
    bytes.copy_from_slice(&digest[..4]);
    (i32::from_be_bytes(bytes) & 0x7fff_ffff).max(1)
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// One runner's registration and shard leases. See the [module documentation](self).
pub struct RunnerStorage {
    address: String,
    /// What `<prefix>leases.holder` says of this process: `<address>/<lock key>`.
    holder: String,
    lock_key: i32,
    namespace: i32,
    advisory: bool,
    options: PgConnectOptions,
    masked_url: String,
    secrets: Vec<String>,
    statements: Statements,
    /// The connection holding the session lock; `None` after it failed, until the next call.
    conn: Mutex<Option<PgConnection>>,
}

impl std::fmt::Debug for RunnerStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerStorage")
            .field("address", &self.address)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl RunnerStorage {
    pub(super) fn new(
        options: PgConnectOptions,
        prefix: &str,
        address: &str,
        advisory: bool,
        masked_url: String,
        secrets: Vec<String>,
    ) -> Self {
        let lock_key = new_lock_key();
        Self {
            address: address.to_owned(),
            holder: format!("{address}/{lock_key}"),
            lock_key,
            namespace: namespace(prefix),
            advisory,
            options,
            masked_url,
            secrets,
            statements: Statements::new(prefix),
            conn: Mutex::new(None),
        }
    }

    /// This runner's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// What the leases table names this process.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn error(&self, failure: &Failure) -> SqlError {
        let message = config::scrub(failure.to_string(), &self.secrets);
        match failure {
            Failure::Transient(_) | Failure::Closed => SqlError::Unavailable {
                url: self.masked_url.clone(),
                seconds: CONNECT_TIMEOUT.as_secs(),
                message,
            },
            Failure::Refused(_) | Failure::Fenced(_) => SqlError::Database {
                url: self.masked_url.clone(),
                message,
            },
        }
    }

    /// Runs `statement` on the lock connection, (re)connecting and taking the session lock
    /// first when needed; a failure drops the connection (and with it the lock), so the next
    /// call starts a new session.
    async fn run<T>(
        &self,
        call: impl for<'c> FnOnce(
            &'c mut PgConnection,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'c>,
        >,
    ) -> Result<T, SqlError> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            *conn = Some(self.connect().await.map_err(|f| self.error(&f))?);
        }
        let session = conn.as_mut().expect("connected above");
        match tokio::time::timeout(CONNECT_TIMEOUT, call(session)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                let failure = Failure::from(err);
                if matches!(failure, Failure::Transient(_)) {
                    conn.take();
                }
                Err(self.error(&failure))
            }
            Err(_) => {
                conn.take();
                Err(self.error(&Failure::Transient(
                    "the runner's lock session did not answer".to_owned(),
                )))
            }
        }
    }

    async fn connect(&self) -> Result<PgConnection, Failure> {
        let mut conn =
            tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.options))
                .await
                .map_err(|_| Failure::Transient("connecting timed out".to_owned()))??;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(self.namespace)
            .bind(self.lock_key)
            .fetch_one(&mut conn)
            .await?;
        if !locked {
            // Only this process uses its key: someone else's session holds it by chance.
            return Err(Failure::Refused(format!(
                "the runner lock ({}, {}) is held by another session",
                self.namespace, self.lock_key
            )));
        }
        Ok(conn)
    }

    /// Registers this runner (again): its row, healthy, with a fresh heartbeat and its lock key.
    /// Returns its machine id (below 1024).
    ///
    /// # Errors
    /// When the database fails or cannot be reached.
    pub async fn register(&self, runner: &str) -> Result<i64, SqlError> {
        let statement = self.statements.register.clone();
        let (address, runner, key) = (
            self.address.clone(),
            runner.to_owned(),
            i64::from(self.lock_key),
        );
        let id: i32 = self
            .run(move |conn| {
                Box::pin(async move {
                    sqlx::query_scalar(statement)
                        .bind(address)
                        .bind(runner)
                        .bind(key)
                        .fetch_one(conn)
                        .await
                })
            })
            .await?;
        Ok(i64::from(id) % 1024)
    }

    /// Bumps this runner's heartbeat, with its resident entity count. `false`: its row is gone (a peer unregistered it as
    /// stale, or another process registered at this address): it must register again.
    ///
    /// # Errors
    /// When the database fails or cannot be reached.
    pub async fn heartbeat(&self, entities: u64) -> Result<bool, SqlError> {
        let statement = self.statements.heartbeat.clone();
        let (address, key) = (self.address.clone(), i64::from(self.lock_key));
        let entities = i32::try_from(entities).unwrap_or(i32::MAX);
        let found: Option<i32> = self
            .run(move |conn| {
                Box::pin(async move {
                    sqlx::query_scalar(statement)
                        .bind(address)
                        .bind(key)
                        .bind(entities)
                        .fetch_optional(conn)
                        .await
                })
            })
            .await?;
        Ok(found.is_some())
    }

    /// Every registered runner, healthy or not, by address.
    ///
    /// # Errors
    /// When the database fails or cannot be reached.
    pub async fn runners(&self, expiration: Duration) -> Result<Vec<RunnerRow>, SqlError> {
        let statement = self.statements.runners.clone();
        let (expiration, namespace, no_locks) =
            (ms(expiration), i64::from(self.namespace), !self.advisory);
        let rows: Vec<(i64, String, String, Option<bool>, i64)> = self
            .run(move |conn| {
                Box::pin(async move {
                    sqlx::query_as(statement)
                        .bind(expiration)
                        .bind(namespace)
                        .bind(no_locks)
                        .fetch_all(conn)
                        .await
                })
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(machine_id, address, runner, healthy, entities)| RunnerRow {
                    machine_id: machine_id % 1024,
                    address,
                    runner,
                    healthy: healthy.unwrap_or(false),
                    entities: u64::try_from(entities).unwrap_or(0),
                },
            )
            .collect())
    }

    /// Removes this runner's row, and those of runners whose heartbeat is older than
    /// `expiration`.
    ///
    /// # Errors
    /// When the database fails or cannot be reached.
    pub async fn unregister(&self, expiration: Duration) -> Result<(), SqlError> {
        let statement = self.statements.unregister.clone();
        let (address, key, expiration) = (
            self.address.clone(),
            i64::from(self.lock_key),
            ms(expiration),
        );
        self.run(move |conn| {
            Box::pin(async move {
                sqlx::query(statement)
                    .bind(address)
                    .bind(key)
                    .bind(expiration)
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .await
    }

    /// Takes the leases of `shards` that may be taken (see the module documentation), for
    /// `ttl`: each taken shard with its new epoch.
    ///
    /// # Errors
    /// When the database fails or cannot be reached.
    pub async fn acquire(
        &self,
        shards: &[String],
        ttl: Duration,
    ) -> Result<Vec<(String, i64)>, SqlError> {
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let statement = self.statements.acquire.clone();
        let mut names: Vec<String> = shards.iter().map(|s| shard_lease(s)).collect();
        names.sort_unstable(); // rows locked in name order (see `renew`)
        let (holder, ttl, namespace, advisory) = (
            self.holder.clone(),
            ms(ttl),
            i64::from(self.namespace),
            self.advisory,
        );
        let rows: Vec<(String, i64)> = self
            .run(move |conn| {
                Box::pin(async move {
                    sqlx::query_as(statement)
                        .bind(names)
                        .bind(holder)
                        .bind(ttl)
                        .bind(namespace)
                        .bind(advisory)
                        .fetch_all(conn)
                        .await
                })
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, epoch)| Some((name.strip_prefix("shard/")?.to_owned(), epoch)))
            .collect())
    }

    /// Renews the leases `held` (shard, epoch) for `ttl`: the shards still held.
    ///
    /// # Errors
    /// When the database fails or cannot be reached.
    pub async fn renew(
        &self,
        held: &[(String, i64)],
        ttl: Duration,
    ) -> Result<Vec<String>, SqlError> {
        let statement = self.statements.renew.clone();
        let (names, epochs) = leases(held);
        let (holder, ttl) = (self.holder.clone(), ms(ttl));
        let rows: Vec<String> = self
            .run(move |conn| {
                Box::pin(async move {
                    sqlx::query_scalar(statement)
                        .bind(names)
                        .bind(epochs)
                        .bind(ttl)
                        .bind(holder)
                        .fetch_all(conn)
                        .await
                })
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|name| Some(name.strip_prefix("shard/")?.to_owned()))
            .collect())
    }

    /// A machine id for a client-only process: the next number of the runners' sequence (below
    /// 1024), so that it differs from every runner's until the sequence wraps.
    ///
    /// # Errors
    /// When the database fails or cannot be reached.
    pub async fn reserve_machine_id(&self) -> Result<i64, SqlError> {
        let statement = self.statements.reserve.clone();
        let id: i64 = self
            .run(move |conn| {
                Box::pin(async move { sqlx::query_scalar(statement).fetch_one(conn).await })
            })
            .await?;
        Ok(id % 1024)
    }

    /// Lets the leases `held` (shard, epoch) go at once, for another runner to take.
    ///
    /// # Errors
    /// When the database fails or cannot be reached.
    pub async fn release(&self, held: &[(String, i64)]) -> Result<(), SqlError> {
        if held.is_empty() {
            return Ok(());
        }
        let statement = self.statements.release.clone();
        let (names, epochs) = leases(held);
        let holder = self.holder.clone();
        self.run(move |conn| {
            Box::pin(async move {
                sqlx::query(statement)
                    .bind(names)
                    .bind(epochs)
                    .bind(holder)
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .await
    }

    /// Marks the runner at `address` healthy or not (the health check's verdict), unless it
    /// is the last healthy one. Returns whether its mark changed.
    ///
    /// # Errors
    /// When the database fails or cannot be reached.
    pub async fn set_health(
        &self,
        address: &str,
        healthy: bool,
        expiration: Duration,
    ) -> Result<bool, SqlError> {
        let statement = self.statements.set_health.clone();
        let (address, expiration) = (address.to_owned(), ms(expiration));
        let namespace = i64::from(self.namespace);
        let changed = self
            .run(move |conn| {
                Box::pin(async move {
                    // One verdict at a time cluster-wide, each reading the health the previous
                    // one left: two checkers marking each other unhealthy at once would both
                    // see the other still healthy and leave none.
                    let mut tx = conn.begin().await?;
                    sqlx::query("SELECT pg_advisory_xact_lock($1::INT, -1)")
                        .bind(namespace)
                        .execute(&mut *tx)
                        .await?;
                    let changed = sqlx::query(statement)
                        .bind(address)
                        .bind(healthy)
                        .bind(expiration)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(changed)
                })
            })
            .await?;
        Ok(changed.rows_affected() > 0)
    }

    /// Ends the lock session (the lock goes with it).
    pub async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, conn.close()).await;
        }
    }
}
