//! The all-in-one server starts, serves health and readiness, keeps its data under the data
//! directory, and stops cleanly on SIGTERM.

use invicta_tests::Server;

use crate::INVICTA;

#[tokio::test]
async fn serves_health_and_readiness() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let client = reqwest::Client::new();

    let health = client.get(format!("{}/healthz", server.url)).send().await?;
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await?;
    assert_eq!(body["status"], "ok");

    let ready = client.get(format!("{}/readyz", server.url)).send().await?;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await?;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["store"]["backend"], "embedded");
    assert_eq!(body["blobs"]["backend"], "local");

    // The store and blob store live under the data directory.
    assert!(data.path().join("store.sqlite").exists());
    assert!(data.path().join("blobs").is_dir());

    let unknown = client
        .get(format!("{}/no-such-path", server.url))
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);

    assert!(server.stop()?, "the server exits cleanly on SIGTERM");
    Ok(())
}

#[tokio::test]
async fn refuses_a_bad_config_file_clearly() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let config = data.path().join("invicta.toml");
    std::fs::write(
        &config,
        "[gateway]\nlisten = \"127.0.0.1:0\"\nno_such_key = 1\n",
    )?;
    let output = std::process::Command::new(INVICTA)
        .args(["server", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data.path())
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no_such_key"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn reports_a_taken_port() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let data = tempfile::tempdir()?;
    let output = std::process::Command::new(INVICTA)
        .args(["server", "--listen", &addr, "--data-dir"])
        .arg(data.path())
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&addr), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn refuses_unknown_or_clashing_roles_clearly() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    for (roles, expected) in [
        ("all,executor", "cannot be combined"),
        ("billing-ish", "invalid value 'billing-ish'"),
    ] {
        let output = std::process::Command::new(INVICTA)
            .args(["server", "--role", roles, "--data-dir"])
            .arg(data.path())
            .output()?;
        assert!(!output.status.success(), "--role {roles} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "--role {roles}: {stderr}");
    }
    Ok(())
}
