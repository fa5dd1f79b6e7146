//! The storage read loop: persisted entity requests go from the store to the mailboxes.
//!
//! A request its sender saved and delivered at once never passes here. This loop delivers the
//! others: those in flight when the process stopped (the start clears every claim), those held
//! back by `deliver_at`, those a full mailbox or the resident cap refused (read again when a
//! slot frees), and those of an entity type not registered yet (read again until
//! `registration_timeout_ms`, then handed to the host, which answers them with a defect).
//! It reads when asked to (the host saved requests it did not deliver; a slot freed after a
//! refusal), when the next `deliver_at` or registration deadline comes, and every
//! `poll_ms` regardless (Effect's `entityMessagePollInterval`).

use rustc_hash::FxHashMap;

use super::{Shared, State};
use crate::{
    cluster::mailbox::{Address, Message, Refusal},
    store::{Op, Request, Shards, Store, StoreError},
};

/// Requests read per round at most (Effect's storage read batch).
const READ_LIMIT: usize = 1_024;

/// What the loop knows of the stored requests.
#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // independent flags of one loop
pub(super) struct Storage {
    /// A read is wanted at once.
    pub(super) wanted: bool,
    /// Whether the claims left by an earlier process were cleared (the first step).
    pub(super) reset: bool,
    /// A read was refused room since the last read: read again when a slot frees.
    pub(super) refused: bool,
    /// The next regular read.
    pub(super) next_poll: u64,
    /// When the earliest request held back by `deliver_at` is due.
    pub(super) next_deliver_at: Option<u64>,
    /// Whether a read is under way, and the earliest `deliver_at` the host reported meanwhile
    /// (the read may not see its request).
    pub(super) reading: bool,
    pub(super) hinted_during_read: Option<u64>,
    /// Requests of unregistered entity types: when each was first read.
    unregistered: FxHashMap<i64, u64>,
    pub(super) poll_ms: u64,
    pub(super) registration_timeout_ms: u64,
}

impl Storage {
    pub(super) fn new() -> Self {
        Self {
            wanted: true,
            reset: false,
            refused: false,
            next_poll: 0,
            next_deliver_at: None,
            reading: false,
            hinted_during_read: None,
            unregistered: FxHashMap::default(),
            poll_ms: 10_000,
            registration_timeout_ms: 60_000,
        }
    }

    /// When the loop must read next, whatever happens meanwhile: the next `deliver_at` or
    /// registration deadline, and with `poll` the next regular read too (a host moving a
    /// manual clock is not woken by those).
    pub(super) fn next_read(&self, poll: bool) -> Option<u64> {
        let registration = self
            .unregistered
            .values()
            .min()
            .map(|first| first.saturating_add(self.registration_timeout_ms));
        let poll = poll.then_some(self.next_poll);
        super::earliest([poll, self.next_deliver_at, registration])
    }
}

/// One round: clears old claims at the start, then reads what may be delivered now, if a read
/// is due. Returns whether it read anything.
pub(super) async fn read(shared: &Shared, store: &dyn Store) -> Result<bool, StoreError> {
    let now = shared.clock.now();
    let reset = {
        let mut state = shared.state();
        let storage = &mut state.storage;
        let due = storage.next_read(true).is_some_and(|at| at <= now);
        if !(storage.wanted || due || !storage.reset) {
            return Ok(false);
        }
        storage.wanted = false;
        storage.reading = true;
        storage.hinted_during_read = None;
        !storage.reset
    };
    // A runner of a cluster reads the shards it holds, and clears the claims of those it
    // just acquired; a single engine holds them all.
    let (owned, newly) = {
        let mut state = shared.state();
        match &mut state.ownership {
            Some(ownership) => (
                Some(ownership.owned.iter().cloned().collect::<Vec<String>>()),
                std::mem::take(&mut ownership.reset),
            ),
            None => (None, Vec::new()),
        }
    };
    if let Err(err) = reset_acquired(shared, store, newly).await {
        let mut state = shared.state();
        state.storage.wanted = true;
        state.storage.reading = false;
        return Err(err);
    }
    if owned.as_ref().is_some_and(Vec::is_empty) {
        let mut state = shared.state();
        state.storage.reading = false;
        state.storage.reset = true;
        state.storage.next_poll = now.saturating_add(state.storage.poll_ms);
        return Ok(false);
    }
    if reset && owned.is_none() {
        let cleared = match store.write(vec![Op::ResetClaims { shards: None }]) {
            Ok(answer) => answer.await,
            Err(err) => Err(err),
        };
        if let Err(err) = cleared {
            let mut state = shared.state();
            state.storage.wanted = true;
            state.storage.reading = false;
            return Err(err);
        }
        shared.state().storage.reset = true;
    }
    if owned.is_some() {
        shared.state().storage.reset = true;
    }
    let shards = match &owned {
        Some(owned) => Shards::Only(owned),
        None => Shards::All,
    };
    let found = match store.unprocessed(shards, READ_LIMIT, now).await {
        Ok(found) => found,
        Err(err) => {
            let mut state = shared.state();
            state.storage.wanted = true;
            state.storage.reading = false;
            return Err(err);
        }
    };
    let full = found.requests.len() >= READ_LIMIT;
    let read = !found.requests.is_empty();
    let mut unclaim = Vec::new();
    {
        let mut state = shared.state();
        let state = &mut *state;
        state.storage.next_poll = now.saturating_add(state.storage.poll_ms);
        state.storage.reading = false;
        let hinted = state.storage.hinted_during_read.take();
        state.storage.next_deliver_at = super::earliest([found.next_deliver_at, hinted]);
        let seen: Vec<i64> = found.requests.iter().map(|r| r.id).collect();
        for request in found.requests {
            if let Some(id) = offer(state, request, now) {
                unclaim.push(Op::Unclaim {
                    request_id: id,
                    shard: None,
                });
            }
        }
        if !full {
            // A request of an unregistered type that a whole read no longer finds was
            // answered or deleted meanwhile.
            state.storage.unregistered.retain(|id, _| seen.contains(id));
        }
        // A full batch: there may be more at once.
        state.storage.wanted |= full;
    }
    if !unclaim.is_empty() {
        store.write(unclaim)?.await?;
    }
    if shared.state().has_work() {
        shared.ready.notify_waiters();
    }
    Ok(read)
}

/// Clears the claims of the shards a runner just acquired (left by their former owner);
/// on failure they are cleared at the next read.
async fn reset_acquired(
    shared: &Shared,
    store: &dyn Store,
    newly: Vec<String>,
) -> Result<(), StoreError> {
    if newly.is_empty() {
        return Ok(());
    }
    let cleared = match store.write(vec![Op::ResetClaims {
        shards: Some(newly.clone()),
    }]) {
        Ok(answer) => answer.await.map(|_| ()),
        Err(err) => Err(err),
    };
    if cleared.is_err() {
        if let Some(ownership) = &mut shared.state().ownership {
            ownership.reset.extend(newly);
        }
    }
    cleared
}

/// Offers one stored request to its mailbox. Returns its id if its claim must be cleared (it
/// was not taken, and a later read must find it).
fn offer(state: &mut State, request: Request, now: u64) -> Option<i64> {
    let message = Message {
        request_id: request.id,
        address: Address {
            entity_type: request.entity_type,
            entity_id: request.entity_id,
        },
        tag: request.tag,
        payload: request.payload,
        persisted: true,
        forwarded: false,
        saved_ms: None,
    };
    let id = message.request_id;
    let storage = &mut state.storage;
    match state.mail.offer(message.clone(), now) {
        Ok(()) => {
            storage.unregistered.remove(&id);
            if let Some(ownership) = &mut state.ownership {
                ownership.delivered_from_storage(id, now);
            }
            None
        }
        // Running or waiting already (a claim that outlived its timeout): it stays claimed.
        // (Or its shard went between the read and now: the new owner clears the claim.)
        // (A mailbox never refuses a request for its size: only the transport does.)
        Err(
            Refusal::AlreadyProcessing { .. }
            | Refusal::NotAssigned { .. }
            | Refusal::TooLarge { .. }
            | Refusal::Unavailable { .. },
        ) => None,
        Err(Refusal::MailboxFull { .. }) => {
            storage.refused = true;
            Some(id)
        }
        Err(Refusal::NotRegistered(_)) => {
            let first = *storage.unregistered.entry(id).or_insert(now);
            if now.saturating_sub(first) >= storage.registration_timeout_ms {
                storage.unregistered.remove(&id);
                state.mail.deliver_unregistered(message);
                None
            } else {
                Some(id)
            }
        }
    }
}
