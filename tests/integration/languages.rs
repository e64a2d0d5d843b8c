//! The examples' counter from three languages, each built by its own toolchain (`make
//! examples`): Rust (wit-bindgen), Python (componentize-py) and JavaScript (ComponentizeJS through jco)
//! runs durably and unchanged — invoked, killed with SIGKILL, and back with its exact state; and
//! again after idle suspension. And a Python guest keeping notes in its files with `open`.

use std::path::PathBuf;
use std::time::Duration;

use invicta_tests::{Api, Configured, Server, eventually};
use serde_json::json;

use crate::INVICTA;

/// An example built by `make examples`.
fn example(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/wasm")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "example {} is missing ({e}): run `make examples`",
            path.display()
        )
    })
}

/// Uploads a large component answered early (`Prefer: respond-async`) and waits until it is
/// compiled: a language runtime takes the debug build a while.
async fn upload(api: &Api, name: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    upload_as(api, name, bytes, "application/wasm").await
}

/// [`upload`], of bytes of `content_type` (a tar archive with files, say).
async fn upload_as(
    api: &Api,
    name: &str,
    bytes: Vec<u8>,
    content_type: &str,
) -> anyhow::Result<()> {
    let accepted = api
        .http
        .post(format!("{}/v1/components/{name}", api.base))
        .bearer_auth(api.key.clone().unwrap_or_default())
        .header("content-type", content_type)
        .header("prefer", "respond-async")
        .body(bytes)
        .send()
        .await?;
    anyhow::ensure!(accepted.status() == 202, "{}", accepted.text().await?);
    let location = accepted
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| anyhow::anyhow!("no Location"))?
        .to_string();
    eventually(
        &format!("{name} compiled"),
        Duration::from_secs(600),
        || {
            let (api, location) = (api.clone(), location.clone());
            async move {
                let status = api.get(&location).await?;
                match status.body["status"].as_str() {
                    Some("ready") => Ok(Some(())),
                    Some("compiling") => Ok(None),
                    _ => anyhow::bail!("upload of {name}: {status:?}"),
                }
            }
        },
    )
    .await
}

/// The example `name` keeps its exact state across SIGKILL and idle suspension.
async fn durable(name: &str) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("invicta.toml");
    std::fs::write(
        &config,
        "[executor]\nidle_suspend_ms = 500\n\n[registry]\ncompile_timeout_ms = 900000\n",
    )?;
    let config = config.to_string_lossy().into_owned();
    let dir = tmp.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server
        .operator()
        .new_tenant("polyglots", "unlimited")
        .await?;
    upload(&api, name, example(name)).await?;
    assert_eq!(api.call(name, "p", "add", json!([5])).await?, json!(5));
    assert_eq!(api.call(name, "p", "add", json!([-2])).await?, json!(3));
    assert_eq!(api.call(name, "p", "add", json!([40])).await?, json!(43));

    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(api.call(name, "p", "get", json!([])).await?, json!(43));
    assert_eq!(api.call(name, "p", "add", json!([1])).await?, json!(44));

    eventually("the worker suspended", Duration::from_secs(30), || {
        let api = api.clone();
        let path = format!("/v1/components/{name}/workers/p");
        async move {
            let status = api.get(&path).await?;
            Ok((status.body["status"] == "suspended").then_some(()))
        }
    })
    .await?;
    assert_eq!(api.call(name, "p", "get", json!([])).await?, json!(44));
    Ok(())
}

#[tokio::test]
async fn a_rust_guest_keeps_its_state_across_sigkill_and_suspension() -> anyhow::Result<()> {
    durable("counter_rs").await
}

#[tokio::test]
async fn a_python_guest_keeps_its_state_across_sigkill_and_suspension() -> anyhow::Result<()> {
    durable("counter_py").await
}

#[tokio::test]
async fn a_javascript_guest_keeps_its_state_across_sigkill_and_suspension() -> anyhow::Result<()> {
    durable("counter_js").await
}

/// A Python guest keeps notes in a file with nothing but `open`, and reads a file its version
/// ships (read-only): the notes are back after SIGKILL and after idle suspension.
#[tokio::test]
async fn a_python_guest_keeps_its_files_across_sigkill_and_suspension() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let configured = Configured::new(
        INVICTA.as_ref(),
        tmp.path(),
        "[executor]\nidle_suspend_ms = 500\n\n[registry]\ncompile_timeout_ms = 900000\n",
    )?;
    let server = configured.start()?;
    let api = server.operator().new_tenant("notes", "unlimited").await?;
    let mut bundle = tar::Builder::new(Vec::new());
    for (path, content, mode) in [
        ("component.wasm", example("notes_py"), 0o644),
        (
            "files/config/greeting.txt",
            b"hello from the version\n".to_vec(),
            0o444,
        ),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_entry_type(tar::EntryType::Regular);
        bundle.append_data(&mut header, path, content.as_slice())?;
    }
    upload_as(&api, "notes", bundle.into_inner()?, "application/x-tar").await?;
    assert_eq!(
        api.call("notes", "n", "greeting", json!([])).await?,
        json!("hello from the version")
    );
    assert_eq!(
        api.call("notes", "n", "add-note", json!(["first"])).await?,
        json!(1)
    );
    assert_eq!(
        api.call("notes", "n", "add-note", json!(["second"]))
            .await?,
        json!(2)
    );

    server.kill()?;
    let server = configured.start()?;
    let api = api.at(&server.url);
    assert_eq!(
        api.call("notes", "n", "read-notes", json!([])).await?,
        json!("first\nsecond\n")
    );
    assert_eq!(
        api.call("notes", "n", "add-note", json!(["third"])).await?,
        json!(3)
    );
    api.until_suspended("notes", "n", Duration::from_secs(30))
        .await?;
    assert_eq!(
        api.call("notes", "n", "read-notes", json!([])).await?,
        json!("first\nsecond\nthird\n")
    );
    let listed = api.get("/v1/components/notes/workers/n/files").await?;
    let names: Vec<_> = listed.body["entries"]
        .as_array()
        .map(|e| e.iter().map(|e| e["name"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(names, [json!("config"), json!("notes.txt")], "{listed:?}");
    Ok(())
}
