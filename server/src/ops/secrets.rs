//! Encryption keys from files and the environment — never from a command-line argument.
//!
//! Writing takes exactly one of: `--key-file PATH` (repeatable: a keyring, one base64 key per
//! line, the first key of the first file the primary), `BACKUP_ENCRYPTION_KEY` (base64 of 32
//! bytes), `BACKUP_PASSPHRASE`, or `--recipient-file PATH` (age X25519 recipients: write-only).
//! Reading takes any of them, plus `--identity-file PATH` (repeatable) for recipients.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::archive::{Argon2Params, Keyring, Keys, MasterKey, Passphrase, Protection, Recipient};

/// Environment variable holding a base64 master key.
pub const ENV_KEY: &str = "BACKUP_ENCRYPTION_KEY";
/// Environment variable holding a passphrase.
pub const ENV_PASSPHRASE: &str = "BACKUP_PASSPHRASE";

/// Refuses combinations of key sources that would silently weaken or pick: two places a key
/// comes from (a key file and `BACKUP_ENCRYPTION_KEY`, a key and `BACKUP_PASSPHRASE`), a key
/// and recipients (two kinds where new archives take one), or a key or recipients together with
/// the request for unencrypted archives. The arguments name where each was set (`None`: not
/// set); the environment is read here. Returns the message naming both sources.
pub fn check_sources(
    key_file: Option<&str>,
    recipient_file: Option<&str>,
    no_encryption: Option<&str>,
) -> Result<(), String> {
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
    if let (Some(k), Some(r)) = (keys.first(), recipient_file) {
        return Err(format!(
            "{k} and {r} are both set: new backups are encrypted either to a key or to recipients; give one (rewrap takes both: it reads with the key and wraps to the recipients)"
        ));
    }
    if let (Some(k), Some(n)) = (keys.first().or(recipient_file.as_ref()), no_encryption) {
        return Err(format!(
            "{k} and {n} are both set: a key with unencrypted archives is a contradiction; unset one"
        ));
    }
    Ok(())
}

/// Loads the keys for reading archives: every key of every key file (the first key of the
/// first file the primary), else `BACKUP_ENCRYPTION_KEY`; `BACKUP_PASSPHRASE`; the identities of
/// every identity file. An empty [`Keys`] when none is configured; a file that cannot be read
/// or holds nothing is an error.
pub fn load_keys(key_files: &[PathBuf], identity_files: &[PathBuf]) -> anyhow::Result<Keys> {
    let mut keys = Keys::none();
    let mut ring: Vec<MasterKey> = Vec::new();
    for path in key_files {
        warn_if_readable_by_others(path);
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read key file {}", path.display()))?;
        let r = Keyring::parse(&text).with_context(|| format!("key file {}", path.display()))?;
        for id in r.ids() {
            if let Some(k) = r.get(&id) {
                if ring.iter().all(|have| have.id() != id) {
                    ring.push(k.clone());
                }
            }
        }
    }
    if ring.is_empty() {
        if let Ok(text) = std::env::var(ENV_KEY) {
            ring.push(MasterKey::from_base64(&text).context(ENV_KEY)?);
        }
    }
    if !ring.is_empty() {
        keys.keyring = Some(Keyring::new(ring)?);
    }
    if let Ok(p) = std::env::var(ENV_PASSPHRASE) {
        keys.passphrase = Some(Passphrase::new(p).context(ENV_PASSPHRASE)?);
    }
    for path in identity_files {
        warn_if_readable_by_others(path);
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read identity file {}", path.display()))?;
        let ids = crate::archive::parse_identities(&text)
            .with_context(|| format!("identity file {}", path.display()))?;
        keys.identities.extend(ids);
    }
    Ok(keys)
}

/// Loads the recipients new archives are encrypted to; a file that cannot be read or lists
/// nobody is an error (it would write archives nobody can read, or silently fall back).
pub fn load_recipients(path: &Path) -> anyhow::Result<Vec<Recipient>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read recipient file {}", path.display()))?;
    crate::archive::parse_recipients(&text)
        .with_context(|| format!("recipient file {}", path.display()))
}

/// How new archives are protected: the recipients when given (write-only), else the primary
/// key, else the passphrase; no key is an error unless `no_encryption` was asked for
/// explicitly.
pub fn protection(
    keys: &Keys,
    recipients: Option<Vec<Recipient>>,
    no_encryption: bool,
) -> anyhow::Result<Protection> {
    if no_encryption {
        return Ok(Protection::Unencrypted);
    }
    if let Some(rs) = recipients {
        return Ok(Protection::Recipients(rs));
    }
    if let Some(ring) = &keys.keyring {
        return Ok(Protection::Key(ring.primary().clone()));
    }
    if let Some(p) = &keys.passphrase {
        return Ok(Protection::Passphrase(p.clone(), Argon2Params::default()));
    }
    bail!("no encryption key: give --key-file, {ENV_KEY}, {ENV_PASSPHRASE} or --recipient-file (or --no-encryption to write unencrypted archives)")
}

/// Writes a new identity file (mode 0600, never overwriting), as the `age` tool keeps one.
pub fn write_identity_file(path: &Path, id: &crate::archive::Identity) -> anyhow::Result<()> {
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    write_secret_file(
        path,
        id.to_file_text(&created).as_bytes(),
        "an identity file",
    )
}

/// Writes a new key file readable only by its owner (0600), refusing to overwrite.
pub fn write_key_file(path: &Path, key: &MasterKey) -> anyhow::Result<()> {
    write_secret_file(
        path,
        format!("{}\n", key.to_base64()).as_bytes(),
        "a key file",
    )
}

fn write_secret_file(path: &Path, bytes: &[u8], what: &str) -> anyhow::Result<()> {
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
                "{} already exists; refusing to overwrite {what}",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
        }
    })?;
    f.write_all(bytes)?;
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
