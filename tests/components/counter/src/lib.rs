//! A tiny stateful component: one counter, kept in static memory across calls,
//! reachable through top-level functions and through `invicta:counter/api`.

use std::sync::atomic::{AtomicI64, Ordering};

wit_bindgen::generate!({ world: "counter" });

static TOTAL: AtomicI64 = AtomicI64::new(0);

fn add_to_total(delta: i64) -> i64 {
    let new = TOTAL.load(Ordering::Relaxed).wrapping_add(delta);
    TOTAL.store(new, Ordering::Relaxed);
    new
}

struct Component;

impl Guest for Component {
    fn add(delta: i64) -> i64 {
        add_to_total(delta)
    }

    fn get() -> i64 {
        TOTAL.load(Ordering::Relaxed)
    }
}

impl exports::invicta::counter::api::Guest for Component {
    fn increment() -> u64 {
        add_to_total(1) as u64
    }
}

export!(Component);
