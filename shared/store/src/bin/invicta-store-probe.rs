//! A child process for the store's multi-process tests: it opens the embedded store that
//! another process also has open, and either increments a counter through conflicting
//! read-modify-write transactions or writes a stream of keys, acknowledging each commit on stdout.

use std::io::Write;
use std::path::PathBuf;

use invicta_store::{Config, Error, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: invicta-store-probe (increment PATH KEY COUNT | stream PATH PREFIX)";
    let (mode, path) = match (args.get(1), args.get(2)) {
        (Some(mode), Some(path)) => (mode.as_str(), PathBuf::from(path)),
        _ => return Err(usage.into()),
    };
    let store = Store::open(&Config::Embedded { path })?;
    match (mode, args.get(3), args.get(4)) {
        ("increment", Some(key), Some(count)) => {
            let count: u64 = count.parse()?;
            for _ in 0..count {
                // A plain read then write: two processes doing this at once conflict, and only
                // serializable transactions keep every increment.
                store.transact_blocking(|tx| {
                    let n = tx.get(key.as_bytes())?.map_or(Ok(0), |v| {
                        String::from_utf8_lossy(&v)
                            .parse::<u64>()
                            .map_err(|e| Error::Task(e.to_string()))
                    })?;
                    tx.set(key.as_bytes(), (n + 1).to_string().as_bytes())
                })?;
            }
            Ok(())
        }
        ("stream", Some(prefix), None) => {
            let mut out = std::io::stdout().lock();
            for i in 0u64.. {
                let key = format!("{prefix}/{i:012}");
                let value = format!("value-{i}");
                store.transact_blocking(|tx| {
                    tx.set(key.as_bytes(), value.as_bytes())?;
                    tx.atomic_add(format!("{prefix}/count").as_bytes(), 1)
                })?;
                // The commit returned: it is acknowledged, and must survive a SIGKILL from now on.
                writeln!(out, "{i}")?;
                out.flush()?;
            }
            Ok(())
        }
        _ => Err(usage.into()),
    }
}
