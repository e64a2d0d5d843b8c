//! Values that cross a worker's boundary: function arguments and results, host-call responses.
//! They mirror the component model's values and carry their own names (record fields, variant
//! cases, flags), so an oplog entry can be shown as JSON without the component's types.

use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Value {
    Bool(bool),
    S8(i8),
    U8(u8),
    S16(i16),
    U16(u16),
    S32(i32),
    U32(u32),
    S64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
    Char(char),
    String(String),
    List(Vec<Value>),
    Record(Vec<(String, Value)>),
    Tuple(Vec<Value>),
    Variant(String, Option<Box<Value>>),
    Enum(String),
    Option(Option<Box<Value>>),
    Result(Result<Option<Box<Value>>, Option<Box<Value>>>),
    Flags(Vec<String>),
    /// A `list<u8>` the host made (random bytes, HTTP bodies): a byte a byte, not a value a
    /// byte. It equals the `List` of `U8` with the same bytes, and shows as that list does.
    /// (Last, so that entries encoded before it existed decode as they were.)
    Bytes(Vec<u8>),
    /// A resource the worker returned (`own<R>`), held by its instance: the API's handle to
    /// it, valid for later calls on the same worker. Its id is made from the place of the
    /// invocation that returned it, so a replay makes the same handles in the same order.
    Handle {
        resource: String,
        handle: String,
    },
}

/// Equality for replay: floats compare by their bits, so a NaN result replays as equal to
/// itself (the engine canonicalises NaNs, so bits are deterministic).
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        use Value::*;
        match (self, other) {
            (Bool(a), Bool(b)) => a == b,
            (S8(a), S8(b)) => a == b,
            (U8(a), U8(b)) => a == b,
            (S16(a), S16(b)) => a == b,
            (U16(a), U16(b)) => a == b,
            (S32(a), S32(b)) => a == b,
            (U32(a), U32(b)) => a == b,
            (S64(a), S64(b)) => a == b,
            (U64(a), U64(b)) => a == b,
            (F32(a), F32(b)) => a.to_bits() == b.to_bits(),
            (F64(a), F64(b)) => a.to_bits() == b.to_bits(),
            (Char(a), Char(b)) => a == b,
            (String(a), String(b)) => a == b,
            (List(a), List(b)) | (Tuple(a), Tuple(b)) => a == b,
            (Record(a), Record(b)) => a == b,
            (Variant(a, x), Variant(b, y)) => a == b && x == y,
            (Enum(a), Enum(b)) => a == b,
            (Option(a), Option(b)) => a == b,
            (Result(a), Result(b)) => a == b,
            (Flags(a), Flags(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (
                Handle {
                    resource: r,
                    handle: h,
                },
                Handle {
                    resource: s,
                    handle: g,
                },
            ) => r == s && h == g,
            (Bytes(bytes), List(items)) | (List(items), Bytes(bytes)) => {
                bytes.len() == items.len()
                    && bytes
                        .iter()
                        .zip(items)
                        .all(|(b, item)| matches!(item, U8(i) if i == b))
            }
            _ => false,
        }
    }
}

impl Value {
    /// The bytes of a `list<u8>`, whichever way it is held.
    pub fn as_bytes(&self) -> std::option::Option<std::borrow::Cow<'_, [u8]>> {
        match self {
            Value::Bytes(bytes) => Some(std::borrow::Cow::Borrowed(bytes)),
            Value::List(items) => items
                .iter()
                .map(|v| match v {
                    Value::U8(b) => Some(*b),
                    _ => None,
                })
                .collect::<std::option::Option<Vec<u8>>>()
                .map(std::borrow::Cow::Owned),
            _ => None,
        }
    }

    /// The value as JSON, by the API's mapping: records as objects, variants as one-key objects
    /// (`{"circle": 1.5}`, `{"point": null}`), results as `{"ok": ..}` / `{"err": ..}`, options
    /// as `null` or the value, enums as strings, flags as arrays of names, non-finite floats as
    /// the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
    pub fn to_json(&self) -> serde_json::Value {
        use Value::*;
        let boxed = |v: &std::option::Option<Box<Value>>| {
            v.as_ref().map_or(serde_json::Value::Null, |v| v.to_json())
        };
        match self {
            Bool(b) => json!(b),
            S8(n) => json!(n),
            U8(n) => json!(n),
            S16(n) => json!(n),
            U16(n) => json!(n),
            S32(n) => json!(n),
            U32(n) => json!(n),
            S64(n) => json!(n),
            U64(n) => json!(n),
            F32(x) => float_json(f64::from(*x)),
            F64(x) => float_json(*x),
            Char(c) => json!(c.to_string()),
            String(s) => json!(s),
            List(items) | Tuple(items) => {
                serde_json::Value::Array(items.iter().map(Value::to_json).collect())
            }
            Record(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(name, v)| (name.clone(), v.to_json()))
                    .collect(),
            ),
            Variant(case, payload) => json!({ case: boxed(payload) }),
            Enum(case) => json!(case),
            Option(None) => serde_json::Value::Null,
            Option(Some(v)) => v.to_json(),
            Result(Ok(v)) => json!({ "ok": boxed(v) }),
            Result(Err(e)) => json!({ "err": boxed(e) }),
            Flags(names) => json!(names),
            Bytes(bytes) => json!(bytes),
            Handle { resource, handle } => json!({ "resource": resource, "handle": handle }),
        }
    }
}

fn float_json(x: f64) -> serde_json::Value {
    if x.is_nan() {
        json!("NaN")
    } else if x == f64::INFINITY {
        json!("Infinity")
    } else if x == f64::NEG_INFINITY {
        json!("-Infinity")
    } else {
        json!(x)
    }
}
