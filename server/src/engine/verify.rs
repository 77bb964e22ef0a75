//! Verification: read every byte of an archive at the destination, authenticate every chunk,
//! and check footer, header, manifest and archive digest against each other.

use std::io::Read;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::archive::{ArchiveError, ArchiveReader, Keys};
use crate::destination::manifest::Manifest;
use crate::destination::{layout, Destination};

/// What a verification found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// Backup id.
    pub id: String,
    /// Whether everything matched.
    pub ok: bool,
    /// Each problem, in words.
    pub problems: Vec<String>,
    /// Events read.
    pub events: u64,
    /// Archive bytes read.
    pub bytes: u64,
    /// Whether the archive was decrypted and every chunk authenticated (`false`: `--no-key`,
    /// only the stored bytes, header and key file were checked).
    pub decrypted: bool,
    /// How a command ends for this report's failure: a wrong or missing key is not a damaged
    /// backup (`None`: damaged, or ok).
    #[serde(skip)]
    pub exit: Option<super::Exit>,
}

/// Refuses a name that is neither a backup id nor `latest`, before anything is looked up.
pub fn check_id(id: &str) -> Result<(), super::EngineError> {
    if id == "latest" || layout::valid_id(id) || layout::valid_prefix(id) {
        return Ok(());
    }
    Err(super::EngineError::Invalid(format!(
        "{id:?} is not a backup id (expected e.g. 20261124T101500123Z-1a2b3c4d, a unique prefix of one such as 20261124T1015, or \"latest\")"
    )))
}

/// The one id among `ids` that is `given` or starts with it; `given` itself when it is a whole
/// id or `latest` (looked up later, as before). Several: refused, naming them; none: not found.
pub fn unique_id<'a>(
    ids: impl IntoIterator<Item = &'a str>,
    given: &str,
    at: &str,
) -> Result<String, super::EngineError> {
    if given == "latest" || layout::valid_id(given) {
        return Ok(given.to_string());
    }
    let matches: Vec<&str> = ids.into_iter().filter(|id| id.starts_with(given)).collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(super::EngineError::NotFound(format!(
            "no complete backup at {at} has an id starting with {given}"
        ))),
        many => Err(super::EngineError::Invalid(format!(
            "{given} is ambiguous: {} backups start with it ({}{}); give more of the id",
            many.len(),
            many.iter().take(5).copied().collect::<Vec<_>>().join(", "),
            if many.len() > 5 { ", …" } else { "" }
        ))),
    }
}

/// The manifest of `id`, or of the newest complete backup for `latest`. The manifest must name
/// `id` (a manifest swapped with another backup's is refused, not followed); `latest` refuses,
/// naming it, when the newest backup's manifest cannot be trusted, rather than fall back to an
/// older backup without a word.
pub async fn resolve(dest: &dyn Destination, id: &str) -> Result<Manifest, super::EngineError> {
    check_id(id)?;
    let whole;
    let id = if id == "latest" || layout::valid_id(id) {
        id
    } else {
        let complete = crate::destination::manifest::list_complete(dest)
            .await
            .map_err(|e| {
                super::EngineError::Unavailable(monoskope_backup_client::error_line(e.as_ref()))
            })?;
        whole = unique_id(complete.iter().map(|m| m.id.as_str()), id, &dest.url())?;
        whole.as_str()
    };
    if id == "latest" {
        let scan = crate::destination::manifest::scan(dest)
            .await
            .map_err(|e| {
                super::EngineError::Unavailable(monoskope_backup_client::error_line(e.as_ref()))
            })?;
        let newest = scan.complete.into_iter().next();
        if let Some(b) = scan
            .broken
            .iter()
            .find(|b| newest.as_ref().is_none_or(|m| b.id > m.id))
        {
            return Err(refuse_newer_broken(b));
        }
        return newest.ok_or_else(|| {
            super::EngineError::NotFound(format!("no complete backup at {}", dest.url()))
        });
    }
    let bytes = match dest.get_bytes(&layout::manifest_key(id)).await {
        Ok(b) => b,
        Err(crate::destination::DestinationError::NotFound(_)) => {
            return Err(super::EngineError::NotFound(format!(
                "backup {id} not found (no manifest at {})",
                dest.url()
            )))
        }
        Err(e) => return Err(super::EngineError::Unavailable(e.to_string())),
    };
    Manifest::parse_at(id, &bytes)
        .map_err(|e| super::EngineError::Corrupt(format!("backup {id} cannot be trusted: {e:#}")))
}

/// The refusal of `latest` when the newest backup `b` cannot be read.
pub fn refuse_newer_broken(b: &crate::destination::manifest::Broken) -> super::EngineError {
    super::EngineError::Corrupt(format!(
        "the newest backup {} cannot be read ({}); refusing to fall back to an older backup silently: verify it, repair or delete it, or name an older backup by id",
        b.id, b.problem
    ))
}

/// What the manifest `m` says and the archive's authenticated header and key envelope
/// contradict: id, parent, kind, key id, format version, and the creation time (the manifest's
/// `created_at` is when the backup started, at or before the header's, which is at or before
/// `completed_at`). Checked before anything is read further.
pub fn header_problems(
    m: &Manifest,
    header: &crate::archive::Header,
    key_ids: &[String],
) -> Vec<String> {
    let mut p = Vec::new();
    if header.backup_id != m.id {
        p.push(format!(
            "archive header names backup {} but the manifest {}",
            header.backup_id, m.id
        ));
    }
    if header.parent_id != m.parent_id.clone().unwrap_or_default() {
        p.push(format!(
            "archive header names parent {:?} but the manifest {:?}",
            header.parent_id,
            m.parent_id.clone().unwrap_or_default()
        ));
    }
    if header.kind != m.kind {
        p.push(format!(
            "archive header says {} but the manifest {}",
            header.kind, m.kind
        ));
    }
    if !key_ids.contains(&m.key_id) {
        p.push(format!(
            "archive's data key is wrapped for {} but the manifest says {}",
            key_ids.join(" and "),
            m.key_id
        ));
    }
    let version = format!("{}.{}", header.format_major, header.format_minor);
    if version != m.format_version {
        p.push(format!(
            "archive is format {version} but the manifest says {}",
            m.format_version
        ));
    }
    let written = crate::time::rfc3339(header.created_at.as_ref());
    let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    match (
        written.as_deref().and_then(t),
        t(&m.created_at),
        t(&m.completed_at),
    ) {
        // `completed_at` has milliseconds: a backup done within the millisecond its archive
        // was begun compares at that precision.
        (Some(w), Some(c), Some(done))
            if c <= w
                && w - chrono::Duration::nanoseconds(
                    w.timestamp_subsec_nanos() as i64 % 1_000_000,
                ) <= done => {}
        _ => p.push(format!(
            "archive was written at {} but the manifest says the backup ran from {} to {}",
            written.as_deref().unwrap_or("(no time)"),
            m.created_at,
            m.completed_at
        )),
    }
    p
}

/// What the manifest `m` says and the archive's authenticated footer contradict: the event
/// count, the events digest and the time range (which `--until` chooses backups by).
pub fn footer_problems(m: &Manifest, footer: &crate::archive::Footer) -> Vec<String> {
    let mut p = Vec::new();
    if footer.event_count != m.event_count {
        p.push(format!(
            "footer counts {} events, manifest {}",
            footer.event_count, m.event_count
        ));
    }
    let digest: String = footer
        .events_sha256
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest != m.events_sha256 {
        p.push("events digest in the footer differs from the manifest".into());
    }
    let same = |a: Option<&prost_types::Timestamp>, b: Option<&String>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            let a = crate::time::rfc3339(Some(a))
                .and_then(|a| chrono::DateTime::parse_from_rfc3339(&a).ok());
            a.is_some() && a == chrono::DateTime::parse_from_rfc3339(b).ok()
        }
        _ => false,
    };
    if !same(footer.first_timestamp.as_ref(), m.first_event_time.as_ref())
        || !same(footer.last_timestamp.as_ref(), m.last_event_time.as_ref())
    {
        p.push(format!(
            "footer's events run from {} to {}, the manifest says {} to {}",
            crate::time::rfc3339(footer.first_timestamp.as_ref()).unwrap_or_else(|| "-".into()),
            crate::time::rfc3339(footer.last_timestamp.as_ref()).unwrap_or_else(|| "-".into()),
            m.first_event_time.as_deref().unwrap_or("-"),
            m.last_event_time.as_deref().unwrap_or("-"),
        ));
    }
    p
}

/// A reader that hashes and counts what passes: the archive's SHA-256 and size, checked
/// against the manifest.
pub(super) struct HashingReader<R> {
    pub(super) inner: R,
    pub(super) sha: Sha256,
    pub(super) bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Over `inner`.
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            sha: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads what is left, then the lowercase hex SHA-256 and the size of everything read.
    pub(super) fn finish(mut self) -> (String, u64) {
        let _ = std::io::copy(&mut self, &mut std::io::sink());
        let sha = self
            .sha
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (sha, self.bytes)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Verifies the backup of `manifest`: with `keys`, every chunk decrypted and authenticated and
/// the footer checked (the deep check); without (`--no-key`, a write-only service), that the
/// destination holds exactly the bytes written — size and SHA-256 against the manifest — with a
/// header and key file that agree with it.
pub async fn verify(
    dest: &dyn Destination,
    keys: Option<&Keys>,
    manifest: &Manifest,
) -> anyhow::Result<VerifyReport> {
    let key_file = match crate::destination::keyfile::load(dest, &manifest.archive_key).await {
        Ok(f) => Ok(f),
        Err(crate::destination::keyfile::KeyFileError::Destination(e)) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot read the key file of {}",
                manifest.archive_key
            )))
        }
        // A damaged key file is a finding of the verification, not a failure to run it.
        Err(e) => Err(monoskope_backup_client::error_line(&e)),
    };
    let reader = dest
        .get(&manifest.archive_key)
        .await
        .with_context(|| format!("cannot read {}", manifest.archive_key))?;
    // The parent a link of format 1.2 names (a segment's, a compaction's): its manifest.
    let parent = match &manifest.parent_id {
        Some(p) => match dest.get_bytes(&layout::manifest_key(p)).await {
            Ok(b) => Manifest::parse_at(p, &b).ok(),
            Err(crate::destination::DestinationError::NotFound(_)) => None,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot read the manifest of {p}, the parent of {}",
                    manifest.id
                )))
            }
        },
        None => None,
    };
    let keys = keys.cloned();
    let m = manifest.clone();
    tokio::task::spawn_blocking(move || {
        let bridge = tokio_util::io::SyncIoBridge::new(reader);
        let mut hr = HashingReader {
            inner: std::io::BufReader::with_capacity(1 << 20, bridge),
            sha: Sha256::new(),
            bytes: 0,
        };
        let mut problems = Vec::new();
        let mut events = 0;
        let key_file = match key_file {
            Ok(f) => f,
            Err(why) => {
                problems.push(format!("its key file is damaged: {why}"));
                None
            }
        };
        let mut key_exit = None;
        let opened = match &keys {
            Some(keys) => ArchiveReader::open_with_key_file(&mut hr, keys, key_file.as_ref())
                .and_then(|mut r| {
                    let f = r.verify_to_end()?;
                    Ok((r.header().clone(), r.key_ids().to_vec(), Some(f)))
                }),
            // Without a key: the head as stored (unauthenticated), the rest only hashed.
            None => crate::archive::read_head(&mut hr).map(|(head, header)| {
                let ids = crate::archive::envelope::wrap_ids(&head.envelope, key_file.as_ref());
                (header, ids, None)
            }),
        };
        match opened {
            Ok((header, key_ids, footer)) => {
                problems.extend(header_problems(&m, &header, &key_ids));
                problems.extend(super::read_chain::link_problem(&header, parent.as_ref()));
                if let Some(footer) = footer {
                    events = footer.event_count;
                    problems.extend(footer_problems(&m, &footer));
                }
            }
            Err(e) => {
                key_exit = match &e {
                    ArchiveError::WrongKey { .. } | ArchiveError::WrongPassphrase => {
                        Some(super::Exit::KeyWrong)
                    }
                    ArchiveError::KeyRequired { .. } => Some(super::Exit::KeyMissing),
                    _ => None,
                };
                problems.push(e.to_string())
            }
        }
        // Read what the archive reader left (after an error) so the digest covers the object.
        let _ = std::io::copy(&mut hr, &mut std::io::sink());
        let sha: String = hr
            .sha
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if hr.bytes != m.archive_bytes {
            problems.push(format!(
                "archive is {} bytes, manifest says {}",
                hr.bytes, m.archive_bytes
            ));
        }
        if sha != m.archive_sha256 {
            problems.push("archive SHA-256 differs from the manifest".into());
        }
        Ok(VerifyReport {
            exit: key_exit.filter(|_| !problems.is_empty()),
            id: m.id.clone(),
            ok: problems.is_empty(),
            problems,
            events,
            bytes: hr.bytes,
            decrypted: keys.is_some(),
        })
    })
    .await?
}
