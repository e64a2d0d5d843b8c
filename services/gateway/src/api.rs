//! The `/v1` API: components, workers, invocations, oplogs. JSON in and out; every error is an
//! RFC 9457 problem (`application/problem+json`) with a stable `code`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use invicta_component_registry::Error as RegistryError;
use invicta_executor::Error as ExecutorError;
use invicta_model::{ComponentName, TenantId, WorkerId, WorkerName};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;

use crate::AppState;
use crate::auth::Caller;
use axum::Extension;
use invicta_billing::Error as BillingError;
use invicta_billing::Scope;
use invicta_component_registry::Quota;
use invicta_executor::Limits;

/// The most oplog entries one request returns.
pub const OPLOG_PAGE_MAX: usize = 1_000;

pub use crate::problem::Problem;

impl From<RegistryError> for Problem {
    fn from(e: RegistryError) -> Problem {
        match e {
            RegistryError::NotAComponent(_) | RegistryError::Invalid(_) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_component", e.to_string())
            }
            RegistryError::InvalidArchive(_) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_archive", e.to_string())
            }
            RegistryError::UnsupportedImports(_) => Problem::new(
                StatusCode::BAD_REQUEST,
                "unsupported_imports",
                e.to_string(),
            ),
            RegistryError::TooLarge { .. } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            ),
            // Memory is not used up by uploading: the component needs more than any worker
            // on the plan may have, which waiting does not change.
            RegistryError::QuotaExceeded {
                quota: quota @ "memory_per_worker",
                limit,
                used,
            } => {
                let mut problem = Problem::quota(quota, limit, used, None);
                problem.status = StatusCode::UNPROCESSABLE_ENTITY;
                problem.detail = format!(
                    "the component's memories start at {used} bytes; the plan's `{quota}` is {limit} bytes"
                );
                if let Some(extra) = problem.extra.as_mut() {
                    extra.insert("needed".into(), serde_json::json!(used));
                }
                problem
            }
            RegistryError::QuotaExceeded { quota, limit, used } => {
                Problem::quota(quota, limit, used, None)
            }
            RegistryError::NotFound(_) => {
                Problem::new(StatusCode::NOT_FOUND, "component_not_found", e.to_string())
            }
            RegistryError::VersionNotFound { .. } => {
                Problem::new(StatusCode::NOT_FOUND, "version_not_found", e.to_string())
            }
            RegistryError::InUse { .. } => {
                Problem::new(StatusCode::CONFLICT, "component_in_use", e.to_string())
            }
            RegistryError::Remote { ref code, .. } => {
                coded(code, e.to_string()).unwrap_or_else(|| Problem::internal(e))
            }
            RegistryError::CompileTimeout { .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "compile_timeout",
                e.to_string(),
            ),
            RegistryError::Busy => {
                coded("unavailable", e.to_string()).unwrap_or_else(|| Problem::internal(e))
            }
            other => Problem::internal(other),
        }
    }
}

/// Every code an executor, registry or billing error may carry, with its HTTP status: one
/// table for errors raised here and for those another process sent back.
const CODES: &[(&str, StatusCode)] = &[
    ("unauthorized", StatusCode::UNAUTHORIZED),
    ("forbidden", StatusCode::FORBIDDEN),
    ("tenant_not_found", StatusCode::NOT_FOUND),
    ("plan_not_found", StatusCode::NOT_FOUND),
    ("key_not_found", StatusCode::NOT_FOUND),
    ("tenant_exists", StatusCode::CONFLICT),
    ("invalid_request", StatusCode::BAD_REQUEST),
    ("invalid_component", StatusCode::BAD_REQUEST),
    ("invalid_archive", StatusCode::BAD_REQUEST),
    ("file_not_found", StatusCode::NOT_FOUND),
    ("invalid_path", StatusCode::BAD_REQUEST),
    ("file_too_large", StatusCode::PAYLOAD_TOO_LARGE),
    ("unsupported_imports", StatusCode::BAD_REQUEST),
    ("compile_timeout", StatusCode::UNPROCESSABLE_ENTITY),
    ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
    ("component_in_use", StatusCode::CONFLICT),
    ("worker_not_found", StatusCode::NOT_FOUND),
    ("invocation_not_found", StatusCode::NOT_FOUND),
    ("schedule_not_found", StatusCode::NOT_FOUND),
    ("promise_not_found", StatusCode::NOT_FOUND),
    ("invalid_revert", StatusCode::BAD_REQUEST),
    ("invalid_fork", StatusCode::BAD_REQUEST),
    ("webhook_not_found", StatusCode::NOT_FOUND),
    ("component_not_found", StatusCode::NOT_FOUND),
    ("version_not_found", StatusCode::NOT_FOUND),
    ("worker_exists", StatusCode::CONFLICT),
    ("incompatible_version", StatusCode::CONFLICT),
    ("promise_completed", StatusCode::CONFLICT),
    ("worker_failed", StatusCode::CONFLICT),
    ("invalid_schedule", StatusCode::BAD_REQUEST),
    ("unknown_function", StatusCode::BAD_REQUEST),
    ("invalid_params", StatusCode::BAD_REQUEST),
    ("invalid_idempotency_key", StatusCode::BAD_REQUEST),
    ("idempotency_key_reused", StatusCode::CONFLICT),
    ("invalid_name", StatusCode::BAD_REQUEST),
    ("promise_too_large", StatusCode::PAYLOAD_TOO_LARGE),
    ("queue_full", StatusCode::TOO_MANY_REQUESTS),
    ("not_a_handler", StatusCode::UNPROCESSABLE_ENTITY),
    ("handler_failed", StatusCode::BAD_GATEWAY),
    ("route_not_found", StatusCode::NOT_FOUND),
    ("route_exists", StatusCode::CONFLICT),
    ("config_not_found", StatusCode::NOT_FOUND),
    ("retry_not_found", StatusCode::NOT_FOUND),
    ("snapshots_not_found", StatusCode::NOT_FOUND),
    ("upload_not_found", StatusCode::NOT_FOUND),
    ("host_taken", StatusCode::CONFLICT),
    ("quota_exceeded", StatusCode::TOO_MANY_REQUESTS),
    ("capacity_exhausted", StatusCode::SERVICE_UNAVAILABLE),
    ("worker_moved", StatusCode::SERVICE_UNAVAILABLE),
    ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
    // An invocation's failure: its kind.
    ("trap", StatusCode::UNPROCESSABLE_ENTITY),
    ("out_of_fuel", StatusCode::UNPROCESSABLE_ENTITY),
    ("out_of_memory", StatusCode::UNPROCESSABLE_ENTITY),
    ("timeout", StatusCode::UNPROCESSABLE_ENTITY),
    ("exit", StatusCode::UNPROCESSABLE_ENTITY),
    ("divergence", StatusCode::UNPROCESSABLE_ENTITY),
    ("result_too_large", StatusCode::UNPROCESSABLE_ENTITY),
    ("interrupted", StatusCode::UNPROCESSABLE_ENTITY),
    ("invalid_handle", StatusCode::BAD_REQUEST),
    ("files_too_large", StatusCode::UNPROCESSABLE_ENTITY),
];

impl From<BillingError> for Problem {
    fn from(e: BillingError) -> Problem {
        coded(e.code(), e.to_string()).unwrap_or_else(|| Problem::internal(e))
    }
}

impl From<ExecutorError> for Problem {
    fn from(e: ExecutorError) -> Problem {
        use ExecutorError as E;
        match e {
            E::QuotaExceeded { quota, limit, used } => {
                return Problem::quota(quota, limit, used, None);
            }
            E::Component(inner) => return inner.into(),
            E::Store(_) | E::OplogGap { .. } | E::Corrupt(_) | E::Engine(_) => {
                return Problem::internal(e);
            }
            _ => {}
        }
        coded(e.code(), e.to_string()).unwrap_or_else(|| Problem::internal(e))
    }
}

/// The problem for an error's code, if the code is one of [`CODES`].
fn coded(code: &str, detail: String) -> Option<Problem> {
    let (code, status) = CODES.iter().find(|(c, _)| *c == code).copied()?;
    let retry =
        status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    Some(Problem {
        retry_after_s: retry.then_some(1),
        ..Problem::new(status, code, detail)
    })
}

pub(crate) type ApiResult<T> = Result<T, Problem>;

fn component_name(name: String) -> ApiResult<ComponentName> {
    ComponentName::new(name)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))
}

pub(crate) fn worker_id(
    tenant: TenantId,
    component: String,
    worker: String,
) -> ApiResult<WorkerId> {
    Ok(WorkerId {
        tenant,
        component: component_name(component)?,
        worker: WorkerName::new(worker)
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))?,
    })
}

/// Reads a request's body, within its route's limit. Handlers call it after checking the
/// caller's scope, so that a caller who may not do what it asks sends its body for nothing: not
/// a byte of it is read (an `Expect: 100-continue` client does not even send it).
pub(crate) async fn read_body(request: axum::extract::Request) -> Result<Bytes, BytesRejection> {
    use axum::extract::FromRequest;
    Bytes::from_request(request, &()).await
}

pub(crate) fn body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(status, "payload_too_large", rejection.body_text())
        } else {
            Problem::new(status, "invalid_body", rejection.body_text())
        }
    })
}

pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    bytes: &[u8],
) -> ApiResult<T> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE)
        && !ct.to_str().unwrap_or("").starts_with("application/json")
    {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send JSON with Content-Type: application/json",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))
}

fn component_json(v: &invicta_component_registry::ComponentVersion) -> serde_json::Value {
    let mut body = json!({
        "name": v.name,
        "version": v.version,
        "hash": v.hash,
        "size": v.size,
        "created_at_ms": v.created_at_ms,
        "exports": v.exports,
        "code": if v.baseline { "baseline" } else { "optimized" },
    });
    if !v.files.is_empty() {
        body["files"] = json!(v.files);
    }
    body
}

#[utoipa::path(get, path = "/v1/components/{component}/uploads/{upload}", tag = "components",
    params(("component" = String, Path), ("upload" = String, Path)),
    responses((status = 200, description = "How an upload answered early goes: `compiling`, `ready` (with `version`) or `failed` (with `problem`); 404 `upload_not_found` once forgotten", body = crate::openapi::UploadStatus)))]
pub(crate) async fn get_upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, upload)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = caller.tenant(Scope::Read)?;
    let name = component_name(component)?;
    state
        .uploads
        .show(tenant.as_str(), name.as_str(), &upload)
        .map(Json)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "upload_not_found",
                format!("no upload `{upload}` of this component is remembered"),
            )
        })
}

#[utoipa::path(post, path = "/v1/components/{component}", tag = "components",
    params(("component" = String, Path, description = "The component's name")),
    request_body(description = "The component's bytes; or an uncompressed tar archive of `component.wasm` and, under `files/`, the files its workers start with (a file without its owner's write bit is read-only)",
        content((crate::openapi::WasmBytes = "application/wasm"), (crate::openapi::WasmBytes = "application/octet-stream"), (crate::openapi::WasmBytes = "application/x-tar"))),
    responses(
        (status = 201, description = "A new version", body = crate::openapi::Component),
        (status = 200, description = "These bytes are already a version", body = crate::openapi::Component),
        (status = 202, description = "Answered early, when the request says `Prefer: respond-async`: the bytes are in and compiling; `Location` says how it goes", body = crate::openapi::UploadAccepted,
            headers(("Location" = String, description = "The upload's status"))),
    ))]
pub(crate) async fn upload_component(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
    headers: HeaderMap,
    upload: axum::body::Body,
) -> ApiResult<Response> {
    // The scope is checked before a byte of the body is read.
    let tenant = caller.tenant(Scope::Deploy)?;
    let plan = caller.plan()?;
    let quota = Quota {
        components_max: plan.components_max,
        bytes_max: plan.component_bytes_max,
        memory_per_worker_bytes: plan.memory_per_worker_bytes,
    };
    let name = component_name(component)?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !(ct.starts_with("application/wasm")
            || ct.starts_with("application/octet-stream")
            || ct.starts_with("application/x-tar"))
        {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "upload the component's bytes with Content-Type: application/wasm, or an archive of it and its files with Content-Type: application/x-tar",
            ));
        }
    }
    let limit = usize::try_from(state.registry.config().component_bytes_max).unwrap_or(usize::MAX);
    let bytes = axum::body::to_bytes(upload, limit).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the component is larger than the limit of {limit} bytes, or its upload broke off"
            ),
        )
    })?;
    // `Prefer: respond-async`: answered now, compiled in the background.
    let early = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
    if early {
        let Some(id) = state.uploads.start(tenant.as_str(), name.as_str()) else {
            let most = crate::uploads::COMPILING_PER_TENANT_MAX;
            return Err(Problem {
                retry_after_s: Some(1),
                ..Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("{most} uploads of this tenant are compiling; wait for one to end"),
                )
            });
        };
        let (registry, uploads, job) = (state.registry.clone(), state.uploads.clone(), id.clone());
        let (tenant_c, name_c) = (tenant.clone(), name.clone());
        tokio::spawn(async move {
            let progress = match registry
                .upload(&tenant_c, &name_c, bytes.to_vec(), quota)
                .await
            {
                Ok(uploaded) => crate::uploads::Progress::Ready {
                    version: component_json(&uploaded.version),
                    created: uploaded.created,
                },
                Err(e) => crate::uploads::Progress::Failed {
                    problem: Problem::from(e).body(),
                },
            };
            uploads.finish(&job, progress);
        });
        let location = format!("/v1/components/{name}/uploads/{id}");
        let mut response = (
            StatusCode::ACCEPTED,
            Json(json!({ "upload": id, "status": "compiling" })),
        )
            .into_response();
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        return Ok(response);
    }
    let uploaded = state
        .registry
        .upload(&tenant, &name, bytes.to_vec(), quota)
        .await?;
    let status = if uploaded.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(component_json(&uploaded.version))).into_response())
}

#[utoipa::path(get, path = "/v1/components/{component}", tag = "components",
    params(("component" = String, Path)),
    responses((status = 200, description = "The latest version, with every version's number", body = crate::openapi::Component)))]
pub(crate) async fn get_component(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = caller.tenant(Scope::Read)?;
    let name = component_name(component)?;
    let latest = state.registry.get(&tenant, &name, None).await?;
    let versions = state.registry.versions(&tenant, &name).await?;
    let mut body = component_json(&latest);
    body["versions"] = json!(versions);
    Ok(Json(body))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateWorker {
    name: String,
    /// The component version to run (the latest if absent).
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    args: Vec<String>,
}

#[utoipa::path(post, path = "/v1/components/{component}/workers", tag = "workers",
    params(("component" = String, Path)),
    request_body = CreateWorker,
    responses((status = 201, description = "Created", body = crate::openapi::WorkerCreated)))]
pub(crate) async fn create_worker(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Response> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let limits = limits(caller.plan()?);
    let request: CreateWorker = json_body(&headers, &body(read_body(incoming).await)?)?;
    let id = worker_id(tenant, component, request.name)?;
    let record = state
        .executor
        .create_worker(
            &id,
            request.env.into_iter().collect(),
            request.args,
            request.version,
            &limits,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": id.worker,
            "component": id.component,
            "component_version": record.component_version,
            "created_at_ms": record.created_at_ms,
        })),
    )
        .into_response())
}

/// The most workers one listing returns.
pub const WORKERS_PAGE_MAX: usize = 1_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct WorkersQuery {
    /// Only workers in this state.
    #[param(pattern = "^(active|suspended|failed)$")]
    status: Option<String>,
    /// Only workers whose name starts with this.
    prefix: Option<String>,
    /// Continue after this worker name (the previous page's `next`).
    cursor: Option<String>,
    /// At most this many (1 to 1000, 100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

pub(crate) fn query<T>(
    query: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<T> {
    query
        .map(|Query(q)| q)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
}

#[utoipa::path(get, path = "/v1/components/{component}/workers", tag = "workers",
    params(("component" = String, Path), WorkersQuery),
    responses((status = 200, description = "Workers in name order, a page at a time", body = crate::openapi::WorkerList)))]
pub(crate) async fn list_workers(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
    q: Result<Query<WorkersQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let q = query(q)?;
    let tenant = caller.tenant(Scope::Read)?;
    let name = component_name(component)?;
    if let Some(status) = &q.status
        && !["active", "suspended", "failed"].contains(&status.as_str())
    {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("status `{status}` is none of active, suspended, failed"),
        ));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=WORKERS_PAGE_MAX).contains(&limit) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be 1 to {WORKERS_PAGE_MAX}"),
        ));
    }
    state.registry.get(&tenant, &name, None).await?;
    let filter = invicta_executor::WorkerFilter {
        prefix: q.prefix,
        status: q.status,
        after: q.cursor,
        limit,
    };
    let (workers, next) = state.executor.list_workers(&tenant, &name, &filter).await?;
    Ok(Json(json!({ "workers": workers, "next": next })))
}

#[utoipa::path(get, path = "/v1/components", tag = "components",
    responses((status = 200, description = "The tenant's components, latest versions", body = crate::openapi::ComponentList)))]
pub(crate) async fn list_components(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = caller.tenant(Scope::Read)?;
    let components = state.registry.list(&tenant).await?;
    Ok(Json(
        json!({ "components": components.iter().map(component_json).collect::<Vec<_>>() }),
    ))
}

#[utoipa::path(delete, path = "/v1/components/{component}", tag = "components",
    params(("component" = String, Path)),
    responses((status = 204, description = "Deleted with all its versions; refused (409) while workers use it")))]
pub(crate) async fn delete_component(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
) -> ApiResult<StatusCode> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let name = component_name(component)?;
    state.registry.delete(&tenant, &name).await?;
    // Its configuration, secrets and retry policy go with it: a component made again under
    // the name starts without them.
    state.executor.forget_component(&tenant, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/components/{component}/workers/{worker}", tag = "workers",
    params(("component" = String, Path), ("worker" = String, Path)),
    responses((status = 204, description = "Deleted with its oplog and queued invocations")))]
pub(crate) async fn delete_worker(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = worker_id(caller.tenant(Scope::Deploy)?, component, worker)?;
    state.executor.delete_worker(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A fork: the new worker's name, and where in the history to fork (the last entry that ends
/// an invocation, if not given).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fork {
    name: String,
    #[serde(default)]
    at: Option<u64>,
}

/// A worker forked from another.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Forked {
    name: String,
    component_version: u64,
    /// The last entry of the source's history the fork holds.
    forked_at: u64,
}

#[utoipa::path(post, path = "/v1/components/{component}/workers/{worker}/fork", tag = "workers",
    params(("component" = String, Path), ("worker" = String, Path)),
    request_body = Fork,
    responses((status = 201, description = "A new worker with the worker's history up to the point, then its own (its own idempotency keys from then on)", body = Forked)))]
pub(crate) async fn fork_worker(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<(StatusCode, Json<Forked>)> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let limits = limits(caller.plan()?);
    let source = worker_id(tenant.clone(), component.clone(), worker)?;
    let request: Fork = json_body(&headers, &body(read_body(incoming).await)?)?;
    let target = worker_id(tenant, component, request.name.clone())?;
    let (record, at) = state
        .executor
        .fork(&source, &target, request.at, &limits)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Forked {
            name: request.name,
            component_version: record.component_version,
            forked_at: at,
        }),
    ))
}

/// Where to revert a worker to: one of the two.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Revert {
    /// Its state after this oplog entry (one that ends an invocation, or its creation).
    #[serde(default)]
    to: Option<u64>,
    /// Its state before its last this many invocations.
    #[serde(default)]
    last_invocations: Option<u32>,
}

/// What a revert skipped: oplog entries `from` to `to`, kept in the oplog.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Reverted {
    skipped_from: u64,
    skipped_to: u64,
}

#[utoipa::path(post, path = "/v1/components/{component}/workers/{worker}/revert", tag = "workers",
    params(("component" = String, Path), ("worker" = String, Path)),
    request_body = Revert,
    responses((status = 200, description = "The worker is back where it was: the entries after the point stay in its oplog, skipped by replay, and the keys of their invocations may run again", body = Reverted)))]
pub(crate) async fn revert_worker(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Json<Reverted>> {
    let id = worker_id(caller.tenant(Scope::Deploy)?, component, worker)?;
    let request: Revert = json_body(&headers, &body(read_body(incoming).await)?)?;
    let to = match (request.to, request.last_invocations) {
        (Some(index), None) => invicta_executor::RevertTo::Index(index),
        (None, Some(count)) => invicta_executor::RevertTo::LastInvocations(count),
        _ => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "give one of `to` (an oplog index) and `last_invocations`",
            ));
        }
    };
    let (skipped_from, skipped_to) = state.executor.revert(&id, to).await?;
    Ok(Json(Reverted {
        skipped_from,
        skipped_to,
    }))
}

#[utoipa::path(post, path = "/v1/components/{component}/workers/{worker}/interrupt", tag = "workers",
    params(("component" = String, Path), ("worker" = String, Path)),
    responses((status = 200, description = "The running invocation, if any, fails with `interrupted`", body = crate::openapi::Interrupted)))]
pub(crate) async fn interrupt_worker(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = worker_id(caller.tenant(Scope::Invoke)?, component, worker)?;
    let interrupted = state.executor.interrupt(&id).await?;
    Ok(Json(json!({ "interrupted": interrupted })))
}

#[utoipa::path(post, path = "/v1/components/{component}/workers/{worker}/resume", tag = "workers",
    params(("component" = String, Path), ("worker" = String, Path)),
    responses((status = 200, description = "Loaded by replaying its oplog", body = invicta_executor::WorkerStatus)))]
pub(crate) async fn resume_worker(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = worker_id(caller.tenant(Scope::Invoke)?, component, worker)?;
    let status = state.executor.resume(&id).await?;
    Ok(Json(json!(status)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetVersion {
    version: u64,
    /// Only say what a move would do, and how (checked as a move checks, before it runs).
    #[serde(default)]
    dry_run: bool,
    /// `auto` (the default: by replay if the history replays there, else by a snapshot when
    /// both versions export `invicta:host/snapshot`), `replay` or `snapshot`.
    #[serde(default)]
    method: invicta_executor::UpdateMethod,
}

/// What a dry run found a move would do.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct VersionPlanned {
    /// Always `true`: nothing moved.
    dry_run: bool,
    from: u64,
    to: u64,
    /// `replay` (the history is replayed on the new version, which must reproduce every
    /// result), `snapshot` (the old version saves the state, the new one loads it) or `none`
    /// (it runs that version already).
    method: &'static str,
    /// The functions its history was invoked with, each exported alike there (by replay).
    checked_functions: Vec<String>,
    /// Why not by replay, for a move by snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    detail: String,
}

/// A move's answer: the worker's status, or for a dry run what the move would do.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum VersionReply {
    Moved(invicta_executor::WorkerStatus),
    Planned(VersionPlanned),
}

impl From<&invicta_executor::VersionPlan> for VersionPlanned {
    fn from(plan: &invicta_executor::VersionPlan) -> VersionPlanned {
        let from = plan.record.component_version;
        let (method, detail) = if from == plan.version {
            ("none", format!("the worker runs version {from} already"))
        } else if plan.method == invicta_executor::UpdateMethod::Snapshot {
            (
                "snapshot",
                format!(
                    "version {from} saves the worker's state and version {} loads it; the \
                     worker keeps version {from} if the load fails, and its recovery starts from \
                     that snapshot from then on",
                    plan.version
                ),
            )
        } else {
            (
                "replay",
                format!(
                    "every function its history was invoked with is exported alike by version {}; \
                     a move replays the history there and keeps the worker on version {from} if \
                     any result differs",
                    plan.version
                ),
            )
        };
        VersionPlanned {
            dry_run: true,
            from,
            to: plan.version,
            method,
            checked_functions: plan.functions.clone(),
            reason: plan.reason.clone(),
            detail,
        }
    }
}

#[utoipa::path(put, path = "/v1/components/{component}/workers/{worker}/version", tag = "workers",
    params(("component" = String, Path), ("worker" = String, Path)),
    request_body = SetVersion,
    responses((status = 200, description = "Moved (its status); refused (409 `incompatible_version`) unless its history replays there. With `dry_run`, what a move would do", body = VersionReply)))]
pub(crate) async fn set_worker_version(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Json<VersionReply>> {
    let id = worker_id(caller.tenant(Scope::Deploy)?, component, worker)?;
    let request: SetVersion = json_body(&headers, &body(read_body(incoming).await)?)?;
    if request.dry_run {
        let plan = state
            .executor
            .plan_version(&id, request.version, request.method)
            .await?;
        return Ok(Json(VersionReply::Planned(VersionPlanned::from(&plan))));
    }
    state
        .executor
        .set_version(&id, request.version, request.method)
        .await?;
    let status = state.executor.status(&id).await?;
    Ok(Json(VersionReply::Moved(status)))
}

/// The most workers one page of a bulk update moves (each move may replay a history).
pub const UPDATE_PAGE_MAX: usize = 100;

/// A bulk update: a page of a component's workers, in name order, moved to `version`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateWorkers {
    version: u64,
    /// Start after this worker name (the previous page's `next`).
    #[serde(default)]
    after: Option<String>,
    /// Workers in this page (default 20, at most 100).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// Only say what would happen to each (`would_update`, `unchanged`, `refused`).
    #[serde(default)]
    dry_run: bool,
    /// How each moves: `auto` (the default), `replay` or `snapshot`, as for one worker.
    #[serde(default)]
    method: invicta_executor::UpdateMethod,
}

/// One worker's outcome in a bulk update.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WorkerUpdate {
    worker: String,
    /// `updated`, `unchanged` (it ran that version already), `refused`, or for a dry run
    /// `would_update`.
    outcome: &'static str,
    /// How it moved (or would): `replay` or `snapshot`.
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'static str>,
    /// Why it was refused (its history does not replay there, …), as a problem's code and words.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// A page of a bulk update.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UpdatedWorkers {
    results: Vec<WorkerUpdate>,
    /// Where the next page starts; absent after the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[utoipa::path(post, path = "/v1/components/{component}/update", tag = "workers",
    params(("component" = String, Path)),
    request_body = UpdateWorkers,
    responses((status = 200, description = "A page of the component's workers, each moved to the version if its history replays there (a worker refused stays where it was); call again with `next` until it is absent", body = UpdatedWorkers)))]
pub(crate) async fn update_workers(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Json<UpdatedWorkers>> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let name = component_name(component.clone())?;
    let request: UpdateWorkers = json_body(&headers, &body(read_body(incoming).await)?)?;
    // The version must exist before any worker is asked to move there.
    state
        .registry
        .get(&tenant, &name, Some(request.version))
        .await?;
    let limit = request.limit.unwrap_or(20);
    if limit == 0 || limit > UPDATE_PAGE_MAX {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be 1 to {UPDATE_PAGE_MAX}"),
        ));
    }
    let filter = invicta_executor::WorkerFilter {
        prefix: None,
        status: None,
        after: request.after.clone(),
        limit,
    };
    let (workers, next) = state.executor.list_workers(&tenant, &name, &filter).await?;
    let mut results = Vec::with_capacity(workers.len());
    for worker in workers {
        let id = worker_id(tenant.clone(), component.clone(), worker.name.clone())?;
        let refused = |name: String, e: invicta_executor::Error| WorkerUpdate {
            worker: name,
            outcome: "refused",
            method: None,
            code: Some(e.code().to_string()),
            reason: Some(e.to_string()),
        };
        let result = if worker.component_version == request.version {
            WorkerUpdate {
                worker: worker.name,
                outcome: "unchanged",
                method: None,
                code: None,
                reason: None,
            }
        } else {
            match state
                .executor
                .plan_version(&id, request.version, request.method)
                .await
            {
                Err(e) => refused(worker.name, e),
                Ok(plan) if request.dry_run => WorkerUpdate {
                    worker: worker.name,
                    outcome: "would_update",
                    method: Some(plan.method.as_str()),
                    code: None,
                    reason: plan.reason,
                },
                Ok(plan) => match state
                    .executor
                    .set_version(&id, request.version, request.method)
                    .await
                {
                    Ok(moved) => WorkerUpdate {
                        worker: worker.name,
                        outcome: "updated",
                        // A replay that failed its trial falls back to a snapshot under `auto`.
                        method: Some(if moved.snapshot_base != plan.record.snapshot_base {
                            "snapshot"
                        } else {
                            "replay"
                        }),
                        code: None,
                        reason: None,
                    },
                    Err(e) => refused(worker.name, e),
                },
            }
        };
        results.push(result);
    }
    Ok(Json(UpdatedWorkers { results, next }))
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("idempotency-key") {
        Some(v) => Ok(Some(
            v.to_str()
                .map_err(|_| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_idempotency_key",
                        "the Idempotency-Key header must be visible ASCII",
                    )
                })?
                .to_string(),
        )),
        None => Ok(None),
    }
}

#[utoipa::path(post, path = "/v1/components/{component}/workers/{worker}/enqueue", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Accepted once; made by the server if absent")),
    request_body = Invoke,
    responses((status = 202, description = "Accepted durably; it runs in the background",
        headers(("Location" = String, description = "Its status")), body = crate::openapi::Enqueued)))]
pub(crate) async fn enqueue(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Response> {
    let tenant = caller.tenant(Scope::Invoke)?;
    let limits = limits(caller.plan()?);
    let id = worker_id(tenant, component, worker)?;
    let request: Invoke = json_body(&headers, &body(read_body(incoming).await)?)?;
    let key = idempotency_key(&headers)?;
    let mut limits = limits;
    if let Some(retry) = &request.retry {
        retry.check().map_err(|reason| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("retry: {reason}"),
            )
        })?;
        limits.retry = Some(retry.clone());
    } else if let Some(retry) = state
        .executor
        .component_retry(&id.tenant, &id.component)
        .await?
    {
        // The component's policy, over the plan's.
        limits.retry = Some(retry);
    }
    request.check_exists(&state, &id).await?;
    let params = request.params(&state, &id).await?;
    let (key, accepted) = state
        .executor
        .enqueue(
            &id,
            &request.function,
            &params,
            key,
            request.schedule_at,
            &limits,
        )
        .await
        .map_err(|e| invocation_problem(e, &limits))?;
    let location = format!(
        "/v1/components/{}/workers/{}/invocations/{}",
        id.component,
        id.worker,
        percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC)
    );
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({
            "idempotency_key": key,
            "accepted": accepted,
            "location": location,
        })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// The longest a status request waits for its invocation.
pub const WAIT_MS_MAX: u64 = 60_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct InvocationQuery {
    /// Wait up to this long for a pending invocation to finish (long polling).
    wait_ms: Option<u64>,
}

#[utoipa::path(get, path = "/v1/components/{component}/workers/{worker}/invocations/{key}", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path), ("key" = String, Path, description = "The idempotency key"), InvocationQuery),
    responses((status = 200, description = "Its status, and its result once completed", body = crate::openapi::InvocationStatus)))]
pub(crate) async fn get_invocation(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker, key)): Path<(String, String, String)>,
    q: Result<Query<InvocationQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let q = query(q)?;
    let id = worker_id(caller.tenant(Scope::Read)?, component, worker)?;
    let wait = std::time::Duration::from_millis(q.wait_ms.unwrap_or(0).min(WAIT_MS_MAX));
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = std::time::Duration::from_millis(5);
    let state_now = loop {
        let current = state.executor.invocation(&id, &key).await?;
        let pending = matches!(current, invicta_executor::InvocationState::Pending { .. });
        let now = tokio::time::Instant::now();
        if !pending || now >= deadline {
            break current;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    };
    Ok(Json(invocation_json(&key, state_now)))
}

fn invocation_json(key: &str, state: invicta_executor::InvocationState) -> serde_json::Value {
    use invicta_executor::InvocationState as S;
    match state {
        S::Pending {
            enqueued_at_ms,
            due_at_ms,
            attempts,
            last_error,
        } => json!({
            "idempotency_key": key,
            "status": "pending",
            "enqueued_at_ms": enqueued_at_ms,
            "due_at_ms": due_at_ms,
            "failed_attempts": attempts,
            "last_error": last_error,
        }),
        S::Completed(c) => json!({
            "idempotency_key": key,
            "status": "completed",
            "result": c.result,
            "fuel_consumed": c.fuel_consumed,
        }),
        S::Failed { kind, message } => json!({
            "idempotency_key": key,
            "status": "failed",
            "error": { "code": kind, "message": message },
        }),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Invoke {
    #[schema(min_length = 1)]
    function: String,
    /// The parameters as JSON values.
    #[serde(default)]
    params: Vec<serde_json::Value>,
    /// Or as WAVE text, one string per parameter.
    #[serde(default)]
    wave: Option<Vec<String>>,
    /// For `enqueue`: run it again after a failure its policy calls transient (default: the
    /// plan's; none if the plan has none).
    #[serde(default)]
    retry: Option<invicta_executor::RetryPolicy>,
    /// For `enqueue`: run it at this time (milliseconds since the epoch), not at once.
    #[serde(default)]
    schedule_at: Option<u64>,
    /// Whether a worker that does not exist is created for the call (the default), or the call
    /// is refused with `worker_not_found`.
    #[serde(default = "create_by_default")]
    #[schema(default = true)]
    create: bool,
}

fn create_by_default() -> bool {
    true
}

impl Invoke {
    /// Refuses the call when it may not create its worker and the worker does not exist.
    async fn check_exists(&self, state: &AppState, id: &WorkerId) -> ApiResult<()> {
        if !self.create && !state.executor.worker_exists(id).await? {
            return Err(invicta_executor::Error::WorkerNotFound(id.to_string()).into());
        }
        Ok(())
    }
}

impl Invoke {
    /// The parameters as JSON, converted from WAVE if they came as WAVE.
    async fn params(&self, state: &AppState, id: &WorkerId) -> ApiResult<Vec<serde_json::Value>> {
        match &self.wave {
            None => Ok(self.params.clone()),
            Some(_) if !self.params.is_empty() => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_params",
                "give the parameters as `params` (JSON) or as `wave` (text), not both",
            )),
            Some(texts) => Ok(state
                .executor
                .wave_params(id, &self.function, texts)
                .await?),
        }
    }
}

#[utoipa::path(post, path = "/v1/components/{component}/workers/{worker}/invoke", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key never runs twice on a worker")),
    request_body = Invoke,
    responses(
        (status = 200, description = "Completed and durable", body = crate::openapi::InvokeResult),
        (status = 422, description = "The invocation failed (trap, fuel, memory, deadline, interrupted)", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn invoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Json<serde_json::Value>> {
    let started = std::time::Instant::now();
    let tenant = caller.tenant(Scope::Invoke)?;
    let plan = caller.plan()?;
    let limits = limits(plan);
    let _slot = state.limiters.invocation_slot(tenant.as_str(), plan)?;
    let id = worker_id(tenant, component, worker)?;
    let request: Invoke = json_body(&headers, &body(read_body(incoming).await)?)?;
    let key = idempotency_key(&headers)?;
    request.check_exists(&state, &id).await?;
    if request.schedule_at.is_some() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`schedule_at` is for enqueue: invoke runs now and waits",
        ));
    }
    if request.retry.is_some() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`retry` is for enqueue: an invocation that waits answers its failure at once",
        ));
    }
    let params = request.params(&state, &id).await?;
    let span = tracing::info_span!(
        "invoke",
        tenant_id = %id.tenant,
        component = %id.component,
        worker = %id.worker,
        function = %request.function,
    );
    let completed = state
        .executor
        .invoke(&id, &request.function, &params, key, &limits)
        .instrument(span)
        .await
        .map_err(|e| invocation_problem(e, &limits))?;
    tracing::trace!(
        elapsed_us = started.elapsed().as_micros() as u64,
        "invocation answered"
    );
    Ok(Json(json!({
        "result": completed.result,
        "fuel_consumed": completed.fuel_consumed,
    })))
}

#[utoipa::path(get, path = "/v1/components/{component}/workers/{worker}", tag = "workers",
    params(("component" = String, Path), ("worker" = String, Path)),
    responses((status = 200, description = "The worker's status", body = invicta_executor::WorkerStatus)))]
pub(crate) async fn worker_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = worker_id(caller.tenant(Scope::Read)?, component, worker)?;
    let status = state.executor.status(&id).await?;
    Ok(Json(json!(status)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct OplogQuery {
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    count: Option<usize>,
}

#[utoipa::path(get, path = "/v1/components/{component}/workers/{worker}/oplog", tag = "workers",
    params(("component" = String, Path), ("worker" = String, Path), OplogQuery),
    responses((status = 200, description = "A page of the oplog", body = crate::openapi::OplogPage)))]
pub(crate) async fn oplog(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
    query: Result<Query<OplogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(query) =
        query.map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let id = worker_id(caller.tenant(Scope::Read)?, component, worker)?;
    let from = query.from.unwrap_or(1).max(1);
    let count = query.count.unwrap_or(100).min(OPLOG_PAGE_MAX);
    let entries = state.executor.oplog(&id, from, count).await?;
    let next = entries.last().map(|(i, _)| i + 1);
    Ok(Json(json!({
        "entries": entries.iter().map(|(i, e)| e.to_json(*i)).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// The executor's limits from a plan.
pub(crate) fn limits(plan: &invicta_billing::Plan) -> Limits {
    Limits {
        fuel_per_invocation: plan.fuel_per_invocation,
        fuel_per_month: plan.fuel_per_month,
        memory_per_worker_bytes: plan.memory_per_worker_bytes,
        workers_max: plan.workers_max,
        egress_hosts: plan.egress_hosts.clone(),
        concurrent_invocations: u64::from(plan.concurrent_invocations),
        retry: plan.retry.clone(),
        archive_retention_days: plan.archive_retention_days,
        files_per_worker_bytes: (plan.files_per_worker_bytes != invicta_billing::NO_LIMIT)
            .then_some(plan.files_per_worker_bytes),
    }
}

/// A failed invocation as a problem: running out of the plan's fuel or memory is a quota.
pub(crate) fn invocation_problem(e: ExecutorError, limits: &Limits) -> Problem {
    use invicta_model::oplog::FailureKind;
    let (quota, limit) = match &e {
        ExecutorError::InvocationFailed {
            kind: FailureKind::OutOfFuel,
            ..
        } => ("fuel_per_invocation", limits.fuel_per_invocation),
        ExecutorError::InvocationFailed {
            kind: FailureKind::OutOfMemory,
            ..
        } => ("memory_per_worker", limits.memory_per_worker_bytes),
        _ => return e.into(),
    };
    let mut problem = Problem::quota(quota, limit, limit, None);
    problem.status = StatusCode::UNPROCESSABLE_ENTITY;
    problem.detail = format!("{e}; the plan's `{quota}` is {limit}");
    problem
}

pub(crate) async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSchedule {
    /// Six fields, seconds first, in UTC: `*/10 * * * * *` is every ten seconds.
    #[schema(min_length = 11)]
    cron: String,
    #[schema(min_length = 1)]
    function: String,
    #[serde(default)]
    params: Vec<serde_json::Value>,
    #[serde(default)]
    wave: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/v1/components/{component}/workers/{worker}/schedules", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path)),
    request_body = NewSchedule,
    responses((status = 201, description = "Created; each tick's invocation is accepted like enqueue's, once", body = invicta_executor::Schedule)))]
pub(crate) async fn create_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Response> {
    let tenant = caller.tenant(Scope::Invoke)?;
    let mut limits = limits(caller.plan()?);
    let id = worker_id(tenant, component, worker)?;
    let request: NewSchedule = json_body(&headers, &body(read_body(incoming).await)?)?;
    // A tick's invocation runs under the component's retry policy, over the plan's.
    if let Some(retry) = state
        .executor
        .component_retry(&id.tenant, &id.component)
        .await?
    {
        limits.retry = Some(retry);
    }
    let params = Invoke {
        function: request.function.clone(),
        params: request.params,
        wave: request.wave,
        schedule_at: None,
        retry: None,
        create: true,
    }
    .params(&state, &id)
    .await?;
    let schedule = state
        .executor
        .create_schedule(&id, &request.cron, &request.function, &params, &limits)
        .await?;
    Ok((StatusCode::CREATED, Json(json!(schedule))).into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ScheduleList {
    schedules: Vec<invicta_executor::Schedule>,
}

#[utoipa::path(get, path = "/v1/components/{component}/workers/{worker}/schedules", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path)),
    responses((status = 200, description = "The worker's schedules", body = ScheduleList)))]
pub(crate) async fn list_schedules(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
) -> ApiResult<Json<ScheduleList>> {
    let id = worker_id(caller.tenant(Scope::Read)?, component, worker)?;
    let schedules = state.executor.schedules(&id).await?;
    Ok(Json(ScheduleList { schedules }))
}

#[utoipa::path(post, path = "/v1/components/{component}/workers/{worker}/schedules/{schedule}/pause", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path), ("schedule" = String, Path)),
    responses((status = 200, description = "Paused: no tick fires until it is resumed", body = invicta_executor::Schedule)))]
pub(crate) async fn pause_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker, schedule)): Path<(String, String, String)>,
) -> ApiResult<Json<invicta_executor::Schedule>> {
    set_paused(&state, &caller, component, worker, &schedule, true).await
}

async fn set_paused(
    state: &AppState,
    caller: &Caller,
    component: String,
    worker: String,
    schedule: &str,
    paused: bool,
) -> ApiResult<Json<invicta_executor::Schedule>> {
    let id = worker_id(caller.tenant(Scope::Invoke)?, component, worker)?;
    Ok(Json(
        state
            .executor
            .set_schedule_paused(&id, schedule, paused)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/components/{component}/workers/{worker}/schedules/{schedule}/resume", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path), ("schedule" = String, Path)),
    responses((status = 200, description = "Resumed from its next tick after now", body = invicta_executor::Schedule)))]
pub(crate) async fn resume_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker, schedule)): Path<(String, String, String)>,
) -> ApiResult<Json<invicta_executor::Schedule>> {
    set_paused(&state, &caller, component, worker, &schedule, false).await
}

#[utoipa::path(delete, path = "/v1/components/{component}/workers/{worker}/schedules/{schedule}", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path), ("schedule" = String, Path)),
    responses((status = 204, description = "Deleted")))]
pub(crate) async fn delete_schedule(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker, schedule)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let id = worker_id(caller.tenant(Scope::Invoke)?, component, worker)?;
    state.executor.delete_schedule(&id, &schedule).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompletePromise {
    /// What the worker's `await-promise` returns, as JSON (`null` if absent).
    #[serde(default)]
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

#[utoipa::path(post, path = "/v1/components/{component}/workers/{worker}/promises/{promise}/complete", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path), ("promise" = String, Path)),
    request_body = CompletePromise,
    responses((status = 200, description = "Completed (again with the same data: unchanged); a worker awaiting it goes on", body = invicta_executor::PromiseRecord)))]
pub(crate) async fn complete_promise(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker, promise)): Path<(String, String, String)>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Json<invicta_executor::PromiseRecord>> {
    let id = worker_id(caller.tenant(Scope::Invoke)?, component, worker)?;
    let request: CompletePromise = json_body(&headers, &body(read_body(incoming).await)?)?;
    Ok(Json(
        state
            .executor
            .complete_promise(&id, &promise, request.data)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/webhooks/{token}", tag = "invocations",
    params(("token" = String, Path, description = "The promise's webhook token (`webhook` in the promise)")),
    request_body(content = String, description = "What the promise is completed with: JSON, or any UTF-8 text (completed with it as a JSON string)", content_type = "application/json"),
    security(()),
    responses(
        (status = 200, description = "The promise, completed (again with the same body: unchanged; other data: 409 `promise_completed`; an unknown token: 404 `webhook_not_found`)", body = invicta_executor::PromiseRecord)))]
pub(crate) async fn webhook(
    State(state): State<AppState>,
    Path(token): Path<String>,
    incoming: axum::extract::Request,
) -> ApiResult<Json<invicta_executor::PromiseRecord>> {
    let address = incoming
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    state.limiters.webhook(address)?;
    let bytes = body(read_body(incoming).await)?;
    let data = match serde_json::from_slice(&bytes) {
        Ok(data) => data,
        Err(_) => match String::from_utf8(bytes.to_vec()) {
            Ok(text) => serde_json::Value::String(text),
            Err(_) => {
                return Err(Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "invalid_body",
                    "a webhook's body is JSON or UTF-8 text",
                ));
            }
        },
    };
    let (id, promise, record) = state.executor.complete_webhook(&token, data).await?;
    tracing::info!(worker = %id, %promise, "promise completed by its webhook");
    Ok(Json(record))
}

#[utoipa::path(get, path = "/v1/components/{component}/workers/{worker}/promises/{promise}", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path), ("promise" = String, Path)),
    responses((status = 200, description = "The promise: when it was made, and its data once completed", body = invicta_executor::PromiseRecord)))]
pub(crate) async fn get_promise(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker, promise)): Path<(String, String, String)>,
) -> ApiResult<Json<invicta_executor::PromiseRecord>> {
    let id = worker_id(caller.tenant(Scope::Read)?, component, worker)?;
    Ok(Json(state.executor.promise(&id, &promise).await?))
}
