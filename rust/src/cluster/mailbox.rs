//! The mailboxes of the entities this runner holds: who may run what, now.
//!
//! Pure bookkeeping, no I/O and no clock of its own (callers pass `now_ms`): an entity instance
//! becomes resident on its first message, runs at most `concurrency` requests at once, holds at
//! most `mailbox_capacity` requests (running and waiting), and is passivated once it has been
//! idle for `max_idle_ms`. A runner-wide cap bounds the resident instances. What may run is
//! queued as [`Delivery`]s for the host to take.
//!
//! Effect's rules (its `EntityManager` and `EntityReaper`), with one difference of shape: the
//! waiting requests of an instance are queued here, in order, rather than in a server fiber.

use std::collections::{BTreeSet, VecDeque};

use rustc_hash::{FxHashMap, FxHashSet};

/// An entity instance's address: its type and id. The shard follows from the id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// The entity type.
    pub entity_type: String,
    /// The entity id.
    pub entity_id: String,
}

/// How an entity type's instances run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntityOptions {
    /// Requests run at once per instance (Effect's default: 1).
    pub concurrency: usize,
    /// Requests an instance may hold, running and waiting; `None`: unbounded (Effect's default
    /// is 4,096).
    pub mailbox_capacity: Option<usize>,
    /// Idle time after which an instance with nothing to do is passivated; `None`: never.
    pub max_idle_ms: Option<u64>,
}

impl Default for EntityOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            mailbox_capacity: Some(4_096),
            max_idle_ms: Some(60_000),
        }
    }
}

/// A request for an entity, as the mailbox holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The request's id (a snowflake).
    pub request_id: i64,
    /// Where it goes.
    pub address: Address,
    /// The RPC's name.
    pub tag: String,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// Whether it is stored (its reply will be too).
    pub persisted: bool,
    /// Whether another process sent it over the runners' transport (its reply goes back
    /// there).
    pub forwarded: bool,
    /// For a persisted request its sender saved for another runner and then sent there: when
    /// it was saved (its claim lasts `FORWARD_CLAIM_MS` from then).
    pub saved_ms: Option<u64>,
}

/// A request the host may run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The request.
    pub message: Message,
    /// Whether the instance became resident with this request: the host makes it (and loads
    /// its durable state, if any) before running the request.
    pub activates: bool,
}

/// Why the mailbox did not take a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Refusal {
    /// The entity type is not registered on this runner.
    #[error("entity type {0:?} is not registered")]
    NotRegistered(String),
    /// The instance holds `mailbox_capacity` requests already, or the runner holds its cap of
    /// resident instances and this one is not among them (Effect's `MailboxFull` for both).
    #[error("the mailbox of {entity_type}/{entity_id} is full")]
    MailboxFull {
        /// The entity type.
        entity_type: String,
        /// The entity id.
        entity_id: String,
    },
    /// The entity's shard is not held by this runner (Effect's `EntityNotAssignedToRunner`).
    #[error("shard {shard} of {entity_type}/{entity_id} is not held by this runner")]
    NotAssigned {
        /// The shard.
        shard: String,
        /// The entity type.
        entity_type: String,
        /// The entity id.
        entity_id: String,
    },
    /// The request is larger than the runners' transport carries.
    #[error("the request is {size} bytes, more than the {limit} bytes a runner takes")]
    TooLarge {
        /// Its payload's size.
        size: usize,
        /// The largest payload sent to another runner.
        limit: usize,
    },
    /// No runner could be reached for the request's shard for this long (Effect's
    /// `RunnerUnavailable`, given up on).
    #[error(
        "no runner took the request within {after_ms} ms{}",
        runner.as_ref().map(|r| format!(" ({r} unreachable)")).unwrap_or_default()
    )]
    Unavailable {
        /// The runner last found unreachable, if one was.
        runner: Option<String>,
        /// How long it was tried.
        after_ms: u64,
    },
    /// The request is running or waiting already (Effect's `AlreadyProcessingMessage`).
    #[error("request {request_id} is already being processed by {entity_type}/{entity_id}")]
    AlreadyProcessing {
        /// The request.
        request_id: i64,
        /// The entity type.
        entity_type: String,
        /// The entity id.
        entity_id: String,
    },
}

/// One resident instance.
#[derive(Debug)]
struct Instance {
    /// Requests running now.
    running: usize,
    /// Requests waiting their turn, in arrival order.
    waiting: VecDeque<Message>,
    /// Request ids running or waiting.
    ids: FxHashSet<i64>,
    /// When it last had something to do.
    last_active_ms: u64,
    /// Kept resident whatever its idle time (Effect's `keepAlive`).
    keep_alive: bool,
    /// When it may be passivated, while it is idle (its key in [`Mailboxes::idle`]).
    passivates_at: Option<u64>,
}

/// Every mailbox of a runner. See the [module documentation](self).
#[derive(Debug, Default)]
pub struct Mailboxes {
    types: FxHashMap<String, EntityOptions>,
    resident: FxHashMap<Address, Instance>,
    /// Resident instances at most; `None`: unbounded (Effect's default is 10,000).
    max_resident: Option<usize>,
    ready: VecDeque<Delivery>,
    /// The idle instances that may be passivated, by when: the next passivation without a
    /// scan of every resident instance (a runner holds 10,000).
    idle: BTreeSet<(u64, Address)>,
}

impl Mailboxes {
    /// Empty mailboxes, with at most `max_resident` instances resident at once.
    pub fn new(max_resident: Option<usize>) -> Self {
        Self {
            max_resident,
            ..Self::default()
        }
    }

    /// Bounds the resident instances (`None`: unbounded); those resident stay.
    pub fn set_max_resident(&mut self, max_resident: Option<usize>) {
        self.max_resident = max_resident;
    }

    /// Registers (or re-registers) an entity type with its options.
    pub fn register(&mut self, entity_type: &str, options: EntityOptions) {
        let changed = self.types.insert(entity_type.to_owned(), options) != Some(options);
        if changed {
            // Its idle time may have changed: the idle instances of the type are due anew.
            let of_type: Vec<Address> = self
                .resident
                .keys()
                .filter(|a| a.entity_type == entity_type)
                .cloned()
                .collect();
            for address in &of_type {
                self.refresh_idle(address);
            }
        }
    }

    /// Whether `entity_type` is registered.
    pub fn is_registered(&self, entity_type: &str) -> bool {
        self.types.contains_key(entity_type)
    }

    /// Resident instances now.
    pub fn resident(&self) -> usize {
        self.resident.len()
    }

    /// Whether the instance at `address` is resident.
    pub fn is_resident(&self, address: &Address) -> bool {
        self.resident.contains_key(address)
    }

    /// Whether a message for `address` could be taken now (registered, room in its mailbox
    /// and, if not resident, room for one more resident instance). What a storage read asks
    /// before claiming a stored request for delivery.
    pub fn has_room(&self, address: &Address) -> bool {
        let Some(options) = self.types.get(&address.entity_type) else {
            return false;
        };
        match self.resident.get(address) {
            Some(instance) => options
                .mailbox_capacity
                .is_none_or(|cap| instance.ids.len() < cap),
            None => self
                .max_resident
                .is_none_or(|cap| self.resident.len() < cap),
        }
    }

    /// Offers `message`: it runs now if the instance has a free slot, else waits its turn.
    ///
    /// # Errors
    /// [`Refusal`]: not registered, mailbox full (or no room for another resident instance),
    /// or the request is there already.
    pub fn offer(&mut self, message: Message, now_ms: u64) -> Result<(), Refusal> {
        let address = &message.address;
        let Some(options) = self.types.get(&address.entity_type).copied() else {
            return Err(Refusal::NotRegistered(address.entity_type.clone()));
        };
        let full = || Refusal::MailboxFull {
            entity_type: address.entity_type.clone(),
            entity_id: address.entity_id.clone(),
        };
        let activates = !self.resident.contains_key(address);
        if activates
            && self
                .max_resident
                .is_some_and(|cap| self.resident.len() >= cap)
        {
            return Err(full());
        }
        let instance = self
            .resident
            .entry(address.clone())
            .or_insert_with(|| Instance {
                running: 0,
                waiting: VecDeque::new(),
                ids: FxHashSet::default(),
                last_active_ms: now_ms,
                keep_alive: false,
                passivates_at: None,
            });
        if instance.ids.contains(&message.request_id) {
            return Err(Refusal::AlreadyProcessing {
                request_id: message.request_id,
                entity_type: address.entity_type.clone(),
                entity_id: address.entity_id.clone(),
            });
        }
        if options
            .mailbox_capacity
            .is_some_and(|cap| instance.ids.len() >= cap)
        {
            return Err(full());
        }
        instance.ids.insert(message.request_id);
        instance.last_active_ms = now_ms;
        if let Some(at) = instance.passivates_at.take() {
            self.idle.remove(&(at, address.clone()));
        }
        if instance.running < options.concurrency {
            instance.running += 1;
            self.ready.push_back(Delivery { message, activates });
        } else {
            instance.waiting.push_back(message);
        }
        Ok(())
    }

    /// Request `request_id` of `address` has its final reply (or was dropped): its slot frees,
    /// and the next waiting request of the instance may run. Returns whether it was known.
    pub fn done(&mut self, address: &Address, request_id: i64, now_ms: u64) -> bool {
        let Some(instance) = self.resident.get_mut(address) else {
            return false;
        };
        if !instance.ids.remove(&request_id) {
            return false;
        }
        instance.last_active_ms = now_ms;
        // The finished request was running, unless it was still waiting (dropped).
        if let Some(at) = instance
            .waiting
            .iter()
            .position(|m| m.request_id == request_id)
        {
            instance.waiting.remove(at);
        } else {
            instance.running = instance.running.saturating_sub(1);
            if let Some(next) = instance.waiting.pop_front() {
                instance.running += 1;
                self.ready.push_back(Delivery {
                    message: next,
                    activates: false,
                });
            }
        }
        self.refresh_idle(address);
        true
    }

    /// Puts the instance at `address` among the idle ones, by when it may be passivated, if it
    /// has nothing to do, is not kept alive and its type passivates; else takes it out.
    fn refresh_idle(&mut self, address: &Address) {
        let Some(instance) = self.resident.get_mut(address) else {
            return;
        };
        if let Some(at) = instance.passivates_at.take() {
            self.idle.remove(&(at, address.clone()));
        }
        let max_idle = self
            .types
            .get(&address.entity_type)
            .and_then(|options| options.max_idle_ms);
        if let Some(max) = max_idle.filter(|_| instance.ids.is_empty() && !instance.keep_alive) {
            let at = instance.last_active_ms.saturating_add(max);
            instance.passivates_at = Some(at);
            self.idle.insert((at, address.clone()));
        }
    }

    /// Keeps the instance at `address` resident whatever its idle time, or lets it go idle
    /// again. Returns whether it is resident.
    pub fn keep_alive(&mut self, address: &Address, enabled: bool) -> bool {
        match self.resident.get_mut(address) {
            Some(instance) => {
                instance.keep_alive = enabled;
                self.refresh_idle(address);
                true
            }
            None => false,
        }
    }

    /// Hands `message`, of an entity type no one registered, to the host as it is: it answers
    /// it with a defect (a stored request whose type stayed unknown too long).
    pub fn deliver_unregistered(&mut self, message: Message) {
        self.ready.push_back(Delivery {
            message,
            activates: true,
        });
    }

    /// Takes up to `max` requests that may run now, oldest first.
    pub fn take(&mut self, max: usize) -> Vec<Delivery> {
        let count = max.min(self.ready.len());
        self.ready.drain(..count).collect()
    }

    /// Requests ready to run and not taken yet.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// Passivates the instances idle for their type's `max_idle_ms` by `now_ms` (nothing
    /// running or waiting, not kept alive), and returns their addresses.
    pub fn passivate_idle(&mut self, now_ms: u64) -> Vec<Address> {
        let mut gone = Vec::new();
        while let Some((at, _)) = self.idle.first() {
            if *at > now_ms {
                break;
            }
            if let Some((_, address)) = self.idle.pop_first() {
                self.resident.remove(&address);
                gone.push(address);
            }
        }
        gone.sort();
        gone
    }

    /// When the next idle instance may be passivated, if any may.
    pub fn next_passivation(&self) -> Option<u64> {
        self.idle.first().map(|(at, _)| *at)
    }

    /// The addresses of the resident instances.
    pub fn addresses(&self) -> impl Iterator<Item = &Address> {
        self.resident.keys()
    }

    /// Requests waiting in the mailboxes, by entity type, sorted; every registered type is
    /// there, at 0 when none wait. Waiting: queued behind an instance's running requests, or
    /// ready and not yet taken by the host. A scan of the resident instances, for a gauge read
    /// at scrape time rather than a count kept on every offer.
    pub fn depths(&self) -> Vec<(String, usize)> {
        let mut depths: FxHashMap<&str, usize> =
            self.types.keys().map(|t| (t.as_str(), 0)).collect();
        for (address, instance) in &self.resident {
            if !instance.waiting.is_empty() {
                *depths.entry(&address.entity_type).or_default() += instance.waiting.len();
            }
        }
        for delivery in &self.ready {
            *depths
                .entry(&delivery.message.address.entity_type)
                .or_default() += 1;
        }
        let mut depths: Vec<(String, usize)> =
            depths.into_iter().map(|(t, n)| (t.to_owned(), n)).collect();
        depths.sort_unstable();
        depths
    }

    /// Drops the instance at `address` as its shard moves away: the ids of the requests it
    /// runs (the host has them), and the requests it held that never ran (ready or waiting),
    /// whose callers the host points at the new owner.
    pub fn evict_moving(&mut self, address: &Address) -> (Vec<i64>, Vec<Message>) {
        let mut queued: Vec<Message> = self
            .ready
            .iter()
            .filter(|d| &d.message.address == address)
            .map(|d| d.message.clone())
            .collect();
        if let Some(instance) = self.resident.get(address) {
            queued.extend(instance.waiting.iter().cloned());
        }
        let not_running: FxHashSet<i64> = queued.iter().map(|m| m.request_id).collect();
        let running = self
            .evict(address)
            .into_iter()
            .filter(|id| !not_running.contains(id))
            .collect();
        (running, queued)
    }

    /// Drops the instance at `address` and everything it holds (its requests are left to
    /// storage or failed by the caller): a handler defect restarts it, a shard moves away.
    /// Returns the requests it held, running first.
    pub fn evict(&mut self, address: &Address) -> Vec<i64> {
        self.ready.retain(|d| &d.message.address != address);
        match self.resident.remove(address) {
            Some(instance) => {
                if let Some(at) = instance.passivates_at {
                    self.idle.remove(&(at, address.clone()));
                }
                let waiting: FxHashSet<i64> =
                    instance.waiting.iter().map(|m| m.request_id).collect();
                let mut ids: Vec<i64> = instance
                    .ids
                    .iter()
                    .copied()
                    .filter(|id| !waiting.contains(id))
                    .collect();
                ids.sort_unstable();
                ids.extend(instance.waiting.iter().map(|m| m.request_id));
                ids
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(id: &str) -> Address {
        Address {
            entity_type: "Counter".into(),
            entity_id: id.into(),
        }
    }

    fn message(id: i64, entity: &str) -> Message {
        Message {
            request_id: id,
            address: address(entity),
            tag: "increment".into(),
            payload: b"{}".to_vec(),
            persisted: true,
            forwarded: false,
            saved_ms: None,
        }
    }

    fn ids(deliveries: &[Delivery]) -> Vec<i64> {
        deliveries.iter().map(|d| d.message.request_id).collect()
    }

    fn mailboxes(options: EntityOptions, max_resident: Option<usize>) -> Mailboxes {
        let mut boxes = Mailboxes::new(max_resident);
        boxes.register("Counter", options);
        boxes
    }

    #[test]
    fn one_request_at_a_time_per_instance_by_default_in_arrival_order() {
        let mut boxes = mailboxes(EntityOptions::default(), None);
        for id in 1..=3 {
            boxes.offer(message(id, "a"), 0).unwrap();
        }
        boxes.offer(message(10, "b"), 0).unwrap();
        let first = boxes.take(10);
        assert_eq!(ids(&first), [1, 10]);
        assert!(first.iter().all(|d| d.activates));
        assert!(boxes.take(10).is_empty());
        assert!(boxes.done(&address("a"), 1, 5));
        let next = boxes.take(10);
        assert_eq!(ids(&next), [2]);
        assert!(!next[0].activates);
        boxes.done(&address("a"), 2, 6);
        assert_eq!(ids(&boxes.take(10)), [3]);
    }

    #[test]
    fn concurrency_lets_that_many_run() {
        let options = EntityOptions {
            concurrency: 2,
            ..EntityOptions::default()
        };
        let mut boxes = mailboxes(options, None);
        for id in 1..=3 {
            boxes.offer(message(id, "a"), 0).unwrap();
        }
        assert_eq!(ids(&boxes.take(10)), [1, 2]);
        boxes.done(&address("a"), 2, 0);
        assert_eq!(ids(&boxes.take(10)), [3]);
    }

    #[test]
    fn a_full_mailbox_refuses_and_frees_as_requests_finish() {
        let options = EntityOptions {
            mailbox_capacity: Some(2),
            ..EntityOptions::default()
        };
        let mut boxes = mailboxes(options, None);
        boxes.offer(message(1, "a"), 0).unwrap();
        boxes.offer(message(2, "a"), 0).unwrap();
        assert!(!boxes.has_room(&address("a")));
        assert_eq!(
            boxes.offer(message(3, "a"), 0),
            Err(Refusal::MailboxFull {
                entity_type: "Counter".into(),
                entity_id: "a".into()
            })
        );
        boxes.take(10);
        boxes.done(&address("a"), 1, 0);
        assert!(boxes.has_room(&address("a")));
        boxes.offer(message(3, "a"), 0).unwrap();
    }

    #[test]
    fn a_request_already_there_is_refused() {
        let mut boxes = mailboxes(EntityOptions::default(), None);
        boxes.offer(message(1, "a"), 0).unwrap();
        assert!(matches!(
            boxes.offer(message(1, "a"), 0),
            Err(Refusal::AlreadyProcessing { request_id: 1, .. })
        ));
    }

    #[test]
    fn unknown_types_are_refused() {
        let mut boxes = Mailboxes::new(None);
        assert_eq!(
            boxes.offer(message(1, "a"), 0),
            Err(Refusal::NotRegistered("Counter".into()))
        );
        assert!(!boxes.has_room(&address("a")));
    }

    #[test]
    fn the_resident_cap_refuses_new_instances_until_one_goes() {
        let options = EntityOptions {
            max_idle_ms: Some(1_000),
            ..EntityOptions::default()
        };
        let mut boxes = mailboxes(options, Some(2));
        boxes.offer(message(1, "a"), 0).unwrap();
        boxes.offer(message(2, "b"), 0).unwrap();
        assert!(!boxes.has_room(&address("c")));
        assert!(boxes.offer(message(3, "c"), 0).is_err());
        // A resident instance still takes more.
        boxes.offer(message(4, "a"), 0).unwrap();
        boxes.take(10);
        for (entity, id) in [("a", 1), ("a", 4), ("b", 2)] {
            boxes.done(&address(entity), id, 100);
        }
        assert_eq!(ids(&boxes.take(10)), [4]);
        boxes.done(&address("a"), 4, 100);
        assert_eq!(boxes.next_passivation(), Some(1_100));
        assert!(boxes.passivate_idle(1_099).is_empty());
        assert_eq!(boxes.passivate_idle(1_100), [address("a"), address("b")]);
        assert_eq!(boxes.resident(), 0);
        boxes.offer(message(3, "c"), 1_200).unwrap();
        assert!(boxes.take(1)[0].activates);
    }

    #[test]
    fn busy_or_kept_alive_instances_are_not_passivated() {
        let options = EntityOptions {
            max_idle_ms: Some(10),
            ..EntityOptions::default()
        };
        let mut boxes = mailboxes(options, None);
        boxes.offer(message(1, "busy"), 0).unwrap();
        boxes.offer(message(2, "kept"), 0).unwrap();
        boxes.take(10);
        boxes.done(&address("kept"), 2, 0);
        assert!(boxes.keep_alive(&address("kept"), true));
        assert!(boxes.passivate_idle(1_000).is_empty());
        boxes.keep_alive(&address("kept"), false);
        assert_eq!(boxes.passivate_idle(1_000), [address("kept")]);
    }

    #[test]
    fn eviction_hands_back_what_the_instance_held() {
        let mut boxes = mailboxes(EntityOptions::default(), None);
        for id in [5, 6, 7] {
            boxes.offer(message(id, "a"), 0).unwrap();
        }
        assert_eq!(boxes.evict(&address("a")), [5, 6, 7]);
        assert!(boxes.take(10).is_empty(), "its ready request went with it");
        assert!(!boxes.is_resident(&address("a")));
        assert!(!boxes.done(&address("a"), 6, 0));
    }

    #[test]
    fn a_moving_instance_hands_back_the_requests_that_never_ran() {
        let mut boxes = mailboxes(EntityOptions::default(), None);
        let queued_ids = |queued: Vec<Message>| -> Vec<i64> {
            queued.into_iter().map(|m| m.request_id).collect()
        };
        for id in [5, 6, 7] {
            boxes.offer(message(id, "a"), 0).unwrap();
        }
        // 5 is ready (not taken), 6 and 7 wait behind it.
        let (running, queued) = boxes.evict_moving(&address("a"));
        assert!(running.is_empty());
        assert_eq!(queued_ids(queued), [5, 6, 7]);
        assert!(boxes.take(10).is_empty());

        for id in [8, 9] {
            boxes.offer(message(id, "b"), 0).unwrap();
        }
        assert_eq!(ids(&boxes.take(10)), [8]);
        let (running, queued) = boxes.evict_moving(&address("b"));
        assert_eq!(running, [8]);
        assert_eq!(queued_ids(queued), [9]);
        assert!(!boxes.is_resident(&address("b")));
    }

    #[test]
    fn depths_count_what_waits_by_type() {
        let mut boxes = mailboxes(EntityOptions::default(), None);
        boxes.register("Idle", EntityOptions::default());
        assert_eq!(boxes.depths(), [("Counter".into(), 0), ("Idle".into(), 0)]);
        for id in [1, 2, 3] {
            boxes.offer(message(id, "a"), 0).unwrap();
        }
        boxes.offer(message(4, "b"), 0).unwrap();
        // 1 and 4 ready and not taken, 2 and 3 queued behind 1.
        assert_eq!(boxes.depths(), [("Counter".into(), 4), ("Idle".into(), 0)]);
        assert_eq!(ids(&boxes.take(10)), [1, 4]);
        assert_eq!(boxes.depths()[0], ("Counter".into(), 2));
        assert!(boxes.done(&address("a"), 1, 0));
        // 2 is ready now: it still waits for the host.
        assert_eq!(boxes.depths()[0], ("Counter".into(), 2));
        assert_eq!(ids(&boxes.take(10)), [2]);
        assert_eq!(boxes.depths()[0], ("Counter".into(), 1));
    }
}
