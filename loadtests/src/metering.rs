//! The price of metering, measured in process with wasmtime directly: the burner's `burn`
//! export under three engine configurations, so that the server's always-on fuel can be
//! compared with code that pays nothing for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::component::{Component, Func, Linker, ResourceTable, Val};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// How the engine bounds guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metering {
    /// Nothing: the limit.
    None,
    /// Fuel, yielding to the async runtime every 100,000 units, as the server does.
    Fuel,
    /// Fuel as above, plus epoch interruption ticked every 10 ms by a thread.
    FuelEpoch,
}

impl Metering {
    pub fn label(self) -> &'static str {
        match self {
            Metering::None => "no metering",
            Metering::Fuel => "fuel",
            Metering::FuelEpoch => "fuel + epoch",
        }
    }
}

struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The burner instantiated in an engine with some metering, warm, ready to be timed.
pub struct Burner {
    pub metering: Metering,
    store: Store<Host>,
    burn: Func,
    stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Burner {
    /// Compiles `wasm` (the burner) for an engine with `metering`, instantiates it and warms it
    /// with a short call.
    pub async fn new(wasm: &[u8], metering: Metering) -> anyhow::Result<Burner> {
        let fuel = metering != Metering::None;
        let epoch = metering == Metering::FuelEpoch;
        let mut config = wasmtime::Config::new();
        // The server's code-generation settings, minus what is being measured.
        config
            .wasm_component_model(true)
            .cranelift_nan_canonicalization(true)
            .wasm_threads(false)
            .consume_fuel(fuel)
            .epoch_interruption(epoch);
        let engine = Engine::new(&config)?;
        let component = Component::new(&engine, wasm)
            .map_err(|e| anyhow::anyhow!("compile the burner: {e:#}"))?;
        let mut linker = Linker::<Host>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        let pre = linker.instantiate_pre(&component)?;

        let mut store = Store::new(
            &engine,
            Host {
                wasi: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
            },
        );
        if fuel {
            store.set_fuel(u64::MAX / 2)?;
            // The server's own interval, so that this is the metering it pays.
            store.fuel_async_yield_interval(Some(
                invicta_engine::Config::default().fuel_yield_interval,
            ))?;
        }
        if epoch {
            // The epoch stays at 0 until the ticker starts, below.
            store.set_epoch_deadline(1);
            store.epoch_deadline_async_yield_and_update(1);
        }
        let instance = pre.instantiate_async(&mut store).await?;
        let burn = instance
            .get_func(&mut store, "burn")
            .context("the burner exports no `burn`")?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = epoch.then(|| {
            let (weak, stop) = (engine.weak(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
        });
        // From here on, dropping the burner stops the ticker.
        let mut burner = Burner {
            metering,
            store,
            burn,
            stop,
            ticker,
        };
        burner.call(1_000).await?;
        Ok(burner)
    }

    /// Times one call of `burn(iterations)`; returns its duration and result.
    pub async fn call(&mut self, iterations: u64) -> anyhow::Result<(Duration, u64)> {
        let mut results = [Val::U64(0)];
        let start = Instant::now();
        self.burn
            .call_async(&mut self.store, &[Val::U64(iterations)], &mut results)
            .await?;
        let took = start.elapsed();
        match results[0] {
            Val::U64(n) => Ok((took, n)),
            ref other => anyhow::bail!("burn returned {other:?}"),
        }
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}
