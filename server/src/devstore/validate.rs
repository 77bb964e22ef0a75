//! The protoc-gen-validate rules Monoskope's EventStore enforces on what it receives
//! (docs/MONOSKOPE.md §1.2–1.3), with the messages its validator produces.

use monoskope_backup_api::eventsourcing::{Event, EventFilter, EventFilters};

const NAME_PATTERN: &str = "^[a-zA-Z][A-Za-z0-9_-]+$";
const NAME_MAX_BYTES: usize = 60;

/// Whether `s` matches PGV's `uuid` rule: 8-4-4-4-12 hex digits with hyphens, either case.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Whether `s` matches `^[a-zA-Z][A-Za-z0-9_-]+$`.
fn matches_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

fn check_name(msg: &str, field: &str, v: &str) -> Result<(), String> {
    if v.len() > NAME_MAX_BYTES {
        return Err(format!(
            "invalid {msg}.{field}: value length must be at most {NAME_MAX_BYTES} bytes"
        ));
    }
    if !matches_name(v) {
        return Err(format!(
            "invalid {msg}.{field}: value does not match regex pattern \"{NAME_PATTERN}\""
        ));
    }
    Ok(())
}

fn check_uuid(msg: &str, field: &str, v: &str) -> Result<(), String> {
    if is_uuid(v) {
        Ok(())
    } else {
        Err(format!(
            "invalid {msg}.{field}: value must be a valid UUID | caused by: invalid uuid format"
        ))
    }
}

/// Validates an `Event` as the EventStore's interceptor does; the error is the validator's text.
pub fn event(e: &Event) -> Result<(), String> {
    check_name("Event", "Type", &e.r#type)?;
    check_uuid("Event", "AggregateId", &e.aggregate_id)?;
    check_name("Event", "AggregateType", &e.aggregate_type)?;
    Ok(())
}

/// Validates an `EventFilter`; only present wrappers are checked.
pub fn filter(f: &EventFilter) -> Result<(), String> {
    if let Some(id) = &f.aggregate_id {
        check_uuid("EventFilter", "AggregateId", id)?;
    }
    if let Some(t) = &f.aggregate_type {
        check_name("EventFilter", "AggregateType", t)?;
    }
    Ok(())
}

/// Validates every filter of an `EventFilters`.
pub fn filters(fs: &EventFilters) -> Result<(), String> {
    for (i, f) in fs.filters.iter().enumerate() {
        filter(f).map_err(|cause| {
            format!("invalid EventFilters.Filters[{i}]: embedded message failed validation | caused by: {cause}")
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_rule() {
        assert!(is_uuid("00000000-0000-0000-0000-000000000000"));
        assert!(is_uuid("6F9619FF-8B86-D011-B42D-00C04FC964FF"));
        assert!(!is_uuid("{6F9619FF-8B86-D011-B42D-00C04FC964FF}"));
        assert!(!is_uuid("6F9619FF8B86D011B42D00C04FC964FF"));
        assert!(!is_uuid("urn:uuid:6f9619ff-8b86-d011-b42d-00c04fc964ff"));
    }

    #[test]
    fn name_rule() {
        assert!(matches_name("User"));
        assert!(matches_name("a-_9"));
        assert!(!matches_name("U"));
        assert!(!matches_name(""));
        assert!(!matches_name("TestEvent:Created"));
        assert!(!matches_name("9User"));
    }
}
