//! Public routes: what a tenant puts behind a URL on the public listener. A route binds a host
//! (or the tenant's own prefix, `/{tenant}`), a path pattern and methods to a target — an HTTP
//! handler component, or one function of a worker — with its authentication, CORS and body
//! limit.
//!
//! Routes live in the store (`("route", tenant, name)`), a claimed host in `("route-host",
//! host)` (one tenant per host), and `("routes-generation",)` counts changes: every gateway
//! keeps the whole table in memory and reloads it when the generation moves, so a change made
//! through one gateway serves from all within [`TABLE_STALE`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use invicta_model::{ComponentName, RouteName, TenantId};
use invicta_store::{RangeOptions, Store};
use serde::{Deserialize, Serialize};

/// How long the route table is used before the store is asked whether it changed.
pub const TABLE_STALE: Duration = Duration::from_millis(500);

/// Routes one tenant may have.
pub const ROUTES_PER_TENANT_MAX: usize = 100;

/// The longest path pattern, in bytes, and the most segments it may have.
pub const PATTERN_BYTES_MAX: usize = 256;
pub const PATTERN_SEGMENTS_MAX: usize = 16;

/// A route's body limit when it names none (1 MiB), and the most it may name (16 MiB).
pub const BODY_BYTES_DEFAULT: u64 = 1024 * 1024;
pub const BODY_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// A route as the API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The host it answers for (a name the tenant claims: no other tenant may route it).
    /// Without one, the route answers on every host under the tenant's prefix,
    /// `/{tenant}{path}`.
    #[serde(default)]
    pub host: Option<String>,
    /// The path: `/`-separated segments, each literal or a parameter `{name}`; the last may be
    /// `{*name}`, the rest of the path.
    #[schema(pattern = "^/", max_length = 256)]
    pub path: String,
    /// The methods it answers (upper case); none: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    pub target: Target,
    #[serde(default)]
    pub auth: Auth,
    /// Cross-origin requests allowed from browsers; none: no CORS headers.
    #[serde(default)]
    pub cors: Option<Cors>,
    /// The largest request body accepted, in bytes (default 1 MiB, at most 16 MiB).
    #[serde(default = "body_bytes_default")]
    #[schema(maximum = 16_777_216_u64)]
    pub body_bytes_max: u64,
}

fn body_bytes_default() -> u64 {
    BODY_BYTES_DEFAULT
}

/// What a route calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// A component exporting `wasi:http/incoming-handler`. It sees the request's path below
    /// the tenant's prefix. Without `worker` it is ephemeral: a fresh instance per request,
    /// nothing recorded. With `worker` it is durable: the request is handled by that worker and
    /// recorded in its oplog, and a request sent again with the same `Idempotency-Key` is
    /// answered from the record (bodies at most 1 MiB each way).
    Handler {
        component: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<Source>,
    },
    /// A function of a worker: its parameters taken from the request, its result answered as
    /// JSON. The worker is created on first use, like any invocation.
    Function {
        component: String,
        function: String,
        worker: Source,
        /// Each parameter of the function, in order.
        #[serde(default)]
        params: Vec<Source>,
    },
}

/// Where a value comes from in the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A parameter of the path pattern.
    Path { name: String },
    /// A query parameter.
    Query { name: String },
    /// A request header.
    Header { name: String },
    /// The JSON body, or the value a JSON pointer (`/a/0/b`) names in it.
    Body {
        #[serde(default)]
        pointer: Option<String>,
    },
    /// A fixed value.
    Value {
        #[schema(value_type = Object)]
        value: serde_json::Value,
    },
}

/// Who may call a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// Anyone.
    #[default]
    Public,
    /// A key of the route's tenant with the `invoke` scope (`Authorization: Bearer …`).
    Key,
    /// A request carrying `header` with the secret. Only its SHA-256 is kept; reads show
    /// neither.
    Secret {
        header: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
}

/// The CORS policy of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed (`https://app.example`), or `*`.
    pub origins: Vec<String>,
    /// Request headers a browser may send besides the simple ones.
    #[serde(default)]
    pub headers: Vec<String>,
    /// How long a browser may keep a preflight's answer, in seconds (default 600).
    #[serde(default = "max_age_default")]
    pub max_age_s: u64,
}

fn max_age_default() -> u64 {
    600
}

/// A stored route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Route {
    pub name: String,
    #[serde(flatten)]
    pub spec: RouteSpec,
    pub created_at_ms: u64,
    /// Where the public listener serves it: `http://{host}{path}` or `/{tenant}{path}`.
    pub url_path: String,
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

/// A parsed path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub segments: Vec<Segment>,
}

fn is_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_literal(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

impl Pattern {
    /// Parses `/a/{b}/{*rest}`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.len() > PATTERN_BYTES_MAX {
            return Err(format!(
                "the path is {} bytes; the limit is {PATTERN_BYTES_MAX}",
                text.len()
            ));
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err("the path starts with `/`".into());
        };
        let mut segments = Vec::new();
        if !rest.is_empty() {
            for part in rest.split('/') {
                if segments.len() == PATTERN_SEGMENTS_MAX {
                    return Err(format!(
                        "the path has more than {PATTERN_SEGMENTS_MAX} segments"
                    ));
                }
                if matches!(segments.last(), Some(Segment::Rest(_))) {
                    return Err("`{*name}` must be the last segment".into());
                }
                let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(inner) => match inner.strip_prefix('*') {
                        Some(name) if is_param_name(name) => Segment::Rest(name.into()),
                        Some(_) => return Err(format!("`{part}`: a bad parameter name")),
                        None if is_param_name(inner) => Segment::Param(inner.into()),
                        None => return Err(format!("`{part}`: a bad parameter name")),
                    },
                    None if is_literal(part) => Segment::Literal(part.into()),
                    None => {
                        return Err(format!(
                            "`{part}`: a segment is letters, digits, `-`, `.`, `_`, `~`, or a parameter"
                        ));
                    }
                };
                if let Segment::Param(name) | Segment::Rest(name) = &segment
                    && segments
                        .iter()
                        .any(|s| matches!(s, Segment::Param(n) | Segment::Rest(n) if n == name))
                {
                    return Err(format!("the parameter `{name}` appears twice"));
                }
                segments.push(segment);
            }
        }
        Ok(Pattern { segments })
    }

    /// The parameters if `path` (its segments, still percent-encoded) matches.
    pub fn matches(&self, path: &[&str]) -> Option<Vec<(String, String)>> {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        };
        let mut params = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(literal) => {
                    if path.get(i) != Some(&literal.as_str()) {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let value = path.get(i).filter(|v| !v.is_empty())?;
                    params.push((name.clone(), decode(value)?));
                }
                Segment::Rest(name) => {
                    let rest = path.get(i..).unwrap_or_default().join("/");
                    params.push((name.clone(), decode(&rest)?));
                    return Some(params);
                }
            }
        }
        (path.len() == self.segments.len()).then_some(params)
    }

    /// Orders routes whose patterns both match: more literal segments first, then longer.
    pub fn specificity(&self) -> (usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let fixed = self
            .segments
            .iter()
            .filter(|s| !matches!(s, Segment::Rest(_)))
            .count();
        (literals, fixed)
    }

    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) | Segment::Rest(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }
}

/// A host as routes name it: lower case, no port, no trailing dot.
pub fn normal_host(host: &str) -> String {
    let host = host.trim();
    // An IPv6 literal keeps its brackets and loses its port.
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((address, _)) => format!("[{}]", address.to_ascii_lowercase()),
            None => host.to_ascii_lowercase(),
        };
    }
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Checks a route as given and puts it in its stored form (the secret replaced by its hash,
/// the host and methods normalised). The error says what is wrong.
pub fn check(mut spec: RouteSpec) -> Result<(RouteSpec, Pattern), String> {
    let pattern = Pattern::parse(&spec.path)?;
    if let Some(host) = &spec.host {
        let host = normal_host(host);
        if !valid_host(&host) {
            return Err(format!("`{host}` is not a host name"));
        }
        spec.host = Some(host);
    }
    for method in &mut spec.methods {
        *method = method.to_ascii_uppercase();
        if http_method(method).is_none() {
            return Err(format!("`{method}` is not an HTTP method"));
        }
    }
    spec.methods.sort();
    spec.methods.dedup();
    if spec.body_bytes_max > BODY_BYTES_MAX {
        return Err(format!(
            "`body_bytes_max` is {}; the limit is {BODY_BYTES_MAX}",
            spec.body_bytes_max
        ));
    }
    let known = |name: &str| pattern.params().any(|p| p == name);
    let check_source = |source: &Source| -> Result<(), String> {
        match source {
            Source::Path { name } if !known(name) => Err(format!(
                "the path has no parameter `{name}` (it has: {})",
                pattern.params().collect::<Vec<_>>().join(", ")
            )),
            Source::Header { name } if axum::http::HeaderName::try_from(name.as_str()).is_err() => {
                Err(format!("`{name}` is not a header name"))
            }
            Source::Body { pointer: Some(p) } if !p.is_empty() && !p.starts_with('/') => {
                Err(format!("`{p}` is not a JSON pointer (it starts with `/`)"))
            }
            _ => Ok(()),
        }
    };
    match &spec.target {
        Target::Handler { component, worker } => {
            ComponentName::new(component.clone()).map_err(|e| e.to_string())?;
            if let Some(worker) = worker {
                if matches!(worker, Source::Body { .. }) {
                    return Err("a durable handler's worker comes from the path, a query, a header or a value, not the body".into());
                }
                check_source(worker)?;
                let limit = invicta_executor::incoming::BODY_BYTES_MAX as u64;
                if spec.body_bytes_max > limit {
                    return Err(format!(
                        "a durable handler takes bodies of at most {limit} bytes (`body_bytes_max`)"
                    ));
                }
            }
        }
        Target::Function {
            component,
            function,
            worker,
            params,
        } => {
            ComponentName::new(component.clone()).map_err(|e| e.to_string())?;
            if function.is_empty() || function.len() > 256 {
                return Err("`function` names an exported function".into());
            }
            if matches!(worker, Source::Body { .. }) {
                return Err("the worker's name comes from the path, a query, a header or a value, not the body".into());
            }
            check_source(worker)?;
            if params.len() > 32 {
                return Err("a function route takes at most 32 parameters".into());
            }
            for param in params {
                check_source(param)?;
            }
        }
    }
    if let Auth::Secret {
        header,
        secret,
        sha256,
    } = &mut spec.auth
    {
        axum::http::HeaderName::try_from(header.as_str())
            .map_err(|_| format!("`{header}` is not a header name"))?;
        *header = header.to_ascii_lowercase();
        match secret.take() {
            Some(s) if s.len() >= 16 && s.len() <= 256 => *sha256 = Some(digest(s.as_bytes())),
            Some(_) => return Err("a route's secret is 16 to 256 bytes".into()),
            None => return Err("`secret` is the value callers send in the header".into()),
        }
    }
    if let Some(cors) = &spec.cors {
        if cors.origins.is_empty() || cors.origins.len() > 32 {
            return Err("`cors.origins` lists 1 to 32 origins, or `*`".into());
        }
        if cors.headers.len() > 32 {
            return Err("`cors.headers` lists at most 32 headers".into());
        }
        if let Some(origin) = cors.origins.iter().find(|o| o.len() > 256) {
            let start: String = origin.chars().take(32).collect();
            return Err(format!("the origin `{start}…` is longer than 256 bytes"));
        }
        for header in &cors.headers {
            axum::http::HeaderName::try_from(header.as_str())
                .map_err(|_| format!("`{header}` is not a header name"))?;
        }
    }
    Ok((spec, pattern))
}

pub fn http_method(text: &str) -> Option<axum::http::Method> {
    matches!(
        text,
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS"
    )
    .then(|| axum::http::Method::from_bytes(text.as_bytes()).ok())
    .flatten()
}

/// The hex SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn route_key(tenant: &str, name: &str) -> Vec<u8> {
    invicta_store::keys::pack(&("route", tenant, name))
}

fn tenant_prefix(tenant: &str) -> Vec<u8> {
    invicta_store::keys::pack(&("route", tenant))
}

fn all_prefix() -> Vec<u8> {
    invicta_store::keys::pack(&("route",))
}

fn host_key(host: &str) -> Vec<u8> {
    invicta_store::keys::pack(&("route-host", host))
}

fn generation_key() -> Vec<u8> {
    invicta_store::keys::pack(&("routes-generation",))
}

/// Why a change to the routes was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Invalid(String),
    #[error("the host `{0}` is routed by another tenant")]
    HostTaken(String),
    #[error("route `{0}` already exists")]
    Exists(String),
    #[error("route `{0}` not found")]
    NotFound(String),
    #[error("a tenant may have {ROUTES_PER_TENANT_MAX} routes")]
    TooMany,
    #[error("store: {0}")]
    Store(#[from] invicta_store::Error),
}

/// Where a route is served on the public listener.
pub fn url_path(tenant: &TenantId, spec: &RouteSpec) -> String {
    match &spec.host {
        Some(host) => format!("http://{host}{}", spec.path),
        None => format!("/{tenant}{}", spec.path),
    }
}

/// Stores a new route.
pub async fn create(
    store: &Store,
    tenant: &TenantId,
    name: &RouteName,
    spec: RouteSpec,
) -> Result<Route, Refused> {
    let (spec, _) = check(spec).map_err(Refused::Invalid)?;
    let route = Route {
        name: name.as_str().to_string(),
        url_path: url_path(tenant, &spec),
        spec,
        created_at_ms: now_ms(),
    };
    let bytes = serde_json::to_vec(&route).map_err(|e| Refused::Invalid(e.to_string()))?;
    let (tenant, record) = (tenant.as_str().to_string(), route.clone());
    store
        .transact(move |tx| -> Result<(), Refused> {
            if tx.get(&route_key(&tenant, &record.name))?.is_some() {
                return Err(Refused::Exists(record.name.clone()));
            }
            let count = tx
                .get_prefix(
                    &tenant_prefix(&tenant),
                    RangeOptions {
                        limit: Some(ROUTES_PER_TENANT_MAX + 1),
                        ..Default::default()
                    },
                )?
                .len();
            if count >= ROUTES_PER_TENANT_MAX {
                return Err(Refused::TooMany);
            }
            if let Some(host) = &record.spec.host {
                match tx.get(&host_key(host))? {
                    Some(owner) if owner != tenant.as_bytes() => {
                        return Err(Refused::HostTaken(host.clone()));
                    }
                    Some(_) => {}
                    None => tx.set(&host_key(host), tenant.as_bytes())?,
                }
            }
            tx.set(&route_key(&tenant, &record.name), &bytes)?;
            tx.atomic_add(&generation_key(), 1)?;
            Ok(())
        })
        .await?;
    Ok(route)
}

/// Deletes a route; its host is released when no other route of the tenant names it.
pub async fn delete(store: &Store, tenant: &TenantId, name: &RouteName) -> Result<(), Refused> {
    let (tenant, name) = (tenant.as_str().to_string(), name.as_str().to_string());
    store
        .transact(move |tx| -> Result<(), Refused> {
            let Some(bytes) = tx.get(&route_key(&tenant, &name))? else {
                return Err(Refused::NotFound(name.clone()));
            };
            tx.clear(&route_key(&tenant, &name))?;
            if let Ok(route) = serde_json::from_slice::<Route>(&bytes)
                && let Some(host) = &route.spec.host
            {
                let others = tx
                    .get_prefix(&tenant_prefix(&tenant), RangeOptions::default())?
                    .iter()
                    .filter_map(|kv| serde_json::from_slice::<Route>(&kv.value).ok())
                    .any(|r| r.name != name && r.spec.host.as_ref() == Some(host));
                if !others {
                    tx.clear(&host_key(host))?;
                }
            }
            tx.atomic_add(&generation_key(), 1)?;
            Ok(())
        })
        .await
}

/// A tenant's routes, by name.
pub async fn list(store: &Store, tenant: &TenantId) -> Result<Vec<Route>, Refused> {
    let tenant = tenant.as_str().to_string();
    Ok(store
        .read(move |tx| tx.get_prefix(&tenant_prefix(&tenant), RangeOptions::default()))
        .await?
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// One route.
pub async fn get(store: &Store, tenant: &TenantId, name: &RouteName) -> Result<Route, Refused> {
    let (tenant, name) = (tenant.as_str().to_string(), name.as_str().to_string());
    let bytes = store
        .read({
            let name = name.clone();
            move |tx| tx.get(&route_key(&tenant, &name))
        })
        .await?
        .ok_or_else(|| Refused::NotFound(name.clone()))?;
    serde_json::from_slice(&bytes).map_err(|e| Refused::Invalid(e.to_string()))
}

/// A route ready to match.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub tenant: TenantId,
    pub route: Route,
    pub pattern: Pattern,
}

/// Every tenant's routes, for the public listener: by claimed host, and by tenant for the
/// routes served under the tenant's prefix.
#[derive(Default)]
pub struct Table {
    pub by_host: HashMap<String, Vec<Arc<Compiled>>>,
    pub by_tenant: HashMap<String, Vec<Arc<Compiled>>>,
}

impl Table {
    fn build(routes: Vec<(TenantId, Route)>) -> Table {
        let mut table = Table::default();
        for (tenant, route) in routes {
            let Ok(pattern) = Pattern::parse(&route.spec.path) else {
                continue;
            };
            let compiled = Arc::new(Compiled {
                tenant: tenant.clone(),
                route,
                pattern,
            });
            let list = match &compiled.route.spec.host {
                Some(host) => table.by_host.entry(host.clone()).or_default(),
                None => table
                    .by_tenant
                    .entry(tenant.as_str().to_string())
                    .or_default(),
            };
            list.push(compiled);
        }
        for list in table
            .by_host
            .values_mut()
            .chain(table.by_tenant.values_mut())
        {
            list.sort_by(|a, b| {
                b.pattern
                    .specificity()
                    .cmp(&a.pattern.specificity())
                    .then_with(|| a.route.name.cmp(&b.route.name))
            });
        }
        table
    }
}

/// The route table, reloaded when the store's generation moves.
pub struct Tables {
    store: Store,
    state: Mutex<(Arc<Table>, u64, Option<Instant>)>,
    reload: tokio::sync::Mutex<()>,
}

impl Tables {
    pub fn new(store: Store) -> Tables {
        Tables {
            store,
            state: Mutex::new((Arc::new(Table::default()), u64::MAX, None)),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Arc<Table>, u64, Option<Instant>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the table: the next request reads the store again (after a change made here).
    pub fn invalidate(&self) {
        let mut state = self.lock();
        // Stale at once, but kept to serve from while the next request reloads.
        state.2 = state.2.and_then(|at| at.checked_sub(TABLE_STALE));
    }

    /// The current table.
    pub async fn current(&self) -> Result<Arc<Table>, invicta_store::Error> {
        {
            let state = self.lock();
            if state.2.is_some_and(|at| at.elapsed() < TABLE_STALE) {
                return Ok(state.0.clone());
            }
        }
        // One request reloads; meanwhile the others take the table as it was (they wait only
        // for the very first load).
        let _reloading = match self.reload.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                let loaded = {
                    let state = self.lock();
                    state.2.is_some().then(|| state.0.clone())
                };
                match loaded {
                    Some(table) => return Ok(table),
                    None => self.reload.lock().await,
                }
            }
        };
        {
            let state = self.lock();
            if state.2.is_some_and(|at| at.elapsed() < TABLE_STALE) {
                return Ok(state.0.clone());
            }
        }
        let known = self.lock().1;
        let generation = self
            .store
            .read(|tx| {
                Ok::<_, invicta_store::Error>(
                    tx.get(&generation_key())?
                        .map_or(0, |v| invicta_store::decode_counter(&v) as u64),
                )
            })
            .await?;
        if generation == known {
            let mut state = self.lock();
            state.2 = Some(Instant::now());
            return Ok(state.0.clone());
        }
        let pairs = self
            .store
            .read(|tx| tx.get_prefix(&all_prefix(), RangeOptions::default()))
            .await?;
        let routes = pairs
            .iter()
            .filter_map(|kv| {
                let (_, tenant, _): (String, String, String) =
                    invicta_store::keys::unpack(&kv.key).ok()?;
                let route: Route = serde_json::from_slice(&kv.value).ok()?;
                Some((TenantId::new(tenant).ok()?, route))
            })
            .collect();
        let table = Arc::new(Table::build(routes));
        *self.lock() = (table.clone(), generation, Some(Instant::now()));
        Ok(table)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segments(path: &str) -> Vec<&str> {
        path.trim_start_matches('/').split('/').collect()
    }

    #[test]
    fn patterns_match_literals_parameters_and_the_rest() {
        let p = Pattern::parse("/users/{id}/files/{*path}").expect("a pattern");
        assert_eq!(
            p.matches(&segments("/users/b%20ob/files/a/b.txt")),
            Some(vec![
                ("id".into(), "b ob".into()),
                ("path".into(), "a/b.txt".into())
            ])
        );
        assert_eq!(p.matches(&segments("/users/bob")), None);
        assert_eq!(p.matches(&segments("/people/bob/files/x")), None);
        let root = Pattern::parse("/").expect("the root");
        assert_eq!(root.matches(&[]), Some(vec![]));
        assert_eq!(root.matches(&["x"]), None);
        let one = Pattern::parse("/hello/{name}").expect("a pattern");
        assert_eq!(
            one.matches(&segments("/hello/")),
            None,
            "a parameter is not empty"
        );
        assert_eq!(one.matches(&segments("/hello/a/b")), None);
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("users", "starts with"),
            ("/a/{*rest}/b", "last segment"),
            ("/a/{x}/{x}", "twice"),
            ("/a b", "a segment is"),
            ("/{}", "bad parameter"),
            ("/a//b", "a segment is"),
        ] {
            let error = Pattern::parse(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(normal_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(normal_host("example.com."), "example.com");
        assert_eq!(normal_host("example.com.:443"), "example.com");
        assert_eq!(normal_host("[::1]:8081"), "[::1]");
        assert_eq!(normal_host("[::1]"), "[::1]");
    }

    proptest! {
        /// Any text either parses or is refused with a reason; what parses matches the path
        /// it describes with its parameters filled in.
        #[test]
        fn parsing_never_panics_and_round_trips(text in "(/([a-z]{1,3}|\\{[a-z]{1,3}\\}|\\{\\*[a-z]{1,3}\\}|[ %/{}]{0,2})){0,6}") {
            if let Ok(pattern) = Pattern::parse(&text) {
                let path: Vec<String> = pattern.segments.iter().map(|s| match s {
                    Segment::Literal(l) => l.clone(),
                    Segment::Param(n) | Segment::Rest(n) => format!("v-{n}"),
                }).collect();
                let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                let params = pattern.matches(&refs).expect("a pattern matches its own path");
                for (name, value) in params {
                    prop_assert_eq!(value, format!("v-{name}"));
                }
            }
        }

        #[test]
        fn matching_never_panics(path in proptest::collection::vec("[a-z%0-9]{0,4}", 0..8)) {
            let pattern = Pattern::parse("/a/{b}/{*c}").expect("a pattern");
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            let _ = pattern.matches(&refs);
        }
    }
}
