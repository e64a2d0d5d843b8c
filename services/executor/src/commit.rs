//! Group commit: every worker of the executor hands its oplog appends (and the records written
//! with them) to one committer task, which commits whatever has queued up meanwhile in a single
//! store transaction. One fsync then serves many workers' invocations.
//!
//! **Invariant:** appends are contiguous. Each request says which index its first entry has; the
//! transaction checks that the entry before it is in the oplog and that index itself is not
//! (`index == last + 1`), so a lost or reordered append can never be followed by a later one.

use invicta_model::WorkerId;
use invicta_model::oplog::OplogIndex;
use invicta_store::Store;
use tokio::sync::{mpsc, oneshot};

use crate::Error;
use crate::records::oplog_key;

/// Requests waiting for the committer; a full queue makes workers wait (back-pressure).
const QUEUE_DEPTH: usize = 4_096;

/// Most bytes one group transaction writes: below the store's 10 MB transaction limit.
const BATCH_BYTES_MAX: usize = 8_000_000;

/// Most requests in one group transaction.
const BATCH_REQUESTS_MAX: usize = 1_024;

/// One worker's appends and the records that go with them, committed together or not at all.
pub(crate) struct CommitRequest {
    pub worker: WorkerId,
    /// The index of the first entry appended (`None`: the request appends no entries).
    pub first_index: Option<OplogIndex>,
    pub sets: Vec<(Vec<u8>, Vec<u8>)>,
    pub clears: Vec<Vec<u8>>,
    /// Counters to add to (usage), committed with the work they measure.
    pub adds: Vec<(Vec<u8>, i64)>,
    pub done: oneshot::Sender<Result<(), Error>>,
}

impl CommitRequest {
    fn bytes(&self) -> usize {
        self.sets
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + self.clears.iter().map(Vec::len).sum::<usize>()
            + self.adds.iter().map(|(k, _)| k.len() + 8).sum::<usize>()
    }
}

#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::Sender<CommitRequest>,
}

impl Committer {
    pub(crate) fn start(store: Store) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(store, rx));
        Committer { tx }
    }

    /// Queues a request; its `done` fires once it is durable (or failed).
    pub(crate) async fn submit(&self, request: CommitRequest) {
        if let Err(mpsc::error::SendError(request)) = self.tx.send(request).await {
            let _ = request.done.send(Err(Error::ShuttingDown));
        }
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<CommitRequest>) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < BATCH_REQUESTS_MAX && bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.bytes();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        commit_batch(&store, batch).await;
    }
}

/// The requests' content, moved into the transaction body (which may run more than once).
struct Work {
    worker: WorkerId,
    first_index: Option<OplogIndex>,
    sets: Vec<(Vec<u8>, Vec<u8>)>,
    clears: Vec<Vec<u8>>,
    adds: Vec<(Vec<u8>, i64)>,
}

async fn commit_batch(store: &Store, batch: Vec<CommitRequest>) {
    let (work, done): (Vec<Work>, Vec<_>) = batch
        .into_iter()
        .map(|r| {
            (
                Work {
                    worker: r.worker,
                    first_index: r.first_index,
                    sets: r.sets,
                    clears: r.clears,
                    adds: r.adds,
                },
                r.done,
            )
        })
        .unzip();
    let work = std::sync::Arc::new(work);
    let all = work.clone();
    // Usage counters of the whole batch are summed first: one atomic add per counter.
    let mut merged: std::collections::HashMap<Vec<u8>, i64> = std::collections::HashMap::new();
    for w in work.iter() {
        for (key, delta) in &w.adds {
            let sum = merged.entry(key.clone()).or_insert(0);
            *sum = sum.saturating_add(*delta);
        }
    }
    let result = store
        .transact(move |tx| {
            for w in all.iter() {
                apply(tx, w, false)?;
            }
            for (key, delta) in &merged {
                tx.atomic_add(key, *delta)?;
            }
            Ok::<_, Error>(())
        })
        .await;
    match result {
        Ok(()) => {
            for d in done {
                let _ = d.send(Ok(()));
            }
        }
        Err(_) if work.len() > 1 => {
            // One request's failure (a gap, a limit) must not fail the others: commit them one
            // by one to find out whose it was.
            for (i, d) in done.into_iter().enumerate() {
                let work = work.clone();
                let result = store.transact(move |tx| apply(tx, &work[i], true)).await;
                let _ = d.send(result);
            }
        }
        Err(e) => {
            for d in done {
                let _ = d.send(Err(e.duplicate()));
            }
        }
    }
}

fn apply(tx: &mut invicta_store::Transaction<'_>, w: &Work, with_adds: bool) -> Result<(), Error> {
    if let Some(first) = w.first_index {
        let previous_present = first == 1 || tx.get(&oplog_key(&w.worker, first - 1))?.is_some();
        let slot_free = tx.get(&oplog_key(&w.worker, first))?.is_none();
        if !previous_present || !slot_free {
            return Err(Error::OplogGap {
                worker: w.worker.to_string(),
                index: first,
            });
        }
    }
    for (key, value) in &w.sets {
        tx.set(key, value)?;
    }
    for key in &w.clears {
        tx.clear(key)?;
    }
    if with_adds {
        for (key, delta) in &w.adds {
            tx.atomic_add(key, *delta)?;
        }
    }
    Ok(())
}
