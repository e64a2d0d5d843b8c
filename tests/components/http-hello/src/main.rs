//! An HTTP function written the standard way: `wasi:http/incoming-handler`, served by `wstd`.

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response, StatusCode};

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
        _ => Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(format!("no page at {path}").into())?),
    }
}
