//! monoskope-backup: the BackupService that sits next to Monoskope's EventStore.
//!
//! The modules, by layer, lowest first; a module uses only its own layer and those below it
//! (`layers.rs` tests it; `docs/ARCHITECTURE.md` explains each):
//! 1. values: [`archive`] (the backup format: byte streams only), [`time`] (range-checked
//!    times and timeouts), [`redact`] (secrets out of URLs), [`identity`] (who asked),
//!    [`database`] (connection pools that say why), [`bus`] (Monoskope's message bus contract:
//!    publishing as its EventStore does, listening for new events), [`devstore`] (the embedded
//!    EventStore, standing apart: it shares only the wire contracts);
//! 2. the outside: [`destination`] (directory, S3; the layout and manifests), [`catalog`]
//!    (records, lease), [`eventstore`] (the EventStore API client), [`events_table`] (Monoskope's
//!    table on PostgreSQL), [`watermark`] (per-aggregate versions of a chain);
//! 3. events in and out: [`source`], [`sink`], [`import`] (Monoskope's own tar backups);
//! 4. [`ops`]: configuration, logging, secrets, metrics, Pushgateway, emitted events, schedules;
//! 5. [`engine`]: backup, restore, verify, retention, drill; one operation at a time;
//! 6. the service: [`auth`] (the tower layer) and [`grpc`] (the BackupService);
//! 7. [`cli`]: the `backup-server` commands and the in-process schedule loops.

pub mod archive;
pub mod auth;
pub mod bus;
pub mod catalog;
pub mod cli;
pub mod database;
pub mod destination;
pub mod devstore;
pub mod engine;
pub mod events_table;
pub mod eventstore;
pub mod grpc;
pub mod identity;
pub mod import;
pub mod ops;
pub mod redact;
pub mod sink;
pub mod source;
pub mod time;
pub mod watermark;

#[cfg(test)]
mod layers;
