//! Retention: keep the newest N complete backups, never the newest one, only our own objects,
//! and remove incomplete leftovers (archives without a manifest) older than a day. The plan is a
//! plain value computed from a listing of the destination — the source of truth.

use std::collections::BTreeMap;

use super::EngineConfig;
use crate::destination::{layout, Destination, ObjectInfo};

/// Leftovers younger than this may belong to a running backup.
pub const LEFTOVER_AGE_SECS: i64 = 24 * 3600;

/// What retention will delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Complete backups kept, newest first.
    pub keep: Vec<String>,
    /// Complete backups deleted (manifest first, then archive), oldest first.
    pub delete_backups: Vec<String>,
    /// Object keys of incomplete leftovers deleted.
    pub delete_leftovers: Vec<String>,
}

impl RetentionPlan {
    /// Whether nothing would be deleted.
    pub fn is_empty(&self) -> bool {
        self.delete_backups.is_empty() && self.delete_leftovers.is_empty()
    }
}

/// Plans retention over a listing of `backups/`. `retention_count < 1` keeps every backup.
pub fn plan(objects: &[ObjectInfo], retention_count: i64, now_unix: i64) -> RetentionPlan {
    let mut by_id: BTreeMap<&str, (Option<&ObjectInfo>, Option<&ObjectInfo>)> = BTreeMap::new();
    for o in objects {
        if let Some((id, is_manifest)) = layout::parse_key(&o.key) {
            let e = by_id.entry(id).or_default();
            if is_manifest {
                e.1 = Some(o);
            } else {
                e.0 = Some(o);
            }
        }
    }
    let mut complete: Vec<&str> = by_id
        .iter()
        .filter(|(_, (a, m))| a.is_some() && m.is_some())
        .map(|(id, _)| *id)
        .collect();
    complete.sort_unstable_by(|a, b| b.cmp(a));
    let keep_n = if retention_count < 1 {
        complete.len()
    } else {
        (retention_count as usize).max(1)
    };
    let mut p = RetentionPlan {
        keep: complete
            .iter()
            .take(keep_n)
            .map(|s| s.to_string())
            .collect(),
        delete_backups: complete
            .iter()
            .skip(keep_n)
            .rev()
            .map(|s| s.to_string())
            .collect(),
        delete_leftovers: Vec::new(),
    };
    for (archive, manifest) in by_id.values() {
        if let (Some(a), None) = (archive, manifest) {
            if now_unix - a.modified_unix > LEFTOVER_AGE_SECS {
                p.delete_leftovers.push(a.key.clone());
            }
        }
    }
    p
}

/// Lists the destination and plans retention.
pub async fn plan_for(
    dest: &dyn Destination,
    retention_count: i64,
) -> anyhow::Result<RetentionPlan> {
    let objects = dest.list(layout::BACKUPS_DIR).await?;
    Ok(plan(
        &objects,
        retention_count,
        chrono::Utc::now().timestamp(),
    ))
}

/// Plans and executes retention, updating the catalog.
pub async fn run(cfg: &EngineConfig) -> anyhow::Result<RetentionPlan> {
    let dest = cfg.destination.as_ref();
    let plan = plan_for(dest, cfg.retention_count).await?;
    for id in &plan.delete_backups {
        // Manifest first: the backup becomes invisible before its archive goes.
        dest.delete(&layout::manifest_key(id)).await?;
        dest.delete(&layout::archive_key(id)).await?;
        cfg.catalog.delete_backup(id).await?;
    }
    for key in &plan.delete_leftovers {
        dest.delete(key).await?;
        if let Some((id, _)) = layout::parse_key(key) {
            cfg.catalog.delete_backup(id).await?;
        }
    }
    if let Err(e) = dest.cleanup_stale_uploads(LEFTOVER_AGE_SECS).await {
        tracing::warn!(error = %e, "could not clean up stale uploads");
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: String, age: i64) -> ObjectInfo {
        ObjectInfo {
            key,
            size: 1,
            modified_unix: 1_000_000 - age,
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("2026112{}T000000000Z-0000000{}", i % 10, i % 10))
            .collect()
    }

    #[test]
    fn keeps_newest_n_and_deletes_oldest_first() {
        let ids = ids(5);
        let objects: Vec<ObjectInfo> = ids
            .iter()
            .flat_map(|id| {
                [
                    obj(layout::archive_key(id), 0),
                    obj(layout::manifest_key(id), 0),
                ]
            })
            .collect();
        let p = plan(&objects, 2, 1_000_000);
        assert_eq!(p.keep, vec![ids[4].clone(), ids[3].clone()]);
        assert_eq!(
            p.delete_backups,
            vec![ids[0].clone(), ids[1].clone(), ids[2].clone()]
        );
        assert!(
            plan(&objects, 0, 1_000_000).delete_backups.is_empty(),
            "< 1 keeps all"
        );
        assert!(
            plan(&objects, -3, 1_000_000).delete_backups.is_empty(),
            "< 1 keeps all"
        );
    }

    #[test]
    fn incomplete_leftovers_only_after_a_day_and_never_counted() {
        let ids = ids(3);
        let mut objects = vec![
            obj(layout::archive_key(&ids[2]), 10),
            obj(layout::archive_key(&ids[1]), 2 * 86400),
        ];
        objects.extend([
            obj(layout::archive_key(&ids[0]), 0),
            obj(layout::manifest_key(&ids[0]), 0),
        ]);
        objects.push(obj("backups/not-ours.txt".into(), 9 * 86400));
        objects.push(obj("somebody-elses/file".into(), 9 * 86400));
        let p = plan(&objects, 1, 1_000_000);
        assert_eq!(
            p.keep,
            vec![ids[0].clone()],
            "the only complete backup is kept, whatever its age"
        );
        assert_eq!(p.delete_leftovers, vec![layout::archive_key(&ids[1])]);
        assert!(p.delete_backups.is_empty());
    }
}
