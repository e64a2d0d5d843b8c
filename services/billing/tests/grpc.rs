//! Billing over gRPC: a `Billing` connected to the billing role answers every call as the local
//! one does (plans with their decimal prices, tenants, keys, usage, invoices), refuses with the
//! same codes, and keeps its own key cache.

use invicta_billing::grpc::BillingService;
use invicta_billing::{Billing, Config, Error, Granularity, Scope};
use invicta_model::{TenantId, usage};
use invicta_store::Store;

/// Serves `billing` on a free loopback port; returns its address.
async fn serve(billing: Billing) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BillingService::new(billing))
            .serve_with_incoming(incoming),
    );
    Ok(format!("http://{addr}"))
}

fn code<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Ok(value) => format!("ok: {value:?}"),
        Err(e) => e.code().to_string(),
    }
}

#[tokio::test]
async fn a_connected_billing_answers_as_the_local_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&invicta_store::Config::embedded_in(dir.path()))?;
    let (local, _) = Billing::start(Config::default(), store.clone(), dir.path(), None).await?;
    let remote = Billing::connect(Config::default(), &serve(local.clone()).await?)?;

    // Plans, with exact decimal prices and an egress list, both ways.
    assert_eq!(remote.plans().await?, local.plans().await?);
    let mut plan = remote.plan("pro").await?;
    plan.name = "metered".into();
    plan.prices.per_gb_hour = "0.000123".parse()?;
    plan.prices.base_monthly = "12.50".parse()?;
    plan.egress_hosts = Some(vec!["api.example.com".into()]);
    assert_eq!(remote.put_plan(plan.clone()).await?, plan);
    assert_eq!(local.plan("metered").await?, plan);
    let mut broken = plan.clone();
    broken.requests_per_second = 0;
    assert_eq!(code(remote.put_plan(broken).await), "invalid_request");
    assert_eq!(code(remote.plan("nope").await), "plan_not_found");

    // Tenants.
    let tenant = remote.create_tenant("acme", Some("metered")).await?;
    assert_eq!(local.tenant(&tenant.id).await?, tenant);
    assert_eq!(
        code(remote.create_tenant("acme", None).await),
        "tenant_exists"
    );
    assert_eq!(
        code(remote.create_tenant("other", Some("nope")).await),
        "plan_not_found"
    );
    assert_eq!(code(remote.tenant("tmissing").await), "tenant_not_found");
    assert_eq!(remote.tenants().await?, local.tenants().await?);
    let id = TenantId::new(tenant.id.clone())?;
    assert_eq!(remote.plan_of(&id).await?, plan);
    let moved = remote.set_plan(&tenant.id, "free").await?;
    assert_eq!(moved.plan, "free");
    assert_eq!(
        remote.plan_of(&id).await?.name,
        "free",
        "the cache was dropped"
    );

    // Keys: made there, verified there, cached here; revoked through the connected billing.
    let (info, secret) = remote
        .create_key(&tenant.id, vec![Scope::Read, Scope::Invoke], "ci".into())
        .await?;
    assert_eq!(info.scopes, vec![Scope::Invoke, Scope::Read]);
    assert_eq!(
        remote.keys(&tenant.id).await?,
        local.keys(&tenant.id).await?
    );
    let principal = remote.authenticate(&secret).await?;
    assert_eq!(principal, local.authenticate(&secret).await?);
    assert_eq!(principal.tenant, Some(id.clone()));
    assert!(!principal.operator);
    let wrong = format!("inv_{}_{}", info.id, "0".repeat(64));
    assert_eq!(code(remote.authenticate(&wrong).await), "unauthorized");
    assert_eq!(code(remote.authenticate("inv_x").await), "unauthorized");
    assert_eq!(
        code(remote.revoke_key("tother", &info.id).await),
        "key_not_found",
        "another tenant's key is not found"
    );
    assert!(remote.revoke_key(&tenant.id, &info.id).await?.revoked);
    assert_eq!(code(remote.authenticate(&secret).await), "unauthorized");

    // Usage, reports, stored bytes and invoices, from the ledger the executors write.
    let hour = usage::hour_of(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64,
    );
    let (t, month) = (tenant.id.clone(), invicta_billing::this_month());
    let (ledger, monthly, count, stored) = (
        usage::ledger_key(&t, hour, "counter", usage::INVOCATIONS),
        usage::month_key(&t, usage::INVOCATIONS, &month),
        usage::count_key(&t, usage::WORKERS),
        usage::stored_key(&t, "counter", usage::OPLOG_BYTES),
    );
    store
        .transact(move |tx| {
            tx.atomic_add(&ledger, 1_234_567)?;
            tx.atomic_add(&monthly, 1_234_567)?;
            tx.atomic_add(&count, 3)?;
            tx.atomic_add(&stored, 4_096)
        })
        .await?;
    assert_eq!(
        remote.usage(&t, usage::INVOCATIONS, &month).await?,
        1_234_567
    );
    assert_eq!(remote.count(&t, usage::WORKERS).await?, 3);
    assert_eq!(remote.stored(&t).await?, local.stored(&t).await?);
    assert_eq!(
        remote.stored(&t).await?.get(usage::OPLOG_BYTES),
        Some(&4_096)
    );
    for granularity in [Granularity::Hour, Granularity::Day, Granularity::Month] {
        let rows = remote.report(&t, hour, hour + 1, granularity).await?;
        assert_eq!(rows, local.report(&t, hour, hour + 1, granularity).await?);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].invocations, 1_234_567);
    }
    remote.set_plan(&t, "metered").await?;
    let invoice = remote.invoice(&t, &month).await?;
    assert_eq!(invoice, local.invoice(&t, &month).await?);
    assert_eq!(
        invoice.total,
        "12.50".parse::<rust_decimal::Decimal>()?
            + invoice.lines[1..]
                .iter()
                .map(|l| l.amount)
                .sum::<rust_decimal::Decimal>()
    );
    assert_eq!(code(remote.invoice(&t, "2026-13").await), "invalid_request");
    // Only the billing role accrues storage.
    assert_eq!(remote.accrue_storage(hour).await?, 0);
    Ok(())
}

#[tokio::test]
async fn without_the_billing_role_calls_are_unavailable() -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    let remote = Billing::connect(Config::default(), &format!("http://{addr}"))?;
    assert_eq!(code(remote.tenants().await), "unavailable");
    let key = format!("inv_{}_{}", "a".repeat(12), "b".repeat(64));
    assert_eq!(code(remote.authenticate(&key).await), "unavailable");
    assert!(Billing::connect(Config::default(), "not a url").is_err());
    Ok(())
}
