//! A hierarchical timer wheel at millisecond resolution.
//!
//! Eleven levels of 64 slots: level `L` slots are `64^L` ms wide, and 11 × 6 bits cover every
//! `u64` instant, so a timer years away needs no overflow list. A timer sits at the level of the
//! highest 6-bit digit in which its due instant differs from the wheel's current instant; when
//! time reaches its slot it cascades to a lower level, at most ten times in its life. A bitmap
//! per level finds the next occupied slot in O(1), so advancing over empty time costs nothing.
//! Entries live in a slab and slots are intrusive doubly linked lists, so cancel is O(1).
//!
//! Timers that came due but were not taken yet (a consumer may take them a batch at a time) wait
//! in a ready set ordered by due instant and insertion, still cancellable and movable.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;

const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const LEVELS: usize = 11;
const NIL: u32 = u32::MAX;
/// `level` of an entry in the ready set.
const READY: u8 = u8::MAX;

/// A timer that came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// The id given to [`TimerWheel::insert`].
    pub id: u64,
    /// When it was due (ms).
    pub due_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    due: u64,
    /// Insertion order, to order timers due in the same millisecond.
    seq: u64,
    prev: u32,
    next: u32,
    level: u8,
    slot: u8,
}

#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };

    fn is_empty(self) -> bool {
        self.head == NIL
    }
}

/// `(due, seq, slab index)`: the ready set's order is due instant, then insertion.
type ReadyKey = (u64, u64, u32);

/// Timers keyed by `u64` id, due at millisecond instants.
///
/// # Example
/// ```
/// use _native::timer::TimerWheel;
/// let mut wheel = TimerWheel::new(1_000);
/// wheel.insert(7, 1_500);
/// wheel.insert(8, 1_200);
/// assert!(wheel.advance(1_100).is_empty());
/// let due: Vec<u64> = wheel.advance(2_000).iter().map(|e| e.id).collect();
/// assert_eq!(due, [8, 7]);
/// ```
#[derive(Debug, Clone)]
pub struct TimerWheel {
    /// The instant the wheel has advanced to.
    elapsed: u64,
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// Timer ids are ours (snowflakes), not an attacker's, so a fast non-keyed hash is fine.
    by_id: FxHashMap<u64, u32>,
    slots: Vec<List>,
    occupied: [u64; LEVELS],
    /// Due and not yet taken: timers inserted at or before `elapsed`, and those a limited take
    /// left behind.
    ready: BTreeSet<ReadyKey>,
    next_seq: u64,
}

impl TimerWheel {
    /// An empty wheel whose current instant is `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            elapsed: now_ms,
            entries: Vec::new(),
            free: Vec::new(),
            by_id: FxHashMap::default(),
            slots: vec![List::EMPTY; LEVELS * SLOTS],
            occupied: [0; LEVELS],
            ready: BTreeSet::new(),
            next_seq: 0,
        }
    }

    /// The instant the wheel has advanced to.
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Number of timers not yet taken, due or not.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether a timer with `id` is pending.
    pub fn contains(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// When the pending timer `id` is due.
    pub fn due_of(&self, id: u64) -> Option<u64> {
        self.by_id.get(&id).map(|&i| self.entries[i as usize].due)
    }

    /// Schedules timer `id` at `due_ms`; a timer already pending under `id` is moved there.
    /// A due instant at or before the wheel's current instant is due at once.
    /// Returns whether a pending timer was replaced.
    ///
    /// # Panics
    /// With more than `u32::MAX - 1` timers pending at once.
    pub fn insert(&mut self, id: u64, due_ms: u64) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(&index) = self.by_id.get(&id) {
            // Reschedule in place: same slab entry, new instant, new insertion order.
            self.unlink(index);
            let entry = &mut self.entries[index as usize];
            entry.due = due_ms;
            entry.seq = seq;
            self.place(index);
            return true;
        }
        let entry = Entry {
            id,
            due: due_ms,
            seq,
            prev: NIL,
            next: NIL,
            level: 0,
            slot: 0,
        };
        let index = if let Some(index) = self.free.pop() {
            self.entries[index as usize] = entry;
            index
        } else {
            let index = u32::try_from(self.entries.len())
                .ok()
                .filter(|&i| i != NIL)
                .expect("timer wheel holds at most u32::MAX - 1 timers");
            self.entries.push(entry);
            index
        };
        self.by_id.insert(id, index);
        self.place(index);
        false
    }

    /// Cancels timer `id`, due or not. Returns whether it was pending.
    pub fn cancel(&mut self, id: u64) -> bool {
        let Some(index) = self.by_id.remove(&id) else {
            return false;
        };
        self.unlink(index);
        self.free.push(index);
        true
    }

    /// The earliest due instant among pending timers.
    pub fn next_due(&self) -> Option<u64> {
        if let Some(&(due, _, _)) = self.ready.first() {
            return Some(due);
        }
        let (level, slot, _) = self.next_expiration()?;
        self.iter_list(self.slots[level * SLOTS + slot])
            .map(|e| e.due)
            .min()
    }

    /// An instant at or before the next due timer, in O(1): when to look again. It is the
    /// start of the earliest occupied slot, so it may come before the timer itself; advancing
    /// to it then only moves timers closer to firing.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.ready.first() {
            Some(&(due, _, _)) => Some(due),
            None => self.next_expiration().map(|(_, _, deadline)| deadline),
        }
    }

    /// Moves the wheel to `now_ms` and takes every timer due by then, ordered by due instant
    /// and, within one millisecond, by insertion. Moving backwards takes only timers already
    /// due.
    pub fn advance(&mut self, now_ms: u64) -> Vec<Expired> {
        self.take_due(now_ms, usize::MAX)
    }

    /// As [`TimerWheel::advance`], taking at most `max` timers: the earliest. The rest stay
    /// pending, cancellable, and come first next time.
    pub fn take_due(&mut self, now_ms: u64, max: usize) -> Vec<Expired> {
        let fired = self.collect(now_ms);
        if self.ready.is_empty() && fired.len() <= max {
            // The common case needs no ready set at all.
            return fired.into_iter().map(|key| self.release(key)).collect();
        }
        self.ready.extend(fired);
        let mut out = Vec::with_capacity(max.min(self.ready.len()));
        while out.len() < max {
            let Some(key) = self.ready.pop_first() else {
                break;
            };
            out.push(self.release(key));
        }
        out
    }

    /// Moves the wheel to `now_ms`; returns whether any timer is due, without taking any.
    pub fn has_due(&mut self, now_ms: u64) -> bool {
        let fired = self.collect(now_ms);
        self.ready.extend(fired);
        !self.ready.is_empty()
    }

    /// Cascades every slot whose time has come and returns the timers that came due, sorted,
    /// marked ready but not yet in the ready set.
    fn collect(&mut self, now_ms: u64) -> Vec<ReadyKey> {
        let mut fired = Vec::new();
        while let Some((level, slot, deadline)) = self.next_expiration() {
            if deadline > now_ms {
                break;
            }
            self.elapsed = deadline;
            self.cascade(level, slot, &mut fired);
        }
        self.elapsed = self.elapsed.max(now_ms);
        // Sequence numbers are unique, so an unstable sort is exact.
        fired.sort_unstable();
        fired
    }

    /// Empties one slot: timers due by `elapsed` go to `fired`, the rest to lower levels.
    fn cascade(&mut self, level: usize, slot: usize, fired: &mut Vec<ReadyKey>) {
        self.occupied[level] &= !(1u64 << slot);
        let list = std::mem::replace(&mut self.slots[level * SLOTS + slot], List::EMPTY);
        let mut cursor = list.head;
        while cursor != NIL {
            let entry = &mut self.entries[cursor as usize];
            let next = entry.next;
            if entry.due <= self.elapsed {
                entry.level = READY;
                fired.push((entry.due, entry.seq, cursor));
            } else {
                self.link(cursor);
            }
            cursor = next;
        }
    }

    fn release(&mut self, (due_ms, _, index): ReadyKey) -> Expired {
        let id = self.entries[index as usize].id;
        self.by_id.remove(&id);
        self.free.push(index);
        Expired { id, due_ms }
    }

    /// Puts entry `index` where its due instant belongs: the ready set, or a wheel slot.
    fn place(&mut self, index: u32) {
        let entry = &mut self.entries[index as usize];
        if entry.due <= self.elapsed {
            entry.level = READY;
            self.ready.insert((entry.due, entry.seq, index));
        } else {
            self.link(index);
        }
    }

    /// Links entry `index`, due after `elapsed`, into its slot.
    fn link(&mut self, index: u32) {
        let due = self.entries[index as usize].due;
        let level = level_for(self.elapsed, due);
        let slot = slot_for(due, level);
        let list = &mut self.slots[usize::from(level) * SLOTS + slot];
        let tail = list.tail;
        if tail == NIL {
            list.head = index;
        }
        list.tail = index;
        self.occupied[usize::from(level)] |= 1u64 << slot;
        let entry = &mut self.entries[index as usize];
        entry.level = level;
        #[allow(clippy::cast_possible_truncation)] // a slot is < 64
        {
            entry.slot = slot as u8;
        }
        entry.prev = tail;
        entry.next = NIL;
        if tail != NIL {
            self.entries[tail as usize].next = index;
        }
    }

    fn unlink(&mut self, index: u32) {
        let Entry {
            due,
            seq,
            prev,
            next,
            level,
            slot,
            ..
        } = self.entries[index as usize];
        if level == READY {
            self.ready.remove(&(due, seq, index));
            return;
        }
        let slot = usize::from(slot);
        let list = &mut self.slots[usize::from(level) * SLOTS + slot];
        if prev == NIL {
            list.head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            list.tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        if list.is_empty() {
            self.occupied[usize::from(level)] &= !(1u64 << slot);
        }
    }

    /// The lowest occupied level's next slot and the instant that slot starts.
    ///
    /// A timer at level `L` agrees with `elapsed` on every digit above `L` and is ahead of it at
    /// digit `L`, so its slot lies strictly after `elapsed`'s slot, and everything at lower
    /// levels comes before anything at level `L`.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        let shift = SLOT_BITS * u32::try_from(level).unwrap_or(0);
        let current = (self.elapsed >> shift) & (SLOTS as u64 - 1);
        let ahead = if current == SLOTS as u64 - 1 {
            0
        } else {
            self.occupied[level] & (u64::MAX << (current + 1))
        };
        debug_assert!(ahead != 0, "timer behind the wheel at level {level}");
        let slot = if ahead == 0 {
            self.occupied[level].trailing_zeros()
        } else {
            ahead.trailing_zeros()
        } as usize;
        let level_bits = shift + SLOT_BITS;
        let level_start = if level_bits >= 64 {
            0
        } else {
            self.elapsed & !((1u64 << level_bits) - 1)
        };
        let deadline = level_start + ((slot as u64) << shift);
        Some((level, slot, deadline))
    }

    fn iter_list(&self, list: List) -> impl Iterator<Item = &Entry> {
        let mut cursor = list.head;
        std::iter::from_fn(move || {
            if cursor == NIL {
                return None;
            }
            let entry = &self.entries[cursor as usize];
            cursor = entry.next;
            Some(entry)
        })
    }
}

/// The level of the highest 6-bit digit in which `due` differs from `now`.
fn level_for(now: u64, due: u64) -> u8 {
    let significant = ((now ^ due) | (SLOTS as u64 - 1)).ilog2();
    #[allow(clippy::cast_possible_truncation)] // at most 63 / 6 = 10
    {
        (significant / SLOT_BITS) as u8
    }
}

fn slot_for(due: u64, level: u8) -> usize {
    #[allow(clippy::cast_possible_truncation)] // masked to 6 bits
    {
        ((due >> (SLOT_BITS * u32::from(level))) & (SLOTS as u64 - 1)) as usize
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;

    use super::*;

    const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
    const NOW: u64 = 1_763_800_000_000; // an ordinary wall-clock instant

    fn ids(expired: &[Expired]) -> Vec<u64> {
        expired.iter().map(|e| e.id).collect()
    }

    #[test]
    fn fires_in_due_order() {
        let mut w = TimerWheel::new(NOW);
        for (id, offset) in [(1, 500), (2, 5), (3, 70_000), (4, 64), (5, 4096), (6, 1)] {
            w.insert(id, NOW + offset);
        }
        assert_eq!(w.next_due(), Some(NOW + 1));
        assert!(w.advance(NOW).is_empty());
        assert_eq!(ids(&w.advance(NOW + 64)), [6, 2, 4]);
        assert_eq!(w.next_due(), Some(NOW + 500));
        assert_eq!(ids(&w.advance(NOW + 100_000)), [1, 5, 3]);
        assert!(w.is_empty());
        assert_eq!(w.next_due(), None);
    }

    #[test]
    fn equal_instants_fire_in_insertion_order() {
        let mut w = TimerWheel::new(NOW);
        // Inserted at different wheel times, so they sit at different levels first.
        w.insert(10, NOW + 10_000);
        w.advance(NOW + 9_000);
        w.insert(11, NOW + 10_000);
        w.insert(12, NOW + 10_000);
        let fired = w.advance(NOW + 10_000);
        assert_eq!(ids(&fired), [10, 11, 12]);
        assert!(fired.iter().all(|e| e.due_ms == NOW + 10_000));
    }

    #[test]
    fn past_due_timers_fire_at_the_next_advance() {
        let mut w = TimerWheel::new(NOW);
        w.insert(1, NOW - 1_000);
        w.insert(2, 0);
        w.insert(3, NOW);
        assert_eq!(w.next_due(), Some(0));
        // Even an advance to an earlier instant hands them out.
        assert_eq!(ids(&w.advance(NOW - 5_000)), [2, 1, 3]);
        assert_eq!(w.elapsed(), NOW);
    }

    #[test]
    fn far_future_timers_wait_years() {
        let mut w = TimerWheel::new(NOW);
        w.insert(1, NOW + 5 * YEAR_MS);
        w.insert(2, u64::MAX);
        w.insert(3, NOW + YEAR_MS);
        assert!(w.advance(NOW + YEAR_MS - 1).is_empty());
        assert_eq!(ids(&w.advance(NOW + YEAR_MS)), [3]);
        assert!(w.advance(NOW + 5 * YEAR_MS - 1).is_empty());
        assert_eq!(w.next_due(), Some(NOW + 5 * YEAR_MS));
        assert_eq!(ids(&w.advance(NOW + 5 * YEAR_MS)), [1]);
        assert_eq!(w.next_due(), Some(u64::MAX));
        assert_eq!(ids(&w.advance(u64::MAX)), [2]);
    }

    #[test]
    fn cancel_and_reschedule() {
        let mut w = TimerWheel::new(NOW);
        w.insert(1, NOW + 10);
        w.insert(2, NOW + 20);
        w.insert(3, NOW + 30);
        assert!(w.cancel(2));
        assert!(!w.cancel(2));
        assert!(!w.cancel(99));
        assert!(w.insert(3, NOW + 5)); // moved earlier
        assert!(!w.insert(4, NOW + 15));
        assert_eq!(w.due_of(3), Some(NOW + 5));
        assert_eq!(w.len(), 3);
        assert_eq!(ids(&w.advance(NOW + 100)), [3, 1, 4]);
        assert!(!w.contains(1));
    }

    #[test]
    fn cancelling_the_only_timer_in_a_slot_clears_it() {
        let mut w = TimerWheel::new(NOW);
        w.insert(1, NOW + 1_000_000);
        w.cancel(1);
        assert_eq!(w.next_due(), None);
        assert!(w.advance(u64::MAX).is_empty());
    }

    #[test]
    fn slab_slots_are_reused() {
        let mut w = TimerWheel::new(0);
        for round in 0..10u64 {
            for id in 0..1_000 {
                w.insert(id, round * 10_000 + 1 + id);
            }
            assert_eq!(w.advance(round * 10_000 + 5_000).len(), 1_000);
        }
        assert!(w.entries.len() <= 1_000);
    }

    #[test]
    fn a_million_timers() {
        let mut w = TimerWheel::new(NOW);
        let n = 1_000_000u64;
        for id in 0..n {
            // Spread over a day, scrambled.
            let offset = (id.wrapping_mul(2_654_435_761) % 86_400_000) + 1;
            w.insert(id, NOW + offset);
        }
        assert_eq!(u64::try_from(w.len()).unwrap(), n);
        let mut total = 0;
        let mut last_due = 0;
        let mut t = NOW;
        while !w.is_empty() {
            t += 3_600_000;
            for e in w.advance(t) {
                assert!(e.due_ms >= last_due && e.due_ms <= t);
                last_due = e.due_ms;
                total += 1;
            }
        }
        assert_eq!(total, n);
    }

    #[test]
    fn limited_takes_leave_the_rest_due_and_in_order() {
        let mut w = TimerWheel::new(NOW);
        for id in 0..10 {
            w.insert(id, NOW + 100 - id); // 9 is due first
        }
        assert!(w.has_due(NOW + 100));
        assert_eq!(ids(&w.take_due(NOW + 100, 3)), [9, 8, 7]);
        // A later take may bring newer timers, but the earlier leftovers still come first.
        w.insert(20, NOW + 150);
        w.insert(21, NOW + 5); // past due: ahead of everything
        assert!(w.cancel(5)); // due and left behind, still cancellable
        assert!(w.insert(4, NOW + 140)); // and movable
        assert_eq!(w.next_due(), Some(NOW + 5));
        assert_eq!(ids(&w.take_due(NOW + 200, 4)), [21, 6, 3, 2]);
        assert_eq!(ids(&w.advance(NOW + 200)), [1, 0, 4, 20]);
        assert!(w.is_empty());
    }

    #[test]
    fn next_deadline_is_never_after_the_next_due_timer() {
        let mut w = TimerWheel::new(NOW);
        w.insert(1, NOW + 5 * 3_600_000);
        let deadline = w.next_deadline().unwrap();
        assert!(deadline <= NOW + 5 * 3_600_000);
        // Advancing to the deadline makes progress: the timer cascades nearer.
        assert!(w.advance(deadline).is_empty());
        assert!(w.next_deadline().unwrap() > deadline);
        assert_eq!(ids(&w.advance(NOW + 5 * 3_600_000)), [1]);
        assert_eq!(w.next_deadline(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, i64),
        Cancel(u64),
        Advance(u64),
        Take(u64, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..64u64, prop_oneof![
                -2_000i64..200,
                0i64..5_000,
                0i64..5_000_000,
                Just(i64::from(u32::MAX)) ,
            ]).prop_map(|(id, off)| Op::Insert(id, off)),
            1 => (0..64u64).prop_map(Op::Cancel),
            2 => prop_oneof![0..100u64, 0..10_000u64, 0..10_000_000u64].prop_map(Op::Advance),
            1 => (prop_oneof![0..100u64, 0..1_000_000u64], 0..6usize)
                .prop_map(|(step, max)| Op::Take(step, max)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The wheel against a sorted map of (due, seq) → id.
        #[test]
        fn matches_a_sorted_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut wheel = TimerWheel::new(NOW);
            let mut model: BTreeMap<(u64, u64), u64> = BTreeMap::new();
            let mut key_of: HashMap<u64, (u64, u64)> = HashMap::new();
            let mut now = NOW;
            let mut seq = 0u64;
            for op in ops {
                match op {
                    Op::Insert(id, offset) => {
                        let due = now.saturating_add_signed(offset);
                        let replaced = wheel.insert(id, due);
                        let old = key_of.remove(&id);
                        prop_assert_eq!(replaced, old.is_some());
                        if let Some(old) = old { model.remove(&old); }
                        model.insert((due, seq), id);
                        key_of.insert(id, (due, seq));
                        seq += 1;
                    }
                    Op::Cancel(id) => {
                        let old = key_of.remove(&id);
                        prop_assert_eq!(wheel.cancel(id), old.is_some());
                        if let Some(old) = old { model.remove(&old); }
                    }
                    Op::Advance(step) | Op::Take(step, _) => {
                        if let Some(deadline) = wheel.next_deadline() {
                            prop_assert!(deadline <= model.keys().next().unwrap().0);
                        }
                        now += step;
                        let max = if let Op::Take(_, max) = op { max } else { usize::MAX };
                        let expected: Vec<Expired> = model
                            .range(..(now + 1, 0))
                            .take(max)
                            .map(|(&(due_ms, _), &id)| Expired { id, due_ms })
                            .collect();
                        for e in &expected {
                            model.remove(&key_of.remove(&e.id).unwrap());
                        }
                        prop_assert_eq!(wheel.take_due(now, max), expected);
                    }
                }
                prop_assert_eq!(wheel.len(), model.len());
                prop_assert_eq!(wheel.next_due(), model.keys().next().map(|k| k.0));
            }
        }
    }
}
