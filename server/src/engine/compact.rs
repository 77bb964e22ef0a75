//! Compaction: the continuous segments at the end of a chain merged into one incremental, so
//! that a day at the default interval is 24 archives, not 17,280, and its restore reads about
//! what a full backup's would (docs/BENCHMARKS.md "Compaction").
//!
//! The plan is a value ([`plan`]): for each chain that ends in segments, the run of segments at
//! its end — two or more, the oldest older than `min_age` (an hour by default) — and the backup
//! they continue. [`super::Engine::compact`] executes it: the segments' records, read and checked
//! link by link from that backup as a restore reads them, become one incremental on it, linked to
//! its bytes (format 1.2) and naming the segments in its manifest (`compacted`). Only once it is
//! complete are the segments deleted, newest first. An interruption in between leaves both,
//! and either restores the same events; the next compaction deletes the segments a complete
//! compaction already holds ([`leftovers`]).

use chrono::{DateTime, Utc};
use monoskope_backup_client::error_line;
use std::collections::HashSet;
use std::sync::Arc;

use super::{backup, slot::final_value, watermark::Watermark, Engine, EngineError, What};
use crate::catalog::{BackupRecord, State};
use crate::destination::manifest::{Compacted, Manifest};
use crate::identity::Identity;

/// One chain's segments to merge, and the backup they continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactPlan {
    /// The backup the first segment continues (the compaction's parent).
    pub parent: Manifest,
    /// The segments, oldest first.
    pub segments: Vec<Manifest>,
}

impl CompactPlan {
    /// What the compaction's manifest says it replaces.
    pub fn compacted(&self) -> Compacted {
        Compacted {
            first: self
                .segments
                .first()
                .map(|m| m.id.clone())
                .unwrap_or_default(),
            last: self
                .segments
                .last()
                .map(|m| m.id.clone())
                .unwrap_or_default(),
            segments: self.segments.len() as u64,
        }
    }
}

/// What to compact among `all` complete backups at `now`: each chain tip that is a segment, with
/// the segments before it back to the first backup that is not one, when there are at least two
/// and the oldest started at least `min_age` ago. Oldest chain first.
pub fn plan(
    all: &[Manifest],
    now: DateTime<Utc>,
    min_age: std::time::Duration,
) -> Vec<CompactPlan> {
    let parents: HashSet<&str> = all.iter().filter_map(|m| m.parent_id.as_deref()).collect();
    let by_id = |id: &str| all.iter().find(|m| m.id == id);
    let min_age = chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::MAX);
    let held = leftovers(all);
    let mut plans = Vec::new();
    for tip in all
        .iter()
        .filter(|m| m.is_segment() && !parents.contains(m.id.as_str()) && !held.contains(&m.id))
    {
        let mut segments = vec![tip.clone()];
        let mut parent = None;
        let mut at = tip;
        while let Some(p) = at.parent_id.as_deref().and_then(by_id) {
            if !p.is_segment() {
                parent = Some(p.clone());
                break;
            }
            segments.push(p.clone());
            at = p;
        }
        segments.reverse();
        let old_enough = DateTime::parse_from_rfc3339(&segments[0].created_at)
            .is_ok_and(|t| now - t.with_timezone(&Utc) >= min_age);
        if let (Some(parent), true) = (parent, segments.len() >= 2 && old_enough) {
            plans.push(CompactPlan { parent, segments });
        }
    }
    plans.sort_by(|a, b| a.parent.id.cmp(&b.parent.id));
    plans
}

/// Whether `m`'s objects are locked against deletion at `now` (object lock).
fn locked(m: &Manifest, now: DateTime<Utc>) -> bool {
    m.locked_until
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t > now)
}

/// The segments among `all` that a complete compaction already holds (left behind by an
/// interruption between the compaction's manifest and their deletion), newest first.
pub fn leftovers(all: &[Manifest]) -> Vec<String> {
    let ranges: Vec<&Compacted> = all.iter().filter_map(|m| m.compacted.as_ref()).collect();
    all.iter()
        .filter(|m| m.is_segment())
        .filter(|m| {
            ranges
                .iter()
                .any(|c| c.first.as_str() <= m.id.as_str() && m.id.as_str() <= c.last.as_str())
        })
        .map(|m| m.id.clone())
        .collect()
}

impl Engine {
    /// Compacts every chain's segments that [`plan`] finds (the oldest at least `min_age` old),
    /// after deleting the segments complete compactions already hold. Returns the compactions'
    /// final records; one that failed left its segments as they were. Busy while another
    /// operation (a segment, a backup) runs: then the caller tries again later.
    pub async fn compact(
        &self,
        caller: &Identity,
        min_age: std::time::Duration,
    ) -> Result<Vec<BackupRecord>, EngineError> {
        let dest = self.cfg.destination.as_ref();
        let all = crate::destination::manifest::list_complete(dest)
            .await
            .map_err(|e| EngineError::Unavailable(error_line(e.as_ref())))?;
        let now = Utc::now();
        let unlocked = |id: &str| all.iter().any(|m| m.id == id && !locked(m, now));
        // Locked ones wait for their lock to end (retention never deletes before it either).
        for id in leftovers(&all).into_iter().filter(|id| unlocked(id)) {
            match super::retention::delete_backup(&self.cfg, &id).await {
                Ok(()) => {
                    tracing::info!(backup_id = %id, "deleted a continuous segment an earlier compaction holds")
                }
                Err(e) => {
                    tracing::warn!(backup_id = %id, error = %error_line(e.as_ref()), "could not delete a continuous segment an earlier compaction holds; trying again at the next compaction")
                }
            }
        }
        let mut done = Vec::new();
        for p in plan(&all, now, min_age) {
            let key = p.parent.watermark_key.clone().ok_or_else(|| {
                EngineError::Refused(format!(
                    "cannot compact the segments after {}: it has no watermark",
                    p.parent.id
                ))
            })?;
            let watermark = Watermark::load(dest, &self.cfg.keys, &key, &p.parent.id)
                .await
                .map_err(|e| {
                    EngineError::Unavailable(format!(
                        "cannot read the watermark of {}: {}",
                        p.parent.id,
                        error_line(e.as_ref())
                    ))
                })?;
            let records = super::read_chain::records(
                &self.cfg,
                &p.segments,
                (p.parent.clone(), watermark.clone()),
            );
            let what = What::Compaction {
                parent: Box::new(backup::Parent {
                    manifest: p.parent.clone(),
                    watermark: Arc::new(watermark),
                }),
                segments: p.compacted(),
                records,
            };
            let (_, rx) = self.start_backup_with(caller, what).await?;
            let r = final_value(rx).await.ok_or_else(|| {
                EngineError::Internal(anyhow::anyhow!("compaction ended without a result"))
            })?;
            if r.state == State::Succeeded {
                tracing::info!(backup_id = %r.id, segments = p.segments.len(), events = r.event_count, parent = %p.parent.id, "continuous segments compacted");
                for s in p.segments.iter().rev().filter(|s| !locked(s, now)) {
                    if let Err(e) = super::retention::delete_backup(&self.cfg, &s.id).await {
                        tracing::warn!(backup_id = %s.id, error = %error_line(e.as_ref()), "could not delete a compacted segment; the next compaction deletes it");
                        break;
                    }
                }
            } else {
                tracing::error!(backup_id = %r.id, error = ?r.error, "compaction failed; the segments stay as they are");
            }
            done.push(r);
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::manifest::SEGMENT;
    use std::time::Duration;

    fn id(n: u32) -> String {
        format!("20260101T00{n:02}00000Z-0000000{}", n % 10)
    }

    /// Backup `n`, started at minute `n`, of `kind` on `parent`.
    fn m(n: u32, kind: &str, parent: Option<u32>) -> Manifest {
        Manifest::for_test(
            &id(n),
            kind,
            parent.map(id).as_deref(),
            &format!("2026-01-01T00:{n:02}:00.000Z"),
        )
    }

    fn at(min: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-01-01T00:{min:02}:00Z"))
            .expect("time")
            .with_timezone(&Utc)
    }

    fn ids(p: &CompactPlan) -> Vec<String> {
        p.segments.iter().map(|m| m.id.clone()).collect()
    }

    #[test]
    fn the_segments_after_the_last_backup_that_is_not_one_old_enough() {
        // full 1 ← incremental 2 ← segments 3, 4, 5
        let all = vec![
            m(5, SEGMENT, Some(4)),
            m(4, SEGMENT, Some(3)),
            m(3, SEGMENT, Some(2)),
            m(2, "incremental", Some(1)),
            m(1, "full", None),
        ];
        let p = plan(&all, at(30), Duration::from_secs(600));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].parent.id, id(2));
        assert_eq!(ids(&p[0]), vec![id(3), id(4), id(5)]);
        assert_eq!(
            p[0].compacted(),
            Compacted {
                first: id(3),
                last: id(5),
                segments: 3
            }
        );
        // The oldest segment is 7 minutes old: not yet.
        assert!(plan(&all, at(10), Duration::from_secs(600)).is_empty());
        // One segment is not worth an archive of its own.
        assert!(plan(&all[2..], at(30), Duration::ZERO).is_empty());
    }

    #[test]
    fn every_chain_that_ends_in_segments_and_only_segments_move() {
        // An old chain (full 1 ← segments 2, 3) closed by a scheduled full 4 ← segments 5, 6;
        // an older compaction 7 on 4 is no segment and stays.
        let all = vec![
            m(9, SEGMENT, Some(8)),
            m(8, SEGMENT, Some(7)),
            m(7, "incremental", Some(4)),
            m(4, "full", None),
            m(3, SEGMENT, Some(2)),
            m(2, SEGMENT, Some(1)),
            m(1, "full", None),
        ];
        let p = plan(&all, at(59), Duration::ZERO);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].parent.id.clone(), ids(&p[0])),
            (id(1), vec![id(2), id(3)])
        );
        assert_eq!(
            (p[1].parent.id.clone(), ids(&p[1])),
            (id(7), vec![id(8), id(9)])
        );
        // Segments written before they had a kind (an incremental with the note) count too.
        let mut old = all.clone();
        for s in old.iter_mut().filter(|s| s.kind == SEGMENT) {
            s.kind = "incremental".into();
            s.note = Some(crate::destination::manifest::SEGMENT_NOTE.into());
        }
        assert_eq!(plan(&old, at(59), Duration::ZERO).len(), 2);
        // A chain whose base is gone is left alone (restore and verify report it).
        assert!(plan(&all[..2], at(59), Duration::ZERO).is_empty());
    }

    #[test]
    fn leftovers_are_the_segments_a_complete_compaction_holds() {
        let mut c = m(7, "incremental", Some(1));
        c.compacted = Some(Compacted {
            first: id(2),
            last: id(4),
            segments: 3,
        });
        let all = vec![
            m(8, SEGMENT, Some(7)),
            c,
            m(4, SEGMENT, Some(3)),
            m(3, SEGMENT, Some(2)),
            m(1, "full", None),
        ];
        assert_eq!(leftovers(&all), vec![id(4), id(3)]);
        // Never planned again: the segments are leftovers, and the chain after the compaction
        // has one segment.
        assert!(plan(&all, at(59), Duration::ZERO).is_empty());
    }
}
