//! The Invicta host interface with a guest that imports it: invocations of other workers,
//! accepted exactly once even when the caller dies between accepting one and recording it.

use std::time::{Duration, Instant};

use invicta_tests::{Api, Server, component};
use serde_json::{Value, json};

use crate::INVICTA;

async fn counter_value(api: &Api, worker: &str) -> anyhow::Result<Value> {
    api.call("counter", worker, "get", json!([])).await
}

async fn settle(api: &Api, worker: &str, expected: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = counter_value(api, worker).await?;
        if value == json!(expected) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{worker} stays at {value}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more arrives: each was accepted once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counter_value(api, worker).await?, json!(expected));
    Ok(())
}

#[tokio::test]
async fn workers_invoke_workers_exactly_once() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = server.operator().new_tenant("callers", "pro").await?;
    api.upload("counter", component("counter")).await?;
    api.upload("caller", component("caller")).await?;
    let keys = api.call("caller", "c", "fan-out", json!(["t", 5])).await?;
    let keys: Vec<String> = keys
        .as_array()
        .map(|ks| {
            ks.iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(keys.iter().all(|k| !k.starts_with("refused")), "{keys:?}");
    let mut distinct = keys.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 5);
    settle(&api, "t", 5).await?;
    for key in &keys {
        let status = api
            .get(&format!(
                "/v1/components/counter/workers/t/invocations/{key}"
            ))
            .await?;
        assert_eq!(status.body["status"], "completed", "{status:?}");
    }
    let a = api.call("caller", "c", "new-key", json!([])).await?;
    let b = api.call("caller", "c", "new-key", json!([])).await?;
    assert_ne!(a, b);
    // A refusal is the guest's to handle: another component's worker that cannot be made.
    let refused = api
        .call("caller", "c", "fan-out", json!(["bad name!", 1]))
        .await?;
    assert!(
        refused[0]
            .as_str()
            .is_some_and(|r| r.starts_with("refused")),
        "{refused}"
    );

    // Replayed after a crash, the caller accepts nothing again.
    let server = server.restart()?;
    let api = api.at(&server.url);
    assert!(
        api.call("caller", "c", "new-key", json!([]))
            .await?
            .is_string()
    );
    settle(&api, "t", 5).await?;
    Ok(())
}

#[tokio::test]
async fn a_crash_after_accepting_accepts_nothing_twice() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    let failpoint = data.path().join("die-after-enqueue");
    std::fs::write(&failpoint, b"once")?;
    let env = failpoint.to_string_lossy().into_owned();
    let server = Server::start_env(
        INVICTA.as_ref(),
        &dir,
        "127.0.0.1:0",
        &[],
        &[("INVICTA_FAILPOINT_HOST_ENQUEUED", &env)],
    )?;
    let api = server.operator().new_tenant("crashers", "pro").await?;
    api.upload("counter", component("counter")).await?;
    api.upload("caller", component("caller")).await?;
    let cut = api
        .post_json(
            "/v1/components/caller/workers/c/invoke",
            &json!({ "function": "fan-out", "params": ["t", 3] }),
            Some("fan"),
        )
        .await;
    assert!(cut.is_err(), "the server died mid-invocation: {cut:?}");
    assert!(!failpoint.exists(), "the failpoint fired");

    let server = server.restart()?;
    let api = api.at(&server.url);
    let done = api
        .post_json(
            "/v1/components/caller/workers/c/invoke",
            &json!({ "function": "fan-out", "params": ["t", 3] }),
            Some("fan"),
        )
        .await?;
    assert_eq!(done.status, 200, "{done:?}");
    settle(&api, "t", 3).await?;
    Ok(())
}

#[tokio::test]
async fn a_worker_calls_another_and_a_crash_does_not_run_it_twice() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    let failpoint = data.path().join("die-after-call");
    let env = failpoint.to_string_lossy().into_owned();
    let server = Server::start_env(
        INVICTA.as_ref(),
        &dir,
        "127.0.0.1:0",
        &[],
        &[("INVICTA_FAILPOINT_HOST_INVOKED", &env)],
    )?;
    let api = server.operator().new_tenant("rpc", "pro").await?;
    api.upload("counter", component("counter")).await?;
    api.upload("caller", component("caller")).await?;
    assert_eq!(
        api.call("caller", "c", "call-add", json!(["t", 5])).await?,
        json!({ "ok": "5" })
    );
    assert_eq!(
        api.call("caller", "c", "call-add", json!(["t", 2])).await?,
        json!({ "ok": "7" })
    );
    let refused = api
        .call("caller", "c", "call-add", json!(["no such worker!", 1]))
        .await?;
    assert!(refused["err"].is_string(), "{refused}");

    // The server dies after the callee completed and before the caller recorded it.
    std::fs::write(&failpoint, b"once")?;
    let cut = api
        .post_json(
            "/v1/components/caller/workers/c/invoke",
            &json!({ "function": "call-add", "params": ["t", 10] }),
            Some("ten"),
        )
        .await;
    assert!(cut.is_err(), "the server died mid-invocation: {cut:?}");
    assert!(!failpoint.exists(), "the failpoint fired");
    let server = server.restart()?;
    let api = api.at(&server.url);
    let done = api
        .post_json(
            "/v1/components/caller/workers/c/invoke",
            &json!({ "function": "call-add", "params": ["t", 10] }),
            Some("ten"),
        )
        .await?;
    assert_eq!(done.body["result"], json!({ "ok": "17" }), "{done:?}");
    assert_eq!(counter_value(&api, "t").await?, json!(17), "added once");
    Ok(())
}
