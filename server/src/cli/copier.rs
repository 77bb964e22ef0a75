//! Copies in a second place, kept by `serve` (and after each one-shot backup): every pass copies
//! to each copy destination what it does not hold yet, verified there; a copy destination that is
//! down never fails a backup — the pass is retried, and `monoskope_backup_copy_lag_seconds` says
//! how far behind it is.

use std::sync::Arc;
use std::time::Duration;

use crate::destination::{copies, Destination};
use crate::ops::metrics;

/// Between two passes.
pub const EVERY: Duration = Duration::from_secs(15);

/// One pass over every copy destination; returns, per destination, its URL and the error of a
/// pass that could not run (the destination down).
pub async fn pass(
    primary: &dyn Destination,
    copies_: &[Arc<dyn Destination>],
    down_since: &mut std::collections::HashMap<String, chrono::DateTime<chrono::Utc>>,
) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for c in copies_ {
        let url = c.url();
        let now = chrono::Utc::now();
        let (lag, err) = match copies::sync(primary, c.as_ref()).await {
            Ok(r) => {
                down_since.remove(&url);
                if !r.copied.is_empty() {
                    tracing::info!(copy = %crate::redact::url(&url), backups = ?r.copied, "backups copied and verified");
                }
                let lag = r
                    .behind_since
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map_or(0.0, |t| {
                        (now - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0
                    });
                let err = r
                    .behind_since
                    .map(|t| format!("a copy failed; behind since {t}"));
                (lag, err)
            }
            Err(e) => {
                let since = *down_since.entry(url.clone()).or_insert(now);
                let why = monoskope_backup_client::error_line(e.as_ref());
                tracing::warn!(copy = %crate::redact::url(&url), error = %why, "the copy destination cannot be reached; retrying");
                ((now - since).num_milliseconds() as f64 / 1000.0, Some(why))
            }
        };
        metrics::get().set_copy(&crate::redact::url(&url), lag.max(0.0), err.clone());
        out.push((url, err));
    }
    out
}

/// Keeps the copies until the task is dropped.
pub async fn run(primary: Arc<dyn Destination>, copies_: Vec<Arc<dyn Destination>>) {
    let mut down = std::collections::HashMap::new();
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        pass(primary.as_ref(), &copies_, &mut down).await;
    }
}
