//! An invocation's limits travel with it: recorded when it starts, restored when it resumes
//! after a crash. A worker killed mid-call on a plan that lists the hosts it may reach still
//! may not reach any other once it resumes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use invicta_tests::{Configured, Server, component, eventually};
use serde_json::json;

use crate::INVICTA;

/// A loopback server: `/hold` holds its first request for ever (answering later ones at once),
/// `/effect` counts its requests.
async fn endpoints() -> anyhow::Result<(u16, Arc<AtomicU32>, Arc<AtomicU32>)> {
    let held = Arc::new(AtomicU32::new(0));
    let effects = Arc::new(AtomicU32::new(0));
    let app = axum::Router::new()
        .route(
            "/hold",
            axum::routing::get({
                let held = held.clone();
                move || async move {
                    if held.fetch_add(1, Ordering::SeqCst) == 0 {
                        std::future::pending::<()>().await;
                    }
                    "released"
                }
            }),
        )
        .route(
            "/effect",
            axum::routing::get({
                let effects = effects.clone();
                move || async move {
                    effects.fetch_add(1, Ordering::SeqCst);
                    "effect"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((port, held, effects))
}

#[tokio::test]
async fn a_resumed_invocation_keeps_its_plans_egress_hosts() -> anyhow::Result<()> {
    let (port, held, effects) = endpoints().await?;
    let data = tempfile::tempdir()?;
    // The executor would let the worker reach both names; its tenant's plan lists one.
    let configured = Configured::new(
        INVICTA.as_ref(),
        data.path(),
        "[executor.http]\nallow_private_hosts = [\"127.0.0.1\", \"localhost\"]\ntimeout_ms = 5000\n",
    )?;
    let server = configured.start()?;
    let operator = server.operator();
    let mut plan = operator.get("/v1/admin/plans").await?.body["plans"]
        .as_array()
        .and_then(|plans| plans.iter().find(|p| p["name"] == "pro").cloned())
        .ok_or_else(|| anyhow::anyhow!("the pro plan"))?;
    plan["name"] = json!("narrow");
    plan["egress_hosts"] = json!(["127.0.0.1"]);
    let put = operator.put_json("/v1/admin/plans/narrow", &plan).await?;
    assert_eq!(put.status, 200, "{put:?}");
    let api = operator.new_tenant("narrow", "narrow").await?;
    api.upload("fetcher", component("fetcher")).await?;

    let urls = json!([[
        format!("http://127.0.0.1:{port}/hold"),
        format!("http://localhost:{port}/effect"),
    ]]);
    let call = {
        let (api, urls) = (api.clone(), urls.clone());
        tokio::spawn(async move {
            api.invoke("fetcher", "w", "fetch-each", urls, Some("each"))
                .await
        })
    };
    eventually("the first request is held", Duration::from_secs(20), || {
        let held = held.clone();
        async move { Ok((held.load(Ordering::SeqCst) >= 1).then_some(())) }
    })
    .await?;
    server.kill()?;
    call.abort();

    // Recovery resumes the invocation: the held request is sent again (same key) and answered;
    // the next one goes to a host the plan does not list, and is denied as it would have been.
    let server = configured.start()?;
    let api = api.at(&server.url);
    let reply = api
        .invoke("fetcher", "w", "fetch-each", urls, Some("each"))
        .await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    let results = &reply.body["result"];
    assert_eq!(results[0]["ok"], "200 released", "{reply:?}");
    assert!(
        results[1]["err"]
            .as_str()
            .is_some_and(|e| e.contains("HttpRequestDenied")),
        "{reply:?}"
    );
    assert_eq!(
        effects.load(Ordering::SeqCst),
        0,
        "a denied host was reached"
    );
    assert_eq!(held.load(Ordering::SeqCst), 2);
    drop(server);
    Ok(())
}

/// An idempotency key is bound to its request: the same key with other parameters or another
/// function is refused (409), on `invoke` and on `enqueue`; the same request again gets the
/// first answer.
#[tokio::test]
async fn a_reused_idempotency_key_is_refused() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let api = server.operator().new_tenant("keys", "pro").await?;
    api.upload("counter", component("counter")).await?;
    let first = api
        .invoke("counter", "c", "add", json!([5]), Some("k1"))
        .await?;
    assert_eq!((first.status, &first.body["result"]), (200, &json!(5)));
    let again = api
        .invoke("counter", "c", "add", json!([5]), Some("k1"))
        .await?;
    assert_eq!((again.status, &again.body["result"]), (200, &json!(5)));
    for (function, params) in [("add", json!([6])), ("get", json!([]))] {
        let other = api
            .invoke("counter", "c", function, params, Some("k1"))
            .await?;
        assert_eq!(
            (other.status, other.code()),
            (409, "idempotency_key_reused"),
            "{other:?}"
        );
    }
    let enqueue = |params: serde_json::Value| {
        let api = api.clone();
        async move {
            api.post_json(
                "/v1/components/counter/workers/c/enqueue",
                &json!({ "function": "add", "params": params }),
                Some("k2"),
            )
            .await
        }
    };
    assert_eq!(enqueue(json!([1])).await?.status, 202);
    let reused = enqueue(json!([2])).await?;
    assert_eq!(
        (reused.status, reused.code()),
        (409, "idempotency_key_reused"),
        "{reused:?}"
    );
    // The same enqueue again is accepted as the one before, and runs once.
    let same = enqueue(json!([1])).await?;
    assert!(same.status == 202 || same.status == 200, "{same:?}");
    let total = eventually("the enqueued addition ran", Duration::from_secs(20), || {
        let api = api.clone();
        async move {
            let got = api.call("counter", "c", "get", json!([])).await?;
            Ok((got == json!(6)).then_some(got))
        }
    })
    .await?;
    assert_eq!(total, json!(6));
    // The key used by enqueue is bound too, for invoke.
    let cross = api
        .invoke("counter", "c", "add", json!([9]), Some("k2"))
        .await?;
    assert_eq!(
        (cross.status, cross.code()),
        (409, "idempotency_key_reused")
    );
    Ok(())
}

/// What one invocation may carry is recorded whatever its size within the API's limits: a
/// result or parameters larger than one store value (100 kB) are kept whole, never a 500, and
/// the worker goes on answering.
#[tokio::test]
async fn large_results_and_params_are_recorded() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = server.operator().new_tenant("large", "pro").await?;
    api.upload("types", component("types")).await?;
    let big = "x".repeat(300_000);
    let first = api
        .invoke("types", "t", "echo-string", json!([big]), Some("big"))
        .await?;
    assert_eq!(first.status, 200, "{}", first.code());
    assert_eq!(first.body["result"].as_str().map(str::len), Some(300_000));
    let again = api
        .invoke("types", "t", "echo-string", json!([big]), Some("big"))
        .await?;
    assert_eq!((again.status, &again.body), (200, &first.body));
    let queued = api
        .post_json(
            "/v1/components/types/workers/t/enqueue",
            &json!({ "function": "echo-string", "params": [big] }),
            Some("queued"),
        )
        .await?;
    assert_eq!(queued.status, 202, "{queued:?}");
    let done = eventually(
        "the large enqueued call completes",
        Duration::from_secs(20),
        || {
            let api = api.clone();
            async move {
                let state = api
                    .get("/v1/components/types/workers/t/invocations/queued")
                    .await?;
                Ok((state.body["status"] == "completed").then_some(state))
            }
        },
    )
    .await?;
    assert_eq!(
        done.body["result"].as_str().map(str::len),
        Some(300_000),
        "{}",
        done.body["status"]
    );
    // After a restart the stored outcome is read back whole.
    server.kill()?;
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = api.at(&server.url);
    let after = api
        .invoke("types", "t", "echo-string", json!([big]), Some("big"))
        .await?;
    assert_eq!((after.status, &after.body), (200, &first.body));
    assert_eq!(
        api.call("types", "t", "echo-u8", json!([7])).await?,
        json!(7)
    );
    drop(server);
    Ok(())
}

/// Schedules are bounded: their parameters (a typed 400 naming the limit) and how many one
/// worker may have (a quota).
#[tokio::test]
async fn schedules_are_bounded() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let api = server.operator().new_tenant("timers", "pro").await?;
    api.upload("types", component("types")).await?;
    assert_eq!(
        api.call("types", "t", "echo-u8", json!([1])).await?,
        json!(1)
    );
    let path = "/v1/components/types/workers/t/schedules";
    let big = api
        .post_json(
            path,
            &json!({ "cron": "0 0 * * * *", "function": "echo-string", "params": ["x".repeat(200_000)] }),
            None,
        )
        .await?;
    assert_eq!(
        (big.status, big.code()),
        (400, "invalid_schedule"),
        "{big:?}"
    );
    assert!(
        big.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("65536")),
        "{big:?}"
    );
    for n in 0..100 {
        let made = api
            .post_json(
                path,
                &json!({ "cron": "0 0 * * * *", "function": "echo-u8", "params": [n] }),
                None,
            )
            .await?;
        assert_eq!(made.status, 201, "schedule {n}: {made:?}");
    }
    let over = api
        .post_json(
            path,
            &json!({ "cron": "0 0 * * * *", "function": "echo-u8", "params": [1] }),
            None,
        )
        .await?;
    assert_eq!(
        (over.status, over.code()),
        (429, "quota_exceeded"),
        "{over:?}"
    );
    assert_eq!(over.body["quota"], "schedules_per_worker");
    assert_eq!(over.body["limit"], 100);
    Ok(())
}

/// Invoking a worker that does not exist creates it, unless the caller says not to.
#[tokio::test]
async fn a_call_may_forbid_creating_its_worker() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let api = server.operator().new_tenant("careful", "pro").await?;
    api.upload("counter", component("counter")).await?;
    for route in ["invoke", "enqueue"] {
        let refused = api
            .post_json(
                &format!("/v1/components/counter/workers/ghost/{route}"),
                &json!({ "function": "add", "params": [1], "create": false }),
                None,
            )
            .await?;
        assert_eq!(
            (refused.status, refused.code()),
            (404, "worker_not_found"),
            "{route}: {refused:?}"
        );
    }
    let absent = api.get("/v1/components/counter/workers/ghost").await?;
    assert_eq!(absent.status, 404, "nothing was created: {absent:?}");
    // By default the call creates it; afterwards `create: false` finds it.
    assert_eq!(
        api.call("counter", "ghost", "add", json!([2])).await?,
        json!(2)
    );
    let found = api
        .post_json(
            "/v1/components/counter/workers/ghost/invoke",
            &json!({ "function": "add", "params": [3], "create": false }),
            None,
        )
        .await?;
    assert_eq!((found.status, &found.body["result"]), (200, &json!(5)));
    Ok(())
}

/// A component whose memories start larger than a worker on the plan may have is refused at
/// upload, before it is compiled, as a quota naming `memory_per_worker`, its limit and what the
/// component needs; within the plan it runs, pooled up to a pool slot and on demand above.
#[tokio::test]
async fn a_component_needing_more_memory_than_the_plan_allows_is_refused_by_name()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let operator = server.operator();
    const MIB: u64 = 1024 * 1024;
    // 100 MiB of memory: over the free plan's 64 MiB, within the pro plan's 256 MiB.
    let hundred = wat::parse_str("(component (core module (memory 1600)))")?;
    let free = operator.new_tenant("small", "free").await?;
    let refused = free.upload("big", hundred.clone()).await?;
    assert_eq!(
        (refused.status, refused.code()),
        (422, "quota_exceeded"),
        "{refused:?}"
    );
    assert_eq!(refused.body["quota"], "memory_per_worker", "{refused:?}");
    assert_eq!(refused.body["limit"], 64 * MIB, "{refused:?}");
    assert_eq!(refused.body["needed"], 100 * MIB, "{refused:?}");
    let pro = operator.new_tenant("larger", "pro").await?;
    assert_eq!(pro.upload("big", hundred).await?.status, 201);
    // 512 MiB: over the pro plan's 256 MiB; within the unlimited plan's 4 GiB, where it runs
    // in an instance allocated on demand (a pool slot is 256 MiB), across a SIGKILL too.
    let huge = wat::parse_str(
        r#"(component
            (core module $m
                (memory 8192)
                (func (export "pages") (result i32) memory.size))
            (core instance $i (instantiate $m))
            (type $t (func (result u32)))
            (func $pages (type $t) (canon lift (core func $i "pages")))
            (export "pages" (func $pages)))"#,
    )?;
    let refused = pro.upload("huge", huge.clone()).await?;
    assert_eq!(refused.body["quota"], "memory_per_worker", "{refused:?}");
    assert_eq!(refused.body["limit"], 256 * MIB, "{refused:?}");
    assert_eq!(refused.body["needed"], 512 * MIB, "{refused:?}");
    let unlimited = operator.new_tenant("largest", "unlimited").await?;
    assert_eq!(unlimited.upload("huge", huge).await?.status, 201);
    assert_eq!(
        unlimited.call("huge", "w", "pages", json!([])).await?,
        json!(8192)
    );
    let data_dir = server.data_dir.clone();
    server.kill()?;
    let server = Server::start(INVICTA.as_ref(), &data_dir)?;
    let unlimited = unlimited.at(&server.url);
    assert_eq!(
        unlimited.call("huge", "w", "pages", json!([])).await?,
        json!(8192)
    );
    Ok(())
}

/// A background invocation whose run fails for a cause its retry policy calls transient runs
/// again after a backoff, across a SIGKILL during the wait: the first run times out on a
/// request that never answers, the failed run is an `error` entry in the oplog and a count in
/// the invocation's status, and the next run completes. A policy that retries what cannot be
/// retried is refused.
#[tokio::test]
async fn a_transient_failure_is_retried_by_its_policy_across_a_crash() -> anyhow::Result<()> {
    let (port, held, _) = endpoints().await?;
    let data = tempfile::tempdir()?;
    let configured = Configured::new(
        INVICTA.as_ref(),
        data.path(),
        "[executor]\ninvocation_timeout_ms = 1500\n[executor.http]\nallow_private_hosts = [\"127.0.0.1\"]\ntimeout_ms = 20000\n",
    )?;
    let server = configured.start()?;
    let api = server.operator().new_tenant("retrying", "pro").await?;
    api.upload("fetcher", component("fetcher")).await?;
    let url = format!("http://127.0.0.1:{port}/hold");
    let enqueue = |retry: serde_json::Value| {
        let (api, url) = (api.clone(), url.clone());
        async move {
            api.post_json(
                "/v1/components/fetcher/workers/r/enqueue",
                &json!({ "function": "fetch", "params": [url], "retry": retry }),
                Some("retried"),
            )
            .await
        }
    };
    let refused = enqueue(json!({ "max_attempts": 3, "on": ["interrupted"] })).await?;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "invalid_request"),
        "{refused:?}"
    );
    let accepted = enqueue(json!({
        "max_attempts": 3,
        "backoff_min_ms": 3000,
        "backoff_max_ms": 3000,
        "on": ["timeout"],
    }))
    .await?;
    assert_eq!(accepted.status, 202, "{accepted:?}");

    // The first run times out; the invocation waits for its next run, saying why.
    let status = "/v1/components/fetcher/workers/r/invocations/retried";
    let waiting = eventually("a failed run counted", Duration::from_secs(20), || {
        let api = api.clone();
        async move {
            let reply = api.get(status).await?;
            Ok((reply.body["failed_attempts"] == json!(1)).then_some(reply))
        }
    })
    .await?;
    assert_eq!(waiting.body["status"], "pending", "{waiting:?}");
    assert!(
        waiting.body["last_error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("timeout"),
        "{waiting:?}"
    );

    // A crash during the backoff: the restarted server runs it again when due.
    server.kill()?;
    let server = configured.start()?;
    let api = api.at(&server.url);
    let done = eventually("the retried run completes", Duration::from_secs(30), || {
        let api = api.clone();
        async move {
            let reply = api.get(status).await?;
            Ok((reply.body["status"] != "pending").then_some(reply))
        }
    })
    .await?;
    assert_eq!(done.body["status"], "completed", "{done:?}");
    assert!(
        done.body["result"]["ok"]
            .as_str()
            .unwrap_or_default()
            .contains("released"),
        "{done:?}"
    );
    assert_eq!(
        held.load(Ordering::SeqCst),
        2,
        "one held request, one answered"
    );
    let oplog = api.get("/v1/components/fetcher/workers/r/oplog").await?;
    let kinds: Vec<String> = oplog.body["entries"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let failed = kinds.iter().position(|k| k == "error");
    let completed = kinds
        .iter()
        .rposition(|k| k == "exported_function_completed");
    assert!(
        matches!((failed, completed), (Some(f), Some(c)) if f < c),
        "a failed run, then a completed one: {kinds:?}"
    );

    // A plan's policy applies to enqueues that name none; a plan with a policy that cannot be
    // used is refused.
    let (port, held, _) = endpoints().await?;
    let operator = server.operator();
    let mut plan = operator.get("/v1/admin/plans").await?.body["plans"]
        .as_array()
        .and_then(|plans| plans.iter().find(|p| p["name"] == "pro").cloned())
        .unwrap_or_default();
    plan["name"] = json!("patient");
    plan["retry"] = json!({ "max_attempts": 2, "on": ["interrupted"] });
    let bad = operator.put_json("/v1/admin/plans/patient", &plan).await?;
    assert_eq!(bad.status, 400, "{bad:?}");
    plan["retry"] = json!({
        "max_attempts": 2,
        "backoff_min_ms": 100,
        "backoff_max_ms": 100,
    });
    let put = operator.put_json("/v1/admin/plans/patient", &plan).await?;
    assert!(put.status < 300, "{put:?}");
    let patient = operator.new_tenant("patient", "patient").await?;
    patient.upload("fetcher", component("fetcher")).await?;
    let accepted = patient
        .post_json(
            "/v1/components/fetcher/workers/p/enqueue",
            &json!({ "function": "fetch", "params": [format!("http://127.0.0.1:{port}/hold")] }),
            Some("planned"),
        )
        .await?;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let done = eventually(
        "the plan's retry completes",
        Duration::from_secs(30),
        || {
            let patient = patient.clone();
            async move {
                let reply = patient
                    .get("/v1/components/fetcher/workers/p/invocations/planned")
                    .await?;
                Ok((reply.body["status"] != "pending").then_some(reply))
            }
        },
    )
    .await?;
    assert_eq!(done.body["status"], "completed", "{done:?}");
    assert_eq!(
        held.load(Ordering::SeqCst),
        2,
        "one held request, one answered"
    );
    Ok(())
}
