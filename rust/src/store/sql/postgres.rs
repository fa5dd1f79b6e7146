//! PostgreSQL through sqlx: a writer connection that sends each group commit as one statement,
//! and reads that each take one statement per chunk of ids.
//!
//! sqlx cannot pipeline, so a transaction of n statements cost n + 2 round trips, each a
//! kernel send, a receive and a wake-up of the tokio thread. The `<prefix>apply` function (see
//! `migrations/postgres/0004_numbers_and_hot_updates.sql`) takes the ops as parallel arrays and
//! applies them in order; called in autocommit, its implicit transaction commits with it, so a
//! commit is one round trip whatever its size. With each op goes the number of its execution
//! when the writer knows it (see `super::numbers`), and back comes the number of every execution
//! the function created or found. A read is one statement too, which needs no explicit
//! transaction to see one snapshot of every table it joins.

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use sqlx::{
    postgres::{PgConnectOptions, PgRow},
    AssertSqlSafe, Connection, PgConnection, PgPool, Row, SqlSafeStr, SqlStr,
};

use super::{
    connect::{Dialect, CONNECT_TIMEOUT},
    corrupt, due_to_i64,
    lease::{shard_lease, Fence, Lease, LeaseState, ShardFences},
    listing::{self, Param},
    numbers::{self, Learned, Numbers},
    stored_due, stored_ms, stored_seq, stored_status,
    writer::{Renewal, Results, Transactions},
    Failure,
};
use crate::{
    clock::now_ms,
    store::{
        messages::CLAIM_MS, Cursor, Deferred, DeferredAt, Entry, Execution, Filter, History,
        Listed, Op, OpResult, Page, QueueItem, Request, Snapshot, Status, Step, Taken, Timer,
        Unprocessed,
    },
};

/// Every statement the store runs, with the table prefix filled in.
pub(super) struct Statements {
    apply: SqlStr,
    snapshots: SqlStr,
    executions: SqlStr,
    timers: SqlStr,
    timers_between: SqlStr,
    with_status: SqlStr,
    with_status_complete: SqlStr,
    unprocessed: SqlStr,
    next_deliver_at: SqlStr,
    replies: SqlStr,
    entity_states: SqlStr,
    history_execution: SqlStr,
    history_steps: SqlStr,
    history_deferreds: SqlStr,
    history_timers: SqlStr,
    notify: SqlStr,
    take: SqlStr,
    prefix: String,
}

/// `template` with the prefix filled in, shared so that each use costs a reference count.
fn sql(template: &str, prefix: &str) -> SqlStr {
    AssertSqlSafe(Arc::<str>::from(template.replace("{p}", prefix))).into_sql_str()
}

/// The codes of the op kinds in `<prefix>apply`.
const START: i16 = 0;
const APPEND: i16 = 1;
const DEFERRED: i16 = 2;
const STATUS: i16 = 3;
const INTERRUPT: i16 = 4;
const TIMER: i16 = 5;
const UNTIMER: i16 = 6;
/// `Op::Suspend`, applied by the journal's function too (after the message and queue kinds).
const SUSPEND: i16 = 18;
/// The codes of the message op kinds in `<prefix>apply_messages`.
const REQUEST: i16 = 7;
const REPLY: i16 = 8;
const ENTITY_STATE: i16 = 9;
const CLEAR_REPLIES: i16 = 10;
const UNCLAIM: i16 = 11;
const CLAIM: i16 = 12;
const RESET_CLAIMS: i16 = 13;
/// The codes of the queue op kinds, applied by `<prefix>apply_messages` too.
const OFFER: i16 = 14;
const QUEUE_CLAIM: i16 = 15;
const QUEUE_DONE: i16 = 16;
const QUEUE_RENEW: i16 = 17;

/// The outcomes `<prefix>apply` returns.
const FALSE: i16 = 0;
const TRUE: i16 = 1;
const UNKNOWN: i16 = 2;
const FOUND: i16 = 3;
const DUPLICATE: i16 = 4;
/// Separates the shards of one `reset_claims` op (a character no text of the store holds).
const SHARD_SEPARATOR: char = '\u{1f}';

/// Which part of a snapshot a row of the `snapshots` statement holds.
const PART_EXECUTION: i16 = 0;
const PART_ENTRY: i16 = 1;
const PART_DEFERRED: i16 = 2;

impl Statements {
    #[allow(clippy::too_many_lines)] // the table of statements, one entry each
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            notify: sql(
                "SELECT {p}notify_chunks('{p}requests', $1::TEXT[]), \
                 {p}notify_chunks('{p}replies', $2::TEXT[]), \
                 {p}notify_chunks('{p}wake', $3::TEXT[]), \
                 {p}notify_chunks('{p}ended', $4::TEXT[])",
                prefix,
            ),
            apply: sql(
                "SELECT outcome, found_no, found_workflow, found_payload, found_parent, \
                 found_status, found_result, found_interrupted \
                 FROM {p}apply_fenced($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                 $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
                prefix,
            ),
            // The executions, then their steps, then their deferreds, each part in write
            // order; columns shared between the parts where their types agree. The steps and
            // deferreds are looked up per execution (a lateral subquery that `OFFSET 0` keeps
            // from being flattened into a join): without statistics, as after a bulk load, the
            // planner would otherwise hash-join them, scanning the whole journal per chunk.
            snapshots: sql(
                "WITH e AS MATERIALIZED ( \
                     SELECT no, id, workflow, payload, parent, status, result, interrupted \
                     FROM {p}executions WHERE id = ANY($1)) \
                 SELECT 0::int2 AS part, e.no, 0::int8 AS ord, e.id AS name, e.workflow, \
                        e.parent, e.status, e.payload AS value, e.result, e.interrupted, \
                        NULL::int8 AS seq \
                 FROM e \
                 UNION ALL \
                 SELECT 1::int2, e.no, j.ord, j.key, NULL, NULL, NULL, j.value, NULL, NULL, \
                        j.seq \
                 FROM e CROSS JOIN LATERAL ( \
                     SELECT ord, key, value, seq FROM {p}journal \
                     WHERE execution_no = e.no OFFSET 0) j \
                 UNION ALL \
                 SELECT 2::int2, e.no, d.ord, d.name, NULL, NULL, NULL, d.value, NULL, NULL, \
                        NULL \
                 FROM e CROSS JOIN LATERAL ( \
                     SELECT ord, name, value FROM {p}deferreds \
                     WHERE execution_no = e.no OFFSET 0) d \
                 ORDER BY 1, 2, 3",
                prefix,
            ),
            executions: sql(
                "SELECT id, workflow, payload, parent, status, result, interrupted \
                 FROM {p}executions WHERE id = ANY($1)",
                prefix,
            ),
            timers: sql(
                "SELECT execution_id, name, due_ms FROM {p}timers \
                 ORDER BY due_ms, execution_id, name",
                prefix,
            ),
            // A range of the index on `due_ms`, and the first entry past it: the row without
            // an execution id, last in the order (its due instant is past all the others).
            timers_between: sql(
                "SELECT execution_id, name, due_ms FROM {p}timers \
                 WHERE due_ms > $1 AND due_ms <= $2 \
                 UNION ALL \
                 (SELECT NULL::text, NULL::text, due_ms FROM {p}timers WHERE due_ms > $2 \
                  ORDER BY due_ms LIMIT 1) \
                 ORDER BY 3, 1, 2",
                prefix,
            ),
            // Executions that are not complete are listed by number in `active`, which the
            // status column has no index for (see migration 0004); complete ones are most of
            // the table, read whole. Each active one is looked up by number (a lateral subquery
            // that `OFFSET 0` keeps from being flattened): a generic plan without statistics
            // could otherwise hash-join `active` with every execution.
            with_status: sql(
                "SELECT e.id FROM {p}active a CROSS JOIN LATERAL ( \
                     SELECT id, status FROM {p}executions WHERE no = a.no OFFSET 0) e \
                 WHERE e.status = $1 ORDER BY e.id",
                prefix,
            ),
            with_status_complete: sql(
                "SELECT id FROM {p}executions WHERE status = $1 ORDER BY id",
                prefix,
            ),
            // Claims older than the claim timeout are void; `deliver_at` holds back. The
            // caller claims what it gets (through the writer, fenced).
            unprocessed: sql(
                "SELECT id, shard_id, entity_type, entity_id, tag, payload, message_key, \
                 deliver_at FROM {p}messages WHERE NOT processed \
                 AND (last_read IS NULL OR last_read <= $1) \
                 AND (deliver_at IS NULL OR deliver_at <= $2) \
                 AND ($3::text[] IS NULL OR shard_id = ANY($3)) ORDER BY id LIMIT $4",
                prefix,
            ),
            next_deliver_at: sql(
                "SELECT min(deliver_at) FROM {p}messages WHERE NOT processed \
                 AND deliver_at > $1 AND ($2::text[] IS NULL OR shard_id = ANY($2))",
                prefix,
            ),
            replies: sql(
                "SELECT request_id, payload FROM {p}replies WHERE request_id = ANY($1)",
                prefix,
            ),
            entity_states: sql(
                "SELECT s.entity_type, s.entity_id, s.value FROM {p}entity_state s \
                 JOIN unnest($1::text[], $2::text[]) AS a(t, i) \
                 ON s.entity_type = a.t AND s.entity_id = a.i",
                prefix,
            ),
            history_execution: sql(
                "SELECT no, workflow, payload, parent, status, result, interrupted, created_ms, \
                 updated_ms FROM {p}executions WHERE id = $1",
                prefix,
            ),
            history_steps: sql(
                "SELECT key, seq, value, at_ms FROM {p}journal WHERE execution_no = $1 \
                 ORDER BY ord",
                prefix,
            ),
            history_deferreds: sql(
                "SELECT name, value, at_ms FROM {p}deferreds WHERE execution_no = $1 \
                 ORDER BY ord",
                prefix,
            ),
            history_timers: sql(
                "SELECT name, due_ms FROM {p}timers WHERE execution_id = $1 ORDER BY due_ms, name",
                prefix,
            ),
            // One statement claims and returns: rows another take has locked are passed by, and
            // a row it claimed meanwhile is re-checked against the claim's condition.
            take: sql(
                "WITH c AS ( \
                     SELECT queue, id FROM {p}queue_items \
                     WHERE queue = $1 AND done_ms IS NULL \
                     AND (claimed_ms IS NULL OR claimed_ms <= $2) \
                     ORDER BY no LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 UPDATE {p}queue_items q SET claimed_ms = $4, attempts = q.attempts + 1 \
                 FROM c WHERE q.queue = c.queue AND q.id = c.id \
                 RETURNING q.no, q.id, q.payload, q.token, q.attempts",
                prefix,
            ),
            prefix: prefix.to_owned(),
        }
    }
}

/// A batch of ops as the parallel arrays `<prefix>apply` takes.
#[derive(Default)]
struct Columns<'a> {
    kinds: Vec<i16>,
    ids: Vec<&'a str>,
    nos: Vec<Option<i64>>,
    /// Per op: whether the number `apply` answers is worth keeping (the writer did not have it,
    /// or had it only in its older generation).
    learn: Vec<bool>,
    names: Vec<Option<&'a str>>,
    nums: Vec<Option<i64>>,
    blobs: Vec<Option<&'a [u8]>>,
    parents: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn with_capacity(count: usize) -> Self {
        Self {
            kinds: Vec::with_capacity(count),
            ids: Vec::with_capacity(count),
            nos: Vec::with_capacity(count),
            learn: Vec::with_capacity(count),
            names: Vec::with_capacity(count),
            nums: Vec::with_capacity(count),
            blobs: Vec::with_capacity(count),
            parents: Vec::with_capacity(count),
        }
    }

    fn push(&mut self, op: &'a Op, numbers: &Numbers) -> Result<(), Failure> {
        let (kind, id, name, num, blob, parent) = match op {
            Op::Start {
                id,
                workflow,
                payload,
                parent,
            } => (
                START,
                id,
                Some(workflow.as_str()),
                None,
                Some(payload.as_slice()),
                parent.as_deref(),
            ),
            Op::Append { id, entry } => (
                APPEND,
                id,
                Some(entry.key.as_str()),
                Some(i64::from(entry.seq)),
                Some(entry.value.as_slice()),
                None,
            ),
            Op::Deferred { id, name, value } => (
                DEFERRED,
                id,
                Some(name.as_str()),
                None,
                Some(value.as_slice()),
                None,
            ),
            Op::Status { id, status, result } => (
                STATUS,
                id,
                Some(status.as_str()),
                None,
                result.as_deref(),
                None,
            ),
            // Its number is the count of deferred results its run knew of (see the apply
            // function of migration 0011).
            Op::Suspend {
                id,
                cause,
                deferreds,
            } => (
                SUSPEND,
                id,
                None,
                Some(i64::from(*deferreds)),
                cause.as_deref(),
                None,
            ),
            Op::Interrupt { id } => (INTERRUPT, id, None, None, None, None),
            Op::Timer(timer) => (
                TIMER,
                &timer.execution_id,
                Some(timer.name.as_str()),
                Some(due_to_i64(timer.due_ms)?),
                None,
                None,
            ),
            Op::Untimer { execution_id, name } => {
                (UNTIMER, execution_id, Some(name.as_str()), None, None, None)
            }
            Op::Request { .. }
            | Op::Reply { .. }
            | Op::EntityState { .. }
            | Op::ClearReplies { .. }
            | Op::Unclaim { .. }
            | Op::Claim { .. }
            | Op::ResetClaims { .. }
            | Op::Offer(_)
            | Op::QueueClaim { .. }
            | Op::QueueRenew { .. }
            | Op::QueueDone { .. }
            | Op::Owned { .. } => {
                return Err(Failure::Refused(format!(
                    "a message op among the journal's: {op:?}"
                )))
            }
        };
        // `untimer` never looks its execution up.
        let known = if kind == UNTIMER {
            None
        } else {
            numbers.get(id)
        };
        self.kinds.push(kind);
        self.ids.push(id);
        self.nos.push(known.map(|(no, _)| no));
        self.learn
            .push(kind != UNTIMER && known.is_none_or(|(_, keep)| keep));
        self.names.push(name);
        self.nums.push(num);
        self.blobs.push(blob);
        self.parents.push(parent);
        Ok(())
    }
}

/// A batch's message ops as the parallel arrays `<prefix>apply_messages` takes.
#[derive(Default)]
struct MessageColumns<'a> {
    kinds: Vec<i16>,
    ids: Vec<Option<i64>>,
    t1: Vec<Option<String>>,
    t2: Vec<Option<&'a str>>,
    t3: Vec<Option<&'a str>>,
    t4: Vec<Option<&'a str>>,
    t5: Vec<Option<&'a str>>,
    n1: Vec<Option<i64>>,
    n2: Vec<Option<i64>>,
    blobs: Vec<Option<&'a [u8]>>,
}

impl<'a> MessageColumns<'a> {
    #[allow(clippy::too_many_lines)] // one arm per op kind, each short
    fn push(&mut self, op: &'a Op) -> Result<(), Failure> {
        let at = |ms: Option<u64>| ms.map(due_to_i64).transpose();
        let mut row = (None, None, None, None, None, None, None, None, None);
        let kind = match op {
            Op::Request {
                request,
                claimed_ms,
            } => {
                row = (
                    Some(request.id),
                    Some(request.shard.clone()),
                    Some(request.entity_type.as_str()),
                    Some(request.entity_id.as_str()),
                    Some(request.tag.as_str()),
                    request.key.as_deref(),
                    at(request.deliver_at)?,
                    at(*claimed_ms)?,
                    Some(request.payload.as_slice()),
                );
                REQUEST
            }
            Op::Reply {
                request_id, value, ..
            } => {
                row.0 = Some(*request_id);
                row.8 = Some(value.as_slice());
                REPLY
            }
            Op::EntityState {
                entity_type,
                entity_id,
                value,
            } => {
                row.2 = Some(entity_type.as_str());
                row.3 = Some(entity_id.as_str());
                row.8 = Some(value.as_slice());
                ENTITY_STATE
            }
            Op::ClearReplies { request_id } => {
                row.0 = Some(*request_id);
                CLEAR_REPLIES
            }
            Op::Unclaim { request_id, .. } => {
                row.0 = Some(*request_id);
                UNCLAIM
            }
            Op::Claim {
                request_id,
                claimed_ms,
            } => {
                row.0 = Some(*request_id);
                row.6 = Some(i64::try_from(CLAIM_MS).unwrap_or(i64::MAX));
                row.7 = at(Some(*claimed_ms))?;
                CLAIM
            }
            Op::ResetClaims { shards } => {
                row.1 = shards
                    .as_ref()
                    .map(|shards| shards.join(SHARD_SEPARATOR.encode_utf8(&mut [0; 4])));
                RESET_CLAIMS
            }
            Op::Offer(item) => {
                row.1 = Some(item.queue.clone());
                row.2 = Some(item.id.as_str());
                row.3 = item.token.as_deref();
                row.8 = Some(item.payload.as_slice());
                OFFER
            }
            Op::QueueClaim {
                queue,
                id,
                claimed_ms,
                claim_ms,
            } => {
                row.1 = Some(queue.clone());
                row.2 = Some(id.as_str());
                row.6 = at(Some(*claim_ms))?;
                row.7 = at(Some(*claimed_ms))?;
                QUEUE_CLAIM
            }
            Op::QueueRenew {
                queue,
                id,
                held_ms,
                renewed_ms,
            } => {
                row.1 = Some(queue.clone());
                row.2 = Some(id.as_str());
                row.6 = at(Some(*held_ms))?;
                row.7 = at(Some(*renewed_ms))?;
                QUEUE_RENEW
            }
            Op::QueueDone { queue, id } => {
                row.1 = Some(queue.clone());
                row.2 = Some(id.as_str());
                QUEUE_DONE
            }
            _ => {
                return Err(Failure::Refused(format!(
                    "a journal op among the messages': {op:?}"
                )))
            }
        };
        self.kinds.push(kind);
        self.ids.push(row.0);
        self.t1.push(row.1);
        self.t2.push(row.2);
        self.t3.push(row.3);
        self.t4.push(row.4);
        self.t5.push(row.5);
        self.n1.push(row.6);
        self.n2.push(row.7);
        self.blobs.push(row.8);
        Ok(())
    }
}

/// Whether `op` is one of the entity message or queue ops (applied by
/// `<prefix>apply_messages`).
fn is_message(op: &Op) -> bool {
    matches!(
        op,
        Op::Offer(_)
            | Op::QueueClaim { .. }
            | Op::QueueRenew { .. }
            | Op::QueueDone { .. }
            | Op::Request { .. }
            | Op::Reply { .. }
            | Op::EntityState { .. }
            | Op::ClearReplies { .. }
            | Op::Unclaim { .. }
            | Op::Claim { .. }
            | Op::ResetClaims { .. }
    )
}

/// What `<prefix>apply` answered for `op`.
fn outcome(op: &Op, row: &PgRow) -> Result<OpResult, Failure> {
    let code: i16 = row.try_get(0)?;
    Ok(match (code, op) {
        (TRUE, Op::Start { .. } | Op::Request { .. }) => OpResult::Created,
        (DUPLICATE, Op::Request { .. }) => OpResult::Duplicate {
            original: row.try_get(1)?,
            reply: row.try_get(6)?,
        },
        (FOUND, Op::Start { id, .. }) => {
            let status: String = row.try_get(5)?;
            OpResult::Existing(Execution {
                workflow: row.try_get(2)?,
                payload: row.try_get(3)?,
                parent: row.try_get(4)?,
                status: stored_status(id, &status)?,
                result: row.try_get(6)?,
                interrupted: row.try_get(7)?,
            })
        }
        (TRUE, _) => OpResult::Done(true),
        (FALSE, _) => OpResult::Done(false),
        (UNKNOWN, _) => OpResult::UnknownExecution,
        (code, op) => {
            return Err(Failure::Refused(format!(
                "the store's apply function answered {code} to {op:?}"
            )))
        }
    })
}

/// Applies every batch, in order, as one statement in its own transaction, provided every lease
/// of `fences` is still held. Returns the results and the execution numbers worth keeping,
/// which are committed with it. The ops are out of any [`Op::Owned`].
async fn apply<'a>(
    conn: &mut PgConnection,
    statements: &Statements,
    numbers: &Numbers,
    batches: &[Vec<&'a Op>],
    now_ms: i64,
    fences: &[Fence],
) -> Result<(Results, Learned<'a>), Failure> {
    let count = batches.iter().map(Vec::len).sum();
    let mut columns = Columns::with_capacity(count);
    let mut messages = MessageColumns::default();
    for &op in batches.iter().flatten() {
        if is_message(op) {
            messages.push(op)?;
        } else {
            columns.push(op, numbers)?;
        }
    }
    let rows = sqlx::query(statements.apply.clone())
        .bind(columns.kinds.as_slice())
        .bind(columns.ids.as_slice())
        .bind(columns.nos.as_slice())
        .bind(columns.names.as_slice())
        .bind(columns.nums.as_slice())
        .bind(columns.blobs.as_slice())
        .bind(columns.parents.as_slice())
        .bind(now_ms)
        .bind(fences.iter().map(|f| f.name.as_str()).collect::<Vec<_>>())
        .bind(fences.iter().map(|f| f.epoch).collect::<Vec<_>>())
        .bind(messages.kinds.as_slice())
        .bind(messages.ids.as_slice())
        .bind(messages.t1.as_slice())
        .bind(messages.t2.as_slice())
        .bind(messages.t3.as_slice())
        .bind(messages.t4.as_slice())
        .bind(messages.t5.as_slice())
        .bind(messages.n1.as_slice())
        .bind(messages.n2.as_slice())
        .bind(messages.blobs.as_slice())
        .fetch_all(&mut *conn)
        .await?;
    if rows.len() != count {
        return Err(Failure::Refused(format!(
            "the store's apply function answered {} ops of {count}",
            rows.len()
        )));
    }
    // The journal's answers come first, then the messages'.
    let (journal_rows, message_rows) = rows.split_at(columns.kinds.len());
    let mut learned = Learned::default();
    for ((row, &id), &learn) in journal_rows.iter().zip(&columns.ids).zip(&columns.learn) {
        if learn {
            if let Some(no) = row.try_get::<Option<i64>, _>(1)? {
                learned.insert(id, no);
            }
        }
    }
    let (mut journal_rows, mut message_rows) = (journal_rows.iter(), message_rows.iter());
    let results = batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .map(|&op| {
                    let rows = if is_message(op) {
                        &mut message_rows
                    } else {
                        &mut journal_rows
                    };
                    match rows.next() {
                        Some(row) => outcome(op, row),
                        None => Err(Failure::Refused(
                            "the store's apply function answered too few ops".into(),
                        )),
                    }
                })
                .collect()
        })
        .collect::<Result<Results, Failure>>()?;
    Ok((results, learned))
}

/// What the commits of a writer are fenced by.
pub(super) enum Fencing {
    /// The single engine's lease: every commit carries it.
    Engine(Arc<Lease>),
    /// A runner's shard leases: a commit carries the lease of each shard its [`Op::Owned`] ops
    /// are owned by; an op of a shard not held is answered [`OpResult::Fenced`] and not sent.
    Shards(Arc<ShardFences>),
}

/// The ops of `batches` to send (out of [`Op::Owned`]), the fences they need, and which ops
/// are not sent because their shard is not held.
#[allow(clippy::type_complexity)] // three plain parts of one answer
fn fence<'a>(
    fencing: &Fencing,
    batches: &[&'a [Op]],
) -> Result<(Vec<Vec<&'a Op>>, Vec<Fence>, Vec<Vec<bool>>), Failure> {
    let mut sent = Vec::with_capacity(batches.len());
    let mut skipped = Vec::with_capacity(batches.len());
    let mut fences = Vec::new();
    match fencing {
        Fencing::Engine(lease) => {
            fences.push(lease.fence().map_err(Failure::Fenced)?);
            for batch in batches {
                sent.push(batch.iter().map(Op::inner).collect());
                skipped.push(Vec::new());
            }
        }
        Fencing::Shards(shards) => {
            let mut seen: FxHashSet<&str> = FxHashSet::default();
            for batch in batches {
                let mut ops = Vec::with_capacity(batch.len());
                let mut skips = Vec::with_capacity(batch.len());
                for op in *batch {
                    let keep = match op {
                        Op::Owned { shard, .. } => match shards.epoch(shard) {
                            Some(epoch) => {
                                if seen.insert(shard) {
                                    fences.push(Fence {
                                        name: shard_lease(shard),
                                        epoch,
                                    });
                                }
                                true
                            }
                            None => false,
                        },
                        _ => true,
                    };
                    if keep {
                        ops.push(op.inner());
                    }
                    skips.push(!keep);
                }
                sent.push(ops);
                skipped.push(skips);
            }
            // Locked in name order, as renewals lock them: no deadlock between the two.
            fences.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
    Ok((sent, fences, skipped))
}

/// Wakes the other processes of a cluster once a commit is durable: the owners of the shards
/// that got requests saved unclaimed, the callers of the replies saved, the owners of the
/// executions that another process started, completed a deferred of, interrupted or resumed
/// (ops not [`Op::Owned`]), and the callers of the executions whose owner ended a run (an
/// owned complete or suspended status). After the commit, not in it: a wake-up lost to a
/// crash between the two is made up by the readers' polling. Only a cluster's writer
/// notifies; a single engine's commits pay nothing for it.
async fn notify(
    conn: &mut PgConnection,
    statements: &Statements,
    batches: &[&[Op]],
    results: &Results,
) {
    let mut shards: Vec<&str> = Vec::new();
    let mut replies: Vec<String> = Vec::new();
    let mut wake: Vec<String> = Vec::new();
    let mut ended: Vec<String> = Vec::new();
    for (batch, results) in batches.iter().zip(results) {
        for (op, result) in batch.iter().zip(results) {
            // Requests and replies once applied; the executions' ops only when they changed
            // something (a start that created its execution, a deferred stored, a status or
            // an interrupt applied), so that joining an execution wakes nobody.
            let applied = !matches!(result, OpResult::Fenced | OpResult::Refused(_));
            let changed = matches!(result, OpResult::Created | OpResult::Done(true));
            let owned = matches!(op, Op::Owned { .. });
            match op.inner() {
                Op::Request {
                    request,
                    claimed_ms: None,
                } if applied => shards.push(&request.shard),
                Op::Reply {
                    request_id,
                    notify: true,
                    ..
                } if applied => replies.push(request_id.to_string()),
                Op::Unclaim {
                    shard: Some(shard), ..
                } if applied => shards.push(shard),
                Op::Status { id, status, .. } if changed && owned && *status != Status::Running => {
                    ended.push(notified_id(id));
                }
                Op::Suspend { id, .. } if changed && owned => ended.push(notified_id(id)),
                Op::Start { id, .. }
                | Op::Deferred { id, .. }
                | Op::Interrupt { id }
                | Op::Status {
                    id,
                    status: Status::Running,
                    ..
                } if changed && !owned => wake.push(notified_id(id)),
                _ => {}
            }
        }
    }
    if shards.is_empty() && replies.is_empty() && wake.is_empty() && ended.is_empty() {
        return;
    }
    shards.sort_unstable();
    shards.dedup();
    wake.sort_unstable();
    wake.dedup();
    let sent = sqlx::query(statements.notify.clone())
        .bind(shards)
        .bind(replies)
        .bind(wake)
        .bind(ended)
        .execute(&mut *conn);
    if let Err(err) = sent.await {
        log::warn!(target: "plait.store", "could not notify the cluster of a commit: {err}");
    }
}

/// An execution id as a notification carries it: items are separated by commas, so a comma
/// (and the escape character) in an id is percent-encoded; the listener decodes it.
fn notified_id(id: &str) -> String {
    if id.contains([',', '%']) {
        id.replace('%', "%25").replace(',', "%2C")
    } else {
        id.to_owned()
    }
}

/// `results` of the ops sent, with [`OpResult::Fenced`] in the places of those not sent.
fn with_fenced(results: Results, skipped: &[Vec<bool>]) -> Results {
    results
        .into_iter()
        .zip(skipped)
        .map(|(results, skips)| {
            if !skips.contains(&true) {
                return results;
            }
            let mut results = results.into_iter();
            skips
                .iter()
                .map(|&skip| {
                    if skip {
                        OpResult::Fenced
                    } else {
                        results.next().unwrap_or(OpResult::Fenced)
                    }
                })
                .collect()
        })
        .collect()
}

/// The writer's connection: the PostgreSQL half of the writer (`super::writer`), a tokio task.
/// It owns a connection of its own (commits never wait behind reads for a pooled connection,
/// nor pay a pool's liveness pings). Every commit is fenced (see [`Fencing`]): the database
/// refuses it unless the leases it depends on are still this process's.
pub(super) struct WriteConnection {
    /// `None` after a connection error, until the next attempt reconnects.
    conn: Option<PgConnection>,
    options: PgConnectOptions,
    statements: Arc<Statements>,
    numbers: Numbers,
    fencing: Fencing,
}

impl WriteConnection {
    pub(super) fn new(
        conn: PgConnection,
        options: PgConnectOptions,
        statements: Arc<Statements>,
        fencing: Fencing,
    ) -> Self {
        Self {
            conn: Some(conn),
            options,
            statements,
            numbers: Numbers::new(numbers::CAPACITY),
            fencing,
        }
    }
}

impl Transactions for WriteConnection {
    const TROUBLE: &'static str = "failed on a connection error";

    /// One try, (re)connecting first if needed.
    async fn apply(&mut self, batches: &[&[Op]]) -> Result<Results, Failure> {
        let (sent, fences, skipped) = fence(&self.fencing, batches)?;
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(connect(&self.options).await?),
        };
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        // The statement commits as it returns: what it learned is committed.
        let (results, learned) =
            apply(conn, &self.statements, &self.numbers, &sent, now, &fences).await?;
        self.numbers.keep(learned);
        if let Fencing::Shards(shards) = &self.fencing {
            let refused_ops = skipped.iter().flatten().filter(|&&skip| skip).count();
            if refused_ops > 0 {
                shards.count_fenced(refused_ops as u64);
            }
            let results = with_fenced(results, &skipped);
            notify(conn, &self.statements, batches, &results).await;
            return Ok(results);
        }
        Ok(with_fenced(results, &skipped))
    }

    /// A connection that no longer answers is replaced at the next attempt.
    async fn recover(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if ping(&mut conn).await {
                self.conn = Some(conn);
            } else {
                close(conn).await;
            }
        }
    }

    async fn renew(&mut self, refused: String) -> Result<Renewal, Failure> {
        let lease = match &self.fencing {
            Fencing::Shards(shards) => {
                // A shard's lease lapsed or was taken over: its ops are answered `Fenced` from
                // now on, the others are committed.
                return Ok(match refused_lease(&refused) {
                    Some(name) if shards.refused(name) => Renewal::Dropped {
                        lease: name.to_owned(),
                    },
                    _ => Renewal::Lost(refused),
                });
            }
            Fencing::Engine(lease) => lease,
        };
        if let Some(conn) = self.conn.as_mut() {
            match lease.renew(conn).await {
                Ok(true) => {
                    return Ok(Renewal::Renewed {
                        lease: lease.name().to_owned(),
                    })
                }
                Ok(false) => {}
                Err(err) => {
                    // The connection failed: retried as any connection error.
                    self.conn = None;
                    return Err(Failure::Transient(err.to_string()));
                }
            }
        }
        Ok(Renewal::Lost(match lease.state() {
            LeaseState::Lost(why) => why,
            LeaseState::Held(_) => refused,
        }))
    }

    async fn close(mut self) {
        if let Some(conn) = self.conn.take() {
            close(conn).await;
        }
    }
}

/// The lease a fenced commit's message names (`lease <name> is not held at epoch <n>`).
fn refused_lease(message: &str) -> Option<&str> {
    let start = message.find("lease ")? + "lease ".len();
    let rest = &message[start..];
    Some(&rest[..rest.find(" is not held")?])
}

/// A new connection for the writer, within [`CONNECT_TIMEOUT`].
async fn connect(options: &PgConnectOptions) -> Result<PgConnection, Failure> {
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::Io(std::io::ErrorKind::TimedOut.into())))
        .map_err(Failure::from)
}

/// Whether the connection still answers, within the connect timeout.
async fn ping(conn: &mut PgConnection) -> bool {
    tokio::time::timeout(CONNECT_TIMEOUT, conn.ping())
        .await
        .is_ok_and(|answered| answered.is_ok())
}

/// Ends the connection, politely if the server answers within the connect timeout.
async fn close(conn: PgConnection) {
    let _ = tokio::time::timeout(CONNECT_TIMEOUT, conn.close()).await;
}

/// The reads, on a pool of connections.
pub(super) struct Reads {
    pool: PgPool,
    statements: Arc<Statements>,
}

impl Reads {
    pub(super) fn new(pool: PgPool, statements: Arc<Statements>) -> Self {
        Self { pool, statements }
    }

    /// The snapshots of `ids` that the store holds, in one statement.
    pub(super) async fn snapshots(
        &self,
        ids: &[String],
    ) -> Result<FxHashMap<String, Snapshot>, Failure> {
        let rows = sqlx::query(self.statements.snapshots.clone())
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        // By `no`, which the journal and deferred rows name.
        let mut found: FxHashMap<i64, (String, Snapshot)> = FxHashMap::default();
        for row in &rows {
            let part: i16 = row.try_get(0)?;
            let no: i64 = row.try_get(1)?;
            let name: String = row.try_get(3)?;
            let value: Vec<u8> = row.try_get(7)?;
            if part == PART_EXECUTION {
                let status: String = row.try_get(6)?;
                let execution = Execution {
                    workflow: row.try_get(4)?,
                    payload: value,
                    parent: row.try_get(5)?,
                    status: stored_status(&name, &status)?,
                    result: row.try_get(8)?,
                    interrupted: row.try_get(9)?,
                };
                let snapshot = Snapshot {
                    execution,
                    entries: Vec::new(),
                    deferreds: Vec::new(),
                };
                found.insert(no, (name, snapshot));
                continue;
            }
            // Rows come ordered by part: every execution before any step or deferred.
            let Some((id, snapshot)) = found.get_mut(&no) else {
                return Err(corrupt(&format!("a row names execution number {no}")));
            };
            if part == PART_ENTRY {
                let seq: i64 = row.try_get(10)?;
                snapshot.entries.push(Entry {
                    key: name,
                    seq: stored_seq(id, seq)?,
                    value,
                });
            } else if part == PART_DEFERRED {
                snapshot.deferreds.push(Deferred { name, value });
            }
        }
        Ok(found.into_values().collect())
    }

    /// The executions of `ids` that the store holds, in one statement.
    pub(super) async fn executions(
        &self,
        ids: &[String],
    ) -> Result<FxHashMap<String, Execution>, Failure> {
        let rows = sqlx::query(self.statements.executions.clone())
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        let mut found = FxHashMap::default();
        for row in rows {
            let id: String = row.try_get(0)?;
            let status: String = row.try_get(4)?;
            let execution = Execution {
                workflow: row.try_get(1)?,
                payload: row.try_get(2)?,
                parent: row.try_get(3)?,
                status: stored_status(&id, &status)?,
                result: row.try_get(5)?,
                interrupted: row.try_get(6)?,
            };
            found.insert(id, execution);
        }
        Ok(found)
    }

    pub(super) async fn timers(&self) -> Result<Vec<Timer>, Failure> {
        let rows = sqlx::query(self.statements.timers.clone())
            .fetch_all(&self.pool)
            .await?;
        let mut timers = Vec::with_capacity(rows.len());
        for row in rows {
            timers.push(Timer {
                execution_id: row.try_get(0)?,
                name: row.try_get(1)?,
                due_ms: stored_due(row.try_get(2)?)?,
            });
        }
        Ok(timers)
    }

    pub(super) async fn timers_between(
        &self,
        after_ms: i64,
        until_ms: i64,
    ) -> Result<(Vec<Timer>, Option<u64>), Failure> {
        let rows = sqlx::query(self.statements.timers_between.clone())
            .bind(after_ms)
            .bind(until_ms)
            .fetch_all(&self.pool)
            .await?;
        let mut timers = Vec::with_capacity(rows.len());
        let mut next = None;
        for row in rows {
            let due = stored_due(row.try_get(2)?)?;
            match row.try_get::<Option<String>, _>(0)? {
                Some(execution_id) => timers.push(Timer {
                    execution_id,
                    name: row.try_get(1)?,
                    due_ms: due,
                }),
                None => next = Some(due),
            }
        }
        Ok((timers, next))
    }

    pub(super) async fn with_status(&self, status: Status) -> Result<Vec<String>, Failure> {
        let statement = match status {
            Status::Complete => self.statements.with_status_complete.clone(),
            Status::Running | Status::Suspended => self.statements.with_status.clone(),
        };
        let rows = sqlx::query(statement)
            .bind(status.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Up to `limit` requests that may be delivered at `now_ms`, unclaimed yet, and when the
    /// next one held back by `deliver_at` is due. The caller claims them.
    pub(super) async fn unprocessed(
        &self,
        shards: Option<Vec<String>>,
        limit: usize,
        now_ms: i64,
    ) -> Result<Unprocessed, Failure> {
        let void_before = now_ms.saturating_sub(i64::try_from(CLAIM_MS).unwrap_or(i64::MAX));
        let rows = sqlx::query(self.statements.unprocessed.clone())
            .bind(void_before)
            .bind(now_ms)
            .bind(shards.as_deref())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        let mut found = Unprocessed::default();
        for row in &rows {
            let deliver_at: Option<i64> = row.try_get(7)?;
            found.requests.push(Request {
                id: row.try_get(0)?,
                shard: row.try_get(1)?,
                entity_type: row.try_get(2)?,
                entity_id: row.try_get(3)?,
                tag: row.try_get(4)?,
                payload: row.try_get(5)?,
                key: row.try_get(6)?,
                deliver_at: deliver_at.map(stored_due).transpose()?,
            });
        }
        let next: Option<i64> = sqlx::query(self.statements.next_deliver_at.clone())
            .bind(now_ms)
            .bind(shards.as_deref())
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        found.next_deliver_at = next.map(stored_due).transpose()?;
        Ok(found)
    }

    /// Claims up to `limit` pending items of `queue` whose claim is void at `now_ms` under
    /// `claim_ms`, in offer order (one statement, its own transaction).
    pub(super) async fn take(
        &self,
        queue: &str,
        limit: usize,
        now_ms: i64,
        claim_ms: i64,
    ) -> Result<Vec<Taken>, Failure> {
        let rows = sqlx::query(self.statements.take.clone())
            .bind(queue)
            .bind(now_ms.saturating_sub(claim_ms))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?;
        let mut taken = Vec::with_capacity(rows.len());
        for row in &rows {
            let no: i64 = row.try_get(0)?;
            let attempts: i32 = row.try_get(4)?;
            taken.push((
                no,
                Taken {
                    item: QueueItem {
                        queue: queue.to_owned(),
                        id: row.try_get(1)?,
                        payload: row.try_get(2)?,
                        token: row.try_get(3)?,
                    },
                    attempt: u32::try_from(attempts).unwrap_or(0),
                },
            ));
        }
        // RETURNING keeps no order.
        taken.sort_unstable_by_key(|(no, _)| *no);
        Ok(taken.into_iter().map(|(_, taken)| taken).collect())
    }

    /// The final replies of `ids`, in order.
    pub(super) async fn replies(&self, ids: Vec<i64>) -> Result<Vec<Option<Vec<u8>>>, Failure> {
        let rows = sqlx::query(self.statements.replies.clone())
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
        let mut found: FxHashMap<i64, Vec<u8>> = FxHashMap::default();
        for row in &rows {
            found.insert(row.try_get(0)?, row.try_get(1)?);
        }
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    /// The stored states of `addresses`, in order.
    pub(super) async fn entity_states(
        &self,
        addresses: Vec<(String, String)>,
    ) -> Result<Vec<Option<Vec<u8>>>, Failure> {
        // A NUL cannot be stored, nor sent as a parameter: no state for such an address.
        let asked: Vec<&(String, String)> = addresses
            .iter()
            .filter(|(t, i)| !t.contains('\0') && !i.contains('\0'))
            .collect();
        let types: Vec<&str> = asked.iter().map(|(t, _)| t.as_str()).collect();
        let ids: Vec<&str> = asked.iter().map(|(_, i)| i.as_str()).collect();
        let rows = sqlx::query(self.statements.entity_states.clone())
            .bind(&types)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
        let mut found: FxHashMap<(String, String), Vec<u8>> = FxHashMap::default();
        for row in &rows {
            found.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
        }
        Ok(addresses.iter().map(|a| found.get(a).cloned()).collect())
    }

    /// A page of the executions passing `filter` after `after`, newest first.
    pub(super) async fn list(
        &self,
        filter: &Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, Failure> {
        let built = listing::list(
            Dialect::Postgres,
            &self.statements.prefix,
            filter,
            after,
            limit,
        );
        let rows = bound(&built).fetch_all(&self.pool).await?;
        let mut listed = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            let status: String = row.try_get(3)?;
            listed.push(Listed {
                status: stored_status(&id, &status)?,
                workflow: row.try_get(1)?,
                parent: row.try_get(2)?,
                result: row.try_get(4)?,
                interrupted: row.try_get(5)?,
                created_ms: stored_ms(&id, row.try_get(6)?)?,
                updated_ms: stored_ms(&id, row.try_get(7)?)?,
                no: stored_ms(&id, row.try_get(8)?)?,
                id,
            });
        }
        Ok(Page::of(listed, limit))
    }

    /// How many executions pass `filter`, up to `cap`.
    pub(super) async fn count(&self, filter: &Filter, cap: u64) -> Result<u64, Failure> {
        let built = listing::count(Dialect::Postgres, &self.statements.prefix, filter, cap);
        let row = bound(&built).fetch_one(&self.pool).await?;
        let counted: i64 = row.try_get(0)?;
        Ok(u64::try_from(counted).unwrap_or(0))
    }

    /// The history of execution `id`, read in one snapshot of the database.
    pub(super) async fn history(&self, id: &str) -> Result<Option<History>, Failure> {
        let statements = &self.statements;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let Some(row) = sqlx::query(statements.history_execution.clone())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.commit().await?;
            return Ok(None);
        };
        let no: i64 = row.try_get(0)?;
        let status: String = row.try_get(4)?;
        let execution = Execution {
            workflow: row.try_get(1)?,
            payload: row.try_get(2)?,
            parent: row.try_get(3)?,
            status: stored_status(id, &status)?,
            result: row.try_get(5)?,
            interrupted: row.try_get(6)?,
        };
        let created_ms = stored_ms(id, row.try_get(7)?)?;
        let updated_ms = stored_ms(id, row.try_get(8)?)?;
        let time = |at: Option<i64>| at.map(|at| stored_ms(id, at)).transpose();
        let mut steps = Vec::new();
        for row in sqlx::query(statements.history_steps.clone())
            .bind(no)
            .fetch_all(&mut *tx)
            .await?
        {
            steps.push(Step {
                key: row.try_get(0)?,
                seq: stored_seq(id, row.try_get(1)?)?,
                value: row.try_get(2)?,
                at_ms: time(row.try_get(3)?)?,
            });
        }
        let mut deferreds = Vec::new();
        for row in sqlx::query(statements.history_deferreds.clone())
            .bind(no)
            .fetch_all(&mut *tx)
            .await?
        {
            deferreds.push(DeferredAt {
                name: row.try_get(0)?,
                value: row.try_get(1)?,
                at_ms: time(row.try_get(2)?)?,
            });
        }
        let mut timers = Vec::new();
        for row in sqlx::query(statements.history_timers.clone())
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
        {
            timers.push(Timer {
                execution_id: id.to_owned(),
                name: row.try_get(0)?,
                due_ms: stored_due(row.try_get(1)?)?,
            });
        }
        tx.commit().await?;
        Ok(Some(History {
            id: id.to_owned(),
            execution,
            created_ms,
            updated_ms,
            steps,
            deferreds,
            timers,
        }))
    }

    /// The pool, for tests that look at a connection's settings.
    #[cfg(test)]
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }
}

/// `built`'s statement with its parameters bound.
fn bound(
    built: &listing::Built,
) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut query = sqlx::query(AssertSqlSafe(built.sql.clone()));
    for param in &built.params {
        query = match param {
            Param::Text(text) => query.bind(text.as_str()),
            Param::Int(int) => query.bind(*int),
            Param::Bytes(bytes) => query.bind(bytes.as_slice()),
        };
    }
    query
}
