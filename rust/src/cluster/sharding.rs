//! A runner's part in the cluster (Effect's `Sharding` background loops): registration and
//! heartbeat, the ring every runner computes alike from the healthy runners, shard leases
//! acquired, renewed and released, and the store's notifications passed on.
//!
//! One task per runner runs it all ([`Sharding::start`]); what it decides reaches the runner's
//! work source through [`ShardHost`]:
//!
//! - **Assignment.** Every `refresh_assignments` (3 s), and at once when the store notifies a
//!   runner joining or leaving, the loop bumps its heartbeat and reads the runners. The healthy
//!   ones (heartbeat fresher than the lease expiry, process alive by its session lock) form one
//!   ring per shard group ([`crate::shard::HashRing`], Effect's), which assigns every shard.
//! - **Acquisition.** Shards assigned here and not held are acquired (a lease per shard, each a
//!   new epoch; see `store::sql::runners`), tried again every second until held. Only then does
//!   the host serve them: their claims are cleared and their stored requests read.
//! - **Release.** A held shard assigned elsewhere is handed to the host to drain (its entities
//!   finish within `termination_timeout`), then its lease is released for the new owner.
//! - **Renewal.** Held leases are renewed every `refresh_interval`. A lease found taken over,
//!   or refused by the database inside a commit (`ShardFences`), is lost: the host stops its
//!   entities at once. A runner that cannot renew for most of the lease's life stops serving
//!   every shard, since its leases are about to lapse (Effect's lock-unhealthy state); the
//!   database's fencing keeps it from writing as an owner either way.

use std::{
    collections::{BTreeMap, BTreeSet},
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use rustc_hash::FxHashSet;
use tokio::sync::{mpsc, watch, Notify};

use crate::{
    cluster::transport::{Endpoint, InRings, Inbox, Route, Transport, TransportError},
    shard::{shard_id, HashRing},
    store::sql::{Notification, RunnerStorage, ShardFences, SqlError, SqlStore},
};

/// How a runner takes part in the cluster (Effect's `ShardingConfig`, the parts of it here).
#[derive(Clone, Debug)]
pub struct ShardingOptions {
    /// Where other runners reach this one, `"host:port"`.
    pub address: String,
    /// Where it listens for them, if not at `address`.
    pub listen: Option<String>,
    /// How long a volatile request refused as not assigned, or whose runner cannot be
    /// reached, waits before it is routed again.
    pub send_retry: Duration,
    /// Its relative share of the shards.
    pub weight: f64,
    /// Every shard group of the cluster.
    pub available_groups: Vec<String>,
    /// The groups this runner serves.
    pub groups: Vec<String>,
    /// Shards per group, the same on every runner.
    pub shards_per_group: NonZeroU32,
    /// How long a lease lasts unrenewed, and how old a heartbeat may be.
    pub lock_expiration: Duration,
    /// How often held leases are renewed.
    pub refresh_interval: Duration,
    /// How often the runners are read again.
    pub refresh_assignments: Duration,
    /// How long a shard's entities may take to finish when it moves.
    pub termination_timeout: Duration,
    /// Whether runners hold a session lock that shows them alive.
    pub advisory: bool,
    /// How often the runners are pinged (by one of them), and those that do not answer
    /// marked unhealthy.
    pub health_check_interval: Duration,
}

/// What the cluster tells the runner's work source.
pub trait ShardHost: Send + Sync {
    /// Serve these shards from now on (their leases are held).
    fn acquired(&self, shards: Vec<String>);
    /// Stop serving these shards: drain their entities (at once if `forced`: the lease is
    /// lost), then report them with [`Sharding::drained`].
    fn releasing(&self, shards: Vec<String>, forced: bool);
    /// Requests were saved unclaimed for these shards.
    fn requests_saved(&self, shards: &[String]);
    /// Final replies were saved for these requests.
    fn replies_saved(&self, ids: &[i64]);
    /// Another process started, completed a deferred of, interrupted or resumed these
    /// executions: run those of the shards held.
    fn executions_woken(&self, ids: Vec<String>);
    /// The owners of these executions ended a run of them.
    fn executions_ended(&self, ids: &[String]);
    /// Notifications may have been missed: read everything again.
    fn missed(&self);
    /// Entity instances resident now (reported with each heartbeat).
    fn resident(&self) -> usize;
}

/// What can be read of a runner's view of the cluster (Effect's cluster gauges, and more).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// This runner's machine id.
    pub machine_id: i64,
    /// Runners registered.
    pub runners: usize,
    /// Runners healthy (in the rings).
    pub healthy_runners: usize,
    /// Shards whose lease this runner holds.
    pub shards: Vec<String>,
    /// Shards being drained before their release.
    pub releasing: Vec<String>,
    /// Owner of every shard by the ring (`"group:id"` → address).
    pub assignments: BTreeMap<String, String>,
    /// Owned writes refused because their shard's lease was no longer this runner's.
    pub fenced_writes: u64,
    /// Every registered runner's resident entity instances, as of its last heartbeat.
    pub runner_entities: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Shared {
    view: Mutex<ClusterView>,
    drained: Mutex<Vec<String>>,
    wake: Notify,
}

impl Shared {
    fn view(&self) -> std::sync::MutexGuard<'_, ClusterView> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A runner's cluster membership: the loop task and what can be read of it.
pub struct Sharding {
    shared: Arc<Shared>,
    fences: Arc<ShardFences>,
    transport: Arc<Transport>,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Sharding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharding").finish_non_exhaustive()
    }
}

/// Why a runner could not join.
#[derive(Debug, thiserror::Error)]
pub enum ShardingError {
    /// The store is not a PostgreSQL store opened for a cluster.
    #[error("a runner of a cluster needs a PostgreSQL store opened for the cluster")]
    NotClustered,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] SqlError),
    /// The runners' transport could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl Sharding {
    /// Registers this runner and starts its loop: the first assignment is read and the
    /// acquisition of its shards begun before this returns.
    ///
    /// # Errors
    /// [`ShardingError::NotClustered`], or the store's error when registering fails.
    pub async fn start(
        store: &SqlStore,
        options: ShardingOptions,
        host: Arc<dyn ShardHost>,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Self, ShardingError> {
        let (Some(fences), Some(runners)) = (
            store.shard_fences(),
            store.runner_storage(&options.address, options.advisory),
        ) else {
            return Err(ShardingError::NotClustered);
        };
        let runner = serde_json::json!({
            "address": options.address,
            "weight": options.weight,
            "groups": options.groups,
        })
        .to_string();
        let shared = Arc::new(Shared::default());
        // Listening before registering: a runner in the rings can be reached.
        let endpoint = Endpoint {
            name: caller_name(&options.address),
            address: Some(options.address.clone()),
            listen: Some(options.listen.clone().unwrap_or(options.address.clone())),
            route: route(&shared, options.shards_per_group),
            in_rings: in_rings(&shared),
        };
        let transport = Arc::new(
            Transport::start(
                endpoint,
                inbox,
                options.send_retry,
                options.lock_expiration * 2,
            )
            .await?,
        );
        let machine_id = runners.register(&runner).await?;
        let notifications = store.listen().await?;
        shared.view().machine_id = machine_id;
        let (notified, incoming) = mpsc::unbounded_channel();
        if let Some(mut notifications) = notifications {
            let notified = notified.clone();
            tokio::spawn(async move {
                loop {
                    let next = notifications.next().await;
                    if notified.send(next).is_err() {
                        return;
                    }
                }
            });
        }
        let (stop, stopped) = watch::channel(false);
        let mut runner_loop = Loop {
            runner,
            registered: true,
            ..Loop::new(options, runners, &fences, host, &shared, &transport)
        };
        runner_loop.sync().await;
        let task = tokio::spawn(runner_loop.run(incoming, stopped));
        Ok(Self {
            shared,
            fences,
            transport,
            stop,
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// A client-only process of the cluster: it holds no shard and is in no ring; it sends
    /// requests (saved for their owners) and hears of their replies. It takes a machine id of
    /// its own from the runners' sequence, so its snowflakes never collide with a runner's.
    ///
    /// # Errors
    /// [`ShardingError::NotClustered`], or the store's error when it cannot be reached.
    pub async fn client(
        store: &SqlStore,
        options: ShardingOptions,
        host: Arc<dyn ShardHost>,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Self, ShardingError> {
        let (Some(fences), Some(runners)) =
            (store.shard_fences(), store.runner_storage("client", false))
        else {
            return Err(ShardingError::NotClustered);
        };
        let machine_id = runners.reserve_machine_id().await?;
        let notifications = store.listen().await?;
        let shared = Arc::new(Shared::default());
        shared.view().machine_id = machine_id;
        let endpoint = Endpoint {
            name: caller_name("client"),
            address: None,
            listen: None,
            route: route(&shared, options.shards_per_group),
            in_rings: in_rings(&shared),
        };
        let transport = Arc::new(
            Transport::start(
                endpoint,
                inbox,
                options.send_retry,
                options.lock_expiration * 2,
            )
            .await?,
        );
        let (notified, incoming) = mpsc::unbounded_channel();
        if let Some(mut notifications) = notifications {
            tokio::spawn(async move {
                loop {
                    let next = notifications.next().await;
                    if notified.send(next).is_err() {
                        return;
                    }
                }
            });
        }
        let (stop, stopped) = watch::channel(false);
        let mut client_loop = Loop {
            client: true,
            ..Loop::new(options, runners, &fences, host, &shared, &transport)
        };
        client_loop.sync().await;
        let task = tokio::spawn(client_loop.run(incoming, stopped));
        Ok(Self {
            shared,
            fences,
            transport,
            stop,
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// This process's end of the runners' messages.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// This runner's machine id, for its snowflakes.
    pub fn machine_id(&self) -> i64 {
        self.shared.view().machine_id
    }

    /// What this runner sees of the cluster now.
    pub fn view(&self) -> ClusterView {
        let mut view = self.shared.view().clone();
        view.fenced_writes = self.fences.fenced_writes();
        view
    }

    /// The host drained these shards (see [`ShardHost::releasing`]): their leases may go.
    pub fn drained(&self, shards: Vec<String>) {
        self.shared
            .drained
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(shards);
        self.shared.wake.notify_one();
    }

    /// Leaves the cluster: unregisters, has the host drain every shard (within the
    /// termination timeout), releases the leases and ends the lock session.
    pub async fn close(&self) {
        self.stop.send_replace(true);
        self.shared.wake.notify_one();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
        self.transport.close().await;
    }
}

impl Drop for Sharding {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.shared.wake.notify_one();
    }
}

/// How the runners know this process among their callers: unique per process, also when a
/// runner restarts at the same address.
fn caller_name(address: &str) -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{address}#{}#{started}", std::process::id())
}

/// Routes an entity's requests to its shard's owner by the rings (the default group's).
fn route(shared: &Arc<Shared>, shards_per_group: NonZeroU32) -> Route {
    let shared = Arc::clone(shared);
    Arc::new(move |entity_id: &str| {
        let owned_by = format!("default:{}", shard_id(entity_id, shards_per_group));
        shared.view().assignments.get(&owned_by).cloned()
    })
}

/// Whether a runner is in the rings: it owns some shard by them.
fn in_rings(shared: &Arc<Shared>) -> InRings {
    let shared = Arc::clone(shared);
    Arc::new(move |runner: &str| shared.view().assignments.values().any(|a| a == runner))
}

/// A held shard being drained: its epoch and when it is released regardless.
type Releasing = BTreeMap<String, (i64, Instant)>;

struct Loop {
    options: ShardingOptions,
    runners: RunnerStorage,
    runner: String,
    fences: Arc<ShardFences>,
    host: Arc<dyn ShardHost>,
    shared: Arc<Shared>,
    transport: Arc<Transport>,
    /// The healthy runners' addresses, sorted (the first one checks the others' health).
    healthy: Vec<String>,
    /// Every registered runner's address.
    addresses: Vec<String>,
    /// A client-only process: it reads the rings (to route its requests) and holds nothing.
    client: bool,
    registered: bool,
    /// The shards the rings assign here.
    assigned: BTreeSet<String>,
    /// The shards held and served, with their epochs.
    acquired: BTreeMap<String, i64>,
    releasing: Releasing,
    last_renewal: Instant,
}

/// How often the loop looks at its work when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);
/// Acquisition of shards still unheld is tried again after this.
const ACQUIRE_AGAIN: Duration = Duration::from_secs(1);
/// A runner is alive if one of this many pings, this far apart, is answered in time (Effect's
/// `layerPing` tries 5 times with a 10 s timeout: a paused runner took it almost a minute to
/// see; here about 7 s).
const PING_TRIES: u32 = 3;
const PING_AGAIN: Duration = Duration::from_millis(500);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

impl Loop {
    /// A loop that has not registered yet, of a runner (set `runner`, `registered`) or a
    /// client (set `client`).
    fn new(
        options: ShardingOptions,
        runners: RunnerStorage,
        fences: &Arc<ShardFences>,
        host: Arc<dyn ShardHost>,
        shared: &Arc<Shared>,
        transport: &Arc<Transport>,
    ) -> Self {
        Self {
            options,
            runners,
            runner: String::new(),
            fences: Arc::clone(fences),
            host,
            shared: Arc::clone(shared),
            transport: Arc::clone(transport),
            healthy: Vec::new(),
            addresses: Vec::new(),
            client: false,
            registered: false,
            assigned: BTreeSet::new(),
            acquired: BTreeMap::new(),
            releasing: BTreeMap::new(),
            last_renewal: Instant::now(),
        }
    }

    async fn run(
        mut self,
        mut incoming: mpsc::UnboundedReceiver<Notification>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut next_sync = Instant::now() + self.options.refresh_assignments;
        let mut next_renewal = Instant::now() + self.options.refresh_interval;
        let mut next_acquire = Instant::now();
        let mut next_health = Instant::now() + self.options.health_check_interval;
        let (verdict, mut verdicts) = mpsc::unbounded_channel();
        let fences = Arc::clone(&self.fences);
        loop {
            if *stopped.borrow() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                Some(found) = verdicts.recv() => self.record_health(found).await,
                () = self.shared.wake.notified() => {}
                _ = stopped.changed() => {}
                refused = fences.refusals() => self.lost(refused),
                notification = incoming.recv() => match notification {
                    Some(Notification::Requests(shards)) => self.host.requests_saved(&shards),
                    Some(Notification::Replies(ids)) => self.host.replies_saved(&ids),
                    Some(Notification::Wake(ids)) => self.host.executions_woken(ids),
                    Some(Notification::Ended(ids)) => self.host.executions_ended(&ids),
                    Some(Notification::Runners) => next_sync = Instant::now(),
                    Some(Notification::Missed) => {
                        self.host.missed();
                        next_sync = Instant::now();
                    }
                    None => {}
                },
            }
            let now = Instant::now();
            if now >= next_sync {
                self.sync().await;
                next_sync = Instant::now() + self.options.refresh_assignments;
                next_acquire = now;
            }
            if now >= next_renewal {
                self.renew().await;
                next_renewal = Instant::now() + self.options.refresh_interval;
            }
            self.release_drained().await;
            if now >= next_acquire && self.acquire().await {
                next_acquire = Instant::now() + ACQUIRE_AGAIN;
            }
            if now >= next_health {
                self.check_health(&verdict);
                next_health = Instant::now() + self.options.health_check_interval;
            }
        }
        self.shutdown().await;
    }

    /// Effect's runner health check: one runner (the first healthy one by address) pings the
    /// others; each that does not answer is marked unhealthy (never the last healthy one),
    /// and each that answers again healthy. The verdicts come back to the loop to be written.
    fn check_health(&self, verdict: &mpsc::UnboundedSender<Vec<(String, bool)>>) {
        let me = &self.options.address;
        if self.client || self.addresses.len() < 2 || self.healthy.first() != Some(me) {
            return;
        }
        let others: Vec<String> = self
            .addresses
            .iter()
            .filter(|a| *a != me)
            .cloned()
            .collect();
        let transport = Arc::clone(&self.transport);
        let verdict = verdict.clone();
        tokio::spawn(async move {
            let mut pings = tokio::task::JoinSet::new();
            for address in others {
                let transport = Arc::clone(&transport);
                pings.spawn(async move {
                    for _ in 0..PING_TRIES {
                        if transport.ping(&address, PING_TIMEOUT).await {
                            return (address, true);
                        }
                        tokio::time::sleep(PING_AGAIN).await;
                    }
                    (address, false)
                });
            }
            let found: Vec<(String, bool)> = pings.join_all().await;
            let _ = verdict.send(found);
        });
    }

    async fn record_health(&mut self, found: Vec<(String, bool)>) {
        for (address, alive) in found {
            match self
                .runners
                .set_health(&address, alive, self.options.lock_expiration)
                .await
            {
                Ok(true) if alive => log::info!(
                    target: "plait.cluster",
                    "runner {address} answers again: marked healthy"
                ),
                Ok(true) => log::warn!(
                    target: "plait.cluster",
                    "runner {address} does not answer pings: marked unhealthy"
                ),
                Ok(false) => {}
                Err(err) => log::warn!(target: "plait.cluster", "recording health failed: {err}"),
            }
        }
    }

    /// Heartbeat (registering again if the row is gone), the runners, the rings, and which
    /// held shards are no longer assigned here.
    async fn sync(&mut self) {
        let expiration = self.options.lock_expiration;
        if self.registered {
            let resident = u64::try_from(self.host.resident()).unwrap_or(u64::MAX);
            match self.runners.heartbeat(resident).await {
                Ok(true) => {}
                Ok(false) => self.registered = false,
                Err(err) => {
                    log::warn!(target: "plait.cluster", "heartbeat failed: {err}");
                    return;
                }
            }
        }
        if !self.registered && !self.client {
            match self.runners.register(&self.runner).await {
                Ok(machine_id) => {
                    self.registered = true;
                    self.shared.view().machine_id = machine_id;
                }
                Err(err) => {
                    log::warn!(target: "plait.cluster", "registering again failed: {err}");
                    return;
                }
            }
        }
        let rows = match self.runners.runners(expiration).await {
            Ok(rows) => rows,
            Err(err) => {
                log::warn!(target: "plait.cluster", "reading the runners failed: {err}");
                return;
            }
        };
        let mut healthy: Vec<(String, f64, Vec<String>)> = rows
            .iter()
            .filter(|row| row.healthy)
            .map(|row| {
                let described: serde_json::Value =
                    serde_json::from_str(&row.runner).unwrap_or_default();
                let weight = described["weight"].as_f64().unwrap_or(1.0);
                let groups = described["groups"].as_array().map_or_else(
                    || vec!["default".to_owned()],
                    |groups| {
                        groups
                            .iter()
                            .filter_map(|g| g.as_str().map(str::to_owned))
                            .collect()
                    },
                );
                (row.address.clone(), weight, groups)
            })
            .collect();
        if healthy.is_empty() && !self.client {
            // Nobody looks healthy (this runner's own lock check raced a reconnect): serve
            // rather than leave every shard unowned.
            healthy.push((
                self.options.address.clone(),
                self.options.weight,
                self.options.groups.clone(),
            ));
        }
        let assignments = assign(&healthy, &self.options);
        self.assigned = assignments
            .iter()
            .filter(|(_, owner)| **owner == self.options.address)
            .map(|(shard, _)| shard.clone())
            .collect();
        self.addresses = rows.iter().map(|row| row.address.clone()).collect();
        self.healthy = healthy
            .iter()
            .map(|(address, ..)| address.clone())
            .collect();
        self.healthy.sort();
        {
            let mut view = self.shared.view();
            view.runners = rows.len();
            view.runner_entities = rows
                .iter()
                .map(|row| (row.address.clone(), row.entities))
                .collect();
            view.healthy_runners = healthy.len();
            view.assignments = assignments;
        }
        let moved: Vec<String> = self
            .acquired
            .keys()
            .filter(|shard| !self.assigned.contains(*shard))
            .cloned()
            .collect();
        if !moved.is_empty() {
            let deadline = Instant::now() + self.options.termination_timeout;
            for shard in &moved {
                if let Some(epoch) = self.acquired.remove(shard) {
                    self.releasing.insert(shard.clone(), (epoch, deadline));
                }
            }
            self.publish();
            self.host.releasing(moved, false);
        }
    }

    /// Acquires the shards assigned here and not held. Returns whether some are still unheld.
    async fn acquire(&mut self) -> bool {
        let wanted: Vec<String> = self
            .assigned
            .iter()
            .filter(|shard| {
                !self.acquired.contains_key(*shard) && !self.releasing.contains_key(*shard)
            })
            .cloned()
            .collect();
        if wanted.is_empty() {
            return false;
        }
        let taken = match self
            .runners
            .acquire(&wanted, self.options.lock_expiration)
            .await
        {
            Ok(taken) => taken,
            Err(err) => {
                log::warn!(target: "plait.cluster", "acquiring shards failed: {err}");
                return true;
            }
        };
        if !taken.is_empty() {
            let mut shards = Vec::with_capacity(taken.len());
            for (shard, epoch) in taken {
                self.fences.hold(&shard, epoch);
                self.acquired.insert(shard.clone(), epoch);
                shards.push(shard);
            }
            log::info!(
                target: "plait.cluster",
                "runner {} acquired {} shards",
                self.options.address,
                shards.len()
            );
            self.publish();
            self.host.acquired(shards);
        }
        self.acquired.len() < self.assigned.len()
    }

    /// Renews every lease held (served or draining); those lost stop at once.
    async fn renew(&mut self) {
        let held: Vec<(String, i64)> = self
            .acquired
            .iter()
            .map(|(s, e)| (s.clone(), *e))
            .chain(self.releasing.iter().map(|(s, (e, _))| (s.clone(), *e)))
            .collect();
        if held.is_empty() {
            self.last_renewal = Instant::now();
            return;
        }
        match self
            .runners
            .renew(&held, self.options.lock_expiration)
            .await
        {
            Ok(kept) => {
                self.last_renewal = Instant::now();
                let kept: FxHashSet<String> = kept.into_iter().collect();
                let lost: Vec<String> = held
                    .into_iter()
                    .map(|(shard, _)| shard)
                    .filter(|shard| !kept.contains(shard))
                    .collect();
                if !lost.is_empty() {
                    log::warn!(
                        target: "plait.cluster",
                        "runner {} lost {} shard leases to other runners",
                        self.options.address,
                        lost.len()
                    );
                    self.lost(lost);
                }
            }
            Err(err) => {
                log::warn!(target: "plait.cluster", "renewing shard leases failed: {err}");
                // Past most of a lease's life without renewal, the leases are about to lapse:
                // stop serving before another runner may take them.
                if self.last_renewal.elapsed() >= self.options.lock_expiration.mul_f64(0.8) {
                    let all: Vec<String> = held.into_iter().map(|(shard, _)| shard).collect();
                    self.lost(all);
                }
            }
        }
    }

    /// These shards' leases are lost (taken over, lapsed, refused): stop serving them now.
    fn lost(&mut self, shards: Vec<String>) {
        let mut stopped = Vec::new();
        for shard in shards {
            self.fences.drop_shard(&shard);
            let held = self.acquired.remove(&shard).is_some();
            let draining = self.releasing.remove(&shard).is_some();
            if held || draining {
                stopped.push(shard);
            }
        }
        if !stopped.is_empty() {
            self.publish();
            self.host.releasing(stopped, true);
        }
    }

    /// Releases the leases of shards drained (or past their deadline).
    async fn release_drained(&mut self) {
        let drained: Vec<String> = std::mem::take(
            &mut *self
                .shared
                .drained
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let now = Instant::now();
        let drained: FxHashSet<String> = drained.into_iter().collect();
        let done: Vec<(String, i64)> = self
            .releasing
            .iter()
            .filter(|(shard, (_, deadline))| drained.contains(*shard) || *deadline <= now)
            .map(|(shard, (epoch, _))| (shard.clone(), *epoch))
            .collect();
        if done.is_empty() {
            return;
        }
        for (shard, _) in &done {
            self.fences.drop_shard(shard);
            self.releasing.remove(shard);
        }
        if let Err(err) = self.runners.release(&done).await {
            // The leases lapse by themselves: the new owner waits out their expiry.
            log::warn!(target: "plait.cluster", "releasing shard leases failed: {err}");
        }
        self.publish();
    }

    /// Leaves the cluster (Effect's shutdown): unregistered first, so the others take the
    /// shards over; every shard drained within the termination timeout, then released.
    async fn shutdown(&mut self) {
        if self.client {
            self.runners.close().await;
            return;
        }
        if let Err(err) = self.runners.unregister(self.options.lock_expiration).await {
            log::warn!(target: "plait.cluster", "unregistering failed: {err}");
        }
        let deadline = Instant::now() + self.options.termination_timeout;
        let all: Vec<String> = self.acquired.keys().cloned().collect();
        for (shard, epoch) in std::mem::take(&mut self.acquired) {
            self.releasing.insert(shard, (epoch, deadline));
        }
        if !all.is_empty() {
            self.host.releasing(all, false);
        }
        while !self.releasing.is_empty() {
            self.release_drained().await;
            if self.releasing.is_empty() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = self.shared.wake.notified() => {}
            }
        }
        self.publish();
        self.runners.close().await;
    }

    fn publish(&self) {
        let mut view = self.shared.view();
        view.shards = self.acquired.keys().cloned().collect();
        view.releasing = self.releasing.keys().cloned().collect();
    }
}

/// Every shard of every available group with its owner by the rings of the healthy runners
/// (`(address, weight, groups)`, each ring built in address order, so every runner computes
/// the same).
fn assign(
    healthy: &[(String, f64, Vec<String>)],
    options: &ShardingOptions,
) -> BTreeMap<String, String> {
    let mut assignments = BTreeMap::new();
    let mut groups: Vec<&String> = options.available_groups.iter().collect();
    groups.sort();
    groups.dedup();
    let count = options.shards_per_group.get() as usize;
    for group in groups {
        let mut members: Vec<&(String, f64, Vec<String>)> = healthy
            .iter()
            .filter(|(_, _, g)| g.contains(group))
            .collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let mut ring = HashRing::default();
        for (address, weight, _) in &members {
            // A weight past the ring's bounds was refused at registration.
            let _ = ring.add(address, *weight);
        }
        let Some(owners) = ring.shards(count) else {
            continue;
        };
        for (i, owner) in owners.into_iter().enumerate() {
            assignments.insert(format!("{group}:{}", i + 1), ring.runner(owner).to_owned());
        }
    }
    assignments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(shards: u32) -> ShardingOptions {
        ShardingOptions {
            address: "runner1:34431".into(),
            listen: None,
            send_retry: Duration::from_millis(100),
            weight: 1.0,
            available_groups: vec!["default".into()],
            groups: vec!["default".into()],
            shards_per_group: NonZeroU32::new(shards).unwrap(),
            lock_expiration: Duration::from_secs(35),
            refresh_interval: Duration::from_secs(10),
            refresh_assignments: Duration::from_secs(3),
            termination_timeout: Duration::from_secs(15),
            advisory: true,
            health_check_interval: Duration::from_mins(1),
        }
    }

    fn runner(address: &str) -> (String, f64, Vec<String>) {
        (address.into(), 1.0, vec!["default".into()])
    }

    #[test]
    fn the_rings_follow_effects_vectors() {
        let healthy = [
            runner("runner2:34431"),
            runner("runner1:34431"),
            runner("runner3:34431"),
        ];
        let twelve = assign(&healthy, &options(12));
        let owners: String = (1..=12)
            .map(|i| twelve[&format!("default:{i}")][6..7].to_owned())
            .collect();
        assert_eq!(owners, "311233221123");
        let all = assign(&healthy, &options(300));
        for r in ["runner1:34431", "runner2:34431", "runner3:34431"] {
            assert_eq!(all.values().filter(|owner| *owner == r).count(), 100);
        }
    }

    #[test]
    fn a_group_nobody_serves_has_no_owner() {
        let mut opts = options(4);
        opts.available_groups = vec!["default".into(), "other".into()];
        let owned = assign(&[runner("a:1")], &opts);
        assert_eq!(owned.len(), 4);
        assert!(owned.keys().all(|shard| shard.starts_with("default:")));
    }
}
