//! The local-directory backend: one file per blob at `root/key`, written atomically.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Backend, BlobMeta, Error, Result, Staged, io};

/// Staging directory under the root: on the same filesystem, so that a rename publishes a blob.
const STAGING: &str = ".staging";

/// Bounds a listing's walk of directories (blobs sit a few levels deep).
const LIST_DEPTH_MAX: usize = 16;

pub(crate) struct Local {
    root: PathBuf,
}

impl Local {
    pub(crate) async fn open(root: &Path) -> Result<Local> {
        tokio::fs::create_dir_all(root.join(STAGING))
            .await
            .map_err(io(format!("create blob directory {}", root.display())))?;
        Ok(Local {
            root: root.to_path_buf(),
        })
    }
}

fn not_found(key: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                key: key.to_string(),
            }
        } else {
            Error::Io {
                context: format!("read blob {key}"),
                source: e,
            }
        }
    }
}

#[async_trait]
impl Backend for Local {
    async fn put_staged(&self, key: &str, staged: Staged) -> Result<()> {
        let path = self.root.join(key);
        let key = key.to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let parent = path.parent().ok_or_else(|| Error::InvalidKey {
                key: key.clone(),
                reason: "no parent directory",
            })?;
            std::fs::create_dir_all(parent).map_err(io(format!("create directory for {key}")))?;
            staged
                .file
                .persist(&path)
                .map_err(|e| io(format!("publish blob {key}"))(e.error))?;
            // The rename is durable only once its directory is.
            std::fs::File::open(parent)
                .and_then(|dir| dir.sync_all())
                .map_err(io(format!("sync directory of {key}")))
        })
        .await
        .map_err(|e| Error::Io {
            context: "publish blob".into(),
            source: std::io::Error::other(e),
        })?
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let bytes = tokio::fs::read(self.root.join(key))
            .await
            .map_err(not_found(key))?;
        Ok(Bytes::from(bytes))
    }

    async fn head(&self, key: &str) -> Result<Option<BlobMeta>> {
        match tokio::fs::metadata(self.root.join(key)).await {
            Ok(meta) if meta.is_file() => Ok(Some(BlobMeta {
                key: key.to_string(),
                size: meta.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(not_found(key)(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match tokio::fs::remove_file(self.root.join(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("delete blob {key}"))(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>> {
        let mut found = Vec::new();
        let mut pending = vec![(prefix.trim_end_matches('/').to_string(), 0_usize)];
        while let Some((dir_key, depth)) = pending.pop() {
            let mut entries = match tokio::fs::read_dir(self.root.join(&dir_key)).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(format!("list blobs under {dir_key}"))(e)),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(io(format!("list blobs under {dir_key}")))?
            {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let key = format!("{dir_key}/{name}");
                let meta = entry
                    .metadata()
                    .await
                    .map_err(io(format!("stat blob {key}")))?;
                if meta.is_dir() && depth < LIST_DEPTH_MAX {
                    pending.push((key, depth + 1));
                } else if meta.is_file() {
                    found.push(BlobMeta {
                        key,
                        size: meta.len(),
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join(STAGING)
    }
}
