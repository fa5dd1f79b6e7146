//! The in-process store: the journal of every execution in hash maps behind one lock.
//!
//! Nothing survives the process; it backs `Engine.memory()` and the tests. It is the immediate
//! store of the contract: a write is applied when called, and every answer is ready at once.

use std::{
    collections::{hash_map, BTreeMap, BTreeSet},
    future::ready,
    ops::Bound,
    sync::{Mutex, MutexGuard, PoisonError},
};

use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    listing::MAX_LIMIT,
    messages::CLAIM_MS,
    queue::{claim_stands, QueueItem, Taken},
    Answer, Cursor, Deferred, DeferredAt, Entry, Execution, Filter, History, Listed, Op, OpResult,
    Page, Pending, Refusals, Request, Shards, Snapshot, Status, Step, Store, StoreError, Timer,
    Unprocessed,
};
use crate::clock::now_ms;

struct Journal {
    execution: Execution,
    entries: Vec<Entry>,
    keys: FxHashSet<String>,
    deferreds: Vec<Deferred>,
    deferred_names: FxHashSet<String>,
    /// The order the store took the execution in (as a SQL store's `no`).
    no: u64,
    created_ms: u64,
    updated_ms: u64,
    /// When each entry, and each deferred result, was stored: beside them, not in them, so
    /// that a snapshot clones what a run reads and nothing more.
    entry_times: Vec<u64>,
    deferred_times: Vec<u64>,
}

impl Journal {
    fn listed(&self, id: &str) -> Listed {
        let execution = &self.execution;
        Listed {
            id: id.to_owned(),
            workflow: execution.workflow.clone(),
            parent: execution.parent.clone(),
            status: execution.status,
            result: execution.result.clone(),
            interrupted: execution.interrupted,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            no: self.no,
        }
    }

    fn passes(&self, filter: &Filter) -> bool {
        let execution = &self.execution;
        filter.matches(
            &execution.workflow,
            execution.status,
            execution.result.as_deref(),
            self.created_ms,
        )
    }
}

/// A persisted request and what became of it.
struct Message {
    request: Request,
    /// When it was last claimed, if its claim stands.
    claimed_ms: Option<u64>,
    /// Its final reply.
    reply: Option<Vec<u8>>,
}

/// The entity messages: requests by id and by key, the unprocessed ones in save order, and the
/// entity instances' durable states.
#[derive(Default)]
struct Messages {
    by_id: FxHashMap<i64, Message>,
    by_key: FxHashMap<String, i64>,
    /// Unprocessed requests, by id (snowflakes: save order per sender).
    unprocessed: BTreeSet<i64>,
    states: FxHashMap<(String, String), Vec<u8>>,
}

impl Messages {
    fn save(&mut self, request: Request, claimed_ms: Option<u64>) -> OpResult {
        let found = self
            .by_id
            .get(&request.id)
            .map(|m| m.request.id)
            .or_else(|| {
                request
                    .key
                    .as_ref()
                    .and_then(|key| self.by_key.get(key).copied())
            });
        if let Some(original) = found {
            let reply = self.by_id.get(&original).and_then(|m| m.reply.clone());
            return OpResult::Duplicate { original, reply };
        }
        if let Some(key) = &request.key {
            self.by_key.insert(key.clone(), request.id);
        }
        self.unprocessed.insert(request.id);
        self.by_id.insert(
            request.id,
            Message {
                request,
                claimed_ms,
                reply: None,
            },
        );
        OpResult::Created
    }

    fn reply(&mut self, request_id: i64, value: Vec<u8>) -> OpResult {
        let Some(message) = self.by_id.get_mut(&request_id) else {
            return OpResult::Done(false);
        };
        if message.reply.is_some() {
            return OpResult::Done(false);
        }
        message.reply = Some(value);
        message.claimed_ms = None;
        self.unprocessed.remove(&request_id);
        OpResult::Done(true)
    }

    fn clear_replies(&mut self, request_id: i64) -> OpResult {
        let Some(message) = self.by_id.get_mut(&request_id) else {
            return OpResult::Done(false);
        };
        message.reply = None;
        message.claimed_ms = None;
        self.unprocessed.insert(request_id);
        OpResult::Done(true)
    }

    fn unclaim(&mut self, request_id: i64) -> OpResult {
        match self.by_id.get_mut(&request_id) {
            Some(message) if message.reply.is_none() => {
                message.claimed_ms = None;
                OpResult::Done(true)
            }
            _ => OpResult::Done(false),
        }
    }

    fn unprocessed(&mut self, shards: Shards<'_>, limit: usize, now_ms: u64) -> Unprocessed {
        let mut found = Unprocessed::default();
        for id in &self.unprocessed {
            let Some(message) = self.by_id.get_mut(id) else {
                continue;
            };
            let request = &message.request;
            if !shards.contains(&request.shard) {
                continue;
            }
            if let Some(at) = request.deliver_at.filter(|at| *at > now_ms) {
                found.next_deliver_at = Some(found.next_deliver_at.map_or(at, |n| n.min(at)));
                continue;
            }
            let claimed = message
                .claimed_ms
                .is_some_and(|at| now_ms.saturating_sub(at) < CLAIM_MS);
            if claimed || found.requests.len() >= limit {
                continue;
            }
            message.claimed_ms = Some(now_ms);
            found.requests.push(request.clone());
        }
        found
    }

    fn reset_claims(&mut self, shards: Shards<'_>) -> bool {
        let mut cleared = false;
        for id in &self.unprocessed {
            if let Some(message) = self.by_id.get_mut(id) {
                if shards.contains(&message.request.shard) && message.claimed_ms.take().is_some() {
                    cleared = true;
                }
            }
        }
        cleared
    }

    fn claim(&mut self, request_id: i64, claimed_ms: u64) -> bool {
        match self.by_id.get_mut(&request_id) {
            Some(message)
                if message.reply.is_none()
                    && message
                        .claimed_ms
                        .is_none_or(|at| claimed_ms.saturating_sub(at) >= CLAIM_MS) =>
            {
                message.claimed_ms = Some(claimed_ms);
                true
            }
            _ => false,
        }
    }
}

/// A durable queue item and where it stands.
struct Stored {
    item: QueueItem,
    /// Its place in offer order (the queue's key in [`Queues::pending`]).
    no: u64,
    claimed_ms: Option<u64>,
    attempts: u32,
    done: bool,
}

/// The durable queues: items by `(queue, id)`, and each queue's pending items in offer order.
#[derive(Default)]
struct Queues {
    items: FxHashMap<(String, String), Stored>,
    pending: FxHashMap<String, BTreeMap<u64, String>>,
    next_no: u64,
}

impl Queues {
    fn offer(&mut self, item: QueueItem) -> bool {
        let key = (item.queue.clone(), item.id.clone());
        let hash_map::Entry::Vacant(place) = self.items.entry(key) else {
            return false;
        };
        self.next_no += 1;
        self.pending
            .entry(item.queue.clone())
            .or_default()
            .insert(self.next_no, item.id.clone());
        place.insert(Stored {
            item,
            no: self.next_no,
            claimed_ms: None,
            attempts: 0,
            done: false,
        });
        true
    }

    fn claim(&mut self, queue: &str, id: &str, claimed_ms: u64, claim_ms: u64) -> bool {
        match self.items.get_mut(&(queue.to_owned(), id.to_owned())) {
            Some(item) if !item.done && !claim_stands(item.claimed_ms, claimed_ms, claim_ms) => {
                item.claimed_ms = Some(claimed_ms);
                item.attempts = item.attempts.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    fn renew(&mut self, queue: &str, id: &str, held_ms: u64, renewed_ms: u64) -> bool {
        match self.items.get_mut(&(queue.to_owned(), id.to_owned())) {
            Some(item) if !item.done && item.claimed_ms == Some(held_ms) => {
                item.claimed_ms = Some(renewed_ms);
                true
            }
            _ => false,
        }
    }

    fn done(&mut self, queue: &str, id: &str) -> bool {
        match self.items.get_mut(&(queue.to_owned(), id.to_owned())) {
            Some(item) if !item.done => {
                item.done = true;
                item.claimed_ms = None;
                if let Some(pending) = self.pending.get_mut(queue) {
                    pending.remove(&item.no);
                }
                true
            }
            _ => false,
        }
    }

    fn take(&mut self, queue: &str, limit: usize, now_ms: u64, claim_ms: u64) -> Vec<Taken> {
        let Some(pending) = self.pending.get(queue) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        for id in pending.values() {
            if taken.len() >= limit {
                break;
            }
            let Some(item) = self.items.get_mut(&(queue.to_owned(), id.clone())) else {
                continue;
            };
            if claim_stands(item.claimed_ms, now_ms, claim_ms) {
                continue;
            }
            item.claimed_ms = Some(now_ms);
            item.attempts = item.attempts.saturating_add(1);
            taken.push(Taken {
                item: item.item.clone(),
                attempt: item.attempts,
            });
        }
        taken
    }
}

#[derive(Default)]
struct Inner {
    journals: FxHashMap<String, Journal>,
    timers: FxHashMap<(String, String), u64>,
    /// The same timers as `(due_ms, execution_id, name)`, in order: ranges of due instants,
    /// and the timers in order, without a sort.
    by_due: BTreeSet<(u64, String, String)>,
    messages: Messages,
    queues: Queues,
    /// The number the next execution gets.
    next_no: u64,
}

impl Inner {
    /// Applies one op (already checked), as [`Op`] documents it.
    #[allow(clippy::too_many_lines)] // one arm per op, each short
    fn apply(&mut self, op: Op, now: u64) -> OpResult {
        match op {
            Op::Start {
                id,
                workflow,
                payload,
                parent,
            } => match self.journals.entry(id) {
                hash_map::Entry::Occupied(found) => {
                    OpResult::Existing(found.get().execution.clone())
                }
                hash_map::Entry::Vacant(place) => {
                    self.next_no += 1;
                    place.insert(Journal {
                        execution: Execution {
                            workflow,
                            payload,
                            parent,
                            status: Status::Running,
                            result: None,
                            interrupted: false,
                        },
                        entries: Vec::new(),
                        keys: FxHashSet::default(),
                        deferreds: Vec::new(),
                        deferred_names: FxHashSet::default(),
                        no: self.next_no,
                        created_ms: now,
                        updated_ms: now,
                        entry_times: Vec::new(),
                        deferred_times: Vec::new(),
                    });
                    OpResult::Created
                }
            },
            Op::Append { id, entry } => {
                let Some(journal) = self.journals.get_mut(&id) else {
                    return OpResult::Done(false);
                };
                let fresh = journal.keys.insert(entry.key.clone());
                if fresh {
                    journal.entries.push(entry);
                    journal.entry_times.push(now);
                }
                OpResult::Done(fresh)
            }
            Op::Deferred { id, name, value } => {
                let Some(journal) = self.journals.get_mut(&id) else {
                    return OpResult::UnknownExecution;
                };
                if !journal.deferred_names.insert(name.clone()) {
                    return OpResult::Done(false);
                }
                journal.deferreds.push(Deferred { name, value });
                journal.deferred_times.push(now);
                OpResult::Done(true)
            }
            Op::Status { id, status, result } => {
                let Some(journal) = self.journals.get_mut(&id) else {
                    return OpResult::Done(false);
                };
                let execution = &mut journal.execution;
                if execution.status == Status::Complete {
                    return OpResult::Done(false);
                }
                execution.status = status;
                execution.result = result;
                journal.updated_ms = now;
                if status == Status::Complete {
                    self.drop_timers(&id);
                }
                OpResult::Done(true)
            }
            Op::Suspend {
                id,
                cause,
                deferreds,
            } => {
                let Some(journal) = self.journals.get_mut(&id) else {
                    return OpResult::Done(false);
                };
                if journal.execution.status == Status::Complete
                    || journal.deferreds.len() > deferreds as usize
                {
                    return OpResult::Done(false);
                }
                journal.execution.status = Status::Suspended;
                journal.execution.result = cause;
                journal.updated_ms = now;
                OpResult::Done(true)
            }
            Op::Interrupt { id } => {
                let Some(journal) = self.journals.get_mut(&id) else {
                    return OpResult::UnknownExecution;
                };
                if journal.execution.status == Status::Complete {
                    return OpResult::Done(false);
                }
                journal.execution.interrupted = true;
                journal.updated_ms = now;
                OpResult::Done(true)
            }
            Op::Timer(timer) => {
                if !self.journals.contains_key(&timer.execution_id) {
                    return OpResult::Done(false);
                }
                let key = (timer.execution_id, timer.name);
                if self.timers.contains_key(&key) {
                    return OpResult::Done(false);
                }
                self.by_due
                    .insert((timer.due_ms, key.0.clone(), key.1.clone()));
                self.timers.insert(key, timer.due_ms);
                OpResult::Done(true)
            }
            Op::Untimer { execution_id, name } => {
                let key = (execution_id, name);
                let Some(due) = self.timers.remove(&key) else {
                    return OpResult::Done(false);
                };
                self.by_due.remove(&(due, key.0, key.1));
                OpResult::Done(true)
            }
            Op::Request {
                request,
                claimed_ms,
            } => self.messages.save(request, claimed_ms),
            Op::Reply {
                request_id, value, ..
            } => self.messages.reply(request_id, value),
            Op::EntityState {
                entity_type,
                entity_id,
                value,
            } => {
                self.messages.states.insert((entity_type, entity_id), value);
                OpResult::Done(true)
            }
            Op::ClearReplies { request_id } => self.messages.clear_replies(request_id),
            Op::Unclaim { request_id, .. } => self.messages.unclaim(request_id),
            Op::Claim {
                request_id,
                claimed_ms,
            } => OpResult::Done(self.messages.claim(request_id, claimed_ms)),
            Op::ResetClaims { shards } => {
                let shards = match &shards {
                    Some(only) => Shards::Only(only),
                    None => Shards::All,
                };
                OpResult::Done(self.messages.reset_claims(shards))
            }
            // One process: it owns every shard.
            Op::Offer(item) => OpResult::Done(self.queues.offer(item)),
            Op::QueueClaim {
                queue,
                id,
                claimed_ms,
                claim_ms,
            } => OpResult::Done(self.queues.claim(&queue, &id, claimed_ms, claim_ms)),
            Op::QueueRenew {
                queue,
                id,
                held_ms,
                renewed_ms,
            } => OpResult::Done(self.queues.renew(&queue, &id, held_ms, renewed_ms)),
            Op::QueueDone { queue, id } => OpResult::Done(self.queues.done(&queue, &id)),
            Op::Owned { op, .. } => self.apply(op.into_inner(), now),
        }
    }

    /// Forgets the timers of execution `id` (it completed).
    fn drop_timers(&mut self, id: &str) {
        let Inner { timers, by_due, .. } = self;
        timers.retain(|(execution_id, name), due| {
            let keep = execution_id != id;
            if !keep {
                by_due.remove(&(*due, execution_id.clone(), name.clone()));
            }
            keep
        });
    }

    fn snapshot(&self, id: &str) -> Option<Snapshot> {
        let journal = self.journals.get(id)?;
        Some(Snapshot {
            execution: journal.execution.clone(),
            entries: journal.entries.clone(),
            deferreds: journal.deferreds.clone(),
        })
    }

    /// See [`Store::list`]: every execution is looked at, which a store in memory can afford.
    fn list(&self, filter: &Filter, after: Option<Cursor>, limit: usize) -> Page {
        let limit = limit.min(MAX_LIMIT);
        if filter.matches_nothing() || limit == 0 {
            return Page::default();
        }
        let mut found: Vec<(Cursor, &String, &Journal)> = self
            .journals
            .iter()
            .filter(|(_, journal)| journal.passes(filter))
            .map(|(id, journal)| {
                let at = Cursor {
                    created_ms: journal.created_ms,
                    no: journal.no,
                };
                (at, id, journal)
            })
            .filter(|(at, _, _)| after.is_none_or(|after| *at < after))
            .collect();
        // Newest first: the largest positions, of which only `limit + 1` are sorted.
        let keep = (limit + 1).min(found.len());
        if keep < found.len() {
            found.select_nth_unstable_by_key(keep, |(at, _, _)| std::cmp::Reverse(*at));
            found.truncate(keep);
        }
        found.sort_unstable_by_key(|(at, _, _)| std::cmp::Reverse(*at));
        let rows = found
            .into_iter()
            .map(|(_, id, journal)| journal.listed(id))
            .collect();
        Page::of(rows, limit)
    }

    fn count(&self, filter: &Filter, cap: u64) -> u64 {
        if filter.matches_nothing() {
            return 0;
        }
        let passing = self.journals.values().filter(|j| j.passes(filter));
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        u64::try_from(passing.take(cap).count()).unwrap_or(u64::MAX)
    }

    fn history(&self, id: &str) -> Option<History> {
        let journal = self.journals.get(id)?;
        let steps = journal
            .entries
            .iter()
            .zip(&journal.entry_times)
            .map(|(entry, at)| Step {
                key: entry.key.clone(),
                seq: entry.seq,
                value: entry.value.clone(),
                at_ms: Some(*at),
            })
            .collect();
        let deferreds = journal
            .deferreds
            .iter()
            .zip(&journal.deferred_times)
            .map(|(deferred, at)| DeferredAt {
                name: deferred.name.clone(),
                value: deferred.value.clone(),
                at_ms: Some(*at),
            })
            .collect();
        let mut timers: Vec<Timer> = self
            .timers
            .iter()
            .filter(|((execution_id, _), _)| execution_id == id)
            .map(|((execution_id, name), due)| Timer {
                execution_id: execution_id.clone(),
                name: name.clone(),
                due_ms: *due,
            })
            .collect();
        timers.sort_unstable_by(|a, b| (a.due_ms, &a.name).cmp(&(b.due_ms, &b.name)));
        Some(History {
            id: id.to_owned(),
            execution: journal.execution.clone(),
            created_ms: journal.created_ms,
            updated_ms: journal.updated_ms,
            steps,
            deferreds,
            timers,
        })
    }
}

/// Executions, journals, deferred results and timers, in memory.
///
/// Every write follows "first write wins": a step result or deferred result, once stored, is
/// never replaced, so a late duplicate cannot change what a replay sees.
///
/// ```
/// use _native::store::{memory::MemoryStore, Entry, Op, OpResult, Status};
///
/// let store = MemoryStore::default();
/// let start = Op::Start { id: "e1".into(), workflow: "Greet".into(), payload: b"{}".to_vec(), parent: None };
/// let step = Entry { key: "Hello/1".into(), seq: 0, value: b"1".to_vec() };
/// let done = Op::Status { id: "e1".into(), status: Status::Complete, result: Some(b"2".to_vec()) };
/// let results = store.apply(vec![start, Op::Append { id: "e1".into(), entry: step }, done]);
/// assert_eq!(results, [OpResult::Created, OpResult::Done(true), OpResult::Done(true)]);
/// assert_eq!(store.execution("e1").unwrap().status, Status::Complete);
/// ```
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps, still consistent for our writes.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `ops` in order, at once, and answers each (see [`Store::write`]).
    pub fn apply(&self, mut ops: Vec<Op>) -> Vec<OpResult> {
        let refusals = Refusals::take(&mut ops);
        let now = now_ms();
        let mut inner = self.lock();
        let results = ops.into_iter().map(|op| inner.apply(op, now)).collect();
        drop(inner);
        refusals.answer(results)
    }

    /// The execution `id`, if the store holds it.
    pub fn execution(&self, id: &str) -> Option<Execution> {
        self.lock().journals.get(id).map(|j| j.execution.clone())
    }

    /// The execution with its whole journal and deferred results, in one read.
    pub fn snapshot(&self, id: &str) -> Option<Snapshot> {
        self.lock().snapshot(id)
    }

    /// Every stored timer, earliest first (then by execution id and name).
    pub fn timers(&self) -> Vec<Timer> {
        self.lock().by_due.iter().map(timer).collect()
    }

    /// See [`Store::timers_between`].
    pub fn timers_between(&self, after_ms: i64, until_ms: i64) -> (Vec<Timer>, Option<u64>) {
        let inner = self.lock();
        // Due instants are unsigned: the bounds as the first due instant in and the first out.
        // (`i64::MAX + 1` fits in a u64.)
        let first_in = u64::try_from(after_ms).map_or(0, |after| after + 1);
        let first_out = u64::try_from(until_ms).map_or(0, |until| until + 1);
        let from = |due: u64| Bound::Included((due, String::new(), String::new()));
        let timers = if first_in < first_out {
            inner
                .by_due
                .range((
                    from(first_in),
                    Bound::Excluded((first_out, String::new(), String::new())),
                ))
                .map(timer)
                .collect()
        } else {
            Vec::new()
        };
        let next = inner
            .by_due
            .range((from(first_out), Bound::Unbounded))
            .next()
            .map(|(due, _, _)| *due);
        (timers, next)
    }

    /// Ids of the executions with status `status`, in no particular order.
    pub fn with_status(&self, status: Status) -> Vec<String> {
        self.lock()
            .journals
            .iter()
            .filter(|(_, j)| j.execution.status == status)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// How many executions the store holds.
    pub fn len(&self) -> usize {
        self.lock().journals.len()
    }

    /// Whether the store holds no execution.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store for MemoryStore {
    fn immediate(&self) -> bool {
        true
    }

    fn write(&self, ops: Vec<Op>) -> Result<Answer<'static, Vec<OpResult>>, StoreError> {
        Ok(Box::pin(ready(Ok(self.apply(ops)))))
    }

    fn write_now(&self, ops: Vec<Op>) -> Option<Vec<OpResult>> {
        Some(self.apply(ops))
    }

    fn snapshots<'a>(&'a self, ids: &'a [String]) -> Answer<'a, Vec<Option<Snapshot>>> {
        let inner = self.lock();
        let found = ids.iter().map(|id| inner.snapshot(id)).collect();
        Box::pin(ready(Ok(found)))
    }

    fn executions<'a>(&'a self, ids: &'a [String]) -> Answer<'a, Vec<Option<Execution>>> {
        let inner = self.lock();
        let found = ids
            .iter()
            .map(|id| inner.journals.get(id).map(|j| j.execution.clone()))
            .collect();
        Box::pin(ready(Ok(found)))
    }

    fn timers_between(
        &self,
        after_ms: i64,
        until_ms: i64,
    ) -> Answer<'_, (Vec<Timer>, Option<u64>)> {
        Box::pin(ready(Ok(MemoryStore::timers_between(
            self, after_ms, until_ms,
        ))))
    }

    fn with_status(&self, status: Status) -> Answer<'_, Vec<String>> {
        Box::pin(ready(Ok(MemoryStore::with_status(self, status))))
    }

    fn list<'a>(
        &'a self,
        filter: &'a Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Answer<'a, Page> {
        Box::pin(ready(Ok(self.lock().list(filter, after, limit))))
    }

    fn count<'a>(&'a self, filter: &'a Filter, cap: u64) -> Answer<'a, u64> {
        Box::pin(ready(Ok(self.lock().count(filter, cap))))
    }

    fn history<'a>(&'a self, id: &'a str) -> Answer<'a, Option<History>> {
        Box::pin(ready(Ok(self.lock().history(id))))
    }

    fn unprocessed<'a>(
        &'a self,
        shards: Shards<'a>,
        limit: usize,
        now_ms: u64,
    ) -> Answer<'a, Unprocessed> {
        let found = self.lock().messages.unprocessed(shards, limit, now_ms);
        Box::pin(ready(Ok(found)))
    }

    fn take<'a>(
        &'a self,
        queue: &'a str,
        limit: usize,
        now_ms: u64,
        claim_ms: u64,
    ) -> Answer<'a, Vec<Taken>> {
        let taken = self.lock().queues.take(queue, limit, now_ms, claim_ms);
        Box::pin(ready(Ok(taken)))
    }

    fn replies<'a>(&'a self, ids: &'a [i64]) -> Answer<'a, Vec<Option<Vec<u8>>>> {
        let inner = self.lock();
        let found = ids
            .iter()
            .map(|id| inner.messages.by_id.get(id).and_then(|m| m.reply.clone()))
            .collect();
        Box::pin(ready(Ok(found)))
    }

    fn entity_states<'a>(
        &'a self,
        addresses: &'a [(String, String)],
    ) -> Answer<'a, Vec<Option<Vec<u8>>>> {
        let inner = self.lock();
        let found = addresses
            .iter()
            .map(|address| inner.messages.states.get(address).cloned())
            .collect();
        Box::pin(ready(Ok(found)))
    }

    fn lost(&self) -> Pending<'_, Option<String>> {
        Box::pin(ready(None))
    }

    fn close(&self) -> Pending<'_, ()> {
        // Nothing to release: the records stay for the next engine on this store.
        Box::pin(ready(()))
    }
}

/// A timer as [`Inner::by_due`] holds it.
fn timer((due_ms, execution_id, name): &(u64, String, String)) -> Timer {
    Timer {
        execution_id: execution_id.clone(),
        name: name.clone(),
        due_ms: *due_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, seq: u32, value: &[u8]) -> Entry {
        Entry {
            key: key.into(),
            seq,
            value: value.to_vec(),
        }
    }

    fn start(id: &str, workflow: &str, payload: &[u8], parent: Option<&str>) -> Op {
        Op::Start {
            id: id.into(),
            workflow: workflow.into(),
            payload: payload.to_vec(),
            parent: parent.map(Into::into),
        }
    }

    fn append(id: &str, entry: Entry) -> Op {
        Op::Append {
            id: id.into(),
            entry,
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

    fn untimer(id: &str, name: &str) -> Op {
        Op::Untimer {
            execution_id: id.into(),
            name: name.into(),
        }
    }

    fn one(store: &MemoryStore, op: Op) -> OpResult {
        store.apply(vec![op]).remove(0)
    }

    #[test]
    fn start_creates_once_and_returns_the_existing_execution() {
        let store = MemoryStore::default();
        assert_eq!(one(&store, start("e", "W", b"1", None)), OpResult::Created);
        let OpResult::Existing(existing) = one(&store, start("e", "Other", b"2", Some("p"))) else {
            panic!("a second start returns the execution");
        };
        assert_eq!(existing.workflow, "W");
        assert_eq!(existing.payload, b"1");
        assert_eq!(existing.parent, None);
        assert_eq!(existing.status, Status::Running);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn first_step_result_wins_and_snapshot_keeps_write_order() {
        let store = MemoryStore::default();
        let results = store.apply(vec![
            start("e", "W", b"", None),
            append("e", entry("b/1", 1, b"B")),
            append("e", entry("a/1", 0, b"A")),
            append("e", entry("b/1", 1, b"late")),
            append("missing", entry("a/1", 0, b"A")),
        ]);
        assert_eq!(
            results[1..],
            [
                OpResult::Done(true),
                OpResult::Done(true),
                OpResult::Done(false),
                OpResult::Done(false)
            ]
        );
        let snapshot = store.snapshot("e").unwrap();
        assert_eq!(
            snapshot.entries,
            vec![entry("b/1", 1, b"B"), entry("a/1", 0, b"A")]
        );
        assert!(store.snapshot("missing").is_none());
    }

    #[test]
    fn first_deferred_result_wins() {
        let store = MemoryStore::default();
        let results = store.apply(vec![
            start("e", "W", b"", None),
            deferred("e", "d", b"1"),
            deferred("e", "d", b"2"),
            deferred("x", "d", b""),
        ]);
        assert_eq!(
            results[1..],
            [
                OpResult::Done(true),
                OpResult::Done(false),
                OpResult::UnknownExecution
            ]
        );
        assert_eq!(
            store.snapshot("e").unwrap().deferreds,
            vec![Deferred {
                name: "d".into(),
                value: b"1".to_vec()
            }]
        );
    }

    #[test]
    fn a_complete_result_is_final_and_drops_its_timers() {
        let store = MemoryStore::default();
        let results = store.apply(vec![
            start("e", "W", b"", None),
            timer("e", "DurableClock/t", 5),
            timer("e", "DurableClock/t", 5),
            status("e", Status::Suspended, None),
        ]);
        assert_eq!(
            results[1..],
            [
                OpResult::Done(true),
                OpResult::Done(false),
                OpResult::Done(true)
            ]
        );
        assert_eq!(store.with_status(Status::Suspended), vec!["e".to_owned()]);
        let results = store.apply(vec![
            status("e", Status::Complete, Some(b"r")),
            status("e", Status::Running, None),
            Op::Interrupt { id: "e".into() },
            status("x", Status::Running, None),
        ]);
        assert_eq!(
            results,
            [
                OpResult::Done(true),
                OpResult::Done(false),
                OpResult::Done(false),
                OpResult::Done(false)
            ]
        );
        assert!(store.timers().is_empty());
        assert_eq!(store.execution("e").unwrap().result, Some(b"r".to_vec()));
    }

    #[test]
    fn timers_come_out_earliest_first_and_are_removed_once() {
        let store = MemoryStore::default();
        let mut ops = vec![start("a", "W", b"", None), start("b", "W", b"", None)];
        for (id, due) in [("a", 30), ("b", 10), ("a", 20)] {
            ops.push(timer(id, &format!("t{due}"), due));
        }
        ops.push(timer("unknown", "t", 1));
        let results = store.apply(ops);
        assert_eq!(results.last(), Some(&OpResult::Done(false)));
        let dues: Vec<u64> = store.timers().iter().map(|t| t.due_ms).collect();
        assert_eq!(dues, vec![10, 20, 30]);
        assert_eq!(
            store.apply(vec![untimer("b", "t10"), untimer("b", "t10")]),
            [OpResult::Done(true), OpResult::Done(false)]
        );
        assert_eq!(store.timers().len(), 2);
    }

    #[test]
    fn interrupt_sets_the_flag_until_completion() {
        let store = MemoryStore::default();
        one(&store, start("e", "W", b"", None));
        assert_eq!(
            one(&store, Op::Interrupt { id: "e".into() }),
            OpResult::Done(true)
        );
        assert!(store.execution("e").unwrap().interrupted);
        assert_eq!(
            one(&store, Op::Interrupt { id: "nope".into() }),
            OpResult::UnknownExecution
        );
    }

    #[test]
    fn an_op_no_store_could_keep_is_refused_alone() {
        let store = MemoryStore::default();
        let results = store.apply(vec![
            start("e", "W", b"", None),
            deferred("e", "bad\0name", b""),
            deferred("e", "good", b""),
        ]);
        assert_eq!(results[0], OpResult::Created);
        assert!(matches!(&results[1], OpResult::Refused(why) if why.starts_with("ops[1]: name")));
        assert_eq!(results[2], OpResult::Done(true));
        assert_eq!(store.snapshot("e").unwrap().deferreds.len(), 1);
    }

    #[test]
    fn every_answer_is_ready_at_once() {
        use std::task::{Context, Poll, Waker};

        let store = MemoryStore::default();
        let mut context = Context::from_waker(Waker::noop());
        let mut written = Store::write(&store, vec![start("e", "W", b"", None)]).unwrap();
        assert_eq!(
            written.as_mut().poll(&mut context),
            Poll::Ready(Ok(vec![OpResult::Created]))
        );
        let ids = ["e".to_owned(), "x".to_owned()];
        let Poll::Ready(Ok(found)) = store.snapshots(&ids).as_mut().poll(&mut context) else {
            panic!("not ready");
        };
        assert_eq!(found[0].as_ref().unwrap().execution.workflow, "W");
        assert_eq!(found[1], None);
        assert!(store.immediate());
        assert_eq!(
            store.write_now(vec![Op::Interrupt { id: "e".into() }]),
            Some(vec![OpResult::Done(true)])
        );
        assert_eq!(store.lost().as_mut().poll(&mut context), Poll::Ready(None));
    }

    #[test]
    fn status_names_round_trip() {
        for status in [Status::Running, Status::Suspended, Status::Complete] {
            assert_eq!(Status::parse(status.as_str()), Ok(status));
        }
        assert_eq!(
            Status::parse("done"),
            Err(StoreError::UnknownStatus("done".into()))
        );
    }

    #[test]
    fn timers_between_takes_a_range_of_due_instants() {
        let store = MemoryStore::default();
        let mut ops = vec![start("a", "W", b"", None), start("b", "W", b"", None)];
        for (id, name, due) in [
            ("b", "t", 20),
            ("a", "t", 10),
            ("a", "u", 20),
            ("a", "v", 30),
        ] {
            ops.push(timer(id, name, due));
        }
        store.apply(ops);
        let between = |after, until| {
            let (timers, next) = store.timers_between(after, until);
            let timers: Vec<(String, String, u64)> = timers
                .into_iter()
                .map(|t| (t.execution_id, t.name, t.due_ms))
                .collect();
            (timers, next)
        };
        let t = |id: &str, name: &str, due| (id.to_owned(), name.to_owned(), due);
        // After is exclusive, until inclusive; ties by execution id, then name.
        assert_eq!(
            between(10, 20),
            (vec![t("a", "u", 20), t("b", "t", 20)], Some(30))
        );
        assert_eq!(between(-1, 10), (vec![t("a", "t", 10)], Some(20)));
        assert_eq!(between(-1, 9), (vec![], Some(10)));
        assert_eq!(between(30, 100), (vec![], None));
        assert_eq!(between(29, i64::MAX), (vec![t("a", "v", 30)], None));
        assert_eq!(between(20, 10), (vec![], Some(20)));
        assert_eq!(between(i64::MIN, -5), (vec![], Some(10)));
        assert_eq!(store.timers().len(), 4);
        // Timers that go, go from the ranges too.
        store.apply(vec![untimer("a", "t"), status("b", Status::Complete, None)]);
        assert_eq!(
            between(-1, 100),
            (vec![t("a", "u", 20), t("a", "v", 30)], None)
        );
    }
}
