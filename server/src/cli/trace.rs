//! A one-shot backup or restore that fails before the engine runs it — a bad setting, a
//! destination, catalog or key that cannot be had — still leaves a trace where one can be left:
//! the run's failure metric pushed to the Pushgateway, a FAILED record in the catalog, and a
//! BackupFailed / RestoreFailed event in the EventStore. Each is tried within 4 s and skipped
//! when it cannot be reached; none hides the original error.

use std::time::Duration;

use crate::catalog::{BackupRecord, Catalog, RestoreRecord, State};
use crate::ops::metrics::{self, Op};

/// How long each trace may take.
const WITHIN: Duration = Duration::from_secs(4);

/// What is known of the run's settings when it failed.
#[derive(Debug, Default)]
pub struct Known<'a> {
    /// The Pushgateway, if one is configured.
    pub pushgateway_url: Option<String>,
    /// The catalog, once settings resolved.
    pub catalog_url: Option<&'a str>,
    /// The EventStore, when events are emitted.
    pub event_store: Option<&'a crate::eventstore::EventStoreAddr>,
}

impl<'a> Known<'a> {
    /// From resolved settings.
    pub fn of(s: &'a super::settings::Settings) -> Self {
        Self {
            pushgateway_url: s.pushgateway_url.clone(),
            catalog_url: Some(&s.catalog_url),
            event_store: s.emit_events.then_some(&s.event_store),
        }
    }
}

/// Records the failure of a one-shot `op` that ended with `error` before it started.
pub async fn early_failure(op: Op, known: Known<'_>, error: &anyhow::Error) {
    let why =
        crate::redact::text(&monoskope_backup_client::error_line(error.as_ref())).into_owned();
    let who = super::cli_identity();
    metrics::get().finished(op, false, Duration::ZERO, 0, 0);
    if let Some(url) = &known.pushgateway_url {
        if let Ok(p) = crate::ops::pushgateway::Pushgateway::new(url) {
            let _ = tokio::time::timeout(WITHIN, p.push(op, false)).await;
        }
    }
    let u = crate::ops::events::unstarted(op == Op::Backup, chrono::Utc::now(), &why);
    if let Some(url) = known.catalog_url {
        let recorded = tokio::time::timeout(WITHIN, async {
            let catalog = Catalog::connect(url).await?;
            match op {
                Op::Backup => {
                    let mut r = BackupRecord::running(
                        &u.id,
                        "full",
                        u.at.clone(),
                        who.label(),
                        "not started".into(),
                    );
                    r.state = State::Failed;
                    r.completed_at = Some(u.at.clone());
                    r.error = Some(why.clone());
                    catalog.upsert_backup(&r).await
                }
                Op::Restore => {
                    catalog
                        .upsert_restore(&RestoreRecord::failed_before_start(
                            &u.id,
                            &u.at,
                            who.label(),
                            &why,
                        ))
                        .await
                }
            }
        })
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::debug!("the failure could not be recorded in the catalog");
        }
    }
    if let Some(store) = known.event_store {
        let ev = crate::ops::events::event(u.kind, u.aggregate, &u.id, &u.data, &who);
        let _ = tokio::time::timeout(WITHIN, crate::ops::events::emit(store, ev)).await;
    }
}
