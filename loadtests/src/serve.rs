//! `serve`: tenants' traffic on the public listener. An ephemeral `wasi:http/incoming-handler`
//! (the `wstd` hello server, a fresh instance per request) at 32 clients, beside the limit of
//! this machine measured in the same run: a plain hyper server answering the same bytes, and
//! plain wasmtime serving the same component the way `wasmtime serve` does (hyper, a fresh
//! pooled instance per request, nothing else), which is what the model itself costs. And a
//! worker's function behind a route, one call after the other, beside the same durable call
//! over the API.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use invicta_tests::Server;
use serde_json::json;

use crate::invoke::{Guests, Load, duration, load_lean, server_binary};
use crate::lean::Template;
use crate::stats::Summary;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server binary [default: $CARGO_TARGET_DIR/release/invicta, else target/release/invicta]
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The directory of the guest components [default: tests/components/wasm]
    #[arg(long)]
    components: Option<PathBuf>,
    /// How long each load runs, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Sequential calls for the latency comparison.
    #[arg(long, default_value_t = 2_000)]
    calls: usize,
}

/// Clients of the throughput loads.
const CLIENTS: usize = 32;

/// What the hello handler answers, and the plain server too.
const HELLO: &str = "hello bench from /hello";

pub fn run(args: &Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(measure(args))
}

async fn measure(args: &Args) -> anyhow::Result<()> {
    let binary = server_binary(args.server_bin.as_deref())?;
    let guests = Guests::at(args.components.as_deref());
    let (hello, counter) = (guests.read("http_hello")?, guests.read("counter")?);
    let root = tempfile::tempdir_in(".")?;
    let server = Server::start_with(
        &binary,
        &root.path().join("data"),
        &["--public-listen", "127.0.0.1:0"],
    )?;
    let public = server
        .public_url
        .clone()
        .context("the server serves no public listener")?;
    let api = server.operator().new_tenant("bench", "unlimited").await?;
    let key = api.key.clone().context("the tenant's key")?;
    for (name, wasm) in [("hello", &hello), ("counter", &counter)] {
        let up = api.upload(name, wasm.clone()).await?;
        if up.status != 201 {
            bail!("upload {name}: {up:?}");
        }
    }
    // Uploads run at once on the baseline tier and are optimized in the background: the loads
    // measure the optimized code (plain wasmtime's is Cranelift's too), without that compile
    // beside them.
    for name in ["hello", "counter"] {
        let started = Instant::now();
        while api.get(&format!("/v1/components/{name}")).await?.body["code"] == "baseline" {
            if started.elapsed() > Duration::from_secs(300) {
                bail!("{name} was not optimized within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let made = api
        .post_json(
            "/v1/routes/hello",
            &json!({ "path": "/hello", "methods": ["GET"],
                     "target": { "kind": "handler", "component": "hello" } }),
            None,
        )
        .await?;
    let hello_url = format!(
        "{public}{}?name=bench",
        made.body["url_path"].as_str().unwrap_or_default()
    );
    let made = api
        .post_json(
            "/v1/routes/add",
            &json!({ "path": "/add", "methods": ["POST"],
                     "target": { "kind": "function", "component": "counter", "function": "add",
                                 "worker": { "from": "value", "value": "seq" },
                                 "params": [{ "from": "value", "value": 1 }] } }),
            None,
        )
        .await?;
    let add_url = format!(
        "{public}{}",
        made.body["url_path"].as_str().unwrap_or_default()
    );
    let made = api
        .post_json(
            "/v1/routes/durable",
            &json!({ "path": "/d/{user}/{*rest}",
                     "target": { "kind": "handler", "component": "hello",
                                 "worker": { "from": "path", "name": "user" } } }),
            None,
        )
        .await?;
    let durable_url = format!(
        "{public}{}",
        made.body["url_path"]
            .as_str()
            .unwrap_or_default()
            .replace("{user}", "seq")
            .replace("{*rest}", "visits")
    );
    let http = reqwest::Client::builder().no_proxy().build()?;
    let time = Duration::from_secs(args.seconds.max(1));

    // The limit: plain hyper answering the same bytes, on its own runtime; and plain wasmtime
    // serving the component.
    let plain = plain_hyper()?;
    let wasmtime_url = plain_wasmtime(&hello)?;
    // The loads through the lean client (`lean.rs`), as the invoke scenario's.
    let get = |url: &str| -> anyhow::Result<_> { Ok(Arc::new(vec![Template::get(url)?])) };
    let (hello_get, wasmtime_get, plain_get) =
        (get(&hello_url)?, get(&wasmtime_url)?, get(&plain)?);
    let expect = Some(HELLO);
    // Warm both: the handler's first request compiles nothing but prepares the instance.
    load_lean(hello_get.clone(), expect, 1, 50, time).await?;
    load_lean(wasmtime_get.clone(), expect, 1, 50, time).await?;
    let plain_load = load_lean(plain_get, expect, CLIENTS, usize::MAX, time).await?;
    let wasmtime_load = load_lean(wasmtime_get, expect, CLIENTS, usize::MAX, time).await?;
    let handler_load = load_lean(hello_get, expect, CLIENTS, usize::MAX, time).await?;
    check("plain hyper", &plain_load)?;
    check("plain wasmtime", &wasmtime_load)?;
    check("ephemeral handler", &handler_load)?;

    // A durable call: through a route, and through the API.
    let invoke_url = format!("{}/v1/components/counter/workers/seq/invoke", server.url);
    let mut expected = 0_i64;
    let mut route_samples = Vec::with_capacity(args.calls);
    let mut api_samples = Vec::with_capacity(args.calls);
    let mut durable_samples = Vec::with_capacity(args.calls);
    let start = Instant::now();
    for i in 0..args.calls.max(1) * 2 {
        // A durable handler's request between each pair: `visit N`, its memory counting up.
        let t = Instant::now();
        let visit = http.get(&durable_url).send().await?.text().await?;
        durable_samples.push(t.elapsed());
        if visit != format!("visit {}", i + 1) {
            bail!(
                "the durable handler answered {visit:?} at request {}",
                i + 1
            );
        }
        let t = Instant::now();
        let value: serde_json::Value = if i % 2 == 0 {
            http.post(&add_url).send().await?.json().await?
        } else {
            let reply: serde_json::Value = http
                .post(&invoke_url)
                .bearer_auth(&key)
                .json(&json!({ "function": "add", "params": [1] }))
                .send()
                .await?
                .json()
                .await?;
            reply["result"].clone()
        };
        let took = t.elapsed();
        expected += 1;
        if value.as_i64() != Some(expected) {
            bail!("add(1) answered {value}, not {expected}");
        }
        if i % 2 == 0 {
            route_samples.push(took);
        } else {
            api_samples.push(took);
        }
    }
    let total = start.elapsed() / 4;
    let route = Summary::of(&mut route_samples, total);
    let invoke = Summary::of(&mut api_samples, total);
    let durable = Summary::of(&mut durable_samples, total * 2);
    let durable_handler_ratio =
        durable.median.as_secs_f64() / invoke.median.as_secs_f64().max(1e-12);

    let handler_share = handler_load.summary.per_second / plain_load.summary.per_second.max(1e-9);
    let wasmtime_share = wasmtime_load.summary.per_second / plain_load.summary.per_second.max(1e-9);
    let handler_of_wasmtime =
        handler_load.summary.per_second / wasmtime_load.summary.per_second.max(1e-9);
    let durable_ratio = route.median.as_secs_f64() / invoke.median.as_secs_f64().max(1e-12);
    println!(
        "serve bench: the public listener, {CLIENTS} clients, {}s per load",
        time.as_secs()
    );
    println!(
        "{:<52} {:>10} {:>10} {:>12} {:>10} {:>14}",
        "measurement", "p50", "p99", "per second", "ratio", "target"
    );
    let row = |name: &str, s: &Summary, ratio: String, target: String| {
        println!(
            "{name:<52} {:>10} {:>10} {:>12.0} {ratio:>10} {target:>14}",
            duration(s.median),
            duration(s.p99),
            s.per_second
        );
    };
    row(
        "plain hyper, same bytes (the limit)",
        &plain_load.summary,
        String::new(),
        String::new(),
    );
    row(
        "plain wasmtime serving it, instance per request",
        &wasmtime_load.summary,
        format!("{wasmtime_share:.2}×"),
        "(the model)".to_string(),
    );
    row(
        "ephemeral wstd handler, fresh instance per request",
        &handler_load.summary,
        format!("{:.2}×", handler_share),
        format!(
            "≥ 0.50 {}",
            if handler_share >= 0.5 { "ok" } else { "MISSED" }
        ),
    );
    row(
        "durable add(1) over the API (the reference)",
        &invoke,
        String::new(),
        String::new(),
    );
    row(
        "durable add(1) through a function route",
        &route,
        format!("{:.2}×", durable_ratio),
        format!(
            "≤ 1.10 {}",
            if durable_ratio <= 1.10 {
                "ok"
            } else {
                "MISSED"
            }
        ),
    );
    row(
        "durable wstd handler (a worker's recorded request)",
        &durable,
        format!("{durable_handler_ratio:.2}×"),
        format!(
            "≤ 1.10 {}",
            if durable_handler_ratio <= 1.10 {
                "ok"
            } else {
                "MISSED"
            }
        ),
    );
    println!(
        "the ephemeral handler serves {:.2}× what plain wasmtime serves of the same component \
         (both fresh pooled instances; Invicta adds routing, the plan's limits and metering)",
        handler_of_wasmtime
    );
    Ok(())
}

fn check(what: &str, load: &Load) -> anyhow::Result<()> {
    if load.errors > 0 {
        bail!(
            "{what}: {} errors of {} ({})",
            load.errors,
            load.errors + load.summary_count,
            load.first_error.clone().unwrap_or_default()
        );
    }
    Ok(())
}

/// Serves HTTP/1.1 on a loopback port, answering every request with `answer`, on a runtime of
/// its own with as many threads as the server's; the port's address.
fn serve_plain<F, Fut, B, E>(answer: F) -> anyhow::Result<std::net::SocketAddr>
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<hyper::Response<B>, E>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper::service::service_fn(answer),
                        )
                        .await;
                });
            }
        });
    });
    Ok(address)
}

/// A plain hyper HTTP/1.1 server answering [`HELLO`]; its URL.
fn plain_hyper() -> anyhow::Result<String> {
    let address = serve_plain(|_request| async {
        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
            bytes::Bytes::from_static(HELLO.as_bytes()),
        )))
    })?;
    Ok(format!("http://{address}/hello"))
}

/// The data of a request's store under plain wasmtime.
struct Plain {
    wasi: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
}

impl wasmtime_wasi::WasiView for Plain {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for Plain {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

/// Plain wasmtime serving `component` as `wasmtime serve` does: hyper, and per request a fresh
/// instance of the pooled engine Invicta runs (its default configuration), with WASI and
/// `wasi:http`, on a runtime of its own with as many threads as the server's; its URL.
fn plain_wasmtime(component: &[u8]) -> anyhow::Result<String> {
    use wasmtime_wasi_http::WasiHttpView;
    use wasmtime_wasi_http::p2::bindings::ProxyPre;
    use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

    let engine = invicta_engine::Engine::new(&invicta_engine::Config::default())?.engine;
    let component = wasmtime::component::Component::new(&engine, component)?;
    let mut linker = wasmtime::component::Linker::<Plain>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
    let address = serve_plain(move |request: hyper::Request<hyper::body::Incoming>| {
        let pre = pre.clone();
        async move {
            let mut store = wasmtime::Store::new(
                pre.engine(),
                Plain {
                    wasi: wasmtime_wasi::WasiCtx::builder().build(),
                    table: wasmtime::component::ResourceTable::new(),
                    http: wasmtime_wasi_http::WasiHttpCtx::new(),
                },
            );
            store.set_fuel(u64::MAX)?;
            let (sender, receiver) = tokio::sync::oneshot::channel();
            // As `wasmtime serve` does: the request's URI made absolute.
            let (mut parts, body) = request.into_parts();
            parts.uri = hyper::Uri::builder()
                .scheme("http")
                .authority("127.0.0.1")
                .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
                .build()?;
            let body = body
                .map_err(|e: hyper::Error| {
                    wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
                })
                .boxed_unsync();
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, hyper::Request::from_parts(parts, body))?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            let run = tokio::spawn(async move {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            });
            match receiver.await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(code)) => Err(anyhow::anyhow!("the handler failed: {code:?}")),
                Err(_) => Err(match run.await {
                    Ok(Err(e)) => anyhow::anyhow!("the handler failed: {e:#}"),
                    _ => anyhow::anyhow!("the handler answered nothing"),
                }),
            }
        }
    })?;
    Ok(format!("http://{address}/hello?name=bench"))
}
