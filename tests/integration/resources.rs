//! Resources as durable handles: a function that returns an `own<tally>` answers a handle,
//! `{"resource": "tally", "handle": "…"}`, which later calls on the same worker pass to methods,
//! `borrow<tally>` parameters, static functions and owned parameters; a handle is dropped by a
//! `[drop]` call (the guest's destructor runs) or with the worker. Handles are made from the
//! place of the invocation that returned them, so replay after SIGKILL or idle suspension
//! rebuilds the same ones, in the same state. An unknown, dropped or another worker's handle
//! is 400 `invalid_handle`.

use std::time::Duration;

use invicta_tests::{Api, Server, component, eventually};
use serde_json::{Value, json};

use crate::INVICTA;

fn f(name: &str) -> String {
    format!("invicta:objects/tallies.{{{name}}}")
}

fn f_name(name: &str) -> Value {
    Value::String(f(name))
}

async fn call(api: &Api, worker: &str, function: &str, params: Value) -> anyhow::Result<Value> {
    api.call("objects", worker, function, params).await
}

async fn refused(
    api: &Api,
    worker: &str,
    function: &str,
    params: Value,
) -> anyhow::Result<(u16, String)> {
    let reply = api
        .invoke("objects", worker, function, params, None)
        .await?;
    Ok((reply.status, reply.code().to_string()))
}

#[tokio::test]
async fn resources_are_durable_handles() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("invicta.toml");
    std::fs::write(&config, "[executor]\nidle_suspend_ms = 300\n")?;
    let config = config.to_string_lossy().into_owned();
    let dir = tmp.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("objects", "pro").await?;
    api.upload("objects", component("objects")).await?;
    // Signatures name the resource.
    let shown = api.get("/v1/components/objects").await?;
    let signature = |name: &str| {
        shown.body["exports"]
            .as_array()
            .and_then(|e| e.iter().find(|f| f["name"] == f_name(name)).cloned())
            .unwrap_or_default()
    };
    assert_eq!(signature("[constructor]tally")["result"], "own<tally>");
    assert_eq!(signature("peek")["params"][0]["type"], "borrow<tally>");

    let a = call(&api, "w", &f("[constructor]tally"), json!(["a", 5])).await?;
    assert_eq!(a["resource"], "tally", "{a}");
    assert!(a["handle"].as_str().is_some_and(|h| !h.is_empty()), "{a}");
    assert_eq!(
        call(&api, "w", &f("[method]tally.add"), json!([a, 10])).await?,
        json!(15)
    );
    let b = call(&api, "w", &f("make"), json!([1])).await?;
    assert_ne!(a["handle"], b["handle"]);
    let c = call(&api, "w", &f("[static]tally.merge"), json!([a, b])).await?;
    assert_eq!(
        call(&api, "w", &f("[method]tally.get"), json!([c])).await?,
        json!(16)
    );
    assert_eq!(
        call(&api, "w", &f("[method]tally.name"), json!([c])).await?,
        json!("a+made")
    );
    assert_eq!(call(&api, "w", &f("peek"), json!([c])).await?, json!(16));
    assert_eq!(call(&api, "w", &f("alive"), json!([])).await?, json!(3));

    // An owned parameter takes the tally away; a `[drop]` call drops one.
    assert_eq!(call(&api, "w", &f("close"), json!([b])).await?, json!(1));
    assert_eq!(call(&api, "w", &f("alive"), json!([])).await?, json!(2));
    assert_eq!(
        refused(&api, "w", &f("peek"), json!([b])).await?,
        (400, "invalid_handle".into())
    );
    assert_eq!(call(&api, "w", "[drop]", json!([c])).await?, Value::Null);
    assert_eq!(call(&api, "w", &f("alive"), json!([])).await?, json!(1));
    assert_eq!(
        refused(&api, "w", "[drop]", json!([c])).await?,
        (400, "invalid_handle".into())
    );
    // Unknown, malformed and another worker's handles.
    assert_eq!(
        refused(
            &api,
            "w",
            &f("peek"),
            json!([{ "resource": "tally", "handle": "nope" }])
        )
        .await?,
        (400, "invalid_handle".into())
    );
    assert_eq!(
        refused(&api, "w", &f("peek"), json!([7])).await?,
        (400, "invalid_params".into())
    );
    assert_eq!(
        refused(&api, "other", &f("peek"), json!([a])).await?,
        (400, "invalid_handle".into())
    );

    // SIGKILL: replay makes the same handles, in the same state.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(
        call(&api, "w", &f("[method]tally.add"), json!([a, 1])).await?,
        json!(16)
    );
    assert_eq!(call(&api, "w", &f("alive"), json!([])).await?, json!(1));
    // And after idle suspension.
    eventually("the worker suspended", Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let status = api.get("/v1/components/objects/workers/w").await?;
            Ok((status.body["status"] == "suspended").then_some(()))
        }
    })
    .await?;
    assert_eq!(
        call(&api, "w", &f("[method]tally.get"), json!([a])).await?,
        json!(16)
    );
    // In WAVE text (as the console sends), a handle is its id as a string.
    let by_wave = api
        .post_json(
            "/v1/components/objects/workers/w/invoke",
            &json!({ "function": f("peek"), "wave": [serde_json::to_string(&a["handle"])?] }),
            None,
        )
        .await?;
    assert_eq!(by_wave.body["result"], json!(16), "{by_wave:?}");
    assert_eq!(
        refused(&api, "w", &f("peek"), json!([c])).await?,
        (400, "invalid_handle".into()),
        "a dropped handle stays dropped after replay"
    );
    Ok(())
}
