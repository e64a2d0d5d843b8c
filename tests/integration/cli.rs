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
    let plans = text(&url, OPERATOR_KEY, &["admin", "plan", "list"])?;
    assert!(
        plans.contains("free") && plans.contains("unlimited"),
        "{plans}"
    );
    let mut plan = json(&url, OPERATOR_KEY, &["admin", "plan", "show", "free"])?;
    plan["name"] = serde_json::json!("tiny");
    plan["workers_max"] = serde_json::json!(3);
    let plan_file = data.path().join("tiny.json");
    std::fs::write(&plan_file, plan.to_string())?;
    let saved = text(
        &url,
        OPERATOR_KEY,
        &["admin", "plan", "put", "tiny", &plan_file.to_string_lossy()],
    )?;
    assert!(saved.contains("plan tiny saved"), "{saved}");
    assert_eq!(
        json(&url, OPERATOR_KEY, &["admin", "plan", "show", "tiny"])?["workers_max"],
        3
    );

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

    // A component with files, from a tar archive; a worker's files listed and read.
    let bundle = data.path().join("files.tar");
    {
        let mut tar = tar::Builder::new(std::fs::File::create(&bundle)?);
        let wasm = invicta_tests::component("files");
        let mut header = tar::Header::new_ustar();
        header.set_size(wasm.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, "component.wasm", wasm.as_slice())?;
        let mut header = tar::Header::new_ustar();
        header.set_size(3);
        header.set_mode(0o444);
        tar.append_data(&mut header, "files/etc/app.toml", b"x=1".as_slice())?;
        tar.finish()?;
    }
    let added = json(
        &url,
        &key,
        &["component", "add", "files", &bundle.to_string_lossy()],
    )?;
    assert_eq!(added["files"][0]["path"], "etc/app.toml", "{added}");
    text(
        &url,
        &key,
        &[
            "worker",
            "invoke",
            "files",
            "f",
            "write-text",
            r#""/notes.txt""#,
            r#""kept""#,
        ],
    )?;
    let listed = text(&url, &key, &["worker", "files", "files", "f"])?;
    assert!(
        listed.contains("etc") && listed.contains("notes.txt"),
        "{listed}"
    );
    let etc = text(&url, &key, &["worker", "files", "files", "f", "/etc"])?;
    assert!(etc.contains("read-only"), "{etc}");
    assert_eq!(
        text(&url, &key, &["worker", "files", "files", "f", "/notes.txt"])?,
        "kept"
    );
    let created = json(&url, &key, &["key", "create", "--scope", "read"])?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    assert!(text(&url, &key, &["key", "list"])?.contains(&id));
    assert!(text(&url, &key, &["key", "revoke", &id])?.contains("revoked"));

    // A retry policy from the command line: checked by the server, which names what is wrong.
    let retried = text(
        &url,
        &key,
        &[
            "worker",
            "enqueue",
            "counter",
            "w1",
            "add",
            "0",
            "--retry-attempts",
            "3",
            "--retry-backoff-ms",
            "100",
            "--retry-on",
            "trap",
        ],
    )?;
    assert!(retried.starts_with("accepted "), "{retried}");
    let refused = invicta(
        &url,
        &key,
        &[
            "worker",
            "enqueue",
            "counter",
            "w1",
            "add",
            "0",
            "--retry-attempts",
            "3",
            "--retry-on",
            "interrupted",
        ],
    )?;
    assert_eq!(refused.status.code(), Some(3), "the API refused");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("interrupted"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Accepted now, asked for later; logs; listing and deleting.
    let accepted = text(
        &url,
        &key,
        &["worker", "enqueue", "counter", "w1", "add", "3"],
    )?;
    let job = accepted
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(accepted.starts_with("accepted "), "{accepted}");
    assert_eq!(
        text(
            &url,
            &key,
            &[
                "worker",
                "result",
                "counter",
                "w1",
                &job,
                "--wait-ms",
                "10000"
            ]
        )?
        .trim(),
        "10"
    );
    assert_eq!(
        text(
            &url,
            &key,
            &["worker", "invoke", "counter", "w1", "add", "--wave", "-4"]
        )?
        .trim(),
        "6"
    );
    let added = json(
        &url,
        &key,
        &[
            "worker",
            "schedule",
            "add",
            "counter",
            "w1",
            "--cron",
            "0 0 0 1 1 * 2099",
            "add",
            "1",
        ],
    )?;
    let schedule = added["id"].as_str().unwrap_or_default().to_string();
    let listed = text(&url, &key, &["worker", "schedule", "list", "counter", "w1"])?;
    assert!(
        listed.contains(&schedule) && listed.contains("2099"),
        "{listed}"
    );
    assert!(
        text(
            &url,
            &key,
            &["worker", "schedule", "pause", "counter", "w1", &schedule]
        )?
        .contains("paused")
    );
    assert!(
        text(
            &url,
            &key,
            &["worker", "schedule", "delete", "counter", "w1", &schedule]
        )?
        .contains("deleted")
    );
    let later = text(
        &url,
        &key,
        &[
            "worker", "enqueue", "counter", "w1", "add", "0", "--in-ms", "200",
        ],
    )?;
    let later = later
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        text(
            &url,
            &key,
            &[
                "worker",
                "result",
                "counter",
                "w1",
                &later,
                "--wait-ms",
                "10000"
            ]
        )?
        .trim(),
        "6"
    );
    let logger = counter.replace("counter.wasm", "logger.wasm");
    text(&url, &key, &["component", "add", "logger", &logger])?;
    text(
        &url,
        &key,
        &["worker", "invoke", "logger", "l", "log", "\"hello\""],
    )?;
    let logs = text(&url, &key, &["worker", "logs", "logger", "l"])?;
    assert!(logs.contains("hello"), "{logs}");
    let components = text(&url, &key, &["component", "list"])?;
    assert!(
        components.contains("counter") && components.contains("logger"),
        "{components}"
    );
    let listed = text(
        &url,
        &key,
        &["worker", "list", "counter", "--status", "active"],
    )?;
    assert!(
        listed.contains("w1") && listed.contains("active"),
        "{listed}"
    );
    assert!(text(&url, &key, &["worker", "delete", "logger", "l"])?.contains("deleted worker l"));
    assert!(text(&url, &key, &["component", "delete", "logger"])?.contains("deleted"));
    let in_use = invicta(&url, &key, &["component", "delete", "counter"])?;
    assert_eq!(in_use.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&in_use.stderr).contains("component_in_use"));

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

#[tokio::test]
async fn help_and_completions() -> anyhow::Result<()> {
    for args in [
        vec!["--help"],
        vec!["worker", "--help"],
        vec!["worker", "logs", "--help"],
        vec!["component", "--help"],
        vec!["profile", "--help"],
        vec!["admin", "tenant", "--help"],
    ] {
        let out = Command::new(INVICTA).args(&args).output()?;
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Usage:"), "{args:?}: {help}");
    }
    let out = Command::new(INVICTA)
        .args(["completions", "bash"])
        .output()?;
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("invicta") && script.contains("enqueue"),
        "bash completions"
    );
    Ok(())
}

#[tokio::test]
async fn following_logs_survives_a_server_restart() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};

    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let api = server.operator().new_tenant("follower", "pro").await?;
    api.upload("logger", invicta_tests::component("logger"))
        .await?;
    api.call("logger", "w", "log", serde_json::json!(["before"]))
        .await?;
    let mut follow = Command::new(INVICTA)
        .args(["worker", "logs", "logger", "w", "--follow"])
        .env("INVICTA_URL", &server.url)
        .env("INVICTA_API_KEY", api.key.clone().unwrap_or_default())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = follow
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let wait_for = |text: &str| -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(text) => return Ok(()),
                Ok(_) => {}
                Err(_) => anyhow::bail!("`{text}` never came"),
            }
        }
    };
    wait_for("before")?;
    // The server dies and comes back on the same address; the follower reconnects and
    // prints what was logged afterwards, and nothing twice.
    let server = server.restart_in_place()?;
    let api = api.at(&server.url);
    api.call("logger", "w", "log", serde_json::json!(["after"]))
        .await?;
    wait_for("after")?;
    let _ = follow.kill();
    let output = follow.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reconnect"), "{stderr}");
    Ok(())
}
