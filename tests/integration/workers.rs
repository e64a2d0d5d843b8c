//! Components, workers and invocations through the public API of a real server process.

use invicta_tests::{Api, Server, component};
use serde_json::{Value, json};

use crate::INVICTA;

struct Fixture {
    _data: tempfile::TempDir,
    server: Server,
    api: Api,
}

async fn start(config: Option<&str>) -> anyhow::Result<Fixture> {
    let data = tempfile::tempdir()?;
    let server = match config {
        None => Server::start(INVICTA.as_ref(), &data.path().join("data"))?,
        Some(toml) => {
            let path = data.path().join("invicta.toml");
            std::fs::write(&path, toml)?;
            let path = path.to_string_lossy().into_owned();
            Server::start_with(
                INVICTA.as_ref(),
                &data.path().join("data"),
                &["--config", &path],
            )?
        }
    };
    let api = server.operator().new_tenant("test", "pro").await?;
    Ok(Fixture {
        _data: data,
        server,
        api,
    })
}

#[tokio::test]
async fn upload_versions_and_metadata() -> anyhow::Result<()> {
    let f = start(None).await?;
    let reply = f.api.upload("counter", component("counter")).await?;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["name"], "counter");
    assert_eq!(reply.body["version"], 1);
    assert_eq!(reply.body["hash"].as_str().map(str::len), Some(64));
    let exports = reply.body["exports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let add = exports
        .iter()
        .find(|e| e["name"] == "add")
        .expect("add is exported");
    assert_eq!(add["params"], json!([{ "name": "delta", "type": "s64" }]));
    assert_eq!(add["result"], "s64");
    assert!(
        exports
            .iter()
            .any(|e| e["name"] == "invicta:counter/api.{increment}")
    );

    // The same bytes are the same version; other bytes under the name are a new one.
    let again = f.api.upload("counter", component("counter")).await?;
    assert_eq!(
        (again.status, again.body["version"].clone()),
        (200, json!(1))
    );
    let v2 = f.api.upload("counter", component("logger")).await?;
    assert_eq!((v2.status, v2.body["version"].clone()), (201, json!(2)));
    let meta = f.api.get("/v1/components/counter").await?;
    assert_eq!(meta.status, 200);
    assert_eq!(meta.body["version"], 2);
    assert_eq!(meta.body["versions"], json!([1, 2]));
    Ok(())
}

/// A component that imports an interface no executor provides.
fn component_with_unknown_import() -> Vec<u8> {
    wat::parse_str(
        r#"(component
            (import "acme:secret/vault" (instance (export "open" (func))))
        )"#,
    )
    .expect("valid WAT")
}

#[tokio::test]
async fn bad_uploads_are_refused_and_store_nothing() -> anyhow::Result<()> {
    let f = start(Some("[registry]\ncomponent_bytes_max = 200000\n")).await?;
    let core_module = wat::parse_str("(module (func (export \"f\")))")?;
    let mut truncated = component("counter");
    truncated.truncate(truncated.len() / 2);
    // (name, content type, body, status, code, what the detail mentions)
    type Case = (
        &'static str,
        &'static str,
        Vec<u8>,
        u16,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "garbage",
            "application/wasm",
            b"not wasm at all".to_vec(),
            400,
            "invalid_component",
            "magic",
        ),
        (
            "core-module",
            "application/wasm",
            core_module,
            400,
            "invalid_component",
            "core WebAssembly module",
        ),
        (
            "truncated",
            "application/wasm",
            truncated,
            400,
            "invalid_component",
            "",
        ),
        (
            "importer",
            "application/wasm",
            component_with_unknown_import(),
            400,
            "unsupported_imports",
            "acme:secret/vault",
        ),
        (
            "too-big",
            "application/wasm",
            vec![0_u8; 300_000],
            413,
            "payload_too_large",
            "",
        ),
        (
            "as-json",
            "application/json",
            component("counter"),
            415,
            "unsupported_media_type",
            "",
        ),
    ];
    for (name, content_type, bytes, status, code, mentions) in cases {
        // A body refused for its size is not read: the server may close the connection while
        // the client is still sending, which the client sees as a reset. Ask again then.
        let mut attempts = 0;
        let reply = loop {
            attempts += 1;
            match f
                .api
                .post_raw(
                    &format!("/v1/components/{name}"),
                    content_type,
                    bytes.clone(),
                )
                .await
            {
                Err(e) if status == 413 && attempts < 10 => {
                    eprintln!("{name}: {e}; again");
                }
                other => break other?,
            }
        };
        assert_eq!(reply.status, status, "{name}: {reply:?}");
        assert_eq!(reply.code(), code, "{name}: {reply:?}");
        assert_eq!(reply.content_type, "application/problem+json", "{name}");
        let detail = reply.body["detail"].as_str().unwrap_or("");
        assert!(detail.contains(mentions), "{name}: {detail}");
        let after = f.api.get(&format!("/v1/components/{name}")).await?;
        assert_eq!(after.status, 404, "{name} must not be stored");
    }
    let bad_name = f.api.upload("bad%20name", component("counter")).await?;
    assert_eq!((bad_name.status, bad_name.code()), (400, "invalid_name"));
    Ok(())
}

#[tokio::test]
async fn invocations_keep_state_and_bad_input_changes_nothing() -> anyhow::Result<()> {
    let f = start(Some("[gateway]\njson_body_bytes_max = 4096\n")).await?;
    f.api.upload("counter", component("counter")).await?;
    // Invoking a worker that does not exist creates it.
    assert_eq!(
        f.api.call("counter", "w1", "add", json!([5])).await?,
        json!(5)
    );
    assert_eq!(
        f.api.call("counter", "w1", "add", json!([-2])).await?,
        json!(3)
    );
    assert_eq!(
        f.api
            .call(
                "counter",
                "w1",
                "invicta:counter/api.{increment}",
                json!([])
            )
            .await?,
        json!(4)
    );
    // Looser spellings of an interface function name.
    assert_eq!(
        f.api
            .call("counter", "w1", "invicta:counter/api.increment", json!([]))
            .await?,
        json!(5)
    );
    // Another worker has its own state.
    assert_eq!(
        f.api.call("counter", "w2", "get", json!([])).await?,
        json!(0)
    );

    let big = "x".repeat(5_000);
    let bad: Vec<(&str, Value, u16, &str, &str)> = vec![
        ("nope", json!([]), 400, "unknown_function", "add"),
        (
            "add",
            json!(["five"]),
            400,
            "invalid_params",
            "parameter `delta`",
        ),
        ("add", json!([1.5]), 400, "invalid_params", "s64"),
        ("add", json!([1, 2]), 400, "invalid_params", "1 parameter"),
        ("add", json!([]), 400, "invalid_params", "got 0"),
        ("add", json!([big]), 413, "payload_too_large", ""),
    ];
    for (function, params, status, code, mentions) in bad {
        let reply = f
            .api
            .invoke("counter", "w1", function, params.clone(), None)
            .await?;
        assert_eq!(reply.status, status, "{function} {params}: {reply:?}");
        assert_eq!(reply.code(), code, "{function} {params}");
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap_or("")
                .contains(mentions),
            "{function} {params}: {reply:?}"
        );
    }
    let unknown_key = f
        .api
        .post_json(
            "/v1/components/counter/workers/w1/invoke",
            &json!({"function": "get", "params": [], "extra": 1}),
            None,
        )
        .await?;
    assert_eq!(
        (unknown_key.status, unknown_key.code()),
        (400, "invalid_json")
    );
    let unknown_component = f
        .api
        .invoke("nothing", "w1", "get", json!([]), None)
        .await?;
    assert_eq!(
        (unknown_component.status, unknown_component.code()),
        (404, "component_not_found")
    );
    // None of that touched the worker.
    assert_eq!(
        f.api.call("counter", "w1", "get", json!([])).await?,
        json!(5)
    );

    let status = f.api.get("/v1/components/counter/workers/w1").await?;
    assert_eq!(status.status, 200);
    assert_eq!(status.body["status"], "active");
    assert_eq!(status.body["component_version"], 1);
    assert_eq!(status.body["pending_invocations"], 0);
    // Create + 5 invocations of 2 entries each.
    assert_eq!(status.body["oplog_length"], 11);
    let oplog = f
        .api
        .get("/v1/components/counter/workers/w1/oplog?from=2&count=2")
        .await?;
    let entries = oplog.body["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["kind"], "exported_function_invoked");
    assert_eq!(entries[0]["function"], "add");
    assert_eq!(entries[0]["params"], json!([5]));
    assert_eq!(entries[1]["kind"], "exported_function_completed");
    assert_eq!(entries[1]["results"], json!([5]));
    assert_eq!(oplog.body["next"], 4);
    let missing = f.api.get("/v1/components/counter/workers/nobody").await?;
    assert_eq!((missing.status, missing.code()), (404, "worker_not_found"));
    Ok(())
}

#[tokio::test]
async fn explicit_worker_creation() -> anyhow::Result<()> {
    let f = start(None).await?;
    f.api.upload("logger", component("logger")).await?;
    let path = "/v1/components/logger/workers";
    let created = f
        .api
        .post_json(
            path,
            &json!({"name": "l1", "env": {"A": "1"}, "args": ["x"]}),
            None,
        )
        .await?;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["component_version"], 1);
    let again = f.api.post_json(path, &json!({"name": "l1"}), None).await?;
    assert_eq!((again.status, again.code()), (409, "worker_exists"));
    let unknown = f
        .api
        .post_json(path, &json!({"name": "l2", "color": "red"}), None)
        .await?;
    assert_eq!((unknown.status, unknown.code()), (400, "invalid_json"));
    let bad_name = f
        .api
        .post_json(path, &json!({"name": "../etc"}), None)
        .await?;
    assert_eq!((bad_name.status, bad_name.code()), (400, "invalid_name"));
    let no_component = f
        .api
        .post_json("/v1/components/ghost/workers", &json!({"name": "g"}), None)
        .await?;
    assert_eq!(no_component.status, 404);
    let list = f.api.get(path).await?;
    assert_eq!(list.body["workers"][0]["name"], "l1");
    assert_eq!(list.body["workers"].as_array().map(Vec::len), Some(1));

    // Output goes to the oplog as log entries.
    assert_eq!(
        f.api.call("logger", "l1", "log", json!(["hello"])).await?,
        json!(1)
    );
    let oplog = f.api.get("/v1/components/logger/workers/l1/oplog").await?;
    let entries = oplog.body["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(entries[0]["kind"], "create");
    assert_eq!(entries[0]["env"], json!({"A": "1"}));
    let text = |stream: &str| -> String {
        entries
            .iter()
            .filter(|e| e["kind"] == "log" && e["stream"] == stream)
            .filter_map(|e| e["text"].as_str())
            .collect()
    };
    assert_eq!(text("stdout"), "hello\n");
    assert_eq!(text("stderr"), "err: hello\n");
    Ok(())
}

#[tokio::test]
async fn idempotency_keys_run_once() -> anyhow::Result<()> {
    let f = start(None).await?;
    f.api.upload("counter", component("counter")).await?;
    let first = f
        .api
        .invoke("counter", "w", "add", json!([10]), Some("key-1"))
        .await?;
    let again = f
        .api
        .invoke("counter", "w", "add", json!([10]), Some("key-1"))
        .await?;
    assert_eq!(first.body["result"], json!(10));
    assert_eq!(again.body, first.body);
    // Concurrent calls with one key: one runs, all get its result.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let api = f.api.clone();
            tokio::spawn(async move {
                api.invoke("counter", "w", "add", json!([1]), Some("key-2"))
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await??.body["result"].clone());
    }
    assert!(results.iter().all(|r| *r == json!(11)), "{results:?}");
    assert_eq!(
        f.api.call("counter", "w", "get", json!([])).await?,
        json!(11)
    );
    let bad = f
        .api
        .invoke("counter", "w", "add", json!([1]), Some(&"k".repeat(300)))
        .await?;
    assert_eq!((bad.status, bad.code()), (400, "invalid_idempotency_key"));
    Ok(())
}

#[tokio::test]
async fn failed_invocations_leave_no_trace() -> anyhow::Result<()> {
    let f = start(Some(
        "[executor]\nfuel_per_invocation = 500000000\n\n[engine]\nmemory_bytes_max = 67108864\nmemory_ceiling_bytes = 67108864\n",
    ))
    .await?;
    f.api.upload("burner", component("burner")).await?;
    assert_eq!(
        f.api.call("burner", "b", "add", json!([3])).await?,
        json!(3)
    );
    let failures: Vec<(&str, Value, &str)> = vec![
        ("fail-after-add", json!([100]), "trap"),
        ("trap", json!(["boom"]), "trap"),
        ("burn", json!([100_000_000]), "quota_exceeded"),
        ("grow", json!([128]), "quota_exceeded"),
    ];
    for (function, params, code) in failures {
        let reply = f
            .api
            .invoke("burner", "b", function, params.clone(), Some(function))
            .await?;
        assert_eq!(
            (reply.status, reply.code()),
            (422, code),
            "{function}: {reply:?}"
        );
        // The worker's state is as before the failure.
        assert_eq!(
            f.api.call("burner", "b", "get", json!([])).await?,
            json!(3),
            "after {function}"
        );
        // The same key gets the same failure, without running again.
        let again = f
            .api
            .invoke("burner", "b", function, params, Some(function))
            .await?;
        assert_eq!(again.body, reply.body, "{function} replayed its outcome");
    }
    assert_eq!(
        f.api.call("burner", "b", "add", json!([1])).await?,
        json!(4)
    );
    let burned = f
        .api
        .invoke("burner", "b", "burn", json!([1000]), None)
        .await?;
    assert!(
        burned.body["fuel_consumed"].as_u64().unwrap_or(0) > 20_000,
        "{burned:?}"
    );
    Ok(())
}

#[tokio::test]
async fn every_wit_type_maps_to_json() -> anyhow::Result<()> {
    let f = start(None).await?;
    f.api.upload("types", component("types")).await?;
    let person = json!({"name": "Ada", "age": 36, "email": "ada@example.com", "tags": ["a", "b"]});
    // (function, argument, expected result)
    let cases: Vec<(&str, Value, Value)> = vec![
        ("echo-u8", json!(255), json!(255)),
        ("echo-s8", json!(-128), json!(-128)),
        ("echo-u16", json!(65535), json!(65535)),
        ("echo-s16", json!(-32768), json!(-32768)),
        ("echo-u32", json!(4294967295_u64), json!(4294967295_u64)),
        ("echo-s32", json!(-2147483648_i64), json!(-2147483648_i64)),
        ("echo-u64", json!(u64::MAX), json!(u64::MAX)),
        ("echo-s64", json!(i64::MIN), json!(i64::MIN)),
        ("echo-f32", json!(1.5), json!(1.5)),
        ("echo-f64", json!(-0.25), json!(-0.25)),
        ("echo-f64", json!("Infinity"), json!("Infinity")),
        ("echo-f64", json!("NaN"), json!("NaN")),
        ("echo-bool", json!(true), json!(true)),
        ("echo-char", json!("ß"), json!("ß")),
        (
            "echo-string",
            json!("héllo \"world\""),
            json!("héllo \"world\""),
        ),
        ("echo-list", json!([1, 2, 3]), json!([1, 2, 3])),
        ("echo-list", json!([]), json!([])),
        ("echo-tuple", json!([7, "seven"]), json!([7, "seven"])),
        ("echo-record", person.clone(), person.clone()),
        (
            "echo-record",
            json!({"name": "Bo", "age": 1, "tags": []}),
            json!({"name": "Bo", "age": 1, "email": null, "tags": []}),
        ),
        (
            "echo-variant",
            json!({"circle": 2.5}),
            json!({"circle": 2.5}),
        ),
        (
            "echo-variant",
            json!({"point": null}),
            json!({"point": null}),
        ),
        ("echo-variant", json!("point"), json!({"point": null})),
        ("echo-enum", json!("green"), json!("green")),
        ("echo-option", json!(null), json!(null)),
        ("echo-option", json!(9), json!(9)),
        ("echo-result", json!({"ok": 1}), json!({"ok": 1})),
        ("echo-result", json!({"err": "bad"}), json!({"err": "bad"})),
        (
            "echo-flags",
            json!(["read", "exec"]),
            json!(["read", "exec"]),
        ),
        ("echo-flags", json!([]), json!([])),
    ];
    for (function, arg, expected) in cases {
        let got = f.api.call("types", "t", function, json!([arg])).await?;
        assert_eq!(got, expected, "{function}({arg})");
    }
    // Two parameters of compound types arrive intact (the text is the guest's own format).
    let described = f
        .api
        .call("types", "t", "describe", json!([person, {"square": 2.0}]))
        .await?;
    let described = described.as_str().unwrap_or("");
    assert!(
        described.starts_with("Ada (36)") && described.ends_with("square(2)"),
        "{described}"
    );
    assert_eq!(
        f.api.call("types", "t", "nothing", json!([])).await?,
        Value::Null
    );
    // Wrong shapes name the parameter, the place inside it and the type expected.
    let wrong: Vec<(&str, Value, &str)> = vec![
        ("echo-u8", json!(256), "expected u8"),
        ("echo-u8", json!(-1), "expected u8"),
        ("echo-char", json!("ab"), "expected char"),
        (
            "echo-record",
            json!({"name": "x", "age": 1, "tags": [1]}),
            "at .tags[0]",
        ),
        ("echo-record", json!({"name": "x", "tags": []}), "at .age"),
        (
            "echo-record",
            json!({"name": "x", "age": 1, "tags": [], "zip": 1}),
            "unknown field `zip`",
        ),
        ("echo-variant", json!({"triangle": 1}), "expected variant"),
        ("echo-enum", json!("purple"), "expected enum"),
        ("echo-result", json!({"maybe": 1}), "expected result"),
        ("echo-flags", json!(["fly"]), "expected flags"),
        ("echo-tuple", json!([1]), "expected tuple"),
    ];
    for (function, arg, mentions) in wrong {
        let reply = f
            .api
            .invoke("types", "t", function, json!([arg]), None)
            .await?;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_params"),
            "{function}({arg})"
        );
        let detail = reply.body["detail"].as_str().unwrap_or("");
        assert!(
            detail.contains(mentions) && detail.contains("parameter `x`"),
            "{function}({arg}): {detail}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn idle_workers_suspend_and_resume_by_replay() -> anyhow::Result<()> {
    let f = start(Some("[executor]\nidle_suspend_ms = 200\n")).await?;
    f.api.upload("clocks", component("clocks")).await?;
    let first = f.api.call("clocks", "c", "sample", json!([])).await?;
    let second = f.api.call("clocks", "c", "sample", json!([])).await?;
    assert_eq!(second["calls"], 2);
    let history = f.api.call("clocks", "c", "history", json!([])).await?;
    assert_eq!(history, json!([first["random"], second["random"]]));
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let status = f.api.get("/v1/components/clocks/workers/c").await?;
    assert_eq!(status.body["status"], "suspended", "{status:?}");
    // Resumed by replay: the random numbers drawn before are the ones recorded.
    assert_eq!(
        f.api.call("clocks", "c", "history", json!([])).await?,
        history
    );
    let third = f.api.call("clocks", "c", "sample", json!([])).await?;
    assert_eq!(third["calls"], 3);
    assert!(third["wall-seconds"].as_u64() >= first["wall-seconds"].as_u64());
    assert!(third["monotonic"].as_u64() > second["monotonic"].as_u64());
    let oplog = f
        .api
        .get("/v1/components/clocks/workers/c/oplog?count=1000")
        .await?;
    let kinds: Vec<&str> = oplog.body["entries"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default();
    assert!(kinds.contains(&"suspended"), "{kinds:?}");
    drop(f.server);
    Ok(())
}

#[tokio::test]
async fn more_workers_than_instance_slots_take_turns() -> anyhow::Result<()> {
    // Four instance slots for ten workers: idle ones are suspended to make room.
    let f = start(Some("[engine]\npool_instances = 4\n")).await?;
    f.api.upload("counter", component("counter")).await?;
    for round in 1..=2_i64 {
        for w in 0..10_i64 {
            let got = f
                .api
                .call("counter", &format!("w{w}"), "add", json!([w]))
                .await?;
            assert_eq!(got, json!(w * round), "worker {w} round {round}");
        }
    }
    // The first worker made room for later ones, and came back by replay when its turn came.
    let first = f.api.get("/v1/components/counter/workers/w0").await?;
    assert_eq!(first.body["status"], "suspended", "{first:?}");
    let kinds = f.api.get("/v1/components/counter/workers/w0/oplog").await?;
    let suspensions = kinds.body["entries"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["kind"] == "suspended").count())
        .unwrap_or(0);
    assert!(suspensions >= 1, "{kinds:?}");
    Ok(())
}

#[tokio::test]
async fn invocations_past_their_deadline_fail_and_leave_no_trace() -> anyhow::Result<()> {
    let f = start(Some("[executor]\ninvocation_timeout_ms = 20\n")).await?;
    f.api.upload("burner", component("burner")).await?;
    assert_eq!(
        f.api.call("burner", "b", "add", json!([2])).await?,
        json!(2)
    );
    // About 50 ms of guest code: the deadline fires at one of its fuel yields.
    let reply = f
        .api
        .invoke("burner", "b", "burn", json!([30_000_000]), None)
        .await?;
    assert_eq!((reply.status, reply.code()), (422, "timeout"), "{reply:?}");
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("20 ms"),
        "{reply:?}"
    );
    assert_eq!(f.api.call("burner", "b", "get", json!([])).await?, json!(2));
    Ok(())
}

#[tokio::test]
async fn a_result_too_large_to_record_is_a_typed_failure() -> anyhow::Result<()> {
    let f = start(Some("[gateway]\njson_body_bytes_max = 16777216\n")).await?;
    f.api.upload("types", component("types")).await?;
    let big = "x".repeat(5 * 1024 * 1024);
    let reply = f
        .api
        .invoke("types", "t", "echo-string", json!([big]), None)
        .await?;
    assert_eq!(
        (reply.status, reply.code()),
        (422, "result_too_large"),
        "{:?}",
        reply.body["detail"]
    );
    // The worker goes on, and a result within the limit is recorded as usual.
    let fine = "y".repeat(1024 * 1024);
    assert_eq!(
        f.api
            .call("types", "t", "echo-string", json!([fine.clone()]))
            .await?,
        json!(fine)
    );
    Ok(())
}

/// An upload answered early (`Prefer: respond-async`): 202 with where to follow it, then the
/// version once compiled, or the problem the upload would have answered; another tenant does
/// not see it.
#[tokio::test]
async fn uploads_answered_early_are_followed_to_their_version() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), &data.path().join("data"))?;
    let operator = server.operator();
    let api = operator.new_tenant("early", "pro").await?;
    let other = operator.new_tenant("other", "pro").await?;
    let send = |bytes: Vec<u8>, name: &str| {
        let request = api
            .http
            .post(format!("{}/v1/components/{name}", api.base))
            .bearer_auth(api.key.clone().unwrap_or_default())
            .header("content-type", "application/wasm")
            .header("prefer", "respond-async")
            .body(bytes);
        async move { anyhow::Ok(request.send().await?) }
    };
    let follow = |location: String| {
        let api = api.clone();
        async move {
            invicta_tests::eventually(
                "the upload ends",
                std::time::Duration::from_secs(60),
                || {
                    let (api, location) = (api.clone(), location.clone());
                    async move {
                        let job = api.get(&location).await?;
                        Ok((job.body["status"] != "compiling").then_some(job))
                    }
                },
            )
            .await
        }
    };
    let accepted = send(component("counter"), "counter").await?;
    assert_eq!(accepted.status(), 202);
    let location = accepted
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        location.starts_with("/v1/components/counter/uploads/"),
        "{location}"
    );
    let hidden = other.get(&location).await?;
    assert_eq!((hidden.status, hidden.code()), (404, "upload_not_found"));
    let done = follow(location).await?;
    assert_eq!(done.body["status"], "ready", "{done:?}");
    assert_eq!(done.body["version"]["version"], 1);
    assert_eq!(done.body["created"], true);
    assert_eq!(api.call("counter", "w", "add", json!([2])).await?, json!(2));

    let refused = send(b"not a component".to_vec(), "broken").await?;
    assert_eq!(refused.status(), 202);
    let location = refused
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let failed = follow(location).await?;
    assert_eq!(failed.body["status"], "failed", "{failed:?}");
    assert_eq!(
        failed.body["problem"]["code"], "invalid_component",
        "{failed:?}"
    );
    Ok(())
}
