//! The one way an operation's end is reported, the same for backups and restores: the run's
//! metrics, the Pushgateway, and the event stored in the EventStore — each bounded by
//! [`REPORT_WITHIN`], so an operation cut off by a signal still ends within the grace period.
//! Successes and failures alike leave this trace.

use std::time::Duration;

use super::slot::{report, REPORT_WITHIN};
use super::Engine;
use crate::identity::Identity;
use crate::ops::metrics::{self, Op};

/// What ended.
pub(super) struct Ending<'a> {
    /// Backup or restore.
    pub op: Op,
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it ran.
    pub elapsed: Duration,
    /// Archive bytes written or read.
    pub bytes: u64,
    /// Events written or read.
    pub events: u64,
    /// The event to store (`BackupCompleted`, `RestoreFailed`…), its aggregate type and id.
    pub event: (&'static str, &'static str, &'a str),
    /// The event's data.
    pub data: serde_json::Value,
    /// Who asked.
    pub caller: &'a Identity,
}

impl Engine {
    /// Reports `e`: metrics, Pushgateway, event.
    pub(super) async fn report_end(&self, e: Ending<'_>) {
        metrics::get().finished(e.op, e.ok, e.elapsed, e.bytes, e.events);
        if let Some(p) = &self.cfg.pushgateway {
            if report(p.push(e.op, e.ok)).await.is_none() {
                tracing::warn!(
                    within = %humantime::format_duration(REPORT_WITHIN),
                    "cannot push metrics to the Pushgateway: no answer in time"
                );
            }
        }
        if self.cfg.emit_events {
            let (kind, aggregate, id) = e.event;
            let ev = crate::ops::events::event(kind, aggregate, id, &e.data, e.caller);
            if report(crate::ops::events::emit(&self.cfg.event_store, ev))
                .await
                .is_none()
            {
                tracing::warn!(event = kind, within = %humantime::format_duration(REPORT_WITHIN), "could not store the event: no answer in time");
            }
        }
    }
}

impl Engine {
    /// A run that failed before it started (the catalog or a peer unavailable, a damaged backup
    /// found in the checks): its failure is counted and pushed like any other; refusals of the
    /// request itself (busy, not empty, not found, malformed) are not failures and leave none.
    pub(super) async fn report_unstarted(&self, op: Op, e: &super::EngineError, caller: &Identity) {
        use super::Failure;
        if !matches!(
            e.failure(),
            Failure::Unavailable | Failure::Corrupt | Failure::Internal
        ) {
            return;
        }
        let now = chrono::Utc::now();
        let at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let id = crate::destination::layout::new_id(now);
        let why = e.to_string();
        let (kind, aggregate, id, data) = match op {
            Op::Backup => (
                "BackupFailed",
                crate::ops::events::BACKUP_AGGREGATE,
                id.clone(),
                serde_json::json!({"backupId": id, "createdAt": at, "completedAt": at, "error": why}),
            ),
            Op::Restore => {
                let rid = format!("restore-{id}");
                // The catalog keeps the failed restore (GetStatus shows it as the last one).
                let rec = crate::catalog::RestoreRecord {
                    id: rid.clone(),
                    backup_id: String::new(),
                    state: crate::catalog::State::Failed,
                    started_at: at.clone(),
                    completed_at: Some(at.clone()),
                    created_by: caller.label(),
                    sink: "not started".into(),
                    until: None,
                    drop_existing: false,
                    chain: Vec::new(),
                    event_count: 0,
                    archive_bytes: 0,
                    error: Some(why.clone()),
                };
                let _ = report(self.cfg.catalog.upsert_restore(&rec)).await;
                (
                    "RestoreFailed",
                    crate::ops::events::RESTORE_AGGREGATE,
                    rid.clone(),
                    serde_json::json!({"restoreId": rid, "startedAt": at, "completedAt": at, "error": why}),
                )
            }
        };
        self.report_end(Ending {
            op,
            ok: false,
            elapsed: Duration::ZERO,
            bytes: 0,
            events: 0,
            event: (kind, aggregate, &id),
            data,
            caller,
        })
        .await;
    }
}
