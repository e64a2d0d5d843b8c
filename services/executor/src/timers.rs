//! Timers: cron schedules (created, paused, deleted, and their ticks fired as pending
//! invocations) and the wake-ups of workers asleep in a wait, both found by the scheduler loop
//! in the store's due-time indexes.
//!
//! **Invariant:** a tick is accepted once: its pending record and the schedule's next tick are
//! written in one transaction, under a key made from the tick's time.

use invicta_model::WorkerId;

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::records::{self, PendingRecord};
use crate::schedules::{self, Schedule};
use crate::{Executor, SCHEDULER_TICK_MS, now_ms, suspend};

impl Executor {
    /// Creates a recurring invocation of `function` on the worker (created if it does not
    /// exist), by a six-field cron expression in UTC.
    pub async fn create_schedule(
        &self,
        id: &WorkerId,
        cron: &str,
        function: &str,
        params: &[serde_json::Value],
        limits: &Limits,
    ) -> Result<Schedule> {
        schedules::parse(cron)?;
        let params_bytes = serde_json::to_vec(params).map_or(0, |b| b.len());
        if params_bytes > schedules::PARAMS_BYTES_MAX {
            return Err(Error::InvalidSchedule(format!(
                "its parameters are {params_bytes} bytes as JSON; the limit is {}",
                schedules::PARAMS_BYTES_MAX
            )));
        }
        let (invocation, _) = self
            .prepare(id, function, params, Some("schedule-check".into()), limits)
            .await?;
        let now = now_ms();
        let bytes: [u8; 6] = rand::random();
        let schedule = Schedule {
            id: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            cron: cron.to_string(),
            function: invocation.function.clone(),
            params: params.to_vec(),
            paused: false,
            created_at_ms: now,
            next_at_ms: schedules::next_after(cron, now),
            fired: 0,
            limits: schedules::ScheduleLimits {
                fuel: invocation.fuel,
                memory_bytes: invocation.memory_bytes,
                egress_hosts: invocation.egress_hosts.clone(),
            },
        };
        let (id_c, stored) = (id.clone(), schedule.clone());
        self.inner
            .store
            .transact(move |tx| {
                if tx.get(&records::worker_key(&id_c))?.is_none() {
                    return Err(Error::WorkerNotFound(id_c.to_string()));
                }
                let max = schedules::PER_WORKER_MAX;
                let existing = tx
                    .get_prefix(
                        &schedules::prefix(&id_c),
                        invicta_store::RangeOptions::limit(max + 1),
                    )?
                    .len();
                if existing >= max {
                    return Err(Error::QuotaExceeded {
                        quota: "schedules_per_worker",
                        limit: max as u64,
                        used: existing as u64,
                    });
                }
                schedules::write(tx, &id_c, &stored, None)
            })
            .await?;
        Ok(schedule)
    }

    /// The worker's schedules.
    pub async fn schedules(&self, id: &WorkerId) -> Result<Vec<Schedule>> {
        let id_c = id.clone();
        self.inner
            .store
            .read(move |tx| {
                if tx.get(&records::worker_key(&id_c))?.is_none() {
                    return Err(Error::WorkerNotFound(id_c.to_string()));
                }
                let mut out = Vec::new();
                for row in tx.get_prefix(&schedules::prefix(&id_c), Default::default())? {
                    if let Some(s) = schedules::read(tx, &row.key)? {
                        out.push(s);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Pauses or resumes a schedule; a resumed one continues from its next tick after now.
    pub async fn set_schedule_paused(
        &self,
        id: &WorkerId,
        schedule: &str,
        paused: bool,
    ) -> Result<Schedule> {
        let (id_c, sid) = (id.clone(), schedule.to_string());
        self.inner
            .store
            .transact(move |tx| {
                let mut s = schedules::read(tx, &schedules::key(&id_c, &sid))?
                    .ok_or_else(|| Error::ScheduleNotFound(sid.clone()))?;
                let old = if s.paused { None } else { s.next_at_ms };
                s.paused = paused;
                s.next_at_ms = if paused {
                    None
                } else {
                    schedules::next_after(&s.cron, now_ms())
                };
                schedules::write(tx, &id_c, &s, old)?;
                Ok(s)
            })
            .await
    }

    /// Deletes a schedule; its ticks already accepted still run.
    pub async fn delete_schedule(&self, id: &WorkerId, schedule: &str) -> Result<()> {
        let (id_c, sid) = (id.clone(), schedule.to_string());
        self.inner
            .store
            .transact(move |tx| {
                let key = schedules::key(&id_c, &sid);
                let s = schedules::read(tx, &key)?
                    .ok_or_else(|| Error::ScheduleNotFound(sid.clone()))?;
                if let Some(next) = s.next_at_ms.filter(|_| !s.paused) {
                    tx.clear(&schedules::due_key(next, &id_c, &sid))?;
                }
                tx.clear(&key)?;
                Ok(())
            })
            .await
    }

    /// Fires every schedule whose tick has come, then sleeps a little; until the process ends.
    pub(crate) fn spawn_scheduler(&self) {
        let executor = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = executor.fire_due().await {
                    tracing::warn!(error = %e, "fire schedules");
                }
                if let Err(e) = executor.wake_due().await {
                    tracing::warn!(error = %e, "wake sleeping workers");
                }
                tokio::time::sleep(std::time::Duration::from_millis(SCHEDULER_TICK_MS)).await;
            }
        });
    }

    /// The first rows of a due-time index up to now (`range`): the scheduler takes at most
    /// this many per tick.
    async fn due(&self, range: (Vec<u8>, Vec<u8>)) -> Result<Vec<invicta_store::KeyValue>> {
        let (begin, end) = range;
        self.inner
            .store
            .read(move |tx| tx.get_range(&begin, &end, invicta_store::RangeOptions::limit(256)))
            .await
            .map_err(Error::from)
    }

    /// Wakes the workers whose sleep is over and that are not waiting in this process (after a
    /// restart, or evicted): their wake-up key goes, and a crash before they go on leaves
    /// their `running` mark, which the next start resumes.
    pub(crate) async fn wake_due(&self) -> Result<()> {
        for row in self.due(suspend::wake_range(now_ms())).await? {
            let Some((at, id)) = suspend::parse_wake(&row.key) else {
                continue;
            };
            if !self.inner.fencing.owns(&id) {
                continue;
            }
            if let Err(e) = self.wake(&id).await {
                tracing::warn!(worker = %id, error = %e, "wake a sleeping worker");
            }
            let key = row.key.clone();
            self.inner
                .store
                .transact(move |tx| tx.clear(&key).map_err(Error::from))
                .await?;
            tracing::debug!(worker = %id, at, "woke a sleeping worker");
        }
        Ok(())
    }

    pub(crate) async fn fire_due(&self) -> Result<()> {
        for row in self.due(schedules::due_range(now_ms())).await? {
            let Some((at, id, sid)) = schedules::parse_due(&row.key) else {
                continue;
            };
            if !self.inner.fencing.owns(&id) {
                continue;
            }
            if let Err(e) = self.fire(&id, &sid, at).await {
                tracing::warn!(worker = %id, schedule = %sid, error = %e, "fire a schedule");
            }
        }
        Ok(())
    }

    /// Fires one tick: accepts its invocation and moves the schedule on, in one transaction.
    pub(crate) async fn fire(&self, id: &WorkerId, sid: &str, at: u64) -> Result<()> {
        let (id_c, sid_c) = (id.clone(), sid.to_string());
        let fencing = self.inner.fencing.clone();
        let fired = self
            .inner
            .store
            .transact(move |tx| {
                fencing.check(tx, &id_c, &mut std::collections::HashMap::new())?;
                let Some(mut s) = schedules::read(tx, &schedules::key(&id_c, &sid_c))? else {
                    tx.clear(&schedules::due_key(at, &id_c, &sid_c))?;
                    return Ok(None);
                };
                if s.paused || s.next_at_ms != Some(at) {
                    tx.clear(&schedules::due_key(at, &id_c, &sid_c))?;
                    return Ok(None);
                }
                let key = schedules::tick_key(&sid_c, at);
                let fresh = tx.get(&records::invocation_key(&id_c, &key))?.is_none()
                    && tx.get(&records::pending_key(&id_c, &key))?.is_none();
                if fresh {
                    let pending = PendingRecord {
                        function: s.function.clone(),
                        params: s.params.clone(),
                        fuel: s.limits.fuel,
                        memory_bytes: s.limits.memory_bytes,
                        egress_hosts: s.limits.egress_hosts.clone(),
                        enqueued_at_ms: now_ms(),
                        due_at_ms: None,
                        retry: None,
                        attempts: 0,
                        last_error: None,
                    };
                    records::set_value(
                        tx,
                        &records::pending_key(&id_c, &key),
                        records::encode_json(&pending),
                    )?;
                    s.fired += 1;
                }
                // Missed ticks collapse into this one.
                s.next_at_ms = schedules::next_after(&s.cron, at.max(now_ms()));
                schedules::write(tx, &id_c, &s, Some(at))?;
                Ok::<_, Error>(fresh.then_some((key, s)))
            })
            .await?;
        let Some((key, s)) = fired else {
            return Ok(());
        };
        let limits = Limits {
            fuel_per_invocation: s.limits.fuel,
            fuel_per_month: u64::MAX,
            memory_per_worker_bytes: s.limits.memory_bytes,
            workers_max: u64::MAX,
            egress_hosts: s.limits.egress_hosts.clone(),
            concurrent_invocations: u64::MAX,
            retry: None,
            archive_retention_days: None,
            files_per_worker_bytes: None,
        };
        let (mut invocation, running) = self
            .prepare(id, &s.function, &s.params, Some(key), &limits)
            .await?;
        invocation.key_is_new = false;
        invocation.enqueued = true;
        let counted = self.count_background(&id.tenant, None)?;
        self.dispatch(id, invocation, None, running, counted).await;
        Ok(())
    }
}
