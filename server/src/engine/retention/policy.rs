//! Which complete backups a retention policy keeps, and why: keep-last (the seed's
//! `retentionCount`) and grandfather-father-son buckets with restic's semantics — for the last N
//! days (weeks, months, years) that have backups, the newest backup of each. Times are UTC; a week
//! is an ISO week. A pure function of the backups' ids and creation times.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc};

/// The bucket (day, week, month, year) a backup's time falls in.
type BucketOf = fn(&DateTime<Utc>) -> String;

/// How many restore points of each kind retention keeps; all zero keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    /// The newest N backups (`retentionCount`).
    pub keep_last: usize,
    /// The newest backup of each of the last N days that have backups.
    pub keep_daily: usize,
    /// … of each of the last N ISO weeks.
    pub keep_weekly: usize,
    /// … of each of the last N months.
    pub keep_monthly: usize,
    /// … of each of the last N years.
    pub keep_yearly: usize,
}

impl Policy {
    /// Only keep-last N (`retention_count < 1`: keep everything).
    pub fn last(retention_count: i64) -> Self {
        Self {
            keep_last: retention_count.max(0) as usize,
            ..Self::default()
        }
    }

    /// Whether the policy keeps every backup (nothing asked for).
    pub fn keeps_all(&self) -> bool {
        *self == Self::default()
    }

    /// The backups of `backups` (id and creation time, any order) the policy keeps, each with
    /// why; the newest is always kept.
    pub fn select(&self, backups: &[(String, DateTime<Utc>)]) -> BTreeMap<String, Vec<String>> {
        let mut sorted: Vec<&(String, DateTime<Utc>)> = backups.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let mut keep: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if self.keeps_all() {
            for (id, _) in &sorted {
                keep.entry(id.clone())
                    .or_default()
                    .push("no retention policy: keep all".into());
            }
            return keep;
        }
        for (i, (id, _)) in sorted.iter().enumerate().take(self.keep_last) {
            keep.entry(id.clone()).or_default().push(format!(
                "last {} (#{})",
                self.keep_last,
                i + 1
            ));
        }
        let buckets: [(&str, usize, BucketOf); 4] = [
            ("daily", self.keep_daily, |t| {
                t.format("%Y-%m-%d").to_string()
            }),
            ("weekly", self.keep_weekly, |t| {
                let w = t.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }),
            ("monthly", self.keep_monthly, |t| {
                t.format("%Y-%m").to_string()
            }),
            ("yearly", self.keep_yearly, |t| t.format("%Y").to_string()),
        ];
        for (name, n, bucket_of) in buckets {
            let mut last: Option<String> = None;
            let mut taken = 0;
            for (id, t) in &sorted {
                if taken == n {
                    break;
                }
                let b = bucket_of(t);
                if last.as_ref() != Some(&b) {
                    keep.entry(id.clone())
                        .or_default()
                        .push(format!("{name} {b}"));
                    last = Some(b);
                    taken += 1;
                }
            }
        }
        if let Some((newest, _)) = sorted.first() {
            keep.entry(newest.clone())
                .or_default()
                .push("the newest backup".into());
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
            .single()
            .expect("time")
    }

    fn ids(times: &[DateTime<Utc>]) -> Vec<(String, DateTime<Utc>)> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("{}-{i:08x}", t.format("%Y%m%dT%H%M%S000Z")), *t))
            .collect()
    }

    #[test]
    fn daily_weekly_monthly_yearly_as_restic_counts_them() {
        // Two backups a day (02:00 and 22:00) for 70 days from 2026-01-01.
        let mut times = Vec::new();
        for day in 0..70 {
            let d = at(2026, 1, 1, 0) + chrono::Duration::days(day);
            times.push(d + chrono::Duration::hours(2));
            times.push(d + chrono::Duration::hours(22));
        }
        let all = ids(&times);
        let p = Policy {
            keep_last: 3,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 3,
            keep_yearly: 1,
        };
        let keep = p.select(&all);
        let newest_first: Vec<&(String, DateTime<Utc>)> = all.iter().rev().collect();
        // The last three, whatever their day.
        for b in &newest_first[..3] {
            assert!(
                keep[&b.0].iter().any(|r| r.starts_with("last 3")),
                "{keep:?}"
            );
        }
        // Daily: the 22:00 backup of each of the last seven days, never the 02:00 one.
        let daily: Vec<&String> = keep
            .iter()
            .filter(|(_, r)| r.iter().any(|r| r.starts_with("daily")))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(daily.len(), 7);
        assert!(daily.iter().all(|id| id.contains("T220000")), "{daily:?}");
        // Weekly 4, monthly 3 (March, February, January: the newest of each), yearly 1.
        let count = |prefix: &str| {
            keep.values()
                .flatten()
                .filter(|r| r.starts_with(prefix))
                .count()
        };
        assert_eq!(count("weekly"), 4);
        assert_eq!(count("monthly"), 3);
        assert_eq!(count("yearly"), 1);
        assert!(keep.values().flatten().any(|r| r == "monthly 2026-01"));
        let jan = keep
            .iter()
            .find(|(_, r)| r.iter().any(|r| r == "monthly 2026-01"))
            .map(|(id, _)| id.clone())
            .expect("january");
        assert!(
            jan.starts_with("20260131T22"),
            "the newest of January: {jan}"
        );
        // Everything else goes.
        assert!(keep.len() < all.len());
    }

    #[test]
    fn buckets_count_only_periods_that_have_backups() {
        // Backups on 1, 2 and 10 January, and 5 June: keep-daily 3 keeps 10 Jan, 5 Jun and 2 Jan.
        let all = ids(&[
            at(2026, 1, 1, 1),
            at(2026, 1, 2, 1),
            at(2026, 1, 10, 1),
            at(2026, 6, 5, 1),
        ]);
        let keep = Policy {
            keep_daily: 3,
            ..Policy::default()
        }
        .select(&all);
        let kept: Vec<&str> = keep.keys().map(|k| &k[..8]).collect();
        assert_eq!(kept, vec!["20260102", "20260110", "20260605"]);
    }

    #[test]
    fn the_newest_is_always_kept_and_no_policy_keeps_all() {
        let all = ids(&[at(2026, 1, 1, 1), at(2026, 1, 2, 1)]);
        let keep = Policy {
            keep_yearly: 0,
            keep_monthly: 0,
            keep_last: 0,
            keep_weekly: 0,
            keep_daily: 0,
        }
        .select(&all);
        assert_eq!(keep.len(), 2, "all zero keeps all");
        let keep = Policy::last(1).select(&all);
        assert_eq!(keep.len(), 1);
        assert!(keep.keys().next().expect("one").starts_with("20260102"));
        assert!(Policy::last(0).keeps_all() && Policy::last(-3).keeps_all());
    }
}
