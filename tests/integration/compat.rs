//! Compatibility, call by call: guests built in different ways — wit-bindgen exports of every
//! WIT type (`types`), a wit-bindgen guest with state (`counter`), and a plain Rust `std`
//! program, a command exporting `wasi:cli/run` (`hello-cli`), a guest importing WASI 0.2.0
//! through the `wasi` crate's 0.13 bindings (`wasi020`), a guest bound by wit-bindgen 0.34
//! (`types_old`) — answer through Invicta as they
//! answer under plain wasmtime (the same crate, its own WASI, no Invicta in between), print the
//! same, and answer on after a SIGKILL replays them. HTTP guests built with `wstd`, `waki` and
//! the raw `wasi` bindings (polling several requests at once) fetch from a loopback server under
//! both, with `wasi:http` as wasmtime-wasi-http provides it, and answer the same.

use invicta_engine::values::{json_to_value, val_to_value, value_to_val};
use invicta_tests::{Server, component};
use serde_json::{Value, json};
use wasmtime::component::{Component, Linker, ResourceTable, Val};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::INVICTA;

struct Plain {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Plain {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Calls `function` of `component` under plain wasmtime with WASI, in a fresh instance; its
/// result as the API shows results (one result's JSON, `null` for none), and what it wrote to
/// stdout.
fn plain_call(
    engine: &wasmtime::Engine,
    component: &Component,
    function: &str,
    params: &[Value],
) -> anyhow::Result<(Value, String)> {
    let engine = engine.clone();
    let mut linker = Linker::<Plain>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    let stdout = MemoryOutputPipe::new(1 << 20);
    let mut store = wasmtime::Store::new(
        &engine,
        Plain {
            wasi: WasiCtx::builder().stdout(stdout.clone()).build(),
            table: ResourceTable::new(),
        },
    );
    let instance = linker.instantiate(&mut store, component)?;
    let exports = invicta_engine::exports::exported_functions(&engine, component);
    let export = exports
        .iter()
        .find(|f| f.is_named(function))
        .ok_or_else(|| anyhow::anyhow!("{function} is not exported"))?;
    let instance_index = match &export.instance {
        Some(name) => Some(
            component
                .get_export_index(None, name)
                .ok_or_else(|| anyhow::anyhow!("no instance {name}"))?,
        ),
        None => None,
    };
    let index = component
        .get_export_index(instance_index.as_ref(), &export.function)
        .ok_or_else(|| anyhow::anyhow!("no function {function}"))?;
    let func = instance
        .get_func(&mut store, index)
        .ok_or_else(|| anyhow::anyhow!("{function} is not a function"))?;
    let args = params
        .iter()
        .zip(&export.params)
        .map(|(json, (name, ty))| json_to_value(name, json, ty).map(|v| value_to_val(&v)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = vec![Val::Bool(false); export.results.len()];
    func.call(&mut store, &args, &mut results)?;
    let values: Vec<Value> = results
        .iter()
        .map(|v| val_to_value(v).map(|v| v.to_json()))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow::anyhow!("a result that cannot leave"))?;
    let result = match values.as_slice() {
        [] => Value::Null,
        [one] => one.clone(),
        many => Value::Array(many.to_vec()),
    };
    Ok((
        result,
        String::from_utf8_lossy(&stdout.contents()).into_owned(),
    ))
}

/// [`plain_call`] on a blocking thread: plain WASI blocks on its own I/O.
async fn blocking(
    engine: &wasmtime::Engine,
    component: &Component,
    function: &str,
    params: Vec<Value>,
) -> anyhow::Result<(Value, String)> {
    let (engine, component, function) = (engine.clone(), component.clone(), function.to_string());
    tokio::task::spawn_blocking(move || plain_call(&engine, &component, &function, &params)).await?
}

/// The guests compared: wit-bindgen over Rust std, a std command, WASI 0.2.0 bindings, and an
/// older wit-bindgen (0.34).
const GUESTS: [&str; 5] = ["types", "counter", "hello_cli", "wasi020", "types_old"];

#[tokio::test]
async fn guests_answer_as_under_plain_wasmtime_and_again_after_a_kill() -> anyhow::Result<()> {
    let calls: Vec<(&str, &str, Value)> = vec![
        ("types", "echo-u8", json!([255])),
        ("types", "echo-s64", json!([-9_007_199_254_740_991_i64])),
        ("types", "echo-f64", json!([2.5])),
        ("types", "echo-char", json!(["é"])),
        ("types", "echo-string", json!(["héllo, wörld"])),
        ("types", "echo-list", json!([[1, 2, 3]])),
        ("types", "echo-tuple", json!([[7, "seven"]])),
        (
            "types",
            "echo-record",
            json!([{ "name": "Ada", "age": 36, "email": null, "tags": ["x"] }]),
        ),
        ("types", "echo-variant", json!([{ "circle": 1.5 }])),
        ("types", "echo-enum", json!(["green"])),
        ("types", "echo-option", json!([null])),
        ("types", "echo-result", json!([{ "err": "no" }])),
        ("types", "echo-flags", json!([["read", "exec"]])),
        ("types", "nothing", json!([])),
        ("counter", "add", json!([5])),
        ("hello_cli", "run", json!([])),
        ("wasi020", "shout", json!(["from WASI 0.2.0"])),
        ("wasi020", "env-count", json!([])),
        ("wasi020", "args", json!([])),
        (
            "types_old",
            "echo-record",
            json!([{ "name": "Grace", "age": 85, "email": "g@navy.mil", "tags": [] }]),
        ),
        ("types_old", "echo-variant", json!([{ "square": 2.0 }])),
        ("types_old", "echo-list", json!([[[1, 2], [], [3]]])),
        ("types_old", "echo-result", json!([{ "ok": "fine" }])),
        ("types_old", "echo-result", json!([{ "err": 7 }])),
        ("types_old", "add", json!([3])),
    ];
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = server.operator().new_tenant("compat", "pro").await?;
    for guest in GUESTS {
        assert_eq!(
            api.upload(guest, component(guest)).await?.status,
            201,
            "{guest}"
        );
    }
    // Each guest compiled once for plain wasmtime.
    let engine = wasmtime::Engine::default();
    let mut compiled = std::collections::HashMap::new();
    for guest in GUESTS {
        compiled.insert(guest, Component::new(&engine, component(guest))?);
    }
    // The 0.2.0 guest imports WASI 0.2.0 itself, not a later 0.2 release.
    let bytes = component("wasi020");
    let imports_020 = bytes
        .windows(b"wasi:cli/stdout@0.2.0".len())
        .any(|w| w == b"wasi:cli/stdout@0.2.0");
    assert!(imports_020, "wasi020 imports wasi:cli/stdout@0.2.0");
    // The command's `run`, by the name its WASI version gives it.
    let shown = api.get("/v1/components/hello_cli").await?;
    let run = shown.body["exports"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .filter_map(|f| f["name"].as_str())
                .find(|n| n.starts_with("wasi:cli/run@"))
        })
        .ok_or_else(|| anyhow::anyhow!("no wasi:cli/run export: {shown:?}"))?
        .to_string();
    for (guest, function, params) in &calls {
        let function = if *function == "run" {
            run.as_str()
        } else {
            function
        };
        let params_list = params.as_array().cloned().unwrap_or_default();
        let (expected, _) = blocking(&engine, &compiled[guest], function, params_list).await?;
        let got = api.call(guest, "w", function, params.clone()).await?;
        assert_eq!(
            got, expected,
            "{guest}.{function}{params}: Invicta against plain wasmtime"
        );
    }
    // The command's output is the same text, here a worker's log.
    let (_, printed) = blocking(&engine, &compiled["hello_cli"], &run, Vec::new()).await?;
    let logs = api.get("/v1/components/hello_cli/workers/w/logs").await?;
    let logged: String = logs.body["lines"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter(|l| l["stream"] == "stdout")
                .filter_map(|l| l["text"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(printed.starts_with("hello from a command"), "{printed}");
    assert_eq!(logged, printed, "{logs:?}");

    // The 0.2.0 guest's output, logged as plain wasmtime printed it.
    let (_, printed) = blocking(
        &engine,
        &compiled["wasi020"],
        "shout",
        vec![json!("from WASI 0.2.0")],
    )
    .await?;
    let logs = api.get("/v1/components/wasi020/workers/w/logs").await?;
    let logged: String = logs.body["lines"]
        .as_array()
        .map(|lines| lines.iter().filter_map(|l| l["text"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(printed, "from WASI 0.2.0\n");
    assert_eq!(logged, printed, "{logs:?}");

    // After SIGKILL the workers replay, and answer on as they did.
    server.kill()?;
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = api.at(&server.url);
    assert_eq!(api.call("counter", "w", "add", json!([1])).await?, json!(6));
    assert_eq!(
        api.call("types", "w", "echo-string", json!(["again"]))
            .await?,
        json!("again")
    );
    assert_eq!(
        api.call("wasi020", "w", "shout", json!(["again"])).await?,
        json!(5)
    );
    Ok(())
}

struct PlainHttp {
    wasi: WasiCtx,
    table: ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
}

impl WasiView for PlainHttp {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for PlainHttp {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

/// Calls `function` of an HTTP guest under plain wasmtime with WASI and `wasi:http`, in a
/// fresh instance; its result as the API shows results.
async fn plain_http_call(
    engine: &wasmtime::Engine,
    component: &Component,
    function: &str,
    params: &[Value],
) -> anyhow::Result<Value> {
    let mut linker = Linker::<PlainHttp>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let mut store = wasmtime::Store::new(
        engine,
        PlainHttp {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
        },
    );
    let instance = linker.instantiate_async(&mut store, component).await?;
    let exports = invicta_engine::exports::exported_functions(engine, component);
    let export = exports
        .iter()
        .find(|f| f.is_named(function))
        .ok_or_else(|| anyhow::anyhow!("{function} is not exported"))?;
    let index = component
        .get_export_index(None, &export.function)
        .ok_or_else(|| anyhow::anyhow!("no function {function}"))?;
    let func = instance
        .get_func(&mut store, index)
        .ok_or_else(|| anyhow::anyhow!("{function} is not a function"))?;
    let args = params
        .iter()
        .zip(&export.params)
        .map(|(json, (name, ty))| json_to_value(name, json, ty).map(|v| value_to_val(&v)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = vec![Val::Bool(false); export.results.len()];
    func.call_async(&mut store, &args, &mut results).await?;
    let value = results
        .first()
        .and_then(val_to_value)
        .ok_or_else(|| anyhow::anyhow!("no result"))?;
    Ok(value.to_json())
}

/// What the loopback server answers: the method, the path and the body, so that what a guest
/// sent shows in what it answers.
async fn echo(method: axum::http::Method, uri: axum::http::Uri, body: String) -> String {
    format!("{method} {} [{body}]", uri.path())
}

#[tokio::test]
async fn http_guests_answer_as_under_plain_wasmtime() -> anyhow::Result<()> {
    let app = axum::Router::new().fallback(echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (a, b) = (format!("{base}/a"), format!("{base}/b"));
    let calls: Vec<(&str, &str, Value)> = vec![
        ("fetcher", "fetch", json!([a])),
        ("fetcher", "post", json!([b, "from waki"])),
        ("fetcher", "fetch-each", json!([[a, b]])),
        ("wstd_fetcher", "fetch", json!([a])),
        (
            "wstd_fetcher",
            "post",
            json!([b, ["one ", "two ", "three"]]),
        ),
        ("wstd_fetcher", "fetch-both", json!([a, b])),
        ("raw_fetcher", "fetch-all", json!([[a, b, a]])),
        ("raw_fetcher", "post", json!([b, ["x", "y", "z"]])),
    ];
    let data = tempfile::tempdir()?;
    let configured = invicta_tests::Configured::new(
        INVICTA.as_ref(),
        data.path(),
        "[executor.http]\nallow_private_hosts = [\"127.0.0.1\"]\ntimeout_ms = 5000\n",
    )?;
    let server = configured.start()?;
    let api = server.operator().new_tenant("compat", "pro").await?;
    let engine = wasmtime::Engine::default();
    let mut compiled = std::collections::HashMap::new();
    for guest in ["fetcher", "wstd_fetcher", "raw_fetcher"] {
        assert_eq!(
            api.upload(guest, component(guest)).await?.status,
            201,
            "{guest}"
        );
        compiled.insert(guest, Component::new(&engine, component(guest))?);
    }
    for (guest, function, params) in &calls {
        let params_list = params.as_array().cloned().unwrap_or_default();
        let expected = plain_http_call(&engine, &compiled[guest], function, &params_list).await?;
        assert!(
            expected.to_string().contains("GET /a") || expected.to_string().contains("POST /b"),
            "{guest}.{function}: the plain host fetched {expected}"
        );
        let got = api.call(guest, "w", function, params.clone()).await?;
        assert_eq!(
            got, expected,
            "{guest}.{function}{params}: Invicta against plain wasmtime"
        );
    }
    // After SIGKILL, each replays its history (sending nothing again) and answers on the same.
    server.kill()?;
    let server = configured.start()?;
    let api = api.at(&server.url);
    for (guest, function, params) in calls.iter().step_by(2) {
        let params_list = params.as_array().cloned().unwrap_or_default();
        let expected = plain_http_call(&engine, &compiled[guest], function, &params_list).await?;
        let got = api.call(guest, "w", function, params.clone()).await?;
        assert_eq!(got, expected, "after SIGKILL {guest}.{function}{params}");
    }
    Ok(())
}
