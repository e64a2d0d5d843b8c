//! A small client of the public API for tests, and the guest components they use.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

/// Where `make components` puts the guest components: found from the working directory (cargo
/// runs tests in their package's directory, inside the checkout being tested), else where this
/// crate was compiled — a shared target directory may hold a build from another checkout.
fn components_dir() -> std::path::PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let candidate = dir.join("tests/components/wasm");
            if candidate.is_dir() {
                return candidate;
            }
        }
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("components/wasm")
}

/// The bytes of a guest component built by `make components`.
pub fn component(name: &str) -> Vec<u8> {
    let path = components_dir().join(format!("{name}.wasm"));
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => panic!(
            "guest component {} is missing ({e}): run `make components`",
            path.display()
        ),
    }
}

/// A response: its status and JSON body (`null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub content_type: String,
}

impl Reply {
    /// The `code` of a problem response.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    /// Sent as `Authorization: Bearer <key>`.
    pub key: Option<String>,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client without TLS builds"),
            key: None,
        }
    }

    /// The same client, calling with `key`.
    pub fn with_key(&self, key: &str) -> Api {
        Api {
            key: Some(key.to_string()),
            ..self.clone()
        }
    }

    /// The same client, calling without a key.
    /// The same caller, at another server (e.g. one restarted): a new client, so that no
    /// connection to the old one is reused.
    pub fn at(&self, base: &str) -> Api {
        Api {
            key: self.key.clone(),
            ..Api::new(base)
        }
    }

    pub fn anonymous(&self) -> Api {
        Api {
            key: None,
            ..self.clone()
        }
    }

    fn auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Creates a tenant (calling as the operator) and a key with every scope; returns a client
    /// calling as that tenant.
    pub async fn new_tenant(&self, name: &str, plan: &str) -> anyhow::Result<Api> {
        let tenant = self
            .post_json(
                "/v1/admin/tenants",
                &json!({ "name": name, "plan": plan }),
                None,
            )
            .await?;
        anyhow::ensure!(tenant.status == 201, "create tenant {name}: {tenant:?}");
        let id = tenant.body["id"].as_str().context("tenant id")?.to_string();
        let key = self
            .post_json(
                &format!("/v1/admin/tenants/{id}/keys"),
                &json!({ "scopes": ["admin", "deploy", "invoke", "read"] }),
                None,
            )
            .await?;
        anyhow::ensure!(key.status == 201, "create key for {name}: {key:?}");
        Ok(self.with_key(key.body["key"].as_str().context("key secret")?))
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        Self::reply(
            self.auth(self.http.delete(format!("{}{path}", self.base)))
                .send()
                .await?,
        )
        .await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        let request = self
            .http
            .put(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        Self::reply(self.auth(request).send().await?).await
    }

    async fn reply(response: reqwest::Response) -> anyhow::Result<Reply> {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = response.bytes().await.context("read response body")?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            body,
            content_type,
        })
    }

    /// The value of one metric the server exposes at `/metrics` (0 when it has none yet).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(metric, _)| *metric == name)
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0.0))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        Self::reply(
            self.auth(self.http.get(format!("{}{path}", self.base)))
                .send()
                .await?,
        )
        .await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        Self::reply(self.auth(request).send().await?).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Reply> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        Self::reply(self.auth(request).send().await?).await
    }

    pub async fn upload(&self, name: &str, bytes: Vec<u8>) -> anyhow::Result<Reply> {
        self.post_raw(&format!("/v1/components/{name}"), "application/wasm", bytes)
            .await
    }

    pub async fn invoke(
        &self,
        component: &str,
        worker: &str,
        function: &str,
        params: Value,
        key: Option<&str>,
    ) -> anyhow::Result<Reply> {
        self.post_json(
            &format!("/v1/components/{component}/workers/{worker}/invoke"),
            &json!({ "function": function, "params": params }),
            key,
        )
        .await
    }

    /// Waits (at most `timeout`) until the worker's status is `suspended`: idle suspension has
    /// dropped its instance, and its next call replays.
    pub async fn until_suspended(
        &self,
        component: &str,
        worker: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let path = format!("/v1/components/{component}/workers/{worker}");
        crate::eventually(&format!("{worker} suspended"), timeout, || {
            let (api, path) = (self.clone(), path.clone());
            async move {
                let status = api.get(&path).await?;
                Ok((status.body["status"] == "suspended").then_some(()))
            }
        })
        .await
    }

    /// Invokes and expects success; returns the result.
    pub async fn call(
        &self,
        component: &str,
        worker: &str,
        function: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        let reply = self
            .invoke(component, worker, function, params, None)
            .await?;
        anyhow::ensure!(reply.status == 200, "{function} failed: {reply:?}");
        Ok(reply.body["result"].clone())
    }
}
