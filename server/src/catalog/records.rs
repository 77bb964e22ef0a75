//! The records the catalog keeps — a backup, a restore, their state — and how a row becomes one.

use std::str::FromStr;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::CatalogError;
use crate::destination::manifest::Manifest;

/// The state of an operation, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Running now.
    Running,
    /// Ended well.
    Succeeded,
    /// Ended with an error.
    Failed,
    /// An archive without a manifest at the destination.
    Incomplete,
}

impl State {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Incomplete => "incomplete",
        }
    }
}

impl FromStr for State {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self, CatalogError> {
        Ok(match s {
            "running" => State::Running,
            "succeeded" => State::Succeeded,
            "failed" => State::Failed,
            "incomplete" => State::Incomplete,
            other => Err(CatalogError::Corrupt(format!("unknown state {other:?}")))?,
        })
    }
}

/// One backup as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    /// Id.
    pub id: String,
    /// "full" or "incremental".
    pub kind: String,
    /// State.
    pub state: State,
    /// Parent of an incremental backup.
    pub parent_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub completed_at: Option<String>,
    /// Caller identity.
    pub created_by: String,
    /// Source description.
    pub source: String,
    /// Events.
    pub event_count: u64,
    /// Archive size.
    pub archive_bytes: u64,
    /// Archive SHA-256.
    pub archive_sha256: Option<String>,
    /// Archive key at the destination.
    pub archive_key: Option<String>,
    /// Oldest event.
    pub first_event_time: Option<String>,
    /// Newest event.
    pub last_event_time: Option<String>,
    /// Digest of the records.
    pub events_sha256: Option<String>,
    /// Key id.
    pub key_id: Option<String>,
    /// Format version.
    pub format_version: Option<String>,
    /// Failure.
    pub error: Option<String>,
    /// Why the backup is not what was asked for (an incremental that became full).
    pub note: Option<String>,
    /// Its objects are locked (S3 Object Lock) until then (RFC 3339).
    pub locked_until: Option<String>,
}

impl RestoreRecord {
    /// A restore that failed before it started (its checks, a peer), recorded so that
    /// `GetStatus` shows it as the last restore.
    pub fn failed_before_start(id: &str, at: &str, created_by: String, why: &str) -> Self {
        Self {
            id: id.into(),
            backup_id: String::new(),
            state: State::Failed,
            started_at: at.into(),
            completed_at: Some(at.into()),
            created_by,
            sink: "not started".into(),
            until: None,
            drop_existing: false,
            chain: Vec::new(),
            event_count: 0,
            archive_bytes: 0,
            error: Some(why.into()),
        }
    }
}

impl BackupRecord {
    /// The record of a complete backup described by its manifest.
    pub fn from_manifest(m: &Manifest) -> Self {
        Self {
            id: m.id.clone(),
            kind: m.kind.clone(),
            state: State::Succeeded,
            parent_id: m.parent_id.clone(),
            created_at: m.created_at.clone(),
            completed_at: Some(m.completed_at.clone()),
            created_by: m.created_by.clone(),
            source: m.source.clone(),
            event_count: m.event_count,
            archive_bytes: m.archive_bytes,
            archive_sha256: Some(m.archive_sha256.clone()),
            archive_key: Some(m.archive_key.clone()),
            first_event_time: m.first_event_time.clone(),
            last_event_time: m.last_event_time.clone(),
            events_sha256: Some(m.events_sha256.clone()),
            key_id: Some(m.key_id.clone()),
            format_version: Some(m.format_version.clone()),
            error: None,
            note: m.note.clone(),
            locked_until: m.locked_until.clone(),
        }
    }
}

/// One restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRecord {
    /// Id.
    pub id: String,
    /// Backup restored.
    pub backup_id: String,
    /// State.
    pub state: State,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub completed_at: Option<String>,
    /// Caller identity.
    pub created_by: String,
    /// "events-table" or "eventstore-api".
    pub sink: String,
    /// Point in time restored to.
    pub until: Option<String>,
    /// Whether existing events were dropped.
    pub drop_existing: bool,
    /// Backups restored, full first.
    pub chain: Vec<String>,
    /// Events written.
    pub event_count: u64,
    /// Archive bytes read.
    pub archive_bytes: u64,
    /// Failure.
    pub error: Option<String>,
}

impl BackupRecord {
    /// The RUNNING record of a backup that starts now.
    pub fn running(
        id: &str,
        kind: &str,
        created_at: String,
        created_by: String,
        source: String,
    ) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            state: State::Running,
            parent_id: None,
            created_at,
            completed_at: None,
            created_by,
            source,
            event_count: 0,
            archive_bytes: 0,
            archive_sha256: None,
            archive_key: None,
            first_event_time: None,
            last_event_time: None,
            events_sha256: None,
            key_id: None,
            format_version: None,
            error: None,
            note: None,
            locked_until: None,
        }
    }
}

/// A page of backups.
#[derive(Debug, Clone)]
pub struct Page {
    /// Backups, newest first.
    pub backups: Vec<BackupRecord>,
    /// Token of the next page.
    pub next: Option<String>,
}

pub(super) fn backup_from_row(r: &AnyRow) -> Result<BackupRecord, CatalogError> {
    Ok(BackupRecord {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        state: r.try_get::<String, _>("state")?.parse()?,
        parent_id: r.try_get("parent_id")?,
        created_at: r.try_get("created_at")?,
        completed_at: r.try_get("completed_at")?,
        created_by: r.try_get("created_by")?,
        source: r.try_get("source")?,
        event_count: r.try_get::<i64, _>("event_count")? as u64,
        archive_bytes: r.try_get::<i64, _>("archive_bytes")? as u64,
        archive_sha256: r.try_get("archive_sha256")?,
        archive_key: r.try_get("archive_key")?,
        first_event_time: r.try_get("first_event_time")?,
        last_event_time: r.try_get("last_event_time")?,
        events_sha256: r.try_get("events_sha256")?,
        key_id: r.try_get("key_id")?,
        format_version: r.try_get("format_version")?,
        error: r.try_get("error")?,
        note: r.try_get("note")?,
        locked_until: r.try_get("locked_until")?,
    })
}

pub(super) fn restore_from_row(r: &AnyRow) -> Result<RestoreRecord, CatalogError> {
    let chain: String = r.try_get("chain")?;
    Ok(RestoreRecord {
        id: r.try_get("id")?,
        backup_id: r.try_get("backup_id")?,
        state: r.try_get::<String, _>("state")?.parse()?,
        started_at: r.try_get("started_at")?,
        completed_at: r.try_get("completed_at")?,
        created_by: r.try_get("created_by")?,
        sink: r.try_get("sink")?,
        until: r.try_get("until_time")?,
        drop_existing: r.try_get::<i64, _>("drop_existing")? != 0,
        chain: chain
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        event_count: r.try_get::<i64, _>("event_count")? as u64,
        archive_bytes: r.try_get::<i64, _>("archive_bytes")? as u64,
        error: r.try_get("error")?,
    })
}
