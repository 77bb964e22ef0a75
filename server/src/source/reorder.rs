//! Store order from a read in the table's physical order.
//!
//! Monoskope's events table is append-only (the store inserts, never updates or deletes), so a
//! sequential scan returns events in the order they were stored — their timestamp order, up to
//! the clock skew between the CommandHandler replicas that set the timestamps. Reading that way
//! spares PostgreSQL a sort of the whole table (parallel workers and temporary files as large as
//! the table). [`Reorder`] holds the last [`WINDOW`] events back in store order — a batch that
//! follows them is appended, one that does not is merged into the events it precedes, so the
//! work grows with how far events are out of place, not with the window — and hands on only
//! events that no later one can precede: an event that arrives after a later one was handed on
//! ends the read with [`Unordered`] (the backup is then read again, sorted by PostgreSQL). What
//! it hands on is therefore exactly the sorted query's result, or nothing is claimed. Writers
//! interleaving their pages put events a few places out of order; a writer that inserts into an
//! old page with room left puts a newer event among older ones, which waits at the window's end
//! for its place.

use std::cmp::Ordering;
use std::collections::VecDeque;

use crate::archive::{Batch, EncodedRef};

/// Events held back to be put into order: ~3 MB of the generator's events (a backup's peak RSS
/// +3 MiB at 1M events; 8,192 cost 17 MiB), minutes of a control plane's events, far more than
/// clock skew between replicas and the time from setting a timestamp to inserting displace.
pub const WINDOW: usize = 2048;

/// At most this many bytes of events are held back, whatever their number (large events make
/// the window shorter, never the memory larger).
pub const WINDOW_BYTES: usize = 16 << 20;

/// The table's physical order is further from store order than [`WINDOW`] events (or a row has
/// no aggregate type, id or version, whose place PostgreSQL's sort decides): the read must be
/// sorted. The text says which event.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unordered(pub String);

/// A record's place in store order, as PostgreSQL sorts the backup's query: timestamp (NULL
/// last), aggregate type (bytewise: `COLLATE "C"`), aggregate id (lowercase text of the uuid,
/// which sorts as its bytes), version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a> {
    /// (NULL, seconds, nanos): NULL sorts after every time.
    ts: (bool, i64, i32),
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    version: i64,
}

fn key<'a>(r: &EncodedRef<'a>) -> Key<'a> {
    Key {
        ts: time(r),
        aggregate_type: r.aggregate_type(),
        aggregate_id: r.aggregate_id(),
        // The table's bigint, as the source stored it.
        version: r.aggregate_version() as i64,
    }
}

/// A record's time as it sorts: NULL after every time.
fn time(r: &EncodedRef<'_>) -> (bool, i64, i32) {
    r.timestamp()
        .map_or((true, 0, 0), |t| (false, t.seconds, t.nanos))
}

/// Compares two records in store order, reading their strings only when their times are equal.
fn order(a: &EncodedRef<'_>, b: &EncodedRef<'_>) -> Ordering {
    time(a).cmp(&time(b)).then_with(|| key(a).cmp(&key(b)))
}

/// A [`Key`] kept beyond its batch.
#[derive(Debug, Clone)]
struct OwnedKey {
    ts: (bool, i64, i32),
    aggregate_type: String,
    aggregate_id: String,
    version: i64,
}

impl OwnedKey {
    fn of(k: Key<'_>) -> Self {
        Self {
            ts: k.ts,
            aggregate_type: k.aggregate_type.into(),
            aggregate_id: k.aggregate_id.into(),
            version: k.version,
        }
    }

    fn key(&self) -> Key<'_> {
        Key {
            ts: self.ts,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            version: self.version,
        }
    }
}

/// See the module's documentation.
#[derive(Debug)]
pub struct Reorder {
    /// Records and bytes held back at most.
    window: usize,
    window_bytes: usize,
    /// The records held back, always in store order.
    held: VecDeque<Batch>,
    held_records: usize,
    held_bytes: usize,
    /// The key of the last record handed on: nothing may arrive below it.
    floor: Option<OwnedKey>,
    /// Records copied to put them into order (a table in order copies none).
    copied: usize,
}

impl Default for Reorder {
    fn default() -> Self {
        Self::with_window(WINDOW, WINDOW_BYTES)
    }
}

impl Reorder {
    /// Holding `window` records, at most `window_bytes` bytes, back.
    pub fn with_window(window: usize, window_bytes: usize) -> Self {
        Self {
            window,
            window_bytes,
            held: VecDeque::new(),
            held_records: 0,
            held_bytes: 0,
            floor: None,
            copied: 0,
        }
    }

    /// Takes the next batch as read and appends to `out` the batches now certainly in store
    /// order.
    pub fn push(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), Unordered> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(f) = &self.floor {
            let f = f.key();
            let below = |r: &EncodedRef<'_>| {
                time(r).cmp(&f.ts).then_with(|| key(r).cmp(&f)) == Ordering::Less
            };
            if let Some(r) = batch.iter().find(below) {
                let k = key(&r);
                return Err(Unordered(format!(
                    "event {} {} version {} of {} lies further from its place than the {} events (at most {} MiB) held back to sort them",
                    k.aggregate_type,
                    k.aggregate_id,
                    k.version,
                    crate::time::rfc3339(r.timestamp()).unwrap_or_else(|| "no time".into()),
                    self.window,
                    self.window_bytes >> 20
                )));
            }
        }
        let batch = self.sorted(batch);
        self.held_records += batch.len();
        self.held_bytes += batch.bytes().len();
        self.insert(batch);
        while let Some(front) = self.held.front() {
            if self.held_records - front.len() < self.window
                && self.held_bytes - front.bytes().len() < self.window_bytes
            {
                break;
            }
            let b = self.held.pop_front().expect("a front batch");
            self.held_records -= b.len();
            self.held_bytes -= b.bytes().len();
            self.floor = b.last().map(|r| OwnedKey::of(key(&r)));
            out.push(b);
        }
        Ok(())
    }

    /// The read ended: the rest, in store order.
    pub fn finish(self, out: &mut Vec<Batch>) {
        out.extend(self.held);
    }

    /// The batch in store order (itself when it is).
    fn sorted(&mut self, batch: Batch) -> Batch {
        let in_order = batch
            .iter()
            .zip(batch.iter().skip(1))
            .all(|(a, b)| order(&a, &b) != Ordering::Greater);
        if in_order {
            return batch;
        }
        let mut records: Vec<EncodedRef<'_>> = batch.iter().collect();
        records.sort_by(order);
        let mut out = Batch::with_capacity(records.len(), batch.bytes().len());
        for r in records {
            out.push_copy(r);
        }
        self.copied += out.len();
        out
    }

    /// Adds a batch in store order to the held records: appended when it follows them (a table
    /// in order), else merged with the held records it precedes — as many as it lies out of
    /// place, so the work is the disorder's, not the window's.
    fn insert(&mut self, batch: Batch) {
        let first = batch.iter().next().expect("not empty");
        let after_first = |r: &EncodedRef<'_>| order(r, &first) == Ordering::Greater;
        let follows = self
            .held
            .back()
            .and_then(Batch::last)
            .is_none_or(|last| !after_first(&last));
        if follows {
            self.held.push_back(batch);
            return;
        }
        // The first held batch with a record after `first`, and that record.
        let mut at = self.held.len() - 1;
        while at > 0 && self.held[at].iter().next().is_some_and(|r| after_first(&r)) {
            at -= 1;
        }
        let from = self.held[at].iter().take_while(|r| !after_first(r)).count();
        let size = super::RECORD_BATCH;
        let mut merged = Vec::new();
        {
            let mut tail = self
                .held
                .iter()
                .skip(at)
                .flat_map(Batch::iter)
                .skip(from)
                .peekable();
            let mut new = batch.iter().peekable();
            let mut out = Batch::new();
            for r in self.held[at].iter().take(from) {
                out.push_copy(r);
            }
            loop {
                let next = match (tail.peek(), new.peek()) {
                    (Some(t), Some(n)) if order(n, t) == Ordering::Less => new.next(),
                    (Some(_), _) => tail.next(),
                    (None, Some(_)) => new.next(),
                    (None, None) => break,
                };
                out.push_copy(next.expect("peeked"));
                self.copied += 1;
                if out.len() == size {
                    merged.push(std::mem::take(&mut out));
                }
            }
            self.copied += from;
            if !out.is_empty() {
                merged.push(out);
            }
        }
        self.held.truncate(at);
        self.held.extend(merged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Record;

    /// A record at `ts` microseconds (None: NULL), aggregate `id` (0..=255) at `version`.
    fn rec(ts: Option<i64>, ty: &str, id: u8, version: u64) -> Record {
        Record {
            aggregate_type: ty.into(),
            aggregate_id: format!("00000000-0000-4000-8000-0000000000{id:02x}"),
            aggregate_version: version,
            event_type: "Happened".into(),
            timestamp: ts.map(|us| prost_types::Timestamp {
                seconds: us.div_euclid(1_000_000),
                nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
            }),
            event_id: format!("{ts:?}-{ty}-{id}-{version}"),
            ..Default::default()
        }
    }

    fn batches(records: &[Record], size: usize) -> Vec<Batch> {
        records
            .chunks(size)
            .map(|c| {
                let mut b = Batch::new();
                for r in c {
                    b.push_record(r);
                }
                b
            })
            .collect()
    }

    /// Runs the records through a reorder of `window` records (and 1 GiB), in batches of `size`.
    fn reorder(records: &[Record], size: usize, window: usize) -> Result<Vec<Record>, Unordered> {
        reorder_bytes(records, size, window, 1 << 30)
    }

    fn reorder_bytes(
        records: &[Record],
        size: usize,
        window: usize,
        bytes: usize,
    ) -> Result<Vec<Record>, Unordered> {
        let mut r = Reorder::with_window(window, bytes);
        let mut out = Vec::new();
        for b in batches(records, size) {
            r.push(b, &mut out)?;
        }
        r.finish(&mut out);
        Ok(out
            .iter()
            .flat_map(|b| b.to_records().expect("records"))
            .collect())
    }

    fn sorted(records: &[Record]) -> Vec<Record> {
        let mut b = batches(records, records.len().max(1));
        let b = b.pop().unwrap_or_default();
        let mut refs: Vec<_> = b.iter().collect();
        refs.sort_by(order);
        refs.iter()
            .map(|r| {
                <Record as prost::Message>::decode_length_delimited(r.bytes()).expect("record")
            })
            .collect()
    }

    #[test]
    fn the_order_is_the_sorted_querys() {
        let mut records = vec![
            rec(None, "User", 1, 2),
            rec(Some(5), "User", 2, 1),
            rec(Some(5), "Tenant", 9, 1),
            rec(Some(5), "User", 1, 1),
            rec(Some(4), "User", 1, 3),
            rec(Some(-1), "Zeta", 3, 1),
            rec(Some(5), "User", 1, 0),
            rec(Some(5), "user", 1, 0),
        ];
        // A negative bigint version sorts first, as PostgreSQL compares it.
        let mut negative = rec(Some(5), "User", 1, (-1i64) as u64);
        negative.event_id = "Some(5)-User-1--1".into();
        records.push(negative);
        // Time first (NULL last), then the type bytewise (uppercase first), id, version.
        assert_eq!(
            ids(&sorted(&records)),
            [
                "Some(-1)-Zeta-3-1",
                "Some(4)-User-1-3",
                "Some(5)-Tenant-9-1",
                "Some(5)-User-1--1",
                "Some(5)-User-1-0",
                "Some(5)-User-1-1",
                "Some(5)-User-2-1",
                "Some(5)-user-1-0",
                "None-User-1-2",
            ]
        );
    }

    /// Events in store order, each aggregate's versions in turn, several to a microsecond.
    fn in_store_order(n: usize) -> Vec<Record> {
        let records: Vec<_> = (0..n)
            .map(|i| {
                rec(
                    Some(1_000 + (i / 3) as i64),
                    "User",
                    (i % 7) as u8,
                    i as u64,
                )
            })
            .collect();
        sorted(&records)
    }

    /// The records' event ids (what the assertions compare: short to print).
    fn ids(records: &[Record]) -> Vec<&str> {
        records.iter().map(|r| r.event_id.as_str()).collect()
    }

    #[test]
    fn records_in_order_pass_unchanged() {
        let records = in_store_order(1000);
        for (size, window) in [(1, 1), (7, 10), (256, 100), (256, 8192)] {
            assert_eq!(
                ids(&reorder(&records, size, window).expect("in order")),
                ids(&records)
            );
        }
        assert!(reorder(&[], 3, 10).expect("nothing").is_empty());
    }

    #[test]
    fn records_out_of_order_within_the_window_come_out_sorted() {
        let records = in_store_order(1000);
        // Each block of 40 reversed, and a record 90 places late: at most 90 apart.
        let mut shuffled: Vec<Record> = records
            .chunks(40)
            .flat_map(|c| c.iter().rev().cloned())
            .collect();
        let late = shuffled.remove(500);
        shuffled.insert(590, late);
        assert_ne!(shuffled, records);
        for (size, window) in [(1, 100), (16, 100), (256, 256), (1000, 100)] {
            assert_eq!(
                ids(&reorder(&shuffled, size, window).expect("within the window")),
                ids(&records),
                "batches of {size}, window {window}"
            );
        }
    }

    /// Runs the records through the default window in batches of 256; the records it handed
    /// on and how many it copied.
    fn reorder_counting(records: &[Record]) -> (Vec<Record>, usize) {
        let mut r = Reorder::default();
        let mut out = Vec::new();
        for b in batches(records, 256) {
            r.push(b, &mut out).expect("within the window");
        }
        let copied = r.copied;
        r.finish(&mut out);
        let records = out
            .iter()
            .flat_map(|b| b.to_records().expect("records"))
            .collect();
        (records, copied)
    }

    #[test]
    fn the_work_is_the_disorders_not_the_windows() {
        let records = in_store_order(20_000);
        // In order: nothing copied.
        let (out, copied) = reorder_counting(&records);
        assert_eq!(ids(&out), ids(&records));
        assert_eq!(copied, 0);
        // Writers interleaving their pages: every few records out of place by a few.
        let mut local = records.clone();
        for c in local.chunks_mut(7) {
            c.reverse();
        }
        let (out, copied) = reorder_counting(&local);
        assert_eq!(ids(&out), ids(&records));
        assert!(copied <= 3 * records.len(), "{copied} copies");
        // A newer event stored early (a writer's old page with room left): held to its place
        // at the end, each batch merged before it.
        let mut early = records.clone();
        let newest = early.pop().expect("one");
        early.insert(10, newest);
        let (out, copied) = reorder_counting(&early);
        assert_eq!(ids(&out), ids(&records));
        assert!(copied <= 3 * records.len(), "{copied} copies");
    }

    #[test]
    fn a_record_further_out_of_order_ends_the_read() {
        let records = in_store_order(1000);
        let mut late = records.clone();
        let r = late.remove(100);
        late.insert(400, r);
        let e = reorder(&late, 16, 200).expect_err("300 places late, window 200");
        assert!(
            e.0.starts_with("event User 00000000-0000-4000-8000-000000000002 version 100 of "),
            "{e}"
        );
        assert!(
            e.0.ends_with(
                "lies further from its place than the 200 events (at most 1024 MiB) held back to sort them"
            ),
            "{e}"
        );
        // Large events make the window shorter: 100 events of 40 KiB out of place fit the 200
        // events but not 2 MiB.
        let mut large = records.clone();
        for r in &mut large {
            r.data = vec![b'x'; 40 << 10];
        }
        let r = large.remove(100);
        large.insert(200, r);
        assert!(reorder_bytes(&large, 16, 200, 8 << 20).is_ok());
        let e = reorder_bytes(&large, 16, 200, 2 << 20).expect_err("2 MiB");
        assert!(
            e.0.ends_with("(at most 2 MiB) held back to sort them"),
            "{e}"
        );
        // With a wider window it comes out in order.
        assert_eq!(
            ids(&reorder(&late, 16, 400).expect("window 400")),
            ids(&records)
        );
        // A table in another order altogether (reversed) fails at once.
        let reversed: Vec<_> = records.iter().rev().cloned().collect();
        assert!(reorder(&reversed, 16, 200).is_err());
    }
}
