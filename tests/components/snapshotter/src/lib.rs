//! A counter with a history whose state is saved and loaded through `invicta:host/snapshot`:
//! the total, then every delta, as little-endian bytes after a magic and a version. A snapshot
//! that does not read back is refused with an error, never half-loaded.

use std::cell::RefCell;

wit_bindgen::generate!({ world: "snapshotter", generate_all });

const MAGIC: &[u8; 4] = b"SNP1";

#[derive(Default)]
struct State {
    total: i64,
    history: Vec<i64>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Component;

impl Guest for Component {
    fn add(delta: i64) -> i64 {
        STATE.with_borrow_mut(|s| {
            s.total = s.total.wrapping_add(delta);
            s.history.push(delta);
            s.total
        })
    }

    fn state() -> (i64, u64) {
        STATE.with_borrow(|s| (s.total, s.history.len() as u64))
    }

    fn note(text: String) -> u32 {
        use std::io::Write;
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open("/notes.txt")
            .and_then(|mut f| writeln!(f, "{text}"));
        match appended {
            Ok(()) => Self::notes().lines().count() as u32,
            Err(_) => 0,
        }
    }

    fn notes() -> String {
        std::fs::read_to_string("/notes.txt").unwrap_or_default()
    }

    fn churn(n: u32) -> u64 {
        (0..n).fold(0u64, |sum, _| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::from(d.subsec_nanos()))
                .unwrap_or(0);
            sum.wrapping_add(nanos)
        })
    }
}

impl exports::invicta::host::snapshot::Guest for Component {
    fn save_snapshot() -> Vec<u8> {
        STATE.with_borrow(|s| {
            let mut out = Vec::with_capacity(12 + 8 * s.history.len());
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&s.total.to_le_bytes());
            for delta in &s.history {
                out.extend_from_slice(&delta.to_le_bytes());
            }
            out
        })
    }

    fn load_snapshot(bytes: Vec<u8>) -> Result<(), String> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| "not a snapshot of this component".to_string())?;
        if rest.len() < 8 || rest.len() % 8 != 0 {
            return Err(format!("a snapshot of {} bytes is cut short", bytes.len()));
        }
        let word = |chunk: &[u8]| i64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let total = word(&rest[..8]);
        let history: Vec<i64> = rest[8..].chunks_exact(8).map(word).collect();
        let sum = history.iter().fold(0i64, |a, d| a.wrapping_add(*d));
        if sum != total {
            return Err(format!("the snapshot's history sums to {sum}, not {total}"));
        }
        STATE.with_borrow_mut(|s| {
            s.total = total;
            s.history = history;
        });
        Ok(())
    }
}

export!(Component);
