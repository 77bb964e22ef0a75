//! The one JSON model of a backup and a restore, printed by every `--json` of `backupctl` and
//! `backup-server` (list, status, create/backup, restore, describe). Field names and types are
//! a stable interface: `docs/JSON.md` documents them with a schema (`docs/schema/*.json`), and
//! a test checks every command's output against it. Fields are only ever added; a missing value
//! is `null`, never `"-"` or `""`. Times are RFC 3339 UTC with milliseconds.

use serde::Serialize;

use crate::pb;

/// The version of the model, printed nowhere but in the schemas' `$id`; bumped only when a
/// field changes meaning (never done).
pub const MODEL_VERSION: u32 = 1;

/// A backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Backup {
    /// Backup id (`YYYYMMDDTHHMMSSmmmZ-xxxxxxxx`).
    pub id: String,
    /// `full` or `incremental` (a continuous segment is an incremental with note
    /// `continuous segment`).
    pub kind: String,
    /// `running`, `succeeded`, `failed` or `incomplete`.
    pub state: String,
    /// The backup it builds on (incrementals).
    pub parent_id: Option<String>,
    /// When it started.
    pub created_at: Option<String>,
    /// When it ended.
    pub completed_at: Option<String>,
    /// Who asked for it.
    pub created_by: Option<String>,
    /// Events it holds.
    pub events: u64,
    /// Archive bytes.
    pub bytes: u64,
    /// Timestamp of its first event.
    pub first_event_time: Option<String>,
    /// Timestamp of its last event.
    pub last_event_time: Option<String>,
    /// SHA-256 of the archive (hex).
    pub sha256: Option<String>,
    /// Id of the key (or recipients) it is encrypted for.
    pub key_id: Option<String>,
    /// `master-key`, `passphrase`, `age-x25519`, `key-file` or `none`.
    pub key_kind: Option<String>,
    /// Archive format version (`1.0`, `1.1`).
    pub format_version: Option<String>,
    /// Where the archive is.
    pub location: Option<String>,
    /// Objects are locked (S3 Object Lock) until then.
    pub locked_until: Option<String>,
    /// A note (why a full replaced an incremental, `continuous segment`).
    pub note: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A restore.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Restore {
    /// Restore id.
    pub id: String,
    /// The backup restored (the last of `chain`).
    pub backup_id: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// When it started.
    pub started_at: Option<String>,
    /// When it ended.
    pub completed_at: Option<String>,
    /// Who asked for it.
    pub created_by: Option<String>,
    /// `events-table` or `eventstore-api`.
    pub sink: String,
    /// Only the events up to this time.
    pub until: Option<String>,
    /// Whether the events the store held were replaced.
    pub drop_existing: bool,
    /// The backups read, full backup first.
    pub chain: Vec<String>,
    /// Events written.
    pub events: u64,
    /// Archive bytes read.
    pub bytes: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// What a restore does, every check before writing made (`restore --dry-run --json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RestorePlan {
    /// The backups read, full backup first; the last is the backup restored.
    pub chain: Vec<String>,
    /// Where the events go, named.
    pub target: String,
    /// Events the target holds now.
    pub existing_events: u64,
    /// Events the chain holds.
    pub events: u64,
    /// The plan in words.
    pub lines: Vec<String>,
}

impl From<&pb::RestorePlan> for RestorePlan {
    fn from(p: &pb::RestorePlan) -> Self {
        RestorePlan {
            chain: p.chain.clone(),
            target: p.target.clone(),
            existing_events: p.existing_events,
            events: p.events,
            lines: p.lines.clone(),
        }
    }
}

/// A time as the model prints it.
pub fn time(t: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = t?;
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// A text as the model prints it: `None` for empty.
pub fn text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The name of a backup kind.
pub fn kind(k: i32) -> &'static str {
    match pb::BackupKind::try_from(k) {
        Ok(pb::BackupKind::Incremental) => "incremental",
        Ok(pb::BackupKind::Segment) => "segment",
        _ => "full",
    }
}

/// A state's name in the model.
pub fn state(s: i32) -> &'static str {
    match pb::OperationState::try_from(s) {
        Ok(pb::OperationState::Running) => "running",
        Ok(pb::OperationState::Succeeded) => "succeeded",
        Ok(pb::OperationState::Failed) => "failed",
        Ok(pb::OperationState::Incomplete) => "incomplete",
        _ => "unknown",
    }
}

impl From<&pb::Backup> for Backup {
    fn from(b: &pb::Backup) -> Self {
        Backup {
            id: b.id.clone(),
            kind: kind(b.kind).into(),
            state: state(b.state).into(),
            parent_id: text(&b.parent_id),
            created_at: time(b.created_at.as_ref()),
            completed_at: time(b.completed_at.as_ref()),
            created_by: text(&b.created_by),
            events: b.event_count,
            bytes: b.bytes,
            first_event_time: time(b.first_event_time.as_ref()),
            last_event_time: time(b.last_event_time.as_ref()),
            sha256: text(&b.sha256),
            key_id: text(&b.key_id),
            key_kind: text(&b.key_kind),
            format_version: text(&b.format_version),
            location: text(&b.location),
            locked_until: time(b.locked_until.as_ref()),
            note: text(&b.note),
            error: text(&b.error),
        }
    }
}

impl From<&pb::Restore> for Restore {
    fn from(r: &pb::Restore) -> Self {
        Restore {
            id: r.id.clone(),
            backup_id: r.backup_id.clone(),
            state: state(r.state).into(),
            started_at: time(r.started_at.as_ref()),
            completed_at: time(r.completed_at.as_ref()),
            created_by: text(&r.created_by),
            sink: r.sink.clone(),
            until: time(r.until.as_ref()),
            drop_existing: r.drop_existing,
            chain: r.chain.clone(),
            events: r.event_count,
            bytes: r.bytes,
            error: text(&r.error),
        }
    }
}
