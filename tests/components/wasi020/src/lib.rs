//! WASI 0.2.0 through the `wasi` crate's bindings: stdout, the environment and the arguments,
//! with no help from Rust's standard library.

wit_bindgen::generate!({ world: "wasi020" });

struct Component;

impl Guest for Component {
    fn shout(text: String) -> u32 {
        let line = format!("{text}\n");
        let out = wasi::cli::stdout::get_stdout();
        let _ = out.blocking_write_and_flush(line.as_bytes());
        text.len() as u32
    }

    fn env_count() -> u32 {
        wasi::cli::environment::get_environment().len() as u32
    }

    fn args() -> Vec<String> {
        wasi::cli::environment::get_arguments()
    }
}

export!(Component);
