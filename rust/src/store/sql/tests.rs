//! Against a real SQLite file in a temporary directory, and a real PostgreSQL when one answers
//! at `PLAIT_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`); the
//! PostgreSQL half is skipped, saying why, when it does not.

use std::{
    path::PathBuf,
    str::FromStr,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use sqlx::{
    postgres::{PgConnectOptions, PgConnection},
    sqlite::{SqliteConnectOptions, SqliteConnection},
    AssertSqlSafe, Connection, Executor,
};

use super::{
    connect::{migrator, Dialect},
    *,
};
use crate::store::{memory::MemoryStore, messages::CLAIM_MS, Deferred, Entry, QueueItem, Request};

mod leases;
mod listing;
mod numbers_and_timers;
mod queues;
mod shards;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn postgres_url() -> String {
    std::env::var("PLAIT_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{what}{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh, empty place for a store: a new SQLite file, or a new table prefix in PostgreSQL.
struct Place {
    dialect: Dialect,
    url: String,
    prefix: String,
    dir: Option<PathBuf>,
}

impl Place {
    fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(unique("plait-sql-test-"));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dialect: Dialect::Sqlite,
            url: format!("sqlite://{}", dir.join("journal.db").display()),
            prefix: DEFAULT_PREFIX.to_owned(),
            dir: Some(dir),
        }
    }

    async fn postgres() -> Option<Self> {
        let url = postgres_url();
        let options = PgConnectOptions::from_str(&url).ok()?;
        match tokio::time::timeout(Duration::from_secs(3), PgConnection::connect_with(&options))
            .await
        {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                Some(Self {
                    dialect: Dialect::Postgres,
                    url,
                    prefix: unique("t"),
                    dir: None,
                })
            }
            Ok(Err(err)) => {
                eprintln!("skipping the PostgreSQL half: cannot connect to {url}: {err}");
                None
            }
            Err(_) => {
                eprintln!("skipping the PostgreSQL half: {url} did not answer within 3 s");
                None
            }
        }
    }

    /// Every place to run a test in.
    async fn all() -> Vec<Self> {
        let mut places = vec![Self::sqlite()];
        places.extend(Self::postgres().await);
        places
    }

    fn with_prefix(&self, prefix: &str) -> Self {
        Self {
            dialect: self.dialect,
            url: self.url.clone(),
            prefix: prefix.to_owned(),
            dir: None,
        }
    }

    fn config(&self) -> Config {
        Config::new(&self.url, &self.prefix, "full").unwrap()
    }

    async fn open(&self) -> SqlStore {
        SqlStore::open(&self.config()).await.unwrap()
    }

    /// Runs `sql` (with `{p}` for the prefix) on a connection of its own.
    async fn execute(&self, sql: &str) {
        let sql = sql.replace("{p}", &self.prefix);
        match self.dialect {
            Dialect::Sqlite => {
                let mut conn = SqliteConnection::connect_with(
                    &SqliteConnectOptions::from_str(&self.url).unwrap(),
                )
                .await
                .unwrap();
                conn.execute(AssertSqlSafe(sql)).await.unwrap();
                conn.close().await.unwrap();
            }
            Dialect::Postgres => {
                let mut conn =
                    PgConnection::connect_with(&PgConnectOptions::from_str(&self.url).unwrap())
                        .await
                        .unwrap();
                conn.execute(AssertSqlSafe(sql)).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }

    /// The first column of every row `sql` (with `{p}` for the prefix) returns, as text.
    async fn query_texts(&self, sql: &str) -> Vec<String> {
        let sql = sql.replace("{p}", &self.prefix);
        match self.dialect {
            Dialect::Sqlite => {
                let mut conn = SqliteConnection::connect_with(
                    &SqliteConnectOptions::from_str(&self.url).unwrap(),
                )
                .await
                .unwrap();
                let texts = sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
                texts
            }
            Dialect::Postgres => {
                let mut conn =
                    PgConnection::connect_with(&PgConnectOptions::from_str(&self.url).unwrap())
                        .await
                        .unwrap();
                let texts = sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
                texts
            }
        }
    }

    async fn cleanup(self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if self.dialect == Dialect::Postgres {
            self.execute(
                "DROP TABLE IF EXISTS {p}executions, {p}journal, {p}deferreds, {p}timers, \
                 {p}active, {p}leases, {p}migrations, {p}messages, {p}replies, \
                 {p}entity_state; DROP FUNCTION IF EXISTS {p}apply_fenced; \
                 DROP FUNCTION IF EXISTS {p}apply; DROP FUNCTION IF EXISTS {p}apply_messages",
            )
            .await;
        }
    }
}

fn start(id: &str) -> Op {
    Op::Start {
        id: id.into(),
        workflow: "W".into(),
        payload: b"{}".to_vec(),
        parent: None,
    }
}

fn append(id: &str, key: &str, seq: u32, value: &[u8]) -> Op {
    Op::Append {
        id: id.into(),
        entry: entry(key, seq, value),
    }
}

fn entry(key: &str, seq: u32, value: &[u8]) -> Entry {
    Entry {
        key: key.into(),
        seq,
        value: value.to_vec(),
    }
}

fn deferred(id: &str, name: &str, value: &[u8]) -> Op {
    Op::Deferred {
        id: id.into(),
        name: name.into(),
        value: value.to_vec(),
    }
}

fn status(id: &str, status: Status, result: Option<&[u8]>) -> Op {
    Op::Status {
        id: id.into(),
        status,
        result: result.map(<[u8]>::to_vec),
    }
}

fn timer(id: &str, name: &str, due_ms: u64) -> Op {
    Op::Timer(Timer {
        execution_id: id.into(),
        name: name.into(),
        due_ms,
    })
}

async fn write(store: &SqlStore, ops: Vec<Op>) -> Vec<OpResult> {
    store.write(ops).unwrap().await.unwrap()
}

fn done(values: &[bool]) -> Vec<OpResult> {
    values.iter().map(|&v| OpResult::Done(v)).collect()
}

/// What [`MemoryStore`] answers to `op`.
fn apply_to_memory(memory: &MemoryStore, op: &Op) -> OpResult {
    memory.apply(vec![op.clone()]).remove(0)
}

fn deferred_value(name: &str, value: &[u8]) -> Deferred {
    Deferred {
        name: name.into(),
        value: value.to_vec(),
    }
}

/// A deterministic stream of ops over a few ids, keys and names: every kind of journal and
/// queue op (a suspension that more deferreds than its run knew refuse among them), including repeats, unknown executions and unknown queue items.
fn scripted_ops(count: usize) -> Vec<Op> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let statuses = [Status::Running, Status::Suspended, Status::Complete];
    (0..count)
        .map(|i| {
            let id = format!("e{}", next(6));
            let name = format!("n{}", next(4));
            let value = format!("v{i}").into_bytes();
            match next(15) {
                0 | 1 => Op::Start {
                    id,
                    workflow: format!("W{}", next(2)),
                    payload: value,
                    parent: (next(2) == 0).then(|| "p".to_owned()),
                },
                2 | 3 => append(&id, &name, u32::try_from(next(5)).unwrap(), &value),
                4 => deferred(&id, &name, &value),
                5 if next(3) == 0 => Op::Suspend {
                    id,
                    cause: (next(2) == 0).then_some(value),
                    deferreds: u32::try_from(next(4)).unwrap(),
                },
                5 => {
                    let which = statuses[usize::try_from(next(3)).unwrap()];
                    let result = (next(2) == 0).then_some(value);
                    Op::Status {
                        id,
                        status: which,
                        result,
                    }
                }
                6 => Op::Interrupt { id },
                7 | 8 => timer(&id, &name, next(50)),
                9 => Op::Untimer {
                    execution_id: id,
                    name,
                },
                10 | 11 => Op::Offer(QueueItem {
                    queue: format!("q{}", next(2)),
                    id: format!("i{}", next(6)),
                    payload: value,
                    token: (next(2) == 0).then(|| format!("t{i}")),
                }),
                12 => Op::QueueClaim {
                    queue: format!("q{}", next(2)),
                    id: format!("i{}", next(6)),
                    claimed_ms: next(60),
                    claim_ms: 20,
                },
                13 => Op::QueueRenew {
                    queue: format!("q{}", next(2)),
                    id: format!("i{}", next(6)),
                    held_ms: next(60),
                    renewed_ms: 60 + next(60),
                },
                _ => Op::QueueDone {
                    queue: format!("q{}", next(2)),
                    id: format!("i{}", next(6)),
                },
            }
        })
        .collect()
}

/// `ops` written to `store`, through the contract, in batches of varying sizes: the results.
async fn write_in_batches(store: &dyn Store, ops: &[Op]) -> Vec<Vec<OpResult>> {
    let mut sizes = [1usize, 3, 7, 2, 15, 1, 30].into_iter().cycle();
    let mut rest = ops;
    let mut results = Vec::new();
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at(sizes.next().unwrap().min(rest.len()));
        rest = tail;
        results.push(store.write(batch.to_vec()).unwrap().await.unwrap());
    }
    results
}

/// What `store` holds, read through the contract: the snapshots and executions of `ids`,
/// ranges of timers, the ids of each status (sorted: the order is the store's), and what
/// takes of the queues hand out (claims standing, then void).
async fn contents(store: &dyn Store, ids: &[String]) -> Vec<String> {
    let mut seen = vec![
        format!("{:?}", store.snapshots(ids).await.unwrap()),
        format!("{:?}", store.executions(ids).await.unwrap()),
    ];
    for (after, until) in [
        (-1, i64::MAX),
        (-1, 10),
        (10, 25),
        (24, 25),
        (25, 49),
        (49, 100),
        (30, 20),
    ] {
        let between = store.timers_between(after, until).await.unwrap();
        seen.push(format!("({after}, {until}]: {between:?}"));
    }
    for which in [Status::Running, Status::Suspended, Status::Complete] {
        let mut ids = store.with_status(which).await.unwrap();
        ids.sort();
        seen.push(format!("{which:?}: {ids:?}"));
    }
    for queue in ["q0", "q1", "q2"] {
        for (limit, now_ms) in [(2, 100), (10, 110), (10, 130), (0, 200), (10, 200)] {
            let taken = store.take(queue, limit, now_ms, 25).await.unwrap();
            seen.push(format!("take {queue} {limit} at {now_ms}: {taken:?}"));
        }
    }
    seen
}

#[tokio::test]
async fn every_op_answers_as_the_memory_store_does() {
    for place in Place::all().await {
        let sql = place.open().await;
        let memory = MemoryStore::default();
        let ops = scripted_ops(400);
        let stores: [&dyn Store; 2] = [&memory, &sql];
        let [expected, written] = [
            write_in_batches(stores[0], &ops).await,
            write_in_batches(stores[1], &ops).await,
        ];
        assert!(memory.immediate() && !sql.immediate());
        assert_eq!(Store::write_now(&sql, vec![start("never")]), None);
        for (expected, written) in expected.iter().zip(&written) {
            assert_eq!(written, expected);
        }
        let ids: Vec<String> = (0..7).map(|n| format!("e{n}")).collect();
        assert_eq!(contents(&sql, &ids).await, contents(&memory, &ids).await);
        Store::close(&sql).await;
        assert!(Store::lost(&sql).await.is_none());
        place.cleanup().await;
    }
}

#[tokio::test]
async fn first_write_wins_and_completion_is_final() {
    for place in Place::all().await {
        let store = place.open().await;
        // A start and its steps in one batch: applied in order.
        let results = write(
            &store,
            vec![
                start("e"),
                append("e", "b/1", 1, b"B"),
                append("e", "a/1", 0, b"A"),
                append("e", "b/1", 1, b"late"),
                append("nope", "a/1", 0, b"A"),
            ],
        )
        .await;
        assert_eq!(results[0], OpResult::Created);
        assert_eq!(results[1..], done(&[true, true, false, false]));
        let OpResult::Existing(existing) = write(&store, vec![start("e")]).await.remove(0) else {
            panic!("a second start must return the execution");
        };
        assert_eq!(existing.status, Status::Running);
        assert_eq!(existing.payload, b"{}");

        let results = write(
            &store,
            vec![
                deferred("e", "d", b"1"),
                deferred("e", "d", b"2"),
                deferred("nope", "d", b"1"),
                timer("e", "DurableClock/t", 5),
                timer("e", "DurableClock/t", 9),
                Op::Interrupt { id: "e".into() },
                status("e", Status::Suspended, None),
            ],
        )
        .await;
        assert_eq!(
            results,
            vec![
                OpResult::Done(true),
                OpResult::Done(false),
                OpResult::UnknownExecution,
                OpResult::Done(true),
                OpResult::Done(false),
                OpResult::Done(true),
                OpResult::Done(true),
            ]
        );
        assert_eq!(store.with_status(Status::Suspended).await.unwrap(), ["e"]);
        assert_eq!(store.timers().await.unwrap()[0].due_ms, 5);

        let results = write(
            &store,
            vec![
                status("e", Status::Complete, Some(b"r")),
                status("e", Status::Running, None),
                Op::Interrupt { id: "e".into() },
                Op::Interrupt { id: "nope".into() },
            ],
        )
        .await;
        assert_eq!(
            results,
            vec![
                OpResult::Done(true),
                OpResult::Done(false),
                OpResult::Done(false),
                OpResult::UnknownExecution,
            ]
        );
        assert!(store.timers().await.unwrap().is_empty());
        let snapshot = store.snapshot("e").await.unwrap().unwrap();
        assert_eq!(snapshot.execution.status, Status::Complete);
        assert_eq!(snapshot.execution.result.as_deref(), Some(&b"r"[..]));
        assert!(snapshot.execution.interrupted);
        assert_eq!(
            snapshot.entries,
            vec![entry("b/1", 1, b"B"), entry("a/1", 0, b"A")]
        );
        assert_eq!(snapshot.deferreds, vec![deferred_value("d", b"1")]);
        assert_eq!(store.snapshot("nope").await.unwrap(), None);
        assert_eq!(store.snapshot("nul\0").await.unwrap(), None);
        store.close().await;

        // Everything was committed: a new engine sees it.
        let store = place.open().await;
        assert_eq!(store.snapshot("e").await.unwrap(), Some(snapshot));
        store.close().await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn concurrent_writes_share_one_transaction() {
    for place in Place::all().await {
        let store = place.open().await;
        write(&store, vec![start("e")]).await;
        let before = store.transactions();
        // The PostgreSQL writer runs on this (single-threaded) runtime, so every batch is
        // queued before it looks. The SQLite writer is a thread of its own, which could take the
        // first batch before the rest are queued: it is held on a plug batch, with the database
        // locked, until they are.
        let plug = match place.dialect {
            Dialect::Postgres => None,
            Dialect::Sqlite => {
                let options = SqliteConnectOptions::from_str(&place.url).unwrap();
                let mut blocker = SqliteConnection::connect_with(&options).await.unwrap();
                blocker.execute("BEGIN EXCLUSIVE").await.unwrap();
                let plug = store.write(vec![append("e", "plug/1", 99, b"p")]).unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((blocker, plug))
            }
        };
        let waits: Vec<_> = (0..50)
            .map(|n| {
                store
                    .write(vec![append("e", &format!("s{n}/1"), n, b"x")])
                    .unwrap()
            })
            .collect();
        let plugged = u64::from(plug.is_some());
        if let Some((mut blocker, plug)) = plug {
            blocker.execute("COMMIT").await.unwrap();
            assert_eq!(plug.await.unwrap(), done(&[true]));
            blocker.close().await.unwrap();
        }
        for wait in waits {
            assert_eq!(wait.await.unwrap(), done(&[true]));
        }
        assert_eq!(store.transactions() - before, 1 + plugged);
        let snapshot = store.snapshot("e").await.unwrap().unwrap();
        let seqs: Vec<u32> = snapshot.entries.iter().map(|e| e.seq).collect();
        let mut expected: Vec<u32> = (0..50).collect();
        if plugged == 1 {
            expected.insert(0, 99);
        }
        assert_eq!(seqs, expected);
        store.close().await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn batched_reads_answer_each_id_in_order() {
    for place in Place::all().await {
        let store = place.open().await;
        let memory = MemoryStore::default();
        // Steps and deferreds of several executions, interleaved across them and across
        // transactions, so write order within one execution differs from key order.
        let mut ops = Vec::new();
        for n in [3, 1, 4, 0] {
            ops.push(start(&format!("e{n}")));
        }
        for round in 0..5u32 {
            for n in [4, 0, 3] {
                let key = format!("k{}/1", 9 - round);
                ops.push(append(
                    &format!("e{n}"),
                    &key,
                    round,
                    &[b'a' + u8::try_from(n).unwrap()],
                ));
            }
            ops.push(deferred("e3", &format!("d{}", 5 - round), b"D"));
        }
        ops.push(status("e1", Status::Complete, Some(b"r")));
        for chunk in ops.chunks(4) {
            for op in chunk {
                apply_to_memory(&memory, op);
            }
            write(&store, chunk.to_vec()).await;
        }
        let ids: Vec<String> = ["e3", "nope", "e0", "e1", "e3", "nul\0", "e4", "e2", ""]
            .map(String::from)
            .to_vec();
        let snapshots = store.snapshots(&ids).await.unwrap();
        let executions = store.executions(&ids).await.unwrap();
        assert_eq!(snapshots.len(), ids.len());
        for (index, id) in ids.iter().enumerate() {
            assert_eq!(snapshots[index], memory.snapshot(id), "{id}");
            assert_eq!(executions[index], memory.execution(id), "{id}");
            assert_eq!(snapshots[index], store.snapshot(id).await.unwrap(), "{id}");
        }
        let e3 = snapshots[0].as_ref().unwrap();
        let keys: Vec<&str> = e3.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["k9/1", "k8/1", "k7/1", "k6/1", "k5/1"]);
        let names: Vec<&str> = e3.deferreds.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["d5", "d4", "d3", "d2", "d1"]);
        assert!(store.snapshots(&[]).await.unwrap().is_empty());
        assert!(store.executions(&[]).await.unwrap().is_empty());
        store.close().await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn batched_reads_span_chunks() {
    for place in Place::all().await {
        let store = place.open().await;
        // Every third id is stored, with as many steps as its number mod 4; the known ones
        // straddle the chunk boundaries.
        let count = 2 * READ_CHUNK + 7;
        let ids: Vec<String> = (0..count).map(|n| format!("x{n}")).collect();
        let mut ops = Vec::new();
        for (n, id) in ids.iter().enumerate().filter(|(n, _)| n % 3 == 0) {
            ops.push(start(id));
            for step in 0..n % 4 {
                let step = u32::try_from(step).unwrap();
                ops.push(append(id, &format!("s{step}/1"), step, id.as_bytes()));
            }
        }
        write(&store, ops).await;
        let snapshots = store.snapshots(&ids).await.unwrap();
        let executions = store.executions(&ids).await.unwrap();
        assert_eq!(snapshots.len(), count);
        assert_eq!(executions.len(), count);
        for (n, id) in ids.iter().enumerate() {
            if let Some(snapshot) = &snapshots[n] {
                assert_eq!(n % 3, 0, "{id}");
                assert_eq!(snapshot.entries.len(), n % 4, "{id}");
                assert!(snapshot.entries.iter().all(|e| e.value == id.as_bytes()));
                assert_eq!(Some(&snapshot.execution), executions[n].as_ref(), "{id}");
            } else {
                assert_ne!(n % 3, 0, "{id}");
                assert_eq!(executions[n], None, "{id}");
            }
        }
        store.close().await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn a_transaction_of_8192_ops_commits_as_one() {
    for place in Place::all().await {
        let store = place.open().await;
        let memory = MemoryStore::default();
        // Every kind of op, repeats and unknown executions among them.
        let mut ops = scripted_ops(MAX_OPS_PER_TRANSACTION - 100);
        for n in 0..100u32 {
            ops.push(start(&format!("big{}", n % 10)));
        }
        assert_eq!(ops.len(), MAX_OPS_PER_TRANSACTION);
        let expected: Vec<OpResult> = ops.iter().map(|op| apply_to_memory(&memory, op)).collect();
        let before = store.transactions();
        assert_eq!(write(&store, ops).await, expected);
        assert_eq!(store.transactions() - before, 1);
        let ids: Vec<String> = (0..7)
            .map(|n| format!("e{n}"))
            .chain((0..10).map(|n| format!("big{n}")))
            .collect();
        let snapshots = store.snapshots(&ids).await.unwrap();
        for (id, snapshot) in ids.iter().zip(snapshots) {
            assert_eq!(snapshot, memory.snapshot(id), "{id}");
        }

        // A batch larger than a transaction's share is never split; batches behind it wait.
        let big: Vec<Op> = (0..MAX_OPS_PER_TRANSACTION + 5)
            .map(|n| append("big0", &format!("n{n}/1"), 0, b"x"))
            .collect();
        let before = store.transactions();
        let first = store.write(big).unwrap();
        let second = store
            .write(vec![append("big1", "after/1", 0, b"y")])
            .unwrap();
        assert!(first
            .await
            .unwrap()
            .iter()
            .all(|r| *r == OpResult::Done(true)));
        assert_eq!(second.await.unwrap(), done(&[true]));
        assert_eq!(store.transactions() - before, 2);
        let entries = store.snapshot("big0").await.unwrap().unwrap().entries;
        assert_eq!(entries.len(), MAX_OPS_PER_TRANSACTION + 5);
        assert_eq!(
            entries.last().unwrap().key,
            format!("n{}/1", MAX_OPS_PER_TRANSACTION + 4)
        );
        store.close().await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn a_failing_batch_fails_alone() {
    for place in Place::all().await {
        let store = place.open().await;
        write(&store, vec![start("e")]).await;
        place.execute("DROP TABLE {p}timers").await;
        let good = store.write(vec![append("e", "a/1", 0, b"A")]).unwrap();
        let bad = store.write(vec![timer("e", "t", 1)]).unwrap();
        let also_good = store.write(vec![deferred("e", "d", b"D")]).unwrap();
        assert_eq!(good.await.unwrap(), done(&[true]));
        let err = bad.await.unwrap_err();
        assert!(matches!(err, SqlError::Database { .. }), "{err}");
        assert!(err.to_string().contains("timers"), "{err}");
        assert_eq!(also_good.await.unwrap(), done(&[true]));
        let snapshot = store.snapshot("e").await.unwrap().unwrap();
        assert_eq!(snapshot.entries.len(), 1);
        assert_eq!(snapshot.deferreds.len(), 1);
        store.close().await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn a_second_engine_is_refused_until_the_first_closes() {
    for place in Place::all().await {
        let store = place.open().await;
        let err = SqlStore::open(&place.config()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "another plait engine is running on {} with table prefix {}",
                place.url, place.prefix
            )
        );
        assert!(matches!(err, SqlError::Locked { .. }));
        write(&store, vec![start("e")]).await;
        store.close().await;
        store.close().await;
        assert!(matches!(
            store.write(vec![start("f")]),
            Err(SqlError::Closed { .. })
        ));
        assert!(matches!(
            store.execution("e").await,
            Err(SqlError::Closed { .. })
        ));

        let again = place.open().await;
        assert!(again.execution("e").await.unwrap().is_some());
        // Dropping the store (no close) releases the lock too, once its writer has ended.
        drop(again);
        let deadline = Instant::now() + Duration::from_secs(5);
        let third = loop {
            match SqlStore::open(&place.config()).await {
                Ok(store) => break store,
                Err(SqlError::Locked { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!("{err}"),
            }
        };
        third.close().await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn close_commits_what_is_queued() {
    for place in Place::all().await {
        let store = place.open().await;
        let first = store.write(vec![start("e")]).unwrap();
        let second = store.write(vec![append("e", "a/1", 0, b"A")]).unwrap();
        store.close().await;
        assert_eq!(first.await.unwrap(), vec![OpResult::Created]);
        assert_eq!(second.await.unwrap(), done(&[true]));
        let store = place.open().await;
        assert_eq!(store.snapshot("e").await.unwrap().unwrap().entries.len(), 1);
        store.close().await;
        place.cleanup().await;
    }
}

/// Brings `place`'s database up to migration `version` only, as an older plait left it.
async fn migrate_to(place: &Place, version: i64) {
    let migrations = migrator(place.dialect, &place.prefix);
    match place.dialect {
        Dialect::Sqlite => {
            let options = SqliteConnectOptions::from_str(&place.url)
                .unwrap()
                .create_if_missing(true);
            let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
            migrations.run_to(version, &mut conn).await.unwrap();
            conn.close().await.unwrap();
        }
        Dialect::Postgres => {
            let options = PgConnectOptions::from_str(&place.url).unwrap();
            let mut conn = PgConnection::connect_with(&options).await.unwrap();
            migrations.run_to(version, &mut conn).await.unwrap();
            conn.close().await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_database_made_by_the_first_migration_is_migrated_on_open() {
    for place in Place::all().await {
        migrate_to(&place, 1).await;
        store_rows_of_the_first_migration(&place).await;

        let store = place.open().await;
        let ids: Vec<String> = ["a", "b", "c", "ghost"].map(String::from).to_vec();
        let snapshots = store.snapshots(&ids).await.unwrap();
        let a = snapshots[0].clone().unwrap();
        assert_eq!(a.execution.payload, b"{}");
        assert_eq!(a.execution.parent.as_deref(), Some("c"));
        assert_eq!(a.execution.status, Status::Suspended);
        assert!(a.execution.interrupted);
        assert_eq!(
            a.entries,
            vec![
                entry("z/1", 0, b"1"),
                entry("b/1", 1, b"2"),
                entry("a/1", 2, b"1")
            ]
        );
        assert_eq!(
            a.deferreds,
            vec![deferred_value("y", b"1"), deferred_value("x", b"2")]
        );
        let b = snapshots[1].clone().unwrap();
        assert_eq!(b.execution.workflow, "V");
        assert_eq!(b.execution.result.as_deref(), Some(&b"r"[..]));
        assert_eq!(b.entries, vec![entry("k/1", 0, b"1")]);
        assert_eq!(snapshots[2].clone().unwrap().deferreds.len(), 1);
        assert_eq!(snapshots[3], None);
        assert_eq!(store.with_status(Status::Suspended).await.unwrap(), ["a"]);
        let timers: Vec<(String, u64)> = store
            .timers()
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.execution_id, t.due_ms))
            .collect();
        assert_eq!(timers, [("c".to_owned(), 5), ("a".to_owned(), 7)]);

        new_writes_on_migrated_rows(&store).await;
        store.close().await;

        let versions = applied_versions(&place).await;
        let embedded: Vec<i64> = migrator(place.dialect, &place.prefix)
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(versions, embedded);
        assert_eq!(versions[..3], [1, 2, 3]);
        check_the_migrated_schema(&place).await;
        place.cleanup().await;
    }
}

/// The migrated rows take new writes as any others: first write still wins, new rows come
/// after the old in write order, and a new execution is numbered after them.
async fn new_writes_on_migrated_rows(store: &SqlStore) {
    let results = write(
        store,
        vec![
            append("a", "z/1", 9, b"late"),
            append("a", "new/1", 3, b"3"),
            deferred("a", "y", b"late"),
            start("d"),
            append("d", "k/1", 0, b"d"),
            status("c", Status::Complete, None),
        ],
    )
    .await;
    assert_eq!(
        results,
        vec![
            OpResult::Done(false),
            OpResult::Done(true),
            OpResult::Done(false),
            OpResult::Created,
            OpResult::Done(true),
            OpResult::Done(true),
        ]
    );
    let a = store.snapshot("a").await.unwrap().unwrap();
    assert_eq!(a.entries.last(), Some(&entry("new/1", 3, b"3")));
    assert_eq!(a.entries.len(), 4);
    // Rows from before migration 0007 have no time; new ones have theirs.
    let history = store.history("a").await.unwrap().unwrap();
    let times: Vec<bool> = history.steps.iter().map(|s| s.at_ms.is_some()).collect();
    assert_eq!(times, [false, false, false, true]);
    assert!(history.deferreds.iter().all(|d| d.at_ms.is_none()));
    assert_eq!((history.created_ms, history.updated_ms), (2, 2));
    assert_eq!(store.snapshot("d").await.unwrap().unwrap().entries.len(), 1);
    assert_eq!(store.timers().await.unwrap().len(), 1);
}

/// Executions numbered in the order they were stored; the journal keyed by number, not by id.
async fn check_the_migrated_schema(place: &Place) {
    let numbers = place
        .query_texts("SELECT id FROM {p}executions ORDER BY no")
        .await;
    assert_eq!(numbers, ["c", "a", "b", "d"]);
    let columns = match place.dialect {
        Dialect::Sqlite => {
            place
                .query_texts("SELECT name FROM pragma_table_info('{p}journal') ORDER BY name")
                .await
        }
        Dialect::Postgres => {
            place
                .query_texts(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_name = '{p}journal' ORDER BY column_name",
                )
                .await
        }
    };
    assert_eq!(
        columns,
        ["at_ms", "execution_no", "key", "ord", "seq", "value"]
    );
}

/// Rows as the first migration's schema held them: three executions stored in the order c, a,
/// b, their steps and deferreds interleaved across executions, two timers, and a step of an
/// execution never stored.
async fn store_rows_of_the_first_migration(place: &Place) {
    let blob = |hex: &str| match place.dialect {
        Dialect::Sqlite => format!("x'{hex}'"),
        Dialect::Postgres => format!("'\\x{hex}'::bytea"),
    };
    place
        .execute(&format!(
            "INSERT INTO {{p}}executions (id, workflow, payload, parent, status, result, \
                 interrupted, created_ms, updated_ms) VALUES \
                 ('c', 'W', {payload}, NULL, 'running', NULL, FALSE, 1, 1), \
                 ('a', 'W', {payload}, 'c', 'suspended', NULL, TRUE, 2, 2), \
                 ('b', 'V', {payload}, NULL, 'complete', {result}, FALSE, 3, 3)",
            payload = blob("7b7d"),
            result = blob("72"),
        ))
        .await;
    place
        .execute(&format!(
            "INSERT INTO {{p}}journal (execution_id, key, seq, value) VALUES \
                 ('a', 'z/1', 0, {one}), ('c', 'k/1', 0, {two}), ('a', 'b/1', 1, {two}), \
                 ('ghost', 'k/1', 0, {one}), ('b', 'k/1', 0, {one}), ('a', 'a/1', 2, {one})",
            one = blob("31"),
            two = blob("32"),
        ))
        .await;
    place
        .execute(&format!(
            "INSERT INTO {{p}}deferreds (execution_id, name, value) VALUES \
                 ('a', 'y', {one}), ('c', 'd', {one}), ('a', 'x', {two})",
            one = blob("31"),
            two = blob("32"),
        ))
        .await;
    place
        .execute(
            "INSERT INTO {p}timers (execution_id, name, due_ms) VALUES \
                 ('a', 't', 7), ('c', 't', 5)",
        )
        .await;
}

async fn applied_versions(place: &Place) -> Vec<i64> {
    let sql = format!(
        "SELECT version FROM {}migrations WHERE success ORDER BY version",
        place.prefix
    );
    match place.dialect {
        Dialect::Sqlite => {
            let mut conn = SqliteConnection::connect_with(
                &SqliteConnectOptions::from_str(&place.url).unwrap(),
            )
            .await
            .unwrap();
            sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_all(&mut conn)
                .await
                .unwrap()
        }
        Dialect::Postgres => {
            let mut conn =
                PgConnection::connect_with(&PgConnectOptions::from_str(&place.url).unwrap())
                    .await
                    .unwrap();
            sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_all(&mut conn)
                .await
                .unwrap()
        }
    }
}

#[tokio::test]
async fn table_prefixes_keep_stores_apart() {
    for place in Place::all().await {
        let other = place.with_prefix(&format!(
            "{}other_",
            &place.prefix[..place.prefix.len().min(20)]
        ));
        let a = place.open().await;
        write(&a, vec![start("e"), timer("e", "t", 1)]).await;
        if place.dialect == Dialect::Sqlite {
            // One engine per SQLite file, whatever its prefix.
            assert!(matches!(
                SqlStore::open(&other.config()).await,
                Err(SqlError::Locked { .. })
            ));
            a.close().await;
        }
        let b = other.open().await;
        assert_eq!(b.execution("e").await.unwrap(), None);
        assert!(b.timers().await.unwrap().is_empty());
        write(&b, vec![start("e"), append("e", "k/1", 0, b"B")]).await;
        assert_eq!(b.snapshot("e").await.unwrap().unwrap().entries.len(), 1);
        b.close().await;
        let a = if place.dialect == Dialect::Sqlite {
            place.open().await
        } else {
            a
        };
        assert!(a.snapshot("e").await.unwrap().unwrap().entries.is_empty());
        assert_eq!(a.timers().await.unwrap().len(), 1);
        a.close().await;
        if place.dialect == Dialect::Postgres {
            other.cleanup().await;
        }
        place.cleanup().await;
    }
}

#[tokio::test]
async fn an_unreachable_database_fails_fast_with_its_password_masked() {
    let started = Instant::now();
    let config = Config::new("postgres://bob:sekret@127.0.0.1:1/db", "plait_", "full").unwrap();
    let err = SqlStore::open(&config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(6));
    let message = err.to_string();
    assert!(matches!(err, SqlError::Connect { .. }), "{message}");
    assert!(
        message.contains("postgres://bob:***@127.0.0.1:1/db"),
        "{message}"
    );
    assert!(!message.contains("sekret"), "{message}");

    let config = Config::new("sqlite:///nonexistent-dir/x/journal.db", "plait_", "full").unwrap();
    let err = SqlStore::open(&config).await.unwrap_err();
    assert!(matches!(err, SqlError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent-dir/x/journal.db"),
        "{err}"
    );
}

#[tokio::test]
async fn durability_sets_the_sync_mode() {
    let place = Place::sqlite();
    for (durability, expected) in [("full", 2), ("normal", 1)] {
        let store = SqlStore::open(&Config::new(&place.url, "plait_", durability).unwrap())
            .await
            .unwrap();
        let Backend::Sqlite(readers) = &store.backend else {
            unreachable!()
        };
        let (sync, journal) = readers
            .inspect(|conn| {
                let sync: i64 = conn.query_row("PRAGMA synchronous", [], |row| row.get(0))?;
                let journal: String =
                    conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
                Ok((sync, journal))
            })
            .await
            .unwrap();
        assert_eq!((sync, journal.as_str()), (expected, "wal"), "{durability}");
        store.close().await;
    }
    place.cleanup().await;

    if let Some(place) = Place::postgres().await {
        for (durability, expected) in [("full", "on"), ("normal", "off")] {
            let store =
                SqlStore::open(&Config::new(&place.url, &place.prefix, durability).unwrap())
                    .await
                    .unwrap();
            let Backend::Postgres(reads) = &store.backend else {
                unreachable!()
            };
            let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(reads.pool())
                .await
                .unwrap();
            assert_eq!(setting, expected, "{durability}");
            let jit: String = sqlx::query_scalar("SHOW jit")
                .fetch_one(reads.pool())
                .await
                .unwrap();
            assert_eq!(jit, "off");
            store.close().await;
        }
        place.cleanup().await;
    }
}

#[tokio::test]
async fn ops_the_database_could_not_store_are_refused_alone_before_queueing() {
    let place = Place::sqlite();
    let store = place.open().await;
    assert_eq!(
        write(&store, vec![timer("e", "t", u64::MAX)]).await.len(),
        1
    );
    assert_eq!(write(&store, vec![]).await, vec![]);
    assert_eq!(
        store.transactions(),
        0,
        "nothing left to write: no transaction"
    );
    let results = write(
        &store,
        vec![start("e"), start("bad\0id"), append("e", "k/1", 0, b"1")],
    )
    .await;
    assert_eq!(
        results,
        vec![
            OpResult::Created,
            OpResult::Refused("ops[1]: id \"bad\\0id\" holds a NUL character".into()),
            OpResult::Done(true),
        ]
    );
    let results = write(&store, vec![timer("e", "t", u64::MAX)]).await;
    assert!(
        matches!(&results[0], OpResult::Refused(why) if why.starts_with("ops[0]: due_ms")),
        "{results:?}"
    );
    assert_eq!(store.transactions(), 1);
    assert_eq!(store.snapshot("e").await.unwrap().unwrap().entries.len(), 1);
    store.close().await;
    place.cleanup().await;
}

#[test]
fn connection_trouble_is_told_apart_from_refusals() {
    assert!(is_transient(&sqlx::Error::PoolTimedOut));
    assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(
        std::io::ErrorKind::ConnectionReset
    ))));
    assert!(!is_transient(&sqlx::Error::RowNotFound));
    assert!(!is_transient(&sqlx::Error::Protocol("x".into())));
}

#[test]
fn advisory_keys_are_stable_per_prefix() {
    assert_eq!(
        connect::advisory_key("plait_"),
        connect::advisory_key("plait_")
    );
    assert_ne!(
        connect::advisory_key("plait_"),
        connect::advisory_key("other_")
    );
}

#[tokio::test]
async fn a_busy_database_is_retried_until_it_frees_or_the_store_closes() {
    let place = Place::sqlite();
    let store = place.open().await;
    write(&store, vec![start("e")]).await;
    let options = SqliteConnectOptions::from_str(&place.url).unwrap();
    let mut blocker = SqliteConnection::connect_with(&options).await.unwrap();
    blocker.execute("BEGIN EXCLUSIVE").await.unwrap();
    let started = Instant::now();
    let wait = store.write(vec![append("e", "a/1", 0, b"A")]).unwrap();
    let release = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        blocker.execute("COMMIT").await.unwrap();
    };
    let (result, ()) = tokio::join!(wait, release);
    assert_eq!(result.unwrap(), done(&[true]));
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // Closed while the database stays busy: the writer gives up on the queued write.
    blocker.execute("BEGIN EXCLUSIVE").await.unwrap();
    let wait = store.write(vec![append("e", "b/1", 1, b"B")]).unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    store.close().await;
    let err = wait.await.unwrap_err();
    assert!(matches!(err, SqlError::Abandoned { .. }), "{err}");
    assert!(err.to_string().contains("may or may not"), "{err}");
    blocker.execute("ROLLBACK").await.unwrap();
    blocker.close().await.unwrap();
    place.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_transaction_is_retried() {
    let Some(place) = Place::postgres().await else {
        return;
    };
    let store = place.open().await;
    write(&store, vec![start("e")]).await;
    let options = PgConnectOptions::from_str(&place.url).unwrap();
    let mut blocker = PgConnection::connect_with(&options).await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    blocker
        .execute(AssertSqlSafe(format!(
            "LOCK TABLE {}journal IN ACCESS EXCLUSIVE MODE",
            place.prefix
        )))
        .await
        .unwrap();
    let before = store.transactions();
    let wait = tokio::spawn(store.write(vec![append("e", "a/1", 0, b"A")]).unwrap());
    // Find the writer waiting on the table lock (in its call of `<prefix>apply`), and kill
    // its connection.
    let find = format!(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'plait' \
         AND wait_event_type = 'Lock' AND query LIKE '%{}apply%'",
        place.prefix
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        let pids: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(find.clone()))
            .fetch_all(&mut blocker)
            .await
            .unwrap();
        if let Some(&pid) = pids.first() {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the writer never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut blocker)
        .await
        .unwrap();
    assert!(killed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    blocker.execute("ROLLBACK").await.unwrap();
    blocker.close().await.unwrap();
    assert_eq!(wait.await.unwrap().unwrap(), done(&[true]));
    assert_eq!(store.transactions() - before, 1);
    assert_eq!(store.snapshot("e").await.unwrap().unwrap().entries.len(), 1);
    store.close().await;
    place.cleanup().await;
}

#[tokio::test]
async fn a_server_that_never_answers_fails_within_the_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let url = format!("postgres://bob:sekret@127.0.0.1:{port}/db");
    let err = SqlStore::open(&Config::new(&url, "plait_", "full").unwrap())
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, SqlError::Connect { .. }), "{err}");
    assert!(waited >= connect::CONNECT_TIMEOUT, "{waited:?}");
    assert!(
        waited < connect::CONNECT_TIMEOUT + Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(err.to_string().contains("bob:***@"), "{err}");
    assert!(!err.to_string().contains("sekret"), "{err}");
    silent.abort();
}

/// An id as the engine makes them (32 hex digits of a sha256), so inserts land where real
/// ones do.
fn random_id(n: usize) -> String {
    crate::ids::execution_id("Bench", &n.to_string())
        .as_str()
        .to_owned()
}

/// Commit costs on both backends: `cargo test --release commit_costs -- --ignored --nocapture`.
/// `PLAIT_BENCH_ROWS` executions (default 0), each with three steps, are stored first, to show
/// how the cost moves as the tables grow.
#[tokio::test]
#[ignore = "a benchmark: run it by name"]
async fn commit_costs() {
    let rows: usize = std::env::var("PLAIT_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for place in Place::all().await {
        for durability in ["full", "normal"] {
            let store =
                SqlStore::open(&Config::new(&place.url, &place.prefix, durability).unwrap())
                    .await
                    .unwrap();
            let base = rows + if durability == "full" { 0 } else { 1 << 30 };
            let fill = Instant::now();
            for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
                let mut ops = Vec::with_capacity(chunk.len() * 4);
                for &n in chunk {
                    let id = random_id(n + if durability == "full" { 0 } else { 1 << 29 });
                    ops.push(start(&id));
                    for step in 0..3 {
                        ops.push(append(&id, &format!("Step{step}/1"), step, b"{\"ok\":1}"));
                    }
                }
                write(&store, ops).await;
            }
            if rows > 0 {
                eprintln!(
                    "{:?} filled {rows} executions in {:.1} s",
                    place.dialect,
                    fill.elapsed().as_secs_f64()
                );
            }
            let ids: Vec<String> = (0..1000).map(|n| random_id(base + n)).collect();
            write(&store, ids.iter().map(|id| start(id)).collect()).await;

            // Sequential one-op commits: the latency of a commit.
            let rounds = 300;
            let started = Instant::now();
            for n in 0..rounds {
                let id = &ids[n % ids.len()];
                write(&store, vec![append(id, &format!("One{n}/1"), 0, b"1")]).await;
            }
            let commit = started.elapsed() / u32::try_from(rounds).unwrap();

            // 1,000-op batches: the cost of an op inside a commit.
            let batches = 20;
            let started = Instant::now();
            for b in 0..batches {
                let ops = (0..1000)
                    .map(|n| {
                        let id = &ids[n];
                        append(id, &format!("Many{b}/1"), 1, b"{\"ok\":1}")
                    })
                    .collect();
                write(&store, ops).await;
            }
            let per_op = started.elapsed() / (batches * 1000);

            // Sequential reads of one snapshot (about 22 steps each by now).
            let started = Instant::now();
            for id in &ids[..300] {
                assert!(store.snapshot(id).await.unwrap().is_some());
            }
            let read = started.elapsed() / 300;
            eprintln!(
                "{:?} durability={durability} rows={rows}: 1-op commit {:.1} us, \
                 1000-op batch {:.2} us/op, snapshot read {:.1} us",
                place.dialect,
                commit.as_secs_f64() * 1e6,
                per_op.as_secs_f64() * 1e6,
                read.as_secs_f64() * 1e6
            );
            store.close().await;
        }
        place.cleanup().await;
    }
}

/// Batched reads, as recovery makes them: `cargo test --release recovery_reads -- --ignored
/// --nocapture`. `PLAIT_BENCH_ROWS` (default 100,000) suspended executions with five steps and
/// a deferred each, read back 1,000 ids per call.
#[tokio::test]
#[ignore = "a benchmark: run it by name"]
async fn recovery_reads() {
    let rows: usize = std::env::var("PLAIT_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    for place in Place::all().await {
        let store = place.open().await;
        let ids: Vec<String> = (0..rows).map(random_id).collect();
        for chunk in ids.chunks(1000) {
            let mut ops = Vec::with_capacity(chunk.len() * 8);
            for id in chunk {
                ops.push(start(id));
                for step in 0..5 {
                    ops.push(append(id, &format!("Step{step}/1"), step, b"{\"ok\":1}"));
                }
                ops.push(deferred(id, "DurableClock/wait", b"{\"_tag\":\"Success\"}"));
                ops.push(status(id, Status::Suspended, None));
            }
            write(&store, ops).await;
        }
        for pass in ["cold", "warm"] {
            let started = Instant::now();
            let mut read = 0;
            for chunk in ids.chunks(1000) {
                let snapshots = store.snapshots(chunk).await.unwrap();
                read += snapshots.iter().filter(|s| s.is_some()).count();
            }
            let elapsed = started.elapsed().as_secs_f64();
            assert_eq!(read, rows);
            eprintln!(
                "{:?}: {rows} snapshots in {elapsed:.2} s, {:.0}/s ({pass})",
                place.dialect,
                f64::from(u32::try_from(rows).unwrap()) / elapsed
            );
        }
        store.close().await;
        place.cleanup().await;
    }
}

/// Fills `store` with finished executions `from..to` of three steps each (ids as the engine
/// makes them), 8,000 ops a commit.
async fn fill_finished(store: &SqlStore, from: usize, to: usize) {
    let ids: Vec<usize> = (from..to).collect();
    for chunk in ids.chunks(1600) {
        let mut ops = Vec::with_capacity(chunk.len() * 5);
        for &n in chunk {
            let id = random_id(n);
            ops.push(start(&id));
            for step in 0..3 {
                ops.push(append(&id, &format!("Step{step}/1"), step, b"{\"ok\":1}"));
            }
            ops.push(status(&id, Status::Complete, Some(b"{\"ok\":3}")));
        }
        write(store, ops).await;
    }
}

/// The store's share of the engine's workload as the journal grows: `cargo test --release
/// workload_costs -- --ignored --nocapture`. 1,000 executions in flight go through start,
/// three steps and completion, one op per execution per commit (as the engine's group commit
/// takes them), staggered so that every commit holds all five kinds; printed: store time per
/// execution at each size up to `PLAIT_BENCH_ROWS` journal rows (default 3,000,000), filled
/// with finished executions of three steps, each size measured after a checkpoint.
#[tokio::test]
#[ignore = "a benchmark: run it by name"]
async fn workload_costs() {
    let rows: usize = std::env::var("PLAIT_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000_000);
    let in_flight = 1000;
    let per_point = 20_000;
    for place in Place::all().await {
        let store = place.open().await;
        let mut filled = 0;
        let mut next_id = 1 << 40;
        for target in [0, rows / 10, rows / 3, rows] {
            let executions = target / 3;
            if executions > filled {
                let started = Instant::now();
                fill_finished(&store, filled, executions).await;
                eprintln!(
                    "{:?}: filled to {target} rows in {:.0} s",
                    place.dialect,
                    started.elapsed().as_secs_f64()
                );
                filled = executions;
                // The rounds should not pay for writing back what the fill left.
                match place.dialect {
                    Dialect::Sqlite => place.execute("PRAGMA wal_checkpoint(TRUNCATE)").await,
                    Dialect::Postgres => place.execute("CHECKPOINT").await,
                }
            }
            // Slot k holds an execution at stage (k + cycle) % 5: 0 start, 1-3 steps,
            // 4 completion; each completion frees its slot for a new execution.
            let mut slots: Vec<String> = (0..in_flight)
                .map(|_| {
                    next_id += 1;
                    random_id(next_id)
                })
                .collect();
            let cycles = per_point * 5 / in_flight;
            let started = Instant::now();
            for cycle in 0..cycles {
                let ops = slots
                    .iter_mut()
                    .enumerate()
                    .map(|(k, id)| match (k + cycle) % 5 {
                        0 => {
                            next_id += 1;
                            *id = random_id(next_id);
                            start(id)
                        }
                        4 => status(id, Status::Complete, Some(b"{\"ok\":3}")),
                        step => {
                            let step = u32::try_from(step).unwrap();
                            append(id, &format!("Step{step}/1"), step, b"{\"ok\":1}")
                        }
                    })
                    .collect();
                write(&store, ops).await;
            }
            let elapsed = started.elapsed();
            let executions = cycles * in_flight / 5;
            eprintln!(
                "{:?} rows={target}: {:.1} us of store time per execution, {:.2} ms per \
                 commit of {in_flight} ops",
                place.dialect,
                elapsed.as_secs_f64() * 1e6 / f64::from(u32::try_from(executions).unwrap()),
                elapsed.as_secs_f64() * 1e3 / f64::from(u32::try_from(cycles).unwrap())
            );
        }
        store.close().await;
        place.cleanup().await;
    }
}

fn request(id: i64, entity_id: &str, key: Option<&str>, deliver_at: Option<u64>) -> Request {
    Request {
        id,
        shard: format!("default:{}", id % 3),
        entity_type: "Counter".into(),
        entity_id: entity_id.into(),
        tag: "increment".into(),
        payload: format!("{{\"n\":{id}}}").into_bytes(),
        key: key.map(str::to_owned),
        deliver_at,
    }
}

fn save(request: Request, claimed_ms: Option<u64>) -> Op {
    Op::Request {
        request,
        claimed_ms,
    }
}

fn reply(request_id: i64, value: &str) -> Op {
    Op::Reply {
        request_id,
        value: value.as_bytes().to_vec(),
        notify: true,
    }
}

/// The same entity message ops and reads, through the contract, on the memory store and on
/// every SQL store: saves, dedup by id and by key, replies (first wins), claims and their
/// timeout, `deliver_at`, unclaim, `clear_replies`, `reset_claims`, entity state, shards.
#[allow(clippy::too_many_lines)] // one script, read top to bottom
async fn message_script(store: &dyn Store) -> Vec<String> {
    const T: u64 = 1_700_000_000_000;
    let mut seen = Vec::new();
    let mut step = |what: &str, value: String| seen.push(format!("{what}: {value}"));
    let w = |ops: Vec<Op>| async { store.write(ops).unwrap().await.unwrap() };
    // Saved: one claimed by its sender, others not; one held back; one keyed.
    let saved = w(vec![
        save(
            request(1, "a", Some("Counter/a/increment/k1"), None),
            Some(T),
        ),
        save(request(2, "a", None, None), None),
        save(request(3, "b", None, Some(T + 5_000)), None),
        save(request(4, "c", Some("Counter/c/increment/k4"), None), None),
    ])
    .await;
    step("saved", format!("{saved:?}"));
    // Duplicates: by id, and by key (another id), before any reply.
    let dup = w(vec![
        save(request(2, "a", None, None), None),
        save(request(9, "a", Some("Counter/a/increment/k1"), None), None),
    ])
    .await;
    step("duplicates", format!("{dup:?}"));
    // The unclaimed ones that may go now, claimed by the read; the held and claimed ones not.
    let read = store.unprocessed(Shards::All, 10, T).await.unwrap();
    step("read", format!("{read:?}"));
    let again = store.unprocessed(Shards::All, 10, T + 1).await.unwrap();
    step("read again", format!("{again:?}"));
    // deliver_at reached; a claim past its timeout is void.
    let later = store
        .unprocessed(Shards::All, 10, T + CLAIM_MS)
        .await
        .unwrap();
    step("read later", format!("{later:?}"));
    // Replies: the first wins; unknown requests are not stored.
    let replied = w(vec![
        reply(1, "r1"),
        reply(1, "r1 again"),
        reply(77, "nobody"),
        Op::EntityState {
            entity_type: "Counter".into(),
            entity_id: "a".into(),
            value: b"{\"total\":1}".to_vec(),
        },
    ])
    .await;
    step("replied", format!("{replied:?}"));
    let dup = w(vec![save(
        request(10, "a", Some("Counter/a/increment/k1"), None),
        None,
    )])
    .await;
    step("duplicate after reply", format!("{dup:?}"));
    step(
        "replies",
        format!("{:?}", store.replies(&[1, 2, 77]).await.unwrap()),
    );
    // Unclaim, claim, reset, clear.
    let claims = w(vec![
        Op::Unclaim {
            request_id: 2,
            shard: None,
        },
        Op::Unclaim {
            request_id: 1,
            shard: None,
        },
        Op::Claim {
            request_id: 2,
            claimed_ms: T + CLAIM_MS + 10,
        },
        Op::Claim {
            request_id: 2,
            claimed_ms: T + CLAIM_MS + 11,
        },
        Op::Claim {
            request_id: 1,
            claimed_ms: T + CLAIM_MS + 12,
        },
    ])
    .await;
    step("claims", format!("{claims:?}"));
    let reset = w(vec![
        Op::ResetClaims {
            shards: Some(vec!["default:0".into()]),
        },
        Op::ResetClaims { shards: None },
        Op::ResetClaims { shards: None },
    ])
    .await;
    step("resets", format!("{reset:?}"));
    let only = store
        .unprocessed(
            Shards::Only(&["default:2".to_owned()]),
            10,
            T + CLAIM_MS + 20,
        )
        .await
        .unwrap();
    step("read one shard", format!("{only:?}"));
    let cleared = w(vec![
        Op::ClearReplies { request_id: 1 },
        Op::ClearReplies { request_id: 78 },
    ])
    .await;
    step("cleared", format!("{cleared:?}"));
    let limited = store
        .unprocessed(Shards::All, 1, T + 2 * CLAIM_MS + 40)
        .await
        .unwrap();
    step("read one", format!("{limited:?}"));
    step(
        "replies after clear",
        format!("{:?}", store.replies(&[1, 2]).await.unwrap()),
    );
    let states = store
        .entity_states(&[
            ("Counter".into(), "a".into()),
            ("Counter".into(), "zz".into()),
            ("Counter".into(), "a\0".into()),
        ])
        .await
        .unwrap();
    step("states", format!("{states:?}"));
    // Runs of one kind with repeats inside: the first save and reply win, the last state.
    let run = w(vec![
        save(request(20, "r", Some("Counter/r/increment/K"), None), None),
        save(request(21, "r", Some("Counter/r/increment/K"), None), None),
        save(request(20, "r", None, None), None),
        save(request(22, "r", None, None), Some(T)),
        reply(20, "first"),
        reply(20, "second"),
        reply(22, "other"),
        reply(23, "nobody"),
        Op::EntityState {
            entity_type: "Counter".into(),
            entity_id: "r".into(),
            value: b"1".to_vec(),
        },
        Op::EntityState {
            entity_type: "Counter".into(),
            entity_id: "r".into(),
            value: b"2".to_vec(),
        },
        save(request(24, "r", Some("Counter/r/increment/K"), None), None),
    ])
    .await;
    step("runs", format!("{run:?}"));
    assert!(
        format!("{run:?}")
            .contains("Duplicate { original: 20, reply: Some([102, 105, 114, 115, 116]) }"),
        "{run:?}"
    );
    let run_replies = store.replies(&[20, 21, 22]).await.unwrap();
    step("run replies", format!("{run_replies:?}"));
    let state = store
        .entity_states(&[("Counter".into(), "r".into())])
        .await
        .unwrap();
    step("run state", format!("{state:?}"));
    seen
}

#[tokio::test]
async fn entity_messages_answer_as_the_memory_store_does() {
    let expected = message_script(&MemoryStore::default()).await;
    for place in Place::all().await {
        let sql = place.open().await;
        let seen = message_script(&sql).await;
        for (expected, seen) in expected.iter().zip(&seen) {
            assert_eq!(seen, expected, "on {:?}", place.dialect);
        }
        assert_eq!(seen.len(), expected.len());
        Store::close(&sql).await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn message_ops_commit_with_the_journal_and_survive_a_reopen() {
    for place in Place::all().await {
        let sql = place.open().await;
        let written = write(
            &sql,
            vec![
                start("e1"),
                save(
                    request(5, "x", Some("Counter/x/increment/k"), None),
                    Some(1),
                ),
                append("e1", "k", 0, b"1"),
                reply(5, "done"),
                Op::EntityState {
                    entity_type: "Counter".into(),
                    entity_id: "x".into(),
                    value: b"{}".to_vec(),
                },
            ],
        )
        .await;
        assert_eq!(
            written,
            [
                OpResult::Created,
                OpResult::Created,
                OpResult::Done(true),
                OpResult::Done(true),
                OpResult::Done(true)
            ]
        );
        Store::close(&sql).await;
        let reopened = place.open().await;
        assert_eq!(
            reopened.replies(&[5]).await.unwrap(),
            [Some(b"done".to_vec())]
        );
        let dup = write(
            &reopened,
            vec![save(
                request(6, "x", Some("Counter/x/increment/k"), None),
                None,
            )],
        )
        .await;
        assert_eq!(
            dup,
            [OpResult::Duplicate {
                original: 5,
                reply: Some(b"done".to_vec())
            }]
        );
        Store::close(&reopened).await;
        place.cleanup().await;
    }
}
