//! Membership and failover over a real store: shards spread over live executors, and a silent
//! executor's shards move to the others at higher epochs once its lease runs out.

use std::time::Duration;

use invicta_model::shards::SHARDS;
use invicta_model::{ComponentName, TenantId, WorkerId, WorkerName};
use invicta_store::{Config, Store};
use invicta_worker_scheduler::{Error, Scheduler};

const LEASE: Duration = Duration::from_millis(400);

#[tokio::test]
async fn a_silent_executors_shards_move_to_the_live_ones() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&Config::embedded_in(dir.path()))?;
    let scheduler = Scheduler::new(store, LEASE);
    assert!(
        scheduler.assign().await?.is_empty(),
        "no executor, nothing to assign"
    );

    scheduler.register("a", "127.0.0.1:7001").await?;
    scheduler.register("b", "127.0.0.1:7002").await?;
    let moved = scheduler.assign().await?;
    assert_eq!(moved.len(), SHARDS as usize);
    let a = scheduler.heartbeat("a").await?;
    let b = scheduler.heartbeat("b").await?;
    assert_eq!((a.len(), b.len()), (32, 32), "spread evenly");
    assert!(a.iter().chain(&b).all(|(_, epoch)| *epoch == 1));
    assert!(scheduler.assign().await?.is_empty(), "nothing orphaned");

    let worker = WorkerId {
        tenant: TenantId::new("t1")?,
        component: ComponentName::new("counter")?,
        worker: WorkerName::new("w")?,
    };
    let placed = scheduler.locate(&worker).await?;
    let owner_shards = if placed.executor_id == "a" { &a } else { &b };
    assert!(
        owner_shards.contains(&(placed.shard, placed.epoch)),
        "{placed:?}"
    );

    // `b` falls silent; `a` keeps heartbeating past b's lease.
    let deadline = tokio::time::Instant::now() + LEASE * 2;
    while tokio::time::Instant::now() < deadline {
        scheduler.heartbeat("a").await?;
        tokio::time::sleep(LEASE / 8).await;
    }
    let moved = scheduler.assign().await?;
    assert_eq!(moved.len(), 32, "b's shards move");
    assert!(moved.iter().all(|(_, owner)| owner == "a"));
    let a_now = scheduler.heartbeat("a").await?;
    assert_eq!(a_now.len(), SHARDS as usize);
    for (shard, epoch) in &b {
        assert!(
            a_now.contains(&(*shard, epoch + 1)),
            "shard {shard} moved at the next epoch"
        );
    }
    assert!(matches!(
        scheduler.heartbeat("b").await,
        Err(Error::UnknownExecutor(_))
    ));
    let placed = scheduler.locate(&worker).await?;
    assert_eq!(
        (placed.executor_id.as_str(), placed.address.as_str()),
        ("a", "127.0.0.1:7001")
    );

    // Back again, `b` is a member and takes half the shards over from `a` in one pass; each
    // move raises the shard's epoch.
    scheduler.register("b", "127.0.0.1:7002").await?;
    let before = scheduler.heartbeat("a").await?;
    assert_eq!(scheduler.assign().await?.len(), 32);
    assert!(scheduler.assign().await?.is_empty(), "balanced");
    let a = scheduler.heartbeat("a").await?;
    let b = scheduler.heartbeat("b").await?;
    assert_eq!((a.len(), b.len()), (32, 32));
    for (shard, epoch) in &b {
        assert!(
            before.contains(&(*shard, epoch - 1)),
            "shard {shard} moved at the next epoch"
        );
    }
    assert!(matches!(
        scheduler.register("", "x").await,
        Err(Error::Invalid(_))
    ));
    Ok(())
}
