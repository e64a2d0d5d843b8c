//! Which shards of workers this executor owns, at which epoch, and the fence every oplog commit
//! passes: the commit transaction re-reads the shard's lease and refuses to write unless this
//! executor still holds it at the epoch it was granted.
//!
//! An all-in-one server's executor takes every shard when it starts (a restart is the same
//! executor coming back, so it bumps every epoch and owns them all) and renews the leases while
//! it runs. Under a worker scheduler, the scheduler grants leases and the executor learns them
//! from its heartbeats ([`crate::Executor::set_shards`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use invicta_model::WorkerId;
use invicta_model::shards::{SHARDS, ShardLease, lease_key, shard_of};
use invicta_store::Transaction;

use crate::error::Error;
use crate::records::{decode_json, encode_json};

/// This executor's id, the epoch of every shard it owns (0: not owned), and which of them it
/// is draining for a hand-off.
pub(crate) struct Fencing {
    pub id: String,
    epochs: Vec<AtomicU64>,
    draining: Vec<AtomicBool>,
}

impl Fencing {
    pub(crate) fn new(id: String) -> Fencing {
        Fencing {
            id,
            epochs: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            draining: (0..SHARDS).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Whether `shard` is being handed off: its workers finish what runs and commit (the lease
    /// is still held), but nothing new starts here.
    pub(crate) fn draining(&self, shard: u32) -> bool {
        self.draining
            .get(shard as usize)
            .is_some_and(|d| d.load(Ordering::Acquire))
    }

    pub(crate) fn set_draining(&self, shard: u32, draining: bool) {
        if let Some(slot) = self.draining.get(shard as usize) {
            slot.store(draining, Ordering::Release);
        }
    }

    /// The epoch at which this executor owns `shard`, if it does.
    pub(crate) fn epoch(&self, shard: u32) -> Option<u64> {
        let epoch = self.epochs.get(shard as usize)?.load(Ordering::Acquire);
        (epoch > 0).then_some(epoch)
    }

    /// Whether new work from outside for `worker` may start here: its shard is held and not
    /// draining.
    pub(crate) fn owns(&self, worker: &WorkerId) -> bool {
        let shard = shard_of(worker);
        self.epoch(shard).is_some() && !self.draining(shard)
    }

    /// Whether this executor holds `worker`'s shard, draining or not: where the calls its own
    /// workers make of each other run (a worker of a draining shard may be waiting on one).
    pub(crate) fn holds(&self, worker: &WorkerId) -> bool {
        self.epoch(shard_of(worker)).is_some()
    }

    pub(crate) fn set(&self, shard: u32, epoch: Option<u64>) {
        if let Some(slot) = self.epochs.get(shard as usize) {
            slot.store(epoch.unwrap_or(0), Ordering::Release);
        }
        if epoch.is_none() {
            self.set_draining(shard, false);
        }
    }

    /// The shards owned now, with their epochs.
    pub(crate) fn owned(&self) -> Vec<(u32, u64)> {
        (0..SHARDS)
            .filter_map(|s| self.epoch(s).map(|e| (s, e)))
            .collect()
    }

    /// Inside a commit transaction: whether this executor still holds the worker's shard at
    /// its epoch. `checked` remembers the answer per shard for the rest of the transaction.
    pub(crate) fn check(
        &self,
        tx: &mut Transaction<'_>,
        worker: &WorkerId,
        checked: &mut HashMap<u32, bool>,
    ) -> Result<(), Error> {
        let shard = shard_of(worker);
        let held = match checked.get(&shard) {
            Some(held) => *held,
            None => {
                let held = match (self.epoch(shard), tx.get(&lease_key(shard))?) {
                    (Some(epoch), Some(bytes)) => {
                        let lease: ShardLease = decode_json("shard lease", &bytes)?;
                        lease.owner == self.id && lease.epoch == epoch
                    }
                    _ => false,
                };
                checked.insert(shard, held);
                held
            }
        };
        if held {
            Ok(())
        } else {
            Err(Error::Fenced {
                worker: worker.to_string(),
                shard,
            })
        }
    }
}

/// Takes every shard for `owner`, each at its next epoch, for `lease_ms`: what the one executor
/// of an all-in-one server does when it starts. Returns the epochs granted.
pub(crate) fn take_all(
    tx: &mut Transaction<'_>,
    owner: &str,
    now_ms: u64,
    lease_ms: u64,
) -> Result<Vec<(u32, u64)>, Error> {
    let mut granted = Vec::with_capacity(SHARDS as usize);
    let mut failovers = Vec::new();
    for shard in 0..SHARDS {
        let key = lease_key(shard);
        let epoch = match tx.get(&key)? {
            Some(bytes) => {
                let previous = decode_json::<ShardLease>("shard lease", &bytes)?;
                if previous.owner != owner {
                    failovers.push((shard, previous.owner, owner.to_string()));
                }
                previous.epoch + 1
            }
            None => 1,
        };
        let lease = ShardLease {
            owner: owner.to_string(),
            epoch,
            expires_ms: now_ms.saturating_add(lease_ms),
            handoff: None,
        };
        tx.set(&key, &encode_json(&lease))?;
        granted.push((shard, epoch));
    }
    invicta_worker_scheduler::record_failovers(tx, now_ms, &failovers)?;
    Ok(granted)
}

/// Extends the leases `owner` holds at the given epochs; returns the shards it no longer holds.
pub(crate) fn renew(
    tx: &mut Transaction<'_>,
    owner: &str,
    held: &[(u32, u64)],
    now_ms: u64,
    lease_ms: u64,
) -> Result<Vec<u32>, Error> {
    let mut lost = Vec::new();
    for (shard, epoch) in held {
        let key = lease_key(*shard);
        match tx.get(&key)? {
            Some(bytes) => {
                let mut lease: ShardLease = decode_json("shard lease", &bytes)?;
                if lease.owner == owner && lease.epoch == *epoch {
                    lease.expires_ms = now_ms.saturating_add(lease_ms);
                    tx.set(&key, &encode_json(&lease))?;
                } else {
                    lost.push(*shard);
                }
            }
            None => lost.push(*shard),
        }
    }
    Ok(lost)
}

/// A fresh executor id: unique per process start.
pub(crate) fn new_id() -> String {
    let bytes: [u8; 8] = rand::random();
    format!("exec-{}", hex::encode(bytes))
}
