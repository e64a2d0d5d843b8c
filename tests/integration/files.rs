//! A filesystem per worker: a version carries initial files (an upload as a tar archive of
//! `component.wasm` and `files/…`; a file without its owner's write bit is read-only); each
//! worker sees them at `/` through ordinary `std::fs` calls, writes its own, and finds them
//! again after SIGKILL and after idle suspension (rebuilt by replay). Read-only files cannot be
//! changed, removed or renamed; listings are sorted; timestamps are absent (the epoch); a write
//! past the plan's `files_per_worker_bytes` fails as a full disk, and an invocation that leaves
//! more anyway fails and has its writes undone;
//! `GET …/files/{path}` lists and reads them.

use std::time::Duration;

use invicta_tests::{Api, Configured, Server, component, eventually};
use serde_json::{Value, json};

use crate::INVICTA;

/// A tar archive of `members`: (path, bytes, mode); a symlink when the mode is 0.
fn archive(members: &[(&str, &[u8], u32)]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content, mode) in members {
        // The name is set as bytes: the builder itself refuses `..`, which the server must.
        let mut header = tar::Header::new_ustar();
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        if *mode == 0 {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_link_name("/etc/passwd")?;
            header.set_size(0);
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(content.len() as u64);
            header.set_mode(*mode);
        }
        header.set_cksum();
        builder.append(&header, *content)?;
    }
    Ok(builder.into_inner()?)
}

fn with_files(wasm: &[u8], notes: &[u8]) -> anyhow::Result<Vec<u8>> {
    archive(&[
        ("component.wasm", wasm, 0o644),
        ("files/etc/app.toml", b"name = \"demo\"\n", 0o444),
        ("files/data/notes.txt", notes, 0o644),
    ])
}

async fn call(api: &Api, worker: &str, function: &str, params: Value) -> anyhow::Result<Value> {
    api.call("files", worker, function, params).await
}

/// The raw bytes of `GET path`.
async fn raw(api: &Api, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut request = api.http.get(format!("{}{path}", api.base));
    if let Some(key) = &api.key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.to_vec()))
}

/// The executors' directories of worker files (`<data>/worker-files/<executor id>`), sorted.
fn executor_dirs(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(data.join("worker-files"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Whether worker `w` of component `files` has a directory on an executor's disk.
fn on_disk(data: &std::path::Path, worker: &str) -> bool {
    executor_dirs(data).iter().any(|executor| {
        std::fs::read_dir(executor).is_ok_and(|tenants| {
            tenants
                .flatten()
                .any(|t| t.path().join("files").join(worker).exists())
        })
    })
}

#[tokio::test]
async fn workers_have_files_of_their_own_that_survive_crashes() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let configured = Configured::new(
        INVICTA.as_ref(),
        tmp.path(),
        "[executor]\nidle_suspend_ms = 300\n",
    )?;
    let dir = configured.dir.clone();
    let server = configured.start()?;
    let api = server.operator().new_tenant("files", "pro").await?;
    let wasm = component("files");

    // Archives that are not what a worker could be given are refused, in words.
    for (members, expected) in [
        (vec![("files/a", b"1".as_slice(), 0o644)], "component.wasm"),
        (
            vec![
                ("component.wasm", wasm.as_slice(), 0o644),
                ("files/passwd", b"".as_slice(), 0),
            ],
            "not a regular file",
        ),
        (
            vec![
                ("component.wasm", wasm.as_slice(), 0o644),
                ("files/../escape", b"".as_slice(), 0o644),
            ],
            "plain names",
        ),
    ] {
        let reply = api
            .post_raw(
                "/v1/components/files",
                "application/x-tar",
                archive(&members)?,
            )
            .await?;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_archive"),
            "{reply:?}"
        );
        assert!(
            reply.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(expected)),
            "{reply:?}"
        );
    }

    let uploaded = api
        .post_raw(
            "/v1/components/files",
            "application/x-tar",
            with_files(&wasm, b"first")?,
        )
        .await?;
    assert_eq!(uploaded.status, 201, "{uploaded:?}");
    assert_eq!(
        uploaded.body["files"],
        json!([
            { "path": "data/notes.txt", "size": 5, "read_only": false },
            { "path": "etc/app.toml", "size": 14, "read_only": true },
        ])
    );
    // The same component and files, packed again, are the same version; other files are not.
    let again = api
        .post_raw(
            "/v1/components/files",
            "application/x-tar",
            with_files(&wasm, b"first")?,
        )
        .await?;
    assert_eq!((again.status, &again.body["version"]), (200, &json!(1)));

    // The version's files, at `/`, through `std::fs`.
    assert_eq!(
        call(&api, "w", "read-text", json!(["/etc/app.toml"])).await?,
        json!({ "ok": "name = \"demo\"\n" })
    );
    assert_eq!(
        call(&api, "w", "read-text", json!(["data/notes.txt"])).await?,
        json!({ "ok": "first" })
    );
    // Read-only stays read-only: no write, removal or rename, nor of its directory.
    for (function, params) in [
        ("write-text", json!(["/etc/app.toml", "hacked"])),
        ("append-text", json!(["/etc/app.toml", "more"])),
        ("remove-file", json!(["/etc/app.toml"])),
        ("rename-file", json!(["/etc/app.toml", "/moved.toml"])),
        ("rename-file", json!(["/data/notes.txt", "/etc/app.toml"])),
        ("rename-file", json!(["/etc", "/etc2"])),
    ] {
        let result = call(&api, "w", function, params.clone()).await?;
        assert!(result.get("err").is_some(), "{function}{params}: {result}");
    }
    assert_eq!(
        call(&api, "w", "read-text", json!(["/etc/app.toml"])).await?,
        json!({ "ok": "name = \"demo\"\n" })
    );
    // What it writes is its own.
    for (function, params) in [
        ("append-text", json!(["/data/notes.txt", " second"])),
        ("make-dir", json!(["/out/deep"])),
        ("write-text", json!(["/out/c.txt", "c"])),
        ("write-text", json!(["/out/a.txt", "a"])),
        ("write-text", json!(["/out/deep/b.txt", "bee"])),
        ("write-text", json!(["/out/gone.txt", "soon gone"])),
        ("remove-file", json!(["/out/gone.txt"])),
    ] {
        let result = call(&api, "w", function, params.clone()).await?;
        assert_eq!(result, json!({ "ok": null }), "{function}{params}");
    }
    let listing = json!({ "ok": ["a.txt", "c.txt", "deep"] });
    assert_eq!(call(&api, "w", "list-dir", json!(["/out"])).await?, listing);
    // No timestamps (the epoch, as the guest's libc reads their absence): they would differ on
    // replay.
    assert_eq!(
        call(&api, "w", "stat-file", json!(["/data/notes.txt"])).await?,
        json!({ "ok": [12, 0] })
    );
    // Another worker has its own copy.
    assert_eq!(
        call(&api, "other", "read-text", json!(["/data/notes.txt"])).await?,
        json!({ "ok": "first" })
    );
    assert_eq!(
        call(&api, "other", "list-dir", json!(["/"])).await?,
        json!({ "ok": ["data", "etc"] })
    );

    // Over the API.
    let root = api.get("/v1/components/files/workers/w/files").await?;
    assert_eq!(root.status, 200, "{root:?}");
    let names: Vec<_> = root.body["entries"]
        .as_array()
        .map(|e| e.iter().map(|e| e["name"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(names, [json!("data"), json!("etc"), json!("out")]);
    let etc = api.get("/v1/components/files/workers/w/files/etc").await?;
    assert_eq!(
        etc.body["entries"],
        json!([{ "name": "app.toml", "kind": "file", "size": 14, "read_only": true }])
    );
    assert_eq!(
        raw(&api, "/v1/components/files/workers/w/files/out/deep/b.txt").await?,
        (200, b"bee".to_vec())
    );
    let missing = api
        .get("/v1/components/files/workers/w/files/out/nope")
        .await?;
    assert_eq!(
        (missing.status, missing.code()),
        (404, "file_not_found"),
        "{missing:?}"
    );
    let no_worker = api.get("/v1/components/files/workers/nobody/files").await?;
    assert_eq!(no_worker.code(), "worker_not_found", "{no_worker:?}");

    // SIGKILL: replay makes the files again, and writes nothing twice. What the killed
    // executor left on disk is removed by the next one as it starts.
    let killed = executor_dirs(&dir);
    assert_eq!(killed.len(), 1, "one executor's directory: {killed:?}");
    assert!(on_disk(&dir, "w"));
    server.kill()?;
    assert!(killed[0].exists(), "a SIGKILL leaves the directory behind");
    let server = configured.start()?;
    let now = executor_dirs(&dir);
    assert!(
        !killed[0].exists(),
        "left behind after the restart: {now:?}"
    );
    assert_eq!(now.len(), 1, "{now:?}");
    let api = api.at(&server.url);
    assert_eq!(
        call(&api, "w", "read-text", json!(["/data/notes.txt"])).await?,
        json!({ "ok": "first second" })
    );
    assert_eq!(call(&api, "w", "list-dir", json!(["/out"])).await?, listing);
    assert_eq!(
        raw(&api, "/v1/components/files/workers/w/files/out/c.txt").await?,
        (200, b"c".to_vec())
    );
    // Idle suspension: the directory leaves the disk, and comes back as it was.
    api.until_suspended("files", "w", Duration::from_secs(10))
        .await?;
    eventually(
        "the suspended worker's directory removed",
        Duration::from_secs(10),
        || {
            let gone = !on_disk(&dir, "w");
            async move { Ok(gone.then_some(())) }
        },
    )
    .await?;
    assert_eq!(
        raw(&api, "/v1/components/files/workers/w/files/data/notes.txt").await?,
        (200, b"first second".to_vec())
    );
    assert!(on_disk(&dir, "w"));
    assert_eq!(
        call(&api, "w", "read-text", json!(["/out/deep/b.txt"])).await?,
        json!({ "ok": "bee" })
    );
    // A worker deleted takes its files with it.
    let deleted = api.delete("/v1/components/files/workers/other").await?;
    assert!(deleted.status < 300, "{deleted:?}");
    assert!(!on_disk(&dir, "other"));
    Ok(())
}

#[tokio::test]
async fn files_beyond_the_plan_undo_the_invocation() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let operator = server.operator();
    let mut plan = operator.get("/v1/admin/plans").await?.body["plans"]
        .as_array()
        .and_then(|plans| plans.iter().find(|p| p["name"] == "pro").cloned())
        .ok_or_else(|| anyhow::anyhow!("the pro plan"))?;
    plan["name"] = json!("small-disk");
    plan["files_per_worker_bytes"] = json!(256 * 1024);
    let put = operator
        .put_json("/v1/admin/plans/small-disk", &plan)
        .await?;
    assert_eq!(put.status, 200, "{put:?}");
    let api = operator.new_tenant("small", "small-disk").await?;
    api.upload("files", component("files")).await?;
    assert_eq!(
        call(&api, "w", "fill-file", json!(["/kept", 100 * 1024])).await?,
        json!({ "ok": null })
    );
    // A write past what the plan leaves stops the invocation at once (no invocation writes
    // unbounded bytes before its end is checked); it fails, and its writes are undone.
    let stopped = api
        .invoke(
            "files",
            "w",
            "fill-file",
            json!(["/partial", 200 * 1024]),
            None,
        )
        .await?;
    assert_eq!(
        (stopped.status, stopped.code()),
        (422, "files_too_large"),
        "{stopped:?}"
    );
    assert!(
        stopped.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("goes past what `files_per_worker_bytes` leaves")),
        "{stopped:?}"
    );
    // Growth the budget does not see (a sparse file's length) is measured at the end: the
    // invocation fails, and its writes are undone.
    let over = api
        .invoke(
            "files",
            "w",
            "grow-file",
            json!(["/sparse", 1024 * 1024]),
            None,
        )
        .await?;
    assert_eq!(
        (over.status, over.code()),
        (422, "files_too_large"),
        "{over:?}"
    );
    assert!(
        over.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("files_per_worker_bytes") && d.contains("262144")),
        "{over:?}"
    );
    // Its writes went with it; what came before stays.
    assert_eq!(
        call(&api, "w", "list-dir", json!(["/"])).await?,
        json!({ "ok": ["kept"] })
    );
    assert_eq!(
        call(&api, "w", "stat-file", json!(["/kept"])).await?,
        json!({ "ok": [102400, 0] })
    );
    // So does a worker's count of entries (measuring them after an invocation costs).
    let many = api
        .invoke("files", "w", "make-many", json!(["/many", 10_001]), None)
        .await?;
    assert_eq!(
        (many.status, many.code()),
        (422, "files_too_large"),
        "{many:?}"
    );
    assert!(
        many.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("10000 entries")),
        "{many:?}"
    );
    // And after a crash, the failed invocation is not replayed.
    server.kill()?;
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = api.at(&server.url);
    assert_eq!(
        call(&api, "w", "list-dir", json!(["/"])).await?,
        json!({ "ok": ["kept"] })
    );
    Ok(())
}
