//! The EventStore's gRPC API as a client: how to reach it, `Retrieve` of every event, its health,
//! and the mapping between its events and archive records. Sources read through it, the API sink
//! and the emitted events write through it.

/// Records per hand-off between the stages of a backup or restore (source, engine, archive
/// writer or reader, sink): one channel wake-up per batch instead of per event.
pub const RECORD_BATCH: usize = 256;

use std::time::Duration;

use anyhow::Context;
use futures::Stream;
use monoskope_backup_api::archive::v1::Record;
use monoskope_backup_api::eventsourcing::event_store_client::EventStoreClient;
use monoskope_backup_api::eventsourcing::{Event, EventFilter};
use monoskope_backup_client::status_line;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// `Retrieve` failed: its status code (what the exit code is decided on) and the line to show.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RetrieveError {
    /// The status code.
    pub code: tonic::Code,
    /// What happened, with what to do.
    pub message: String,
}

/// How to reach the EventStore's gRPC API.
#[derive(Debug, Clone)]
pub struct EventStoreAddr {
    /// `HOST:PORT` (plaintext, as Monoskope's store serves) or an `http(s)://` URL.
    pub addr: String,
    /// PEM CA certificate to trust for an `https://` address (system roots otherwise).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Largest event accepted from the store (Monoskope's clients: 4 MiB; we allow more).
const MAX_EVENT: usize = 64 * 1024 * 1024;

impl EventStoreAddr {
    /// The address as a URL.
    pub fn url(&self) -> String {
        if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// A channel to the store (connects lazily; 10 s connect timeout as Monoskope's clients).
    pub fn channel(&self) -> anyhow::Result<Channel> {
        let url = self.url();
        let mut ep = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid EventStore address {}", self.addr))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Some(Duration::from_secs(60)));
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &self.ca_file {
                let pem =
                    std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            ep = ep.tls_config(tls)?;
        }
        Ok(ep.connect_lazy())
    }

    /// A client of the EventStore API.
    pub fn client(&self) -> anyhow::Result<EventStoreClient<Channel>> {
        Ok(EventStoreClient::new(self.channel()?)
            .max_decoding_message_size(MAX_EVENT)
            .max_encoding_message_size(MAX_EVENT))
    }

    /// Every event, as `Retrieve` with an empty filter returns them (one statement's snapshot,
    /// ordered by timestamp). The stream must be read to its end: Monoskope's store leaks a
    /// database connection when a `Retrieve` stream is abandoned (docs/MONOSKOPE.md §2.2).
    pub async fn retrieve_all(&self) -> anyhow::Result<impl Stream<Item = anyhow::Result<Record>>> {
        let mut client = self.client()?;
        let stream = client
            .retrieve(EventFilter::default())
            .await
            .map_err(|s| self.retrieve_failed(&s))?
            .into_inner();
        Ok(stream.map(|r| {
            r.map(record_from_event)
                .map_err(|s| anyhow::anyhow!("EventStore stream failed: {}", status_line(&s)))
        }))
    }

    /// A failed `Retrieve`, with what to do when the address is not an EventStore's.
    fn retrieve_failed(&self, s: &tonic::Status) -> anyhow::Error {
        let line = status_line(s);
        let hint = match s.code() {
            tonic::Code::Unimplemented => " — this is not Monoskope's EventStore (it does not offer eventsourcing.EventStore/Retrieve): check --event-store (BACKUP_EVENT_STORE)",
            tonic::Code::Internal
                if line.contains("frame with invalid size") || line.contains("h2 protocol error") =>
            {
                " — the address does not speak gRPC over HTTP/2: check --event-store (the EventStore's API port, plaintext HOST:PORT)"
            }
            tonic::Code::Unavailable => " — is the EventStore running and reachable there? check --event-store (BACKUP_EVENT_STORE)",
            _ => "",
        };
        anyhow::Error::new(RetrieveError {
            code: s.code(),
            message: format!("EventStore {} Retrieve: {line}{hint}", self.addr),
        })
    }

    /// Whether the store answers its gRPC health check.
    pub async fn probe(&self) -> anyhow::Result<()> {
        let mut h = tonic_health::pb::health_client::HealthClient::new(self.channel()?);
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            h.check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .context("health check timed out")?
        .map_err(|s| anyhow::anyhow!("{}", status_line(&s)))?;
        let status = resp.into_inner().status;
        anyhow::ensure!(
            status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "not serving (status {status})"
        );
        Ok(())
    }
}

/// An EventStore event as an archive record (no event id: the API does not expose it).
pub fn record_from_event(e: Event) -> Record {
    Record {
        aggregate_type: e.aggregate_type,
        aggregate_id: e.aggregate_id,
        aggregate_version: e.aggregate_version.unwrap_or(0),
        event_type: e.r#type,
        data: e.data,
        metadata: e.metadata,
        timestamp: e.timestamp,
        event_id: String::new(),
    }
}

/// An archive record as an EventStore event.
pub fn event_from_record(r: Record) -> Event {
    Event {
        r#type: r.event_type,
        timestamp: r.timestamp,
        aggregate_id: r.aggregate_id,
        aggregate_type: r.aggregate_type,
        aggregate_version: Some(r.aggregate_version),
        data: r.data,
        metadata: r.metadata,
    }
}
