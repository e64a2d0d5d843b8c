//! Waits durably: `std::thread::sleep` (a `wasi:clocks` deadline), promises, and an HTTP call
//! inside an atomic region.

wit_bindgen::generate!({ world: "waiter", generate_all });

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use invicta::host::api;

static BUMPS: AtomicU64 = AtomicU64::new(0);

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Component;

impl Guest for Component {
    fn nap(ms: u64) -> u64 {
        let before = wall_ms();
        std::thread::sleep(Duration::from_millis(ms));
        wall_ms().saturating_sub(before)
    }

    fn keyed_nap(ms: u64) -> String {
        let key = api::generate_idempotency_key();
        std::thread::sleep(Duration::from_millis(ms));
        key
    }

    fn bump() -> u64 {
        BUMPS.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn make_promise() -> String {
        api::create_promise()
    }

    fn wait_for(id: String) -> Result<String, String> {
        api::await_promise(&id)
    }

    fn race(first_ms: u64, second_ms: u64) -> Vec<u32> {
        use wasi::clocks::monotonic_clock::subscribe_duration;
        let first = subscribe_duration(first_ms * 1_000_000);
        let second = subscribe_duration(second_ms * 1_000_000);
        wasi::io::poll::poll(&[&first, &second])
    }

    fn region_fetch(url: String) -> Result<String, String> {
        let region = api::begin_atomic_region();
        let response = waki::Client::new()
            .get(&url)
            .send()
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status_code();
        let body = response.body().map_err(|e| format!("{e:?}"))?;
        api::end_atomic_region(region);
        Ok(format!("{status} {}", String::from_utf8_lossy(&body)))
    }
}

export!(Component);
