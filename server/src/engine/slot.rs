//! The single operation slot: in this process, then the catalog's operation lease shared by every
//! process of the catalog; the running operation's progress; and the bounded reports of its end.

use monoskope_backup_client::error_line;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Engine, EngineError};
use crate::catalog::Catalog;

/// How long each report of an operation's end may take (the catalog record, the Pushgateway,
/// the event, the lease given back): an operation cut off by a signal must end within the
/// grace period even when these peers do not answer.
pub const REPORT_WITHIN: Duration = Duration::from_secs(4);

/// Runs a report of an operation's end within [`REPORT_WITHIN`]; `None` when it did not end.
pub(super) async fn report<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(REPORT_WITHIN, fut).await.ok()
}

/// The final value an operation's task sends; `None` if the task ended without one.
pub(super) async fn final_value<T: Clone>(mut rx: watch::Receiver<Option<T>>) -> Option<T> {
    loop {
        if let Some(v) = rx.borrow().clone() {
            return Some(v);
        }
        if rx.changed().await.is_err() {
            return rx.borrow().clone();
        }
    }
}

/// Renews the catalog's operation lease until aborted. Losing it (the catalog unreachable for
/// longer than the lease lasts) is logged: the operation goes on, and another process may
/// start one beside it.
async fn renew_lease(catalog: Catalog, holder: Arc<str>) {
    let mut tick = tokio::time::interval(crate::catalog::LEASE_RENEW_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        match catalog.renew_lease(&holder).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(
                    "this process lost the catalog's operation lease (not renewed for longer than {}); another process may start an operation beside this one",
                    humantime::format_duration(crate::catalog::LEASE_TTL)
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %error_line(&e), "could not renew the catalog's operation lease; retrying")
            }
        }
    }
}

/// Live progress of the running operation.
#[derive(Debug, Default)]
pub struct Progress {
    /// Events read or written.
    pub events: AtomicU64,
    /// Archive bytes written or read.
    pub bytes: AtomicU64,
    /// Events the operation will handle when known (0: not known).
    pub total: AtomicU64,
}

/// A snapshot of the running operation.
#[derive(Debug, Clone)]
pub struct RunningOp {
    /// "backup" or "restore".
    pub kind: &'static str,
    /// Operation id.
    pub id: String,
    /// Events so far.
    pub events: u64,
    /// Bytes so far.
    pub bytes: u64,
    /// Events in all when known (0: not known).
    pub total: u64,
    /// Time since start.
    pub elapsed: Duration,
}

pub(super) struct Running {
    pub(super) kind: &'static str,
    pub(super) id: String,
    pub(super) started: Instant,
    pub(super) progress: Arc<Progress>,
    /// Renews the catalog's operation lease while the operation runs.
    pub(super) renewing: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Resolves once a stop was asked for (a signal), with its reason.
    pub async fn stopping(&self) -> String {
        self.interrupt.fired().await
    }

    /// Stops the running backup, restore or drill (it fails with "interrupted by `why`", leaving the
    /// destination and the store as a timeout would) and refuses new operations; then waits up
    /// to `grace` for the operation to record its end and give the lease back. Returns whether
    /// nothing runs any more.
    pub async fn interrupt(&self, why: &str, grace: Duration) -> bool {
        self.interrupt.fire(why);
        let until = Instant::now() + grace;
        loop {
            if self.running.lock().await.is_none() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The running operation, if any.
    pub async fn running(&self) -> Option<RunningOp> {
        self.running.lock().await.as_ref().map(|r| RunningOp {
            kind: r.kind,
            id: r.id.clone(),
            events: r.progress.events.load(Ordering::Relaxed),
            bytes: r.progress.bytes.load(Ordering::Relaxed),
            total: r.progress.total.load(Ordering::Relaxed),
            elapsed: r.started.elapsed(),
        })
    }

    /// Takes the single operation slot — in this process, then the catalog's operation lease
    /// that every process sharing the catalog takes — or says who holds it.
    pub(super) async fn claim(
        &self,
        kind: &'static str,
        id: &str,
    ) -> Result<Arc<Progress>, EngineError> {
        if let Some(why) = self.interrupt.reason() {
            return Err(EngineError::Unavailable(format!(
                "the service is stopping ({why}): no new {kind} starts"
            )));
        }
        let mut slot = self.running.lock().await;
        if let Some(r) = slot.as_ref() {
            return Err(EngineError::Busy {
                kind: r.kind,
                id: r.id.clone(),
            });
        }
        let catalog = &self.cfg.catalog;
        match catalog.acquire_lease(&self.holder, kind, id).await {
            Ok(None) => {}
            Ok(Some(h)) => {
                return Err(EngineError::BusyElsewhere {
                    kind: h.kind,
                    id: h.operation_id,
                    holder: h.holder,
                    since: h.acquired_at,
                })
            }
            Err(e) => {
                return Err(EngineError::Unavailable(format!(
                    "catalog: {}",
                    self.cfg.catalog.unreachable(&e).await
                )))
            }
        }
        let renewing = tokio::spawn(renew_lease(catalog.clone(), self.holder.clone()));
        let progress = Arc::new(Progress::default());
        *slot = Some(Running {
            kind,
            id: id.to_string(),
            started: Instant::now(),
            progress: progress.clone(),
            renewing,
        });
        Ok(progress)
    }

    /// Frees the operation slot and gives the catalog's lease back.
    pub(super) async fn release(&self) {
        let Some(r) = self.running.lock().await.take() else {
            return;
        };
        r.renewing.abort();
        match report(self.cfg.catalog.release_lease(&self.holder)).await {
            Some(Ok(_)) => {}
            // It expires by itself after the lease's time to live.
            Some(Err(e)) => {
                tracing::warn!(operation_id = %r.id, error = %error_line(&e), "could not give the catalog's operation lease back; it expires by itself")
            }
            None => {
                tracing::warn!(operation_id = %r.id, "the catalog did not answer giving the operation lease back; it expires by itself")
            }
        }
    }
}
