//! Hostile guests cannot hold the service: a component whose start function never returns runs
//! under an invocation's fuel and deadline, its worker can be interrupted and deleted in any
//! state, and the server goes on serving others meanwhile.

use std::time::Duration;

use invicta_tests::{Configured, Server, component, eventually};
use serde_json::json;

use crate::INVICTA;

/// A component whose core module's start function loops for ever.
fn spinner() -> Vec<u8> {
    wat::parse_str(
        r#"(component
            (core module $m
                (func $spin (loop $again (br $again)))
                (start $spin)
                (func (export "run")))
            (core instance $i (instantiate $m))
            (type $t (func))
            (func $run (type $t) (canon lift (core func $i "run")))
            (export "run" (func $run))
        )"#,
    )
    .expect("valid WAT")
}

#[tokio::test]
async fn a_start_function_that_never_returns_is_bounded() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    // A long deadline: the fuel budget is what stops the loop here.
    let configured = Configured::new(
        INVICTA.as_ref(),
        data.path(),
        "[executor]\nfuel_per_invocation = 50000000\ninvocation_timeout_ms = 60000\n",
    )?;
    let server = configured.start()?;
    let api = server.operator().new_tenant("spin", "pro").await?;
    let uploaded = api.upload("spinner", spinner()).await?;
    assert_eq!(uploaded.status, 201, "{uploaded:?}");
    api.upload("counter", component("counter")).await?;

    let reply = api.invoke("spinner", "s", "run", json!([]), None).await?;
    assert_eq!(
        (reply.status, reply.code()),
        (409, "worker_failed"),
        "{reply:?}"
    );
    let detail = reply.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("start function"), "{detail}");
    // Others were served meanwhile and are served now.
    assert_eq!(api.call("counter", "c", "add", json!([2])).await?, json!(2));
    // The failed worker is deleted at once.
    let deleted = api.delete("/v1/components/spinner/workers/s").await?;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    drop(server);
    Ok(())
}

#[tokio::test]
async fn a_spinning_start_function_is_interrupted_and_deleted() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    // Neither fuel nor deadline would stop it soon: only the interrupt and the deletion do.
    let configured = Configured::new(
        INVICTA.as_ref(),
        data.path(),
        "[executor]\nfuel_per_invocation = 1000000000000000\ninvocation_timeout_ms = 600000\n",
    )?;
    let server = configured.start()?;
    let api = server.operator().new_tenant("spin", "unlimited").await?;
    api.upload("spinner", spinner()).await?;
    let call = {
        let api = api.clone();
        tokio::spawn(async move { api.invoke("spinner", "s", "run", json!([]), None).await })
    };
    // The interrupt finds it instantiating, and stops it.
    eventually(
        "the interrupt reaches the start function",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move {
                let reply = api
                    .post_json(
                        "/v1/components/spinner/workers/s/interrupt",
                        &json!({}),
                        None,
                    )
                    .await?;
                Ok((reply.status == 200 && reply.body["interrupted"] == true).then_some(()))
            }
        },
    )
    .await?;
    let reply = call.await??;
    assert_eq!(
        (reply.status, reply.code()),
        (409, "worker_failed"),
        "{reply:?}"
    );
    assert!(
        reply.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("interrupted")),
        "{reply:?}"
    );

    // Again, and this time deleted while it spins: the deletion answers.
    let resumed = {
        let api = api.clone();
        tokio::spawn(async move {
            api.post_json("/v1/components/spinner/workers/s/resume", &json!({}), None)
                .await
        })
    };
    eventually("the worker spins again", Duration::from_secs(30), || {
        let api = api.clone();
        async move {
            let status = api.get("/v1/components/spinner/workers/s").await?;
            Ok((status.status == 200 && status.body["status"] != "failed").then_some(()))
        }
    })
    .await?;
    let deleted = api.delete("/v1/components/spinner/workers/s").await?;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let _ = resumed.await?;
    let gone = api.get("/v1/components/spinner/workers/s").await?;
    assert_eq!(gone.status, 404, "{gone:?}");
    drop(server);
    Ok(())
}

/// What one invocation writes cannot break its worker: a flood of tiny or empty writes to
/// stdout is cut at the output cap (each write counting its cost in the oplog), a result too
/// large to record is a typed failure, and the worker answers afterwards, also after a restart.
#[tokio::test]
async fn floods_and_large_results_leave_the_worker_whole() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = server.operator().new_tenant("flood", "unlimited").await?;
    api.upload("hostile", component("hostile")).await?;
    assert_eq!(api.call("hostile", "h", "tick", json!([])).await?, json!(1));
    for size in [1, 0] {
        let taken = api
            .call("hostile", "h", "flood", json!([300_000, size]))
            .await?;
        let taken = taken.as_u64().unwrap_or(u64::MAX);
        assert!(
            (1_000..300_000).contains(&taken),
            "writes of {size} bytes: {taken} taken"
        );
    }
    let big = api
        .invoke("hostile", "h", "big", json!([300_000]), Some("big"))
        .await?;
    assert_eq!(big.status, 200, "{}", big.code());
    let huge = api
        .invoke("hostile", "h", "big", json!([6_000_000]), None)
        .await?;
    assert_eq!(
        (huge.status, huge.code()),
        (422, "result_too_large"),
        "{:?}",
        huge.body["detail"]
    );
    assert_eq!(api.call("hostile", "h", "tick", json!([])).await?, json!(2));
    server.kill()?;
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = api.at(&server.url);
    assert_eq!(api.call("hostile", "h", "tick", json!([])).await?, json!(3));
    let again = api
        .invoke("hostile", "h", "big", json!([300_000]), Some("big"))
        .await?;
    assert_eq!((again.status, &again.body), (200, &big.body));
    drop(server);
    Ok(())
}
