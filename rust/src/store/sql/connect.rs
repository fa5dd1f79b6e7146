//! Opening a database: the single-engine lock, the migrations, and PostgreSQL's connections.
//! (SQLite's connections are rusqlite's, opened by the threads that use them.)

use std::{
    ffi::OsString,
    fs::{File, OpenOptions, TryLockError},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use sha2::{Digest, Sha256};
use sqlx::{
    migrate::{Migration, Migrator},
    postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
    AssertSqlSafe, Connection, SqlSafeStr,
};

use tokio::{sync::watch, task::JoinHandle};

use super::{
    config::{Config, Durability, Target},
    lease::{AcquireError, Lease},
    SqlError,
};

/// How long connecting may take before `open` gives up.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the migrations wait on a SQLite lock held by another connection.
const MIGRATE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Which SQL dialect a database speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// The migrations of `dialect`, with `{prefix}` filled in and their bookkeeping in the table
/// `<prefix>migrations`.
pub(super) fn migrator(dialect: Dialect, prefix: &str) -> Migrator {
    let embedded = match dialect {
        Dialect::Sqlite => &SQLITE_MIGRATIONS,
        Dialect::Postgres => &POSTGRES_MIGRATIONS,
    };
    let migrations = embedded
        .iter()
        .map(|m| {
            Migration::new(
                m.version,
                m.description.clone(),
                m.migration_type,
                AssertSqlSafe(m.sql.as_str().replace("{prefix}", prefix)).into_sql_str(),
                m.no_tx,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(format!("{prefix}migrations"));
    migrator
}

/// The name of the lease a single engine holds on its database and table prefix.
pub(super) const ENGINE_LEASE: &str = "engine";

/// What keeps a second engine off the database until it is dropped (or the process dies).
pub(super) enum EngineLock {
    /// Nothing: a runner of a cluster shares the database.
    None,
    /// An exclusive `flock` on `<database file>.lock`.
    File(File),
    /// The fenced lease `engine`, kept by a task that also holds its advisory lock.
    Postgres {
        lease: Arc<Lease>,
        stop: watch::Sender<bool>,
        keeper: JoinHandle<Option<PgConnection>>,
    },
}

impl EngineLock {
    /// Lets another engine in.
    pub(super) async fn release(self) {
        match self {
            EngineLock::None => {}
            // Closing the file releases the lock.
            EngineLock::File(file) => drop(file),
            EngineLock::Postgres {
                lease,
                stop,
                keeper,
            } => {
                stop.send_replace(true);
                if let Ok(Some(mut conn)) = keeper.await {
                    // Ending the session releases the advisory lock even if unlocking fails;
                    // a server that stopped answering is not waited on for long.
                    lease.release(&mut conn).await;
                    let _ = tokio::time::timeout(CONNECT_TIMEOUT, conn.close()).await;
                } else {
                    lease.release_quietly();
                }
            }
        }
    }
}

/// The advisory lock key of a table prefix's engine lease: the same in every process and
/// version (engines from before leases took the same lock).
pub(super) fn advisory_key(prefix: &str) -> i64 {
    let digest = Sha256::digest(format!("plait engine lock\0{prefix}").as_bytes());
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

fn connect_error(config: &Config, err: impl std::fmt::Display) -> SqlError {
    SqlError::Connect {
        url: config.masked_url.clone(),
        message: config.scrub(err.to_string()),
    }
}

fn locked(config: &Config) -> SqlError {
    SqlError::Locked {
        url: config.masked_url.clone(),
        prefix: config.prefix.clone(),
    }
}

/// An opened database: locked and migrated.
pub(super) enum Opened {
    Sqlite {
        /// The database file, for the store's own connections.
        path: PathBuf,
        lock: EngineLock,
    },
    Postgres {
        /// Connections for reads.
        pool: PgPool,
        /// The writer's connection, and how to get another.
        writer: PgConnection,
        options: Box<PgConnectOptions>,
        lock: EngineLock,
        /// The engine's lease, which every commit is fenced by; `None` for a runner of a
        /// cluster, whose owned writes are fenced by shard leases.
        lease: Option<Arc<Lease>>,
    },
}

/// Locks, migrates and (on PostgreSQL) connects.
pub(super) async fn open(config: &Config) -> Result<Opened, SqlError> {
    match &config.target {
        Target::Sqlite(options) => {
            let lock = lock_file(config, options)?;
            let options = options
                .clone()
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(MIGRATE_BUSY_TIMEOUT);
            // A pool of one, only because sqlx's migrator takes a connection by `Acquire`,
            // which a bare connection does not satisfy inside a `Send` future.
            let pool = match tokio::time::timeout(
                CONNECT_TIMEOUT,
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(options.clone()),
            )
            .await
            {
                Ok(Ok(pool)) => pool,
                Ok(Err(err)) => return Err(connect_error(config, err)),
                Err(_) => return Err(connect_error(config, "timed out")),
            };
            let migrated = migrator(Dialect::Sqlite, &config.prefix).run(&pool).await;
            pool.close().await;
            migrated.map_err(|err| migrate_error(config, &err))?;
            Ok(Opened::Sqlite {
                path: options.get_filename().to_owned(),
                lock,
            })
        }
        Target::Postgres(options) => {
            // No JIT: the store's statements are key lookups that run in microseconds, but a
            // table without statistics (after a bulk load) can inflate their estimated cost past
            // `jit_above_cost`, and compiling then takes milliseconds.
            let mut options = options
                .clone()
                .application_name("plait")
                .options([("jit", "off")]);
            if config.durability == Durability::Normal {
                options = options.options([("synchronous_commit", "off")]);
            }
            let lock_conn =
                match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                    .await
                {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(err)) => return Err(connect_error(config, err)),
                    Err(_) => return Err(connect_error(config, "timed out")),
                };
            let pool = match tokio::time::timeout(
                CONNECT_TIMEOUT,
                PgPoolOptions::new()
                    .max_connections(config.readers)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    // A ping per read would double its round trips; a dead connection fails
                    // the read with an I/O error instead, which is retried on another.
                    .test_before_acquire(false)
                    // The reads' plans do not depend on their arguments (key lookups), and a
                    // custom plan, which the server keeps choosing for a one-id snapshot, costs
                    // more to plan than to run.
                    .connect_with(
                        options
                            .clone()
                            .options([("plan_cache_mode", "force_generic_plan")]),
                    ),
            )
            .await
            {
                Ok(Ok(pool)) => pool,
                Ok(Err(err)) => return Err(connect_error(config, err)),
                Err(_) => return Err(connect_error(config, "timed out")),
            };
            // Migrations take a lock of their own, so engines opening together apply them once;
            // the lease table they create is needed before the lease can be taken.
            migrator(Dialect::Postgres, &config.prefix)
                .run(&pool)
                .await
                .map_err(|err| migrate_error(config, &err))?;
            let (lock, lease) = engine_lock(config, lock_conn, &options).await?;
            let writer =
                match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                    .await
                {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(err)) => return Err(connect_error(config, err)),
                    Err(_) => return Err(connect_error(config, "timed out")),
                };
            Ok(Opened::Postgres {
                pool,
                writer,
                options: Box::new(options),
                lock,
                lease,
            })
        }
    }
}

/// The single engine's lease, kept by a task on `lock_conn`; nothing for a runner of a
/// cluster, which shares the database.
async fn engine_lock(
    config: &Config,
    mut lock_conn: PgConnection,
    options: &PgConnectOptions,
) -> Result<(EngineLock, Option<Arc<Lease>>), SqlError> {
    if config.cluster {
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, lock_conn.close()).await;
        return Ok((EngineLock::None, None));
    }
    let lease = lease_postgres(config, &mut lock_conn).await?;
    let (stop, stopped) = watch::channel(false);
    let keeper = tokio::spawn(Arc::clone(&lease).keep(Some(lock_conn), options.clone(), stopped));
    let lock = EngineLock::Postgres {
        lease: Arc::clone(&lease),
        stop,
        keeper,
    };
    Ok((lock, Some(lease)))
}

fn lock_file(config: &Config, options: &SqliteConnectOptions) -> Result<EngineLock, SqlError> {
    let mut path = OsString::from(options.get_filename());
    path.push(".lock");
    let path = PathBuf::from(path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| {
            connect_error(
                config,
                format!("cannot open the lock file {}: {err}", path.display()),
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(EngineLock::File(file)),
        Err(TryLockError::WouldBlock) => Err(locked(config)),
        Err(TryLockError::Error(err)) => Err(connect_error(
            config,
            format!("cannot lock {}: {err}", path.display()),
        )),
    }
}

/// Takes the engine lease on `conn`, which keeps its advisory lock.
async fn lease_postgres(config: &Config, conn: &mut PgConnection) -> Result<Arc<Lease>, SqlError> {
    let holder = format!("plait engine, process {}", std::process::id());
    let acquired = tokio::time::timeout(
        CONNECT_TIMEOUT,
        Lease::acquire(
            conn,
            &config.prefix,
            ENGINE_LEASE,
            advisory_key(&config.prefix),
            &holder,
            config.lease_times,
        ),
    )
    .await;
    match acquired {
        Ok(Ok(lease)) => Ok(lease),
        Ok(Err(AcquireError::Held)) => Err(locked(config)),
        Ok(Err(AcquireError::Database(err))) => Err(connect_error(config, err)),
        Err(_) => Err(connect_error(config, "timed out taking the engine lease")),
    }
}

fn migrate_error(config: &Config, err: &sqlx::migrate::MigrateError) -> SqlError {
    SqlError::Migrate {
        url: config.masked_url.clone(),
        message: config.scrub(err.to_string()),
    }
}
