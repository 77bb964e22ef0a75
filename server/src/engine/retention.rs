//! Retention: keep the newest N complete backups (restore points, full or incremental) and
//! every backup a kept one depends on, so whole chains go, oldest first, and no incremental is
//! ever orphaned; never the newest one, only our own objects; remove incomplete leftovers
//! (archives, key files or watermarks without a manifest) older than a day. The plan is a plain value
//! computed from a listing and the manifests of the destination — the source of truth.

use std::collections::{BTreeMap, HashMap, HashSet};

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

/// Plans retention over a listing of `backups/` and each complete backup's parent (from its
/// manifest). `retention_count < 1` keeps every backup.
pub fn plan(
    objects: &[ObjectInfo],
    parents: &HashMap<String, Option<String>>,
    retention_count: i64,
    now_unix: i64,
) -> RetentionPlan {
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
    // The newest N, then every ancestor of a kept backup.
    let mut kept: HashSet<&str> = complete.iter().take(keep_n).copied().collect();
    let mut todo: Vec<&str> = kept.iter().copied().collect();
    while let Some(id) = todo.pop() {
        if let Some(Some(parent)) = parents.get(id) {
            if let Some(p) = complete.iter().find(|c| **c == parent.as_str()) {
                if kept.insert(p) {
                    todo.push(p);
                }
            }
        }
    }
    let mut p = RetentionPlan {
        keep: complete
            .iter()
            .filter(|id| kept.contains(*id))
            .map(|s| s.to_string())
            .collect(),
        delete_backups: complete
            .iter()
            .rev()
            .filter(|id| !kept.contains(*id))
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
    for o in objects {
        if let Some(id) =
            layout::parse_watermark_key(&o.key).or_else(|| layout::parse_keys_key(&o.key))
        {
            let has_manifest = by_id.get(id).is_some_and(|(_, m)| m.is_some());
            if !has_manifest && now_unix - o.modified_unix > LEFTOVER_AGE_SECS {
                p.delete_leftovers.push(o.key.clone());
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
    let parents: HashMap<String, Option<String>> =
        crate::destination::manifest::list_complete(dest)
            .await?
            .into_iter()
            .map(|m| (m.id, m.parent_id))
            .collect();
    Ok(plan(
        &objects,
        &parents,
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
        dest.delete(&layout::keys_key(&layout::archive_key(id)))
            .await?;
        dest.delete(&layout::watermark_key(id)).await?;
        cfg.catalog.delete_backup(id).await?;
    }
    for key in &plan.delete_leftovers {
        dest.delete(key).await?;
        if let Some(id) = layout::parse_key(key)
            .map(|(id, _)| id)
            .or_else(|| layout::parse_watermark_key(key))
            .or_else(|| layout::parse_keys_key(key))
        {
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
        let p = plan(&objects, &HashMap::new(), 2, 1_000_000);
        assert_eq!(p.keep, vec![ids[4].clone(), ids[3].clone()]);
        assert_eq!(
            p.delete_backups,
            vec![ids[0].clone(), ids[1].clone(), ids[2].clone()]
        );
        assert!(
            plan(&objects, &HashMap::new(), 0, 1_000_000)
                .delete_backups
                .is_empty(),
            "< 1 keeps all"
        );
        assert!(
            plan(&objects, &HashMap::new(), -3, 1_000_000)
                .delete_backups
                .is_empty(),
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
            obj(layout::keys_key(&layout::archive_key(&ids[0])), 0),
            obj(layout::manifest_key(&ids[0]), 0),
            // A key file without its backup's manifest, like an archive's.
            obj(layout::keys_key(&layout::archive_key(&ids[1])), 2 * 86400),
            obj(layout::keys_key(&layout::archive_key(&ids[2])), 10),
        ]);
        objects.push(obj("backups/not-ours.txt".into(), 9 * 86400));
        objects.push(obj("somebody-elses/file".into(), 9 * 86400));
        let p = plan(&objects, &HashMap::new(), 1, 1_000_000);
        assert_eq!(
            p.keep,
            vec![ids[0].clone()],
            "the only complete backup is kept, whatever its age"
        );
        assert_eq!(
            p.delete_leftovers,
            vec![
                layout::archive_key(&ids[1]),
                layout::keys_key(&layout::archive_key(&ids[1]))
            ]
        );
        assert!(p.delete_backups.is_empty());
    }

    #[test]
    fn two_chains_never_orphan_an_incremental() {
        // Chain A: a0 (full) a1 a2; chain B: b0 (full) b1, b2. Ids sort by time.
        let ids = ids(6);
        let (a0, a1, a2, b0, b1, b2) = (&ids[0], &ids[1], &ids[2], &ids[3], &ids[4], &ids[5]);
        let mut parents = HashMap::new();
        parents.insert(a0.clone(), None);
        parents.insert(a1.clone(), Some(a0.clone()));
        parents.insert(a2.clone(), Some(a1.clone()));
        parents.insert(b0.clone(), None);
        parents.insert(b1.clone(), Some(b0.clone()));
        parents.insert(b2.clone(), Some(b1.clone()));
        let objects: Vec<ObjectInfo> = ids
            .iter()
            .flat_map(|id| {
                [
                    obj(layout::archive_key(id), 0),
                    obj(layout::watermark_key(id), 0),
                    obj(layout::manifest_key(id), 0),
                ]
            })
            .collect();
        for n in 1..=7 {
            let p = plan(&objects, &parents, n, 1_000_000);
            // Every kept backup's ancestors are kept.
            for k in &p.keep {
                let mut cur = k.clone();
                while let Some(Some(parent)) = parents.get(&cur) {
                    assert!(p.keep.contains(parent), "n={n}: {k} kept without {parent}");
                    cur = parent.clone();
                }
            }
            // At least n restore points (or all) are kept, and deletions are whole chains.
            assert!(p.keep.len() >= (n as usize).min(6), "n={n}: {p:?}");
            let deleted: HashSet<&String> = p.delete_backups.iter().collect();
            let chain_a = [a0, a1, a2];
            let gone = chain_a.iter().filter(|x| deleted.contains(**x)).count();
            assert!(
                gone == 0 || gone == 3,
                "n={n}: part of chain A deleted: {p:?}"
            );
            assert!(!deleted.contains(b0) && !deleted.contains(b1) && !deleted.contains(b2));
            assert!(p.delete_leftovers.is_empty());
        }
        let p = plan(&objects, &parents, 1, 1_000_000);
        assert_eq!(p.keep, vec![b2.clone(), b1.clone(), b0.clone()]);
        assert_eq!(p.delete_backups, vec![a0.clone(), a1.clone(), a2.clone()]);
        assert!(plan(&objects, &parents, 4, 1_000_000)
            .delete_backups
            .is_empty());
    }
}
