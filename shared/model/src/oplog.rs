//! The oplog: everything a worker did, in order. It is the truth about a worker; the worker's
//! memory is only a cache of replaying it.
//!
//! Encoding: one format byte ([`FORMAT_VERSION`]) then the entry in `postcard` (varints, no
//! field names). A reader refuses a format it does not know rather than guess. Format 1 (before
//! workers had incarnations) is still read: its `Create` has an empty incarnation.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Value;

/// The encoding's version, the first byte of every encoded entry.
pub const FORMAT_VERSION: u8 = 2;

/// The format before `Create` carried the worker's incarnation; still read.
const FORMAT_V1: u8 = 1;

/// An oplog index: entries are numbered from 1 (`Create`) without gaps.
pub type OplogIndex = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Why an invocation failed. Kept in the oplog, and given to every caller of its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The guest trapped (`unreachable`, out-of-bounds access, a panic …).
    Trap,
    /// The invocation used up its fuel budget.
    OutOfFuel,
    /// The worker asked for more memory than it may have.
    OutOfMemory,
    /// The invocation ran past its wall-clock deadline.
    Timeout,
    /// The guest called `exit`.
    Exit,
    /// Replay did not match the oplog: the component or the host is not deterministic.
    Divergence,
    /// The result is larger than one commit may carry.
    ResultTooLarge,
    /// Stopped by a request (`interrupt`); the worker stays usable.
    Interrupted,
    /// A resource handle given as a parameter is not the worker's: unknown, dropped, or of
    /// another resource. (Last, so that entries encoded before it decode as they were.)
    InvalidHandle,
    /// What the invocation left in the worker's files is more than its plan's
    /// `files_per_worker_bytes`; its writes are undone with it.
    FilesTooLarge,
}

impl FailureKind {
    /// The stable code the API reports.
    pub fn code(&self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::OutOfFuel => "out_of_fuel",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::Timeout => "timeout",
            FailureKind::Exit => "exit",
            FailureKind::Divergence => "divergence",
            FailureKind::ResultTooLarge => "result_too_large",
            FailureKind::Interrupted => "interrupted",
            FailureKind::InvalidHandle => "invalid_handle",
            FailureKind::FilesTooLarge => "files_too_large",
        }
    }

    /// The kind whose [`FailureKind::code`] this is.
    pub fn from_code(code: &str) -> Option<FailureKind> {
        [
            FailureKind::Trap,
            FailureKind::OutOfFuel,
            FailureKind::OutOfMemory,
            FailureKind::Timeout,
            FailureKind::Exit,
            FailureKind::Divergence,
            FailureKind::ResultTooLarge,
            FailureKind::Interrupted,
            FailureKind::InvalidHandle,
            FailureKind::FilesTooLarge,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }
}

/// The limits an invocation runs under, from its tenant's plan and the executor's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationLimits {
    /// Its fuel budget.
    pub fuel: u64,
    /// The worker's memory, in bytes.
    pub memory_bytes: u64,
    /// Its wall-clock deadline, from when it starts running (ms).
    pub timeout_ms: u64,
    /// The hosts its outgoing requests may reach (`None`: any public host).
    pub egress_hosts: Option<Vec<String>>,
    /// The tenant's worker quota, for the workers its calls create.
    pub workers_max: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OplogEntry {
    /// The worker was created: which component version, with what environment.
    Create {
        timestamp_ms: u64,
        component_version: u64,
        env: Vec<(String, String)>,
        args: Vec<String>,
        /// Made at the worker's creation and never again: every key derived from the worker
        /// (outgoing idempotency keys, calls to other workers, promise ids) includes it, so a
        /// worker deleted and created again under the same name never repeats an effect.
        /// Empty for workers created before incarnations existed.
        incarnation: String,
    },
    /// An invocation was accepted, before it started running.
    InvocationEnqueued {
        timestamp_ms: u64,
        idempotency_key: String,
    },
    /// An invocation started: the exported function and its arguments.
    ExportedFunctionInvoked {
        timestamp_ms: u64,
        function: String,
        params: Vec<Value>,
        idempotency_key: String,
        /// The limits it runs under, so that a resumed or recovered invocation runs under the
        /// same ones. `None` for invocations recorded before limits were.
        limits: Option<InvocationLimits>,
    },
    /// A non-deterministic host call and its response (clock readings, random numbers, …).
    ImportedFunctionInvoked {
        host_function: String,
        request: Option<Value>,
        response: Value,
    },
    /// The invocation returned.
    ExportedFunctionCompleted {
        results: Vec<Value>,
        fuel_consumed: u64,
    },
    /// The invocation failed; replay skips it, from its `ExportedFunctionInvoked` to here.
    Error {
        kind: FailureKind,
        message: String,
        /// Fuel burnt before the failure (billed).
        fuel_consumed: u64,
    },
    /// The invocation was interrupted by a caller.
    Interrupted { timestamp_ms: u64 },
    /// The worker was suspended (its instance dropped) after being idle.
    Suspended { timestamp_ms: u64 },
    /// The guest wrote to stdout or stderr.
    Log { stream: LogStream, bytes: Vec<u8> },
    /// A write to the outside world began; replay re-does one that never ended.
    BeginRemoteWrite {
        host_function: String,
        idempotency_key: String,
    },
    /// The remote write that began at `begin` ended.
    EndRemoteWrite { begin: OplogIndex },
    /// The worker's state was saved to a blob; replay may start here.
    Snapshot {
        blob_key: String,
        size: u64,
        sha256: String,
    },
    /// Replay skips the entries from `from` to `to`, both included.
    Jump { from: OplogIndex, to: OplogIndex },
    /// The guest began an atomic region: if the worker stops inside it, recovery discards
    /// what the region recorded and runs all of it again.
    BeginAtomicRegion,
    /// The atomic region that began at `begin` ended.
    EndAtomicRegion { begin: OplogIndex },
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("oplog entry is empty")]
    Empty,
    #[error("oplog entry has format {0}; this build reads format {FORMAT_VERSION}")]
    UnknownFormat(u8),
    #[error("oplog entry is malformed: {0}")]
    Malformed(#[from] postcard::Error),
}

impl OplogEntry {
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![FORMAT_VERSION];
        // Encoding into a Vec fails only on a serializer bug; an empty payload would then fail
        // to decode, loudly, rather than be misread.
        match postcard::to_extend(self, out) {
            Ok(bytes) => bytes,
            Err(_) => vec![FORMAT_VERSION],
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<OplogEntry, DecodeError> {
        match bytes.split_first() {
            None => Err(DecodeError::Empty),
            Some((&FORMAT_VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
            Some((&FORMAT_V1, rest)) => Ok(v1::decode(rest)?),
            Some((&other, _)) => Err(DecodeError::UnknownFormat(other)),
        }
    }

    /// The entry's kind, as the API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            OplogEntry::Create { .. } => "create",
            OplogEntry::InvocationEnqueued { .. } => "invocation_enqueued",
            OplogEntry::ExportedFunctionInvoked { .. } => "exported_function_invoked",
            OplogEntry::ImportedFunctionInvoked { .. } => "imported_function_invoked",
            OplogEntry::ExportedFunctionCompleted { .. } => "exported_function_completed",
            OplogEntry::Error { .. } => "error",
            OplogEntry::Interrupted { .. } => "interrupted",
            OplogEntry::Suspended { .. } => "suspended",
            OplogEntry::Log { .. } => "log",
            OplogEntry::BeginRemoteWrite { .. } => "begin_remote_write",
            OplogEntry::EndRemoteWrite { .. } => "end_remote_write",
            OplogEntry::Snapshot { .. } => "snapshot",
            OplogEntry::Jump { .. } => "jump",
            OplogEntry::BeginAtomicRegion => "begin_atomic_region",
            OplogEntry::EndAtomicRegion { .. } => "end_atomic_region",
        }
    }

    /// The entry as the API shows it: `{"index", "kind", ...fields}`.
    pub fn to_json(&self, index: OplogIndex) -> serde_json::Value {
        let values =
            |vs: &[Value]| serde_json::Value::Array(vs.iter().map(Value::to_json).collect());
        let mut body = match self {
            OplogEntry::Create {
                timestamp_ms,
                component_version,
                env,
                args,
                incarnation,
            } => json!({
                "timestamp_ms": timestamp_ms,
                "component_version": component_version,
                "incarnation": incarnation,
                "env": env
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect::<serde_json::Map<_, _>>(),
                "args": args,
            }),
            OplogEntry::InvocationEnqueued {
                timestamp_ms,
                idempotency_key,
            } => json!({ "timestamp_ms": timestamp_ms, "idempotency_key": idempotency_key }),
            OplogEntry::ExportedFunctionInvoked {
                timestamp_ms,
                function,
                params,
                idempotency_key,
                limits,
            } => json!({
                "timestamp_ms": timestamp_ms,
                "function": function,
                "params": values(params),
                "idempotency_key": idempotency_key,
                "limits": limits.as_ref().map(|l| json!({
                    "fuel": l.fuel,
                    "memory_bytes": l.memory_bytes,
                    "timeout_ms": l.timeout_ms,
                    "egress_hosts": l.egress_hosts,
                    "workers_max": l.workers_max,
                })),
            }),
            OplogEntry::ImportedFunctionInvoked {
                host_function,
                request,
                response,
            } => json!({
                "host_function": host_function,
                "request": request.as_ref().map(Value::to_json),
                "response": response.to_json(),
            }),
            OplogEntry::ExportedFunctionCompleted {
                results,
                fuel_consumed,
            } => json!({ "results": values(results), "fuel_consumed": fuel_consumed }),
            OplogEntry::Error {
                kind,
                message,
                fuel_consumed,
            } => {
                json!({ "error": kind.code(), "message": message, "fuel_consumed": fuel_consumed })
            }
            OplogEntry::Interrupted { timestamp_ms } | OplogEntry::Suspended { timestamp_ms } => {
                json!({ "timestamp_ms": timestamp_ms })
            }
            OplogEntry::Log { stream, bytes } => json!({
                "stream": stream.as_str(),
                "text": String::from_utf8_lossy(bytes),
            }),
            OplogEntry::BeginRemoteWrite {
                host_function,
                idempotency_key,
            } => json!({ "host_function": host_function, "idempotency_key": idempotency_key }),
            OplogEntry::EndRemoteWrite { begin } => json!({ "begin": begin }),
            OplogEntry::Snapshot {
                blob_key,
                size,
                sha256,
            } => json!({ "blob_key": blob_key, "size": size, "sha256": sha256 }),
            OplogEntry::Jump { from, to } => json!({ "from": from, "to": to }),
            OplogEntry::BeginAtomicRegion => json!({}),
            OplogEntry::EndAtomicRegion { begin } => json!({ "begin": begin }),
        };
        if let Some(map) = body.as_object_mut() {
            map.insert("index".into(), json!(index));
            map.insert("kind".into(), json!(self.kind()));
        }
        body
    }
}

/// Format 1: the same entries, but `Create` without an incarnation.
mod v1 {
    use serde::Deserialize;

    use super::{FailureKind, LogStream, OplogEntry, OplogIndex};
    use crate::Value;

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub(super) enum Entry {
        Create {
            timestamp_ms: u64,
            component_version: u64,
            env: Vec<(String, String)>,
            args: Vec<String>,
        },
        InvocationEnqueued {
            timestamp_ms: u64,
            idempotency_key: String,
        },
        ExportedFunctionInvoked {
            timestamp_ms: u64,
            function: String,
            params: Vec<Value>,
            idempotency_key: String,
        },
        ImportedFunctionInvoked {
            host_function: String,
            request: Option<Value>,
            response: Value,
        },
        ExportedFunctionCompleted {
            results: Vec<Value>,
            fuel_consumed: u64,
        },
        Error {
            kind: FailureKind,
            message: String,
            fuel_consumed: u64,
        },
        Interrupted {
            timestamp_ms: u64,
        },
        Suspended {
            timestamp_ms: u64,
        },
        Log {
            stream: LogStream,
            bytes: Vec<u8>,
        },
        BeginRemoteWrite {
            host_function: String,
            idempotency_key: String,
        },
        EndRemoteWrite {
            begin: OplogIndex,
        },
        Snapshot {
            blob_key: String,
            size: u64,
            sha256: String,
        },
        Jump {
            from: OplogIndex,
            to: OplogIndex,
        },
        BeginAtomicRegion,
        EndAtomicRegion {
            begin: OplogIndex,
        },
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<OplogEntry, postcard::Error> {
        Ok(match postcard::from_bytes(bytes)? {
            Entry::Create {
                timestamp_ms,
                component_version,
                env,
                args,
            } => OplogEntry::Create {
                timestamp_ms,
                component_version,
                env,
                args,
                incarnation: String::new(),
            },
            Entry::InvocationEnqueued {
                timestamp_ms,
                idempotency_key,
            } => OplogEntry::InvocationEnqueued {
                timestamp_ms,
                idempotency_key,
            },
            Entry::ExportedFunctionInvoked {
                timestamp_ms,
                function,
                params,
                idempotency_key,
            } => OplogEntry::ExportedFunctionInvoked {
                timestamp_ms,
                function,
                params,
                idempotency_key,
                limits: None,
            },
            Entry::ImportedFunctionInvoked {
                host_function,
                request,
                response,
            } => OplogEntry::ImportedFunctionInvoked {
                host_function,
                request,
                response,
            },
            Entry::ExportedFunctionCompleted {
                results,
                fuel_consumed,
            } => OplogEntry::ExportedFunctionCompleted {
                results,
                fuel_consumed,
            },
            Entry::Error {
                kind,
                message,
                fuel_consumed,
            } => OplogEntry::Error {
                kind,
                message,
                fuel_consumed,
            },
            Entry::Interrupted { timestamp_ms } => OplogEntry::Interrupted { timestamp_ms },
            Entry::Suspended { timestamp_ms } => OplogEntry::Suspended { timestamp_ms },
            Entry::Log { stream, bytes } => OplogEntry::Log { stream, bytes },
            Entry::BeginRemoteWrite {
                host_function,
                idempotency_key,
            } => OplogEntry::BeginRemoteWrite {
                host_function,
                idempotency_key,
            },
            Entry::EndRemoteWrite { begin } => OplogEntry::EndRemoteWrite { begin },
            Entry::Snapshot {
                blob_key,
                size,
                sha256,
            } => OplogEntry::Snapshot {
                blob_key,
                size,
                sha256,
            },
            Entry::Jump { from, to } => OplogEntry::Jump { from, to },
            Entry::BeginAtomicRegion => OplogEntry::BeginAtomicRegion,
            Entry::EndAtomicRegion { begin } => OplogEntry::EndAtomicRegion { begin },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<OplogEntry> {
        vec![
            OplogEntry::Create {
                timestamp_ms: 1,
                component_version: 3,
                env: vec![("A".into(), "b".into())],
                args: vec!["x".into()],
                incarnation: "0f1e2d3c".into(),
            },
            OplogEntry::ExportedFunctionInvoked {
                timestamp_ms: 2,
                function: "pkg:name/api.{add}".into(),
                params: vec![
                    Value::S64(-5),
                    Value::Record(vec![("f".into(), Value::F64(f64::NAN))]),
                    Value::Result(Err(Some(Box::new(Value::String("e".into()))))),
                ],
                idempotency_key: "k".into(),
                limits: Some(InvocationLimits {
                    fuel: 10,
                    memory_bytes: 1 << 20,
                    timeout_ms: 30_000,
                    egress_hosts: Some(vec!["example.com".into()]),
                    workers_max: 3,
                }),
            },
            OplogEntry::ImportedFunctionInvoked {
                host_function: "wasi:clocks/wall-clock.now".into(),
                request: None,
                response: Value::Tuple(vec![Value::U64(1_700_000_000), Value::U32(5)]),
            },
            OplogEntry::ExportedFunctionCompleted {
                results: vec![Value::Flags(vec!["read".into()])],
                fuel_consumed: 1234,
            },
            OplogEntry::Error {
                kind: FailureKind::OutOfFuel,
                message: "all fuel consumed".into(),
                fuel_consumed: 1_000,
            },
            OplogEntry::Log {
                stream: LogStream::Stderr,
                bytes: b"hello\n".to_vec(),
            },
            OplogEntry::Jump { from: 4, to: 9 },
            OplogEntry::BeginAtomicRegion,
            OplogEntry::EndAtomicRegion { begin: 3 },
        ]
    }

    #[test]
    fn entries_round_trip() {
        for entry in samples() {
            let bytes = entry.encode();
            assert_eq!(bytes[0], FORMAT_VERSION);
            assert_eq!(OplogEntry::decode(&bytes).expect("decodes"), entry);
        }
    }

    #[test]
    fn bytes_are_a_list_of_u8_held_compactly() {
        let bytes = Value::Bytes(vec![1, 2, 255]);
        let list = Value::List(vec![Value::U8(1), Value::U8(2), Value::U8(255)]);
        assert_eq!(bytes, list);
        assert_eq!(list, bytes);
        assert_ne!(bytes, Value::List(vec![Value::U8(1), Value::U8(2)]));
        assert_ne!(
            bytes,
            Value::List(vec![Value::U8(1), Value::U8(2), Value::U16(255)])
        );
        assert_eq!(bytes.to_json(), list.to_json());
        assert_eq!(bytes.as_bytes().as_deref(), Some(&[1_u8, 2, 255][..]));
        assert_eq!(list.as_bytes().as_deref(), Some(&[1_u8, 2, 255][..]));
        // A byte a byte in the oplog, where a list takes two.
        let entry = |response| OplogEntry::ImportedFunctionInvoked {
            host_function: "r".into(),
            request: None,
            response,
        };
        let big = vec![7_u8; 10_000];
        let compact = entry(Value::Bytes(big.clone())).encode().len();
        let listed = entry(Value::List(big.into_iter().map(Value::U8).collect()))
            .encode()
            .len();
        assert!(compact < 10_100 && listed > 19_000, "{compact} {listed}");
    }

    #[test]
    fn format_1_is_still_read_with_an_empty_incarnation() {
        let old = v1::Entry::Create {
            timestamp_ms: 1,
            component_version: 3,
            env: vec![("A".into(), "b".into())],
            args: vec![],
        };
        let bytes = postcard::to_extend(&old, vec![FORMAT_V1]).expect("encodes");
        assert_eq!(
            OplogEntry::decode(&bytes).expect("decodes"),
            OplogEntry::Create {
                timestamp_ms: 1,
                component_version: 3,
                env: vec![("A".into(), "b".into())],
                args: vec![],
                incarnation: String::new(),
            }
        );
        let log = postcard::to_extend(&v1::Entry::EndRemoteWrite { begin: 7 }, vec![FORMAT_V1])
            .expect("encodes");
        assert_eq!(
            OplogEntry::decode(&log).expect("decodes"),
            OplogEntry::EndRemoteWrite { begin: 7 }
        );
    }

    fn values() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<u8>().prop_map(Value::U8),
            any::<i64>().prop_map(Value::S64),
            any::<u64>().prop_map(Value::U64),
            any::<f64>().prop_map(Value::F64),
            any::<f32>().prop_map(Value::F32),
            any::<char>().prop_map(Value::Char),
            ".{0,12}".prop_map(Value::String),
            ".{0,8}".prop_map(Value::Enum),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Tuple),
                prop::collection::vec((".{0,6}", inner.clone()), 0..4).prop_map(Value::Record),
                proptest::option::of(inner.clone()).prop_map(|v| Value::Option(v.map(Box::new))),
                (".{0,6}", proptest::option::of(inner.clone()))
                    .prop_map(|(c, v)| Value::Variant(c, v.map(Box::new))),
                (any::<bool>(), proptest::option::of(inner)).prop_map(|(ok, v)| {
                    let v = v.map(Box::new);
                    Value::Result(if ok { Ok(v) } else { Err(v) })
                }),
            ]
        })
    }

    fn entries() -> impl proptest::strategy::Strategy<Value = OplogEntry> {
        use proptest::prelude::*;
        prop_oneof![
            (
                any::<u64>(),
                any::<u64>(),
                prop::collection::vec((".{0,8}", ".{0,8}"), 0..3),
                prop::collection::vec(".{0,8}", 0..3),
                "[0-9a-f]{0,32}"
            )
                .prop_map(
                    |(timestamp_ms, component_version, env, args, incarnation)| {
                        OplogEntry::Create {
                            timestamp_ms,
                            component_version,
                            env,
                            args,
                            incarnation,
                        }
                    }
                ),
            (
                any::<u64>(),
                ".{0,20}",
                prop::collection::vec(values(), 0..4),
                ".{0,20}",
                proptest::option::of((
                    any::<u64>(),
                    any::<u64>(),
                    proptest::option::of(prop::collection::vec(".{0,8}", 0..3))
                ))
            )
                .prop_map(
                    |(timestamp_ms, function, params, idempotency_key, limits)| {
                        OplogEntry::ExportedFunctionInvoked {
                            timestamp_ms,
                            function,
                            params,
                            idempotency_key,
                            limits: limits.map(|(fuel, memory_bytes, egress_hosts)| {
                                InvocationLimits {
                                    fuel,
                                    memory_bytes,
                                    timeout_ms: fuel / 2,
                                    egress_hosts,
                                    workers_max: memory_bytes / 3,
                                }
                            }),
                        }
                    }
                ),
            (".{0,20}", proptest::option::of(values()), values()).prop_map(
                |(host_function, request, response)| OplogEntry::ImportedFunctionInvoked {
                    host_function,
                    request,
                    response
                }
            ),
            (prop::collection::vec(values(), 0..3), any::<u64>()).prop_map(
                |(results, fuel_consumed)| OplogEntry::ExportedFunctionCompleted {
                    results,
                    fuel_consumed
                }
            ),
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(err, bytes)| {
                OplogEntry::Log {
                    stream: if err {
                        LogStream::Stderr
                    } else {
                        LogStream::Stdout
                    },
                    bytes,
                }
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(from, to)| OplogEntry::Jump { from, to }),
            any::<u64>().prop_map(|begin| OplogEntry::EndRemoteWrite { begin }),
            Just(OplogEntry::BeginAtomicRegion),
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_entry_round_trips(entry in entries()) {
            let bytes = entry.encode();
            proptest::prop_assert_eq!(OplogEntry::decode(&bytes).expect("decodes"), entry);
        }

        /// Decoding arbitrary bytes never panics: it decodes or refuses.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..256)) {
            let _ = OplogEntry::decode(&bytes);
        }
    }

    #[test]
    fn decoding_refuses_what_it_does_not_know() {
        assert!(matches!(OplogEntry::decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            OplogEntry::decode(&[9, 0]),
            Err(DecodeError::UnknownFormat(9))
        ));
        assert!(matches!(
            OplogEntry::decode(&[FORMAT_VERSION, 200, 1]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn encoding_is_compact() {
        let entry = OplogEntry::ImportedFunctionInvoked {
            host_function: "wasi:random/random.get-random-u64".into(),
            request: None,
            response: Value::U64(42),
        };
        // Format byte, tag, the name, option tag, value tag and a one-byte varint.
        assert!(entry.encode().len() <= 40, "{}", entry.encode().len());
    }

    #[test]
    fn entries_render_as_json() {
        let json = samples()[1].to_json(2);
        assert_eq!(json["index"], 2);
        assert_eq!(json["kind"], "exported_function_invoked");
        assert_eq!(json["params"][0], -5);
        assert_eq!(json["params"][1]["f"], "NaN");
        assert_eq!(json["params"][2]["err"], "e");
    }
}
