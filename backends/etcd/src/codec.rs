//! JSON wire conventions shared by every request and reply.
//!
//! * bytes fields are standard base64 with padding (decoding also accepts no padding);
//! * int64 fields arrive as strings from etcd and as numbers from antietcd; both are
//!   accepted, and `null` or an absent field is zero;
//! * lease IDs are decimal int64 strings on etcd but 16-hex-digit strings on antietcd.
//!   [`LeaseId`] holds the number; which text form to read and write depends on the
//!   server, and the client sets it for the duration of one (synchronous)
//!   encode or decode with [`with_flavour`].

use std::cell::Cell;
use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::client::ServerFlavour;

/// Standard alphabet; always pads when encoding, accepts either when decoding.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

thread_local! {
    /// Whether lease IDs are written and read in antietcd's hex form on this thread right now.
    static HEX_LEASES: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Runs `f` (a synchronous encode or decode) with lease IDs in the form used by `flavour`.
pub(crate) fn with_flavour<R>(flavour: &ServerFlavour, f: impl FnOnce() -> R) -> R {
    let hex = matches!(flavour, ServerFlavour::Antietcd { .. });
    let previous = HEX_LEASES.with(|c| c.replace(Some(hex)));
    let result = f();
    HEX_LEASES.with(|c| c.set(previous));
    result
}

fn hex_leases() -> Option<bool> {
    HEX_LEASES.with(Cell::get)
}

/// Serde adapter for `Vec<u8>` fields carried as base64 text.
pub(crate) mod b64 {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        match text {
            None => Ok(Vec::new()),
            Some(t) => B64.decode(t.as_bytes()).map_err(de::Error::custom),
        }
    }
}

/// Serde adapter for a list of base64 byte strings.
pub(crate) mod b64_list {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let list: Option<Vec<String>> = Option::deserialize(d)?;
        list.unwrap_or_default()
            .into_iter()
            .map(|t| B64.decode(t.as_bytes()).map_err(de::Error::custom))
            .collect()
    }
}

/// An integer as found on the wire: a JSON number or a string, before interpretation.
enum WireInt {
    Signed(i64),
    Unsigned(u64),
    Text(String),
    Null,
}

impl<'de> Deserialize<'de> for WireInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WireInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer as a JSON number or string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WireInt, E> {
                Ok(WireInt::Signed(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WireInt, E> {
                Ok(WireInt::Unsigned(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<WireInt, E> {
                if v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Ok(WireInt::Signed(v as i64))
                } else {
                    Err(E::custom(format!("not an integer: {v}")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WireInt, E> {
                Ok(WireInt::Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<WireInt, E> {
                Ok(WireInt::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<WireInt, E> {
                Ok(WireInt::Null)
            }
        }
        d.deserialize_any(V)
    }
}

/// Serde adapter: an `i64` sent as a number or a string.
pub(crate) mod int {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match WireInt::deserialize(d)? {
            WireInt::Signed(v) => Ok(v),
            WireInt::Unsigned(v) => i64::try_from(v).map_err(de::Error::custom),
            WireInt::Text(t) if t.is_empty() => Ok(0),
            WireInt::Text(t) => t.parse().map_err(de::Error::custom),
            WireInt::Null => Ok(0),
        }
    }

    pub(crate) fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
}

/// Serde adapter: a `u64` identifier (cluster, member) sent as a number or a string.
///
/// Lenient: antietcd's member IDs are arbitrary node names, which read as 0.
pub(crate) mod id {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(match WireInt::deserialize(d)? {
            WireInt::Signed(v) => v as u64,
            WireInt::Unsigned(v) => v,
            WireInt::Text(t) => t.parse().unwrap_or(0),
            WireInt::Null => 0,
        })
    }
}

/// The ID of a lease.
///
/// etcd writes lease IDs as decimal int64 strings, antietcd as 16 lowercase hex digits
/// (the same 64 bits). A `LeaseId` holds the number; the [`Client`](crate::Client) reads
/// and writes the form its server uses. [`LeaseId::NONE`] (0) means "no lease".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LeaseId(pub i64);

impl LeaseId {
    /// No lease.
    pub const NONE: LeaseId = LeaseId(0);

    /// The numeric ID, as etcd shows it.
    pub fn get(self) -> i64 {
        self.0
    }

    /// Whether this is [`LeaseId::NONE`].
    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The ID in antietcd's form: 16 lowercase hex digits.
    pub fn to_hex(self) -> String {
        format!("{:016x}", self.0 as u64)
    }

    /// Parses a lease ID in either form: decimal (etcd) or 16 hex digits (antietcd).
    ///
    /// A 16-character string of decimal digits is ambiguous; it is read as hex only
    /// when `hex_hint` says the server is antietcd.
    pub fn parse(text: &str, hex_hint: bool) -> Option<LeaseId> {
        let text = text.trim();
        if text.is_empty() {
            return Some(LeaseId::NONE);
        }
        let looks_hex = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
        let has_hex_letter = text.bytes().any(|b| b.is_ascii_alphabetic());
        if looks_hex && (hex_hint || has_hex_letter) {
            return u64::from_str_radix(text, 16).ok().map(|v| LeaseId(v as i64));
        }
        if let Ok(v) = text.parse::<i64>() {
            return Some(LeaseId(v));
        }
        if let Ok(v) = text.parse::<u64>() {
            return Some(LeaseId(v as i64));
        }
        if looks_hex {
            return u64::from_str_radix(text, 16).ok().map(|v| LeaseId(v as i64));
        }
        None
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<i64> for LeaseId {
    fn from(v: i64) -> Self {
        LeaseId(v)
    }
}

impl Serialize for LeaseId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if hex_leases() == Some(true) {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_str(&self.0.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for LeaseId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match WireInt::deserialize(d)? {
            WireInt::Signed(v) => Ok(LeaseId(v)),
            WireInt::Unsigned(v) => Ok(LeaseId(v as i64)),
            WireInt::Null => Ok(LeaseId::NONE),
            WireInt::Text(t) => LeaseId::parse(&t, hex_leases() == Some(true))
                .ok_or_else(|| de::Error::custom(format!("invalid lease ID {t:?}"))),
        }
    }
}

/// Whether a number is zero (for `skip_serializing_if`).
pub(crate) fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Whether a bool is false (for `skip_serializing_if`).
pub(crate) fn is_false(v: &bool) -> bool {
    !*v
}

/// Whether a lease is [`LeaseId::NONE`] (for `skip_serializing_if`).
pub(crate) fn is_no_lease(v: &LeaseId) -> bool {
    v.is_none()
}

/// The `range_end` that selects every key starting with `prefix`: the prefix with its
/// last byte incremented after dropping trailing 0xff bytes, or `"\0"` (every key from
/// `prefix` on) when there is no such byte.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            if let Some(b) = end.last_mut() {
                *b = last + 1;
            }
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// Whether `key` falls into the range `[start, end)` as etcd defines it: a single key
/// when `end` is empty, every key `>= start` when `end` is `"\0"`.
pub(crate) fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        return key == start;
    }
    if end == [0] {
        return key >= start;
    }
    key >= start && key < end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefix range ends follow the gateway reference's checklist.
    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_range_end(b"/p/"), b"/p0");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_range_end(b""), b"\0");
    }

    /// Lease IDs parse in both wire forms and print back in the server's form.
    #[test]
    fn lease_forms() {
        let etcd = LeaseId::parse("2324035543812149573", false);
        assert_eq!(etcd, Some(LeaseId(2324035543812149573)));
        let anti = LeaseId::parse("2040a2038a4e116a", false);
        assert_eq!(anti, Some(LeaseId(0x2040a2038a4e116a)));
        assert_eq!(anti.map(LeaseId::to_hex).as_deref(), Some("2040a2038a4e116a"));
        // High bit set: still round-trips through i64.
        let high = LeaseId::parse("ffffffffffffff01", true);
        assert_eq!(high.map(LeaseId::to_hex).as_deref(), Some("ffffffffffffff01"));
        // Ambiguous all-digit 16-char IDs follow the hint.
        assert_eq!(LeaseId::parse("1234567890123456", true), Some(LeaseId(0x1234567890123456)));
        assert_eq!(LeaseId::parse("1234567890123456", false), Some(LeaseId(1234567890123456)));
        assert_eq!(LeaseId::parse("bogus", false), None);
    }

    /// Integers are accepted as strings, numbers and null.
    #[test]
    fn ints() {
        #[derive(Deserialize)]
        struct T {
            #[serde(with = "int", default)]
            a: i64,
            #[serde(with = "int", default)]
            b: i64,
            #[serde(with = "int", default)]
            c: i64,
            #[serde(with = "int", default)]
            d: i64,
        }
        let t: T = serde_json::from_str(r#"{"a":"12","b":13,"c":null}"#).unwrap();
        assert_eq!((t.a, t.b, t.c, t.d), (12, 13, 0, 0));
        assert!(serde_json::from_str::<T>(r#"{"a":"x"}"#).is_err());
    }

    /// Range membership matches etcd's three forms.
    #[test]
    fn ranges() {
        assert!(in_range(b"a", b"a", b""));
        assert!(!in_range(b"ab", b"a", b""));
        assert!(in_range(b"zz", b"b", b"\0"));
        assert!(in_range(b"/p/x", b"/p/", b"/p0"));
        assert!(!in_range(b"/p", b"/p/", b"/p0"));
    }
}
