//! Calls out over HTTP with `wstd`, an async client whose reactor waits on `wasi:io/poll`:
//! nothing in it knows about Invicta.

use wstd::http::{Body, Client, Request};

wit_bindgen::generate!({ world: "wstd-fetcher" });

struct Component;

async fn send(request: Request<Body>) -> Result<String, String> {
    let mut response = Client::new()
        .send(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .contents()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let answer = format!("{status} {}", String::from_utf8_lossy(body));
    // Output between host calls: replay must meet it where it was recorded.
    println!("answered {status}");
    Ok(answer)
}

fn get(url: &str) -> Result<Request<Body>, String> {
    Request::get(url)
        .body(Body::empty())
        .map_err(|e| e.to_string())
}

impl Guest for Component {
    fn fetch(url: String) -> Result<String, String> {
        wstd::runtime::block_on(async move { send(get(&url)?).await })
    }

    fn post(url: String, chunks: Vec<String>) -> Result<String, String> {
        wstd::runtime::block_on(async move {
            let stream = futures_lite::stream::iter(chunks.into_iter().map(String::into_bytes));
            let request = Request::post(&url)
                .body(Body::from_stream(stream))
                .map_err(|e| e.to_string())?;
            send(request).await
        })
    }

    fn fetch_both(a: String, b: String) -> Result<String, String> {
        wstd::runtime::block_on(async move {
            let (a, b) = futures_lite::future::zip(send(get(&a)?), send(get(&b)?)).await;
            Ok(format!("{} | {}", a?, b?))
        })
    }
}

export!(Component);
