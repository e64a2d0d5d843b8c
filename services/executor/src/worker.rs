//! One worker's actor: a task that owns the worker's wasmtime store and runs its invocations one
//! at a time, in arrival order.
//!
//! Life of an invocation here: dedupe its idempotency key (a waiter joins a running invocation;
//! a stored outcome is returned), make sure an instance exists (replaying the oplog if not), run
//! the function live with a fuel budget and a deadline, append `ExportedFunctionCompleted`, and
//! hand the entries with the result record to the group committer. The actor goes on with the
//! next invocation while that commit is in flight; the caller hears back only once it is durable.
//!
//! A failed invocation (trap, fuel, memory, deadline) drops the instance: the next invocation
//! rebuilds it by replaying the successful invocations, so the failure leaves no trace in state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use invicta_component_registry::Compiled;
use invicta_engine::values::{placeholder, val_to_value_with, value_to_val_with};
use invicta_model::oplog::{FailureKind, InvocationLimits, OplogEntry, OplogIndex};
use invicta_model::{Value, WorkerId, usage};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::Instrument;
use wasmtime::component::{Instance, InstancePre};

use crate::archive;
use crate::commit::{self, Commit};
use crate::context::Context;
use crate::error::Error;
use crate::host::{self, Durability, WorkerCtx};
use crate::records::{self, InvocationRecord, StoredOutcome, WorkerRecord};
use crate::snapshots;
use crate::support::{lock, now_ms};
use crate::suspend::{Waits, Wake};
use crate::types::{Completed, Outcome};

/// How many times activation evicts idle workers to find a free instance slot.
const EVICTION_ATTEMPTS: u32 = 5;

/// Idle workers suspended per eviction round.
const EVICTION_BATCH: usize = 16;

/// Fuel for instantiation and replay: bounded only to catch a runaway start function.
const REPLAY_FUEL: u64 = u64::MAX / 4;

#[derive(Clone)]
pub(crate) struct Invocation {
    pub function: String,
    pub params: Vec<Value>,
    pub idempotency_key: String,
    /// What it asks ([`records::fingerprint`]), which its key is bound to; empty when the
    /// executor made the key.
    pub fingerprint: String,
    /// The key was made by the executor, so it cannot have been seen before.
    pub key_is_new: bool,
    /// Accepted by `enqueue`: its pending record is cleared with its outcome.
    pub enqueued: bool,
    /// The fuel budget, from the tenant's plan.
    pub fuel: u64,
    /// The worker's memory limit, from the tenant's plan (applies from its next activation).
    pub memory_bytes: u64,
    /// The caller's span: the worker's work on this invocation is recorded under it, across
    /// the hand-off to the actor and to the committer.
    pub span: tracing::Span,
    /// The hosts the tenant's plan lets the worker reach (`None`: any public host).
    pub egress_hosts: Option<Vec<String>>,
    /// The tenant's worker quota, for the invocations this one makes.
    pub workers_max: u64,
    /// The tenant's background invocations at once, for the enqueues this one makes.
    pub concurrent_invocations: u64,
    /// When it runs again after a failure (background invocations only).
    pub retry: Option<invicta_model::retry::RetryPolicy>,
    /// The plan's retention of archived oplog segments, in days.
    pub archive_retention_days: Option<u32>,
    /// The plan's bytes of files per worker (`None`: the executor's ceiling).
    pub files_per_worker_bytes: Option<u64>,
    /// Its runs that failed before this one.
    pub runs: u32,
    /// Its pending record as accepted, rewritten when a failed run is retried.
    pub pending: Option<Arc<records::PendingRecord>>,
}

pub(crate) enum Command {
    Invoke(Arc<Invocation>, oneshot::Sender<Outcome>),
    /// Activate now (replaying, and finishing an invocation cut off by a crash).
    Resume,
    /// Suspend now if idle.
    Suspend,
    /// Activate now and say whether replay succeeded.
    Activate(oneshot::Sender<Result<(), Error>>),
    /// Wait for the worker's commits and stop the actor (the worker stays in the store).
    Stop(oneshot::Sender<()>),
    /// Delete the worker: its record, oplog, invocation records and pending invocations.
    Delete(oneshot::Sender<Result<(), Error>>),
    /// Take a snapshot now (activating the worker first), for a snapshot-based update.
    Snapshot(oneshot::Sender<Result<(), Error>>),
    /// What is at a path of the worker's files (activating it first).
    Files(
        String,
        oneshot::Sender<Result<crate::files::FileView, Error>>,
    ),
}

pub(crate) enum SendError {
    Full(usize),
    Stopped,
}

/// Where a worker stands, as its handles see it: one state, which only its actor changes
/// (but for [`WorkerHandle::clear_failure`], which forgets a failure so that the next
/// activation tries again).
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// No instance in memory: never activated, suspended when idle, or after a failure.
    Suspended,
    /// Being instantiated: the component's start functions run (an interrupt stops them).
    Instantiating,
    /// An instance in memory (replaying, or waiting for work).
    Active,
    /// An instance running a live invocation (an interrupt stops it).
    Running,
    /// An invocation suspended in a wait, without an instance, until it is woken.
    Parked { wake: Wake },
    /// Its oplog cannot be replayed: every invocation is refused with this until a resume.
    Failed(String),
}

/// State the actor shares with its handles and its commit watchers.
struct Shared {
    queued: AtomicU64,
    /// The encoded bytes of the oplog entries this actor has committed (for the snapshot
    /// policy's size trigger).
    oplog_bytes: AtomicU64,
    /// The memory limit the next activation uses.
    memory_bytes: AtomicU64,
    /// When the worker last took an invocation (ms since the epoch): eviction takes the oldest.
    last_used_ms: AtomicU64,
    phase: Mutex<Phase>,
    /// Invocations running or waiting for their commit, by idempotency key, with their waiters.
    inflight: Mutex<HashMap<String, Vec<oneshot::Sender<Outcome>>>>,
    /// What each key in flight asks: the same key for another request is refused.
    inflight_fingerprints: Mutex<HashMap<String, String>>,
    commits_in_flight: AtomicUsize,
    commits_done: Notify,
    /// A commit failed: the instance's memory is ahead of the durable oplog.
    poisoned: AtomicBool,
    /// Wakes the running invocation (or instantiation) to stop it.
    interrupt: Notify,
    /// A request to stop the invocation suspended in a wait.
    interrupt_parked: AtomicBool,
    /// The worker is being deleted: queued invocations are refused.
    deleting: AtomicBool,
    /// Where its outgoing requests may go, as of its latest invocation.
    egress: Arc<Mutex<crate::http::Egress>>,
    /// Its latest invocation's limits, for the invocations it makes through the host interface.
    limits: Arc<Mutex<crate::limits::Limits>>,
}

#[derive(Clone)]
pub(crate) struct WorkerHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    depth: usize,
    /// The component version the worker runs.
    pub compiled: Arc<Compiled>,
}

impl WorkerHandle {
    /// Whether both handles reach the same actor.
    pub(crate) fn same_actor(&self, other: &WorkerHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    pub(crate) async fn send(&self, command: Command) -> Result<(), SendError> {
        let is_invoke = matches!(command, Command::Invoke(..));
        if is_invoke {
            self.shared.queued.fetch_add(1, Ordering::Relaxed);
        }
        let result = match self.tx.try_send(command) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Command::Invoke(..))) => {
                Err(SendError::Full(self.depth))
            }
            Err(mpsc::error::TrySendError::Full(command)) => {
                self.tx.send(command).await.map_err(|_| SendError::Stopped)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Stopped),
        };
        if result.is_err() && is_invoke {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }

    /// Whether the worker holds an instance but has nothing to do.
    pub(crate) fn idle_since(&self) -> Option<u64> {
        let active = *lock(&self.shared.phase) == Phase::Active;
        let queued = self.shared.queued.load(Ordering::Relaxed);
        let busy = !lock(&self.shared.inflight).is_empty();
        (active && queued == 0 && !busy).then(|| self.shared.last_used_ms.load(Ordering::Relaxed))
    }

    /// Stops the running live invocation, if there is one; returns whether there was.
    pub(crate) fn interrupt(&self) -> bool {
        let phase = lock(&self.shared.phase).clone();
        match phase {
            Phase::Instantiating => {
                self.shared.interrupt.notify_waiters();
                true
            }
            Phase::Running => {
                // Also kept, for a call that suspends as the interrupt arrives.
                self.shared.interrupt_parked.store(true, Ordering::Release);
                self.shared.interrupt.notify_waiters();
                true
            }
            // One suspended in a wait is stopped by its actor.
            Phase::Parked { .. } => {
                self.shared.interrupt_parked.store(true, Ordering::Release);
                let _ = self.tx.try_send(Command::Resume);
                true
            }
            Phase::Suspended | Phase::Active | Phase::Failed(_) => false,
        }
    }

    /// Refuses the invocations queued from now on and stops the running one.
    pub(crate) fn start_deleting(&self) {
        self.shared.deleting.store(true, Ordering::Release);
        self.shared.interrupt.notify_waiters();
    }

    /// Forgets a failed replay, so that the next activation tries again.
    pub(crate) fn clear_failure(&self) -> Option<String> {
        let mut phase = lock(&self.shared.phase);
        match std::mem::replace(&mut *phase, Phase::Suspended) {
            Phase::Failed(message) => Some(message),
            other => {
                *phase = other;
                None
            }
        }
    }

    pub(crate) fn pending(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    pub(crate) fn state(&self) -> (String, Option<String>) {
        match lock(&self.shared.phase).clone() {
            Phase::Failed(error) => ("failed".into(), Some(error)),
            Phase::Active | Phase::Running => ("active".into(), None),
            Phase::Suspended | Phase::Instantiating | Phase::Parked { .. } => {
                ("suspended".into(), None)
            }
        }
    }
}

struct Active {
    store: wasmtime::Store<WorkerCtx>,
    instance: Instance,
    durability: host::Shared,
    /// The resources the worker returned and still owns on the API's behalf, by handle.
    handles: HashMap<String, wasmtime::component::ResourceAny>,
    /// The names of the resources the instance exports, by their type in this instance.
    resource_names: Vec<(wasmtime::component::ResourceType, String)>,
    /// Its slot among the baseline tier's instances, if it runs there.
    _baseline_slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

struct Actor {
    /// What the actor needs of its executor.
    inner: Arc<Context>,
    /// The executor's directory of workers, which the actor leaves when it stops.
    workers: Arc<Directory>,
    /// The calls its host interface makes to other workers.
    calls: Arc<dyn crate::hostapi::Workers>,
    id: WorkerId,
    record: WorkerRecord,
    compiled: Arc<Compiled>,
    /// What the active instance is made from: the pooled template, or the on-demand one for
    /// a worker larger than a pool slot.
    pre: InstancePre<WorkerCtx>,
    pooled_pre: InstancePre<WorkerCtx>,
    large_pre: Option<InstancePre<WorkerCtx>>,
    shared: Arc<Shared>,
    active: Option<Active>,
    rx: mpsc::Receiver<Command>,
    /// Requests, from the worker's outgoing HTTP, to make its pending entries durable now.
    checkpoint_tx: crate::http::Checkpoints,
    checkpoint_rx: mpsc::UnboundedReceiver<oneshot::Sender<bool>>,
    /// Requests, from the worker's long waits, to suspend it.
    waits: Waits,
    suspend_rx: mpsc::UnboundedReceiver<Wake>,
    /// The invocation that is suspended in a wait, and what it waits for.
    parked: Option<Parked>,
    /// Invocations that arrived while one was suspended in a wait: they run after it.
    deferred: VecDeque<(Arc<Invocation>, oneshot::Sender<Outcome>)>,
    /// The wake-up key this worker has in the store (its deadline, ms).
    wake_set: Option<u64>,
    /// The component's exported snapshot interface, when it has a whole one.
    snapshot_interface: Option<String>,
    /// Invocations completed since the last snapshot (or the recovery), and the next oplog
    /// index then.
    since_snapshot: u64,
    snapshot_at: OplogIndex,
    /// [`Shared::oplog_bytes`] then.
    snapshot_at_bytes: u64,
    /// The worker's snapshot record as last read or written: this actor is its only writer.
    snapshots: snapshots::SnapshotRecord,
    /// The keys of the usage counters its commits add to.
    meter: crate::meter::Meter,
    /// When it is snapshotted: its component's policy, else the executor's (read at each
    /// activation and after each snapshot).
    snapshot_policy: snapshots::Policy,
    /// The names of the resources its component exports, by type (from their constructors
    /// and methods), for the handles the API shows.
    resource_names: Vec<(wasmtime::component::ResourceType, String)>,
}

/// An invocation suspended in a wait.
struct Parked {
    key: String,
    wake: Wake,
}

/// The workers with an actor, by id: the executor's directory, which actors leave when they
/// stop.
pub(crate) type Directory = Mutex<HashMap<WorkerId, WorkerHandle>>;

/// What an actor is given by its executor: the shared context, the directory it leaves, and
/// the calls its host interface makes to other workers.
pub(crate) struct Surroundings {
    pub ctx: Arc<Context>,
    pub workers: Arc<Directory>,
    pub calls: Arc<dyn crate::hostapi::Workers>,
}

/// Asks up to `count` of the longest-idle workers to suspend; how many were asked.
pub(crate) async fn evict_idle(workers: &Directory, count: usize) -> usize {
    let mut idle: Vec<(u64, WorkerHandle)> = lock(workers)
        .values()
        .filter_map(|h| h.idle_since().map(|t| (t, h.clone())))
        .collect();
    idle.sort_by_key(|(t, _)| *t);
    let mut asked = 0;
    for (_, handle) in idle.into_iter().take(count) {
        if handle.send(Command::Suspend).await.is_ok() {
            asked += 1;
        }
    }
    asked
}

pub(crate) fn spawn(
    surroundings: Surroundings,
    id: WorkerId,
    record: WorkerRecord,
    compiled: Arc<Compiled>,
    pre: InstancePre<WorkerCtx>,
) -> WorkerHandle {
    let Surroundings {
        ctx: inner,
        workers,
        calls,
    } = surroundings;
    let depth = inner.config.queue_depth.max(1);
    let (tx, rx) = mpsc::channel(depth);
    let shared = Arc::new(Shared {
        queued: AtomicU64::new(0),
        memory_bytes: AtomicU64::new(inner.engine.config.memory_bytes_max),
        last_used_ms: AtomicU64::new(now_ms()),
        phase: Mutex::new(Phase::Suspended),
        inflight: Mutex::new(HashMap::new()),
        inflight_fingerprints: Mutex::new(HashMap::new()),
        commits_in_flight: AtomicUsize::new(0),
        oplog_bytes: AtomicU64::new(0),
        commits_done: Notify::new(),
        poisoned: AtomicBool::new(false),
        interrupt: Notify::new(),
        interrupt_parked: AtomicBool::new(false),
        deleting: AtomicBool::new(false),
        egress: Arc::new(Mutex::new(crate::http::Egress {
            config: inner.http_config.clone(),
            hosts: None,
            tls: inner.http_tls.clone(),
        })),
        limits: Arc::new(Mutex::new(crate::limits::Limits {
            fuel_per_invocation: inner.config.fuel_per_invocation,
            fuel_per_month: u64::MAX,
            memory_per_worker_bytes: inner.engine.config.memory_bytes_max,
            workers_max: u64::MAX,
            egress_hosts: None,
            concurrent_invocations: u64::MAX,
            retry: None,
            archive_retention_days: None,
            files_per_worker_bytes: None,
        })),
    });
    let (checkpoint_tx, checkpoint_rx) = mpsc::unbounded_channel();
    let (suspend_tx, suspend_rx) = mpsc::unbounded_channel();
    let waits = Waits::new(
        suspend_tx,
        Duration::from_millis(inner.config.suspend_wait_ms),
    );
    let handle_compiled = compiled.clone();
    let snapshot_interface = match snapshots::exports(&pre) {
        Some((name, true)) => Some(name),
        Some((name, false)) => {
            tracing::warn!(worker = %id, interface = %name, "the component exports a snapshot interface without save-snapshot and load-snapshot: it is not snapshotted");
            None
        }
        None => None,
    };
    let actor = Actor {
        inner,
        workers,
        calls,
        id,
        record,
        compiled,
        pooled_pre: pre.clone(),
        large_pre: None,
        pre,
        shared: shared.clone(),
        active: None,
        rx,
        checkpoint_tx,
        checkpoint_rx,
        waits,
        suspend_rx,
        parked: None,
        deferred: VecDeque::new(),
        wake_set: None,
        snapshot_interface,
        since_snapshot: 0,
        snapshot_at: 0,
        snapshot_at_bytes: 0,
        snapshots: snapshots::SnapshotRecord::default(),
        meter: crate::meter::Meter::default(),
        snapshot_policy: snapshots::Policy {
            every_invocations: 0,
            every_entries: 0,
            every_oplog_bytes: 0,
        },
        resource_names: handle_compiled
            .exports
            .first()
            .map(|f| f.resources.as_ref().clone())
            .unwrap_or_default(),
    };
    tokio::spawn(actor.run());
    WorkerHandle {
        tx,
        shared,
        depth,
        compiled: handle_compiled,
    }
}

/// What a completed call used, for the usage ledger.
#[derive(Debug, Clone, Copy)]
struct CallUsage {
    wall_us: u64,
    /// The worker's peak linear memory, in bytes.
    memory_bytes: u64,
}

/// How an invocation ended, before it is recorded.
enum Ran {
    Completed {
        results: Vec<Value>,
        fuel_consumed: u64,
        usage: CallUsage,
    },
    Failed {
        kind: FailureKind,
        message: String,
        /// Fuel burnt before the failure: billed like any other.
        fuel_consumed: u64,
    },
    /// It waits (on a deadline or a promise) and asked to be suspended meanwhile.
    Suspended { wake: Wake, fuel_consumed: u64 },
}

impl Actor {
    async fn run(mut self) {
        let idle = Duration::from_millis(self.inner.config.idle_suspend_ms.max(1));
        loop {
            if self.parked.is_none()
                && let Some((invocation, reply)) = self.deferred.pop_front()
            {
                self.invoke(invocation, reply).await;
                continue;
            }
            let wait = match &self.parked {
                Some(Parked {
                    wake: Wake::At(at), ..
                }) => Duration::from_millis(at.saturating_sub(now_ms())),
                // A promise: woken by its completion.
                Some(_) => Duration::from_secs(24 * 3600),
                None => idle,
            };
            let command = match tokio::time::timeout(wait, self.rx.recv()).await {
                Ok(Some(command)) => command,
                Ok(None) => break,
                Err(_) if self.parked.is_some() => {
                    self.unpark(false).await;
                    continue;
                }
                Err(_) => {
                    if self.suspend().await {
                        break;
                    }
                    continue;
                }
            };
            match command {
                Command::Invoke(invocation, reply) if self.parked.is_some() => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    if let Some(refused) = self.reused(&invocation) {
                        let _ = reply.send(Err(refused));
                        continue;
                    }
                    let mut inflight = lock(&self.shared.inflight);
                    match inflight.get_mut(&invocation.idempotency_key) {
                        Some(waiters) => waiters.push(reply),
                        None => {
                            drop(inflight);
                            self.deferred.push_back((invocation, reply));
                        }
                    }
                }
                Command::Resume if self.parked.is_some() => {
                    if self.shared.interrupt_parked.swap(false, Ordering::AcqRel) {
                        self.interrupt_parked().await;
                    } else {
                        self.unpark(false).await;
                    }
                }
                Command::Activate(reply) if self.parked.is_some() => {
                    let _ = reply.send(Ok(()));
                }
                Command::Suspend if self.parked.is_some() => {}
                Command::Invoke(invocation, reply) => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    self.shared.last_used_ms.store(now_ms(), Ordering::Relaxed);
                    self.shared
                        .memory_bytes
                        .store(invocation.memory_bytes, Ordering::Relaxed);
                    lock(&self.shared.egress).hosts = invocation.egress_hosts.clone();
                    // Background invocations do not carry the plan's files quota: the last
                    // one known stays.
                    let files_per_worker_bytes = invocation
                        .files_per_worker_bytes
                        .or(lock(&self.shared.limits).files_per_worker_bytes);
                    *lock(&self.shared.limits) = crate::limits::Limits {
                        fuel_per_invocation: invocation.fuel,
                        fuel_per_month: u64::MAX,
                        memory_per_worker_bytes: invocation.memory_bytes,
                        workers_max: invocation.workers_max,
                        egress_hosts: invocation.egress_hosts.clone(),
                        concurrent_invocations: invocation.concurrent_invocations,
                        retry: None,
                        archive_retention_days: invocation.archive_retention_days,
                        files_per_worker_bytes,
                    };
                    self.invoke(invocation, reply).await;
                }
                Command::Resume => {
                    if let Err(e) = self.ensure_active().await {
                        tracing::error!(worker = %self.id, error = %e, "resume worker");
                    }
                }
                Command::Activate(reply) => {
                    let result = match self.failure() {
                        Some(error) => Err(Error::WorkerFailed(error)),
                        None => self.ensure_active().await,
                    };
                    let _ = reply.send(result);
                }
                Command::Snapshot(reply) if self.parked.is_some() => {
                    let _ = reply.send(Err(Error::IncompatibleVersion(
                        "the worker is waiting inside an invocation: a snapshot is taken between invocations".into(),
                    )));
                }
                Command::Snapshot(reply) => {
                    let result = match self.failure() {
                        Some(error) => Err(Error::WorkerFailed(error)),
                        None => self.snapshot_now().await,
                    };
                    let _ = reply.send(result);
                }
                Command::Files(path, reply) => {
                    // A worker waiting inside an invocation has its files as it left them.
                    let ready = match self.failure() {
                        Some(error) => Err(Error::WorkerFailed(error)),
                        None if self.parked.is_some() => Ok(()),
                        None => self.ensure_active().await,
                    };
                    let result = match ready {
                        Ok(()) => self.read_files(path).await,
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(result);
                }
                Command::Stop(reply) => {
                    self.active = None;
                    self.set_phase(Phase::Suspended);
                    self.refuse_deferred(false);
                    self.stop().await;
                    let _ = reply.send(());
                    break;
                }
                Command::Delete(reply) => {
                    self.active = None;
                    self.set_phase(Phase::Suspended);
                    self.wait_for_commits().await;
                    let result = self.delete().await;
                    if result.is_ok() {
                        self.refuse_deferred(true);
                        if let Some(parked) = self.parked.take() {
                            self.finish(
                                &parked.key,
                                Err(Error::WorkerNotFound(self.id.to_string())),
                            );
                        }
                    }
                    self.stop().await;
                    let _ = reply.send(result);
                    break;
                }
                Command::Suspend => {
                    if self.rx.is_empty() && self.suspend().await {
                        break;
                    }
                }
            }
        }
    }

    /// Drops the instance and stops the actor if nothing is queued; returns whether it stopped.
    async fn suspend(&mut self) -> bool {
        if let Some(active) = self.active.take() {
            self.set_phase(Phase::Suspended);
            let index = host::lock(&active.durability).next_index();
            drop(active);
            let entry = OplogEntry::Suspended {
                timestamp_ms: now_ms(),
            };
            let (done, wait) = commit::done_channel();
            let request = Commit::new(&self.id).entry(index, &entry).request(done);
            self.inner.committer.submit(request).await;
            if let Ok(Err(e)) = wait.await {
                tracing::warn!(worker = %self.id, error = %e, "record suspension");
            }
            self.inner.metrics.suspensions.inc();
            tracing::debug!(worker = %self.id, "worker suspended");
        }
        self.wait_for_commits().await;
        if !self.rx.is_empty() {
            return false;
        }
        self.remove_files().await;
        // Whatever slips in meanwhile goes back to its caller, who starts a new actor.
        self.leave();
        true
    }

    /// What is at `path` of the worker's files.
    fn read_files(
        &self,
        path: String,
    ) -> impl Future<Output = Result<crate::files::FileView, Error>> + use<> {
        let root = crate::files::worker_dir(self.inner.files.dir(), &self.id);
        let read_only = self
            .active
            .as_ref()
            .map(|a| a.store.data().files.read_only.clone())
            .unwrap_or_default();
        async move {
            let shown = path.clone();
            tokio::task::spawn_blocking(move || crate::files::read(&root, &read_only, &path))
                .await
                .map_err(|e| Error::Engine(format!("read the worker's files: {e}")))?
                .map_err(|e| match e {
                    crate::files::ReadError::InvalidPath(m) => Error::InvalidPath(m),
                    crate::files::ReadError::NotFound => Error::FileNotFound(shown),
                    crate::files::ReadError::Link => Error::InvalidPath(format!(
                        "`{shown}` goes through a symbolic link, which the API does not follow"
                    )),
                    crate::files::ReadError::TooLarge(size) => Error::FileTooLarge {
                        size,
                        limit: crate::files::READ_BYTES_MAX,
                    },
                    crate::files::ReadError::Io(m) => Error::Engine(m),
                })
        }
    }

    /// Removes the worker's directory (before the actor leaves: a new actor makes it again).
    fn remove_files(&self) -> impl Future<Output = ()> + use<> {
        let dir = crate::files::worker_dir(self.inner.files.dir(), &self.id);
        let id = self.id.clone();
        async move {
            match tokio::task::spawn_blocking(move || crate::files::remove(&dir)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(worker = %id, error = %e, "remove the worker's files"),
                Err(e) => tracing::warn!(worker = %id, error = %e, "remove the worker's files"),
            }
        }
    }

    async fn wait_for_commits(&mut self) {
        wait_for_commits(self.shared.clone()).await;
    }

    /// Wakes the invocation suspended in a wait, if what it waits for has come (`timer`: its
    /// deadline has). Replay brings it back to its wait, over now, and it goes on live — or
    /// suspends again.
    async fn unpark(&mut self, timer: bool) {
        let due = match &self.parked {
            None => return,
            Some(Parked {
                wake: Wake::At(at), ..
            }) => timer || now_ms() >= *at,
            Some(_) => true,
        };
        if !due {
            return;
        }
        let Some(parked) = self.parked.take() else {
            return;
        };
        self.set_phase(Phase::Suspended);
        tracing::debug!(worker = %self.id, wake = ?parked.wake, "waking a suspended invocation");
        if let Err(e) = self.ensure_active().await {
            // Its waiters hear it; the invocation stays in the oplog for the next activation.
            self.finish(&parked.key, Err(e));
        }
    }

    /// Fails the invocation suspended in a wait with `interrupted`: its `Error` entry makes
    /// replay skip it, as it skips any failed invocation.
    async fn interrupt_parked(&mut self) {
        let Some(parked) = self.parked.take() else {
            return;
        };
        self.set_phase(Phase::Suspended);
        let id = self.id.clone();
        let last = match self.inner.committer.evict(&self.id).await {
            Ok(()) => {
                self.inner
                    .store
                    .read(move |tx| records::last_index(tx, &id))
                    .await
            }
            Err(e) => Err(e),
        };
        let last = match last {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(worker = %self.id, error = %e, "interrupt a waiting invocation");
                self.set_phase(Phase::Parked {
                    wake: parked.wake.clone(),
                });
                self.parked = Some(parked);
                return;
            }
        };
        let index = last + 1;
        let message = "the invocation was interrupted by a request while it waited".to_string();
        let entry = OplogEntry::Error {
            kind: FailureKind::Interrupted,
            message: message.clone(),
            fuel_consumed: 0,
        };
        let mut commit = Commit::new(&self.id)
            .entry(index, &entry)
            .record(
                records::invocation_key(&self.id, &parked.key),
                records::encode_json(&InvocationRecord {
                    fingerprint: String::new(),
                    outcome: StoredOutcome::Failed {
                        kind: FailureKind::Interrupted,
                        message: message.clone(),
                    },
                    oplog_index: index,
                }),
            )
            .clear(records::running_key(&self.id))
            .clear(records::pending_key(&self.id, &parked.key));
        if let Some(at) = self.wake_set.take() {
            commit = commit.clear(crate::suspend::wake_key(at, &self.id));
        }
        let (done, wait) = commit::done_channel();
        self.inner.committer.submit(commit.request(done)).await;
        let outcome = match wait.await {
            Ok(Ok(())) => Err(Error::InvocationFailed {
                kind: FailureKind::Interrupted,
                message,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::ShuttingDown),
        };
        self.finish(&parked.key, outcome);
    }

    /// Answers the invocations that waited behind a suspended one: the worker is gone, or
    /// the actor stops (its callers try again on a new one).
    fn refuse_deferred(&mut self, deleted: bool) {
        for (_, reply) in self.deferred.drain(..) {
            let _ = reply.send(Err(if deleted {
                Error::WorkerNotFound(self.id.to_string())
            } else {
                Error::Retry
            }));
        }
    }

    /// Suspends an invocation in its wait: commits what it recorded so far, with the `running`
    /// mark (a restart resumes it) and its wake-up key, drops the instance and parks.
    async fn park(&mut self, key: &str, active: Active, wake: Wake, fuel_consumed: u64) {
        let entries = {
            let mut d = host::lock(&active.durability);
            d.append(OplogEntry::Suspended {
                timestamp_ms: now_ms(),
            });
            d.take_pending()
        };
        drop(active);
        self.active = None;
        self.set_phase(Phase::Suspended);
        let mut commit = Commit::new(&self.id).entries(entries);
        self.shared
            .oplog_bytes
            .fetch_add(commit.oplog_bytes(), Ordering::Relaxed);
        if fuel_consumed > 0 {
            // The fuel it burnt before the wait is billed now; the rest with its completion.
            let keys = self.meter.keys(
                self.id.tenant.as_str(),
                self.id.component.as_str(),
                now_ms(),
            );
            commit = commit
                .add(keys.month_fuel.clone(), fuel_consumed)
                .add(keys.fuel.clone(), fuel_consumed);
        }
        commit = commit.set(records::running_key(&self.id), Vec::new());
        let wake_at = match &wake {
            Wake::At(at) => Some(*at),
            Wake::Promise(_) => None,
        };
        if let Some(previous) = self.wake_set.take()
            && Some(previous) != wake_at
        {
            commit = commit.clear(crate::suspend::wake_key(previous, &self.id));
        }
        if let Some(at) = wake_at {
            commit = commit.set(crate::suspend::wake_key(at, &self.id), Vec::new());
        }
        let (done, wait) = commit::done_channel();
        self.inner.committer.submit(commit.request(done)).await;
        match wait.await {
            Ok(Ok(())) => {
                self.wake_set = wake_at;
                self.inner.metrics.suspensions.inc();
                tracing::debug!(worker = %self.id, ?wake, "invocation suspended in a wait");
                self.set_phase(Phase::Parked { wake: wake.clone() });
                self.parked = Some(Parked {
                    key: key.to_string(),
                    wake,
                });
                // An interrupt that came as the call suspended stops it now.
                if self.shared.interrupt_parked.swap(false, Ordering::AcqRel) {
                    Box::pin(self.interrupt_parked()).await;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(worker = %self.id, error = %e, "record a suspension");
                self.finish(key, Err(e));
            }
            Err(_) => self.finish(key, Err(Error::ShuttingDown)),
        }
    }

    /// Leaves the executor's map and refuses what is still queued (its callers start a new
    /// actor, or hear that the worker is gone).
    async fn stop(&mut self) {
        self.wait_for_commits().await;
        self.remove_files().await;
        self.leave();
    }

    /// Leaves the executor's map, closes the queue and answers what is left in it.
    fn leave(&mut self) {
        let mut workers = lock(&self.workers);
        let ours = workers
            .get(&self.id)
            .is_some_and(|h| Arc::ptr_eq(&h.shared, &self.shared));
        if ours {
            workers.remove(&self.id);
        }
        drop(workers);
        self.rx.close();
        let deleted = self.shared.deleting.load(Ordering::Acquire);
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Invoke(_, reply) => {
                    let _ = reply.send(Err(if deleted {
                        Error::WorkerNotFound(self.id.to_string())
                    } else {
                        Error::Retry
                    }));
                }
                Command::Activate(reply) => {
                    let _ = reply.send(Err(Error::Retry));
                }
                Command::Delete(reply) | Command::Snapshot(reply) => {
                    let _ = reply.send(Err(Error::Retry));
                }
                Command::Files(_, reply) => {
                    let _ = reply.send(Err(Error::Retry));
                }
                Command::Stop(reply) => {
                    let _ = reply.send(());
                }
                Command::Resume | Command::Suspend => {}
            }
        }
    }

    /// Removes everything the worker has in the store, with its counts, in one transaction.
    async fn delete(&mut self) -> Result<(), Error> {
        // Its records leave the oplog's tail first: none may bring entries back after.
        self.inner.committer.evict(&self.id).await?;
        let id = self.id.clone();
        let wake_set = self.wake_set;
        self.inner
            .store
            .transact(move |tx| {
                if tx.get(&records::worker_key(&id))?.is_none() {
                    return Err(Error::WorkerNotFound(id.to_string()));
                }
                let mut stored = 0_i64;
                for prefix in [records::oplog_prefix(&id), records::chunks_prefix(&id)] {
                    let (begin, end) = invicta_store::keys::prefix_range(&prefix);
                    for row in tx.get_range(&begin, &end, Default::default())? {
                        stored += i64::try_from(row.value.len()).unwrap_or(0);
                    }
                    tx.clear_range(&begin, &end)?;
                }
                for prefix in [
                    records::invocations_prefix(&id),
                    records::pending_prefix(&id),
                    // Its own configuration and secrets go with it.
                    crate::settings::worker_prefix(&id),
                ] {
                    let (begin, end) = invicta_store::keys::prefix_range(&prefix);
                    tx.clear_range(&begin, &end)?;
                }
                tx.clear(&records::running_key(&id))?;
                tx.clear(&records::worker_key(&id))?;
                tx.clear(&snapshots::record_key(&id))?;
                stored += archive::clear(tx, &id)?;
                let (begin, end) =
                    invicta_store::keys::prefix_range(&crate::suspend::promises_prefix(&id));
                // Their webhooks go with them.
                for row in tx.get_range(&begin, &end, Default::default())? {
                    let promise: crate::suspend::PromiseRecord =
                        records::decode_json("promise", &row.value)?;
                    if let Some(token) = promise.webhook {
                        tx.clear(&crate::suspend::webhook_key(&token))?;
                    }
                }
                tx.clear_range(&begin, &end)?;
                if let Some(at) = wake_set {
                    tx.clear(&crate::suspend::wake_key(at, &id))?;
                }
                crate::schedules::clear_worker(tx, &id)?;
                let tenant = id.tenant.as_str();
                tx.atomic_add(&usage::count_key(tenant, usage::WORKERS), -1)?;
                tx.atomic_add(
                    &usage::stored_key(tenant, id.component.as_str(), usage::OPLOG_BYTES),
                    -stored,
                )?;
                Ok(())
            })
            .await?;
        // Its large response bodies and its snapshots go too; one left behind costs space,
        // not correctness.
        let blobs = self.inner.registry.blobs();
        let prefixes = [
            crate::http::bodies_prefix(&self.id),
            snapshots::blob_prefix(&self.id, &self.record.incarnation),
            archive::blob_prefix(&self.id),
        ];
        for prefix in prefixes {
            let Ok(kept) = blobs.list(&prefix).await else {
                continue;
            };
            for blob in kept {
                if let Err(e) = blobs.delete(&blob.key).await {
                    tracing::warn!(worker = %self.id, key = %blob.key, error = %e, "delete a blob of the worker");
                }
            }
        }
        tracing::info!(worker = %self.id, "worker deleted");
        Ok(())
    }

    async fn invoke(&mut self, invocation: Arc<Invocation>, reply: oneshot::Sender<Outcome>) {
        if self.shared.deleting.load(Ordering::Acquire) {
            let _ = reply.send(Err(Error::WorkerNotFound(self.id.to_string())));
            return;
        }
        if let Some(error) = self.failure() {
            let _ = reply.send(Err(Error::WorkerFailed(error)));
            return;
        }
        let key = invocation.idempotency_key.clone();
        if let Some(refused) = self.reused(&invocation) {
            let _ = reply.send(Err(refused));
            return;
        }
        {
            let mut inflight = lock(&self.shared.inflight);
            if let Some(waiters) = inflight.get_mut(&key) {
                waiters.push(reply);
                return;
            }
        }
        if !invocation.key_is_new {
            let store_key = records::invocation_key(&self.id, &key);
            match self
                .inner
                .store
                .read(move |tx| records::read_value(tx, &store_key))
                .await
            {
                Ok(Some(bytes)) => {
                    let outcome =
                        records::decode_json::<InvocationRecord>("invocation record", &bytes)
                            .and_then(|r| {
                                if !r.fingerprint.is_empty()
                                    && !invocation.fingerprint.is_empty()
                                    && r.fingerprint != invocation.fingerprint
                                {
                                    return Err(Error::IdempotencyKeyReused(key.clone()));
                                }
                                stored_outcome(r.outcome)
                            });
                    let _ = reply.send(outcome);
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        }
        lock(&self.shared.inflight).insert(key.clone(), vec![reply]);
        if !invocation.fingerprint.is_empty() {
            lock(&self.shared.inflight_fingerprints)
                .insert(key.clone(), invocation.fingerprint.clone());
        }
        if self.shared.poisoned.swap(false, Ordering::AcqRel) {
            tracing::warn!(worker = %self.id, "a commit failed; rebuilding the worker from its oplog");
            self.active = None;
        }
        if let Err(e) = self.ensure_active().await {
            self.finish(&key, Err(e));
            return;
        }
        // The activation may have finished this very invocation: cut off by a crash (or by a
        // move to this executor), it resumed from the oplog and its waiters have their answer.
        if !lock(&self.shared.inflight).contains_key(&key) {
            return;
        }
        if self.parked.is_some() {
            // An invocation cut off earlier resumed and waits again: this one runs after it.
            lock(&self.shared.inflight_fingerprints).remove(&key);
            let waiters = lock(&self.shared.inflight).remove(&key).unwrap_or_default();
            for reply in waiters {
                self.deferred.push_back((invocation.clone(), reply));
            }
            return;
        }
        self.run_live(invocation).await;
    }

    /// The refusal of an invocation whose key is in flight for another request.
    fn reused(&self, invocation: &Invocation) -> Option<Error> {
        let fingerprints = lock(&self.shared.inflight_fingerprints);
        let running = fingerprints.get(&invocation.idempotency_key)?;
        (!invocation.fingerprint.is_empty() && *running != invocation.fingerprint)
            .then(|| Error::IdempotencyKeyReused(invocation.idempotency_key.clone()))
    }

    fn set_phase(&self, phase: Phase) {
        *lock(&self.shared.phase) = phase;
    }

    /// The phase the actor's own state says, after an activation: an instance, an invocation
    /// parked in a wait, or neither. A failure stays until it is cleared.
    fn settle_phase(&self) {
        let phase = match (&self.active, &self.parked) {
            (Some(_), _) => Phase::Active,
            (None, Some(parked)) => Phase::Parked {
                wake: parked.wake.clone(),
            },
            (None, None) => Phase::Suspended,
        };
        let mut current = lock(&self.shared.phase);
        if !matches!(*current, Phase::Failed(_)) {
            *current = phase;
        }
    }

    /// Why the worker cannot be activated, if its last activation failed.
    fn failure(&self) -> Option<String> {
        match &*lock(&self.shared.phase) {
            Phase::Failed(message) => Some(message.clone()),
            _ => None,
        }
    }

    /// Sends `outcome` to every waiter of `key`.
    fn finish(&self, key: &str, outcome: Outcome) {
        finish(&self.shared, key, outcome);
    }

    /// Instantiates the worker and replays its oplog, unless an instance is in memory.
    async fn ensure_active(&mut self) -> Result<(), Error> {
        if self.active.is_some() {
            return Ok(());
        }
        self.wait_for_commits().await;
        let mut attempts = 0;
        let result = loop {
            match self.recover().await {
                // Every instance slot is taken: suspend the longest-idle workers and try again.
                Err(Error::PoolExhausted(_)) if attempts < EVICTION_ATTEMPTS => {
                    attempts += 1;
                    let evicted = evict_idle(&self.workers, EVICTION_BATCH).await;
                    tracing::debug!(worker = %self.id, evicted, "instance pool full; evicting idle workers");
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempts))).await;
                }
                other => break other,
            }
        };
        match result {
            Ok(()) => {
                // A resumed invocation may have suspended again, without an instance.
                self.settle_phase();
                Ok(())
            }
            Err(Error::WorkerFailed(message)) => {
                tracing::error!(worker = %self.id, %message, "worker failed");
                self.set_phase(Phase::Failed(message.clone()));
                self.active = None;
                Err(Error::WorkerFailed(message))
            }
            Err(e) => {
                self.active = None;
                self.settle_phase();
                Err(e)
            }
        }
    }

    async fn replay(
        &mut self,
        entries: Vec<(OplogIndex, OplogEntry)>,
        next_index: OplogIndex,
        snapshot: Option<(bytes::Bytes, Option<bytes::Bytes>)>,
    ) -> Result<(), Error> {
        let (snapshot, snapshot_files) = match snapshot {
            Some((bytes, files)) => (Some(bytes), files),
            None => (None, None),
        };
        let incarnation = match entries.first() {
            Some((1, OplogEntry::Create { incarnation, .. })) => incarnation.clone(),
            _ => {
                return Err(Error::WorkerFailed(
                    "the oplog does not start with its Create entry".into(),
                ));
            }
        };
        let durability = Arc::new(Mutex::new(Durability::new(next_index)));
        // An invocation cut off mid-way resumes in an instance with the memory it started with.
        let cut_off_memory = entries
            .iter()
            .rev()
            .find_map(|(_, e)| match e {
                OplogEntry::ExportedFunctionCompleted { .. } | OplogEntry::Error { .. } => {
                    Some(None)
                }
                OplogEntry::ExportedFunctionInvoked { limits, .. } => {
                    Some(limits.as_ref().map(|l| l.memory_bytes))
                }
                _ => None,
            })
            .flatten();
        let memory =
            cut_off_memory.unwrap_or_else(|| self.shared.memory_bytes.load(Ordering::Relaxed));
        self.choose_pre(memory).await?;
        // The baseline tier's instances are allocated on demand: they are counted here.
        let baseline_slot = if self.compiled.baseline {
            Some(
                self.inner
                    .baseline_slots
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| {
                        Error::PoolExhausted(
                            "every instance of the baseline tier is taken (the version's optimized code is not ready)".into(),
                        )
                    })?,
            )
        } else {
            None
        };
        let files = self.prepare_files(snapshot_files).await?;
        let ctx = WorkerCtx::new(
            &self.record.env,
            &self.record.args,
            memory,
            durability.clone(),
            crate::http::DurableHttp {
                durability: durability.clone(),
                checkpoints: self.checkpoint_tx.clone(),
                egress: self.shared.egress.clone(),
                worker: self.id.clone(),
                incarnation: incarnation.clone(),
                blobs: self.inner.registry.blobs().clone(),
            },
            self.waits.clone(),
            files,
        )
        .map_err(|e| Error::Engine(format!("the worker's files: {e:#}")))?;
        let mut ctx = ctx;
        ctx.host = Some(crate::hostapi::HostApi {
            workers: self.calls.clone(),
            worker: self.id.clone(),
            incarnation,
            limits: self.shared.limits.clone(),
        });
        let mut store = wasmtime::Store::new(self.pre.engine(), ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        let engine_error = |e: wasmtime::Error| Error::Engine(format!("{e:#}"));
        // Instantiation runs the component's start functions: guest code like any other, under
        // an invocation's fuel and deadline, and stopped by an interrupt or a deletion.
        let fuel = self.inner.config.fuel_per_invocation;
        store.set_fuel(fuel).map_err(engine_error)?;
        store
            .fuel_async_yield_interval(Some(self.inner.engine.config.fuel_yield_interval.max(1)))
            .map_err(engine_error)?;

        // The host calls of instantiation come right after `Create`; a worker moved to its
        // version by a snapshot instantiates it unrecorded (the snapshot's load sets its state).
        let mut pos = 1;
        let init = side_entries(&entries, &mut pos);
        let tail = pos >= entries.len();
        let unrecorded_start = snapshot.is_some() && self.record.snapshot_base.is_some();
        let start_mark = if unrecorded_start {
            let mut d = host::lock(&durability);
            d.go_live();
            Some(d.mark())
        } else {
            host::lock(&durability).replay(init, tail);
            None
        };
        let deadline = self.timeout();
        let shared = self.shared.clone();
        let instantiated = {
            let interrupted = shared.interrupt.notified();
            tokio::pin!(interrupted);
            interrupted.as_mut().enable();
            *lock(&shared.phase) = Phase::Instantiating;
            let made = if shared.deleting.load(Ordering::Acquire) {
                None
            } else {
                tokio::select! {
                    made = tokio::time::timeout(deadline, self.pre.instantiate_async(&mut store)) => Some(made),
                    () = &mut interrupted => None,
                }
            };
            *lock(&shared.phase) = Phase::Active;
            made
        };
        let instance = match instantiated {
            None => {
                return Err(Error::WorkerFailed(
                    "instantiation was interrupted (the component's start function was running)"
                        .into(),
                ));
            }
            Some(Err(_)) => {
                return Err(Error::WorkerFailed(format!(
                    "instantiation ran longer than {} ms (the component's start function does not return)",
                    deadline.as_millis()
                )));
            }
            Some(Ok(Ok(instance))) => instance,
            Some(Ok(Err(e))) => {
                if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some()
                {
                    return Err(Error::PoolExhausted(format!("{e:#}")));
                }
                if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::OutOfFuel) {
                    return Err(Error::WorkerFailed(format!(
                        "instantiation used up its fuel ({fuel}): the component's start function does not return"
                    )));
                }
                return Err(Error::WorkerFailed(format!("instantiate: {e:#}")));
            }
        };
        store.set_fuel(REPLAY_FUEL).map_err(engine_error)?;
        match start_mark {
            Some(mark) => host::lock(&durability).rewind(mark),
            None => check_consumed(&durability, "instantiation")?,
        }
        // Only a component that exports resources pays for naming them.
        let resource_names = if self.resource_names.is_empty() {
            Vec::new()
        } else {
            instance_resource_names(&self.pre, &instance, &mut store)
        };
        let mut active = Active {
            store,
            instance,
            durability,
            handles: HashMap::new(),
            resource_names,
            _baseline_slot: baseline_slot,
        };
        if let Some(bytes) = snapshot {
            self.load_snapshot(&mut active, &bytes).await?;
        }
        let mut replayed = 0_u64;
        while pos < entries.len() {
            let (index, entry) = &entries[pos];
            pos += 1;
            let OplogEntry::ExportedFunctionInvoked {
                function,
                params,
                idempotency_key,
                limits,
                ..
            } = entry
            else {
                // Suspended, Interrupted and other markers carry no state.
                continue;
            };
            let side = side_entries(&entries, &mut pos);
            let terminal = entries.get(pos).map(|(i, e)| (*i, e.clone()));
            match terminal {
                Some((_, OplogEntry::Error { .. })) => {
                    pos += 1;
                }
                Some((_, OplogEntry::ExportedFunctionCompleted { results, .. })) => {
                    pos += 1;
                    host::lock(&active.durability).replay(side, false);
                    match self
                        .call(&mut active, *index, function, params, REPLAY_FUEL, None)
                        .await
                    {
                        Ran::Completed { results: got, .. } if got == results => {}
                        // A secret changed since: its new value is a new input, which the
                        // results of this invocation and of every later one may show.
                        Ran::Completed { .. } if host::lock(&active.durability).inputs_changed => {
                            tracing::info!(worker = %self.id, index, "an invocation replayed after a secret changed: its new result stands");
                        }
                        Ran::Completed { .. } => {
                            return Err(Error::WorkerFailed(format!(
                                "replay diverged: the invocation at oplog entry {index} returned another result than recorded"
                            )));
                        }
                        Ran::Failed { message, .. } => {
                            return Err(Error::WorkerFailed(format!(
                                "replay of the invocation at oplog entry {index} failed: {message}"
                            )));
                        }
                        Ran::Suspended { .. } => {
                            return Err(Error::WorkerFailed(format!(
                                "replay of the invocation at oplog entry {index} waited where it had gone on"
                            )));
                        }
                    }
                    check_consumed(&active.durability, "an invocation")?;
                    replayed += 1;
                }
                Some((other_index, other)) => {
                    return Err(Error::WorkerFailed(format!(
                        "oplog entry {other_index} ({}) interrupts the invocation at {index}",
                        other.kind()
                    )));
                }
                None => {
                    // Cut off by a crash or suspended in a wait: replay what it recorded, then
                    // let it go on live. An atomic region it had not finished runs again whole:
                    // what it recorded is skipped from now on.
                    tracing::info!(worker = %self.id, index, "resuming an invocation cut off mid-way");
                    let mut side = side;
                    if let Some(from) = unfinished_region(&side) {
                        side.retain(|(i, _)| *i < from);
                        let mut d = host::lock(&active.durability);
                        let to = d.next_index() - 1;
                        d.append(OplogEntry::Jump { from, to });
                        tracing::info!(worker = %self.id, from, to, "running an unfinished atomic region again");
                    }
                    host::lock(&active.durability).replay(side, true);
                    // It goes on under the limits it started with (recorded in its start
                    // entry), not the executor's defaults: its plan's fuel, memory and hosts.
                    let limits = limits.clone().unwrap_or_else(|| InvocationLimits {
                        fuel: self.inner.config.fuel_per_invocation,
                        memory_bytes: self.shared.memory_bytes.load(Ordering::Relaxed),
                        timeout_ms: self.inner.config.invocation_timeout_ms,
                        egress_hosts: lock(&self.shared.egress).hosts.clone(),
                        workers_max: lock(&self.shared.limits).workers_max,
                    });
                    let files_per_worker_bytes = lock(&self.shared.limits).files_per_worker_bytes;
                    let invocation = Invocation {
                        function: function.clone(),
                        params: params.clone(),
                        idempotency_key: idempotency_key.clone(),
                        fingerprint: records::fingerprint(function, params),
                        key_is_new: false,
                        // Clearing a pending record that does not exist costs nothing here.
                        enqueued: true,
                        fuel: limits.fuel,
                        memory_bytes: limits.memory_bytes,
                        span: tracing::info_span!("resume invocation", worker = %self.id),
                        egress_hosts: limits.egress_hosts.clone(),
                        workers_max: limits.workers_max,
                        concurrent_invocations: u64::MAX,
                        retry: None,
                        archive_retention_days: None,
                        files_per_worker_bytes,
                        runs: 0,
                        pending: None,
                    };
                    // What the worker's calls and requests check, for the time it runs; what
                    // was there before (an invocation waiting for this one) comes back after.
                    let before = (
                        lock(&self.shared.egress).hosts.clone(),
                        lock(&self.shared.limits).clone(),
                    );
                    lock(&self.shared.egress).hosts = limits.egress_hosts.clone();
                    *lock(&self.shared.limits) = crate::limits::Limits {
                        fuel_per_invocation: limits.fuel,
                        fuel_per_month: u64::MAX,
                        memory_per_worker_bytes: limits.memory_bytes,
                        workers_max: limits.workers_max,
                        egress_hosts: limits.egress_hosts.clone(),
                        concurrent_invocations: u64::MAX,
                        retry: None,
                        archive_retention_days: None,
                        files_per_worker_bytes,
                    };
                    // Its start is durable already; this serves the checkpoints its outgoing
                    // requests ask for.
                    let start = StartCommit {
                        inner: self.inner.clone(),
                        id: self.id.clone(),
                        shared: self.shared.clone(),
                        committed: AtomicBool::new(true),
                    };
                    let ran = self
                        .call(
                            &mut active,
                            *index,
                            function,
                            params,
                            limits.fuel,
                            Some((
                                Duration::from_millis(self.inner.config.start_commit_delay_ms),
                                &start,
                            )),
                        )
                        .await;
                    lock(&self.shared.egress).hosts = before.0;
                    *lock(&self.shared.limits) = before.1;
                    if let Ran::Suspended {
                        wake,
                        fuel_consumed,
                    } = ran
                    {
                        self.park(&invocation.idempotency_key, active, wake, fuel_consumed)
                            .await;
                        return Ok(());
                    }
                    let failed = matches!(ran, Ran::Failed { .. });
                    self.active = Some(active);
                    lock(&self.shared.inflight)
                        .entry(invocation.idempotency_key.clone())
                        .or_default();
                    lock(&self.shared.inflight_fingerprints).insert(
                        invocation.idempotency_key.clone(),
                        invocation.fingerprint.clone(),
                    );
                    let wait = self.record_outcome(&invocation, ran, true, None).await;
                    let _ = wait.await;
                    if failed {
                        self.active = None;
                        return Box::pin(self.ensure_active_inner()).await;
                    }
                    tracing::debug!(worker = %self.id, replayed, "worker active");
                    return Ok(());
                }
            }
        }
        host::lock(&active.durability).go_live();
        self.since_snapshot = replayed;
        self.snapshot_at_bytes = self.shared.oplog_bytes.load(Ordering::Relaxed);
        self.inner.metrics.replays.inc();
        self.inner.metrics.replayed_invocations.inc_by(replayed);
        tracing::debug!(worker = %self.id, replayed, "worker active");
        self.active = Some(active);
        Ok(())
    }

    /// Puts a fresh instance in a snapshot's state (`load-snapshot`, not recorded).
    async fn load_snapshot(&mut self, active: &mut Active, bytes: &[u8]) -> Result<(), Error> {
        let failed = |what: String| Error::WorkerFailed(format!("load-snapshot: {what}"));
        let interface = self
            .snapshot_interface
            .as_deref()
            .ok_or_else(|| failed("the component exports no snapshot interface".into()))?;
        let (_, load) =
            snapshots::functions(&self.pre, &active.instance, &mut active.store, interface)
                .ok_or_else(|| failed("the snapshot exports are gone".into()))?;
        let typed = load
            .typed::<(&[u8],), (Result<(), String>,)>(&active.store)
            .map_err(|e| failed(format!("{e:#}")))?;
        active
            .store
            .set_fuel(self.inner.config.fuel_per_invocation)
            .map_err(|e| failed(format!("{e:#}")))?;
        let mark = {
            let mut d = host::lock(&active.durability);
            d.go_live();
            d.mark()
        };
        let loaded = tokio::time::timeout(
            self.timeout(),
            typed.call_async(&mut active.store, (bytes,)),
        )
        .await;
        host::lock(&active.durability).rewind(mark);
        let answer = match loaded {
            Ok(Ok((answer,))) => answer,
            Ok(Err(e)) => return Err(failed(format!("trapped: {e:#}"))),
            Err(_) => return Err(failed("ran past the invocation deadline".into())),
        };
        active
            .store
            .set_fuel(REPLAY_FUEL)
            .map_err(|e| failed(format!("{e:#}")))?;
        answer.map_err(|message| failed(format!("the component refused it: {message}")))
    }

    /// The worker's version as the registry holds its code now: the optimized code once it is
    /// ready, for a version that started on the baseline tier.
    fn compiled_now(
        &self,
    ) -> impl std::future::Future<
        Output = Result<
            Arc<invicta_component_registry::Compiled>,
            invicta_component_registry::Error,
        >,
    > + Send
    + 'static {
        let (registry, id) = (self.inner.registry.clone(), self.id.clone());
        let version = self.compiled.version.version;
        async move { registry.compiled(&id.tenant, &id.component, version).await }
    }

    /// Makes the instance template the one for `memory`: pooled up to a pool slot, on demand
    /// above it (loaded once).
    async fn choose_pre(&mut self, memory: u64) -> Result<(), Error> {
        // A version on the baseline tier moves to its optimized code at an activation.
        if self.compiled.baseline {
            let latest = self.compiled_now().await?;
            if !latest.baseline {
                let pre = self
                    .inner
                    .linker_for(&latest.component)
                    .instantiate_pre(&latest.component)
                    .map_err(|e| Error::Engine(format!("{e:#}")))?;
                tracing::debug!(worker = %self.id, "moves to the optimized code");
                self.pooled_pre = pre;
                self.large_pre = None;
                self.compiled = latest;
            }
        }
        // The baseline tier's engine allocates on demand, whatever the memory.
        if self.compiled.baseline || !self.inner.engine.is_large(memory) {
            self.pre = self.pooled_pre.clone();
            return Ok(());
        }
        if self.large_pre.is_none() {
            let engine_error = |e: String| Error::Engine(e);
            let linker = self
                .inner
                .large_linker
                .as_ref()
                .ok_or_else(|| engine_error("no on-demand engine".into()))?;
            let component = self
                .inner
                .registry
                .compiled_large(
                    &self.id.tenant,
                    &self.id.component,
                    self.compiled.version.version,
                )
                .await?
                .ok_or_else(|| engine_error("no on-demand engine".into()))?;
            let pre = linker
                .instantiate_pre(&component)
                .map_err(|e| engine_error(format!("{e:#}")))?;
            self.large_pre = Some(pre);
        }
        if let Some(pre) = &self.large_pre {
            self.pre = pre.clone();
        }
        Ok(())
    }

    /// `ensure_active` again after a resumed invocation failed (which dropped the instance).
    async fn ensure_active_inner(&mut self) -> Result<(), Error> {
        self.wait_for_commits().await;
        Box::pin(self.recover()).await
    }

    /// Makes the instance from the latest usable snapshot and the oplog after it, or else by
    /// replaying the whole oplog. A snapshot that cannot be used (its blob, its load, or the
    /// replay after it fails) is passed over for the one before it, then for a full replay.
    async fn recover(&mut self) -> Result<(), Error> {
        if self.snapshot_interface.is_some() {
            self.read_snapshot_policy().await?;
            let id = self.id.clone();
            let record: snapshots::SnapshotRecord = self
                .inner
                .store
                .read(move |tx| {
                    records::read_value(tx, &snapshots::record_key(&id))?
                        .map(|b| records::decode_json("snapshot record", &b))
                        .transpose()
                })
                .await?
                .unwrap_or_default();
            self.snapshots = record.clone();
            let version = self.record.component_version;
            let base = self.record.snapshot_base.unwrap_or(0);
            for snapshot in record
                .snapshots
                .iter()
                .filter(|s| s.component_version == version && s.index >= base)
            {
                let start = match self.snapshot_start(snapshot).await {
                    Ok(Some(start)) => start,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(worker = %self.id, index = snapshot.index, error = %e, "snapshot unreadable: trying an earlier one");
                        self.inner.metrics.snapshot_fallbacks.inc();
                        continue;
                    }
                };
                let (entries, next_index, bytes, files) = start;
                match self.replay(entries, next_index, Some((bytes, files))).await {
                    Ok(()) => {
                        self.inner.metrics.snapshot_recoveries.inc();
                        self.snapshot_at = snapshot.index;
                        return Ok(());
                    }
                    Err(e @ (Error::PoolExhausted(_) | Error::Store(_))) => return Err(e),
                    Err(e) => {
                        self.active = None;
                        tracing::warn!(worker = %self.id, index = snapshot.index, error = %e, "snapshot unusable: trying an earlier one");
                        self.inner.metrics.snapshot_fallbacks.inc();
                    }
                }
            }
        }
        if let Some(base) = self.record.snapshot_base {
            return Err(Error::WorkerFailed(format!(
                "no usable snapshot at or after entry {base} (where the worker moved to version {} by a snapshot, or from which its history is kept): its history before it does not replay",
                self.record.component_version
            )));
        }
        let (entries, next_index) = self.read_oplog().await?;
        self.snapshot_at = 0;
        self.replay(entries, next_index, None).await
    }

    /// What a recovery from `snapshot` replays, the index after it, and the snapshot's bytes
    /// (checked against their SHA-256); `None` if a later jump reaches back over it.
    async fn snapshot_start(
        &mut self,
        snapshot: &snapshots::Snapshot,
    ) -> Result<SnapshotStart, Error> {
        const HEAD: usize = 256;
        let (store, blobs) = (&self.inner.store, self.inner.registry.blobs());
        // A worker moved to its version by a snapshot instantiates that version unrecorded (its
        // recorded instantiation is the old version's): only its `Create` entry is kept.
        let head_len = if self.record.snapshot_base.is_some() {
            1
        } else {
            HEAD
        };
        let head =
            archive::history(&self.inner.committer, store, blobs, &self.id, 1, head_len).await?;
        let tail = archive::history(
            &self.inner.committer,
            store,
            blobs,
            &self.id,
            snapshot.index + 1,
            usize::MAX,
        )
        .await?;
        let next_index = tail.last().map_or(snapshot.index + 1, |(i, _)| i + 1);
        // Jumps are checked as written (one reaching back over the snapshot makes it unusable),
        // then applied.
        let Some(entries) = snapshots::recovery_entries(&head, tail, snapshot.index) else {
            return Ok(None);
        };
        let entries = apply_jumps(entries);
        let bytes = self
            .inner
            .registry
            .blobs()
            .get_verified(&invicta_blob::BlobRef {
                key: snapshot.blob_key.clone(),
                size: snapshot.size,
                sha256: snapshot.sha256.clone(),
            })
            .await
            .map_err(|e| Error::WorkerFailed(format!("snapshot blob: {e}")))?;
        let files = match &snapshot.files {
            Some(blob) => Some(
                self.inner
                    .registry
                    .blobs()
                    .get_verified(blob)
                    .await
                    .map_err(|e| Error::WorkerFailed(format!("snapshot files blob: {e}")))?,
            ),
            None => None,
        };
        Ok(Some((entries, next_index, bytes, files)))
    }

    /// The component's snapshot policy, else the executor's.
    async fn read_snapshot_policy(&mut self) -> Result<(), Error> {
        let key = snapshots::policy_key(self.id.tenant.as_str(), self.id.component.as_str());
        let own = self.inner.store.read(move |tx| tx.get(&key)).await?;
        self.snapshot_policy = match own {
            Some(bytes) => records::decode_json("snapshot policy", &bytes)?,
            None => snapshots::Policy {
                every_invocations: self.inner.config.snapshot_every_invocations,
                every_entries: self.inner.config.snapshot_every_entries,
                every_oplog_bytes: self.inner.config.snapshot_every_oplog_bytes,
            },
        };
        Ok(())
    }

    /// A snapshot now, whatever the policy says (for a snapshot-based update).
    async fn snapshot_now(&mut self) -> Result<(), Error> {
        let interface = self.snapshot_interface.clone().ok_or_else(|| {
            Error::IncompatibleVersion("its component version exports no snapshot interface".into())
        })?;
        self.ensure_active().await?;
        self.wait_for_commits().await;
        self.take_snapshot(&interface).await?;
        if let Some(active) = &self.active {
            self.snapshot_at = host::lock(&active.durability).next_index();
        }
        self.since_snapshot = 0;
        Ok(())
    }

    /// After a completed invocation: a snapshot, when one is due.
    async fn after_invocation(&mut self) {
        // A busy worker on the baseline tier would keep its instance, and the slower code,
        // for as long as it stays busy: once the optimized code is ready, the instance goes,
        // and the next invocation replays onto that code.
        if self.compiled.baseline {
            let latest = self.compiled_now().await;
            if latest.is_ok_and(|latest| !latest.baseline) {
                tracing::debug!(worker = %self.id, "the optimized code is ready: the instance goes");
                self.active = None;
                self.set_phase(Phase::Suspended);
                return;
            }
        }
        let Some(interface) = self.snapshot_interface.clone() else {
            return;
        };
        self.since_snapshot += 1;
        let Some(active) = &self.active else { return };
        // Resources held for the API are not in a snapshot: none is taken while any is held.
        if !active.handles.is_empty() {
            return;
        }
        let next = host::lock(&active.durability).next_index();
        let bytes = self.shared.oplog_bytes.load(Ordering::Relaxed);
        if !self.snapshot_policy.due(
            self.since_snapshot,
            next.saturating_sub(self.snapshot_at),
            bytes.saturating_sub(self.snapshot_at_bytes),
        ) {
            return;
        }
        // Counted from now even if it fails: a component whose save fails is not asked again
        // after every invocation.
        self.since_snapshot = 0;
        self.snapshot_at = next;
        self.snapshot_at_bytes = bytes;
        if let Err(e) = self.take_snapshot(&interface).await {
            tracing::warn!(worker = %self.id, error = %e, "snapshot not taken");
        }
        if let Err(e) = self.read_snapshot_policy().await {
            tracing::warn!(worker = %self.id, error = %e, "read the snapshot policy");
        }
    }

    /// Saves the worker's state (`save-snapshot`, not recorded), puts it in the blob store and
    /// commits its `Snapshot` entry with the worker's snapshot record.
    async fn take_snapshot(&mut self, interface: &str) -> Result<(), Error> {
        let fuel = self.inner.config.fuel_per_invocation;
        let deadline = self.timeout();
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let (save, _) =
            snapshots::functions(&self.pre, &active.instance, &mut active.store, interface)
                .ok_or_else(|| Error::Engine("the snapshot exports are gone".into()))?;
        let typed = save
            .typed::<(), (Vec<u8>,)>(&active.store)
            .map_err(|e| Error::Engine(format!("save-snapshot: {e:#}")))?;
        active
            .store
            .set_fuel(fuel)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        let mark = host::lock(&active.durability).mark();
        let saved = tokio::time::timeout(deadline, typed.call_async(&mut active.store, ())).await;
        host::lock(&active.durability).rewind(mark);
        let bytes = match saved {
            Ok(Ok((bytes,))) => bytes,
            Ok(Err(e)) => {
                // A trap leaves the instance unusable: the next invocation replays.
                self.active = None;
                return Err(Error::Engine(format!("save-snapshot trapped: {e:#}")));
            }
            Err(_) => {
                self.active = None;
                return Err(Error::Engine(format!(
                    "save-snapshot ran longer than {} ms",
                    deadline.as_millis()
                )));
            }
        };
        let blobs = self.inner.registry.blobs().clone();
        // The files it wrote go with it: recovery from the snapshot restores them.
        let files_root = self.active.as_ref().and_then(|a| {
            let files = &a.store.data().files;
            files.changed().then(|| files.root.clone()).flatten()
        });
        let files = match files_root {
            None => None,
            Some(root) => {
                let archived = tokio::task::spawn_blocking(move || crate::files::archive(&root))
                    .await
                    .map_err(|e| Error::Engine(format!("archive the worker's files: {e}")))?
                    .map_err(|e| Error::Engine(format!("archive the worker's files: {e}")))?
                    .ok_or_else(|| {
                        Error::Engine(format!(
                            "the worker's files are more than {} bytes, which a snapshot does not hold",
                            crate::files::SNAPSHOT_BYTES_MAX
                        ))
                    })?;
                let prefix = format!(
                    "{}/files",
                    snapshots::blob_prefix(&self.id, &self.record.incarnation)
                );
                Some(
                    blobs
                        .put_bytes(&prefix, &archived)
                        .await
                        .map_err(|e| Error::Engine(format!("store a snapshot's files: {e}")))?,
                )
            }
        };
        let blob = blobs
            .put_bytes(
                &snapshots::blob_prefix(&self.id, &self.record.incarnation),
                &bytes,
            )
            .await
            .map_err(|e| Error::Engine(format!("store a snapshot: {e}")))?;
        let Some(active) = &self.active else {
            return Ok(());
        };
        let entries = {
            let mut d = host::lock(&active.durability);
            d.append(OplogEntry::Snapshot {
                blob_key: blob.key.clone(),
                size: blob.size,
                sha256: blob.sha256.clone(),
            });
            d.take_pending()
        };
        let Some(index) = entries.last().map(|(i, _)| *i) else {
            return Ok(());
        };
        let (record, dropped) = self.snapshots.clone().with(snapshots::Snapshot {
            index,
            component_version: self.record.component_version,
            blob_key: blob.key,
            size: blob.size,
            sha256: blob.sha256,
            taken_at_ms: now_ms(),
            files,
        });
        let commit = Commit::new(&self.id).entries(entries).set(
            snapshots::record_key(&self.id),
            records::encode_json(&record),
        );
        let (done, wait) = commit::done_channel();
        self.inner.committer.submit(commit.request(done)).await;
        match wait.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::ShuttingDown),
        }
        self.inner.metrics.snapshots_taken.inc();
        tracing::debug!(worker = %self.id, index, size = bytes.len(), "snapshot taken");
        // Blobs of snapshots no longer kept go, unless a kept one has the same content.
        for old in dropped {
            if !record.snapshots.iter().any(|s| s.blob_key == old.blob_key) {
                let _ = blobs.delete(&old.blob_key).await;
            }
            if let Some(files) = &old.files
                && !record
                    .snapshots
                    .iter()
                    .any(|s| s.files.as_ref().is_some_and(|f| f.key == files.key))
            {
                let _ = blobs.delete(&files.key).await;
            }
        }
        self.snapshots = record;
        // What the snapshot makes unneeded for recovery leaves the store for the archive.
        match archive::archive(
            &self.inner.committer,
            &self.inner.store,
            &blobs,
            &self.id,
            index,
        )
        .await
        {
            Ok(0) => {}
            Ok(moved) => {
                self.inner.metrics.archived_entries.inc_by(moved);
                tracing::debug!(worker = %self.id, moved, below = index, "oplog archived");
            }
            Err(e) => tracing::warn!(worker = %self.id, error = %e, "archive the oplog"),
        }
        // The plan's retention: older segments go, and the worker recovers from this snapshot
        // (or a later one) from now on.
        let retention = lock(&self.shared.limits).archive_retention_days;
        if let Some(days) = retention {
            let before = now_ms().saturating_sub(u64::from(days) * 86_400_000);
            match archive::expire(&self.inner.store, &blobs, &self.id, before, index).await {
                Ok(0) => {}
                Ok(gone) => {
                    self.record.snapshot_base =
                        Some(self.record.snapshot_base.unwrap_or(0).max(index));
                    tracing::info!(worker = %self.id, gone, days, "expired archived oplog segments");
                }
                Err(e) => tracing::warn!(worker = %self.id, error = %e, "expire archived segments"),
            }
        }
        Ok(())
    }

    /// The worker's directory, made afresh from its version's files: replay re-does the rest.
    /// (From a snapshot's archive of it, when recovery starts from a snapshot that has one.)
    fn prepare_files(
        &self,
        snapshot: Option<bytes::Bytes>,
    ) -> impl Future<Output = Result<crate::files::Files, Error>> + use<> {
        let blob = self.compiled.version.files_blob.clone();
        let blobs = self.inner.registry.blobs().clone();
        let dir = crate::files::worker_dir(self.inner.files.dir(), &self.id);
        prepare_files(blob, blobs, dir, snapshot)
    }

    /// The worker's oplog as replay sees it (what jumps skip left out), and the index its next
    /// entry takes (after every entry, skipped or not).
    async fn read_oplog(&mut self) -> Result<(Vec<(OplogIndex, OplogEntry)>, OplogIndex), Error> {
        let entries = archive::history(
            &self.inner.committer,
            &self.inner.store,
            self.inner.registry.blobs(),
            &self.id,
            1,
            usize::MAX,
        )
        .await?;
        let next_index = entries.last().map_or(1, |(i, _)| i + 1);
        Ok((apply_jumps(entries), next_index))
    }

    /// Calls `function` on the active instance.
    async fn call(
        &mut self,
        active: &mut Active,
        at: OplogIndex,
        function: &str,
        params: &[Value],
        fuel: u64,
        start_commit: Option<(Duration, &StartCommit)>,
    ) -> Ran {
        let failed = |kind, message: String| Ran::Failed {
            kind,
            message,
            fuel_consumed: 0,
        };
        if function == DROP_FUNCTION {
            return drop_handle(active, params).await;
        }
        let Some(export) = self.compiled.function(function) else {
            return failed(
                FailureKind::Divergence,
                format!("the component no longer exports `{function}`"),
            );
        };
        let instance_index = match &export.instance {
            Some(name) => match self.pre.component().get_export_index(None, name.as_str()) {
                Some(i) => Some(i),
                None => return failed(FailureKind::Trap, format!("export {name} not found")),
            },
            None => None,
        };
        // Indices from the component the instance is made from: they belong to that value.
        let Some(func_index) = self
            .pre
            .component()
            .get_export_index(instance_index.as_ref(), export.function.as_str())
        else {
            return failed(FailureKind::Trap, format!("export {function} not found"));
        };
        let Some(func) = active.instance.get_func(&mut active.store, func_index) else {
            return failed(
                FailureKind::Trap,
                format!("export {function} is not a function"),
            );
        };
        if let Err(e) = active.store.set_fuel(fuel) {
            return failed(FailureKind::Trap, format!("set fuel: {e:#}"));
        }
        active.store.data_mut().limiter.memory_refused = false;
        // A live call may write what the plan leaves; a replayed one re-does what it did.
        let files_limit = start_commit.map(|_| self.files_limit());
        active.store.data().files.allow(files_limit);
        let deadline = self.timeout();
        // An HTTP handler is given its request and response slot as resources; its response,
        // collected meanwhile, is the invocation's result.
        let (args, collector) = if crate::incoming::is_handler(export) {
            match crate::incoming::arguments(&mut active.store, params, deadline) {
                Ok((args, collector)) => (args, Some(collector)),
                Err(message) => return failed(FailureKind::Trap, message),
            }
        } else {
            // Handles are resolved against the worker's table; an owned one passes to the
            // guest and leaves the table.
            let mut taken = Vec::new();
            let converted = params
                .iter()
                .zip(&export.params)
                .map(|(value, (_, ty))| {
                    value_to_val_with(value, ty, &mut |handle, owned, expected| {
                        let any = active.handles.get(handle).copied().ok_or_else(|| {
                            format!(
                                "no handle `{handle}` on this worker (unknown, dropped, or another worker's)"
                            )
                        })?;
                        // The parameter's type is the component's, the handle's the
                        // instance's: they are compared by the resource's name.
                        let wants = name_of(&self.resource_names, expected);
                        let has = name_of(&active.resource_names, &any.ty());
                        if let (Some(wants), Some(has)) = (wants, has)
                            && wants != has
                        {
                            return Err(format!(
                                "handle `{handle}` is a {has}; the parameter takes a {wants}"
                            ));
                        }
                        if owned {
                            taken.push(handle.to_string());
                        }
                        Ok(any)
                    })
                })
                .collect::<Result<Vec<_>, _>>();
            match converted {
                Ok(args) => {
                    for handle in taken {
                        active.handles.remove(&handle);
                    }
                    (args, None)
                }
                Err(e) => return failed(FailureKind::InvalidHandle, e.0),
            }
        };
        let mut results = vec![placeholder(); export.results.len()];
        let started = std::time::Instant::now();
        // Only live calls may be interrupted: replay re-does what is already recorded.
        let shared = self.shared.clone();
        let interrupted = shared.interrupt.notified();
        tokio::pin!(interrupted);
        // Requests left by an earlier call's instance are void.
        while self.suspend_rx.try_recv().is_ok() {}
        let mut suspended = None;
        let outcome = {
            let call = tokio::time::timeout(
                deadline,
                func.call_async(&mut active.store, &args, &mut results),
            );
            tokio::pin!(call);
            match start_commit {
                None => Some(call.await),
                Some((delay, start)) => {
                    interrupted.as_mut().enable();
                    shared.interrupt_parked.store(false, Ordering::Release);
                    *lock(&shared.phase) = Phase::Running;
                    let timer = tokio::time::sleep(delay);
                    tokio::pin!(timer);
                    let mut fired = false;
                    let outcome = loop {
                        tokio::select! {
                            outcome = &mut call => break Some(outcome),
                            () = &mut interrupted => break None,
                            () = &mut timer, if !fired => {
                                fired = true;
                                start.commit(&active.durability, None).await;
                            }
                            Some(reply) = self.checkpoint_rx.recv() => {
                                start.commit(&active.durability, Some(reply)).await;
                            }
                            Some(wake) = self.suspend_rx.recv() => {
                                suspended = Some(wake);
                                break None;
                            }
                        }
                    };
                    *lock(&shared.phase) = Phase::Active;
                    outcome
                }
            }
        };
        let fuel_left = active.store.get_fuel().unwrap_or(0);
        let fuel_consumed = fuel.saturating_sub(fuel_left);
        // Failures from here on burnt fuel.
        let failed = |kind, message: String| Ran::Failed {
            kind,
            message,
            fuel_consumed,
        };
        let diverged = host::lock(&active.durability)
            .diverged()
            .map(str::to_string);
        if let Some(message) = diverged {
            return failed(FailureKind::Divergence, message);
        }
        if let Some(wake) = suspended {
            return Ran::Suspended {
                wake,
                fuel_consumed,
            };
        }
        let Some(outcome) = outcome else {
            return failed(
                FailureKind::Interrupted,
                "the invocation was interrupted by a request".into(),
            );
        };
        match outcome {
            Err(_) => failed(
                FailureKind::Timeout,
                format!("the invocation ran longer than {} ms", deadline.as_millis()),
            ),
            Ok(Err(e)) if active.store.data().files.exceeded.load(Ordering::Relaxed) => failed(
                FailureKind::FilesTooLarge,
                format!(
                    "{e:#}: the invocation stopped, and its writes are undone (`files_per_worker_bytes` is {})",
                    self.files_limit()
                ),
            ),
            Ok(Err(e)) => {
                let memory = active.store.data().limiter.memory_refused;
                let (kind, message) = classify(&e, memory);
                failed(kind, message)
            }
            Ok(Ok(())) => match match collector {
                None => {
                    // Each resource returned is kept, under a handle made from this
                    // invocation's place in the oplog: a replay makes the same ones.
                    let mut made = 0_usize;
                    let names = &active.resource_names;
                    let handles = &mut active.handles;
                    results
                        .iter()
                        .map(|v| {
                            val_to_value_with(v, &mut |any| {
                                let handle = format!("h{at}-{made}");
                                made += 1;
                                let resource = names
                                    .iter()
                                    .find(|(ty, _)| *ty == any.ty())
                                    .map_or("resource", |(_, name)| name.as_str())
                                    .to_string();
                                handles.insert(handle.clone(), any);
                                Value::Handle { resource, handle }
                            })
                        })
                        .collect::<Option<Vec<_>>>()
                }
                Some(collector) => match collector.await {
                    Ok(Ok(response)) => Some(vec![response]),
                    Ok(Err(message)) => return failed(FailureKind::Trap, message),
                    Err(e) => {
                        return failed(FailureKind::Trap, format!("the handler's response: {e}"));
                    }
                },
            } {
                Some(results) => {
                    // A live invocation that left more files than the plan allows fails, and
                    // its writes go with its instance.
                    if start_commit.is_some()
                        && let Some((root, limit)) = self.files_to_check(active)
                    {
                        match files_usage(root, limit).await {
                            Ok(used) => active.store.data_mut().files.last_usage = used,
                            Err(message) => return failed(FailureKind::FilesTooLarge, message),
                        }
                    }
                    Ran::Completed {
                        results,
                        fuel_consumed,
                        usage: CallUsage {
                            wall_us: u64::try_from(started.elapsed().as_micros())
                                .unwrap_or(u64::MAX),
                            memory_bytes: active.store.data().limiter.memory_peak as u64,
                        },
                    }
                }
                None => failed(
                    FailureKind::Trap,
                    "the function returned a stream or a future, which cannot leave the worker"
                        .into(),
                ),
            },
        }
    }

    /// The worker's directory and the bytes it may hold, if it may have written since the
    /// last check.
    fn files_to_check(&self, active: &mut Active) -> Option<(std::path::PathBuf, u64)> {
        let files = &mut active.store.data_mut().files;
        if !files.may_have_grown() {
            return None;
        }
        files.dirty = false;
        files.touched = true;
        let root = files.root.clone()?;
        Some((root, self.files_limit()))
    }

    /// The bytes of files the worker may hold: its plan's, at most the executor's ceiling.
    fn files_limit(&self) -> u64 {
        let plan = lock(&self.shared.limits).files_per_worker_bytes;
        let ceiling = self.inner.config.worker_files_bytes_max;
        plan.unwrap_or(ceiling).min(ceiling)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.invocation_timeout_ms.max(1))
    }

    async fn run_live(&mut self, invocation: Arc<Invocation>) {
        let span = tracing::info_span!(
            parent: &invocation.span,
            "run invocation",
            worker = %self.id,
            function = %invocation.function,
            invocation_id = %invocation.idempotency_key,
        );
        self.run_live_in(invocation).instrument(span).await;
    }

    async fn run_live_in(&mut self, invocation: Arc<Invocation>) {
        let started = std::time::Instant::now();
        let Some(mut active) = self.active.take() else {
            self.finish(
                &invocation.idempotency_key,
                Err(Error::WorkerFailed("no instance".into())),
            );
            return;
        };
        let at = {
            let mut d = host::lock(&active.durability);
            d.go_live();
            d.append(OplogEntry::ExportedFunctionInvoked {
                timestamp_ms: now_ms(),
                function: invocation.function.clone(),
                params: invocation.params.clone(),
                idempotency_key: invocation.idempotency_key.clone(),
                limits: Some(InvocationLimits {
                    fuel: invocation.fuel,
                    memory_bytes: invocation.memory_bytes,
                    timeout_ms: self.inner.config.invocation_timeout_ms,
                    egress_hosts: invocation.egress_hosts.clone(),
                    workers_max: invocation.workers_max,
                }),
            })
        };
        let start = StartCommit {
            inner: self.inner.clone(),
            id: self.id.clone(),
            shared: self.shared.clone(),
            committed: AtomicBool::new(false),
        };
        let delay = Duration::from_millis(self.inner.config.start_commit_delay_ms);
        let ran = self
            .call(
                &mut active,
                at,
                &invocation.function,
                &invocation.params,
                invocation.fuel,
                Some((delay, &start)),
            )
            .await;
        if let Ran::Suspended {
            wake,
            fuel_consumed,
        } = ran
        {
            self.park(&invocation.idempotency_key, active, wake, fuel_consumed)
                .await;
            return;
        }
        let ran = limit_result(ran);
        let failed = matches!(ran, Ran::Failed { .. });
        self.active = Some(active);
        let start_committed = start.committed.load(Ordering::Acquire);
        // The reply goes out once the commit is durable; meanwhile the next invocation runs.
        drop(
            self.record_outcome(&invocation, ran, start_committed, Some(started))
                .await,
        );
        tracing::trace!(worker = %self.id, elapsed_us = started.elapsed().as_micros() as u64, "invocation ran and was submitted");
        if failed {
            // The failed invocation's effects on memory must not survive it.
            self.active = None;
            self.set_phase(Phase::Suspended);
        } else {
            self.after_invocation().await;
        }
    }

    /// Appends the outcome, submits the commit, and spawns the watcher that replies to the
    /// waiters once it is durable. The returned receiver fires at the same moment.
    async fn record_outcome(
        &mut self,
        invocation: &Invocation,
        ran: Ran,
        clear_running: bool,
        started: Option<std::time::Instant>,
    ) -> oneshot::Receiver<()> {
        let (notify_tx, notify_rx) = oneshot::channel();
        let Some(active) = self.active.as_ref() else {
            self.finish(
                &invocation.idempotency_key,
                Err(Error::WorkerFailed("no instance".into())),
            );
            return notify_rx;
        };
        let mut call_usage = None;
        let mut failed_fuel = 0_u64;
        let http_usage;
        let (entries, record, outcome) = {
            let mut d = host::lock(&active.durability);
            http_usage = (
                std::mem::take(&mut d.http_requests),
                std::mem::take(&mut d.http_request_bytes),
                std::mem::take(&mut d.http_response_bytes),
            );
            let ran = match ran {
                // Suspensions are parked, never recorded as outcomes.
                Ran::Suspended { fuel_consumed, .. } => Ran::Failed {
                    kind: FailureKind::Trap,
                    message: "the invocation suspended where it could not".into(),
                    fuel_consumed,
                },
                other => other,
            };
            let (entry, outcome): (OplogEntry, Outcome) = match ran {
                Ran::Suspended { .. } => return notify_rx,
                Ran::Completed {
                    results,
                    fuel_consumed,
                    usage,
                } => {
                    call_usage = Some(usage);
                    let json = results_json(&results);
                    (
                        OplogEntry::ExportedFunctionCompleted {
                            results,
                            fuel_consumed,
                        },
                        Ok(Completed {
                            result: json,
                            fuel_consumed,
                        }),
                    )
                }
                Ran::Failed {
                    kind,
                    message,
                    fuel_consumed,
                } => (
                    {
                        failed_fuel = fuel_consumed;
                        OplogEntry::Error {
                            kind: kind.clone(),
                            message: message.clone(),
                            fuel_consumed,
                        }
                    },
                    Err(Error::InvocationFailed { kind, message }),
                ),
            };
            let index = d.append(entry);
            let stored = match &outcome {
                Ok(c) => StoredOutcome::Completed {
                    result: c.result.clone(),
                    fuel_consumed: c.fuel_consumed,
                },
                Err(Error::InvocationFailed { kind, message }) => StoredOutcome::Failed {
                    kind: kind.clone(),
                    message: message.clone(),
                },
                Err(other) => StoredOutcome::Failed {
                    kind: FailureKind::Trap,
                    message: other.to_string(),
                },
            };
            let record = InvocationRecord {
                outcome: stored,
                fingerprint: invocation.fingerprint.clone(),
                oplog_index: index,
            };
            (d.take_pending(), record, outcome)
        };
        let mut commit = Commit::new(&self.id).entries(entries);
        self.shared
            .oplog_bytes
            .fetch_add(commit.oplog_bytes(), Ordering::Relaxed);
        let oplog_bytes = commit.oplog_bytes();
        // A background run that failed for a cause its policy retries runs again later: its
        // pending record, not an outcome, is written, with the count and the next run's time.
        let retry = match (&outcome, &invocation.retry, &invocation.pending) {
            (Err(Error::InvocationFailed { kind, message }), Some(policy), Some(pending))
                if invocation.enqueued && policy.retries(kind, invocation.runs + 1) =>
            {
                let runs = invocation.runs + 1;
                let at_ms = now_ms().saturating_add(policy.backoff_ms(runs));
                let mut next = (**pending).clone();
                next.attempts = runs;
                next.due_at_ms = Some(at_ms);
                let mut error = format!("{}: {message}", kind.code());
                if error.len() > 512 {
                    let mut end = 512;
                    while !error.is_char_boundary(end) {
                        end -= 1;
                    }
                    error.truncate(end);
                }
                next.last_error = Some(error);
                Some((at_ms, runs, next))
            }
            _ => None,
        };
        match &retry {
            Some((_, _, next)) => {
                commit = commit.record(
                    records::pending_key(&self.id, &invocation.idempotency_key),
                    records::encode_json(next),
                );
            }
            None => {
                // A key the executor made was never shown to anyone, so nobody can ask for its
                // outcome again: its record would only cost a page per commit.
                if !invocation.key_is_new {
                    commit = commit.record(
                        records::invocation_key(&self.id, &invocation.idempotency_key),
                        records::encode_json(&record),
                    );
                }
                if invocation.enqueued {
                    commit =
                        commit.clear(records::pending_key(&self.id, &invocation.idempotency_key));
                }
            }
        }
        if clear_running {
            commit = commit.clear(records::running_key(&self.id));
        }
        if let Some(at) = self.wake_set.take() {
            commit = commit.clear(crate::suspend::wake_key(at, &self.id));
        }
        // Usage is metered in the transaction that commits the work: never twice, never lost.
        let keys = self.meter.keys(
            self.id.tenant.as_str(),
            self.id.component.as_str(),
            now_ms(),
        );
        match (&outcome, call_usage) {
            (Ok(completed), Some(call)) => {
                let memory_kib_ms = (call.memory_bytes / 1024).saturating_mul(call.wall_us) / 1000;
                commit = commit
                    .add(keys.month_fuel.clone(), completed.fuel_consumed)
                    .add(keys.month_invocations.clone(), 1)
                    .add(keys.invocations.clone(), 1)
                    .add(keys.fuel.clone(), completed.fuel_consumed)
                    .add(keys.wall_us.clone(), call.wall_us)
                    .add(keys.memory_kib_ms.clone(), memory_kib_ms)
                    .add(keys.oplog_bytes.clone(), oplog_bytes);
            }
            // A failed invocation's fuel was burnt all the same: billed, not counted as one.
            (Err(_), _) if failed_fuel > 0 => {
                commit = commit
                    .add(keys.month_fuel.clone(), failed_fuel)
                    .add(keys.fuel.clone(), failed_fuel);
            }
            _ => {}
        }
        if http_usage.0 > 0 {
            commit = commit
                .add(keys.http_requests.clone(), http_usage.0)
                .add(keys.http_request_bytes.clone(), http_usage.1)
                .add(keys.http_response_bytes.clone(), http_usage.2);
        }
        let outcome = match retry {
            Some((at_ms, runs, _)) => Err(Error::RetryLater { at_ms, runs }),
            None => outcome,
        };
        let shared = self.shared.clone();
        let key = invocation.idempotency_key.clone();
        let worker = self.id.clone();
        // Runs on the committer thread the moment the commit is durable: the waiters hear
        // back from there, with no task in between.
        let metrics = self.inner.metrics.clone();
        let done: commit::Done = Box::new(move |result| {
            let outcome = match result {
                Ok(()) => outcome,
                Err(e) => {
                    tracing::warn!(%worker, error = %e, "commit failed");
                    shared.poisoned.store(true, Ordering::Release);
                    Err(e)
                }
            };
            match &outcome {
                Ok(completed) => {
                    metrics.outcome("completed");
                    metrics.fuel.inc_by(completed.fuel_consumed);
                }
                Err(Error::InvocationFailed { kind, .. }) => metrics.outcome(kind.code()),
                Err(Error::RetryLater { .. }) => metrics.outcome("retried"),
                Err(_) => metrics.outcome("commit_failed"),
            }
            if let Some(started) = started {
                metrics
                    .invocation_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            finish(&shared, &key, outcome);
            shared.commits_in_flight.fetch_sub(1, Ordering::AcqRel);
            shared.commits_done.notify_waiters();
            let _ = notify_tx.send(());
        });
        let request = commit.request(done);
        self.shared.commits_in_flight.fetch_add(1, Ordering::AcqRel);
        // Submitted here, in the actor, so that the worker's appends reach the committer in
        // order; the queue is bounded, so this waits when the disk falls behind. With nothing
        // queued the actor has nothing to do until it is durable, and may wait for it here;
        // otherwise it goes on with the next invocation meanwhile.
        if self.rx.is_empty() {
            self.inner.committer.submit_polling(request).await;
        } else {
            self.inner.committer.submit(request).await;
        }
        notify_rx
    }
}

/// Makes an invocation's start durable if it runs longer than the start-commit delay.
struct StartCommit {
    inner: Arc<Context>,
    id: WorkerId,
    shared: Arc<Shared>,
    committed: AtomicBool,
}

impl StartCommit {
    /// Commits the pending entries (with the running mark); `notify` hears once they are
    /// durable.
    async fn commit(&self, durability: &host::Shared, notify: Option<oneshot::Sender<bool>>) {
        let entries = host::lock(durability).take_pending();
        if entries.is_empty() {
            if let Some(notify) = notify {
                let _ = notify.send(true);
            }
            return;
        }
        let commit = Commit::new(&self.id)
            .entries(entries)
            .set(records::running_key(&self.id), Vec::new());
        self.shared
            .oplog_bytes
            .fetch_add(commit.oplog_bytes(), Ordering::Relaxed);
        let shared = self.shared.clone();
        let worker = self.id.clone();
        let done: commit::Done = Box::new(move |result| {
            if let Some(notify) = notify {
                let _ = notify.send(result.is_ok());
            }
            if let Err(e) = result {
                tracing::warn!(%worker, error = %e, "commit of an invocation's start failed");
                shared.poisoned.store(true, Ordering::Release);
            }
            shared.commits_in_flight.fetch_sub(1, Ordering::AcqRel);
            shared.commits_done.notify_waiters();
        });
        self.committed.store(true, Ordering::Release);
        self.shared.commits_in_flight.fetch_add(1, Ordering::AcqRel);
        self.inner.committer.submit(commit.request(done)).await;
    }
}

/// Waits until every commit the worker submitted is settled.
async fn wait_for_commits(shared: Arc<Shared>) {
    loop {
        let notified = shared.commits_done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.commits_in_flight.load(Ordering::Acquire) == 0 {
            return;
        }
        notified.await;
    }
}

fn finish(shared: &Shared, key: &str, outcome: Outcome) {
    lock(&shared.inflight_fingerprints).remove(key);
    let waiters = lock(&shared.inflight).remove(key).unwrap_or_default();
    for waiter in waiters {
        let copy = match &outcome {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(e.duplicate()),
        };
        let _ = waiter.send(copy);
    }
}

fn stored_outcome(outcome: StoredOutcome) -> Outcome {
    match outcome {
        StoredOutcome::Completed {
            result,
            fuel_consumed,
        } => Ok(Completed {
            result,
            fuel_consumed,
        }),
        StoredOutcome::Failed { kind, message } => Err(Error::InvocationFailed { kind, message }),
    }
}

/// The largest result an invocation may return, encoded: with its arguments (bounded by the
/// API's body limit) and its logs (`LOG_BYTES_MAX`) it must fit in one commit (10 MB).
pub(crate) const RESULT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A result too large to commit fails the invocation (and so leaves no trace in state).
fn limit_result(ran: Ran) -> Ran {
    let Ran::Completed {
        results,
        fuel_consumed,
        usage,
    } = ran
    else {
        return ran;
    };
    let size = OplogEntry::ExportedFunctionCompleted {
        results,
        fuel_consumed,
    };
    let bytes = size.encode().len();
    match size {
        OplogEntry::ExportedFunctionCompleted {
            results,
            fuel_consumed,
        } if bytes <= RESULT_BYTES_MAX => Ran::Completed {
            results,
            fuel_consumed,
            usage,
        },
        _ => Ran::Failed {
            fuel_consumed,
            kind: FailureKind::ResultTooLarge,
            message: format!(
                "the result is {bytes} bytes encoded; the limit is {RESULT_BYTES_MAX}"
            ),
        },
    }
}

/// The API's result: the one result's JSON, `null` for none, an array for several.
fn results_json(results: &[Value]) -> serde_json::Value {
    match results {
        [] => serde_json::Value::Null,
        [one] => one.to_json(),
        many => serde_json::Value::Array(many.iter().map(Value::to_json).collect()),
    }
}

/// The host-call and log entries from `pos` on, up to the next entry that ends or starts an
/// invocation; `pos` is left there.
fn side_entries(
    entries: &[(OplogIndex, OplogEntry)],
    pos: &mut usize,
) -> Vec<(OplogIndex, OplogEntry)> {
    let mut side = Vec::new();
    while let Some((index, entry)) = entries.get(*pos) {
        match entry {
            OplogEntry::ImportedFunctionInvoked { .. }
            | OplogEntry::Log { .. }
            | OplogEntry::BeginRemoteWrite { .. }
            | OplogEntry::EndRemoteWrite { .. }
            | OplogEntry::BeginAtomicRegion
            | OplogEntry::EndAtomicRegion { .. } => {
                side.push((*index, entry.clone()));
            }
            OplogEntry::Suspended { .. }
            | OplogEntry::Interrupted { .. }
            | OplogEntry::Jump { .. } => {}
            _ => break,
        }
        *pos += 1;
    }
    side
}

/// The function that drops a resource handle: `{"function": "[drop]", "params": [handle]}`.
/// Recorded like any invocation, so a replay drops it again at the same place.
pub(crate) const DROP_FUNCTION: &str = "[drop]";

/// Drops the resource a handle holds (its destructor runs in the guest).
async fn drop_handle(active: &mut Active, params: &[Value]) -> Ran {
    let failed = |message: String| Ran::Failed {
        kind: FailureKind::InvalidHandle,
        message,
        fuel_consumed: 0,
    };
    let [Value::Handle { handle, .. }] = params else {
        return failed("`[drop]` takes one handle".into());
    };
    let Some(any) = active.handles.remove(handle) else {
        return failed(format!(
            "no handle `{handle}` on this worker (unknown, dropped, or another worker's)"
        ));
    };
    let started = std::time::Instant::now();
    if let Err(e) = any.resource_drop_async(&mut active.store).await {
        return Ran::Failed {
            kind: FailureKind::Trap,
            message: format!("the resource's destructor failed: {e:#}"),
            fuel_consumed: 0,
        };
    }
    Ran::Completed {
        results: Vec::new(),
        fuel_consumed: 0,
        usage: CallUsage {
            wall_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            memory_bytes: active.store.data().limiter.memory_peak as u64,
        },
    }
}

/// The name of the resource of type `ty`, if known.
fn name_of<'a>(
    names: &'a [(wasmtime::component::ResourceType, String)],
    ty: &wasmtime::component::ResourceType,
) -> Option<&'a str> {
    names
        .iter()
        .find(|(t, _)| t == ty)
        .map(|(_, name)| name.as_str())
}

/// The names of the resources an instance exports (at the top level or one interface deep),
/// by their type in that instance.
fn instance_resource_names(
    pre: &InstancePre<WorkerCtx>,
    instance: &Instance,
    store: &mut wasmtime::Store<WorkerCtx>,
) -> Vec<(wasmtime::component::ResourceType, String)> {
    use wasmtime::component::types::ComponentItem;
    let component = pre.component();
    let engine = pre.engine();
    let mut out = Vec::new();
    for (name, item) in component.component_type().exports(engine) {
        match &item.ty {
            ComponentItem::Resource(_) => {
                if let Some(index) = component.get_export_index(None, name)
                    && let Some(ty) = instance.get_resource(&mut *store, index)
                {
                    out.push((ty, name.to_string()));
                }
            }
            ComponentItem::ComponentInstance(inner) => {
                let Some(at) = component.get_export_index(None, name) else {
                    continue;
                };
                for (rname, ritem) in inner.exports(engine) {
                    if let ComponentItem::Resource(_) = ritem.ty
                        && let Some(index) = component.get_export_index(Some(&at), rname)
                        && let Some(ty) = instance.get_resource(&mut *store, index)
                    {
                        out.push((ty, rname.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The oplog as replay sees it: without the entries a `Jump` skips (and the jumps).
pub(crate) fn apply_jumps(entries: Vec<(OplogIndex, OplogEntry)>) -> Vec<(OplogIndex, OplogEntry)> {
    let jumps: Vec<(OplogIndex, OplogIndex)> = entries
        .iter()
        .filter_map(|(_, e)| match e {
            OplogEntry::Jump { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    if jumps.is_empty() {
        return entries;
    }
    entries
        .into_iter()
        .filter(|(i, e)| {
            !matches!(e, OplogEntry::Jump { .. })
                && !jumps.iter().any(|(from, to)| (*from..=*to).contains(i))
        })
        .collect()
}

/// Where the outermost atomic region that began among `side` and did not end begins.
fn unfinished_region(side: &[(OplogIndex, OplogEntry)]) -> Option<OplogIndex> {
    let mut open: Vec<OplogIndex> = Vec::new();
    for (index, entry) in side {
        match entry {
            OplogEntry::BeginAtomicRegion => open.push(*index),
            OplogEntry::EndAtomicRegion { begin } => open.retain(|b| b != begin),
            _ => {}
        }
    }
    open.first().copied()
}

fn check_consumed(durability: &host::Shared, what: &str) -> Result<(), Error> {
    let d = host::lock(durability);
    if let Some(message) = d.diverged() {
        return Err(Error::WorkerFailed(message.to_string()));
    }
    match d.unconsumed() {
        Some((index, kind)) if !d.is_live() => Err(Error::WorkerFailed(format!(
            "replay diverged: {what} did not make the host call recorded at oplog entry {index} ({kind})"
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn classify(error: &wasmtime::Error, memory_refused: bool) -> (FailureKind, String) {
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return (
            FailureKind::Exit,
            format!("the worker exited with status {}", exit.0),
        );
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        if *trap == wasmtime::Trap::OutOfFuel {
            return (
                FailureKind::OutOfFuel,
                "the invocation used up its fuel".into(),
            );
        }
        if memory_refused {
            return (
                FailureKind::OutOfMemory,
                format!("the worker asked for more memory than it may have ({trap})"),
            );
        }
        return (FailureKind::Trap, trap.to_string());
    }
    if memory_refused {
        return (
            FailureKind::OutOfMemory,
            format!("the worker asked for more memory than it may have: {error}"),
        );
    }
    let text = format!("{error:#}");
    (FailureKind::Trap, text.chars().take(2_000).collect())
}

/// Where a recovery from a snapshot starts: the entries it replays, the index after them, the
/// snapshot's bytes and its archive of the worker's files (`None`: a later jump reaches back
/// over the snapshot).
type SnapshotStart = Option<(
    Vec<(OplogIndex, OplogEntry)>,
    OplogIndex,
    bytes::Bytes,
    Option<bytes::Bytes>,
)>;

/// Makes a worker's directory `dir` afresh from its version's files (`blob`, their archive), or
/// from a snapshot's archive of it.
async fn prepare_files(
    blob: Option<invicta_blob::BlobRef>,
    blobs: invicta_blob::BlobStore,
    dir: std::path::PathBuf,
    snapshot: Option<bytes::Bytes>,
) -> Result<crate::files::Files, Error> {
    if let Some(archive) = snapshot {
        return tokio::task::spawn_blocking(move || crate::files::restore(&dir, &archive))
            .await
            .map_err(|e| Error::Engine(format!("restore the worker's files: {e}")))?
            .map_err(|e| Error::Engine(format!("restore the worker's files: {e}")));
    }
    let archive = match &blob {
        Some(blob) => Some(
            blobs
                .get_verified(blob)
                .await
                .map_err(|e| Error::Engine(format!("the version's files: {e}")))?,
        ),
        None => None,
    };
    tokio::task::spawn_blocking(move || crate::files::prepare(&dir, archive.as_deref()))
        .await
        .map_err(|e| Error::Engine(format!("prepare the worker's files: {e}")))?
        .map_err(|e| Error::Engine(format!("prepare the worker's files: {e}")))
}

/// The bytes the files under `root` take, or why they are more than `limit` bytes (or entries).
async fn files_usage(root: std::path::PathBuf, limit: u64) -> Result<u64, String> {
    let (used, entries) =
        match tokio::task::spawn_blocking(move || crate::files::usage(&root)).await {
            Ok(Ok(used)) => used,
            Ok(Err(e)) => return Err(format!("the worker's files could not be measured: {e}")),
            Err(e) => return Err(format!("the worker's files could not be measured: {e}")),
        };
    if entries > crate::files::ENTRIES_MAX {
        return Err(format!(
            "the worker's files would be more than {} entries (files, directories, links): the invocation's writes are undone",
            crate::files::ENTRIES_MAX
        ));
    }
    if used > limit {
        return Err(format!(
            "the worker's files would take {used} bytes; `files_per_worker_bytes` allows {limit}: the invocation's writes are undone"
        ));
    }
    Ok(used)
}
