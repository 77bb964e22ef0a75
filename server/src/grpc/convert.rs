//! The engine's and the catalog's records as the API shows them.

use monoskope_backup_api::backup::v1 as pb;

use crate::catalog::{BackupRecord, RestoreRecord, State};
use crate::engine::RunningOp;

pub(crate) fn ts(rfc3339: Option<&str>) -> Option<prost_types::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339?).ok()?;
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

pub(crate) fn state(s: State) -> i32 {
    (match s {
        State::Running => pb::OperationState::Running,
        State::Succeeded => pb::OperationState::Succeeded,
        State::Failed => pb::OperationState::Failed,
        State::Incomplete => pb::OperationState::Incomplete,
    }) as i32
}

pub(crate) fn progress(op: &RunningOp) -> pb::Progress {
    pb::Progress {
        events: op.events,
        bytes: op.bytes,
        total_events: op.total,
        elapsed: prost_types::Duration::try_from(op.elapsed).ok(),
    }
}

/// A catalog record as the API's `Backup`.
pub fn backup_pb(r: &BackupRecord, location_base: &str) -> pb::Backup {
    pb::Backup {
        id: r.id.clone(),
        kind: (match r.kind.as_str() {
            "incremental" => pb::BackupKind::Incremental,
            crate::destination::manifest::SEGMENT => pb::BackupKind::Segment,
            _ => pb::BackupKind::Full,
        }) as i32,
        state: state(r.state),
        parent_id: r.parent_id.clone().unwrap_or_default(),
        created_at: ts(Some(&r.created_at)),
        completed_at: ts(r.completed_at.as_deref()),
        event_count: r.event_count,
        bytes: r.archive_bytes,
        first_event_time: ts(r.first_event_time.as_deref()),
        last_event_time: ts(r.last_event_time.as_deref()),
        key_id: r.key_id.clone().unwrap_or_default(),
        key_kind: r
            .key_id
            .as_deref()
            .map(crate::archive::envelope::kind_of_key_id)
            .unwrap_or_default()
            .to_string(),
        format_version: r.format_version.clone().unwrap_or_default(),
        locked_until: ts(r.locked_until.as_deref()),
        sha256: r.archive_sha256.clone().unwrap_or_default(),
        created_by: r.created_by.clone(),
        error: r.error.clone().unwrap_or_default(),
        location: r
            .archive_key
            .as_ref()
            .map(|k| format!("{}/{k}", location_base.trim_end_matches('/')))
            .unwrap_or_default(),
        progress: None,
        last_drill: None,
        last_verify: None,
        note: r.note.clone().unwrap_or_default(),
    }
}

/// A catalog record as the API's `Restore`.
pub fn restore_pb(r: &RestoreRecord) -> pb::Restore {
    pb::Restore {
        id: r.id.clone(),
        backup_id: r.backup_id.clone(),
        state: state(r.state),
        started_at: ts(Some(&r.started_at)),
        completed_at: ts(r.completed_at.as_deref()),
        event_count: r.event_count,
        bytes: r.archive_bytes,
        until: ts(r.until.as_deref()),
        drop_existing: r.drop_existing,
        sink: r.sink.clone(),
        created_by: r.created_by.clone(),
        error: r.error.clone().unwrap_or_default(),
        chain: r.chain.clone(),
        next_steps: Vec::new(),
        progress: None,
    }
}

/// A restore plan as the API shows it.
pub fn plan_pb(
    plan: &crate::engine::restore::RestorePlan,
    req: &crate::engine::restore::RestoreRequest,
) -> pb::RestorePlan {
    pb::RestorePlan {
        chain: plan.chain.iter().map(|m| m.id.clone()).collect(),
        target: plan.target.clone(),
        existing_events: plan.existing,
        events: plan.chain.iter().map(|m| m.event_count).sum(),
        lines: plan.describe(req),
    }
}
