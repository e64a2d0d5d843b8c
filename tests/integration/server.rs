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

/// With `[grpc] token`, a role's gRPC service refuses every call that does not carry it.
#[tokio::test]
async fn internal_calls_need_the_cluster_token_when_one_is_set() -> anyhow::Result<()> {
    use invicta_proto::scheduler::{LocateRequest, scheduler_client::SchedulerClient};
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    std::fs::create_dir_all(&dir)?;
    let scheduler = Server::start_role(
        INVICTA.as_ref(),
        &dir,
        "scheduler",
        "[scheduler]\nlisten = \"127.0.0.1:0\"\n\n[grpc]\ntoken = \"cluster-secret\"\n",
    )?;
    let mut client = SchedulerClient::connect(scheduler.url.clone()).await?;
    let locate = |token: Option<&str>| {
        let mut request = tonic::Request::new(LocateRequest {
            worker: Some(invicta_proto::common::WorkerId {
                tenant: "t1".into(),
                component: "c".into(),
                worker: "w".into(),
            }),
        });
        if let Some(token) = token
            && let Ok(value) = token.parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    };
    for wrong in [None, Some("Bearer guess"), Some("cluster-secret")] {
        let refused = client.locate(locate(wrong)).await;
        assert_eq!(
            refused.as_ref().map_err(|s| s.code()).err(),
            Some(tonic::Code::Unauthenticated),
            "{wrong:?}: {refused:?}"
        );
    }
    // The right token gets through to the scheduler, which has nowhere to put the worker yet.
    let placed = client.locate(locate(Some("Bearer cluster-secret"))).await;
    assert_ne!(
        placed.as_ref().map_err(|s| s.code()).err(),
        Some(tonic::Code::Unauthenticated),
        "{placed:?}"
    );

    // A gateway configured with another token: its users see a server error at once, not a
    // refusal of their own API key, nor a wait on retries.
    let gateway = Server::start_role(
        INVICTA.as_ref(),
        &dir,
        "gateway",
        &format!(
            "[grpc]\nscheduler = \"{}\"\ntoken = \"another-secret\"\n",
            scheduler.url
        ),
    )?;
    let api = gateway.operator().new_tenant("mismatch", "pro").await?;
    assert_eq!(
        api.upload("counter", invicta_tests::component("counter"))
            .await?
            .status,
        201
    );
    let started = std::time::Instant::now();
    let reply = api
        .invoke("counter", "w", "add", serde_json::json!([1]), None)
        .await?;
    assert_eq!((reply.status, reply.code()), (500, "internal"), "{reply:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

/// Logs written to a file or a pipe are plain text: no terminal escape codes.
#[test]
fn logs_to_a_pipe_have_no_colours() -> anyhow::Result<()> {
    use std::io::BufRead;
    let data = tempfile::tempdir()?;
    let mut child = std::process::Command::new(INVICTA)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("INVICTA_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("the server's stderr"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The first log event the server writes (it logs at info when it starts).
    let line = rx.recv_timeout(std::time::Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    let line = line?;
    assert!(line.contains("INFO"), "{line:?}");
    assert!(!line.contains('\u{1b}'), "{line:?}");
    Ok(())
}

/// The console is served without a key (the key is the browser's, sent with each API call),
/// under a policy that allows scripts and styles from the server only; what the page refers
/// to is served.
#[tokio::test]
async fn serves_the_console_under_a_strict_policy() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let client = reqwest::Client::new();
    let page = client.get(format!("{}/console", server.url)).send().await?;
    assert_eq!(page.status(), 200);
    let policy = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let html = page.text().await?;
    for (asset, kind) in [
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        assert!(html.contains(asset), "the page refers to {asset}");
        let served = client.get(format!("{}{asset}", server.url)).send().await?;
        assert_eq!(served.status(), 200, "{asset}");
        let content_type = served
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(content_type.starts_with(kind), "{asset}: {content_type}");
    }
    let missing = client
        .get(format!("{}/console/nothing.js", server.url))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    Ok(())
}
