//! What the executor keeps in the store, and under which keys (tuple-encoded):
//!
//! - `("worker", tenant, component, worker)` → [`WorkerRecord`]
//! - `("oplog", tenant, component, worker, index)` → an encoded [`OplogEntry`], or a chunk
//!   header when the entry is larger than a store value may be
//! - `("oplog-chunk", tenant, component, worker, index, n)` → chunk `n` of a large entry
//! - `("oplog-tail", executor, seq)` → entries appended by an executor owning every shard, on
//!   their way to the keys above (see `tail`): reads of a worker's oplog move its records first
//! - `("invocation", tenant, component, worker, idempotency key)` → [`InvocationRecord`]
//! - `("running", tenant, component, worker)` → present while an invocation whose start is
//!   durable has not completed: what recovery resumes after a crash
//! - `("pending", tenant, component, worker, idempotency key)` → [`PendingRecord`]: an
//!   invocation accepted by `enqueue` and not yet completed, cleared in the transaction that
//!   records its outcome; recovery dispatches what is left, in the order it was accepted
//! - usage counters, laid out by `invicta_model::usage`: the tenant's worker count, the month's
//!   fuel and invocations, and the hourly ledger, added to in the transaction that commits each
//!   invocation

use invicta_model::WorkerId;
use invicta_model::oplog::{FailureKind, OplogEntry, OplogIndex};
use invicta_store::keys::{pack, prefix_range, unpack};
use invicta_store::{RangeOptions, Transaction};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Entries larger than this are split into chunks (a store value holds at most 100 kB).
pub(crate) const ENTRY_CHUNK_BYTES: usize = 90_000;

/// First byte of a chunk header; encoded entries start with their format version (1).
const CHUNKED: u8 = 0xFF;

/// A worker: which component version it runs, with what environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerRecord {
    pub component_version: u64,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub created_at_ms: u64,
    /// Made when the worker is created (also in its `Create` entry): keys derived from the
    /// worker include it. Empty for workers made before incarnations existed.
    #[serde(default)]
    pub incarnation: String,
    /// Set when the worker moved to its version by a snapshot (its history before it does not
    /// replay there): recovery starts from that snapshot (the index of its `Snapshot` entry) or
    /// a later one, never from the beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_base: Option<OplogIndex>,
}

/// The outcome of an invocation, kept under its idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InvocationRecord {
    pub outcome: StoredOutcome,
    /// What was asked under the key ([`fingerprint`]): the same key with another function or
    /// other parameters is refused. Empty for records made before fingerprints were kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    /// The oplog index of its `ExportedFunctionCompleted` or `Error` entry.
    pub oplog_index: OplogIndex,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum StoredOutcome {
    Completed {
        result: serde_json::Value,
        fuel_consumed: u64,
    },
    Failed {
        kind: FailureKind,
        message: String,
    },
}

pub(crate) fn worker_key(id: &WorkerId) -> Vec<u8> {
    pack(&(
        "worker",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
    ))
}

/// The prefix of every worker of a component.
pub(crate) fn workers_prefix(tenant: &str, component: &str) -> Vec<u8> {
    invicta_model::layout::workers_prefix(tenant, component)
}

/// The prefix of a worker's oplog chunks.
pub(crate) fn chunks_prefix(id: &WorkerId) -> Vec<u8> {
    pack(&(
        "oplog-chunk",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
    ))
}

/// The prefix of a worker's invocation records.
pub(crate) fn invocations_prefix(id: &WorkerId) -> Vec<u8> {
    pack(&(
        "invocation",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
    ))
}

pub(crate) fn pending_key(id: &WorkerId, idempotency_key: &str) -> Vec<u8> {
    pack(&(
        "pending",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
        idempotency_key,
    ))
}

/// The prefix of a worker's pending invocations.
pub(crate) fn pending_prefix(id: &WorkerId) -> Vec<u8> {
    pack(&(
        "pending",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
    ))
}

/// The prefix of every pending invocation.
pub(crate) fn pending_prefix_all() -> Vec<u8> {
    pack(&("pending",))
}

/// A page of a worker's records under `prefix`: those after the key `after_key` (the previous
/// page's last, when there was one), at most `limit`; `WorkerNotFound` if the worker is gone.
pub(crate) fn page(
    tx: &mut Transaction<'_>,
    id: &WorkerId,
    prefix: &[u8],
    after_key: Option<Vec<u8>>,
    limit: usize,
) -> Result<Vec<invicta_store::KeyValue>, Error> {
    if tx.get(&worker_key(id))?.is_none() {
        return Err(Error::WorkerNotFound(id.to_string()));
    }
    let (mut begin, end) = prefix_range(prefix);
    if let Some(mut after) = after_key {
        after.push(0);
        begin = after;
    }
    Ok(tx.get_range(&begin, &end, RangeOptions::limit(limit.max(1)))?)
}

/// The worker and idempotency key of a [`pending_key`].
pub(crate) fn parse_pending_key(key: &[u8]) -> Option<(WorkerId, String)> {
    let (_, tenant, component, worker, idempotency_key): (String, String, String, String, String) =
        unpack(key).ok()?;
    Some((
        WorkerId {
            tenant: invicta_model::TenantId::new(tenant).ok()?,
            component: invicta_model::ComponentName::new(component).ok()?,
            worker: invicta_model::WorkerName::new(worker).ok()?,
        },
        idempotency_key,
    ))
}

/// An invocation accepted by `enqueue`, until its outcome is recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingRecord {
    pub function: String,
    pub params: Vec<serde_json::Value>,
    /// The plan's limits when it was accepted.
    pub fuel: u64,
    pub memory_bytes: u64,
    #[serde(default)]
    pub egress_hosts: Option<Vec<String>>,
    pub enqueued_at_ms: u64,
    /// Not before this (ms since the epoch), if it was scheduled for later.
    #[serde(default)]
    pub due_at_ms: Option<u64>,
    /// When it runs again after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<invicta_model::retry::RetryPolicy>,
    /// The runs that failed so far, and the last one's error.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What an invocation asks, as a short hash of its function and parameters: an idempotency
/// key is bound to it, as payment APIs bind theirs to the request. For an HTTP handler, what
/// makes a request the same request again is its method, path and body: sent again it
/// differs in its headers (another connection, another port).
pub(crate) fn fingerprint(function: &str, params: &[invicta_model::Value]) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(function.as_bytes());
    hash.update([0]);
    let handler =
        function.starts_with("wasi:http/incoming-handler@") && function.ends_with(".{handle}");
    let identity: Vec<invicta_model::Value>;
    let params = if handler {
        identity = params
            .iter()
            .map(|request| match request {
                invicta_model::Value::Record(fields) => invicta_model::Value::Record(
                    fields
                        .iter()
                        .filter(|(name, _)| {
                            matches!(name.as_str(), "method" | "path_and_query" | "body")
                        })
                        .cloned()
                        .collect(),
                ),
                other => other.clone(),
            })
            .collect();
        &identity
    } else {
        params
    };
    // Encoding into a Vec fails only on a serializer bug; the function alone then decides.
    hash.update(postcard::to_allocvec(params).unwrap_or_default());
    hex::encode(&hash.finalize()[..16])
}

pub(crate) fn oplog_prefix(id: &WorkerId) -> Vec<u8> {
    pack(&(
        "oplog",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
    ))
}

pub(crate) fn oplog_key(id: &WorkerId, index: OplogIndex) -> Vec<u8> {
    pack(&(
        "oplog",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
        index,
    ))
}

/// Where the chunks of entry `index` start (and those of earlier entries end).
pub(crate) fn chunks_at(id: &WorkerId, index: OplogIndex) -> Vec<u8> {
    pack(&(
        "oplog-chunk",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
        index,
    ))
}

fn chunk_key(id: &WorkerId, index: OplogIndex, n: u32) -> Vec<u8> {
    pack(&(
        "oplog-chunk",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
        index,
        n,
    ))
}

pub(crate) fn invocation_key(id: &WorkerId, idempotency_key: &str) -> Vec<u8> {
    pack(&(
        "invocation",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
        idempotency_key,
    ))
}

pub(crate) fn running_key(id: &WorkerId) -> Vec<u8> {
    pack(&(
        "running",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
    ))
}

pub(crate) fn running_prefix() -> Vec<u8> {
    pack(&("running",))
}

/// The worker a `running` key names.
pub(crate) fn parse_running_key(key: &[u8]) -> Option<WorkerId> {
    let (_, tenant, component, worker): (String, String, String, String) = unpack(key).ok()?;
    Some(WorkerId {
        tenant: tenant.try_into().ok()?,
        component: component.try_into().ok()?,
        worker: worker.try_into().ok()?,
    })
}

pub(crate) use invicta_model::month_of;

pub(crate) fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data structures: serializing them to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// The writes that store one encoded entry: one key, or a header and its chunks.
pub(crate) fn entry_writes(
    id: &WorkerId,
    index: OplogIndex,
    encoded: Vec<u8>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    if encoded.len() <= ENTRY_CHUNK_BYTES {
        return vec![(oplog_key(id, index), encoded)];
    }
    let chunks: Vec<&[u8]> = encoded.chunks(ENTRY_CHUNK_BYTES).collect();
    let count = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    let mut header = vec![CHUNKED];
    header.extend_from_slice(&count.to_be_bytes());
    let mut writes = vec![(oplog_key(id, index), header)];
    for (n, chunk) in chunks.into_iter().enumerate() {
        writes.push((chunk_key(id, index, n as u32), chunk.to_vec()));
    }
    writes
}

/// The writes that store a record's `value` under `key`: itself, or, when it is larger than
/// one store value may be, a header and its chunks under keys that extend `key`'s tuple with
/// the chunk's number. Records (JSON) never start with the header's byte.
pub(crate) fn value_writes(key: Vec<u8>, value: Vec<u8>) -> Vec<(Vec<u8>, Vec<u8>)> {
    if value.len() <= ENTRY_CHUNK_BYTES {
        return vec![(key, value)];
    }
    let chunks: Vec<&[u8]> = value.chunks(ENTRY_CHUNK_BYTES).collect();
    let count = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    let mut header = vec![CHUNKED];
    header.extend_from_slice(&count.to_be_bytes());
    let mut writes = Vec::with_capacity(chunks.len() + 1);
    for (n, chunk) in chunks.into_iter().enumerate() {
        writes.push((value_chunk_key(&key, n as u32), chunk.to_vec()));
    }
    writes.push((key, header));
    writes
}

fn value_chunk_key(key: &[u8], n: u32) -> Vec<u8> {
    let mut chunk = key.to_vec();
    chunk.extend_from_slice(&pack(&(n,)));
    chunk
}

/// Stores a record's `value` under `key` (see [`value_writes`]).
pub(crate) fn set_value(tx: &mut Transaction<'_>, key: &[u8], value: Vec<u8>) -> Result<(), Error> {
    for (k, v) in value_writes(key.to_vec(), value) {
        tx.set(&k, &v)?;
    }
    Ok(())
}

/// A record stored with [`value_writes`], whole.
pub(crate) fn read_value(tx: &mut Transaction<'_>, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let Some(value) = tx.get(key)? else {
        return Ok(None);
    };
    if value.first() != Some(&CHUNKED) {
        return Ok(Some(value));
    }
    let count = value
        .get(1..5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| Error::Corrupt("a chunked record has a bad header".into()))?;
    let mut whole = Vec::new();
    for n in 0..count {
        let chunk = tx
            .get(&value_chunk_key(key, n))?
            .ok_or_else(|| Error::Corrupt(format!("a chunked record misses chunk {n}")))?;
        whole.extend_from_slice(&chunk);
    }
    Ok(Some(whole))
}

/// Clears a record stored with [`value_writes`], chunks and all.
pub(crate) fn clear_value(tx: &mut Transaction<'_>, key: &[u8]) -> Result<(), Error> {
    tx.clear(key)?;
    let (begin, end) = invicta_store::keys::prefix_range(key);
    tx.clear_range(&begin, &end)?;
    Ok(())
}

/// Whether `key` may hold a record stored in chunks ([`value_writes`]): pending invocations and
/// invocation outcomes.
pub(crate) fn may_be_chunked(key: &[u8]) -> bool {
    static PREFIXES: std::sync::OnceLock<[Vec<u8>; 2]> = std::sync::OnceLock::new();
    PREFIXES
        .get_or_init(|| [pack(&("pending",)), pack(&("invocation",))])
        .iter()
        .any(|prefix| key.starts_with(prefix))
}

/// Whether a key under the pending prefix is a chunk of a large pending record.
pub(crate) fn is_pending_chunk(key: &[u8]) -> bool {
    unpack::<(String, String, String, String, String, u32)>(key).is_ok()
}

/// The bytes `writes` (from [`entry_writes`]) store.
pub(crate) fn stored_bytes(writes: &[(Vec<u8>, Vec<u8>)]) -> i64 {
    let bytes: usize = writes.iter().map(|(_, v)| v.len()).sum();
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The counter of the oplog bytes a worker's component stores, and what `writes` add to it.
pub(crate) fn stored_add(id: &WorkerId, writes: &[(Vec<u8>, Vec<u8>)]) -> (Vec<u8>, i64) {
    (
        invicta_model::usage::stored_key(
            id.tenant.as_str(),
            id.component.as_str(),
            invicta_model::usage::OPLOG_BYTES,
        ),
        stored_bytes(writes),
    )
}

/// The index of an oplog key under `prefix`.
fn index_of(prefix_len: usize, key: &[u8]) -> Result<OplogIndex, Error> {
    let rest = key
        .get(prefix_len..)
        .ok_or_else(|| Error::Corrupt("oplog key shorter than its prefix".into()))?;
    let (index,): (u64,) = unpack(rest).map_err(|e| Error::Corrupt(format!("oplog key: {e:?}")))?;
    Ok(index)
}

/// Counts a new worker of its tenant, refused past `workers_max`: in the transaction that
/// creates the worker, so the count is exact under races.
pub(crate) fn count_new_worker(
    tx: &mut Transaction<'_>,
    id: &WorkerId,
    workers_max: u64,
) -> Result<(), Error> {
    let count_key =
        invicta_model::usage::count_key(id.tenant.as_str(), invicta_model::usage::WORKERS);
    let workers = u64::try_from(tx.get_i64(&count_key)?).unwrap_or(0);
    if workers >= workers_max {
        return Err(Error::QuotaExceeded {
            quota: "workers",
            limit: workers_max,
            used: workers,
        });
    }
    tx.atomic_add(&count_key, 1)?;
    Ok(())
}

/// The oplog's last index (0 when it is empty).
pub(crate) fn last_index(tx: &mut Transaction<'_>, id: &WorkerId) -> Result<OplogIndex, Error> {
    let prefix = oplog_prefix(id);
    let (begin, end) = prefix_range(&prefix);
    let last = tx.get_range(&begin, &end, RangeOptions::limit(1).reverse())?;
    match last.first() {
        Some(kv) => index_of(prefix.len(), &kv.key),
        None => Ok(0),
    }
}

/// Reads up to `count` entries from index `from` on.
pub(crate) fn read_entries(
    tx: &mut Transaction<'_>,
    id: &WorkerId,
    from: OplogIndex,
    count: usize,
) -> Result<Vec<(OplogIndex, OplogEntry)>, Error> {
    read_raw_entries(tx, id, from, count)?
        .into_iter()
        .map(|(index, bytes)| {
            OplogEntry::decode(&bytes)
                .map(|entry| (index, entry))
                .map_err(|e| Error::Corrupt(format!("oplog entry {index}: {e}")))
        })
        .collect()
}

/// Reads up to `count` entries from index `from` on, as encoded (a chunked entry whole), with
/// the bytes each takes in the store.
pub(crate) fn read_raw_entries(
    tx: &mut Transaction<'_>,
    id: &WorkerId,
    from: OplogIndex,
    count: usize,
) -> Result<Vec<(OplogIndex, Vec<u8>)>, Error> {
    let prefix = oplog_prefix(id);
    let begin = oplog_key(id, from.max(1));
    let (_, end) = prefix_range(&prefix);
    let rows = tx.get_range(&begin, &end, RangeOptions::limit(count))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let index = index_of(prefix.len(), &row.key)?;
        let bytes = if row.value.first() == Some(&CHUNKED) {
            let count = row
                .value
                .get(1..5)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| Error::Corrupt(format!("oplog entry {index}: bad chunk header")))?;
            let mut whole = Vec::new();
            for n in 0..count {
                let chunk = tx.get(&chunk_key(id, index, n))?.ok_or_else(|| {
                    Error::Corrupt(format!("oplog entry {index}: chunk {n} missing"))
                })?;
                whole.extend_from_slice(&chunk);
            }
            whole
        } else {
            row.value
        };
        out.push((index, bytes));
    }
    Ok(out)
}

#[cfg(test)]
mod chunked {
    use super::*;

    fn id() -> WorkerId {
        WorkerId {
            tenant: "t".to_string().try_into().expect("tenant"),
            component: "c".to_string().try_into().expect("component"),
            worker: "w".to_string().try_into().expect("worker"),
        }
    }

    #[test]
    fn only_records_that_may_be_chunked_are_cleared_with_their_chunks() {
        assert!(may_be_chunked(&pending_key(&id(), "k")));
        assert!(may_be_chunked(&invocation_key(&id(), "k")));
        assert!(!may_be_chunked(&running_key(&id())));
        assert!(!may_be_chunked(&worker_key(&id())));
    }

    #[test]
    fn a_large_record_is_written_in_chunks_that_extend_its_key() {
        let key = pending_key(&id(), "k");
        let small = value_writes(key.clone(), b"{}".to_vec());
        assert_eq!(small, vec![(key.clone(), b"{}".to_vec())]);
        let large = value_writes(key.clone(), vec![b'x'; ENTRY_CHUNK_BYTES * 2 + 1]);
        assert_eq!(large.len(), 4, "three chunks and a header");
        assert!(
            large[..3]
                .iter()
                .all(|(k, _)| k.starts_with(&key) && k.len() > key.len())
        );
        assert!(large[..3].iter().all(|(k, _)| is_pending_chunk(k)));
        assert_eq!(large[3].0, key);
        assert_eq!(large[3].1.first(), Some(&CHUNKED));
    }
}
