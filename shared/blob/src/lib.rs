//! The blob store: objects too large for the transactional store (component bytes, precompiled
//! artifacts, oplog archives, snapshots), content-addressed by SHA-256 under a prefix per kind,
//! e.g. `components/<sha256>`. The store keeps a [`BlobRef`] and the bytes live here.
//!
//! Backends: a local directory (the default; atomic writes: temporary file, fsync, rename, fsync
//! of the directory) and an S3 bucket through `aws-sdk-s3`. Uploads are streamed through a
//! staging file while they are hashed, so memory stays flat whatever the object's size.
//!
//! **Invariant:** a blob's key names its content: the bytes under `prefix/<sha256>` always hash to
//! that SHA-256, so a put of the same bytes is idempotent and a reader can verify what it got.

mod local;
mod s3;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The largest blob accepted: S3's limit for a single PUT.
pub const BLOB_BYTES_MAX: u64 = 5 * 1024 * 1024 * 1024;

/// The longest key accepted (S3 allows 1,024 bytes).
pub const KEY_BYTES_MAX: usize = 1_024;

/// Upload and hashing buffer size.
const CHUNK_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob {key} not found")]
    NotFound { key: String },
    #[error("invalid blob key or prefix {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("blob is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("blob {key} is corrupt: its content hashes to {actual}")]
    Corrupt { key: String, actual: String },
    #[error("blob store I/O: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("S3: {context}: {message}")]
    S3 { context: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Where blobs live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum Config {
    /// A directory on the local disk.
    Local { path: PathBuf },
    /// An S3 bucket (or any S3-compatible server).
    S3(S3Config),
}

impl Config {
    /// The local backend in `data_dir/blobs`.
    pub fn local_in(data_dir: &std::path::Path) -> Self {
        Config::Local {
            path: data_dir.join("blobs"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// The endpoint URL; `None` for AWS itself.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Static credentials; when absent, the `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
    /// environment variables.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default)]
    pub path_style: bool,
    /// Where uploads are staged while they are hashed; the system's temp dir by default.
    #[serde(default)]
    pub staging_dir: Option<PathBuf>,
}

fn default_region() -> String {
    "us-east-1".to_string()
}

/// A stored blob: its key, size and content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub key: String,
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// What a listing or a head request says of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub key: String,
    pub size: u64,
}

/// A staged upload: a local file holding the bytes, with their hash and size.
pub(crate) struct Staged {
    pub file: tempfile::TempPath,
    pub sha256: String,
    pub size: u64,
}

#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// Stores the staged bytes under `key`, atomically: readers see all of them or none.
    async fn put_staged(&self, key: &str, staged: Staged) -> Result<()>;
    async fn get(&self, key: &str) -> Result<Bytes>;
    async fn head(&self, key: &str) -> Result<Option<BlobMeta>>;
    /// Deletes `key`; deleting what is not there is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Every blob whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>>;
    fn staging_dir(&self) -> PathBuf;
}

/// A handle on the blob store, cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    backend: Arc<dyn Backend>,
    kind: &'static str,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("backend", &self.kind)
            .finish()
    }
}

impl BlobStore {
    pub async fn open(config: &Config) -> Result<BlobStore> {
        match config {
            Config::Local { path } => Ok(BlobStore {
                backend: Arc::new(local::Local::open(path).await?),
                kind: "local",
            }),
            Config::S3(s3) => Ok(BlobStore {
                backend: Arc::new(s3::S3::open(s3).await?),
                kind: "s3",
            }),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        self.kind
    }

    /// Streams `body` in under `prefix/<sha256 of body>` and returns its reference. Putting bytes
    /// that are already stored changes nothing.
    pub async fn put(&self, prefix: &str, body: impl AsyncRead + Unpin + Send) -> Result<BlobRef> {
        validate(prefix)?;
        let staged = stage(&self.backend.staging_dir(), body).await?;
        let key = format!("{prefix}/{}", staged.sha256);
        let blob = BlobRef {
            key: key.clone(),
            size: staged.size,
            sha256: staged.sha256.clone(),
        };
        if self
            .backend
            .head(&key)
            .await?
            .is_some_and(|m| m.size == blob.size)
        {
            return Ok(blob);
        }
        self.backend.put_staged(&key, staged).await?;
        Ok(blob)
    }

    /// [`BlobStore::put`] of bytes in memory.
    pub async fn put_bytes(&self, prefix: &str, bytes: &[u8]) -> Result<BlobRef> {
        self.put(prefix, bytes).await
    }

    /// The whole blob at `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        validate(key)?;
        self.backend.get(key).await
    }

    /// The blob a reference names, checked against its hash.
    pub async fn get_verified(&self, blob: &BlobRef) -> Result<Bytes> {
        let bytes = self.get(&blob.key).await?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != blob.sha256 {
            return Err(Error::Corrupt {
                key: blob.key.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    pub async fn head(&self, key: &str) -> Result<Option<BlobMeta>> {
        validate(key)?;
        self.backend.head(key).await
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        validate(key)?;
        self.backend.delete(key).await
    }

    /// Every blob under `prefix` (a whole path segment: `components` lists `components/…`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>> {
        validate(prefix)?;
        self.backend.list(&format!("{prefix}/")).await
    }
}

/// Keys are `/`-separated segments of ASCII letters, digits, `.`, `_` and `-`; no empty, `.` or
/// `..` segments: they are paths on the local backend and must not escape its root.
fn validate(key: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidKey {
            key: key.chars().take(KEY_BYTES_MAX).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("empty");
    }
    if key.len() > KEY_BYTES_MAX {
        return invalid("longer than 1024 bytes");
    }
    for segment in key.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return invalid("empty, `.` or `..` path segment");
        }
        if segment.starts_with(".staging") {
            return invalid("reserved segment name");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return invalid("only ASCII letters, digits, `.`, `_` and `-` are allowed");
        }
    }
    Ok(())
}

/// Copies `body` into a new file in `dir`, hashing it on the way, and syncs it to disk.
async fn stage(dir: &std::path::Path, mut body: impl AsyncRead + Unpin + Send) -> Result<Staged> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io(format!("create staging directory {}", dir.display())))?;
    let dir_owned = dir.to_path_buf();
    let temp = tokio::task::spawn_blocking(move || tempfile::NamedTempFile::new_in(dir_owned))
        .await
        .map_err(|e| Error::Io {
            context: "create staging file".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(io("create staging file"))?;
    let (std_file, path) = temp.into_parts();
    let mut file = tokio::fs::File::from_std(std_file);
    let mut hasher = Sha256::new();
    let mut size = 0_u64;
    let mut buf = vec![0_u8; CHUNK_BYTES];
    loop {
        let n = body.read(&mut buf).await.map_err(io("read blob body"))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > BLOB_BYTES_MAX {
            return Err(Error::TooLarge {
                limit: BLOB_BYTES_MAX,
            });
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .await
            .map_err(io("write staging file"))?;
    }
    file.sync_all().await.map_err(io("sync staging file"))?;
    Ok(Staged {
        file: path,
        sha256: hex::encode(hasher.finalize()),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "../x",
            "a/../b",
            "a/./b",
            "a b",
            "ä",
            ".staging/x",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} was accepted");
        }
        for good in ["a", "components/abc-1.2_3", "x/y/z"] {
            assert!(validate(good).is_ok(), "{good:?} was refused");
        }
        assert!(validate(&"a".repeat(KEY_BYTES_MAX + 1)).is_err());
    }
}
