//! The oplog: everything a worker did, in order. It is the truth about a worker; the worker's
//! memory is only a cache of replaying it.
//!
//! Encoding: one format byte ([`FORMAT_VERSION`]) then the entry in `postcard` (varints, no
//! field names). A reader refuses a format it does not know rather than guess.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Value;

/// The encoding's version, the first byte of every encoded entry.
pub const FORMAT_VERSION: u8 = 1;

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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OplogEntry {
    /// The worker was created: which component version, with what environment.
    Create {
        timestamp_ms: u64,
        component_version: u64,
        env: Vec<(String, String)>,
        args: Vec<String>,
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
            } => json!({
                "timestamp_ms": timestamp_ms,
                "component_version": component_version,
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
            } => json!({
                "timestamp_ms": timestamp_ms,
                "function": function,
                "params": values(params),
                "idempotency_key": idempotency_key,
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
