//! `wasi:http/incoming-handler` through the `wasi` crate's raw bindings: the response names the
//! method and path and carries the request body back, read through `wasi:io` streams.

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Handler);

struct Handler;

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Patch => "PATCH".into(),
        Method::Head => "HEAD".into(),
        Method::Options => "OPTIONS".into(),
        Method::Connect => "CONNECT".into(),
        Method::Trace => "TRACE".into(),
        Method::Other(other) => other.clone(),
    }
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut bytes = Vec::new();
    let Ok(body) = request.consume() else {
        return bytes;
    };
    let Ok(stream) = body.stream() else {
        return bytes;
    };
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        bytes.extend_from_slice(&chunk);
    }
    drop(stream);
    let _ = wasi::http::types::IncomingBody::finish(body);
    bytes
}

impl wasi::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = method_name(&request.method());
        let path = request.path_with_query().unwrap_or_default();
        let body = read_body(&request);
        let headers = Fields::new();
        let _ = headers.set("x-served-by", &[b"raw".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(out) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(mut stream) = out.write() {
            let _ = write!(stream, "raw {method} {path} ");
            let _ = stream.write_all(&body);
            let _ = stream.flush();
        }
        let _ = OutgoingBody::finish(out, None);
    }
}
