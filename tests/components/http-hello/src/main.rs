//! An HTTP function written the standard way: `wasi:http/incoming-handler`, served by `wstd`.

use std::sync::atomic::{AtomicU64, Ordering};

use wstd::http::body::Body;
use wstd::http::{Client, Error, Request, Response, StatusCode};

/// Requests this instance has seen at `/visits`: one per fresh instance, counting up in a
/// durable worker.
static VISITS: AtomicU64 = AtomicU64::new(0);

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    match path.rsplit('/').next().unwrap_or_default() {
        "hello" => {
            let name = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("name="))
                .unwrap_or("world");
            Ok(Response::builder()
                .header("x-served-by", "wstd")
                .body(format!("hello {name} from {path}").into())?)
        }
        "echo" => {
            let (parts, mut body) = request.into_parts();
            let bytes = body.contents().await?.to_vec();
            let mut response = Response::builder().status(StatusCode::OK);
            if let Some(kind) = parts.headers.get("content-type") {
                response = response.header("content-type", kind);
            }
            Ok(response.body(bytes.into())?)
        }
        "echo-stream" => {
            // The request body, back as it arrives.
            let (_, body) = request.into_parts();
            Ok(Response::new(body))
        }
        "headers" => {
            // The names of the headers the handler was given, sorted.
            let mut names: Vec<String> =
                request.headers().keys().map(|k| k.as_str().to_string()).collect();
            names.sort();
            Ok(Response::new(names.join(",").into()))
        }
        "teapot" => Ok(Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .body("short and stout".to_string().into())?),
        "big" => {
            let kib: usize = query
                .strip_prefix("kib=")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            Ok(Response::new(vec![b'x'; kib * 1024].into()))
        }
        "spin" => {
            // Burns fuel until the host stops it.
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "panic" => panic!("the handler panicked on purpose"),
        "stream" => {
            // Three chunks, a pause before each of the last two: sent as they come.
            let chunks = futures_lite::stream::unfold(0_u32, |n| async move {
                if n == 3 {
                    return None;
                }
                if n > 0 {
                    wstd::task::sleep(wstd::time::Duration::from_millis(200)).await;
                }
                Some((Ok::<_, std::convert::Infallible>(format!("chunk {n}\n")), n + 1))
            });
            Ok(Response::new(Body::from_try_stream(chunks)))
        }
        "visits" => {
            let n = VISITS.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(Response::new(format!("visit {n}").into()))
        }
        "pay" => {
            // An effect elsewhere: a POST to `to`, answered with what it said.
            let to = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("to="))
                .unwrap_or_default()
                .replace("%3A", ":")
                .replace("%2F", "/");
            let (_, mut body) = request.into_parts();
            let amount = body.contents().await?.to_vec();
            let outgoing = Request::post(to).body(Body::from(amount))?;
            let mut answer = Client::new().send(outgoing).await?;
            let status = answer.status().as_u16();
            let text = answer.body_mut().contents().await?.to_vec();
            let n = VISITS.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(Response::new(
                format!("paid {status} {} (visit {n})", String::from_utf8_lossy(&text)).into(),
            ))
        }
        _ => Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(format!("no page at {path}").into())?),
    }
}
