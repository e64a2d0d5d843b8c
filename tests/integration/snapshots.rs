//! Snapshots: a worker whose component exports `invicta:host/snapshot` comes back from its
//! latest snapshot and the oplog after it, after SIGKILL and after idle suspension; a snapshot
//! that does not read back is passed over for the one before it, then for a full replay; a
//! revert that reaches back over a snapshot is never undone by it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use invicta_tests::{Api, Server, component, eventually};
use serde_json::{Value, json};

use crate::INVICTA;

/// Snapshots every 10 invocations; idle workers suspended after 300 ms.
fn config(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("invicta.toml");
    std::fs::write(
        &path,
        "[executor]\nsnapshot_every_invocations = 10\nidle_suspend_ms = 300\n",
    )?;
    Ok(path.to_string_lossy().into_owned())
}

async fn metrics(api: &Api) -> anyhow::Result<HashMap<String, f64>> {
    let text = api
        .anonymous()
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
        .collect())
}

async fn metric(api: &Api, name: &str) -> anyhow::Result<f64> {
    Ok(metrics(api).await?.get(name).copied().unwrap_or(0.0))
}

/// The snapshot entries of the worker's oplog: (index, blob key).
async fn snapshots(api: &Api, worker: &str) -> anyhow::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = api
            .get(&format!(
                "/v1/components/snap/workers/{worker}/oplog?from={from}&count=1000"
            ))
            .await?;
        anyhow::ensure!(page.status == 200, "{page:?}");
        let entries = page.body["entries"].as_array().cloned().unwrap_or_default();
        for e in &entries {
            if e["kind"] == "snapshot" {
                out.push((
                    e["index"].as_u64().unwrap_or_default(),
                    e["blob_key"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        match page.body["next"].as_u64() {
            Some(next) if !entries.is_empty() => from = next,
            _ => return Ok(out),
        }
    }
}

/// The blob's file under the local blob store.
fn blob_file(data: &Path, key: &str) -> PathBuf {
    data.join("blobs").join(key)
}

async fn state(api: &Api, worker: &str) -> anyhow::Result<Value> {
    api.call("snap", worker, "state", json!([])).await
}

#[tokio::test]
async fn a_worker_comes_back_from_its_latest_snapshot_and_falls_back_past_a_bad_one()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = config(tmp.path())?;
    let dir = tmp.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("snappers", "pro").await?;
    api.upload("snap", component("snapshotter")).await?;
    for delta in 1..=25 {
        let total = api.call("snap", "s", "add", json!([delta])).await?;
        assert_eq!(total, json!(delta * (delta + 1) / 2));
    }
    let taken = snapshots(&api, "s").await?;
    assert_eq!(taken.len(), 2, "after the 10th and the 20th: {taken:?}");
    assert_eq!(metric(&api, "invicta_snapshots_taken_total").await?, 2.0);
    let expected = json!([325, 25]);

    // SIGKILL: back from the snapshot after the 20th, replaying the 5 after it.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(state(&api, "s").await?, expected);
    assert_eq!(
        metric(&api, "invicta_snapshot_recoveries_total").await?,
        1.0
    );
    assert_eq!(
        metric(&api, "invicta_replayed_invocations_total").await?,
        5.0
    );

    // Idle suspension: back from it again.
    eventually("the worker suspended", Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let status = api.get("/v1/components/snap/workers/s").await?;
            Ok((status.body["status"] == "suspended").then_some(()))
        }
    })
    .await?;
    assert_eq!(state(&api, "s").await?, expected);
    assert_eq!(
        metric(&api, "invicta_snapshot_recoveries_total").await?,
        2.0
    );

    // The latest snapshot's blob is damaged: it is passed over for the one before it.
    server.kill()?;
    let (_, latest) = taken.last().cloned().unwrap_or_default();
    std::fs::write(blob_file(&dir, &latest), b"not what was saved")?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(state(&api, "s").await?, expected);
    assert_eq!(metric(&api, "invicta_snapshot_fallbacks_total").await?, 1.0);
    assert_eq!(
        metric(&api, "invicta_replayed_invocations_total").await?,
        17.0,
        "the 15 additions after the first snapshot, and the 2 reads of the state since"
    );
    // (That read is the 10th invocation since the first snapshot: a new one is taken.)
    let taken = snapshots(&api, "s").await?;
    assert_eq!(taken.len(), 3, "{taken:?}");

    // Every snapshot gone: a full replay, the same state.
    server.kill()?;
    for (_, key) in &taken {
        std::fs::remove_file(blob_file(&dir, key))?;
    }
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(state(&api, "s").await?, expected);
    assert_eq!(metric(&api, "invicta_snapshot_fallbacks_total").await?, 3.0);
    assert_eq!(
        metric(&api, "invicta_replayed_invocations_total").await?,
        28.0,
        "25 additions and 3 reads"
    );
    assert_eq!(
        metric(&api, "invicta_snapshot_recoveries_total").await?,
        0.0
    );

    // Deleting the worker deletes its snapshots.
    let deleted = api.delete("/v1/components/snap/workers/s").await?;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let left: Vec<_> = walk(&dir.join("blobs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("snapshots/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

#[tokio::test]
async fn a_revert_over_a_snapshot_is_not_undone_by_it() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = config(tmp.path())?;
    let dir = tmp.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("reverters", "pro").await?;
    api.upload("snap", component("snapshotter")).await?;
    for delta in 1..=25 {
        api.call("snap", "r", "add", json!([delta])).await?;
    }
    assert_eq!(snapshots(&api, "r").await?.len(), 2);
    // Back by 10 invocations: before the snapshot after the 20th.
    let reverted = api
        .post_json(
            "/v1/components/snap/workers/r/revert",
            &json!({ "last_invocations": 10 }),
            None,
        )
        .await?;
    assert_eq!(reverted.status, 200, "{reverted:?}");
    let expected = json!([120, 15]);
    assert_eq!(state(&api, "r").await?, expected);
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(
        state(&api, "r").await?,
        expected,
        "the snapshot after the 20th is past the revert: the one after the 10th is used"
    );
    assert_eq!(
        metric(&api, "invicta_snapshot_recoveries_total").await?,
        1.0
    );
    assert_eq!(
        metric(&api, "invicta_replayed_invocations_total").await?,
        6.0,
        "the 11th to the 15th addition, and the read after the revert"
    );
    // It goes on from there, and snapshots again.
    assert_eq!(
        api.call("snap", "r", "add", json!([1000])).await?,
        json!(1120)
    );
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
