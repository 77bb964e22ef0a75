//! Monoskope's message bus (RabbitMQ) as its EventStore uses it (`docs/MONOSKOPE.md` §4): after
//! storing an event, the store publishes one JSON message to the topic exchange `m8_events` with
//! routing key `<prefix>.<AggregateType>.<EventType>`.
//!
//! Two users, sharing only this wire contract: the embedded EventStore publishes the way the real
//! one does ([`publish`]), and continuous backup listens ([`listen`]) to hear of new events the
//! moment they are stored. The bus never carries what is backed up — a message only says "look
//! now"; the events come from the store, so a lost, late or repeated message changes when a
//! segment is taken, never what it holds.

pub mod listen;
pub mod message;
pub mod publish;

use std::path::PathBuf;

use lapin::options::ExchangeDeclareOptions;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

pub use message::BusMessage;

/// The exchange Monoskope's EventStore publishes to (fixed there, not configurable).
pub const EXCHANGE: &str = "m8_events";

/// The routing key prefix Monoskope's chart sets (`ROUTING_KEY_PREFIX`).
pub const DEFAULT_PREFIX: &str = "m8";

/// Where the bus is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct BusConfig {
    /// `amqp://…` or `amqps://…` (with `?auth_mechanism=external` for Monoskope's certificate
    /// login).
    pub url: String,
    /// Routing key prefix (`m8`).
    pub prefix: String,
    /// PEM CA certificate(s) to trust for `amqps://`.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for `amqps://` (Monoskope's `tls.crt`).
    pub cert_file: Option<PathBuf>,
    /// Its key (Monoskope's `tls.key`).
    pub key_file: Option<PathBuf>,
}

impl BusConfig {
    /// The routing key of an event of `aggregate_type`/`event_type`.
    pub fn routing_key(&self, aggregate_type: &str, event_type: &str) -> String {
        format!("{}.{aggregate_type}.{event_type}", self.prefix)
    }
}

/// Connects to the bus on the current tokio runtime.
pub async fn connect(cfg: &BusConfig, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("bus: cannot read {}: {e}", p.display()))
    };
    let identity = match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => Some(OwnedIdentity::PKCS8 {
            pem: read(c)?,
            key: read(k)?,
        }),
        (None, None) => None,
        _ => anyhow::bail!("bus: give both a client certificate and its key, or neither"),
    };
    let cert_chain = match &cfg.ca_file {
        Some(p) => Some(String::from_utf8(read(p)?)?),
        None => None,
    };
    let tls = OwnedTLSConfig {
        identity,
        cert_chain,
    };
    Ok(Connection::connect_with_config(&cfg.url, props, tls).await?)
}

/// Declares `m8_events` as Monoskope's consumers do (topic, durable, not auto-deleted): the
/// EventStore itself never declares it, and publishing to a missing exchange closes the channel.
pub async fn declare_exchange(channel: &Channel) -> anyhow::Result<()> {
    channel
        .exchange_declare(
            EXCHANGE,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}
