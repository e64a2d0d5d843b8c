//! `invicta`: the one binary. `invicta server` runs the services (all of them in one process by
//! default); the client subcommands talk to a running server's public API.

mod client;
mod demo;
mod follow;
mod profile;
mod server;
mod session;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the server allocates and frees many small, short-lived buffers per request on
/// every thread, which glibc's allocator serves with more locking and consolidation. Measured
/// by `make bench`'s `invoke`, side by side: 8% more invocations a second over 1,000 workers,
/// 20–35% more on one worker, and 30–60 µs less per sequential call.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "invicta",
    version,
    about = "Durable WebAssembly workers, multi-tenant and serverless",
    after_help = "Exit codes: 0 success, 1 the server failed, 2 usage error, 3 the API refused, \
                  4 the server could not be reached."
)]
struct Cli {
    #[command(flatten)]
    connection: client::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: every service in one process, with the store and blobs under a data dir.
    Server(server::Args),
    /// Upload and inspect components
    #[command(subcommand)]
    Component(client::ComponentCommand),
    /// Create, inspect and invoke workers
    #[command(subcommand)]
    Worker(client::WorkerCommand),
    /// Manage your tenant's API keys
    #[command(subcommand)]
    Key(client::KeyCommand),
    /// Configuration and secrets workers read through `wasi:config/store`
    #[command(subcommand)]
    Config(client::ConfigCommand),
    /// Put components and functions behind URLs on the public listener
    #[command(subcommand)]
    Route(client::RouteCommand),
    /// This month's usage and your plan's limits
    Usage,
    /// The operator's commands: tenants and plans
    #[command(subcommand)]
    Admin(client::AdminCommand),
    /// Save server URLs and keys under names, and pick the one to use
    #[command(subcommand)]
    Profile(client::ProfileCommand),
    /// Compile a component read on stdin for the server (run by the server itself, in a child
    /// process its compile deadline can stop)
    #[command(name = invicta_component_registry::compiler::SUBCOMMAND, hide = true)]
    CompileComponent,
    /// Print a shell completion script (e.g. `invicta completions bash > /etc/bash_completion.d/invicta`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match cli.command {
        Command::Server(args) => {
            return match server::main(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::CompileComponent => {
            return ExitCode::from(
                u8::try_from(invicta_component_registry::compiler::child_main()).unwrap_or(1),
            );
        }
        Command::Component(c) => client::Request::Component(c),
        Command::Worker(c) => client::Request::Worker(c),
        Command::Key(c) => client::Request::Key(c),
        Command::Route(c) => client::Request::Route(c),
        Command::Config(c) => client::Request::Config(c),
        Command::Usage => client::Request::Usage,
        Command::Admin(c) => client::Request::Admin(c),
        Command::Profile(c) => client::Request::Profile(c),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "invicta", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
    };
    client::main(cli.connection, request)
}
