//! Separate processes: a scheduler and two executors sharing the store. The owner of a worker
//! is frozen with SIGSTOP mid-invocation past its lease; the other executor takes its shards
//! over and finishes the invocation; when the first wakes up its late commit is refused.
//! Nothing is lost, nothing applied twice, and the failover time is printed.

use std::time::{Duration, Instant};

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
    common::WorkerId {
        tenant: "t1".into(),
        component: "waiter".into(),
        worker: name.into(),
    }
}

/// Invokes `function` on `w` at the executor at `address`: the result, or the problem's code.
async fn invoke(
    address: &str,
    w: &str,
    function: &str,
    params: Value,
    key: &str,
) -> anyhow::Result<Result<Value, String>> {
    let mut client = ExecutorClient::connect(address.to_string()).await?;
    let reply = client
        .invoke(InvokeRequest {
            worker: Some(worker(w)),
            function: function.into(),
            params_json: params.to_string(),
            idempotency_key: key.into(),
            limits: None,
        })
        .await?
        .into_inner();
    Ok(match reply.outcome {
        Some(Outcome::ResultJson(json)) => Ok(serde_json::from_str(&json)?),
        Some(Outcome::Problem(p)) => Err(p.code),
        None => Err("no outcome".into()),
    })
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
            match invoke(
                &placed.address,
                id.worker.as_str(),
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

    // The component goes into the shared store and blobs, as the registry role would put it.
    {
        let store = invicta_store::Store::open(&invicta_store::Config::embedded_in(&dir))?;
        let blobs = invicta_blob::BlobStore::open(&invicta_blob::Config::local_in(&dir)).await?;
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
                &"waiter".to_string().try_into()?,
                component("waiter"),
                Quota::unlimited(),
            )
            .await?;
    }

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
    let mut client = ExecutorClient::connect(other.url.clone()).await?;
    let entries: Vec<Value> = client
        .read_oplog(ReadOplogRequest {
            worker: Some(worker("w")),
            from: 1,
            count: 1_000,
        })
        .await?
        .into_inner()
        .entries_json
        .iter()
        .map(|e| serde_json::from_str(e))
        .collect::<Result<_, _>>()?;
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
