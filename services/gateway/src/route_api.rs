//! `/v1/routes`: a tenant's public routes, created, read and deleted over the API (deploy scope
//! to change, read scope to look), with what each served this month.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, response::IntoResponse};
use invicta_billing::Scope;
use invicta_model::{RouteName, TenantId, usage};
use serde_json::json;

use crate::AppState;
use crate::api::{ApiResult, Problem, body, json_body, read_body};
use crate::auth::Caller;
use crate::routes::{self, Refused, Route, RouteSpec};

impl From<Refused> for Problem {
    fn from(e: Refused) -> Problem {
        let (status, code) = match &e {
            Refused::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_route"),
            Refused::HostTaken(_) => (StatusCode::CONFLICT, "host_taken"),
            Refused::Exists(_) => (StatusCode::CONFLICT, "route_exists"),
            Refused::NotFound(_) => (StatusCode::NOT_FOUND, "route_not_found"),
            Refused::TooMany => {
                let limit = routes::ROUTES_PER_TENANT_MAX as u64;
                return Problem::quota("routes", limit, limit, None);
            }
            Refused::Store(_) => return Problem::internal(e),
        };
        Problem::new(status, code, e.to_string())
    }
}

fn route_name(name: String) -> ApiResult<RouteName> {
    RouteName::new(name)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))
}

#[utoipa::path(post, path = "/v1/routes/{route}", tag = "routes",
    params(("route" = String, Path, description = "The route's name")),
    request_body = RouteSpec,
    responses(
        (status = 201, description = "The route, served on the public listener", body = Route),
        (status = 409, description = "The name is taken (`route_exists`), or the host is another tenant's (`host_taken`)", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn create_route(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    incoming: axum::extract::Request,
) -> ApiResult<impl IntoResponse> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let name = route_name(name)?;
    let spec: RouteSpec = json_body(&headers, &body(read_body(incoming).await)?)?;
    let route = routes::create(&state.store, &tenant, &name, spec).await?;
    state.routes.invalidate();
    tracing::info!(tenant = %tenant, route = %route.name, url = %route.url_path, "route created");
    Ok((StatusCode::CREATED, Json(route)))
}

#[utoipa::path(get, path = "/v1/routes", tag = "routes",
    responses((status = 200, description = "The tenant's routes", body = crate::openapi::RouteList)))]
pub(crate) async fn list_routes(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = caller.tenant(Scope::Read)?;
    let routes = routes::list(&state.store, &tenant).await?;
    Ok(Json(json!({ "routes": routes })))
}

#[utoipa::path(get, path = "/v1/routes/{route}", tag = "routes",
    params(("route" = String, Path)),
    responses((status = 200, description = "The route, with what it served this month", body = crate::openapi::RouteWithUsage)))]
pub(crate) async fn get_route(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = caller.tenant(Scope::Read)?;
    let name = route_name(name)?;
    let route = routes::get(&state.store, &tenant, &name).await?;
    let served = served_this_month(&state, &tenant, &name).await?;
    let mut body = json!(route);
    if let Some(object) = body.as_object_mut() {
        object.insert("usage".into(), served);
    }
    Ok(Json(body))
}

#[utoipa::path(delete, path = "/v1/routes/{route}", tag = "routes",
    params(("route" = String, Path)),
    responses((status = 204, description = "Deleted: the public listener stops serving it")))]
pub(crate) async fn delete_route(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let tenant = caller.tenant(Scope::Deploy)?;
    let name = route_name(name)?;
    routes::delete(&state.store, &tenant, &name).await?;
    state.routes.invalidate();
    Ok(StatusCode::NO_CONTENT)
}

/// The route's requests and bytes this month, from the route ledger.
async fn served_this_month(
    state: &AppState,
    tenant: &TenantId,
    name: &RouteName,
) -> ApiResult<serde_json::Value> {
    let month = invicta_billing::this_month();
    let from = month_start_hour(&month);
    let (t, route) = (tenant.as_str().to_string(), name.as_str().to_string());
    let pairs = state
        .store
        .read(move |tx| {
            let begin = usage::route_ledger_from(&t, from);
            let end = usage::route_ledger_from(&t, u64::MAX);
            tx.get_range(&begin, &end, invicta_store::RangeOptions::default())
        })
        .await
        .map_err(Problem::internal)?;
    let (mut requests, mut request_bytes, mut response_bytes) = (0_u64, 0_u64, 0_u64);
    for kv in pairs {
        let Some((_, r, kind)) = usage::parse_route_ledger_key(&kv.key) else {
            continue;
        };
        if r != route {
            continue;
        }
        let n = u64::try_from(invicta_store::decode_counter(&kv.value)).unwrap_or(0);
        match kind.as_str() {
            usage::ROUTE_REQUESTS => requests = requests.saturating_add(n),
            usage::ROUTE_REQUEST_BYTES => request_bytes = request_bytes.saturating_add(n),
            usage::ROUTE_RESPONSE_BYTES => response_bytes = response_bytes.saturating_add(n),
            _ => {}
        }
    }
    Ok(json!({
        "month": month,
        "requests": requests,
        "request_bytes": request_bytes,
        "response_bytes": response_bytes,
    }))
}

/// The first hour (since the epoch) of `YYYY-MM`.
fn month_start_hour(month: &str) -> u64 {
    let mut parts = month.split('-');
    let year = parts.next().and_then(|y| y.parse::<i64>().ok());
    let month = parts.next().and_then(|m| m.parse::<u32>().ok());
    match (year, month) {
        (Some(y), Some(m)) => usage::days_from_civil(y, m, 1)
            .and_then(|days| u64::try_from(days).ok())
            .map_or(0, |days| days * 24),
        _ => 0,
    }
}
