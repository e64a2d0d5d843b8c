//! The host side of a worker: its store data, the WASI context, and the durable host functions.
//!
//! Every non-deterministic host call goes through [`Durability`]: live, it runs and appends an
//! `ImportedFunctionInvoked` entry with its response; in replay, it returns the next recorded
//! response instead, and a call that does not match the record is a divergence that fails the
//! worker. The WASI clocks, random sources and stdout/stderr are overridden with such calls;
//! the rest of WASI is deterministic here: the worker's own files (rebuilt by replay, seen
//! through [`crate::fsview`]), no sockets, an empty stdin, the environment and arguments fixed
//! at the worker's creation.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use invicta_engine::values::value_to_val;
use invicta_model::Value;
use invicta_model::oplog::LogStream;
use wasmtime::component::{Linker, ResourceTable, Val};
use wasmtime::{ResourceLimiter, StoreContextMut, StoreLimits};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::durability::LogRefused;
pub(crate) use crate::durability::{Durability, Shared, lock};

/// The most random bytes one call may ask for (WASI's own default is 64 MiB; this is an oplog).
pub(crate) const RANDOM_BYTES_MAX: u64 = 1024 * 1024;

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
    /// Its files.
    pub files: crate::files::Files,
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

impl crate::suspend::WaitsView for WorkerCtx {
    fn durability(&self) -> &Shared {
        &self.durability
    }

    fn waits(&self) -> &crate::suspend::Waits {
        &self.waits
    }

    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl crate::hostapi::HostApiView for WorkerCtx {
    fn host_api(&self) -> Option<&crate::hostapi::HostApi> {
        self.host.as_ref()
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
        files: crate::files::Files,
    ) -> wasmtime::Result<WorkerCtx> {
        let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
        if let Some(root) = &files.root {
            wasi.preopened_dir(root, "/", wasmtime_wasi::FsPerms::ReadWrite)?;
        }
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
        Ok(WorkerCtx {
            host: None,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            hooks,
            limiter: Limiter::new(memory_bytes_max),
            durability,
            waits,
            files,
        })
    }

    /// The filesystem as the worker sees it.
    fn fs_view(&mut self) -> crate::fsview::FsView<'_> {
        crate::fsview::FsView {
            inner: wasmtime_wasi::filesystem::WasiFilesystemCtxView {
                ctx: self.wasi.filesystem(),
                table: &mut self.table,
            },
            files: &mut self.files,
        }
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

impl Limiter {
    /// A limiter granting at most `memory_bytes_max` bytes of linear memory.
    pub(crate) fn new(memory_bytes_max: u64) -> Limiter {
        Limiter {
            inner: wasmtime::StoreLimitsBuilder::new()
                .memory_size(usize::try_from(memory_bytes_max).unwrap_or(usize::MAX))
                .build(),
            memory_refused: false,
            memory_peak: 0,
        }
    }
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
    Value::Bytes(bytes)
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
    crate::fsview::add_to_linker(&mut linker, WorkerCtx::fs_view)?;
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
                Value::U64(d.monotonic_now(crate::suspend::clock_ns()))
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
    crate::wasiconfig::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// What the guest's stream reports when the core refuses its output.
fn stream_error(refused: LogRefused) -> StreamError {
    match refused {
        LogRefused::Diverged(message) => StreamError::trap(&message),
        LogRefused::Closed => StreamError::Closed,
    }
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
        lock(&self.durability)
            .log(self.stream, &bytes)
            .map_err(stream_error)
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
            .map_err(|e| std::io::Error::other(stream_error(e).to_string()));
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
