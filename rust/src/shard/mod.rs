//! Entity id → shard, and shard → runner.
//!
//! Both halves reproduce Effect's cluster exactly, so a plait cluster and an Effect cluster
//! agree on where every entity lives: [`hash_string`] is Effect's `Hash.string` (a DJB2 variant
//! over UTF-16 code units), [`shard_id`] its `getShardId`, and [`HashRing`] its weighted
//! consistent-hash ring with bounded load.

mod ring;

use std::num::NonZeroU32;

pub use ring::{HashRing, DEFAULT_BASE_WEIGHT};

/// Shards per shard group when the configuration does not say (Effect's `shardsPerGroup`).
pub const DEFAULT_SHARDS_PER_GROUP: u32 = 300;
/// The most shards a group may have. Every shard is a lock and a row per runner, so real
/// clusters use hundreds to thousands; the bound keeps assignment tables allocatable.
pub const MAX_SHARDS_PER_GROUP: u32 = 1 << 20;

/// Errors of the shard router.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A shard count of zero or less, or past [`MAX_SHARDS_PER_GROUP`].
    #[error("shards per group must be an integer from 1 to {MAX_SHARDS_PER_GROUP}, got {0}")]
    InvalidShardCount(i64),
    /// A runner weight that is not a positive finite number.
    #[error("runner weight must be a positive finite number, got {0}")]
    InvalidWeight(f64),
    /// A weight that would give a runner more virtual nodes than the ring allows.
    #[error(
        "runner weight {weight} gives {vnodes} virtual nodes at base weight {base_weight}; \
         a runner may have at most {max}",
        max = ring::MAX_VIRTUAL_NODES
    )]
    TooManyVirtualNodes {
        /// The weight asked for.
        weight: f64,
        /// The ring's virtual nodes per unit of weight.
        base_weight: u32,
        /// What they would come to.
        vnodes: f64,
    },
    /// Removing a runner the ring does not hold.
    #[error("runner {0:?} is not in the ring")]
    UnknownRunner(String),
}

/// Checks a shard count.
///
/// # Errors
/// [`Error::InvalidShardCount`] unless `1 <= count <= MAX_SHARDS_PER_GROUP`.
pub fn shard_count(count: i64) -> Result<NonZeroU32, Error> {
    u32::try_from(count)
        .ok()
        .filter(|&n| n <= MAX_SHARDS_PER_GROUP)
        .and_then(NonZeroU32::new)
        .ok_or(Error::InvalidShardCount(count))
}

/// Effect's `Hash.string`: DJB2 over UTF-16 code units from last to first, in int32
/// arithmetic, then the `optimize` bit fold.
///
/// # Example
/// ```
/// assert_eq!(_native::shard::hash_string("entity-1"), 707_288_930);
/// ```
pub fn hash_string(s: &str) -> i32 {
    let mut h: i32 = 5381;
    // Last char first, and within a surrogate pair the low unit first: the UTF-16 code units
    // in reverse, without collecting them.
    for ch in s.chars().rev() {
        let mut buf = [0u16; 2];
        for &unit in ch.encode_utf16(&mut buf).iter().rev() {
            h = h.wrapping_mul(33) ^ i32::from(unit);
        }
    }
    optimize(h)
}

/// [`hash_string`] of a string given as UTF-16 code units. Unlike a `&str`, these may hold lone
/// surrogates, as JavaScript (and Python) strings can; Effect hashes them like any other unit.
pub fn hash_utf16(units: &[u16]) -> i32 {
    let mut h: i32 = 5381;
    for &unit in units.iter().rev() {
        h = h.wrapping_mul(33) ^ i32::from(unit);
    }
    optimize(h)
}

/// `(n & 0xbfffffff) | ((n >>> 1) & 0x40000000)`: folds bit 31 into bit 30 so that V8 keeps
/// the value a small integer.
fn optimize(n: i32) -> i32 {
    let u = n.cast_unsigned();
    ((u & 0xbfff_ffff) | ((u >> 1) & 0x4000_0000)).cast_signed()
}

/// The 1-based shard of an entity id: `abs(hash % shards) + 1`.
///
/// # Example
/// ```
/// use std::num::NonZeroU32;
/// let shards = NonZeroU32::new(300).unwrap();
/// assert_eq!(_native::shard::shard_id("entity-1", shards), 231);
/// ```
pub fn shard_id(entity_id: &str, shards_per_group: NonZeroU32) -> u32 {
    shard_of_hash(hash_string(entity_id), shards_per_group)
}

/// The 1-based shard of an entity id whose [`hash_string`] is `hash`.
pub fn shard_of_hash(hash: i32, shards_per_group: NonZeroU32) -> u32 {
    // JS `%` truncates towards zero, so abs(h % n) == abs(h) % n.
    hash.unsigned_abs() % shards_per_group.get() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// Effect's vectors (`tests/vectors/effect.json`: `Hash.string`), checked against node.
    #[test]
    fn hash_vectors() {
        for (s, h) in crate::vectors::pairs("hash_string") {
            assert_eq!(i64::from(hash_string(&s)), h, "hash of {s:?}");
        }
    }

    #[test]
    fn shard_vectors() {
        for (s, shard) in crate::vectors::pairs("shard_id_of_300") {
            assert_eq!(
                i64::from(shard_id(&s, shards(300))),
                shard,
                "shard of {s:?}"
            );
        }
    }

    #[test]
    fn shards_are_one_based_and_in_range() {
        for n in [1, 2, 7, 300, 4096] {
            for i in 0..2000 {
                let s = shard_id(&format!("id-{i}"), shards(n));
                assert!((1..=n).contains(&s));
            }
        }
        assert_eq!(shard_id("anything", shards(1)), 1);
    }

    #[test]
    fn extreme_hash_does_not_overflow() {
        // i32::MIN has no positive counterpart; unsigned_abs handles it.
        assert_eq!(i32::MIN.unsigned_abs() % 300 + 1, 249);
    }

    #[test]
    fn utf16_hash_agrees_and_takes_lone_surrogates() {
        for s in ["", "a", "héllo", "😀", "key-14-abcdefghij", "漢字😀x"] {
            let units: Vec<u16> = s.encode_utf16().collect();
            assert_eq!(hash_utf16(&units), hash_string(s), "{s:?}");
        }
        // "\ud800" in JS: h = 5381 * 33 ^ 0xd800, then the fold.
        assert_eq!(hash_utf16(&[0xd800]), optimize((5381 * 33) ^ 0xd800));
    }

    #[test]
    fn shard_count_rejects_non_positive_and_huge() {
        assert_eq!(shard_count(0), Err(Error::InvalidShardCount(0)));
        assert_eq!(shard_count(-3), Err(Error::InvalidShardCount(-3)));
        assert_eq!(shard_count(1 << 33), Err(Error::InvalidShardCount(1 << 33)));
        let past = i64::from(MAX_SHARDS_PER_GROUP) + 1;
        assert_eq!(shard_count(past), Err(Error::InvalidShardCount(past)));
        assert_eq!(shard_count(300).unwrap().get(), 300);
        assert!(Error::InvalidShardCount(-3).to_string().contains("-3"));
    }
}
