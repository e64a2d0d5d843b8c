//! Calls out over HTTP with `waki`, a plain wasi:http client.

wit_bindgen::generate!({ world: "fetcher" });

struct Component;

fn answer(response: Result<waki::Response, impl std::fmt::Debug>) -> Result<String, String> {
    let response = response.map_err(|e| format!("{e:?}"))?;
    let status = response.status_code();
    let body = response.body().map_err(|e| format!("{e:?}"))?;
    Ok(format!("{status} {}", String::from_utf8_lossy(&body)))
}

impl Guest for Component {
    fn fetch(url: String) -> Result<String, String> {
        answer(waki::Client::new().get(&url).send())
    }

    fn post(url: String, body: String) -> Result<String, String> {
        answer(waki::Client::new().post(&url).body(body.into_bytes()).send())
    }

    fn fetch_each(urls: Vec<String>) -> Vec<Result<String, String>> {
        urls.iter()
            .map(|url| answer(waki::Client::new().get(url).send()))
            .collect()
    }
}

export!(Component);
