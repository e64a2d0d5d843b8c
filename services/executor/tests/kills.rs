//! A kill at a random point, then recovery: every accepted invocation is applied exactly once.
//!
//! An executor takes random invocations (run now, or enqueued to run in the background) of the
//! counter; at a random point among them — after a random number were acknowledged, and a
//! random few microseconds into the next — it is killed, as the process dying would leave it:
//! a second executor opens the same store and takes every shard over, so nothing the first
//! does from then on can commit, and what it held only in memory is lost. The second recovers
//! (cut-off and pending invocations) and must apply every invocation the first acknowledged,
//! each once; a third, replaying the whole oplog afresh, must find the same state.
//!
//! Each invocation adds a distinct power of four, so the total says which were applied and
//! that none was applied twice (twice a power of four is a base-4 digit 2).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use invicta_executor::{Executor, InvocationState, Limits};
use invicta_model::WorkerId;
use proptest::prelude::*;
use serde_json::json;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy)]
enum Op {
    Invoke,
    Enqueue,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::Invoke), Just(Op::Enqueue)]
}

async fn start(
    dir: &std::path::Path,
) -> anyhow::Result<(Executor, invicta_component_registry::Registry)> {
    let (store, registry, engine) = common::parts(dir).await?;
    let executor = Executor::start(Default::default(), store, registry.clone(), engine).await?;
    Ok((executor, registry))
}

fn key(i: usize) -> String {
    format!("op-{i}")
}

/// Runs the ops against `executor` in order until told to stop; the indices it acknowledged.
async fn run_ops(
    executor: Executor,
    id: WorkerId,
    ops: Vec<Op>,
    stop: Arc<AtomicBool>,
    acknowledged: watch::Sender<Vec<usize>>,
) {
    let limits = Limits::unlimited();
    for (i, op) in ops.into_iter().enumerate() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let delta = json!(4_i64.pow(i as u32));
        let ok = match op {
            Op::Invoke => executor
                .invoke(&id, "add", &[delta], Some(key(i)), &limits)
                .await
                .is_ok(),
            Op::Enqueue => matches!(
                executor
                    .enqueue(&id, "add", &[delta], Some(key(i)), None, &limits)
                    .await,
                Ok((_, true))
            ),
        };
        if ok {
            acknowledged.send_modify(|a| a.push(i));
        }
    }
}

async fn kill_and_recover(ops: Vec<Op>, kill_after: usize, delay_us: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (first, registry) = start(dir.path()).await?;
    let id = common::counter(&registry, "w").await?;
    let limits = Limits::unlimited();
    first
        .create_worker(&id, Vec::new(), Vec::new(), None, &limits)
        .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut acknowledged) = watch::channel(Vec::new());
    let count = ops.len();
    let issuing = tokio::spawn(run_ops(first.clone(), id.clone(), ops, stop.clone(), tx));
    // The random point: after `kill_after` acknowledgements (or the end), and a little more.
    let kill_after = kill_after.min(count);
    let _ = acknowledged.wait_for(|a| a.len() >= kill_after).await;
    // Not a wait for anything: the random instant of the kill, a little into the next op.
    tokio::time::sleep(Duration::from_micros(delay_us)).await;
    let (second, _) = start(dir.path()).await?;
    stop.store(true, Ordering::Release);
    tokio::time::timeout(Duration::from_secs(60), issuing).await??;
    let accepted = acknowledged.borrow().clone();

    // Every acknowledged invocation completes at the new owner.
    for i in &accepted {
        common::eventually(
            &format!("op {i} completed"),
            Duration::from_secs(20),
            || async {
                match second.invocation(&id, &key(*i)).await? {
                    InvocationState::Completed(_) => Ok(Some(())),
                    InvocationState::Pending { .. } => Ok(None),
                    other => anyhow::bail!("op {i} was acknowledged but ended {other:?}"),
                }
            },
        )
        .await?;
    }
    let total = second
        .invoke(&id, "get", &[], None, &limits)
        .await?
        .result
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("get answered no number"))?;
    let mut applied = Vec::new();
    let mut rest = total;
    for i in 0..count {
        match rest % 4 {
            0 => {}
            1 => applied.push(i),
            digit => anyhow::bail!("op {i} applied {digit} times (total {total})"),
        }
        rest /= 4;
    }
    anyhow::ensure!(rest == 0, "more was applied than was asked: {total}");
    for i in &accepted {
        anyhow::ensure!(
            applied.contains(i),
            "op {i} was acknowledged and never applied: applied {applied:?}"
        );
    }

    // A third executor, replaying from the oplog alone, finds the same state.
    let (third, _) = start(dir.path()).await?;
    let replayed = third.invoke(&id, "get", &[], None, &limits).await?.result;
    anyhow::ensure!(
        replayed == json!(total),
        "replay found {replayed}, the second executor {total}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn a_kill_at_a_random_point_applies_every_accepted_invocation_exactly_once(
        ops in prop::collection::vec(op(), 1..8),
        kill_after in 0_usize..8,
        delay_us in 0_u64..3_000,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let outcome = runtime.block_on(kill_and_recover(ops, kill_after, delay_us));
        runtime.shutdown_background();
        prop_assert!(outcome.is_ok(), "{:?}", outcome);
    }
}
