//! The wasmtime engine every registry and executor builds the same way, so that a component
//! precompiled by the registry loads in any executor: its configuration ([`Config`]), the
//! functions a component exports ([`exports`]), and the JSON mapping of WIT values ([`values`]).
//!
//! **Boundary:** this crate compiles and describes components; only `services/executor` runs them.

pub mod exports;
pub mod values;

use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig};

pub use wasmtime;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configure the wasmtime engine: {0}")]
    Engine(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The engine's configuration: the same for every process that shares precompiled components.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Use the pooling instance allocator (default `true`): instantiation is about 3× faster
    /// than on demand, at the price of reserving address space for every slot up front.
    pub pooling: bool,
    /// Component instances the pool holds, i.e. active workers per executor (default 1000).
    /// Bounded in practice by `vm.max_map_count` (about 1,370 with the Linux default).
    pub pool_instances: u32,
    /// Core instances per component instance that the pool provisions (default 4: a Rust
    /// guest uses about 3).
    pub core_instances_per_component: u32,
    /// The linear memory of a pooled instance slot, in bytes (default 256 MiB): a worker whose
    /// plan allows at most this runs in the pool.
    pub memory_bytes_max: u64,
    /// The most linear memory a worker may have when its plan allows more than a pool slot, in
    /// bytes (default 4 GiB): such workers run in instances allocated on demand.
    pub memory_ceiling_bytes: u64,
    /// Fuel consumed between two yields to the async runtime (default 2,000,000: about 130 µs
    /// of a tight guest loop on our machines, which burn ~15 fuel per ns). Yields keep one busy
    /// guest from holding a thread and let the invocation deadline fire; each costs ~2 µs, so
    /// at 100,000 they took ~25% of a CPU-bound guest's time (measured by `make bench`).
    pub fuel_yield_interval: u64,
    /// Bytes of each pooled linear memory kept resident when its instance is freed (default
    /// 2 MiB): reset in place (only the pages touched, found with `PAGEMAP_SCAN` on Linux 6.7
    /// and later) rather than returned to the kernel, so the next instance in the slot takes
    /// no page faults and the machine no TLB shootdowns. What an instance per request costs
    /// is mostly that (measured by `make bench`'s `serve`).
    pub memory_keep_resident_bytes: u64,
    /// Compile uploads first with Winch, wasmtime's baseline compiler (default `true`): a
    /// component runs within about a fifth of Cranelift's compile time, in instances allocated
    /// on demand, while Cranelift compiles it again in the background; workers move to the
    /// optimized code at their next activation.
    pub baseline_tier: bool,
    /// The compiler of this engine's code: `cranelift` (the default) or `winch`. The baseline
    /// tier's engine is this engine's with `winch` and no pool.
    pub compiler: Compiler,
}

/// The code generator an engine compiles with.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compiler {
    /// Optimizing: slower to compile, faster to run.
    #[default]
    Cranelift,
    /// Baseline: several times faster to compile, slower to run.
    Winch,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pooling: true,
            pool_instances: 1_000,
            core_instances_per_component: 4,
            memory_bytes_max: 256 * 1024 * 1024,
            memory_ceiling_bytes: 4 * 1024 * 1024 * 1024,
            fuel_yield_interval: 2_000_000,
            memory_keep_resident_bytes: 2 * 1024 * 1024,
            baseline_tier: true,
            compiler: Compiler::Cranelift,
        }
    }
}

/// A configured engine and the fingerprint of its configuration.
#[derive(Clone)]
pub struct Engine {
    pub engine: wasmtime::Engine,
    /// The engine of instances larger than a pool slot, allocated on demand: the same code
    /// generation (its artifacts are the pooled engine's), another allocator. `None` without a
    /// pool, or when the ceiling is no larger than a slot.
    pub large: Option<wasmtime::Engine>,
    /// Identifies the engine's code-generation settings: precompiled artifacts are cached under
    /// the component's hash *and* this, since an engine rejects artifacts of another.
    pub fingerprint: String,
    pub config: Config,
    /// The baseline tier (Winch, instances on demand) that uploads are compiled with first,
    /// when the configuration asks for it.
    pub baseline: Option<Box<Engine>>,
}

impl Engine {
    pub fn new(config: &Config) -> Result<Engine> {
        let baseline = if config.baseline_tier && config.compiler == Compiler::Cranelift {
            Some(Box::new(Engine::new(&Config {
                compiler: Compiler::Winch,
                pooling: false,
                baseline_tier: false,
                ..config.clone()
            })?))
        } else {
            None
        };
        let engine = Self::build(config, config.pooling)?;
        let large = if config.pooling && config.memory_ceiling_bytes > config.memory_bytes_max {
            let large = Self::build(config, false)?;
            // Artifacts are shared only between engines that generate the same code.
            if compatibility(&large) == compatibility(&engine) {
                Some(large)
            } else {
                return Err(Error::Engine(
                    "the on-demand engine generates other code than the pooled one".into(),
                ));
            }
        } else {
            None
        };
        let fingerprint = format!(
            "wasmtime{}{}-{:016x}",
            wasmtime_version(),
            match config.compiler {
                Compiler::Cranelift => "",
                Compiler::Winch => "-winch",
            },
            compatibility(&engine)
        );
        Ok(Engine {
            engine,
            large,
            fingerprint,
            config: config.clone(),
            baseline,
        })
    }

    /// Whether `component` was compiled by the baseline tier.
    pub fn is_baseline(&self, component: &wasmtime::component::Component) -> bool {
        self.baseline
            .as_ref()
            .is_some_and(|b| wasmtime::Engine::same(component.engine(), &b.engine))
    }

    /// The most linear memory any worker may have: the ceiling, or a pool slot where instances
    /// are pooled and none is allocated on demand.
    pub fn memory_ceiling(&self) -> u64 {
        match (&self.large, self.config.pooling) {
            (Some(_), _) | (None, false) => self
                .config
                .memory_ceiling_bytes
                .max(self.config.memory_bytes_max),
            (None, true) => self.config.memory_bytes_max,
        }
    }

    /// Whether a worker with `memory` bytes at most runs on the on-demand engine.
    pub fn is_large(&self, memory: u64) -> bool {
        self.large.is_some() && memory > self.config.memory_bytes_max
    }

    fn build(config: &Config, pooling: bool) -> Result<wasmtime::Engine> {
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .wasm_threads(false)
            .parallel_compilation(true);
        match config.compiler {
            Compiler::Cranelift => {
                // Determinism: NaNs have one bit pattern whatever the CPU did.
                wasm.strategy(wasmtime::Strategy::Cranelift)
                    .cranelift_nan_canonicalization(true);
            }
            Compiler::Winch => {
                wasm.strategy(wasmtime::Strategy::Winch);
            }
        }
        if pooling {
            let instances = config.pool_instances.max(1);
            let memory = usize::try_from(config.memory_bytes_max).unwrap_or(usize::MAX);
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(instances)
                .total_core_instances(instances.saturating_mul(config.core_instances_per_component))
                .total_memories(instances.saturating_mul(2))
                .total_tables(instances.saturating_mul(config.core_instances_per_component))
                .total_stacks(instances)
                .max_memories_per_component(2)
                .max_core_instances_per_component(16)
                .max_memory_size(memory)
                .max_unused_warm_slots(instances / 10)
                .linear_memory_keep_resident(
                    usize::try_from(config.memory_keep_resident_bytes).unwrap_or(usize::MAX),
                )
                .table_keep_resident(64 * 1024)
                .pagemap_scan(wasmtime::Enabled::Auto);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        wasmtime::Engine::new(&wasm).map_err(|e| Error::Engine(format!("{e:#}")))
    }
}

/// A hash of what makes an engine's artifacts loadable by another.
fn compatibility(engine: &wasmtime::Engine) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

fn wasmtime_version() -> &'static str {
    // Part of the fingerprint for humans; the hash is what matters.
    "48"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_over_a_pool_slot_get_an_engine_sharing_the_pooled_artifacts() {
        let engine = Engine::new(&Config::default()).expect("the default engine");
        assert!(
            engine.large.is_some(),
            "an on-demand engine beside the pool"
        );
        assert_eq!(engine.memory_ceiling(), 4 * 1024 * 1024 * 1024);
        assert!(!engine.is_large(256 * 1024 * 1024));
        assert!(engine.is_large(256 * 1024 * 1024 + 1));
        let small = Engine::new(&Config {
            memory_ceiling_bytes: 0,
            ..Config::default()
        })
        .expect("an engine without on-demand instances");
        assert!(small.large.is_none());
        assert_eq!(small.memory_ceiling(), 256 * 1024 * 1024);
    }
}
