//! In-process schedules (`backup.schedule`) for deployments without a Kubernetes CronJob.
//!
//! Expressions are standard five-field cron (`minute hour day-of-month month day-of-week`, in
//! UTC, day-of-week 0-7 with 0 and 7 Sunday, names allowed), or six fields with a leading
//! seconds field. A tick that comes while any operation runs is skipped (and logged): runs never
//! overlap. Each run has the backup timeout and applies retention like any other backup.

use std::str::FromStr;

use anyhow::{bail, Context};
use chrono::Utc;

use crate::auth::Identity;
use crate::engine::{Engine, EngineError};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As written.
    pub expr: String,
    inner: cron::Schedule,
}

const DAYS: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

/// Standard cron numbers days of the week 0-7 from Sunday; the `cron` crate 1-7. Names mean the
/// same to both, so numbers become names.
fn day_names(field: &str) -> anyhow::Result<String> {
    let mut items = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let mapped: Vec<String> = range
            .split('-')
            .map(|p| match p.parse::<usize>() {
                Ok(n) if n <= 7 => Ok(DAYS[n].to_string()),
                Ok(n) => bail!("day of week {n} is out of range 0-7"),
                Err(_) => Ok(p.to_string()),
            })
            .collect::<anyhow::Result<_>>()?;
        let mut s = mapped.join("-");
        if let Some(st) = step {
            s = format!("{s}/{st}");
        }
        items.push(s);
    }
    Ok(items.join(","))
}

/// Parses a five- or six-field cron expression.
pub fn parse(expr: &str) -> anyhow::Result<Schedule> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let six = match fields.len() {
        5 => {
            let mut f = vec!["0"];
            f.extend(&fields);
            f
        }
        6 => fields.clone(),
        n => bail!(
            "{expr:?} has {n} fields; use five (minute hour day-of-month month day-of-week) or six (seconds first)"
        ),
    };
    let dow = day_names(six[5]).with_context(|| format!("{expr:?}"))?;
    let normalised = format!(
        "{} {} {} {} {} {}",
        six[0], six[1], six[2], six[3], six[4], dow
    );
    let inner = cron::Schedule::from_str(&normalised)
        .map_err(|e| anyhow::anyhow!("{expr:?} is not a cron expression: {e}"))?;
    if inner.upcoming(Utc).next().is_none() {
        bail!("{expr:?} never fires");
    }
    Ok(Schedule {
        expr: expr.to_string(),
        inner,
    })
}

impl Schedule {
    /// The first tick after `t`.
    pub fn after(&self, t: chrono::DateTime<Utc>) -> Option<chrono::DateTime<Utc>> {
        self.inner.after(&t).next()
    }
}

/// Runs scheduled backups until the task is dropped; `incremental` runs are full once the
/// newest chain holds `fullEvery` incrementals (the engine decides).
pub async fn run(engine: Engine, schedule: Schedule, incremental: bool) {
    let who = Identity {
        id: "scheduler".into(),
        name: "in-process schedule".into(),
        machine: true,
        ..Default::default()
    };
    tracing::info!(schedule = %schedule.expr, "in-process backup schedule active (UTC)");
    let mut last = Utc::now();
    loop {
        let Some(next) = schedule.after(last) else {
            tracing::warn!(schedule = %schedule.expr, "the schedule has no further ticks");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        last = next;
        match engine.start_backup(&who, incremental).await {
            Err(e @ (EngineError::Busy { .. } | EngineError::BusyElsewhere { .. })) => {
                tracing::warn!(tick = %next, "scheduled backup skipped: {e}");
                continue;
            }
            Err(e) => {
                tracing::error!(tick = %next, error = %e, "scheduled backup could not start");
                continue;
            }
            Ok((rec, _)) => {
                tracing::info!(tick = %next, backup_id = %rec.id, "scheduled backup started");
                let done = engine.wait_backup(&rec.id).await;
                let now = Utc::now();
                let mut skipped = 0u32;
                while let Some(t) = schedule.after(last).filter(|t| *t <= now) {
                    skipped += 1;
                    last = t;
                }
                if skipped > 0 {
                    tracing::warn!(skipped, backup_id = %rec.id, "scheduled ticks skipped while the backup ran; runs never overlap");
                }
                if let Some(r) = done.filter(|r| r.error.is_some()) {
                    tracing::error!(backup_id = %r.id, error = ?r.error, "scheduled backup failed");
                }
            }
        }
    }
}

/// Runs restore drills of the latest backup on `schedule` until the task is dropped. A tick
/// that comes while another operation runs is skipped.
pub async fn run_drills(engine: Engine, schedule: Schedule) {
    let who = Identity {
        id: "scheduler".into(),
        name: "in-process drill schedule".into(),
        machine: true,
        ..Default::default()
    };
    tracing::info!(schedule = %schedule.expr, "in-process restore drill schedule active (UTC)");
    let mut last = Utc::now();
    loop {
        let Some(next) = schedule.after(last) else {
            return;
        };
        tokio::time::sleep((next - Utc::now()).to_std().unwrap_or_default()).await;
        match engine.drill("latest", &who).await {
            Err(e @ (EngineError::Busy { .. } | EngineError::BusyElsewhere { .. })) => {
                tracing::warn!(tick = %next, "scheduled drill skipped: {e}")
            }
            Err(EngineError::NotFound(m)) => {
                tracing::warn!(tick = %next, "scheduled drill skipped: {m}")
            }
            // The engine logged the outcome.
            Err(_) | Ok(_) => {}
        }
        // Ticks that passed while the drill ran are skipped: drills never overlap.
        last = next.max(Utc::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_day_numbers() {
        let s = parse("0 22 * * 1-5").expect("weekdays");
        // 2026-11-28 is a Saturday: the next tick is Monday 2026-11-30 22:00.
        let sat = chrono::DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(
            s.after(sat).map(|t| t.to_rfc3339()),
            Some("2026-11-30T22:00:00+00:00".to_string())
        );
        let sun = parse("0 3 * * 0").expect("sunday");
        assert_eq!(
            sun.after(sat).map(|t| t.to_rfc3339()),
            Some("2026-11-29T03:00:00+00:00".to_string())
        );
        assert!(parse("*/2 * * * * *").is_ok());
    }

    #[test]
    fn bad_expressions() {
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "0 22 * * 9",
            "0 0 31 2 *",
            "nonsense x y z w",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
