//! Separate processes on loopback sharing the embedded store: a gateway, a registry, billing, a
//! scheduler and three executors. Clients invoke through the gateway while the executors are
//! killed with SIGKILL and restarted, one at a time, several times. Every accepted invocation
//! is applied exactly once and metered exactly once, and the time from an executor's death to
//! its workers serving again is printed, bounded by the lease plus replay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use invicta_tests::{Api, Server, component};
use serde_json::json;

use crate::INVICTA;
use crate::crash::call_until_answered;
use crate::metering::today;

const LEASE_MS: u64 = 1_000;
const EXECUTORS: usize = 3;
const WORKERS: usize = 24;
const CLIENTS: usize = 4;
const KILLS: usize = 4;
/// Every role requires it, so every internal call is shown to carry it.
const TOKEN: &str = "token = \"cluster-secret\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executors_die_and_every_invocation_applies_exactly_once() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    std::fs::create_dir_all(&dir)?;
    let scheduler = Server::start_role(
        INVICTA.as_ref(),
        &dir,
        "scheduler",
        &format!("[scheduler]\nlisten = \"127.0.0.1:0\"\nlease_ms = {LEASE_MS}\n\n[grpc]\n{TOKEN}"),
    )?;
    let registry = Server::start_role(
        INVICTA.as_ref(),
        &dir,
        "registry",
        &format!("[grpc]\nregistry_listen = \"127.0.0.1:0\"\n{TOKEN}"),
    )?;
    let billing = Server::start_role(
        INVICTA.as_ref(),
        &dir,
        "billing",
        &format!("[grpc]\nbilling_listen = \"127.0.0.1:0\"\n{TOKEN}"),
    )?;
    let peers = format!(
        "[grpc]\nexecutor_listen = \"127.0.0.1:0\"\nscheduler = \"{}\"\nregistry = \"{}\"\nbilling = \"{}\"\n{TOKEN}",
        scheduler.url, registry.url, billing.url
    );
    let start_executor = {
        let (dir, peers) = (dir.clone(), peers.clone());
        move || Server::start_role(INVICTA.as_ref(), &dir, "executor", &peers)
    };
    let mut executors = Vec::new();
    for _ in 0..EXECUTORS {
        executors.push(start_executor()?);
    }
    let gateway = Server::start_role(INVICTA.as_ref(), &dir, "gateway", &peers)?;
    let api = gateway.operator().new_tenant("cluster", "pro").await?;
    let tenant_key = api.key.clone().unwrap_or_default();
    assert_eq!(
        api.upload("counter", component("counter")).await?.status,
        201
    );
    // The registry's answers come back through the gateway as they would in one process.
    let bad = api.upload("bad", b"not a component".to_vec()).await?;
    assert_eq!(
        (bad.status, bad.code()),
        (400, "invalid_component"),
        "{bad:?}"
    );
    // So do billing's: tenants, keys and their refusals come from the billing process.
    let taken = gateway
        .operator()
        .post_json("/v1/admin/tenants", &json!({ "name": "cluster" }), None)
        .await?;
    assert_eq!(
        (taken.status, taken.code()),
        (409, "tenant_exists"),
        "{taken:?}"
    );
    let spare = api
        .post_json("/v1/keys", &json!({ "scopes": ["read"] }), None)
        .await?;
    assert_eq!(spare.status, 201, "{spare:?}");
    let spare_api = api.with_key(spare.body["key"].as_str().unwrap_or_default());
    assert_eq!(spare_api.get("/v1/components").await?.status, 200);
    let spare_id = spare.body["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        api.delete(&format!("/v1/keys/{spare_id}")).await?.status,
        200
    );
    let revoked = spare_api.get("/v1/components").await?;
    assert_eq!((revoked.status, revoked.code()), (401, "unauthorized"));
    let listed = api.get("/v1/components/counter").await?;
    assert_eq!(listed.body["versions"], json!([1]), "{listed:?}");
    let missing = api.get("/v1/components/nope").await?;
    assert_eq!(
        (missing.status, missing.code()),
        (404, "component_not_found")
    );
    // Every worker answers once before the kills begin.
    for worker in 0..WORKERS {
        let reply = api
            .invoke(
                "counter",
                &format!("w{worker}"),
                "add",
                json!([0]),
                Some(&format!("w{worker}-init")),
            )
            .await?;
        anyhow::ensure!(reply.status == 200, "{reply:?}");
    }

    let url = Arc::new(RwLock::new(gateway.url.clone()));
    let killing = Arc::new(AtomicBool::new(true));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (url, killing, tenant_key) = (url.clone(), killing.clone(), tenant_key.clone());
            tokio::spawn(async move {
                let mine: Vec<usize> = (0..WORKERS).filter(|w| w % CLIENTS == client).collect();
                let mut totals: HashMap<usize, i64> = HashMap::new();
                let mut sent = 0_usize;
                let mut round = 0;
                while round < 3 || killing.load(Ordering::Acquire) {
                    for &worker in &mine {
                        let delta = (round % 7 + 1) as i64;
                        let key = format!("w{worker}-{round}");
                        let (result, attempts) =
                            call_until_answered(&url, &tenant_key, worker, &key, delta).await?;
                        let total = totals.entry(worker).or_insert(0);
                        *total += delta;
                        anyhow::ensure!(
                            result == *total,
                            "worker {worker} call {key}: got {result}, expected {total} (attempts {attempts})"
                        );
                        sent += 1;
                    }
                    round += 1;
                    anyhow::ensure!(round < 10_000, "runaway client loop");
                }
                Ok::<_, anyhow::Error>((sent, totals))
            })
        })
        .collect();

    // Kill the executors one at a time. After each kill every worker is called at once: the
    // slowest answer is the failover time of the dead executor's workers.
    let probe_api = Api::new(&gateway.url).with_key(&tenant_key);
    let mut failovers = Vec::new();
    for round in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let victim = round % EXECUTORS;
        let dead = executors.remove(victim);
        dead.kill()?;
        let killed = Instant::now();
        executors.insert(victim, start_executor()?);
        let mut probes = tokio::task::JoinSet::new();
        for worker in 0..WORKERS {
            let api = probe_api.clone();
            probes.spawn(async move {
                api.invoke("counter", &format!("w{worker}"), "get", json!([]), None)
                    .await
            });
        }
        while let Some(reply) = probes.join_next().await {
            let reply = reply??;
            anyhow::ensure!(reply.status == 200, "a probe failed: {reply:?}");
        }
        failovers.push(killed.elapsed());
        eprintln!("cluster test: kill {} of executor {victim} done", round + 1);
    }
    killing.store(false, Ordering::Release);
    let mut sent = 0;
    let mut expected: HashMap<usize, i64> = HashMap::new();
    for client in clients {
        let (n, totals) = client.await??;
        sent += n;
        expected.extend(totals);
    }
    let worst = failovers.iter().max().copied().unwrap_or_default();
    println!(
        "cluster failover: {} kills, worker served again after {:?} (worst {} ms; lease {LEASE_MS} ms); {sent} invocations",
        failovers.len(),
        failovers.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        worst.as_millis()
    );
    assert!(!failovers.is_empty(), "no kill hit a worker's executor");
    assert!(
        worst < Duration::from_millis(LEASE_MS * 6),
        "failover took {worst:?}"
    );
    // Through the gateway, enqueue and promises reach the worker's executor too.
    let accepted = probe_api
        .post_json(
            "/v1/components/counter/workers/w0/enqueue",
            &json!({ "function": "add", "params": [0] }),
            Some("cluster-enqueue"),
        )
        .await?;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let done = probe_api
        .get("/v1/components/counter/workers/w0/invocations/cluster-enqueue?wait_ms=20000")
        .await?;
    assert_eq!(done.body["status"], "completed", "{done:?}");
    assert_eq!(api.upload("waiter", component("waiter")).await?.status, 201);
    let promise = probe_api
        .call("waiter", "p", "make-promise", json!([]))
        .await?;
    let accepted = probe_api
        .post_json(
            "/v1/components/waiter/workers/p/enqueue",
            &json!({ "function": "wait-for", "params": [promise] }),
            Some("cluster-await"),
        )
        .await?;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let waiting = probe_api
        .get("/v1/components/waiter/workers/p/invocations/cluster-await?wait_ms=300")
        .await?;
    assert_eq!(waiting.body["status"], "pending", "{waiting:?}");
    let path = format!(
        "/v1/components/waiter/workers/p/promises/{}/complete",
        promise.as_str().unwrap_or_default()
    );
    let completed = probe_api
        .post_json(&path, &json!({ "data": "go" }), None)
        .await?;
    assert_eq!(completed.status, 200, "{completed:?}");
    let done = probe_api
        .get("/v1/components/waiter/workers/p/invocations/cluster-await?wait_ms=20000")
        .await?;
    assert_eq!(done.body["result"], json!({ "ok": "\"go\"" }), "{done:?}");

    // The gateway reports a worker's status as its executor knows it: active in memory there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status_gets = 0;
    loop {
        probe_api.call("counter", "w0", "get", json!([])).await?;
        status_gets += 1;
        let status = probe_api.get("/v1/components/counter/workers/w0").await?;
        if status.body["status"] == "active" {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "w0 never reported active: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Control reaches the owner too: resume, then delete.
    let resumed = probe_api
        .post_json("/v1/components/counter/workers/w1/resume", &json!({}), None)
        .await?;
    assert_eq!(resumed.status, 200, "{resumed:?}");
    assert_eq!(
        probe_api
            .delete("/v1/components/waiter/workers/p")
            .await?
            .status,
        204
    );
    let gone = probe_api.get("/v1/components/waiter/workers/p").await?;
    assert_eq!(gone.status, 404, "{gone:?}");

    // Every worker's state is the exact sum of what was sent to it.
    for worker in 0..WORKERS {
        let state = probe_api
            .call("counter", &format!("w{worker}"), "get", json!([]))
            .await?;
        assert_eq!(
            state,
            json!(expected.get(&worker).copied().unwrap_or(0)),
            "worker {worker}"
        );
    }

    // Metered exactly once too: the ledger, written by the executors with each completion and
    // read through the billing process, counts every invocation once.
    let mut completions = 0_u64;
    for worker in 0..WORKERS {
        let mut from = 1;
        loop {
            let page = probe_api
                .get(&format!(
                    "/v1/components/counter/workers/w{worker}/oplog?from={from}&count=1000"
                ))
                .await?;
            anyhow::ensure!(page.status == 200, "{page:?}");
            let entries = page.body["entries"].as_array().cloned().unwrap_or_default();
            completions += entries
                .iter()
                .filter(|e| e["kind"] == "exported_function_completed")
                .count() as u64;
            match page.body["next"].as_u64() {
                Some(next) if !entries.is_empty() => from = next,
                _ => break,
            }
        }
    }
    // Initial calls, the clients' calls, the probes after each kill, one enqueued call, the
    // status checks and the final reads.
    let answered = (WORKERS + sent + WORKERS * KILLS + 1 + status_gets + WORKERS) as u64;
    assert_eq!(completions, answered, "one completion per answered call");
    let (from, to) = today();
    let report = probe_api
        .get(&format!("/v1/usage?from={from}&to={to}&granularity=month"))
        .await?;
    assert_eq!(report.status, 200, "{report:?}");
    let metered = report.body["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["component"] == "counter"))
        .and_then(|r| r["invocations"].as_u64());
    assert_eq!(metered, Some(answered), "{report:?}");
    let tenant = report.body["tenant"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let invoice = gateway
        .operator()
        .get(&format!("/v1/admin/invoices?tenant={tenant}"))
        .await?;
    assert_eq!(invoice.status, 200, "{invoice:?}");
    let invoiced = invoice.body["lines"]
        .as_array()
        .and_then(|lines| lines.iter().find(|l| l["item"] == "invocations"))
        .and_then(|l| l["quantity"].as_u64())
        .unwrap_or_default();
    assert!(invoiced >= answered, "{invoice:?}");

    // Without its billing process the gateway says so, and serves nothing it cannot check.
    billing.kill()?;
    let down = gateway.operator().get("/v1/admin/tenants").await?;
    assert_eq!((down.status, down.code()), (503, "unavailable"), "{down:?}");
    Ok(())
}
