//! A guest that tries to hurt its host: floods of tiny writes, large results.

use std::sync::atomic::{AtomicU32, Ordering};

wit_bindgen::generate!({ world: "hostile" });

static TICKS: AtomicU32 = AtomicU32::new(0);

struct Component;

impl Guest for Component {
    fn flood(writes: u32, size: u32) -> u32 {
        let stdout = wasi::cli::stdout::get_stdout();
        let chunk = vec![b'x'; size as usize];
        let mut taken = 0;
        for _ in 0..writes {
            if stdout.write(&chunk).is_err() {
                break;
            }
            taken += 1;
        }
        taken
    }

    fn big(size: u32) -> String {
        "b".repeat(size as usize)
    }

    fn tick() -> u32 {
        TICKS.fetch_add(1, Ordering::Relaxed) + 1
    }
}

export!(Component);
