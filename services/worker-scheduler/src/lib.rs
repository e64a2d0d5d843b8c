//! The worker scheduler: which executor runs which shard of workers.
//!
//! Executors register and heartbeat; each heartbeat renews the executor's membership and the
//! leases of the shards it holds, and answers with those shards and their epochs. The
//! scheduler's assignment pass gives every shard whose owner is gone — its membership expired,
//! or its lease did — to the live executor holding the fewest, at the next epoch. The old
//! owner, if it was only paused, finds out at its next heartbeat; until then its commits are
//! refused by the fence every oplog commit passes (see `invicta-executor`'s `placement`).
//!
//! The pass also evens out the live executors' shares (a newcomer takes shards over from the
//! busiest), and those moves are planned hand-offs rather than failovers: the lease records
//! the target, the owner's heartbeat tells it to drain the shard, the owner lets the shard's
//! running invocations finish and commit and stops its workers, and its next heartbeat releases
//! the shard, which then goes to the target at the next epoch. Nothing in flight is cut off. A
//! hand-off whose target dies is called off; one the owner has not released within a lease is
//! forced (the shard moves at the next epoch and the fence does the rest). An executor shutting
//! down says so in its heartbeats: every shard it holds is handed off the same way, and it gets
//! none.
//!
//! All of it lives in the store: schedulers hold no state of their own, so several may run, and
//! a restarted one carries on.
//!
//! **Invariant:** a shard has at most one owner at a time, and every grant raises its epoch.

pub mod grpc;

use std::collections::HashMap;
use std::time::Duration;

use invicta_model::WorkerId;
use invicta_model::shards::{
    ExecutorRecord, FailoverRecord, Handoff, SHARDS, ShardGrant, ShardLease, executor_key,
    executors_prefix, failovers_prefix, lease_key, parse_executor_key, shard_of, shard_of_names,
};
use invicta_store::{Store, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store: {0}")]
    Store(#[from] invicta_store::Error),
    #[error("stored placement data is corrupt: {0}")]
    Corrupt(String),
    #[error("executor {0} is not registered (or its membership expired): register again")]
    UnknownExecutor(String),
    #[error("shard {0} has no live executor")]
    Unplaced(u32),
    #[error("invalid executor id or address: {0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a worker runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub shard: u32,
    pub epoch: u64,
    pub executor_id: String,
    pub address: String,
}

/// What a heartbeat tells an executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The shards it holds, with their epochs and whether to drain them.
    pub shards: Vec<ShardGrant>,
    /// Shards on their way to it: it should heartbeat again soon, to take them as soon as
    /// they are released.
    pub incoming: u32,
    /// No other live executor could take a shard: a leaving one need not wait.
    pub alone: bool,
}

/// The scheduler over the shared store.
#[derive(Clone)]
pub struct Scheduler {
    store: Store,
    lease: Duration,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain records: serializing them to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Every shard's lease (`None`: never granted).
fn leases(tx: &mut Transaction<'_>) -> Result<Vec<Option<ShardLease>>> {
    (0..SHARDS)
        .map(|shard| {
            tx.get(&lease_key(shard))?
                .map(|b| decode("shard lease", &b))
                .transpose()
        })
        .collect()
}

/// The executor holding the fewest shards, with how many; ties broken by id, so that every
/// scheduler agrees.
fn least_loaded(load: &HashMap<&str, usize>) -> Option<(String, usize)> {
    load.iter()
        .min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
        .map(|(id, n)| (id.to_string(), *n))
}

/// Writes into `lease` (of `shard`) that it is to be handed to `to`.
fn plan_handoff(
    tx: &mut Transaction<'_>,
    shard: u32,
    lease: &ShardLease,
    to: &str,
    now: u64,
) -> Result<()> {
    let planned = ShardLease {
        handoff: Some(Handoff {
            to: to.to_string(),
            since_ms: now,
        }),
        ..lease.clone()
    };
    tx.set(&lease_key(shard), &encode(&planned))?;
    Ok(())
}

/// The executors whose membership has not expired at `now`.
fn live_executors(tx: &mut Transaction<'_>, now: u64) -> Result<HashMap<String, ExecutorRecord>> {
    let mut live = HashMap::new();
    for row in tx.get_prefix(&executors_prefix(), Default::default())? {
        let Some(id) = parse_executor_key(&row.key) else {
            continue;
        };
        let record: ExecutorRecord = decode("executor record", &row.value)?;
        if record.expires_ms > now {
            live.insert(id, record);
        }
    }
    Ok(live)
}

/// Records `failovers` (grouped by previous and new owner) at `now_ms`, and forgets those older
/// than [`FAILOVERS_KEPT_MS`](invicta_model::shards::FAILOVERS_KEPT_MS); a write of its own in the transaction that granted the shards.
pub fn record_failovers(
    tx: &mut Transaction<'_>,
    now_ms: u64,
    failovers: &[(u32, String, String)],
) -> invicta_store::Result<()> {
    let mut grouped: std::collections::BTreeMap<(&str, &str), Vec<u32>> = Default::default();
    for (shard, from, to) in failovers {
        grouped.entry((from, to)).or_default().push(*shard);
    }
    for ((from, to), shards) in grouped {
        let record = invicta_model::shards::FailoverRecord {
            at_ms: now_ms,
            from: from.to_string(),
            to: to.to_string(),
            shards,
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        tx.set(
            &invicta_model::shards::failover_key(now_ms, &format!("{to}/{from}")),
            &value,
        )?;
    }
    if !failovers.is_empty() {
        let (begin, _) =
            invicta_store::keys::prefix_range(&invicta_model::shards::failovers_prefix());
        let end = invicta_store::keys::pack(&(
            "failover",
            now_ms.saturating_sub(invicta_model::shards::FAILOVERS_KEPT_MS),
        ));
        tx.clear_range(&begin, &end)?;
    }
    Ok(())
}

impl Scheduler {
    /// A scheduler granting leases of `lease` length.
    pub fn new(store: Store, lease: Duration) -> Scheduler {
        Scheduler { store, lease }
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// Adds an executor (or renews one that restarted under the same id); returns the lease
    /// length it must heartbeat within.
    pub async fn register(&self, id: &str, address: &str) -> Result<Duration> {
        if id.is_empty() || id.len() > 128 || address.len() > 256 {
            return Err(Error::Invalid(format!("{id:?} at {address:?}")));
        }
        let record = ExecutorRecord {
            address: address.to_string(),
            expires_ms: now_ms().saturating_add(self.lease_ms()),
            leaving: false,
        };
        let key = executor_key(id);
        self.store
            .transact(move |tx| {
                tx.set(&key, &encode(&record))?;
                Ok::<_, Error>(())
            })
            .await?;
        tracing::info!(executor = id, address, "executor registered");
        Ok(self.lease)
    }

    /// Renews the executor's membership and the leases of the shards it holds, after giving
    /// the shards it `released` (drained for a hand-off) to their targets; returns the shards
    /// it holds, with their epochs and whether to drain them. `leaving` says the executor is
    /// shutting down (for good: it stays so until it registers again). An executor whose
    /// membership expired must register again.
    pub async fn heartbeat(&self, id: &str, released: &[u32], leaving: bool) -> Result<Heartbeat> {
        let (id_c, lease_ms) = (id.to_string(), self.lease_ms());
        let released = released.to_vec();
        self.store
            .transact(move |tx| {
                let now = now_ms();
                let key = executor_key(&id_c);
                let mut record: ExecutorRecord = match tx.get(&key)? {
                    Some(bytes) => decode("executor record", &bytes)?,
                    None => return Err(Error::UnknownExecutor(id_c.clone())),
                };
                if record.expires_ms <= now {
                    return Err(Error::UnknownExecutor(id_c.clone()));
                }
                record.expires_ms = now.saturating_add(lease_ms);
                if leaving && !record.leaving {
                    record.leaving = true;
                    tracing::info!(executor = %id_c, "executor leaving: handing its shards off");
                }
                tx.set(&key, &encode(&record))?;
                let live = live_executors(tx, now)?;
                for shard in released.iter().copied().filter(|s| *s < SHARDS) {
                    let Some(bytes) = tx.get(&lease_key(shard))? else {
                        continue;
                    };
                    let lease: ShardLease = decode("shard lease", &bytes)?;
                    // Only a hand-off still planned is completed: a release that crossed its
                    // cancellation leaves the shard where it is.
                    let Some(handoff) = lease.handoff.as_ref().filter(|_| lease.owner == id_c)
                    else {
                        continue;
                    };
                    let granted = if live.get(&handoff.to).is_some_and(|e| !e.leaving) {
                        ShardLease {
                            owner: handoff.to.clone(),
                            epoch: lease.epoch + 1,
                            expires_ms: now.saturating_add(lease_ms),
                            handoff: None,
                        }
                    } else {
                        // The target died: orphaned, for the next pass to place.
                        ShardLease {
                            expires_ms: 0,
                            handoff: None,
                            ..lease.clone()
                        }
                    };
                    tracing::info!(shard, from = %id_c, to = %granted.owner, epoch = granted.epoch, "shard handed off");
                    tx.set(&lease_key(shard), &encode(&granted))?;
                }
                let mut held = Vec::new();
                let mut incoming = 0;
                for (shard, lease) in leases(tx)?.into_iter().enumerate() {
                    let Some(mut lease) = lease else { continue };
                    if lease.handoff.as_ref().is_some_and(|h| h.to == id_c) {
                        incoming += 1;
                    }
                    if lease.owner != id_c || lease.expires_ms <= now {
                        continue;
                    }
                    lease.expires_ms = now.saturating_add(lease_ms);
                    let shard = u32::try_from(shard).unwrap_or(u32::MAX);
                    tx.set(&lease_key(shard), &encode(&lease))?;
                    held.push(ShardGrant {
                        shard,
                        epoch: lease.epoch,
                        draining: lease.handoff.is_some(),
                    });
                }
                let alone = !live.iter().any(|(other, e)| *other != id_c && !e.leaving);
                Ok(Heartbeat {
                    shards: held,
                    incoming,
                    alone,
                })
            })
            .await
    }

    /// Gives every shard without a live owner to the live executor holding the fewest, at the
    /// next epoch; calls off hand-offs whose target died and forces those not released within
    /// a lease; when nothing else changed, plans hand-offs from the busiest live executors to
    /// the idlest until no two differ by more than one. Returns the shards granted or planned
    /// to move, with their new owners.
    pub async fn assign(&self) -> Result<Vec<(u32, String)>> {
        let lease_ms = self.lease_ms();
        self.store
            .transact(move |tx| {
                let now = now_ms();
                let live = live_executors(tx, now)?;
                // Who may get shards: the live executors that are not leaving.
                let takers: HashMap<&str, &ExecutorRecord> = live
                    .iter()
                    .filter(|(_, e)| !e.leaving)
                    .map(|(id, e)| (id.as_str(), e))
                    .collect();
                if takers.is_empty() {
                    return Ok(Vec::new());
                }
                let mut leases = leases(tx)?;
                let mut moved = Vec::new();
                let mut pending = false;
                for (shard, slot) in leases.iter_mut().enumerate() {
                    let Some(lease) = slot else { continue };
                    let Some(handoff) = lease.handoff.clone() else {
                        continue;
                    };
                    let shard = u32::try_from(shard).unwrap_or(u32::MAX);
                    if !takers.contains_key(handoff.to.as_str()) {
                        lease.handoff = None;
                        tracing::info!(shard, to = %handoff.to, "hand-off called off: its target is gone or leaving");
                    } else if now.saturating_sub(handoff.since_ms) >= lease_ms
                        && lease.expires_ms > now
                    {
                        tracing::warn!(shard, from = %lease.owner, to = %handoff.to, "hand-off forced: not released within a lease");
                        *lease = ShardLease {
                            owner: handoff.to.clone(),
                            epoch: lease.epoch + 1,
                            expires_ms: now.saturating_add(lease_ms),
                            handoff: None,
                        };
                        moved.push((shard, handoff.to));
                    } else {
                        pending = true;
                        continue;
                    }
                    tx.set(&lease_key(shard), &encode(&*lease))?;
                }
                let mut load: HashMap<&str, usize> = takers.keys().map(|id| (*id, 0)).collect();
                // A shard on its way somewhere counts for where it goes.
                for lease in leases.iter().flatten() {
                    let holder = lease.handoff.as_ref().map_or(&lease.owner, |h| &h.to);
                    if lease.expires_ms > now
                        && let Some(n) = load.get_mut(holder.as_str())
                    {
                        *n += 1;
                    }
                }
                let mut failovers = Vec::new();
                for (shard, lease) in leases.iter().enumerate() {
                    let orphaned = match lease {
                        None => true,
                        Some(l) => l.expires_ms <= now || !live.contains_key(&l.owner),
                    };
                    if !orphaned {
                        continue;
                    }
                    let Some((owner, _)) = least_loaded(&load) else {
                        continue;
                    };
                    let granted = ShardLease {
                        owner: owner.clone(),
                        epoch: lease.as_ref().map_or(1, |l| l.epoch + 1),
                        expires_ms: now.saturating_add(lease_ms),
                        handoff: None,
                    };
                    let shard = u32::try_from(shard).unwrap_or(u32::MAX);
                    tx.set(&lease_key(shard), &encode(&granted))?;
                    if let Some(n) = load.get_mut(owner.as_str()) {
                        *n += 1;
                    }
                    if let Some(previous) = lease {
                        failovers.push((shard, previous.owner.clone(), owner.clone()));
                    }
                    moved.push((shard, owner));
                }
                record_failovers(tx, now, &failovers)?;
                // The shards of executors shutting down are handed to the least loaded others.
                for (shard, lease) in leases.iter().enumerate() {
                    let Some(lease) = lease else { continue };
                    let leaving = live.get(&lease.owner).is_some_and(|e| e.leaving);
                    if !leaving || lease.expires_ms <= now || lease.handoff.is_some() {
                        continue;
                    }
                    let Some((to, _)) = least_loaded(&load) else {
                        continue;
                    };
                    let shard = u32::try_from(shard).unwrap_or(u32::MAX);
                    plan_handoff(tx, shard, lease, &to, now)?;
                    if let Some(n) = load.get_mut(to.as_str()) {
                        *n += 1;
                    }
                    moved.push((shard, to));
                    pending = true;
                }
                // Then, if nothing changed and no hand-off is under way, shards from the
                // busiest live executors to the idlest until no two differ by more than one: a
                // newcomer gets its share, each shard handed off by its owner.
                if moved.is_empty() && !pending {
                    let mut owned: HashMap<String, Vec<(usize, u64)>> = HashMap::new();
                    for (shard, lease) in leases.iter().enumerate() {
                        if let Some(l) = lease
                            && l.expires_ms > now
                            && takers.contains_key(l.owner.as_str())
                        {
                            owned
                                .entry(l.owner.clone())
                                .or_default()
                                .push((shard, l.epoch));
                        }
                    }
                    loop {
                        let busiest = load
                            .iter()
                            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                            .map(|(id, n)| (id.to_string(), *n));
                        let idlest = least_loaded(&load);
                        let (Some((from, most)), Some((to, least))) = (busiest, idlest) else {
                            break;
                        };
                        if most <= least + 1 {
                            break;
                        }
                        let Some((shard, _)) = owned.get_mut(&from).and_then(Vec::pop) else {
                            break;
                        };
                        let Some(Some(lease)) = leases.get(shard) else {
                            break;
                        };
                        let shard = u32::try_from(shard).unwrap_or(u32::MAX);
                        plan_handoff(tx, shard, lease, &to, now)?;
                        if let Some(n) = load.get_mut(from.as_str()) {
                            *n -= 1;
                        }
                        if let Some(n) = load.get_mut(to.as_str()) {
                            *n += 1;
                        }
                        moved.push((shard, to));
                    }
                }
                Ok::<_, Error>(moved)
            })
            .await
    }

    /// Which executor runs `worker` now.
    pub async fn locate(&self, worker: &WorkerId) -> Result<Placement> {
        let shard = shard_of(worker);
        self.store
            .read(move |tx| {
                let now = now_ms();
                let lease: ShardLease = match tx.get(&lease_key(shard))? {
                    Some(bytes) => decode("shard lease", &bytes)?,
                    None => return Err(Error::Unplaced(shard)),
                };
                if lease.expires_ms <= now {
                    return Err(Error::Unplaced(shard));
                }
                let record: ExecutorRecord = match tx.get(&executor_key(&lease.owner))? {
                    Some(bytes) => decode("executor record", &bytes)?,
                    None => return Err(Error::Unplaced(shard)),
                };
                Ok(Placement {
                    shard,
                    epoch: lease.epoch,
                    executor_id: lease.owner,
                    address: record.address,
                })
            })
            .await
    }

    /// Runs the assignment pass every quarter lease until the process ends.
    pub fn spawn(&self) {
        let scheduler = self.clone();
        let every = (self.lease / 4).max(Duration::from_millis(10));
        tokio::spawn(async move {
            loop {
                match scheduler.assign().await {
                    Ok(moved) if !moved.is_empty() => {
                        tracing::info!(shards = moved.len(), "shards assigned");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "assign shards"),
                }
                tokio::time::sleep(every).await;
            }
        });
    }
}

/// An executor in the operator's view of the cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecutorView {
    pub id: String,
    /// Where it serves gRPC (`None`: the all-in-one server's executor, which holds every shard
    /// without registering).
    pub address: Option<String>,
    /// Its membership (or, unregistered, a lease) has not expired.
    pub live: bool,
    pub leaving: bool,
    pub shards: u32,
    /// Workers stored in the shards it holds (see [`ClusterView::workers_truncated`]).
    pub workers: u64,
}

/// A shard in the operator's view of the cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardView {
    pub shard: u32,
    /// `None`: never granted.
    pub owner: Option<String>,
    pub epoch: u64,
    pub expires_ms: u64,
    /// Its lease has not expired.
    pub live: bool,
    /// The executor it is being handed to.
    pub handoff_to: Option<String>,
    pub workers: u64,
}

/// What the operator sees of placement: executors, shards with their leases and epochs,
/// workers per executor and the failovers of the last week, newest first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterView {
    pub executors: Vec<ExecutorView>,
    pub shards: Vec<ShardView>,
    pub failovers: Vec<FailoverRecord>,
    /// Worker records counted (at most [`WORKERS_COUNTED_MAX`]).
    pub workers_counted: u64,
    /// More workers exist than were counted: the per-shard counts are lower bounds.
    pub workers_truncated: bool,
}

/// The most worker records [`cluster`] counts.
pub const WORKERS_COUNTED_MAX: u64 = 200_000;

/// The failovers [`cluster`] lists.
const FAILOVERS_LISTED: usize = 50;

/// The cluster as the store says it is now.
pub async fn cluster(store: &Store) -> Result<ClusterView> {
    let (executors, leases, failovers) = store
        .read(|tx| {
            let mut executors = Vec::new();
            for row in tx.get_prefix(&executors_prefix(), Default::default())? {
                let Some(id) = parse_executor_key(&row.key) else {
                    continue;
                };
                let record: ExecutorRecord = decode("executor record", &row.value)?;
                executors.push((id, record));
            }
            let (begin, end) = invicta_store::keys::prefix_range(&failovers_prefix());
            let failovers = tx
                .get_range(
                    &begin,
                    &end,
                    invicta_store::RangeOptions {
                        limit: Some(FAILOVERS_LISTED),
                        reverse: true,
                    },
                )?
                .iter()
                .map(|row| decode::<FailoverRecord>("failover record", &row.value))
                .collect::<Result<Vec<_>>>()?;
            Ok::<_, Error>((executors, leases(tx)?, failovers))
        })
        .await?;
    // Workers per shard, a page of keys per read.
    const PAGE: usize = 1_000;
    let mut per_shard = vec![0u64; SHARDS as usize];
    let (mut begin, end) =
        invicta_store::keys::prefix_range(&invicta_store::keys::pack(&("worker",)));
    let mut counted = 0u64;
    let mut truncated = false;
    loop {
        let (b, e) = (begin.clone(), end.clone());
        let rows = store
            .read(move |tx| tx.get_range(&b, &e, invicta_store::RangeOptions::limit(PAGE)))
            .await?;
        for row in &rows {
            if let Ok((_, tenant, component, worker)) =
                invicta_store::keys::unpack::<(String, String, String, String)>(&row.key)
            {
                let shard = shard_of_names(&tenant, &component, &worker) as usize;
                if let Some(n) = per_shard.get_mut(shard) {
                    *n += 1;
                }
                counted += 1;
            }
        }
        match rows.last() {
            Some(last) if rows.len() == PAGE => {
                if counted >= WORKERS_COUNTED_MAX {
                    truncated = true;
                    break;
                }
                begin = last.key.clone();
                begin.push(0);
            }
            _ => break,
        }
    }
    let now = now_ms();
    let shards: Vec<ShardView> = leases
        .iter()
        .enumerate()
        .map(|(shard, lease)| ShardView {
            shard: u32::try_from(shard).unwrap_or(u32::MAX),
            owner: lease.as_ref().map(|l| l.owner.clone()),
            epoch: lease.as_ref().map_or(0, |l| l.epoch),
            expires_ms: lease.as_ref().map_or(0, |l| l.expires_ms),
            live: lease.as_ref().is_some_and(|l| l.expires_ms > now),
            handoff_to: lease
                .as_ref()
                .and_then(|l| l.handoff.as_ref().map(|h| h.to.clone())),
            workers: per_shard.get(shard).copied().unwrap_or(0),
        })
        .collect();
    let mut views: Vec<ExecutorView> = executors
        .into_iter()
        .map(|(id, record)| ExecutorView {
            id,
            address: Some(record.address),
            live: record.expires_ms > now,
            leaving: record.leaving,
            shards: 0,
            workers: 0,
        })
        .collect();
    let mut held: HashMap<&str, (u32, u64)> = HashMap::new();
    for shard in shards.iter().filter(|s| s.live) {
        if let Some(owner) = &shard.owner {
            let entry = held.entry(owner.as_str()).or_default();
            entry.0 += 1;
            entry.1 += shard.workers;
        }
    }
    for owner in held.keys() {
        if !views.iter().any(|v| v.id == *owner) {
            views.push(ExecutorView {
                id: owner.to_string(),
                address: None,
                live: true,
                leaving: false,
                shards: 0,
                workers: 0,
            });
        }
    }
    for view in &mut views {
        if let Some((shards, workers)) = held.get(view.id.as_str()) {
            view.shards = *shards;
            view.workers = *workers;
        }
    }
    views.sort_by(|a, b| b.live.cmp(&a.live).then(a.id.cmp(&b.id)));
    Ok(ClusterView {
        executors: views,
        shards,
        failovers,
        workers_counted: counted,
        workers_truncated: truncated,
    })
}
