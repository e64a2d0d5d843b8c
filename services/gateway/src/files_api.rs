//! A worker's files over the API: `GET …/workers/{w}/files` lists its `/`, and
//! `GET …/workers/{w}/files/{path}` lists a directory (JSON) or answers a file's bytes
//! (`application/octet-stream`). Read-only: a worker's files change only by what it does.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use invicta_billing::Scope;
use invicta_executor::FileView;
use serde::Serialize;

use crate::AppState;
use crate::api::{ApiResult, worker_id};
use crate::auth::Caller;

/// A directory of a worker's files.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Directory {
    /// The directory's path under the worker's `/`.
    path: String,
    /// Its entries, sorted by name (at most 10,000).
    entries: Vec<Entry>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Entry {
    name: String,
    /// `file`, `directory` or `symlink`.
    kind: String,
    /// A file's bytes (0 for the others).
    size: u64,
    /// One of the version's read-only files.
    read_only: bool,
}

#[utoipa::path(get, path = "/v1/components/{component}/workers/{worker}/files", tag = "workers",
    params(("component" = String, Path), ("worker" = String, Path)),
    responses((status = 200, description = "The worker's `/`: its entries", body = Directory)))]
pub(crate) async fn root(
    state: State<AppState>,
    caller: Extension<Caller>,
    Path((component, worker)): Path<(String, String)>,
) -> ApiResult<Response> {
    show(state, caller, component, worker, String::new()).await
}

#[utoipa::path(get, path = "/v1/components/{component}/workers/{worker}/files/{path}", tag = "workers",
    params(("component" = String, Path), ("worker" = String, Path),
        ("path" = String, Path, description = "A path under the worker's `/`, e.g. `data/notes.txt`")),
    responses(
        (status = 200, description = "A directory's entries (JSON), or a file's bytes (`application/octet-stream`, at most 16 MiB)", body = Directory),
        (status = 404, description = "`file_not_found`"),
        (status = 413, description = "`file_too_large`"),
    ))]
pub(crate) async fn at_path(
    state: State<AppState>,
    caller: Extension<Caller>,
    Path((component, worker, path)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    show(state, caller, component, worker, path).await
}

async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    component: String,
    worker: String,
    path: String,
) -> ApiResult<Response> {
    let id = worker_id(caller.tenant(Scope::Read)?, component, worker)?;
    match state.executor.files(&id, &path).await? {
        FileView::File(bytes) => {
            let mut response = bytes.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            Ok(response)
        }
        FileView::Directory(entries) => Ok(Json(Directory {
            path: format!("/{}", path.trim_matches('/')),
            entries: entries
                .into_iter()
                .map(|e| Entry {
                    name: e.name,
                    kind: e.kind,
                    size: e.size,
                    read_only: e.read_only,
                })
                .collect(),
        })
        .into_response()),
    }
}
