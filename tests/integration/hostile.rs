//! Hostile clients against a real server, one table: each attack gets its typed answer (a
//! problem with a stable code), and afterwards the server is ready and a reference worker's
//! state is whole.

use std::time::Duration;

use invicta_tests::{Api, Configured, Server, component};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::INVICTA;

/// Sends `head` (a request line and headers, no body) over a raw connection and returns the
/// status and the response's first bytes: what the server answers before any body arrives.
async fn raw(server: &Server, head: &str) -> anyhow::Result<(u16, String)> {
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await?;
    stream.write_all(head.as_bytes()).await?;
    let mut buffer = vec![0_u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await??;
    let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

#[tokio::test]
async fn hostile_requests_get_typed_answers_and_hurt_nothing() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let operator = server.operator();
    let api: Api = operator.new_tenant("target", "pro").await?;
    api.upload("counter", component("counter")).await?;
    assert_eq!(
        api.call("counter", "ref", "add", json!([7])).await?,
        json!(7)
    );
    let long = "a".repeat(11_000);

    // (what, reply, status, code)
    let cases = vec![
        (
            "a usage date whose year overflows",
            api.get("/v1/usage?from=5000000000000000-01-01").await?,
            400,
            "invalid_query",
        ),
        (
            "an invoice month whose year overflows",
            operator
                .get("/v1/admin/invoices?tenant=target&month=9223372036854775807-12")
                .await?,
            400,
            "invalid_query",
        ),
        (
            "a list prefix over the key limit",
            api.get(&format!("/v1/components/counter/workers?prefix={long}"))
                .await?,
            400,
            "invalid_query",
        ),
        (
            "a cursor over the key limit",
            api.get(&format!("/v1/components/counter/workers?cursor={long}"))
                .await?,
            400,
            "invalid_query",
        ),
        (
            "an invocation key over the key limit",
            api.get(&format!(
                "/v1/components/counter/workers/ref/invocations/{long}"
            ))
            .await?,
            400,
            "invalid_request",
        ),
        (
            "a promise id over the key limit",
            api.get(&format!(
                "/v1/components/counter/workers/ref/promises/{long}"
            ))
            .await?,
            400,
            "invalid_request",
        ),
        (
            "a key id over the key limit",
            api.delete(&format!("/v1/keys/{long}")).await?,
            400,
            "invalid_request",
        ),
        (
            "a tenant id over the key limit",
            operator.get(&format!("/v1/admin/tenants/{long}")).await?,
            400,
            "invalid_request",
        ),
        (
            "a plan name over the key limit",
            operator
                .put_json(&format!("/v1/admin/plans/{long}"), &json!({}))
                .await?,
            400,
            "invalid_request",
        ),
        (
            "an idempotency key reused for other parameters",
            {
                api.invoke("counter", "ref", "add", json!([0]), Some("once"))
                    .await?;
                api.invoke("counter", "ref", "add", json!([1]), Some("once"))
                    .await?
            },
            409,
            "idempotency_key_reused",
        ),
    ];
    for (what, reply, status, code) in cases {
        assert_eq!(
            (reply.status, reply.code()),
            (status, code),
            "{what}: {reply:?}"
        );
        assert!(
            reply.content_type.starts_with("application/problem+json"),
            "{what}: {reply:?}"
        );
    }

    // Answered from the headers alone, before any body is sent.
    let key = api.key.clone().unwrap_or_default();
    let (status, text) = raw(
        &server,
        &format!(
            "POST /v1/components/huge HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/wasm\r\nContent-Length: 60000000\r\n\r\n"
        ),
    )
    .await?;
    assert_eq!(status, 413, "a declared 60 MB upload: {text}");
    assert!(text.contains("application/problem+json"), "{text}");
    let reader = api
        .post_json("/v1/keys", &json!({ "scopes": ["read"] }), None)
        .await?;
    let read_only = reader.body["key"].as_str().unwrap_or_default().to_string();
    let (status, text) = raw(
        &server,
        &format!(
            "POST /v1/components/sneaky HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {read_only}\r\nContent-Type: application/wasm\r\nContent-Length: 40000000\r\n\r\n"
        ),
    )
    .await?;
    assert_eq!(status, 403, "a read-only key's upload: {text}");
    let many: String = (0..80).map(|n| format!("X-Filler-{n}: {n}\r\n")).collect();
    let (status, text) = raw(
        &server,
        &format!(
            "GET /v1/components HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n{many}\r\n"
        ),
    )
    .await?;
    assert_eq!(status, 431, "80 headers: {text}");
    assert!(text.contains("application/problem+json"), "{text}");

    // A URI past hyper's own limit (64 KiB) is refused before any handler, still as a problem.
    let (status, text) = raw(
        &server,
        &format!(
            "GET /v1/components?prefix={} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(70_000)
        ),
    )
    .await?;
    assert_eq!(status, 414, "a 70 KB URI: {text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("\"code\":\"uri_too_long\""), "{text}");

    // A flood of guessed keys: attempts with keys not verified lately are limited per client
    // address before any costs an argon2 verification, and the tenant's own key still works.
    // Argon2 takes ~19 MiB per verification: unbounded, 80 at once would take 1.5 GiB.
    let before = server.resident_bytes()?;
    let guesses: Vec<_> = (0..80_u32)
        .map(|n| {
            let guesser = api.with_key(&format!("inv_{n:012x}_{}", "f".repeat(64)));
            tokio::spawn(async move { guesser.get("/v1/components").await })
        })
        .collect();
    let mut answers = std::collections::BTreeMap::new();
    for guess in guesses {
        let reply = guess.await??;
        *answers
            .entry((reply.status, reply.code().to_string()))
            .or_insert(0) += 1;
    }
    let limited = answers
        .get(&(429, "rate_limited".to_string()))
        .copied()
        .unwrap_or(0);
    assert!(limited >= 30, "{answers:?}");
    assert!(
        answers
            .keys()
            .all(|(status, _)| [401, 429, 503].contains(status)),
        "{answers:?}"
    );
    assert_eq!(api.get("/v1/components").await?.status, 200);
    let after = server.resident_bytes()?;
    assert!(
        after < before + 256 * 1024 * 1024,
        "the flood took {} MiB",
        after.saturating_sub(before) / (1024 * 1024)
    );

    // Log followers are bounded per tenant: past the cap, a typed quota.
    let mut followers = Vec::new();
    let follow = || {
        api.http
            .get(format!(
                "{}/v1/components/counter/workers/ref/logs?follow=true",
                server.url
            ))
            .bearer_auth(api.key.clone().unwrap_or_default())
            .send()
    };
    for _ in 0..32 {
        let response = follow().await?;
        assert_eq!(response.status(), 200);
        followers.push(response);
    }
    let refused = follow().await?;
    assert_eq!(refused.status(), 429);
    let problem: serde_json::Value = refused.json().await?;
    assert_eq!(problem["quota"], "log_followers", "{problem}");
    drop(followers);

    // The server is ready and the reference worker whole.
    assert_eq!(api.anonymous().get("/readyz").await?.status, 200);
    assert_eq!(
        api.call("counter", "ref", "get", json!([])).await?,
        json!(7)
    );
    drop(server);
    Ok(())
}

/// Reads until the server closes the connection (or `within` passes): whether it closed.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buffer = [0_u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Idle, slow and surplus connections are closed rather than held: a connection that sends
/// nothing, one that never finishes its headers, and any past the cap.
#[tokio::test]
async fn idle_slow_and_surplus_connections_are_closed() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let configured = Configured::new(
        INVICTA.as_ref(),
        data.path(),
        "[gateway]\nheader_read_timeout_ms = 3000\nconnections_max = 8\n",
    )?;
    let server = configured.start()?;
    let api = server.operator();
    let address = server.url.trim_start_matches("http://").to_string();
    let connect = || tokio::net::TcpStream::connect(address.clone());

    let mut idle = connect().await?;
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)).await,
        "an idle connection"
    );
    let mut slow = connect().await?;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await?;
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)).await,
        "unfinished headers"
    );

    // Eight slow connections take every slot: a ninth is closed at once.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = connect().await?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
        held.push(stream);
    }
    // Once the server has taken them all, a ninth is closed at once.
    let mut refused = false;
    for _ in 0..8 {
        let mut surplus = connect().await?;
        if closed_within(&mut surplus, Duration::from_millis(300)).await {
            refused = true;
            break;
        }
        held.push(surplus);
    }
    assert!(refused, "a connection past the cap was held");
    // Once the slow ones are timed out, the server serves again.
    let ready =
        invicta_tests::eventually("the server serves again", Duration::from_secs(20), || {
            let api = api.clone();
            async move { Ok(api.get("/healthz").await.ok().filter(|r| r.status == 200)) }
        })
        .await?;
    assert_eq!(ready.status, 200);
    drop(held);
    Ok(())
}

/// Every body waits for the caller's scope, and what a body names is bounded.
#[tokio::test]
async fn bodies_wait_for_the_scope_and_what_they_name_is_bounded() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let operator = server.operator();
    let api = operator.new_tenant("target", "pro").await?;
    let reader = api
        .post_json("/v1/keys", &json!({ "scopes": ["read"] }), None)
        .await?;
    let read_only = reader.body["key"].as_str().unwrap_or_default().to_string();

    // A caller without the scope is refused before its body is read, on every route.
    for (path, scope) in [
        ("/v1/components/c/workers/w/invoke", "invoke"),
        ("/v1/components/c/workers/w/enqueue", "invoke"),
        ("/v1/components/c/workers", "deploy"),
        ("/v1/keys", "admin"),
    ] {
        let (status, answer) = raw(
            &server,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {read_only}\r\n\
                 Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n"
            ),
        )
        .await?;
        assert_eq!(status, 403, "{path}: {answer}");
        assert!(answer.contains(&format!("`{scope}`")), "{path}: {answer}");
    }

    // Names inside bodies are bounded too, and prices cannot overflow an invoice.
    let long = "p".repeat(20_000);
    let tenant = operator
        .post_json(
            "/v1/admin/tenants",
            &json!({ "name": "other", "plan": long }),
            None,
        )
        .await?;
    assert_eq!(
        (tenant.status, tenant.code()),
        (400, "invalid_request"),
        "{tenant:?}"
    );
    let target = operator.get("/v1/admin/tenants").await?.body["tenants"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let moved = operator
        .put_json(
            &format!("/v1/admin/tenants/{target}/plan"),
            &json!({ "plan": long }),
        )
        .await?;
    assert_eq!(
        (moved.status, moved.code()),
        (400, "invalid_request"),
        "{moved:?}"
    );
    let mut plan = operator.get("/v1/admin/plans").await?.body["plans"][0].clone();
    plan["name"] = "dear".into();
    plan["prices"]["per_billion_fuel"] = "79228162514264337593543950335".into();
    let put = operator.put_json("/v1/admin/plans/dear", &plan).await?;
    assert_eq!(
        (put.status, put.code()),
        (400, "invalid_request"),
        "{put:?}"
    );
    assert_eq!(api.get("/v1/usage").await?.status, 200);
    Ok(())
}

/// A compile past its deadline is stopped, not left to burn a core: the upload answers
/// `compile_timeout` naming the limit, the compiling process is gone, and the server goes on.
#[tokio::test]
async fn a_compile_past_its_deadline_is_stopped() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let configured = Configured::new(
        INVICTA.as_ref(),
        data.path(),
        "[registry]\ncompile_timeout_ms = 20\n",
    )?;
    let server = configured.start()?;
    let api = server.operator().new_tenant("slow", "pro").await?;
    let reply = api.upload("fetcher", component("wstd_fetcher")).await?;
    assert_eq!(reply.status, 422, "{:?}", reply.body);
    assert_eq!(reply.body["code"], "compile_timeout", "{:?}", reply.body);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("20 ms"),
        "{:?}",
        reply.body
    );
    // The compiling child was killed with the deadline: none is left running.
    invicta_tests::eventually("the compiler is gone", Duration::from_secs(10), || {
        let children = server.children();
        async move { Ok(children.is_empty().then_some(())) }
    })
    .await?;
    // What it cost the server, its reaped compiler included, is bounded by the deadline
    // (plus the start of a server and a tenant), not by the component.
    let cpu = server.cpu_seconds()?;
    assert!(cpu < 30.0, "the server used {cpu:.1} s of CPU");
    assert!(server.children().is_empty(), "a compiler came back");
    assert_eq!(
        server.operator().get("/readyz").await?.status,
        200,
        "the server is ready"
    );
    Ok(())
}

/// The same bytes are compiled once, whoever uploads them: a server whose compile deadline
/// no compile could meet still takes, at once, a component another tenant uploaded before
/// (under another name), and still refuses one never compiled.
#[tokio::test]
async fn the_same_bytes_are_compiled_once_for_every_tenant() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let first = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let early = first.operator().new_tenant("early", "pro").await?;
    let reply = early.upload("fetcher", component("wstd_fetcher")).await?;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert!(first.stop()?, "a clean stop");

    let strict = Configured::new(
        INVICTA.as_ref(),
        data.path(),
        "[registry]\ncompile_timeout_ms = 20\n",
    )?;
    let server = strict.start()?;
    let late = server.operator().new_tenant("late", "pro").await?;
    let reused = late.upload("mine", component("wstd_fetcher")).await?;
    assert_eq!(reused.status, 201, "{:?}", reused.body);
    assert_eq!(reused.body["version"], 1, "{:?}", reused.body);
    let never = late.upload("raw", component("raw_fetcher")).await?;
    assert_eq!(
        (never.status, never.code()),
        (422, "compile_timeout"),
        "{never:?}"
    );
    Ok(())
}

/// A compile nobody waits for any more stops with its server: a compile (in a child process)
/// is killed with a server killed by SIGKILL, rather than burn a core to its end.
#[tokio::test]
async fn a_killed_server_takes_its_compiles_with_it() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let api = server.operator().new_tenant("big", "unlimited").await?;
    // A language runtime: its compile takes the debug build a while.
    let runtime = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/wasm/counter_py.wasm");
    let bytes = std::fs::read(&runtime)
        .map_err(|e| anyhow::anyhow!("{} ({e}): run `make examples`", runtime.display()))?;
    let accepted = api
        .http
        .post(format!("{}/v1/components/py", api.base))
        .bearer_auth(api.key.clone().unwrap_or_default())
        .header("content-type", "application/wasm")
        .header("prefer", "respond-async")
        .body(bytes)
        .send()
        .await?;
    assert_eq!(accepted.status(), 202);
    let compiling = invicta_tests::eventually("a compile", Duration::from_secs(30), || {
        let children = server.children();
        async move { Ok((!children.is_empty()).then_some(children)) }
    })
    .await?;
    server.kill()?;
    invicta_tests::eventually(
        "the compile gone with its server",
        Duration::from_secs(10),
        || {
            let alive: Vec<_> = compiling
                .iter()
                .filter(|pid| {
                    // Gone, or a zombie waiting for init to reap it.
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                        stat.rsplit_once(')')
                            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
                    })
                })
                .collect();
            async move { Ok(alive.is_empty().then_some(())) }
        },
    )
    .await?;
    Ok(())
}
