//! The executions of a runner of a cluster: which shards' running executions to list, and
//! the ends of executions run on other runners that callers here await.
//!
//! An execution belongs to the shard of its id (Effect's `Workflow/<name>` entity keyed by the
//! execution id), and only the holder of that shard's lease runs it. The holder lists the
//! shard's running executions when it acquires the shard, again every `scan_ms` (what a lost
//! notification missed), and at once after its listener reconnected; it hears of the
//! executions other processes start or wake through the store's notifications. A caller on
//! another process awaits the end of a run through the notification its owner's commit sends,
//! reading the execution's record every `poll_ms` as the fallback.

use std::collections::VecDeque;

use rustc_hash::{FxHashMap, FxHashSet};

use super::{Shared, WorkSource};
use crate::store::{Execution, Status, Store, StoreError};

/// Which held shards' running executions to list next.
#[derive(Debug)]
pub(super) struct Scans {
    /// Acquired and not yet listed.
    acquired: FxHashSet<String>,
    /// Every held shard at the next round (notifications were missed).
    all: bool,
    /// The periodic look at every held shard (ms; 0 before the first shard is held).
    next: u64,
    every_ms: u64,
    /// Shards were acquired: the window's timers are read again for theirs.
    pub(super) reload_timers: bool,
}

impl Scans {
    pub(super) fn new(every_ms: u64) -> Self {
        Self {
            acquired: FxHashSet::default(),
            all: false,
            next: 0,
            every_ms: every_ms.max(1),
            reload_timers: false,
        }
    }

    pub(super) fn acquired(&mut self, shards: &[String]) {
        self.acquired.extend(shards.iter().cloned());
        self.reload_timers = true;
    }

    pub(super) fn scan_all(&mut self) {
        self.all = true;
    }

    /// When the next periodic look is due, if the runner holds a shard.
    pub(super) fn next_scan(&self, owned: &FxHashSet<String>) -> Option<u64> {
        (!owned.is_empty() && self.next > 0).then_some(self.next)
    }

    /// The held shards whose running executions to list now, if any.
    pub(super) fn take(
        &mut self,
        owned: &FxHashSet<String>,
        now: u64,
    ) -> Option<FxHashSet<String>> {
        if owned.is_empty() {
            self.acquired.clear();
            self.all = false;
            return None;
        }
        if self.next == 0 {
            self.next = now + self.every_ms;
        }
        if self.all || self.next <= now {
            self.all = false;
            self.acquired.clear();
            self.next = now + self.every_ms;
            return Some(owned.clone());
        }
        if self.acquired.is_empty() {
            return None;
        }
        let shards: FxHashSet<String> = self
            .acquired
            .drain()
            .filter(|shard| owned.contains(shard))
            .collect();
        (!shards.is_empty()).then_some(shards)
    }

    /// A listing failed: its shards are listed again at the next round.
    pub(super) fn retry(&mut self, shards: FxHashSet<String>) {
        self.acquired.extend(shards);
    }
}

/// Executions run elsewhere whose ends callers here await.
#[derive(Debug)]
pub(super) struct Awaited {
    /// By id: whether a suspension ends the wait too (else only completion does).
    ids: FxHashMap<String, bool>,
    /// Notified as ended: read at once.
    due: FxHashSet<String>,
    /// Read every awaited one at the next round (missed notifications).
    all: bool,
    next_poll: u64,
    poll_ms: u64,
    pub(super) ready: VecDeque<(String, Execution)>,
}

impl Awaited {
    pub(super) fn new(poll_ms: u64) -> Self {
        Self {
            ids: FxHashMap::default(),
            due: FxHashSet::default(),
            all: false,
            next_poll: 0,
            poll_ms: poll_ms.max(1),
            ready: VecDeque::new(),
        }
    }

    /// Whether any of these awaited executions was notified as ended.
    pub(super) fn notified(&mut self, ids: &[String]) -> bool {
        let mut any = false;
        for id in ids {
            if self.ids.contains_key(id) {
                self.due.insert(id.clone());
                any = true;
            }
        }
        any
    }

    pub(super) fn read_all(&mut self) {
        self.all = true;
    }

    pub(super) fn next_poll(&self) -> Option<u64> {
        (!self.ids.is_empty()).then_some(self.next_poll)
    }

    /// The ids to read now, if any: those notified, or every one at the regular poll.
    fn due_now(&mut self, now: u64) -> Option<Vec<String>> {
        if self.ids.is_empty() {
            self.due.clear();
            self.next_poll = 0;
            return None;
        }
        if self.all || self.next_poll <= now {
            self.all = false;
            self.due.clear();
            self.next_poll = now + self.poll_ms;
            return Some(self.ids.keys().cloned().collect());
        }
        if self.due.is_empty() {
            return None;
        }
        Some(self.due.drain().collect())
    }
}

impl WorkSource {
    /// Waits for the ends of these executions' runs on other runners: each comes once as
    /// [`super::Work::Ended`] when its record says complete (or suspended, with `suspended`).
    pub fn await_executions(&self, ids: &[String], suspended: bool) {
        let mut state = self.shared.state();
        let now = self.shared.clock.now();
        let awaited = &mut state.ended;
        for id in ids {
            let either = awaited.ids.get(id).is_some_and(|&s| s) || suspended;
            awaited.ids.insert(id.clone(), either);
        }
        if awaited.next_poll == 0 {
            awaited.next_poll = now + awaited.poll_ms;
        }
        // Read once at once: the run may have ended before the wait began.
        awaited.due.extend(ids.iter().cloned());
        state.pending = true;
        drop(state);
        self.shared.changed.notify_one();
    }

    /// Stops waiting for these executions' ends.
    pub fn forget_executions(&self, ids: &[String]) {
        let mut state = self.shared.state();
        for id in ids {
            state.ended.ids.remove(id);
            state.ended.due.remove(id);
        }
    }
}

/// Reads the awaited executions that are due: those notified as ended, or every one at the
/// regular poll or after missed notifications.
pub(super) async fn read_ended(shared: &Shared, store: &dyn Store) -> Result<bool, StoreError> {
    let now = shared.clock.now();
    let Some(ids) = shared.state().ended.due_now(now) else {
        return Ok(false);
    };
    let found = match store.executions(&ids).await {
        Ok(found) => found,
        Err(err) => {
            shared.state().ended.all = true;
            return Err(err);
        }
    };
    let mut state = shared.state();
    let mut readied = false;
    for (id, record) in ids.into_iter().zip(found) {
        let Some(record) = record else { continue };
        let ended = match state.ended.ids.get(&id) {
            Some(&suspended) => {
                record.status == Status::Complete
                    || (suspended && record.status == Status::Suspended)
            }
            None => false,
        };
        if ended {
            state.ended.ids.remove(&id);
            state.ended.ready.push_back((id, record));
            readied = true;
        }
    }
    drop(state);
    if readied {
        shared.ready.notify_waiters();
    }
    Ok(readied)
}
