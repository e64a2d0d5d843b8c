//! Metering: the usage ledger is written with the work it measures, reported as JSON and CSV,
//! and exact across crashes: never billed twice, never lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use invicta_tests::{Api, Server, component};
use serde_json::{Value, json};

use crate::INVICTA;

/// Today and tomorrow (UTC), as the report's bounds.
pub(crate) fn today() -> (String, String) {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let date = |d: u64| {
        let (y, m, day) = invicta_model::usage::civil_from_days(i64::try_from(d).unwrap_or(0));
        format!("{y:04}-{m:02}-{day:02}")
    };
    (date(days), date(days + 1))
}

#[tokio::test]
async fn usage_reports_as_json_and_csv() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let operator = server.operator();
    let a = operator.new_tenant("alpha", "pro").await?;
    let b = operator.new_tenant("beta", "pro").await?;
    a.upload("counter", component("counter")).await?;
    a.upload("burner", component("burner")).await?;
    let mut fuel = 0;
    for i in 0..3 {
        let reply = a.invoke("counter", "w", "add", json!([i]), None).await?;
        fuel += reply.body["fuel_consumed"].as_u64().unwrap_or(0);
    }
    for _ in 0..2 {
        let reply = a.invoke("burner", "b", "burn", json!([1000]), None).await?;
        fuel += reply.body["fuel_consumed"].as_u64().unwrap_or(0);
    }
    // A failed invocation is not counted as one, but the fuel it burnt is billed: its `error`
    // oplog entry says how much.
    assert_eq!(
        a.invoke("burner", "b", "trap", json!(["x"]), None)
            .await?
            .status,
        422
    );
    let completed_fuel = fuel;
    let burner_log = a.get("/v1/components/burner/workers/b/oplog").await?;
    let trap_fuel = burner_log.body["entries"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["kind"] == "error"))
        .and_then(|e| e["fuel_consumed"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("the error entry records its fuel: {burner_log:?}"))?;
    assert!(trap_fuel > 0);
    fuel += trap_fuel;

    let (from, to) = today();
    let report = a
        .get(&format!("/v1/usage?from={from}&to={to}&granularity=hour"))
        .await?;
    assert_eq!(report.status, 200, "{report:?}");
    assert_eq!(report.body["totals"]["invocations"], 5);
    assert_eq!(report.body["totals"]["fuel"], fuel);
    assert_eq!(report.body["invocations"], 5, "this month's total agrees");
    let rows = report.body["rows"].as_array().cloned().unwrap_or_default();
    let of = |c: &str| {
        rows.iter()
            .filter(|r| r["component"] == c)
            .map(|r| r["invocations"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!((of("counter"), of("burner")), (3, 2), "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["period"].as_str().is_some_and(|p| p.ends_with(":00Z")))
    );
    assert!(
        rows.iter()
            .all(|r| r["wall_us"].as_u64() > Some(0) && r["memory_kib_ms"].is_u64())
    );

    let csv = a
        .http
        .get(format!(
            "{}/v1/usage?from={from}&to={to}&granularity=day",
            a.base
        ))
        .bearer_auth(a.key.as_deref().unwrap_or_default())
        .header("accept", "text/csv")
        .send()
        .await?;
    assert!(
        csv.headers()["content-type"]
            .to_str()?
            .starts_with("text/csv")
    );
    let csv = csv.text().await?;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "period,component,invocations,fuel,wall_us,memory_kib_ms,oplog_bytes,storage_byte_hours,http_requests,http_request_bytes,http_response_bytes"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    let csv_fuel: u64 = lines[1..]
        .iter()
        .filter_map(|l| l.split(',').nth(3)?.parse::<u64>().ok())
        .sum();
    assert_eq!(csv_fuel, fuel);

    // Each tenant sees only its own; the operator sees any; bad input is refused.
    let other = b.get(&format!("/v1/usage?from={from}&to={to}")).await?;
    assert_eq!(other.body["totals"]["invocations"], 0);
    let tenant_a = a.get("/v1/usage").await?.body["tenant"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let as_operator = operator
        .get(&format!(
            "/v1/admin/usage?tenant={tenant_a}&from={from}&to={to}&granularity=month"
        ))
        .await?;
    assert_eq!(as_operator.body["totals"]["fuel"], fuel);
    assert_eq!(
        operator.get("/v1/admin/usage?tenant=tnobody").await?.status,
        404
    );
    assert_eq!(
        b.get(&format!("/v1/admin/usage?tenant={tenant_a}"))
            .await?
            .status,
        403
    );
    let other_tenant = b.get(&format!("/v1/usage?tenant={tenant_a}")).await?;
    assert_eq!(
        (other_tenant.status, other_tenant.code()),
        (404, "tenant_not_found")
    );
    let own = a
        .get(&format!("/v1/usage?tenant={tenant_a}&from={from}&to={to}"))
        .await?;
    assert_eq!(own.body["totals"]["fuel"], fuel);
    // The operator's metrics count the same invocations.
    let scraped = a
        .anonymous()
        .http
        .get(format!("{}/metrics", a.base))
        .send()
        .await?;
    assert!(
        scraped.headers()["content-type"]
            .to_str()?
            .starts_with("application/openmetrics-text")
    );
    let metrics = parse_metrics(&scraped.text().await?)?;
    let metric = |name: &str| metrics.get(name).copied().unwrap_or(-1.0);
    assert_eq!(
        metric("invicta_invocations_total{outcome=\"completed\"}"),
        5.0,
        "{metrics:?}"
    );
    assert_eq!(metric("invicta_invocations_total{outcome=\"trap\"}"), 1.0);
    assert_eq!(metric("invicta_fuel_total"), completed_fuel as f64);
    assert_eq!(metric("invicta_invocation_seconds_count"), 6.0);
    assert_eq!(
        metric("invicta_active_workers"),
        1.0,
        "the trap dropped the burner's instance"
    );
    assert!(metric("invicta_commit_seconds_count") >= 6.0);
    assert_eq!(
        metric("invicta_suspended_workers"),
        1.0,
        "the burner's worker, after its trap"
    );
    assert!(metric("invicta_replays_total") >= 2.0);
    for bad in [
        "from=yesterday",
        "from=2026-02-30",
        "granularity=week",
        "from=2026-11-02&to=2026-11-01",
        "colour=red",
    ] {
        let reply = a.get(&format!("/v1/usage?{bad}")).await?;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_query"),
            "{bad}: {reply:?}"
        );
    }
    Ok(())
}

/// Parses the OpenMetrics text format into `name{labels}` → value, checking its shape.
fn parse_metrics(text: &str) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    anyhow::ensure!(text.trim_end().ends_with("# EOF"), "no # EOF terminator");
    let mut out = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow::anyhow!("malformed metric line: {line}"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| anyhow::anyhow!("malformed value: {line}"))?;
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

/// Sends one keyed invocation until it is answered, following the server across restarts.
async fn until_answered(
    url: &RwLock<String>,
    key: &str,
    worker: &str,
    params: Value,
    idempotency: &str,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        let base = url.read().map_err(|_| anyhow::anyhow!("lock"))?.clone();
        let api = Api::new(&base).with_key(key);
        match api
            .invoke("burner", worker, "burn", params.clone(), Some(idempotency))
            .await
        {
            Ok(reply) if reply.status == 200 => return Ok(reply.body),
            Ok(reply) if reply.status < 500 => anyhow::bail!("{idempotency}: {reply:?}"),
            _ => {}
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{idempotency} unanswered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_is_exact_across_sigkills() -> anyhow::Result<()> {
    const WORKERS: usize = 12;
    const CLIENTS: usize = 4;
    const KILLS: usize = 3;
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let api = server.operator().new_tenant("exact", "pro").await?;
    let key = api.key.clone().unwrap_or_default();
    api.upload("burner", component("burner")).await?;

    let url = Arc::new(RwLock::new(server.url.clone()));
    let server = Arc::new(Mutex::new(Some(server)));
    let killing = Arc::new(AtomicBool::new(true));
    let killer = {
        let (url, server, killing, dir) = (
            url.clone(),
            server.clone(),
            killing.clone(),
            data.path().to_path_buf(),
        );
        tokio::spawn(async move {
            for _ in 0..KILLS {
                tokio::time::sleep(Duration::from_millis(400)).await;
                let running = server.lock().map_err(|_| anyhow::anyhow!("lock"))?.take();
                if let Some(running) = running {
                    running.kill()?;
                }
                let dir = dir.clone();
                let fresh =
                    tokio::task::spawn_blocking(move || Server::start(INVICTA.as_ref(), &dir))
                        .await??;
                *url.write().map_err(|_| anyhow::anyhow!("lock"))? = fresh.url.clone();
                *server.lock().map_err(|_| anyhow::anyhow!("lock"))? = Some(fresh);
            }
            killing.store(false, Ordering::Release);
            Ok::<_, anyhow::Error>(())
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (url, killing, key) = (url.clone(), killing.clone(), key.clone());
            tokio::spawn(async move {
                let mut keys = Vec::new();
                let mut round = 0_u64;
                while round < 6 || killing.load(Ordering::Acquire) {
                    for w in (0..WORKERS).filter(|w| w % CLIENTS == client) {
                        let idempotency = format!("w{w}-{round}");
                        // Each call burns a known amount: 26 fuel per iteration.
                        until_answered(
                            &url,
                            &key,
                            &format!("w{w}"),
                            json!([1_000 + round]),
                            &idempotency,
                        )
                        .await?;
                        keys.push((w, idempotency));
                    }
                    round += 1;
                    anyhow::ensure!(round < 10_000, "runaway client");
                }
                Ok::<_, anyhow::Error>(keys)
            })
        })
        .collect();
    killer.await??;
    let mut completed = HashSet::new();
    for client in clients {
        completed.extend(client.await??);
    }

    let base = url.read().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let api = Api::new(&base).with_key(&key);
    // The fuel the oplogs recorded, completion by completion.
    let mut oplog_fuel = 0_u64;
    let mut oplog_completions = 0_u64;
    for w in 0..WORKERS {
        let mut from = 1;
        loop {
            let page = api
                .get(&format!(
                    "/v1/components/burner/workers/w{w}/oplog?from={from}&count=1000"
                ))
                .await?;
            let entries = page.body["entries"].as_array().cloned().unwrap_or_default();
            for e in &entries {
                if e["kind"] == "exported_function_completed" {
                    oplog_completions += 1;
                }
                // Failed invocations' fuel is billed too; their error entries record it.
                if e["kind"] == "exported_function_completed" || e["kind"] == "error" {
                    oplog_fuel += e["fuel_consumed"].as_u64().unwrap_or(0);
                }
            }
            match page.body["next"].as_u64() {
                Some(next) if !entries.is_empty() => from = next,
                _ => break,
            }
        }
    }
    let (from, to) = today();
    let report = api.get(&format!("/v1/usage?from={from}&to={to}")).await?;
    assert_eq!(
        oplog_completions,
        completed.len() as u64,
        "one completion per key"
    );
    assert_eq!(
        report.body["totals"]["invocations"],
        completed.len() as u64,
        "ledger invocations"
    );
    assert_eq!(report.body["totals"]["fuel"], oplog_fuel, "ledger fuel");
    assert_eq!(report.body["fuel"], oplog_fuel, "the month's fuel");
    Ok(())
}

#[tokio::test]
async fn invoices_price_the_ledger_exactly() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = Server::start(INVICTA.as_ref(), data.path())?;
    let operator = server.operator();
    let mut plan = operator.get("/v1/admin/plans").await?.body["plans"]
        .as_array()
        .and_then(|plans| plans.iter().find(|p| p["name"] == "pro").cloned())
        .ok_or_else(|| anyhow::anyhow!("the pro plan"))?;
    plan["name"] = json!("priced");
    plan["prices"] = json!({
        "currency": "EUR",
        "base_monthly": "10.50",
        "per_billion_fuel": "100000000",
        "per_million_invocations": "1000000",
    });
    assert_eq!(
        operator
            .put_json("/v1/admin/plans/priced", &plan)
            .await?
            .status,
        200
    );
    let t = operator.new_tenant("payer", "priced").await?;
    t.upload("counter", component("counter")).await?;
    let mut fuel = 0_u64;
    for i in 0..3 {
        fuel += t
            .invoke("counter", "w", "add", json!([i]), None)
            .await?
            .body["fuel_consumed"]
            .as_u64()
            .unwrap_or(0);
    }
    let tenant = t.get("/v1/usage").await?.body["tenant"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let invoice = operator
        .get(&format!("/v1/admin/invoices?tenant={tenant}"))
        .await?;
    assert_eq!(invoice.status, 200, "{invoice:?}");
    assert_eq!(invoice.body["currency"], "EUR");
    let money = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    let lines = invoice.body["lines"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        (lines[0]["item"].clone(), money(&lines[0]["amount"])),
        (json!("base fee"), 10.5)
    );
    assert_eq!(lines[1]["quantity"], fuel);
    assert_eq!(
        money(&lines[1]["amount"]),
        fuel as f64 / 10.0,
        "fuel × 1e8 / 1e9"
    );
    assert_eq!(lines[2]["quantity"], 3);
    assert_eq!(money(&lines[2]["amount"]), 3.0);
    // This plan does not price storage.
    assert_eq!(
        (lines[3]["item"].clone(), lines[3]["unit"].clone()),
        (json!("storage"), json!("byte-hour"))
    );
    assert_eq!(money(&lines[3]["amount"]), 0.0);
    assert_eq!(
        money(&invoice.body["total"]),
        10.5 + fuel as f64 / 10.0 + 3.0
    );
    // The same month prices the same; bad months and tenants are refused.
    let again = operator
        .get(&format!("/v1/admin/invoices?tenant={tenant}"))
        .await?;
    assert_eq!(again.body, invoice.body);
    let month = invoice.body["month"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let explicit = operator
        .get(&format!("/v1/admin/invoices?tenant={tenant}&month={month}"))
        .await?;
    assert_eq!(explicit.body, invoice.body);
    let empty = operator
        .get(&format!("/v1/admin/invoices?tenant={tenant}&month=2020-01"))
        .await?;
    assert_eq!(money(&empty.body["total"]), 10.5);
    assert_eq!(
        operator
            .get(&format!("/v1/admin/invoices?tenant={tenant}&month=2020-13"))
            .await?
            .code(),
        "invalid_query"
    );
    assert_eq!(
        operator
            .get("/v1/admin/invoices?tenant=tnobody")
            .await?
            .status,
        404
    );
    assert_eq!(
        t.get(&format!("/v1/admin/invoices?tenant={tenant}"))
            .await?
            .status,
        403
    );
    Ok(())
}

#[tokio::test]
async fn storage_is_counted_exactly_and_sampled_into_the_ledger() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let config = data.path().join("invicta.toml");
    std::fs::write(&config, "[billing]\nstorage_sample_interval_ms = 50\n")?;
    let dir = data.path().join("data");
    let server = Server::start_with(
        INVICTA.as_ref(),
        &dir,
        &["--config", &config.to_string_lossy()],
    )?;
    let t = server.operator().new_tenant("keeper", "pro").await?;
    let wasm = component("counter");
    t.upload("counter", wasm.clone()).await?;
    for i in 0..5 {
        let reply = t
            .invoke("counter", &format!("w{}", i % 2), "add", json!([i]), None)
            .await?;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let usage = t.get("/v1/usage").await?;
    let tenant = usage.body["tenant"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        usage.body["stored_bytes"]["component_bytes"],
        wasm.len() as u64
    );
    // The sampler charges this hour what was stored at its first sample: the component, and
    // what of the oplogs existed then.
    let (from, to) = today();
    let deadline = Instant::now() + Duration::from_secs(10);
    let byte_hours = loop {
        let report = t.get(&format!("/v1/usage?from={from}&to={to}")).await?;
        let n = report.body["totals"]["storage_byte_hours"]
            .as_u64()
            .unwrap_or(0);
        if n > 0 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let oplog_bytes = usage.body["stored_bytes"]["oplog_bytes"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        byte_hours >= wasm.len() as u64 && byte_hours <= wasm.len() as u64 + oplog_bytes,
        "{byte_hours} byte-hours for {} component and {oplog_bytes} oplog bytes",
        wasm.len()
    );
    assert!(server.stop()?, "clean stop");

    // The stored count is exactly the bytes the oplogs take in the store.
    let store = invicta_store::Store::open(&invicta_store::Config::embedded_in(&dir))?;
    let (counted, actual) = store
        .read(move |tx| {
            let counted = tx.get_i64(&invicta_model::usage::stored_key(
                &tenant,
                "counter",
                invicta_model::usage::OPLOG_BYTES,
            ))?;
            let mut actual = 0_i64;
            for space in ["oplog", "oplog-chunk"] {
                let prefix = invicta_store::keys::pack(&(space, tenant.as_str()));
                for row in tx.get_prefix(&prefix, Default::default())? {
                    actual += row.value.len() as i64;
                }
            }
            Ok::<_, invicta_store::Error>((counted, actual))
        })
        .await?;
    assert!(actual > 0);
    assert_eq!(counted, actual, "stored oplog bytes");
    Ok(())
}
