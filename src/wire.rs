//! Conversion of `google.protobuf.Value` to the JSON that Socket.IO clients receive.
//!
//! The message is serialized straight from the protobuf tree into the outgoing packet, with
//! no intermediate `serde_json::Value`: one pass, no extra allocation per node.

use prost_types::{value::Kind, ListValue, Struct, Value};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// Largest integer an IEEE double holds exactly (2^53); integral numbers up to this are
/// written without a fraction so clients see `1`, not `1.0`.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// Why a value cannot be expressed as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A NaN or infinite number, at the path given.
    #[error("number at {0} is NaN or infinite, which JSON cannot represent")]
    NonFiniteNumber(String),
    /// A `Value` with no kind set, at the path given.
    #[error("value at {0} has no kind set")]
    MissingKind(String),
    /// Nested deeper than JSON parsers reliably read.
    #[error("value is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Deepest nesting of objects and arrays in a message. prost's recursion limit (100 message
/// levels) already refuses an object nested 34 deep on decode (an array 50 deep: it costs
/// fewer levels), so one limit below both applies to every kind of value.
pub const MAX_DEPTH: usize = 32;

/// Checks that `value` maps to JSON, naming the path of the first offending node. The common,
/// valid case walks the tree once without allocating; the path is only built for an error.
pub fn validate(value: &Value) -> Result<(), WireError> {
    if is_valid(value, 0) {
        return Ok(());
    }
    Err(locate(value, &mut String::from("message"), 0).unwrap_or(WireError::TooDeep))
}

fn is_valid(v: &Value, depth: usize) -> bool {
    depth <= MAX_DEPTH
        && match &v.kind {
            None => false,
            Some(Kind::NumberValue(n)) => n.is_finite(),
            Some(Kind::StructValue(s)) => s.fields.values().all(|c| is_valid(c, depth + 1)),
            Some(Kind::ListValue(l)) => l.values.iter().all(|c| is_valid(c, depth + 1)),
            Some(_) => true,
        }
}

/// The first offence in `v`, with its path.
fn locate(v: &Value, path: &mut String, depth: usize) -> Option<WireError> {
    if depth > MAX_DEPTH {
        return Some(WireError::TooDeep);
    }
    let mut child = |c: &Value, segment: std::fmt::Arguments<'_>| {
        let len = path.len();
        std::fmt::Write::write_fmt(path, segment).ok()?;
        let found = locate(c, path, depth + 1);
        path.truncate(len);
        found
    };
    match &v.kind {
        None => Some(WireError::MissingKind(path.clone())),
        Some(Kind::NumberValue(n)) if !n.is_finite() => {
            Some(WireError::NonFiniteNumber(path.clone()))
        }
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .find_map(|(k, c)| child(c, format_args!(".{k}"))),
        Some(Kind::ListValue(l)) => l
            .values
            .iter()
            .enumerate()
            .find_map(|(i, c)| child(c, format_args!("[{i}]"))),
        Some(_) => None,
    }
}

/// Serializes a validated `Value` as JSON. Unset kinds become `null`.
#[derive(Debug, Clone, Copy)]
pub struct Json<'a>(pub &'a Value);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0.kind {
            None | Some(Kind::NullValue(_)) => s.serialize_unit(),
            Some(Kind::BoolValue(b)) => s.serialize_bool(*b),
            Some(Kind::StringValue(v)) => s.serialize_str(v),
            Some(Kind::NumberValue(n)) => serialize_number(*n, s),
            Some(Kind::StructValue(v)) => JsonStruct(v).serialize(s),
            Some(Kind::ListValue(v)) => JsonList(v).serialize(s),
        }
    }
}

struct JsonStruct<'a>(&'a Struct);

impl Serialize for JsonStruct<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.fields.len()))?;
        for (k, v) in &self.0.fields {
            map.serialize_entry(k, &Json(v))?;
        }
        map.end()
    }
}

struct JsonList<'a>(&'a ListValue);

impl Serialize for JsonList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.values.len()))?;
        for v in &self.0.values {
            seq.serialize_element(&Json(v))?;
        }
        seq.end()
    }
}

fn serialize_number<S: Serializer>(n: f64, s: S) -> Result<S::Ok, S::Error> {
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INT {
        // `-0.0` stays a float so the sign survives.
        if n == 0.0 && n.is_sign_negative() {
            return s.serialize_f64(n);
        }
        s.serialize_i64(n as i64)
    } else {
        s.serialize_f64(n)
    }
}

/// Converts JSON back into a `Value`; the inverse of [`Json`], used by clients and tests.
pub fn from_json(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(from_json).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(j: serde_json::Value) {
        let v = from_json(&j);
        validate(&v).unwrap();
        let out = serde_json::to_value(Json(&v)).unwrap();
        assert_eq!(out, j);
    }

    #[test]
    fn exact_roundtrips() {
        roundtrip(json!(null));
        roundtrip(json!({"a": [1, "two", true, null, {"b": -2.5}], "ü🙂": "\"\\\n\t中文"}));
        roundtrip(json!([]));
        roundtrip(json!({}));
        roundtrip(json!(9007199254740992_i64));
        roundtrip(json!(1e300));
    }

    fn nested(depth: usize, list: bool) -> Value {
        let mut v = json!(1);
        for _ in 0..depth {
            v = if list { json!([v]) } else { json!({"a": v}) };
        }
        from_json(&v)
    }

    /// MAX_DEPTH is the limit callers meet: values that deep decode and pass, one level
    /// deeper is refused by `validate` or already by prost's decoder.
    #[test]
    fn max_depth_is_the_real_nesting_limit() {
        use crate::proto::SendDirectRequest;
        use prost::Message;
        let decodes = |message: Value| {
            let req = SendDirectRequest {
                message: Some(message),
                ..Default::default()
            };
            SendDirectRequest::decode(req.encode_to_vec().as_slice()).is_ok()
        };
        for list in [false, true] {
            assert!(decodes(nested(MAX_DEPTH, list)));
            assert_eq!(validate(&nested(MAX_DEPTH, list)), Ok(()));
            let deeper = nested(MAX_DEPTH + 1, list);
            assert!(!decodes(deeper.clone()) || validate(&deeper) == Err(WireError::TooDeep));
        }
        assert!(!decodes(nested(MAX_DEPTH + 2, false)), "prost refuses it");
    }

    #[test]
    fn integral_numbers_have_no_fraction() {
        let v = from_json(&json!(42));
        assert_eq!(serde_json::to_string(&Json(&v)).unwrap(), "42");
    }

    #[test]
    fn non_finite_is_named() {
        let mut v = from_json(&json!({"a": {"b": [0, 1]}}));
        if let Some(Kind::StructValue(s)) = &mut v.kind {
            let a = s.fields.get_mut("a").unwrap();
            if let Some(Kind::StructValue(a)) = &mut a.kind {
                a.fields.get_mut("b").unwrap().kind = Some(Kind::ListValue(ListValue {
                    values: vec![Value {
                        kind: Some(Kind::NumberValue(f64::NAN)),
                    }],
                }));
            }
        }
        assert_eq!(
            validate(&v),
            Err(WireError::NonFiniteNumber("message.a.b[0]".into()))
        );
    }
}
