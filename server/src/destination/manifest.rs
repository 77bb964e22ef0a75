//! The JSON manifest written beside each archive, last: its presence makes a backup complete.
//! It is the source of truth the catalog is rebuilt from.

use serde::{Deserialize, Serialize};

/// Value of the manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "monoskope-backup-manifest/v1";

/// A complete backup, as described at the destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Backup id.
    pub id: String,
    /// "full" or "incremental".
    pub kind: String,
    /// Parent backup of an incremental backup.
    pub parent_id: Option<String>,
    /// When the backup started (RFC 3339).
    pub created_at: String,
    /// When the archive was complete (RFC 3339).
    pub completed_at: String,
    /// Who asked for it.
    pub created_by: String,
    /// Where the events came from, e.g. `eventstore-api:eventstore:8080`.
    pub source: String,
    /// Number of events.
    pub event_count: u64,
    /// Size of the archive object.
    pub archive_bytes: u64,
    /// Lowercase hex SHA-256 of the archive object.
    pub archive_sha256: String,
    /// Key of the archive object relative to the prefix.
    pub archive_key: String,
    /// Oldest event timestamp (RFC 3339, nanoseconds); absent when the backup holds no events.
    pub first_event_time: Option<String>,
    /// Newest event timestamp.
    pub last_event_time: Option<String>,
    /// Lowercase hex SHA-256 of the records (as in the archive's footer).
    pub events_sha256: String,
    /// Key id of the archive ("none" when unencrypted, "passphrase" for a passphrase).
    pub key_id: String,
    /// Archive format version, e.g. "1.0".
    pub format_version: String,
    /// Key of the watermark object (aggregate → highest version the backup's chain holds),
    /// which incremental backups build on; absent in backups from before incrementals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_key: Option<String>,
    /// Why the backup is not what was asked for (an incremental request that became full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let m: Manifest = serde_json::from_slice(bytes)?;
        anyhow::ensure!(
            m.format == MANIFEST_FORMAT,
            "unknown manifest format {:?}",
            m.format
        );
        anyhow::ensure!(
            super::layout::valid_id(&m.id),
            "invalid backup id {:?}",
            m.id
        );
        Ok(m)
    }

    /// The manifest as pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// Every complete backup's manifest at `dest`, newest first; an unreadable manifest is
/// skipped with a warning (its backup is then not complete for us).
pub async fn list_complete(dest: &dyn super::Destination) -> anyhow::Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for o in dest.list(super::layout::BACKUPS_DIR).await? {
        if let Some((_, true)) = super::layout::parse_key(&o.key) {
            let bytes = dest.get_bytes(&o.key).await?;
            match Manifest::parse(&bytes) {
                Ok(m) => out.push(m),
                Err(e) => {
                    tracing::warn!(key = %o.key, error = %e, "ignoring an unreadable manifest")
                }
            }
        }
    }
    out.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(out)
}
