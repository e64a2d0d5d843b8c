//! Public routes on the public listener: `wasi:http/incoming-handler` components built with
//! `wstd`'s server and with the raw `wasi` bindings, served ephemerally; a worker's function
//! behind a URL, which replays after SIGKILL; and each refusal as a problem.

use invicta_tests::{Api, Server, component, eventually};
use serde_json::{Value, json};

use crate::INVICTA;

/// A public request's answer: status, headers and body text.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
    let response = request.send().await?;
    Ok(Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await?,
    })
}

async fn route(api: &Api, name: &str, spec: Value) -> anyhow::Result<String> {
    let made = api
        .post_json(&format!("/v1/routes/{name}"), &spec, None)
        .await?;
    anyhow::ensure!(made.status == 201, "create route {name}: {made:?}");
    Ok(made.body["url_path"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn start(dir: &std::path::Path) -> anyhow::Result<(Server, String)> {
    let server = Server::start_with(INVICTA.as_ref(), dir, &["--public-listen", "127.0.0.1:0"])?;
    let public = server
        .public_url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the server did not say where public routes are"))?;
    Ok((server, public))
}

#[tokio::test]
async fn handler_components_serve_behind_urls_and_refusals_are_problems() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (server, public) = start(data.path())?;
    let operator = server.operator();
    let api = operator.new_tenant("web", "pro").await?;
    let other = operator.new_tenant("rival", "pro").await?;
    assert_eq!(
        api.upload("hello", component("http_hello")).await?.status,
        201
    );
    assert_eq!(
        api.upload("raw", component("raw_handler")).await?.status,
        201
    );
    assert_eq!(
        api.upload("counter", component("counter")).await?.status,
        201
    );
    let http = reqwest::Client::new();

    // wstd's server, through the tenant's prefix; it sees the path below the prefix.
    let hello = route(
        &api,
        "hello",
        json!({ "path": "/hello", "methods": ["GET"],
                "target": { "kind": "handler", "component": "hello" },
                "cors": { "origins": ["https://app.example"] } }),
    )
    .await?;
    let prefix = hello.trim_end_matches("/hello").to_string();
    assert!(prefix.starts_with('/') && prefix.len() > 1, "{hello}");
    let answer = send(
        http.get(format!("{public}{hello}?name=ann"))
            .header("origin", "https://app.example"),
    )
    .await?;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.text, "hello ann from /hello");
    assert_eq!(answer.header("x-served-by"), "wstd");
    assert_eq!(
        answer.header("access-control-allow-origin"),
        "https://app.example"
    );
    let preflight = send(
        http.request(reqwest::Method::OPTIONS, format!("{public}{hello}"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "GET"),
    )
    .await?;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-methods"), "GET");
    let stranger = send(
        http.get(format!("{public}{hello}"))
            .header("origin", "https://evil.example"),
    )
    .await?;
    assert_eq!(stranger.header("access-control-allow-origin"), "");

    // The body goes in and comes back, with its content type.
    let echo = route(
        &api,
        "echo",
        json!({ "path": "/echo", "methods": ["POST"], "body_bytes_max": 64,
                "target": { "kind": "handler", "component": "hello" } }),
    )
    .await?;
    let answer = send(
        http.post(format!("{public}{echo}"))
            .header("content-type", "text/plain")
            .body("ping"),
    )
    .await?;
    assert_eq!((answer.status, answer.text.as_str()), (200, "ping"));
    assert_eq!(answer.header("content-type"), "text/plain");

    // Raw bindings, a rest-of-path pattern, and a claimed host.
    let raw = route(
        &api,
        "raw",
        json!({ "path": "/raw/{*rest}", "target": { "kind": "handler", "component": "raw" } }),
    )
    .await?;
    let answer = send(
        http.put(format!("{public}{}", raw.replace("{*rest}", "a/b?x=1")))
            .body("zz"),
    )
    .await?;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.text, "raw PUT /raw/a/b?x=1 zz");
    assert_eq!(answer.header("x-served-by"), "raw");
    let hosted = route(
        &api,
        "hosted",
        json!({ "host": "API.Example.test", "path": "/",
                "target": { "kind": "handler", "component": "raw" } }),
    )
    .await?;
    assert_eq!(hosted, "http://api.example.test/");
    let answer = send(
        http.get(format!("{public}/"))
            .header("host", "api.example.test:80"),
    )
    .await?;
    assert_eq!((answer.status, answer.text.as_str()), (200, "raw GET / "));
    let taken = other
        .post_json(
            "/v1/routes/mine",
            &json!({ "host": "api.example.test", "path": "/x",
                     "target": { "kind": "handler", "component": "raw" } }),
            None,
        )
        .await?;
    assert_eq!(
        (taken.status, taken.code()),
        (409, "host_taken"),
        "{taken:?}"
    );

    // Refusals, each a problem.
    let problem = |a: &Answer| {
        a.header("content-type")
            .starts_with("application/problem+json")
    };
    let answer = send(http.get(format!("{public}{prefix}/nowhere"))).await?;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (404, "route_not_found")
    );
    assert!(problem(&answer));
    let answer = send(http.get(format!("{public}/nobody/hello"))).await?;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (404, "route_not_found")
    );
    let answer = send(http.get(format!("{public}{echo}"))).await?;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (405, "method_not_allowed")
    );
    assert_eq!(answer.header("allow"), "POST");
    assert!(problem(&answer));
    let answer = send(http.post(format!("{public}{echo}")).body(vec![b'x'; 100])).await?;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (413, "payload_too_large")
    );
    assert!(problem(&answer));

    let secret = "0123456789abcdef-route-secret";
    let hook = route(
        &api,
        "hook",
        json!({ "path": "/hook", "auth": { "kind": "secret", "header": "X-Hook", "secret": secret },
                "target": { "kind": "handler", "component": "raw" } }),
    )
    .await?;
    let read = api.get("/v1/routes/hook").await?;
    assert!(
        !read.body.to_string().contains(secret),
        "the secret is never shown: {read:?}"
    );
    let answer = send(http.get(format!("{public}{hook}"))).await?;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (401, "unauthorized")
    );
    let answer = send(
        http.get(format!("{public}{hook}"))
            .header("x-hook", "wrong"),
    )
    .await?;
    assert_eq!(answer.status, 401);
    let answer = send(http.get(format!("{public}{hook}")).header("x-hook", secret)).await?;
    assert_eq!(answer.status, 200, "{}", answer.text);

    let keyed = route(
        &api,
        "keyed",
        json!({ "path": "/keyed", "auth": { "kind": "key" },
                "target": { "kind": "handler", "component": "raw" } }),
    )
    .await?;
    let answer = send(http.get(format!("{public}{keyed}"))).await?;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (401, "unauthorized")
    );
    assert_eq!(answer.header("www-authenticate"), "Bearer");
    let own = api.key.clone().unwrap_or_default();
    let answer = send(http.get(format!("{public}{keyed}")).bearer_auth(&own)).await?;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let base_headers = route(
        &api,
        "open",
        json!({ "path": "/open/{*rest}", "target": { "kind": "handler", "component": "hello" } }),
    )
    .await?
    .replace("{*rest}", "headers");
    // The route's own credential is not the handler's; anything else, `Authorization` on a
    // public route included, is.
    let seen = route(
        &api,
        "seen",
        json!({ "path": "/seen/{*rest}", "auth": { "kind": "key" },
                "target": { "kind": "handler", "component": "hello" } }),
    )
    .await?;
    let answer = send(
        http.get(format!("{public}{}", seen.replace("{*rest}", "headers")))
            .bearer_auth(&own)
            .header("x-mine", "1"),
    )
    .await?;
    assert!(
        answer.text.contains("x-mine") && !answer.text.contains("authorization"),
        "{}",
        answer.text
    );
    let answer = send(
        http.get(format!("{public}{base_headers}"))
            .header("authorization", "Basic dXNlcjpwYXNz"),
    )
    .await?;
    assert!(answer.text.contains("authorization"), "{}", answer.text);
    let theirs = other.key.clone().unwrap_or_default();
    let answer = send(http.get(format!("{public}{keyed}")).bearer_auth(&theirs)).await?;
    assert_eq!((answer.status, answer.code().as_str()), (403, "forbidden"));

    // The guest's failures: a panic is the server's error, fuel is the plan's.
    let any = route(
        &api,
        "any",
        json!({ "path": "/h/{*rest}", "target": { "kind": "handler", "component": "hello" } }),
    )
    .await?;
    let base = any.replace("{*rest}", "");
    let answer = send(http.get(format!("{public}{base}panic"))).await?;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (500, "handler_failed"),
        "{}",
        answer.text
    );
    let answer = send(http.get(format!("{public}{base}teapot"))).await?;
    assert_eq!(
        (answer.status, answer.text.as_str()),
        (418, "short and stout")
    );
    // The body streams as the handler writes it: chunked, the first chunk alone first (the
    // handler pauses before the next).
    let mut streamed = http.get(format!("{public}{base}stream")).send().await?;
    assert_eq!(streamed.status(), 200);
    assert!(
        streamed.headers().get("content-length").is_none(),
        "{:?}",
        streamed.headers()
    );
    assert_eq!(
        streamed
            .headers()
            .get("transfer-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("chunked")
    );
    let first = streamed.chunk().await?.unwrap_or_default();
    assert_eq!(&first[..], b"chunk 0\n");
    let mut rest = Vec::new();
    while let Some(chunk) = streamed.chunk().await? {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&rest), "chunk 1\nchunk 2\n");
    // The request body streams too: the echo of the first chunk comes back before the second
    // is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let request_body =
        reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
    tx.send(Ok(bytes::Bytes::from_static(b"ping-1;"))).await?;
    let mut echoed = http
        .post(format!("{public}{base}echo-stream"))
        .body(request_body)
        .send()
        .await?;
    assert_eq!(echoed.status(), 200);
    let mut seen = Vec::new();
    while seen.len() < b"ping-1;".len() {
        let chunk = echoed.chunk().await?.unwrap_or_default();
        anyhow::ensure!(!chunk.is_empty(), "the echo ended early: {seen:?}");
        seen.extend_from_slice(&chunk);
    }
    assert_eq!(&seen[..], b"ping-1;");
    tx.send(Ok(bytes::Bytes::from_static(b"ping-2;"))).await?;
    drop(tx);
    while let Some(chunk) = echoed.chunk().await? {
        seen.extend_from_slice(&chunk);
    }
    assert_eq!(&seen[..], b"ping-1;ping-2;");
    let answer = send(http.get(format!("{public}{base}big?kib=300"))).await?;
    assert_eq!((answer.status, answer.text.len()), (200, 300 * 1024));
    let not_a_handler = route(
        &api,
        "counter-as-handler",
        json!({ "path": "/c", "target": { "kind": "handler", "component": "counter" } }),
    )
    .await?;
    let answer = send(http.get(format!("{public}{not_a_handler}"))).await?;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (422, "not_a_handler"),
        "{}",
        answer.text
    );

    // Bad routes are refused when they are made.
    for (spec, why) in [
        (
            json!({ "path": "no-slash", "target": { "kind": "handler", "component": "hello" } }),
            "starts with",
        ),
        (
            json!({ "path": "/a/{x}", "target": { "kind": "function", "component": "counter", "function": "add",
                  "worker": { "from": "path", "name": "y" } } }),
            "no parameter",
        ),
        (
            json!({ "path": "/a", "body_bytes_max": 1_000_000_000u64,
                  "target": { "kind": "handler", "component": "hello" } }),
            "body_bytes_max",
        ),
        (
            json!({ "path": "/a", "auth": { "kind": "secret", "header": "x", "secret": "short" },
                  "target": { "kind": "handler", "component": "hello" } }),
            "16 to 256",
        ),
    ] {
        let refused = api.post_json("/v1/routes/bad", &spec, None).await?;
        assert_eq!(
            (refused.status, refused.code()),
            (400, "invalid_route"),
            "{spec}: {refused:?}"
        );
        assert!(
            refused.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(why)),
            "{refused:?}"
        );
    }
    let dup = api
        .post_json(
            "/v1/routes/hello",
            &json!({ "path": "/x", "target": { "kind": "handler", "component": "hello" } }),
            None,
        )
        .await?;
    assert_eq!((dup.status, dup.code()), (409, "route_exists"));

    // Each route's requests and bytes are metered.
    let served = eventually(
        "the hello route's usage",
        std::time::Duration::from_secs(10),
        || async {
            let read = api.get("/v1/routes/hello").await?;
            let usage = &read.body["usage"];
            Ok((usage["requests"].as_u64().unwrap_or(0) >= 2).then(|| usage.clone()))
        },
    )
    .await?;
    assert!(
        served["response_bytes"].as_u64().unwrap_or(0) >= "hello ann from /hello".len() as u64,
        "{served}"
    );
    let listed = api.get("/v1/routes").await?;
    assert!(
        listed.body["routes"]
            .as_array()
            .is_some_and(|r| r.len() >= 8),
        "{listed:?}"
    );

    // A deleted route stops serving.
    assert_eq!(api.delete("/v1/routes/raw").await?.status, 204);
    let gone = eventually(
        "the deleted route stops",
        std::time::Duration::from_secs(5),
        || {
            let http = http.clone();
            let url = format!("{public}{}", raw.replace("{*rest}", "a"));
            async move { Ok(Some(send(http.get(url)).await?).filter(|a| a.status == 404)) }
        },
    )
    .await?;
    assert_eq!(gone.code(), "route_not_found");
    Ok(())
}

/// A worker's function behind a URL: the worker's name and the parameters come from the path,
/// the query, a header and the body; an `Idempotency-Key` runs once; the worker's state
/// survives SIGKILL (replayed), and so do the routes.
#[tokio::test]
async fn functions_behind_urls_keep_their_state_across_a_kill() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (server, public) = start(data.path())?;
    let api = server.operator().new_tenant("shop", "pro").await?;
    assert_eq!(
        api.upload("counter", component("counter")).await?.status,
        201
    );
    let add = route(
        &api,
        "add",
        json!({ "path": "/counters/{name}/add/{delta}", "methods": ["POST"],
                "target": { "kind": "function", "component": "counter", "function": "add",
                            "worker": { "from": "path", "name": "name" },
                            "params": [{ "from": "path", "name": "delta" }] } }),
    )
    .await?;
    let http = reqwest::Client::new();
    let url = |name: &str, delta: i64| {
        format!(
            "{public}{}",
            add.replace("{name}", name)
                .replace("{delta}", &delta.to_string())
        )
    };
    let answer = send(http.post(url("c1", 5))).await?;
    assert_eq!(
        (answer.status, answer.json()),
        (200, json!(5)),
        "{}",
        answer.text
    );
    let keyed = send(http.post(url("c1", 3)).header("idempotency-key", "k1")).await?;
    assert_eq!(keyed.json(), json!(8));
    let again = send(http.post(url("c1", 3)).header("idempotency-key", "k1")).await?;
    assert_eq!(again.json(), json!(8), "the same key runs once");
    let bad = send(http.post(url("c1", 0).replace("/add/0", "/add/lots"))).await?;
    assert_eq!(
        (bad.status, bad.code().as_str()),
        (400, "invalid_params"),
        "{}",
        bad.text
    );

    // Parameters from a header, the query and the JSON body, the worker fixed.
    let greet = route(
        &api,
        "greet",
        json!({ "path": "/greet", "methods": ["POST"],
                "target": { "kind": "function", "component": "counter", "function": "add",
                            "worker": { "from": "value", "value": "c1" },
                            "params": [{ "from": "body", "pointer": "/delta" }] } }),
    )
    .await?;
    let answer = send(
        http.post(format!("{public}{greet}"))
            .json(&json!({ "delta": 2 })),
    )
    .await?;
    assert_eq!(answer.json(), json!(10), "{}", answer.text);
    let answer = send(http.post(format!("{public}{greet}")).body("not json")).await?;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (400, "invalid_json")
    );
    let header = route(
        &api,
        "by-header",
        json!({ "path": "/mine/{delta}",
                "target": { "kind": "function", "component": "counter", "function": "add",
                            "worker": { "from": "header", "name": "x-user" },
                            "params": [{ "from": "path", "name": "delta" }] } }),
    )
    .await?;
    let answer = send(
        http.post(format!("{public}{}", header.replace("{delta}", "7")))
            .header("x-user", "c2"),
    )
    .await?;
    assert_eq!(answer.json(), json!(7), "{}", answer.text);
    let answer = send(http.post(format!("{public}{}", header.replace("{delta}", "7")))).await?;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (400, "invalid_params")
    );

    // SIGKILL, restart on the same data: the routes serve, the workers replay.
    server.kill()?;
    let (_server, public) = start(data.path())?;
    let answer = send(http.post(format!(
        "{public}{}",
        add.replace("{name}", "c1").replace("{delta}", "1")
    )))
    .await?;
    assert_eq!(
        (answer.status, answer.json()),
        (200, json!(11)),
        "{}",
        answer.text
    );
    let answer = send(
        http.post(format!(
            "{public}{}",
            add.replace("{name}", "c1").replace("{delta}", "3")
        ))
        .header("idempotency-key", "k1"),
    )
    .await?;
    assert_eq!(
        answer.json(),
        json!(8),
        "the key's stored outcome, after the kill"
    );
    Ok(())
}

/// The README's three commands: upload a handler, route it, call it.
#[tokio::test]
async fn a_function_behind_a_url_in_three_commands() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (server, public) = start(data.path())?;
    let api = server.operator().new_tenant("three", "pro").await?;
    let key = api.key.clone().unwrap_or_default();
    let wasm = data.path().join("hello.wasm");
    std::fs::write(&wasm, component("http_hello"))?;
    let cli = |args: &[&str]| -> anyhow::Result<Value> {
        let out = std::process::Command::new(INVICTA)
            .args(args)
            .arg("--json")
            .env("INVICTA_URL", &server.url)
            .env("INVICTA_API_KEY", &key)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "invicta {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    cli(&["component", "add", "hello", &wasm.to_string_lossy()])?;
    let made = cli(&[
        "route",
        "create",
        "hello",
        "--path",
        "/hello",
        "--handler",
        "hello",
        "--method",
        "GET",
    ])?;
    let url_path = made["url_path"].as_str().unwrap_or_default().to_string();
    let answer = send(reqwest::Client::new().get(format!("{public}{url_path}?name=you"))).await?;
    assert_eq!(
        (answer.status, answer.text.as_str()),
        (200, "hello you from /hello")
    );
    let listed = cli(&["route", "list"])?;
    assert_eq!(listed["routes"][0]["name"], "hello", "{listed}");
    let bad = std::process::Command::new(INVICTA)
        .args(["route", "create", "x", "--path", "/x"])
        .env("INVICTA_URL", &server.url)
        .env("INVICTA_API_KEY", &key)
        .output()?;
    assert!(!bad.status.success(), "a route needs a target");
    cli(&["route", "delete", "hello"])?;
    Ok(())
}

/// A loopback service whose effects count per `Idempotency-Key`, holding its answers while
/// `hold` is set.
#[derive(Clone, Default)]
struct Effects {
    seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    released: std::sync::Arc<tokio::sync::Notify>,
}

impl Effects {
    fn keys(&self) -> std::collections::HashMap<String, u32> {
        self.seen.lock().map(|m| m.clone()).unwrap_or_default()
    }

    async fn serve(self) -> anyhow::Result<String> {
        async fn effect(
            axum::extract::State(effects): axum::extract::State<Effects>,
            headers: axum::http::HeaderMap,
        ) -> String {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let n = {
                let Ok(mut seen) = effects.seen.lock() else {
                    return "poisoned".into();
                };
                let n = seen.entry(key.clone()).or_insert(0);
                *n += 1;
                *n
            };
            let released = effects.released.notified();
            if effects.hold.load(std::sync::atomic::Ordering::SeqCst) {
                released.await;
            }
            format!("key={key} seen={n}")
        }
        let app = axum::Router::new()
            .route("/effect", axum::routing::post(effect))
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/effect", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(url)
    }
}

/// A durable handler: each request is an invocation of the worker the path names, recorded in
/// its oplog. Its memory lives on between requests and after SIGKILL; the same key answers
/// from the record; a request cut off by SIGKILL while it waits on an effect, retried with its
/// key, has that effect once.
#[tokio::test]
async fn durable_handlers_keep_state_and_run_once_per_key_across_a_kill() -> anyhow::Result<()> {
    let effects = Effects::default();
    let effect_url = effects.clone().serve().await?;
    let data = tempfile::tempdir()?;
    let config = data.path().join("invicta.toml");
    std::fs::write(
        &config,
        "[executor]\nidle_suspend_ms = 300\n[executor.http]\nallow_private_hosts = [\"127.0.0.1\"]\ntimeout_ms = 30000\n",
    )?;
    let config = config.to_string_lossy().into_owned();
    let dir = data.path().join("data");
    let args = [
        "--public-listen",
        "127.0.0.1:0",
        "--config",
        config.as_str(),
    ];
    let server = Server::start_with(INVICTA.as_ref(), &dir, &args)?;
    let public = server.public_url.clone().unwrap_or_default();
    let api = server.operator().new_tenant("durable", "pro").await?;
    assert_eq!(
        api.upload("hello", component("http_hello")).await?.status,
        201
    );
    let users = route(
        &api,
        "users",
        json!({ "path": "/u/{user}/{*rest}",
                "target": { "kind": "handler", "component": "hello",
                            "worker": { "from": "path", "name": "user" } } }),
    )
    .await?;
    let fresh = route(
        &api,
        "fresh",
        json!({ "path": "/f/{*rest}", "target": { "kind": "handler", "component": "hello" } }),
    )
    .await?;
    let user_url = |public: &str, user: &str, rest: &str| {
        format!(
            "{public}{}",
            users.replace("{user}", user).replace("{*rest}", rest)
        )
    };
    let http = reqwest::Client::new();
    for expected in ["visit 1", "visit 2"] {
        let answer = send(http.get(user_url(&public, "ann", "visits"))).await?;
        assert_eq!((answer.status, answer.text.as_str()), (200, expected));
    }
    let answer = send(http.get(user_url(&public, "bob", "visits"))).await?;
    assert_eq!(answer.text, "visit 1", "each worker has its own memory");
    for _ in 0..2 {
        let answer =
            send(http.get(format!("{public}{}", fresh.replace("{*rest}", "visits")))).await?;
        assert_eq!(
            answer.text, "visit 1",
            "an ephemeral handler starts afresh each time"
        );
    }
    for _ in 0..2 {
        let answer = send(
            http.get(user_url(&public, "ann", "visits"))
                .header("idempotency-key", "v1"),
        )
        .await?;
        assert_eq!(
            answer.text, "visit 3",
            "the same key answers from the record"
        );
    }
    // Idle, the worker is suspended; the next request finds its memory rebuilt by replay.
    eventually(
        "ann's worker suspended",
        std::time::Duration::from_secs(10),
        || async {
            let status = api.get("/v1/components/hello/workers/ann").await?;
            Ok((status.body["status"] == "suspended").then_some(()))
        },
    )
    .await?;
    let answer = send(http.get(user_url(&public, "ann", "visits"))).await?;
    assert_eq!(answer.text, "visit 4", "after idle suspension");
    let oplog = api.get("/v1/components/hello/workers/ann/oplog").await?;
    assert!(
        oplog
            .body
            .to_string()
            .contains("wasi:http/incoming-handler"),
        "the requests are in the worker's oplog: {oplog:?}"
    );
    let too_big = api
        .post_json(
            "/v1/routes/big",
            &json!({ "path": "/b/{user}", "body_bytes_max": 2_000_000,
                     "target": { "kind": "handler", "component": "hello",
                                 "worker": { "from": "path", "name": "user" } } }),
            None,
        )
        .await?;
    assert_eq!(
        (too_big.status, too_big.code()),
        (400, "invalid_route"),
        "{too_big:?}"
    );

    // A payment that waits on its effect when the server is killed.
    effects
        .hold
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let pay = user_url(&public, "carol", &format!("pay?to={effect_url}"));
    let first = tokio::spawn({
        let (http, pay) = (http.clone(), pay.clone());
        async move {
            http.post(pay)
                .header("idempotency-key", "pay-1")
                .body("5")
                .send()
                .await
        }
    });
    eventually(
        "the payment reached its service",
        std::time::Duration::from_secs(30),
        || async { Ok((effects.keys().values().sum::<u32>() >= 1).then_some(())) },
    )
    .await?;
    server.kill()?;
    let _ = first.await;
    effects
        .hold
        .store(false, std::sync::atomic::Ordering::SeqCst);
    effects.released.notify_waiters();

    let server = Server::start_with(INVICTA.as_ref(), &dir, &args)?;
    let public = server.public_url.clone().unwrap_or_default();
    let pay = user_url(&public, "carol", &format!("pay?to={effect_url}"));
    let answer = send(http.post(pay).header("idempotency-key", "pay-1").body("5")).await?;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(answer.text.starts_with("paid 200 key="), "{}", answer.text);
    let keys = effects.keys();
    assert_eq!(
        keys.len(),
        1,
        "one effect, whatever was sent again: {keys:?}"
    );
    // Ann's memory came back by replay.
    let answer = send(http.get(user_url(&public, "ann", "visits"))).await?;
    assert_eq!(answer.text, "visit 5", "after SIGKILL");
    Ok(())
}

/// A tenant's routes take its plan's rate: past the burst a request is 429 `rate_limited` with
/// `Retry-After`.
#[tokio::test]
async fn routes_take_the_plans_rate() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (server, public) = start(data.path())?;
    let operator = server.operator();
    let mut plan = operator.get("/v1/admin/plans").await?.body["plans"]
        .as_array()
        .and_then(|plans| plans.iter().find(|p| p["name"] == "pro").cloned())
        .ok_or_else(|| anyhow::anyhow!("the pro plan"))?;
    plan["name"] = json!("slow");
    plan["requests_per_second"] = json!(1);
    plan["burst"] = json!(2);
    let put = operator.put_json("/v1/admin/plans/slow", &plan).await?;
    assert_eq!(put.status, 200, "{put:?}");
    let api = operator.new_tenant("slow", "slow").await?;
    assert_eq!(
        api.upload("raw", component("raw_handler")).await?.status,
        201
    );
    let url = route(
        &api,
        "raw",
        json!({ "path": "/r", "target": { "kind": "handler", "component": "raw" } }),
    )
    .await?;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..5 {
        let answer = send(http.get(format!("{public}{url}"))).await?;
        statuses.push(answer.status);
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.ok_or_else(|| anyhow::anyhow!("never limited: {statuses:?}"))?;
    assert_eq!(limited.code(), "rate_limited");
    assert!(!limited.header("retry-after").is_empty());
    assert!(
        limited
            .header("content-type")
            .starts_with("application/problem+json")
    );
    assert_eq!(statuses[0], 200, "{statuses:?}");
    Ok(())
}
