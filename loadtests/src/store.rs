//! `store`: the embedded store's commit latency and commits/s for 1-key and 100-key
//! transactions, and from several threads at once, beside raw 256-byte write+fdatasync on the
//! same disk.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use invicta_store::{Config, Store};

use crate::stats::{Summary, Timed, micros};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Commits per measurement.
    #[arg(long, default_value_t = 2_000)]
    commits: usize,
    /// Directory on the disk to measure (a temporary directory under it is used).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const VALUE_BYTES: usize = 256;

pub fn run(args: &Args) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in(".")?,
    };
    let n = args.commits;
    let value = vec![0xAB_u8; VALUE_BYTES];

    // The limit: append 256 bytes and fdatasync, as a write-ahead log would.
    let raw = raw_append_fdatasync(&dir.path().join("raw.log"), n)?;
    // Overwriting in place (no file growth): the lower bound of a preallocated log.
    let raw_inplace = {
        let file = std::fs::File::create(dir.path().join("raw-inplace.log"))?;
        file.write_all_at(&vec![0_u8; VALUE_BYTES * 64], 0)?;
        file.sync_all()?;
        let mut samples = Vec::with_capacity(n);
        let start = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            file.write_all_at(&value, ((i % 64) * VALUE_BYTES) as u64)?;
            file.sync_data()?;
            samples.push(t.elapsed());
        }
        Summary::of(&mut samples, start.elapsed())
    };

    let store = Store::open(&Config::embedded_in(dir.path()))?;
    let one_key = time_commits(n, |i| {
        store.transact_blocking(|tx| tx.set(format!("one/{i:010}").as_bytes(), &value))
    })?;
    let hundred_keys = time_commits(n / 4, |i| {
        store.transact_blocking(|tx| {
            for k in 0..100 {
                tx.set(format!("hundred/{i:010}/{k:03}").as_bytes(), &value)?;
            }
            Ok::<_, invicta_store::Error>(())
        })
    })?;
    let threads = 8;
    let concurrent = {
        let start = Instant::now();
        let per_thread = n / threads;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (store, value) = (store.clone(), value.clone());
                std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut samples = Vec::with_capacity(per_thread);
                    for i in 0..per_thread {
                        let t0 = Instant::now();
                        store.transact_blocking(|tx| {
                            tx.set(format!("conc/{t}/{i:010}").as_bytes(), &value)
                        })?;
                        samples.push(t0.elapsed());
                    }
                    Ok(samples)
                })
            })
            .collect();
        let mut samples = Vec::new();
        for h in handles {
            samples.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("bench thread panicked"))??,
            );
        }
        Summary::of(&mut samples, start.elapsed())
    };

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "store bench: {n} commits per row, {VALUE_BYTES}-byte values, dir {}",
        dir.path().display()
    )?;
    writeln!(
        out,
        "{:<44} {:>10} {:>10} {:>12} {:>10}",
        "measurement", "p50 µs", "p99 µs", "commits/s", "p50/raw"
    )?;
    let row = |out: &mut std::io::StdoutLock<'_>, name: &str, s: &Summary| -> std::io::Result<()> {
        writeln!(
            out,
            "{:<44} {:>10.1} {:>10.1} {:>12.0} {:>10.2}",
            name,
            micros(s.median),
            micros(s.p99),
            s.per_second,
            s.median.as_secs_f64() / raw.median.as_secs_f64()
        )
    };
    row(&mut out, "raw append + fdatasync (the limit)", &raw)?;
    row(&mut out, "raw overwrite + fdatasync", &raw_inplace)?;
    row(&mut out, "embedded store, 1-key transaction", &one_key)?;
    row(
        &mut out,
        "embedded store, 100-key transaction",
        &hundred_keys,
    )?;
    row(
        &mut out,
        &format!("embedded store, 1-key, {threads} threads"),
        &concurrent,
    )?;
    writeln!(
        out,
        "100-key transactions write {:.0} keys/s",
        hundred_keys.per_second * 100.0
    )?;
    Ok(())
}

/// `n` appends of 256 bytes to a new file at `path`, each followed by fdatasync: the latency
/// floor of anything durable on that disk.
pub fn raw_append_fdatasync(path: &Path, n: usize) -> std::io::Result<Summary> {
    Ok(raw_append_fdatasync_timed(path, n)?.summary())
}

/// [`raw_append_fdatasync`]'s times, to pool with other runs'.
pub fn raw_append_fdatasync_timed(path: &Path, n: usize) -> std::io::Result<Timed> {
    let value = [0xAB_u8; VALUE_BYTES];
    let mut file = std::fs::File::create(path)?;
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        file.write_all(&value)?;
        file.sync_data()?;
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(Timed { samples, total })
}

fn time_commits<E: Into<anyhow::Error>>(
    n: usize,
    mut commit: impl FnMut(usize) -> Result<(), E>,
) -> anyhow::Result<Summary> {
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        commit(i).map_err(Into::into)?;
        samples.push(t.elapsed());
    }
    Ok(Summary::of(&mut samples, start.elapsed()))
}
