//! The OpenAPI document lists exactly the routes the server has, with exactly their methods.

use std::collections::BTreeSet;

use invicta_tests::Server;

use crate::INVICTA;

/// The paths the gateway's router declares, read from its source.
fn routed_paths() -> anyhow::Result<BTreeSet<String>> {
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/src/lib.rs"),
    )?;
    let mut paths = BTreeSet::new();
    for (i, _) in source.match_indices(".route(") {
        let rest = source[i + ".route(".len()..].trim_start();
        let Some(rest) = rest.strip_prefix('"') else {
            continue;
        };
        // The console's page and assets are the web UI, not the API.
        if let Some(end) = rest.find('"')
            && !rest[..end].starts_with("/console")
        {
            // OpenAPI has no rest-of-path parameter: `{*path}` is documented as `{path}`.
            paths.insert(rest[..end].replace("{*", "{"));
        }
    }
    anyhow::ensure!(paths.len() > 20, "too few routes found: {paths:?}");
    Ok(paths)
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let api = server.operator().new_tenant("doc", "pro").await?;
    let doc = api.anonymous().get("/v1/openapi.json").await?;
    assert_eq!(doc.status, 200, "served without a key");
    assert!(
        doc.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
    let documented = doc.body["paths"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("no paths"))?;
    let routed = routed_paths()?;
    let listed: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(listed, routed, "documented paths vs routed paths");

    let http = reqwest::Client::new();
    for (path, item) in documented {
        let concrete = path
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["get", "post", "put", "delete"] {
            let request = http
                .request(
                    method.to_uppercase().parse()?,
                    format!("{}{concrete}", server.url),
                )
                .bearer_auth(api.key.clone().unwrap_or_default());
            let response = request.send().await?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let is_documented = item.get(method).is_some();
            if status >= 400 {
                assert_eq!(
                    content_type, "application/problem+json",
                    "{method} {path}: every error is a problem"
                );
            }
            assert_eq!(
                status != 405,
                is_documented,
                "{method} {path}: the server says {status}, the document {}",
                if is_documented {
                    "lists it"
                } else {
                    "does not"
                }
            );
            if is_documented {
                let operation = &item[method];
                assert!(
                    operation["responses"]
                        .as_object()
                        .is_some_and(|r| !r.is_empty()),
                    "{method} {path} documents its responses"
                );
                if path.starts_with("/v1/") && path != "/v1/openapi.json" {
                    assert!(
                        operation["security"].is_array(),
                        "{method} {path} names its security"
                    );
                }
            }
        }
    }
    // Every name in a path carries the rule the server checks it by, and the server keeps to it:
    // a name the rule allows is looked up (not found), one it refuses is refused as a name.
    let mut names = 0;
    for (path, item) in documented {
        let operations = item.as_object().into_iter().flat_map(|o| o.values());
        for parameter in operations.flat_map(|o| o["parameters"].as_array().into_iter().flatten()) {
            let name = parameter["name"].as_str().unwrap_or_default();
            if parameter["in"] == "path"
                && ["tenant", "component", "worker", "route"].contains(&name)
            {
                assert_name_rule(&parameter["schema"], &format!("{path}: {name}"));
                names += 1;
            }
        }
    }
    assert!(names >= 20, "only {names} name parameters documented");
    // So does every name a body gives, and the server keeps to it there too.
    for schema in ["CreateWorker", "Fork", "NewTenant"] {
        let name = &doc.body["components"]["schemas"][schema]["properties"]["name"];
        assert_name_rule(name, schema);
    }
    let refused = api
        .post_json(
            "/v1/components/counter/workers",
            &serde_json::json!({ "name": ".hidden" }),
            None,
        )
        .await?;
    assert_eq!(refused.code(), "invalid_name", "{refused:?}");
    for (component, code) in [
        ("allowed_name-1.x", "component_not_found"),
        (".hidden", "invalid_name"),
        ("with%20space", "invalid_name"),
    ] {
        let answer = api.get(&format!("/v1/components/{component}")).await?;
        assert_eq!(answer.code(), code, "{component}: {answer:?}");
    }

    // Errors axum makes by itself are problems too.
    let bad_path = api.get("/v1/components/%FF%FE/workers").await?;
    assert_eq!(bad_path.status, 400);
    assert_eq!(bad_path.content_type, "application/problem+json");
    assert_eq!(bad_path.code(), "invalid_request");
    Ok(())
}

/// `schema` (of `what`) carries the rule every name follows, as the model states it.
fn assert_name_rule(schema: &serde_json::Value, what: &str) {
    assert_eq!(
        schema["pattern"],
        invicta_model::ids::NAME_PATTERN,
        "{what}"
    );
    assert_eq!(
        schema["maxLength"],
        invicta_model::ids::NAME_BYTES_MAX,
        "{what}"
    );
}

/// The bound a schema documents, as a whole number.
fn bound(schema: &serde_json::Value, which: &str) -> anyhow::Result<u64> {
    schema[which]
        .as_u64()
        .or_else(|| schema[which].as_f64().map(|v| v as u64))
        .ok_or_else(|| anyhow::anyhow!("no {which} in {schema}"))
}

/// The schema of query parameter `name` of `GET path`.
fn query_schema<'d>(
    doc: &'d serde_json::Value,
    path: &str,
    name: &str,
) -> anyhow::Result<&'d serde_json::Value> {
    doc["paths"][path]["get"]["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["in"] == "query" && p["name"] == name)
        .map(|p| &p["schema"])
        .ok_or_else(|| anyhow::anyhow!("GET {path} documents no query parameter {name}"))
}

/// What the document says a value may be is what the server takes: each bound it gives, read
/// from it, is accepted at its edge and refused one past it.
#[tokio::test]
async fn documented_bounds_are_the_servers() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let api = server.operator().new_tenant("bounds", "pro").await?;
    assert_eq!(
        api.upload("counter", invicta_tests::component("counter"))
            .await?
            .status,
        201
    );
    api.call("counter", "w", "add", serde_json::json!([1]))
        .await?;
    let doc = api.anonymous().get("/v1/openapi.json").await?.body;

    // Page sizes of the lists.
    for (path, concrete) in [
        (
            "/v1/components/{component}/workers",
            "/v1/components/counter/workers",
        ),
        (
            "/v1/components/{component}/workers/{worker}/invocations",
            "/v1/components/counter/workers/w/invocations",
        ),
        (
            "/v1/components/{component}/workers/{worker}/promises",
            "/v1/components/counter/workers/w/promises",
        ),
    ] {
        let limit = query_schema(&doc, path, "limit")?;
        let (min, max) = (bound(limit, "minimum")?, bound(limit, "maximum")?);
        for (value, ok) in [(min, true), (max, true), (min - 1, false), (max + 1, false)] {
            let answer = api.get(&format!("{concrete}?limit={value}")).await?;
            assert_eq!(answer.status == 200, ok, "{path}?limit={value}: {answer:?}");
        }
    }
    let status = query_schema(&doc, "/v1/components/{component}/workers", "status")?;
    assert_eq!(status["pattern"], "^(active|suspended|failed)$", "{status}");
    for (value, ok) in [
        ("active", true),
        ("suspended", true),
        ("failed", true),
        ("running", false),
    ] {
        let answer = api
            .get(&format!("/v1/components/counter/workers?status={value}"))
            .await?;
        assert_eq!(answer.status == 200, ok, "status={value}: {answer:?}");
    }

    // Bodies: a retry policy, a snapshot policy, a bulk update's page, a key's scopes.
    let schemas = &doc["components"]["schemas"];
    let attempts = &schemas["RetryPolicy"]["properties"]["max_attempts"];
    let (min, max) = (bound(attempts, "minimum")?, bound(attempts, "maximum")?);
    for (value, ok) in [(min, true), (max, true), (min - 1, false), (max + 1, false)] {
        let answer = api
            .put_json(
                "/v1/components/counter/retry",
                &serde_json::json!({ "max_attempts": value }),
            )
            .await?;
        assert_eq!(answer.status < 300, ok, "max_attempts {value}: {answer:?}");
    }
    let failures = schemas["RetriableFailure"]["enum"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(failures.len() >= 2, "{failures:?}");
    for (failure, ok) in failures
        .into_iter()
        .map(|f| (f, true))
        .chain([(serde_json::json!("divergence"), false)])
    {
        let answer = api
            .put_json(
                "/v1/components/counter/retry",
                &serde_json::json!({ "max_attempts": 2, "on": [failure] }),
            )
            .await?;
        assert_eq!(answer.status < 300, ok, "on {failure}: {answer:?}");
    }
    for field in ["every_invocations", "every_entries", "every_oplog_bytes"] {
        let max = bound(&schemas["Policy"]["properties"][field], "maximum")?;
        for (value, ok) in [(max, true), (max + 1, false)] {
            let mut policy = serde_json::json!({ "every_invocations": 0, "every_entries": 0 });
            policy[field] = value.into();
            let answer = api
                .put_json("/v1/components/counter/snapshots", &policy)
                .await?;
            assert_eq!(answer.status < 300, ok, "{field} {value}: {answer:?}");
        }
    }
    let page = &schemas["UpdateWorkers"]["properties"]["limit"];
    let max = bound(page, "maximum")?;
    for (value, ok) in [(max, true), (max + 1, false)] {
        let answer = api
            .post_json(
                "/v1/components/counter/update",
                &serde_json::json!({ "version": 1, "limit": value, "dry_run": true }),
                None,
            )
            .await?;
        assert_eq!(answer.status == 200, ok, "update limit {value}: {answer:?}");
    }
    let scopes = &schemas["NewKey"]["properties"]["scopes"];
    assert_eq!(bound(scopes, "minItems")?, 1, "{scopes}");
    let none = api
        .post_json("/v1/keys", &serde_json::json!({ "scopes": [] }), None)
        .await?;
    assert_eq!(none.status, 400, "{none:?}");

    // `invoke` documents no field it refuses.
    let now = &schemas["InvokeNow"]["properties"];
    assert!(now["function"].is_object(), "{now}");
    for background in ["retry", "schedule_at"] {
        assert!(now[background].is_null(), "invoke documents {background}");
        assert!(
            schemas["Invoke"]["properties"][background].is_object(),
            "enqueue documents {background}"
        );
    }
    let refused = api
        .post_json(
            "/v1/components/counter/workers/w/invoke",
            &serde_json::json!({ "function": "add", "params": [1], "schedule_at": 1 }),
            None,
        )
        .await?;
    assert_eq!(refused.status, 400, "{refused:?}");
    Ok(())
}
