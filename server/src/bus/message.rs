//! The body of a bus message, as Monoskope's EventStore writes it (`docs/MONOSKOPE.md` §4): a
//! JSON object with these keys in this order. `Data` is the received bytes as padded base64 (or
//! `null`), `Timestamp` the received, unrounded time (RFC 3339, up to nine fractional digits,
//! trailing zeros removed), `Metadata` an object of strings (or `null`).

use std::collections::BTreeMap;

use base64::Engine as _;
use monoskope_backup_api::eventsourcing::Event;
use serde::{Deserialize, Serialize};

/// One stored event as the bus carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusMessage {
    #[serde(rename = "EventType")]
    /// The event type.
    pub event_type: String,
    #[serde(rename = "Data")]
    /// The data as received, padded base64, or `None` (`null`) when empty.
    pub data: Option<String>,
    #[serde(rename = "Timestamp")]
    /// The client's timestamp as received (Go's RFC 3339 with nanoseconds).
    pub timestamp: String,
    #[serde(rename = "AggregateType")]
    /// The aggregate type.
    pub aggregate_type: String,
    #[serde(rename = "AggregateID")]
    /// The aggregate id, lowercase.
    pub aggregate_id: String,
    #[serde(rename = "AggregateVersion")]
    /// The aggregate version (0 when absent).
    pub aggregate_version: u64,
    #[serde(rename = "Metadata")]
    /// The metadata, or `None` (`null`) when empty.
    pub metadata: Option<BTreeMap<String, String>>,
}

impl BusMessage {
    /// The message the EventStore publishes for `event` as it received it.
    pub fn of(event: &Event) -> Self {
        let ts = event.timestamp.unwrap_or_default();
        Self {
            event_type: event.r#type.clone(),
            data: (!event.data.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&event.data)),
            timestamp: go_rfc3339_nano(ts.seconds, ts.nanos),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.to_ascii_lowercase(),
            aggregate_version: event.aggregate_version.unwrap_or(0),
            metadata: (!event.metadata.is_empty()).then(|| event.metadata.clone()),
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a bus message serializes")
    }
}

/// Go's `time.RFC3339Nano` in UTC: nine fractional digits at most, trailing zeros (and a bare
/// dot) removed.
fn go_rfc3339_nano(seconds: i64, nanos: i32) -> String {
    let t = chrono::DateTime::from_timestamp(seconds, nanos.clamp(0, 999_999_999) as u32)
        .unwrap_or_default();
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let frac = format!("{:09}", t.timestamp_subsec_nanos());
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{base}Z")
    } else {
        format!("{base}.{frac}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned bytes: the body the EventStore publishes for one event (keys in its order).
    #[test]
    fn body_is_monoskopes() {
        let event = Event {
            r#type: "UserCreated".into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 120_000_000,
            }),
            aggregate_id: "7C1D7A1E-9A8B-4B5C-8D3E-2F1A0B9C8D7E".into(),
            aggregate_type: "User".into(),
            aggregate_version: Some(3),
            data: br#"{"name":"a"}"#.to_vec(),
            metadata: [("x-auth-id".to_string(), "u1".to_string())].into(),
        };
        assert_eq!(
            String::from_utf8(BusMessage::of(&event).to_json()).expect("utf-8"),
            r#"{"EventType":"UserCreated","Data":"eyJuYW1lIjoiYSJ9","Timestamp":"2023-11-14T22:13:20.12Z","AggregateType":"User","AggregateID":"7c1d7a1e-9a8b-4b5c-8d3e-2f1a0b9c8d7e","AggregateVersion":3,"Metadata":{"x-auth-id":"u1"}}"#
        );
        let bare = Event {
            timestamp: None,
            data: vec![],
            metadata: Default::default(),
            ..event
        };
        assert_eq!(
            String::from_utf8(BusMessage::of(&bare).to_json()).expect("utf-8"),
            r#"{"EventType":"UserCreated","Data":null,"Timestamp":"1970-01-01T00:00:00Z","AggregateType":"User","AggregateID":"7c1d7a1e-9a8b-4b5c-8d3e-2f1a0b9c8d7e","AggregateVersion":3,"Metadata":null}"#
        );
    }
}
