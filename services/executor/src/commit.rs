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
//! With the oplog's tail (an executor owning every shard for good), a request's small entries are
//! appended as one record of the tail, and workers' records move to their keys several at a time
//! ([`crate::tail`]); the committer then knows each such worker's last index, and the transaction
//! checks that its entry is still where the committer put it. Whoever reads or removes a worker's
//! entries first calls [`Committer::evict`]; an executor taking shards drains what earlier runs
//! left for their workers ([`drain_tails`]) before any of them is read.
//!
//! **Invariant:** each request's `done` runs exactly once, once its outcome is known: on the
//! committer's thread, or on its submitter's when that one polled for it ([`Handoff`]).

use invicta_model::WorkerId;
use invicta_model::oplog::{OplogEntry, OplogIndex};
use invicta_store::Store;
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::placement::Fencing;
use crate::records::{self, oplog_key};
use crate::tail::{self, Entries, Placed, Previous, Tail};

/// Requests waiting for the committer; a full queue makes workers wait (back-pressure).
const QUEUE_DEPTH: usize = 4_096;

/// Most bytes of requests one group transaction writes: below the store's 10 MB transaction
/// limit with the tail's moves (at most 2 MiB a group) besides.
const BATCH_BYTES_MAX: usize = 7_000_000;

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
    /// The index of the first and last entry appended (`None`: the request appends none).
    pub indices: Option<(OplogIndex, OplogIndex)>,
    /// Its entries small enough for one store value, encoded, in index order: appended to the
    /// tail or written at their keys (larger ones are in `sets`, as chunks).
    pub entries: Entries,
    /// The worker's records leave the tail (a read of its oplog follows); nothing else.
    pub evict: bool,
    pub sets: Vec<(Vec<u8>, Vec<u8>)>,
    pub clears: Vec<Vec<u8>>,
    /// Counters to add to (usage), committed with the work they measure.
    pub adds: Vec<(Vec<u8>, i64)>,
    pub done: Done,
    /// The span of the work being committed; the group commit follows from it.
    pub span: tracing::Span,
}

/// What the committer's queue carries.
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every message is a request; boxing it would allocate once a commit"
)]
enum Message {
    Commit(CommitRequest),
    /// The executor went idle with records in the tail: move them now (see [`settle`]).
    Settle,
}

/// The oplog's tail as the committer and its callers share it: the committer's memory of it, and
/// the writer its records are keyed under.
pub(crate) struct SharedTail {
    tail: std::sync::Mutex<Tail>,
    writer: String,
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
    span: Option<(OplogIndex, OplogIndex)>,
    entries: Entries,
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
            span: None,
            entries: Vec::new(),
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
        self.span = Some(
            self.span
                .map_or((index, index), |(first, _)| (first, index)),
        );
        self.oplog_bytes = self.oplog_bytes.saturating_add(encoded.len() as u64);
        if encoded.len() <= records::ENTRY_CHUNK_BYTES {
            self.stored_bytes = self.stored_bytes.saturating_add(encoded.len() as u64);
            self.entries.push((index, encoded));
            return;
        }
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
            indices: commit.span,
            entries: commit.entries,
            evict: false,
            sets: commit.sets,
            clears: commit.clears,
            adds: commit.adds,
            done,
            span: tracing::Span::current(),
        }
    }
}

impl CommitRequest {
    /// A request that takes `worker`'s records out of the tail.
    fn evict(worker: &WorkerId, done: Done) -> CommitRequest {
        CommitRequest {
            worker: worker.clone(),
            indices: None,
            entries: Vec::new(),
            evict: true,
            sets: Vec::new(),
            clears: Vec::new(),
            adds: Vec::new(),
            done,
            span: tracing::Span::current(),
        }
    }

    fn bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|(_, e)| e.len() + 40)
            .sum::<usize>()
            + self
                .sets
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.clears.iter().map(Vec::len).sum::<usize>()
            + self.adds.iter().map(|(k, _)| k.len() + 8).sum::<usize>()
    }
}

#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::Sender<Message>,
    /// How long a thread polls rather than sleeps, waiting for a commit or for the next request.
    poll: Duration,
    /// Whether the committer's last group was one request alone (commits come one at a time).
    alone: Arc<AtomicBool>,
    /// Whether a submitter polls for its commit now: one at a time.
    polling: Arc<AtomicBool>,
    /// Requests sent so far: a submitter polls only while no other request follows its own
    /// (another means commits no longer come one at a time, and the thread has other work).
    sent: Arc<AtomicU64>,
    /// The oplog's tail, when appends go through it (an executor owning every shard for good).
    tail: Option<Arc<SharedTail>>,
}

impl Committer {
    pub(crate) fn start(
        store: Store,
        metrics: Arc<Metrics>,
        fencing: Arc<Fencing>,
        poll: Duration,
        with_tail: bool,
    ) -> Result<Committer, Error> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let poll = poll.min(POLL_MAX);
        let alone = Arc::new(AtomicBool::new(false));
        let flag = alone.clone();
        let tail = with_tail.then(|| {
            Arc::new(SharedTail {
                tail: std::sync::Mutex::new(Tail::new()),
                writer: fencing.id.clone(),
            })
        });
        let sent = Arc::new(AtomicU64::new(0));
        if let Some(tail) = &tail {
            let (tx, sent, tail) = (tx.downgrade(), sent.clone(), tail.clone());
            std::thread::Builder::new()
                .name("oplog-settler".into())
                .spawn(move || watch_idle(&tx, &sent, &tail))
                .map_err(|e| Error::Engine(format!("start the tail's settler thread: {e}")))?;
        }
        let theirs = tail.clone();
        std::thread::Builder::new()
            .name("oplog-committer".into())
            .spawn(move || {
                run(
                    store,
                    rx,
                    &metrics,
                    &fencing,
                    poll,
                    &flag,
                    theirs.as_deref(),
                )
            })
            .map_err(|e| Error::Engine(format!("start the committer thread: {e}")))?;
        Ok(Committer {
            tx,
            poll,
            alone,
            polling: Arc::new(AtomicBool::new(false)),
            sent,
            tail,
        })
    }

    /// Moves every record out of the tail (a clean stop leaves each oplog whole at its keys).
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let Some(tail) = &self.tail else {
            return Ok(());
        };
        let held = crate::support::lock(&tail.tail).held();
        let mut waits = Vec::with_capacity(held.len());
        for worker in &held {
            let (done, wait) = done_channel();
            self.submit(CommitRequest::evict(worker, done)).await;
            waits.push(wait);
        }
        for wait in waits {
            wait.await.unwrap_or(Err(Error::ShuttingDown))?;
        }
        Ok(())
    }

    /// Makes the worker's oplog whole at its keys: moves its records out of the tail, if it has
    /// any. Whoever reads a worker's oplog from the store (its replay, a query, a fork, an
    /// archive) or removes entries from it (a delete, a revert) calls this first.
    pub(crate) async fn evict(&self, worker: &WorkerId) -> Result<(), Error> {
        let Some(tail) = &self.tail else {
            return Ok(());
        };
        if !crate::support::lock(&tail.tail).holds(worker) {
            return Ok(());
        }
        let (done, wait) = done_channel();
        self.submit(CommitRequest::evict(worker, done)).await;
        wait.await.unwrap_or(Err(Error::ShuttingDown))
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
    /// larger, it returns at once, and it stops polling as soon as another request follows its
    /// own: `done` then runs on the committer's thread.
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
        if let Err(mpsc::error::SendError(Message::Commit(request))) =
            self.tx.send(Message::Commit(request)).await
        {
            (request.done)(Err(Error::ShuttingDown));
        }
        let ours = self.sent.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if let Some((handoff, _turn)) = handoff {
            handoff.wait(self.poll, || self.sent.load(Ordering::Relaxed) != ours);
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
    /// tries) or until `crowded` says other requests came, and calls `done` if it came.
    fn wait(&self, poll: Duration, crowded: impl Fn() -> bool) {
        let started = Instant::now();
        while !self.ready.load(Ordering::Acquire) && started.elapsed() < poll && !crowded() {
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
    mut rx: mpsc::Receiver<Message>,
    metrics: &Metrics,
    fencing: &Arc<Fencing>,
    poll: Duration,
    alone: &AtomicBool,
    tail: Option<&SharedTail>,
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
        let mut bytes = 0;
        let mut batch = Vec::new();
        let mut message = Some(first);
        while let Some(m) = message.take() {
            if let Message::Commit(request) = m {
                bytes += request.bytes();
                batch.push(request);
            }
            if batch.len() < BATCH_REQUESTS_MAX && bytes < BATCH_BYTES_MAX {
                message = rx.try_recv().ok();
            }
        }
        match (batch.is_empty(), tail) {
            (true, Some(tail)) => settle(&store, &rx, metrics, fencing, tail),
            (true, None) => {}
            (false, _) => {
                alone.store(batch.len() == 1, Ordering::Relaxed);
                commit_batch(&store, batch, metrics, fencing, tail);
            }
        }
    }
}

/// Groups one settling runs at most (each moves up to 64 workers' records, or clears moved ones).
const SETTLE_GROUPS_MAX: usize = 1_024;

/// Moves the tail's records to their workers' keys, and clears them, while nothing else is
/// queued: the executor went idle, so that every record has aged (see [`watch_idle`]) and each
/// oplog is whole at its keys a moment after the last commit, not at the next one.
fn settle(
    store: &Store,
    rx: &mpsc::Receiver<Message>,
    metrics: &Metrics,
    fencing: &Fencing,
    tail: &SharedTail,
) {
    for _ in 0..SETTLE_GROUPS_MAX {
        if !rx.is_empty() {
            return;
        }
        let now = crate::support::now_ms();
        let plan = crate::support::lock(&tail.tail).plan(&[], now, true);
        if plan.is_empty() {
            return;
        }
        let result = store.transact_blocking(|tx| {
            write_group(tx, &[], Some(&plan), Some(&tail.writer), None, fencing)
        });
        if let Err(error) = result {
            tracing::warn!(%error, "move the oplog's tail of an idle executor");
            return;
        }
        let mut t = crate::support::lock(&tail.tail);
        t.apply(plan, Vec::new(), now);
        metrics.tail_records.set(t.len() as i64);
    }
}

/// Asks the committer to settle the tail once a whole [`tail::AGE_MAX_MS`] went by without a
/// request while records wait (then every one of them has aged); ends with the committer.
fn watch_idle(tx: &mpsc::WeakSender<Message>, sent: &AtomicU64, tail: &SharedTail) {
    let mut seen = sent.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(tail::AGE_MAX_MS));
        let Some(tx) = tx.upgrade() else {
            return;
        };
        let now = sent.load(Ordering::Relaxed);
        if now == seen && crate::support::lock(&tail.tail).len() > 0 {
            // A full queue is a busy committer: it moves aged records with its groups.
            let _ = tx.try_send(Message::Settle);
        }
        seen = now;
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

/// The requests' content, borrowed by the transaction body (which may run more than once).
struct Work {
    worker: WorkerId,
    indices: Option<(OplogIndex, OplogIndex)>,
    entries: Entries,
    evict: bool,
    sets: Vec<(Vec<u8>, Vec<u8>)>,
    clears: Vec<Vec<u8>>,
    adds: Vec<(Vec<u8>, i64)>,
}

impl Work {
    fn planned(&self) -> tail::Request<'_> {
        tail::Request {
            worker: &self.worker,
            entries: &self.entries,
            span: self.indices,
            evict: self.evict,
        }
    }
}

fn commit_batch(
    store: &Store,
    batch: Vec<CommitRequest>,
    metrics: &Metrics,
    fencing: &Arc<Fencing>,
    tail: Option<&SharedTail>,
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
                    indices: r.indices,
                    entries: r.entries,
                    evict: r.evict,
                    sets: r.sets,
                    clears: r.clears,
                    adds: r.adds,
                },
                r.done,
            )
        })
        .unzip();
    // Usage counters of the whole batch are summed first: one atomic add per counter, in key order.
    let mut merged: std::collections::BTreeMap<&[u8], i64> = std::collections::BTreeMap::new();
    for w in &work {
        for (key, delta) in &w.adds {
            let sum = merged.entry(key.as_slice()).or_insert(0);
            *sum = sum.saturating_add(*delta);
        }
    }
    let now = crate::support::now_ms();
    // The tail's lock is held to plan and to apply, never across the transaction.
    let plan = tail.map(|t| {
        let planned: Vec<_> = work.iter().map(Work::planned).collect();
        crate::support::lock(&t.tail).plan(&planned, now, true)
    });
    let writer = tail.map(|t| t.writer.as_str());
    let result = store.transact_blocking(|tx| {
        write_group(tx, &work, plan.as_ref(), writer, Some(&merged), fencing)
    });
    if let (Some(t), Some(plan), Ok(())) = (tail, plan, &result) {
        let appended = work
            .into_iter()
            .map(|w| (w.worker, w.indices, w.entries))
            .collect();
        let mut t = crate::support::lock(&t.tail);
        t.apply(plan, appended, now);
        metrics.tail_records.set(t.len() as i64);
        drop(t);
        finish(result, done, metrics, started, requests);
        return;
    }
    match result {
        Err(_) if work.len() > 1 => {
            observe(metrics, started, requests, false);
            // One request's failure (a gap, a limit) must not fail the others: commit them one
            // by one to find out whose it was.
            for (w, d) in work.into_iter().zip(done) {
                d(commit_alone(store, w, fencing, tail, now));
            }
        }
        other => finish(other, done, metrics, started, requests),
    }
}

/// Records drained by one transaction at most.
const DRAIN_RECORDS: usize = 512;

/// Moves the records left in the oplog's tail by an earlier run (of any executor) for workers of
/// `shards` (taken at the epochs given) to their workers' keys, where an entry is not there yet,
/// and clears them; records of other shards stay for their owners. Run when shards are taken,
/// before any of their workers is read: each record's shard lease is checked in the transaction
/// (`owner` at that epoch). Returns the records drained.
pub(crate) fn drain_tails(
    store: &Store,
    owner: &str,
    shards: &std::collections::HashMap<u32, u64>,
) -> Result<usize, Error> {
    let prefix = tail::records_prefix();
    let (mut from, end) = invicta_store::keys::prefix_range(&prefix);
    let mut drained = 0;
    loop {
        let (read, moved, last) = store.transact_blocking(|tx| {
            let rows = tx.get_range(
                &from,
                &end,
                invicta_store::RangeOptions::limit(DRAIN_RECORDS),
            )?;
            let mut held: std::collections::HashMap<u32, bool> = std::collections::HashMap::new();
            let mut moved = 0;
            for row in &rows {
                let (worker, entries) = tail::decode_record(&row.value).ok_or_else(|| {
                    Error::Corrupt("an oplog tail record that does not decode".into())
                })?;
                let shard = invicta_model::shards::shard_of(&worker);
                let Some(epoch) = shards.get(&shard).copied() else {
                    continue;
                };
                let ours = match held.get(&shard) {
                    Some(ours) => *ours,
                    None => {
                        let lease = tx.get(&invicta_model::shards::lease_key(shard))?;
                        let ours = lease
                            .map(|bytes| {
                                records::decode_json::<invicta_model::shards::ShardLease>(
                                    "shard lease",
                                    &bytes,
                                )
                            })
                            .transpose()?
                            .is_some_and(|l| l.owner == owner && l.epoch == epoch);
                        held.insert(shard, ours);
                        ours
                    }
                };
                if !ours {
                    return Err(Error::Fenced {
                        worker: worker.to_string(),
                        shard,
                    });
                }
                for (index, bytes) in entries {
                    let key = oplog_key(&worker, index);
                    if tx.get(&key)?.is_none() {
                        tx.set(&key, &bytes)?;
                    }
                }
                tx.clear(&row.key)?;
                moved += 1;
            }
            Ok::<_, Error>((rows.len(), moved, rows.last().map(|r| r.key.clone())))
        })?;
        drained += moved;
        match last {
            Some(mut key) if read == DRAIN_RECORDS => {
                key.push(0);
                from = key;
            }
            _ => return Ok(drained),
        }
    }
}

/// [`drain_tails`] on a blocking thread, saying how much it moved.
pub(crate) async fn drain_tails_of(
    store: &Store,
    owner: &str,
    shards: std::collections::HashMap<u32, u64>,
) -> Result<(), Error> {
    if shards.is_empty() {
        return Ok(());
    }
    let (store, owner) = (store.clone(), owner.to_string());
    let count = shards.len();
    let drained = tokio::task::spawn_blocking(move || drain_tails(&store, &owner, &shards))
        .await
        .map_err(|e| Error::Engine(format!("drain the oplog's tail: {e}")))??;
    if drained > 0 {
        tracing::info!(
            records = drained,
            shards = count,
            "oplog tail records of earlier runs moved to their workers' keys"
        );
    }
    Ok(())
}

fn observe(metrics: &Metrics, started: Instant, requests: usize, ok: bool) {
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.commit_batch.observe(requests as f64);
    tracing::trace!(
        requests,
        elapsed_us = started.elapsed().as_micros() as u64,
        ok,
        "group commit"
    );
}

fn finish(
    result: Result<(), Error>,
    done: Vec<Done>,
    metrics: &Metrics,
    started: Instant,
    requests: usize,
) {
    observe(metrics, started, requests, result.is_ok());
    match result {
        Ok(()) => {
            for d in done {
                d(Ok(()));
            }
        }
        Err(e) => {
            for d in done {
                d(Err(e.duplicate()));
            }
        }
    }
}

/// Commits one request of a group that failed, alone (appending to the tail, moving nothing
/// but what an eviction moves).
fn commit_alone(
    store: &Store,
    mut w: Work,
    fencing: &Fencing,
    tail: Option<&SharedTail>,
    now: u64,
) -> Result<(), Error> {
    let plan = tail.map(|t| crate::support::lock(&t.tail).plan(&[w.planned()], now, false));
    let writer = tail.map(|t| t.writer.as_str());
    store.transact_blocking(|tx| {
        write_group(
            tx,
            std::slice::from_ref(&w),
            plan.as_ref(),
            writer,
            None,
            fencing,
        )
    })?;
    if let (Some(t), Some(plan)) = (tail, plan) {
        let entries = std::mem::take(&mut w.entries);
        crate::support::lock(&t.tail).apply(plan, vec![(w.worker, w.indices, entries)], now);
    }
    Ok(())
}

/// A group's transaction body: the tail's moves, each request's writes, the usage counters
/// (summed for the group in `merged`, or each request's own when it is `None`), the tail's clears.
fn write_group(
    tx: &mut invicta_store::Transaction<'_>,
    work: &[Work],
    plan: Option<&tail::Plan>,
    writer: Option<&str>,
    merged: Option<&std::collections::BTreeMap<&[u8], i64>>,
    fencing: &Fencing,
) -> Result<(), Error> {
    let mut checked = std::collections::HashMap::new();
    if let Some(plan) = plan {
        move_records(tx, plan, fencing, &mut checked)?;
    }
    for (i, w) in work.iter().enumerate() {
        let placed = plan.and_then(|p| p.requests.get(i));
        apply(
            tx,
            w,
            placed,
            writer,
            merged.is_none(),
            fencing,
            &mut checked,
        )?;
    }
    for (key, delta) in merged.into_iter().flatten() {
        tx.atomic_add(key, *delta)?;
    }
    if let (Some(plan), Some(writer)) = (plan, writer) {
        clear_records(tx, plan, writer)?;
    }
    Ok(())
}

/// Clears the records a plan clears: the oldest as one range, an evicted worker's one by one.
fn clear_records(
    tx: &mut invicta_store::Transaction<'_>,
    plan: &tail::Plan,
    writer: &str,
) -> Result<(), Error> {
    if let Some((first, last)) = plan.front {
        tx.clear_range(
            &tail::record_key(writer, first),
            &tail::record_key(writer, last.saturating_add(1)),
        )?;
    }
    for seq in &plan.clears {
        tx.clear(&tail::record_key(writer, *seq))?;
    }
    Ok(())
}

/// Writes the records a plan moves at their workers' keys (each worker's shard fenced).
fn move_records(
    tx: &mut invicta_store::Transaction<'_>,
    plan: &tail::Plan,
    fencing: &Fencing,
    checked: &mut std::collections::HashMap<u32, bool>,
) -> Result<(), Error> {
    for (worker, entries) in &plan.writes {
        fencing.check(tx, worker, checked)?;
        for (index, bytes) in entries {
            tx.set(&oplog_key(worker, *index), bytes)?;
        }
    }
    Ok(())
}

fn apply(
    tx: &mut invicta_store::Transaction<'_>,
    w: &Work,
    placed: Option<&(Placed, Previous)>,
    writer: Option<&str>,
    with_adds: bool,
    fencing: &Fencing,
    checked: &mut std::collections::HashMap<u32, bool>,
) -> Result<(), Error> {
    // The fence: only the executor holding the worker's shard, at its epoch, writes for it.
    fencing.check(tx, &w.worker, checked)?;
    if let Some((first, _)) = w.indices {
        let gap = || Error::OplogGap {
            worker: w.worker.to_string(),
            index: first,
        };
        match (placed.map(|(_, previous)| *previous), writer) {
            // The worker has records in this committer's tail: it knows the last index, and
            // the entry at it must still be where it put it.
            (Some(Previous::Known(last, at)), Some(writer)) => {
                if first != last + 1 {
                    return Err(gap());
                }
                let present = match at {
                    Some(seq) => tx.get(&tail::record_key(writer, seq))?.is_some(),
                    None => last == 0 || tx.get(&oplog_key(&w.worker, last))?.is_some(),
                };
                if !present {
                    return Err(gap());
                }
            }
            _ => {
                let previous_present =
                    first == 1 || tx.get(&oplog_key(&w.worker, first - 1))?.is_some();
                let slot_free = tx.get(&oplog_key(&w.worker, first))?.is_none();
                if !previous_present || !slot_free {
                    return Err(gap());
                }
            }
        }
    }
    match (placed, writer) {
        (Some((Placed::Tail { seq }, _)), Some(writer)) => {
            tx.set(
                &tail::record_key(writer, *seq),
                &tail::encode_record(&w.worker, &w.entries),
            )?;
        }
        _ => {
            for (index, bytes) in &w.entries {
                tx.set(&oplog_key(&w.worker, *index), bytes)?;
            }
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
        handoff.wait(Duration::from_secs(60), || false);
        committer.join().unwrap();
        assert_eq!(ran.try_recv(), Ok((std::thread::current().id(), true)));
        assert!(ran.try_recv().is_err(), "done ran twice");
    }

    #[test]
    fn an_outcome_that_comes_after_the_submitter_gave_up_is_handled_by_the_committer() {
        let (done, ran) = reporting();
        let (handoff, committer_side) = Handoff::new(done);
        handoff.wait(Duration::ZERO, || false);
        assert!(ran.try_recv().is_err(), "done ran without an outcome");
        let committer = std::thread::spawn(move || {
            committer_side(Err(Error::ShuttingDown));
            std::thread::current().id()
        });
        let committer = committer.join().unwrap();
        assert_eq!(ran.try_recv(), Ok((committer, false)));
        assert!(ran.try_recv().is_err(), "done ran twice");
    }

    #[test]
    fn a_submitter_stops_polling_once_another_request_follows() {
        let (done, ran) = reporting();
        let (handoff, committer_side) = Handoff::new(done);
        // Another request came: the submitter gives up at once, a minute's poll or not.
        handoff.wait(Duration::from_secs(60), || true);
        assert!(ran.try_recv().is_err(), "done ran without an outcome");
        let committer = std::thread::spawn(move || {
            committer_side(Ok(()));
            std::thread::current().id()
        });
        let committer = committer.join().unwrap();
        assert_eq!(ran.try_recv(), Ok((committer, true)));
    }
}
