//! What `open` is given, checked before anything connects: the URL (and its masked form),
//! the table prefix and the durability mode.

use std::{fmt, str::FromStr};

use sqlx::{postgres::PgConnectOptions, sqlite::SqliteConnectOptions};

use super::{lease::LeaseTimes, SqlError};

/// The table prefix used when none is given.
pub const DEFAULT_PREFIX: &str = "plait_";

/// How hard a commit tries to survive a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A committed write survives a crash of the process, of the OS and a power cut: SQLite
    /// syncs the WAL on every commit (`synchronous=FULL`), PostgreSQL waits for its WAL flush.
    Full,
    /// Faster commits that may lose the last ones on a crash or power cut, but never corrupt
    /// the database: SQLite `synchronous=NORMAL` (in WAL mode it still survives a crash of the
    /// process alone), PostgreSQL `synchronous_commit = off`.
    Normal,
}

impl Durability {
    /// Parses `"full"` or `"normal"`.
    ///
    /// # Errors
    /// [`SqlError::InvalidArgument`] for any other name.
    pub fn parse(name: &str) -> Result<Self, SqlError> {
        match name {
            "full" => Ok(Self::Full),
            "normal" => Ok(Self::Normal),
            other => Err(SqlError::InvalidArgument(format!(
                "unknown durability {other:?}; expected \"full\" or \"normal\""
            ))),
        }
    }
}

/// Checks a table prefix: `[a-z_][a-z0-9_]{0,30}`, so that every table name built from it is a
/// plain SQL identifier that needs no quoting.
///
/// # Errors
/// [`SqlError::InvalidArgument`] naming the prefix.
pub fn check_prefix(prefix: &str) -> Result<(), SqlError> {
    let bytes = prefix.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 31
        && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(SqlError::InvalidArgument(format!(
            "invalid table prefix {prefix:?}: expected 1 to 31 characters of a-z, 0-9 and _, \
             not starting with a digit"
        )))
    }
}

/// The database a URL names, with its connect options.
#[derive(Clone)]
pub(super) enum Target {
    Sqlite(SqliteConnectOptions),
    Postgres(PgConnectOptions),
}

/// Without an `sslmode` (in the URL or `PGSSLMODE`), a server on this machine is reached in
/// plain text: TLS on a loopback connection protects nothing and costs every statement (it
/// halved persisted entity RPCs/s here). Elsewhere the default stays `prefer`, as libpq's.
fn plain_on_loopback(url: &str, options: PgConnectOptions) -> PgConnectOptions {
    let asked = url.contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    let host = options.get_host();
    let loopback = host.starts_with('/')
        || host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if asked || !loopback {
        return options;
    }
    options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
}

/// A checked `open` request. Its `Debug` shows the masked URL only.
#[derive(Clone)]
pub struct Config {
    pub(super) target: Target,
    /// The URL with any password replaced by `***`.
    pub(super) masked_url: String,
    /// Every form of the password, to scrub from messages that might echo it.
    pub(super) secrets: Vec<String>,
    pub(super) prefix: String,
    pub(super) durability: Durability,
    /// How the engine lease is timed (PostgreSQL).
    pub(super) lease_times: LeaseTimes,
    /// Open for a runner of a cluster (PostgreSQL): no engine lease, many processes share the
    /// database, and owned writes are fenced by shard leases.
    pub(super) cluster: bool,
    /// Connections of the read pool (PostgreSQL): `plait_readers` in the URL, 6 by default.
    pub(super) readers: u32,
}

/// Read connections of a PostgreSQL store unless the URL says `plait_readers=<n>`.
pub(super) const DEFAULT_READERS: u32 = 6;

/// Takes plait's own parameter out of a PostgreSQL URL (the rest goes to sqlx, which would
/// send an unknown one to the server): the URL without it, and the read pool's size.
fn readers_of(url: &str, masked_url: &str) -> Result<(String, u32), SqlError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), DEFAULT_READERS));
    };
    let mut readers = DEFAULT_READERS;
    let mut kept = Vec::new();
    for param in query.split('&') {
        match param.strip_prefix("plait_readers=") {
            Some(value) => {
                readers = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| {
                        SqlError::InvalidArgument(format!(
                            "plait_readers in {masked_url} must be a number from 1 to 64, \
                             got {value:?}"
                        ))
                    })?;
            }
            None => kept.push(param),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, readers))
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.masked_url)
            .field("prefix", &self.prefix)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Checks the arguments of `open`. Nothing connects yet.
    ///
    /// `url` is `sqlite://<path>` or `sqlite:<path>` (the file is created if missing) or
    /// `postgres://...` / `postgresql://...`.
    ///
    /// # Errors
    /// [`SqlError::InvalidArgument`] for another scheme, an in-memory SQLite URL, a bad prefix or
    /// durability; [`SqlError::Connect`] for a URL of the right scheme that does not parse.
    pub fn new(url: &str, prefix: &str, durability: &str) -> Result<Self, SqlError> {
        let (masked_url, secrets) = mask_url(url);
        let scheme = url.split(':').next().unwrap_or_default();
        let mut readers = DEFAULT_READERS;
        let target = match scheme {
            "sqlite" => {
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                let (path, params) = path.split_once('?').unwrap_or((path, ""));
                if path.is_empty()
                    || path == ":memory:"
                    || params.split('&').any(|p| p == "mode=memory")
                {
                    return Err(SqlError::InvalidArgument(format!(
                        "{masked_url} is an in-memory SQLite database, which would not be \
                         durable; name a file, or use the memory store"
                    )));
                }
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(|err| connect_error(&masked_url, &secrets, &err))?;
                Target::Sqlite(options)
            }
            "postgres" | "postgresql" => {
                let (url, asked_readers) = readers_of(url, &masked_url)?;
                readers = asked_readers;
                let options = PgConnectOptions::from_str(&url)
                    .map_err(|err| connect_error(&masked_url, &secrets, &err))?;
                Target::Postgres(plain_on_loopback(&url, options))
            }
            _ => {
                return Err(SqlError::InvalidArgument(format!(
                    "unsupported store URL {masked_url}: expected sqlite://<path>, \
                     sqlite:<path>, postgres://... or postgresql://..."
                )))
            }
        };
        check_prefix(prefix)?;
        Ok(Self {
            target,
            masked_url,
            secrets,
            prefix: prefix.to_owned(),
            durability: Durability::parse(durability)?,
            lease_times: LeaseTimes::default(),
            cluster: false,
            readers,
        })
    }

    /// Opens for a runner of a cluster: on PostgreSQL, without the single engine's lease (many
    /// runners share the database; each write a runner makes as a shard's owner is fenced by
    /// that shard's lease). A SQLite file still takes one process: its lock stays.
    #[must_use]
    pub fn for_cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Times the engine lease (PostgreSQL) with `times` instead of the defaults.
    ///
    /// # Errors
    /// [`SqlError::InvalidArgument`] unless `0 < check_every <= renew_every < ttl`.
    pub fn with_lease_times(mut self, times: LeaseTimes) -> Result<Self, SqlError> {
        if times.check_every.is_zero()
            || times.check_every > times.renew_every
            || times.renew_every >= times.ttl
        {
            return Err(SqlError::InvalidArgument(format!(
                "lease times must satisfy 0 < check_every <= renew_every < ttl, got {times:?}"
            )));
        }
        self.lease_times = times;
        Ok(self)
    }

    /// The URL with any password replaced by `***`.
    pub fn masked_url(&self) -> &str {
        &self.masked_url
    }

    /// The table prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `message` with every form of the password replaced by `***`.
    pub(super) fn scrub(&self, message: impl Into<String>) -> String {
        scrub(message.into(), &self.secrets)
    }
}

fn connect_error(masked_url: &str, secrets: &[String], err: &dyn fmt::Display) -> SqlError {
    SqlError::Connect {
        url: masked_url.to_owned(),
        message: scrub(err.to_string(), secrets),
    }
}

/// Replaces every occurrence of a secret in `message` with `***`.
pub(super) fn scrub(mut message: String, secrets: &[String]) -> String {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if message.contains(secret.as_str()) {
            message = message.replace(secret.as_str(), "***");
        }
    }
    message
}

/// `url` with the password of its user info and any `password=` query parameter replaced by
/// `***`; and the passwords found (as written and percent-decoded).
pub(super) fn mask_url(url: &str) -> (String, Vec<String>) {
    let mut secrets = Vec::new();
    let mut masked = String::with_capacity(url.len());
    let (before_query, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    match before_query.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            masked.push_str(scheme);
            masked.push_str("://");
            match authority.rsplit_once('@') {
                Some((user_info, host)) => {
                    match user_info.split_once(':') {
                        Some((user, password)) => {
                            secrets.push(password.to_owned());
                            masked.push_str(user);
                            masked.push_str(":***");
                        }
                        None => masked.push_str(user_info),
                    }
                    masked.push('@');
                    masked.push_str(host);
                }
                None => masked.push_str(authority),
            }
            masked.push_str(path);
        }
        None => masked.push_str(before_query),
    }
    if let Some(query) = query {
        masked.push('?');
        for (index, param) in query.split('&').enumerate() {
            if index > 0 {
                masked.push('&');
            }
            match param.split_once('=') {
                Some((key, value)) if key.eq_ignore_ascii_case("password") => {
                    secrets.push(value.to_owned());
                    masked.push_str(key);
                    masked.push_str("=***");
                }
                _ => masked.push_str(param),
            }
        }
    }
    let decoded: Vec<String> = secrets
        .iter()
        .map(|s| percent_decode(s))
        .filter(|d| !secrets.contains(d))
        .collect();
    secrets.extend(decoded);
    // Longest first, so that a password containing another is scrubbed whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    (masked, secrets)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(byte) = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_pool_is_sized_by_plait_readers_which_sqlx_never_sees() {
        let config = Config::new("postgres://u@h/db", "plait_", "full").unwrap();
        assert_eq!(config.readers, DEFAULT_READERS);
        let (url, readers) =
            readers_of("postgres://u@h/db?sslmode=require&plait_readers=2", "m").unwrap();
        assert_eq!(
            (url.as_str(), readers),
            ("postgres://u@h/db?sslmode=require", 2)
        );
        let (url, readers) = readers_of("postgres://u@h/db?plait_readers=3", "m").unwrap();
        assert_eq!((url.as_str(), readers), ("postgres://u@h/db", 3));
        for bad in ["0", "65", "two", ""] {
            let err = Config::new(
                &format!("postgres://u@h/db?plait_readers={bad}"),
                "p_",
                "full",
            )
            .unwrap_err();
            assert!(err.to_string().contains("plait_readers"), "{err}");
        }
    }

    #[test]
    fn passwords_are_masked_in_user_info_and_query() {
        let (masked, secrets) = mask_url("postgres://bob:s%40cret@db.example:5432/app?sslmode=off");
        assert_eq!(masked, "postgres://bob:***@db.example:5432/app?sslmode=off");
        assert_eq!(secrets, vec!["s%40cret".to_owned(), "s@cret".to_owned()]);
        let (masked, secrets) = mask_url("postgresql://db/app?user=bob&password=hunter2");
        assert_eq!(masked, "postgresql://db/app?user=bob&password=***");
        assert_eq!(secrets, vec!["hunter2".to_owned()]);
        let (masked, secrets) = mask_url("postgres://bob@db/app");
        assert_eq!(masked, "postgres://bob@db/app");
        assert!(secrets.is_empty());
        assert_eq!(mask_url("sqlite:data/x.db").0, "sqlite:data/x.db");
        assert_eq!(
            scrub("bad password hunter2!".into(), &["hunter2".into()]),
            "bad password ***!"
        );
    }

    #[test]
    fn prefixes_are_plain_identifiers() {
        for good in ["plait_", "_", "a", "tenant_42_", &"a".repeat(31)] {
            assert_eq!(check_prefix(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "Plait_",
            "a-b",
            "a b",
            "é",
            "a;drop",
            &"a".repeat(32),
        ] {
            assert!(
                matches!(check_prefix(bad), Err(SqlError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn urls_are_checked_before_connecting() {
        let config = Config::new("sqlite://x/y.db", "plait_", "full").unwrap();
        assert!(matches!(config.target, Target::Sqlite(_)));
        assert_eq!(config.durability, Durability::Full);
        let config = Config::new("postgresql://u:pw@h/db", "p_", "normal").unwrap();
        assert!(matches!(config.target, Target::Postgres(_)));
        assert_eq!(config.masked_url(), "postgresql://u:***@h/db");
        assert!(!format!("{config:?}").contains("pw@"));
        for (url, durability) in [
            ("mysql://u:pw@h/db", "full"),
            ("sqlite::memory:", "full"),
            ("sqlite://x.db", "fast"),
        ] {
            let err = Config::new(url, "plait_", durability).unwrap_err();
            assert!(matches!(err, SqlError::InvalidArgument(_)), "{url}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
        let err = Config::new("postgres://u:pw@h:notaport/db", "plait_", "full").unwrap_err();
        assert!(matches!(err, SqlError::Connect { .. }), "{err}");
        assert!(!err.to_string().contains(":pw"), "{err}");
    }
}
