//! `upload`: how long a component takes from upload to first call, beside plain wasmtime's
//! compile of the same bytes with the same engine settings in the same run (Cranelift, and
//! Winch, the baseline tier an upload runs on first), and how long until its optimized code is
//! ready. Each upload is of bytes the server has not seen, so it compiles (in its child
//! process, at a lower priority). Target: the 12 MB JavaScript component callable within 3 s.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use invicta_tests::Server;
use serde_json::json;

use crate::invoke::{Guests, duration, server_binary};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server binary [default: $CARGO_TARGET_DIR/release/invicta, else target/release/invicta]
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The directory of the guest components [default: tests/components/wasm]
    #[arg(long)]
    components: Option<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(measure(args))
}

/// The guests measured: name, and a function to call first with its parameters.
const GUESTS: [(&str, &str, &str); 3] = [
    ("counter", "add", "[1]"),
    ("types", "echo-u8", "[7]"),
    ("wstd_fetcher", "", ""),
];

/// The examples measured (`make examples`): the same counter from JavaScript and Python, each
/// with its language runtime inside.
const EXAMPLES: [(&str, &str, &str); 2] =
    [("counter_js", "add", "[1]"), ("counter_py", "add", "[1]")];

async fn measure(args: &Args) -> anyhow::Result<()> {
    let binary = server_binary(args.server_bin.as_deref())?;
    let guests = Guests::at(args.components.as_deref());
    let examples = Guests::at(Some(&crate::invoke::workspace_root().join("examples/wasm")));
    let root = tempfile::tempdir_in(".")?;
    let server = Server::start(&binary, &root.path().join("data"))?;
    let api = server.operator().new_tenant("bench", "unlimited").await?;
    let engine = invicta_engine::Engine::new(&invicta_engine::Config::default())?;
    println!(
        "upload bench: upload to first call, beside plain wasmtime's compile of the same bytes"
    );
    println!(
        "{:<16} {:>10} {:>16} {:>14} {:>16} {:>10} {:>16}",
        "component",
        "bytes",
        "wasmtime compile",
        "winch compile",
        "upload → call",
        "ratio",
        "→ optimized"
    );
    let all = GUESTS
        .iter()
        .map(|g| (&guests, g))
        .chain(EXAMPLES.iter().map(|g| (&examples, g)));
    for (from, &(name, function, params)) in all {
        let bytes = from.read(name)?;
        let plain = {
            let (engine, bytes) = (engine.engine.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                wasmtime::component::Component::new(&engine, &bytes).map(|_| t.elapsed())
            })
            .await??
        };
        let winch = match &engine.baseline {
            Some(baseline) => {
                let (engine, bytes) = (baseline.engine.clone(), bytes.clone());
                Some(
                    tokio::task::spawn_blocking(move || {
                        let t = Instant::now();
                        wasmtime::component::Component::new(&engine, &bytes).map(|_| t.elapsed())
                    })
                    .await??,
                )
            }
            None => None,
        };
        let t = Instant::now();
        let uploaded = api.upload(name, bytes.clone()).await?;
        if uploaded.status != 201 {
            bail!("upload {name}: {uploaded:?}");
        }
        if !function.is_empty() {
            let params: serde_json::Value = serde_json::from_str(params)?;
            let reply = api
                .post_json(
                    &format!("/v1/components/{name}/workers/first/invoke"),
                    &json!({ "function": function, "params": params }),
                    None,
                )
                .await?;
            if reply.status != 200 {
                bail!("first call of {name}: {reply:?}");
            }
        }
        let served = t.elapsed();
        // The optimized code, compiled in the background: waited for before the next upload,
        // so that each is measured alone.
        let optimized = loop {
            let shown = api.get(&format!("/v1/components/{name}")).await?;
            if shown.body["code"] != "baseline" {
                break t.elapsed();
            }
            if t.elapsed() > std::time::Duration::from_secs(300) {
                bail!("{name} was not optimized within 300 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        println!(
            "{name:<16} {:>10} {:>16} {:>14} {:>16} {:>9.2}× {:>16}",
            bytes.len(),
            duration(plain),
            winch.map_or_else(|| "-".into(), duration),
            duration(served),
            served.as_secs_f64() / plain.as_secs_f64().max(f64::MIN_POSITIVE),
            duration(optimized),
        );
        if name == "counter_js" {
            let verdict = if served.as_secs_f64() <= 3.0 {
                "ok"
            } else {
                "MISSED"
            };
            println!(
                "  counter_js callable {} after its upload began (target ≤ 3 s): {verdict}",
                duration(served)
            );
        }
    }
    println!(
        "(wstd_fetcher: upload only; its functions call out. counter_js and counter_py: `make examples`)"
    );
    Ok(())
}
