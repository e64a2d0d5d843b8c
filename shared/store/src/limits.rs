//! FoundationDB's limits, enforced by every backend so that code written against the embedded
//! store behaves the same on a cluster. Larger payloads belong in the blob store, with a
//! reference kept here.

use std::time::Duration;

/// The largest key FoundationDB accepts.
pub const KEY_BYTES_MAX: usize = 10_000;

/// The largest value FoundationDB accepts.
pub const VALUE_BYTES_MAX: usize = 100_000;

/// The most a transaction may write (keys plus values of its mutations), FoundationDB's limit.
pub const TRANSACTION_BYTES_MAX: usize = 10_000_000;

/// How long a transaction may live: FoundationDB's MVCC window.
pub const TRANSACTION_DURATION_MAX: Duration = Duration::from_secs(5);

/// Keys starting with this byte are FoundationDB's system keys.
pub const RESERVED_KEY_PREFIX: u8 = 0xFF;
