//! Tenancy endpoints: the operator's `/v1/admin/...` (tenants, plans, a tenant's first key) and a
//! tenant's own `/v1/keys` and `/v1/usage`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use invicta_billing::{Plan, Scope};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::api::{ApiResult, body, json_body};
use crate::auth::Caller;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTenant {
    name: String,
    #[serde(default)]
    plan: Option<String>,
}

pub(crate) async fn create_tenant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    caller.operator()?;
    let request: NewTenant = json_body(&headers, &body(bytes)?)?;
    let tenant = state
        .billing
        .create_tenant(&request.name, request.plan.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(json!(tenant))).into_response())
}

pub(crate) async fn list_tenants(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    Ok(Json(json!({ "tenants": state.billing.tenants().await? })))
}

pub(crate) async fn get_tenant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    Ok(Json(json!(state.billing.tenant(&tenant).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MoveTenant {
    plan: String,
}

pub(crate) async fn set_tenant_plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    let request: MoveTenant = json_body(&headers, &body(bytes)?)?;
    Ok(Json(json!(
        state.billing.set_plan(&tenant, &request.plan).await?
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    scopes: Vec<String>,
    #[serde(default)]
    description: String,
}

async fn make_key(state: &AppState, tenant: &str, request: NewKey) -> ApiResult<Response> {
    let scopes = request
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if scopes.is_empty() {
        return Err(crate::api::Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a key needs at least one scope: admin, deploy, invoke, read",
        ));
    }
    let (info, secret) = state
        .billing
        .create_key(tenant, scopes, request.description)
        .await?;
    let mut body = json!(info);
    body["key"] = json!(secret);
    body["tenant"] = json!(tenant);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The operator gives a tenant a key (its first, typically).
pub(crate) async fn create_tenant_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    caller.operator()?;
    let request: NewKey = json_body(&headers, &body(bytes)?)?;
    make_key(&state, &tenant, request).await
}

pub(crate) async fn list_plans(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    Ok(Json(json!({ "plans": state.billing.plans().await? })))
}

pub(crate) async fn put_plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    let plan: Plan = json_body(&headers, &body(bytes)?)?;
    if plan.name != name {
        return Err(crate::api::Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "the plan's name `{}` differs from the path's `{name}`",
                plan.name
            ),
        ));
    }
    Ok(Json(json!(state.billing.put_plan(plan).await?)))
}

pub(crate) async fn create_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let tenant = caller.tenant(Scope::Admin)?;
    let request: NewKey = json_body(&headers, &body(bytes)?)?;
    make_key(&state, tenant.as_str(), request).await
}

pub(crate) async fn list_keys(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = caller.tenant(Scope::Admin)?;
    Ok(Json(
        json!({ "keys": state.billing.keys(tenant.as_str()).await? }),
    ))
}

pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = caller.tenant(Scope::Admin)?;
    Ok(Json(json!(
        state.billing.revoke_key(tenant.as_str(), &id).await?
    )))
}

/// This month's usage and the plan's limits.
pub(crate) async fn usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = caller.tenant(Scope::Read)?;
    let plan = caller.plan()?.clone();
    let month = invicta_billing::this_month();
    let billing = &state.billing;
    let t = tenant.as_str();
    Ok(Json(json!({
        "tenant": t,
        "month": month,
        "plan": plan,
        "fuel": billing.usage(t, invicta_executor::USAGE_FUEL, &month).await?,
        "invocations": billing.usage(t, invicta_executor::USAGE_INVOCATIONS, &month).await?,
        "workers": billing.count(t, invicta_executor::USAGE_WORKERS).await?,
        "components": billing.count(t, "components").await?,
        "component_bytes": billing.count(t, "component_bytes").await?,
    })))
}
