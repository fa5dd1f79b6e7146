//! Durable queue items as the store keeps them (Effect's `PersistedQueue`, behind
//! `DurableQueue`).
//!
//! An item is offered once per `(queue, id)`: a second offer of the same id is a no-op, which
//! is what makes a workflow's offer idempotent across replays. A worker *takes* items: a take
//! claims each item it returns at its instant, and skips items claimed less than the worker's
//! claim timeout before. An item stays pending until it is marked done; a worker that died
//! with an item claimed leaves it to be taken again once the claim is void (at least once).
//! A done item is never taken again.

/// One work item of a durable queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueItem {
    /// The queue's name.
    pub queue: String,
    /// The item's id within its queue (the dedup key).
    pub id: String,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// The token of the deferred that the item's result completes (a workflow's `process`),
    /// or `None` for an item nobody waits on (a plain `enqueue`).
    pub token: Option<String>,
}

/// An item handed to a worker by a take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The item.
    pub item: QueueItem,
    /// How many times it has been taken, this take included (1 the first time).
    pub attempt: u32,
}

/// Whether a claim made at `claimed_ms` stands at `now_ms` under `claim_ms`.
pub(crate) fn claim_stands(claimed_ms: Option<u64>, now_ms: u64, claim_ms: u64) -> bool {
    claimed_ms.is_some_and(|at| now_ms.saturating_sub(at) < claim_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_stands_until_its_timeout() {
        assert!(!claim_stands(None, 10, 5));
        assert!(claim_stands(Some(10), 14, 5));
        assert!(!claim_stands(Some(10), 15, 5));
        // A claim from the future (a clock that went back) stands.
        assert!(claim_stands(Some(20), 10, 5));
    }
}
