//! The executor: runs durable workers. Each worker is an actor task owning its wasmtime store
//! (pooled, fuel-metered, memory-limited); it runs one invocation at a time in arrival order,
//! records every non-deterministic host call in the oplog, and rebuilds its memory by replaying
//! the oplog whenever it starts afresh (first use, after suspension, after a failed invocation,
//! after a crash). Oplog appends of all workers go through one group committer.
//!
//! **Invariant:** an invocation's result is released only once its `ExportedFunctionCompleted`
//! entry, its result record and the usage it measured are durable, in one transaction.
//!
//! **Invariant:** the same idempotency key never runs twice on a worker: a repeated key gets the
//! stored outcome, or waits for the running invocation.
//!
//! **Boundary:** only this crate runs guest code.

mod commit;
mod config;
mod context;
mod durability;
mod error;
pub mod grpc;
mod host;
mod hostapi;
mod http;
mod limits;
mod metrics;
mod placement;
mod problem;
mod records;
mod remote;
mod schedules;
mod support;
mod suspend;
mod types;
mod wire;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use invicta_component_registry::{Compiled, ImportCheck, Registry};
use invicta_engine::Engine;
use invicta_engine::values::json_to_value;
use invicta_model::oplog::{FailureKind, OplogEntry, OplogIndex};
use invicta_model::shards::ShardGrant;
use invicta_model::{ComponentName, TenantId, WorkerId, usage};
use invicta_store::Store;
use tokio::sync::oneshot;

pub use http::HttpConfig;
pub use limits::Limits;
pub use records::{InvocationRecord, PendingRecord, StoredOutcome, WorkerRecord};
pub use schedules::Schedule;
pub use suspend::{PROMISE_BYTES_MAX, PromiseRecord};

use crate::commit::Committer;
use crate::durability::new_incarnation;
use crate::host::WorkerCtx;
pub(crate) use crate::support::now_ms;
use crate::worker::{Command, Invocation, WorkerHandle};

pub use config::{Config, Placement};
pub use error::{Error, Result};
pub(crate) use types::Outcome;
pub use types::{Completed, InvocationState, LogLine, WorkerFilter, WorkerStatus, WorkerSummary};

/// How old the monthly fuel figure checked before each invocation may be, in milliseconds:
/// reading it for every invocation would cost a store read on the hot path.
pub const FUEL_USAGE_STALE_MS: u64 = 1_000;

/// The exported function `function` of the worker's component, called with `given` parameters.
fn export_of<'a>(
    compiled: &'a Compiled,
    id: &WorkerId,
    function: &str,
    given: usize,
) -> Result<&'a invicta_engine::exports::ExportedFunction> {
    let export = compiled
        .function(function)
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
    if given != export.params.len() {
        return Err(Error::ParamCount {
            function: export.name.clone(),
            expected: export.params.len(),
            got: given,
        });
    }
    Ok(export)
}

/// How often the scheduler looks for due ticks, in milliseconds.
pub const SCHEDULER_TICK_MS: u64 = 100;

/// The longest idempotency key accepted.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// What the workers' actors share with the executor.
    pub ctx: Arc<context::Context>,
    /// The workers with an actor, by id.
    pub workers: Arc<worker::Directory>,
    /// This month's fuel per tenant, as last read: (month, fuel, read at).
    pub fuel_used: Mutex<HashMap<TenantId, (String, u64, std::time::Instant)>>,
    pub instance_pres:
        Mutex<HashMap<(TenantId, ComponentName, u64), wasmtime::component::InstancePre<WorkerCtx>>>,
    /// The shards this executor owns, checked by every commit.
    pub fencing: Arc<placement::Fencing>,
    /// Where calls for workers of other executors' shards go, when there are others.
    pub router: std::sync::OnceLock<remote::Router>,
    /// Shards drained for a hand-off (every worker stopped), to be released to the scheduler.
    pub released: Mutex<std::collections::BTreeSet<u32>>,
    /// Told when a shard joins `released`.
    pub release_ready: tokio::sync::Notify,
}

impl std::ops::Deref for Inner {
    type Target = context::Context;

    fn deref(&self) -> &context::Context {
        &self.ctx
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The executor as the Invicta host interface sees it: calls to other workers and promises.
/// Holds the executor weakly, as workers' stores hold it.
pub(crate) struct ExecutorWorkers(std::sync::Weak<Inner>);

impl ExecutorWorkers {
    fn executor(&self) -> std::result::Result<Executor, String> {
        self.0
            .upgrade()
            .map(|inner| Executor { inner })
            .ok_or_else(|| "the executor is stopping".to_string())
    }
}

impl hostapi::Workers for ExecutorWorkers {
    fn invoke(
        &self,
        call: hostapi::Call,
        function: String,
    ) -> futures::future::BoxFuture<'static, std::result::Result<String, String>> {
        let executor = self.executor();
        Box::pin(async move {
            executor?
                .invoke(
                    &call.target,
                    &function,
                    &call.params,
                    Some(call.key),
                    &call.limits,
                )
                .await
                .map(|completed| completed.result.to_string())
                .map_err(|e| e.to_string())
        })
    }

    fn enqueue(
        &self,
        call: hostapi::Call,
        function: String,
        at: Option<u64>,
    ) -> futures::future::BoxFuture<'static, std::result::Result<String, String>> {
        let executor = self.executor();
        Box::pin(async move {
            executor?
                .enqueue(
                    &call.target,
                    &function,
                    &call.params,
                    Some(call.key),
                    at,
                    &call.limits,
                )
                .await
                .map(|(key, _)| key)
                .map_err(|e| e.to_string())
        })
    }

    fn create_promise(
        &self,
        worker: WorkerId,
        id: String,
    ) -> futures::future::BoxFuture<'static, std::result::Result<(), String>> {
        let executor = self.executor();
        Box::pin(async move {
            let key = suspend::promise_key(&worker, &id);
            let record = records::encode_json(&PromiseRecord {
                created_at_ms: now_ms(),
                completed: None,
                completed_at_ms: None,
            });
            executor?
                .inner
                .store
                .transact(move |tx| {
                    if tx.get(&key)?.is_none() {
                        tx.set(&key, &record)?;
                    }
                    Ok::<_, Error>(())
                })
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn read_promise(
        &self,
        worker: WorkerId,
        id: String,
    ) -> futures::future::BoxFuture<'static, std::result::Result<Option<PromiseRecord>, String>>
    {
        let executor = self.executor();
        Box::pin(async move {
            let key = suspend::promise_key(&worker, &id);
            let bytes = executor?
                .inner
                .store
                .read(move |tx| tx.get(&key))
                .await
                .map_err(|e| e.to_string())?;
            bytes
                .map(|b| records::decode_json::<PromiseRecord>("promise", &b))
                .transpose()
                .map_err(|e| e.to_string())
        })
    }
}

impl Executor {
    /// Builds the linker for `engine`; the registry uses its check to refuse components whose
    /// imports no executor provides.
    pub fn import_check(engine: &Engine) -> Result<ImportCheck> {
        let linker = host::linker(&engine.engine).map_err(|e| Error::Engine(format!("{e:#}")))?;
        Ok(Arc::new(move |component| {
            linker
                .instantiate_pre(component)
                .map(drop)
                .map_err(|e| format!("{e:#}"))
        }))
    }

    /// Starts the executor: its group committer, and the recovery of every worker that was
    /// cut off in the middle of an invocation.
    pub async fn start(
        config: Config,
        store: Store,
        registry: Registry,
        engine: Engine,
    ) -> Result<Executor> {
        let linker = host::linker(&engine.engine).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let http_tls = http::tls_config(&config.http)
            .map_err(|e| Error::Engine(format!("[executor.http] {e}")))?;
        let metrics = Arc::new(metrics::Metrics::new());
        let fencing = Arc::new(placement::Fencing::new(placement::new_id()));
        if config.placement == Placement::All {
            let (owner, lease_ms) = (fencing.id.clone(), config.lease_ms);
            let granted = store
                .transact(move |tx| placement::take_all(tx, &owner, now_ms(), lease_ms))
                .await?;
            for (shard, epoch) in granted {
                fencing.set(shard, Some(epoch));
            }
        }
        let executor = Executor {
            inner: Arc::new(Inner {
                ctx: Arc::new(context::Context {
                    committer: Committer::start(store.clone(), metrics.clone(), fencing.clone())?,
                    metrics,
                    http_config: Arc::new(config.http.clone()),
                    http_tls,
                    config,
                    store,
                    registry,
                    engine,
                    linker,
                }),
                fencing,
                router: std::sync::OnceLock::new(),
                released: Mutex::new(std::collections::BTreeSet::new()),
                release_ready: tokio::sync::Notify::new(),
                workers: Arc::new(Mutex::new(HashMap::new())),
                fuel_used: Mutex::new(HashMap::new()),
                instance_pres: Mutex::new(HashMap::new()),
            }),
        };
        executor.recover().await?;
        executor.recover_pending().await?;
        executor.spawn_scheduler();
        if executor.inner.config.placement == Placement::All {
            executor.spawn_lease_renewal();
        }
        Ok(executor)
    }

    /// Sends calls for workers this executor does not own to their owners, found through the
    /// scheduler (a gateway without shards, or an executor calling another's worker).
    pub fn route_through(&self, scheduler: invicta_worker_scheduler::grpc::SchedulerClient) {
        let _ = self.inner.router.set(remote::Router::new(scheduler));
    }

    /// Whether this executor runs `id` now (holds its shard).
    pub fn owns(&self, id: &WorkerId) -> bool {
        self.inner.fencing.owns(id)
    }

    /// The router for `id`, if another executor runs it. A shard being drained is still run
    /// here: calls from outside were refused at this executor's gRPC service already, and the
    /// calls its own workers make of each other must go on, or a worker waiting on another of
    /// the same shard would hold the hand-off up.
    fn elsewhere(&self, id: &WorkerId) -> Option<&remote::Router> {
        if self.inner.fencing.holds(id) {
            return None;
        }
        self.inner.router.get()
    }

    /// This executor's id, as leases name it.
    pub fn id(&self) -> &str {
        &self.inner.fencing.id
    }

    /// The shards this executor owns, with their epochs.
    pub fn shards(&self) -> Vec<(u32, u64)> {
        self.inner.fencing.owned()
    }

    /// Renews the leases of the shards this executor took, until the process ends; a shard
    /// someone else took meanwhile is given up.
    fn spawn_lease_renewal(&self) {
        let executor = self.clone();
        let every = std::time::Duration::from_millis((self.inner.config.lease_ms / 3).max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let held = executor.inner.fencing.owned();
                let (owner, lease_ms) = (
                    executor.inner.fencing.id.clone(),
                    executor.inner.config.lease_ms,
                );
                let renewed = executor
                    .inner
                    .store
                    .transact(move |tx| placement::renew(tx, &owner, &held, now_ms(), lease_ms))
                    .await;
                match renewed {
                    Ok(lost) => {
                        for shard in lost {
                            executor.give_up(shard).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "renew shard leases"),
                }
            }
        });
    }

    /// Applies what the scheduler's heartbeat says this executor holds: shards no longer
    /// granted (or granted at another epoch) are given up at once, their workers stopped; new
    /// ones are taken, their cut-off, asleep and pending workers recovered; shards to drain
    /// stop taking work, let what runs finish and commit, and are then released
    /// ([`Executor::released`]).
    pub async fn set_shards(&self, granted: &[ShardGrant]) -> Result<()> {
        let before = self.inner.fencing.owned();
        let now: HashMap<u32, u64> = granted.iter().map(|g| (g.shard, g.epoch)).collect();
        for (shard, epoch) in &before {
            if now.get(shard) != Some(epoch) {
                self.give_up(*shard).await;
            }
        }
        lock(&self.inner.released).retain(|shard| now.contains_key(shard));
        let mut gained = false;
        for grant in granted {
            let shard = grant.shard;
            if !before.contains(&(shard, grant.epoch)) {
                self.inner.fencing.set(shard, Some(grant.epoch));
                tracing::info!(shard, epoch = grant.epoch, "took over a shard");
                gained = true;
            }
            let draining = self.inner.fencing.draining(shard);
            if grant.draining && !draining {
                self.drain(shard);
            } else if !grant.draining && draining {
                // The move was called off (its target died): the shard is ours again. Under the
                // lock the drain task releases under, so that it cannot release it after this.
                let mut released = lock(&self.inner.released);
                self.inner.fencing.set_draining(shard, false);
                released.remove(&shard);
                drop(released);
                tracing::info!(shard, "hand-off called off");
                gained = true;
            }
        }
        if gained {
            self.recover().await?;
            self.recover_pending().await?;
        }
        Ok(())
    }

    /// The shards drained for a hand-off, which the next heartbeat releases.
    pub fn released(&self) -> Vec<u32> {
        lock(&self.inner.released).iter().copied().collect()
    }

    /// Resolves when a shard has been drained (to heartbeat at once rather than wait).
    pub async fn release_ready(&self) {
        self.inner.release_ready.notified().await;
    }

    /// Starts handing `shard` off: new work for its workers is refused (callers retry at the
    /// new owner), each worker's actor finishes what it runs and what is queued before it,
    /// commits, and stops; then the shard is released. A forced move meanwhile (the scheduler
    /// gives up waiting after a lease) fences whatever is still running, as a failover would.
    fn drain(&self, shard: u32) {
        {
            let mut released = lock(&self.inner.released);
            self.inner.fencing.set_draining(shard, true);
            released.remove(&shard);
        }
        tracing::info!(shard, "draining a shard for a hand-off");
        let executor = self.clone();
        tokio::spawn(async move {
            loop {
                let handles: Vec<(WorkerId, WorkerHandle)> = executor
                    .lock_workers()
                    .iter()
                    .filter(|(id, _)| invicta_model::shards::shard_of(id) == shard)
                    .map(|(id, h)| (id.clone(), h.clone()))
                    .collect();
                if handles.is_empty() {
                    break;
                }
                let stops: Vec<_> = handles
                    .into_iter()
                    .map(|(id, handle)| {
                        let executor = executor.clone();
                        async move {
                            let (reply, done) = oneshot::channel();
                            if handle.send(Command::Stop(reply)).await.is_ok() {
                                let _ = done.await;
                            } else {
                                // An actor already gone, its handle left behind.
                                executor.forget_worker(&id, &handle);
                            }
                        }
                    })
                    .collect();
                futures::future::join_all(stops).await;
                if !executor.inner.fencing.draining(shard) {
                    return;
                }
                // Workers its own workers called meanwhile: stopped in the next round.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let mut released = lock(&executor.inner.released);
            if executor.inner.fencing.draining(shard) {
                released.insert(shard);
                drop(released);
                executor.inner.release_ready.notify_one();
                tracing::info!(shard, "shard drained");
            }
        });
    }

    /// Removes `handle` from the map of running workers, if it is still the one there.
    fn forget_worker(&self, id: &WorkerId, handle: &WorkerHandle) {
        let mut workers = self.lock_workers();
        if workers.get(id).is_some_and(|h| h.same_actor(handle)) {
            workers.remove(id);
        }
    }

    /// The shards being drained for a hand-off and not yet released.
    pub fn draining(&self) -> Vec<u32> {
        let released = lock(&self.inner.released);
        (0..invicta_model::shards::SHARDS)
            .filter(|s| self.inner.fencing.draining(*s) && !released.contains(s))
            .collect()
    }

    /// Stops running the shard's workers: their commits would be refused from now on.
    async fn give_up(&self, shard: u32) {
        self.inner.fencing.set(shard, None);
        lock(&self.inner.released).remove(&shard);
        tracing::warn!(shard, "gave up a shard");
        let handles: Vec<WorkerHandle> = self
            .lock_workers()
            .iter()
            .filter(|(id, _)| invicta_model::shards::shard_of(id) == shard)
            .map(|(_, h)| h.clone())
            .collect();
        // Each actor stops once its running invocation ends; nobody waits for that here (a
        // heartbeat must not).
        for handle in handles {
            tokio::spawn(async move {
                let (reply, done) = oneshot::channel();
                if handle.send(Command::Stop(reply)).await.is_ok() {
                    let _ = done.await;
                }
            });
        }
    }

    /// Resumes the workers whose last invocation started durably but never completed.
    async fn recover(&self) -> Result<()> {
        let prefix = records::running_prefix();
        let wakes = suspend::wake_prefix();
        let (rows, wakes) = self
            .inner
            .store
            .read(move |tx| {
                Ok::<_, Error>((
                    tx.get_prefix(&prefix, Default::default())?,
                    tx.get_prefix(&wakes, Default::default())?,
                ))
            })
            .await?;
        // Workers asleep until later are left to the scheduler, which wakes them when due.
        let now = now_ms();
        let asleep: std::collections::HashSet<WorkerId> = wakes
            .iter()
            .filter_map(|row| suspend::parse_wake(&row.key))
            .filter(|(at, _)| *at > now)
            .map(|(_, id)| id)
            .collect();
        for row in rows {
            let Some(id) = records::parse_running_key(&row.key) else {
                tracing::warn!("skipping an unreadable running-worker key");
                continue;
            };
            if asleep.contains(&id) || !self.inner.fencing.owns(&id) {
                continue;
            }
            tracing::info!(worker = %id, "resuming a worker cut off mid-invocation");
            match self.handle(&id).await {
                Ok(handle) => {
                    let _ = handle.send(Command::Resume).await;
                }
                Err(e) => tracing::error!(worker = %id, error = %e, "cannot resume worker"),
            }
        }
        Ok(())
    }

    /// Creates a worker of the component's `version` (the latest if `None`).
    pub async fn create_worker(
        &self,
        id: &WorkerId,
        env: Vec<(String, String)>,
        args: Vec<String>,
        version: Option<u64>,
        limits: &Limits,
    ) -> Result<WorkerRecord> {
        if let Some(router) = self.elsewhere(id) {
            router
                .create_worker(id, &env, &args, version, limits)
                .await?;
            return self
                .worker_record(id)
                .await?
                .ok_or_else(|| Error::WorkerNotFound(id.to_string()));
        }
        match self
            .create(id, env, args, version, limits.workers_max)
            .await?
        {
            (record, true) => Ok(record),
            (_, false) => Err(Error::WorkerExists(id.to_string())),
        }
    }

    /// Creates the worker unless it exists; returns its record and whether it was created.
    async fn create(
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
                // Counted in the same transaction as the worker it counts: exact under races.
                let count_key = usage::count_key(id_c.tenant.as_str(), usage::WORKERS);
                let workers = u64::try_from(tx.get_i64(&count_key)?).unwrap_or(0);
                if workers >= workers_max {
                    return Err(Error::QuotaExceeded {
                        quota: "workers",
                        limit: workers_max,
                        used: workers,
                    });
                }
                tx.atomic_add(&count_key, 1)?;
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

    async fn worker_record(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        let key = records::worker_key(id);
        let bytes = self.inner.store.read(move |tx| tx.get(&key)).await?;
        bytes
            .map(|b| records::decode_json("worker record", &b))
            .transpose()
    }

    /// The actor of a worker, started if it is not running.
    async fn handle(&self, id: &WorkerId) -> Result<WorkerHandle> {
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

    fn instance_pre(
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
        if let Some(pre) = pres.get(&key) {
            return Ok(pre.clone());
        }
        let pre = self
            .inner
            .linker
            .instantiate_pre(&compiled.component)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        pres.insert(key, pre.clone());
        Ok(pre)
    }

    fn lock_workers(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, WorkerHandle>> {
        self.inner
            .workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Invokes `function` on the worker (created with defaults if it does not exist) and waits
    /// until its completion is durable. `idempotency_key`: the same key never runs twice.
    pub async fn invoke(
        &self,
        id: &WorkerId,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        limits: &Limits,
    ) -> Result<Completed> {
        if let Some(router) = self.elsewhere(id) {
            return router
                .invoke(id, function, params, idempotency_key, limits)
                .await;
        }
        let invocation = self
            .prepare(id, function, params, idempotency_key, limits)
            .await?;
        let completed = self.run(id, &invocation).await?;
        self.count_fuel(&id.tenant, completed.fuel_consumed);
        Ok(completed)
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
    async fn prepare(
        &self,
        id: &WorkerId,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        limits: &Limits,
    ) -> Result<Invocation> {
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
        // A running worker knows its component; otherwise read (or create) its record.
        let running = self.lock_workers().get(id).map(|h| h.compiled.clone());
        let compiled = match running {
            Some(compiled) => compiled,
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
        let export = export_of(&compiled, id, function, params.len())?;
        let values = params
            .iter()
            .zip(&export.params)
            .map(|(json, (name, ty))| json_to_value(name, json, ty))
            .collect::<Result<Vec<_>, _>>()?;
        let (generated, key) = match key {
            Some(key) => (false, key),
            None => (true, generated_key()),
        };
        let fingerprint = if generated {
            String::new()
        } else {
            records::fingerprint(&export.name, &values)
        };
        let invocation = Invocation {
            function: export.name.clone(),
            params: values,
            idempotency_key: key,
            fingerprint,
            key_is_new: generated,
            enqueued: false,
            egress_hosts: limits.egress_hosts.clone(),
            workers_max: limits.workers_max,
            fuel: limits
                .fuel_per_invocation
                .min(self.inner.config.fuel_per_invocation),
            span: tracing::Span::current(),
            memory_bytes: limits
                .memory_per_worker_bytes
                .min(self.inner.engine.config.memory_bytes_max),
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
        Ok(invocation)
    }

    /// Hands the invocation to the worker's actor; the receiver hears its outcome. The actor
    /// may have stopped between our lookup and our send: then start it again (bounded: a fresh
    /// actor does not stop before taking its first message).
    async fn deliver(
        &self,
        id: &WorkerId,
        invocation: &Invocation,
    ) -> Result<oneshot::Receiver<Outcome>> {
        for _ in 0..3 {
            let handle = self.handle(id).await?;
            let (reply, outcome) = oneshot::channel();
            match handle
                .send(Command::Invoke(invocation.clone(), reply))
                .await
            {
                Ok(()) => return Ok(outcome),
                Err(worker::SendError::Full(n)) => return Err(Error::QueueFull(n)),
                Err(worker::SendError::Stopped) => {
                    self.lock_workers().remove(id);
                }
            }
        }
        Err(Error::ShuttingDown)
    }

    /// Delivers the invocation and waits for its outcome.
    async fn run(&self, id: &WorkerId, invocation: &Invocation) -> Result<Completed> {
        for _ in 0..3 {
            let outcome = self.deliver(id, invocation).await?;
            match outcome.await.unwrap_or(Err(Error::ShuttingDown)) {
                Err(Error::Retry) => continue,
                other => return other,
            }
        }
        Err(Error::ShuttingDown)
    }

    /// Accepts an invocation durably and runs it in the background; returns its idempotency key
    /// (made if none was given) and whether it was new (a key already accepted or completed is
    /// not accepted twice). Accepted invocations survive a crash: recovery runs them.
    pub async fn enqueue(
        &self,
        id: &WorkerId,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        schedule_at_ms: Option<u64>,
        limits: &Limits,
    ) -> Result<(String, bool)> {
        if let Some(router) = self.elsewhere(id) {
            return router
                .enqueue(
                    id,
                    function,
                    params,
                    idempotency_key,
                    schedule_at_ms,
                    limits,
                )
                .await;
        }
        let mut invocation = self
            .prepare(id, function, params, idempotency_key, limits)
            .await?;
        let due_at_ms = schedule_at_ms.filter(|at| *at > now_ms());
        // Its outcome is asked for later, by key: it must be recorded.
        invocation.key_is_new = false;
        invocation.enqueued = true;
        let record = PendingRecord {
            function: invocation.function.clone(),
            params: params.to_vec(),
            fuel: invocation.fuel,
            memory_bytes: invocation.memory_bytes,
            egress_hosts: invocation.egress_hosts.clone(),
            enqueued_at_ms: now_ms(),
            due_at_ms,
        };
        let (id_c, key) = (id.clone(), invocation.idempotency_key.clone());
        let (fingerprint, function_c) =
            (invocation.fingerprint.clone(), invocation.function.clone());
        let params_c = params.to_vec();
        let accepted = self
            .inner
            .store
            .transact(move |tx| {
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
            self.dispatch(id, invocation, due_at_ms).await;
        }
        Ok((key, accepted))
    }

    /// Runs an accepted invocation: now, delivered before returning so that one client's
    /// enqueues keep their order, or at `due_at_ms`.
    async fn dispatch(&self, id: &WorkerId, invocation: Invocation, due_at_ms: Option<u64>) {
        match due_at_ms.map(|at| at.saturating_sub(now_ms())) {
            Some(wait) if wait > 0 => {
                let (executor, id) = (self.clone(), id.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                    let first = executor.deliver(&id, &invocation).await;
                    executor.settle(id, invocation, first).await;
                });
            }
            _ => {
                let first = self.deliver(id, &invocation).await;
                tokio::spawn(self.clone().settle(id.clone(), invocation, first));
            }
        }
    }

    /// Creates a recurring invocation of `function` on the worker (created if it does not
    /// exist), by a six-field cron expression in UTC.
    pub async fn create_schedule(
        &self,
        id: &WorkerId,
        cron: &str,
        function: &str,
        params: &[serde_json::Value],
        limits: &Limits,
    ) -> Result<Schedule> {
        schedules::parse(cron)?;
        let params_bytes = serde_json::to_vec(params).map_or(0, |b| b.len());
        if params_bytes > schedules::PARAMS_BYTES_MAX {
            return Err(Error::InvalidSchedule(format!(
                "its parameters are {params_bytes} bytes as JSON; the limit is {}",
                schedules::PARAMS_BYTES_MAX
            )));
        }
        let invocation = self
            .prepare(id, function, params, Some("schedule-check".into()), limits)
            .await?;
        let now = now_ms();
        let bytes: [u8; 6] = rand::random();
        let schedule = Schedule {
            id: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            cron: cron.to_string(),
            function: invocation.function.clone(),
            params: params.to_vec(),
            paused: false,
            created_at_ms: now,
            next_at_ms: schedules::next_after(cron, now),
            fired: 0,
            limits: schedules::ScheduleLimits {
                fuel: invocation.fuel,
                memory_bytes: invocation.memory_bytes,
                egress_hosts: invocation.egress_hosts.clone(),
            },
        };
        let (id_c, stored) = (id.clone(), schedule.clone());
        self.inner
            .store
            .transact(move |tx| {
                if tx.get(&records::worker_key(&id_c))?.is_none() {
                    return Err(Error::WorkerNotFound(id_c.to_string()));
                }
                let max = schedules::PER_WORKER_MAX;
                let existing = tx
                    .get_prefix(
                        &schedules::prefix(&id_c),
                        invicta_store::RangeOptions::limit(max + 1),
                    )?
                    .len();
                if existing >= max {
                    return Err(Error::QuotaExceeded {
                        quota: "schedules_per_worker",
                        limit: max as u64,
                        used: existing as u64,
                    });
                }
                schedules::write(tx, &id_c, &stored, None)
            })
            .await?;
        Ok(schedule)
    }

    /// The worker's schedules.
    pub async fn schedules(&self, id: &WorkerId) -> Result<Vec<Schedule>> {
        let id_c = id.clone();
        self.inner
            .store
            .read(move |tx| {
                if tx.get(&records::worker_key(&id_c))?.is_none() {
                    return Err(Error::WorkerNotFound(id_c.to_string()));
                }
                let mut out = Vec::new();
                for row in tx.get_prefix(&schedules::prefix(&id_c), Default::default())? {
                    if let Some(s) = schedules::read(tx, &row.key)? {
                        out.push(s);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Pauses or resumes a schedule; a resumed one continues from its next tick after now.
    pub async fn set_schedule_paused(
        &self,
        id: &WorkerId,
        schedule: &str,
        paused: bool,
    ) -> Result<Schedule> {
        let (id_c, sid) = (id.clone(), schedule.to_string());
        self.inner
            .store
            .transact(move |tx| {
                let mut s = schedules::read(tx, &schedules::key(&id_c, &sid))?
                    .ok_or_else(|| Error::ScheduleNotFound(sid.clone()))?;
                let old = if s.paused { None } else { s.next_at_ms };
                s.paused = paused;
                s.next_at_ms = if paused {
                    None
                } else {
                    schedules::next_after(&s.cron, now_ms())
                };
                schedules::write(tx, &id_c, &s, old)?;
                Ok(s)
            })
            .await
    }

    /// Deletes a schedule; its ticks already accepted still run.
    pub async fn delete_schedule(&self, id: &WorkerId, schedule: &str) -> Result<()> {
        let (id_c, sid) = (id.clone(), schedule.to_string());
        self.inner
            .store
            .transact(move |tx| {
                let key = schedules::key(&id_c, &sid);
                let s = schedules::read(tx, &key)?
                    .ok_or_else(|| Error::ScheduleNotFound(sid.clone()))?;
                if let Some(next) = s.next_at_ms.filter(|_| !s.paused) {
                    tx.clear(&schedules::due_key(next, &id_c, &sid))?;
                }
                tx.clear(&key)?;
                Ok(())
            })
            .await
    }

    /// Fires every schedule whose tick has come, then sleeps a little; until the process ends.
    fn spawn_scheduler(&self) {
        let executor = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = executor.fire_due().await {
                    tracing::warn!(error = %e, "fire schedules");
                }
                if let Err(e) = executor.wake_due().await {
                    tracing::warn!(error = %e, "wake sleeping workers");
                }
                tokio::time::sleep(std::time::Duration::from_millis(SCHEDULER_TICK_MS)).await;
            }
        });
    }

    /// Wakes the workers whose sleep is over and that are not waiting in this process (after a
    /// restart, or evicted): their wake-up key goes, and a crash before they go on leaves
    /// their `running` mark, which the next start resumes.
    async fn wake_due(&self) -> Result<()> {
        let (begin, end) = suspend::wake_range(now_ms());
        let due = self
            .inner
            .store
            .read(move |tx| tx.get_range(&begin, &end, invicta_store::RangeOptions::limit(256)))
            .await?;
        for row in due {
            let Some((at, id)) = suspend::parse_wake(&row.key) else {
                continue;
            };
            if !self.inner.fencing.owns(&id) {
                continue;
            }
            if let Err(e) = self.wake(&id).await {
                tracing::warn!(worker = %id, error = %e, "wake a sleeping worker");
            }
            let key = row.key.clone();
            self.inner
                .store
                .transact(move |tx| tx.clear(&key).map_err(Error::from))
                .await?;
            tracing::debug!(worker = %id, at, "woke a sleeping worker");
        }
        Ok(())
    }

    /// Tells the worker that what it waits for may have come.
    pub(crate) async fn wake(&self, id: &WorkerId) -> Result<()> {
        if let Some(router) = self.elsewhere(id) {
            return router.wake(id).await;
        }
        match self.handle(id).await {
            Ok(handle) => {
                let _ = handle.send(Command::Resume).await;
                Ok(())
            }
            Err(Error::WorkerNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Completes the worker's promise `promise` with `data`, and wakes the worker if it awaits
    /// it. Completing it again with the same data changes nothing; with other data it is
    /// refused.
    pub async fn complete_promise(
        &self,
        id: &WorkerId,
        promise: &str,
        data: serde_json::Value,
    ) -> Result<PromiseRecord> {
        let size = data.to_string().len();
        if size > PROMISE_BYTES_MAX {
            return Err(Error::PromiseTooLarge {
                size,
                limit: PROMISE_BYTES_MAX,
            });
        }
        let (id_c, promise_c) = (id.clone(), promise.to_string());
        let record = self
            .inner
            .store
            .transact(move |tx| {
                if tx.get(&records::worker_key(&id_c))?.is_none() {
                    return Err(Error::WorkerNotFound(id_c.to_string()));
                }
                let key = suspend::promise_key(&id_c, &promise_c);
                let mut record: PromiseRecord = match tx.get(&key)? {
                    Some(bytes) => records::decode_json("promise", &bytes)?,
                    None => return Err(Error::PromiseNotFound(promise_c.clone())),
                };
                match &record.completed {
                    Some(existing) if *existing == data => return Ok(record),
                    Some(_) => return Err(Error::PromiseCompleted(promise_c.clone())),
                    None => {}
                }
                record.completed = Some(data.clone());
                record.completed_at_ms = Some(now_ms());
                tx.set(&key, &records::encode_json(&record))?;
                Ok(record)
            })
            .await?;
        self.wake(id).await?;
        Ok(record)
    }

    /// The worker's promise `promise`.
    pub async fn promise(&self, id: &WorkerId, promise: &str) -> Result<PromiseRecord> {
        let (id_c, promise_c) = (id.clone(), promise.to_string());
        self.inner
            .store
            .read(move |tx| {
                if tx.get(&records::worker_key(&id_c))?.is_none() {
                    return Err(Error::WorkerNotFound(id_c.to_string()));
                }
                match tx.get(&suspend::promise_key(&id_c, &promise_c))? {
                    Some(bytes) => records::decode_json("promise", &bytes),
                    None => Err(Error::PromiseNotFound(promise_c.clone())),
                }
            })
            .await
    }

    async fn fire_due(&self) -> Result<()> {
        let (begin, end) = schedules::due_range(now_ms());
        let due = self
            .inner
            .store
            .read(move |tx| tx.get_range(&begin, &end, invicta_store::RangeOptions::limit(256)))
            .await?;
        for row in due {
            let Some((at, id, sid)) = schedules::parse_due(&row.key) else {
                continue;
            };
            if !self.inner.fencing.owns(&id) {
                continue;
            }
            if let Err(e) = self.fire(&id, &sid, at).await {
                tracing::warn!(worker = %id, schedule = %sid, error = %e, "fire a schedule");
            }
        }
        Ok(())
    }

    /// Fires one tick: accepts its invocation and moves the schedule on, in one transaction.
    async fn fire(&self, id: &WorkerId, sid: &str, at: u64) -> Result<()> {
        let (id_c, sid_c) = (id.clone(), sid.to_string());
        let fired = self
            .inner
            .store
            .transact(move |tx| {
                let Some(mut s) = schedules::read(tx, &schedules::key(&id_c, &sid_c))? else {
                    tx.clear(&schedules::due_key(at, &id_c, &sid_c))?;
                    return Ok(None);
                };
                if s.paused || s.next_at_ms != Some(at) {
                    tx.clear(&schedules::due_key(at, &id_c, &sid_c))?;
                    return Ok(None);
                }
                let key = schedules::tick_key(&sid_c, at);
                let fresh = tx.get(&records::invocation_key(&id_c, &key))?.is_none()
                    && tx.get(&records::pending_key(&id_c, &key))?.is_none();
                if fresh {
                    let pending = PendingRecord {
                        function: s.function.clone(),
                        params: s.params.clone(),
                        fuel: s.limits.fuel,
                        memory_bytes: s.limits.memory_bytes,
                        egress_hosts: s.limits.egress_hosts.clone(),
                        enqueued_at_ms: now_ms(),
                        due_at_ms: None,
                    };
                    records::set_value(
                        tx,
                        &records::pending_key(&id_c, &key),
                        records::encode_json(&pending),
                    )?;
                    s.fired += 1;
                }
                // Missed ticks collapse into this one.
                s.next_at_ms = schedules::next_after(&s.cron, at.max(now_ms()));
                schedules::write(tx, &id_c, &s, Some(at))?;
                Ok::<_, Error>(fresh.then_some((key, s)))
            })
            .await?;
        let Some((key, s)) = fired else {
            return Ok(());
        };
        let limits = Limits {
            fuel_per_invocation: s.limits.fuel,
            fuel_per_month: u64::MAX,
            memory_per_worker_bytes: s.limits.memory_bytes,
            workers_max: u64::MAX,
            egress_hosts: s.limits.egress_hosts.clone(),
        };
        let mut invocation = self
            .prepare(id, &s.function, &s.params, Some(key), &limits)
            .await?;
        invocation.key_is_new = false;
        invocation.enqueued = true;
        self.dispatch(id, invocation, None).await;
        Ok(())
    }

    /// Waits for an accepted invocation's outcome, delivering it again while the worker is
    /// busy or restarting; an outcome the worker could not record is recorded here.
    async fn settle(
        self,
        id: WorkerId,
        invocation: Invocation,
        first: Result<oneshot::Receiver<Outcome>>,
    ) {
        let mut outcome = match first {
            Ok(rx) => rx.await.unwrap_or(Err(Error::ShuttingDown)),
            Err(e) => Err(e),
        };
        for attempt in 1..=50_u64 {
            match &outcome {
                Err(Error::Retry | Error::QueueFull(_) | Error::PoolExhausted(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempt.min(25)))
                        .await;
                    outcome = self.run(&id, &invocation).await;
                }
                _ => break,
            }
        }
        match outcome {
            Ok(completed) => self.count_fuel(&id.tenant, completed.fuel_consumed),
            // The worker recorded it.
            Err(Error::InvocationFailed { .. }) => {}
            // The next start runs it.
            Err(Error::ShuttingDown) => {}
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
                let result = self
                    .inner
                    .store
                    .transact(move |tx| {
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
    async fn recover_pending(&self) -> Result<()> {
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
            };
            let prepared = self
                .prepare(&id, &record.function, &record.params, Some(key), &limits)
                .await;
            match prepared {
                Ok(mut invocation) => {
                    invocation.key_is_new = false;
                    invocation.enqueued = true;
                    self.dispatch(&id, invocation, record.due_at_ms).await;
                }
                Err(e) => {
                    tracing::warn!(worker = %id, error = %e, "a pending invocation no longer fits its worker");
                }
            }
        }
        Ok(())
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
                })
            }
            None => Err(Error::InvocationNotFound(idempotency_key.to_string())),
        }
    }

    /// Stops the worker's running invocation (it fails with `interrupted`, leaving no trace in
    /// the worker's state); returns whether one was running.
    pub async fn interrupt(&self, id: &WorkerId) -> Result<bool> {
        if self.worker_record(id).await?.is_none() {
            return Err(Error::WorkerNotFound(id.to_string()));
        }
        if let Some(router) = self.elsewhere(id) {
            return router.interrupt(id).await;
        }
        Ok(self
            .lock_workers()
            .get(id)
            .is_some_and(|handle| handle.interrupt()))
    }

    /// Activates the worker now (replaying its oplog), retrying a replay that failed before.
    pub async fn resume(&self, id: &WorkerId) -> Result<WorkerStatus> {
        if let Some(router) = self.elsewhere(id) {
            router.control(id, remote::Control::Resume).await?;
            return self.status(id).await;
        }
        self.ask(id, WorkerHandle::clear_failure, Command::Activate)
            .await?;
        self.status(id).await
    }

    /// Sends the worker's actor a command and waits for its answer, starting the actor again
    /// if it stopped meanwhile (bounded). `prepare` runs on the handle first.
    async fn ask<P>(
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

    /// Deletes the worker: its running invocation is interrupted, its queued and pending ones
    /// are dropped, and its record, oplog and invocation records are removed.
    pub async fn delete_worker(&self, id: &WorkerId) -> Result<()> {
        if let Some(router) = self.elsewhere(id) {
            return router.control(id, remote::Control::Delete).await;
        }
        self.ask(id, WorkerHandle::start_deleting, Command::Delete)
            .await
    }

    /// Moves the worker to another version of its component. Allowed only when its history
    /// replays on that version: every function it was invoked with must exist there with the
    /// same signature, and a trial replay must reproduce every recorded result; otherwise the
    /// worker stays where it was and the reason is returned.
    pub async fn set_version(&self, id: &WorkerId, version: u64) -> Result<WorkerRecord> {
        if let Some(router) = self.elsewhere(id) {
            router
                .control(id, remote::Control::SetVersion(version))
                .await?;
            return self
                .worker_record(id)
                .await?
                .ok_or_else(|| Error::WorkerNotFound(id.to_string()));
        }
        let record = self
            .worker_record(id)
            .await?
            .ok_or_else(|| Error::WorkerNotFound(id.to_string()))?;
        if record.component_version == version {
            return Ok(record);
        }
        let registry = &self.inner.registry;
        let current = registry
            .compiled(&id.tenant, &id.component, record.component_version)
            .await?;
        let target = registry
            .compiled(&id.tenant, &id.component, version)
            .await?;
        let id_c = id.clone();
        let entries = self
            .inner
            .store
            .read(move |tx| records::read_entries(tx, &id_c, 1, usize::MAX))
            .await?;
        for (_, entry) in &entries {
            if let OplogEntry::ExportedFunctionInvoked { function, .. } = entry {
                let before = current.function(function).map(|f| f.signature());
                let after = target.function(function).map(|f| f.signature());
                if after.is_none() || before != after {
                    return Err(Error::IncompatibleVersion(format!(
                        "the worker was invoked with `{function}`, which version {version} does not export with the same signature"
                    )));
                }
            }
        }
        self.stop_actor(id).await;
        self.write_version(id, version).await?;
        match self.resume(id).await {
            Ok(_) => {
                tracing::info!(worker = %id, from = record.component_version, to = version, "worker moved");
                self.worker_record(id)
                    .await?
                    .ok_or_else(|| Error::WorkerNotFound(id.to_string()))
            }
            Err(Error::WorkerFailed(reason)) => {
                self.stop_actor(id).await;
                self.write_version(id, record.component_version).await?;
                Err(Error::IncompatibleVersion(format!(
                    "its history does not replay on version {version}: {reason}"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Stops the worker's actor, if it runs, once its commits are durable.
    async fn stop_actor(&self, id: &WorkerId) {
        let handle = self.lock_workers().get(id).cloned();
        if let Some(handle) = handle {
            let (reply, done) = oneshot::channel();
            if handle.send(Command::Stop(reply)).await.is_ok() {
                let _ = done.await;
            }
            self.lock_workers().remove(id);
        }
    }

    async fn write_version(&self, id: &WorkerId, version: u64) -> Result<()> {
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
    fn count_fuel(&self, tenant: &TenantId, fuel: u64) {
        let mut cache = self
            .inner
            .fuel_used
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((_, used, _)) = cache.get_mut(tenant) {
            *used = used.saturating_add(fuel);
        }
    }

    /// Whether the worker exists (its record is in the store).
    pub async fn worker_exists(&self, id: &WorkerId) -> Result<bool> {
        Ok(self.worker_record(id).await?.is_some())
    }

    /// A worker's status.
    pub async fn status(&self, id: &WorkerId) -> Result<WorkerStatus> {
        // Whether it is in memory only its executor knows; if that one cannot say now (moving,
        // restarting), the store's view follows.
        if let Some(router) = self.elsewhere(id)
            && let Ok(status) = router.status(id).await
        {
            return Ok(status);
        }
        let record = self
            .worker_record(id)
            .await?
            .ok_or_else(|| Error::WorkerNotFound(id.to_string()))?;
        let id_c = id.clone();
        let oplog_length = self
            .inner
            .store
            .read(move |tx| records::last_index(tx, &id_c))
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
        let id = id.clone();
        self.inner
            .store
            .read(move |tx| records::read_entries(tx, &id, from, count))
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

fn generated_key() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut key = String::from("gen-");
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

#[cfg(test)]
mod structure {
    //! The executor's modules import each other without circles: each may see those below it,
    //! none one that sees it back (the crate root counts as a module: its items are `crate::X`).

    use std::collections::{BTreeMap, BTreeSet};

    /// Every module's imports of other modules of this crate, from the sources.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let files: Vec<_> = std::fs::read_dir(&dir)
            .expect("read src")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        let module = |p: &std::path::Path| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let modules: BTreeSet<String> = files.iter().map(|p| module(p)).collect();
        let mut graph = BTreeMap::new();
        for path in &files {
            let me = module(path);
            let text = std::fs::read_to_string(path).expect("read a module");
            let mut seen = BTreeSet::new();
            for line in text.lines() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                // `crate::x…` and `use crate::{x, y::…}`.
                let mut rest = code;
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + "crate::".len()..];
                    let names: Vec<&str> = match rest.strip_prefix('{') {
                        Some(list) => list
                            .split('}')
                            .next()
                            .unwrap_or_default()
                            .split(',')
                            .collect(),
                        None => vec![rest],
                    };
                    for name in names {
                        let name: String = name
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if name.is_empty() {
                            continue;
                        }
                        let target = if modules.contains(&name) {
                            name
                        } else {
                            "lib".to_string()
                        };
                        if target != me {
                            seen.insert(target);
                        }
                    }
                }
            }
            graph.insert(me, seen);
        }
        graph
    }

    #[test]
    fn no_module_imports_one_that_imports_it_back() {
        let graph = imports();
        assert!(graph.contains_key("durability") && graph.contains_key("worker"));
        // Depth-first, looking for a path back to where it started.
        fn reaches(
            graph: &BTreeMap<String, BTreeSet<String>>,
            from: &str,
            to: &str,
            seen: &mut BTreeSet<String>,
        ) -> bool {
            let Some(next) = graph.get(from) else {
                return false;
            };
            next.iter()
                .any(|n| n == to || (seen.insert(n.clone()) && reaches(graph, n, to, seen)))
        }
        for module in graph.keys() {
            assert!(
                !reaches(&graph, module, module, &mut BTreeSet::new()),
                "module `{module}` imports one that imports it back: {graph:#?}"
            );
        }
        // The durability core sees nothing of the executor.
        assert!(graph["durability"].is_empty(), "{:?}", graph["durability"]);
    }
}
