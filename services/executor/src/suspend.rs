//! Durable waits: a worker that waits long — on a `wasi:clocks` deadline, or on a promise —
//! is suspended rather than left holding an instance.
//!
//! A deadline is recorded when the guest makes it (`subscribe-duration` records the instant it
//! ends), so a replay waits for the same instant. When the guest blocks on a deadline further
//! away than `[executor] suspend_wait_ms`, with no outgoing request of its own in flight, the
//! pollable asks the worker's actor to suspend: the actor drops the running call and the
//! instance, commits what the invocation recorded so far with a `Suspended` marker, the
//! `running` mark and a wake-up key, and parks. When the deadline comes (the actor's own
//! timer, or the executor's scheduler after a restart) the worker is rebuilt by replay, which
//! brings the invocation back to the same wait, now over, and it goes on live. Shorter waits
//! just wait.

use std::time::Duration;

use invicta_model::{Value, WorkerId};
use invicta_store::keys::{pack, unpack};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::host::{self, WorkerCtx};

const SUBSCRIBE_DURATION: &str = "wasi:clocks/monotonic-clock.subscribe-duration";

/// What a suspended worker waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A deadline, in ms since the epoch.
    At(u64),
    /// A promise's completion.
    Promise(String),
}

/// How a worker's waits reach its actor.
#[derive(Clone)]
pub(crate) struct Waits {
    pub requests: mpsc::UnboundedSender<Wake>,
    /// Waits longer than this suspend the worker.
    pub threshold: Duration,
}

impl Waits {
    /// Asks the actor to suspend the worker, then never returns: the actor drops the call.
    pub(crate) async fn suspend(&self, wake: Wake) {
        let _ = self.requests.send(wake);
        std::future::pending::<()>().await;
    }
}

/// The monotonic clock's reading, in ns: the wall clock, as the durable `now` gives it.
pub(crate) fn clock_ns() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.as_nanos()).unwrap_or(u64::MAX)
}

/// A deadline pollable of the worker's monotonic clock.
struct Deadline {
    at_ns: u64,
    durability: host::Shared,
    waits: Waits,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Deadline {
    async fn ready(&mut self) {
        let now = clock_ns();
        if now >= self.at_ns {
            return;
        }
        let (past, requests_open) = {
            let d = host::lock(&self.durability);
            (!d.at_frontier(), d.open_requests > 0)
        };
        // The oplog goes on past this wait, so the worker got past it.
        if past {
            return;
        }
        let remaining = Duration::from_nanos(self.at_ns - now);
        if remaining > self.waits.threshold && !requests_open {
            // A `ready` check polls once and must not suspend: only a wait gets this far.
            tokio::task::yield_now().await;
            self.waits
                .suspend(Wake::At(self.at_ns / 1_000_000 + 1))
                .await;
        }
        tokio::time::sleep(remaining).await;
    }
}

fn deadline(store: &mut WorkerCtx, at_ns: u64) -> wasmtime::Result<Resource<DynPollable>> {
    let pollable = Deadline {
        at_ns,
        durability: store.durability.clone(),
        waits: store.waits.clone(),
    };
    let resource = store.table().push(pollable)?;
    subscribe(store.table(), resource)
}

/// Replaces the monotonic clock's `subscribe-*` with durable deadlines.
pub(crate) fn add_to_linker(linker: &mut Linker<WorkerCtx>) -> wasmtime::Result<()> {
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("subscribe-instant", |mut store, (when,): (u64,)| {
        // The instant comes from the durable clock, so it is the same in a replay.
        Ok((deadline(store.data_mut(), when)?,))
    })?;
    clock.func_wrap("subscribe-duration", |mut store, (duration,): (u64,)| {
        let at = {
            let mut d = host::lock(&store.data().durability);
            let value = d
                .host_call(SUBSCRIBE_DURATION, |d| {
                    Value::U64(d.monotonic_now().saturating_add(duration))
                })
                .map_err(wasmtime::Error::msg)?;
            match value {
                Value::U64(at) => at,
                _ => return Err(wasmtime::Error::msg("a recorded deadline is not a u64")),
            }
        };
        Ok((deadline(store.data_mut(), at)?,))
    })?;
    Ok(())
}

/// The wake-up index: `("wake", at_ms, tenant, component, worker)`.
pub(crate) fn wake_key(at_ms: u64, id: &WorkerId) -> Vec<u8> {
    pack(&(
        "wake",
        at_ms,
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
    ))
}

/// Every wake-up up to `now_ms` (included): `[begin, end)`.
pub(crate) fn wake_range(now_ms: u64) -> (Vec<u8>, Vec<u8>) {
    (pack(&("wake",)), pack(&("wake", now_ms + 1)))
}

/// The whole wake-up index.
pub(crate) fn wake_prefix() -> Vec<u8> {
    pack(&("wake",))
}

pub(crate) fn parse_wake(key: &[u8]) -> Option<(u64, WorkerId)> {
    let (_, at, tenant, component, worker): (String, u64, String, String, String) =
        unpack(key).ok()?;
    Some((
        at,
        WorkerId {
            tenant: tenant.try_into().ok()?,
            component: component.try_into().ok()?,
            worker: worker.try_into().ok()?,
        },
    ))
}

/// A promise: made by its worker, completed from outside.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PromiseRecord {
    pub created_at_ms: u64,
    /// The data it was completed with.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub completed: Option<serde_json::Value>,
    #[serde(default)]
    pub completed_at_ms: Option<u64>,
}

pub(crate) fn promise_key(id: &WorkerId, promise: &str) -> Vec<u8> {
    pack(&(
        "promise",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
        promise,
    ))
}

pub(crate) fn promises_prefix(id: &WorkerId) -> Vec<u8> {
    pack(&(
        "promise",
        id.tenant.as_str(),
        id.component.as_str(),
        id.worker.as_str(),
    ))
}

/// The most data a promise may be completed with, as JSON.
pub const PROMISE_BYTES_MAX: usize = 64 * 1024;
