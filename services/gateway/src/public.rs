//! The public listener: tenants' own traffic, apart from the API (`[gateway] public_listen`).
//! A request is matched to a route (by claimed host, or by the tenant prefix `/{tenant}`),
//! checked (method, authentication, the plan's rate and concurrency, the route's body limit),
//! handed to its target, and metered per route. Every refusal is a problem
//! (`application/problem+json`): unknown route 404, wrong method 405 (with `Allow`), missing
//! or wrong credentials 401, a key of another tenant 403, a body over the limit 413, the plan's
//! rate 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use invicta_billing::Scope;
use invicta_model::{ComponentName, TenantId, WorkerId, WorkerName};
use invicta_store::Store;
use serde_json::Value;

use crate::AppState;
use crate::problem::Problem;
use crate::routes::{Auth, Compiled, Source, Tables, Target};

/// How often the meter writes what it counted to the store.
pub const METER_FLUSH: Duration = Duration::from_secs(1);

/// The public listener's state: the API's backends, the route table and the meter.
#[derive(Clone)]
pub(crate) struct PublicState {
    pub app: AppState,
    pub tables: Arc<Tables>,
    pub meter: Arc<Meter>,
    pub signatures: Arc<Signatures>,
}

/// The functions of components' latest versions, as function routes type their parameters,
/// read from the registry at most [`SIGNATURES_STALE`] apart.
#[derive(Default)]
pub(crate) struct Signatures {
    known: Mutex<HashMap<(TenantId, ComponentName), Known>>,
}

/// A component's functions, and when they were read.
type Known = (std::time::Instant, Arc<Vec<FunctionSignature>>);

/// How long a component's function signatures are used before the registry is asked again.
pub const SIGNATURES_STALE: Duration = Duration::from_secs(1);

type FunctionSignature = invicta_engine::exports::FunctionSignature;

/// What routes served, counted in memory and written at most [`METER_FLUSH`] apart (a crash
/// loses at most that much of it).
#[derive(Default)]
pub(crate) struct Meter {
    counts: Mutex<HashMap<(String, String, String), Counted>>,
}

#[derive(Default, Clone, Copy)]
struct Counted {
    requests: u64,
    request_bytes: u64,
    response_bytes: u64,
    /// Fuel of ephemeral handlers (invocations meter their own).
    fuel: u64,
}

impl Meter {
    fn count(&self, route: &Compiled, component: &str, counted: Counted) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = counts
            .entry((
                route.tenant.as_str().to_string(),
                route.route.name.clone(),
                component.to_string(),
            ))
            .or_default();
        c.requests = c.requests.saturating_add(counted.requests);
        c.request_bytes = c.request_bytes.saturating_add(counted.request_bytes);
        c.response_bytes = c.response_bytes.saturating_add(counted.response_bytes);
        c.fuel = c.fuel.saturating_add(counted.fuel);
    }

    /// Writes what was counted, in one transaction; kept for the next try if it fails.
    pub async fn flush(&self, store: &Store) {
        use invicta_model::usage;
        let taken = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()));
        if taken.is_empty() {
            return;
        }
        let now = now_ms();
        let (hour, month) = (usage::hour_of(now), usage::month_of(now));
        let counts = taken.clone();
        let written = store
            .transact(move |tx| {
                let add = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                for ((tenant, route, component), c) in &counts {
                    for (kind, n) in [
                        (usage::ROUTE_REQUESTS, c.requests),
                        (usage::ROUTE_REQUEST_BYTES, c.request_bytes),
                        (usage::ROUTE_RESPONSE_BYTES, c.response_bytes),
                    ] {
                        tx.atomic_add(&usage::route_ledger_key(tenant, hour, route, kind), add(n))?;
                    }
                    if c.fuel > 0 {
                        tx.atomic_add(
                            &usage::ledger_key(tenant, hour, component, usage::FUEL),
                            add(c.fuel),
                        )?;
                        tx.atomic_add(&usage::month_key(tenant, usage::FUEL, &month), add(c.fuel))?;
                    }
                }
                Ok::<_, invicta_store::Error>(())
            })
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "write route usage; kept for the next try");
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            for (key, c) in taken {
                let into = counts.entry(key).or_default();
                into.requests = into.requests.saturating_add(c.requests);
                into.request_bytes = into.request_bytes.saturating_add(c.request_bytes);
                into.response_bytes = into.response_bytes.saturating_add(c.response_bytes);
                into.fuel = into.fuel.saturating_add(c.fuel);
            }
        }
    }
}

/// The public listener's router: every request goes to [`serve`].
pub(crate) fn router(state: PublicState) -> axum::Router {
    axum::Router::new().fallback(serve).with_state(state)
}

/// Where a request landed: the route, its path parameters, and the prefix it was served under.
struct Matched {
    route: Arc<Compiled>,
    params: Vec<(String, String)>,
    /// `/{tenant}` for a route without a host; empty otherwise.
    prefix: String,
}

/// Finds the route for `host` and `path`: `Err` is the refusal (404, or 405 with the methods
/// the path allows).
fn find(
    table: &crate::routes::Table,
    host: &str,
    path: &str,
    method: &Method,
    preflight: bool,
) -> Result<Matched, Problem> {
    let segments: Vec<&str> = path
        .strip_prefix('/')
        .map(|p| {
            if p.is_empty() {
                vec![]
            } else {
                p.split('/').collect()
            }
        })
        .unwrap_or_default();
    let (candidates, rest, prefix) = match table.by_host.get(host) {
        Some(routes) => (routes, segments.as_slice(), String::new()),
        None => {
            let tenant = segments.first().copied().unwrap_or_default();
            let routes = table.by_tenant.get(tenant).ok_or_else(|| {
                Problem::new(
                    StatusCode::NOT_FOUND,
                    "route_not_found",
                    format!("no route serves {host}{path}"),
                )
            })?;
            (
                routes,
                segments.get(1..).unwrap_or_default(),
                format!("/{tenant}"),
            )
        }
    };
    let mut allowed: Vec<String> = Vec::new();
    for route in candidates {
        let Some(params) = route.pattern.matches(rest) else {
            continue;
        };
        let methods = &route.route.spec.methods;
        let wanted = if preflight {
            Method::OPTIONS
        } else {
            method.clone()
        };
        if preflight && route.route.spec.cors.is_some()
            || methods.is_empty()
            || methods.iter().any(|m| m == wanted.as_str())
        {
            return Ok(Matched {
                route: route.clone(),
                params,
                prefix,
            });
        }
        allowed.extend(methods.iter().cloned());
    }
    if allowed.is_empty() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            format!("no route serves {host}{path}"),
        ));
    }
    allowed.sort();
    allowed.dedup();
    let mut problem = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not served here; try {}", allowed.join(", ")),
    );
    problem.allow = Some(allowed.join(", "));
    Err(problem)
}

async fn serve(State(state): State<PublicState>, request: Request) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let (response, route) = match handle(&state, request).await {
        Ok((response, route)) => (response, Some(route)),
        Err((problem, route)) => {
            // A keyed route says how to authenticate, as the API does.
            let keyed = problem.status == StatusCode::UNAUTHORIZED
                && route
                    .as_ref()
                    .is_some_and(|r| matches!(r.route.spec.auth, Auth::Key));
            let mut response = problem.into_response();
            if keyed {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            (response, route)
        }
    };
    match (route, origin) {
        (Some(route), Some(origin)) => with_cors(response, &route, &origin),
        _ => response,
    }
}

/// Adds the CORS headers a browser needs when the route allows the request's origin.
fn with_cors(mut response: Response, route: &Compiled, origin: &HeaderValue) -> Response {
    let Some(cors) = &route.route.spec.cors else {
        return response;
    };
    let any = cors.origins.iter().any(|o| o == "*");
    let listed = cors
        .origins
        .iter()
        .any(|o| o.as_bytes() == origin.as_bytes());
    if !(any || listed) {
        return response;
    }
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        if listed {
            origin.clone()
        } else {
            HeaderValue::from_static("*")
        },
    );
    if listed {
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

type Refusal = (Problem, Option<Arc<Compiled>>);

async fn handle(
    state: &PublicState,
    request: Request,
) -> Result<(Response, Arc<Compiled>), Refusal> {
    let no_route = |p: Problem| (p, None);
    let table = state
        .tables
        .current()
        .await
        .map_err(|e| no_route(Problem::internal(e)))?;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .map(crate::routes::normal_host)
        .unwrap_or_default();
    let path = request.uri().path().to_string();
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let matched = find(&table, &host, &path, request.method(), preflight).map_err(no_route)?;
    let route = matched.route.clone();
    let refuse = |p: Problem| (p, Some(route.clone()));
    if preflight {
        return Ok((preflight_answer(&route), route.clone()));
    }
    let spec = &route.route.spec;
    let tenant = route.tenant.clone();
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    match &spec.auth {
        Auth::Public => {}
        Auth::Key => {
            let authorization = request
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().map(str::to_string));
            let caller = crate::auth::caller(&state.app, authorization, address)
                .await
                .map_err(&refuse)?;
            let theirs = caller.tenant(Scope::Invoke).map_err(&refuse)?;
            if theirs != tenant {
                return Err(refuse(Problem::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the key is not of this route's tenant",
                )));
            }
        }
        Auth::Secret { header, sha256, .. } => {
            use subtle::ConstantTimeEq;
            let sent = request
                .headers()
                .get(header.as_str())
                .map(|v| crate::routes::digest(v.as_bytes()));
            let expected = sha256.as_deref().unwrap_or_default();
            let good =
                sent.is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(expected.as_bytes())));
            if !good {
                return Err(refuse(Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    format!("this route needs its secret in the `{header}` header"),
                )));
            }
        }
    }
    let plan = state
        .app
        .billing
        .plan_of(&tenant)
        .await
        .map_err(|e| refuse(e.into()))?;
    state
        .app
        .limiters
        .admit_public(tenant.as_str(), &plan)
        .map_err(&refuse)?;
    let _slot = state
        .app
        .limiters
        .invocation_slot(tenant.as_str(), &plan)
        .map_err(&refuse)?;
    let limits = crate::api::limits(&plan);
    let limit = usize::try_from(spec.body_bytes_max).unwrap_or(usize::MAX);
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over this route's limit of {limit} bytes"),
        )
    };
    if let Some(declared) = declared.filter(|n| *n > spec.body_bytes_max) {
        crate::drain(request.into_body(), declared, limit).await;
        return Err(refuse(too_large()));
    }
    let (parts, incoming) = request.into_parts();
    // An ephemeral handler reads the body as it comes (within the limit, counted as read);
    // everything else takes it whole.
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (body, stream) = if matches!(&spec.target, Target::Handler { worker: None, .. }) {
        use http_body_util::BodyExt;
        let counter = received.clone();
        let stream = http_body_util::Limited::new(incoming, limit)
            .map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    counter.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                frame
            })
            .map_err(|e| e.to_string())
            .boxed_unsync();
        (axum::body::Bytes::new(), Some(stream))
    } else {
        let body = axum::body::to_bytes(incoming, limit)
            .await
            .map_err(|_| refuse(too_large()))?;
        received.store(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
        (body, None)
    };
    let request_bytes = body.len() as u64;
    let (response, component) = match &spec.target {
        Target::Handler { component, worker } => {
            let component =
                ComponentName::new(component.clone()).map_err(|e| refuse(Problem::internal(e)))?;
            let path_and_query = {
                let inner = parts
                    .uri
                    .path()
                    .strip_prefix(matched.prefix.as_str())
                    .unwrap_or("/");
                let inner = if inner.is_empty() { "/" } else { inner };
                match parts.uri.query() {
                    Some(q) => format!("{inner}?{q}"),
                    None => inner.to_string(),
                }
            };
            let mut headers: Vec<(String, Vec<u8>)> = parts
                .headers
                .iter()
                .filter(|(k, _)| !is_hop_by_hop(k) && !is_credential(&spec.auth, k))
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect();
            if !matched.prefix.is_empty() {
                headers.push((
                    "x-forwarded-prefix".into(),
                    matched.prefix.clone().into_bytes(),
                ));
            }
            let request = invicta_executor::HandlerRequest {
                method: parts.method.as_str().to_string(),
                scheme: "http".into(),
                authority: if host.is_empty() {
                    "localhost".into()
                } else {
                    host.clone()
                },
                path_and_query,
                headers,
                body,
            };
            let answer = match worker {
                // Ephemeral: a fresh instance, nothing recorded.
                None => state
                    .app
                    .executor
                    .serve_http(
                        &tenant,
                        &component,
                        request,
                        match stream {
                            Some(stream) => invicta_executor::RequestBody::Streamed(stream),
                            None => invicta_executor::RequestBody::Whole(Default::default()),
                        },
                        &limits,
                    )
                    .await
                    .map_err(|e| refuse(handler_problem(e, &limits)))?,
                // Durable: the named worker handles it, as a recorded invocation.
                Some(source) => {
                    let pieces = Pieces {
                        params: &matched.params,
                        query: parts.uri.query().unwrap_or_default(),
                        headers: &parts.headers,
                        body: &[],
                    };
                    let id = worker_id(&pieces, source, &tenant, &component).map_err(&refuse)?;
                    let key = crate::api::idempotency_key(&parts.headers).map_err(&refuse)?;
                    let json = invicta_executor::incoming::request_json(&request);
                    let completed = state
                        .app
                        .executor
                        .invoke(
                            &id,
                            invicta_executor::incoming::FUNCTION,
                            &[json],
                            key,
                            &limits,
                        )
                        .await
                        .map_err(|e| refuse(handler_problem(e, &limits)))?;
                    invicta_executor::incoming::response_from_json(&completed.result)
                        .map(invicta_executor::StreamedResponse::from)
                        .ok_or_else(|| {
                            refuse(Problem::internal(
                                "a durable handler's result is not a response",
                            ))
                        })?
                }
            };
            // Metered as it ends: the body's bytes when it is sent, the fuel when the guest
            // has finished.
            let metered = Metered {
                meter: state.meter.clone(),
                route: route.clone(),
                component: component.as_str().to_string(),
                request_bytes: received,
            };
            return Ok((handler_response(answer, metered), route));
        }
        Target::Function {
            component,
            function,
            worker,
            params,
        } => {
            let component =
                ComponentName::new(component.clone()).map_err(|e| refuse(Problem::internal(e)))?;
            let request = Pieces {
                params: &matched.params,
                query: parts.uri.query().unwrap_or_default(),
                headers: &parts.headers,
                body: &body,
            };
            let id = worker_id(&request, worker, &tenant, &component).map_err(&refuse)?;
            let types = param_types(state, &tenant, &component, function).await;
            let values = params
                .iter()
                .enumerate()
                .map(|(i, source)| request.typed(source, types.get(i).map(String::as_str)))
                .collect::<Result<Vec<_>, Problem>>()
                .map_err(&refuse)?;
            let key = crate::api::idempotency_key(&parts.headers).map_err(&refuse)?;
            let completed = state
                .app
                .executor
                .invoke(&id, function, &values, key, &limits)
                .await
                .map_err(|e| refuse(crate::api::invocation_problem(e, &limits)))?;
            let bytes = serde_json::to_vec(&completed.result).unwrap_or_default();
            let response = ([(header::CONTENT_TYPE, "application/json")], bytes).into_response();
            (response, component.as_str().to_string())
        }
    };
    let response_bytes = response_length(&response);
    state.meter.count(
        &route,
        &component,
        Counted {
            requests: 1,
            request_bytes,
            response_bytes,
            fuel: 0,
        },
    );
    Ok((response, route))
}

/// Where a streamed answer is metered when it ends.
struct Metered {
    meter: Arc<Meter>,
    route: Arc<Compiled>,
    component: String,
    /// The request's bytes read so far.
    request_bytes: Arc<std::sync::atomic::AtomicU64>,
}

/// A response body that counts its bytes as they go and meters the request when it is done
/// with (sent whole, or dropped by a client that left).
struct Counting {
    inner: http_body_util::combinators::UnsyncBoxBody<axum::body::Bytes, String>,
    sent: u64,
    metered: Option<Metered>,
}

impl http_body::Body for Counting {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<axum::body::Bytes>, std::io::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.sent = self.sent.saturating_add(data.len() as u64);
        }
        polled.map(|frame| frame.map(|f| f.map_err(std::io::Error::other)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        if let Some(m) = self.metered.take() {
            m.meter.count(
                &m.route,
                &m.component,
                Counted {
                    requests: 1,
                    request_bytes: m.request_bytes.load(std::sync::atomic::Ordering::Relaxed),
                    response_bytes: self.sent,
                    fuel: 0,
                },
            );
        }
    }
}

/// The answer to a CORS preflight the route allows.
fn preflight_answer(route: &Compiled) -> Response {
    let spec = &route.route.spec;
    let Some(cors) = &spec.cors else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let methods = if spec.methods.is_empty() {
        "GET, HEAD, POST, PUT, DELETE, PATCH".to_string()
    } else {
        spec.methods.join(", ")
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&methods) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !cors.headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.headers.join(", "))
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cors.max_age_s),
    );
    response
}

/// Whether a header carries the route's own credential (the tenant's key, or the route's
/// secret), which the handler is not given; any other, `Authorization` on a public route
/// included, is the handler's.
fn is_credential(auth: &Auth, name: &HeaderName) -> bool {
    match auth {
        Auth::Public => false,
        Auth::Key => *name == header::AUTHORIZATION,
        Auth::Secret { header, .. } => name.as_str() == header,
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "te" | "proxy-connection"
    )
}

/// A handler's answer as an HTTP response, streamed as the handler writes it (trailers after
/// the body), metered when it ends.
fn handler_response(answer: invicta_executor::StreamedResponse, metered: Metered) -> Response {
    let invicta_executor::StreamedResponse {
        status,
        headers: fields,
        body,
        done,
    } = answer;
    let mut headers = HeaderMap::new();
    for (name, value) in &fields {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_bytes(value),
        ) && !is_hop_by_hop(&name)
        {
            headers.append(name, value);
        }
    }
    // The fuel, once the guest has finished.
    let (meter, route, component) = (
        metered.meter.clone(),
        metered.route.clone(),
        metered.component.clone(),
    );
    tokio::spawn(async move {
        if let Ok(fuel) = done.await
            && fuel > 0
        {
            meter.count(
                &route,
                &component,
                Counted {
                    fuel,
                    ..Counted::default()
                },
            );
        }
    });
    let mut response = Response::new(Body::new(Counting {
        inner: body,
        sent: 0,
        metered: Some(metered),
    }));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    *response.headers_mut() = headers;
    response
}

fn response_length(response: &Response) -> u64 {
    use http_body::Body as _;
    response.body().size_hint().exact().unwrap_or(0)
}

/// A handler's failure, for the client of a public route: the guest's fault is the server's
/// (500, or 504 for its deadline), the plan's limits are the plan's (as for invocations).
fn handler_problem(e: invicta_executor::Error, limits: &invicta_executor::Limits) -> Problem {
    use invicta_model::oplog::FailureKind;
    match &e {
        invicta_executor::Error::InvocationFailed {
            kind: FailureKind::OutOfFuel | FailureKind::OutOfMemory,
            ..
        } => crate::api::invocation_problem(e, limits),
        invicta_executor::Error::InvocationFailed {
            kind: FailureKind::Timeout,
            message,
        } => Problem::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message.clone()),
        invicta_executor::Error::InvocationFailed { kind, message } => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "handler_failed",
            format!("the handler failed ({}): {message}", kind.code()),
        ),
        _ => e.into(),
    }
}

/// The worker a request names.
fn worker_id(
    pieces: &Pieces<'_>,
    source: &Source,
    tenant: &TenantId,
    component: &ComponentName,
) -> Result<WorkerId, Problem> {
    let name = match pieces.value(source)? {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let worker = WorkerName::new(name)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))?;
    Ok(WorkerId {
        tenant: tenant.clone(),
        component: component.clone(),
        worker,
    })
}

/// The WIT types of a function's parameters, as the registry describes the component's latest
/// version (empty when it cannot say: values then go as they come).
async fn param_types(
    state: &PublicState,
    tenant: &TenantId,
    component: &ComponentName,
    function: &str,
) -> Vec<String> {
    let key = (tenant.clone(), component.clone());
    let cached = {
        let known = state
            .signatures
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known
            .get(&key)
            .filter(|(at, _)| at.elapsed() < SIGNATURES_STALE)
            .map(|(_, exports)| exports.clone())
    };
    let exports = match cached {
        Some(exports) => exports,
        None => {
            let Ok(version) = state.app.registry.get(tenant, component, None).await else {
                return Vec::new();
            };
            let exports = Arc::new(version.exports);
            let mut known = state
                .signatures
                .known
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if known.len() > 10_000 {
                known.clear();
            }
            known.insert(key, (std::time::Instant::now(), exports.clone()));
            exports
        }
    };
    exports
        .iter()
        .find(|f| f.name == function || f.name.ends_with(&format!(".{{{function}}}")))
        .map(|f| f.params.iter().map(|p| p.ty.clone()).collect())
        .unwrap_or_default()
}

/// The parts of a request that values are taken from.
struct Pieces<'a> {
    params: &'a [(String, String)],
    query: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

impl Pieces<'_> {
    fn missing(what: String) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_params", what)
    }

    /// The value as the request has it: text from the path, the query and headers, JSON from
    /// the body.
    fn value(&self, source: &Source) -> Result<Value, Problem> {
        match source {
            Source::Path { name } => self
                .params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| Value::String(v.clone()))
                .ok_or_else(|| Self::missing(format!("the path has no `{name}`"))),
            Source::Query { name } => form_pairs(self.query)
                .find(|(n, _)| n == name)
                .map(|(_, v)| Value::String(v))
                .ok_or_else(|| Self::missing(format!("the query has no `{name}`"))),
            Source::Header { name } => self
                .headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(|v| Value::String(v.to_string()))
                .ok_or_else(|| Self::missing(format!("the request has no `{name}` header"))),
            Source::Body { pointer } => {
                let json: Value = serde_json::from_slice(self.body).map_err(|e| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_json",
                        format!("the body is not JSON: {e}"),
                    )
                })?;
                match pointer.as_deref() {
                    None | Some("") => Ok(json),
                    Some(p) => json
                        .pointer(p)
                        .cloned()
                        .ok_or_else(|| Self::missing(format!("the body has nothing at `{p}`"))),
                }
            }
            Source::Value { value } => Ok(value.clone()),
        }
    }

    /// The value for a parameter of WIT type `ty`: text becomes a string for `string` and
    /// `char`, and is read as JSON otherwise (`5`, `true`, `[1,2]`), else kept as text.
    fn typed(&self, source: &Source, ty: Option<&str>) -> Result<Value, Problem> {
        let value = self.value(source)?;
        let textual = matches!(
            source,
            Source::Path { .. } | Source::Query { .. } | Source::Header { .. }
        );
        match (value, ty) {
            (Value::String(text), Some(ty)) if textual && ty != "string" && ty != "char" => {
                Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            (value, _) => Ok(value),
        }
    }
}

/// `a=1&b=x%20y` as decoded pairs.
fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(name), decode(value))
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_follow_the_parameter_types() {
        let headers = HeaderMap::new();
        let params = vec![("n".to_string(), "5".to_string())];
        let pieces = Pieces {
            params: &params,
            query: "who=b%20ob&flag=true",
            headers: &headers,
            body: br#"{"a":{"b":[1,2]}}"#,
        };
        let path = Source::Path { name: "n".into() };
        assert_eq!(
            pieces.typed(&path, Some("s64")).ok(),
            Some(serde_json::json!(5))
        );
        assert_eq!(
            pieces.typed(&path, Some("string")).ok(),
            Some(serde_json::json!("5"))
        );
        let who = Source::Query { name: "who".into() };
        assert_eq!(
            pieces.typed(&who, Some("string")).ok(),
            Some(serde_json::json!("b ob"))
        );
        let flag = Source::Query {
            name: "flag".into(),
        };
        assert_eq!(
            pieces.typed(&flag, Some("bool")).ok(),
            Some(serde_json::json!(true))
        );
        let body = Source::Body {
            pointer: Some("/a/b".into()),
        };
        assert_eq!(
            pieces.typed(&body, None).ok(),
            Some(serde_json::json!([1, 2]))
        );
        let missing = Source::Query {
            name: "nope".into(),
        };
        assert_eq!(
            pieces.typed(&missing, None).err().map(|p| p.code),
            Some("invalid_params")
        );
    }
}
