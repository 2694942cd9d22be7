//! Whole numbers in request bodies. JSON has one number type, and JSON Schema's `integer`
//! is a value, not a spelling: `5`, `5.0` and `5e0` are all the integer 5, so each is
//! accepted where the API takes an integer. A number with a fraction, a negative one, or
//! one past 2^53 written with a fraction or exponent (where the JSON parser may already
//! have rounded it to another integer) is refused.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::Number;

/// Below this, every whole number a float holds was spelled exactly (at it, 2^53 + 1 would
/// already have been rounded to it).
const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

/// A whole number from 0 to 2^64-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole(pub u64);

fn from_float(f: f64) -> Option<u64> {
    (f.fract() == 0.0 && (0.0..EXACT).contains(&f)).then_some(f as u64)
}

/// The value of a JSON number as a whole number from 0 to 2^64-1, if it is one.
pub fn as_whole(n: &Number) -> Option<u64> {
    n.as_u64().or_else(|| n.as_f64().and_then(from_float))
}

struct WholeVisitor;

impl Visitor<'_> for WholeVisitor {
    type Value = Whole;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer from 0 to 2^64-1")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Whole, E> {
        Ok(Whole(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Whole, E> {
        u64::try_from(v).map(Whole).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Whole, E> {
        from_float(v).map(Whole).ok_or_else(|| E::invalid_value(de::Unexpected::Float(v), &self))
    }
}

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Whole, D::Error> {
        d.deserialize_any(WholeVisitor)
    }
}

/// For `#[serde(deserialize_with = "whole::u64")]`.
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Whole::deserialize(d).map(|w| w.0)
}

/// For `#[serde(default, deserialize_with = "whole::opt_u64")]` (null or absent: `None`).
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<Whole>::deserialize(d).map(|w| w.map(|w| w.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers() {
        for (text, want) in [
            ("5", 5),
            ("5.0", 5),
            ("5e0", 5),
            ("0.0", 0),
            ("-0.0", 0),
            ("18446744073709551615", u64::MAX),
            // Found by the fuzzer: parsed without exact rounding, this became ...85.5.
            ("4185247883371586.0", 4_185_247_883_371_586),
        ] {
            assert_eq!(serde_json::from_str::<Whole>(text).ok(), Some(Whole(want)), "{text}");
        }
        for text in ["5.5", "-1", "-1.0", "1e300", "9007199254740993.0", "\"5\"", "true", "null"] {
            assert!(serde_json::from_str::<Whole>(text).is_err(), "{text}");
        }
    }
}
