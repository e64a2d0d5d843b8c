//! The transaction a body works with: every backend's operations behind FoundationDB's limits.

use std::time::Instant;

use crate::limits::{
    KEY_BYTES_MAX, RESERVED_KEY_PREFIX, TRANSACTION_BYTES_MAX, TRANSACTION_DURATION_MAX,
    VALUE_BYTES_MAX,
};
use crate::{Error, RawTransaction, Result};

/// A key and its value, as range reads return them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// How a range read walks its range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Return at most this many pairs (`None`: all of them).
    pub limit: Option<usize>,
    /// Walk from the end of the range backwards.
    pub reverse: bool,
}

impl RangeOptions {
    pub fn limit(limit: usize) -> Self {
        RangeOptions {
            limit: Some(limit),
            reverse: false,
        }
    }

    pub fn reverse(self) -> Self {
        RangeOptions {
            reverse: true,
            ..self
        }
    }
}

/// A serializable transaction. Reads see the transaction's own writes. Every operation checks
/// FoundationDB's limits first and fails with a typed error, applying nothing; a transaction that
/// saw any store error is never committed.
pub struct Transaction<'a> {
    raw: &'a mut dyn RawTransaction,
    write: bool,
    started: Instant,
    bytes: usize,
    failure: Option<Error>,
}

impl<'a> Transaction<'a> {
    pub(crate) fn new(raw: &'a mut dyn RawTransaction, write: bool) -> Self {
        Transaction {
            raw,
            write,
            started: Instant::now(),
            bytes: 0,
            failure: None,
        }
    }

    /// The first error the transaction met, which decides whether it may commit or be retried.
    pub(crate) fn into_failure(self) -> Option<Error> {
        if self.failure.is_none() {
            let elapsed = self.started.elapsed();
            if elapsed > TRANSACTION_DURATION_MAX {
                return Some(too_old(elapsed));
            }
        }
        self.failure
    }

    /// The value at `key`, if any.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_time()?;
        self.check_key(key)?;
        let result = self.raw.get(key);
        self.note(result)
    }

    /// The pairs with `begin <= key < end`, in key order (or reverse), at most `options.limit`.
    pub fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        options: RangeOptions,
    ) -> Result<Vec<KeyValue>> {
        self.check_time()?;
        // As in FoundationDB, reading an inverted range finds nothing; clearing one is an error.
        self.check_range(begin, end, false)?;
        if begin >= end || options.limit == Some(0) {
            return Ok(Vec::new());
        }
        let result = self
            .raw
            .get_range(begin, end, options.limit, options.reverse);
        self.note(result)
    }

    /// Every pair whose key starts with `prefix`.
    pub fn get_prefix(&mut self, prefix: &[u8], options: RangeOptions) -> Result<Vec<KeyValue>> {
        let (begin, end) = crate::keys::prefix_range(prefix);
        self.get_range(&begin, &end, options)
    }

    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_write()?;
        self.check_key(key)?;
        if value.len() > VALUE_BYTES_MAX {
            return self.fail(Error::ValueTooLarge {
                size: value.len(),
                limit: VALUE_BYTES_MAX,
            });
        }
        self.add_bytes(key.len() + value.len())?;
        let result = self.raw.set(key, value);
        self.note(result)
    }

    pub fn clear(&mut self, key: &[u8]) -> Result<()> {
        self.check_write()?;
        self.check_key(key)?;
        self.add_bytes(key.len())?;
        let result = self.raw.clear(key);
        self.note(result)
    }

    /// Clears every key with `begin <= key < end`.
    pub fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<()> {
        self.check_write()?;
        self.check_range(begin, end, true)?;
        self.add_bytes(begin.len() + end.len())?;
        if begin >= end {
            return Ok(());
        }
        let result = self.raw.clear_range(begin, end);
        self.note(result)
    }

    /// Adds `delta` to the little-endian 64-bit integer at `key` (absent counts as zero), as
    /// FoundationDB's `ADD` mutation does; concurrent adds never conflict with each other there.
    pub fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<()> {
        self.check_write()?;
        self.check_key(key)?;
        self.add_bytes(key.len() + 8)?;
        let result = self.raw.atomic_add(key, delta);
        self.note(result)
    }

    /// Reads a counter written by [`Transaction::atomic_add`].
    pub fn get_i64(&mut self, key: &[u8]) -> Result<i64> {
        Ok(self
            .get(key)?
            .map(|v| crate::counters::decode_i64(&v))
            .unwrap_or(0))
    }

    fn check_write(&mut self) -> Result<()> {
        self.check_time()?;
        if !self.write {
            return self.fail(Error::ReadOnly);
        }
        Ok(())
    }

    fn check_key(&mut self, key: &[u8]) -> Result<()> {
        if key.len() > KEY_BYTES_MAX {
            return self.fail(Error::KeyTooLarge {
                size: key.len(),
                limit: KEY_BYTES_MAX,
            });
        }
        if key.first() == Some(&RESERVED_KEY_PREFIX) {
            return self.fail(Error::ReservedKey);
        }
        Ok(())
    }

    fn check_range(&mut self, begin: &[u8], end: &[u8], ordered: bool) -> Result<()> {
        for key in [begin, end] {
            if key.len() > KEY_BYTES_MAX {
                return self.fail(Error::KeyTooLarge {
                    size: key.len(),
                    limit: KEY_BYTES_MAX,
                });
            }
        }
        // The end of a prefix range may be exactly 0xFF (everything below the system keys).
        if begin.first() == Some(&RESERVED_KEY_PREFIX) || end > &[RESERVED_KEY_PREFIX][..] {
            return self.fail(Error::ReservedKey);
        }
        if ordered && begin > end {
            return self.fail(Error::InvalidRange);
        }
        Ok(())
    }

    fn check_time(&mut self) -> Result<()> {
        let elapsed = self.started.elapsed();
        if elapsed > TRANSACTION_DURATION_MAX {
            return self.fail(too_old(elapsed));
        }
        Ok(())
    }

    fn add_bytes(&mut self, bytes: usize) -> Result<()> {
        let size = self.bytes + bytes;
        if size > TRANSACTION_BYTES_MAX {
            return self.fail(Error::TransactionTooLarge {
                size,
                limit: TRANSACTION_BYTES_MAX,
            });
        }
        self.bytes = size;
        Ok(())
    }

    fn fail<T>(&mut self, error: Error) -> Result<T> {
        let copy = copy_error(&error);
        self.failure.get_or_insert(copy);
        Err(error)
    }

    fn note<T>(&mut self, result: Result<T>) -> Result<T> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => self.fail(e),
        }
    }
}

fn too_old(elapsed: std::time::Duration) -> Error {
    Error::TransactionTooOld {
        elapsed_ms: elapsed.as_millis(),
        limit_ms: TRANSACTION_DURATION_MAX.as_millis(),
    }
}

/// The transaction keeps the first error it met, and hands the body its own copy.
fn copy_error(error: &Error) -> Error {
    match error {
        Error::KeyTooLarge { size, limit } => Error::KeyTooLarge {
            size: *size,
            limit: *limit,
        },
        Error::ValueTooLarge { size, limit } => Error::ValueTooLarge {
            size: *size,
            limit: *limit,
        },
        Error::TransactionTooLarge { size, limit } => Error::TransactionTooLarge {
            size: *size,
            limit: *limit,
        },
        Error::TransactionTooOld {
            elapsed_ms,
            limit_ms,
        } => Error::TransactionTooOld {
            elapsed_ms: *elapsed_ms,
            limit_ms: *limit_ms,
        },
        Error::ReservedKey => Error::ReservedKey,
        Error::InvalidRange => Error::InvalidRange,
        Error::ReadOnly => Error::ReadOnly,
        Error::Conflict { attempts } => Error::Conflict {
            attempts: *attempts,
        },
        Error::Embedded(e) => crate::embedded::copy_error(e),
        Error::Fdb { message, retryable } => Error::Fdb {
            message: message.clone(),
            retryable: *retryable,
        },
        Error::Open { path, source } => Error::Open {
            path: path.clone(),
            source: source.to_string().into(),
        },
        Error::Task(m) => Error::Task(m.clone()),
    }
}
