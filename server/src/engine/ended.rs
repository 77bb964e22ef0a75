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
            Failure::Unavailable | Failure::Interrupted | Failure::Corrupt | Failure::Internal
        ) {
            return;
        }
        let why = e.to_string();
        let u = crate::ops::events::unstarted(op == Op::Backup, chrono::Utc::now(), &why);
        if op == Op::Restore {
            // The catalog keeps the failed restore (GetStatus shows it as the last one).
            let rec = crate::catalog::RestoreRecord::failed_before_start(
                &u.id,
                &u.at,
                caller.label(),
                &why,
            );
            let _ = report(self.cfg.catalog.upsert_restore(&rec)).await;
        }
        self.report_end(Ending {
            op,
            ok: false,
            elapsed: Duration::ZERO,
            bytes: 0,
            events: 0,
            event: (u.kind, u.aggregate, &u.id),
            data: u.data.clone(),
            caller,
        })
        .await;
    }
}
