//! Restore drills: prove a backup restores, without touching the live store.
//!
//! A drill restores the backup through the EventStore API into a scratch embedded EventStore
//! (a temporary SQLite file, deleted afterwards), then compares three digests of the same
//! events: the archive's (read and authenticated to its footer), the scratch store's (what a
//! restore really produces), and the live store's events up to the backup's last event time
//! (whether the live history still matches the backup). The digests are order-independent
//! (sum of per-event SHA-256 modulo 2^256), because `Retrieve` orders by timestamp only and
//! events with equal timestamps may come back in any order. Memory stays flat.

use monoskope_backup_client::{error_line, status_line};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use monoskope_backup_api::eventsourcing::{Event, EventFilter};
use prost::Message;
use sha2::{Digest, Sha256};

use super::restore::{RestoreRequest, Sink};
use super::{EngineConfig, EngineError, Progress};
use crate::archive::ArchiveReader;
use crate::destination::manifest::Manifest;
use crate::source::EventStoreAddr;

/// An order-independent digest of a set of events, and their count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetDigest {
    sum: [u64; 4],
    /// Events added.
    pub count: u64,
}

impl SetDigest {
    /// Adds one event: its fields that every store keeps (not the table's event id).
    pub fn add(&mut self, e: &Event) {
        let canonical = Event {
            r#type: e.r#type.clone(),
            timestamp: e.timestamp,
            aggregate_id: e.aggregate_id.to_ascii_lowercase(),
            aggregate_type: e.aggregate_type.clone(),
            aggregate_version: e.aggregate_version,
            // As a JSON value: stores that order keys or write numbers differently agree.
            data: match crate::devstore::jsonb::canonical(&e.data) {
                Ok(v) if !e.data.is_empty() => v.into_bytes(),
                _ => e.data.clone(),
            },
            metadata: e.metadata.clone(),
        };
        let h = Sha256::digest(canonical.encode_to_vec());
        // 256-bit addition, little-endian limbs.
        let mut carry = 0u128;
        for (i, limb) in self.sum.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i * 8..i * 8 + 8]);
            let s = *limb as u128 + u64::from_le_bytes(b) as u128 + carry;
            *limb = s as u64;
            carry = s >> 64;
        }
        self.count += 1;
    }

    /// Hex form.
    pub fn hex(&self) -> String {
        self.sum.iter().rev().map(|l| format!("{l:016x}")).collect()
    }
}

/// What a drill found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DrillReport {
    /// The backup drilled.
    pub backup_id: String,
    /// Everything matched.
    pub ok: bool,
    /// Events in the archive.
    pub archive_events: u64,
    /// Events the scratch store holds after the restore.
    pub restored_events: u64,
    /// Live events up to the backup's last event time.
    pub live_events: u64,
    /// The scratch store holds exactly the archive's events.
    pub restored_matches_archive: bool,
    /// The live store's events up to the backup's time are exactly the archive's.
    pub live_matches_archive: bool,
    /// The archive's set digest.
    pub events_digest: String,
    /// Each problem, in words.
    pub problems: Vec<String>,
    /// Wall time in seconds.
    pub seconds: f64,
}

async fn archive_digest(cfg: &EngineConfig, chain: &[Manifest]) -> anyhow::Result<SetDigest> {
    let mut d = SetDigest::default();
    for m in chain {
        let key_file =
            crate::destination::keyfile::load(cfg.destination.as_ref(), &m.archive_key).await?;
        let reader = cfg.destination.get(&m.archive_key).await?;
        let keys = cfg.keys.clone();
        d = tokio::task::spawn_blocking(move || {
            let bridge = std::io::BufReader::with_capacity(
                1 << 20,
                tokio_util::io::SyncIoBridge::new(reader),
            );
            let mut r = ArchiveReader::open_with_key_file(bridge, &keys, key_file.as_ref())?;
            while let Some(rec) = r.next_record()? {
                d.add(&crate::source::event_from_record(rec));
            }
            anyhow::Ok(d)
        })
        .await??;
    }
    Ok(d)
}

async fn store_digest(
    es: &EventStoreAddr,
    until: Option<prost_types::Timestamp>,
) -> anyhow::Result<SetDigest> {
    let mut client = es.client()?;
    let mut s = client
        .retrieve(EventFilter {
            max_timestamp: until,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("Retrieve from {}: {}", es.addr, status_line(&s)))?
        .into_inner();
    let mut d = SetDigest::default();
    while let Some(e) = s.next().await {
        d.add(&e.map_err(|s| anyhow::anyhow!("Retrieve from {}: {}", es.addr, status_line(&s)))?);
    }
    Ok(d)
}

/// Runs one drill of the backup `chain` ends with (its full ancestor first).
pub(super) async fn run(
    cfg: &EngineConfig,
    chain: &[Manifest],
    progress: Arc<Progress>,
) -> Result<DrillReport, EngineError> {
    let manifest = chain
        .last()
        .ok_or_else(|| EngineError::Internal(anyhow::anyhow!("empty chain")))?;
    let started = Instant::now();
    let internal = |e: anyhow::Error| EngineError::Internal(e);
    let scratch_dir = tempfile::tempdir().map_err(|e| internal(e.into()))?;
    let listener = crate::devstore::bind(([127, 0, 0, 1], 0).into())
        .await
        .map_err(internal)?;
    let scratch_addr = listener.local_addr().map_err(|e| internal(e.into()))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let db = scratch_dir.path().join("drill.db");
    let scratch = tokio::spawn(async move {
        let opts = crate::devstore::DevStoreOptions {
            max_message_size: 64 << 20,
            seed_sample: 0,
            ..Default::default()
        };
        crate::devstore::serve(&db, listener, opts, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let scratch_es = EventStoreAddr {
        addr: scratch_addr.to_string(),
        ca_file: None,
    };
    let mut scratch_cfg = cfg.clone();
    scratch_cfg.event_store = scratch_es.clone();
    let req = RestoreRequest {
        backup_id: manifest.id.clone(),
        until: None,
        drop_existing: false,
        via_api: true,
        caller: crate::identity::Identity::default(),
    };
    let result = async {
        let restored = super::restore::run(
            &scratch_cfg,
            &req,
            &Sink::Api,
            chain,
            &Default::default(),
            progress,
        )
        .await?;
        let archive = archive_digest(cfg, chain)
            .await
            .map_err(|e| EngineError::Corrupt(error_line(e.as_ref())))?;
        let scratch = store_digest(&scratch_es, None).await.map_err(internal)?;
        let until = manifest
            .last_event_time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| prost_types::Timestamp {
                seconds: t.timestamp(),
                nanos: t.timestamp_subsec_nanos() as i32,
            });
        let live = match until {
            Some(u) => store_digest(&cfg.event_store, Some(u)).await,
            // An empty backup: the live store held nothing then; compare with nothing.
            None => Ok(SetDigest::default()),
        }
        .map_err(|e| {
            EngineError::Unavailable(format!("live EventStore: {}", error_line(e.as_ref())))
        })?;
        Ok::<_, EngineError>((restored, archive, scratch, live))
    }
    .await;
    let _ = stop_tx.send(());
    let _ = scratch.await;
    let (restored, archive, scratch, live) = result?;
    let mut problems = Vec::new();
    if restored != archive.count {
        problems.push(format!(
            "the restore stored {restored} events, the archive holds {}",
            archive.count
        ));
    }
    let restored_matches = scratch == archive;
    if !restored_matches {
        problems.push(format!(
            "the scratch store's events ({}) differ from the archive's ({})",
            scratch.count, archive.count
        ));
    }
    let live_matches = live == archive;
    if !live_matches {
        problems.push(format!(
            "the live store's {} events up to {} differ from the backup's {}: history changed since the backup (a restore, a deletion, or events committed late with older timestamps)",
            live.count,
            manifest.last_event_time.as_deref().unwrap_or("-"),
            archive.count
        ));
    }
    Ok(DrillReport {
        backup_id: manifest.id.clone(),
        ok: problems.is_empty(),
        archive_events: archive.count,
        restored_events: scratch.count,
        live_events: live.count,
        restored_matches_archive: restored_matches,
        live_matches_archive: live_matches,
        events_digest: archive.hex(),
        problems,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_digest_ignores_order_and_sees_every_field() {
        let evs: Vec<Event> = crate::devstore::sample::events(50, 5, 1_700_000_000, 1).collect();
        let mut a = SetDigest::default();
        let mut b = SetDigest::default();
        for e in &evs {
            a.add(e);
        }
        for e in evs.iter().rev() {
            b.add(e);
        }
        assert_eq!(a, b);
        let mut c = SetDigest::default();
        for (i, e) in evs.iter().enumerate() {
            let mut e = e.clone();
            if i == 7 {
                e.metadata.insert("x".into(), "y".into());
            }
            c.add(&e);
        }
        assert_ne!(a, c);
        assert_ne!(a.hex(), SetDigest::default().hex());
    }
}
