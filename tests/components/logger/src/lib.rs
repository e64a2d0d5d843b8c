//! Writes to stdout and stderr and counts the lines it has written.

use std::sync::atomic::{AtomicU32, Ordering};

wit_bindgen::generate!({ world: "logger" });

static LINES: AtomicU32 = AtomicU32::new(0);

struct Component;

impl Guest for Component {
    fn log(line: String) -> u32 {
        println!("{line}");
        eprintln!("err: {line}");
        let n = LINES.load(Ordering::Relaxed) + 1;
        LINES.store(n, Ordering::Relaxed);
        n
    }
}

export!(Component);
