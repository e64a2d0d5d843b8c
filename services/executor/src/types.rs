//! What the executor answers: workers' statuses and listings, invocations' states and results.

use invicta_model::oplog::OplogIndex;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How a worker looks from outside.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct WorkerStatus {
    /// `active` (its instance is in memory), `suspended`, or `failed`.
    pub status: String,
    pub component_version: u64,
    pub oplog_length: u64,
    pub pending_invocations: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Entries moved from the store to archived segments in the blob store (those before its
    /// latest snapshot); the store keeps the rest.
    pub archived_entries: u64,
}

/// A worker in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct WorkerSummary {
    pub name: String,
    /// `active`, `suspended` or `failed`.
    pub status: String,
    pub component_version: u64,
    pub created_at_ms: u64,
}

/// Which workers a listing returns.
#[derive(Debug, Clone, Default)]
pub struct WorkerFilter {
    /// Only names starting with this.
    pub prefix: Option<String>,
    /// Only workers in this status.
    pub status: Option<String>,
    /// Only names after this one (the previous page's `next`).
    pub after: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// Where an invocation accepted by `enqueue` (or made with a key) stands.
#[derive(Debug, Clone, PartialEq)]
pub enum InvocationState {
    Pending {
        enqueued_at_ms: u64,
        /// When it runs, if it was scheduled for later (or runs again after a failure).
        due_at_ms: Option<u64>,
        /// Its runs that failed so far (its retry policy runs it again), and the last error.
        attempts: u32,
        last_error: Option<String>,
    },
    Completed(Completed),
    Failed {
        kind: String,
        message: String,
    },
}

/// A line a worker wrote to stdout or stderr, at its oplog index.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LogLine {
    pub index: OplogIndex,
    pub stream: &'static str,
    /// The bytes as text (invalid UTF-8 replaced).
    pub text: String,
}

/// The result of a completed invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub result: serde_json::Value,
    pub fuel_consumed: u64,
}

pub(crate) type Outcome = std::result::Result<Completed, Error>;

/// A request for a handler, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerRequest {
    pub method: String,
    /// `https` or `http`: how the client reached the public listener.
    pub scheme: String,
    /// The `Host` the client asked for.
    pub authority: String,
    /// The path and query, as the client sent them.
    pub path_and_query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: bytes::Bytes,
}

/// A handler's answer, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: bytes::Bytes,
    pub trailers: Vec<(String, Vec<u8>)>,
    /// The fuel the request used, instantiation included.
    pub fuel_consumed: u64,
}

/// A handler's answer as it comes: the body streams while the guest writes it.
pub struct StreamedResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, its trailers after it; an error cuts it off.
    pub body: http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, String>,
    /// The fuel the request used, once the guest has finished (never, if its run was lost).
    pub done: tokio::sync::oneshot::Receiver<u64>,
}

impl std::fmt::Debug for StreamedResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl From<HandlerResponse> for StreamedResponse {
    /// A whole answer, as one that streams: its body at once, its fuel known.
    fn from(whole: HandlerResponse) -> StreamedResponse {
        use http_body_util::BodyExt;
        let (fuel, done) = tokio::sync::oneshot::channel();
        let _ = fuel.send(whole.fuel_consumed);
        let mut trailers = http::HeaderMap::new();
        for (name, value) in &whole.trailers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name.as_str()),
                http::HeaderValue::from_bytes(value),
            ) {
                trailers.append(name, value);
            }
        }
        let full = http_body_util::Full::new(whole.body).map_err(|never| match never {});
        let body = if trailers.is_empty() {
            full.boxed_unsync()
        } else {
            full.with_trailers(async move { Some(Ok(trailers)) })
                .boxed_unsync()
        };
        StreamedResponse {
            status: whole.status,
            headers: whole.headers,
            body,
            done,
        }
    }
}

/// A request body for a handler: whole, or streaming as the client sends it (its errors as
/// text, a limit passed among them).
pub enum RequestBody {
    Whole(bytes::Bytes),
    Streamed(http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, String>),
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Whole(bytes) => write!(f, "Whole({} bytes)", bytes.len()),
            RequestBody::Streamed(_) => f.write_str("Streamed"),
        }
    }
}
