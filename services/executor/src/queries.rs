//! Queries: what the store and the running actors say of workers (status, oplog, logs, lists)
//! and the executor's metrics. Reads only.

use invicta_model::oplog::{OplogEntry, OplogIndex};
use invicta_model::{ComponentName, TenantId, WorkerId, usage};

use crate::Executor;
use crate::error::{Error, Result};
use crate::records::{self, WorkerRecord};
use crate::types::{LogLine, WorkerFilter, WorkerStatus, WorkerSummary};

impl Executor {
    /// The lines the worker wrote to stdout and stderr, among up to `scan` oplog entries from
    /// index `from`; with the index to continue from.
    pub async fn logs(
        &self,
        id: &WorkerId,
        from: OplogIndex,
        scan: usize,
    ) -> Result<(Vec<LogLine>, OplogIndex)> {
        let entries = self.oplog(id, from, scan).await?;
        let next = entries.last().map_or(from.max(1), |(i, _)| i + 1);
        let lines = entries
            .into_iter()
            .filter_map(|(index, entry)| match entry {
                OplogEntry::Log { stream, bytes } => Some(LogLine {
                    index,
                    stream: stream.as_str(),
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                }),
                _ => None,
            })
            .collect();
        Ok((lines, next))
    }

    /// Whether the worker exists: it has an actor here, or its record is in the store. An actor
    /// answers for its worker without a store read (a read is a hop to the blocking pool and
    /// back, on every call); a worker deleted meanwhile answers `worker_not_found` from its
    /// actor all the same.
    pub async fn worker_exists(&self, id: &WorkerId) -> Result<bool> {
        if self.lock_workers().contains_key(id) {
            return Ok(true);
        }
        Ok(self.worker_record(id).await?.is_some())
    }

    /// What this executor knows of it: the store's record and oplog, and its actor if it runs
    /// here (suspended otherwise).
    pub(crate) async fn status_here(&self, id: &WorkerId) -> Result<WorkerStatus> {
        let record = self
            .worker_record(id)
            .await?
            .ok_or_else(|| Error::WorkerNotFound(id.to_string()))?;
        self.inner.committer.evict(id).await?;
        let id_c = id.clone();
        let (oplog_length, archived_entries) = self
            .inner
            .store
            .read(move |tx| {
                let archived = crate::archive::segments(tx, &id_c)?
                    .iter()
                    .map(|s| s.last + 1 - s.first)
                    .sum::<u64>();
                Ok::<_, Error>((records::last_index(tx, &id_c)?, archived))
            })
            .await?;
        let handle = self.lock_workers().get(id).cloned();
        let (status, pending, error) = match handle {
            Some(h) => {
                let (status, error) = h.state();
                (status, h.pending(), error)
            }
            None => ("suspended".to_string(), 0, None),
        };
        Ok(WorkerStatus {
            status,
            component_version: record.component_version,
            oplog_length,
            pending_invocations: pending,
            archived_entries,
            error,
        })
    }

    /// Up to `count` oplog entries from index `from` (1 is the first).
    pub async fn oplog(
        &self,
        id: &WorkerId,
        from: OplogIndex,
        count: usize,
    ) -> Result<Vec<(OplogIndex, OplogEntry)>> {
        if self.worker_record(id).await?.is_none() {
            return Err(Error::WorkerNotFound(id.to_string()));
        }
        crate::archive::history(
            &self.inner.committer,
            &self.inner.store,
            self.inner.registry.blobs(),
            id,
            from,
            count,
        )
        .await
    }

    /// The workers of a component in name order, filtered; with the name to continue after
    /// when there may be more.
    pub async fn list_workers(
        &self,
        tenant: &TenantId,
        component: &ComponentName,
        filter: &WorkerFilter,
    ) -> Result<(Vec<WorkerSummary>, Option<String>)> {
        const PAGE: usize = 1_000;
        let limit = filter.limit.max(1);
        let prefix = records::workers_prefix(tenant.as_str(), component.as_str());
        let (prefix_begin, end) = invicta_store::keys::prefix_range(&prefix);
        let mut begin = match (&filter.after, &filter.prefix) {
            (Some(after), _) => {
                let mut key = invicta_store::keys::pack(&(
                    "worker",
                    tenant.as_str(),
                    component.as_str(),
                    after.as_str(),
                ));
                key.push(0);
                key
            }
            (None, Some(p)) => {
                // Names sort after their prefix: start at the packed prefix without its end.
                let mut key =
                    invicta_store::keys::pack(&("worker", tenant.as_str(), component.as_str()));
                key.push(0x02);
                key.extend_from_slice(p.as_bytes());
                key
            }
            (None, None) => prefix_begin,
        };
        let mut out = Vec::new();
        loop {
            let (b, e) = (begin.clone(), end.clone());
            let rows = self
                .inner
                .store
                .read(move |tx| tx.get_range(&b, &e, invicta_store::RangeOptions::limit(PAGE)))
                .await?;
            let full_page = rows.len() == PAGE;
            for row in &rows {
                let Ok((_, _, _, name)) =
                    invicta_store::keys::unpack::<(String, String, String, String)>(&row.key)
                else {
                    continue;
                };
                if let Some(p) = &filter.prefix {
                    if name.as_str() > p.as_str() && !name.starts_with(p.as_str()) {
                        return Ok((out, None));
                    }
                    if !name.starts_with(p.as_str()) {
                        continue;
                    }
                }
                let record: WorkerRecord = records::decode_json("worker record", &row.value)?;
                let status = match self.lock_workers().get(&WorkerId {
                    tenant: tenant.clone(),
                    component: component.clone(),
                    worker: invicta_model::WorkerName::new(name.clone())
                        .map_err(|e| Error::Corrupt(e.to_string()))?,
                }) {
                    Some(h) => h.state().0,
                    None => "suspended".to_string(),
                };
                if filter.status.as_ref().is_some_and(|s| *s != status) {
                    continue;
                }
                if out.len() == limit {
                    let next = out.last().map(|w: &WorkerSummary| w.name.clone());
                    return Ok((out, next));
                }
                out.push(WorkerSummary {
                    name,
                    status,
                    component_version: record.component_version,
                    created_at_ms: record.created_at_ms,
                });
            }
            match rows.last() {
                Some(last) if full_page => {
                    begin = last.key.clone();
                    begin.push(0);
                }
                _ => return Ok((out, None)),
            }
        }
    }

    /// The executor's metrics in the OpenMetrics text format.
    pub async fn metrics(&self) -> String {
        let active = self
            .lock_workers()
            .values()
            .filter(|h| h.state().0 == "active")
            .count();
        let active = i64::try_from(active).unwrap_or(i64::MAX);
        // Every tenant's worker count, summed: bounded by the number of tenants.
        let all = self
            .inner
            .store
            .read(move |tx| {
                let rows = tx.get_prefix(&usage::counts_prefix(), Default::default())?;
                let mut workers = 0_i64;
                for row in rows {
                    if usage::count_kind(&row.key).as_deref() == Some(usage::WORKERS) {
                        workers = workers.saturating_add(invicta_store::decode_counter(&row.value));
                    }
                }
                Ok::<_, Error>(workers)
            })
            .await;
        let metrics = &self.inner.metrics;
        metrics.active_workers.set(active);
        match all {
            Ok(all) => {
                metrics
                    .suspended_workers
                    .set(all.saturating_sub(active).max(0));
            }
            Err(e) => tracing::warn!(error = %e, "count workers for metrics"),
        }
        metrics.encode()
    }
}
