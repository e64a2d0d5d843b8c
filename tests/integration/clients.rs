//! Workers written with ordinary HTTP clients replay: `waki` (blocking), `wstd` (async, its
//! reactor waiting through `wasi:io/poll`) and the raw `wasi:http` bindings (several requests
//! polled at once, request and response bodies as streams). Each makes its calls live, is
//! suspended for being idle, answers a new call (its history replayed), is killed with SIGKILL
//! and answers again after the restart: every answer as before, and nothing sent twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use invicta_tests::{Api, Configured, component, eventually};
use serde_json::{Value, json};

use crate::INVICTA;

/// Requests seen per `Idempotency-Key`, and the bodies posted.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, u32>>>);

impl Seen {
    fn keys(&self) -> HashMap<String, u32> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn total(&self) -> u32 {
        self.keys().values().sum()
    }
}

async fn effect(State(seen): State<Seen>, headers: HeaderMap, body: String) -> String {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let n = match seen.0.lock() {
        Ok(mut map) => {
            let n = map.entry(key).or_insert(0);
            *n += 1;
            *n
        }
        Err(_) => 0,
    };
    // Long enough that a client reads it in more than one piece.
    format!("seen={n} body={body} {}", "y".repeat(10_000))
}

async fn remote() -> anyhow::Result<(String, Seen)> {
    let seen = Seen::default();
    let app = axum::Router::new()
        .route("/effect", axum::routing::get(effect).post(effect))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/effect", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, seen))
}

/// A call a client's worker makes, and how many requests it sends.
struct Step {
    function: &'static str,
    params: fn(&str) -> Value,
    requests: u32,
}

/// The answers' texts, without the long padding.
fn texts(result: &Value) -> Vec<String> {
    let strip = |s: &str| s.split(" yyyy").next().unwrap_or_default().to_string();
    match result {
        Value::Object(map) if map.contains_key("ok") => match &map["ok"] {
            Value::String(s) => vec![strip(s)],
            Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(strip)).collect(),
            other => vec![other.to_string()],
        },
        other => vec![format!("not ok: {other}")],
    }
}

async fn run(api: &Api, seen: &Seen, name: &str, url: &str, steps: &[Step]) -> anyhow::Result<()> {
    for step in steps {
        let before = seen.total();
        let result = api
            .call(name, "w", step.function, (step.params)(url))
            .await?;
        for text in texts(&result) {
            anyhow::ensure!(
                text.starts_with("200 seen=1 body="),
                "{name}.{}: {text}",
                step.function
            );
        }
        anyhow::ensure!(
            seen.total() == before + step.requests,
            "{name}.{}: {} requests, expected {}",
            step.function,
            seen.total() - before,
            step.requests
        );
    }
    Ok(())
}

async fn replays_after_suspension_and_kill(name: &str, steps: &[Step]) -> anyhow::Result<()> {
    let (url, seen) = remote().await?;
    let data = tempfile::tempdir()?;
    let configured = Configured::new(
        INVICTA.as_ref(),
        data.path(),
        "[executor]\nidle_suspend_ms = 300\n[executor.http]\nallow_private_hosts = [\"127.0.0.1\"]\ntimeout_ms = 5000\n",
    )?;
    let server = configured.start()?;
    let api = server.operator().new_tenant("clients", "pro").await?;
    api.upload(name, component(name)).await?;

    // Live.
    run(&api, &seen, name, &url, steps).await?;

    // Idle, then suspended: the next call replays the history first.
    let status_path = format!("/v1/components/{name}/workers/w");
    eventually("the worker is suspended", Duration::from_secs(20), || {
        let api = api.clone();
        let path = status_path.clone();
        async move {
            let status = api.get(&path).await?;
            Ok((status.body["status"] == "suspended").then_some(()))
        }
    })
    .await?;
    run(&api, &seen, name, &url, steps).await?;

    // Killed: after the restart the whole history replays again.
    server.kill()?;
    let server = configured.start()?;
    let api = api.at(&server.url);
    run(&api, &seen, name, &url, steps).await?;

    let keys = seen.keys();
    assert!(
        keys.values().all(|n| *n == 1),
        "{name}: a request was sent twice: {keys:?}"
    );
    assert!(!keys.contains_key(""), "{name}: a request without a key");
    let oplog = api
        .get(&format!("/v1/components/{name}/workers/w/oplog?count=1000"))
        .await?;
    let errors: Vec<&Value> = oplog.body["entries"]
        .as_array()
        .map(|es| es.iter().filter(|e| e["kind"] == "error").collect())
        .unwrap_or_default();
    assert!(errors.is_empty(), "{name}: {errors:?}");
    drop(server);
    Ok(())
}

#[tokio::test]
async fn waki_workers_replay() -> anyhow::Result<()> {
    replays_after_suspension_and_kill(
        "fetcher",
        &[
            Step {
                function: "fetch",
                params: |url| json!([url]),
                requests: 1,
            },
            Step {
                function: "post",
                params: |url| json!([url, "abc"]),
                requests: 1,
            },
        ],
    )
    .await
}

#[tokio::test]
async fn wstd_workers_replay() -> anyhow::Result<()> {
    replays_after_suspension_and_kill(
        "wstd_fetcher",
        &[
            Step {
                function: "fetch",
                params: |url| json!([url]),
                requests: 1,
            },
            Step {
                function: "post",
                params: |url| json!([url, ["ab", "cd", "ef"]]),
                requests: 1,
            },
            Step {
                function: "fetch-both",
                params: |url| json!([url, url]),
                requests: 2,
            },
        ],
    )
    .await
}

#[tokio::test]
async fn raw_wasi_http_workers_replay() -> anyhow::Result<()> {
    replays_after_suspension_and_kill(
        "raw_fetcher",
        &[
            Step {
                function: "fetch-all",
                params: |url| json!([[url, url, url]]),
                requests: 3,
            },
            Step {
                function: "post",
                params: |url| json!([url, ["x".repeat(70_000), "y".repeat(5)]]),
                requests: 1,
            },
        ],
    )
    .await
}

/// A worker deleted and created again under the same name is another incarnation: its requests
/// carry other idempotency keys, so a server that honours them runs each payment, and the same
/// holds after its component is deleted and uploaded again.
#[tokio::test]
async fn a_recreated_worker_never_reuses_idempotency_keys() -> anyhow::Result<()> {
    let (url, seen) = remote().await?;
    let data = tempfile::tempdir()?;
    let configured = Configured::new(
        INVICTA.as_ref(),
        data.path(),
        "[executor.http]\nallow_private_hosts = [\"127.0.0.1\"]\ntimeout_ms = 5000\n",
    )?;
    let server = configured.start()?;
    let api = server.operator().new_tenant("payer", "pro").await?;
    api.upload("fetcher", component("fetcher")).await?;
    let pay = async || -> anyhow::Result<()> {
        let paid = api
            .call("fetcher", "w", "post", json!([url, "pay"]))
            .await?;
        let text = paid["ok"].as_str().unwrap_or_default();
        anyhow::ensure!(text.starts_with("200 seen=1 body=pay"), "{paid}");
        Ok(())
    };
    pay().await?;
    let deleted = api.delete("/v1/components/fetcher/workers/w").await?;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    pay().await?;
    assert_eq!(
        api.delete("/v1/components/fetcher/workers/w").await?.status,
        204
    );
    let gone = api.delete("/v1/components/fetcher").await?;
    assert_eq!(gone.status, 204, "{gone:?}");
    api.upload("fetcher", component("fetcher")).await?;
    pay().await?;
    let keys = seen.keys();
    assert_eq!(keys.len(), 3, "three payments, three keys: {keys:?}");
    assert!(keys.values().all(|n| *n == 1), "{keys:?}");
    let oplog = api
        .get("/v1/components/fetcher/workers/w/oplog?count=10")
        .await?;
    let incarnation = oplog.body["entries"][0]["incarnation"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(incarnation.len(), 32, "{oplog:?}");
    drop(server);
    Ok(())
}
