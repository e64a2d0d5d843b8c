//! Invocations for later and on a schedule: `enqueue` with `schedule_at` runs when due and not
//! before; a cron schedule fires once per tick, pauses, resumes, survives a restart and is
//! deleted.

use std::time::{Duration, Instant};

use invicta_tests::{Api, Server, component};
use serde_json::{Value, json};

use crate::INVICTA;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The schedule's ticks recorded in the worker's oplog, by idempotency key.
async fn ticks(api: &Api, worker: &str, schedule: &str) -> anyhow::Result<Vec<String>> {
    let oplog = api
        .get(&format!(
            "/v1/components/counter/workers/{worker}/oplog?count=1000"
        ))
        .await?;
    Ok(oplog.body["entries"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| e["kind"] == "exported_function_invoked")
                .filter_map(|e| e["idempotency_key"].as_str().map(str::to_string))
                .filter(|k| k.starts_with(&format!("schedule-{schedule}-")))
                .collect()
        })
        .unwrap_or_default())
}

async fn wait_for(
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await? {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn scheduled_invocations_run_when_due_once_per_tick() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = server.operator().new_tenant("planner", "pro").await?;
    api.upload("counter", component("counter")).await?;

    // Later, not now.
    let at = now_ms() + 1_500;
    let later = api
        .post_json(
            "/v1/components/counter/workers/later/enqueue",
            &json!({ "function": "add", "params": [5], "schedule_at": at }),
            Some("at-once-later"),
        )
        .await?;
    assert_eq!(later.status, 202, "{later:?}");
    let status = api
        .get("/v1/components/counter/workers/later/invocations/at-once-later")
        .await?;
    assert_eq!(status.body["status"], "pending");
    assert_eq!(status.body["due_at_ms"], at);
    let done = api
        .get("/v1/components/counter/workers/later/invocations/at-once-later?wait_ms=10000")
        .await?;
    assert_eq!(done.body["status"], "completed", "{done:?}");
    assert!(now_ms() >= at, "not before it was due");
    let refused = api
        .post_json(
            "/v1/components/counter/workers/later/invoke",
            &json!({ "function": "add", "params": [1], "schedule_at": at }),
            None,
        )
        .await?;
    assert_eq!(refused.status, 400);

    // Every second.
    let created = api
        .post_json(
            "/v1/components/counter/workers/w/schedules",
            &json!({ "cron": "* * * * * *", "function": "add", "params": [1] }),
            None,
        )
        .await?;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_str().unwrap_or_default().to_string();
    for (bad, code) in [
        (
            json!({ "cron": "every day", "function": "add", "params": [1] }),
            "invalid_schedule",
        ),
        (
            json!({ "cron": "* * * * * *", "function": "nope" }),
            "unknown_function",
        ),
        (
            json!({ "cron": "* * * * * *", "function": "add", "params": ["x"] }),
            "invalid_params",
        ),
    ] {
        let reply = api
            .post_json("/v1/components/counter/workers/w/schedules", &bad, None)
            .await?;
        assert_eq!((reply.status, reply.code()), (400, code), "{bad}");
    }
    wait_for("three ticks", async || {
        Ok(ticks(&api, "w", &id).await?.len() >= 3)
    })
    .await?;
    let paused = api
        .post_json(
            &format!("/v1/components/counter/workers/w/schedules/{id}/pause"),
            &json!({}),
            None,
        )
        .await?;
    assert_eq!(paused.body["paused"], true);
    // A tick accepted just before the pause may still be finishing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_pause = ticks(&api, "w", &id).await?;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(ticks(&api, "w", &id).await?, at_pause, "paused: no tick");

    // Across a crash: resumed, it goes on; every tick ran once.
    let server = server.restart()?;
    let api = api.at(&server.url);
    let resumed = api
        .post_json(
            &format!("/v1/components/counter/workers/w/schedules/{id}/resume"),
            &json!({}),
            None,
        )
        .await?;
    assert_eq!(resumed.body["paused"], false, "{resumed:?}");
    let before = at_pause.len();
    wait_for("ticks after the restart", async || {
        Ok(ticks(&api, "w", &id).await?.len() >= before + 2)
    })
    .await?;
    let all = ticks(&api, "w", &id).await?;
    let mut distinct = all.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        all.len(),
        "one invocation per tick: {all:?}"
    );
    let listed = api
        .get("/v1/components/counter/workers/w/schedules")
        .await?;
    let fired = listed.body["schedules"][0]["fired"].as_u64().unwrap_or(0);
    assert!(fired as usize >= all.len(), "{listed:?}");
    let value: Value = api.call("counter", "w", "get", json!([])).await?;
    assert_eq!(
        value.as_u64(),
        Some(all.len() as u64),
        "each tick added once"
    );

    let deleted = api
        .delete(&format!("/v1/components/counter/workers/w/schedules/{id}"))
        .await?;
    assert_eq!(deleted.status, 204);
    let listed = api
        .get("/v1/components/counter/workers/w/schedules")
        .await?;
    assert_eq!(listed.body["schedules"], json!([]));
    let missing = api
        .post_json(
            &format!("/v1/components/counter/workers/w/schedules/{id}/pause"),
            &json!({}),
            None,
        )
        .await?;
    assert_eq!(
        (missing.status, missing.code()),
        (404, "schedule_not_found")
    );
    Ok(())
}
