//! The API's errors: RFC 9457 problems with a stable code, as every route answers them.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An API error: an HTTP status, a stable code and a message for humans.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after_s: Option<u64>,
    /// The methods a 405 names in its `Allow` header.
    pub allow: Option<String>,
    /// More members of the problem object (e.g. a quota's name, limit and use).
    pub extra: Option<serde_json::Map<String, Value>>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            retry_after_s: None,
            allow: None,
            extra: None,
        }
    }

    /// A quota refusal: names the quota, its limit and the current use.
    pub fn quota(quota: &str, limit: u64, used: u64, retry_after_s: Option<u64>) -> Problem {
        let mut extra = serde_json::Map::new();
        extra.insert("quota".into(), json!(quota));
        extra.insert("limit".into(), json!(limit));
        extra.insert("used".into(), json!(used));
        Problem {
            retry_after_s,
            extra: Some(extra),
            ..Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!("quota `{quota}` exceeded: the limit is {limit}, {used} used"),
            )
        }
    }

    pub(crate) fn internal(error: impl std::fmt::Display) -> Problem {
        // The detail stays in the logs: it may name files, keys or internals.
        tracing::error!(error = %error, "internal error");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }
}

impl Problem {
    /// The problem's JSON object, as its response carries it.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("https://invicta.dev/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        if let (Some(extra), Some(object)) = (&self.extra, body.as_object_mut()) {
            object.extend(extra.clone());
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
