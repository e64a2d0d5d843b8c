//! Group commit: every worker of the executor hands its oplog appends (and the records written
//! with them) to one committer task, which commits whatever has queued up meanwhile in a single
//! store transaction. One fsync then serves many workers' invocations.
//!
//! The committer is a thread of its own that runs the store's transactions directly and calls
//! each request's completion when it is durable: from an invocation's end to its caller's reply,
//! the only hand-offs are to this thread and back. While groups are of one request, neither
//! hand-off sleeps (`commit_poll_us`): the committer polls for the next request, and the
//! submitter, if it has nothing else to do, polls for its commit and completes it on its own
//! thread ([`Committer::submit_polling`]), so that a caller calling again and again does not
//! wait each time for threads to wake.
//!
//! **Invariant:** appends are contiguous. Each request says which index its first entry has; the
//! transaction checks that the entry before it is in the oplog and that index itself is not
//! (`index == last + 1`), so a lost or reordered append can never be followed by a later one.
//!
//! **Invariant:** each request's `done` runs exactly once, once its outcome is known: on the
//! committer's thread, or on its submitter's when that one polled for it ([`Handoff`]).

use invicta_model::WorkerId;
use invicta_model::oplog::{OplogEntry, OplogIndex};
use invicta_store::Store;
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::placement::Fencing;
use crate::records::{self, oplog_key};

/// Requests waiting for the committer; a full queue makes workers wait (back-pressure).
const QUEUE_DEPTH: usize = 4_096;

/// Most bytes one group transaction writes: below the store's 10 MB transaction limit.
const BATCH_BYTES_MAX: usize = 8_000_000;

/// Most requests in one group transaction.
const BATCH_REQUESTS_MAX: usize = 1_024;

/// The longest a thread polls (`commit_poll_us` above it is cut to this): a submitter that polls
/// holds a runtime thread meanwhile, which a slow disk must not make long.
const POLL_MAX: Duration = Duration::from_millis(10);

/// Called once a request is durable, or failed: on the committer's thread, or on its submitter's
/// when that one polls for it ([`Committer::submit_polling`]); it must be quick and never block.
pub(crate) type Done = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// One worker's appends and the records that go with them, committed together or not at all.
pub(crate) struct CommitRequest {
    pub worker: WorkerId,
    /// The index of the first entry appended (`None`: the request appends no entries).
    pub first_index: Option<OplogIndex>,
    pub sets: Vec<(Vec<u8>, Vec<u8>)>,
    pub clears: Vec<Vec<u8>>,
    /// Counters to add to (usage), committed with the work they measure.
    pub adds: Vec<(Vec<u8>, i64)>,
    pub done: Done,
    /// The span of the work being committed; the group commit follows from it.
    pub span: tracing::Span,
}

/// A [`Done`] that sends the result to a receiver, for callers that wait for it.
pub(crate) fn done_channel() -> (Done, oneshot::Receiver<Result<(), Error>>) {
    let (tx, rx) = oneshot::channel();
    (
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
        rx,
    )
}

/// Builds a [`CommitRequest`]: the one place a worker's appends, the records written with them
/// and the counters they move are put together. Each entry is encoded once, here, and the
/// bytes the oplog stores are counted as they are.
pub(crate) struct Commit {
    worker: WorkerId,
    first_index: Option<OplogIndex>,
    sets: Vec<(Vec<u8>, Vec<u8>)>,
    clears: Vec<Vec<u8>>,
    adds: Vec<(Vec<u8>, i64)>,
    /// The encoded entries' bytes.
    oplog_bytes: u64,
    /// What their writes store (chunk headers included).
    stored_bytes: u64,
}

impl Commit {
    pub(crate) fn new(worker: &WorkerId) -> Commit {
        Commit {
            worker: worker.clone(),
            first_index: None,
            sets: Vec::new(),
            clears: Vec::new(),
            adds: Vec::new(),
            oplog_bytes: 0,
            stored_bytes: 0,
        }
    }

    /// Appends the entries, in index order (large ones as chunks).
    pub(crate) fn entries(
        mut self,
        entries: impl IntoIterator<Item = (OplogIndex, OplogEntry)>,
    ) -> Commit {
        for (index, entry) in entries {
            self.push_entry(index, &entry);
        }
        self
    }

    /// Appends one entry at `index`.
    pub(crate) fn entry(mut self, index: OplogIndex, entry: &OplogEntry) -> Commit {
        self.push_entry(index, entry);
        self
    }

    fn push_entry(&mut self, index: OplogIndex, entry: &OplogEntry) {
        let encoded = entry.encode();
        self.first_index.get_or_insert(index);
        self.oplog_bytes = self.oplog_bytes.saturating_add(encoded.len() as u64);
        for (key, value) in records::entry_writes(&self.worker, index, encoded) {
            self.stored_bytes = self.stored_bytes.saturating_add(value.len() as u64);
            self.sets.push((key, value));
        }
    }

    /// Writes a record that may be large (split into chunks when it is).
    pub(crate) fn record(mut self, key: Vec<u8>, value: Vec<u8>) -> Commit {
        self.sets.extend(records::value_writes(key, value));
        self
    }

    /// Writes a small value (a mark, a wake-up key).
    pub(crate) fn set(mut self, key: Vec<u8>, value: Vec<u8>) -> Commit {
        self.sets.push((key, value));
        self
    }

    /// Clears a value, with its chunks when it has any.
    pub(crate) fn clear(mut self, key: Vec<u8>) -> Commit {
        self.clears.push(key);
        self
    }

    /// Adds `delta` to a counter (usage), in the same transaction.
    pub(crate) fn add(mut self, key: Vec<u8>, delta: u64) -> Commit {
        if delta > 0 {
            self.adds
                .push((key, i64::try_from(delta).unwrap_or(i64::MAX)));
        }
        self
    }

    /// The bytes of the encoded entries appended so far.
    pub(crate) fn oplog_bytes(&self) -> u64 {
        self.oplog_bytes
    }

    /// The request, with the oplog's stored bytes counted; `done` hears when it is durable.
    pub(crate) fn request(self, done: Done) -> CommitRequest {
        let stored = self.stored_bytes;
        let worker = self.worker.clone();
        let mut commit = self;
        if stored > 0 {
            let (key, _) = records::stored_add(&worker, &[]);
            commit = commit.add(key, stored);
        }
        CommitRequest {
            worker,
            first_index: commit.first_index,
            sets: commit.sets,
            clears: commit.clears,
            adds: commit.adds,
            done,
            span: tracing::Span::current(),
        }
    }
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
    /// How long a thread polls rather than sleeps, waiting for a commit or for the next request.
    poll: Duration,
    /// Whether the committer's last group was one request alone (commits come one at a time).
    alone: Arc<AtomicBool>,
    /// Whether a submitter polls for its commit now: one at a time.
    polling: Arc<AtomicBool>,
}

impl Committer {
    pub(crate) fn start(
        store: Store,
        metrics: Arc<Metrics>,
        fencing: Arc<Fencing>,
        poll: Duration,
    ) -> Result<Committer, Error> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let poll = poll.min(POLL_MAX);
        let alone = Arc::new(AtomicBool::new(false));
        let flag = alone.clone();
        std::thread::Builder::new()
            .name("oplog-committer".into())
            .spawn(move || run(store, rx, &metrics, &fencing, poll, &flag))
            .map_err(|e| Error::Engine(format!("start the committer thread: {e}")))?;
        Ok(Committer {
            tx,
            poll,
            alone,
            polling: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Queues a request; its `done` is called once it is durable (or failed), on the committer's
    /// thread.
    pub(crate) async fn submit(&self, request: CommitRequest) {
        self.send(request, false).await;
    }

    /// Queues a request of a submitter that has nothing else to do until it is durable (an actor
    /// with nothing queued after its invocation's outcome).
    ///
    /// While commits come one at a time, one such submitter at a time stays on its thread
    /// polling for its commit (up to `poll`) and calls `done` itself: what `done` wakes then
    /// runs on this thread next, without waking a sleeping one (a runtime thread that went idle
    /// meanwhile takes tens of microseconds to come back on a virtual machine), which is most
    /// of what a sequential caller waits for beside the commit. Under load, when groups are
    /// larger, it returns at once and `done` runs on the committer's thread.
    pub(crate) async fn submit_polling(&self, request: CommitRequest) {
        self.send(request, true).await;
    }

    async fn send(&self, mut request: CommitRequest, may_poll: bool) {
        let handoff = if may_poll
            && !self.poll.is_zero()
            && self.alone.load(Ordering::Relaxed)
            && self
                .polling
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            // Lets the next submitter poll once this one is done, or dropped while it waits for
            // room in the queue.
            let turn = Turn(&self.polling);
            let (handoff, done) = Handoff::new(request.done);
            request.done = done;
            Some((handoff, turn))
        } else {
            None
        };
        if let Err(mpsc::error::SendError(request)) = self.tx.send(request).await {
            (request.done)(Err(Error::ShuttingDown));
        }
        if let Some((handoff, _turn)) = handoff {
            handoff.wait(self.poll);
        }
    }
}

/// A submitter's turn to poll; over when dropped.
struct Turn<'a>(&'a AtomicBool);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A request's `done`, called by whichever of its submitter (polling for the outcome) and the
/// committer (which has it) comes second: the submitter if the outcome comes while it polls,
/// the committer once the submitter has given up.
struct Handoff {
    state: std::sync::Mutex<Slot>,
    /// Set with `Slot::Ready`: the submitter polls this, not the lock.
    ready: AtomicBool,
}

enum Slot {
    /// The submitter polls; the outcome has not come.
    Polling(Done),
    /// The outcome came while the submitter polled: it calls `done`.
    Ready(Done, Result<(), Error>),
    /// The submitter gave up: the committer calls `done`.
    GaveUp(Done),
    /// `done` was called.
    Over,
}

impl Handoff {
    /// The handoff, and the `done` the committer is given in place of `done`.
    fn new(done: Done) -> (Arc<Handoff>, Done) {
        let handoff = Arc::new(Handoff {
            state: std::sync::Mutex::new(Slot::Polling(done)),
            ready: AtomicBool::new(false),
        });
        let theirs = handoff.clone();
        let committer_side: Done = Box::new(move |result| {
            let mut state = crate::support::lock(&theirs.state);
            match std::mem::replace(&mut *state, Slot::Over) {
                Slot::Polling(done) => {
                    *state = Slot::Ready(done, result);
                    theirs.ready.store(true, Ordering::Release);
                }
                Slot::GaveUp(done) => {
                    drop(state);
                    done(result);
                }
                other => *state = other,
            }
        });
        (handoff, committer_side)
    }

    /// Polls for the outcome for up to `poll` (yielding the CPU to whoever else wants it between
    /// tries), and calls `done` if it came.
    fn wait(&self, poll: Duration) {
        let started = Instant::now();
        while !self.ready.load(Ordering::Acquire) && started.elapsed() < poll {
            std::thread::yield_now();
        }
        let mut state = crate::support::lock(&self.state);
        match std::mem::replace(&mut *state, Slot::Over) {
            Slot::Ready(done, result) => {
                drop(state);
                done(result);
            }
            Slot::Polling(done) => *state = Slot::GaveUp(done),
            other => *state = other,
        }
    }
}

fn run(
    store: Store,
    mut rx: mpsc::Receiver<CommitRequest>,
    metrics: &Metrics,
    fencing: &Arc<Fencing>,
    poll: Duration,
    alone: &AtomicBool,
) {
    // While the last group was one request, the next is polled for before sleeping.
    while let Some(first) = next(
        &mut rx,
        if alone.load(Ordering::Relaxed) {
            poll
        } else {
            Duration::ZERO
        },
    ) {
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
        alone.store(batch.len() == 1, Ordering::Relaxed);
        commit_batch(&store, batch, metrics, fencing);
    }
}

/// The next request: polled for during `poll` (yielding the CPU to whoever else wants it between
/// tries), then waited for asleep. `None` once every sender is gone.
fn next<T>(rx: &mut mpsc::Receiver<T>, poll: Duration) -> Option<T> {
    if !poll.is_zero() {
        let started = Instant::now();
        loop {
            match rx.try_recv() {
                Ok(request) => return Some(request),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) if started.elapsed() < poll => {
                    std::thread::yield_now();
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
    }
    rx.blocking_recv()
}

/// The requests' content, moved into the transaction body (which may run more than once).
struct Work {
    worker: WorkerId,
    first_index: Option<OplogIndex>,
    sets: Vec<(Vec<u8>, Vec<u8>)>,
    clears: Vec<Vec<u8>>,
    adds: Vec<(Vec<u8>, i64)>,
}

fn commit_batch(
    store: &Store,
    batch: Vec<CommitRequest>,
    metrics: &Metrics,
    fencing: &Arc<Fencing>,
) {
    let started = Instant::now();
    let requests = batch.len();
    // One commit serves many invocations: it is part of the first one's trace, and follows
    // from the others' (links, in OpenTelemetry).
    let span = match batch.first() {
        Some(first) => tracing::info_span!(parent: &first.span, "group commit", requests),
        None => tracing::info_span!("group commit", requests),
    };
    for request in batch.iter().skip(1) {
        span.follows_from(&request.span);
    }
    let _entered = span.enter();
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
    let fence = fencing.clone();
    let result = store.transact_blocking(move |tx| {
        let mut checked = std::collections::HashMap::new();
        for w in all.iter() {
            apply(tx, w, false, &fence, &mut checked)?;
        }
        for (key, delta) in &merged {
            tx.atomic_add(key, *delta)?;
        }
        Ok::<_, Error>(())
    });
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.commit_batch.observe(requests as f64);
    tracing::trace!(
        requests,
        elapsed_us = started.elapsed().as_micros() as u64,
        ok = result.is_ok(),
        "group commit"
    );
    match result {
        Ok(()) => {
            for d in done {
                d(Ok(()));
            }
        }
        Err(_) if work.len() > 1 => {
            // One request's failure (a gap, a limit) must not fail the others: commit them one
            // by one to find out whose it was.
            for (i, d) in done.into_iter().enumerate() {
                d(store.transact_blocking(|tx| {
                    apply(tx, &work[i], true, fencing, &mut Default::default())
                }));
            }
        }
        Err(e) => {
            for d in done {
                d(Err(e.duplicate()));
            }
        }
    }
}

fn apply(
    tx: &mut invicta_store::Transaction<'_>,
    w: &Work,
    with_adds: bool,
    fencing: &Fencing,
    checked: &mut std::collections::HashMap<u32, bool>,
) -> Result<(), Error> {
    // The fence: only the executor holding the worker's shard, at its epoch, writes for it.
    fencing.check(tx, &w.worker, checked)?;
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
    // A clear removes a value whole: a large pending record's chunks too (keys extending its
    // tuple). Other keys cleared here (the running mark, wake-ups) are never chunked.
    for key in &w.clears {
        if crate::records::may_be_chunked(key) {
            crate::records::clear_value(tx, key)?;
        } else {
            tx.clear(key)?;
        }
    }
    if with_adds {
        for (key, delta) in &w.adds {
            tx.atomic_add(key, *delta)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_takes_what_comes_meanwhile_and_sleeping_what_comes_later() {
        let (tx, mut rx) = mpsc::channel::<u32>(4);
        let (go, gone) = std::sync::mpsc::channel::<()>();
        let sender = std::thread::spawn(move || {
            // Sent while the receiver polls (its first try may find nothing: it waits on us).
            tx.blocking_send(1).unwrap();
            // Sent once the receiver is on its way to sleep for it, without polling.
            gone.recv().unwrap();
            tx.blocking_send(2).unwrap();
        });
        assert_eq!(next(&mut rx, Duration::from_secs(60)), Some(1));
        go.send(()).unwrap();
        assert_eq!(next(&mut rx, Duration::ZERO), Some(2));
        sender.join().unwrap();
        assert_eq!(next(&mut rx, Duration::from_micros(100)), None);
        assert_eq!(next(&mut rx, Duration::ZERO), None);
    }

    /// A `done` that reports the thread it ran on and the outcome it was given.
    fn reporting() -> (
        Done,
        std::sync::mpsc::Receiver<(std::thread::ThreadId, bool)>,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let done: Done = Box::new(move |result| {
            let _ = tx.send((std::thread::current().id(), result.is_ok()));
        });
        (done, rx)
    }

    #[test]
    fn an_outcome_that_comes_while_the_submitter_polls_is_handled_by_it() {
        let (done, ran) = reporting();
        let (handoff, committer_side) = Handoff::new(done);
        let committer = std::thread::spawn(move || committer_side(Ok(())));
        handoff.wait(Duration::from_secs(60));
        committer.join().unwrap();
        assert_eq!(ran.try_recv(), Ok((std::thread::current().id(), true)));
        assert!(ran.try_recv().is_err(), "done ran twice");
    }

    #[test]
    fn an_outcome_that_comes_after_the_submitter_gave_up_is_handled_by_the_committer() {
        let (done, ran) = reporting();
        let (handoff, committer_side) = Handoff::new(done);
        handoff.wait(Duration::ZERO);
        assert!(ran.try_recv().is_err(), "done ran without an outcome");
        let committer = std::thread::spawn(move || {
            committer_side(Err(Error::ShuttingDown));
            std::thread::current().id()
        });
        let committer = committer.join().unwrap();
        assert_eq!(ran.try_recv(), Ok((committer, false)));
        assert!(ran.try_recv().is_err(), "done ran twice");
    }
}
