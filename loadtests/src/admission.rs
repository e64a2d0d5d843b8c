//! `admission`: what authentication and rate limiting add to every request, measured on the
//! gateway's own parts in process: a key verified by argon2 once, then served from billing's
//! cache; the tenant's plan from its cache; the tenant's and the key's governor limiters. Set
//! beside the invocation latency of the `invoke` scenario, it shows their share of a request.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota};
use invicta_billing::{Billing, Scope};
use invicta_store::{Config, Store};

use crate::stats::{Summary, micros};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Requests to admit.
    #[arg(long, default_value_t = 100_000)]
    requests: usize,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(measure(args.requests.max(1)))
}

async fn measure(requests: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&Config::embedded_in(dir.path()))?;
    let (billing, _) = Billing::start(Default::default(), store, dir.path(), None).await?;
    let tenant = billing.create_tenant("bench", Some("unlimited")).await?;
    let (_, key) = billing
        .create_key(&tenant.id, Scope::ALL.to_vec(), String::new())
        .await?;

    // The first request verifies the key with argon2.
    let first = Instant::now();
    let principal = billing.authenticate(&key).await?;
    let first = first.elapsed();
    let tenant_id = principal
        .tenant
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the key has a tenant"))?;
    let plan = billing.plan_of(&tenant_id).await?;
    let quota =
        Quota::per_second(NonZeroU32::new(plan.requests_per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(plan.burst).unwrap_or(NonZeroU32::MIN));
    let (per_tenant, per_key) = (
        DefaultDirectRateLimiter::direct(quota),
        DefaultDirectRateLimiter::direct(quota),
    );

    let mut samples = Vec::with_capacity(requests);
    let mut limited = 0_usize;
    let start = Instant::now();
    for _ in 0..requests {
        let t = Instant::now();
        let principal = billing.authenticate(&key).await?;
        let tenant = principal.require(Scope::Invoke)?;
        let _plan = billing.plan_of(&tenant).await?;
        if per_tenant.check().is_err() || per_key.check().is_err() {
            limited += 1;
        }
        samples.push(t.elapsed());
    }
    let summary = Summary::of(&mut samples, start.elapsed());
    println!("admission bench: {requests} requests, cached key, plan `unlimited`");
    println!(
        "{:<48} {:>10} {:>10} {:>12}",
        "measurement", "p50 µs", "p99 µs", "per second"
    );
    println!(
        "{:<48} {:>10.1} {:>10} {:>12}",
        "first request: argon2id verify",
        micros(first),
        "",
        ""
    );
    println!(
        "{:<48} {:>10.2} {:>10.2} {:>12.0}",
        "every later request: cache, plan, 2 limiters",
        micros(summary.median),
        micros(summary.p99),
        summary.per_second
    );
    println!(
        "argon2 runs once per key per {} s; {limited} of {requests} requests were rate limited",
        Duration::from_millis(invicta_billing::Config::default().key_cache_ttl_ms).as_secs()
    );
    Ok(())
}
