//! Recurring invocations: a cron expression per schedule, on one worker, fired exactly once
//! per tick. Each tick's invocation is accepted like `enqueue`'s, under the idempotency key
//! `schedule-<id>-<tick ms>`, in the same transaction that moves the schedule to its next tick —
//! so a tick fires once however many processes look, and a restart loses none. Ticks missed while
//! nothing ran collapse into one, fired at once (cron's catch-up).
//!
//! Keys: `("schedule", tenant, component, worker, id)` → [`Schedule`], and the due index
//! `("schedule-due", next tick ms, tenant, component, worker, id)` for schedules not paused.

use std::str::FromStr;

use chrono::{TimeZone, Utc};
use invicta_model::WorkerId;
use invicta_store::Transaction;
use invicta_store::keys::{pack, unpack};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::records;

/// A recurring invocation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Schedule {
    pub id: String,
    /// Six fields, seconds first (`sec min hour day-of-month month day-of-week`), in UTC.
    pub cron: String,
    pub function: String,
    #[schema(value_type = Vec<Object>)]
    pub params: Vec<serde_json::Value>,
    pub paused: bool,
    pub created_at_ms: u64,
    /// Its next tick (ms since the epoch); `null` when paused or when no tick is left.
    pub next_at_ms: Option<u64>,
    /// Ticks fired so far.
    pub fired: u64,
    #[serde(skip)]
    #[schema(ignore)]
    pub limits: ScheduleLimits,
}

/// The plan's limits when the schedule was made, for its invocations.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScheduleLimits {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub egress_hosts: Option<Vec<String>>,
}

/// How a schedule is stored: the public part and its limits.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    schedule: Schedule,
    limits: ScheduleLimits,
}

pub(crate) fn key(id: &WorkerId, schedule: &str) -> Vec<u8> {
    pack(&(
        "schedule",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
        schedule,
    ))
}

pub(crate) fn prefix(id: &WorkerId) -> Vec<u8> {
    pack(&(
        "schedule",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
    ))
}

pub(crate) fn due_key(at_ms: u64, id: &WorkerId, schedule: &str) -> Vec<u8> {
    pack(&(
        "schedule-due",
        at_ms,
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
        schedule,
    ))
}

/// The due index up to `now_ms` (included): `[begin, end)`.
pub(crate) fn due_range(now_ms: u64) -> (Vec<u8>, Vec<u8>) {
    (
        pack(&("schedule-due",)),
        pack(&("schedule-due", now_ms + 1)),
    )
}

/// The worker and schedule of a due-index key, and its tick.
pub(crate) fn parse_due(key: &[u8]) -> Option<(u64, WorkerId, String)> {
    let (_, at, tenant, component, worker, schedule): (
        String,
        u64,
        String,
        String,
        String,
        String,
    ) = unpack(key).ok()?;
    Some((
        at,
        WorkerId {
            tenant: invicta_model::TenantId::new(tenant).ok()?,
            component: invicta_model::ComponentName::new(component).ok()?,
            worker: invicta_model::WorkerName::new(worker).ok()?,
        },
        schedule,
    ))
}

/// The idempotency key of a tick's invocation.
pub(crate) fn tick_key(schedule: &str, at_ms: u64) -> String {
    format!("schedule-{schedule}-{at_ms}")
}

/// A cron expression, checked.
pub(crate) fn parse(expression: &str) -> Result<cron::Schedule, Error> {
    cron::Schedule::from_str(expression).map_err(|e| {
        Error::InvalidSchedule(format!(
            "`{expression}` is not a cron expression (sec min hour day month weekday): {e}"
        ))
    })
}

/// The first tick after `after_ms`.
pub(crate) fn next_after(expression: &str, after_ms: u64) -> Option<u64> {
    let schedule = parse(expression).ok()?;
    let after = Utc
        .timestamp_millis_opt(i64::try_from(after_ms).ok()?)
        .single()?;
    let next = schedule.after(&after).next()?;
    u64::try_from(next.timestamp_millis()).ok()
}

pub(crate) fn read(tx: &mut Transaction<'_>, key: &[u8]) -> Result<Option<Schedule>, Error> {
    match tx.get(key)? {
        Some(bytes) => {
            let stored: Stored = records::decode_json("schedule", &bytes)?;
            let mut schedule = stored.schedule;
            schedule.limits = stored.limits;
            Ok(Some(schedule))
        }
        None => Ok(None),
    }
}

/// Writes the schedule and its place in the due index (removing the old one).
/// The most schedules one worker may have: each is a timer the executor keeps firing.
pub const PER_WORKER_MAX: usize = 100;

/// The largest parameters a schedule may carry, as JSON: they are stored with it and copied
/// into every tick's pending invocation.
pub const PARAMS_BYTES_MAX: usize = 64 * 1024;

pub(crate) fn write(
    tx: &mut Transaction<'_>,
    id: &WorkerId,
    schedule: &Schedule,
    old_next: Option<u64>,
) -> Result<(), Error> {
    if let Some(old) = old_next {
        tx.clear(&due_key(old, id, &schedule.id))?;
    }
    if let (Some(next), false) = (schedule.next_at_ms, schedule.paused) {
        tx.set(&due_key(next, id, &schedule.id), b"")?;
    }
    let stored = Stored {
        schedule: schedule.clone(),
        limits: schedule.limits.clone(),
    };
    tx.set(&key(id, &schedule.id), &records::encode_json(&stored))?;
    Ok(())
}

/// Removes every schedule of a worker, with its due entries.
pub(crate) fn clear_worker(tx: &mut Transaction<'_>, id: &WorkerId) -> Result<(), Error> {
    for row in tx.get_prefix(&prefix(id), Default::default())? {
        let stored: Stored = records::decode_json("schedule", &row.value)?;
        if let Some(next) = stored.schedule.next_at_ms {
            tx.clear(&due_key(next, id, &stored.schedule.id))?;
        }
        tx.clear(&row.key)?;
    }
    Ok(())
}
