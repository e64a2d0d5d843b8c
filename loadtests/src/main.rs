//! The load generator behind `make bench`. Each scenario prints its figures next to the limit
//! measured on the same machine in the same run, since the machines are shared and noisy:
//! absolute numbers mean little, ratios to the limit do.

mod admission;
mod cpu;
mod invoke;
mod lean;
mod metering;
mod recovery;
mod serve;
mod stats;
mod store;
mod upload;

use clap::{Parser, Subcommand};

/// The allocator the server runs with: the load generator and the plain servers measured as
/// limits (hyper, wasmtime) allocate the same way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "invicta-loadtests", about = "Invicta's benchmark scenarios")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Commit latency and throughput of the embedded store, beside raw write+fdatasync.
    Store(store::Args),
    /// Durable invocations through the real server over HTTP: latency beside raw fdatasync,
    /// throughput, cold start, resume, recovery after SIGKILL, and the cost of metering.
    Invoke(invoke::Args),
    /// The cost of authentication and rate limiting per request (argon2 once, then cached).
    Admission(admission::Args),
    /// Tenants' traffic on the public listener: an ephemeral HTTP handler beside plain hyper,
    /// and a function route beside the same call over the API.
    Serve(serve::Args),
    /// Upload to first call of guests, beside plain wasmtime's compile of the same bytes.
    Upload(upload::Args),
    /// Long-lived workers coming back: from a snapshot after SIGKILL, resumed after idle
    /// suspension, and without snapshots (the replay rate).
    Recovery(recovery::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Store(args) => store::run(&args),
        Scenario::Invoke(args) => invoke::run(&args),
        Scenario::Admission(args) => admission::run(&args),
        Scenario::Serve(args) => serve::run(&args),
        Scenario::Upload(args) => upload::run(&args),
        Scenario::Recovery(args) => recovery::run(&args),
    }
}
