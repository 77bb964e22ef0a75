//! Where a command's keys come from: its flags (and their environment variables), else the
//! configuration file's `encryption` block.

use std::path::PathBuf;

use super::KeyArgs;
use crate::ops::config::EncryptionConfig;

/// The key, recipient and identity files a command was given, and where each was set.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// Key files, in order (the first key of the first file encrypts).
    pub key_files: Vec<PathBuf>,
    /// Where they were set, for messages; `None` when none was.
    pub key_files_from: Option<&'static str>,
    /// The recipients file.
    pub recipient_file: Option<PathBuf>,
    /// Where it was set.
    pub recipient_from: Option<&'static str>,
    /// Identity files.
    pub identity_files: Vec<PathBuf>,
}

impl KeyArgs {
    /// The sources: flags first, then the configuration file.
    pub fn sources(&self, enc: &EncryptionConfig) -> KeySources {
        let (key_files, key_files_from) = if !self.key_file.is_empty() {
            (self.key_file.clone(), Some("--key-file (BACKUP_KEY_FILE)"))
        } else if let Some(f) = enc.key_file.clone() {
            (f.into_vec(), Some("encryption.keyFile"))
        } else {
            (Vec::new(), None)
        };
        let (recipient_file, recipient_from) = match (&self.recipient_file, &enc.recipient_file) {
            (Some(f), _) => (
                Some(f.clone()),
                Some("--recipient-file (BACKUP_RECIPIENT_FILE)"),
            ),
            (None, Some(f)) => (Some(f.clone()), Some("encryption.recipientFile")),
            (None, None) => (None, None),
        };
        let identity_files = if !self.identity_file.is_empty() {
            self.identity_file.clone()
        } else {
            enc.identity_file
                .clone()
                .map(|f| f.into_vec())
                .unwrap_or_default()
        };
        KeySources {
            key_files_from: key_files_from.filter(|_| !key_files.is_empty()),
            key_files,
            recipient_file,
            recipient_from,
            identity_files,
        }
    }
}
