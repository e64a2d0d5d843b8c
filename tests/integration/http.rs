//! Durable outgoing HTTP with a real server on loopback that counts requests per
//! `Idempotency-Key`: replay sends nothing, a crash between a request leaving and its response
//! being recorded sends it again with the same key (one effect), and egress policy refuses
//! private addresses with a typed error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use invicta_tests::{Server, component};
use serde_json::json;

use crate::INVICTA;

/// Requests seen, per idempotency key (`""` for none).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, u32>>>);

impl Seen {
    fn total(&self) -> u32 {
        self.0.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    fn keys(&self) -> HashMap<String, u32> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

async fn effect(State(seen): State<Seen>, headers: HeaderMap) -> String {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let n = {
        let Ok(mut map) = seen.0.lock() else {
            return "poisoned".into();
        };
        let n = map.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    };
    format!("key={key} seen={n}")
}

/// A large body: 200,000 bytes of `x`, then what `effect` says.
async fn big(state: State<Seen>, headers: HeaderMap) -> String {
    let tail = effect(state, headers).await;
    format!("{}{tail}", "x".repeat(200_000))
}

/// A loopback server counting requests; its URL.
async fn remote() -> anyhow::Result<(String, Seen)> {
    let seen = Seen::default();
    let app = axum::Router::new()
        .route("/effect", axum::routing::get(effect).post(effect))
        .route("/big", axum::routing::get(big))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/effect", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, seen))
}

fn config(dir: &std::path::Path) -> anyhow::Result<String> {
    let path = dir.join("invicta.toml");
    std::fs::write(
        &path,
        "[executor.http]\nallow_private_hosts = [\"127.0.0.1\"]\ntimeout_ms = 5000\n",
    )?;
    Ok(path.to_string_lossy().into_owned())
}

#[tokio::test]
async fn replay_sends_nothing_and_private_hosts_are_refused() -> anyhow::Result<()> {
    let (url, seen) = remote().await?;
    let data = tempfile::tempdir()?;
    let config = config(data.path())?;
    let dir = data.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("caller", "pro").await?;
    api.upload("fetcher", component("fetcher")).await?;
    let first = api.call("fetcher", "w", "fetch", json!([url])).await?;
    let body = first["ok"].as_str().unwrap_or_default().to_string();
    assert!(
        body.starts_with("200 key=") && body.ends_with("seen=1"),
        "{first}"
    );
    assert_eq!(seen.total(), 1);

    // After a crash the worker replays its first call from the oplog: nothing is sent again.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    let second = api.call("fetcher", "w", "post", json!([url, "x"])).await?;
    assert!(
        second["ok"].as_str().is_some_and(|b| b.ends_with("seen=1")),
        "{second}"
    );
    assert_eq!(
        seen.total(),
        2,
        "the replayed request was not sent: {:?}",
        seen.keys()
    );
    assert_eq!(seen.keys().len(), 2, "each request has its own key");
    let oplog = api.get("/v1/components/fetcher/workers/w/oplog").await?;
    let kinds: Vec<String> = oplog.body["entries"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        kinds.iter().filter(|k| *k == "begin_remote_write").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| *k == "end_remote_write").count(), 2);

    // Private addresses are refused unless allowed: the guest sees a denial, durably.
    let port = url
        .split(':')
        .nth(2)
        .and_then(|p| p.split('/').next())
        .unwrap_or("80");
    for denied in [
        "http://10.1.2.3/".to_string(),
        "http://169.254.169.254/latest/meta-data".to_string(),
        format!("http://localhost:{port}/effect"),
    ] {
        let reply = api.call("fetcher", "w", "fetch", json!([denied])).await?;
        assert!(
            reply["err"]
                .as_str()
                .is_some_and(|e| e.contains("HttpRequestDenied")),
            "{denied}: {reply}"
        );
    }
    assert_eq!(seen.total(), 2, "nothing denied was sent");
    // Metered as sent: the replayed request and the denied ones are not.
    let usage = api.get("/v1/usage").await?;
    assert_eq!(usage.body["totals"]["http_requests"], 2, "{usage:?}");
    assert!(usage.body["totals"]["http_response_bytes"].as_u64() > Some(0));
    // The replayed fetch sent no body, the post sent "x".
    assert_eq!(usage.body["totals"]["http_request_bytes"], 1, "{usage:?}");

    // A plan may list the hosts its tenants reach: others are denied, private or not.
    let operator = server.operator();
    let mut plan = operator.get("/v1/admin/plans").await?.body["plans"]
        .as_array()
        .and_then(|plans| plans.iter().find(|p| p["name"] == "pro").cloned())
        .ok_or_else(|| anyhow::anyhow!("the pro plan"))?;
    plan["name"] = json!("listed");
    plan["egress_hosts"] = json!(["api.example.com"]);
    let put = operator.put_json("/v1/admin/plans/listed", &plan).await?;
    assert_eq!(put.status, 200, "{put:?}");
    let listed = operator.new_tenant("listed", "listed").await?;
    listed.upload("fetcher", component("fetcher")).await?;
    let reply = listed.call("fetcher", "w", "fetch", json!([url])).await?;
    assert!(
        reply["err"]
            .as_str()
            .is_some_and(|e| e.contains("HttpRequestDenied")),
        "{reply}"
    );
    assert_eq!(seen.total(), 2);
    Ok(())
}

/// Starts the server on `dir` with `config`, armed to die (SIGKILL) once at the failpoint `var`;
/// the server, and the file that arms it (gone once the failpoint fired).
fn with_failpoint(
    scratch: &std::path::Path,
    dir: &std::path::Path,
    config: &str,
    var: &str,
) -> anyhow::Result<(Server, std::path::PathBuf)> {
    let armed = scratch.join(format!("{var}.armed"));
    std::fs::write(&armed, b"once")?;
    let env = armed.to_string_lossy().into_owned();
    let server = Server::start_env(
        INVICTA.as_ref(),
        dir,
        "127.0.0.1:0",
        &["--config", config],
        &[(var, &env)],
    )?;
    Ok((server, armed))
}

#[tokio::test]
async fn a_crash_after_sending_resends_with_the_same_key() -> anyhow::Result<()> {
    let (url, seen) = remote().await?;
    let data = tempfile::tempdir()?;
    let config = config(data.path())?;
    let dir = data.path().join("data");
    let (server, failpoint) =
        with_failpoint(data.path(), &dir, &config, "INVICTA_FAILPOINT_HTTP_SENT")?;
    let api = server.operator().new_tenant("crasher", "pro").await?;
    api.upload("fetcher", component("fetcher")).await?;
    // The server dies after the request left and before its response is recorded.
    let cut = api
        .post_json(
            "/v1/components/fetcher/workers/w/invoke",
            &json!({ "function": "post", "params": [url, "pay 10"] }),
            Some("payment"),
        )
        .await;
    assert!(cut.is_err(), "the server died mid-invocation: {cut:?}");
    assert!(!failpoint.exists(), "the failpoint fired");
    assert_eq!(seen.total(), 1);

    // Restarted, it finishes the invocation: the request goes again, with the same key.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    let done = api
        .post_json(
            "/v1/components/fetcher/workers/w/invoke",
            &json!({ "function": "post", "params": [url, "pay 10"] }),
            Some("payment"),
        )
        .await?;
    assert_eq!(done.status, 200, "{done:?}");
    assert!(
        done.body["result"]["ok"]
            .as_str()
            .is_some_and(|b| b.ends_with("seen=2")),
        "{done:?}"
    );
    let keys = seen.keys();
    assert_eq!(keys.len(), 1, "one key, so one effect: {keys:?}");
    assert_eq!(keys.values().sum::<u32>(), 2, "sent twice: {keys:?}");
    // And it is recorded now: a replay sends nothing more.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    api.call("fetcher", "w", "fetch", json!(["http://10.0.0.1/"]))
        .await?;
    assert_eq!(seen.total(), 2);
    Ok(())
}

#[tokio::test]
async fn an_atomic_region_cut_off_by_a_crash_runs_again_whole() -> anyhow::Result<()> {
    let (url, seen) = remote().await?;
    let data = tempfile::tempdir()?;
    let config = config(data.path())?;
    let dir = data.path().join("data");
    let (server, failpoint) =
        with_failpoint(data.path(), &dir, &config, "INVICTA_FAILPOINT_ATOMIC_END")?;
    let api = server.operator().new_tenant("regions", "pro").await?;
    api.upload("waiter", component("waiter")).await?;
    // The region sends its request, then the process dies before the region ends.
    let cut = api
        .post_json(
            "/v1/components/waiter/workers/r/invoke",
            &json!({ "function": "region-fetch", "params": [url] }),
            Some("region"),
        )
        .await;
    assert!(cut.is_err(), "the server died inside the region: {cut:?}");
    assert!(!failpoint.exists(), "the failpoint fired");
    assert_eq!(seen.total(), 1);

    // Recovery runs the whole region again: a new request, not the old one resent.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    let done = api
        .get("/v1/components/waiter/workers/r/invocations/region?wait_ms=20000")
        .await?;
    assert_eq!(done.body["status"], "completed", "{done:?}");
    let body = done.body["result"]["ok"].as_str().unwrap_or_default();
    assert!(
        body.starts_with("200 key=") && body.ends_with("seen=1"),
        "{body}"
    );
    let keys = seen.keys();
    assert_eq!(
        keys.len(),
        2,
        "two requests, each with its own key: {keys:?}"
    );
    assert!(keys.values().all(|n| *n == 1), "{keys:?}");
    let oplog = api.get("/v1/components/waiter/workers/r/oplog").await?;
    let jumps: Vec<&serde_json::Value> = oplog.body["entries"]
        .as_array()
        .map(|es| es.iter().filter(|e| e["kind"] == "jump").collect())
        .unwrap_or_default();
    assert_eq!(jumps.len(), 1, "{oplog:?}");

    // The worker's history, with the region skipped once, replays after another restart.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    assert_eq!(api.call("waiter", "r", "bump", json!([])).await?, json!(1));
    assert_eq!(seen.total(), 2, "replay sent nothing");
    Ok(())
}

#[tokio::test]
async fn large_response_bodies_are_kept_in_the_blob_store_and_replayed_from_it()
-> anyhow::Result<()> {
    let (url, seen) = remote().await?;
    let big_url = url.replace("/effect", "/big");
    let data = tempfile::tempdir()?;
    let config = config(data.path())?;
    let dir = data.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("bulky", "pro").await?;
    api.upload("fetcher", component("fetcher")).await?;
    let first = api.call("fetcher", "b", "fetch", json!([big_url])).await?;
    let body = first["ok"].as_str().unwrap_or_default().to_string();
    assert!(
        body.starts_with("200 xxxx") && body.ends_with("seen=1"),
        "{}",
        &body[..40.min(body.len())]
    );
    assert!(body.len() > 200_000);

    // The oplog holds a reference, not the body; the body is a blob.
    let oplog = api.get("/v1/components/fetcher/workers/b/oplog").await?;
    let responses: Vec<&serde_json::Value> = oplog.body["entries"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| {
                    e["kind"] == "imported_function_invoked"
                        && e["host_function"] == "wasi:http/outgoing-handler.handle"
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(responses.len(), 1, "{oplog:?}");
    let blob = &responses[0]["response"]["ok"]["body_blob"];
    let size = blob["size"].as_u64().unwrap_or_default();
    assert!(size > 200_000, "{blob}");
    assert!(responses[0]["response"]["ok"].get("body").is_none());
    let key = blob["key"].as_str().unwrap_or_default();
    assert!(key.starts_with("http-bodies/"), "{key}");
    let stored = std::fs::metadata(dir.join("blobs").join(key))?;
    assert_eq!(stored.len(), size);

    // After a crash the worker replays the response from the blob store, sending nothing.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    let second = api.call("fetcher", "b", "fetch", json!([url])).await?;
    assert_eq!(seen.total(), 2, "one request each, none replayed: {second}");
    Ok(())
}

/// An HTTPS server on loopback with the certificate of `tests/fixtures/localhost.pem` (issued
/// by the test CA `ca.pem` for `localhost`), counting requests; its port.
async fn tls_server() -> anyhow::Result<(u16, Arc<std::sync::atomic::AtomicU32>)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let chain = CertificateDer::pem_file_iter(fixtures.join("localhost.pem"))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(fixtures.join("localhost.key"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let seen = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends here.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_request| {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(format!("secure {n}"))),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((port, seen))
}

#[tokio::test]
async fn https_requests_check_the_certificate_and_replay_like_any_other() -> anyhow::Result<()> {
    let (port, seen) = tls_server().await?;
    let data = tempfile::tempdir()?;
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ca.pem");
    let path = data.path().join("invicta.toml");
    std::fs::write(
        &path,
        format!(
            "[executor.http]\nallow_private_hosts = [\"localhost\", \"127.0.0.1\"]\n\
             timeout_ms = 5000\nextra_root_certificates = [{:?}]\n",
            ca.display().to_string()
        ),
    )?;
    let config = path.to_string_lossy().into_owned();
    let dir = data.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("secure", "pro").await?;
    api.upload("fetcher", component("fetcher")).await?;
    let url = format!("https://localhost:{port}/x");
    let first = api.call("fetcher", "w", "fetch", json!([url])).await?;
    assert_eq!(first, json!({ "ok": "200 secure 1" }));

    // A certificate that does not name the host is refused, before anything is sent.
    let wrong = api
        .call(
            "fetcher",
            "w",
            "fetch",
            json!([format!("https://127.0.0.1:{port}/x")]),
        )
        .await?;
    assert!(
        wrong["err"].as_str().is_some_and(|e| e.contains("Tls")),
        "{wrong}"
    );
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Replayed after a crash from the oplog: nothing is sent again.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    let second = api.call("fetcher", "w", "fetch", json!([url])).await?;
    assert_eq!(second, json!({ "ok": "200 secure 2" }));
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);

    // Without the test CA the same server is not trusted.
    server.kill()?;
    let path = data.path().join("untrusting.toml");
    std::fs::write(
        &path,
        "[executor.http]\nallow_private_hosts = [\"localhost\"]\ntimeout_ms = 5000\n",
    )?;
    let server = Server::start_with(
        INVICTA.as_ref(),
        &data.path().join("other"),
        &["--config", &path.to_string_lossy()],
    )?;
    let api = server.operator().new_tenant("untrusting", "pro").await?;
    api.upload("fetcher", component("fetcher")).await?;
    let untrusted = api.call("fetcher", "w", "fetch", json!([url])).await?;
    assert!(
        untrusted["err"].as_str().is_some_and(|e| e.contains("Tls")),
        "{untrusted}"
    );
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    Ok(())
}

/// A fork of a worker that kept a large response body in the blob store gets a copy of its
/// own: it replays after its source is deleted.
#[tokio::test]
async fn a_fork_keeps_the_response_bodies_of_its_history() -> anyhow::Result<()> {
    let (url, seen) = remote().await?;
    let big_url = url.replace("/effect", "/big");
    let data = tempfile::tempdir()?;
    let config = config(data.path())?;
    let dir = data.path().join("data");
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = server.operator().new_tenant("forking", "pro").await?;
    api.upload("fetcher", component("fetcher")).await?;
    let first = api
        .call("fetcher", "src", "fetch", json!([big_url]))
        .await?;
    assert!(first["ok"].as_str().is_some_and(|b| b.len() > 200_000));
    let forked = api
        .post_json(
            "/v1/components/fetcher/workers/src/fork",
            &json!({ "name": "copy" }),
            None,
        )
        .await?;
    assert_eq!(forked.status, 201, "{forked:?}");
    let oplog = api.get("/v1/components/fetcher/workers/copy/oplog").await?;
    let keys: Vec<String> = oplog.body["entries"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| e["response"]["ok"]["body_blob"]["key"].as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let source = api.get("/v1/components/fetcher/workers/src/oplog").await?;
    let source_key = source.body["entries"]
        .as_array()
        .and_then(|es| {
            es.iter()
                .find_map(|e| e["response"]["ok"]["body_blob"]["key"].as_str())
        })
        .unwrap_or_default()
        .to_string();
    assert_eq!(keys.len(), 1, "{oplog:?}");
    assert_ne!(keys[0], source_key, "the fork names a body of its own");
    assert_eq!(
        api.delete("/v1/components/fetcher/workers/src")
            .await?
            .status,
        204
    );

    // A crash: the fork replays its history, the large body included, and sends nothing.
    server.kill()?;
    let server = Server::start_with(INVICTA.as_ref(), &dir, &["--config", &config])?;
    let api = api.at(&server.url);
    let next = api.call("fetcher", "copy", "fetch", json!([url])).await?;
    assert!(
        next["ok"].as_str().is_some_and(|b| b.starts_with("200 ")),
        "{next}"
    );
    assert_eq!(seen.total(), 2, "the replay sent nothing");
    Ok(())
}
