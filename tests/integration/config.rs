//! Configuration and secrets through `wasi:config/store`: set per component and per worker over
//! the API, read by a worker durably (replay after SIGKILL gives it what it read then), secrets
//! sealed at rest and never in an oplog in clear.

use invicta_tests::{Server, component};
use serde_json::json;

use crate::INVICTA;

const SECRET: &str = "s3cr3t-token-value";
const ROTATED: &str = "rotated-token-value";
/// A secret the guest reads (through `get-all`) and never returns.
const KEPT: &str = "p4ssw0rd-never-returned";

#[tokio::test]
async fn workers_read_config_and_secrets_durably() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = server.operator().new_tenant("conf", "pro").await?;
    assert_eq!(
        api.upload("conf", component("configured")).await?.status,
        201
    );
    let set = |path: &str, body: serde_json::Value| {
        let (api, path) = (api.clone(), path.to_string());
        async move { api.put_json(&path, &body).await }
    };
    let made = set(
        "/v1/components/conf/config/greeting",
        json!({ "value": "hello" }),
    )
    .await?;
    assert_eq!(made.status, 200, "{made:?}");
    let made = set(
        "/v1/components/conf/config/api-token",
        json!({ "value": SECRET, "secret": true }),
    )
    .await?;
    assert_eq!(
        (made.status, made.body["secret"].clone()),
        (200, json!(true))
    );
    assert!(!made.body.to_string().contains(SECRET), "{made:?}");
    let kept = set(
        "/v1/components/conf/config/db-password",
        json!({ "value": KEPT, "secret": true }),
    )
    .await?;
    assert_eq!(kept.status, 200);
    let own = set(
        "/v1/components/conf/workers/w2/config/greeting",
        json!({ "value": "hi w2" }),
    )
    .await?;
    assert_eq!(own.status, 200);
    let listed = api.get("/v1/components/conf/config").await?;
    assert_eq!(listed.status, 200);
    assert!(!listed.body.to_string().contains(SECRET), "{listed:?}");
    assert_eq!(listed.body["entries"].as_array().map(Vec::len), Some(3));

    assert_eq!(
        api.call("conf", "w1", "remember", json!(["greeting"]))
            .await?,
        json!("hello")
    );
    assert_eq!(
        api.call("conf", "w2", "remember", json!(["greeting"]))
            .await?,
        json!("hi w2")
    );
    assert_eq!(
        api.call("conf", "w1", "remember", json!(["api-token"]))
            .await?,
        json!(SECRET)
    );
    assert_eq!(
        api.call("conf", "w1", "keys", json!([])).await?,
        json!(["api-token", "db-password", "greeting"])
    );
    let changed = set(
        "/v1/components/conf/config/greeting",
        json!({ "value": "hello again" }),
    )
    .await?;
    assert_eq!(changed.status, 200);
    assert_eq!(
        api.call("conf", "w1", "remember", json!(["greeting"]))
            .await?,
        json!("hello again")
    );
    let oplog = api
        .get("/v1/components/conf/workers/w1/oplog?count=1000")
        .await?;
    assert!(
        oplog.body.to_string().contains("wasi:config/store.get"),
        "{oplog:?}"
    );
    // The host calls record a reference; only what the guest itself returned holds the value.
    let host_calls: Vec<String> = oplog.body["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["kind"] != "exported_function_completed")
                .map(|e| e.to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        host_calls
            .iter()
            .any(|e| e.contains("wasi:config/store.get")),
        "{host_calls:?}"
    );
    assert!(
        !host_calls
            .iter()
            .any(|e| e.contains(SECRET) || e.contains(KEPT)),
        "the secret is not in the oplog's host calls: {host_calls:?}"
    );

    // After SIGKILL the worker's reads replay as they were.
    server.kill()?;
    let at_rest: Vec<u8> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("store.sqlite"))
        .flat_map(|e| std::fs::read(e.path()).unwrap_or_default())
        .collect();
    assert!(!at_rest.is_empty());
    assert!(
        !at_rest.windows(KEPT.len()).any(|w| w == KEPT.as_bytes()),
        "a secret is sealed at rest (the guest returned the other, which its result holds)"
    );
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = api.at(&server.url);
    assert_eq!(
        api.call("conf", "w1", "remembered", json!([])).await?,
        json!(["hello", SECRET, "hello again"])
    );

    // A secret changed since is a new input on replay, not a divergence.
    let rotated = api
        .put_json(
            "/v1/components/conf/config/api-token",
            &json!({ "value": ROTATED, "secret": true }),
        )
        .await?;
    assert_eq!(rotated.status, 200);
    server.kill()?;
    let server = Server::start(INVICTA.as_ref(), &dir)?;
    let api = api.at(&server.url);
    assert_eq!(
        api.call("conf", "w1", "remembered", json!([])).await?,
        json!(["hello", ROTATED, "hello again"])
    );

    // Removing, refusals, and a worker's own entries going with it.
    assert_eq!(
        api.delete("/v1/components/conf/config/greeting")
            .await?
            .status,
        204
    );
    let again = api.delete("/v1/components/conf/config/greeting").await?;
    assert_eq!((again.status, again.code()), (404, "config_not_found"));
    assert_eq!(
        api.call("conf", "w3", "get", json!(["greeting"])).await?,
        json!(null)
    );
    let bad = api
        .put_json(
            "/v1/components/conf/config/bad%20key",
            &json!({ "value": "x" }),
        )
        .await?;
    assert_eq!(
        (bad.status, bad.code()),
        (400, "invalid_request"),
        "{bad:?}"
    );
    let big = api
        .put_json(
            "/v1/components/conf/config/big",
            &json!({ "value": "x".repeat(20_000) }),
        )
        .await?;
    assert_eq!(big.status, 400, "{big:?}");
    let nowhere = api
        .put_json("/v1/components/absent/config/k", &json!({ "value": "x" }))
        .await?;
    assert_eq!(
        (nowhere.status, nowhere.code()),
        (404, "component_not_found")
    );
    assert_eq!(
        api.delete("/v1/components/conf/workers/w2").await?.status,
        204
    );
    let gone = api.get("/v1/components/conf/workers/w2/config").await?;
    assert_eq!(gone.body["entries"], json!([]), "{gone:?}");

    // The CLI does the same.
    let key = api.key.clone().unwrap_or_default();
    let cli = |args: &[&str]| -> anyhow::Result<serde_json::Value> {
        let out = std::process::Command::new(INVICTA)
            .args(args)
            .arg("--json")
            .env("INVICTA_URL", &server.url)
            .env("INVICTA_API_KEY", &key)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "invicta {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    cli(&["config", "set", "conf", "from-cli", "yes"])?;
    cli(&[
        "config",
        "set",
        "conf",
        "hidden",
        "shh-cli-secret",
        "--secret",
    ])?;
    let listed = cli(&["config", "list", "conf"])?;
    assert!(listed.to_string().contains("from-cli"), "{listed}");
    assert!(!listed.to_string().contains("shh-cli-secret"), "{listed}");
    assert_eq!(
        api.call("conf", "w5", "get", json!(["hidden"])).await?,
        json!("shh-cli-secret")
    );
    cli(&["config", "unset", "conf", "from-cli"])?;

    // Deleted with its workers and made again, the component starts with nothing set.
    for worker in ["w1", "w3", "w5"] {
        let deleted = api
            .delete(&format!("/v1/components/conf/workers/{worker}"))
            .await?;
        assert_eq!(deleted.status, 204, "{worker}: {deleted:?}");
    }
    assert_eq!(api.delete("/v1/components/conf").await?.status, 204);
    assert_eq!(
        api.upload("conf", component("configured")).await?.status,
        201
    );
    let fresh = api.get("/v1/components/conf/config").await?;
    assert_eq!(fresh.body["entries"], json!([]), "{fresh:?}");
    Ok(())
}

/// A component's retry policy: its background invocations that name none run again as it says
/// (over the plan's); removed, the plan's applies again.
#[tokio::test]
async fn a_components_retry_policy_applies_to_its_background_invocations() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let api = server.operator().new_tenant("retrying", "pro").await?;
    assert_eq!(api.upload("burner", component("burner")).await?.status, 201);
    let policy =
        json!({ "max_attempts": 3, "backoff_min_ms": 10, "backoff_max_ms": 20, "on": ["trap"] });
    let set = api.put_json("/v1/components/burner/retry", &policy).await?;
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(api.get("/v1/components/burner/retry").await?.body, policy);
    let bad = api
        .put_json("/v1/components/burner/retry", &json!({ "max_attempts": 0 }))
        .await?;
    assert_eq!(bad.status, 400, "{bad:?}");
    let errors = |worker: &'static str| {
        let api = api.clone();
        async move {
            let oplog = api
                .get(&format!("/v1/components/burner/workers/{worker}/oplog"))
                .await?;
            anyhow::Ok(
                oplog.body["entries"]
                    .as_array()
                    .map(|e| e.iter().filter(|e| e["kind"] == "error").count())
                    .unwrap_or(0),
            )
        }
    };
    let finished = |worker: &'static str| {
        let api = api.clone();
        async move {
            let status = format!("/v1/components/burner/workers/{worker}/invocations/k");
            invicta_tests::eventually(
                "the invocation ends",
                std::time::Duration::from_secs(30),
                || {
                    let (api, status) = (api.clone(), status.clone());
                    async move {
                        let reply = api.get(&status).await?;
                        Ok((reply.body["status"] == "failed").then_some(reply))
                    }
                },
            )
            .await
        }
    };
    let enqueued = api
        .post_json(
            "/v1/components/burner/workers/a/enqueue",
            &json!({ "function": "trap", "params": ["boom"] }),
            Some("k"),
        )
        .await?;
    assert_eq!(enqueued.status, 202, "{enqueued:?}");
    finished("a").await?;
    assert_eq!(
        errors("a").await?,
        3,
        "three runs, as the component's policy says"
    );

    assert_eq!(api.delete("/v1/components/burner/retry").await?.status, 204);
    let gone = api.get("/v1/components/burner/retry").await?;
    assert_eq!((gone.status, gone.code()), (404, "retry_not_found"));
    let enqueued = api
        .post_json(
            "/v1/components/burner/workers/b/enqueue",
            &json!({ "function": "trap", "params": ["boom"] }),
            Some("k"),
        )
        .await?;
    assert_eq!(enqueued.status, 202);
    finished("b").await?;
    assert_eq!(errors("b").await?, 1, "the plan's policy (none): one run");
    Ok(())
}
