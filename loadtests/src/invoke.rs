//! `invoke`: durable invocations through the real server over HTTP on loopback, each figure
//! beside its limit measured in the same run: sequential latency beside raw fdatasync,
//! throughput beside an HTTP endpoint that does nothing, cold start and resume beside a warm
//! invocation, recovery after SIGKILL, and the metered burner beside wasmtime without metering.
//!
//! Several servers, each on a fresh data directory, run one after the other: the pool holds
//! 1,000 instances by default, so the 1,000-worker load gets a server of its own, and the resume
//! measurement needs a server that suspends idle workers after 200 ms.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use invicta_tests::Server;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::cpu;
use crate::lean::{self, Template};
use crate::metering::{Burner, Metering};
use crate::stats::{Summary, Timed};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server binary [default: $CARGO_TARGET_DIR/release/invicta, else target/release/invicta]
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The directory of the guest components [default: tests/components/wasm]
    #[arg(long)]
    components: Option<PathBuf>,
    /// Directory on the disk to measure: the servers' data directories are made under it
    /// [default: the current directory]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Every count about 10× smaller: a smoke test in under a minute.
    #[arg(long)]
    quick: bool,
    /// Iterations of the burner's loop per `burn` call (about 26 fuel each).
    #[arg(long, default_value_t = 5_000_000)]
    burn_iterations: u64,
    /// Only the sequential latency: this many rounds of raw fdatasync and sequential
    /// invocations, alternated so that both see the disk in the same state, then the ratio of
    /// their medians (for comparing builds and for profiling).
    #[arg(long, value_name = "ROUNDS")]
    sequential_only: Option<usize>,
    /// Only the load on many workers (server 2), with where the server's CPU went.
    #[arg(long, conflicts_with = "sequential_only")]
    many_only: bool,
}

/// The sizes of the measurements.
struct Counts {
    fsyncs: usize,
    sequential: usize,
    workers: usize,
    load_time: Duration,
    cold: usize,
    resumed: usize,
    /// Invocations in a worker's oplog before it suspends (the scenario's definition, not shrunk).
    history: usize,
    replay_invocations: usize,
    burns: usize,
    /// Outgoing HTTP calls, durable and not.
    http: usize,
    /// Workers asleep at once.
    sleepers: usize,
}

impl Counts {
    fn new(quick: bool) -> Counts {
        if quick {
            Counts {
                fsyncs: 200,
                sequential: 200,
                workers: 100,
                load_time: Duration::from_secs(1),
                cold: 5,
                resumed: 3,
                history: 100,
                replay_invocations: 5_000,
                burns: 5,
                http: 50,
                sleepers: 100,
            }
        } else {
            Counts {
                fsyncs: 2_000,
                sequential: 2_000,
                workers: 1_000,
                load_time: Duration::from_secs(5),
                cold: 50,
                resumed: 20,
                history: 100,
                replay_invocations: 50_000,
                burns: 30,
                http: 500,
                sleepers: 1_000,
            }
        }
    }
}

/// Rounds in which raw fdatasync and sequential invocations alternate: the disk's speed moves
/// by a third between runs minutes apart, and both figures of the ratio should see the same.
const SEQUENTIAL_ROUNDS: usize = 4;
/// Concurrent clients of the many-workers load and of the one-worker load.
const CLIENTS_MANY: usize = 64;
const CLIENTS_ONE: usize = 32;
/// The body of `add(1)`.
const ADD_ONE: &str = r#"{"function":"add","params":[1]}"#;
/// Bounds of the loops that wait for something, so that a broken server ends the run.
const FILL_TIME_MAX: Duration = Duration::from_secs(600);
const WARM_TIME_MAX: Duration = Duration::from_secs(300);
const FIRST_CALL_MAX: Duration = Duration::from_secs(120);
const SUSPEND_WAIT_MAX: Duration = Duration::from_secs(10);

pub fn run(args: &Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_async(args))
}

pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The guest components' directory (`tests/components/wasm` unless given).
pub(crate) struct Guests(PathBuf);

impl Guests {
    pub(crate) fn at(given: Option<&Path>) -> Guests {
        Guests(
            given
                .map(Path::to_path_buf)
                .unwrap_or_else(|| workspace_root().join("tests/components/wasm")),
        )
    }

    /// The bytes of guest `name`.
    pub(crate) fn read(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.0.join(format!("{name}.wasm"));
        std::fs::read(&path).with_context(|| {
            format!(
                "read {} (build the guests with `make components`)",
                path.display()
            )
        })
    }
}

pub(crate) fn server_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release/invicta"));
    }
    candidates.push(workspace_root().join("target/release/invicta"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no server binary at {candidates:?}: run `cargo build --release -p invicta` or pass --server-bin"
            )
        })
}

/// Everything measured, for the table.
struct Figures {
    raw: Summary,
    healthz_sequential: Load,
    sequential: Summary,
    healthz_many: Load,
    many: Load,
    healthz_one: Load,
    one: Load,
    cold: Summary,
    resume: Summary,
    resume_warm: Summary,
    suspended: usize,
    restart: Restart,
    api_burn: Summary,
    burn_fuel: u64,
    in_process: Vec<InProcess>,
    /// A GET to the loopback server from here: the call without durability.
    raw_get: Summary,
    /// The same GET made by a worker through `wasi:http`, durably.
    fetch: Summary,
    /// An invocation whose worker calls `add(1)` on another worker of the same executor.
    worker_call: Summary,
    sleep: Sleep,
    notes: Vec<String>,
}

/// Workers that sleep at once, suspended until their deadline.
struct Sleep {
    /// How late each woke, past its deadline (by the guest's durable wall clock).
    lateness: Summary,
    worst: Duration,
    /// Workers holding an instance, sampled while all slept.
    active_while_asleep: Option<u64>,
}

/// The burner timed in process.
struct InProcess {
    metering: Metering,
    /// Called in a spawned task (like the server's actors) rather than polled in place.
    spawned: bool,
    summary: Summary,
}

struct Restart {
    entries: u64,
    invocations: usize,
    listen: Duration,
    /// Until the first authenticated request (a status read) succeeded.
    authenticated: Duration,
    first_call: Duration,
}

async fn run_async(args: &Args) -> anyhow::Result<()> {
    let counts = Counts::new(args.quick);
    let binary = server_binary(args.server_bin.as_deref())?;
    let guests = Guests::at(args.components.as_deref());
    let read = |name: &str| guests.read(name);
    let (counter, burner, fetcher, caller, waiter) = (
        read("counter")?,
        read("burner")?,
        read("fetcher")?,
        read("caller")?,
        read("waiter")?,
    );
    let root = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in(".")?,
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut notes = Vec::new();
    let start = Instant::now();
    let progress = |what: &str| eprintln!("[{:>6.1}s] {what}", start.elapsed().as_secs_f64());

    let s2 = root.path().join("s2");
    let server_2 = async || many_workers(&binary, &s2, &counter, &http, &counts).await;
    if args.many_only {
        let (healthz, many, notes) = server_2().await?;
        println!(
            "{CLIENTS_MANY} clients × {} workers: {:.0}/s, p50 {}, p99 {} ({} errors); /healthz {:.0}/s",
            counts.workers,
            many.summary.per_second,
            duration(many.summary.median),
            duration(many.summary.p99),
            many.errors,
            healthz.summary.per_second
        );
        for note in notes {
            println!("{note}");
        }
        return Ok(());
    }

    // Server 1, default configuration: fdatasync, sequential latency, cold start, the burner.
    progress("server 1: raw fdatasync, sequential invocations, cold starts, burner");
    let data = root.path().join("s1");
    std::fs::create_dir(&data)?;
    // The loopback server the durable HTTP calls reach, allowed by the executor's config.
    let config = data.join("invicta.toml");
    std::fs::write(
        &config,
        "[executor.http]\nallow_private_hosts = [\"127.0.0.1\"]\n",
    )?;
    let server = Server::start_with(&binary, &data, &["--config", &config.to_string_lossy()])?;
    let api = Api::new_tenant(&server, &http).await?;
    api.upload("counter", &counter).await?;
    if let Some(rounds) = args.sequential_only {
        return sequential_rounds(&api, &data, rounds, counts.sequential).await;
    }
    api.upload("burner", &burner).await?;
    api.upload("fetcher", &fetcher).await?;
    api.upload("caller", &caller).await?;
    let remote = loopback_server().await?;
    // The sequential client on a thread of its own, as its figures hold its own wakes.
    let n = counts.sequential;
    let healthz_sequential = on_one_thread(&api, move |api| async move {
        healthz(&api, 1, n, WARM_TIME_MAX).await
    })
    .await?;
    let (raw, sequential) = sequential_beside_fdatasync(
        &api,
        &data,
        SEQUENTIAL_ROUNDS,
        counts.fsyncs / SEQUENTIAL_ROUNDS,
        counts.sequential / SEQUENTIAL_ROUNDS,
    )
    .await?;
    let (raw, sequential) = (raw.summary(), sequential.summary());
    notes.push(format!(
        "raw fdatasync and the sequential invocations alternate in {SEQUENTIAL_ROUNDS} rounds of {} and {}",
        counts.fsyncs / SEQUENTIAL_ROUNDS,
        counts.sequential / SEQUENTIAL_ROUNDS
    ));
    let cold = cold_starts(&api, counts.cold).await?;
    let raw_get = raw_gets(&http, &remote, counts.http).await?;
    let fetch = fetches(&api, &remote, counts.http).await?;
    let worker_call = worker_calls(&api, counts.http).await?;
    let (api_burn, burn_fuel, burn_result) =
        api_burns(&api, args.burn_iterations, counts.burns).await?;
    server.kill()?;

    // Server 2: many workers.
    progress(&format!(
        "server 2: {CLIENTS_MANY} clients over {} workers",
        counts.workers
    ));
    let (healthz_many, many, server_2_notes) = server_2().await?;
    notes.extend(server_2_notes);

    // Server 3: one worker under load, filled up, killed and restarted.
    progress(&format!(
        "server 3: {CLIENTS_ONE} clients on one worker, then {} invocations, SIGKILL, restart",
        counts.replay_invocations
    ));
    let data = root.path().join("s3");
    std::fs::create_dir(&data)?;
    let server = Server::start(&binary, &data)?;
    let api = Api::new_tenant(&server, &http).await?;
    api.upload("counter", &counter).await?;
    let healthz_one = healthz(&api, CLIENTS_ONE, usize::MAX, counts.load_time).await?;
    let big = Arc::new(vec![api.invoke_url("counter", "big")]);
    api.post(&big[0], ADD_ONE).await?;
    // Capped so that `big` never ends up with more invocations than the recovery measures.
    let one = load_adds(
        &api,
        &big,
        CLIENTS_ONE,
        counts.replay_invocations - 1,
        counts.load_time,
    )
    .await?;
    let mut adds = 1 + one.summary_count;
    let fill = load_adds(
        &api,
        &big,
        CLIENTS_MANY,
        counts.replay_invocations.saturating_sub(adds),
        FILL_TIME_MAX,
    )
    .await?;
    adds += fill.summary_count;
    let errors = one.errors + fill.errors;
    if errors > 0 {
        notes.push(format!(
            "worker `big`: {errors} invocations failed while filling it (the counter check below may be off by that many)"
        ));
    }
    let status = api.status("counter", "big").await?;
    let entries = status["oplog_length"].as_u64().unwrap_or(0);
    server.kill()?;
    let restart_start = Instant::now();
    let server = Server::start(&binary, &data)?;
    let listen = restart_start.elapsed();
    let api = api.at(&server);
    // The first authenticated request verifies the key (argon2, cached afterwards). It is timed
    // on its own, a status read that replays nothing, so that the replay is not charged for it.
    let authenticated = loop {
        match api.status("counter", "big").await {
            Ok(_) => break restart_start.elapsed(),
            Err(e) if restart_start.elapsed() > FIRST_CALL_MAX => {
                bail!("no successful request within {FIRST_CALL_MAX:?} of the restart: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let url = api.invoke_url("counter", "big");
    let (first_call, result) = loop {
        match api.post(&url, ADD_ONE).await {
            Ok(body) => break (restart_start.elapsed(), body),
            Err(e) if restart_start.elapsed() > FIRST_CALL_MAX => {
                bail!("no successful invocation within {FIRST_CALL_MAX:?} of the restart: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let expected = adds as u64 + 1;
    if result["result"].as_u64() != Some(expected) {
        notes.push(format!(
            "after the restart `big` returned {} where {expected} was expected ({adds} acknowledged adds before the kill, then one)",
            result["result"]
        ));
    }
    server.kill()?;
    let restart = Restart {
        entries,
        invocations: adds,
        listen,
        authenticated,
        first_call,
    };

    // Server 4 suspends workers idle for 200 ms.
    progress(&format!(
        "server 4 (idle_suspend_ms = 200): resume of {} suspended workers",
        counts.resumed
    ));
    let data = root.path().join("s4");
    std::fs::create_dir(&data)?;
    let config = root.path().join("s4.toml");
    std::fs::write(&config, "[executor]\nidle_suspend_ms = 200\n")?;
    let config = config.to_str().context("a UTF-8 temporary path")?;
    let server = Server::start_with(&binary, &data, &["--config", config])?;
    let api = Api::new_tenant(&server, &http).await?;
    api.upload("counter", &counter).await?;
    let (resume, resume_warm, suspended) = resumes(&api, counts.resumed, counts.history).await?;
    if suspended < counts.resumed {
        notes.push(format!(
            "only {suspended} of {} workers showed \"suspended\" before their resume was timed",
            counts.resumed
        ));
    }
    // Sleepers: every worker waits past the suspension threshold at once.
    progress(&format!(
        "server 4: {} workers sleeping {} s at once",
        counts.sleepers,
        NAP.as_secs()
    ));
    api.upload("waiter", &waiter).await?;
    let sleep = sleepers(&api, counts.sleepers, NAP).await?;
    server.kill()?;

    // No server runs now: the burner in process, without and with metering.
    progress("in process: the burner under three engine configurations");
    // Each configuration runs its calls in tasks of the multi-threaded runtime, as the server's
    // worker actors do: a yield (every 100,000 fuel) goes through the scheduler. Fuel is also
    // measured polled in place (no task, so a yield is a plain re-poll), which isolates the
    // price of those trips through the scheduler from the price of counting fuel.
    // In rounds, one call of each per round, so that drift in the machine's speed (other
    // tenants, frequency) falls on all alike.
    let mut burners = Vec::new();
    for (metering, spawned) in [
        (Metering::None, true),
        (Metering::Fuel, true),
        (Metering::FuelEpoch, true),
        (Metering::Fuel, false),
    ] {
        let burner = Burner::new(&burner, metering).await?;
        burners.push((burner, spawned, Vec::new()));
    }
    let iterations = args.burn_iterations;
    for _ in 0..counts.burns {
        let mut next = Vec::with_capacity(burners.len());
        for (mut burner, spawned, mut samples) in burners {
            let (burner, outcome) = if spawned {
                tokio::spawn(async move {
                    let outcome = burner.call(iterations).await;
                    (burner, outcome)
                })
                .await?
            } else {
                let outcome = burner.call(iterations).await;
                (burner, outcome)
            };
            let (took, result) = outcome?;
            samples.push(took);
            if result != burn_result {
                bail!(
                    "burn({iterations}) returned {result} in process ({}) but {burn_result} through the server",
                    burner.metering.label()
                );
            }
            next.push((burner, spawned, samples));
        }
        burners = next;
    }
    let in_process: Vec<InProcess> = burners
        .into_iter()
        .map(|(burner, spawned, mut samples)| {
            let total = samples.iter().sum();
            InProcess {
                metering: burner.metering,
                spawned,
                summary: Summary::of(&mut samples, total),
            }
        })
        .collect();
    progress("done");

    for (what, load) in [
        ("GET /healthz, 1 client", &healthz_sequential),
        ("GET /healthz, many clients", &healthz_many),
        ("GET /healthz, clients of one worker", &healthz_one),
        ("the load on many workers", &many),
        ("the load on one worker", &one),
    ] {
        if load.errors > 0 {
            notes.push(format!(
                "{what}: {} failed requests, the first: {}",
                load.errors,
                load.first_error.as_deref().unwrap_or_default()
            ));
        }
    }
    let figures = Figures {
        raw,
        healthz_sequential,
        sequential,
        healthz_many,
        many,
        healthz_one,
        one,
        cold,
        resume,
        resume_warm,
        suspended,
        restart,
        api_burn,
        burn_fuel,
        in_process,
        raw_get,
        fetch,
        worker_call,
        sleep,
        notes,
    };
    print(&figures, &counts, args, &binary)?;
    Ok(())
}

/// The public API, as much of it as the scenario uses.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    /// The tenant's API key, sent as `Authorization: Bearer <key>`.
    key: String,
}

impl Api {
    /// A client of a new tenant on the `unlimited` plan (no quota or rate limit binds), made by
    /// the operator, with a key of every scope.
    async fn new_tenant(server: &Server, http: &reqwest::Client) -> anyhow::Result<Api> {
        // The unlimited plan, with a worker's memory at a pool slot (256 MiB): above it,
        // workers run in instances allocated on demand, which start slower.
        let operator = server.operator();
        let mut plan = operator.get("/v1/admin/plans").await?.body["plans"]
            .as_array()
            .and_then(|plans| plans.iter().find(|p| p["name"] == "unlimited").cloned())
            .context("the unlimited plan")?;
        plan["name"] = json!("bench");
        plan["memory_per_worker_bytes"] = json!(256 * 1024 * 1024);
        let put = operator.put_json("/v1/admin/plans/bench", &plan).await?;
        anyhow::ensure!(put.status == 200, "put the bench plan: {put:?}");
        let tenant = operator
            .new_tenant("bench", "bench")
            .await
            .context("create the benchmark's tenant")?;
        Ok(Api {
            http: http.clone(),
            base: server.url.trim_end_matches('/').to_string(),
            key: tenant.key.context("the tenant's key")?,
        })
    }

    /// The same tenant on a restarted server.
    fn at(&self, server: &Server) -> Api {
        Api {
            base: server.url.trim_end_matches('/').to_string(),
            ..self.clone()
        }
    }

    fn invoke_url(&self, component: &str, worker: &str) -> String {
        format!(
            "{}/v1/components/{component}/workers/{worker}/invoke",
            self.base
        )
    }

    async fn upload(&self, component: &str, wasm: &[u8]) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/components/{component}", self.base))
            .bearer_auth(&self.key)
            .header(CONTENT_TYPE, "application/wasm")
            .body(wasm.to_vec())
            .send()
            .await?;
        expect(response, &[200, 201])
            .await
            .with_context(|| format!("upload {component}"))?;
        // An upload runs at once on the baseline tier and is optimized in the background: the
        // loads measure the optimized code, without that compile beside them.
        let started = Instant::now();
        loop {
            let response = self
                .http
                .get(format!("{}/v1/components/{component}", self.base))
                .bearer_auth(&self.key)
                .send()
                .await?;
            let shown = expect(response, &[200]).await?;
            if shown["code"] != "baseline" {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("{component} was not optimized within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn create_worker(&self, component: &str, worker: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/components/{component}/workers", self.base))
            .bearer_auth(&self.key)
            .json(&json!({ "name": worker }))
            .send()
            .await?;
        expect(response, &[201]).await?;
        Ok(())
    }

    /// POSTs a JSON `body` to an invoke URL and returns the reply's JSON.
    async fn post(&self, url: &str, body: impl Into<reqwest::Body>) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.key)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        expect(response, &[200]).await
    }

    /// The server's metrics now, as the text it serves.
    async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?;
        Ok(Metrics(text))
    }

    /// The group committer's totals so far, from the server's metrics.
    async fn commit_totals(&self) -> anyhow::Result<CommitTotals> {
        let metrics = self.metrics().await?;
        let value = |name: &str| {
            metrics
                .value(name)
                .ok_or_else(|| anyhow::anyhow!("the server's metrics have no {name}"))
        };
        Ok(CommitTotals {
            commits: value("invicta_commit_seconds_count")?,
            seconds: value("invicta_commit_seconds_sum")?,
            requests: value("invicta_commit_batch_requests_sum")?,
        })
    }

    async fn status(&self, component: &str, worker: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!(
                "{}/v1/components/{component}/workers/{worker}",
                self.base
            ))
            .bearer_auth(&self.key)
            .send()
            .await?;
        expect(response, &[200]).await
    }
}

async fn expect(response: reqwest::Response, ok: &[u16]) -> anyhow::Result<Value> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    if !ok.contains(&status) {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).context("a JSON reply")
}

/// Server 2: `/healthz` at 64 clients, then `add(1)` from 64 clients over 1,000 workers (warmed
/// first), with notes on what the committer and the server's threads did meanwhile.
async fn many_workers(
    binary: &Path,
    data: &Path,
    counter: &[u8],
    http: &reqwest::Client,
    counts: &Counts,
) -> anyhow::Result<(Load, Load, Vec<String>)> {
    let mut notes = Vec::new();
    std::fs::create_dir(data)?;
    let server = Server::start(binary, data)?;
    let api = Api::new_tenant(&server, http).await?;
    api.upload("counter", counter).await?;
    let healthz_many = healthz(&api, CLIENTS_MANY, usize::MAX, counts.load_time).await?;
    let urls: Arc<Vec<String>> = Arc::new(
        (0..counts.workers)
            .map(|i| api.invoke_url("counter", &format!("w{i}")))
            .collect(),
    );
    let warm = load_adds(&api, &urls, CLIENTS_MANY, urls.len(), WARM_TIME_MAX).await?;
    if warm.errors > 0 {
        bail!(
            "warming {} workers: {} errors, the first: {}",
            urls.len(),
            warm.errors,
            warm.first_error.unwrap_or_default()
        );
    }
    let commits_before = api.commit_totals().await?;
    let cpu_before = cpu::Snapshot::take(server.pid());
    let many = load_adds(&api, &urls, CLIENTS_MANY, usize::MAX, counts.load_time).await?;
    let commits = api.commit_totals().await?.since(&commits_before);
    notes.push(commits.describe(counts.load_time));
    if let (Some(before), Some(after)) = (cpu_before, cpu::Snapshot::take(server.pid())) {
        let spent = after.since(&before, many.summary_count);
        notes.push(spent.describe("the load on many workers"));
    }
    server.kill()?;
    Ok((healthz_many, many, notes))
}

/// `n` invocations of `add(1)` one after the other on one warm worker.
async fn sequential(api: &Api, n: usize) -> anyhow::Result<Timed> {
    let add = Template::post_json(&api.invoke_url("counter", "seq"), &api.key, ADD_ONE)?;
    let mut connection = lean::Connection::default();
    let result = |body: &[u8]| {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|reply| reply["result"].as_u64())
    };
    let first = result(&connection.send_ok(&add).await?).context("add(1) returned no number")?;
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let reply = connection.send_ok(&add).await?;
        samples.push(t.elapsed());
        let expected = first + i as u64 + 1;
        if result(&reply) != Some(expected) {
            bail!(
                "add(1) returned {} where {expected} was expected",
                String::from_utf8_lossy(&reply)
            );
        }
    }
    Ok(Timed {
        samples,
        total: start.elapsed(),
    })
}

/// Runs `work` on a current-thread runtime, in a thread of its own; it makes its own connection
/// (the lean client), not through `api.http`, whose connections belong to the main runtime.
async fn on_one_thread<T, F, Fut>(api: &Api, work: F) -> anyhow::Result<T>
where
    F: FnOnce(Api) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let api = api.clone();
    one_thread(move || work(api)).await
}

/// Runs `work` on a current-thread runtime, in a thread of its own. A sequential client on the
/// multi-threaded runtime passes each response between its threads: two or three wakes per
/// request, which its latency holds (~30 µs here). Many clients on it hand responses between
/// threads just as much and take more of the machine the server shares with them: `/healthz`
/// at 64 clients went from ~77,000 to ~100,000 a second on one thread.
async fn one_thread<T, F, Fut>(work: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(work())
    })
    .await?
}

/// `rounds` rounds of `fsyncs` raw fdatasyncs then `calls` sequential invocations, each round's
/// figures printed: the pooled times of each.
async fn sequential_beside_fdatasync(
    api: &Api,
    data: &Path,
    rounds: usize,
    fsyncs: usize,
    calls: usize,
) -> anyhow::Result<(Timed, Timed)> {
    let (mut raws, mut invocations) = (Timed::default(), Timed::default());
    // A round not counted first: the worker's first calls after the server's start run slower
    // (~380 µs against ~250 for the rounds after it here), which is not a warm worker's figure.
    on_one_thread(api, move |api| async move { sequential(&api, calls).await }).await?;
    for round in 0..rounds.max(1) {
        let raw = crate::store::raw_append_fdatasync_timed(&data.join("raw-fsync.log"), fsyncs)?;
        let call =
            on_one_thread(api, move |api| async move { sequential(&api, calls).await }).await?;
        let (r, c) = (raw.summary(), call.summary());
        eprintln!(
            "          sequential round {round}: fdatasync p50 {}, invoke p50 {} p99 {}: {:.2}×",
            duration(r.median),
            duration(c.median),
            duration(c.p99),
            ratio(c.median, r.median)
        );
        raws.append(raw);
        invocations.append(call);
    }
    Ok((raws, invocations))
}

/// `--sequential-only`: the sequential latency beside fdatasync, alone.
async fn sequential_rounds(api: &Api, data: &Path, rounds: usize, n: usize) -> anyhow::Result<()> {
    let (raw, calls) = sequential_beside_fdatasync(api, data, rounds, n, n).await?;
    let (raw, calls) = (raw.summary(), calls.summary());
    println!(
        "{} rounds of {n}: fdatasync p50 {}, invoke p50 {} p99 {}: {:.2}× fdatasync",
        rounds.max(1),
        duration(raw.median),
        duration(calls.median),
        duration(calls.p99),
        ratio(calls.median, raw.median)
    );
    Ok(())
}

/// A loopback HTTP server answering `GET /echo` with a short body; its URL.
async fn loopback_server() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/echo", listener.local_addr()?);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buffer = vec![0_u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = stream.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buffer[..n]);
                    // One response per request head (bodies are empty: GETs).
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let reply =
                            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello";
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(url)
}

/// `n` GETs of `url` from the load generator, one after the other.
async fn raw_gets(http: &reqwest::Client, url: &str, n: usize) -> anyhow::Result<Summary> {
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let body = http.get(url).send().await?.text().await?;
        samples.push(t.elapsed());
        if body != "hello" {
            bail!("the loopback server answered {body:?}");
        }
    }
    Ok(Summary::of(&mut samples, start.elapsed()))
}

/// `n` invocations of the fetcher's `fetch(url)` on one warm worker, one after the other.
async fn fetches(api: &Api, url: &str, n: usize) -> anyhow::Result<Summary> {
    let invoke = api.invoke_url("fetcher", "f");
    let body = serde_json::json!({ "function": "fetch", "params": [url] }).to_string();
    api.post(&invoke, body.clone()).await?;
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let reply = api.post(&invoke, body.clone()).await?;
        samples.push(t.elapsed());
        if reply["result"]["ok"] != "200 hello" {
            bail!("fetch returned {}", reply["result"]);
        }
    }
    Ok(Summary::of(&mut samples, start.elapsed()))
}

/// `n` invocations of the caller's `call-add`, each calling `add(1)` on another worker.
async fn worker_calls(api: &Api, n: usize) -> anyhow::Result<Summary> {
    let invoke = api.invoke_url("caller", "c");
    let body = serde_json::json!({ "function": "call-add", "params": ["callee", 1] }).to_string();
    api.post(&invoke, body.clone()).await?;
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let reply = api.post(&invoke, body.clone()).await?;
        samples.push(t.elapsed());
        let expected = (i + 2).to_string();
        if reply["result"]["ok"] != expected.as_str() {
            bail!("call-add returned {}", reply["result"]);
        }
    }
    Ok(Summary::of(&mut samples, start.elapsed()))
}

/// How long each sleeper sleeps: longer than it takes to put them all to sleep.
const NAP: Duration = Duration::from_secs(5);

/// `n` workers each sleep `nap` in one enqueued invocation, all at once; how late each woke.
async fn sleepers(api: &Api, n: usize, nap: Duration) -> anyhow::Result<Sleep> {
    let nap_ms = u64::try_from(nap.as_millis())?;
    let body = json!({ "function": "nap", "params": [nap_ms] }).to_string();
    let started = Instant::now();
    for i in 0..n {
        let response = api
            .http
            .post(format!(
                "{}/v1/components/waiter/workers/sleeper-{i}/enqueue",
                api.base
            ))
            .bearer_auth(&api.key)
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "nap")
            .body(body.clone())
            .send()
            .await?;
        expect(response, &[202]).await?;
    }
    // Halfway through the nap of the last one, every worker should be asleep without an instance.
    let asleep_at = started.elapsed() + nap / 2;
    let mut active_while_asleep = None;
    if asleep_at < nap {
        tokio::time::sleep(nap / 2).await;
        active_while_asleep = api
            .metrics()
            .await?
            .value("invicta_active_workers")
            .map(|v| v as u64);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..n {
        let (api, gate) = (api.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let url = format!(
                "{}/v1/components/waiter/workers/sleeper-{i}/invocations/nap?wait_ms=20000",
                api.base
            );
            let deadline = Instant::now() + FIRST_CALL_MAX;
            loop {
                let response = api.http.get(&url).bearer_auth(&api.key).send().await?;
                let status = expect(response, &[200]).await?;
                match status["status"].as_str() {
                    Some("completed") => {
                        let slept = status["result"].as_u64().context("nap's result")?;
                        return anyhow::Ok(Duration::from_millis(slept.saturating_sub(nap_ms)));
                    }
                    Some("pending") if Instant::now() < deadline => {}
                    _ => bail!("sleeper-{i}: {status}"),
                }
            }
        });
    }
    let mut samples = Vec::with_capacity(n);
    while let Some(late) = tasks.join_next().await {
        samples.push(late??);
    }
    let worst = samples.iter().max().copied().unwrap_or_default();
    let total = started.elapsed();
    Ok(Sleep {
        lateness: Summary::of(&mut samples, total),
        worst,
        active_while_asleep,
    })
}

/// `n` new workers, each created and invoked once, one after the other.
async fn cold_starts(api: &Api, n: usize) -> anyhow::Result<Summary> {
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let worker = format!("cold{i}");
        let t = Instant::now();
        api.create_worker("counter", &worker).await?;
        api.post(&api.invoke_url("counter", &worker), ADD_ONE)
            .await?;
        samples.push(t.elapsed());
    }
    Ok(Summary::of(&mut samples, start.elapsed()))
}

/// `n` calls of `burn(iterations)` on one warm burner worker: their latency, the fuel of one,
/// and the result.
async fn api_burns(api: &Api, iterations: u64, n: usize) -> anyhow::Result<(Summary, u64, u64)> {
    let url = api.invoke_url("burner", "burn");
    let body = |i: u64| json!({ "function": "burn", "params": [i] }).to_string();
    api.post(&url, body(1_000)).await?;
    let mut samples = Vec::with_capacity(n);
    let (mut fuel, mut result) = (0, 0);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let reply = api.post(&url, body(iterations)).await?;
        samples.push(t.elapsed());
        fuel = reply["fuel_consumed"].as_u64().unwrap_or(0);
        result = reply["result"].as_u64().context("burn's result")?;
    }
    Ok((Summary::of(&mut samples, start.elapsed()), fuel, result))
}

/// Resume of `n` suspended workers with `history` invocations each: the latency of the first
/// invocation after suspension, of the one after it (warm), and how many showed "suspended".
async fn resumes(api: &Api, n: usize, history: usize) -> anyhow::Result<(Summary, Summary, usize)> {
    let workers: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    let mut tasks = Vec::new();
    for worker in &workers {
        let (api, url) = (api.clone(), api.invoke_url("counter", worker));
        tasks.push(tokio::spawn(async move {
            for _ in 0..history {
                api.post(&url, ADD_ONE).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let waited = Instant::now();
    let mut suspended = 0;
    loop {
        let mut count = 0;
        for worker in &workers {
            if api.status("counter", worker).await?["status"] == "suspended" {
                count += 1;
            }
        }
        suspended = suspended.max(count);
        if count == n || waited.elapsed() > SUSPEND_WAIT_MAX {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut cold, mut warm) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let start = Instant::now();
    for worker in &workers {
        let url = api.invoke_url("counter", worker);
        let t = Instant::now();
        let reply = api.post(&url, ADD_ONE).await?;
        cold.push(t.elapsed());
        let expected = history as u64 + 1;
        if reply["result"].as_u64() != Some(expected) {
            bail!(
                "the resumed worker {worker} returned {} where {expected} was expected",
                reply["result"]
            );
        }
        let t = Instant::now();
        api.post(&url, ADD_ONE).await?;
        warm.push(t.elapsed());
    }
    let total = start.elapsed();
    Ok((
        Summary::of(&mut cold, total),
        Summary::of(&mut warm, total),
        suspended,
    ))
}

/// The outcome of a load.
pub(crate) struct Load {
    pub summary: Summary,
    /// Successful operations.
    pub summary_count: usize,
    pub errors: usize,
    pub first_error: Option<String>,
}

/// The server's metrics in Prometheus' text format.
struct Metrics(String);

impl Metrics {
    /// The value of the sample `name` (without labels).
    fn value(&self, name: &str) -> Option<f64> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
    }
}

/// What the group committer did: its transactions, the time they took, the requests in them.
struct CommitTotals {
    commits: f64,
    seconds: f64,
    requests: f64,
}

impl CommitTotals {
    fn since(&self, before: &CommitTotals) -> CommitTotals {
        CommitTotals {
            commits: self.commits - before.commits,
            seconds: self.seconds - before.seconds,
            requests: self.requests - before.requests,
        }
    }

    /// A line on the group commits of a load that lasted `time`.
    fn describe(&self, time: Duration) -> String {
        let commits = self.commits.max(1.0);
        format!(
            "group commits under the load on many workers: {:.0}, {:.1} requests and {} each on average, the committer busy {:.0}% of the time",
            self.commits,
            self.requests / commits,
            duration(Duration::from_secs_f64(self.seconds / commits)),
            100.0 * self.seconds / time.as_secs_f64()
        )
    }
}

/// `clients` tasks run `op(ticket)` with tickets 0, 1, 2, … until `max` tickets are out or
/// `time` has passed.
pub(crate) async fn load<F, Fut>(
    clients: usize,
    max: usize,
    time: Duration,
    op: F,
) -> anyhow::Result<Load>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let tickets = Tickets::new(max, time);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (op, tickets) = (op.clone(), tickets.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while let Some(ticket) = tickets.take() {
                    let t = Instant::now();
                    tally.record(t, op(ticket).await);
                }
                tally
            })
        })
        .collect();
    Tally::gather(tasks, tickets.start).await
}

/// [`load`] with the lean client: each of `clients` tasks keeps a connection of its own and sends
/// `requests[ticket % len]` (all to one server), expecting 200 (and the body `expect`, if given).
pub(crate) async fn load_lean(
    requests: Arc<Vec<Template>>,
    expect: Option<&'static str>,
    clients: usize,
    max: usize,
    time: Duration,
) -> anyhow::Result<Load> {
    // The clients share one thread (see `one_thread`).
    one_thread(move || async move {
        let tickets = Tickets::new(max, time);
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (requests, tickets) = (requests.clone(), tickets.clone());
                tokio::spawn(async move {
                    let mut connection = lean::Connection::default();
                    let mut tally = Tally::default();
                    while let Some(ticket) = tickets.take() {
                        let t = Instant::now();
                        let request = &requests[ticket % requests.len().max(1)];
                        let answer = connection.send_ok(request).await;
                        tally.record(
                            t,
                            answer.and_then(|body| match expect {
                                Some(expected) if body != expected.as_bytes() => bail!(
                                    "answered {:?}, not {expected:?}",
                                    String::from_utf8_lossy(&body)
                                ),
                                _ => Ok(()),
                            }),
                        );
                    }
                    tally
                })
            })
            .collect();
        Tally::gather(tasks, tickets.start).await
    })
    .await
}

/// The tickets of a load: 0, 1, 2, … until `max` are out or the deadline has passed.
#[derive(Clone)]
struct Tickets {
    next: Arc<AtomicUsize>,
    max: usize,
    start: Instant,
    deadline: Instant,
}

impl Tickets {
    fn new(max: usize, time: Duration) -> Tickets {
        let start = Instant::now();
        Tickets {
            next: Arc::new(AtomicUsize::new(0)),
            max,
            start,
            deadline: start + time,
        }
    }

    fn take(&self) -> Option<usize> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        (ticket < self.max).then_some(ticket)
    }
}

/// What one client task of a load saw.
#[derive(Default)]
struct Tally {
    samples: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, started: Instant, result: anyhow::Result<()>) {
        match result {
            Ok(()) => self.samples.push(started.elapsed()),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    async fn gather(
        tasks: Vec<tokio::task::JoinHandle<Tally>>,
        start: Instant,
    ) -> anyhow::Result<Load> {
        let mut all = Tally::default();
        for task in tasks {
            let tally = task.await?;
            all.samples.extend(tally.samples);
            all.errors += tally.errors;
            all.first_error = all.first_error.or(tally.first_error);
        }
        let summary_count = all.samples.len();
        Ok(Load {
            summary: Summary::of(&mut all.samples, start.elapsed()),
            summary_count,
            errors: all.errors,
            first_error: all.first_error,
        })
    }
}

/// `add(1)` on `urls` in turn from `clients` tasks.
async fn load_adds(
    api: &Api,
    urls: &Arc<Vec<String>>,
    clients: usize,
    max: usize,
    time: Duration,
) -> anyhow::Result<Load> {
    let requests = urls
        .iter()
        .map(|url| Template::post_json(url, &api.key, ADD_ONE))
        .collect::<anyhow::Result<Vec<_>>>()?;
    load_lean(Arc::new(requests), None, clients, max, time).await
}

/// The HTTP layer's own limit on this machine: `GET /healthz`, which does no work.
async fn healthz(api: &Api, clients: usize, max: usize, time: Duration) -> anyhow::Result<Load> {
    let url = format!("{}/healthz", api.base);
    let requests = Arc::new(vec![Template::get(&url)?]);
    load_lean(requests, None, clients, max, time).await
}

pub(crate) fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// A target and whether it was met.
fn verdict(target: &str, met: bool) -> String {
    format!("{target} {}", if met { "ok" } else { "MISSED" })
}

#[derive(Default)]
struct Row {
    name: String,
    p50: String,
    p99: String,
    rate: String,
    limit: String,
    ratio: String,
    target: String,
}

fn latency_row(name: impl Into<String>, s: &Summary) -> Row {
    Row {
        name: name.into(),
        p50: duration(s.median),
        p99: duration(s.p99),
        rate: format!("{:.0}", s.per_second),
        ..Row::default()
    }
}

fn print(f: &Figures, counts: &Counts, args: &Args, binary: &Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    rows.push(Row {
        limit: "(the limit)".into(),
        ..latency_row(
            format!("raw 256-byte append + fdatasync (n={})", counts.fsyncs),
            &f.raw,
        )
    });
    rows.push(Row {
        limit: "(HTTP round trip)".into(),
        ..latency_row(
            format!("GET /healthz, 1 client (n={})", counts.sequential),
            &f.healthz_sequential.summary,
        )
    });
    let seq_ratio = ratio(f.sequential.median, f.raw.median);
    rows.push(Row {
        limit: format!("fdatasync p50 {}", duration(f.raw.median)),
        ratio: format!("{seq_ratio:.2}×"),
        target: verdict("≤ 2.5×", seq_ratio <= 2.5),
        ..latency_row(
            format!(
                "invoke, 1 warm worker, sequential (n={})",
                counts.sequential
            ),
            &f.sequential,
        )
    });
    for (clients, workers, healthz, load, target) in [
        (
            CLIENTS_MANY,
            counts.workers,
            &f.healthz_many,
            &f.many,
            20_000.0,
        ),
        (CLIENTS_ONE, 1, &f.healthz_one, &f.one, 5_000.0),
    ] {
        rows.push(Row {
            limit: "(the HTTP limit)".into(),
            ..latency_row(format!("GET /healthz, {clients} clients"), &healthz.summary)
        });
        let rate = load.summary.per_second;
        rows.push(Row {
            limit: format!("healthz {:.0}/s", healthz.summary.per_second),
            ratio: format!("{:.2}×", rate / healthz.summary.per_second.max(1e-9)),
            target: verdict(&format!("≥ {target:.0}/s"), rate >= target),
            ..latency_row(
                format!(
                    "invoke, {clients} clients × {workers} worker{}",
                    if workers == 1 { "" } else { "s" }
                ),
                &load.summary,
            )
        });
    }
    rows.push(Row {
        limit: format!("warm p50 {}", duration(f.sequential.median)),
        ratio: format!("{:.1}×", ratio(f.cold.median, f.sequential.median)),
        rate: String::new(),
        ..latency_row(
            format!("cold start: create + first invoke (n={})", counts.cold),
            &f.cold,
        )
    });
    rows.push(Row {
        limit: format!("next, warm p50 {}", duration(f.resume_warm.median)),
        ratio: format!("{:.1}×", ratio(f.resume.median, f.resume_warm.median)),
        rate: String::new(),
        ..latency_row(
            format!(
                "resume: suspended, {} invocations (n={})",
                counts.history, counts.resumed
            ),
            &f.resume,
        )
    });
    let r = &f.restart;
    rows.push(Row {
        name: "after SIGKILL: spawn → listen line".into(),
        p50: duration(r.listen),
        ..Row::default()
    });
    rows.push(Row {
        name: "after SIGKILL: spawn → 1st authenticated request".into(),
        p50: duration(r.authenticated),
        limit: format!("listen {}", duration(r.listen)),
        ..Row::default()
    });
    let replay_time = r.first_call.saturating_sub(r.authenticated);
    rows.push(Row {
        name: format!("after SIGKILL: spawn → 1st call, {} entries", r.entries),
        p50: duration(r.first_call),
        rate: format!(
            "{:.0}",
            r.entries as f64 / replay_time.as_secs_f64().max(1e-9)
        ),
        limit: format!("listen {}", duration(r.listen)),
        ratio: format!("{:.1}×", ratio(r.first_call, r.listen)),
        ..Row::default()
    });
    let none = f
        .in_process
        .iter()
        .find(|b| b.metering == Metering::None)
        .map(|b| b.summary.median)
        .unwrap_or_default();
    let iterations = args.burn_iterations;
    rows.push(Row {
        limit: format!("wasmtime, none {}", duration(none)),
        ratio: format!("{:.2}×", ratio(f.api_burn.median, none)),
        rate: String::new(),
        ..latency_row(
            format!("burn({iterations}) via API, fuel (n={})", counts.burns),
            &f.api_burn,
        )
    });
    rows.push(Row {
        limit: "(no durability)".into(),
        ..latency_row(
            format!("GET loopback from the client (n={})", counts.http),
            &f.raw_get,
        )
    });
    let plain = f.sequential.median + f.raw_get.median;
    rows.push(Row {
        limit: format!("add p50 + GET p50 {}", duration(plain)),
        ratio: format!("{:.2}×", ratio(f.fetch.median, plain)),
        ..latency_row(
            format!("invoke fetch(loopback), durable HTTP (n={})", counts.http),
            &f.fetch,
        )
    });
    let call_cost = f.worker_call.median.saturating_sub(f.sequential.median);
    rows.push(Row {
        limit: format!("add p50 {}", duration(f.sequential.median)),
        ratio: format!("{:.2}×", ratio(f.worker_call.median, f.sequential.median)),
        ..latency_row(
            format!("invoke calling another worker (n={})", counts.http),
            &f.worker_call,
        )
    });
    rows.push(Row {
        name: "worker-to-worker call, one executor".into(),
        limit: "(call p50 − add p50)".into(),
        target: verdict("< 1 ms", call_cost < Duration::from_millis(1)),
        p50: duration(call_cost),
        ..Row::default()
    });
    rows.push(Row {
        limit: format!("deadline, nap {} s", NAP.as_secs()),
        rate: String::new(),
        ..latency_row(
            format!("sleep wake lateness, {} sleepers", counts.sleepers),
            &f.sleep.lateness,
        )
    });
    for b in &f.in_process {
        let name = if b.spawned {
            format!("burn in process, {}", b.metering.label())
        } else {
            format!("burn in process, {}, polled in place", b.metering.label())
        };
        let mut row = Row {
            rate: String::new(),
            ..latency_row(name, &b.summary)
        };
        if b.metering == Metering::None {
            row.limit = "(the limit)".into();
        } else {
            let x = ratio(b.summary.median, none);
            row.limit = format!("none {}", duration(none));
            row.ratio = format!("{x:.2}×");
            if b.spawned {
                row.target = verdict("≤ 1.3×", x <= 1.3);
            }
        }
        rows.push(row);
    }

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "invoke bench{}: server {}, {} cores",
        if args.quick { " (--quick)" } else { "" },
        binary.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    let line = |out: &mut std::io::StdoutLock<'_>, r: &Row| {
        writeln!(
            out,
            "{:<48} {:>10} {:>10} {:>9} {:>24} {:>7} {:>14}",
            r.name, r.p50, r.p99, r.rate, r.limit, r.ratio, r.target
        )
    };
    line(
        &mut out,
        &Row {
            name: "measurement".into(),
            p50: "p50".into(),
            p99: "p99".into(),
            rate: "ops/s".into(),
            limit: "limit (same run)".into(),
            ratio: "ratio".into(),
            target: "target".into(),
        },
    )?;
    for row in &rows {
        line(&mut out, row)?;
    }
    let since_listen = r.first_call.saturating_sub(r.listen);
    writeln!(
        out,
        "replay after SIGKILL: {} entries ({} invocations): 1st call {} after the 1st authenticated request ({:.0} entries/s), {} after the listen line ({:.0} entries/s, key check included)",
        r.entries,
        r.invocations,
        duration(replay_time),
        r.entries as f64 / replay_time.as_secs_f64().max(1e-9),
        duration(since_listen),
        r.entries as f64 / since_listen.as_secs_f64().max(1e-9)
    )?;
    writeln!(
        out,
        "burn({iterations}) consumed {} fuel through the server ({:.1} per iteration); {} of {} workers showed \"suspended\" before resume",
        f.burn_fuel,
        f.burn_fuel as f64 / iterations.max(1) as f64,
        f.suspended,
        counts.resumed
    )?;
    writeln!(
        out,
        "{} sleepers: latest wake {} past its deadline; workers holding an instance while all slept: {}",
        counts.sleepers,
        duration(f.sleep.worst),
        f.sleep.active_while_asleep.map_or(
            "not sampled (putting them to sleep took over half the nap)".into(),
            |n| n.to_string()
        )
    )?;
    writeln!(
        out,
        "the load generator shares the machine with the server: throughput is a floor, not the server's ceiling"
    )?;
    for note in &f.notes {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}
