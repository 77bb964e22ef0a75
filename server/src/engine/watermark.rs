//! Watermarks: for every aggregate, the highest version a backup chain holds.
//!
//! Versions are gapless per aggregate, so the map says exactly which events a chain holds: an
//! incremental backup stores the events above it, and finds a gap or a store that went
//! backwards (after a restore) by comparing. Each backup writes its chain's watermark beside
//! its archive (`backups/<id>.watermark`) as an archive of the same format — encrypted and
//! authenticated with the same keys — whose records carry only aggregate type, id and version.

use std::collections::HashMap;
use std::io::Cursor;

use anyhow::Context;

use crate::archive::{ArchiveReader, ArchiveWriter, Keys, Protection, Record, WriterOptions};
use crate::destination::{layout, Destination};

/// `kind` in a watermark archive's header.
pub const WATERMARK_KIND: &str = "watermark";
/// `event_type` of a watermark record.
const WATERMARK_RECORD: &str = "Watermark";

/// An aggregate: type and lowercase id.
pub type Aggregate = (String, String);

/// The aggregate of a record.
pub fn aggregate_of(r: &Record) -> Aggregate {
    aggregate(&r.aggregate_type, &r.aggregate_id)
}

/// The aggregate of a type and an id (as any source spells it).
pub fn aggregate(aggregate_type: &str, aggregate_id: &str) -> Aggregate {
    (aggregate_type.to_owned(), aggregate_id.to_ascii_lowercase())
}

/// Aggregate → highest version held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermark {
    /// The map.
    pub map: HashMap<Aggregate, u64>,
}

impl Watermark {
    /// Raises the aggregate's version to `r`'s.
    pub fn observe(&mut self, r: &Record) {
        self.observe_into(
            &r.aggregate_type,
            &r.aggregate_id,
            r.aggregate_version,
            &mut Aggregate::default(),
        );
    }

    /// Raises an aggregate's version, building the key in `scratch`: no allocation for an
    /// aggregate the watermark already holds (the backup calls this once per event).
    pub fn observe_into(
        &mut self,
        aggregate_type: &str,
        aggregate_id: &str,
        version: u64,
        scratch: &mut Aggregate,
    ) {
        scratch.0.clear();
        scratch.0.push_str(aggregate_type);
        scratch.1.clear();
        scratch.1.push_str(aggregate_id);
        scratch.1.make_ascii_lowercase();
        match self.map.get_mut(scratch) {
            Some(v) => *v = (*v).max(version),
            None => {
                self.map.insert(scratch.clone(), version);
            }
        }
    }

    /// The version held for `a` (0: none).
    pub fn get(&self, a: &Aggregate) -> u64 {
        self.map.get(a).copied().unwrap_or(0)
    }

    /// Encodes the watermark as an archive (records sorted, so equal maps give equal bytes
    /// apart from the random key material).
    pub fn to_archive(
        &self,
        backup_id: &str,
        protection: Protection,
        compression_level: i32,
    ) -> anyhow::Result<Vec<u8>> {
        let mut entries: Vec<(&Aggregate, &u64)> = self.map.iter().collect();
        entries.sort();
        let mut opts = WriterOptions::new(backup_id, protection);
        opts.kind = WATERMARK_KIND.into();
        opts.compression_level = compression_level;
        let mut w = ArchiveWriter::new(Vec::new(), opts)?;
        for ((t, id), v) in entries {
            w.append(&Record {
                aggregate_type: t.clone(),
                aggregate_id: id.clone(),
                aggregate_version: *v,
                event_type: WATERMARK_RECORD.into(),
                ..Default::default()
            })?;
        }
        Ok(w.finish()?.0)
    }

    /// Decodes a watermark archive of `backup_id`.
    pub fn from_archive(bytes: &[u8], keys: &Keys, backup_id: &str) -> anyhow::Result<Self> {
        let mut r = ArchiveReader::open(Cursor::new(bytes), keys)?;
        anyhow::ensure!(
            r.header().kind == WATERMARK_KIND && r.header().backup_id == backup_id,
            "not the watermark of backup {backup_id}"
        );
        let mut w = Watermark::default();
        while let Some(rec) = r.next_record()? {
            w.map.insert(aggregate_of(&rec), rec.aggregate_version);
        }
        Ok(w)
    }

    /// Writes the watermark of `backup_id` to the destination; returns its key. Takes the
    /// watermark: one entry per aggregate, not copied once more for the encoding thread.
    pub async fn store(
        self,
        dest: &dyn Destination,
        backup_id: &str,
        protection: Protection,
        compression_level: i32,
    ) -> anyhow::Result<String> {
        let id = backup_id.to_string();
        let bytes = tokio::task::spawn_blocking(move || {
            self.to_archive(&id, protection, compression_level)
        })
        .await??;
        let key = layout::watermark_key(backup_id);
        dest.put(&key, bytes)
            .await
            .with_context(|| format!("writing {key}"))?;
        Ok(key)
    }

    /// Reads the watermark stored at `key` for `backup_id`.
    pub async fn load(
        dest: &dyn Destination,
        keys: &Keys,
        key: &str,
        backup_id: &str,
    ) -> anyhow::Result<Self> {
        let bytes = dest
            .get_bytes(key)
            .await
            .with_context(|| format!("reading {key}"))?;
        let keys = keys.clone();
        let id = backup_id.to_string();
        tokio::task::spawn_blocking(move || Watermark::from_archive(&bytes, &keys, &id))
            .await?
            .with_context(|| format!("watermark {key}"))
    }
}

/// Per-aggregate span of the new events of an incremental backup (or of one chain link).
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// Lowest version seen.
    pub min: u64,
    /// Highest version seen.
    pub max: u64,
    /// Events seen.
    pub count: u64,
}

/// Checks that the events of one link, summarised by `spans`, continue `before` exactly: each
/// aggregate's versions are `before + 1 ..= max` with none missing or repeated. Returns the first
/// problem in words.
pub fn check_continuity(
    before: &Watermark,
    spans: &HashMap<Aggregate, Span>,
) -> Result<(), String> {
    let mut problems: Vec<String> = spans
        .iter()
        .filter_map(|(a, s)| {
            let held = before.get(a);
            if s.min <= held {
                Some(format!(
                    "aggregate {} {} has version {} again (the chain before holds up to {held})",
                    a.0, a.1, s.min
                ))
            } else if s.min != held + 1 || s.max - s.min + 1 != s.count {
                Some(format!(
                    "aggregate {} {} has a version gap: the chain before holds up to {held}, this link has {} events with versions {}..={}",
                    a.0, a.1, s.count, s.min, s.max
                ))
            } else {
                None
            }
        })
        .collect();
    problems.sort();
    match problems.into_iter().next() {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

/// Adds version `v` of the aggregate of type `t` and id `id` to `spans`, with `scratch` as the
/// key (allocating only for an aggregate not yet in `spans`).
pub fn span_add_parts(
    spans: &mut HashMap<Aggregate, Span>,
    t: &str,
    id: &str,
    v: u64,
    scratch: &mut Aggregate,
) {
    scratch.0.clear();
    scratch.0.push_str(t);
    scratch.1.clear();
    scratch.1.push_str(id);
    scratch.1.make_ascii_lowercase();
    match spans.get_mut(scratch) {
        Some(s) => {
            s.min = s.min.min(v);
            s.max = s.max.max(v);
            s.count += 1;
        }
        None => span_add_version(spans, scratch.clone(), v),
    }
}

/// Adds version `v` of aggregate `a` to `spans`.
pub fn span_add_version(spans: &mut HashMap<Aggregate, Span>, a: Aggregate, v: u64) {
    spans
        .entry(a)
        .and_modify(|s| {
            s.min = s.min.min(v);
            s.max = s.max.max(v);
            s.count += 1;
        })
        .or_insert(Span {
            min: v,
            max: v,
            count: 1,
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::MasterKey;

    fn rec(t: &str, id: &str, v: u64) -> Record {
        Record {
            aggregate_type: t.into(),
            aggregate_id: id.into(),
            aggregate_version: v,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_through_an_encrypted_archive() {
        let key = MasterKey::generate();
        let mut w = Watermark::default();
        for v in 1..=3 {
            w.observe(&rec("User", "AB", v));
        }
        w.observe(&rec("Tenant", "cd", 7));
        let bytes = w
            .to_archive(
                "20261124T000000000Z-00000001",
                Protection::Key(key.clone()),
                3,
            )
            .expect("write");
        let keys = Keys::keyring(crate::archive::Keyring::new(vec![key]).expect("ring"));
        let back =
            Watermark::from_archive(&bytes, &keys, "20261124T000000000Z-00000001").expect("read");
        assert_eq!(back, w);
        assert_eq!(back.get(&("User".into(), "ab".into())), 3);
        assert!(Watermark::from_archive(&bytes, &keys, "20261124T000000000Z-00000002").is_err());
    }

    #[test]
    fn continuity_finds_gaps_and_overlaps() {
        let mut before = Watermark::default();
        before.observe(&rec("User", "a", 2));
        let spans_of = |recs: &[Record]| {
            let (mut s, mut key) = (HashMap::new(), Aggregate::default());
            for r in recs {
                span_add_parts(
                    &mut s,
                    &r.aggregate_type,
                    &r.aggregate_id,
                    r.aggregate_version,
                    &mut key,
                );
            }
            s
        };
        assert!(check_continuity(
            &before,
            &spans_of(&[rec("User", "a", 3), rec("User", "b", 1)])
        )
        .is_ok());
        let e = check_continuity(&before, &spans_of(&[rec("User", "a", 4)])).expect_err("gap");
        assert!(e.contains("gap"), "{e}");
        let e = check_continuity(
            &before,
            &spans_of(&[rec("User", "a", 2), rec("User", "a", 3)]),
        )
        .expect_err("overlap");
        assert!(e.contains("again"), "{e}");
        let e = check_continuity(&before, &spans_of(&[rec("User", "b", 2)]))
            .expect_err("new aggregate not from 1");
        assert!(e.contains("gap"), "{e}");
    }
}
