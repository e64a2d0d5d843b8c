//! Compiling a component, bounded in time and kept from the invocations' cores.
//!
//! wasmtime cannot stop a compile once it has begun, so a server compiles in a child process of
//! its own binary (`invicta compile-component`): the child lowers its CPU priority (so a compile
//! never delays an invocation that wants the core), and it is killed when the compile deadline
//! passes — the upload answers `compile_timeout` and nothing goes on burning CPU. The child
//! writes the serialized artifact; the parent loads it into its engine, whose fingerprint the
//! child checked against its own first.
//!
//! Without a compiler program (library use, tests), the compile runs on a blocking thread of
//! this process; the deadline then only stops the waiting.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use invicta_engine::Engine;
use invicta_engine::wasmtime::component::Component;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::{Error, Result};

/// The subcommand of the server's binary that compiles (not for people: it is hidden).
pub const SUBCOMMAND: &str = "compile-component";

/// The engine's configuration, as JSON, for the child.
const ENGINE_ENV: &str = "INVICTA_COMPILE_ENGINE";

/// The fingerprint the child's engine must have: its artifact is loaded into the parent's.
const FINGERPRINT_ENV: &str = "INVICTA_COMPILE_FINGERPRINT";

/// How much nicer than the server the child runs (`nice(2)`): invocations come first.
const NICENESS: i32 = 10;

/// Why the child could not compile, as it tells the parent (JSON on stderr, exit status 2).
#[derive(Debug, Serialize, Deserialize)]
struct Refusal {
    not_a_component: bool,
    message: String,
}

/// Compiles `bytes` to a component and its serialized artifact, within `deadline`: in a child
/// process running `program` when one is given, else on a blocking thread here.
pub(crate) async fn compile(
    program: Option<&Path>,
    engine: &Engine,
    bytes: Vec<u8>,
    deadline: Duration,
) -> Result<(Component, Vec<u8>, Vec<u8>)> {
    let timed_out = || Error::CompileTimeout {
        limit_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
    };
    let Some(program) = program else {
        let engine = engine.clone();
        let work = tokio::task::spawn_blocking(move || {
            let component = crate::compile(&engine, &bytes)?;
            let artifact = component
                .serialize()
                .map_err(|e| Error::Compile(format!("{e:#}")))?;
            Ok::<_, Error>((component, artifact, bytes))
        });
        return tokio::time::timeout(deadline, work)
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| Error::Compile(e.to_string()))?;
    };
    let config =
        serde_json::to_string(&engine.config).map_err(|e| Error::Compile(e.to_string()))?;
    let mut child = tokio::process::Command::new(program)
        .arg(SUBCOMMAND)
        .env(ENGINE_ENV, config)
        .env(FINGERPRINT_ENV, &engine.fingerprint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Compile(format!("start {}: {e}", program.display())))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::Compile("the compiler has no stdin".into()))?;
    let output = async {
        // Written while its output is read: neither pipe can fill up and stall the other.
        let write = async {
            stdin.write_all(&bytes).await?;
            stdin.shutdown().await?;
            drop(stdin);
            Ok::<_, std::io::Error>(())
        };
        let (written, output) = tokio::join!(write, child.wait_with_output());
        let output = output.map_err(|e| Error::Compile(format!("run the compiler: {e}")))?;
        if !output.status.success() {
            return Err(refusal(&output));
        }
        written.map_err(|e| Error::Compile(format!("send the component: {e}")))?;
        Ok(output.stdout)
    };
    // Dropped at the deadline, the child is killed with it (`kill_on_drop`).
    let artifact = tokio::time::timeout(deadline, output)
        .await
        .map_err(|_| timed_out())??;
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || {
        // The artifact was made by `Component::serialize` in a child process running this very
        // binary, on an engine whose fingerprint (wasmtime version and every setting that
        // shapes compiled code) it checked equal to this engine's before compiling.
        let component = load(&engine, &artifact)
            .map_err(|e| Error::Compile(format!("load the compiled artifact: {e}")))?;
        Ok((component, artifact, bytes))
    })
    .await
    .map_err(|e| Error::Compile(e.to_string()))?
}

/// Loads an artifact of `engine`'s code: into its pool, or, for a component whose memories do
/// not fit a pool slot, into its on-demand engine (the same code, `Engine::new` checked).
/// The caller vouches that `artifact` was made by `Component::serialize` on an engine with
/// `engine`'s fingerprint and is unaltered.
pub(crate) fn load(engine: &Engine, artifact: &[u8]) -> std::result::Result<Component, String> {
    #[allow(unsafe_code)]
    // SAFETY: as the caller vouches, the artifact is this engine's own, unaltered.
    let pooled = unsafe { Component::deserialize(&engine.engine, artifact) };
    match (pooled, &engine.large) {
        (Ok(component), _) => Ok(component),
        (Err(e), Some(large)) if format!("{e:#}").contains("pooling allocator") => {
            #[allow(unsafe_code)]
            // SAFETY: the same artifact; the on-demand engine generates the same code, which
            // `Engine::new` checked by the engines' compatibility hashes.
            let loaded = unsafe { Component::deserialize(large, artifact) };
            loaded.map_err(|e| format!("{e:#}"))
        }
        (Err(e), _) => Err(format!("{e:#}")),
    }
}

/// What a child that failed said, as the error the upload answers.
fn refusal(output: &std::process::Output) -> Error {
    match serde_json::from_slice::<Refusal>(&output.stderr) {
        Ok(Refusal {
            not_a_component: true,
            message,
        }) => Error::NotAComponent(message),
        Ok(Refusal { message, .. }) => Error::Invalid(message),
        Err(_) => Error::Compile(format!(
            "the compiler ended with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// The child's side: reads a component on stdin, writes its artifact on stdout. Exit status 0
/// on success, 2 when the component was refused (a [`Refusal`] on stderr), 1 otherwise.
pub fn child_main() -> i32 {
    #[allow(unsafe_code)]
    // SAFETY: nice(2) only changes this process's scheduling priority; prctl(2) with
    // PR_SET_PDEATHSIG only asks for a signal when the parent goes.
    unsafe {
        libc::nice(NICENESS);
        // A compile nobody waits for any more (the server was killed) stops with its server,
        // rather than burn a core to the end.
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    // The server may have gone before the request above: then nobody reads the artifact.
    if std::os::unix::process::parent_id() == 1 {
        return 1;
    }
    match child() {
        Ok(artifact) => match std::io::stdout().lock().write_all(&artifact) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("write the artifact: {e}");
                1
            }
        },
        Err(Error::NotAComponent(message)) => refuse(true, message),
        Err(Error::Invalid(message)) => refuse(false, message),
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn refuse(not_a_component: bool, message: String) -> i32 {
    let refusal = Refusal {
        not_a_component,
        message,
    };
    eprintln!("{}", serde_json::to_string(&refusal).unwrap_or_default());
    2
}

fn child() -> Result<Vec<u8>> {
    let config = std::env::var(ENGINE_ENV)
        .map_err(|_| Error::Compile(format!("{ENGINE_ENV} is not set")))?;
    let config: invicta_engine::Config =
        serde_json::from_str(&config).map_err(|e| Error::Compile(format!("{ENGINE_ENV}: {e}")))?;
    // Compiling needs no instance pool: the same settings, allocated on demand.
    let engine = Engine::new(&invicta_engine::Config {
        pooling: false,
        baseline_tier: false,
        ..config
    })
    .map_err(|e| Error::Compile(format!("configure the engine: {e:#}")))?;
    let expected = std::env::var(FINGERPRINT_ENV).unwrap_or_default();
    if engine.fingerprint != expected {
        return Err(Error::Compile(format!(
            "the compiler's engine is {}, the server's {expected}",
            engine.fingerprint
        )));
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Compile(format!("read the component: {e}")))?;
    let component = crate::compile(&engine, &bytes)?;
    component
        .serialize()
        .map_err(|e| Error::Compile(format!("{e:#}")))
}
