//! The component registry: accepts a WASI 0.2 component, validates it (a component, valid, with
//! imports the executors can satisfy), reads its exported functions, precompiles it for the
//! executors' engine, and stores the bytes and the artifact in the blob store and the metadata in
//! the store. New bytes under a name make a new version; the same bytes again are the same
//! version.
//!
//! Store layout (tuple keys):
//! - `("component", tenant, name)` → [`ComponentRecord`] (latest version)
//! - `("component-version", tenant, name, version)` → [`ComponentVersion`]
//! - `("component-hash", tenant, name, sha256)` → version number
//! - `("component-artifact", tenant, name, version, engine)` → the version's compiled artifact
//! - `("compiled-hash", engine, sha256)` → the artifact compiled from those bytes, for any
//!   tenant: the same bytes are compiled once per engine
//! - `("tenant-usage", tenant, "components" | "component_bytes")` → what the tenant stores,
//!   counted in the transaction that stores it
//!
//! **Invariant:** a version's record is written only after its bytes and artifact are in the
//! blob store, in one transaction with the name's latest-version counter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub mod compiler;
pub mod files;
pub mod grpc;

use invicta_blob::{BlobRef, BlobStore};
use invicta_engine::Engine;
use invicta_engine::exports::{ExportedFunction, FunctionSignature, exported_functions};
use invicta_engine::wasmtime::component::Component;
use invicta_model::{ComponentName, TenantId, usage};
use invicta_store::Store;
use invicta_store::keys::pack;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the upload is not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("the component is not valid: {0}")]
    Invalid(String),
    #[error("the upload is not a usable archive: {0}")]
    InvalidArchive(String),
    #[error("the component imports what no executor provides: {0}")]
    UnsupportedImports(String),
    #[error("the component is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: u64 },
    #[error("quota `{quota}` exceeded: the limit is {limit}, {used} used")]
    QuotaExceeded {
        quota: &'static str,
        limit: u64,
        used: u64,
    },
    #[error("component {0} not found")]
    NotFound(String),
    #[error("component {name} has no version {version}")]
    VersionNotFound { name: String, version: u64 },
    #[error(
        "component {name} is in use by {workers} worker(s) (e.g. `{example}`); delete them first"
    )]
    InUse {
        name: String,
        workers: usize,
        example: String,
    },
    #[error("store: {0}")]
    Store(#[from] invicta_store::Error),
    #[error("blob store: {0}")]
    Blob(#[from] invicta_blob::Error),
    #[error("stored component metadata is corrupt: {0}")]
    Corrupt(String),
    #[error("compile the component: {0}")]
    Compile(String),
    /// The compile took longer than the deadline and was stopped.
    #[error("compiling the component took longer than {limit_ms} ms, the limit; it was stopped")]
    CompileTimeout { limit_ms: u64 },
    /// Every compile slot stayed taken for longer than an upload waits.
    #[error("too many components are being compiled; try again shortly")]
    Busy,
    /// The registry in another process refused, with its error's code.
    #[error("{message}")]
    Remote { code: String, message: String },
}

impl Error {
    /// The stable code the API reports for this error.
    pub fn code(&self) -> &str {
        match self {
            Error::NotAComponent(_) | Error::Invalid(_) => "invalid_component",
            Error::InvalidArchive(_) => "invalid_archive",
            Error::UnsupportedImports(_) => "unsupported_imports",
            Error::TooLarge { .. } => "payload_too_large",
            Error::QuotaExceeded { .. } => "quota_exceeded",
            Error::NotFound(_) => "component_not_found",
            Error::VersionNotFound { .. } => "version_not_found",
            Error::InUse { .. } => "component_in_use",
            Error::Busy => "unavailable",
            Error::CompileTimeout { .. } => "compile_timeout",
            Error::Remote { code, .. } => code,
            Error::Store(_) | Error::Blob(_) | Error::Corrupt(_) | Error::Compile(_) => "internal",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The largest component accepted, in bytes (default 50 MiB).
    pub component_bytes_max: u64,
    /// How long one compile may take, in ms (default 120,000); a slower one is stopped and the
    /// upload answers `compile_timeout`.
    pub compile_timeout_ms: u64,
    /// The program that compiles in a child process (`<program> compile-component`; the
    /// server's own binary), which the deadline can kill; `None`: compile in this process.
    #[serde(skip)]
    pub compiler: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            component_bytes_max: 50 * 1024 * 1024,
            compile_timeout_ms: 120_000,
            compiler: None,
        }
    }
}

impl Config {
    fn compile_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.compile_timeout_ms.max(1))
    }
}

/// The latest version of a component name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentRecord {
    pub latest_version: u64,
}

/// One version of a component.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComponentVersion {
    pub name: String,
    pub version: u64,
    /// SHA-256 of the component's bytes (with files: of its hash and their canonical archive).
    pub hash: String,
    /// Bytes stored: the component and its files' archive.
    pub size: u64,
    pub created_at_ms: u64,
    pub exports: Vec<FunctionSignature>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobRef>,
    /// The files its workers start with (see [`files`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<files::InitialFile>,
    /// Their canonical archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_blob: Option<BlobRef>,
    /// Its code is the baseline tier's: the optimized is being compiled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub baseline: bool,
}

/// What a tenant's plan allows it to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Component names.
    pub components_max: u64,
    /// Bytes of all versions together.
    pub bytes_max: u64,
    /// Linear memory one worker may have: a component whose memories start larger cannot
    /// run on the plan.
    pub memory_per_worker_bytes: u64,
}

impl Quota {
    pub fn unlimited() -> Quota {
        Quota {
            components_max: u64::MAX,
            bytes_max: u64::MAX,
            memory_per_worker_bytes: u64::MAX,
        }
    }

    /// Checks adding a version of `size` bytes (and a new name, if `new_name`).
    fn check(&self, components: u64, bytes: u64, size: u64, new_name: bool) -> Result<()> {
        if new_name && components >= self.components_max {
            return Err(Error::QuotaExceeded {
                quota: "components",
                limit: self.components_max,
                used: components,
            });
        }
        if bytes.saturating_add(size) > self.bytes_max {
            return Err(Error::QuotaExceeded {
                quota: "component_bytes",
                limit: self.bytes_max,
                used: bytes,
            });
        }
        Ok(())
    }
}

/// The outcome of an upload.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub version: ComponentVersion,
    /// `false` when the same bytes were already this name's version.
    pub created: bool,
}

/// Checks that an executor can instantiate a component: provided by the executor, which owns
/// the linker.
pub type ImportCheck = Arc<dyn Fn(&Component) -> Result<(), String> + Send + Sync>;

/// A component version compiled for this process's engine, ready to instantiate.
pub struct Compiled {
    pub version: ComponentVersion,
    pub component: Component,
    pub exports: Vec<ExportedFunction>,
    /// Compiled by the baseline tier (Winch, instances on demand); the optimized code
    /// replaces it when ready.
    pub baseline: bool,
    /// When it was loaded (a baseline one is looked at again for the optimized code).
    pub loaded_at: std::time::Instant,
}

impl Compiled {
    pub fn function(&self, name: &str) -> Option<&ExportedFunction> {
        self.exports.iter().find(|f| f.is_named(name))
    }
}

#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// Compiles running at once, over all tenants: a compile takes a core for up to tens of
    /// seconds, and invocations need the others.
    compiles: Arc<tokio::sync::Semaphore>,
    /// Compiles running per tenant: one at a time, so that one tenant's uploads queue behind
    /// each other rather than take every compile slot.
    tenant_compiles: Mutex<HashMap<TenantId, Arc<tokio::sync::Semaphore>>>,
    store: Store,
    blobs: BlobStore,
    engine: Engine,
    import_check: ImportCheck,
    compiled: Mutex<HashMap<(TenantId, ComponentName, u64), Arc<Compiled>>>,
    /// The same components, loaded into the on-demand engine (instances over a pool slot).
    large: Mutex<HashMap<(TenantId, ComponentName, u64), Component>>,
    /// The versions this process is optimizing (compiling with Cranelift after the baseline).
    optimizing: Mutex<std::collections::HashSet<(TenantId, ComponentName, u64)>>,
    /// The registry role's process, when it is not this one.
    remote: std::sync::OnceLock<grpc::RegistryClient>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn component_key(tenant: &TenantId, name: &ComponentName) -> Vec<u8> {
    pack(&("component", tenant.as_str(), name.as_str()))
}

fn version_key(tenant: &TenantId, name: &ComponentName, version: u64) -> Vec<u8> {
    pack(&("component-version", tenant.as_str(), name.as_str(), version))
}

fn hash_key(tenant: &TenantId, name: &ComponentName, hash: &str) -> Vec<u8> {
    pack(&("component-hash", tenant.as_str(), name.as_str(), hash))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl Registry {
    pub fn new(
        config: Config,
        store: Store,
        blobs: BlobStore,
        engine: Engine,
        import_check: ImportCheck,
    ) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                config,
                store,
                blobs,
                engine,
                import_check,
                compiles: Arc::new(tokio::sync::Semaphore::new(compile_concurrency())),
                tenant_compiles: Mutex::new(HashMap::new()),
                compiled: Mutex::new(HashMap::new()),
                large: Mutex::new(HashMap::new()),
                optimizing: Mutex::new(Default::default()),
                remote: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Sends uploads, reads and deletions to the registry role at `address`; this process
    /// then only compiles what its executor runs, from the shared store and blobs.
    pub fn route_through(&self, address: &str) -> Result<()> {
        let client = grpc::RegistryClient::new(address)?;
        let _ = self.inner.remote.set(client);
        Ok(())
    }

    /// The blob store it keeps components in, which the executors share.
    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Validates, stores and precompiles `bytes` as a version of `name`.
    pub async fn upload(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        bytes: Vec<u8>,
        quota: Quota,
    ) -> Result<Uploaded> {
        if let Some(remote) = self.inner.remote.get() {
            return remote.upload(tenant, name, bytes, quota).await;
        }
        let inner = &self.inner;
        if bytes.len() as u64 > inner.config.component_bytes_max {
            return Err(Error::TooLarge {
                size: bytes.len(),
                limit: inner.config.component_bytes_max,
            });
        }
        // An archive carries files besides the component; the version is both.
        let (bytes, files, files_archive) = if files::is_archive(&bytes) {
            let unpacked = files::unpack(&bytes).map_err(Error::InvalidArchive)?;
            (unpacked.wasm, unpacked.files, unpacked.archive)
        } else {
            (bytes, Vec::new(), None)
        };
        // Artifacts are the component's alone; a version is the component and its files.
        let wasm_hash = hex::encode(Sha256::digest(&bytes));
        let hash = match &files_archive {
            None => wasm_hash.clone(),
            Some(archive) => {
                let mut digest = Sha256::new();
                digest.update(wasm_hash.as_bytes());
                digest.update(archive);
                hex::encode(digest.finalize())
            }
        };
        let files_size = files_archive.as_ref().map_or(0, |a| a.len() as u64);
        if let Some(existing) = self.version_by_hash(tenant, name, &hash).await? {
            return Ok(Uploaded {
                version: existing,
                created: false,
            });
        }
        // Refuse early what the quota cannot take (the transaction checks again, exactly).
        let (t, n, size) = (
            tenant.clone(),
            name.clone(),
            (bytes.len() as u64).saturating_add(files_size),
        );
        inner
            .store
            .read(move |tx| {
                let components =
                    u64::try_from(tx.get_i64(&usage::count_key(t.as_str(), usage::COMPONENTS))?)
                        .unwrap_or(0);
                let used = u64::try_from(
                    tx.get_i64(&usage::count_key(t.as_str(), usage::COMPONENT_BYTES))?,
                )
                .unwrap_or(0);
                let new_name = tx.get(&component_key(&t, &n))?.is_none();
                quota.check(components, used, size, new_name)
            })
            .await?;
        // What it imports, and the memory it starts with, are checked before it is compiled:
        // a component no worker here could run is refused for nothing.
        check_import_names(&bytes)?;
        let needed = initial_memory_bytes(&bytes);
        let limit = quota
            .memory_per_worker_bytes
            .min(inner.engine.memory_ceiling());
        if needed > limit {
            return Err(Error::QuotaExceeded {
                quota: "memory_per_worker",
                limit,
                used: needed,
            });
        }
        // The same bytes compiled before, for any tenant, are not compiled again.
        let reused = match self.artifact_by_hash(&wasm_hash).await {
            Ok(reused) => reused,
            Err(e) => {
                tracing::warn!(hash = %wasm_hash, error = %e, "a shared artifact is unusable; compiling again");
                None
            }
        };
        // New bytes are compiled by the baseline tier when there is one (the version runs at
        // once), and optimized in the background.
        // Bytes compiled by the baseline tier before (their optimizing compile cut off, say) are
        // not compiled again either.
        let reused = match (reused, inner.engine.baseline.as_deref()) {
            (None, Some(baseline)) => self
                .artifact_by_hash_for(baseline, &wasm_hash)
                .await
                .ok()
                .flatten()
                .map(|(component, artifact)| (component, artifact, baseline.clone())),
            (reused, _) => reused.map(|(c, a)| (c, a, inner.engine.clone())),
        };
        let (component, artifact, bytes, artifact_engine) = match reused {
            Some((component, artifact, engine)) => (component, artifact, bytes, engine),
            None => {
                let engine = inner.engine.baseline.as_deref().unwrap_or(&inner.engine);
                let (component, artifact, bytes) =
                    self.compile_in_turn(tenant, engine, bytes).await?;
                let artifact = inner
                    .blobs
                    .put_bytes(&artifact_prefix(engine), &artifact)
                    .await?;
                (component, artifact, bytes, engine.clone())
            }
        };
        let baseline = inner.engine.is_baseline(&component);
        let import_check = inner.import_check.clone();
        let (component, exports) = tokio::task::spawn_blocking(move || {
            import_check(&component).map_err(Error::UnsupportedImports)?;
            let exports = exported_functions(component.engine(), &component);
            Ok::<_, Error>((component, exports))
        })
        .await
        .map_err(|e| Error::Compile(e.to_string()))??;

        let blob = inner.blobs.put_bytes("components", &bytes).await?;
        let wasm_blob = blob.clone();
        let files_blob = match &files_archive {
            Some(archive) => Some(inner.blobs.put_bytes("component-files", archive).await?),
            None => None,
        };
        let engine = artifact_engine;
        let mut version = ComponentVersion {
            name: name.to_string(),
            version: 0,
            hash: hash.clone(),
            size: (bytes.len() as u64).saturating_add(files_size),
            created_at_ms: now_ms(),
            exports: exports.iter().map(ExportedFunction::signature).collect(),
            blob: Some(blob),
            files,
            files_blob,
            baseline,
        };
        let (tenant_c, name_c, template) = (tenant.clone(), name.clone(), version.clone());
        let shared_key = shared_artifact_key(&wasm_hash, &engine);
        let (stored, created) = inner
            .store
            .transact(move |tx| {
                // Another upload of the same bytes may have won the race.
                if let Some(v) = tx.get(&hash_key(&tenant_c, &name_c, &template.hash))? {
                    let number = decode::<u64>(&v)?;
                    let existing = tx
                        .get(&version_key(&tenant_c, &name_c, number))?
                        .ok_or_else(|| {
                            Error::Corrupt("hash index names a missing version".into())
                        })?;
                    return Ok::<_, Error>((decode::<ComponentVersion>(&existing)?, false));
                }
                let latest = match tx.get(&component_key(&tenant_c, &name_c))? {
                    Some(v) => decode::<ComponentRecord>(&v)?.latest_version,
                    None => 0,
                };
                let components_key = usage::count_key(tenant_c.as_str(), usage::COMPONENTS);
                let bytes_key = usage::count_key(tenant_c.as_str(), usage::COMPONENT_BYTES);
                let components = u64::try_from(tx.get_i64(&components_key)?).unwrap_or(0);
                let used = u64::try_from(tx.get_i64(&bytes_key)?).unwrap_or(0);
                quota.check(components, used, template.size, latest == 0)?;
                if latest == 0 {
                    tx.atomic_add(&components_key, 1)?;
                }
                let size = i64::try_from(template.size).unwrap_or(i64::MAX);
                tx.atomic_add(&bytes_key, size)?;
                tx.atomic_add(
                    &usage::stored_key(tenant_c.as_str(), name_c.as_str(), usage::COMPONENT_BYTES),
                    size,
                )?;
                let mut record = template.clone();
                record.version = latest + 1;
                tx.set(
                    &version_key(&tenant_c, &name_c, record.version),
                    &encode(&record),
                )?;
                tx.set(
                    &hash_key(&tenant_c, &name_c, &record.hash),
                    &encode(&record.version),
                )?;
                tx.set(
                    &artifact_key(&tenant_c, &name_c, record.version, &engine),
                    &encode(&artifact),
                )?;
                tx.set(&shared_key, &encode(&artifact))?;
                tx.set(
                    &component_key(&tenant_c, &name_c),
                    &encode(&ComponentRecord {
                        latest_version: record.version,
                    }),
                )?;
                Ok((record, true))
            })
            .await?;
        version = stored;
        if created {
            tracing::info!(tenant = %tenant, component = %name, version = version.version, hash = %version.hash, "component uploaded");
            self.cache(
                tenant,
                name,
                version.version,
                Compiled {
                    version: version.clone(),
                    component,
                    exports,
                    baseline,
                    loaded_at: std::time::Instant::now(),
                },
            );
            if baseline {
                self.optimize_later(tenant, name, &version, wasm_hash, wasm_blob);
            }
        }
        Ok(Uploaded { version, created })
    }

    /// Compiles a version that runs on the baseline tier with the optimizing engine, in the
    /// background: the artifact is stored for every process, and the version's cached code
    /// here replaced, so that workers move to it at their next activation.
    fn optimize_later(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        version: &ComponentVersion,
        wasm_hash: String,
        wasm: BlobRef,
    ) {
        let key = (tenant.clone(), name.clone(), version.version);
        if !self
            .inner
            .optimizing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return;
        }
        let (this, tenant, name, version) =
            (self.clone(), tenant.clone(), name.clone(), version.clone());
        tokio::spawn(async move {
            let _done = scopeguard(&this, key);
            let started = std::time::Instant::now();
            match this
                .optimize(&tenant, &name, &version, &wasm_hash, &wasm)
                .await
            {
                Ok(()) => {
                    tracing::info!(tenant = %tenant, component = %name, version = version.version, elapsed_ms = started.elapsed().as_millis() as u64, "optimized code ready")
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, component = %name, version = version.version, error = %e, "optimizing compile failed: the version stays on the baseline tier")
                }
            }
        });
    }

    /// Compiles with the optimizing engine, now (see [`Registry::optimize_later`]).
    async fn optimize(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        version: &ComponentVersion,
        wasm_hash: &str,
        wasm: &BlobRef,
    ) -> Result<()> {
        let inner = &self.inner;
        let bytes = inner.blobs.get_verified(wasm).await?;
        let (component, artifact) = match self.artifact_by_hash(wasm_hash).await {
            Ok(Some(found)) => found,
            _ => {
                // A compile slot like any upload's, without a deadline to wait for it.
                let _turn = inner
                    .compiles
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::Busy)?;
                let (component, artifact, _) = compiler::compile(
                    inner.config.compiler.as_deref(),
                    &inner.engine,
                    bytes.to_vec(),
                    inner.config.compile_deadline(),
                )
                .await?;
                let artifact = inner
                    .blobs
                    .put_bytes(&artifact_prefix(&inner.engine), &artifact)
                    .await?;
                (component, artifact)
            }
        };
        let key = artifact_key(tenant, name, version.version, &inner.engine);
        let shared = shared_artifact_key(wasm_hash, &inner.engine);
        let exists = version_key(tenant, name, version.version);
        let stored = inner
            .store
            .transact(move |tx| {
                // A version deleted meanwhile is not brought back.
                let Some(record) = tx.get(&exists)? else {
                    return Ok::<_, Error>(false);
                };
                let mut record: ComponentVersion = decode(&record)?;
                record.baseline = false;
                tx.set(&exists, &encode(&record))?;
                tx.set(&key, &encode(&artifact))?;
                tx.set(&shared, &encode(&artifact))?;
                Ok(true)
            })
            .await?;
        if stored {
            let exports = exported_functions(component.engine(), &component);
            self.lock().insert(
                (tenant.clone(), name.clone(), version.version),
                Arc::new(Compiled {
                    version: ComponentVersion {
                        baseline: false,
                        ..version.clone()
                    },
                    component,
                    exports,
                    baseline: false,
                    loaded_at: std::time::Instant::now(),
                }),
            );
        }
        Ok(())
    }

    async fn version_by_hash(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        hash: &str,
    ) -> Result<Option<ComponentVersion>> {
        let (hk, tenant, name) = (hash_key(tenant, name, hash), tenant.clone(), name.clone());
        self.inner
            .store
            .read(move |tx| {
                let Some(v) = tx.get(&hk)? else {
                    return Ok(None);
                };
                let number = decode::<u64>(&v)?;
                match tx.get(&version_key(&tenant, &name, number))? {
                    Some(bytes) => Ok(Some(decode(&bytes)?)),
                    None => Err(Error::Corrupt("hash index names a missing version".into())),
                }
            })
            .await
    }

    /// One version's metadata; `None` for the latest.
    pub async fn get(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        version: Option<u64>,
    ) -> Result<ComponentVersion> {
        if let Some(remote) = self.inner.remote.get() {
            return Ok(remote.get(tenant, name, version).await?.0);
        }
        let (tenant, name) = (tenant.clone(), name.clone());
        self.inner
            .store
            .read(move |tx| {
                let number = match version {
                    Some(v) => v,
                    None => match tx.get(&component_key(&tenant, &name))? {
                        Some(v) => decode::<ComponentRecord>(&v)?.latest_version,
                        None => return Err(Error::NotFound(name.to_string())),
                    },
                };
                match tx.get(&version_key(&tenant, &name, number))? {
                    Some(bytes) => decode(&bytes),
                    None if version.is_some() => Err(Error::VersionNotFound {
                        name: name.to_string(),
                        version: number,
                    }),
                    None => Err(Error::NotFound(name.to_string())),
                }
            })
            .await
    }

    /// The tenant's components with their latest versions, by name.
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<ComponentVersion>> {
        if let Some(remote) = self.inner.remote.get() {
            return remote.list(tenant).await;
        }
        let tenant = tenant.clone();
        self.inner
            .store
            .read(move |tx| {
                let rows =
                    tx.get_prefix(&pack(&("component", tenant.as_str())), Default::default())?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let (_, _, name): (String, String, String) =
                        invicta_store::keys::unpack(&row.key)
                            .map_err(|e| Error::Corrupt(format!("component key: {e:?}")))?;
                    let name =
                        ComponentName::new(name).map_err(|e| Error::Corrupt(e.to_string()))?;
                    let latest = decode::<ComponentRecord>(&row.value)?.latest_version;
                    if let Some(bytes) = tx.get(&version_key(&tenant, &name, latest))? {
                        out.push(decode::<ComponentVersion>(&bytes)?);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Deletes a component with all its versions, refused while any worker uses it (checked
    /// in the same transaction). The tenant's counts drop by what it took.
    pub async fn delete(&self, tenant: &TenantId, name: &ComponentName) -> Result<()> {
        if let Some(remote) = self.inner.remote.get() {
            remote.delete(tenant, name).await?;
            // What this process compiled of it goes too.
            self.lock()
                .retain(|(t, n, _), _| !(t == tenant && n == name));
            return Ok(());
        }
        let (tenant_c, name_c) = (tenant.clone(), name.clone());
        let versions = self
            .inner
            .store
            .transact(move |tx| {
                if tx.get(&component_key(&tenant_c, &name_c))?.is_none() {
                    return Err(Error::NotFound(name_c.to_string()));
                }
                let workers = tx.get_prefix(
                    &invicta_model::layout::workers_prefix(tenant_c.as_str(), name_c.as_str()),
                    invicta_store::RangeOptions::limit(1_000),
                )?;
                if let Some(first) = workers.first() {
                    let example =
                        invicta_store::keys::unpack::<(String, String, String, String)>(&first.key)
                            .map(|(_, _, _, w)| w)
                            .unwrap_or_default();
                    return Err(Error::InUse {
                        name: name_c.to_string(),
                        workers: workers.len(),
                        example,
                    });
                }
                let mut bytes = 0_i64;
                let mut versions = Vec::new();
                for space in ["component-version", "component-hash", "component-artifact"] {
                    let prefix = pack(&(space, tenant_c.as_str(), name_c.as_str()));
                    let (begin, end) = invicta_store::keys::prefix_range(&prefix);
                    if space == "component-version" {
                        for row in tx.get_range(&begin, &end, Default::default())? {
                            let v = decode::<ComponentVersion>(&row.value)?;
                            bytes += i64::try_from(v.size).unwrap_or(0);
                            versions.push(v.version);
                        }
                    }
                    tx.clear_range(&begin, &end)?;
                }
                tx.clear(&component_key(&tenant_c, &name_c))?;
                let t = tenant_c.as_str();
                tx.atomic_add(&usage::count_key(t, usage::COMPONENTS), -1)?;
                tx.atomic_add(&usage::count_key(t, usage::COMPONENT_BYTES), -bytes)?;
                let stored = usage::stored_key(t, name_c.as_str(), usage::COMPONENT_BYTES);
                let left = tx.get_i64(&stored)?;
                tx.atomic_add(&stored, -left)?;
                Ok(versions)
            })
            .await?;
        let mut cache = self.lock();
        for version in versions {
            cache.remove(&(tenant.clone(), name.clone(), version));
        }
        tracing::info!(tenant = %tenant, component = %name, "component deleted");
        Ok(())
    }

    /// The version numbers of a component, oldest first.
    pub async fn versions(&self, tenant: &TenantId, name: &ComponentName) -> Result<Vec<u64>> {
        if let Some(remote) = self.inner.remote.get() {
            return Ok(remote.get(tenant, name, None).await?.1);
        }
        let prefix = pack(&("component-version", tenant.as_str(), name.as_str()));
        let rows = self
            .inner
            .store
            .read(move |tx| tx.get_prefix(&prefix, Default::default()))
            .await?;
        rows.iter()
            .map(|kv| decode::<ComponentVersion>(&kv.value).map(|v| v.version))
            .collect()
    }

    /// The component version compiled for this engine: from memory, else from its precompiled
    /// artifact, else compiled afresh from its bytes (and the artifact stored for next time).
    pub async fn compiled(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        version: u64,
    ) -> Result<Arc<Compiled>> {
        let key = (tenant.clone(), name.clone(), version);
        let hit = self.lock().get(&key).cloned();
        if let Some(hit) = &hit
            && (!hit.baseline || hit.loaded_at.elapsed() < BASELINE_RECHECK)
        {
            return Ok(hit.clone());
        }
        let meta = match &hit {
            Some(hit) => hit.version.clone(),
            None => self.get(tenant, name, Some(version)).await?,
        };
        let engine = self.inner.engine.clone();
        let optimized = match self.load_artifact(tenant, name, version, &engine).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(tenant = %tenant, component = %name, version, error = %e, "precompiled artifact unusable; compiling again");
                None
            }
        };
        let (component, baseline) = match (optimized, hit) {
            (Some(component), _) => (component, false),
            // Still on the baseline tier: looked at again later.
            (None, Some(hit)) => {
                let again = Compiled {
                    version: hit.version.clone(),
                    component: hit.component.clone(),
                    exports: hit.exports.clone(),
                    baseline: true,
                    loaded_at: std::time::Instant::now(),
                };
                let again = Arc::new(again);
                self.lock().insert(key, again.clone());
                return Ok(again);
            }
            (None, None) => match self.load_baseline(tenant, name, version).await {
                Some(component) => {
                    // Its optimizing compile was cut off (a restart, say): it starts again.
                    if let Some(wasm) = meta.blob.clone() {
                        let wasm_hash = wasm_hash_of(&meta);
                        if let Some(wasm_hash) = wasm_hash {
                            self.optimize_later(tenant, name, &meta, wasm_hash, wasm);
                        }
                    }
                    (component, true)
                }
                None => (self.recompile(tenant, name, &meta).await?, false),
            },
        };
        let exports = exported_functions(component.engine(), &component);
        let compiled = Arc::new(Compiled {
            version: meta,
            component,
            exports,
            baseline,
            loaded_at: std::time::Instant::now(),
        });
        // The optimized code replaces the baseline; otherwise the first loaded stays (export
        // indices and instance templates belong to one `Component` value).
        let mut cache = self.lock();
        match cache.get(&key) {
            Some(cached) if !cached.baseline || baseline => Ok(cached.clone()),
            _ => {
                cache.insert(key, compiled.clone());
                Ok(compiled)
            }
        }
    }

    /// The version's baseline artifact, if it has one (its optimized code is not ready).
    async fn load_baseline(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        version: u64,
    ) -> Option<Component> {
        let baseline = self.inner.engine.baseline.as_deref()?.clone();
        match self.load_artifact(tenant, name, version, &baseline).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(tenant = %tenant, component = %name, version, error = %e, "baseline artifact unusable");
                None
            }
        }
    }

    /// The component version loaded into the on-demand engine, for workers larger than a pool
    /// slot: the pooled engine's code (the engines generate the same), loaded there once.
    /// `None` when there is no such engine.
    pub async fn compiled_large(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        version: u64,
    ) -> Result<Option<Component>> {
        let Some(large) = self.inner.engine.large.clone() else {
            return Ok(None);
        };
        let key = (tenant.clone(), name.clone(), version);
        let lock = || self.inner.large.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = lock().get(&key) {
            return Ok(Some(hit.clone()));
        }
        let component = self
            .compiled(tenant, name, version)
            .await?
            .component
            .clone();
        // Too large for a pool slot, it was loaded there already.
        if invicta_engine::wasmtime::Engine::same(component.engine(), &large) {
            return Ok(Some(component));
        }
        let loaded = tokio::task::spawn_blocking(move || {
            let artifact = component
                .serialize()
                .map_err(|e| Error::Compile(format!("{e:#}")))?;
            #[allow(unsafe_code)]
            // SAFETY: the artifact was just made by `Component::serialize` on the pooled
            // engine, whose precompile compatibility hash `Engine::new` checked to be the
            // on-demand engine's.
            let loaded = unsafe { Component::deserialize(&large, &artifact) };
            loaded.map_err(|e| Error::Compile(format!("{e:#}")))
        })
        .await
        .map_err(|e| Error::Compile(e.to_string()))??;
        Ok(Some(lock().entry(key).or_insert(loaded).clone()))
    }

    /// Compiles `bytes` once it is this upload's turn: one compile at a time per tenant and
    /// a few at a time in all, each waiting only so long for its turn.
    async fn compile_in_turn(
        &self,
        tenant: &TenantId,
        engine: &Engine,
        bytes: Vec<u8>,
    ) -> Result<(Component, Vec<u8>, Vec<u8>)> {
        let inner = &self.inner;
        let tenant_slot = {
            let mut slots = inner
                .tenant_compiles
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if slots.len() > 10_000 {
                slots.retain(|_, s| s.available_permits() == 0);
            }
            slots
                .entry(tenant.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
                .clone()
        };
        let turn = async {
            let mine = tenant_slot.acquire_owned().await;
            let any = inner.compiles.clone().acquire_owned().await;
            (mine, any)
        };
        let (Ok(_tenant_turn), Ok(_turn)) = tokio::time::timeout(COMPILE_QUEUE_WAIT, turn)
            .await
            .map_err(|_| Error::Busy)?
        else {
            return Err(Error::Busy);
        };
        compiler::compile(
            inner.config.compiler.as_deref(),
            engine,
            bytes,
            inner.config.compile_deadline(),
        )
        .await
    }

    /// The artifact compiled for this engine from bytes with SHA-256 `hash`, by any upload.
    async fn artifact_by_hash(&self, hash: &str) -> Result<Option<(Component, BlobRef)>> {
        self.artifact_by_hash_for(&self.inner.engine, hash).await
    }

    /// The artifact compiled for `engine` from bytes with SHA-256 `hash`, by any upload.
    async fn artifact_by_hash_for(
        &self,
        engine: &Engine,
        hash: &str,
    ) -> Result<Option<(Component, BlobRef)>> {
        let key = shared_artifact_key(hash, engine);
        let Some(bytes) = self.inner.store.read(move |tx| tx.get(&key)).await? else {
            return Ok(None);
        };
        let blob: BlobRef = decode(&bytes)?;
        let component = self.deserialize_for(engine, &blob).await?;
        Ok(Some((component, blob)))
    }

    /// Loads an artifact this registry stored for `engine` (this engine or its baseline tier).
    async fn deserialize_for(&self, engine: &Engine, blob: &BlobRef) -> Result<Component> {
        let artifact = self.inner.blobs.get_verified(blob).await?;
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || {
            // The artifact was made by `Component::serialize` on an engine with this engine's
            // fingerprint (it is stored under it), and its bytes were just checked against the
            // SHA-256 recorded when it was stored.
            compiler::load(&engine, &artifact).map_err(Error::Compile)
        })
        .await
        .map_err(|e| Error::Compile(e.to_string()))?
    }

    /// The precompiled artifact for this engine, if one was stored.
    async fn load_artifact(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        version: u64,
        engine: &Engine,
    ) -> Result<Option<Component>> {
        let key = artifact_key(tenant, name, version, engine);
        let Some(bytes) = self.inner.store.read(move |tx| tx.get(&key)).await? else {
            return Ok(None);
        };
        let blob: BlobRef = decode(&bytes)?;
        Ok(Some(self.deserialize_for(engine, &blob).await?))
    }

    /// Compiles a version from its bytes and stores the artifact for this engine.
    async fn recompile(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        meta: &ComponentVersion,
    ) -> Result<Component> {
        let blob = meta
            .blob
            .clone()
            .ok_or_else(|| Error::Corrupt("component version has no bytes".into()))?;
        let bytes = self.inner.blobs.get_verified(&blob).await?;
        let (component, artifact, _) = compiler::compile(
            self.inner.config.compiler.as_deref(),
            &self.inner.engine,
            bytes.to_vec(),
            self.inner.config.compile_deadline(),
        )
        .await?;
        let artifact = self
            .inner
            .blobs
            .put_bytes(&artifact_prefix(&self.inner.engine), &artifact)
            .await?;
        let key = artifact_key(tenant, name, meta.version, &self.inner.engine);
        self.inner
            .store
            .transact(move |tx| tx.set(&key, &encode(&artifact)))
            .await?;
        Ok(component)
    }

    fn cache(
        &self,
        tenant: &TenantId,
        name: &ComponentName,
        version: u64,
        compiled: Compiled,
    ) -> Arc<Compiled> {
        // Keep the first: components compiled concurrently are equal, but export indices and
        // instance templates belong to one `Component` value, so everyone must share it.
        self.lock()
            .entry((tenant.clone(), name.clone(), version))
            .or_insert_with(|| Arc::new(compiled))
            .clone()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(TenantId, ComponentName, u64), Arc<Compiled>>> {
        self.inner
            .compiled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn artifact_prefix(engine: &Engine) -> String {
    format!("artifacts/{}", engine.fingerprint)
}

/// The artifact compiled for `engine` from the bytes with SHA-256 `hash`, whoever uploaded
/// them: the same bytes are compiled once.
fn shared_artifact_key(hash: &str, engine: &Engine) -> Vec<u8> {
    pack(&("compiled-hash", engine.fingerprint.as_str(), hash))
}

fn artifact_key(tenant: &TenantId, name: &ComponentName, version: u64, engine: &Engine) -> Vec<u8> {
    pack(&(
        "component-artifact",
        tenant.as_str(),
        name.as_str(),
        version,
        engine.fingerprint.as_str(),
    ))
}

/// Compiles and validates `bytes`, telling a core module or non-wasm apart from a broken
/// component.
/// Forgets that a version is being optimized when its task ends, however it ends.
fn scopeguard(registry: &Registry, key: (TenantId, ComponentName, u64)) -> impl Drop + use<> {
    struct Done(Registry, (TenantId, ComponentName, u64));
    impl Drop for Done {
        fn drop(&mut self) {
            self.0
                .inner
                .optimizing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.1);
        }
    }
    Done(registry.clone(), key)
}

/// The SHA-256 of a version's component bytes (its blob's; the version's own hash covers its
/// files too).
fn wasm_hash_of(version: &ComponentVersion) -> Option<String> {
    version.blob.as_ref().map(|b| b.sha256.clone())
}

/// How often a version cached on the baseline tier is looked at again for its optimized code
/// (which another process may have stored).
const BASELINE_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// How long an upload waits for its turn to compile before it is told to come back (503).
pub const COMPILE_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Compiles running at once, over all tenants: leaves a core to invocations.
fn compile_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1).max(1))
        .unwrap_or(1)
}

/// The packages whose interfaces an executor here may provide: WASI's and Invicta's own. A
/// component importing any other is refused before it is compiled; the executor's own check,
/// after compiling, decides for the interfaces and versions of these.
const PROVIDED_PACKAGES: &[&str] = &["wasi:", "invicta:"];

/// Refuses a component whose top-level imports name a package no executor provides, from its
/// bytes alone (nothing is compiled).
fn check_import_names(bytes: &[u8]) -> Result<()> {
    use wasmparser::{Parser, Payload};
    let mut depth = 0_u32;
    let mut unknown = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        // What does not parse is left to the compiler, which says what is wrong with it.
        let Ok(payload) = payload else {
            return Ok(());
        };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let Ok(import) = import else {
                        return Ok(());
                    };
                    // Interfaces only: types and the rest are the compiled check's business.
                    if !matches!(import.ty, wasmparser::ComponentTypeRef::Instance(_)) {
                        continue;
                    }
                    let name = import.name.name;
                    if !PROVIDED_PACKAGES.iter().any(|p| name.starts_with(p)) {
                        unknown.push(name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Error::UnsupportedImports(format!(
        "it imports {}, which no executor here provides (only wasi:* and invicta:* interfaces are)",
        unknown.join(", ")
    )))
}

/// The linear memory a component's core modules declare they start with, in bytes, summed
/// (memories they import are someone else's); what does not parse counts as none, and is left
/// to the compiler to describe.
fn initial_memory_bytes(bytes: &[u8]) -> u64 {
    use wasmparser::{Parser, Payload};
    let mut total = 0_u64;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return total;
        };
        if let Payload::MemorySection(reader) = payload {
            for memory in reader {
                let Ok(memory) = memory else {
                    return total;
                };
                let page = memory
                    .page_size_log2
                    .map_or(65_536_u64, |log2| 1_u64 << log2.min(16));
                total = total.saturating_add(memory.initial.saturating_mul(page));
            }
        }
    }
    total
}

fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(Error::NotAComponent(
            "it does not start with the WebAssembly magic bytes".into(),
        ));
    }
    // Bytes 4..8: version and layer; a core module is version 1, layer 0.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(Error::NotAComponent(
            "it is a core WebAssembly module; build a component (e.g. for wasm32-wasip2, or with `wasm-tools component new`)".into(),
        ));
    }
    Component::new(&engine.engine, bytes).map_err(|e| Error::Invalid(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("valid WAT")
    }

    #[test]
    fn the_memory_a_component_starts_with_is_read_before_compiling() {
        let big = wat(r#"(component
                (core module $a (memory 8192))
                (core module $b (memory 16) (memory (export "m") 1))
                (core module $c (import "x" "m" (memory 100))))"#);
        // 8192 + 16 + 1 pages of 64 KiB; the imported memory is another's.
        assert_eq!(initial_memory_bytes(&big), (8192 + 16 + 1) * 65_536);
        assert_eq!(initial_memory_bytes(&wat("(component)")), 0);
        assert_eq!(initial_memory_bytes(b"\0asm garbage"), 0);
    }

    #[test]
    fn imports_are_checked_before_compiling() {
        let unknown =
            wat(r#"(component (import "acme:secret/vault" (instance (export "open" (func)))))"#);
        let refused = check_import_names(&unknown).unwrap_err();
        assert!(
            refused.to_string().contains("acme:secret/vault"),
            "{refused}"
        );
        let wasi = wat(r#"(component (import "wasi:cli/environment@0.2.0" (instance)))"#);
        assert!(check_import_names(&wasi).is_ok());
        // Imported types (a WIT world's own records) are not interfaces.
        let typed = wat(r#"(component (import "person" (type (sub resource))))"#);
        assert!(check_import_names(&typed).is_ok());
        // A nested component's imports are its parent's business, not the upload's.
        let nested = wat(r#"(component (component (import "acme:x/y" (instance))))"#);
        assert!(check_import_names(&nested).is_ok());
        // What does not parse is left to the compiler to describe.
        assert!(check_import_names(b"\0asm\x0d\0\x01\0garbage").is_ok());
    }
}
