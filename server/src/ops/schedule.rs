//! Schedule expressions (`backup.schedule`, `backup.drill.schedule`): what the configuration
//! checks and the in-process loops (`cli::schedule`) follow.
//!
//! Expressions are standard five-field cron (`minute hour day-of-month month day-of-week`, in
//! UTC, day-of-week 0-7 with 0 and 7 Sunday, names allowed), or six fields with a leading
//! seconds field. A tick that comes while any operation runs is skipped (and logged): runs never
//! overlap. Each run has the backup timeout and applies retention like any other backup.

use std::str::FromStr;

use anyhow::{bail, Context};
use chrono::Utc;

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
