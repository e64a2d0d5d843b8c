//! Billing, first half: tenants, plans (their quotas), API keys, and the operator's key.
//!
//! API keys look like `inv_<id>_<secret>`: the id (12 hex digits) is visible and tells keys
//! apart; the secret is shown once, at creation, and stored only as an argon2id hash. Argon2 is
//! slow on purpose (≈15 ms), so a verified key is cached for `key_cache_ttl_ms`, keyed by the
//! SHA-256 of the whole key; revocation takes effect at once in this process and within that
//! time in others.
//!
//! Store layout (tuple keys):
//! - `("plan", name)` → [`Plan`]
//! - `("tenant", id)` → [`Tenant`]; `("tenant-name", name)` → id
//! - `("api-key", id)` → [`KeyRecord`]; `("tenant-key", tenant, id)` → `""` (a tenant's keys)
//! - `("operator-key",)` → [`KeyRecord`] of the operator
//! - usage, laid out by `invicta_model::usage` and written by the services that do the work

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use invicta_model::TenantId;
use invicta_store::Store;
use invicta_store::keys::{pack, unpack};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod grpc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    MissingKey,
    #[error("malformed API key: keys look like inv_<id>_<secret>")]
    MalformedKey,
    #[error("INVICTA_OPERATOR_KEY must look like inv_<12 hex digits>_<64 hex digits>")]
    MalformedOperatorKey,
    #[error("unknown or revoked API key")]
    InvalidKey,
    /// Too many keys are being verified at once: try again shortly.
    #[error("too many API keys are being verified at once; try again shortly")]
    Busy,
    #[error("this API key lacks the `{0}` scope")]
    MissingScope(&'static str),
    #[error("only the operator may do this")]
    OperatorOnly,
    #[error("tenant {0} not found")]
    TenantNotFound(String),
    #[error("a tenant named {0} exists")]
    TenantExists(String),
    #[error("plan {0} not found")]
    PlanNotFound(String),
    #[error("API key {0} not found")]
    KeyNotFound(String),
    #[error("unknown scope `{0}`: scopes are admin, deploy, invoke, read")]
    UnknownScope(String),
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    #[error("invalid name: {0}")]
    InvalidName(String),
    #[error("store: {0}")]
    Store(#[from] invicta_store::Error),
    #[error("stored billing data is corrupt: {0}")]
    Corrupt(String),
    #[error("hash API key: {0}")]
    Hash(String),
    #[error("write the operator key to {path}: {source}")]
    OperatorKeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The billing role in another process refused, with its error's code.
    #[error("{message}")]
    Remote { code: String, message: String },
}

impl Error {
    /// The stable code the API reports for this error.
    pub fn code(&self) -> &str {
        match self {
            Error::MissingKey | Error::MalformedKey | Error::InvalidKey => "unauthorized",
            Error::MissingScope(_) | Error::OperatorOnly => "forbidden",
            Error::TenantNotFound(_) => "tenant_not_found",
            Error::PlanNotFound(_) => "plan_not_found",
            Error::KeyNotFound(_) => "key_not_found",
            Error::TenantExists(_) => "tenant_exists",
            Error::UnknownScope(_) | Error::InvalidPlan(_) | Error::InvalidName(_) => {
                "invalid_request"
            }
            Error::Remote { code, .. } => code,
            Error::Busy => "unavailable",
            Error::MalformedOperatorKey
            | Error::Store(_)
            | Error::Corrupt(_)
            | Error::Hash(_)
            | Error::OperatorKeyFile { .. } => "internal",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How long a verified API key is trusted without verifying it again, in milliseconds
    /// (default 10,000): the most a revoked key keeps working in another process.
    pub key_cache_ttl_ms: u64,
    /// The plan of tenants created without one (default `free`).
    pub default_plan: String,
    /// How often stored bytes are sampled into the ledger, in milliseconds (default 60,000).
    /// Each hour is accrued once, at its first sample; a shorter interval only makes that
    /// sample come sooner after the hour begins.
    pub storage_sample_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            key_cache_ttl_ms: 10_000,
            default_plan: "free".into(),
            storage_sample_interval_ms: 60_000,
        }
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Manage the tenant's API keys.
    Admin,
    /// Upload components, create and delete workers.
    Deploy,
    /// Invoke functions.
    Invoke,
    /// Read metadata, oplogs and usage.
    Read,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Admin, Scope::Deploy, Scope::Invoke, Scope::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
            Scope::Invoke => "invoke",
            Scope::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Result<Scope> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| Error::UnknownScope(s.chars().take(32).collect()))
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The caller's tenant (the operator has none of its own).
    pub tenant: Option<TenantId>,
    pub key_id: String,
    pub scopes: Vec<Scope>,
    pub operator: bool,
}

impl Principal {
    /// The caller's tenant, if its key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<TenantId> {
        match &self.tenant {
            Some(tenant) if self.scopes.contains(&scope) => Ok(tenant.clone()),
            Some(_) => Err(Error::MissingScope(scope.as_str())),
            None => Err(Error::MissingScope(scope.as_str())),
        }
    }

    pub fn require_operator(&self) -> Result<()> {
        if self.operator {
            Ok(())
        } else {
            Err(Error::OperatorOnly)
        }
    }
}

/// A plan limit that means "no limit" (`null` in JSON).
pub const NO_LIMIT: u64 = u64::MAX;

/// A plan limit in JSON: `null` for no limit, else a whole number a JSON tool reads exactly
/// (at most 2^53 - 1: larger ones become floats in JavaScript and `jq`). Plans stored before
/// (with `u64::MAX / 2` for no limit) still read as no limit.
mod no_limit {
    use serde::{Deserialize, Deserializer, Serializer};

    /// The largest integer JSON tools read exactly.
    pub(crate) const EXACT_MAX: u64 = (1 << 53) - 1;

    pub(crate) fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        if *value > EXACT_MAX {
            s.serialize_none()
        } else {
            s.serialize_u64(*value)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(match Option::<u64>::deserialize(d)? {
            None => super::NO_LIMIT,
            Some(n) if n >= u64::MAX / 2 => super::NO_LIMIT,
            Some(n) if n > EXACT_MAX => {
                return Err(serde::de::Error::custom(format!(
                    "a limit is at most {EXACT_MAX} (2^53 - 1); use null for no limit"
                )));
            }
            Some(n) => n,
        })
    }
}

/// A plan: what a tenant on it may use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    /// Fuel one invocation may consume.
    pub fuel_per_invocation: u64,
    /// Fuel the tenant's invocations may consume in a calendar month (UTC). `null`: no limit.
    #[serde(with = "no_limit")]
    #[schema(value_type = Option<u64>, minimum = 0)]
    pub fuel_per_month: u64,
    /// Linear memory one worker may have, in bytes.
    pub memory_per_worker_bytes: u64,
    /// Workers the tenant may have. `null`: no limit.
    #[serde(with = "no_limit")]
    #[schema(value_type = Option<u64>, minimum = 0)]
    pub workers_max: u64,
    /// Components (names) the tenant may have. `null`: no limit.
    #[serde(with = "no_limit")]
    #[schema(value_type = Option<u64>, minimum = 0)]
    pub components_max: u64,
    /// Bytes of all the tenant's component versions together. `null`: no limit.
    #[serde(with = "no_limit")]
    #[schema(value_type = Option<u64>, minimum = 0)]
    pub component_bytes_max: u64,
    /// Sustained requests per second, per tenant and per key.
    pub requests_per_second: u32,
    /// Requests that may come at once above the sustained rate.
    pub burst: u32,
    /// Invocations of the tenant that may run at once.
    pub concurrent_invocations: u32,
    /// What the plan costs (plans stored before prices existed cost nothing).
    #[serde(default)]
    pub prices: Prices,
    /// The hosts the tenant's workers may send HTTP requests to; absent, any public host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_hosts: Option<Vec<String>>,
    /// When a background invocation that failed runs again, unless it says otherwise; absent,
    /// never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<invicta_model::retry::RetryPolicy>,
    /// Archived oplog segments (the history before a worker's latest snapshot, in the blob
    /// store) older than this many days are deleted, but for the first (its creation); a worker
    /// then recovers only from its latest snapshot on. `null` (the default): kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_retention_days: Option<u32>,
    /// Bytes of files one worker may hold (its version's files and what it writes). `null`: no
    /// limit but the executor's. Plans stored before files existed allow 64 MiB.
    #[serde(default = "default_files_per_worker_bytes", with = "no_limit")]
    #[schema(value_type = Option<u64>, minimum = 0)]
    pub files_per_worker_bytes: u64,
}

fn default_files_per_worker_bytes() -> u64 {
    64 * 1024 * 1024
}

/// A plan's prices, as exact decimals (sent and stored as strings: no floats for money).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub currency: String,
    /// The monthly base fee.
    #[schema(value_type = String, example = "49.00")]
    pub base_monthly: Decimal,
    /// Per 1,000,000,000 fuel.
    #[schema(value_type = String, example = "0.10")]
    pub per_billion_fuel: Decimal,
    /// Per 1,000,000 invocations.
    #[schema(value_type = String, example = "2.00")]
    pub per_million_invocations: Decimal,
    /// Per GB-hour stored (10^9 bytes for one hour): components and oplogs.
    #[serde(default)]
    #[schema(value_type = String, example = "0.00014")]
    pub per_gb_hour: Decimal,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            currency: "USD".into(),
            base_monthly: Decimal::ZERO,
            per_billion_fuel: Decimal::ZERO,
            per_million_invocations: Decimal::ZERO,
            per_gb_hour: Decimal::ZERO,
        }
    }
}

impl Prices {
    fn new(
        base_monthly: i64,
        per_billion_fuel_cents: i64,
        per_million_invocations_cents: i64,
        per_gb_hour_micro: i64,
    ) -> Prices {
        Prices {
            currency: "USD".into(),
            base_monthly: Decimal::new(base_monthly, 0),
            per_billion_fuel: Decimal::new(per_billion_fuel_cents, 2),
            per_million_invocations: Decimal::new(per_million_invocations_cents, 2),
            per_gb_hour: Decimal::new(per_gb_hour_micro, 6),
        }
    }
}

/// One line of an invoice.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct InvoiceLine {
    pub item: String,
    /// How much was used, in the item's unit.
    pub quantity: u64,
    pub unit: String,
    #[schema(value_type = String)]
    pub unit_price: Decimal,
    /// quantity × unit price, rounded to cents (half away from zero).
    #[schema(value_type = String)]
    pub amount: Decimal,
}

/// A month's usage priced by the tenant's plan.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Invoice {
    pub tenant: String,
    pub month: String,
    pub plan: String,
    pub currency: String,
    pub lines: Vec<InvoiceLine>,
    #[schema(value_type = String)]
    pub total: Decimal,
}

impl Plan {
    fn validate(&self) -> Result<()> {
        invicta_model::ComponentName::new(self.name.clone())
            .map_err(|e| Error::InvalidPlan(e.to_string()))?;
        if self.requests_per_second == 0 || self.burst == 0 || self.concurrent_invocations == 0 {
            return Err(Error::InvalidPlan(
                "requests_per_second, burst and concurrent_invocations must be at least 1".into(),
            ));
        }
        let p = &self.prices;
        for (name, price) in [
            ("base_monthly", p.base_monthly),
            ("per_billion_fuel", p.per_billion_fuel),
            ("per_million_invocations", p.per_million_invocations),
            ("per_gb_hour", p.per_gb_hour),
        ] {
            if price.is_sign_negative() || price > PRICE_MAX {
                return Err(Error::InvalidPlan(format!(
                    "prices.{name} must be 0 to {PRICE_MAX}"
                )));
            }
        }
        if let Some(retry) = &self.retry {
            retry
                .check()
                .map_err(|reason| Error::InvalidPlan(format!("retry: {reason}")))?;
        }
        if self.fuel_per_invocation == 0 || self.memory_per_worker_bytes < 64 * 1024 {
            return Err(Error::InvalidPlan(
                "fuel_per_invocation must be positive and memory_per_worker_bytes at least 64 KiB"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The plans a new installation starts with.
    pub fn defaults() -> Vec<Plan> {
        const MIB: u64 = 1024 * 1024;
        vec![
            Plan {
                name: "free".into(),
                fuel_per_invocation: 1_000_000_000,
                fuel_per_month: 1_000_000_000_000,
                memory_per_worker_bytes: 64 * MIB,
                workers_max: 1_000,
                components_max: 20,
                component_bytes_max: 200 * MIB,
                requests_per_second: 100,
                burst: 200,
                concurrent_invocations: 50,
                prices: Prices::default(),
                egress_hosts: None,
                retry: None,
                archive_retention_days: None,
                files_per_worker_bytes: 16 * MIB,
            },
            Plan {
                name: "pro".into(),
                fuel_per_invocation: 10_000_000_000,
                fuel_per_month: 100_000_000_000_000,
                memory_per_worker_bytes: 256 * MIB,
                workers_max: 100_000,
                components_max: 500,
                component_bytes_max: 5 * 1024 * MIB,
                requests_per_second: 5_000,
                burst: 10_000,
                concurrent_invocations: 1_000,
                prices: Prices::new(49, 10, 200, 140),
                egress_hosts: None,
                retry: None,
                archive_retention_days: None,
                files_per_worker_bytes: 1024 * MIB,
            },
            Plan {
                name: "unlimited".into(),
                fuel_per_invocation: 100_000_000_000,
                fuel_per_month: NO_LIMIT,
                memory_per_worker_bytes: 4 * 1024 * MIB,
                workers_max: NO_LIMIT,
                components_max: NO_LIMIT,
                component_bytes_max: NO_LIMIT,
                requests_per_second: 1_000_000,
                burst: 1_000_000,
                concurrent_invocations: 100_000,
                prices: Prices::new(999, 5, 100, 100),
                egress_hosts: None,
                retry: None,
                archive_retention_days: None,
                files_per_worker_bytes: NO_LIMIT,
            },
        ]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub plan: String,
    pub created_at_ms: u64,
}

/// A stored key: never the secret, only its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    /// `None` for the operator's key.
    pub tenant: Option<String>,
    pub scopes: Vec<Scope>,
    pub description: String,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
    /// argon2id PHC string.
    pub hash: String,
}

/// What the API shows of a key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    /// The visible beginning of the key, to tell keys apart: `inv_<id>_…`.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub description: String,
    pub created_at_ms: u64,
    pub revoked: bool,
}

impl From<&KeyRecord> for KeyInfo {
    fn from(r: &KeyRecord) -> KeyInfo {
        KeyInfo {
            id: r.id.clone(),
            prefix: format!("inv_{}_", r.id),
            scopes: r.scopes.clone(),
            description: r.description.clone(),
            created_at_ms: r.created_at_ms,
            revoked: r.revoked_at_ms.is_some(),
        }
    }
}

/// The operator key's id before each operator key got a random one; a key stored with it is
/// still honoured.
const LEGACY_OPERATOR_KEY_ID: &str = "000000000000";

/// An argon2 hash of a secret nobody has, verified against when a key id is unknown.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        Argon2::default()
            .hash_password(random_hex(32).as_bytes())
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// The operator's key file in the data directory.
pub const OPERATOR_KEY_FILE: &str = "operator.key";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data structures: serializing them to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0_u8; bytes];
    rand::fill(buf.as_mut_slice());
    hex::encode(buf)
}

fn plan_key(name: &str) -> Vec<u8> {
    pack(&("plan", name))
}

fn tenant_key(id: &str) -> Vec<u8> {
    pack(&("tenant", id))
}

fn tenant_name_key(name: &str) -> Vec<u8> {
    pack(&("tenant-name", name))
}

fn api_key_key(id: &str) -> Vec<u8> {
    pack(&("api-key", id))
}

fn tenant_keys_prefix(tenant: &str) -> Vec<u8> {
    pack(&("tenant-key", tenant))
}

fn tenant_key_index(tenant: &str, id: &str) -> Vec<u8> {
    pack(&("tenant-key", tenant, id))
}

fn operator_key_key() -> Vec<u8> {
    pack(&("operator-key",))
}

pub use invicta_model::month_of;

/// The current month, as [`month_of`] gives it.
pub fn this_month() -> String {
    month_of(now_ms())
}

/// The longest id or name looked up (a plan name, a tenant id), in bytes: names are at most
/// 128 bytes, and a longer value (from a JSON body, which the gateway's path and query bounds do
/// not see) must not reach the store's key limit (10 kB) as an internal error.
pub const ID_BYTES_MAX: usize = 512;

fn bounded(what: &str, value: &str) -> Result<()> {
    if value.len() > ID_BYTES_MAX {
        return Err(Error::InvalidName(format!(
            "the {what} is {} bytes; the limit is {ID_BYTES_MAX}",
            value.len()
        )));
    }
    Ok(())
}

/// Splits `inv_<id>_<secret>`.
fn parse_key(key: &str) -> Result<(&str, &str)> {
    let rest = key.strip_prefix("inv_").ok_or(Error::MalformedKey)?;
    let (id, secret) = rest.split_once('_').ok_or(Error::MalformedKey)?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex_of(id, 12) || !hex_of(secret, 64) {
        return Err(Error::MalformedKey);
    }
    Ok((id, secret))
}

#[derive(Clone)]
pub struct Billing {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    backend: Backend,
    /// Verified keys by the SHA-256 of the whole key: (principal, verified at).
    verified: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    /// Keys refused lately, by the SHA-256 of the whole key: a wrong secret sent again costs
    /// no argon2 for [`FAILED_KEY_TTL`].
    refused: Mutex<HashMap<[u8; 32], Instant>>,
    /// Keys found valid within [`VOUCHED_KEY_TTL`], by the same hash: their holders skip the
    /// limits on attempts, so that a flood of guesses at a key's id cannot lock its holder out.
    vouched: Mutex<HashMap<[u8; 32], Instant>>,
    /// Verifications under way, by the same hash: concurrent requests with one key share one.
    verifying: Mutex<HashMap<[u8; 32], Arc<tokio::sync::OnceCell<Verdict>>>>,
    /// Argon2 verifications running at once (each takes ~19 MiB and a core for ~15 ms).
    argon2_slots: Arc<tokio::sync::Semaphore>,
    /// Plans by tenant, briefly, so that the invocation path does not read the store.
    plans: Mutex<HashMap<TenantId, (Plan, Instant)>>,
}

/// How long a tenant's plan is cached.
const PLAN_CACHE_TTL: Duration = Duration::from_secs(5);

/// How long a key found valid is let past the limits on attempts (it is still verified again
/// once its verdict's cache expires, and a revoked key fails that verification).
pub const VOUCHED_KEY_TTL: Duration = Duration::from_secs(3_600);

/// How long a refused key is refused without verifying it again.
pub const FAILED_KEY_TTL: Duration = Duration::from_secs(10);

/// Argon2 verifications that may run at once: each holds ~19 MiB and a core for ~15 ms, so a
/// flood of wrong secrets costs at most this many cores and this much memory.
pub const ARGON2_CONCURRENCY: usize = 2;

/// How long a verification may wait for a slot before the caller is told to come back (503).
pub const ARGON2_WAIT: Duration = Duration::from_secs(2);

/// Refused keys remembered at most; past it the oldest half is forgotten.
const REFUSED_KEYS_MAX: usize = 100_000;

/// What a verification concluded, shared by the requests that waited for it.
#[derive(Clone)]
enum Verdict {
    Valid(Principal),
    Invalid,
    /// Not decided (the store failed, no slot was free): each caller gets this message.
    Failed(String),
    Busy,
}

/// Entries the key cache holds before it is swept of expired ones.
const KEY_CACHE_SWEEP_AT: usize = 10_000;

/// Where billing's data is.
enum Backend {
    /// In the store, which this process reads and writes.
    Local(Store),
    /// Behind the billing role in another process.
    Remote(grpc::BillingClient),
}

/// The store, when billing's data is local; otherwise returns what the billing role answers
/// to `$call`, made on the client `$remote`.
macro_rules! local_or {
    ($self:ident, $remote:ident => $call:expr) => {
        match &$self.inner.backend {
            Backend::Local(store) => store,
            Backend::Remote($remote) => return $call.await,
        }
    };
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Billing {
    /// Opens billing on the store: seeds the default plans, and makes sure an operator key
    /// exists. Returns the operator key when it was made just now (to be shown once); it is also
    /// written to `data_dir/operator.key` (mode 0600). `preset` (`INVICTA_OPERATOR_KEY`)
    /// replaces the stored operator key.
    pub async fn start(
        config: Config,
        store: Store,
        data_dir: &Path,
        preset: Option<String>,
    ) -> Result<(Billing, Option<String>)> {
        let billing = Billing::with(config, Backend::Local(store.clone()));
        let plans = Plan::defaults();
        store
            .transact(move |tx| {
                for plan in &plans {
                    if tx.get(&plan_key(&plan.name))?.is_none() {
                        tx.set(&plan_key(&plan.name), &encode(plan))?;
                    }
                }
                Ok::<_, Error>(())
            })
            .await?;
        let fresh = billing.ensure_operator_key(data_dir, preset).await?;
        Ok((billing, fresh))
    }

    /// Billing whose data is behind the billing role at `address` (`http://host:port`): every
    /// call goes there, and verified keys and plans are cached here as they are there.
    pub fn connect(config: Config, address: &str) -> Result<Billing> {
        let client = grpc::BillingClient::new(address)?;
        Ok(Billing::with(config, Backend::Remote(client)))
    }

    fn with(config: Config, backend: Backend) -> Billing {
        Billing {
            inner: Arc::new(Inner {
                config,
                backend,
                verified: Mutex::new(HashMap::new()),
                refused: Mutex::new(HashMap::new()),
                vouched: Mutex::new(HashMap::new()),
                verifying: Mutex::new(HashMap::new()),
                argon2_slots: Arc::new(tokio::sync::Semaphore::new(ARGON2_CONCURRENCY)),
                plans: Mutex::new(HashMap::new()),
            }),
        }
    }

    async fn ensure_operator_key(
        &self,
        data_dir: &Path,
        preset: Option<String>,
    ) -> Result<Option<String>> {
        let store = local_or!(self, _remote => std::future::ready(Ok(None)));
        let existing = store.read(|tx| tx.get(&operator_key_key())).await?;
        let (secret, made) = match (preset, existing) {
            (Some(preset), _) => {
                if parse_key(&preset).is_err() {
                    return Err(Error::MalformedOperatorKey);
                }
                (preset, false)
            }
            (None, Some(_)) => return Ok(None),
            // A random id, like any key's: nothing about it can be guessed.
            (None, None) => (format!("inv_{}_{}", random_hex(6), random_hex(32)), true),
        };
        let id = parse_key(&secret)
            .map(|(id, _)| id.to_string())
            .map_err(|_| Error::MalformedOperatorKey)?;
        let hash = hash_secret(&secret).await?;
        let record = KeyRecord {
            id: id.clone(),
            tenant: None,
            scopes: Scope::ALL.to_vec(),
            description: "operator".into(),
            created_at_ms: now_ms(),
            revoked_at_ms: None,
            hash,
        };
        // Found by its id like any key; `operator-key` says which record is the operator's.
        store
            .transact(move |tx| {
                // A replaced operator key stops working with it.
                if let Some(previous) = tx.get(&operator_key_key())?
                    && let Ok(previous) = serde_json::from_slice::<KeyRecord>(&previous)
                    && previous.id != id
                {
                    tx.clear(&api_key_key(&previous.id))?;
                }
                let encoded = encode(&record);
                tx.set(&operator_key_key(), &encoded)?;
                tx.set(&api_key_key(&id), &encoded)
            })
            .await?;
        if made {
            let path = data_dir.join(OPERATOR_KEY_FILE);
            write_private(&path, &secret).map_err(|source| Error::OperatorKeyFile {
                path: path.display().to_string(),
                source,
            })?;
            return Ok(Some(secret));
        }
        Ok(None)
    }

    /// Who holds `bearer`: verified by argon2 the first time, then from the cache.
    ///
    /// An attacker pays more than we do: a key refused lately is refused again from memory
    /// ([`FAILED_KEY_TTL`]); concurrent requests with one key share one verification; at most
    /// [`ARGON2_CONCURRENCY`] verifications run at once, and one that waits longer than
    /// [`ARGON2_WAIT`] for a slot is `Busy` (503); an unknown key id costs an argon2
    /// verification like a wrong secret, so the answer's time does not tell which ids exist.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal> {
        self.authenticate_admitted(bearer, || Ok::<(), Error>(()))
            .await
    }

    /// [`Billing::authenticate`], asking `admit` first whenever answering may cost an argon2
    /// verification: not for a key verified or refused lately, nor for one found valid within
    /// [`VOUCHED_KEY_TTL`] (its holder is not limited with the guessers of its id). The caller's
    /// limits on attempts go there, and its refusal is returned as it is.
    pub async fn authenticate_admitted<E: From<Error>>(
        &self,
        bearer: &str,
        admit: impl FnOnce() -> std::result::Result<(), E>,
    ) -> std::result::Result<Principal, E> {
        let (id, _) = parse_key(bearer)?;
        let digest: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        if let Some(principal) = self.cached(&digest) {
            return Ok(principal);
        }
        if lock(&self.inner.refused)
            .get(&digest)
            .is_some_and(|at| at.elapsed() < FAILED_KEY_TTL)
        {
            return Err(Error::InvalidKey.into());
        }
        let vouched = lock(&self.inner.vouched)
            .get(&digest)
            .is_some_and(|at| at.elapsed() < VOUCHED_KEY_TTL);
        if !vouched {
            admit()?;
        }
        Ok(self.verify_shared(id, bearer, digest).await?)
    }

    /// One verification of `bearer` for every request that asks for it meanwhile.
    async fn verify_shared(&self, id: &str, bearer: &str, digest: [u8; 32]) -> Result<Principal> {
        let cell = lock(&self.inner.verifying)
            .entry(digest)
            .or_insert_with(|| Arc::new(tokio::sync::OnceCell::new()))
            .clone();
        let verdict = cell
            .get_or_init(|| async {
                let verdict = self.verify_now(id, bearer).await;
                self.remember(&digest, &verdict);
                verdict
            })
            .await
            .clone();
        {
            let mut verifying = lock(&self.inner.verifying);
            if verifying
                .get(&digest)
                .is_some_and(|c| Arc::ptr_eq(c, &cell))
            {
                verifying.remove(&digest);
            }
        }
        match verdict {
            Verdict::Valid(principal) => Ok(principal),
            Verdict::Invalid => Err(Error::InvalidKey),
            Verdict::Busy => Err(Error::Busy),
            Verdict::Failed(message) => Err(Error::Hash(message)),
        }
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Principal> {
        let ttl = Duration::from_millis(self.inner.config.key_cache_ttl_ms);
        match lock(&self.inner.verified).get(digest) {
            Some((principal, at)) if at.elapsed() < ttl => Some(principal.clone()),
            _ => None,
        }
    }

    async fn verify_now(&self, id: &str, bearer: &str) -> Verdict {
        let verified = match &self.inner.backend {
            Backend::Local(store) => {
                let Ok(slot) = tokio::time::timeout(
                    ARGON2_WAIT,
                    self.inner.argon2_slots.clone().acquire_owned(),
                )
                .await
                else {
                    return Verdict::Busy;
                };
                let verified = verify(store, id, bearer).await;
                drop(slot);
                verified
            }
            Backend::Remote(remote) => remote.authenticate(bearer).await,
        };
        match verified {
            Ok(principal) => Verdict::Valid(principal),
            Err(Error::InvalidKey | Error::MalformedKey) => Verdict::Invalid,
            Err(Error::Busy) => Verdict::Busy,
            Err(Error::Remote { code, .. }) if code == "unauthorized" => Verdict::Invalid,
            Err(Error::Remote { code, .. }) if code == "unavailable" => Verdict::Busy,
            Err(e) => Verdict::Failed(e.to_string()),
        }
    }

    fn remember(&self, digest: &[u8; 32], verdict: &Verdict) {
        match verdict {
            Verdict::Valid(principal) => {
                let ttl = Duration::from_millis(self.inner.config.key_cache_ttl_ms);
                let mut cache = lock(&self.inner.verified);
                if cache.len() >= KEY_CACHE_SWEEP_AT {
                    cache.retain(|_, (_, at)| at.elapsed() < ttl);
                }
                cache.insert(*digest, (principal.clone(), Instant::now()));
                let mut vouched = lock(&self.inner.vouched);
                if vouched.len() >= KEY_CACHE_SWEEP_AT {
                    vouched.retain(|_, at| at.elapsed() < VOUCHED_KEY_TTL);
                }
                vouched.insert(*digest, Instant::now());
            }
            Verdict::Invalid => {
                lock(&self.inner.vouched).remove(digest);
                let mut refused = lock(&self.inner.refused);
                if refused.len() >= REFUSED_KEYS_MAX {
                    refused.retain(|_, at| at.elapsed() < FAILED_KEY_TTL);
                    if refused.len() >= REFUSED_KEYS_MAX {
                        refused.clear();
                    }
                }
                refused.insert(*digest, Instant::now());
            }
            Verdict::Failed(_) | Verdict::Busy => {}
        }
    }

    // ---- plans ----

    pub async fn plans(&self) -> Result<Vec<Plan>> {
        let store = local_or!(self, remote => remote.plans());
        let prefix = pack(&("plan",));
        let rows = store
            .read(move |tx| tx.get_prefix(&prefix, Default::default()))
            .await?;
        rows.iter().map(|kv| decode("plan", &kv.value)).collect()
    }

    pub async fn plan(&self, name: &str) -> Result<Plan> {
        bounded("plan name", name)?;
        let store = local_or!(self, remote => remote.plan(name));
        let key = plan_key(name);
        let bytes = store.read(move |tx| tx.get(&key)).await?;
        match bytes {
            Some(b) => decode("plan", &b),
            None => Err(Error::PlanNotFound(name.chars().take(128).collect())),
        }
    }

    /// Creates or replaces a plan. Tenants on it get the new limits within a few seconds.
    pub async fn put_plan(&self, plan: Plan) -> Result<Plan> {
        plan.validate()?;
        let plan = match &self.inner.backend {
            Backend::Remote(remote) => remote.put_plan(plan).await?,
            Backend::Local(store) => {
                let stored = plan.clone();
                store
                    .transact(move |tx| tx.set(&plan_key(&stored.name), &encode(&stored)))
                    .await?;
                plan
            }
        };
        lock(&self.inner.plans).clear();
        Ok(plan)
    }

    /// The plan of `tenant`, cached for a few seconds.
    pub async fn plan_of(&self, tenant: &TenantId) -> Result<Plan> {
        if let Some((plan, at)) = lock(&self.inner.plans).get(tenant)
            && at.elapsed() < PLAN_CACHE_TTL
        {
            return Ok(plan.clone());
        }
        let plan = match &self.inner.backend {
            Backend::Remote(remote) => remote.plan_of(tenant).await?,
            Backend::Local(_) => {
                let tenant_record = self.tenant(tenant.as_str()).await?;
                self.plan(&tenant_record.plan).await?
            }
        };
        lock(&self.inner.plans).insert(tenant.clone(), (plan.clone(), Instant::now()));
        Ok(plan)
    }

    // ---- tenants ----

    pub async fn create_tenant(&self, name: &str, plan: Option<&str>) -> Result<Tenant> {
        let store = local_or!(self, remote => remote.create_tenant(name, plan));
        invicta_model::ComponentName::new(name.to_string())
            .map_err(|e| Error::InvalidName(e.to_string()))?;
        let plan = plan.unwrap_or(&self.inner.config.default_plan).to_string();
        self.plan(&plan).await?;
        let tenant = Tenant {
            id: format!("t{}", random_hex(6)),
            name: name.to_string(),
            plan,
            created_at_ms: now_ms(),
        };
        let stored = tenant.clone();
        store
            .transact(move |tx| {
                if tx.get(&tenant_name_key(&stored.name))?.is_some() {
                    return Err(Error::TenantExists(stored.name.clone()));
                }
                tx.set(&tenant_name_key(&stored.name), stored.id.as_bytes())?;
                tx.set(&tenant_key(&stored.id), &encode(&stored))?;
                Ok(())
            })
            .await?;
        tracing::info!(tenant = %tenant.id, name = %tenant.name, plan = %tenant.plan, "tenant created");
        Ok(tenant)
    }

    pub async fn tenant(&self, id: &str) -> Result<Tenant> {
        bounded("tenant id", id)?;
        let store = local_or!(self, remote => remote.tenant(id));
        let key = tenant_key(id);
        let bytes = store.read(move |tx| tx.get(&key)).await?;
        match bytes {
            Some(b) => decode("tenant", &b),
            None => Err(Error::TenantNotFound(id.chars().take(128).collect())),
        }
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        let store = local_or!(self, remote => remote.tenants());
        let prefix = pack(&("tenant",));
        let rows = store
            .read(move |tx| tx.get_prefix(&prefix, Default::default()))
            .await?;
        rows.iter().map(|kv| decode("tenant", &kv.value)).collect()
    }

    pub async fn set_plan(&self, tenant: &str, plan: &str) -> Result<Tenant> {
        let store = match &self.inner.backend {
            Backend::Local(store) => store,
            Backend::Remote(remote) => {
                let updated = remote.set_plan(tenant, plan).await?;
                lock(&self.inner.plans).clear();
                return Ok(updated);
            }
        };
        self.plan(plan).await?;
        let (id, plan_name) = (tenant.to_string(), plan.to_string());
        let updated = store
            .transact(move |tx| {
                let mut t: Tenant = match tx.get(&tenant_key(&id))? {
                    Some(b) => decode("tenant", &b)?,
                    None => return Err(Error::TenantNotFound(id.clone())),
                };
                t.plan = plan_name.clone();
                tx.set(&tenant_key(&id), &encode(&t))?;
                Ok(t)
            })
            .await?;
        lock(&self.inner.plans).clear();
        Ok(updated)
    }

    // ---- keys ----

    /// Makes a key for `tenant`; returns what the API shows of it and the secret, once.
    pub async fn create_key(
        &self,
        tenant: &str,
        scopes: Vec<Scope>,
        description: String,
    ) -> Result<(KeyInfo, String)> {
        let store = local_or!(self, remote => remote.create_key(tenant, &scopes, &description));
        self.tenant(tenant).await?;
        let id = random_hex(6);
        let secret = format!("inv_{id}_{}", random_hex(32));
        let mut scopes = scopes;
        scopes.sort_by_key(|s| s.as_str());
        scopes.dedup();
        let record = KeyRecord {
            id: id.clone(),
            tenant: Some(tenant.to_string()),
            scopes,
            description: description.chars().take(200).collect(),
            created_at_ms: now_ms(),
            revoked_at_ms: None,
            hash: hash_secret(&secret).await?,
        };
        let stored = record.clone();
        store
            .transact(move |tx| {
                tx.set(&api_key_key(&stored.id), &encode(&stored))?;
                let tenant = stored.tenant.as_deref().unwrap_or_default();
                tx.set(&tenant_key_index(tenant, &stored.id), b"")
            })
            .await?;
        Ok((KeyInfo::from(&record), secret))
    }

    pub async fn keys(&self, tenant: &str) -> Result<Vec<KeyInfo>> {
        let store = local_or!(self, remote => remote.keys(tenant));
        let prefix = tenant_keys_prefix(tenant);
        let records = store
            .read(move |tx| {
                let rows = tx.get_prefix(&prefix, Default::default())?;
                let mut out = Vec::new();
                for row in rows {
                    let (_, _, id): (String, String, String) = unpack(&row.key)
                        .map_err(|e| Error::Corrupt(format!("key index: {e:?}")))?;
                    if let Some(bytes) = tx.get(&api_key_key(&id))? {
                        out.push(decode::<KeyRecord>("api key", &bytes)?);
                    }
                }
                Ok::<_, Error>(out)
            })
            .await?;
        Ok(records.iter().map(KeyInfo::from).collect())
    }

    /// Revokes a key of `tenant`: at once here, within the key cache's lifetime elsewhere.
    pub async fn revoke_key(&self, tenant: &str, id: &str) -> Result<KeyInfo> {
        let store = match &self.inner.backend {
            Backend::Local(store) => store,
            Backend::Remote(remote) => {
                let info = remote.revoke_key(tenant, id).await?;
                lock(&self.inner.verified).retain(|_, (p, _)| p.key_id != info.id);
                return Ok(info);
            }
        };
        let (tenant_c, id_c) = (tenant.to_string(), id.to_string());
        let record = store
            .transact(move |tx| {
                let mut record: KeyRecord = match tx.get(&api_key_key(&id_c))? {
                    Some(b) => decode("api key", &b)?,
                    None => return Err(Error::KeyNotFound(id_c.clone())),
                };
                // Another tenant's key is as good as missing.
                if record.tenant.as_deref() != Some(tenant_c.as_str()) {
                    return Err(Error::KeyNotFound(id_c.clone()));
                }
                if record.revoked_at_ms.is_none() {
                    record.revoked_at_ms = Some(now_ms());
                    tx.set(&api_key_key(&id_c), &encode(&record))?;
                }
                Ok(record)
            })
            .await?;
        lock(&self.inner.verified).retain(|_, (p, _)| p.key_id != record.id);
        Ok(KeyInfo::from(&record))
    }

    // ---- usage ----

    /// A per-tenant count of what it has (`workers`, `components`, `component_bytes`).
    pub async fn count(&self, tenant: &str, kind: &str) -> Result<u64> {
        let store = local_or!(self, remote => remote.count(tenant, kind));
        let key = invicta_model::usage::count_key(tenant, kind);
        let n = store.read(move |tx| tx.get_i64(&key)).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// A usage counter's value.
    pub async fn usage(&self, tenant: &str, kind: &str, period: &str) -> Result<u64> {
        let store = local_or!(self, remote => remote.usage(tenant, kind, period));
        let key = invicta_model::usage::month_key(tenant, kind, period);
        let n = store.read(move |tx| tx.get_i64(&key)).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Verifies `bearer` (whose id is `id`) against its stored hash.
async fn verify(store: &Store, id: &str, bearer: &str) -> Result<Principal> {
    let (key, legacy_operator) = (api_key_key(id), id == LEGACY_OPERATOR_KEY_ID);
    let record = store
        .read(move |tx| match tx.get(&key)? {
            Some(record) => Ok(Some(record)),
            // The operator's key from before it had an id of its own.
            None if legacy_operator => tx.get(&operator_key_key()),
            None => Ok(None),
        })
        .await?;
    let record: Option<KeyRecord> = record.map(|r| decode("api key", &r)).transpose()?;
    // An unknown or revoked id costs an argon2 verification like a wrong secret: the time of
    // the answer does not tell an attacker which ids exist.
    let hash = match &record {
        Some(r) if r.revoked_at_ms.is_none() => r.hash.clone(),
        _ => dummy_hash().to_string(),
    };
    let secret = bearer.to_string();
    let ok = on_argon2_thread(move || {
        Argon2::default()
            .verify_password(secret.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await?;
    let record = match record {
        Some(r) if ok && r.revoked_at_ms.is_none() => r,
        _ => return Err(Error::InvalidKey),
    };
    let principal = Principal {
        tenant: match &record.tenant {
            Some(t) => Some(TenantId::new(t.clone()).map_err(|e| Error::Corrupt(e.to_string()))?),
            None => None,
        },
        key_id: record.id.clone(),
        scopes: record.scopes.clone(),
        operator: record.tenant.is_none(),
    };
    Ok(principal)
}

async fn hash_secret(secret: &str) -> Result<String> {
    let secret = secret.to_string();
    on_argon2_thread(move || {
        Argon2::default()
            .hash_password(secret.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| Error::Hash(e.to_string()))
    })
    .await?
}

type Argon2Job = Box<dyn FnOnce() + Send>;

/// Runs `work` (an argon2 hash or verification) on one of [`ARGON2_CONCURRENCY`] long-lived
/// threads kept for it. Each verification takes ~19 MiB: on a few threads of its own that
/// memory is reused, where the blocking pool's many threads would each keep some (the
/// allocator keeps an arena per thread), and the process would grow with every new thread.
async fn on_argon2_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    static JOBS: std::sync::OnceLock<std::sync::mpsc::Sender<Argon2Job>> =
        std::sync::OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Argon2Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..ARGON2_CONCURRENCY {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    loop {
                        let job = match lock(&rx).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        job();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "start an argon2 thread");
            }
        }
        tx
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    jobs.send(Box::new(move || {
        let _ = tx.send(work());
    }))
    .map_err(|_| Error::Hash("the argon2 threads are gone".into()))?;
    rx.await
        .map_err(|_| Error::Hash("an argon2 thread stopped".into()))
}

/// Writes `secret` to `path`, readable by its owner only.
fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod authentication {
    //! What a flood of wrong secrets costs: one argon2 verification per distinct key and
    //! [`FAILED_KEY_TTL`], shared by concurrent requests; an unknown id costs as a wrong secret.

    use super::*;

    async fn billing() -> anyhow::Result<(Billing, String, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&invicta_store::Config::embedded_in(dir.path()))?;
        let (billing, operator) =
            Billing::start(Config::default(), store, dir.path(), None).await?;
        let operator = operator.ok_or_else(|| anyhow::anyhow!("an operator key is made"))?;
        Ok((billing, operator, dir))
    }

    /// Takes every argon2 slot, as a flood of verifications would.
    async fn every_slot(billing: &Billing) -> anyhow::Result<tokio::sync::OwnedSemaphorePermit> {
        Ok(billing
            .inner
            .argon2_slots
            .clone()
            .acquire_many_owned(ARGON2_CONCURRENCY as u32)
            .await?)
    }

    #[tokio::test]
    async fn the_operator_key_id_is_random_and_works() -> anyhow::Result<()> {
        let (billing, operator, _dir) = billing().await?;
        let (id, _) = parse_key(&operator)?;
        assert_ne!(id, LEGACY_OPERATOR_KEY_ID);
        let principal = billing.authenticate(&operator).await?;
        assert!(principal.operator);
        Ok(())
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_from_memory_and_verified_once() -> anyhow::Result<()> {
        let (billing, operator, _dir) = billing().await?;
        let (id, _) = parse_key(&operator)?;
        let wrong = format!("inv_{id}_{}", "0".repeat(64));
        // Many at once: one verification decides for all of them.
        let attempts: Vec<_> = (0..16)
            .map(|_| {
                let (billing, wrong) = (billing.clone(), wrong.clone());
                tokio::spawn(async move { billing.authenticate(&wrong).await })
            })
            .collect();
        for attempt in attempts {
            assert!(matches!(attempt.await?, Err(Error::InvalidKey)));
        }
        // Refused from memory now, fast, even with every argon2 slot taken.
        let _slots = every_slot(&billing).await?;
        let started = Instant::now();
        assert!(matches!(
            billing.authenticate(&wrong).await,
            Err(Error::InvalidKey)
        ));
        assert!(started.elapsed() < ARGON2_WAIT, "{:?}", started.elapsed());
        // Another wrong secret needs a slot, and none is free: busy, not a hang.
        let other = format!("inv_{id}_{}", "1".repeat(64));
        assert!(matches!(
            billing.authenticate(&other).await,
            Err(Error::Busy)
        ));
        Ok(())
    }

    #[tokio::test]
    async fn an_unknown_id_costs_a_verification_too() -> anyhow::Result<()> {
        let (billing, _operator, _dir) = billing().await?;
        // With every slot taken, an unknown id waits for one like a wrong secret would.
        let _slots = every_slot(&billing).await?;
        let unknown = format!("inv_{}_{}", "abcdef012345", "2".repeat(64));
        assert!(matches!(
            billing.authenticate(&unknown).await,
            Err(Error::Busy)
        ));
        Ok(())
    }
}

#[cfg(test)]
mod parsers {
    //! The report bounds and months a caller sends: parsed or refused, never a panic.

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_text_is_an_hour_or_none(text in ".{0,40}") {
            let _ = super::parse_hour(&text);
        }

        #[test]
        fn any_number_shaped_date_is_an_hour_or_none(year in any::<i64>(), month in any::<u32>(), day in any::<u32>(), hour in 0_u32..30) {
            let _ = super::parse_hour(&format!("{year}-{month}-{day}T{hour:02}"));
            let _ = super::parse_hour(&format!("{year}-{month}-{day}"));
        }

        #[test]
        fn any_month_is_hours_or_none(year in any::<i64>(), month in any::<u32>()) {
            if let Some((first, next)) = super::month_hours(&format!("{year}-{month}")) {
                prop_assert!(first < next);
            }
        }

        #[test]
        fn valid_dates_parse_to_their_hour(days in 0_u64..2_900_000, hour in 0_u64..24) {
            let (y, m, d) = invicta_model::usage::civil_from_days(days as i64);
            let text = format!("{y:04}-{m:02}-{d:02}T{hour:02}");
            prop_assert_eq!(super::parse_hour(&text), Some(days * 24 + hour));
        }
    }

    #[test]
    fn prices_are_bounded_so_invoices_cannot_overflow() {
        use rust_decimal::Decimal;
        let mut plan = super::Plan::defaults().remove(0);
        plan.prices.per_billion_fuel = Decimal::MAX;
        assert!(plan.validate().is_err());
        plan.prices.per_billion_fuel = Decimal::NEGATIVE_ONE;
        assert!(plan.validate().is_err());
        plan.prices.per_billion_fuel = super::PRICE_MAX;
        assert!(plan.validate().is_ok());
        // The largest quantity at the largest price is a line, not a panic.
        assert!(super::priced("fuel", u64::MAX, "fuel", 1, super::PRICE_MAX).is_ok());
        // An over-large price stored before prices were bounded is an error, not a panic.
        assert!(super::priced("fuel", u64::MAX, "fuel", 1, Decimal::MAX).is_err());
    }

    #[test]
    fn the_reported_overflows_are_refused() {
        assert_eq!(super::parse_hour("5000000000000000-01-01"), None);
        assert_eq!(super::month_hours("9223372036854775807-12"), None);
        assert_eq!(
            super::month_hours("9999-12").map(|(a, b)| b > a),
            Some(true)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_is_null_in_json() {
        let unlimited = Plan::defaults()
            .into_iter()
            .find(|p| p.name == "unlimited")
            .expect("the unlimited plan");
        let json = serde_json::to_value(&unlimited).expect("a plan as JSON");
        for field in [
            "fuel_per_month",
            "workers_max",
            "components_max",
            "component_bytes_max",
        ] {
            assert_eq!(json[field], serde_json::Value::Null, "{field}");
        }
        let back: Plan = serde_json::from_value(json.clone()).expect("read back");
        assert_eq!(back, unlimited);
        // Plans stored before (no limit as u64::MAX / 2) read as no limit.
        let mut old = json.clone();
        old["workers_max"] = serde_json::json!(u64::MAX / 2);
        let old: Plan = serde_json::from_value(old).expect("an old plan");
        assert_eq!(old.workers_max, NO_LIMIT);
        // A number JSON tools cannot read exactly is refused, naming the way to say "none".
        let mut big = json;
        big["workers_max"] = serde_json::json!(1_u64 << 60);
        let refused = serde_json::from_value::<Plan>(big).expect_err("refused");
        assert!(refused.to_string().contains("null"), "{refused}");
    }

    #[test]
    fn keys_parse_strictly() {
        let good = format!("inv_{}_{}", "a".repeat(12), "b".repeat(64));
        assert!(parse_key(&good).is_ok());
        for bad in [
            "",
            "inv_",
            "inv_abc_def",
            &good[1..],
            &format!("{good}x"),
            &good.replace('b', "z"),
        ] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }
}

/// How a usage report groups the ledger's hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Hour,
    Day,
    Month,
}

/// One period and component of a usage report: the ledger's figures, summed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    /// `YYYY-MM-DDTHH:00Z`, `YYYY-MM-DD` or `YYYY-MM`.
    pub period: String,
    pub component: String,
    pub invocations: u64,
    pub fuel: u64,
    pub wall_us: u64,
    pub memory_kib_ms: u64,
    pub oplog_bytes: u64,
    /// Bytes stored (the component's versions and its workers' oplogs) × hours.
    pub storage_byte_hours: u64,
    /// Outgoing HTTP requests its workers sent, and the bytes of their responses.
    pub http_requests: u64,
    pub http_request_bytes: u64,
    pub http_response_bytes: u64,
}

/// The most ledger rows one report reads (hours × components × kinds).
pub const REPORT_ROWS_MAX: usize = 1_000_000;

/// The label of the period `hour` falls in.
fn period_of(hour: u64, granularity: Granularity) -> String {
    let days = i64::try_from(hour / 24).unwrap_or(0);
    let (y, m, d) = invicta_model::usage::civil_from_days(days);
    match granularity {
        Granularity::Hour => format!("{y:04}-{m:02}-{d:02}T{:02}:00Z", hour % 24),
        Granularity::Day => format!("{y:04}-{m:02}-{d:02}"),
        Granularity::Month => format!("{y:04}-{m:02}"),
    }
}

/// Parses a report bound: `YYYY-MM-DD`, `YYYY-MM-DDTHH` (UTC), or seconds since the epoch.
/// Returns the hour since the epoch.
pub fn parse_hour(text: &str) -> Option<u64> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(seconds / 3_600);
    }
    let (date, hour) = match text.split_once('T') {
        Some((date, hour)) => (
            date,
            hour.trim_end_matches('Z').get(..2)?.parse::<u64>().ok()?,
        ),
        None => (text, 0),
    };
    if hour > 23 {
        return None;
    }
    let mut parts = date.splitn(3, '-');
    let year = parts.next()?.parse::<i64>().ok()?;
    let month = parts.next()?.parse::<u32>().ok()?;
    let day = parts.next()?.parse::<u32>().ok()?;
    let days = invicta_model::usage::days_from_civil(year, month, day)?;
    u64::try_from(days).ok()?.checked_mul(24)?.checked_add(hour)
}

impl Billing {
    /// The tenant's ledger from hour `from` (included) to hour `to` (excluded), summed per
    /// period and component, in period order.
    pub async fn report(
        &self,
        tenant: &str,
        from: u64,
        to: u64,
        granularity: Granularity,
    ) -> Result<Vec<UsageRow>> {
        use invicta_model::usage;
        let store = local_or!(self, remote => remote.report(tenant, from, to, granularity));
        let (begin, end) = (
            usage::ledger_from(tenant, from),
            usage::ledger_from(tenant, to.max(from)),
        );
        let rows = store
            .read(move |tx| {
                tx.get_range(
                    &begin,
                    &end,
                    invicta_store::RangeOptions::limit(REPORT_ROWS_MAX),
                )
            })
            .await?;
        let mut out: Vec<UsageRow> = Vec::new();
        let mut index: HashMap<(String, String), usize> = HashMap::new();
        for row in rows {
            let (_, _, hour, component, kind): (String, String, u64, String, String) =
                unpack(&row.key).map_err(|e| Error::Corrupt(format!("ledger key: {e:?}")))?;
            let value = u64::try_from(invicta_store::decode_counter(&row.value)).unwrap_or(0);
            let period = period_of(hour, granularity);
            let slot = *index
                .entry((period.clone(), component.clone()))
                .or_insert_with(|| {
                    out.push(UsageRow {
                        period,
                        component,
                        invocations: 0,
                        fuel: 0,
                        wall_us: 0,
                        memory_kib_ms: 0,
                        oplog_bytes: 0,
                        storage_byte_hours: 0,
                        http_requests: 0,
                        http_request_bytes: 0,
                        http_response_bytes: 0,
                    });
                    out.len() - 1
                });
            let row = &mut out[slot];
            let field = match kind.as_str() {
                usage::INVOCATIONS => &mut row.invocations,
                usage::FUEL => &mut row.fuel,
                usage::WALL_US => &mut row.wall_us,
                usage::MEMORY_KIB_MS => &mut row.memory_kib_ms,
                usage::OPLOG_BYTES => &mut row.oplog_bytes,
                usage::STORAGE_BYTE_HOURS => &mut row.storage_byte_hours,
                usage::HTTP_REQUESTS => &mut row.http_requests,
                usage::HTTP_REQUEST_BYTES => &mut row.http_request_bytes,
                usage::HTTP_RESPONSE_BYTES => &mut row.http_response_bytes,
                _ => continue,
            };
            *field = field.saturating_add(value);
        }
        out.sort_by(|a, b| (&a.period, &a.component).cmp(&(&b.period, &b.component)));
        Ok(out)
    }
}

/// The hours of a month `YYYY-MM`: [first hour, first hour of the next month).
pub fn month_hours(month: &str) -> Option<(u64, u64)> {
    let (year, month) = month.split_once('-')?;
    let (year, month) = (year.parse::<i64>().ok()?, month.parse::<u32>().ok()?);
    let first = invicta_model::usage::days_from_civil(year, month, 1)?;
    let next = if month == 12 {
        invicta_model::usage::days_from_civil(year + 1, 1, 1)?
    } else {
        invicta_model::usage::days_from_civil(year, month + 1, 1)?
    };
    Some((
        u64::try_from(first).ok()?.checked_mul(24)?,
        u64::try_from(next).ok()?.checked_mul(24)?,
    ))
}

/// The highest price a plan may set per unit: with any `u64` quantity, every line and the
/// total of an invoice stay within what a `Decimal` holds (about 7.9 × 10^28).
pub const PRICE_MAX: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

fn priced(item: &str, quantity: u64, unit: &str, per: u64, price: Decimal) -> Result<InvoiceLine> {
    let amount = Decimal::from(quantity)
        .checked_mul(price)
        .and_then(|a| a.checked_div(Decimal::from(per.max(1))))
        .ok_or_else(|| {
            Error::InvalidPlan(format!(
                "the price of {item} is too large to charge {quantity}"
            ))
        })?
        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    Ok(InvoiceLine {
        item: item.into(),
        quantity,
        unit: unit.into(),
        unit_price: price,
        amount,
    })
}

impl Billing {
    /// Prices a month of the tenant's ledger by its current plan. A closed month's invoice is
    /// the same every time: the ledger of past hours no longer changes.
    pub async fn invoice(&self, tenant: &str, month: &str) -> Result<Invoice> {
        if let Backend::Remote(remote) = &self.inner.backend {
            return remote.invoice(tenant, month).await;
        }
        let (from, to) = month_hours(month)
            .ok_or_else(|| Error::InvalidName(format!("`{month}` is not a month (YYYY-MM)")))?;
        let record = self.tenant(tenant).await?;
        let plan = self.plan(&record.plan).await?;
        let rows = self.report(tenant, from, to, Granularity::Month).await?;
        let fuel = rows.iter().map(|r| r.fuel).fold(0_u64, u64::saturating_add);
        let invocations = rows
            .iter()
            .map(|r| r.invocations)
            .fold(0_u64, u64::saturating_add);
        let byte_hours = rows
            .iter()
            .map(|r| r.storage_byte_hours)
            .fold(0_u64, u64::saturating_add);
        let prices = &plan.prices;
        let lines = vec![
            priced("base fee", 1, "month", 1, prices.base_monthly)?,
            priced("fuel", fuel, "fuel", 1_000_000_000, prices.per_billion_fuel)?,
            priced(
                "invocations",
                invocations,
                "invocation",
                1_000_000,
                prices.per_million_invocations,
            )?,
            priced(
                "storage",
                byte_hours,
                "byte-hour",
                1_000_000_000,
                prices.per_gb_hour,
            )?,
        ];
        let total = lines
            .iter()
            .try_fold(Decimal::ZERO, |sum, line| sum.checked_add(line.amount))
            .ok_or_else(|| Error::InvalidPlan("the invoice's total is too large".into()))?;
        Ok(Invoice {
            tenant: tenant.into(),
            month: month.into(),
            plan: plan.name.clone(),
            currency: prices.currency.clone(),
            lines,
            total,
        })
    }
}

/// How many hours one accrual fills in at most, when sampling stopped for a while (62 days).
pub const STORAGE_BACKFILL_HOURS: u64 = 62 * 24;

impl Billing {
    /// Accrues stored bytes into the ledger: every tenant's hours from the first one not yet
    /// accrued up to `hour` (included) are charged the bytes stored now, per component, as
    /// `storage_byte_hours`. Each tenant's hours are accrued in one transaction with the mark
    /// that says they are, so an hour is billed once however many processes sample, and hours
    /// missed while nothing sampled (at most [`STORAGE_BACKFILL_HOURS`]) are filled in later.
    /// Returns the tenant-hours accrued. Billing that calls the billing role elsewhere accrues
    /// nothing: that role does.
    pub async fn accrue_storage(&self, hour: u64) -> Result<u64> {
        use invicta_model::usage;
        let store = local_or!(self, _remote => std::future::ready(Ok(0)));
        let prefix = usage::stored_prefix();
        let rows = store
            .read(move |tx| tx.get_prefix(&prefix, Default::default()))
            .await?;
        let mut tenants: Vec<String> = rows
            .iter()
            .filter_map(|row| usage::parse_stored_key(&row.key).map(|(tenant, _, _)| tenant))
            .collect();
        tenants.dedup();
        let mut accrued = 0;
        for tenant in tenants {
            accrued += accrue_tenant_storage(store, tenant, hour).await?;
        }
        Ok(accrued)
    }
}

async fn accrue_tenant_storage(store: &Store, tenant: String, hour: u64) -> Result<u64> {
    use invicta_model::usage;
    store
        .transact(move |tx| {
            let mark = usage::storage_accrued_key(&tenant);
            let first = match tx.get(&mark)? {
                Some(bytes) => decode::<u64>("storage mark", &bytes)?,
                None => hour,
            }
            .max(hour.saturating_sub(STORAGE_BACKFILL_HOURS - 1));
            if first > hour {
                return Ok(0);
            }
            let mut per_component: Vec<(String, i64)> = Vec::new();
            for row in tx.get_prefix(&usage::stored_prefix_of(&tenant), Default::default())? {
                let Some((_, component, _)) = usage::parse_stored_key(&row.key) else {
                    continue;
                };
                let bytes = invicta_store::decode_counter(&row.value).max(0);
                match per_component.last_mut() {
                    Some((c, sum)) if *c == component => *sum = sum.saturating_add(bytes),
                    _ => per_component.push((component, bytes)),
                }
            }
            for h in first..=hour {
                for (component, bytes) in &per_component {
                    if *bytes > 0 {
                        tx.atomic_add(
                            &usage::ledger_key(&tenant, h, component, usage::STORAGE_BYTE_HOURS),
                            *bytes,
                        )?;
                    }
                }
            }
            tx.set(&mark, &encode(&(hour + 1)))?;
            Ok::<_, Error>(hour + 1 - first)
        })
        .await
}

impl Billing {
    /// The bytes the tenant stores now, per kind (`component_bytes`, `oplog_bytes`), summed
    /// over its components.
    pub async fn stored(&self, tenant: &str) -> Result<std::collections::BTreeMap<String, u64>> {
        use invicta_model::usage;
        let store = local_or!(self, remote => remote.stored(tenant));
        let prefix = usage::stored_prefix_of(tenant);
        let rows = store
            .read(move |tx| tx.get_prefix(&prefix, Default::default()))
            .await?;
        let mut out = std::collections::BTreeMap::new();
        for kind in [usage::COMPONENT_BYTES, usage::OPLOG_BYTES] {
            out.insert(kind.to_string(), 0_u64);
        }
        for row in rows {
            if let Some((_, _, kind)) = usage::parse_stored_key(&row.key) {
                let bytes = u64::try_from(invicta_store::decode_counter(&row.value)).unwrap_or(0);
                let sum = out.entry(kind).or_insert(0);
                *sum = sum.saturating_add(bytes);
            }
        }
        Ok(out)
    }

    /// Samples stored bytes into the ledger every `storage_sample_interval_ms` until the
    /// process ends (the billing role's job: elsewhere it samples nothing).
    pub fn spawn_storage_sampler(&self) -> tokio::task::JoinHandle<()> {
        let billing = self.clone();
        let every = Duration::from_millis(self.inner.config.storage_sample_interval_ms.max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let hour = invicta_model::usage::hour_of(now_ms());
                match billing.accrue_storage(hour).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(tenant_hours = n, "storage accrued"),
                    Err(e) => tracing::warn!(error = %e, "storage accrual"),
                }
            }
        })
    }
}
