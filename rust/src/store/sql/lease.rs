//! Fenced leases on PostgreSQL: the claim a process holds on part of a database, which the
//! database itself checks inside every commit of the holder.
//!
//! A lease is a row of `<prefix>leases`: a name, its holder, an epoch that grows by one at each
//! new acquisition, and an expiry timed by the database's clock. The writer sends the name and
//! epoch of every lease its commit depends on (its *fence*); `<prefix>apply_fenced` locks each
//! lease row (`FOR SHARE`) and refuses the whole transaction, with SQLSTATE [`FENCED`], unless
//! the epoch is still the holder's and the lease has not expired. The row lock orders a takeover
//! after the commit it would race: the taker's `UPDATE` waits until that commit ends, and a
//! commit that starts after the takeover sees the new epoch. So once another process holds the
//! lease, nothing the old holder sends can commit, however long it was paused or partitioned.
//!
//! Beside the row, the holder keeps a session advisory lock on a connection of its own. The
//! server releases it the moment that session ends (the process died, or the session was
//! terminated), which lets a newcomer take an unexpired lease at once instead of waiting out the
//! expiry; the row's epoch then fences the old holder if it is still alive. A holder whose
//! session ended re-takes the advisory lock and renews; if another process holds the lock, or
//! the lease has a new epoch, the holder has lost it for good.
//!
//! The single engine holds one lease (`engine`); runners of a cluster hold one per shard.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use rustc_hash::FxHashMap;
use sqlx::{
    postgres::PgConnectOptions, AssertSqlSafe, Connection, PgConnection, SqlSafeStr, SqlStr,
};
use tokio::sync::{watch, Notify};

use super::{connect::CONNECT_TIMEOUT, Failure};

/// The SQLSTATE `<prefix>apply_fenced` raises when a commit's lease is not held.
pub(crate) const FENCED: &str = "PLF01";

/// How long a lease lasts without renewal, and how often it is renewed and its session checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimes {
    /// A lease not renewed for this long may be taken by another process (Effect's
    /// `shardLockExpiration`, 35 s).
    pub ttl: Duration,
    /// How often the holder renews it (Effect's `shardLockRefreshInterval`, 10 s).
    pub renew_every: Duration,
    /// How often the holder checks that its lock session is alive, so that a terminated
    /// session is noticed (and the lock re-taken) within this long.
    pub check_every: Duration,
}

impl Default for LeaseTimes {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(35),
            renew_every: Duration::from_secs(10),
            check_every: Duration::from_secs(1),
        }
    }
}

impl LeaseTimes {
    /// Times for a lease lasting `ttl`: renewed 3.5 times per `ttl` (Effect's 10 s of 35 s) and
    /// its session checked every second, or every renewal if that is more often.
    pub fn for_ttl(ttl: Duration) -> Self {
        let renew_every = ttl.mul_f64(10.0 / 35.0);
        Self {
            ttl,
            renew_every,
            check_every: renew_every.min(Duration::from_secs(1)),
        }
    }
}

/// What a commit of the holder carries: the lease's name and epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The lease's name.
    pub name: String,
    /// The epoch the holder acquired it at.
    pub epoch: i64,
}

/// Where a lease stands for its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Held at this epoch.
    Held(i64),
    /// Lost for good: why.
    Lost(String),
}

/// The statements of a lease, with the table prefix filled in.
struct Statements {
    acquire: SqlStr,
    renew: SqlStr,
    release: SqlStr,
}

fn sql(template: &str, prefix: &str) -> SqlStr {
    AssertSqlSafe(template.replace("{p}", prefix)).into_sql_str()
}

impl Statements {
    fn new(prefix: &str) -> Self {
        Self {
            // A new lease, or a new epoch of one that has expired or whose holder's session is
            // gone ($4: this process holds the advisory lock). Nothing when it is held.
            acquire: sql(
                "INSERT INTO {p}leases AS l (name, holder, epoch, expires_at) \
                 VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond') \
                 ON CONFLICT (name) DO UPDATE \
                 SET holder = excluded.holder, epoch = l.epoch + 1, \
                     expires_at = excluded.expires_at \
                 WHERE $4 OR l.expires_at <= now() \
                 RETURNING epoch",
                prefix,
            ),
            // Renewing needs only the epoch: an unchanged epoch means nobody took the lease,
            // even if it expired meanwhile.
            renew: sql(
                "UPDATE {p}leases SET expires_at = now() + $3 * interval '1 millisecond' \
                 WHERE name = $1 AND epoch = $2 RETURNING epoch",
                prefix,
            ),
            release: sql(
                "UPDATE {p}leases SET expires_at = now() WHERE name = $1 AND epoch = $2",
                prefix,
            ),
        }
    }
}

/// Why acquiring failed.
#[derive(Debug)]
pub(super) enum AcquireError {
    /// Another live process holds the lease.
    Held,
    /// The database failed.
    Database(Failure),
}

impl From<sqlx::Error> for AcquireError {
    fn from(err: sqlx::Error) -> Self {
        AcquireError::Database(err.into())
    }
}

/// A lease this process holds (or held), shared by the writer and the keeper task.
pub(crate) struct Lease {
    name: String,
    holder: String,
    key: i64,
    times: LeaseTimes,
    statements: Statements,
    state: watch::Sender<LeaseState>,
    /// Whether this process holds the advisory lock beside the row.
    locked: Mutex<bool>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
}

impl Lease {
    /// Takes lease `name` on the connection `conn`, which then keeps its advisory lock: a new
    /// epoch if the lease is free, expired, or its holder's session has ended.
    /// `key` is the advisory lock's key.
    pub(super) async fn acquire(
        conn: &mut PgConnection,
        prefix: &str,
        name: &str,
        key: i64,
        holder: &str,
        times: LeaseTimes,
    ) -> Result<Arc<Self>, AcquireError> {
        let statements = Statements::new(prefix);
        let locked = try_lock(conn, key).await?;
        let epoch: Option<i64> = sqlx::query_scalar(statements.acquire.clone())
            .bind(name)
            .bind(holder)
            .bind(ms(times.ttl))
            .bind(locked)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(epoch) = epoch else {
            if locked {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .execute(&mut *conn)
                    .await;
            }
            return Err(AcquireError::Held);
        };
        let (state, _) = watch::channel(LeaseState::Held(epoch));
        Ok(Arc::new(Self {
            name: name.to_owned(),
            holder: holder.to_owned(),
            key,
            times,
            statements,
            state,
            locked: Mutex::new(locked),
        }))
    }

    /// The lease's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// What a commit sends, or why it must not be sent.
    pub(crate) fn fence(&self) -> Result<Fence, String> {
        match &*self.state.borrow() {
            LeaseState::Held(epoch) => Ok(Fence {
                name: self.name.clone(),
                epoch: *epoch,
            }),
            LeaseState::Lost(why) => Err(why.clone()),
        }
    }

    /// Where the lease stands.
    pub(crate) fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// Waits until the lease is lost; returns why.
    pub(crate) async fn lost(&self) -> String {
        let mut state = self.state.subscribe();
        loop {
            if let LeaseState::Lost(why) = &*state.borrow_and_update() {
                return why.clone();
            }
            if state.changed().await.is_err() {
                return "the lease was dropped".to_owned();
            }
        }
    }

    /// Marks the lease lost (once: the first reason stays) and logs it.
    pub(crate) fn lose(&self, why: &str) {
        if self.set_lost(why) {
            log::warn!(target: "plait.store", "lost the lease {:?}: {why}", self.name);
        }
    }

    /// Marks the lease lost; returns whether it was held until now.
    fn set_lost(&self, why: &str) -> bool {
        let mut first = false;
        self.state.send_if_modified(|state| {
            if matches!(state, LeaseState::Held(_)) {
                *state = LeaseState::Lost(why.to_owned());
                first = true;
                true
            } else {
                false
            }
        });
        first
    }

    /// Renews the lease on `conn`. `Ok(false)`: it has a new epoch, so it is lost (and marked
    /// so).
    pub(crate) async fn renew(&self, conn: &mut PgConnection) -> Result<bool, Failure> {
        let LeaseState::Held(epoch) = self.state() else {
            return Ok(false);
        };
        let renewed: Option<i64> = sqlx::query_scalar(self.statements.renew.clone())
            .bind(&self.name)
            .bind(epoch)
            .bind(ms(self.times.ttl))
            .fetch_optional(conn)
            .await?;
        if renewed.is_none() {
            self.lose(&format!(
                "another process took it over (this one, {:?}, held epoch {epoch})",
                self.holder
            ));
        }
        Ok(renewed.is_some())
    }

    /// Keeps the lease: checks its lock session every `check_every`, renews every
    /// `renew_every`, and re-takes the advisory lock on a new session when the old one ended.
    /// Returns the connection when `stop` turns true or the lease is lost.
    pub(super) async fn keep(
        self: Arc<Self>,
        mut conn: Option<PgConnection>,
        options: PgConnectOptions,
        mut stop: watch::Receiver<bool>,
    ) -> Option<PgConnection> {
        let mut since_renewal = Duration::ZERO;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.times.check_every) => {}
                _ = stop.wait_for(|stop| *stop) => return conn,
            }
            if matches!(self.state(), LeaseState::Lost(_)) {
                return conn;
            }
            since_renewal += self.times.check_every;
            if conn.is_none() {
                conn = self.reconnect(&options).await;
                // A new session: renew at once, so a lapse is found now rather than later.
                since_renewal = self.times.renew_every;
            }
            let Some(session) = conn.as_mut() else {
                continue;
            };
            if !self.locked() {
                match try_lock(session, self.key).await {
                    Ok(true) => self.set_locked(true),
                    Ok(false) => {}
                    Err(err) => {
                        self.session_failed(&mut conn, &err.to_string()).await;
                        continue;
                    }
                }
            }
            let outcome = if since_renewal >= self.times.renew_every {
                since_renewal = Duration::ZERO;
                self.renew(session).await.map(|_| ())
            } else {
                ping(session).await
            };
            if let Err(err) = outcome {
                self.session_failed(&mut conn, &err.to_string()).await;
            }
        }
    }

    fn locked(&self) -> bool {
        *self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_locked(&self, locked: bool) {
        *self.locked.lock().unwrap_or_else(PoisonError::into_inner) = locked;
    }

    /// The lock session failed: the advisory lock went with it.
    async fn session_failed(&self, conn: &mut Option<PgConnection>, message: &str) {
        if self.locked() {
            log::warn!(
                target: "plait.store",
                "the session holding the lock of lease {:?} ended ({message}); taking it again",
                self.name
            );
        }
        self.set_locked(false);
        if let Some(old) = conn.take() {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, old.close()).await;
        }
    }

    /// A new lock session. If another process now holds the advisory lock, it is taking the
    /// lease over: the lease is lost.
    async fn reconnect(&self, options: &PgConnectOptions) -> Option<PgConnection> {
        let mut conn = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            PgConnection::connect_with(options),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => {
                log::warn!(
                    target: "plait.store",
                    "cannot reconnect to keep lease {:?}: {err}; retrying",
                    self.name
                );
                return None;
            }
            Err(_) => {
                log::warn!(
                    target: "plait.store",
                    "reconnecting to keep lease {:?} timed out; retrying",
                    self.name
                );
                return None;
            }
        };
        match try_lock(&mut conn, self.key).await {
            Ok(true) => {
                self.set_locked(true);
                Some(conn)
            }
            Ok(false) => {
                self.lose("another process holds its lock, so it is taking the lease over");
                let _ = tokio::time::timeout(CONNECT_TIMEOUT, conn.close()).await;
                None
            }
            Err(_) => None,
        }
    }

    /// Marks the lease released without telling the database (whose session is gone).
    pub(super) fn release_quietly(&self) {
        self.set_lost("released");
    }

    /// Lets the lease go at once (its expiry set to now), on `conn`, if it is still held.
    pub(super) async fn release(&self, conn: &mut PgConnection) {
        if let LeaseState::Held(epoch) = self.state() {
            let release = async {
                let _ = sqlx::query(self.statements.release.clone())
                    .bind(&self.name)
                    .bind(epoch)
                    .execute(&mut *conn)
                    .await;
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(self.key)
                    .execute(&mut *conn)
                    .await;
            };
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, release).await;
        }
        self.set_lost("released");
    }
}

async fn ping(conn: &mut PgConnection) -> Result<(), Failure> {
    match tokio::time::timeout(CONNECT_TIMEOUT, conn.ping()).await {
        Ok(result) => result.map_err(Failure::from),
        Err(_) => Err(Failure::Transient(
            "the lock session did not answer".to_owned(),
        )),
    }
}

/// The name of the lease of `shard` (`"group:id"`).
pub fn shard_lease(shard: &str) -> String {
    format!("shard/{shard}")
}

/// The shard leases a runner holds, with their epochs: what its writer fences
/// [`crate::store::Op::Owned`] ops with, and what the database refused.
///
/// The cluster's acquisition loop adds a shard once it acquired its lease and drops it before it
/// releases it; the writer drops one the database refused (its lease lapsed or was taken over)
/// and reports it, so that the runner stops serving it.
#[derive(Debug, Default)]
pub struct ShardFences {
    held: Mutex<FxHashMap<String, i64>>,
    refused: Mutex<Vec<String>>,
    /// Wakes whoever waits on [`ShardFences::refusals`].
    changed: Notify,
    /// Owned writes answered `Fenced` (their shard not held): counted, never committed.
    fenced: AtomicU64,
}

impl ShardFences {
    /// Writes owned by `shard` go out fenced by its lease at `epoch` from now on.
    pub fn hold(&self, shard: &str, epoch: i64) {
        self.held().insert(shard.to_owned(), epoch);
    }

    /// Writes owned by `shard` are answered `Fenced` from now on. Returns whether it was held.
    pub fn drop_shard(&self, shard: &str) -> bool {
        self.held().remove(shard).is_some()
    }

    /// The epoch `shard` is held at, if it is.
    pub fn epoch(&self, shard: &str) -> Option<i64> {
        self.held().get(shard).copied()
    }

    /// Counts `n` owned writes answered `Fenced`.
    pub(super) fn count_fenced(&self, n: u64) {
        self.fenced.fetch_add(n, Ordering::Relaxed);
    }

    /// How many owned writes were answered `Fenced` so far (a runner that lost shards while
    /// paused or partitioned shows them here).
    pub fn fenced_writes(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Every shard held, with its epoch.
    pub fn all(&self) -> Vec<(String, i64)> {
        self.held()
            .iter()
            .map(|(shard, epoch)| (shard.clone(), *epoch))
            .collect()
    }

    /// The database refused a commit fenced by lease `name`: its shard is dropped and reported.
    /// Returns whether `name` is a shard lease this runner held.
    pub(super) fn refused(&self, name: &str) -> bool {
        let Some(shard) = name.strip_prefix("shard/") else {
            return false;
        };
        if !self.drop_shard(shard) {
            return false;
        }
        self.refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(shard.to_owned());
        self.changed.notify_one();
        true
    }

    /// Waits until the database refused a shard's lease, and takes every shard refused so far.
    pub async fn refusals(&self) -> Vec<String> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken =
                std::mem::take(&mut *self.refused.lock().unwrap_or_else(PoisonError::into_inner));
            if !taken.is_empty() {
                return taken;
            }
            notified.await;
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, FxHashMap<String, i64>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
