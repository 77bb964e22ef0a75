//! The catalog's operation lease: one row that lets one operation run at a time across every
//! process sharing the catalog, renewed while it runs, taken over from a process known to be
//! gone; and the RUNNING records such a process leaves, marked FAILED.

use sqlx::Row;

use super::{Catalog, CatalogError};

/// How long a lease lasts without renewal: a process that stopped without giving it back
/// (killed, node lost) blocks other operations at most this long (not at all when it ran on
/// the same host: [`LeaseHolder::is_dead`]). Holders renew it every
/// [`LEASE_RENEW_EVERY`]; the processes' clocks must agree to well within the difference.
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// How often a holder renews its lease.
pub const LEASE_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Who holds the operation lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The process (`host:pid:nonce`).
    pub holder: String,
    /// "backup", "restore" or "drill".
    pub kind: String,
    /// The operation's id.
    pub operation_id: String,
    /// When it took the lease (RFC 3339).
    pub acquired_at: String,
    /// When it last renewed it (milliseconds since the Unix epoch).
    pub renewed_at_ms: i64,
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// This host's name as leases record it: the pod's name in Kubernetes (`POD_NAME`), else the
/// kernel's host name.
pub(super) fn this_host() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// A new name for this process in the operation lease: `host:pid:nonce`.
pub fn lease_holder_name() -> String {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{}:{}:{}", this_host(), std::process::id(), &nonce[..8])
}

impl LeaseHolder {
    /// Whether the holding process is known to be gone: it has not renewed the lease for
    /// longer than [`LEASE_TTL`], or it ran on this host and its process id is no longer there
    /// or is this process's own (a restarted container's process 1), so a crash followed by a
    /// restart — the common case — does not wait out the lease. Another host's process is
    /// known only by its renewals.
    pub fn is_dead(&self) -> bool {
        if self.renewed_at_ms < now_ms() - LEASE_TTL.as_millis() as i64 {
            return true;
        }
        let mut parts = self.holder.rsplitn(3, ':');
        let (_nonce, pid, host) = (parts.next(), parts.next(), parts.next());
        match (host, pid.and_then(|p| p.parse::<u32>().ok())) {
            (Some(host), Some(pid)) if host == this_host() => {
                pid == std::process::id() || !std::path::Path::new(&format!("/proc/{pid}")).exists()
            }
            _ => false,
        }
    }
}

impl Catalog {
    /// Marks operations left RUNNING by a process that died as FAILED: every RUNNING record
    /// but the one whose process holds the operation lease now (a live process's operation,
    /// e.g. the service's backup while a one-shot command starts).
    pub async fn fail_interrupted(&self) -> Result<u64, CatalogError> {
        let live = self.live_lease().await?;
        self.fail_running_except(live.as_ref().map_or("", |h| h.operation_id.as_str()))
            .await
    }

    /// Who holds the operation lease, unless that process is known to be gone
    /// ([`LeaseHolder::is_dead`]).
    pub async fn live_lease(&self) -> Result<Option<LeaseHolder>, CatalogError> {
        Ok(self.lease_holder().await?.filter(|h| !h.is_dead()))
    }

    /// Marks every RUNNING record but `keep` FAILED (interrupted).
    async fn fail_running_except(&self, keep: &str) -> Result<u64, CatalogError> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let a = sqlx::query("UPDATE backups SET state = 'failed', error = 'interrupted: the process running the backup stopped', completed_at = $1 WHERE state = 'running' AND id <> $2")
            .bind(&now)
            .bind(keep)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let b = sqlx::query("UPDATE restores SET state = 'failed', error = 'interrupted: the process running the restore stopped', completed_at = $1 WHERE state = 'running' AND id <> $2")
            .bind(&now)
            .bind(keep)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(a + b)
    }

    /// Takes the operation lease for `holder`'s operation `kind` `operation_id`, or returns
    /// who holds it. A lease not renewed for [`LEASE_TTL`] is a dead process's and is taken
    /// over. Whoever takes the lease knows every RUNNING record to be a dead process's (an
    /// operation runs only under the lease) and marks them FAILED.
    pub async fn acquire_lease(
        &self,
        holder: &str,
        kind: &str,
        operation_id: &str,
    ) -> Result<Option<LeaseHolder>, CatalogError> {
        let now = now_ms();
        if let Some(dead) = self.lease_holder().await?.filter(LeaseHolder::is_dead) {
            self.release_lease(&dead.holder).await?;
        }
        // Two processes may both find the slot free: the primary key lets one in.
        let inserted = sqlx::query("INSERT INTO operation_lease (slot, holder, kind, operation_id, acquired_at, renewed_at_ms) SELECT 1, $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM operation_lease WHERE slot = 1)")
            .bind(holder)
            .bind(kind)
            .bind(operation_id)
            .bind(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .bind(now)
            .execute(&self.pool)
            .await;
        match inserted {
            Ok(r) if r.rows_affected() == 1 => {
                let n = self.fail_running_except("").await?;
                if n > 0 {
                    tracing::warn!(
                        operations = n,
                        "marked operations whose process stopped as failed"
                    );
                }
                Ok(None)
            }
            other => match self.lease_holder().await? {
                Some(h) => Ok(Some(h)),
                None => {
                    other?;
                    Err(CatalogError::LeaseRace)
                }
            },
        }
    }

    /// Renews `holder`'s lease; false when it no longer holds it.
    pub async fn renew_lease(&self, holder: &str) -> Result<bool, CatalogError> {
        let r = sqlx::query(
            "UPDATE operation_lease SET renewed_at_ms = $1 WHERE slot = 1 AND holder = $2",
        )
        .bind(now_ms())
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives `holder`'s lease back (nothing when it does not hold it).
    pub async fn release_lease(&self, holder: &str) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM operation_lease WHERE slot = 1 AND holder = $1")
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Who holds the operation lease (perhaps a dead process: see `renewed_at_ms`).
    pub async fn lease_holder(&self) -> Result<Option<LeaseHolder>, CatalogError> {
        let row = sqlx::query("SELECT holder, kind, operation_id, acquired_at, renewed_at_ms FROM operation_lease WHERE slot = 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(LeaseHolder {
                holder: r.try_get("holder")?,
                kind: r.try_get("kind")?,
                operation_id: r.try_get("operation_id")?,
                acquired_at: r.try_get("acquired_at")?,
                renewed_at_ms: r.try_get("renewed_at_ms")?,
            })
        })
        .transpose()
    }
}
