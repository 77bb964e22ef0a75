//! The JSON manifest written beside each archive, last: its presence makes a backup complete.
//! It is the source of truth the catalog is rebuilt from.

use serde::{Deserialize, Serialize};

/// Value of the manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "monoskope-backup-manifest/v1";

/// The kind of a continuous segment (archive format 1.2).
pub const SEGMENT: &str = "segment";

/// The note of a continuous segment's manifest (the only mark of segments written before they
/// had a kind of their own).
pub const SEGMENT_NOTE: &str = "continuous segment";

/// Which continuous segments an incremental was compacted from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compacted {
    /// The oldest segment's id.
    pub first: String,
    /// The newest segment's id.
    pub last: String,
    /// How many segments.
    pub segments: u64,
}

/// A complete backup, as described at the destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Backup id.
    pub id: String,
    /// "full", "incremental" or "segment" (a continuous segment).
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
    /// Key id of the archive ("none" when unencrypted, "passphrase" for a passphrase; the
    /// recipients' ids joined by commas), as of the newest wrap (a rewrap updates it).
    pub key_id: String,
    /// The kind of key that reads it: `master-key`, `passphrase`, `recipients` or `none`;
    /// absent in manifests from before format 1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_kind: Option<String>,
    /// Archive format version, e.g. "1.0".
    pub format_version: String,
    /// Key of the watermark object (aggregate → highest version the backup's chain holds),
    /// which incremental backups build on; absent in backups from before incrementals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_key: Option<String>,
    /// Until when the backup's objects are locked against deletion (S3 Object Lock, RFC 3339);
    /// absent when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<String>,
    /// Why the backup is not what was asked for (an incremental request that became full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// For an incremental compacted from continuous segments: which. They are deleted once it
    /// is complete; any an interruption left behind, by the next compaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted: Option<Compacted>,
}

/// Whether a backup of `kind` builds on a parent.
pub fn has_parent(kind: &str) -> bool {
    kind == "incremental" || kind == SEGMENT
}

impl Manifest {
    /// Whether this is a continuous segment (by its kind, or by its note before it had one).
    pub fn is_segment(&self) -> bool {
        self.kind == SEGMENT || self.note.as_deref() == Some(SEGMENT_NOTE)
    }

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

    /// Parses a manifest read from `id`'s manifest key and checks that it describes that
    /// backup in that place: its id is `id`, its archive and watermark keys are `id`'s, its
    /// kind and parent agree, and its times are RFC 3339. A manifest swapped with another
    /// backup's, or edited into nonsense, fails here; what it says of the archive is checked
    /// against the archive's authenticated header and footer by verify and restore.
    pub fn parse_at(id: &str, bytes: &[u8]) -> anyhow::Result<Self> {
        let m = Self::parse(bytes)?;
        anyhow::ensure!(
            m.id == id,
            "the manifest at {} names backup {}",
            super::layout::manifest_key(id),
            m.id
        );
        anyhow::ensure!(
            m.archive_key == super::layout::archive_key(id),
            "the manifest names archive {}, not {}",
            m.archive_key,
            super::layout::archive_key(id)
        );
        if let Some(w) = &m.watermark_key {
            anyhow::ensure!(
                *w == super::layout::watermark_key(id),
                "the manifest names watermark {w}, not {}",
                super::layout::watermark_key(id)
            );
        }
        match (m.kind.as_str(), &m.parent_id) {
            ("full", None) => {}
            ("incremental" | SEGMENT, Some(p)) if super::layout::valid_id(p) && p.as_str() < id => {
            }
            (kind, parent) => {
                anyhow::bail!("the manifest's kind {kind:?} and parent {parent:?} do not agree")
            }
        }
        for (name, t) in [
            ("created_at", Some(&m.created_at)),
            ("completed_at", Some(&m.completed_at)),
            ("first_event_time", m.first_event_time.as_ref()),
            ("last_event_time", m.last_event_time.as_ref()),
        ] {
            if let Some(t) = t {
                anyhow::ensure!(
                    chrono::DateTime::parse_from_rfc3339(t).is_ok(),
                    "the manifest's {name} {t:?} is not an RFC 3339 time"
                );
            }
        }
        Ok(m)
    }

    /// The manifest as pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
impl Manifest {
    /// A manifest for tests: backup `id` of `kind` on `parent`, started at `created_at` and
    /// complete a second later, holding one event; every other field a placeholder.
    pub fn for_test(id: &str, kind: &str, parent: Option<&str>, created_at: &str) -> Self {
        let completed = chrono::DateTime::parse_from_rfc3339(created_at)
            .map(|t| (t + chrono::Duration::seconds(1)).to_rfc3339())
            .unwrap_or_else(|_| created_at.to_string());
        Manifest {
            format: MANIFEST_FORMAT.into(),
            id: id.into(),
            kind: kind.into(),
            parent_id: parent.map(String::from),
            created_at: created_at.into(),
            completed_at: completed,
            created_by: "test".into(),
            source: "test".into(),
            event_count: 1,
            archive_bytes: 1,
            archive_sha256: String::new(),
            archive_key: super::layout::archive_key(id),
            first_event_time: None,
            last_event_time: None,
            events_sha256: String::new(),
            key_id: "k".into(),
            key_kind: None,
            format_version: "1.0".into(),
            watermark_key: None,
            locked_until: None,
            note: None,
            compacted: None,
        }
    }
}

/// A backup whose manifest is at the destination but cannot be read or does not describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The backup id its key names.
    pub id: String,
    /// Why it cannot be trusted.
    pub problem: String,
}

/// Every manifest at a destination: the complete backups (newest first) and the backups whose
/// manifest cannot be read or is inconsistent (newest first).
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Complete backups, newest first.
    pub complete: Vec<Manifest>,
    /// Unreadable or inconsistent manifests, newest first.
    pub broken: Vec<Broken>,
}

impl Scan {
    /// The broken backups newer than `id`: a choice of `id` as the newest would silently skip
    /// them.
    pub fn broken_newer_than(&self, id: &str) -> Vec<&Broken> {
        self.broken.iter().filter(|b| b.id.as_str() > id).collect()
    }
}

/// Reads every manifest at `dest` (only the backup layout is listed).
pub async fn scan(dest: &dyn super::Destination) -> anyhow::Result<Scan> {
    let mut out = Scan::default();
    let url = dest.url();
    let listed = dest.list(super::layout::BACKUPS_DIR).await?;
    // The manifests not read before, sixteen requests at a time (a restore of a chain reads
    // two dozen, a destination's first listing thousands).
    let reads: Vec<_> = listed
        .iter()
        .filter(|o| matches!(super::layout::parse_key(&o.key), Some((_, true))))
        .map(|o| {
            let url = url.as_str();
            async move {
                match cache::get(url, o) {
                    Some(b) => Ok((o, b)),
                    None => {
                        let b = dest.get_bytes(&o.key).await?;
                        cache::put(url, o, &b);
                        anyhow::Ok((o, b))
                    }
                }
            }
        })
        .collect();
    let read: Vec<_> = {
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(reads)
            .buffered(16)
            .try_collect()
            .await?
    };
    for (o, bytes) in read {
        if let Some((id, true)) = super::layout::parse_key(&o.key) {
            match Manifest::parse_at(id, &bytes) {
                Ok(m) => out.complete.push(m),
                Err(e) => out.broken.push(Broken {
                    id: id.to_string(),
                    problem: format!("its manifest cannot be trusted: {e:#}"),
                }),
            }
        }
    }
    cache::keep_only(&url, &listed);
    out.complete.sort_by(|a, b| b.id.cmp(&a.id));
    out.broken.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(out)
}

/// The manifests this process has read, so that a listing reads only the new ones: continuous
/// backup lists the destination for every segment, and without it would read every manifest of
/// the chain each time (thousands a day). An entry is the object's bytes with its size and
/// modification time; it serves only while both still match, only objects last modified
/// a while before they were read are kept (a rewrite then has another time), and entries whose
/// object was not listed any more are dropped, so the cache holds at most what is there.
mod cache {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use crate::destination::ObjectInfo;

    /// Objects modified more recently than this are not kept.
    const SETTLED_SECS: i64 = 5;

    type Entries = HashMap<(String, String), (u64, i64, Vec<u8>)>;

    fn entries() -> &'static Mutex<Entries> {
        static E: OnceLock<Mutex<Entries>> = OnceLock::new();
        E.get_or_init(Default::default)
    }

    pub(super) fn get(url: &str, o: &ObjectInfo) -> Option<Vec<u8>> {
        let e = entries().lock().ok()?;
        match e.get(&(url.to_string(), o.key.clone())) {
            Some((size, modified, bytes)) if *size == o.size && *modified == o.modified_unix => {
                Some(bytes.clone())
            }
            _ => None,
        }
    }

    pub(super) fn put(url: &str, o: &ObjectInfo, bytes: &[u8]) {
        if chrono::Utc::now().timestamp() - o.modified_unix < SETTLED_SECS {
            return;
        }
        if let Ok(mut e) = entries().lock() {
            e.insert(
                (url.to_string(), o.key.clone()),
                (o.size, o.modified_unix, bytes.to_vec()),
            );
        }
    }

    pub(super) fn keep_only(url: &str, listed: &[ObjectInfo]) {
        if let Ok(mut e) = entries().lock() {
            let here: std::collections::HashSet<&str> =
                listed.iter().map(|o| o.key.as_str()).collect();
            e.retain(|(u, k), _| u != url || here.contains(k.as_str()));
        }
    }
}

/// Every complete backup's manifest at `dest`, newest first; an unreadable or inconsistent
/// manifest is left out with a warning (its backup is then not complete for us). Choices of
/// "the newest" go through [`scan`], which refuses to skip one silently.
pub async fn list_complete(dest: &dyn super::Destination) -> anyhow::Result<Vec<Manifest>> {
    let scan = scan(dest).await?;
    for b in &scan.broken {
        tracing::warn!(backup_id = %b.id, problem = %b.problem, "ignoring a backup whose manifest cannot be trusted");
    }
    Ok(scan.complete)
}
