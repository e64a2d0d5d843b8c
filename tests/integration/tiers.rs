//! Two tiers of code: an upload is compiled by the baseline compiler (Winch) and runs at once,
//! while the optimizing compiler (Cranelift) compiles it again in the background; the version
//! then says `optimized`, and its workers move to that code at their next activation, with
//! their state. A restart finds the optimized code without compiling again.

use std::time::Duration;

use invicta_tests::{Server, component, eventually};
use serde_json::json;

use crate::INVICTA;

#[tokio::test]
async fn uploads_run_at_once_and_move_to_optimized_code() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("invicta.toml");
    std::fs::write(&config, "[executor]\nidle_suspend_ms = 300\n")?;
    let config = config.to_string_lossy().into_owned();
    let dir = tmp.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("tiers", "pro").await?;
    let uploaded = api.upload("counter", component("counter")).await?;
    assert_eq!(uploaded.status, 201, "{uploaded:?}");
    assert_eq!(uploaded.body["code"], "baseline", "{uploaded:?}");
    // It runs on the baseline code at once.
    assert_eq!(api.call("counter", "w", "add", json!([5])).await?, json!(5));
    eventually("the optimized code", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let shown = api.get("/v1/components/counter").await?;
            Ok((shown.body["code"] == "optimized").then_some(()))
        }
    })
    .await?;
    // The worker moves to it when it is made again (after idle suspension), with its state.
    eventually("the worker suspended", Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let status = api.get("/v1/components/counter/workers/w").await?;
            Ok((status.body["status"] == "suspended").then_some(()))
        }
    })
    .await?;
    assert_eq!(api.call("counter", "w", "add", json!([1])).await?, json!(6));
    // The same bytes again are the same version, optimized.
    let again = api.upload("counter", component("counter")).await?;
    assert_eq!(
        (again.status, &again.body["code"]),
        (200, &json!("optimized"))
    );
    // Another tenant's upload of the same bytes takes the optimized code at once.
    let other = server.operator().new_tenant("other", "pro").await?;
    let reused = other.upload("mine", component("counter")).await?;
    assert_eq!(
        (reused.status, &reused.body["code"]),
        (201, &json!("optimized"))
    );
    // After SIGKILL, the optimized code is loaded, not compiled again, and the state is back.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(api.call("counter", "w", "add", json!([1])).await?, json!(7));
    assert_eq!(
        api.get("/v1/components/counter").await?.body["code"],
        "optimized"
    );
    Ok(())
}
