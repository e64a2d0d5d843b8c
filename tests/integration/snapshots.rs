//! Snapshots: a worker whose component exports `invicta:host/snapshot` comes back from its
//! latest snapshot and the oplog after it, after SIGKILL and after idle suspension; a snapshot
//! that does not read back is passed over for the one before it, then for a full replay; a
//! revert that reaches back over a snapshot is never undone by it.

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
    assert_eq!(api.metric("invicta_snapshots_taken_total").await?, 2.0);
    let expected = json!([325, 25]);
    // What came before the latest snapshot is archived; the oplog reads whole across both.
    let (_, last_snapshot) = (taken[1].0, &taken[1].1);
    assert_eq!(
        api.metric("invicta_archived_entries_total").await?,
        (taken[1].0 - 1) as f64,
        "{last_snapshot}"
    );
    assert_contiguous(&api, "s").await?;

    // SIGKILL: back from the snapshot after the 20th, replaying the 5 after it.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(state(&api, "s").await?, expected);
    assert_eq!(api.metric("invicta_snapshot_recoveries_total").await?, 1.0);
    assert_eq!(api.metric("invicta_replayed_invocations_total").await?, 5.0);

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
    assert_eq!(api.metric("invicta_snapshot_recoveries_total").await?, 2.0);

    // The latest snapshot's blob is damaged: it is passed over for the one before it.
    server.kill()?;
    let (_, latest) = taken.last().cloned().unwrap_or_default();
    std::fs::write(blob_file(&dir, &latest), b"not what was saved")?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(state(&api, "s").await?, expected);
    assert_eq!(api.metric("invicta_snapshot_fallbacks_total").await?, 1.0);
    assert_eq!(
        api.metric("invicta_replayed_invocations_total").await?,
        17.0,
        "the 15 additions after the first snapshot, and the 2 reads of the state since"
    );
    // (That read is the 10th invocation since the first snapshot: a new one is taken, after
    // the read is answered.)
    let taken = eventually("a third snapshot", Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let taken = snapshots(&api, "s").await?;
            Ok((taken.len() == 3).then_some(taken))
        }
    })
    .await?;

    // Every snapshot gone: a full replay, the same state.
    server.kill()?;
    for (_, key) in &taken {
        std::fs::remove_file(blob_file(&dir, key))?;
    }
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(state(&api, "s").await?, expected);
    assert_eq!(api.metric("invicta_snapshot_fallbacks_total").await?, 3.0);
    assert_eq!(
        api.metric("invicta_replayed_invocations_total").await?,
        28.0,
        "25 additions and 3 reads"
    );
    assert_eq!(api.metric("invicta_snapshot_recoveries_total").await?, 0.0);

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
    assert_eq!(api.metric("invicta_snapshot_recoveries_total").await?, 1.0);
    assert_eq!(
        api.metric("invicta_replayed_invocations_total").await?,
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

/// The worker's oplog, read through the API a page at a time, has every index once, in order.
async fn assert_contiguous(api: &Api, worker: &str) -> anyhow::Result<u64> {
    let mut expected = 1;
    loop {
        let page = api
            .get(&format!(
                "/v1/components/snap/workers/{worker}/oplog?from={expected}&count=7"
            ))
            .await?;
        anyhow::ensure!(page.status == 200, "{page:?}");
        let entries = page.body["entries"].as_array().cloned().unwrap_or_default();
        if entries.is_empty() {
            return Ok(expected - 1);
        }
        for e in &entries {
            anyhow::ensure!(
                e["index"].as_u64() == Some(expected),
                "expected entry {expected}, read {e}"
            );
            expected += 1;
        }
    }
}

/// Calls `add` with a key until it is answered, following the server across restarts.
async fn add_until_answered(
    url: &std::sync::RwLock<String>,
    key: &str,
    tenant_key: &str,
    worker: &str,
    delta: i64,
) -> anyhow::Result<i64> {
    eventually(
        &format!("{key} answered"),
        Duration::from_secs(60),
        || async move {
            let base = url.read().map_err(|_| anyhow::anyhow!("lock"))?.clone();
            let api = Api::new(&base).with_key(tenant_key);
            match api
                .invoke("snap", worker, "add", json!([delta]), Some(key))
                .await
            {
                Ok(reply) if reply.status == 200 => Ok(Some(
                    reply.body["result"]
                        .as_i64()
                        .ok_or_else(|| anyhow::anyhow!("{reply:?}"))?,
                )),
                // 5xx or no connection: the server is down or recovering; the call may or may
                // not have happened, and its key makes it happen once.
                Ok(reply) if reply.status >= 500 => Ok(None),
                Ok(reply) => anyhow::bail!("unexpected reply to {key}: {reply:?}"),
                Err(_) => Ok(None),
            }
        },
    )
    .await
}

/// SIGKILL at random moments while a worker snapshots and archives every 3 invocations: every
/// accepted addition is applied once, and the oplog, read across archive and store, has every
/// index once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archival_cut_off_by_sigkill_loses_and_doubles_nothing() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, RwLock};
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("invicta.toml");
    std::fs::write(&config, "[executor]\nsnapshot_every_invocations = 3\n")?;
    let config = config.to_string_lossy().into_owned();
    let dir = tmp.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("archivers", "pro").await?;
    api.upload("snap", component("snapshotter")).await?;
    let tenant_key = api.key.clone().unwrap_or_default();
    let url = Arc::new(RwLock::new(server.url.clone()));
    let server = Arc::new(Mutex::new(Some(server)));
    let killing = Arc::new(AtomicBool::new(true));
    let killer = {
        let (url, server, killing, config, dir) = (
            url.clone(),
            server.clone(),
            killing.clone(),
            config.clone(),
            dir.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..4 {
                // A random moment to kill at, not a wait for anything: the kill lands anywhere
                // in a call, a snapshot or an archival.
                let pause = 150 + crate::crash::rand_u64() % 350;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if let Some(running) = server.lock().map_err(|_| anyhow::anyhow!("lock"))?.take() {
                    running.kill()?;
                }
                let (dir, config) = (dir.clone(), config.clone());
                let fresh = tokio::task::spawn_blocking(move || {
                    Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])
                })
                .await??;
                *url.write().map_err(|_| anyhow::anyhow!("lock"))? = fresh.url.clone();
                *server.lock().map_err(|_| anyhow::anyhow!("lock"))? = Some(fresh);
            }
            killing.store(false, Ordering::Release);
            Ok::<_, anyhow::Error>(())
        })
    };
    let mut total = 0_i64;
    let mut round = 0;
    while round < 60 || killing.load(Ordering::Acquire) {
        let delta = (crate::crash::rand_u64() % 100) as i64 + 1;
        total += delta;
        let got = add_until_answered(&url, &format!("k{round}"), &tenant_key, "c", delta).await?;
        anyhow::ensure!(got == total, "call {round}: got {got}, expected {total}");
        round += 1;
        anyhow::ensure!(round < 20_000, "runaway loop");
    }
    killer.await??;
    let base = url.read().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let api = Api::new(&base).with_key(&tenant_key);
    assert_eq!(state(&api, "c").await?, json!([total, round]));
    let length = assert_contiguous(&api, "c").await?;
    let status = api.get("/v1/components/snap/workers/c").await?;
    assert_eq!(status.body["oplog_length"], json!(length), "{status:?}");
    let archived_files = walk(&dir.join("blobs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("oplog-archive"))
        .count();
    assert!(archived_files > 0, "segments were archived");
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

/// A version whose history does not replay (`add` became `deposit`) takes a worker over by a
/// snapshot: the old version saves, the new one loads; the worker recovers from that snapshot
/// after SIGKILL, cannot be reverted or forked back past it, and a bulk update says how each
/// worker moved.
#[tokio::test]
async fn a_version_whose_history_does_not_replay_takes_over_by_a_snapshot() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = config(tmp.path())?;
    let dir = tmp.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("movers", "pro").await?;
    api.upload("snap", component("snapshotter")).await?;
    for delta in 1..=5 {
        api.call("snap", "u", "add", json!([delta])).await?;
    }
    let uploaded = api.upload("snap", component("snapshotter_v2")).await?;
    assert_eq!(uploaded.body["version"], json!(2), "{uploaded:?}");
    let version = "/v1/components/snap/workers/u/version";

    let planned = api
        .put_json(version, &json!({ "version": 2, "dry_run": true }))
        .await?;
    assert_eq!(planned.status, 200, "{planned:?}");
    assert_eq!(planned.body["method"], "snapshot", "{planned:?}");
    assert!(
        planned.body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("`add`")),
        "{planned:?}"
    );
    let by_replay = api
        .put_json(version, &json!({ "version": 2, "method": "replay" }))
        .await?;
    assert_eq!(
        (by_replay.status, by_replay.code()),
        (409, "incompatible_version"),
        "{by_replay:?}"
    );
    assert_eq!(
        state(&api, "u").await?,
        json!([15, 5]),
        "still on version 1"
    );

    let moved = api.put_json(version, &json!({ "version": 2 })).await?;
    assert_eq!(moved.status, 200, "{moved:?}");
    assert_eq!(moved.body["component_version"], json!(2), "{moved:?}");
    assert_eq!(state(&api, "u").await?, json!([15, 5]));
    assert_eq!(
        api.call("snap", "u", "deposit", json!([10])).await?,
        json!(25)
    );
    let refused = api
        .post_json(
            "/v1/components/snap/workers/u/revert",
            &json!({ "last_invocations": 3 }),
            None,
        )
        .await?;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "invalid_revert"),
        "{refused:?}"
    );
    let fork = api
        .post_json(
            "/v1/components/snap/workers/u/fork",
            &json!({ "name": "u2" }),
            None,
        )
        .await?;
    assert_eq!(fork.status, 400, "{fork:?}");

    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(state(&api, "u").await?, json!([25, 6]));
    assert_eq!(
        api.call("snap", "u", "deposit", json!([1])).await?,
        json!(26)
    );

    // A bulk update: two workers of version 1, planned, then moved, each by a snapshot.
    for name in ["b1", "b2"] {
        let created = api
            .post_json(
                "/v1/components/snap/workers",
                &json!({ "name": name, "version": 1 }),
                None,
            )
            .await?;
        assert_eq!(created.status, 201, "{created:?}");
        api.call("snap", name, "add", json!([7])).await?;
    }
    let plan = api
        .post_json(
            "/v1/components/snap/update",
            &json!({ "version": 2, "dry_run": true }),
            None,
        )
        .await?;
    assert_eq!(plan.status, 200, "{plan:?}");
    let outcomes = |body: &Value| -> Vec<(String, String, String)> {
        body["results"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        (
                            r["worker"].as_str().unwrap_or_default().to_string(),
                            r["outcome"].as_str().unwrap_or_default().to_string(),
                            r["method"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let triple = |w: &str, o: &str, m: &str| (w.to_string(), o.to_string(), m.to_string());
    assert_eq!(
        outcomes(&plan.body),
        vec![
            triple("b1", "would_update", "snapshot"),
            triple("b2", "would_update", "snapshot"),
            triple("u", "unchanged", ""),
        ]
    );
    let done = api
        .post_json("/v1/components/snap/update", &json!({ "version": 2 }), None)
        .await?;
    assert_eq!(
        outcomes(&done.body),
        vec![
            triple("b1", "updated", "snapshot"),
            triple("b2", "updated", "snapshot"),
            triple("u", "unchanged", ""),
        ],
        "{done:?}"
    );
    assert_eq!(
        api.call("snap", "b1", "deposit", json!([1])).await?,
        json!(8)
    );
    Ok(())
}

/// A component's own snapshot policy overrides the executor's, is checked, and goes with it.
#[tokio::test]
async fn a_component_may_have_its_own_snapshot_policy() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = config(tmp.path())?;
    let dir = tmp.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("policies", "pro").await?;
    api.upload("snap", component("snapshotter")).await?;
    let path = "/v1/components/snap/snapshots";
    let none = api.get(path).await?;
    assert_eq!((none.status, none.code()), (404, "snapshots_not_found"));
    let set = api
        .put_json(path, &json!({ "every_invocations": 2, "every_entries": 0 }))
        .await?;
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(api.get(path).await?.body["every_invocations"], json!(2));
    for bad in [
        json!({ "every_invocations": 2 }),
        json!({ "every_invocations": -1, "every_entries": 0 }),
        json!({ "every_invocations": 2_000_000_000_000_u64, "every_entries": 0 }),
    ] {
        let refused = api.put_json(path, &bad).await?;
        assert_eq!(refused.status, 400, "{bad}: {refused:?}");
    }
    for delta in 1..=4 {
        api.call("snap", "p", "add", json!([delta])).await?;
    }
    // (The second is taken after the fourth addition is answered.)
    eventually(
        "a snapshot every 2 invocations",
        Duration::from_secs(10),
        || {
            let api = api.clone();
            async move { Ok((snapshots(&api, "p").await?.len() == 2).then_some(())) }
        },
    )
    .await?;
    // By size alone: a snapshot once 300 bytes of oplog have been written since the last.
    let by_size = api
        .put_json(
            path,
            &json!({ "every_invocations": 0, "every_entries": 0, "every_oplog_bytes": 300 }),
        )
        .await?;
    assert_eq!(by_size.status, 200, "{by_size:?}");
    for delta in 1..=12 {
        api.call("snap", "q", "add", json!([delta])).await?;
    }
    let taken = eventually("snapshots by size", Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let n = snapshots(&api, "q").await?.len();
            Ok((n > 0).then_some(n))
        }
    })
    .await?;
    assert!(taken < 12, "by size, not at every invocation: {taken}");
    let removed = api.delete(path).await?;
    assert_eq!(removed.status, 204);
    assert_eq!(api.get(path).await?.status, 404);
    let missing = api
        .put_json(
            "/v1/components/nothing/snapshots",
            &json!({ "every_invocations": 2, "every_entries": 0 }),
        )
        .await?;
    assert_eq!(missing.status, 404, "{missing:?}");
    Ok(())
}

/// A plan's retention: archived segments past it are deleted (but the first, which holds the
/// worker's creation), and the worker recovers from its latest snapshot on, after SIGKILL too;
/// it cannot be reverted back past that snapshot.
#[tokio::test]
async fn archived_history_past_the_plans_retention_is_deleted() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = config(tmp.path())?;
    let dir = tmp.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let operator = server.operator();
    let plans = operator.get("/v1/admin/plans").await?;
    let mut brief = plans.body["plans"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "pro"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no pro plan: {plans:?}"))?;
    brief["name"] = json!("brief");
    brief["archive_retention_days"] = json!(0);
    let put = operator.put_json("/v1/admin/plans/brief", &brief).await?;
    assert_eq!(put.status, 200, "{put:?}");
    let api = operator.new_tenant("forgetters", "brief").await?;
    api.upload("snap", component("snapshotter")).await?;
    for delta in 1..=35 {
        api.call("snap", "f", "add", json!([delta])).await?;
    }
    let segments = || {
        walk(&dir.join("blobs"))
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("oplog-archive"))
            .count()
    };
    // Archived after the 10th, 20th and 30th: the second (and maybe the third) expired.
    assert!(segments() < 3, "{} segments kept", segments());
    let first = api
        .get("/v1/components/snap/workers/f/oplog?from=1&count=1")
        .await?;
    assert_eq!(first.body["entries"][0]["kind"], "create", "{first:?}");
    let refused = api
        .post_json(
            "/v1/components/snap/workers/f/revert",
            &json!({ "last_invocations": 20 }),
            None,
        )
        .await?;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "invalid_revert"),
        "{refused:?}"
    );
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(state(&api, "f").await?, json!([630, 35]));
    assert_eq!(api.metric("invicta_snapshot_recoveries_total").await?, 1.0);
    Ok(())
}

/// A snapshot holds the files the worker wrote: a worker recovered from its latest snapshot,
/// with the history before it archived, reads every line it wrote, and writes on.
#[tokio::test]
async fn a_snapshot_holds_the_workers_files() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = config(tmp.path())?;
    let dir = tmp.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("notes", "pro").await?;
    api.upload("snap", component("snapshotter")).await?;
    for n in 1..=12_u32 {
        let lines = api
            .call("snap", "s", "note", json!([format!("line {n}")]))
            .await?;
        assert_eq!(lines, json!(n));
    }
    let taken = snapshots(&api, "s").await?;
    assert_eq!(taken.len(), 1, "after the 10th: {taken:?}");
    let all: String = (1..=12).map(|n| format!("line {n}\n")).collect();

    // SIGKILL: back from the snapshot (the history before it archived, not replayed), with
    // every line, and writing on.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(api.call("snap", "s", "notes", json!([])).await?, json!(all));
    assert_eq!(api.metric("invicta_snapshot_recoveries_total").await?, 1.0);
    assert_eq!(
        api.metric("invicta_replayed_invocations_total").await?,
        2.0,
        "only the two notes after the snapshot are replayed"
    );
    assert_eq!(
        api.call("snap", "s", "note", json!(["line 13"])).await?,
        json!(13)
    );
    Ok(())
}
