//! Placement: workers are spread over a fixed number of shards, and each shard is leased to one
//! executor at a time, with an epoch that grows with every change of owner.
//!
//! The lease records live in the store. The worker scheduler writes them (or, in the all-in-one
//! server, the one executor takes every shard); an executor re-reads its shard's lease inside
//! every oplog commit, so one that lost a lease can never commit for a worker it no longer owns.

use foundationdb_tuple::{pack, unpack};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::WorkerId;

/// The number of shards. Fixed: a worker's shard must not change while it lives.
pub const SHARDS: u32 = 64;

/// The shard a worker belongs to: a hash of its full name, stable across builds and hosts.
pub fn shard_of(worker: &WorkerId) -> u32 {
    shard_of_names(
        worker.tenant.as_str(),
        worker.component.as_str(),
        worker.worker.as_str(),
    )
}

/// [`shard_of`], from the names as stored.
pub fn shard_of_names(tenant: &str, component: &str, worker: &str) -> u32 {
    let digest = Sha256::digest(format!("{tenant}/{component}/{worker}").as_bytes());
    let first = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    first % SHARDS
}

/// Who may commit for a shard's workers, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLease {
    /// The owning executor's id.
    pub owner: String,
    /// Grows by one with every grant: a commit made under an older epoch is refused.
    pub epoch: u64,
    /// The lease ends then (ms since the epoch) unless its owner renews it.
    pub expires_ms: u64,
    /// A planned move to another executor: the owner finishes what runs, stops the shard's
    /// workers and releases it, and the scheduler then grants it to `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
}

/// A shard on its way to another executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The executor that gets the shard.
    pub to: String,
    /// When the move was planned (ms since the epoch): past a lease, it is forced.
    pub since_ms: u64,
}

/// A shard an executor holds, as its heartbeat tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardGrant {
    pub shard: u32,
    pub epoch: u64,
    /// The shard is being handed to another executor: finish what runs, start nothing new,
    /// then release it.
    pub draining: bool,
}

/// `("shard-lease", shard)`.
pub fn lease_key(shard: u32) -> Vec<u8> {
    pack(&("shard-lease", shard))
}

/// An executor as the scheduler knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorRecord {
    /// Where it serves gRPC.
    pub address: String,
    /// It is considered dead after this (ms since the epoch) unless it heartbeats.
    pub expires_ms: u64,
    /// It is shutting down: its shards are handed to the others, and it gets none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// `("executor", id)`.
pub fn executor_key(id: &str) -> Vec<u8> {
    pack(&("executor", id))
}

/// The prefix of every executor record.
pub fn executors_prefix() -> Vec<u8> {
    pack(&("executor",))
}

/// The id an [`executor_key`] names.
pub fn parse_executor_key(key: &[u8]) -> Option<String> {
    let (_, id): (String, String) = unpack(key).ok()?;
    Some(id)
}

/// Shards that changed owner because their owner was gone (its lease or membership expired, or
/// the process restarted): what the operator's cluster view lists as recent failovers. Planned
/// hand-offs are not failovers and are not recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    /// When the shards were granted again (ms since the epoch).
    pub at_ms: u64,
    /// The owner that was gone.
    pub from: String,
    /// The executor that took them.
    pub to: String,
    pub shards: Vec<u32>,
}

/// How long failover records are kept.
pub const FAILOVERS_KEPT_MS: u64 = 7 * 24 * 3_600_000;

/// `("failover", at_ms, to)`.
pub fn failover_key(at_ms: u64, to: &str) -> Vec<u8> {
    pack(&("failover", at_ms, to))
}

/// The prefix of every failover record.
pub fn failovers_prefix() -> Vec<u8> {
    pack(&("failover",))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        let id = |w: &str| WorkerId {
            tenant: "t1".to_string().try_into().expect("tenant"),
            component: "counter".to_string().try_into().expect("component"),
            worker: w.to_string().try_into().expect("worker"),
        };
        assert_eq!(shard_of(&id("a")), shard_of(&id("a")));
        let mut used = std::collections::HashSet::new();
        for i in 0..1_000 {
            let shard = shard_of(&id(&format!("w{i}")));
            assert!(shard < SHARDS);
            used.insert(shard);
        }
        assert_eq!(
            used.len(),
            SHARDS as usize,
            "1,000 workers reach every shard"
        );
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(
            parse_executor_key(&executor_key("exec-1")).as_deref(),
            Some("exec-1")
        );
    }
}
