//! Durable HTTP handlers: a request handled by a named worker exporting
//! `wasi:http/incoming-handler`, as an invocation like any other. The request is the
//! invocation's one parameter and the response its result, both in the oplog: replay hands the
//! handler the same request (and its host calls their recorded answers), and a request sent
//! again with the same idempotency key is answered from the record without running twice.
//!
//! Over the API (and gRPC) the request and the response are JSON:
//! `{method, scheme, authority, path_and_query, headers: [[name, value]], body_base64}` and
//! `{status, headers: [[name, value]], body_base64}`. Bodies are whole, at most
//! [`BODY_BYTES_MAX`] each way; header values are text.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use invicta_engine::exports::ExportedFunction;
use invicta_model::Value;
use serde_json::json;
use wasmtime::component::Val;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::error::Error;
use crate::host::WorkerCtx;

/// The name an invocation gives the handler, whatever WASI version the component exports.
pub const FUNCTION: &str = "wasi:http/incoming-handler.handle";

/// The largest request or response body a durable handler takes or gives (1 MiB): both are
/// kept in the oplog.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// Whether `export` is `wasi:http/incoming-handler`'s `handle`.
pub(crate) fn is_handler(export: &ExportedFunction) -> bool {
    export.function == "handle"
        && export
            .instance
            .as_deref()
            .is_some_and(|i| i.starts_with("wasi:http/incoming-handler@"))
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A request as JSON, for an invocation of [`FUNCTION`].
pub fn request_json(request: &crate::types::HandlerRequest) -> serde_json::Value {
    json!({
        "method": request.method,
        "scheme": request.scheme,
        "authority": request.authority,
        "path_and_query": request.path_and_query,
        "headers": request
            .headers
            .iter()
            .map(|(k, v)| json!([k, String::from_utf8_lossy(v)]))
            .collect::<Vec<_>>(),
        "body_base64": base64(&request.body),
    })
}

/// A durable handler's result (its JSON) as a response; `None` if it is not one.
pub fn response_from_json(json: &serde_json::Value) -> Option<crate::types::HandlerResponse> {
    let status = u16::try_from(json["status"].as_u64()?).ok()?;
    let headers = pairs(&json["headers"])?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(json["body_base64"].as_str()?)
        .ok()?;
    Some(crate::types::HandlerResponse {
        status,
        headers: headers
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect(),
        body: Bytes::from(body),
        trailers: Vec::new(),
        fuel_consumed: 0,
    })
}

fn pairs(json: &serde_json::Value) -> Option<Vec<(String, String)>> {
    json.as_array()?
        .iter()
        .map(|pair| match pair.as_array()?.as_slice() {
            [k, v] => Some((k.as_str()?.to_string(), v.as_str()?.to_string())),
            _ => None,
        })
        .collect()
}

/// The invocation's parameter from the request's JSON; the error says what is wrong.
pub(crate) fn request_value(json: &serde_json::Value) -> Result<Value, Error> {
    let invalid = |what: &str| Error::InvalidRequest(format!("the handler's request: {what}"));
    let text = |name: &str| -> Result<Value, Error> {
        json[name]
            .as_str()
            .map(|s| Value::String(s.to_string()))
            .ok_or_else(|| invalid(&format!("`{name}` is text")))
    };
    let headers = pairs(&json["headers"]).ok_or_else(|| invalid("`headers` is [[name, value]]"))?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(json["body_base64"].as_str().unwrap_or_default())
        .map_err(|_| invalid("`body_base64` is base64"))?;
    if body.len() > BODY_BYTES_MAX {
        return Err(invalid(&format!(
            "the body is {} bytes; a durable handler takes at most {BODY_BYTES_MAX}",
            body.len()
        )));
    }
    Ok(Value::Record(vec![
        ("method".into(), text("method")?),
        ("scheme".into(), text("scheme")?),
        ("authority".into(), text("authority")?),
        ("path_and_query".into(), text("path_and_query")?),
        (
            "headers".into(),
            Value::List(
                headers
                    .into_iter()
                    .map(|(k, v)| Value::Tuple(vec![Value::String(k), Value::String(v)]))
                    .collect(),
            ),
        ),
        ("body".into(), Value::Bytes(body)),
    ]))
}

/// The request the parameter describes.
fn request_of(value: &Value) -> Result<http::Request<Full<Bytes>>, String> {
    let Value::Record(fields) = value else {
        return Err("the handler's request is not a record".into());
    };
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let text = |name: &str| match field(name) {
        Some(Value::String(s)) => Ok(s.as_str()),
        _ => Err(format!("the handler's request has no `{name}`")),
    };
    let scheme = if text("scheme")? == "https" {
        "https"
    } else {
        "http"
    };
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(text("authority")?)
        .path_and_query(text("path_and_query")?)
        .build()
        .map_err(|e| e.to_string())?;
    let method = http::Method::from_bytes(text("method")?.as_bytes()).map_err(|e| e.to_string())?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    if let Some(Value::List(headers)) = field("headers") {
        for header in headers {
            if let Value::Tuple(kv) = header
                && let [Value::String(k), Value::String(v)] = kv.as_slice()
            {
                builder = builder.header(k.as_str(), v.as_str());
            }
        }
    }
    let body = match field("body") {
        Some(value) => value.as_bytes().map(|b| b.into_owned()).unwrap_or_default(),
        None => Vec::new(),
    };
    builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())
}

/// What the handler answers: the response, whole, as the invocation's result.
pub(crate) type Collector = tokio::task::JoinHandle<Result<Value, String>>;

/// The handler's arguments (the request and the response's slot, as resources of the worker's
/// store) and the task that collects its response within `deadline`.
pub(crate) fn arguments(
    store: &mut wasmtime::Store<WorkerCtx>,
    params: &[Value],
    deadline: std::time::Duration,
) -> Result<(Vec<Val>, Collector), String> {
    let [request] = params else {
        return Err("the handler takes one request".into());
    };
    let incoming = request_of(request)?;
    let scheme = if incoming.uri().scheme_str() == Some("https") {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let request = store
        .data_mut()
        .http()
        .new_incoming_request(scheme, incoming)
        .map_err(|e| format!("{e:#}"))?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(|e| format!("{e:#}"))?;
    let request = request
        .try_into_resource_any(&mut *store)
        .map_err(|e| format!("{e:#}"))?;
    let out = out
        .try_into_resource_any(&mut *store)
        .map_err(|e| format!("{e:#}"))?;
    let collector = tokio::spawn(async move {
        let collect = async {
            let response = match receiver.await {
                Ok(Ok(response)) => response,
                Ok(Err(code)) => return Err(format!("the handler answered an error: {code:?}")),
                Err(_) => return Err("the handler returned without setting a response".into()),
            };
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, BODY_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| format!("the handler's response body: {e}"))?
                .to_bytes();
            Ok(Value::Record(vec![
                ("status".into(), Value::U16(parts.status.as_u16())),
                (
                    "headers".into(),
                    Value::List(
                        parts
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                Value::Tuple(vec![
                                    Value::String(k.as_str().to_string()),
                                    Value::String(
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    ),
                                ])
                            })
                            .collect(),
                    ),
                ),
                ("body_base64".into(), Value::String(base64(&body))),
            ]))
        };
        tokio::time::timeout(deadline, collect)
            .await
            .unwrap_or_else(|_| Err("the handler's response did not end in time".into()))
    });
    Ok((vec![Val::Resource(request), Val::Resource(out)], collector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_goes_through_json_and_the_oplog_whole() {
        let request = crate::types::HandlerRequest {
            method: "POST".into(),
            scheme: "http".into(),
            authority: "example.com".into(),
            path_and_query: "/a?b=c".into(),
            headers: vec![("x-a".into(), b"1".to_vec())],
            body: Bytes::from_static(b"\x00\xffbody"),
        };
        let value = request_value(&request_json(&request)).expect("a request value");
        let made = request_of(&value).expect("an HTTP request");
        assert_eq!(made.uri().to_string(), "http://example.com/a?b=c");
        assert_eq!(made.headers()["x-a"], "1");
        let bad = request_value(&json!({ "method": 1 }));
        assert!(matches!(bad, Err(Error::InvalidRequest(_))));
        let response =
            json!({ "status": 201, "headers": [["a", "b"]], "body_base64": base64(b"\x01\x02") });
        let back = response_from_json(&response).expect("a response");
        assert_eq!((back.status, back.body.as_ref()), (201, &b"\x01\x02"[..]));
        assert!(response_from_json(&json!({ "status": 99999 })).is_none());
    }
}
