//! How backupctl shows records: times, state and kind names, JSON of backups and restores.

use monoskope_backup_client::pb;

pub(crate) fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn state_name(s: i32) -> &'static str {
    match pb::OperationState::try_from(s) {
        Ok(pb::OperationState::Running) => "running",
        Ok(pb::OperationState::Succeeded) => "complete",
        Ok(pb::OperationState::Failed) => "failed",
        Ok(pb::OperationState::Incomplete) => "incomplete",
        _ => "unknown",
    }
}

pub(crate) fn kind_name(k: i32) -> &'static str {
    match pb::BackupKind::try_from(k) {
        Ok(pb::BackupKind::Incremental) => "incremental",
        _ => "full",
    }
}

pub(crate) fn backup_json(b: &pb::Backup) -> serde_json::Value {
    serde_json::json!({
        "id": b.id,
        "kind": kind_name(b.kind),
        "state": state_name(b.state),
        "parent_id": b.parent_id,
        "created_at": time(b.created_at.as_ref()),
        "completed_at": time(b.completed_at.as_ref()),
        "event_count": b.event_count,
        "bytes": b.bytes,
        "first_event_time": time(b.first_event_time.as_ref()),
        "last_event_time": time(b.last_event_time.as_ref()),
        "key_id": b.key_id,
        "key_kind": b.key_kind,
        "format_version": b.format_version,
        "sha256": b.sha256,
        "created_by": b.created_by,
        "location": b.location,
        "error": b.error,
        "note": b.note,
    })
}

pub(crate) fn restore_json(r: &pb::Restore) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": r.id,
        "backup_id": r.backup_id,
        "state": match pb::OperationState::try_from(r.state) {
            Ok(pb::OperationState::Succeeded) => "succeeded",
            _ => state_name(r.state),
        },
        "started_at": time(r.started_at.as_ref()),
        "completed_at": time(r.completed_at.as_ref()),
        "event_count": r.event_count,
        "bytes": r.bytes,
        "until": r.until.as_ref().map(|u| time(Some(u))),
        "drop_existing": r.drop_existing,
        "sink": r.sink,
        "created_by": r.created_by,
        "error": r.error,
        "chain": r.chain,
    });
    if let Some(p) = &r.progress {
        v["progress"] = serde_json::json!({"events": p.events, "bytes": p.bytes});
    }
    v
}
