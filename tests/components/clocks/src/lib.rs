//! Reads every nondeterministic input (clocks, random) and keeps state built
//! from them, so a replay must feed back the same values to rebuild it.

use std::sync::Mutex;

wit_bindgen::generate!({ world: "clocks" });

struct State {
    calls: u32,
    history: Vec<u64>,
}

static STATE: Mutex<State> = Mutex::new(State {
    calls: 0,
    history: Vec::new(),
});

struct Component;

impl Guest for Component {
    fn sample() -> Sample {
        let wall = wasi::clocks::wall_clock::now();
        let monotonic = wasi::clocks::monotonic_clock::now();
        let random = wasi::random::random::get_random_u64();
        let random_bytes = wasi::random::random::get_random_bytes(16);
        let insecure = wasi::random::insecure::get_insecure_random_u64();

        let mut state = STATE.lock().unwrap();
        state.calls += 1;
        state.history.push(random);
        Sample {
            wall_seconds: wall.seconds,
            wall_nanos: wall.nanoseconds,
            monotonic,
            random,
            random_bytes,
            insecure,
            calls: state.calls,
        }
    }

    fn history() -> Vec<u64> {
        STATE.lock().unwrap().history.clone()
    }
}

export!(Component);
