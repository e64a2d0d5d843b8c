//! What the caller's plan allows an invocation.

/// What the caller's plan allows; the executor enforces it where the work happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The invocation's fuel budget (at most the executor's own `fuel_per_invocation`).
    pub fuel_per_invocation: u64,
    /// Fuel the tenant may use this month, checked before an invocation starts.
    pub fuel_per_month: u64,
    /// Memory of one worker (at most the engine's `memory_bytes_max`).
    pub memory_per_worker_bytes: u64,
    /// Workers the tenant may have.
    pub workers_max: u64,
    /// Hosts the tenant's workers may send requests to (`None`: any public host).
    pub egress_hosts: Option<Vec<String>>,
    /// Background invocations (enqueued or scheduled) of the tenant that may be accepted and
    /// not yet settled at once, on one executor; more are refused (`quota_exceeded`).
    pub concurrent_invocations: u64,
    /// When a background invocation that failed runs again (`None`: never).
    pub retry: Option<invicta_model::retry::RetryPolicy>,
    /// Archived oplog segments older than this many days are deleted (`None`: kept).
    pub archive_retention_days: Option<u32>,
    /// Bytes of files one worker may hold (`None`: the executor's `worker_files_bytes_max`).
    pub files_per_worker_bytes: Option<u64>,
}

impl Limits {
    /// No limits beyond the executor's and engine's own.
    pub fn unlimited() -> Limits {
        Limits {
            fuel_per_invocation: u64::MAX,
            fuel_per_month: u64::MAX,
            memory_per_worker_bytes: u64::MAX,
            workers_max: u64::MAX,
            egress_hosts: None,
            concurrent_invocations: u64::MAX,
            retry: None,
            archive_retention_days: None,
            files_per_worker_bytes: None,
        }
    }
}
