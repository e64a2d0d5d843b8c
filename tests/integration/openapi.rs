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
                let schema = &parameter["schema"];
                assert_eq!(
                    schema["pattern"],
                    invicta_model::ids::NAME_PATTERN,
                    "{path}: {name}"
                );
                assert_eq!(
                    schema["maxLength"],
                    invicta_model::ids::NAME_BYTES_MAX,
                    "{path}: {name}"
                );
                names += 1;
            }
        }
    }
    assert!(names >= 20, "only {names} name parameters documented");
    // So does every name a body gives, and the server keeps to it there too.
    for schema in ["CreateWorker", "Fork", "NewTenant"] {
        let name = &doc.body["components"]["schemas"][schema]["properties"]["name"];
        assert_eq!(
            name["pattern"],
            invicta_model::ids::NAME_PATTERN,
            "{schema}"
        );
        assert_eq!(
            name["maxLength"],
            invicta_model::ids::NAME_BYTES_MAX,
            "{schema}"
        );
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
