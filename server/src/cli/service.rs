//! `serve`, and the one-shot commands that do exactly what the RPCs do: `backup`, `list`,
//! `verify`, `catalog resync`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};

use super::settings::CommonArgs;
use crate::engine::verify;
use crate::ops::metrics::Op;

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
    /// Authentication of callers: `gateway` (the gateway's GatewayAuth.Check decides), `jwt`
    /// (the gateway's tokens verified here), or `none` (only allowed on loopback addresses).
    #[arg(long, env = "BACKUP_AUTH", value_parser = ["gateway", "jwt", "none"])]
    pub auth: Option<String>,
    /// The gateway's gRPC address (HOST:PORT, or an https:// URL) for `--auth gateway`.
    #[arg(long, env = "BACKUP_GATEWAY")]
    pub gateway: Option<String>,
    /// The gateway's public key for `--auth jwt`: its PEM certificate (tls.crt), a PEM public
    /// key or a JWK. Re-read when the file changes.
    #[arg(long, env = "BACKUP_JWT_PUBLIC_KEY", conflicts_with = "jwks_url")]
    pub jwt_public_key: Option<PathBuf>,
    /// The gateway's JWKS URL (https://GATEWAY/keys) for `--auth jwt`, fetched every
    /// --jwks-refresh and when a token names an unknown key.
    #[arg(long, env = "BACKUP_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again.
    #[arg(long, env = "BACKUP_JWKS_REFRESH", default_value = "5m")]
    pub jwks_refresh: String,
    /// The issuer (`iss`) of the gateway's tokens: the gateway's --gateway-url, verbatim.
    #[arg(long, env = "BACKUP_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// An admin (may restore, and everything else): a token subject (user UUID) or e-mail.
    /// Repeatable; the environment variable takes a comma-separated list.
    #[arg(long = "admin", env = "BACKUP_ADMINS", value_delimiter = ',')]
    pub admins: Vec<String>,
    /// A machine identity that may create backups (and read): an API token's subject, e.g. the
    /// user name of the CronJob's token. Repeatable; comma-separated in the environment.
    #[arg(
        long = "machine-identity",
        env = "BACKUP_MACHINE_IDENTITIES",
        value_delimiter = ','
    )]
    pub machine_identities: Vec<String>,
    /// When given, only these subjects or e-mails (and admins and machine identities) may list
    /// backups and read the status. Repeatable; comma-separated in the environment.
    #[arg(long = "reader", env = "BACKUP_READERS", value_delimiter = ',')]
    pub readers: Vec<String>,
    /// Serve Prometheus metrics (/metrics) and a liveness check (/healthz) on HOST:PORT.
    #[arg(long, env = "BACKUP_METRICS_ADDRESS")]
    pub metrics_address: Option<SocketAddr>,
    /// Run backups in-process on this cron schedule (UTC; five fields, or six with seconds);
    /// config `backup.schedule`.
    #[arg(long, env = "BACKUP_SCHEDULE")]
    pub schedule: Option<String>,
    /// Run restore drills of the latest backup in-process on this cron schedule (UTC); config
    /// `backup.drill.schedule`.
    #[arg(long, env = "BACKUP_DRILL_SCHEDULE")]
    pub drill_schedule: Option<String>,
    /// Scheduled backups are incremental (config `backup.incremental.enabled`); every
    /// --full-every-th is full.
    #[arg(long, env = "BACKUP_INCREMENTAL")]
    pub incremental: bool,
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
    /// Store only the events the newest complete backup chain does not hold (a full backup,
    /// saying why, when that is not possible).
    #[arg(long)]
    pub incremental: bool,
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
    /// Backup id, or `latest`; an incremental is verified with every link of its chain.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Verify every complete backup, and that every incremental's chain is whole and none of its links failed.
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

fn pick<T>(flag: Vec<T>, file: Option<Vec<T>>) -> Vec<T> {
    if flag.is_empty() {
        file.unwrap_or_default()
    } else {
        flag
    }
}

/// Builds the authentication layer's state from flags and the `auth:` section.
async fn authenticator(
    a: &ServeArgs,
    file: Option<crate::ops::config::AuthConfig>,
    listen: &SocketAddr,
) -> anyhow::Result<crate::auth::Authenticator> {
    use crate::auth::{gateway::Gateway, jwt, Authenticator, Mode, Policy};
    let f = file.unwrap_or_default();
    let policy = Policy {
        admins: pick(a.admins.clone(), f.admins.clone()),
        machines: pick(a.machine_identities.clone(), f.machine_identities.clone()),
        readers: pick(a.readers.clone(), f.readers.clone()),
    };
    let mode = a
        .auth
        .clone()
        .or(f.mode.clone())
        .unwrap_or_else(|| "none".into());
    let mode = match mode.as_str() {
        "none" => {
            if !is_loopback(listen) {
                bail!("refusing to serve without authentication on {listen}: --auth none is only allowed on loopback addresses; use --auth gateway or --auth jwt");
            }
            Mode::None
        }
        "gateway" => {
            let g =
                a.gateway.clone().or(f.gateway.clone()).context(
                    "--auth gateway needs --gateway HOST:PORT (the gateway's gRPC address)",
                )?;
            Mode::Gateway(Gateway::new(&g)?)
        }
        "jwt" => {
            let issuer = a.jwt_issuer.clone().or(f.jwt_issuer.clone()).context(
                "--auth jwt needs --jwt-issuer (the gateway's URL, as in its tokens' iss)",
            )?;
            let source = match (
                a.jwt_public_key.clone().or(f.jwt_public_key.clone()),
                a.jwks_url.clone().or(f.jwks_url.clone()),
            ) {
                (Some(p), None) => jwt::KeySource::File(p),
                (None, Some(u)) => jwt::KeySource::Jwks(u),
                (Some(_), Some(_)) => bail!("give either --jwt-public-key or --jwks-url, not both"),
                (None, None) => bail!("--auth jwt needs --jwt-public-key PATH or --jwks-url URL"),
            };
            if policy.admins.is_empty() {
                bail!("--auth jwt needs at least one --admin (a subject or e-mail): nobody could restore");
            }
            let refresh = crate::ops::config::parse_duration(&a.jwks_refresh)
                .map_err(|e| super::usage(format!("--jwks-refresh: {e}")))?;
            let v = std::sync::Arc::new(jwt::JwtVerifier::new(source, issuer).await?);
            v.spawn_refresh(refresh);
            Mode::Jwt(v)
        }
        m => bail!("auth: unknown mode {m:?} (gateway, jwt or none)"),
    };
    Ok(Authenticator { mode, policy })
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
    let auth = authenticator(&a, settings.file.auth.clone(), &listen).await?;
    let metrics_address = match (
        a.metrics_address,
        settings
            .file
            .metrics
            .as_ref()
            .and_then(|m| m.address.as_deref()),
    ) {
        (Some(m), _) => Some(m),
        (None, Some(m)) => Some(
            m.parse()
                .with_context(|| format!("metrics.address: {m:?} is not HOST:PORT"))?,
        ),
        (None, None) => None,
    };
    let schedule = a
        .schedule
        .clone()
        .or(settings
            .file
            .backup
            .as_ref()
            .and_then(|b| b.schedule.clone()))
        .filter(|s| !s.trim().is_empty())
        .map(|s| crate::ops::schedule::parse(&s).context("--schedule"))
        .transpose()?;
    let drill_schedule = a
        .drill_schedule
        .clone()
        .or(settings
            .file
            .backup
            .as_ref()
            .and_then(|b| b.drill.as_ref())
            .and_then(|d| d.schedule.clone()))
        .filter(|s| !s.trim().is_empty())
        .map(|s| crate::ops::schedule::parse(&s).context("--drill-schedule"))
        .transpose()?;
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
    seed_metrics(&engine).await;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    if let Some(m) = metrics_address {
        let ml = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("cannot listen on {m} for metrics"))?;
        let maddr = ml.local_addr()?;
        println!("metrics on http://{maddr}/metrics");
        tracing::info!(addr = %maddr, "metrics endpoint listening (/metrics, /healthz)");
        tokio::spawn(crate::ops::metrics::serve(ml, stopped()));
    }
    match &auth.mode {
        crate::auth::Mode::None => {
            tracing::warn!(%addr, "AUTHENTICATION IS OFF (--auth none): every caller on this machine may create and restore backups; allowed on loopback only");
        }
        m => {
            tracing::info!(
                mode = m.name(),
                admins = auth.policy.admins.len(),
                machine_identities = auth.policy.machines.len(),
                readers = auth.policy.readers.len(),
                "authentication on"
            );
        }
    }
    let mut scheduled = Vec::new();
    if let Some(s) = schedule {
        let inc = settings
            .file
            .backup
            .as_ref()
            .and_then(|b| b.incremental.clone())
            .unwrap_or_default();
        scheduled.push(tokio::spawn(super::schedule::run(
            engine.clone(),
            s,
            a.incremental || inc.enabled.unwrap_or(false),
        )));
    }
    if let Some(s) = drill_schedule {
        scheduled.push(tokio::spawn(super::schedule::run_drills(engine.clone(), s)));
    }
    tracing::info!(%addr, destination = %engine.config().destination.url(), event_store = %crate::redact::url(&engine.config().event_store.addr), catalog = engine.config().catalog.kind(), tls = tls.is_some(), auth = auth.mode.name(), "BackupService listening");
    println!("backup-server listening on {addr}");
    // On SIGTERM the running operation is interrupted first, so calls waiting for it return
    // and the server drains.
    let stopping = engine.clone();
    let res = crate::grpc::serve(
        engine,
        listener,
        tls,
        crate::auth::AuthLayer::new(auth),
        async move {
            super::stop_on_signal(&stopping).await;
            // Health has said NOT_SERVING since the signal: a moment more for the readiness
            // probe and the Service's endpoints to notice before the listener closes.
            tokio::time::sleep(NOT_SERVING_BEFORE_CLOSE).await;
            // The operation has ended; calls and connections get a moment to drain, then the
            // process goes (a client that keeps a stream open must not hold the stop).
            tokio::spawn(async {
                tokio::time::sleep(DRAIN_WITHIN).await;
                tracing::warn!(drain = %humantime::format_duration(DRAIN_WITHIN), "calls did not drain in time; exiting");
                std::process::exit(0);
            });
        },
    )
    .await;
    let _ = stop_tx.send(true);
    for s in scheduled {
        s.abort();
    }
    res
}

/// How long `serve` keeps answering (health: NOT_SERVING) after its operation ended on a stop
/// signal, before it closes its listener.
const NOT_SERVING_BEFORE_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long `serve` lets calls drain after its operation ended on a stop signal.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Seeds the last-run gauges from the catalog, so a restarted service does not report "never".
async fn seed_metrics(engine: &crate::engine::Engine) {
    use crate::catalog::State;
    use crate::ops::metrics::{get, Op};
    let c = &engine.config().catalog;
    let t = |s: Option<&str>| {
        s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.timestamp_millis() as f64 / 1000.0)
    };
    let ok = c.newest_in_state(State::Succeeded).await.ok().flatten();
    let bad = c.newest_in_state(State::Failed).await.ok().flatten();
    get().seed(
        Op::Backup,
        ok.as_ref().and_then(|r| t(r.completed_at.as_deref())),
        bad.as_ref().and_then(|r| t(r.completed_at.as_deref())),
    );
}

/// Resolves the settings and builds the engine of a one-shot `op`; a failure here still leaves
/// its trace ([`super::trace`]).
async fn start(
    common: &CommonArgs,
    op: Op,
) -> anyhow::Result<(super::settings::Settings, crate::engine::Engine)> {
    let settings = match common.resolve() {
        Ok(s) => s,
        Err(e) => {
            let known = super::trace::Known {
                pushgateway_url: common.pushgateway_url.clone(),
                ..Default::default()
            };
            super::trace::early_failure(op, known, &e).await;
            return Err(e);
        }
    };
    match settings.engine().await {
        Ok(engine) => Ok((settings, engine)),
        Err(e) => {
            super::trace::early_failure(op, super::trace::Known::of(&settings), &e).await;
            Err(e)
        }
    }
}

pub(super) async fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let (_settings, engine) = start(&a.common, Op::Backup).await?;
    let who = super::cli_identity();
    let r = super::interruptible(
        &engine,
        super::with_progress(&engine, engine.backup(&who, a.incremental)),
    )
    .await?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "id": r.id, "kind": r.kind, "parent_id": r.parent_id, "note": r.note,
                "state": r.state.as_str(), "event_count": r.event_count, "bytes": r.archive_bytes,
                "first_event_time": r.first_event_time, "last_event_time": r.last_event_time,
                "sha256": r.archive_sha256, "key_id": r.key_id, "destination": engine.config().destination.url(), "error": r.error,
            }))?
        );
    }
    if let Some(e) = &r.error {
        bail!("backup {} failed: {e}", r.id);
    }
    if !a.json {
        if let Some(n) = &r.note {
            eprintln!("note: {n}");
        }
        println!(
            "{} backup {} complete{}: {} events, {} bytes at {}",
            r.kind,
            r.id,
            r.parent_id
                .as_ref()
                .map(|p| format!(" (parent {p})"))
                .unwrap_or_default(),
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
    let scan = crate::destination::manifest::scan(dest.as_ref()).await?;
    let all = scan.complete.clone();
    // Every complete backup, newest first; or the one asked for with, for an incremental, every
    // link of its chain (full backup first): what a restore of it reads. With --all, a backup
    // whose manifest cannot be trusted fails verification (it is never left out silently).
    let (targets, broken) = if a.all {
        (all.clone(), scan.broken.clone())
    } else {
        let m = verify::resolve(dest.as_ref(), a.id.as_deref().unwrap_or("latest")).await?;
        (
            crate::engine::chain_of(&all, &m).unwrap_or_else(|_| vec![m]),
            Vec::new(),
        )
    };
    if targets.is_empty() && broken.is_empty() {
        bail!("no complete backup at {}", dest.url());
    }
    let mut reports = Vec::with_capacity(targets.len() + broken.len());
    for m in &targets {
        let mut r = verify::verify(dest.as_ref(), &settings.keys, m).await?;
        if m.kind == "incremental" && m.watermark_key.is_none() {
            r.ok = false;
            r.problems
                .push("an incremental backup without a watermark".into());
        }
        reports.push(r);
    }
    // An incremental is only as good as its chain: every link present, and none that failed.
    let failed_here: std::collections::HashSet<String> = reports
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.id.clone())
        .collect();
    for (m, r) in targets.iter().zip(reports.iter_mut()) {
        match crate::engine::chain_of(&all, m) {
            Err(e) => {
                r.ok = false;
                r.problems.push(format!("its chain is broken: {e}"));
            }
            Ok(chain) => {
                for link in chain.iter().filter(|l| l.id != m.id) {
                    if failed_here.contains(&link.id) {
                        r.ok = false;
                        r.problems.push(format!(
                            "it cannot be restored: link {} of its chain failed verification",
                            link.id
                        ));
                    }
                }
            }
        }
    }
    for b in broken {
        reports.push(verify::VerifyReport {
            id: b.id,
            ok: false,
            problems: vec![b.problem],
            events: 0,
            bytes: 0,
        });
    }
    if a.all {
        reports.sort_by(|a, b| b.id.cmp(&a.id));
    }
    let mut failed = 0;
    for r in &reports {
        if a.json {
            println!("{}", serde_json::to_string(r)?);
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
        bail!("{failed} of {} backups failed verification", reports.len());
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
    /// Restore exactly the events with timestamps up to and including this time (RFC 3339,
    /// years 1 to 9999; anything else is a usage error, exit 2).
    #[arg(long, value_parser = crate::time::parse_time)]
    pub until: Option<prost_types::Timestamp>,
    /// Replace the events already in the store (in the same transaction through the events table).
    #[arg(long)]
    pub drop_existing: bool,
    /// Write through the EventStore's Store API. On a real Monoskope EventStore every event is
    /// then republished to the message bus; use only for a store without a bus.
    #[arg(long)]
    pub via_api: bool,
    /// Check everything a restore checks before writing (the backup's chain and keys, the
    /// store, its events) and print what it would do; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(super) async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let (_settings, engine) = start(&a.common, Op::Restore).await?;
    let until = a.until;
    let who = super::cli_identity();
    if a.dry_run {
        let req = crate::engine::restore::RestoreRequest {
            backup_id: a.id,
            until,
            drop_existing: a.drop_existing,
            via_api: a.via_api,
            caller: who,
        };
        let plan = engine.plan_restore(&req).await?;
        for line in plan.describe(&req) {
            println!("{line}");
        }
        println!("nothing was written (--dry-run)");
        return Ok(());
    }
    let restore = async {
        let (rec, _) = engine
            .start_restore(crate::engine::restore::RestoreRequest {
                backup_id: a.id,
                until,
                drop_existing: a.drop_existing,
                via_api: a.via_api,
                caller: who,
            })
            .await?;
        engine
            .wait_restore(&rec.id)
            .await
            .context("the restore task ended without a result")
    };
    let done = super::interruptible(&engine, super::with_progress(&engine, restore)).await?;
    if let Some(e) = &done.error {
        bail!("restore of backup {} failed: {e}", done.backup_id);
    }
    println!(
        "restored backup {} into the {}: {} events",
        done.backup_id,
        monoskope_backup_client::sink_words(&done.sink),
        done.event_count
    );
    for step in crate::engine::restore::next_steps(&done.sink) {
        println!("next: {step}");
    }
    Ok(())
}
