//! A runner's membership of a cluster, for Python: start it on a store and a work source, read
//! what it sees, report drained shards, leave.

use std::{collections::BTreeMap, num::NonZeroU32, sync::Arc, time::Duration};

use pyo3::prelude::*;

use super::{
    bridge::AsyncBridge,
    errors::InvalidArgumentError,
    store::PyStore,
    work::{Outgoing, PyWorkSource},
};
use crate::cluster::sharding::{ClusterView, Sharding, ShardingError, ShardingOptions};

impl From<ShardingError> for PyErr {
    fn from(err: ShardingError) -> Self {
        match err {
            ShardingError::NotClustered => InvalidArgumentError::new_err(err.to_string()),
            ShardingError::Store(err) => err.into(),
            ShardingError::Transport(err) => InvalidArgumentError::new_err(err.to_string()),
        }
    }
}

/// How a runner takes part, as Python gives it: a dict (times in ms).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Options {
    address: String,
    listen: Option<String>,
    send_retry_ms: u64,
    weight: f64,
    available_groups: Vec<String>,
    groups: Vec<String>,
    shards_per_group: u32,
    lock_expiration_ms: u64,
    refresh_interval_ms: u64,
    refresh_assignments_ms: u64,
    termination_timeout_ms: u64,
    advisory: bool,
    health_check_ms: u64,
}

impl Options {
    fn into_options(self) -> PyResult<ShardingOptions> {
        let shards_per_group = NonZeroU32::new(self.shards_per_group)
            .ok_or_else(|| InvalidArgumentError::new_err("shards_per_group must be at least 1"))?;
        Ok(ShardingOptions {
            address: self.address,
            listen: self.listen,
            send_retry: Duration::from_millis(self.send_retry_ms),
            weight: self.weight,
            available_groups: self.available_groups,
            groups: self.groups,
            shards_per_group,
            lock_expiration: Duration::from_millis(self.lock_expiration_ms),
            refresh_interval: Duration::from_millis(self.refresh_interval_ms),
            refresh_assignments: Duration::from_millis(self.refresh_assignments_ms),
            termination_timeout: Duration::from_millis(self.termination_timeout_ms),
            advisory: self.advisory,
            health_check_interval: Duration::from_millis(self.health_check_ms),
        })
    }
}

/// What a runner sees of the cluster.
#[pyclass(module = "plait._native", name = "ClusterView", frozen, get_all)]
pub struct PyClusterView {
    /// This runner's machine id.
    machine_id: i64,
    /// Runners registered.
    runners: usize,
    /// Runners healthy (in the rings).
    healthy_runners: usize,
    /// Shards whose lease this runner holds, sorted.
    shards: Vec<String>,
    /// Shards being drained before their release.
    releasing: Vec<String>,
    /// The owner of every shard by the rings (`"group:id"` → address).
    assignments: BTreeMap<String, String>,
    /// Owned writes refused because their shard's lease was no longer this runner's.
    fenced_writes: u64,
    /// Every registered runner's resident entity instances, as of its last heartbeat.
    runner_entities: BTreeMap<String, u64>,
}

impl From<ClusterView> for PyClusterView {
    fn from(view: ClusterView) -> Self {
        Self {
            machine_id: view.machine_id,
            runners: view.runners,
            healthy_runners: view.healthy_runners,
            shards: view.shards,
            releasing: view.releasing,
            assignments: view.assignments,
            fenced_writes: view.fenced_writes,
            runner_entities: view.runner_entities,
        }
    }
}

/// A runner's membership of a cluster on PostgreSQL (see `rust/src/cluster/sharding.rs`).
#[pyclass(module = "plait._native", name = "Sharding", frozen)]
pub struct PySharding {
    sharding: Arc<Sharding>,
}

#[pymethods]
impl PySharding {
    /// Registers the runner on `store` (opened for a cluster) and starts its loop, which hands
    /// shards to `source`; resolves to a `Sharding`.
    #[staticmethod]
    fn start(
        bridge: &AsyncBridge,
        store: &PyStore,
        source: &PyWorkSource,
        options: Options,
    ) -> PyResult<u64> {
        let sql = store.sql.clone().ok_or_else(|| {
            InvalidArgumentError::new_err("a runner of a cluster needs a PostgreSQL store")
        })?;
        let options = options.into_options()?;
        let host = source.source.shard_host();
        let inbox = source.source.inbox();
        bridge.spawn(async move {
            let sharding = Sharding::start(&sql, options, host, inbox).await?;
            Ok(PySharding {
                sharding: Arc::new(sharding),
            })
        })
    }

    /// A client-only process of the cluster on `store` (opened for a cluster): it holds no
    /// shard and is in no ring; it reads the rings to route its requests, and hears of the
    /// replies they await. Resolves to a `Sharding`.
    #[staticmethod]
    fn client(
        bridge: &AsyncBridge,
        store: &PyStore,
        source: &PyWorkSource,
        options: Options,
    ) -> PyResult<u64> {
        let sql = store.sql.clone().ok_or_else(|| {
            InvalidArgumentError::new_err("a client of a cluster needs a PostgreSQL store")
        })?;
        let options = options.into_options()?;
        let host = source.source.shard_host();
        let inbox = source.source.inbox();
        bridge.spawn(async move {
            let sharding = Sharding::client(&sql, options, host, inbox).await?;
            Ok(PySharding {
                sharding: Arc::new(sharding),
            })
        })
    }

    /// This runner's machine id, for its snowflakes.
    #[getter]
    fn machine_id(&self) -> i64 {
        self.sharding.machine_id()
    }

    /// What this runner sees now.
    fn view(&self) -> PyClusterView {
        self.sharding.view().into()
    }

    /// Sends requests to the runners of their entities (objects with the attributes of
    /// `WorkSource.offer`'s, and per request whether the caller only waits for a mailbox to
    /// take it). Replies come as `RemoteReply` work, takes and refusals as `Routed`; a
    /// persisted one (saved first) is sent once, and refused `Unavailable` on any failure.
    fn send(&self, requests: Vec<Outgoing>, discard: Vec<bool>) -> PyResult<()> {
        if requests.len() != discard.len() {
            return Err(InvalidArgumentError::new_err(
                "send needs one discard flag per request",
            ));
        }
        let messages = requests
            .into_iter()
            .map(Outgoing::message)
            .zip(discard)
            .collect();
        self.sharding.transport().send(messages);
        Ok(())
    }

    /// The callers of these requests (sent with `send`) gave up.
    fn interrupt(&self, request_ids: Vec<i64>) {
        self.sharding.transport().interrupt(&request_ids);
    }

    /// Final replies (encoded exits) of requests other processes sent here.
    fn reply(&self, replies: Vec<(i64, Vec<u8>)>) {
        self.sharding.transport().reply(replies);
    }

    /// Requests other processes sent here whose shard moved away before they finished: their
    /// callers send them again.
    fn moved(&self, request_ids: Vec<i64>) {
        self.sharding.transport().moved(&request_ids);
    }

    /// The entities of these shards are finished: their leases may go.
    fn drained(&self, shards: Vec<String>) {
        self.sharding.drained(shards);
    }

    /// Leaves the cluster: unregisters, waits for the shards to drain (within the termination
    /// timeout), releases them; resolves to None.
    fn close(&self, bridge: &AsyncBridge) -> PyResult<u64> {
        let sharding = Arc::clone(&self.sharding);
        bridge.spawn(async move {
            sharding.close().await;
            Ok::<(), PyErr>(())
        })
    }
}
