//! Placement seen from the executor: the shards it holds and their leases (renewed, given up,
//! taken over), the hand-off of a shard (drained: what runs finishes and commits, then the shard
//! is released), and the recovery of the workers of a shard taken over.
//!
//! **Invariant:** a worker runs only on the executor that holds its shard at the current epoch;
//! every commit is fenced by it ([`crate::placement::Fencing`]).

use std::collections::HashMap;

use invicta_model::WorkerId;
use invicta_model::shards::ShardGrant;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::worker::{Command, WorkerHandle};
use crate::{Executor, lock, now_ms, placement, records, suspend};

impl Executor {
    /// Sends calls for workers this executor does not own to their owners, found through the
    /// scheduler (a gateway without shards, or an executor calling another's worker).
    pub fn route_through(&self, scheduler: invicta_worker_scheduler::grpc::SchedulerClient) {
        let _ = self.inner.router.set(crate::remote::Router::new(scheduler));
    }

    /// Whether this executor runs `id` now (holds its shard).
    pub fn owns(&self, id: &WorkerId) -> bool {
        self.inner.fencing.owns(id)
    }

    /// This executor's id, as leases name it.
    pub fn id(&self) -> &str {
        &self.inner.fencing.id
    }

    /// The shards this executor owns, with their epochs.
    pub fn shards(&self) -> Vec<(u32, u64)> {
        self.inner.fencing.owned()
    }

    /// Renews the leases of the shards this executor took, until the process ends; a shard
    /// someone else took meanwhile is given up.
    pub(crate) fn spawn_lease_renewal(&self) {
        let executor = self.clone();
        let every = std::time::Duration::from_millis((self.inner.config.lease_ms / 3).max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let held = executor.inner.fencing.owned();
                let (owner, lease_ms) = (
                    executor.inner.fencing.id.clone(),
                    executor.inner.config.lease_ms,
                );
                let renewed = executor
                    .inner
                    .store
                    .transact(move |tx| placement::renew(tx, &owner, &held, now_ms(), lease_ms))
                    .await;
                match renewed {
                    Ok(lost) => {
                        for shard in lost {
                            executor.give_up(shard).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "renew shard leases"),
                }
            }
        });
    }

    /// Applies what the scheduler's heartbeat says this executor holds: shards no longer
    /// granted (or granted at another epoch) are given up at once, their workers stopped; new
    /// ones are taken, their cut-off, asleep and pending workers recovered; shards to drain
    /// stop taking work, let what runs finish and commit, and are then released
    /// ([`Executor::released`]).
    pub async fn set_shards(&self, granted: &[ShardGrant]) -> Result<()> {
        let before = self.inner.fencing.owned();
        let now: HashMap<u32, u64> = granted.iter().map(|g| (g.shard, g.epoch)).collect();
        for (shard, epoch) in &before {
            if now.get(shard) != Some(epoch) {
                self.give_up(*shard).await;
            }
        }
        lock(&self.inner.released).retain(|shard| now.contains_key(shard));
        // Records an all-in-one run left in the oplog's tail for the shards taken go to their
        // workers' keys before any of their workers is read.
        let taken: HashMap<u32, u64> = granted
            .iter()
            .filter(|g| !before.contains(&(g.shard, g.epoch)))
            .map(|g| (g.shard, g.epoch))
            .collect();
        crate::commit::drain_tails_of(&self.inner.store, &self.inner.fencing.id, taken).await?;
        let mut gained = false;
        for grant in granted {
            let shard = grant.shard;
            if !before.contains(&(shard, grant.epoch)) {
                self.inner.fencing.set(shard, Some(grant.epoch));
                tracing::info!(shard, epoch = grant.epoch, "took over a shard");
                gained = true;
            }
            let draining = self.inner.fencing.draining(shard);
            if grant.draining && !draining {
                self.drain(shard);
            } else if !grant.draining && draining {
                // The move was called off (its target died): the shard is ours again. Under the
                // lock the drain task releases under, so that it cannot release it after this.
                let mut released = lock(&self.inner.released);
                self.inner.fencing.set_draining(shard, false);
                released.remove(&shard);
                drop(released);
                tracing::info!(shard, "hand-off called off");
                gained = true;
            }
        }
        if gained {
            self.recover().await?;
            self.recover_pending().await?;
        }
        Ok(())
    }

    /// A clean stop's last step: every record of the oplog's tail moves to its worker's keys,
    /// so that the store holds each oplog whole (what a kill leaves, the next start drains).
    pub async fn stop(&self) {
        match self.inner.committer.flush().await {
            Ok(()) => tracing::debug!("the oplog's tail moved to the workers' keys"),
            Err(e) => tracing::warn!(error = %e, "the oplog's tail is left for the next start"),
        }
    }

    /// The shards drained for a hand-off, which the next heartbeat releases.
    pub fn released(&self) -> Vec<u32> {
        lock(&self.inner.released).iter().copied().collect()
    }

    /// Resolves when a shard has been drained (to heartbeat at once rather than wait).
    pub async fn release_ready(&self) {
        self.inner.release_ready.notified().await;
    }

    /// Starts handing `shard` off: new work for its workers is refused (callers retry at the
    /// new owner), each worker's actor finishes what it runs and what is queued before it,
    /// commits, and stops; then the shard is released. A forced move meanwhile (the scheduler
    /// gives up waiting after a lease) fences whatever is still running, as a failover would.
    pub(crate) fn drain(&self, shard: u32) {
        {
            let mut released = lock(&self.inner.released);
            self.inner.fencing.set_draining(shard, true);
            released.remove(&shard);
        }
        tracing::info!(shard, "draining a shard for a hand-off");
        let executor = self.clone();
        tokio::spawn(async move {
            loop {
                let handles: Vec<(WorkerId, WorkerHandle)> = executor
                    .lock_workers()
                    .iter()
                    .filter(|(id, _)| invicta_model::shards::shard_of(id) == shard)
                    .map(|(id, h)| (id.clone(), h.clone()))
                    .collect();
                if handles.is_empty() {
                    break;
                }
                let stops: Vec<_> = handles
                    .into_iter()
                    .map(|(id, handle)| {
                        let executor = executor.clone();
                        async move {
                            let (reply, done) = oneshot::channel();
                            if handle.send(Command::Stop(reply)).await.is_ok() {
                                let _ = done.await;
                            } else {
                                // An actor already gone, its handle left behind.
                                executor.forget_worker(&id, &handle);
                            }
                        }
                    })
                    .collect();
                futures::future::join_all(stops).await;
                if !executor.inner.fencing.draining(shard) {
                    return;
                }
                // Workers its own workers called meanwhile: stopped in the next round.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let mut released = lock(&executor.inner.released);
            if executor.inner.fencing.draining(shard) {
                released.insert(shard);
                drop(released);
                executor.inner.release_ready.notify_one();
                tracing::info!(shard, "shard drained");
            }
        });
    }

    /// Removes `handle` from the map of running workers, if it is still the one there.
    pub(crate) fn forget_worker(&self, id: &WorkerId, handle: &WorkerHandle) {
        let mut workers = self.lock_workers();
        if workers.get(id).is_some_and(|h| h.same_actor(handle)) {
            workers.remove(id);
        }
    }

    /// The shards being drained for a hand-off and not yet released.
    pub fn draining(&self) -> Vec<u32> {
        let released = lock(&self.inner.released);
        (0..invicta_model::shards::SHARDS)
            .filter(|s| self.inner.fencing.draining(*s) && !released.contains(s))
            .collect()
    }

    /// Stops running the shard's workers: their commits would be refused from now on.
    pub(crate) async fn give_up(&self, shard: u32) {
        self.inner.fencing.set(shard, None);
        lock(&self.inner.released).remove(&shard);
        tracing::warn!(shard, "gave up a shard");
        let handles: Vec<WorkerHandle> = self
            .lock_workers()
            .iter()
            .filter(|(id, _)| invicta_model::shards::shard_of(id) == shard)
            .map(|(_, h)| h.clone())
            .collect();
        // Each actor stops once its running invocation ends; nobody waits for that here (a
        // heartbeat must not).
        for handle in handles {
            tokio::spawn(async move {
                let (reply, done) = oneshot::channel();
                if handle.send(Command::Stop(reply)).await.is_ok() {
                    let _ = done.await;
                }
            });
        }
    }

    /// Resumes the workers whose last invocation started durably but never completed.
    pub(crate) async fn recover(&self) -> Result<()> {
        let prefix = records::running_prefix();
        let wakes = suspend::wake_prefix();
        let (rows, wakes) = self
            .inner
            .store
            .read(move |tx| {
                Ok::<_, Error>((
                    tx.get_prefix(&prefix, Default::default())?,
                    tx.get_prefix(&wakes, Default::default())?,
                ))
            })
            .await?;
        // Workers asleep until later are left to the scheduler, which wakes them when due.
        let now = now_ms();
        let asleep: std::collections::HashSet<WorkerId> = wakes
            .iter()
            .filter_map(|row| suspend::parse_wake(&row.key))
            .filter(|(at, _)| *at > now)
            .map(|(_, id)| id)
            .collect();
        for row in rows {
            let Some(id) = records::parse_running_key(&row.key) else {
                tracing::warn!("skipping an unreadable running-worker key");
                continue;
            };
            if asleep.contains(&id) || !self.inner.fencing.owns(&id) {
                continue;
            }
            tracing::info!(worker = %id, "resuming a worker cut off mid-invocation");
            match self.handle(&id).await {
                Ok(handle) => {
                    let _ = handle.send(Command::Resume).await;
                }
                Err(e) => tracing::error!(worker = %id, error = %e, "cannot resume worker"),
            }
        }
        Ok(())
    }
}
