//! `invicta server --demo <component.wasm>` (what `make run` starts): the first time, a `demo`
//! tenant with a key, the component uploaded as `counter` and a worker `w1` that ran once, so
//! that a newcomer signs in to the console and finds a worker's oplog at once. Every step is an
//! API call to the server itself, as a user's would be; later starts only say where to sign in.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};

/// The file in the data directory that keeps the demo tenant's key (mode 0600).
pub const DEMO_KEY_FILE: &str = "demo.key";

/// Seeds the demo once, then prints where to sign in. Failures are reported, never fatal.
pub async fn seed(api: String, data_dir: PathBuf, component: PathBuf) {
    match seed_once(&api, &data_dir, &component).await {
        Ok(key) => {
            // Whoever started the server may have stopped reading its output: no panic then.
            use std::io::Write;
            let _ = writeln!(
                std::io::stdout(),
                "console on {api}/console: sign in with the demo tenant's key {key} (also in {})",
                data_dir.join(DEMO_KEY_FILE).display()
            );
        }
        Err(e) => tracing::warn!(error = format!("{e:#}"), "the demo could not be set up"),
    }
}

async fn seed_once(api: &str, data_dir: &Path, component: &Path) -> anyhow::Result<String> {
    let key_file = data_dir.join(DEMO_KEY_FILE);
    if let Ok(key) = std::fs::read_to_string(&key_file) {
        return Ok(key.trim().to_string());
    }
    let operator = match std::env::var("INVICTA_OPERATOR_KEY") {
        Ok(key) if !key.is_empty() => key,
        _ => std::fs::read_to_string(data_dir.join(invicta_billing::OPERATOR_KEY_FILE))
            .context("read the operator key")?
            .trim()
            .to_string(),
    };
    let wasm = std::fs::read(component)
        .with_context(|| format!("read the demo component {}", component.display()))?;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, key: &str| {
        http.request(method, format!("{api}{path}"))
            .bearer_auth(key)
    };
    let tenant = answer(
        call(reqwest::Method::POST, "/v1/admin/tenants", &operator).json(&json!({"name": "demo"})),
    )
    .await
    .context("create the demo tenant")?;
    let tenant_id = tenant["id"].as_str().unwrap_or_default().to_string();
    let created = answer(
        call(
            reqwest::Method::POST,
            &format!("/v1/admin/tenants/{tenant_id}/keys"),
            &operator,
        )
        .json(&json!({"scopes": ["admin", "deploy", "invoke", "read"], "description": "demo"})),
    )
    .await
    .context("make the demo tenant's key")?;
    let key = created["key"].as_str().unwrap_or_default().to_string();
    write_private(&key_file, &key)?;
    answer(
        call(reqwest::Method::POST, "/v1/components/counter", &key)
            .header("content-type", "application/wasm")
            .body(wasm),
    )
    .await
    .context("upload the demo component")?;
    answer(
        call(
            reqwest::Method::POST,
            "/v1/components/counter/workers/w1/invoke",
            &key,
        )
        .header("idempotency-key", "demo-first")
        .json(&json!({"function": "add", "params": [1]})),
    )
    .await
    .context("invoke the demo worker")?;
    Ok(key)
}

/// The JSON of a successful answer, or the API's problem as the error.
async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(
        status.is_success(),
        "{status}: {}",
        body["detail"].as_str().unwrap_or("no detail")
    );
    Ok(body)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
