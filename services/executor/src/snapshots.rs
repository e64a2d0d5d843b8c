//! Snapshots: a worker whose component exports `invicta:host/snapshot` is recovered from its
//! latest snapshot and the oplog after it, rather than from its whole history.
//!
//! Every so many invocations (or oplog entries) the actor calls `save-snapshot` at an invocation
//! boundary, puts the bytes in the blob store under the worker's incarnation, and commits a
//! `Snapshot` entry together with the worker's snapshot record, `("snapshot", tenant,
//! component, worker)` → [`SnapshotRecord`]: the last [`KEPT`] snapshots, newest first. Neither
//! call is recorded in the oplog (whatever host calls they make are answered live and
//! forgotten), so a full replay passes over the `Snapshot` entry as over any marker.
//!
//! Recovery tries the snapshots newest first, then a full replay. A snapshot is used only if it
//! was made by the worker's current component version, no later jump (a revert) reaches back
//! over it, its blob reads back with its SHA-256, `load-snapshot` accepts it and the oplog after
//! it replays; any failure moves on to the next candidate, so a bad snapshot costs time, never a
//! wrong state.
//!
//! **Invariant:** a snapshot record names only snapshots whose `Snapshot` entry is durable: both
//! are written in one transaction.

use invicta_model::WorkerId;
use invicta_model::oplog::{OplogEntry, OplogIndex};
use invicta_store::keys::pack;
use serde::{Deserialize, Serialize};
use wasmtime::component::{Func, Instance, InstancePre};

/// The interface a component exports to be snapshotted (any 0.1 version).
pub(crate) const INTERFACE: &str = "invicta:host/snapshot@0.1";
const SAVE: &str = "save-snapshot";
const LOAD: &str = "load-snapshot";

/// How many snapshots a worker's record keeps (the older ones are fallbacks).
pub(crate) const KEPT: usize = 3;

/// A snapshot taken: where its bytes are and what state it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The index of its `Snapshot` entry: it holds the state after every entry before it.
    pub(crate) index: OplogIndex,
    pub(crate) component_version: u64,
    pub(crate) blob_key: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) taken_at_ms: u64,
    /// The worker's files as they were (an archive of its directory), when it had written any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) files: Option<invicta_blob::BlobRef>,
}

/// A worker's snapshots, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SnapshotRecord {
    pub(crate) snapshots: Vec<Snapshot>,
}

impl SnapshotRecord {
    /// The record with `snapshot` added in front, and the snapshots it no longer keeps.
    pub(crate) fn with(mut self, snapshot: Snapshot) -> (SnapshotRecord, Vec<Snapshot>) {
        self.snapshots.insert(0, snapshot);
        let dropped = if self.snapshots.len() > KEPT {
            self.snapshots.split_off(KEPT)
        } else {
            Vec::new()
        };
        (self, dropped)
    }
}

/// `("snapshot", tenant, component, worker)`.
pub(crate) fn record_key(id: &WorkerId) -> Vec<u8> {
    pack(&(
        "snapshot",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
    ))
}

/// Where a worker incarnation's snapshots are kept in the blob store (named by a hash of the
/// worker's name, as any name is not a safe object key).
pub(crate) fn blob_prefix(id: &WorkerId, incarnation: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.to_string().as_bytes());
    let incarnation = if incarnation.is_empty() {
        "0"
    } else {
        incarnation
    };
    format!("snapshots/{}/{incarnation}", hex::encode(&digest[..16]))
}

/// When a component's workers are snapshotted: after `every_invocations` invocations,
/// `every_entries` oplog entries or `every_oplog_bytes` bytes of oplog, whichever comes first,
/// since the last snapshot (0: not by that count; all 0: never). The executor's `[executor]`
/// settings are the default; a component may have its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[schema(maximum = 1_000_000_000_000_u64)]
    pub every_invocations: u64,
    #[schema(maximum = 1_000_000_000_000_u64)]
    pub every_entries: u64,
    /// Encoded bytes of oplog entries (0 if left out).
    #[serde(default)]
    #[schema(maximum = 1_000_000_000_000_u64)]
    pub every_oplog_bytes: u64,
}

/// The largest count a policy may name.
const POLICY_COUNT_MAX: u64 = 1_000_000_000_000;

/// `("component-snapshots", tenant, component)`: a component's own policy.
pub(crate) fn policy_key(tenant: &str, component: &str) -> Vec<u8> {
    pack(&("component-snapshots", tenant, component))
}

impl Policy {
    /// Why the policy cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.every_invocations > POLICY_COUNT_MAX
            || self.every_entries > POLICY_COUNT_MAX
            || self.every_oplog_bytes > POLICY_COUNT_MAX
        {
            return Err(format!("a count is at most {POLICY_COUNT_MAX}"));
        }
        Ok(())
    }

    pub(crate) fn due(&self, invocations: u64, entries: u64, bytes: u64) -> bool {
        (self.every_invocations > 0 && invocations >= self.every_invocations)
            || (self.every_entries > 0 && entries >= self.every_entries)
            || (self.every_oplog_bytes > 0 && bytes >= self.every_oplog_bytes)
    }
}

/// Whether the component exports a whole snapshot interface.
pub(crate) fn exported_by(compiled: &invicta_component_registry::Compiled) -> bool {
    let has = |name: &str| {
        compiled.exports.iter().any(|f| {
            f.function == name
                && f.instance
                    .as_deref()
                    .is_some_and(|i| i.starts_with(INTERFACE))
        })
    };
    has(SAVE) && has(LOAD)
}

/// Where the `save-snapshot` and `load-snapshot` exports are, if the component has them.
pub(crate) fn exports<T>(pre: &InstancePre<T>) -> Option<(String, bool)> {
    let component = pre.component();
    let ty = component.component_type();
    let engine = pre.engine();
    for (name, item) in ty.exports(engine) {
        if !name.starts_with(INTERFACE) {
            continue;
        }
        if let wasmtime::component::types::ComponentItem::ComponentInstance(instance) = item.ty {
            let names: Vec<&str> = instance.exports(engine).map(|(n, _)| n).collect();
            return Some((
                name.to_string(),
                names.contains(&SAVE) && names.contains(&LOAD),
            ));
        }
    }
    None
}

/// The functions of the exported snapshot interface `interface`.
pub(crate) fn functions<T>(
    pre: &InstancePre<T>,
    instance: &Instance,
    store: &mut wasmtime::Store<T>,
    interface: &str,
) -> Option<(Func, Func)> {
    let component = pre.component();
    let at = component.get_export_index(None, interface)?;
    let save = component.get_export_index(Some(&at), SAVE)?;
    let load = component.get_export_index(Some(&at), LOAD)?;
    Some((
        instance.get_func(&mut *store, save)?,
        instance.get_func(&mut *store, load)?,
    ))
}

/// Where a recovery from `snapshot` starts: the worker's `Create` entry and the host calls of
/// its instantiation (which replay still answers), then the oplog after the snapshot, as
/// replay sees it. `None` if a jump in that tail reaches back over the snapshot (a revert).
pub(crate) fn recovery_entries(
    head: &[(OplogIndex, OplogEntry)],
    tail: Vec<(OplogIndex, OplogEntry)>,
    snapshot: OplogIndex,
) -> Option<Vec<(OplogIndex, OplogEntry)>> {
    if tail
        .iter()
        .any(|(_, e)| matches!(e, OplogEntry::Jump { from, .. } if *from <= snapshot))
    {
        return None;
    }
    let mut entries: Vec<(OplogIndex, OplogEntry)> = Vec::new();
    for (i, (index, entry)) in head.iter().enumerate() {
        let keep = if i == 0 {
            matches!(entry, OplogEntry::Create { .. })
        } else {
            matches!(entry, OplogEntry::ImportedFunctionInvoked { .. }) && *index < snapshot
        };
        if !keep {
            break;
        }
        entries.push((*index, entry.clone()));
    }
    if entries.is_empty() {
        return None;
    }
    entries.extend(tail);
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use invicta_model::Value;

    fn create() -> OplogEntry {
        OplogEntry::Create {
            timestamp_ms: 1,
            component_version: 1,
            env: vec![],
            args: vec![],
            incarnation: "i".into(),
        }
    }

    fn host_call() -> OplogEntry {
        OplogEntry::ImportedFunctionInvoked {
            host_function: "wasi:random/random.get-random-u64".into(),
            request: None,
            response: Value::U64(4),
        }
    }

    fn invoked() -> OplogEntry {
        OplogEntry::ExportedFunctionInvoked {
            timestamp_ms: 2,
            function: "add".into(),
            params: vec![Value::S64(1)],
            idempotency_key: "k".into(),
            limits: None,
        }
    }

    #[test]
    fn a_recovery_keeps_the_instantiation_and_the_tail() {
        let head = vec![(1, create()), (2, host_call()), (3, invoked())];
        let tail = vec![(11, invoked())];
        let entries = recovery_entries(&head, tail, 10).expect("usable");
        let indices: Vec<_> = entries.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, vec![1, 2, 11]);
    }

    #[test]
    fn a_jump_back_over_the_snapshot_makes_it_unusable() {
        let head = vec![(1, create())];
        let tail = vec![(11, OplogEntry::Jump { from: 5, to: 10 })];
        assert_eq!(recovery_entries(&head, tail, 10), None);
        let later = vec![(12, OplogEntry::Jump { from: 11, to: 11 })];
        assert!(recovery_entries(&head, later, 10).is_some());
    }

    #[test]
    fn records_keep_the_newest_few() {
        let snapshot = |index| Snapshot {
            index,
            component_version: 1,
            blob_key: format!("b{index}"),
            size: 1,
            sha256: String::new(),
            taken_at_ms: 0,
            files: None,
        };
        let mut record = SnapshotRecord::default();
        let mut dropped_all = Vec::new();
        for index in 1..=5 {
            let (next, dropped) = record.with(snapshot(index));
            record = next;
            dropped_all.extend(dropped);
        }
        let kept: Vec<_> = record.snapshots.iter().map(|s| s.index).collect();
        assert_eq!(kept, vec![5, 4, 3]);
        let gone: Vec<_> = dropped_all.iter().map(|s| s.index).collect();
        assert_eq!(gone, vec![1, 2]);
    }

    #[test]
    fn policies_fire_on_either_count() {
        let p = Policy {
            every_invocations: 10,
            every_entries: 100,
            every_oplog_bytes: 1_000,
        };
        assert!(!p.due(9, 99, 999));
        assert!(p.due(10, 0, 0));
        assert!(p.due(0, 100, 0));
        assert!(p.due(0, 0, 1_000));
        let never = Policy {
            every_invocations: 0,
            every_entries: 0,
            every_oplog_bytes: 0,
        };
        assert!(!never.due(u64::MAX, u64::MAX, u64::MAX));
    }
}
