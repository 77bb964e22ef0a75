//! How backupctl shows records: times, state and kind names, JSON of backups and restores.

use monoskope_backup_client::{json, pb};

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
    monoskope_backup_client::json::kind(k)
}

/// A backup in the one JSON model (`monoskope_backup_client::json`), with its progress while it
/// runs.
pub(crate) fn backup_json(b: &pb::Backup) -> serde_json::Value {
    let mut v = serde_json::to_value(json::Backup::from(b)).unwrap_or_default();
    if let Some(p) = &b.progress {
        v["progress"] = serde_json::json!({"events": p.events, "bytes": p.bytes});
    }
    v
}

/// A restore in the one JSON model, with its progress while it runs.
pub(crate) fn restore_json(r: &pb::Restore) -> serde_json::Value {
    let mut v = serde_json::to_value(json::Restore::from(r)).unwrap_or_default();
    if let Some(p) = &r.progress {
        v["progress"] = serde_json::json!({"events": p.events, "bytes": p.bytes});
    }
    v
}

/// Prints `v` as pretty JSON.
pub(crate) fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A copy destination as JSON (status and describe).
pub(crate) fn copy_json(c: &pb::CopyStatus) -> serde_json::Value {
    serde_json::json!({
        "destination": c.destination,
        "lag_seconds": c.lag_seconds,
        "error": (!c.error.is_empty()).then_some(&c.error),
        "checked_at": json::time(c.checked_at.as_ref()),
    })
}

/// A copy destination in words: how far behind and why, and when it was checked.
pub(crate) fn copy_words(c: &pb::CopyStatus) -> String {
    let state = if !c.error.is_empty() {
        format!("{:.0} s behind: {}", c.lag_seconds, c.error)
    } else if c.lag_seconds > 0.0 {
        format!("{:.0} s behind", c.lag_seconds)
    } else {
        "holds every backup".to_string()
    };
    format!(
        "{} — {state} (checked {})",
        c.destination,
        time(c.checked_at.as_ref())
    )
}
