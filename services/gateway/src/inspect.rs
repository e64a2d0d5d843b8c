//! What a worker has waiting: its invocations accepted and not completed yet, and its promises;
//! a page at a time, as the console and the CLI show them.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use invicta_billing::Scope;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::api::{ApiResult, Problem, query, worker_id};
use crate::auth::Caller;

/// The most entries one page returns.
pub const PAGE_MAX: usize = 1_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Continue after this idempotency key or promise id (the previous page's `next`).
    cursor: Option<String>,
    /// At most this many (1 to 1000, 100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

fn page(q: &PageQuery) -> ApiResult<usize> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be 1 to {PAGE_MAX}"),
        ));
    }
    Ok(limit)
}

/// An invocation accepted (by `enqueue`, a schedule or a retry) and not completed yet.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PendingInvocation {
    idempotency_key: String,
    function: String,
    #[schema(value_type = Vec<Object>)]
    params: Vec<serde_json::Value>,
    enqueued_at_ms: u64,
    /// Not before this (ms since the epoch): scheduled for later, or waiting to be retried.
    due_at_ms: Option<u64>,
    /// The runs that failed so far.
    attempts: u32,
    last_error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PendingList {
    invocations: Vec<PendingInvocation>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next: Option<String>,
}

#[utoipa::path(get, path = "/v1/components/{component}/workers/{worker}/invocations", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path), PageQuery),
    responses((status = 200, description = "Invocations accepted and not completed yet, in idempotency-key order", body = PendingList)))]
pub(crate) async fn pending_invocations(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Json<PendingList>> {
    let q = query(q)?;
    let limit = page(&q)?;
    let id = worker_id(caller.tenant(Scope::Read)?, component, worker)?;
    let rows = state
        .executor
        .pending_invocations(&id, q.cursor.as_deref(), limit)
        .await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|(key, _)| key.clone()))
        .flatten();
    Ok(Json(PendingList {
        invocations: rows
            .into_iter()
            .map(|(key, record)| PendingInvocation {
                idempotency_key: key,
                function: record.function,
                params: record.params,
                enqueued_at_ms: record.enqueued_at_ms,
                due_at_ms: record.due_at_ms,
                attempts: record.attempts,
                last_error: record.last_error,
            })
            .collect(),
        next,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PromiseEntry {
    id: String,
    #[serde(flatten)]
    record: invicta_executor::PromiseRecord,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PromiseList {
    promises: Vec<PromiseEntry>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next: Option<String>,
}

#[utoipa::path(get, path = "/v1/components/{component}/workers/{worker}/promises", tag = "invocations",
    params(("component" = String, Path), ("worker" = String, Path), PageQuery),
    responses((status = 200, description = "The worker's promises in id order, completed or not", body = PromiseList)))]
pub(crate) async fn list_promises(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Json<PromiseList>> {
    let q = query(q)?;
    let limit = page(&q)?;
    let id = worker_id(caller.tenant(Scope::Read)?, component, worker)?;
    let rows = state
        .executor
        .promises(&id, q.cursor.as_deref(), limit)
        .await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|(id, _)| id.clone()))
        .flatten();
    Ok(Json(PromiseList {
        promises: rows
            .into_iter()
            .map(|(id, record)| PromiseEntry { id, record })
            .collect(),
        next,
    }))
}
