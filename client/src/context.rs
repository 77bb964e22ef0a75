//! Contexts: where `backupctl` finds the service and its token without flags — a YAML file
//! (`$BACKUPCTL_CONFIG`, default `~/.config/monoskope-backup/backupctl.yaml`, written 0600) of
//! named contexts and the current one, as `kubectl` keeps its contexts. Flags and environment
//! variables override the context; the context overrides the defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use monoskope_backup_client::ClientError;
use serde::{Deserialize, Serialize};

/// One context: a service and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Context {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub server: Option<String>,
    /// File holding the bearer token (never the token itself).
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate for `https://`.
    pub ca_file: Option<PathBuf>,
    /// Longest a call may wait, e.g. `30s`.
    pub timeout: Option<String>,
}

/// The file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ContextFile {
    /// The context used when none is named.
    pub current: Option<String>,
    /// Every context, by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the file is.
pub(crate) fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BACKUPCTL_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("monoskope-backup/backupctl.yaml"))
}

impl ContextFile {
    /// The file at `p` (empty when it does not exist).
    pub(crate) fn load(p: &Path) -> Result<Self, ClientError> {
        match std::fs::read_to_string(p) {
            Ok(text) => serde_yaml::from_str(&text)
                .map_err(|e| ClientError::Usage(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ClientError::Local(format!(
                "cannot read {}: {e}",
                p.display()
            ))),
        }
    }

    /// Writes the file to `p`, readable by its owner only.
    pub(crate) fn save(&self, p: &Path) -> Result<(), ClientError> {
        let err =
            |e: std::io::Error| ClientError::Local(format!("cannot write {}: {e}", p.display()));
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let text = serde_yaml::to_string(self).map_err(|e| ClientError::Local(e.to_string()))?;
        let tmp = p.with_extension("yaml.tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err)?;
            f.write_all(text.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, p).map_err(err)
    }

    /// The context `name`, or the current one; `None` when neither is set.
    pub(crate) fn pick(
        &self,
        name: Option<&str>,
    ) -> Result<Option<(String, Context)>, ClientError> {
        let Some(name) = name.or(self.current.as_deref()) else {
            return Ok(None);
        };
        match self.contexts.get(name) {
            Some(c) => Ok(Some((name.to_string(), c.clone()))),
            None => Err(ClientError::Usage(format!(
                "no context {name:?} (known: {}); add it with `backupctl context set {name} --server URL`",
                if self.contexts.is_empty() {
                    "none".to_string()
                } else {
                    self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ))),
        }
    }
}
