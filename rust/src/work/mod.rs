//! The work source: what this process owns and what runs next.
//!
//! One per engine. It knows the durable timers of the executions this process owns that fall
//! due within a horizon, fires them (the deferred, the execution's running mark and the timer's
//! removal in one transaction), recovers the executions found running when it starts, reads the
//! snapshots of everything that must run again, and hands Python batches of [`Work`]: resume
//! this execution, from this snapshot (after this timer fired). Python waits with
//! [`WorkSource::wait`], takes with [`WorkSource::take`] (separate on purpose: a cancelled wait
//! never drops work), runs user code, and tells the source about timers it stored.
//!
//! Time comes from a [`Clock`]: the wall clock, on which the source sleeps by itself, or a
//! manual one that the host moves ([`WorkSource::advance_to`]), as a test's virtual clock does.
//!
//! This is the seam the cluster plugs into: a runner's source owns the executions (and the
//! entity mailboxes) of the shards it holds: it lists a shard's running executions and loads
//! its timers when it acquires it, fires only the timers of shards it holds (as their owner,
//! fenced), and hears of executions other processes woke ([`executions`]).

mod executions;
mod messages;
#[cfg(test)]
mod tests;

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

use std::num::NonZeroU32;

use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::Notify;

use crate::{
    clock::now_ms,
    cluster::{
        mailbox::{Address, Delivery, EntityOptions, Mailboxes, Message, Refusal},
        sharding::ShardHost,
        transport::Inbox,
    },
    shard::shard_id,
    store::{
        messages::{FORWARD_CLAIM_MS, FORWARD_MARGIN_MS},
        Execution, Op, OpResult, Snapshot, Status, Store, StoreError,
    },
    timer::TimerWheel,
};

/// Timers due within this much of now are in memory; later ones only in the store.
pub const HORIZON_MS: u64 = 60_000;
/// Executions whose snapshot was read and that wait for Python: the source stops reading more
/// until Python has taken some (100,000 to recover never sit in memory at once).
pub const READY_CAP: usize = 1_000;
/// Ids per snapshot read, and timers fired per transaction.
const CHUNK: usize = 500;
/// The encoded exit of a fired clock: success, no value.
const VOID: &[u8] = br#"{"_tag":"Success","value":null}"#;
/// Longest sleep between looks at the wall clock, so a clock that jumps forward delays timers
/// by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// First wait after a store failure; doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Where the source's time comes from.
#[derive(Debug)]
pub enum Clock {
    /// The wall clock; the source sleeps until its next timer by itself.
    Wall,
    /// An instant the host sets ([`WorkSource::advance_to`]); the source never sleeps on it.
    Manual(AtomicU64),
}

impl Clock {
    fn now(&self) -> u64 {
        match self {
            Clock::Wall => now_ms(),
            Clock::Manual(now) => now.load(Ordering::Acquire),
        }
    }
}

/// One unit of work for the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The execution to run again.
    pub execution_id: String,
    /// What it has stored, read after the event below.
    pub snapshot: Snapshot,
    /// The deferred whose completion (a timer firing) made it runnable, if that is why.
    pub fired: Option<String>,
    /// Found running by a listing (recovery, a shard acquired, the periodic look), not woken
    /// by an event: a run of it live in the host goes on as it is.
    pub recovered: bool,
}

/// Why an execution is to be read and resumed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Why {
    /// Listed as running (recovery, a shard acquired, the periodic look).
    Listed,
    /// A timer fired, completing this deferred.
    Fired(String),
    /// Another process woke it (its status is running if that still holds).
    Woken,
    /// The host asked ([`WorkSource::resume`]).
    Asked,
}

/// What Python gets from [`WorkSource::take`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// Run an execution again, from its snapshot.
    Resume(Resume),
    /// A run of an execution awaited from another runner ended (complete, or suspended when
    /// that was asked for): its record.
    Ended {
        /// The execution.
        execution_id: String,
        /// Its record, read after the run ended.
        execution: Execution,
    },
    /// Run an entity's request now (its instance has a free slot).
    Deliver(Delivery),
    /// An entity instance was idle long enough: drop it.
    Passivate(Address),
    /// The final reply of a request sent to an entity on another runner, read from storage.
    Reply {
        /// The request.
        request_id: i64,
        /// The encoded exit.
        value: Vec<u8>,
    },
    /// Stop serving these shards: finish (or, `forced`, stop at once) the requests of their
    /// entities, then report them drained ([`WorkSource::drained`]).
    Release {
        /// The shards (`"group:id"`).
        shards: Vec<String>,
        /// The lease is lost already: nothing of these shards may be written any more.
        forced: bool,
    },
    /// The caller of a request another process sent here gave up: drop it, or stop its
    /// handler.
    Interrupt {
        /// The request.
        request_id: i64,
        /// Its entity.
        address: Address,
    },
    /// A request sent to another runner was taken there (`None`; those sent with `discard`)
    /// or refused for good.
    Routed {
        /// The request.
        request_id: i64,
        /// Why it was refused.
        refusal: Option<Refusal>,
    },
}

/// How long a runner remembers the requests its storage reads delivered. A copy of one that
/// comes over the transport is taken only within `FORWARD_CLAIM_MS - FORWARD_MARGIN_MS` of its
/// save, and a read delivers it only after its save: twice that covers clock skew too.
const FROM_STORAGE_KEPT_MS: u64 = 2 * FORWARD_CLAIM_MS;

/// Which shards a runner of a cluster serves (a single engine serves them all).
#[derive(Debug)]
struct Ownership {
    shards_per_group: NonZeroU32,
    owned: FxHashSet<String>,
    /// Acquired and not yet read: their claims are cleared before the next read.
    reset: Vec<String>,
    /// The requests a storage read delivered here within [`FROM_STORAGE_KEPT_MS`], by when:
    /// a copy of one sent here after its save is not taken (see `State::offer_all`).
    from_storage: FxHashSet<i64>,
    from_storage_order: VecDeque<(u64, i64)>,
    /// Shards to stop serving, for the host.
    releases: VecDeque<(Vec<String>, bool)>,
    /// Requests readied for instances of shards no longer held (being released): never handed
    /// to the host, and given back as queued when the shard is drained.
    withheld: Vec<Message>,
    /// The executions of the shards held: which to list as running next.
    executions: executions::Scans,
}

impl Ownership {
    /// A storage read delivered request `id` at `now`.
    fn delivered_from_storage(&mut self, id: i64, now: u64) {
        self.forget_from_storage(now);
        if self.from_storage.insert(id) {
            self.from_storage_order.push_back((now, id));
        }
    }

    fn delivered_from_storage_lately(&mut self, id: i64, now: u64) -> bool {
        self.forget_from_storage(now);
        self.from_storage.contains(&id)
    }

    fn forget_from_storage(&mut self, now: u64) {
        while let Some(&(at, id)) = self.from_storage_order.front() {
            if at.saturating_add(FROM_STORAGE_KEPT_MS) > now {
                break;
            }
            self.from_storage_order.pop_front();
            self.from_storage.remove(&id);
        }
    }
}

/// Requests sent to entities on other runners, whose final replies come from storage.
#[derive(Debug, Default)]
struct Awaited {
    ids: FxHashSet<i64>,
    /// Notified as replied: read at once.
    due: FxHashSet<i64>,
    /// Read every awaited reply at the next round (the regular poll, missed notifications).
    all: bool,
    next_poll: u64,
    poll_ms: u64,
    ready: VecDeque<(i64, Vec<u8>)>,
}

/// What the source wants done, and what it has ready.
#[derive(Debug)]
struct State {
    wheel: TimerWheel,
    /// The timers in the wheel: `(execution id, deferred)` by wheel id, and the other way.
    keys: FxHashMap<u64, (String, String)>,
    ids: FxHashMap<(String, String), u64>,
    next_id: u64,
    /// Stored timers due up to here (ms, or -1 before the first load) are in the wheel.
    loaded_until: i64,
    /// When the first stored timer after `loaded_until` is due, if known.
    stored_next: Option<u64>,
    /// The earliest timer the host stored beyond the window while a window was being read
    /// (the read may not see it).
    stored_during_load: Option<u64>,
    /// Executions to resume, each with why; read next.
    to_read: VecDeque<(String, Why)>,
    /// Read and waiting for the host.
    ready: VecDeque<Resume>,
    /// The mailboxes of the entities this source's runner holds.
    mail: Mailboxes,
    /// Instances passivated and not yet reported to the host.
    passivated: Vec<Address>,
    /// The stored entity requests still to deliver.
    storage: messages::Storage,
    /// `Some` on a runner of a cluster: the shards it serves.
    ownership: Option<Ownership>,
    /// Replies awaited from other runners.
    awaited: Awaited,
    /// Executions run on other runners whose ends are awaited here.
    ended: executions::Awaited,
    /// What the runners' transport brought: interrupts of requests sent here, and the fate
    /// of requests sent elsewhere.
    interrupts: Vec<(i64, Address)>,
    routed: Vec<(i64, Option<Refusal>)>,
    /// Whether the host changed something (time, a timer, a resume) that the driver has not
    /// looked at yet.
    pending: bool,
    /// Whether the driver is in a round (listing, loading, firing, reading).
    driving: bool,
    /// How far the start has come.
    phase: Phase,
}

/// The start of a source: list the executions found running, read the first window of timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Listing,
    Reading,
    Started,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    clock: Clock,
    /// Wakes the driver: a timer was added, time moved, the host took work, or closing.
    changed: Notify,
    /// Wakes the host's wait: work is ready, or the source closed.
    ready: Notify,
    /// Wakes those waiting for the source to have started (recovery listed, first window read).
    started: Notify,
    /// Wakes a host moving a manual clock: the next instant it must move to changed by
    /// something the host did not do itself (a stored request read, held back or unregistered).
    due_changed: Notify,
    /// Counts the changes `due_changed` reports, so a host that read `next_due` before it
    /// began to wait still hears of a change made in between.
    due_version: AtomicU64,
    closed: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent; a panic elsewhere while the lock
        // was held does not make it unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The work source of one engine. See the [module documentation](self).
#[derive(Debug)]
pub struct WorkSource {
    shared: Arc<Shared>,
}

/// The source was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the work source is closed")]
pub struct Closed;

impl WorkSource {
    /// Starts the source on `store`: it lists the executions found running (to resume them),
    /// loads the timers due within the horizon, and from then on fires timers as they fall due.
    ///
    /// Must be called inside a tokio runtime (the driver is a task of it).
    pub fn start(store: Arc<dyn Store>, clock: Clock) -> Self {
        Self::begin(store, clock, None, 200)
    }

    fn begin(
        store: Arc<dyn Store>,
        clock: Clock,
        ownership: Option<Ownership>,
        reply_poll_ms: u64,
    ) -> Self {
        let now = clock.now();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                wheel: TimerWheel::new(now),
                keys: FxHashMap::default(),
                ids: FxHashMap::default(),
                next_id: 1,
                loaded_until: -1,
                stored_next: None,
                stored_during_load: None,
                to_read: VecDeque::new(),
                ready: VecDeque::new(),
                mail: Mailboxes::new(None),
                passivated: Vec::new(),
                storage: messages::Storage::new(),
                ownership,
                awaited: Awaited {
                    poll_ms: reply_poll_ms.max(1),
                    ..Awaited::default()
                },
                ended: executions::Awaited::new(reply_poll_ms),
                interrupts: Vec::new(),
                routed: Vec::new(),
                pending: true,
                driving: false,
                phase: Phase::Listing,
            }),
            clock,
            changed: Notify::new(),
            ready: Notify::new(),
            started: Notify::new(),
            due_changed: Notify::new(),
            due_version: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(drive(Arc::clone(&shared), store));
        Self { shared }
    }

    /// Waits until work is ready to take.
    ///
    /// # Errors
    /// [`Closed`] once the source is closed.
    pub async fn wait(&self) -> Result<(), Closed> {
        loop {
            let notified = self.shared.ready.notified();
            tokio::pin!(notified);
            // Register before looking, so work readied between the look and the wait wakes us.
            notified.as_mut().enable();
            if self.shared.closed() {
                return Err(Closed);
            }
            if self.shared.state().has_work() {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Waits until the source has listed the executions found running and read its first
    /// window of timers (the work they give may not be ready yet).
    ///
    /// # Errors
    /// [`Closed`] once the source is closed.
    pub async fn started(&self) -> Result<(), Closed> {
        loop {
            let notified = self.shared.started.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.closed() {
                return Err(Closed);
            }
            if self.shared.state().has_started() {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Takes up to `max` units of ready work, oldest first.
    /// Entity requests come first, then passivations, then executions to resume.
    pub fn take(&self, max: usize) -> Vec<Work> {
        let (taken, resumed) =
            {
                let mut state = self.shared.state();
                let mut taken: Vec<Work> = state
                    .take_ready(max)
                    .into_iter()
                    .map(Work::Deliver)
                    .collect();
                if let Some(ownership) = &mut state.ownership {
                    taken.extend(
                        ownership
                            .releases
                            .drain(..)
                            .map(|(shards, forced)| Work::Release { shards, forced }),
                    );
                }
                taken.extend(state.interrupts.drain(..).map(|(request_id, address)| {
                    Work::Interrupt {
                        request_id,
                        address,
                    }
                }));
                taken.extend(
                    state
                        .routed
                        .drain(..)
                        .map(|(request_id, refusal)| Work::Routed {
                            request_id,
                            refusal,
                        }),
                );
                let ended = max.saturating_sub(taken.len()).min(state.ended.ready.len());
                taken.extend(
                    state
                        .ended
                        .ready
                        .drain(..ended)
                        .map(|(execution_id, execution)| Work::Ended {
                            execution_id,
                            execution,
                        }),
                );
                let replies = max
                    .saturating_sub(taken.len())
                    .min(state.awaited.ready.len());
                taken.extend(
                    state
                        .awaited
                        .ready
                        .drain(..replies)
                        .map(|(request_id, value)| Work::Reply { request_id, value }),
                );
                let passivated = max.saturating_sub(taken.len()).min(state.passivated.len());
                taken.extend(state.passivated.drain(..passivated).map(Work::Passivate));
                let resumes = max.saturating_sub(taken.len()).min(state.ready.len());
                taken.extend(state.ready.drain(..resumes).map(Work::Resume));
                (taken, resumes)
            };
        if resumed > 0 {
            // Room to read more.
            self.shared.changed.notify_one();
        }
        taken
    }

    /// Registers an entity type, so that its requests are taken (and its instances passivated
    /// by its options).
    pub fn register_entity(&self, entity_type: &str, options: EntityOptions) {
        let mut state = self.shared.state();
        state.mail.register(entity_type, options);
        // Stored requests of the type may be waiting for it.
        state.storage.wanted = true;
        drop(state);
        self.shared.changed.notify_one();
    }

    /// Sets how often stored entity requests are read regardless (`poll_ms`), and how long a
    /// stored request of an unregistered entity type waits for its type before the host gets
    /// it to answer with a defect.
    pub fn set_storage_options(&self, poll_ms: u64, registration_timeout_ms: u64) {
        let mut state = self.shared.state();
        state.storage.poll_ms = poll_ms;
        state.storage.registration_timeout_ms = registration_timeout_ms;
        drop(state);
        self.shared.changed.notify_one();
    }

    /// Reads the stored entity requests soon: the host saved some it did not deliver (held
    /// back by `deliver_at`, or refused by a full mailbox), or (`deliver_at_ms`) one is due
    /// then.
    /// With `when_room`, not now but once a slot frees (a full mailbox refused one).
    pub fn poll_storage(&self, deliver_at_ms: Option<u64>, when_room: bool) {
        let mut state = self.shared.state();
        match deliver_at_ms {
            Some(at) => {
                let storage = &mut state.storage;
                storage.next_deliver_at = earliest([storage.next_deliver_at, Some(at)]);
                if storage.reading {
                    storage.hinted_during_read = earliest([storage.hinted_during_read, Some(at)]);
                }
            }
            None if when_room => state.storage.refused = true,
            None => state.storage.wanted = true,
        }
        state.pending = true;
        drop(state);
        self.shared.changed.notify_one();
    }

    /// Starts the source of a runner of a cluster on `store`: it serves the entities and the
    /// executions of the shards the cluster hands it through [`WorkSource::shard_host`] (none
    /// at first). On acquiring shards it lists their running executions and loads their
    /// timers; it lists every held shard's running executions again every `scan_ms` (what a
    /// lost notification missed). Replies and ends of executions awaited from other runners
    /// are read every `reply_poll_ms` besides when notified.
    pub fn start_runner(
        store: Arc<dyn Store>,
        clock: Clock,
        shards_per_group: NonZeroU32,
        reply_poll_ms: u64,
        scan_ms: u64,
    ) -> Self {
        Self::begin(
            store,
            clock,
            Some(Ownership {
                shards_per_group,
                owned: FxHashSet::default(),
                reset: Vec::new(),
                releases: VecDeque::new(),
                withheld: Vec::new(),
                from_storage: FxHashSet::default(),
                from_storage_order: VecDeque::new(),
                executions: executions::Scans::new(scan_ms),
            }),
            reply_poll_ms,
        )
    }

    /// What the cluster reports to: this source.
    pub fn shard_host(&self) -> Arc<dyn ShardHost> {
        Arc::new(SourceHost(Arc::clone(&self.shared)))
    }

    /// What the runners' transport reports to: this source.
    pub fn inbox(&self) -> Arc<dyn Inbox> {
        Arc::new(SourceHost(Arc::clone(&self.shared)))
    }

    /// Whether this process serves the entity `entity_id` now (always, for a single engine).
    pub fn owns(&self, entity_id: &str) -> bool {
        self.shared.state().unowned_shard(entity_id).is_none()
    }

    /// The shards this runner serves, sorted (`None`: a single engine, which serves all).
    pub fn owned_shards(&self) -> Option<Vec<String>> {
        let state = self.shared.state();
        let ownership = state.ownership.as_ref()?;
        let mut shards: Vec<String> = ownership.owned.iter().cloned().collect();
        shards.sort();
        Some(shards)
    }

    /// Waits for the final replies of these requests, sent to entities on other runners: they
    /// come as [`Work::Reply`] once stored.
    pub fn await_replies(&self, ids: &[i64]) {
        let mut state = self.shared.state();
        state.awaited.ids.extend(ids.iter().copied());
        if state.awaited.next_poll == 0 {
            state.awaited.next_poll = self.shared.clock.now() + state.awaited.poll_ms;
        }
        drop(state);
        self.shared.changed.notify_one();
    }

    /// Stops waiting for these replies (their callers gave up).
    pub fn forget_replies(&self, ids: &[i64]) {
        let mut state = self.shared.state();
        for id in ids {
            state.awaited.ids.remove(id);
            state.awaited.due.remove(id);
        }
    }

    /// The host finished (or stopped) the entities of these shards: their instances leave the
    /// mailboxes. Returns the ids of the requests they run, and the requests they held that
    /// never ran.
    pub fn drained(&self, shards: &[String]) -> (Vec<i64>, Vec<Message>) {
        let mut state = self.shared.state();
        let Some(ownership) = &state.ownership else {
            return (Vec::new(), Vec::new());
        };
        let per_group = ownership.shards_per_group;
        let shards: FxHashSet<&str> = shards.iter().map(String::as_str).collect();
        let gone: Vec<Address> = state
            .mail
            .addresses()
            .filter(|a| shards.contains(default_shard(&a.entity_id, per_group).as_str()))
            .cloned()
            .collect();
        let (mut running, mut queued) = (Vec::new(), Vec::new());
        for address in &gone {
            let (ids, messages) = state.mail.evict_moving(address);
            running.extend(ids);
            queued.extend(messages);
        }
        if let Some(ownership) = &mut state.ownership {
            let (gone_withheld, kept): (Vec<Message>, Vec<Message>) =
                std::mem::take(&mut ownership.withheld)
                    .into_iter()
                    .partition(|m| {
                        shards.contains(default_shard(&m.address.entity_id, per_group).as_str())
                    });
            ownership.withheld = kept;
            let withheld: FxHashSet<i64> = gone_withheld.iter().map(|m| m.request_id).collect();
            running.retain(|id| !withheld.contains(id));
            queued.extend(gone_withheld);
        }
        (running, queued)
    }

    /// Bounds the resident entity instances (`None`: unbounded).
    pub fn set_max_resident(&self, max_resident: Option<usize>) {
        self.shared.state().mail.set_max_resident(max_resident);
    }

    /// Offers entity requests to their mailboxes: one answer per message (taken, or why not),
    /// and every request that may run now, these and any readied meanwhile.
    pub fn offer(&self, messages: Vec<Message>) -> (Vec<Result<(), Refusal>>, Vec<Delivery>) {
        let now = self.shared.clock.now();
        let mut state = self.shared.state();
        let answers = state.offer_all(messages, now);
        let ready = state.take_ready(usize::MAX);
        drop(state);
        // Instances that took a request are busy: the next passivation comes no earlier, and
        // the driver, which wakes for it anyway, need not look now.
        (answers, ready)
    }

    /// Requests that got their final reply (or were dropped) free their slots: returns every
    /// request that may run now.
    pub fn done(&self, finished: &[(Address, i64)]) -> Vec<Delivery> {
        let now = self.shared.clock.now();
        let mut state = self.shared.state();
        let next_before = state.mail.next_passivation();
        for (address, request_id) in finished {
            state.mail.done(address, *request_id, now);
        }
        let mut wake = false;
        if state.storage.refused && !finished.is_empty() {
            // A slot freed: what a read could not place may fit now.
            state.storage.refused = false;
            state.storage.wanted = true;
            wake = true;
        }
        // An instance gone idle may be the next to passivate.
        let next_after = state.mail.next_passivation();
        wake |= next_after.is_some_and(|after| next_before.is_none_or(|before| after < before));
        let ready = state.take_ready(usize::MAX);
        drop(state);
        if wake {
            self.shared.changed.notify_one();
        }
        ready
    }

    /// Keeps an entity instance resident whatever its idle time, or lets it go idle again.
    /// Returns whether it is resident.
    pub fn keep_alive(&self, address: &Address, enabled: bool) -> bool {
        let kept = self.shared.state().mail.keep_alive(address, enabled);
        self.shared.changed.notify_one();
        kept
    }

    /// Drops an entity instance and what it held (a handler defect restarts it): the ids of
    /// the requests the host was given, and the requests it never was.
    pub fn evict(&self, address: &Address) -> (Vec<i64>, Vec<Message>) {
        self.shared.state().mail.evict_moving(address)
    }

    /// Resident entity instances.
    pub fn resident(&self) -> usize {
        self.shared.state().mail.resident()
    }

    /// The host stored a timer: it goes into the wheel if it falls within the loaded window,
    /// else it may move the next load earlier.
    pub fn scheduled(&self, execution_id: &str, name: &str, due_ms: u64) {
        {
            let mut state = self.shared.state();
            let due = i64::try_from(due_ms).unwrap_or(i64::MAX);
            if due <= state.loaded_until {
                add_timer(&mut state, execution_id, name, due_ms);
            } else if state.stored_next.is_none_or(|next| due_ms < next) {
                state.stored_next = Some(due_ms);
                state.stored_during_load =
                    Some(state.stored_during_load.map_or(due_ms, |d| d.min(due_ms)));
            } else {
                state.stored_during_load =
                    Some(state.stored_during_load.map_or(due_ms, |d| d.min(due_ms)));
                return;
            }
            state.pending = true;
        }
        self.shared.changed.notify_one();
    }

    /// Resumes these executions: their snapshots are read and handed out as work.
    pub fn resume(&self, ids: impl IntoIterator<Item = String>) {
        {
            let mut state = self.shared.state();
            state
                .to_read
                .extend(ids.into_iter().map(|id| (id, Why::Asked)));
            state.pending = true;
        }
        self.shared.changed.notify_one();
    }

    /// The count of changes [`WorkSource::due_changed`] reports: read it before
    /// [`WorkSource::next_due`], and wait from it.
    pub fn due_version(&self) -> u64 {
        self.shared.due_version.load(Ordering::Acquire)
    }

    /// Waits until [`WorkSource::next_due`] may have changed by the source's own doing since
    /// `since` (a [`WorkSource::due_version`]): what a host moving a manual clock waits on
    /// beside its own changes. A change before the wait began counts: it returns at once.
    ///
    /// # Errors
    /// [`Closed`] once the source is closed.
    pub async fn due_changed(&self, since: u64) -> Result<(), Closed> {
        let notified = self.shared.due_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.shared.closed() {
            return Err(Closed);
        }
        if self.due_version() != since {
            return Ok(());
        }
        notified.await;
        if self.shared.closed() {
            return Err(Closed);
        }
        Ok(())
    }

    /// Moves a manual clock to `now_ms` (never backwards); nothing on the wall clock.
    pub fn advance_to(&self, now_ms: u64) {
        if let Clock::Manual(now) = &self.shared.clock {
            let before = now.fetch_max(now_ms, Ordering::AcqRel);
            if now_ms > before {
                self.shared.state().pending = true;
                self.shared.changed.notify_one();
            }
        }
    }

    /// When the source next needs time to move: its earliest timer, or the load of the next
    /// window. What a host driving a manual clock sleeps until.
    pub fn next_due(&self) -> Option<u64> {
        let state = self.shared.state();
        if !state.has_started() {
            // Until then it cannot tell: now, so that a host keeps looking.
            return Some(self.shared.clock.now());
        }
        let load_at = state
            .stored_next
            .map(|next| next.saturating_sub(HORIZON_MS / 2));
        earliest([
            state.wheel.next_due(),
            load_at,
            state.mail.next_passivation(),
            state.storage.next_read(false),
        ])
    }

    /// Whether the source holds work not yet taken: a change it has not looked at, a round
    /// under way (listing, loading, firing, reading), executions to read, stored requests to
    /// read, or ready work.
    pub fn busy(&self) -> bool {
        let state = self.shared.state();
        state.pending
            || state.driving
            || !state.to_read.is_empty()
            || state.storage.wanted
            || state.has_work()
    }

    /// The timers in memory, as `(execution id, deferred name)`.
    pub fn timers_in_memory(&self) -> Vec<(String, String)> {
        let state = self.shared.state();
        let mut keys: Vec<_> = state.ids.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Stops the driver; waiters get [`Closed`]. What was not fired or taken stays in the store.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.changed.notify_one();
        self.shared.ready.notify_waiters();
        self.shared.started.notify_waiters();
        self.shared.due_changed.notify_waiters();
    }

    /// Entity requests waiting in this source's mailboxes, by entity type (see
    /// [`Mailboxes::depths`]).
    pub fn mailbox_depths(&self) -> Vec<(String, usize)> {
        self.shared.state().mail.depths()
    }
}

impl Drop for WorkSource {
    fn drop(&mut self) {
        self.close();
    }
}

/// The shard of an entity in the default group, as `"default:<id>"`.
fn default_shard(entity_id: &str, shards_per_group: NonZeroU32) -> String {
    format!("default:{}", shard_id(entity_id, shards_per_group))
}

/// What the cluster's loop reports to a runner's source.
struct SourceHost(Arc<Shared>);

impl ShardHost for SourceHost {
    fn acquired(&self, shards: Vec<String>) {
        let mut state = self.0.state();
        if let Some(ownership) = &mut state.ownership {
            ownership.owned.extend(shards.iter().cloned());
            ownership.executions.acquired(&shards);
            ownership.reset.extend(shards);
        }
        state.storage.wanted = true;
        state.pending = true;
        drop(state);
        self.0.changed.notify_one();
    }

    fn releasing(&self, shards: Vec<String>, forced: bool) {
        let mut state = self.0.state();
        if let Some(ownership) = &mut state.ownership {
            for shard in &shards {
                ownership.owned.remove(shard);
            }
            ownership.reset.retain(|shard| !shards.contains(shard));
            ownership.releases.push_back((shards, forced));
        }
        drop(state);
        self.0.ready.notify_waiters();
    }

    fn requests_saved(&self, shards: &[String]) {
        let mut state = self.0.state();
        let ours = state
            .ownership
            .as_ref()
            .is_some_and(|o| shards.iter().any(|shard| o.owned.contains(shard)));
        if ours {
            state.storage.wanted = true;
            state.pending = true;
            drop(state);
            self.0.changed.notify_one();
        }
    }

    fn replies_saved(&self, ids: &[i64]) {
        let mut state = self.0.state();
        let mut any = false;
        for id in ids {
            if state.awaited.ids.contains(id) {
                state.awaited.due.insert(*id);
                any = true;
            }
        }
        if any {
            state.pending = true;
            drop(state);
            self.0.changed.notify_one();
        }
    }

    fn executions_woken(&self, ids: Vec<String>) {
        let mut state = self.0.state();
        let before = state.to_read.len();
        for id in ids {
            if state.unowned_shard(&id).is_none() {
                state.to_read.push_back((id, Why::Woken));
            }
        }
        if state.to_read.len() > before {
            state.pending = true;
            drop(state);
            self.0.changed.notify_one();
        }
    }

    fn executions_ended(&self, ids: &[String]) {
        let mut state = self.0.state();
        if state.ended.notified(ids) {
            state.pending = true;
            drop(state);
            self.0.changed.notify_one();
        }
    }

    fn missed(&self) {
        let mut state = self.0.state();
        state.storage.wanted = true;
        state.awaited.all = true;
        state.ended.read_all();
        if let Some(ownership) = &mut state.ownership {
            ownership.executions.scan_all();
        }
        state.pending = true;
        drop(state);
        self.0.changed.notify_one();
    }

    fn resident(&self) -> usize {
        self.0.state().mail.resident()
    }
}

impl Inbox for SourceHost {
    fn offer_remote(&self, messages: Vec<Message>) -> Vec<Result<(), Refusal>> {
        let now = self.0.clock.now();
        let mut state = self.0.state();
        let answers = state.offer_all(messages, now);
        // What may run now waits in the mailboxes for the host's next take.
        let ready = state.mail.ready() > 0;
        drop(state);
        if ready {
            self.0.ready.notify_waiters();
        }
        answers
    }

    fn interrupt_remote(&self, requests: Vec<(i64, Address)>) {
        self.0.state().interrupts.extend(requests);
        self.0.ready.notify_waiters();
    }

    fn remote_replies(&self, replies: Vec<(i64, Vec<u8>)>) {
        self.0.state().awaited.ready.extend(replies);
        self.0.ready.notify_waiters();
    }

    fn routed(&self, requests: Vec<(i64, Option<Refusal>)>) {
        self.0.state().routed.extend(requests);
        self.0.ready.notify_waiters();
    }
}

/// Reads the replies awaited from other runners that are due: those notified, or every one at
/// the regular poll (`entity_reply_poll_interval`) or after missed notifications.
async fn read_replies(shared: &Shared, store: &dyn Store) -> Result<bool, StoreError> {
    let now = shared.clock.now();
    let ids: Vec<i64> = {
        let mut state = shared.state();
        let awaited = &mut state.awaited;
        if awaited.ids.is_empty() {
            awaited.due.clear();
            awaited.next_poll = 0;
            return Ok(false);
        }
        if awaited.all || awaited.next_poll <= now {
            awaited.all = false;
            awaited.due.clear();
            awaited.next_poll = now + awaited.poll_ms;
            awaited.ids.iter().copied().collect()
        } else if awaited.due.is_empty() {
            return Ok(false);
        } else {
            awaited.due.drain().collect()
        }
    };
    let found = match store.replies(&ids).await {
        Ok(found) => found,
        Err(err) => {
            shared.state().awaited.all = true;
            return Err(err);
        }
    };
    let mut state = shared.state();
    let mut readied = false;
    for (id, reply) in ids.into_iter().zip(found) {
        if let Some(value) = reply {
            if state.awaited.ids.remove(&id) {
                state.awaited.ready.push_back((id, value));
                readied = true;
            }
        }
    }
    drop(state);
    if readied {
        shared.ready.notify_waiters();
    }
    Ok(readied)
}

/// The earliest of some instants.
fn earliest(instants: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    instants.into_iter().flatten().min()
}

impl State {
    /// Whether anything waits for the host to take it.
    fn has_work(&self) -> bool {
        !self.ready.is_empty()
            || self.mail.ready() > 0
            || !self.passivated.is_empty()
            || !self.awaited.ready.is_empty()
            || !self.ended.ready.is_empty()
            || !self.interrupts.is_empty()
            || !self.routed.is_empty()
            || self
                .ownership
                .as_ref()
                .is_some_and(|o| !o.releases.is_empty())
    }

    /// The shard of `entity_id` if this runner does not serve it (`None` for a single engine).
    /// Up to `max` requests ready to run, without those of shards no longer held: they are
    /// withheld, for [`WorkSource::drained`] to give back.
    fn take_ready(&mut self, max: usize) -> Vec<Delivery> {
        let ready = self.mail.take(max);
        let Some(ownership) = &mut self.ownership else {
            return ready;
        };
        let per_group = ownership.shards_per_group;
        let (owned, withheld): (Vec<Delivery>, Vec<Delivery>) = ready.into_iter().partition(|d| {
            ownership
                .owned
                .contains(&default_shard(&d.message.address.entity_id, per_group))
        });
        ownership
            .withheld
            .extend(withheld.into_iter().map(|d| d.message));
        owned
    }

    /// Offers requests to the mailboxes of the shards held here: one answer each.
    fn offer_all(&mut self, messages: Vec<Message>, now: u64) -> Vec<Result<(), Refusal>> {
        messages
            .into_iter()
            .map(|message| {
                if let Some(shard) = self.unowned_shard(&message.address.entity_id) {
                    return Err(Refusal::NotAssigned {
                        shard,
                        entity_type: message.address.entity_type,
                        entity_id: message.address.entity_id,
                    });
                }
                if let Some(saved) = message.saved_ms {
                    if !self.sent_after_save_stands(message.request_id, saved, now) {
                        // Left to storage: its sender clears its claim and wakes this owner.
                        return Err(Refusal::NotAssigned {
                            shard: self.shard_of(&message.address.entity_id),
                            entity_type: message.address.entity_type,
                            entity_id: message.address.entity_id,
                        });
                    }
                }
                let persisted = message.persisted;
                let offered = self.mail.offer(message, now);
                if persisted && matches!(offered, Err(Refusal::MailboxFull { .. })) {
                    // Stored: its sender clears its claim, and a read takes it once a slot
                    // frees.
                    self.storage.refused = true;
                }
                offered
            })
            .collect()
    }

    /// Whether a persisted request its sender saved at `saved` (claimed for
    /// [`FORWARD_CLAIM_MS`]) and then sent here may be taken: no storage read can have
    /// delivered it. Its claim must stand for [`FORWARD_MARGIN_MS`] more by this runner's
    /// clock, which is the one its reads judge the claim by (once taken, a read finds it held
    /// and leaves it); and no read here delivered it lately, which one may have done if this
    /// runner cleared its shard's claims on acquiring it after the save, or its sender cleared
    /// the claim after a send that failed on the way. Otherwise it is left to storage.
    fn sent_after_save_stands(&mut self, request_id: i64, saved: u64, now: u64) -> bool {
        if now.saturating_add(FORWARD_MARGIN_MS) >= saved.saturating_add(FORWARD_CLAIM_MS) {
            return false;
        }
        self.ownership
            .as_mut()
            .is_none_or(|ownership| !ownership.delivered_from_storage_lately(request_id, now))
    }

    fn shard_of(&self, entity_id: &str) -> String {
        let shards = self.ownership.as_ref().map_or(
            NonZeroU32::new(crate::shard::DEFAULT_SHARDS_PER_GROUP).unwrap_or(NonZeroU32::MIN),
            |o| o.shards_per_group,
        );
        default_shard(entity_id, shards)
    }

    fn unowned_shard(&self, entity_id: &str) -> Option<String> {
        let ownership = self.ownership.as_ref()?;
        let shard = default_shard(entity_id, ownership.shards_per_group);
        (!ownership.owned.contains(&shard)).then_some(shard)
    }

    fn has_started(&self) -> bool {
        self.phase == Phase::Started
    }
}

fn add_timer(state: &mut State, execution_id: &str, name: &str, due_ms: u64) {
    let key = (execution_id.to_owned(), name.to_owned());
    if state.ids.contains_key(&key) {
        return; // loaded from the store and reported by the host both
    }
    let id = state.next_id;
    state.next_id += 1;
    state.wheel.insert(id, due_ms);
    state.keys.insert(id, key.clone());
    state.ids.insert(key, id);
}

/// Waits between retries of a failed store call.
struct Backoff(Duration);

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (delay * 2).min(RETRY_MAX);
        delay
    }
}

/// The driver: recovery, window loads, firing and reading, until the source closes.
async fn drive(shared: Arc<Shared>, store: Arc<dyn Store>) {
    let mut backoff = Backoff(RETRY_FIRST);
    loop {
        if shared.closed() {
            return;
        }
        // Registered before the round, so a change during it wakes the wait below at once.
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let mut state = shared.state();
            state.pending = false;
            state.driving = true;
        }
        let storage_due = shared.state().storage.next_read(false);
        let outcome = round(&shared, store.as_ref()).await;
        let moved = {
            let mut state = shared.state();
            state.driving = false;
            state.storage.next_read(false) != storage_due
        };
        if moved && matches!(shared.clock, Clock::Manual(_)) {
            shared.due_version.fetch_add(1, Ordering::AcqRel);
            shared.due_changed.notify_waiters();
        }
        match outcome {
            Ok(true) => {
                backoff = Backoff(RETRY_FIRST);
                continue;
            }
            Ok(false) => backoff = Backoff(RETRY_FIRST),
            Err(err) => {
                log::warn!(
                    target: "plait.work",
                    "the work source could not reach its store ({err}); retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff.next()) => {}
                    () = &mut changed => {}
                }
                continue;
            }
        }
        let sleep = match shared.clock {
            Clock::Wall => next_wake(&shared)
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())).min(MAX_SLEEP)),
            Clock::Manual(_) => None,
        };
        match sleep {
            Some(sleep) => {
                tokio::select! {
                    () = tokio::time::sleep(sleep) => {}
                    () = &mut changed => {}
                }
            }
            None => changed.await,
        }
    }
}

/// When the driver must look again on the wall clock: the wheel's next slot deadline (O(1),
/// never after its next timer) or the next window's load.
fn next_wake(shared: &Shared) -> Option<u64> {
    let state = shared.state();
    let load_at = state
        .stored_next
        .map(|next| next.saturating_sub(HORIZON_MS / 2));
    earliest([
        state.wheel.next_deadline(),
        load_at,
        state.mail.next_passivation(),
        state.storage.next_read(true),
        (!state.awaited.ids.is_empty()).then_some(state.awaited.next_poll),
        state.ended.next_poll(),
        state
            .ownership
            .as_ref()
            .and_then(|o| o.executions.next_scan(&o.owned)),
    ])
}

/// One round of the driver's work. Returns whether it did something (so another round may
/// find more at once).
async fn round(shared: &Shared, store: &dyn Store) -> Result<bool, StoreError> {
    if recover(shared, store).await? {
        return Ok(true);
    }
    if load_window(shared, store).await? {
        return Ok(true);
    }
    if reload_timers(shared, store).await? {
        return Ok(true);
    }
    passivate(shared);
    let delivered = messages::read(shared, store).await?;
    let replied = read_replies(shared, store).await?;
    let ended = executions::read_ended(shared, store).await?;
    // Both in each round, so that Python gets the first executions to resume while later
    // timers are still being fired.
    let fired = fire_due(shared, store).await?;
    let read = read_snapshots(shared, store).await?;
    Ok(delivered || replied || ended || fired || read)
}

/// Passivates the entity instances idle long enough, for the host to drop.
fn passivate(shared: &Shared) {
    let now = shared.clock.now();
    let mut state = shared.state();
    let gone = state.mail.passivate_idle(now);
    if !gone.is_empty() {
        state.passivated.extend(gone);
        drop(state);
        shared.ready.notify_waiters();
    }
}

/// At start: the executions found running are queued to resume. On a runner of a cluster,
/// only those of the shards it holds, and again for the shards it acquires and at every
/// periodic look.
async fn recover(shared: &Shared, store: &dyn Store) -> Result<bool, StoreError> {
    let now = shared.clock.now();
    let (first, scan) = {
        let mut state = shared.state();
        let first = state.phase == Phase::Listing;
        let scan = match &mut state.ownership {
            Some(ownership) => ownership.executions.take(&ownership.owned, now),
            None => None,
        };
        if !first && scan.is_none() {
            return Ok(false);
        }
        (first, scan)
    };
    // A runner holding nothing yet lists nothing.
    let running = if first && scan.is_none() && shared.state().ownership.is_some() {
        Vec::new()
    } else {
        match store.with_status(Status::Running).await {
            Ok(running) => running,
            Err(err) => {
                if let (Some(shards), Some(ownership)) = (scan, &mut shared.state().ownership) {
                    ownership.executions.retry(shards);
                }
                return Err(err);
            }
        }
    };
    let mut state = shared.state();
    let per_group = state.ownership.as_ref().map(|o| o.shards_per_group);
    let listed = running.into_iter().filter(|id| match (&scan, per_group) {
        (Some(shards), Some(per_group)) => shards.contains(&default_shard(id, per_group)),
        _ => true,
    });
    let before = state.to_read.len();
    state.to_read.extend(listed.map(|id| (id, Why::Listed)));
    let found = state.to_read.len() > before;
    if first {
        state.phase = Phase::Reading;
    }
    Ok(first || found)
}

/// Loads the stored timers of the next window, half a horizon before it is needed (and at
/// start).
async fn load_window(shared: &Shared, store: &dyn Store) -> Result<bool, StoreError> {
    let now = shared.clock.now();
    let (after, until) = {
        let mut state = shared.state();
        let first = state.loaded_until < 0;
        let due = state
            .stored_next
            .is_some_and(|next| next.saturating_sub(HORIZON_MS / 2) <= now);
        if !first && !due {
            return Ok(false);
        }
        let after = state.loaded_until;
        let until = i64::try_from(now.saturating_add(HORIZON_MS)).unwrap_or(i64::MAX);
        // Set first: a timer the host stores during the read goes into the wheel directly.
        // `stored_next` stays until the read answers, so that `next_due` keeps asking for the
        // time of this load meanwhile (a host driving a manual clock must not stop looking).
        state.loaded_until = until;
        state.stored_during_load = None;
        (after, until)
    };
    let loaded = store.timers_between(after, until).await;
    let mut state = shared.state();
    match loaded {
        Ok((timers, following)) => {
            if state.phase == Phase::Reading {
                state.phase = Phase::Started;
                shared.started.notify_waiters();
            }
            for timer in timers {
                // A runner keeps the timers of the shards it holds; it reads those of a shard
                // it acquires later then (`reload_timers`).
                if state.unowned_shard(&timer.execution_id).is_none() {
                    add_timer(&mut state, &timer.execution_id, &timer.name, timer.due_ms);
                }
            }
            // A timer the host stored meanwhile beyond the window may be earlier still.
            state.stored_next = match (state.stored_during_load.take(), following) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Ok(true)
        }
        Err(err) => {
            // Read again next round (`stored_next` still asks for it, or `loaded_until` is back
            // below 0 for the first load).
            state.loaded_until = after;
            if let Some(during) = state.stored_during_load.take() {
                state.stored_next = Some(state.stored_next.map_or(during, |next| next.min(during)));
            }
            Err(err)
        }
    }
}

/// A runner that acquired shards reads the loaded window's stored timers again, for those of
/// the shards acquired (the window's read kept only the shards held then).
async fn reload_timers(shared: &Shared, store: &dyn Store) -> Result<bool, StoreError> {
    let until = {
        let mut state = shared.state();
        let until = state.loaded_until;
        match &mut state.ownership {
            Some(ownership) if until >= 0 && ownership.executions.reload_timers => {
                ownership.executions.reload_timers = false;
                until
            }
            _ => return Ok(false),
        }
    };
    let loaded = store.timers_between(-1, until).await;
    let mut state = shared.state();
    match loaded {
        Ok((timers, _)) => {
            for timer in timers {
                if state.unowned_shard(&timer.execution_id).is_none() {
                    add_timer(&mut state, &timer.execution_id, &timer.name, timer.due_ms);
                }
            }
            Ok(true)
        }
        Err(err) => {
            if let Some(ownership) = &mut state.ownership {
                ownership.executions.reload_timers = true;
            }
            Err(err)
        }
    }
}

/// Fires the timers due now: per timer, the deferred, the execution's running mark and the
/// timer's removal, all in one write (one transaction), so a crash keeps all or none.
async fn fire_due(shared: &Shared, store: &dyn Store) -> Result<bool, StoreError> {
    let now = shared.clock.now();
    // On a runner, each with the shard its execution belongs to: fired as that shard's owner.
    let due: Vec<(u64, String, String, Option<String>)> = {
        let mut state = shared.state();
        let taken = state.wheel.take_due(now, CHUNK);
        let mut due = Vec::with_capacity(taken.len());
        for expired in taken {
            if let Some((execution_id, name)) = state.keys.remove(&expired.id) {
                state.ids.remove(&(execution_id.clone(), name.clone()));
                let owned_by = match &state.ownership {
                    None => None,
                    Some(ownership) => {
                        let lease = default_shard(&execution_id, ownership.shards_per_group);
                        if !ownership.owned.contains(&lease) {
                            // Its shard moved away: its new owner loaded it.
                            continue;
                        }
                        Some(lease)
                    }
                };
                due.push((expired.due_ms, execution_id, name, owned_by));
            }
        }
        due
    };
    if due.is_empty() {
        return Ok(false);
    }
    let owned = |owner: &Option<String>, op: Op| match owner {
        Some(lease) => Op::Owned {
            shard: lease.clone(),
            op: Box::new(op),
        },
        None => op,
    };
    let mut ops = Vec::with_capacity(due.len() * 3);
    for (_, execution_id, name, owner) in &due {
        ops.push(owned(
            owner,
            Op::Deferred {
                id: execution_id.clone(),
                name: name.clone(),
                value: VOID.to_vec(),
            },
        ));
        ops.push(owned(
            owner,
            Op::Status {
                id: execution_id.clone(),
                status: Status::Running,
                result: None,
            },
        ));
        ops.push(owned(
            owner,
            Op::Untimer {
                execution_id: execution_id.clone(),
                name: name.clone(),
            },
        ));
    }
    let written = match store.write(ops) {
        Ok(answer) => answer.await,
        Err(err) => Err(err),
    };
    let mut state = shared.state();
    match written {
        Ok(results) => {
            for ((_, execution_id, name, _), outcome) in due.into_iter().zip(results.chunks(3)) {
                // Stored now, and the execution not complete: it has a run to make. (Fenced:
                // the shard's lease was lost; its new owner fires it.)
                if outcome[0] == OpResult::Done(true) && outcome[1] == OpResult::Done(true) {
                    state.to_read.push_back((execution_id, Why::Fired(name)));
                }
            }
            Ok(true)
        }
        Err(err) => {
            // Back into the wheel, due at once: fired again next round.
            for (due_ms, execution_id, name, _) in due {
                add_timer(&mut state, &execution_id, &name, due_ms);
            }
            Err(err)
        }
    }
}

/// Reads the snapshots of executions to resume, while there is room for them in `ready`.
async fn read_snapshots(shared: &Shared, store: &dyn Store) -> Result<bool, StoreError> {
    let chunk: Vec<(String, Why)> = {
        let mut state = shared.state();
        let room = READY_CAP.saturating_sub(state.ready.len()).min(CHUNK);
        let count = room.min(state.to_read.len());
        state.to_read.drain(..count).collect()
    };
    if chunk.is_empty() {
        return Ok(false);
    }
    let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
    let read = store.snapshots(&ids).await;
    let mut state = shared.state();
    match read {
        Ok(snapshots) => {
            let mut readied = false;
            for ((execution_id, why), snapshot) in chunk.into_iter().zip(snapshots) {
                let Some(snapshot) = snapshot else { continue };
                // One woken by another process may be stored suspended again by the time it
                // is read (its run here was ending as the other process woke it): it runs
                // again all the same, or that wake-up would be lost.
                if snapshot.execution.status != Status::Complete {
                    state.ready.push_back(Resume {
                        execution_id,
                        snapshot,
                        recovered: why == Why::Listed,
                        fired: match why {
                            Why::Fired(name) => Some(name),
                            _ => None,
                        },
                    });
                    readied = true;
                }
            }
            drop(state);
            if readied {
                shared.ready.notify_waiters();
            }
            Ok(true)
        }
        Err(err) => {
            // Back to the front of the queue, in order.
            for item in chunk.into_iter().rev() {
                state.to_read.push_front(item);
            }
            Err(err)
        }
    }
}
