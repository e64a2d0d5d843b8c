//! Tenancy endpoints: the operator's `/v1/admin/...` (tenants, plans, a tenant's first key) and a
//! tenant's own `/v1/keys` and `/v1/usage`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use invicta_billing::{Granularity, Plan, Scope, UsageRow};
use invicta_model::usage;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::api::{ApiResult, body, json_body, read_body};
use crate::auth::Caller;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTenant {
    name: String,
    #[serde(default)]
    plan: Option<String>,
}

#[utoipa::path(post, path = "/v1/admin/tenants", tag = "admin", request_body = NewTenant,
    responses((status = 201, description = "Created", body = invicta_billing::Tenant)))]
pub(crate) async fn create_tenant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Response> {
    caller.operator()?;
    let request: NewTenant = json_body(&headers, &body(read_body(incoming).await)?)?;
    let tenant = state
        .billing
        .create_tenant(&request.name, request.plan.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(json!(tenant))).into_response())
}

#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin",
    responses((status = 200, description = "Every tenant", body = crate::openapi::TenantList)))]
pub(crate) async fn list_tenants(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    Ok(Json(json!({ "tenants": state.billing.tenants().await? })))
}

#[utoipa::path(get, path = "/v1/admin/tenants/{tenant}", tag = "admin", params(("tenant" = String, Path)),
    responses((status = 200, description = "The tenant", body = invicta_billing::Tenant)))]
pub(crate) async fn get_tenant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    Ok(Json(json!(state.billing.tenant(&tenant).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MoveTenant {
    plan: String,
}

#[utoipa::path(put, path = "/v1/admin/tenants/{tenant}/plan", tag = "admin", params(("tenant" = String, Path)),
    request_body = MoveTenant,
    responses((status = 200, description = "Moved", body = invicta_billing::Tenant)))]
pub(crate) async fn set_tenant_plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    let request: MoveTenant = json_body(&headers, &body(read_body(incoming).await)?)?;
    Ok(Json(json!(
        state.billing.set_plan(&tenant, &request.plan).await?
    )))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    /// What the key may do: at least one of `admin`, `deploy`, `invoke`, `read`.
    #[schema(value_type = Vec<invicta_billing::Scope>, min_items = 1)]
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
#[utoipa::path(post, path = "/v1/admin/tenants/{tenant}/keys", tag = "admin", params(("tenant" = String, Path)),
    request_body = NewKey,
    responses((status = 201, description = "The key, shown once", body = crate::openapi::KeyCreated)))]
pub(crate) async fn create_tenant_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Response> {
    caller.operator()?;
    let request: NewKey = json_body(&headers, &body(read_body(incoming).await)?)?;
    make_key(&state, &tenant, request).await
}

#[utoipa::path(get, path = "/v1/admin/plans", tag = "admin",
    responses((status = 200, description = "Every plan", body = crate::openapi::PlanList)))]
pub(crate) async fn list_plans(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    Ok(Json(json!({ "plans": state.billing.plans().await? })))
}

#[utoipa::path(put, path = "/v1/admin/plans/{plan}", tag = "admin", params(("plan" = String, Path)),
    request_body = invicta_billing::Plan,
    responses((status = 200, description = "Created or replaced", body = invicta_billing::Plan)))]
pub(crate) async fn put_plan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    let plan: Plan = json_body(&headers, &body(read_body(incoming).await)?)?;
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

#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = NewKey,
    responses((status = 201, description = "The key, shown once", body = crate::openapi::KeyCreated)))]
pub(crate) async fn create_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<Response> {
    let tenant = caller.tenant(Scope::Admin)?;
    let request: NewKey = json_body(&headers, &body(read_body(incoming).await)?)?;
    make_key(&state, tenant.as_str(), request).await
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, description = "The tenant's keys (never their secrets)", body = crate::openapi::KeyList)))]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = caller.tenant(Scope::Admin)?;
    Ok(Json(
        json!({ "keys": state.billing.keys(tenant.as_str()).await? }),
    ))
}

#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, description = "Revoked", body = invicta_billing::KeyInfo)))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageQuery {
    /// First hour: `YYYY-MM-DD`, `YYYY-MM-DDTHH` (UTC) or seconds since the epoch.
    #[serde(default)]
    #[param(
        pattern = "^((19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])(T([01][0-9]|2[0-3]))?|[0-9]{1,12})$"
    )]
    from: Option<String>,
    /// End (excluded), in the same forms.
    #[serde(default)]
    #[param(
        pattern = "^((19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])(T([01][0-9]|2[0-3]))?|[0-9]{1,12})$"
    )]
    to: Option<String>,
    #[serde(default)]
    granularity: Option<Granularity>,
    /// The tenant, for the operator's report.
    #[serde(default)]
    tenant: Option<String>,
}

fn usage_query(query: Result<Query<UsageQuery>, QueryRejection>) -> ApiResult<UsageQuery> {
    query.map(|Query(q)| q).map_err(|e| {
        crate::api::Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
    })
}

/// The report's hours: by default this month so far.
fn report_range(query: &UsageQuery) -> ApiResult<(u64, u64)> {
    let bound = |text: &Option<String>, default: u64| {
        match text {
        None => Ok(default),
        Some(t) => invicta_billing::parse_hour(t).ok_or_else(|| {
            crate::api::Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("`{t}` is not a date (YYYY-MM-DD), an hour (YYYY-MM-DDTHH) or seconds since the epoch"),
            )
        }),
    }
    };
    let now_hour = usage::hour_of(now_ms());
    let month = invicta_billing::this_month();
    let month_start = invicta_billing::parse_hour(&format!("{month}-01")).unwrap_or(now_hour);
    let from = bound(&query.from, month_start)?;
    let to = bound(&query.to, now_hour + 1)?;
    if to < from {
        return Err(crate::api::Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "`to` is before `from`",
        ));
    }
    Ok((from, to))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"))
}

/// A report's rows as CSV.
fn csv(rows: &[UsageRow]) -> Response {
    let mut out = String::from(
        "period,component,invocations,fuel,wall_us,memory_kib_ms,oplog_bytes,storage_byte_hours,http_requests,http_request_bytes,http_response_bytes\n",
    );
    for r in rows {
        // Periods and component names never contain commas or quotes (names are validated).
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            r.period,
            r.component,
            r.invocations,
            r.fuel,
            r.wall_us,
            r.memory_kib_ms,
            r.oplog_bytes,
            r.storage_byte_hours,
            r.http_requests,
            r.http_request_bytes,
            r.http_response_bytes
        ));
    }
    (
        [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        out,
    )
        .into_response()
}

async fn report(
    state: &AppState,
    tenant: &str,
    query: &UsageQuery,
    headers: &HeaderMap,
    extra: serde_json::Value,
) -> ApiResult<Response> {
    let (from, to) = report_range(query)?;
    let granularity = query.granularity.unwrap_or(Granularity::Day);
    let rows = state.billing.report(tenant, from, to, granularity).await?;
    if wants_csv(headers) {
        return Ok(csv(&rows));
    }
    let total = |f: fn(&UsageRow) -> u64| rows.iter().map(f).fold(0_u64, u64::saturating_add);
    let mut body = json!({
        "tenant": tenant,
        "from_hour": from,
        "to_hour": to,
        "granularity": granularity,
        "totals": {
            "invocations": total(|r| r.invocations),
            "fuel": total(|r| r.fuel),
            "wall_us": total(|r| r.wall_us),
            "memory_kib_ms": total(|r| r.memory_kib_ms),
            "oplog_bytes": total(|r| r.oplog_bytes),
            "storage_byte_hours": total(|r| r.storage_byte_hours),
            "http_requests": total(|r| r.http_requests),
            "http_request_bytes": total(|r| r.http_request_bytes),
            "http_response_bytes": total(|r| r.http_response_bytes),
        },
        "rows": rows,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    Ok(Json(body).into_response())
}

/// The tenant's usage: the ledger over a range (this month by default) as JSON or CSV
/// (`Accept: text/csv`), with this month's totals, its counts and its plan.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, description = "The ledger over a range (this month by default), with this month's totals and counts",
        content((crate::openapi::UsageReport = "application/json"), (String = "text/csv")))))]
pub(crate) async fn usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<UsageQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let tenant = caller.tenant(Scope::Read)?;
    let query = usage_query(query)?;
    // A tenant may name itself; any other tenant's usage is not found, as its resources are.
    if let Some(named) = &query.tenant
        && named != tenant.as_str()
    {
        return Err(crate::api::Problem::new(
            StatusCode::NOT_FOUND,
            "tenant_not_found",
            format!("tenant {named} not found"),
        ));
    }
    let plan = caller.plan()?.clone();
    let month = invicta_billing::this_month();
    let billing = &state.billing;
    let t = tenant.as_str();
    let summary = json!({
        "month": month,
        "plan": plan,
        "fuel": billing.usage(t, usage::FUEL, &month).await?,
        "invocations": billing.usage(t, usage::INVOCATIONS, &month).await?,
        "workers": billing.count(t, usage::WORKERS).await?,
        "components": billing.count(t, usage::COMPONENTS).await?,
        "component_bytes": billing.count(t, usage::COMPONENT_BYTES).await?,
        "stored_bytes": billing.stored(t).await?,
    });
    report(&state, t, &query, &headers, summary).await
}

/// Any tenant's ledger, for the operator.
#[utoipa::path(get, path = "/v1/admin/usage", tag = "admin", params(UsageQuery),
    responses((status = 200, description = "A tenant's ledger over a range",
        content((crate::openapi::UsageReport = "application/json"), (String = "text/csv")))))]
pub(crate) async fn admin_usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<UsageQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.operator()?;
    let query = usage_query(query)?;
    let Some(tenant) = query.tenant.clone() else {
        return Err(crate::api::Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "name the tenant: ?tenant=<id>",
        ));
    };
    state.billing.tenant(&tenant).await?;
    report(&state, &tenant, &query, &headers, json!({})).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct InvoiceQuery {
    #[param(min_length = 1, max_length = 128)]
    tenant: String,
    /// `YYYY-MM`; this month by default.
    #[serde(default)]
    #[param(pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])$")]
    month: Option<String>,
}

/// A month's invoice for a tenant, for the operator.
#[utoipa::path(get, path = "/v1/admin/invoices", tag = "admin", params(InvoiceQuery),
    responses((status = 200, description = "A month's usage priced by the tenant's plan", body = invicta_billing::Invoice)))]
pub(crate) async fn invoice(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<InvoiceQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    let Query(query) = query.map_err(|e| {
        crate::api::Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
    })?;
    let month = query.month.unwrap_or_else(invicta_billing::this_month);
    if invicta_billing::month_hours(&month).is_none() {
        return Err(crate::api::Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("`{month}` is not a month (YYYY-MM)"),
        ));
    }
    Ok(Json(json!(
        state.billing.invoice(&query.tenant, &month).await?
    )))
}

/// The operator's view of placement: executors, each shard's lease and epoch, workers per
/// executor (stored workers of the shards it holds) and the failovers of the last week.
#[utoipa::path(get, path = "/v1/admin/cluster", tag = "admin",
    responses((status = 200, description = "Executors, shards and recent failovers", body = crate::openapi::Cluster)))]
pub(crate) async fn cluster(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.operator()?;
    let view = invicta_worker_scheduler::cluster(&state.store)
        .await
        .map_err(crate::api::Problem::internal)?;
    Ok(Json(json!(view)))
}
