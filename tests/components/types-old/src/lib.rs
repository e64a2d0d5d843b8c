//! Compound WIT types and a little state, bound by an older wit-bindgen (0.34): a guest whose
//! lifting and lowering glue was generated differently from the other guests'.

use std::sync::atomic::{AtomicI64, Ordering};

wit_bindgen::generate!({ world: "types-old" });

static TOTAL: AtomicI64 = AtomicI64::new(0);

struct Component;

impl Guest for Component {
    fn echo_record(x: Person) -> Person {
        x
    }

    fn echo_variant(x: Shape) -> Shape {
        x
    }

    fn echo_list(x: Vec<Vec<u32>>) -> Vec<Vec<u32>> {
        x
    }

    fn echo_result(x: Result<String, u32>) -> Result<String, u32> {
        x
    }

    fn add(delta: i64) -> i64 {
        TOTAL.fetch_add(delta, Ordering::Relaxed).wrapping_add(delta)
    }
}

export!(Component);
