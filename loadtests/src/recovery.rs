//! `recovery`: how long long-lived workers take to come back, with snapshots and archived
//! oplogs, beside the same without snapshots in the same run.
//!
//! - a snapshotting worker with 1,000,000 oplog entries: its first call after SIGKILL and a
//!   restart (target ≤ 200 ms), and how many entries the store still holds (the tail since its
//!   latest snapshot; the rest is archived);
//! - a snapshotting worker with 100,000 invocations, suspended when idle: its resume (target
//!   ≤ 20 ms);
//! - a worker of a component without snapshots and 100,000 invocations: its first call after
//!   SIGKILL, and the replay rate that gives (entries per second).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use invicta_tests::{Api, Server};
use serde_json::{Value, json};

use crate::invoke::{Guests, duration, load, server_binary};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server binary [default: $CARGO_TARGET_DIR/release/invicta, else target/release/invicta]
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The directory of the guest components [default: tests/components/wasm]
    #[arg(long)]
    components: Option<PathBuf>,
    /// Oplog entries of the large snapshotting worker.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Invocations of the resumed worker and of the worker without snapshots.
    #[arg(long, default_value_t = 100_000)]
    invocations: usize,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(measure(args))
}

/// Host calls per `churn` invocation: each is an oplog entry.
const CHURN: u64 = 1_000;
const CLIENTS: usize = 32;
const RESUMES: usize = 7;

fn config(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("invicta.toml");
    // The defaults for snapshots (every 1,000 invocations or 20,000 entries); idle workers
    // suspended after 300 ms, for the resume.
    std::fs::write(&path, "[executor]\nidle_suspend_ms = 300\n")?;
    Ok(path.to_string_lossy().into_owned())
}

/// The time from `start` to the first successful call of `function` on the worker.
async fn first_call(
    api: &Api,
    start: Instant,
    component: &str,
    worker: &str,
    function: &str,
) -> anyhow::Result<(Duration, Value)> {
    loop {
        match api
            .invoke(component, worker, function, json!([]), None)
            .await
        {
            Ok(reply) if reply.status == 200 => return Ok((start.elapsed(), reply.body)),
            Ok(reply) if start.elapsed() > Duration::from_secs(120) => {
                bail!("no answer within 120 s of the restart: {reply:?}")
            }
            Err(e) if start.elapsed() > Duration::from_secs(120) => {
                bail!("no answer within 120 s of the restart: {e:#}")
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// `clients` callers invoke `function(params)` on one worker `count` times.
async fn fill(
    api: &Api,
    component: &str,
    worker: &str,
    function: &'static str,
    params: Value,
    count: usize,
    clients: usize,
) -> anyhow::Result<usize> {
    let name = worker.to_string();
    let (api, component, worker) = (api.clone(), component.to_string(), worker.to_string());
    let params = Arc::new(params);
    let done = load(clients, count, Duration::from_secs(600), move |_| {
        let (api, component, worker, params) = (
            api.clone(),
            component.clone(),
            worker.clone(),
            params.clone(),
        );
        async move {
            let reply = api
                .invoke(&component, &worker, function, (*params).clone(), None)
                .await?;
            if reply.status != 200 {
                bail!("{function}: {reply:?}");
            }
            Ok(())
        }
    })
    .await?;
    if let Some(e) = done.first_error {
        bail!("filling {name}: {} errors, the first: {e}", done.errors);
    }
    Ok(done.summary_count)
}

async fn status(api: &Api, component: &str, worker: &str) -> anyhow::Result<Value> {
    let reply = api
        .get(&format!("/v1/components/{component}/workers/{worker}"))
        .await?;
    if reply.status != 200 {
        bail!("status of {worker}: {reply:?}");
    }
    Ok(reply.body)
}

async fn measure(args: &Args) -> anyhow::Result<()> {
    let binary = server_binary(args.server_bin.as_deref())?;
    let guests = Guests::at(args.components.as_deref());
    let root = tempfile::tempdir_in(".")?;
    let config = config(root.path())?;
    let data = root.path().join("data");
    let start_server = || Server::start_with(&binary, &data, &["--config", &config]);
    let server = start_server()?;
    let api = server.operator().new_tenant("bench", "unlimited").await?;
    api.upload("snap", guests.read("snapshotter")?).await?;
    api.upload("counter", guests.read("counter")?).await?;
    println!("recovery bench: server {}", binary.display());

    // 1. A snapshotting worker with a million entries.
    let churns = usize::try_from(args.entries.div_ceil(CHURN + 2)).unwrap_or(usize::MAX);
    let t = Instant::now();
    fill(&api, "snap", "big", "churn", json!([CHURN]), churns, 4).await?;
    let before = status(&api, "snap", "big").await?;
    let entries = before["oplog_length"].as_u64().unwrap_or(0);
    let archived = before["archived_entries"].as_u64().unwrap_or(0);
    println!(
        "filled `big`: {entries} entries in {} ({churns} invocations); {archived} archived, {} in the store",
        duration(t.elapsed()),
        entries.saturating_sub(archived)
    );
    // 2. A snapshotting worker with 100,000 invocations, and 3. one without snapshots.
    let t = Instant::now();
    fill(
        &api,
        "snap",
        "many",
        "add",
        json!([1]),
        args.invocations,
        CLIENTS,
    )
    .await?;
    fill(
        &api,
        "counter",
        "plain",
        "add",
        json!([1]),
        args.invocations,
        CLIENTS,
    )
    .await?;
    println!(
        "filled `many` and `plain`: {} invocations each in {}",
        args.invocations,
        duration(t.elapsed())
    );
    let plain_entries = status(&api, "counter", "plain").await?["oplog_length"]
        .as_u64()
        .unwrap_or(0);

    // SIGKILL, then the first call of each after the restart.
    server.kill()?;
    let restart = Instant::now();
    let server = start_server()?;
    let listen = restart.elapsed();
    let api = api.at(&server.url);
    // The first authenticated request checks the key (argon2): made on its own first.
    status(&api, "snap", "big").await?;
    let t = Instant::now();
    let (snapshot_recovery, _) = first_call(&api, t, "snap", "big", "state").await?;
    let t = Instant::now();
    let (plain_first, plain_value) = first_call(&api, t, "counter", "plain", "get").await?;
    if plain_value["result"].as_u64() != Some(args.invocations as u64) {
        bail!("`plain` came back as {plain_value}");
    }

    // Resumes of `many` after idle suspension.
    let mut resumes = Vec::new();
    for _ in 0..RESUMES {
        invicta_tests::eventually("`many` suspended", Duration::from_secs(30), || {
            let api = api.clone();
            async move {
                Ok((status(&api, "snap", "many").await?["status"] == "suspended").then_some(()))
            }
        })
        .await?;
        let t = Instant::now();
        let (took, value) = first_call(&api, t, "snap", "many", "state").await?;
        if value["result"][1].as_u64() != Some(args.invocations as u64) {
            bail!("`many` came back as {value}");
        }
        resumes.push(took);
    }
    resumes.sort();
    let resume = resumes[resumes.len() / 2];
    let after = status(&api, "snap", "big").await?;
    server.kill()?;

    let store_entries = after["oplog_length"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(after["archived_entries"].as_u64().unwrap_or(0));
    println!("{:<64} {:>10} {:>12}", "measurement", "value", "target");
    println!(
        "{:<64} {:>10} {:>12}",
        format!("1st call after SIGKILL, {entries} entries, with a snapshot"),
        duration(snapshot_recovery),
        "≤ 200 ms"
    );
    println!(
        "{:<64} {:>10} {:>12}",
        format!(
            "resume after idle suspension, {} invocations (p50 of {RESUMES})",
            args.invocations
        ),
        duration(resume),
        "≤ 20 ms"
    );
    println!(
        "{:<64} {:>10} {:>12}",
        "entries the store holds for `big` after archival (the tail)",
        store_entries,
        "≤ 20,000 + 1 call"
    );
    println!(
        "{:<64} {:>10} {:>12}",
        format!("1st call after SIGKILL, {plain_entries} entries, no snapshots"),
        duration(plain_first),
        "—"
    );
    println!(
        "replay without snapshots: {:.0} entries/s; the restart's listen line came {} after the kill",
        plain_entries as f64 / plain_first.as_secs_f64().max(1e-9),
        duration(listen)
    );
    Ok(())
}
