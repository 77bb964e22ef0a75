//! Configuration: a YAML file (`--config FILE`) whose `backup:` part has the shape Monoskope
//! operators write in their chart values, plus the service's own sections. Command-line flags
//! and their environment variables override the file. Secrets are never in the file: keys and
//! tokens come from files or the environment. Unknown keys and bad values fail at start with
//! the key's path.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// gRPC listen address of `serve`.
    pub listen: Option<String>,
    /// TLS of the gRPC server.
    pub tls: Option<TlsConfig>,
    /// The EventStore.
    pub event_store: Option<EventStoreConfig>,
    /// The catalog database.
    pub catalog: Option<CatalogConfig>,
    /// Archive encryption and compression.
    pub encryption: Option<EncryptionConfig>,
    /// Authentication of callers.
    pub auth: Option<AuthConfig>,
    /// Backups, in the shape of Monoskope's chart values.
    pub backup: Option<BackupConfig>,
    /// The metrics endpoint.
    pub metrics: Option<MetricsConfig>,
}

/// TLS files.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    pub key_file: Option<PathBuf>,
}

/// The EventStore.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventStoreConfig {
    /// `HOST:PORT` or URL.
    pub address: Option<String>,
    /// CA for an `https://` address.
    pub ca_file: Option<PathBuf>,
    /// The events table for restores (`postgres://…`; a password belongs in BACKUP_EVENTS_DB).
    pub events_db: Option<String>,
    /// Store BackupCompleted/BackupFailed/RestoreCompleted events after each run (default true).
    pub emit_events: Option<bool>,
}

/// The metrics endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {
    /// `HOST:PORT` serving `/metrics` and `/healthz`.
    pub address: Option<String>,
}

/// The catalog.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CatalogConfig {
    /// `sqlite://PATH` or `postgres://…` (a password belongs in the environment: BACKUP_CATALOG).
    pub url: Option<String>,
}

/// Encryption.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EncryptionConfig {
    /// Keyring file, or a list of them (the first key of the first file encrypts).
    pub key_file: Option<OneOrMany<PathBuf>>,
    /// Recipients file (write-only backups).
    pub recipient_file: Option<PathBuf>,
    /// Identity file, or a list of them (read backups made for recipients).
    pub identity_file: Option<OneOrMany<PathBuf>>,
    /// Write unencrypted archives (integrity-checked only).
    pub no_encryption: Option<bool>,
    /// zstd level (1–19).
    pub compression_level: Option<i32>,
}

/// Authentication.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// `gateway`, `jwt` or `none` (loopback only).
    pub mode: Option<String>,
    /// Gateway gRPC address (`HOST:PORT`) for `gateway` mode.
    pub gateway: Option<String>,
    /// The gateway's public key (PEM certificate or key, or JWK) for `jwt` mode.
    pub jwt_public_key: Option<PathBuf>,
    /// The gateway's JWKS URL for `jwt` mode.
    pub jwks_url: Option<String>,
    /// The `iss` the gateway's tokens carry (its `--gateway-url`).
    pub jwt_issuer: Option<String>,
    /// Subjects or e-mails of admins (restore, everything).
    pub admins: Option<Vec<String>>,
    /// Subjects of machine identities that may create backups (e.g. the CronJob's API token).
    pub machine_identities: Option<Vec<String>>,
    /// When set, only these (and admins and machines) may list backups and read the status.
    pub readers: Option<Vec<String>>,
}

/// `backup.retention`: the newest backup of each of the last N days, weeks, months, years.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetentionConfig {
    /// Days.
    pub keep_daily: Option<usize>,
    /// ISO weeks.
    pub keep_weekly: Option<usize>,
    /// Months.
    pub keep_monthly: Option<usize>,
    /// Years.
    pub keep_yearly: Option<usize>,
}

/// The `backup:` block.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupConfig {
    /// Cron schedule of in-process backups (not yet run in-process; the chart's CronJob calls CreateBackup).
    pub schedule: Option<String>,
    /// Complete backups kept (keep-last); 0 keeps all.
    pub retention_count: Option<i64>,
    /// Grandfather-father-son buckets beside `retentionCount`.
    pub retention: Option<RetentionConfig>,
    /// Longest a backup may run, e.g. `1h`.
    pub timeout: Option<String>,
    /// How long a backup or restore on the events table waits for other sessions holding it.
    pub lock_wait_timeout: Option<String>,
    /// Pushgateway URL.
    pub prometheus_pushgateway_url: Option<String>,
    /// Alerting values of the chart (used by the chart's PrometheusRule).
    pub alerting: Option<AlertingConfig>,
    /// Where backups go.
    pub destination: Option<DestinationConfig>,
    /// Restore defaults.
    pub restore: Option<RestoreConfig>,
    /// Restore drills.
    pub drill: Option<DrillConfig>,
    /// Incremental scheduled backups.
    pub incremental: Option<IncrementalConfig>,
    /// Continuous backup (`serve`).
    pub continuous: Option<ContinuousConfig>,
    /// Copy destinations (3-2-1): URLs every complete backup is copied to.
    pub copies: Option<Vec<String>>,
}

/// `backup.continuous`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContinuousConfig {
    /// Follow the events table and write segments.
    pub enabled: Option<bool>,
    /// How often to look for new events, e.g. `5s`.
    pub interval: Option<String>,
    /// The longest time between two reconciling segments, e.g. `60s`.
    pub reconcile: Option<String>,
    /// How old a chain's oldest segment gets before its segments are compacted into one
    /// incremental, e.g. `1h`; `0` never compacts.
    pub compact: Option<String>,
    /// Hear of new events on Monoskope's message bus.
    pub bus: Option<BusConfigFile>,
}

/// `backup.continuous.bus`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BusConfigFile {
    /// AMQP URL (`amqp://…`, `amqps://…?auth_mechanism=external`).
    pub url: Option<String>,
    /// Routing key prefix (`m8`).
    pub routing_key_prefix: Option<String>,
    /// PEM CA certificate for `amqps://`.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for `amqps://`.
    pub cert_file: Option<std::path::PathBuf>,
    /// Its key.
    pub key_file: Option<std::path::PathBuf>,
}

/// `backup.incremental`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IncrementalConfig {
    /// Scheduled backups are incremental.
    pub enabled: Option<bool>,
    /// An incremental request becomes full once the newest chain holds this many (default 23).
    pub full_every: Option<u32>,
}

/// `backup.drill`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DrillConfig {
    /// Cron schedule of in-process restore drills of the latest backup.
    pub schedule: Option<String>,
}

/// `backup.alerting`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertingConfig {
    /// Whether alert rules are rendered.
    pub enabled: Option<bool>,
    /// Age of the last success that alerts.
    pub seconds_since_last_successful_backup: Option<u64>,
    /// `for:` of the alert.
    pub alert_after: Option<String>,
}

/// `backup.destination`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationConfig {
    /// An S3-compatible bucket.
    pub s3: Option<S3Config>,
    /// A local directory.
    pub file: Option<FileDestConfig>,
}

/// `backup.destination.s3`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct S3Config {
    /// `host[:port]` or URL.
    pub endpoint: Option<String>,
    /// Bucket.
    pub bucket: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Plain HTTP.
    #[serde(rename = "disableSSL")]
    pub disable_ssl: Option<bool>,
    /// Prefix inside the bucket.
    pub prefix: Option<String>,
    /// S3 Object Lock of every object written.
    pub object_lock: Option<ObjectLockConfig>,
}

/// `backup.destination.s3.objectLock`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectLockConfig {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: Option<crate::destination::LockMode>,
    /// Days from a write to the object's retention date.
    pub days: Option<u32>,
}

/// `backup.destination.file`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileDestConfig {
    /// Absolute directory.
    pub path: Option<PathBuf>,
}

/// `backup.restore`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestoreConfig {
    /// Backup id or `latest`.
    pub backup_identifier: Option<String>,
    /// Longest a restore may run.
    pub timeout: Option<String>,
}

impl FileConfig {
    /// Reads and checks a config file; errors name the key's path.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses and checks YAML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // serde_yaml's messages name the key's path ("backup.timeout: invalid type …",
        // "backup: unknown field `retentionCont` …").
        let cfg: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> anyhow::Result<()> {
        if let Some(m) = self.auth.as_ref().and_then(|a| a.mode.as_deref()) {
            if !["gateway", "jwt", "none"].contains(&m) {
                bail!("auth.mode: {m:?} is not one of gateway, jwt, none");
            }
        }
        if let Some(b) = &self.backup {
            if let Some(s) = &b.schedule {
                crate::ops::schedule::parse(s).with_context(|| "backup.schedule")?;
            }
            if let Some(s) = b.drill.as_ref().and_then(|d| d.schedule.as_ref()) {
                crate::ops::schedule::parse(s).with_context(|| "backup.drill.schedule")?;
            }
            if b.incremental.as_ref().and_then(|i| i.full_every) == Some(0) {
                bail!("backup.incremental.fullEvery: must be at least 1");
            }
            if let Some(r) = b.retention_count {
                if r < 0 {
                    bail!("backup.retentionCount: {r} is negative; use 0 to keep every backup");
                }
            }
            if let Some(u) = b.prometheus_pushgateway_url.as_deref() {
                if !(u.is_empty() || u.starts_with("http://") || u.starts_with("https://")) {
                    bail!(
                        "backup.prometheusPushgatewayUrl: {u:?} is not an http:// or https:// URL"
                    );
                }
            }
            if let Some(t) = &b.timeout {
                parse_duration(t).with_context(|| "backup.timeout")?;
            }
            if let Some(r) = b.restore.as_ref().and_then(|r| r.timeout.as_ref()) {
                parse_duration(r).with_context(|| "backup.restore.timeout")?;
            }
            if let Some(t) = &b.lock_wait_timeout {
                crate::time::parse_duration_or_zero(t).with_context(|| "backup.lockWaitTimeout")?;
            }
            if let Some(a) = b.alerting.as_ref().and_then(|a| a.alert_after.as_ref()) {
                parse_duration(a).with_context(|| "backup.alerting.alertAfter")?;
            }
            if let Some(d) = &b.destination {
                if d.s3.is_some() && d.file.is_some() {
                    bail!("backup.destination: give either s3 or file, not both");
                }
                if let Some(s3) = &d.s3 {
                    if s3.bucket.as_deref().unwrap_or("").is_empty() {
                        bail!("backup.destination.s3.bucket: required");
                    }
                }
                if let Some(f) = &d.file {
                    match &f.path {
                        Some(p) if p.is_absolute() => {}
                        _ => {
                            bail!("backup.destination.file.path: an absolute directory is required")
                        }
                    }
                }
            }
        }
        if let Some(l) = self.encryption.as_ref().and_then(|e| e.compression_level) {
            if !(1..=19).contains(&l) {
                bail!("encryption.compressionLevel: {l} is not a zstd level from 1 to 19");
            }
        }
        Ok(())
    }

    /// The destination URL and S3 options described by `backup.destination`.
    pub fn destination(&self) -> Option<(String, Option<S3Config>)> {
        let d = self.backup.as_ref()?.destination.as_ref()?;
        if let Some(s3) = &d.s3 {
            let prefix = s3.prefix.clone().unwrap_or_default();
            let url = format!(
                "s3://{}/{}",
                s3.bucket.clone().unwrap_or_default(),
                prefix.trim_matches('/')
            );
            return Some((url, Some(s3.clone())));
        }
        let path = d.file.as_ref()?.path.as_ref()?;
        Some((format!("file://{}", path.display()), None))
    }
}

pub use crate::time::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_name_their_path() {
        let err = FileConfig::parse("backup:\n  retentionCont: 3\n").expect_err("typo");
        assert!(
            err.to_string()
                .starts_with("backup: unknown field `retentionCont`"),
            "{err}"
        );
        let err = FileConfig::parse(
            "backup:\n  destination:\n    s3:\n      bucket: b\n      disableSsl: true\n",
        )
        .expect_err("case");
        assert!(
            err.to_string()
                .starts_with("backup.destination.s3: unknown field `disableSsl`"),
            "{err}"
        );
        let err = FileConfig::parse("backup:\n  timeout: soon\n").expect_err("duration");
        assert!(
            format!("{err:#}").starts_with("backup.timeout: \"soon\" is not a duration"),
            "{err:#}"
        );
        let err = FileConfig::parse("backup:\n  retentionCount: many\n").expect_err("type");
        assert!(
            err.to_string()
                .starts_with("backup.retentionCount: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn chart_shaped_values_parse() {
        let cfg = FileConfig::parse(
            "backup:\n  schedule: \"0 22 * * *\"\n  retentionCount: 7\n  timeout: 1h\n  prometheusPushgatewayUrl: \"\"\n  alerting:\n    enabled: true\n    secondsSinceLastSuccessfulBackup: 86400\n    alertAfter: 1h\n  destination:\n    s3:\n      endpoint: s3.example.com\n      bucket: m8-backups\n      region: eu-central-1\n      disableSSL: false\n  restore:\n    backupIdentifier: latest\n    timeout: 1h\n",
        )
        .expect("valid");
        assert_eq!(
            cfg.destination().map(|d| d.0),
            Some("s3://m8-backups/".to_string())
        );
    }
}

/// A config value given as one item or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// One.
    One(T),
    /// Several.
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// As a list.
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}
