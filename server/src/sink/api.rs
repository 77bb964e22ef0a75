//! The EventStore's `Store` API as a restore sink. Monoskope's `Store` is not transactional and
//! republishes every stored event to the message bus, so this sink is used only when asked for
//! explicitly (`via_api`), the archive is verified completely before the first event is sent,
//! and the store must be empty: the API cannot delete events.

use monoskope_backup_api::archive::v1::Record;
use monoskope_backup_client::{error_line, status_line};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::SinkError;
use crate::eventstore::{event_from_record, EventStoreAddr};

/// What the error says when the API sink is used without `via_api`.
pub const NEEDS_VIA_API: &str = "restoring through the EventStore API needs via_api (--via-api): on a real Monoskope EventStore every stored event is republished to the message bus (RabbitMQ), and query handlers and reactors act on the whole history again; restore into the events table (--events-db) instead, or pass via_api for a store without a bus";

/// Whether the store holds any event (reads the stream to its end, as Monoskope's store needs).
pub async fn count(addr: &EventStoreAddr) -> Result<u64, SinkError> {
    let mut s = Box::pin(
        addr.retrieve_all()
            .await
            .map_err(|e| SinkError::Unavailable(error_line(e.as_ref())))?,
    );
    let mut n = 0;
    while let Some(r) = s.next().await {
        r.map_err(|e| SinkError::Unavailable(error_line(e.as_ref())))?;
        n += 1;
    }
    Ok(n)
}

/// Stores every record received from `records` through one `Store` stream.
pub async fn restore(
    addr: &EventStoreAddr,
    records: mpsc::Receiver<Record>,
) -> Result<u64, SinkError> {
    let mut client = addr
        .client()
        .map_err(|e| SinkError::Unavailable(error_line(e.as_ref())))?;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = count.clone();
    let stream = tokio_stream::wrappers::ReceiverStream::new(records).map(move |r| {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        event_from_record(r)
    });
    client.store(stream).await.map_err(|s| {
        SinkError::Other(anyhow::anyhow!(
            "the EventStore refused an event after {} were stored: {} (those events stay stored: the Store API is not transactional)",
            count.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(1),
            status_line(&s)
        ))
    })?;
    Ok(count.load(std::sync::atomic::Ordering::Relaxed))
}
