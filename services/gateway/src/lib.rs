//! The gateway: Invicta's public HTTP/JSON API (axum). It owns authentication, rate limits and
//! request validation, and routes each call to the service that does the work: components to
//! the registry, workers and invocations to the executor. Health endpoints for every mode.
//!
//! **Boundary:** the gateway never runs guest code and never writes the oplog.

mod admin;
mod api;
mod auth;
mod config_api;
mod connection;
mod console;
mod files_api;
mod inspect;
mod logs;
mod openapi;
mod problem;
mod public;
mod route_api;
mod routes;
mod uploads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use invicta_billing::Billing;
use invicta_blob::BlobStore;
use invicta_component_registry::Registry;
use invicta_executor::Executor;
use invicta_store::Store;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serve HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The gateway's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the public API listens. Default `127.0.0.1:8080`: loopback only until an operator
    /// chooses to expose it.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The largest JSON request body, in bytes (default 1 MiB): invocation arguments end up in
    /// the oplog.
    #[serde(default = "default_json_body_bytes_max")]
    pub json_body_bytes_max: usize,
    /// How long a client may take to send a request's headers, and how long a kept-alive
    /// connection may sit idle before its next request, in milliseconds (default 30,000):
    /// slow or idle connections are closed rather than held.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Connections served at once (default 4,096); past it new ones are closed at once, so
    /// that file descriptors are never exhausted.
    #[serde(default = "default_connections_max")]
    pub connections_max: usize,
    /// Connections served at once from one client address (default 1,024): one client cannot
    /// take every connection.
    #[serde(default = "default_connections_per_address_max")]
    pub connections_per_address_max: usize,
    /// Where tenants' public routes are served (`/v1/routes`), apart from the API; none (the
    /// default) serves no routes.
    #[serde(default)]
    pub public_listen: Option<SocketAddr>,
}

fn default_connections_per_address_max() -> usize {
    1_024
}

fn default_header_read_timeout_ms() -> u64 {
    30_000
}

fn default_connections_max() -> usize {
    4_096
}

fn default_json_body_bytes_max() -> usize {
    1024 * 1024
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            json_body_bytes_max: default_json_body_bytes_max(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            connections_max: default_connections_max(),
            connections_per_address_max: default_connections_per_address_max(),
            public_listen: None,
        }
    }
}

/// What every handler shares, behind one reference count: a request clones it several times
/// (each middleware's copy, the handler's), which for the fields themselves was a dozen atomic
/// increments and as many decrements.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub(crate) struct Shared {
    store: Store,
    blobs: BlobStore,
    registry: Registry,
    executor: Executor,
    billing: Billing,
    limiters: std::sync::Arc<auth::Limiters>,
    /// The public routes, as the public listener serves them.
    routes: Arc<routes::Tables>,
    /// Uploads answered early, compiling in the background.
    uploads: Arc<uploads::Uploads>,
    /// Turns true when the server stops: streams end so that shutdown does not wait for them.
    stop: tokio::sync::watch::Receiver<bool>,
}

/// The services the gateway routes to.
pub struct Backends {
    pub store: Store,
    pub blobs: BlobStore,
    pub registry: Registry,
    pub executor: Executor,
    pub billing: Billing,
}

/// The gateway, bound to its address and ready to serve.
pub struct Service {
    listener: TcpListener,
    router: Router,
    /// The public listener and its router, when `public_listen` is set.
    public: Option<(TcpListener, Router)>,
    meter: Arc<public::Meter>,
    store: Store,
    stop: tokio::sync::watch::Sender<bool>,
    header_read_timeout: Duration,
    connections_max: usize,
    connections_per_address_max: usize,
}

impl Service {
    /// Binds the listening socket, so that a caller learns of a taken port before anything runs.
    pub async fn bind(config: &Config, backends: Backends) -> Result<Service> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let public_listener = match config.public_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Listen { addr, source })?,
            ),
            None => None,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let state = AppState(Arc::new(Shared {
            store: backends.store.clone(),
            blobs: backends.blobs,
            registry: backends.registry,
            executor: backends.executor,
            billing: backends.billing,
            limiters: Default::default(),
            routes: Arc::new(routes::Tables::new(backends.store.clone())),
            uploads: Default::default(),
            stop: stopped,
        }));
        let meter = Arc::new(public::Meter::default());
        let public = public_listener.map(|listener| {
            let router = public::router(public::PublicState {
                tables: state.routes.clone(),
                meter: meter.clone(),
                signatures: Default::default(),
                app: state.clone(),
            });
            (listener, router)
        });
        Ok(Service {
            listener,
            public,
            meter,
            store: backends.store,
            stop,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
            connections_max: config.connections_max,
            connections_per_address_max: config.connections_per_address_max,
            router: router(config, state),
        })
    }

    /// The address the public listener bound, if there is one.
    pub fn public_addr(&self) -> Result<Option<SocketAddr>> {
        self.public
            .as_ref()
            .map(|(listener, _)| listener.local_addr().map_err(Error::Serve))
            .transpose()
    }

    /// The address actually bound (port 0 in the config picks a free one).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(Error::Serve)
    }

    /// Serves until `shutdown` resolves, then finishes the requests in flight.
    ///
    /// Each connection is HTTP/1.1 or HTTP/2 (hyper), with a deadline for a request's headers
    /// that also closes a kept-alive connection left idle (`header_read_timeout_ms`), and at
    /// most `connections_max` connections at once: slowloris and idle floods cost their
    /// senders, not the server's file descriptors.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Service {
            listener,
            public,
            meter,
            store,
            stop,
            router,
            header_read_timeout,
            connections_max,
            connections_per_address_max,
        } = self;
        let limits = ConnectionLimits {
            header_read_timeout,
            connections_max,
            connections_per_address_max,
        };
        // What public routes serve is written at most a second apart, and once more at the end.
        let metering = {
            let (meter, store, mut stopping) = (meter.clone(), store.clone(), stop.subscribe());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(public::METER_FLUSH) => meter.flush(&store).await,
                        _ = stopping.changed() => break,
                    }
                }
            })
        };
        let public = public.map(|(listener, router)| {
            let mut stopping = stop.subscribe();
            let stopped = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            tokio::spawn(accept(listener, router, limits, stopped, stop.subscribe()))
        });
        let connections = accept(listener, router, limits, shutdown, stop.subscribe()).await;
        let _ = stop.send(true);
        // Requests in flight finish (streams end at the stop signal); connections that do not
        // close within the grace period are left behind.
        let all = u32::try_from(connections_max.max(1)).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, connections.acquire_many(all)).await;
        if let Some(public) = public
            && let Ok(connections) = public.await
        {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connections.acquire_many(all)).await;
        }
        let _ = metering.await;
        meter.flush(&store).await;
        Ok(())
    }
}

/// How a listener bounds its connections.
#[derive(Clone, Copy)]
struct ConnectionLimits {
    header_read_timeout: Duration,
    connections_max: usize,
    connections_per_address_max: usize,
}

/// Accepts connections on `listener` and serves `router` on each until `shutdown` resolves;
/// answers the semaphore whose permits the open connections hold.
///
/// Each connection is HTTP/1.1 or HTTP/2 (hyper), with a deadline for a request's headers
/// that also closes a kept-alive connection left idle (`header_read_timeout_ms`), and at
/// most `connections_max` connections at once: slowloris and idle floods cost their
/// senders, not the server's file descriptors.
async fn accept(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Arc<tokio::sync::Semaphore> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let ConnectionLimits {
        header_read_timeout,
        connections_max,
        connections_per_address_max,
    } = limits;
    let per_address = Arc::new(connection::PerAddress::new(connections_per_address_max));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_headers(HEADERS_MAX * 2);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(header_read_timeout)
        .keep_alive_timeout(header_read_timeout);
    let connections = Arc::new(tokio::sync::Semaphore::new(connections_max.max(1)));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%remote, connections_max, "too many connections: closing a new one");
            drop(stream);
            continue;
        };
        let Some(address_slot) = per_address.take(remote.ip()) else {
            tracing::debug!(%remote, "too many connections from one address: closing a new one");
            drop(stream);
            continue;
        };
        let activity = Arc::new(connection::Activity::default());
        let router = router.clone();
        let busy = activity.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                let router = router.clone();
                let handling = busy.handling();
                async move {
                    use tower::ServiceExt;
                    let response = router.oneshot(request.map(axum::body::Body::new)).await;
                    drop(handling);
                    response
                }
            },
        );
        let io = TokioIo::new(connection::Watched::new(stream, activity.clone()));
        let connection = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let mut stop_connection = stopping.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let mut closing = false;
            loop {
                tokio::select! {
                    ended = connection.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(%remote, error = %e, "connection ended");
                        }
                        break;
                    }
                    () = activity.idle(header_read_timeout), if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    _ = stop_connection.changed(), if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(address_slot);
            drop(permit);
        });
    }
    drop(listener);
    connections
}

fn router(config: &Config, state: AppState) -> Router {
    let component_limit =
        usize::try_from(state.registry.config().component_bytes_max).unwrap_or(usize::MAX);
    let json_limit = DefaultBodyLimit::max(config.json_body_bytes_max);
    let v1 = Router::new()
        .route("/v1/components", get(api::list_components))
        .route(
            "/v1/components/{component}",
            post(api::upload_component)
                .layer(DefaultBodyLimit::max(component_limit))
                .get(api::get_component)
                .delete(api::delete_component),
        )
        .route(
            "/v1/components/{component}/uploads/{upload}",
            get(api::get_upload),
        )
        .route(
            "/v1/components/{component}/workers",
            post(api::create_worker)
                .layer(json_limit)
                .get(api::list_workers),
        )
        .route(
            "/v1/components/{component}/workers/{worker}",
            get(api::worker_status).delete(api::delete_worker),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/interrupt",
            post(api::interrupt_worker),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/resume",
            post(api::resume_worker),
        )
        .route(
            "/v1/components/{component}/update",
            post(api::update_workers).layer(json_limit),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/fork",
            post(api::fork_worker).layer(json_limit),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/revert",
            post(api::revert_worker).layer(json_limit),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/version",
            put(api::set_worker_version).layer(json_limit),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/enqueue",
            post(api::enqueue).layer(json_limit),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/invocations/{key}",
            get(api::get_invocation),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/logs",
            get(logs::logs),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/schedules",
            post(api::create_schedule)
                .layer(json_limit)
                .get(api::list_schedules),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/schedules/{schedule}",
            delete(api::delete_schedule),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/schedules/{schedule}/pause",
            post(api::pause_schedule),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/schedules/{schedule}/resume",
            post(api::resume_schedule),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/promises",
            get(inspect::list_promises),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/files",
            get(files_api::root),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/files/{*path}",
            get(files_api::at_path),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/invocations",
            get(inspect::pending_invocations),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/promises/{promise}",
            get(api::get_promise),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/promises/{promise}/complete",
            post(api::complete_promise).layer(json_limit),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/invoke",
            post(api::invoke).layer(json_limit),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/oplog",
            get(api::oplog),
        )
        .route(
            "/v1/components/{component}/config",
            get(config_api::list_component_config),
        )
        .route(
            "/v1/components/{component}/config/{key}",
            put(config_api::set_component_config)
                .layer(json_limit)
                .delete(config_api::unset_component_config),
        )
        .route(
            "/v1/components/{component}/snapshots",
            put(config_api::set_component_snapshots)
                .layer(json_limit)
                .get(config_api::get_component_snapshots)
                .delete(config_api::delete_component_snapshots),
        )
        .route(
            "/v1/components/{component}/retry",
            put(config_api::set_component_retry)
                .layer(json_limit)
                .get(config_api::get_component_retry)
                .delete(config_api::delete_component_retry),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/config",
            get(config_api::list_worker_config),
        )
        .route(
            "/v1/components/{component}/workers/{worker}/config/{key}",
            put(config_api::set_worker_config)
                .layer(json_limit)
                .delete(config_api::unset_worker_config),
        )
        .route("/v1/routes", get(route_api::list_routes))
        .route(
            "/v1/routes/{route}",
            post(route_api::create_route)
                .layer(json_limit)
                .get(route_api::get_route)
                .delete(route_api::delete_route),
        )
        .route(
            "/v1/keys",
            post(admin::create_key)
                .layer(json_limit)
                .get(admin::list_keys),
        )
        .route("/v1/keys/{id}", delete(admin::revoke_key))
        .route("/v1/usage", get(admin::usage))
        .route(
            "/v1/admin/tenants",
            post(admin::create_tenant)
                .layer(json_limit)
                .get(admin::list_tenants),
        )
        .route("/v1/admin/tenants/{tenant}", get(admin::get_tenant))
        .route(
            "/v1/admin/tenants/{tenant}/plan",
            put(admin::set_tenant_plan).layer(json_limit),
        )
        .route(
            "/v1/admin/tenants/{tenant}/keys",
            post(admin::create_tenant_key).layer(json_limit),
        )
        .route("/v1/admin/plans", get(admin::list_plans))
        .route("/v1/admin/usage", get(admin::admin_usage))
        .route("/v1/admin/invoices", get(admin::invoice))
        .route("/v1/admin/cluster", get(admin::cluster))
        .route(
            "/v1/admin/plans/{plan}",
            put(admin::put_plan).layer(json_limit),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .route_layer(axum::middleware::from_fn(request_span));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .route("/console", get(console::index))
        .route("/console/", get(console::index))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        // No key: the token is the credential; calls are limited per client address.
        .route(
            "/v1/webhooks/{token}",
            post(api::webhook)
                .layer(DefaultBodyLimit::max(invicta_executor::PROMISE_BYTES_MAX))
                .route_layer(axum::middleware::from_fn(request_span)),
        )
        .merge(v1)
        .fallback(api::not_found)
        .layer(axum::middleware::map_response(problems))
        .layer(axum::middleware::from_fn_with_state(
            BodyLimits {
                component: component_limit,
                json: config.json_body_bytes_max,
            },
            bounded,
        ))
        .with_state(state)
}

/// How long a stopping server waits for its connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The longest path segment or query value accepted, in bytes as sent: names are at most 128
/// bytes and idempotency keys 256, and every id ends up in a store key (at most 10 kB), so
/// anything longer is refused before it costs anything.
pub const SEGMENT_BYTES_MAX: usize = 512;

/// The longest query string accepted, in bytes.
pub const QUERY_BYTES_MAX: usize = 4_096;

/// How much of a refused body beyond its limit is read and dropped, and for how long, so that
/// the client reads its 413 rather than a reset connection.
const DRAIN_BYTES_MAX: usize = 1024 * 1024;
const DRAIN_TIME_MAX: Duration = Duration::from_secs(1);

/// Reads and drops a refused body of `declared` bytes if it is at most [`DRAIN_BYTES_MAX`]
/// over `limit`, within [`DRAIN_TIME_MAX`].
pub(crate) async fn drain(body: axum::body::Body, declared: u64, limit: usize) {
    use http_body_util::BodyExt;
    let most = u64::try_from(limit.saturating_add(DRAIN_BYTES_MAX)).unwrap_or(u64::MAX);
    if declared > most {
        return;
    }
    let mut body = body;
    let _ = tokio::time::timeout(DRAIN_TIME_MAX, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// The most headers a request may carry (hyper's own limit is 100, answered without a body).
pub const HEADERS_MAX: usize = 64;

/// The body limits of the routes, for refusing a declared `Content-Length` before reading.
#[derive(Clone, Copy)]
struct BodyLimits {
    component: usize,
    json: usize,
}

/// Refuses what is too large before anything reads it: a path segment or query value over
/// [`SEGMENT_BYTES_MAX`] (400), a query over [`QUERY_BYTES_MAX`] (400), more than
/// [`HEADERS_MAX`] headers (431), and a declared `Content-Length` over the route's body limit
/// (413). Every refusal is a problem naming the limit.
async fn bounded(
    State(limits): State<BodyLimits>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let refuse = |status: StatusCode, code: &'static str, detail: String| {
        api::Problem::new(status, code, detail).into_response()
    };
    let uri = request.uri();
    if let Some(segment) = uri.path().split('/').find(|s| s.len() > SEGMENT_BYTES_MAX) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "a path segment is {} bytes; the limit is {SEGMENT_BYTES_MAX}",
                segment.len()
            ),
        );
    }
    if let Some(query) = uri.query() {
        if query.len() > QUERY_BYTES_MAX {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!(
                    "the query is {} bytes; the limit is {QUERY_BYTES_MAX}",
                    query.len()
                ),
            );
        }
        if let Some(value) = query
            .split('&')
            .map(|pair| pair.split_once('=').map_or(pair, |(_, v)| v))
            .find(|v| v.len() > SEGMENT_BYTES_MAX)
        {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!(
                    "a query value is {} bytes; the limit is {SEGMENT_BYTES_MAX}",
                    value.len()
                ),
            );
        }
    }
    if request.headers().len() > HEADERS_MAX {
        return refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {} headers; the limit is {HEADERS_MAX}",
                request.headers().len()
            ),
        );
    }
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared {
        // An upload (`POST /v1/components/{name}`) takes a component; every other body is JSON.
        let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let upload = request.method() == axum::http::Method::POST
            && matches!(segments.as_slice(), ["v1", "components", _]);
        let limit = if upload {
            limits.component
        } else {
            limits.json
        };
        if declared > u64::try_from(limit).unwrap_or(u64::MAX) {
            // A body a little over the limit is read and dropped first (as much as the
            // client sends, within a second): a connection closed with unread bytes is reset,
            // and the client would lose the answer. A larger one is answered at once.
            drain(request.into_body(), declared, limit).await;
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is {declared} bytes; the limit here is {limit}"),
            );
        }
    }
    next.run(request).await
}

/// Runs an API request in a span named by its method and route (`POST
/// /v1/components/{component}/workers/{worker}/invoke`), so that its trace holds its
/// authentication (which may ask billing) as well as its work.
async fn request_span(
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let route = matched.as_ref().map_or("", |m| m.as_str());
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {route}", request.method()),
        http.request.method = %request.method(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// Every error is a problem: what axum itself answers (405, a path that does not parse, a body
/// over its limit) becomes `application/problem+json` too, keeping its status and headers.
async fn problems(response: axum::response::Response) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    use axum::response::IntoResponse;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    if status.as_u16() < 400 || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status.as_u16() {
        400 => "invalid_request",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        _ if status.is_server_error() => "internal",
        _ => "error",
    };
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut problem = api::Problem::new(status, code, detail).into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}

/// Prometheus metrics (OpenMetrics text format).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus metrics", content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.executor.metrics().await,
    )
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The process serves HTTP", body = crate::openapi::Health)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the store answers a transaction and the blob store a request.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses(
        (status = 200, description = "The store and the blob store answer", body = crate::openapi::Readiness),
        (status = 503, description = "A part does not answer", body = crate::openapi::Readiness),
    ))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let store = state
        .store
        .read(|tx| tx.get(b"readyz").map(drop))
        .await
        .map_err(|e: invicta_store::Error| e.to_string());
    let blobs = state
        .blobs
        .list("readyz")
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    let status = if store.is_ok() && blobs.is_ok() {
        StatusCode::OK
    } else {
        tracing::warn!(?store, ?blobs, "not ready");
        StatusCode::SERVICE_UNAVAILABLE
    };
    let describe = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => e.clone(),
    };
    (
        status,
        Json(serde_json::json!({
            "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
            "store": { "backend": state.store.backend_name(), "status": describe(&store) },
            "blobs": { "backend": state.blobs.backend_name(), "status": describe(&blobs) },
        })),
    )
}
