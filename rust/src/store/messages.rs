//! Entity messages as the store keeps them: persisted requests, their final replies, and the
//! durable state of entity instances (Effect's `cluster_messages` / `cluster_replies`, plus
//! plait's entity state).
//!
//! A request is saved before it is delivered and stays *unprocessed* until its final reply is
//! saved. Whoever delivers it *claims* it first (a claim is the instant it was taken); a read of
//! unprocessed requests skips those claimed less than [`CLAIM_MS`] ago and those whose
//! `deliver_at` is still ahead, and claims what it returns. A runner that takes over (or an
//! engine that starts) clears the claims, so that what was in flight is delivered again.
//!
//! Dedup: a request with a primary key is saved once per key; saving another with the same key
//! answers the original's id and its final reply, if it has one (Effect's `Duplicate`).

use sha2::{Digest, Sha256};

/// A claim older than this is void: its request is delivered again (Effect's 10 minutes).
pub const CLAIM_MS: u64 = 10 * 60 * 1000;

/// How long the claim of a request saved for another runner lasts (its sender sends it there
/// once saved): if the sender dies first, the owner's regular read takes it after this.
pub const FORWARD_CLAIM_MS: u64 = 30 * 1000;

/// A request sent by another process after its save is taken only if its claim has this long
/// left by the owner's clock (the clock its storage reads judge claims by); else it is left to
/// storage.
pub const FORWARD_MARGIN_MS: u64 = 10 * 1000;

/// Longest message key stored as is; a longer one is stored as its SHA-256 hex digest.
pub const MAX_KEY_CHARS: usize = 255;

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// A persisted entity request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The request's id (a snowflake).
    pub id: i64,
    /// Its shard, as `"group:id"`.
    pub shard: String,
    /// The entity type.
    pub entity_type: String,
    /// The entity id.
    pub entity_id: String,
    /// The RPC's name.
    pub tag: String,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// The dedup key ([`message_key`]), if the RPC has a primary key.
    pub key: Option<String>,
    /// Not delivered before this instant (ms since the Unix epoch).
    pub deliver_at: Option<u64>,
}

/// The stored key of a request with a primary key: `"<entity type>/<entity id>/<tag>/<key>"`
/// (Effect's `Envelope.primaryKey`), or its SHA-256 hex digest when longer than
/// [`MAX_KEY_CHARS`] characters.
pub fn message_key(entity_type: &str, entity_id: &str, tag: &str, primary_key: &str) -> String {
    let key = format!("{entity_type}/{entity_id}/{tag}/{primary_key}");
    if key.chars().count() <= MAX_KEY_CHARS {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(HEX_DIGITS[usize::from(byte & 0xf)]));
    }
    hex
}

/// Unprocessed requests read for delivery (and claimed), with when the next one held back by
/// its `deliver_at` is due.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unprocessed {
    /// The requests, in id order (snowflakes: save order per sender).
    pub requests: Vec<Request>,
    /// The earliest `deliver_at` after now among unprocessed requests of these shards.
    pub next_deliver_at: Option<u64>,
}

/// Which shards a read looks at: every one (a single engine holds them all) or a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shards<'a> {
    /// Every shard.
    All,
    /// These shards (`"group:id"`).
    Only(&'a [String]),
}

impl Shards<'_> {
    /// Whether `shard` is among them.
    pub fn contains(&self, shard: &str) -> bool {
        match self {
            Shards::All => true,
            Shards::Only(shards) => shards.iter().any(|s| s == shard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_key_is_kept_and_a_long_one_hashed() {
        assert_eq!(
            message_key("Counter", "c-1", "increment", "req-9"),
            "Counter/c-1/increment/req-9"
        );
        let long = "k".repeat(300);
        let hashed = message_key("Counter", "c-1", "increment", &long);
        // sha256("Counter/c-1/increment/" + 300 × "k"), as Python's hashlib gives it.
        assert_eq!(
            hashed,
            "3c382c0b3180129856b434f1cf1a82a9b55f10974942546fe9e5465f9cbf81f4"
        );
        // 255 characters (not bytes) stay as they are.
        let wide = "é".repeat(255 - "T/i/t/".chars().count());
        assert_eq!(message_key("T", "i", "t", &wide).chars().count(), 255);
    }
}
