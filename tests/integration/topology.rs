//! The same request answers the same status, code and fields whether the executor runs in the
//! gateway's process or in another: one failure table, run against both.

use invicta_tests::{Apart, Api, Server, component};
use serde_json::{Value, json};

use crate::INVICTA;

/// A plan with small limits: one worker, little fuel.
fn plan() -> Value {
    json!({
        "name": "small",
        "fuel_per_invocation": 5_000_000_u64,
        "fuel_per_month": 1_000_000_000_000_u64,
        "memory_per_worker_bytes": 268_435_456_u64,
        "workers_max": 2,
        "components_max": 100,
        "component_bytes_max": 100_000_000_u64,
        "requests_per_second": 10_000,
        "burst": 10_000,
        "concurrent_invocations": 100,
        "files_per_worker_bytes": 2048,
    })
}

/// Each failure: its status, code and quota fields (`null` where it has none).
async fn failures(gateway: &Server) -> anyhow::Result<Vec<(String, Value)>> {
    let operator = gateway.operator();
    let put = operator.put_json("/v1/admin/plans/small", &plan()).await?;
    anyhow::ensure!(put.status == 200, "{put:?}");
    let api: Api = operator.new_tenant("small", "small").await?;
    anyhow::ensure!(api.upload("burner", component("burner")).await?.status == 201);
    anyhow::ensure!(api.call("burner", "b", "add", json!([1])).await? == json!(1));
    // A worker's files, read where the worker runs.
    anyhow::ensure!(api.upload("files", component("files")).await?.status == 201);
    let kept = api
        .call("files", "f", "write-text", json!(["/kept", "here"]))
        .await?;
    anyhow::ensure!(kept == json!({ "ok": null }), "{kept}");
    let listed = api.get("/v1/components/files/workers/f/files").await?;
    assert_eq!(listed.body["entries"][0]["name"], "kept", "{listed:?}");
    let cases: Vec<(&str, &str, &str, Value)> = vec![
        ("unknown function", "b", "nope", json!([])),
        ("wrong parameters", "b", "add", json!(["one"])),
        (
            "out of the plan's fuel",
            "b",
            "burn",
            json!([1_000_000_000_u64]),
        ),
        ("a trap", "b", "trap", json!(["boom"])),
        ("a third worker past the quota", "c", "add", json!([1])),
    ];
    let mut seen = Vec::new();
    for (what, worker, function, params) in cases {
        let reply = api.invoke("burner", worker, function, params, None).await?;
        seen.push((what.to_string(), shape(&reply)));
    }
    let over = api
        .invoke("files", "f", "fill-file", json!(["/big", 4096]), None)
        .await?;
    seen.push(("files past the plan".into(), shape(&over)));
    for (what, path) in [
        ("a file the worker has not", "/nope"),
        ("a path through `..`", "/a%2F..%2Fkept"),
    ] {
        let reply = api
            .get(&format!("/v1/components/files/workers/f/files{path}"))
            .await?;
        seen.push((what.into(), shape(&reply)));
    }
    let missing = api.invoke("absent", "w", "f", json!([]), None).await?;
    seen.push(("a component that does not exist".into(), shape(&missing)));
    let status = api.get("/v1/components/burner/workers/nobody").await?;
    seen.push(("a worker that does not exist".into(), shape(&status)));
    Ok(seen)
}

fn shape(reply: &invicta_tests::Reply) -> Value {
    json!({
        "status": reply.status,
        "code": reply.body["code"],
        "quota": reply.body["quota"],
        "limit": reply.body["limit"],
        "used": reply.body["used"],
    })
}

#[tokio::test]
async fn failures_answer_the_same_in_one_process_and_apart() -> anyhow::Result<()> {
    let one = tempfile::tempdir()?;
    let all_in_one = Server::start(INVICTA.as_ref(), &one.path().join("data"))?;
    let together = failures(&all_in_one).await?;
    drop(all_in_one);

    let apart = tempfile::tempdir()?;
    let roles = Apart::start(INVICTA.as_ref(), &apart.path().join("data"), "")?;
    let separate = failures(&roles.gateway).await?;
    drop(roles);

    for ((what, a), (_, b)) in together.iter().zip(&separate) {
        assert_eq!(a, b, "{what}: one process {a}, apart {b}");
        assert!(a["status"].as_u64() >= Some(400), "{what}: {a}");
    }
    assert_eq!(together.len(), separate.len());
    let codes: Vec<_> = together.iter().map(|(_, v)| v["code"].clone()).collect();
    for code in ["files_too_large", "file_not_found", "invalid_path"] {
        assert!(codes.contains(&json!(code)), "{code} in {codes:?}");
    }
    // The quota's fields cross too.
    let quota = &together[4].1;
    assert_eq!(
        (&quota["code"], &quota["quota"], &quota["limit"]),
        (&json!("quota_exceeded"), &json!("workers"), &json!(2)),
        "{quota}"
    );
    let fuel = &together[2].1;
    assert_eq!(fuel["quota"], "fuel_per_invocation", "{fuel}");
    Ok(())
}

/// With the roles apart, public routes serve from the gateway while guest code runs on an
/// executor: an ephemeral handler goes there over gRPC (the gateway's own executor settings
/// allow a single unit of fuel, so a handler run in its process would fail), a durable one to
/// its worker's owner; refusals answer as in one process.
#[tokio::test]
async fn handlers_run_on_executors_when_the_roles_are_apart() -> anyhow::Result<()> {
    let apart = tempfile::tempdir()?;
    let roles = Apart::start(
        INVICTA.as_ref(),
        &apart.path().join("data"),
        "[gateway]\npublic_listen = \"127.0.0.1:0\"\n[executor]\nfuel_per_invocation = 1\n",
    )?;
    let gateway = &roles.gateway;
    let public = gateway
        .public_url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the gateway serves no public listener"))?;
    let api = gateway.operator().new_tenant("apart", "pro").await?;
    anyhow::ensure!(api.upload("hello", component("http_hello")).await?.status == 201);
    anyhow::ensure!(api.upload("counter", component("counter")).await?.status == 201);
    let mut urls = Vec::new();
    for (name, spec) in [
        (
            "fresh",
            json!({ "path": "/h/{*rest}", "target": { "kind": "handler", "component": "hello" } }),
        ),
        (
            "kept",
            json!({ "path": "/u/{user}/{*rest}", "target": { "kind": "handler", "component": "hello",
                          "worker": { "from": "path", "name": "user" } } }),
        ),
        (
            "wrong",
            json!({ "path": "/c", "target": { "kind": "handler", "component": "counter" } }),
        ),
    ] {
        let made = api
            .post_json(&format!("/v1/routes/{name}"), &spec, None)
            .await?;
        anyhow::ensure!(made.status == 201, "{made:?}");
        urls.push(format!(
            "{public}{}",
            made.body["url_path"].as_str().unwrap_or_default()
        ));
    }
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let response = http.get(url).send().await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.text().await?))
        }
    };
    let (status, text) = get(format!("{}?name=far", urls[0].replace("{*rest}", "hello"))).await?;
    assert_eq!((status, text.as_str()), (200, "hello far from /h/hello"));
    for n in 1..=2 {
        let (status, text) = get(urls[1]
            .replace("{user}", "ann")
            .replace("{*rest}", "visits"))
        .await?;
        assert_eq!((status, text), (200, format!("visit {n}")));
    }
    let (status, text) = get(urls[0].replace("{*rest}", "panic")).await?;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("handler_failed"), "{text}");
    let (status, text) = get(urls[2].clone()).await?;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("not_a_handler"), "{text}");
    Ok(())
}
