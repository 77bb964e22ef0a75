//! The options every service command shares, resolved from flags, their environment variables
//! and the config file, in that order of precedence.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::KeyArgs;
use crate::archive::{Keys, Protection, DEFAULT_COMPRESSION_LEVEL};
use crate::catalog::Catalog;
use crate::destination::{self, Destination, S3Options};
use crate::engine::{Engine, EngineConfig};
use crate::ops::config::{parse_duration, FileConfig};
use crate::ops::secrets;
use crate::source::EventStoreAddr;

/// The config file read when none is given (`--config ""` reads none).
pub const DEFAULT_CONFIG: &str = "/etc/monoskope-backup/config.yaml";

/// Options shared by `serve`, `backup`, `list`, `verify` and `catalog`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// YAML config file (see the README); flags and environment variables override it.
    /// Default: /etc/monoskope-backup/config.yaml when it exists (where the Helm chart mounts it).
    #[arg(long, env = "BACKUP_CONFIG")]
    pub config: Option<PathBuf>,
    /// The EventStore's gRPC API: HOST:PORT (plaintext, as Monoskope serves it) or https://HOST:PORT.
    #[arg(long, env = "BACKUP_EVENT_STORE")]
    pub event_store: Option<String>,
    /// PEM CA certificate for an https:// EventStore.
    #[arg(long, env = "BACKUP_EVENT_STORE_CA")]
    pub event_store_ca: Option<PathBuf>,
    /// Where backups are: file:///DIR or s3://BUCKET/PREFIX.
    #[arg(long, env = "BACKUP_DESTINATION")]
    pub destination: Option<String>,
    /// S3 endpoint, host[:port] or URL (default: AWS). Credentials: S3_ACCESS_KEY/S3_SECRET_KEY or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default us-east-1).
    #[arg(long, env = "S3_REGION")]
    pub s3_region: Option<String>,
    /// Plain HTTP to a host[:port] S3 endpoint.
    #[arg(long, env = "S3_DISABLE_SSL", num_args = 0..=1, default_missing_value = "true")]
    pub s3_disable_ssl: Option<bool>,
    /// S3 Object Lock mode of every object a backup writes (GOVERNANCE or COMPLIANCE; the bucket
    /// must have object lock enabled, checked at start). Needs --s3-object-lock-days.
    #[arg(long, env = "S3_OBJECT_LOCK_MODE", ignore_case = true)]
    pub s3_object_lock_mode: Option<crate::destination::LockMode>,
    /// Days from a write to its object's retention date (with --s3-object-lock-mode).
    #[arg(long, env = "S3_OBJECT_LOCK_DAYS")]
    pub s3_object_lock_days: Option<u32>,
    /// Catalog database: sqlite://PATH or postgres://USER@HOST/DB (password via this variable, not a flag).
    #[arg(long, env = "BACKUP_CATALOG")]
    pub catalog: Option<String>,
    /// A second place every complete backup is copied to and verified at (3-2-1): another
    /// bucket, region or endpoint (s3://BUCKET/PREFIX, with the S3 options above) or a directory
    /// (file:///DIR). Repeatable (the environment variable takes a comma-separated list). `list`
    /// and `restore` read a copy when the primary cannot be read or lacks the backup.
    #[arg(
        long = "copy-destination",
        env = "BACKUP_COPY_DESTINATIONS",
        value_delimiter = ','
    )]
    pub copy_destinations: Vec<String>,
    /// Where keys come from.
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Write unencrypted archives (still integrity-checked). Only when asked for explicitly.
    #[arg(long, env = "BACKUP_NO_ENCRYPTION")]
    pub no_encryption: bool,
    /// Complete backups kept after each backup; 0 keeps all (negative values are refused).
    #[arg(long, env = "BACKUP_RETENTION_COUNT", allow_negative_numbers = true)]
    pub retention_count: Option<i64>,
    /// Also keep the newest backup of each of the last N days that have backups (restic's
    /// semantics; with the weekly, monthly and yearly buckets: grandfather-father-son).
    #[arg(long, env = "BACKUP_KEEP_DAILY")]
    pub keep_daily: Option<usize>,
    /// … of each of the last N ISO weeks.
    #[arg(long, env = "BACKUP_KEEP_WEEKLY")]
    pub keep_weekly: Option<usize>,
    /// … of each of the last N months.
    #[arg(long, env = "BACKUP_KEEP_MONTHLY")]
    pub keep_monthly: Option<usize>,
    /// … of each of the last N years.
    #[arg(long, env = "BACKUP_KEEP_YEARLY")]
    pub keep_yearly: Option<usize>,
    /// Longest a backup may run (e.g. 90s, 1h): from starting its upload, through opening its
    /// source (a store that takes the connection and never answers), to the end of the read;
    /// it then fails and leaves nothing at the destination.
    #[arg(long, env = "BACKUP_TIMEOUT")]
    pub timeout: Option<String>,
    /// The EventStore's events table on PostgreSQL: backups read one snapshot of it (keeping
    /// event ids) instead of the Retrieve API, and restores write into it without publishing to
    /// the bus. postgres://USER@HOST:PORT/DB (TLS: sslmode, sslrootcert, sslcert, sslkey in the URL).
    #[arg(long, env = "BACKUP_EVENTS_DB")]
    pub events_db: Option<String>,
    /// Longest a restore may run (e.g. 1h); it then fails, and the table sink rolls back.
    #[arg(long, env = "BACKUP_RESTORE_TIMEOUT")]
    pub restore_timeout: Option<String>,
    /// How long a backup or restore on the events table (--events-db) waits for other sessions
    /// holding it — a pg_dump or a transaction left open (restores), a VACUUM FULL (both) — before
    /// it fails naming them (default 30s; 0s waits as long as the operation may run).
    #[arg(long, env = "BACKUP_LOCK_WAIT_TIMEOUT")]
    pub lock_wait_timeout: Option<String>,
    /// zstd level of archives, 1–19 (default 3, with a match finder tuned for event records:
    /// smaller and faster than zstd's own level 3 on them; docs/BENCHMARKS.md).
    #[arg(long, env = "BACKUP_COMPRESSION_LEVEL", value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compression_level: Option<i32>,
    /// Push each run's metrics to this Prometheus Pushgateway (config
    /// `backup.prometheusPushgatewayUrl`); a Pushgateway that is down is only a warning.
    #[arg(long, env = "BACKUP_PUSHGATEWAY_URL")]
    pub pushgateway_url: Option<String>,
    /// Store BackupCompleted/BackupFailed/RestoreCompleted events in the EventStore after each
    /// run (config `eventStore.emitEvents`; default true).
    #[arg(long, env = "BACKUP_EMIT_EVENTS")]
    pub emit_events: Option<bool>,
    /// An incremental request becomes a full backup once the newest chain holds N
    /// incrementals (config `backup.incremental.fullEvery`; default 23: with hourly
    /// incrementals, a full backup a day).
    #[arg(long, env = "BACKUP_FULL_EVERY", value_parser = clap::value_parser!(u32).range(1..))]
    pub full_every: Option<u32>,
}

/// Resolved settings.
#[derive(Debug)]
pub struct Settings {
    /// The file config (for command-specific keys).
    pub file: FileConfig,
    /// EventStore address.
    pub event_store: EventStoreAddr,
    /// Destination URL.
    pub destination_url: Option<String>,
    /// S3 options.
    pub s3: S3Options,
    /// Catalog URL.
    pub catalog_url: String,
    /// Copy destinations (3-2-1).
    pub copy_urls: Vec<String>,
    /// Whether the catalog was named (flag, environment or file) rather than defaulted.
    pub catalog_given: bool,
    /// Whether the EventStore was named rather than defaulted.
    pub event_store_given: bool,
    /// Read keys.
    pub keys: Keys,
    /// Write protection (None when no key and not asked for unencrypted: backups then refuse).
    pub protection: Option<Protection>,
    /// Retention.
    pub retention: crate::engine::retention::Policy,
    /// Backup timeout.
    pub timeout: Duration,
    /// zstd level.
    pub compression_level: i32,
    /// Events table URL.
    pub events_db: Option<String>,
    /// Restore timeout.
    pub restore_timeout: Duration,
    /// How long a restore waits for the events table's lock.
    pub lock_wait_timeout: Duration,
    /// Pushgateway URL.
    pub pushgateway_url: Option<String>,
    /// Store events after each run.
    pub emit_events: bool,
    /// Incrementals per chain before a full backup.
    pub full_every: u32,
}

/// Default catalog of the embedded default.
pub const DEFAULT_CATALOG: &str = "sqlite://backup-catalog.db";

impl CommonArgs {
    /// Resolves flags, environment and file.
    pub fn resolve(&self) -> anyhow::Result<Settings> {
        self.resolve_with(false)
    }

    /// As [`CommonArgs::resolve`], for `rewrap`: a key file and a recipient file may both be
    /// given (it reads with the keys and wraps to the recipients), and new wraps go to the
    /// recipients when given, else to the first key file's first key.
    pub fn resolve_rewrap(&self) -> anyhow::Result<Settings> {
        self.resolve_with(true)
    }

    fn resolve_with(&self, rewrap: bool) -> anyhow::Result<Settings> {
        let default = std::path::Path::new(DEFAULT_CONFIG);
        let config = match &self.config {
            Some(p) if !p.as_os_str().is_empty() => Some(p.as_path()),
            Some(_) => None,
            None if default.exists() => {
                tracing::info!(config = %default.display(), "using the default config file");
                Some(default)
            }
            None => None,
        };
        let file = match config {
            Some(p) => FileConfig::load(p)
                .map_err(|e| super::usage(monoskope_backup_client::error_line(e.as_ref())))?,
            None => FileConfig::default(),
        };
        let b = file.backup.clone().unwrap_or_default();
        let (file_dest, file_s3) = file
            .destination()
            .map_or((None, None), |(u, s)| (Some(u), s));
        let s3f = file_s3.unwrap_or_default();
        let lock_f = s3f.object_lock.clone().unwrap_or_default();
        let object_lock = match (
            self.s3_object_lock_mode.or(lock_f.mode),
            self.s3_object_lock_days.or(lock_f.days),
        ) {
            (None, None) => None,
            (Some(mode), Some(days)) if (1..=36_500).contains(&days) => {
                Some(crate::destination::ObjectLock { mode, days })
            }
            (Some(_), Some(days)) => {
                return Err(super::usage(format!(
                    "--s3-object-lock-days: {days} is out of range (1 to 36500)"
                )))
            }
            (Some(_), None) => {
                return Err(super::usage(
                    "--s3-object-lock-mode needs --s3-object-lock-days (how long each object is locked)",
                ))
            }
            (None, Some(_)) => {
                return Err(super::usage(
                    "--s3-object-lock-days needs --s3-object-lock-mode (GOVERNANCE or COMPLIANCE)",
                ))
            }
        };
        let s3 = S3Options {
            endpoint: self.s3_endpoint.clone().or(s3f.endpoint),
            region: self.s3_region.clone().or(s3f.region),
            disable_ssl: self.s3_disable_ssl.or(s3f.disable_ssl).unwrap_or(false),
            virtual_hosted: false,
            attempt_timeout: None,
            object_lock,
            credentials_env: None,
        };
        let es = file.event_store.clone().unwrap_or_default();
        let event_store = EventStoreAddr {
            addr: self
                .event_store
                .clone()
                .or(es.address.clone())
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            ca_file: self.event_store_ca.clone().or(es.ca_file.clone()),
        };
        let enc = file.encryption.clone().unwrap_or_default();
        let sources = self.keys.sources(&enc);
        let no_enc = match (self.no_encryption, enc.no_encryption) {
            (true, _) => Some("--no-encryption (BACKUP_NO_ENCRYPTION)"),
            (false, Some(true)) => Some("encryption.noEncryption"),
            _ => None,
        };
        let recipient_from = sources.recipient_from.filter(|_| !rewrap);
        secrets::check_sources(sources.key_files_from, recipient_from, no_enc)
            .map_err(super::usage)?;
        let keys = secrets::load_keys(&sources.key_files, &sources.identity_files)?;
        let recipients = match &sources.recipient_file {
            Some(p) => Some(secrets::load_recipients(p)?),
            None => None,
        };
        let no_enc = no_enc.is_some();
        let protection = secrets::protection(&keys, recipients, no_enc).ok();
        let timeout = match self.timeout.clone().or(b.timeout) {
            Some(t) => parse_duration(&t).map_err(|e| super::usage(format!("--timeout: {e}")))?,
            None => Duration::from_secs(3600),
        };
        let restore_timeout = match self
            .restore_timeout
            .clone()
            .or(b.restore.as_ref().and_then(|r| r.timeout.clone()))
        {
            Some(t) => {
                parse_duration(&t).map_err(|e| super::usage(format!("--restore-timeout: {e}")))?
            }
            None => Duration::from_secs(3600),
        };
        let lock_wait_timeout = match self
            .lock_wait_timeout
            .clone()
            .or(b.lock_wait_timeout.clone())
        {
            Some(t) => crate::time::parse_duration_or_zero(&t)
                .map_err(|e| super::usage(format!("--lock-wait-timeout: {e}")))?,
            None => crate::sink::table::DEFAULT_LOCK_WAIT,
        };
        if let Some(r) = self.retention_count.filter(|r| *r < 0) {
            return Err(super::usage(format!(
                "--retention-count: {r} is negative; use 0 to keep every backup"
            )));
        }
        Ok(Settings {
            events_db: self
                .events_db
                .clone()
                .or(file.event_store.as_ref().and_then(|e| e.events_db.clone())),
            restore_timeout,
            lock_wait_timeout,
            pushgateway_url: self
                .pushgateway_url
                .clone()
                .or(b.prometheus_pushgateway_url.clone())
                .filter(|u| !u.is_empty()),
            emit_events: self.emit_events.or(es.emit_events).unwrap_or(true),
            full_every: self
                .full_every
                .or(b.incremental.as_ref().and_then(|i| i.full_every))
                .unwrap_or(23),
            event_store,
            destination_url: self.destination.clone().or(file_dest),
            s3,
            copy_urls: if self.copy_destinations.is_empty() {
                b.copies.clone().unwrap_or_default()
            } else {
                self.copy_destinations.clone()
            },
            catalog_given: self.catalog.is_some()
                || file.catalog.as_ref().and_then(|c| c.url.as_ref()).is_some(),
            event_store_given: self.event_store.is_some() || es.address.is_some(),
            catalog_url: self
                .catalog
                .clone()
                .or(file.catalog.as_ref().and_then(|c| c.url.clone()))
                .unwrap_or_else(|| DEFAULT_CATALOG.into()),
            keys,
            protection,
            retention: {
                let r = b.retention.clone().unwrap_or_default();
                crate::engine::retention::Policy {
                    keep_last: self
                        .retention_count
                        .or(b.retention_count)
                        .unwrap_or(7)
                        .max(0) as usize,
                    keep_daily: self.keep_daily.or(r.keep_daily).unwrap_or(0),
                    keep_weekly: self.keep_weekly.or(r.keep_weekly).unwrap_or(0),
                    keep_monthly: self.keep_monthly.or(r.keep_monthly).unwrap_or(0),
                    keep_yearly: self.keep_yearly.or(r.keep_yearly).unwrap_or(0),
                }
            },
            timeout,
            compression_level: self
                .compression_level
                .or(enc.compression_level)
                .unwrap_or(DEFAULT_COMPRESSION_LEVEL),
            file,
        })
    }
}

impl Settings {
    /// Opens the destination.
    pub async fn destination(&self) -> anyhow::Result<Arc<dyn Destination>> {
        let url = self
            .destination_url
            .as_deref()
            .context("no destination: give --destination file:///DIR or s3://BUCKET/PREFIX (or backup.destination in --config)")?;
        let dest = destination::open(url, &self.s3).await?;
        // Object lock asked for on a bucket that cannot lock: refused before anything is written.
        dest.check_object_lock().await?;
        Ok(dest)
    }

    /// Connects the catalog, marks interrupted runs failed, and resyncs it from the
    /// destination when it is empty.
    pub async fn catalog(&self, dest: &dyn Destination) -> anyhow::Result<Catalog> {
        let catalog = Catalog::connect(&self.catalog_url).await?;
        let n = catalog.fail_interrupted().await?;
        if n > 0 {
            tracing::warn!(
                operations = n,
                "marked operations interrupted by a previous stop as failed"
            );
        }
        if catalog.count_complete().await? == 0 {
            match catalog.resync(dest).await {
                Ok(found) if found > 0 => {
                    tracing::info!(backups = found, destination = %dest.url(), "catalog was empty; rebuilt it from the destination")
                }
                Ok(_) => {}
                Err(e) if e.is_destination_not_created() => {
                    tracing::info!(destination = %dest.url(), "the destination is new: nothing to rebuild the catalog from")
                }
                Err(e) => {
                    tracing::warn!(error = %monoskope_backup_client::error_line(&e), "could not rebuild the catalog from the destination")
                }
            }
        }
        Ok(catalog)
    }

    /// The copy destinations, opened.
    pub async fn copies(&self) -> anyhow::Result<Vec<Arc<dyn Destination>>> {
        let mut out = Vec::new();
        for url in &self.copy_urls {
            out.push(destination::open(url, &self.s3).await?);
        }
        Ok(out)
    }

    /// The destination to read `id` (or `latest`) from: the primary, or — when the primary
    /// cannot be listed or does not hold it — the first copy that does, said in one line.
    pub async fn destination_for_reading(&self, id: &str) -> anyhow::Result<Arc<dyn Destination>> {
        let primary = self.destination().await?;
        if self.copy_urls.is_empty() {
            return Ok(primary);
        }
        // Holds the backup: its manifest, and its archive object at the manifest's size.
        let holds = |dest: Arc<dyn Destination>| async move {
            let all = destination::manifest::list_complete(dest.as_ref()).await?;
            let Some(m) = all.iter().find(|m| id == "latest" || m.id == id) else {
                return anyhow::Ok(false);
            };
            let objects = dest.list(destination::layout::BACKUPS_DIR).await?;
            anyhow::Ok(
                objects
                    .iter()
                    .any(|o| o.key == m.archive_key && o.size == m.archive_bytes),
            )
        };
        let why = match holds(primary.clone()).await {
            Ok(true) => return Ok(primary),
            Ok(false) => format!("does not hold {id} whole"),
            Err(e) => format!(
                "cannot be read ({})",
                monoskope_backup_client::error_line(e.as_ref())
            ),
        };
        for c in self.copies().await? {
            if matches!(holds(c.clone()).await, Ok(true)) {
                eprintln!(
                    "the primary destination {} {why}: reading the copy at {}",
                    crate::redact::url(&primary.url()),
                    crate::redact::url(&c.url())
                );
                return Ok(c);
            }
        }
        Ok(primary)
    }

    /// Builds the engine (destination, catalog, keys).
    pub async fn engine(&self) -> anyhow::Result<Engine> {
        let destination = self.destination().await?;
        self.engine_on(destination).await
    }

    /// Builds the engine on `destination` (the primary, or a copy to read from).
    pub async fn engine_on(&self, destination: Arc<dyn Destination>) -> anyhow::Result<Engine> {
        let catalog = self.catalog(destination.as_ref()).await?;
        Ok(Engine::new(EngineConfig {
            event_store: self.event_store.clone(),
            destination,
            catalog,
            keys: self.keys.clone(),
            protection: self.protection.clone(),
            events_db: self.events_db.clone(),
            retention: self.retention,
            backup_timeout: self.timeout,
            compression_level: self.compression_level,
            restore_timeout: self.restore_timeout,
            lock_wait_timeout: self.lock_wait_timeout,
            emit_events: self.emit_events,
            full_every: self.full_every,
            pushgateway: self
                .pushgateway_url
                .as_deref()
                .map(crate::ops::pushgateway::Pushgateway::new)
                .transpose()?,
        }))
    }
}
