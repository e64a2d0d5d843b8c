//! A worker's stdout and stderr, as recorded in its oplog: a page as JSON, or followed as
//! server-sent events. Each event's id is the line's oplog index, so a client that reconnects
//! with `Last-Event-ID` (as browsers and the CLI do) misses nothing and sees nothing twice.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use invicta_billing::Scope;
use invicta_executor::Executor;
use invicta_model::WorkerId;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::AppState;
use crate::api::{ApiResult, query, worker_id};
use crate::auth::Caller;

/// Oplog entries one page (or one poll of a follower) reads.
const SCAN: usize = 1_000;

/// How often a follower looks for new lines when there were none.
const POLL: Duration = Duration::from_millis(200);

/// Log followers one tenant may have open at once: each polls the store five times a second
/// and holds a connection.
pub const FOLLOWERS_PER_TENANT: u32 = 32;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogsQuery {
    /// The oplog index to start at (1, the beginning, by default).
    from: Option<u64>,
    /// Stream new lines as server-sent events until the client leaves.
    follow: Option<bool>,
}

#[utoipa::path(get, path = "/v1/components/{component}/workers/{worker}/logs", tag = "workers",
    params(("component" = String, Path), ("worker" = String, Path), LogsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Continue after this line (a reconnecting follower)")),
    responses((status = 200, description = "What it wrote to stdout and stderr; with `follow=true`, server-sent events (`log`, then `end`)",
        content((crate::openapi::LogsPage = "application/json"), (crate::openapi::LogEvent = "text/event-stream")))))]
pub(crate) async fn logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = query(q)?;
    let id = worker_id(caller.tenant(Scope::Read)?, component, worker)?;
    let mut from = q.from.unwrap_or(1).max(1);
    // A reconnecting follower continues after the last line it saw.
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        from = last.saturating_add(1);
    }
    let (lines, next) = state.executor.logs(&id, from, SCAN).await?;
    if !q.follow.unwrap_or(false) {
        return Ok(Json(json!({ "lines": lines, "next": next })).into_response());
    }
    let slot = state
        .limiters
        .follower_slot(id.tenant.as_str(), FOLLOWERS_PER_TENANT)?;
    let mut buffered = VecDeque::new();
    for line in &lines {
        buffered.push_back(line_event(line));
    }
    let follower = Follower {
        _slot: slot,
        executor: state.executor.clone(),
        id,
        next,
        buffered,
        stop: state.stop.clone(),
        done: false,
    };
    let stream = futures::stream::unfold(follower, |mut f| async move {
        f.next_event()
            .await
            .map(|event| (Ok::<_, Infallible>(event), f))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn line_event(line: &invicta_executor::LogLine) -> Event {
    Event::default()
        .id(line.index.to_string())
        .event("log")
        .data(json!(line).to_string())
}

fn end_event(reason: &str) -> Event {
    Event::default()
        .event("end")
        .data(json!({ "reason": reason }).to_string())
}

struct Follower {
    /// One of the tenant's follower slots, held while the stream lives.
    _slot: tokio::sync::OwnedSemaphorePermit,
    executor: Executor,
    id: WorkerId,
    next: u64,
    buffered: VecDeque<Event>,
    stop: watch::Receiver<bool>,
    done: bool,
}

impl Follower {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            if *self.stop.borrow() {
                self.done = true;
                return Some(end_event("the server is shutting down"));
            }
            match self.executor.logs(&self.id, self.next, SCAN).await {
                Ok((lines, next)) => {
                    let moved = next != self.next;
                    self.next = next;
                    self.buffered.extend(lines.iter().map(line_event));
                    if !moved {
                        tokio::select! {
                            () = tokio::time::sleep(POLL) => {}
                            _ = self.stop.changed() => {}
                        }
                    }
                }
                Err(invicta_executor::Error::WorkerNotFound(_)) => {
                    self.done = true;
                    return Some(end_event("the worker was deleted"));
                }
                Err(e) => {
                    tracing::warn!(worker = %self.id, error = %e, "follow logs");
                    self.done = true;
                    return Some(end_event("the log could not be read"));
                }
            }
        }
    }
}
