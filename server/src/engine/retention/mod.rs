//! Retention: keep what the policy asks for — the newest N complete backups (restore points,
//! full or incremental) and grandfather-father-son buckets ([`Policy`]) — and every backup a kept
//! one depends on, so whole chains go, oldest first, and no incremental is ever orphaned; never
//! the newest one, never an object before its lock date, only our own objects; remove incomplete
//! leftovers (archives, key files or watermarks without a manifest) older than a day. The plan is
//! a plain value computed from a listing and the manifests of the destination — the source of
//! truth — with the reason each backup is kept.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::EngineConfig;
use crate::destination::{layout, Destination, ObjectInfo};

pub mod policy;
pub use policy::Policy;

/// Leftovers younger than this may belong to a running backup.
pub const LEFTOVER_AGE_SECS: i64 = 24 * 3600;

/// What retention will delete, and why it keeps the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionPlan {
    /// Complete backups kept, newest first.
    pub keep: Vec<String>,
    /// Complete backups deleted (manifest first, then archive), newest first: an incremental
    /// before the backups it builds on, so a run cut off midway never leaves a listed backup
    /// whose chain is gone (the next run deletes the rest).
    pub delete_backups: Vec<String>,
    /// Object keys of incomplete leftovers deleted.
    pub delete_leftovers: Vec<String>,
    /// Why each kept backup is kept.
    pub reasons: BTreeMap<String, Vec<String>>,
}

impl RetentionPlan {
    /// Whether nothing would be deleted.
    pub fn is_empty(&self) -> bool {
        self.delete_backups.is_empty() && self.delete_leftovers.is_empty()
    }
}

/// What retention knows of a complete backup from its manifest.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// The parent of an incremental.
    pub parent: Option<String>,
    /// Until when its objects are locked against deletion (object lock), if at all.
    pub locked_until: Option<DateTime<Utc>>,
    /// A continuous segment, or an incremental compacted from segments: not a restore point of
    /// its own for the policy's counts; kept with the backup it continues (a full with its
    /// incrementals, compactions and segments is one unit).
    pub segment: bool,
}

/// The creation time a backup id carries (`YYYYMMDDTHHMMSSmmmZ-…`).
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.get(..18)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%3f")
        .ok()
        .map(|t| t.and_utc())
}

/// Plans retention over a listing of `backups/` and what the manifests say of each complete
/// backup (`known`), under `policy`, at `now_unix`.
pub fn plan(
    objects: &[ObjectInfo],
    known: &HashMap<String, Known>,
    policy: Policy,
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
    let is_segment = |id: &str| known.get(id).is_some_and(|k| k.segment);
    let timed: Vec<(String, DateTime<Utc>)> = complete
        .iter()
        .filter(|id| !is_segment(id))
        .map(|id| (id.to_string(), id_time(id).unwrap_or_default()))
        .collect();
    let mut reasons = policy.select(&timed);
    // The newest backup stays, segment or not (it is the latest restorable instant).
    if let Some(newest) = complete.first() {
        if is_segment(newest) {
            reasons
                .entry(newest.to_string())
                .or_default()
                .push("the newest backup".into());
        }
    }
    let now = DateTime::from_timestamp(now_unix, 0).unwrap_or_default();
    // Never an object before its lock date: the plan keeps it and says why.
    for id in &complete {
        if let Some(until) = known.get(*id).and_then(|k| k.locked_until) {
            if until > now {
                reasons.entry(id.to_string()).or_default().push(format!(
                    "locked until {}",
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
            }
        }
    }
    // Every ancestor of a kept backup.
    let mut kept: HashSet<String> = reasons.keys().cloned().collect();
    let mut todo: Vec<String> = kept.iter().cloned().collect();
    while let Some(id) = todo.pop() {
        if let Some(Some(parent)) = known.get(&id).map(|k| &k.parent) {
            if complete.contains(&parent.as_str()) {
                reasons
                    .entry(parent.clone())
                    .or_default()
                    .push(format!("in the chain of {id}"));
                if kept.insert(parent.clone()) {
                    todo.push(parent.clone());
                }
            }
        }
    }
    // Segments go with the backup they continue: kept when their nearest backup that is not a
    // segment is kept (and, with it, every segment between).
    for id in complete.iter().filter(|id| is_segment(id)) {
        let mut at = id.to_string();
        let mut base = None;
        while let Some(Some(parent)) = known.get(&at).map(|k| k.parent.clone()) {
            if !is_segment(&parent) {
                base = Some(parent);
                break;
            }
            at = parent;
        }
        if let Some(b) = base.filter(|b| kept.contains(b)) {
            if kept.insert(id.to_string()) {
                reasons
                    .entry(id.to_string())
                    .or_default()
                    .push(format!("a continuous segment of the chain of {b}"));
            }
        }
    }
    // And what those segments continue.
    let mut todo: Vec<String> = kept.iter().cloned().collect();
    while let Some(id) = todo.pop() {
        if let Some(Some(parent)) = known.get(&id).map(|k| &k.parent) {
            if complete.contains(&parent.as_str()) && kept.insert(parent.clone()) {
                reasons
                    .entry(parent.clone())
                    .or_default()
                    .push(format!("in the chain of {id}"));
                todo.push(parent.clone());
            }
        }
    }
    let mut p = RetentionPlan {
        keep: complete
            .iter()
            .filter(|id| kept.contains(**id))
            .map(|s| s.to_string())
            .collect(),
        delete_backups: complete
            .iter()
            .filter(|id| !kept.contains(**id))
            .map(|s| s.to_string())
            .collect(),
        delete_leftovers: Vec::new(),
        reasons,
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

/// Lists the destination and plans retention under `policy`.
pub async fn plan_for(dest: &dyn Destination, policy: Policy) -> anyhow::Result<RetentionPlan> {
    let objects = dest.list(layout::BACKUPS_DIR).await?;
    let known: HashMap<String, Known> = crate::destination::manifest::list_complete(dest)
        .await?
        .into_iter()
        .map(|m| {
            let locked_until = m
                .locked_until
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            // Compactions are the segments they replace, in one archive.
            let segment = m.is_segment() || m.compacted.is_some();
            (
                m.id,
                Known {
                    parent: m.parent_id,
                    locked_until,
                    segment,
                },
            )
        })
        .collect();
    Ok(plan(
        &objects,
        &known,
        policy,
        chrono::Utc::now().timestamp(),
    ))
}

/// Deletes the complete backup `id` from the destination and the catalog: its manifest first, so
/// that it is invisible before its archive goes (an interruption leaves an incomplete backup,
/// which retention removes once it is a day old).
pub async fn delete_backup(cfg: &EngineConfig, id: &str) -> anyhow::Result<()> {
    let dest = cfg.destination.as_ref();
    dest.delete(&layout::manifest_key(id)).await?;
    dest.delete(&layout::archive_key(id)).await?;
    dest.delete(&layout::keys_key(&layout::archive_key(id)))
        .await?;
    dest.delete(&layout::watermark_key(id)).await?;
    cfg.catalog.delete_backup(id).await?;
    Ok(())
}

/// Plans and executes retention, updating the catalog.
pub async fn run(cfg: &EngineConfig) -> anyhow::Result<RetentionPlan> {
    let dest = cfg.destination.as_ref();
    let plan = plan_for(dest, cfg.retention).await?;
    for id in &plan.delete_backups {
        delete_backup(cfg, id).await?;
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

    /// The plan under keep-last `n`, the manifests giving only parents.
    fn plan_n(
        objects: &[ObjectInfo],
        parents: &HashMap<String, Option<String>>,
        n: i64,
        now: i64,
    ) -> RetentionPlan {
        let known = parents
            .iter()
            .map(|(id, p)| {
                (
                    id.clone(),
                    Known {
                        parent: p.clone(),
                        locked_until: None,
                        segment: false,
                    },
                )
            })
            .collect();
        plan(objects, &known, Policy::last(n), now)
    }

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

    /// The archive and manifest of each of `ids`: complete backups.
    fn complete(ids: &[String]) -> Vec<ObjectInfo> {
        ids.iter()
            .flat_map(|id| {
                [
                    obj(layout::archive_key(id), 0),
                    obj(layout::manifest_key(id), 0),
                ]
            })
            .collect()
    }

    #[test]
    fn keeps_newest_n_and_deletes_newest_first() {
        let ids = ids(5);
        let objects = complete(&ids);
        let p = plan_n(&objects, &HashMap::new(), 2, 1_000_000);
        assert_eq!(p.keep, vec![ids[4].clone(), ids[3].clone()]);
        assert_eq!(
            p.delete_backups,
            vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]
        );
        assert!(
            plan_n(&objects, &HashMap::new(), 0, 1_000_000)
                .delete_backups
                .is_empty(),
            "< 1 keeps all"
        );
        assert!(
            plan_n(&objects, &HashMap::new(), -3, 1_000_000)
                .delete_backups
                .is_empty(),
            "< 1 keeps all"
        );
    }

    /// A lock date in the future keeps a backup (saying until when); one in the past does not.
    #[test]
    fn a_lock_keeps_a_backup_until_its_date_and_not_after() {
        let ids = ids(3);
        let objects = complete(&ids);
        let now = 1_000_000;
        let at = |secs: i64| DateTime::from_timestamp(now + secs, 0);
        let known: HashMap<String, Known> = [(0, at(-86_400)), (1, at(86_400)), (2, None)]
            .into_iter()
            .map(|(i, until)| {
                let k = Known {
                    parent: None,
                    locked_until: until,
                    segment: false,
                };
                (ids[i].clone(), k)
            })
            .collect();
        let p = plan(&objects, &known, Policy::last(1), now);
        assert_eq!(p.keep, vec![ids[2].clone(), ids[1].clone()]);
        assert_eq!(
            p.reasons[&ids[1]],
            vec!["locked until 1970-01-13T13:46:40Z".to_string()]
        );
        assert_eq!(p.delete_backups, vec![ids[0].clone()], "its lock is over");
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
        let p = plan_n(&objects, &HashMap::new(), 1, 1_000_000);
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
            let p = plan_n(&objects, &parents, n, 1_000_000);
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
        let p = plan_n(&objects, &parents, 1, 1_000_000);
        assert_eq!(p.keep, vec![b2.clone(), b1.clone(), b0.clone()]);
        assert_eq!(p.delete_backups, vec![a2.clone(), a1.clone(), a0.clone()]);
        assert!(plan_n(&objects, &parents, 4, 1_000_000)
            .delete_backups
            .is_empty());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Backups at random times over two years, each a full one or an incremental on the one
    /// before it, some locked; any policy: the plan keeps every ancestor of what it keeps,
    /// never deletes a locked backup or the newest, and splits the complete backups exactly.
    /// Backups (hour, incremental, locked, segment), a policy, and the hour it runs at.
    type Case = (Vec<(u32, bool, bool, bool)>, Policy, u32);

    fn case() -> impl Strategy<Value = Case> {
        (
            prop::collection::vec(
                (
                    0u32..730 * 24,
                    any::<bool>(),
                    prop::bool::weighted(0.1),
                    any::<bool>(),
                ),
                1..60,
            ),
            (0usize..5, 0usize..10, 0usize..6, 0usize..6, 0usize..3),
            0u32..730 * 24,
        )
            .prop_map(|(b, (l, d, w, m, y), now)| {
                (
                    b,
                    Policy {
                        keep_last: l,
                        keep_daily: d,
                        keep_weekly: w,
                        keep_monthly: m,
                        keep_yearly: y,
                    },
                    now,
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn no_plan_deletes_what_a_kept_backup_needs((backups, policy, now_h) in case()) {
            let base = DateTime::from_timestamp(1_767_225_600, 0).expect("2026-01-01");
            let mut hours: Vec<(u32, bool, bool, bool)> = backups;
            hours.sort_by_key(|b| b.0);
            hours.dedup_by_key(|b| b.0);
            let mut objects = Vec::new();
            let mut known = HashMap::new();
            let mut prev: Option<String> = None;
            let now = base + chrono::Duration::hours(i64::from(now_h));
            for (i, (h, incremental, locked, seg)) in hours.iter().enumerate() {
                let t = base + chrono::Duration::hours(i64::from(*h));
                let id = format!("{}-{i:08x}", t.format("%Y%m%dT%H%M%S%3fZ"));
                objects.push(ObjectInfo { key: layout::archive_key(&id), size: 1, modified_unix: 0 });
                objects.push(ObjectInfo { key: layout::manifest_key(&id), size: 1, modified_unix: 0 });
                let parent = if *incremental { prev.clone() } else { None };
                let locked_until = locked.then(|| now + chrono::Duration::days(3));
                // A segment continues the backup before it.
                let segment = *seg && parent.is_some();
                known.insert(id.clone(), Known { parent, locked_until, segment });
                prev = Some(id);
            }
            let p = plan(&objects, &known, policy, now.timestamp());
            let kept: HashSet<&String> = p.keep.iter().collect();
            let deleted: HashSet<&String> = p.delete_backups.iter().collect();
            prop_assert!(kept.is_disjoint(&deleted));
            prop_assert_eq!(kept.len() + deleted.len(), known.len());
            prop_assert!(kept.contains(prev.as_ref().expect("one backup")), "the newest is kept");
            for id in &p.keep {
                prop_assert!(p.reasons.get(id).is_some_and(|r| !r.is_empty()), "{} kept without a reason", id);
                let mut at = id.clone();
                while let Some(Some(parent)) = known.get(&at).map(|k| k.parent.clone()) {
                    prop_assert!(kept.contains(&parent), "{} needs {}, which would go", id, parent);
                    at = parent;
                }
            }
            // Cut off after any number of deletions, no remaining backup's parent is gone: a
            // backup is deleted before its parent.
            let pos: HashMap<&String, usize> =
                p.delete_backups.iter().enumerate().map(|(i, id)| (id, i)).collect();
            for (id, i) in &pos {
                if let Some(Some(parent)) = known.get(*id).map(|k| &k.parent) {
                    if let Some(j) = pos.get(parent) {
                        prop_assert!(i < j, "{} is deleted after its parent {}", id, parent);
                    }
                }
            }
            for (id, k) in &known {
                if k.locked_until.is_some() {
                    prop_assert!(!deleted.contains(id), "locked {} would be deleted", id);
                }
            }
            if policy.keeps_all() {
                prop_assert!(deleted.is_empty());
            }
            // A segment goes with the backup it continues.
            for (id, k) in known.iter().filter(|(_, k)| k.segment) {
                let mut base = k.parent.clone();
                while let Some(b) = base.clone().filter(|b| known[b].segment) {
                    base = known[&b].parent.clone();
                }
                if let Some(b) = base {
                    if kept.contains(&b) {
                        prop_assert!(kept.contains(id), "segment {} of kept {} would go", id, b);
                    }
                }
            }
        }
    }
}
