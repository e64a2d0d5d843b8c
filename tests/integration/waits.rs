//! Durable waits: a long sleep and an awaited promise suspend the worker (its instance
//! dropped) and survive a SIGKILL; an atomic region cut off by a crash runs again whole.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use invicta_tests::{Api, Server, component, eventually};
use serde_json::{Value, json};

use crate::INVICTA;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A config with waits over 200 ms suspending the worker, and loopback reachable.
fn config(dir: &std::path::Path) -> anyhow::Result<String> {
    let path = dir.join("invicta.toml");
    std::fs::write(
        &path,
        "[executor]\nsuspend_wait_ms = 200\n\n[executor.http]\nallow_private_hosts = [\"127.0.0.1\"]\n",
    )?;
    Ok(path.to_string_lossy().into_owned())
}

async fn oplog_kinds(api: &Api, worker: &str) -> anyhow::Result<Vec<String>> {
    let oplog = api
        .get(&format!("/v1/components/waiter/workers/{worker}/oplog"))
        .await?;
    anyhow::ensure!(oplog.status == 200, "{oplog:?}");
    Ok(oplog.body["entries"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Waits until the worker's oplog shows it suspended in a wait.
async fn suspended(api: &Api, worker: &str) -> anyhow::Result<()> {
    eventually(
        &format!("worker {worker} suspended"),
        Duration::from_secs(10),
        || async move {
            let kinds = oplog_kinds(api, worker).await?;
            Ok(kinds.contains(&"suspended".to_string()).then_some(()))
        },
    )
    .await
}

async fn enqueue(
    api: &Api,
    worker: &str,
    function: &str,
    params: Value,
    key: &str,
) -> anyhow::Result<()> {
    let accepted = api
        .post_json(
            &format!("/v1/components/waiter/workers/{worker}/enqueue"),
            &json!({ "function": function, "params": params }),
            Some(key),
        )
        .await?;
    anyhow::ensure!(accepted.status == 202, "{accepted:?}");
    Ok(())
}

async fn outcome(api: &Api, worker: &str, key: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = api
            .get(&format!(
                "/v1/components/waiter/workers/{worker}/invocations/{key}?wait_ms=5000"
            ))
            .await?;
        if status.body["status"] == "completed" || status.body["status"] == "failed" {
            return Ok(status.body);
        }
        anyhow::ensure!(Instant::now() < deadline, "{key} never ended: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_of(api: &Api, worker: &str, key: &str) -> anyhow::Result<Value> {
    Ok(api
        .get(&format!(
            "/v1/components/waiter/workers/{worker}/invocations/{key}"
        ))
        .await?
        .body)
}

#[tokio::test]
async fn a_long_sleep_suspends_the_worker_and_outlives_a_crash() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let config = config(data.path())?;
    let dir = data.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("sleepers", "pro").await?;
    api.upload("waiter", component("waiter")).await?;

    // A short wait just waits.
    let short = api.call("waiter", "w", "nap", json!([50])).await?;
    assert!(short.as_u64().is_some_and(|ms| ms >= 50), "{short}");
    assert!(
        !oplog_kinds(&api, "w")
            .await?
            .contains(&"suspended".to_string())
    );
    // Of two deadlines polled at once, the first was ready; a replay, long after both, must
    // see the same (checked after the restarts below).
    let race = api.call("waiter", "w", "race", json!([20, 400])).await?;
    assert_eq!(race, json!([0]));

    // A long one suspends the worker; what comes after it waits its turn.
    let started = now_ms();
    enqueue(&api, "w", "nap", json!([2_500]), "long-nap").await?;
    enqueue(&api, "w", "bump", json!([]), "after-nap").await?;
    suspended(&api, "w").await?;
    let worker = api.get("/v1/components/waiter/workers/w").await?;
    assert_eq!(worker.body["status"], "suspended", "{worker:?}");
    assert_eq!(status_of(&api, "w", "long-nap").await?["status"], "pending");
    assert_eq!(
        status_of(&api, "w", "after-nap").await?["status"],
        "pending"
    );

    // A key made before a sleep is the same key after the crash below.
    enqueue(&api, "k", "keyed-nap", json!([1_500]), "keyed").await?;
    suspended(&api, "k").await?;
    let oplog = api.get("/v1/components/waiter/workers/k/oplog").await?;
    let made = oplog.body["entries"]
        .as_array()
        .and_then(|es| {
            es.iter()
                .find(|e| e["host_function"] == "invicta:host/api.generate-idempotency-key")
        })
        .map(|e| e["response"].clone())
        .unwrap_or_default();
    assert!(made.as_str().is_some_and(|k| k.len() == 32), "{oplog:?}");

    // SIGKILL while they sleep: the scheduler of the new process wakes them when due.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    let nap = outcome(&api, "w", "long-nap").await?;
    let woke = now_ms();
    assert_eq!(nap["status"], "completed", "{nap}");
    let slept = nap["result"].as_u64().unwrap_or_default();
    assert!(slept >= 2_500, "the guest slept {slept} ms");
    assert!(woke >= started + 2_500, "it ended before its deadline");
    let bump = outcome(&api, "w", "after-nap").await?;
    assert_eq!(bump["result"], json!(1), "{bump}");
    let keyed = outcome(&api, "k", "keyed").await?;
    assert_eq!(keyed["result"], made, "{keyed}");
    // And the worker's history replays: the nap's deadline is in the past now.
    let server = {
        server.kill()?;
        Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?
    };
    let api = api.at(&server.url);
    assert_eq!(api.call("waiter", "w", "bump", json!([])).await?, json!(2));
    Ok(())
}

#[tokio::test]
async fn an_awaited_promise_suspends_the_worker_until_completed() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let config = config(data.path())?;
    let dir = data.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("promisers", "pro").await?;
    api.upload("waiter", component("waiter")).await?;

    let id = api.call("waiter", "p", "make-promise", json!([])).await?;
    let id = id.as_str().unwrap_or_default().to_string();
    assert!(!id.is_empty());
    let path = format!("/v1/components/waiter/workers/p/promises/{id}");
    let promise = api.get(&path).await?;
    assert_eq!(promise.status, 200, "{promise:?}");
    assert_eq!(promise.body["completed"], Value::Null);

    enqueue(&api, "p", "wait-for", json!([id]), "awaiting").await?;
    suspended(&api, "p").await?;
    assert_eq!(status_of(&api, "p", "awaiting").await?["status"], "pending");
    let waiting = |body: &Value| {
        body["invocations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| (i["idempotency_key"].clone(), i["function"].clone()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let pending = api
        .get("/v1/components/waiter/workers/p/invocations")
        .await?;
    assert_eq!(pending.status, 200, "{pending:?}");
    assert_eq!(
        waiting(&pending.body),
        vec![(json!("awaiting"), json!("wait-for"))],
        "{pending:?}"
    );
    let promises = api.get("/v1/components/waiter/workers/p/promises").await?;
    assert_eq!(
        promises.body["promises"][0]["id"],
        json!(id),
        "{promises:?}"
    );
    assert_eq!(promises.body["promises"][0]["completed"], Value::Null);
    for bad in ["limit=0", "limit=1001", "limit=x", "other=1"] {
        let refused = api
            .get(&format!("/v1/components/waiter/workers/p/promises?{bad}"))
            .await?;
        assert_eq!(
            (refused.status, refused.code()),
            (400, "invalid_query"),
            "{bad}"
        );
    }
    let nobody = api
        .get("/v1/components/waiter/workers/nobody/invocations")
        .await?;
    assert_eq!((nobody.status, nobody.code()), (404, "worker_not_found"));

    // A crash while it waits, then the completion.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(status_of(&api, "p", "awaiting").await?["status"], "pending");
    // The operator sees the restart as a failover of every shard, to the new executor.
    let cluster = server.operator().get("/v1/admin/cluster").await?;
    assert_eq!(cluster.status, 200, "{cluster:?}");
    let executors = cluster.body["executors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(executors.len(), 1, "{cluster:?}");
    assert_eq!(executors[0]["shards"], json!(64));
    assert!(executors[0]["workers"].as_u64() >= Some(1), "{cluster:?}");
    let failover = &cluster.body["failovers"][0];
    assert_eq!(failover["to"], executors[0]["id"], "{cluster:?}");
    assert_eq!(failover["shards"].as_array().map(Vec::len), Some(64));
    let refused = api.get("/v1/admin/cluster").await?;
    assert_eq!(refused.status, 403, "a tenant does not see the cluster");
    let pending = api
        .get("/v1/components/waiter/workers/p/invocations")
        .await?;
    assert_eq!(
        waiting(&pending.body).len(),
        1,
        "still waiting after the crash"
    );
    let data = json!({ "approved": true, "by": "ops" });
    let completed = api
        .post_json(&format!("{path}/complete"), &json!({ "data": data }), None)
        .await?;
    assert_eq!(completed.status, 200, "{completed:?}");
    let awaited = outcome(&api, "p", "awaiting").await?;
    assert_eq!(awaited["status"], "completed", "{awaited}");
    let pending = api
        .get("/v1/components/waiter/workers/p/invocations")
        .await?;
    assert!(waiting(&pending.body).is_empty(), "{pending:?}");
    let promises = api.get("/v1/components/waiter/workers/p/promises").await?;
    assert_eq!(promises.body["promises"][0]["completed"], data);
    let text = awaited["result"]["ok"].as_str().unwrap_or_default();
    assert_eq!(serde_json::from_str::<Value>(text)?, data);

    // Completing again: the same data changes nothing, other data is refused.
    let again = api
        .post_json(&format!("{path}/complete"), &json!({ "data": data }), None)
        .await?;
    assert_eq!(again.status, 200, "{again:?}");
    let other = api
        .post_json(&format!("{path}/complete"), &json!({ "data": 1 }), None)
        .await?;
    assert_eq!(
        (other.status, other.code()),
        (409, "promise_completed"),
        "{other:?}"
    );
    let unknown = api
        .post_json(
            "/v1/components/waiter/workers/p/promises/nope/complete",
            &json!({ "data": 1 }),
            None,
        )
        .await?;
    assert_eq!((unknown.status, unknown.code()), (404, "promise_not_found"));
    let bad = api
        .post_json(
            &format!("{path}/complete"),
            &json!({ "data": 1, "extra": 2 }),
            None,
        )
        .await?;
    assert_eq!(bad.status, 400, "{bad:?}");
    // Awaiting a promise the worker does not have is the guest's error, not a hang.
    let missing = api.call("waiter", "p", "wait-for", json!(["nope"])).await?;
    assert!(
        missing["err"]
            .as_str()
            .is_some_and(|e| e.contains("no promise")),
        "{missing}"
    );
    // A wait that will never end can be interrupted; the worker goes on.
    let second = api.call("waiter", "p", "make-promise", json!([])).await?;
    enqueue(&api, "p", "wait-for", json!([second]), "forever").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let interrupted = api
            .post_json(
                "/v1/components/waiter/workers/p/interrupt",
                &json!({}),
                None,
            )
            .await?;
        if interrupted.body["interrupted"] == json!(true) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "never waiting: {interrupted:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = outcome(&api, "p", "forever").await?;
    assert_eq!(stopped["status"], "failed", "{stopped}");
    assert_eq!(stopped["error"]["code"], "interrupted", "{stopped}");
    assert_eq!(api.call("waiter", "p", "bump", json!([])).await?, json!(1));

    // Another tenant cannot complete it.
    let other_tenant = server.operator().new_tenant("strangers", "pro").await?;
    let foreign = other_tenant
        .post_json(&format!("{path}/complete"), &json!({ "data": 2 }), None)
        .await?;
    assert_eq!(foreign.status, 404, "{foreign:?}");
    Ok(())
}

/// Background work counts against the plan's concurrent invocations: with two enqueued
/// invocations waiting, a third is refused (`quota_exceeded`, 429), and accepted once one of
/// them has ended. A key accepted before is still answered as such.
#[tokio::test]
async fn background_invocations_count_against_the_plans_concurrency() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let operator = server.operator();
    let mut plan = operator.get("/v1/admin/plans").await?.body["plans"][0].clone();
    plan["name"] = json!("narrow");
    plan["concurrent_invocations"] = json!(2);
    let put = operator.put_json("/v1/admin/plans/narrow", &plan).await?;
    assert!(put.status < 300, "{put:?}");
    let api = operator.new_tenant("busy", "narrow").await?;
    api.upload("waiter", component("waiter")).await?;
    enqueue(&api, "a", "nap", json!([600_000]), "long-a").await?;
    enqueue(&api, "b", "nap", json!([600_000]), "long-b").await?;

    let third = api
        .post_json(
            "/v1/components/waiter/workers/c/enqueue",
            &json!({ "function": "bump", "params": [] }),
            Some("third"),
        )
        .await?;
    assert_eq!(
        (third.status, third.code()),
        (429, "quota_exceeded"),
        "{third:?}"
    );
    assert_eq!(third.body["quota"], "concurrent_invocations", "{third:?}");
    assert_eq!(third.body["limit"], 2, "{third:?}");
    // A key accepted before is answered as accepted, not refused: it is not new work.
    enqueue(&api, "a", "nap", json!([600_000]), "long-a").await?;

    // One ends (interrupted while it waits): its place is free.
    eventually(
        "a waiting invocation interrupted",
        Duration::from_secs(10),
        || {
            let api = api.clone();
            async move {
                let interrupted = api
                    .post_json(
                        "/v1/components/waiter/workers/a/interrupt",
                        &json!({}),
                        None,
                    )
                    .await?;
                Ok((interrupted.body["interrupted"] == json!(true)).then_some(()))
            }
        },
    )
    .await?;
    let accepted = eventually("the third is accepted", Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let reply = api
                .post_json(
                    "/v1/components/waiter/workers/c/enqueue",
                    &json!({ "function": "bump", "params": [] }),
                    Some("third"),
                )
                .await?;
            Ok((reply.status == 202).then_some(reply))
        }
    })
    .await?;
    assert_eq!(accepted.status, 202);
    let done = outcome(&api, "c", "third").await?;
    assert_eq!(done["status"], "completed", "{done}");
    Ok(())
}

/// A promise's webhook completes it with no key: an outside service wakes the worker, across a
/// crash. Again with the same body changes nothing; other data, an unknown or malformed token,
/// and a deleted worker's webhook are refused as problems.
#[tokio::test]
async fn a_webhook_completes_its_promise_without_a_key() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let config = config(data.path())?;
    let dir = data.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("hooked", "pro").await?;
    api.upload("waiter", component("waiter")).await?;

    let id = api.call("waiter", "h", "make-promise", json!([])).await?;
    let id = id.as_str().unwrap_or_default().to_string();
    let promise = api
        .get(&format!("/v1/components/waiter/workers/h/promises/{id}"))
        .await?;
    let token = promise.body["webhook"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(token.len(), 64, "{promise:?}");
    enqueue(&api, "h", "wait-for", json!([id]), "hooked").await?;
    suspended(&api, "h").await?;

    // A crash while it waits; then the outside service calls, with no key.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    let outside = api.anonymous();
    let hook = format!("/v1/webhooks/{token}");
    let body = json!({ "paid": 4200, "currency": "EUR" });
    let called = outside.post_json(&hook, &body, None).await?;
    assert_eq!(called.status, 200, "{called:?}");
    assert_eq!(called.body["completed"], body, "{called:?}");
    let awaited = outcome(&api, "h", "hooked").await?;
    assert_eq!(awaited["status"], "completed", "{awaited}");
    let text = awaited["result"]["ok"].as_str().unwrap_or_default();
    assert_eq!(serde_json::from_str::<Value>(text)?, body);

    // Delivered again (webhooks are retried): the same body changes nothing.
    let again = outside.post_json(&hook, &body, None).await?;
    assert_eq!(again.status, 200, "{again:?}");
    let other = outside
        .post_json(&hook, &json!({ "paid": 1 }), None)
        .await?;
    assert_eq!(
        (other.status, other.code()),
        (409, "promise_completed"),
        "{other:?}"
    );
    for bad in ["0".repeat(64), "not-a-token".to_string(), "A".repeat(64)] {
        let refused = outside
            .post_json(&format!("/v1/webhooks/{bad}"), &body, None)
            .await?;
        assert_eq!(
            (refused.status, refused.code()),
            (404, "webhook_not_found"),
            "{bad}: {refused:?}"
        );
    }
    // A deleted worker's webhooks go with it.
    let second = api.call("waiter", "h", "make-promise", json!([])).await?;
    let second = second.as_str().unwrap_or_default().to_string();
    let token = api
        .get(&format!(
            "/v1/components/waiter/workers/h/promises/{second}"
        ))
        .await?
        .body["webhook"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        api.delete("/v1/components/waiter/workers/h").await?.status,
        204
    );
    let gone = outside
        .post_json(&format!("/v1/webhooks/{token}"), &body, None)
        .await?;
    assert_eq!(
        (gone.status, gone.code()),
        (404, "webhook_not_found"),
        "{gone:?}"
    );
    Ok(())
}
