//! `invicta server`: configuration (defaults, then a TOML file, then `INVICTA_…` variables, then
//! flags) and the all-in-one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the public HTTP API listens [default: 127.0.0.1:8080]
    #[arg(long, env = "INVICTA_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where tenants' public routes are served, apart from the API [default: not served]
    #[arg(long, env = "INVICTA_PUBLIC_LISTEN")]
    public_listen: Option<SocketAddr>,
    /// Where the embedded store and local blobs live [default: ./.invicta]
    #[arg(long, env = "INVICTA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A TOML configuration file; flags and INVICTA_* variables override it
    #[arg(long, env = "INVICTA_CONFIG")]
    config: Option<PathBuf>,
    /// What this process runs: `all` (every service, one process), or any of `gateway`,
    /// `registry`, `billing`, `scheduler` and `executor`, which find each other over gRPC and
    /// share the store
    #[arg(
        long,
        env = "INVICTA_ROLE",
        value_delimiter = ',',
        default_value = "all"
    )]
    role: Vec<Role>,
    /// The address other processes reach this executor's gRPC service at (e.g.
    /// `http://10.1.2.3:7200` in a pod) [default: http:// and the address it listens on]
    #[arg(long, env = "INVICTA_ADVERTISE")]
    advertise: Option<String>,
    /// The first time, make a `demo` tenant (its key in the data directory) with this component
    /// uploaded as `counter` and a worker that ran once, and say where to sign in to the
    /// console (what `make run` does; all-in-one only)
    #[arg(long, env = "INVICTA_DEMO", value_name = "COMPONENT")]
    demo: Option<PathBuf>,
}

impl Args {
    /// The process's name in traces: `invicta`, or `invicta-` and its roles
    /// (`invicta-gateway`, `invicta-scheduler+executor`).
    pub fn service_name(&self) -> String {
        if self.role.contains(&Role::All) {
            return "invicta".into();
        }
        let roles: Vec<String> = self
            .role
            .iter()
            .filter_map(clap::ValueEnum::to_possible_value)
            .map(|v| v.get_name().to_string())
            .collect();
        format!("invicta-{}", roles.join("+"))
    }
}

/// A part of Invicta a process may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Every service in this process: the gateway with the registry, billing and one executor
    /// that owns every shard.
    All,
    /// The public HTTP API. Worker calls go to the executor that owns the worker, found
    /// through the scheduler; component calls go to the registry role when `[grpc] registry`
    /// names one, and billing calls to the billing role when `[grpc] billing` does.
    Gateway,
    /// The component registry: validates, precompiles and stores components (gRPC).
    Registry,
    /// Billing: tenants, plans, API keys, usage and invoices (gRPC); it makes the operator key
    /// and samples stored bytes into the ledger.
    Billing,
    /// The worker scheduler: executor membership, shard leases, failover (gRPC).
    Scheduler,
    /// An executor: runs the workers of the shards the scheduler grants it (gRPC).
    Executor,
}

/// The whole server's configuration, one section per service.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory for the default store and blob backends. Default `./.invicta`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub gateway: invicta_gateway::Config,
    /// The transactional store. Default: the embedded store at `<data_dir>/store.sqlite`.
    #[serde(default)]
    pub store: Option<invicta_store::Config>,
    /// The blob store. Default: a local directory at `<data_dir>/blobs`.
    #[serde(default)]
    pub blobs: Option<invicta_blob::Config>,
    #[serde(default)]
    pub engine: invicta_engine::Config,
    #[serde(default)]
    pub registry: invicta_component_registry::Config,
    #[serde(default)]
    pub executor: invicta_executor::Config,
    #[serde(default)]
    pub billing: invicta_billing::Config,
    /// The scheduler role: where its gRPC service listens, and how long leases last.
    #[serde(default)]
    pub scheduler: SchedulerSection,
    /// Where roles serve gRPC and find each other.
    #[serde(default)]
    pub grpc: GrpcSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSection {
    /// Where the scheduler's gRPC service listens (default 127.0.0.1:7100).
    pub listen: SocketAddr,
    /// How long an executor's membership and shard leases last without a heartbeat (default
    /// 10,000 ms): a dead executor's workers move after it.
    pub lease_ms: u64,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        SchedulerSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7100)),
            lease_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSection {
    /// Where an executor's gRPC service listens (default 127.0.0.1:7200).
    pub executor_listen: SocketAddr,
    /// The scheduler's gRPC address (default http://127.0.0.1:7100).
    pub scheduler: String,
    /// The address an executor registers, when other processes reach it by another address
    /// than the one it listens on (default: `http://` and that address).
    pub advertise: Option<String>,
    /// Where the registry role's gRPC service listens (default 127.0.0.1:7300).
    pub registry_listen: SocketAddr,
    /// The registry role's gRPC address, for the processes that do not run it (default: none,
    /// each process uses the registry as a library over the shared store).
    pub registry: Option<String>,
    /// Where the billing role's gRPC service listens (default 127.0.0.1:7400).
    pub billing_listen: SocketAddr,
    /// The billing role's gRPC address, for a gateway that does not run it (default: none, the
    /// gateway uses billing as a library over the shared store).
    pub billing: Option<String>,
    /// A secret every internal gRPC call must carry, the same for every role (default: none,
    /// calls are not checked). `INVICTA_GRPC_TOKEN` sets it without writing it in a file.
    pub token: Option<String>,
}

impl Default for GrpcSection {
    fn default() -> Self {
        GrpcSection {
            executor_listen: SocketAddr::from(([127, 0, 0, 1], 7200)),
            scheduler: "http://127.0.0.1:7100".into(),
            advertise: None,
            registry_listen: SocketAddr::from(([127, 0, 0, 1], 7300)),
            registry: None,
            billing_listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            billing: None,
            token: None,
        }
    }
}

impl Config {
    fn load(args: &Args) -> anyhow::Result<Config> {
        let mut config = match &args.config {
            Some(path) => read_config(path)?,
            None => Config::default(),
        };
        if let Some(listen) = args.listen {
            config.gateway.listen = listen;
        }
        if let Some(listen) = args.public_listen {
            config.gateway.public_listen = Some(listen);
        }
        if let Some(dir) = &args.data_dir {
            config.data_dir = Some(dir.clone());
        }
        if let Some(advertise) = &args.advertise {
            config.grpc.advertise = Some(advertise.clone());
        }
        if let Ok(token) = std::env::var("INVICTA_GRPC_TOKEN")
            && !token.is_empty()
        {
            config.grpc.token = Some(token);
        }
        Ok(config)
    }

    /// The executor's configuration, its secrets key in the data directory unless set.
    fn executor(&self) -> invicta_executor::Config {
        let mut executor = self.executor.clone();
        if executor.secrets_key_file.is_none() {
            executor.secrets_key_file = Some(self.data_dir().join("secrets.key"));
        }
        if executor.worker_files_dir.is_none() {
            executor.worker_files_dir = Some(self.data_dir().join("worker-files"));
        }
        executor
    }

    fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".invicta"))
    }
}

fn read_config(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parse config file {}", path.display()))
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    // The OTLP exporter's gRPC channel is made on the runtime; dropped before it, it flushes.
    let _runtime = runtime.enter();
    let _telemetry = invicta_telemetry::init(args.service_name());
    if args.role.contains(&Role::All) {
        anyhow::ensure!(
            args.role.len() == 1,
            "--role all runs every service; it cannot be combined with other roles"
        );
        return runtime.block_on(run(config, args.demo.clone()));
    }
    runtime.block_on(run_roles(config, &args.role))
}

/// Checks the cluster's token on every call to a role's gRPC service, when one is configured.
#[derive(Clone)]
struct Guard(Option<invicta_telemetry::propagation::RequireToken>);

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(require) => require.call(request),
            None => Ok(request),
        }
    }
}

/// Some of the roles, in one process, reaching the others over gRPC.
async fn run_roles(config: Config, roles: &[Role]) -> anyhow::Result<()> {
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("create data directory {}", data_dir.display()))?;
    let store = open_store(&config, &data_dir)?;
    let guard = match &config.grpc.token {
        Some(token) => {
            invicta_telemetry::propagation::set_token(token)
                .map_err(|e| anyhow::anyhow!("[grpc] token: {e}"))?;
            Guard(Some(
                invicta_telemetry::propagation::RequireToken::new(token)
                    .map_err(|e| anyhow::anyhow!("[grpc] token: {e}"))?,
            ))
        }
        None => Guard(None),
    };
    let mut servers = tokio::task::JoinSet::new();
    if roles.contains(&Role::Scheduler) {
        let lease = std::time::Duration::from_millis(config.scheduler.lease_ms.max(1));
        let scheduler = invicta_worker_scheduler::Scheduler::new(store.clone(), lease);
        scheduler.spawn();
        let service = invicta_worker_scheduler::grpc::SchedulerService::new(scheduler);
        serve_grpc(
            &mut servers,
            config.scheduler.listen,
            Routes::new(InterceptedService::new(service, guard.clone())),
            "scheduler",
        )
        .await?;
    }
    let mut billing = None;
    if roles.contains(&Role::Billing) {
        let local = start_billing(&config, &data_dir, store.clone()).await?;
        let service = invicta_billing::grpc::BillingService::new(local.clone());
        serve_grpc(
            &mut servers,
            config.grpc.billing_listen,
            Routes::new(InterceptedService::new(service, guard.clone())),
            "billing",
        )
        .await?;
        billing = Some(local);
    }
    if !roles
        .iter()
        .any(|r| matches!(r, Role::Executor | Role::Gateway | Role::Registry))
    {
        return serve_until_done(servers).await;
    }
    let blobs = open_blobs(&config, &data_dir).await?;
    // The registry's data is in the shared store and blobs: an executor compiles what it runs.
    let (engine, registry) = engine_and_registry(&config, &store, &blobs)?;
    if roles.contains(&Role::Registry) {
        let service = invicta_component_registry::grpc::RegistryService::new(registry.clone());
        serve_grpc(
            &mut servers,
            config.grpc.registry_listen,
            Routes::new(InterceptedService::new(service, guard.clone())),
            "registry",
        )
        .await?;
    } else if let Some(address) = &config.grpc.registry {
        registry
            .route_through(address)
            .with_context(|| format!("the registry address {address}"))?;
    }
    if !roles.contains(&Role::Executor) && !roles.contains(&Role::Gateway) {
        return serve_until_done(servers).await;
    }
    // Without the executor role it owns no shard: every worker call is routed to its owner.
    let executor = invicta_executor::Executor::start(
        invicta_executor::Config {
            placement: invicta_executor::Placement::Scheduler,
            ..config.executor()
        },
        store.clone(),
        registry.clone(),
        engine,
    )
    .await
    .context("start the executor")?;
    let scheduler = invicta_worker_scheduler::grpc::SchedulerClient::new(&config.grpc.scheduler)
        .with_context(|| format!("the scheduler address {}", config.grpc.scheduler))?;
    executor.route_through(scheduler.clone());
    if roles.contains(&Role::Executor) {
        let service = invicta_executor::grpc::ExecutorService::new(executor.clone());
        let membership = Arc::new(Membership::default());
        // On SIGTERM the executor hands its shards off and keeps serving until they are gone.
        let shutdown = {
            let (executor, membership) = (executor.clone(), membership.clone());
            async move {
                shutdown_signal().await;
                leave(&executor, &membership).await;
            }
        };
        let addr = serve_grpc_until(
            &mut servers,
            config.grpc.executor_listen,
            Routes::new(InterceptedService::new(service, guard.clone())),
            "executor",
            shutdown,
        )
        .await?;
        let advertised = config
            .grpc
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        tokio::spawn(heartbeats(
            executor.clone(),
            scheduler.clone(),
            advertised,
            membership,
        ));
    }
    if roles.contains(&Role::Gateway) {
        let billing = match (billing, &config.grpc.billing) {
            (Some(local), _) => local,
            (None, Some(address)) => {
                invicta_billing::Billing::connect(config.billing.clone(), address)
                    .with_context(|| format!("the billing address {address}"))?
            }
            (None, None) => start_billing(&config, &data_dir, store.clone()).await?,
        };
        let gateway = bind_gateway(&config, store, blobs, registry, executor, billing).await?;
        let addr = gateway.local_addr()?;
        announce_public(&gateway)?;
        servers.spawn(async move { Ok(gateway.run(shutdown_signal()).await?) });
        println!("invicta listening on http://{addr} (role: gateway)");
    }
    serve_until_done(servers).await
}

async fn serve_until_done(
    mut servers: tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    while let Some(done) = servers.join_next().await {
        done.context("a role's server task")??;
    }
    Ok(())
}

/// Serves a role's gRPC service on `listen` until shutdown, and says where, as the all-in-one
/// server does; returns the address bound.
async fn serve_grpc(
    servers: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    listen: SocketAddr,
    routes: Routes,
    role: &'static str,
) -> anyhow::Result<SocketAddr> {
    serve_grpc_until(servers, listen, routes, role, shutdown_signal()).await
}

/// [`serve_grpc`] until `shutdown` resolves.
async fn serve_grpc_until(
    servers: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    listen: SocketAddr,
    routes: Routes,
    role: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    let addr = listener.local_addr()?;
    servers.spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(tokio_stream_of(listener), shutdown)
            .await
            .with_context(|| format!("serve the {role}"))
    });
    println!("invicta listening on http://{addr} (role: {role})");
    Ok(addr)
}

/// Accepted connections of a bound listener, for tonic.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

/// What an executor's heartbeat loop shares with its shutdown.
#[derive(Default)]
struct Membership {
    /// Shutting down: the heartbeats say so, and the scheduler hands every shard off.
    leaving: AtomicBool,
    /// The lease the scheduler gave at registration, in milliseconds (0 before).
    lease_ms: AtomicU64,
    /// The last heartbeat said no other executor could take a shard.
    alone: AtomicBool,
    /// Heartbeat now.
    wake: tokio::sync::Notify,
}

/// Leaves the cluster gracefully: asks for every shard to be handed off and waits until the
/// executor holds none (each drained: what ran finished and committed here). Gives up at once
/// when the scheduler says no other executor could take a shard, when nothing was taken after
/// a lease, or after three leases; the shards left then move when their leases run out.
async fn leave(executor: &invicta_executor::Executor, membership: &Membership) {
    membership.leaving.store(true, Ordering::Release);
    // Known again from the heartbeat that says it is leaving, made at once.
    membership.alone.store(false, Ordering::Release);
    membership.wake.notify_one();
    let lease =
        std::time::Duration::from_millis(membership.lease_ms.load(Ordering::Acquire).max(1_000));
    let started = std::time::Instant::now();
    let held = executor.shards().len();
    tracing::info!(shards = held, "leaving: handing every shard off");
    loop {
        let left = executor.shards().len();
        if left == 0 {
            tracing::info!("every shard handed off");
            return;
        }
        // Only a heartbeat that said it is leaving counts, and not while shards are on their
        // way out (someone is taking them).
        if membership.alone.load(Ordering::Acquire)
            && executor.draining().is_empty()
            && executor.released().is_empty()
        {
            tracing::warn!(
                shards = left,
                "leaving with no other executor to take the shards: they move when one comes"
            );
            return;
        }
        let untouched =
            left == held && executor.released().is_empty() && executor.draining().is_empty();
        if (untouched && started.elapsed() > lease) || started.elapsed() > lease * 3 {
            tracing::warn!(
                shards = left,
                "leaving with shards not handed off: they move when their leases run out"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Registers the executor with the scheduler and heartbeats a third of a lease apart (and at
/// once when a shard is drained or the executor starts leaving), applying the shards each
/// heartbeat grants; until the process ends.
async fn heartbeats(
    executor: invicta_executor::Executor,
    scheduler: invicta_worker_scheduler::grpc::SchedulerClient,
    address: String,
    membership: Arc<Membership>,
) {
    let id = executor.id().to_string();
    let mut every = std::time::Duration::from_secs(1);
    let mut registered = false;
    let mut incoming = false;
    loop {
        if !registered {
            match scheduler.register(&id, &address).await {
                Ok(lease) => {
                    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
                    membership.lease_ms.store(lease_ms, Ordering::Release);
                    every = (lease / 3).max(std::time::Duration::from_millis(10));
                    registered = true;
                    tracing::info!(executor = %id, "registered with the scheduler");
                }
                Err(e) => tracing::warn!(error = %e, "register with the scheduler"),
            }
        }
        if registered {
            let leaving = membership.leaving.load(Ordering::Acquire);
            match scheduler
                .heartbeat(&id, &executor.released(), leaving)
                .await
            {
                Ok(beat) => {
                    membership
                        .alone
                        .store(beat.alone && leaving, Ordering::Release);
                    if let Err(e) = executor.set_shards(&beat.shards).await {
                        tracing::warn!(error = %e, "apply shard grants");
                    }
                    incoming = beat.incoming > 0;
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    // The membership expired (a long pause): whatever it held is gone.
                    if let Err(e) = executor.set_shards(&[]).await {
                        tracing::warn!(error = %e, "give up shards");
                    }
                    registered = false;
                    incoming = false;
                    continue;
                }
                Err(e) => {
                    incoming = false;
                    tracing::warn!(error = %e, "heartbeat");
                }
            }
        }
        // A drained shard is released at once, and a shard on its way here is taken as soon as
        // it is released: the calls for its workers wait meanwhile.
        let pause = if incoming {
            (every / 8).max(std::time::Duration::from_millis(10))
        } else {
            every
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = executor.release_ready() => {}
            () = membership.wake.notified() => {}
        }
    }
}

async fn run(config: Config, demo: Option<PathBuf>) -> anyhow::Result<()> {
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("create data directory {}", data_dir.display()))?;
    let store = open_store(&config, &data_dir)?;
    let blobs = open_blobs(&config, &data_dir).await?;
    let (engine, registry) = engine_and_registry(&config, &store, &blobs)?;
    let executor = invicta_executor::Executor::start(
        config.executor(),
        store.clone(),
        registry.clone(),
        engine,
    )
    .await
    .context("start the executor")?;
    let billing = start_billing(&config, &data_dir, store.clone()).await?;
    let gateway = bind_gateway(&config, store, blobs, registry, executor.clone(), billing).await?;
    let addr = gateway.local_addr()?;
    announce_public(&gateway)?;
    tracing::info!(%addr, data_dir = %data_dir.display(), "invicta server started");
    if demo.is_none() {
        println!("console on http://{addr}/console");
    }
    // The one line a user running `make run` looks for; scripts read it to find the port.
    println!(
        "invicta listening on http://{addr} (data in {})",
        data_dir.display()
    );
    if let Some(component) = demo {
        // The listener is bound: the demo's calls wait in its backlog until it serves.
        tokio::spawn(crate::demo::seed(
            format!("http://{addr}"),
            data_dir.clone(),
            component,
        ));
    }
    gateway.run(shutdown_signal()).await?;
    executor.stop().await;
    tracing::info!("invicta server stopped");
    Ok(())
}

/// The engine, and the registry over the store and blobs, compiling for it.
fn engine_and_registry(
    config: &Config,
    store: &invicta_store::Store,
    blobs: &invicta_blob::BlobStore,
) -> anyhow::Result<(invicta_engine::Engine, invicta_component_registry::Registry)> {
    let engine = invicta_engine::Engine::new(&config.engine).context("configure the engine")?;
    let import_check = invicta_executor::Executor::import_check(&engine).context("link WASI")?;
    // Compiles run in child processes of this binary, which the compile deadline can stop.
    let mut registry_config = config.registry.clone();
    registry_config.compiler = std::env::current_exe().ok();
    let registry = invicta_component_registry::Registry::new(
        registry_config,
        store.clone(),
        blobs.clone(),
        engine.clone(),
        import_check,
    );
    Ok((engine, registry))
}

fn open_store(config: &Config, data_dir: &Path) -> anyhow::Result<invicta_store::Store> {
    let store_config = config
        .store
        .clone()
        .unwrap_or_else(|| invicta_store::Config::embedded_in(data_dir));
    invicta_store::Store::open(&store_config).context("open the store")
}

async fn open_blobs(config: &Config, data_dir: &Path) -> anyhow::Result<invicta_blob::BlobStore> {
    let blob_config = config
        .blobs
        .clone()
        .unwrap_or_else(|| invicta_blob::Config::local_in(data_dir));
    invicta_blob::BlobStore::open(&blob_config)
        .await
        .context("open the blob store")
}

/// Starts billing over the store, printing the operator key if it made one, and its sampler
/// of stored bytes.
async fn start_billing(
    config: &Config,
    data_dir: &Path,
    store: invicta_store::Store,
) -> anyhow::Result<invicta_billing::Billing> {
    let preset = std::env::var("INVICTA_OPERATOR_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let (billing, fresh_operator_key) =
        invicta_billing::Billing::start(config.billing.clone(), store, data_dir, preset)
            .await
            .context("start billing")?;
    billing.spawn_storage_sampler();
    if let Some(key) = fresh_operator_key {
        // Shown once; it is also in the data directory, readable by its owner only.
        println!(
            "operator key (shown once; also in {}): {key}",
            data_dir.join(invicta_billing::OPERATOR_KEY_FILE).display()
        );
    }
    Ok(billing)
}

/// Binds the public API.
async fn bind_gateway(
    config: &Config,
    store: invicta_store::Store,
    blobs: invicta_blob::BlobStore,
    registry: invicta_component_registry::Registry,
    executor: invicta_executor::Executor,
    billing: invicta_billing::Billing,
) -> anyhow::Result<invicta_gateway::Service> {
    Ok(invicta_gateway::Service::bind(
        &config.gateway,
        invicta_gateway::Backends {
            store,
            blobs,
            registry,
            executor,
            billing,
        },
    )
    .await?)
}

/// Says where public routes are served, before the line that says where the API is (scripts
/// read both).
fn announce_public(gateway: &invicta_gateway::Service) -> anyhow::Result<()> {
    if let Some(public) = gateway.public_addr()? {
        tracing::info!(%public, "public routes served");
        println!("invicta public routes on http://{public}");
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every configuration in `infra/` is one the server reads (unknown keys are refused),
    /// including the one inside the Kubernetes manifests.
    #[test]
    fn the_infra_configurations_parse() -> anyhow::Result<()> {
        let infra = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra");
        let mut files = Vec::new();
        for dir in [infra.clone(), infra.join("processes")] {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "toml") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() >= 5, "{files:?}");
        for path in &files {
            read_config(path)?;
        }
        // The ConfigMap's `invicta.toml: |` block, indented by four spaces.
        let manifest = std::fs::read_to_string(infra.join("k8s/config.yaml"))?;
        let embedded: String = manifest
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("invicta.toml: |"))
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        let config: Config = toml::from_str(&embedded)?;
        assert_eq!(config.grpc.scheduler, "http://invicta-scheduler:7100");
        Ok(())
    }
}
