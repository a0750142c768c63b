//! Property tests: the protobuf `Value` to JSON conversion and page tokens never panic on
//! arbitrary input, and round trips are exact.

use messaging_gateway::{cursor::PageCursor, wire};
use proptest::prelude::*;
use prost_types::{value::Kind, ListValue, Struct, Value};

/// Any `Value` tree, including numbers JSON cannot carry.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Kind::NullValue(0)),
        any::<bool>().prop_map(Kind::BoolValue),
        any::<f64>().prop_map(Kind::NumberValue),
        any::<i64>().prop_map(|i| Kind::NumberValue(i as f64)),
        ".*".prop_map(Kind::StringValue),
    ]
    .prop_map(|k| Value { kind: Some(k) });
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8)
                .prop_map(|values| Kind::ListValue(ListValue { values })),
            prop::collection::btree_map(".*", inner, 0..8)
                .prop_map(|fields| Kind::StructValue(Struct { fields })),
        ]
        .prop_map(|k| Value { kind: Some(k) })
    })
}

fn has_non_finite(v: &Value) -> bool {
    match &v.kind {
        Some(Kind::NumberValue(n)) => !n.is_finite(),
        Some(Kind::ListValue(l)) => l.values.iter().any(has_non_finite),
        Some(Kind::StructValue(s)) => s.fields.values().any(has_non_finite),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn value_to_json_round_trips_exactly(value in any_value()) {
        match wire::validate(&value) {
            Err(_) => prop_assert!(has_non_finite(&value)),
            Ok(()) => {
                prop_assert!(!has_non_finite(&value));
                let text = serde_json::to_string(&wire::Json(&value)).unwrap();
                let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(wire::from_json(&parsed), value);
            }
        }
    }

    #[test]
    fn page_tokens_round_trip(user in ".{1,128}") {
        let cursor = PageCursor::new();
        prop_assert_eq!(cursor.decode(&cursor.encode(&user)).unwrap(), user);
    }

    #[test]
    fn arbitrary_page_tokens_never_panic(token in ".{0,300}") {
        let _ = PageCursor::new().decode(&token);
    }

    #[test]
    fn tampered_tokens_are_refused(user in "[a-z0-9]{1,32}", flip in 0usize..64, bit in 0u8..8) {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
        let cursor = PageCursor::new();
        let mut raw = URL_SAFE_NO_PAD.decode(cursor.encode(&user)).unwrap();
        let i = flip % raw.len();
        raw[i] ^= 1 << bit;
        prop_assert!(cursor.decode(&URL_SAFE_NO_PAD.encode(raw)).is_err());
    }
}
