//! The transactional key-value store every Invicta service shares.
//!
//! The interface is FoundationDB's model, so that nothing changes when a deployment moves onto a
//! FoundationDB cluster: ordered byte keys, serializable multi-key transactions run through a retry
//! loop, range reads with a limit and in reverse, read-your-writes, atomic add, and FoundationDB's
//! limits (see [`limits`]) enforced with typed errors whatever the backend. Keys are built with the
//! order-preserving tuple encoding re-exported in [`keys`].
//!
//! Backends: [`Backend::Embedded`] (SQLite in WAL mode, durable per commit, shared by several
//! processes on one host) and, with the `fdb` feature, FoundationDB.
//!
//! **Boundary:** only this crate knows which backend is in use.

mod counters;
mod embedded;
#[cfg(feature = "fdb")]
mod fdb;
pub mod keys;
pub mod limits;
mod transaction;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use transaction::{KeyValue, RangeOptions, Transaction};

/// The value of a counter that [`Transaction::atomic_add`] maintains, from its stored bytes.
pub fn decode_counter(bytes: &[u8]) -> i64 {
    counters::decode_i64(bytes)
}

/// Errors of the store. Limit errors are the caller's fault and change nothing; the others are
/// the store's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key is {size} bytes; the limit is {limit} bytes")]
    KeyTooLarge { size: usize, limit: usize },
    #[error("value is {size} bytes; the limit is {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    #[error("transaction writes {size} bytes; the limit is {limit} bytes")]
    TransactionTooLarge { size: usize, limit: usize },
    #[error("transaction ran for {elapsed_ms} ms; the limit is {limit_ms} ms")]
    TransactionTooOld { elapsed_ms: u128, limit_ms: u128 },
    #[error("keys starting with 0xFF are reserved for the store")]
    ReservedKey,
    #[error("range begin is after its end")]
    InvalidRange,
    #[error("a read-only transaction cannot write")]
    ReadOnly,
    /// Another transaction changed what this one read, or held the store's write lock for too
    /// long. Retried by [`Store::transact`]; seen by callers only once retries run out.
    #[error("transaction conflicted and was not committed after {attempts} attempts")]
    Conflict { attempts: u32 },
    #[error("open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("embedded store: {0}")]
    Embedded(#[from] rusqlite::Error),
    #[error("foundationdb: {message}")]
    Fdb { message: String, retryable: bool },
    #[error("the store's worker thread failed: {0}")]
    Task(String),
}

impl Error {
    /// Whether running the transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Embedded(e) => embedded::is_busy(e),
            Error::Fdb { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Whether the error is the caller's (a limit or a malformed request) rather than the store's.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            Error::KeyTooLarge { .. }
                | Error::ValueTooLarge { .. }
                | Error::TransactionTooLarge { .. }
                | Error::TransactionTooOld { .. }
                | Error::ReservedKey
                | Error::InvalidRange
                | Error::ReadOnly
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which backend to open, and where.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum Config {
    /// SQLite in WAL mode at `path`, `synchronous=FULL`: every commit is on disk when it returns.
    Embedded { path: PathBuf },
    /// A FoundationDB cluster, found through its cluster file (needs the `fdb` feature).
    Fdb { cluster_file: Option<PathBuf> },
}

impl Config {
    /// The embedded store in `data_dir/store.sqlite`.
    pub fn embedded_in(data_dir: &std::path::Path) -> Self {
        Config::Embedded {
            path: data_dir.join("store.sqlite"),
        }
    }
}

/// What a transaction body asks of its backend once it has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Commit,
    Rollback,
}

/// One backend's side of a transaction: plain operations, no limits, no retries.
pub(crate) trait RawTransaction {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<KeyValue>>;
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    fn clear(&mut self, key: &[u8]) -> Result<()>;
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()>;
    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<()>;
}

/// The body a backend runs in each attempt. `Err` carries the store error that ended the attempt;
/// the backend retries it when it is retryable.
pub(crate) type Body<'a> = dyn FnMut(&mut dyn RawTransaction) -> Result<Outcome> + 'a;

pub(crate) trait BackendImpl: Send + Sync + 'static {
    /// Runs `body` in fresh transactions until one commits or rolls back, at most `attempts_max`
    /// times. `write == false` runs a read-only snapshot transaction.
    fn run(&self, write: bool, attempts_max: u32, body: &mut Body<'_>) -> Result<()>;
}

/// How many times a conflicting transaction is run before [`Error::Conflict`] is returned.
/// Conflicts in the embedded backend are rare (writers queue on a lock); this bounds a livelock.
pub const ATTEMPTS_MAX: u32 = 64;

/// A handle on the store: cheap to clone, shared by every task of a process.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn BackendImpl>,
    kind: &'static str,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.kind)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store `config` names.
    pub fn open(config: &Config) -> Result<Store> {
        match config {
            Config::Embedded { path } => Ok(Store {
                backend: Arc::new(embedded::Embedded::open(path)?),
                kind: "embedded",
            }),
            #[cfg(feature = "fdb")]
            Config::Fdb { cluster_file } => Ok(Store {
                backend: Arc::new(fdb::Fdb::open(cluster_file.as_deref())?),
                kind: "fdb",
            }),
            #[cfg(not(feature = "fdb"))]
            Config::Fdb { cluster_file } => Err(Error::Open {
                path: cluster_file.clone().unwrap_or_default(),
                source: "this build has no FoundationDB support (cargo feature `fdb`)".into(),
            }),
        }
    }

    /// The backend's name: `embedded` or `fdb`.
    pub fn backend_name(&self) -> &'static str {
        self.kind
    }

    /// Runs `body` in a serializable read-write transaction on a blocking thread, retrying it on
    /// conflicts, and commits what it wrote when it returns `Ok`. `body` may run more than once:
    /// it must not have effects outside the transaction.
    pub async fn transact<T, E, F>(&self, body: F) -> Result<T, E>
    where
        F: FnMut(&mut Transaction<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.transact_blocking(body))
            .await
            .map_err(|e| E::from(Error::Task(e.to_string())))?
    }

    /// Like [`Store::transact`], reading a consistent snapshot without taking the write lock;
    /// writes fail with [`Error::ReadOnly`].
    pub async fn read<T, E, F>(&self, body: F) -> Result<T, E>
    where
        F: FnMut(&mut Transaction<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.run_blocking(false, body))
            .await
            .map_err(|e| E::from(Error::Task(e.to_string())))?
    }

    /// [`Store::transact`] for callers that are not async (they block the thread meanwhile).
    pub fn transact_blocking<T, E, F>(&self, body: F) -> Result<T, E>
    where
        F: FnMut(&mut Transaction<'_>) -> Result<T, E>,
        E: From<Error>,
    {
        self.run_blocking(true, body)
    }

    /// [`Store::read`] for callers that are not async.
    pub fn read_blocking<T, E, F>(&self, body: F) -> Result<T, E>
    where
        F: FnMut(&mut Transaction<'_>) -> Result<T, E>,
        E: From<Error>,
    {
        self.run_blocking(false, body)
    }

    fn run_blocking<T, E, F>(&self, write: bool, mut body: F) -> Result<T, E>
    where
        F: FnMut(&mut Transaction<'_>) -> Result<T, E>,
        E: From<Error>,
    {
        let mut result: Option<Result<T, E>> = None;
        let run = self.backend.run(write, ATTEMPTS_MAX, &mut |raw| {
            let mut tx = Transaction::new(raw, write);
            let outcome = body(&mut tx);
            match (outcome, tx.into_failure()) {
                (Ok(value), None) => {
                    result = Some(Ok(value));
                    Ok(Outcome::Commit)
                }
                // The body carried on past a store error (or swallowed it): never commit half a
                // transaction; give the error back so that a retryable one runs the body again.
                (Ok(_), Some(failure)) => Err(failure),
                (Err(_), Some(failure)) if failure.is_retryable() => Err(failure),
                (Err(e), _) => {
                    result = Some(Err(e));
                    Ok(Outcome::Rollback)
                }
            }
        });
        match run {
            Ok(()) => result
                .unwrap_or_else(|| Err(Error::Task("transaction body never ran".into()).into())),
            Err(e) => Err(e.into()),
        }
    }
}
