//! `serve`, and the one-shot commands that do exactly what the RPCs do: `backup`, `list`,
//! `verify`, `catalog resync`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};

use super::settings::CommonArgs;
use crate::engine::verify;

/// `backup-server serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// gRPC address to listen on.
    #[arg(long, env = "BACKUP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS (with --tls-key); plaintext without.
    #[arg(long, env = "BACKUP_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "BACKUP_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Authentication of callers. `none` is allowed only on loopback addresses.
    #[arg(long, env = "BACKUP_AUTH", value_parser = ["none"])]
    pub auth: Option<String>,
}

/// `backup-server backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print a JSON summary instead of text (the id is still the `id` field).
    #[arg(long)]
    pub json: bool,
}

/// `backup-server list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print the manifests as a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// `backup-server verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Backup id, or `latest`.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Verify every complete backup.
    #[arg(long)]
    pub all: bool,
    /// Print JSON reports.
    #[arg(long)]
    pub json: bool,
}

/// `backup-server catalog`.
#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub command: CatalogCommand,
}

/// Catalog subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the catalog's backup records from the manifests at the destination.
    Resync(CatalogResyncArgs),
}

/// `backup-server catalog resync`.
#[derive(Debug, clap::Args)]
pub struct CatalogResyncArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

pub(super) async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let settings = a.common.resolve()?;
    let listen = match (a.listen, settings.file.listen.as_deref()) {
        (Some(l), _) => l,
        (None, Some(l)) => l
            .parse()
            .with_context(|| format!("listen: {l:?} is not HOST:PORT"))?,
        (None, None) => "127.0.0.1:50051".parse()?,
    };
    let auth = a
        .auth
        .clone()
        .or(settings.file.auth.as_ref().and_then(|x| x.mode.clone()))
        .unwrap_or_else(|| "none".into());
    if auth != "none" {
        bail!("auth: unknown mode {auth:?} (this build offers: none)");
    }
    if !is_loopback(&listen) {
        bail!("refusing to serve without authentication on {listen}: --auth none is only allowed on loopback addresses");
    }
    let tls_files = settings.file.tls.clone().unwrap_or_default();
    let tls = match (
        a.tls_cert.or(tls_files.cert_file),
        a.tls_key.or(tls_files.key_file),
    ) {
        (Some(c), Some(k)) => Some((
            std::fs::read(&c).with_context(|| format!("cannot read {}", c.display()))?,
            std::fs::read(&k).with_context(|| format!("cannot read {}", k.display()))?,
        )),
        (None, None) => None,
        _ => bail!("TLS needs both --tls-cert and --tls-key"),
    };
    let engine = settings.engine().await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::warn!(%addr, "AUTHENTICATION IS OFF (--auth none): every caller on this machine may create and restore backups; allowed on loopback only");
    tracing::info!(%addr, destination = %engine.config().destination.url(), event_store = %engine.config().event_store.addr, catalog = engine.config().catalog.kind(), tls = tls.is_some(), "BackupService listening");
    println!("backup-server listening on {addr}");
    crate::grpc::serve(engine, listener, tls, super::shutdown_signal()).await
}

pub(super) async fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let settings = a.common.resolve()?;
    let engine = settings.engine().await?;
    let who = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let r = engine.backup(&who).await?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "id": r.id, "state": r.state.as_str(), "event_count": r.event_count, "bytes": r.archive_bytes,
                "first_event_time": r.first_event_time, "last_event_time": r.last_event_time,
                "sha256": r.archive_sha256, "key_id": r.key_id, "destination": engine.config().destination.url(), "error": r.error,
            }))?
        );
    }
    if let Some(e) = &r.error {
        bail!("backup {} failed: {e}", r.id);
    }
    if !a.json {
        println!(
            "backup {} complete: {} events, {} bytes at {}",
            r.id,
            r.event_count,
            r.archive_bytes,
            engine.config().destination.url()
        );
        println!("{}", r.id);
    }
    Ok(())
}

pub(super) async fn list(a: ListArgs) -> anyhow::Result<()> {
    let settings = a.common.resolve()?;
    let dest = settings.destination().await?;
    let manifests = crate::destination::manifest::list_complete(dest.as_ref()).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&manifests)?);
    } else if manifests.is_empty() {
        println!("no complete backups at {}", dest.url());
    } else {
        println!(
            "{:<30} {:<11} {:>10} {:>12}  {:<24}  LAST EVENT",
            "ID", "KIND", "EVENTS", "BYTES", "COMPLETED"
        );
        for m in &manifests {
            println!(
                "{:<30} {:<11} {:>10} {:>12}  {:<24}  {}",
                m.id,
                m.kind,
                m.event_count,
                m.archive_bytes,
                m.completed_at,
                m.last_event_time.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

pub(super) async fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let settings = a.common.resolve()?;
    let dest = settings.destination().await?;
    let targets = if a.all {
        crate::destination::manifest::list_complete(dest.as_ref()).await?
    } else {
        vec![verify::resolve(dest.as_ref(), a.id.as_deref().unwrap_or("latest")).await?]
    };
    if targets.is_empty() {
        bail!("no complete backup at {}", dest.url());
    }
    let mut failed = 0;
    for m in &targets {
        let r = verify::verify(dest.as_ref(), &settings.keys, m).await?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else if r.ok {
            println!("ok      {} ({} events, {} bytes)", r.id, r.events, r.bytes);
        } else {
            println!("FAILED  {}: {}", r.id, r.problems.join("; "));
        }
        if !r.ok {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} backups failed verification", targets.len());
    }
    Ok(())
}

pub(super) async fn catalog(a: CatalogArgs) -> anyhow::Result<()> {
    match a.command {
        CatalogCommand::Resync(r) => {
            let settings = r.common.resolve()?;
            let dest = settings.destination().await?;
            let catalog = crate::catalog::Catalog::connect(&settings.catalog_url).await?;
            let n = catalog.resync(dest.as_ref()).await?;
            println!("catalog rebuilt from {}: {n} complete backups", dest.url());
            Ok(())
        }
    }
}

/// `backup-server restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Shared options (restores into --events-db, or with --via-api through --event-store).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Backup id, or `latest`.
    pub id: String,
    /// Restore exactly the events with timestamps up to and including this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Replace the events already in the store (in the same transaction through the events table).
    #[arg(long)]
    pub drop_existing: bool,
    /// Write through the EventStore's Store API. On a real Monoskope EventStore every event is
    /// then republished to the message bus; use only for a store without a bus.
    #[arg(long)]
    pub via_api: bool,
}

/// Parses an RFC 3339 time into a protobuf timestamp.
pub fn parse_time(s: &str) -> anyhow::Result<prost_types::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(s.trim())
        .with_context(|| format!("{s:?} is not an RFC 3339 time (e.g. 2026-11-24T10:15:00Z)"))?;
    Ok(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

pub(super) async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let settings = a.common.resolve()?;
    let until = a
        .until
        .as_deref()
        .map(parse_time)
        .transpose()
        .context("--until")?;
    let engine = settings.engine().await?;
    let who = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let (rec, _) = engine
        .start_restore(crate::engine::restore::RestoreRequest {
            backup_id: a.id,
            until,
            drop_existing: a.drop_existing,
            via_api: a.via_api,
            created_by: who,
        })
        .await?;
    let done = engine
        .wait_restore(&rec.id)
        .await
        .context("the restore task ended without a result")?;
    if let Some(e) = &done.error {
        bail!("restore of backup {} failed: {e}", done.backup_id);
    }
    println!(
        "restored backup {} into the {}: {} events",
        done.backup_id, done.sink, done.event_count
    );
    for step in crate::engine::restore::next_steps(&done.sink) {
        println!("next: {step}");
    }
    Ok(())
}
