//! `/v1/components/{c}/config` and `/v1/components/{c}/workers/{w}/config`: the configuration
//! and secrets a component's workers read through `wasi:config/store` (deploy scope to change,
//! read scope to list; a secret's value is never shown again).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, response::IntoResponse};
use invicta_billing::Scope;
use invicta_executor::ConfigEntry;
use invicta_model::{ComponentName, WorkerName};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::api::{ApiResult, Problem, body, json_body, read_body};
use crate::auth::Caller;

/// A value to set.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetConfig {
    /// The value (at most 16 KiB).
    value: String,
    /// Sealed at rest, never shown again, never in an oplog in clear.
    #[serde(default)]
    secret: bool,
}

fn names(
    component: String,
    worker: Option<String>,
) -> ApiResult<(ComponentName, Option<WorkerName>)> {
    let invalid = |e: invicta_model::ids::InvalidName| {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string())
    };
    Ok((
        ComponentName::new(component).map_err(invalid)?,
        worker.map(WorkerName::new).transpose().map_err(invalid)?,
    ))
}

async fn set(
    state: AppState,
    caller: Caller,
    component: String,
    worker: Option<String>,
    key: String,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Json<ConfigEntry>> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let (component, worker) = names(component, worker)?;
    let request: SetConfig = json_body(&headers, &body(read_body(incoming).await)?)?;
    let entry = state
        .executor
        .set_config(
            &tenant,
            &component,
            worker.as_ref(),
            &key,
            &request.value,
            request.secret,
        )
        .await?;
    Ok(Json(entry))
}

async fn unset(
    state: AppState,
    caller: Caller,
    component: String,
    worker: Option<String>,
    key: String,
) -> ApiResult<StatusCode> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let (component, worker) = names(component, worker)?;
    if state
        .executor
        .unset_config(&tenant, &component, worker.as_ref(), &key)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            "config_not_found",
            format!("`{key}` is not set here"),
        ))
    }
}

async fn list(
    state: AppState,
    caller: Caller,
    component: String,
    worker: Option<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = caller.tenant(Scope::Read)?;
    let (component, worker) = names(component, worker)?;
    let entries = state
        .executor
        .list_config(&tenant, &component, worker.as_ref())
        .await?;
    Ok(Json(json!({ "entries": entries })))
}

#[utoipa::path(put, path = "/v1/components/{component}/config/{key}", tag = "config",
    params(("component" = String, Path), ("key" = String, Path, description = "1 to 256 letters, digits, `_`, `-`, `.` or `/`", pattern = "^[A-Za-z0-9_./-]{1,256}$")),
    request_body = SetConfig,
    responses((status = 200, description = "Set: every worker of the component reads it (unless the worker has its own)", body = ConfigEntry)))]
pub(crate) async fn set_component_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, key)): Path<(String, String)>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<impl IntoResponse> {
    set(state, caller, component, None, key, headers, incoming).await
}

#[utoipa::path(put, path = "/v1/components/{component}/workers/{worker}/config/{key}", tag = "config",
    params(("component" = String, Path), ("worker" = String, Path), ("key" = String, Path, description = "1 to 256 letters, digits, `_`, `-`, `.` or `/`", pattern = "^[A-Za-z0-9_./-]{1,256}$")),
    request_body = SetConfig,
    responses((status = 200, description = "Set for this worker alone, over the component's", body = ConfigEntry)))]
pub(crate) async fn set_worker_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<impl IntoResponse> {
    set(
        state,
        caller,
        component,
        Some(worker),
        key,
        headers,
        incoming,
    )
    .await
}

#[utoipa::path(delete, path = "/v1/components/{component}/config/{key}", tag = "config",
    params(("component" = String, Path), ("key" = String, Path, description = "1 to 256 letters, digits, `_`, `-`, `.` or `/`", pattern = "^[A-Za-z0-9_./-]{1,256}$")),
    responses((status = 204, description = "Removed (404 `config_not_found` if it was not set)")))]
pub(crate) async fn unset_component_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    unset(state, caller, component, None, key).await
}

#[utoipa::path(delete, path = "/v1/components/{component}/workers/{worker}/config/{key}", tag = "config",
    params(("component" = String, Path), ("worker" = String, Path), ("key" = String, Path, description = "1 to 256 letters, digits, `_`, `-`, `.` or `/`", pattern = "^[A-Za-z0-9_./-]{1,256}$")),
    responses((status = 204, description = "Removed (404 `config_not_found` if it was not set)")))]
pub(crate) async fn unset_worker_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker, key)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    unset(state, caller, component, Some(worker), key).await
}

#[utoipa::path(get, path = "/v1/components/{component}/config", tag = "config",
    params(("component" = String, Path)),
    responses((status = 200, description = "The component's entries, secrets without values", body = crate::openapi::ConfigList)))]
pub(crate) async fn list_component_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    list(state, caller, component, None).await
}

#[utoipa::path(get, path = "/v1/components/{component}/workers/{worker}/config", tag = "config",
    params(("component" = String, Path), ("worker" = String, Path)),
    responses((status = 200, description = "The worker's own entries, secrets without values", body = crate::openapi::ConfigList)))]
pub(crate) async fn list_worker_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    list(state, caller, component, Some(worker)).await
}

#[utoipa::path(put, path = "/v1/components/{component}/retry", tag = "config",
    params(("component" = String, Path)),
    request_body = invicta_executor::RetryPolicy,
    responses((status = 200, description = "The policy of the component's background invocations that name none, over the plan's", body = invicta_executor::RetryPolicy)))]
pub(crate) async fn set_component_retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Json<invicta_executor::RetryPolicy>> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let (component, _) = names(component, None)?;
    let policy: invicta_executor::RetryPolicy =
        json_body(&headers, &body(read_body(incoming).await)?)?;
    state
        .executor
        .set_component_retry(&tenant, &component, Some(policy.clone()))
        .await?;
    Ok(Json(policy))
}

#[utoipa::path(get, path = "/v1/components/{component}/retry", tag = "config",
    params(("component" = String, Path)),
    responses((status = 200, description = "The component's retry policy (404 `retry_not_found` without one)", body = invicta_executor::RetryPolicy)))]
pub(crate) async fn get_component_retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
) -> ApiResult<Json<invicta_executor::RetryPolicy>> {
    let tenant = caller.tenant(Scope::Read)?;
    let (component, _) = names(component, None)?;
    state
        .executor
        .component_retry(&tenant, &component)
        .await?
        .map(Json)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "retry_not_found",
                "the component has no retry policy of its own",
            )
        })
}

#[utoipa::path(delete, path = "/v1/components/{component}/retry", tag = "config",
    params(("component" = String, Path)),
    responses((status = 204, description = "Removed: the plan's policy applies again")))]
pub(crate) async fn delete_component_retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
) -> ApiResult<StatusCode> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let (component, _) = names(component, None)?;
    state
        .executor
        .set_component_retry(&tenant, &component, None)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/components/{component}/snapshots", tag = "config",
    params(("component" = String, Path)),
    request_body = invicta_executor::SnapshotPolicy,
    responses((status = 200, description = "When the component's workers are snapshotted (if it exports invicta:host/snapshot), over the executor's default; used from each worker's next activation or snapshot", body = invicta_executor::SnapshotPolicy)))]
pub(crate) async fn set_component_snapshots(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Json<invicta_executor::SnapshotPolicy>> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let (component, _) = names(component, None)?;
    let policy: invicta_executor::SnapshotPolicy =
        json_body(&headers, &body(read_body(incoming).await)?)?;
    state
        .executor
        .set_component_snapshots(&tenant, &component, Some(policy))
        .await?;
    Ok(Json(policy))
}

#[utoipa::path(get, path = "/v1/components/{component}/snapshots", tag = "config",
    params(("component" = String, Path)),
    responses((status = 200, description = "The component's snapshot policy (404 `snapshots_not_found` without one of its own)", body = invicta_executor::SnapshotPolicy)))]
pub(crate) async fn get_component_snapshots(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
) -> ApiResult<Json<invicta_executor::SnapshotPolicy>> {
    let tenant = caller.tenant(Scope::Read)?;
    let (component, _) = names(component, None)?;
    state
        .executor
        .component_snapshots(&tenant, &component)
        .await?
        .map(Json)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "snapshots_not_found",
                "the component has no snapshot policy of its own",
            )
        })
}

#[utoipa::path(delete, path = "/v1/components/{component}/snapshots", tag = "config",
    params(("component" = String, Path)),
    responses((status = 204, description = "Removed: the executor's default applies again")))]
pub(crate) async fn delete_component_snapshots(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(component): Path<String>,
) -> ApiResult<StatusCode> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let (component, _) = names(component, None)?;
    state
        .executor
        .set_component_snapshots(&tenant, &component, None)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
