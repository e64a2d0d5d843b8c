//! Tenancy: keys and scopes, isolation between tenants, quotas and rate limits, the operator.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use invicta_tests::{Api, Server, component};
use serde_json::{Value, json};

use crate::INVICTA;

async fn key_with(api: &Api, scopes: &[&str]) -> anyhow::Result<(String, String)> {
    let reply = api
        .post_json(
            "/v1/keys",
            &json!({ "scopes": scopes, "description": "test" }),
            None,
        )
        .await?;
    anyhow::ensure!(reply.status == 201, "{reply:?}");
    let secret = reply.body["key"].as_str().unwrap_or_default().to_string();
    let id = reply.body["id"].as_str().unwrap_or_default().to_string();
    assert!(
        secret.starts_with(&format!("inv_{id}_")),
        "the key shows its id"
    );
    Ok((id, secret))
}

#[tokio::test]
async fn the_security_table() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let operator = server.operator();
    let a = operator.new_tenant("alpha", "pro").await?;
    let b = operator.new_tenant("beta", "pro").await?;
    assert_eq!(a.upload("counter", component("counter")).await?.status, 201);
    assert_eq!(a.call("counter", "w", "add", json!([1])).await?, json!(1));
    // The same names in another tenant are another component and another worker.
    assert_eq!(b.upload("counter", component("counter")).await?.status, 201);
    assert_eq!(b.call("counter", "w", "add", json!([5])).await?, json!(5));
    let b_only = b.upload("logger", component("logger")).await?;
    assert_eq!(b_only.status, 201);

    let read = a.with_key(&key_with(&a, &["read"]).await?.1);
    let invoke = a.with_key(&key_with(&a, &["invoke"]).await?.1);
    let deploy = a.with_key(&key_with(&a, &["deploy"]).await?.1);
    let (revoked_id, revoked_secret) = key_with(&a, &["read", "invoke"]).await?;
    let revoked = a.with_key(&revoked_secret);
    assert_eq!(revoked.get("/v1/components/counter").await?.status, 200);
    assert_eq!(
        a.delete(&format!("/v1/keys/{revoked_id}")).await?.status,
        200
    );
    let (b_key_id, _) = key_with(&b, &["read"]).await?;
    let anonymous = a.anonymous();
    let malformed = a.with_key("not-a-key");
    let unknown = a.with_key(&format!("inv_{}_{}", "1".repeat(12), "2".repeat(64)));
    let forged = a.with_key(&format!("inv_{revoked_id}_{}", "2".repeat(64)));

    let invoke_body = json!({"function": "add", "params": [100]});
    // (who, method, path, body, expected status, expected code)
    type Case<'a> = (
        &'a str,
        &'a Api,
        &'a str,
        String,
        Option<Value>,
        u16,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "no key",
            &anonymous,
            "GET",
            "/v1/components/counter".into(),
            None,
            401,
            "unauthorized",
        ),
        (
            "malformed key",
            &malformed,
            "GET",
            "/v1/components/counter".into(),
            None,
            401,
            "unauthorized",
        ),
        (
            "unknown key",
            &unknown,
            "GET",
            "/v1/components/counter".into(),
            None,
            401,
            "unauthorized",
        ),
        (
            "wrong secret",
            &forged,
            "GET",
            "/v1/components/counter".into(),
            None,
            401,
            "unauthorized",
        ),
        (
            "revoked key",
            &revoked,
            "GET",
            "/v1/components/counter".into(),
            None,
            401,
            "unauthorized",
        ),
        (
            "revoked key invokes",
            &revoked,
            "POST",
            "/v1/components/counter/workers/w/invoke".into(),
            Some(invoke_body.clone()),
            401,
            "unauthorized",
        ),
        (
            "read key invokes",
            &read,
            "POST",
            "/v1/components/counter/workers/w/invoke".into(),
            Some(invoke_body.clone()),
            403,
            "forbidden",
        ),
        (
            "read key creates a worker",
            &read,
            "POST",
            "/v1/components/counter/workers".into(),
            Some(json!({"name": "x"})),
            403,
            "forbidden",
        ),
        (
            "read key makes keys",
            &read,
            "POST",
            "/v1/keys".into(),
            Some(json!({"scopes": ["admin"]})),
            403,
            "forbidden",
        ),
        (
            "invoke key reads the oplog",
            &invoke,
            "GET",
            "/v1/components/counter/workers/w/oplog".into(),
            None,
            403,
            "forbidden",
        ),
        (
            "invoke key lists keys",
            &invoke,
            "GET",
            "/v1/keys".into(),
            None,
            403,
            "forbidden",
        ),
        (
            "deploy key invokes",
            &deploy,
            "POST",
            "/v1/components/counter/workers/w/invoke".into(),
            Some(invoke_body.clone()),
            403,
            "forbidden",
        ),
        (
            "deploy key reads usage",
            &deploy,
            "GET",
            "/v1/usage".into(),
            None,
            403,
            "forbidden",
        ),
        (
            "other tenant's component",
            &a,
            "GET",
            "/v1/components/logger".into(),
            None,
            404,
            "component_not_found",
        ),
        (
            "other tenant's worker",
            &a,
            "GET",
            "/v1/components/logger/workers/w".into(),
            None,
            404,
            "worker_not_found",
        ),
        (
            "other tenant's oplog",
            &a,
            "GET",
            "/v1/components/logger/workers/w/oplog".into(),
            None,
            404,
            "worker_not_found",
        ),
        (
            "invoke other tenant's worker",
            &a,
            "POST",
            "/v1/components/logger/workers/w/invoke".into(),
            Some(json!({"function": "log", "params": ["x"]})),
            404,
            "component_not_found",
        ),
        (
            "revoke other tenant's key",
            &a,
            "DELETE",
            format!("/v1/keys/{b_key_id}"),
            None,
            404,
            "key_not_found",
        ),
        (
            "tenant creates tenants",
            &a,
            "POST",
            "/v1/admin/tenants".into(),
            Some(json!({"name": "evil"})),
            403,
            "forbidden",
        ),
        (
            "tenant lists plans",
            &a,
            "GET",
            "/v1/admin/plans".into(),
            None,
            403,
            "forbidden",
        ),
        (
            "tenant edits a plan",
            &a,
            "PUT",
            "/v1/admin/plans/free".into(),
            Some(json!({})),
            403,
            "forbidden",
        ),
        (
            "tenant moves itself",
            &a,
            "PUT",
            "/v1/admin/tenants/x/plan".into(),
            Some(json!({"plan": "unlimited"})),
            403,
            "forbidden",
        ),
        (
            "operator reads a tenant's component",
            &operator,
            "GET",
            "/v1/components/counter".into(),
            None,
            403,
            "forbidden",
        ),
        (
            "bad scope name",
            &a,
            "POST",
            "/v1/keys".into(),
            Some(json!({"scopes": ["root"]})),
            400,
            "invalid_request",
        ),
    ];
    for (who, api, method, path, body, status, code) in &cases {
        let reply = match (*method, body) {
            ("GET", _) => api.get(path).await?,
            ("DELETE", _) => api.delete(path).await?,
            ("PUT", Some(body)) => api.put_json(path, body).await?,
            (_, Some(body)) => api.post_json(path, body, None).await?,
            (_, None) => api.post_json(path, &json!({}), None).await?,
        };
        assert_eq!(
            (reply.status, reply.code()),
            (*status, *code),
            "{who}: {method} {path}: {reply:?}"
        );
        assert_eq!(reply.content_type, "application/problem+json", "{who}");
    }
    // Nothing changed: the worker saw one invocation, each tenant has what it had.
    assert_eq!(a.call("counter", "w", "get", json!([])).await?, json!(1));
    assert_eq!(b.call("counter", "w", "get", json!([])).await?, json!(5));
    let oplog = a.get("/v1/components/counter/workers/w/oplog").await?;
    assert_eq!(oplog.body["entries"].as_array().map(Vec::len), Some(5));
    let tenants = operator.get("/v1/admin/tenants").await?;
    assert_eq!(tenants.body["tenants"].as_array().map(Vec::len), Some(2));
    // Listing keys never shows a secret.
    let keys = a.get("/v1/keys").await?;
    let listed = keys.body["keys"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 5);
    assert!(
        listed.iter().all(|k| k.get("key").is_none()
            && k["prefix"].as_str().is_some_and(|p| p.starts_with("inv_")))
    );
    assert!(
        listed
            .iter()
            .any(|k| k["id"] == revoked_id.as_str() && k["revoked"] == true)
    );
    // Health needs no key.
    assert_eq!(anonymous.get("/healthz").await?.status, 200);
    Ok(())
}

/// A plan with generous limits except the ones a test changes.
fn plan(name: &str, changes: Value) -> Value {
    let mut plan = json!({
        "name": name,
        "fuel_per_invocation": 1_000_000_000_u64,
        "fuel_per_month": 1_000_000_000_000_u64,
        "memory_per_worker_bytes": 268_435_456_u64,
        "workers_max": 1000,
        "components_max": 100,
        "component_bytes_max": 100_000_000_u64,
        "requests_per_second": 10_000,
        "burst": 10_000,
        "concurrent_invocations": 100,
    });
    if let (Some(plan), Some(changes)) = (plan.as_object_mut(), changes.as_object()) {
        for (k, v) in changes {
            plan.insert(k.clone(), v.clone());
        }
    }
    plan
}

async fn tenant_on(operator: &Api, name: &str, changes: Value) -> anyhow::Result<Api> {
    let reply = operator
        .put_json(&format!("/v1/admin/plans/{name}"), &plan(name, changes))
        .await?;
    anyhow::ensure!(reply.status == 200, "{reply:?}");
    operator.new_tenant(name, name).await
}

fn assert_quota(reply: &invicta_tests::Reply, quota: &str) {
    assert_eq!(reply.code(), "quota_exceeded", "{reply:?}");
    assert_eq!(reply.body["quota"], quota, "{reply:?}");
    assert!(
        reply.body["limit"].is_u64() && reply.body["used"].is_u64(),
        "{reply:?}"
    );
}

#[tokio::test]
async fn quotas_refuse_typed_and_change_nothing() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let operator = server.operator();

    // Components and their bytes.
    let t = tenant_on(
        &operator,
        "storage",
        json!({"components_max": 1, "component_bytes_max": 60_000}),
    )
    .await?;
    assert_eq!(t.upload("counter", component("counter")).await?.status, 201);
    let second = t.upload("clocks", component("clocks")).await?;
    assert_eq!(second.status, 429);
    assert_quota(&second, "components");
    let bigger = t.upload("counter", component("logger")).await?;
    assert_quota(&bigger, "component_bytes");
    assert_eq!(
        t.get("/v1/components/counter").await?.body["versions"],
        json!([1])
    );
    assert_eq!(t.get("/v1/components/clocks").await?.status, 404);

    // Workers.
    let t = tenant_on(&operator, "few", json!({"workers_max": 2})).await?;
    t.upload("counter", component("counter")).await?;
    t.call("counter", "w1", "add", json!([1])).await?;
    let created = t
        .post_json(
            "/v1/components/counter/workers",
            &json!({"name": "w2"}),
            None,
        )
        .await?;
    assert_eq!(created.status, 201);
    let third = t.invoke("counter", "w3", "add", json!([1]), None).await?;
    assert_quota(&third, "workers");
    assert_eq!(
        t.get("/v1/components/counter/workers/w3").await?.status,
        404
    );
    assert_eq!(t.get("/v1/usage").await?.body["workers"], 2);

    // Fuel per invocation and memory per worker: the failed invocation leaves no trace.
    let t = tenant_on(
        &operator,
        "small",
        json!({"fuel_per_invocation": 200_000_000, "memory_per_worker_bytes": 16_777_216}),
    )
    .await?;
    t.upload("burner", component("burner")).await?;
    t.call("burner", "b", "add", json!([4])).await?;
    let burn = t
        .invoke("burner", "b", "burn", json!([10_000_000]), None)
        .await?;
    assert_eq!(burn.status, 422);
    assert_quota(&burn, "fuel_per_invocation");
    assert_eq!(burn.body["limit"], 200_000_000);
    let grow = t.invoke("burner", "b", "grow", json!([32]), None).await?;
    assert_eq!(grow.status, 422);
    assert_quota(&grow, "memory_per_worker");
    assert_eq!(t.call("burner", "b", "get", json!([])).await?, json!(4));

    // Fuel per month, checked before an invocation starts.
    let t = tenant_on(&operator, "monthly", json!({"fuel_per_month": 1_500_000})).await?;
    t.upload("burner", component("burner")).await?;
    let mut refused = None;
    for _ in 0..10 {
        let reply = t
            .invoke("burner", "b", "burn", json!([20_000]), None)
            .await?;
        if reply.status != 200 {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("the monthly fuel ran out");
    assert_eq!(refused.status, 429);
    assert_quota(&refused, "fuel_per_month");
    let usage = t.get("/v1/usage").await?;
    assert!(usage.body["fuel"].as_u64() >= Some(1_500_000), "{usage:?}");
    assert!(usage.body["invocations"].as_u64() >= Some(2), "{usage:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_and_rate_limits() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let operator = server.operator();
    let t = tenant_on(&operator, "single", json!({"concurrent_invocations": 1})).await?;
    t.upload("burner", component("burner")).await?;
    t.call("burner", "b", "add", json!([1])).await?;
    // About half a second of guest code; meanwhile a second invocation finds no free slot.
    // On a loaded machine the probe may take the slot first and the long one is refused
    // instead: then the round is tried again.
    let mut round = 0;
    let refused = loop {
        round += 1;
        let long = {
            let t = t.clone();
            tokio::spawn(async move {
                t.invoke("burner", "b", "burn", json!([35_000_000]), None)
                    .await
            })
        };
        // Let the long one take the tenant's only slot first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut refused = None;
        while !long.is_finished() {
            let second = t.invoke("burner", "other", "get", json!([]), None).await?;
            if second.status == 429 {
                refused = Some(second);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let long = long.await??;
        match (refused, long.status) {
            (Some(refused), 200) => break refused,
            (_, 429) if round < 5 => {
                assert_quota(&long, "concurrent_invocations");
                continue;
            }
            (refused, _) => anyhow::bail!(
                "the second invocation was not refused ({refused:?}) while the first ran ({long:?})"
            ),
        }
    };
    assert_quota(&refused, "concurrent_invocations");
    assert_eq!(t.call("burner", "b", "get", json!([])).await?, json!(1));

    let t = tenant_on(
        &operator,
        "slow",
        json!({"requests_per_second": 1, "burst": 3}),
    )
    .await?;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let reply = t.get("/v1/usage").await?;
        statuses.push(reply.status);
        if reply.status == 429 {
            assert_eq!(reply.code(), "rate_limited");
            retry_after = Some(reply);
            break;
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(
        retry_after.is_some(),
        "the fourth request in a burst of three is limited: {statuses:?}"
    );
    // Another tenant is not limited by this one.
    let other = operator.new_tenant("other", "pro").await?;
    assert_eq!(other.get("/v1/usage").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn revoked_keys_stop_working() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let a = server.operator().new_tenant("alpha", "pro").await?;
    let (id, secret) = key_with(&a, &["read"]).await?;
    let key = a.with_key(&secret);
    // Verified once, then served from the cache.
    for _ in 0..3 {
        assert_eq!(key.get("/v1/usage").await?.status, 200);
    }
    assert_eq!(a.delete(&format!("/v1/keys/{id}")).await?.status, 200);
    assert_eq!(key.get("/v1/usage").await?.status, 401);
    // And after a restart (no cache at all).
    drop(server);
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let key = Api::new(&server.url).with_key(&secret);
    assert_eq!(key.get("/v1/usage").await?.status, 401);
    let admin = Api::new(&server.url).with_key(a.key.as_deref().unwrap_or_default());
    assert_eq!(
        admin.get("/v1/usage").await?.status,
        200,
        "other keys survive the restart"
    );
    Ok(())
}

#[tokio::test]
async fn the_first_start_makes_an_operator_key() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let start = || -> anyhow::Result<(std::process::Child, Vec<String>)> {
        let mut child = Command::new(INVICTA)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .env_remove("INVICTA_OPERATOR_KEY")
            .env("INVICTA_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdout"))?;
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let done = line.starts_with("invicta listening on ");
            lines.push(line);
            if done {
                break;
            }
        }
        Ok((child, lines))
    };
    let (mut first, lines) = start()?;
    let shown = lines
        .iter()
        .find_map(|l| {
            l.split("): ")
                .nth(1)
                .filter(|_| l.starts_with("operator key"))
        })
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no operator key printed: {lines:?}"))?;
    let file = data.path().join("operator.key");
    assert_eq!(std::fs::read_to_string(&file)?.trim(), shown);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file)?.permissions().mode() & 0o777,
            0o600
        );
    }
    let url = lines
        .last()
        .and_then(|l| l.strip_prefix("invicta listening on "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    let operator = Api::new(&url).with_key(&shown);
    assert_eq!(operator.get("/v1/admin/plans").await?.status, 200);
    first.kill()?;
    first.wait()?;
    // A second start keeps the key and does not show it again.
    let (mut second, lines) = start()?;
    assert!(
        lines.iter().all(|l| !l.starts_with("operator key")),
        "{lines:?}"
    );
    second.kill()?;
    second.wait()?;
    Ok(())
}
