//! `wasi:config/store` (the WASI config interface, as Spin, wasmCloud and wasmtime's own
//! `wasmtime-wasi-config` serve it), durable: a worker reads the configuration its component and
//! it were given over the API (`settings.rs`). Each read is a host call recorded in the oplog,
//! so replay gives the guest what it read then, whatever was set since; a secret is recorded as
//! a reference and replay resolves it again, so its value never reaches the oplog (a secret
//! changed or removed since is a new input there, not a divergence).

use invicta_model::Value;
use wasmtime::component::{ComponentType, Lift, Linker, Lower};

use crate::durability::lock;
use crate::hostapi::HostApiView;
use crate::settings::Seen;

/// The versions of the interface components import.
const VERSIONS: [&str; 2] = ["0.2.0-draft", "0.2.0-draft-2024-09-27"];

const GET: &str = "wasi:config/store.get";
const GET_ALL: &str = "wasi:config/store.get-all";

/// `wasi:config/store.error`.
#[derive(ComponentType, Lift, Lower, Clone, Debug)]
#[component(variant)]
pub(crate) enum ConfigError {
    #[component(name = "upstream")]
    Upstream(String),
    #[component(name = "io")]
    Io(String),
}

/// An entry as the oplog keeps it: a value, or a reference to a secret.
fn recorded(seen: &Seen) -> Value {
    match seen {
        Seen::Value(v) => Value::Variant("value".into(), Some(Box::new(Value::String(v.clone())))),
        Seen::Secret(digest) => Value::Variant(
            "secret".into(),
            Some(Box::new(Value::String(digest.clone()))),
        ),
    }
}

fn unreadable(name: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!("an unreadable recorded {name}"))
}

/// A read of the configuration: as recorded, in replay; live, what the worker sees now, shaped
/// by `shape` and recorded (a failure to read, too, as the call's error).
async fn read(
    durability: &crate::durability::Shared,
    host: &crate::hostapi::HostApi,
    name: &str,
    shape: impl FnOnce(&[(String, Seen)]) -> Value,
) -> wasmtime::Result<Value> {
    let replayed = lock(durability)
        .replayed(name)
        .map_err(wasmtime::Error::msg)?;
    if let Some(recorded) = replayed {
        return Ok(recorded);
    }
    let response = match host.workers.config(host.worker.clone()).await {
        Ok(seen) => Value::Result(Ok(Some(Box::new(shape(&seen))))),
        Err(e) => Value::Result(Err(Some(Box::new(Value::String(e))))),
    };
    lock(durability).record(name, response.clone());
    Ok(response)
}

pub(crate) fn add_to_linker<T: HostApiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    for version in VERSIONS {
        let mut store = linker.instance(&format!("wasi:config/store@{version}"))?;
        store.func_wrap_async("get", |store, (key,): (String,)| {
            let data = store.data();
            let (durability, host) = (data.durability().clone(), data.host_api().cloned());
            Box::new(async move {
                let host = host.ok_or_else(|| wasmtime::Error::msg("no configuration here"))?;
                let response = read(&durability, &host, GET, |seen| {
                    Value::Option(
                        seen.iter()
                            .find(|(k, _)| *k == key)
                            .map(|(_, s)| Box::new(recorded(s))),
                    )
                })
                .await?;
                let answer = match response {
                    Value::Result(Ok(Some(found))) => match *found {
                        Value::Option(None) => Ok(None),
                        Value::Option(Some(entry)) => match *entry {
                            Value::Variant(case, Some(v)) if case == "value" => match *v {
                                Value::String(s) => Ok(Some(s)),
                                _ => return Err(unreadable(GET)),
                            },
                            Value::Variant(case, Some(digest)) if case == "secret" => {
                                let Value::String(digest) = *digest else {
                                    return Err(unreadable(GET));
                                };
                                // Resolved again, live or in replay: never in the oplog.
                                match host.workers.reveal(host.worker.clone(), key.clone()).await {
                                    Ok(Some((now, value))) => {
                                        if now != digest {
                                            lock(&durability).inputs_changed = true;
                                        }
                                        Ok(Some(value))
                                    }
                                    Ok(None) => {
                                        lock(&durability).inputs_changed = true;
                                        Ok(None)
                                    }
                                    Err(e) => Err(ConfigError::Upstream(e)),
                                }
                            }
                            _ => return Err(unreadable(GET)),
                        },
                        _ => return Err(unreadable(GET)),
                    },
                    Value::Result(Err(Some(e))) => match *e {
                        Value::String(e) => Err(ConfigError::Io(e)),
                        _ => return Err(unreadable(GET)),
                    },
                    _ => return Err(unreadable(GET)),
                };
                Ok((answer,))
            })
        })?;
        store.func_wrap_async("get-all", |store, (): ()| {
            let data = store.data();
            let (durability, host) = (data.durability().clone(), data.host_api().cloned());
            Box::new(async move {
                let host = host.ok_or_else(|| wasmtime::Error::msg("no configuration here"))?;
                let response = read(&durability, &host, GET_ALL, |seen| {
                    Value::List(
                        seen.iter()
                            .map(|(k, s)| Value::Tuple(vec![Value::String(k.clone()), recorded(s)]))
                            .collect(),
                    )
                })
                .await?;
                let answer = match response {
                    Value::Result(Ok(Some(list))) => {
                        let Value::List(items) = *list else {
                            return Err(unreadable(GET_ALL));
                        };
                        let mut pairs = Vec::with_capacity(items.len());
                        for item in items {
                            let Value::Tuple(kv) = item else {
                                return Err(unreadable(GET_ALL));
                            };
                            match <[Value; 2]>::try_from(kv) {
                                Ok([Value::String(k), Value::Variant(case, Some(v))])
                                    if case == "value" =>
                                {
                                    let Value::String(v) = *v else {
                                        return Err(unreadable(GET_ALL));
                                    };
                                    pairs.push((k, v));
                                }
                                Ok([Value::String(k), Value::Variant(case, Some(digest))])
                                    if case == "secret" =>
                                {
                                    let Value::String(digest) = *digest else {
                                        return Err(unreadable(GET_ALL));
                                    };
                                    // A secret changed or removed since is a new input.
                                    match host.workers.reveal(host.worker.clone(), k.clone()).await
                                    {
                                        Ok(Some((now, v))) => {
                                            if now != digest {
                                                lock(&durability).inputs_changed = true;
                                            }
                                            pairs.push((k, v));
                                        }
                                        Ok(None) => lock(&durability).inputs_changed = true,
                                        Err(e) => {
                                            return Ok((Err(ConfigError::Upstream(e)),));
                                        }
                                    }
                                }
                                _ => return Err(unreadable(GET_ALL)),
                            }
                        }
                        Ok(pairs)
                    }
                    Value::Result(Err(Some(e))) => match *e {
                        Value::String(e) => Err(ConfigError::Io(e)),
                        _ => return Err(unreadable(GET_ALL)),
                    },
                    _ => return Err(unreadable(GET_ALL)),
                };
                Ok((answer,))
            })
        })?;
    }
    Ok(())
}
