//! The `invicta` CLI against a real server: a new user's journey, and its exit codes.

use std::process::{Command, Output};

use invicta_tests::{OPERATOR_KEY, Server};
use serde_json::Value;

use crate::INVICTA;

fn invicta(url: &str, key: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(INVICTA)
        .args(args)
        .env("INVICTA_URL", url)
        .env("INVICTA_API_KEY", key)
        .output()?)
}

/// Runs a command that must succeed with `--json`, and returns its JSON.
fn json(url: &str, key: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let out = invicta(url, key, &all)?;
    anyhow::ensure!(
        out.status.success(),
        "invicta {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn text(url: &str, key: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = invicta(url, key, args)?;
    anyhow::ensure!(
        out.status.success(),
        "invicta {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn a_new_users_journey() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let url = server.url.clone();
    let counter = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/components/wasm/counter.wasm");
    let counter = counter.to_string_lossy().into_owned();

    // The operator makes a tenant and its first key.
    let tenant = json(
        &url,
        OPERATOR_KEY,
        &["admin", "tenant", "create", "acme", "--plan", "free"],
    )?;
    let tenant_id = tenant["id"].as_str().unwrap_or_default().to_string();
    let key = json(
        &url,
        OPERATOR_KEY,
        &[
            "admin", "tenant", "key", &tenant_id, "--scope", "admin", "--scope", "deploy",
            "--scope", "invoke", "--scope", "read",
        ],
    )?;
    let key = key["key"].as_str().unwrap_or_default().to_string();
    assert!(text(&url, OPERATOR_KEY, &["admin", "tenant", "list"])?.contains("acme"));

    // The tenant uploads, invokes, and looks at what happened.
    let uploaded = text(&url, &key, &["component", "add", "counter", &counter])?;
    assert!(
        uploaded.starts_with("uploaded counter version 1"),
        "{uploaded}"
    );
    let shown = text(&url, &key, &["component", "show", "counter"])?;
    assert!(
        shown.contains("FUNCTION") && shown.contains("delta: s64"),
        "{shown}"
    );
    assert_eq!(
        text(
            &url,
            &key,
            &["worker", "new", "counter", "w1", "--env", "A=1"]
        )?
        .trim(),
        "created worker w1 of counter version 1"
    );
    assert_eq!(
        text(
            &url,
            &key,
            &["worker", "invoke", "counter", "w1", "add", "5"]
        )?
        .trim(),
        "5"
    );
    assert_eq!(
        text(
            &url,
            &key,
            &[
                "worker",
                "invoke",
                "counter",
                "w1",
                "add",
                "2",
                "--idempotency-key",
                "k"
            ]
        )?
        .trim(),
        "7"
    );
    assert_eq!(
        text(
            &url,
            &key,
            &[
                "worker",
                "invoke",
                "counter",
                "w1",
                "add",
                "2",
                "--idempotency-key",
                "k"
            ]
        )?
        .trim(),
        "7"
    );
    let status = json(&url, &key, &["worker", "show", "counter", "w1"])?;
    assert_eq!(status["oplog_length"], 5);
    let oplog = text(&url, &key, &["worker", "oplog", "counter", "w1"])?;
    assert!(oplog.contains("exported_function_completed"), "{oplog}");
    assert!(text(&url, &key, &["worker", "list", "counter"])?.contains("w1"));
    let usage = json(&url, &key, &["usage"])?;
    assert_eq!(usage["invocations"], 2);
    let created = json(&url, &key, &["key", "create", "--scope", "read"])?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    assert!(text(&url, &key, &["key", "list"])?.contains(&id));
    assert!(text(&url, &key, &["key", "revoke", &id])?.contains("revoked"));

    // Exit codes tell usage, API and network errors apart.
    let api_error = invicta(&url, &key, &["worker", "invoke", "counter", "w1", "nope"])?;
    assert_eq!(api_error.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&api_error.stderr).contains("unknown_function"));
    let bad_json = invicta(
        &url,
        &key,
        &["worker", "invoke", "counter", "w1", "add", "{oops"],
    )?;
    assert_eq!(bad_json.status.code(), Some(2));
    let usage_error = invicta(&url, &key, &["worker", "invoke"])?;
    assert_eq!(usage_error.status.code(), Some(2));
    let unreachable = invicta("http://127.0.0.1:1", &key, &["usage"])?;
    assert_eq!(unreachable.status.code(), Some(4));
    let no_key = invicta(&url, "", &["usage"])?;
    assert_eq!(no_key.status.code(), Some(3));
    Ok(())
}
