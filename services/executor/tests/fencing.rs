//! Fencing: two executors share one store; when the second takes the shards over (as the
//! scheduler does once the first's leases expire), the first can no longer commit for any
//! worker — its late work is refused whole, and the worker goes on at the second, exactly once.

mod common;

use invicta_executor::{Error, Executor, Limits};
use invicta_model::{WorkerId, WorkerName};
use serde_json::json;

async fn executor(
    dir: &std::path::Path,
) -> anyhow::Result<(Executor, invicta_component_registry::Registry)> {
    // Each executor opens the store file itself, as a separate process would.
    let (store, registry, engine) = common::parts(dir).await?;
    let executor = Executor::start(Default::default(), store, registry.clone(), engine).await?;
    Ok((executor, registry))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_that_lost_its_shards_commits_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (first, registry) = executor(dir.path()).await?;
    let id = common::counter(&registry, "w").await?;
    let limits = Limits::unlimited();
    let add = |n: i64| vec![json!(n)];
    assert_eq!(
        first
            .invoke(&id, "add", &add(1), None, &limits)
            .await?
            .result,
        json!(1)
    );
    let first_epochs = first.shards();
    assert_eq!(first_epochs.len(), 64, "a lone executor takes every shard");

    // A second executor takes every shard over, at the next epochs.
    let (second, _) = executor(dir.path()).await?;
    let second_epochs = second.shards();
    assert!(
        second_epochs
            .iter()
            .zip(&first_epochs)
            .all(|((s2, e2), (s1, e1))| s1 == s2 && e2 == &(e1 + 1)),
        "{second_epochs:?} after {first_epochs:?}"
    );
    let before = second.oplog(&id, 1, 1_000).await?;

    // The first still thinks it owns the worker (its renewal has not run yet): its instance is
    // warm and runs the invocation, but the commit is refused and nothing reaches the oplog.
    let late = first
        .invoke(&id, "add", &add(10), Some("late".into()), &limits)
        .await;
    assert!(
        matches!(late, Err(Error::Fenced { .. })),
        "the late commit is fenced: {late:?}"
    );
    let after = second.oplog(&id, 1, 1_000).await?;
    assert_eq!(after.len(), before.len(), "nothing was written");
    // Nor can it create a worker: its first entry is fenced too.
    let other = WorkerId {
        worker: WorkerName::new("other")?,
        ..id.clone()
    };
    let created = first
        .create_worker(&other, Vec::new(), Vec::new(), None, &limits)
        .await;
    assert!(matches!(created, Err(Error::Fenced { .. })), "{created:?}");

    // The second runs the worker from its oplog: the late `add(10)` never happened, and its
    // key is free to run (once) here.
    assert_eq!(
        second
            .invoke(&id, "add", &add(1), None, &limits)
            .await?
            .result,
        json!(2)
    );
    assert_eq!(
        second
            .invoke(&id, "add", &add(10), Some("late".into()), &limits)
            .await?
            .result,
        json!(12)
    );
    assert_eq!(
        second
            .invoke(&id, "add", &add(10), Some("late".into()), &limits)
            .await?
            .result,
        json!(12)
    );
    Ok(())
}
