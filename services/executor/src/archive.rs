//! Archived oplogs: entries older than a worker's latest snapshot move from the store to the
//! blob store in zstd-compressed segments, so that the store keeps only a worker's tail.
//!
//! A segment holds a contiguous run of entries, each as the store kept it (its encoded bytes,
//! a chunked entry whole). Archiving one is two steps: the segment is put in the blob store
//! (content-addressed, so a retry writes the same object), then one transaction checks that
//! the run is still in the store, clears it, and writes the segment's record,
//! `("oplog-archive", tenant, component, worker, first index)` → [`Segment`], moving the
//! bytes the store counted for the oplog to the segment's size. A crash between the steps
//! leaves an unreferenced object and the entries where they were: nothing is lost or doubled,
//! and indices stay contiguous. [`history`] reads across archive and store as one oplog.
//!
//! **Invariant:** an index is in exactly one place: a segment or the store.

use std::io::Read;

use invicta_blob::{BlobRef, BlobStore};
use invicta_model::WorkerId;
use invicta_model::oplog::{OplogEntry, OplogIndex};
use invicta_store::keys::{pack, prefix_range};
use invicta_store::{RangeOptions, Store};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::records;

/// The most entries one segment holds.
pub(crate) const SEGMENT_ENTRIES_MAX: usize = 50_000;

/// The zstd level segments are compressed at.
const LEVEL: i32 = 3;

/// The most bytes a segment may decompress to (a bound on what a corrupt object can cost).
const SEGMENT_BYTES_MAX: u64 = 1 << 30;

/// An archived run of entries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) first: OplogIndex,
    pub(crate) last: OplogIndex,
    pub(crate) blob_key: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    /// The bytes the entries took in the store.
    pub(crate) stored_bytes: u64,
    pub(crate) archived_at_ms: u64,
}

/// `("oplog-archive", tenant, component, worker, first)`.
pub(crate) fn segment_key(id: &WorkerId, first: OplogIndex) -> Vec<u8> {
    pack(&(
        "oplog-archive",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
        first,
    ))
}

/// The prefix of a worker's segment records.
pub(crate) fn segments_prefix(id: &WorkerId) -> Vec<u8> {
    pack(&(
        "oplog-archive",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
    ))
}

/// Where a worker's segments are kept in the blob store.
pub(crate) fn blob_prefix(id: &WorkerId) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.to_string().as_bytes());
    format!("oplog-archive/{}", hex::encode(&digest[..16]))
}

/// Entries as the store kept them, framed (index, length, bytes) and compressed.
pub(crate) fn encode(entries: &[(OplogIndex, Vec<u8>)]) -> Result<Vec<u8>, Error> {
    let mut framed = Vec::new();
    for (index, bytes) in entries {
        framed.extend_from_slice(&index.to_be_bytes());
        let len = u32::try_from(bytes.len())
            .map_err(|_| Error::Corrupt(format!("oplog entry {index} is over 4 GiB")))?;
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
    }
    zstd::bulk::compress(&framed, LEVEL).map_err(|e| Error::Corrupt(format!("compress: {e}")))
}

/// The entries of a segment, decoded.
pub(crate) fn decode(compressed: &[u8]) -> Result<Vec<(OplogIndex, OplogEntry)>, Error> {
    let corrupt = |what: String| Error::Corrupt(format!("archived segment: {what}"));
    let mut framed = Vec::new();
    zstd::stream::read::Decoder::new(compressed)
        .map_err(|e| corrupt(e.to_string()))?
        .take(SEGMENT_BYTES_MAX)
        .read_to_end(&mut framed)
        .map_err(|e| corrupt(e.to_string()))?;
    let mut out = Vec::new();
    let mut rest = framed.as_slice();
    while !rest.is_empty() {
        let (head, tail) = rest
            .split_at_checked(12)
            .ok_or_else(|| corrupt("a frame is cut short".into()))?;
        let index = u64::from_be_bytes(head[..8].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(head[8..].try_into().unwrap_or_default()) as usize;
        let (bytes, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| corrupt(format!("entry {index} is cut short")))?;
        let entry =
            OplogEntry::decode(bytes).map_err(|e| corrupt(format!("entry {index}: {e}")))?;
        out.push((index, entry));
        rest = tail;
    }
    Ok(out)
}

/// The worker's segments, in index order.
pub(crate) fn segments(
    tx: &mut invicta_store::Transaction<'_>,
    id: &WorkerId,
) -> Result<Vec<Segment>, Error> {
    let (begin, end) = prefix_range(&segments_prefix(id));
    tx.get_range(&begin, &end, RangeOptions::default())?
        .iter()
        .map(|row| records::decode_json("archived segment", &row.value))
        .collect()
}

/// The worker's segments, as a read of their own.
pub(crate) async fn list(store: &Store, id: &WorkerId) -> Result<Vec<Segment>, Error> {
    let id = id.clone();
    store.read(move |tx| segments(tx, &id)).await
}

async fn fetch(
    blobs: &BlobStore,
    segment: &Segment,
) -> Result<Vec<(OplogIndex, OplogEntry)>, Error> {
    let bytes = blobs
        .get_verified(&BlobRef {
            key: segment.blob_key.clone(),
            size: segment.size,
            sha256: segment.sha256.clone(),
        })
        .await
        .map_err(|e| Error::Corrupt(format!("archived segment {}: {e}", segment.blob_key)))?;
    decode(&bytes)
}

/// Up to `count` entries of the worker's oplog from index `from`, from its segments and then
/// the store, as one oplog.
pub(crate) async fn history(
    committer: &crate::commit::Committer,
    store: &Store,
    blobs: &BlobStore,
    id: &WorkerId,
    from: OplogIndex,
    count: usize,
) -> Result<Vec<(OplogIndex, OplogEntry)>, Error> {
    // Entries still in the oplog's tail are at their keys first.
    committer.evict(id).await?;
    let from = from.max(1);
    let id_c = id.clone();
    // One read: the segments and the store's entries as of the same moment.
    let (segments, stored) = store
        .read(move |tx| {
            let segments = segments(tx, &id_c)?;
            let archived_to = segments.last().map_or(0, |s| s.last);
            let stored = records::read_entries(tx, &id_c, from.max(archived_to + 1), count)?;
            Ok::<_, Error>((segments, stored))
        })
        .await?;
    let mut out = Vec::new();
    for segment in segments.iter().filter(|s| s.last >= from) {
        if out.len() >= count {
            break;
        }
        let room = count - out.len();
        out.extend(
            fetch(blobs, segment)
                .await?
                .into_iter()
                .filter(|(i, _)| *i >= from)
                .take(room),
        );
    }
    let room = count.saturating_sub(out.len());
    out.extend(stored.into_iter().take(room));
    Ok(out)
}

/// Every archived entry of the worker, with the segments they came from (for a transaction
/// that then reads the store's part and checks the segments are still these).
pub(crate) async fn archived(
    store: &Store,
    blobs: &BlobStore,
    id: &WorkerId,
) -> Result<(Vec<Segment>, Vec<(OplogIndex, OplogEntry)>), Error> {
    let segments = list(store, id).await?;
    let mut entries = Vec::new();
    for segment in &segments {
        entries.extend(fetch(blobs, segment).await?);
    }
    Ok((segments, entries))
}

/// Moves the worker's entries below `below` that are still in the store to segments of at most
/// [`SEGMENT_ENTRIES_MAX`]; returns how many moved. (Called after each snapshot, a segment holds
/// what came between two snapshots.)
pub(crate) async fn archive(
    committer: &crate::commit::Committer,
    store: &Store,
    blobs: &BlobStore,
    id: &WorkerId,
    below: OplogIndex,
) -> Result<u64, Error> {
    // The entries moved are read from their keys, and cleared there: none may be in the tail.
    committer.evict(id).await?;
    let mut moved = 0;
    loop {
        let id_c = id.clone();
        let (first, raw) = store
            .read(move |tx| {
                let archived_to = segments(tx, &id_c)?.last().map_or(0, |s| s.last);
                let first = archived_to + 1;
                let room = usize::try_from(below.saturating_sub(first))
                    .unwrap_or(usize::MAX)
                    .min(SEGMENT_ENTRIES_MAX);
                Ok::<_, Error>((first, records::read_raw_entries(tx, &id_c, first, room)?))
            })
            .await?;
        let Some(last) = raw.last().map(|(i, _)| *i) else {
            return Ok(moved);
        };
        let count = raw.len() as u64;
        if last >= below {
            return Ok(moved);
        }
        if raw.first().map(|(i, _)| *i) != Some(first) || last - first + 1 != count {
            return Err(Error::OplogGap {
                worker: id.to_string(),
                index: first,
            });
        }
        let blob = blobs
            .put_bytes(&blob_prefix(id), &encode(&raw)?)
            .await
            .map_err(|e| Error::Engine(format!("archive an oplog segment: {e}")))?;
        let id_c = id.clone();
        let segment = Segment {
            first,
            last,
            blob_key: blob.key,
            size: blob.size,
            sha256: blob.sha256,
            stored_bytes: 0,
            archived_at_ms: crate::now_ms(),
        };
        store
            .transact(move |tx| {
                if tx.get(&records::worker_key(&id_c))?.is_none() {
                    return Err(Error::WorkerNotFound(id_c.to_string()));
                }
                // Still there, and not archived meanwhile: the run is whole in the store.
                let archived_to = segments(tx, &id_c)?.last().map_or(0, |s| s.last);
                if archived_to + 1 != first {
                    return Err(Error::Engine("the oplog was archived meanwhile".into()));
                }
                let from_key = records::oplog_key(&id_c, first);
                let to_key = records::oplog_key(&id_c, last + 1);
                let rows = tx.get_range(&from_key, &to_key, RangeOptions::default())?;
                if rows.len() as u64 != last - first + 1 {
                    return Err(Error::Engine("the oplog changed meanwhile".into()));
                }
                let mut bytes: u64 = rows.iter().map(|r| r.value.len() as u64).sum();
                let (chunks_from, chunks_to) = (
                    records::chunks_at(&id_c, first),
                    records::chunks_at(&id_c, last + 1),
                );
                for row in tx.get_range(&chunks_from, &chunks_to, RangeOptions::default())? {
                    bytes += row.value.len() as u64;
                }
                tx.clear_range(&from_key, &to_key)?;
                tx.clear_range(&chunks_from, &chunks_to)?;
                let segment = Segment {
                    stored_bytes: bytes,
                    ..segment.clone()
                };
                tx.set(&segment_key(&id_c, first), &records::encode_json(&segment))?;
                let (counter, _) = records::stored_add(&id_c, &[]);
                let delta = i64::try_from(segment.size).unwrap_or(i64::MAX)
                    - i64::try_from(bytes).unwrap_or(i64::MAX);
                tx.atomic_add(&counter, delta)?;
                Ok(())
            })
            .await?;
        moved += count;
    }
}

/// Deletes the worker's segments archived before `before_ms`, but for its first (which holds
/// its `Create` entry) and, in the same transaction, makes `floor` (its latest snapshot's index)
/// where its recovery starts from now on: the history before it no longer replays whole.
/// Returns how many segments went.
pub(crate) async fn expire(
    store: &Store,
    blobs: &BlobStore,
    id: &WorkerId,
    before_ms: u64,
    floor: OplogIndex,
) -> Result<usize, Error> {
    let id_c = id.clone();
    let gone = store
        .transact(move |tx| {
            let segments = segments(tx, &id_c)?;
            let gone: Vec<Segment> = segments
                .into_iter()
                .skip(1)
                .filter(|s| s.archived_at_ms < before_ms && s.last < floor)
                .collect();
            if gone.is_empty() {
                return Ok(gone);
            }
            let key = records::worker_key(&id_c);
            let bytes = tx
                .get(&key)?
                .ok_or_else(|| Error::WorkerNotFound(id_c.to_string()))?;
            let mut record: records::WorkerRecord = records::decode_json("worker record", &bytes)?;
            record.snapshot_base = Some(record.snapshot_base.unwrap_or(0).max(floor));
            tx.set(&key, &records::encode_json(&record))?;
            let mut freed = 0_i64;
            for segment in &gone {
                tx.clear(&segment_key(&id_c, segment.first))?;
                freed += i64::try_from(segment.size).unwrap_or(i64::MAX);
            }
            let (counter, _) = records::stored_add(&id_c, &[]);
            tx.atomic_add(&counter, -freed)?;
            Ok::<_, Error>(gone)
        })
        .await?;
    for segment in &gone {
        if let Err(e) = blobs.delete(&segment.blob_key).await {
            tracing::warn!(worker = %id, key = %segment.blob_key, error = %e, "delete an expired oplog segment");
        }
    }
    Ok(gone.len())
}

/// The worker's segment records and their bytes, cleared in a deletion's transaction; the
/// bytes the segments counted for.
pub(crate) fn clear(tx: &mut invicta_store::Transaction<'_>, id: &WorkerId) -> Result<i64, Error> {
    let total: u64 = segments(tx, id)?.iter().map(|s| s.size).sum();
    let (begin, end) = prefix_range(&segments_prefix(id));
    tx.clear_range(&begin, &end)?;
    Ok(i64::try_from(total).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use invicta_model::Value;
    use proptest::prelude::*;

    fn entry(n: u64) -> OplogEntry {
        OplogEntry::ImportedFunctionInvoked {
            host_function: "wasi:random/random.get-random-u64".into(),
            request: None,
            response: Value::U64(n),
        }
    }

    proptest! {
        #[test]
        fn segments_round_trip(first in 1u64..1_000_000, values in prop::collection::vec(any::<u64>(), 0..200)) {
            let raw: Vec<(OplogIndex, Vec<u8>)> = values
                .iter()
                .enumerate()
                .map(|(n, v)| (first + n as u64, entry(*v).encode()))
                .collect();
            let decoded = decode(&encode(&raw).expect("encode")).expect("decode");
            let expected: Vec<(OplogIndex, OplogEntry)> = values
                .iter()
                .enumerate()
                .map(|(n, v)| (first + n as u64, entry(*v)))
                .collect();
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn damaged_segments_are_refused_not_misread(values in prop::collection::vec(any::<u64>(), 1..50), cut in any::<prop::sample::Index>()) {
            let raw: Vec<(OplogIndex, Vec<u8>)> = values
                .iter()
                .enumerate()
                .map(|(n, v)| (1 + n as u64, entry(*v).encode()))
                .collect();
            let bytes = encode(&raw).expect("encode");
            let cut = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err());
        }
    }
}
