//! Ephemeral HTTP handlers: a component exporting `wasi:http/incoming-handler` answers one
//! request in a fresh pooled instance, and nothing is recorded — the model of Spin and
//! `wasmtime serve`, for stateless functions behind a URL.
//!
//! The instance runs under the caller's plan like an invocation: its fuel, its memory, the
//! executor's deadline, and the plan's egress hosts for the requests it makes itself (sent live,
//! with the same SSRF checks as a worker's, and no idempotency key). Its clocks and random
//! sources are real, its standard output is discarded, and it sees no environment and no files.
//!
//! Bodies are whole: the request body arrives read (within the route's limit), and the response
//! body is collected (within `response_bytes_max`) before it is answered, trailers included.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use invicta_model::{ComponentName, TenantId};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::host::Limiter;
use crate::http::{Egress, LiveHttp};
use crate::limits::Limits;
use crate::types::{HandlerRequest, HandlerResponse, RequestBody, StreamedResponse};

/// How long a component's latest version is taken as known before the registry is asked
/// again: a new upload serves within this.
pub const VERSION_STALE: Duration = Duration::from_secs(1);

/// The largest response body a handler may answer (16 MiB): it is held whole.
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The data of an ephemeral handler's store.
pub(crate) struct HandlerCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: LiveHttp,
    limiter: Limiter,
}

impl WasiView for HandlerCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HandlerCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// WASI 0.2 and `wasi:http` as wasmtime provides them: what a handler may import.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HandlerCtx>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// The handlers prepared for instantiation, by component, with the version each is of.
#[derive(Default)]
pub(crate) struct Handlers {
    prepared: Mutex<HashMap<(TenantId, ComponentName), Prepared>>,
}

#[derive(Clone)]
struct Prepared {
    version: u64,
    checked: Instant,
    pre: ProxyPre<HandlerCtx>,
    /// Made from the baseline tier's code (prepared again when the optimized is ready).
    baseline: bool,
}

/// The handler linkers: the engine's, and its baseline tier's.
pub(crate) struct HandlerLinkers {
    pub optimized: Linker<HandlerCtx>,
    pub baseline: Option<(wasmtime::Engine, Linker<HandlerCtx>)>,
}

impl HandlerLinkers {
    pub(crate) fn new(engine: &invicta_engine::Engine) -> wasmtime::Result<HandlerLinkers> {
        Ok(HandlerLinkers {
            optimized: linker(&engine.engine)?,
            baseline: match &engine.baseline {
                Some(b) => Some((b.engine.clone(), linker(&b.engine)?)),
                None => None,
            },
        })
    }

    /// The linker of `component`'s engine.
    fn of(&self, component: &wasmtime::component::Component) -> &Linker<HandlerCtx> {
        match &self.baseline {
            Some((engine, linker)) if wasmtime::Engine::same(component.engine(), engine) => linker,
            _ => &self.optimized,
        }
    }
}

impl Handlers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TenantId, ComponentName), Prepared>> {
        self.prepared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest version of the component, prepared to serve.
    async fn prepared(
        &self,
        ctx: &Context,
        linker: &HandlerLinkers,
        tenant: &TenantId,
        component: &ComponentName,
    ) -> Result<ProxyPre<HandlerCtx>> {
        let key = (tenant.clone(), component.clone());
        let known = self.lock().get(&key).cloned();
        if let Some(known) = &known
            && known.checked.elapsed() < VERSION_STALE
        {
            return Ok(known.pre.clone());
        }
        let version = ctx.registry.get(tenant, component, None).await?.version;
        if let Some(mut known) = known
            && known.version == version
            && !known.baseline
        {
            known.checked = Instant::now();
            let pre = known.pre.clone();
            self.lock().insert(key, known);
            return Ok(pre);
        }
        let compiled = ctx.registry.compiled(tenant, component, version).await?;
        let not_a_handler = |e: wasmtime::Error| {
            Error::NotAHandler(format!(
                "component {component} (version {version}) cannot serve HTTP: {e:#}"
            ))
        };
        let pre = linker
            .of(&compiled.component)
            .instantiate_pre(&compiled.component)
            .map_err(not_a_handler)?;
        let pre = ProxyPre::new(pre).map_err(not_a_handler)?;
        self.lock().insert(
            key,
            Prepared {
                version,
                checked: Instant::now(),
                pre: pre.clone(),
                baseline: compiled.baseline,
            },
        );
        Ok(pre)
    }
}

impl crate::Executor {
    /// Serves one HTTP request here, with the latest version of a tenant's component
    /// exporting `wasi:http/incoming-handler`, in a fresh instance, recording nothing.
    pub(crate) async fn serve_here(
        &self,
        tenant: &TenantId,
        component: &ComponentName,
        request: HandlerRequest,
        body: RequestBody,
        limits: &Limits,
    ) -> Result<Head> {
        let inner = &self.inner;
        let host = Host {
            ctx: &inner.ctx,
            linker: &inner.handler_linker,
            handlers: &inner.handlers,
        };
        begin(host, tenant, component, request, body, limits).await
    }
}

/// What the instance's run came to.
struct Ran {
    outcome: std::result::Result<wasmtime::Result<()>, tokio::time::error::Elapsed>,
    fuel_consumed: u64,
    memory_refused: bool,
}

/// What serving needs of the executor.
#[derive(Clone, Copy)]
pub(crate) struct Host<'a> {
    pub ctx: &'a Context,
    pub linker: &'a HandlerLinkers,
    pub handlers: &'a Handlers,
}

/// A handler's answer as it begins: its head, its body as the guest writes it, and the run that
/// writes it.
pub(crate) struct Head {
    parts: http::response::Parts,
    body: wasmtime_wasi_http::p2::body::HyperOutgoingBody,
    run: tokio::task::JoinHandle<Ran>,
    /// The fuel the run used, told when it ends.
    fuel: tokio::sync::oneshot::Receiver<u64>,
    deadline: Duration,
    started: Instant,
}

/// Starts serving `request` with the latest version of `component`; answers once the handler
/// has set its response's head (an error before that is the request's).
pub(crate) async fn begin(
    host: Host<'_>,
    tenant: &TenantId,
    component: &ComponentName,
    request: HandlerRequest,
    body: RequestBody,
    limits: &Limits,
) -> Result<Head> {
    let Host {
        ctx,
        linker,
        handlers,
    } = host;
    let pre = handlers.prepared(ctx, linker, tenant, component).await?;
    let engine_error = |e: wasmtime::Error| Error::Engine(format!("{e:#}"));
    let memory = limits
        .memory_per_worker_bytes
        .min(ctx.engine.config.memory_bytes_max);
    // The engine of the handler's code (the baseline tier's, until it is optimized).
    let mut store = wasmtime::Store::new(
        pre.engine(),
        HandlerCtx {
            wasi: WasiCtx::builder()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: LiveHttp {
                egress: Egress {
                    config: ctx.http_config.clone(),
                    hosts: limits.egress_hosts.clone(),
                    tls: ctx.http_tls.clone(),
                },
            },
            limiter: Limiter::new(memory),
        },
    );
    store.limiter(|ctx| &mut ctx.limiter);
    let fuel = limits
        .fuel_per_invocation
        .min(ctx.config.fuel_per_invocation);
    store.set_fuel(fuel).map_err(engine_error)?;
    store
        .fuel_async_yield_interval(Some(ctx.engine.config.fuel_yield_interval.max(1)))
        .map_err(engine_error)?;
    let incoming = incoming(request, body)?;
    let scheme = if incoming.uri().scheme_str() == Some("https") {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(scheme, incoming)
        .map_err(|e| Error::InvalidRequest(format!("{e:#}")))?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(engine_error)?;
    let deadline = Duration::from_millis(ctx.config.invocation_timeout_ms.max(1));
    let started = Instant::now();
    let (fuel_tx, fuel_rx) = tokio::sync::oneshot::channel();
    let run = tokio::spawn(async move {
        let outcome = tokio::time::timeout(deadline, async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        })
        .await;
        let fuel_consumed = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        if let Ok(Err(e)) = &outcome {
            tracing::debug!(error = %format!("{e:#}"), "a handler failed");
        }
        // Whoever streams the body meters the fuel when the run ends.
        let _ = fuel_tx.send(fuel_consumed);
        Ran {
            outcome,
            fuel_consumed,
            memory_refused: store.data().limiter.memory_refused,
        }
    });
    let response = match receiver.await {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => {
            return Err(Error::HandlerFailed(format!(
                "the handler answered an error: {code:?}"
            )));
        }
        Err(_) => return Err(failure(joined(run.await)?, deadline)),
    };
    let (parts, body) = response.into_parts();
    Ok(Head {
        parts,
        body,
        run,
        fuel: fuel_rx,
        deadline,
        started,
    })
}

/// What a run that ended before its response did comes to.
fn failure(ran: Ran, deadline: Duration) -> Error {
    match ran.outcome {
        Err(_) => Error::InvocationFailed {
            kind: invicta_model::oplog::FailureKind::Timeout,
            message: format!("the handler ran longer than {} ms", deadline.as_millis()),
        },
        Ok(Err(e)) => {
            let (kind, message) = crate::worker::classify(&e, ran.memory_refused);
            Error::InvocationFailed { kind, message }
        }
        Ok(Ok(())) => {
            Error::HandlerFailed("the handler returned without setting a response".into())
        }
    }
}

fn joined(joined: std::result::Result<Ran, tokio::task::JoinError>) -> Result<Ran> {
    joined.map_err(|e| Error::Engine(format!("the handler's task: {e}")))
}

fn pairs(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// The whole answer: the body collected (within [`RESPONSE_BYTES_MAX`] and the deadline), for
/// a caller in another process.
pub(crate) async fn collect(head: Head) -> Result<HandlerResponse> {
    let Head {
        parts,
        body,
        run,
        deadline,
        started,
        ..
    } = head;
    let left = deadline.saturating_sub(started.elapsed());
    let collected = tokio::time::timeout(
        left,
        http_body_util::Limited::new(body, RESPONSE_BYTES_MAX).collect(),
    )
    .await;
    let collected = match collected {
        Err(_) => {
            run.abort();
            return Err(Error::InvocationFailed {
                kind: invicta_model::oplog::FailureKind::Timeout,
                message: format!(
                    "the handler's response body did not end within {} ms",
                    deadline.as_millis()
                ),
            });
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            run.abort();
            return Err(Error::HandlerFailed(format!(
                "the handler's response body exceeds {RESPONSE_BYTES_MAX} bytes"
            )));
        }
        Ok(Err(e)) => {
            // The guest failed while writing the body: say why, if its run says.
            let ran = joined(run.await)?;
            return Err(match ran.outcome {
                Ok(Ok(())) => Error::HandlerFailed(format!("the handler's response body: {e}")),
                _ => failure(ran, deadline),
            });
        }
        Ok(Ok(collected)) => collected,
    };
    let ran = joined(run.await)?;
    if !matches!(ran.outcome, Ok(Ok(()))) {
        return Err(failure(ran, deadline));
    }
    let trailers = collected.trailers().map(pairs).unwrap_or_default();
    Ok(HandlerResponse {
        status: parts.status.as_u16(),
        headers: pairs(&parts.headers),
        body: collected.to_bytes(),
        trailers,
        fuel_consumed: ran.fuel_consumed,
    })
}

/// The answer as it comes: the body streams to the client while the guest writes it (within
/// [`RESPONSE_BYTES_MAX`]; a run that fails or passes its deadline cuts it off), and `done`
/// says the fuel the request used once the guest has finished.
pub(crate) fn stream(head: Head) -> StreamedResponse {
    // The run goes on, detached, while the body streams; its fuel comes on `fuel`.
    let Head {
        parts, body, fuel, ..
    } = head;
    let body = http_body_util::Limited::new(body, RESPONSE_BYTES_MAX)
        .map_err(|e| e.to_string())
        .boxed_unsync();
    StreamedResponse {
        status: parts.status.as_u16(),
        headers: pairs(&parts.headers),
        body,
        done: fuel,
    }
}

/// What `wasi:http` reads a request body as.
type IncomingBody = http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// The request as `wasi:http` receives it: `body` when it streams, else the request's own.
fn incoming(request: HandlerRequest, body: RequestBody) -> Result<http::Request<IncomingBody>> {
    let invalid = |e: &dyn std::fmt::Display| Error::InvalidRequest(e.to_string());
    let scheme = if request.scheme == "https" {
        "https"
    } else {
        "http"
    };
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(request.authority.as_str())
        .path_and_query(request.path_and_query.as_str())
        .build()
        .map_err(|e| invalid(&e))?;
    let method = http::Method::from_bytes(request.method.as_bytes()).map_err(|e| invalid(&e))?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    let body = match body {
        RequestBody::Whole(bytes) if bytes.is_empty() => Full::new(request.body)
            .map_err(|never| match never {})
            .boxed_unsync(),
        RequestBody::Whole(bytes) => Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
        RequestBody::Streamed(stream) => stream
            .map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e)))
            .boxed_unsync(),
    };
    builder.body(body).map_err(|e| invalid(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole() -> RequestBody {
        RequestBody::Whole(Bytes::new())
    }

    fn request(authority: &str, path: &str) -> HandlerRequest {
        HandlerRequest {
            method: "POST".into(),
            scheme: "http".into(),
            authority: authority.into(),
            path_and_query: path.into(),
            headers: vec![("x-a".into(), b"1".to_vec())],
            body: Bytes::from_static(b"hi"),
        }
    }

    #[test]
    fn a_request_becomes_a_whole_http_request() {
        let made = incoming(request("example.com:8080", "/a/b?c=d"), whole()).expect("a request");
        assert_eq!(made.uri().to_string(), "http://example.com:8080/a/b?c=d");
        assert_eq!(made.method(), http::Method::POST);
        assert_eq!(made.headers()["x-a"], "1");
    }

    #[test]
    fn a_malformed_request_is_refused_not_panicked_on() {
        assert!(matches!(
            incoming(request("exa mple", "/"), whole()),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            incoming(request("example.com", "no slash"), whole()),
            Err(Error::InvalidRequest(_))
        ));
        let mut bad = request("example.com", "/");
        bad.method = "GE T".into();
        assert!(matches!(
            incoming(bad, whole()),
            Err(Error::InvalidRequest(_))
        ));
        let mut bad = request("example.com", "/");
        bad.headers.push(("bad header".into(), b"x".to_vec()));
        assert!(matches!(
            incoming(bad, whole()),
            Err(Error::InvalidRequest(_))
        ));
    }
}
