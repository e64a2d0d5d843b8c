//! The OpenAPI 3.1 document of the public API, generated from the handlers' annotations
//! (utoipa) and served at `GET /v1/openapi.json`. The response shapes the handlers build as JSON
//! are described here; schemathesis checks in CI that what the server sends matches them.

use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::{admin, api, config_api, inspect, logs, route_api};

/// Every error: an RFC 9457 problem with a stable `code`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Problem {
    /// `https://invicta.dev/problems/<code>`
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    /// Stable, for programs: `invalid_params`, `worker_not_found`, `quota_exceeded`, …
    code: String,
    /// For humans.
    detail: String,
    /// For `quota_exceeded`: which quota, its limit and the use.
    quota: Option<String>,
    limit: Option<u64>,
    used: Option<u64>,
}

/// A WebAssembly component's bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[expect(dead_code, reason = "describes the body the handler reads")]
pub(crate) struct WasmBytes(Vec<u8>);

#[derive(Serialize, ToSchema)]
pub(crate) struct Param {
    name: String,
    /// Its WIT type.
    #[serde(rename = "type")]
    ty: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Function {
    name: String,
    params: Vec<Param>,
    /// The WIT type of its result, if it has one.
    result: Option<String>,
}

/// A component version.
#[derive(Serialize, ToSchema)]
pub(crate) struct Component {
    name: String,
    version: u64,
    /// SHA-256 of its bytes (with files: of that hash and the files' canonical archive).
    hash: String,
    /// Bytes stored: the component and its files.
    size: u64,
    created_at_ms: u64,
    exports: Vec<Function>,
    /// Every version's number (when one component is shown).
    versions: Option<Vec<u64>>,
    /// The files each of its workers starts with (absent: none).
    files: Option<Vec<InitialFile>>,
    /// `baseline`: it runs code from the fast baseline compiler while the optimized code is
    /// compiled in the background; `optimized` once that is ready.
    code: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct InitialFile {
    /// Its path under the worker's `/`.
    path: String,
    size: u64,
    /// Workers may read it, not change, replace or remove it.
    read_only: bool,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ComponentList {
    components: Vec<Component>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct WorkerCreated {
    name: String,
    component: String,
    component_version: u64,
    created_at_ms: u64,
}

/// The cluster as the store says it is now (see `invicta_worker_scheduler::ClusterView`).
#[derive(Serialize, ToSchema)]
pub(crate) struct Cluster {
    /// Each executor: `id`, `address` (`null` for the all-in-one server's), `live`, `leaving`,
    /// `shards` held and `workers` stored in them.
    #[schema(value_type = Vec<Object>)]
    executors: Vec<serde_json::Value>,
    /// Each shard: `shard`, `owner`, `epoch`, `expires_ms`, `live`, `handoff_to`, `workers`.
    #[schema(value_type = Vec<Object>)]
    shards: Vec<serde_json::Value>,
    /// The failovers of the last week, newest first: `at_ms`, `from`, `to`, `shards`.
    #[schema(value_type = Vec<Object>)]
    failovers: Vec<serde_json::Value>,
    workers_counted: u64,
    /// More workers exist than were counted: the counts are lower bounds.
    workers_truncated: bool,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct WorkerList {
    workers: Vec<invicta_executor::WorkerSummary>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct InvokeResult {
    /// The function's result in the JSON mapping of WIT values (`null` for none).
    result: serde_json::Value,
    fuel_consumed: u64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Enqueued {
    idempotency_key: String,
    /// False when the key was accepted (or completed) before: nothing new was queued.
    accepted: bool,
    /// Where its status is.
    location: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct InvocationError {
    code: String,
    message: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[expect(dead_code, reason = "describes the JSON the handlers build")]
pub(crate) enum InvocationStatusKind {
    Pending,
    Completed,
    Failed,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct InvocationStatus {
    idempotency_key: String,
    status: InvocationStatusKind,
    /// When pending.
    enqueued_at_ms: Option<u64>,
    /// When pending and scheduled for later.
    due_at_ms: Option<u64>,
    /// When completed.
    result: Option<serde_json::Value>,
    fuel_consumed: Option<u64>,
    /// When failed.
    error: Option<InvocationError>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct OplogPage {
    /// Entries, each with its `index` and `kind`.
    entries: Vec<serde_json::Map<String, serde_json::Value>>,
    /// The index after the last entry returned; `null` when none was.
    next: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct LogsPage {
    lines: Vec<invicta_executor::LogLine>,
    /// The oplog index to read on from.
    next: u64,
}

/// One server-sent event of a followed log: `log` events carry a line (its `id` is the line's
/// oplog index), and an `end` event says why the stream stopped.
#[derive(Serialize, ToSchema)]
pub(crate) struct LogEvent {
    /// `log` or `end`.
    event: String,
    /// JSON: a line (`index`, `stream`, `text`), or `{"reason": …}`.
    data: String,
    id: Option<String>,
    retry: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Interrupted {
    /// Whether an invocation was running (and is now stopped).
    interrupted: bool,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct KeyCreated {
    id: String,
    prefix: String,
    scopes: Vec<invicta_billing::Scope>,
    description: String,
    created_at_ms: u64,
    revoked: bool,
    /// The whole key: shown this once.
    key: String,
    tenant: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct KeyList {
    keys: Vec<invicta_billing::KeyInfo>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TenantList {
    tenants: Vec<invicta_billing::Tenant>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PlanList {
    plans: Vec<invicta_billing::Plan>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct UsageTotals {
    invocations: u64,
    fuel: u64,
    wall_us: u64,
    memory_kib_ms: u64,
    oplog_bytes: u64,
    storage_byte_hours: u64,
    http_requests: u64,
    http_request_bytes: u64,
    http_response_bytes: u64,
}

/// The ledger over a range; a tenant's own report adds this month's totals and its counts.
#[derive(Serialize, ToSchema)]
pub(crate) struct UsageReport {
    tenant: String,
    from_hour: u64,
    to_hour: u64,
    granularity: invicta_billing::Granularity,
    totals: UsageTotals,
    rows: Vec<invicta_billing::UsageRow>,
    month: Option<String>,
    plan: Option<invicta_billing::Plan>,
    fuel: Option<u64>,
    invocations: Option<u64>,
    workers: Option<u64>,
    components: Option<u64>,
    component_bytes: Option<u64>,
    stored_bytes: Option<std::collections::BTreeMap<String, u64>>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    status: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Part {
    backend: String,
    status: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Readiness {
    /// `ready` or `not_ready`.
    status: String,
    store: Part,
    blobs: Part,
}

/// An upload answered early.
#[derive(Serialize, ToSchema)]
pub(crate) struct UploadAccepted {
    upload: String,
    /// `compiling`.
    status: String,
}

/// How an upload answered early goes.
#[derive(Serialize, ToSchema)]
pub(crate) struct UploadStatus {
    upload: String,
    /// `compiling`, `ready` or `failed`.
    status: String,
    elapsed_ms: u64,
    /// When ready: whether the bytes made a new version.
    created: Option<bool>,
    /// When ready.
    version: Option<Component>,
    /// When failed: the problem the upload would have answered.
    problem: Option<Problem>,
}

/// Configuration entries.
#[derive(Serialize, ToSchema)]
pub(crate) struct ConfigList {
    entries: Vec<invicta_executor::ConfigEntry>,
}

/// A tenant's public routes.
#[derive(Serialize, ToSchema)]
pub(crate) struct RouteList {
    routes: Vec<crate::routes::Route>,
}

/// What a route served this month.
#[derive(Serialize, ToSchema)]
pub(crate) struct RouteUsage {
    /// `YYYY-MM`.
    month: String,
    requests: u64,
    request_bytes: u64,
    response_bytes: u64,
}

/// A route, with what it served this month.
#[derive(Serialize, ToSchema)]
pub(crate) struct RouteWithUsage {
    #[serde(flatten)]
    route: crate::routes::Route,
    usage: RouteUsage,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Invicta",
        description = "Durable WebAssembly workers, multi-tenant and serverless. Every `/v1` \
                       route but this document takes `Authorization: Bearer <key>`.",
    ),
    paths(
        crate::healthz,
        crate::readyz,
        crate::metrics,
        openapi_json,
        api::list_components,
        api::upload_component,
        api::get_upload,
        api::get_component,
        api::delete_component,
        api::create_worker,
        api::list_workers,
        api::worker_status,
        api::delete_worker,
        api::interrupt_worker,
        api::resume_worker,
        api::set_worker_version,
        api::revert_worker,
        api::fork_worker,
        api::update_workers,
        api::invoke,
        api::enqueue,
        api::get_invocation,
        api::oplog,
        logs::logs,
        api::create_schedule,
        api::list_schedules,
        api::pause_schedule,
        api::resume_schedule,
        api::delete_schedule,
        api::get_promise,
        inspect::list_promises,
        inspect::pending_invocations,
        crate::files_api::root,
        crate::files_api::at_path,
        api::webhook,
        api::complete_promise,
        config_api::set_component_config,
        config_api::unset_component_config,
        config_api::list_component_config,
        config_api::set_worker_config,
        config_api::unset_worker_config,
        config_api::list_worker_config,
        config_api::set_component_retry,
        config_api::get_component_retry,
        config_api::delete_component_retry,
        config_api::set_component_snapshots,
        config_api::get_component_snapshots,
        config_api::delete_component_snapshots,
        route_api::create_route,
        route_api::list_routes,
        route_api::get_route,
        route_api::delete_route,
        admin::create_key,
        admin::list_keys,
        admin::revoke_key,
        admin::usage,
        admin::create_tenant,
        admin::list_tenants,
        admin::get_tenant,
        admin::set_tenant_plan,
        admin::create_tenant_key,
        admin::list_plans,
        admin::put_plan,
        admin::admin_usage,
        admin::invoice,
        admin::cluster,
    ),
    modifiers(&Conventions),
)]
pub(crate) struct ApiDoc;

/// The errors every authenticated route may answer with.
const ERRORS: [(&str, &str); 10] = [
    (
        "400",
        "The request is malformed: a bad name, body, parameter or query.",
    ),
    ("401", "No key, or a key that is not valid."),
    ("403", "The key may not do this."),
    (
        "404",
        "No such resource (another tenant's resources are not found either).",
    ),
    ("409", "The resource's state forbids it."),
    ("413", "The body is too large."),
    ("415", "The body's content type is not the one expected."),
    ("431", "The request has too many headers."),
    (
        "429",
        "A rate limit or quota was reached; `Retry-After` may say when to try again.",
    ),
    ("503", "The server is busy or stopping; try again."),
];

/// What every route shares: the bearer scheme, and problem responses for every error.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("inv_<id>_<secret>")
                    .build(),
            ),
        );
        // The names bodies give (a new worker's, a fork's, a new tenant's) follow the same rule
        // as the names in paths.
        for schema in ["CreateWorker", "Fork", "NewTenant"] {
            if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(
                object,
            ))) = components.schemas.get_mut(schema)
            {
                object
                    .properties
                    .insert("name".into(), name_schema().into());
            }
        }
        invoke_now(doc);
        operator_names_the_tenant(doc);
        open_stored_route(doc);
        let problem = ResponseBuilder::new()
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        for (path, item) in doc.paths.paths.iter_mut() {
            let public = !path.starts_with("/v1/") || path == "/v1/openapi.json";
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                add_errors(operation, &problem, public);
                constrain_names(operation);
            }
        }
    }
}

/// `invoke` takes `enqueue`'s body without what only a background run has (`retry`,
/// `schedule_at`, which it refuses): its schema is that one's, less those two.
fn invoke_now(doc: &mut Document) {
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::{Content, RefOr};
    const INVOKE: &str = "/v1/components/{component}/workers/{worker}/invoke";
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let Some(RefOr::T(Schema::Object(invoke))) = components.schemas.get("Invoke") else {
        return;
    };
    let mut now = invoke.clone();
    for background in ["retry", "schedule_at"] {
        now.properties.shift_remove(background);
        now.required.retain(|name| name != background);
    }
    components
        .schemas
        .insert("InvokeNow".into(), Schema::Object(now).into());
    let body = doc
        .paths
        .paths
        .get_mut(INVOKE)
        .and_then(|item| item.post.as_mut())
        .and_then(|operation| operation.request_body.as_mut());
    if let Some(body) = body {
        body.content.insert(
            "application/json".into(),
            Content::new(Some(Ref::from_schema_name("InvokeNow"))),
        );
    }
}

/// A stored route is the spec the API takes plus what the server adds (its name, creation time,
/// URL). The spec refuses unknown fields, so as one part of an `allOf` it would refuse those
/// too: the stored route refers to the same fields without that rule (`RouteFields`).
fn open_stored_route(doc: &mut Document) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let Some(RefOr::T(Schema::Object(spec))) = components.schemas.get("RouteSpec") else {
        return;
    };
    let mut fields = spec.clone();
    fields.additional_properties = None;
    components
        .schemas
        .insert("RouteFields".into(), Schema::Object(fields).into());
    if let Some(RefOr::T(Schema::AllOf(route))) = components.schemas.get_mut("Route") {
        for part in &mut route.items {
            if matches!(part, RefOr::Ref(r) if r.ref_location.ends_with("/RouteSpec")) {
                *part = Ref::from_schema_name("RouteFields").into();
            }
        }
    }
}

/// The usage report's query serves the tenant's report and the operator's, which must name the
/// tenant: there the parameter is required.
fn operator_names_the_tenant(doc: &mut Document) {
    use utoipa::openapi::Required;
    let parameters = doc
        .paths
        .paths
        .get_mut("/v1/admin/usage")
        .and_then(|item| item.get.as_mut())
        .and_then(|operation| operation.parameters.as_mut());
    for parameter in parameters.into_iter().flatten() {
        if parameter.name == "tenant" {
            parameter.required = Required::True;
        }
    }
}

/// The path parameters that are names (of a tenant, component, worker or route) carry the
/// rule every name follows, from the model, where it is checked.
fn constrain_names(operation: &mut Operation) {
    use utoipa::openapi::path::ParameterIn;
    const NAMES: [&str; 4] = ["tenant", "component", "worker", "route"];
    for parameter in operation.parameters.iter_mut().flatten() {
        if parameter.parameter_in == ParameterIn::Path && NAMES.contains(&parameter.name.as_str()) {
            parameter.schema = Some(name_schema().into());
        }
    }
}

/// The rule every name follows (`invicta_model::ids`), as a schema.
fn name_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(invicta_model::ids::NAME_PATTERN))
        .min_length(Some(1))
        .max_length(Some(invicta_model::ids::NAME_BYTES_MAX))
        .build()
}

fn add_errors(operation: &mut Operation, problem: &utoipa::openapi::Response, public: bool) {
    let responses = &mut operation.responses.responses;
    let errors: &[(&str, &str)] = if public { &ERRORS[..0] } else { &ERRORS };
    for (status, description) in errors
        .iter()
        .chain([&("500", "An internal error; it has been logged.")])
    {
        responses.entry(status.to_string()).or_insert_with(|| {
            let mut response = problem.clone();
            response.description = description.to_string();
            response.into()
        });
    }
    if !public {
        operation.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub(crate) async fn openapi_json() -> axum::Json<Document> {
    axum::Json(ApiDoc::openapi())
}
