//! Calls other workers through the Invicta host interface.

wit_bindgen::generate!({ world: "caller", generate_all });

use invicta::host::api;

struct Component;

impl Guest for Component {
    fn fan_out(target: String, count: u32) -> Vec<String> {
        (0..count)
            .map(|_| match api::enqueue("counter", &target, "add", "[1]", 0) {
                Ok(key) => key,
                Err(e) => format!("refused: {e}"),
            })
            .collect()
    }

    fn new_key() -> String {
        api::generate_idempotency_key()
    }

    fn call_add(target: String, delta: i64) -> Result<String, String> {
        api::invoke("counter", &target, "add", &format!("[{delta}]"))
    }

    fn fetch_then_add(url: String, target: String, delta: i64) -> Result<String, String> {
        waki::Client::new()
            .get(&url)
            .send()
            .map_err(|e| format!("{e:?}"))?;
        api::invoke("counter", &target, "add", &format!("[{delta}]"))
    }
}

export!(Component);
