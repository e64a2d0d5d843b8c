//! `invicta server`: configuration (defaults, then a TOML file, then `INVICTA_…` variables, then
//! flags) and the all-in-one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the public HTTP API listens [default: 127.0.0.1:8080]
    #[arg(long, env = "INVICTA_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where the embedded store and local blobs live [default: ./.invicta]
    #[arg(long, env = "INVICTA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A TOML configuration file; flags and INVICTA_* variables override it
    #[arg(long, env = "INVICTA_CONFIG")]
    config: Option<PathBuf>,
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
        if let Some(dir) = &args.data_dir {
            config.data_dir = Some(dir.clone());
        }
        Ok(config)
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
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("create data directory {}", data_dir.display()))?;
    let store_config = config
        .store
        .clone()
        .unwrap_or_else(|| invicta_store::Config::embedded_in(&data_dir));
    let store = invicta_store::Store::open(&store_config).context("open the store")?;
    let blob_config = config
        .blobs
        .clone()
        .unwrap_or_else(|| invicta_blob::Config::local_in(&data_dir));
    let blobs = invicta_blob::BlobStore::open(&blob_config)
        .await
        .context("open the blob store")?;

    let engine = invicta_engine::Engine::new(&config.engine).context("configure the engine")?;
    let import_check = invicta_executor::Executor::import_check(&engine).context("link WASI")?;
    let registry = invicta_component_registry::Registry::new(
        config.registry.clone(),
        store.clone(),
        blobs.clone(),
        engine.clone(),
        import_check,
    );
    let executor = invicta_executor::Executor::start(
        config.executor.clone(),
        store.clone(),
        registry.clone(),
        engine,
    )
    .await
    .context("start the executor")?;
    let preset = std::env::var("INVICTA_OPERATOR_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let (billing, fresh_operator_key) =
        invicta_billing::Billing::start(config.billing.clone(), store.clone(), &data_dir, preset)
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
    let gateway = invicta_gateway::Service::bind(
        &config.gateway,
        invicta_gateway::Backends {
            store,
            blobs,
            registry,
            executor,
            billing,
        },
    )
    .await?;
    let addr = gateway.local_addr()?;
    tracing::info!(%addr, data_dir = %data_dir.display(), "invicta server started");
    // The one line a user running `make run` looks for; scripts read it to find the port.
    println!(
        "invicta listening on http://{addr} (data in {})",
        data_dir.display()
    );
    gateway.run(shutdown_signal()).await?;
    tracing::info!("invicta server stopped");
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
