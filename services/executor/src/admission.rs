//! Admission: an invocation checked against the worker's component (its export, its parameters'
//! types), the caller's idempotency key and the tenant's limits, then handed to the worker's
//! actor, started when it is not running; workers created on first use under the worker quota.
//!
//! **Invariant:** a worker is resolved once per call: the handle found when the invocation is
//! prepared is the one it is delivered to, unless that actor stopped meanwhile.

use std::collections::HashMap;
use std::sync::Arc;

use invicta_component_registry::Compiled;
use invicta_engine::values::json_to_value;
use invicta_model::oplog::OplogEntry;
use invicta_model::{TenantId, WorkerId, usage};
use tokio::sync::oneshot;

use crate::calls::ExecutorWorkers;
use crate::durability::new_incarnation;
use crate::error::{Error, Result};
use crate::host::WorkerCtx;
use crate::limits::Limits;
use crate::records::{self, WorkerRecord};
use crate::types::{Completed, Outcome};
use crate::worker::{self, Command, Invocation, WorkerHandle};
use crate::{Executor, FUEL_USAGE_STALE_MS, IDEMPOTENCY_KEY_BYTES_MAX, now_ms};

impl Executor {
    /// Creates the worker unless it exists; returns its record and whether it was created.
    pub(crate) async fn create(
        &self,
        id: &WorkerId,
        env: Vec<(String, String)>,
        args: Vec<String>,
        version: Option<u64>,
        workers_max: u64,
    ) -> Result<(WorkerRecord, bool)> {
        let component = self
            .inner
            .registry
            .get(&id.tenant, &id.component, version)
            .await?;
        let record = WorkerRecord {
            component_version: component.version,
            env,
            args,
            created_at_ms: now_ms(),
            incarnation: new_incarnation(),
            snapshot_base: None,
        };
        let create = OplogEntry::Create {
            timestamp_ms: record.created_at_ms,
            component_version: record.component_version,
            env: record.env.clone(),
            args: record.args.clone(),
            incarnation: record.incarnation.clone(),
        };
        let (id_c, record_c) = (id.clone(), record.clone());
        let fencing = self.inner.fencing.clone();
        self.inner
            .store
            .transact(move |tx| {
                if let Some(existing) = tx.get(&records::worker_key(&id_c))? {
                    return Ok((records::decode_json("worker record", &existing)?, false));
                }
                // Its first oplog entry is fenced like every other.
                fencing.check(tx, &id_c, &mut HashMap::new())?;
                records::count_new_worker(tx, &id_c, workers_max)?;
                tx.set(
                    &records::worker_key(&id_c),
                    &records::encode_json(&record_c),
                )?;
                let writes = records::entry_writes(&id_c, 1, create.encode());
                let (stored_key, stored) = records::stored_add(&id_c, &writes);
                tx.atomic_add(&stored_key, stored)?;
                for (key, value) in writes {
                    tx.set(&key, &value)?;
                }
                Ok::<_, Error>((record_c.clone(), true))
            })
            .await
    }

    pub(crate) async fn worker_record(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        let key = records::worker_key(id);
        let bytes = self.inner.store.read(move |tx| tx.get(&key)).await?;
        bytes
            .map(|b| records::decode_json("worker record", &b))
            .transpose()
    }

    /// The actor of a worker, started if it is not running.
    pub(crate) async fn handle(&self, id: &WorkerId) -> Result<WorkerHandle> {
        let not_owner = || Error::NotOwner {
            worker: id.to_string(),
            shard: invicta_model::shards::shard_of(id),
        };
        if !self.inner.fencing.holds(id) {
            return Err(not_owner());
        }
        if let Some(handle) = self.lock_workers().get(id) {
            return Ok(handle.clone());
        }
        let record = self
            .worker_record(id)
            .await?
            .ok_or_else(|| Error::WorkerNotFound(id.to_string()))?;
        let compiled = self
            .inner
            .registry
            .compiled(&id.tenant, &id.component, record.component_version)
            .await?;
        let pre = self.instance_pre(id, &compiled)?;
        let mut workers = self.lock_workers();
        if let Some(handle) = workers.get(id) {
            return Ok(handle.clone());
        }
        // The shard may have been given up while the component loaded.
        if !self.inner.fencing.holds(id) {
            return Err(not_owner());
        }
        let handle = worker::spawn(
            worker::Surroundings {
                ctx: self.inner.ctx.clone(),
                workers: self.inner.workers.clone(),
                calls: Arc::new(ExecutorWorkers(Arc::downgrade(&self.inner))),
            },
            id.clone(),
            record,
            compiled,
            pre,
        );
        workers.insert(id.clone(), handle.clone());
        Ok(handle)
    }

    pub(crate) fn instance_pre(
        &self,
        id: &WorkerId,
        compiled: &Compiled,
    ) -> Result<wasmtime::component::InstancePre<WorkerCtx>> {
        let key = (
            id.tenant.clone(),
            id.component.clone(),
            compiled.version.version,
        );
        let mut pres = self
            .inner
            .instance_pres
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Made for this very code (a version moves from the baseline tier to the optimized).
        if let Some(pre) = pres.get(&key)
            && wasmtime::Engine::same(pre.engine(), compiled.component.engine())
        {
            return Ok(pre.clone());
        }
        let pre = self
            .inner
            .linker_for(&compiled.component)
            .instantiate_pre(&compiled.component)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        pres.insert(key, pre.clone());
        Ok(pre)
    }

    pub(crate) fn lock_workers(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<WorkerId, WorkerHandle>> {
        self.inner
            .workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Parameters given as WAVE text, as JSON, by the types of the function the worker's
    /// component version exports (the component's latest for a worker not yet created).
    pub async fn wave_params(
        &self,
        id: &WorkerId,
        function: &str,
        texts: &[String],
    ) -> Result<Vec<serde_json::Value>> {
        let version = match self.worker_record(id).await? {
            Some(record) => record.component_version,
            None => {
                self.inner
                    .registry
                    .get(&id.tenant, &id.component, None)
                    .await?
                    .version
            }
        };
        let compiled = self
            .inner
            .registry
            .compiled(&id.tenant, &id.component, version)
            .await?;
        let export = export_of(&compiled, id, function, texts.len())?;
        texts
            .iter()
            .zip(&export.params)
            .map(|(text, (name, ty))| {
                invicta_engine::values::wave_to_json(name, text, ty).map_err(Error::from)
            })
            .collect()
    }

    /// Checks an invocation against the worker's component and the caller's limits.
    pub(crate) async fn prepare(
        &self,
        id: &WorkerId,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        limits: &Limits,
    ) -> Result<(Invocation, Option<WorkerHandle>)> {
        let key = match idempotency_key {
            Some(key) => {
                if key.is_empty()
                    || key.len() > IDEMPOTENCY_KEY_BYTES_MAX
                    || key.chars().any(char::is_control)
                {
                    return Err(Error::InvalidIdempotencyKey(format!(
                        "it must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes without control characters"
                    )));
                }
                Some(key)
            }
            None => None,
        };
        // A running worker knows its component (and is handed the invocation, resolved once);
        // otherwise read (or create) its record.
        let running = self.lock_workers().get(id).cloned();
        let compiled = match &running {
            Some(handle) => handle.compiled.clone(),
            None => {
                let record = match self.worker_record(id).await? {
                    Some(record) => record,
                    None => {
                        self.create(id, Vec::new(), Vec::new(), None, limits.workers_max)
                            .await?
                            .0
                    }
                };
                self.inner
                    .registry
                    .compiled(&id.tenant, &id.component, record.component_version)
                    .await?
            }
        };
        let mut name = function.to_string();
        let values = if function == crate::worker::DROP_FUNCTION {
            // Dropping a handle: its one parameter is the handle.
            let [handle] = params else {
                return Err(Error::ParamCount {
                    function: function.to_string(),
                    expected: 1,
                    got: params.len(),
                });
            };
            let Some(handle_id) = handle.get("handle").and_then(serde_json::Value::as_str) else {
                return Err(Error::InvalidParam(invicta_engine::values::ValueError {
                    param: "handle".into(),
                    path: String::new(),
                    expected: "a handle, {\"resource\": …, \"handle\": …}".into(),
                    got: handle.to_string().chars().take(100).collect(),
                }));
            };
            vec![invicta_model::Value::Handle {
                resource: handle
                    .get("resource")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .chars()
                    .take(128)
                    .collect(),
                handle: handle_id.chars().take(128).collect(),
            }]
        } else {
            let export = export_of(&compiled, id, function, params.len())?;
            name = export.name.clone();
            // A request for an HTTP handler is its own kind of parameter: the request, whole.
            if crate::incoming::is_handler(export) {
                params
                    .iter()
                    .map(crate::incoming::request_value)
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                params
                    .iter()
                    .zip(&export.params)
                    .map(|(json, (name, ty))| json_to_value(name, json, ty))
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        let (generated, key) = match key {
            Some(key) => (false, key),
            None => (true, generated_key()),
        };
        let fingerprint = if generated {
            String::new()
        } else {
            records::fingerprint(&name, &values)
        };
        let invocation = Invocation {
            function: name,
            params: values,
            idempotency_key: key,
            fingerprint,
            key_is_new: generated,
            enqueued: false,
            egress_hosts: limits.egress_hosts.clone(),
            workers_max: limits.workers_max,
            concurrent_invocations: limits.concurrent_invocations,
            retry: None,
            archive_retention_days: limits.archive_retention_days,
            files_per_worker_bytes: limits.files_per_worker_bytes,
            runs: 0,
            pending: None,
            fuel: limits
                .fuel_per_invocation
                .min(self.inner.config.fuel_per_invocation),
            span: tracing::Span::current(),
            memory_bytes: limits
                .memory_per_worker_bytes
                .min(self.inner.engine.memory_ceiling()),
        };
        if limits.fuel_per_month != u64::MAX {
            let used = self.fuel_this_month(&id.tenant).await?;
            if used >= limits.fuel_per_month {
                return Err(Error::QuotaExceeded {
                    quota: "fuel_per_month",
                    limit: limits.fuel_per_month,
                    used,
                });
            }
        }
        Ok((invocation, running))
    }

    /// Hands the invocation to the worker's actor (`running`, when the caller found it already);
    /// the receiver hears its outcome. The actor may have stopped between the lookup and the
    /// send: then it goes to a new one (bounded: a fresh actor does not stop before taking its
    /// first message). The invocation is shared with the actor, never copied.
    pub(crate) async fn deliver(
        &self,
        id: &WorkerId,
        invocation: &Arc<Invocation>,
        running: Option<WorkerHandle>,
    ) -> Result<oneshot::Receiver<Outcome>> {
        let mut running = running;
        for _ in 0..3 {
            let handle = match running.take() {
                Some(handle) => handle,
                None => self.handle(id).await?,
            };
            let (reply, outcome) = oneshot::channel();
            match handle
                .send(Command::Invoke(invocation.clone(), reply))
                .await
            {
                Ok(()) => return Ok(outcome),
                Err(worker::SendError::Full(n)) => return Err(Error::QueueFull(n)),
                Err(worker::SendError::Stopped) => self.forget_worker(id, &handle),
            }
        }
        Err(Error::ShuttingDown)
    }

    /// Delivers the invocation and waits for its outcome; one that an actor stopping before it
    /// ran answers `Retry` goes to a new actor.
    pub(crate) async fn run(
        &self,
        id: &WorkerId,
        invocation: &Arc<Invocation>,
        running: Option<WorkerHandle>,
    ) -> Result<Completed> {
        let mut running = running;
        for _ in 0..3 {
            let outcome = self.deliver(id, invocation, running.take()).await?;
            match outcome.await.unwrap_or(Err(Error::ShuttingDown)) {
                Err(Error::Retry) => continue,
                other => return other,
            }
        }
        Err(Error::ShuttingDown)
    }

    /// Fuel the tenant's invocations used this month (committed ones), as read at most
    /// [`FUEL_USAGE_STALE_MS`] ago: the monthly quota may be overrun by what runs meanwhile.
    pub async fn fuel_this_month(&self, tenant: &TenantId) -> Result<u64> {
        let month = records::month_of(now_ms());
        {
            let cache = self
                .inner
                .fuel_used
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((m, used, at)) = cache.get(tenant)
                && *m == month
                && at.elapsed().as_millis() < u128::from(FUEL_USAGE_STALE_MS)
            {
                return Ok(*used);
            }
        }
        let key = usage::month_key(tenant.as_str(), usage::FUEL, &month);
        let used = self.inner.store.read(move |tx| tx.get_i64(&key)).await?;
        let used = u64::try_from(used).unwrap_or(0);
        self.inner
            .fuel_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.clone(), (month, used, std::time::Instant::now()));
        Ok(used)
    }

    /// Adds fuel this process's invocations used to the cached monthly figure (the store has
    /// it already: it was committed with the invocation).
    pub(crate) fn count_fuel(&self, tenant: &TenantId, fuel: u64) {
        let mut cache = self
            .inner
            .fuel_used
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((_, used, _)) = cache.get_mut(tenant) {
            *used = used.saturating_add(fuel);
        }
    }
}

/// The exported function `function` of the worker's component, called with `given` parameters.
fn export_of<'a>(
    compiled: &'a Compiled,
    id: &WorkerId,
    function: &str,
    given: usize,
) -> Result<&'a invicta_engine::exports::ExportedFunction> {
    let export = compiled
        .function(function)
        .or_else(|| {
            (function == crate::incoming::FUNCTION)
                .then(|| {
                    compiled
                        .exports
                        .iter()
                        .find(|e| crate::incoming::is_handler(e))
                })
                .flatten()
        })
        .ok_or_else(|| Error::UnknownFunction {
            component: id.component.to_string(),
            function: function.to_string(),
            available: compiled
                .exports
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    // An HTTP handler takes the request, whole (its two resources are made from it).
    let expected = if crate::incoming::is_handler(export) {
        1
    } else {
        export.params.len()
    };
    if given != expected {
        return Err(Error::ParamCount {
            function: export.name.clone(),
            expected,
            got: given,
        });
    }
    Ok(export)
}

fn generated_key() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut key = String::from("gen-");
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    key
}
