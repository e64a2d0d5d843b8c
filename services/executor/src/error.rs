//! The executor's errors, each with the stable code the API reports.

use invicta_engine::values::ValueError;
use invicta_model::oplog::{FailureKind, OplogIndex};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("worker {0} not found")]
    WorkerNotFound(String),
    #[error("worker {0} already exists")]
    WorkerExists(String),
    #[error("no invocation with idempotency key `{0}` on this worker")]
    InvocationNotFound(String),
    #[error("the worker cannot move to that version: {0}")]
    IncompatibleVersion(String),
    #[error("invalid schedule: {0}")]
    InvalidSchedule(String),
    /// A revert that cannot be made as asked.
    #[error("cannot revert the worker: {0}")]
    InvalidRevert(String),
    /// A fork that cannot be made as asked.
    #[error("cannot fork the worker: {0}")]
    InvalidFork(String),
    #[error("schedule {0} not found")]
    ScheduleNotFound(String),
    #[error("promise {0} not found")]
    PromiseNotFound(String),
    /// No promise has this webhook (never had, or its worker is gone).
    #[error("no promise has this webhook")]
    WebhookNotFound,
    #[error("promise {0} is already completed, with other data")]
    PromiseCompleted(String),
    #[error("the promise's data is {size} bytes as JSON; the limit is {limit}")]
    PromiseTooLarge { size: usize, limit: usize },
    #[error("component {component} has no exported function `{function}`; it exports: {available}")]
    UnknownFunction {
        component: String,
        function: String,
        available: String,
    },
    #[error("function `{function}` takes {expected} parameter(s), got {got}")]
    ParamCount {
        function: String,
        expected: usize,
        got: usize,
    },
    #[error(transparent)]
    InvalidParam(#[from] ValueError),
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
    /// The key was used before for another function or other parameters.
    #[error(
        "idempotency key `{0}` was used before for another request (another function or other parameters); use a new key"
    )]
    IdempotencyKeyReused(String),
    #[error("the invocation failed ({}): {message}", kind.code())]
    InvocationFailed { kind: FailureKind, message: String },
    #[error("the worker's oplog cannot be replayed: {0}")]
    WorkerFailed(String),
    #[error("the worker's queue is full ({0} invocations waiting)")]
    QueueFull(usize),
    #[error("no instance slot is free on this executor: {0}")]
    PoolExhausted(String),
    #[error("component: {0}")]
    Component(#[from] invicta_component_registry::Error),
    #[error("store: {0}")]
    Store(#[from] invicta_store::Error),
    #[error("oplog of {worker} has no entry before index {index}, or already has that index")]
    OplogGap { worker: String, index: OplogIndex },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("quota `{quota}` exceeded: the limit is {limit}, {used} used")]
    QuotaExceeded {
        quota: &'static str,
        limit: u64,
        used: u64,
    },
    #[error("wasmtime: {0}")]
    Engine(String),
    #[error("the executor is shutting down")]
    ShuttingDown,
    /// The commit's executor no longer holds the worker's shard: another executor runs it now.
    #[error("worker {worker} moved: this executor no longer holds shard {shard}")]
    Fenced { worker: String, shard: u32 },
    /// This executor does not own the worker's shard.
    #[error("worker {worker} is in shard {shard}, which this executor does not own")]
    NotOwner { worker: String, shard: u32 },
    /// The executor that owns the worker refused, with its error's code.
    #[error("{message}")]
    Remote { code: String, message: String },
    /// A background invocation's run failed and its policy runs it again at `at_ms`; `runs`:
    /// the runs that failed so far.
    #[error("the run failed and runs again at {at_ms}")]
    RetryLater { at_ms: u64, runs: u32 },
    /// The component cannot serve HTTP: it exports no `wasi:http/incoming-handler`, or imports
    /// what an ephemeral handler is not given.
    #[error("{0}")]
    NotAHandler(String),
    /// An HTTP handler ran but gave no usable response.
    #[error("{0}")]
    HandlerFailed(String),
    /// A request that cannot be handed to a handler as it is.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The worker's actor stopped as the invocation reached it; the caller sends it again.
    #[error("the worker was suspending; try again")]
    Retry,
    /// Nothing at this path of the worker's files.
    #[error("the worker has no file or directory `{0}`")]
    FileNotFound(String),
    /// A path of a worker's files that is not one, or that the API does not follow.
    #[error("{0}")]
    InvalidPath(String),
    /// A file larger than the API returns.
    #[error("the file is {size} bytes; the API returns files of at most {limit} bytes")]
    FileTooLarge { size: u64, limit: u64 },
}

impl Error {
    /// The stable code the API reports for this error.
    pub fn code(&self) -> &str {
        match self {
            Error::WorkerNotFound(_) => "worker_not_found",
            Error::WorkerExists(_) => "worker_exists",
            Error::InvocationNotFound(_) => "invocation_not_found",
            Error::IncompatibleVersion(_) => "incompatible_version",
            Error::InvalidSchedule(_) => "invalid_schedule",
            Error::InvalidRevert(_) => "invalid_revert",
            Error::InvalidFork(_) => "invalid_fork",
            Error::ScheduleNotFound(_) => "schedule_not_found",
            Error::PromiseNotFound(_) => "promise_not_found",
            Error::WebhookNotFound => "webhook_not_found",
            Error::PromiseCompleted(_) => "promise_completed",
            Error::PromiseTooLarge { .. } => "promise_too_large",
            Error::UnknownFunction { .. } => "unknown_function",
            Error::ParamCount { .. } | Error::InvalidParam(_) => "invalid_params",
            Error::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            Error::IdempotencyKeyReused(_) => "idempotency_key_reused",
            Error::InvocationFailed { kind, .. } => kind.code(),
            Error::WorkerFailed(_) => "worker_failed",
            Error::QueueFull(_) => "queue_full",
            Error::PoolExhausted(_) => "capacity_exhausted",
            Error::QuotaExceeded { .. } => "quota_exceeded",
            Error::Fenced { .. } | Error::NotOwner { .. } => "worker_moved",
            Error::ShuttingDown | Error::Retry | Error::RetryLater { .. } => "unavailable",
            Error::Component(_) => "component_error",
            Error::NotAHandler(_) => "not_a_handler",
            Error::HandlerFailed(_) => "handler_failed",
            Error::InvalidRequest(_) => "invalid_request",
            Error::FileNotFound(_) => "file_not_found",
            Error::InvalidPath(_) => "invalid_path",
            Error::FileTooLarge { .. } => "file_too_large",
            Error::Remote { code, .. } => code,
            Error::Store(_) | Error::OplogGap { .. } | Error::Corrupt(_) | Error::Engine(_) => {
                "internal"
            }
        }
    }

    /// A copy for every waiter of a shared outcome.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::InvocationFailed { kind, message } => Error::InvocationFailed {
                kind: kind.clone(),
                message: message.clone(),
            },
            Error::WorkerFailed(m) => Error::WorkerFailed(m.clone()),
            Error::WorkerNotFound(m) => Error::WorkerNotFound(m.clone()),
            Error::QueueFull(n) => Error::QueueFull(*n),
            Error::PoolExhausted(m) => Error::PoolExhausted(m.clone()),
            Error::QuotaExceeded { quota, limit, used } => Error::QuotaExceeded {
                quota,
                limit: *limit,
                used: *used,
            },
            Error::ShuttingDown => Error::ShuttingDown,
            Error::Fenced { worker, shard } => Error::Fenced {
                worker: worker.clone(),
                shard: *shard,
            },
            Error::Remote { code, message } => Error::Remote {
                code: code.clone(),
                message: message.clone(),
            },
            Error::Retry => Error::Retry,
            Error::RetryLater { at_ms, runs } => Error::RetryLater {
                at_ms: *at_ms,
                runs: *runs,
            },
            Error::NotOwner { worker, shard } => Error::NotOwner {
                worker: worker.clone(),
                shard: *shard,
            },
            Error::IdempotencyKeyReused(k) => Error::IdempotencyKeyReused(k.clone()),
            Error::OplogGap { worker, index } => Error::OplogGap {
                worker: worker.clone(),
                index: *index,
            },
            other => Error::Engine(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
