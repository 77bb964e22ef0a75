//! monoskope-backup: the BackupService that sits next to Monoskope's EventStore.
//!
//! One module per piece of the architecture (see `docs/ARCHITECTURE.md`):
//! - [`archive`]: the backup file format (records, chunks, zstd, AES-256-GCM STREAM, keys);
//!   byte streams only, no runtime, SQL or network;
//! - [`cli`]: the `backup-server` command line;
//! - [`auth`]: the authentication layer (gateway, jwt, none) and who may do what;
//! - [`ops`]: logging, secrets, configuration, metrics, Pushgateway, events, schedules;
//! - [`import`]: reading Monoskope's own tar backups (migration);
//! - [`devstore`]: the embedded EventStore that speaks Monoskope's contract (demo and tests).

pub mod archive;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod database;
pub mod destination;
pub mod devstore;
pub mod engine;
pub mod grpc;
pub mod import;
pub mod ops;
pub mod redact;
pub mod sink;
pub mod source;
pub mod time;
