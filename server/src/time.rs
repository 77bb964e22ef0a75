//! Times and durations as they cross an interface (a gRPC field, a flag, an environment
//! variable, a config key). Each is range-checked where it enters, and a value out of range is
//! refused with the field's name: it never turns into "unset", a default or a clamp. (A
//! `Restore` whose `until` could not be converted once became "no until" and emptied a store.)

use std::time::Duration;

/// The earliest time accepted anywhere: 0001-01-01T00:00:00Z.
pub const MIN_SECONDS: i64 = -62_135_596_800;
/// The latest time accepted anywhere: 9999-12-31T23:59:59.999999999Z (RFC 3339's four-digit
/// year; protobuf's `Timestamp` has the same range).
pub const MAX_SECONDS: i64 = 253_402_300_799;
/// The longest timeout accepted (a backup or restore that may run longer than this is a typo).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Checks a protobuf timestamp from `field`: seconds within years 1–9999, nanos within
/// 0..=999,999,999. Returns the time, or the reason naming the field.
pub fn check_timestamp(
    field: &str,
    ts: &prost_types::Timestamp,
) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(format!(
            "{field}: nanos {} is outside 0..999999999",
            ts.nanos
        ));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(format!(
            "{field}: seconds {} is outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z ({MIN_SECONDS}..{MAX_SECONDS})",
            ts.seconds
        ));
    }
    chrono::DateTime::from_timestamp(ts.seconds, ts.nanos as u32)
        .ok_or_else(|| format!("{field}: {}s {}ns is not a time", ts.seconds, ts.nanos))
}

/// Parses an RFC 3339 time (e.g. `2026-11-24T10:15:00Z`) into a checked protobuf timestamp.
pub fn parse_time(s: &str) -> Result<prost_types::Timestamp, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s.trim())
        .map_err(|_| format!("{s:?} is not an RFC 3339 time (e.g. 2026-11-24T10:15:00Z)"))?;
    let ts = prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    };
    check_timestamp("time", &ts).map_err(|_| format!("{s:?} is before year 1"))?;
    Ok(ts)
}

/// RFC 3339, UTC, nine fractional digits; `None` for no timestamp or one out of range.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = check_timestamp("", ts?).ok()?;
    Some(t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
}

/// Parses a timeout such as `90s`, `15m` or `1h`: longer than zero and at most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| anyhow::anyhow!("{s:?} is not a duration ({e}); use e.g. 90s, 15m, 1h"))?;
    anyhow::ensure!(!d.is_zero(), "{s:?}: a timeout must be longer than zero");
    anyhow::ensure!(
        d <= MAX_DURATION,
        "{s:?} is longer than {} (the longest timeout accepted)",
        humantime::format_duration(MAX_DURATION)
    );
    Ok(d)
}

/// [`parse_duration`] that also takes zero (`0s`: "no limit of its own", for the lock wait).
pub fn parse_duration_or_zero(s: &str) -> anyhow::Result<Duration> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d.is_zero() => Ok(d),
        _ => parse_duration(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Every (seconds, nanos) pair is either refused or a time that formats and parses back
        /// to itself: nothing in between becomes "unset".
        #[test]
        fn every_timestamp_is_refused_or_exact(seconds in any::<i64>(), nanos in any::<i32>()) {
            let ts = prost_types::Timestamp { seconds, nanos };
            let in_range = (MIN_SECONDS..=MAX_SECONDS).contains(&seconds)
                && (0..1_000_000_000).contains(&nanos);
            match check_timestamp("until", &ts) {
                Ok(t) => {
                    prop_assert!(in_range);
                    prop_assert_eq!((t.timestamp(), t.timestamp_subsec_nanos() as i32), (seconds, nanos));
                    let text = rfc3339(Some(&ts)).expect("formats");
                    prop_assert_eq!(parse_time(&text).expect("parses back"), ts);
                }
                Err(e) => {
                    prop_assert!(!in_range);
                    prop_assert!(e.starts_with("until: "), "{}", e);
                    prop_assert_eq!(rfc3339(Some(&ts)), None);
                }
            }
        }

        /// The edges and their neighbours, which random values rarely hit.
        #[test]
        fn the_edges_of_the_range(
            seconds in prop::sample::select(vec![i64::MIN, MIN_SECONDS - 1, MIN_SECONDS, 0, MAX_SECONDS, MAX_SECONDS + 1, i64::MAX]),
            nanos in prop::sample::select(vec![i32::MIN, -1, 0, 999_999_999, 1_000_000_000, i32::MAX]),
        ) {
            let ok = check_timestamp("until", &prost_types::Timestamp { seconds, nanos }).is_ok();
            prop_assert_eq!(ok, (MIN_SECONDS..=MAX_SECONDS).contains(&seconds) && (0..1_000_000_000).contains(&nanos));
        }

        /// Every duration text either parses to a value in (0, MAX_DURATION] or is refused.
        #[test]
        fn every_duration_is_refused_or_in_range(n in any::<u64>(), unit in prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "w", "y"])) {
            match parse_duration(&format!("{n}{unit}")) {
                Ok(d) => prop_assert!(!d.is_zero() && d <= MAX_DURATION),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn rfc3339_bounds_parse_and_outside_is_refused() {
        assert_eq!(
            parse_time("0001-01-01T00:00:00Z").expect("first").seconds,
            MIN_SECONDS
        );
        assert_eq!(
            parse_time("9999-12-31T23:59:59.999999999Z")
                .expect("last")
                .seconds,
            MAX_SECONDS
        );
        assert!(parse_time("0000-12-31T23:59:59Z").is_err());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("31d").is_err());
        assert!(parse_duration("30d").is_ok());
        assert!(parse_duration("99999999999999999999y").is_err());
    }
}
