//! Workflow execution ids, activity idempotency keys and deferred tokens, as Effect makes them.
//!
//! - execution id: the first 16 bytes of `sha256("<workflow>-<idempotency key>")`, as 32
//!   lowercase hex digits;
//! - activity idempotency key: the same digest of `"<execution id>-<name>"`, or of
//!   `"<execution id>-<attempt>-<name>"` when the attempt is included;
//! - deferred token: unpadded base64url of the compact JSON array
//!   `[workflow, execution id, deferred name]`.

use std::fmt;

use base64::{
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use sha2::{Digest, Sha256};

/// Errors parsing deferred tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The token is not base64url of a JSON array of three strings.
    #[error("malformed deferred token {token:?}: {reason}")]
    MalformedToken {
        /// The token as given (shortened when long).
        token: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An activity attempt below 1 (attempts count from 1).
    #[error("activity attempt {0} is out of range: attempts count from 1")]
    InvalidAttempt(i64),
}

/// Unpadded base64url on output; padding optional on input.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Longest token quoted back in an error.
const QUOTED_TOKEN_CHARS: usize = 120;

/// 32 lowercase hex digits: the first 16 bytes of a SHA-256 digest. A plain value, so batches
/// of ids need no allocation per id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HexDigest([u8; 32]);

impl HexDigest {
    /// The digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for HexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for HexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<&str> for HexDigest {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Effect's `makeHashDigest`: the first 16 bytes of SHA-256 of `input`, lowercase hex.
pub fn hash_digest(input: &str) -> HexDigest {
    digest_of(&[input])
}

/// [`hash_digest`] of the concatenation of `parts`, without building it.
fn digest_of(parts: &[&str]) -> HexDigest {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut out = [0u8; 32];
    for (pair, &byte) in out.chunks_exact_mut(2).zip(&digest[..16]) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    HexDigest(out)
}

/// The execution id of a workflow run.
///
/// # Example
/// ```
/// assert_eq!(
///     _native::ids::execution_id("EmailWorkflow", "test-email-1"),
///     "da09278eeca46f53cc05e2ed728924aa",
/// );
/// ```
pub fn execution_id(workflow: &str, idempotency_key: &str) -> HexDigest {
    digest_of(&[workflow, "-", idempotency_key])
}

/// An activity's idempotency key within an execution, for deduplicating external effects.
/// With `attempt` (counting from 1), each attempt of the activity gets its own key.
///
/// # Errors
/// [`Error::InvalidAttempt`] for an attempt below 1.
pub fn activity_idempotency_key(
    execution_id: &str,
    name: &str,
    attempt: Option<i64>,
) -> Result<HexDigest, Error> {
    Ok(match attempt {
        Some(attempt) if attempt < 1 => return Err(Error::InvalidAttempt(attempt)),
        Some(attempt) => digest_of(&[execution_id, "-", &attempt.to_string(), "-", name]),
        None => digest_of(&[execution_id, "-", name]),
    })
}

/// The parts of a deferred token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenParts {
    /// The workflow's name.
    pub workflow: String,
    /// The execution the deferred belongs to.
    pub execution_id: String,
    /// The deferred's durable name.
    pub deferred: String,
}

/// Encodes a deferred token.
///
/// # Example
/// ```
/// let token = _native::ids::encode_token("EmailWorkflow", "da09278eeca46f53cc05e2ed728924aa", "EmailTrigger");
/// assert_eq!(token, "WyJFbWFpbFdvcmtmbG93IiwiZGEwOTI3OGVlY2E0NmY1M2NjMDVlMmVkNzI4OTI0YWEiLCJFbWFpbFRyaWdnZXIiXQ");
/// ```
pub fn encode_token(workflow: &str, execution_id: &str, deferred: &str) -> String {
    // serde_json's compact form escapes exactly as JS JSON.stringify does for valid strings.
    let json = serde_json::json!([workflow, execution_id, deferred]).to_string();
    BASE64URL.encode(json)
}

/// Parses a deferred token.
///
/// # Errors
/// [`Error::MalformedToken`] when the token is not base64url, not UTF-8 JSON, or not an array
/// of exactly three strings.
pub fn parse_token(token: &str) -> Result<TokenParts, Error> {
    let malformed = |reason| Error::MalformedToken {
        token: token.chars().take(QUOTED_TOKEN_CHARS).collect(),
        reason,
    };
    let bytes = BASE64URL
        .decode(token)
        .map_err(|_| malformed("not unpadded base64url"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| malformed("not UTF-8 JSON"))?;
    let serde_json::Value::Array(items) = value else {
        return Err(malformed("not a JSON array"));
    };
    let [workflow, execution_id, deferred] = <[serde_json::Value; 3]>::try_from(items)
        .map_err(|_| malformed("not an array of three elements"))?;
    match (workflow, execution_id, deferred) {
        (
            serde_json::Value::String(workflow),
            serde_json::Value::String(execution_id),
            serde_json::Value::String(deferred),
        ) => Ok(TokenParts {
            workflow,
            execution_id,
            deferred,
        }),
        _ => Err(malformed("array elements must be strings")),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EXECUTION: &str = "da09278eeca46f53cc05e2ed728924aa";
    const TOKEN: &str =
        "WyJFbWFpbFdvcmtmbG93IiwiZGEwOTI3OGVlY2E0NmY1M2NjMDVlMmVkNzI4OTI0YWEiLCJFbWFpbFRyaWdnZXIiXQ";

    /// Effect's vectors (`tests/vectors/effect.json`: an execution id and a deferred token).
    #[test]
    fn effect_vectors() {
        let v = crate::vectors::effect();
        let (run, token) = (&v["execution_id"], &v["deferred_token"]);
        let s = |value: &serde_json::Value| value.as_str().unwrap().to_owned();
        assert_eq!(
            execution_id(&s(&run["workflow"]), &s(&run["idempotency_key"])),
            s(&run["execution_id"]).as_str()
        );
        let parts = TokenParts {
            workflow: s(&token["workflow"]),
            execution_id: s(&token["execution_id"]),
            deferred: s(&token["deferred"]),
        };
        assert_eq!(
            encode_token(&parts.workflow, &parts.execution_id, &parts.deferred),
            s(&token["token"])
        );
        assert_eq!(parse_token(&s(&token["token"])).unwrap(), parts);
        assert_eq!(EXECUTION, s(&run["execution_id"]));
        assert_eq!(TOKEN, s(&token["token"]));
    }

    /// §2.2: the key is the digest of `<execution id>[-<attempt>]-<name>`.
    #[test]
    fn activity_keys_are_digests_of_the_documented_strings() {
        assert_eq!(
            activity_idempotency_key(EXECUTION, "ChargeCard", None),
            Ok(hash_digest(&format!("{EXECUTION}-ChargeCard")))
        );
        assert_eq!(
            activity_idempotency_key(EXECUTION, "ChargeCard", Some(3)),
            Ok(hash_digest(&format!("{EXECUTION}-3-ChargeCard")))
        );
        assert_ne!(
            activity_idempotency_key(EXECUTION, "ChargeCard", Some(1)),
            activity_idempotency_key(EXECUTION, "ChargeCard", Some(2))
        );
        assert_eq!(
            activity_idempotency_key(EXECUTION, "ChargeCard", Some(0)),
            Err(Error::InvalidAttempt(0))
        );
    }

    #[test]
    fn digest_is_sha256_prefix() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223 b00361a396177a9cb410ff61f20015ad
        assert_eq!(hash_digest("abc"), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(hash_digest("").as_str().len(), 32);
        assert_eq!(
            format!("{}", hash_digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223"
        );
    }

    #[test]
    fn token_json_escapes_like_json_stringify() {
        // JSON.stringify(["a\"b","\\","\u0001é😀"]) === '["a\\"b","\\\\","\\u0001é😀"]'
        let token = encode_token("a\"b", "\\", "\u{1}é😀");
        let json = String::from_utf8(BASE64URL.decode(&token).unwrap()).unwrap();
        assert_eq!(json, "[\"a\\\"b\",\"\\\\\",\"\\u0001é😀\"]");
        assert!(!token.contains('=') && !token.contains('+') && !token.contains('/'));
    }

    #[test]
    fn padded_tokens_are_accepted() {
        let padded = format!("{TOKEN}==");
        assert_eq!(parse_token(&padded).unwrap().deferred, "EmailTrigger");
    }

    #[test]
    fn malformed_tokens_say_why() {
        let reason = |t: &str| match parse_token(t) {
            Err(Error::MalformedToken { reason, .. }) => reason,
            other => panic!("{t:?} gave {other:?}"),
        };
        assert_eq!(reason("not base64!"), "not unpadded base64url");
        assert_eq!(reason(&BASE64URL.encode("{")), "not UTF-8 JSON");
        assert_eq!(reason(&BASE64URL.encode(b"\xff\xfe")), "not UTF-8 JSON");
        assert_eq!(reason(&BASE64URL.encode("{\"a\":1}")), "not a JSON array");
        assert_eq!(
            reason(&BASE64URL.encode("[\"a\",\"b\"]")),
            "not an array of three elements"
        );
        assert_eq!(
            reason(&BASE64URL.encode("[\"a\",\"b\",\"c\",\"d\"]")),
            "not an array of three elements"
        );
        assert_eq!(
            reason(&BASE64URL.encode("[\"a\",\"b\",3]")),
            "array elements must be strings"
        );
        assert_eq!(reason(""), "not UTF-8 JSON");
        let long = "!".repeat(10_000);
        let Err(err) = parse_token(&long) else {
            panic!()
        };
        assert!(err.to_string().len() < 300);
    }

    proptest! {
        #[test]
        fn tokens_round_trip(w in ".*", e in "[0-9a-f]{32}", d in ".*") {
            let parts = parse_token(&encode_token(&w, &e, &d)).unwrap();
            prop_assert_eq!(parts, TokenParts { workflow: w, execution_id: e, deferred: d });
        }

        #[test]
        fn execution_ids_are_32_lowercase_hex(w in ".*", k in ".*") {
            let id = execution_id(&w, &k);
            prop_assert_eq!(id, hash_digest(&format!("{w}-{k}")));
            prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }
}
