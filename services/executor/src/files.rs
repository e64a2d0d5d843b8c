//! A worker's files: a directory per worker on the executor that runs it, preopened as the
//! worker's `/`.
//!
//! **Rebuilt by replay.** The directory is made afresh from the version's files whenever the
//! worker's instance is made (recovery, resumption after suspension, a move, an update), and
//! replay re-does every write an accepted invocation made. Nothing of it is stored but the
//! version's files: a crash, a move or a failed invocation leaves nothing to reconcile (a failed
//! invocation is not replayed, so its writes are gone with its instance). The price is that a
//! worker's files cost replay time, like the rest of its state, and live on one executor's
//! disk while it runs there (the snapshot of a worker with files is not taken: see
//! `after_invocation`).
//!
//! **What a worker sees is deterministic.** Listings come sorted by name; timestamps are absent
//! from `stat` (they would differ on replay); metadata hashes are numbered in the order the worker
//! first asks for them. Read-only files are refused to open for writing, to truncate, remove,
//! rename or replace, by their inode (so a hard link is no way around it); they are a copy per
//! worker, so no worker can change another's.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use invicta_model::WorkerId;

/// The most files, directories and links one worker may hold (a bound on what measuring them
/// after an invocation costs).
pub(crate) const ENTRIES_MAX: u64 = 10_000;
/// The largest file the API returns, in bytes.
pub(crate) const READ_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// The most entries one directory listing returns.
pub(crate) const LIST_MAX: usize = 10_000;

/// The lock file that marks an executor's directory of worker files as in use.
const LOCK: &str = ".lock";

/// This executor's directory of worker files, under a root that executors may share: held by
/// an exclusive lock on its `.lock` for the executor's life, and removed when it ends.
///
/// The operating system lets the lock go when its process dies, SIGKILL included: an executor
/// starting finds the directories of those that crashed by taking their locks, and removes them
/// (their workers' files are rebuilt by replay wherever the workers run next). A directory
/// whose lock is held belongs to a live executor and is left alone.
#[derive(Debug)]
pub(crate) struct Claim {
    dir: PathBuf,
    _lock: std::fs::File,
}

impl Claim {
    /// Makes and locks `<root>/<id>`, then removes what crashed executors left under `root`.
    /// Blocking.
    pub(crate) fn take(root: &Path, id: &str) -> io::Result<Claim> {
        std::fs::create_dir_all(root)?;
        // Made under a hidden name and locked before it is renamed into place: a sweeping
        // executor never sees the directory without its lock held.
        let making = root.join(format!(".{id}.new"));
        std::fs::create_dir(&making)?;
        let lock = std::fs::File::create(making.join(LOCK))?;
        lock.try_lock().map_err(io::Error::other)?;
        let dir = root.join(id);
        std::fs::rename(&making, &dir)?;
        let removed = sweep(root, id);
        if removed > 0 {
            tracing::info!(
                removed,
                root = %root.display(),
                "removed the worker files of executors that are gone"
            );
        }
        Ok(Claim { dir, _lock: lock })
    }

    /// The directory the workers running here keep their files under.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the directories under `root` whose lock nobody holds (their executor is gone), but
/// `own`; how many. A directory without a lock file is of no executor and is left alone.
fn sweep(root: &Path, own: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if entry.file_name() == own || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        let Ok(lock) = std::fs::File::open(path.join(LOCK)) else {
            continue;
        };
        // Held while the directory goes, so that no other sweeper races it.
        if lock.try_lock().is_ok() && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A worker's files while its instance lives.
#[derive(Debug, Default)]
pub(crate) struct Files {
    /// Its directory on this executor (none: the worker has no filesystem).
    pub root: Option<PathBuf>,
    /// The read-only files, by device and inode.
    pub read_only: HashSet<(u64, u64)>,
    /// The directories that hold read-only files (which cannot be renamed or removed).
    pub read_only_dirs: HashSet<(u64, u64)>,
    /// Listings being read, by resource, sorted.
    pub listings: HashMap<u32, std::collections::VecDeque<(String, u8)>>,
    /// The resource number of the next listing.
    pub next_listing: u32,
    /// The descriptors open for writing, by resource.
    pub writable: HashSet<u32>,
    /// Metadata hashes as the worker sees them: numbered in the order it first asked.
    pub hashes: HashMap<(u64, u64), u64>,
    /// Whether the worker may have changed its files since the last check.
    pub dirty: bool,
    /// Whether it changed them before the last check.
    pub touched: bool,
    /// What they took at the last check (or when made).
    pub last_usage: u64,
    /// The bytes the running invocation may still write (shared with the streams it writes
    /// through): a write past it stops the invocation, which fails with `files_too_large`, so
    /// that none writes unbounded bytes before its end is checked. (It is not an error the guest
    /// could handle: a replay, which re-does only what succeeded, would not meet it.)
    pub budget: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Whether the running invocation went past its budget.
    pub exceeded: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Files {
    /// Whether what the worker holds may have grown since the last check.
    pub(crate) fn may_have_grown(&self) -> bool {
        self.dirty || !self.writable.is_empty()
    }

    /// Whether the worker may have changed its files at all (in this instance's life, replay
    /// included).
    pub(crate) fn changed(&self) -> bool {
        self.touched || self.may_have_grown()
    }

    /// Marks the file at `path` (under the worker's directory `dir`) read-only, and the
    /// directories that hold it.
    fn mark_read_only(
        &mut self,
        dir: &Path,
        path: &Path,
        meta: &std::fs::Metadata,
    ) -> io::Result<()> {
        self.read_only.insert((meta.dev(), meta.ino()));
        let mut parent = path.parent();
        while let Some(at) = parent.filter(|at| at.starts_with(dir) && *at != dir) {
            let meta = std::fs::metadata(at)?;
            self.read_only_dirs.insert((meta.dev(), meta.ino()));
            parent = at.parent();
        }
        Ok(())
    }

    /// Sets what the next invocation may write: `limit` less what the files take (`None`:
    /// unbounded, for replay, which re-does writes that were allowed).
    pub(crate) fn allow(&self, limit: Option<u64>) {
        let budget = limit.map_or(i64::MAX, |limit| {
            i64::try_from(limit.saturating_sub(self.last_usage)).unwrap_or(i64::MAX)
        });
        self.budget
            .store(budget, std::sync::atomic::Ordering::Relaxed);
        self.exceeded
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes `bytes` from the budget; past it, says so (and remembers it) in words that stop
    /// the invocation.
    pub(crate) fn spend(
        budget: &std::sync::atomic::AtomicI64,
        exceeded: &std::sync::atomic::AtomicBool,
        bytes: usize,
    ) -> Result<(), String> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let before = budget.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
        if before < bytes {
            budget.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            exceeded.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(format!(
                "a write of {bytes} bytes goes past what `files_per_worker_bytes` leaves ({} bytes)",
                before.max(0)
            ));
        }
        Ok(())
    }
}

/// The worker's directory under the executor's `base`.
pub(crate) fn worker_dir(base: &Path, id: &WorkerId) -> PathBuf {
    base.join(id.tenant.as_str())
        .join(id.component.as_str())
        .join(id.worker.as_str())
}

/// Makes the worker's directory afresh with its version's files (`archive`: their canonical
/// archive), and says which are read-only. Blocking.
pub(crate) fn prepare(dir: &Path, archive: Option<&[u8]>) -> io::Result<Files> {
    remove(dir)?;
    std::fs::create_dir_all(dir)?;
    let mut files = Files {
        root: Some(dir.to_path_buf()),
        ..Files::default()
    };
    files.allow(None);
    let Some(archive) = archive else {
        return Ok(files);
    };
    for (path, read_only, content) in invicta_component_registry::files::entries(archive)? {
        let target = dir.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &content)?;
        if !read_only {
            files.last_usage = files.last_usage.saturating_add(content.len() as u64);
        }
        if read_only {
            let meta = std::fs::metadata(&target)?;
            let mut perms = meta.permissions();
            perms.set_readonly(true);
            std::fs::set_permissions(&target, perms)?;
            files.last_usage = files.last_usage.saturating_add(meta.len());
            files.mark_read_only(dir, &target, &meta)?;
        }
    }
    Ok(files)
}

/// The most bytes of files a snapshot holds: a worker holding more is not snapshotted.
pub(crate) const SNAPSHOT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The worker's directory as an archive, for a snapshot (links kept as links, modes kept, so
/// that read-only files stay so); `None` when it holds more than [`SNAPSHOT_BYTES_MAX`].
/// Blocking.
pub(crate) fn archive(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    if usage(dir)?.0 > SNAPSHOT_BYTES_MAX {
        return Ok(None);
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner().map(Some)
}

/// Makes the worker's directory afresh from a snapshot's archive of it. Blocking.
pub(crate) fn restore(dir: &Path, archive: &[u8]) -> io::Result<Files> {
    remove(dir)?;
    std::fs::create_dir_all(dir)?;
    let mut unpacking = tar::Archive::new(archive);
    unpacking.set_preserve_permissions(true);
    unpacking.set_overwrite(false);
    unpacking.unpack(dir)?;
    let mut files = Files {
        root: Some(dir.to_path_buf()),
        // Not the version's files any more: a later snapshot holds them too.
        touched: true,
        ..Files::default()
    };
    files.allow(None);
    files.last_usage = usage(dir)?.0;
    // The read-only files are those without their owner's write bit, as `prepare` left them.
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && meta.permissions().readonly() {
                files.mark_read_only(dir, &entry.path(), &meta)?;
            }
        }
    }
    Ok(files)
}

/// Removes the worker's directory, if there is one. Blocking.
pub(crate) fn remove(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            // Read-only directories inside (the worker may make them) are made writable first.
            make_writable(dir);
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

fn make_writable(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        let mut perms = meta.permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        let _ = std::fs::set_permissions(dir, perms);
    }
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&entry.path());
        }
    }
}

/// What the files under `dir` take: bytes (file sizes, and 512 bytes per entry, so that a worker
/// cannot hold unbounded names for free) and entries, counted up to just past [`ENTRIES_MAX`].
/// Blocking.
pub(crate) fn usage(dir: &Path) -> io::Result<(u64, u64)> {
    const ENTRY_BYTES: u64 = 512;
    let mut total = 0_u64;
    let mut entries = 0_u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at)? {
            let entry = entry?;
            entries += 1;
            if entries > ENTRIES_MAX {
                return Ok((total, entries));
            }
            // Not followed: a link is an entry, not what it points at.
            let meta = entry.metadata()?;
            total = total.saturating_add(ENTRY_BYTES);
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok((total, entries))
}

/// What is at a path of a worker's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileView {
    /// A directory: its entries, sorted by name.
    Directory(Vec<FileEntry>),
    /// A file's bytes.
    File(Vec<u8>),
}

/// One entry of a directory of a worker's files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `directory` or `symlink`.
    pub kind: String,
    pub size: u64,
    pub read_only: bool,
}

/// Why a path of a worker's files cannot be shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The path is not a path of plain names.
    InvalidPath(String),
    NotFound,
    /// A file larger than the API returns.
    TooLarge(u64),
    /// A symbolic link (the API does not follow them).
    Link,
    Io(String),
}

/// What is at `path` (`""` or `/`: the root) in the worker's directory `root`, whose read-only
/// inodes are `read_only`. Links are not followed. Blocking.
pub(crate) fn read(
    root: &Path,
    read_only: &HashSet<(u64, u64)>,
    path: &str,
) -> Result<FileView, ReadError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts
        .iter()
        .any(|p| *p == "." || *p == ".." || p.contains('\0') || p.len() > 255)
    {
        return Err(ReadError::InvalidPath(format!(
            "`{path}`: a path is made of plain names (no `.` or `..`)"
        )));
    }
    let mut at = root.to_path_buf();
    for part in parts {
        at.push(part);
        let meta = std::fs::symlink_metadata(&at).map_err(not_found)?;
        if meta.file_type().is_symlink() {
            return Err(ReadError::Link);
        }
    }
    let meta = std::fs::symlink_metadata(&at).map_err(not_found)?;
    if meta.is_file() {
        if meta.len() > READ_BYTES_MAX {
            return Err(ReadError::TooLarge(meta.len()));
        }
        return std::fs::read(&at)
            .map(FileView::File)
            .map_err(|e| ReadError::Io(e.to_string()));
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&at).map_err(|e| ReadError::Io(e.to_string()))? {
        let entry = entry.map_err(|e| ReadError::Io(e.to_string()))?;
        let meta = entry.metadata().map_err(|e| ReadError::Io(e.to_string()))?;
        let kind = if meta.is_dir() {
            "directory"
        } else if meta.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        entries.push(FileEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind: kind.into(),
            size: if meta.is_file() { meta.len() } else { 0 },
            read_only: read_only.contains(&(meta.dev(), meta.ino())),
        });
        if entries.len() > LIST_MAX {
            break;
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.truncate(LIST_MAX);
    Ok(FileView::Directory(entries))
}

fn not_found(e: io::Error) -> ReadError {
    if e.kind() == io::ErrorKind::NotFound {
        ReadError::NotFound
    } else {
        ReadError::Io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &[u8], bool)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content, read_only) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(if *read_only { 0o444 } else { 0o644 });
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, path, *content).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn an_executor_removes_what_crashed_executors_left_and_nothing_of_live_ones() {
        let root = tempfile::tempdir().unwrap();
        let live = Claim::take(root.path(), "exec-live").unwrap();
        std::fs::create_dir_all(live.dir().join("t/c/w")).unwrap();
        // What a crash leaves: a directory whose lock file nobody holds.
        let gone = root.path().join("exec-gone");
        std::fs::create_dir_all(gone.join("t/c/w")).unwrap();
        std::fs::write(gone.join(LOCK), b"").unwrap();
        std::fs::write(gone.join("t/c/w/notes.txt"), b"left behind").unwrap();
        // A directory of no executor (no lock file) is not ours to remove.
        std::fs::create_dir_all(root.path().join("other/x")).unwrap();

        let next = Claim::take(root.path(), "exec-next").unwrap();
        assert!(!gone.exists(), "the crashed executor's files are removed");
        assert!(live.dir().join("t/c/w").is_dir(), "a live executor's stay");
        assert!(root.path().join("other/x").is_dir());
        assert_eq!(next.dir(), root.path().join("exec-next"));

        // An executor that ends removes its own; one that is taken twice is refused.
        let dir = live.dir().to_path_buf();
        drop(live);
        assert!(!dir.exists());
        assert!(Claim::take(root.path(), "exec-next").is_err());
    }

    #[test]
    fn prepares_reads_and_lists_a_workers_files() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("w");
        let bytes = archive(&[
            ("etc/app.toml", b"x = 1", true),
            ("notes.txt", b"hi", false),
        ]);
        let files = prepare(&dir, Some(&bytes)).unwrap();
        assert_eq!(files.read_only.len(), 1);
        assert_eq!(
            read(&dir, &files.read_only, "/etc/app.toml").unwrap(),
            FileView::File(b"x = 1".to_vec())
        );
        let FileView::Directory(root) = read(&dir, &files.read_only, "/").unwrap() else {
            panic!("the root is a directory");
        };
        let names: Vec<_> = root
            .iter()
            .map(|e| (e.name.as_str(), e.kind.as_str()))
            .collect();
        assert_eq!(names, [("etc", "directory"), ("notes.txt", "file")]);
        let FileView::Directory(etc) = read(&dir, &files.read_only, "etc").unwrap() else {
            panic!("etc is a directory");
        };
        assert!(etc[0].read_only);
        assert_eq!(
            read(&dir, &files.read_only, "etc/../notes.txt"),
            Err(ReadError::InvalidPath(
                "`etc/../notes.txt`: a path is made of plain names (no `.` or `..`)".into()
            ))
        );
        assert!(matches!(
            read(&dir, &files.read_only, "missing/../etc"),
            Err(ReadError::InvalidPath(_))
        ));
        assert_eq!(
            read(&dir, &files.read_only, "missing"),
            Err(ReadError::NotFound)
        );
        // A snapshot's archive of the directory brings it back as it was, read-only files too.
        std::fs::write(dir.join("kept"), b"kept").unwrap();
        let archived = super::archive(&dir).unwrap().unwrap();
        std::fs::remove_file(dir.join("kept")).unwrap();
        let restored = restore(&dir, &archived).unwrap();
        assert_eq!(std::fs::read(dir.join("kept")).unwrap(), b"kept");
        assert_eq!(restored.read_only.len(), 1);
        assert_eq!(restored.read_only_dirs.len(), 1);
        assert!(restored.touched);
        // What the worker wrote is gone when it is made again.
        std::fs::write(dir.join("scratch"), b"written").unwrap();
        let again = prepare(&dir, Some(&bytes)).unwrap();
        assert!(!dir.join("scratch").exists());
        assert_eq!(again.read_only.len(), 1);
        let (bytes, entries) = usage(&dir).unwrap();
        assert!(
            bytes >= 7 && entries == 3,
            "{bytes} bytes, {entries} entries"
        );
        remove(&dir).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn links_are_not_followed() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("w");
        let files = prepare(&dir, None).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("out")).unwrap();
        assert_eq!(
            read(&dir, &files.read_only, "out/passwd"),
            Err(ReadError::Link)
        );
    }
}
