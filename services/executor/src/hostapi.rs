//! The Invicta host interface (`shared/wit/host.wit`, `invicta:host/api@0.1.0`): durable
//! idempotency keys, and invocations of other workers accepted exactly once.

use std::sync::Arc;

use futures::future::BoxFuture;
use invicta_model::oplog::OplogEntry;
use invicta_model::{ComponentName, Value, WorkerId, WorkerName};
use wasmtime::component::Linker;

use crate::durability::{Shared, lock};
use crate::limits::Limits;
use crate::suspend::{PromiseRecord, WaitsView, Wake};

/// What the Invicta host interface needs of the executor: calls to other workers, and the
/// worker's promises. The executor implements it; this binding never sees the executor.
pub(crate) trait Workers: Send + Sync {
    /// Runs `function` on `target` under `key` (exactly once), waiting for its result as JSON.
    fn invoke(&self, call: Call, function: String) -> BoxFuture<'static, Result<String, String>>;
    /// Accepts `function` on `target` under `key` (exactly once), to run at `at` (ms) or now;
    /// the key it was accepted under.
    fn enqueue(
        &self,
        call: Call,
        function: String,
        at: Option<u64>,
    ) -> BoxFuture<'static, Result<String, String>>;
    /// Makes the worker's promise `id` unless it exists.
    fn create_promise(
        &self,
        worker: WorkerId,
        id: String,
    ) -> BoxFuture<'static, Result<(), String>>;
    /// The worker's promise `id`, if it exists.
    fn read_promise(
        &self,
        worker: WorkerId,
        id: String,
    ) -> BoxFuture<'static, Result<Option<PromiseRecord>, String>>;
    /// The configuration the worker sees now, secrets without their values.
    fn config(
        &self,
        worker: WorkerId,
    ) -> BoxFuture<'static, Result<Vec<(String, crate::settings::Seen)>, String>>;
    /// The value of the worker's secret `key` now, with its keyed digest, if it has one.
    fn reveal(
        &self,
        worker: WorkerId,
        key: String,
    ) -> BoxFuture<'static, Result<Option<(String, String)>, String>>;
}

/// What the Invicta host interface needs of a worker's store data.
pub(crate) trait HostApiView: WaitsView {
    fn host_api(&self) -> Option<&HostApi>;
}

const GENERATE_KEY: &str = "invicta:host/api.generate-idempotency-key";
const ENQUEUE: &str = "invicta:host/api.enqueue";
const INVOKE: &str = "invicta:host/api.invoke";
const CREATE_PROMISE: &str = "invicta:host/api.create-promise";
const AWAIT_PROMISE: &str = "invicta:host/api.await-promise";

/// What a worker's host calls need of the executor.
#[derive(Clone)]
pub(crate) struct HostApi {
    pub workers: Arc<dyn Workers>,
    pub worker: WorkerId,
    /// The worker's incarnation, for the keys of what it does.
    pub incarnation: String,
    /// The limits of the worker's current invocation, for the invocations it makes.
    pub limits: std::sync::Arc<std::sync::Mutex<Limits>>,
}

pub(crate) fn add_to_linker<T: HostApiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    let mut api = linker.instance("invicta:host/api@0.1.0")?;
    api.func_wrap("generate-idempotency-key", |store, (): ()| {
        let data = store.data();
        let mut d = lock(data.durability());
        if let Some(recorded) = d.replayed(GENERATE_KEY).map_err(wasmtime::Error::msg)? {
            return match recorded {
                Value::String(key) => Ok((key,)),
                _ => Err(wasmtime::Error::msg("a recorded key is not a string")),
            };
        }
        let bytes: [u8; 16] = rand::random();
        let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        d.record(GENERATE_KEY, Value::String(key.clone()));
        Ok((key,))
    })?;
    api.func_wrap_async(
        "enqueue",
        |store,
         (component, worker, function, params, delay_ms): (String, String, String, String, u64)| {
            let data = store.data();
            let (durability, host) = (data.durability().clone(), data.host_api().cloned());
            Box::new(durable_call(durability, ENQUEUE, async move |index| {
                let host = host.ok_or(UNAVAILABLE)?;
                enqueue(&host, index, &component, &worker, &function, &params, delay_ms).await
            }))
        },
    )?;
    api.func_wrap_async(
        "invoke",
        |store, (component, worker, function, params): (String, String, String, String)| {
            let data = store.data();
            let (durability, host) = (data.durability().clone(), data.host_api().cloned());
            Box::new(durable_call(durability, INVOKE, async move |index| {
                let host = host.ok_or(UNAVAILABLE)?;
                invoke(&host, index, &component, &worker, &function, &params).await
            }))
        },
    )?;
    api.func_wrap_async("create-promise", |store, (): ()| {
        let data = store.data();
        let (durability, host) = (data.durability().clone(), data.host_api().cloned());
        Box::new(async move {
            let replayed = lock(&durability)
                .replayed(CREATE_PROMISE)
                .map_err(wasmtime::Error::msg)?;
            if let Some(recorded) = replayed {
                return match recorded {
                    Value::String(id) => Ok((id,)),
                    _ => Err(wasmtime::Error::msg(
                        "a recorded promise id is not a string",
                    )),
                };
            }
            let host = host.ok_or_else(|| wasmtime::Error::msg(UNAVAILABLE))?;
            // The id comes from the call's place in the oplog: a re-execution after a crash
            // makes the same promise, not a second one.
            let index = lock(&durability).next_index();
            let id = crate::durability::key_at(&host.worker, &host.incarnation, index);
            create_promise(&host, &id)
                .await
                .map_err(|e| wasmtime::Error::msg(format!("create a promise: {e}")))?;
            lock(&durability).record(CREATE_PROMISE, Value::String(id.clone()));
            Ok((id,))
        })
    })?;
    api.func_wrap_async("await-promise", |store, (id,): (String,)| {
        let data = store.data();
        let (durability, host, waits) = (
            data.durability().clone(),
            data.host_api().cloned(),
            data.waits().clone(),
        );
        Box::new(durable_call(durability, AWAIT_PROMISE, async move |_| {
            let host = host.ok_or(UNAVAILABLE)?;
            loop {
                match read_promise(&host, &id).await? {
                    None => return Err(format!("this worker has no promise `{id}`")),
                    Some(PromiseRecord {
                        completed: Some(data),
                        ..
                    }) => return Ok(data.to_string()),
                    // The worker is suspended here and rebuilt once the promise is completed.
                    Some(_) => waits.suspend(Wake::Promise(id.clone())).await,
                }
            }
        }))
    })?;
    api.func_wrap("begin-atomic-region", |store, (): ()| {
        let index = lock(store.data().durability())
            .marker(OplogEntry::BeginAtomicRegion)
            .map_err(wasmtime::Error::msg)?;
        Ok((index,))
    })?;
    api.func_wrap("end-atomic-region", |store, (begin,): (u64,)| {
        crate::support::failpoint("INVICTA_FAILPOINT_ATOMIC_END");
        lock(store.data().durability())
            .marker(OplogEntry::EndAtomicRegion { begin })
            .map_err(wasmtime::Error::msg)?;
        Ok(())
    })?;
    Ok(())
}

const UNAVAILABLE: &str = "the Invicta host interface is not available here";

/// A host call whose live work is asynchronous and returns `result<string, string>`: the
/// recorded outcome in replay; live, `work` runs with the call's oplog index (for its key; the
/// guest waits, so nothing else is recorded meanwhile) and its outcome is recorded.
async fn durable_call(
    durability: Shared,
    name: &'static str,
    work: impl AsyncFnOnce(u64) -> Result<String, String>,
) -> wasmtime::Result<(Result<String, String>,)> {
    let replayed = lock(&durability)
        .replayed(name)
        .map_err(wasmtime::Error::msg)?;
    let response = match replayed {
        Some(recorded) => recorded,
        None => {
            let index = lock(&durability).next_index();
            let response = match work(index).await {
                Ok(s) => Value::Result(Ok(Some(Box::new(Value::String(s))))),
                Err(e) => Value::Result(Err(Some(Box::new(Value::String(e))))),
            };
            lock(&durability).record(name, response.clone());
            response
        }
    };
    let text = |v: Box<Value>| match *v {
        Value::String(s) => Ok(s),
        _ => Err(wasmtime::Error::msg(format!(
            "a recorded {name} is not a string"
        ))),
    };
    match response {
        Value::Result(Ok(Some(ok))) => Ok((Ok(text(ok)?),)),
        Value::Result(Err(Some(err))) => Ok((Err(text(err)?),)),
        _ => Err(wasmtime::Error::msg(format!(
            "an unreadable recorded {name}"
        ))),
    }
}

/// A call to another worker: the callee, the parameters, the limits of the caller's
/// invocation, and the call's key (from its place in the caller's oplog).
pub(crate) struct Call {
    pub target: WorkerId,
    pub params: Vec<serde_json::Value>,
    pub limits: Limits,
    pub key: String,
}

impl Call {
    fn new(
        host: &HostApi,
        index: u64,
        component: &str,
        worker: &str,
        params: &str,
    ) -> Result<Call, String> {
        Ok(Call {
            target: target(host, component, worker)?,
            params: serde_json::from_str(params)
                .map_err(|e| format!("params-json is not a JSON array: {e}"))?,
            limits: host
                .limits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            key: crate::durability::key_at(&host.worker, &host.incarnation, index),
        })
    }
}

/// The worker a call names, in the caller's tenant.
fn target(host: &HostApi, component: &str, worker: &str) -> Result<WorkerId, String> {
    Ok(WorkerId {
        tenant: host.worker.tenant.clone(),
        component: ComponentName::new(component.to_string()).map_err(|e| e.to_string())?,
        worker: WorkerName::new(worker.to_string()).map_err(|e| e.to_string())?,
    })
}

async fn invoke(
    host: &HostApi,
    index: u64,
    component: &str,
    worker: &str,
    function: &str,
    params: &str,
) -> Result<String, String> {
    let call = Call::new(host, index, component, worker, params)?;
    if call.target == host.worker {
        return Err("a worker cannot invoke itself: it runs one invocation at a time".into());
    }
    // The same key after a crash finds the callee's recorded outcome: it never runs twice.
    let result = host.workers.invoke(call, function.to_string()).await?;
    crate::support::failpoint("INVICTA_FAILPOINT_HOST_INVOKED");
    Ok(result)
}

async fn enqueue(
    host: &HostApi,
    index: u64,
    component: &str,
    worker: &str,
    function: &str,
    params: &str,
    delay_ms: u64,
) -> Result<String, String> {
    let call = Call::new(host, index, component, worker, params)?;
    let at = (delay_ms > 0).then(|| crate::support::now_ms().saturating_add(delay_ms));
    let accepted = host.workers.enqueue(call, function.to_string(), at).await;
    crate::support::failpoint("INVICTA_FAILPOINT_HOST_ENQUEUED");
    accepted
}

/// Makes the promise `id` of the worker, unless it exists (a re-execution makes it again).
async fn create_promise(host: &HostApi, id: &str) -> Result<(), String> {
    host.workers
        .create_promise(host.worker.clone(), id.to_string())
        .await
}

async fn read_promise(host: &HostApi, id: &str) -> Result<Option<PromiseRecord>, String> {
    host.workers
        .read_promise(host.worker.clone(), id.to_string())
        .await
}
