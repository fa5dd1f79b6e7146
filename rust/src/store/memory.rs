//! The in-process store: the journal of every execution in hash maps behind one lock.
//!
//! Nothing survives the process; it backs `Engine.memory()` and the tests.

use std::{
    collections::BTreeSet,
    ops::Bound,
    sync::{Mutex, MutexGuard, PoisonError},
};

use rustc_hash::{FxHashMap, FxHashSet};

use super::{Entry, Execution, Snapshot, Status, StoreError, Timer};

#[derive(Default)]
struct Journal {
    execution: Option<Execution>,
    entries: Vec<Entry>,
    keys: FxHashSet<String>,
    deferreds: Vec<(String, Vec<u8>)>,
    deferred_names: FxHashSet<String>,
}

#[derive(Default)]
struct Inner {
    journals: FxHashMap<String, Journal>,
    timers: FxHashMap<(String, String), u64>,
    /// The same timers as `(due_ms, execution_id, name)`, in order: ranges of due instants,
    /// and the timers in order, without a sort.
    by_due: BTreeSet<(u64, String, String)>,
}

impl Inner {
    /// The journal of a known execution.
    fn journal_mut(&mut self, id: &str) -> Result<&mut Journal, StoreError> {
        self.journals
            .get_mut(id)
            .filter(|j| j.execution.is_some())
            .ok_or_else(|| StoreError::UnknownExecution(id.to_owned()))
    }

    fn execution_mut(&mut self, id: &str) -> Result<&mut Execution, StoreError> {
        self.journal_mut(id)?
            .execution
            .as_mut()
            .ok_or_else(|| StoreError::UnknownExecution(id.to_owned()))
    }
}

/// Executions, journals, deferred results and timers, in memory.
///
/// Every write follows "first write wins": a step result or deferred result, once stored, is
/// never replaced, so a late duplicate cannot change what a replay sees.
///
/// ```
/// use _native::store::{memory::MemoryStore, Entry, Status};
///
/// let store = MemoryStore::default();
/// assert!(store.start("e1", "Greet", b"{}".to_vec(), None).is_none());
/// let step = Entry { key: "Hello/1".into(), seq: 0, value: b"1".to_vec() };
/// assert_eq!(store.append(vec![("e1".into(), step)]), Ok(vec![true]));
/// store.set_status("e1", Status::Complete, Some(b"2".to_vec())).unwrap();
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

    /// Records a new running execution, unless `id` exists.
    ///
    /// Returns `None` when it was created, or the existing execution (unchanged).
    pub fn start(
        &self,
        id: &str,
        workflow: &str,
        payload: Vec<u8>,
        parent: Option<String>,
    ) -> Option<Execution> {
        let mut inner = self.lock();
        let journal = inner.journals.entry(id.to_owned()).or_default();
        if let Some(existing) = &journal.execution {
            return Some(existing.clone());
        }
        journal.execution = Some(Execution {
            workflow: workflow.to_owned(),
            payload,
            parent,
            status: Status::Running,
            result: None,
            interrupted: false,
        });
        None
    }

    /// The execution `id`, if the store holds it.
    pub fn execution(&self, id: &str) -> Option<Execution> {
        self.lock()
            .journals
            .get(id)
            .and_then(|j| j.execution.clone())
    }

    /// The execution with its whole journal and deferred results, in one read.
    pub fn snapshot(&self, id: &str) -> Option<Snapshot> {
        let inner = self.lock();
        let journal = inner.journals.get(id)?;
        Some(Snapshot {
            execution: journal.execution.clone()?,
            entries: journal.entries.clone(),
            deferreds: journal.deferreds.clone(),
        })
    }

    /// Appends step results of any executions, all or nothing.
    ///
    /// Returns, per entry, whether it was stored (`false`: that key already had a result).
    ///
    /// # Errors
    /// [`StoreError::UnknownExecution`] if any entry names an unknown execution; then nothing
    /// is stored.
    pub fn append(&self, entries: Vec<(String, Entry)>) -> Result<Vec<bool>, StoreError> {
        let mut inner = self.lock();
        if let Some((id, _)) = entries.iter().find(|(id, _)| {
            inner
                .journals
                .get(id.as_str())
                .is_none_or(|j| j.execution.is_none())
        }) {
            return Err(StoreError::UnknownExecution(id.clone()));
        }
        let mut stored = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            let journal = inner.journal_mut(&id)?;
            let fresh = journal.keys.insert(entry.key.clone());
            if fresh {
                journal.entries.push(entry);
            }
            stored.push(fresh);
        }
        Ok(stored)
    }

    /// Stores the result of deferred `name` of execution `id`, unless it has one.
    ///
    /// Returns whether it was stored.
    ///
    /// # Errors
    /// [`StoreError::UnknownExecution`] if the store does not hold `id`.
    pub fn complete_deferred(
        &self,
        id: &str,
        name: &str,
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let journal = inner.journal_mut(id)?;
        if !journal.deferred_names.insert(name.to_owned()) {
            return Ok(false);
        }
        journal.deferreds.push((name.to_owned(), value));
        Ok(true)
    }

    /// Moves execution `id` to `status` with `result`.
    ///
    /// # Errors
    /// [`StoreError::UnknownExecution`], or [`StoreError::AlreadyComplete`] if it had
    /// completed: a final result is never replaced.
    pub fn set_status(
        &self,
        id: &str,
        status: Status,
        result: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let execution = inner.execution_mut(id)?;
        if execution.status == Status::Complete {
            return Err(StoreError::AlreadyComplete(id.to_owned()));
        }
        execution.status = status;
        execution.result = result;
        if status == Status::Complete {
            let Inner { timers, by_due, .. } = &mut *inner;
            timers.retain(|(execution_id, name), due| {
                let keep = execution_id != id;
                if !keep {
                    by_due.remove(&(*due, execution_id.clone(), name.clone()));
                }
                keep
            });
        }
        Ok(())
    }

    /// Records an interrupt request. Returns `false` if the execution had already completed.
    ///
    /// # Errors
    /// [`StoreError::UnknownExecution`] if the store does not hold `id`.
    pub fn interrupt(&self, id: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let execution = inner.execution_mut(id)?;
        if execution.status == Status::Complete {
            return Ok(false);
        }
        execution.interrupted = true;
        Ok(true)
    }

    /// Stores a durable timer unless one with the same execution and name exists.
    ///
    /// Returns whether it was stored.
    ///
    /// # Errors
    /// [`StoreError::UnknownExecution`] if the store does not hold the timer's execution.
    pub fn schedule_timer(&self, timer: Timer) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        inner.execution_mut(&timer.execution_id)?;
        let key = (timer.execution_id, timer.name);
        if inner.timers.contains_key(&key) {
            return Ok(false);
        }
        inner
            .by_due
            .insert((timer.due_ms, key.0.clone(), key.1.clone()));
        inner.timers.insert(key, timer.due_ms);
        Ok(true)
    }

    /// Forgets a timer (it fired). Returns whether it was stored.
    pub fn remove_timer(&self, execution_id: &str, name: &str) -> bool {
        let mut inner = self.lock();
        let key = (execution_id.to_owned(), name.to_owned());
        let Some(due) = inner.timers.remove(&key) else {
            return false;
        };
        inner.by_due.remove(&(due, key.0, key.1));
        true
    }

    /// Every stored timer, earliest first (then by execution id and name).
    pub fn timers(&self) -> Vec<Timer> {
        self.lock().by_due.iter().map(timer).collect()
    }

    /// The timers due in `(after_ms, until_ms]`, earliest first (then by execution id and name),
    /// and when the first timer after `until_ms` is due (`None`: there is none). An `after_ms`
    /// below 0 takes every timer due up to `until_ms`.
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
            .filter(|(_, j)| j.execution.as_ref().is_some_and(|e| e.status == status))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// How many executions the store holds.
    pub fn len(&self) -> usize {
        self.lock()
            .journals
            .values()
            .filter(|j| j.execution.is_some())
            .count()
    }

    /// Whether the store holds no execution.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn start_creates_once_and_returns_the_existing_execution() {
        let store = MemoryStore::default();
        assert!(store.start("e", "W", b"1".to_vec(), None).is_none());
        let existing = store
            .start("e", "Other", b"2".to_vec(), Some("p".into()))
            .unwrap();
        assert_eq!(existing.workflow, "W");
        assert_eq!(existing.payload, b"1");
        assert_eq!(existing.parent, None);
        assert_eq!(existing.status, Status::Running);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn first_step_result_wins_and_snapshot_keeps_write_order() {
        let store = MemoryStore::default();
        store.start("e", "W", vec![], None);
        let stored = store
            .append(vec![
                ("e".into(), entry("b/1", 1, b"B")),
                ("e".into(), entry("a/1", 0, b"A")),
                ("e".into(), entry("b/1", 1, b"late")),
            ])
            .unwrap();
        assert_eq!(stored, vec![true, true, false]);
        let snapshot = store.snapshot("e").unwrap();
        assert_eq!(
            snapshot.entries,
            vec![entry("b/1", 1, b"B"), entry("a/1", 0, b"A")]
        );
    }

    #[test]
    fn a_batch_naming_an_unknown_execution_stores_nothing() {
        let store = MemoryStore::default();
        store.start("e", "W", vec![], None);
        let err = store
            .append(vec![
                ("e".into(), entry("a/1", 0, b"A")),
                ("missing".into(), entry("a/1", 0, b"A")),
            ])
            .unwrap_err();
        assert_eq!(err, StoreError::UnknownExecution("missing".into()));
        assert!(store.snapshot("e").unwrap().entries.is_empty());
        assert!(store.snapshot("missing").is_none());
    }

    #[test]
    fn first_deferred_result_wins() {
        let store = MemoryStore::default();
        store.start("e", "W", vec![], None);
        assert_eq!(store.complete_deferred("e", "d", b"1".to_vec()), Ok(true));
        assert_eq!(store.complete_deferred("e", "d", b"2".to_vec()), Ok(false));
        assert_eq!(
            store.snapshot("e").unwrap().deferreds,
            vec![("d".to_owned(), b"1".to_vec())]
        );
        assert_eq!(
            store.complete_deferred("x", "d", vec![]),
            Err(StoreError::UnknownExecution("x".into()))
        );
    }

    #[test]
    fn a_complete_result_is_final_and_drops_its_timers() {
        let store = MemoryStore::default();
        store.start("e", "W", vec![], None);
        let timer = Timer {
            execution_id: "e".into(),
            name: "DurableClock/t".into(),
            due_ms: 5,
        };
        assert_eq!(store.schedule_timer(timer.clone()), Ok(true));
        assert_eq!(store.schedule_timer(timer), Ok(false));
        store.set_status("e", Status::Suspended, None).unwrap();
        assert_eq!(store.with_status(Status::Suspended), vec!["e".to_owned()]);
        store
            .set_status("e", Status::Complete, Some(b"r".to_vec()))
            .unwrap();
        assert!(store.timers().is_empty());
        assert_eq!(
            store.set_status("e", Status::Running, None),
            Err(StoreError::AlreadyComplete("e".into()))
        );
        assert_eq!(store.interrupt("e"), Ok(false));
        assert_eq!(store.execution("e").unwrap().result, Some(b"r".to_vec()));
    }

    #[test]
    fn timers_come_out_earliest_first_and_are_removed_once() {
        let store = MemoryStore::default();
        store.start("a", "W", vec![], None);
        store.start("b", "W", vec![], None);
        for (id, due) in [("a", 30), ("b", 10), ("a", 20)] {
            let name = format!("t{due}");
            store
                .schedule_timer(Timer {
                    execution_id: id.into(),
                    name,
                    due_ms: due,
                })
                .unwrap();
        }
        let dues: Vec<u64> = store.timers().iter().map(|t| t.due_ms).collect();
        assert_eq!(dues, vec![10, 20, 30]);
        assert!(store.remove_timer("b", "t10"));
        assert!(!store.remove_timer("b", "t10"));
        assert_eq!(store.timers().len(), 2);
    }

    #[test]
    fn interrupt_sets_the_flag_until_completion() {
        let store = MemoryStore::default();
        store.start("e", "W", vec![], None);
        assert_eq!(store.interrupt("e"), Ok(true));
        assert!(store.execution("e").unwrap().interrupted);
        assert_eq!(
            store.interrupt("nope"),
            Err(StoreError::UnknownExecution("nope".into()))
        );
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
        store.start("a", "W", vec![], None);
        store.start("b", "W", vec![], None);
        for (id, name, due) in [
            ("b", "t", 20),
            ("a", "t", 10),
            ("a", "u", 20),
            ("a", "v", 30),
        ] {
            store
                .schedule_timer(Timer {
                    execution_id: id.into(),
                    name: name.into(),
                    due_ms: due,
                })
                .unwrap();
        }
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
        assert!(store.remove_timer("a", "t"));
        store.set_status("b", Status::Complete, None).unwrap();
        assert_eq!(
            between(-1, 100),
            (vec![t("a", "u", 20), t("a", "v", 30)], None)
        );
    }
}
