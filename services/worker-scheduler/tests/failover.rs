//! Membership and failover over a real store: shards spread over live executors, and a silent
//! executor's shards move to the others at higher epochs once its lease runs out.

use std::time::Duration;

use invicta_model::shards::SHARDS;
use invicta_model::{ComponentName, TenantId, WorkerId, WorkerName};
use invicta_store::{Config, Store};
use invicta_worker_scheduler::{Error, Scheduler};

const LEASE: Duration = Duration::from_millis(400);

/// A heartbeat releasing nothing: the shards held, with their epochs.
async fn held(scheduler: &Scheduler, id: &str) -> Result<Vec<(u32, u64)>, Error> {
    Ok(scheduler
        .heartbeat(id, &[], false)
        .await?
        .shards
        .into_iter()
        .map(|g| (g.shard, g.epoch))
        .collect())
}

#[tokio::test]
async fn a_silent_executors_shards_move_to_the_live_ones() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&Config::embedded_in(dir.path()))?;
    let scheduler = Scheduler::new(store.clone(), LEASE);
    assert!(
        scheduler.assign().await?.is_empty(),
        "no executor, nothing to assign"
    );

    scheduler.register("a", "127.0.0.1:7001").await?;
    scheduler.register("b", "127.0.0.1:7002").await?;
    let moved = scheduler.assign().await?;
    assert_eq!(moved.len(), SHARDS as usize);
    let a = held(&scheduler, "a").await?;
    let b = held(&scheduler, "b").await?;
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
        held(&scheduler, "a").await?;
        tokio::time::sleep(LEASE / 8).await;
    }
    let moved = scheduler.assign().await?;
    assert_eq!(moved.len(), 32, "b's shards move");
    assert!(moved.iter().all(|(_, owner)| owner == "a"));
    let a_now = held(&scheduler, "a").await?;
    assert_eq!(a_now.len(), SHARDS as usize);
    for (shard, epoch) in &b {
        assert!(
            a_now.contains(&(*shard, epoch + 1)),
            "shard {shard} moved at the next epoch"
        );
    }
    assert!(matches!(
        held(&scheduler, "b").await,
        Err(Error::UnknownExecutor(_))
    ));
    let placed = scheduler.locate(&worker).await?;
    assert_eq!(
        (placed.executor_id.as_str(), placed.address.as_str()),
        ("a", "127.0.0.1:7001")
    );

    // The operator's view: b is gone, a holds every shard, and the move is a failover.
    let view = invicta_worker_scheduler::cluster(&store).await?;
    let a_view = view
        .executors
        .iter()
        .find(|e| e.id == "a")
        .expect("a listed");
    let b_view = view
        .executors
        .iter()
        .find(|e| e.id == "b")
        .expect("b listed");
    assert!(a_view.live && !b_view.live);
    assert_eq!((a_view.shards, b_view.shards), (SHARDS, 0));
    assert_eq!(view.shards.len(), SHARDS as usize);
    assert_eq!(view.failovers.len(), 1, "{:?}", view.failovers);
    let failover = &view.failovers[0];
    assert_eq!((failover.from.as_str(), failover.to.as_str()), ("b", "a"));
    let mut moved_shards: Vec<u32> = b.iter().map(|(s, _)| *s).collect();
    moved_shards.sort_unstable();
    assert_eq!(failover.shards, moved_shards);

    // Back again, `b` is a member and gets half the shards from `a` by hand-off: `a` is told
    // to drain them, keeps them (at their epochs) until it releases them, and they then go to
    // `b` at the next epoch.
    scheduler.register("b", "127.0.0.1:7002").await?;
    let before = held(&scheduler, "a").await?;
    assert_eq!(scheduler.assign().await?.len(), 32, "hand-offs planned");
    assert!(
        scheduler.assign().await?.is_empty(),
        "nothing more while they are under way"
    );
    let grants = scheduler.heartbeat("a", &[], false).await?.shards;
    assert_eq!(
        grants.len(),
        SHARDS as usize,
        "a holds them until it releases them"
    );
    let draining: Vec<u32> = grants
        .iter()
        .filter(|g| g.draining)
        .map(|g| g.shard)
        .collect();
    assert_eq!(draining.len(), 32);
    assert!(held(&scheduler, "b").await?.is_empty());
    assert!(
        before
            .iter()
            .all(|(s, e)| grants.iter().any(|g| (g.shard, g.epoch) == (*s, *e))),
        "draining keeps the epochs: a's commits still pass the fence"
    );
    let a = scheduler.heartbeat("a", &draining, false).await?.shards;
    assert_eq!(a.len(), 32);
    assert!(a.iter().all(|g| !g.draining));
    assert!(scheduler.assign().await?.is_empty(), "balanced");
    let a = held(&scheduler, "a").await?;
    let b = held(&scheduler, "b").await?;
    assert_eq!((a.len(), b.len()), (32, 32));
    assert_eq!(
        invicta_worker_scheduler::cluster(&store)
            .await?
            .failovers
            .len(),
        1,
        "a planned hand-off is not a failover"
    );
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

#[tokio::test]
async fn hand_offs_are_called_off_when_their_target_dies_and_forced_when_never_released()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&Config::embedded_in(dir.path()))?;
    let scheduler = Scheduler::new(store, LEASE);
    scheduler.register("a", "127.0.0.1:7001").await?;
    assert_eq!(scheduler.assign().await?.len(), SHARDS as usize);
    let epochs = held(&scheduler, "a").await?;

    // `c` joins, hand-offs to it are planned, and it dies before `a` releases anything: the
    // hand-offs are called off and `a` keeps every shard, undrained, at the same epochs.
    scheduler.register("c", "127.0.0.1:7003").await?;
    assert_eq!(scheduler.assign().await?.len(), 32);
    let deadline = tokio::time::Instant::now() + LEASE + LEASE / 4;
    while tokio::time::Instant::now() < deadline {
        held(&scheduler, "a").await?;
        tokio::time::sleep(LEASE / 8).await;
    }
    assert!(scheduler.assign().await?.is_empty());
    let beat = scheduler.heartbeat("a", &[], false).await?;
    assert!(beat.alone, "c is gone: nobody else could take a shard");
    assert_eq!(beat.incoming, 0);
    let grants = beat.shards;
    assert!(grants.iter().all(|g| !g.draining), "called off");
    assert_eq!(held(&scheduler, "a").await?, epochs);
    // A release that crosses the cancellation changes nothing.
    let late = scheduler
        .heartbeat("a", &[0, 1, 2, 999], false)
        .await?
        .shards;
    assert_eq!(late.len(), SHARDS as usize);

    // `b` joins; `a` never releases. After a lease the moves are forced, at the next epoch.
    scheduler.register("b", "127.0.0.1:7002").await?;
    assert_eq!(scheduler.assign().await?.len(), 32);
    let planned_at = tokio::time::Instant::now();
    let mut forced = Vec::new();
    while forced.is_empty() {
        held(&scheduler, "a").await?;
        held(&scheduler, "b").await?;
        forced = scheduler.assign().await?;
        anyhow::ensure!(planned_at.elapsed() < LEASE * 4, "never forced");
        tokio::time::sleep(LEASE / 8).await;
    }
    assert!(planned_at.elapsed() >= LEASE, "not before a lease");
    assert_eq!(forced.len(), 32);
    assert!(forced.iter().all(|(_, to)| to == "b"));
    let b = held(&scheduler, "b").await?;
    assert_eq!(b.len(), 32);
    for (shard, epoch) in &b {
        assert!(
            epochs.contains(&(*shard, epoch - 1)),
            "shard {shard} forced at the next epoch"
        );
    }
    assert_eq!(held(&scheduler, "a").await?.len(), 32);
    Ok(())
}

#[tokio::test]
async fn a_leaving_executor_hands_every_shard_off_and_gets_none() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&Config::embedded_in(dir.path()))?;
    let scheduler = Scheduler::new(store, LEASE);
    scheduler.register("a", "127.0.0.1:7001").await?;
    scheduler.register("b", "127.0.0.1:7002").await?;
    scheduler.register("c", "127.0.0.1:7003").await?;
    scheduler.assign().await?;
    let a = held(&scheduler, "a").await?;
    assert!(!a.is_empty());

    // `a` says it is leaving: each of its shards is handed to the least loaded of the others.
    let grants = scheduler.heartbeat("a", &[], true).await?.shards;
    assert!(
        grants.iter().all(|g| !g.draining),
        "planned by the next pass"
    );
    let planned = scheduler.assign().await?;
    assert_eq!(planned.len(), a.len());
    let b_sees = scheduler.heartbeat("b", &[], false).await?;
    assert!(
        b_sees.incoming > 0,
        "b is told shards are coming: {b_sees:?}"
    );
    assert!(!b_sees.alone);
    assert!(planned.iter().all(|(_, to)| to != "a"));
    let (to_b, to_c) = (
        planned.iter().filter(|(_, to)| to == "b").count(),
        planned.iter().filter(|(_, to)| to == "c").count(),
    );
    assert!(to_b.abs_diff(to_c) <= 1, "spread: {to_b} and {to_c}");
    let grants = scheduler.heartbeat("a", &[], true).await?.shards;
    assert!(grants.iter().all(|g| g.draining));
    let all: Vec<u32> = grants.iter().map(|g| g.shard).collect();
    assert!(
        scheduler
            .heartbeat("a", &all, true)
            .await?
            .shards
            .is_empty()
    );
    assert_eq!(
        held(&scheduler, "b").await?.len() + held(&scheduler, "c").await?.len(),
        SHARDS as usize
    );
    // Balanced without it, and it gets nothing back while it stays a member.
    assert!(scheduler.assign().await?.is_empty());
    assert!(scheduler.heartbeat("a", &[], true).await?.shards.is_empty());
    Ok(())
}
