//! Effect's weighted consistent-hash ring with bounded load (`effect/HashRing.ts`).
//!
//! Every detail that decides an assignment follows Effect: virtual node keys `"<runner>:<i>"`
//! for `i = vnodes..1`, a stable sort by hash, nearest virtual node by absolute distance with
//! ties to the upper one, the per-runner cap `max(1, floor(count * weight / total))` in `f64`,
//! and the outward scan past capped runners. Runners are kept in insertion order, as Effect's
//! `Map` keeps them.

use std::collections::HashMap;

use super::{hash_string, Error};

/// Virtual nodes per unit of weight in Effect's default ring.
pub const DEFAULT_BASE_WEIGHT: u32 = 128;
/// Effect raises any weight below this to it.
const MIN_WEIGHT: f64 = 0.1;
/// The most virtual nodes one runner may have (a weight of 8192 at the default base weight):
/// far past any real cluster's spread, and small enough to allocate.
pub const MAX_VIRTUAL_NODES: u32 = 1 << 20;

#[derive(Debug, Clone)]
struct Runner {
    key: String,
    weight: f64,
}

/// A weighted consistent-hash ring of runners, assigning shards with bounded load.
///
/// # Example
/// ```
/// use _native::shard::HashRing;
/// let mut ring = HashRing::default();
/// for r in ["runner1:34431", "runner2:34431", "runner3:34431"] {
///     ring.add(r, 1.0).unwrap();
/// }
/// let owners = ring.shards(12).unwrap();
/// let numbers: Vec<&str> = owners.iter().map(|&i| &ring.runner(i)[6..7]).collect();
/// assert_eq!(numbers.concat(), "311233221123");
/// ```
#[derive(Debug, Clone)]
pub struct HashRing {
    base_weight: f64,
    runners: Vec<Runner>,
    by_key: HashMap<String, usize>,
    /// `(hash, runner index)`, sorted by hash; equal hashes keep insertion order.
    ring: Vec<(i32, usize)>,
    total_weight: f64,
}

impl Default for HashRing {
    fn default() -> Self {
        Self::new(DEFAULT_BASE_WEIGHT)
    }
}

impl HashRing {
    /// An empty ring with `base_weight` virtual nodes per unit of weight (at least 1).
    pub fn new(base_weight: u32) -> Self {
        Self {
            base_weight: f64::from(base_weight.max(1)),
            runners: Vec::new(),
            by_key: HashMap::new(),
            ring: Vec::new(),
            total_weight: 0.0,
        }
    }

    /// Adds a runner, or changes the weight of one already in the ring.
    ///
    /// Weights below 0.1 count as 0.1, as in Effect.
    ///
    /// # Errors
    /// [`Error::InvalidWeight`] unless `weight` is finite and positive;
    /// [`Error::TooManyVirtualNodes`] when it would give the runner more than
    /// [`MAX_VIRTUAL_NODES`].
    pub fn add(&mut self, runner: &str, weight: f64) -> Result<(), Error> {
        if !weight.is_finite() || weight <= 0.0 {
            return Err(Error::InvalidWeight(weight));
        }
        let weight = weight.max(MIN_WEIGHT);
        // JS Math.round rounds halves up.
        let vnodes = (weight * self.base_weight + 0.5).floor();
        if vnodes > f64::from(MAX_VIRTUAL_NODES) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // from a u32
            let base_weight = self.base_weight as u32;
            return Err(Error::TooManyVirtualNodes {
                weight,
                base_weight,
                vnodes,
            });
        }
        let index = if let Some(&index) = self.by_key.get(runner) {
            let current = &mut self.runners[index];
            #[allow(clippy::float_cmp)] // Effect compares with ===
            if current.weight == weight {
                return Ok(());
            }
            self.total_weight -= current.weight;
            self.total_weight += weight;
            current.weight = weight;
            self.ring.retain(|&(_, r)| r != index);
            index
        } else {
            self.runners.push(Runner {
                key: runner.to_owned(),
                weight,
            });
            self.by_key
                .insert(runner.to_owned(), self.runners.len() - 1);
            self.total_weight += weight;
            self.runners.len() - 1
        };
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked above
        let vnodes = vnodes as u32;
        self.ring.reserve(vnodes as usize);
        for i in (1..=vnodes).rev() {
            self.ring
                .push((hash_string(&format!("{runner}:{i}")), index));
        }
        self.ring.sort_by_key(|&(hash, _)| hash);
        Ok(())
    }

    /// Removes a runner.
    ///
    /// # Errors
    /// [`Error::UnknownRunner`] when the ring does not hold `runner`.
    pub fn remove(&mut self, runner: &str) -> Result<(), Error> {
        let index = self
            .by_key
            .remove(runner)
            .ok_or_else(|| Error::UnknownRunner(runner.to_owned()))?;
        let removed = self.runners.remove(index);
        self.total_weight -= removed.weight;
        self.ring.retain(|&(_, r)| r != index);
        for entry in &mut self.ring {
            if entry.1 > index {
                entry.1 -= 1;
            }
        }
        for slot in self.by_key.values_mut() {
            if *slot > index {
                *slot -= 1;
            }
        }
        Ok(())
    }

    /// Whether the ring holds `runner`.
    pub fn contains(&self, runner: &str) -> bool {
        self.by_key.contains_key(runner)
    }

    /// Number of runners.
    pub fn len(&self) -> usize {
        self.runners.len()
    }

    /// Whether the ring has no runners.
    pub fn is_empty(&self) -> bool {
        self.runners.is_empty()
    }

    /// The runner at `index` (as returned by [`HashRing::shards`]).
    ///
    /// # Panics
    /// When `index` is not below [`HashRing::len`].
    pub fn runner(&self, index: usize) -> &str {
        &self.runners[index].key
    }

    /// The runners and their weights, in insertion order.
    pub fn runners(&self) -> impl Iterator<Item = (&str, f64)> {
        self.runners.iter().map(|r| (r.key.as_str(), r.weight))
    }

    /// The runner nearest to the hash of `input`, or `None` for an empty ring.
    pub fn get(&self, input: &str) -> Option<&str> {
        if self.ring.is_empty() {
            return None;
        }
        let (at, _) = self.index_for(hash_string(input), None);
        Some(self.runner(self.ring[at].1))
    }

    /// Assigns shards `1..=count`: element `i` is the index of the runner owning shard `i + 1`.
    /// `None` for an empty ring.
    pub fn shards(&self, count: usize) -> Option<Vec<usize>> {
        if self.ring.is_empty() {
            return None;
        }
        let runners = self.runners.len();
        let mut owner = vec![usize::MAX; count];
        let mut allocated = vec![0usize; runners];
        let mut excluded = vec![false; runners];
        let mut excluded_count = 0;
        #[allow(clippy::cast_precision_loss)]
        let cap = |runner: usize| -> f64 {
            (count as f64 * (self.runners[runner].weight / self.total_weight))
                .floor()
                .max(1.0)
        };
        let mut take = |runner: usize, excluded: &mut [bool], excluded_count: &mut usize| {
            allocated[runner] += 1;
            #[allow(clippy::cast_precision_loss)]
            let at_cap = allocated[runner] as f64 >= cap(runner);
            if at_cap && !excluded[runner] {
                excluded[runner] = true;
                *excluded_count += 1;
            }
        };

        // First pass: each shard to its nearest runner, nearest first, until runners are full.
        let hashes: Vec<i32> = (0..count)
            .map(|s| hash_string(&format!("shard-{s}")))
            .collect();
        let mut nearest: Vec<(usize, usize, i64)> = hashes
            .iter()
            .enumerate()
            .map(|(shard, &h)| {
                let (at, distance) = self.index_for(h, None);
                (shard, self.ring[at].1, distance)
            })
            .collect();
        nearest.sort_by_key(|&(_, _, distance)| distance);
        for (shard, runner, _) in nearest {
            if excluded[runner] {
                continue;
            }
            owner[shard] = runner;
            take(runner, &mut excluded, &mut excluded_count);
        }

        // Second pass: the rest, in shard order, to the nearest runner not yet full.
        let mut all_full = excluded_count == runners;
        for shard in 0..count {
            if owner[shard] != usize::MAX {
                continue;
            }
            let exclude = (!all_full).then_some(excluded.as_slice());
            let (at, _) = self.index_for(hashes[shard], exclude);
            let runner = self.ring[at].1;
            owner[shard] = runner;
            if all_full {
                continue;
            }
            take(runner, &mut excluded, &mut excluded_count);
            all_full = excluded_count == runners;
        }
        Some(owner)
    }

    /// Effect's `getIndexForInput`: the ring index for `hash` and its distance. Without an
    /// exclusion set, the nearer of the first virtual node `>= hash` and the one before it;
    /// with one, that first node if allowed, else an outward scan around it.
    fn index_for(&self, hash: i32, exclude: Option<&[bool]>) -> (usize, i64) {
        let ring = &self.ring;
        let len = ring.len();
        let lo = ring.partition_point(|&(h, _)| h < hash);
        let a = if lo == len { lo - 1 } else { lo };
        let distance = |i: usize| (i64::from(ring[i].0) - i64::from(hash)).abs();
        let Some(exclude) = exclude else {
            if lo == 0 {
                return (a, distance(a));
            }
            let b = lo - 1;
            return if distance(a) <= distance(b) {
                (a, distance(a))
            } else {
                (b, distance(b))
            };
        };
        if !exclude[ring[a].1] {
            return (a, distance(a));
        }
        let range = lo.max(len - lo);
        for i in 1..range {
            if let Some(below) = lo.checked_sub(i) {
                if below < len && !exclude[ring[below].1] {
                    return (below, distance(below));
                }
            }
            let above = lo + i;
            if above < len && !exclude[ring[above].1] {
                return (above, distance(above));
            }
        }
        (a, distance(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(runners: &[(&str, f64)]) -> HashRing {
        let mut ring = HashRing::default();
        for &(r, w) in runners {
            ring.add(r, w).unwrap();
        }
        ring
    }

    fn owners(ring: &HashRing, count: usize) -> Vec<String> {
        ring.shards(count)
            .unwrap()
            .into_iter()
            .map(|i| ring.runner(i).to_owned())
            .collect()
    }

    fn tally(owners: &[String], runner: &str) -> usize {
        owners.iter().filter(|o| *o == runner).count()
    }

    const THREE: [(&str, f64); 3] = [
        ("runner1:34431", 1.0),
        ("runner2:34431", 1.0),
        ("runner3:34431", 1.0),
    ];

    /// Effect's vectors (`tests/vectors/effect.json`: Effect's `HashRing`).
    #[test]
    fn effect_ring_vectors() {
        let vectors = crate::vectors::effect()["ring"].clone();
        let mut ring = HashRing::default();
        let runners: Vec<String> = vectors["runners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
        for runner in &runners {
            ring.add(runner, 1.0).unwrap();
        }
        let expected: Vec<&str> = vectors["owners_of_12_shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| runners[usize::try_from(n.as_u64().unwrap() - 1).unwrap()].as_str())
            .collect();
        assert_eq!(owners(&ring, 12), expected);
        let each = usize::try_from(vectors["shards_each_of_300"].as_u64().unwrap()).unwrap();
        let o = owners(&ring, 300);
        for runner in &runners {
            assert_eq!(tally(&o, runner), each, "{runner}");
        }

        let mut weighted = HashRing::default();
        let rows = vectors["weighted"].as_array().unwrap();
        for row in rows {
            weighted
                .add(row[0].as_str().unwrap(), row[1].as_f64().unwrap())
                .unwrap();
        }
        let o = owners(&weighted, 300);
        for row in rows {
            let runner = row[0].as_str().unwrap();
            let count = usize::try_from(row[2].as_u64().unwrap()).unwrap();
            assert_eq!(tally(&o, runner), count, "{runner}");
        }
    }

    #[test]
    fn empty_ring_assigns_nothing() {
        let ring = HashRing::default();
        assert!(ring.shards(300).is_none());
        assert!(ring.get("x").is_none());
        assert!(ring.is_empty());
    }

    #[test]
    fn single_runner_owns_everything() {
        let ring = ring_of(&[("only:1", 1.0)]);
        assert!(owners(&ring, 300).iter().all(|o| o == "only:1"));
        assert_eq!(ring.get("anything"), Some("only:1"));
    }

    #[test]
    fn more_runners_than_shards_still_assigns_each_shard() {
        let runners: Vec<String> = (0..10).map(|i| format!("r{i}:1")).collect();
        let mut ring = HashRing::default();
        for r in &runners {
            ring.add(r, 1.0).unwrap();
        }
        let o = owners(&ring, 4);
        assert_eq!(o.len(), 4);
        // The cap is max(1, floor(4/10)) = 1, so no runner gets two shards.
        for r in &runners {
            assert!(tally(&o, r) <= 1);
        }
    }

    #[test]
    fn remove_restores_the_previous_assignment() {
        let mut ring = ring_of(&THREE);
        let before = owners(&ring, 300);
        ring.add("runner4:34431", 1.0).unwrap();
        let with_four = owners(&ring, 300);
        assert_ne!(before, with_four);
        assert_eq!(tally(&with_four, "runner4:34431"), 75);
        ring.remove("runner4:34431").unwrap();
        assert_eq!(owners(&ring, 300), before);
        assert_eq!(ring.len(), 3);
    }

    #[test]
    fn removing_a_middle_runner_keeps_the_others_addressable() {
        let mut ring = ring_of(&THREE);
        ring.remove("runner2:34431").unwrap();
        let o = owners(&ring, 300);
        assert_eq!(tally(&o, "runner1:34431"), 150);
        assert_eq!(tally(&o, "runner3:34431"), 150);
        assert_eq!(
            ring.runners().map(|(r, _)| r).collect::<Vec<_>>(),
            ["runner1:34431", "runner3:34431"]
        );
    }

    #[test]
    fn reweighting_moves_load() {
        let mut ring = ring_of(&THREE);
        ring.add("runner1:34431", 2.0).unwrap();
        let o = owners(&ring, 300);
        assert_eq!(tally(&o, "runner1:34431"), 150);
        assert_eq!(ring.len(), 3);
        // Setting the same weight again changes nothing.
        ring.add("runner1:34431", 2.0).unwrap();
        assert_eq!(owners(&ring, 300), o);
    }

    #[test]
    fn tiny_weights_count_as_a_tenth() {
        let mut a = HashRing::default();
        a.add("x:1", 0.01).unwrap();
        let mut b = HashRing::default();
        b.add("x:1", 0.1).unwrap();
        assert_eq!(a.ring, b.ring);
        assert_eq!(a.ring.len(), 13);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut ring = ring_of(&THREE);
        assert_eq!(
            ring.remove("nope:1"),
            Err(Error::UnknownRunner("nope:1".into()))
        );
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(ring.add("x:1", w), Err(Error::InvalidWeight(_))));
        }
        for w in [1e9, 1e30, 8192.01] {
            assert!(matches!(
                ring.add("x:1", w),
                Err(Error::TooManyVirtualNodes { .. })
            ));
        }
        assert!(matches!(
            HashRing::new(u32::MAX).add("x:1", 1.0),
            Err(Error::TooManyVirtualNodes { .. })
        ));
        assert!(!ring.contains("x:1"));
        assert_eq!(ring.len(), 3);
    }

    #[test]
    fn adding_a_runner_moves_few_shards_between_old_runners() {
        let mut ring = ring_of(&THREE);
        let before = owners(&ring, 300);
        ring.add("runner4:34431", 1.0).unwrap();
        let after = owners(&ring, 300);
        let reshuffled = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && *a != "runner4:34431")
            .count();
        // 75 shards must move to the new runner; consistent hashing keeps the churn among
        // the old runners well below a full reshuffle (which would move ~150 of them).
        assert!(
            reshuffled < 75,
            "{reshuffled} shards moved between old runners"
        );
    }
}
