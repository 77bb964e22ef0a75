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
