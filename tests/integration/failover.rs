//! Separate processes: a scheduler and executors sharing the store.
//!
//! - Failover: the owner of a worker is frozen with SIGSTOP mid-invocation past its lease; the
//!   other executor takes its shards over and finishes the invocation; when the first wakes up
//!   its late commit is refused. Nothing is lost, nothing applied twice, and the failover time
//!   is printed.
//! - Hand-off: an executor joins while a worker's invocation waits on an outgoing request; the
//!   worker's shard moves to the newcomer only once that invocation has finished and committed
//!   where it started, so its request goes out once and its caller gets its answer there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use invicta_component_registry::{Quota, Registry};
use invicta_proto::common;
use invicta_proto::executor::{
    InvokeRequest, ReadOplogRequest, executor_client::ExecutorClient, invoke_response::Outcome,
};
use invicta_tests::{Server, component};
use invicta_worker_scheduler::grpc::SchedulerClient;
use serde_json::{Value, json};

use crate::INVICTA;

const LEASE_MS: u64 = 1_000;

fn worker(name: &str) -> common::WorkerId {
    worker_of("waiter", name)
}

fn worker_of(component: &str, name: &str) -> common::WorkerId {
    common::WorkerId {
        tenant: "t1".into(),
        component: component.into(),
        worker: name.into(),
    }
}

/// Puts a component of tenant `t1` into the shared store and blobs under `dir`, as the
/// registry role would.
async fn upload(dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let store = invicta_store::Store::open(&invicta_store::Config::embedded_in(dir))?;
    let blobs = invicta_blob::BlobStore::open(&invicta_blob::Config::local_in(dir)).await?;
    let engine = invicta_engine::Engine::new(&Default::default())?;
    let registry = Registry::new(
        Default::default(),
        store,
        blobs,
        engine.clone(),
        invicta_executor::Executor::import_check(&engine)?,
    );
    registry
        .upload(
            &"t1".to_string().try_into()?,
            &name.to_string().try_into()?,
            component(name),
            Quota::unlimited(),
        )
        .await?;
    Ok(())
}

/// Invokes `function` on `w` at the executor at `address`: the result, or the problem's code.
async fn invoke(
    address: &str,
    w: &str,
    function: &str,
    params: Value,
    key: &str,
) -> anyhow::Result<Result<Value, String>> {
    invoke_on(address, worker(w), function, params, key).await
}

async fn invoke_on(
    address: &str,
    worker: common::WorkerId,
    function: &str,
    params: Value,
    key: &str,
) -> anyhow::Result<Result<Value, String>> {
    let mut client = ExecutorClient::connect(address.to_string()).await?;
    let reply = client
        .invoke(InvokeRequest {
            worker: Some(worker),
            function: function.into(),
            params_json: params.to_string(),
            idempotency_key: key.into(),
            limits: None,
        })
        .await?
        .into_inner();
    Ok(match reply.outcome {
        Some(Outcome::ResultJson(json)) => Ok(serde_json::from_str(&json)?),
        Some(Outcome::Problem(p)) if p.code == "worker_moved" || p.code == "unavailable" => {
            Err(p.code)
        }
        Some(Outcome::Problem(p)) => Err(format!("{}: {}", p.code, p.message)),
        None => Err("no outcome".into()),
    })
}

/// [`invoke_on`] for a worker just placed at `address`: the scheduler names its executor as it
/// grants the shard, and the executor takes the shard at its next heartbeat. Until then it
/// refuses the call as `worker_moved` (nothing ran), and the call is made again, as the gateway
/// makes it.
async fn invoke_placed(
    address: &str,
    worker: common::WorkerId,
    function: &str,
    params: Value,
    key: &str,
) -> anyhow::Result<Result<Value, String>> {
    invicta_tests::eventually(
        "the executor the worker was placed at takes its shard",
        Duration::from_secs(20),
        || async {
            let outcome = invoke_on(address, worker.clone(), function, params.clone(), key).await?;
            Ok((outcome != Err("worker_moved".to_string())).then_some(outcome))
        },
    )
    .await
}

/// The first 1,000 entries of a worker's oplog, as the executor at `address` reads them.
async fn oplog(address: &str, worker: common::WorkerId) -> anyhow::Result<Vec<Value>> {
    let mut client = ExecutorClient::connect(address.to_string()).await?;
    let reply = client
        .read_oplog(ReadOplogRequest {
            worker: Some(worker),
            from: 1,
            count: 1_000,
        })
        .await?
        .into_inner();
    Ok(reply
        .entries_json
        .iter()
        .map(|e| serde_json::from_str(e))
        .collect::<Result<_, _>>()?)
}

/// Invokes through whichever executor runs the worker now, following moves (as the gateway
/// does): the result, or the problem's code.
async fn invoke_routed(
    locator: &SchedulerClient,
    id: &invicta_model::WorkerId,
    function: &str,
    params: Value,
    key: &str,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(placed) = locator.locate(id).await {
            match invoke_on(
                &placed.address,
                worker_of(id.component.as_str(), id.worker.as_str()),
                function,
                params.clone(),
                key,
            )
            .await
            {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(code)) if code != "worker_moved" && code != "unavailable" => {
                    anyhow::bail!("{function}: {code}")
                }
                _ => {}
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{function} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_executors_late_commits_are_refused_after_failover() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    std::fs::create_dir_all(&dir)?;
    let scheduler = Server::start_role(
        INVICTA.as_ref(),
        &dir,
        "scheduler",
        &format!("[scheduler]\nlisten = \"127.0.0.1:0\"\nlease_ms = {LEASE_MS}\n"),
    )?;
    let peers = format!(
        "[grpc]\nexecutor_listen = \"127.0.0.1:0\"\nscheduler = \"{}\"\n",
        scheduler.url
    );
    let start_executor = || Server::start_role(INVICTA.as_ref(), &dir, "executor", &peers);
    let first = start_executor()?;
    let second = start_executor()?;

    upload(&dir, "waiter").await?;

    let locator = SchedulerClient::new(&scheduler.url)?;
    let id = invicta_model::WorkerId {
        tenant: "t1".to_string().try_into()?,
        component: "waiter".to_string().try_into()?,
        worker: "w".to_string().try_into()?,
    };
    // Placed, and settled: the scheduler spreads the shards over both executors (moving some
    // if one registered first), so wait until the worker stays put for a few passes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: Vec<String> = Vec::new();
    let placed = loop {
        if let Ok(placed) = locator.locate(&id).await {
            seen.push(placed.address.clone());
            if seen.len() >= 4 && seen[seen.len() - 4..].iter().all(|a| *a == placed.address) {
                break placed;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the worker was never placed");
        tokio::time::sleep(Duration::from_millis(LEASE_MS / 4)).await;
    };
    let (mut owner, other) = if placed.address == first.url {
        (first, second)
    } else {
        anyhow::ensure!(placed.address == second.url, "{placed:?}");
        (second, first)
    };
    assert_eq!(
        invoke(&owner.url, "w", "bump", json!([]), "b1")
            .await?
            .map_err(anyhow::Error::msg)?,
        json!(1)
    );
    assert_eq!(
        invoke(&owner.url, "w", "bump", json!([]), "b2")
            .await?
            .map_err(anyhow::Error::msg)?,
        json!(2)
    );

    // A nap of 900 ms (below the suspension threshold: the instance waits in memory), frozen
    // a fifth of the way in, past the lease.
    let owner_url = owner.url.clone();
    let late =
        tokio::spawn(async move { invoke(&owner_url, "w", "nap", json!([900]), "late").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    owner.pause()?;
    let frozen = Instant::now();

    // The other executor takes the shard over and finishes the cut-off nap from its oplog.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(placed) = locator.locate(&id).await
            && placed.address == other.url
            && let Ok(Ok(value)) = invoke(&other.url, "w", "bump", json!([]), "b3").await
        {
            assert_eq!(value, json!(3), "the nap's worker kept its state");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the worker never moved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failover = frozen.elapsed();
    println!(
        "failover: the worker served again {} ms after its executor froze (lease {LEASE_MS} ms)",
        failover.as_millis()
    );
    assert!(
        failover < Duration::from_millis(LEASE_MS * 5),
        "failover took {failover:?}"
    );

    // The frozen executor wakes up and finishes its copy of the nap: the commit is fenced.
    owner.unpause()?;
    let late = late.await??;
    assert_eq!(
        late,
        Err("worker_moved".to_string()),
        "the late commit is refused"
    );

    // Exactly once: one start and one completion of `late`, and the next bump follows on.
    let entries = oplog(&other.url, worker("w")).await?;
    let started = entries
        .iter()
        .filter(|e| e["kind"] == "exported_function_invoked" && e["idempotency_key"] == "late")
        .count();
    assert_eq!(started, 1, "{entries:?}");
    let invoked = entries
        .iter()
        .filter(|e| e["kind"] == "exported_function_invoked")
        .count();
    let completed = entries
        .iter()
        .filter(|e| e["kind"] == "exported_function_completed")
        .count();
    assert_eq!(
        invoked, completed,
        "every start has one completion: {entries:?}"
    );
    // The woken executor rejoins and may take shards back: calls follow the worker.
    assert_eq!(
        invoke_routed(&locator, &id, "bump", json!([]), "b4").await?,
        json!(4)
    );
    // The nap's key is answered from its record, once.
    let again = invoke_routed(&locator, &id, "nap", json!([900]), "late").await?;
    assert!(again.as_u64().is_some_and(|ms| ms >= 900), "{again}");
    Ok(())
}

/// A loopback endpoint that counts its requests and answers each once `release` is notified.
async fn held_endpoint() -> anyhow::Result<(String, Arc<AtomicU32>, Arc<Notify>)> {
    let (seen, release) = (Arc::new(AtomicU32::new(0)), Arc::new(Notify::new()));
    let app = axum::Router::new().route(
        "/held",
        axum::routing::get({
            let (seen, release) = (seen.clone(), release.clone());
            move || async move {
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                release.notified().await;
                format!("request {n}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/held", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, seen, release))
}

/// The lease of the hand-off tests: long enough that a drain (a heartbeat to learn of it, a
/// held request, a release) is never forced on a busy machine.
const HANDOFF_LEASE_MS: u64 = 2_000;

/// A scheduler, and the configuration of executors that may reach loopback over HTTP.
struct HandoffCluster {
    _data: tempfile::TempDir,
    dir: std::path::PathBuf,
    scheduler: Server,
    locator: SchedulerClient,
    config: String,
}

impl HandoffCluster {
    fn start() -> anyhow::Result<HandoffCluster> {
        let data = tempfile::tempdir()?;
        let dir = data.path().join("data");
        std::fs::create_dir_all(&dir)?;
        let scheduler = Server::start_role(
            INVICTA.as_ref(),
            &dir,
            "scheduler",
            &format!("[scheduler]\nlisten = \"127.0.0.1:0\"\nlease_ms = {HANDOFF_LEASE_MS}\n"),
        )?;
        let config = format!(
            "[grpc]\nexecutor_listen = \"127.0.0.1:0\"\nscheduler = \"{}\"\n\n\
             [executor.http]\nallow_private_hosts = [\"127.0.0.1\"]\ntimeout_ms = 20000\n",
            scheduler.url
        );
        let locator = SchedulerClient::new(&scheduler.url)?;
        Ok(HandoffCluster {
            _data: data,
            dir,
            scheduler,
            locator,
            config,
        })
    }

    fn executor(&self) -> anyhow::Result<Server> {
        Server::start_role(INVICTA.as_ref(), &self.dir, "executor", &self.config)
    }

    /// Waits until the scheduler places `id` at the executor at `address`.
    async fn placed_at(&self, id: &invicta_model::WorkerId, address: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .locator
            .locate(id)
            .await
            .is_ok_and(|p| p.address == address)
        {
            anyhow::ensure!(Instant::now() < deadline, "{id} never went to {address}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Waits until a hand-off of `id`'s shard is planned in its lease.
    async fn handoff_planned(&self, id: &invicta_model::WorkerId) -> anyhow::Result<()> {
        use invicta_model::shards::{ShardLease, lease_key, shard_of};
        let store = invicta_store::Store::open(&invicta_store::Config::embedded_in(&self.dir))?;
        let shard = shard_of(id);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let bytes = store.read(move |tx| tx.get(&lease_key(shard))).await?;
            let lease: Option<ShardLease> =
                bytes.map(|b| serde_json::from_slice(&b)).transpose()?;
            if lease.is_some_and(|l| l.handoff.is_some()) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "no hand-off was planned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A worker of `component` (tenant `t1`) in the last shard: the first a lone executor hands to
/// a newcomer. Its name and id.
fn in_last_shard(component: &str) -> anyhow::Result<(String, invicta_model::WorkerId)> {
    use invicta_model::shards::{SHARDS, shard_of};
    for i in 0..10_000 {
        let name = format!("w{i}");
        let id = invicta_model::WorkerId {
            tenant: "t1".to_string().try_into()?,
            component: component.to_string().try_into()?,
            worker: name.clone().try_into()?,
        };
        if shard_of(&id) == SHARDS - 1 {
            return Ok((name, id));
        }
    }
    anyhow::bail!("no {component} worker in the last shard")
}

/// Waits until the held endpoint has seen `n` requests.
async fn requests_seen(seen: &AtomicU32, n: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.load(Ordering::SeqCst) < n {
        anyhow::ensure!(Instant::now() < deadline, "request {n} never went out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_move_lets_the_running_invocation_finish_where_it_started() -> anyhow::Result<()>
{
    let cluster = HandoffCluster::start()?;
    let first = cluster.executor()?;
    upload(&cluster.dir, "fetcher").await?;
    let (url, seen, release) = held_endpoint().await?;
    let (name, worker_id) = in_last_shard("fetcher")?;
    cluster.placed_at(&worker_id, &first.url).await?;

    // The invocation's request is out, and held there.
    let running = {
        let (address, worker, url) = (first.url.clone(), worker_of("fetcher", &name), url.clone());
        tokio::spawn(
            async move { invoke_placed(&address, worker, "fetch", json!([url]), "held").await },
        )
    };
    requests_seen(&seen, 1).await?;

    // A second executor joins; the scheduler plans the hand-off of the worker's shard.
    let second = cluster.executor()?;
    let joined = Instant::now();
    cluster.handoff_planned(&worker_id).await?;
    // Once the first executor has heard of it (its heartbeat comes every third of a lease),
    // the shard drains: nothing new starts on it there.
    tokio::time::sleep(Duration::from_millis(HANDOFF_LEASE_MS / 3 + 300)).await;
    let refused = invoke_on(
        &first.url,
        worker_of("fetcher", &name),
        "fetch",
        json!([url]),
        "refused",
    )
    .await?;
    assert_eq!(refused, Err("worker_moved".to_string()));

    // The request is answered: the invocation finishes and commits where it started, and its
    // caller gets the answer from there.
    release.notify_waiters();
    let released = Instant::now();
    let answered = running.await??;
    assert_eq!(
        answered,
        Ok(json!({ "ok": "200 request 1" })),
        "the running invocation was not cut off"
    );
    cluster.placed_at(&worker_id, &second.url).await?;
    println!(
        "hand-off: the shard moved {} ms after its running invocation's request was answered ({} ms after the second executor joined; lease {HANDOFF_LEASE_MS} ms)",
        released.elapsed().as_millis(),
        joined.elapsed().as_millis()
    );

    // At the new owner: the answer by its key, and the request never went out again.
    let locator = &cluster.locator;
    let again = invoke_routed(locator, &worker_id, "fetch", json!([url]), "held").await?;
    assert_eq!(again, json!({ "ok": "200 request 1" }));
    println!(
        "hand-off: the new owner answered for the worker {} ms after the request was answered",
        released.elapsed().as_millis()
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the request went out once");
    let entries = oplog(&second.url, worker_of("fetcher", &name)).await?;
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "exported_function_invoked")
            .count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "exported_function_completed")
            .count(),
        1,
        "{kinds:?}"
    );

    // Scaling down: the second executor is asked to stop (SIGTERM) while another invocation
    // waits on a request. It hands its shards back, finishes that invocation first, and exits
    // cleanly; the request went out once.
    let running = {
        let (address, worker, url) = (second.url.clone(), worker_of("fetcher", &name), url.clone());
        tokio::spawn(
            async move { invoke_on(&address, worker, "fetch", json!([url]), "second").await },
        )
    };
    requests_seen(&seen, 2).await?;
    let stopping = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || second.stop());
    cluster.handoff_planned(&worker_id).await?;
    release.notify_waiters();
    assert_eq!(
        running.await??,
        Ok(json!({ "ok": "200 request 2" })),
        "the leaving executor finished its running invocation"
    );
    assert!(stopped.await??, "the executor exited cleanly");
    println!(
        "leave: the second executor handed its shards off and exited {} ms after SIGTERM",
        stopping.elapsed().as_millis()
    );
    let placed = locator.locate(&worker_id).await?;
    assert_eq!(
        placed.address, first.url,
        "the shard is back at the first executor"
    );
    let again = invoke_routed(locator, &worker_id, "fetch", json!([url]), "second").await?;
    assert_eq!(again, json!({ "ok": "200 request 2" }));
    assert_eq!(seen.load(Ordering::SeqCst), 2, "each request went out once");

    // The first executor is alone now: asked to stop, it has nobody to wait for.
    let stopping = Instant::now();
    assert!(tokio::task::spawn_blocking(move || first.stop()).await??);
    assert!(
        stopping.elapsed() < Duration::from_millis(HANDOFF_LEASE_MS),
        "a lone executor took {:?} to stop",
        stopping.elapsed()
    );
    Ok(())
}

/// A draining shard still runs the calls its own workers make of each other: a worker that
/// calls another of its shard after the hand-off began finishes where it started, rather than
/// waiting (refused, retried) until the move is forced and its work is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_shard_runs_calls_between_its_own_workers() -> anyhow::Result<()> {
    let cluster = HandoffCluster::start()?;
    let first = cluster.executor()?;
    upload(&cluster.dir, "caller").await?;
    upload(&cluster.dir, "counter").await?;
    let (url, seen, release) = held_endpoint().await?;
    // A caller and a counter, both of the last shard.
    let (caller, caller_id) = in_last_shard("caller")?;
    let (target, target_id) = in_last_shard("counter")?;
    cluster.placed_at(&caller_id, &first.url).await?;

    // The caller waits on its request, then will call the counter.
    let running = {
        let (address, worker, url, target) = (
            first.url.clone(),
            worker_of("caller", &caller),
            url.clone(),
            target.clone(),
        );
        tokio::spawn(async move {
            invoke_placed(
                &address,
                worker,
                "fetch-then-add",
                json!([url, target, 5]),
                "nested",
            )
            .await
        })
    };
    requests_seen(&seen, 1).await?;

    // A second executor joins; once the first has begun draining the shard, the request is
    // answered and the caller calls the counter, of the same draining shard.
    let second = cluster.executor()?;
    cluster.handoff_planned(&caller_id).await?;
    tokio::time::sleep(Duration::from_millis(HANDOFF_LEASE_MS / 3 + 300)).await;
    let refused = invoke_on(
        &first.url,
        worker_of("counter", &target),
        "add",
        json!([1]),
        "outside",
    )
    .await?;
    assert_eq!(refused, Err("worker_moved".to_string()), "draining by now");
    let released = Instant::now();
    release.notify_waiters();
    let answered = running.await??;
    assert_eq!(answered, Ok(json!({ "ok": "5" })), "the nested call ran");
    assert!(
        released.elapsed() < Duration::from_millis(HANDOFF_LEASE_MS / 2),
        "answered {:?} after the request was: not held up until the move was forced",
        released.elapsed()
    );

    // Both move to the second executor; the counter kept the one addition.
    cluster.placed_at(&caller_id, &second.url).await?;
    let total = invoke_routed(&cluster.locator, &target_id, "get", json!([]), "after").await?;
    assert_eq!(total, json!(5));
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the request went out once");
    drop(cluster.scheduler);
    Ok(())
}
