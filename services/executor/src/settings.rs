//! Configuration and secrets of components and workers, as `wasi:config/store` serves them.
//!
//! A value is set per component (every worker sees it) or per worker (which overrides the
//! component's), over the API. It lives in the store: `("config", tenant, component, worker,
//! key)`, the worker empty for the component's own. A secret is sealed there (AES-256-GCM under
//! the operator's secrets key, with the entry's store key as associated data, so a sealed value
//! cannot be moved to another key), never shown by the API again, and never written to an oplog
//! in clear: a worker's read of it records a reference, which replay resolves again.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use invicta_model::{ComponentName, TenantId, WorkerId, WorkerName};
use invicta_store::RangeOptions;
use invicta_store::keys::pack;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest key and value accepted, in bytes.
pub const KEY_BYTES_MAX: usize = 256;
pub const VALUE_BYTES_MAX: usize = 16 * 1024;
/// Keys one component or worker may have.
pub const KEYS_MAX: usize = 200;

/// The operator's key for secrets: 32 bytes, hex in a file (made on first start, mode 0600)
/// or in `INVICTA_SECRETS_KEY`.
#[derive(Clone)]
pub struct SecretsKey(std::sync::Arc<LessSafeKey>, aws_lc_rs::hmac::Key);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    /// The key in `hex` (64 hex digits).
    pub fn from_hex(hex: &str) -> Result<SecretsKey, String> {
        let bytes =
            hex::decode(hex.trim()).map_err(|_| "the secrets key is not hex".to_string())?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| "the secrets key is not 32 bytes (64 hex digits)".to_string())?;
        // Digests of secret values are keyed apart from the sealing.
        let mac = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &[&bytes[..], b"digest"].concat(),
        );
        Ok(SecretsKey(std::sync::Arc::new(LessSafeKey::new(key)), mac))
    }

    /// The key in `path`, made there first if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<SecretsKey, String> {
        let shown = path.display();
        match std::fs::read_to_string(path) {
            Ok(text) => SecretsKey::from_hex(&text).map_err(|e| format!("{shown}: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::random();
                let text = hex::encode(bytes);
                write_private(path, &text).map_err(|e| format!("create {shown}: {e}"))?;
                SecretsKey::from_hex(&text)
            }
            Err(e) => Err(format!("read {shown}: {e}")),
        }
    }

    /// A keyed digest of a secret's value, which an oplog may keep: it tells whether the value
    /// changed without telling what it is.
    pub(crate) fn digest(&self, value: &str) -> String {
        hex::encode(&aws_lc_rs::hmac::sign(&self.1, value.as_bytes()).as_ref()[..16])
    }

    fn seal(&self, place: &[u8], plain: &str) -> Result<String> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut sealed = plain.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place),
                &mut sealed,
            )
            .map_err(|_| Error::Engine("sealing a secret failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    fn open(&self, place: &[u8], sealed: &str) -> Result<String> {
        let corrupt = || Error::Corrupt("a secret that this key does not open".into());
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| corrupt())?;
        if bytes.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?;
        let mut rest = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(place), &mut rest)
            .map_err(|_| corrupt())?;
        String::from_utf8(plain.to_vec()).map_err(|_| corrupt())
    }
}

/// The secrets key: `INVICTA_SECRETS_KEY`, else the file (made if absent), else a key of this
/// process's own.
pub(crate) fn load_key(file: Option<&Path>) -> Result<SecretsKey, String> {
    if let Ok(hex) = std::env::var("INVICTA_SECRETS_KEY")
        && !hex.trim().is_empty()
    {
        return SecretsKey::from_hex(&hex).map_err(|e| format!("INVICTA_SECRETS_KEY: {e}"));
    }
    match file {
        Some(path) => SecretsKey::load_or_create(path),
        None => SecretsKey::from_hex(&hex::encode(rand::random::<[u8; 32]>())),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// An entry as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    /// The value, unless it is a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// A secret's value, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
    updated_at_ms: u64,
}

/// An entry as the API shows it: a secret's value never.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfigEntry {
    pub key: String,
    /// The value; absent for a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub secret: bool,
    /// Where it is set: `component` or `worker`.
    pub scope: String,
    pub updated_at_ms: u64,
}

/// What a worker sees: each key's value, or (for a secret) the keyed digest of its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    Value(String),
    Secret(String),
}

fn entry_key(tenant: &str, component: &str, worker: &str, key: &str) -> Vec<u8> {
    pack(&("config", tenant, component, worker, key))
}

fn scope_prefix(tenant: &str, component: &str, worker: &str) -> Vec<u8> {
    pack(&("config", tenant, component, worker))
}

/// Every entry of a component and its workers (removed with the component).
pub(crate) fn component_prefix(tenant: &TenantId, component: &ComponentName) -> Vec<u8> {
    pack(&("config", tenant.as_str(), component.as_str()))
}

/// A worker's own entries (removed with the worker).
pub(crate) fn worker_prefix(worker: &WorkerId) -> Vec<u8> {
    scope_prefix(
        worker.tenant.as_str(),
        worker.component.as_str(),
        worker.worker.as_str(),
    )
}

/// Where an entry is set: a component, or one of its workers.
#[derive(Debug, Clone)]
pub(crate) struct Scope<'a> {
    pub tenant: &'a TenantId,
    pub component: &'a ComponentName,
    pub worker: Option<&'a WorkerName>,
}

impl Scope<'_> {
    fn worker_name(&self) -> &str {
        self.worker.map_or("", |w| w.as_str())
    }

    fn prefix(&self) -> Vec<u8> {
        scope_prefix(
            self.tenant.as_str(),
            self.component.as_str(),
            self.worker_name(),
        )
    }

    fn place(&self, key: &str) -> Vec<u8> {
        entry_key(
            self.tenant.as_str(),
            self.component.as_str(),
            self.worker_name(),
            key,
        )
    }

    fn name(&self) -> &'static str {
        if self.worker.is_some() {
            "worker"
        } else {
            "component"
        }
    }
}

fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= KEY_BYTES_MAX
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "a config key is 1 to {KEY_BYTES_MAX} letters, digits, `_`, `-`, `.` or `/`"
        )))
    }
}

fn now_ms() -> u64 {
    crate::support::now_ms()
}

/// Sets `key` in `scope` to `value`, sealed when `secret`.
pub(crate) async fn set(
    store: &invicta_store::Store,
    secrets: &SecretsKey,
    scope: &Scope<'_>,
    key: &str,
    value: &str,
    secret: bool,
) -> Result<ConfigEntry> {
    check_key(key)?;
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::InvalidRequest(format!(
            "the value is {} bytes; the limit is {VALUE_BYTES_MAX}",
            value.len()
        )));
    }
    let place = scope.place(key);
    let stored = Stored {
        value: (!secret).then(|| value.to_string()),
        sealed: secret.then(|| secrets.seal(&place, value)).transpose()?,
        updated_at_ms: now_ms(),
    };
    let bytes = crate::records::encode_json(&stored);
    let prefix = scope.prefix();
    store
        .transact(move |tx| {
            if tx.get(&place)?.is_none() {
                let count = tx
                    .get_prefix(
                        &prefix,
                        RangeOptions {
                            limit: Some(KEYS_MAX + 1),
                            ..Default::default()
                        },
                    )?
                    .len();
                if count >= KEYS_MAX {
                    return Err(Error::QuotaExceeded {
                        quota: "config_keys",
                        limit: KEYS_MAX as u64,
                        used: count as u64,
                    });
                }
            }
            tx.set(&place, &bytes)?;
            Ok(())
        })
        .await?;
    Ok(ConfigEntry {
        key: key.to_string(),
        value: (!secret).then(|| value.to_string()),
        secret,
        scope: scope.name().into(),
        updated_at_ms: stored.updated_at_ms,
    })
}

/// Removes `key` from `scope`; whether it was there.
pub(crate) async fn unset(
    store: &invicta_store::Store,
    scope: &Scope<'_>,
    key: &str,
) -> Result<bool> {
    check_key(key)?;
    let place = scope.place(key);
    store
        .transact(move |tx| {
            let there = tx.get(&place)?.is_some();
            tx.clear(&place)?;
            Ok::<_, Error>(there)
        })
        .await
}

/// The entries set in `scope` alone, secrets without values.
pub(crate) async fn list(
    store: &invicta_store::Store,
    scope: &Scope<'_>,
) -> Result<Vec<ConfigEntry>> {
    let prefix = scope.prefix();
    let pairs = store
        .read(move |tx| tx.get_prefix(&prefix, RangeOptions::default()))
        .await?;
    pairs
        .iter()
        .map(|kv| {
            let (_, _, _, _, key): (String, String, String, String, String) =
                invicta_store::keys::unpack(&kv.key)
                    .map_err(|e| Error::Corrupt(format!("a config key: {e}")))?;
            let stored: Stored = crate::records::decode_json("config entry", &kv.value)?;
            Ok(ConfigEntry {
                key,
                secret: stored.sealed.is_some(),
                value: stored.value,
                scope: scope.name().into(),
                updated_at_ms: stored.updated_at_ms,
            })
        })
        .collect()
}

/// What the worker sees: the component's entries, overridden by the worker's, by key.
pub(crate) async fn seen(
    store: &invicta_store::Store,
    secrets: &SecretsKey,
    worker: &WorkerId,
) -> Result<Vec<(String, Seen)>> {
    let (t, c, w) = (
        worker.tenant.to_string(),
        worker.component.to_string(),
        worker.worker.to_string(),
    );
    let (shared, own) = store
        .read(move |tx| {
            let shared = tx.get_prefix(&scope_prefix(&t, &c, ""), RangeOptions::default())?;
            let own = tx.get_prefix(&scope_prefix(&t, &c, &w), RangeOptions::default())?;
            Ok::<_, Error>((shared, own))
        })
        .await?;
    let mut seen = std::collections::BTreeMap::new();
    for kv in shared.iter().chain(own.iter()) {
        let (_, _, _, _, key): (String, String, String, String, String) =
            invicta_store::keys::unpack(&kv.key)
                .map_err(|e| Error::Corrupt(format!("a config key: {e}")))?;
        let stored: Stored = crate::records::decode_json("config entry", &kv.value)?;
        let what = match (stored.value, stored.sealed) {
            (Some(value), _) => Seen::Value(value),
            (None, Some(sealed)) => Seen::Secret(secrets.digest(&secrets.open(&kv.key, &sealed)?)),
            (None, None) => continue,
        };
        seen.insert(key, what);
    }
    Ok(seen.into_iter().collect())
}

/// The value of the worker's secret `key` now (the worker's own, else the component's), if it
/// has one.
pub(crate) async fn reveal(
    store: &invicta_store::Store,
    secrets: &SecretsKey,
    worker: &WorkerId,
    key: &str,
) -> Result<Option<String>> {
    let (t, c, w) = (
        worker.tenant.to_string(),
        worker.component.to_string(),
        worker.worker.to_string(),
    );
    let places = [entry_key(&t, &c, &w, key), entry_key(&t, &c, "", key)];
    let found = store
        .read({
            let places = places.clone();
            move |tx| {
                for place in &places {
                    if let Some(bytes) = tx.get(place)? {
                        return Ok::<_, Error>(Some((place.clone(), bytes)));
                    }
                }
                Ok(None)
            }
        })
        .await?;
    let Some((place, bytes)) = found else {
        return Ok(None);
    };
    let stored: Stored = crate::records::decode_json("config entry", &bytes)?;
    match (stored.sealed, stored.value) {
        (Some(sealed), _) => secrets.open(&place, &sealed).map(Some),
        (None, value) => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_in_its_place_and_with_its_key() {
        let key = SecretsKey::from_hex(&"11".repeat(32)).expect("a key");
        let sealed = key.seal(b"here", "hunter2").expect("sealed");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open(b"here", &sealed).ok().as_deref(), Some("hunter2"));
        assert!(key.open(b"there", &sealed).is_err(), "moved to another key");
        let other = SecretsKey::from_hex(&"22".repeat(32)).expect("a key");
        assert!(
            other.open(b"here", &sealed).is_err(),
            "another operator's key"
        );
        assert!(key.open(b"here", "not base64!").is_err());
        assert!(SecretsKey::from_hex("abcd").is_err());
    }
}
