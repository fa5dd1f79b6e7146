//! The writes of the store contract: the ops, what each answers, and the check every store
//! makes before it takes one.

use super::{messages::Request, queue::QueueItem, Entry, Execution, Status, Timer};

/// One write. A store applies the ops of a [`super::Store::write`] in order, together with
/// every write queued beside it, and answers each with an [`OpResult`].
///
/// Every op is idempotent: a write whose outcome was lost (the commit's answer never came) can
/// be applied again without harm, which is what lets a store retry a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Records a new running execution unless `id` exists. [`OpResult::Created`], or
    /// [`OpResult::Existing`] with the stored execution (unchanged).
    Start {
        /// The execution's id.
        id: String,
        /// The workflow's name.
        workflow: String,
        /// The encoded payload.
        payload: Vec<u8>,
        /// The execution that started this one, if any.
        parent: Option<String>,
    },
    /// Stores a step result unless its key has one. [`OpResult::Done`]: whether it was stored
    /// (`false` also when the execution is unknown).
    Append {
        /// The execution's id.
        id: String,
        /// The step result.
        entry: Entry,
    },
    /// Stores a deferred's result unless it has one. [`OpResult::Done`]: whether it was
    /// stored; [`OpResult::UnknownExecution`].
    Deferred {
        /// The execution's id.
        id: String,
        /// The deferred's name.
        name: String,
        /// The encoded exit.
        value: Vec<u8>,
    },
    /// Moves an execution to `status` with `result`; completing it drops its timers.
    /// [`OpResult::Done`]: `false` if the execution is complete (its result is final) or
    /// unknown.
    Status {
        /// The execution's id.
        id: String,
        /// The new status.
        status: Status,
        /// The encoded result.
        result: Option<Vec<u8>>,
    },
    /// Suspends an execution (status suspended, `cause` its result) unless it is complete or
    /// holds more than `deferreds` deferred results: one came that the run ending now did not
    /// see (another process completed it, and its running mark must not be overwritten), so
    /// the execution must run again instead. [`OpResult::Done`]: whether it was suspended.
    Suspend {
        /// The execution's id.
        id: String,
        /// The encoded cause, if any.
        cause: Option<Vec<u8>>,
        /// The deferred results the run knew of.
        deferreds: u32,
    },
    /// Records an interrupt request. [`OpResult::Done`]: `false` if the execution is complete;
    /// [`OpResult::UnknownExecution`].
    Interrupt {
        /// The execution's id.
        id: String,
    },
    /// Stores a durable timer unless one with that execution and name exists.
    /// [`OpResult::Done`]: whether it was stored (`false` also when the execution is unknown).
    Timer(Timer),
    /// Forgets a timer. [`OpResult::Done`]: whether it was stored.
    Untimer {
        /// The timer's execution.
        execution_id: String,
        /// The timer's name.
        name: String,
    },
    /// Saves a persisted entity request, unprocessed, unless one with its id, or with its key,
    /// is stored. [`OpResult::Created`], or [`OpResult::Duplicate`] with the stored one's id and
    /// final reply (saving the same request again answers its own id).
    Request {
        /// The request.
        request: Request,
        /// Saved claimed at this instant (ms; its sender delivers it at once), or unclaimed
        /// (`None`) for a read of unprocessed requests to deliver.
        claimed_ms: Option<u64>,
    },
    /// Saves the final reply of a request, which is processed from then on. [`OpResult::Done`]:
    /// `false` if it has a final reply already (the first one wins) or is unknown.
    Reply {
        /// The request.
        request_id: i64,
        /// The encoded exit.
        value: Vec<u8>,
        /// Whether callers in other processes are woken (a cluster's writer notifies the
        /// id): `false` when its caller gets the reply otherwise (in this process, or pushed
        /// over the runners' transport). Callers it misses read it at their regular poll.
        notify: bool,
    },
    /// Stores the durable state of an entity instance, replacing what it held.
    /// [`OpResult::Done`]: `true`.
    EntityState {
        /// The entity type.
        entity_type: String,
        /// The entity id.
        entity_id: String,
        /// The encoded state.
        value: Vec<u8>,
    },
    /// Forgets a request's final reply and claim, so that it is delivered again (Effect's
    /// `clearReplies`). [`OpResult::Done`]: whether the request is stored.
    ClearReplies {
        /// The request.
        request_id: i64,
    },
    /// Clears a request's claim: the next read of unprocessed requests takes it (one read but
    /// not delivered: its mailbox was full, its entity type not registered yet).
    /// [`OpResult::Done`]: whether the request is stored and unprocessed.
    Unclaim {
        /// The request.
        request_id: i64,
        /// The request's shard, whose owner a cluster's writer wakes to read it (its sender
        /// saved it claimed for a delivery that failed); `None` wakes nobody.
        shard: Option<String>,
    },
    /// Claims a request for delivery at `claimed_ms`, unless it is processed or claimed less
    /// than [`super::messages::CLAIM_MS`] before. [`OpResult::Done`]: whether it was claimed.
    Claim {
        /// The request.
        request_id: i64,
        /// The claim's instant (ms since the Unix epoch).
        claimed_ms: u64,
    },
    /// Clears the claims of every unprocessed request of `shards` (`None`: of every shard),
    /// so that they are delivered again: an engine starting, a runner taking shards over.
    /// [`OpResult::Done`]: whether it cleared any.
    ResetClaims {
        /// The shards (`"group:id"`), or every one.
        shards: Option<Vec<String>>,
    },
    /// Offers a durable queue item unless one with its queue and id is stored (pending or
    /// done). [`OpResult::Done`]: whether it was stored.
    Offer(QueueItem),
    /// Claims a pending queue item at `claimed_ms`, unless a claim made less than `claim_ms`
    /// before stands. [`OpResult::Done`]: whether it was claimed (its attempt counted).
    QueueClaim {
        /// The queue.
        queue: String,
        /// The item.
        id: String,
        /// The claim's instant (ms since the Unix epoch).
        claimed_ms: u64,
        /// How long a claim stands (ms).
        claim_ms: u64,
    },
    /// Extends a claim on a queue item that its worker still holds (its handler runs on): the
    /// claim made at `held_ms` now stands from `renewed_ms`, unless the item is done or was
    /// claimed again since. [`OpResult::Done`]: whether the claim was still `held_ms`.
    QueueRenew {
        /// The queue.
        queue: String,
        /// The item.
        id: String,
        /// The instant of the claim its worker holds (ms since the Unix epoch).
        held_ms: u64,
        /// The claim's new instant.
        renewed_ms: u64,
    },
    /// Marks a queue item done: it is never taken again. [`OpResult::Done`]: whether it was
    /// pending (`false` if done already, or unknown).
    QueueDone {
        /// The queue.
        queue: String,
        /// The item.
        id: String,
    },
    /// `op`, written by the owner of `shard`: a runner of a cluster applies it only while it
    /// holds the shard's lease, checked by the database inside the commit; otherwise it is
    /// answered [`OpResult::Fenced`] and not applied. A store without shard leases (memory,
    /// SQLite, a single engine) applies `op` as it is.
    Owned {
        /// The shard (`"group:id"`) whose owner writes it.
        shard: String,
        /// The op.
        op: Box<Op>,
    },
}

impl Op {
    /// The op itself, out of any [`Op::Owned`].
    pub fn inner(&self) -> &Op {
        match self {
            Op::Owned { op, .. } => op.inner(),
            op => op,
        }
    }

    /// The op itself, out of any [`Op::Owned`], by value.
    #[must_use]
    pub fn into_inner(self) -> Op {
        match self {
            Op::Owned { op, .. } => op.into_inner(),
            op => op,
        }
    }
}

/// The outcome of one [`Op`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// `Start` created the execution.
    Created,
    /// `Start` found the execution already stored, as here.
    Existing(Execution),
    /// Whether the op changed anything.
    Done(bool),
    /// The op named an execution the store does not hold.
    UnknownExecution,
    /// `Request` found a request with the same id or key stored: its id, and its final reply
    /// if it has one.
    Duplicate {
        /// The stored request's id.
        original: i64,
        /// Its final reply, if saved.
        reply: Option<Vec<u8>>,
    },
    /// The op holds what no store can keep (see [`Op::check`]); it was not applied, the other
    /// ops of its write were. The message names the op by its index in the write:
    /// `ops[<index>]: ...`.
    Refused(String),
    /// The op was [`Op::Owned`] by a shard this runner does not hold (any more): not applied.
    Fenced,
}

impl Op {
    /// Checks what a database could not store: a NUL character in a text (PostgreSQL refuses
    /// it; the other stores are held to the same rule, so that the backends answer alike) or a
    /// due instant past `2^63 - 1`.
    ///
    /// # Errors
    /// What is wrong, naming the field.
    #[allow(clippy::too_many_lines)] // one arm per op, each short
    pub fn check(&self) -> Result<(), String> {
        let text = |field: &str, text: &str| {
            if text.contains('\0') {
                Err(format!("{field} {text:?} holds a NUL character"))
            } else {
                Ok(())
            }
        };
        match self {
            Op::Start {
                id,
                workflow,
                parent,
                ..
            } => {
                text("id", id)?;
                text("workflow", workflow)?;
                parent
                    .as_deref()
                    .map_or(Ok(()), |parent| text("parent", parent))
            }
            Op::Append { id, entry } => text("id", id).and_then(|()| text("key", &entry.key)),
            Op::Deferred { id, name, .. } => text("id", id).and_then(|()| text("name", name)),
            Op::Status { id, .. } | Op::Suspend { id, .. } | Op::Interrupt { id } => text("id", id),
            Op::Timer(timer) => {
                text("execution_id", &timer.execution_id)?;
                text("name", &timer.name)?;
                if i64::try_from(timer.due_ms).is_err() {
                    return Err(format!(
                        "due_ms {} is out of range: expected at most 2^63 - 1",
                        timer.due_ms
                    ));
                }
                Ok(())
            }
            Op::Untimer { execution_id, name } => {
                text("execution_id", execution_id).and_then(|()| text("name", name))
            }
            Op::Request {
                request,
                claimed_ms,
            } => {
                text("shard", &request.shard)?;
                text("entity_type", &request.entity_type)?;
                text("entity_id", &request.entity_id)?;
                text("tag", &request.tag)?;
                if let Some(key) = &request.key {
                    text("key", key)?;
                }
                for (field, at) in [
                    ("deliver_at", request.deliver_at),
                    ("claimed_ms", *claimed_ms),
                ] {
                    if let Some(at) = at.filter(|at| i64::try_from(*at).is_err()) {
                        return Err(format!(
                            "{field} {at} is out of range: expected at most 2^63 - 1"
                        ));
                    }
                }
                Ok(())
            }
            Op::EntityState {
                entity_type,
                entity_id,
                ..
            } => text("entity_type", entity_type).and_then(|()| text("entity_id", entity_id)),
            Op::Claim { claimed_ms, .. } => {
                if i64::try_from(*claimed_ms).is_err() {
                    return Err(format!(
                        "claimed_ms {claimed_ms} is out of range: expected at most 2^63 - 1"
                    ));
                }
                Ok(())
            }
            Op::ResetClaims { shards } => shards
                .iter()
                .flatten()
                .try_for_each(|shard| text("shard", shard)),
            Op::Offer(item) => {
                text("queue", &item.queue)?;
                text("id", &item.id)?;
                item.token
                    .as_deref()
                    .map_or(Ok(()), |token| text("token", token))
            }
            Op::QueueClaim {
                queue,
                id,
                claimed_ms,
                claim_ms,
            } => {
                text("queue", queue)?;
                text("id", id)?;
                for (field, ms) in [("claimed_ms", claimed_ms), ("claim_ms", claim_ms)] {
                    if i64::try_from(*ms).is_err() {
                        return Err(format!(
                            "{field} {ms} is out of range: expected at most 2^63 - 1"
                        ));
                    }
                }
                Ok(())
            }
            Op::QueueRenew {
                queue,
                id,
                held_ms,
                renewed_ms,
            } => {
                text("queue", queue)?;
                text("id", id)?;
                for (field, ms) in [("held_ms", held_ms), ("renewed_ms", renewed_ms)] {
                    if i64::try_from(*ms).is_err() {
                        return Err(format!(
                            "{field} {ms} is out of range: expected at most 2^63 - 1"
                        ));
                    }
                }
                Ok(())
            }
            Op::QueueDone { queue, id } => text("queue", queue).and_then(|()| text("id", id)),
            Op::Reply { .. } | Op::ClearReplies { .. } | Op::Unclaim { .. } => Ok(()),
            Op::Owned { shard, op } => text("shard", shard).and_then(|()| op.check()),
        }
    }
}

/// The ops of one write that failed [`Op::check`], taken out before the rest is applied and
/// answered in their places afterwards: a refused op fails alone.
#[derive(Debug, Default)]
pub(crate) struct Refusals(Vec<(usize, String)>);

impl Refusals {
    /// Takes every op that fails [`Op::check`] out of `ops`.
    pub(crate) fn take(ops: &mut Vec<Op>) -> Self {
        let mut refused = Vec::new();
        let mut index = 0;
        ops.retain(|op| {
            let at = index;
            index += 1;
            match op.check() {
                Ok(()) => true,
                Err(why) => {
                    refused.push((at, format!("ops[{at}]: {why}")));
                    false
                }
            }
        });
        Self(refused)
    }

    /// The results of the whole write: `results` (of the ops kept) with the refusals back in
    /// their places.
    pub(crate) fn answer(self, results: Vec<OpResult>) -> Vec<OpResult> {
        if self.0.is_empty() {
            return results;
        }
        let mut all = Vec::with_capacity(results.len() + self.0.len());
        let mut results = results.into_iter();
        for (at, why) in self.0 {
            all.extend(results.by_ref().take(at - all.len()));
            all.push(OpResult::Refused(why));
        }
        all.extend(results);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interrupt(id: &str) -> Op {
        Op::Interrupt { id: id.into() }
    }

    #[test]
    fn refused_ops_are_answered_in_their_places() {
        let mut ops = vec![
            interrupt("bad\0"),
            interrupt("a"),
            interrupt("b\0"),
            interrupt("c"),
            interrupt("\0"),
        ];
        let refusals = Refusals::take(&mut ops);
        assert_eq!(ops, vec![interrupt("a"), interrupt("c")]);
        let answered = refusals.answer(vec![OpResult::Done(true), OpResult::Done(false)]);
        assert_eq!(
            answered,
            vec![
                OpResult::Refused("ops[0]: id \"bad\\0\" holds a NUL character".into()),
                OpResult::Done(true),
                OpResult::Refused("ops[2]: id \"b\\0\" holds a NUL character".into()),
                OpResult::Done(false),
                OpResult::Refused("ops[4]: id \"\\0\" holds a NUL character".into()),
            ]
        );
        let mut good = vec![interrupt("a")];
        let none = Refusals::take(&mut good);
        assert_eq!(
            none.answer(vec![OpResult::UnknownExecution]),
            vec![OpResult::UnknownExecution]
        );
    }

    #[test]
    fn a_due_instant_past_i64_is_refused() {
        let timer = Op::Timer(Timer {
            execution_id: "e".into(),
            name: "t".into(),
            due_ms: u64::MAX,
        });
        assert!(timer.check().unwrap_err().starts_with("due_ms"));
    }
}
