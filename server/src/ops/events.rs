//! Events the service stores in the EventStore after its work, so other services can react:
//! `BackupCompleted` and `BackupFailed` (aggregate type `Backup`), `RestoreCompleted` and
//! `RestoreFailed` (aggregate type `Restore`). Each operation is its own aggregate (id derived
//! from the operation's id, version 1), so the events never conflict with Monoskope's own.
//! Data is a JSON object (see the README); metadata carries the caller's identity as Monoskope's
//! command side does (`x-auth-id`, `x-auth-name`, `x-auth-email`) and the component's name and
//! version. Storing is best effort: a failure is logged, never turns a run into a failure.

use monoskope_backup_api::eventsourcing::Event;
use sha2::{Digest, Sha256};

use crate::eventstore::EventStoreAddr;
use crate::identity::Identity;

/// Aggregate type of backup events.
pub const BACKUP_AGGREGATE: &str = "Backup";
/// Aggregate type of restore events.
pub const RESTORE_AGGREGATE: &str = "Restore";

/// A backup or restore that failed before it started, as its record and event state it.
#[derive(Debug, Clone)]
pub struct Unstarted {
    /// The operation's id (`<backup id>`, or `restore-<id>`).
    pub id: String,
    /// `BackupFailed` or `RestoreFailed`.
    pub kind: &'static str,
    /// The event's aggregate type.
    pub aggregate: &'static str,
    /// When it failed (RFC 3339, milliseconds).
    pub at: String,
    /// The event's data.
    pub data: serde_json::Value,
}

/// The failure of a `backup` (`restore` when not) that did not start, at `now`, because `why`.
pub fn unstarted(backup: bool, now: chrono::DateTime<chrono::Utc>, why: &str) -> Unstarted {
    let at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let id = crate::destination::layout::new_id(now);
    if backup {
        Unstarted {
            data: serde_json::json!({"backupId": id, "createdAt": at, "completedAt": at, "error": why}),
            id,
            kind: "BackupFailed",
            aggregate: BACKUP_AGGREGATE,
            at,
        }
    } else {
        let id = format!("restore-{id}");
        Unstarted {
            data: serde_json::json!({"restoreId": id, "startedAt": at, "completedAt": at, "error": why}),
            id,
            kind: "RestoreFailed",
            aggregate: RESTORE_AGGREGATE,
            at,
        }
    }
}
/// `component_name` in the events' metadata.
pub const COMPONENT: &str = "monoskope-backup";

/// The aggregate id of an operation: a name-based UUID (version 8 layout) of its id, so the same
/// operation always maps to the same aggregate.
pub fn aggregate_id(operation_id: &str) -> String {
    let h = Sha256::digest(format!("monoskope-backup/{operation_id}"));
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

/// The event of one finished operation.
pub fn event(
    event_type: &str,
    aggregate_type: &str,
    operation_id: &str,
    data: &serde_json::Value,
    caller: &Identity,
) -> Event {
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("component_name".to_string(), COMPONENT.to_string());
    metadata.insert(
        "component_version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    for (k, v) in [
        ("x-auth-id", &caller.id),
        ("x-auth-name", &caller.name),
        ("x-auth-email", &caller.email),
    ] {
        if !v.is_empty() {
            metadata.insert(k.to_string(), v.clone());
        }
    }
    let now = chrono::Utc::now();
    Event {
        r#type: event_type.to_string(),
        timestamp: Some(prost_types::Timestamp {
            seconds: now.timestamp(),
            nanos: now.timestamp_subsec_micros() as i32 * 1000,
        }),
        aggregate_id: aggregate_id(operation_id),
        aggregate_type: aggregate_type.to_string(),
        aggregate_version: Some(1),
        data: serde_json::to_vec(data).unwrap_or_default(),
        metadata,
    }
}

/// Stores `event` through the EventStore's `Store` API; logs the outcome.
pub async fn emit(store: &EventStoreAddr, event: Event) {
    let kind = event.r#type.clone();
    let res = async {
        let mut client = store.client()?;
        client
            .store(tokio_stream::iter(vec![event]))
            .await
            .map_err(|s| anyhow::anyhow!("{}", monoskope_backup_client::status_line(&s)))?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), res).await {
        Ok(Ok(())) => {
            tracing::info!(event = kind, event_store = %crate::redact::url(&store.addr), "event stored")
        }
        Ok(Err(e)) => {
            tracing::warn!(event = kind, event_store = %crate::redact::url(&store.addr), error = %monoskope_backup_client::error_line(e.as_ref()), "could not store the event")
        }
        Err(_) => {
            tracing::warn!(event = kind, event_store = %crate::redact::url(&store.addr), "could not store the event: no answer within 10 s")
        }
    }
}
