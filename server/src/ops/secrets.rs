//! Encryption keys from files and the environment — never from a command-line argument.
//!
//! Sources, first found wins: `--key-file PATH` (a keyring: one base64 key per line, the first
//! the primary), `BACKUP_ENCRYPTION_KEY` (base64 of 32 bytes), `BACKUP_PASSPHRASE`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};

use crate::archive::{Argon2Params, Keyring, Keys, MasterKey, Passphrase, Protection};

/// Environment variable holding a base64 master key.
pub const ENV_KEY: &str = "BACKUP_ENCRYPTION_KEY";
/// Environment variable holding a passphrase.
pub const ENV_PASSPHRASE: &str = "BACKUP_PASSPHRASE";

/// Refuses combinations of key sources that would silently weaken or pick: two places a key
/// comes from (a key file and `BACKUP_ENCRYPTION_KEY`, a key and `BACKUP_PASSPHRASE`), or a key
/// together with the request for unencrypted archives. `key_file` and `no_encryption` name
/// where each was set; the environment is read here. Returns the message naming both sources.
pub fn check_sources(key_file: Option<&str>, no_encryption: Option<&str>) -> Result<(), String> {
    let env_key = std::env::var_os(ENV_KEY).is_some();
    let env_pass = std::env::var_os(ENV_PASSPHRASE).is_some();
    let mut keys: Vec<&str> = Vec::new();
    keys.extend(key_file);
    if env_key {
        keys.push(ENV_KEY);
    }
    if env_pass {
        keys.push(ENV_PASSPHRASE);
    }
    if let [a, b, ..] = keys[..] {
        return Err(format!(
            "{a} and {b} are both set: give exactly one source of the encryption key"
        ));
    }
    if let (Some(k), Some(n)) = (keys.first(), no_encryption) {
        return Err(format!(
            "{k} and {n} are both set: a key with unencrypted archives is a contradiction; unset one"
        ));
    }
    Ok(())
}

/// Loads the keys for reading archives; an empty [`Keys`] when none is configured.
pub fn load_keys(key_file: Option<&Path>) -> anyhow::Result<Keys> {
    if let Some(path) = key_file {
        warn_if_readable_by_others(path);
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read key file {}", path.display()))?;
        let ring = Keyring::parse(&text).with_context(|| format!("key file {}", path.display()))?;
        return Ok(Keys::keyring(ring));
    }
    if let Ok(text) = std::env::var(ENV_KEY) {
        let key = MasterKey::from_base64(&text).context(ENV_KEY)?;
        return Ok(Keys::keyring(Keyring::new(vec![key])?));
    }
    if let Ok(p) = std::env::var(ENV_PASSPHRASE) {
        return Ok(Keys {
            keyring: None,
            passphrase: Some(Passphrase::new(p).context(ENV_PASSPHRASE)?),
        });
    }
    Ok(Keys::none())
}

/// How new archives are protected: the primary key, else the passphrase; no key is an error
/// unless `no_encryption` was asked for explicitly.
pub fn protection(keys: &Keys, no_encryption: bool) -> anyhow::Result<Protection> {
    if no_encryption {
        return Ok(Protection::Unencrypted);
    }
    if let Some(ring) = &keys.keyring {
        return Ok(Protection::Key(ring.primary().clone()));
    }
    if let Some(p) = &keys.passphrase {
        return Ok(Protection::Passphrase(p.clone(), Argon2Params::default()));
    }
    bail!("no encryption key: give --key-file, {ENV_KEY} or {ENV_PASSPHRASE} (or --no-encryption to write unencrypted archives)")
}

/// Writes a new key file readable only by its owner (0600), refusing to overwrite.
pub fn write_key_file(path: &Path, key: &MasterKey) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} already exists; refusing to overwrite a key file",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
        }
    })?;
    writeln!(f, "{}", key.to_base64())?;
    f.sync_all()?;
    Ok(())
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "key file is readable by group or others; chmod 600 it");
            }
        }
    }
}
