//! The embedded EventStore: Monoskope's `eventsourcing.EventStore` gRPC contract on SQLite.
//!
//! It exists because Monoskope's Go EventStore cannot run here, yet the demo and every test need
//! a faithful peer to back up and restore. It honours the documented contract
//! (`docs/MONOSKOPE.md`), including its surprises, and names the documented fact where it
//! does. Given a message bus, it publishes every stored event there as the EventStore does
//! (`crate::bus`); without one, storing publishes nothing.

pub mod jsonb;
pub mod sample;
pub mod storage;
pub mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;

use futures::Stream;
use monoskope_backup_api::common::service_information_service_server::{
    ServiceInformationService, ServiceInformationServiceServer,
};
use monoskope_backup_api::common::ServiceInformation;
use monoskope_backup_api::eventsourcing::event_store_server::{EventStore, EventStoreServer};
use monoskope_backup_api::eventsourcing::{Event, EventFilter, EventFilters};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

pub use storage::{InsertError, Storage, StoredEvent};

/// grpc-go's default limit on a received message, which Monoskope's EventStore keeps (§1.4).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Rows in flight between the database reader and the gRPC stream.
const STREAM_BUFFER: usize = 64;

/// The gRPC service of the embedded EventStore.
#[derive(Clone, Debug)]
pub struct DevStore {
    storage: Storage,
    bus: Option<std::sync::Arc<crate::bus::publish::Publisher>>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send + 'static>>;

impl DevStore {
    /// A service over `storage`.
    pub fn new(storage: Storage) -> Self {
        Self { storage, bus: None }
    }

    /// Publishes every stored event with `publisher`, as the EventStore does.
    pub fn with_bus(mut self, publisher: crate::bus::publish::Publisher) -> Self {
        self.bus = Some(std::sync::Arc::new(publisher));
        self
    }

    /// The underlying storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    fn stream(&self, filters: Vec<EventFilter>) -> EventStream {
        let rx = self.storage.retrieve(filters, STREAM_BUFFER);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| match item {
            Ok(stored) => Ok(stored.event),
            Err(err) => {
                tracing::error!(error = %err, "reading events failed");
                Err(Status::internal("connection to storage closed"))
            }
        });
        Box::pin(stream)
    }
}

/// Monoskope's `Store` handler wraps a failed read (validation included) in INTERNAL, and its API
/// layer wraps it again (§1.3): `rpc error: code = Internal desc = rpc error: code = X desc = …`.
fn double_wrapped(status: &Status) -> Status {
    Status::internal(format!(
        "rpc error: code = Internal desc = rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    ))
}

#[tonic::async_trait]
impl EventStore for DevStore {
    /// Sequential, one event per transaction, each published after it is stored (when a bus is
    /// given), no atomicity across the stream, no version check beyond the UNIQUE constraint,
    /// every error INTERNAL (§2.1). An empty stream succeeds.
    async fn store(&self, request: Request<Streaming<Event>>) -> Result<Response<()>, Status> {
        let mut stream = request.into_inner();
        loop {
            let event = match stream.message().await {
                Ok(Some(e)) => e,
                Ok(None) => return Ok(Response::new(())),
                Err(status) => return Err(double_wrapped(&status)),
            };
            if let Err(msg) = validate::event(&event) {
                return Err(double_wrapped(&Status::invalid_argument(msg)));
            }
            match self.storage.insert(&event).await {
                Ok(()) => {
                    if let Some(bus) = &self.bus {
                        if let Err(err) = bus.publish(&event).await {
                            tracing::warn!(error = %err, "could not publish event");
                            return Err(Status::internal("could not publish event"));
                        }
                    }
                }
                Err(InsertError::Conflict) => {
                    return Err(Status::internal(
                        "event aggregate version already exists in store",
                    ))
                }
                Err(InsertError::Other(err)) => {
                    tracing::warn!(error = %err, "could not save event");
                    return Err(Status::internal("could not save events"));
                }
            }
        }
    }

    type RetrieveStream = EventStream;

    async fn retrieve(
        &self,
        request: Request<EventFilter>,
    ) -> Result<Response<Self::RetrieveStream>, Status> {
        let filter = request.into_inner();
        validate::filter(&filter).map_err(Status::invalid_argument)?;
        Ok(Response::new(self.stream(vec![filter])))
    }

    type RetrieveOrStream = EventStream;

    async fn retrieve_or(
        &self,
        request: Request<EventFilters>,
    ) -> Result<Response<Self::RetrieveOrStream>, Status> {
        let filters = request.into_inner();
        validate::filters(&filters).map_err(Status::invalid_argument)?;
        Ok(Response::new(self.stream(filters.filters)))
    }
}

/// `common.ServiceInformationService` as the EventStore serves it on its port (§1.1).
#[derive(Debug, Clone, Copy, Default)]
pub struct Info;

#[tonic::async_trait]
impl ServiceInformationService for Info {
    type GetServiceInformationStream =
        Pin<Box<dyn Stream<Item = Result<ServiceInformation, Status>> + Send>>;

    async fn get_service_information(
        &self,
        _request: Request<()>,
    ) -> Result<Response<Self::GetServiceInformationStream>, Status> {
        let info = ServiceInformation {
            version: env!("CARGO_PKG_VERSION").to_string(),
            name: "eventstore (monoskope-backup devstore)".to_string(),
            commit: String::new(),
        };
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(info)))))
    }
}

/// Options of a running embedded EventStore.
#[derive(Debug, Clone)]
pub struct DevStoreOptions {
    /// Largest message accepted or sent (grpc-go's 4 MiB by default, as Monoskope's store).
    pub max_message_size: usize,
    /// Fill an empty store with this many deterministic sample events before serving.
    pub seed_sample: u64,
    /// How stored JSON orders object keys (PostgreSQL's jsonb, or bytewise as CockroachDB).
    pub key_order: jsonb::KeyOrder,
    /// The message bus to publish every stored event to, and how long to retry a publish.
    pub bus: Option<(crate::bus::BusConfig, std::time::Duration)>,
}

impl Default for DevStoreOptions {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            seed_sample: 0,
            key_order: jsonb::KeyOrder::Postgres,
            bus: None,
        }
    }
}

/// Serves the embedded EventStore on `listener` until `shutdown` resolves: the EventStore,
/// health, reflection and service information, plaintext, as Monoskope's store.
pub async fn serve(
    db: &Path,
    listener: tokio::net::TcpListener,
    opts: DevStoreOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut storage = Storage::open(db).await?;
    storage.key_order = opts.key_order;
    if opts.seed_sample > 0 && storage.count().await? == 0 {
        let n = opts.seed_sample;
        let start = chrono::Utc::now().timestamp() - 30 * 86_400;
        let stored = storage
            .insert_many(sample::events(n, (n / 100).max(1), start, 42))
            .await?;
        tracing::info!(events = stored, "seeded the store with sample events");
    }
    let mut devstore = DevStore::new(storage);
    if let Some((cfg, retry_for)) = opts.bus {
        devstore = devstore.with_bus(crate::bus::publish::Publisher::new(cfg, retry_for));
    }
    let store = EventStoreServer::new(devstore)
        .max_decoding_message_size(opts.max_message_size)
        .max_encoding_message_size(opts.max_message_size.max(DEFAULT_MAX_MESSAGE_SIZE));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<EventStoreServer<DevStore>>()
        .await;
    // Both reflection versions, as grpc-go servers (Monoskope's store among them) register.
    // Each version's service also describes the other's (grpcurl `describe` of either).
    let reflection = |other: &'static [u8]| {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(other)
            .register_encoded_file_descriptor_set(monoskope_backup_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("eventsourcing.EventStore")
            .with_service_name("common.ServiceInformationService")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let reflection_v1alpha =
        reflection(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET).build_v1alpha()?;
    let reflection = reflection(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET).build_v1()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ServiceInformationServiceServer::new(Info))
        .add_service(store)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(addr).await?)
}
