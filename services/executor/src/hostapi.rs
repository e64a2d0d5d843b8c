//! The Invicta host interface (`shared/wit/host.wit`, `invicta:host/api@0.1.0`): durable
//! idempotency keys, and invocations of other workers accepted exactly once.

use std::sync::Weak;

use invicta_model::oplog::OplogEntry;
use invicta_model::{ComponentName, Value, WorkerId, WorkerName};
use wasmtime::component::Linker;

use crate::host::{WorkerCtx, lock};
use crate::suspend::{PromiseRecord, Wake, promise_key};
use crate::{Executor, Inner, Limits};

const GENERATE_KEY: &str = "invicta:host/api.generate-idempotency-key";
const ENQUEUE: &str = "invicta:host/api.enqueue";
const INVOKE: &str = "invicta:host/api.invoke";
const CREATE_PROMISE: &str = "invicta:host/api.create-promise";
const AWAIT_PROMISE: &str = "invicta:host/api.await-promise";

/// What a worker's host calls need of the executor.
#[derive(Clone)]
pub(crate) struct HostApi {
    pub inner: Weak<Inner>,
    pub worker: WorkerId,
    /// The worker's incarnation, for the keys of what it does.
    pub incarnation: String,
    /// The limits of the worker's current invocation, for the invocations it makes.
    pub limits: std::sync::Arc<std::sync::Mutex<Limits>>,
}

pub(crate) fn add_to_linker(linker: &mut Linker<WorkerCtx>) -> wasmtime::Result<()> {
    let mut api = linker.instance("invicta:host/api@0.1.0")?;
    api.func_wrap("generate-idempotency-key", |store, (): ()| {
        let data = store.data();
        let mut d = lock(&data.durability);
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
            let (durability, host) = (data.durability.clone(), data.host.clone());
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
            let (durability, host) = (data.durability.clone(), data.host.clone());
            Box::new(durable_call(durability, INVOKE, async move |index| {
                let host = host.ok_or(UNAVAILABLE)?;
                invoke(&host, index, &component, &worker, &function, &params).await
            }))
        },
    )?;
    api.func_wrap_async("create-promise", |store, (): ()| {
        let data = store.data();
        let (durability, host) = (data.durability.clone(), data.host.clone());
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
            let id = crate::call_key(&host.worker, &host.incarnation, index);
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
            data.durability.clone(),
            data.host.clone(),
            data.waits.clone(),
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
        let index = lock(&store.data().durability)
            .marker(OplogEntry::BeginAtomicRegion)
            .map_err(wasmtime::Error::msg)?;
        Ok((index,))
    })?;
    api.func_wrap("end-atomic-region", |store, (begin,): (u64,)| {
        crate::failpoint("INVICTA_FAILPOINT_ATOMIC_END");
        lock(&store.data().durability)
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
    durability: crate::host::Shared,
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

/// What a call to another worker needs: the executor, the callee, the parameters, the limits
/// of the caller's invocation, and the call's key (from its place in the caller's oplog).
struct Call {
    executor: Executor,
    target: WorkerId,
    params: Vec<serde_json::Value>,
    limits: Limits,
    key: String,
}

impl Call {
    fn new(
        host: &HostApi,
        index: u64,
        component: &str,
        worker: &str,
        params: &str,
    ) -> Result<Call, String> {
        let inner = host
            .inner
            .upgrade()
            .ok_or_else(|| "the executor is stopping".to_string())?;
        Ok(Call {
            executor: Executor { inner },
            target: target(host, component, worker)?,
            params: serde_json::from_str(params)
                .map_err(|e| format!("params-json is not a JSON array: {e}"))?,
            limits: host
                .limits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            key: crate::call_key(&host.worker, &host.incarnation, index),
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
    let completed = call
        .executor
        .invoke(
            &call.target,
            function,
            &call.params,
            Some(call.key),
            &call.limits,
        )
        .await
        .map_err(|e| e.to_string())?;
    crate::failpoint("INVICTA_FAILPOINT_HOST_INVOKED");
    Ok(completed.result.to_string())
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
    let at = (delay_ms > 0).then(|| crate::now_ms().saturating_add(delay_ms));
    let accepted = call
        .executor
        .enqueue(
            &call.target,
            function,
            &call.params,
            Some(call.key),
            at,
            &call.limits,
        )
        .await
        .map(|(key, _)| key)
        .map_err(|e| e.to_string());
    crate::failpoint("INVICTA_FAILPOINT_HOST_ENQUEUED");
    accepted
}

/// Makes the promise `id` of the worker, unless it exists (a re-execution makes it again).
async fn create_promise(host: &HostApi, id: &str) -> Result<(), String> {
    let inner = host
        .inner
        .upgrade()
        .ok_or_else(|| "the executor is stopping".to_string())?;
    let key = promise_key(&host.worker, id);
    let record = crate::records::encode_json(&PromiseRecord {
        created_at_ms: crate::now_ms(),
        completed: None,
        completed_at_ms: None,
    });
    inner
        .store
        .transact(move |tx| {
            if tx.get(&key)?.is_none() {
                tx.set(&key, &record)?;
            }
            Ok::<_, crate::Error>(())
        })
        .await
        .map_err(|e| e.to_string())
}

async fn read_promise(host: &HostApi, id: &str) -> Result<Option<PromiseRecord>, String> {
    let inner = host
        .inner
        .upgrade()
        .ok_or_else(|| "the executor is stopping".to_string())?;
    let key = promise_key(&host.worker, id);
    let bytes = inner
        .store
        .read(move |tx| tx.get(&key))
        .await
        .map_err(|e| e.to_string())?;
    bytes
        .map(|b| crate::records::decode_json::<PromiseRecord>("promise", &b))
        .transpose()
        .map_err(|e| e.to_string())
}
