//! The durable queue: invocations accepted by `enqueue` (or fired by a schedule) are recorded as
//! pending before they are acknowledged, run in the background in the order they were accepted,
//! retried while the worker is busy or moving, and run again by recovery after a crash.
//!
//! **Invariant:** an accepted invocation runs exactly once: its pending record goes in the same
//! transaction as its outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use invicta_model::oplog::FailureKind;
use invicta_model::{TenantId, WorkerId};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::records::{self, InvocationRecord, PendingRecord, StoredOutcome};
use crate::types::{Completed, InvocationState, Outcome};
use crate::worker::{Invocation, WorkerHandle};
use crate::{Executor, now_ms};

/// A background invocation, counted against its tenant's `concurrent_invocations` on this
/// executor from its acceptance until it is settled (dropped).
pub(crate) struct Background {
    counts: Arc<Mutex<HashMap<TenantId, u64>>>,
    tenant: TenantId,
}

impl Drop for Background {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

impl Executor {
    /// Counts a background invocation of `tenant`; refused when `limit` of them are counted
    /// already (`None`: counted whatever the number, for work accepted before).
    pub(crate) fn count_background(
        &self,
        tenant: &TenantId,
        limit: Option<u64>,
    ) -> Result<Background> {
        let mut counts = self
            .inner
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let used = counts.get(tenant).copied().unwrap_or(0);
        if let Some(limit) = limit
            && used >= limit
        {
            return Err(Error::QuotaExceeded {
                quota: "concurrent_invocations",
                limit,
                used,
            });
        }
        counts.insert(tenant.clone(), used.saturating_add(1));
        Ok(Background {
            counts: self.inner.background.clone(),
            tenant: tenant.clone(),
        })
    }

    /// Accepts an invocation durably and runs it in the background; returns its idempotency key
    /// (made if none was given) and whether it was new (a key already accepted or completed is
    /// not accepted twice). Accepted invocations survive a crash: recovery runs them.
    pub(crate) async fn enqueue_here(
        &self,
        id: &WorkerId,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        schedule_at_ms: Option<u64>,
        limits: &Limits,
    ) -> Result<(String, bool)> {
        let (mut invocation, running) = self
            .prepare(id, function, params, idempotency_key, limits)
            .await?;
        let due_at_ms = schedule_at_ms.filter(|at| *at > now_ms());
        // Its outcome is asked for later, by key: it must be recorded.
        invocation.key_is_new = false;
        invocation.enqueued = true;
        // Counted before it is accepted, so that a tenant's background work stays within its
        // plan however fast it enqueues (released at once if the key was accepted before).
        let counted = self.count_background(&id.tenant, Some(limits.concurrent_invocations));
        // At the limit, a key accepted before is still answered as such; only new work waits.
        let refused = counted.as_ref().err().map(Error::duplicate);
        let record = PendingRecord {
            function: invocation.function.clone(),
            params: params.to_vec(),
            fuel: invocation.fuel,
            memory_bytes: invocation.memory_bytes,
            egress_hosts: invocation.egress_hosts.clone(),
            enqueued_at_ms: now_ms(),
            due_at_ms,
            retry: limits.retry.clone(),
            attempts: 0,
            last_error: None,
        };
        invocation.retry = limits.retry.clone();
        invocation.pending = Some(Arc::new(record.clone()));
        let (id_c, key) = (id.clone(), invocation.idempotency_key.clone());
        let (fingerprint, function_c) =
            (invocation.fingerprint.clone(), invocation.function.clone());
        let params_c = params.to_vec();
        let fencing = self.inner.fencing.clone();
        let accepted = self
            .inner
            .store
            .transact(move |tx| {
                // Accepted only while this executor holds the worker's shard: a pending record
                // written after a takeover would wait for the next one.
                fencing.check(tx, &id_c, &mut std::collections::HashMap::new())?;
                // A key seen before is accepted again only for the same request.
                if let Some(bytes) = records::read_value(tx, &records::invocation_key(&id_c, &key))?
                {
                    let done: InvocationRecord = records::decode_json("invocation record", &bytes)?;
                    if !done.fingerprint.is_empty() && done.fingerprint != fingerprint {
                        return Err(Error::IdempotencyKeyReused(key.clone()));
                    }
                    return Ok(false);
                }
                if let Some(bytes) = records::read_value(tx, &records::pending_key(&id_c, &key))? {
                    let waiting: PendingRecord =
                        records::decode_json("pending invocation", &bytes)?;
                    if waiting.function != function_c || waiting.params != params_c {
                        return Err(Error::IdempotencyKeyReused(key.clone()));
                    }
                    return Ok(false);
                }
                if let Some(refused) = &refused {
                    return Err(refused.duplicate());
                }
                records::set_value(
                    tx,
                    &records::pending_key(&id_c, &key),
                    records::encode_json(&record),
                )?;
                Ok::<_, Error>(true)
            })
            .await?;
        let key = invocation.idempotency_key.clone();
        if accepted {
            self.dispatch(id, invocation, due_at_ms, running, counted?)
                .await;
        }
        Ok((key, accepted))
    }

    /// Runs an accepted invocation: now, delivered before returning so that one client's
    /// enqueues keep their order, or at `due_at_ms`.
    pub(crate) async fn dispatch(
        &self,
        id: &WorkerId,
        invocation: Invocation,
        due_at_ms: Option<u64>,
        running: Option<WorkerHandle>,
        counted: Background,
    ) {
        let invocation = Arc::new(invocation);
        match due_at_ms.map(|at| at.saturating_sub(now_ms())) {
            Some(wait) if wait > 0 => {
                let (executor, id) = (self.clone(), id.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                    let first = executor.deliver(&id, &invocation, None).await;
                    executor.settle(id, invocation, first, counted).await;
                });
            }
            _ => {
                let first = self.deliver(id, &invocation, running).await;
                tokio::spawn(self.clone().settle(id.clone(), invocation, first, counted));
            }
        }
    }

    /// Waits for an accepted invocation's outcome, delivering it again while the worker is
    /// busy or restarting; an outcome the worker could not record is recorded here.
    pub(crate) async fn settle(
        self,
        id: WorkerId,
        invocation: Arc<Invocation>,
        first: Result<oneshot::Receiver<Outcome>>,
        // Counted against the tenant until this ends.
        _counted: Background,
    ) {
        let (mut invocation, mut first) = (invocation, first);
        let outcome = loop {
            let mut outcome = match first {
                Ok(rx) => rx.await.unwrap_or(Err(Error::ShuttingDown)),
                Err(e) => Err(e),
            };
            for attempt in 1..=50_u64 {
                match &outcome {
                    Err(Error::Retry | Error::QueueFull(_) | Error::PoolExhausted(_)) => {
                        tokio::time::sleep(std::time::Duration::from_millis(20 * attempt.min(25)))
                            .await;
                        outcome = self.run(&id, &invocation, None).await;
                    }
                    _ => break,
                }
            }
            // Its policy runs it again (the worker recorded the failed run and the next one's
            // time in its pending record, which a restart meanwhile picks up).
            let Err(Error::RetryLater { at_ms, runs }) = outcome else {
                break outcome;
            };
            tracing::info!(worker = %id, key = %invocation.idempotency_key, runs, at_ms, "a failed run runs again");
            tokio::time::sleep(std::time::Duration::from_millis(
                at_ms.saturating_sub(now_ms()),
            ))
            .await;
            let mut next = (*invocation).clone();
            next.runs = runs;
            if let Some(pending) = &invocation.pending {
                let mut pending = (**pending).clone();
                pending.attempts = runs;
                pending.due_at_ms = Some(at_ms);
                next.pending = Some(Arc::new(pending));
            }
            invocation = Arc::new(next);
            first = self.deliver(&id, &invocation, None).await;
        };
        match outcome {
            Ok(completed) => self.count_fuel(&id.tenant, completed.fuel_consumed),
            // The worker recorded it.
            Err(Error::InvocationFailed { .. }) => {}
            // The next start runs it; or the worker's new owner does, which recovered it.
            Err(Error::ShuttingDown | Error::Fenced { .. } | Error::NotOwner { .. }) => {}
            Err(e) => {
                let key = invocation.idempotency_key.clone();
                tracing::warn!(worker = %id, %key, error = %e, "an enqueued invocation could not run");
                let (kind, message) = match &e {
                    Error::WorkerFailed(_) => ("worker_failed", e.to_string()),
                    Error::WorkerNotFound(_) => ("worker_not_found", e.to_string()),
                    _ => ("not_run", e.to_string()),
                };
                let record = records::encode_json(&InvocationRecord {
                    fingerprint: invocation.fingerprint.clone(),
                    outcome: StoredOutcome::Failed {
                        kind: FailureKind::Trap,
                        message: format!("{kind}: {message}"),
                    },
                    oplog_index: 0,
                });
                let fencing = self.inner.fencing.clone();
                let result = self
                    .inner
                    .store
                    .transact(move |tx| {
                        // Only the worker's owner settles its pending invocations.
                        fencing.check(tx, &id, &mut std::collections::HashMap::new())?;
                        if tx.get(&records::pending_key(&id, &key))?.is_none() {
                            return Ok(());
                        }
                        records::clear_value(tx, &records::pending_key(&id, &key))?;
                        records::set_value(
                            tx,
                            &records::invocation_key(&id, &key),
                            record.clone(),
                        )?;
                        Ok::<_, Error>(())
                    })
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "record an enqueued invocation's failure");
                }
            }
        }
    }

    /// Runs the invocations accepted by `enqueue` and not completed before the last stop, in
    /// the order they were accepted.
    pub(crate) async fn recover_pending(&self) -> Result<()> {
        let prefix = records::pending_prefix_all();
        let rows = self
            .inner
            .store
            .read(move |tx| {
                let mut rows = Vec::new();
                for row in tx.get_prefix(&prefix, Default::default())? {
                    // A large record's chunks are read with its header.
                    if records::is_pending_chunk(&row.key) {
                        continue;
                    }
                    let value = records::read_value(tx, &row.key)?.unwrap_or_default();
                    rows.push((row.key, value));
                }
                Ok::<_, Error>(rows)
            })
            .await?;
        let mut pending = Vec::new();
        for (row_key, row_value) in rows {
            let (Some((id, key)), Ok(record)) = (
                records::parse_pending_key(&row_key),
                records::decode_json::<PendingRecord>("pending invocation", &row_value),
            ) else {
                tracing::warn!("skipping an unreadable pending invocation");
                continue;
            };
            if self.inner.fencing.owns(&id) {
                pending.push((record.enqueued_at_ms, id, key, record));
            }
        }
        pending.sort_by_key(|p| p.0);
        for (_, id, key, record) in pending {
            let limits = Limits {
                fuel_per_invocation: record.fuel,
                fuel_per_month: u64::MAX,
                memory_per_worker_bytes: record.memory_bytes,
                workers_max: u64::MAX,
                egress_hosts: record.egress_hosts.clone(),
                concurrent_invocations: u64::MAX,
                retry: None,
                archive_retention_days: None,
                files_per_worker_bytes: None,
            };
            let prepared = self
                .prepare(&id, &record.function, &record.params, Some(key), &limits)
                .await;
            match prepared {
                Ok((mut invocation, running)) => {
                    invocation.key_is_new = false;
                    invocation.enqueued = true;
                    invocation.retry = record.retry.clone();
                    invocation.runs = record.attempts;
                    invocation.pending = Some(Arc::new(record.clone()));
                    let counted = self.count_background(&id.tenant, None)?;
                    self.dispatch(&id, invocation, record.due_at_ms, running, counted)
                        .await;
                }
                Err(e) => {
                    tracing::warn!(worker = %id, error = %e, "a pending invocation no longer fits its worker");
                }
            }
        }
        Ok(())
    }

    /// Up to `limit` of the worker's invocations accepted and not completed yet, in
    /// idempotency-key order after `after` if given.
    pub async fn pending_invocations(
        &self,
        id: &WorkerId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, PendingRecord)>> {
        let (id_c, after) = (id.clone(), after.map(str::to_string));
        self.inner
            .store
            .read(move |tx| {
                let after = after.as_deref().map(|a| records::pending_key(&id_c, a));
                let rows = records::page(tx, &id_c, &records::pending_prefix(&id_c), after, limit)?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let Some((_, key)) = records::parse_pending_key(&row.key) else {
                        continue;
                    };
                    out.push((key, records::decode_json("pending invocation", &row.value)?));
                }
                Ok(out)
            })
            .await
    }

    /// Where an invocation made with `idempotency_key` stands.
    pub async fn invocation(
        &self,
        id: &WorkerId,
        idempotency_key: &str,
    ) -> Result<InvocationState> {
        let (id_c, key) = (id.clone(), idempotency_key.to_string());
        let (record, pending, worker) = self
            .inner
            .store
            .read(move |tx| {
                Ok::<_, Error>((
                    records::read_value(tx, &records::invocation_key(&id_c, &key))?,
                    records::read_value(tx, &records::pending_key(&id_c, &key))?,
                    tx.get(&records::worker_key(&id_c))?,
                ))
            })
            .await?;
        if worker.is_none() {
            return Err(Error::WorkerNotFound(id.to_string()));
        }
        if let Some(bytes) = record {
            let record: InvocationRecord = records::decode_json("invocation record", &bytes)?;
            return Ok(match record.outcome {
                StoredOutcome::Completed {
                    result,
                    fuel_consumed,
                } => InvocationState::Completed(Completed {
                    result,
                    fuel_consumed,
                }),
                StoredOutcome::Failed { kind, message } => InvocationState::Failed {
                    kind: kind.code().to_string(),
                    message,
                },
            });
        }
        match pending {
            Some(bytes) => {
                let record: PendingRecord = records::decode_json("pending invocation", &bytes)?;
                Ok(InvocationState::Pending {
                    enqueued_at_ms: record.enqueued_at_ms,
                    due_at_ms: record.due_at_ms,
                    attempts: record.attempts,
                    last_error: record.last_error,
                })
            }
            None => Err(Error::InvocationNotFound(idempotency_key.to_string())),
        }
    }
}
