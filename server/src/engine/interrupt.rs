//! A stop asked for from outside (a signal), which every bounded step of an operation obeys.

use std::sync::Arc;

use tokio::sync::watch;

/// A stop asked for from outside (SIGTERM, Ctrl-C): the running backup, restore or drill fails at
/// once the way a timeout fails it — the upload aborted, the restore's transaction rolled back, the
/// record FAILED with the reason, the lease given back — and no new operation starts. Cheap to
/// clone; once fired it stays fired.
#[derive(Debug, Clone)]
pub struct Interrupt(Arc<watch::Sender<Option<String>>>);

impl Default for Interrupt {
    fn default() -> Self {
        Self(Arc::new(watch::channel(None).0))
    }
}

impl Interrupt {
    /// Fires with `why` (e.g. "SIGTERM"); later calls keep the first reason.
    pub fn fire(&self, why: &str) {
        self.0.send_if_modified(|v| {
            if v.is_some() {
                return false;
            }
            *v = Some(why.to_string());
            true
        });
    }

    /// The reason, once fired.
    pub fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves with the reason once fired.
    pub async fn fired(&self) -> String {
        let mut rx = self.0.subscribe();
        let why = rx
            .wait_for(Option::is_some)
            .await
            .map(|v| v.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            // The sender lives in `self`: never closed while this runs.
            Err(_) => std::future::pending().await,
        }
    }

    /// Runs `fut` until `deadline`: its output, or what stopped it — `timed_out` past the
    /// deadline, "interrupted by …" when fired.
    pub async fn bounded<T>(
        &self,
        deadline: tokio::time::Instant,
        fut: impl std::future::Future<Output = anyhow::Result<T>>,
        timed_out: impl FnOnce() -> anyhow::Error,
    ) -> anyhow::Result<T> {
        self.bounded_with(deadline, fut, timed_out, |why| {
            anyhow::anyhow!("interrupted by {why}")
        })
        .await
    }

    /// [`Interrupt::bounded`] with the caller's own errors: `timed_out()` past the deadline,
    /// `interrupted(reason)` when fired.
    pub async fn bounded_with<T, E>(
        &self,
        deadline: tokio::time::Instant,
        fut: impl std::future::Future<Output = Result<T, E>>,
        timed_out: impl FnOnce() -> E,
        interrupted: impl FnOnce(String) -> E,
    ) -> Result<T, E> {
        tokio::select! {
            r = tokio::time::timeout_at(deadline, fut) => r.unwrap_or_else(|_| Err(timed_out())),
            why = self.fired() => Err(interrupted(why)),
        }
    }
}
