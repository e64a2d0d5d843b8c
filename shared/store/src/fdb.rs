//! The FoundationDB backend (cargo feature `fdb`): the store's operations map one to one onto a
//! FoundationDB transaction, and the retry loop is FoundationDB's own (`on_error`, which backs off
//! and resets the transaction when an error is retryable).
//!
//! Transaction bodies are synchronous and run on a blocking thread, so every FoundationDB future
//! is waited for with [`futures::executor::block_on`]; the client's network thread completes them.
//!
//! The client network is started once per process, the first time a store is opened, and stopped
//! by an exit handler: FoundationDB's C API leaves the behaviour undefined when a process exits
//! with its network still running.

use std::path::Path;
use std::sync::{Mutex, OnceLock, TryLockError};
use std::time::Duration;

use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::options::{MutationType, StreamingMode, TransactionOption};
use foundationdb::{Database, FdbError, FdbResult, RangeOption, Transaction};
use futures::executor::block_on;

use crate::{BackendImpl, Body, Error, KeyValue, Outcome, RawTransaction, Result};

/// How long one run of a transaction, retries included, may take before FoundationDB cancels it
/// (`transaction_timed_out`). Without it the client retries forever when the cluster is
/// unreachable. FoundationDB counts it from the transaction's creation and does not restart it
/// on `on_error`, so it bounds the whole retry loop.
const RUN_TIMEOUT: Duration = Duration::from_millis(5_000);

/// A FoundationDB cluster.
pub(crate) struct Fdb {
    db: Database,
}

impl Fdb {
    /// Starts the client network if this process has not yet, and opens the database the cluster
    /// file names (FoundationDB's default cluster file when `None`). Connecting is lazy: an
    /// unreachable cluster shows in the first transaction, as a timeout.
    pub(crate) fn open(cluster_file: Option<&Path>) -> Result<Fdb> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Open {
            path: cluster_file.map(Path::to_path_buf).unwrap_or_default(),
            source,
        };
        start_network().map_err(|e| open_error(e.into()))?;
        let path = match cluster_file {
            None => None,
            Some(path) => {
                let path = path
                    .to_str()
                    .ok_or_else(|| open_error("the cluster file path is not valid UTF-8".into()))?;
                // The binding turns the path into a C string and panics on a NUL byte.
                if path.contains('\0') {
                    return Err(open_error(
                        "the cluster file path contains a NUL byte".into(),
                    ));
                }
                Some(path)
            }
        };
        let db = Database::new(path).map_err(|e| open_error(e.into()))?;
        Ok(Fdb { db })
    }

    /// A fresh transaction with the store's options set.
    fn transaction(&self, attempts_max: u32) -> Result<Transaction> {
        let trx = self.db.create_trx().map_err(fdb_error)?;
        let timeout_ms = i32::try_from(RUN_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
        trx.set_option(TransactionOption::Timeout(timeout_ms))
            .map_err(fdb_error)?;
        // A backstop only: `run` stops retrying after `attempts_max` attempts, that is before
        // `on_error` has been called this many times.
        let retry_limit = i32::try_from(attempts_max).unwrap_or(i32::MAX);
        trx.set_option(TransactionOption::RetryLimit(retry_limit))
            .map_err(fdb_error)?;
        Ok(trx)
    }
}

impl BackendImpl for Fdb {
    fn run(&self, write: bool, attempts_max: u32, body: &mut Body<'_>) -> Result<()> {
        let mut trx = self.transaction(attempts_max)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (outcome, first_error) = {
                let mut raw = FdbTransaction {
                    trx: &trx,
                    first_error: None,
                };
                let outcome = body(&mut raw);
                (outcome, raw.first_error)
            };
            let reset = match outcome {
                // Dropping the transaction destroys it, cancelling whatever it still had pending.
                Ok(Outcome::Rollback) => return Ok(()),
                // A read-only transaction has nothing to commit: its reads were all at one
                // consistent read version.
                Ok(Outcome::Commit) if !write => return Ok(()),
                Ok(Outcome::Commit) => match block_on(trx.commit()) {
                    Ok(_committed) => return Ok(()),
                    Err(failed) => {
                        let error = *failed;
                        check_retry(error, attempts, attempts_max)?;
                        block_on(failed.on_error())
                    }
                },
                Err(e) => {
                    // The store's transaction hands back the first error it met; when that came
                    // from FoundationDB, this wrapper kept its code, which `on_error` needs.
                    let error = match first_error {
                        Some(error) if matches!(e, Error::Fdb { .. }) => error,
                        _ => return Err(e),
                    };
                    check_retry(error, attempts, attempts_max)?;
                    block_on(trx.on_error(error))
                }
            };
            trx = reset.map_err(fdb_error)?;
        }
    }
}

/// Decides whether an attempt that failed with `error` may run again: a non-retryable error is
/// returned as it is, a retryable one becomes [`Error::Conflict`] once the attempts run out.
fn check_retry(error: FdbError, attempts: u32, attempts_max: u32) -> Result<()> {
    if !error.is_retryable() {
        return Err(fdb_error(error));
    }
    if attempts >= attempts_max {
        return Err(Error::Conflict { attempts });
    }
    if error.is_maybe_committed() {
        // As in every FoundationDB binding's retry loop: the commit may have been applied, and
        // running the body again applies it a second time unless the body is idempotent.
        tracing::warn!(
            attempts,
            code = error.code(),
            %error,
            "foundationdb commit result unknown; running the transaction again"
        );
    } else {
        tracing::debug!(attempts, code = error.code(), %error, "retry foundationdb transaction");
    }
    Ok(())
}

/// The store's error for a FoundationDB error, with its code in the message.
fn fdb_error(error: FdbError) -> Error {
    Error::Fdb {
        message: format!("{} (error {})", error.message(), error.code()),
        retryable: error.is_retryable(),
    }
}

/// One attempt's view of a FoundationDB transaction. Reads see the transaction's own writes
/// (FoundationDB's default) and are serializable (not snapshot reads), so that what they read
/// conflicts with concurrent writers at commit.
struct FdbTransaction<'t> {
    trx: &'t Transaction,
    /// The first error FoundationDB returned in this attempt, kept for `on_error`.
    first_error: Option<FdbError>,
}

impl FdbTransaction<'_> {
    fn check<T>(&mut self, result: FdbResult<T>) -> Result<T> {
        result.map_err(|error| {
            self.first_error.get_or_insert(error);
            fdb_error(error)
        })
    }
}

impl RawTransaction for FdbTransaction<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = block_on(self.trx.get(key, false));
        Ok(self.check(value)?.map(|slice| slice.to_vec()))
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<KeyValue>> {
        // FoundationDB reads a limit of 0 as "no limit".
        if limit == Some(0) {
            return Ok(Vec::new());
        }
        // The caller takes the whole range (up to `limit`) at once, so ask for large batches.
        let mut option = RangeOption {
            limit,
            reverse,
            mode: StreamingMode::WantAll,
            ..RangeOption::from((begin, end))
        };
        let mut pairs = Vec::new();
        let mut iteration = 1;
        loop {
            let batch = block_on(self.trx.get_range(&option, iteration, false));
            let batch = self.check(batch)?;
            pairs.extend(batch.iter().map(|kv| KeyValue {
                key: kv.key().to_vec(),
                value: kv.value().to_vec(),
            }));
            // The rest of the range past this batch, with the limit reduced by what it held;
            // `None` once the range is exhausted or the limit reached.
            match option.next_range(&batch) {
                Some(next) => option = next,
                None => break,
            }
            iteration += 1;
        }
        if let Some(limit) = limit {
            pairs.truncate(limit);
        }
        Ok(pairs)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.trx.set(key, value);
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<()> {
        self.trx.clear(key);
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()> {
        self.trx.clear_range(begin, end);
        Ok(())
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<()> {
        // Two's-complement little-endian: adding a negative delta subtracts.
        self.trx
            .atomic_op(key, &delta.to_le_bytes(), MutationType::Add);
        Ok(())
    }
}

/// The running client network, taken and stopped by [`stop_network`] at exit.
static NETWORK: Mutex<Option<NetworkAutoStop>> = Mutex::new(None);

/// Whether the network started: FoundationDB allows selecting the API version and starting the
/// network once per process, so a failure is final too.
static NETWORK_STARTED: OnceLock<Result<(), FdbError>> = OnceLock::new();

/// Starts the client network the first time it is called; later calls return the first result.
fn start_network() -> Result<(), FdbError> {
    *NETWORK_STARTED.get_or_init(boot_network)
}

#[allow(unsafe_code)]
fn boot_network() -> Result<(), FdbError> {
    unsafe extern "C" {
        // The C library's `atexit`.
        fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
    }

    // Panics only when called twice in a process, which `NETWORK_STARTED` prevents (nothing else
    // in the workspace selects the API version).
    let builder = FdbApiBuilder::default().build()?;
    // SAFETY: `boot` requires the returned guard to be dropped (which stops the network and joins
    // its thread) before the process exits. It is kept in `NETWORK` and dropped by
    // `stop_network`, registered with `atexit` just below; a process that aborts needs no stop.
    let network = unsafe { builder.boot() }?;
    *NETWORK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(network);
    // SAFETY: `atexit` only records the function pointer; `stop_network` is a plain `extern "C"`
    // function that never unwinds.
    if unsafe { atexit(stop_network) } != 0 {
        tracing::warn!(
            "could not register the foundationdb network's exit handler; the process may crash when it exits"
        );
    }
    Ok(())
}

/// Exit handler: stops the client network and waits for its thread, before the C library's
/// static objects are destroyed under it (they were registered earlier, so they go later).
extern "C" fn stop_network() {
    let network = match NETWORK.try_lock() {
        Ok(mut network) => network.take(),
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().take(),
        // Only `boot_network` holds the lock, briefly; never wait for it while exiting.
        Err(TryLockError::WouldBlock) => None,
    };
    if let Some(network) = network {
        // Dropping the guard stops the network and joins its thread, and panics if the thread
        // panicked: that must not unwind out of an `extern "C"` function.
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(network)));
        if stopped.is_err() {
            eprintln!("foundationdb network thread failed while stopping");
        }
    }
}
