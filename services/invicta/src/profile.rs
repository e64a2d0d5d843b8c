//! Profiles: named pairs of a server URL and an API key, kept in `profiles.toml` under
//! `$INVICTA_CONFIG_DIR`, else `$XDG_CONFIG_HOME/invicta`, else `~/.config/invicta`. The file
//! holds keys, so it is written readable by its owner only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profiles {
    /// The profile used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// Where the profiles live.
pub fn path() -> Option<PathBuf> {
    let dir = match std::env::var_os("INVICTA_CONFIG_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("XDG_CONFIG_HOME") {
            Some(dir) => PathBuf::from(dir).join("invicta"),
            None => PathBuf::from(std::env::var_os("HOME")?)
                .join(".config")
                .join("invicta"),
        },
    };
    Some(dir.join("profiles.toml"))
}

impl Profiles {
    /// The saved profiles (none if the file does not exist).
    pub fn load() -> Result<Profiles, String> {
        let Some(path) = path() else {
            return Ok(Profiles::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("read {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profiles::default()),
            Err(e) => Err(format!("read {}: {e}", path.display())),
        }
    }

    pub fn save(&self) -> Result<PathBuf, String> {
        let path = path().ok_or("no home directory: set INVICTA_CONFIG_DIR")?;
        let text = toml::to_string(self).map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let temp = path.with_extension("toml.tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)
                .map_err(|e| format!("write {}: {e}", temp.display()))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("write {}: {e}", temp.display()))?;
        }
        std::fs::rename(&temp, &path).map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The profile named, or the current one; an unknown name is an error.
    pub fn select(&self, name: Option<&str>) -> Result<Profile, String> {
        match name.or(self.current.as_deref()) {
            None => Ok(Profile::default()),
            Some(name) => self
                .profiles
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no profile `{name}` (see `invicta profile list`)")),
        }
    }
}
