//! The oplog's tail: entries a SIGKILL leaves in it come back whole at the next start, and a
//! clean stop, or a moment of idleness, leaves each oplog whole at its workers' keys.

use std::time::Duration;

use invicta_store::keys::{pack, prefix_range};
use invicta_store::{Config, Store};
use invicta_tests::{Apart, Api, Server, component, eventually};
use serde_json::json;

use crate::INVICTA;

const WORKERS: usize = 3;
const CALLS: i64 = 4;

/// Records in the tail, and each worker's oplog indices at its keys.
fn stored(data: &std::path::Path, tenant: &str) -> anyhow::Result<(usize, Vec<Vec<u64>>)> {
    let store = Store::open(&Config::embedded_in(data))?;
    let (tail, indices) = store.read_blocking(|tx| {
        let tail = tx
            .get_prefix(&pack(&("oplog-tail",)), Default::default())?
            .len();
        let mut indices = Vec::new();
        for w in 0..WORKERS {
            let prefix = pack(&("oplog", tenant, "counter", format!("w{w}").as_str()));
            let (begin, end) = prefix_range(&prefix);
            let rows = tx.get_range(&begin, &end, Default::default())?;
            let mut found = Vec::new();
            for row in rows {
                let (_, _, _, _, index): (String, String, String, String, u64) =
                    invicta_store::keys::unpack(&row.key)
                        .map_err(|e| invicta_store::Error::Task(e.to_string()))?;
                found.push(index);
            }
            indices.push(found);
        }
        Ok::<_, invicta_store::Error>((tail, indices))
    })?;
    Ok((tail, indices))
}

/// An all-in-one server on `data`, a tenant, the counter, and [`CALLS`] calls on each worker.
/// Returns the server, the tenant's client and its id.
async fn start_and_call(data: &std::path::Path) -> anyhow::Result<(Server, Api, String)> {
    let server = Server::start(INVICTA.as_ref(), data)?;
    let api = server.operator().new_tenant("acme", "pro").await?;
    let tenant = api.get("/v1/usage").await?.body["tenant"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.upload("counter", component("counter")).await?;
    for call in 1..=CALLS {
        for w in 0..WORKERS {
            assert_eq!(
                api.call("counter", &format!("w{w}"), "add", json!([call]))
                    .await?,
                json!(call * (call + 1) / 2)
            );
        }
    }
    Ok((server, api, tenant))
}

/// [`start_and_call`], then a kill. Returns the tenant's key and id.
async fn call_then_kill(data: &std::path::Path) -> anyhow::Result<(String, String)> {
    let (server, api, tenant) = start_and_call(data).await?;
    server.kill()?;
    Ok((api.key.clone().unwrap_or_default(), tenant))
}

fn whole(indices: &[u64]) -> bool {
    !indices.is_empty() && indices.iter().copied().eq(1..=indices.len() as u64)
}

#[tokio::test]
async fn entries_in_the_tail_survive_a_kill_and_a_clean_stop_leaves_none() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (tenant_key, tenant) = call_then_kill(data.path()).await?;

    // The last commits' entries are in the tail, not yet at their workers' keys.
    let (records, indices) = stored(data.path(), &tenant)?;
    assert!(records > 0, "nothing was left in the tail");
    assert!(
        indices
            .iter()
            .any(|i| !whole(i) || i.len() < 2 * CALLS as usize),
        "the keys alone hold every entry: {indices:?}"
    );

    // The next start drains them: each worker replays every call, and goes on.
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let api = Api::new(&server.url).with_key(&tenant_key);
    let total = CALLS * (CALLS + 1) / 2;
    for w in 0..WORKERS {
        let worker = format!("w{w}");
        assert_eq!(
            api.call("counter", &worker, "get", json!([])).await?,
            json!(total)
        );
        assert_eq!(
            api.call("counter", &worker, "add", json!([1])).await?,
            json!(total + 1)
        );
    }
    // The oplog the API shows is whole (its reads take the worker's records out of the tail).
    let oplog = api
        .get("/v1/components/counter/workers/w0/oplog?count=1000")
        .await?;
    assert_eq!(oplog.status, 200, "{oplog:?}");
    let shown: Vec<u64> = oplog.body["entries"]
        .as_array()
        .map(|entries| entries.iter().filter_map(|e| e["index"].as_u64()).collect())
        .unwrap_or_default();
    assert!(whole(&shown), "the oplog shown: {shown:?}");
    assert!(server.stop()?, "clean stop");

    // A clean stop moves everything to the workers' keys.
    let (records, indices) = stored(data.path(), &tenant)?;
    assert_eq!(records, 0, "a clean stop left records in the tail");
    for (w, found) in indices.iter().enumerate() {
        assert!(whole(found), "w{w}'s oplog at its keys: {found:?}");
    }
    assert_eq!(indices[0].len(), shown.len(), "every entry shown is stored");
    Ok(())
}

/// Records an all-in-one run left in the tail are drained by an executor under a scheduler when
/// it takes their shards, before it reads their workers.
#[tokio::test]
async fn an_executor_under_a_scheduler_drains_what_an_all_in_one_run_left() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let data = scratch.path().join("data");
    std::fs::create_dir_all(&data)?;
    let (tenant_key, tenant) = call_then_kill(&data).await?;
    let (records, _) = stored(&data, &tenant)?;
    assert!(records > 0, "nothing was left in the tail");

    let roles = Apart::start(INVICTA.as_ref(), &data, "")?;
    let api = Api::new(&roles.gateway.url).with_key(&tenant_key);
    let total = CALLS * (CALLS + 1) / 2;
    for w in 0..WORKERS {
        assert_eq!(
            api.call("counter", &format!("w{w}"), "get", json!([]))
                .await?,
            json!(total)
        );
    }
    let (records, indices) = stored(&data, &tenant)?;
    assert_eq!(records, 0, "records left in the tail: {indices:?}");
    drop(roles);
    Ok(())
}

/// An executor that goes idle moves what waits in its tail to its workers' keys by itself, a
/// moment after its last commit: a kill then leaves nothing to drain.
#[tokio::test]
async fn an_idle_executor_moves_its_tail_to_the_workers_keys() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (server, api, tenant) = start_and_call(data.path()).await?;
    let metrics = api.anonymous();
    assert!(
        metrics.metric("invicta_oplog_tail_records").await? > 0.0,
        "the calls left nothing in the tail"
    );
    eventually("the tail emptied", Duration::from_secs(30), || async {
        let records = metrics.metric("invicta_oplog_tail_records").await?;
        Ok((records == 0.0).then_some(()))
    })
    .await?;
    server.kill()?;

    let (records, indices) = stored(data.path(), &tenant)?;
    assert_eq!(records, 0, "records left in the tail");
    for (w, found) in indices.iter().enumerate() {
        assert!(whole(found), "w{w}'s oplog at its keys: {found:?}");
        assert_eq!(found.len(), indices[0].len(), "w{w}'s oplog: {found:?}");
    }
    Ok(())
}
