//! The crash test: workers under a stream of invocations from several clients while the server
//! is killed with SIGKILL again and again. Every accepted invocation must be applied exactly once,
//! every retried call must get the result of its first completion, and values the workers drew
//! from clocks and random sources before the crashes must replay as first recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use invicta_tests::{Api, Server, component};
use serde_json::json;

use crate::INVICTA;

const WORKERS: usize = 50;
const CLIENTS: usize = 5;
const KILLS: usize = 5;
/// Invocations each worker gets at least (clients go on until the last kill is over).
const PER_WORKER_MIN: usize = 12;
/// Bounds the whole test: a client that cannot get an answer for this long fails it.
const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// One invocation as its client saw it.
#[derive(Debug, Clone)]
struct Sent {
    worker: usize,
    key: String,
    delta: i64,
    result: i64,
    attempts: u32,
}

/// Sends one keyed invocation until it is answered, following the server across restarts.
pub(crate) async fn call_until_answered(
    url: &RwLock<String>,
    tenant_key: &str,
    worker: usize,
    key: &str,
    delta: i64,
) -> anyhow::Result<(i64, u32)> {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let base = url.read().map_err(|_| anyhow::anyhow!("url lock"))?.clone();
        let api = Api::new(&base).with_key(tenant_key);
        match api
            .invoke(
                "counter",
                &format!("w{worker}"),
                "add",
                json!([delta]),
                Some(key),
            )
            .await
        {
            Ok(reply) if reply.status == 200 => {
                let result = reply.body["result"]
                    .as_i64()
                    .ok_or_else(|| anyhow::anyhow!("result is not a number: {reply:?}"))?;
                return Ok((result, attempts));
            }
            // 5xx while the server dies or recovers: the call may or may not have happened.
            Ok(reply) if reply.status >= 500 => {}
            Ok(reply) => anyhow::bail!("unexpected reply to {key}: {reply:?}"),
            // Connection refused or reset: the server is down.
            Err(_) => {}
        }
        anyhow::ensure!(
            started.elapsed() < CALL_DEADLINE,
            "{key} unanswered for {CALL_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_accepted_invocation_applies_exactly_once_across_sigkills() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let api = server.operator().new_tenant("crash", "pro").await?;
    let tenant_key = api.key.clone().unwrap_or_default();
    assert_eq!(
        api.upload("counter", component("counter")).await?.status,
        201
    );
    assert_eq!(api.upload("clocks", component("clocks")).await?.status, 201);

    // Non-deterministic values recorded before any crash.
    let mut samples = Vec::new();
    for _ in 0..3 {
        samples.push(api.call("clocks", "clock", "sample", json!([])).await?);
    }
    let history = api.call("clocks", "clock", "history", json!([])).await?;

    let url = Arc::new(RwLock::new(server.url.clone()));
    let server = Arc::new(Mutex::new(Some(server)));
    let killing = Arc::new(AtomicBool::new(true));

    let killer = {
        let (url, server, killing) = (url.clone(), server.clone(), killing.clone());
        let dir = data.path().to_path_buf();
        tokio::spawn(async move {
            let mut restarts = Vec::new();
            for round in 0..KILLS {
                let pause = 250 + (rand_u64() % 500);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let running = server.lock().map_err(|_| anyhow::anyhow!("lock"))?.take();
                if let Some(running) = running {
                    running.kill()?;
                }
                let started = Instant::now();
                let dir = dir.clone();
                let fresh =
                    tokio::task::spawn_blocking(move || Server::start(INVICTA.as_ref(), &dir))
                        .await??;
                restarts.push(started.elapsed());
                *url.write().map_err(|_| anyhow::anyhow!("lock"))? = fresh.url.clone();
                *server.lock().map_err(|_| anyhow::anyhow!("lock"))? = Some(fresh);
                eprintln!("crash test: kill {} done after {pause} ms", round + 1);
            }
            killing.store(false, Ordering::Release);
            Ok::<_, anyhow::Error>(restarts)
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (url, killing) = (url.clone(), killing.clone());
            let tenant_key = tenant_key.clone();
            tokio::spawn(async move {
                let mine: Vec<usize> = (0..WORKERS).filter(|w| w % CLIENTS == client).collect();
                let mut totals: HashMap<usize, i64> = HashMap::new();
                let mut sent = Vec::new();
                let mut round = 0;
                while round < PER_WORKER_MIN || killing.load(Ordering::Acquire) {
                    for &worker in &mine {
                        let delta = (rand_u64() % 100) as i64 + 1;
                        let key = format!("w{worker}-{round}");
                        let (result, attempts) = call_until_answered(&url, &tenant_key, worker, &key, delta).await?;
                        let total = totals.entry(worker).or_insert(0);
                        *total += delta;
                        // Exactly once: the running total includes this call once and every
                        // earlier one once, whatever crashed in between.
                        anyhow::ensure!(
                            result == *total,
                            "worker {worker} call {key}: got {result}, expected {total} (attempts {attempts})"
                        );
                        sent.push(Sent {
                            worker,
                            key,
                            delta,
                            result,
                            attempts,
                        });
                    }
                    round += 1;
                    anyhow::ensure!(round < 10_000, "runaway client loop");
                }
                Ok::<_, anyhow::Error>(sent)
            })
        })
        .collect();

    let restarts = killer.await??;
    let mut sent = Vec::new();
    for client in clients {
        sent.extend(client.await??);
    }
    assert_eq!(restarts.len(), KILLS);
    let retried = sent.iter().filter(|s| s.attempts > 1).count();
    eprintln!(
        "crash test: {} invocations over {WORKERS} workers, {retried} retried across {KILLS} kills",
        sent.len()
    );
    assert!(
        retried > 0,
        "no call was cut off by a kill: the test did not test crashes"
    );

    let base = url.read().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let api = Api::new(&base).with_key(&tenant_key);
    // Every worker's state is the exact sum of what was sent to it, before and after every
    // call is sent again.
    let check_states = |when: &'static str| {
        let (api, sent) = (&api, &sent);
        async move {
            for worker in 0..WORKERS {
                let expected: i64 = sent
                    .iter()
                    .filter(|s| s.worker == worker)
                    .map(|s| s.delta)
                    .sum();
                let state = api
                    .call("counter", &format!("w{worker}"), "get", json!([]))
                    .await?;
                assert_eq!(state, json!(expected), "worker {worker} {when}");
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    check_states("after the kills").await?;
    // Every call sent again gets the result of its first completion, and changes nothing.
    for s in &sent {
        let again = api
            .invoke(
                "counter",
                &format!("w{}", s.worker),
                "add",
                json!([s.delta]),
                Some(&s.key),
            )
            .await?;
        assert_eq!(again.body["result"], json!(s.result), "{} replayed", s.key);
    }
    check_states("after resending").await?;
    // Clock and random readings replay as first recorded.
    assert_eq!(
        api.call("clocks", "clock", "history", json!([])).await?,
        history
    );
    let next = api.call("clocks", "clock", "sample", json!([])).await?;
    assert_eq!(next["calls"], 4);
    assert!(next["monotonic"].as_u64() > samples[2]["monotonic"].as_u64());
    Ok(())
}

pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// An invocation cut off by a crash after its start became durable is finished on restart,
/// before anyone asks for it again, and its key then returns that result without running twice.
#[tokio::test]
async fn an_invocation_cut_off_mid_way_is_finished_after_restart() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let api = server.operator().new_tenant("recovery", "pro").await?;
    let tenant_key = api.key.clone().unwrap_or_default();
    api.upload("burner", component("burner")).await?;
    assert_eq!(api.call("burner", "b", "add", json!([7])).await?, json!(7));
    // About half a second of guest code: long enough to make its start durable and be killed.
    let long = {
        let api = api.clone();
        tokio::spawn(async move {
            api.invoke("burner", "b", "burn", json!([20_000_000]), Some("long"))
                .await
        })
    };
    let started = Instant::now();
    loop {
        let status = api.get("/v1/components/burner/workers/b").await?;
        // Create, add (2), and the start of `burn`: its start is durable.
        if status.body["oplog_length"].as_u64() >= Some(4) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the invocation's start never became durable"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill()?;
    assert!(long.await?.is_err(), "the caller lost its connection");

    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let api = Api::new(&server.url).with_key(&tenant_key);
    // Nobody asks: recovery finishes the invocation on its own.
    let started = Instant::now();
    let entries = loop {
        let oplog = api
            .get("/v1/components/burner/workers/b/oplog?count=100")
            .await?;
        let entries = oplog.body["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if entries
            .iter()
            .any(|e| e["kind"] == "exported_function_completed" && e["index"].as_u64() > Some(4))
        {
            break entries;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "recovery did not finish the invocation: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let starts = entries
        .iter()
        .filter(|e| e["kind"] == "exported_function_invoked" && e["idempotency_key"] == "long")
        .count();
    assert_eq!(starts, 1, "{entries:?}");
    let result = entries
        .iter()
        .rev()
        .find(|e| e["kind"] == "exported_function_completed")
        .map(|e| e["results"][0].clone())
        .unwrap_or_default();
    let again = api
        .invoke("burner", "b", "burn", json!([20_000_000]), Some("long"))
        .await?;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["result"], result);
    assert_eq!(api.call("burner", "b", "get", json!([])).await?, json!(7));
    Ok(())
}
