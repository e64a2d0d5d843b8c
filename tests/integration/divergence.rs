//! Replay that does not match the oplog fails the worker with a clear error; it never goes on
//! silently with a state the oplog does not describe.

use invicta_model::Value;
use invicta_model::oplog::OplogEntry;
use invicta_store::keys::pack;
use invicta_store::{Config, Store};
use invicta_tests::{Api, Server, component};
use serde_json::json;

use crate::INVICTA;

#[tokio::test]
async fn a_tampered_oplog_fails_the_worker_clearly() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let api = server.operator().new_tenant("acme", "pro").await?;
    let tenant_key = api.key.clone().unwrap_or_default();
    let tenant_id = api.get("/v1/usage").await?.body["tenant"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.upload("counter", component("counter")).await?;
    assert_eq!(api.call("counter", "w", "add", json!([2])).await?, json!(2));
    assert_eq!(api.call("counter", "w", "add", json!([3])).await?, json!(5));
    assert!(server.stop()?);

    // Rewrite what the second invocation returned: replay computes 5, the oplog now says 6.
    let store = Store::open(&Config::embedded_in(data.path()))?;
    let key = pack(&("oplog", tenant_id.as_str(), "counter", "w", 5_u64));
    let tampered = OplogEntry::ExportedFunctionCompleted {
        results: vec![Value::S64(6)],
        fuel_consumed: 1,
    };
    store.transact_blocking(|tx| {
        let current = tx.get(&key)?.map(|b| OplogEntry::decode(&b));
        assert!(
            matches!(
                current,
                Some(Ok(OplogEntry::ExportedFunctionCompleted { .. }))
            ),
            "entry 5 is the second completion: {current:?}"
        );
        tx.set(&key, &tampered.encode())
    })?;
    drop(store);

    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let api = Api::new(&server.url).with_key(&tenant_key);
    let reply = api.invoke("counter", "w", "get", json!([]), None).await?;
    assert_eq!(
        (reply.status, reply.code()),
        (409, "worker_failed"),
        "{reply:?}"
    );
    let detail = reply.body["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("diverged") && detail.contains("entry 4"),
        "{detail}"
    );
    let status = api.get("/v1/components/counter/workers/w").await?;
    assert_eq!(status.body["status"], "failed");
    assert!(
        status.body["error"]
            .as_str()
            .unwrap_or("")
            .contains("diverged")
    );
    // Other workers are untouched.
    assert_eq!(
        api.call("counter", "other", "add", json!([1])).await?,
        json!(1)
    );
    Ok(())
}
