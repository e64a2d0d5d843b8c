//! Authentication and admission: every `/v1` request carries `Authorization: Bearer <key>`; the
//! key is verified (argon2 once, then cached by billing), the caller's plan looked up (cached),
//! and the request admitted by the tenant's and the key's rate limiters (governor, from the
//! plan). Handlers then ask the caller for the scope they need, which yields the tenant every
//! resource path is resolved in.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use invicta_billing::{Error as BillingError, Plan, Principal, Scope};
use invicta_model::TenantId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AppState;
use crate::problem::Problem;

/// The authenticated caller, put into each request's extensions.
#[derive(Clone)]
pub(crate) struct Caller {
    pub principal: Principal,
    /// The tenant's plan (`None` for the operator).
    pub plan: Option<Plan>,
}

impl Caller {
    /// The caller's tenant, if its key has `scope`.
    pub fn tenant(&self, scope: Scope) -> Result<TenantId, Problem> {
        self.principal.require(scope).map_err(Problem::from)
    }

    pub fn operator(&self) -> Result<(), Problem> {
        self.principal.require_operator().map_err(Problem::from)
    }

    pub fn plan(&self) -> Result<&Plan, Problem> {
        self.plan.as_ref().ok_or_else(|| {
            Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the operator has no plan of its own",
            )
        })
    }
}

/// Rate limiters by tenant or key id, with the (rate, burst) each was made for.
type LimiterMap = Mutex<HashMap<String, (Arc<DefaultDirectRateLimiter>, u32, u32)>>;

/// Rate limiters and concurrency gates, per tenant and per key, sized from plans; and the
/// limits on attempts to authenticate, per client address and per key id, which apply before
/// a key not verified lately costs an argon2 verification.
pub(crate) struct Limiters {
    tenants: LimiterMap,
    keys: LimiterMap,
    public: LimiterMap,
    concurrency: Mutex<HashMap<String, (Arc<Semaphore>, u32)>>,
    followers: Mutex<HashMap<String, Arc<Semaphore>>>,
    attempts_by_address: DefaultKeyedRateLimiter<std::net::IpAddr>,
    attempts_by_key: DefaultKeyedRateLimiter<String>,
    /// Webhook calls (no key: their token is the credential), per client address.
    webhooks_by_address: DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// Made once: making a clock calibrates it, which costs more than admitting a request.
    clock: DefaultClock,
}

/// Attempts to authenticate with a key not verified lately, per client address: per second,
/// and the burst. A client with a valid key pays one attempt per `key_cache_ttl_ms`.
pub const ATTEMPTS_PER_ADDRESS: (u32, u32) = (20, 40);

/// Webhook calls per client address: per second, and the burst.
pub const WEBHOOKS_PER_ADDRESS: (u32, u32) = (50, 100);

/// The same, per key id (whoever sends it).
pub const ATTEMPTS_PER_KEY_ID: (u32, u32) = (5, 10);

/// Keyed limiters forget idle keys once they hold this many.
const ATTEMPT_KEYS_RETAINED: usize = 10_000;

fn quota((rate, burst): (u32, u32)) -> Quota {
    Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

impl Default for Limiters {
    fn default() -> Limiters {
        Limiters {
            tenants: LimiterMap::default(),
            keys: LimiterMap::default(),
            public: LimiterMap::default(),
            concurrency: Mutex::default(),
            followers: Mutex::default(),
            attempts_by_address: DefaultKeyedRateLimiter::keyed(quota(ATTEMPTS_PER_ADDRESS)),
            attempts_by_key: DefaultKeyedRateLimiter::keyed(quota(ATTEMPTS_PER_KEY_ID)),
            webhooks_by_address: DefaultKeyedRateLimiter::keyed(quota(WEBHOOKS_PER_ADDRESS)),
            clock: DefaultClock::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn limiter(map: &LimiterMap, id: &str, rate: u32, burst: u32) -> Arc<DefaultDirectRateLimiter> {
    let mut map = lock(map);
    if let Some((limiter, r, b)) = map.get(id)
        && (*r, *b) == (rate, burst)
    {
        return limiter.clone();
    }
    let quota = Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
    let limiter = Arc::new(DefaultDirectRateLimiter::direct(quota));
    map.insert(id.to_string(), (limiter.clone(), rate, burst));
    limiter
}

impl Limiters {
    /// Admits a webhook call from `address`, or answers how long to wait (a problem).
    pub(crate) fn webhook(&self, address: Option<std::net::IpAddr>) -> Result<(), Problem> {
        let Some(address) = address else {
            return Ok(());
        };
        if self.webhooks_by_address.len() > ATTEMPT_KEYS_RETAINED {
            self.webhooks_by_address.retain_recent();
        }
        self.webhooks_by_address
            .check_key(&address)
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                Problem {
                    retry_after_s: Some(
                        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
                    ),
                    ..Problem::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "too many webhook calls from this address; slow down",
                    )
                }
            })
    }

    /// Admits an attempt to authenticate from `address` with the key id `key_id`, or says how
    /// long to wait.
    fn attempt(&self, address: Option<std::net::IpAddr>, key_id: &str) -> Result<(), u64> {
        if self.attempts_by_address.len() > ATTEMPT_KEYS_RETAINED {
            self.attempts_by_address.retain_recent();
        }
        if self.attempts_by_key.len() > ATTEMPT_KEYS_RETAINED {
            self.attempts_by_key.retain_recent();
        }
        let wait = |not_until: governor::NotUntil<_>| {
            let wait = not_until.wait_time_from(self.clock.now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        };
        if let Some(address) = address {
            self.attempts_by_address.check_key(&address).map_err(wait)?;
        }
        self.attempts_by_key
            .check_key(&key_id.to_string())
            .map_err(wait)
    }

    /// Admits one request of `key` in `tenant`, or says how long to wait.
    fn admit(&self, tenant: &str, key: &str, plan: &Plan) -> Result<(), u64> {
        for limiter in [
            limiter(&self.tenants, tenant, plan.requests_per_second, plan.burst),
            limiter(&self.keys, key, plan.requests_per_second, plan.burst),
        ] {
            if let Err(not_until) = limiter.check() {
                let wait = not_until.wait_time_from(self.clock.now());
                return Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
            }
        }
        Ok(())
    }

    /// A slot among the tenant's log followers (at most `max`), if one is free.
    /// Admits a request to one of the tenant's public routes by the plan's rate, counted
    /// apart from its API requests: its users' traffic cannot starve its own API calls.
    pub(crate) fn admit_public(&self, tenant: &str, plan: &Plan) -> Result<(), Problem> {
        let limiter = limiter(&self.public, tenant, plan.requests_per_second, plan.burst);
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            Problem {
                retry_after_s: Some((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)),
                ..Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "the tenant's routes take {} requests per second (burst {})",
                        plan.requests_per_second, plan.burst
                    ),
                )
            }
        })
    }

    pub fn follower_slot(&self, tenant: &str, max: u32) -> Result<OwnedSemaphorePermit, Problem> {
        let semaphore = lock(&self.followers)
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(max as usize)))
            .clone();
        semaphore
            .try_acquire_owned()
            .map_err(|_| Problem::quota("log_followers", u64::from(max), u64::from(max), Some(1)))
    }

    /// A slot among the tenant's concurrent invocations, if one is free.
    pub fn invocation_slot(
        &self,
        tenant: &str,
        plan: &Plan,
    ) -> Result<OwnedSemaphorePermit, Problem> {
        let semaphore = {
            let mut map = lock(&self.concurrency);
            match map.get(tenant) {
                Some((s, n)) if *n == plan.concurrent_invocations => s.clone(),
                _ => {
                    let s = Arc::new(Semaphore::new(plan.concurrent_invocations as usize));
                    map.insert(tenant.to_string(), (s.clone(), plan.concurrent_invocations));
                    s
                }
            }
        };
        let limit = u64::from(plan.concurrent_invocations);
        semaphore
            .try_acquire_owned()
            .map_err(|_| Problem::quota("concurrent_invocations", limit, limit, Some(1)))
    }
}

/// The middleware: authenticate, rate-limit, and hand the caller to the handler.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // Only the header crosses the await: a request body is not `Sync`.
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().map(str::to_string));
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    match admit(&state, authorization, address).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(problem) => {
            let unauthorized = problem.status == StatusCode::UNAUTHORIZED;
            let mut response = problem.into_response();
            if unauthorized {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

/// The caller a public route's `Authorization` header names, admitted as an API request is.
pub(crate) async fn caller(
    state: &AppState,
    authorization: Option<Result<String, header::ToStrError>>,
    address: Option<std::net::IpAddr>,
) -> Result<Caller, Problem> {
    admit(state, authorization, address).await
}

async fn admit(
    state: &AppState,
    authorization: Option<Result<String, header::ToStrError>>,
    address: Option<std::net::IpAddr>,
) -> Result<Caller, Problem> {
    let header = authorization
        .ok_or(BillingError::MissingKey)?
        .map_err(|_| BillingError::MalformedKey)?;
    let key = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or(BillingError::MalformedKey)?;
    // A key not verified or refused lately may cost an argon2 verification: attempts are
    // limited first, per client address and per key id, so a flood of guesses costs the
    // sender, not us.
    let principal = state
        .billing
        .authenticate_admitted(key, || {
            let key_id = key
                .strip_prefix("inv_")
                .and_then(|rest| rest.split('_').next())
                .unwrap_or_default();
            state
                .limiters
                .attempt(address, key_id)
                .map_err(|retry_after| Problem {
                    retry_after_s: Some(retry_after.max(1)),
                    ..Problem::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "too many attempts to authenticate with keys not verified lately; slow down",
                    )
                })
        })
        .await?;
    let plan = match &principal.tenant {
        Some(tenant) => {
            let plan = state.billing.plan_of(tenant).await?;
            state
                .limiters
                .admit(tenant.as_str(), &principal.key_id, &plan)
                .map_err(|retry_after| Problem {
                    retry_after_s: Some(retry_after.max(1)),
                    ..Problem::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        format!(
                            "more than {} requests per second (burst {})",
                            plan.requests_per_second, plan.burst
                        ),
                    )
                })?;
            Some(plan)
        }
        None => None,
    };
    Ok(Caller { principal, plan })
}
