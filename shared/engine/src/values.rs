//! WIT values: JSON in (checked against the parameter's WIT type, with an error naming the
//! parameter, the path inside it and the type expected), [`Value`] in the oplog, [`Val`] for
//! wasmtime, and the WIT spelling of types for the API.
//!
//! The JSON mapping: numbers as numbers (range-checked); `char` as a one-character string;
//! lists and tuples as arrays; records as objects (every field, no others; an `option` field may
//! be left out); variants as one-key objects `{"case": payload}` (`null` or nothing for a case
//! without payload, which may also be given as the bare string `"case"`); enums as strings;
//! options as `null` or the value; results as `{"ok": v}` or `{"err": e}`; flags as arrays of
//! names; non-finite floats as `"NaN"`, `"Infinity"`, `"-Infinity"`.

use invicta_model::Value;
use serde_json::Value as Json;
use wasmtime::component::{ResourceAny, ResourceType, Type, Val};

/// The deepest nesting of values accepted from outside: bounds recursion on hostile input.
pub const VALUE_DEPTH_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{param}`{at}: expected {expected}, got {got}", at = if path.is_empty() { String::new() } else { format!(" at {path}") })]
pub struct ValueError {
    /// The parameter's name.
    pub param: String,
    /// Where inside it, e.g. `.tags[2]`.
    pub path: String,
    /// The WIT type expected there.
    pub expected: String,
    /// What was given instead.
    pub got: String,
}

/// Converts the JSON given for parameter `param` into a value of `ty`.
pub fn json_to_value(param: &str, json: &Json, ty: &Type) -> Result<Value, ValueError> {
    let mut cx = Cx {
        param,
        path: String::new(),
    };
    cx.convert(json, ty, 0)
}

struct Cx<'a> {
    param: &'a str,
    path: String,
}

fn describe(json: &Json) -> String {
    let text = match json {
        Json::Null => return "null".into(),
        Json::Bool(b) => return format!("boolean {b}"),
        Json::Number(n) => return format!("number {n}"),
        Json::String(s) => format!("string {s:?}"),
        Json::Array(a) => return format!("an array of {}", a.len()),
        Json::Object(_) => return "an object".into(),
    };
    if text.len() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

impl Cx<'_> {
    fn error(&self, ty: &Type, got: &Json) -> ValueError {
        self.error_msg(type_name(ty), describe(got))
    }

    fn error_msg(&self, expected: String, got: String) -> ValueError {
        ValueError {
            param: self.param.to_string(),
            path: self.path.clone(),
            expected,
            got,
        }
    }

    fn nested<T>(&mut self, segment: String, f: impl FnOnce(&mut Self) -> T) -> T {
        let len = self.path.len();
        self.path.push_str(&segment);
        let out = f(self);
        self.path.truncate(len);
        out
    }

    fn convert(&mut self, json: &Json, ty: &Type, depth: usize) -> Result<Value, ValueError> {
        if depth > VALUE_DEPTH_MAX {
            return Err(self.error_msg(
                type_name(ty),
                format!("a value nested deeper than {VALUE_DEPTH_MAX} levels"),
            ));
        }
        let err = |cx: &Self| cx.error(ty, json);
        macro_rules! int {
            ($variant:ident, $t:ty) => {{
                let n = match json {
                    Json::Number(n) => n
                        .as_i64()
                        .map(i128::from)
                        .or_else(|| n.as_u64().map(i128::from)),
                    _ => None,
                };
                n.and_then(|n| <$t>::try_from(n).ok())
                    .map(Value::$variant)
                    .ok_or_else(|| err(self))
            }};
        }
        match ty {
            Type::Bool => json.as_bool().map(Value::Bool).ok_or_else(|| err(self)),
            Type::S8 => int!(S8, i8),
            Type::U8 => int!(U8, u8),
            Type::S16 => int!(S16, i16),
            Type::U16 => int!(U16, u16),
            Type::S32 => int!(S32, i32),
            Type::U32 => int!(U32, u32),
            Type::S64 => int!(S64, i64),
            Type::U64 => int!(U64, u64),
            Type::Float32 => float(json)
                .map(|x| Value::F32(x as f32))
                .ok_or_else(|| err(self)),
            Type::Float64 => float(json).map(Value::F64).ok_or_else(|| err(self)),
            Type::Char => {
                let mut chars = json.as_str().map(str::chars);
                match chars.as_mut().map(|c| (c.next(), c.next())) {
                    Some((Some(c), None)) => Ok(Value::Char(c)),
                    _ => Err(err(self)),
                }
            }
            Type::String => json
                .as_str()
                .map(|s| Value::String(s.to_string()))
                .ok_or_else(|| err(self)),
            Type::List(list) => {
                let items = json.as_array().ok_or_else(|| err(self))?;
                let elem = list.ty();
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(
                        self.nested(format!("[{i}]"), |cx| cx.convert(item, &elem, depth + 1))?,
                    );
                }
                Ok(Value::List(out))
            }
            Type::Tuple(tuple) => {
                let items = json.as_array().ok_or_else(|| err(self))?;
                let types: Vec<Type> = tuple.types().collect();
                if items.len() != types.len() {
                    return Err(err(self));
                }
                let mut out = Vec::with_capacity(items.len());
                for (i, (item, ty)) in items.iter().zip(&types).enumerate() {
                    out.push(self.nested(format!("[{i}]"), |cx| cx.convert(item, ty, depth + 1))?);
                }
                Ok(Value::Tuple(out))
            }
            Type::Record(record) => {
                let object = json.as_object().ok_or_else(|| err(self))?;
                let mut out = Vec::new();
                for field in record.fields() {
                    let value = match object.get(field.name) {
                        Some(v) => self.nested(format!(".{}", field.name), |cx| {
                            cx.convert(v, &field.ty, depth + 1)
                        })?,
                        None if matches!(field.ty, Type::Option(_)) => Value::Option(None),
                        None => {
                            return Err(self.nested(format!(".{}", field.name), |cx| {
                                cx.error_msg(
                                    type_name(&field.ty),
                                    "nothing (the field is missing)".into(),
                                )
                            }));
                        }
                    };
                    out.push((field.name.to_string(), value));
                }
                if let Some(unknown) = object
                    .keys()
                    .find(|k| !record.fields().any(|f| f.name == k.as_str()))
                {
                    return Err(self.error_msg(
                        type_name(ty),
                        format!("an object with the unknown field `{unknown}`"),
                    ));
                }
                Ok(Value::Record(out))
            }
            Type::Variant(variant) => {
                let (name, payload) = one_key(json).ok_or_else(|| err(self))?;
                let case = variant
                    .cases()
                    .find(|c| c.name == name)
                    .ok_or_else(|| err(self))?;
                let value = match (case.ty, payload) {
                    (None, None | Some(Json::Null)) => None,
                    (Some(ty), Some(payload)) => {
                        Some(Box::new(self.nested(format!(".{name}"), |cx| {
                            cx.convert(payload, &ty, depth + 1)
                        })?))
                    }
                    _ => return Err(err(self)),
                };
                Ok(Value::Variant(name.to_string(), value))
            }
            Type::Enum(e) => {
                let name = json.as_str().ok_or_else(|| err(self))?;
                if e.names().any(|n| n == name) {
                    Ok(Value::Enum(name.to_string()))
                } else {
                    Err(err(self))
                }
            }
            Type::Option(option) => match json {
                Json::Null => Ok(Value::Option(None)),
                some => {
                    let inner = self.convert(some, &option.ty(), depth + 1)?;
                    Ok(Value::Option(Some(Box::new(inner))))
                }
            },
            Type::Result(result) => {
                let (name, payload) = one_key(json).ok_or_else(|| err(self))?;
                let side = match name {
                    "ok" => result.ok(),
                    "err" => result.err(),
                    _ => return Err(err(self)),
                };
                let value = match (side, payload) {
                    (None, None | Some(Json::Null)) => None,
                    (Some(ty), Some(payload)) => {
                        Some(Box::new(self.nested(format!(".{name}"), |cx| {
                            cx.convert(payload, &ty, depth + 1)
                        })?))
                    }
                    _ => return Err(err(self)),
                };
                Ok(Value::Result(if name == "ok" {
                    Ok(value)
                } else {
                    Err(value)
                }))
            }
            Type::Flags(flags) => {
                let items = json.as_array().ok_or_else(|| err(self))?;
                let mut out = Vec::new();
                for item in items {
                    let name = item.as_str().ok_or_else(|| err(self))?;
                    if !flags.names().any(|n| n == name) {
                        return Err(err(self));
                    }
                    if !out.iter().any(|n: &String| n == name) {
                        out.push(name.to_string());
                    }
                }
                Ok(Value::Flags(out))
            }
            Type::Own(_) | Type::Borrow(_) => {
                // A handle the worker returned earlier: `{"resource": "R", "handle": "…"}`
                // (the resource's name may be left out). It is resolved by the worker.
                let handle = json
                    .get("handle")
                    .and_then(Json::as_str)
                    .filter(|h| !h.is_empty() && h.len() <= 128)
                    .ok_or_else(|| {
                        self.error_msg(
                            format!(
                                "a handle, {{\"resource\": …, \"handle\": …}}, for {}",
                                type_name(ty)
                            ),
                            describe(json),
                        )
                    })?;
                let resource = match json.get("resource") {
                    None => String::new(),
                    Some(Json::String(r)) if r.len() <= 128 => r.clone(),
                    Some(other) => {
                        return Err(self.error_msg("a resource name".into(), describe(other)));
                    }
                };
                let extra = json
                    .as_object()
                    .is_some_and(|m| m.keys().any(|k| k != "handle" && k != "resource"));
                if extra {
                    return Err(self.error_msg(
                        "a handle with only `resource` and `handle`".into(),
                        describe(json),
                    ));
                }
                Ok(Value::Handle {
                    resource,
                    handle: handle.to_string(),
                })
            }
            _ => Err(self.error_msg(
                format!("{} (not supported over JSON)", type_name(ty)),
                describe(json),
            )),
        }
    }
}

fn float(json: &Json) -> Option<f64> {
    match json {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// `{"name": payload}` → (name, Some(payload)); `"name"` → (name, None).
fn one_key(json: &Json) -> Option<(&str, Option<&Json>)> {
    match json {
        Json::String(s) => Some((s.as_str(), None)),
        Json::Object(map) if map.len() == 1 => {
            map.iter().next().map(|(k, v)| (k.as_str(), Some(v)))
        }
        _ => None,
    }
}

/// The value wasmtime passes to the guest.
pub fn value_to_val(value: &Value) -> Val {
    let boxed = |v: &Option<Box<Value>>| v.as_ref().map(|v| Box::new(value_to_val(v)));
    match value {
        Value::Bool(b) => Val::Bool(*b),
        Value::S8(n) => Val::S8(*n),
        Value::U8(n) => Val::U8(*n),
        Value::S16(n) => Val::S16(*n),
        Value::U16(n) => Val::U16(*n),
        Value::S32(n) => Val::S32(*n),
        Value::U32(n) => Val::U32(*n),
        Value::S64(n) => Val::S64(*n),
        Value::U64(n) => Val::U64(*n),
        Value::F32(x) => Val::Float32(*x),
        Value::F64(x) => Val::Float64(*x),
        Value::Char(c) => Val::Char(*c),
        Value::String(s) => Val::String(s.clone()),
        Value::List(items) => Val::List(items.iter().map(value_to_val).collect()),
        Value::Record(fields) => Val::Record(
            fields
                .iter()
                .map(|(n, v)| (n.clone(), value_to_val(v)))
                .collect(),
        ),
        Value::Tuple(items) => Val::Tuple(items.iter().map(value_to_val).collect()),
        Value::Variant(case, payload) => Val::Variant(case.clone(), boxed(payload)),
        Value::Enum(case) => Val::Enum(case.clone()),
        Value::Option(v) => Val::Option(boxed(v)),
        Value::Result(Ok(v)) => Val::Result(Ok(boxed(v))),
        Value::Result(Err(e)) => Val::Result(Err(boxed(e))),
        Value::Flags(names) => Val::Flags(names.clone()),
        Value::Bytes(bytes) => Val::List(bytes.iter().map(|b| Val::U8(*b)).collect()),
        // Resolved by the worker that holds it (`value_to_val_with`); none here.
        Value::Handle { .. } => Val::Bool(false),
    }
}

/// A handle that could not be passed: unknown to the worker, dropped, or of another resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleError(pub String);

/// What resolves a handle: given its id, whether the parameter owns it, and the resource type
/// the parameter takes (as the component's type says it), the resource or why not.
pub type Resolve<'a> = dyn FnMut(&str, bool, &ResourceType) -> Result<ResourceAny, String> + 'a;

/// [`value_to_val`] for a parameter of type `ty`, with handles resolved by `resolve`.
pub fn value_to_val_with(
    value: &Value,
    ty: &Type,
    resolve: &mut Resolve<'_>,
) -> Result<Val, HandleError> {
    let err = |m: String| HandleError(m);
    let nested = |v: &Value, t: &Type, resolve: &mut Resolve<'_>| value_to_val_with(v, t, resolve);
    Ok(match (value, ty) {
        (Value::Handle { handle, .. }, Type::Own(expected) | Type::Borrow(expected)) => {
            let owned = matches!(ty, Type::Own(_));
            Val::Resource(resolve(handle, owned, expected).map_err(err)?)
        }
        (Value::Handle { handle, .. }, _) => {
            return Err(err(format!("handle `{handle}` where no resource is taken")));
        }
        (Value::List(items), Type::List(l)) => Val::List(
            items
                .iter()
                .map(|v| nested(v, &l.ty(), resolve))
                .collect::<Result<_, _>>()?,
        ),
        (Value::Record(fields), Type::Record(r)) => Val::Record(
            fields
                .iter()
                .zip(r.fields())
                .map(|((n, v), f)| Ok((n.clone(), nested(v, &f.ty, resolve)?)))
                .collect::<Result<_, HandleError>>()?,
        ),
        (Value::Tuple(items), Type::Tuple(t)) => Val::Tuple(
            items
                .iter()
                .zip(t.types())
                .map(|(v, t)| nested(v, &t, resolve))
                .collect::<Result<_, _>>()?,
        ),
        (Value::Variant(case, Some(payload)), Type::Variant(v)) => {
            let case_ty = v.cases().find(|c| c.name == case).and_then(|c| c.ty);
            match case_ty {
                Some(t) => {
                    Val::Variant(case.clone(), Some(Box::new(nested(payload, &t, resolve)?)))
                }
                None => value_to_val(value),
            }
        }
        (Value::Option(Some(v)), Type::Option(o)) => {
            Val::Option(Some(Box::new(nested(v, &o.ty(), resolve)?)))
        }
        (Value::Result(Ok(Some(v))), Type::Result(r)) => match r.ok() {
            Some(t) => Val::Result(Ok(Some(Box::new(nested(v, &t, resolve)?)))),
            None => value_to_val(value),
        },
        (Value::Result(Err(Some(v))), Type::Result(r)) => match r.err() {
            Some(t) => Val::Result(Err(Some(Box::new(nested(v, &t, resolve)?)))),
            None => value_to_val(value),
        },
        _ => value_to_val(value),
    })
}

/// [`val_to_value`], with each resource the guest returned given to `keep`, which answers the
/// value the API shows for it (a handle).
pub fn val_to_value_with(val: &Val, keep: &mut dyn FnMut(ResourceAny) -> Value) -> Option<Value> {
    let nested = |v: &Val, keep: &mut dyn FnMut(ResourceAny) -> Value| val_to_value_with(v, keep);
    Some(match val {
        Val::Resource(any) => keep(*any),
        Val::List(items) | Val::FixedLengthList(items) => Value::List(
            items
                .iter()
                .map(|v| nested(v, keep))
                .collect::<Option<Vec<_>>>()?,
        ),
        Val::Record(fields) => Value::Record(
            fields
                .iter()
                .map(|(n, v)| Some((n.clone(), nested(v, keep)?)))
                .collect::<Option<Vec<_>>>()?,
        ),
        Val::Tuple(items) => Value::Tuple(
            items
                .iter()
                .map(|v| nested(v, keep))
                .collect::<Option<Vec<_>>>()?,
        ),
        Val::Variant(case, Some(payload)) => {
            Value::Variant(case.clone(), Some(Box::new(nested(payload, keep)?)))
        }
        Val::Option(Some(v)) => Value::Option(Some(Box::new(nested(v, keep)?))),
        Val::Result(Ok(Some(v))) => Value::Result(Ok(Some(Box::new(nested(v, keep)?)))),
        Val::Result(Err(Some(v))) => Value::Result(Err(Some(Box::new(nested(v, keep)?)))),
        other => val_to_value(other)?,
    })
}

/// The value the guest returned, for the oplog; `None` for values that cannot leave the
/// instance (resources, streams, futures).
pub fn val_to_value(val: &Val) -> Option<Value> {
    let boxed = |v: &Option<Box<Val>>| -> Option<Option<Box<Value>>> {
        match v {
            None => Some(None),
            Some(v) => Some(Some(Box::new(val_to_value(v)?))),
        }
    };
    let all = |items: &[Val]| items.iter().map(val_to_value).collect::<Option<Vec<_>>>();
    Some(match val {
        Val::Bool(b) => Value::Bool(*b),
        Val::S8(n) => Value::S8(*n),
        Val::U8(n) => Value::U8(*n),
        Val::S16(n) => Value::S16(*n),
        Val::U16(n) => Value::U16(*n),
        Val::S32(n) => Value::S32(*n),
        Val::U32(n) => Value::U32(*n),
        Val::S64(n) => Value::S64(*n),
        Val::U64(n) => Value::U64(*n),
        Val::Float32(x) => Value::F32(*x),
        Val::Float64(x) => Value::F64(*x),
        Val::Char(c) => Value::Char(*c),
        Val::String(s) => Value::String(s.clone()),
        Val::List(items) | Val::FixedLengthList(items) => Value::List(all(items)?),
        Val::Record(fields) => Value::Record(
            fields
                .iter()
                .map(|(n, v)| Some((n.clone(), val_to_value(v)?)))
                .collect::<Option<Vec<_>>>()?,
        ),
        Val::Tuple(items) => Value::Tuple(all(items)?),
        Val::Variant(case, payload) => Value::Variant(case.clone(), boxed(payload)?),
        Val::Enum(case) => Value::Enum(case.clone()),
        Val::Option(v) => Value::Option(boxed(v)?),
        Val::Result(Ok(v)) => Value::Result(Ok(boxed(v)?)),
        Val::Result(Err(e)) => Value::Result(Err(boxed(e)?)),
        Val::Flags(names) => Value::Flags(names.clone()),
        Val::Map(_) | Val::Resource(_) | Val::Future(_) | Val::Stream(_) | Val::ErrorContext(_) => {
            return None;
        }
    })
}

/// A placeholder for a result slot before a call fills it.
pub fn placeholder() -> Val {
    Val::Bool(false)
}

/// The WIT spelling of a type: `u32`, `list<string>`, `option<person>` … Named types (records,
/// variants, enums, flags) are spelled out structurally, since the API has no type names.
pub fn type_name(ty: &Type) -> String {
    type_name_depth(ty, &[], 0)
}

/// [`type_name`], with resources named (`own<tally>`) when `resources` knows them.
pub fn type_name_with(ty: &Type, resources: &[(ResourceType, String)]) -> String {
    type_name_depth(ty, resources, 0)
}

fn type_name_depth(ty: &Type, resources: &[(ResourceType, String)], depth: usize) -> String {
    if depth > VALUE_DEPTH_MAX {
        return "…".into();
    }
    let name = |t: &Type| type_name_depth(t, resources, depth + 1);
    let resource = |r: &ResourceType| {
        resources
            .iter()
            .find(|(t, _)| t == r)
            .map_or("resource", |(_, n)| n.as_str())
            .to_string()
    };
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(l) => format!("list<{}>", name(&l.ty())),
        Type::FixedLengthList(l) => format!("list<{}, {}>", name(&l.ty()), l.len()),
        Type::Map(m) => format!("map<{}, {}>", name(&m.key()), name(&m.value())),
        Type::Record(r) => format!(
            "record {{ {} }}",
            r.fields()
                .map(|f| format!("{}: {}", f.name, name(&f.ty)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Type::Tuple(t) => format!(
            "tuple<{}>",
            t.types().map(|t| name(&t)).collect::<Vec<_>>().join(", ")
        ),
        Type::Variant(v) => format!(
            "variant {{ {} }}",
            v.cases()
                .map(|c| match c.ty {
                    Some(t) => format!("{}({})", c.name, name(&t)),
                    None => c.name.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Type::Enum(e) => format!("enum {{ {} }}", e.names().collect::<Vec<_>>().join(", ")),
        Type::Option(o) => format!("option<{}>", name(&o.ty())),
        Type::Result(r) => match (r.ok(), r.err()) {
            (None, None) => "result".into(),
            (Some(ok), None) => format!("result<{}>", name(&ok)),
            (None, Some(err)) => format!("result<_, {}>", name(&err)),
            (Some(ok), Some(err)) => format!("result<{}, {}>", name(&ok), name(&err)),
        },
        Type::Flags(f) => format!("flags {{ {} }}", f.names().collect::<Vec<_>>().join(", ")),
        Type::Own(r) => format!("own<{}>", resource(r)),
        Type::Borrow(r) => format!("borrow<{}>", resource(r)),
        Type::Future(_) => "future".into(),
        Type::Stream(_) => "stream".into(),
        Type::ErrorContext => "error-context".into(),
    }
}

/// The WIT type's WAVE text (<https://github.com/bytecodealliance/wasm-tools/tree/main/crates/wasm-wave>)
/// given for parameter `param`, as JSON in the API's mapping: `42`, `"hi"`, `[1, 2]`,
/// `{name: "x", tags: []}`, `some(1)`, `ok("done")`, `red`, `{read, write}`.
pub fn wave_to_json(param: &str, text: &str, ty: &Type) -> Result<Json, ValueError> {
    let error = |got: String| ValueError {
        param: param.to_string(),
        path: String::new(),
        expected: format!("WAVE text of a {}", type_name(ty)),
        got,
    };
    if wave_depth(text) > VALUE_DEPTH_MAX {
        return Err(error(format!(
            "values nested deeper than {VALUE_DEPTH_MAX}"
        )));
    }
    // WAVE has no handles: a resource parameter takes the handle as a string (`"h12-0"`) or
    // as the JSON the API shows it in.
    if let Type::Own(_) | Type::Borrow(_) = ty {
        let trimmed = text.trim();
        let json = match serde_json::from_str::<Json>(trimmed) {
            Ok(Json::String(handle)) => serde_json::json!({ "handle": handle }),
            Ok(object @ Json::Object(_)) => object,
            _ => serde_json::json!({ "handle": trimmed }),
        };
        return json_to_value(param, &json, ty).map(|v| v.to_json());
    }
    let val = Val::from_wave(ty, text).map_err(|e| error(format!("`{text}` ({e})")))?;
    val_to_value(&val)
        .map(|v| v.to_json())
        .ok_or_else(|| error("a resource".into()))
}

/// How deeply brackets nest in WAVE text (outside quotes): parsing is recursive.
fn wave_depth(text: &str) -> usize {
    let (mut depth, mut max, mut quote, mut escaped) = (0_usize, 0_usize, None, false);
    for c in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '[' | '(' | '{' => {
                    depth += 1;
                    max = max.max(depth);
                }
                ']' | ')' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    max
}
