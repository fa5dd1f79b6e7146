//! The writer's memory of execution numbers: id -> `no` for the executions it created or found.
//!
//! Every op but `untimer` names its execution by id, and ids are random hex: looking one up is a
//! descent of an index far larger than any cache once the store holds millions of executions,
//! and that descent was most of what a commit cost as the journal grew. An execution is never
//! deleted and its `no` never changes, so a number the writer saw committed stays true for the
//! life of the store: with it, an op goes straight to the execution's row (or to the journal,
//! keyed by `no`) and leaves the index of ids alone.
//!
//! Only committed numbers are kept. What a transaction learns goes into a [`Learned`] list that
//! joins the cache once the transaction has committed; a transaction that rolls back or fails
//! takes its list with it, so a number of an execution whose insert was undone (and which a
//! later execution may then get) is never used.

use rustc_hash::FxHashMap;

/// How many numbers the writer keeps, at most. Two generations of half that each: about 10 MB
/// at 32-character ids, and enough for every execution in flight many times over.
pub(super) const CAPACITY: usize = 128 * 1024;

/// The numbers of recently used executions, bounded by two generations: new and used entries go
/// into `recent`; when it is full, it becomes `older` (the previous `older` is dropped), and an
/// entry found in `older` moves back into `recent` when the transaction that used it commits.
/// So an execution in use is never forgotten, one left alone for two generations is, and each
/// operation costs a hash lookup or two.
#[derive(Debug)]
pub(super) struct Numbers {
    recent: FxHashMap<Box<str>, i64>,
    older: FxHashMap<Box<str>, i64>,
    generation: usize,
}

/// What one transaction learned: the numbers to keep once it commits, by id.
pub(super) type Learned<'a> = FxHashMap<&'a str, i64>;

impl Numbers {
    /// A cache of at most `capacity` numbers (at least 2).
    pub(super) fn new(capacity: usize) -> Self {
        let generation = (capacity / 2).max(1);
        Self {
            recent: FxHashMap::default(),
            older: FxHashMap::default(),
            generation,
        }
    }

    /// The number of execution `id`, if known, and whether the transaction using it should
    /// note it in its [`Learned`] list (it is in the older generation, and would otherwise be
    /// forgotten at the next turn even though it is in use).
    pub(super) fn get(&self, id: &str) -> Option<(i64, bool)> {
        if let Some(&no) = self.recent.get(id) {
            return Some((no, false));
        }
        self.older.get(id).map(|&no| (no, true))
    }

    /// Keeps what a committed transaction learned.
    pub(super) fn keep<'a>(&mut self, learned: impl IntoIterator<Item = (&'a str, i64)>) {
        for (id, no) in learned {
            if self.recent.get(id) == Some(&no) {
                continue;
            }
            if self.recent.len() >= self.generation {
                self.older = std::mem::take(&mut self.recent);
                self.recent.reserve(self.generation);
            }
            // Moved rather than copied when it is in the older generation.
            let key = self
                .older
                .remove_entry(id)
                .map_or_else(|| Box::from(id), |(key, _)| key);
            self.recent.insert(key, no);
        }
    }

    /// How many numbers are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.recent.len() + self.older.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_kept_until_two_generations_pass_them_by() {
        let mut numbers = Numbers::new(4);
        numbers.keep(vec![("a", 1), ("b", 2)]);
        assert_eq!(numbers.get("a"), Some((1, false)));
        // `recent` is full: it turns into `older` before c goes in.
        numbers.keep(vec![("c", 3)]);
        assert_eq!(numbers.get("a"), Some((1, true)));
        assert_eq!(numbers.get("c"), Some((3, false)));
        // a is in use: kept again, it moves back into `recent`.
        numbers.keep(vec![("a", 1)]);
        assert_eq!(numbers.get("a"), Some((1, false)));
        numbers.keep(vec![("d", 4), ("e", 5)]);
        assert_eq!(numbers.get("b"), None, "two generations without use");
        assert_eq!(numbers.get("a"), Some((1, true)));
        assert_eq!(numbers.get("e"), Some((5, false)));
        assert!(numbers.len() <= 4);
        for n in 0..100 {
            numbers.keep(vec![(&*format!("x{n}"), n)]);
            assert!(numbers.len() <= 4);
        }
        assert_eq!(numbers.get("x99"), Some((99, false)));
    }

    #[test]
    fn what_is_not_kept_is_not_known() {
        let mut numbers = Numbers::new(CAPACITY);
        let learned: Learned<'_> = [("a", 1)].into_iter().collect();
        // A transaction that failed drops its list unkept.
        drop(learned);
        assert_eq!(numbers.get("a"), None);
        numbers.keep(vec![("a", 1), ("a", 1)]);
        assert_eq!(numbers.len(), 1);
    }
}
