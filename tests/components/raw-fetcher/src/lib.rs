//! Calls out over HTTP with the raw `wasi:http` bindings: several requests in flight at once,
//! bodies read and written as streams, every wait a `wasi:io/poll.poll`.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method, OutgoingBody,
    OutgoingRequest, Scheme,
};
use wasi::io::poll;
use wasi::io::streams::StreamError;

wit_bindgen::generate!({ world: "raw-fetcher" });

struct Component;

/// A request for `url` (`http://host:port/path`).
fn request(url: &str, method: Method) -> Result<OutgoingRequest, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` is not a URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_method(&method)
        .map_err(|()| "bad method".to_string())?;
    request
        .set_scheme(Some(&match scheme {
            "https" => Scheme::Https,
            _ => Scheme::Http,
        }))
        .map_err(|()| "bad scheme".to_string())?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "bad authority".to_string())?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| "bad path".to_string())?;
    Ok(request)
}

/// Waits for one pollable through `poll`.
fn wait(pollable: &wasi::io::poll::Pollable) {
    while poll::poll(&[pollable]).is_empty() {}
}

/// The response's status and body, read as a stream.
fn answer(response: IncomingResponse) -> Result<String, String> {
    let status = response.status();
    let body = response
        .consume()
        .map_err(|()| "the body was taken".to_string())?;
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| "the stream was taken".to_string())?;
        loop {
            match stream.read(4096) {
                Ok(chunk) if chunk.is_empty() => wait(&stream.subscribe()),
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(format!("{e:?}")),
            }
        }
    }
    drop(IncomingBody::finish(body));
    let answer = format!("{status} {}", String::from_utf8_lossy(&bytes));
    println!("answered {status}");
    Ok(answer)
}

fn outcome(future: &FutureIncomingResponse) -> Option<Result<String, String>> {
    match future.get()? {
        Ok(Ok(response)) => Some(answer(response)),
        Ok(Err(code)) => Some(Err(format!("{code:?}"))),
        Err(()) => Some(Err("the response was taken".into())),
    }
}

impl Guest for Component {
    fn fetch_all(urls: Vec<String>) -> Result<Vec<String>, String> {
        let mut futures = Vec::new();
        for url in &urls {
            let future = outgoing_handler::handle(request(url, Method::Get)?, None)
                .map_err(|e| format!("{e:?}"))?;
            futures.push(future);
        }
        let mut answers: Vec<Option<String>> = vec![None; futures.len()];
        while answers.iter().any(Option::is_none) {
            let waiting: Vec<usize> = (0..futures.len())
                .filter(|i| answers[*i].is_none())
                .collect();
            let pollables: Vec<_> = waiting.iter().map(|i| futures[*i].subscribe()).collect();
            let refs: Vec<&wasi::io::poll::Pollable> = pollables.iter().collect();
            for ready in poll::poll(&refs) {
                let i = waiting[ready as usize];
                if let Some(answer) = outcome(&futures[i]) {
                    answers[i] = Some(answer?);
                }
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    fn post(url: String, chunks: Vec<String>) -> Result<String, String> {
        let request = request(&url, Method::Post)?;
        let body = request
            .body()
            .map_err(|()| "the body was taken".to_string())?;
        let future =
            outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
        {
            let stream = body
                .write()
                .map_err(|()| "the stream was taken".to_string())?;
            for chunk in &chunks {
                let mut rest = chunk.as_bytes();
                while !rest.is_empty() {
                    let permitted = stream.check_write().map_err(|e| format!("{e:?}"))?;
                    if permitted == 0 {
                        wait(&stream.subscribe());
                        continue;
                    }
                    let n = rest.len().min(usize::try_from(permitted).unwrap_or(usize::MAX));
                    stream.write(&rest[..n]).map_err(|e| format!("{e:?}"))?;
                    rest = &rest[n..];
                }
            }
            stream.flush().map_err(|e| format!("{e:?}"))?;
            wait(&stream.subscribe());
        }
        OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
        loop {
            if let Some(answer) = outcome(&future) {
                return answer;
            }
            wait(&future.subscribe());
        }
    }
}

export!(Component);
