//! The rest of the public API: listing and deleting components and workers, interrupting and
//! resuming workers, accepting invocations to run later and asking for their outcome, reading
//! and following logs, moving a worker between versions, and parameters as WAVE text.

use std::time::{Duration, Instant};

use futures::StreamExt;
use invicta_tests::{Api, Server, component};
use serde_json::{Value, json};

use crate::INVICTA;

async fn start() -> anyhow::Result<(tempfile::TempDir, Server, Api)> {
    let data = tempfile::tempdir()?;
    let config = data.path().join("invicta.toml");
    // Long burns for the interrupt test: fuel is not what stops them.
    std::fs::write(
        &config,
        "[executor]\nfuel_per_invocation = 1000000000000\ninvocation_timeout_ms = 60000\n",
    )?;
    let server = Server::start_with(
        INVICTA.as_ref(),
        &data.path().join("data"),
        &["--config", &config.to_string_lossy()],
    )?;
    let api = server.operator().new_tenant("control", "unlimited").await?;
    Ok((data, server, api))
}

#[tokio::test]
async fn components_and_workers_are_listed_and_deleted() -> anyhow::Result<()> {
    let (_data, _server, api) = start().await?;
    api.upload("counter", component("counter")).await?;
    api.upload("logger", component("logger")).await?;
    let list = api.get("/v1/components").await?;
    let names: Vec<&str> = list.body["components"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["counter", "logger"]);

    for name in ["b1", "a3", "a1", "a2", "c1"] {
        let created = api
            .post_json(
                "/v1/components/counter/workers",
                &json!({ "name": name }),
                None,
            )
            .await?;
        assert_eq!(created.status, 201, "{created:?}");
    }
    api.call("counter", "a2", "add", json!([5])).await?;
    let page = api
        .get("/v1/components/counter/workers?prefix=a&limit=2")
        .await?;
    let names = |reply: &Value| -> Vec<String> {
        reply["workers"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .filter_map(|w| w["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names(&page.body), ["a1", "a2"]);
    assert_eq!(page.body["next"], "a2");
    let rest = api
        .get("/v1/components/counter/workers?prefix=a&limit=2&cursor=a2")
        .await?;
    assert_eq!(names(&rest.body), ["a3"]);
    assert_eq!(rest.body["next"], Value::Null);
    let active = api
        .get("/v1/components/counter/workers?status=active")
        .await?;
    assert_eq!(names(&active.body), ["a2"]);
    for bad in ["status=sleeping", "limit=0", "limit=5000", "colour=red"] {
        let reply = api
            .get(&format!("/v1/components/counter/workers?{bad}"))
            .await?;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_query"),
            "{bad}"
        );
    }

    // A component in use cannot go; its workers can, with everything they had.
    let refused = api.delete("/v1/components/counter").await?;
    assert_eq!((refused.status, refused.code()), (409, "component_in_use"));
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("5 worker(s)")),
        "{refused:?}"
    );
    let before = api.get("/v1/usage").await?;
    assert_eq!(before.body["workers"], 5);
    for name in ["a1", "a2", "a3", "b1", "c1"] {
        let deleted = api
            .delete(&format!("/v1/components/counter/workers/{name}"))
            .await?;
        assert_eq!(deleted.status, 204, "{deleted:?}");
    }
    let gone = api.get("/v1/components/counter/workers/a2").await?;
    assert_eq!((gone.status, gone.code()), (404, "worker_not_found"));
    // a2 was active: its actor answered for it until it was deleted, not any more.
    let invoked = api
        .post_json(
            "/v1/components/counter/workers/a2/invoke",
            &json!({ "function": "add", "params": [1], "create": false }),
            None,
        )
        .await?;
    assert_eq!((invoked.status, invoked.code()), (404, "worker_not_found"));
    let again = api.delete("/v1/components/counter/workers/a2").await?;
    assert_eq!(again.status, 404);
    let after = api.get("/v1/usage").await?;
    assert_eq!(after.body["workers"], 0);
    assert_eq!(after.body["stored_bytes"]["oplog_bytes"], 0);

    // A worker made again under a deleted name starts afresh.
    assert_eq!(api.call("counter", "a2", "add", json!([1])).await?, 1);
    assert_eq!(
        api.delete("/v1/components/counter/workers/a2")
            .await?
            .status,
        204
    );
    assert_eq!(api.delete("/v1/components/counter").await?.status, 204);
    assert_eq!(api.get("/v1/components/counter").await?.status, 404);
    let usage = api.get("/v1/usage").await?;
    assert_eq!(usage.body["components"], 1);
    assert_eq!(
        usage.body["component_bytes"],
        component("logger").len() as u64
    );
    Ok(())
}

#[tokio::test]
async fn enqueued_invocations_run_in_order_and_report_by_key() -> anyhow::Result<()> {
    let (_data, _server, api) = start().await?;
    api.upload("counter", component("counter")).await?;
    let path = "/v1/components/counter/workers/w/enqueue";
    let mut keys = Vec::new();
    for i in 1..=3 {
        let reply = api
            .post_json(path, &json!({ "function": "add", "params": [i] }), None)
            .await?;
        assert_eq!(reply.status, 202, "{reply:?}");
        assert_eq!(reply.body["accepted"], true);
        keys.push(
            reply.body["idempotency_key"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let mut results = Vec::new();
    for key in &keys {
        let status = api
            .get(&format!(
                "/v1/components/counter/workers/w/invocations/{key}?wait_ms=10000"
            ))
            .await?;
        assert_eq!(status.body["status"], "completed", "{status:?}");
        results.push(status.body["result"].clone());
    }
    assert_eq!(results, [json!(1), json!(3), json!(6)], "in order");

    // A key is accepted once.
    let keyed = api
        .post_json(
            path,
            &json!({ "function": "add", "params": [10] }),
            Some("once"),
        )
        .await?;
    assert_eq!(keyed.status, 202);
    let location = keyed.body["location"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let done = api.get(&format!("{location}?wait_ms=10000")).await?;
    assert_eq!(done.body["result"], 16);
    let twice = api
        .post_json(
            path,
            &json!({ "function": "add", "params": [10] }),
            Some("once"),
        )
        .await?;
    assert_eq!(
        (twice.status, twice.body["accepted"].clone()),
        (202, json!(false))
    );
    assert_eq!(api.call("counter", "w", "get", json!([])).await?, 16);

    // Bad input is refused before anything is accepted.
    let bad = api
        .post_json(path, &json!({ "function": "add", "params": ["x"] }), None)
        .await?;
    assert_eq!((bad.status, bad.code()), (400, "invalid_params"));
    let unknown = api
        .get("/v1/components/counter/workers/w/invocations/nope")
        .await?;
    assert_eq!(
        (unknown.status, unknown.code()),
        (404, "invocation_not_found")
    );
    Ok(())
}

#[tokio::test]
async fn accepted_invocations_survive_a_crash() -> anyhow::Result<()> {
    let (data, server, api) = start().await?;
    api.upload("burner", component("burner")).await?;
    let mut keys = Vec::new();
    for i in 0..6 {
        let key = format!("job-{i}");
        let reply = api
            .post_json(
                "/v1/components/burner/workers/w/enqueue",
                &json!({ "function": "add", "params": [1] }),
                Some(&key),
            )
            .await?;
        assert_eq!(reply.status, 202);
        keys.push(key);
        // One long one among them, so that the kill lands while work is pending.
        if i == 2 {
            api.post_json(
                "/v1/components/burner/workers/w/enqueue",
                &json!({ "function": "burn", "params": [3_000_000] }),
                Some("long"),
            )
            .await?;
        }
    }
    server.kill()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let api = api.at(&server.url);
    for key in &keys {
        let status = api
            .get(&format!(
                "/v1/components/burner/workers/w/invocations/{key}?wait_ms=30000"
            ))
            .await?;
        assert_eq!(status.body["status"], "completed", "{key}: {status:?}");
    }
    assert_eq!(
        api.call("burner", "w", "get", json!([])).await?,
        6,
        "each accepted once, run once"
    );
    Ok(())
}

#[tokio::test]
async fn interrupt_stops_the_running_invocation_and_the_worker_goes_on() -> anyhow::Result<()> {
    let (_data, _server, api) = start().await?;
    api.upload("burner", component("burner")).await?;
    assert_eq!(api.call("burner", "w", "add", json!([7])).await?, 7);
    let nothing = api
        .post_json(
            "/v1/components/burner/workers/w/interrupt",
            &json!({}),
            None,
        )
        .await?;
    assert_eq!(nothing.body["interrupted"], false);
    let enqueued = api
        .post_json(
            "/v1/components/burner/workers/w/enqueue",
            &json!({ "function": "burn", "params": [u64::MAX / 2] }),
            Some("forever"),
        )
        .await?;
    assert_eq!(enqueued.status, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = api
            .post_json(
                "/v1/components/burner/workers/w/interrupt",
                &json!({}),
                None,
            )
            .await?;
        if reply.body["interrupted"] == true {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the burn never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = api
        .get("/v1/components/burner/workers/w/invocations/forever?wait_ms=10000")
        .await?;
    assert_eq!(status.body["status"], "failed", "{status:?}");
    assert_eq!(status.body["error"]["code"], "interrupted");
    // The worker keeps its state and takes the next invocation.
    assert_eq!(api.call("burner", "w", "add", json!([1])).await?, 8);
    let resumed = api
        .post_json("/v1/components/burner/workers/w/resume", &json!({}), None)
        .await?;
    assert_eq!(resumed.body["status"], "active", "{resumed:?}");
    Ok(())
}

#[tokio::test]
async fn logs_are_read_and_followed() -> anyhow::Result<()> {
    let (_data, server, api) = start().await?;
    api.upload("logger", component("logger")).await?;
    api.call("logger", "w", "log", json!(["first"])).await?;
    api.call("logger", "w", "log", json!(["second"])).await?;
    let logs = api.get("/v1/components/logger/workers/w/logs").await?;
    let texts: Vec<String> = logs.body["lines"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l["text"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(texts.concat().contains("first"), "{logs:?}");
    assert!(texts.concat().contains("second"), "{logs:?}");
    let missing = api.get("/v1/components/logger/workers/nobody/logs").await?;
    assert_eq!(missing.status, 404);

    // Following: the lines so far, then new ones as they are recorded.
    let response = api
        .http
        .get(format!(
            "{}/v1/components/logger/workers/w/logs?follow=true",
            server.url
        ))
        .bearer_auth(api.key.clone().unwrap_or_default())
        .send()
        .await?;
    assert!(
        response.headers()["content-type"]
            .to_str()?
            .starts_with("text/event-stream")
    );
    let mut stream = response.bytes_stream();
    api.call("logger", "w", "log", json!(["third"])).await?;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("third") {
        anyhow::ensure!(Instant::now() < deadline, "no third line in {seen}");
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk?)),
            _ => anyhow::bail!("the stream stopped: {seen}"),
        }
    }
    assert!(seen.contains("event: log"), "{seen}");
    assert!(seen.contains("id: "), "{seen}");
    assert!(seen.find("first") < seen.find("third"), "{seen}");
    Ok(())
}

/// The component's bytes with a custom section appended: a new version that behaves the same.
fn same_code_new_bytes(name: &str) -> Vec<u8> {
    let mut bytes = component(name);
    let payload = b"\x07versionnext";
    bytes.push(0);
    bytes.push(payload.len() as u8);
    bytes.extend_from_slice(payload);
    bytes
}

#[tokio::test]
async fn workers_move_only_to_versions_their_history_replays_on() -> anyhow::Result<()> {
    let (_data, _server, api) = start().await?;
    assert_eq!(
        api.upload("counter", component("counter")).await?.status,
        201
    );
    let v2 = api
        .upload("counter", same_code_new_bytes("counter"))
        .await?;
    assert_eq!((v2.status, v2.body["version"].clone()), (201, json!(2)));
    let created = api
        .post_json(
            "/v1/components/counter/workers",
            &json!({ "name": "w", "version": 1 }),
            None,
        )
        .await?;
    assert_eq!(created.body["component_version"], 1, "{created:?}");
    assert_eq!(api.call("counter", "w", "add", json!([4])).await?, 4);
    let moved = api
        .put_json(
            "/v1/components/counter/workers/w/version",
            &json!({ "version": 2 }),
        )
        .await?;
    assert_eq!(moved.status, 200, "{moved:?}");
    assert_eq!(moved.body["component_version"], 2);
    assert_eq!(api.call("counter", "w", "add", json!([1])).await?, 5);

    // Another component under the same name cannot take the worker's history.
    assert_eq!(
        api.upload("counter", component("logger")).await?.status,
        201
    );
    let refused = api
        .put_json(
            "/v1/components/counter/workers/w/version",
            &json!({ "version": 3 }),
        )
        .await?;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "incompatible_version")
    );
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`add`")),
        "{refused:?}"
    );
    let status = api.get("/v1/components/counter/workers/w").await?;
    assert_eq!(status.body["component_version"], 2);
    assert_eq!(api.call("counter", "w", "get", json!([])).await?, 5);
    let missing = api
        .put_json(
            "/v1/components/counter/workers/w/version",
            &json!({ "version": 9 }),
        )
        .await?;
    assert_eq!((missing.status, missing.code()), (404, "version_not_found"));
    Ok(())
}

#[tokio::test]
async fn parameters_may_be_wave_text() -> anyhow::Result<()> {
    let (_data, _server, api) = start().await?;
    api.upload("types", component("types")).await?;
    let reply = api
        .post_json(
            "/v1/components/types/workers/w/invoke",
            &json!({ "function": "echo-u8", "wave": ["42"] }),
            None,
        )
        .await?;
    assert_eq!(
        (reply.status, reply.body["result"].clone()),
        (200, json!(42))
    );
    for (wave, code) in [
        (json!(["300"]), "invalid_params"),
        (json!(["1", "2"]), "invalid_params"),
        (
            json!([format!("{}1{}", "[".repeat(100), "]".repeat(100))]),
            "invalid_params",
        ),
    ] {
        let reply = api
            .post_json(
                "/v1/components/types/workers/w/invoke",
                &json!({ "function": "echo-u8", "wave": wave }),
                None,
            )
            .await?;
        assert_eq!((reply.status, reply.code()), (400, code), "{wave}");
    }
    let person = api
        .post_json(
            "/v1/components/types/workers/w/invoke",
            &json!({
                "function": "echo-record",
                "wave": [r#"{name: "Ada", age: 36, email: none, tags: ["x", "y"]}"#],
            }),
            None,
        )
        .await?;
    assert_eq!(
        person.body["result"],
        json!({ "name": "Ada", "age": 36, "email": null, "tags": ["x", "y"] }),
        "{person:?}"
    );
    let both = api
        .post_json(
            "/v1/components/types/workers/w/invoke",
            &json!({ "function": "echo-u8", "params": [1], "wave": ["1"] }),
            None,
        )
        .await?;
    assert_eq!(both.status, 400);
    Ok(())
}

/// A worker reverted by its last invocation is where it was before it, also after a SIGKILL:
/// the skipped entries stay in the oplog behind a `jump`, and the reverted invocation's key may
/// run again. A point inside an invocation is refused.
#[tokio::test]
async fn a_reverted_worker_forgets_its_last_invocations_but_keeps_their_entries()
-> anyhow::Result<()> {
    let (data, server, api) = start().await?;
    api.upload("counter", component("counter")).await?;
    for (delta, key) in [(1, "a"), (2, "b"), (4, "c")] {
        let reply = api
            .invoke("counter", "r", "add", json!([delta]), Some(key))
            .await?;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let oplog = |api: Api| async move {
        let reply = api.get("/v1/components/counter/workers/r/oplog").await?;
        anyhow::Ok(
            reply.body["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        )
    };
    let before = oplog(api.clone()).await?;

    let inside = before
        .iter()
        .find(|e| e["kind"] == "exported_function_invoked")
        .and_then(|e| e["index"].as_u64())
        .unwrap_or_default();
    let refused = api
        .post_json(
            "/v1/components/counter/workers/r/revert",
            &json!({ "to": inside }),
            None,
        )
        .await?;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "invalid_revert"),
        "{refused:?}"
    );

    let reverted = api
        .post_json(
            "/v1/components/counter/workers/r/revert",
            &json!({ "last_invocations": 1 }),
            None,
        )
        .await?;
    assert_eq!(reverted.status, 200, "{reverted:?}");
    let last = before
        .last()
        .and_then(|e| e["index"].as_u64())
        .unwrap_or_default();
    assert_eq!(reverted.body["skipped_to"], last, "{reverted:?}");
    assert_eq!(api.call("counter", "r", "get", json!([])).await?, json!(3));
    let forgotten = api
        .get("/v1/components/counter/workers/r/invocations/c")
        .await?;
    assert_eq!(forgotten.status, 404, "{forgotten:?}");
    let again = api
        .invoke("counter", "r", "add", json!([8]), Some("c"))
        .await?;
    assert_eq!(again.body["result"], json!(11), "{again:?}");

    // Every entry is still there, behind a jump.
    let after = oplog(api.clone()).await?;
    assert!(after.len() > before.len(), "{after:?}");
    assert_eq!(&after[..before.len()], &before[..]);
    assert!(after.iter().any(|e| e["kind"] == "jump"), "{after:?}");

    // A crash: the replay skips what the revert skipped.
    server.kill()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let api = api.at(&server.url);
    assert_eq!(api.call("counter", "r", "get", json!([])).await?, json!(11));
    Ok(())
}

/// A fork has its source's history up to the point, then its own; both go on apart, across a
/// SIGKILL. A point inside an invocation, and a name taken, are refused.
#[tokio::test]
async fn a_forked_worker_has_its_sources_history_then_its_own() -> anyhow::Result<()> {
    let (data, server, api) = start().await?;
    api.upload("counter", component("counter")).await?;
    for (delta, key) in [(1, "a"), (2, "b"), (4, "c")] {
        let reply = api
            .invoke("counter", "src", "add", json!([delta]), Some(key))
            .await?;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let entries = api
        .get("/v1/components/counter/workers/src/oplog")
        .await?
        .body["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ends: Vec<u64> = entries
        .iter()
        .filter(|e| e["kind"] == "exported_function_completed")
        .filter_map(|e| e["index"].as_u64())
        .collect();
    let fork = |name: &str, at: Option<u64>| {
        let (api, name) = (api.clone(), name.to_string());
        async move {
            let mut body = json!({ "name": name });
            if let Some(at) = at {
                body["at"] = json!(at);
            }
            api.post_json("/v1/components/counter/workers/src/fork", &body, None)
                .await
        }
    };
    // After `add(2)`: the fork holds 1 + 2.
    let forked = fork("fk", Some(ends[1])).await?;
    assert_eq!(forked.status, 201, "{forked:?}");
    assert_eq!(forked.body["forked_at"], ends[1], "{forked:?}");
    assert_eq!(api.call("counter", "fk", "get", json!([])).await?, json!(3));
    assert_eq!(
        api.call("counter", "fk", "add", json!([10])).await?,
        json!(13)
    );
    assert_eq!(
        api.call("counter", "src", "get", json!([])).await?,
        json!(7)
    );
    // By default, the whole history.
    assert_eq!(fork("whole", None).await?.status, 201);
    assert_eq!(
        api.call("counter", "whole", "get", json!([])).await?,
        json!(7)
    );
    let inside = entries
        .iter()
        .find(|e| e["kind"] == "exported_function_invoked")
        .and_then(|e| e["index"].as_u64());
    let refused = fork("mid", inside).await?;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "invalid_fork"),
        "{refused:?}"
    );
    let taken = fork("fk", None).await?;
    assert_eq!(
        (taken.status, taken.code()),
        (409, "worker_exists"),
        "{taken:?}"
    );

    server.kill()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let api = api.at(&server.url);
    assert_eq!(
        api.call("counter", "fk", "get", json!([])).await?,
        json!(13)
    );
    assert_eq!(
        api.call("counter", "src", "get", json!([])).await?,
        json!(7)
    );
    Ok(())
}

/// A bulk update moves a component's workers page by page, each one whose history replays on
/// the version, and says for every worker what happened; those refused stay where they were.
#[tokio::test]
async fn a_bulk_update_moves_every_worker_it_can_and_says_which() -> anyhow::Result<()> {
    let (_data, _server, api) = start().await?;
    api.upload("counter", component("counter")).await?;
    api.upload("counter", same_code_new_bytes("counter"))
        .await?;
    for (worker, delta) in [("a", 1), ("b", 2)] {
        let created = api
            .post_json(
                "/v1/components/counter/workers",
                &json!({ "name": worker, "version": 1 }),
                None,
            )
            .await?;
        assert_eq!(created.status, 201, "{created:?}");
        api.call("counter", worker, "add", json!([delta])).await?;
    }
    api.post_json(
        "/v1/components/counter/workers",
        &json!({ "name": "c", "version": 2 }),
        None,
    )
    .await?;
    let update = |body: Value| {
        let api = api.clone();
        async move {
            api.post_json("/v1/components/counter/update", &body, None)
                .await
        }
    };
    let outcomes = |page: &Value| -> Vec<(String, String)> {
        page["results"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|r| {
                        (
                            r["worker"].as_str().unwrap_or_default().to_string(),
                            r["outcome"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // A dry run says what would happen, and moves nothing.
    let dry = update(json!({ "version": 2, "dry_run": true })).await?;
    assert_eq!(
        outcomes(&dry.body),
        [
            ("a".into(), "would_update".into()),
            ("b".into(), "would_update".into()),
            ("c".into(), "unchanged".into())
        ]
    );
    let planned = api
        .put_json(
            "/v1/components/counter/workers/a/version",
            &json!({ "version": 2, "dry_run": true }),
        )
        .await?;
    assert_eq!(planned.status, 200, "{planned:?}");
    assert_eq!(planned.body["method"], "replay", "{planned:?}");
    assert_eq!(
        planned.body["checked_functions"],
        json!(["add"]),
        "{planned:?}"
    );
    assert_eq!(
        api.get("/v1/components/counter/workers/a").await?.body["component_version"],
        1,
        "a dry run moves nothing"
    );
    let first = update(json!({ "version": 2, "limit": 2 })).await?;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        outcomes(&first.body),
        [
            ("a".into(), "updated".into()),
            ("b".into(), "updated".into())
        ]
    );
    let second = update(json!({ "version": 2, "after": first.body["next"] })).await?;
    assert_eq!(outcomes(&second.body), [("c".into(), "unchanged".into())]);
    assert!(second.body.get("next").is_none(), "{second:?}");
    assert_eq!(api.call("counter", "b", "get", json!([])).await?, json!(2));

    // Another component's code: the workers with a history stay, the one without moves.
    api.upload("counter", component("logger")).await?;
    let third = update(json!({ "version": 3 })).await?;
    assert_eq!(
        outcomes(&third.body),
        [
            ("a".into(), "refused".into()),
            ("b".into(), "refused".into()),
            ("c".into(), "updated".into())
        ]
    );
    assert_eq!(third.body["results"][0]["code"], "incompatible_version");
    assert_eq!(
        api.get("/v1/components/counter/workers/a").await?.body["component_version"],
        2
    );
    let missing = update(json!({ "version": 9 })).await?;
    assert_eq!((missing.status, missing.code()), (404, "version_not_found"));
    Ok(())
}
