//! The embedded store's WAL starts over under constant load. A passive checkpoint never
//! finishes before the next commit when commits never pause, so without the checkpointer's
//! restarts SQLite would never start the WAL over: it would grow by every page written, and
//! every commit would append to it.

use invicta_store::{Config, Store};

/// The WAL header's checkpoint sequence number (bytes 12..16, big-endian), which SQLite raises
/// every time the WAL starts over.
fn wal_restarts(dir: &std::path::Path) -> anyhow::Result<u32> {
    let header = std::fs::read(dir.join("store.sqlite-wal"))?;
    let bytes: [u8; 4] = header
        .get(12..16)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("no WAL header"))?;
    Ok(u32::from_be_bytes(bytes))
}

#[test]
fn the_wal_starts_over_while_commits_never_pause() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&Config::embedded_in(dir.path()))?;
    const PREFIXES: u64 = 8;
    // Back-to-back commits for two seconds, each writing one key under each of 8 prefixes far
    // apart: about 8 pages each, tens of MB of WAL frames in all.
    let started = std::time::Instant::now();
    let mut commits = 0_u64;
    while started.elapsed() < std::time::Duration::from_secs(2) {
        store.transact_blocking(|tx| {
            for p in 0..PREFIXES {
                let key = invicta_store::keys::pack(&("wal-test", p, commits));
                tx.set(&key, &[7_u8; 200])?;
            }
            Ok::<_, invicta_store::Error>(())
        })?;
        commits += 1;
    }
    let restarts = wal_restarts(dir.path())?;
    let size = std::fs::metadata(dir.path().join("store.sqlite-wal"))?.len();
    println!("{commits} commits: the WAL started over {restarts} times; its file is {size} bytes");
    assert!(
        restarts >= 3,
        "the WAL started over {restarts} times in {commits} back-to-back commits"
    );
    Ok(())
}
