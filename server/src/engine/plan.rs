//! Which backups a restore reads: a pure choice over what the destination holds (its
//! [`Scan`]), made before anything is opened or written, with its own table of unit tests.
//! `restore::resolve_chain` scans and then asks this; `backup-server restore --dry-run` prints
//! the result.

use super::EngineError;
use crate::destination::manifest::{Manifest, Scan};

/// The chain to restore for `backup_id` (an id or `latest`), full backup first, each link
/// present and naming the one before:
/// - an id: that backup's chain; a backup whose manifest cannot be trusted is refused
///   (`DATA_LOSS`), an unknown one is `NOT_FOUND` (at `place`);
/// - `latest`: refused, naming it, when the newest backup's manifest cannot be read; with
///   `until`, the shortest chain among those that cover `until` — started at or after it and
///   holding an event at or after it, so every event up to `until` had been stored when it ran —
///   (among equals the oldest backup), or the newest backup's chain when none does.
pub fn choose_chain(
    scan: &Scan,
    backup_id: &str,
    until: Option<chrono::DateTime<chrono::Utc>>,
    place: &str,
) -> Result<Vec<Manifest>, EngineError> {
    let all = &scan.complete;
    let target = if backup_id == "latest" {
        if let Some(b) = scan.broken.first() {
            if all.first().is_none_or(|m| b.id > m.id) {
                return Err(super::verify::refuse_newer_broken(b));
            }
        }
        let newest = all
            .first()
            .ok_or_else(|| EngineError::NotFound(format!("no complete backup at {place}")))?;
        match until {
            Some(u) => covering(all, u).unwrap_or(newest),
            None => newest,
        }
    } else {
        if let Some(b) = scan.broken.iter().find(|b| b.id == backup_id) {
            return Err(EngineError::Corrupt(format!(
                "backup {} cannot be trusted: {}",
                b.id, b.problem
            )));
        }
        all.iter().find(|m| m.id == backup_id).ok_or_else(|| {
            EngineError::NotFound(format!(
                "backup {backup_id} not found (no manifest at {place})"
            ))
        })?
    };
    super::chain_of(all, target).map_err(|e| {
        EngineError::Corrupt(format!(
            "backup {} cannot be restored, nothing was written: its chain is broken: {e}",
            target.id
        ))
    })
}

fn time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The backup whose whole chain covers `u` with the fewest links (the oldest among equals).
fn covering(all: &[Manifest], u: chrono::DateTime<chrono::Utc>) -> Option<&Manifest> {
    let mut best: Option<(usize, &Manifest)> = None;
    for m in all
        .iter()
        .filter(|m| time(&m.created_at).is_some_and(|c| c >= u))
    {
        let Ok(chain) = super::chain_of(all, m) else {
            continue;
        };
        let newest_event = chain
            .iter()
            .filter_map(|l| l.last_event_time.as_deref().and_then(time))
            .max();
        if newest_event.is_none_or(|t| t < u) {
            continue;
        }
        if best.is_none_or(|(n, b)| chain.len() < n || (chain.len() == n && m.id < b.id)) {
            best = Some((chain.len(), m));
        }
    }
    best.map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::manifest::Broken;

    /// A manifest of backup `n` (ids sort by n), created at minute `n`, holding events up to
    /// minute `n`, incremental on `parent` when given.
    fn m(n: u32, parent: Option<u32>) -> Manifest {
        let id = |n: u32| format!("20260101T00{n:02}00000Z-0000000{}", n % 10);
        let kind = if parent.is_some() {
            "incremental"
        } else {
            "full"
        };
        Manifest {
            completed_at: format!("2026-01-01T00:{n:02}:30.000Z"),
            first_event_time: Some("2026-01-01T00:00:00Z".into()),
            last_event_time: Some(format!("2026-01-01T00:{n:02}:00Z")),
            ..Manifest::for_test(
                &id(n),
                kind,
                parent.map(id).as_deref(),
                &format!("2026-01-01T00:{n:02}:00.000Z"),
            )
        }
    }

    fn scan(mut complete: Vec<Manifest>, broken: &[u32]) -> Scan {
        complete.sort_by(|a, b| b.id.cmp(&a.id));
        Scan {
            complete,
            broken: broken
                .iter()
                .map(|n| Broken {
                    id: m(*n, None).id,
                    problem: "its manifest cannot be trusted: truncated".into(),
                })
                .collect(),
        }
    }

    fn at(minute: u32) -> Option<chrono::DateTime<chrono::Utc>> {
        time(&format!("2026-01-01T00:{minute:02}:00Z"))
    }

    /// The ids of a chosen chain, as minute numbers; or the error's first words.
    fn pick(
        s: &Scan,
        id: &str,
        until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<u32>, String> {
        choose_chain(s, id, until, "file:///b")
            .map(|c| {
                c.iter()
                    .map(|m| m.id[11..13].parse().expect("minute"))
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_chain_chosen_for_each_request() {
        // 10 full ← 20 ← 30 (incrementals); 40 full ← 50.
        let s = scan(
            vec![
                m(10, None),
                m(20, Some(10)),
                m(30, Some(20)),
                m(40, None),
                m(50, Some(40)),
            ],
            &[],
        );
        let id = |n| m(n, None).id;
        /// What, the request's id, `until` (a minute), and the chain or error wanted.
        type Row<'a> = (&'a str, String, Option<u32>, Result<Vec<u32>, &'a str>);
        let rows: Vec<Row> = vec![
            (
                "latest is the newest chain",
                "latest".into(),
                None,
                Ok(vec![40, 50]),
            ),
            ("an id is its own chain", id(30), None, Ok(vec![10, 20, 30])),
            ("a full backup alone", id(40), None, Ok(vec![40])),
            (
                "until: the shortest chain covering it (a later full backup)",
                "latest".into(),
                Some(15),
                Ok(vec![40]),
            ),
            (
                "until on a full backup's time",
                "latest".into(),
                Some(40),
                Ok(vec![40]),
            ),
            (
                "until after every backup: the newest",
                "latest".into(),
                Some(59),
                Ok(vec![40, 50]),
            ),
            (
                "until between chains: the first covering",
                "latest".into(),
                Some(35),
                Ok(vec![40]),
            ),
            (
                "unknown id",
                "20990101T000000000Z-00000000".into(),
                None,
                Err("backup 20990101T000000000Z-00000000 not found (no manifest at file:///b)"),
            ),
        ];
        for (what, req, until, want) in rows {
            let got = pick(&s, &req, until.and_then(at));
            match want {
                Ok(w) => assert_eq!(got, Ok(w), "{what}"),
                Err(w) => assert_eq!(got, Err(w.to_string()), "{what}"),
            }
        }
    }

    #[test]
    fn until_within_one_chain_takes_the_fewest_links() {
        let s = scan(vec![m(10, None), m(20, Some(10)), m(30, Some(20))], &[]);
        assert_eq!(pick(&s, "latest", at(15)), Ok(vec![10, 20]));
        assert_eq!(pick(&s, "latest", at(20)), Ok(vec![10, 20]));
        assert_eq!(pick(&s, "latest", at(21)), Ok(vec![10, 20, 30]));
        assert_eq!(pick(&s, "latest", at(5)), Ok(vec![10]));
    }

    #[test]
    fn broken_and_missing_links_are_refused_never_skipped() {
        // The newest backup's manifest is broken: latest refuses, an older id still restores.
        let s = scan(vec![m(10, None), m(20, None)], &[30]);
        let e = pick(&s, "latest", None).expect_err("refused");
        assert!(
            e.starts_with(&format!(
                "the newest backup {} cannot be read",
                m(30, None).id
            )),
            "{e}"
        );
        assert!(
            pick(&s, "latest", at(15)).is_err(),
            "until does not step around it"
        );
        assert_eq!(pick(&s, &m(20, None).id, None), Ok(vec![20]));
        let e = pick(&s, &m(30, None).id, None).expect_err("broken id");
        assert!(e.contains("cannot be trusted"), "{e}");
        // An older broken one does not stop latest.
        let s = scan(vec![m(20, None)], &[10]);
        assert_eq!(pick(&s, "latest", None), Ok(vec![20]));
        // A chain whose link is missing.
        let s = scan(vec![m(20, Some(10)), m(30, Some(20))], &[]);
        let e = pick(&s, "latest", None).expect_err("broken chain");
        assert!(e.contains("its chain is broken"), "{e}");
        // Nothing there.
        assert_eq!(
            pick(&scan(vec![], &[]), "latest", None),
            Err("no complete backup at file:///b".into())
        );
    }
}
