//! Burns CPU, grows memory, traps, and keeps a counter so that tests can check
//! which state survives a failed invocation.

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

wit_bindgen::generate!({ world: "burner" });

const MIB: usize = 1 << 20;
/// Smaller than a wasm page (64 KiB), so every page gets written.
const TOUCH_STRIDE: usize = 4096;

static TOTAL: AtomicI64 = AtomicI64::new(0);
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn add_to_total(delta: i64) -> i64 {
    let new = TOTAL.load(Ordering::Relaxed).wrapping_add(delta);
    TOTAL.store(new, Ordering::Relaxed);
    new
}

struct Component;

impl Guest for Component {
    fn burn(iterations: u64) -> u64 {
        let mut x: u64 = black_box(0x9E37_79B9_7F4A_7C15);
        let mut acc: u64 = 0;
        for _ in 0..iterations {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            acc = acc.wrapping_add(x);
        }
        black_box(acc)
    }

    fn grow(mebibytes: u32) -> u32 {
        let mut held = HELD.lock().unwrap();
        for _ in 0..mebibytes {
            let mut chunk = vec![0u8; MIB];
            for i in (0..MIB).step_by(TOUCH_STRIDE) {
                chunk[i] = 1;
            }
            held.push(black_box(chunk));
        }
        held.len() as u32
    }

    fn trap(message: String) {
        panic!("{message}");
    }

    fn add(delta: i64) -> i64 {
        add_to_total(delta)
    }

    fn get() -> i64 {
        TOTAL.load(Ordering::Relaxed)
    }

    fn fail_after_add(delta: i64) {
        let total = add_to_total(delta);
        panic!("fail-after-add: counter is now {total}, trapping");
    }
}

export!(Component);
