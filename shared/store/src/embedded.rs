//! The embedded backend: SQLite in WAL mode with `synchronous=FULL`, one table of ordered blob
//! keys. Every commit is on disk when it returns, and several processes can open the same file.
//!
//! Writers are serialized: inside a process by a mutex around the one writing connection, across
//! processes by SQLite's write lock (`BEGIN IMMEDIATE`, waiting in a short busy loop). A
//! transaction therefore holds the lock from its first statement to its commit, which makes it
//! serializable without conflict detection; read-only transactions read a WAL snapshot on their
//! own connections and never wait for writers.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use crate::counters::decode_i64;
use crate::{BackendImpl, Body, Error, KeyValue, Outcome, RawTransaction, Result};

/// How long a writer waits in total for another process's write lock before the attempt counts
/// as a conflict: the transaction time limit, since a lock held longer belongs to a transaction
/// that cannot commit anyway.
const LOCK_WAIT_MAX: Duration = crate::limits::TRANSACTION_DURATION_MAX;

/// Spare read connections kept open; more are opened under load and closed after.
const READERS_KEPT_MAX: usize = 8;

/// How often the background checkpointer copies the WAL into the database file. Commits never
/// checkpoint themselves (`wal_autocheckpoint = 0`), so a commit's latency is its own fsync.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// WAL frames (pages) past which the checkpointer, right after its passive pass, restarts the
/// log. Under constant load a passive checkpoint never finishes before the next commit, so
/// SQLite never starts the WAL over: it grows without bound (tens of MB a second), and every
/// commit appends, which makes its fsync also sync the file's new size. A restart checkpoint
/// copies the few frames the passive pass left, then makes the next commit write from the
/// start of the file again, over blocks that already exist.
const RESTART_FRAMES: i64 = 2048;

/// The size the WAL file is cut back to when it starts over: what one burst of writing leaves
/// behind is not kept on disk for good.
const WAL_SIZE_KEPT: i64 = 32 * 1024 * 1024;

/// The most a restart checkpoint waits for a writer to finish or a reader to let go of the
/// WAL before it gives up until the next round. Writers wait for it meanwhile.
const RESTART_WAIT: Duration = Duration::from_millis(20);

pub(crate) struct Embedded {
    path: PathBuf,
    writer: std::sync::Arc<Mutex<Connection>>,
    readers: Mutex<Vec<Connection>>,
    _checkpointer: Option<Checkpointer>,
}

/// A thread with its own connection running passive checkpoints, which never block writers, and
/// restarting the WAL once it is long. A restart needs a moment with no write transaction, which
/// a writer committing back to back never leaves: it holds this process's writer connection
/// meanwhile, so that such a moment comes (writers of other processes it waits for, briefly).
struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path, writer: std::sync::Arc<Mutex<Connection>>) -> Option<Checkpointer> {
        let conn = match connect(path).and_then(|conn| {
            conn.busy_timeout(RESTART_WAIT)?;
            Ok(conn)
        }) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "no background checkpointer; SQLite checkpoints on commit");
                return None;
            }
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                let frames = |mode: &str| {
                    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
                        row.get::<_, i64>(1)
                    })
                };
                // The WAL's length at the last restart: it reads the same until the next commit
                // starts the WAL over, and an idle store needs no restart again.
                let mut restarted_at = None;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(CHECKPOINT_INTERVAL);
                    match frames("PASSIVE") {
                        Ok(log) if log >= RESTART_FRAMES && restarted_at != Some(log) => {
                            let _writing = lock(&writer);
                            match frames("RESTART") {
                                Ok(log) => restarted_at = Some(log),
                                Err(e) => tracing::debug!(error = %e, "restart checkpoint"),
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "passive checkpoint"),
                    }
                }
            })
            .ok()?;
        Some(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Embedded {
    pub(crate) fn open(path: &Path) -> Result<Embedded> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_error(e.into()))?;
        }
        let writer = connect(path).map_err(|e| open_error(e.into()))?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
            )
            .map_err(|e| open_error(e.into()))?;
        let writer = std::sync::Arc::new(Mutex::new(writer));
        let checkpointer = Checkpointer::start(path, writer.clone());
        if checkpointer.is_some() {
            let writer = lock(&writer);
            writer
                .pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(|e| open_error(e.into()))?;
            writer
                .pragma_update(None, "journal_size_limit", WAL_SIZE_KEPT)
                .map_err(|e| open_error(e.into()))?;
        }
        Ok(Embedded {
            path: path.to_path_buf(),
            writer,
            readers: Mutex::new(Vec::new()),
            _checkpointer: checkpointer,
        })
    }

    fn reader(&self) -> Result<Connection> {
        if let Some(conn) = lock(&self.readers).pop() {
            return Ok(conn);
        }
        let conn = connect(&self.path)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut readers = lock(&self.readers);
        if readers.len() < READERS_KEPT_MAX {
            readers.push(conn);
        }
    }
}

impl BackendImpl for Embedded {
    fn run(&self, write: bool, attempts_max: u32, body: &mut Body<'_>) -> Result<()> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = if write {
                let conn = lock(&self.writer);
                attempt(&conn, "BEGIN IMMEDIATE", body)
            } else {
                let conn = self.reader()?;
                let result = attempt(&conn, "BEGIN DEFERRED", body);
                self.give_back(conn);
                result
            };
            match result {
                Err(e) if e.is_retryable() => {
                    if attempts >= attempts_max {
                        return Err(Error::Conflict { attempts });
                    }
                    tracing::debug!(attempts, error = %e, "retry embedded store transaction");
                    std::thread::sleep(Duration::from_micros(50 * u64::from(attempts.min(20))));
                }
                other => return other,
            }
        }
    }
}

fn attempt(conn: &Connection, begin: &str, body: &mut Body<'_>) -> Result<()> {
    // A body that panicked may have left a transaction open on this connection.
    if !conn.is_autocommit() {
        conn.execute_batch("ROLLBACK")?;
    }
    conn.execute_batch(begin)?;
    let mut tx = SqliteTransaction { conn };
    match body(&mut tx) {
        Ok(Outcome::Commit) => match conn.execute_batch("COMMIT") {
            Ok(()) => Ok(()),
            Err(e) => {
                rollback(conn);
                Err(e.into())
            }
        },
        Ok(Outcome::Rollback) => {
            rollback(conn);
            Ok(())
        }
        Err(e) => {
            rollback(conn);
            Err(e)
        }
    }
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::warn!(error = %e, "roll back embedded store transaction");
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_handler(Some(wait_for_lock))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, expected wal"
        )));
    }
    // FULL: the WAL is fsynced at every commit, so an acknowledged commit survives a crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // `invicta_add(value, delta)`: a counter's stored bytes plus `delta`, as `atomic_add` keeps
    // them (little-endian, wrapping).
    conn.create_scalar_function(
        "invicta_add",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let current = match ctx.get_raw(0) {
                ValueRef::Blob(bytes) => decode_i64(bytes),
                _ => 0,
            };
            let delta: i64 = ctx.get(1)?;
            Ok(current.wrapping_add(delta).to_le_bytes().to_vec())
        },
    )?;
    Ok(conn)
}

/// SQLite's busy handler: wait briefly and often (a write transaction of another process lasts
/// a few hundred microseconds), up to [`LOCK_WAIT_MAX`] in all.
fn wait_for_lock(calls: i32) -> bool {
    const FAST_CALLS: i32 = 200;
    const FAST_WAIT: Duration = Duration::from_micros(50);
    const SLOW_WAIT: Duration = Duration::from_millis(1);
    let fast_total = FAST_WAIT * FAST_CALLS as u32;
    let waited = if calls < FAST_CALLS {
        FAST_WAIT * calls as u32
    } else {
        fast_total + SLOW_WAIT * (calls - FAST_CALLS) as u32
    };
    if waited >= LOCK_WAIT_MAX {
        return false;
    }
    std::thread::sleep(if calls < FAST_CALLS {
        FAST_WAIT
    } else {
        SLOW_WAIT
    });
    true
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a body panicked; `attempt` rolls back what it left open.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

pub(crate) fn copy_error(e: &rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            Error::Embedded(rusqlite::Error::SqliteFailure(*code, message.clone()))
        }
        other => Error::Task(other.to_string()),
    }
}

struct SqliteTransaction<'c> {
    conn: &'c Connection,
}

impl RawTransaction for SqliteTransaction<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT value FROM kv WHERE key = ?1")?;
        Ok(stmt.query_row([key], |row| row.get(0)).optional()?)
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<KeyValue>> {
        let sql = if reverse {
            "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key DESC LIMIT ?3"
        } else {
            "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key ASC LIMIT ?3"
        };
        let limit = limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params![begin, end, limit], |row| {
            Ok(KeyValue {
                key: row.get(0)?,
                value: row.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")?;
        stmt.execute(params![key, value])?;
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<()> {
        let mut stmt = self.conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?;
        stmt.execute([key])?;
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM kv WHERE key >= ?1 AND key < ?2")?;
        stmt.execute([begin, end])?;
        Ok(())
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<()> {
        // One statement: the key's row is found once, whether it is there or not.
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO kv (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = invicta_add(value, ?3)",
        )?;
        stmt.execute(params![key, delta.to_le_bytes(), delta])?;
        Ok(())
    }
}
