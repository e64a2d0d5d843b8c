//! The host side of a worker: its store data, the WASI context, and the durable host functions.
//!
//! Every non-deterministic host call goes through [`Durability`]: live, it runs and appends an
//! `ImportedFunctionInvoked` entry with its response; in replay, it returns the next recorded
//! response instead, and a call that does not match the record is a divergence that fails the
//! worker. The WASI clocks, random sources and stdout/stderr are overridden with such calls;
//! the rest of WASI is deterministic here (no preopened directories, no sockets, an empty stdin,
//! the environment and arguments fixed at the worker's creation).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use invicta_engine::values::value_to_val;
use invicta_model::Value;
use invicta_model::oplog::{LogStream, OplogEntry, OplogIndex};
use wasmtime::component::{Linker, ResourceTable, Val};
use wasmtime::{ResourceLimiter, StoreContextMut, StoreLimits};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The most random bytes one call may ask for (WASI's own default is 64 MiB; this is an oplog).
pub(crate) const RANDOM_BYTES_MAX: u64 = 1024 * 1024;

/// The most a worker may write to stdout and stderr in one invocation; past it the streams
/// report closed.
pub(crate) const LOG_BYTES_MAX: usize = 1024 * 1024;

/// The data of a worker's wasmtime store.
pub(crate) struct WorkerCtx {
    /// The executor and the worker, for the Invicta host interface.
    pub host: Option<crate::hostapi::HostApi>,
    wasi: WasiCtx,
    table: ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
    hooks: crate::http::DurableHttp,
    pub limiter: Limiter,
    pub durability: Shared,
    /// Where its long waits ask to suspend it.
    pub waits: crate::suspend::Waits,
}

impl wasmtime_wasi_http::WasiHttpView for WorkerCtx {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl WasiView for WorkerCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WorkerCtx {
    pub(crate) fn new(
        env: &[(String, String)],
        args: &[String],
        memory_bytes_max: u64,
        durability: Shared,
        hooks: crate::http::DurableHttp,
        waits: crate::suspend::Waits,
    ) -> WorkerCtx {
        let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
        wasi.envs(env)
            .args(args)
            .stdout(DurableOutput {
                stream: LogStream::Stdout,
                durability: durability.clone(),
            })
            .stderr(DurableOutput {
                stream: LogStream::Stderr,
                durability: durability.clone(),
            })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        WorkerCtx {
            host: None,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            hooks,
            limiter: Limiter {
                inner: wasmtime::StoreLimitsBuilder::new()
                    .memory_size(usize::try_from(memory_bytes_max).unwrap_or(usize::MAX))
                    .build(),
                memory_refused: false,
                memory_peak: 0,
            },
            durability,
            waits,
        }
    }

    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

/// The store's resource limiter, which remembers that it refused memory so that the failure
/// that follows (usually an `unreachable` trap in the guest's allocator) is reported as what it is.
pub(crate) struct Limiter {
    inner: StoreLimits,
    pub memory_refused: bool,
    /// The most linear memory granted so far, in bytes: memory only grows.
    pub memory_peak: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_peak = self.memory_peak.max(desired);
        } else {
            self.memory_refused = true;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_refused = true;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// A worker's durability state, shared by its store data and its output streams.
pub(crate) type Shared = Arc<Mutex<Durability>>;

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, Durability> {
    // Only host functions hold this lock, briefly; a panic there leaves consistent data.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

enum Mode {
    Live,
    /// Replaying recorded entries; when they run out, go live (`then_live`) or diverge.
    Replay {
        queue: VecDeque<(OplogIndex, OplogEntry)>,
        then_live: bool,
    },
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
    monotonic_last: u64,
    log_bytes: usize,
    /// Outgoing requests begun live and not yet answered: a worker waiting for one is not
    /// suspended.
    pub open_requests: usize,
    /// Outgoing requests sent live since the last invocation was recorded, and the bytes of
    /// their responses: metered with it.
    pub http_requests: u64,
    pub http_request_bytes: u64,
    pub http_response_bytes: u64,
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
    /// replay before it goes live.
    pub(crate) fn at_frontier(&self) -> bool {
        match &self.mode {
            Mode::Live => true,
            Mode::Replay { queue, then_live } => *then_live && queue.is_empty(),
        }
    }

    /// A live reading of the monotonic clock (ns): never behind an earlier one.
    pub(crate) fn monotonic_now(&mut self) -> u64 {
        self.monotonic_last = self.monotonic_last.max(crate::suspend::clock_ns());
        self.monotonic_last
    }

    /// Recorded entries the replay has not consumed.
    pub(crate) fn unconsumed(&self) -> Option<(OplogIndex, &'static str)> {
        match &self.mode {
            Mode::Replay { queue, .. } => queue.front().map(|(i, e)| (*i, e.kind())),
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

    pub(crate) fn take_pending(&mut self) -> Vec<(OplogIndex, OplogEntry)> {
        std::mem::take(&mut self.pending)
    }

    /// A non-deterministic host call: runs `live` and records its response, or replays it.
    pub(crate) fn host_call(
        &mut self,
        name: &str,
        live: impl FnOnce(&mut Self) -> Value,
    ) -> Result<Value, String> {
        if let Some(d) = &self.diverged {
            return Err(d.clone());
        }
        if let Mode::Replay { queue, then_live } = &mut self.mode {
            match queue.pop_front() {
                Some((
                    _,
                    OplogEntry::ImportedFunctionInvoked {
                        host_function,
                        response,
                        ..
                    },
                )) if host_function == name => return Ok(response),
                Some((index, other)) => {
                    let recorded = match &other {
                        OplogEntry::ImportedFunctionInvoked { host_function, .. } => {
                            host_function.clone()
                        }
                        other => other.kind().to_string(),
                    };
                    return Err(self.diverge(format!(
                        "replay diverged at oplog entry {index}: the worker called {name}, the oplog records {recorded}"
                    )));
                }
                None if *then_live => self.mode = Mode::Live,
                None => {
                    return Err(self.diverge(format!(
                        "replay diverged: the worker called {name} where the oplog records no more host calls"
                    )));
                }
            }
        }
        let response = live(self);
        self.append(OplogEntry::ImportedFunctionInvoked {
            host_function: name.to_string(),
            request: None,
            response: response.clone(),
        });
        Ok(response)
    }

    /// A host call whose live work is asynchronous: its recorded response in replay, or `None`
    /// when live (the caller then does the work and records it with [`Self::record`]).
    pub(crate) fn replayed(&mut self, name: &str) -> Result<Option<Value>, String> {
        if let Some(d) = &self.diverged {
            return Err(d.clone());
        }
        let Mode::Replay { queue, then_live } = &mut self.mode else {
            return Ok(None);
        };
        match queue.pop_front() {
            Some((
                _,
                OplogEntry::ImportedFunctionInvoked {
                    host_function,
                    response,
                    ..
                },
            )) if host_function == name => Ok(Some(response)),
            Some((index, other)) => {
                let recorded = other.kind();
                Err(self.diverge(format!(
                    "replay diverged at oplog entry {index}: the worker called {name}, the oplog records {recorded}"
                )))
            }
            None if *then_live => {
                self.mode = Mode::Live;
                Ok(None)
            }
            None => Err(self.diverge(format!(
                "replay diverged: the worker called {name} where the oplog records no more host calls"
            ))),
        }
    }

    /// A marker entry the guest makes (an atomic region's bounds): the recorded one in replay,
    /// which must be the same, or appended live. Returns its index.
    pub(crate) fn marker(&mut self, entry: OplogEntry) -> Result<OplogIndex, String> {
        if let Some(d) = &self.diverged {
            return Err(d.clone());
        }
        if let Mode::Replay { queue, then_live } = &mut self.mode {
            match queue.pop_front() {
                Some((index, recorded)) if recorded == entry => return Ok(index),
                Some((index, other)) => {
                    return Err(self.diverge(format!(
                        "replay diverged at oplog entry {index}: the worker made {}, the oplog records {}",
                        entry.kind(),
                        other.kind()
                    )));
                }
                None if *then_live => self.mode = Mode::Live,
                None => {
                    return Err(self.diverge(format!(
                        "replay diverged: the worker made {} where the oplog records no more",
                        entry.kind()
                    )));
                }
            }
        }
        Ok(self.append(entry))
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
    /// recorded), or that it began and never ended. `None` when live: the caller records it.
    pub(crate) fn replay_remote_write(
        &mut self,
        name: &str,
    ) -> Result<Option<crate::http::Replayed>, String> {
        use crate::http::Replayed;
        if let Some(d) = &self.diverged {
            return Err(d.clone());
        }
        let Mode::Replay { queue, then_live } = &mut self.mode else {
            return Ok(None);
        };
        let (begin, key) = match queue.pop_front() {
            Some((
                index,
                OplogEntry::BeginRemoteWrite {
                    host_function,
                    idempotency_key,
                },
            )) if host_function == name => (index, idempotency_key),
            Some((index, other)) => {
                let kind = other.kind();
                return Err(self.diverge(format!(
                    "replay diverged at oplog entry {index}: the worker sent an HTTP request, the oplog records {kind}"
                )));
            }
            None if *then_live => {
                self.mode = Mode::Live;
                return Ok(None);
            }
            None => {
                return Err(self.diverge(
                    "replay diverged: the worker sent an HTTP request where the oplog records no more host calls"
                        .into(),
                ));
            }
        };
        let end = queue
            .iter()
            .position(|(_, e)| matches!(e, OplogEntry::EndRemoteWrite { begin: b } if *b == begin));
        match end {
            Some(end) if end > 0 => {
                let response = queue.remove(end - 1);
                queue.remove(end - 1);
                match response {
                    Some((_, OplogEntry::ImportedFunctionInvoked { response, .. })) => {
                        match crate::http::outcome_from(&response) {
                            Some(outcome) => Ok(Some(Replayed::Outcome(outcome))),
                            None => Err(self.diverge(format!(
                                "the response of the request begun at oplog entry {begin} is unreadable"
                            ))),
                        }
                    }
                    _ => Err(self.diverge(format!(
                        "the request begun at oplog entry {begin} ended without a recorded response"
                    ))),
                }
            }
            _ if *then_live => Ok(Some(Replayed::Unfinished { begin, key })),
            _ => Err(self.diverge(format!(
                "the request begun at oplog entry {begin} never ended, yet its invocation completed"
            ))),
        }
    }

    /// Output to stdout or stderr: recorded as a `Log` entry, or checked against the record.
    fn log(&mut self, stream: LogStream, bytes: &[u8]) -> Result<(), StreamError> {
        if let Some(d) = &self.diverged {
            return Err(StreamError::trap(d));
        }
        self.log_bytes += bytes.len();
        if self.log_bytes > LOG_BYTES_MAX {
            return Err(StreamError::Closed);
        }
        if let Mode::Replay { queue, then_live } = &mut self.mode {
            match queue.pop_front() {
                Some((
                    _,
                    OplogEntry::Log {
                        stream: s,
                        bytes: b,
                    },
                )) if s == stream && b == bytes => return Ok(()),
                Some((index, other)) => {
                    let message = self.diverge(format!(
                        "replay diverged at oplog entry {index}: the worker wrote to {}, the oplog records {}",
                        stream.as_str(),
                        other.kind()
                    ));
                    return Err(StreamError::trap(&message));
                }
                None if *then_live => self.mode = Mode::Live,
                None => {
                    let message = self.diverge(format!(
                        "replay diverged: the worker wrote to {} where the oplog records nothing more",
                        stream.as_str()
                    ));
                    return Err(StreamError::trap(&message));
                }
            }
        }
        self.append(OplogEntry::Log {
            stream,
            bytes: bytes.to_vec(),
        });
        Ok(())
    }
}

/// Reads the wall clock: the one place the executor's durable host functions read real time.
fn wall_now() -> (u64, u32) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs(), now.subsec_nanos())
}

fn durable(
    store: &mut StoreContextMut<'_, WorkerCtx>,
    name: &str,
    live: impl FnOnce(&mut Durability) -> Value,
) -> wasmtime::Result<Val> {
    let mut durability = lock(&store.data().durability);
    durability
        .host_call(name, live)
        .map(|v| value_to_val(&v))
        .map_err(wasmtime::Error::msg)
}

fn random_bytes(len: u64) -> Value {
    let mut bytes = vec![0_u8; usize::try_from(len).unwrap_or(0)];
    rand::fill(bytes.as_mut_slice());
    Value::List(bytes.into_iter().map(Value::U8).collect())
}

fn requested_len(params: &[Val]) -> wasmtime::Result<u64> {
    match params.first() {
        Some(Val::U64(n)) if *n <= RANDOM_BYTES_MAX => Ok(*n),
        Some(Val::U64(n)) => Err(wasmtime::Error::msg(format!(
            "asked for {n} random bytes; the limit is {RANDOM_BYTES_MAX}"
        ))),
        _ => Err(wasmtime::Error::msg("random bytes: expected a u64 length")),
    }
}

fn set_result(results: &mut [Val], value: Val) -> wasmtime::Result<()> {
    match results.first_mut() {
        Some(slot) => {
            *slot = value;
            Ok(())
        }
        None => Err(wasmtime::Error::msg("host function has no result slot")),
    }
}

/// WASI 0.2 as wasmtime-wasi provides it, with the non-deterministic functions made durable.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<WorkerCtx>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    linker.allow_shadowing(true);
    // wasmtime-wasi defines these interfaces at 0.2.12; components importing any 0.2.x match.
    {
        let mut clock = linker.instance("wasi:clocks/wall-clock@0.2.12")?;
        clock.func_new("now", |mut store, _, _, results| {
            let value = durable(&mut store, "wasi:clocks/wall-clock.now", |_| {
                let (seconds, nanoseconds) = wall_now();
                Value::Record(vec![
                    ("seconds".into(), Value::U64(seconds)),
                    ("nanoseconds".into(), Value::U32(nanoseconds)),
                ])
            })?;
            set_result(results, value)
        })?;
    }
    {
        let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
        clock.func_new("now", |mut store, _, _, results| {
            let value = durable(&mut store, "wasi:clocks/monotonic-clock.now", |d| {
                Value::U64(d.monotonic_now())
            })?;
            if let Val::U64(n) = value {
                let mut d = lock(&store.data().durability);
                d.monotonic_last = d.monotonic_last.max(n);
            }
            set_result(results, value)
        })?;
    }
    crate::suspend::add_to_linker(&mut linker)?;
    {
        let mut random = linker.instance("wasi:random/random@0.2.12")?;
        random.func_new("get-random-bytes", |mut store, _, params, results| {
            let len = requested_len(params)?;
            let value = durable(&mut store, "wasi:random/random.get-random-bytes", |_| {
                random_bytes(len)
            })?;
            set_result(results, value)
        })?;
        random.func_new("get-random-u64", |mut store, _, _, results| {
            let value = durable(&mut store, "wasi:random/random.get-random-u64", |_| {
                Value::U64(rand::random())
            })?;
            set_result(results, value)
        })?;
    }
    {
        let mut insecure = linker.instance("wasi:random/insecure@0.2.12")?;
        insecure.func_new(
            "get-insecure-random-bytes",
            |mut store, _, params, results| {
                let len = requested_len(params)?;
                let value = durable(
                    &mut store,
                    "wasi:random/insecure.get-insecure-random-bytes",
                    |_| random_bytes(len),
                )?;
                set_result(results, value)
            },
        )?;
        insecure.func_new("get-insecure-random-u64", |mut store, _, _, results| {
            let value = durable(
                &mut store,
                "wasi:random/insecure.get-insecure-random-u64",
                |_| Value::U64(rand::random()),
            )?;
            set_result(results, value)
        })?;
    }
    {
        let mut seed = linker.instance("wasi:random/insecure-seed@0.2.12")?;
        seed.func_new("insecure-seed", |mut store, _, _, results| {
            let value = durable(
                &mut store,
                "wasi:random/insecure-seed.insecure-seed",
                |_| Value::Tuple(vec![Value::U64(rand::random()), Value::U64(rand::random())]),
            )?;
            set_result(results, value)
        })?;
    }
    linker.allow_shadowing(false);
    crate::hostapi::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// stdout or stderr of a worker: every write becomes a durable `Log` entry.
#[derive(Clone)]
struct DurableOutput {
    stream: LogStream,
    durability: Shared,
}

impl IsTerminal for DurableOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for DurableOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for DurableOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        lock(&self.durability).log(self.stream, &bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for DurableOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for DurableOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = lock(&self.durability)
            .log(self.stream, buf)
            .map(|()| buf.len())
            .map_err(|e| std::io::Error::other(e.to_string()));
        std::task::Poll::Ready(result)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
