//! Two tiers of code: an upload is compiled by the baseline compiler (Winch) and runs at once,
//! while the optimizing compiler (Cranelift) compiles it again in the background; the version
//! then says `optimized`, and its workers move to that code at their next activation, with
//! their state. A restart finds the optimized code without compiling again.

use std::time::Duration;

use invicta_tests::{Configured, component, eventually};
use serde_json::json;

use crate::INVICTA;

#[tokio::test]
async fn uploads_run_at_once_and_move_to_optimized_code() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let configured = Configured::new(
        INVICTA.as_ref(),
        tmp.path(),
        "[executor]\nidle_suspend_ms = 300\n",
    )?;
    let server = configured.start()?;
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
    api.until_suspended("counter", "w", Duration::from_secs(10))
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
    let server = configured.start()?;
    let api = api.at(&server.url);
    assert_eq!(api.call("counter", "w", "add", json!([1])).await?, json!(7));
    assert_eq!(
        api.get("/v1/components/counter").await?.body["code"],
        "optimized"
    );
    Ok(())
}
