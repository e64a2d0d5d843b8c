//! The examples' counter in Rust, with wit-bindgen. Its state is a static: Invicta keeps it
//! across crashes and moves by replaying the worker's oplog, with nothing Invicta-specific here.

use std::sync::atomic::{AtomicI64, Ordering};

wit_bindgen::generate!({ world: "counter" });

static TOTAL: AtomicI64 = AtomicI64::new(0);

struct Counter;

impl Guest for Counter {
    fn add(delta: i64) -> i64 {
        TOTAL.fetch_add(delta, Ordering::Relaxed).wrapping_add(delta)
    }

    fn get() -> i64 {
        TOTAL.load(Ordering::Relaxed)
    }
}

export!(Counter);
