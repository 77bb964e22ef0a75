//! The catalog: backup and restore records in SQLite (embedded default) or
//! PostgreSQL/CockroachDB, through sqlx. It is an index: [`Catalog::resync`] rebuilds the backup
//! records from the manifests at the destination, so losing the catalog loses nothing.

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::Row;

use crate::destination::Destination;

mod error;
mod lease;
mod records;
pub use error::CatalogError;
pub use lease::{lease_holder_name, LeaseHolder, LEASE_RENEW_EVERY, LEASE_TTL};
#[cfg(test)]
use lease::{now_ms, this_host};
use records::{backup_from_row, restore_from_row};
pub use records::{BackupRecord, Page, RestoreRecord, State};

/// The outcome of a check of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The backup checked.
    pub backup_id: String,
    /// `drill` or `verify`.
    pub kind: String,
    /// When (RFC 3339).
    pub checked_at: String,
    /// Whether it passed.
    pub ok: bool,
    /// What it found, in words.
    pub detail: String,
}

/// The catalog database.
#[derive(Debug, Clone)]
pub struct Catalog {
    pool: AnyPool,
    url_kind: &'static str,
}

/// A catalog in memory, for one run of a one-shot command (rebuilt from the destination).
pub const MEMORY: &str = "sqlite::memory:";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

const BACKUP_COLUMNS: &str = "id, kind, state, parent_id, created_at, completed_at, created_by, source, event_count, archive_bytes, archive_sha256, archive_key, first_event_time, last_event_time, events_sha256, key_id, format_version, error, note, locked_until";

impl Catalog {
    /// Connects to `sqlite://PATH` (created when missing) or `postgres://…` and migrates.
    pub async fn connect(url: &str) -> Result<Self, CatalogError> {
        sqlx::any::install_default_drivers();
        let (url, kind) = if url == MEMORY {
            (url.to_string(), "sqlite")
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if let Some(dir) = std::path::Path::new(path.split('?').next().unwrap_or(path)).parent()
            {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|source| CatalogError::CreateDir {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
            }
            let url = if url.contains('?') {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            (url, "sqlite")
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            crate::database::check_client_key(url, "catalog database")
                .map_err(CatalogError::BadUrl)?;
            (url.to_string(), "postgres")
        } else {
            return Err(CatalogError::BadUrl(format!(
                "unsupported catalog URL {url:?}: use sqlite://PATH or postgres://…"
            )));
        };
        let connect: sqlx::any::AnyConnectOptions = url.parse().map_err(|e| {
            CatalogError::BadUrl(format!(
                "invalid catalog database URL: {}",
                monoskope_backup_client::error_line(&e)
            ))
        })?;
        let mut options = AnyPoolOptions::new()
            .max_connections(if kind == "sqlite" { 1 } else { 5 })
            .acquire_timeout(std::time::Duration::from_secs(10));
        if url == MEMORY {
            // The database lives as long as its one connection: never let it go.
            options = options
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = crate::database::open(options, connect)
            .await
            .map_err(CatalogError::Unreachable)?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            url_kind: kind,
        })
    }

    /// `e`, from this catalog, in one line; when no connection could be had, why (the
    /// database refuses connections, its name does not resolve, …).
    pub async fn unreachable(&self, e: &CatalogError) -> String {
        crate::database::explain(&self.pool, e, e.is_pool_timeout()).await
    }

    /// "sqlite" or "postgres".
    pub fn kind(&self) -> &'static str {
        self.url_kind
    }

    /// Inserts or replaces a backup record.
    pub async fn upsert_backup(&self, r: &BackupRecord) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM backups WHERE id = $1")
            .bind(&r.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO backups ({BACKUP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
        ))
        .bind(&r.id)
        .bind(&r.kind)
        .bind(r.state.as_str())
        .bind(&r.parent_id)
        .bind(&r.created_at)
        .bind(&r.completed_at)
        .bind(&r.created_by)
        .bind(&r.source)
        .bind(r.event_count as i64)
        .bind(r.archive_bytes as i64)
        .bind(&r.archive_sha256)
        .bind(&r.archive_key)
        .bind(&r.first_event_time)
        .bind(&r.last_event_time)
        .bind(&r.events_sha256)
        .bind(&r.key_id)
        .bind(&r.format_version)
        .bind(&r.error)
        .bind(&r.note)
        .bind(&r.locked_until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The backup with this id.
    pub async fn get_backup(&self, id: &str) -> Result<Option<BackupRecord>, CatalogError> {
        let row = sqlx::query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| backup_from_row(&r)).transpose()
    }

    /// Backups newest first; complete ones only unless `include_incomplete`.
    pub async fn list_backups(
        &self,
        page_size: usize,
        page_token: Option<&str>,
        include_incomplete: bool,
    ) -> Result<Page, CatalogError> {
        let states = if include_incomplete {
            ""
        } else {
            " AND state = 'succeeded'"
        };
        let rows = sqlx::query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE id < $1{states} ORDER BY id DESC LIMIT $2"
        ))
        .bind(page_token.unwrap_or("~"))
        .bind(page_size as i64 + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut backups = rows
            .iter()
            .map(backup_from_row)
            .collect::<Result<Vec<_>, CatalogError>>()?;
        let next = if backups.len() > page_size {
            backups.truncate(page_size);
            backups.last().map(|b| b.id.clone())
        } else {
            None
        };
        Ok(Page { backups, next })
    }

    /// Every backup in a state, newest first.
    pub async fn backups_in_state(&self, state: State) -> Result<Vec<BackupRecord>, CatalogError> {
        let rows = sqlx::query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE state = $1 ORDER BY id DESC"
        ))
        .bind(state.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(backup_from_row).collect()
    }

    /// The newest backup in a state.
    pub async fn oldest_in_state(
        &self,
        state: State,
    ) -> Result<Option<BackupRecord>, CatalogError> {
        let row = sqlx::query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE state = $1 ORDER BY id ASC LIMIT 1"
        ))
        .bind(state.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| backup_from_row(&r)).transpose()
    }

    /// The newest backup in `state`.
    pub async fn newest_in_state(
        &self,
        state: State,
    ) -> Result<Option<BackupRecord>, CatalogError> {
        let row = sqlx::query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE state = $1 ORDER BY id DESC LIMIT 1"
        ))
        .bind(state.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| backup_from_row(&r)).transpose()
    }

    /// Number of complete backups.
    pub async fn count_complete(&self) -> Result<u64, CatalogError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM backups WHERE state = 'succeeded'")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// Records the outcome of a check of backup `backup_id`: `kind` `drill` or `verify`.
    pub async fn record_check(
        &self,
        backup_id: &str,
        kind: &str,
        ok: bool,
        detail: &str,
    ) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO checks (backup_id, kind, checked_at, ok, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(backup_id)
        .bind(kind)
        .bind(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .bind(i64::from(ok))
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest check of each kind of each of `ids`.
    pub async fn last_checks(&self, ids: &[String]) -> Result<Vec<Check>, CatalogError> {
        let mut out: std::collections::BTreeMap<(String, String), Check> = Default::default();
        // One read of the (small: a row per drill or verification) table, folded here.
        let rows = sqlx::query(
            "SELECT backup_id, kind, checked_at, ok, detail FROM checks ORDER BY checked_at",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let c = Check {
                backup_id: r.try_get("backup_id")?,
                kind: r.try_get("kind")?,
                checked_at: r.try_get("checked_at")?,
                ok: r.try_get::<i64, _>("ok")? != 0,
                detail: r.try_get("detail")?,
            };
            if ids.contains(&c.backup_id) {
                out.insert((c.backup_id.clone(), c.kind.clone()), c);
            }
        }
        Ok(out.into_values().collect())
    }

    /// Removes a backup record.
    pub async fn delete_backup(&self, id: &str) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM backups WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Rebuilds the complete backups from the manifests at `dest`: adds what is missing,
    /// removes complete records whose manifest is gone, keeps failed-run records. Returns
    /// the number of complete backups found.
    pub async fn resync(&self, dest: &dyn Destination) -> Result<u64, CatalogError> {
        let mut found = std::collections::BTreeSet::new();
        let complete = crate::destination::manifest::list_complete(dest)
            .await
            .map_err(|e| CatalogError::Destination(e.into()))?;
        for m in complete {
            self.upsert_backup(&BackupRecord::from_manifest(&m)).await?;
            found.insert(m.id);
        }
        for r in self.backups_in_state(State::Succeeded).await? {
            if !found.contains(&r.id) {
                self.delete_backup(&r.id).await?;
            }
        }
        Ok(found.len() as u64)
    }

    /// Inserts or replaces a restore record.
    pub async fn upsert_restore(&self, r: &RestoreRecord) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM restores WHERE id = $1")
            .bind(&r.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO restores (id, backup_id, state, started_at, completed_at, created_by, sink, until_time, drop_existing, chain, event_count, archive_bytes, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
            .bind(&r.id)
            .bind(&r.backup_id)
            .bind(r.state.as_str())
            .bind(&r.started_at)
            .bind(&r.completed_at)
            .bind(&r.created_by)
            .bind(&r.sink)
            .bind(&r.until)
            .bind(i64::from(r.drop_existing))
            .bind(r.chain.join(","))
            .bind(r.event_count as i64)
            .bind(r.archive_bytes as i64)
            .bind(&r.error)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest restore.
    pub async fn last_restore(&self) -> Result<Option<RestoreRecord>, CatalogError> {
        let row = sqlx::query("SELECT id, backup_id, state, started_at, completed_at, created_by, sink, until_time, drop_existing, chain, event_count, archive_bytes, error FROM restores ORDER BY started_at DESC, id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| restore_from_row(&r)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lease on SQLite (the e2e tests hold it on PostgreSQL across processes): one holder
    /// at a time, renewed only by its holder, given back only by its holder, taken over when
    /// stale; RUNNING records are a dead process's unless a live lease covers them.
    #[tokio::test]
    async fn the_operation_lease_admits_one_holder_and_outlives_no_dead_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Catalog::connect(&format!("sqlite://{}", dir.path().join("c.db").display()))
            .await
            .expect("catalog");
        assert_eq!(
            c.acquire_lease("a:1:x", "backup", "op-a").await.expect("a"),
            None
        );
        let held = c
            .acquire_lease("b:2:y", "restore", "op-b")
            .await
            .expect("b")
            .expect("a holds it");
        assert_eq!(
            (
                held.holder.as_str(),
                held.kind.as_str(),
                held.operation_id.as_str()
            ),
            ("a:1:x", "backup", "op-a")
        );
        assert!(
            !c.renew_lease("b:2:y").await.expect("renew"),
            "not b's to renew"
        );
        assert!(c.renew_lease("a:1:x").await.expect("renew"));
        c.release_lease("b:2:y").await.expect("release");
        assert!(
            c.lease_holder().await.expect("holder").is_some(),
            "not b's to give back"
        );

        // a's RUNNING record survives another process opening the catalog; a record no live
        // lease covers does not.
        let running = |id: &str| {
            BackupRecord::running(
                id,
                "full",
                "2026-11-24T00:00:00.000Z".into(),
                "test".into(),
                "test".into(),
            )
        };
        c.upsert_backup(&running("op-a")).await.expect("a's record");
        c.upsert_backup(&running("op-dead"))
            .await
            .expect("a dead one's");
        assert_eq!(c.fail_interrupted().await.expect("fail"), 1);
        let state = |id: &'static str| {
            let c = c.clone();
            async move { c.get_backup(id).await.expect("get").expect("record").state }
        };
        assert_eq!(state("op-a").await, State::Running);
        assert_eq!(state("op-dead").await, State::Failed);

        // a dies: once its lease went unrenewed for longer than it lasts, b takes it over and
        // a's RUNNING record is marked FAILED.
        sqlx::query("UPDATE operation_lease SET renewed_at_ms = renewed_at_ms - $1")
            .bind(LEASE_TTL.as_millis() as i64 + 1_000)
            .execute(&c.pool)
            .await
            .expect("age the lease");
        assert_eq!(
            c.acquire_lease("b:2:y", "restore", "op-b")
                .await
                .expect("b"),
            None
        );
        assert_eq!(state("op-a").await, State::Failed);
        assert!(!c.renew_lease("a:1:x").await.expect("renew"), "a lost it");
        c.release_lease("b:2:y").await.expect("release");
        assert_eq!(c.lease_holder().await.expect("holder"), None);
    }

    /// A crash followed by a restart on the same host (a container's process 1 again, or any
    /// process id that is gone) does not wait out the lease: opening the catalog fails the dead
    /// process's RUNNING record, and the lease is taken at once. Another host's fresh lease is
    /// alive as long as it is renewed.
    #[tokio::test]
    async fn a_lease_of_a_gone_process_on_this_host_is_taken_over_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Catalog::connect(&format!("sqlite://{}", dir.path().join("c.db").display()))
            .await
            .expect("catalog");
        let gone = [
            format!("{}:{}:0000dead", this_host(), std::process::id()),
            format!("{}:999999999:0000dead", this_host()),
        ];
        for (i, holder) in gone.iter().enumerate() {
            let op = format!("op-gone-{i}");
            sqlx::query("INSERT INTO operation_lease (slot, holder, kind, operation_id, acquired_at, renewed_at_ms) VALUES (1, $1, 'backup', $2, '2026-11-24T00:00:00.000Z', $3)")
                .bind(holder)
                .bind(&op)
                .bind(now_ms())
                .execute(&c.pool)
                .await
                .expect("its lease");
            c.upsert_backup(&BackupRecord::running(
                &op,
                "full",
                "2026-11-24T00:00:00.000Z".into(),
                "test".into(),
                "test".into(),
            ))
            .await
            .expect("its record");
            assert_eq!(c.live_lease().await.expect("lease"), None, "{holder}");
            assert_eq!(c.fail_interrupted().await.expect("fail"), 1, "{holder}");
            assert_eq!(
                c.acquire_lease("next:1:x", "backup", "op-next")
                    .await
                    .expect("next"),
                None,
                "{holder}"
            );
            c.release_lease("next:1:x").await.expect("release");
        }
        let elsewhere = LeaseHolder {
            holder: "another-host:1:x".into(),
            kind: "backup".into(),
            operation_id: "op".into(),
            acquired_at: "2026-11-24T00:00:00.000Z".into(),
            renewed_at_ms: now_ms(),
        };
        assert!(!elsewhere.is_dead());
        let here_alive = LeaseHolder {
            holder: format!("{}:{}:x", this_host(), std::os::unix::process::parent_id()),
            ..elsewhere
        };
        assert!(!here_alive.is_dead(), "a live process of this host");
    }
}
