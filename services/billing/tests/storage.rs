//! Storage is billed by the hour: each hour is accrued once, at the bytes stored when it was
//! first sampled, however many samplers run and whatever order their clocks say.

use invicta_billing::{Billing, Config, Granularity, STORAGE_BACKFILL_HOURS};
use invicta_model::usage;
use invicta_store::Store;
use rust_decimal::Decimal;

async fn store_bytes(store: &Store, tenant: &str, component: &str, kind: &str, bytes: i64) {
    let key = usage::stored_key(tenant, component, kind);
    store
        .transact(move |tx| tx.atomic_add(&key, bytes))
        .await
        .expect("add stored bytes");
}

fn storage_of(rows: &[invicta_billing::UsageRow], component: &str) -> Vec<u64> {
    rows.iter()
        .filter(|r| r.component == component)
        .map(|r| r.storage_byte_hours)
        .collect()
}

#[tokio::test]
async fn each_hour_is_accrued_once_at_its_first_sample() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&invicta_store::Config::embedded_in(dir.path()))?;
    let (billing, _) = Billing::start(Config::default(), store.clone(), dir.path(), None).await?;
    // A second billing process on the same store samples too.
    let (other, _) = Billing::start(Config::default(), store.clone(), dir.path(), None).await?;
    let mut plan = billing.plan("pro").await?;
    plan.name = "storage".into();
    plan.prices.per_gb_hour = "2.5".parse()?;
    billing.put_plan(plan).await?;
    let t = billing.create_tenant("keeper", Some("storage")).await?.id;
    let quiet = billing.create_tenant("quiet", None).await?.id;

    // An hour in 2027-01.
    let h0 = 500_000_u64;
    store_bytes(&store, &t, "a", usage::COMPONENT_BYTES, 1_000_000).await;
    store_bytes(&store, &t, "b", usage::OPLOG_BYTES, 500).await;
    assert_eq!(billing.accrue_storage(h0).await?, 1);
    assert_eq!(billing.accrue_storage(h0).await?, 0, "the hour is accrued");
    assert_eq!(other.accrue_storage(h0).await?, 0, "by any process");

    // More stored later in the hour changes nothing for it; three hours later, the hours
    // in between are filled in with what is stored now.
    store_bytes(&store, &t, "a", usage::OPLOG_BYTES, 2_000_000).await;
    assert_eq!(billing.accrue_storage(h0).await?, 0);
    assert_eq!(billing.accrue_storage(h0 + 3).await?, 3);
    // A sampler whose clock is behind accrues nothing.
    assert_eq!(other.accrue_storage(h0 + 2).await?, 0);
    // Two samplers at once: one of them accrues the hour.
    let (x, y) = tokio::join!(billing.accrue_storage(h0 + 4), other.accrue_storage(h0 + 4));
    assert_eq!(x? + y?, 1);

    let rows = billing.report(&t, h0, h0 + 10, Granularity::Hour).await?;
    assert_eq!(
        storage_of(&rows, "a"),
        vec![1_000_000, 3_000_000, 3_000_000, 3_000_000, 3_000_000]
    );
    assert_eq!(storage_of(&rows, "b"), vec![500; 5]);
    let none = billing
        .report(&quiet, h0, h0 + 10, Granularity::Hour)
        .await?;
    assert!(
        none.is_empty(),
        "a tenant storing nothing is billed nothing"
    );
    let stored = billing.stored(&t).await?;
    assert_eq!(stored.get(usage::COMPONENT_BYTES), Some(&1_000_000));
    assert_eq!(stored.get(usage::OPLOG_BYTES), Some(&2_000_500));

    // The invoice prices the byte-hours exactly: 13,002,500 byte-hours at 2.5 per GB-hour.
    let month = usage::month_of(h0 * 3_600_000);
    let invoice = billing.invoice(&t, &month).await?;
    let line = invoice
        .lines
        .iter()
        .find(|l| l.item == "storage")
        .ok_or_else(|| anyhow::anyhow!("no storage line in {invoice:?}"))?;
    assert_eq!(line.quantity, 1_000_500 + 4 * 3_000_500);
    assert_eq!(line.amount, Decimal::new(3, 2), "0.0325… rounds to 0.03");

    // After a long pause, at most the backfill window is filled in.
    let later = h0 + 10_000;
    assert_eq!(billing.accrue_storage(later).await?, STORAGE_BACKFILL_HOURS);
    let rows = billing
        .report(
            &t,
            later + 1 - STORAGE_BACKFILL_HOURS,
            later + 1,
            Granularity::Month,
        )
        .await?;
    let total: u64 = rows.iter().map(|r| r.storage_byte_hours).sum();
    assert_eq!(total, STORAGE_BACKFILL_HOURS * 3_000_500);
    Ok(())
}
