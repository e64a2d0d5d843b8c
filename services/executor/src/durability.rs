//! The durability core: record and replay of a worker's host calls, with no wasmtime, WASI or
//! HTTP types, so that it can be tested on its own.
//!
//! Live, every non-deterministic host call runs and its response is appended (`append`,
//! `host_call`, `record`); entries wait in `pending` until the actor hands them to the group
//! committer. In replay, the same calls take the recorded responses in order, and a call that
//! does not match the next recorded entry is a *divergence*: the worker fails with a message
//! saying which entry and what differs, never continues silently.
//!
//! **Side entries.** What `wasi:io/poll` found ready (`poll`, `pollable.ready`) is recorded, as
//! which of several things happened first is as non-deterministic as a clock. But how often a
//! guest polls depends on timing too (a request body's stream may have room at once in replay
//! where it had none live), so readiness records are *side entries*: a replayed poll takes the
//! record at the front of the queue when there is one (and the host then waits until the
//! pollables it names are ready, so they are ready in replay as they were live), a replayed poll
//! with no such record polls for real, and any other replayed call passes over readiness
//! records the guest did not ask for this time. Every other entry must match exactly.
//!
//! **Invariant:** indices are contiguous: `append` gives `next_index` and moves it on by one.
//!
//! **Invariant:** after the first divergence every host call fails with that divergence.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use invicta_model::oplog::{LogStream, OplogEntry, OplogIndex};
use invicta_model::{Value, WorkerId};

/// The host function `wasi:io/poll.poll` is recorded under: which pollables were ready.
pub(crate) const POLL: &str = "wasi:io/poll.poll";
/// The host function `wasi:io/poll.pollable.ready` is recorded under: whether it was ready.
pub(crate) const READY: &str = "wasi:io/poll.pollable.ready";

/// The most a worker may write to stdout and stderr in one invocation; past it the streams
/// report closed.
pub(crate) const LOG_BYTES_MAX: usize = 1024 * 1024;

/// What each write to stdout or stderr counts against [`LOG_BYTES_MAX`] besides its bytes: the
/// entry's own cost in the oplog (its key, its framing), so that many tiny writes cannot make
/// an invocation's commit larger than a transaction may be.
pub(crate) const LOG_ENTRY_COST: usize = 32;

/// A worker's durability state, shared by its host bindings (each a view over it).
pub(crate) type Shared = Arc<Mutex<Durability>>;

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, Durability> {
    // Only host functions hold this lock, briefly; a panic there leaves consistent data.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The key of what a worker does at an oplog index (an outgoing request's `Idempotency-Key`, a
/// call to another worker, a promise id): the same on every re-execution of that place, and
/// another for every other worker, every other place, and every other incarnation of a worker
/// of the same name. Workers made before incarnations existed (`incarnation` empty) keep the
/// keys they had.
pub(crate) fn key_at(worker: &WorkerId, incarnation: &str, index: OplogIndex) -> String {
    use sha2::Digest;
    let place = if incarnation.is_empty() {
        format!("{worker}#{index}")
    } else {
        format!("{worker}@{incarnation}#{index}")
    };
    let digest = sha2::Sha256::digest(place.as_bytes());
    hex::encode(&digest[..16])
}

/// A new worker incarnation: 128 random bits.
pub(crate) fn new_incarnation() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

enum Mode {
    Live,
    /// Replaying recorded entries; when they run out, go live (`then_live`) or diverge.
    Replay {
        queue: VecDeque<(OplogIndex, OplogEntry)>,
        then_live: bool,
    },
}

/// A recorded outgoing request met in replay.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RemoteWrite {
    /// It began and ended: its recorded response.
    Ended(Value),
    /// It began (with this key and entry) but never ended: send it again.
    Unfinished { begin: OplogIndex, key: String },
}

/// Why output to stdout or stderr was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogRefused {
    /// The worker diverged (now, or before).
    Diverged(String),
    /// The invocation wrote more than [`LOG_BYTES_MAX`]: the stream is closed.
    Closed,
}

/// What a replayed readiness check (`poll` or `ready`) is told.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Readiness {
    /// Live: check for real and [`Durability::record`] what was found.
    Live,
    /// Replay with a record at the front: answer it (after waiting for what it says was ready).
    Recorded(Value),
    /// Replay without a record for this check: check for real, record nothing.
    Unrecorded,
}

/// A point in the record to come back to ([`Durability::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    next_index: OplogIndex,
    pending: usize,
}

/// Records live host calls, or replays recorded ones.
pub(crate) struct Durability {
    mode: Mode,
    /// Live entries not yet handed to the committer, with their indices.
    pending: Vec<(OplogIndex, OplogEntry)>,
    next_index: OplogIndex,
    /// Set at the first divergence; every later host call fails with it.
    diverged: Option<String>,
    /// The last monotonic reading given to the guest: readings never go back, across replays
    /// and restarts.
    pub monotonic_last: u64,
    log_bytes: usize,
    /// Outgoing requests begun live and not yet answered: a worker waiting for one is not
    /// suspended.
    pub open_requests: usize,
    /// Outgoing requests sent live since the last invocation was recorded, and the bytes of
    /// their responses: metered with it.
    pub http_requests: u64,
    pub http_request_bytes: u64,
    pub http_response_bytes: u64,
    /// An input the oplog records by reference (a secret) resolved, in replay, to something
    /// other than it was: from then on the invocations replaying may answer otherwise, a new
    /// input rather than a divergence.
    pub inputs_changed: bool,
}

/// Whether an entry is a readiness record (a side entry, see the module's documentation).
fn is_side(entry: &OplogEntry) -> bool {
    matches!(entry, OplogEntry::ImportedFunctionInvoked { host_function, .. }
        if host_function == POLL || host_function == READY)
}

/// What the oplog records at an entry, for divergence messages: the host function for a host
/// call, else the entry's kind.
fn recorded_call(entry: &OplogEntry) -> String {
    match entry {
        OplogEntry::ImportedFunctionInvoked { host_function, .. } => host_function.clone(),
        other => other.kind().to_string(),
    }
}

/// Where two byte strings first differ, in words.
fn first_difference(now: &[u8], recorded: &[u8]) -> String {
    let at = now
        .iter()
        .zip(recorded)
        .position(|(a, b)| a != b)
        .unwrap_or(now.len().min(recorded.len()));
    let byte = |bytes: &[u8]| match bytes.get(at) {
        Some(b) => format!("0x{b:02x}"),
        None => "the end".to_string(),
    };
    format!(
        "{} bytes against {} recorded, first differing at byte {at} ({} against {})",
        now.len(),
        recorded.len(),
        byte(now),
        byte(recorded)
    )
}

/// How a marker entry differs from the one recorded, in words.
fn marker_difference(now: &OplogEntry, recorded: &OplogEntry) -> String {
    match (now, recorded) {
        (OplogEntry::EndAtomicRegion { begin: a }, OplogEntry::EndAtomicRegion { begin: b }) => {
            format!("the region's begin is entry {a}, the oplog's {b}")
        }
        _ => format!(
            "the worker made {}, the oplog records {}",
            now.kind(),
            recorded_call(recorded)
        ),
    }
}

impl Durability {
    pub(crate) fn new(next_index: OplogIndex) -> Durability {
        Durability {
            mode: Mode::Live,
            pending: Vec::new(),
            next_index,
            diverged: None,
            monotonic_last: 0,
            log_bytes: 0,
            open_requests: 0,
            http_requests: 0,
            http_request_bytes: 0,
            http_response_bytes: 0,
            inputs_changed: false,
        }
    }

    /// Replays `entries` next; afterwards the worker goes live, or any further host call is a
    /// divergence.
    pub(crate) fn replay(&mut self, entries: Vec<(OplogIndex, OplogEntry)>, then_live: bool) {
        self.log_bytes = 0;
        self.mode = Mode::Replay {
            queue: entries.into(),
            then_live,
        };
    }

    pub(crate) fn go_live(&mut self) {
        self.log_bytes = 0;
        self.mode = Mode::Live;
    }

    pub(crate) fn is_live(&self) -> bool {
        matches!(self.mode, Mode::Live)
    }

    /// Whether the worker is where the oplog ends: live, or replaying with nothing left to
    /// replay (readiness records aside) before it goes live.
    pub(crate) fn at_frontier(&self) -> bool {
        match &self.mode {
            Mode::Live => true,
            Mode::Replay { queue, then_live } => {
                *then_live && queue.iter().all(|(_, e)| is_side(e))
            }
        }
    }

    /// A live reading of the monotonic clock (ns) given the real one: never behind an earlier
    /// reading.
    pub(crate) fn monotonic_now(&mut self, real_ns: u64) -> u64 {
        self.monotonic_last = self.monotonic_last.max(real_ns);
        self.monotonic_last
    }

    /// The first recorded entry the replay has not consumed (readiness records aside).
    pub(crate) fn unconsumed(&self) -> Option<(OplogIndex, &'static str)> {
        match &self.mode {
            Mode::Replay { queue, .. } => queue
                .iter()
                .find(|(_, e)| !is_side(e))
                .map(|(i, e)| (*i, e.kind())),
            Mode::Live => None,
        }
    }

    pub(crate) fn diverged(&self) -> Option<&str> {
        self.diverged.as_deref()
    }

    pub(crate) fn diverge(&mut self, message: String) -> String {
        self.diverged.get_or_insert(message).clone()
    }

    pub(crate) fn next_index(&self) -> OplogIndex {
        self.next_index
    }

    /// Appends a live entry and returns its index.
    pub(crate) fn append(&mut self, entry: OplogEntry) -> OplogIndex {
        let index = self.next_index;
        self.next_index += 1;
        self.pending.push((index, entry));
        index
    }

    /// Where the record stands: what is appended after it can be forgotten with
    /// [`Durability::rewind`].
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            next_index: self.next_index,
            pending: self.pending.len(),
        }
    }

    /// Forgets what was appended since `mark`: host calls made outside the worker's history
    /// (a snapshot's save or load), which no replay will ask for.
    pub(crate) fn rewind(&mut self, mark: Mark) {
        self.pending.truncate(mark.pending);
        self.next_index = mark.next_index;
    }

    pub(crate) fn take_pending(&mut self) -> Vec<(OplogIndex, OplogEntry)> {
        std::mem::take(&mut self.pending)
    }

    /// The next recorded entry for a call that is not a readiness check: readiness records the
    /// guest did not ask for this time are passed over. `Ok(None)` when the replay has just
    /// gone live; `Err` is the divergence of a call that the oplog does not record.
    fn next_recorded(&mut self, call: &str) -> Result<Option<(OplogIndex, OplogEntry)>, String> {
        if let Some(d) = &self.diverged {
            return Err(d.clone());
        }
        let Mode::Replay { queue, then_live } = &mut self.mode else {
            return Ok(None);
        };
        while queue.front().is_some_and(|(_, e)| is_side(e)) {
            queue.pop_front();
        }
        match queue.pop_front() {
            Some(recorded) => Ok(Some(recorded)),
            None if *then_live => {
                self.mode = Mode::Live;
                Ok(None)
            }
            None => Err(self.diverge(format!(
                "replay diverged: the worker {call} where the oplog records no more"
            ))),
        }
    }

    /// A non-deterministic host call: runs `live` and records its response, or replays it.
    pub(crate) fn host_call(
        &mut self,
        name: &str,
        live: impl FnOnce(&mut Self) -> Value,
    ) -> Result<Value, String> {
        if let Some(response) = self.replayed(name)? {
            return Ok(response);
        }
        let response = live(self);
        self.record(name, response.clone());
        Ok(response)
    }

    /// A host call whose live work is done by the caller: its recorded response in replay, or
    /// `None` when live (the caller then does the work and records it with [`Self::record`]).
    pub(crate) fn replayed(&mut self, name: &str) -> Result<Option<Value>, String> {
        match self.next_recorded(&format!("called {name}"))? {
            None => Ok(None),
            Some((
                _,
                OplogEntry::ImportedFunctionInvoked {
                    host_function,
                    response,
                    ..
                },
            )) if host_function == name => Ok(Some(response)),
            Some((index, other)) => Err(self.diverge(format!(
                "replay diverged at oplog entry {index}: the worker called {name}, the oplog records {}",
                recorded_call(&other)
            ))),
        }
    }

    /// A readiness check (`name` is [`POLL`] or [`READY`]): see [`Readiness`]. A poll passes
    /// over `ready` records before its own; a `ready` takes only a `ready` record.
    pub(crate) fn readiness(&mut self, name: &str) -> Result<Readiness, String> {
        if let Some(d) = &self.diverged {
            return Err(d.clone());
        }
        let Mode::Replay { queue, then_live } = &mut self.mode else {
            return Ok(Readiness::Live);
        };
        if name == POLL {
            while queue.front().is_some_and(|(_, e)| {
                matches!(e, OplogEntry::ImportedFunctionInvoked { host_function, .. } if host_function == READY)
            }) {
                queue.pop_front();
            }
        }
        match queue.front() {
            Some((_, OplogEntry::ImportedFunctionInvoked { host_function, .. }))
                if host_function == name =>
            {
                match queue.pop_front() {
                    Some((_, OplogEntry::ImportedFunctionInvoked { response, .. })) => {
                        Ok(Readiness::Recorded(response))
                    }
                    _ => Ok(Readiness::Unrecorded),
                }
            }
            None if *then_live => {
                self.mode = Mode::Live;
                Ok(Readiness::Live)
            }
            _ => Ok(Readiness::Unrecorded),
        }
    }

    /// A marker entry the guest makes (an atomic region's bounds): the recorded one in replay,
    /// which must be the same, or appended live. Returns its index.
    pub(crate) fn marker(&mut self, entry: OplogEntry) -> Result<OplogIndex, String> {
        match self.next_recorded(&format!("made {}", entry.kind()))? {
            None => Ok(self.append(entry)),
            Some((index, recorded)) if recorded == entry => Ok(index),
            Some((index, other)) => Err(self.diverge(format!(
                "replay diverged at oplog entry {index}: {}",
                marker_difference(&entry, &other)
            ))),
        }
    }

    /// Records a live host call's response.
    pub(crate) fn record(&mut self, name: &str, response: Value) {
        self.append(OplogEntry::ImportedFunctionInvoked {
            host_function: name.to_string(),
            request: None,
            response,
        });
    }

    /// An outgoing request in replay: its recorded outcome (taken from wherever it was
    /// recorded: other host calls may have been recorded while it was under way), or that it
    /// began and never ended. `None` when live: the caller records it.
    pub(crate) fn replay_remote_write(
        &mut self,
        name: &str,
    ) -> Result<Option<RemoteWrite>, String> {
        let (begin, key) = match self.next_recorded("sent an HTTP request")? {
            None => return Ok(None),
            Some((
                index,
                OplogEntry::BeginRemoteWrite {
                    host_function,
                    idempotency_key,
                },
            )) if host_function == name => (index, idempotency_key),
            Some((index, other)) => {
                return Err(self.diverge(format!(
                    "replay diverged at oplog entry {index}: the worker sent an HTTP request ({name}), the oplog records {}",
                    recorded_call(&other)
                )));
            }
        };
        let Mode::Replay { queue, then_live } = &mut self.mode else {
            return Ok(Some(RemoteWrite::Unfinished { begin, key }));
        };
        let then_live = *then_live;
        let end = queue
            .iter()
            .position(|(_, e)| matches!(e, OplogEntry::EndRemoteWrite { begin: b } if *b == begin));
        match end {
            Some(end) if end > 0 => {
                let response = queue.remove(end - 1);
                queue.remove(end - 1);
                match response {
                    Some((_, OplogEntry::ImportedFunctionInvoked { response, .. })) => {
                        Ok(Some(RemoteWrite::Ended(response)))
                    }
                    _ => Err(self.diverge(format!(
                        "the request begun at oplog entry {begin} ended without a recorded response"
                    ))),
                }
            }
            _ if then_live => Ok(Some(RemoteWrite::Unfinished { begin, key })),
            _ => Err(self.diverge(format!(
                "the request begun at oplog entry {begin} never ended, yet its invocation completed"
            ))),
        }
    }

    /// Output to stdout or stderr: recorded as a `Log` entry, or checked against the record.
    pub(crate) fn log(&mut self, stream: LogStream, bytes: &[u8]) -> Result<(), LogRefused> {
        if let Some(d) = &self.diverged {
            return Err(LogRefused::Diverged(d.clone()));
        }
        // Empty writes count too: they are entries, and no bound may be slipped past.
        self.log_bytes = self
            .log_bytes
            .saturating_add(bytes.len().saturating_add(LOG_ENTRY_COST));
        if self.log_bytes > LOG_BYTES_MAX {
            return Err(LogRefused::Closed);
        }
        let call = format!("wrote to {}", stream.as_str());
        match self.next_recorded(&call).map_err(LogRefused::Diverged)? {
            None => {
                self.append(OplogEntry::Log {
                    stream,
                    bytes: bytes.to_vec(),
                });
                Ok(())
            }
            Some((
                _,
                OplogEntry::Log {
                    stream: s,
                    bytes: b,
                },
            )) if s == stream && b == bytes => Ok(()),
            Some((
                index,
                OplogEntry::Log {
                    stream: s,
                    bytes: b,
                },
            )) if s == stream => Err(LogRefused::Diverged(self.diverge(format!(
                "replay diverged at oplog entry {index}: the worker wrote other output to {}: {}",
                stream.as_str(),
                first_difference(bytes, &b)
            )))),
            Some((index, other)) => {
                let recorded = match &other {
                    OplogEntry::Log { stream: s, .. } => format!("output to {}", s.as_str()),
                    other => recorded_call(other),
                };
                Err(LogRefused::Diverged(self.diverge(format!(
                    "replay diverged at oplog entry {index}: the worker {call}, the oplog records {recorded}"
                ))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(name: &str, response: Value) -> OplogEntry {
        OplogEntry::ImportedFunctionInvoked {
            host_function: name.into(),
            request: None,
            response,
        }
    }

    fn replaying(entries: Vec<OplogEntry>, then_live: bool) -> Durability {
        let mut d = Durability::new(entries.len() as u64 + 1);
        d.replay(
            entries
                .into_iter()
                .enumerate()
                .map(|(i, e)| (i as u64 + 1, e))
                .collect(),
            then_live,
        );
        d
    }

    #[test]
    fn keys_differ_by_worker_place_and_incarnation() {
        let id = |w: &str| WorkerId {
            tenant: "t".to_string().try_into().expect("tenant"),
            component: "c".to_string().try_into().expect("component"),
            worker: w.to_string().try_into().expect("worker"),
        };
        let a = key_at(&id("w"), "i1", 5);
        assert_eq!(a, key_at(&id("w"), "i1", 5), "stable across re-executions");
        assert_ne!(a, key_at(&id("w"), "i2", 5), "another incarnation");
        assert_ne!(a, key_at(&id("w"), "i1", 6), "another place");
        assert_ne!(a, key_at(&id("v"), "i1", 5), "another worker");
        assert_eq!(a.len(), 32);
        assert_ne!(new_incarnation(), new_incarnation());
    }

    #[test]
    fn calls_made_after_a_mark_can_be_forgotten() {
        let mut d = Durability::new(5);
        d.append(call("a", Value::U64(1)));
        let mark = d.mark();
        d.append(call("b", Value::U64(2)));
        d.append(call("c", Value::U64(3)));
        d.rewind(mark);
        assert_eq!(d.next_index(), 6);
        d.append(call("d", Value::U64(4)));
        let indices: Vec<_> = d.take_pending().into_iter().map(|(i, _)| i).collect();
        assert_eq!(indices, vec![5, 6], "indices stay contiguous");
    }

    #[test]
    fn live_calls_append_contiguous_entries() {
        let mut d = Durability::new(5);
        assert_eq!(d.host_call("a", |_| Value::U64(1)), Ok(Value::U64(1)));
        assert_eq!(d.marker(OplogEntry::BeginAtomicRegion), Ok(6));
        d.log(LogStream::Stdout, b"hi").expect("live log");
        let pending = d.take_pending();
        let indices: Vec<u64> = pending.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, vec![5, 6, 7]);
        assert_eq!(d.next_index(), 8);
        assert!(d.take_pending().is_empty());
    }

    #[test]
    fn replay_answers_from_the_record_then_goes_live() {
        let mut d = replaying(vec![call("clock", Value::U64(7))], true);
        assert_eq!(d.host_call("clock", |_| Value::U64(99)), Ok(Value::U64(7)));
        assert!(d.at_frontier());
        assert_eq!(d.host_call("clock", |_| Value::U64(99)), Ok(Value::U64(99)));
        assert!(d.is_live());
        assert_eq!(d.take_pending().len(), 1);
    }

    #[test]
    fn a_different_call_diverges_and_every_later_call_fails_with_it() {
        let mut d = replaying(vec![call("clock", Value::U64(7))], true);
        let error = d.host_call("random", |_| Value::U64(1)).unwrap_err();
        assert!(
            error.contains("entry 1") && error.contains("random") && error.contains("clock"),
            "{error}"
        );
        assert_eq!(d.host_call("clock", |_| Value::U64(1)), Err(error.clone()));
        assert_eq!(d.diverged(), Some(error.as_str()));
    }

    #[test]
    fn replay_past_the_end_of_a_completed_invocation_diverges() {
        let mut d = replaying(vec![], false);
        let error = d.host_call("clock", |_| Value::U64(1)).unwrap_err();
        assert!(error.contains("no more"), "{error}");
    }

    #[test]
    fn divergent_output_names_the_first_differing_byte() {
        let mut d = replaying(
            vec![OplogEntry::Log {
                stream: LogStream::Stdout,
                bytes: b"hello".to_vec(),
            }],
            true,
        );
        let Err(LogRefused::Diverged(message)) = d.log(LogStream::Stdout, b"help!") else {
            panic!("expected a divergence");
        };
        assert!(
            message.contains("byte 3") && message.contains("0x70") && message.contains("0x6c"),
            "{message}"
        );
    }

    #[test]
    fn divergent_markers_name_the_field() {
        let mut d = replaying(vec![OplogEntry::EndAtomicRegion { begin: 3 }], true);
        let message = d
            .marker(OplogEntry::EndAtomicRegion { begin: 4 })
            .unwrap_err();
        assert!(
            message.contains("begin is entry 4, the oplog's 3"),
            "{message}"
        );
    }

    #[test]
    fn output_is_capped_and_empty_writes_count() {
        let mut d = Durability::new(1);
        for _ in 0..LOG_BYTES_MAX / LOG_ENTRY_COST {
            d.log(LogStream::Stderr, b"").expect("within the cap");
        }
        assert_eq!(d.log(LogStream::Stderr, b""), Err(LogRefused::Closed));
    }

    #[test]
    fn readiness_records_are_side_entries() {
        // Live, the guest polled twice (a stream was full, then the response was pending).
        let mut d = replaying(
            vec![
                call(READY, Value::Bool(false)),
                call(POLL, Value::List(vec![Value::U32(0)])),
                call(POLL, Value::List(vec![Value::U32(0)])),
                OplogEntry::Log {
                    stream: LogStream::Stdout,
                    bytes: b"x".to_vec(),
                },
            ],
            true,
        );
        // In replay it polls once: it gets the first record; the second is passed over.
        assert_eq!(
            d.readiness(POLL),
            Ok(Readiness::Recorded(Value::List(vec![Value::U32(0)])))
        );
        d.log(LogStream::Stdout, b"x")
            .expect("the log entry matches");
        assert!(d.at_frontier());
        assert_eq!(d.unconsumed(), None);
    }

    #[test]
    fn a_poll_without_a_record_checks_for_real() {
        let mut d = replaying(vec![call("clock", Value::U64(1))], true);
        assert_eq!(d.readiness(READY), Ok(Readiness::Unrecorded));
        assert_eq!(d.readiness(POLL), Ok(Readiness::Unrecorded));
        assert_eq!(d.host_call("clock", |_| Value::U64(2)), Ok(Value::U64(1)));
        assert_eq!(d.readiness(POLL), Ok(Readiness::Live));
        assert!(d.is_live());
    }

    #[test]
    fn a_remote_write_takes_its_outcome_from_later_in_the_record() {
        let mut d = replaying(
            vec![
                OplogEntry::BeginRemoteWrite {
                    host_function: "http".into(),
                    idempotency_key: "k".into(),
                },
                call("clock", Value::U64(3)),
                call("http", Value::String("response".into())),
                OplogEntry::EndRemoteWrite { begin: 1 },
            ],
            false,
        );
        assert_eq!(
            d.replay_remote_write("http"),
            Ok(Some(RemoteWrite::Ended(Value::String("response".into()))))
        );
        assert_eq!(d.host_call("clock", |_| Value::U64(9)), Ok(Value::U64(3)));
        assert_eq!(d.unconsumed(), None);
    }

    #[test]
    fn a_remote_write_that_never_ended_is_sent_again_with_its_key() {
        let mut d = replaying(
            vec![OplogEntry::BeginRemoteWrite {
                host_function: "http".into(),
                idempotency_key: "k".into(),
            }],
            true,
        );
        assert_eq!(
            d.replay_remote_write("http"),
            Ok(Some(RemoteWrite::Unfinished {
                begin: 1,
                key: "k".into()
            }))
        );
    }

    /// A host call a guest may make, with the value a live run would get.
    #[derive(Debug, Clone)]
    enum Call {
        Host(u8, u64),
        Log(bool, Vec<u8>),
        Region,
        /// A poll, and whether the guest needed it live (timing) and in replay.
        Poll(bool, bool, u32),
        Remote(u64, bool),
    }

    fn calls() -> impl Strategy<Value = Vec<Call>> {
        prop::collection::vec(
            prop_oneof![
                (0_u8..4, any::<u64>()).prop_map(|(n, v)| Call::Host(n, v)),
                (any::<bool>(), prop::collection::vec(any::<u8>(), 0..8))
                    .prop_map(|(e, b)| Call::Log(e, b)),
                Just(Call::Region),
                (any::<bool>(), any::<bool>(), 0_u32..3).prop_map(|(l, r, i)| Call::Poll(l, r, i)),
                (any::<u64>(), any::<bool>()).prop_map(|(v, late)| Call::Remote(v, late)),
            ],
            0..40,
        )
    }

    fn stream(stderr: bool) -> LogStream {
        if stderr {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        }
    }

    /// Runs `calls` against `d`: live answers come from the calls themselves, replayed ones
    /// from the record. Returns what the guest was told.
    fn run(d: &mut Durability, calls: &[Call], replay: bool) -> Result<Vec<Value>, String> {
        let mut told = Vec::new();
        let mut late = Vec::new();
        for c in calls {
            match c {
                Call::Host(n, v) => {
                    let v = *v;
                    told.push(d.host_call(&format!("host-{n}"), |_| Value::U64(v))?);
                }
                Call::Log(e, bytes) => {
                    d.log(stream(*e), bytes).map_err(|e| format!("{e:?}"))?;
                    told.push(Value::List(bytes.iter().map(|b| Value::U8(*b)).collect()));
                }
                Call::Region => {
                    let begin = d.marker(OplogEntry::BeginAtomicRegion)?;
                    d.marker(OplogEntry::EndAtomicRegion { begin })?;
                }
                Call::Poll(live, replayed, i) => {
                    let needed = if replay { *replayed } else { *live };
                    if needed {
                        match d.readiness(POLL)? {
                            Readiness::Live => {
                                d.record(POLL, Value::List(vec![Value::U32(*i)]));
                            }
                            Readiness::Recorded(_) | Readiness::Unrecorded => {}
                        }
                    }
                }
                Call::Remote(v, arrives_late) => match d.replay_remote_write("http")? {
                    Some(RemoteWrite::Ended(response)) => told.push(response),
                    Some(RemoteWrite::Unfinished { .. }) => return Err("unfinished".into()),
                    None => {
                        let begin = d.append(OplogEntry::BeginRemoteWrite {
                            host_function: "http".into(),
                            idempotency_key: format!("k{}", d.next_index()),
                        });
                        let response = Value::U64(*v);
                        told.push(response.clone());
                        // The response may be recorded after later host calls.
                        if *arrives_late {
                            late.push((begin, response));
                        } else {
                            d.record("http", response);
                            d.append(OplogEntry::EndRemoteWrite { begin });
                        }
                    }
                },
            }
            if !replay && let Some((begin, response)) = late.pop() {
                d.record("http", response);
                d.append(OplogEntry::EndRemoteWrite { begin });
            }
        }
        for (begin, response) in late {
            d.record("http", response);
            d.append(OplogEntry::EndRemoteWrite { begin });
        }
        Ok(told)
    }

    proptest! {
        /// Record, then replay: the guest is told the same, whatever the timing of its polls,
        /// and the replay consumes the whole record.
        #[test]
        fn record_then_replay_tells_the_guest_the_same(calls in calls()) {
            let mut live = Durability::new(2);
            let told = run(&mut live, &calls, false).expect("a live run never diverges");
            let recorded = live.take_pending();
            // Replay answers from the record: live work would give other values.
            let scrambled: Vec<Call> = calls
                .iter()
                .map(|c| match c {
                    Call::Host(n, v) => Call::Host(*n, v.wrapping_add(1)),
                    other => other.clone(),
                })
                .collect();
            let mut again = Durability::new(2);
            again.replay(recorded, false);
            let replayed = run(&mut again, &scrambled, true).expect("replay does not diverge");
            prop_assert_eq!(told, replayed);
            prop_assert_eq!(again.unconsumed(), None);
            prop_assert!(again.take_pending().is_empty(), "replay appends nothing");
        }

        /// Replaying a record with one host call changed diverges, naming that entry.
        #[test]
        fn a_changed_call_diverges(calls in calls(), pick in any::<prop::sample::Index>()) {
            let mut live = Durability::new(1);
            run(&mut live, &calls, false).expect("a live run never diverges");
            let mut recorded = live.take_pending();
            let hosts: Vec<usize> = recorded
                .iter()
                .enumerate()
                .filter(|(_, (_, e))| matches!(e, OplogEntry::ImportedFunctionInvoked { host_function, .. } if host_function.starts_with("host-")))
                .map(|(i, _)| i)
                .collect();
            prop_assume!(!hosts.is_empty());
            let at = hosts[pick.index(hosts.len())];
            let index = recorded[at].0;
            recorded[at].1 = call("other", Value::U64(0));
            let mut again = Durability::new(1);
            again.replay(recorded, false);
            let error = run(&mut again, &calls, true).unwrap_err();
            prop_assert!(error.contains(&format!("entry {index}")), "{}", error);
        }
    }
}
