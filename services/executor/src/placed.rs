//! A worker wherever it runs. Every call that acts on one worker goes through
//! [`Executor::at`], which says whether this executor runs it ([`Local`]: its actor here) or
//! another does ([`Remote`]: over gRPC, following moves); both answer the one [`WorkerAt`]
//! trait, so no operation asks "is it elsewhere" for itself.
//!
//! **Invariant:** a worker whose shard this executor holds is always served here, draining or
//! not (the calls its own workers make of each other must go on during a hand-off); any other
//! goes to its owner when there is a router, and is refused as not owned when there is none.

use invicta_model::WorkerId;
use invicta_model::oplog::OplogIndex;

use crate::Executor;
use crate::error::{Error, Result};
use crate::lifecycle::UpdateMethod;
use crate::limits::Limits;
use crate::records::WorkerRecord;
use crate::remote::{Control, Router};
use crate::types::{Completed, WorkerStatus};

/// What can be done to one worker, by whichever executor runs it.
pub(crate) trait WorkerAt {
    /// Creates it (`version`: the component's latest if `None`); refused if it exists.
    async fn create(
        &self,
        env: Vec<(String, String)>,
        args: Vec<String>,
        version: Option<u64>,
        limits: &Limits,
    ) -> Result<WorkerRecord>;

    /// Runs `function` and waits until its completion is durable.
    async fn invoke(
        &self,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        limits: &Limits,
    ) -> Result<Completed>;

    /// Accepts `function` durably, to run in the background (at `at`, when given).
    async fn enqueue(
        &self,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        at: Option<u64>,
        limits: &Limits,
    ) -> Result<(String, bool)>;

    /// Tells it that what it waits for may have come.
    async fn wake(&self) -> Result<()>;

    /// Stops its running invocation; whether one was running.
    async fn interrupt(&self) -> Result<bool>;

    /// Activates it now, retrying a replay that failed before.
    async fn resume(&self) -> Result<()>;

    /// Deletes it, with everything it stored.
    async fn delete(&self) -> Result<()>;

    /// Moves it to another version of its component, if its history replays there.
    async fn set_version(&self, version: u64, method: UpdateMethod) -> Result<WorkerRecord>;

    /// Where it stands.
    async fn status(&self) -> Result<WorkerStatus>;

    /// Reverts it to its state after oplog entry `to`; the range of entries skipped.
    async fn revert(&self, to: OplogIndex) -> Result<(OplogIndex, OplogIndex)>;

    /// Makes it, new, with `source`'s history up to entry `at`; the entry it forked at.
    async fn fork_from(
        &self,
        source: &WorkerId,
        at: Option<OplogIndex>,
        limits: &Limits,
    ) -> Result<OplogIndex>;

    /// What is at `path` of its files.
    async fn files(&self, path: &str) -> Result<crate::files::FileView>;
}

/// Where [`Executor::revert`] takes a worker back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevertTo {
    /// Its state after this oplog entry (one that ends an invocation, or its creation).
    Index(OplogIndex),
    /// Its state before its last this many invocations.
    LastInvocations(u32),
}

/// A worker this executor runs.
pub(crate) struct Local<'a> {
    executor: &'a Executor,
    id: &'a WorkerId,
}

/// A worker another executor runs.
pub(crate) struct Remote<'a> {
    executor: &'a Executor,
    router: &'a Router,
    id: &'a WorkerId,
}

/// Where [`Executor::at`] found a worker.
pub(crate) enum Placed<'a> {
    Local(Local<'a>),
    Remote(Remote<'a>),
}

impl Executor {
    /// The worker `id`, here or at its owner.
    pub(crate) fn at<'a>(&'a self, id: &'a WorkerId) -> Placed<'a> {
        match self.inner.router.get() {
            Some(router) if !self.inner.fencing.holds(id) => Placed::Remote(Remote {
                executor: self,
                router,
                id,
            }),
            _ => Placed::Local(Local { executor: self, id }),
        }
    }

    /// Serves one HTTP request with the latest version of a tenant's component exporting
    /// `wasi:http/incoming-handler`, in a fresh instance, recording nothing: here, or, in a
    /// process that runs no shard (the gateway role alone), on an executor over gRPC, so that
    /// guest code runs only on executors.
    pub async fn serve_http(
        &self,
        tenant: &invicta_model::TenantId,
        component: &invicta_model::ComponentName,
        mut request: crate::types::HandlerRequest,
        body: crate::types::RequestBody,
        limits: &Limits,
    ) -> Result<crate::types::StreamedResponse> {
        match self.inner.router.get() {
            // Over gRPC the request and the answer go whole.
            Some(router) if self.inner.fencing.owned().is_empty() => {
                request.body = match body {
                    crate::types::RequestBody::Whole(bytes) if !bytes.is_empty() => bytes,
                    crate::types::RequestBody::Whole(_) => request.body,
                    crate::types::RequestBody::Streamed(stream) => {
                        use http_body_util::BodyExt;
                        stream
                            .collect()
                            .await
                            .map_err(Error::InvalidRequest)?
                            .to_bytes()
                    }
                };
                router
                    .serve_http(tenant, component, &request, limits)
                    .await
                    .map(crate::types::StreamedResponse::from)
            }
            _ => Ok(crate::serve::stream(
                self.serve_here(tenant, component, request, body, limits)
                    .await?,
            )),
        }
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
        self.at(id).create(env, args, version, limits).await
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
        self.at(id)
            .invoke(function, params, idempotency_key, limits)
            .await
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
        self.at(id)
            .enqueue(function, params, idempotency_key, schedule_at_ms, limits)
            .await
    }

    /// Tells the worker that what it waits for may have come.
    pub(crate) async fn wake(&self, id: &WorkerId) -> Result<()> {
        self.at(id).wake().await
    }

    /// Stops the worker's running invocation (it fails with `interrupted`, leaving no trace in
    /// the worker's state); returns whether one was running.
    pub async fn interrupt(&self, id: &WorkerId) -> Result<bool> {
        if self.worker_record(id).await?.is_none() {
            return Err(Error::WorkerNotFound(id.to_string()));
        }
        self.at(id).interrupt().await
    }

    /// Activates the worker now (replaying its oplog), retrying a replay that failed before.
    pub async fn resume(&self, id: &WorkerId) -> Result<WorkerStatus> {
        let placed = self.at(id);
        placed.resume().await?;
        placed.status().await
    }

    /// Deletes the worker: its running invocation is interrupted, its queued and pending ones
    /// are dropped, and its record, oplog and invocation records are removed.
    pub async fn delete_worker(&self, id: &WorkerId) -> Result<()> {
        self.at(id).delete().await
    }

    /// Moves the worker to another version of its component. Allowed only when its history
    /// replays on that version: every function it was invoked with must exist there with the
    /// same signature, and a trial replay must reproduce every recorded result; otherwise the
    /// worker stays where it was and the reason is returned.
    pub async fn set_version(
        &self,
        id: &WorkerId,
        version: u64,
        method: UpdateMethod,
    ) -> Result<WorkerRecord> {
        self.at(id).set_version(version, method).await
    }

    /// A worker's status.
    pub async fn status(&self, id: &WorkerId) -> Result<WorkerStatus> {
        self.at(id).status().await
    }

    /// What is at `path` of the worker's files (`""` or `/`: its root): a directory's entries,
    /// sorted, or a file's bytes. Links are not followed. A suspended worker is activated.
    pub async fn files(&self, id: &WorkerId, path: &str) -> Result<crate::files::FileView> {
        if path.len() > 4_096 {
            return Err(Error::InvalidPath(format!(
                "a path of {} bytes; the limit is 4096",
                path.len()
            )));
        }
        if self.worker_record(id).await?.is_none() {
            return Err(Error::WorkerNotFound(id.to_string()));
        }
        self.at(id).files(path).await
    }

    /// Forks `source` into the new worker `target`: its history up to entry `at` (one that
    /// ends an invocation; `None`: the last), then its own. Returns the fork's record and the
    /// entry it forked at.
    pub async fn fork(
        &self,
        source: &WorkerId,
        target: &WorkerId,
        at: Option<OplogIndex>,
        limits: &Limits,
    ) -> Result<(WorkerRecord, OplogIndex)> {
        let at = self.at(target).fork_from(source, at, limits).await?;
        let record = self
            .worker_record(target)
            .await?
            .ok_or_else(|| Error::WorkerNotFound(target.to_string()))?;
        Ok((record, at))
    }

    /// Reverts the worker: the entries after the point are kept in its oplog but skipped by
    /// replay, and their invocations' keys may run again. Returns the range skipped.
    pub async fn revert(&self, id: &WorkerId, to: RevertTo) -> Result<(OplogIndex, OplogIndex)> {
        let to = match to {
            RevertTo::Index(index) => index,
            RevertTo::LastInvocations(count) => self.revert_point_before_last(id, count).await?,
        };
        self.at(id).revert(to).await
    }
}

impl WorkerAt for Local<'_> {
    async fn create(
        &self,
        env: Vec<(String, String)>,
        args: Vec<String>,
        version: Option<u64>,
        limits: &Limits,
    ) -> Result<WorkerRecord> {
        match self
            .executor
            .create(self.id, env, args, version, limits.workers_max)
            .await?
        {
            (record, true) => Ok(record),
            (_, false) => Err(Error::WorkerExists(self.id.to_string())),
        }
    }

    async fn invoke(
        &self,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        limits: &Limits,
    ) -> Result<Completed> {
        let (invocation, running) = self
            .executor
            .prepare(self.id, function, params, idempotency_key, limits)
            .await?;
        let completed = self
            .executor
            .run(self.id, &std::sync::Arc::new(invocation), running)
            .await?;
        self.executor
            .count_fuel(&self.id.tenant, completed.fuel_consumed);
        Ok(completed)
    }

    async fn enqueue(
        &self,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        at: Option<u64>,
        limits: &Limits,
    ) -> Result<(String, bool)> {
        self.executor
            .enqueue_here(self.id, function, params, idempotency_key, at, limits)
            .await
    }

    async fn wake(&self) -> Result<()> {
        self.executor.wake_here(self.id).await
    }

    async fn interrupt(&self) -> Result<bool> {
        Ok(self.executor.interrupt_here(self.id))
    }

    async fn resume(&self) -> Result<()> {
        self.executor.resume_here(self.id).await
    }

    async fn delete(&self) -> Result<()> {
        self.executor.delete_here(self.id).await
    }

    async fn set_version(&self, version: u64, method: UpdateMethod) -> Result<WorkerRecord> {
        self.executor
            .set_version_here(self.id, version, method)
            .await
    }

    async fn status(&self) -> Result<WorkerStatus> {
        self.executor.status_here(self.id).await
    }

    async fn files(&self, path: &str) -> Result<crate::files::FileView> {
        self.executor.files_here(self.id, path).await
    }

    async fn revert(&self, to: OplogIndex) -> Result<(OplogIndex, OplogIndex)> {
        self.executor.revert_here(self.id, to).await
    }

    async fn fork_from(
        &self,
        source: &WorkerId,
        at: Option<OplogIndex>,
        limits: &Limits,
    ) -> Result<OplogIndex> {
        let (_, at) = self
            .executor
            .fork_here(self.id, source, at, limits.workers_max)
            .await?;
        Ok(at)
    }
}

impl Remote<'_> {
    /// The worker's record, as its owner left it in the store.
    async fn record(&self) -> Result<WorkerRecord> {
        self.executor
            .worker_record(self.id)
            .await?
            .ok_or_else(|| Error::WorkerNotFound(self.id.to_string()))
    }
}

impl WorkerAt for Remote<'_> {
    async fn create(
        &self,
        env: Vec<(String, String)>,
        args: Vec<String>,
        version: Option<u64>,
        limits: &Limits,
    ) -> Result<WorkerRecord> {
        self.router
            .create_worker(self.id, &env, &args, version, limits)
            .await?;
        self.record().await
    }

    async fn invoke(
        &self,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        limits: &Limits,
    ) -> Result<Completed> {
        self.router
            .invoke(self.id, function, params, idempotency_key, limits)
            .await
    }

    async fn enqueue(
        &self,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        at: Option<u64>,
        limits: &Limits,
    ) -> Result<(String, bool)> {
        self.router
            .enqueue(self.id, function, params, idempotency_key, at, limits)
            .await
    }

    async fn wake(&self) -> Result<()> {
        self.router.wake(self.id).await
    }

    async fn interrupt(&self) -> Result<bool> {
        self.router.interrupt(self.id).await
    }

    async fn resume(&self) -> Result<()> {
        self.router.control(self.id, Control::Resume).await
    }

    async fn delete(&self) -> Result<()> {
        self.router.control(self.id, Control::Delete).await
    }

    async fn set_version(&self, version: u64, method: UpdateMethod) -> Result<WorkerRecord> {
        self.router
            .control(self.id, Control::SetVersion(version, method))
            .await?;
        self.record().await
    }

    /// Whether it is in memory only its executor knows; if that one cannot say now (moving,
    /// restarting), the store's view follows.
    async fn status(&self) -> Result<WorkerStatus> {
        match self.router.status(self.id).await {
            Ok(status) => Ok(status),
            Err(_) => self.executor.status_here(self.id).await,
        }
    }

    async fn revert(&self, to: OplogIndex) -> Result<(OplogIndex, OplogIndex)> {
        self.router.revert(self.id, to).await
    }

    async fn files(&self, path: &str) -> Result<crate::files::FileView> {
        self.router.files(self.id, path).await
    }

    async fn fork_from(
        &self,
        source: &WorkerId,
        at: Option<OplogIndex>,
        limits: &Limits,
    ) -> Result<OplogIndex> {
        self.router.fork(self.id, source, at, limits).await
    }
}

impl WorkerAt for Placed<'_> {
    async fn create(
        &self,
        env: Vec<(String, String)>,
        args: Vec<String>,
        version: Option<u64>,
        limits: &Limits,
    ) -> Result<WorkerRecord> {
        match self {
            Placed::Local(w) => w.create(env, args, version, limits).await,
            Placed::Remote(w) => w.create(env, args, version, limits).await,
        }
    }

    async fn invoke(
        &self,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        limits: &Limits,
    ) -> Result<Completed> {
        match self {
            Placed::Local(w) => w.invoke(function, params, idempotency_key, limits).await,
            Placed::Remote(w) => w.invoke(function, params, idempotency_key, limits).await,
        }
    }

    async fn enqueue(
        &self,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        at: Option<u64>,
        limits: &Limits,
    ) -> Result<(String, bool)> {
        match self {
            Placed::Local(w) => {
                w.enqueue(function, params, idempotency_key, at, limits)
                    .await
            }
            Placed::Remote(w) => {
                w.enqueue(function, params, idempotency_key, at, limits)
                    .await
            }
        }
    }

    async fn wake(&self) -> Result<()> {
        match self {
            Placed::Local(w) => w.wake().await,
            Placed::Remote(w) => w.wake().await,
        }
    }

    async fn interrupt(&self) -> Result<bool> {
        match self {
            Placed::Local(w) => w.interrupt().await,
            Placed::Remote(w) => w.interrupt().await,
        }
    }

    async fn resume(&self) -> Result<()> {
        match self {
            Placed::Local(w) => w.resume().await,
            Placed::Remote(w) => w.resume().await,
        }
    }

    async fn delete(&self) -> Result<()> {
        match self {
            Placed::Local(w) => w.delete().await,
            Placed::Remote(w) => w.delete().await,
        }
    }

    async fn set_version(&self, version: u64, method: UpdateMethod) -> Result<WorkerRecord> {
        match self {
            Placed::Local(w) => w.set_version(version, method).await,
            Placed::Remote(w) => w.set_version(version, method).await,
        }
    }

    async fn status(&self) -> Result<WorkerStatus> {
        match self {
            Placed::Local(w) => w.status().await,
            Placed::Remote(w) => w.status().await,
        }
    }

    async fn revert(&self, to: OplogIndex) -> Result<(OplogIndex, OplogIndex)> {
        match self {
            Placed::Local(w) => w.revert(to).await,
            Placed::Remote(w) => w.revert(to).await,
        }
    }

    async fn fork_from(
        &self,
        source: &WorkerId,
        at: Option<OplogIndex>,
        limits: &Limits,
    ) -> Result<OplogIndex> {
        match self {
            Placed::Local(w) => w.fork_from(source, at, limits).await,
            Placed::Remote(w) => w.fork_from(source, at, limits).await,
        }
    }

    async fn files(&self, path: &str) -> Result<crate::files::FileView> {
        match self {
            Placed::Local(w) => w.files(path).await,
            Placed::Remote(w) => w.files(path).await,
        }
    }
}
