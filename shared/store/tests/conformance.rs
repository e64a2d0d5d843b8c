//! The store conformance suite: every backend must pass it. The embedded backend runs it on a
//! real database file in a temporary directory; the FoundationDB backend runs it against the
//! cluster named by `FDB_CLUSTER_FILE` when that is set (and says so when it is not).
//!
//! The multi-process checks (two writers on one file, a writer killed with SIGKILL) are specific
//! to the embedded backend, the only one that several processes open as a file.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use invicta_store::keys::{pack, prefix_range};
use invicta_store::limits::{KEY_BYTES_MAX, TRANSACTION_BYTES_MAX, VALUE_BYTES_MAX};
use invicta_store::{Config, Error, KeyValue, RangeOptions, Store};

type TestResult = anyhow::Result<()>;

/// Every check of the suite, each under its own key prefix so that they cannot see each other.
type Check = fn(&Store, &[u8]) -> TestResult;

const CHECKS: &[(&str, Check)] = &[
    ("ordering", ordering),
    ("range_limits_and_reverse", range_limits_and_reverse),
    ("read_your_writes", read_your_writes),
    ("failed_body_commits_nothing", failed_body_commits_nothing),
    (
        "conflicting_transactions_lose_nothing",
        conflicting_transactions_lose_nothing,
    ),
    ("atomic_add_under_contention", atomic_add_under_contention),
    (
        "atomic_add_extends_short_values_and_wraps",
        atomic_add_extends_short_values_and_wraps,
    ),
    (
        "limits_are_typed_and_change_nothing",
        limits_are_typed_and_change_nothing,
    ),
    ("read_only_transactions", read_only_transactions),
];

fn run_suite(store: &Store, run_id: &str) -> TestResult {
    for (name, check) in CHECKS {
        let prefix = pack(&("conformance", run_id, *name));
        clear_prefix(store, &prefix)?;
        check(store, &prefix).map_err(|e| e.context(format!("check {name} on {store:?}")))?;
        clear_prefix(store, &prefix)?;
    }
    Ok(())
}

fn embedded() -> anyhow::Result<(tempfile::TempDir, Store)> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&Config::embedded_in(dir.path()))?;
    Ok((dir, store))
}

#[test]
fn embedded_backend_conforms() -> TestResult {
    let (_dir, store) = embedded()?;
    assert_eq!(store.backend_name(), "embedded");
    run_suite(&store, "embedded")
}

#[test]
fn fdb_backend_conforms() -> TestResult {
    let Some(cluster_file) = std::env::var_os("FDB_CLUSTER_FILE") else {
        eprintln!("fdb conformance NOT RUN: FDB_CLUSTER_FILE is not set");
        return Ok(());
    };
    let config = Config::Fdb {
        cluster_file: Some(cluster_file.into()),
    };
    if cfg!(not(feature = "fdb")) {
        // A build without the feature must say so, not pretend.
        let err = Store::open(&config).expect_err("fdb is not compiled in");
        assert!(err.to_string().contains("fdb"), "{err}");
        eprintln!("fdb conformance NOT RUN: built without the `fdb` feature");
        return Ok(());
    }
    let store = Store::open(&config)?;
    let run_id = format!("{}-{}", std::process::id(), now_nanos());
    run_suite(&store, &run_id)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn clear_prefix(store: &Store, prefix: &[u8]) -> TestResult {
    let (begin, end) = prefix_range(prefix);
    store.transact_blocking(|tx| tx.clear_range(&begin, &end))?;
    Ok(())
}

fn key(prefix: &[u8], parts: impl invicta_store::keys::TuplePack) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&pack(&parts));
    k
}

fn ordering(store: &Store, prefix: &[u8]) -> TestResult {
    // Integers, strings and byte strings written out of order come back in tuple order.
    let numbers = [42_i64, -7, 0, 1_000_000, 3, -1_000_000, 255, 256];
    store.transact_blocking(|tx| {
        for n in numbers {
            tx.set(&key(prefix, ("n", n)), &n.to_le_bytes())?;
        }
        for s in ["pear", "apple", "", "apple pie", "zebra", "Zebra"] {
            tx.set(&key(prefix, ("s", s)), s.as_bytes())?;
        }
        Ok::<_, Error>(())
    })?;
    let got =
        store.read_blocking(|tx| tx.get_prefix(&key(prefix, ("n",)), RangeOptions::default()))?;
    let values: Vec<i64> = got
        .iter()
        .map(|kv| i64::from_le_bytes(kv.value.as_slice().try_into().expect("8 bytes")))
        .collect();
    let mut sorted = numbers.to_vec();
    sorted.sort();
    assert_eq!(values, sorted);
    let got =
        store.read_blocking(|tx| tx.get_prefix(&key(prefix, ("s",)), RangeOptions::default()))?;
    let strings: Vec<String> = got
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .collect();
    assert_eq!(
        strings,
        ["", "Zebra", "apple", "apple pie", "pear", "zebra"]
    );
    // Raw byte order: a key sorts before its extensions; bytes compare unsigned.
    store.transact_blocking(|tx| {
        for k in [&b"b"[..], b"a\xfe", b"a", b"a\x00", b"ab"] {
            let mut full = prefix.to_vec();
            full.extend_from_slice(k);
            tx.set(&full, k)?;
        }
        Ok::<_, Error>(())
    })?;
    let mut begin = prefix.to_vec();
    begin.push(b'a');
    let mut end = prefix.to_vec();
    end.push(b'c');
    let got = store.read_blocking(|tx| tx.get_range(&begin, &end, RangeOptions::default()))?;
    let raw: Vec<&[u8]> = got.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(raw, [&b"a"[..], b"a\x00", b"ab", b"a\xfe", b"b"]);
    Ok(())
}

fn range_limits_and_reverse(store: &Store, prefix: &[u8]) -> TestResult {
    store.transact_blocking(|tx| {
        for i in 0..100_u32 {
            tx.set(&key(prefix, i), &i.to_be_bytes())?;
        }
        Ok::<_, Error>(())
    })?;
    let index = |kvs: &[KeyValue]| -> Vec<u32> {
        kvs.iter()
            .map(|kv| u32::from_be_bytes(kv.value.as_slice().try_into().expect("4 bytes")))
            .collect()
    };
    let check = |begin: u32, end: u32, options: RangeOptions, expected: Vec<u32>| -> TestResult {
        let (b, e) = (key(prefix, begin), key(prefix, end));
        let got = store.read_blocking(|tx| tx.get_range(&b, &e, options))?;
        assert_eq!(index(&got), expected, "range {begin}..{end} {options:?}");
        Ok(())
    };
    check(10, 20, RangeOptions::default(), (10..20).collect())?;
    check(10, 20, RangeOptions::limit(3), vec![10, 11, 12])?;
    check(10, 20, RangeOptions::limit(3).reverse(), vec![19, 18, 17])?;
    check(
        10,
        20,
        RangeOptions::default().reverse(),
        (10..20).rev().collect(),
    )?;
    check(95, 200, RangeOptions::limit(50), (95..100).collect())?;
    check(20, 10, RangeOptions::default(), vec![])?;
    check(10, 20, RangeOptions::limit(0), vec![])?;
    check(10, 10, RangeOptions::default(), vec![])?;
    Ok(())
}

fn read_your_writes(store: &Store, prefix: &[u8]) -> TestResult {
    let (a, b, c) = (key(prefix, "a"), key(prefix, "b"), key(prefix, "c"));
    store.transact_blocking(|tx| tx.set(&a, b"committed"))?;
    store.transact_blocking(|tx| {
        assert_eq!(tx.get(&a)?.as_deref(), Some(&b"committed"[..]));
        tx.set(&a, b"changed")?;
        assert_eq!(tx.get(&a)?.as_deref(), Some(&b"changed"[..]));
        tx.set(&b, b"new")?;
        tx.atomic_add(&c, 5)?;
        tx.atomic_add(&c, 2)?;
        assert_eq!(tx.get_i64(&c)?, 7);
        let all = tx.get_prefix(prefix, RangeOptions::default())?;
        assert_eq!(all.len(), 3);
        tx.clear(&b)?;
        assert_eq!(tx.get(&b)?, None);
        let (begin, end) = prefix_range(prefix);
        tx.clear_range(&begin, &end)?;
        assert!(tx.get_prefix(prefix, RangeOptions::default())?.is_empty());
        tx.set(&a, b"last")?;
        Ok::<_, Error>(())
    })?;
    let all = store.read_blocking(|tx| tx.get_prefix(prefix, RangeOptions::default()))?;
    assert_eq!(
        all,
        [KeyValue {
            key: a.clone(),
            value: b"last".to_vec()
        }]
    );
    Ok(())
}

#[derive(Debug, PartialEq)]
enum BodyError {
    Refused,
    Store(String),
}

impl From<Error> for BodyError {
    fn from(e: Error) -> Self {
        BodyError::Store(e.to_string())
    }
}

fn failed_body_commits_nothing(store: &Store, prefix: &[u8]) -> TestResult {
    let a = key(prefix, "a");
    // The body's own error rolls back what it wrote.
    let result = store.transact_blocking(|tx| {
        tx.set(&a, b"x")?;
        Err::<(), _>(BodyError::Refused)
    });
    assert_eq!(result, Err(BodyError::Refused));
    // A body that swallows a store error and returns Ok is not committed either.
    let big = vec![0_u8; KEY_BYTES_MAX + 1];
    let result = store.transact_blocking(|tx| {
        tx.set(&a, b"x")?;
        let _ignored = tx.set(&big, b"y");
        Ok::<_, Error>(())
    });
    assert!(
        matches!(result, Err(Error::KeyTooLarge { .. })),
        "{result:?}"
    );
    assert_eq!(store.read_blocking(|tx| tx.get(&a))?, None);
    Ok(())
}

fn conflicting_transactions_lose_nothing(store: &Store, prefix: &[u8]) -> TestResult {
    const THREADS: u64 = 8;
    const INCREMENTS: u64 = 100;
    let counter = Arc::new(key(prefix, "counter"));
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (store, counter, attempts) = (store.clone(), counter.clone(), attempts.clone());
            std::thread::spawn(move || -> Result<(), Error> {
                for _ in 0..INCREMENTS {
                    store.transact_blocking(|tx| {
                        attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let n = tx.get(&counter)?.map_or(0, |v| {
                            u64::from_le_bytes(v.as_slice().try_into().unwrap_or_default())
                        });
                        tx.set(&counter, &(n + 1).to_le_bytes())
                    })?;
                }
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("incrementing thread")?;
    }
    let n = store.read_blocking(|tx| tx.get(&counter))?;
    let n = u64::from_le_bytes(n.unwrap_or_default().as_slice().try_into()?);
    assert_eq!(n, THREADS * INCREMENTS);
    // Retried bodies may run more than once, but every increment landed exactly once.
    assert!(attempts.load(std::sync::atomic::Ordering::Relaxed) >= THREADS * INCREMENTS);
    Ok(())
}

fn atomic_add_under_contention(store: &Store, prefix: &[u8]) -> TestResult {
    let counter = Arc::new(key(prefix, "sum"));
    let handles: Vec<_> = (0..8_i64)
        .map(|t| {
            let (store, counter) = (store.clone(), counter.clone());
            std::thread::spawn(move || -> Result<(), Error> {
                for i in 0..200_i64 {
                    let delta = if (t + i) % 5 == 0 { -3 } else { 2 };
                    store.transact_blocking(|tx| tx.atomic_add(&counter, delta))?;
                }
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("adding thread")?;
    }
    let expected: i64 = (0..8_i64)
        .flat_map(|t| (0..200_i64).map(move |i| if (t + i) % 5 == 0 { -3 } else { 2 }))
        .sum();
    assert_eq!(store.read_blocking(|tx| tx.get_i64(&counter))?, expected);
    Ok(())
}

/// FoundationDB's `ADD`: a shorter stored value is zero-extended, the sum wraps.
fn atomic_add_extends_short_values_and_wraps(store: &Store, prefix: &[u8]) -> TestResult {
    let (short, high, fresh) = (
        key(prefix, "short"),
        key(prefix, "high"),
        key(prefix, "new"),
    );
    store.transact_blocking(|tx| {
        tx.set(&short, &[0x01, 0x01])?;
        tx.set(&high, &i64::MAX.to_le_bytes())
    })?;
    store.transact_blocking(|tx| {
        tx.atomic_add(&short, 1)?;
        tx.atomic_add(&high, 1)?;
        tx.atomic_add(&fresh, -7)
    })?;
    store.read_blocking(|tx| {
        assert_eq!(tx.get_i64(&short)?, 0x0102);
        assert_eq!(tx.get_i64(&high)?, i64::MIN);
        assert_eq!(tx.get(&fresh)?, Some((-7_i64).to_le_bytes().to_vec()));
        Ok::<_, Error>(())
    })?;
    Ok(())
}

type Op<'a> = dyn Fn(&mut invicta_store::Transaction<'_>) -> Result<(), Error> + 'a;

fn limits_are_typed_and_change_nothing(store: &Store, prefix: &[u8]) -> TestResult {
    let marker = key(prefix, "marker");
    let big_key = [prefix, &vec![b'k'; KEY_BYTES_MAX]].concat();
    let big_value = vec![0_u8; VALUE_BYTES_MAX + 1];
    let chunk = vec![1_u8; VALUE_BYTES_MAX - 1_000];
    let cases: Vec<(&str, Box<Op<'_>>)> = vec![
        ("key over the limit", Box::new(|tx| tx.set(&big_key, b"v"))),
        (
            "cleared key over the limit",
            Box::new(|tx| tx.clear(&big_key)),
        ),
        (
            "read key over the limit",
            Box::new(|tx| tx.get(&big_key).map(drop)),
        ),
        (
            "value over the limit",
            Box::new(|tx| tx.set(&key(prefix, "v"), &big_value)),
        ),
        ("reserved key", Box::new(|tx| tx.set(b"\xffsystem", b"v"))),
        (
            "reversed range",
            Box::new(|tx| tx.clear_range(&key(prefix, 2), &key(prefix, 1))),
        ),
        (
            "transaction over the limit",
            Box::new(|tx| {
                for i in 0..=TRANSACTION_BYTES_MAX / chunk.len() {
                    tx.set(&key(prefix, ("chunk", i as u64)), &chunk)?;
                }
                Ok(())
            }),
        ),
    ];
    for (name, op) in &cases {
        let result = store.transact_blocking(|tx| {
            tx.set(&marker, name.as_bytes())?;
            op(tx)
        });
        let err = result.expect_err(name);
        assert!(
            err.is_caller_error(),
            "{name}: {err:?} should be the caller's error"
        );
        assert!(!err.is_retryable(), "{name}: {err:?} must not be retried");
        let expected = match *name {
            "value over the limit" => matches!(err, Error::ValueTooLarge { .. }),
            "reserved key" => matches!(err, Error::ReservedKey),
            "reversed range" => matches!(err, Error::InvalidRange),
            "transaction over the limit" => matches!(err, Error::TransactionTooLarge { .. }),
            _ => matches!(err, Error::KeyTooLarge { .. }),
        };
        assert!(expected, "{name}: unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
        let left = store.read_blocking(|tx| tx.get_prefix(prefix, RangeOptions::default()))?;
        assert!(
            left.is_empty(),
            "{name}: the failed transaction left {} keys",
            left.len()
        );
    }
    // A transaction that runs past the time limit is refused at commit.
    let result = store.transact_blocking(|tx| {
        tx.set(&marker, b"slow")?;
        std::thread::sleep(
            invicta_store::limits::TRANSACTION_DURATION_MAX + Duration::from_millis(100),
        );
        Ok::<_, Error>(())
    });
    assert!(
        matches!(result, Err(Error::TransactionTooOld { .. })),
        "{result:?}"
    );
    assert_eq!(store.read_blocking(|tx| tx.get(&marker))?, None);
    // At the limits exactly, everything is accepted.
    let exact_key = [prefix, &vec![b'k'; KEY_BYTES_MAX - prefix.len()]].concat();
    store.transact_blocking(|tx| tx.set(&exact_key, &vec![7_u8; VALUE_BYTES_MAX]))?;
    assert_eq!(
        store
            .read_blocking(|tx| tx.get(&exact_key))?
            .map(|v| v.len()),
        Some(VALUE_BYTES_MAX)
    );
    Ok(())
}

fn read_only_transactions(store: &Store, prefix: &[u8]) -> TestResult {
    let a = key(prefix, "a");
    store.transact_blocking(|tx| tx.set(&a, b"1"))?;
    let result = store.read_blocking(|tx| tx.set(&a, b"2"));
    assert!(matches!(result, Err(Error::ReadOnly)), "{result:?}");
    assert_eq!(
        store.read_blocking(|tx| tx.get(&a))?.as_deref(),
        Some(&b"1"[..])
    );
    Ok(())
}

// ---- The embedded backend's multi-process guarantees ----

const PROBE: &str = env!("CARGO_BIN_EXE_invicta-store-probe");

#[test]
fn embedded_two_processes_increment_one_counter() -> TestResult {
    const PER_PROCESS: u64 = 1_000;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.sqlite");
    // Both processes open the file while this one has it open too.
    let store = Store::open(&Config::Embedded { path: path.clone() })?;
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(PROBE)
                .args([
                    "increment",
                    path.to_str().expect("utf-8 temp path"),
                    "counter",
                ])
                .arg(PER_PROCESS.to_string())
                .stderr(Stdio::inherit())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut child in children {
        assert!(child.wait()?.success(), "an incrementing process failed");
    }
    let n = store.read_blocking(|tx| tx.get(b"counter"))?;
    assert_eq!(n.as_deref(), Some((2 * PER_PROCESS).to_string().as_bytes()));
    Ok(())
}

#[test]
fn embedded_sigkill_loses_no_acknowledged_commit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.sqlite");
    for round in 0..3_u64 {
        let prefix = format!("round{round}");
        let mut child = Command::new(PROBE)
            .args(["stream", path.to_str().expect("utf-8 temp path"), &prefix])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Let it commit a while (a different amount each round), then kill it mid-stream.
        let wait_for = 200 + 150 * round;
        let mut acknowledged = None;
        for line in lines.by_ref() {
            let i: u64 = line?.trim().parse()?;
            acknowledged = Some(i);
            if i >= wait_for {
                break;
            }
        }
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on the pid of a child we spawned and have not yet reaped.
        let killed = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(killed, 0, "SIGKILL the writer");
        // Acknowledgements already in the pipe were commits that returned before the kill.
        for line in lines {
            match line {
                Ok(line) => acknowledged = Some(line.trim().parse()?),
                Err(_) => break,
            }
        }
        child.wait()?;
        let acknowledged = acknowledged.expect("the writer acknowledged commits");
        let store = Store::open(&Config::Embedded { path: path.clone() })?;
        let prefix_key = |i: u64| format!("{prefix}/{i:012}").into_bytes();
        let (begin, end) = (prefix_key(0), prefix_key(u64::MAX / 2));
        let rows = store.read_blocking(|tx| tx.get_range(&begin, &end, RangeOptions::default()))?;
        let count = store.read_blocking(|tx| tx.get_i64(format!("{prefix}/count").as_bytes()))?;
        // Every acknowledged commit is there, in order, whole; at most the one in flight beyond.
        assert!(
            rows.len() as u64 > acknowledged,
            "lost commits: {} rows, acknowledged up to {acknowledged}",
            rows.len()
        );
        assert!(rows.len() as u64 <= acknowledged + 2);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.key, prefix_key(i as u64));
            assert_eq!(row.value, format!("value-{i}").into_bytes());
        }
        assert_eq!(
            count,
            rows.len() as i64,
            "the counter and the rows were committed together"
        );
    }
    Ok(())
}

#[test]
fn embedded_store_is_durable_across_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let store = Store::open(&Config::embedded_in(dir.path()))?;
        store.transact_blocking(|tx| tx.set(b"kept", b"yes"))?;
    }
    let store = Store::open(&Config::embedded_in(dir.path()))?;
    assert_eq!(
        store.read_blocking(|tx| tx.get(b"kept"))?.as_deref(),
        Some(&b"yes"[..])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_transactions_run_off_the_runtime() -> TestResult {
    let (_dir, store) = embedded()?;
    let tasks: Vec<_> = (0..16_i64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.transact(move |tx| tx.atomic_add(b"n", i)).await })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let n = store.read(|tx| tx.get_i64(b"n")).await?;
    assert_eq!(n, (0..16).sum::<i64>());
    Ok(())
}
