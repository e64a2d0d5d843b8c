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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use invicta_model::{Value, WorkerId};
use invicta_store::keys::{pack, unpack};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::durability::{self as host, POLL, READY, Readiness, Shared};

/// What durable waits need of a worker's store data (wasmtime-wasi's view pattern): the
/// binding sees this, not the whole worker.
pub(crate) trait WaitsView: Send + 'static {
    fn durability(&self) -> &Shared;
    fn waits(&self) -> &Waits;
    fn table(&mut self) -> &mut wasmtime::component::ResourceTable;
}

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
    /// The deadlines being waited on now, by a token of their wait: of several polled at once,
    /// the earliest decides.
    awaited: Arc<Mutex<HashMap<u64, u64>>>,
    tokens: Arc<AtomicU64>,
}

/// A deadline being waited on, until the wait ends or is dropped.
struct Awaiting {
    awaited: Arc<Mutex<HashMap<u64, u64>>>,
    token: u64,
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.awaited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.token);
    }
}

impl Waits {
    pub(crate) fn new(requests: mpsc::UnboundedSender<Wake>, threshold: Duration) -> Waits {
        Waits {
            requests,
            threshold,
            awaited: Arc::default(),
            tokens: Arc::default(),
        }
    }

    fn awaiting(&self, at_ns: u64) -> Awaiting {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        self.awaited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, at_ns);
        Awaiting {
            awaited: self.awaited.clone(),
            token,
        }
    }

    /// The earliest deadline being waited on.
    fn earliest(&self) -> Option<u64> {
        self.awaited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .min()
            .copied()
    }

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
    durability: Shared,
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
        // Every deadline waited on is registered: of several polled at once, the earliest
        // decides whether the worker is suspended.
        let _awaiting = self.waits.awaiting(self.at_ns);
        let remaining = Duration::from_nanos(self.at_ns - now);
        if remaining > self.waits.threshold && !requests_open {
            // A `ready` check polls once and must not suspend: only a wait gets past this
            // yield, and by then every deadline polled with this one is registered too.
            tokio::task::yield_now().await;
            let earliest = self.waits.earliest().unwrap_or(self.at_ns);
            let left = Duration::from_nanos(earliest.saturating_sub(clock_ns()));
            if earliest == self.at_ns && left > self.waits.threshold {
                self.waits
                    .suspend(Wake::At(self.at_ns / 1_000_000 + 1))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_nanos(self.at_ns.saturating_sub(clock_ns()))).await;
    }
}

fn deadline<T: WaitsView>(store: &mut T, at_ns: u64) -> wasmtime::Result<Resource<DynPollable>> {
    let pollable = Deadline {
        at_ns,
        durability: store.durability().clone(),
        waits: store.waits().clone(),
    };
    let resource = store.table().push(pollable)?;
    subscribe(store.table(), resource)
}

/// The indices a recorded `poll` returned, checked against the pollables given this time.
fn recorded_indices(value: &Value, given: usize) -> Option<Vec<u32>> {
    let Value::List(items) = value else {
        return None;
    };
    items
        .iter()
        .map(|v| match v {
            Value::U32(i) if (*i as usize) < given => Some(*i),
            _ => None,
        })
        .collect()
}

/// Replaces the monotonic clock's `subscribe-*` with durable deadlines, and records which
/// pollables `poll` and `ready` found ready: which of several things happened first is as
/// non-deterministic as a clock, and a replay must see the same.
pub(crate) fn add_to_linker<T: WaitsView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::io::poll::{Host, HostPollable};
    let mut io = linker.instance("wasi:io/poll@0.2.12")?;
    io.func_wrap_async(
        "poll",
        |mut store, (pollables,): (Vec<Resource<DynPollable>>,)| {
            Box::new(async move {
                let durability = store.data().durability().clone();
                let readiness = host::lock(&durability)
                    .readiness(POLL)
                    .map_err(wasmtime::Error::msg)?;
                match readiness {
                    Readiness::Recorded(recorded) => {
                        match recorded_indices(&recorded, pollables.len()) {
                            Some(ready) if !ready.is_empty() => {
                                // Live, these were ready: wait until they are again, so that
                                // what the guest reads of them next is what it read live.
                                for i in &ready {
                                    let rep = pollables[*i as usize].rep();
                                    HostPollable::block(
                                        store.data_mut().table(),
                                        Resource::new_borrow(rep),
                                    )
                                    .await?;
                                }
                                Ok((ready,))
                            }
                            // The record belongs to another poll (the guest polls less often
                            // in replay than it did live): this one checks for real.
                            _ => Ok((Host::poll(store.data_mut().table(), pollables).await?,)),
                        }
                    }
                    Readiness::Unrecorded => {
                        Ok((Host::poll(store.data_mut().table(), pollables).await?,))
                    }
                    Readiness::Live => {
                        let ready = Host::poll(store.data_mut().table(), pollables).await?;
                        host::lock(&durability).record(
                            POLL,
                            Value::List(ready.iter().map(|i| Value::U32(*i)).collect()),
                        );
                        Ok((ready,))
                    }
                }
            })
        },
    )?;
    io.func_wrap_async(
        "[method]pollable.ready",
        |mut store, (pollable,): (Resource<DynPollable>,)| {
            Box::new(async move {
                let durability = store.data().durability().clone();
                let readiness = host::lock(&durability)
                    .readiness(READY)
                    .map_err(wasmtime::Error::msg)?;
                match readiness {
                    Readiness::Recorded(Value::Bool(true)) => {
                        HostPollable::block(store.data_mut().table(), pollable).await?;
                        Ok((true,))
                    }
                    Readiness::Recorded(Value::Bool(false)) => Ok((false,)),
                    Readiness::Recorded(_) => Err(wasmtime::Error::msg(
                        host::lock(&durability)
                            .diverge("replay diverged: a recorded readiness is not a bool".into()),
                    )),
                    Readiness::Unrecorded => {
                        Ok((HostPollable::ready(store.data_mut().table(), pollable).await?,))
                    }
                    Readiness::Live => {
                        let ready = HostPollable::ready(store.data_mut().table(), pollable).await?;
                        host::lock(&durability).record(READY, Value::Bool(ready));
                        Ok((ready,))
                    }
                }
            })
        },
    )?;

    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("subscribe-instant", |mut store, (when,): (u64,)| {
        // The instant comes from the durable clock, so it is the same in a replay.
        Ok((deadline(store.data_mut(), when)?,))
    })?;
    clock.func_wrap("subscribe-duration", |mut store, (duration,): (u64,)| {
        let at = {
            let mut d = host::lock(store.data().durability());
            let value = d
                .host_call(SUBSCRIBE_DURATION, |d| {
                    Value::U64(d.monotonic_now(clock_ns()).saturating_add(duration))
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
    /// The token of its webhook, `POST /v1/webhooks/{token}`: whoever knows it may complete
    /// the promise, with no key (promises made before webhooks have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// What a webhook token names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WebhookTarget {
    pub tenant: String,
    pub component: String,
    pub worker: String,
    pub promise: String,
}

/// A webhook token: 32 random bytes in hex, unguessable.
pub(crate) fn new_webhook_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `token` has a webhook token's shape (checked before it reaches the store).
pub fn is_webhook_token(token: &str) -> bool {
    token.len() == 64
        && token
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

pub(crate) fn webhook_key(token: &str) -> Vec<u8> {
    pack(&("webhook", token))
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
