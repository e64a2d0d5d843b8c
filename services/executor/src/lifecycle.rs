//! A local worker's lifecycle: interrupted, resumed (replaying its oplog), deleted, moved to
//! another version of its component, or stopped; each a command to its actor.

use invicta_model::WorkerId;
use invicta_model::oplog::{OplogEntry, OplogIndex};
use tokio::sync::oneshot;

use crate::Executor;
use crate::archive;
use crate::error::{Error, Result};
use crate::records::{self, WorkerRecord};
use crate::worker::{Command, WorkerHandle};

impl Executor {
    /// Stops the worker's running invocation (it fails with `interrupted`, leaving no trace in
    /// the worker's state); returns whether one was running.
    pub(crate) fn interrupt_here(&self, id: &WorkerId) -> bool {
        self.lock_workers()
            .get(id)
            .is_some_and(|handle| handle.interrupt())
    }

    /// Activates the worker now (replaying its oplog), retrying a replay that failed before.
    pub(crate) async fn resume_here(&self, id: &WorkerId) -> Result<()> {
        self.ask(id, WorkerHandle::clear_failure, Command::Activate)
            .await
    }

    /// Tells the worker's actor that what it waits for may have come (started if need be: a
    /// worker asleep after a restart has no actor).
    pub(crate) async fn wake_here(&self, id: &WorkerId) -> Result<()> {
        match self.handle(id).await {
            Ok(handle) => {
                let _ = handle.send(Command::Resume).await;
                Ok(())
            }
            Err(Error::WorkerNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends the worker's actor a command and waits for its answer, starting the actor again
    /// if it stopped meanwhile (bounded). `prepare` runs on the handle first.
    pub(crate) async fn ask<P>(
        &self,
        id: &WorkerId,
        prepare: impl Fn(&WorkerHandle) -> P,
        command: impl Fn(oneshot::Sender<Result<()>>) -> Command,
    ) -> Result<()> {
        for _ in 0..3 {
            let handle = self.handle(id).await?;
            prepare(&handle);
            let (reply, result) = oneshot::channel();
            if handle.send(command(reply)).await.is_err() {
                self.lock_workers().remove(id);
                continue;
            }
            match result.await.unwrap_or(Err(Error::ShuttingDown)) {
                Err(Error::Retry) => continue,
                other => return other,
            }
        }
        Err(Error::ShuttingDown)
    }

    /// What is at `path` of the worker's files, from its actor here.
    pub(crate) async fn files_here(
        &self,
        id: &WorkerId,
        path: &str,
    ) -> Result<crate::files::FileView> {
        for _ in 0..3 {
            let handle = self.handle(id).await?;
            let (reply, result) = oneshot::channel();
            if handle
                .send(Command::Files(path.to_string(), reply))
                .await
                .is_err()
            {
                self.lock_workers().remove(id);
                continue;
            }
            match result.await.unwrap_or(Err(Error::ShuttingDown)) {
                Err(Error::Retry) => continue,
                other => return other,
            }
        }
        Err(Error::ShuttingDown)
    }

    /// Deletes the worker: its running invocation is interrupted, its queued and pending ones
    /// are dropped, and its record, oplog and invocation records are removed.
    pub(crate) async fn delete_here(&self, id: &WorkerId) -> Result<()> {
        self.ask(id, WorkerHandle::start_deleting, Command::Delete)
            .await
    }

    /// Moves the worker to another version of its component: by replay when its history
    /// replays there (every function it was invoked with exported alike, and a trial replay
    /// reproducing every recorded result), else — when `method` allows and both versions
    /// export `invicta:host/snapshot` — by a snapshot. Otherwise the worker stays where it
    /// was and the reason is returned.
    pub(crate) async fn set_version_here(
        &self,
        id: &WorkerId,
        version: u64,
        method: UpdateMethod,
    ) -> Result<WorkerRecord> {
        let plan = self.plan_version(id, version, method).await?;
        let record = plan.record;
        if record.component_version == version {
            return Ok(record);
        }
        if plan.method == UpdateMethod::Snapshot {
            return self.move_by_snapshot(id, &record, version).await;
        }
        self.stop_actor(id).await;
        self.write_version(id, version).await?;
        match self.resume_here(id).await {
            Ok(_) => {
                tracing::info!(worker = %id, from = record.component_version, to = version, "worker moved");
                self.worker_record(id)
                    .await?
                    .ok_or_else(|| Error::WorkerNotFound(id.to_string()))
            }
            Err(Error::WorkerFailed(reason)) => {
                self.stop_actor(id).await;
                self.write_version(id, record.component_version).await?;
                // The history does not replay after all: by a snapshot, if that may be tried.
                if method == UpdateMethod::Auto
                    && self
                        .plan_version(id, version, UpdateMethod::Snapshot)
                        .await
                        .is_ok()
                {
                    tracing::info!(worker = %id, %reason, "history does not replay on the new version: moving by a snapshot");
                    return self.move_by_snapshot(id, &record, version).await;
                }
                Err(Error::IncompatibleVersion(format!(
                    "its history does not replay on version {version}: {reason}"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Reverts the worker to its state after oplog entry `to`: the entries after it stay in the
    /// oplog, skipped by a `Jump` appended after them (so the history stays whole), and the
    /// records of the invocations they held go, so that their keys may run again. `to` must end
    /// an invocation (or be the worker's creation), and nothing may be running or waiting.
    /// Returns the skipped range.
    pub(crate) async fn revert_here(
        &self,
        id: &WorkerId,
        to: OplogIndex,
    ) -> Result<(OplogIndex, OplogIndex)> {
        // Its instance holds what is reverted: gone first, and again after (an invocation
        // that slipped in meanwhile cannot commit past the jump: appends are contiguous).
        self.stop_actor(id).await;
        self.inner.committer.evict(id).await?;
        // The archived part of the history is read first; the transaction reads the store's
        // part and checks the archive is still as read.
        let (segments, archived) =
            archive::archived(&self.inner.store, self.inner.registry.blobs(), id).await?;
        let (id_c, fencing) = (id.clone(), self.inner.fencing.clone());
        let skipped = self
            .inner
            .store
            .transact(move |tx| {
                fencing.check(tx, &id_c, &mut std::collections::HashMap::new())?;
                let Some(bytes) = tx.get(&records::worker_key(&id_c))? else {
                    return Err(Error::WorkerNotFound(id_c.to_string()));
                };
                let record: WorkerRecord = records::decode_json("worker record", &bytes)?;
                if let Some(base) = record.snapshot_base
                    && to < base
                {
                    return Err(Error::InvalidRevert(format!(
                        "the worker recovers from its snapshot at entry {base} on (it moved to version {} by a snapshot, or its archived history expired): it cannot go back before it",
                        record.component_version
                    )));
                }
                if tx.get(&records::running_key(&id_c))?.is_some() {
                    return Err(Error::InvalidRevert(
                        "an invocation is running or waiting; interrupt it first".into(),
                    ));
                }
                if archive::segments(tx, &id_c)? != segments {
                    return Err(Error::Engine(
                        "the worker's oplog was archived meanwhile; try again".into(),
                    ));
                }
                let archived_to = segments.last().map_or(0, |s| s.last);
                let mut all = archived.clone();
                all.extend(records::read_entries(
                    tx,
                    &id_c,
                    archived_to + 1,
                    usize::MAX,
                )?);
                let last = all.last().map_or(0, |(i, _)| *i);
                let visible = crate::worker::apply_jumps(all.clone());
                if !revert_point(&visible, to) {
                    return Err(Error::InvalidRevert(format!(
                        "entry {to} does not end an invocation in the worker's history \
                         (the oplog's last entry is {last})"
                    )));
                }
                if to >= last {
                    return Err(Error::InvalidRevert(format!("nothing follows entry {to}")));
                }
                let from = to + 1;
                for (index, entry) in &all {
                    if let OplogEntry::ExportedFunctionInvoked {
                        idempotency_key, ..
                    } = entry
                        && *index >= from
                    {
                        records::clear_value(tx, &records::invocation_key(&id_c, idempotency_key))?;
                    }
                }
                let jump = OplogEntry::Jump { from, to: last };
                let writes = records::entry_writes(&id_c, last + 1, jump.encode());
                let (stored_key, stored) = records::stored_add(&id_c, &writes);
                tx.atomic_add(&stored_key, stored)?;
                for (key, value) in writes {
                    tx.set(&key, &value)?;
                }
                Ok::<_, Error>((from, last))
            })
            .await?;
        self.stop_actor(id).await;
        tracing::info!(worker = %id, from = skipped.0, to = skipped.1, "worker reverted");
        Ok(skipped)
    }

    /// The index to revert to so that the last `count` invocations are skipped.
    pub(crate) async fn revert_point_before_last(
        &self,
        id: &WorkerId,
        count: u32,
    ) -> Result<OplogIndex> {
        let all = archive::history(
            &self.inner.committer,
            &self.inner.store,
            self.inner.registry.blobs(),
            id,
            1,
            usize::MAX,
        )
        .await?;
        if all.is_empty() {
            return Err(Error::WorkerNotFound(id.to_string()));
        }
        let visible = crate::worker::apply_jumps(all);
        let invoked: Vec<OplogIndex> = visible
            .iter()
            .filter(|(_, e)| matches!(e, OplogEntry::ExportedFunctionInvoked { .. }))
            .map(|(i, _)| *i)
            .collect();
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count == 0 || count > invoked.len() {
            return Err(Error::InvalidRevert(format!(
                "the worker's history holds {} invocation(s); asked to revert {count}",
                invoked.len()
            )));
        }
        Ok(invoked[invoked.len() - count].saturating_sub(1))
    }

    /// Makes `target` a new worker whose history is `source`'s up to entry `at` (one that ends
    /// an invocation; `None`: the last such), then its own: the same component version,
    /// environment and arguments, its own incarnation (so its effects from then on have keys
    /// of their own), counted against `workers_max`. Written in one transaction; a history too
    /// large for one is refused. Returns the fork's record and the entry it forked at.
    pub(crate) async fn fork_here(
        &self,
        target: &WorkerId,
        source: &WorkerId,
        at: Option<OplogIndex>,
        workers_max: u64,
    ) -> Result<(WorkerRecord, OplogIndex)> {
        /// The most bytes of history one fork copies (below the store's transaction limit).
        const FORK_BYTES_MAX: usize = 8_000_000;
        if target.tenant != source.tenant || target.component != source.component {
            return Err(Error::InvalidFork(
                "a worker forks into a worker of the same component".into(),
            ));
        }
        let source_record = self
            .worker_record(source)
            .await?
            .ok_or_else(|| Error::WorkerNotFound(source.to_string()))?;
        if source_record.snapshot_base.is_some() {
            return Err(Error::InvalidFork(
                "the worker recovers from a snapshot (it moved to its version by one, or its archived history expired): its history does not replay whole, so a fork could not be rebuilt".into(),
            ));
        }
        let all = archive::history(
            &self.inner.committer,
            &self.inner.store,
            self.inner.registry.blobs(),
            source,
            1,
            usize::MAX,
        )
        .await?;
        let visible = crate::worker::apply_jumps(all.clone());
        let at = match at {
            Some(at) if revert_point(&visible, at) => at,
            Some(at) => {
                return Err(Error::InvalidFork(format!(
                    "entry {at} does not end an invocation in the worker's history"
                )));
            }
            None => visible
                .iter()
                .map(|(i, _)| *i)
                .filter(|i| revert_point(&visible, *i))
                .max()
                .unwrap_or(1),
        };
        let record = WorkerRecord {
            component_version: source_record.component_version,
            env: source_record.env.clone(),
            args: source_record.args.clone(),
            created_at_ms: crate::now_ms(),
            incarnation: crate::durability::new_incarnation(),
            snapshot_base: None,
        };
        // Response bodies kept in the blob store are the source's: the fork gets copies of its
        // own, so that it outlives the source.
        let mut copied = all;
        copied.retain(|(i, _)| *i <= at);
        let (from_prefix, to_prefix) = (
            crate::http::bodies_prefix(source),
            crate::http::bodies_prefix(target),
        );
        let mut keys = Vec::new();
        for (_, entry) in copied.iter_mut() {
            if let OplogEntry::ImportedFunctionInvoked { response, .. } = entry {
                crate::http::for_each_body_blob(response, &mut |key| keys.push(key.clone()));
            }
        }
        let blobs = self.inner.registry.blobs();
        let mut moved = std::collections::HashMap::new();
        for key in keys {
            if moved.contains_key(&key) || !key.starts_with(&from_prefix) {
                continue;
            }
            let bytes = blobs
                .get(&key)
                .await
                .map_err(|e| Error::InvalidFork(format!("copy a response body: {e}")))?;
            let copy = blobs
                .put_bytes(&to_prefix, &bytes)
                .await
                .map_err(|e| Error::InvalidFork(format!("copy a response body: {e}")))?;
            moved.insert(key, copy.key);
        }
        for (_, entry) in copied.iter_mut() {
            if let OplogEntry::ImportedFunctionInvoked { response, .. } = entry {
                crate::http::for_each_body_blob(response, &mut |key| {
                    if let Some(new) = moved.get(key.as_str()) {
                        key.clone_from(new);
                    }
                });
            }
        }
        let mut writes = Vec::new();
        for (index, entry) in copied {
            let entry = match entry {
                OplogEntry::Create {
                    component_version,
                    env,
                    args,
                    ..
                } => OplogEntry::Create {
                    timestamp_ms: record.created_at_ms,
                    component_version,
                    env,
                    args,
                    incarnation: record.incarnation.clone(),
                },
                other => other,
            };
            writes.extend(records::entry_writes(target, index, entry.encode()));
        }
        let bytes: usize = writes.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > FORK_BYTES_MAX {
            return Err(Error::InvalidFork(format!(
                "its history up to entry {at} is {bytes} bytes; a fork copies at most {FORK_BYTES_MAX}"
            )));
        }
        let (target_c, record_c, fencing) =
            (target.clone(), record.clone(), self.inner.fencing.clone());
        self.inner
            .store
            .transact(move |tx| {
                if tx.get(&records::worker_key(&target_c))?.is_some() {
                    return Err(Error::WorkerExists(target_c.to_string()));
                }
                fencing.check(tx, &target_c, &mut std::collections::HashMap::new())?;
                records::count_new_worker(tx, &target_c, workers_max)?;
                // Whatever an earlier worker of this name left is gone with it; be sure.
                for prefix in [
                    records::oplog_prefix(&target_c),
                    records::chunks_prefix(&target_c),
                ] {
                    let (begin, end) = invicta_store::keys::prefix_range(&prefix);
                    tx.clear_range(&begin, &end)?;
                }
                let (stored_key, stored) = records::stored_add(&target_c, &writes);
                tx.atomic_add(&stored_key, stored)?;
                for (key, value) in &writes {
                    tx.set(key, value)?;
                }
                tx.set(
                    &records::worker_key(&target_c),
                    &records::encode_json(&record_c),
                )?;
                Ok(())
            })
            .await?;
        tracing::info!(worker = %target, from = %source, at, "worker forked");
        Ok((record, at))
    }

    /// What moving the worker to `version` by `method` would do, checked without moving it.
    ///
    /// By replay, every function its history was invoked with must be exported alike there
    /// (otherwise `incompatible_version`, naming the first that is not); a move then replays
    /// the whole history on the new version and keeps the worker where it was if any result
    /// differs. By snapshot, both versions must export `invicta:host/snapshot`: the old one
    /// saves the worker's state and the new one loads it. `auto` is replay when the history
    /// passes that check, else snapshot when both versions can.
    pub async fn plan_version(
        &self,
        id: &WorkerId,
        version: u64,
        method: UpdateMethod,
    ) -> Result<VersionPlan> {
        let record = self
            .worker_record(id)
            .await?
            .ok_or_else(|| Error::WorkerNotFound(id.to_string()))?;
        let mut plan = VersionPlan {
            record: record.clone(),
            version,
            functions: Vec::new(),
            method: UpdateMethod::Replay,
            reason: None,
        };
        if record.component_version == version {
            return Ok(plan);
        }
        let registry = &self.inner.registry;
        let target = registry
            .compiled(&id.tenant, &id.component, version)
            .await?;
        let current = registry
            .compiled(&id.tenant, &id.component, record.component_version)
            .await?;
        let snapshots =
            crate::snapshots::exported_by(&current) && crate::snapshots::exported_by(&target);
        let replay = if let Some(base) = record.snapshot_base {
            Err(format!(
                "the worker recovers from its snapshot at entry {base} on (it moved to version {} by a snapshot, or its archived history expired): its history before it does not replay",
                record.component_version
            ))
        } else if method == UpdateMethod::Snapshot {
            Err("a snapshot-based move was asked for".to_string())
        } else {
            self.replay_check(id, &current, &target, version).await?
        };
        match replay {
            Ok(functions) => plan.functions = functions,
            Err(reason) if method != UpdateMethod::Replay && snapshots => {
                plan.method = UpdateMethod::Snapshot;
                plan.reason = Some(reason);
            }
            Err(reason) if method == UpdateMethod::Replay || snapshots => {
                return Err(Error::IncompatibleVersion(reason));
            }
            Err(reason) => {
                return Err(Error::IncompatibleVersion(format!(
                    "{reason}; a move by snapshot needs versions {} and {version} both to export invicta:host/snapshot",
                    record.component_version
                )));
            }
        }
        Ok(plan)
    }

    /// The functions the worker's history was invoked with, if each is exported alike by
    /// `target`; else why not.
    async fn replay_check(
        &self,
        id: &WorkerId,
        current: &invicta_component_registry::Compiled,
        target: &invicta_component_registry::Compiled,
        version: u64,
    ) -> Result<std::result::Result<Vec<String>, String>> {
        let entries = archive::history(
            &self.inner.committer,
            &self.inner.store,
            self.inner.registry.blobs(),
            id,
            1,
            usize::MAX,
        )
        .await?;
        let mut functions = std::collections::BTreeSet::new();
        for (_, entry) in crate::worker::apply_jumps(entries) {
            if let OplogEntry::ExportedFunctionInvoked { function, .. } = entry {
                if function == crate::worker::DROP_FUNCTION {
                    continue;
                }
                let before = current.function(&function).map(|f| f.signature());
                let after = target.function(&function).map(|f| f.signature());
                if after.is_none() || before != after {
                    return Ok(Err(format!(
                        "the worker was invoked with `{function}`, which version {version} does not export with the same signature"
                    )));
                }
                functions.insert(function);
            }
        }
        Ok(Ok(functions.into_iter().collect()))
    }

    /// Moves the worker to `version` by a snapshot: its old version saves its state now, the
    /// worker record names the new version and that snapshot as where its recovery starts
    /// (and the snapshot as one of the new version's), and the new version loads it. If the
    /// new version cannot, everything is put back and the worker stays where it was.
    async fn move_by_snapshot(
        &self,
        id: &WorkerId,
        record: &WorkerRecord,
        version: u64,
    ) -> Result<WorkerRecord> {
        self.ask(id, |_| (), Command::Snapshot).await?;
        self.stop_actor(id).await;
        self.inner.committer.evict(id).await?;
        let (id_c, from) = (id.clone(), record.component_version);
        let undo = self
            .inner
            .store
            .transact(move |tx| {
                let key = records::worker_key(&id_c);
                let bytes = tx
                    .get(&key)?
                    .ok_or_else(|| Error::WorkerNotFound(id_c.to_string()))?;
                let before: WorkerRecord = records::decode_json("worker record", &bytes)?;
                let snapshot_key = crate::snapshots::record_key(&id_c);
                let snapshots_before = tx.get(&snapshot_key)?;
                let mut snapshots: crate::snapshots::SnapshotRecord = snapshots_before
                    .as_deref()
                    .map(|b| records::decode_json("snapshot record", b))
                    .transpose()?
                    .unwrap_or_default();
                let latest = snapshots
                    .snapshots
                    .first()
                    .filter(|s| s.component_version == from)
                    .cloned()
                    .ok_or_else(|| {
                        Error::Engine("the snapshot just taken is not recorded".into())
                    })?;
                let base = latest.index;
                // An invocation that ran between the snapshot and the actor's stop would be the
                // old version's history on the new version: none may have.
                let after = records::read_entries(tx, &id_c, base + 1, usize::MAX)?;
                if after
                    .iter()
                    .any(|(_, e)| matches!(e, OplogEntry::ExportedFunctionInvoked { .. }))
                {
                    return Err(Error::IncompatibleVersion(
                        "the worker ran an invocation after its snapshot was taken; try the move again"
                            .into(),
                    ));
                }
                snapshots.snapshots.insert(
                    0,
                    crate::snapshots::Snapshot {
                        component_version: version,
                        ..latest
                    },
                );
                let mut after = before.clone();
                after.component_version = version;
                after.snapshot_base = Some(base);
                tx.set(&key, &records::encode_json(&after))?;
                tx.set(&snapshot_key, &records::encode_json(&snapshots))?;
                Ok::<_, Error>((before, snapshots_before, after))
            })
            .await?;
        let (before, snapshots_before, after) = undo;
        match self.resume_here(id).await {
            Ok(()) => {
                tracing::info!(worker = %id, from, to = version, base = ?after.snapshot_base, "worker moved by a snapshot");
                Ok(after)
            }
            Err(e) => {
                self.stop_actor(id).await;
                let id_c = id.clone();
                self.inner
                    .store
                    .transact(move |tx| {
                        tx.set(&records::worker_key(&id_c), &records::encode_json(&before))?;
                        let snapshot_key = crate::snapshots::record_key(&id_c);
                        match &snapshots_before {
                            Some(bytes) => tx.set(&snapshot_key, bytes)?,
                            None => tx.clear(&snapshot_key)?,
                        }
                        Ok::<_, Error>(())
                    })
                    .await?;
                Err(Error::IncompatibleVersion(format!(
                    "version {version} could not take over the snapshot of version {from}: {e}"
                )))
            }
        }
    }

    /// Stops the worker's actor, if it runs, once its commits are durable.
    pub(crate) async fn stop_actor(&self, id: &WorkerId) {
        let handle = self.lock_workers().get(id).cloned();
        if let Some(handle) = handle {
            let (reply, done) = oneshot::channel();
            if handle.send(Command::Stop(reply)).await.is_ok() {
                let _ = done.await;
            }
            self.lock_workers().remove(id);
        }
    }

    pub(crate) async fn write_version(&self, id: &WorkerId, version: u64) -> Result<()> {
        let id_c = id.clone();
        self.inner
            .store
            .transact(move |tx| {
                let key = records::worker_key(&id_c);
                let bytes = tx
                    .get(&key)?
                    .ok_or_else(|| Error::WorkerNotFound(id_c.to_string()))?;
                let mut record: WorkerRecord = records::decode_json("worker record", &bytes)?;
                record.component_version = version;
                tx.set(&key, &records::encode_json(&record))?;
                Ok(())
            })
            .await
    }
}

/// Whether the history, as replay sees it, is between invocations after entry `to`.
fn revert_point(visible: &[(OplogIndex, OplogEntry)], to: OplogIndex) -> bool {
    let mut inside = false;
    for (index, entry) in visible {
        match entry {
            OplogEntry::ExportedFunctionInvoked { .. } => inside = true,
            OplogEntry::ExportedFunctionCompleted { .. } | OplogEntry::Error { .. } => {
                inside = false;
            }
            _ => {}
        }
        if *index == to {
            return !inside;
        }
    }
    false
}

/// What moving a worker to a version would do ([`Executor::plan_version`]).
#[derive(Debug, Clone)]
pub struct VersionPlan {
    /// The worker as it is.
    pub record: WorkerRecord,
    /// The version it would move to.
    pub version: u64,
    /// The functions its history was invoked with, each exported alike there: the trial
    /// replay of a move calls them again.
    pub functions: Vec<String>,
    /// How it would move: `Replay` or `Snapshot`.
    pub method: UpdateMethod,
    /// Why not by replay, for a move by snapshot.
    pub reason: Option<String>,
}

/// How a worker moves to another version of its component.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum UpdateMethod {
    /// By replay if its history replays there, else by a snapshot if both versions can.
    #[default]
    Auto,
    /// Only by replaying its history on the new version.
    Replay,
    /// Only by a snapshot: the old version saves the state, the new one loads it.
    Snapshot,
}

impl UpdateMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateMethod::Auto => "auto",
            UpdateMethod::Replay => "replay",
            UpdateMethod::Snapshot => "snapshot",
        }
    }

    pub fn parse(text: &str) -> Option<UpdateMethod> {
        match text {
            "" | "auto" => Some(UpdateMethod::Auto),
            "replay" => Some(UpdateMethod::Replay),
            "snapshot" => Some(UpdateMethod::Snapshot),
            _ => None,
        }
    }
}
