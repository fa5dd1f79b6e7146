//! Effect's published test vectors, shared with the Python tests (`tests/vectors/effect.json`).

use serde_json::Value;

pub fn effect() -> Value {
    serde_json::from_str(include_str!("../../tests/vectors/effect.json"))
        .expect("tests/vectors/effect.json is valid JSON")
}

/// `[[string, integer], ...]` pairs of the array at `key`.
pub fn pairs(key: &str) -> Vec<(String, i64)> {
    effect()[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is an array"))
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().expect("a string").to_owned(),
                pair[1].as_i64().expect("an integer"),
            )
        })
        .collect()
}
