//! The JSON the store writes, checked and encoded so that it reads back exactly (the same
//! `serde_json::Value`) on both backends, or is refused on the way in with
//! [`Error::Invalid`] saying why.
//!
//! What can differ, and how it is handled:
//! - Numbers: PostgreSQL's `jsonb` keeps them as `numeric`, so it gives back a long decimal for
//!   `1.7976931348623157e308` or `5e-324`; serde_json's `float_roundtrip` feature (workspace
//!   `Cargo.toml`) parses those exactly. A float that is an integer of at least 1e16 that
//!   `numeric` would give back as an integer (`1e16` as `10000000000000000`, read as a `u64`) is
//!   written with its digits and `.0` so it reads back a float. `-0.0` reads back `0.0` on
//!   PostgreSQL (`numeric` has no negative zero; the two are equal JSON numbers).
//! - Nesting: serde_json reads at most [`MAX_DEPTH`] levels; a value that would be stored
//!   deeper (counting the levels the store wraps it in) could never be read back.
//! - The NUL character (`\u0000`) in a string or key: PostgreSQL cannot store it in `jsonb`;
//!   SQLite can.

use std::io;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};

use crate::{Error, Result};

/// The deepest nesting serde_json reads back (its recursion limit of 128 refuses the 128th
/// level): a scalar is 0 levels deep, `[1]` one.
pub const MAX_DEPTH: usize = 127;

/// Encodes `value` as JSON text that reads back as the same value on both backends, after
/// refusing what could not be stored and read back exactly: nesting deeper than
/// [`MAX_DEPTH`] (the value as stored: a state update's values are nested two levels deeper
/// in its checkpoint's metadata), and (when `nul` is false: PostgreSQL) a
/// NUL character in a string or key. `what` names the value in the error.
pub(crate) fn encode<T: Serialize + ?Sized>(what: &str, value: &T, nul: bool) -> Result<String> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Faithful);
    value.serialize(&mut ser).map_err(Error::db)?;
    let text = String::from_utf8(out).map_err(Error::db)?;
    let (depth, has_nul) = scan(&text);
    if depth > MAX_DEPTH {
        return Err(Error::Invalid(format!(
            "{what}: nested more than {MAX_DEPTH} levels deep as stored (counting the levels Spindle wraps it in), which could not be read back"
        )));
    }
    if has_nul && !nul {
        return Err(Error::Invalid(format!(
            "{what}: text must not contain the NUL character (\\u0000), which PostgreSQL cannot store"
        )));
    }
    Ok(text)
}

/// The nesting depth of JSON text as serde_json writes it, and whether a string in it holds
/// a NUL (which serde_json always writes `\u0000`). One pass over the bytes.
fn scan(text: &str) -> (usize, bool) {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest, mut nul) = (0usize, 0usize, false);
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => {
                    nul |= bytes.get(i + 1..i + 6) == Some(b"u0000");
                    i += 1;
                }
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    (deepest, nul)
}

/// serde_json's compact output, but a float that PostgreSQL's `numeric` would give back as an
/// integer serde_json reads as `u64`/`i64` (an integral float from 1e16 up to the integer
/// types' bounds, which serde_json writes `1e16`) is written `10000000000000000.0`.
#[derive(Clone, Copy, Debug)]
struct Faithful;

impl Formatter for Faithful {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        const TWO_63: f64 = 9_223_372_036_854_775_808.0;
        let integral = value.is_finite() && value.fract() == 0.0 && value.abs() >= 1e16;
        if integral && ((value > 0.0 && value < 2.0 * TWO_63) || (-TWO_63..0.0).contains(&value)) {
            write!(writer, "{value:.1}")
        } else {
            CompactFormatter.write_f64(writer, value)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(1), |v, _| json!([v]))
    }

    #[test]
    fn depth_is_what_serde_json_reads() {
        assert!(encode("x", &nested(MAX_DEPTH), true).is_ok());
        let err = encode("x", &nested(MAX_DEPTH + 1), true).unwrap_err().to_string();
        assert!(err.contains("nested more than 127 levels"), "{err}");
        // Brackets inside strings are text.
        assert!(encode("x", &json!({"a": "[[[[".repeat(100)}), true).is_ok());
        // What serde_json reads is exactly what is allowed.
        let text = encode("x", &nested(MAX_DEPTH), true).unwrap();
        assert!(serde_json::from_str::<Value>(&text).is_ok());
        assert!(serde_json::from_str::<Value>(&format!("[{text}]")).is_err());
    }

    #[test]
    fn nul_is_refused_only_where_it_cannot_be_stored() {
        for v in [json!({"a": "x\u{0}y"}), json!({"a\u{0}": 1}), json!([["\u{0}"]])] {
            assert!(encode("x", &v, true).is_ok());
            let err = encode("x", &v, false).unwrap_err().to_string();
            assert!(err.contains("NUL character"), "{err}");
        }
        // An escaped backslash before `u0000` is not a NUL; an escaped quote ends no string.
        assert!(encode("x", &json!("\\u0000"), false).is_ok());
        assert!(encode("x", &json!(["\"[[", "\\"]), false).is_ok());
    }

    #[test]
    fn integral_floats_keep_their_point() {
        for (v, text) in [
            (1e16, "10000000000000000.0"),
            (-1e16, "-10000000000000000.0"),
            (1.844_674_407_370_955e19, "18446744073709549568.0"),
            (1e15, "1000000000000000.0"),
            (1e20, "1e+20"),
            (1.5, "1.5"),
            (f64::MAX, "1.7976931348623157e+308"),
        ] {
            assert_eq!(encode("x", &json!(v), true).unwrap(), text);
            let back: Value = serde_json::from_str(text).unwrap();
            assert_eq!(back, json!(v));
            assert!(back.is_f64());
        }
    }
}
