//! A hierarchical timer wheel at millisecond resolution.
//!
//! Eleven levels of 64 slots: level `L` slots are `64^L` ms wide, and 11 × 6 bits cover every
//! `u64` instant, so a timer years away needs no overflow list. A timer sits at the level of the
//! highest 6-bit digit in which its due instant differs from the wheel's current instant; when
//! time reaches its slot it cascades to a lower level, at most ten times in its life. A bitmap
//! per level finds the next occupied slot in O(1), so advancing over empty time costs nothing.
//! Entries live in a slab and slots are intrusive doubly linked lists, so cancel is O(1).

use rustc_hash::FxHashMap;

const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const LEVELS: usize = 11;
const NIL: u32 = u32::MAX;
/// `level` of an entry waiting in the overdue list.
const OVERDUE: u8 = u8::MAX;

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
    /// Timers inserted at or before `elapsed`: due at the next advance.
    overdue: List,
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
            overdue: List::EMPTY,
            next_seq: 0,
        }
    }

    /// The instant the wheel has advanced to.
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Number of pending timers.
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
    /// A due instant at or before the wheel's current instant fires at the next advance.
    /// Returns whether a pending timer was replaced.
    ///
    /// # Panics
    /// With more than `u32::MAX - 1` timers pending at once.
    pub fn insert(&mut self, id: u64, due_ms: u64) -> bool {
        if let Some(&index) = self.by_id.get(&id) {
            // Reschedule in place: same slab entry, new instant, new insertion order.
            self.unlink(index);
            let entry = &mut self.entries[index as usize];
            entry.due = due_ms;
            entry.seq = self.next_seq;
            self.next_seq += 1;
            self.place(index);
            return true;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
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

    /// Cancels timer `id`. Returns whether it was pending.
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
        if !self.overdue.is_empty() {
            return self.iter_list(self.overdue).map(|e| e.due).min();
        }
        let (level, slot, _) = self.next_expiration()?;
        self.iter_list(self.slots[level * SLOTS + slot])
            .map(|e| e.due)
            .min()
    }

    /// Moves the wheel to `now_ms` and returns every timer due by then, ordered by due
    /// instant and, within one millisecond, by insertion. The returned timers are no longer
    /// pending. Moving backwards only returns overdue insertions.
    pub fn advance(&mut self, now_ms: u64) -> Vec<Expired> {
        let mut fired: Vec<(u64, u64, u64)> = Vec::new();
        self.drain_list(OVERDUE, 0, &mut fired);
        while let Some((level, slot, deadline)) = self.next_expiration() {
            if deadline > now_ms {
                break;
            }
            self.elapsed = deadline;
            self.drain_list(u8::try_from(level).unwrap_or(0), slot, &mut fired);
        }
        self.elapsed = self.elapsed.max(now_ms);
        // Timers reach the output slot by slot; a stable sort orders equal instants by
        // insertion and is near-linear on this nearly sorted input.
        fired.sort_by_key(|&(due, seq, _)| (due, seq));
        fired
            .into_iter()
            .map(|(due_ms, _, id)| Expired { id, due_ms })
            .collect()
    }

    /// Empties one list: timers due by `elapsed` fire, the rest cascade to a lower level.
    fn drain_list(&mut self, level: u8, slot: usize, fired: &mut Vec<(u64, u64, u64)>) {
        let list = if level == OVERDUE {
            std::mem::replace(&mut self.overdue, List::EMPTY)
        } else {
            let level = usize::from(level);
            self.occupied[level] &= !(1u64 << slot);
            std::mem::replace(&mut self.slots[level * SLOTS + slot], List::EMPTY)
        };
        let mut cursor = list.head;
        while cursor != NIL {
            let entry = self.entries[cursor as usize];
            let next = entry.next;
            if entry.due <= self.elapsed {
                fired.push((entry.due, entry.seq, entry.id));
                self.by_id.remove(&entry.id);
                self.free.push(cursor);
            } else {
                self.place(cursor);
            }
            cursor = next;
        }
    }

    /// Links entry `index` into the list its due instant belongs to, from `elapsed`.
    fn place(&mut self, index: u32) {
        let due = self.entries[index as usize].due;
        let (level, slot) = if due <= self.elapsed {
            (OVERDUE, 0)
        } else {
            let level = level_for(self.elapsed, due);
            (level, slot_for(due, level))
        };
        let entry = &mut self.entries[index as usize];
        entry.level = level;
        #[allow(clippy::cast_possible_truncation)] // a slot is < 64
        {
            entry.slot = slot as u8;
        }
        let list = if level == OVERDUE {
            &mut self.overdue
        } else {
            self.occupied[usize::from(level)] |= 1u64 << slot;
            &mut self.slots[usize::from(level) * SLOTS + slot]
        };
        let tail = list.tail;
        if tail == NIL {
            list.head = index;
        }
        list.tail = index;
        let entry = &mut self.entries[index as usize];
        entry.prev = tail;
        entry.next = NIL;
        if tail != NIL {
            self.entries[tail as usize].next = index;
        }
    }

    fn unlink(&mut self, index: u32) {
        let Entry {
            prev,
            next,
            level,
            slot,
            ..
        } = self.entries[index as usize];
        let slot = usize::from(slot);
        let list = if level == OVERDUE {
            &mut self.overdue
        } else {
            &mut self.slots[usize::from(level) * SLOTS + slot]
        };
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
        if level != OVERDUE && list.is_empty() {
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

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, i64),
        Cancel(u64),
        Advance(u64),
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
                    Op::Advance(step) => {
                        now += step;
                        let expected: Vec<Expired> = model
                            .range(..(now + 1, 0))
                            .map(|(&(due_ms, _), &id)| Expired { id, due_ms })
                            .collect();
                        for e in &expected {
                            model.remove(&key_of.remove(&e.id).unwrap());
                        }
                        prop_assert_eq!(wheel.advance(now), expected);
                    }
                }
                prop_assert_eq!(wheel.len(), model.len());
                prop_assert_eq!(wheel.next_due(), model.keys().next().map(|k| k.0));
            }
        }
    }
}
