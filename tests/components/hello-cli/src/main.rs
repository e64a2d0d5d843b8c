//! A command written as any Rust program is: it prints, reads the clock and the environment,
//! and exits successfully.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("hello from a command with {} argument(s)", args.len());
    let started = std::time::SystemTime::now();
    let later = std::time::SystemTime::now();
    println!(
        "time goes on: {}",
        later.duration_since(started).is_ok()
    );
    eprintln!("and a word on stderr");
}
